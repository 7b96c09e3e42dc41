"""The run duration estimate (``shared.domain.estimate``): its bounds one at a time, and that it
moves the way a run does (more work never takes less time, a looser bound never more)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.estimate import Workload, estimate
from tests.unit.test_run_control import settings

NO_RAMP = settings(ramp_start_writes=0)


def test_without_ramp_or_ceiling_the_chunks_running_at_once_bound_it() -> None:
    work = Workload(events=100_000, chunks=100, largest_chunk=1000, chunk_rate=250,
                    concurrency=20)
    found = estimate(NO_RAMP, work)
    assert found.seconds == pytest.approx(100_000 / (20 * 250))
    assert (found.bound, found.final_rate) == ("chunks", 5000)


def test_a_run_of_fewer_chunks_than_the_queue_runs_is_bound_by_its_largest_chunk() -> None:
    work = Workload(events=10_000, chunks=2, largest_chunk=9000, chunk_rate=100, concurrency=20)
    found = estimate(NO_RAMP, work)
    assert (found.seconds, found.bound) == (90.0, "largest chunk")


def test_an_operator_ceiling_below_the_chunks_rate_bounds_it() -> None:
    work = Workload(events=60_000, chunks=100, largest_chunk=600, chunk_rate=250,
                    concurrency=20, ceiling=1000)
    found = estimate(NO_RAMP, work)
    assert (found.seconds, found.bound) == (60.0, "ceiling")


def test_the_ramp_grows_by_half_each_step() -> None:
    ramp = settings(ramp_start_writes=300, ramp_step_minutes=1)  # 100, 150, 225 events/s
    work = Workload(events=6000 + 9000 + 2250, chunks=100, largest_chunk=10,
                    chunk_rate=1000, concurrency=20)
    found = estimate(ramp, work)
    assert found.seconds == pytest.approx(60 + 60 + 10)
    assert (found.bound, found.final_rate) == ("ramp", 225)


def test_the_readmes_ten_million_events_take_71_minutes_under_the_default_ramp() -> None:
    # The README's figure and its assumptions: a 20-slot queue, 200 events/s per chunk, chunks
    # of 12,000 events, the default ramp.
    work = Workload(events=10_000_000, chunks=834, largest_chunk=12_000, chunk_rate=200,
                    concurrency=20)
    found = estimate(settings(), work)
    assert (round(found.seconds / 60), found.bound) == (71, "ramp")


WORKLOADS = st.builds(
    Workload, events=st.integers(1, 10**7), chunks=st.integers(1, 10_000),
    largest_chunk=st.integers(1, 10**5), chunk_rate=st.floats(1, 5000),
    concurrency=st.integers(1, 1000),
    ceiling=st.one_of(st.none(), st.floats(1, 10**5)))


@given(WORKLOADS, st.integers(1, 10**6))
def test_more_events_never_take_less_time(work: Workload, more: int) -> None:
    bigger = Workload(work.events + more, work.chunks, work.largest_chunk, work.chunk_rate,
                      work.concurrency, work.ceiling)
    assert estimate(settings(), bigger).seconds >= estimate(settings(), work).seconds - 1e-6


@given(WORKLOADS, st.floats(1.0, 10.0))
def test_a_faster_page_loop_or_a_looser_ceiling_never_takes_longer(work: Workload,
                                                                  factor: float) -> None:
    faster = Workload(work.events, work.chunks, work.largest_chunk, work.chunk_rate * factor,
                      work.concurrency, work.ceiling * factor if work.ceiling else None)
    assert estimate(settings(), faster).seconds <= estimate(settings(), work).seconds + 1e-6
