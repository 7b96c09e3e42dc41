"""Admission and launch on in-memory stores: the concurrency limit, overlapping runs, runs that
wait for others, twin scheduled firings and retries, decided by ``shared.runs.launcher`` alone. The
same runs are admitted on the Firestore emulator in tests/functions/test_admission.py."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from shared.adapters.cloud_tasks import ChunkTask, InProcessDispatcher, TaskKind
from shared.adapters.oidc import Caller
from shared.adapters.stores import Stores
from shared.domain.run_request import BackfillRequest
from shared.errors import Conflict, TooManyRuns
from shared.models import RunStatus
from shared.runs import launcher
from tests.fakes import NOW, MemoryErrors, memory_stores
from tests.unit.test_run_control import settings

OPERATOR = Caller("operator@demo", "1")
JAN = dt.date(2025, 1, 1)


def request(type_: str = "webhook_replay", **fields: Any) -> BackfillRequest:
    return BackfillRequest.model_validate({"type": type_, "start_date": JAN,
                                           "end_date": JAN + dt.timedelta(days=2), **fields})


def start(stores: Stores, dispatcher: InProcessDispatcher, body: BackfillRequest,
          **options: Any) -> launcher.StartedRun:
    return launcher.start_run(body, OPERATOR, settings(max_active_runs=2), stores, dispatcher,
                              now=lambda: NOW, **options)


def test_a_run_is_recorded_pending_and_its_planning_and_watchdog_tasks_are_queued() -> None:
    stores, runs, _ = memory_stores()
    dispatcher = InProcessDispatcher()

    started = start(stores, dispatcher, request(max_events=10))

    run = runs.get(started.migration_id)
    assert run is not None
    assert started.migration_id == f"webhook_replay_{int(NOW.timestamp() * 1000)}"
    assert (run.status, run.max_events, run.chunk_count, run.requested_by) == (
        RunStatus.PENDING, 10, 3, "operator@demo")
    assert run.received_before == NOW - dt.timedelta(minutes=settings().settle_minutes)
    kinds = [task.kind for task in dispatcher.queued]
    assert kinds == [TaskKind.PLAN, TaskKind.WATCH]
    assert not started.duplicate


def test_an_overlapping_run_of_the_same_type_is_refused_and_nothing_is_recorded() -> None:
    stores, runs, _ = memory_stores()
    runs.add("webhook_replay_1", RunStatus.PAUSED)
    dispatcher = InProcessDispatcher()

    with pytest.raises(Conflict) as refused:
        start(stores, dispatcher, request())

    assert refused.value.blocking == ["webhook_replay_1"]
    assert list(runs.records) == ["webhook_replay_1"]
    assert dispatcher.queued == []
    assert start(stores, dispatcher, request(force=True)).status is RunStatus.PENDING


def test_the_limit_counts_every_active_run_and_ended_runs_free_their_slot() -> None:
    stores, runs, _ = memory_stores()
    runs.add("reversal_backfill_1", RunStatus.RUNNING, type="reversal_backfill",
             start_date=dt.date(2024, 1, 1), end_date=dt.date(2024, 1, 1))
    runs.add("webhook_replay_2", RunStatus.PENDING, start_date=dt.date(2024, 2, 1),
             end_date=dt.date(2024, 2, 1))
    runs.add("webhook_replay_3", RunStatus.COMPLETED)
    dispatcher = InProcessDispatcher()

    with pytest.raises(TooManyRuns) as refused:
        start(stores, dispatcher, request())
    runs.move("webhook_replay_2", RunStatus.CANCELLED)

    assert refused.value.blocking == ["reversal_backfill_1", "webhook_replay_2"]
    assert start(stores, dispatcher, request()).status is RunStatus.PENDING


def test_a_reversal_backfill_waits_for_an_overlapping_replay_only() -> None:
    stores, runs, _ = memory_stores()
    runs.add("webhook_replay_1", RunStatus.RUNNING)
    dispatcher = InProcessDispatcher()

    waiting = start(stores, dispatcher, request("reversal_backfill"))
    apart = start(stores, dispatcher, request("reversal_backfill", force=True,
                                              start_date=dt.date(2025, 3, 1),
                                              end_date=dt.date(2025, 3, 1)))

    assert waiting.waiting_for == ("webhook_replay_1",)
    record = runs.get(waiting.migration_id)
    assert record is not None
    assert record.status_reason.startswith("waiting for webhook_replay_1")
    assert apart.waiting_for == ()


def test_a_twin_scheduled_firing_answers_the_run_its_twin_started() -> None:
    stores, runs, _ = memory_stores()
    dispatcher = InProcessDispatcher()
    scheduled = dt.datetime(2025, 1, 4, 2, tzinfo=dt.UTC)

    first = start(stores, dispatcher, request(), scheduled_for=scheduled)
    twin = start(stores, dispatcher, request(), scheduled_for=scheduled)

    assert twin.duplicate and not first.duplicate
    assert twin.migration_id == first.migration_id
    assert len(runs.records) == 1
    assert [task.kind for task in dispatcher.queued].count(TaskKind.PLAN) == 1


def test_a_retry_takes_an_ended_runs_failed_events_and_refuses_what_it_cannot_mend() -> None:
    stores, runs, _ = memory_stores()
    errors = stores.errors
    assert isinstance(errors, MemoryErrors)
    runs.add("live_1", RunStatus.COMPLETED)
    runs.add("open_1", RunStatus.RUNNING)
    runs.add("dry_1", RunStatus.COMPLETED, dry_run=True)
    errors.add("live_1", "evt_1", "purchase_not_found")
    errors.add("dry_1", "evt_2", "purchase_not_found")
    dispatcher = InProcessDispatcher()

    def retry(source: str, **options: Any) -> launcher.StartedRun:
        return launcher.start_retry(source, OPERATOR, settings(), stores, dispatcher,
                                    now=lambda: NOW, **options)

    refusals = []
    cases: list[tuple[str, dict[str, Any]]] = [
        ("open_1", {}), ("live_1", {"code": "other"}), ("dry_1", {"dry_run": False})]
    for source, options in cases:
        with pytest.raises(Conflict) as refused:
            retry(source, **options)
        refusals.append(refused.value.message)
    started = retry("live_1", force=True)

    assert "is running" in refusals[0]
    assert "no failed events with code other" in refusals[1]
    assert "was a dry run" in refusals[2]
    assert started.retry_of == {"migrationId": "live_1", "code": None, "events": 1}
    assert started.chunks == 1
    assert ChunkTask.planning(started.migration_id) in dispatcher.queued
