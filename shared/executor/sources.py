"""The executor's own source, and a page's size.

- ``RetrySource``: the items that failed in the run a retry run retries (its error records, of
  one code if asked), in id order; the cursor is the last error record's id. The items
  themselves are fetched by the run's type (``Backfill.fetch``): an item gone since is reported
  as ``missing``. Every other chunk reads from its type's own source (``Backfill.source``).

A cursor moves only with the page commit that applied the page, so a source never skips an
item and never yields one twice to the same chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.cloud import firestore

from shared.adapters import schema
from shared.backfills.base import Backfill, Event, Page, PageSource
from shared.config import Settings
from shared.domain.records import ChunkRecord


class RetrySource:
    def __init__(self, db: firestore.Client, backfill: Backfill, errors_of: str,
                 code: str | None) -> None:
        self._db = db
        self._backfill = backfill
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
        events, missing = self._backfill.fetch(self._db, ids) if ids else ([], [])
        return Page(events, {"eventId": ids[-1]} if ids else None, len(ids),
                    more=len(ids) == limit, missing=missing)

    def cursor_after(self, event: Event) -> dict[str, Any]:
        return {"eventId": event.event_id}


def source_of(db: firestore.Client, backfill: Backfill, chunk: ChunkRecord,
              settings: Settings) -> PageSource:
    """The source a chunk reads: a retry's failed items, or its type's own source."""
    if chunk.source and "errorsOf" in chunk.source:
        return RetrySource(db, backfill, chunk.source["errorsOf"], chunk.source.get("code"))
    return backfill.source(db, chunk, settings)


def page_size(settings: Settings, backfill: Backfill) -> int:
    """Items per page: ``BACKFILL_PAGE_SIZE``, or fewer if the backfill type asks for it. (The
    page loop halves a page whose planned writes exceed one commit.)"""
    wanted = backfill.page_size
    return min(settings.page_size, wanted) if wanted else settings.page_size
