"""What the status function reports: recent runs, and one run with its chunks and first errors.

Counts are the sums of the chunk documents' counters (the run document is never written per
event). ``processed`` is the events whose ledger effect now exists (applied + duplicates); in a
dry run every count says what the run would have done.

Rate and ETA are bounded by what the run may do: a delivery takes its first page at once and
only then sleeps its share of the ceiling (``shared.domain.throttle.Pacer``), so a short sample
measures that burst, not the pace. The rate is measured over windows of at least
``MIN_SAMPLE_SECONDS`` (the run's average while no delivery has worked that long), never shown
above the run's ceiling, and the ETA is the events left at that rate, rounded up.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared import clock
from shared.adapters.stores import Stores, still_active
from shared.backfills.registry import BACKFILLS
from shared.config import Settings
from shared.domain import estimate, throttle
from shared.domain.records import (
    ChunkRecord,
    ChunkView,
    ErrorView,
    LiveEstimate,
    RunFields,
    RunRecord,
    RunStatusView,
)
from shared.errors import UNEXPECTED_ERROR, EventMissing, InvalidRequest, NotFound
from shared.models import ACTIVE_RUN_STATUSES, FINAL_RUN_STATUSES, ChunkState, RunStatus
from shared.runs import completion

# Shorter than this, a delivery's events since its claim are mostly its first page, taken at
# once before the throttle made it wait; a minute spans several of the pacer's waits at the
# ceilings operators set, and the run's average stands in until a delivery has worked that long.
MIN_SAMPLE_SECONDS = 60.0


def recent_rate(samples: Iterable[tuple[int, float]]) -> float | None:
    """The events per second of the deliveries working now, from one ``(events since its
    claim, seconds since its claim)`` per running chunk; None when there is no sample or all
    are too short to tell (none reaches ``MIN_SAMPLE_SECONDS``).

    Each window counts as at least ``MIN_SAMPLE_SECONDS``, so a chunk claimed a moment ago adds
    its first page spread over that much time, not the speed of its burst.
    """
    listed = list(samples)
    if not listed or max(seconds for _, seconds in listed) < MIN_SAMPLE_SECONDS:
        return None
    return sum(max(events, 0) / max(seconds, MIN_SAMPLE_SECONDS) for events, seconds in listed)


def bounded(rate: float, ceiling: float | None) -> float:
    """``rate`` to one decimal, never above ``ceiling`` (None: no ceiling). The run's
    deliveries keep to the ceiling, so a rate above it measured a burst or a time before the
    ceiling was lowered: no pace to count on. Rounding never lifts it over the ceiling."""
    if ceiling is None:
        return round(rate, 1)
    shown = round(min(rate, ceiling), 1)
    return shown if shown <= ceiling else math.floor(ceiling * 10) / 10


def eta_seconds(left: int, rate: float) -> int | None:
    """Whole seconds to take ``left`` events at ``rate``, rounded up (never sooner than the
    rate allows); None when there is no rate to tell by."""
    if rate <= 0:
        return None
    return math.ceil(max(left, 0) / rate)


def list_runs(stores: Stores, limit: int = 20, backfill_type: str | None = None,
              status: str | None = None) -> list[dict[str, Any]]:
    """The most recent runs, newest first, optionally of one type or status."""
    return [_jsonable(RunFields.of(run).model_dump(by_alias=True))
            for run in _recent(stores, limit, backfill_type, status)]


def _recent(stores: Stores, limit: int, backfill_type: str | None,
            status: str | None) -> list[RunRecord]:
    """The most recent runs, the request's filters checked (``InvalidRequest``)."""
    if not 1 <= limit <= 200:
        raise InvalidRequest("limit", "must be between 1 and 200")
    if backfill_type is not None and backfill_type not in BACKFILLS.names():
        raise InvalidRequest("type", f"unknown backfill type {backfill_type!r}")
    if status is not None and status not in set(RunStatus):
        raise InvalidRequest("status", f"unknown status {status!r}")
    return stores.runs.recent(limit, backfill_type,
                              RunStatus(status) if status is not None else None)


def overview(stores: Stores, limit: int = 20, backfill_type: str | None = None,
             status: str | None = None, now: dt.datetime | None = None,
             settings: Settings | None = None) -> list[dict[str, Any]]:
    """The recent runs as ``list_runs`` has them, each with its progress: ``taken``,
    ``errors`` and ``percent`` (one aggregation of its chunks each), ``rate`` (its average
    since it started, no higher than its ceiling while it is active) and ``etaSeconds`` (at
    that rate, while it is active). The ceiling is ``shared.domain.throttle.ceiling`` with
    ``settings`` (the ramp too), else the run's own ``maxEventsPerSecond``."""
    now = now or clock.now()
    listed = []
    for run in _recent(stores, limit, backfill_type, status):
        totals = stores.chunks.totals(run.migration_id, ("taken", "errors"))
        taken = totals["taken"]
        total = _total(run, taken)
        started = run.started_at
        elapsed = ((run.finished_at or now) - started).total_seconds() if started else 0.0
        rate = bounded(taken / elapsed if elapsed > 0 else 0.0, _ceiling(settings, run, now))
        active = run.status in (RunStatus.PENDING, RunStatus.RUNNING)
        listed.append(_jsonable({
            **RunFields.of(run).model_dump(by_alias=True), "taken": taken,
            "errors": totals["errors"], "percent": _percent(run, taken, total),
            "rate": rate,
            "etaSeconds": eta_seconds(total - taken, rate) if active and counted(run)
            else None}))
    return listed


def _ceiling(settings: Settings | None, run: RunRecord, now: dt.datetime) -> float | None:
    """The run's ceiling while it is active (an ended run has none); without ``settings``,
    the operator's ``maxEventsPerSecond`` alone."""
    if run.status not in ACTIVE_RUN_STATUSES:
        return None
    if settings is None:
        limit = run.max_events_per_second
        return float(limit) if limit else None
    return throttle.ceiling(settings, run, now)


# The chunks one status answer holds (``chunksPerPage``), by default and at most.
DEFAULT_CHUNKS_PER_PAGE = 100
MAX_CHUNKS_PER_PAGE = 1000


def describe_run(settings: Settings, stores: Stores, migration_id: str,
                 now: dt.datetime | None = None, chunks_from: int = 0,
                 chunks_per_page: int = DEFAULT_CHUNKS_PER_PAGE) -> dict[str, Any]:
    """One run: parameters, status and why, summed counts, percent, rate and ETA, its ceiling
    (the throttle), the count of its chunks in each state, whether it is stalled (and which
    chunks), error counts by code, its first ``BACKFILL_FIRST_ERRORS_SHOWN`` errors, and one
    page of its chunks: ``chunks_per_page`` (1 to ``MAX_CHUNKS_PER_PAGE``) from the chunk of
    planning index ``chunks_from`` on, with the paths of the pages before and after it
    (``InvalidRequest`` naming ``chunksFrom`` or ``chunksPerPage`` when out of range).

    No chunk is read for the totals: every part is read as of the run document's read time,
    so the parts add up however the run moves meanwhile. The sums of the chunks' counters, the
    count in each state and the records written per code are aggregations; the chunks read
    whole are the running ones (the rate, the stall, the last checkpoint while any runs),
    those whose pages took a wallet below zero or tallied, the page shown (by id, from the
    plan's grid), and, when an active run has no chunk running, the ids of those whose lease
    ran out (the stall). Error counts by code are
    the chunks' per-code counts when they match the run's records, else the records counted
    (``_error_codes``).
    """
    now = now or clock.now()
    _check_page(chunks_from, chunks_per_page)
    run = stores.runs.get(migration_id)
    if run is None:
        raise NotFound(f"no run {migration_id}")
    as_of = run.read_time
    chunk_store, errors = stores.chunks, stores.errors
    with ThreadPoolExecutor(max_workers=5) as pool:
        paged = pool.submit(lambda: chunk_store.page(migration_id, chunks_from,
                                                     chunks_per_page, as_of=as_of))
        records = pool.submit(lambda: errors.count(migration_id, as_of=as_of))
        first = pool.submit(lambda: errors.first(migration_id, settings.first_errors_shown,
                                                 as_of=as_of))
        notable = chunk_store.notable(migration_id, as_of=as_of)
        running = [chunk for chunk in notable if chunk.state is ChunkState.RUNNING]
        # While chunks run, the latest checkpoint is theirs (read whole already); else ask.
        last = None if running else pool.submit(
            lambda: chunk_store.last_checkpoint(migration_id, as_of=as_of))
        totals = chunk_store.summary(
            migration_id, _codes(run),
            known={ChunkState.RUNNING: len(running), **_empty_states(run)}, as_of=as_of)
        page, after = paged.result()
        last_checkpoint = last.result() if last is not None else max(
            (chunk.updated_at for chunk in running if chunk.updated_at is not None),
            default=None)
        error_codes = _error_codes(stores, migration_id, totals.error_codes,
                                   records.result(), as_of)
        first_errors = first.result()
    sums = totals.counters
    taken = sums.taken
    total = _total(run, taken)
    left_over = (run.eligible or 0) - total
    active = run.status in (RunStatus.PENDING, RunStatus.RUNNING)
    lapsed = chunk_store.lapsed(migration_id, [ChunkState.PENDING], now, as_of=as_of) \
        if active and not running else []
    below_zero = sorted({customer for chunk in notable for customer in chunk.below_zero})
    ceiling = _ceiling(settings, run, now)
    path = f"/api/admin/dataMigrations/{migration_id}"
    view = RunStatusView.of(
        run,
        total=total,
        processed=sums.applied + sums.duplicates,
        applied=sums.applied,
        duplicates=sums.duplicates,
        skipped=sums.skipped,
        errors=sums.errors,
        outside=sums.outside,
        taken=taken,
        points_moved=sums.points,
        percent=_percent(run, taken, total),
        left_for_later_run=max(left_over, 0),
        wallets_below_zero={"count": len(below_zero), "customer_ids": below_zero},
        chunk_states={state.value: count for state, count in totals.states.items() if count},
        **_pace(run, running, last_checkpoint, [chunk_id for chunk_id, _ in lapsed], taken,
                total, ceiling, now),
        ceiling=ceiling,
        status_history=run.status_history,
        error_codes=error_codes,
        tallies=completion.tallies(notable),
        errors_url=f"{path}/errors",
        chunks=[_chunk_view(chunk) for chunk in page],
        chunks_from=chunks_from,
        chunks_per_page=chunks_per_page,
        next_chunks=_page_path(path, after, chunks_per_page) if after is not None else None,
        previous_chunks=_page_path(path, max(0, min(chunks_from, totals.chunks)
                                             - chunks_per_page), chunks_per_page)
        if chunks_from > 0 else None,
        first_errors=[ErrorView.model_validate(error.model_dump()) for error in first_errors],
        live_estimate=_live_estimate(settings, run, sums.applied, totals.chunks,
                                     chunk_store.largest(migration_id, as_of=as_of))
        if run.dry_run else None,
        note=_note(stores, run, left_over),
    )
    body = view.model_dump(by_alias=True)
    for optional in ("note", "liveEstimate"):
        if body[optional] is None:
            del body[optional]
    result: dict[str, Any] = _jsonable(body)
    return result


def _live_estimate(settings: Settings, run: RunRecord, applies: int, chunks: int,
                   largest: int) -> LiveEstimate:
    """How long the live run of what this dry run found would take: the events it applied,
    over its chunks (the largest as planned), at the expected page-loop rate
    (``BACKFILL_CHUNK_EVENTS_PER_SECOND``), the queue's concurrency, under the ramp and the
    run's ceiling."""
    work = estimate.Workload(
        events=applies, chunks=max(chunks, 1), largest_chunk=min(largest, applies),
        chunk_rate=settings.chunk_events_per_second, concurrency=settings.queue_concurrency,
        ceiling=run.max_events_per_second)
    found = estimate.estimate(settings, work)
    return LiveEstimate(
        seconds=round(found.seconds, 1), bound_by=found.bound, events=applies,
        chunks=work.chunks, chunk_events_per_second=work.chunk_rate,
        concurrency=work.concurrency, ramp_start_writes=settings.ramp_start_writes,
        ramp_step_minutes=settings.ramp_step_minutes, ceiling=work.ceiling)


def _check_page(chunks_from: int, chunks_per_page: int) -> None:
    if chunks_from < 0:
        raise InvalidRequest("chunksFrom", "must be a chunk's planning index, 0 or more")
    if not 1 <= chunks_per_page <= MAX_CHUNKS_PER_PAGE:
        raise InvalidRequest("chunksPerPage", f"must be between 1 and {MAX_CHUNKS_PER_PAGE}")


def _page_path(path: str, chunks_from: int, chunks_per_page: int) -> str:
    """The status answer's path with the page of chunks from planning index ``chunks_from``."""
    return f"{path}?chunksFrom={chunks_from}&chunksPerPage={chunks_per_page}"


def _codes(run: RunRecord) -> list[str]:
    """The codes a run's records may bear: its type's, then the executor's (the registry's
    order)."""
    own = set(BACKFILLS.get(run.type).error_codes) if run.type in BACKFILLS.names() else set()
    executor = {EventMissing.code, UNEXPECTED_ERROR}
    return [code for code in BACKFILLS.error_codes() if code in own | executor]


def _empty_states(run: RunRecord) -> dict[ChunkState, int]:
    """States no chunk of ``run`` can be in, as the run's status history shows (read with the
    chunks, at one time), so that they need no count: a chunk is paused only once its run was
    (run control's pause moves the run, then its chunks; a delivery pauses its chunk when it
    finds its run paused), and cancelled only once its run was cancelled or failed (cancel,
    the breaker, a delivery finding its run so)."""
    reached = {str(move.get("to")) for move in run.status_history} | {run.status.value}
    empty: dict[ChunkState, int] = {}
    if RunStatus.PAUSED.value not in reached:
        empty[ChunkState.PAUSED] = 0
    if not reached & {RunStatus.CANCELLED.value, RunStatus.FAILED.value}:
        empty[ChunkState.CANCELLED] = 0
    return empty


def _error_codes(stores: Stores, migration_id: str, written: dict[str, int], records: int,
                 as_of: dt.datetime | None) -> dict[str, int]:
    """The run's records by code, in the registry's order: ``written`` (per code, the records
    the chunks' page commits wrote: ``shared.executor.commit.recorded``) when they add up to
    the records the run holds, else the records of each code counted.

    Written is exact unless a record was written twice: a record's id is its event's (an
    error) or its finding's, so a repeat overwrites it, and a finding of an audit, or an item a
    provider's history holds twice, is written again by another page. Then written is more
    than the records, and the records of the codes written are counted. Written is less when
    records were written without their counts (pages committed before the counts existed, a
    code outside the run's type's): then every code's records are counted, as they were
    before."""
    if records == 0:
        return {}
    registered = BACKFILLS.error_codes()
    if sum(written.values()) == records:
        counted = written
    else:
        candidates = [code for code, count in written.items() if count] \
            if sum(written.values()) > records else []
        counted = _count_codes(stores, migration_id, candidates, as_of)
        if sum(counted.values()) != records:
            counted.update(_count_codes(stores, migration_id,
                                        [code for code in registered if code not in counted],
                                        as_of))
    return {code: counted[code] for code in registered if counted.get(code)}


def _count_codes(stores: Stores, migration_id: str, codes: list[str],
                 as_of: dt.datetime | None) -> dict[str, int]:
    """The run's records of each of ``codes``, counted side by side (one aggregation each)."""
    if not codes:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(codes), 8)) as pool:
        return dict(zip(codes, pool.map(lambda code: stores.errors.count(
            migration_id, code, as_of=as_of), codes), strict=True))


def _note(stores: Stores, run: RunRecord, left_over: int) -> str | None:
    waiting = still_active(stores.runs, run.waiting_for) if not run.planned else []
    if waiting:
        return (f"waiting for {', '.join(waiting)} over the same dates to end; "
                "planned after it")
    if not run.planned:
        return "planning: counting the events of each chunk"
    if left_over > 0:
        return (f"maxEvents bounded this run: {left_over} eligible event(s) are left "
                "for a later run")
    return None


def _pace(run: RunRecord, running: list[ChunkRecord], last: dt.datetime | None,
          lapsed: list[str], taken: int, total: int, ceiling: float | None,
          now: dt.datetime) -> dict[str, Any]:
    """Rate, ETA, checkpoint age and stall of a run, from its running chunks, its last
    checkpoint, and (when none runs) the pending chunks whose lease ran out (``lapsed``).

    ``rate`` is the events per second of the deliveries now working (``recent_rate``: each
    running chunk's events since its claim over the time from its claim until now, sleeps for
    the throttle included), the run's average while those samples are too short, 0 while no
    chunk runs, and never above ``ceiling``; ``averageRate`` is since the run started, as
    measured. ``etaSeconds`` is the events left at ``rate`` (else at the average, bounded the
    same way). A run is stalled when it is active but a running chunk's lease expired (no
    checkpoint for ``BACKFILL_LEASE_SECONDS``), or no chunk is running and the pending ones
    waited past their lease; the watchdog picks such chunks up, this says which they are.
    """
    samples = [(chunk.counters.taken - chunk.taken_at_claim,
                (now - chunk.claimed_at).total_seconds())
               for chunk in running if chunk.claimed_at is not None]
    started, finished = run.started_at, run.finished_at
    elapsed = ((finished or now) - started).total_seconds() if started is not None else 0.0
    average = taken / elapsed if elapsed > 0 else 0.0
    recent = recent_rate(samples)
    rate = bounded(average if recent is None else recent, ceiling) if samples else 0.0
    active = run.status in (RunStatus.PENDING, RunStatus.RUNNING)
    stalled = [chunk.chunk_id for chunk in running
               if chunk.lease_until is not None and chunk.lease_until < now]
    if not running:
        stalled = lapsed
    pace = rate or bounded(average, ceiling)
    return {
        "rate": rate,
        "average_rate": round(average, 1),
        "eta_seconds": eta_seconds(total - taken, pace) if active and run.planned
        and counted(run) else None,
        "last_checkpoint_at": last,
        "last_checkpoint_age_seconds": round((now - last).total_seconds(), 1) if last
        else None,
        "stalled": bool(active and stalled),
        "stalled_chunks": stalled if active else [],
    }


def counted(run: RunRecord) -> bool:
    """Whether planning counted the run's items (a type whose source cannot count plans its
    windows whole: how much they hold is known only as its chunks end)."""
    return run.counted


def _total(run: RunRecord, taken: int) -> int:
    """The run's total: as planned, or, for an uncounted run, what it has taken so far."""
    return (run.total or 0) if counted(run) else taken


def _percent(run: RunRecord, taken: int, total: int) -> float:
    if not run.planned:
        return 0.0
    if not counted(run):
        return 100.0 if run.status in FINAL_RUN_STATUSES else 0.0
    if total == 0:
        return 100.0
    return round(min(100.0, 100.0 * taken / total), 1)


def _chunk_view(chunk: ChunkRecord) -> ChunkView:
    counters = chunk.counters
    return ChunkView(
        chunk_id=chunk.chunk_id, state=chunk.state, window_start=chunk.window_start,
        window_end=chunk.window_end, eligible=chunk.eligible, quota=chunk.quota,
        taken=counters.taken, applied=counters.applied, duplicates=counters.duplicates,
        skipped=counters.skipped, errors=counters.errors, segment=chunk.segment,
        pages=chunk.pages, cursor_event_id=(chunk.cursor or {}).get("eventId"),
        updated_at=chunk.updated_at, lease_until=chunk.lease_until, pickups=chunk.pickups,
        note=chunk.note or chunk.failure_reason or "")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.date):
        return value.isoformat()
    return value
