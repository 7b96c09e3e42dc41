"""Which runs may start: the concurrency limit, overlapping runs, ``force``, relative windows
and twin Cloud Scheduler firings, through the trigger against the Firestore emulator."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from google.cloud.firestore_v1.base_query import FieldFilter

from shared.adapters import schema
from tests.functions.conftest import Harness

DAY_1: dict[str, Any] = {"type": "webhook_replay", "startDate": "2025-01-01",
                         "endDate": "2025-01-01"}


def runs(harness: Harness) -> list[str]:
    return sorted(snap.id for snap in harness.db.collection(schema.RUNS).stream())


def test_an_overlapping_active_run_of_the_same_type_is_refused_naming_it(
        harness: Harness) -> None:
    first = harness.start(**{**DAY_1, "endDate": "2025-01-03"}).get_json()["migrationId"]

    overlapping = harness.start(**{**DAY_1, "startDate": "2025-01-03", "endDate": "2025-01-05"})
    other_type = harness.start(**{**DAY_1, "type": "reversal_backfill"})
    later = harness.start(**{**DAY_1, "startDate": "2025-01-04", "endDate": "2025-01-04"})
    forced = harness.start(**{**DAY_1, "force": True})

    assert overlapping.status_code == 409
    assert overlapping.get_json()["blocking"] == [first]
    assert f"{first} (pending, 2025-01-01..2025-01-03)" in overlapping.get_json()["message"]
    assert "force: true" in overlapping.get_json()["message"]
    assert (other_type.status_code, later.status_code, forced.status_code) == (202, 202, 202)
    forced_run = schema.run_ref(harness.db, forced.get_json()["migrationId"]).get()
    assert forced_run.get("forced") is True
    assert len(runs(harness)) == 4


def test_beyond_the_limit_a_trigger_is_refused_until_a_run_ends(harness: Harness) -> None:
    harness.configure(max_active_runs=2)
    started = [harness.start(**{**DAY_1, "startDate": f"2025-02-0{day}",
                                "endDate": f"2025-02-0{day}"}).get_json()["migrationId"]
               for day in (1, 2)]

    refused = harness.start(**DAY_1)
    harness.deliver_all()  # both runs plan, find nothing and complete
    admitted = harness.start(**DAY_1)

    assert refused.status_code == 429
    assert refused.get_json()["error"] == "too_many_runs"
    assert sorted(refused.get_json()["blocking"]) == sorted(started)
    assert "the limit is 2 (BACKFILL_MAX_ACTIVE_RUNS)" in refused.get_json()["message"]
    assert admitted.status_code == 202


def test_racing_triggers_cannot_both_take_the_last_slot(harness: Harness) -> None:
    harness.configure(max_active_runs=1)
    answers: list[int] = []

    def trigger(day: int) -> None:
        answers.append(harness.start(**{**DAY_1, "startDate": f"2025-03-0{day}",
                                        "endDate": f"2025-03-0{day}"}).status_code)

    threads = [threading.Thread(target=trigger, args=(day,)) for day in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(answers) == [202, 429, 429, 429]
    active = harness.db.collection(schema.RUNS).where(
        filter=FieldFilter("status", "==", "pending")).stream()
    assert len(list(active)) == 1


def test_a_nightly_lookback_covers_yesterday_and_today(harness: Harness) -> None:
    response = harness.start(type="webhook_replay", lookbackDays=2, dryRun=False,
                             maxEvents=50000)

    today = dt.datetime.now(dt.UTC).date()
    run = schema.run_ref(harness.db, response.get_json()["migrationId"]).get().to_dict() or {}
    assert response.status_code == 202
    assert (run["startDate"], run["endDate"]) == ((today - dt.timedelta(days=1)).isoformat(),
                                                  today.isoformat())
    assert run["lookbackDays"] == 2
    # Events of the last BACKFILL_SETTLE_MINUTES are left to the live path.
    settle = dt.timedelta(minutes=harness.settings.settle_minutes)
    assert abs(run["createdAt"] - settle - run["receivedBefore"]) < dt.timedelta(seconds=1)


def test_a_schedule_that_fires_twice_starts_one_run(harness: Harness) -> None:
    fired = {"X-CloudScheduler-ScheduleTime": "2026-11-22T02:00:00Z",
             "X-CloudScheduler-JobName": "backfill-nightly"}
    body = {"type": "webhook_replay", "lookbackDays": 2}

    first = harness.trigger.post("/", json=body, headers={**harness.headers(), **fired})
    twin = harness.trigger.post("/", json=body, headers={**harness.headers(), **fired})
    bad = harness.trigger.post("/", json=body, headers={
        **harness.headers(), "X-CloudScheduler-ScheduleTime": "tonight"})

    assert first.status_code == 202
    assert first.get_json()["migrationId"] == "webhook_replay_1795312800000"
    assert twin.status_code == 200
    assert twin.get_json()["migrationId"] == first.get_json()["migrationId"]
    assert twin.get_json()["duplicate"] is True
    assert bad.status_code == 400
    assert bad.get_json()["field"] == "X-CloudScheduler-ScheduleTime"
    assert runs(harness) == [first.get_json()["migrationId"]]
