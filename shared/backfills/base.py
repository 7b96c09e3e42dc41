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
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from google.cloud import firestore

from shared.domain.chunking import Window
from shared.models import Outcome


@dataclasses.dataclass(frozen=True)
class Event:
    """One ``webhookEvents`` document as read from a page."""

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

    def credit(self, customer_id: str, points: int) -> None:
        self.wallet_deltas[customer_id] = self.wallet_deltas.get(customer_id, 0) + points


class Backfill(Protocol):
    """A backfill type, the whole job definition: its name, what it reads, how it applies a page
    of events, the error codes it records, its page size, the types it waits for and the request
    options it takes. Declared once, in its own module, and registered by name in
    ``shared.backfills.registry``; nothing else needs to know it.

    Two optional hooks, looked up by the page commit: ``pull(events, page, plan, window)``
    (events to apply ahead of the page's, as a replay pulls the purchases its refunds lack) and
    ``gather(db, ledger, events, stored, migration_id, window)`` (documents beyond ``lookups``, read
    before planning through the run's ledger sink, as ``ledger_verify`` reads a customer's
    whole ledger).
    """

    @property
    def name(self) -> str:
        """The ``type`` of the requests and runs of this backfill, e.g. ``webhook_replay``."""

    @property
    def error_codes(self) -> tuple[str, ...]:
        """The codes of the per-event errors it records (the executor adds its own)."""

    @property
    def page_size(self) -> int | None:
        """Events per page and commit, if this type needs fewer than ``BACKFILL_PAGE_SIZE``."""

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

    def selection(self, events: firestore.CollectionReference, window: Window) -> Any:
        """The query of the events a chunk takes (without order, cursor or limit)."""

    def lookups(self, events: Sequence[Event]) -> list[str]:
        """Paths of the documents ``plan`` needs, read in one round trip before planning."""

    def plan(self, events: Sequence[Event], stored: Mapping[str, Stored],
             migration_id: str) -> PagePlan:
        """Outcomes and effects of applying ``events`` in order, given ``stored`` documents."""
