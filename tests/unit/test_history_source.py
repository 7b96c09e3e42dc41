"""Properties of the recovery's source (``shared.backfills.webhook_recovery.HistorySource``)
over a webhook history that grows at its head while it is read, as PayNow's does: whatever the
API's page size, the executor's page limit, the range, how many webhooks arrive between two
reads, and where deliveries die before their commit (a new source from the last committed
cursor, its memo lost), every item created in the range that PayNow held when the run began is
yielded by exactly one committed page, and nothing outside the range is.
"""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.adapters.paynow import Delivered
from shared.backfills.webhook_recovery import HistorySource
from shared.domain.chunking import Window

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
PROPERTIES = settings(max_examples=300, deadline=None, database=None)


def item(n: int, seconds: int) -> Delivered:
    at = T0 + dt.timedelta(seconds=seconds)
    return Delivered(f"h{n:06}", at, "ON_ORDER_COMPLETED",
                     {"event_type": "ON_ORDER_COMPLETED", "event_id": f"e{n:06}", "body": {}},
                     "failed")


class History:
    """A subscription's history, newest first, served a page at a time; ``arrive`` adds newer
    webhooks at its head, as PayNow does while a reader pages."""

    def __init__(self, gaps: list[int], page_size: int) -> None:
        seconds, self.items = 0, []
        for n, gap in enumerate(gaps):
            seconds += gap  # gaps of 0: items created in the same second (ties by id)
            self.items.append(item(n, seconds))
        self.items.reverse()
        self.page_size = page_size
        self.reads = 0
        self._next = len(gaps)
        self._seconds = seconds

    def read(self, number: int) -> list[Delivered]:
        self.reads += 1
        start = number * self.page_size
        return list(self.items[start:start + self.page_size])

    def arrive(self, count: int) -> None:
        for _ in range(count):
            self._seconds += 1
            self.items.insert(0, item(self._next, self._seconds))
            self._next += 1


@st.composite
def histories(draw: st.DrawFn) -> tuple[History, Window, list[int], list[bool], int]:
    gaps = draw(st.lists(st.integers(0, 3), min_size=0, max_size=120))
    history = History(gaps, draw(st.integers(1, 12)))
    span = max(sum(gaps), 1)
    start = draw(st.integers(-2, span + 2))
    end = draw(st.integers(start, span + 4))
    window = Window(T0 + dt.timedelta(seconds=start), T0 + dt.timedelta(seconds=end))
    # Webhooks arrive between reads, in bursts of up to three pages, but on average fewer than
    # half a page per read (a third of the reads die): a reader slower than the store's
    # traffic never catches up (PayNow's pages are read far faster than a store takes orders).
    arrivals = draw(st.lists(st.integers(0, 3 * history.page_size), min_size=1, max_size=60)
                    .filter(lambda counts: 2 * sum(counts) < len(counts) * history.page_size))
    deaths = draw(st.lists(st.booleans(), min_size=1, max_size=60))
    return history, window, arrivals, deaths, draw(st.integers(1, 15))


@PROPERTIES
@given(histories())
def test_every_item_of_the_range_is_yielded_once_however_the_list_moves(
        case: tuple[History, Window, list[int], list[bool], int]) -> None:
    history, window, arrivals, deaths, limit = case
    expected = sorted(i.event_id or "" for i in history.items
                      if window.start <= i.created_at < window.end)
    cursor = None
    source = HistorySource(history.read, window)
    committed: list[str] = []
    for step in range(10_000):
        page = source.page(cursor, limit)
        assert len(page.events) <= limit
        history.arrive(arrivals[step % len(arrivals)])
        if deaths[step % len(deaths)] and step % 3 == 0:
            # The delivery died before its commit: a new one starts from the cursor.
            source = HistorySource(history.read, window)
            continue
        committed.extend(event.event_id for event in page.events)
        cursor = page.cursor if page.cursor is not None else cursor
        if not page.more:
            break
    else:
        raise AssertionError("the source never said it was done")
    # Webhooks that arrived after the run's first read may be yielded too (once) when they
    # fall in the range: they are the receiver's, or a later recovery's.
    assert len(committed) == len(set(committed))
    assert set(expected) <= set(committed)
    assert set(committed) <= {i.event_id for i in history.items
                              if window.start <= i.created_at < window.end}


@PROPERTIES
@given(st.lists(st.integers(0, 3), min_size=1, max_size=300), st.integers(1, 25),
       st.integers(1, 30), st.integers(0, 200))
def test_a_range_that_ends_in_the_past_reads_few_pages_before_its_own(
        gaps: list[int], page_size: int, limit: int, before_end: int) -> None:
    """Items newer than the range are paged over by probing: at most about two reads per
    doubling, never a read of every newer page."""
    history = History(gaps, page_size)
    span = sum(gaps)
    end = T0 + dt.timedelta(seconds=max(span - before_end, 0))
    window = Window(T0, end)
    source = HistorySource(history.read, window)
    cursor, committed = None, list[str]()
    while True:
        page = source.page(cursor, limit)
        committed.extend(event.event_id for event in page.events)
        cursor = page.cursor or cursor
        if not page.more:
            break
    expected = sorted(i.event_id or "" for i in history.items if i.created_at < end)
    assert sorted(committed) == expected
    pages = len(history.items) // page_size + 1
    own = -(-len(expected) // page_size) + 1
    newer_pages = pages - own
    # Each page of the range is read once per ``limit`` it holds, plus the probes.
    per_page = -(-page_size // limit)
    assert history.reads <= own * per_page + 2 * max(newer_pages, 1).bit_length() + 2
