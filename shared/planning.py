"""Planning a run: its chunks (windows of ``receivedAt``) and how ``maxEvents`` is shared out.

Pure functions; the trigger counts eligible events per window and stores the plan.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any


@dataclasses.dataclass(frozen=True)
class Window:
    """A half-open interval ``[start, end)`` of ``receivedAt``, in UTC."""

    start: dt.datetime
    end: dt.datetime

    @property
    def chunk_id(self) -> str:
        """The chunk's id: its first UTC day, which also sorts chunks oldest first."""
        return self.start.date().isoformat()


@dataclasses.dataclass(frozen=True)
class PlannedChunk:
    """One chunk as planning decides it: its window (or, for a retry run, the failed events it
    retries as ``source``), the events eligible when it was planned, and its quota."""

    chunk_id: str
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    eligible: int
    quota: int | None
    source: dict[str, Any] | None = None

    @property
    def idle(self) -> bool:
        """Nothing to take: recorded as completed, with no task."""
        return self.quota == 0 or self.eligible == 0

    @property
    def takes(self) -> int:
        return self.quota if self.quota is not None else self.eligible


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
