"""The shared rate limit (``shared.adapters.rate_limit``) on the Firestore emulator: callers in
different threads, each with its own limiter object (as different function instances would
be), take distinct slots spaced by the limit's interval after the burst; a provider's
``Retry-After`` holds every caller of the key; a slot too far away is refused, not taken.
"""

from __future__ import annotations

import itertools
import threading

import pytest
from google.cloud import firestore
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.adapters.rate_limit import Rate, SharedLimiter, limit_id, take
from shared.errors import Unavailable

pytestmark = pytest.mark.emulator


@settings(max_examples=300, deadline=None, database=None)
@given(st.floats(0.5, 500), st.integers(1, 20),
       st.lists(st.floats(0, 2), min_size=1, max_size=80))
def test_gcra_never_lets_more_than_the_burst_plus_the_rate_through(
        per_second: float, burst: int, gaps: list[float]) -> None:
    rate, tat, now, slots = Rate(per_second, burst), None, 0.0, []
    for gap in gaps:
        now += gap
        slot, tat = take(tat, now, rate)
        assert slot >= now
        slots.append(slot)
    # In any span of time, at most burst + span * rate slots.
    for i, first in enumerate(slots):
        for j in range(i, len(slots)):
            assert j - i + 1 <= burst + (slots[j] - first) * per_second + 1e-6


class Recording(SharedLimiter):
    """A limiter that records the slots it takes (and does not sleep until them)."""

    def __init__(self, db: firestore.Client, name: str, rate: Rate, slots: list[float]) -> None:
        super().__init__(db, name, rate, max_wait=60, sleep=lambda seconds: None)
        self.slots = slots

    def _take(self, now: float) -> float:
        slot = super()._take(now)
        self.slots.append(slot)
        return slot


def test_callers_of_one_key_share_one_limit(clean: firestore.Client) -> None:
    name = limit_id("paynow", "a-key")
    slots: list[float] = []
    rate = Rate(20, burst=1)

    def caller() -> None:
        limiter = Recording(clean, name, rate, slots)  # its own, as another instance's
        for _ in range(10):
            limiter.acquire()

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    ordered = sorted(slots)
    assert len(ordered) == 30
    # Distinct slots, an interval apart: 30 calls take at least 29 intervals together.
    assert all(later - earlier >= rate.interval - 1e-6
               for earlier, later in itertools.pairwise(ordered))
    assert "a-key" not in name  # the document's id is a hash of the key


def test_a_retry_after_holds_every_caller_and_a_far_slot_is_refused(
        clean: firestore.Client) -> None:
    name = limit_id("paynow", "b-key")
    one = SharedLimiter(clean, name, Rate(100, burst=5), max_wait=5, sleep=lambda s: None)
    other = SharedLimiter(clean, name, Rate(100, burst=5), max_wait=5, sleep=lambda s: None)
    assert one.acquire() == 0.0

    one.hold(3)
    waited = other.acquire()
    one.hold(30)

    assert 2.5 < waited <= 3.05
    with pytest.raises(Unavailable):
        other.acquire()
