"""The throttle: how fast a run may apply events, and how one delivery keeps to its share.

A run's ceiling in events per second is the lower of two:

- the operator's ``maxEventsPerSecond`` (the request's field, ``BACKFILL_MAX_EVENTS_PER_SECOND``
  by default, changed while the run is active with ``POST .../{migrationId}/throttle``);
- the ramp, Firestore's 500/50/5 guidance for traffic to a collection: start at
  ``BACKFILL_RAMP_START_WRITES`` (500) writes a second and grow by half every
  ``BACKFILL_RAMP_STEP_MINUTES`` (5) from the run's start, at three writes an applied event.

The ramp is shared, too: every active run together writes within one ramp (``budget``), counted
from the first of them to start, so runs started side by side never exceed what one run would
write. Each delivery takes the lower of its run's ceiling over the run's running chunks and the
shared budget over every running chunk of every active run (``share``). It reads pages of at
most a second of that share and, after each page, sleeps as long as its share asks. It reads
the ceiling and the running chunks again every few seconds, so a change through the control API
takes hold within that. On contention (Firestore
answering ABORTED or RESOURCE_EXHAUSTED) it halves its own pace and backs off, with jitter,
instead of failing; each clean page wins a tenth back.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Callable, Mapping, Sequence

from shared.config import Settings
from shared.domain.records import RunRecord

# An applied purchase writes its entry, its flag and its share of the wallet's increment.
WRITES_PER_EVENT = 3
# Past this many steps the ramp no longer binds (500 x 1.5^24 writes/s is beyond any database).
_RAMP_STEPS = 24
_REFRESH_SECONDS = 5.0
_SLOWEST = 1 / 16  # the most contention slows a delivery down to
# A page takes at most this many seconds of a delivery's share, so that no page (of up to
# BACKFILL_PAGE_SIZE events) bursts past the ceiling before the pace can hold it.
_PAGE_SECONDS = 1.0
_BACKOFF_SECONDS, _BACKOFF_CAP = 0.25, 8.0


def ramp(settings: Settings, started_at: dt.datetime | None,
         now: dt.datetime) -> float | None:
    """The ramp's events per second at ``now`` for a run started at ``started_at`` (not yet
    started: its first step); None when the ramp is off or no longer binds."""
    if not settings.ramp_start_writes:
        return None
    elapsed = (now - started_at).total_seconds() if started_at is not None else 0.0
    steps = max(0, math.floor(elapsed / (settings.ramp_step_minutes * 60)))
    if steps >= _RAMP_STEPS:
        return None
    return settings.ramp_start_writes * 1.5 ** steps / WRITES_PER_EVENT


def ceiling(settings: Settings, run: RunRecord, now: dt.datetime) -> float | None:
    """The run's ceiling in events per second now (None: none)."""
    bounds = [bound for bound in (run.max_events_per_second,
                                  ramp(settings, run.started_at, now)) if bound]
    return float(min(bounds)) if bounds else None


def budget(settings: Settings, runs: Sequence[RunRecord], now: dt.datetime) -> float | None:
    """The events per second every active run shares: the ramp since the first of ``runs``
    started (none yet: its first step), so that runs started together write no more than one
    run would, and a run started later joins the traffic the others built up; under
    ``BACKFILL_MAX_EVENTS_PER_SECOND``, the operators' ceiling of them all. None: neither
    binds."""
    if not runs:
        return None
    starts = [run.started_at for run in runs if run.started_at is not None]
    bounds = [bound for bound in (settings.max_events_per_second,
                                  ramp(settings, min(starts) if starts else None, now)) if bound]
    return float(min(bounds)) if bounds else None


def share(settings: Settings, run: RunRecord, running: Mapping[str, int],
          runs: Sequence[RunRecord], now: dt.datetime) -> float | None:
    """One delivery's events per second: the lower of its run's ceiling over that run's
    running chunks, and the shared ``budget`` of the active ``runs`` over every chunk running
    (``running``: chunks running by run id; this delivery's chunk counts at least once). The
    shares of all deliveries of all runs sum to at most the budget (and each run's, to at most
    its own ceiling). None: unbounded."""
    mine = max(1, running.get(run.migration_id, 0))
    everyone = max(mine, sum(running.values()))
    own, shared = ceiling(settings, run, now), budget(settings, runs, now)
    parts = [part for part in (own / mine if own else None,
                               shared / everyone if shared else None) if part is not None]
    return min(parts) if parts else None


class Pacer:
    """Keeps one delivery to its share of its run's ceiling.

    ``share()`` answers the delivery's events per second now (None: unbounded); it is asked
    again every few seconds. ``monotonic`` and ``sleep`` are the clock's, so tests run it
    without waiting.
    """

    def __init__(self, share: Callable[[], float | None], monotonic: Callable[[], float],
                 sleep: Callable[[float], None]) -> None:
        self._share = share
        self._monotonic = monotonic
        self._sleep = sleep
        self._pace = 1.0  # what contention left of the share
        self._rate: float | None = None
        self._asked_at: float | None = None
        self._contended = 0
        self._since = 0.0
        self._events = 0
        self.slept = 0.0

    @property
    def rate(self) -> float | None:
        """The events per second this delivery keeps to now."""
        return None if self._rate is None else self._rate * self._pace

    def start(self) -> None:
        self._refresh()
        self._since, self._events = self._monotonic(), 0

    def after(self, events: int, budget_left: float) -> None:
        """``events`` were just applied: wait until the share allows the next page (at most
        ``budget_left`` seconds). A clean page wins a tenth of the pace back."""
        self._pace = min(1.0, self._pace * 1.1)
        self._contended = 0
        if self._asked_at is None or self._monotonic() - self._asked_at >= _REFRESH_SECONDS:
            self._refresh()
        self._events += events
        rate = self.rate
        if rate is None or rate <= 0:
            return
        wait = self._events / rate - (self._monotonic() - self._since)
        self._nap(min(wait, budget_left))

    def page_cap(self) -> int | None:
        """The most events the next page may take: a second of this delivery's share, at
        least one (None: unbounded). Without it a page of hundreds of events would land at
        once whatever the ceiling, and the pace would only catch up after it."""
        rate = self.rate
        if rate is None or rate <= 0:
            return None
        return max(1, int(rate * _PAGE_SECONDS))

    def owed(self) -> float:
        """How long the next page must still wait for this delivery's share: what the time
        budget did not leave to sleep. The next segment's task is due that much later, so a
        ceiling below a page per time budget holds across segments too."""
        rate = self.rate
        if rate is None or rate <= 0:
            return 0.0
        return max(0.0, self._events / rate - (self._monotonic() - self._since))

    def contended(self, budget_left: float) -> None:
        """Firestore pushed back: halve the pace and back off before the page is tried again."""
        self._pace = max(_SLOWEST, self._pace / 2)
        self._contended += 1
        backoff = min(_BACKOFF_CAP, _BACKOFF_SECONDS * 2 ** (self._contended - 1))
        self._nap(min(backoff * random.uniform(0.5, 1.0), budget_left))  # noqa: S311 (jitter)
        # The pace counts from here on: the events before the pushback were at the old one.
        self._since, self._events = self._monotonic(), 0

    def _refresh(self) -> None:
        rate = self._share()
        self._asked_at = self._monotonic()
        if rate != self._rate:
            # A new share counts from now: no burst to catch up with a raised ceiling.
            self._rate, self._since, self._events = rate, self._asked_at, 0

    def _nap(self, seconds: float) -> None:
        if seconds > 0:
            self._sleep(seconds)
            self.slept += seconds
