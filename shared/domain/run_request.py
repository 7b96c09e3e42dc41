"""A run's request once validated: what the launcher admits and plans from. Parsed from the
trigger's body by ``shared.api.bodies``; built by run control for the runs it starts."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict


class BackfillRequest(BaseModel):
    """A validated run request with its range resolved to UTC days (``endDate`` inclusive).

    ``maxEvents`` bounds how many events the run takes, oldest first; without it the run takes
    every eligible event of the range. ``lookback_days`` is kept when the range was given that
    way (Cloud Scheduler's nightly job). ``force`` lets the run start past the concurrency limit
    and beside an overlapping active run.
    """

    model_config = ConfigDict(frozen=True)

    type: str
    start_date: dt.date
    end_date: dt.date
    dry_run: bool = False
    max_events: int | None = None
    # The run's ceiling in events per second (None: BACKFILL_MAX_EVENTS_PER_SECOND, if set).
    max_events_per_second: int | None = None
    lookback_days: int | None = None
    # The money guardrails (None: the settings' defaults; ``shared.executor.guard``).
    max_points: int | None = None
    max_points_per_customer: int | None = None
    allow_negative_wallets: bool | None = None
    # The completed dry run this live run was reviewed from (shared.runs.plans).
    plan_of: str | None = None
    force: bool = False
    include_processed: bool = False
    # ledger_verify: repair what is safe to repair.
    repair: bool = False
    # A targeted run's eventTypes, customerIds, orderIds and eventIds (``shared.domain.target``).
    target: dict[str, list[str]] | None = None
    # The endDate as sent, when it named a day past its month's end (e.g. 2024-11-31), which
    # the request takes as the month's last day (``end_date``).
    requested_end_date: str | None = None
    # Why it is started (a ticket, an incident id); a live run in production must say.
    reason: str = ""

    @property
    def days(self) -> int:
        return (self.end_date - self.start_date).days + 1
