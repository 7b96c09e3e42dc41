"""Cloud Tasks emulator for the local stack: gcloud-tasks-emulator 0.6.2 made production-like.

It runs in its own virtualenv (``<state-dir>/tasks-venv``, from ``requirements-tasks.txt``)
because gcloud-tasks-emulator 0.6.2 pins ``protobuf<5``:

    <tasks-venv>/bin/python emulators/tasks_emulator.py --host 127.0.0.1 --port P \
        --admin-port A --issuer-url URL

What is reused from the package, unforked: its gRPC servicer (``Greeter``, the real Cloud Tasks v2
API, so the real ``google-cloud-tasks`` client works), its generated service registration, and its
``QueueState`` store of queues and pending tasks. What is replaced is its dispatcher (one task at a
time per queue, no timeout, no backoff) by one that behaves like production where the package
does not (measured in ``shared/notes/local-emulators.md``):

- **Task-name dedup**: CreateTask with a name already seen in this process's lifetime (pending,
  running, executed, dropped or deleted) answers ``ALREADY_EXISTS``; a malformed name answers
  ``INVALID_ARGUMENT``, as production does.
- **OIDC**: a task with ``http_request.oidc_token`` is sent with ``Authorization: Bearer <token>``
  minted by the local issuer (``--issuer-url``) for ``service_account_email`` and ``audience``
  (default: the task URL).
- **Retries** follow the queue's ``retry_config`` (min/max backoff, max doublings, max attempts,
  max retry duration) with production's formula; a task out of attempts is dropped and counted.
- **Dispatch deadline**: each attempt times out after the task's ``dispatch_deadline`` (default
  600 s, and unlike production values under 15 s are accepted so tests stay fast); a timeout is
  a failed attempt, and a hung handler holds only its own slot.
- **Concurrency**: up to ``rate_limits.max_concurrent_dispatches`` attempts in flight per queue
  (capped at ``MAX_CONCURRENT_PER_QUEUE`` threads), started no faster than
  ``max_dispatches_per_second``.
- **Headers**: ``X-CloudTasks-QueueName`` (short queue id), ``-TaskName`` (short task id),
  ``-TaskRetryCount``, ``-TaskExecutionCount``, ``-TaskETA``, ``-TaskPreviousResponse``, plus the
  task's own headers and body. Only 2xx is success (redirects are not followed).
- ``schedule_time`` is honoured; queue defaults are production's; ``UpdateQueue`` honours its
  update mask; ``GetTask``/``DeleteTask`` work.

Admin HTTP (127.0.0.1, ``--admin-port``):

- ``GET /stats`` -> ``{"queued", "scheduled", "inFlight", "dispatched", "succeeded", "retried",
  "droppedForGood", "deduplicated", "duplicated", "tokenFailures",
  "queues": {name: {"queued", "scheduled", "inFlight"}}}``; ``dispatched`` counts every HTTP
  request sent (attempts, plus duplicate deliveries). ``scheduled`` is the part of ``queued``
  (tasks waiting, not in flight) due more than ``SCHEDULED_AHEAD_SECONDS`` (10 s) from now: the
  local stack's retry backoff is at most 4 s, so those are tasks created with a deliberate
  ``schedule_time`` (a run's watchdog, for example), which a caller waiting for the queues to
  drain should not wait for.
- ``POST /faults`` ``{"duplicateDelivery": bool}``: when on, every task that succeeds is
  delivered once more, as production's at-least-once delivery may do. Answers the fault state.
- ``GET /`` -> 200 once the gRPC API is serving.

Logs carry queue and task ids, attempt numbers, statuses and durations; never bodies or tokens.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import logging
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from concurrent import futures
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# google-api-core warns about the Python version on every import; it is noise in the logs.
warnings.filterwarnings("ignore", category=FutureWarning)

import grpc  # type: ignore[import-untyped, unused-ignore]  # noqa: E402
from gcloud_tasks_emulator.cloudtasks_pb2_grpc import (  # noqa: E402
    add_CloudTasksServicer_to_server,
)
from gcloud_tasks_emulator.server import Greeter, QueueState  # noqa: E402
from google.api_core.exceptions import (  # noqa: E402
    AlreadyExists,
    GoogleAPICallError,
    InvalidArgument,
    NotFound,
)
from google.cloud.tasks_v2 import (  # noqa: E402
    Attempt,
    HttpMethod,
    Queue,
    Task,
)
from google.protobuf import empty_pb2  # type: ignore[import-untyped, unused-ignore]  # noqa: E402

logger = logging.getLogger("tasks-emulator")

# Production's defaults for a queue created without retry_config / rate_limits.
DEFAULT_MAX_ATTEMPTS = 100
DEFAULT_MIN_BACKOFF = 0.1
DEFAULT_MAX_BACKOFF = 3600.0
DEFAULT_MAX_DOUBLINGS = 16
DEFAULT_MAX_DISPATCHES_PER_SECOND = 500.0
DEFAULT_MAX_CONCURRENT_DISPATCHES = 1000
DEFAULT_MAX_BURST_SIZE = 100
DEFAULT_DISPATCH_DEADLINE = 600.0
# One thread per in-flight attempt: a local machine should not start 1,000 of them per queue.
MAX_CONCURRENT_PER_QUEUE = 64
# Responses are read to the end (so the handler sees a clean close) but never kept.
MAX_RESPONSE_BYTES = 1 << 20
# How long a minted token is reused; the issuer's tokens live for one hour.
TOKEN_REUSE_SECONDS = 300.0
# A waiting task due further ahead than this counts as "scheduled" in /stats: deliberately
# deferred, not merely backing off (the local stack's queues back off 4 s at most).
SCHEDULED_AHEAD_SECONDS = 10.0

_QUEUE_NAME = re.compile(r"^projects/[^/]+/locations/[^/]+/queues/[A-Za-z0-9-]{1,100}$")
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,500}$")


def _seconds(value: dt.timedelta | None) -> float:
    return value.total_seconds() if value else 0.0


def _api_error(kind: type[GoogleAPICallError], message: str) -> GoogleAPICallError:
    """An api_core error, which the package's servicer turns into that gRPC status."""
    return kind(message)  # type: ignore[no-untyped-call, unused-ignore]  # api_core's __init__ is untyped


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def backoff_seconds(failures: int, min_backoff: float, max_backoff: float, doublings: int) -> float:
    """Delay before the next attempt after ``failures`` failed attempts (``failures`` >= 1).

    Production's rule: start at min_backoff, double ``doublings`` times, then grow linearly by
    ``2**doublings * min_backoff``, never above max_backoff. With min 10 s, max 300 s and 3
    doublings: 10, 20, 40, 80, 160, 240, 300, 300, ...
    """
    step = failures - 1
    delay: float
    if step <= doublings:
        delay = min_backoff * float(2**step)
    else:
        delay = min_backoff * float(2**doublings) * (step - doublings + 1)
    return min(delay, max_backoff)


@dataclass
class TaskMeta:
    """What the dispatcher knows about one task beyond the Task message itself."""

    queue: str
    due: float  # wall-clock seconds; the next attempt may start at or after this
    first_attempt_at: float | None = None
    last_status: int = 0  # HTTP status of the previous attempt, 0 when none was received
    # Previous attempts answered with a status below 500: production's TaskExecutionCount
    # leaves out 5xx failures (and attempts that got no response).
    executions: int = 0
    deleted: bool = False


@dataclass
class Stats:
    """Counters served by ``GET /stats`` (all since the process started)."""

    dispatched: int = 0
    succeeded: int = 0
    retried: int = 0
    dropped_for_good: int = 0
    deduplicated: int = 0
    duplicated: int = 0
    token_failures: int = 0


@dataclass
class Faults:
    duplicate_delivery: bool = False


@dataclass
class _Outcome:
    status: int  # 0 when no HTTP response was received
    detail: str = ""
    elapsed: float = 0.0
    received: bool = field(default=False)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Cloud Tasks treats a 3xx as a failed attempt; it does not follow it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxies: tasks go to loopback targets and an inherited HTTP_PROXY would swallow them.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


class TokenSource:
    """Mints OIDC tokens from the local issuer, reusing each for a few minutes."""

    def __init__(self, issuer_url: str | None) -> None:
        self._issuer_url = issuer_url.rstrip("/") if issuer_url else None
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}
        self._lock = threading.Lock()

    def token(self, email: str, audience: str) -> str:
        if not self._issuer_url:
            raise RuntimeError("the task asks for an OIDC token but no --issuer-url was given")
        key = (email, audience)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
            if cached and cached[0] > now:
                return cached[1]
        request = urllib.request.Request(  # noqa: S310 - the operator's own issuer URL
            self._issuer_url + "/token",
            data=json.dumps({"email": email, "audience": audience}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with _OPENER.open(request, timeout=5.0) as response:
            token = json.loads(response.read())["token"]
        if not isinstance(token, str):
            raise RuntimeError("the issuer answered without a token")
        with self._lock:
            self._cache[key] = (now + TOKEN_REUSE_SECONDS, token)
        return token


class FaithfulQueueState(QueueState):  # type: ignore[misc]  # the package is untyped
    """The package's queue store, made thread-safe and production-like, plus a dispatcher.

    Pending tasks stay in the package's ``_queue_tasks`` lists (so its ListTasks and PurgeQueue
    work); a task being dispatched moves to ``_running`` and comes back to its list if it is
    retried. Every mutation happens under ``_cond``.
    """

    def __init__(self, tokens: TokenSource) -> None:
        super().__init__(target_host="127.0.0.1", target_port=80, max_retries=-1)
        self._cond = threading.Condition()
        self._tokens = tokens
        self._seen_names: set[str] = set()
        self._meta: dict[str, TaskMeta] = {}
        self._running: dict[str, Task] = {}
        self._in_flight: dict[str, int] = {}
        self._next_start: dict[str, float] = {}
        self._stop = threading.Event()
        self.stats = Stats()
        self.faults = Faults()
        self._id_counter = 0

    # --- queues -------------------------------------------------------------------------------

    def create_queue(self, parent: str, queue: Queue) -> Queue:
        if not _QUEUE_NAME.match(queue.name or "") or (
            parent and not queue.name.startswith(parent + "/queues/")
        ):
            raise _api_error(
                InvalidArgument, f"invalid queue name {queue.name!r} for parent {parent!r}"
            )
        with self._cond:
            if queue.name in self._queues:
                raise _api_error(AlreadyExists, f"Queue {queue.name} already exists.")
            stored = Queue(queue)
            self._apply_defaults(stored)
            created: Queue = super().create_queue(parent, stored)
            self._in_flight.setdefault(queue.name, 0)
            logger.info(
                "created queue %s (max_attempts=%d, backoff %.2f-%.2fs x%d, concurrency %d)",
                _short(queue.name),
                created.retry_config.max_attempts,
                _seconds(created.retry_config.min_backoff),
                _seconds(created.retry_config.max_backoff),
                created.retry_config.max_doublings,
                created.rate_limits.max_concurrent_dispatches,
            )
            self._cond.notify_all()
            return Queue(created)

    def update_queue_masked(self, queue: Queue, mask: Any) -> Queue:
        """UpdateQueue as production does it: upsert, and change only the masked fields."""
        with self._cond:
            if queue.name not in self._queues:
                parent = queue.name.rsplit("/queues/", 1)[0]
                return self.create_queue(parent, queue)
            stored = self._queues[queue.name]
            paths = list(mask.paths)
            if not paths:
                # No mask: every field set in the request replaces the stored one.
                paths = [name for name in ("retry_config", "rate_limits") if name in queue]
            for path in paths:
                self._copy_field(queue, stored, path)
            self._apply_defaults(stored)
            self._cond.notify_all()
            return Queue(stored)

    @staticmethod
    def _copy_field(source: Queue, target: Queue, path: str) -> None:
        head, _, rest = path.partition(".")
        if head not in ("retry_config", "rate_limits"):
            return  # routing and logging settings have no effect here
        if rest:
            setattr(getattr(target, head), rest, getattr(getattr(source, head), rest))
        else:
            setattr(target, head, getattr(source, head))

    @staticmethod
    def _apply_defaults(queue: Queue) -> None:
        # proto3 cannot tell an unset number from 0; production reads 0 as "use the default".
        retry = queue.retry_config
        if retry.max_attempts == 0:
            retry.max_attempts = DEFAULT_MAX_ATTEMPTS
        if not _seconds(retry.min_backoff):
            retry.min_backoff = dt.timedelta(seconds=DEFAULT_MIN_BACKOFF)
        if not _seconds(retry.max_backoff):
            retry.max_backoff = dt.timedelta(seconds=DEFAULT_MAX_BACKOFF)
        if retry.max_doublings == 0:
            retry.max_doublings = DEFAULT_MAX_DOUBLINGS
        limits = queue.rate_limits
        if limits.max_dispatches_per_second == 0:
            limits.max_dispatches_per_second = DEFAULT_MAX_DISPATCHES_PER_SECOND
        if limits.max_concurrent_dispatches == 0:
            limits.max_concurrent_dispatches = DEFAULT_MAX_CONCURRENT_DISPATCHES
        if limits.max_burst_size == 0:
            limits.max_burst_size = DEFAULT_MAX_BURST_SIZE

    def queue(self, name: str) -> Queue:
        with self._cond:
            if name not in self._queues:
                raise _api_error(NotFound, f"Queue {name} does not exist.")
            return Queue(self._queues[name])

    def queues(self) -> list[Queue]:
        with self._cond:
            return [Queue(q) for q in self._queues.values()]

    def pause_queue(self, queue_name: str) -> Queue:
        with self._cond:
            self.queue(queue_name)
            return Queue(super().pause_queue(queue_name))

    def resume_queue(self, queue_name: str) -> Queue:
        with self._cond:
            self.queue(queue_name)
            result = Queue(super().resume_queue(queue_name))
            self._cond.notify_all()
            return result

    def purge_queue(self, queue_name: str) -> Queue:
        with self._cond:
            self.queue(queue_name)
            for task in self._queue_tasks.get(queue_name, []):
                self._meta.pop(task.name, None)
            return Queue(super().purge_queue(queue_name))

    def delete_queue(self, name: str) -> None:
        with self._cond:
            self.queue(name)
            for task in self._queue_tasks.get(name, []):
                self._meta.pop(task.name, None)
            super().delete_queue(name)

    # --- tasks --------------------------------------------------------------------------------

    def create_task(self, queue: str, task: Task) -> Task:
        now = time.time()
        with self._cond:
            if queue not in self._queues:
                raise _api_error(NotFound, f"Queue {queue} does not exist.")
            if task.name:
                prefix, _, task_id = task.name.rpartition("/tasks/")
                if prefix != queue or not _TASK_ID.match(task_id):
                    raise _api_error(
                        InvalidArgument,
                        f"task name must be {queue}/tasks/ID with ID of [A-Za-z0-9_-]{{1,500}}",
                    )
                if task.name in self._seen_names:
                    self.stats.deduplicated += 1
                    logger.info("rejected duplicate task name %s", _short(task.name))
                    raise _api_error(AlreadyExists, "Requested entity already exists")
            else:
                self._id_counter += 1
                task.name = f"{queue}/tasks/{time.time_ns()}{self._id_counter:04d}"
            if not task.http_request.url:
                raise _api_error(
                    InvalidArgument, "only HTTP tasks (http_request.url) are supported"
                )
            if not task.http_request.http_method:
                task.http_request.http_method = HttpMethod.POST  # type: ignore[assignment]
            if not _seconds(task.dispatch_deadline):
                task.dispatch_deadline = dt.timedelta(seconds=DEFAULT_DISPATCH_DEADLINE)
            task.create_time = dt.datetime.fromtimestamp(now, dt.UTC)
            due = now
            if task.schedule_time:
                due = max(now, task.schedule_time.timestamp())
            else:
                task.schedule_time = task.create_time
            stored = Task(task)
            self._seen_names.add(stored.name)
            self._meta[stored.name] = TaskMeta(queue=queue, due=due)
            self._queue_tasks[queue].append(stored)
            self._cond.notify_all()
            logger.info("created task %s in %s", _short(stored.name), _short(queue))
            return Task(stored)

    def list_tasks(self, queue_name: str) -> list[Task]:
        with self._cond:
            self.queue(queue_name)
            running = [t for n, t in self._running.items() if self._meta[n].queue == queue_name]
            return [Task(t) for t in [*running, *self._queue_tasks[queue_name]]]

    def get_task(self, name: str) -> Task:
        with self._cond:
            found = self._find(name)
            return Task(found[1])

    def delete_task(self, name: str) -> None:
        with self._cond:
            queue, task = self._find(name)
            meta = self._meta[name]
            if name in self._running:
                meta.deleted = True  # the attempt finishes but its outcome is ignored
            else:
                self._queue_tasks[queue].remove(task)
                del self._meta[name]
            logger.info("deleted task %s", _short(name))

    def run_task(self, name: str) -> Task:
        """RunTask: make a pending task due now (even if scheduled later or backing off)."""
        with self._cond:
            _, task = self._find(name)
            self._meta[name].due = time.time()
            self._cond.notify_all()
            return Task(task)

    def _find(self, name: str) -> tuple[str, Task]:
        meta = self._meta.get(name)
        if meta is None or meta.deleted:
            raise _api_error(NotFound, f"Task {name} does not exist.")
        if name in self._running:
            return meta.queue, self._running[name]
        for task in self._queue_tasks.get(meta.queue, []):
            if task.name == name:
                return meta.queue, task
        raise _api_error(NotFound, f"Task {name} does not exist.")

    # --- dispatch -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The counters for ``GET /stats`` (``scheduled``: see the module docstring)."""
        scheduled_after = time.time() + SCHEDULED_AHEAD_SECONDS
        with self._cond:
            per_queue: dict[str, dict[str, int]] = {}
            for name in self._queues:
                pending = self._queue_tasks.get(name, [])
                per_queue[_short(name)] = {
                    "queued": len(pending),
                    "scheduled": sum(
                        1 for task in pending if self._meta[task.name].due > scheduled_after
                    ),
                    "inFlight": self._in_flight.get(name, 0),
                }
            return {
                "queued": sum(q["queued"] for q in per_queue.values()),
                "scheduled": sum(q["scheduled"] for q in per_queue.values()),
                "inFlight": sum(self._in_flight.values()),
                "dispatched": self.stats.dispatched,
                "succeeded": self.stats.succeeded,
                "retried": self.stats.retried,
                "droppedForGood": self.stats.dropped_for_good,
                "deduplicated": self.stats.deduplicated,
                "duplicated": self.stats.duplicated,
                "tokenFailures": self.stats.token_failures,
                "queues": per_queue,
            }

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def dispatch_forever(self) -> None:
        """Start every due task its queue has room for; sleep until the next one is due."""
        while not self._stop.is_set():
            with self._cond:
                wake_at = self._start_due_tasks(time.time())
                self._cond.wait(timeout=max(0.005, min(wake_at - time.time(), 1.0)))

    def _start_due_tasks(self, now: float) -> float:
        wake_at = now + 1.0
        for queue_name, pending in self._queue_tasks.items():
            queue = self._queues.get(queue_name)
            if queue is None or queue.state != Queue.State.RUNNING or not pending:
                continue
            limit = min(queue.rate_limits.max_concurrent_dispatches, MAX_CONCURRENT_PER_QUEUE)
            interval = 1.0 / queue.rate_limits.max_dispatches_per_second
            due = sorted(
                (t for t in pending if self._meta[t.name].due <= now),
                key=lambda t: self._meta[t.name].due,
            )
            for task in due:
                if self._in_flight[queue_name] >= limit:
                    break
                next_start = self._next_start.get(queue_name, 0.0)
                if next_start > now:
                    wake_at = min(wake_at, next_start)
                    break
                self._next_start[queue_name] = max(next_start, now) + interval
                pending.remove(task)
                self._running[task.name] = task
                self._in_flight[queue_name] += 1
                threading.Thread(
                    target=self._attempt, args=(queue, Task(task)), daemon=True
                ).start()
            later = [self._meta[t.name].due for t in pending if self._meta[t.name].due > now]
            if later:
                wake_at = min(wake_at, *later)
        return wake_at

    def _attempt(self, queue: Queue, task: Task) -> None:
        """One dispatch attempt of ``task`` (a copy), then its bookkeeping."""
        meta = self._meta[task.name]
        started = time.time()
        outcome = self._send(queue, task, meta)
        duplicate: _Outcome | None = None
        success = 200 <= outcome.status < 300
        if success and self.faults.duplicate_delivery:
            # A second, independent delivery of the same attempt, as at-least-once allows.
            duplicate = self._send(queue, task, meta)
        with self._cond:
            self._finish(queue, task.name, meta, started, outcome, duplicate)
            self._cond.notify_all()

    def _finish(
        self,
        queue: Queue,
        name: str,
        meta: TaskMeta,
        started: float,
        outcome: _Outcome,
        duplicate: _Outcome | None,
    ) -> None:
        task = self._running.pop(name)
        self._in_flight[queue.name] -= 1
        self.stats.dispatched += 1
        if duplicate is not None:
            self.stats.dispatched += 1
            self.stats.duplicated += 1
        task.dispatch_count += 1
        if outcome.received:
            task.response_count += 1
            if outcome.status < 500:
                meta.executions += 1
        attempt = Attempt(
            schedule_time=dt.datetime.fromtimestamp(meta.due, dt.UTC),
            dispatch_time=dt.datetime.fromtimestamp(started, dt.UTC),
            response_time=dt.datetime.fromtimestamp(started + outcome.elapsed, dt.UTC),
            response_status={"code": 0 if 200 <= outcome.status < 300 else 2},
        )
        if not task.first_attempt:
            task.first_attempt = attempt
        task.last_attempt = attempt
        meta.first_attempt_at = meta.first_attempt_at or started
        meta.last_status = outcome.status
        log_args = (
            _short(queue.name),
            _short(name),
            task.dispatch_count,
            outcome.status or outcome.detail,
            outcome.elapsed * 1000,
        )
        if 200 <= outcome.status < 300:
            self.stats.succeeded += 1
            del self._meta[name]
            logger.info("task %s/%s attempt %d: %s in %.0f ms", *log_args)
            return
        if meta.deleted or queue.name not in self._queues:
            self._meta.pop(name, None)
            return
        retry = queue.retry_config
        out_of_attempts = retry.max_attempts != -1 and task.dispatch_count >= retry.max_attempts
        max_duration = _seconds(retry.max_retry_duration)
        out_of_time = max_duration <= 0 or time.time() - meta.first_attempt_at >= max_duration
        # Production stops only when both limits are reached (an unset duration is no limit).
        if out_of_attempts and out_of_time:
            self.stats.dropped_for_good += 1
            del self._meta[name]
            logger.warning("task %s/%s attempt %d: %s in %.0f ms; dropped", *log_args)
            return
        delay = backoff_seconds(
            task.dispatch_count,
            _seconds(retry.min_backoff),
            _seconds(retry.max_backoff),
            retry.max_doublings,
        )
        meta.due = time.time() + delay
        self.stats.retried += 1
        self._queue_tasks[queue.name].append(task)
        logger.info("task %s/%s attempt %d: %s in %.0f ms; retry in %.2f s", *log_args, delay)

    def _send(self, queue: Queue, task: Task, meta: TaskMeta) -> _Outcome:
        http = task.http_request
        headers = {"User-Agent": "Google-Cloud-Tasks"}
        if http.body:
            headers["Content-Type"] = "application/octet-stream"
        headers.update(dict(http.headers))
        headers.update(
            {
                "X-CloudTasks-QueueName": _short(queue.name),
                "X-CloudTasks-TaskName": _short(task.name),
                "X-CloudTasks-TaskRetryCount": str(task.dispatch_count),
                "X-CloudTasks-TaskExecutionCount": str(meta.executions),
                "X-CloudTasks-TaskETA": f"{task.schedule_time.timestamp():.6f}",
            }
        )
        if meta.last_status:
            headers["X-CloudTasks-TaskPreviousResponse"] = str(meta.last_status)
        started = time.monotonic()
        if "oidc_token" in http:
            try:
                headers["Authorization"] = "Bearer " + self._tokens.token(
                    http.oidc_token.service_account_email, http.oidc_token.audience or http.url
                )
            except Exception as exc:
                with self._cond:
                    self.stats.token_failures += 1
                logger.error("task %s: cannot mint its OIDC token: %s", _short(task.name), exc)
                return _Outcome(0, "token-failure", time.monotonic() - started)
        request = urllib.request.Request(  # noqa: S310 - targets are the developer's own URLs
            http.url,
            data=bytes(http.body) if http.body else None,
            headers=headers,
            method=HttpMethod(http.http_method).name,
        )
        timeout = _seconds(task.dispatch_deadline) or DEFAULT_DISPATCH_DEADLINE
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                response.read(MAX_RESPONSE_BYTES)
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            exc.read(MAX_RESPONSE_BYTES)
            exc.close()
            return _Outcome(exc.code, "", time.monotonic() - started, received=True)
        except TimeoutError:
            return _Outcome(0, "deadline-exceeded", time.monotonic() - started)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            detail = "deadline-exceeded" if isinstance(reason, TimeoutError) else "unreachable"
            return _Outcome(0, detail, time.monotonic() - started)
        except Exception:
            logger.exception("task %s: unexpected dispatch error", _short(task.name))
            return _Outcome(0, "error", time.monotonic() - started)
        return _Outcome(status, "", time.monotonic() - started, received=True)


class FaithfulServicer(Greeter):  # type: ignore[misc]  # the package is untyped
    """The package's servicer, plus UpdateQueue with its mask, GetTask, DeleteTask, RunTask."""

    def __init__(self, state: FaithfulQueueState) -> None:
        super().__init__(state)
        self._faithful = state

    def UpdateQueue(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self._faithful.update_queue_masked(request.queue, request.update_mask)
        except GoogleAPICallError as err:
            context.abort(err.grpc_status_code, err.message)

    def GetTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self._faithful.get_task(request.name)
        except GoogleAPICallError as err:
            context.abort(err.grpc_status_code, err.message)

    def DeleteTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self._faithful.delete_task(request.name)
            return empty_pb2.Empty()
        except GoogleAPICallError as err:
            context.abort(err.grpc_status_code, err.message)

    def RunTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self._faithful.run_task(request.name)
        except GoogleAPICallError as err:
            context.abort(err.grpc_status_code, err.message)


def _admin_handler(state: FaithfulQueueState) -> type[BaseHTTPRequestHandler]:
    class AdminHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/stats":
                self._send(HTTPStatus.OK, state.snapshot())
            elif path == "/":
                self._send(HTTPStatus.OK, {"status": "ok"})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != "/faults":
                self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            try:
                length = int(self.headers.get("Content-Length") or "0")
                body = json.loads(self.rfile.read(min(length, 4096)) or b"{}")
                duplicate = body["duplicateDelivery"]
                if not isinstance(duplicate, bool):
                    raise TypeError("duplicateDelivery must be a boolean")
            except (ValueError, KeyError, TypeError) as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": f"bad faults request: {exc}"})
                return
            state.faults.duplicate_delivery = duplicate
            logger.info("fault duplicateDelivery=%s", duplicate)
            self._send(HTTPStatus.OK, {"duplicateDelivery": duplicate})

        def _send(self, status: HTTPStatus, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests poll /stats many times a second; those lines would drown the log

    return AdminHandler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Production-like Cloud Tasks emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="gRPC port")
    parser.add_argument("--admin-port", type=int, required=True, help="admin HTTP port")
    parser.add_argument("--issuer-url", default=None, help="local OIDC issuer for oidc_token")
    parser.add_argument("--default-project", default="demo-backfill")
    parser.add_argument("--default-location", default="us-central1")
    parser.add_argument("--queue", action="append", default=[], help="queue id to pre-create")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # The package's own logger is chatty and logs task URLs per attempt; ours says enough.
    logging.getLogger("gcloud-tasks-emulator").setLevel(logging.WARNING)

    try:
        if args.host != "localhost" and not ipaddress.ip_address(args.host).is_loopback:
            raise ValueError
    except ValueError:
        print(f"tasks emulator: refusing to bind {args.host!r}: loopback only", file=sys.stderr)
        return 2

    state = FaithfulQueueState(TokenSource(args.issuer_url))
    parent = f"projects/{args.default_project}/locations/{args.default_location}"
    for queue_id in args.queue:
        state.create_queue(parent, Queue(name=f"{parent}/queues/{queue_id}"))

    # gRPC sets SO_REUSEPORT by default, so a second server on a taken port would start
    # silently and share its traffic; without it, a taken port fails the bind below.
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)]
    )
    add_CloudTasksServicer_to_server(FaithfulServicer(state), grpc_server)
    if grpc_server.add_insecure_port(f"{args.host}:{args.port}") == 0:
        print(f"tasks emulator: cannot bind {args.host}:{args.port}", file=sys.stderr)
        return 1
    try:
        admin = ThreadingHTTPServer((args.host, args.admin_port), _admin_handler(state))
    except OSError as exc:
        print(f"tasks emulator: cannot bind admin port {args.admin_port}: {exc}", file=sys.stderr)
        return 1
    admin.daemon_threads = True
    grpc_server.start()
    dispatcher = threading.Thread(target=state.dispatch_forever, name="dispatcher", daemon=True)
    dispatcher.start()

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=admin.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info(
        "serving gRPC on %s:%d, admin on http://%s:%d",
        args.host,
        args.port,
        args.host,
        args.admin_port,
    )
    admin.serve_forever(poll_interval=0.2)
    state.stop()
    grpc_server.stop(grace=1).wait()
    admin.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
