"""Starting a run: admit it, record it, enqueue its planning task and its watchdog.

Admission (the concurrency limit, overlapping runs of the same type, and the runs of other
types this one waits for) is checked and the run created in one Firestore transaction, so
racing triggers cannot both take the last slot. A retry starts a run over exactly the events
that failed in an ended run. The trigger answers as soon as the run is recorded: planning runs
as a task (``shared.runs.planner``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from shared import clock, logs
from shared.adapters.cloud_tasks import (
    ChunkTask,
    Dispatcher,
    arm_watchdog,
)
from shared.adapters.oidc import Caller
from shared.adapters.stores import Stores, refuse_if_off
from shared.backfills.registry import BACKFILLS
from shared.config import Settings
from shared.domain import chunking, review
from shared.domain.records import RunRecord
from shared.domain.run_request import BackfillRequest
from shared.errors import Conflict, InvalidRequest, NotFound, TooManyRuns, Unavailable
from shared.models import ACTIVE_RUN_STATUSES, FINAL_RUN_STATUSES, RunStatus
from shared.runs.completion import fail_run

logger = logging.getLogger(__name__)


Clock = Callable[[], dt.datetime]

# Run ids are ``{type}_{milliseconds}``; racing triggers of one millisecond take the next ones.
_ID_CANDIDATES = 20


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
    # For a retry run: the run it retries, the error code it is limited to, how many events.
    retry_of: dict[str, Any] | None = None
    # For a rollback run: the run it rolls back, and how many entries that run wrote.
    rollback_of: dict[str, Any] | None = None
    dry_run: bool = False

    @classmethod
    def of(cls, run: RunRecord, duplicate: bool = False) -> StartedRun:
        return cls(run.migration_id, run.status, run.chunk_count, duplicate=duplicate,
                   dry_run=run.dry_run,
                   waiting_for=tuple(run.waiting_for), start_date=run.start_date.isoformat(),
                   end_date=run.end_date.isoformat(),
                   requested_end_date=run.requested_end_date, retry_of=run.retry_of,
                   rollback_of=run.rollback_of)


def start_run(
    request: BackfillRequest,
    caller: Caller,
    settings: Settings,
    stores: Stores,
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
    _refuse_unexplained(settings, request.dry_run, request.reason)
    admit = getattr(BACKFILLS.get(request.type), "admit", None)
    if admit is not None:  # what the type itself refuses (``Backfill``'s admission hook)
        admit(settings, request.start_date, now().date())
    windows = chunking.windows(request.start_date, request.end_date, settings.chunk_days)
    run = _new_run(request.type, request.dry_run, request.start_date, request.end_date,
                   settings, caller, now(), len(windows), max_events=request.max_events,
                   max_events_per_second=(request.max_events_per_second
                                          or settings.max_events_per_second),
                   lookback_days=request.lookback_days, forced=request.force,
                   include_processed=request.include_processed, target=request.target,
                   repair=request.repair,
                   requested_end_date=request.requested_end_date, reason=request.reason,
                   **{name: value for name, value in (
                       ("max_points", request.max_points),
                       ("max_points_per_customer", request.max_points_per_customer),
                       ("allow_negative_wallets", request.allow_negative_wallets))
                      if value is not None})
    run = _reviewed(settings, stores, request, run, now(), scheduled_for)
    return _launch(settings, stores, dispatcher, run, request.force, scheduled_for)


def _reviewed(settings: Settings, stores: Stores, request: BackfillRequest, run: RunRecord,
              now: dt.datetime, scheduled_for: dt.datetime | None) -> RunRecord:
    """The run bound to the dry run it names (``planOf``), or refused: 404 when there is no
    such run, 409 naming it when it may not plan this one (``review.refusal``), and 409 when a
    plan is required (``BACKFILL_REQUIRE_PLAN``) and none is named. A run Cloud Scheduler
    starts needs none: nobody is there to review the nightly job."""
    if request.plan_of is None:
        if (settings.plan_required and not request.dry_run and scheduled_for is None
                and request.type in BACKFILLS.reviewed()):
            raise Conflict(f"a live {request.type} needs planOf here (BACKFILL_REQUIRE_PLAN): "
                           "start it as a dry run first (dryRun: true), review what it would "
                           "do, then start it live with planOf: the dry run's migrationId", [])
        return run
    if request.type not in BACKFILLS.reviewed():
        raise InvalidRequest("planOf", f"only {', '.join(BACKFILLS.reviewed())} runs are "
                                       f"bound to a plan ({request.type} is not)")
    plan = stores.runs.get(request.plan_of)
    if plan is None:
        raise NotFound(f"planOf: no run {request.plan_of}")
    replayed_by = getattr(BACKFILLS.get(plan.type), "replayed_by", None)
    if (problem := review.refusal(settings, plan, run, now, replayed_by)) is not None:
        raise Conflict(problem, [plan.migration_id])
    return run.model_copy(update={"plan_of": review.plan_record(plan, run)})


def start_retry(source_id: str, caller: Caller, settings: Settings, stores: Stores,
                dispatcher: Dispatcher, code: str | None = None, dry_run: bool | None = None,
                force: bool = False, now: Clock = clock.now) -> StartedRun:
    """Start a run that re-applies exactly the events that failed in run ``source_id`` (those of
    error ``code`` only, if given), after the operator fixed the cause.

    The source must have ended. A dry run's failures can be retried as a dry run only (it
    applied nothing, so a live retry would apply just its failures and skip the rest).
    """
    source = stores.runs.get(source_id)
    if source is None:
        raise NotFound(f"no run {source_id}")
    _refuse("retry", source)
    if source.status not in FINAL_RUN_STATUSES:
        raise Conflict(f"run {source_id} is {source.status.value}; retry its failed events "
                       "once it has ended (let it finish, or cancel it)", [source_id])
    dry = source.dry_run if dry_run is None else dry_run
    if source.dry_run and not dry:
        raise Conflict(f"run {source_id} was a dry run and applied nothing; start a live run of "
                       "its range instead of retrying its failures live", [source_id])
    failed = stores.errors.count(source_id, code)
    if failed == 0:
        raise Conflict(f"run {source_id} has no failed events"
                       + (f" with code {code}" if code else ""), [source_id])
    run = _new_run(source.type, dry, source.start_date, source.end_date, settings, caller,
                   now(), 1, retry_of={"migrationId": source_id, "code": code, "events": failed},
                   forced=force, include_processed=source.include_processed,
                   target=source.target,
                   max_events_per_second=(source.max_events_per_second
                                          or settings.max_events_per_second))
    return _launch(settings, stores, dispatcher, run, force, None)


def start_rollback(source_id: str, caller: Caller, settings: Settings, stores: Stores,
                   dispatcher: Dispatcher, dry_run: bool = True, force: bool = False,
                   target: dict[str, list[str]] | None = None, reason: str = "",
                   now: Clock = clock.now) -> StartedRun:
    """Start a run that undoes the ledger entries run ``source_id`` wrote
    (``shared.backfills.rollback``); with ``target`` (``customerIds``, ``orderIds``), only
    those customers' or orders' entries: every other entry, wallet and flag stays as it was.

    The run must have ended and have been live; a live rollback needs a completed dry run of
    the same scope first, and none live before it of that scope or of the whole run (``force``
    passes both checks: rolling back again takes what an earlier rollback left). Rollbacks of
    other scopes do not count: each passes over entries another rolled back.
    """
    _refuse_unexplained(settings, dry_run, reason)
    source = stores.runs.get(source_id)
    if source is None:
        raise NotFound(f"no run {source_id}")
    _refuse("rollback", source)
    if source.status not in FINAL_RUN_STATUSES:
        raise Conflict(f"run {source_id} is {source.status.value}; roll it back once it has "
                       "ended (let it finish, or cancel it)", [source_id])
    if source.dry_run:
        raise Conflict(f"run {source_id} was a dry run and wrote no ledger entry", [source_id])
    earlier = stores.runs.rollbacks(source_id)
    scope = f" of {_scope(target)}" if target else ""
    if not dry_run and not force:
        live = [run.migration_id for run in earlier if not run.dry_run
                and run.status in (RunStatus.COMPLETED, *ACTIVE_RUN_STATUSES)
                and run.target in (None, target)]
        if live:
            raise Conflict(f"run {source_id} is rolled back already{scope} by "
                           f"{', '.join(live)}; pass force: true to roll back what is left",
                           live)
        if not any(run.dry_run and run.status is RunStatus.COMPLETED and run.target == target
                   for run in earlier):
            raise Conflict(f"dry-run the rollback{scope} of {source_id} first (dryRun: true, "
                           "the same customerIds and orderIds), read its report, then roll "
                           "back with dryRun: false", [source_id])
    written = stores.plans.written(source_id)
    if written == 0:
        raise Conflict(f"run {source_id} wrote no ledger entry: nothing to roll back",
                       [source_id])
    run = _new_run(BACKFILLS.undoer(), dry_run, source.start_date, source.end_date, settings,
                   caller, now(), 1, rollback_of={"migrationId": source_id, "entries": written},
                   forced=force, target=target, reason=reason.strip())
    return _launch(settings, stores, dispatcher, run, force, None)


def _scope(target: dict[str, list[str]]) -> str:
    """A rollback's scope in words: "customers c1, c2 and orders o1" (the first few ids)."""
    def named(what: str, ids: list[str]) -> str:
        shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        return f"{what} {shown}"

    return " and ".join(named(what, target[field]) for field, what in (
        ("customerIds", "customers"), ("orderIds", "orders")) if target.get(field))


def _refuse_unexplained(settings: Settings, dry_run: bool, reason: str) -> None:
    """``InvalidRequest`` naming ``reason`` for a live run without one where one is required
    (production: its report and its notices say who started it and why)."""
    if not dry_run and settings.reason_required and not reason.strip():
        raise InvalidRequest("reason", f"say why this live run is started (a ticket or an "
                                       f"incident id): required in {settings.stage.value}")


def _refuse(action: str, source: RunRecord) -> None:
    """``Conflict`` if the source run's type refuses ``action`` (its own reason)."""
    if (reason := BACKFILLS.get(source.type).refusal(action)) is not None:
        raise Conflict(f"run {source.migration_id} is a {source.type}{reason}",
                       [source.migration_id])


def _new_run(backfill_type: str, dry_run: bool, start_date: dt.date, end_date: dt.date,
             settings: Settings, caller: Caller, created: dt.datetime, chunk_count: int,
             **more: Any) -> RunRecord:
    """The run as admission creates it (its id is given then), with the settings' guardrails
    unless ``more`` names its own."""
    return RunRecord.model_validate({
        "max_points": settings.max_points,
        "max_points_per_customer": settings.max_points_per_customer,
        "allow_negative_wallets": settings.allow_negative_wallets,
        "id": "", "type": backfill_type, "status": RunStatus.PENDING, "dry_run": dry_run,
        "start_date": start_date, "end_date": end_date, "chunk_days": settings.chunk_days,
        "chunk_count": chunk_count,
        # Events received from here on are left to the live path, which may be applying them.
        "received_before": created - dt.timedelta(minutes=settings.settle_minutes),
        "requested_by": caller.email, "created_at": created,
        "pitr_timestamp": created.replace(second=0, microsecond=0),
        "status_reason": "created; planning is queued", **more})


def _launch(settings: Settings, stores: Stores, dispatcher: Dispatcher, run: RunRecord,
            force: bool, scheduled_for: dt.datetime | None) -> StartedRun:
    # The kill switch, for every way a run starts (the trigger, a retry, a rollback).
    refuse_if_off(settings, stores, "nothing was started")
    admitted, existed = _admit(settings, stores, run, force, scheduled_for)
    migration_id = admitted.migration_id
    if existed:
        logs.log(logger, "twin scheduled run ignored", migration_id=migration_id,
                 type=run.type, caller=run.requested_by)
        return StartedRun.of(admitted, duplicate=True)
    try:
        dispatcher.enqueue(ChunkTask.planning(migration_id))
        arm_watchdog(settings, dispatcher, migration_id)
    except Unavailable as error:
        fail_run(stores, migration_id, f"could not enqueue the planning task: {error.message}")
        raise Unavailable(f"run {migration_id} failed: its planning task could not be "
                          "enqueued; start the run again") from error
    logs.log(logger, "run started", migration_id=migration_id, type=run.type,
             start_date=run.start_date.isoformat(), end_date=run.end_date.isoformat(),
             dry_run=run.dry_run, chunks=run.chunk_count, caller=run.requested_by)
    return StartedRun.of(admitted)


def _admit(settings: Settings, stores: Stores, run: RunRecord, force: bool,
           scheduled_for: dt.datetime | None) -> tuple[RunRecord, bool]:
    """Check the limits and create the run (``RunStore.admit``: one transaction); answer it,
    and whether it existed already (``scheduled_for`` names a run a twin firing created)."""
    first_ms = int((scheduled_for or run.created_at).timestamp() * 1000)
    if scheduled_for is not None:
        ids = [f"{run.type}_{first_ms}"]
    else:
        ids = [f"{run.type}_{first_ms + n}" for n in range(_ID_CANDIDATES)]

    def decide(active: list[RunRecord]) -> RunRecord:
        if not force:
            _refuse_blockers(run, active, settings.max_active_runs)
        waiting = _runs_to_wait_for(run, active)
        if not waiting:
            return run
        return run.model_copy(update={
            "waiting_for": waiting,
            "status_reason": f"waiting for {', '.join(waiting)} over these dates to end; "
                             "planned after it"})

    return stores.runs.admit(run, ids, decide, twin=scheduled_for is not None)


def _overlaps(run: RunRecord, other: RunRecord) -> bool:
    return other.start_date <= run.end_date and run.start_date <= other.end_date


def _runs_to_wait_for(run: RunRecord, active: list[RunRecord]) -> list[str]:
    """The active runs over the same dates whose type this run's type waits for (a reversal
    backfill waits for the replays that may be applying its refunds' purchases)."""
    waits_for = set(BACKFILLS.get(run.type).waits_for)
    return sorted(other.migration_id for other in active
                  if other.type in waits_for and _overlaps(run, other))


def _refuse_blockers(run: RunRecord, active: list[RunRecord], limit: int) -> None:
    overlapping = [other for other in active
                   if other.type == run.type and _overlaps(run, other)]
    if overlapping:
        named = ", ".join(f"{other.migration_id} ({other.status.value}, {other.start_date}.."
                          f"{other.end_date})" for other in overlapping)
        raise Conflict(f"an active {run.type} run overlaps these dates: {named}; wait for it "
                       "to end, cancel it, or pass force: true",
                       [other.migration_id for other in overlapping])
    if len(active) >= limit:
        named = ", ".join(f"{other.migration_id} ({other.status.value})" for other in active)
        raise TooManyRuns(f"{len(active)} runs are active, the limit is {limit} "
                          f"(BACKFILL_MAX_ACTIVE_RUNS): {named}; wait for one to end, or pass "
                          "force: true", [other.migration_id for other in active])
