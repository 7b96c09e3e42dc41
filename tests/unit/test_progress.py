"""The status answer on in-memory stores: counts summed from the chunks, percent, pace and
stalls judged at a given time, the runs list newest first. tests/functions and tests/emulator
read the same answers over HTTP from Firestore."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.adapters.stores import Stores
from shared.errors import InvalidRequest
from shared.models import ChunkState, RunStatus
from shared.runs import progress
from tests.fakes import NOW, MemoryErrors, memory_stores
from tests.unit.test_run_control import settings

EARLIER = NOW - dt.timedelta(minutes=10)


def test_a_run_sums_its_chunks_and_names_the_chunk_whose_lease_ran_out() -> None:
    stores, runs, chunks = memory_stores()
    runs.add("run_1", RunStatus.RUNNING, total=30, eligible=40, started_at=EARLIER)
    chunks.add("run_1", "2025-01-01", ChunkState.COMPLETED, index=0,
               counters={"taken": 10, "applied": 8, "errors": 2, "points": 800},
               below_zero=["cus_2"], notable=True, error_codes={"product_not_found": 2})
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


def test_a_recent_sample_too_short_to_tell_gives_no_rate() -> None:
    # A delivery claimed 10 s ago took its first page of 100 at once: that burst is no pace.
    assert progress.recent_rate([(100, 10.0)]) is None
    assert progress.recent_rate([]) is None


def test_a_recent_rate_spreads_a_just_claimed_chunks_burst_over_the_minimum_window() -> None:
    recent = progress.recent_rate([(1200, 120.0), (100, 0.2)])

    assert recent == pytest.approx(1200 / 120 + 100 / progress.MIN_SAMPLE_SECONDS)


def test_a_rate_is_never_shown_above_the_ceiling_even_by_rounding() -> None:
    assert progress.bounded(575.6, 8.0) == 8.0
    assert progress.bounded(7.44, 8.0) == 7.4
    assert progress.bounded(575.6, None) == 575.6
    ramp = 500 / 3  # the ramp's first step: 166.66... events/s
    assert progress.bounded(500.0, ramp) == 166.6 <= ramp


def test_an_eta_is_rounded_up_and_unknown_without_a_rate() -> None:
    assert progress.eta_seconds(1887, 8.0) == 236  # 235.875 s: never sooner than allowed
    assert progress.eta_seconds(-3, 8.0) == 0
    assert progress.eta_seconds(1887, 0.0) is None


def throttled_run_mid_burst(limit: int | None = 8) -> tuple[Stores, str]:
    """The issue's run: 8 events/s allowed, 16.2 on average over its 100 s, 1,887 to go, and
    one chunk claimed 10 s ago whose first page of 100 took 0.17 s (575.6 events/s)."""
    stores, runs, chunks = memory_stores()
    runs.add("run_1", RunStatus.RUNNING, total=1620 + 1887,
             started_at=NOW - dt.timedelta(seconds=100), max_events_per_second=limit)
    claimed = NOW - dt.timedelta(seconds=10)
    chunks.add("run_1", "2025-01-01", ChunkState.COMPLETED, counters={"taken": 1000})
    chunks.add("run_1", "2025-01-02", ChunkState.RUNNING, counters={"taken": 620},
               taken_at_claim=520, claimed_at=claimed,
               updated_at=claimed + dt.timedelta(seconds=100 / 575.6),
               lease_until=NOW + dt.timedelta(minutes=10))
    return stores, "run_1"


def test_a_throttled_runs_rate_and_eta_keep_to_its_ceiling_through_a_burst() -> None:
    stores, migration_id = throttled_run_mid_burst()

    status = progress.describe_run(settings(), stores, migration_id, now=NOW)

    assert status["ceiling"] == 8.0
    assert status["averageRate"] == 16.2  # as measured: the first pages came at once
    assert status["rate"] == 8.0
    assert status["etaSeconds"] == 236 >= 1887 / 8


def test_an_unthrottled_run_shows_its_average_while_the_sample_is_short() -> None:
    stores, migration_id = throttled_run_mid_burst(limit=None)

    status = progress.describe_run(settings(ramp_start_writes=0), stores, migration_id,
                                   now=NOW)

    assert status["ceiling"] is None
    assert status["rate"] == status["averageRate"] == 16.2
    assert status["etaSeconds"] == 117  # 1887 / 16.2 = 116.5, rounded up


def test_a_long_enough_sample_is_the_rate_of_the_deliveries_working_now() -> None:
    stores, runs, chunks = memory_stores()
    runs.add("run_1", RunStatus.RUNNING, total=2000,
             started_at=NOW - dt.timedelta(minutes=10), max_events_per_second=8)
    chunks.add("run_1", "2025-01-01", ChunkState.RUNNING, counters={"taken": 1000},
               taken_at_claim=400, claimed_at=NOW - dt.timedelta(minutes=2),
               updated_at=NOW - dt.timedelta(seconds=30),
               lease_until=NOW + dt.timedelta(minutes=10))

    status = progress.describe_run(settings(), stores, "run_1", now=NOW)

    # 600 events over the 120 s since the claim (not the 90 s until its last checkpoint).
    assert status["rate"] == 5.0 and status["etaSeconds"] == 200
    runs.records["run_1"] = runs.records["run_1"].model_copy(
        update={"max_events_per_second": 2})
    assert progress.describe_run(settings(), stores, "run_1", now=NOW)["rate"] == 2.0


def test_the_runs_list_bounds_an_active_runs_rate_and_eta_by_its_ceiling() -> None:
    stores, migration_id = throttled_run_mid_burst()

    [run] = progress.overview(stores, now=NOW)
    [ramped] = progress.overview(stores, now=NOW, settings=settings())

    assert run["migrationId"] == migration_id
    assert (run["rate"], run["etaSeconds"]) == (8.0, 236)
    assert (ramped["rate"], ramped["etaSeconds"]) == (8.0, 236)


def test_the_chunk_grid_pages_in_planning_order_and_refuses_a_page_out_of_range() -> None:
    stores, runs, chunks = memory_stores()
    runs.add("run_1", RunStatus.RUNNING, total=0, started_at=EARLIER)
    for index in range(5):
        chunks.add("run_1", f"2025-01-0{index + 1}", ChunkState.PENDING, index=index,
                   lease_until=NOW + dt.timedelta(minutes=1))

    first = progress.describe_run(settings(), stores, "run_1", now=NOW, chunks_per_page=2)
    middle = progress.describe_run(settings(), stores, "run_1", now=NOW, chunks_from=2,
                                   chunks_per_page=2)
    last = progress.describe_run(settings(), stores, "run_1", now=NOW, chunks_from=4,
                                 chunks_per_page=2)

    path = "/api/admin/dataMigrations/run_1"
    assert [chunk["chunkId"] for chunk in first["chunks"]] == ["2025-01-01", "2025-01-02"]
    assert (first["previousChunks"], first["nextChunks"]) == (
        None, f"{path}?chunksFrom=2&chunksPerPage=2")
    assert [chunk["chunkId"] for chunk in middle["chunks"]] == ["2025-01-03", "2025-01-04"]
    assert middle["previousChunks"] == f"{path}?chunksFrom=0&chunksPerPage=2"
    assert [chunk["chunkId"] for chunk in last["chunks"]] == ["2025-01-05"]
    assert last["nextChunks"] is None
    assert first["chunkStates"] == {"pending": 5}  # every chunk, not the page's
    for chunks_from, per_page, field in ((-1, 2, "chunksFrom"), (0, 0, "chunksPerPage"),
                                         (0, progress.MAX_CHUNKS_PER_PAGE + 1, "chunksPerPage")):
        with pytest.raises(InvalidRequest, match=field):
            progress.describe_run(settings(), stores, "run_1", now=NOW,
                                  chunks_from=chunks_from, chunks_per_page=per_page)


def test_error_counts_by_code_stay_exact_when_a_record_was_written_twice() -> None:
    # Two pages wrote the record of one finding (same id): the chunks' per-code counts say 3,
    # the run holds 2 records. The answer counts the records of the codes written.
    stores, runs, chunks = memory_stores()
    runs.add("run_1", RunStatus.COMPLETED, total=10, started_at=EARLIER)
    chunks.add("run_1", "2025-01-01", ChunkState.COMPLETED, index=0,
               counters={"taken": 5, "errors": 2}, error_codes={"product_not_found": 2})
    chunks.add("run_1", "2025-01-02", ChunkState.COMPLETED, index=1,
               counters={"taken": 5, "errors": 1}, error_codes={"malformed_payload": 1})
    errors = stores.errors
    assert isinstance(errors, MemoryErrors)
    errors.add("run_1", "evt_1", "product_not_found")
    errors.add("run_1", "evt_2", "malformed_payload")

    status = progress.describe_run(settings(), stores, "run_1", now=NOW)

    assert status["errorCodes"] == {"product_not_found": 1, "malformed_payload": 1}
