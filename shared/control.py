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
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared import lifecycle, logs, runs, store
from shared.config import Settings
from shared.dispatch import ChunkTask, Dispatcher, enqueue_all
from shared.errors import BackfillDisabled, Conflict, NotFound
from shared.models import ChunkState, RunStatus

logger = logging.getLogger(__name__)

KILL_SWITCH = "BACKFILL_ENABLED=false: paused by the kill switch; resume once it is back on"


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


def pause(settings: Settings, db: firestore.Client, migration_id: str, by: str,
          note: str = "", detail: str = "") -> Steered:
    """Pause a pending or running run; repeating it on a paused run moves any chunk a crashed
    earlier call left open."""
    moved = runs.move_run(db, migration_id, RunStatus.PAUSED, by=by, note=note, detail=detail)
    chunks = stop_chunks(settings, db, migration_id, ChunkState.PAUSED,
                         detail or "its run was paused")
    # A chunk that ended while the pause was on its way may have been the last open one.
    runs.finish_if_done(db, migration_id)
    return _steered(db, migration_id, moved, chunks)


def cancel(settings: Settings, db: firestore.Client, migration_id: str, by: str,
           note: str = "") -> Steered:
    """Cancel a pending, running or paused run: its chunks stop at their next page for good."""
    moved = runs.move_run(db, migration_id, RunStatus.CANCELLED, by=by, note=note)
    chunks = stop_chunks(settings, db, migration_id, ChunkState.CANCELLED,
                         "its run was cancelled")
    return _steered(db, migration_id, moved, chunks)


def halt(settings: Settings, db: firestore.Client, migration_id: str, reason: str) -> bool:
    """Stop a run as ``failed`` with ``reason`` (the circuit breaker); False if it had ended."""
    moved = runs.move_run(db, migration_id, RunStatus.FAILED, detail=reason,
                          fields={"failureReason": reason}, strict=False)
    if moved is None:
        return False
    stop_chunks(settings, db, migration_id, ChunkState.CANCELLED, f"its run stopped: {reason}")
    return True


def kill_switch(settings: Settings, db: firestore.Client, migration_id: str) -> str:
    """Pause a run because the bundle is switched off, instead of failing its tasks."""
    try:
        pause(settings, db, migration_id, by="", detail=KILL_SWITCH)
    except NotFound:
        return "no such run"
    except Conflict:
        return "the run has ended; nothing to pause"
    return "paused by the kill switch"


def resume(settings: Settings, db: firestore.Client, dispatcher: Dispatcher,
           migration_id: str, by: str, note: str = "") -> Steered:
    """Resume a paused run from its chunks' cursors; on a pending or running run, reopen any
    chunk left paused (a no-op otherwise). Refused while the kill switch is off."""
    if not settings.enabled:
        raise BackfillDisabled("backfills are switched off (BACKFILL_ENABLED=false); switch "
                               "them on before resuming")
    snap = store.run_ref(db, migration_id).get()
    if not snap.exists:
        raise NotFound(f"no run {migration_id}")
    run = snap.to_dict() or {}
    target = RunStatus.RUNNING if run.get("startedAt") is not None else RunStatus.PENDING
    if run["status"] in (RunStatus.PENDING.value, RunStatus.RUNNING.value):
        target = RunStatus(run["status"])
    moved = runs.move_run(db, migration_id, target, by=by, note=note)
    # Chunks planned while the run was paused never got a task: reopen them too.
    reopen = [ChunkState.PAUSED] + ([ChunkState.PENDING] if moved is not None else [])
    tasks = _reopen_chunks(settings, db, migration_id, reopen)
    if not run.get("planned"):
        # The planning task may have run while the run was paused, or not at all yet.
        tasks.append(ChunkTask(migration_id, runs.PLAN_CHUNK, int(time.time())))
    enqueue_all(dispatcher, tasks, settings.enqueue_workers)
    runs.arm_watchdog(settings, dispatcher, migration_id)
    return _steered(db, migration_id, moved, len(tasks))


def stop_chunks(settings: Settings, db: firestore.Client, migration_id: str,
                target: ChunkState, note: str) -> int:
    """Move every chunk of the run that may move to ``target``; answer how many moved."""
    sources = [state.value for state in ChunkState
               if state is not target and lifecycle.chunk_can_move(state, target)]
    chunks = store.run_ref(db, migration_id).collection(store.CHUNKS).where(
        filter=FieldFilter("state", "in", sources)).stream()
    refs = [chunk.reference for chunk in chunks]

    def stop(ref: firestore.DocumentReference) -> bool:
        return move_chunk(db, ref, target, note) is not None

    with ThreadPoolExecutor(max_workers=settings.enqueue_workers) as pool:
        moved = sum(pool.map(stop, refs))
    logs.log(logger, "chunks stopped", migration_id=migration_id, status=target.value,
             chunks=moved)
    return moved


def _reopen_chunks(settings: Settings, db: firestore.Client, migration_id: str,
                   sources: list[ChunkState]) -> list[ChunkTask]:
    """Move chunks back to ``pending`` under a new segment; answer the tasks to enqueue."""
    chunks = store.run_ref(db, migration_id).collection(store.CHUNKS).where(
        filter=FieldFilter("state", "in", [state.value for state in sources])).stream()
    refs = [chunk.reference for chunk in chunks]

    def reopen(ref: firestore.DocumentReference) -> ChunkTask | None:
        moved = move_chunk(db, ref, ChunkState.PENDING, "",
                           {"leaseUntil": runs.lease_until(settings)}, new_segment=True)
        return None if moved is None else ChunkTask(migration_id, ref.id, moved)

    with ThreadPoolExecutor(max_workers=settings.enqueue_workers) as pool:
        return [task for task in pool.map(reopen, refs) if task is not None]


def move_chunk(db: firestore.Client, ref: firestore.DocumentReference, target: ChunkState,
               note: str, fields: dict[str, Any] | None = None, new_segment: bool = False,
               read: Any = None) -> int | None:
    """Move a chunk to ``target`` (released, with ``note`` saying why, and ``fields``) if the
    table allows it, under the update time read; answer its segment after the write, or None if
    it may not move (any more).

    With ``read`` the move happens only if the chunk is still as read (one attempt); without,
    it is read again after each conflicting page commit until the write wins.
    """
    def decide(snap: Any) -> store.Write[int | None] | store.Done[int | None]:
        if not snap.exists:
            return store.Done(None)
        state = str(snap.get("state"))
        if state == target.value and not new_segment:
            return store.Done(None)
        if not lifecycle.chunk_can_move(state, target):
            return store.Done(None)
        segment = int(snap.get("segment")) + (1 if new_segment else 0)
        return store.Write({"state": target.value, "leaseOwner": None, "note": note,
                            "stateChangedAt": firestore.SERVER_TIMESTAMP, **(fields or {}),
                            "segment": segment}, lambda _: segment)

    # A conflict is a page committed meanwhile: read again, the next write wins.
    return store.compare_and_set(db, ref, decide, attempts=1 if read is not None else 20,
                                 what="a chunk being stopped", read=read,
                                 give_up=(lambda: None) if read is not None else None)


def _steered(db: firestore.Client, migration_id: str, moved: dict[str, Any] | None,
             chunks: int) -> Steered:
    status = str(store.run_ref(db, migration_id).get().get("status"))
    previous = str(moved["status"]) if moved is not None else status
    return Steered(migration_id, status, previous, chunks, moved is not None)
