"""Run statuses and chunk states: every allowed move, each with its reason, in one place.

Every writer of a status or state asks this module first (``run_move``, ``chunk_move``) and
writes under the update time it read, so a move the tables do not list can never be written,
and two writers racing cannot both move from the same status::

    run:   pending --> running --> completed | failed
              |  \\        |  ^
              |   \\       v  |
              |    `--> paused --> cancelled (and pending/running --> cancelled)
              `<--> awaiting_approval --> cancelled (a large live run, until approved)

    chunk: pending --> running --> completed | failed
              ^  |        |  \\
              |  v        v   `--> pending (lease expired, no task: picked up from its cursor)
              `- paused <-'  ; pending/running/paused --> cancelled
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping

from shared import clock
from shared.config import Settings
from shared.domain.records import ChunkRecord, RunRecord
from shared.errors import Conflict
from shared.models import FINAL_RUN_STATUSES, OPEN_CHUNK_STATES, ChunkState, RunStatus

R = RunStatus
C = ChunkState

RUN_MOVES: Mapping[tuple[RunStatus, RunStatus], str] = {
    (R.PENDING, R.RUNNING): "its first chunk started",
    (R.PENDING, R.COMPLETED): "planning found no event to take",
    (R.PENDING, R.FAILED): "planning failed for good",
    (R.PENDING, R.PAUSED): "paused before it started",
    (R.PENDING, R.CANCELLED): "cancelled before it started",
    (R.PENDING, R.AWAITING_APPROVAL): "planned above the approval threshold: no chunk runs "
                                      "until another approver approves it",
    (R.AWAITING_APPROVAL, R.PENDING): "approved; its chunks are enqueued",
    (R.AWAITING_APPROVAL, R.CANCELLED): "cancelled while awaiting approval",
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


@dataclasses.dataclass(frozen=True)
class RunMove:
    """A run's status move, as decided on the run read: from, to, why, and whether the run
    starts (``startedAt``) or finishes (``finishedAt``) with it."""

    previous: RunStatus
    target: RunStatus
    reason: str
    starts: bool
    finishes: bool


def plan_run_move(run: RunRecord, target: RunStatus, *, detail: str = "",
                  only_from: RunStatus | None = None, strict: bool = True) -> RunMove | None:
    """The move of ``run`` to ``target``, or None when nothing moves: it has ``target``
    already, is not in ``only_from``, or (``strict=False``) the table has no such move. With
    ``strict``, a move the table refuses raises ``Conflict``. ``detail`` replaces the table's
    reason (the system's own words: the breaker's numbers, the kill switch)."""
    if run.status is target or (only_from is not None and run.status is not only_from):
        return None
    if not strict and not run_can_move(run.status, target):
        return None
    reason = detail or run_move(run.status, target)
    final = target in FINAL_RUN_STATUSES
    return RunMove(run.status, target, reason,
                   starts=run.started_at is None and (final or target is RunStatus.RUNNING),
                   finishes=final)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a delivery may not claim its chunk: ``result`` idle (no such chunk, or it is not
    open) or stale (the chunk moved on to ``segment``, whose task must exist)."""

    result: str
    detail: str
    segment: int | None = None


def plan_claim(chunk: ChunkRecord | None, segment: int) -> Refusal | None:
    """Whether a delivery of the chunk's task ``segment`` may claim it (None: it may; the
    latest delivery of the current segment takes over a chunk another delivery holds)."""
    if chunk is None:
        return Refusal("idle", "no such chunk")
    if chunk.state not in OPEN_CHUNK_STATES:
        return Refusal("idle", f"the chunk is {chunk.state.value}")
    if segment != chunk.segment:
        return Refusal("stale", f"the chunk is at segment {chunk.segment}", chunk.segment)
    chunk_move(chunk.state, ChunkState.RUNNING)
    return None


def plan_chunk_move(chunk: ChunkRecord, target: ChunkState, new_segment: bool) -> int | None:
    """The chunk's segment after a move to ``target`` (one more with ``new_segment``: tasks of
    the old one find themselves stale), or None when it may not move (any more)."""
    if chunk.state is target and not new_segment:
        return None
    if not chunk_can_move(chunk.state, target):
        return None
    return chunk.segment + (1 if new_segment else 0)


def lease_until(settings: Settings, now: dt.datetime | None = None) -> dt.datetime:
    """When a chunk claimed or checkpointed ``now`` counts as abandoned (see ``watchdog``)."""
    return (now or clock.now()) + dt.timedelta(seconds=settings.lease_seconds)
