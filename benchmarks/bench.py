"""The bundle's benchmark: every figure the README's table shows, measured in one run on one
local stack, so that the ratios between them mean something on a noisy shared machine.

Run from the repository root (``make bench``)::

    .venv/bin/python -m benchmarks.bench [--events 6000] [--latency-ms 10] [--quick]

With zero added latency, and again with ``--latency-ms`` added each way in front of Firestore
by a TCP proxy of this package (``benchmarks.latency``; production's round trip from a function
to Firestore in its region is about that), it measures:

1. ``raw``: 500-op batch commits of event-sized documents, one after another;
2. ``baseline``: the simplest correct alternative, one transaction per event on 8 threads
   (``benchmarks.baseline``), over N purchases spread over 10 days;
3. ``uniform``: a live ``webhook_replay`` of the same N purchases through the real path (the
   trigger over HTTP, the Cloud Tasks emulator calling the gateway's chunk handler);
4. ``skewed``: the same N purchases with 90% on one day (an incident day).

Once, at zero latency: Firestore reads and writes per applied purchase (counted at the client
by ``benchmarks.meter`` on an in-process replay, and on the baseline), the chunk handler's RSS
through a replay of ``--rss-events`` purchases (sampled every half second), and the trigger's
and the status function's answer times for a 366-day run.

``--quick`` is the correctness-only version CI runs: small numbers, every figure still
measured, and a non-zero exit unless every run applied each event exactly once. Results: a
table on stdout and ``.local/bench-results.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.cloud import firestore

from benchmarks import baseline, scale
from benchmarks.latency import LatencyProxy
from benchmarks.meter import Meter
from benchmarks.own_writes import own_writes
from benchmarks.replay import (
    RESULTS,
    TASKS_VENV,
    Api,
    Bench,
    CpuMeter,
    purchases_only,
    write_batches,
)
from emulators.sample import SampleShape, seed
from emulators.stack import QUEUE_CONCURRENCY, Stack
from shared import wiring
from shared.adapters import schema
from shared.adapters.cloud_tasks import InProcessDispatcher, TaskKind
from shared.adapters.oidc import Caller
from shared.adapters.stores import Stores
from shared.backfills.registry import BackfillType
from shared.config import Settings
from shared.domain import estimate
from shared.domain.chunking import PlannedChunk, span
from shared.domain.run_request import BackfillRequest
from shared.executor.runner import Delivery
from shared.runs import launcher

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".local" / "bench-suite"
START = dt.date(2025, 1, 1)
DAYS = 10
BUSY_SHARE = 0.9
# Each applied purchase writes its entry, its flag and a share of its wallet's increment.
WRITES_PER_EVENT = 3

logger = logging.getLogger("benchmarks.bench")


def uniform(events: int) -> SampleShape:
    return purchases_only(events, START, DAYS, seed_value=21)


def skewed(events: int) -> SampleShape:
    return purchases_only(events, START, DAYS, seed_value=21, busy_share=BUSY_SHARE)


def credited_once(db: firestore.Client, events: int) -> bool:
    """Every seeded purchase has exactly one ledger entry, and no other entry exists."""
    orders = Counter(str((snap.to_dict() or {}).get("orderId"))
                     for snap in db.collection(schema.LEDGER).select(["orderId"]).stream())
    return len(orders) == events and set(orders.values()) == {1}


class Suite:
    def __init__(self, bench: Bench, direct: firestore.Client, env: dict[str, str],
                 overrides: dict[str, str]) -> None:
        self.bench = bench
        self.db = direct  # seeding and checks go straight to the emulator, untimed
        self.env = env
        self.overrides = overrides
        self.failures: list[str] = []

    def check(self, name: str, ok: bool) -> None:
        if not ok:
            self.failures.append(name)
            logger.error("correctness check failed: %s", name)

    # --- one latency ----------------------------------------------------------------------

    def at_latency(self, events: int, latency_ms: float,
                   firestore_host: str) -> dict[str, Any]:
        """Raw writes, the baseline and both replays, with the gateway and this process's
        clients reaching Firestore at ``firestore_host``."""
        stack = self.bench.stack
        stack.restart_gateway({**self.overrides, "FIRESTORE_EMULATOR_HOST": firestore_host})
        self.bench.api.refresh_token()
        client = _client(self.env["BACKFILL_PROJECT_ID"], firestore_host)
        result: dict[str, Any] = {"latency_ms_each_way": latency_ms}
        result["raw"] = _timed_batches(client, stack, min(events, 6000))
        result["baseline"] = self.baseline(client, events)
        # The replays' denominator is measured right before and right after them, and the
        # mean taken: this machine's speed drifts by tens of percent within minutes.
        before = self.own_writes(client, events)
        for name, shape in (("uniform", uniform(events)), ("skewed", skewed(events))):
            run = self.bench.replay(events, dry_run=False, shape=shape)
            self.check(f"{name} replay at {latency_ms} ms applied every event once",
                       run["status"] == "completed" and run["applied"] == events
                       and credited_once(self.db, events))
            result[name] = run
        after = self.own_writes(client, events)
        rates = [before["events_per_s"], after["events_per_s"]]
        result["own_writes"] = {**after, "events_per_s": round(statistics.mean(rates)),
                                "events_per_s_before_and_after": rates}
        return result

    def own_writes(self, client: firestore.Client, events: int) -> dict[str, Any]:
        """The replay's own writes for the uniform set, batched with no reads
        (``benchmarks.own_writes``): the denominator of the replay's ratio."""
        stack = self.bench.stack
        stack.reset_firestore()
        seed(self.db, uniform(events))
        window = span(START, START + dt.timedelta(days=DAYS - 1))
        done = own_writes(client, window.start, window.end)
        self.check("own writes covered every event", done["events"] == events)
        stack.reset_firestore()
        return done

    def baseline(self, client: firestore.Client, events: int) -> dict[str, Any]:
        stack = self.bench.stack
        stack.reset_firestore()
        seed(self.db, uniform(events))
        window = span(START, START + dt.timedelta(days=DAYS - 1))
        ids = baseline.unprocessed(self.db, window.start, window.end)
        done = baseline.replay(client, ids)
        self.check("baseline applied every event once",
                   done.applied == events and credited_once(self.db, events))
        return {"events": done.events, "applied": done.applied,
                "seconds": round(done.seconds, 3), "events_per_s": round(done.events_per_s),
                "workers": baseline.WORKERS}

    # --- once -----------------------------------------------------------------------------

    def costs(self, events: int) -> dict[str, Any]:
        """Reads and writes per applied purchase: the bundle's executor in this process (its
        real code, tasks delivered in turn), and the baseline."""
        stack = self.bench.stack
        stack.reset_firestore()
        seed(self.db, uniform(events))
        meter = Meter(self.db)
        try:
            replay_in_process(self.db, self.env["BACKFILL_PROJECT_ID"],
                              before=lambda: meter.reset())
            bundle = meter.reset()
            self.check("in-process replay applied every event once",
                       credited_once(self.db, events))
            stack.reset_firestore()
            seed(self.db, uniform(events))
            window = span(START, START + dt.timedelta(days=DAYS - 1))
            ids = baseline.unprocessed(self.db, window.start, window.end)
            meter.reset()
            baseline.replay(self.db, ids)
            alone = meter.reset()
        finally:
            meter.close()
        return {"events": events,
                "replay": {"reads_per_event": round(bundle.reads / events, 3),
                           "writes_per_event": round(bundle.writes / events, 3),
                           "commits": bundle.commits},
                "baseline": {"reads_per_event": round(alone.reads / events, 3),
                             "writes_per_event": round(alone.writes / events, 3),
                             "commits": alone.commits}}

    def memory(self, events: int) -> dict[str, Any]:
        """The chunk handler's (the gateway process's) resident memory through a replay.

        Its windows are not split: on the emulator every count aggregation scans the whole
        collection, so splitting 100,000 events into 1,000-event chunks would spend minutes
        counting before the first page (production counts read the index)."""
        stack = self.bench.stack
        stack.restart_gateway({**self.overrides, "BACKFILL_SPLIT_EVENTS": str(events)})
        self.bench.api.refresh_token()
        pid = next(int(row["pid"]) for row in stack.status() if row["name"] == "gateway")
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(_rss_kib(pid))
                stop.wait(0.5)

        thread = threading.Thread(target=sample, daemon=True)
        try:
            # Sampled from the run's start: seeding is this process's work, not the handler's.
            run = self.bench.replay(events, dry_run=False, shape=uniform(events),
                                    timeout=max(240.0, events / 40), seeded=thread.start)
        finally:
            stop.set()
            if thread.is_alive():
                thread.join()
        self.check("memory replay applied every event once", run["applied"] == events)
        stack.restart_gateway(self.overrides)
        self.bench.api.refresh_token()
        sizes = [size for size in samples if size]
        quarters = {f"rss_mib_at_{25 * q}pct": round(sizes[min(len(sizes) - 1,
                                                               len(sizes) * q // 4)] / 1024, 1)
                    for q in range(1, 5)} if sizes else {}
        return {"events": events, "run_seconds": run["run_seconds"],
                "rss_mib_start": round(sizes[0] / 1024, 1) if sizes else None,
                "rss_mib_max": round(max(sizes) / 1024, 1) if sizes else None,
                **quarters, "samples": len(sizes)}

    def estimate(self, direct: dict[str, Any], events: int) -> dict[str, Any]:
        """The run estimate (``shared.domain.estimate``) against measured runs.

        Calibrated on the uniform replay (one chunk's rate: its events over its apply time and
        its chunks at once), it predicts three runs measured here: the skewed replay (other
        chunks), the uniform set under an operator ceiling of a third of that rate, and under a
        ramp starting at a fifth of it and growing every 3 s. Each error is predicted over
        measured apply seconds (first chunk's start to the run's end)."""
        uniform_run = direct["uniform"]
        running = min(uniform_run["chunks"], QUEUE_CONCURRENCY)
        chunk_rate = events / uniform_run["apply_seconds"] / running
        rate = chunk_rate * running
        ceiling = max(1, round(rate / 3))
        ramp_writes = max(3, round(rate / 5 * 3))
        ramp = {"BACKFILL_RAMP_START_WRITES": str(ramp_writes),
                "BACKFILL_RAMP_STEP_MINUTES": "0.05"}
        cases: dict[str, tuple[dict[str, Any], Settings]] = {
            "skewed": (direct["skewed"], _estimate_settings({})),
            "ceiling": (self.bench.replay(events, dry_run=False, shape=uniform(events),
                                          extra={"maxEventsPerSecond": ceiling}),
                        _estimate_settings({})),
        }
        stack = self.bench.stack
        stack.restart_gateway({**self.overrides, **ramp})
        self.bench.api.refresh_token()
        try:
            cases["ramp"] = (self.bench.replay(events, dry_run=False, shape=uniform(events)),
                             _estimate_settings(ramp))
        finally:
            stack.restart_gateway(self.overrides)
            self.bench.api.refresh_token()
        result: dict[str, Any] = {"calibration": {
            "chunk_events_per_second": round(chunk_rate, 1), "concurrency": QUEUE_CONCURRENCY,
            "uniform_apply_seconds": uniform_run["apply_seconds"]},
            "ceiling_events_per_second": ceiling, "ramp_start_writes": ramp_writes}
        for name, (run, settings) in cases.items():
            self.check(f"{name} run for the estimate applied every event once",
                       run["status"] == "completed" and run["applied"] == events)
            sizes = [int(row["events"] or 0) for row in run["chunk_timeline"]]
            work = estimate.Workload(
                events=events, chunks=sum(1 for size in sizes if size), largest_chunk=max(sizes),
                chunk_rate=chunk_rate, concurrency=QUEUE_CONCURRENCY,
                ceiling=ceiling if name == "ceiling" else None)
            found = estimate.estimate(settings, work)
            measured = run["apply_seconds"]
            result[name] = {"predicted_seconds": round(found.seconds, 2),
                            "measured_seconds": measured, "bound_by": found.bound,
                            "error": round(found.seconds / measured, 2) if measured else None}
        errors = [abs(part["error"] - 1) for part in result.values()
                  if isinstance(part, dict) and part.get("error")]
        result["worst_error"] = round(max(errors), 2) if errors else None
        return result

    def status_at_scale(self, sizes: tuple[int, ...], repetitions: int) -> dict[str, Any]:
        """The status answer (JSON and page, over HTTP) for runs of ``sizes`` chunks
        (``benchmarks.scale``)."""
        results: dict[str, Any] = {}
        for chunks in sizes:
            self.bench.stack.reset_firestore()
            results[str(chunks)] = scale.status_seconds(self.db, self.env, chunks, repetitions)
        self.bench.stack.reset_firestore()
        return results

    def planning_at_scale(self, chunks: int) -> dict[str, Any]:
        """Seconds to write a plan of ``chunks`` chunks (``PlanStore.save``: its commits, each
        under the run's update time), in this process against the emulator."""
        stack = self.bench.stack
        stack.reset_firestore()
        settings = scale.local_settings(self.env["BACKFILL_PROJECT_ID"])
        stores = Stores.firestore(self.db)
        request = BackfillRequest(type=BackfillType.WEBHOOK_REPLAY, start_date=START,
                                  end_date=START + dt.timedelta(days=DAYS - 1))
        started_run = launcher.start_run(request, Caller("bench@example.com", "bench"), settings,
                                         stores, InProcessDispatcher())
        run = stores.runs.get(started_run.migration_id)
        assert run is not None
        begin = dt.datetime.combine(START, dt.time(), dt.UTC)
        step = dt.timedelta(days=DAYS) / chunks
        plan = [PlannedChunk(f"piece-{index:05}", begin + index * step,
                             begin + (index + 1) * step, 10, None)
                for index in range(chunks)]
        started = time.perf_counter()
        saved = stores.plans.save(run, plan, begin, None)
        seconds = time.perf_counter() - started
        written = stores.runs.get(run.migration_id)
        self.check(f"a plan of {chunks} chunks was written whole",
                   saved and written is not None and written.planned
                   and written.chunk_count == chunks)
        stack.reset_firestore()
        return {"chunks": chunks, "seconds": round(seconds, 3)}

    def trace_of_a_customer(self, events: int, others: int,
                            repetitions: int) -> dict[str, Any]:
        """The trace answer (JSON over HTTP) for a customer with ``events`` webhook events (7 in
        10 purchases, the rest refunds of them) that a live replay applied, among ``others``
        events of other customers; against the simplest correct alternative, reading every
        webhook event (the collection scan a trace must not be)."""
        stack, db = self.bench.stack, self.db
        stack.reset_firestore()
        db.collection(schema.PRODUCTS).document("p1").set({"name": "p1", "points": 10})
        begin = dt.datetime.combine(START, dt.time(), dt.UTC)
        bought = events * 7 // 10

        def event(event_id: str, kind: str, minute: float, body: dict[str, Any],
                  processed: bool) -> dict[str, Any]:
            return {"eventId": event_id, "provider": "paynow", "eventType": kind,
                    "receivedAt": begin + dt.timedelta(minutes=minute),
                    "processed": processed, "processedAt": None, "processingError": None,
                    "payload": {"event_type": kind, "event_id": event_id, "body": body}}

        def purchase(order: str, customer: str) -> dict[str, Any]:
            return {"id": order, "customer": {"id": customer}, "total_amount": 1000,
                    "currency": "EUR", "lines": [{"product_id": "p1", "quantity": 1}]}

        documents = [event(f"big-e{n}", "ON_ORDER_COMPLETED", n, purchase(f"big-o{n}", "big"),
                           False) for n in range(bought)]
        documents += [event(f"big-r{n}", "ON_REFUND", bought + n, {
            "id": f"x{n}", "order_id": f"big-o{n}", "amount": 500, "currency": "EUR"}, False)
            for n in range(events - bought)]
        documents += [event(f"o-e{n}", "ON_ORDER_COMPLETED", n % 1400,
                            purchase(f"o-o{n}", f"c{n % 500}"), True) for n in range(others)]
        for first in range(0, len(documents), 500):
            batch = db.batch()
            for document in documents[first:first + 500]:
                batch.set(db.collection(schema.EVENTS).document(document["eventId"]), document)
            batch.commit()
        api = self.bench.api
        day = START.isoformat()
        started = api.start({"type": "webhook_replay", "startDate": day, "endDate": day,
                             "dryRun": False})
        run = api.wait_for_end(started["migrationId"])
        self.check("the customer's replay applied every event",
                   run["status"] == "completed" and run["applied"] == events)
        times, found = [], {}
        for _ in range(max(repetitions, 3)):
            began = time.perf_counter()
            found = api.trace("customerId", "big")
            times.append(time.perf_counter() - began)
        began = time.perf_counter()
        scanned = sum(1 for snap in db.collection(schema.EVENTS).select(
            ["payload.body.customer.id", "payload.body.order_id"]).stream())
        scan = time.perf_counter() - began
        self.check("the trace shows every event of the customer, its wallet matching",
                   len(found["events"]) == events and found["complete"]
                   and all(wallet["matches"] for wallet in found["wallets"]))
        stack.reset_firestore()
        median = statistics.median(times)
        return {"events": events, "others": others, "entries": len(found["entries"]),
                "runs": len(found["runs"]), "seconds": [round(s, 3) for s in times],
                "median_seconds": round(median, 3), "scan_seconds": round(scan, 3),
                "scanned": scanned, "trace_over_scan": round(median / scan, 2)}

    def latency_of_a_year(self, events: int, repetitions: int) -> dict[str, Any]:
        """The trigger's answer and the status function's, for a 366-day run."""
        result = self.bench.trigger_latency(events, repetitions)
        api = self.bench.api
        body = {"type": "webhook_replay", "startDate": "2024-01-01", "endDate": "2024-12-31",
                "dryRun": True}
        answer = api.start(body)
        self.bench.until_planned(answer["migrationId"])
        times = []
        for _ in range(max(repetitions, 3)):
            started = time.perf_counter()
            status = api.run(answer["migrationId"])
            times.append(time.perf_counter() - started)
        api.wait_for_end(answer["migrationId"])
        self.bench.stack.wait_idle(60)
        result["status"] = {"seconds": [round(s, 3) for s in times],
                            "median_seconds": round(statistics.median(times), 3),
                            "chunks": status["chunkCount"]}
        return result


def replay_in_process(db: firestore.Client, project: str,
                      before: Callable[[], object] = lambda: None) -> None:
    """A live replay of the 10 days from ``START`` by the bundle's own code in this process:
    its trigger's use case, then every planning and chunk task delivered in turn (the watchdog
    left out), as Cloud Tasks would. ``before`` runs once the run is recorded."""
    settings = scale.local_settings(project)
    dispatcher = InProcessDispatcher()
    services = wiring.Services(settings, db, dispatcher)
    wiring.use(services)
    try:
        request = BackfillRequest(type=BackfillType.WEBHOOK_REPLAY, start_date=START,
                                  end_date=START + dt.timedelta(days=DAYS - 1))
        launcher.start_run(request, Caller("bench@example.com", "bench"), settings,
                           services.stores, dispatcher)
        router = services.tasks
        before()
        while tasks := [task for task in dispatcher.take() if task.kind is not TaskKind.WATCH]:
            for task in tasks:
                router.route(Delivery(task))
    finally:
        wiring.use(None)


def _estimate_settings(overrides: dict[str, str]) -> Settings:
    """The local stack's ramp (off unless ``overrides`` set it), as the estimate reads it."""
    return scale.local_settings("bench").model_copy(update={
        "ramp_start_writes": int(overrides.get("BACKFILL_RAMP_START_WRITES", 0)),
        "ramp_step_minutes": float(overrides.get("BACKFILL_RAMP_STEP_MINUTES", 5))})


def _client(project: str, host: str) -> firestore.Client:
    previous = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    try:
        return firestore.Client(project=project)
    finally:
        if previous is not None:
            os.environ["FIRESTORE_EMULATOR_HOST"] = previous


def _timed_batches(client: firestore.Client, stack: Stack, documents: int) -> dict[str, Any]:
    stack.reset_firestore()
    started = time.perf_counter()
    write_batches(client, client.collection("benchRaw"), "raw", documents)
    seconds = time.perf_counter() - started
    stack.reset_firestore()
    return {"documents": documents, "seconds": round(seconds, 3),
            "docs_per_s": round(documents / seconds)}


def _rss_kib(pid: int) -> int:
    """The resident memory of ``pid`` (the gateway serves every function in one process)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("direct", "latency"):
        if key not in results:
            continue
        part = results[key]
        base = part["baseline"]["events_per_s"]
        out[key] = {
            "baseline_over_raw": _ratio(base * WRITES_PER_EVENT, part["raw"]["docs_per_s"]),
            "uniform_over_baseline": _ratio(part["uniform"]["events_per_s"], base),
            "skewed_over_baseline": _ratio(part["skewed"]["events_per_s"], base),
            "skewed_over_uniform": _ratio(part["skewed"]["events_per_s"],
                                          part["uniform"]["events_per_s"]),
            "uniform_writes_over_raw": _ratio(
                part["uniform"]["events_per_s"] * WRITES_PER_EVENT, part["raw"]["docs_per_s"]),
            "uniform_over_own_writes": _ratio(part["uniform"]["events_per_s"],
                                              part["own_writes"]["events_per_s"]),
            "skewed_over_own_writes": _ratio(part["skewed"]["events_per_s"],
                                             part["own_writes"]["events_per_s"]),
        }
    return out


def print_table(results: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    for key, title in (("direct", "no added latency"), ("latency", "added latency")):
        if key not in results:
            continue
        part, ratio = results[key], results["ratios"][key]
        rows += [
            (f"[{title}: {part['latency_ms_each_way']} ms each way]", ""),
            ("  raw writes, 500-op batches", f"{part['raw']['docs_per_s']:>7} docs/s"),
            ("  the replay's own writes, batched, no reads",
             f"{part['own_writes']['events_per_s']:>7} events/s  "
             f"({part['own_writes']['writes_per_event']} writes/event)"),
            ("  baseline: 1 transaction/event, 8 threads",
             f"{part['baseline']['events_per_s']:>7} events/s"),
            ("  replay, 10 days uniform", f"{part['uniform']['events_per_s']:>7} events/s  "
             f"({part['uniform']['chunks']} chunks; x{ratio['uniform_over_baseline']} "
             "the baseline)"),
            ("  replay, 90% on one day", f"{part['skewed']['events_per_s']:>7} events/s  "
             f"({part['skewed']['chunks']} chunks; x{ratio['skewed_over_baseline']} the "
             f"baseline, x{ratio['skewed_over_uniform']} uniform)"),
            ("  replay over its own writes",
             f"uniform x{ratio['uniform_over_own_writes']}, "
             f"skewed x{ratio['skewed_over_own_writes']}"),
        ]
    if "estimate" in results:
        found = results["estimate"]
        rows.append(("run estimate, predicted / measured apply seconds", ", ".join(
            f"{name} {found[name]['predicted_seconds']} / {found[name]['measured_seconds']}"
            f" (x{found[name]['error']}, {found[name]['bound_by']})"
            for name in ("skewed", "ceiling", "ramp") if name in found)
            + f"; worst error {found['worst_error']}"))
    if "status" in results:
        for chunks, part in results["status"].items():
            rows.append((f"status answer, {chunks}-chunk run",
                         f"JSON {part['json']['median_seconds']} s, page "
                         f"{part['page']['median_seconds']} s median; "
                         f"{part['calls']['total']} Firestore calls"))
    if "planning" in results:
        plan = results["planning"]
        rows.append((f"writing a plan of {plan['chunks']} chunks", f"{plan['seconds']} s"))
    if "costs" in results:
        costs = results["costs"]
        rows.append(("reads / writes per applied purchase",
                     f"replay {costs['replay']['reads_per_event']} / "
                     f"{costs['replay']['writes_per_event']}, baseline "
                     f"{costs['baseline']['reads_per_event']} / "
                     f"{costs['baseline']['writes_per_event']}"))
    if "memory" in results:
        memory = results["memory"]
        rows.append(("chunk handler RSS through the run",
                     f"{memory['rss_mib_start']} MiB at start; at 25/50/75/100% "
                     f"{memory.get('rss_mib_at_25pct')} / {memory.get('rss_mib_at_50pct')} / "
                     f"{memory.get('rss_mib_at_75pct')} / {memory.get('rss_mib_at_100pct')}; "
                     f"max {memory['rss_mib_max']} ({memory['events']} events)"))
    if "trace" in results:
        trace = results["trace"]
        rows.append((f"trace of a customer with {trace['events']} events",
                     f"{trace['median_seconds']} s median; reading every event instead "
                     f"({trace['scanned']}): {trace['scan_seconds']} s "
                     f"(x{trace['trace_over_scan']})"))
    if "year" in results:
        year = results["year"]
        rows += [("trigger answer, 366-day run",
                  f"{year['seeded_year']['median_seconds']} s median; planned after "
                  f"{year['seeded_year']['planned_median_seconds']} s"),
                 ("status answer, 366-chunk run",
                  f"{year['status']['median_seconds']} s median")]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print()


def measured(suite: Suite, results: dict[str, Any], name: str,
             action: Callable[[], dict[str, Any]]) -> None:
    """Run one measurement into ``results[name]``; a failure is recorded and the rest go on."""
    logger.info("%s ...", name)
    started = time.perf_counter()
    try:
        results[name] = action()
    except Exception as error:  # the other figures are still worth having
        logger.exception("%s failed", name)
        suite.failures.append(f"{name}: {type(error).__name__}: {error}")
        return
    logger.info("%s done in %.1f s", name, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench",
                                     description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=6000,
                        help="purchases per measured set (default 6000)")
    parser.add_argument("--latency-ms", type=float, default=10.0,
                        help="added each way in front of Firestore (default 10; 0: skip)")
    parser.add_argument("--rss-events", type=int, default=30_000,
                        help="purchases replayed while the handler's memory is sampled (the "
                             "emulator's 1 GiB heap and whole-collection counts make 100,000 "
                             "take more than ten minutes to seed and plan here)")
    parser.add_argument("--only", default="",
                        help="comma-separated: direct, latency, estimate, status, planning, "
                             "costs, memory, year, trace (default: all; estimate needs "
                             "direct)")
    parser.add_argument("--year-events", type=int, default=3000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=9550)
    parser.add_argument("--quick", action="store_true",
                        help="correctness only: small numbers (CI)")
    parser.add_argument("--out", type=Path, default=RESULTS.with_name("bench-suite.json"))
    args = parser.parse_args(argv)
    status_sizes, plan_chunks, trace_events = (1000, 5000), 5000, 1000
    if args.quick:
        args.events, args.rss_events, args.year_events, args.repetitions = 300, 1000, 200, 1
        status_sizes, plan_chunks, trace_events = (50, 200), 300, 100
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    # Quick: split small windows too, so the skewed set still fans out at 300 events.
    overrides: dict[str, str] = {"BACKFILL_SPLIT_EVENTS": "50"} if args.quick else {}
    stack = Stack(STATE_DIR.with_name(f"bench-suite-{args.port_base}"), args.port_base,
                  overrides, tasks_venv=TASKS_VENV, sweep_seconds=0)
    began = time.perf_counter()
    results: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "parameters": {key: str(value) for key, value in vars(args).items()},
    }
    failures: list[str] = []
    try:
        stack.up()
        env = stack.env()
        direct_host = env["FIRESTORE_EMULATOR_HOST"]
        os.environ["FIRESTORE_EMULATOR_HOST"] = direct_host
        db = firestore.Client(project=env["BACKFILL_PROJECT_ID"])
        api = Api(env)
        suite = Suite(Bench(stack, db, api, CpuMeter(stack)), db, env, overrides)
        try:
            # Untimed first: warms the gateway's imports and the emulator's JIT.
            suite.bench.replay(min(args.events, 1000), False, shape=uniform(min(args.events,
                                                                                1000)))
            wanted = set(filter(None, args.only.split(","))) or {
                "direct", "latency", "estimate", "status", "planning", "costs", "memory",
                "year", "trace"}

            def measure(name: str, action: Callable[[], dict[str, Any]]) -> None:
                if name in wanted:
                    measured(suite, results, name, action)

            measure("direct",
                    lambda: suite.at_latency(args.events, 0.0, direct_host))
            if args.latency_ms and "latency" in wanted:
                host, port = direct_host.rsplit(":", 1)
                with LatencyProxy(host, int(port), args.latency_ms / 1000) as proxy:
                    measure("latency", lambda: suite.at_latency(
                        args.events, args.latency_ms, f"127.0.0.1:{proxy.port}"))
            stack.restart_gateway(overrides)
            api.refresh_token()
            if "direct" in results:
                measure("estimate", lambda: suite.estimate(results["direct"], args.events))
            measure("status", lambda: suite.status_at_scale(status_sizes, args.repetitions))
            measure("planning", lambda: suite.planning_at_scale(plan_chunks))
            measure("costs", lambda: suite.costs(min(args.events, 2000)))
            measure("memory", lambda: suite.memory(args.rss_events))
            measure("year", lambda: suite.latency_of_a_year(args.year_events, args.repetitions))
            measure("trace", lambda: suite.trace_of_a_customer(
                trace_events, trace_events, args.repetitions))
        finally:
            api.close()
            failures = suite.failures
    finally:
        stack.down()
    results["ratios"] = ratios(results)
    results["failures"] = failures
    results["total_seconds"] = round(time.perf_counter() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_table(results)
    print(f"results: {args.out}; total {results['total_seconds']} s")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
