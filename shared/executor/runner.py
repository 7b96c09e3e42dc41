"""The executor: one delivery of a chunk task. It claims the chunk, runs its page loop from the
chunk's cursor, and stops in time (continuing in a new task), when the chunk's work is done, or
when another delivery took it over.

Why every page is applied exactly once under at-least-once delivery:

- Each page is one atomic commit under the chunk's lease (``shared.executor.commit``): if anything
  moved since the page was read, the commit fails whole and the page is read and planned again, or,
  if the chunk has a new owner, this delivery stops.
- Claiming a chunk writes a fresh ``leaseOwner`` under the same precondition: the latest
  delivery of a segment takes the chunk over, and an older one still running stops at its next
  commit. A delivery of an older segment re-enqueues the current one (a no-op if it exists).

The roles are apart: page sources own their cursors (``shared.executor.sources``), the page commit
plans and writes a page (``shared.executor.commit``) into a ledger sink
(``shared.executor.sinks``), poison events are ``shared.executor.poison``'s, and the run's circuit
breaker reaches the loop only as a callable.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from shared import clock, logs
from shared.adapters.cloud_tasks import ChunkTask, Dispatcher
from shared.adapters.stores import Stores
from shared.backfills.base import Page, PageSource
from shared.backfills.registry import BACKFILLS
from shared.config import Settings
from shared.domain import lifecycle, throttle
from shared.domain.throttle import Pacer
from shared.errors import TRANSIENT, Unavailable
from shared.executor import sinks
from shared.executor.commit import PageCommit
from shared.executor.context import Context
from shared.executor.guard import Crossed
from shared.executor.lease import Lease, Lost
from shared.executor.poison import PageFailed, Poison
from shared.executor.sources import page_size, source_of
from shared.models import FINAL_RUN_STATUSES, ChunkState, RunStatus
from shared.runs import completion

logger = logging.getLogger(__name__)

__all__ = ["ChunkReport", "ChunkRunner", "Crossed", "Delivery"]

_PAGE_ATTEMPTS = 8
# Firestore pushing back: the delivery slows down and tries again (shared.domain.throttle).
_CONTENTION = (api_exceptions.Aborted, api_exceptions.ResourceExhausted,
               api_exceptions.TooManyRequests)
# Failures a retry of the task can cure (TRANSIENT); anything else while applying a page is
# unexpected, and is narrowed down to one event, retried a bounded number of times and then
# passed over.

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
    stopped, failed (and, from the router: paused, watched, planned, dropped)."""

    result: str
    pages: int = 0
    events: int = 0
    detail: str = ""


class _Stopped(Exception):
    """The run was stopped by its circuit breaker after this delivery's page."""


@dataclasses.dataclass(frozen=True)
class _Ports:
    """What the executor works with: given once, shared by each delivery's page loop."""

    settings: Settings
    db: firestore.Client
    stores: Stores
    dispatcher: Dispatcher
    breaker: Callable[[str], str | None]
    guardrail: Callable[[str, Crossed], bool]
    monotonic: Callable[[], float]


class ChunkRunner:
    """Runs deliveries of chunk tasks against Firestore, handing continuations to ``dispatcher``."""

    def __init__(self, settings: Settings, db: firestore.Client, dispatcher: Dispatcher,
                 stores: Stores,
                 breaker: Callable[[str], str | None] = lambda migration_id: None,
                 monotonic: Callable[[], float] = clock.monotonic,
                 guardrail: Callable[[str, Crossed], bool] = lambda run, crossed: False) -> None:
        """``breaker`` is asked after a live page with errors whether the run must stop; it
        answers the reason it stopped the run, or None (``shared.runs.control.check_breaker``).
        ``guardrail`` is told of a page that would cross one of the run's caps (nothing of it
        written); it pauses the run and answers whether it could resume it at once
        (``shared.runs.control.guardrail``)."""
        self._ports = _Ports(settings, db, stores, dispatcher, breaker, guardrail, monotonic)
        self._settings = settings
        self._stores = stores

    def run(self, delivery: Delivery) -> ChunkReport:
        """Process a delivery of a chunk's task; raises only when a retry of the task can help
        (``shared.router`` records a failure on the task's last attempt). Whatever it raises
        is logged first with the chunk's ids, its type and code (never its text), so a
        defect behind a 503 or a failed chunk names itself."""
        try:
            return self._run(delivery)
        except Lost:
            return ChunkReport("lost", detail="another delivery took the chunk over, or the "
                                              "chunk was paused or cancelled")
        except _Stopped as stop:
            return ChunkReport("stopped", detail=str(stop))
        except Crossed as crossed:
            return self._guardrail(delivery.task.migration_id, crossed)
        except Exception as error:
            # A warning: what it leads to (a 503, a 500, a failed chunk) is logged at its own
            # severity where it is decided, and counted there.
            task = delivery.task
            logs.log(logger, "chunk delivery failed", logging.WARNING,
                     migration_id=task.migration_id, chunk_id=task.chunk_id,
                     segment=task.segment, attempt=delivery.retry_count + 1,
                     **logs.error_fields(error))
            raise

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
        if not run.planned:
            # Chunk tasks are enqueued once the plan is whole; one seen before (a chunk of a
            # plan still being written) waits for it: Cloud Tasks retries it.
            raise Unavailable("the run's plan is not whole yet; retry")
        lease = self._claim(delivery)
        if isinstance(lease, ChunkReport):
            return lease
        if status is RunStatus.PENDING:
            completion.mark_running(self._stores, task.migration_id)
        backfill, db = BACKFILLS.of(run), self._ports.db
        context = Context(self._settings, db, self._stores, run, task.chunk_id, backfill,
                          sinks.sink_of(db, run.migration_id, run.dry_run), clock.now,
                          self._ports.monotonic)
        pacer = Pacer(lambda: self._share(task.migration_id), self._ports.monotonic, time.sleep)
        return _PageLoop(self._ports, context, delivery, lease,
                         source_of(db, backfill, lease.chunk, self._settings), PageCommit(context),
                         Poison(context), pacer, page_size(self._settings, backfill)).run()

    def _guardrail(self, migration_id: str, crossed: Crossed) -> ChunkReport:
        """A page would cross a guardrail: the run is paused with the reason (or resumed at
        once, when the points were held unspent rather than moved: ``guardrail``)."""
        if self._ports.guardrail(migration_id, crossed):
            return ChunkReport("continued", detail="held points given back; resumed")
        logs.log(logger, "run paused by a guardrail", logging.WARNING,
                 migration_id=migration_id, cap=crossed.cap)
        return ChunkReport("paused", detail=crossed.reason)

    def _share(self, migration_id: str) -> float | None:
        """This delivery's events per second (``throttle.share``): its run's ceiling over the
        run's running chunks, and the write budget every active run shares over all their
        running chunks."""
        run = self._stores.runs.get(migration_id)
        if run is None:
            return None
        now = clock.now()
        if throttle.ceiling(self._settings, run, now) is None and throttle.budget(
                self._settings, [run], now) is None:
            return None  # neither bound: no counts to read
        runs = [other for other in self._stores.runs.active() if other.id != run.id] + [run]
        running = {other.migration_id: self._stores.chunks.count(
            other.migration_id, [ChunkState.RUNNING]) for other in runs}
        return throttle.share(self._settings, run, running, runs, now)

    def _claim(self, delivery: Delivery) -> Lease | ChunkReport:
        task = delivery.task
        claimed = self._stores.chunks.claim(task.migration_id, task.chunk_id, task.segment,
                                            delivery.delivery_id,
                                            lifecycle.lease_until(self._settings))
        if isinstance(claimed, lifecycle.Refusal):
            if claimed.segment is not None:
                # An old segment's retry: make sure the current segment's task exists.
                self._ports.dispatcher.enqueue(ChunkTask(task.migration_id, task.chunk_id,
                                                         claimed.segment))
            return ChunkReport(claimed.result, detail=claimed.detail)
        return Lease(self._ports.db, task.migration_id, claimed, on_commit=self._after_commit)

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


class _PageLoop:
    """One delivery's pages: from the chunk's cursor until its last page, the time budget, a
    lost lease or the breaker."""

    def __init__(self, ports: _Ports, context: Context, delivery: Delivery, lease: Lease,
                 source: PageSource, commit: PageCommit, poison: Poison, pacer: Pacer,
                 size: int) -> None:
        self._ports = ports
        self._pacer = pacer
        self._delivery = delivery
        self._run = context.run
        self._lease = lease
        self._source = source
        self._commit = commit
        self._poison = poison
        self._page_size = size
        # The next page, read while the current one commits: (its cursor, limit, the read).
        self._ahead: tuple[dict[str, Any] | None, int, Future[Page]] | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead")
        self._deadline = 0.0  # of the time budget, on the monotonic clock

    def run(self) -> ChunkReport:
        try:
            return self._loop()
        finally:
            self._reader.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> ChunkReport:
        lease, task, ports = self._lease, self._delivery.task, self._ports
        started = ports.monotonic()
        budget = ports.settings.time_budget_seconds
        self._deadline = started + budget

        def budget_left() -> float:
            return budget - (ports.monotonic() - started)

        report = ChunkReport("continued")
        isolate = 0  # events still to take one at a time, after a page failed unexpectedly
        contended = False
        self._pacer.start()
        while True:
            left = lease.left
            # At least one page per delivery, so a tiny budget still makes progress (unless
            # Firestore pushed back all along: then the next segment tries again).
            if (report.pages or contended) and budget_left() <= 0 and (left is None or left > 0):
                self._continue_later()
                break
            limit = self._limit(left)
            if isolate:
                limit = min(limit, 1)
            try:
                events, final, errors = self._page(max(limit, 0))
            except _CONTENTION as error:
                contended = True
                logs.log(logger, "firestore pushed back; slowing down", logging.WARNING,
                         migration_id=task.migration_id, chunk_id=task.chunk_id,
                         code=type(error).__name__)
                self._pacer.contended(budget_left())
                continue
            except PageFailed as failure:
                if len(failure.events) > 1:
                    isolate = len(failure.events)  # find the event that fails: one per page
                    continue
                if not failure.events:
                    raise failure.cause from None
                self._poison.strike(lease, self._source, failure)  # raises unless passed over
                events, final, errors = 1, False, 1
            isolate = max(isolate - events, 0)
            report.pages += 1
            report.events += events
            if errors and not self._run.dry_run and (stop := ports.breaker(task.migration_id)):
                raise _Stopped(stop)
            if final:
                report.result = "completed"
                completion.finish_if_done(ports.stores, task.migration_id)
                break
            self._pacer.after(events, budget_left())
        logs.log(logger, "chunk delivery done", migration_id=task.migration_id,
                 chunk_id=task.chunk_id, segment=task.segment, status=report.result,
                 event_count=report.events, dry_run=self._run.dry_run,
                 throttled_seconds=round(self._pacer.slept, 3))
        return report

    def _limit(self, left: int | None) -> int:
        """The next page's size: the page size, within the chunk's quota ``left`` and a second
        of this delivery's share of the ceiling (``Pacer.page_cap``)."""
        limit = self._page_size if left is None else min(self._page_size, left)
        cap = self._pacer.page_cap()
        return limit if cap is None else min(limit, cap)

    def _page(self, limit: int) -> tuple[int, bool, int]:
        """Read and commit one page; return how many entries it took, whether it was the
        chunk's last, and how many of its events failed."""
        for _ in range(_PAGE_ATTEMPTS):
            selection = self._read(self._lease.chunk.cursor, limit)

            def committing(final: bool, page: Page = selection) -> None:
                if not final and page.cursor is not None:
                    self._prefetch(page)

            try:
                committed = self._commit.commit(self._lease, selection, limit, committing)
            except (Lost, Unavailable, Crossed):
                raise
            except TRANSIENT:
                raise
            except Exception as error:
                raise PageFailed(selection.events, error) from error
            if committed is None:
                if len(selection.events) > 1:
                    limit = len(selection.events) // 2  # too many writes for one commit
                continue
            return committed.read, committed.final, committed.errors
        raise Unavailable("a page kept conflicting with concurrent writes; retry")

    def _read(self, cursor: dict[str, Any] | None, limit: int) -> Page:
        """The page after ``cursor``: the one read ahead, if it was read from there with the
        same limit, else read now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == cursor and ahead[1] == limit:
            try:
                return ahead[2].result()
            except Exception as error:  # read it again: that read raises if it must
                logs.log(logger, "read ahead failed; reading again", logging.WARNING,
                         code=type(error).__name__)
        return self._source.page(cursor, limit)

    def _prefetch(self, page: Page) -> None:
        """Read the page after ``page`` while ``page`` commits (what the commit writes is before
        its cursor); taken by the next ``_read`` only if that page is asked for as read (not
        after a conflict, nor while the loop takes events one at a time)."""
        if self._ports.monotonic() >= self._deadline:
            return  # out of time: the chunk is handed on after this commit
        left = self._lease.left
        if left is not None:
            left -= page.read
        following = self._limit(left)
        if following <= 0:
            return  # the chunk's quota ends with this page
        self._ahead = (page.cursor, following,
                       self._reader.submit(self._source.page, page.cursor, following))

    def _continue_later(self) -> None:
        """Out of time: release the chunk at its cursor and enqueue the next segment, due when
        the run's ceiling allows its first page (within half a lease, so the watchdog does not
        take a waiting chunk for a lost one)."""
        task, settings = self._delivery.task, self._ports.settings
        segment = self._lease.hand_on(lifecycle.lease_until(settings))
        delay = min(self._pacer.owed(), settings.lease_seconds / 2)
        # If this enqueue fails, the task is retried as a stale segment, which enqueues it.
        self._ports.dispatcher.enqueue(ChunkTask(task.migration_id, task.chunk_id, segment),
                                       delay_seconds=delay)
