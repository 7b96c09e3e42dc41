"""End to end on the real emulators: HTTP trigger and status on the gateway, the Cloud Tasks
emulator delivering chunk tasks with OIDC tokens, and the data checked in Firestore."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.cloud import firestore

from backfill_cli.client import ApiError, BackfillClient, Endpoints
from emulators.sample import SampleShape, seed
from emulators.stack import Stack
from shared.adapters import schema
from tests import data
from tests.conftest import GATEWAY_OVERRIDES, Mint

pytestmark = pytest.mark.emulator

RANGE = {"startDate": "2025-01-01", "endDate": "2025-01-03"}
SHAPE = SampleShape(days=3, purchases=500, customers=40, refunds=50, chargebacks=15, other=60)


class Api:
    """The bundle's client on the test stack's gateway, as an operator, and the stack."""

    def __init__(self, stack: Stack, mint: Mint) -> None:
        self.stack = stack
        self.client = BackfillClient(Endpoints.gateway(stack.env()["BACKFILL_GATEWAY_URL"]),
                                     mint())

    def start(self, **body: Any) -> str:
        """Start a run: a live one unless ``dryRun`` is given (the trigger's own default is a
        dry run, tested in tests/functions/test_trigger.py)."""
        migration_id: str = self.client.start({"dryRun": False, **body})["migrationId"]
        return migration_id

    def finish(self, **body: Any) -> dict[str, Any]:
        """Start a run and answer its status once the queue is idle (the run has ended)."""
        migration_id = self.start(**body)
        self.stack.wait_idle(timeout=180)
        return self.client.run(migration_id)


@pytest.fixture
def api(stack: Stack, clean: firestore.Client, mint: Mint) -> Iterator[Api]:
    stack.wait_idle(timeout=60)
    yield Api(stack, mint)
    stack.set_faults(duplicate_delivery=False)


def failures_explained(db: firestore.Client, migration_id: str) -> None:
    """Every purchase still unprocessed after a replay has an error record of that run."""
    errors = set(data.documents(db, f"{schema.RUNS}/{migration_id}/{schema.ERRORS}"))
    left = {eid for eid, e in data.documents(db, schema.EVENTS).items()
            if not e["processed"] and e["eventType"] == "ON_ORDER_COMPLETED"}
    assert left and left == errors


def test_a_replay_of_a_realistic_sample_repairs_the_ledger(api: Api, db: firestore.Client) -> None:
    kinds = seed(db, SHAPE)
    before = data.ledger_state(db)

    dry = api.finish(type="webhook_replay", dryRun=True, **RANGE)
    after_dry = data.ledger_state(db)
    live = api.finish(type="webhook_replay", dryRun=False, **RANGE)

    assert after_dry == before
    assert dry["status"] == live["status"] == "completed"
    for key in ("total", "applied", "duplicates", "skipped", "errors"):
        assert dry[key] == live[key], key
    assert live["errors"] == kinds["purchase_unknown_product"] + kinds["purchase_malformed"]
    assert live["duplicates"] >= kinds["purchase_live_unflagged"] + kinds["purchase_redelivered"]
    assert set(data.credited_orders(db).values()) == {1}
    data.assert_ledger_consistent(db)
    failures_explained(db, live["migrationId"])

    settled = data.ledger_state(db)
    again = api.finish(type="webhook_replay", dryRun=False, **RANGE)
    assert (again["applied"], again["duplicates"]) == (0, 0)
    assert data.ledger_state(db) == settled


def test_every_purchase_is_credited_once_when_every_task_is_delivered_twice(
        api: Api, stack: Stack, db: firestore.Client) -> None:
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(300, days=3))
    stack.set_faults(duplicate_delivery=True)

    run = api.finish(type="webhook_replay", **RANGE)

    assert stack.tasks_stats()["duplicated"] > 0
    assert (run["status"], run["applied"], run["taken"], run["duplicates"]) == (
        "completed", 300, 300, 0)
    assert len(data.credited_orders(db)) == 300
    data.assert_ledger_consistent(db)


def test_chunks_running_at_once_share_max_points_and_never_move_more_together(
        api: Api, stack: Stack, db: firestore.Client) -> None:
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(600, days=6))  # 6 chunks, 4 at a time; 12,000 points in all
    stack.set_faults(duplicate_delivery=True)
    six_days = {"startDate": "2025-01-01", "endDate": "2025-01-06"}

    paused = api.finish(type="webhook_replay", **six_days, maxPoints=5000)
    moved = sum(data.assert_ledger_consistent(db).values())
    pool = schema.pool_ref(db, paused["migrationId"]).get().to_dict() or {}
    api.client.control(paused["migrationId"], "resume", {"force": True})
    stack.wait_idle(timeout=180)
    done = api.client.run(paused["migrationId"])

    assert paused["status"] == "paused", paused["statusReason"]
    assert paused["statusReason"].startswith("guardrail maxPoints=5000")
    assert 0 < moved <= 5000
    assert pool["reserved"] == moved  # what the stopped chunks held went back
    assert done["status"] == "completed"
    assert set(data.credited_orders(db).values()) == {1}
    assert len(data.credited_orders(db)) == 600
    assert sum(data.assert_ledger_consistent(db).values()) == 12_000


def test_every_purchase_is_credited_once_when_the_handler_dies_mid_chunk(
        api: Api, stack: Stack, db: firestore.Client) -> None:
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(300, days=3))
    stack.restart_gateway({**GATEWAY_OVERRIDES, "BACKFILL_FAULT_EXIT_AFTER_COMMITS": "4"})
    try:
        migration_id = api.start(type="webhook_replay", **RANGE)
        gateway = stack.env()["BACKFILL_GATEWAY_URL"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(gateway):
            time.sleep(0.05)
        assert not _alive(gateway), "the handler did not die"
        died_with = schema.count(db.collection(schema.LEDGER))
    finally:
        stack.restart_gateway(GATEWAY_OVERRIDES)
    stack.wait_idle(timeout=180)

    run = api.client.run(migration_id)
    assert 0 < died_with < 300
    assert (run["status"], run["applied"], run["taken"]) == ("completed", 300, 300)
    assert len(data.credited_orders(db)) == 300
    data.assert_ledger_consistent(db)


def _alive(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def test_max_events_is_honoured_oldest_first(api: Api, db: firestore.Client) -> None:
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(120, days=3))

    run = api.finish(type="webhook_replay", maxEvents=50, **RANGE)

    assert (run["total"], run["applied"], run["leftForLaterRun"]) == (50, 50, 70)
    events = data.documents(db, schema.EVENTS).values()
    newest_done = max(e["receivedAt"] for e in events if e["processed"])
    assert newest_done < min(e["receivedAt"] for e in events if not e["processed"])


def test_a_refund_and_its_purchase_in_parallel_chunks_are_both_applied(
        api: Api, db: firestore.Client) -> None:
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(60, days=3))
    refunds = [data.refund(f"r{n}", f"oe{n:05}", data.at(3, 1000 + n), 500)
               for n in range(0, 60, 3)]  # purchases of day 1, refunds on day 3
    data.put(db, *refunds)

    run = api.finish(type="webhook_replay", **RANGE)

    assert (run["status"], run["errors"]) == ("completed", 0)
    ledger = data.documents(db, schema.LEDGER)
    assert all(f"reversal_r{n}" in ledger for n in range(0, 60, 3))
    data.assert_ledger_consistent(db)


def test_reversal_backfill_after_replay_through_http(api: Api, db: firestore.Client) -> None:
    seed(db, SHAPE)

    api.finish(type="webhook_replay", **RANGE)
    reversals = api.finish(type="reversal_backfill", **RANGE)
    rerun = api.finish(type="reversal_backfill", **RANGE)

    assert reversals["status"] == "completed"
    assert reversals["total"] == SHAPE.refunds + SHAPE.chargebacks
    assert reversals["errors"] == 0
    assert (rerun["applied"], rerun["errors"]) == (0, 0)
    data.assert_ledger_consistent(db)


@pytest.mark.parametrize(("headers", "body", "status"), [
    ({}, {"type": "webhook_replay", **RANGE}, 401),
    ({"Authorization": "Bearer not-a-token"}, {"type": "webhook_replay", **RANGE}, 401),
    (None, {"type": "webhook_replay", "startDate": "2025-01-05", "endDate": "2025-01-01"}, 400),
    (None, {"type": "webhook_replay", **RANGE, "maxEvents": 0}, 400),
])
def test_bad_requests_and_tokens_are_refused_with_nothing_written(
        api: Api, db: firestore.Client, stack: Stack, headers: dict[str, str] | None,
        body: dict[str, Any], status: int) -> None:
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(10))
    before = stack.tasks_stats()["dispatched"]

    if headers is None:
        with pytest.raises(ApiError) as refused:
            api.client.start(body)
        answered, answer = refused.value.status, refused.value.body
    else:  # not the client: it would add the operator's token
        response = httpx.post(f"{stack.env()['BACKFILL_GATEWAY_URL']}/api/jobs/backfill",
                              json=body, headers=headers)
        answered, answer = response.status_code, response.json()

    assert answered == status
    assert answer["error"]
    assert not list(db.collection(schema.RUNS).stream())
    assert stack.tasks_stats()["dispatched"] == before


def test_a_year_long_range_is_planned_in_one_call(api: Api, db: firestore.Client) -> None:
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(50, days=30))

    answer = api.client.start({
        "type": "webhook_replay", "startDate": "2024-12-01", "endDate": "2025-11-30"})
    api.stack.wait_idle(timeout=180)

    assert answer["chunks"] == 365
    assert answer["statusUrl"].endswith(f"/api/admin/dataMigrations/{answer['migrationId']}")
    run = api.client.run(answer["migrationId"])
    assert (run["status"], run["applied"]) == ("completed", 50)
