"""A chunk write whose answer is lost, through the functions against the Firestore emulator.

Each case makes one guarded chunk write (the claim, a page commit, the hand-on to the next
segment) land for real and then fail to its caller, as a reset connection does: either with
``ServiceUnavailable``, or as the client library's retry of a commit that landed fails, by
replaying the same writes (refused by their own preconditions). The delivery must settle the
write by reading the chunk and go on from what it wrote: the next segment enqueued at once (no
watchdog), the page credited once, the run finished with exact counts and ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud.firestore_v1.batch import WriteBatch

from shared.adapters import schema
from shared.adapters.cloud_tasks import ChunkTask, TaskKind
from tests import data
from tests.functions.conftest import Harness, page_commit

DAY = "2025-01-01"
RANGE: dict[str, Any] = {"type": "webhook_replay", "startDate": DAY, "endDate": DAY}
EVENTS = 30  # pages of 7: 7, 7, 7, 7 and a last page of 2
# A Firestore error text quoting a document path: it must not reach a log line.
QUOTED = "dataMigrations/x/chunks/secret-document-path"

Picks = Callable[[WriteBatch], bool]


def chunk_fields(batch: WriteBatch) -> set[str]:
    """The fields a batch updates on a chunk document (empty: it writes no chunk)."""
    return {path for write in batch._write_pbs if "/chunks/" in write.update.name
            for path in write.update_mask.field_paths}


def claim(batch: WriteBatch) -> bool:
    return "takenAtClaim" in chunk_fields(batch)


def hand_on(batch: WriteBatch) -> bool:
    return "segment" in chunk_fields(batch)


def page(number: int) -> Picks:
    """The ``number``-th page commit (1-based) of the test."""
    seen = [0]

    def picks(batch: WriteBatch) -> bool:
        if len(batch) > 1 and "cursor" in chunk_fields(batch):
            seen[0] += 1
            return seen[0] == number
        return False

    return picks


def final_page(batch: WriteBatch) -> bool:
    return len(batch) > 1 and "state" in chunk_fields(batch)


def lose_answer(monkeypatch: pytest.MonkeyPatch, picks: Picks, how: str) -> list[str]:
    """Make the first batch ``picks`` chooses fail to its caller: ``lost`` commits it and
    raises ``ServiceUnavailable``; ``retried`` commits it and then the same writes again (as
    the client's retry would), raising what that refused retry raises; ``refused`` raises
    ``ServiceUnavailable`` without committing. Answers what was done, once it was."""
    original = WriteBatch.commit
    done: list[str] = []

    def commit(self: WriteBatch, *args: Any, **kwargs: Any) -> Any:
        if done or not picks(self):
            return original(self, *args, **kwargs)
        done.append(how)
        if how == "refused":
            raise api_exceptions.ServiceUnavailable(f"connection reset: {QUOTED}")
        writes = list(self._write_pbs)
        original(self, *args, **kwargs)
        if how == "lost":
            raise api_exceptions.ServiceUnavailable(f"connection reset: {QUOTED}")
        self._write_pbs = writes
        original(self, *args, **kwargs)
        raise AssertionError("the replayed writes were not refused")

    monkeypatch.setattr(WriteBatch, "commit", commit)
    return done


def seeded_run(harness: Harness, **settings: Any) -> tuple[str, ChunkTask]:
    """A one-chunk run of ``EVENTS`` purchases, planned; answer it and its chunk's task."""
    harness.configure(page_size=7, **settings)
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(EVENTS, days=1))
    migration_id: str = harness.start(**RANGE).get_json()["migrationId"]
    harness.plan()
    [task] = harness._due()
    return migration_id, task


def assert_applied_once(harness: Harness, migration_id: str) -> None:
    """The run completed with each event credited exactly once, counted once."""
    run = harness.run(migration_id)
    assert run["status"] == "completed"
    assert (run["taken"], run["applied"], run["duplicates"], run["errors"]) == (
        EVENTS, EVENTS, 0, 0)
    credited = data.credited_orders(harness.db)
    assert len(credited) == EVENTS and set(credited.values()) == {1}
    data.assert_ledger_consistent(harness.db)
    assert all(e["processed"] for e in data.documents(harness.db, schema.EVENTS).values())


def chunk_document(harness: Harness, migration_id: str) -> dict[str, Any]:
    snap = schema.chunk_ref(harness.db, migration_id, DAY).get()
    return snap.to_dict() or {}


@pytest.mark.parametrize("how", ["lost", "retried"])
def test_a_hand_on_whose_answer_is_lost_enqueues_the_next_segment_at_once(
        harness: Harness, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    migration_id, task = seeded_run(harness, time_budget_seconds=0.001)
    done = lose_answer(monkeypatch, hand_on, how)

    answer = harness.post_task(task)
    queued = [queued for queued in harness.dispatcher.queued if queued.kind is not TaskKind.WATCH]
    monkeypatch.undo()
    chunk = chunk_document(harness, migration_id)
    harness.deliver_all()

    assert done == [how]
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["result"] == "continued"
    assert queued == [ChunkTask(migration_id, DAY, 1)]  # no watchdog needed to go on
    assert (chunk["segment"], chunk["leaseOwner"], chunk["read"]) == (1, None, 7)
    assert_applied_once(harness, migration_id)
    # One segment per page: the hand-on that landed was not made twice.
    assert chunk_document(harness, migration_id)["segment"] == 4


@pytest.mark.parametrize("how", ["lost", "retried"])
@pytest.mark.parametrize("which", ["a middle page", "the last page"])
def test_a_page_commit_whose_answer_is_lost_is_credited_once_and_the_chunk_goes_on(
        harness: Harness, monkeypatch: pytest.MonkeyPatch, how: str, which: str) -> None:
    migration_id, task = seeded_run(harness, time_budget_seconds=60)
    done = lose_answer(monkeypatch, page(2) if which == "a middle page" else final_page, how)

    answer = harness.post_task(task)
    monkeypatch.undo()

    assert done == [how]
    assert answer.status_code == 200, answer.get_json()
    # The landed page counts once in the delivery, which went on from its cursor (not the old
    # page again) and finished the chunk and the run by itself.
    assert (answer.get_json()["result"], answer.get_json()["pages"],
            answer.get_json()["events"]) == ("completed", 5, EVENTS)
    chunk = chunk_document(harness, migration_id)
    assert (chunk["state"], chunk["pages"], chunk["read"], chunk["segment"]) == (
        "completed", 5, EVENTS, 0)
    assert [queued for queued in harness.dispatcher.queued
            if queued.kind is not TaskKind.WATCH] == []
    assert_applied_once(harness, migration_id)


@pytest.mark.parametrize("how", ["lost", "retried"])
def test_a_claim_whose_answer_is_lost_is_a_claim(
        harness: Harness, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    migration_id, task = seeded_run(harness, time_budget_seconds=60)
    done = lose_answer(monkeypatch, claim, how)

    answer = harness.post_task(task)
    monkeypatch.undo()

    assert done == [how]
    assert answer.status_code == 200, answer.get_json()
    assert (answer.get_json()["result"], answer.get_json()["events"]) == ("completed", EVENTS)
    assert_applied_once(harness, migration_id)


def test_a_page_commit_that_did_not_land_is_not_taken_for_one_that_did(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    migration_id, task = seeded_run(harness, time_budget_seconds=60)
    done = lose_answer(monkeypatch, page(2), "refused")

    refused = harness.post_task(task)
    monkeypatch.undo()
    chunk = chunk_document(harness, migration_id)
    retried = harness.post_task(task, retry_count=1)

    assert done == ["refused"]
    assert refused.status_code == 503  # Cloud Tasks retries the task
    assert (chunk["pages"], chunk["read"]) == (1, 7)  # only the first page went through
    assert (retried.get_json()["result"], retried.get_json()["events"]) == (
        "completed", EVENTS - 7)
    assert_applied_once(harness, migration_id)


@pytest.mark.parametrize("attempt", ["a retried one", "the last one"])
def test_an_unexpected_failure_behind_a_503_or_a_failed_chunk_logs_its_type_not_its_text(
        harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        attempt: str) -> None:
    migration_id, task = seeded_run(harness, time_budget_seconds=60)
    original = WriteBatch.commit

    def failing(self: WriteBatch, *args: Any, **kwargs: Any) -> Any:
        if page_commit(self):  # page commits: Firestore fails, quoting a document path
            raise api_exceptions.InternalServerError(f"internal error at {QUOTED}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WriteBatch, "commit", failing)
    last = harness.settings.task_max_attempts - 1
    with caplog.at_level(logging.INFO):
        answer = harness.post_task(task, retry_count=0 if attempt == "a retried one" else last)
    monkeypatch.undo()

    lines = {record.getMessage(): getattr(record, "json_fields", {})
             for record in caplog.records}
    failed = lines["chunk delivery failed"]
    assert failed == {**failed, "migration_id": migration_id, "chunk_id": DAY, "segment": 0,
                      "error_type": "google.api_core.exceptions.InternalServerError",
                      "grpc_code": "INTERNAL"}
    if attempt == "a retried one":
        assert answer.status_code == 503
        assert lines["a Google service did not answer; retry"]["error_type"] == (
            "google.api_core.exceptions.InternalServerError")
    else:
        assert (answer.status_code, answer.get_json()["result"]) == (200, "failed")
        assert failed["attempt"] == last + 1
    assert QUOTED not in answer.get_data(as_text=True)
    assert not any(QUOTED in repr(record.__dict__) or QUOTED in record.getMessage()
                   for record in caplog.records)
