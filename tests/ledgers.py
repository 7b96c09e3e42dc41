"""Random ledgers in the shape of ``contracts/firestore.md``, the pure model of what a correct
replay makes of them, and random corruptions of them: the ground of the property tests
(``tests/functions/test_properties.py``, ``tests/unit/test_ledger_properties.py``).

- ``ledgers()``: customers with 1-40 events each over 2-3 UTC days: purchases of 1-3 lines,
  partial and full refunds and chargebacks (some past the order's total), redeliveries (one
  order's purchase stored under two event ids), now and then a refund of an order that never
  existed; some events already processed by the live path, with the entries and wallets it
  wrote (the model's, applied to those events in the order they arrived).
- ``expected_ledger(events, products)``: the model, from the contract's rules alone (it
  imports nothing of ``shared``): each order credited once (``purchase_{orderId}``), one
  ``reversal_{eventId}`` per refund that moves ``refundedAmount``, reversed points
  ``floor(points * min(refunded, total) / total)`` cumulatively, a refund without a purchase
  fails.
- ``corruptions(ledger)``: plants each ``ledger_verify`` finding kind into the settled ledger,
  one kind per customer (alone or beside other customers' kinds), and says what a correct
  verify reports and what a correct repair leaves.

What a ledger is worth is compared with ``summary``: the order in which a run applies refunds
(chunks and pages in any order) decides which refund of an order crosses its total, and so how
the order's reversed points split among its reversal entries; it does not change what they add
up to, nor any purchase entry, wallet or flag, which is what ``summary`` holds.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from google.cloud import firestore
from hypothesis import strategies as st

from shared.adapters import schema
from tests.data import at, documents, product, purchase, put, refund

PURCHASE, REFUND, CHARGEBACK = "ON_ORDER_COMPLETED", "ON_REFUND", "ON_CHARGEBACK"
REVERSALS = (REFUND, CHARGEBACK)
PRODUCTS = ("p1", "p2", "p3")
LEDGER, WALLETS, EVENTS = schema.LEDGER, schema.WALLETS, schema.EVENTS
MINUTES_A_DAY = 24 * 60
# What a repair fixes; the other kinds it leaves to a person (the README's "Verify").
# The finding kinds of ``ledger_verify`` (shared/backfills/ledger_verify.py), in its order.
KINDS = ("missing_entry", "missing_reversal", "wrong_points", "unflagged_event", "wallet_drift",
         "orphan_entry", "duplicate_entries", "reversal_over_purchase", "reversal_mismatch")
REPAIRABLE = frozenset({"missing_entry", "missing_reversal", "unflagged_event", "wallet_drift"})
Finding = tuple[str, str]  # (code, subject), as the run's records name them


def minute(offset: int) -> dt.datetime:
    """The receivedAt ``offset`` minutes after 2025-01-01T00:00Z."""
    return at(1 + offset // MINUTES_A_DAY, offset % MINUTES_A_DAY)


def canonical(events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Events in the order they arrived (and a replay's pages read them): by receivedAt, then
    id."""
    return sorted(events, key=lambda event: (event["receivedAt"], event["eventId"]))


# --- the model ------------------------------------------------------------------------------


@dataclasses.dataclass
class Model:
    """A ledger as the contract's rules make it: entries by id, wallets by customer, the events
    whose effect exists (``processed``), the refunds that fail (no purchase), and for each
    reversal entry its purchase entry's (refundedAmount, reversedPoints) just before it."""

    entries: dict[str, dict[str, Any]]
    wallets: dict[str, int]
    processed: set[str]
    failed: set[str]
    before: dict[str, tuple[int, int]]

    def summary(self) -> dict[str, Any]:
        return summary(self.entries, self.wallets, self.processed)


def expected_ledger(events: Iterable[Mapping[str, Any]], products: Mapping[str, int],
                    source: str = "backfill", migration_id: str | None = None) -> Model:
    """What applying ``events`` in the order they arrived makes of an empty ledger, by the
    contract's rules (``contracts/firestore.md``), with ``products`` as points per unit.

    A purchase credits ``sum(points * quantity)`` once per order; a redelivery of it is settled
    by the credit that exists. A refund or chargeback of ``amount`` raises ``refundedAmount`` to
    at most ``orderTotal`` and reverses ``floor(points * refunded / total)`` minus what was
    reversed before, in its own entry (even of 0 points); one that raises nothing (its order is
    fully refunded) is settled without an entry; one whose purchase entry does not exist fails.
    """
    entries: dict[str, dict[str, Any]] = {}
    wallets: dict[str, int] = defaultdict(int)
    processed: set[str] = set()
    failed: set[str] = set()
    before: dict[str, tuple[int, int]] = {}
    for event in canonical(events):
        event_id, kind = event["eventId"], event["eventType"]
        body = event["payload"]["body"]
        if kind == PURCHASE:
            entry_id = f"purchase_{body['id']}"
            if entry_id not in entries:
                customer = body["customer"]["id"]
                points = sum(products[line["product_id"]] * line["quantity"]
                             for line in body["lines"])
                entries[entry_id] = {
                    "customerId": customer, "type": "purchase", "points": points,
                    "orderId": body["id"], "sourceEventId": event_id, "source": source,
                    "migrationId": migration_id, "orderTotal": body["total_amount"],
                    "refundedAmount": 0, "reversedPoints": 0}
                wallets[customer] += points
            processed.add(event_id)
        elif kind in REVERSALS:
            purchase_id = f"purchase_{body['order_id']}"
            bought = entries.get(purchase_id)
            if bought is None:
                failed.add(event_id)
                continue
            processed.add(event_id)
            total, was = bought["orderTotal"], bought["refundedAmount"]
            refunded = min(total, was + body["amount"])
            if refunded == was:
                continue
            reversed_ = bought["points"] * refunded // total
            points = -(reversed_ - bought["reversedPoints"])
            before[f"reversal_{event_id}"] = (was, bought["reversedPoints"])
            entries[f"reversal_{event_id}"] = {
                "customerId": bought["customerId"], "type": "reversal", "points": points,
                "orderId": body["order_id"], "sourceEventId": event_id, "source": source,
                "migrationId": migration_id, "reversesEntryId": purchase_id}
            bought.update(refundedAmount=refunded, reversedPoints=reversed_)
            wallets[bought["customerId"]] += points
    return Model(entries, dict(wallets), processed, failed, before)


def summary(entries: Mapping[str, Mapping[str, Any]], wallets: Mapping[str, int],
            processed: Iterable[str]) -> dict[str, Any]:
    """What a ledger is worth, whatever order its events were applied in: each purchase entry
    not rolled back (customer, points, orderTotal, refundedAmount, reversedPoints), each
    order's net points over all its entries, the wallets, the events flagged processed
    (zeros left out: a wallet never moved has no document)."""
    purchases = {entry_id: (entry["customerId"], entry["points"], entry["orderTotal"],
                            entry["refundedAmount"], entry["reversedPoints"])
                 for entry_id, entry in entries.items()
                 if entry["type"] == "purchase" and not entry.get("rolledBackBy")}
    net: dict[str, int] = defaultdict(int)
    for entry in entries.values():
        if isinstance(entry.get("orderId"), str):
            net[entry["orderId"]] += entry["points"]
    return {"purchases": purchases,
            "net": {order: points for order, points in net.items() if points},
            "wallets": {customer: balance for customer, balance in wallets.items() if balance},
            "processed": sorted(processed)}


def summary_of(db: firestore.Client) -> dict[str, Any]:
    """``summary`` of what Firestore holds."""
    return summary(documents(db, LEDGER), wallets_of(db),
                   (event_id for event_id, event in documents(db, EVENTS).items()
                    if event.get("processed") is True))


def wallets_of(db: firestore.Client) -> dict[str, int]:
    return {customer: wallet["balance"] for customer, wallet in documents(db, WALLETS).items()}


def entry_sums(db: firestore.Client) -> dict[str, int]:
    """Each customer's sum of entries, for every customer with a wallet or an entry."""
    sums: dict[str, int] = dict.fromkeys(wallets_of(db), 0)
    for entry in documents(db, LEDGER).values():
        sums[entry["customerId"]] = sums.get(entry["customerId"], 0) + entry["points"]
    return sums


# --- what is stored -------------------------------------------------------------------------


@dataclasses.dataclass
class State:
    """Documents as stored: webhook events, ledger entries, wallets (by id)."""

    events: dict[str, dict[str, Any]]
    entries: dict[str, dict[str, Any]]
    wallets: dict[str, int]

    def copy(self) -> State:
        return copy.deepcopy(self)

    def put(self, db: firestore.Client, products: Mapping[str, int]) -> None:
        for product_id, points in products.items():
            product(db, product_id, points)
        put(db, *self.events.values())
        written = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
        batch, count = db.batch(), 0
        for collection, documents_ in ((LEDGER, {
                entry_id: {**entry, "createdAt": written}
                for entry_id, entry in self.entries.items()}), (WALLETS, {
                customer: {"balance": balance, "updatedAt": written}
                for customer, balance in self.wallets.items()})):
            for doc_id, data in documents_.items():
                batch.set(db.collection(collection).document(doc_id), data)
                count += 1
                if count % 400 == 0:
                    batch.commit()
                    batch = db.batch()
        batch.commit()


@dataclasses.dataclass(frozen=True)
class Ledger:
    """A random ledger: products, the events as the live receiver stored them, and which of
    them the live path processed (``live``: what it wrote for them)."""

    days: int
    products: dict[str, int]
    events: tuple[dict[str, Any], ...]
    attempted: frozenset[str]  # the events the live path tried (in the order they arrived)

    @property
    def range(self) -> dict[str, str]:
        return {"startDate": "2025-01-01", "endDate": f"2025-01-0{self.days}"}

    @property
    def live(self) -> Model:
        """What the live path wrote for the events it tried, as it tried them."""
        return expected_ledger([event for event in self.events
                                if event["eventId"] in self.attempted], self.products,
                               source="webhook")

    def expected(self) -> Model:
        """What a correct replay of the whole range leaves (live path's part included)."""
        return expected_ledger(self.events, self.products)

    def state(self) -> State:
        """The documents before any run: the events flagged as the live path left them."""
        live = self.live
        events: dict[str, dict[str, Any]] = {}
        for event in self.events:
            event_id = event["eventId"]
            done = event_id in live.processed
            events[event_id] = {
                **event, "processed": done,
                "processedAt": event["receivedAt"] + dt.timedelta(seconds=1) if done else None,
                "processingError": (f"Original purchase entry not found: "
                                    f"{event['payload']['body']['order_id']}"
                                    if event_id in live.failed else None)}
        return State(events, copy.deepcopy(live.entries), dict(live.wallets))

    def put(self, db: firestore.Client) -> None:
        self.state().put(db, self.products)

    def orders(self) -> dict[str, list[Mapping[str, Any]]]:
        """Each order's events (purchases and refunds), in the order they arrived."""
        by_order: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for event in canonical(self.events):
            body = event["payload"]["body"]
            by_order[body["id"] if event["eventType"] == PURCHASE
                     else body["order_id"]].append(event)
        return dict(by_order)

    def __repr__(self) -> str:
        """The call of ``parse`` that makes this ledger again, one line per event: a falsifying
        example pasted as it is printed is a regression test."""
        lines = [f"parse(days={self.days}, products={self.products}, events=["]
        lines += [f"    {describe(event, event['eventId'] in self.attempted)!r},"
                  for event in canonical(self.events)]
        return "\n".join([*lines, "])"])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How hypothesis prints it (``__repr__``, not the dataclass's fields)."""
        printer.text(repr(self))


_KINDS = {"purchase": PURCHASE, "refund": REFUND, "chargeback": CHARGEBACK}


def describe(event: Mapping[str, Any], live: bool) -> str:
    """One event in a line ``parse`` reads: ``id day HH:MM purchase order of customer
    p1x2+p3x1 total=N [live]`` or ``id day HH:MM refund|chargeback order amount=N [live]``
    (``live``: the live path tried it)."""
    body = event["payload"]["body"]
    when = event["receivedAt"].strftime("%d %H:%M")
    tried = " live" if live else ""
    if event["eventType"] == PURCHASE:
        lines = "+".join(f"{line['product_id']}x{line['quantity']}" for line in body["lines"])
        return (f"{event['eventId']} {when} purchase {body['id']} of {body['customer']['id']} "
                f"{lines} total={body['total_amount']}{tried}")
    kind = "refund" if event["eventType"] == REFUND else "chargeback"
    return f"{event['eventId']} {when} {kind} {body['order_id']} amount={body['amount']}{tried}"


def parse(days: int, products: Mapping[str, int], events: Iterable[str]) -> Ledger:
    """The ledger of ``events`` described as ``describe`` writes them (see ``Ledger``'s
    repr)."""
    made: list[dict[str, Any]] = []
    tried: set[str] = set()
    for line in events:
        words = line.split()
        if words[-1] == "live":
            tried.add(words[0])
            words.pop()
        event_id, day, clock, kind, order = words[:5]
        hours, minutes = clock.split(":")
        received = at(int(day), int(hours) * 60 + int(minutes))
        if _KINDS[kind] == PURCHASE:
            customer, bought, total = words[6], words[7], words[8].removeprefix("total=")
            lines = [(item.split("x")[0], int(item.split("x")[1])) for item in bought.split("+")]
            made.append(purchase(event_id, order, received, customer, lines, int(total)))
        else:
            made.append(refund(event_id, order, received, int(words[5].removeprefix("amount=")),
                               _KINDS[kind]))
    return Ledger(days, dict(products), tuple(made), frozenset(tried))


# --- strategies -----------------------------------------------------------------------------

# Shrinks towards the first value: "usually not".
SOMETIMES = st.sampled_from([False, False, False, True])


@st.composite
def customer_events(draw: st.DrawFn, customer: str, days: int,
                    max_events: int = 40) -> list[dict[str, Any]]:
    """One customer's events: orders bought at random minutes of the range, each perhaps
    redelivered, refunded or charged back (partly, fully, or past its total) later on."""
    end = days * MINUTES_A_DAY - 1  # the last minute of the range
    made: list[dict[str, Any]] = []

    def next_id() -> str:
        return f"{customer}-e{len(made)}"

    for number in range(draw(st.integers(1, 12))):
        order = f"{customer}-o{number}"
        lines = draw(st.lists(st.tuples(st.sampled_from(PRODUCTS), st.integers(1, 3)),
                              min_size=1, max_size=3))
        total = draw(st.integers(1, 5000))
        bought = draw(st.integers(0, end - 1))
        made.append(purchase(next_id(), order, minute(bought), customer, lines, total))
        if draw(SOMETIMES):  # PayNow delivered the webhook twice: two events, one order
            made.append(purchase(next_id(), order, minute(draw(st.integers(bought, end))),
                                 customer, lines, total))
        for _ in range(draw(st.integers(0, 3))):
            amount = draw(st.one_of(st.integers(1, total), st.just(total),
                                    st.integers(total + 1, 2 * total)))
            kind = draw(st.sampled_from([REFUND, REFUND, CHARGEBACK]))
            made.append(refund(next_id(), order, minute(draw(st.integers(bought + 1, end))),
                               amount, kind))
    if draw(SOMETIMES):  # a refund of an order that never existed: it fails
        made.append(refund(next_id(), f"{customer}-gone", minute(draw(st.integers(0, end))),
                           draw(st.integers(1, 100))))
    return made[:max_events]


@st.composite
def ledgers(draw: st.DrawFn, max_customers: int = 4,
            live: st.SearchStrategy[bool] | None = None) -> Ledger:
    """A random ledger of 1..``max_customers`` customers; ``live`` draws, per event, whether
    the live path tried it."""
    days = draw(st.integers(2, 3))
    products = dict(zip(PRODUCTS, draw(st.lists(st.integers(1, 60), min_size=3, max_size=3)),
                        strict=True))
    events: list[dict[str, Any]] = []
    for number in range(draw(st.integers(1, max_customers))):
        events += draw(customer_events(f"c{number}", days))
    tried = draw(st.lists(st.booleans() if live is None else live, min_size=len(events),
                          max_size=len(events)))
    return Ledger(days, products, tuple(events),
                  frozenset(event["eventId"] for event, flag in zip(events, tried, strict=True)
                            if flag))


# --- corruption -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plant:
    """One corruption planted for one customer: its kind, what it corrupts (an event, an entry
    or an order), whether the wallet shows the lost entry's credit or debit (the two missing
    kinds), and the points involved."""

    kind: str
    customer: str
    target: str
    happened: bool | None = None
    points: int = 0


@dataclasses.dataclass(frozen=True)
class Corruption:
    """Plants, each for its own customer, planted into a ledger's documents as the live path
    left them: ``state`` (corrupted), what a correct verify reports (``findings``, by code and
    subject), what it leaves to a person after a repair (``for_a_person``), and the wallets a
    correct repair leaves (``repaired_wallets``: moved only where the lost credit or debit
    never happened)."""

    ledger: Ledger
    plants: tuple[Plant, ...]
    state: State
    findings: frozenset[Finding]
    for_a_person: frozenset[Finding]
    repaired_wallets: dict[str, int]

    def __repr__(self) -> str:
        """The call of ``corrupt`` that makes it again."""
        return f"corrupt(\n{self.ledger!r},\n{list(self.plants)!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def _candidates(ledger: Ledger, state: State) -> dict[str, dict[str, list[str]]]:
    """What each customer's settled ledger offers to corrupt: the targets of each kind."""
    orders = ledger.orders()
    found: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for _, entry in sorted(state.entries.items()):
        customer, order = entry["customerId"], entry["orderId"]
        events = orders[order]
        if entry["type"] == "purchase":
            # Orders bought once and never refunded: their entry stands alone.
            if [event["eventType"] for event in events] == [PURCHASE]:
                found[customer]["missing_entry"].append(order)
                found[customer]["wrong_points"].append(order)
            for kind in ("duplicate_entries", "reversal_over_purchase", "reversal_mismatch"):
                found[customer][kind].append(order)
        elif [event["eventId"] for event in events if event["eventType"] in REVERSALS
              and state.events[event["eventId"]]["processed"]][-1] == entry["sourceEventId"]:
            # The order's last settled refund: nothing settled after it was computed on top.
            found[customer]["missing_reversal"].append(entry["sourceEventId"])
        if state.events[entry["sourceEventId"]]["processed"]:
            found[customer]["unflagged_event"].append(entry["sourceEventId"])
    for customer in state.wallets:
        found[customer]["wallet_drift"].append(customer)
    for event in ledger.events:
        if event["eventType"] == PURCHASE:
            customer = event["payload"]["body"]["customer"]["id"]
            found[customer]["orphan_entry"] = [customer]
    return {customer: dict(kinds) for customer, kinds in found.items()}


@st.composite
def corruptions(draw: st.DrawFn, ledger: Ledger) -> Corruption:
    """Corruptions of ``ledger``'s documents (as the live path left them: ``Ledger.state``):
    one finding kind for each of 1..n customers, any kind for any of them."""
    clean = ledger.state()
    candidates = _candidates(ledger, clean)
    chosen = draw(st.lists(st.sampled_from(sorted(candidates)), min_size=1,
                           max_size=len(candidates), unique=True))
    plants = []
    for customer in chosen:
        kind = draw(st.sampled_from([kind for kind in KINDS if kind in candidates[customer]]))
        target = draw(st.sampled_from(candidates[customer][kind]))
        happened = draw(st.booleans()) if kind in ("missing_entry", "missing_reversal") else None
        points = 0
        if kind == "missing_entry":  # (the points lost, shown with the plant)
            points = clean.entries[f"purchase_{target}"]["points"]
        elif kind == "missing_reversal":
            points = clean.entries[f"reversal_{target}"]["points"]
        elif kind == "wrong_points":
            credited = clean.entries[f"purchase_{target}"]["points"]
            points = draw(st.integers(1, credited + 49))
            points += points >= credited  # any other number of points
        elif kind in ("wallet_drift", "orphan_entry", "reversal_over_purchase"):
            points = draw(st.integers(1, 50))
            if kind == "wallet_drift":
                points *= draw(st.sampled_from([1, -1]))
        elif kind == "reversal_mismatch":
            points = draw(st.integers(1, 20))
        plants.append(Plant(kind, customer, target, happened, points))
    return corrupt(ledger, plants)


@st.composite
def corrupted_ledgers(draw: st.DrawFn, live: st.SearchStrategy[bool] | None = None) -> Corruption:
    """A random ledger (``ledgers(live=live)``) with random corruptions."""
    return draw(corruptions(draw(ledgers(live=live))))


def corrupt(ledger: Ledger, plants: Iterable[Plant]) -> Corruption:
    """Plant ``plants`` into ``ledger``'s documents as ``test_verify`` plants them by hand.
    (``Plant.points`` of the two missing kinds is only shown: the lost entry's own.)"""
    plants = tuple(plants)
    state = ledger.state()
    entries, wallets = state.entries, state.wallets
    findings: set[Finding] = set()
    person: set[Finding] = set()
    moved: dict[str, int] = {}  # what a repair moves a wallet by
    for one in plants:
        customer, target = one.customer, one.target
        wallet = f"{WALLETS}/{customer}"
        if one.kind == "missing_entry":
            lost = entries.pop(f"purchase_{target}")
            findings.add(("missing_entry", f"{EVENTS}/{lost['sourceEventId']}"))
            if one.happened:
                findings.add(("wallet_drift", wallet))
            else:
                wallets[customer] -= lost["points"]
                moved[customer] = lost["points"]
        elif one.kind == "missing_reversal":
            lost = entries.pop(f"reversal_{target}")
            bought = entries[f"purchase_{lost['orderId']}"]
            refunded, reversed_ = ledger.live.before[f"reversal_{target}"]
            bought.update(refundedAmount=refunded, reversedPoints=reversed_)
            findings.add(("missing_reversal", f"{EVENTS}/{target}"))
            if one.happened and lost["points"]:
                findings.add(("wallet_drift", wallet))
            elif not one.happened:
                wallets[customer] -= lost["points"]
                moved[customer] = lost["points"]
        elif one.kind == "wrong_points":
            entry = entries[f"purchase_{target}"]
            wallets[customer] += one.points - entry["points"]
            entry["points"] = one.points
            person.add(("wrong_points", f"{LEDGER}/purchase_{target}"))
        elif one.kind == "unflagged_event":
            state.events[target].update(processed=False, processedAt=None)
            findings.add(("unflagged_event", f"{EVENTS}/{target}"))
        elif one.kind == "wallet_drift":
            wallets[customer] += one.points
            findings.add(("wallet_drift", wallet))
        elif one.kind == "orphan_entry":
            ghost = f"{customer}-ghost"
            entries[f"purchase_{ghost}"] = {
                "customerId": customer, "type": "purchase", "points": one.points,
                "orderId": ghost, "sourceEventId": f"{ghost}-event", "source": "webhook",
                "migrationId": None, "orderTotal": 1000, "refundedAmount": 0,
                "reversedPoints": 0}
            wallets[customer] = wallets.get(customer, 0) + one.points
            person.add(("orphan_entry", f"{LEDGER}/purchase_{ghost}"))
        elif one.kind == "duplicate_entries":
            entry = entries[f"purchase_{target}"]
            entries[f"purchase_{target}_again"] = dict(entry)
            wallets[customer] += entry["points"]
            person.add(("duplicate_entries", f"orders/{target}"))
        elif one.kind == "reversal_over_purchase":
            entry = entries[f"purchase_{target}"]
            over = -(entry["points"] - entry["reversedPoints"] + one.points)
            entries[f"reversal_{target}-over"] = {
                "customerId": customer, "type": "reversal", "points": over, "orderId": target,
                "sourceEventId": entry["sourceEventId"], "source": "webhook",
                "migrationId": None, "reversesEntryId": f"purchase_{target}"}
            wallets[customer] += over
            person.update({("reversal_over_purchase", f"{LEDGER}/purchase_{target}"),
                           ("reversal_mismatch", f"{LEDGER}/purchase_{target}")})
        else:
            assert one.kind == "reversal_mismatch", one
            entries[f"purchase_{target}"]["reversedPoints"] += one.points
            person.add(("reversal_mismatch", f"{LEDGER}/purchase_{target}"))
    repaired = dict(wallets)
    for customer, points in moved.items():
        repaired[customer] += points
    return Corruption(ledger, plants, state, frozenset(findings | person), frozenset(person),
                      repaired)
