"""Planning a run, once, in its planning task: count the eligible events of each chunk (an
aggregation, no documents read), split every window holding more than one chunk should take
(``Settings.chunk_events``) into smaller windows (so one busy incident day runs as many chunks
in parallel), share ``maxEvents`` out oldest first, write the chunks in as many commits as they
take, each under the run's update time (``PlanStore.save``), then enqueue one task per chunk
that has work. A run that waits for other runs (``waitingFor``) is not planned until they have
ended.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared import logs
from shared.adapters.cloud_tasks import (
    RETRY_CHUNK,
    ChunkTask,
    Dispatcher,
    enqueue_all,
)
from shared.adapters.stores import ErrorStore, PlanStore, Stores, still_active
from shared.backfills.base import Chunks
from shared.backfills.registry import BACKFILLS
from shared.config import MAX_CHUNKS, Settings
from shared.domain import chunking, lifecycle, review
from shared.domain.chunking import Counted, PlannedChunk, Window
from shared.domain.records import RunRecord
from shared.models import (
    FINAL_RUN_STATUSES,
    ChunkState,
    RunStatus,
)
from shared.runs.completion import fail_run

logger = logging.getLogger(__name__)


def plan_run(settings: Settings, stores: Stores, dispatcher: Dispatcher,
             migration_id: str, segment: int = 0) -> str:
    """Plan a run once and fan out one task per chunk with work; safe to repeat.

    Counts the eligible events of every chunk (one aggregation each, in parallel), shares
    ``maxEvents`` out oldest first, and writes the chunks and the run's totals in commits each
    under the run's update time as the one before left it, so a second delivery either finds
    the run planned or loses the race, and one killed halfway is planned again whole by the
    next delivery. No chunk task is enqueued before the plan is whole. Chunks with nothing to
    take are recorded as completed and get no task. Every delivery enqueues the tasks of the
    chunks still pending (a no-op for those that exist), unless the run is paused meanwhile:
    resume enqueues them then. A run waiting for other runs
    (``waitingFor``) is not planned yet: this delivery (``segment``) enqueues the next one, due
    after ``BACKFILL_CHAIN_POLL_SECONDS``.
    """
    for _ in range(5):
        run = stores.runs.get(migration_id)
        if run is None:
            return "no such run"
        if run.status in FINAL_RUN_STATUSES:
            return f"the run is {run.status.value}"
        if run.planned:
            break
        if waiting := still_active(stores.runs, run.waiting_for):
            if run.status is not RunStatus.PENDING:
                return f"waiting for {', '.join(waiting)}; resume plans it"
            # Ask again later, in the planning task's next segment (a name never used yet).
            dispatcher.enqueue(ChunkTask.planning(migration_id, segment + 1),
                               delay_seconds=settings.chain_poll_seconds)
            return f"waiting for {', '.join(waiting)} to end"
        chunks = plan_chunks(settings, stores.plans, stores.errors, run)
        checked = _check_plan(settings, stores, run, chunks)
        if isinstance(checked, str):
            return checked
        completes = lifecycle.run_move(run.status, RunStatus.COMPLETED) if all(
            chunk.idle for chunk in chunks) and run.status is RunStatus.PENDING else None
        if stores.plans.save(run, chunks, lifecycle.lease_until(settings), completes,
                             checked):
            total = sum(chunk.takes for chunk in chunks)
            logs.log(logger, "run planned", migration_id=migration_id, type=run.type,
                     start_date=run.start_date.isoformat(), end_date=run.end_date.isoformat(),
                     dry_run=run.dry_run, eligible=sum(chunk.eligible or 0 for chunk in chunks),
                     total=total, event_count=total, chunks=len(chunks))
            break
    run = stores.runs.get(migration_id)
    if run is not None and run.status is RunStatus.PENDING and (
            why := approval_needed(settings, run)) is not None:
        stores.runs.move(migration_id, RunStatus.AWAITING_APPROVAL, detail=why, strict=False)
        run = stores.runs.get(migration_id)
    if run is None or run.status not in (RunStatus.PENDING, RunStatus.RUNNING):
        return (f"planned; the run is {run.status.value if run else 'gone'}, so no chunk task "
                "was enqueued")
    # Largest first: the queue runs a bounded number at once, so the small chunks fill the
    # slots the large ones leave at the end instead of a large one starting last.
    pending = sorted(stores.chunks.chunks(migration_id, [ChunkState.PENDING]),
                     key=lambda chunk: (-(chunk.quota if chunk.quota is not None
                                          else chunk.eligible or 0), chunk.index))
    tasks = [ChunkTask(migration_id, chunk.chunk_id, chunk.segment) for chunk in pending]
    enqueue_all(dispatcher, tasks, settings.enqueue_workers)
    return f"planned; {len(tasks)} chunk task(s) enqueued"


def approval_needed(settings: Settings, run: RunRecord) -> str | None:
    """Why a planned run waits for approval (``BACKFILL_APPROVERS``), or None: a live run of
    more than ``BACKFILL_APPROVAL_EVENTS`` events, or that may move more than
    ``BACKFILL_APPROVAL_POINTS`` points (its ``maxPoints``; without one, it may move any)."""
    if not settings.approvers or run.dry_run:
        return None
    reasons = []
    if settings.approval_events is not None and (run.total or 0) > settings.approval_events:
        reasons.append(f"{run.total} events, above BACKFILL_APPROVAL_EVENTS="
                       f"{settings.approval_events}")
    if settings.approval_points is not None and (
            run.max_points is None or run.max_points > settings.approval_points):
        reasons.append(f"maxPoints {run.max_points if run.max_points else 'unset'}, above "
                       f"BACKFILL_APPROVAL_POINTS={settings.approval_points}")
    if not reasons:
        return None
    return (f"awaiting approval ({'; '.join(reasons)}): another approver "
            f"({', '.join(settings.approvers)}) approves it with POST .../{run.migration_id}"
            f"/approve (backfill approve {run.migration_id}); nobody approves their own run")


def _check_plan(settings: Settings, stores: Stores, run: RunRecord,
                chunks: list[PlannedChunk]) -> dict[str, Any] | str:
    """The run fields planning records of the catalog (a dry run's, for the live run it plans
    to compare), or, for a live run bound to a plan whose events or catalog moved
    (``review.drift``), the reason it failed: nothing was written."""
    if not run.dry_run and run.plan_of is None:
        return {}
    found = review.catalog(stores.plans.catalog())
    if run.plan_of is not None:
        total = sum(chunk.takes for chunk in chunks)
        if (moved := review.drift(settings, run.plan_of, total, found)) is not None:
            fail_run(stores, run.migration_id, moved)
            logs.log(logger, "run refused at planning: its plan moved", logging.WARNING,
                     migration_id=run.migration_id, plan=run.plan_of["migrationId"],
                     event_count=total)
            return moved
    return {"catalog": found}


def plan_chunks(settings: Settings, plans: PlanStore, errors: ErrorStore,
                run: RunRecord) -> list[PlannedChunk]:
    """The run's chunks: a retry run's one chunk (the failed items); the chunks a type plans
    itself (``chunks``, as a rollback's); else one a window of ``chunkDays`` (cut at
    ``receivedBefore``), sized by the type, with the items it may take (``maxEvents`` shared
    out oldest first). A window the type cannot size is planned whole and never idle: its
    executor finds out how much it holds."""
    if run.retry_of:
        source = run.retry_of
        return [PlannedChunk(RETRY_CHUNK, None, None,
                             errors.count(source["migrationId"], source.get("code")), None,
                             {"errorsOf": source["migrationId"], "code": source.get("code")})]
    backfill = BACKFILLS.of(run)
    if isinstance(backfill, Chunks):
        return backfill.chunks(run, plans)
    cutoff = run.received_before
    windows = [chunking.before(window, cutoff) if cutoff is not None else window
               for window in chunking.windows(run.start_date, run.end_date, run.chunk_days)]

    def size(window: Window) -> int | None:
        return backfill.size(plans, window)

    with ThreadPoolExecutor(max_workers=settings.enqueue_workers) as pool:
        sizes = list(pool.map(size, windows))
        if any(found is None for found in sizes):
            # Uncounted: no split, no share of maxEvents by count; the chunks take it whole.
            return [PlannedChunk(window.chunk_id, window.start, window.end, None,
                                 run.max_events, note="not counted: taken whole")
                    for window in windows if window.end > window.start]
        counted = [Counted(window, found) for window, found in zip(windows, sizes, strict=True)
                   if found is not None]

        def count(window: Window) -> int:
            return size(window) or 0

        pieces = chunking.split(counted, count, settings.chunk_events, MAX_CHUNKS, pool.map)
    quotas = chunking.quotas([piece.count for piece in pieces], run.max_events)
    return [PlannedChunk(piece.window.chunk_id, piece.window.start, piece.window.end,
                         piece.count, quota, note=piece.note)
            for piece, quota in zip(pieces, quotas, strict=True)]
