"""Run statuses and chunk states: every allowed move, each with its reason, in one place.

Every writer of a status or state asks this module first (``run_move``, ``chunk_move``) and
writes under the update time it read, so a move the tables do not list can never be written,
and two writers racing cannot both move from the same status::

    run:   pending --> running --> completed | failed
              |  \\        |  ^
              |   \\       v  |
              |    `--> paused --> cancelled (and pending/running --> cancelled)

    chunk: pending --> running --> completed | failed
              ^  |        |  \\
              |  v        v   `--> pending (lease expired, no task: picked up from its cursor)
              `- paused <-'  ; pending/running/paused --> cancelled
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.errors import Conflict
from shared.models import ChunkState, RunStatus

R = RunStatus
C = ChunkState

RUN_MOVES: Mapping[tuple[RunStatus, RunStatus], str] = {
    (R.PENDING, R.RUNNING): "its first chunk started",
    (R.PENDING, R.COMPLETED): "planning found no event to take",
    (R.PENDING, R.FAILED): "planning failed for good",
    (R.PENDING, R.PAUSED): "paused before it started",
    (R.PENDING, R.CANCELLED): "cancelled before it started",
    (R.RUNNING, R.PAUSED): "paused; its chunks stop at their next page and keep their cursors",
    (R.RUNNING, R.CANCELLED): "cancelled; its chunks stop at their next page",
    (R.RUNNING, R.COMPLETED): "its last chunk ended",
    (R.RUNNING, R.FAILED): "a chunk failed for good, or the circuit breaker tripped",
    (R.PAUSED, R.RUNNING): "resumed; its chunks continue from their cursors",
    (R.PAUSED, R.PENDING): "resumed before any chunk had started",
    (R.PAUSED, R.CANCELLED): "cancelled while paused",
    (R.PAUSED, R.COMPLETED): "its last chunks ended before the pause reached them",
    (R.PAUSED, R.FAILED): "a chunk failed for good before the pause reached it",
}

CHUNK_MOVES: Mapping[tuple[ChunkState, ChunkState], str] = {
    (C.PENDING, C.RUNNING): "a delivery claimed it",
    (C.RUNNING, C.RUNNING): "a newer delivery took it over",
    (C.PENDING, C.PENDING): "its task was lost; enqueued again at its cursor",
    (C.RUNNING, C.PENDING): "its lease expired with no task queued; picked up again at its cursor",
    (C.RUNNING, C.COMPLETED): "its last page was applied",
    (C.PENDING, C.FAILED): "its task gave up on its last attempt",
    (C.RUNNING, C.FAILED): "its task gave up on its last attempt",
    (C.PENDING, C.PAUSED): "its run was paused",
    (C.RUNNING, C.PAUSED): "its run was paused",
    (C.PAUSED, C.PENDING): "its run was resumed",
    (C.PENDING, C.CANCELLED): "its run was cancelled or stopped",
    (C.RUNNING, C.CANCELLED): "its run was cancelled or stopped",
    (C.PAUSED, C.CANCELLED): "its run was cancelled or stopped",
}


def run_move(current: str, target: RunStatus) -> str:
    """The reason for moving a run from ``current`` to ``target``; ``Conflict`` if not allowed."""
    reason = RUN_MOVES.get((RunStatus(current), target))
    if reason is None:
        allowed = sorted(str(to) for (frm, to) in RUN_MOVES if frm == current)
        raise Conflict(f"the run is {current}; it cannot become {target.value} "
                       f"(from {current}: {', '.join(allowed) or 'no move, it is final'})")
    return reason


def run_can_move(current: str, target: RunStatus) -> bool:
    return (RunStatus(current), target) in RUN_MOVES


def chunk_move(current: str, target: ChunkState) -> str:
    """The reason for moving a chunk from ``current`` to ``target``; ``Conflict`` otherwise."""
    reason = CHUNK_MOVES.get((ChunkState(current), target))
    if reason is None:
        raise Conflict(f"the chunk is {current}; it cannot become {target.value}")
    return reason


def chunk_can_move(current: str, target: ChunkState) -> bool:
    return (ChunkState(current), target) in CHUNK_MOVES
