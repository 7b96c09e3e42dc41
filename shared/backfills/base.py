"""What a backfill type is: what it reads, and how it applies one page of events.

A backfill definition is kept apart from the run record and from the executor that iterates a
chunk (``shared.executor.runner``). It is pure where it matters: ``plan`` turns a page of events
and the documents they refer to into outcomes and ledger effects without any I/O, so the same code
serves live runs, dry runs and unit tests. Every effect it plans is guarded by the executor's
commit (create-if-absent ledger ids, update-time preconditions), which is why a repeat is safe.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from google.cloud import firestore

from shared.config import Settings
from shared.domain.chunking import PlannedChunk, Window
from shared.domain.records import ChunkRecord, RunRecord
from shared.models import Outcome

if TYPE_CHECKING:  # the stores are built on these shapes: only the port's type is needed here
    from shared.adapters.stores import PlanStore


@dataclasses.dataclass(frozen=True)
class Event:
    """One item of a page: a ``webhookEvents`` document for the event types, a ledger entry
    for a rollback, whatever its source reads for another type (``data`` is its fields)."""

    event_id: str
    data: Mapping[str, Any]

    @property
    def event_type(self) -> str:
        value = self.data.get("eventType")
        return value if isinstance(value, str) else ""

    @property
    def received_at(self) -> dt.datetime:
        value = self.data["receivedAt"]
        assert isinstance(value, dt.datetime)
        return value


@dataclasses.dataclass(frozen=True)
class Stored:
    """A document a page refers to, as read before planning (``data`` None: it does not exist)."""

    data: Mapping[str, Any] | None
    update_time: dt.datetime | None = None
    # True when read from a dry run's shadow ledger rather than the ledger itself.
    shadowed: bool = False


@dataclasses.dataclass
class ItemResult:
    """One event's outcome; errors and skips say why (``code``, ``message``, ``hint``)."""

    event_id: str
    event_type: str
    outcome: Outcome
    code: str = ""
    message: str = ""
    hint: str = ""
    points: int = 0
    customer_id: str = ""
    # Whether the event's ledger effect now exists (or is nothing at all), so the event is
    # marked processed: true for applied and duplicate events, and for skips that say so.
    settled: bool | None = None
    # This run applied this very event already (a refund pulled its purchase forward): the
    # event is not counted again.
    repeat: bool = False
    # Outside the run's target (``shared.domain.target``): left as it was, counted as ``outside``.
    outside: bool = False
    # A reversal that needs its order's purchase entry (missing, or needed to know the
    # customer): a replay pulls the purchase ahead of it.
    wants_purchase: bool = False

    def __post_init__(self) -> None:
        if self.settled is None:
            self.settled = self.outcome in (Outcome.APPLIED, Outcome.DUPLICATE)


@dataclasses.dataclass(frozen=True)
class Finding:
    """A violation of the data contract an audit found (``ledger_verify``), kept as a record
    of the run (``record_id``: one per code and subject, so a repeat overwrites it), and
    whether this run repaired it."""

    code: str
    subject: str  # what it is about: "webhookEvents/e1", "ledgerEntries/...", "wallets/c1"
    message: str
    hint: str = ""
    event_id: str = ""
    event_type: str = ""
    repaired: bool = False
    # A dry run with ``repair``: what a live run would repair (``repaired`` stays False: the
    # dry run wrote nothing but its shadow).
    would_repair: bool = False

    @property
    def record_id(self) -> str:
        return f"{self.code}__{self.subject.replace('/', '__')}"


@dataclasses.dataclass
class PagePlan:
    """A page's outcomes and the writes that make them so.

    ``creates`` are new ledger entries (create-if-absent); ``updates`` are the changed fields of
    existing ledger entries, written under the update time they were read at; ``wallet_deltas``
    are summed per wallet.
    """

    results: list[ItemResult] = dataclasses.field(default_factory=list)
    creates: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    updates: dict[str, tuple[dict[str, Any], dt.datetime]] = dataclasses.field(
        default_factory=dict)
    wallet_deltas: dict[str, int] = dataclasses.field(default_factory=dict)
    # Changed fields of webhook events (a rollback clears the flags of what it undid); live
    # runs write them, dry runs do not.
    event_updates: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # An audit's findings, and the wallets its repairs were decided on: written under the
    # update time they were read at (``None``: the wallet did not exist), so a wallet that
    # moved meanwhile makes the page be planned again.
    findings: list[Finding] = dataclasses.field(default_factory=list)
    wallet_guards: dict[str, dt.datetime] = dataclasses.field(default_factory=dict)
    # The run's records of the customers whose whole ledger this page audited (created if
    # absent, like ledger entries: a customer is audited once per run, by the page that
    # commits its record first; a page that loses the race is planned again and reads it).
    audits: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    # Documents of other collections the page stores, by path (``collection/id``): created if
    # absent, like ledger entries (one that exists meanwhile fails the page's commit whole, and
    # the page is planned again on what is there). A dry run stores them in its shadow.
    documents: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # Counts by day and event type of what the page did (a recovery: the events it stored, or
    # would store), summed on the chunk with its cursor: each item once.
    tallies: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    def tally(self, day: str, event_type: str) -> None:
        self.tallies[day, event_type] = self.tallies.get((day, event_type), 0) + 1

    def credit(self, customer_id: str, points: int) -> None:
        self.wallet_deltas[customer_id] = self.wallet_deltas.get(customer_id, 0) + points


@dataclasses.dataclass(frozen=True)
class Page:
    """A page of items, where the cursor moves once it is applied, how many entries the source
    read for it (what the chunk's quota counts), whether more is to come after it, and the ids
    of items no longer there (a retry's events deleted since they failed)."""

    events: list[Event]
    cursor: dict[str, Any] | None
    read: int
    more: bool
    missing: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def empty(cls) -> Page:
        return cls([], None, 0, more=False)


class PageSource(Protocol):
    """Where a chunk's items come from, page by page. The source owns its cursor (a mapping
    of its own, saved with the page's commit) and says whether more is to come; the executor
    never guesses from a page's length."""

    def page(self, cursor: Mapping[str, Any] | None, limit: int) -> Page:
        """The next page of at most ``limit`` entries after ``cursor`` (None: from the start)."""

    def cursor_after(self, event: Event) -> dict[str, Any]:
        """The cursor that passes over ``event`` (a poison item set aside)."""


class Sink(Protocol):
    """Where a page's effects go (``shared.executor.sinks``): the live data, or a dry run's
    shadow of it. A type reads through it what it plans on, so a dry run plans on its own
    shadow."""

    @property
    def creates_if_absent(self) -> bool:
        """Whether its creates fail the commit when the document exists (so a page may
        assume a document it would create is absent: see ``Backfill``'s ``creates``)."""

    def read(self, paths: list[str]) -> dict[str, Stored]:
        """The documents at ``paths`` as this sink sees them."""

    def write(self, batch: firestore.WriteBatch, plan: PagePlan,
              stored: dict[str, Stored]) -> None:
        """The page's effects: ledger entries, changed entries, wallet increments, stored
        documents."""

    def flag(self, batch: firestore.WriteBatch, results: Iterable[ItemResult],
             already: set[str]) -> None:
        """Mark each event with its outcome; events ``already`` processed whose entry exists
        (duplicates) are left as the live path flagged them."""

    def customer_ledger(self, customer_id: str) -> tuple[dict[str, Stored], Stored]:
        """One customer's every ledger entry (by path) and their wallet, as this sink sees
        them, read so they agree: the wallet is read again after the entries, and all of it
        again if it moved in between."""


class Backfill(Protocol):
    """A backfill type, the whole job definition, declared once in its own module and
    registered by name in ``shared.backfills.registry``; nothing else needs to know it:

    - what it is: its ``name``, ``event_types``, ``error_codes``, ``page_size``;
    - its **source** (``source``): how a chunk's items are read page by page;
    - how **planning sizes** a window (``size``): a count, an estimate, or None ("unknown:
      take it whole and let the executor find out"; such a chunk is never idle);
    - its **effects** (``plan``): what one page writes, as a ``PagePlan``;
    - its **admission**: ``options`` it takes, the types it ``waits_for``, and ``refusal``
      (what it refuses to retry or roll back);
    - its **hooks** where it differs from the default: ``fetch`` (the items a retry takes
      again, by id), and the optional ``chunks(run, plans)`` (its own chunks instead of
      windows, as a rollback's), ``pull(events, page, plan, window)`` (items to apply ahead
      of a page's, as a replay pulls the purchases its refunds lack) and
      ``gather(db, sink, events, stored, migration_id, window)`` (documents beyond
      ``lookups``, as ``ledger_verify`` reads a customer's whole ledger) and
      ``admit(settings, start_date, today)`` (raises ``InvalidRequest`` for a request it
      refuses, as a recovery refuses days its provider no longer keeps) and
      ``creates(events)`` (paths among ``lookups`` that ``plan`` reads only to learn they are
      absent, to create them: a sink whose creates fail on an existing document may leave
      them unread, as the live ledger does until one such create fails).
    """

    @property
    def name(self) -> str:
        """The ``type`` of the requests and runs of this backfill, e.g. ``webhook_replay``."""

    @property
    def error_codes(self) -> tuple[str, ...]:
        """The codes of the per-item errors it records (the executor adds its own)."""

    @property
    def page_size(self) -> int | None:
        """Items per page and commit, if this type needs fewer than ``BACKFILL_PAGE_SIZE``."""

    @property
    def waits_for(self) -> tuple[str, ...]:
        """Types whose active runs over the same dates a new run of this type waits for
        before it is planned (its events depend on theirs)."""

    @property
    def options(self) -> frozenset[str]:
        """The request fields beyond the common ones that this type takes."""

    @property
    def event_types(self) -> tuple[str, ...]:
        """The event types it applies (those a targeted run's ``eventTypes`` may name)."""

    @property
    def flags_events(self) -> bool:
        """Whether its items are webhook events, flagged with their outcome as they are
        applied (a rollback's items are ledger entries)."""

    def variant(self, run: Mapping[str, Any]) -> Backfill:
        """The definition a run's options select (itself, without options)."""

    def refusal(self, action: str) -> str | None:
        """Why a run of this type refuses ``action`` ("retry", "rollback"), or None."""

    def source(self, db: firestore.Client, chunk: ChunkRecord, settings: Settings) -> PageSource:
        """The source of a chunk of this type's run (a retry's chunk is the executor's);
        ``settings`` name what a source outside Firestore needs (a provider's URL and key)."""

    def size(self, plans: PlanStore, window: Window) -> int | None:
        """How many items a chunk of ``window`` holds (None: unknown)."""

    def fetch(self, db: firestore.Client, ids: Sequence[str]) -> tuple[list[Event], list[str]]:
        """The items ``ids`` as they are now, and the ids of those gone (a retry's page)."""

    def lookups(self, events: Sequence[Event]) -> list[str]:
        """Paths of the documents ``plan`` needs, read in one round trip before planning."""

    def plan(self, events: Sequence[Event], stored: Mapping[str, Stored],
             migration_id: str) -> PagePlan:
        """Outcomes and effects of applying ``events`` in order, given ``stored`` documents."""


@runtime_checkable
class Chunks(Protocol):
    """The optional planning hook of a type with chunks of its own (a rollback's)."""

    def chunks(self, run: RunRecord, plans: PlanStore) -> list[PlannedChunk]:
        """The run's chunks, sized."""
