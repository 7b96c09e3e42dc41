"""How long a run takes to apply its events: the one function the preflight, the dry run, the
README's figures and ``make bench`` use.

A run applies its events as fast as the tightest of four bounds allows, at each moment:

- the **ramp** (``shared.domain.throttle.ramp``): Firestore's 500/50/5 guidance, in events per
  second at the throttle's three writes an event, growing by half every ramp step;
- the operator's **ceiling** (``maxEventsPerSecond``);
- the **chunks running at once**: the queue's concurrency (``max_concurrent_dispatches``), or
  fewer when the run has fewer chunks, each at its page loop's rate (``chunk_rate``, measured:
  ``make bench``);
- and no chunk finishes faster than its own page loop takes its events: the run lasts at least
  as long as its largest chunk alone at ``chunk_rate``.

The model integrates the first three over the ramp's steps (constant within a step) and takes
the fourth as a lower bound. It leaves out planning (its counts, measured apart), contention on
hot wallets, retries and the tail where fewer chunks are left than the queue runs; ``make bench``
compares it with measured runs and prints the error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from shared.config import Settings
from shared.domain import throttle

_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
# Past this many ramp steps the ramp no longer binds (throttle.ramp answers None).
_MAX_STEPS = 10_000


@dataclasses.dataclass(frozen=True)
class Workload:
    """What a run has to do and what it runs on."""

    events: int  # events it will apply
    chunks: int  # chunks with work
    largest_chunk: int  # events of its largest chunk
    chunk_rate: float  # events per second of one chunk's page loop
    concurrency: int  # chunks the queue runs at once
    ceiling: float | None = None  # the operator's maxEventsPerSecond


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A run's predicted duration, and the bound that held longest."""

    seconds: float
    bound: str  # "ramp", "ceiling", "chunks" or "largest chunk"
    # Events per second when the last event is applied (the run's final rate).
    final_rate: float


def estimate(settings: Settings, work: Workload) -> Estimate:
    """The seconds ``work`` takes to apply under ``settings``' ramp (see the module)."""
    if work.events <= 0:
        return Estimate(0.0, "chunks", 0.0)
    step = settings.ramp_step_minutes * 60
    parallel = max(1, min(work.chunks, work.concurrency)) * work.chunk_rate
    left, elapsed, rate = float(work.events), 0.0, 0.0
    held: dict[str, float] = {}
    for number in range(_MAX_STEPS):
        ramp = throttle.ramp(settings, _EPOCH, _EPOCH + dt.timedelta(seconds=number * step))
        bounds = {"chunks": parallel}
        if ramp is not None:
            bounds["ramp"] = ramp
        if work.ceiling:
            bounds["ceiling"] = work.ceiling
        bound = min(bounds, key=lambda name: bounds[name])
        rate = bounds[bound]
        if ramp is None or rate < ramp:
            # The ramp no longer binds from here on: the rest goes at this rate.
            held[bound] = held.get(bound, 0.0) + left / rate
            elapsed += left / rate
            break
        seconds = min(step, left / rate)
        held[bound] = held.get(bound, 0.0) + seconds
        elapsed += seconds
        left -= rate * seconds
        if left <= 0:
            break
    alone = work.largest_chunk / work.chunk_rate
    if alone > elapsed:
        return Estimate(alone, "largest chunk", rate)
    return Estimate(elapsed, max(held, key=lambda name: held[name]), rate)
