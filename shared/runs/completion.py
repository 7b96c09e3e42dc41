"""A run's completion and its counts: the run ends (completed or failed) when its last chunk
ends; its counts are the sums of its chunks' counters (the chunks are the counter shards).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from shared import clock, logs
from shared.adapters.stores import Stores
from shared.domain.records import COUNTERS, ChunkRecord, RunRecord
from shared.models import FINAL_CHUNK_STATES, ChunkState, RunStatus

logger = logging.getLogger(__name__)

# The message of the run-summary line (Terraform's var.summary_log_message).
SUMMARY_MESSAGE = "run summary"
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
    if moved is not None:
        log_summary(stores, moved, status, reason, summary)
    return moved is not None


def log_summary(stores: Stores, run: RunRecord, status: RunStatus, reason: str,
                summary: dict[str, Any] | None = None) -> None:
    """The run's one summary line, written once as it ends (whatever ends it): what the
    log-based metrics ``backfill_processed_events``, ``backfill_error_rate`` and
    ``backfill_operation_duration`` read (``infra/monitoring.tf``). ``run`` is the run as it was
    before it ended; ``summary`` its counts, if the caller summed them already."""
    counts = summary if summary is not None else summarize(
        stores.chunks.chunks(run.migration_id))
    taken, errors = int(counts["taken"]), int(counts["errors"])
    began = run.started_at or run.created_at
    logs.log(logger, SUMMARY_MESSAGE, logging.ERROR if status is RunStatus.FAILED
             else logging.INFO, migration_id=run.migration_id, type=run.type,
             status=status.value, reason=reason, start_date=run.start_date.isoformat(),
             end_date=run.end_date.isoformat(), dry_run=run.dry_run, event_count=taken,
             total=run.total if run.total is not None else taken,
             processed=int(counts["processed"]), applied=int(counts["applied"]),
             duplicates=int(counts["duplicates"]), skipped=int(counts["skipped"]),
             errors=errors, error_rate=round(errors / taken, 6) if taken else 0.0,
             duration_ms=max(0, int((clock.now() - began).total_seconds() * 1000)))


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


def tallies(chunks: Iterable[ChunkRecord]) -> dict[str, dict[str, int]]:
    """A run's tallies by day and event type: the sums of its chunks', days in order."""
    sums: dict[str, dict[str, int]] = {}
    for chunk in chunks:
        for day, by_type in chunk.tallies.items():
            day_sums = sums.setdefault(day, {})
            for event_type, count in by_type.items():
                day_sums[event_type] = day_sums.get(event_type, 0) + int(count)
    return dict(sorted(sums.items()))


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
