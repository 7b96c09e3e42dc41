"""Function tests: each function's app through functions-framework's test client, against the
real Firestore emulator and local issuer, with chunk tasks kept in memory and delivered by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from functions_framework import create_app
from google.cloud import firestore

from shared.adapters import schema
from shared.adapters.cloud_tasks import ChunkTask, InProcessDispatcher, TaskKind
from shared.config import Settings
from shared.wiring import Services, use
from tests.conftest import ROOT, Mint

SOURCE = str(ROOT / "functions" / "main.py")


def make_settings(env: dict[str, str], **overrides: Any) -> Settings:
    fields = {key.removeprefix("BACKFILL_").lower(): value for key, value in env.items()
              if key.startswith("BACKFILL_")}
    fields.update(firestore_emulator_host=env["FIRESTORE_EMULATOR_HOST"],
                  tasks_emulator_host=env["CLOUD_TASKS_EMULATOR_HOST"], **overrides)
    return Settings.model_validate(fields)


def page_commit(batch: Any) -> bool:
    """Whether a batch is a page's commit (several writes), not a run's status change (the
    run and its notice, ``shared.adapters.notices``): tests that fail page commits use it."""
    names = [write.update.name for write in batch._write_pbs if write.update.name]
    return len(batch) > 1 and not any(f"/{schema.NOTICES}/" in name for name in names)


class Harness:
    """The functions, an in-memory task queue, and the settings they run with."""

    def __init__(self, env: dict[str, str], db: firestore.Client, mint: Mint) -> None:
        self.env, self.db, self.mint = env, db, mint
        self.dispatcher = InProcessDispatcher()
        self.watchdogs: list[ChunkTask] = []
        self.configure()  # first: the functions check their configuration when imported
        self.trigger = create_app("backfill_trigger", SOURCE).test_client()
        self.status = create_app("backfill_status", SOURCE).test_client()
        self.chunk = create_app("backfill_chunk", SOURCE).test_client()
        self.sweep = create_app("backfill_sweep", SOURCE).test_client()

    def configure(self, **overrides: Any) -> None:
        self.settings = make_settings(self.env, **{"page_size": 20, **overrides})
        use(Services(self.settings, self.db, self.dispatcher))

    def headers(self, email: str = "ops@example.com",
                audience: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.mint(email, audience)}"}

    def start(self, **body: Any) -> Any:
        """POST the trigger: a live run unless ``dryRun`` is given (most tests are about what a
        live run writes; the trigger's own default, a dry run, is tested in test_trigger)."""
        return self.trigger.post("/", json={"dryRun": False, **body}, headers=self.headers())

    def post_task(self, task: ChunkTask, retry_count: int = 0) -> Any:
        """One delivery of ``task``, as Cloud Tasks makes it; answer the response."""
        headers = self.headers(self.settings.tasks_identity, self.settings.effective_chunk_audience)
        headers["X-CloudTasks-TaskRetryCount"] = str(retry_count)
        return self.chunk.post("/", data=task.body(), headers=headers,
                               content_type="application/json")

    def deliver(self, tasks: list[ChunkTask], twice: bool = False) -> int:
        """Deliver ``tasks`` as Cloud Tasks would (each twice if asked); answer how many.

        A task answered with a retryable status is delivered again with its retry count, up to
        the configured attempts, as Cloud Tasks retries it (without the backoff).
        """
        delivered = 0
        for task in tasks:
            for _ in range(2 if twice else 1):
                for attempt in range(self.settings.task_max_attempts):
                    response = self.post_task(task, attempt)
                    delivered += 1
                    if response.status_code == 200:
                        break
                    assert response.status_code == 503, response.get_json()
                else:
                    raise AssertionError(f"{task} kept failing")
        return delivered

    def plan(self) -> None:
        """Deliver only the queued planning tasks; the chunk tasks they enqueue stay queued."""
        tasks = self._due()
        self.deliver([task for task in tasks if task.kind is TaskKind.PLAN])
        for task in tasks:
            if task.kind is not TaskKind.PLAN:
                self.dispatcher.queued.append(task)

    def deliver_all(self, twice: bool = False) -> int:
        """Deliver every task due now (and those they enqueue) until none is left; watchdog
        tasks, which Cloud Tasks would deliver a lease later, wait in ``watchdogs``."""
        delivered = 0
        while tasks := self._due():
            delivered += self.deliver(tasks, twice)
        return delivered

    def watch(self) -> int:
        """Deliver the watchdog tasks held back so far (as if their lease had passed)."""
        tasks, self.watchdogs = self.watchdogs, []
        return self.deliver(tasks)

    def _due(self) -> list[ChunkTask]:
        tasks = self.dispatcher.take()
        self.watchdogs += [task for task in tasks if task.kind is TaskKind.WATCH]
        return [task for task in tasks if task.kind is not TaskKind.WATCH]

    def run(self, migration_id: str) -> Any:
        return self.status.get(f"/api/admin/dataMigrations/{migration_id}",
                               headers=self.headers()).get_json()


@pytest.fixture
def harness(stack_env: dict[str, str], clean: firestore.Client, mint: Mint) -> Iterator[Harness]:
    harness = Harness(stack_env, clean, mint)
    yield harness
    use(None)

