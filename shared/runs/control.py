"""Steering a run: pause, resume, cancel, and the stops the bundle makes itself (the circuit
breaker, the ``BACKFILL_ENABLED=false`` kill switch).

Why a stop is exact: the run's status moves first, then every open chunk is moved (paused or
cancelled) under its own update time. Each page of a chunk commits under the chunk's update time
too, so once a chunk is moved, the delivery working on it can no longer commit: its page fails
whole, it re-reads the chunk, sees the new state and stops. Nothing is half-applied, and once
the call answers no page of the run commits any more. Cursors stay on the chunks; resume moves
them back to ``pending`` under a new segment and enqueues one task each, so the run continues
where it stopped, and tasks of older segments find themselves stale and do nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared import clock, logs
from shared.adapters import cloud_tasks
from shared.adapters import stores as stores_module
from shared.adapters.cloud_tasks import ChunkTask, Dispatcher, enqueue_all
from shared.adapters.stores import Stores, still_active
from shared.backfills.registry import BACKFILLS
from shared.config import Settings
from shared.domain import lifecycle
from shared.domain import throttle as throttling
from shared.domain.records import ChunkRecord, RunRecord
from shared.errors import BackfillError, Conflict, Forbidden, NotFound
from shared.models import ChunkState, RunStatus
from shared.runs import completion

logger = logging.getLogger(__name__)

KILL_SWITCH = stores_module.KILL_SWITCH
switched_off = stores_module.switched_off
refuse_if_off = stores_module.refuse_if_off
# The chunk states whose unspent maxPoints allowance goes back to the run's pool on a pause or
# resume: every one no delivery holds (a failed or cancelled chunk spends nothing more).
_HOLDING = (ChunkState.PAUSED, ChunkState.PENDING, ChunkState.FAILED, ChunkState.CANCELLED)

# Who paused a run that waits for another (``make_way``), and resumed it (``wake``).
WAITING = "bundle"
# Who paused a run whose page would cross a guardrail (its status history's ``by``).
GUARDRAIL = "guardrail"


@dataclasses.dataclass(frozen=True)
class Steered:
    """What a control action did: the run's status after it, and how many chunks it moved."""

    migration_id: str
    status: str
    previous: str
    chunks: int
    changed: bool

    def body(self) -> dict[str, Any]:
        return {"migrationId": self.migration_id, "status": self.status,
                "previousStatus": self.previous, "chunksMoved": self.chunks,
                "changed": self.changed}


def pause(settings: Settings, stores: Stores, migration_id: str, by: str,
          note: str = "", detail: str = "", fields: dict[str, Any] | None = None) -> Steered:
    """Pause a pending or running run (``fields``: run document fields written with the
    move); repeating it on a paused run moves any chunk a crashed earlier call left open."""
    moved = stores.runs.move(migration_id, RunStatus.PAUSED, by=by, note=note, detail=detail,
                             fields=fields)
    chunks = stop_chunks(settings, stores, migration_id, ChunkState.PAUSED,
                         detail or "its run was paused")
    # A chunk that ended while the pause was on its way may have been the last open one.
    completion.finish_if_done(stores, migration_id)
    return _steered(stores, migration_id, moved, chunks)


def cancel(settings: Settings, stores: Stores, migration_id: str, by: str,
           note: str = "", dispatcher: Dispatcher | None = None) -> Steered:
    """Cancel a pending, running or paused run: its chunks stop at their next page for good;
    the runs that waited for it (``make_way``) resume, given a ``dispatcher``."""
    moved = stores.runs.move(migration_id, RunStatus.CANCELLED, by=by, note=note)
    chunks = stop_chunks(settings, stores, migration_id, ChunkState.CANCELLED,
                         "its run was cancelled")
    if moved is not None:
        completion.log_summary(stores, moved, RunStatus.CANCELLED, note or "cancelled")
    if dispatcher is not None:
        wake(settings, stores, dispatcher)
    return _steered(stores, migration_id, moved, chunks)


def make_way(settings: Settings, stores: Stores, migration_id: str) -> list[str]:
    """A live run just started (a replay): pause every active run of overlapping dates whose
    type waits for its type (a reversal backfill, whose refunds would fail as "Original
    purchase entry not found" while the replay is still applying their purchases) until it
    has ended, as if it had been started after it. Answers the runs paused. ``wake`` resumes
    them; the sweep does too, should that call be lost."""
    run = stores.runs.get(migration_id)
    if run is None or run.dry_run:
        return []  # a dry run applies no purchase a reversal could wait for
    # Where each waits for the other (a rollback and a replay), the one started first goes on
    # and the new one waits (``waitingFor``): pausing the first too would leave both waiting.
    waits_itself = set(BACKFILLS.get(run.type).waits_for)
    paused: list[str] = []
    for other in stores.runs.active():
        if (other.migration_id == migration_id or other.type in waits_itself
                or run.type not in BACKFILLS.get(other.type).waits_for
                or not (other.start_date <= run.end_date and run.start_date <= other.end_date)):
            continue
        why = (f"waiting for {migration_id} ({run.type}) over these dates to end, as if started "
               "after it: its refunds need the purchases it applies; resumes by itself then")
        try:
            steered = pause(settings, stores, other.migration_id, by=WAITING, detail=why,
                            fields={"pausedFor": [migration_id]})
        except (Conflict, NotFound):
            continue  # it ended meanwhile
        if steered.changed:
            paused.append(other.migration_id)
    if paused:
        logs.log(logger, "runs wait for a new run", migration_id=migration_id,
                 runs=len(paused))
    return paused


def wake(settings: Settings, stores: Stores, dispatcher: Dispatcher) -> list[str]:
    """Resume the runs ``make_way`` paused whose runs to wait for have all ended (and only
    those: a run an operator paused stays paused). Safe to repeat: a resumed run is no longer
    paused, and resuming clears what it waited for."""
    woken: list[str] = []
    for run in stores.runs.active(paused=True):
        if run.status is not RunStatus.PAUSED or not run.paused_for:
            continue
        if still_active(stores.runs, run.paused_for):
            continue
        try:
            resume(settings, stores, dispatcher, run.migration_id, WAITING,
                   f"{', '.join(run.paused_for)} ended", fields={"pausedFor": []})
        except (BackfillError, NotFound):
            continue  # switched off, or gone: the next call or the sweep tries again
        woken.append(run.migration_id)
    return woken


def halt(settings: Settings, stores: Stores, migration_id: str, reason: str) -> bool:
    """Stop a run as ``failed`` with ``reason`` (the circuit breaker); False if it had ended."""
    moved = stores.runs.move(migration_id, RunStatus.FAILED, detail=reason,
                             failure_reason=reason, strict=False)
    if moved is None:
        return False
    stop_chunks(settings, stores, migration_id, ChunkState.CANCELLED,
                f"its run stopped: {reason}")
    completion.log_summary(stores, moved, RunStatus.FAILED, reason)
    return True


def check_breaker(settings: Settings, stores: Stores, migration_id: str) -> str | None:
    """The circuit breaker, asked after a live page with errors: stop the run as failed if more
    than ``BACKFILL_BREAKER_ERROR_RATE`` of its events failed, once at least
    ``BACKFILL_BREAKER_MIN_EVENTS`` were taken. Answers the reason when it stopped the run."""
    totals = stores.chunks.totals(migration_id, ("errors", "taken"))
    errors, taken = totals["errors"], totals["taken"]
    if taken < settings.breaker_min_events or errors <= settings.breaker_error_rate * taken:
        return None
    reason = (f"circuit breaker: {errors} of the {taken} events taken failed "
              f"({100 * errors / taken:.0f}%), above BACKFILL_BREAKER_ERROR_RATE="
              f"{settings.breaker_error_rate:g} after at least "
              f"BACKFILL_BREAKER_MIN_EVENTS={settings.breaker_min_events}; fix the cause "
              "(see the error report), then retry the run's failed events, and start a new "
              "replay of its range for the events it never reached (a retry takes only the "
              "failed ones)")
    return reason if halt(settings, stores, migration_id, reason) else None


def guardrail(settings: Settings, stores: Stores, dispatcher: Dispatcher, migration_id: str,
              cap: str, reason: str, moved: int) -> bool:
    """A page of the run would cross its guardrail ``cap`` (``maxPoints``, ...; ``moved``: the
    points the page moves): pause the run by ``guardrail`` with ``reason``, and take back the
    points its stopped chunks hold unspent. When that leaves room for the page within
    ``maxPoints`` after all (the points were held, not moved), resume at once and answer True:
    a run stays paused only where its moves would cross a cap."""
    pause(settings, stores, migration_id, by=GUARDRAIL, note=reason, detail=reason)
    stores.chunks.release(migration_id, _HOLDING)
    run = stores.runs.get(migration_id)
    if (cap != "maxPoints" or run is None or run.max_points is None
            or run.status is not RunStatus.PAUSED
            or stores.chunks.reserved(migration_id) + moved > run.max_points):
        return False
    try:
        resume(settings, stores, dispatcher, migration_id, GUARDRAIL, "the points held unspent "
               "by stopped chunks were given back: the page fits within maxPoints")
    except BackfillError:  # switched off meanwhile: it stays paused, its reason standing
        return False
    return True


def approve(settings: Settings, stores: Stores, dispatcher: Dispatcher, migration_id: str,
            by: str, note: str = "") -> Steered:
    """Let a run that awaits approval go: only an approver (``BACKFILL_APPROVERS``) who did not
    start it may; its chunks are enqueued and its watchdog armed. Refused while the kill
    switch is off."""
    refuse_if_off(settings, stores, "approve it once they are on")
    run = stores.runs.get(migration_id)
    if run is None:
        raise NotFound(f"no run {migration_id}")
    if by not in settings.approvers:
        raise Forbidden(f"{by} is no approver: one of BACKFILL_APPROVERS "
                        f"({', '.join(settings.approvers) or 'none configured'}) approves runs")
    if run.status is not RunStatus.AWAITING_APPROVAL:
        raise Conflict(f"run {migration_id} is {run.status.value}: only a run awaiting "
                       "approval is approved", [])
    if by == run.requested_by:
        raise Forbidden(f"nobody approves their own run: {by} started {migration_id}; ask "
                        "another approver")
    moved = stores.runs.move(migration_id, RunStatus.PENDING, by=by, note=note,
                             only_from=RunStatus.AWAITING_APPROVAL, strict=True,
                             fields={"approvedBy": by})
    tasks = [ChunkTask(migration_id, chunk.chunk_id, chunk.segment)
             for chunk in stores.chunks.chunks(migration_id, [ChunkState.PENDING])]
    enqueue_all(dispatcher, tasks, settings.enqueue_workers)
    cloud_tasks.arm_watchdog(settings, dispatcher, migration_id)
    return _steered(stores, migration_id, moved, len(tasks))


def flip(settings: Settings, stores: Stores, enabled: bool, reason: str,
         by: str) -> dict[str, Any]:
    """Store the kill switch. Off: every active run is paused before this answers (each
    pause moves the run's chunks, so no page of any of them commits afterwards), and every
    trigger, resume, retry and delivery is refused or paused until it is on again. On: runs
    stay paused; resume them (one by one, or ``steer_all``)."""
    before = stores.switch.set(enabled, reason, by)
    paused: list[str] = []
    if not enabled:
        detail = switched_off(settings, stores) or KILL_SWITCH
        for run in stores.runs.active():
            try:
                steered = pause(settings, stores, run.migration_id, by=by, note=reason,
                                detail=detail)
            except (Conflict, NotFound):
                continue  # it ended meanwhile
            if steered.changed:
                paused.append(run.migration_id)
    logs.log(logger, "kill switch", enabled=enabled, previous=before.enabled, caller=by,
             runs=len(paused))
    return {"enabled": enabled, "previouslyEnabled": before.enabled, "reason": reason,
            "by": by, "paused": paused, "deployTimeEnabled": settings.enabled}


# The statuses each action of ``steer_all`` takes a run from.
_STEERABLE = {"pause": (RunStatus.PENDING, RunStatus.RUNNING), "resume": (RunStatus.PAUSED,),
              "cancel": (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.PAUSED)}


def steer_all(settings: Settings, stores: Stores, dispatcher: Dispatcher, action: str,
              by: str, note: str = "", backfill_type: str | None = None,
              first: dt.date | None = None, last: dt.date | None = None) -> dict[str, Any]:
    """Pause, resume or cancel every active run that ``action`` applies to (pause: pending
    and running; resume: paused; cancel: all three), of ``backfill_type`` if given and
    overlapping ``first``..``last`` if given, one after another; answer each one's outcome.
    A run that moved meanwhile is reported, not an error; repeating the call is harmless."""
    matched = [run for run in stores.runs.active(paused=True)
               if run.status in _STEERABLE[action]
               and backfill_type in (None, run.type)
               and (first is None or run.end_date >= first)
               and (last is None or run.start_date <= last)]
    outcomes: list[dict[str, Any]] = []
    for run in sorted(matched, key=lambda run: run.created_at):
        try:
            if action == "pause":
                steered = pause(settings, stores, run.migration_id, by, note)
            elif action == "resume":
                steered = resume(settings, stores, dispatcher, run.migration_id, by, note)
            else:
                steered = cancel(settings, stores, run.migration_id, by, note, dispatcher)
        except (Conflict, NotFound) as error:
            outcomes.append({"migrationId": run.migration_id, "changed": False,
                             "status": run.status.value, "message": error.message})
            continue
        outcomes.append(steered.body())
    logs.log(logger, "runs steered", action=action, caller=by, runs=len(outcomes))
    return {"action": action, "matched": len(outcomes), "runs": outcomes}


def kill_switch(settings: Settings, stores: Stores, migration_id: str) -> str:
    """Pause a run because the bundle is switched off, instead of failing its tasks."""
    try:
        pause(settings, stores, migration_id, by="",
              detail=switched_off(settings, stores) or KILL_SWITCH)
    except NotFound:
        return "no such run"
    except Conflict:
        return "the run has ended; nothing to pause"
    return "paused by the kill switch"


def resume(settings: Settings, stores: Stores, dispatcher: Dispatcher,
           migration_id: str, by: str, note: str = "",
           fields: dict[str, Any] | None = None) -> Steered:
    """Resume a paused run from its chunks' cursors; on a pending or running run, reopen any
    chunk left paused (a no-op otherwise). Refused while the kill switch is off.

    ``fields`` (run document fields: ``maxPoints``, ``maxPointsPerCustomer``,
    ``allowNegativeWallets``) change the run's guardrails with the move, so a run a guardrail
    paused goes on under the raised cap. The points its stopped chunks hold unspent go back to
    its pool first (``ChunkStore.release``)."""
    refuse_if_off(settings, stores, "switch them on before resuming")
    run = stores.runs.get(migration_id)
    if run is None:
        raise NotFound(f"no run {migration_id}")
    target = RunStatus.RUNNING if run.started_at is not None else RunStatus.PENDING
    if run.status in (RunStatus.PENDING, RunStatus.RUNNING):
        target = run.status
    if run.status is RunStatus.PAUSED and run.max_points is not None:
        stores.chunks.release(migration_id, _HOLDING)
    if fields and run.status not in (RunStatus.PAUSED, RunStatus.PENDING, RunStatus.RUNNING):
        raise Conflict(f"run {migration_id} is {run.status.value}: its guardrails can no "
                       "longer change", [])
    moved = stores.runs.move(migration_id, target, by=by, note=note, fields=fields)
    # Chunks planned while the run was paused never got a task: reopen them too.
    reopen = [ChunkState.PAUSED] + ([ChunkState.PENDING] if moved is not None else [])
    tasks = _reopen_chunks(settings, stores, migration_id, reopen)
    if not run.planned:
        # The planning task may have run while the run was paused, or not at all yet.
        tasks.append(ChunkTask.planning(migration_id, int(clock.now().timestamp())))
    enqueue_all(dispatcher, tasks, settings.enqueue_workers)
    cloud_tasks.arm_watchdog(settings, dispatcher, migration_id)
    return _steered(stores, migration_id, moved, len(tasks))


def stop_chunks(settings: Settings, stores: Stores, migration_id: str,
                target: ChunkState, note: str) -> int:
    """Move every chunk of the run that may move to ``target``; answer how many moved."""
    sources = [state for state in ChunkState
               if state is not target and lifecycle.chunk_can_move(state, target)]
    chunks = stores.chunks.chunks(migration_id, sources)

    def stop(chunk: ChunkRecord) -> bool:
        return stores.chunks.move(migration_id, chunk.chunk_id, target, note) is not None

    with ThreadPoolExecutor(max_workers=settings.enqueue_workers) as pool:
        moved = sum(pool.map(stop, chunks))
    logs.log(logger, "chunks stopped", migration_id=migration_id, status=target.value,
             chunks=moved)
    return moved


def _reopen_chunks(settings: Settings, stores: Stores, migration_id: str,
                   sources: list[ChunkState]) -> list[ChunkTask]:
    """Move chunks back to ``pending`` under a new segment; answer the tasks to enqueue."""
    chunks = stores.chunks.chunks(migration_id, sources)

    def reopen(chunk: ChunkRecord) -> ChunkTask | None:
        moved = stores.chunks.move(migration_id, chunk.chunk_id, ChunkState.PENDING, "",
                                   new_segment=True, lease_until=lifecycle.lease_until(settings))
        return None if moved is None else ChunkTask(migration_id, chunk.chunk_id, moved)

    with ThreadPoolExecutor(max_workers=settings.enqueue_workers) as pool:
        return [task for task in pool.map(reopen, chunks) if task is not None]


def throttle(settings: Settings, stores: Stores, migration_id: str, by: str,
             limit: int | None, note: str = "") -> dict[str, Any]:
    """Set an active run's ceiling in events per second (None lifts it; the ramp still holds).
    Its deliveries take the new ceiling within a few seconds (``shared.domain.throttle``)."""
    before = stores.runs.throttle(migration_id, limit, by, note)
    run = stores.runs.get(migration_id) or before
    logs.log(logger, "run throttled", migration_id=migration_id, caller=by,
             previous=before.max_events_per_second, limit=limit)
    return {"migrationId": migration_id, "status": run.status.value,
            "maxEventsPerSecond": limit, "previousMaxEventsPerSecond":
            before.max_events_per_second,
            "ceiling": throttling.ceiling(settings, run, clock.now())}


def _steered(stores: Stores, migration_id: str, moved: RunRecord | None,
             chunks: int) -> Steered:
    run = stores.runs.get(migration_id)
    status = run.status.value if run is not None else ""
    previous = moved.status.value if moved is not None else status
    return Steered(migration_id, status, previous, chunks, moved is not None)
