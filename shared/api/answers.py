"""The shapes of the functions' JSON answers that are not records (``shared.domain.records`` holds
the run and status views): started runs, run control, errors, the error report, gaps, the sweep.

They are the response schemas of the OpenAPI document (``shared.api.openapi``); the schemathesis
run in ``tests/stack`` checks every answer the functions give against them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.domain.records import RunFields, RunStatusView
from shared.runs.launcher import StartedRun


class Deployment(BaseModel):
    """Where the answering bundle writes: every JSON answer names it (``deployment``)."""

    model_config = ConfigDict(extra="forbid")

    project: str
    database: str
    environment: str = Field(description="local, test, staging or prod")


class _Answer(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    deployment: Deployment | None = None


class ErrorAnswer(_Answer):
    """Any refusal: ``error`` is the code (``unauthenticated``, ``not_found``, ...)."""

    error: str
    message: str


class FieldError(_Answer):
    field: str
    reason: str


class InvalidAnswer(ErrorAnswer):
    """400: the first wrong field and why, and every wrong field."""

    field: str
    reason: str
    errors: list[FieldError]


class ConflictAnswer(ErrorAnswer):
    """409 and 429: the runs in the way."""

    blocking: list[str]


class StartedAnswer(_Answer):
    """A run started (202), or the run a twin schedule firing started already (200)."""

    migration_id: str
    status: str
    status_url: str
    chunks: int
    start_date: str
    end_date: str
    requested_end_date: str | None = None
    waiting_for: list[str] | None = None
    note: str | None = None
    duplicate: bool | None = None
    message: str | None = None
    retry_of: dict[str, Any] | None = None
    rollback_of: dict[str, Any] | None = None
    made_wait: list[str] | None = Field(None, description="active runs this one made wait "
                                        "(paused until it ends): they would have waited for "
                                        "it had they started after it")
    dry_run: bool = Field(description="true: the run writes only its shadow; false: it changes "
                                      "the ledger")

    @classmethod
    def of(cls, started: StartedRun, status_url: str, **more: Any) -> StartedAnswer:
        """The answer to a started run (``more``: ``retry_of``, ``rollback_of``),
        with a note for what the caller may not expect: an end date taken as its month's
        last day, a run that waits for others before it is planned."""
        notes: list[str] = []
        if started.requested_end_date:
            notes.append(f"endDate {started.requested_end_date} is past the end of its month; "
                         f"the run ends with {started.end_date}, the month's last day")
        if started.waiting_for:
            notes.append(f"waiting for {', '.join(started.waiting_for)}, active over these "
                         "dates: this run is planned once it has ended, so the refunds find "
                         "the purchases it applies")
        duplicate = {"duplicate": True, "message": "this schedule time started this run "
                     "already; nothing new started"} if started.duplicate else {}
        return cls(migration_id=started.migration_id, status=started.status.value,
                   status_url=f"{status_url.rstrip('/')}/{started.migration_id}",
                   chunks=started.chunks, start_date=started.start_date,
                   end_date=started.end_date, requested_end_date=started.requested_end_date,
                   waiting_for=list(started.waiting_for) or None,
                   dry_run=started.dry_run, note="; ".join(notes) or None, **duplicate,
                   **more)

    def answer(self) -> tuple[dict[str, Any], int]:
        """The body and status: 202 for a new run, 200 for a twin firing's run."""
        return self.model_dump(by_alias=True, exclude_none=True), 200 if self.duplicate else 202


class RunList(_Answer):
    runs: list[RunFields]


class RunAnswer(RunStatusView):
    """One run's status, with what reading a stalled run did to rescue it."""

    recovery: str | None = None
    deployment: Deployment | None = None


class ErrorRow(_Answer):
    """One row of the error report (``shared.runs.reports.COLUMNS``)."""

    event_id: str | None
    event_type: str | None
    code: str | None
    message: str | None
    hint: str | None
    attempts: int | None
    chunk_id: str | None
    at: dt.datetime | None
    resolved_by: str | None
    subject: str | None
    repaired: bool | None
    would_repair: bool | None


class ErrorReport(_Answer):
    migration_id: str
    count: int
    errors: list[ErrorRow]


class SteeredAnswer(_Answer):
    """pause, resume, cancel: where the run stands now, and whether this call moved it."""

    migration_id: str
    status: str
    previous_status: str
    chunks_moved: int
    changed: bool


class SteeredAllAnswer(_Answer):
    """pause, resume or cancel of many runs: how many matched, and each one's outcome (a run
    that moved meanwhile has ``changed: false`` and a ``message``)."""

    action: str
    matched: int
    runs: list[dict[str, Any]]


class PreflightCheck(_Answer):
    check: str = Field(description="switch, queue, pitr, indexes, alerting, products, estimate")
    status: str = Field(description="pass, warn or fail")
    detail: str
    action: str = Field(description="what to do about it (empty when nothing)")


class PreflightAnswer(_Answer):
    """Each check before a live run; ``result`` is the worst of them."""

    type: str
    start_date: str
    end_date: str
    result: str
    checks: list[PreflightCheck]


class SwitchAnswer(_Answer):
    """The kill switch after ``POST /api/admin/switch``: the runs it paused, and the
    deploy-time override (``BACKFILL_ENABLED``), which wins when false."""

    enabled: bool
    previously_enabled: bool
    reason: str
    by: str
    paused: list[str]
    deploy_time_enabled: bool


class SwitchState(_Answer):
    """The kill switch as stored, and whether backfills run (both switches on)."""

    enabled: bool
    reason: str
    by: str
    changed_at: dt.datetime | None
    deploy_time_enabled: bool
    running: bool


class ThrottleAnswer(_Answer):
    migration_id: str
    status: str
    max_events_per_second: int | None
    previous_max_events_per_second: int | None
    ceiling: float | None


class ProviderDay(_Answer):
    """With ``provider=true``: the day's distinct events in PayNow's webhook history, how many
    of them ``webhookEvents`` holds, and how many never arrived."""

    paynow: int
    stored: int
    never_arrived: int


class GapDay(_Answer):
    date: str
    unprocessed: dict[str, int]
    reversals_missing: int
    purchases_without_entry: int
    scanned: dict[str, int]
    complete: bool
    provider: ProviderDay | None = None
    never_arrived: int | None = None


class GapTotals(_Answer):
    unprocessed: dict[str, int]
    reversals_missing: int
    purchases_without_entry: int
    never_arrived: int | None = None


class GapsAnswer(_Answer):
    start_date: str
    end_date: str
    days: list[GapDay]
    totals: GapTotals
    complete: bool
    next: list[str] = Field(description="the runs that would close the gaps, in order")


class TraceWallet(_Answer):
    customer_id: str
    balance: int | None = Field(description="null: the customer has no wallet document")
    entries_sum: int
    matches: bool = Field(description="the balance (0 without a wallet) equals entriesSum")


class TraceItem(_Answer):
    at: str | None
    kind: str = Field(description="event, entry or record (a run's error or finding)")
    id: str
    what: str
    migration_id: str | None = None


class TraceDryRun(_Answer):
    migration_id: str
    outcome: str | None


class TraceEvent(_Answer):
    event_id: str
    event_type: str | None
    order_id: str | None
    customer_id: str | None
    received_at: str | None
    processed: bool
    processed_at: str | None
    state: str
    backfill_migration_id: str | None
    backfill_outcome: str | None
    rolled_back_by: str | None
    processing_error: str | None
    dry_run: TraceDryRun | None


class TraceEntry(_Answer):
    entry_id: str
    type: str | None
    points: int
    customer_id: str | None
    order_id: str | None
    source_event_id: str | None
    source: str | None
    migration_id: str | None
    created_at: str | None
    rolled_back_by: str | None
    compensates: str | None
    reinstates: str | None


class TraceRecord(_Answer):
    migration_id: str
    record_id: str
    event_id: str | None
    code: str | None
    message: str | None
    hint: str | None
    subject: str | None
    repaired: bool | None
    resolved_by: str | None
    at: str | None


class TraceDeed(_Answer):
    what: str | None = Field(description="applied, duplicate, skipped, unflagged, dry_run, "
                                          "wrote, rolled_back, reinstated, repaired, error, "
                                          "finding")
    event_id: str | None = None
    entry_id: str | None = None
    points: int | None = None
    outcome: str | None = None
    code: str | None = None
    subject: str | None = None
    repaired: bool | None = None
    resolved_by: str | None = None


class TraceRun(_Answer):
    migration_id: str
    type: str | None
    status: str | None
    dry_run: bool | None
    created_at: str | None
    requested_by: str | None
    link: str
    did: list[TraceDeed]


class TraceAnswer(_Answer):
    """What happened to one customer, order or event, in time order."""

    query: dict[str, str]
    customers: list[str]
    wallets: list[TraceWallet]
    timeline: list[TraceItem]
    events: list[TraceEvent]
    entries: list[TraceEntry]
    records: list[TraceRecord]
    runs: list[TraceRun]
    complete: bool = Field(description="false: a kind of document passed the trace's limit")


class SweepAnswer(_Answer):
    runs: int
    picked_up: int
    rounds: dict[str, str]
