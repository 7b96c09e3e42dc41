"""A run's watchdog: picks up chunks whose handler died without anyone left to retry them.

Cloud Tasks retries a delivery that fails, so a handler that dies mid-chunk is normally retried
from the chunk's cursor. The watchdog covers what that cannot: a task dropped after its last
attempt while its handler was dying, a continuation that was never enqueued, a planning task
lost. While its run is active, one watchdog task per lease (``BACKFILL_LEASE_SECONDS``) looks
for open chunks whose lease ran out (no claim or checkpoint for that long) and whose current
task no longer exists in the queue; each is moved back to ``pending`` under a new segment and
enqueued again, so it continues from its cursor. A delivery of an older segment that was only
slow, not dead, cannot commit any more: the move changed the chunk's update time.

The watchdog task lives on the chunk queue and can be lost with it; ``sweep``, called by Cloud
Scheduler every few minutes, runs a watchdog round for every active run and re-arms its
watchdog, so a run recovers without an operator whatever the queue lost.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from typing import Any

from shared import clock, logs
from shared.adapters import cloud_tasks
from shared.adapters.cloud_tasks import ChunkTask, Dispatcher, enqueue_all
from shared.adapters.stores import Stores, still_active
from shared.config import Settings
from shared.domain import lifecycle
from shared.models import FINAL_RUN_STATUSES, OPEN_CHUNK_STATES, ChunkState, RunStatus

logger = logging.getLogger(__name__)

PICKED_UP = "its lease expired and no task was queued for it; picked up again at its cursor"


def watch(settings: Settings, stores: Stores, dispatcher: Dispatcher,
          migration_id: str, now: dt.datetime | None = None) -> str:
    """One watchdog round: pick up lost chunks, then arm the next round if the run is active.
    (With the kill switch off, callers pause the run instead: ``control.kill_switch``.)"""
    return _watch(settings, stores, dispatcher, migration_id, now)[0]


def rescue(settings: Settings, stores: Stores, dispatcher: Dispatcher,
           migration_id: str, now: dt.datetime | None = None) -> str:
    """A watchdog round from outside the run's watchdog chain (the sweep, a status read of a
    stalled run): it also arms the watchdog again if it was lost."""
    return _watch(settings, stores, dispatcher, migration_id, now, outside=True)[0]


def _watch(settings: Settings, stores: Stores, dispatcher: Dispatcher,
           migration_id: str, now: dt.datetime | None = None,
           outside: bool = False) -> tuple[str, int]:
    """``watch`` (``outside`` its chain: ``rescue``), answering also how many tasks it enqueued
    for lost work."""
    now = now or clock.now()
    run = stores.runs.get(migration_id)
    if run is None:
        return "no such run", 0
    if run.status in FINAL_RUN_STATUSES:
        return f"the run is {run.status.value}; the watchdog stops", 0
    if run.status is RunStatus.PAUSED:
        return "the run is paused; resuming it arms a new watchdog", 0
    if run.status is RunStatus.AWAITING_APPROVAL:
        return "the run awaits approval; approving it arms a new watchdog", 0
    tasks: list[ChunkTask] = []
    if not run.planned:
        # A run waiting for others has its own planning task polling; a second poll chain would
        # only add load. Once they have ended, a lost planning task is enqueued again.
        waiting = still_active(stores.runs, run.waiting_for)
        if not waiting and lifecycle.lease_until(settings, run.created_at) < now:
            # Planning is idempotent: a second planning task is harmless, a lost one is not.
            tasks.append(ChunkTask.planning(migration_id,
                                   int(clock.now().timestamp())))
    else:
        tasks = _lost_chunks(settings, stores, dispatcher, migration_id, now)
        if not run.dry_run and run.status is RunStatus.RUNNING:
            check_error_rate(settings, stores, migration_id)
    enqueue_all(dispatcher, tasks, settings.enqueue_workers)
    if outside:
        cloud_tasks.ensure_watchdog(settings, dispatcher, migration_id)
    else:
        cloud_tasks.arm_watchdog(settings, dispatcher, migration_id)
    if tasks:
        logs.log(logger, "watchdog picked up lost work", logging.WARNING,
                 migration_id=migration_id, chunks=len(tasks), reason=PICKED_UP)
    return f"{len(tasks)} task(s) picked up again", len(tasks)


@dataclasses.dataclass(frozen=True)
class Swept:
    """What one sweep did: each active run's watchdog round, and the tasks it enqueued."""

    rounds: dict[str, str]
    picked_up: int

    def body(self) -> dict[str, Any]:
        return {"runs": len(self.rounds), "pickedUp": self.picked_up, "rounds": self.rounds}


def sweep(settings: Settings, stores: Stores, dispatcher: Dispatcher,
          now: dt.datetime | None = None) -> Swept:
    """The durable safety net, called by Cloud Scheduler every few minutes: one watchdog round
    for every pending or running run.

    A run's watchdog is itself a task on the chunk queue, so it can be lost the way chunk tasks
    are (the queue dropped it after its last attempt while the chunk function was down, or the
    queue itself was lost), and then nothing would ever look at the run again. The sweep does
    not depend on that queue: it picks up what the lost watchdog would have, and arms it again.
    Paused runs are left alone (resume arms their watchdog). Safe to repeat: a round enqueues
    only tasks whose chunk has no task, under deterministic names.
    """
    rounds: dict[str, str] = {}
    picked_up = 0
    for run in stores.runs.active():
        rounds[run.migration_id], picked = _watch(settings, stores, dispatcher,
                                                  run.migration_id, now, outside=True)
        picked_up += picked
    if picked_up:
        logs.log(logger, "sweep picked up lost work", logging.WARNING, runs=len(rounds),
                 chunks=picked_up)
    else:
        logs.log(logger, "sweep done", runs=len(rounds))
    return Swept(rounds, picked_up)


def check_error_rate(settings: Settings, stores: Stores, migration_id: str) -> None:
    """Announce a live run whose share of failed events passed ``alert_error_rate`` while it
    runs (once a run: its notice's key), and log it every round it is above (the alert)."""
    counts = stores.chunks.totals(migration_id, ("taken", "errors"))
    taken, errors = counts["taken"], counts["errors"]
    if taken < settings.alert_min_events or errors / taken <= settings.alert_error_rate:
        return
    rate = round(errors / taken, 4)
    logs.log(logger, "run error rate high", logging.WARNING, migration_id=migration_id,
             errors=errors, processed=taken, error_rate=rate)
    stores.runs.notify(migration_id, "error_rate", {
        "status": "error_rate", "reason": f"{errors} of {taken} events failed so far "
                                          f"({rate:.1%}, above {settings.alert_error_rate:.1%})"})


def _lost_chunks(settings: Settings, stores: Stores, dispatcher: Dispatcher,
                 migration_id: str, now: dt.datetime) -> list[ChunkTask]:
    lost: list[ChunkTask] = []
    expired = stores.chunks.expired(migration_id, OPEN_CHUNK_STATES, now)
    if expired:
        # One notice per stall: the chunks and segments that stopped name it, so a repeat of
        # this round makes none, and a chunk that stalls again after its pickup makes another.
        stopped = sorted(f"{chunk.chunk_id}:{chunk.segment}" for chunk in expired)
        key = hashlib.sha256(",".join(stopped).encode()).hexdigest()[:12]
        shown = ", ".join(chunk.chunk_id for chunk in expired[:5]) + (
            f" and {len(expired) - 5} more" if len(expired) > 5 else "")
        logs.log(logger, "run stalled", logging.WARNING, migration_id=migration_id,
                 chunks=len(expired))
        stores.runs.notify(migration_id, f"stalled-{key}", {
            "status": "stalled", "reason": f"{len(expired)} chunk(s) made no progress for a "
                                           f"lease ({shown}); the watchdog looks at them"})
    for chunk in expired:
        current = ChunkTask(migration_id, chunk.chunk_id, chunk.segment)
        if dispatcher.exists(current):
            continue  # queued, backing off or in flight: Cloud Tasks will deliver it
        segment = stores.chunks.move(migration_id, chunk.chunk_id, ChunkState.PENDING,
                                     PICKED_UP, new_segment=True,
                                     lease_until=lifecycle.lease_until(settings, now),
                                     picked_up=True, read=chunk)
        if segment is not None:
            lost.append(ChunkTask(migration_id, chunk.chunk_id, segment))
    return lost
