"""Run control through the functions: pause, resume, cancel, the kill switch, the watchdog and
stalled runs, with chunk tasks delivered by hand against the Firestore emulator."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from functions_framework import create_app

from shared.adapters import schema
from shared.adapters.cloud_tasks import ChunkTask, InProcessDispatcher, TaskKind, arm_watchdog
from shared.adapters.stores import Stores
from shared.executor.commit import PageCommit
from shared.runs import progress
from tests import data
from tests.functions.conftest import SOURCE, Harness

RANGE: dict[str, Any] = {"type": "webhook_replay", "startDate": "2025-01-01",
                         "endDate": "2025-01-03"}


@pytest.fixture
def control(harness: Harness) -> Any:
    return create_app("backfill_control", SOURCE).test_client()


def act(harness: Harness, control: Any, migration_id: str, action: str,
        body: dict[str, Any] | None = None, email: str = "ops@example.com") -> Any:
    return control.post(f"/api/admin/dataMigrations/{migration_id}/{action}", json=body,
                        headers=harness.headers(email))


def started_mid_run(harness: Harness, events: int = 120) -> str:
    """A three-chunk run with one page of each chunk applied and its continuations queued."""
    harness.configure(time_budget_seconds=0.001, page_size=10)
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(events, days=3))
    migration_id: str = harness.start(**RANGE).get_json()["migrationId"]
    harness.plan()
    harness.deliver(harness._due())  # one page per chunk; each queues its next segment
    return migration_id


def unprocessed(harness: Harness) -> int:
    return sum(not e["processed"] for e in data.documents(harness.db, schema.EVENTS).values())


def test_pause_keeps_the_cursors_and_resume_finishes_with_every_event_applied_once(
        harness: Harness, control: Any) -> None:
    migration_id = started_mid_run(harness)

    paused = act(harness, control, migration_id, "pause", {"reason": "load on the ledger"})
    before = harness.run(migration_id)
    harness.deliver_all()  # the queued continuations find their chunks paused
    after = harness.run(migration_id)

    assert paused.status_code == 200, paused.get_json()
    assert paused.get_json() == {
        "migrationId": migration_id, "status": "paused", "previousStatus": "running",
        "chunksMoved": 3, "changed": True, "deployment": harness.settings.deployment}
    assert after["status"] == "paused"
    assert after["chunkStates"] == {"paused": 3}
    assert after["taken"] == before["taken"] == 30  # one page of 10 per chunk, nothing since
    assert [c["cursorEventId"] is not None for c in after["chunks"]] == [True] * 3
    assert unprocessed(harness) == 90
    assert after["statusHistory"][-1] | {"at": None} == {
        "from": "running", "to": "paused", "by": "ops@example.com", "at": None,
        "note": "load on the ledger",
        "reason": "paused; its chunks stop at their next page and keep their cursors"}

    resumed = act(harness, control, migration_id, "resume")
    deliveries = harness.deliver_all()
    done = harness.run(migration_id)

    assert resumed.status_code == 200
    assert resumed.get_json()["status"] == "running"
    assert resumed.get_json()["chunksMoved"] == 3
    assert done["status"] == "completed"
    assert (done["taken"], done["applied"]) == (120, 120)
    # Per chunk, three pages of the 30 events left and an empty last one: resumed at the
    # cursors (from the start it would be five).
    assert deliveries == 12
    assert set(data.credited_orders(harness.db).values()) == {1}
    assert len(data.credited_orders(harness.db)) == 120
    data.assert_ledger_consistent(harness.db)


def test_a_page_in_flight_when_the_pause_lands_is_not_committed(
        harness: Harness, control: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    migration_id = started_mid_run(harness)
    tasks = harness._due()
    original = PageCommit._below_zero
    paused: list[int] = []

    def pause_midway(self: PageCommit, plan: Any) -> list[str]:
        # Runs between planning the page and committing it: the pause lands in between.
        if not paused:
            paused.append(act(harness, control, migration_id, "pause").status_code)
        return original(self, plan)

    monkeypatch.setattr(PageCommit, "_below_zero", pause_midway)
    answer = harness.post_task(tasks[0]).get_json()

    assert paused == [200]
    assert answer["result"] == "lost"
    assert harness.run(migration_id)["taken"] == 30
    assert unprocessed(harness) == 90
    assert len(data.credited_orders(harness.db)) == 30
    data.assert_ledger_consistent(harness.db)


def test_cancel_stops_every_chunk_for_good(harness: Harness, control: Any) -> None:
    migration_id = started_mid_run(harness)

    cancelled = act(harness, control, migration_id, "cancel", {"reason": "wrong range"})
    harness.deliver_all()
    run = harness.run(migration_id)
    resumed = act(harness, control, migration_id, "resume")
    again = act(harness, control, migration_id, "cancel")

    assert cancelled.status_code == 200
    assert run["status"] == "cancelled"
    assert run["chunkStates"] == {"cancelled": 3}
    assert run["taken"] == 30 and run["finishedAt"] is not None
    assert unprocessed(harness) == 90
    assert resumed.status_code == 409
    assert "the run is cancelled; it cannot become running" in resumed.get_json()["message"]
    assert again.status_code == 200 and again.get_json()["changed"] is False
    data.assert_ledger_consistent(harness.db)


def test_control_refuses_unknown_runs_actions_bodies_and_callers(
        harness: Harness, control: Any) -> None:
    migration_id = started_mid_run(harness, events=30)

    assert act(harness, control, "webhook_replay_1", "pause").status_code == 404
    assert act(harness, control, migration_id, "explode").status_code == 404
    bad = act(harness, control, migration_id, "pause", {"reason": 5})
    assert (bad.status_code, bad.get_json()["field"]) == (400, "reason")
    assert act(harness, control, migration_id, "pause",
               email=harness.settings.tasks_identity).status_code == 403
    assert control.get(f"/api/admin/dataMigrations/{migration_id}/pause",
                       headers=harness.headers()).status_code == 405
    assert harness.run(migration_id)["status"] == "running"


def test_the_kill_switch_pauses_active_runs_instead_of_failing_their_tasks(
        harness: Harness, control: Any) -> None:
    migration_id = started_mid_run(harness)
    harness.configure(enabled=False, time_budget_seconds=0.001, page_size=10)

    harness.deliver_all()  # each task answers 200 (no retries burnt) and pauses the run
    run = harness.run(migration_id)
    refused = act(harness, control, migration_id, "resume")

    assert run["status"] == "paused"
    assert run["statusReason"].startswith("BACKFILL_ENABLED=false")
    assert run["chunkStates"] == {"paused": 3}
    assert run["taken"] == 30
    assert refused.status_code == 503

    harness.configure(time_budget_seconds=0.001, page_size=10)
    assert act(harness, control, migration_id, "resume").status_code == 200
    harness.deliver_all()
    assert harness.run(migration_id)["status"] == "completed"
    assert set(data.credited_orders(harness.db).values()) == {1}
    assert len(data.credited_orders(harness.db)) == 120


def test_the_watchdog_picks_up_a_chunk_whose_task_was_lost_from_its_cursor(
        harness: Harness) -> None:
    migration_id = started_mid_run(harness)
    lost = harness._due()  # the three continuations vanish, as after a dead handler's last try
    ref = schema.chunk_ref(harness.db, migration_id, "2025-01-01")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    ref.update({"state": "running", "leaseUntil": past, "leaseOwner": "dead-handler"})

    stalled = harness.run(migration_id)
    harness.watch()
    picked = harness.deliver_all()
    run = harness.run(migration_id)

    assert len(lost) == 3
    assert (stalled["stalled"], stalled["stalledChunks"]) == (True, ["2025-01-01"])
    assert picked == 4  # only the stalled chunk: the others' leases had not run out
    assert run["chunkStates"] == {"completed": 1, "running": 2}
    assert [c["pickups"] for c in run["chunks"]] == [1, 0, 0]
    assert run["stalled"] is False
    assert len(data.credited_orders(harness.db)) == 30 + 30  # 10 + the chunk's 40 - 10 again
    data.assert_ledger_consistent(harness.db)


def test_a_watchdog_is_armed_once_per_lease(harness: Harness) -> None:
    dispatcher = InProcessDispatcher()
    lease = harness.settings.lease_seconds

    for now in (10 * lease, 10.5 * lease, 11 * lease, 11.2 * lease):
        arm_watchdog(harness.settings, dispatcher, "run_1", now)

    assert [(t.kind, t.segment) for t in dispatcher.queued] == [(TaskKind.WATCH, 11),
                                                                 (TaskKind.WATCH, 12)]
    assert set(dispatcher.delays.values()) == {lease}


def test_the_watchdog_leaves_chunks_whose_task_is_still_queued(harness: Harness) -> None:
    migration_id = started_mid_run(harness)
    queued = harness.dispatcher.queued[:]
    for chunk_id in ("2025-01-01", "2025-01-02", "2025-01-03"):
        schema.chunk_ref(harness.db, migration_id, chunk_id).update(
            {"leaseUntil": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)})

    harness.watch()

    assert [t for t in harness.dispatcher.queued if t.kind is not TaskKind.WATCH] == [
        t for t in queued if t.kind is not TaskKind.WATCH]
    run = harness.run(migration_id)
    assert [c["pickups"] for c in run["chunks"]] == [0, 0, 0]


def test_status_reports_rate_eta_and_checkpoint_age(harness: Harness) -> None:
    migration_id = started_mid_run(harness)

    run = harness.run(migration_id)

    assert run["status"] == "running"
    assert run["percent"] == 25.0
    assert run["rate"] > 0 and run["averageRate"] > 0
    assert run["etaSeconds"] is not None and run["etaSeconds"] >= 0
    assert 0 <= run["lastCheckpointAgeSeconds"] < 60
    assert run["stalled"] is False and run["stalledChunks"] == []
    assert {c["state"] for c in run["chunks"]} == {"running"}  # their next segments are queued


def test_an_old_segment_task_after_resume_does_nothing(harness: Harness, control: Any) -> None:
    migration_id = started_mid_run(harness)
    old = harness._due()
    act(harness, control, migration_id, "pause")
    act(harness, control, migration_id, "resume")

    answers = [harness.post_task(task).get_json()["result"] for task in old]

    assert answers == ["stale"] * 3
    assert harness.run(migration_id)["taken"] == 30
    assert all(isinstance(task, ChunkTask) for task in old)


def lose_everything(harness: Harness, migration_id: str) -> list[ChunkTask]:
    """Every task of the run vanishes, its watchdog included (the queue dropped them after
    their last attempt, or the queue was lost), and every chunk's lease has run out."""
    lost = [*harness.dispatcher.take(), *harness.watchdogs]
    harness.watchdogs.clear()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    for chunk in schema.run_ref(harness.db, migration_id).collection(schema.CHUNKS).stream():
        chunk.reference.update({"leaseUntil": past})
    return lost


def sweep(harness: Harness, email: str | None = None) -> Any:
    return harness.sweep.post("/", json={}, headers=harness.headers(
        email or harness.settings.scheduler_identity))


def test_the_sweep_recovers_a_run_whose_watchdog_was_lost(harness: Harness) -> None:
    migration_id = started_mid_run(harness)
    lost = lose_everything(harness, migration_id)
    # A look that changes nothing:
    stuck = progress.describe_run(harness.settings, Stores.firestore(harness.db), migration_id)

    swept = sweep(harness)
    requeued = harness.dispatcher.queued[:]
    harness.deliver_all()

    assert any(task.kind is TaskKind.WATCH for task in lost)
    assert (stuck["status"], stuck["stalled"]) == ("running", True)
    assert swept.status_code == 200
    assert (swept.get_json()["runs"], swept.get_json()["pickedUp"]) == (1, 3)
    assert sorted(t.chunk_id or t.kind for t in requeued) == [
        "2025-01-01", "2025-01-02", "2025-01-03", TaskKind.WATCH]  # the watchdog armed again
    run = harness.run(migration_id)
    assert (run["status"], run["taken"], run["applied"]) == ("completed", 120, 120)
    assert set(data.credited_orders(harness.db).values()) == {1}
    data.assert_ledger_consistent(harness.db)


def test_the_sweep_leaves_paused_and_finished_runs_and_admits_only_the_scheduler_and_operators(
        harness: Harness, control: Any) -> None:
    migration_id = started_mid_run(harness)
    act(harness, control, migration_id, "pause")
    lose_everything(harness, migration_id)

    swept = sweep(harness)
    by_operator = sweep(harness, "ops@example.com")
    by_tasks = sweep(harness, harness.settings.tasks_identity)

    assert (swept.status_code, swept.get_json()["runs"]) == (200, 0)
    assert by_operator.status_code == 200
    assert by_tasks.status_code == 403
    assert not harness.dispatcher.queued
    assert harness.run(migration_id)["status"] == "paused"


def test_reading_the_status_of_a_stalled_run_rearms_it(harness: Harness) -> None:
    migration_id = started_mid_run(harness)
    lose_everything(harness, migration_id)

    stalled = harness.run(migration_id)
    requeued = harness.dispatcher.queued[:]
    harness.deliver_all()

    assert stalled["stalled"] is True
    assert stalled["recovery"] == "3 task(s) picked up again"
    assert sorted(t.chunk_id or t.kind for t in requeued) == [
        "2025-01-01", "2025-01-02", "2025-01-03", TaskKind.WATCH]
    assert harness.run(migration_id)["status"] == "completed"
    assert len(data.credited_orders(harness.db)) == 120


@pytest.mark.parametrize("path", ["/api/admin/dataMigrations/__x__/pause",
                                  "/api/admin/dataMigrations/%5F%5Fx%5F%5F/retry",
                                  "/api/admin/dataMigrations/a.b/cancel"])
def test_control_answers_400_for_run_ids_firestore_reserves(
        harness: Harness, control: Any, path: str) -> None:
    response = control.post(path, json={}, headers=harness.headers())

    assert response.status_code == 400
    assert response.get_json()["field"] == "migrationId"
