"""Throughput of a webhook recovery on the local stack, against what PayNow's rate limit allows.

Run from the repository root::

    .venv/bin/python -m benchmarks.recovery [--events 3000] [--rate 20] [--port-base 9650]

It starts its own stack (state dir ``.local/bench-recovery-{port_base}``), seeds ``--events``
webhooks over the last five days in the local PayNow's history only, sets the local PayNow's
limit to ``--rate`` calls a second (burst 5) and the bundle's to the same number, and runs a live
``webhook_recovery`` through the real path (trigger, Cloud Tasks emulator, chunk handler, the
local PayNow over HTTP). The limit allows ``rate x page_size`` events a second; the bundle takes
``BACKFILL_PAYNOW_RATE_FRACTION`` of it (0.8 by default), so that is the best it can reach. It
prints events recovered a second, the ratio to what the limit allows, the 429s PayNow answered
(none expected: the bundle's own limit keeps under PayNow's), and writes
``.local/bench-recovery.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from backfill_cli.client import BackfillClient, Endpoints
from emulators import paynow
from emulators.issuer import mint_token
from emulators.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
TASKS_VENV = ROOT / ".local" / "tasks-venv"
RESULTS = ROOT / ".local" / "bench-recovery.json"


def _items(events: int, today: dt.date) -> list[dict[str, Any]]:
    first = dt.datetime.combine(today - dt.timedelta(days=5), dt.time(), tzinfo=dt.UTC)
    step = dt.timedelta(days=4) / events
    items = []
    for n in range(events):
        at = first + step * n
        envelope = {"event_type": "ON_ORDER_COMPLETED", "event_id": paynow.flake_id(at, n % 4096),
                    "body": {"id": f"ord-b{n:06}", "customer": {"id": f"cust-{n % 300:04}"},
                             "lines": [{"product_id": "prod-01", "quantity": 1}],
                             "total_amount": 1000, "currency": "EUR"}}
        items.append({"created_at": at, "event": "OnOrderCompleted", "state": "failed",
                      "payload": json.dumps(envelope)})
    return items


def measure(stack: Stack, events: int, rate: float) -> dict[str, Any]:
    env = stack.env()
    url = env["BACKFILL_PAYNOW_API_URL"]
    stack.reset_firestore()
    paynow.reset(url)
    today = dt.datetime.now(dt.UTC).date()
    paynow.seed(url, env["BACKFILL_PAYNOW_STORE_ID"], env["BACKFILL_PAYNOW_WEBHOOK_ID"],
                _items(events, today))
    page_size = paynow.knobs(url, rate_per_second=rate, burst=5)["page_size"]
    token = mint_token(env["BACKFILL_ISSUER_URL"], "ops@example.com",
                       env["BACKFILL_OPERATOR_AUDIENCES"].split(",")[0])
    client = BackfillClient(Endpoints.gateway(env["BACKFILL_GATEWAY_URL"]), token, timeout=60)
    began = time.perf_counter()
    started = client.start({"type": "webhook_recovery", "dryRun": False,
                            "startDate": (today - dt.timedelta(days=5)).isoformat(),
                            "endDate": (today - dt.timedelta(days=1)).isoformat()})
    run = client.wait(started["migrationId"], timeout=3600, every=0.25)
    seconds = time.perf_counter() - began
    stats = paynow.stats(url)
    allowed = rate * page_size
    ran = (dt.datetime.fromisoformat(run["finishedAt"]) -
           dt.datetime.fromisoformat(run["startedAt"])).total_seconds()
    return {"running_seconds": round(ran, 2),
            "ratio_to_limit_while_running": round(run["applied"] / ran / allowed, 3),
            "events": events, "applied": run["applied"], "status": run["status"],
            "seconds": round(seconds, 2), "events_per_s": round(run["applied"] / seconds, 1),
            "limit_calls_per_s": rate, "page_size": page_size,
            "limit_allows_events_per_s": allowed,
            "ratio_to_limit": round(run["applied"] / seconds / allowed, 3),
            "history_calls": stats["requests"]["history"], "http429": stats["http429"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--fraction", type=float, default=None,
                        help="BACKFILL_PAYNOW_RATE_FRACTION (default: the code's)")
    parser.add_argument("--port-base", type=int, default=9650)
    args = parser.parse_args(argv)
    overrides = {"BACKFILL_PAYNOW_RATE_PER_SECOND": str(args.rate),
                 "BACKFILL_PAYNOW_BURST": "5"}
    if args.fraction is not None:
        overrides["BACKFILL_PAYNOW_RATE_FRACTION"] = str(args.fraction)
    stack = Stack(ROOT / ".local" / f"bench-recovery-{args.port_base}", args.port_base,
                  overrides, tasks_venv=TASKS_VENV, sweep_seconds=0)
    stack.up()
    try:
        result = measure(stack, args.events, args.rate)
    finally:
        stack.down()
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:28} {value}")
    return 0 if result["status"] == "completed" and result["applied"] == args.events else 1


if __name__ == "__main__":
    sys.exit(main())
