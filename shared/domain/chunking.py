"""Planning a run: its chunks (windows of ``receivedAt``), how windows holding too many events
are split, and how ``maxEvents`` is shared out.

Pure functions over a ``count`` of the events in a window; the planner counts by Firestore
aggregations and stores the plan.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
Count = Callable[["Window"], int]
Mapper = Callable[[Callable[[T], R], Iterable[T]], Iterator[R]]

# A split point is searched by bisection over time; its halves may differ by this share of the
# window's events (an exact median would take more counts for no faster run).
_SPLIT_TOLERANCE = 8
_SPLIT_STEPS = 48  # halvings of a window's time: below a microsecond after ~37 for a day


@dataclasses.dataclass(frozen=True)
class Window:
    """A half-open interval ``[start, end)`` of ``receivedAt``, in UTC."""

    start: dt.datetime
    end: dt.datetime

    @property
    def chunk_id(self) -> str:
        """The chunk's id: its first UTC day, and for a window split off inside a day its start
        to the microsecond (``2025-01-01T063000250000``); ids sort as the windows do."""
        day = self.start.date().isoformat()
        if self.start.time() == dt.time():
            return day
        return f"{day}T{self.start:%H%M%S%f}"


@dataclasses.dataclass(frozen=True)
class PlannedChunk:
    """One chunk as planning decides it: its window (or, for a retry run, the failed events it
    retries as ``source``), the events eligible when it was planned, and its quota."""

    chunk_id: str
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    # None: its type cannot count it; the executor finds out (such a chunk is never idle).
    eligible: int | None
    quota: int | None
    source: dict[str, Any] | None = None
    note: str = ""

    @property
    def idle(self) -> bool:
        """Nothing to take: recorded as completed, with no task."""
        return self.quota == 0 or self.eligible == 0

    @property
    def takes(self) -> int:
        """What it takes, as far as planning knows (an uncounted chunk: its quota, or 0)."""
        if self.quota is not None:
            return self.quota
        return self.eligible or 0


def span(start_date: dt.date, end_date: dt.date) -> Window:
    """The whole of the UTC days ``start_date..end_date`` (inclusive) as one window."""
    if start_date > end_date:
        raise ValueError("start_date is after end_date")
    return Window(dt.datetime.combine(start_date, dt.time(), tzinfo=dt.UTC),
                  dt.datetime.combine(end_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC))


def windows(start_date: dt.date, end_date: dt.date, chunk_days: int) -> list[Window]:
    """Split the UTC days ``start_date..end_date`` (inclusive) into windows of ``chunk_days``."""
    whole = span(start_date, end_date)
    step = dt.timedelta(days=chunk_days)
    result: list[Window] = []
    start = whole.start
    while start < whole.end:
        end = min(start + step, whole.end)
        result.append(Window(start, end))
        start = end
    return result


def quotas(eligible: list[int], max_events: int | None) -> list[int | None]:
    """Each chunk's bound on the events it takes, sharing ``max_events`` out oldest first.

    Without a bound every chunk takes all it finds (``None``). With one, chunk i gets
    ``min(eligible[i], what earlier chunks left)``, so the run never takes more than
    ``max_events`` and takes the oldest eligible events as counted when the run was planned.
    """
    if max_events is None:
        return [None] * len(eligible)
    left = max_events
    result: list[int | None] = []
    for count in eligible:
        quota = min(count, left)
        result.append(quota)
        left -= quota
    return result


def before(window: Window, cutoff: dt.datetime) -> Window:
    """``window`` without what was received at or after ``cutoff`` (empty if it starts later).

    Replays leave the newest events to the live path, which may be applying them right now.
    """
    return Window(window.start, max(window.start, min(window.end, cutoff)))


@dataclasses.dataclass(frozen=True)
class Counted:
    """A window and the events counted in it; ``note`` says why it was not split further."""

    window: Window
    count: int
    note: str = ""


def split(counted: list[Counted], count: Count, bound: int, cap: int,
          mapper: Mapper[Counted, tuple[Counted, Counted] | None] = map) -> list[Counted]:
    """Split every window holding more than ``bound`` events in two by ``receivedAt``, again
    and again, until each holds at most ``bound`` or the run has ``cap`` windows.

    The halves tile the window (nothing falls between them) and hold about half its events
    each, so an incident day fans out like many quiet days. Largest windows are split first;
    windows past the cap, and windows whose events share one instant, stay whole and say so in
    their ``note``. ``mapper`` runs the searches of one round (the planner passes a thread
    pool's ``map``); the answer is in time order.
    """
    pieces = list(counted)
    whole: set[Window] = set()  # windows no split point divides
    while True:
        over = sorted((piece for piece in pieces
                       if piece.count > bound and piece.window not in whole),
                      key=lambda piece: -piece.count)
        room = cap - len(pieces)
        if not over or room <= 0:
            break
        halves = dict(zip((piece.window for piece in over[:room]),
                          mapper(lambda piece: _halve(piece, count), over[:room]), strict=True))
        result: list[Counted] = []
        for piece in pieces:
            if piece.window not in halves:
                result.append(piece)
            elif (found := halves[piece.window]) is None:
                whole.add(piece.window)
                result.append(piece)
            else:
                result.extend(found)
        pieces = result
    notes = {piece.window: (f"holds more than {bound} events all received at one instant; "
                            "not split" if piece.window in whole else
                            f"holds more than {bound} events; not split further: the run has "
                            f"{cap} chunks, the most one plan holds")
             for piece in pieces if piece.count > bound}
    return [dataclasses.replace(piece, note=notes.get(piece.window, "")) for piece in pieces]


def _halve(piece: Counted, count: Count) -> tuple[Counted, Counted] | None:
    """The window cut where about half its events lie before the cut; None when no cut between
    its start and end divides them (they share one instant)."""
    window, total = piece.window, piece.count
    target, tolerance = total // 2, max(1, total // _SPLIT_TOLERANCE)
    low, high = window.start, window.end
    best: tuple[dt.datetime, int] | None = None
    for _ in range(_SPLIT_STEPS):
        middle = low + (high - low) / 2  # timedelta: whole microseconds
        if not low < middle < high:
            break
        before = count(Window(window.start, middle))
        if 0 < before < total and (best is None or abs(before - target) < abs(best[1] - target)):
            best = (middle, before)
        if abs(before - target) <= tolerance and 0 < before < total:
            break
        low, high = (middle, high) if before < target else (low, middle)
    if best is None:
        return None
    cut, before = best
    return (Counted(Window(window.start, cut), before),
            Counted(Window(cut, window.end), total - before))
