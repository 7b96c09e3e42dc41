"""Runs (``dataMigrations/{migrationId}``): starting one, planning it, and moving its status.

Starting a run admits it (the concurrency limit and overlapping runs, checked and recorded in one
transaction), records it and enqueues its planning task and its watchdog; planning counts the
eligible events of each chunk (an aggregation, no documents read), shares ``maxEvents`` out
oldest first, writes all chunks in one commit, then enqueues one task per chunk that has work.
The run document is written when the run starts, when it is planned and when its status moves:
never per event. Every status move goes through the run store (``shared.stores``), which asks
``shared.lifecycle`` and writes under the update time it read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared import lifecycle, logs, planning, store
from shared.auth import Caller
from shared.backfills.types import BACKFILLS, backfill_of
from shared.config import Settings
from shared.dispatch import ChunkTask, Dispatcher, enqueue_all
from shared.errors import Conflict, NotFound, TooManyRuns, Unavailable
from shared.models import (
    ACTIVE_RUN_STATUSES,
    FINAL_CHUNK_STATES,
    FINAL_RUN_STATUSES,
    BackfillRequest,
    BackfillType,
    ChunkState,
    RunStatus,
)
from shared.records import ChunkRecord
from shared.stores import FirestoreRuns, RunStore, Stores

logger = logging.getLogger(__name__)

COUNTERS = ("taken", "applied", "duplicates", "skipped", "errors", "points")
# Chunks that have not ended: open ones, and paused ones that resume will reopen.
NOT_ENDED = [state for state in ChunkState if state not in FINAL_CHUNK_STATES]

PLAN_CHUNK = "plan"  # the chunk id of a run's planning task
WATCH_CHUNK = "watch"  # the chunk id of a run's watchdog task
RETRY_CHUNK = "retry"  # the one chunk of a run that retries another run's failed events

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def lease_until(settings: Settings, now: dt.datetime | None = None) -> dt.datetime:
    """When a chunk claimed or checkpointed ``now`` counts as abandoned (see ``watchdog``)."""
    return (now or utc_now()) + dt.timedelta(seconds=settings.lease_seconds)


@dataclasses.dataclass(frozen=True)
class StartedRun:
    migration_id: str
    status: RunStatus
    chunks: int
    # A twin firing of the same Cloud Scheduler schedule time: the run existed already.
    duplicate: bool = False
    # The active runs it waits for before it is planned (see ``Backfill.waits_for``).
    waiting_for: tuple[str, ...] = ()
    start_date: str = ""
    end_date: str = ""
    # The endDate as sent, when the run took it as the end of its month.
    requested_end_date: str | None = None


def start_run(
    request: BackfillRequest,
    caller: Caller,
    settings: Settings,
    db: firestore.Client,
    dispatcher: Dispatcher,
    now: Clock = utc_now,
    scheduled_for: dt.datetime | None = None,
) -> StartedRun:
    """Admit and record a run (``pending``, not yet planned); enqueue its planning task.

    Planning counts every chunk's events, which takes time in proportion to the range, so it
    runs as a task and the trigger answers at once whatever the range. ``scheduled_for`` (Cloud
    Scheduler's schedule time) names the run, so a retried or twin firing finds it and starts
    nothing. Raises ``Conflict``/``TooManyRuns`` (unless ``request.force``) and, when the task
    cannot be enqueued, ``Unavailable`` after marking the run failed.
    """
    windows = planning.windows(request.start_date, request.end_date, settings.chunk_days)
    created = now()
    run = _new_run(request.type, request.dry_run, request.start_date, request.end_date,
                   request.max_events, settings, caller, created, len(windows))
    run.update(lookbackDays=request.lookback_days, forced=request.force,
               includeProcessed=request.include_processed,
               requestedEndDate=request.requested_end_date)
    return _launch(settings, db, dispatcher, run, request.force, scheduled_for)


def start_retry(source_id: str, caller: Caller, settings: Settings, db: firestore.Client,
                dispatcher: Dispatcher, code: str | None = None, dry_run: bool | None = None,
                force: bool = False, now: Clock = utc_now) -> StartedRun:
    """Start a run that re-applies exactly the events that failed in run ``source_id`` (those of
    error ``code`` only, if given), after the operator fixed the cause.

    The source must have ended. A dry run's failures can be retried as a dry run only (it
    applied nothing, so a live retry would apply just its failures and skip the rest).
    """
    snap = store.run_ref(db, source_id).get()
    if not snap.exists:
        raise NotFound(f"no run {source_id}")
    source = snap.to_dict() or {}
    if source["status"] not in FINAL_RUN_STATUSES:
        raise Conflict(f"run {source_id} is {source['status']}; retry its failed events once it "
                       "has ended (let it finish, or cancel it)", [source_id])
    dry = bool(source.get("dryRun")) if dry_run is None else dry_run
    if source.get("dryRun") and not dry:
        raise Conflict(f"run {source_id} was a dry run and applied nothing; start a live run of "
                       "its range instead of retrying its failures live", [source_id])
    failed = store.count(store.errors_query(db, source_id, code))
    if failed == 0:
        raise Conflict(f"run {source_id} has no failed events"
                       + (f" with code {code}" if code else ""), [source_id])
    run = _new_run(BackfillType(source["type"]), dry, dt.date.fromisoformat(source["startDate"]),
                   dt.date.fromisoformat(source["endDate"]), None, settings, caller, now(), 1)
    run.update(retryOf={"migrationId": source_id, "code": code, "events": failed}, forced=force,
               includeProcessed=bool(source.get("includeProcessed")))
    return _launch(settings, db, dispatcher, run, force, None)


def _new_run(backfill_type: BackfillType, dry_run: bool, start_date: dt.date,
             end_date: dt.date, max_events: int | None, settings: Settings, caller: Caller,
             created: dt.datetime, chunk_count: int) -> dict[str, Any]:
    return {
        "type": backfill_type.value,
        "status": RunStatus.PENDING.value,
        "dryRun": dry_run,
        "startDate": start_date.isoformat(),
        "endDate": end_date.isoformat(),
        "maxEvents": max_events,
        "chunkDays": settings.chunk_days,
        "chunkCount": chunk_count,
        # Events received from here on are left to the live path, which may be applying them.
        "receivedBefore": created - dt.timedelta(minutes=settings.settle_minutes),
        "retryOf": None,
        "planned": False,
        "eligible": None,
        "total": None,
        "requestedBy": caller.email,
        "createdAt": created,
        "startedAt": None,
        "finishedAt": None,
        "statusReason": "created; planning is queued",
        "statusHistory": [],
    }


def _launch(settings: Settings, db: firestore.Client, dispatcher: Dispatcher,
            run: dict[str, Any], force: bool, scheduled_for: dt.datetime | None) -> StartedRun:
    migration_id, existing = _admit(settings, db, run, force, scheduled_for)
    if existing is not None:
        logs.log(logger, "twin scheduled run ignored", migration_id=migration_id,
                 type=run["type"], caller=run["requestedBy"])
        return StartedRun(migration_id, RunStatus(existing["status"]),
                          int(existing.get("chunkCount") or 0), duplicate=True,
                          start_date=existing["startDate"], end_date=existing["endDate"])
    try:
        dispatcher.enqueue(ChunkTask(migration_id, PLAN_CHUNK))
        arm_watchdog(settings, dispatcher, migration_id)
    except Unavailable as error:
        fail_run(Stores.firestore(db), migration_id,
                 f"could not enqueue the planning task: {error.message}")
        raise Unavailable(f"run {migration_id} failed: its planning task could not be "
                          "enqueued; start the run again") from error
    logs.log(logger, "run started", migration_id=migration_id, type=run["type"],
             start_date=run["startDate"], end_date=run["endDate"], dry_run=run["dryRun"],
             chunks=run["chunkCount"], caller=run["requestedBy"])
    return StartedRun(migration_id, RunStatus.PENDING, int(run["chunkCount"]),
                      waiting_for=tuple(run.get("waitingFor") or ()),
                      start_date=run["startDate"], end_date=run["endDate"],
                      requested_end_date=run.get("requestedEndDate"))


def _admit(settings: Settings, db: firestore.Client, run: dict[str, Any], force: bool,
           scheduled_for: dt.datetime | None) -> tuple[str, dict[str, Any] | None]:
    """Check the limits and create the run in one transaction; answer its id, and the existing
    run when ``scheduled_for`` names one already (a twin firing).

    The transaction reads the active runs, so two triggers racing for the last free slot cannot
    both get it: the second one's transaction is retried, sees the first run and is refused.
    """
    first_ms = int(((scheduled_for or run["createdAt"])).timestamp() * 1000)
    runs = db.collection(store.RUNS)

    @firestore.transactional
    def admit(transaction: firestore.Transaction) -> tuple[str, dict[str, Any] | None]:
        if scheduled_for is not None:
            ref = runs.document(f"{run['type']}_{first_ms}")
            snap = ref.get(transaction=transaction)
            if snap.exists:
                return ref.id, snap.to_dict() or {}
            candidates = [ref]
        else:
            candidates = [runs.document(f"{run['type']}_{first_ms + n}") for n in range(20)]
        active = [snap.to_dict() or {} for snap in transaction.get(runs.where(
            filter=FieldFilter("status", "in", [s.value for s in ACTIVE_RUN_STATUSES])))]
        if not force:
            _refuse_blockers(run, active, settings.max_active_runs)
        waiting = _runs_to_wait_for(run, active)
        run["waitingFor"] = waiting  # for the answer; the transaction may run this again
        for ref in candidates:
            if not ref.get(transaction=transaction).exists:
                record = {**run, "migrationId": ref.id, "waitingFor": waiting}
                if waiting:
                    record["statusReason"] = (f"waiting for {', '.join(waiting)} over these "
                                              "dates to end; planned after it")
                transaction.create(ref, record)
                return ref.id, None
        raise Unavailable("could not find a free migration id; retry")

    try:
        result: tuple[str, dict[str, Any] | None] = admit(db.transaction(max_attempts=10))
    except (api_exceptions.Aborted, ValueError) as error:
        # ValueError: the client gave up after max_attempts contended commits.
        raise Unavailable("too many runs are starting at once; retry") from error
    return result


def _overlaps(run: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    return bool(other["startDate"] <= run["endDate"] and run["startDate"] <= other["endDate"])


def _runs_to_wait_for(run: Mapping[str, Any], active: list[dict[str, Any]]) -> list[str]:
    """The active runs over the same dates whose type this run's type waits for (a reversal
    backfill waits for the replays that may be applying its refunds' purchases)."""
    waits_for = {str(kind) for kind in BACKFILLS[BackfillType(run["type"])].waits_for}
    return sorted(str(other["migrationId"]) for other in active
                  if other["type"] in waits_for and _overlaps(run, other))


def _refuse_blockers(run: dict[str, Any], active: list[dict[str, Any]], limit: int) -> None:
    overlapping = [other for other in active if other["type"] == run["type"]
                   and _overlaps(run, other)]
    if overlapping:
        named = ", ".join(f"{other['migrationId']} ({other['status']}, {other['startDate']}.."
                          f"{other['endDate']})" for other in overlapping)
        raise Conflict(f"an active {run['type']} run overlaps these dates: {named}; wait for it "
                       "to end, cancel it, or pass force: true",
                       [other["migrationId"] for other in overlapping])
    if len(active) >= limit:
        named = ", ".join(f"{other['migrationId']} ({other['status']})" for other in active)
        raise TooManyRuns(f"{len(active)} runs are active, the limit is {limit} "
                          f"(BACKFILL_MAX_ACTIVE_RUNS): {named}; wait for one to end, or pass "
                          "force: true", [other["migrationId"] for other in active])


def arm_watchdog(settings: Settings, dispatcher: Dispatcher, migration_id: str,
                 now: float | None = None) -> None:
    """Enqueue the run's next watchdog task, due in one lease; one per lease-long slot (the slot
    number is the task's segment, so arming twice within a slot is a no-op)."""
    due = (time.time() if now is None else now) + settings.lease_seconds
    slot = int(due // settings.lease_seconds)
    dispatcher.enqueue(ChunkTask(migration_id, WATCH_CHUNK, slot),
                       delay_seconds=settings.lease_seconds)


# Watchdogs armed from outside their chain (``ensure_watchdog``) are numbered from here, apart
# from the chain's slot numbers (epoch seconds / lease, far below it).
RESCUE_SEGMENTS = 10**12


def ensure_watchdog(settings: Settings, dispatcher: Dispatcher, migration_id: str,
                    now: float | None = None) -> bool:
    """Arm the run's watchdog unless one is queued; answer whether it armed one.

    A watchdog armed within the last lease is due in the current or the next slot (or, backing
    off, the one before): if none of those exists, it was lost. ``arm_watchdog``'s slot name
    may not serve then: Cloud Tasks refuses the name of a task it deleted or dropped for a while
    afterwards. So this one is numbered apart (``RESCUE_SEGMENTS`` + slot): arming it again
    within a slot is a no-op, and when it runs it re-arms the slot-named chain.
    """
    at = time.time() if now is None else now
    slot = int((at + settings.lease_seconds) // settings.lease_seconds)
    queued = (slot - 2, slot - 1, slot, RESCUE_SEGMENTS + slot - 1, RESCUE_SEGMENTS + slot)
    if any(dispatcher.exists(ChunkTask(migration_id, WATCH_CHUNK, segment))
           for segment in queued):
        return False
    return dispatcher.enqueue(ChunkTask(migration_id, WATCH_CHUNK, RESCUE_SEGMENTS + slot),
                              delay_seconds=settings.lease_seconds)


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


def still_active(run_store: RunStore, migration_ids: list[str]) -> list[str]:
    """Those of ``migration_ids`` whose runs are still active (pending, running or paused)."""
    found = (run_store.get(migration_id) for migration_id in migration_ids)
    return sorted(run.migration_id for run in found
                  if run is not None and run.status in ACTIVE_RUN_STATUSES)


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
    lease = lease_until(settings)
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


def fail_run(stores: Stores, migration_id: str, reason: str) -> None:
    finish_run(stores, migration_id, RunStatus.FAILED, reason)


def mark_running(stores: Stores, migration_id: str) -> None:
    """pending -> running, when a chunk starts; a no-op for a run past pending."""
    stores.runs.move(migration_id, RunStatus.RUNNING, only_from=RunStatus.PENDING)


def finish_run(stores: Stores, migration_id: str, status: RunStatus, reason: str = "",
               summary: dict[str, Any] | None = None) -> bool:
    """Move a run to a final status once; False if it already had one."""
    moved = stores.runs.move(migration_id, status, detail=reason, failure_reason=reason,
                             summary=summary, strict=False)
    if moved is not None and summary is not None:
        logs.log(logger, "run finished", migration_id=migration_id, status=status.value,
                 reason=reason, **{key: value for key, value in summary.items()
                                   if key in ("processed", "errors", "total", "skipped")})
    return moved is not None


def finish_if_done(stores: Stores, migration_id: str) -> None:
    """After a chunk ends: if no chunk is open or paused any more, end the run (completed or
    failed).

    Each chunk writes its final state before it calls this, so the last one to end sees no open
    chunk; two ending together may both see it, and the run's move lets only one through.
    """
    run = stores.runs.get(migration_id)
    if run is None or not run.planned:
        return  # no chunk exists yet, so none is open: nothing has even started
    if stores.chunks.count(migration_id, NOT_ENDED):
        return
    summary = summarize(stores.chunks.chunks(migration_id))
    failed = summary.pop("failedChunks")
    if failed:
        finish_run(stores, migration_id, RunStatus.FAILED, f"{failed} chunk(s) failed", summary)
    else:
        finish_run(stores, migration_id, RunStatus.COMPLETED, "", summary)


def summarize(chunks: Iterable[ChunkRecord]) -> dict[str, Any]:
    """A run's counts: the sums of its chunks' counters (the chunks are the counter shards)."""
    sums = dict.fromkeys(COUNTERS, 0)
    below_zero: set[str] = set()
    failed = 0
    for chunk in chunks:
        counted = chunk.counters.model_dump()
        for key in COUNTERS:
            sums[key] += int(counted[key])
        below_zero.update(chunk.below_zero)
        failed += chunk.state is ChunkState.FAILED
    return {
        **sums,
        "processed": sums["applied"] + sums["duplicates"],
        "belowZero": sorted(below_zero),
        "failedChunks": failed,
    }
