"""The throttle through the functions: a run's ceiling set at the start and changed while it
runs, what the status shows (a rate and an ETA bounded by the ceiling, whatever burst the
deliveries began with), bad values refused without a change, a delivery that keeps to its
ceiling, and a delivery that Firestore pushes back on, which slows down instead of failing."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud.firestore_v1.batch import WriteBatch

from tests import data
from tests.functions.conftest import Harness, page_commit
from tests.functions.test_control import RANGE, act, control  # noqa: F401 (a fixture)


def seeded(harness: Harness, events: int = 60) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(events, days=3))


def test_a_runs_ceiling_is_set_at_start_and_changed_while_it_runs(
        harness: Harness, control: Any) -> None:  # noqa: F811
    seeded(harness)
    migration_id = harness.start(**RANGE, maxEventsPerSecond=1000).get_json()["migrationId"]
    before = harness.run(migration_id)

    changed = act(harness, control, migration_id, "throttle",
                  {"maxEventsPerSecond": 20, "reason": "the live path is busy"})
    during = harness.run(migration_id)
    lifted = act(harness, control, migration_id, "throttle", {"maxEventsPerSecond": None})

    assert (before["maxEventsPerSecond"], before["ceiling"]) == (1000, 1000)
    assert changed.status_code == 200
    assert changed.get_json()["previousMaxEventsPerSecond"] == 1000
    assert (during["maxEventsPerSecond"], during["ceiling"]) == (20, 20)
    assert lifted.get_json()["ceiling"] is None  # no ramp on the emulator, no ceiling left
    harness.deliver_all()
    ended = harness.run(migration_id)
    assert ended["status"] == "completed" and ended["ceiling"] is None
    late = act(harness, control, migration_id, "throttle", {"maxEventsPerSecond": 5})
    assert late.status_code == 409
    assert harness.run(migration_id)["maxEventsPerSecond"] is None


@pytest.mark.parametrize("body", [{}, {"maxEventsPerSecond": 0}, {"maxEventsPerSecond": "fast"},
                                  {"maxEventsPerSecond": 10, "burst": 5}])
def test_a_bad_ceiling_is_refused_naming_the_field_and_changes_nothing(
        harness: Harness, control: Any, body: dict[str, Any]) -> None:  # noqa: F811
    seeded(harness, 3)
    migration_id = harness.start(**RANGE, maxEventsPerSecond=100).get_json()["migrationId"]

    answer = act(harness, control, migration_id, "throttle", body)

    assert answer.status_code == 400
    assert answer.get_json()["field"] in ("maxEventsPerSecond", "burst")
    assert harness.run(migration_id)["maxEventsPerSecond"] == 100


def test_a_start_with_a_bad_ceiling_is_refused(harness: Harness) -> None:
    answer = harness.start(**RANGE, maxEventsPerSecond=-1)

    assert answer.status_code == 400
    assert answer.get_json()["field"] == "maxEventsPerSecond"


def delivery_logs(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [record.json_fields for record in caplog.records  # type: ignore[attr-defined]
            if record.getMessage() == "chunk delivery done"]


def test_a_delivery_keeps_to_its_ceiling(harness: Harness,
                                         caplog: pytest.LogCaptureFixture) -> None:
    seeded(harness, 60)
    harness.configure(page_size=10)
    migration_id = harness.start(**RANGE, maxEventsPerSecond=50).get_json()["migrationId"]

    with caplog.at_level(logging.INFO):
        harness.deliver_all()

    assert harness.run(migration_id)["applied"] == 60
    # Pages of 10 at 50 events/s: each delivery waited after its pages (about 0.2 s each).
    assert all(entry["throttled_seconds"] > 0 for entry in delivery_logs(caplog))


def test_a_ceiling_below_a_page_per_budget_holds_across_segments(harness: Harness) -> None:
    seeded(harness, 60)
    harness.configure(page_size=20, time_budget_seconds=0.2)
    migration_id = harness.start(**RANGE, maxEventsPerSecond=4).get_json()["migrationId"]
    harness.plan()
    first = harness._due()

    answers = [harness.post_task(task).get_json()["result"] for task in first]

    continued = [task for task in harness.dispatcher.queued if task.segment == 1]
    assert answers == ["continued"] * 3 and len(continued) == 3
    # A share of 4/s over the chunks running (1, 2, then 3 of them) takes pages of a second
    # of it: 4, 2 and 1 events, owing 1, 1 and 0.75 s, of which the 0.2 s budget slept what
    # the delivery's own work left of it (the first also announces its run running): each
    # next segment is due that much later, not at once, and never sooner than owed less the
    # budget.
    delays = [harness.dispatcher.delays[task] for task in continued]
    assert all(full - 0.25 < delay < full
               for delay, full in zip(delays, (1, 1, 0.75), strict=True)), delays
    harness.deliver_all()
    assert harness.run(migration_id)["applied"] == 60


def test_a_throttled_runs_status_keeps_its_rate_and_eta_to_its_ceiling(
        harness: Harness) -> None:
    seeded(harness, 120)
    harness.configure(page_size=20, time_budget_seconds=0.2)
    migration_id = harness.start(**RANGE, maxEventsPerSecond=4).get_json()["migrationId"]
    harness.plan()
    # Each chunk's first delivery takes a page of a second of its share (4, 2, then 1 events
    # of the 20 a page holds: no burst past the ceiling), then hands on to a segment due later.
    answers = [harness.post_task(task).get_json()["result"] for task in harness._due()]

    run = harness.run(migration_id)

    assert answers == ["continued"] * 3
    assert (run["status"], run["taken"], run["ceiling"]) == ("running", 4 + 2 + 1, 4)
    assert 0 < run["rate"] <= run["ceiling"]
    assert run["etaSeconds"] >= (run["total"] - run["taken"]) / run["ceiling"]


def test_a_delivery_that_firestore_pushes_back_on_slows_down_instead_of_failing(
        harness: Harness, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    seeded(harness, 60)
    migration_id = harness.start(**RANGE).get_json()["migrationId"]
    harness.plan()
    original = WriteBatch.commit
    refused: list[str] = []

    def busy(self: WriteBatch, *args: Any, **kwargs: Any) -> Any:
        # Page commits only (not the claim): Firestore answers RESOURCE_EXHAUSTED under load.
        # (An ABORTED commit is a conflict to the page commit: it reads the page again.)
        if len(refused) < 3 and page_commit(self):
            refused.append("exhausted")
            raise api_exceptions.ResourceExhausted("too many writes to these documents")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WriteBatch, "commit", busy)
    with caplog.at_level(logging.INFO):
        tasks = harness._due()
        answers = [harness.post_task(task).get_json()["result"] for task in tasks]
    monkeypatch.undo()
    harness.deliver_all()

    assert refused == ["exhausted"] * 3
    # No delivery failed: each finished its chunk, or, out of time after backing off, handed it
    # on to its next segment.
    assert set(answers) <= {"completed", "continued"}
    assert any(record.getMessage() == "firestore pushed back; slowing down"
               for record in caplog.records)
    run = harness.run(migration_id)
    assert (run["status"], run["applied"], run["errors"]) == ("completed", 60, 0)
    assert set(data.credited_orders(harness.db).values()) == {1}


def test_a_task_whose_claim_firestore_aborts_answers_503_to_be_retried(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded(harness, 3)
    migration_id = harness.start(**RANGE).get_json()["migrationId"]
    harness.plan()
    tasks = harness._due()

    def aborted(self: WriteBatch, *args: Any, **kwargs: Any) -> Any:
        raise api_exceptions.Aborted("contention on the chunk")

    monkeypatch.setattr(WriteBatch, "commit", aborted)
    answer = harness.post_task(tasks[0])
    monkeypatch.undo()

    assert answer.status_code == 503
    assert answer.get_json() == {"error": "unavailable", "message": "Firestore or Cloud Tasks "
                                 "did not answer (Aborted); retry",
                                 "deployment": harness.settings.deployment}
    harness.deliver(tasks)
    harness.deliver_all()
    assert harness.run(migration_id)["applied"] == 3
