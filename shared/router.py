"""The task router: one delivery of a Cloud Task, sent to the use case its kind names.

Every task names its kind and its run: ``plan`` is the run's planning task
(``shared.runs.planner``), ``watch`` its watchdog (``shared.runs.watchdog``), ``chunk`` one of its
chunks, by id (the executor, ``shared.executor.runner``); the kill switch is checked here, once,
for all of them. With the kill switch off
(``BACKFILL_ENABLED=false``) every delivery pauses its run instead and answers 2xx, so no task
burns its retries meanwhile. An unexpected failure is raised (Cloud Tasks retries it) until the
task's last attempt, which records the failure (or at once, when the chunk's source refuses it
for good: ``SourceRefused``) (a chunk ``failed``, the run ending once no chunk is
open; a planning task fails the run) and answers, so Cloud Tasks stops retrying.

The router composes the use cases; they do not know each other: the executor learns of the
circuit breaker only through the callable the router hands it.
"""

from __future__ import annotations

import logging

from google.cloud import firestore

from shared import logs
from shared.adapters.cloud_tasks import ChunkTask, Dispatcher, TaskKind
from shared.adapters.stores import Stores
from shared.config import Settings
from shared.errors import SourceRefused
from shared.executor.runner import ChunkReport, ChunkRunner, Crossed, Delivery
from shared.models import FINAL_RUN_STATUSES, ChunkState
from shared.runs import completion, control, planner, watchdog

logger = logging.getLogger(__name__)


class TaskRouter:
    def __init__(self, settings: Settings, db: firestore.Client, dispatcher: Dispatcher,
                 stores: Stores) -> None:
        self._settings = settings
        self._db = db
        self._dispatcher = dispatcher
        self._stores = stores
        self._executor = ChunkRunner(settings, db, dispatcher, stores=stores,
                                     breaker=self._breaker, guardrail=self._guardrail)

    def route(self, delivery: Delivery) -> ChunkReport:
        """Process a delivery; raises only when a retry of the task can help."""
        try:
            return self._route(delivery)
        except SourceRefused as refused:
            # No retry can help (a provider refused the key): fail the chunk now, not after
            # every attempt's refused calls.
            self._fail(delivery.task, refused.message)
            return ChunkReport("failed", detail=refused.message)
        except Exception as error:
            if delivery.retry_count + 1 < self._settings.task_max_attempts:
                raise
            reason = f"gave up after {delivery.retry_count + 1} attempts: {type(error).__name__}"
            self._fail(delivery.task, reason)
            return ChunkReport("failed", detail=reason)

    def _route(self, delivery: Delivery) -> ChunkReport:
        task, settings = delivery.task, self._settings
        if control.switched_off(settings, self._stores) is not None:
            return ChunkReport("paused", detail=control.kill_switch(
                settings, self._stores, task.migration_id))
        if task.kind is TaskKind.WATCH:
            return ChunkReport("watched", detail=watchdog.watch(
                settings, self._stores, self._dispatcher, task.migration_id))
        if task.kind is TaskKind.PLAN:
            return ChunkReport("planned", detail=planner.plan_run(
                settings, self._stores, self._dispatcher, task.migration_id, task.segment))
        report = self._executor.run(delivery)
        if report.result == "completed":
            self._wake_waiters(task.migration_id)
        return report

    def _wake_waiters(self, migration_id: str) -> None:
        """The run's last chunk may have ended it: resume the runs that waited for it
        (``control.make_way``; the sweep does too, should this be lost)."""
        run = self._stores.runs.get(migration_id)
        if run is not None and run.status in FINAL_RUN_STATUSES:
            control.wake(self._settings, self._stores, self._dispatcher)

    def _guardrail(self, migration_id: str, crossed: Crossed) -> bool:
        return control.guardrail(self._settings, self._stores, self._dispatcher, migration_id,
                                 crossed.cap, crossed.reason, crossed.moved)

    def _breaker(self, migration_id: str) -> str | None:
        return control.check_breaker(self._settings, self._stores, migration_id)

    def _fail(self, task: ChunkTask, reason: str) -> None:
        if task.kind is TaskKind.PLAN:
            completion.fail_run(self._stores, task.migration_id, f"planning {reason}")
            return
        self._stores.chunks.move(task.migration_id, task.chunk_id, ChunkState.FAILED, reason,
                                 failure_reason=reason)
        logs.log(logger, "chunk failed", logging.ERROR, migration_id=task.migration_id,
                 chunk_id=task.chunk_id, reason=reason)
        completion.finish_if_done(self._stores, task.migration_id)
        self._wake_waiters(task.migration_id)
