"""Poison events: an event whose page fails unexpectedly on every attempt.

The page loop narrows an unexpected failure down to one event by taking the failing page's
events one at a time. That event is the chunk's ``suspect``: each delivery it fails counts an
attempt on the chunk and asks Cloud Tasks to retry later (the cause may be passing: a bad
deploy, a quota). At ``BACKFILL_POISON_ATTEMPTS`` it is recorded as an ``unexpected_error`` and
passed over, its cursor moving in the same commit as its error record, so the rest of the chunk
goes on and the event is not lost: the run's failed events can be retried once it is fixed.
"""

from __future__ import annotations

import logging

from google.cloud import firestore

from shared import logs
from shared.adapters.write_token import CONFLICTS
from shared.backfills.base import Event, ItemResult, PageSource
from shared.errors import UNEXPECTED_ERROR, Unavailable
from shared.executor import sinks
from shared.executor.commit import log_failure, progressed, recorded
from shared.executor.context import Context
from shared.executor.lease import Lease
from shared.models import Outcome

logger = logging.getLogger(__name__)


class PageFailed(Exception):
    """Applying a page failed unexpectedly; ``events`` are the events it held."""

    def __init__(self, events: list[Event], cause: Exception) -> None:
        super().__init__(type(cause).__name__)
        self.events = events
        self.cause = cause


class Poison:
    """Counts a lone failing event's attempts on its chunk, and passes over it at the last."""

    def __init__(self, context: Context) -> None:
        self._settings = context.settings
        self._dry_run = context.dry_run
        self._db = context.db
        self._migration_id = context.migration_id
        self._chunk_id = context.chunk_id

    def strike(self, lease: Lease, source: PageSource, failure: PageFailed) -> None:
        """The one event of ``failure`` failed on its own. Before the last attempt, count the
        attempt on the chunk and raise ``Unavailable`` (Cloud Tasks retries the task later);
        at the last, record its error and pass over it (then return)."""
        event = failure.events[0]
        cause = type(failure.cause).__name__
        suspect = lease.chunk.suspect or {}
        attempts = 1 + (int(suspect.get("attempts", 0))
                        if suspect.get("eventId") == event.event_id else 0)
        self._log("event failed unexpectedly", event, attempts, cause)
        if attempts < self._settings.poison_attempts:
            marked = {"eventId": event.event_id, "attempts": attempts, "error": cause}
            lease.write({"suspect": marked}, {"suspect": marked})
            raise Unavailable(f"event {event.event_id} failed with {cause} (attempt {attempts} "
                              f"of {self._settings.poison_attempts}); the task is retried")
        self._pass_over(lease, source, event, cause, attempts)
        log_failure(self._migration_id, self._chunk_id, event.event_id, event.event_type,
                    UNEXPECTED_ERROR, self._dry_run)

    def _pass_over(self, lease: Lease, source: PageSource, event: Event, cause: str,
                   attempts: int) -> None:
        batch = self._db.batch()
        sinks.record_error(self._db, batch, self._migration_id, self._chunk_id, ItemResult(
            event.event_id, event.event_type, Outcome.ERROR, code=UNEXPECTED_ERROR,
            message=f"Unexpected {cause} on each of {attempts} attempts; passed over",
            hint="report the event id with the function's logs; retry the run's failed events "
                 "once it is fixed"), attempts)
        cursor = source.cursor_after(event)
        lease.guard(batch, {**progressed(self._settings, 1, cursor),
                            "counters.taken": firestore.Increment(1),
                            "counters.errors": firestore.Increment(1), "suspect": None,
                            **recorded([UNEXPECTED_ERROR])})
        try:
            results = batch.commit()
        except CONFLICTS:
            lease.refresh()
            raise Unavailable("the chunk moved while passing over a failing event; retry") \
                from None
        lease.committed(results[-1].update_time, cursor, 1, cleared_suspect=True)

    def _log(self, message: str, event: Event, attempts: int, code: str) -> None:
        logs.log(logger, message, logging.ERROR, migration_id=self._migration_id,
                 chunk_id=self._chunk_id, event_id=event.event_id, code=code,
                 attempt=attempts)
