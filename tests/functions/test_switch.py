"""The stored kill switch and steering many runs at once, through the functions on the Firestore
emulator: switched off, every active run is paused before the answer (no page of any commits
after it), starts, resumes and deliveries are refused or paused with the operator's reason;
switched on, one call resumes them all."""

from __future__ import annotations

from typing import Any

import pytest
from functions_framework import create_app

from shared.adapters import schema
from tests import data
from tests.functions.conftest import SOURCE, Harness

# Three runs over three disjoint day ranges: none blocks another.
RANGES = [{"type": "webhook_replay", "startDate": f"2025-01-0{day}",
           "endDate": f"2025-01-0{day}"} for day in (1, 2, 3)]


@pytest.fixture
def control(harness: Harness) -> Any:
    return create_app("backfill_control", SOURCE).test_client()


def post(harness: Harness, control: Any, path: str, body: dict[str, Any] | None) -> Any:
    return control.post(path, json=body, headers=harness.headers())


def three_runs_mid_way(harness: Harness) -> list[str]:
    """Three live runs, each with one page applied and its continuation queued."""
    harness.configure(time_budget_seconds=0.001, page_size=10)
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(120, days=3))
    runs = [harness.start(**body).get_json()["migrationId"] for body in RANGES]
    harness.plan()
    harness.deliver(harness._due())
    return runs


def test_switching_off_pauses_every_run_at_once_and_nothing_commits_after_the_answer(
        harness: Harness, control: Any) -> None:
    runs = three_runs_mid_way(harness)
    assert {harness.run(run)["status"] for run in runs} == {"running"}

    off = post(harness, control, "/api/admin/switch",
               {"enabled": False, "reason": "wallet service incident INC-42"})
    ledger = data.ledger_state(harness.db)
    taken = {run: harness.run(run)["taken"] for run in runs}
    harness.deliver_all()  # the queued continuations: each finds its run paused

    assert off.status_code == 200, off.get_json()
    assert sorted(off.get_json()["paused"]) == sorted(runs)
    assert data.ledger_state(harness.db) == ledger
    assert {run: harness.run(run)["taken"] for run in runs} == taken
    for run in runs:
        status = harness.run(run)
        assert status["status"] == "paused"
        assert "wallet service incident INC-42" in status["statusReason"]
    refused_start = harness.start(**RANGES[0], force=True)
    refused_resume = post(harness, control, f"/api/admin/dataMigrations/{runs[0]}/resume", {})
    assert refused_start.status_code == refused_resume.status_code == 503
    assert "INC-42" in refused_start.get_json()["message"]
    assert len(list(harness.db.collection(schema.RUNS).stream())) == 3
    state = harness.status.get("/api/admin/switch", headers=harness.headers()).get_json()
    assert (state["enabled"], state["running"], state["by"]) == (False, False,
                                                                "ops@example.com")

    on = post(harness, control, "/api/admin/switch", {"enabled": True})
    resumed = post(harness, control, "/api/admin/dataMigrations/resume", {"all": True})
    harness.deliver_all()

    assert on.status_code == 200 and on.get_json()["paused"] == []
    assert resumed.get_json()["matched"] == 3
    assert {harness.run(run)["status"] for run in runs} == {"completed"}
    assert set(data.credited_orders(harness.db).values()) == {1}
    assert len(data.credited_orders(harness.db)) == 120


def test_switching_off_needs_a_reason_and_a_filter_steers_only_its_runs(
        harness: Harness, control: Any) -> None:
    runs = three_runs_mid_way(harness)

    no_reason = post(harness, control, "/api/admin/switch", {"enabled": False})
    no_filter = post(harness, control, "/api/admin/dataMigrations/pause", {})
    both = post(harness, control, "/api/admin/dataMigrations/pause",
                {"all": True, "type": "webhook_replay"})
    paused = post(harness, control, "/api/admin/dataMigrations/pause",
                  {"startDate": "2025-01-02", "endDate": "2025-01-05", "reason": "late days"})
    again = post(harness, control, "/api/admin/dataMigrations/pause",
                 {"startDate": "2025-01-02", "endDate": "2025-01-05"})
    cancelled = post(harness, control, "/api/admin/dataMigrations/cancel",
                     {"type": "webhook_replay", "endDate": "2025-01-01"})

    assert (no_reason.status_code, no_reason.get_json()["field"]) == (400, "reason")
    assert (no_filter.status_code, no_filter.get_json()["field"]) == (400, "all")
    assert (both.status_code, both.get_json()["field"]) == (400, "all")
    assert paused.status_code == 200
    assert sorted(r["migrationId"] for r in paused.get_json()["runs"]) == sorted(runs[1:])
    assert again.get_json()["matched"] == 0  # paused already: nothing of a pause to do
    assert [r["migrationId"] for r in cancelled.get_json()["runs"]] == runs[:1]
    assert [harness.run(run)["status"] for run in runs] == ["cancelled", "paused", "paused"]
    history = (schema.run_ref(harness.db, runs[1]).get().to_dict() or {})["statusHistory"]
    assert history[-1]["note"] == "late days"
