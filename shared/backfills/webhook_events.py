"""What the types whose items are webhook events share: their source (the events a type
selects in a chunk's window of ``receivedAt``, in ``(receivedAt, eventId)`` order; the cursor
is the last event's pair), their sizing (a count of that selection, an aggregation that reads
no document) and the fetch a retry takes its failed events again with.

A type is built on ``WebhookEvents`` by declaring its ``selection``; a type that reads anything
else declares its own ``source``, ``size`` and ``fetch`` instead (``shared.backfills.base``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from google.cloud import firestore

from shared.adapters import schema
from shared.backfills.base import Event, Page, PageSource
from shared.config import Settings
from shared.domain.chunking import Window
from shared.domain.records import ChunkRecord

if TYPE_CHECKING:
    from shared.adapters.stores import PlanStore


class WindowSource:
    """The events ``selection`` takes in ``window``, page by page. A full page says more may
    follow (the next read finds out); a short one is the window's last."""

    def __init__(self, db: firestore.Client, selection: Any, window: Window) -> None:
        self._db = db
        self._selection = selection
        self._window = window

    def page(self, cursor: Mapping[str, Any] | None, limit: int) -> Page:
        if limit <= 0:
            return Page.empty()
        events_ref = self._db.collection(schema.EVENTS)
        query = self._selection(events_ref, self._window).order_by(
            "receivedAt").order_by("__name__").limit(limit)
        if cursor:
            query = query.start_after({"receivedAt": cursor["receivedAt"],
                                       "__name__": events_ref.document(cursor["eventId"])})
        events = [Event(snap.id, snap.to_dict() or {}) for snap in query.stream()]
        return Page(events, self.cursor_after(events[-1]) if events else None, len(events),
                    more=len(events) == limit)

    def cursor_after(self, event: Event) -> dict[str, Any]:
        return {"receivedAt": event.received_at, "eventId": event.event_id}


class WebhookEvents:
    """The source, sizing and retry fetch of a type that reads ``webhookEvents`` by window."""

    def selection(self, events: firestore.CollectionReference, window: Window) -> Any:
        """The query of the events a chunk takes (without order, cursor or limit)."""
        raise NotImplementedError

    def refusal(self, action: str) -> str | None:
        return None

    def source(self, db: firestore.Client, chunk: ChunkRecord, settings: Settings) -> PageSource:
        assert chunk.window_start is not None
        assert chunk.window_end is not None
        return WindowSource(db, self.selection, Window(chunk.window_start, chunk.window_end))

    def size(self, plans: PlanStore, window: Window) -> int | None:
        return plans.eligible(self.selection, window)

    def fetch(self, db: firestore.Client, ids: Sequence[str]) -> tuple[list[Event], list[str]]:
        events_ref = db.collection(schema.EVENTS)
        found = {snap.id: snap for snap in db.get_all(
            [events_ref.document(event_id) for event_id in ids])}
        events = [Event(event_id, found[event_id].to_dict() or {}) for event_id in ids
                  if event_id in found and found[event_id].exists]
        missing = [event_id for event_id in ids
                   if event_id not in found or not found[event_id].exists]
        return events, missing
