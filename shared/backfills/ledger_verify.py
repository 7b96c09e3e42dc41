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
that moved meanwhile makes the page be planned again. The rest needs a person: its finding
says so (``repaired: false``) and what to do. Findings are the run's records beside its
errors: ``GET .../{id}/errors`` is the CSV, status sums them by code (``errorCodes``).
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

from shared import clock, ledger, store, target
from shared.backfills.apply import (
    Book,
    apply_purchase,
    apply_reversal,
    entry_path,
    purchase_lookups,
    reversal_lookups,
)
from shared.backfills.base import Event, Finding, ItemResult, PagePlan, Stored
from shared.backfills.registry import BACKFILLS
from shared.backfills.rules import OUTSIDE_TARGET, REVERSAL_TYPES, in_window
from shared.errors import ItemError
from shared.models import BackfillType, EventType, OrderCompleted, Outcome, parse_body

VERIFY = BackfillType.LEDGER_VERIFY.value
CODES = ("missing_entry", "missing_reversal", "wrong_points", "unflagged_event", "wallet_drift",
         "orphan_entry", "duplicate_entries", "reversal_over_purchase", "reversal_mismatch")
_PURCHASE = EventType.ORDER_COMPLETED.value
_AUDIT = "audit"  # the key prefix of a customer's audit among a page's stored documents
_BATCH = 300  # documents per get_all
_IN = 30  # values per "in" filter


@dataclasses.dataclass
class _Missing:
    """One customer's missing entries found in the page, as the replay's rules would write
    them (on the page's view of the ledger, each seeing the ones before): candidates for a
    repair."""

    findings: list[Finding] = dataclasses.field(default_factory=list)
    plan: PagePlan = dataclasses.field(default_factory=PagePlan)
    book: Book | None = None


class LedgerVerify:
    """See the module's docstring."""

    name = VERIFY
    error_codes = CODES
    page_size: int | None = None
    # What runs that write the ledger do over the same dates comes first.
    waits_for = (BackfillType.WEBHOOK_REPLAY.value, BackfillType.REVERSAL_BACKFILL.value,
                 BackfillType.ROLLBACK.value)
    options = frozenset({"repair", *target.FIELDS})
    event_types = tuple(kind.value for kind in EventType)
    flags_events = False

    def __init__(self, repair: bool = False, aim: target.Target | None = None) -> None:
        self.repair = repair
        self.target = aim

    def variant(self, run: Mapping[str, Any]) -> LedgerVerify:
        aim = target.Target.of(run.get("target"))
        if not run.get("repair") and aim is None:
            return self
        return LedgerVerify(bool(run.get("repair")), aim)

    def selection(self, events: firestore.CollectionReference, window: Any) -> Any:
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

    def gather(self, db: firestore.Client, events: Sequence[Event],
               stored: Mapping[str, Stored], audited: set[str]) -> dict[str, Stored]:
        """The whole ledger of each customer of the page not yet audited by this delivery:
        their entries, their wallet (the audit's update time is the wallet's), the events of
        their entries, and, for a drifted wallet, their missing entries outside the page."""
        book = Book(stored, PagePlan())
        wanted: set[str] = set()
        for event in events:
            if self._outside(event, book) or not (customer := _customer(event, book)):
                continue
            # A customer audited earlier is audited again when this page may repair them.
            if customer not in audited or _lacks_entry(event, book):
                wanted.add(customer)
        customers = sorted(wanted)
        if not customers:
            return {}
        page = {event.event_id for event in events}
        with ThreadPoolExecutor(max_workers=8) as pool:
            audits = list(pool.map(lambda customer: _audit(db, customer, page), customers))
        return {f"{_AUDIT}/{customer}": audit for customer, audit in zip(customers, audits,
                                                                           strict=True)}

    def plan(self, events: Sequence[Event], stored: Mapping[str, Stored],
             migration_id: str) -> PagePlan:
        plan = PagePlan()
        book = Book(stored, plan)
        missing: dict[str, _Missing] = defaultdict(_Missing)
        outcomes: dict[str, ItemResult] = {}
        for event in events:
            outcomes[event.event_id] = self._check(event, book, plan, missing, migration_id)
        for path, audit in stored.items():
            if path.startswith(f"{_AUDIT}/"):
                customer = path.removeprefix(f"{_AUDIT}/")
                self._check_customer(customer, audit, missing.pop(customer, _Missing()),
                                     plan, migration_id)
                plan.audited.add(customer)
        for candidates in missing.values():  # no customer to audit (no purchase entry)
            self._settle(candidates, plan, repair=False)
        repaired = {finding.event_id for finding in plan.findings if finding.repaired}
        unrepaired = {finding.event_id: finding.code for finding in plan.findings
                      if not finding.repaired}
        for event_id, result in outcomes.items():
            if event_id in repaired:
                result.outcome, result.code = Outcome.APPLIED, "repaired"
            elif event_id in unrepaired:
                result.outcome, result.code = Outcome.SKIPPED, unrepaired[event_id]
            plan.results.append(result)
        return plan

    # --- per event ----------------------------------------------------------------------

    def _outside(self, event: Event, book: Book) -> bool:
        return self.target is not None and self.target.excludes(
            event.event_id, event.event_type, event.data, book.customer_of) is not None

    def _check(self, event: Event, book: Book, plan: PagePlan,
               missing: dict[str, _Missing], migration_id: str) -> ItemResult:
        """The event's own checks; answers it as consistent (a duplicate: its effect is
        there) unless a finding says otherwise."""
        result = ItemResult(event.event_id, event.event_type, Outcome.DUPLICATE, settled=False)
        if self._outside(event, book):
            return ItemResult(event.event_id, event.event_type, Outcome.SKIPPED,
                              code=OUTSIDE_TARGET, settled=False, outside=True)
        if event.event_type not in (_PURCHASE, *REVERSAL_TYPES):
            result.outcome, result.code = Outcome.SKIPPED, "no_ledger_effect"
            return result
        is_purchase = event.event_type == _PURCHASE
        entry_id = _own_entry(event)
        if entry_id is None:
            result.outcome, result.code = Outcome.SKIPPED, "unreadable"
            return result
        entry = book.entry(entry_id)
        processed = event.data.get("processed") is True
        if entry is None or entry.get("rolledBackBy"):
            if not processed:
                result.outcome, result.code = Outcome.SKIPPED, "unprocessed"
            elif not is_purchase and event.data.get("backfillOutcome") == "skipped":
                pass  # settled by a run: its order was fully reversed then
            else:
                self._candidate(event, book, plan, missing, migration_id, is_purchase)
            return result
        if is_purchase:
            self._check_points(event, entry, entry_id, book, plan)
        if not processed and entry.get("sourceEventId") == event.event_id:
            self._flag(event.event_id, event.event_type, plan, migration_id,
                       f"its entry {entry_id} exists, but the event is not flagged processed")
        return result

    def _candidate(self, event: Event, book: Book, plan: PagePlan,
                   missing: dict[str, _Missing], migration_id: str, is_purchase: bool) -> None:
        """A processed event without its entry: what the replay's rule would write for it."""
        rule = apply_purchase if is_purchase else apply_reversal
        code = "missing_entry" if is_purchase else "missing_reversal"
        found = missing[_customer(event, book) or ""]
        if found.book is None:
            found.book = _Overlay(book, found.plan)
        try:
            outcome = rule(event, found.book, found.plan, migration_id)
        except ItemError as error:
            plan.findings.append(Finding(
                code, f"{store.EVENTS}/{event.event_id}",
                f"flagged processed without its entry; it cannot be applied: {error.message}",
                error.hint or "fix the cause, then replay it with includeProcessed",
                event.event_id, event.event_type))
            return
        if outcome.outcome is not Outcome.APPLIED:
            return  # nothing to write: a refund of an order fully reversed already
        found.findings.append(Finding(
            code, f"{store.EVENTS}/{event.event_id}",
            f"flagged processed without its {'entry' if is_purchase else 'reversal entry'} "
            f"({outcome.points:+} points)",
            "ledger_verify with repair writes it when the wallet shows whether it was credited",
            event.event_id, event.event_type))

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
            plan.findings.append(Finding("unflagged_event", f"{store.EVENTS}/{event_id}",
                                         message, "" if self.repair else
                                         "ledger_verify with repair flags it", event_id,
                                         event_type, repaired=self.repair))

    # --- per customer -------------------------------------------------------------------

    def _check_customer(self, customer: str, audit: Stored, found: _Missing,
                        plan: PagePlan, migration_id: str) -> None:
        data = audit.data or {}
        entries: dict[str, dict[str, Any]] = data.get("entries", {})
        events: dict[str, bool | None] = data.get("events", {})
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
        elsewhere = int(data.get("missingElsewhere", 0))
        subject = f"{store.WALLETS}/{customer}"
        if drift == 0 and found.findings:
            self._settle(found, plan, self.repair, audit.update_time, credit=True)
        elif found.findings and drift == candidates and elsewhere == 0:
            # The credits happened; the entries were lost: write them without moving it.
            self._settle(found, plan, self.repair, audit.update_time, credit=False)
            plan.findings.append(Finding(
                "wallet_drift", subject, f"the wallet is {drift:+} points off its entries: "
                "the credits of the missing entries found", "", repaired=self.repair))
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
            plan.findings.append(Finding(
                "wallet_drift", subject,
                f"the wallet is {balance if exists else '(missing)'}, its entries add up to "
                f"{int(balance or 0) - drift} ({drift:+})"
                + (f"; {elsewhere} processed event(s) of the customer lack their entry"
                   if elsewhere else ""),
                "" if self.repair and adjustable else
                "ledger_verify with repair writes an adjustment entry once nothing is "
                "missing" if adjustable else
                "find the missing entries' credits first; settle the wallet by hand",
                repaired=self.repair and adjustable))
        else:
            self._settle(found, plan, repair=False)

    def _settle(self, found: _Missing, plan: PagePlan, repair: bool,
                wallet_read: dt.datetime | None = None, credit: bool = True) -> None:
        """Record the customer's missing entries, written (with or without the wallet's
        credit) when ``repair``."""
        for finding in found.findings:
            if repair:
                plan.findings.append(dataclasses.replace(finding, repaired=True, hint=""))
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


def _lacks_entry(event: Event, book: Book) -> bool:
    """A processed event whose entry does not exist (a repair candidate)."""
    entry_id = _own_entry(event)
    if event.data.get("processed") is not True or entry_id is None:
        return False
    entry = book.entry(entry_id)
    return entry is None or bool(entry.get("rolledBackBy"))


def _own_entry(event: Event) -> str | None:
    """The id of the entry a purchase, refund or chargeback makes (None: unreadable)."""
    try:
        return (ledger.purchase_id(parse_body(OrderCompleted, event.data).id)
                if event.event_type == _PURCHASE else ledger.reversal_id(event.event_id))
    except ItemError:
        return None


def _customer(event: Event, book: Book) -> str | None:
    body = (event.data.get("payload") or {}).get("body") if isinstance(
        event.data.get("payload"), dict) else None
    if not isinstance(body, dict):
        return None
    if event.event_type == _PURCHASE:
        customer = body.get("customer")
        value = customer.get("id") if isinstance(customer, dict) else None
        return value if isinstance(value, str) and value else None
    order_id = body.get("order_id")
    return book.customer_of(order_id) if isinstance(order_id, str) and order_id else None


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


def _audit(db: firestore.Client, customer: str, page: set[str]) -> Stored:
    """One customer's whole ledger, read so the wallet and the entries agree (the wallet read
    again after the entries: a write between the two is read again)."""
    wallet_ref = db.collection(store.WALLETS).document(customer)
    for _ in range(5):
        wallet = wallet_ref.get()
        entries = {snap.id: snap.to_dict() or {} for snap in db.collection(store.LEDGER).where(
            filter=FieldFilter("customerId", "==", customer)).stream()}
        again = wallet_ref.get()
        if again.update_time == wallet.update_time:
            break
    event_ids = sorted({entry["sourceEventId"] for entry in entries.values()
                        if isinstance(entry.get("sourceEventId"), str)
                        and entry["sourceEventId"]})
    events: dict[str, bool | None] = {}
    for start in range(0, len(event_ids), _BATCH):
        refs = [db.collection(store.EVENTS).document(event_id)
                for event_id in event_ids[start:start + _BATCH]]
        for snap in db.get_all(refs, field_paths=["processed"]):
            events[snap.id] = (snap.get("processed") is True) if snap.exists else None
    balance = (wallet.to_dict() or {}).get("balance") if wallet.exists else None
    drift = int(balance or 0) - sum(int(e.get("points", 0)) for e in entries.values())
    elsewhere = _missing_elsewhere(db, customer, entries, page) if drift else 0
    return Stored({"entries": entries, "events": events, "balance": balance,
                   "walletExists": wallet.exists, "missingElsewhere": elsewhere},
                  wallet.update_time if wallet.exists else None)


def _missing_elsewhere(db: firestore.Client, customer: str,
                       entries: Mapping[str, Any], page: set[str]) -> int:
    """The customer's processed purchases outside the page without their entry: while there
    are any, a drifted wallet cannot be told apart from their lost credits."""
    purchases = db.collection(store.EVENTS).where(
        filter=FieldFilter("eventType", "==", _PURCHASE)).where(
        filter=FieldFilter("payload.body.customer.id", "==", customer)).where(
        filter=FieldFilter("processed", "==", True))
    missing = 0
    for snap in purchases.select(["payload.body.id"]).stream():
        if snap.id in page:
            continue
        try:
            order = (snap.get("payload.body.id"))
        except KeyError:
            continue
        entry = entries.get(ledger.purchase_id(order)) if isinstance(order, str) else None
        if entry is None or entry.get("rolledBackBy"):
            missing += 1
    return missing


BACKFILLS.register(LedgerVerify())
