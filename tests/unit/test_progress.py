"""The status answer on in-memory stores: counts summed from the chunks, percent, pace and
stalls judged at a given time, the runs list newest first. tests/functions and tests/emulator
read the same answers over HTTP from Firestore."""

from __future__ import annotations

import datetime as dt

import pytest

from shared import progress
from shared.errors import InvalidRequest
from shared.models import ChunkState, RunStatus
from tests.fakes import NOW, MemoryErrors, memory_stores
from tests.unit.test_run_control import settings

EARLIER = NOW - dt.timedelta(minutes=10)


def test_a_run_sums_its_chunks_and_names_the_chunk_whose_lease_ran_out() -> None:
    stores, runs, chunks = memory_stores()
    runs.add("run_1", RunStatus.RUNNING, total=30, eligible=40, started_at=EARLIER)
    chunks.add("run_1", "2025-01-01", ChunkState.COMPLETED, index=0,
               counters={"taken": 10, "applied": 8, "errors": 2, "points": 800},
               below_zero=["cus_2"])
    chunks.add("run_1", "2025-01-02", ChunkState.RUNNING, index=1, counters={"taken": 5,
               "applied": 5}, lease_until=NOW - dt.timedelta(seconds=1), updated_at=EARLIER)
    chunks.add("run_1", "2025-01-03", ChunkState.PENDING, index=2,
               lease_until=NOW + dt.timedelta(minutes=1))
    errors = stores.errors
    assert isinstance(errors, MemoryErrors)
    errors.add("run_1", "evt_1", "product_not_found")
    errors.add("run_1", "evt_2", "product_not_found")

    status = progress.describe_run(settings(first_errors_shown=1), stores, "run_1", now=NOW)

    assert (status["taken"], status["applied"], status["errors"], status["pointsMoved"]) == (
        15, 13, 2, 800)
    assert status["percent"] == 50.0
    assert status["leftForLaterRun"] == 10
    assert status["walletsBelowZero"] == {"count": 1, "customerIds": ["cus_2"]}
    assert status["chunkStates"] == {"completed": 1, "running": 1, "pending": 1}
    assert [chunk["chunkId"] for chunk in status["chunks"]] == [
        "2025-01-01", "2025-01-02", "2025-01-03"]
    assert status["stalled"] is True
    assert status["stalledChunks"] == ["2025-01-02"]
    assert status["averageRate"] == round(15 / 600, 1)
    assert status["errorCodes"] == {"product_not_found": 2}
    assert [error["eventId"] for error in status["firstErrors"]] == ["evt_1"]
    assert status["note"].startswith("maxEvents bounded this run: 10")


def test_an_ended_run_is_never_stalled_and_the_list_is_newest_first() -> None:
    stores, runs, chunks = memory_stores()
    runs.add("old_1", RunStatus.COMPLETED, created_at=EARLIER, total=0)
    runs.add("new_1", RunStatus.CANCELLED, created_at=NOW, total=0)
    chunks.add("new_1", "2025-01-01", ChunkState.CANCELLED, lease_until=EARLIER)

    status = progress.describe_run(settings(), stores, "new_1", now=NOW)
    listed = progress.list_runs(stores, limit=5)
    cancelled = progress.list_runs(stores, limit=5, status="cancelled")

    assert status["stalled"] is False
    assert status["stalledChunks"] == []
    assert [run["migrationId"] for run in listed] == ["new_1", "old_1"]
    assert [run["migrationId"] for run in cancelled] == ["new_1"]
    with pytest.raises(InvalidRequest, match="limit"):
        progress.list_runs(stores, limit=0)
    with pytest.raises(InvalidRequest, match="status"):
        progress.list_runs(stores, status="lost")
