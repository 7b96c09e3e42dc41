"""Run control, the watchdog, the sweep and a run's completion on in-memory stores: the decisions
alone, fast. The same use cases run on the Firestore emulator in tests/functions and
tests/emulator."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from shared import clock
from shared.adapters.cloud_tasks import ChunkTask, InProcessDispatcher, TaskKind
from shared.adapters.stores import Stores
from shared.clock import SystemClock
from shared.config import Settings
from shared.domain.lifecycle import Refusal
from shared.errors import BackfillDisabled, Conflict
from shared.models import ChunkState, RunStatus
from shared.runs import completion, control, planner, watchdog
from tests.fakes import (
    NOW,
    FakeClock,
    MemoryChunks,
    MemoryErrors,
    MemoryPlans,
    MemoryRuns,
    memory_stores,
)

LOCAL = {"env": "local", "project_id": "demo", "chunk_url": "http://127.0.0.1:1/tasks/chunk",
         "operator_audiences": "http://127.0.0.1:1", "tasks_identity": "tasks@demo",
         "enqueue_workers": 2}
PAST = NOW - dt.timedelta(hours=1)
LATER = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)  # leases not yet run out


def settings(**overrides: Any) -> Settings:
    return Settings.model_validate({**LOCAL, **overrides})


def three_chunks(chunks: MemoryChunks, run: str = "run_1") -> None:
    chunks.add(run, "2025-01-01", ChunkState.COMPLETED)
    chunks.add(run, "2025-01-02", ChunkState.RUNNING, segment=2, lease_until=LATER)
    chunks.add(run, "2025-01-03", ChunkState.PENDING, lease_until=LATER)


def states(chunks: MemoryChunks, run: str = "run_1") -> list[str]:
    return [chunk.state.value for chunk in chunks.chunks(run)]


def test_pause_stops_every_open_chunk_and_a_repeat_changes_nothing() -> None:
    stores, run_store, chunks = memory_stores()
    run_store.add("run_1")
    three_chunks(chunks)

    first = control.pause(settings(), stores, "run_1", "ops@example.com", "maintenance")
    again = control.pause(settings(), stores, "run_1", "ops@example.com")

    assert (first.status, first.previous, first.chunks, first.changed) == (
        "paused", "running", 2, True)
    assert (again.chunks, again.changed) == (0, False)
    assert states(chunks) == ["completed", "paused", "paused"]
    [move] = run_store.records["run_1"].status_history
    assert (move["from"], move["to"], move["by"], move["note"]) == (
        "running", "paused", "ops@example.com", "maintenance")


def test_resume_reopens_paused_chunks_in_a_new_segment_and_arms_the_watchdog() -> None:
    stores, run_store, chunks = memory_stores()
    run_store.add("run_1")
    three_chunks(chunks)
    control.pause(settings(), stores, "run_1", "ops@example.com")
    dispatcher = InProcessDispatcher()

    resumed = control.resume(settings(), stores, dispatcher, "run_1", "ops@example.com")

    assert (resumed.status, resumed.chunks) == ("running", 2)
    assert states(chunks) == ["completed", "pending", "pending"]
    assert sorted((t.chunk_id, t.segment) for t in dispatcher.queued if t.kind != "watch") \
        == [("2025-01-02", 3), ("2025-01-03", 1)]
    assert [t.kind for t in dispatcher.queued].count(TaskKind.WATCH) == 1


def test_a_run_paused_before_it_started_resumes_as_pending_and_is_planned_again() -> None:
    stores, run_store, _ = memory_stores()
    run_store.add("run_1", RunStatus.PENDING, planned=False)
    control.pause(settings(), stores, "run_1", "ops@example.com")
    dispatcher = InProcessDispatcher()

    resumed = control.resume(settings(), stores, dispatcher, "run_1", "ops@example.com")

    assert resumed.status == "pending"
    assert TaskKind.PLAN in [task.kind for task in dispatcher.queued]


def test_cancel_is_final_and_resume_then_answers_conflict() -> None:
    stores, run_store, chunks = memory_stores()
    run_store.add("run_1")
    three_chunks(chunks)
    control.pause(settings(), stores, "run_1", "ops@example.com")

    cancelled = control.cancel(settings(), stores, "run_1", "ops@example.com")

    assert (cancelled.status, cancelled.previous, cancelled.chunks) == ("cancelled", "paused", 2)
    assert states(chunks) == ["completed", "cancelled", "cancelled"]
    with pytest.raises(Conflict, match="the run is cancelled"):
        control.resume(settings(), stores, InProcessDispatcher(), "run_1", "ops@example.com")


def test_the_breaker_fails_the_run_once_and_cancels_its_open_chunks() -> None:
    stores, run_store, chunks = memory_stores()
    run_store.add("run_1")
    three_chunks(chunks)

    first = control.halt(settings(), stores, "run_1", "circuit breaker: 300 of 400 failed")
    again = control.halt(settings(), stores, "run_1", "circuit breaker: again")

    assert (first, again) == (True, False)
    run = run_store.records["run_1"]
    assert (run.status, run.failure_reason) == (RunStatus.FAILED,
                                                "circuit breaker: 300 of 400 failed")
    assert run.finished_at is not None
    assert states(chunks) == ["completed", "cancelled", "cancelled"]


def test_the_kill_switch_pauses_and_refuses_resume_until_it_is_back_on() -> None:
    stores, run_store, chunks = memory_stores()
    run_store.add("run_1")
    three_chunks(chunks)
    off = settings(enabled=False)

    detail = control.kill_switch(off, stores, "run_1")

    assert detail == "paused by the kill switch"
    assert run_store.records["run_1"].status_reason == control.KILL_SWITCH
    with pytest.raises(BackfillDisabled):
        control.resume(off, stores, InProcessDispatcher(), "run_1", "ops@example.com")
    assert control.kill_switch(off, stores, "no_such_run") == "no such run"


def test_a_pause_that_arrives_after_the_last_chunk_ended_completes_the_run() -> None:
    stores, run_store, chunks = memory_stores()
    run_store.add("run_1")
    chunks.add("run_1", "2025-01-01", ChunkState.COMPLETED, counters={"taken": 5, "applied": 5})
    chunks.add("run_1", "2025-01-02", ChunkState.COMPLETED, counters={"taken": 2, "errors": 2})

    steered = control.pause(settings(), stores, "run_1", "ops@example.com")

    assert steered.status == "completed"
    summary = run_store.summaries["run_1"]
    assert (summary["taken"], summary["applied"], summary["errors"]) == (7, 5, 2)


def test_a_failed_chunk_fails_the_run_once_none_is_open() -> None:
    stores, run_store, chunks = memory_stores()
    run_store.add("run_1")
    chunks.add("run_1", "2025-01-01", ChunkState.FAILED)
    chunks.add("run_1", "2025-01-02", ChunkState.RUNNING)

    completion.finish_if_done(stores, "run_1")
    still_running = run_store.records["run_1"].status
    chunks.move("run_1", "2025-01-02", ChunkState.COMPLETED, "its last page was applied")
    completion.finish_if_done(stores, "run_1")

    assert still_running is RunStatus.RUNNING
    run = run_store.records["run_1"]
    assert (run.status, run.failure_reason) == (RunStatus.FAILED, "1 chunk(s) failed")


def test_the_watchdog_picks_up_only_chunks_whose_lease_ran_out_and_whose_task_is_gone() -> None:
    stores, run_store, chunks = memory_stores()
    run_store.add("run_1")
    chunks.add("run_1", "2025-01-01", ChunkState.RUNNING, segment=4, lease_until=PAST)
    chunks.add("run_1", "2025-01-02", ChunkState.PENDING, segment=1, lease_until=PAST)
    chunks.add("run_1", "2025-01-03", ChunkState.RUNNING, lease_until=LATER)
    dispatcher = InProcessDispatcher()
    dispatcher.enqueue(ChunkTask("run_1", "2025-01-02", 1))  # still queued: left to the queue

    detail = watchdog.watch(settings(), stores, dispatcher, "run_1")

    assert detail == "1 task(s) picked up again"
    picked = chunks.get("run_1", "2025-01-01")
    assert (picked.state, picked.segment, picked.pickups) == (ChunkState.PENDING, 5, 1)
    assert chunks.get("run_1", "2025-01-02").pickups == 0
    assert ("2025-01-01", 5) in [(t.chunk_id, t.segment) for t in dispatcher.queued]
    assert [t.kind for t in dispatcher.queued].count(TaskKind.WATCH) == 1


def test_the_watchdog_leaves_paused_and_ended_runs_alone() -> None:
    stores, run_store, chunks = memory_stores()
    run_store.add("paused_1", RunStatus.PAUSED)
    run_store.add("done_1", RunStatus.COMPLETED)
    for run in ("paused_1", "done_1"):
        chunks.add(run, "2025-01-01", ChunkState.PAUSED, lease_until=PAST)
    dispatcher = InProcessDispatcher()

    paused = watchdog.watch(settings(), stores, dispatcher, "paused_1")
    done = watchdog.watch(settings(), stores, dispatcher, "done_1")

    assert paused.startswith("the run is paused") and done.startswith("the run is completed")
    assert not dispatcher.queued


def test_an_unplanned_run_is_planned_again_unless_it_waits_for_an_active_run() -> None:
    stores, run_store, _ = memory_stores()
    run_store.add("replay_1")
    run_store.add("lost_1", RunStatus.PENDING, planned=False)
    run_store.add("waiting_1", RunStatus.PENDING, planned=False, waiting_for=["replay_1"])
    dispatcher = InProcessDispatcher()

    for run in ("lost_1", "waiting_1"):
        watchdog.watch(settings(), stores, dispatcher, run)

    planning = [t.migration_id for t in dispatcher.queued if t.kind is TaskKind.PLAN]
    assert planning == ["lost_1"]


def test_the_sweep_rescues_every_active_run_and_rearms_lost_watchdogs_once() -> None:
    stores, run_store, chunks = memory_stores()
    for run in ("run_1", "run_2"):
        run_store.add(run)
        chunks.add(run, "2025-01-01", ChunkState.RUNNING, lease_until=PAST)
    run_store.add("paused_1", RunStatus.PAUSED)
    chunks.add("paused_1", "2025-01-01", ChunkState.PAUSED, lease_until=PAST)
    dispatcher = InProcessDispatcher()

    first = watchdog.sweep(settings(), stores, dispatcher)
    second = watchdog.sweep(settings(), stores, dispatcher)

    assert (sorted(first.rounds), first.picked_up) == (["run_1", "run_2"], 2)
    assert second.picked_up == 0
    watchdogs = [t for t in dispatcher.queued if t.kind is TaskKind.WATCH]
    # One each: the second sweep finds the watchdogs the first one armed.
    assert sorted(t.migration_id for t in watchdogs) == ["run_1", "run_2"]


@pytest.mark.parametrize(("taken", "errors", "stops"), [
    (199, 199, False),  # below the minimum sample: never stops
    (400, 200, False),  # exactly at the rate: not above it
    (400, 201, True),
])
def test_the_breaker_stops_a_run_only_above_its_rate_after_its_minimum_sample(
        taken: int, errors: int, stops: bool) -> None:
    stores, run_store, chunks = memory_stores()
    run_store.add("run_1")
    chunks.add("run_1", "2025-01-01", ChunkState.COMPLETED,
               counters={"taken": taken - 50, "errors": errors - 10})
    chunks.add("run_1", "2025-01-02", ChunkState.RUNNING,
               counters={"taken": 50, "errors": 10})

    reason = control.check_breaker(settings(), stores, "run_1")

    assert (reason is not None) == stops
    assert (run_store.records["run_1"].status is RunStatus.FAILED) == stops
    if reason is not None:
        assert f"{errors} of the {taken} events taken failed" in reason
        assert states(chunks) == ["completed", "cancelled"]


def test_a_delivery_claims_an_open_chunk_of_its_segment_and_a_later_one_takes_it_over() -> None:
    stores, _, chunks = memory_stores()
    chunks.add("run_1", "2025-01-01", ChunkState.PENDING, segment=2,
               counters={"taken": 40, "applied": 40})

    first = stores.chunks.claim("run_1", "2025-01-01", 2, "delivery-a", LATER)
    second = stores.chunks.claim("run_1", "2025-01-01", 2, "delivery-b", LATER)

    assert not isinstance(first, Refusal) and not isinstance(second, Refusal)
    assert (first.state, first.lease_owner, first.taken_at_claim) == (
        ChunkState.RUNNING, "delivery-a", 40)
    assert chunks.get("run_1", "2025-01-01").lease_owner == "delivery-b"


def test_a_claim_is_refused_for_an_ended_chunk_and_an_old_segment_names_the_current_one() -> None:
    stores, _, chunks = memory_stores()
    chunks.add("run_1", "2025-01-01", ChunkState.COMPLETED)
    chunks.add("run_1", "2025-01-02", ChunkState.PENDING, segment=3)
    chunks.add("run_1", "2025-01-03", ChunkState.PAUSED)

    ended = stores.chunks.claim("run_1", "2025-01-01", 0, "d", LATER)
    stale = stores.chunks.claim("run_1", "2025-01-02", 1, "d", LATER)
    paused = stores.chunks.claim("run_1", "2025-01-03", 0, "d", LATER)
    missing = stores.chunks.claim("run_1", "2025-01-09", 0, "d", LATER)

    assert ended == Refusal("idle", "the chunk is completed")
    assert stale == Refusal("stale", "the chunk is at segment 3", 3)
    assert paused == Refusal("idle", "the chunk is paused")
    assert missing == Refusal("idle", "no such chunk")
    assert chunks.get("run_1", "2025-01-02").state is ChunkState.PENDING


def planned_stores(**run: Any) -> tuple[Stores, MemoryRuns, MemoryChunks, MemoryPlans]:
    run_store, chunks = MemoryRuns(), MemoryChunks()
    plans = MemoryPlans(run_store, chunks)
    stores = Stores(run_store, chunks, plans, MemoryErrors())
    run_store.add("run_1", RunStatus.PENDING, planned=False, **run)
    plans.eligible_by_day.update({"2025-01-01": 5, "2025-01-02": 0, "2025-01-03": 7})
    return stores, run_store, chunks, plans


def test_planning_records_every_chunk_and_enqueues_those_with_work_once() -> None:
    stores, run_store, chunks, plans = planned_stores()
    dispatcher = InProcessDispatcher()

    first = planner.plan_run(settings(), stores, dispatcher, "run_1")
    again = planner.plan_run(settings(), stores, dispatcher, "run_1")

    assert (first, again) == ("planned; 2 chunk task(s) enqueued",) * 2
    assert plans.saves == 1
    assert states(chunks) == ["pending", "completed", "pending"]
    run = run_store.records["run_1"]
    assert (run.planned, run.eligible, run.total, run.chunk_count) == (True, 12, 12, 3)
    assert sorted(t.chunk_id for t in dispatcher.queued) == ["2025-01-01", "2025-01-03"]


def test_planning_enqueues_the_largest_chunks_first() -> None:
    stores, _, _, _ = planned_stores()
    dispatcher = InProcessDispatcher()

    planner.plan_run(settings(enqueue_workers=1), stores, dispatcher, "run_1")

    # 7 events on the 3rd, 5 on the 1st: the queue's slots take the long one first.
    assert [task.chunk_id for task in dispatcher.queued] == ["2025-01-03", "2025-01-01"]


def test_max_events_is_shared_out_oldest_first() -> None:
    stores, run_store, chunks, _ = planned_stores(max_events=8)

    planner.plan_run(settings(), stores, InProcessDispatcher(), "run_1")

    assert [chunk.quota for chunk in chunks.chunks("run_1")] == [5, 0, 3]
    assert (run_store.records["run_1"].eligible, run_store.records["run_1"].total) == (12, 8)


def test_a_run_with_nothing_to_take_completes_when_planned() -> None:
    stores, run_store, _, plans = planned_stores()
    plans.eligible_by_day.clear()
    dispatcher = InProcessDispatcher()

    detail = planner.plan_run(settings(), stores, dispatcher, "run_1")

    assert run_store.records["run_1"].status is RunStatus.COMPLETED
    assert detail.startswith("planned; the run is completed")
    assert not dispatcher.queued


def test_a_run_waiting_for_an_active_run_asks_again_later_and_is_not_planned() -> None:
    stores, run_store, _, plans = planned_stores(waiting_for=["replay_1"])
    run_store.add("replay_1")
    dispatcher = InProcessDispatcher()

    detail = planner.plan_run(settings(chain_poll_seconds=7), stores, dispatcher, "run_1",
                              segment=4)

    assert detail == "waiting for replay_1 to end"
    assert plans.saves == 0
    [task] = dispatcher.queued
    assert (task.kind, task.segment, dispatcher.delays[task]) == (TaskKind.PLAN, 5, 7)
    run_store.move("replay_1", RunStatus.COMPLETED)
    assert planner.plan_run(settings(), stores, dispatcher, "run_1", segment=5).startswith(
        "planned")


def test_a_retry_run_is_one_chunk_of_the_failed_events() -> None:
    stores, _, chunks, _ = planned_stores(retry_of={"migrationId": "old_1", "code": None})
    errors = stores.errors
    assert isinstance(errors, MemoryErrors)
    for n in range(9):
        errors.add("old_1", f"e{n}", "product_not_found")

    planner.plan_run(settings(), stores, InProcessDispatcher(), "run_1")

    [chunk] = chunks.chunks("run_1")
    assert (chunk.chunk_id, chunk.eligible, chunk.source) == (
        "retry", 9, {"errorsOf": "old_1", "code": None})



@pytest.fixture
def fake_clock() -> Iterator[FakeClock]:
    fake = FakeClock()
    clock.use(fake)
    yield fake
    clock.use(SystemClock())


def test_the_watchdog_reads_the_time_from_the_one_clock(fake_clock: FakeClock) -> None:
    stores, run_store, chunks = memory_stores()
    run_store.add("run_1")
    chunks.add("run_1", "2025-01-01", ChunkState.RUNNING, lease_until=NOW + dt.timedelta(
        seconds=settings().lease_seconds))
    dispatcher = InProcessDispatcher()

    early = watchdog.watch(settings(), stores, dispatcher, "run_1")
    fake_clock.advance(settings().lease_seconds + 1)
    late = watchdog.watch(settings(), stores, dispatcher, "run_1")

    assert (early, late) == ("0 task(s) picked up again", "1 task(s) picked up again")
    picked = chunks.get("run_1", "2025-01-01")
    assert picked.lease_until == fake_clock.now() + dt.timedelta(seconds=settings().lease_seconds)
