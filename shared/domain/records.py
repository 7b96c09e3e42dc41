"""The bundle's own records, typed: runs (``dataMigrations/{id}``), their chunks and their error
records, read from Firestore in one place.

Field names in Firestore are camelCase (``leaseUntil``); in Python they are snake_case
(``lease_until``): the models' alias generator maps one to the other, so no module spells a
Firestore key of these documents by hand when it reads one. ``from_snapshot`` keeps the
document's update time, which writes under a precondition need, and the time it was read at, at
which further reads can see the database exactly as it was then (the status answer reads all its
parts at its run's read time). Unknown fields are ignored, so a document written by a newer
version still reads.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.models import ChunkState, RunStatus


class _Shape(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore",
                              frozen=True)


class _Record(_Shape):
    # When the document was last written (None for a record not read from Firestore).
    update_time: dt.datetime | None = Field(None, exclude=True)
    # When it was read (None for a record not read from Firestore): a time other reads may be
    # made at (``read_time``), to see the database as this record saw it.
    read_time: dt.datetime | None = Field(None, exclude=True)

    @classmethod
    def from_document(cls, document_id: str, data: dict[str, Any],
                      update_time: dt.datetime | None = None,
                      read_time: dt.datetime | None = None) -> Self:
        return cls.model_validate({**data, "id": document_id, "update_time": update_time,
                                   "read_time": read_time})

    @classmethod
    def from_snapshot(cls, snap: Any) -> Self:
        """The record of a Firestore snapshot that exists."""
        return cls.from_document(snap.id, snap.to_dict() or {}, snap.update_time,
                                 getattr(snap, "read_time", None))

    def fields(self) -> dict[str, Any]:
        """The fields this record was built with, as its document names them (camelCase; not
        its id): what a write of it sets, and nothing it was not given (a merge keeps the
        rest of the document)."""
        given = self.model_fields_set - {"update_time", "read_time", "id"}
        fields: dict[str, Any] = self.model_dump(by_alias=True, include=given)
        return fields


class Counters(_Shape):
    """A chunk's counts (the run's counter shards): each event once, with its outcome."""

    taken: int = 0
    applied: int = 0
    duplicates: int = 0
    skipped: int = 0
    errors: int = 0
    # Events a targeted run read but left alone (outside its target).
    outside: int = 0
    points: int = 0


# The counter names, as the chunk documents store them.
COUNTERS = tuple(Counters.model_fields)


class SwitchRecord(_Record):
    """The stored kill switch: on unless an operator switched it off, with who, why and when."""

    enabled: bool = True
    reason: str = ""
    by: str = ""
    changed_at: dt.datetime | None = None


class RunRecord(_Record):
    """One run: its parameters, status and why, and what planning found."""

    id: str
    type: str  # a registered backfill type (shared.backfills.registry)
    status: RunStatus
    dry_run: bool = False
    start_date: dt.date
    end_date: dt.date
    max_events: int | None = None
    max_events_per_second: int | None = None
    lookback_days: int | None = None
    forced: bool = False
    include_processed: bool = False
    # ledger_verify: repair what is safe to repair (not only report it).
    repair: bool = False
    # A targeted run's eventTypes, customerIds, orderIds, eventIds (``shared.domain.target``).
    target: dict[str, list[str]] | None = None
    requested_end_date: str | None = None
    waiting_for: list[str] = Field(default_factory=list)
    retry_of: dict[str, Any] | None = None
    # For a rollback run: the run it rolls back, and how many entries that run wrote.
    rollback_of: dict[str, Any] | None = None
    # The dry run a live run was reviewed from: {migrationId, total, catalog} as it ended
    # (shared.runs.plans); a dry run's own catalog of product points, as its planning read it.
    plan_of: dict[str, Any] | None = None
    catalog: dict[str, Any] | None = None
    # Who approved a run that awaited approval.
    approved_by: str | None = None
    # The live runs a paused run waits for to end before it resumes by itself
    # (shared.runs.control.make_way).
    paused_for: list[str] = Field(default_factory=list)
    # The money guardrails (shared.executor.guard): None is no cap.
    max_points: int | None = None
    max_points_per_customer: int | None = None
    allow_negative_wallets: bool = True
    # A whole minute just before the run began (Firestore point-in-time recovery reads at
    # whole minutes): the database as of then holds none of its writes.
    pitr_timestamp: dt.datetime | None = None
    chunk_days: int = 1
    chunk_count: int = 0
    received_before: dt.datetime | None = None
    planned: bool = False
    # False when its type could not count its items (``eligible`` and ``total`` unknown: they
    # are known only as its chunks end).
    counted: bool = True
    eligible: int | None = None
    total: int | None = None
    requested_by: str = ""
    # Why it was started (a ticket, an incident id), as its starter said.
    reason: str = ""
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    status_reason: str = ""
    status_history: list[dict[str, Any]] = Field(default_factory=list)
    failure_reason: str = ""
    # The number of its last status notice (``backfillNotices/{id}-{seq}``): each status change
    # creates the next one in the commit that makes it (``shared.adapters.notices``).
    notice_seq: int = 0

    @property
    def migration_id(self) -> str:
        return self.id

    def to_document(self) -> dict[str, Any]:
        """The run as its Firestore document holds it (camelCase keys, dates as ISO strings:
        Firestore stores no bare dates); an empty failure reason is left out."""
        document: dict[str, Any] = self.model_dump(by_alias=True,
                                                   exclude={"update_time", "read_time", "id"})
        document.update(migrationId=self.id, startDate=self.start_date.isoformat(),
                        endDate=self.end_date.isoformat())
        if not self.failure_reason:
            del document["failureReason"]
        return document


class ChunkRecord(_Record):
    """One chunk of a run: its window (or source), state, cursor, lease and counters."""

    id: str
    index: int = 0
    state: ChunkState
    segment: int = 0
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None
    source: dict[str, Any] | None = None
    eligible: int | None = 0  # None: its type could not count it
    quota: int | None = None
    cursor: dict[str, Any] | None = None
    lease_owner: str | None = None
    lease_until: dt.datetime | None = None
    counters: Counters = Field(default_factory=Counters)
    # By day, then event type: what a type tallies (``PagePlan.tallies``).
    tallies: dict[str, dict[str, int]] = Field(default_factory=dict)
    read: int = 0
    pages: int = 0
    below_zero: list[str] = Field(default_factory=list)
    # What the status answer reads instead of every chunk (``shared.executor.commit.marks``):
    # per code, the error records and findings its pages wrote (a record written twice, once
    # per write); and whether a page of it took a wallet below zero or tallied.
    error_codes: dict[str, int] = Field(default_factory=dict)
    notable: bool = False
    pickups: int = 0
    # Points of the run's maxPoints this chunk reserved and has not spent (shared.executor.guard).
    allowance: int = 0
    suspect: dict[str, Any] | None = None
    note: str = ""
    failure_reason: str = ""
    claimed_at: dt.datetime | None = None
    taken_at_claim: int = 0
    updated_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @property
    def chunk_id(self) -> str:
        return self.id

    def to_document(self) -> dict[str, Any]:
        """The chunk as its Firestore document holds it (camelCase keys)."""
        document: dict[str, Any] = self.model_dump(by_alias=True,
                                                   exclude={"update_time", "read_time", "id"})
        return document


class ErrorRecord(_Record):
    """One failed event of a run (its id is the event's), and the retry that settled it."""

    id: str
    event_id: str = ""
    event_type: str = ""
    code: str = ""
    message: str = ""
    hint: str = ""
    chunk_id: str = ""
    attempts: int = 0
    at: dt.datetime | None = None
    resolved_by: str | None = None
    # An audit's finding: what it is about, whether the run repaired it, and (a dry run) whether
    # a live run would.
    subject: str = ""
    repaired: bool | None = None
    would_repair: bool | None = None


class ChunkTotals(_Shape):
    """A run's chunks summed (``ChunkStore.summary``): how many there are, the sums of their
    counters, how many are in each state, and per error code the sums of their ``error_codes``
    (the records their pages wrote)."""

    chunks: int
    counters: Counters
    states: dict[ChunkState, int]
    error_codes: dict[str, int]


# --- the status answer ---------------------------------------------------------------------


class RunFields(_Shape):
    """A run's parameters and status, as the status function lists runs."""

    migration_id: str
    type: str
    status: RunStatus
    status_reason: str
    dry_run: bool
    start_date: dt.date
    end_date: dt.date
    lookback_days: int | None
    max_events: int | None
    max_events_per_second: int | None
    retry_of: dict[str, Any] | None
    rollback_of: dict[str, Any] | None
    plan_of: dict[str, Any] | None
    approved_by: str | None
    max_points: int | None
    max_points_per_customer: int | None
    allow_negative_wallets: bool
    pitr_timestamp: dt.datetime | None
    forced: bool
    planned: bool
    eligible: int | None
    total: int | None
    chunk_count: int
    requested_by: str
    reason: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    failure_reason: str
    received_before: dt.datetime | None
    include_processed: bool
    repair: bool
    target: dict[str, list[str]] | None
    requested_end_date: str | None
    waiting_for: list[str]

    @classmethod
    def of(cls, run: RunRecord, **more: Any) -> Self:
        fields = {name: getattr(run, name) for name in RunFields.model_fields
                  if name != "migration_id"}
        return cls.model_validate({**fields, "migration_id": run.migration_id, **more})


class ChunkView(_Shape):
    chunk_id: str
    state: ChunkState
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    eligible: int | None
    quota: int | None
    taken: int
    applied: int
    duplicates: int
    skipped: int
    errors: int
    segment: int
    pages: int
    cursor_event_id: str | None
    updated_at: dt.datetime | None
    lease_until: dt.datetime | None
    pickups: int
    note: str


class ErrorView(_Shape):
    event_id: str
    event_type: str
    code: str
    message: str
    hint: str
    chunk_id: str
    attempts: int
    at: dt.datetime | None


class WalletsBelowZero(_Shape):
    count: int
    customer_ids: list[str]


class LiveEstimate(_Shape):
    """A dry run's estimate of its live run (``shared.domain.estimate``) and what it assumed:
    the events the dry run would apply, its chunks, one chunk's page-loop rate, the chunks the
    queue runs at once, the ramp and the ceiling."""

    seconds: float
    bound_by: str
    events: int
    chunks: int
    chunk_events_per_second: float
    concurrency: int
    ramp_start_writes: int
    ramp_step_minutes: float
    ceiling: float | None


class RunStatusView(RunFields):
    """One run's status answer: its fields, the sums of its chunks' counters, its pace, its
    chunks and its first errors. In a dry run every count says what the run would have done."""

    total: int
    processed: int
    applied: int
    duplicates: int
    skipped: int
    errors: int
    outside: int
    taken: int
    points_moved: int
    percent: float
    left_for_later_run: int
    wallets_below_zero: WalletsBelowZero
    chunk_states: dict[str, int]
    rate: float
    average_rate: float
    eta_seconds: int | None
    last_checkpoint_at: dt.datetime | None
    last_checkpoint_age_seconds: float | None
    stalled: bool
    stalled_chunks: list[str]
    # The events per second the run may apply now (the throttle), while it is active.
    ceiling: float | None
    status_history: list[dict[str, Any]]
    error_codes: dict[str, int]
    # By day, then event type, what the run's type tallies (a recovery: the events it stored,
    # or in a dry run would store); empty for the others.
    tallies: dict[str, dict[str, int]] = Field(default_factory=dict)
    errors_url: str
    # One page of the chunks, in planning order: ``chunks_per_page`` of them from the chunk of
    # planning index ``chunks_from`` (``chunkStates`` counts them all); ``next_chunks`` and
    # ``previous_chunks`` are the paths of the pages around it (None at either end).
    chunks: list[ChunkView]
    chunks_from: int
    chunks_per_page: int
    next_chunks: str | None
    previous_chunks: str | None
    first_errors: list[ErrorView]
    # A dry run's: how long its live run would take (None for a live run).
    live_estimate: LiveEstimate | None = None
    note: str | None = None
