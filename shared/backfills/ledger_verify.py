"""``ledger_verify``: checks the ledger of a date range's events against the data contract,
records every violation as a finding, and with ``repair`` fixes what is safe to fix.

Per event of the range (of the target's customers, if given):

- ``missing_entry``: a purchase flagged processed without its ``purchase_{orderId}`` entry;
- ``missing_reversal``: a refund or chargeback flagged processed without its reversal entry,
  whose order is not fully reversed (so it should have one);
- ``wrong_points``: a purchase entry whose points are not ``sum(product.points * quantity)``
  (by today's products: a product whose points changed since shows up here too);
- ``unflagged_event``: an event whose entry exists but which is not flagged processed.

Per customer of those events, their whole ledger (every entry, their wallet):

- ``wallet_drift``: the wallet is not the sum of the customer's entries;
- ``orphan_entry``: an entry whose event does not exist;
- ``duplicate_entries``: more than one purchase entry for one order;
- ``reversal_over_purchase``: an order reversed for more points than it credited;
- ``reversal_mismatch``: an order's ``reversedPoints`` is not
  ``floor(points * min(refunded, total) / total)``, or not what its reversal entries add up to.

Each customer is audited once per run, from the whole picture: their every entry, their
wallet, and every purchase, refund and chargeback of theirs (those of the range, and the rest,
which are "elsewhere"). The page that first meets a customer audits them and records the audit
in the run (``dataMigrations/{id}/audits/{customerId}``, created if absent, in the page's
commit), with its decision on each of the customer's events; any later page (of any chunk, or
a redelivery) that meets the customer takes its events' outcomes from that record instead of
auditing again. Two pages that audit one customer at once cannot both commit: the record is
created by one of them, the other is planned again and reads it. So a repair is decided once,
on everything, however the customer's events fall into pages and chunks.

Repairs (``repair: true``), each in the page's one commit:

- flags: the event of an existing entry is flagged processed;
- missing entries: written from their events by the replay's own rules, with the wallet moved
  when the customer's wallet shows the credit never happened (no drift), or without, when the
  drift is exactly what the missing entries would move (the credit happened, the entry was
  lost); any other drift leaves them to a person;
- a drifted wallet with nothing missing anywhere in the customer's history: one adjustment
  entry ``adjustment_{runId}_{customerId}`` that makes the entries add up to the wallet (the
  balance the customer sees does not move).

A wallet a repair was decided on is written under the update time it was read at, so a wallet
that moved meanwhile makes the page be planned again. A dry run reads its shadow ledger over
the real one, the audit's reads included (the wallet as its shadow entries would move it),
and says of what a live run would repair ``wouldRepair`` (never ``repaired``). The rest needs
a person: its finding says so (``repaired: false``) and what to do. Findings are the run's
records beside its errors: ``GET .../{id}/errors`` is the CSV, status sums them by code
(``errorCodes``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared import clock
from shared.adapters import schema
from shared.adapters.schema import in_window
from shared.backfills.apply import (
    Book,
    apply_purchase,
    apply_reversal,
    entry_path,
    product_path,
    purchase_lookups,
    reversal_lookups,
)
from shared.backfills.base import Event, Finding, ItemResult, PagePlan, Sink, Stored
from shared.backfills.registry import BACKFILLS, BackfillType
from shared.backfills.rules import OUTSIDE_TARGET
from shared.backfills.webhook_events import WebhookEvents
from shared.domain import ledger, target
from shared.domain.chunking import Window
from shared.errors import ItemError
from shared.models import (
    REVERSAL_TYPES,
    EventType,
    OrderCompleted,
    Outcome,
    parse_body,
)

VERIFY = BackfillType.LEDGER_VERIFY.value
CODES = ("missing_entry", "missing_reversal", "wrong_points", "unflagged_event", "wallet_drift",
         "orphan_entry", "duplicate_entries", "reversal_over_purchase", "reversal_mismatch")
_PURCHASE = EventType.ORDER_COMPLETED.value
# Keys of what ``gather`` adds to a page's stored documents, beside the documents themselves.
_PICTURE = "picture"  # a customer to audit: their whole picture
_AUDITED = "audited"  # a customer audited already by this run: the run's record of it
_OWNERS = "owners"  # the customers of orders known only from their purchase events
_BATCH = 300  # documents per get_all
_IN = 30  # values per "in" filter


@dataclasses.dataclass
class _Missing:
    """One customer's missing entries, as the replay's rules would write them (on the
    customer's ledger, each seeing the ones before): candidates for a repair."""

    findings: list[Finding] = dataclasses.field(default_factory=list)
    plan: PagePlan = dataclasses.field(default_factory=PagePlan)


class LedgerVerify(WebhookEvents):
    """See the module's docstring."""

    name = VERIFY
    error_codes = CODES
    page_size: int | None = None
    # What runs that write the ledger do over the same dates comes first.
    waits_for = (BackfillType.WEBHOOK_REPLAY.value, BackfillType.REVERSAL_BACKFILL.value,
                 BackfillType.ROLLBACK.value)
    options = frozenset({"repair", *target.FIELDS})
    # A repair credits missing purchase entries: the preflight checks the products.
    credits_products = True
    event_types = tuple(kind.value for kind in EventType)
    flags_events = False

    def __init__(self, repair: bool = False, aim: target.Target | None = None,
                 dry_run: bool = False) -> None:
        self.repair = repair
        self.target = aim
        self.dry_run = dry_run

    def variant(self, run: Mapping[str, Any]) -> LedgerVerify:
        aim = target.Target.of(run.get("target"))
        if not run.get("repair") and aim is None:
            return self
        return LedgerVerify(bool(run.get("repair")), aim, bool(run.get("dryRun")))

    def refusal(self, action: str) -> str | None:
        if action == "retry":
            return (": its findings are not retried; fix what needs a person, then verify "
                    "the range again")
        return None

    def selection(self, events: firestore.CollectionReference, window: Window) -> Any:
        if self.target is not None and self.target.event_types is not None:
            return in_window(events.where(filter=FieldFilter(
                "eventType", "in", self.target.types(self.event_types))), window)
        return in_window(events, window)

    def lookups(self, events: Sequence[Event]) -> list[str]:
        paths: dict[str, None] = {}
        for event in events:
            if event.event_type == _PURCHASE:
                paths.update(dict.fromkeys(purchase_lookups(event)))
            elif event.event_type in REVERSAL_TYPES:
                paths.update(dict.fromkeys(reversal_lookups(event)))
        return list(paths)

    def gather(self, db: firestore.Client, sink: Sink, events: Sequence[Event],
               stored: Mapping[str, Stored], migration_id: str,
               window: Window) -> dict[str, Stored]:
        """For each customer of the page: the run's record of their audit if there is one,
        else their whole picture (entries and wallet through ``sink``, their events, the
        products of their purchases), to audit them in this page."""
        book = Book(stored, PagePlan())
        owners = _owners(db, events, book)
        found: dict[str, Stored] = {_OWNERS: Stored(owners)}
        customer_of = _customer_of(book, owners)
        customers = sorted({customer for event in events
                            if not self._outside(event, customer_of)
                            and (customer := _customer(event, customer_of))})
        if not customers:
            return found
        records = schema.run_ref(db, migration_id).collection(schema.AUDITS)
        claims = sink.read([records.document(customer).path for customer in customers])
        fresh = []
        for customer in customers:
            claim = claims.get(records.document(customer).path)
            if claim is not None and claim.data is not None:
                found[f"{_AUDITED}/{customer}"] = claim
            else:
                fresh.append(customer)
        with ThreadPoolExecutor(max_workers=8) as pool:
            pictures = list(pool.map(lambda customer: _picture(db, sink, customer, window),
                                     fresh))
        for customer, (documents, picture) in zip(fresh, pictures, strict=True):
            found.update(documents)
            found[f"{_PICTURE}/{customer}"] = picture
        return found

    def plan(self, events: Sequence[Event], stored: Mapping[str, Stored],
             migration_id: str) -> PagePlan:
        plan = PagePlan()
        book = Book(stored, plan)
        owners = stored[_OWNERS].data or {} if _OWNERS in stored else {}
        customer_of = _customer_of(book, owners)
        decided: dict[str, Mapping[str, Any]] = {}
        for path, document in sorted(stored.items()):
            if path.startswith(f"{_AUDITED}/"):
                decided.update((document.data or {}).get("decisions", {}))
            elif path.startswith(f"{_PICTURE}/"):
                customer = path.removeprefix(f"{_PICTURE}/")
                decisions = self._audit(customer, document, book, plan, migration_id)
                plan.audits[customer] = {"customerId": customer, "decisions": decisions}
                decided.update(decisions)
        for event in events:
            result = self._check(event, book, plan, customer_of, migration_id)
            decision = decided.get(event.event_id)
            if decision is not None and not result.outside:
                result.outcome = Outcome(decision["outcome"])
                result.code = str(decision["code"])
            plan.results.append(result)
        return plan

    # --- per event ----------------------------------------------------------------------

    def _outside(self, event: Event, customer_of: Callable[[str], str | None]) -> bool:
        return self.target is not None and self.target.excludes(
            event.event_id, event.event_type, event.data, customer_of) is not None

    def _check(self, event: Event, book: Book, plan: PagePlan,
               customer_of: Callable[[str], str | None], migration_id: str) -> ItemResult:
        """The event's own checks; answers it as consistent (a duplicate: its effect is
        there) unless a finding says otherwise. A processed event without its entry is its
        customer's audit's to decide; one whose customer cannot be told is reported here."""
        result = ItemResult(event.event_id, event.event_type, Outcome.DUPLICATE, settled=False)
        if self._outside(event, customer_of):
            return ItemResult(event.event_id, event.event_type, Outcome.SKIPPED,
                              code=OUTSIDE_TARGET, settled=False, outside=True)
        if event.event_type not in (_PURCHASE, *REVERSAL_TYPES):
            result.outcome, result.code = Outcome.SKIPPED, "no_ledger_effect"
            return result
        entry_id = _own_entry(event)
        if entry_id is None:
            result.outcome, result.code = Outcome.SKIPPED, "unreadable"
            return result
        entry = book.entry(entry_id)
        processed = event.data.get("processed") is True
        if entry is None or entry.get("rolledBackBy"):
            if not processed:
                result.outcome, result.code = Outcome.SKIPPED, "unprocessed"
            elif _lacks_entry(event, book) and _customer(event, customer_of) is None:
                code = "missing_entry" if event.event_type == _PURCHASE else "missing_reversal"
                plan.findings.append(Finding(
                    code, f"{schema.EVENTS}/{event.event_id}",
                    "flagged processed without its entry; its customer cannot be told (its "
                    "order has no purchase entry nor purchase event)",
                    "find the order's purchase; settle it by hand", event.event_id,
                    event.event_type))
                result.outcome, result.code = Outcome.SKIPPED, code
            return result
        if event.event_type == _PURCHASE:
            self._check_points(event, entry, entry_id, book, plan)
        if not processed and entry.get("sourceEventId") == event.event_id:
            self._flag(event.event_id, event.event_type, plan, migration_id,
                       f"its entry {entry_id} exists, but the event is not flagged processed")
        return result

    def _check_points(self, event: Event, entry: Mapping[str, Any], entry_id: str,
                      book: Book, plan: PagePlan) -> None:
        order = parse_body(OrderCompleted, event.data)
        try:
            points = ledger.purchase_points(
                order, {line.product_id: book.product(line.product_id) for line in order.lines})
        except ItemError:
            return  # a product is gone (or the sum is out of range): nothing to compare with
        if entry.get("points") != points and entry.get("sourceEventId") == event.event_id:
            plan.findings.append(Finding(
                "wrong_points", entry_path(entry_id),
                f"the entry credits {entry.get('points')} points; its order's lines at "
                f"today's product points make {points}",
                "check whether a product's points changed since; correct it by hand",
                event.event_id, event.event_type))

    def _flag(self, event_id: str, event_type: str, plan: PagePlan, migration_id: str,
              message: str) -> None:
        if self.repair:
            plan.event_updates[event_id] = {
                "processed": True, "processedAt": clock.now(),
                "backfillMigrationId": migration_id, "backfillOutcome": "repaired"}
        if not any(f.code == "unflagged_event" and f.event_id == event_id
                   for f in plan.findings):
            finding = Finding("unflagged_event", f"{schema.EVENTS}/{event_id}", message,
                              "ledger_verify with repair flags it", event_id, event_type)
            plan.findings.append(self._repaired(finding) if self.repair else finding)

    def _repaired(self, finding: Finding) -> Finding:
        """The finding as this run's repair leaves it: repaired, or in a dry run, what a live
        run would repair (nothing was written but the run's shadow)."""
        if self.dry_run:
            return dataclasses.replace(
                finding, repaired=False, would_repair=True,
                hint="dry run: nothing was written; a live ledger_verify with repair "
                     "would repair it")
        return dataclasses.replace(finding, repaired=True, hint="")

    # --- per customer -------------------------------------------------------------------

    def _audit(self, customer: str, picture: Stored, book: Book, plan: PagePlan,
               migration_id: str) -> dict[str, dict[str, str]]:
        """Audit one customer on their whole picture, once for the run; answers its decision
        on each of their events that has a finding (the outcome their pages record)."""
        data = picture.data or {}
        window = Window(data["windowStart"], data["windowEnd"])
        events = [Event(event_id, fields) for event_id, fields in data["events"]]
        owners = {**data.get("owners", {})}
        customer_of = _customer_of(book, owners)
        found = _Missing()
        overlay = _Overlay(book, found.plan)
        elsewhere = 0
        for event in events:
            if not _lacks_entry(event, overlay):
                continue
            inside = window.start <= event.received_at < window.end and not self._outside(
                event, customer_of)
            if inside:
                self._candidate(event, overlay, plan, found, migration_id)
            elif _would_write(event, _Overlay(overlay, PagePlan()), migration_id):
                elsewhere += 1
        first = len(plan.findings)
        self._check_customer(customer, picture, found, plan, migration_id, elsewhere)
        mine = {event.event_id for event in events}
        decisions: dict[str, dict[str, str]] = {}
        for finding in plan.findings[first:]:
            if finding.event_id in mine and finding.code in ("missing_entry",
                                                             "missing_reversal"):
                done = finding.repaired or finding.would_repair
                decisions[finding.event_id] = {
                    "outcome": (Outcome.APPLIED if done else Outcome.SKIPPED).value,
                    "code": "repaired" if done else finding.code}
        return decisions

    def _candidate(self, event: Event, overlay: Book, plan: PagePlan, found: _Missing,
                   migration_id: str) -> None:
        """A processed event without its entry: what the replay's rule would write for it."""
        is_purchase = event.event_type == _PURCHASE
        rule = apply_purchase if is_purchase else apply_reversal
        code = "missing_entry" if is_purchase else "missing_reversal"
        try:
            outcome = rule(event, overlay, found.plan, migration_id)
        except ItemError as error:
            plan.findings.append(Finding(
                code, f"{schema.EVENTS}/{event.event_id}",
                f"flagged processed without its entry; it cannot be applied: {error.message}",
                error.hint or "fix the cause, then replay it with includeProcessed",
                event.event_id, event.event_type))
            return
        if outcome.outcome is not Outcome.APPLIED:
            return  # nothing to write: a refund of an order fully reversed already
        found.findings.append(Finding(
            code, f"{schema.EVENTS}/{event.event_id}",
            f"flagged processed without its {'entry' if is_purchase else 'reversal entry'} "
            f"({outcome.points:+} points)",
            "ledger_verify with repair writes it when the wallet shows whether it was credited",
            event.event_id, event.event_type))

    def _check_customer(self, customer: str, audit: Stored, found: _Missing,
                        plan: PagePlan, migration_id: str, elsewhere: int) -> None:
        data = audit.data or {}
        entries: dict[str, dict[str, Any]] = data.get("entries", {})
        events: dict[str, bool | None] = data.get("processed", {})
        for entry_id, entry in sorted(entries.items()):
            event_id = entry.get("sourceEventId")
            if entry.get("type") == "adjustment" or not isinstance(event_id, str):
                continue
            processed = events.get(event_id)
            if processed is None:
                plan.findings.append(Finding(
                    "orphan_entry", entry_path(entry_id),
                    f"its event {event_id} does not exist", "find where the entry came from; "
                    "settle it by hand", event_id))
            elif (not processed and not entry.get("rolledBackBy")
                  and entry.get("type") in ("purchase", "reversal", "reinstatement")
                  and not entry.get("compensates")):
                self._flag(event_id, "", plan, migration_id,
                           f"its entry {entry_id} exists, but the event is not flagged "
                           "processed")
        plan.findings.extend(_order_findings(entries))
        balance, exists = data.get("balance"), data.get("walletExists", False)
        drift = int(balance or 0) - sum(int(entry.get("points", 0)) for entry in
                                        entries.values())
        candidates = found.plan.wallet_deltas.get(customer, 0)
        subject = f"{schema.WALLETS}/{customer}"
        if drift == 0 and found.findings:
            self._settle(found, plan, self.repair, audit.update_time, credit=True)
        elif found.findings and drift == candidates and elsewhere == 0:
            # The credits happened; the entries were lost: write them without moving it.
            self._settle(found, plan, self.repair, audit.update_time, credit=False)
            finding = Finding(
                "wallet_drift", subject, f"the wallet is {drift:+} points off its entries: "
                "the credits of the missing entries found", "ledger_verify with repair "
                "writes the missing entries without moving the wallet")
            plan.findings.append(self._repaired(finding) if self.repair else finding)
        elif drift:
            self._settle(found, plan, repair=False)
            adjustable = exists and not found.findings and elsewhere == 0
            if self.repair and adjustable:
                plan.creates[ledger.adjustment_id(migration_id, customer)] = {
                    "customerId": customer, "type": "adjustment", "points": drift,
                    "orderId": None, "sourceEventId": None, "source": "backfill",
                    "migrationId": migration_id,
                    "reason": f"wallet {balance} was {drift:+} points off its entries"}
                if audit.update_time is not None:
                    plan.wallet_guards[customer] = audit.update_time
            finding = Finding(
                "wallet_drift", subject,
                f"the wallet is {balance if exists else '(missing)'}, its entries add up to "
                f"{int(balance or 0) - drift} ({drift:+})"
                + (f"; {elsewhere} processed event(s) of the customer outside the range lack "
                   "their entry" if elsewhere else ""),
                "ledger_verify with repair writes an adjustment entry once nothing is "
                "missing" if adjustable else
                "find the missing entries' credits first; settle the wallet by hand")
            plan.findings.append(self._repaired(finding) if self.repair and adjustable
                                 else finding)
        else:
            self._settle(found, plan, repair=False)

    def _settle(self, found: _Missing, plan: PagePlan, repair: bool,
                wallet_read: dt.datetime | None = None, credit: bool = True) -> None:
        """Record the customer's missing entries, written (with or without the wallet's
        credit) when ``repair``."""
        for finding in found.findings:
            if repair:
                plan.findings.append(self._repaired(finding))
            elif self.repair:
                plan.findings.append(dataclasses.replace(
                    finding, hint="the customer's wallet does not show whether it was "
                                  "credited: settle it by hand"))
            else:
                plan.findings.append(finding)
        if not repair:
            return
        scratch = found.plan
        plan.creates.update(scratch.creates)
        for entry_id, (fields, read_at) in scratch.updates.items():
            plan.updates[entry_id] = (fields, read_at)
        if credit:
            for customer, delta in scratch.wallet_deltas.items():
                plan.credit(customer, delta)
        for customer in scratch.wallet_deltas:
            if wallet_read is not None:
                plan.wallet_guards[customer] = wallet_read
        plan.event_updates.update({event_id: {
            "processed": True, "processedAt": clock.now(), "backfillOutcome": "repaired"}
            for event_id in (f.event_id for f in found.findings)})


class _Overlay(Book):
    """The page's view of the ledger with one customer's candidate repairs on top (so two
    deliveries of one order, or two refunds of it, see each other)."""

    def __init__(self, book: Book, scratch: PagePlan) -> None:
        super().__init__(book.stored, scratch)
        self._under = book

    def entry(self, entry_id: str) -> dict[str, Any] | None:
        if entry_id in self._plan.creates:
            return self._plan.creates[entry_id]
        under = self._under.entry(entry_id)
        return None if under is None else {**under, **self._changed.get(entry_id, {})}

    def change(self, entry_id: str, fields: Mapping[str, Any]) -> None:
        if entry_id in self._plan.creates or entry_path(entry_id) in self.stored:
            super().change(entry_id, fields)
        else:  # created by the plan underneath (an overlay on an overlay): seen, not written
            self._changed.setdefault(entry_id, {}).update(fields)


def _lacks_entry(event: Event, book: Book) -> bool:
    """A processed event whose entry does not exist (a repair candidate), unless a run
    settled it without one (a refund of an order it found fully reversed)."""
    entry_id = _own_entry(event)
    if event.data.get("processed") is not True or entry_id is None:
        return False
    if event.event_type != _PURCHASE and event.data.get("backfillOutcome") == "skipped":
        return False
    entry = book.entry(entry_id)
    return entry is None or bool(entry.get("rolledBackBy"))


def _would_write(event: Event, overlay: Book, migration_id: str) -> bool:
    """Whether the replay's rule would write an entry for the event (on a throwaway plan)."""
    rule = apply_purchase if event.event_type == _PURCHASE else apply_reversal
    try:
        return rule(event, overlay, PagePlan(), migration_id).outcome is Outcome.APPLIED
    except ItemError:
        return True  # it cannot be applied: its entry is missing all the same


def _own_entry(event: Event) -> str | None:
    """The id of the entry a purchase, refund or chargeback makes (None: unreadable)."""
    try:
        if event.event_type == _PURCHASE:
            return ledger.purchase_id(parse_body(OrderCompleted, event.data).id)
        if event.event_type in REVERSAL_TYPES:
            return ledger.reversal_id(event.event_id)
    except ItemError:
        return None
    return None


def _body(event: Event) -> Mapping[str, Any]:
    payload = event.data.get("payload")
    body = payload.get("body") if isinstance(payload, dict) else None
    return body if isinstance(body, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _customer_of(book: Book, owners: Mapping[str, str]) -> Callable[[str], str | None]:
    """The customer of an order: its purchase entry's, else its purchase event's."""
    return lambda order_id: book.customer_of(order_id) or owners.get(order_id)


def _customer(event: Event, customer_of: Callable[[str], str | None]) -> str | None:
    body = _body(event)
    if event.event_type == _PURCHASE:
        customer = body.get("customer")
        return _text(customer.get("id")) if isinstance(customer, dict) else None
    order_id = _text(body.get("order_id"))
    return customer_of(order_id) if order_id else None


def _owners(db: firestore.Client, events: Sequence[Event], book: Book) -> dict[str, str]:
    """The customers of the orders of the page's refunds and chargebacks that have no
    purchase entry, from their orders' purchase events."""
    orders = sorted({order_id for event in events if event.event_type in REVERSAL_TYPES
                     and (order_id := _text(_body(event).get("order_id")))
                     and book.customer_of(order_id) is None})
    owners: dict[str, str] = {}
    for start in range(0, len(orders), _IN):
        query = db.collection(schema.EVENTS).where(
            filter=FieldFilter("eventType", "==", _PURCHASE)).where(
            filter=FieldFilter("payload.body.id", "in", orders[start:start + _IN]))
        for snap in query.select(["payload.body.id", "payload.body.customer.id"]).stream():
            purchase = Event(snap.id, snap.to_dict() or {})
            order_id, customer = _text(_body(purchase).get("id")), _customer(
                purchase, lambda _: None)
            if order_id and customer:
                owners.setdefault(order_id, customer)
    return owners


def _picture(db: firestore.Client, sink: Sink, customer: str,
             window: Window) -> tuple[dict[str, Stored], Stored]:
    """One customer's whole picture: their entries (by path, as ``sink`` sees them) and the
    products of their purchases, to put among the page's documents; and what the audit
    reads: the entries, the wallet (the picture's update time is the wallet's), every
    purchase, refund and chargeback of theirs in (receivedAt, id) order, and whether each
    entry's event exists and is flagged."""
    entries, wallet = sink.customer_ledger(customer)
    events_ref = db.collection(schema.EVENTS)
    found: dict[str, Event] = {}
    purchases = events_ref.where(filter=FieldFilter("eventType", "==", _PURCHASE)).where(
        filter=FieldFilter("payload.body.customer.id", "==", customer))
    for snap in purchases.stream():
        found[snap.id] = Event(snap.id, snap.to_dict() or {})
    owners = {order_id: customer for event in found.values()
              if (order_id := _text(_body(event).get("id")))}
    orders = sorted({*owners, *(order_id for entry in entries.values()
                                if (order_id := _text((entry.data or {}).get("orderId"))))})
    for start in range(0, len(orders), _IN):
        query = events_ref.where(filter=FieldFilter("payload.body.order_id", "in",
                                                    orders[start:start + _IN]))
        for snap in query.stream():
            event = Event(snap.id, snap.to_dict() or {})
            if event.event_type in REVERSAL_TYPES:
                found[snap.id] = event
    ordered = sorted((event for event in found.values()
                      if isinstance(event.data.get("receivedAt"), dt.datetime)),
                     key=lambda event: (event.received_at, event.event_id))
    products = sorted({line.product_id for event in ordered if event.event_type == _PURCHASE
                       for line in _lines(event)})
    documents = {**entries, **sink.read([product_path(product) for product in products])}
    data = {path.removeprefix(f"{schema.LEDGER}/"): entry.data or {}
            for path, entry in entries.items()}
    processed: dict[str, bool | None] = {event.event_id: event.data.get("processed") is True
                                         for event in ordered}
    unread = sorted({event_id for entry in data.values()
                     if (event_id := _text(entry.get("sourceEventId")))} - set(processed))
    for start in range(0, len(unread), _BATCH):
        refs = [events_ref.document(event_id) for event_id in unread[start:start + _BATCH]]
        for snap in db.get_all(refs, field_paths=["processed"]):
            processed[snap.id] = (snap.get("processed") is True) if snap.exists else None
    return documents, Stored({
        "entries": data, "processed": processed,
        "events": [(event.event_id, event.data) for event in ordered], "owners": owners,
        "balance": (wallet.data or {}).get("balance") if wallet.data is not None else None,
        "walletExists": wallet.data is not None,
        "windowStart": window.start, "windowEnd": window.end}, wallet.update_time)


def _lines(event: Event) -> list[Any]:
    try:
        return list(parse_body(OrderCompleted, event.data).lines)
    except ItemError:
        return []


def _order_findings(entries: Mapping[str, Mapping[str, Any]]) -> Iterator[Finding]:
    """The checks of each order of a customer's entries: one purchase entry, reversals within
    it and as the formula has them."""
    effect = _effects(entries)
    by_order: dict[str, list[str]] = defaultdict(list)
    for entry_id, entry in entries.items():
        if isinstance(entry.get("orderId"), str):
            by_order[entry["orderId"]].append(entry_id)
    for order_id, ids in sorted(by_order.items()):
        purchases = sorted(i for i in ids if entries[i].get("type") == "purchase")
        if len(purchases) > 1:
            yield Finding("duplicate_entries", f"orders/{order_id}",
                          f"{len(purchases)} purchase entries: {', '.join(purchases)}",
                          "keep purchase_{orderId}; compensate the others by hand")
        main = entries.get(ledger.purchase_id(order_id))
        if main is None:
            continue
        credited = sum(int(entries[i].get("points", 0)) for i in ids if effect(i) == "purchase")
        reversed_ = -sum(int(entries[i].get("points", 0)) for i in ids
                         if effect(i) == "reversal")
        numbers = [main.get(key, default) for key, default in (
            ("points", None), ("orderTotal", None), ("refundedAmount", 0),
            ("reversedPoints", 0))]
        if not all(isinstance(value, int) for value in numbers):
            continue  # a malformed purchase entry: a replay's error says so
        points, total, refunded, recorded = (int(value) for value in numbers)
        subject = entry_path(ledger.purchase_id(order_id))
        if reversed_ > credited:
            yield Finding("reversal_over_purchase", subject,
                          f"reversed {reversed_} points of the {credited} it credited",
                          "compensate the excess reversal by hand")
        expected = 0 if main.get("rolledBackBy") else (
            points if total <= 0 and refunded else points * min(refunded, total) // total
            if total > 0 else 0)
        if recorded != expected or reversed_ != recorded:
            yield Finding("reversal_mismatch", subject,
                          f"reversedPoints is {recorded}; refundedAmount {refunded} of "
                          f"{total} makes {expected}; its reversal entries add up to "
                          f"{reversed_}", "settle the order's reversals by hand")


def _effects(entries: Mapping[str, Mapping[str, Any]]) -> Callable[[str], str]:
    """Whether an entry credits a purchase or reverses one, following a rollback's or a
    reinstatement's entry to the one it undoes or reinstates."""

    def effect(entry_id: str, depth: int = 0) -> str:
        entry = entries.get(entry_id, {})
        kind = entry.get("type")
        pointer = entry.get("compensates") if kind == "rollback" else entry.get(
            "reinstates") if kind == "reinstatement" else None
        if isinstance(pointer, str) and depth < 8:
            return effect(pointer, depth + 1)
        return kind if isinstance(kind, str) else ""

    return effect


BACKFILLS.register(LedgerVerify())
