"""The demo: seed a realistic sample into the local stack, dry-run and replay it over HTTP, then
start the replay and the reversal backfill back to back, as the runbook orders them (the reversal
backfill waits for the replay); then webhooks that never arrived (in the local PayNow's history
only) are found by gaps with the provider, recovered and replayed.

Run by ``make demo`` after ``make up``. Everything goes through the public surface: the trigger
and status endpoints with OIDC tokens from the local issuer, Cloud Tasks (the emulator) calling
the chunk handler. Then one customer's trace, and the notices every run's status changes
published to the Pub/Sub emulator. It ends with the ledger's invariants checked on the data in
Firestore.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sys
from collections import Counter, defaultdict
from typing import Any

import httpx
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from rich.console import Console
from rich.table import Table

from backfill_cli.client import FINAL_STATUSES, ApiError, BackfillClient, Endpoints
from emulators import paynow
from emulators.issuer import mint_token
from emulators.sample import seed
from emulators.stack import NOTICES_SUBSCRIPTION
from shared.adapters import schema

console = Console()
OPERATOR = "ops@example.com"


def connect(env: dict[str, str]) -> BackfillClient:
    """A client of the stack's gateway, with an operator's token from the local issuer."""
    token = mint_token(env["BACKFILL_ISSUER_URL"], OPERATOR,
                       env["BACKFILL_OPERATOR_AUDIENCES"].split(",")[0])
    return BackfillClient(Endpoints.gateway(env["BACKFILL_GATEWAY_URL"]), token)


def start(client: BackfillClient, body: dict[str, Any]) -> dict[str, Any]:
    try:
        return client.start(body)
    except ApiError as error:
        sys.exit(f"the bundle answered {error}")


def wait(client: BackfillClient, migration_id: str) -> dict[str, Any]:
    """Wait until the run ends (or is paused), printing its progress."""
    try:
        return client.wait(migration_id, timeout=600, progress=_progress)
    except TimeoutError as error:
        sys.exit(str(error))


def run_to_end(client: BackfillClient, body: dict[str, Any]) -> dict[str, Any]:
    return wait(client, start(client, body)["migrationId"])


def _progress(run: dict[str, Any]) -> None:
    if run["status"] not in FINAL_STATUSES:
        console.print(f"  {run['status']:>9} {run['percent']:5.1f}%  "
                      f"taken {run['taken']}/{run['total']}", highlight=False)


def ledger_totals(db: firestore.Client) -> dict[str, int]:
    wallets = sum(int(doc.get("balance")) for doc in db.collection(schema.WALLETS).stream())
    entries = list(db.collection(schema.LEDGER).stream())
    return {"wallet points": wallets, "ledger entries": len(entries),
            "purchase entries": sum(doc.get("type") == "purchase" for doc in entries),
            "reversal entries": sum(doc.get("type") == "reversal" for doc in entries)}


def check_invariants(db: firestore.Client) -> list[str]:
    """Every wallet equals the sum of its entries; no order is reversed beyond its credit."""
    problems: list[str] = []
    sums: dict[str, int] = defaultdict(int)
    for entry in db.collection(schema.LEDGER).stream():
        data = entry.to_dict() or {}
        sums[data["customerId"]] += int(data["points"])
        if data["type"] == "purchase":
            total, refunded = data["orderTotal"], min(data["refundedAmount"], data["orderTotal"])
            expected = data["points"] * refunded // total if total else 0
            if data["reversedPoints"] != expected:
                problems.append(f"{entry.id}: reversedPoints {data['reversedPoints']} != "
                                f"{expected}")
    wallets = {doc.id: int(doc.get("balance")) for doc in db.collection(schema.WALLETS).stream()}
    for customer in set(sums) | set(wallets):
        if wallets.get(customer, 0) != sums.get(customer, 0):
            problems.append(f"wallet {customer}: {wallets.get(customer, 0)} != ledger "
                            f"{sums.get(customer, 0)}")
    return problems


def show_run(title: str, run: dict[str, Any]) -> None:
    console.print(f"{title}: {run['migrationId']}")
    table = Table("", "", show_header=False)
    for key in ("status", "total", "processed", "applied", "duplicates", "skipped", "errors",
                "pointsMoved"):
        table.add_row(key, str(run[key]))
    console.print(table)
    if run["walletsBelowZero"]["count"]:
        console.print(f"  wallets taken below zero: {run['walletsBelowZero']['count']}")


def errors_by_code(db: firestore.Client, migration_id: str) -> Counter[str]:
    errors = schema.run_ref(db, migration_id).collection(schema.ERRORS).stream()
    return Counter(f"{doc.get('code')}: {doc.get('message').split(':')[0]}" for doc in errors)


MISSING = 150  # webhooks PayNow sent while the receiver was down: in its history only


def never_arrived(client: BackfillClient, db: firestore.Client, env: dict[str, str]) -> bool:
    """Webhooks that never reached webhookEvents: seeded in the local PayNow's history only,
    found by gaps with the provider, recovered (a dry run first), replayed and checked. Answers
    whether every one was stored once and credited once."""
    console.rule("never arrived: gaps with PayNow, recovery, replay")
    paynow.reset(env["BACKFILL_PAYNOW_API_URL"])
    today = dt.datetime.now(dt.UTC).date()
    first = dt.datetime.combine(today - dt.timedelta(days=3), dt.time(), tzinfo=dt.UTC)
    items, orders = [], []
    for n in range(MISSING):
        at = first + dt.timedelta(minutes=28 * n)
        order_id, event_id = f"ord-lost-{n:04}", paynow.flake_id(at, n)
        body = {"id": order_id, "customer": {"id": f"cust-{n % 40:04}", "email": "x@y.z"},
                "lines": [{"product_id": f"prod-{n % 20:02}", "quantity": 1 + n % 2,
                           "unit_amount": 1500}],
                "total_amount": 1500 * (1 + n % 2), "currency": "EUR",
                "created_at": at.isoformat()}
        items.append({"created_at": at, "event": "OnOrderCompleted", "state": "failed",
                      "payload": json.dumps({"event_type": "ON_ORDER_COMPLETED",
                                             "event_id": event_id, "body": body})})
        orders.append(order_id)
    paynow.seed(env["BACKFILL_PAYNOW_API_URL"], env["BACKFILL_PAYNOW_STORE_ID"],
                env["BACKFILL_PAYNOW_WEBHOOK_ID"], items)
    window = {"startDate": (today - dt.timedelta(days=3)).isoformat(),
              "endDate": (today - dt.timedelta(days=1)).isoformat()}
    gaps = client.gaps(window["startDate"], window["endDate"], provider=True)
    console.print(f"  PayNow has {MISSING} webhooks webhookEvents lacks; gaps with provider "
                  f"says never arrived: {gaps['totals']['neverArrived']}", highlight=False)
    for step in gaps["next"][:1]:
        console.print(f"  next: {step}", highlight=False)
    dry = run_to_end(client, {"type": "webhook_recovery", **window, "dryRun": True})
    console.print(f"  dry run {dry['migrationId']}: would store {dry['applied']}, by day: "
                  f"{ {day: sum(c.values()) for day, c in dry['tallies'].items()} }",
                  highlight=False)
    recovery = start(client, {"type": "webhook_recovery", **window, "dryRun": False})
    replay = start(client, {"type": "webhook_replay", **window, "dryRun": False})
    console.print(f"  {replay['migrationId']} waits for "
                  f"{', '.join(replay.get('waitingFor') or ['nothing'])}", highlight=False)
    stored = wait(client, recovery["migrationId"])
    show_run("recovery", stored)
    replayed = wait(client, replay["migrationId"])
    show_run("replay of the recovered days", replayed)
    credited = Counter(doc.get("orderId") for doc in db.collection(schema.LEDGER).where(
        filter=FieldFilter("type", "==", "purchase")).stream() if doc.get("orderId") in orders)
    once = sorted(credited) == sorted(orders) and set(credited.values()) == {1}
    console.print(f"  every recovered order credited exactly once: {once}")
    return once and stored["applied"] == MISSING and gaps["totals"]["neverArrived"] == MISSING


def traced(client: BackfillClient, db: firestore.Client, migration_id: str) -> bool:
    """One customer's trace (a refunded one the replay touched): its history in time order."""
    console.rule("trace: what happened to one customer")
    reversal = next(iter(db.collection(schema.LEDGER).where(
        filter=FieldFilter("migrationId", "==", migration_id)).where(
        filter=FieldFilter("type", "==", "reversal")).limit(1).stream()), None)
    if reversal is None:
        console.print("  no refunded customer to trace")
        return False
    customer = str((reversal.to_dict() or {})["customerId"])
    found = client.trace("customerId", customer)
    for wallet in found["wallets"]:
        console.print(f"  wallet {wallet['customerId']}: {wallet['balance']} points, its "
                      f"entries sum to {wallet['entriesSum']}: "
                      f"{'matches' if wallet['matches'] else 'DOES NOT MATCH'}", highlight=False)
    for item in found["timeline"][:8]:
        console.print(f"  {item['at']}  {item['kind']:<6} {item['what']}", highlight=False,
                      markup=False)
    if len(found["timeline"]) > 8:
        console.print(f"  ... {len(found['timeline']) - 8} more; every run that touched them: "
                      f"{', '.join(run['migrationId'] for run in found['runs'])}",
                      highlight=False)
    page = client.endpoints.require("status").removesuffix("/api/admin/dataMigrations")
    console.print(f"  the same as a page: {page}/api/admin/trace?customerId={customer}",
                  highlight=False)
    return all(wallet["matches"] for wallet in found["wallets"])


def notices_told(env: dict[str, str]) -> int:
    """The run notices published to the local Pub/Sub emulator's topic (pulled from the
    stack's subscription): one per status change of every run above."""
    console.rule("notices: who was told")
    url = (f"http://{env['PUBSUB_EMULATOR_HOST']}/v1/projects/{env['BACKFILL_PROJECT_ID']}/"
           f"subscriptions/{NOTICES_SUBSCRIPTION}")
    told: Counter[str] = Counter()
    while True:
        pulled = httpx.post(f"{url}:pull", json={"maxMessages": 500, "returnImmediately": True},
                            timeout=10).json().get("receivedMessages", [])
        if not pulled:
            break
        httpx.post(f"{url}:acknowledge", json={"ackIds": [m["ackId"] for m in pulled]},
                   timeout=10)
        for message in pulled:
            notice = json.loads(base64.b64decode(message["message"]["data"]))
            told[f"{notice['type']} {notice['status']}"] += 1
    console.print(f"  {sum(told.values())} notices on the Pub/Sub topic: "
                  + ", ".join(f"{count} x {what}" for what, count in sorted(told.items())),
                  highlight=False)
    return sum(told.values())


def main() -> None:
    env = dict(os.environ)
    if not env.get("FIRESTORE_EMULATOR_HOST") or env.get("BACKFILL_ENV") != "local":
        sys.exit("the demo runs on the local stack only: run `make up` and source .local/stack.env")
    db = firestore.Client(project=env["BACKFILL_PROJECT_ID"])
    httpx.delete(f"http://{env['FIRESTORE_EMULATOR_HOST']}/emulator/v1/projects/"
                 f"{env['BACKFILL_PROJECT_ID']}/databases/(default)/documents").raise_for_status()
    kinds = seed(db)
    console.rule("sample")
    console.print(dict(sorted(kinds.items())), f"{sum(kinds.values())} events over 5 days")
    before = ledger_totals(db)
    client = connect(env)
    window = {"startDate": "2025-01-01", "endDate": "2025-01-05"}

    console.rule("gaps: the scope check")
    gaps = client.gaps(window["startDate"], window["endDate"])
    console.print({"unprocessed": gaps["totals"]["unprocessed"],
                   "reversalsMissing": gaps["totals"]["reversalsMissing"],
                   "purchasesWithoutEntry": gaps["totals"]["purchasesWithoutEntry"]})
    for step in gaps["next"]:
        console.print(f"  next: {step}", highlight=False)

    console.rule("dry run: webhook_replay")
    dry = run_to_end(client, {"type": "webhook_replay", **window, "dryRun": True})
    show_run("dry run", dry)
    unchanged = ledger_totals(db) == before
    console.print(f"  ledger and wallets unchanged by the dry run: {unchanged}")

    # The runbook's order, started back to back: the reversal backfill waits for the replay.
    console.rule("replay, then reversal backfill: started together")
    replay_id = start(client, {"type": "webhook_replay", **window, "dryRun": False})["migrationId"]
    chained = start(client, {"type": "reversal_backfill", **window, "dryRun": False})
    console.print(f"  {chained['migrationId']} waits for "
                  f"{', '.join(chained.get('waitingFor') or ['nothing'])}", highlight=False)
    live = wait(client, replay_id)
    show_run("replay", live)
    for reason, count in errors_by_code(db, live["migrationId"]).most_common():
        console.print(f"  {count:4} x {reason}")
    reversal = wait(client, chained["migrationId"])
    show_run("reversal backfill", reversal)

    console.rule("verify: ledger_verify over the same days")
    verified = run_to_end(client, {"type": "ledger_verify", **window})
    console.print(f"  {verified['migrationId']}: {verified['status']}, findings by code: "
                  f"{verified['errorCodes'] or 'none'}", highlight=False)

    recovered = never_arrived(client, db, env)
    explained = traced(client, db, live["migrationId"])
    told = notices_told(env)

    console.rule("outcome")
    after = ledger_totals(db)
    table = Table("", "before", "after", title="ledger")
    for key in before:
        table.add_row(key, str(before[key]), str(after[key]))
    console.print(table)
    problems = check_invariants(db)
    console.print(f"every wallet equals the sum of its entries, reversals exact: {not problems}")
    for problem in problems[:20]:
        console.print(f"  [red]{problem}[/red]")
    if problems or not unchanged or not recovered or not explained or not told or \
            live["status"] != "completed" or \
            reversal["status"] != "completed" or reversal["errors"] or \
            verified["status"] != "completed":
        sys.exit(1)


if __name__ == "__main__":
    main()
