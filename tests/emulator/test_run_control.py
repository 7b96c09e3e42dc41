"""Run control end to end on the real emulators: a many-chunk run paused, resumed, cancelled and
retried over HTTP while the Cloud Tasks emulator delivers its chunk tasks."""

from __future__ import annotations

import time
from typing import Any

import pytest
from google.cloud import firestore

from backfill_cli.client import ApiError
from emulators.stack import Stack
from shared.adapters import schema
from tests import data
from tests.conftest import Mint
from tests.emulator.test_end_to_end import Api

pytestmark = pytest.mark.emulator

SIX_DAYS = {"startDate": "2025-01-01", "endDate": "2025-01-06"}
EVENTS = 3000


@pytest.fixture
def api(stack: Stack, clean: firestore.Client, mint: Mint) -> Api:
    stack.wait_idle(timeout=60)
    return Api(stack, mint)


def run_of(api: Api, migration_id: str) -> dict[str, Any]:
    return api.client.run(migration_id)


def once_moving(api: Api, migration_id: str, taken: int = 200) -> dict[str, Any]:
    """The run as soon as it has taken ``taken`` events (it is then mid-way)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = run_of(api, migration_id)
        if run["taken"] >= taken:
            return run
        time.sleep(0.02)
    raise AssertionError(f"run {migration_id} did not start moving")


def act(api: Api, migration_id: str, action: str, **body: Any) -> dict[str, Any]:
    return api.client.control(migration_id, action, body)


def seed(db: firestore.Client) -> None:
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(EVENTS, days=6))


def credited(db: firestore.Client) -> int:
    return schema.count(db.collection(schema.LEDGER))


def test_pause_mid_run_holds_still_and_resume_completes_it_with_each_event_once(
        api: Api, db: firestore.Client) -> None:
    seed(db)
    migration_id = api.start(type="webhook_replay", **SIX_DAYS)
    once_moving(api, migration_id)

    paused = act(api, migration_id, "pause", reason="ledger maintenance")
    api.stack.wait_idle(timeout=60)
    held = run_of(api, migration_id)
    ledger_at_pause = credited(db)
    time.sleep(1.5)
    still = run_of(api, migration_id)

    assert paused["status"] == "paused"
    assert held["status"] == still["status"] == "paused"
    assert 0 < held["taken"] < EVENTS
    assert still["taken"] == held["taken"] == ledger_at_pause == credited(db)
    assert set(held["chunkStates"]) <= {"paused", "completed"}
    assert held["etaSeconds"] is None and held["stalled"] is False

    act(api, migration_id, "resume")
    api.stack.wait_idle(timeout=180)
    done = run_of(api, migration_id)

    assert (done["status"], done["taken"], done["applied"]) == ("completed", EVENTS, EVENTS)
    assert [entry["to"] for entry in done["statusHistory"]] == [
        "running", "paused", "running", "completed"]
    assert len(data.credited_orders(db)) == EVENTS
    assert set(data.credited_orders(db).values()) == {1}
    data.assert_ledger_consistent(db)


def test_cancel_mid_run_stops_every_chunk_and_leaves_whole_pages_only(
        api: Api, db: firestore.Client) -> None:
    seed(db)
    migration_id = api.start(type="webhook_replay", **SIX_DAYS)
    once_moving(api, migration_id)

    cancelled = act(api, migration_id, "cancel")
    api.stack.wait_idle(timeout=60)
    run = run_of(api, migration_id)
    events = data.documents(db, schema.EVENTS).values()

    assert cancelled["status"] == "cancelled"
    assert run["status"] == "cancelled"
    assert set(run["chunkStates"]) <= {"cancelled", "completed"}
    assert 0 < run["taken"] < EVENTS
    # Whole pages only: every flagged event has its entry, and no entry lacks its flag.
    assert sum(e["processed"] for e in events) == run["taken"] == credited(db)
    data.assert_ledger_consistent(db)
    with pytest.raises(ApiError) as refused:
        act(api, migration_id, "resume")
    assert refused.value.status == 409


def test_a_twin_trigger_is_refused_while_the_run_is_active_then_retry_fixes_failures(
        api: Api, db: firestore.Client) -> None:
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(200, days=3))
    data.put(db, *data.purchases(10, days=3, prefix="n", product_id="new"))
    migration_id = api.start(type="webhook_replay", **SIX_DAYS)

    with pytest.raises(ApiError) as twin:
        api.start(type="webhook_replay", **SIX_DAYS)
    api.stack.wait_idle(timeout=120)
    first = run_of(api, migration_id)
    data.product(db, "new", 5)
    retry = act(api, migration_id, "retry", code="product_not_found")
    api.stack.wait_idle(timeout=120)
    second = run_of(api, retry["migrationId"])
    with api.client.errors(migration_id) as chunks:
        report = "".join(chunks)

    assert (twin.value.status, twin.value.blocking) == (409, [migration_id])
    assert (first["status"], first["applied"], first["errors"]) == ("completed", 200, 10)
    assert (second["status"], second["applied"], second["errors"]) == ("completed", 10, 0)
    assert len(report.strip().splitlines()) == 1 + 10
    assert report.count(retry["migrationId"]) == 10  # each failure marked resolved by the retry
    assert len(data.credited_orders(db)) == 210
    data.assert_ledger_consistent(db)

