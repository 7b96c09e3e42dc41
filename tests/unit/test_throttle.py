"""The throttle's arithmetic, with a fake clock: the ramp, the ceiling, a delivery's pace, and
the back-off on contention. The control API and a delivery slowed by it are tested through the
functions in tests/functions/test_throttle.py."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from shared.domain import throttle
from shared.domain.throttle import Pacer
from shared.models import RunStatus
from tests.fakes import NOW, MemoryRuns
from tests.unit.test_run_control import settings


class Sleeper:
    """A monotonic clock that moves only when the pacer sleeps or the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.naps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.now += seconds


def test_the_ramp_starts_at_500_writes_and_grows_by_half_every_five_minutes() -> None:
    ramped = settings(ramp_start_writes=500, ramp_step_minutes=5)
    start = NOW

    def at(minutes: float) -> float | None:
        return throttle.ramp(ramped, start, start + dt.timedelta(minutes=minutes))

    assert at(0) == pytest.approx(500 / 3)
    assert at(4.9) == pytest.approx(500 / 3)
    assert at(5) == pytest.approx(750 / 3)
    assert at(10) == pytest.approx(1125 / 3)
    assert at(24 * 5) is None  # far past any database's limit: no longer binds
    assert throttle.ramp(ramped, None, start) == pytest.approx(500 / 3)  # not started yet
    assert throttle.ramp(settings(ramp_start_writes=0), start, start) is None


def test_the_ceiling_is_the_lower_of_the_operators_and_the_ramps() -> None:
    runs = MemoryRuns()
    slow = runs.add("slow", RunStatus.RUNNING, started_at=NOW, max_events_per_second=50)
    fast = runs.add("fast", RunStatus.RUNNING, started_at=NOW, max_events_per_second=10_000)
    free = runs.add("free", RunStatus.RUNNING, started_at=NOW)
    ramped = settings(ramp_start_writes=300)

    assert throttle.ceiling(ramped, slow, NOW) == 50
    assert throttle.ceiling(ramped, fast, NOW) == pytest.approx(100)
    assert throttle.ceiling(settings(ramp_start_writes=0), free, NOW) is None


def test_a_delivery_keeps_to_its_share_and_takes_a_new_one_within_seconds() -> None:
    clock = Sleeper()
    shares = [100.0]
    pacer = Pacer(lambda: shares[-1], clock.monotonic, clock.sleep)
    pacer.start()

    for _ in range(3):
        clock.now += 0.1  # the page itself took 0.1 s
        pacer.after(100, budget_left=60)
    assert clock.now == pytest.approx(3.0)  # 300 events at 100/s
    shares.append(400.0)  # the operator raised the ceiling
    clock.now += 5
    pacer.after(100, budget_left=60)  # asks again after 5 s: from here on at 400/s
    naps = len(clock.naps)
    clock.now += 0.05
    pacer.after(100, budget_left=60)

    assert pacer.rate == 400
    assert clock.naps[naps] == pytest.approx(0.2)  # 100 events at 400/s, less the page's 0.05


def test_contention_halves_the_pace_backs_off_and_clean_pages_win_it_back() -> None:
    clock = Sleeper()
    pacer = Pacer(lambda: 100.0, clock.monotonic, clock.sleep)
    pacer.start()

    pacer.contended(budget_left=60)
    pacer.contended(budget_left=60)
    slowed = pacer.rate
    backoffs = list(clock.naps)
    pacer.after(10, budget_left=60)

    assert slowed == 25
    assert 0.125 <= backoffs[0] <= 0.25 and 0.25 <= backoffs[1] <= 0.5
    assert pacer.rate == pytest.approx(27.5)


def test_an_unbounded_delivery_never_waits_and_no_wait_outlasts_the_budget() -> None:
    clock = Sleeper()
    free = Pacer(lambda: None, clock.monotonic, clock.sleep)
    free.start()
    free.after(10_000, budget_left=60)
    slow = Pacer(lambda: 1.0, clock.monotonic, clock.sleep)
    slow.start()
    slow.after(1_000, budget_left=2.5)

    assert clock.naps == [2.5]
    assert free.slept == 0 and slow.slept == 2.5


def test_what_the_budget_did_not_leave_to_sleep_is_owed_to_the_next_segment() -> None:
    clock = Sleeper()
    slow = Pacer(lambda: 2.0, clock.monotonic, clock.sleep)
    slow.start()
    slow.after(20, budget_left=1.0)  # 20 events at 2/s: 10 s, of which 1 s slept here
    free = Pacer(lambda: None, clock.monotonic, clock.sleep)
    free.start()
    free.after(20, budget_left=1.0)

    assert slow.owed() == pytest.approx(9.0)
    assert free.owed() == 0.0
    clock.now += 9.0
    assert slow.owed() == 0.0


def test_a_page_takes_at_most_a_second_of_the_share() -> None:
    shares: list[float | None] = [12.5, 0.2, None]
    pacer = Pacer(lambda: shares[0], lambda: 0.0, lambda seconds: None)
    pacer.start()
    assert pacer.page_cap() == 12
    shares[0] = 0.2  # slower than a page a second: still one event at a time
    pacer.start()
    assert pacer.page_cap() == 1
    shares[0] = None
    pacer.start()
    assert pacer.page_cap() is None


@given(starts=st.lists(st.integers(0, 60), min_size=1, max_size=4),
       chunks=st.lists(st.integers(0, 20), min_size=4, max_size=4),
       ceilings=st.lists(st.one_of(st.none(), st.integers(1, 2000)), min_size=4, max_size=4),
       minutes=st.integers(0, 90), shared=st.one_of(st.none(), st.integers(1, 1000)))
@settings_(max_examples=300, deadline=None)
def test_the_deliveries_of_every_active_run_together_stay_within_one_runs_budget(
        starts: list[int], chunks: list[int], ceilings: list[int | None], minutes: int,
        shared: int | None) -> None:
    # Runs started ``starts`` minutes after the first, each with its running chunks; the clock
    # reads ``minutes`` after the first start; ``shared``: BACKFILL_MAX_EVENTS_PER_SECOND.
    ramped = settings(ramp_start_writes=500, ramp_step_minutes=5,
                      **({"max_events_per_second": shared} if shared else {}))
    runs = MemoryRuns()
    active = [runs.add(f"r{n}", RunStatus.RUNNING, started_at=NOW + dt.timedelta(minutes=late),
                       max_events_per_second=ceilings[n])
              for n, late in enumerate(starts)]
    running = {run.migration_id: chunks[n] for n, run in enumerate(active)}
    now = NOW + dt.timedelta(minutes=max(minutes, max(starts)))

    shares = {run.migration_id: throttle.share(ramped, run, running, active, now)
              for run in active}
    budget = throttle.budget(ramped, active, now)

    # Each running chunk is one delivery at its run's share.
    total = sum((shares[run.migration_id] or 0) * running[run.migration_id] for run in active)
    assert budget is not None and all(share is not None for share in shares.values())
    assert total <= budget * (1 + 1e-9)
    assert shared is None or budget <= shared
    for run in active:
        own = throttle.ceiling(ramped, run, now)
        assert own is not None
        assert (shares[run.migration_id] or 0) * running[run.migration_id] <= own * (1 + 1e-9)
    # Three runs started together share what one of them would have had alone.
    if len(set(starts)) == 1 and all(ceiling is None for ceiling in ceilings) and not shared:
        alone = throttle.ceiling(ramped, active[0], now)
        assert alone is not None and budget == pytest.approx(alone)
