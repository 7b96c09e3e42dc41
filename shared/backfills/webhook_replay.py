"""``webhook_replay``: takes the unprocessed events of a window and applies each as the live path
would: purchases credit, refunds and chargebacks reverse, other types are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared.adapters.schema import in_window
from shared.backfills.apply import (
    PurchaseNotFound,
    apply_purchase,
    apply_reversal,
    purchase_creates,
    purchase_lookups,
    reversal_lookups,
)
from shared.backfills.base import Event, PagePlan
from shared.backfills.registry import BACKFILLS, BackfillType
from shared.backfills.rules import Rule, RuleBook
from shared.domain import target
from shared.domain.chunking import Window
from shared.errors import MalformedPayload, ProductNotFound
from shared.models import EventType, Reversal, parse_body


class WebhookReplay(RuleBook):
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
    creates_by_type: ClassVar[Mapping[str, Callable[[Event], list[str]]]] = {
        EventType.ORDER_COMPLETED.value: purchase_creates,
    }
    name = BackfillType.WEBHOOK_REPLAY.value
    error_codes = (MalformedPayload.code, ProductNotFound.code, PurchaseNotFound.code)
    options = frozenset({"includeProcessed", *target.FIELDS})
    # The gaps it repairs (``shared.runs.gaps``): what a gaps report suggests it for.
    repairs = ("unprocessed", "purchasesWithoutEntry")
    # A live run is bound to the dry run it was reviewed from (``shared.domain.review``), and
    # the preflight checks the products its purchases name.
    reviewed = True
    credits_products = True
    # A rollback over the same dates unflags events as it goes, a recovery stores them: replay
    # them once it is done.
    waits_for = (BackfillType.ROLLBACK.value, BackfillType.WEBHOOK_RECOVERY.value)

    def __init__(self, include_processed: bool = False) -> None:
        self.include_processed = include_processed

    def variant(self, run: Mapping[str, Any]) -> WebhookReplay:
        chosen = _REPAIRING if run.get("includeProcessed") else self
        return chosen.aimed(target.Target.of(run.get("target")))

    def selection(self, events: firestore.CollectionReference, window: Window) -> Any:
        if self.include_processed:
            return in_window(events.where(filter=FieldFilter("eventType", "in",
                                                              self.types())), window)
        query = events.where(filter=FieldFilter("processed", "==", False))
        if self.target is not None and self.target.event_types is not None:
            query = query.where(filter=FieldFilter("eventType", "in", self.types()))
        return in_window(query, window)

    def pull(self, events: firestore.CollectionReference, page: Sequence[Event], plan: PagePlan,
             run_window: Window) -> list[Event]:
        """The oldest purchase event still to apply, in ``run_window``, of each order whose
        refund in ``page`` lacks its purchase entry, oldest first. It may lie in ``page`` itself
        (after its refund) or outside it; a redelivery of it stays a duplicate in its own chunk.
        """
        missing = {result.event_id for result in plan.results if result.wants_purchase}
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
                           if run_window.start <= event.received_at < run_window.end
                           and not self._outside(event)), None)
            if oldest is not None:
                pulled[oldest.event_id] = oldest
        return sorted(pulled.values(), key=lambda event: (event.received_at, event.event_id))

    def _outside(self, purchase: Event) -> bool:
        """A purchase outside the run's target is never pulled in (its customer is its own)."""
        return self.target is not None and self.target.excludes(
            purchase.event_id, purchase.event_type, purchase.data, lambda _: None) is not None


_REPAIRING = WebhookReplay(include_processed=True)
BACKFILLS.register(WebhookReplay())
