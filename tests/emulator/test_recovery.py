"""A run recovers by itself from lost tasks, on the real stack: the Cloud Tasks emulator
restarted mid-run (its queue and every task in it lost, the run's watchdog included), and the
chunk URL down past the queue's retry budget (every task dropped for good). The stack's Cloud
Scheduler stand-in fires the sweep every second; no operator acts, and progress is read from
Firestore, not through status (a status read of a stalled run would rescue it too)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.cloud import firestore

from backfill_cli.client import BackfillClient, Endpoints
from emulators.stack import Stack
from shared.adapters import schema
from shared.domain.records import ChunkRecord
from shared.runs import completion
from tests import data
from tests.conftest import GATEWAY_OVERRIDES, Mint

pytestmark = pytest.mark.emulator

# A short lease, so that lost work is found seconds after it was lost rather than minutes.
OVERRIDES = {**GATEWAY_OVERRIDES, "BACKFILL_LEASE_SECONDS": "3"}
EVENTS = 600
RANGE = {"type": "webhook_replay", "startDate": "2025-01-01", "endDate": "2025-01-06",
         "dryRun": False}


@pytest.fixture
def client(stack: Stack, clean: firestore.Client, mint: Mint) -> Iterator[BackfillClient]:
    stack.wait_idle(timeout=60)
    stack.restart_gateway(OVERRIDES)
    stack.set_sweep_period(1.0)
    try:
        yield BackfillClient(Endpoints.gateway(stack.env()["BACKFILL_GATEWAY_URL"]), mint())
    finally:
        stack.set_sweep_period(0)
        stack.restart_gateway(GATEWAY_OVERRIDES)


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)
    return result


def progress(db: firestore.Client, migration_id: str) -> dict[str, Any]:
    """The run's status and summed chunk counters, read straight from Firestore."""
    run = schema.run_ref(db, migration_id).get().to_dict() or {}
    chunks = [ChunkRecord.from_snapshot(c) for c in schema.run_ref(db, migration_id)
              .collection(schema.CHUNKS).stream()]
    return {**completion.summarize(chunks), "status": run.get("status"),
            "pickups": sum(chunk.pickups for chunk in chunks)}


def start_and_get_going(client: BackfillClient, db: firestore.Client) -> str:
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(EVENTS, days=6))
    migration_id: str = client.start(RANGE)["migrationId"]
    # Its first page: the queue dispatches four chunks at once, so the other two still wait.
    wait_for(lambda: progress(db, migration_id)["taken"] >= 20, 60, "the run to get going")
    return migration_id


def completed_exactly_once(stack: Stack, db: firestore.Client, migration_id: str) -> None:
    done = wait_for(lambda: (p := progress(db, migration_id))["status"] in (
        "completed", "failed", "cancelled") and p, 180, "the run to end")
    assert done["status"] == "completed"
    assert (done["taken"], done["applied"], done["errors"]) == (EVENTS, EVENTS, 0)
    assert done["pickups"] >= 1  # the sweep picked up the chunks whose tasks were lost
    credited = data.credited_orders(db)
    assert len(credited) == EVENTS and set(credited.values()) == {1}
    assert all(e["processed"] for e in data.documents(db, schema.EVENTS).values())
    data.assert_ledger_consistent(db)
    assert stack.sweep_stats()["statuses"].get("200", 0) >= 1


def test_a_run_completes_once_after_the_tasks_emulator_lost_every_task(
        stack: Stack, client: BackfillClient, db: firestore.Client) -> None:
    migration_id = start_and_get_going(client, db)

    stack.restart_tasks()  # the queue comes back empty: chunk tasks and watchdog are gone

    assert progress(db, migration_id)["status"] == "running"
    completed_exactly_once(stack, db, migration_id)


def test_a_run_completes_once_after_its_chunk_url_was_down_past_the_retry_budget(
        stack: Stack, client: BackfillClient, db: firestore.Client) -> None:
    migration_id = start_and_get_going(client, db)
    dropped_before = stack.tasks_stats()["droppedForGood"]

    stack.stop_gateway()
    # Every attempt fails until the queue gives each task up (max attempts, quick backoff).
    stats = wait_for(lambda: (s := stack.tasks_stats())["queued"] == 0 and s["inFlight"] == 0
                     and s, 120, "the queue to drop every task")
    assert progress(db, migration_id)["status"] == "running"
    stack.start_gateway()

    assert stats["droppedForGood"] - dropped_before >= 2  # chunk tasks and the watchdog
    completed_exactly_once(stack, db, migration_id)
