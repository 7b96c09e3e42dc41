"""The bundle's clock: UTC wall time. One place, so that what uses the time can be given
another clock in tests."""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
