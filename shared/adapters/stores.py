"""Small stores of the bundle's own records: runs and their chunks.

Each store is a port (a ``Protocol``) with its Firestore implementation here and an in-memory
fake in ``tests/fakes.py``, so the use cases that only move statuses (run control, the watchdog,
a run's completion) get fast unit tests, while the emulator tests prove the real thing. Every
status move is decided by ``shared.domain.lifecycle`` on the record as read and written under the
update time it was read at (``schema.compare_and_set``), so two writers racing cannot both move
from the same status.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter, Or
from google.cloud.firestore_v1.field_path import FieldPath

from shared import clock, logs
from shared.adapters import notices, schema
from shared.adapters.notices import Announcer
from shared.adapters.write_token import CLAIM_WRITE, STAMP, UNSURE, token_of, write_token
from shared.config import Settings
from shared.domain import lifecycle
from shared.domain.chunking import PlannedChunk, Window
from shared.domain.records import (
    COUNTERS,
    ChunkRecord,
    ChunkTotals,
    Counters,
    ErrorRecord,
    RunRecord,
    SwitchRecord,
)
from shared.errors import BackfillDisabled, Conflict, NotFound, Unavailable
from shared.models import ACTIVE_RUN_STATUSES, ChunkState, EventType, RunStatus

logger = logging.getLogger(__name__)

_RUN_MOVE_ATTEMPTS = 10
# A chunk being stopped conflicts with each page its delivery commits meanwhile; the next
# write wins, as the page commits under the chunk's update time too.
_CHUNK_MOVE_ATTEMPTS = 20
_CLAIM_ATTEMPTS = 8


class RunStore(Protocol):
    def get(self, migration_id: str) -> RunRecord | None:
        """The run, or None if there is no such run."""

    def active(self, paused: bool = False) -> list[RunRecord]:
        """Every run that is pending or running (and paused, with ``paused``)."""

    def rollbacks(self, migration_id: str) -> list[RunRecord]:
        """The rollback runs of run ``migration_id``, of any status."""

    def recent(self, limit: int, backfill_type: str | None = None,
               status: RunStatus | None = None) -> list[RunRecord]:
        """The ``limit`` most recently created runs, newest first (of one type or status)."""

    def move(self, migration_id: str, target: RunStatus, *, by: str = "", detail: str = "",
             note: str = "", failure_reason: str | None = None,
             summary: dict[str, Any] | None = None, only_from: RunStatus | None = None,
             strict: bool = True, fields: dict[str, Any] | None = None) -> RunRecord | None:
        """Move the run to ``target`` (``lifecycle.plan_run_move`` decides), recording why,
        who and when in its history, and ``fields`` (run document fields) with the move;
        answer the run as it was before, or None if nothing moved. ``NotFound`` if there is
        no such run."""


    def throttle(self, migration_id: str, limit: int | None, by: str,
                 note: str = "") -> RunRecord:
        """Set the run's ``maxEventsPerSecond`` to ``limit`` (None lifts it), recording who and
        why in its ``throttleHistory``; answer the run as it was before. ``NotFound`` if there
        is no such run, ``Conflict`` if it has ended."""

    def admit(self, run: RunRecord, ids: list[str],
              decide: Callable[[list[RunRecord]], RunRecord],
              twin: bool = False) -> tuple[RunRecord, bool]:
        """Create ``run`` under the first of ``ids`` that is free, as ``decide`` has it once it
        saw every active run (pending, running or paused); ``decide`` raises to refuse it. One
        transaction: two admissions racing for the last free slot cannot both get it, the
        second one sees the first run. With ``twin``, an existing run under ``ids[0]`` is
        answered instead (a twin firing of one schedule). Answers the run, and whether it
        existed already."""

    def notify(self, migration_id: str, key: str, fields: dict[str, Any]) -> bool:
        """Record the run's notice ``key`` (a stall, an error rate: the key names the
        occurrence) if it is new, and announce it; answers whether it was new."""


class ChunkStore(Protocol):
    """A run's chunks. Reads that take ``as_of`` (a read time: a record's ``read_time``) see the
    chunks as they were then, so that several reads add up (None: as they are now)."""

    def chunks(self, migration_id: str, states: Collection[ChunkState] | None = None, *,
               as_of: dt.datetime | None = None) -> list[ChunkRecord]:
        """The run's chunks (in ``states`` only, if given), in planning order."""

    def summary(self, migration_id: str, codes: Collection[str], *,
                known: Mapping[ChunkState, int] | None = None,
                as_of: dt.datetime | None = None) -> ChunkTotals:
        """The run's chunks summed without reading them (aggregations only): how many, the sums
        of their counters, per state how many (``known``: states the caller has counted, or
        knows to be empty; not counted again), and per code of ``codes`` the sums of their
        ``error_codes``. With ``as_of`` one state left to count is the rest of the total."""

    def notable(self, migration_id: str, *,
                as_of: dt.datetime | None = None) -> list[ChunkRecord]:
        """The chunks a status reads whole, in planning order: the running ones, and those
        whose pages took a wallet below zero or tallied (``notable``); one query."""

    def lapsed(self, migration_id: str, states: Collection[ChunkState], now: dt.datetime, *,
               as_of: dt.datetime | None = None) -> list[tuple[str, ChunkState]]:
        """The id and state of each chunk in ``states`` whose lease ran out before ``now``, in
        planning order (``expired`` without the rest of each chunk)."""

    def last_checkpoint(self, migration_id: str, *,
                        as_of: dt.datetime | None = None) -> dt.datetime | None:
        """When a chunk of the run last checkpointed (its latest ``updated_at``), if one has."""

    def largest(self, migration_id: str, *, as_of: dt.datetime | None = None) -> int:
        """The eligible items of the run's largest chunk (0: none counted)."""

    def page(self, migration_id: str, start: int, size: int, *,
             as_of: dt.datetime | None = None) -> tuple[list[ChunkRecord], int | None]:
        """At most ``size`` chunks, in planning order from the one of planning index ``start``
        on, and the planning index of the chunk after them (None: they are the last)."""

    def count(self, migration_id: str, states: Collection[ChunkState]) -> int:
        """How many of the run's chunks are in ``states``."""

    def expired(self, migration_id: str, states: Collection[ChunkState],
                now: dt.datetime) -> list[ChunkRecord]:
        """The run's chunks in ``states`` whose lease ran out before ``now``."""

    def totals(self, migration_id: str, counters: tuple[str, ...]) -> dict[str, int]:
        """The sums of the run's chunk ``counters`` (one aggregation, no chunk read; Firestore
        takes at most five in one)."""

    def reserved(self, migration_id: str) -> int:
        """The points of the run's maxPoints its pool counts reserved (moved, or held)."""

    def release(self, migration_id: str, states: Collection[ChunkState]) -> int:
        """Take back into the run's pool the points its chunks in ``states`` hold unspent
        (never a running chunk's); answer how many."""

    def claim(self, migration_id: str, chunk_id: str, segment: int, owner: str,
              lease_until: dt.datetime) -> ChunkRecord | lifecycle.Refusal:
        """Claim the chunk for the delivery ``owner`` of its task ``segment`` (running, leased
        until ``lease_until``), if ``lifecycle.plan_claim`` allows; answer the chunk as
        claimed, with its new update time, or why not. A claim that landed although its
        write failed (its answer lost) answers the chunk as claimed too."""

    def move(self, migration_id: str, chunk_id: str, target: ChunkState, note: str, *,
             new_segment: bool = False, lease_until: dt.datetime | None = None,
             picked_up: bool = False, failure_reason: str | None = None,
             read: ChunkRecord | None = None) -> int | None:
        """Move the chunk to ``target``, released, with ``note`` saying why, if the table
        allows it; answer its segment after the move, or None if it may not move (any more).
        With ``read``, only if the chunk is still as read (one attempt)."""


class ErrorStore(Protocol):
    """A run's error records (its failed events and an audit's findings); ``as_of`` as for
    ``ChunkStore``."""

    def count(self, migration_id: str, code: str | None = None, *,
              as_of: dt.datetime | None = None) -> int:
        """How many records the run holds (of ``code`` only, if given); an aggregation."""

    def first(self, migration_id: str, limit: int, *,
              as_of: dt.datetime | None = None) -> list[ErrorRecord]:
        """The run's first ``limit`` error records, in the order they were recorded."""

    def pages(self, migration_id: str, code: str | None = None,
              size: int = 500) -> Iterator[ErrorRecord]:
        """Every error record of the run (of ``code``), in event id order, read ``size`` at a
        time, so a run's errors stream in constant memory."""


# A type's query of the webhook events a chunk of ``window`` takes (without order or limit).
Selection = Callable[[firestore.CollectionReference, Window], Any]


class PlanStore(Protocol):
    def eligible(self, selection: Selection, window: Window) -> int:
        """How many events ``selection`` takes in ``window`` (an aggregation)."""

    def written(self, migration_id: str) -> int:
        """How many ledger entries run ``migration_id`` wrote (an aggregation)."""

    def settled(self, migration_id: str) -> int:
        """How many events run ``migration_id`` flagged processed without an entry."""

    def products_named(self, window: Window, limit: int) -> tuple[Counter[str], int]:
        """The products the first ``limit`` purchases received in ``window`` name (how many
        purchases name each), and how many purchases were read."""

    def catalog(self) -> dict[str, int]:
        """Every product's points (``products/{id}.points``; a product without a whole number
        of points as -1), for a plan's catalog (``shared.domain.review``)."""

    def save(self, run: RunRecord, chunks: list[PlannedChunk], lease_until: dt.datetime,
             completes: str | None, fields: dict[str, Any] | None = None) -> bool:
        """Write the run's chunks (idle ones completed) and its totals, and with ``completes``
        (a reason) complete the run too; False when another delivery planned it meanwhile or
        the run moved. In as many commits as the chunks take, each also writing the run under
        the update time the one before left it (the first: as ``run`` was read), so only one
        delivery's plan is ever being written; the run is ``planned`` by the last, and chunk
        documents of an earlier, interrupted plan that this plan lacks are deleted. The grid
        (``schema.GRID``) lists the chunk ids in planning order; ``fields`` (run document
        fields) go with the last commit."""


class SwitchStore(Protocol):
    def get(self) -> SwitchRecord:
        """The stored kill switch (on, when none was ever stored)."""

    def set(self, enabled: bool, reason: str, by: str) -> SwitchRecord:
        """Store the switch; answer it as it was before."""


class AlwaysOn:
    """No stored switch (the in-memory stores of unit tests): always on, never stored."""

    def get(self) -> SwitchRecord:
        return SwitchRecord()

    def set(self, enabled: bool, reason: str, by: str) -> SwitchRecord:
        raise NotImplementedError("no stored kill switch here")


@dataclasses.dataclass(frozen=True)
class Stores:
    """The stores the use cases are given (``shared.wiring`` builds them)."""

    runs: RunStore
    chunks: ChunkStore
    plans: PlanStore
    errors: ErrorStore
    switch: SwitchStore = dataclasses.field(default_factory=AlwaysOn)

    @classmethod
    def firestore(cls, db: firestore.Client, announcer: Announcer | None = None) -> Stores:
        """The Firestore stores; with ``announcer``, each status change is announced
        (``shared.adapters.notices``) once its commit is made."""
        return cls(FirestoreRuns(db, announcer), FirestoreChunks(db),
                   FirestorePlans(db, announcer), FirestoreErrors(db), FirestoreSwitch(db))


KILL_SWITCH = "BACKFILL_ENABLED=false: paused by the kill switch; resume once it is back on"


def switched_off(settings: Settings, stores: Stores) -> str | None:
    """Why backfills are off, or None when they are on: ``BACKFILL_ENABLED=false`` (the
    deploy-time override) or the stored switch an operator turned off (``flip``)."""
    if not settings.enabled:
        return KILL_SWITCH
    switch = stores.switch.get()
    if switch.enabled:
        return None
    return (f"the kill switch is off (switched off by {switch.by or 'an operator'}: "
            f"{switch.reason or 'no reason given'}); POST /api/admin/switch "
            '{"enabled": true} (backfill switch on) to switch it back on, then resume')


def refuse_if_off(settings: Settings, stores: Stores, what: str) -> None:
    """``BackfillDisabled`` (503) saying why and that ``what`` did not happen, when off."""
    if (off := switched_off(settings, stores)) is not None:
        if not settings.enabled:
            raise BackfillDisabled(f"backfills are switched off (BACKFILL_ENABLED=false); {what}")
        raise BackfillDisabled(f"{off}; {what}")


class FirestoreSwitch:
    """The kill switch in ``backfillSwitch/killSwitch``, read afresh on every call: each
    delivery and start reads it once, and a switch turned on is on at once everywhere."""

    def __init__(self, db: firestore.Client) -> None:
        self._ref = db.collection(schema.SWITCH).document(schema.SWITCH_ID)

    def get(self) -> SwitchRecord:
        snap = self._ref.get()
        return SwitchRecord.model_validate(snap.to_dict() or {}) if snap.exists \
            else SwitchRecord()

    def set(self, enabled: bool, reason: str, by: str) -> SwitchRecord:
        before = self.get()
        self._ref.set({"enabled": enabled, "reason": reason, "by": by,
                       "changedAt": firestore.SERVER_TIMESTAMP})
        return before


# Racing admissions retry their transaction (the emulator aborts all but one per round); a
# run and its first notice are created in it.
_ADMIT_ATTEMPTS = 25


class FirestoreRuns:
    def __init__(self, db: firestore.Client, announcer: Announcer | None = None) -> None:
        self._db = db
        self._announcer = announcer

    def notify(self, migration_id: str, key: str, fields: dict[str, Any]) -> bool:
        if self._announcer is not None:
            return self._announcer.record(migration_id, key, fields)
        return notices.create(self._db, migration_id, key, fields)

    def _announce(self, *migration_ids: str) -> None:
        if self._announcer is not None:
            for migration_id in migration_ids:
                self._announcer.announce(migration_id)

    def admit(self, run: RunRecord, ids: list[str],
              decide: Callable[[list[RunRecord]], RunRecord],
              twin: bool = False) -> tuple[RunRecord, bool]:
        runs = self._db.collection(schema.RUNS)

        @firestore.transactional
        def admit(transaction: firestore.Transaction) -> tuple[RunRecord, bool]:
            candidates = [runs.document(migration_id) for migration_id in ids]
            if twin:
                snap = candidates[0].get(transaction=transaction)
                if snap.exists:
                    return RunRecord.from_snapshot(snap), True
            active = [RunRecord.from_snapshot(snap) for snap in transaction.get(runs.where(
                filter=FieldFilter("status", "in", [s.value for s in ACTIVE_RUN_STATUSES])))]
            admitted = decide(active)
            for ref in candidates:
                if not ref.get(transaction=transaction).exists:
                    created = admitted.model_copy(update={"id": ref.id})
                    document = created.to_document()
                    transaction.create(ref, document)
                    # Its first notice: started (or waiting for the runs it names).
                    notice_path, notice = notices.status_notice(
                        document, ref.id, 0, created.status.value, None,
                        created.status_reason, created.requested_by)
                    if created.waiting_for:
                        notice["kind"] = "waiting"
                    transaction.create(self._db.document(notice_path), notice)
                    return created, False
            raise Unavailable("could not find a free migration id; retry")

        try:
            result: tuple[RunRecord, bool] = admit(
                self._db.transaction(max_attempts=_ADMIT_ATTEMPTS))
        except (api_exceptions.Aborted, ValueError) as error:
            # ValueError: the client gave up after max_attempts contended commits.
            raise Unavailable("too many runs are starting at once; retry") from error
        if not result[1]:
            self._announce(result[0].migration_id)
        return result

    def get(self, migration_id: str) -> RunRecord | None:
        snap = schema.run_ref(self._db, migration_id).get()
        return RunRecord.from_snapshot(snap) if snap.exists else None

    def active(self, paused: bool = False) -> list[RunRecord]:
        statuses = [RunStatus.PENDING.value, RunStatus.RUNNING.value,
                    *([RunStatus.PAUSED.value] if paused else [])]
        return [RunRecord.from_snapshot(snap) for snap in self._db.collection(schema.RUNS).where(
            filter=FieldFilter("status", "in", statuses)).stream()]

    def throttle(self, migration_id: str, limit: int | None, by: str,
                 note: str = "") -> RunRecord:
        def decide(snap: Any) -> schema.Write[RunRecord] | schema.Done[RunRecord]:
            if not snap.exists:
                raise NotFound(f"no run {migration_id}")
            run = RunRecord.from_snapshot(snap)
            refuse_throttle(run)
            return schema.Write({"maxEventsPerSecond": limit, "throttleHistory":
                                firestore.ArrayUnion([throttle_entry(run, limit, by, note)])},
                               lambda _: run)

        return schema.compare_and_set(self._db, schema.run_ref(self._db, migration_id), decide,
                                     attempts=_RUN_MOVE_ATTEMPTS, what=f"run {migration_id}")

    def rollbacks(self, migration_id: str) -> list[RunRecord]:
        return [RunRecord.from_snapshot(snap) for snap in self._db.collection(schema.RUNS).where(
            filter=FieldFilter("rollbackOf.migrationId", "==", migration_id)).stream()]

    def recent(self, limit: int, backfill_type: str | None = None,
               status: RunStatus | None = None) -> list[RunRecord]:
        query: Any = self._db.collection(schema.RUNS)
        if backfill_type is not None:
            query = query.where(filter=FieldFilter("type", "==", backfill_type))
        if status is not None:
            query = query.where(filter=FieldFilter("status", "==", status.value))
        query = query.order_by("createdAt", direction=firestore.Query.DESCENDING).limit(limit)
        return [RunRecord.from_snapshot(snap) for snap in query.stream()]

    def move(self, migration_id: str, target: RunStatus, *, by: str = "", detail: str = "",
             note: str = "", failure_reason: str | None = None,
             summary: dict[str, Any] | None = None, only_from: RunStatus | None = None,
             strict: bool = True, fields: dict[str, Any] | None = None) -> RunRecord | None:
        Moved = RunRecord | None

        def decide(snap: Any) -> schema.Write[Moved] | schema.Done[Moved]:
            if not snap.exists:
                raise NotFound(f"no run {migration_id}")
            run = RunRecord.from_snapshot(snap)
            move = lifecycle.plan_run_move(run, target, detail=detail, only_from=only_from,
                                           strict=strict)
            if move is None:
                return schema.Done(None)
            update: dict[str, Any] = {
                "status": target.value, "statusReason": move.reason,
                "statusChangedAt": firestore.SERVER_TIMESTAMP,
                "statusHistory": firestore.ArrayUnion([history_entry(move, by, note)]),
            }
            if failure_reason is not None:
                update["failureReason"] = failure_reason
            if summary is not None:
                update["summary"] = summary
            update.update(fields or {})
            if move.finishes:
                update["finishedAt"] = firestore.SERVER_TIMESTAMP
            if move.starts:
                update["startedAt"] = firestore.SERVER_TIMESTAMP
            # Its notice, in the same commit: the run's next number, read under its update time.
            seq = run.notice_seq + 1
            update["noticeSeq"] = seq
            notice_path, notice = notices.status_notice(
                snap.to_dict() or {}, migration_id, seq, target.value, move.previous.value,
                move.reason, by, note)
            creates = {notice_path: notice}
            undone = _rolled_back(run, target)
            if undone is not None:
                creates[undone[0]] = undone[1]

            def moved(_: Any) -> Moved:
                log_move(migration_id, move, by)
                self._announce(migration_id, *([undone[1]["migrationId"]] if undone else []))
                return run

            return schema.Write(update, moved, creates)

        return schema.compare_and_set(self._db, schema.run_ref(self._db, migration_id), decide,
                                     attempts=_RUN_MOVE_ATTEMPTS, what=f"run {migration_id}")


def _rolled_back(run: RunRecord, target: RunStatus) -> tuple[str, dict[str, Any]] | None:
    """The notice a live rollback's completion gives the run it rolled back, or None."""
    if target is not RunStatus.COMPLETED or run.rollback_of is None or run.dry_run:
        return None
    source = str(run.rollback_of["migrationId"])
    scope = f" (only {run.target})" if run.target else ""
    return notices.path(f"{source}-rolled_back-{run.migration_id}"), {
        "migrationId": source, "seq": None, "kind": "rolled_back", "status": "rolled_back",
        "previous": None, "reason": f"rolled back by {run.migration_id}{scope}",
        "by": run.requested_by, "note": "", "at": firestore.SERVER_TIMESTAMP,
        "published": False}


def claimed(chunk: ChunkRecord, owner: str, lease_until: dt.datetime,
            update_time: Any) -> ChunkRecord:
    """The chunk as a claim leaves it."""
    return chunk.model_copy(update={
        "state": ChunkState.RUNNING, "lease_owner": owner, "lease_until": lease_until,
        "taken_at_claim": chunk.counters.taken, "update_time": update_time})


def refuse_throttle(run: RunRecord) -> None:
    """``Conflict`` unless the run is still to apply events (pending, running or paused)."""
    if run.status not in ACTIVE_RUN_STATUSES:
        raise Conflict(f"run {run.migration_id} is {run.status.value}; only an active run "
                       "can be throttled", [run.migration_id])


def throttle_entry(run: RunRecord, limit: int | None, by: str, note: str) -> dict[str, Any]:
    """One line of a run's ``throttleHistory``: from, to, who, the operator's note, when."""
    return {"from": run.max_events_per_second, "to": limit, "by": by, "note": note,
            "at": clock.now()}


def history_entry(move: lifecycle.RunMove, by: str, note: str) -> dict[str, Any]:
    """One line of a run's ``statusHistory``: from, to, why, who, the operator's note, when."""
    return {"from": move.previous.value, "to": move.target.value, "reason": move.reason,
            "by": by, "note": note, "at": clock.now()}


def log_move(migration_id: str, move: lifecycle.RunMove, by: str) -> None:
    logs.log(logger, "run status changed", migration_id=migration_id, status=move.target.value,
             previous=move.previous.value, reason=move.reason, caller=by)


class FirestoreChunks:
    def __init__(self, db: firestore.Client) -> None:
        self._db = db

    def _collection(self, migration_id: str) -> Any:
        return schema.run_ref(self._db, migration_id).collection(schema.CHUNKS)

    def chunks(self, migration_id: str, states: Collection[ChunkState] | None = None, *,
               as_of: dt.datetime | None = None) -> list[ChunkRecord]:
        query = self._collection(migration_id)
        if states is not None:
            query = query.where(filter=FieldFilter("state", "in", [s.value for s in states]))
        # Sorted here, not by the query: ordering a filtered query would need an index.
        return sorted((ChunkRecord.from_snapshot(snap) for snap in query.stream(read_time=as_of)),
                      key=lambda chunk: chunk.index)

    def summary(self, migration_id: str, codes: Collection[str], *,
                known: Mapping[ChunkState, int] | None = None,
                as_of: dt.datetime | None = None) -> ChunkTotals:
        # Each aggregation query scans the run's chunks once (the emulator runs them one at a
        # time): the sums go five to a query, the count with them, and one state is the rest.
        # An aggregation takes only the documents that hold every field it sums (the
        # emulator's): the counters, which every chunk holds, are never summed with the codes,
        # which a chunk holds all of or none (``shared.executor.commit.recorded``).
        collection = self._collection(migration_id)
        codes = list(dict.fromkeys(codes))
        counters: list[str | FieldPath] = [f"counters.{name}" for name in COUNTERS]
        by_code: list[str | FieldPath] = [FieldPath(schema.ERROR_CODES, code) for code in codes]
        counted = dict(known or {})
        unknown = [state for state in ChunkState if state not in counted]
        rest = None
        if as_of is not None and unknown:
            rest = ChunkState.COMPLETED if ChunkState.COMPLETED in unknown else unknown[-1]
        by_state = [state for state in unknown if state is not rest]
        with ThreadPoolExecutor(max_workers=len(by_state) + 1) as pool:
            aggregated = pool.submit(lambda: schema.aggregate(collection, counters, count=True,
                                                              read_time=as_of))
            coded = pool.submit(lambda: schema.aggregate(collection, by_code, read_time=as_of))
            states = dict(zip(by_state, pool.map(lambda state: schema.count(
                collection.where(filter=FieldFilter("state", "==", state.value)),
                read_time=as_of), by_state), strict=True))
            total, sums = aggregated.result()
            code_sums = coded.result()[1]
        counted.update(states)
        if rest is not None:
            counted[rest] = total - sum(counted.values())
            if counted[rest] < 0:  # ``known`` was wrong: count it after all
                counted[rest] = schema.count(collection.where(
                    filter=FieldFilter("state", "==", rest.value)), read_time=as_of)
        return ChunkTotals(
            chunks=total, counters=Counters(**dict(zip(COUNTERS, sums, strict=True))),
            states={state: counted[state] for state in ChunkState},
            error_codes=dict(zip(codes, code_sums, strict=True)))

    def notable(self, migration_id: str, *,
                as_of: dt.datetime | None = None) -> list[ChunkRecord]:
        # Equalities only: a range filter would also order by its field, leaving out every
        # chunk without it. (The emulator scans the chunks once per disjunct.)
        query = self._collection(migration_id).where(filter=Or([
            FieldFilter("state", "==", ChunkState.RUNNING.value),
            FieldFilter(schema.NOTABLE, "==", True)]))
        return sorted((ChunkRecord.from_snapshot(snap) for snap in query.stream(read_time=as_of)),
                      key=lambda chunk: chunk.index)

    def lapsed(self, migration_id: str, states: Collection[ChunkState], now: dt.datetime, *,
               as_of: dt.datetime | None = None) -> list[tuple[str, ChunkState]]:
        query = self._collection(migration_id).where(
            filter=FieldFilter("state", "in", [s.value for s in states])).where(
            filter=FieldFilter("leaseUntil", "<", now)).select(["state", "index"])
        found = sorted((int(data.get("index", 0)), snap.id, ChunkState(data["state"]))
                       for snap in query.stream(read_time=as_of)
                       if (data := snap.to_dict() or {}))
        return [(chunk_id, state) for _, chunk_id, state in found]

    def last_checkpoint(self, migration_id: str, *,
                        as_of: dt.datetime | None = None) -> dt.datetime | None:
        query = self._collection(migration_id).order_by(
            "updatedAt", direction=firestore.Query.DESCENDING).limit(1).select(["updatedAt"])
        for snap in query.stream(read_time=as_of):
            value = (snap.to_dict() or {}).get("updatedAt")
            return value if isinstance(value, dt.datetime) else None
        return None

    def largest(self, migration_id: str, *, as_of: dt.datetime | None = None) -> int:
        query = self._collection(migration_id).order_by(
            "eligible", direction=firestore.Query.DESCENDING).limit(1).select(["eligible"])
        for snap in query.stream(read_time=as_of):
            value = (snap.to_dict() or {}).get("eligible")
            return value if isinstance(value, int) else 0
        return 0

    def page(self, migration_id: str, start: int, size: int, *,
             as_of: dt.datetime | None = None) -> tuple[list[ChunkRecord], int | None]:
        ids = self._grid_ids(migration_id, start, size + 1, as_of)
        if ids is not None:
            # By id, from the plan's grid: lookups, where a query would scan the chunks.
            refs = [self._collection(migration_id).document(chunk_id) for chunk_id in ids]
            snaps = {snap.id: snap for snap in self._db.get_all(refs, read_time=as_of)
                     if snap.exists}
            found = [ChunkRecord.from_snapshot(snaps[chunk_id]) for chunk_id in ids
                     if chunk_id in snaps]
        else:  # a run planned before grids were written
            query = self._collection(migration_id).order_by("index").where(
                filter=FieldFilter("index", ">=", start)).limit(size + 1)
            found = [ChunkRecord.from_snapshot(snap) for snap in query.stream(read_time=as_of)]
        return found[:size], found[size].index if len(found) > size else None

    def _grid_ids(self, migration_id: str, start: int, count: int,
                  as_of: dt.datetime | None) -> list[str] | None:
        """The ids of ``count`` chunks from planning index ``start`` on, from the plan's grid
        (fewer past the last); None when the run has no grid."""
        grid = schema.run_ref(self._db, migration_id).collection(schema.GRID)
        first, last = start // schema.GRID_IDS, (start + count - 1) // schema.GRID_IDS
        snaps = sorted((snap for snap in self._db.get_all(
            [grid.document(str(number)) for number in range(first, last + 1)],
            read_time=as_of) if snap.exists), key=lambda snap: int(snap.id))
        if not snaps:
            if start == 0 or not grid.document("0").get(read_time=as_of).exists:
                return None
            return []  # past the last chunk
        ids = [chunk_id for snap in snaps for chunk_id in (snap.to_dict() or {}).get("ids", [])]
        offset = start - first * schema.GRID_IDS
        return ids[offset:offset + count]

    def count(self, migration_id: str, states: Collection[ChunkState]) -> int:
        return schema.count(self._collection(migration_id).where(
            filter=FieldFilter("state", "in", [s.value for s in states])))

    def totals(self, migration_id: str, counters: tuple[str, ...]) -> dict[str, int]:
        sums = schema.sums(self._collection(migration_id),
                          tuple(f"counters.{name}" for name in counters))
        return {name: sums[f"counters.{name}"] for name in counters}

    def reserved(self, migration_id: str) -> int:
        snap = schema.pool_ref(self._db, migration_id).get()
        return int((snap.to_dict() or {}).get("reserved", 0)) if snap.exists else 0

    def release(self, migration_id: str, states: Collection[ChunkState]) -> int:
        """Each chunk's allowance goes back under the chunk's update time, so a delivery that
        claimed it meanwhile keeps it; that one is taken back by a later release."""
        pool, given = schema.pool_ref(self._db, migration_id), 0
        stopped = [state for state in states if state is not ChunkState.RUNNING]
        for chunk in self.chunks(migration_id, stopped):
            if chunk.allowance <= 0:
                continue
            batch = self._db.batch()
            batch.update(schema.chunk_ref(self._db, migration_id, chunk.chunk_id),
                         {"allowance": 0},
                         option=self._db.write_option(last_update_time=chunk.update_time))
            batch.set(pool, {"reserved": firestore.Increment(-chunk.allowance)}, merge=True)
            try:
                batch.commit()
            except (api_exceptions.FailedPrecondition, api_exceptions.NotFound):
                continue
            given += chunk.allowance
        return given

    def expired(self, migration_id: str, states: Collection[ChunkState],
                now: dt.datetime) -> list[ChunkRecord]:
        query = self._collection(migration_id).where(
            filter=FieldFilter("state", "in", [s.value for s in states])).where(
            filter=FieldFilter("leaseUntil", "<", now))
        return [ChunkRecord.from_snapshot(snap) for snap in query.stream()]

    def claim(self, migration_id: str, chunk_id: str, segment: int, owner: str,
              lease_until: dt.datetime) -> ChunkRecord | lifecycle.Refusal:
        ref = schema.chunk_ref(self._db, migration_id, chunk_id)
        Claimed = ChunkRecord | lifecycle.Refusal
        # Every attempt stamps the same token: each claims the chunk for this delivery, so
        # whichever landed, the chunk is claimed (a refused retry of an attempt that landed
        # reads the chunk, and claims it again: harmless).
        token = write_token(owner, CLAIM_WRITE)

        def decide(snap: Any) -> schema.Write[Claimed] | schema.Done[Claimed]:
            chunk = ChunkRecord.from_snapshot(snap) if snap.exists else None
            if (refusal := lifecycle.plan_claim(chunk, segment)) is not None:
                return schema.Done(refusal)
            assert chunk is not None
            claim: dict[str, Any] = {
                "state": ChunkState.RUNNING.value, "leaseOwner": owner,
                "claimedAt": firestore.SERVER_TIMESTAMP, "leaseUntil": lease_until,
                "takenAtClaim": chunk.counters.taken, STAMP: token}
            if chunk.started_at is None:
                claim["startedAt"] = firestore.SERVER_TIMESTAMP
            return schema.Write(claim, lambda update_time: claimed(chunk, owner, lease_until,
                                                                  update_time))

        try:
            return schema.compare_and_set(self._db, ref, decide, attempts=_CLAIM_ATTEMPTS,
                                         what="the chunk being claimed")
        except UNSURE:
            # The claim may have landed with its answer lost: if the chunk bears its token
            # and is still ours, it is claimed (as read: nothing wrote it since, as whoever
            # moves a chunk releases it). Else the error stands: the task is retried.
            snap = ref.get()
            chunk = ChunkRecord.from_snapshot(snap) if snap.exists else None
            if (chunk is None or token_of(snap) != token or chunk.lease_owner != owner
                    or chunk.state is not ChunkState.RUNNING):
                raise
            return chunk

    def move(self, migration_id: str, chunk_id: str, target: ChunkState, note: str, *,
             new_segment: bool = False, lease_until: dt.datetime | None = None,
             picked_up: bool = False, failure_reason: str | None = None,
             read: ChunkRecord | None = None) -> int | None:
        ref = schema.chunk_ref(self._db, migration_id, chunk_id)

        def decide(snap: Any) -> schema.Write[int | None] | schema.Done[int | None]:
            chunk = snap if isinstance(snap, ChunkRecord) else (
                ChunkRecord.from_snapshot(snap) if snap.exists else None)
            if chunk is None:
                return schema.Done(None)
            segment = lifecycle.plan_chunk_move(chunk, target, new_segment)
            if segment is None:
                return schema.Done(None)
            update: dict[str, Any] = {"state": target.value, "leaseOwner": None, "note": note,
                                      "stateChangedAt": firestore.SERVER_TIMESTAMP,
                                      "segment": segment}
            if lease_until is not None:
                update["leaseUntil"] = lease_until
            if picked_up:
                update["pickups"] = firestore.Increment(1)
            if failure_reason is not None:
                update.update(failureReason=failure_reason,
                              finishedAt=firestore.SERVER_TIMESTAMP)
            return schema.Write(update, lambda _: segment)

        return schema.compare_and_set(
            self._db, ref, decide, attempts=1 if read is not None else _CHUNK_MOVE_ATTEMPTS,
            what="a chunk being moved", read=read,
            give_up=(lambda: None) if read is not None else None)


class FirestorePlans:
    def __init__(self, db: firestore.Client, announcer: Announcer | None = None) -> None:
        self._db = db
        self._announcer = announcer

    def eligible(self, selection: Selection, window: Window) -> int:
        if window.end <= window.start:
            return 0
        return schema.count(selection(self._db.collection(schema.EVENTS), window))

    def written(self, migration_id: str) -> int:
        return schema.count(schema.written_by(self._db, migration_id))

    def settled(self, migration_id: str) -> int:
        return schema.count(schema.settled_by(self._db, migration_id))

    def products_named(self, window: Window, limit: int) -> tuple[Counter[str], int]:
        query = schema.in_window(self._db.collection(schema.EVENTS).where(
            filter=FieldFilter("eventType", "==", EventType.ORDER_COMPLETED.value)), window)
        named: Counter[str] = Counter()
        read = 0
        # Oldest first: the (eventType, receivedAt) index serves it ascending only.
        for snap in query.order_by("receivedAt").select(["payload.body.lines"]).limit(
                limit).stream():
            read += 1
            lines = ((((snap.to_dict() or {}).get("payload") or {}).get("body") or {})
                     .get("lines"))
            for line in lines if isinstance(lines, list) else []:
                product = line.get("product_id") if isinstance(line, dict) else None
                if isinstance(product, str) and product:
                    named[product] += 1
        return named, read

    def catalog(self) -> dict[str, int]:
        points: dict[str, int] = {}
        for snap in self._db.collection(schema.PRODUCTS).select(["points"]).stream():
            value = (snap.to_dict() or {}).get("points")
            points[snap.id] = value if isinstance(value, int) and not isinstance(
                value, bool) else -1
        return points

    def save(self, run: RunRecord, chunks: list[PlannedChunk], lease_until: dt.datetime,
             completes: str | None, fields: dict[str, Any] | None = None) -> bool:
        ref = schema.run_ref(self._db, run.migration_id)
        chunks_ref, grid_ref = ref.collection(schema.CHUNKS), ref.collection(schema.GRID)
        planned_ids = {chunk.chunk_id for chunk in chunks}
        pages = -(-len(chunks) // schema.GRID_IDS)
        # Listed after the run was read: a plan written since then moved the run, so this
        # plan's first commit fails rather than leave that plan's documents behind unseen.
        leftover = [snap.id for snap in chunks_ref.select([]).stream()
                    if snap.id not in planned_ids]
        leftover_grid = [snap.id for snap in grid_ref.select([]).stream()
                         if int(snap.id) >= pages]
        # (chunks it plans, the write) in order: leftovers' deletes first.
        writes: list[tuple[int, Callable[[firestore.WriteBatch], None]]] = [
            (0, functools.partial(_delete, chunks_ref, chunk_id)) for chunk_id in leftover]
        writes += [(0, functools.partial(_delete, grid_ref, number)) for number in leftover_grid]
        writes += [(1, functools.partial(_write_chunk, chunks_ref, index, chunk, lease_until))
                   for index, chunk in enumerate(chunks)]
        # The grid: the chunks' ids in planning order, for status pages read by id.
        writes += [(0, functools.partial(_write_grid, grid_ref, number, [
            chunk.chunk_id for chunk in chunks[number * schema.GRID_IDS:
                                               (number + 1) * schema.GRID_IDS]]))
                   for number in range(pages)]
        groups = [writes[first:first + PLAN_WRITES_PER_COMMIT]
                  for first in range(0, len(writes), PLAN_WRITES_PER_COMMIT)] or [[]]
        read_at, written = run.update_time, 0
        for number, group in enumerate(groups, start=1):
            batch = self._db.batch()
            for planned, write in group:
                write(batch)
                written += planned
            # Each commit moves the run, so the next one's precondition holds only if no
            # other delivery wrote in between; the count says how far planning got.
            update: dict[str, Any] = {"plannedChunks": written}
            if number == len(groups):
                update.update(_plan_totals(chunks, completes))
                update.update(fields or {})
                if completes is not None:  # done at once: its notice in the same commit
                    update["noticeSeq"] = run.notice_seq + 1
                    notice_path, notice = notices.status_notice(
                        {"type": run.type, "dryRun": run.dry_run}, run.migration_id,
                        run.notice_seq + 1, RunStatus.COMPLETED.value, run.status.value,
                        completes)
                    batch.create(self._db.document(notice_path), notice)
            batch.update(ref, update, option=self._db.write_option(last_update_time=read_at))
            try:
                results = batch.commit()
            except (api_exceptions.AlreadyExists, api_exceptions.FailedPrecondition):
                return False  # another delivery planned it meanwhile, or the run's status moved
            read_at = results[-1].update_time
        if completes is not None and self._announcer is not None:
            self._announcer.announce(run.migration_id)
        return True


# Chunk writes (and deletes of an interrupted plan's leftovers) per planning commit, beside the
# run's update: well within one commit's budget (a chunk document is under 1 KB).
PLAN_WRITES_PER_COMMIT = 500


def _delete(collection: firestore.CollectionReference, document_id: str,
            batch: firestore.WriteBatch) -> None:
    batch.delete(collection.document(document_id))


def _write_grid(grid_ref: firestore.CollectionReference, number: int, ids: list[str],
                batch: firestore.WriteBatch) -> None:
    batch.set(grid_ref.document(str(number)), {"ids": ids})


def _write_chunk(chunks_ref: firestore.CollectionReference, index: int, chunk: PlannedChunk,
                 lease_until: dt.datetime, batch: firestore.WriteBatch) -> None:
    """A planned chunk, written whole (``set``): a delivery that plans again after one was
    killed halfway writes the same document over the one it left."""
    record = ChunkRecord(
        id=chunk.chunk_id, index=index, window_start=chunk.window_start,
        window_end=chunk.window_end, source=chunk.source, eligible=chunk.eligible,
        quota=chunk.quota, state=ChunkState.COMPLETED if chunk.idle else ChunkState.PENDING,
        note=idle_note(chunk) if chunk.idle else chunk.note, segment=0, cursor=None,
        lease_owner=None, lease_until=lease_until, counters=Counters(), read=0,
        below_zero=[], started_at=None)
    batch.set(chunks_ref.document(chunk.chunk_id), {
        **record.fields(), "createdAt": firestore.SERVER_TIMESTAMP,
        "finishedAt": firestore.SERVER_TIMESTAMP if chunk.idle else None})


def _plan_totals(chunks: list[PlannedChunk], completes: str | None) -> dict[str, Any]:
    """The run's fields its plan's last commit writes: planned, with its totals."""
    eligible = _eligible(chunks)
    update: dict[str, Any] = {"planned": True, "counted": eligible is not None,
                              "eligible": eligible,
                              "total": sum(c.takes for c in chunks)
                              if eligible is not None else None,
                              "plannedAt": firestore.SERVER_TIMESTAMP,
                              "chunkCount": len(chunks)}
    if completes is not None:
        update.update(status=RunStatus.COMPLETED.value, statusReason=completes,
                      startedAt=firestore.SERVER_TIMESTAMP,
                      finishedAt=firestore.SERVER_TIMESTAMP)
    return update


class FirestoreErrors:
    def __init__(self, db: firestore.Client) -> None:
        self._db = db

    def count(self, migration_id: str, code: str | None = None, *,
              as_of: dt.datetime | None = None) -> int:
        return schema.count(schema.errors_query(self._db, migration_id, code), read_time=as_of)

    def first(self, migration_id: str, limit: int, *,
              as_of: dt.datetime | None = None) -> list[ErrorRecord]:
        query = schema.run_ref(self._db, migration_id).collection(schema.ERRORS).order_by(
            "at").limit(limit)
        return [ErrorRecord.from_snapshot(snap) for snap in query.stream(read_time=as_of)]

    def pages(self, migration_id: str, code: str | None = None,
              size: int = 500) -> Iterator[ErrorRecord]:
        errors = schema.run_ref(self._db, migration_id).collection(schema.ERRORS)
        last: str | None = None
        while True:
            query = schema.errors_query(self._db, migration_id, code).order_by(
                "__name__").limit(size)
            if last is not None:
                query = query.start_after({"__name__": errors.document(last)})
            page = [ErrorRecord.from_snapshot(snap) for snap in query.stream()]
            yield from page
            if len(page) < size:
                return
            last = page[-1].id


def _eligible(chunks: list[PlannedChunk]) -> int | None:
    """The run's eligible items: the sum of its chunks', unknown if any chunk's is."""
    counts = [chunk.eligible for chunk in chunks]
    return None if None in counts else sum(count or 0 for count in counts)


def idle_note(chunk: PlannedChunk) -> str:
    if chunk.eligible == 0:
        return "no eligible events when the run was planned"
    return "maxEvents was reached by older chunks; these events are left for a later run"


def still_active(run_store: RunStore, migration_ids: list[str]) -> list[str]:
    """Those of ``migration_ids`` whose runs are still active (pending, running or paused)."""
    found = (run_store.get(migration_id) for migration_id in migration_ids)
    return sorted(run.migration_id for run in found
                  if run is not None and run.status in ACTIVE_RUN_STATUSES)
