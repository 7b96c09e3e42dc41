"""Plans of many chunks through the functions, on the Firestore emulator: written in as many
commits as they take (``PLAN_WRITES_PER_COMMIT`` made small here, so a few days stand for
thousands of chunks), the same after a planning task dies halfway, and no chunk at work before
the plan is whole."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from functions_framework import create_app
from google.api_core import exceptions as api_exceptions
from google.cloud.firestore_v1.batch import WriteBatch

from shared.adapters import schema, stores
from shared.adapters.cloud_tasks import ChunkTask, TaskKind
from tests import data
from tests.functions.conftest import SOURCE, Harness

RANGE: dict[str, Any] = {"type": "webhook_replay", "startDate": "2025-01-01",
                         "endDate": "2025-01-10"}
DAYS = [f"2025-01-{day:02}" for day in range(1, 11)]


@pytest.fixture(autouse=True)
def small_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stores, "PLAN_WRITES_PER_COMMIT", 3)
    monkeypatch.setattr(schema, "GRID_IDS", 4)  # grid documents of 4 chunk ids


def planning_commits(batch: WriteBatch) -> bool:
    """Whether a commit is one of a plan's (it writes ``plannedChunks`` on the run)."""
    return any("plannedChunks" in write.update_mask.field_paths for write in batch._write_pbs)


@dataclasses.dataclass
class Death:
    """What ``dies_at_second_planning_commit`` saw: the sizes of the planning commits tried
    while it was armed; ``revive()`` lets the next delivery live."""

    commits: list[int] = dataclasses.field(default_factory=list)
    armed: bool = True

    def revive(self) -> None:
        self.armed = False


@pytest.fixture
def dies_at_second_planning_commit(monkeypatch: pytest.MonkeyPatch) -> Death:
    """The planning delivery dies at its second commit, after the first landed, as a killed
    instance does (its task is then delivered again)."""
    real = WriteBatch.commit
    death = Death()

    def commit(self: WriteBatch, *args: Any, **kwargs: Any) -> Any:
        if death.armed and planning_commits(self):
            death.commits.append(len(self))
            if len(death.commits) == 2:
                raise api_exceptions.ServiceUnavailable("the instance went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(WriteBatch, "commit", commit)
    return death


def planning_task(harness: Harness) -> list[ChunkTask]:
    """The queued planning task (taken off the queue, to be delivered by hand)."""
    return [task for task in harness.dispatcher.take() if task.kind is TaskKind.PLAN]


def seed(harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(60, days=10))


def chunk_ids(harness: Harness, migration_id: str) -> list[str]:
    chunks = schema.run_ref(harness.db, migration_id).collection(schema.CHUNKS)
    return sorted(snap.id for snap in chunks.select([]).stream())


def test_a_plan_of_more_chunks_than_one_commit_holds_is_written_whole(
        harness: Harness) -> None:
    seed(harness)
    migration_id = harness.start(**RANGE).get_json()["migrationId"]
    harness.plan()

    run = schema.run_ref(harness.db, migration_id).get().to_dict() or {}
    assert (run["planned"], run["chunkCount"], run["plannedChunks"]) == (True, 10, 10)
    assert chunk_ids(harness, migration_id) == DAYS
    grid = schema.run_ref(harness.db, migration_id).collection(schema.GRID)
    assert [(snap.id, (snap.to_dict() or {})["ids"]) for snap in grid.stream()] == [
        ("0", DAYS[:4]), ("1", DAYS[4:8]), ("2", DAYS[8:])]
    harness.deliver_all(twice=True)
    status = harness.run(migration_id)
    assert (status["status"], status["applied"], status["total"]) == ("completed", 60, 60)
    # The chunk grid's pages, read by id from the plan's grid (a page across its documents).
    path = f"/api/admin/dataMigrations/{migration_id}"
    middle = harness.status.get(f"{path}?chunksFrom=2&chunksPerPage=5",
                                headers=harness.headers()).get_json()
    last = harness.status.get(f"{path}?chunksFrom=8&chunksPerPage=5",
                              headers=harness.headers()).get_json()
    past = harness.status.get(f"{path}?chunksFrom=12", headers=harness.headers()).get_json()
    assert [chunk["chunkId"] for chunk in middle["chunks"]] == DAYS[2:7]
    assert middle["nextChunks"] == f"{path}?chunksFrom=7&chunksPerPage=5"
    assert [chunk["chunkId"] for chunk in last["chunks"]] == DAYS[8:]
    assert (last["nextChunks"], past["chunks"]) == (None, [])
    data.assert_ledger_consistent(harness.db)


def test_a_planning_task_killed_halfway_plans_the_same_chunks_and_none_runs_before(
        harness: Harness, dies_at_second_planning_commit: Death) -> None:
    seed(harness)
    migration_id = harness.start(**RANGE).get_json()["migrationId"]
    planning = planning_task(harness)

    answer = harness.post_task(planning[0])

    assert answer.status_code == 503
    assert dies_at_second_planning_commit.commits == [4, 4]  # three chunks and the run, twice
    run = schema.run_ref(harness.db, migration_id).get().to_dict() or {}
    assert (run.get("planned"), run["plannedChunks"]) == (False, 3)
    assert chunk_ids(harness, migration_id) == DAYS[:3]
    assert not [task for task in harness.dispatcher.take() if task.kind is TaskKind.CHUNK]
    # A chunk of the unfinished plan does not start: its task is answered "retry later".
    early = harness.post_task(ChunkTask(migration_id, DAYS[0], 0))
    assert early.status_code == 503
    assert data.credited_orders(harness.db) == {}

    dies_at_second_planning_commit.revive()  # the next delivery lives
    harness.deliver(planning)

    run = schema.run_ref(harness.db, migration_id).get().to_dict() or {}
    assert (run["planned"], run["chunkCount"], run["plannedChunks"]) == (True, 10, 10)
    assert chunk_ids(harness, migration_id) == DAYS
    harness.deliver_all(twice=True)
    status = harness.run(migration_id)
    assert (status["status"], status["applied"]) == ("completed", 60)
    assert set(data.credited_orders(harness.db).values()) == {1}
    data.assert_ledger_consistent(harness.db)


def test_chunks_an_interrupted_plan_wrote_that_the_new_plan_lacks_are_deleted(
        harness: Harness, dies_at_second_planning_commit: Death) -> None:
    seed(harness)
    harness.configure(split_events=10)
    data.put(harness.db, *data.purchases(40, days=1, prefix="busy"))  # day one splits
    migration_id = harness.start(**RANGE).get_json()["migrationId"]
    planning = planning_task(harness)
    assert harness.post_task(planning[0]).status_code == 503
    split_day = chunk_ids(harness, migration_id)
    assert len(split_day) == 3 and all(chunk.startswith(DAYS[0]) for chunk in split_day)
    assert split_day != DAYS[:3]

    # Planned again with chunks of another size (the setting changed): day one is whole.
    dies_at_second_planning_commit.revive()
    harness.configure(split_events=1000)
    harness.deliver(planning)

    assert chunk_ids(harness, migration_id) == DAYS
    harness.deliver_all()
    status = harness.run(migration_id)
    assert (status["status"], status["applied"], status["chunkCount"]) == ("completed", 100, 10)
    data.assert_ledger_consistent(harness.db)


def test_a_run_cancelled_while_its_plan_is_written_keeps_no_chunk_open(
        harness: Harness, dies_at_second_planning_commit: Death) -> None:
    seed(harness)
    migration_id = harness.start(**RANGE).get_json()["migrationId"]
    planning = planning_task(harness)
    assert harness.post_task(planning[0]).status_code == 503  # three chunks written
    control = create_app("backfill_control", SOURCE).test_client()

    cancelled = control.post(f"/api/admin/dataMigrations/{migration_id}/cancel", json={},
                             headers=harness.headers())
    dies_at_second_planning_commit.revive()
    harness.deliver(planning)  # its retry finds the run cancelled and writes nothing

    assert cancelled.status_code == 200
    chunks = schema.run_ref(harness.db, migration_id).collection(schema.CHUNKS)
    assert {snap.id: (snap.to_dict() or {})["state"] for snap in chunks.stream()} == dict.fromkeys(
        DAYS[:3], "cancelled")
    run = schema.run_ref(harness.db, migration_id).get().to_dict() or {}
    assert (run["status"], run.get("planned")) == ("cancelled", False)
    assert not [task for task in harness.dispatcher.take() if task.kind is TaskKind.CHUNK]
    assert data.credited_orders(harness.db) == {}
