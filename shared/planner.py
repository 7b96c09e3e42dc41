"""Planning a run, once, in its planning task: count the eligible events of each chunk (an
aggregation, no documents read), share ``maxEvents`` out oldest first, write all chunks in one
commit under the run's update time, then enqueue one task per chunk that has work. A run that
waits for other runs (``waitingFor``) is not planned until they have ended.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared import lifecycle, logs, planning, store
from shared.backfills.registry import backfill_of
from shared.config import Settings
from shared.dispatch import (
    PLAN_CHUNK,
    RETRY_CHUNK,
    ChunkTask,
    Dispatcher,
    enqueue_all,
)
from shared.models import (
    FINAL_RUN_STATUSES,
    ChunkState,
    RunStatus,
)
from shared.records import COUNTERS
from shared.stores import FirestoreRuns, still_active

logger = logging.getLogger(__name__)


def plan_run(settings: Settings, db: firestore.Client, dispatcher: Dispatcher,
             migration_id: str, segment: int = 0) -> str:
    """Plan a run once and fan out one task per chunk with work; safe to repeat.

    Counts the eligible events of every chunk (one aggregation each, in parallel), shares
    ``maxEvents`` out oldest first, and writes all chunks with the run's totals in one commit
    under the run's update time, so a second delivery either finds the run planned or loses the
    race. Chunks with nothing to take are recorded as completed and get no task. Every delivery
    enqueues the tasks of the chunks still pending (a no-op for those that exist), unless the
    run is paused meanwhile: resume enqueues them then. A run waiting for other runs
    (``waitingFor``) is not planned yet: this delivery (``segment``) enqueues the next one, due
    after ``BACKFILL_CHAIN_POLL_SECONDS``.
    """
    ref = store.run_ref(db, migration_id)
    for _ in range(5):
        snap = ref.get()
        if not snap.exists:
            return "no such run"
        run = snap.to_dict() or {}
        if run.get("status") in FINAL_RUN_STATUSES:
            return f"the run is {run['status']}"
        if run.get("planned"):
            break
        if waiting := still_active(FirestoreRuns(db), run.get("waitingFor") or []):
            if run.get("status") != RunStatus.PENDING.value:
                return f"waiting for {', '.join(waiting)}; resume plans it"
            # Ask again later, in the planning task's next segment (a name never used yet).
            dispatcher.enqueue(ChunkTask(migration_id, PLAN_CHUNK, segment + 1),
                               delay_seconds=settings.chain_poll_seconds)
            return f"waiting for {', '.join(waiting)} to end"
        try:
            _plan(settings, db, ref, run, snap.update_time)
        except (api_exceptions.AlreadyExists, api_exceptions.FailedPrecondition):
            continue  # another delivery planned it meanwhile, or the run's status moved
        break
    status = ref.get().get("status")
    if status not in (RunStatus.PENDING.value, RunStatus.RUNNING.value):
        return f"planned; the run is {status}, so no chunk task was enqueued"
    pending = ref.collection(store.CHUNKS).where(
        filter=FieldFilter("state", "==", ChunkState.PENDING.value)).stream()
    tasks = [ChunkTask(migration_id, chunk.id, int(chunk.get("segment"))) for chunk in pending]
    enqueue_all(dispatcher, tasks, settings.enqueue_workers)
    return f"planned; {len(tasks)} chunk task(s) enqueued"


@dataclasses.dataclass(frozen=True)
class _Planned:
    chunk_id: str
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    eligible: int
    quota: int | None
    source: Mapping[str, Any] | None = None


def _plan(settings: Settings, db: firestore.Client, ref: firestore.DocumentReference,
          run: dict[str, Any], read_at: dt.datetime) -> None:
    planned = (_plan_retry(db, run) if run.get("retryOf")
               else _plan_windows(settings, db, run))
    lease = lifecycle.lease_until(settings)
    total = sum(c.quota if c.quota is not None else c.eligible for c in planned)
    batch = db.batch()
    idle_chunks = 0
    for index, chunk in enumerate(planned):
        idle = chunk.quota == 0 or chunk.eligible == 0
        idle_chunks += idle
        batch.create(ref.collection(store.CHUNKS).document(chunk.chunk_id), {
            "index": index,
            "windowStart": chunk.window_start,
            "windowEnd": chunk.window_end,
            "source": chunk.source,
            "eligible": chunk.eligible,
            "quota": chunk.quota,
            "state": (ChunkState.COMPLETED if idle else ChunkState.PENDING).value,
            "note": _idle_note(chunk.eligible, chunk.quota) if idle else "",
            "segment": 0,
            "cursor": None,
            "leaseOwner": None,
            "leaseUntil": lease,
            "counters": dict.fromkeys(COUNTERS, 0),
            "read": 0,
            "belowZero": [],
            "createdAt": firestore.SERVER_TIMESTAMP,
            "startedAt": None,
            "finishedAt": firestore.SERVER_TIMESTAMP if idle else None,
        })
    update: dict[str, Any] = {"planned": True, "eligible": sum(c.eligible for c in planned),
                              "total": total, "plannedAt": firestore.SERVER_TIMESTAMP,
                              "chunkCount": len(planned)}
    if idle_chunks == len(planned) and run["status"] == RunStatus.PENDING.value:
        reason = lifecycle.run_move(run["status"], RunStatus.COMPLETED)
        update.update(status=RunStatus.COMPLETED.value, startedAt=firestore.SERVER_TIMESTAMP,
                      finishedAt=firestore.SERVER_TIMESTAMP, statusReason=reason)
    batch.update(ref, update, option=db.write_option(last_update_time=read_at))
    batch.commit()
    logs.log(logger, "run planned", migration_id=run["migrationId"], type=run["type"],
             start_date=run["startDate"], end_date=run["endDate"], dry_run=run["dryRun"],
             eligible=update["eligible"], total=total, event_count=total, chunks=len(planned))


def _plan_windows(settings: Settings, db: firestore.Client,
                  run: dict[str, Any]) -> list[_Planned]:
    backfill = backfill_of(run)
    cutoff = run.get("receivedBefore")
    windows = [planning.before(window, cutoff) if cutoff is not None else window
               for window in planning.windows(dt.date.fromisoformat(run["startDate"]),
                                              dt.date.fromisoformat(run["endDate"]),
                                              int(run["chunkDays"]))]
    events = db.collection(store.EVENTS)

    def eligible(window: planning.Window) -> int:
        return store.count(backfill.selection(events, window)) if window.end > window.start else 0

    with ThreadPoolExecutor(max_workers=settings.enqueue_workers) as pool:
        counts = list(pool.map(eligible, windows))
    quotas = planning.quotas(counts, run.get("maxEvents"))
    return [_Planned(window.chunk_id, window.start, window.end, count, quota)
            for window, count, quota in zip(windows, counts, quotas, strict=True)]


def _plan_retry(db: firestore.Client, run: dict[str, Any]) -> list[_Planned]:
    source = run["retryOf"]
    count = store.count(store.errors_query(db, source["migrationId"], source.get("code")))
    return [_Planned(RETRY_CHUNK, None, None, count, None,
                     {"errorsOf": source["migrationId"], "code": source.get("code")})]


def _idle_note(count: int, quota: int | None) -> str:
    if count == 0:
        return "no eligible events when the run was planned"
    return "maxEvents was reached by older chunks; these events are left for a later run"
