"""Processing one chunk: claim it, apply its events page by page from its cursor, and stop in
time (continuing in a new task), when its work is done, or when another delivery took it over.

Why every page is applied exactly once under at-least-once delivery:

- A page's ledger writes, wallet increments, event flags, error records *and* the chunk's new
  cursor and counters are one atomic commit, made under the chunk document's update time as
  read. If anything moved since (another delivery claimed the chunk, the live path wrote an
  entry, a refund of the same order landed), the commit fails whole and the page is read and
  planned again, or, if the chunk has a new owner, this delivery stops.
- Claiming a chunk writes a fresh ``leaseOwner`` under the same precondition: the latest
  delivery of a segment takes the chunk over, and an older one still running stops at its next
  commit. A delivery of an older segment re-enqueues the current one (a no-op if it exists).
- Counters move only with the cursor, so they count each event once however often a page runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from shared import clock, completion, ledgers, lifecycle, logs, planning, store
from shared.backfills.base import Backfill, Event, ItemResult, PagePlan
from shared.backfills.registry import BACKFILLS
from shared.config import MAX_WRITES_PER_COMMIT, Settings
from shared.dispatch import ChunkTask, Dispatcher
from shared.errors import UNEXPECTED_ERROR, EventMissing, PurchaseNotFound, Unavailable
from shared.models import (
    FINAL_RUN_STATUSES,
    ChunkState,
    Outcome,
    RunStatus,
)
from shared.planning import Window
from shared.records import RunRecord
from shared.sources import Page, PageSource, source_of
from shared.stores import Stores

logger = logging.getLogger(__name__)

_PAGE_ATTEMPTS = 8
_CONFLICTS = (api_exceptions.Conflict, api_exceptions.FailedPrecondition, api_exceptions.NotFound)
# Failures a retry of the task can cure; anything else while applying a page is unexpected, and
# is narrowed down to one event, retried a bounded number of times and then passed over.
_TRANSIENT = (api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded,
              api_exceptions.InternalServerError, api_exceptions.Aborted,
              api_exceptions.ResourceExhausted, api_exceptions.TooManyRequests,
              api_exceptions.RetryError, api_exceptions.Unauthenticated,
              api_exceptions.PermissionDenied)
_COUNTER_OF = {Outcome.APPLIED: "applied", Outcome.DUPLICATE: "duplicates",
               Outcome.SKIPPED: "skipped", Outcome.ERROR: "errors"}

_commits_lock = threading.Lock()
_commits = 0


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One delivery of a chunk task; ``retry_count`` is Cloud Tasks' count of earlier tries."""

    task: ChunkTask
    retry_count: int = 0
    delivery_id: str = dataclasses.field(default_factory=lambda: os.urandom(8).hex())


@dataclasses.dataclass
class ChunkReport:
    """What a delivery did; ``result`` is one of: completed, continued, idle, stale, lost,
    failed."""

    result: str
    pages: int = 0
    events: int = 0
    detail: str = ""


class _Lost(Exception):
    """Another delivery owns the chunk now, or it ended, was paused or cancelled meanwhile."""


class _Stopped(Exception):
    """The run was stopped by its circuit breaker after this delivery's page."""


class _PageFailed(Exception):
    """Applying a page failed unexpectedly; ``events`` are the events it held."""

    def __init__(self, events: list[Event], cause: Exception) -> None:
        super().__init__(type(cause).__name__)
        self.events = events
        self.cause = cause


@dataclasses.dataclass
class _Chunk:
    ref: firestore.DocumentReference
    data: dict[str, Any]
    update_time: dt.datetime

    @property
    def taken(self) -> int:
        """Events read from the chunk's own window so far (what its quota bounds)."""
        return int(self.data.get("read", 0))

    @property
    def quota(self) -> int | None:
        quota = self.data.get("quota")
        return int(quota) if quota is not None else None


class ChunkRunner:
    """Runs deliveries of chunk tasks against Firestore, handing continuations to ``dispatcher``."""

    def __init__(self, settings: Settings, db: firestore.Client, dispatcher: Dispatcher,
                 monotonic: Callable[[], float] = clock.monotonic,
                 stores: Stores | None = None,
                 breaker: Callable[[str], str | None] = lambda migration_id: None) -> None:
        """``breaker`` is asked after a live page with errors whether the run must stop; it
        answers the reason it stopped the run, or None (``shared.control.check_breaker``)."""
        self._settings = settings
        self._db = db
        self._stores = stores or Stores.firestore(db)
        self._breaker = breaker
        self._dispatcher = dispatcher
        self._clock = monotonic

    def run(self, delivery: Delivery) -> ChunkReport:
        """Process a delivery of a chunk's task; raises only when a retry of the task can help
        (``shared.router`` records a failure on the task's last attempt)."""
        try:
            return self._run(delivery)
        except _Lost:
            return ChunkReport("lost", detail="another delivery took the chunk over, or the "
                                              "chunk was paused or cancelled")
        except _Stopped as stop:
            return ChunkReport("stopped", detail=str(stop))

    def _run(self, delivery: Delivery) -> ChunkReport:
        task = delivery.task
        run = self._stores.runs.get(task.migration_id)
        if run is None:
            return ChunkReport("idle", detail="no such run")
        status = run.status
        if status in (RunStatus.PAUSED, RunStatus.CANCELLED, RunStatus.FAILED):
            # A stop whose chunk writes did not all land (its caller died): finish it here.
            target = ChunkState.PAUSED if status is RunStatus.PAUSED else ChunkState.CANCELLED
            self._stores.chunks.move(task.migration_id, task.chunk_id, target,
                                     f"its run is {status.value}")
            return ChunkReport("idle", detail=f"the run is {status.value}")
        if status in FINAL_RUN_STATUSES:
            return ChunkReport("idle", detail=f"the run is {status.value}")
        chunk = self._claim(delivery)
        if isinstance(chunk, ChunkReport):
            return chunk
        if status is RunStatus.PENDING:
            completion.mark_running(self._stores, task.migration_id)
        return self._process(delivery, run, chunk)

    def _claim(self, delivery: Delivery) -> _Chunk | ChunkReport:
        task = delivery.task
        claimed = self._stores.chunks.claim(task.migration_id, task.chunk_id, task.segment,
                                            delivery.delivery_id, self._lease_until())
        if isinstance(claimed, lifecycle.Refusal):
            if claimed.segment is not None:
                # An old segment's retry: make sure the current segment's task exists.
                self._dispatcher.enqueue(ChunkTask(task.migration_id, task.chunk_id,
                                                   claimed.segment))
            return ChunkReport(claimed.result, detail=claimed.detail)
        assert claimed.update_time is not None
        return _Chunk(store.chunk_ref(self._db, task.migration_id, task.chunk_id),
                      claimed.to_document(), claimed.update_time)

    def _lease_until(self) -> dt.datetime:
        return lifecycle.lease_until(self._settings)

    def _process(self, delivery: Delivery, run: RunRecord, chunk: _Chunk) -> ChunkReport:
        started = self._clock()
        report = ChunkReport("continued")
        dry_run = run.dry_run
        isolate = 0  # events still to take one at a time, after a page failed unexpectedly
        backfill = BACKFILLS.of(run)
        source = source_of(self._db, backfill, chunk.data)
        page_size = self._page_size(backfill)
        while True:
            quota = chunk.quota
            left = None if quota is None else quota - chunk.taken
            # At least one page per delivery, so a tiny budget still makes progress.
            out_of_time = self._clock() - started >= self._settings.time_budget_seconds
            if report.pages and out_of_time and (left is None or left > 0):
                self._continue_later(delivery, chunk)
                break
            limit = page_size if left is None else min(page_size, left)
            if isolate:
                limit = min(limit, 1)
            try:
                events, final, errors = self._page(delivery, run, backfill, source, chunk,
                                                   max(limit, 0))
            except _PageFailed as failure:
                if len(failure.events) > 1:
                    isolate = len(failure.events)  # find the event that fails: one per page
                    continue
                if not failure.events:
                    raise failure.cause from None
                self._strike(delivery, source, chunk, failure)  # raises unless passed over
                events, final, errors = 1, False, 1
            isolate = max(isolate - events, 0)
            report.pages += 1
            report.events += events
            if errors and not dry_run and (stop := self._breaker(delivery.task.migration_id)):
                raise _Stopped(stop)
            if final:
                report.result = "completed"
                completion.finish_if_done(self._stores, delivery.task.migration_id)
                break
        logs.log(logger, "chunk delivery done", migration_id=delivery.task.migration_id,
                 chunk_id=delivery.task.chunk_id, segment=delivery.task.segment,
                 status=report.result, event_count=report.events, dry_run=dry_run)
        return report

    def _page_size(self, backfill: Backfill) -> int:
        """Events per page: ``BACKFILL_PAGE_SIZE``, or fewer if the backfill type asks for it.
        (A page may still be split when the writes it plans exceed one commit.)"""
        wanted = backfill.page_size
        return min(self._settings.page_size, wanted) if wanted else self._settings.page_size

    def _page(self, delivery: Delivery, run: RunRecord, backfill: Backfill, source: PageSource,
              chunk: _Chunk, limit: int) -> tuple[int, bool, int]:
        """Read, plan and commit one page; return how many entries it took, whether it was the
        chunk's last, and how many of its events failed."""
        for _ in range(_PAGE_ATTEMPTS):
            selection = source.page(chunk.data.get("cursor"), limit)
            try:
                committed = self._commit_page(delivery, run, backfill, chunk, selection, limit)
            except (_Lost, Unavailable, *_TRANSIENT):
                raise
            except Exception as error:
                raise _PageFailed(selection.events, error) from error
            if committed is None:
                if len(selection.events) > 1:
                    limit = len(selection.events) // 2  # too many writes for one commit
                continue
            return committed
        raise Unavailable("a page kept conflicting with concurrent writes; retry")

    def _commit_page(self, delivery: Delivery, run: RunRecord, backfill: Backfill,
                     chunk: _Chunk, selection: Page,
                     limit: int) -> tuple[int, bool, int] | None:
        """Plan and commit ``selection``; None when it must be read again (a conflict, or more
        writes than one commit takes)."""
        dry_run = run.dry_run
        run_window = planning.span(run.start_date, run.end_date)
        migration_id = delivery.task.migration_id
        events = selection.events
        ledger = ledgers.ledger_of(self._db, migration_id, dry_run)
        stored = ledger.read(backfill.lookups(events))
        plan = backfill.plan(events, stored, migration_id)
        ahead = self._pull(backfill, events, plan, run_window)
        pulled: list[Event] = []
        if ahead is not None:
            # Purchases go ahead of the refunds that need them, whether they come from another
            # page or later in this one. Read again after the pull's query, even if it found
            # nothing: a purchase its own chunk applied meanwhile is visible now.
            ahead_ids = {event.event_id for event in ahead}
            ordered = [*ahead, *(event for event in events if event.event_id not in ahead_ids)]
            stored = ledger.read(backfill.lookups(ordered))
            plan = backfill.plan(ordered, stored, migration_id)
            page_ids = {event.event_id for event in events}
            outside = ahead_ids - page_ids
            # A purchase from another page counts here only if this commit settles it. One that
            # fails or is skipped stays unprocessed, so its own chunk takes it and counts it:
            # recording it here too would count it twice. Rules leave no trace of an event
            # they fail or skip, so dropping its result drops all of it.
            plan.results = [result for result in plan.results
                            if result.event_id not in outside or result.settled]
            settled = {result.event_id for result in plan.results}
            pulled = [event for event in ahead if event.event_id in outside & settled]
        already = {event.event_id for event in [*pulled, *events]
                   if event.data.get("processed") is True}
        for event_id in selection.missing:
            missing = EventMissing(event_id)
            plan.results.append(ItemResult(event_id, "", Outcome.ERROR, code=missing.code,
                                           message=missing.message))
        below_zero = self._below_zero(plan)
        final = selection.read < limit or limit == 0 or (
            chunk.quota is not None and chunk.taken + selection.read >= chunk.quota)
        batch = self._db.batch()
        ledger.write(batch, plan, stored)
        ledger.flag(batch, plan.results, already)
        for result in plan.results:
            if result.outcome is Outcome.ERROR:
                ledgers.record_error(self._db, batch, migration_id, delivery.task.chunk_id,
                                     result)
        retried = chunk.data.get("source")
        if retried and not dry_run:
            ledgers.mark_resolved(self._db, batch, retried["errorsOf"], migration_id,
                                  plan.results)
        if final:
            self._may_finish(chunk)
        checkpoint = self._checkpoint(selection, plan, below_zero, final, len(pulled),
                                      chunk.data.get("suspect"))
        batch.update(chunk.ref, checkpoint,
                     option=self._db.write_option(last_update_time=chunk.update_time))
        if len(batch) > MAX_WRITES_PER_COMMIT and len(events) > 1:
            return None  # purchases pulled in by refunds made the page too large for one commit
        try:
            results = batch.commit()
        except _CONFLICTS:
            # Something moved since the page was read: find out whether it is still ours.
            self._refresh(delivery, chunk)
            time.sleep(random.uniform(0.01, 0.05))  # noqa: S311 (jitter)
            return None
        self._committed(chunk, results[-1].update_time, selection, checkpoint)
        counts = _counts(plan)
        logs.log(logger, "page applied", migration_id=migration_id,
                 chunk_id=delivery.task.chunk_id, event_count=selection.read, dry_run=dry_run,
                 **counts)
        return selection.read, final, counts["errors"]

    def _committed(self, chunk: _Chunk, update_time: dt.datetime, selection: Page,
                   checkpoint: dict[str, Any]) -> None:
        """Keep the local copy of the chunk in step with the checkpoint just committed."""
        chunk.update_time = update_time
        if selection.cursor is not None:
            chunk.data["cursor"] = selection.cursor
        chunk.data["read"] = chunk.taken + selection.read
        if "suspect" in checkpoint:
            chunk.data["suspect"] = None
        self._after_commit()

    def _strike(self, delivery: Delivery, source: PageSource, chunk: _Chunk,
                failure: _PageFailed) -> None:
        """One event failed unexpectedly on its own. Count the attempt on the chunk; at
        ``BACKFILL_POISON_ATTEMPTS`` record it and pass over it, before that raise
        ``Unavailable`` so Cloud Tasks retries the task later (the cause may be passing)."""
        event = failure.events[0]
        cause = type(failure.cause).__name__
        suspect = chunk.data.get("suspect") or {}
        attempts = 1 + (int(suspect.get("attempts", 0))
                        if suspect.get("eventId") == event.event_id else 0)
        logs.log(logger, "event failed unexpectedly", logging.ERROR,
                 migration_id=delivery.task.migration_id, chunk_id=delivery.task.chunk_id,
                 event_id=event.event_id, code=cause, attempt=attempts)
        if attempts < self._settings.poison_attempts:
            self._write_chunk(delivery, chunk, {"suspect": {
                "eventId": event.event_id, "attempts": attempts, "error": cause}})
            raise Unavailable(f"event {event.event_id} failed with {cause} (attempt {attempts} "
                              f"of {self._settings.poison_attempts}); the task is retried")
        batch = self._db.batch()
        ledgers.record_error(self._db, batch, delivery.task.migration_id, delivery.task.chunk_id,
                             ItemResult(
            event.event_id, event.event_type, Outcome.ERROR, code=UNEXPECTED_ERROR,
            message=f"Unexpected {cause} on each of {attempts} attempts; passed over",
            hint="report the event id with the function's logs; retry the run's failed events "
                 "once it is fixed"), attempts)
        cursor = source.cursor_after(event)
        batch.update(chunk.ref, {
            "updatedAt": firestore.SERVER_TIMESTAMP, "leaseUntil": self._lease_until(),
            "pages": firestore.Increment(1), "read": firestore.Increment(1),
            "counters.taken": firestore.Increment(1), "counters.errors": firestore.Increment(1),
            "cursor": cursor, "suspect": None,
        }, option=self._db.write_option(last_update_time=chunk.update_time))
        try:
            results = batch.commit()
        except _CONFLICTS:
            self._refresh(delivery, chunk)
            raise Unavailable("the chunk moved while passing over a failing event; retry") \
                from None
        self._committed(chunk, results[-1].update_time, Page([event], cursor, 1),
                        {"suspect": None})
        logs.log(logger, "event passed over", logging.ERROR,
                 migration_id=delivery.task.migration_id, chunk_id=delivery.task.chunk_id,
                 event_id=event.event_id, code=UNEXPECTED_ERROR, attempt=attempts)

    def _write_chunk(self, delivery: Delivery, chunk: _Chunk, fields: dict[str, Any]) -> None:
        try:
            result = chunk.ref.update(fields, option=self._db.write_option(
                last_update_time=chunk.update_time))
        except api_exceptions.FailedPrecondition:
            self._refresh(delivery, chunk)
            return
        chunk.update_time = result.update_time
        chunk.data.update(fields)

    def _below_zero(self, plan: PagePlan) -> list[str]:
        """Wallets this page takes from zero or more to below zero (their points were spent)."""
        debited = {cid: delta for cid, delta in plan.wallet_deltas.items() if delta < 0}
        if not debited:
            return []
        stored = ledgers.read_documents(self._db, [f"{store.WALLETS}/{cid}" for cid in debited])
        result = []
        for cid, delta in debited.items():
            wallet = stored.get(f"{store.WALLETS}/{cid}")
            balance = int((wallet.data or {}).get("balance", 0)) if wallet else 0
            if balance >= 0 > balance + delta:
                result.append(cid)
        return result

    def _pull(self, backfill: Backfill, events: list[Event], plan: PagePlan,
              run_window: Window) -> list[Event] | None:
        """Purchases to apply ahead of the page's refunds that lack them; None: none lack one
        (or the backfill type does not pull)."""
        pull = getattr(backfill, "pull", None)
        if pull is None or not any(r.code == PurchaseNotFound.code for r in plan.results):
            return None
        pulled: list[Event] = pull(self._db.collection(store.EVENTS), events, plan, run_window)
        return pulled

    def _checkpoint(self, selection: Page, plan: PagePlan, below_zero: list[str],
                    final: bool, pulled: int, suspect: dict[str, Any] | None) -> dict[str, Any]:
        # Pulled purchases are counted where they were applied: taken, and their outcome.
        update: dict[str, Any] = {
            "updatedAt": firestore.SERVER_TIMESTAMP,
            "leaseUntil": self._lease_until(),
            "pages": firestore.Increment(1),
            "read": firestore.Increment(selection.read),
            "counters.taken": firestore.Increment(
                selection.read + pulled - sum(r.repeat for r in plan.results)),
            "counters.points": firestore.Increment(sum(r.points for r in plan.results)),
        }
        for name, count in _counts(plan).items():
            if count:
                update[f"counters.{name}"] = firestore.Increment(count)
        if selection.cursor is not None:
            update["cursor"] = selection.cursor
        if suspect and any(e.event_id == suspect.get("eventId") for e in selection.events):
            update["suspect"] = None  # it went through after all: its failure was passing
        if below_zero:
            update["belowZero"] = firestore.ArrayUnion(below_zero)
        if final:
            update.update(state=ChunkState.COMPLETED.value, leaseOwner=None,
                          finishedAt=firestore.SERVER_TIMESTAMP)
        return update

    @staticmethod
    def _may_finish(chunk: _Chunk) -> None:
        # The commit's precondition guarantees the chunk is still as read: running, ours.
        lifecycle.chunk_move(chunk.data["state"], ChunkState.COMPLETED)

    def _refresh(self, delivery: Delivery, chunk: _Chunk) -> None:
        snap = chunk.ref.get()
        data = snap.to_dict() or {}
        if data.get("leaseOwner") != delivery.delivery_id or data.get("state") != "running":
            raise _Lost
        chunk.data, chunk.update_time = data, snap.update_time

    def _continue_later(self, delivery: Delivery, chunk: _Chunk) -> None:
        """Out of time: release the chunk at its cursor and enqueue the next segment."""
        segment = int(chunk.data["segment"]) + 1
        try:
            chunk.ref.update({"segment": segment, "leaseOwner": None,
                              "updatedAt": firestore.SERVER_TIMESTAMP,
                              "leaseUntil": self._lease_until()},
                             option=self._db.write_option(last_update_time=chunk.update_time))
        except api_exceptions.FailedPrecondition:
            raise _Lost from None
        # If this enqueue fails, the task is retried as a stale segment, which enqueues it.
        self._dispatcher.enqueue(ChunkTask(delivery.task.migration_id, delivery.task.chunk_id,
                                           segment))

    def _after_commit(self) -> None:
        """Fault injection for tests (local only): die as a killed handler would."""
        limit = self._settings.fault_exit_after_commits
        if not limit or not self._settings.local:
            return
        global _commits
        with _commits_lock:
            _commits += 1
            if _commits >= limit:
                logging.getLogger(__name__).warning("fault injection: exiting after a commit")
                os._exit(70)


def _counts(plan: PagePlan) -> dict[str, int]:
    counts = dict.fromkeys(_COUNTER_OF.values(), 0)
    for result in plan.results:
        if not result.repeat:
            counts[_COUNTER_OF[result.outcome]] += 1
    return counts
