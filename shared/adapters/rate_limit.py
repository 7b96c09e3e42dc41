"""A rate limit shared by every process that calls one provider with one key: each call takes
a slot from one Firestore document, so every run, chunk and function instance together stay
under it (an in-process limiter would allow it once per instance).

The limit is a GCRA (generic cell rate algorithm, a token bucket kept as one timestamp): with
``interval`` = 1 / rate and ``tolerance`` = (burst - 1) * interval, the document holds the
theoretical arrival time ``tat`` of the next call. A call at ``now`` takes the slot at
``max(now, tat - tolerance)`` and moves ``tat`` to ``max(tat, now) + interval``, written only
if the document is still as read, so racing callers take distinct slots. The caller waits
until its slot; a slot further away than ``max_wait`` is not taken at all (``Unavailable``: the
task is retried later, rather than a delivery sleeping its time budget away).

A provider's own ``Retry-After`` pushes ``tat`` forward for everyone (``hold``): when PayNow says
wait, no caller of that key asks before then.

The document's id is a hash of the key, never the key:
``rateLimits/{provider}-{sha256(key)[:16]}``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import random
import time
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from shared import clock
from shared.errors import Unavailable

COLLECTION = "rateLimits"
# Tries of a contended update before the call is handed back (``Unavailable``).
_ATTEMPTS = 30


def limit_id(provider: str, key: str) -> str:
    """The id of the limit of ``provider`` calls made with ``key`` (a hash: the key itself is
    a secret)."""
    return f"{provider}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@dataclasses.dataclass(frozen=True)
class Rate:
    """Calls per second, and how many may go at once after a quiet spell."""

    per_second: float
    burst: int = 1

    @property
    def interval(self) -> float:
        return 1.0 / self.per_second

    @property
    def tolerance(self) -> float:
        return (max(self.burst, 1) - 1) * self.interval


def take(tat: float | None, now: float, rate: Rate) -> tuple[float, float]:
    """The slot a call at ``now`` takes, and the limit's new ``tat`` (pure: the GCRA step)."""
    tat = now if tat is None else max(tat, now)
    slot = max(now, tat - rate.tolerance)
    return slot, tat + rate.interval


class SharedLimiter:
    """Slots of one limit (``limit_id``), taken in Firestore transactions."""

    def __init__(self, db: firestore.Client, name: str, rate: Rate, max_wait: float = 10.0,
                 now: Callable[[], dt.datetime] = clock.now,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._db = db
        self._ref = db.collection(COLLECTION).document(name)
        self._rate = rate
        self._max_wait = max_wait
        self._now = now
        self._sleep = sleep

    def acquire(self) -> float:
        """Wait for a slot of the limit; return how long it waited. ``Unavailable`` when the
        next slot is more than ``max_wait`` away (nothing taken)."""
        now = self._now().timestamp()
        slot = self._take(now)
        wait = max(0.0, slot - now)
        if wait:
            self._sleep(wait)
        return wait

    def hold(self, seconds: float) -> None:
        """The provider said to wait ``seconds``: no caller of this limit takes a slot before."""
        until = self._now().timestamp() + seconds
        self._update(lambda tat: (None, until if tat is None or tat < until else None))

    def _take(self, now: float) -> float:
        rate, max_wait = self._rate, self._max_wait

        def reserve(tat: float | None) -> tuple[float, float]:
            slot, new_tat = take(tat, now, rate)
            if slot - now > max_wait:
                raise Unavailable(f"the provider's rate limit is taken for the next "
                                  f"{slot - now:.0f} s; try again later")
            return slot, new_tat

        slot: float = self._update(reserve)
        return slot

    def _update(self, step: Callable[[float | None], tuple[Any, float | None]]) -> Any:
        """Read the limit, compute, and write its new ``tat`` only if the document is still as
        read (its update time; created if absent), else again: callers that race take
        distinct slots. (A precondition, not a transaction: no lock to wait for.)"""
        for attempt in range(_ATTEMPTS):
            snapshot = self._ref.get()
            answer, tat = step(_tat(snapshot))
            if tat is None:
                return answer
            fields = {"tat": tat, "updatedAt": self._now()}
            try:
                if snapshot.exists:
                    self._ref.update(fields, option=self._db.write_option(
                        last_update_time=snapshot.update_time))
                else:
                    self._ref.create(fields)
            except (api_exceptions.FailedPrecondition, api_exceptions.Conflict,
                    api_exceptions.Aborted):
                self._sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))  # noqa: S311
                continue
            return answer
        raise Unavailable("the provider's rate limit is too contended; try again later")


def _tat(snapshot: Any) -> float | None:
    if not snapshot.exists:
        return None
    value = (snapshot.to_dict() or {}).get("tat")
    return float(value) if isinstance(value, (int, float)) else None
