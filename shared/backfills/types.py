"""The backfill types: webhook replay and reversal backfill.

- ``webhook_replay`` takes the unprocessed events of a window and applies each as the live path
  would: purchases credit, refunds and chargebacks reverse, other types are skipped.
- ``reversal_backfill`` takes every refund and chargeback of a window, processed or not, and
  makes sure each has its reversal entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared.backfills.apply import (
    Book,
    apply_purchase,
    apply_reversal,
    purchase_lookups,
    reversal_lookups,
)
from shared.backfills.base import Backfill, Event, ItemResult, PagePlan, Stored
from shared.errors import ItemError, PurchaseNotFound
from shared.models import BackfillType, EventType, Outcome, Reversal, parse_body
from shared.planning import Window

Rule = Callable[[Event, Book, PagePlan, str], ItemResult]
REVERSAL_TYPES = (EventType.REFUND.value, EventType.CHARGEBACK.value)


def _in_window(query: Any, window: Window) -> Any:
    return query.where(filter=FieldFilter("receivedAt", ">=", window.start)).where(
        filter=FieldFilter("receivedAt", "<", window.end))


class _RuleBook:
    """Applies each event by the rule of its type; events of other types are skipped."""

    rules: ClassVar[Mapping[str, Rule]]
    lookups_by_type: ClassVar[Mapping[str, Callable[[Event], list[str]]]]

    def lookups(self, events: Sequence[Event]) -> list[str]:
        paths: dict[str, None] = {}
        for event in events:
            finder = self.lookups_by_type.get(event.event_type)
            if finder is not None:
                paths.update(dict.fromkeys(finder(event)))
        return list(paths)

    def plan(self, events: Sequence[Event], stored: Mapping[str, Stored],
             migration_id: str) -> PagePlan:
        plan = PagePlan()
        book = Book(stored, plan)
        for event in events:
            plan.results.append(self._apply(event, book, plan, migration_id))
        return plan

    def _apply(self, event: Event, book: Book, plan: PagePlan, migration_id: str) -> ItemResult:
        rule = self.rules.get(event.event_type)
        if rule is None:
            return ItemResult(event.event_id, event.event_type, Outcome.SKIPPED,
                              code="no_ledger_effect",
                              message=f"event type {event.event_type or '(none)'} "
                                      "has no ledger effect")
        try:
            # Rules check everything before they change the plan, so an error leaves no trace.
            return rule(event, book, plan, migration_id)
        except ItemError as error:
            return ItemResult(event.event_id, event.event_type, Outcome.ERROR, code=error.code,
                              message=error.message, hint=error.hint)


class WebhookReplay(_RuleBook):
    """Replays unprocessed events; a refund whose purchase is unprocessed in the same run's
    range pulls that purchase ahead of itself, from its own page or another one, so neither the
    order of chunks nor the order of ``receivedAt`` can fail it.

    With ``include_processed`` (the request's ``includeProcessed``) it also takes the events
    already flagged ``processed``, so a purchase flagged processed whose entry is missing (the
    live path died between the two writes, or the entry was lost) gets its entry; an event whose
    entry exists stays a duplicate and is not written.
    """

    rules: ClassVar[Mapping[str, Rule]] = {
        EventType.ORDER_COMPLETED.value: apply_purchase,
        EventType.REFUND.value: apply_reversal,
        EventType.CHARGEBACK.value: apply_reversal,
    }
    lookups_by_type: ClassVar[Mapping[str, Callable[[Event], list[str]]]] = {
        EventType.ORDER_COMPLETED.value: purchase_lookups,
        EventType.REFUND.value: reversal_lookups,
        EventType.CHARGEBACK.value: reversal_lookups,
    }
    waits_for: tuple[BackfillType, ...] = ()

    def __init__(self, include_processed: bool = False) -> None:
        self.include_processed = include_processed

    def selection(self, events: firestore.CollectionReference, window: Window) -> Any:
        if self.include_processed:
            return _in_window(events.where(filter=FieldFilter("eventType", "in",
                                                              list(self.rules))), window)
        return _in_window(events.where(filter=FieldFilter("processed", "==", False)), window)

    def pull(self, events: firestore.CollectionReference, page: Sequence[Event], plan: PagePlan,
             run_window: Window) -> list[Event]:
        """The oldest purchase event still to apply, in ``run_window``, of each order whose
        refund in ``page`` lacks its purchase entry, oldest first. It may lie in ``page`` itself
        (after its refund) or outside it; a redelivery of it stays a duplicate in its own chunk.
        """
        missing = {result.event_id for result in plan.results
                   if result.code == PurchaseNotFound.code}
        order_ids = {parse_body(Reversal, event.data).order_id
                     for event in page if event.event_id in missing}
        pulled: dict[str, Event] = {}
        for order_id in sorted(order_ids):
            query = events.where(filter=FieldFilter("eventType", "==",
                                                    EventType.ORDER_COMPLETED.value)) \
                .where(filter=FieldFilter("payload.body.id", "==", order_id))
            if not self.include_processed:
                query = query.where(filter=FieldFilter("processed", "==", False))
            found = sorted((Event(snap.id, snap.to_dict() or {}) for snap in
                            query.limit(10).stream()),
                           key=lambda event: (event.received_at, event.event_id))
            oldest = next((event for event in found
                           if run_window.start <= event.received_at < run_window.end), None)
            if oldest is not None:
                pulled[oldest.event_id] = oldest
        return sorted(pulled.values(), key=lambda event: (event.received_at, event.event_id))


class ReversalBackfill(_RuleBook):
    """Takes every refund and chargeback of a window, processed or not. It waits for the active
    replays of its dates (``waits_for``): a refund whose purchase a replay is about to apply
    would otherwise fail as "Original purchase entry not found"."""

    rules: ClassVar[Mapping[str, Rule]] = dict.fromkeys(REVERSAL_TYPES, apply_reversal)
    lookups_by_type: ClassVar[Mapping[str, Callable[[Event], list[str]]]] = dict.fromkeys(
        REVERSAL_TYPES, reversal_lookups)

    waits_for: tuple[BackfillType, ...] = (BackfillType.WEBHOOK_REPLAY,)

    def selection(self, events: firestore.CollectionReference, window: Window) -> Any:
        return _in_window(events.where(filter=FieldFilter("eventType", "in",
                                                          list(REVERSAL_TYPES))), window)


BACKFILLS: Mapping[BackfillType, Backfill] = {
    BackfillType.WEBHOOK_REPLAY: WebhookReplay(),
    BackfillType.REVERSAL_BACKFILL: ReversalBackfill(),
}
_REPAIRING_REPLAY = WebhookReplay(include_processed=True)


def backfill_of(run: Mapping[str, Any]) -> Backfill:
    """The backfill a run record describes: its type, and the replay's ``includeProcessed``."""
    if run.get("includeProcessed"):
        return _REPAIRING_REPLAY
    return BACKFILLS[BackfillType(run["type"])]
