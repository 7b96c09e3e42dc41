"""The status answer and page at scale: a run of N chunks, built straight into the emulator, and
the time the status function takes to answer it.

Run from the repository root::

    .venv/bin/python -m benchmarks.scale [--chunks 1000,5000] [--repetitions 7] [--port-base 9860]

It starts its own stack (state dir ``.local/scale-stack-<port base>``), and for each size:

1. ``seed_run`` writes a run of that many chunks as the planner writes them (``PlanStore.save``:
   the fields of ``ChunkRecord``) and as their pages leave them (counters, cursor, lease,
   ``errorCodes``, wallets below zero, tallies, error records), in 500-write batches: a
   webhook replay half way, most chunks completed, a good part pending, a few running;
2. ``status_seconds`` times, over HTTP through the gateway with an operator's token, the status
   answer (JSON, the default page of chunks), the page (``Accept: text/html``) and the runs list
   page, and in this process ``progress.describe_run`` alone, counting the Firestore calls of one
   read (``benchmarks.meter``); medians of ``repetitions`` after one untimed read.

``benchmarks/bench.py`` can call ``status_seconds(db, env, chunks, repetitions)`` with its own
stack's client and environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from google.cloud import firestore

from benchmarks.meter import Meter
from emulators.issuer import mint_token
from emulators.stack import Stack
from shared.adapters import schema
from shared.adapters.stores import Stores
from shared.backfills.apply import PurchaseNotFound
from shared.backfills.registry import BACKFILLS
from shared.config import Settings
from shared.domain.records import ChunkRecord, Counters, RunRecord
from shared.errors import UNEXPECTED_ERROR, MalformedPayload, ProductNotFound
from shared.models import ChunkState, RunStatus
from shared.runs import progress

ROOT = Path(__file__).resolve().parent.parent
TASKS_VENV = ROOT / ".local" / "tasks-venv"
OPERATOR = "ops@example.com"
BATCH_WRITES = 500
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
CODES = (ProductNotFound.code, MalformedPayload.code, PurchaseNotFound.code, UNEXPECTED_ERROR)

logger = logging.getLogger("benchmarks.scale")


@dataclasses.dataclass(frozen=True)
class Mix:
    """How a built run's chunks stand: shares of completed, failed, paused and cancelled chunks
    (the rest pending), how many run, the shares that took wallets below zero and tallied, and
    the share whose lease ran out (of the running ones too only with ``stalled``: a status
    read over HTTP rescues a stalled run, which moves its chunks). ``status`` and ``history``
    are the run's (its history must allow the states: a chunk is paused only after its run
    was)."""

    completed: float = 0.55
    failed: float = 0.01
    paused: float = 0.0
    cancelled: float = 0.0
    running: int = 16
    below_zero: float = 0.01
    tallied: float = 0.005
    lapsed: float = 0.1
    stalled: bool = False
    status: RunStatus = RunStatus.RUNNING
    history: tuple[tuple[str, str], ...] = (("pending", "running"),)


def seed_run(db: firestore.Client, chunks: int, *, seed: int = 7, mix: Mix = Mix(),
             migration_id: str | None = None, now: dt.datetime | None = None) -> str:
    """Write a ``webhook_replay`` run of ``chunks`` chunks (one hour of 2024 each), its chunks'
    documents, its grid and their error records, in batches of ``BATCH_WRITES``; answer its id.
    Every figure is drawn from ``random.Random(seed)``; each chunk's ``errorCodes`` count its
    records. Nothing here is what the status answers: a test reads the documents to know
    that."""
    rng = random.Random(seed)  # noqa: S311 (sample data, not security)
    now = now or dt.datetime.now(dt.UTC)
    migration_id = migration_id or f"webhook_replay_{int(now.timestamp() * 1000)}{seed}"
    states = _states(rng, chunks, mix)
    run_ref = schema.run_ref(db, migration_id)
    writes: list[tuple[Any, dict[str, Any]]] = []
    eligible_total = 0
    ids: list[str] = []
    for index, state in enumerate(states):
        start = START + dt.timedelta(hours=index)
        chunk_id = start.strftime("%Y-%m-%dT%H")
        eligible = rng.randint(0, 400)
        eligible_total += eligible
        fields, records = _chunk(rng, chunk_id, index, state, start, eligible, mix, now)
        writes.append((run_ref.collection(schema.CHUNKS).document(chunk_id), fields))
        ids.append(chunk_id)
        writes += [(run_ref.collection(schema.ERRORS).document(event_id), record)
                   for event_id, record in records]
    run = RunRecord.model_validate({
        "id": migration_id, "type": "webhook_replay", "status": mix.status,
        "start_date": START.date(), "end_date": (START + dt.timedelta(hours=chunks)).date(),
        "planned": True, "counted": True, "eligible": eligible_total, "total": eligible_total,
        "chunk_count": chunks, "created_at": now - dt.timedelta(hours=1),
        "started_at": now - dt.timedelta(minutes=50),
        "status_history": [{"from": before, "to": after, "reason": "", "by": "",
                            "note": "", "at": now - dt.timedelta(minutes=50)}
                           for before, after in mix.history]})
    # The plan's grid, as planning writes it (``PlanStore.save``).
    writes += [(run_ref.collection(schema.GRID).document(str(number)),
                {"ids": ids[number * schema.GRID_IDS:(number + 1) * schema.GRID_IDS]})
               for number in range(-(-chunks // schema.GRID_IDS))]
    writes.append((run_ref, run.to_document()))
    for first in range(0, len(writes), BATCH_WRITES):
        batch = db.batch()
        for ref, data in writes[first:first + BATCH_WRITES]:
            batch.set(ref, data)
        batch.commit()
    return migration_id


def _states(rng: random.Random, chunks: int, mix: Mix) -> list[ChunkState]:
    running = set(rng.sample(range(chunks), min(mix.running, chunks)))
    states = []
    for index in range(chunks):
        draw = rng.random()
        if index in running:
            states.append(ChunkState.RUNNING)
        elif draw < mix.completed:
            states.append(ChunkState.COMPLETED)
        elif draw < mix.completed + mix.failed:
            states.append(ChunkState.FAILED)
        elif draw < mix.completed + mix.failed + mix.paused:
            states.append(ChunkState.PAUSED)
        elif draw < mix.completed + mix.failed + mix.paused + mix.cancelled:
            states.append(ChunkState.CANCELLED)
        else:
            states.append(ChunkState.PENDING)
    return states


def _chunk(rng: random.Random, chunk_id: str, index: int, state: ChunkState,
           start: dt.datetime, eligible: int, mix: Mix,
           now: dt.datetime) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """One chunk's document (what planning wrote, then what its pages did), and its error
    records."""
    lapsed = rng.random() < mix.lapsed and (mix.stalled or state is not ChunkState.RUNNING)
    lease_until = now + dt.timedelta(minutes=-5 if lapsed else 5)
    planned = ChunkRecord(
        id=chunk_id, index=index, window_start=start, window_end=start + dt.timedelta(hours=1),
        source=None, eligible=eligible, quota=None, state=ChunkState.PENDING, note="",
        segment=0, cursor=None, lease_owner=None, lease_until=lease_until,
        counters=Counters(), read=0, below_zero=[], started_at=None)
    fields: dict[str, Any] = {**planned.fields(), "createdAt": now - dt.timedelta(hours=1),
                              "finishedAt": None, "state": state.value}
    if state is ChunkState.PENDING:
        return fields, []
    done = state in (ChunkState.COMPLETED, ChunkState.FAILED)
    taken = eligible if done else rng.randint(0, eligible)
    errors = min(taken, rng.choice((0, 0, 0, 1, 2, 5)))
    skipped = rng.randint(0, (taken - errors) // 10)
    duplicates = rng.randint(0, (taken - errors - skipped) // 5)
    applied = taken - errors - skipped - duplicates
    codes = [rng.choice(CODES) for _ in range(errors)]
    updated = now - dt.timedelta(seconds=rng.uniform(1, 3000))
    fields.update(
        counters=Counters(taken=taken, applied=applied, duplicates=duplicates,
                          skipped=skipped, errors=errors, points=applied * 10).model_dump(),
        pages=1 + taken // 100, read=taken, cursor={"eventId": f"{chunk_id}-{taken:04}"},
        updatedAt=updated, startedAt=updated - dt.timedelta(seconds=60),
        # As the page commits write them: every registered code, once any is.
        errorCodes={code: codes.count(code) for code in BACKFILLS.error_codes()}
        if codes else {})
    if state is ChunkState.RUNNING:
        fields.update(leaseOwner=f"delivery-{index}", claimedAt=updated - dt.timedelta(
            seconds=rng.uniform(30, 300)), takenAtClaim=max(0, taken - rng.randint(0, 200)))
    if done:
        fields["finishedAt"] = updated
    if state is ChunkState.FAILED:
        fields["failureReason"] = "kept failing"
    if rng.random() < mix.below_zero:
        fields.update(belowZero=sorted({f"cus-{rng.randint(0, 50):03}" for _ in range(2)}),
                      notable=True)
    if rng.random() < mix.tallied:
        fields.update(tallies={start.date().isoformat(): {"ON_ORDER_COMPLETED": applied}},
                      notable=True)
    records = [(f"evt-{chunk_id}-{n}", {
        "eventId": f"evt-{chunk_id}-{n}", "eventType": "ON_ORDER_COMPLETED", "code": code,
        "message": f"{code} in {chunk_id}", "hint": "", "chunkId": chunk_id, "attempts": 1,
        "at": updated - dt.timedelta(seconds=n)}) for n, code in enumerate(codes)]
    return fields, records


def local_settings(project: str) -> Settings:
    """Settings enough for ``progress.describe_run`` in this process."""
    return Settings.model_validate({
        "env": "local", "project_id": project, "chunk_url": "http://127.0.0.1:1/tasks/chunk",
        "operator_audiences": "http://127.0.0.1:1", "tasks_identity": "tasks@bench",
        "ramp_start_writes": 0})


def _median(action: Callable[[], object], repetitions: int) -> tuple[float, list[float]]:
    action()  # untimed: warms the gateway's and the emulator's caches
    times = []
    for _ in range(repetitions):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3), [round(t, 3) for t in times]


def _bound(get: Callable[[str, str], object], target: str,
           accept: str) -> Callable[[], object]:
    return lambda: get(target, accept)


def status_seconds(db: firestore.Client, env: Mapping[str, str], chunks: int,
                   repetitions: int = 5, *, seed: int = 7) -> dict[str, Any]:
    """Build a run of ``chunks`` chunks in the emulator ``db`` (``seed_run``), then time the
    status answer for it, median seconds of ``repetitions`` reads each: ``json`` and ``page``
    over HTTP through the stack's gateway (``env``: the stack's environment, for its gateway
    URL and its token issuer), ``runs_page`` (the runs list as a browser gets it, one
    aggregation per run), and ``direct`` (``progress.describe_run`` in this process), with
    ``calls``: the Firestore calls of one direct read by kind (``benchmarks.meter``)."""
    migration_id = seed_run(db, chunks, seed=seed)
    base = env["BACKFILL_GATEWAY_URL"].rstrip("/")
    audience = env["BACKFILL_OPERATOR_AUDIENCES"].split(",")[0]
    token = mint_token(env["BACKFILL_ISSUER_URL"], OPERATOR, audience)
    url = f"{base}/api/admin/dataMigrations/{migration_id}"
    result: dict[str, Any] = {"chunks": chunks, "repetitions": repetitions,
                              "migration_id": migration_id}
    with httpx.Client(timeout=120, trust_env=False,
                      headers={"Authorization": f"Bearer {token}"}) as http:
        def get(target: str, accept: str) -> httpx.Response:
            response = http.get(target, headers={"Accept": accept})
            response.raise_for_status()
            return response

        answer = get(url, "application/json").json()
        result["answer"] = {"chunkStates": answer["chunkStates"], "taken": answer["taken"],
                            "errors": answer["errors"], "errorCodes": answer["errorCodes"],
                            "shown": len(answer["chunks"]), "nextChunks": answer["nextChunks"],
                            "bytes": len(json.dumps(answer))}
        for name, target, accept in (
                ("json", url, "application/json"), ("page", url, "text/html"),
                ("runs_page", f"{base}/api/admin/dataMigrations", "text/html")):
            median, each = _median(_bound(get, target, accept), repetitions)
            result[name] = {"median_seconds": median, "seconds": each}
    stores = Stores.firestore(db)
    settings = local_settings(db.project)
    median, each = _median(lambda: progress.describe_run(settings, stores, migration_id),
                           repetitions)
    result["direct"] = {"median_seconds": median, "seconds": each}
    meter = Meter(db)
    try:
        progress.describe_run(settings, stores, migration_id)
        counts = meter.reset()
    finally:
        meter.close()
    result["calls"] = {"total": counts.queries + counts.aggregations + counts.batch_gets,
                       "queries": counts.queries, "aggregations": counts.aggregations,
                       "batch_gets": counts.batch_gets, "reads": counts.reads}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale",
                                     description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--chunks", default="1000,5000",
                        help="comma-separated run sizes in chunks (default 1000,5000)")
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--port-base", type=int, default=9860)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    sizes = [int(size) for size in args.chunks.split(",") if size]
    stack = Stack(ROOT / ".local" / f"scale-stack-{args.port_base}", args.port_base,
                  tasks_venv=TASKS_VENV, sweep_seconds=0)
    results = []
    try:
        stack.up()
        env = stack.env()
        os.environ["FIRESTORE_EMULATOR_HOST"] = env["FIRESTORE_EMULATOR_HOST"]
        db = firestore.Client(project=env["BACKFILL_PROJECT_ID"])
        for size in sizes:
            stack.reset_firestore()
            logger.info("%d chunks ...", size)
            results.append(status_seconds(db, env, size, args.repetitions))
    finally:
        stack.down()
    print(json.dumps(results, indent=2))
    print()
    for row in results:
        print(f"{row['chunks']:>6} chunks: status JSON {row['json']['median_seconds']} s, page "
              f"{row['page']['median_seconds']} s, runs page "
              f"{row['runs_page']['median_seconds']} s, in process "
              f"{row['direct']['median_seconds']} s; Firestore calls of one read: "
              f"{row['calls']['total']} ({row['calls']['aggregations']} aggregations, "
              f"{row['calls']['queries']} queries, {row['calls']['batch_gets']} gets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
