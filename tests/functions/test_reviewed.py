"""Plan, then apply exactly, through the trigger on the Firestore emulator: a live run names the
completed dry run it was reviewed from (``planOf``); one of another scope, unfinished or too
old is refused with 409 and nothing written; one whose events or product points moved since
fails at planning with what moved, having written no chunk and no ledger entry; with
``BACKFILL_REQUIRE_PLAN`` a live run without a plan is refused, a Cloud Scheduler firing not."""

from __future__ import annotations

from typing import Any

from shared.adapters import schema
from tests import data
from tests.functions.conftest import Harness

RANGE: dict[str, Any] = {"type": "webhook_replay", "startDate": "2025-01-01",
                         "endDate": "2025-01-02"}


def reviewed(harness: Harness, **body: Any) -> str:
    """A completed dry run of ``RANGE`` (and ``body``)."""
    answer = harness.start(**RANGE, dryRun=True, **body)
    assert answer.status_code == 202, answer.get_json()
    harness.deliver_all()
    migration_id: str = answer.get_json()["migrationId"]
    assert harness.run(migration_id)["status"] == "completed"
    return migration_id


def runs(harness: Harness) -> set[str]:
    return {doc.id for doc in harness.db.collection(schema.RUNS).stream()}


def seeded(harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(12, days=2))


def test_a_live_run_of_its_plans_scope_applies_what_the_dry_run_showed(harness: Harness) -> None:
    seeded(harness)
    plan = reviewed(harness)
    dry = harness.run(plan)

    live = harness.start(**RANGE, planOf=plan)
    harness.deliver_all()
    run = harness.run(live.get_json()["migrationId"])

    assert live.status_code == 202, live.get_json()
    assert (run["status"], run["applied"]) == ("completed", dry["applied"])
    stored = schema.run_ref(harness.db, run["migrationId"]).get().to_dict() or {}
    assert stored["planOf"]["migrationId"] == plan
    assert len(data.credited_orders(harness.db)) == 12


def test_a_plan_of_another_scope_unfinished_or_too_old_is_refused_and_nothing_written(
        harness: Harness) -> None:
    seeded(harness)
    plan = reviewed(harness)
    narrow = reviewed(harness, customerIds=["c1", "c2"], force=True)
    pending = harness.start(**{**RANGE, "startDate": "2025-01-05", "endDate": "2025-01-05"},
                            dryRun=True).get_json()["migrationId"]
    live_run = harness.start(**{**RANGE, "startDate": "2025-01-06", "endDate": "2025-01-06"}
                             ).get_json()["migrationId"]
    before = runs(harness), data.ledger_state(harness.db)

    other_dates = harness.start(**{**RANGE, "endDate": "2025-01-03"}, planOf=plan)
    other_target = harness.start(**RANGE, customerIds=["c3"], planOf=narrow)
    other_cap = harness.start(**RANGE, maxPoints=50, planOf=plan)
    unfinished = harness.start(**RANGE, planOf=pending, force=True)
    not_a_dry_run = harness.start(**RANGE, planOf=live_run, force=True)
    missing = harness.start(**RANGE, planOf="webhook_replay_1")
    dry_with_plan = harness.start(**RANGE, dryRun=True, planOf=plan)
    verify = harness.start(**{**RANGE, "type": "ledger_verify"}, planOf=plan)
    harness.configure(plan_max_age_hours=1e-9)
    too_old = harness.start(**RANGE, planOf=plan)

    for refused, words in ((other_dates, "endDate '2025-01-02' in the plan, '2025-01-03'"),
                           (other_target, "target"), (other_cap, "maxPoints None in the plan"),
                           (unfinished, "not completed"), (not_a_dry_run, "is a live run"),
                           (too_old, "BACKFILL_PLAN_MAX_AGE_HOURS")):
        assert refused.status_code == 409, refused.get_json()
        assert words in refused.get_json()["message"], refused.get_json()["message"]
    assert other_dates.get_json()["blocking"] == [plan]
    assert missing.status_code == 404
    assert (dry_with_plan.status_code, dry_with_plan.get_json()["field"]) == (400, "planOf")
    assert (verify.status_code, verify.get_json()["field"]) == (400, "planOf")
    assert (runs(harness), data.ledger_state(harness.db)) == before


def test_a_canary_within_the_reviewed_range_runs_on_its_plan_and_so_does_the_rest(
        harness: Harness) -> None:
    seeded(harness)
    plan = reviewed(harness)

    canary = harness.start(**RANGE, customerIds=["c1"], planOf=plan)
    harness.deliver_all()
    rest = harness.start(**RANGE, planOf=plan)  # fewer events now: the canary took some
    harness.deliver_all()

    assert harness.run(canary.get_json()["migrationId"])["status"] == "completed"
    assert harness.run(rest.get_json()["migrationId"])["status"] == "completed"
    assert set(data.credited_orders(harness.db).values()) == {1}
    assert len(data.credited_orders(harness.db)) == 12


def test_events_added_or_points_changed_since_the_plan_stop_the_live_run_at_planning(
        harness: Harness) -> None:
    seeded(harness)
    plan = reviewed(harness)
    data.put(harness.db, data.purchase("late", "olate", data.at(2, 900), "c9"))
    before = data.ledger_state(harness.db)

    added = harness.start(**RANGE, planOf=plan)
    harness.deliver_all()
    failed = harness.run(added.get_json()["migrationId"])

    assert failed["status"] == "failed", failed
    assert "13 events to take, 1 more than the 12 of the dry run" in failed["statusReason"]
    assert failed["chunkStates"] == {}
    assert data.ledger_state(harness.db) == before

    harness.db.collection(schema.EVENTS).document("late").delete()
    data.product(harness.db, "p1", 12)
    changed = harness.start(**RANGE, planOf=plan)
    harness.deliver_all()
    moved = harness.run(changed.get_json()["migrationId"])

    assert moved["status"] == "failed", moved
    assert "the products' points changed: p1 10 -> 12" in moved["statusReason"]
    assert data.ledger_state(harness.db) == before


def test_a_required_plan_refuses_a_live_run_without_one_but_not_the_nightly_job(
        harness: Harness) -> None:
    seeded(harness)
    harness.configure(require_plan=True)

    refused = harness.start(**RANGE)
    dry = harness.start(**RANGE, dryRun=True)
    nightly = harness.trigger.post(
        "/", json={**RANGE, "startDate": "2025-01-03", "endDate": "2025-01-03",
                   "dryRun": False},
        headers={**harness.headers(harness.settings.scheduler_identity),
                 "X-CloudScheduler-ScheduleTime": "2025-01-04T02:00:00Z"})

    assert refused.status_code == 409
    assert "needs planOf" in refused.get_json()["message"]
    assert dry.status_code == 202
    assert nightly.status_code == 202, nightly.get_json()
