"""The dispatch port: how a chunk's work is handed to a handler.

``Dispatcher.enqueue`` takes a ``ChunkTask`` and answers whether it created a task (``False``:
a task of that name exists already, so enqueuing the same chunk segment twice is a no-op).
``CloudTasksDispatcher`` is the real adapter (Cloud Tasks, or its emulator in local mode);
``InProcessDispatcher`` keeps tasks in memory for function tests that drive them by hand.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grpc
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator
from pydantic.alias_generators import to_camel

from shared import clock
from shared.config import Settings
from shared.errors import Unavailable

RETRY_CHUNK = "retry"  # the one chunk of a run that retries another run's failed events


class TaskKind(enum.StrEnum):
    """What a task asks for: a run planned, a chunk's segment worked, a run watched."""

    PLAN = "plan"
    CHUNK = "chunk"
    WATCH = "watch"


@dataclasses.dataclass(frozen=True)
class ChunkTask:
    """One task of a run. ``segment`` is, for a chunk, the segment of its work (segment n+1
    continues where segment n ran out of time; a claim names it); for a planning or watchdog
    task, only the task's number in its sequence, which makes its name new. Build the last two
    with ``planning`` and ``watching``."""

    migration_id: str
    chunk_id: str = ""
    segment: int = 0
    kind: TaskKind = TaskKind.CHUNK

    @classmethod
    def planning(cls, migration_id: str, number: int = 0) -> ChunkTask:
        return cls(migration_id, "", number, TaskKind.PLAN)

    @classmethod
    def watching(cls, migration_id: str, number: int) -> ChunkTask:
        return cls(migration_id, "", number, TaskKind.WATCH)

    @property
    def name(self) -> str:
        """A deterministic task id. The short hash in front spreads names over Cloud Tasks'
        key space (sequential names hot-spot its index, its docs warn). A planning or
        watchdog task is named by its kind where a chunk's is named by its id, as before kinds
        were explicit, so a task queued then and its repeat now share a name."""
        which = self.chunk_id if self.kind is TaskKind.CHUNK else self.kind.value
        key = f"{self.migration_id}-{which}-{self.segment}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        return f"{digest}-{key}"

    def body(self) -> bytes:
        return TaskBody(kind=self.kind, migration_id=self.migration_id,
                        chunk_id=self.chunk_id or None, segment=self.segment) \
            .model_dump_json(by_alias=True, exclude_none=True).encode()


class TaskBody(BaseModel):
    """A task's body as Cloud Tasks delivers it: ``{"kind", "migrationId", "chunkId" (a
    chunk's only), "segment"}``. A body queued before kinds were explicit (no ``kind``; the
    pseudo chunk ids ``plan`` and ``watch``) reads as the task it was."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    kind: TaskKind
    migration_id: StrictStr
    chunk_id: StrictStr | None = None
    segment: StrictInt = Field(0, ge=0, lt=2**63)

    @model_validator(mode="before")
    @classmethod
    def _kind_of_an_older_body(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kind" not in data:
            chunk_id = data.get("chunkId")
            if chunk_id in (TaskKind.PLAN.value, TaskKind.WATCH.value):
                return {**{k: v for k, v in data.items() if k != "chunkId"}, "kind": chunk_id}
            return {**data, "kind": TaskKind.CHUNK.value}
        return data

    @model_validator(mode="after")
    def _chunk_named_by_chunks_only(self) -> TaskBody:
        if self.kind is TaskKind.CHUNK and self.chunk_id is None:
            raise ValueError("chunkId: is required for a chunk task")
        if self.kind is not TaskKind.CHUNK and self.chunk_id is not None:
            raise ValueError(f"chunkId: a {self.kind.value} task names no chunk")
        return self

    def task(self) -> ChunkTask:
        return ChunkTask(self.migration_id, self.chunk_id or "", self.segment, self.kind)


@dataclasses.dataclass(frozen=True)
class QueueInfo:
    """The chunk queue as Cloud Tasks reports it (``state``: RUNNING, PAUSED, DISABLED)."""

    state: str
    max_dispatches_per_second: float | None = None
    max_concurrent_dispatches: int | None = None


class Dispatcher(Protocol):
    def queue(self) -> QueueInfo | None:
        """The chunk queue's state and limits; None when Cloud Tasks did not say."""

    def enqueue(self, task: ChunkTask, delay_seconds: float = 0.0) -> bool:
        """Create ``task`` (due after ``delay_seconds``); False if its name exists already."""

    def exists(self, task: ChunkTask) -> bool:
        """Whether ``task`` is still queued, backing off or in flight."""


def enqueue_all(dispatcher: Dispatcher, tasks: Iterable[ChunkTask], workers: int) -> int:
    """Enqueue ``tasks`` concurrently (one create call each); return how many were created.

    Raises ``Unavailable`` if any could not be enqueued; those already enqueued stay queued, and
    enqueuing them again is a no-op.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(dispatcher.enqueue, tasks))


_RETRY = api_retry.Retry(
    predicate=api_retry.if_exception_type(
        api_exceptions.ServiceUnavailable,
        api_exceptions.DeadlineExceeded,
        api_exceptions.InternalServerError,
    ),
    initial=0.2,
    maximum=5.0,
    timeout=30.0,
)


class CloudTasksDispatcher:
    """Creates HTTP tasks for the chunk handler, each with an OIDC token of the tasks identity."""

    def __init__(self, settings: Settings, client: tasks_v2.CloudTasksClient | None = None):
        self._settings = settings
        self._client = client or self._make_client(settings)

    @staticmethod
    def _make_client(settings: Settings) -> tasks_v2.CloudTasksClient:
        if settings.tasks_emulator_host:
            channel = grpc.insecure_channel(settings.tasks_emulator_host)
            return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        return tasks_v2.CloudTasksClient()

    def queue(self) -> QueueInfo | None:
        try:
            queue = self._client.get_queue(name=self._settings.queue_path, timeout=10)
        except api_exceptions.GoogleAPICallError:
            return None
        limits = queue.rate_limits
        return QueueInfo(queue.state.name, limits.max_dispatches_per_second or None,
                         limits.max_concurrent_dispatches or None)

    def enqueue(self, task: ChunkTask, delay_seconds: float = 0.0) -> bool:
        settings = self._settings
        # Real time, not the bundle's clock: Cloud Tasks compares schedule_time with its own.
        schedule = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay_seconds)
                    if delay_seconds > 0 else None)
        request = tasks_v2.Task(
            name=f"{settings.queue_path}/tasks/{task.name}",
            http_request=tasks_v2.HttpRequest(
                http_method=tasks_v2.HttpMethod.POST,
                url=settings.chunk_url,
                headers={"Content-Type": "application/json"},
                body=task.body(),
                oidc_token=tasks_v2.OidcToken(
                    service_account_email=settings.tasks_identity,
                    audience=settings.effective_chunk_audience,
                ),
            ),
            dispatch_deadline=dt.timedelta(seconds=settings.dispatch_deadline_seconds),
            schedule_time=schedule,
        )
        try:
            # Retrying a create is safe: the name is deterministic, so a retry of a create that
            # did land answers ALREADY_EXISTS.
            self._client.create_task(parent=settings.queue_path, task=request, retry=_RETRY)
        except api_exceptions.AlreadyExists:
            return False
        except api_exceptions.GoogleAPICallError as exc:
            raise Unavailable(f"Cloud Tasks refused a task: {type(exc).__name__}") from exc
        return True

    def exists(self, task: ChunkTask) -> bool:
        try:
            self._client.get_task(name=f"{self._settings.queue_path}/tasks/{task.name}",
                                  retry=_RETRY)
        except api_exceptions.NotFound:
            return False
        except api_exceptions.GoogleAPICallError as exc:
            raise Unavailable(f"Cloud Tasks did not answer: {type(exc).__name__}") from exc
        return True


class InProcessDispatcher:
    """Keeps tasks in memory, with Cloud Tasks' name dedup; tests deliver them by hand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: set[str] = set()
        self.queued: list[ChunkTask] = []
        self.delays: dict[ChunkTask, float] = {}
        self.state = "RUNNING"  # as Cloud Tasks would report the queue (tests pause it)

    def queue(self) -> QueueInfo | None:
        return QueueInfo(self.state)

    def enqueue(self, task: ChunkTask, delay_seconds: float = 0.0) -> bool:
        with self._lock:
            if task.name in self._names:
                return False
            self._names.add(task.name)
            self.queued.append(task)
            self.delays[task] = delay_seconds
            return True

    def exists(self, task: ChunkTask) -> bool:
        with self._lock:
            return task in self.queued

    def take(self) -> list[ChunkTask]:
        with self._lock:
            taken, self.queued = self.queued, []
            return taken


def arm_watchdog(settings: Settings, dispatcher: Dispatcher, migration_id: str,
                 now: float | None = None) -> None:
    """Enqueue the run's next watchdog task, due in one lease; one per lease-long slot (the slot
    number is the task's segment, so arming twice within a slot is a no-op)."""
    due = (clock.now().timestamp() if now is None else now) + settings.lease_seconds
    slot = int(due // settings.lease_seconds)
    dispatcher.enqueue(ChunkTask.watching(migration_id, slot),
                       delay_seconds=settings.lease_seconds)


# Watchdogs armed from outside their chain (``ensure_watchdog``) are numbered from here, apart
# from the chain's slot numbers (epoch seconds / lease, far below it).
RESCUE_SEGMENTS = 10**12


def ensure_watchdog(settings: Settings, dispatcher: Dispatcher, migration_id: str,
                    now: float | None = None) -> bool:
    """Arm the run's watchdog unless one is queued; answer whether it armed one.

    A watchdog armed within the last lease is due in the current or the next slot (or, backing
    off, the one before): if none of those exists, it was lost. ``arm_watchdog``'s slot name
    may not serve then: Cloud Tasks refuses the name of a task it deleted or dropped for a while
    afterwards. So this one is numbered apart (``RESCUE_SEGMENTS`` + slot): arming it again
    within a slot is a no-op, and when it runs it re-arms the slot-named chain.
    """
    at = clock.now().timestamp() if now is None else now
    slot = int((at + settings.lease_seconds) // settings.lease_seconds)
    queued = (slot - 2, slot - 1, slot, RESCUE_SEGMENTS + slot - 1, RESCUE_SEGMENTS + slot)
    if any(dispatcher.exists(ChunkTask.watching(migration_id, segment))
           for segment in queued):
        return False
    return dispatcher.enqueue(ChunkTask.watching(migration_id, RESCUE_SEGMENTS + slot),
                              delay_seconds=settings.lease_seconds)
