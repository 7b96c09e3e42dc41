"""A run's completion and its counts: the run ends (completed or failed) when its last chunk
ends; its counts are the sums of its chunks' counters (the chunks are the counter shards).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from shared import logs
from shared.models import FINAL_CHUNK_STATES, ChunkState, RunStatus
from shared.records import COUNTERS, ChunkRecord
from shared.stores import Stores

logger = logging.getLogger(__name__)

# Chunks that have not ended: open ones, and paused ones that resume will reopen.
NOT_ENDED = [state for state in ChunkState if state not in FINAL_CHUNK_STATES]


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
