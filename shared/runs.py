"""Runs (``dataMigrations/{migrationId}``): starting one, planning it, and moving its status.

Starting a run records it and enqueues its planning task; planning counts the eligible events
of each chunk (an aggregation, no documents read), shares ``maxEvents`` out oldest first, writes
all chunks in one commit, then enqueues one task per chunk that has work. The run document is
written when the run starts, when it is planned, when its first chunk starts and when its last
chunk ends: never per event.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared import logs, planning, store
from shared.auth import Caller
from shared.backfills.types import BACKFILLS
from shared.config import Settings
from shared.dispatch import ChunkTask, Dispatcher, enqueue_all
from shared.errors import Unavailable
from shared.models import (
    FINAL_RUN_STATUSES,
    BackfillRequest,
    BackfillType,
    ChunkState,
    RunStatus,
)

logger = logging.getLogger(__name__)

COUNTERS = ("taken", "applied", "duplicates", "skipped", "errors", "points")


PLAN_CHUNK = "plan"  # the chunk id of a run's planning task


@dataclasses.dataclass(frozen=True)
class StartedRun:
    migration_id: str
    status: RunStatus
    chunks: int


def start_run(
    request: BackfillRequest,
    caller: Caller,
    settings: Settings,
    db: firestore.Client,
    dispatcher: Dispatcher,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> StartedRun:
    """Record a run (``pending``, not yet planned) and enqueue its planning task.

    Planning counts every chunk's events, which takes time in proportion to the range, so it
    runs as a task and the trigger answers at once whatever the range. If the task cannot be
    enqueued the run is marked failed and ``Unavailable`` is raised.
    """
    windows = planning.windows(request.start_date, request.end_date, settings.chunk_days)
    created = now()
    run: dict[str, Any] = {
        "type": request.type.value,
        "status": RunStatus.PENDING.value,
        "dryRun": request.dry_run,
        "startDate": request.start_date.isoformat(),
        "endDate": request.end_date.isoformat(),
        "maxEvents": request.max_events,
        "chunkDays": settings.chunk_days,
        "chunkCount": len(windows),
        "planned": False,
        "eligible": None,
        "total": None,
        "requestedBy": caller.email,
        "createdAt": created,
        "startedAt": None,
        "finishedAt": None,
    }
    migration_id = _create(db, request, run, created)
    try:
        dispatcher.enqueue(ChunkTask(migration_id, PLAN_CHUNK))
    except Unavailable as error:
        fail_run(db, migration_id, f"could not enqueue the planning task: {error.message}")
        raise Unavailable(f"run {migration_id} failed: its planning task could not be "
                          "enqueued; start the run again") from error
    logs.log(logger, "run started", migration_id=migration_id, type=request.type.value,
             start_date=run["startDate"], end_date=run["endDate"], dry_run=request.dry_run,
             chunks=len(windows), caller=caller.email)
    return StartedRun(migration_id, RunStatus.PENDING, len(windows))


def plan_run(settings: Settings, db: firestore.Client, dispatcher: Dispatcher,
             migration_id: str) -> str:
    """Plan a run once and fan out one task per chunk with work; safe to repeat.

    Counts the eligible events of every chunk (one aggregation each, in parallel), shares
    ``maxEvents`` out oldest first, and writes all chunks with the run's totals in one commit
    under the run's update time, so a second delivery either finds the run planned or loses the
    race. Chunks with nothing to take are recorded as completed and get no task. Every delivery
    enqueues the tasks of the chunks still pending (a no-op for those that exist).
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
        try:
            _plan(settings, db, ref, run, snap.update_time)
        except (api_exceptions.AlreadyExists, api_exceptions.FailedPrecondition):
            continue  # another delivery planned it meanwhile
        break
    pending = ref.collection(store.CHUNKS).where(
        filter=FieldFilter("state", "==", ChunkState.PENDING.value)).stream()
    tasks = [ChunkTask(migration_id, chunk.id) for chunk in pending]
    enqueue_all(dispatcher, tasks, settings.enqueue_workers)
    return f"planned; {len(tasks)} chunk task(s) enqueued"


def _plan(settings: Settings, db: firestore.Client, ref: firestore.DocumentReference,
          run: dict[str, Any], read_at: dt.datetime) -> None:
    backfill = BACKFILLS[BackfillType(run["type"])]
    windows = planning.windows(dt.date.fromisoformat(run["startDate"]),
                               dt.date.fromisoformat(run["endDate"]), int(run["chunkDays"]))
    events = db.collection(store.EVENTS)
    with ThreadPoolExecutor(max_workers=settings.enqueue_workers) as pool:
        eligible = list(pool.map(
            lambda window: store.count(backfill.selection(events, window)), windows))
    quotas = planning.quotas(eligible, run.get("maxEvents"))
    total = sum(q if q is not None else e for q, e in zip(quotas, eligible, strict=True))
    batch = db.batch()
    idle_chunks = 0
    for index, (window, count, quota) in enumerate(zip(windows, eligible, quotas, strict=True)):
        idle = quota == 0 or count == 0
        idle_chunks += idle
        batch.create(ref.collection(store.CHUNKS).document(window.chunk_id), {
            "index": index,
            "windowStart": window.start,
            "windowEnd": window.end,
            "eligible": count,
            "quota": quota,
            "state": (ChunkState.COMPLETED if idle else ChunkState.PENDING).value,
            "note": _idle_note(count, quota) if idle else "",
            "segment": 0,
            "cursor": None,
            "leaseOwner": None,
            "counters": dict.fromkeys(COUNTERS, 0),
            "read": 0,
            "belowZero": [],
            "createdAt": firestore.SERVER_TIMESTAMP,
            "startedAt": None,
            "finishedAt": firestore.SERVER_TIMESTAMP if idle else None,
        })
    update: dict[str, Any] = {"planned": True, "eligible": sum(eligible), "total": total,
                              "plannedAt": firestore.SERVER_TIMESTAMP}
    if idle_chunks == len(windows):
        update.update(status=RunStatus.COMPLETED.value, startedAt=firestore.SERVER_TIMESTAMP,
                      finishedAt=firestore.SERVER_TIMESTAMP)
    batch.update(ref, update, option=db.write_option(last_update_time=read_at))
    batch.commit()
    logs.log(logger, "run planned", migration_id=run["migrationId"], type=run["type"],
             start_date=run["startDate"], end_date=run["endDate"], dry_run=run["dryRun"],
             eligible=update["eligible"], total=total, event_count=total, chunks=len(windows))


def _idle_note(count: int, quota: int | None) -> str:
    if count == 0:
        return "no eligible events when the run was planned"
    return "maxEvents was reached by older chunks; these events are left for a later run"


def _create(db: firestore.Client, request: BackfillRequest, run: dict[str, Any],
            created: dt.datetime) -> str:
    """Write the run under ``{type}_{epochMs}``, the first free millisecond."""
    epoch_ms = int(created.timestamp() * 1000)
    for offset in range(20):
        migration_id = f"{request.type.value}_{epoch_ms + offset}"
        try:
            store.run_ref(db, migration_id).create({**run, "migrationId": migration_id})
        except api_exceptions.AlreadyExists:
            continue  # another run started in the same millisecond
        return migration_id
    raise Unavailable("could not find a free migration id; retry")


def fail_run(db: firestore.Client, migration_id: str, reason: str) -> None:
    finish_run(db, migration_id, RunStatus.FAILED, reason)


def mark_running(db: firestore.Client, migration_id: str) -> None:
    """pending -> running, when a chunk starts; a no-op for a run past pending."""
    ref = store.run_ref(db, migration_id)
    for _ in range(5):
        snap = ref.get()
        if snap.get("status") != RunStatus.PENDING.value:
            return
        try:
            ref.update({"status": RunStatus.RUNNING.value, "startedAt": firestore.SERVER_TIMESTAMP},
                       option=db.write_option(last_update_time=snap.update_time))
            return
        except api_exceptions.FailedPrecondition:
            continue


def finish_run(db: firestore.Client, migration_id: str, status: RunStatus, reason: str = "",
               summary: dict[str, Any] | None = None) -> bool:
    """Move a run to a final status once; False if it already had one."""
    ref = store.run_ref(db, migration_id)
    for _ in range(10):
        snap = ref.get()
        if not snap.exists or snap.get("status") in FINAL_RUN_STATUSES:
            return False
        fields: dict[str, Any] = {"status": status.value, "finishedAt": firestore.SERVER_TIMESTAMP,
                                  "failureReason": reason}
        if snap.get("startedAt") is None:
            fields["startedAt"] = firestore.SERVER_TIMESTAMP
        if summary is not None:
            fields["summary"] = summary
        try:
            ref.update(fields, option=db.write_option(last_update_time=snap.update_time))
        except api_exceptions.FailedPrecondition:
            time.sleep(0.05)
            continue
        logs.log(logger, "run finished", migration_id=migration_id, status=status.value,
                 reason=reason, **{key: value for key, value in (summary or {}).items()
                                   if key in ("processed", "errors", "total", "skipped")})
        return True
    raise Unavailable(f"could not record the end of run {migration_id}; retry")


def finish_if_done(db: firestore.Client, migration_id: str) -> None:
    """After a chunk ends: if no chunk is open any more, end the run (completed or failed).

    Each chunk writes its final state before it calls this, so the last one to end sees no open
    chunk; two ending together may both see it, and ``finish_run`` lets only one through.
    """
    chunks = store.run_ref(db, migration_id).collection(store.CHUNKS)
    open_states = [ChunkState.PENDING.value, ChunkState.RUNNING.value]
    if store.count(chunks.where(filter=FieldFilter("state", "in", open_states))):
        return
    summary = summarize([snap.to_dict() or {} for snap in chunks.stream()])
    failed = summary.pop("failedChunks")
    if failed:
        finish_run(db, migration_id, RunStatus.FAILED, f"{failed} chunk(s) failed", summary)
    else:
        finish_run(db, migration_id, RunStatus.COMPLETED, "", summary)


def summarize(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's counts: the sums of its chunks' counters (the chunks are the counter shards)."""
    sums = dict.fromkeys(COUNTERS, 0)
    below_zero: set[str] = set()
    failed = 0
    for chunk in chunks:
        for key in COUNTERS:
            sums[key] += int((chunk.get("counters") or {}).get(key, 0))
        below_zero.update(chunk.get("belowZero") or [])
        failed += chunk.get("state") == ChunkState.FAILED.value
    return {
        **sums,
        "processed": sums["applied"] + sums["duplicates"],
        "belowZero": sorted(below_zero),
        "failedChunks": failed,
    }
