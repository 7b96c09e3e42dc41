"""Applying one event to the ledger: the rules both backfill types share.

``Book`` is a page's view of the ledger: the entries read before planning plus what the page has
planned so far, so two events of one order in one page see each other (the second purchase is a
duplicate; a refund after its purchase reverses the new entry). Why a repeat is safe:

- a purchase creates ``purchase_{orderId}``, a reversal creates ``reversal_{eventId}``; the
  executor writes both with create-if-absent, so an entry that exists makes the commit fail and
  the page is planned again, now seeing the entry and calling the event a duplicate;
- a reversal changes its purchase entry under an update-time precondition, so two refunds of
  one order applied at the same moment cannot both start from the same ``refundedAmount``.

After a rollback (``shared.backfills.rollback``) an entry it undid carries ``rolledBackBy``: the
event's effect is gone (compensated) and its event unflagged. Applying the event again writes a
reinstatement entry, ``reinstate_{rollbackId}_{entryId}``, once per rollback, and clears the
mark: the ledger ends exactly as before the rollback. A refund whose purchase entry is rolled
back fails as a missing purchase (a replay pulls the purchase in, reinstating it first).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.adapters import schema
from shared.backfills.base import Event, ItemResult, PagePlan, Stored
from shared.domain import ledger
from shared.errors import ItemError, MalformedPayload
from shared.models import OrderCompleted, Outcome, Reversal, parse_body


def entry_path(entry_id: str) -> str:
    return f"{schema.LEDGER}/{entry_id}"


def product_path(product_id: str) -> str:
    return f"{schema.PRODUCTS}/{product_id}"



class PurchaseNotFound(ItemError):
    code = "purchase_not_found"

    def __init__(self, order_id: str) -> None:
        super().__init__(
            f"Original purchase entry not found: {order_id}",
            hint="replay the purchase with webhook_replay first, then run reversal_backfill",
        )


class Book:
    """Ledger entries as stored, overlaid with the page's planned creates and updates."""

    def __init__(self, stored: Mapping[str, Stored], plan: PagePlan) -> None:
        self._stored = stored
        self._plan = plan
        self._changed: dict[str, dict[str, Any]] = {}

    @property
    def stored(self) -> Mapping[str, Stored]:
        """The documents as read before planning."""
        return self._stored

    def entry(self, entry_id: str) -> dict[str, Any] | None:
        if entry_id in self._plan.creates:
            return self._plan.creates[entry_id]
        found = self._stored.get(entry_path(entry_id))
        if found is None or found.data is None:
            return None
        return {**found.data, **self._changed.get(entry_id, {})}

    def product(self, product_id: str) -> Mapping[str, Any] | None:
        found = self._stored.get(product_path(product_id))
        return found.data if found is not None else None

    def customer_of(self, order_id: str) -> str | None:
        """The customer of an order, from its purchase entry (None: no entry)."""
        entry = self.entry(ledger.purchase_id(order_id))
        customer_id = entry.get("customerId") if entry is not None else None
        return customer_id if isinstance(customer_id, str) else None

    def change(self, entry_id: str, fields: Mapping[str, Any]) -> None:
        """Change an entry: in place if this page creates it, else under a precondition."""
        if entry_id in self._plan.creates:
            self._plan.creates[entry_id].update(fields)
            return
        stored = self._stored[entry_path(entry_id)]
        assert stored.update_time is not None
        self._changed.setdefault(entry_id, {}).update(fields)
        self._plan.updates[entry_id] = (self._changed[entry_id], stored.update_time)


def purchase_lookups(event: Event) -> list[str]:
    try:
        order = parse_body(OrderCompleted, event.data)
    except ItemError:
        return []
    return [entry_path(ledger.purchase_id(order.id)),
            *(product_path(line.product_id) for line in order.lines)]


def purchase_creates(event: Event) -> list[str]:
    """The purchase entry of a purchase not flagged processed: almost always absent, so the
    live ledger may assume so and let its create-if-absent say otherwise."""
    if event.data.get("processed") is not False:
        return []
    try:
        order = parse_body(OrderCompleted, event.data)
    except ItemError:
        return []
    return [entry_path(ledger.purchase_id(order.id))]


def reversal_lookups(event: Event) -> list[str]:
    try:
        reversal = parse_body(Reversal, event.data)
    except ItemError:
        return []
    return [entry_path(ledger.purchase_id(reversal.order_id)),
            entry_path(ledger.reversal_id(event.event_id))]


def apply_purchase(event: Event, book: Book, plan: PagePlan, migration_id: str) -> ItemResult:
    """Credit an order's points once: its ``purchase_{orderId}`` entry and the wallet increment."""
    order = parse_body(OrderCompleted, event.data)
    entry_id = ledger.purchase_id(order.id)
    if (existing := book.entry(entry_id)) is not None:
        if rolled_back_by := existing.get("rolledBackBy"):
            return _reinstate_purchase(event, book, plan, migration_id, entry_id, existing,
                                       str(rolled_back_by))
        return _duplicate(event, entry_id, existing, migration_id, book)
    points = ledger.purchase_points(
        order, {line.product_id: book.product(line.product_id) for line in order.lines})
    if points <= 0:
        return ItemResult(event.event_id, event.event_type, Outcome.SKIPPED, code="no_points",
                          message="the order credits no points")
    plan.creates[entry_id] = {
        "customerId": order.customer.id,
        "type": "purchase",
        "points": points,
        "orderId": order.id,
        "sourceEventId": event.event_id,
        "source": "backfill",
        "migrationId": migration_id,
        "orderTotal": order.total_amount,
        "refundedAmount": 0,
        "reversedPoints": 0,
    }
    plan.credit(order.customer.id, points)
    return ItemResult(event.event_id, event.event_type, Outcome.APPLIED, points=points,
                      customer_id=order.customer.id)


def apply_reversal(event: Event, book: Book, plan: PagePlan, migration_id: str) -> ItemResult:
    """Reverse a refund's or chargeback's share of its purchase, cumulatively and once.

    A refund that moves ``refundedAmount`` gets its ``reversal_{eventId}`` entry even when its
    share rounds to 0 points: the entry is what makes a repeat a no-op. A refund or chargeback of
    an order already fully refunded changes nothing and is skipped with that reason.
    """
    reversal = parse_body(Reversal, event.data)
    entry_id = ledger.reversal_id(event.event_id)
    existing = book.entry(entry_id)
    rolled_back_by = existing.get("rolledBackBy") if existing is not None else None
    if existing is not None and not rolled_back_by:
        return _duplicate(event, entry_id, existing, migration_id)
    purchase_id = ledger.purchase_id(reversal.order_id)
    purchase = book.entry(purchase_id)
    if purchase is None or purchase.get("rolledBackBy"):
        raise PurchaseNotFound(reversal.order_id)
    points = entry_int(purchase, "points", purchase_id)
    total = entry_int(purchase, "orderTotal", purchase_id)
    refunded = entry_int(purchase, "refundedAmount", purchase_id, 0)
    reversed_ = entry_int(purchase, "reversedPoints", purchase_id, 0)
    customer_id = purchase.get("customerId")
    if not isinstance(customer_id, str):
        raise MalformedPayload(f"Malformed purchase entry: {purchase_id}: customerId")
    share = ledger.reverse(points, total, refunded, reversed_, reversal.amount)
    if share.refunded_amount == refunded:
        return ItemResult(event.event_id, event.event_type, Outcome.SKIPPED,
                          code="fully_reversed", settled=True,
                          message=f"order {reversal.order_id} is already fully reversed")
    book.change(purchase_id, {"refundedAmount": share.refunded_amount,
                              "reversedPoints": share.reversed_points})
    written = {
        "customerId": customer_id,
        "type": "reversal",
        "points": share.points,
        "orderId": reversal.order_id,
        "sourceEventId": event.event_id,
        "source": "backfill",
        "migrationId": migration_id,
        "reversesEntryId": purchase_id,
        "amount": reversal.amount,
        # What this reversal added to refundedAmount (amounts past orderTotal add nothing):
        # what a rollback takes off again.
        "refundedDelta": share.refunded_amount - refunded,
    }
    if rolled_back_by:
        book.change(entry_id, {"rolledBackBy": None, "reinstatedBy": migration_id})
        plan.creates[ledger.reinstatement_id(str(rolled_back_by), entry_id)] = {
            **written, "type": "reinstatement", "reinstates": entry_id}
    else:
        plan.creates[entry_id] = written
    plan.credit(customer_id, share.points)
    return ItemResult(event.event_id, event.event_type, Outcome.APPLIED, points=share.points,
                      customer_id=customer_id)


def _reinstate_purchase(event: Event, book: Book, plan: PagePlan, migration_id: str,
                        entry_id: str, existing: Mapping[str, Any],
                        rolled_back_by: str) -> ItemResult:
    """Apply a purchase again after a rollback undid its entry: its points as they were."""
    points = entry_int(existing, "points", entry_id)
    customer_id = existing.get("customerId")
    if not isinstance(customer_id, str):
        raise MalformedPayload(f"Malformed purchase entry: {entry_id}: customerId")
    plan.creates[ledger.reinstatement_id(rolled_back_by, entry_id)] = {
        "customerId": customer_id,
        "type": "reinstatement",
        "points": points,
        "orderId": existing.get("orderId"),
        "sourceEventId": event.event_id,
        "source": "backfill",
        "migrationId": migration_id,
        "reinstates": entry_id,
    }
    book.change(entry_id, {"rolledBackBy": None, "reinstatedBy": migration_id})
    plan.credit(customer_id, points)
    return ItemResult(event.event_id, event.event_type, Outcome.APPLIED, points=points,
                      customer_id=customer_id)


def _duplicate(event: Event, entry_id: str, existing: Mapping[str, Any], migration_id: str,
               book: Book | None = None) -> ItemResult:
    """The event's effect exists already. Another event of the same order (PayNow delivered
    its webhook twice) settled against an entry whose effect is this run's is recorded on the
    entry (``duplicateEvents``), under the entry's update time: the run settled it, so a
    rollback of the run unflags it with the entry (``shared.backfills.rollback``). Recorded
    once: a repeat finds it there and is not counted again."""
    if existing.get("sourceEventId") == event.event_id:
        repeat = existing.get("migrationId") == migration_id
    else:
        settled = existing.get("duplicateEvents") or []
        repeat = event.event_id in settled
        if book is not None and not repeat and effect_of(existing) == migration_id:
            book.change(entry_id, {"duplicateEvents": [*settled, event.event_id]})
    return ItemResult(event.event_id, event.event_type, Outcome.DUPLICATE, repeat=repeat,
                      message=f"{entry_id} exists already")


def effect_of(entry: Mapping[str, Any]) -> str | None:
    """The run whose effect a live entry is: the one that reinstated it after a rollback,
    else the one that wrote it (None: the live path's, or rolled back)."""
    if entry.get("rolledBackBy"):
        return None
    owner = entry.get("reinstatedBy") or entry.get("migrationId")
    return owner if isinstance(owner, str) else None


def entry_int(entry: Mapping[str, Any], key: str, entry_id: str, default: int | None = None,
              what: str = "purchase entry") -> int:
    """An integer field of a ledger entry; ``MalformedPayload`` naming it if it is not one."""
    value = entry.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedPayload(f"Malformed {what}: {entry_id}: {key}")
    return value
