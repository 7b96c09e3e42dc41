"""The bundle's one clock: UTC wall time and a monotonic clock for durations.

Every use of the time goes through this module, and the composition root (``shared.wiring``)
installs the clock the process runs with, so tests can set the time instead of waiting for it
or writing it into documents. Two readings stay outside it on purpose: token validation
(``shared.adapters.oidc``, which must judge ``nbf`` against real time, as google-auth judges
``exp``) and a task's ``schedule_time`` (``shared.adapters.cloud_tasks``, which Cloud Tasks reads
against real time).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current time, in UTC."""

    def monotonic(self) -> float:
        """Seconds of a clock that never goes back, for durations."""


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()


_lock = threading.Lock()
_current: Clock = SystemClock()


def use(replacement: Clock) -> None:
    """Install the process's clock (the composition root does; tests install a fake)."""
    global _current
    with _lock:
        _current = replacement


def now() -> dt.datetime:
    return _current.now()


def monotonic() -> float:
    return _current.monotonic()

