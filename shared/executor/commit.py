"""The page commit: plan one page, write all its effects in one atomic batch, account for it.

The batch holds the page's effects through the delivery's sink (ledger entries, wallet
increments, stored documents: live, or a dry run's shadow), its items' flags, its error
records, and the chunk's new cursor and counters, guarded by the chunk's lease. If anything it
read moved before the commit (another delivery claimed the chunk, the live path wrote an entry,
a refund of the same order landed), the batch fails whole and the caller reads the page again;
nothing of it was written.

Counters move only with the cursor, so they count each event once however often a page runs.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from shared import logs
from shared.adapters import schema
from shared.adapters.write_token import UNSURE
from shared.backfills.base import Event, ItemResult, Page, PagePlan, Stored
from shared.backfills.registry import BACKFILLS
from shared.config import Settings
from shared.domain import lifecycle
from shared.errors import EventMissing
from shared.executor import sinks
from shared.executor.context import Context
from shared.executor.guard import Guard
from shared.executor.lease import Lease
from shared.models import ChunkState, Outcome

logger = logging.getLogger(__name__)

# The messages of the page line and of a failed event's line (Terraform's
# var.page_log_message and var.failure_log_message: the metrics read these lines).
PAGE_MESSAGE = "page applied"
FAILURE_MESSAGE = "event failed"

_COUNTER_OF = {Outcome.APPLIED: "applied", Outcome.DUPLICATE: "duplicates",
               Outcome.SKIPPED: "skipped", Outcome.ERROR: "errors"}


@dataclasses.dataclass(frozen=True)
class Committed:
    """A page went through: how many source entries it took, whether it was the chunk's last,
    and how many of its items failed."""

    read: int
    final: bool
    errors: int


@dataclasses.dataclass
class Planned:
    """A page as planned, before anything is written: its plan, the items pulled in from
    elsewhere to apply ahead of it, the documents it was planned on, the items processed
    already, and the wallets it takes from zero or more to below zero."""

    plan: PagePlan
    pulled: list[Event]
    stored: dict[str, Stored]
    already: set[str]
    below_zero: list[str]
    # The chunk fields the run's guardrails write with the page (``shared.executor.guard``).
    guarded: dict[str, Any] = dataclasses.field(default_factory=dict)


class PageCommit:
    """Commits the pages of one delivery's chunk in three steps: ``plan`` (reads through the
    sink, no write), ``write`` (the page's one batch) and ``account`` (counts and log lines,
    once the batch landed)."""

    def __init__(self, context: Context) -> None:
        self._context = context
        # Products are reference data the page only reads: read each once per delivery.
        self._products: dict[str, Stored] = {}
        # Whether pages leave unread the documents they would create (``_assumed``): until one
        # such create fails for this delivery, after which every page reads them.
        self._assume_absent = context.sink.creates_if_absent
        self._guard = Guard(context.settings, context.db, context.run, context.chunk_id)

    def commit(self, lease: Lease, selection: Page, limit: int,
               committing: Callable[[bool], None] = lambda final: None) -> Committed | None:
        """Plan and commit ``selection`` (read with ``limit``); None when it must be read again
        (a conflict, or more than one commit takes: ``schema.fits_one_commit``). ``Lost`` when
        the chunk is no longer this delivery's; ``Crossed`` when the page would cross one of
        the run's guardrails (nothing of it is written).

        ``committing(final)`` is called just before a commit that writes only the page's own
        items (none pulled in from elsewhere), so the next page may be read meanwhile: the
        commit cannot change any item after this page's cursor."""
        began = self._context.monotonic()
        planned = self.plan(selection)
        final = is_final(selection, limit, lease.left)
        batch = self._context.db.batch()
        planned.guarded = self._guard.check(batch, lease.chunk.allowance,
                                            planned.plan.wallet_deltas, planned.below_zero,
                                            final)
        self.write(batch, lease, selection, planned, final)
        if len(selection.events) > 1 and not schema.fits_one_commit(batch):
            return None  # too many writes or bytes for one commit (purchases pulled in, large
            # documents stored): the caller reads half the page
        if not planned.pulled:
            committing(final)
        try:
            results = batch.commit()
        except UNSURE as error:
            # Something moved since the page was read, or the commit landed and its answer
            # was lost (the client's retry of it is refused by its precondition): the chunk
            # says which. Landed: go on from its cursor; not landed, still ours: read again.
            landed = lease.landed(error)
            if landed is None:
                if isinstance(error, api_exceptions.AlreadyExists):
                    self._assume_absent = False  # a document assumed absent exists: read
                time.sleep(random.uniform(0.01, 0.05))  # noqa: S311 (jitter)
                return None
        else:
            landed = results[-1].update_time
        lease.committed(landed, selection.cursor, selection.read, clears(lease, selection),
                        planned.guarded)
        return self.account(selection, planned, final, began)

    def plan(self, selection: Page) -> Planned:
        """The page planned on what the sink reads now: its items' outcomes and effects, an
        ``event_missing`` error for each item gone, and the wallets it takes below zero."""
        events = selection.events
        plan, pulled, stored = self._plan(events)
        already = {event.event_id for event in [*pulled, *events]
                   if event.data.get("processed") is True}
        for event_id in selection.missing:
            missing = EventMissing(event_id)
            plan.results.append(ItemResult(event_id, "", Outcome.ERROR, code=missing.code,
                                           message=missing.message))
        return Planned(plan, pulled, stored, already, self._below_zero(plan))

    def write(self, batch: firestore.WriteBatch, lease: Lease, selection: Page,
              planned: Planned, final: bool) -> None:
        """Everything the page writes, into ``batch``: its effects through the sink, its
        items' flags, error records, findings and audits, the retried run's resolved records,
        and the chunk's cursor and counters under the lease."""
        context, plan = self._context, planned.plan
        db, migration_id, chunk_id = context.db, context.migration_id, context.chunk_id
        context.sink.write(batch, plan, planned.stored)
        if context.backfill.flags_events:
            context.sink.flag(batch, plan.results, planned.already)
        for result in plan.results:
            if result.outcome is Outcome.ERROR:
                sinks.record_error(db, batch, migration_id, chunk_id, result)
        for finding in plan.findings:
            sinks.record_finding(db, batch, migration_id, chunk_id, finding)
        for customer_id, audit in plan.audits.items():
            sinks.record_audit(db, batch, migration_id, customer_id, audit)
        retried = (lease.chunk.source or {}).get("errorsOf")
        if retried and not context.dry_run:
            # Only the page's own items have error records in the retried run: a purchase a
            # refund pulled in may have none.
            own = {event.event_id for event in selection.events}
            sinks.mark_resolved(db, batch, retried, migration_id,
                                [result for result in plan.results if result.event_id in own])
        if final:
            # The lease guarantees the chunk is still as read: running, ours.
            lifecycle.chunk_move(lease.chunk.state, ChunkState.COMPLETED)
        lease.guard(batch, checkpoint(context.settings, selection, planned, final,
                                      clears(lease, selection)))

    def account(self, selection: Page, planned: Planned, final: bool,
                began: float) -> Committed:
        """The page landed: log its failed items and its page line; what it counted."""
        context = self._context
        counts = counts_of(planned.plan)
        for result in planned.plan.results:
            if result.outcome is Outcome.ERROR:
                log_failure(context.migration_id, context.chunk_id, result.event_id,
                            result.event_type, result.code, context.dry_run)
        logs.log(logger, PAGE_MESSAGE, migration_id=context.migration_id,
                 chunk_id=context.chunk_id, type=context.run.type, event_count=selection.read,
                 dry_run=context.dry_run, processed=counts["applied"] + counts["duplicates"],
                 duration_ms=int((context.monotonic() - began) * 1000), **counts)
        return Committed(selection.read, final, counts["errors"])

    def _plan(self, events: list[Event]) -> tuple[PagePlan, list[Event], dict[str, Stored]]:
        """The page's plan, the purchases from other pages it applies ahead of its refunds,
        and the documents the plan was made on."""
        context = self._context
        backfill, migration_id = context.backfill, context.migration_id
        stored = self._read(backfill.lookups(events), self._assumed(events))
        gather = getattr(backfill, "gather", None)
        if gather is not None:
            # An audit's wider reads (a customer's whole ledger), made before planning too.
            stored.update(gather(context.db, context.sink, events, stored, migration_id,
                                 context.window))
        plan = backfill.plan(events, stored, migration_id)
        ahead = self._pull(events, plan)
        if ahead is None:
            return plan, [], stored
        # Purchases go ahead of the refunds that need them, whether they come from another page
        # or later in this one. Read again after the pull's query, even if it found nothing: a
        # purchase its own chunk applied meanwhile is visible now.
        ahead_ids = {event.event_id for event in ahead}
        ordered = [*ahead, *(event for event in events if event.event_id not in ahead_ids)]
        stored = self._read(backfill.lookups(ordered), self._assumed(ordered))
        plan = backfill.plan(ordered, stored, migration_id)
        outside = ahead_ids - {event.event_id for event in events}
        # A purchase from another page counts here only if this commit settles it. One that
        # fails or is skipped stays unprocessed, so its own chunk takes it and counts it:
        # recording it here too would count it twice. Rules leave no trace of an event they
        # fail or skip, so dropping its result drops all of it.
        plan.results = [result for result in plan.results
                        if result.event_id not in outside or result.settled]
        settled = {result.event_id for result in plan.results}
        return plan, [event for event in ahead if event.event_id in outside & settled], stored

    def _assumed(self, events: list[Event]) -> set[str]:
        """Documents the page would create that it need not read: absent unless the commit
        says otherwise. Why that is safe: the live ledger creates them with create-if-absent,
        so one that exists fails the whole commit (nothing of the page is written) and the
        page is planned again on what it reads, now that ``_assume_absent`` is off."""
        creates = getattr(self._context.backfill, "creates", None)
        if not self._assume_absent or creates is None:
            return set()
        assumed: set[str] = creates(events)
        return assumed

    def _read(self, paths: list[str], assumed: set[str]) -> dict[str, Stored]:
        """The documents at ``paths`` as the sink sees them (left out: those ``assumed``
        absent), products from this delivery's cache once read."""
        products = f"{schema.PRODUCTS}/"
        wanted = [path for path in dict.fromkeys(paths)
                  if path not in self._products and path not in assumed]
        found = self._context.sink.read(wanted)
        self._products.update((path, document) for path, document in found.items()
                              if path.startswith(products))
        found.update((path, self._products[path]) for path in paths if path in self._products)
        return found

    def _pull(self, events: list[Event], plan: PagePlan) -> list[Event] | None:
        """Purchases to apply ahead of the page's refunds that lack them; None: none lack one
        (or the backfill type does not pull)."""
        pull = getattr(self._context.backfill, "pull", None)
        if pull is None or not any(r.wants_purchase for r in plan.results):
            return None
        pulled: list[Event] = pull(self._context.db.collection(schema.EVENTS), events, plan,
                                   self._context.window)
        return pulled

    def _below_zero(self, plan: PagePlan) -> list[str]:
        """Wallets this page takes from zero or more to below zero (their points were spent)."""
        debited = {cid: delta for cid, delta in plan.wallet_deltas.items() if delta < 0}
        if not debited:
            return []
        stored = self._context.sink.read([f"{schema.WALLETS}/{cid}" for cid in debited])
        result = []
        for cid, delta in debited.items():
            wallet = stored.get(f"{schema.WALLETS}/{cid}")
            balance = int((wallet.data or {}).get("balance", 0)) if wallet else 0
            if balance >= 0 > balance + delta:
                result.append(cid)
        return result


def is_final(selection: Page, limit: int, left: int | None) -> bool:
    """Whether the page is its chunk's last: its source says nothing more is to come, or the
    chunk's quota (``left`` before it) ends with it."""
    return not selection.more or limit == 0 or (left is not None and selection.read >= left)


def clears(lease: Lease, selection: Page) -> bool:
    """Whether the page holds the chunk's suspect (it went through after all)."""
    suspect = lease.chunk.suspect
    return bool(suspect) and any(event.event_id == (suspect or {}).get("eventId")
                                 for event in selection.events)


def checkpoint(settings: Settings, selection: Page, planned: Planned, final: bool,
               clears_suspect: bool) -> dict[str, Any]:
    """The chunk's fields the page's commit writes: its cursor, lease and counters (each
    item once: a repeat of one this run applied is not counted again; pulled purchases are
    counted where they were applied), the wallets it took below zero, and, for its last
    page, the chunk completed."""
    plan = planned.plan
    update: dict[str, Any] = {
        **progressed(settings, selection.read, selection.cursor),
        "counters.taken": firestore.Increment(
            selection.read + len(planned.pulled) - sum(r.repeat for r in plan.results)),
        "counters.points": firestore.Increment(sum(r.points for r in plan.results)),
    }
    for name, count in counts_of(plan).items():
        if count:
            update[f"counters.{name}"] = firestore.Increment(count)
    for (day, event_type), count in plan.tallies.items():
        update[FieldPath("tallies", day, event_type or "-").to_api_repr()] = \
            firestore.Increment(count)
    update.update(marks(plan, planned.below_zero))
    update.update(planned.guarded)
    if clears_suspect:
        update["suspect"] = None  # it went through after all: its failure was passing
    if planned.below_zero:
        update["belowZero"] = firestore.ArrayUnion(planned.below_zero)
    if final:
        update.update(state=ChunkState.COMPLETED.value, leaseOwner=None,
                      finishedAt=firestore.SERVER_TIMESTAMP)
    return update


def marks(plan: PagePlan, below_zero: list[str]) -> dict[str, Any]:
    """The chunk fields the status answer reads instead of every chunk document
    (``shared.runs.progress``), written in the page's commit with its counters: ``recorded``
    for each error record and finding the commit writes (``PageCommit.write``), and
    ``notable`` when the page takes a wallet below zero or tallies, so that the status reads
    whole only the chunks that hold either."""
    update = recorded([result.code for result in plan.results
                       if result.outcome is Outcome.ERROR]
                      + [finding.code for finding in plan.findings])
    if below_zero or plan.tallies:
        update[schema.NOTABLE] = True
    return update


def recorded(codes: list[str]) -> dict[str, Any]:
    """``errorCodes.<code>`` up by the records a commit writes of each code in ``codes`` (none:
    nothing). Each write counts, so a record written again (its id is its event's or its
    finding's: the write overwrites it) counts twice; the status answer tells by the number of
    records and then counts those of the codes written (``shared.runs.progress``).

    Every registered code is written, most with 0, so that a chunk holds all of them or none:
    the status sums them in one aggregation, and an aggregation takes only the documents that
    hold every field it sums (the emulator's, at least)."""
    if not codes:
        return {}
    counted = Counter(code or "-" for code in codes)
    every = dict.fromkeys(BACKFILLS.error_codes(), 0) | counted
    return {FieldPath(schema.ERROR_CODES, code).to_api_repr(): firestore.Increment(count)
            for code, count in every.items()}


def log_failure(migration_id: str, chunk_id: str, event_id: str, event_type: str, code: str,
                dry_run: bool) -> None:
    """One failed event's ERROR line: its ids and error code, never its payload nor the
    message (which may quote payload values)."""
    logs.log(logger, FAILURE_MESSAGE, logging.ERROR, migration_id=migration_id,
             chunk_id=chunk_id, event_id=event_id, event_type=event_type, code=code,
             dry_run=dry_run)


def progressed(settings: Settings, read: int, cursor: dict[str, Any] | None) -> dict[str, Any]:
    """The chunk fields every commit that moves its cursor writes: one more page, ``read``
    more entries, the cursor, a renewed lease."""
    update: dict[str, Any] = {
        "updatedAt": firestore.SERVER_TIMESTAMP,
        "leaseUntil": lifecycle.lease_until(settings),
        "pages": firestore.Increment(1),
        "read": firestore.Increment(read),
    }
    if cursor is not None:
        update["cursor"] = cursor
    return update


def counts_of(plan: PagePlan) -> dict[str, int]:
    """The page's events by outcome, as the chunk counters name them (repeats not again)."""
    counts = dict.fromkeys([*_COUNTER_OF.values(), "outside"], 0)
    for result in plan.results:
        if not result.repeat:
            counts["outside" if result.outside else _COUNTER_OF[result.outcome]] += 1
    return counts
