"""Throughput of a webhook replay on the local stack, against the emulator's raw write rate.

Run from the repository root::

    .venv/bin/python -m benchmarks.replay [--events 5000] [--port-base 9500] [--no-page-sizes]

It starts its own stack (state dir ``.local/bench-stack``, ports ``port_base+1..+5``, the tasks
venv ``.local/tasks-venv`` shared with the test stack) and measures, in one process and one run,
so that the ratios between the numbers mean something on a noisy shared machine:

1. ``raw``: the Firestore emulator's write rate for documents shaped like a webhook event, in
   500-op ``WriteBatch`` commits and in single ``set()`` calls;
2. ``replay``: a live ``webhook_replay`` of N unprocessed purchases over 5 days through the real
   path (POST trigger with an operator token, the Cloud Tasks emulator calling the gateway's chunk
   handler, status polled until the run ends), and its ratio to the raw batch rate;
3. ``dry_run``: a dry run of the same range on the same freshly seeded data;
4. ``trigger``: the wall time of the trigger's answer for a year-long range (366 chunks) with a
   few thousand events in it and without events, and the time until its planning task has
   counted every chunk (one aggregation each) and written the chunks;
5. ``page_sizes``: the replay again with ``BACKFILL_PAGE_SIZE`` 50, 100 and 124 (the gateway is
   restarted for each).

Firestore is emptied before every measurement. CPU seconds of each stack process (the Firestore
JVM, the Cloud Tasks emulator, the gateway) and of this process are recorded per measurement, so
a reader can see where the time goes. Results: a table on stdout and
``.local/bench-results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from google.cloud import firestore

from backfill_cli.client import BackfillClient, Endpoints
from emulators.issuer import mint_token
from emulators.sample import SampleShape, seed
from emulators.stack import Stack
from shared.adapters import schema
from shared.adapters.stores import FirestorePlans
from shared.backfills.registry import BACKFILLS, BackfillType
from shared.domain import chunking

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".local" / "bench-stack"
TASKS_VENV = ROOT / ".local" / "tasks-venv"
RESULTS = ROOT / ".local" / "bench-results.json"
OPERATOR = "ops@example.com"

# Each applied purchase writes its ledger entry, its event's processed flag and a share of its
# wallet's increment (one per wallet per page): about three document writes per event.
WRITES_PER_EVENT = 3
BATCH_OPS = 500
REPLAY_START = dt.date(2025, 1, 1)
REPLAY_DAYS = 5
YEAR_START, YEAR_END = dt.date(2024, 1, 1), dt.date(2024, 12, 31)
PAGE_SIZES = (50, 100, 124)
RUN_TIMEOUT_SECONDS = 240.0
POLL_SECONDS = 0.25
COUNT_WORKERS = 16  # the trigger's default BACKFILL_ENQUEUE_WORKERS

logger = logging.getLogger("benchmarks.replay")


# --- helpers ----------------------------------------------------------------------------------


def purchases_only(purchases: int, start: dt.date, days: int, seed_value: int = 11,
                   busy_share: float = 0.0) -> SampleShape:
    """A sample of unprocessed, well-formed purchases only: every event is applied once
    (``busy_share`` of them on the first day)."""
    return SampleShape(start=start, days=days, purchases=purchases, live_applied=0.0,
                       live_credited_unflagged=0.0, unknown_product=0.0, malformed=0.0,
                       redelivered=0.0, refunds=0, chargebacks=0, other=0, seed=seed_value,
                       busy_share=busy_share)


def event_like(n: int) -> dict[str, Any]:
    """A document of the shape and size of a seeded purchase webhook event (~0.5 KB)."""
    received = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=n)
    body = {"id": f"ord-{n:05}", "customer": {"id": f"cust-{n % 150:04}", "email": "x@y.z"},
            "lines": [{"product_id": f"prod-{(n + i) % 20:02}", "quantity": 1 + i,
                       "unit_amount": 1000 + 37 * i} for i in range(2)],
            "total_amount": 3074, "currency": "EUR", "created_at": received.isoformat()}
    return {"eventId": f"raw-{n:06}", "provider": "paynow", "eventType": "ON_ORDER_COMPLETED",
            "receivedAt": received,
            "payload": {"event_type": "ON_ORDER_COMPLETED", "event_id": f"raw-{n:06}",
                        "body": body},
            "processed": False, "processedAt": None, "processingError": "ledger write timed out"}


def write_batches(db: firestore.Client, collection: firestore.CollectionReference, prefix: str,
                  documents: int) -> None:
    """``documents`` event-like documents, in 500-op batch commits one after another."""
    for first in range(0, documents, BATCH_OPS):
        batch = db.batch()
        for n in range(first, min(first + BATCH_OPS, documents)):
            batch.set(collection.document(f"{prefix}-{n:06}"), event_like(n))
        batch.commit()


def _proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat: indexes 11 and 12 after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _group_cpu_seconds(pgid: int) -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += _proc_cpu_seconds(int(entry.name))
    return total


class CpuMeter:
    """CPU seconds used by each stack process group (each was started as its group's leader)
    and by this process, between ``start`` and ``stop``."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack

    def sample(self) -> dict[str, float]:
        groups = {row["name"]: _group_cpu_seconds(int(row["pid"]))
                  for row in self._stack.status()}
        times = os.times()
        groups["bench client"] = times.user + times.system
        return groups

    @contextlib.contextmanager
    def measure(self, into: dict[str, Any]) -> Iterator[None]:
        before = self.sample()
        try:
            yield
        finally:
            after = self.sample()
            into["cpu_seconds"] = {name: round(after[name] - before.get(name, 0.0), 2)
                                   for name in after}


class Api(BackfillClient):
    """The bundle's client, called as an operator, with the benchmark's two needs: the wall
    time of a start, and a fresh token after the gateway restarts."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        super().__init__(Endpoints.gateway(env["BACKFILL_GATEWAY_URL"]), self._token(),
                         timeout=120, trust_env=False)

    def _token(self) -> str:
        return mint_token(self._env["BACKFILL_ISSUER_URL"], OPERATOR,
                          self._env["BACKFILL_OPERATOR_AUDIENCES"].split(",")[0])

    def refresh_token(self) -> None:
        self.use_token(self._token())

    def start_timed(self, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """Start a run; answer the trigger's JSON body and the wall seconds of the answer."""
        started = time.perf_counter()
        answer = self.start(body)
        return answer, time.perf_counter() - started

    def wait_for_end(self, migration_id: str,
                     timeout: float = RUN_TIMEOUT_SECONDS) -> dict[str, Any]:
        return self.wait(migration_id, timeout=timeout, every=POLL_SECONDS)


def _ts(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


# --- measurements -----------------------------------------------------------------------------


@dataclasses.dataclass
class Bench:
    stack: Stack
    db: firestore.Client
    api: Api
    cpu: CpuMeter

    def raw_writes(self, documents: int, singles: int) -> dict[str, Any]:
        """Docs/s of event-sized documents: 500-op batch commits, then single ``set()`` calls."""
        self.stack.reset_firestore()
        raw = self.db.collection("benchRaw")
        result: dict[str, Any] = {"documents": documents, "doc_bytes": len(
            json.dumps(event_like(0), default=str))}
        # One untimed round first: the emulator's JVM writes ~30% slower until its JIT warms up.
        write_batches(self.db, raw, "warm", min(documents, 2000))
        with self.cpu.measure(result):
            started = time.perf_counter()
            write_batches(self.db, raw, "raw", documents)
            batch_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for n in range(singles):
            raw.document(f"single-{n:06}").set(event_like(n))
        single_seconds = time.perf_counter() - started
        result.update(batch_seconds=round(batch_seconds, 3),
                      batch_docs_per_s=round(documents / batch_seconds),
                      singles=singles, single_seconds=round(single_seconds, 3),
                      single_docs_per_s=round(singles / single_seconds))
        self.stack.reset_firestore()
        return result

    def replay(self, events: int, dry_run: bool, shape: SampleShape | None = None,
               timeout: float = RUN_TIMEOUT_SECONDS,
               seeded: Callable[[], None] = lambda: None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Seed N purchases (over 5 days, or as ``shape`` has them), run one webhook replay of
        their days over HTTP (``extra``: more fields of its request), time it. ``seeded`` is
        called once the data is in."""
        self.stack.reset_firestore()
        self.stack.wait_idle(30)
        shape = shape or purchases_only(events, REPLAY_START, REPLAY_DAYS)
        seed(self.db, shape)
        seeded()
        end = shape.start + dt.timedelta(days=shape.days - 1)
        body = {"type": "webhook_replay", "startDate": shape.start.isoformat(),
                "endDate": end.isoformat(), "dryRun": dry_run, **(extra or {})}
        tasks_before = self.stack.tasks_stats()
        result: dict[str, Any] = {"events": events, "dry_run": dry_run}
        with self.cpu.measure(result):
            started = time.perf_counter()
            answer, trigger_seconds = self.api.start_timed(body)
            run = self.api.wait_for_end(answer["migrationId"], timeout)
            wall = time.perf_counter() - started
            self.stack.wait_idle(30)
        tasks_after = self.stack.tasks_stats()
        created, finished = _ts(run.get("createdAt")), _ts(run.get("finishedAt"))
        began = _ts(run.get("startedAt"))
        run_seconds = (finished - created).total_seconds() if created and finished else wall
        # From its first chunk's start to its end: what the run's estimate predicts (planning,
        # before it, is measured apart).
        result["apply_seconds"] = round((finished - began).total_seconds(), 3) \
            if began and finished else None
        done = int(run["applied"]) + int(run["duplicates"]) + int(run["skipped"])
        result.update(
            status=run["status"], applied=run["applied"], errors=run["errors"],
            duplicates=run["duplicates"], skipped=run["skipped"], taken=run["taken"],
            chunks=run["chunkCount"], pages=sum(int(c.get("pages") or 0) for c in run["chunks"]),
            segments=sum(int(c.get("segment") or 0) + 1 for c in run["chunks"]),
            tasks=int(tasks_after["succeeded"]) - int(tasks_before["succeeded"]),
            task_retries=int(tasks_after["retried"]) - int(tasks_before["retried"]),
            trigger_seconds=round(trigger_seconds, 3),
            run_seconds=round(run_seconds, 3), wall_seconds=round(wall, 3),
            events_per_s=round(done / run_seconds) if run_seconds else None)
        result["chunk_timeline"] = self._chunk_timeline(answer["migrationId"], created)
        if dry_run:
            result["ledger_entries_after"] = schema.count(self.db.collection(schema.LEDGER))
        return result

    def _chunk_timeline(self, migration_id: str,
                        created: dt.datetime | None) -> list[dict[str, Any]]:
        """Each chunk's start and end, in seconds after the run was created."""
        rows = []
        for snap in schema.run_ref(self.db, migration_id).collection(schema.CHUNKS).stream():
            data = snap.to_dict() or {}
            began, ended = data.get("startedAt"), data.get("finishedAt")
            rows.append({
                "chunk": snap.id, "events": data.get("eligible"), "pages": data.get("pages"),
                "start_s": round((began - created).total_seconds(), 2)
                if began and created else None,
                "end_s": round((ended - created).total_seconds(), 2)
                if ended and created else None})
        return rows

    def count_only(self, start: dt.date, end: dt.date, workers: int) -> float:
        """Seconds for the trigger's own counting step alone: one count per 1-day window, on
        ``workers`` threads, exactly as ``shared.runs.planner.plan_run`` does it."""
        backfill = BACKFILLS.get(BackfillType.WEBHOOK_REPLAY)
        plans = FirestorePlans(self.db)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda window: backfill.size(plans, window),
                          chunking.windows(start, end, 1)))
        return time.perf_counter() - started

    def trigger_latency(self, events: int, repetitions: int) -> dict[str, Any]:
        """Wall time of the trigger's answer for a year-long range, with and without events."""
        body = {"type": "webhook_replay", "startDate": YEAR_START.isoformat(),
                "endDate": YEAR_END.isoformat(), "dryRun": False}
        result: dict[str, Any] = {"range_days": (YEAR_END - YEAR_START).days + 1,
                                  "events": events, "repetitions": repetitions}
        self.stack.reset_firestore()
        self.stack.wait_idle(30)
        empty: list[float] = []
        planned: list[float] = []
        for _ in range(repetitions):
            answer, seconds = self.api.start_timed(body)
            empty.append(seconds)
            planned.append(seconds + self.until_planned(answer["migrationId"]))
        self.stack.wait_idle(60)
        result["empty_year"] = {"seconds": [round(s, 3) for s in empty],
                                "median_seconds": round(statistics.median(empty), 3),
                                "planned_median_seconds": round(statistics.median(planned), 3),
                                "chunks": answer["chunks"]}

        self.stack.reset_firestore()
        days = result["range_days"]
        seed(self.db, purchases_only(events, YEAR_START, days, seed_value=13))
        times: list[float] = []
        planned = []
        answers: list[dict[str, Any]] = []
        with self.cpu.measure(result):
            for _ in range(repetitions):
                # The answer comes before planning (a task); time both. Dry runs, so that every
                # repetition plans the same eligible events.
                answer, seconds = self.api.start_timed({**body, "dryRun": True})
                planned.append(seconds + self.until_planned(answer["migrationId"]))
                times.append(seconds)
                answers.append(self.api.run(answer["migrationId"]))
                self.stack.wait_idle(120)
        count_seconds = self.count_only(YEAR_START, YEAR_END, COUNT_WORKERS)
        result["seeded_year"] = {
            "counts_alone_seconds": round(count_seconds, 3),
            "seconds": [round(s, 3) for s in times],
            "median_seconds": round(statistics.median(times), 3),
            "planned_median_seconds": round(statistics.median(planned), 3),
            "chunks": answers[-1]["chunkCount"], "eligible": answers[-1]["eligible"]}
        self.stack.reset_firestore()
        return result

    def until_planned(self, migration_id: str, timeout: float = 120) -> float:
        """Seconds until the run's planning task has counted and written its chunks."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.api.run(migration_id).get("planned"):
                return time.perf_counter() - started
            time.sleep(0.05)
        raise TimeoutError(f"run {migration_id} not planned within {timeout} s")

    def page_sizes(self, events: int, rounds: int,
                   base_overrides: dict[str, str]) -> list[dict[str, Any]]:
        """The live replay per page size, sizes interleaved over ``rounds``; median rate."""
        runs: dict[int, list[dict[str, Any]]] = {size: [] for size in PAGE_SIZES}
        try:
            for _ in range(rounds):
                for size in PAGE_SIZES:
                    self.stack.restart_gateway(
                        {**base_overrides, "BACKFILL_PAGE_SIZE": str(size)})
                    self.api.refresh_token()
                    runs[size].append(self.replay(events, dry_run=False))
        finally:
            self.stack.restart_gateway(base_overrides)
        rows = []
        for size, measured in runs.items():
            rates = [int(run["events_per_s"] or 0) for run in measured]
            rows.append({"page_size": size, "events_per_s": round(statistics.median(rates)),
                         "events_per_s_each": rates, "pages": measured[-1]["pages"],
                         "run_seconds_each": [run["run_seconds"] for run in measured],
                         "applied": [run["applied"] for run in measured]})
        return rows


# --- report -----------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    raw, live, dry = results["raw"], results["replay"], results["dry_run"]
    raw_rate = raw["batch_docs_per_s"]
    return {
        "replay_over_raw_batch": _ratio(live["events_per_s"], raw_rate),
        "replay_writes_over_raw_batch": _ratio(
            (live["events_per_s"] or 0) * WRITES_PER_EVENT, raw_rate),
        "dry_run_over_replay": _ratio(dry["events_per_s"], live["events_per_s"]),
        "raw_single_over_batch": _ratio(raw["single_docs_per_s"], raw_rate),
    }


def print_table(results: dict[str, Any]) -> None:
    raw, live, dry, trig = (results["raw"], results["replay"], results["dry_run"],
                            results["trigger"])
    ratios = results["ratios"]
    rows: list[tuple[str, str]] = [
        ("raw writes, 500-op batches", f"{raw['batch_docs_per_s']:>7} docs/s  "
         f"({raw['documents']} docs of ~{raw['doc_bytes']} B)"),
        ("raw writes, single set()", f"{raw['single_docs_per_s']:>7} docs/s  "
         f"({raw['singles']} docs)"),
        ("replay (live), HTTP + tasks", f"{live['events_per_s']:>7} events/s  "
         f"({live['applied']} applied in {live['run_seconds']} s, {live['pages']} pages, "
         f"{live['tasks']} tasks, {live['chunks']} chunks)"),
        ("  / raw batch rate", f"{ratios['replay_over_raw_batch']:>7}  "
         f"(x{WRITES_PER_EVENT} writes/event: {ratios['replay_writes_over_raw_batch']})"),
        ("dry run, same range", f"{dry['events_per_s']:>7} events/s  "
         f"({dry['run_seconds']} s; {ratios['dry_run_over_replay']} x the live rate)"),
        ("trigger answer, 366-day range", f"{trig['seeded_year']['median_seconds']:>7} s median"
         f"  (runs: {trig['seeded_year']['seconds']})"),
        ("  planned (counts + chunks)", f"{trig['seeded_year']['planned_median_seconds']:>7} s"
         f" median  ({trig['seeded_year']['eligible']} events, "
         f"{trig['seeded_year']['chunks']} chunks)"),
        ("  its 366 counts alone", f"{trig['seeded_year']['counts_alone_seconds']:>7} s  "
         f"({COUNT_WORKERS} threads, from this process)"),
        ("trigger answer, 366 empty days", f"{trig['empty_year']['median_seconds']:>7} s median"
         f"  (planned after {trig['empty_year']['planned_median_seconds']} s)"),
    ]
    for row in results.get("page_sizes", []):
        rows.append((f"replay, page size {row['page_size']}",
                     f"{row['events_per_s']:>7} events/s  median ({row['pages']} pages; "
                     f"each run: {row['events_per_s_each']} events/s)"))
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print()
    for name in ("replay", "dry_run"):
        cpu = results[name].get("cpu_seconds", {})
        print(f"cpu seconds during {name}: " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
    print(f"results: {RESULTS}")


# --- main -------------------------------------------------------------------------------------


def _step(name: str, action: Callable[[], Any]) -> Any:
    logger.info("%s ...", name)
    started = time.perf_counter()
    value = action()
    logger.info("%s done in %.1f s", name, time.perf_counter() - started)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay",
                                     description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=5000,
                        help="purchases in the replay over 5 days (default 5000)")
    parser.add_argument("--year-events", type=int, default=3000,
                        help="purchases spread over 2024 for the trigger latency (default 3000)")
    parser.add_argument("--singles", type=int, default=300,
                        help="documents written with single set() calls (default 300)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=9500)
    parser.add_argument("--page-size-rounds", type=int, default=2,
                        help="runs per page size, interleaved (default 2)")
    parser.add_argument("--no-page-sizes", action="store_true",
                        help="skip the page size comparison")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    overrides: dict[str, str] = {}
    # No background sweeps: each measurement is the run alone (production sweeps every 5 min).
    stack = Stack(STATE_DIR, args.port_base, overrides, tasks_venv=TASKS_VENV, sweep_seconds=0)
    began = time.perf_counter()
    results: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "parameters": vars(args),
    }
    try:
        _step("stack up", stack.up)
        env = stack.env()
        os.environ["FIRESTORE_EMULATOR_HOST"] = env["FIRESTORE_EMULATOR_HOST"]
        db = firestore.Client(project=env["BACKFILL_PROJECT_ID"])
        api = Api(env)
        bench = Bench(stack, db, api, CpuMeter(stack))
        try:
            results["raw"] = _step("raw writes",
                                   lambda: bench.raw_writes(args.events, args.singles))
            # A small replay first, untimed: warms the gateway's imports and the emulator's JIT.
            _step("warm-up replay", lambda: bench.replay(min(args.events, 1000), False))
            results["replay"] = _step("live replay", lambda: bench.replay(args.events, False))
            results["dry_run"] = _step("dry run", lambda: bench.replay(args.events, True))
            results["trigger"] = _step("trigger latency", lambda: bench.trigger_latency(
                args.year_events, args.repetitions))
            if not args.no_page_sizes:
                results["page_sizes"] = _step("page sizes", lambda: bench.page_sizes(
                    args.events, args.page_size_rounds, overrides))
        finally:
            api.close()
    finally:
        _step("stack down", stack.down)
    results["ratios"] = summarize(results)
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = round(time.perf_counter() - began, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"total {results['total_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
