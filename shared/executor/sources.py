"""Page sources: where a chunk's events come from, page by page, each owning its cursor.

- ``WindowSource``: the events its backfill type selects in the chunk's window of
  ``receivedAt``, in ``(receivedAt, eventId)`` order; the cursor is the last event's pair.
- ``RetrySource``: the events that failed in the run a retry run retries (its error records,
  of one code if asked), in event id order; the cursor is the last error record's id. An event
  whose document is gone is reported as ``missing``.
- ``WrittenSource``: what a run wrote, as a rollback takes it: the ledger entries it wrote, or
  the events it settled without an entry, in descending id order (an order's reversals before
  its purchase); the cursor is the last document's id.

A cursor moves only with the page commit that applied the page, so a source never skips an
event and never yields one twice to the same chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from google.cloud import firestore

from shared.adapters import schema
from shared.backfills.base import Backfill, Event
from shared.config import Settings
from shared.domain.chunking import Window
from shared.domain.records import ChunkRecord


@dataclasses.dataclass(frozen=True)
class Page:
    """A page's events, where the cursor moves once it is applied, how many entries the source
    read for it (what the chunk's quota counts), and the ids of events no longer there."""

    events: list[Event]
    cursor: dict[str, Any] | None
    read: int
    missing: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def empty(cls) -> Page:
        return cls([], None, 0)


class PageSource(Protocol):
    def page(self, cursor: Mapping[str, Any] | None, limit: int) -> Page:
        """The next page of at most ``limit`` entries after ``cursor`` (None: from the start)."""

    def cursor_after(self, event: Event) -> dict[str, Any]:
        """The cursor that passes over ``event`` (a poison event set aside)."""


class WindowSource:
    def __init__(self, db: firestore.Client, backfill: Backfill, window: Window) -> None:
        self._db = db
        self._backfill = backfill
        self._window = window

    def page(self, cursor: Mapping[str, Any] | None, limit: int) -> Page:
        if limit <= 0:
            return Page.empty()
        events_ref = self._db.collection(schema.EVENTS)
        query = self._backfill.selection(events_ref, self._window).order_by(
            "receivedAt").order_by("__name__").limit(limit)
        if cursor:
            query = query.start_after({"receivedAt": cursor["receivedAt"],
                                       "__name__": events_ref.document(cursor["eventId"])})
        events = [Event(snap.id, snap.to_dict() or {}) for snap in query.stream()]
        return Page(events, self.cursor_after(events[-1]) if events else None, len(events))

    def cursor_after(self, event: Event) -> dict[str, Any]:
        return {"receivedAt": event.received_at, "eventId": event.event_id}


class RetrySource:
    def __init__(self, db: firestore.Client, errors_of: str, code: str | None) -> None:
        self._db = db
        self._errors_of = errors_of
        self._code = code

    def page(self, cursor: Mapping[str, Any] | None, limit: int) -> Page:
        if limit <= 0:
            return Page.empty()
        query = schema.errors_query(self._db, self._errors_of, self._code) \
            .order_by("__name__").limit(limit)
        if cursor:
            query = query.start_after({"__name__": schema.run_ref(
                self._db, self._errors_of).collection(schema.ERRORS).document(cursor["eventId"])})
        ids = [snap.id for snap in query.stream()]
        events_ref = self._db.collection(schema.EVENTS)
        found = {snap.id: snap for snap in self._db.get_all(
            [events_ref.document(event_id) for event_id in ids])}
        events = [Event(event_id, found[event_id].to_dict() or {}) for event_id in ids
                  if event_id in found and found[event_id].exists]
        missing = [event_id for event_id in ids
                   if event_id not in found or not found[event_id].exists]
        return Page(events, {"eventId": ids[-1]} if ids else None, len(ids), missing)

    def cursor_after(self, event: Event) -> dict[str, Any]:
        return {"eventId": event.event_id}


class WrittenSource:
    def __init__(self, db: firestore.Client, collection: str, query: Any) -> None:
        self._db = db
        self._collection = collection
        self._query = query

    @classmethod
    def of(cls, db: firestore.Client, source: Mapping[str, Any]) -> WrittenSource:
        if "entriesOf" in source:
            return cls(db, schema.LEDGER, schema.written_by(db, source["entriesOf"]))
        return cls(db, schema.EVENTS, schema.settled_by(db, source["flagsOf"]))

    def page(self, cursor: Mapping[str, Any] | None, limit: int) -> Page:
        if limit <= 0:
            return Page.empty()
        documents = self._db.collection(self._collection)
        query = self._query.order_by("__name__", direction=firestore.Query.DESCENDING) \
            .limit(limit)
        if cursor:
            query = query.start_after({"__name__": documents.document(cursor["eventId"])})
        items = [Event(snap.id, snap.to_dict() or {}) for snap in query.stream()]
        return Page(items, self.cursor_after(items[-1]) if items else None, len(items))

    def cursor_after(self, event: Event) -> dict[str, Any]:
        return {"eventId": event.event_id}


def source_of(db: firestore.Client, backfill: Backfill,
              chunk: ChunkRecord) -> PageSource:
    """The source a chunk describes: a retry's failed events, a rollback's entries, or its
    window."""
    if chunk.source and ("entriesOf" in chunk.source or "flagsOf" in chunk.source):
        return WrittenSource.of(db, chunk.source)
    if chunk.source:
        return RetrySource(db, chunk.source["errorsOf"], chunk.source.get("code"))
    assert chunk.window_start is not None
    assert chunk.window_end is not None
    return WindowSource(db, backfill, Window(chunk.window_start, chunk.window_end))


def page_size(settings: Settings, backfill: Backfill) -> int:
    """Events per page: ``BACKFILL_PAGE_SIZE``, or fewer if the backfill type asks for it. (The
    page loop halves a page whose planned writes exceed one commit.)"""
    wanted = backfill.page_size
    return min(settings.page_size, wanted) if wanted else settings.page_size
