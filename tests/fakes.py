"""In-memory stores for fast unit tests of the use cases that move statuses (run control, the
watchdog, a run's completion). They decide every move with ``shared.domain.lifecycle`` exactly as
the Firestore stores do; only the storage is a dict. The emulator tests prove the real stores."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from shared.adapters.stores import (
    Selection,
    Stores,
    claimed,
    history_entry,
    refuse_throttle,
    throttle_entry,
)
from shared.backfills.registry import BackfillType
from shared.domain import lifecycle
from shared.domain.chunking import PlannedChunk, Window
from shared.domain.records import (
    COUNTERS,
    ChunkRecord,
    ChunkTotals,
    Counters,
    ErrorRecord,
    RunRecord,
)
from shared.errors import NotFound, Unavailable
from shared.models import ACTIVE_RUN_STATUSES, ChunkState, RunStatus

NOW = dt.datetime(2025, 1, 10, tzinfo=dt.UTC)


class MemoryRuns:
    def notify(self, migration_id: str, key: str, fields: dict[str, Any]) -> bool:
        """Notices are the Firestore store's (shared.adapters.notices): none kept here."""
        return True

    def __init__(self) -> None:
        self.records: dict[str, RunRecord] = {}
        self.summaries: dict[str, dict[str, Any]] = {}
        self.throttles: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, migration_id: str, status: RunStatus = RunStatus.RUNNING,
            **fields: Any) -> RunRecord:
        record = RunRecord.model_validate({
            "id": migration_id, "type": BackfillType.WEBHOOK_REPLAY, "status": status,
            "start_date": dt.date(2025, 1, 1), "end_date": dt.date(2025, 1, 3),
            "created_at": NOW, "planned": True,
            "started_at": None if status is RunStatus.PENDING else NOW, **fields})
        self.records[migration_id] = record
        return record

    def get(self, migration_id: str) -> RunRecord | None:
        return self.records.get(migration_id)

    def throttle(self, migration_id: str, limit: int | None, by: str,
                 note: str = "") -> RunRecord:
        with self._lock:
            run = self.records.get(migration_id)
            if run is None:
                raise NotFound(f"no run {migration_id}")
            refuse_throttle(run)
            self.records[migration_id] = run.model_copy(
                update={"max_events_per_second": limit})
            self.throttles.append(throttle_entry(run, limit, by, note))
            return run

    def admit(self, run: RunRecord, ids: list[str],
              decide: Callable[[list[RunRecord]], RunRecord],
              twin: bool = False) -> tuple[RunRecord, bool]:
        with self._lock:  # the transaction: nothing else is admitted in between
            if twin and ids[0] in self.records:
                return self.records[ids[0]], True
            admitted = decide([other for other in self.records.values()
                               if other.status in ACTIVE_RUN_STATUSES])
            for migration_id in ids:
                if migration_id not in self.records:
                    created = admitted.model_copy(update={"id": migration_id})
                    self.records[migration_id] = created
                    return created, False
            raise Unavailable("could not find a free migration id; retry")

    def active(self, paused: bool = False) -> list[RunRecord]:
        return [run for run in self.records.values()
                if run.status in (RunStatus.PENDING, RunStatus.RUNNING)
                or (paused and run.status is RunStatus.PAUSED)]

    def rollbacks(self, migration_id: str) -> list[RunRecord]:
        return [run for run in self.records.values()
                if (run.rollback_of or {}).get("migrationId") == migration_id]

    def recent(self, limit: int, backfill_type: str | None = None,
               status: RunStatus | None = None) -> list[RunRecord]:
        runs = [run for run in self.records.values()
                if backfill_type in (None, run.type) and status in (None, run.status)]
        return sorted(runs, key=lambda run: run.created_at, reverse=True)[:limit]

    def move(self, migration_id: str, target: RunStatus, *, by: str = "", detail: str = "",
             note: str = "", failure_reason: str | None = None,
             summary: dict[str, Any] | None = None, only_from: RunStatus | None = None,
             strict: bool = True, fields: dict[str, Any] | None = None) -> RunRecord | None:
        with self._lock:
            run = self.records.get(migration_id)
            if run is None:
                raise NotFound(f"no run {migration_id}")
            move = lifecycle.plan_run_move(run, target, detail=detail, only_from=only_from,
                                           strict=strict)
            if move is None:
                return None
            self.records[migration_id] = run.model_copy(update={
                "status": target, "status_reason": move.reason,
                "status_history": [*run.status_history, history_entry(move, by, note)],
                "failure_reason": run.failure_reason if failure_reason is None
                else failure_reason,
                "started_at": NOW if move.starts else run.started_at,
                "finished_at": NOW if move.finishes else run.finished_at,
                **{name: value for name, info in RunRecord.model_fields.items()
                   for key, value in (fields or {}).items() if info.alias == key}})
            if summary is not None:
                self.summaries[migration_id] = summary
            return run


class MemoryChunks:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], ChunkRecord] = {}
        self.pools: dict[str, int] = {}  # points reserved of each run's maxPoints
        self._lock = threading.Lock()

    def add(self, migration_id: str, chunk_id: str, state: ChunkState = ChunkState.RUNNING,
            **fields: Any) -> ChunkRecord:
        record = ChunkRecord.model_validate({"id": chunk_id, "state": state,
                                             "lease_until": NOW, **fields})
        self.records[(migration_id, chunk_id)] = record
        return record

    def get(self, migration_id: str, chunk_id: str) -> ChunkRecord:
        return self.records[(migration_id, chunk_id)]

    def chunks(self, migration_id: str, states: Collection[ChunkState] | None = None, *,
               as_of: dt.datetime | None = None) -> list[ChunkRecord]:
        found = [chunk for (run, _), chunk in self.records.items()
                 if run == migration_id and (states is None or chunk.state in states)]
        return sorted(found, key=lambda chunk: (chunk.index, chunk.chunk_id))

    def summary(self, migration_id: str, codes: Collection[str], *,
                known: Mapping[ChunkState, int] | None = None,
                as_of: dt.datetime | None = None) -> ChunkTotals:
        chunks = self.chunks(migration_id)
        return ChunkTotals(
            chunks=len(chunks),
            counters=Counters(**{name: sum(getattr(chunk.counters, name) for chunk in chunks)
                                 for name in COUNTERS}),
            states={state: (known or {}).get(state, sum(chunk.state is state
                                                        for chunk in chunks))
                    for state in ChunkState},
            error_codes={code: sum(chunk.error_codes.get(code, 0) for chunk in chunks)
                         for code in codes})

    def notable(self, migration_id: str, *,
                as_of: dt.datetime | None = None) -> list[ChunkRecord]:
        return [chunk for chunk in self.chunks(migration_id)
                if chunk.state is ChunkState.RUNNING or chunk.notable]

    def lapsed(self, migration_id: str, states: Collection[ChunkState], now: dt.datetime, *,
               as_of: dt.datetime | None = None) -> list[tuple[str, ChunkState]]:
        return [(chunk.chunk_id, chunk.state)
                for chunk in self.expired(migration_id, states, now)]

    def last_checkpoint(self, migration_id: str, *,
                        as_of: dt.datetime | None = None) -> dt.datetime | None:
        return max((chunk.updated_at for chunk in self.chunks(migration_id)
                    if chunk.updated_at is not None), default=None)

    def largest(self, migration_id: str, *, as_of: dt.datetime | None = None) -> int:
        return max((chunk.eligible or 0 for chunk in self.chunks(migration_id)), default=0)

    def page(self, migration_id: str, start: int, size: int, *,
             as_of: dt.datetime | None = None) -> tuple[list[ChunkRecord], int | None]:
        found = [chunk for chunk in self.chunks(migration_id) if chunk.index >= start]
        return found[:size], found[size].index if len(found) > size else None

    def count(self, migration_id: str, states: Collection[ChunkState]) -> int:
        return len(self.chunks(migration_id, states))

    def expired(self, migration_id: str, states: Collection[ChunkState],
                now: dt.datetime) -> list[ChunkRecord]:
        return [chunk for chunk in self.chunks(migration_id, states)
                if chunk.lease_until is not None and chunk.lease_until < now]

    def reserved(self, migration_id: str) -> int:
        return self.pools.get(migration_id, 0)

    def release(self, migration_id: str, states: Collection[ChunkState]) -> int:
        given = 0
        with self._lock:
            for (run, chunk_id), chunk in list(self.records.items()):
                if run == migration_id and chunk.state in states and chunk.allowance > 0 \
                        and chunk.state is not ChunkState.RUNNING:
                    given += chunk.allowance
                    self.records[(run, chunk_id)] = chunk.model_copy(update={"allowance": 0})
            self.pools[migration_id] = self.pools.get(migration_id, 0) - given
        return given

    def totals(self, migration_id: str, counters: tuple[str, ...]) -> dict[str, int]:
        chunks = self.chunks(migration_id)
        return {name: sum(getattr(chunk.counters, name) for chunk in chunks)
                for name in counters}

    def claim(self, migration_id: str, chunk_id: str, segment: int, owner: str,
              lease_until: dt.datetime) -> ChunkRecord | lifecycle.Refusal:
        with self._lock:
            chunk = self.records.get((migration_id, chunk_id))
            if (refusal := lifecycle.plan_claim(chunk, segment)) is not None:
                return refusal
            assert chunk is not None
            self.records[(migration_id, chunk_id)] = claimed(chunk, owner, lease_until, NOW)
            return self.records[(migration_id, chunk_id)]

    def move(self, migration_id: str, chunk_id: str, target: ChunkState, note: str, *,
             new_segment: bool = False, lease_until: dt.datetime | None = None,
             picked_up: bool = False, failure_reason: str | None = None,
             read: ChunkRecord | None = None) -> int | None:
        with self._lock:
            chunk = self.records.get((migration_id, chunk_id))
            if chunk is None or (read is not None and chunk != read):
                return None  # gone, or no longer as read
            segment = lifecycle.plan_chunk_move(chunk, target, new_segment)
            if segment is None:
                return None
            self.records[(migration_id, chunk_id)] = chunk.model_copy(update={
                "state": target, "note": note, "lease_owner": None, "segment": segment,
                "lease_until": chunk.lease_until if lease_until is None else lease_until,
                "pickups": chunk.pickups + picked_up,
                "failure_reason": failure_reason or chunk.failure_reason})
            return segment


class MemoryPlans:
    """Counts from a table (chunk id -> eligible events); saving writes the chunk records and
    the run's totals into the other two stores, at once."""

    def __init__(self, runs: MemoryRuns, chunks: MemoryChunks) -> None:
        self.eligible_by_day: dict[str, int] = {}
        self.written_by_run: dict[str, int] = {}
        self.saves = 0
        self._runs, self._chunks = runs, chunks

    def eligible(self, selection: Selection, window: Window) -> int:
        return self.eligible_by_day.get(window.chunk_id, 0) if window.end > window.start else 0

    def written(self, migration_id: str) -> int:
        return self.written_by_run.get(migration_id, 0)

    def settled(self, migration_id: str) -> int:
        return 0

    def catalog(self) -> dict[str, int]:
        return {}

    def products_named(self, window: Window, limit: int) -> tuple[Counter[str], int]:
        return Counter(), 0

    def save(self, run: RunRecord, chunks: list[PlannedChunk], lease_until: dt.datetime,
             completes: str | None, fields: dict[str, Any] | None = None) -> bool:
        if self._runs.records[run.migration_id] != run:
            return False  # moved since it was read
        self.saves += 1
        for index, chunk in enumerate(chunks):
            self._chunks.add(run.migration_id, chunk.chunk_id,
                             ChunkState.COMPLETED if chunk.idle else ChunkState.PENDING,
                             index=index, eligible=chunk.eligible, quota=chunk.quota,
                             window_start=chunk.window_start, window_end=chunk.window_end,
                             source=chunk.source, lease_until=lease_until)
        update: dict[str, Any] = {"planned": True, "chunk_count": len(chunks),
                                  "eligible": sum(c.eligible for c in chunks),
                                  "total": sum(c.takes for c in chunks)}
        if completes is not None:
            update.update(status=RunStatus.COMPLETED, status_reason=completes,
                          started_at=NOW, finished_at=NOW)
        self._runs.records[run.migration_id] = run.model_copy(update=update)
        return True


class MemoryErrors:
    def __init__(self) -> None:
        self.records: dict[str, list[ErrorRecord]] = {}

    def add(self, migration_id: str, event_id: str, code: str) -> None:
        self.records.setdefault(migration_id, []).append(
            ErrorRecord(id=event_id, event_id=event_id, code=code, attempts=1, at=NOW))

    def count(self, migration_id: str, code: str | None = None, *,
              as_of: dt.datetime | None = None) -> int:
        return len([e for e in self.records.get(migration_id, []) if code in (None, e.code)])

    def first(self, migration_id: str, limit: int, *,
              as_of: dt.datetime | None = None) -> list[ErrorRecord]:
        return self.records.get(migration_id, [])[:limit]

    def pages(self, migration_id: str, code: str | None = None,
              size: int = 500) -> Iterator[ErrorRecord]:
        return iter(sorted((e for e in self.records.get(migration_id, [])
                            if code in (None, e.code)), key=lambda e: e.id))


def memory_stores() -> tuple[Stores, MemoryRuns, MemoryChunks]:
    runs, chunks = MemoryRuns(), MemoryChunks()
    return Stores(runs, chunks, MemoryPlans(runs, chunks), MemoryErrors()), runs, chunks


class FakeClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, at: dt.datetime = NOW) -> None:
        self.at = at
        self.seconds = 0.0

    def now(self) -> dt.datetime:
        return self.at

    def monotonic(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.at += dt.timedelta(seconds=seconds)
        self.seconds += seconds
