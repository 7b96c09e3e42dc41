"""The page commit: plan one page and write all its effects in one atomic batch.

The batch holds the page's ledger entries and wallet increments (through the ledger sink: live,
or a dry run's shadow ledger), its event flags, its error records, and the chunk's new cursor
and counters, guarded by the chunk's lease. If anything it read moved before the commit (another
delivery claimed the chunk, the live path wrote an entry, a refund of the same order landed),
the batch fails whole and the caller reads the page again; nothing of it was written.

Counters move only with the cursor, so they count each event once however often a page runs.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from google.cloud import firestore

from shared import logs
from shared.adapters import schema
from shared.adapters.write_token import UNSURE
from shared.backfills.base import Backfill, Event, ItemResult, PagePlan, Stored
from shared.config import MAX_WRITES_PER_COMMIT, Settings
from shared.domain import chunking, lifecycle
from shared.domain.records import RunRecord
from shared.errors import EventMissing
from shared.executor import sinks
from shared.executor.lease import Lease
from shared.executor.sources import Page
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
    and how many of its events failed."""

    read: int
    final: bool
    errors: int


class PageCommit:
    """Commits the pages of one run's chunk: one instance per delivery."""

    def __init__(self, settings: Settings, db: firestore.Client, run: RunRecord,
                 backfill: Backfill, chunk_id: str) -> None:
        self._settings = settings
        self._db = db
        self._run = run
        self._backfill = backfill
        self._chunk_id = chunk_id
        self._window = chunking.span(run.start_date, run.end_date)
        self._ledger = sinks.ledger_of(db, run.migration_id, run.dry_run)
        # Products are reference data the page only reads: read each once per delivery.
        self._products: dict[str, Stored] = {}

    def commit(self, lease: Lease, selection: Page, limit: int,
               committing: Callable[[bool], None] = lambda final: None) -> Committed | None:
        """Plan and commit ``selection`` (read with ``limit``); None when it must be read again
        (a conflict, or more writes than one commit takes). ``Lost`` when the chunk is no
        longer this delivery's.

        ``committing(final)`` is called just before a commit that writes only the page's own
        events (none pulled in from elsewhere), so the next page may be read meanwhile: the
        commit cannot change any event after this page's cursor."""
        migration_id = self._run.migration_id
        began = time.monotonic()
        events = selection.events
        plan, pulled, stored = self._plan(events)
        already = {event.event_id for event in [*pulled, *events]
                   if event.data.get("processed") is True}
        for event_id in selection.missing:
            missing = EventMissing(event_id)
            plan.results.append(ItemResult(event_id, "", Outcome.ERROR, code=missing.code,
                                           message=missing.message))
        below_zero = self._below_zero(plan)
        final = selection.read < limit or limit == 0 or (
            lease.left is not None and selection.read >= lease.left)
        batch = self._db.batch()
        self._ledger.write(batch, plan, stored)
        if self._backfill.flags_events:
            self._ledger.flag(batch, plan.results, already)
        for result in plan.results:
            if result.outcome is Outcome.ERROR:
                sinks.record_error(self._db, batch, migration_id, self._chunk_id, result)
        for finding in plan.findings:
            sinks.record_finding(self._db, batch, migration_id, self._chunk_id, finding)
        for customer_id, audit in plan.audits.items():
            sinks.record_audit(self._db, batch, migration_id, customer_id, audit)
        retried = (lease.chunk.source or {}).get("errorsOf")
        if retried and not self._run.dry_run:
            # Only the page's own events have error records in the retried run: a purchase a
            # refund pulled in may have none.
            own = {event.event_id for event in events}
            sinks.mark_resolved(self._db, batch, retried, migration_id,
                                  [result for result in plan.results if result.event_id in own])
        if final:
            # The lease guarantees the chunk is still as read: running, ours.
            lifecycle.chunk_move(lease.chunk.state, ChunkState.COMPLETED)
        suspect = lease.chunk.suspect
        clears = bool(suspect) and any(
            event.event_id == (suspect or {}).get("eventId") for event in events)
        lease.guard(batch, self._checkpoint(selection, plan, below_zero, final, len(pulled),
                                            clears))
        if len(batch) > MAX_WRITES_PER_COMMIT and len(events) > 1:
            return None  # purchases pulled in by refunds made the page too large for one commit
        if not pulled:
            committing(final)
        try:
            results = batch.commit()
        except UNSURE as error:
            # Something moved since the page was read, or the commit landed and its answer
            # was lost (the client's retry of it is refused by its precondition): the chunk
            # says which. Landed: go on from its cursor; not landed, still ours: read again.
            landed = lease.landed(error)
            if landed is None:
                time.sleep(random.uniform(0.01, 0.05))  # noqa: S311 (jitter)
                return None
        else:
            landed = results[-1].update_time
        lease.committed(landed, selection.cursor, selection.read, clears)
        counts = counts_of(plan)
        for result in plan.results:
            if result.outcome is Outcome.ERROR:
                log_failure(migration_id, self._chunk_id, result.event_id, result.event_type,
                            result.code, self._run.dry_run)
        logs.log(logger, PAGE_MESSAGE, migration_id=migration_id, chunk_id=self._chunk_id,
                 type=self._run.type, event_count=selection.read, dry_run=self._run.dry_run,
                 processed=counts["applied"] + counts["duplicates"],
                 duration_ms=int((time.monotonic() - began) * 1000), **counts)
        return Committed(selection.read, final, counts["errors"])

    def _plan(self, events: list[Event]) -> tuple[PagePlan, list[Event], dict[str, Stored]]:
        """The page's plan, the purchases from other pages it applies ahead of its refunds,
        and the documents the plan was made on."""
        backfill, migration_id = self._backfill, self._run.migration_id
        stored = self._read(backfill.lookups(events))
        gather = getattr(backfill, "gather", None)
        if gather is not None:
            # An audit's wider reads (a customer's whole ledger), made before planning too.
            stored.update(gather(self._db, self._ledger, events, stored, migration_id,
                                 self._window))
        plan = backfill.plan(events, stored, migration_id)
        ahead = self._pull(events, plan)
        if ahead is None:
            return plan, [], stored
        # Purchases go ahead of the refunds that need them, whether they come from another page
        # or later in this one. Read again after the pull's query, even if it found nothing: a
        # purchase its own chunk applied meanwhile is visible now.
        ahead_ids = {event.event_id for event in ahead}
        ordered = [*ahead, *(event for event in events if event.event_id not in ahead_ids)]
        stored = self._read(backfill.lookups(ordered))
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

    def _read(self, paths: list[str]) -> dict[str, Stored]:
        """The documents at ``paths`` as the ledger sink sees them, products from this
        delivery's cache once read."""
        products = f"{schema.PRODUCTS}/"
        wanted = [path for path in dict.fromkeys(paths) if path not in self._products]
        found = self._ledger.read(wanted)
        self._products.update((path, document) for path, document in found.items()
                              if path.startswith(products))
        found.update((path, self._products[path]) for path in paths if path in self._products)
        return found

    def _pull(self, events: list[Event], plan: PagePlan) -> list[Event] | None:
        """Purchases to apply ahead of the page's refunds that lack them; None: none lack one
        (or the backfill type does not pull)."""
        pull = getattr(self._backfill, "pull", None)
        if pull is None or not any(r.wants_purchase for r in plan.results):
            return None
        pulled: list[Event] = pull(self._db.collection(schema.EVENTS), events, plan,
                                   self._window)
        return pulled

    def _below_zero(self, plan: PagePlan) -> list[str]:
        """Wallets this page takes from zero or more to below zero (their points were spent)."""
        debited = {cid: delta for cid, delta in plan.wallet_deltas.items() if delta < 0}
        if not debited:
            return []
        stored = sinks.read_documents(self._db, [f"{schema.WALLETS}/{cid}" for cid in debited])
        result = []
        for cid, delta in debited.items():
            wallet = stored.get(f"{schema.WALLETS}/{cid}")
            balance = int((wallet.data or {}).get("balance", 0)) if wallet else 0
            if balance >= 0 > balance + delta:
                result.append(cid)
        return result

    def _checkpoint(self, selection: Page, plan: PagePlan, below_zero: list[str], final: bool,
                    pulled: int, clears_suspect: bool) -> dict[str, Any]:
        # Pulled purchases are counted where they were applied: taken, and their outcome.
        update: dict[str, Any] = {
            **progressed(self._settings, selection.read, selection.cursor),
            "counters.taken": firestore.Increment(
                selection.read + pulled - sum(r.repeat for r in plan.results)),
            "counters.points": firestore.Increment(sum(r.points for r in plan.results)),
        }
        for name, count in counts_of(plan).items():
            if count:
                update[f"counters.{name}"] = firestore.Increment(count)
        if clears_suspect:
            update["suspect"] = None  # it went through after all: its failure was passing
        if below_zero:
            update["belowZero"] = firestore.ArrayUnion(below_zero)
        if final:
            update.update(state=ChunkState.COMPLETED.value, leaseOwner=None,
                          finishedAt=firestore.SERVER_TIMESTAMP)
        return update


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
