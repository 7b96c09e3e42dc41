"""Approval through the functions on the Firestore emulator: with approvers configured, a live
run planned above the size or points threshold waits as ``awaiting_approval`` with no chunk
running until another approver approves it; nobody approves their own run."""

from __future__ import annotations

from typing import Any

import pytest
from functions_framework import create_app

from shared.adapters import schema
from tests import data
from tests.functions.conftest import SOURCE, Harness

LEAD = "lead@example.com"
RANGE: dict[str, Any] = {"type": "webhook_replay", "startDate": "2025-01-01",
                         "endDate": "2025-01-03"}


@pytest.fixture
def control(harness: Harness) -> Any:
    return create_app("backfill_control", SOURCE).test_client()


def approve(harness: Harness, control: Any, migration_id: str, email: str) -> Any:
    return control.post(f"/api/admin/dataMigrations/{migration_id}/approve",
                        json={"reason": "reviewed the dry run"}, headers=harness.headers(email))


def test_a_large_live_run_waits_for_another_approver_and_then_runs_once(
        harness: Harness, control: Any) -> None:
    harness.configure(operators=("ops@example.com", LEAD), approvers=("ops@example.com", LEAD),
                      approval_events=10)
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(30, days=3))
    before = data.ledger_state(harness.db)

    migration_id = harness.start(**RANGE).get_json()["migrationId"]
    harness.deliver_all()
    waiting = harness.run(migration_id)
    own = approve(harness, control, migration_id, "ops@example.com")

    assert waiting["status"] == "awaiting_approval", waiting
    assert "30 events, above BACKFILL_APPROVAL_EVENTS=10" in waiting["statusReason"]
    assert waiting["chunkStates"] == {"pending": 3}
    assert data.ledger_state(harness.db) == before
    assert own.status_code == 403
    assert "nobody approves their own run" in own.get_json()["message"]

    approved = approve(harness, control, migration_id, LEAD)
    harness.deliver_all()
    done = harness.run(migration_id)

    assert approved.status_code == 200, approved.get_json()
    assert (approved.get_json()["status"], approved.get_json()["chunksMoved"]) == ("pending", 3)
    assert done["status"] == "completed"
    assert done["approvedBy"] == LEAD
    assert done["statusHistory"][-3]["by"] == LEAD
    assert set(data.credited_orders(harness.db).values()) == {1}
    assert len(data.credited_orders(harness.db)) == 30
    again = approve(harness, control, migration_id, LEAD)
    assert again.status_code == 409


def test_small_capped_and_dry_runs_go_unheld_and_a_non_approver_is_refused(
        harness: Harness, control: Any) -> None:
    harness.configure(operators=("ops@example.com", LEAD), approvers=(LEAD,),
                      approval_points=1000)
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(6, days=3))

    uncapped = harness.start(**RANGE).get_json()["migrationId"]
    harness.deliver_all()
    capped = harness.start(**RANGE, maxPoints=500, force=True).get_json()["migrationId"]
    dry = harness.start(**RANGE, dryRun=True, force=True).get_json()["migrationId"]
    harness.deliver_all()
    stranger = approve(harness, control, uncapped, "ops@example.com")

    assert harness.run(capped)["status"] == "completed"
    assert harness.run(dry)["status"] == "completed"
    held = harness.run(uncapped)
    assert held["status"] == "awaiting_approval"
    assert "maxPoints unset, above BACKFILL_APPROVAL_POINTS=1000" in held["statusReason"]
    assert stranger.status_code == 403 and "is no approver" in stranger.get_json()["message"]
    cancelled = control.post(f"/api/admin/dataMigrations/{uncapped}/cancel", json={},
                             headers=harness.headers())
    assert cancelled.get_json()["status"] == "cancelled"
    assert len(list(harness.db.collection(schema.RUNS).stream())) == 3
