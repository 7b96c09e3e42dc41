"""Processing one chunk: claim it, apply its events page by page from its cursor, and stop in
time (continuing in a new task), when its work is done, or when another delivery took it over.

Why every page is applied exactly once under at-least-once delivery:

- A page's ledger writes, wallet increments, event flags, error records *and* the chunk's new
  cursor and counters are one atomic commit, made under the chunk document's update time as
  read. If anything moved since (another delivery claimed the chunk, the live path wrote an
  entry, a refund of the same order landed), the commit fails whole and the page is read and
  planned again, or, if the chunk has a new owner, this delivery stops.
- Claiming a chunk writes a fresh ``leaseOwner`` under the same precondition: the latest
  delivery of a segment takes the chunk over, and an older one still running stops at its next
  commit. A delivery of an older segment re-enqueues the current one (a no-op if it exists).
- Counters move only with the cursor, so they count each event once however often a page runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from shared import logs, planning, runs, store
from shared.backfills.base import Backfill, Event, PagePlan, Stored
from shared.backfills.types import BACKFILLS
from shared.config import MAX_WRITES_PER_COMMIT, Settings
from shared.dispatch import ChunkTask, Dispatcher
from shared.errors import PurchaseNotFound, Unavailable
from shared.models import (
    FINAL_CHUNK_STATES,
    FINAL_RUN_STATUSES,
    BackfillType,
    ChunkState,
    Outcome,
    RunStatus,
)
from shared.planning import Window

logger = logging.getLogger(__name__)

_PAGE_ATTEMPTS = 8
_CONFLICTS = (api_exceptions.Conflict, api_exceptions.FailedPrecondition, api_exceptions.NotFound)
_COUNTER_OF = {Outcome.APPLIED: "applied", Outcome.DUPLICATE: "duplicates",
               Outcome.SKIPPED: "skipped", Outcome.ERROR: "errors"}

_commits_lock = threading.Lock()
_commits = 0


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One delivery of a chunk task; ``retry_count`` is Cloud Tasks' count of earlier tries."""

    task: ChunkTask
    retry_count: int = 0
    delivery_id: str = dataclasses.field(default_factory=lambda: os.urandom(8).hex())


@dataclasses.dataclass
class ChunkReport:
    """What a delivery did; ``result`` is one of: completed, continued, idle, stale, lost,
    failed."""

    result: str
    pages: int = 0
    events: int = 0
    detail: str = ""


class _Lost(Exception):
    """Another delivery owns the chunk now, or it ended meanwhile."""


@dataclasses.dataclass
class _Chunk:
    ref: firestore.DocumentReference
    data: dict[str, Any]
    update_time: dt.datetime

    @property
    def window(self) -> Window:
        return Window(self.data["windowStart"], self.data["windowEnd"])

    @property
    def taken(self) -> int:
        """Events read from the chunk's own window so far (what its quota bounds)."""
        return int(self.data.get("read", 0))

    @property
    def quota(self) -> int | None:
        quota = self.data.get("quota")
        return int(quota) if quota is not None else None


class ChunkRunner:
    """Runs deliveries of chunk tasks against Firestore, handing continuations to ``dispatcher``."""

    def __init__(self, settings: Settings, db: firestore.Client, dispatcher: Dispatcher,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._db = db
        self._dispatcher = dispatcher
        self._clock = clock

    def run(self, delivery: Delivery) -> ChunkReport:
        """Process a delivery; raises only when a retry of the task can help.

        An unexpected failure on the task's last attempt is recorded (chunk ``failed``, and the
        run ends once no chunk is open) and reported, so Cloud Tasks stops retrying.
        """
        try:
            return self._run(delivery)
        except _Lost:
            return ChunkReport("lost", detail="another delivery took the chunk over")
        except Exception as error:
            if delivery.retry_count + 1 < self._settings.task_max_attempts:
                raise
            reason = f"gave up after {delivery.retry_count + 1} attempts: {type(error).__name__}"
            self._fail(delivery.task, reason)
            return ChunkReport("failed", detail=reason)

    def _run(self, delivery: Delivery) -> ChunkReport:
        task = delivery.task
        if task.chunk_id == runs.PLAN_CHUNK:
            return ChunkReport("planned", detail=runs.plan_run(
                self._settings, self._db, self._dispatcher, task.migration_id))
        run_snap = store.run_ref(self._db, task.migration_id).get()
        if not run_snap.exists:
            return ChunkReport("idle", detail="no such run")
        run = run_snap.to_dict() or {}
        if run.get("status") in FINAL_RUN_STATUSES:
            return ChunkReport("idle", detail=f"the run is {run.get('status')}")
        chunk = self._claim(delivery)
        if isinstance(chunk, ChunkReport):
            return chunk
        if run.get("status") == RunStatus.PENDING.value:
            runs.mark_running(self._db, task.migration_id)
        return self._process(delivery, run, chunk)

    def _claim(self, delivery: Delivery) -> _Chunk | ChunkReport:
        task = delivery.task
        ref = store.chunk_ref(self._db, task.migration_id, task.chunk_id)
        for _ in range(_PAGE_ATTEMPTS):
            snap = ref.get()
            if not snap.exists:
                return ChunkReport("idle", detail="no such chunk")
            data = snap.to_dict() or {}
            if data["state"] in FINAL_CHUNK_STATES:
                return ChunkReport("idle", detail=f"the chunk is {data['state']}")
            if task.segment != data["segment"]:
                # An old segment's retry: make sure the current segment's task exists.
                self._dispatcher.enqueue(ChunkTask(task.migration_id, task.chunk_id,
                                                   data["segment"]))
                return ChunkReport("stale", detail=f"the chunk is at segment {data['segment']}")
            claim = {"state": ChunkState.RUNNING.value, "leaseOwner": delivery.delivery_id,
                     "claimedAt": firestore.SERVER_TIMESTAMP}
            if data.get("startedAt") is None:
                claim["startedAt"] = firestore.SERVER_TIMESTAMP
            try:
                result = ref.update(claim, option=self._db.write_option(
                    last_update_time=snap.update_time))
            except api_exceptions.FailedPrecondition:
                continue
            data.update(state=ChunkState.RUNNING.value, leaseOwner=delivery.delivery_id)
            return _Chunk(ref, data, result.update_time)
        raise Unavailable("the chunk is contended; retry")

    def _process(self, delivery: Delivery, run: dict[str, Any], chunk: _Chunk) -> ChunkReport:
        started = self._clock()
        report = ChunkReport("continued")
        dry_run = bool(run.get("dryRun"))
        while True:
            quota = chunk.quota
            left = None if quota is None else quota - chunk.taken
            # At least one page per delivery, so a tiny budget still makes progress.
            out_of_time = self._clock() - started >= self._settings.time_budget_seconds
            if report.pages and out_of_time and (left is None or left > 0):
                self._continue_later(delivery, chunk)
                break
            limit = self._settings.page_size if left is None else min(self._settings.page_size,
                                                                      left)
            events, final = self._page(delivery, run, chunk, max(limit, 0))
            report.pages += 1
            report.events += events
            if final:
                report.result = "completed"
                runs.finish_if_done(self._db, delivery.task.migration_id)
                break
        logs.log(logger, "chunk delivery done", migration_id=delivery.task.migration_id,
                 chunk_id=delivery.task.chunk_id, segment=delivery.task.segment,
                 status=report.result, event_count=report.events, dry_run=dry_run)
        return report

    def _page(self, delivery: Delivery, run: dict[str, Any], chunk: _Chunk,
              limit: int) -> tuple[int, bool]:
        """Read, plan and commit one page; return its event count and whether it was the last."""
        backfill = BACKFILLS[BackfillType(run["type"])]
        dry_run = bool(run.get("dryRun"))
        run_window = planning.span(dt.date.fromisoformat(run["startDate"]),
                                   dt.date.fromisoformat(run["endDate"]))
        migration_id = delivery.task.migration_id
        events_ref = self._db.collection(store.EVENTS)
        attempt = 0
        while attempt < _PAGE_ATTEMPTS:
            events: list[Event] = []
            if limit > 0:
                query = backfill.selection(events_ref, chunk.window).order_by(
                    "receivedAt").order_by("__name__").limit(limit)
                cursor = chunk.data.get("cursor")
                if cursor:
                    query = query.start_after({"receivedAt": cursor["receivedAt"],
                                               "__name__": events_ref.document(cursor["eventId"])})
                events = [Event(snap.id, snap.to_dict() or {}) for snap in query.stream()]
            shadow = store.run_ref(self._db, migration_id).collection(store.SHADOW_LEDGER) \
                if dry_run else None
            stored = self._read(backfill.lookups(events), shadow)
            plan = backfill.plan(events, stored, migration_id)
            pulled = self._pull(backfill, events, plan, run_window)
            if pulled is not None:
                # Read again after the pull's query, even if it found nothing: a purchase that its
                # own chunk applied meanwhile (entry and flag in one commit) is visible now.
                stored = self._read(backfill.lookups([*pulled, *events]), shadow)
                plan = backfill.plan([*pulled, *events], stored, migration_id)
            else:
                pulled = []
            below_zero = self._below_zero(plan)
            final = len(events) < limit or limit == 0 or (
                chunk.quota is not None and chunk.taken + len(events) >= chunk.quota)
            batch = self._db.batch()
            self._write_effects(batch, plan, stored, migration_id, shadow,
                                delivery.task.chunk_id)
            checkpoint = self._checkpoint(events, plan, below_zero, final, len(pulled))
            batch.update(chunk.ref, checkpoint,
                         option=self._db.write_option(last_update_time=chunk.update_time))
            if len(batch) > MAX_WRITES_PER_COMMIT and len(events) > 1:
                # Purchases pulled in by refunds made the page too large for one commit.
                limit = len(events) // 2
                continue
            try:
                results = batch.commit()
            except _CONFLICTS:
                # Something moved since the page was read: find out whether it is still ours.
                attempt += 1
                self._refresh(delivery, chunk)
                time.sleep(random.uniform(0.01, 0.05) * attempt)  # noqa: S311 (jitter)
                continue
            chunk.update_time = results[-1].update_time
            if events:
                chunk.data["cursor"] = {"receivedAt": events[-1].received_at,
                                        "eventId": events[-1].event_id}
            chunk.data["read"] = chunk.taken + len(events)
            self._after_commit()
            logs.log(logger, "page applied", migration_id=migration_id,
                     chunk_id=delivery.task.chunk_id, event_count=len(events), dry_run=dry_run,
                     **_counts(plan))
            return len(events), final
        raise Unavailable("a page kept conflicting with concurrent writes; retry")

    def _read(self, paths: list[str],
              shadow: firestore.CollectionReference | None = None) -> dict[str, Stored]:
        """The documents at ``paths``; ledger entries overlaid by ``shadow`` where it has them."""
        if not paths:
            return {}
        refs = [self._db.document(path) for path in paths]
        if shadow is not None:
            refs += [shadow.document(path.split("/", 1)[1]) for path in paths
                     if path.startswith(f"{store.LEDGER}/")]
        result: dict[str, Stored] = {}
        shadowed: dict[str, Stored] = {}
        for snap in self._db.get_all(refs):
            found = Stored(snap.to_dict() if snap.exists else None, snap.update_time)
            if shadow is not None and snap.reference.parent.id == store.SHADOW_LEDGER:
                if snap.exists:
                    shadowed[f"{store.LEDGER}/{snap.id}"] = dataclasses.replace(found,
                                                                                shadowed=True)
            else:
                result[snap.reference.path] = found
        return {**result, **shadowed}

    def _below_zero(self, plan: PagePlan) -> list[str]:
        """Wallets this page takes from zero or more to below zero (their points were spent)."""
        debited = {cid: delta for cid, delta in plan.wallet_deltas.items() if delta < 0}
        if not debited:
            return []
        stored = self._read([f"{store.WALLETS}/{cid}" for cid in debited])
        result = []
        for cid, delta in debited.items():
            wallet = stored.get(f"{store.WALLETS}/{cid}")
            balance = int((wallet.data or {}).get("balance", 0)) if wallet else 0
            if balance >= 0 > balance + delta:
                result.append(cid)
        return result

    def _write_effects(self, batch: firestore.WriteBatch, plan: PagePlan,
                       stored: dict[str, Stored], migration_id: str,
                       shadow: firestore.CollectionReference | None, chunk_id: str) -> None:
        """Add the page's effects to ``batch``; a dry run (``shadow``) writes its ledger entries
        to the shadow ledger instead, and no wallet."""
        db = self._db
        dry_run = shadow is not None
        events = db.collection(store.EVENTS)
        errors = store.run_ref(db, migration_id).collection(store.ERRORS)
        ledger = shadow if shadow is not None else db.collection(store.LEDGER)
        for entry_id, data in plan.creates.items():
            batch.create(ledger.document(entry_id), data)
        for entry_id, (fields, read_at) in plan.updates.items():
            original = stored[f"{store.LEDGER}/{entry_id}"]
            if dry_run and not original.shadowed:
                # The first dry-run change of a real entry: copy it into the shadow ledger.
                batch.create(ledger.document(entry_id), {**(original.data or {}), **fields})
            else:
                batch.update(ledger.document(entry_id),
                             {**fields, "updatedAt": firestore.SERVER_TIMESTAMP},
                             option=db.write_option(last_update_time=read_at))
        if not dry_run:
            for customer_id, delta in plan.wallet_deltas.items():
                if delta:
                    batch.set(db.collection(store.WALLETS).document(customer_id),
                              {"balance": firestore.Increment(delta),
                               "updatedAt": firestore.SERVER_TIMESTAMP}, merge=True)
        for result in plan.results:
            event = events.document(result.event_id)
            if dry_run:
                batch.update(event, {"dryRunProcessed": True, "dryRunOutcome": result.outcome.value,
                                     "dryRunMigrationId": migration_id})
            elif result.settled:
                batch.update(event, {"processed": True, "processedAt": firestore.SERVER_TIMESTAMP,
                                     "backfillMigrationId": migration_id,
                                     "backfillOutcome": result.outcome.value})
            if result.outcome is Outcome.ERROR:
                batch.set(errors.document(result.event_id), {
                    "eventId": result.event_id, "eventType": result.event_type,
                    "code": result.code, "message": result.message, "hint": result.hint,
                    "chunkId": chunk_id, "at": firestore.SERVER_TIMESTAMP,
                    "attempts": firestore.Increment(1)}, merge=True)

    def _pull(self, backfill: Backfill, events: list[Event], plan: PagePlan,
              run_window: Window) -> list[Event] | None:
        """Purchases to apply ahead of the page's refunds that lack them; None: none lack one
        (or the backfill type does not pull)."""
        pull = getattr(backfill, "pull", None)
        if pull is None or not any(r.code == PurchaseNotFound.code for r in plan.results):
            return None
        pulled: list[Event] = pull(self._db.collection(store.EVENTS), events, plan, run_window)
        return pulled

    @staticmethod
    def _checkpoint(events: list[Event], plan: PagePlan, below_zero: list[str],
                    final: bool, pulled: int) -> dict[str, Any]:
        # Pulled purchases are counted where they were applied: taken, and their outcome.
        update: dict[str, Any] = {
            "updatedAt": firestore.SERVER_TIMESTAMP,
            "pages": firestore.Increment(1),
            "read": firestore.Increment(len(events)),
            "counters.taken": firestore.Increment(
                len(events) + pulled - sum(r.repeat for r in plan.results)),
            "counters.points": firestore.Increment(sum(r.points for r in plan.results)),
        }
        for name, count in _counts(plan).items():
            if count:
                update[f"counters.{name}"] = firestore.Increment(count)
        if events:
            update["cursor"] = {"receivedAt": events[-1].received_at,
                                "eventId": events[-1].event_id}
        if below_zero:
            update["belowZero"] = firestore.ArrayUnion(below_zero)
        if final:
            update.update(state=ChunkState.COMPLETED.value, leaseOwner=None,
                          finishedAt=firestore.SERVER_TIMESTAMP)
        return update

    def _refresh(self, delivery: Delivery, chunk: _Chunk) -> None:
        snap = chunk.ref.get()
        data = snap.to_dict() or {}
        if data.get("leaseOwner") != delivery.delivery_id or data.get("state") != "running":
            raise _Lost
        chunk.data, chunk.update_time = data, snap.update_time

    def _continue_later(self, delivery: Delivery, chunk: _Chunk) -> None:
        """Out of time: release the chunk at its cursor and enqueue the next segment."""
        segment = int(chunk.data["segment"]) + 1
        try:
            chunk.ref.update({"segment": segment, "leaseOwner": None,
                              "updatedAt": firestore.SERVER_TIMESTAMP},
                             option=self._db.write_option(last_update_time=chunk.update_time))
        except api_exceptions.FailedPrecondition:
            raise _Lost from None
        # If this enqueue fails, the task is retried as a stale segment, which enqueues it.
        self._dispatcher.enqueue(ChunkTask(delivery.task.migration_id, delivery.task.chunk_id,
                                           segment))

    def _fail(self, task: ChunkTask, reason: str) -> None:
        if task.chunk_id == runs.PLAN_CHUNK:
            runs.fail_run(self._db, task.migration_id, f"planning {reason}")
            return
        ref = store.chunk_ref(self._db, task.migration_id, task.chunk_id)
        ref.update({"state": ChunkState.FAILED.value, "leaseOwner": None, "failureReason": reason,
                    "finishedAt": firestore.SERVER_TIMESTAMP})
        logs.log(logger, "chunk failed", logging.ERROR, migration_id=task.migration_id,
                 chunk_id=task.chunk_id, reason=reason)
        runs.finish_if_done(self._db, task.migration_id)

    def _after_commit(self) -> None:
        """Fault injection for tests (local only): die as a killed handler would."""
        limit = self._settings.fault_exit_after_commits
        if not limit or not self._settings.local:
            return
        global _commits
        with _commits_lock:
            _commits += 1
            if _commits >= limit:
                logging.getLogger(__name__).warning("fault injection: exiting after a commit")
                os._exit(70)


def _counts(plan: PagePlan) -> dict[str, int]:
    counts = dict.fromkeys(_COUNTER_OF.values(), 0)
    for result in plan.results:
        if not result.repeat:
            counts[_COUNTER_OF[result.outcome]] += 1
    return counts
