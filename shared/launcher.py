"""Starting a run: admit it, record it, enqueue its planning task and its watchdog.

Admission (the concurrency limit, overlapping runs of the same type, and the runs of other
types this one waits for) is checked and the run created in one Firestore transaction, so
racing triggers cannot both take the last slot. A retry starts a run over exactly the events
that failed in an ended run. The trigger answers as soon as the run is recorded: planning runs
as a task (``shared.planner``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared import clock, logs, planning, store
from shared.auth import Caller
from shared.backfills.registry import BACKFILLS
from shared.bodies import BackfillRequest
from shared.completion import fail_run
from shared.config import Settings
from shared.dispatch import (
    PLAN_CHUNK,
    ChunkTask,
    Dispatcher,
    arm_watchdog,
)
from shared.errors import Conflict, NotFound, TooManyRuns, Unavailable
from shared.models import (
    ACTIVE_RUN_STATUSES,
    FINAL_RUN_STATUSES,
    RunStatus,
)
from shared.stores import FirestoreErrors, Stores

logger = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]


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
    now: Clock = clock.now,
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
                force: bool = False, now: Clock = clock.now) -> StartedRun:
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
    failed = FirestoreErrors(db).count(source_id, code)
    if failed == 0:
        raise Conflict(f"run {source_id} has no failed events"
                       + (f" with code {code}" if code else ""), [source_id])
    run = _new_run(str(source["type"]), dry, dt.date.fromisoformat(source["startDate"]),
                   dt.date.fromisoformat(source["endDate"]), None, settings, caller, now(), 1)
    run.update(retryOf={"migrationId": source_id, "code": code, "events": failed}, forced=force,
               includeProcessed=bool(source.get("includeProcessed")))
    return _launch(settings, db, dispatcher, run, force, None)


def _new_run(backfill_type: str, dry_run: bool, start_date: dt.date,
             end_date: dt.date, max_events: int | None, settings: Settings, caller: Caller,
             created: dt.datetime, chunk_count: int) -> dict[str, Any]:
    return {
        "type": backfill_type,
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
    waits_for = set(BACKFILLS.get(run["type"]).waits_for)
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
