"""Start, inspect and stop the local stack (docs/local-stack-contract.md).

The stack is seven processes on 127.0.0.1, each at ``port_base + offset``: the official
Firestore emulator (+1), the official Pub/Sub emulator (+8, the Cloud SDK's; ``up`` creates the
run-notices topic and a pull subscription ``NOTICES_SUBSCRIPTION`` on it), the Cloud Tasks
emulator (+2 gRPC, +3 admin HTTP; ``emulators/tasks_emulator.py`` in its own venv), the local
OIDC issuer (+4, ``emulators/issuer.py``), the local PayNow Management API (+7,
``emulators/paynow.py``), the functions gateway (+5, ``python -m emulators.gateway``) and a
Cloud Scheduler stand-in that fires the gateway's ``POST /api/jobs/sweep`` every
``sweep_seconds`` (admin HTTP +6, ``emulators/scheduler.py``; started with the gateway only).
``up`` also creates the chunk queue with the real
google-cloud-tasks client and writes ``<state-dir>/stack.env``.

CLI::

    python -m emulators.stack up [--state-dir .local] [--port-base 8680] [--env KEY=VALUE ...]
                                 [--without-gateway] [--sweep-seconds 60]
    python -m emulators.stack down [--state-dir .local]
    python -m emulators.stack status [--state-dir .local]

Python (tests)::

    with Stack(Path(".local-test"), port_base=9300, sweep_seconds=0) as stack:
        stack.env(); stack.wait_idle(30); stack.restart_gateway({"KEY": "value"})
        stack.fire_sweep(); stack.set_sweep_period(0.5); stack.sweep_stats()
        stack.reset_paynow()

Outages, for tests: ``restart_tasks()`` loses every queued task (a lost queue), and
``stop_gateway()`` / ``start_gateway()`` take the functions down and up again while the rest of
the stack (the scheduler stand-in included) keeps running.

Ownership: ``<state-dir>/stack.json`` records every process this state dir's ``up`` started, with
its process group and start time; ``down`` signals those groups only, after checking that each
recorded process is still the one that was started (so a recycled pid is never signalled). Each
process runs in its own session, which is how the Firestore wrapper's java child, which the
wrapper does not exec, is stopped along with it. Logs: ``<state-dir>/logs/<name>.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from emulators import paynow

logger = logging.getLogger("emulators.stack")

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS_TASKS = REPO_ROOT / "emulators" / "requirements-tasks.txt"
TASKS_EMULATOR = REPO_ROOT / "emulators" / "tasks_emulator.py"

PROJECT_ID = "demo-backfill"
LOCATION = "us-central1"
QUEUE_ID = "backfill-chunks"
TASK_MAX_ATTEMPTS = 8
# Chunk tasks the local queue runs at once: two cores run no more usefully.
QUEUE_CONCURRENCY = 4
DEFAULT_PORT_BASE = 8680
DEFAULT_STATE_DIR = Path(".local")
# The emulator's JVM otherwise takes a quarter of RAM as heap (1.3-2.7 GB RSS measured).
FIRESTORE_JAVA_OPTIONS = "-Xmx1g -XX:+UseSerialGC -XX:TieredStopAtLevel=1"

PROCESS_ORDER = ("firestore", "pubsub", "issuer", "paynow", "tasks", "gateway", "scheduler")
# The run-notices topic (shared.adapters.notices) and a subscription on it to read them with.
NOTICES_TOPIC = "backfill-run-notices"
NOTICES_SUBSCRIPTION = "backfill-run-notices-local"
PUBSUB_JAVA_OPTIONS = "-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"
STOP_GRACE_SECONDS = 5.0
DEFAULT_SWEEP_SECONDS = 60.0
SWEEP_PATH = "/api/jobs/sweep"
# A firing waits for one in progress, and each has the stand-in's 60 s timeout (plus a token).
FIRE_TIMEOUT_SECONDS = 150.0


class StackError(RuntimeError):
    """The stack cannot be started or used; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Ports:
    """The stack's ports, all derived from one base."""

    base: int

    @property
    def firestore(self) -> int:
        return self.base + 1

    @property
    def tasks(self) -> int:
        return self.base + 2

    @property
    def tasks_admin(self) -> int:
        return self.base + 3

    @property
    def issuer(self) -> int:
        return self.base + 4

    @property
    def gateway(self) -> int:
        return self.base + 5

    @property
    def scheduler(self) -> int:
        return self.base + 6

    @property
    def paynow(self) -> int:
        return self.base + 7

    @property
    def pubsub(self) -> int:
        return self.base + 8

    def named(self) -> dict[str, int]:
        return {
            "firestore": self.firestore,
            "tasks (gRPC)": self.tasks,
            "tasks (admin)": self.tasks_admin,
            "issuer": self.issuer,
            "gateway": self.gateway,
            "scheduler": self.scheduler,
            "paynow": self.paynow,
            "pubsub": self.pubsub,
        }


def contract_env(port_base: int) -> dict[str, str]:
    """The environment of docs/local-stack-contract.md for a stack at ``port_base``."""
    ports = Ports(port_base)
    host = "127.0.0.1"
    issuer = f"http://{host}:{ports.issuer}"
    gateway = f"http://{host}:{ports.gateway}"
    return {
        "BACKFILL_ENV": "local",
        "BACKFILL_PROJECT_ID": PROJECT_ID,
        "GOOGLE_CLOUD_PROJECT": PROJECT_ID,
        "FIRESTORE_EMULATOR_HOST": f"{host}:{ports.firestore}",
        "PUBSUB_EMULATOR_HOST": f"{host}:{ports.pubsub}",
        "BACKFILL_NOTICES_TOPIC": NOTICES_TOPIC,
        "CLOUD_TASKS_EMULATOR_HOST": f"{host}:{ports.tasks}",
        "BACKFILL_TASKS_ADMIN_URL": f"http://{host}:{ports.tasks_admin}",
        "BACKFILL_ISSUER_URL": issuer,
        "BACKFILL_CERTS_URL": f"{issuer}/oauth2/v1/certs",
        "BACKFILL_ISSUERS": issuer,
        "BACKFILL_GATEWAY_URL": gateway,
        "BACKFILL_OPERATOR_AUDIENCES": gateway,
        "BACKFILL_CHUNK_URL": f"{gateway}/tasks/chunk",
        "BACKFILL_CHUNK_AUDIENCE": f"{gateway}/tasks/chunk",
        "BACKFILL_STATUS_URL": f"{gateway}/api/admin/dataMigrations",
        "BACKFILL_TASKS_LOCATION": LOCATION,
        "BACKFILL_TASKS_QUEUE": QUEUE_ID,
        "BACKFILL_OPERATORS": "ops@example.com",
        "BACKFILL_SCHEDULER_IDENTITY": f"scheduler@{PROJECT_ID}.iam.gserviceaccount.com",
        "BACKFILL_TASKS_IDENTITY": f"tasks@{PROJECT_ID}.iam.gserviceaccount.com",
        "BACKFILL_TASK_MAX_ATTEMPTS": str(TASK_MAX_ATTEMPTS),
        "BACKFILL_QUEUE_CONCURRENCY": str(QUEUE_CONCURRENCY),
        # Chunks of about 1,000 events (2 s of one chunk's page loop here, about 500 events/s:
        # make bench), so the sample data's busy day fans out over the queue's slots as a
        # production backlog's busy days do over theirs (production: 60 s x 200 events/s).
        "BACKFILL_CHUNK_GOAL_SECONDS": "2",
        "BACKFILL_CHUNK_EVENTS_PER_SECOND": "500",
        # A run waiting for another asks again every 2 s here (30 s in production).
        "BACKFILL_CHAIN_POLL_SECONDS": "2",
        # No ramp here: the emulator has no cold collection to warm (production: 500 writes/s,
        # half as many again every 5 minutes). A run's maxEventsPerSecond still holds.
        "BACKFILL_RAMP_START_WRITES": "0",
        "BACKFILL_SCHEDULER_ADMIN_URL": f"http://{host}:{ports.scheduler}",
        # The local PayNow Management API (emulators/paynow.py), started with this key and a
        # subscription of these ids; its admin API is under the same URL's /_emulator/.
        "BACKFILL_PAYNOW_API_URL": f"http://{host}:{ports.paynow}",
        "BACKFILL_PAYNOW_STORE_ID": paynow.LOCAL_STORE_ID,
        "BACKFILL_PAYNOW_WEBHOOK_ID": paynow.LOCAL_WEBHOOK_ID,
        "BACKFILL_PAYNOW_API_KEY": paynow.LOCAL_API_KEY,
    }


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


# --- processes --------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def _start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    # Field 22 of stat (starttime) is index 19 after the command name; zombies do not count.
    if stat is None or stat[0] == "Z":
        return None
    return int(stat[19])


def _group_members(pgid: int, not_before: int) -> list[int]:
    """Live processes in process group ``pgid`` that started at or after tick ``not_before``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is None or stat[0] == "Z":
            continue
        if int(stat[2]) == pgid and int(stat[19]) >= not_before:
            members.append(int(entry.name))
    return members


@dataclasses.dataclass
class ProcessRecord:
    """One started process: enough to find it again and to prove it is still ours."""

    name: str
    pid: int
    start_ticks: int
    log: str
    command: list[str]

    def members(self) -> list[int]:
        # Each process was started as the leader of its own session and group (pgid == pid).
        return _group_members(self.pid, self.start_ticks)

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks

    def stop(
        self, grace: float = STOP_GRACE_SECONDS, child: subprocess.Popen[bytes] | None = None
    ) -> None:
        """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL what is left.

        ``child`` is the Popen when this process started it, so that it is reaped (a zombie
        is already ignored by :meth:`members`; reaping only tidies the process table).
        """
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            members = self.members()
            if not members:
                return
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if child is not None:
                    child.poll()
                if not self.members():
                    return
                time.sleep(0.05)
        if self.members():
            raise StackError(f"could not stop {self.name} (pids {self.members()})")


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- the stack --------------------------------------------------------------------------------


def queue_spec(name: str, max_attempts: int, max_concurrent: int) -> Any:
    """A queue as the local stack makes them: quick backoff, production's retry semantics."""
    from google.cloud import tasks_v2

    return tasks_v2.Queue(
        name=name,
        retry_config=tasks_v2.RetryConfig(
            max_attempts=max_attempts,
            min_backoff=dt.timedelta(seconds=0.2),
            max_backoff=dt.timedelta(seconds=4),
            max_doublings=4,
        ),
        rate_limits=tasks_v2.RateLimits(max_concurrent_dispatches=max_concurrent),
    )


class Stack:
    """The local stack of one state dir. ``up()``/``down()`` are idempotent.

    ``overrides`` are extra environment variables for the gateway; they also go to ``stack.env``.
    ``app_python`` runs the issuer, the gateway and the scheduler stand-in (default: this
    interpreter); ``tasks_venv`` defaults to ``<state_dir>/tasks-venv``; ``with_gateway=False``
    starts everything but the gateway and the scheduler stand-in. ``sweep_seconds`` is the
    stand-in's period (0: it fires only on :meth:`fire_sweep`); ``up`` on a stack already up
    with another period sets this one through the stand-in's admin API.
    """

    def __init__(
        self,
        state_dir: Path,
        port_base: int = DEFAULT_PORT_BASE,
        overrides: Mapping[str, str] | None = None,
        *,
        app_python: str | None = None,
        with_gateway: bool = True,
        tasks_venv: Path | None = None,
        sweep_seconds: float = DEFAULT_SWEEP_SECONDS,
    ) -> None:
        _check_period(sweep_seconds)
        self.state_dir = Path(state_dir).resolve()
        self.ports = Ports(port_base)
        self.overrides = dict(overrides or {})
        self.app_python = app_python or sys.executable
        self.with_gateway = with_gateway
        self.logs_dir = self.state_dir / "logs"
        self.state_file = self.state_dir / "stack.json"
        self.env_file = self.state_dir / "stack.env"
        # Several state dirs (e.g. the dev stack and the test stack) may share one tasks venv.
        self.tasks_venv = (
            Path(tasks_venv).resolve() if tasks_venv else self.state_dir / "tasks-venv"
        )
        self.sweep_seconds = float(sweep_seconds)
        self._records: dict[str, ProcessRecord] = {}
        self._recorded: dict[str, Any] = {}
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        # The period the running scheduler stand-in was given, as stack.json records it.
        self._scheduler_period: float | None = None

    # --- public API ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The contract environment for this stack, with the overrides applied."""
        return {**contract_env(self.ports.base), **self.overrides}

    def up(self) -> None:
        """Start the whole stack, or return at once if this state dir's stack is up and healthy.

        Raises :class:`StackError` (after stopping whatever it started) when a prerequisite is
        missing, a port is taken or a process does not become ready.
        """
        self._load()
        if self._records:
            recorded_base = self._recorded_port_base()
            if self.healthy() and recorded_base == self.ports.base:
                logger.info(
                    "stack in %s is already up (port base %d)", self.state_dir, self.ports.base
                )
                if "paynow" not in self._records:  # a stack started before PayNow was in it
                    self._start_paynow()
                if "pubsub" not in self._records:  # ... or before Pub/Sub was
                    self._start_pubsub()
                    self._await_ready("pubsub", timeout=90)
                    self._create_topic()
                gateway_up = "gateway" in self._records
                if self.with_gateway and (
                    not gateway_up or self._recorded_overrides() != self.overrides
                ):
                    self.restart_gateway(self.overrides)
                else:
                    self._write_env_file()
                if self.with_gateway:
                    if "scheduler" not in self._records:
                        self._start_scheduler()
                    elif self.sweep_stats().get("periodSeconds") != self.sweep_seconds:
                        self.set_sweep_period(self.sweep_seconds)
                return
            logger.info("stack in %s is partly up or moved; stopping what is left", self.state_dir)
            self.down()
        self._check_prerequisites()
        self._check_ports()
        started = time.monotonic()
        try:
            self._ensure_tasks_venv()
            self._start_pubsub()  # its JVM starts while the others do; awaited below
            self._start_firestore()
            self._start_issuer()
            self._start_paynow()
            self._start_tasks()
            self._create_queue()
            self._await_ready("pubsub", timeout=90)
            self._create_topic()
            self._write_env_file()
            if self.with_gateway:
                self._start_gateway()
                self._start_scheduler()
        except BaseException:
            self.down()
            raise
        elapsed = time.monotonic() - started
        logger.info("stack up in %.1f s (port base %d)", elapsed, self.ports.base)

    def down(self) -> None:
        """Stop every process this state dir's ``up`` started, and nothing else."""
        self._load()
        for name in reversed(PROCESS_ORDER):
            record = self._records.get(name)
            if record is None:
                continue
            record.stop(child=self._children.pop(record.pid, None))
            logger.info("stopped %s", name)
            del self._records[name]
            self._save()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def healthy(self) -> bool:
        """True when every recorded process is alive and answers its readiness check."""
        return all(row["healthy"] for row in self.status()) and bool(self._records)

    def status(self) -> list[dict[str, Any]]:
        """One row per recorded process: name, pid, port, alive, healthy, log."""
        self._load()
        rows = []
        for name in PROCESS_ORDER:
            record = self._records.get(name)
            if record is None:
                continue
            url = self._health_urls(self._recorded_port_base())[name]
            alive = record.alive()
            rows.append(
                {
                    "name": name,
                    "pid": record.pid,
                    "url": url,
                    "alive": alive,
                    "healthy": alive and _http_status(url) == 200,
                    "log": record.log,
                }
            )
        return rows

    def restart_gateway(self, overrides: Mapping[str, str] | None = None) -> None:
        """Stop and start only the gateway, with ``overrides`` replacing the current ones."""
        self.stop_gateway()
        self.overrides = dict(overrides or {})
        self._write_env_file()
        self._start_gateway()

    def stop_gateway(self) -> None:
        """Stop only the gateway (an outage of every function); a no-op when it is not running.

        The rest of the stack keeps running: the scheduler stand-in's firings then fail and are
        counted in :meth:`sweep_stats` as ``failures``, and Cloud Tasks deliveries fail and back
        off until their attempts run out.
        """
        self._load()
        record = self._records.pop("gateway", None)
        if record is not None:
            record.stop(child=self._children.pop(record.pid, None))
            self._save()
            logger.info("stopped gateway")

    def start_gateway(self) -> None:
        """Start the gateway again with the current overrides; a no-op when it is running."""
        self._require_up()
        record = self._records.get("gateway")
        if record is not None:
            if record.alive():
                return
            record.stop(child=self._children.pop(record.pid, None))  # whatever it left behind
            del self._records["gateway"]
            self._save()
        self._write_env_file()
        self._start_gateway()

    def restart_tasks(self) -> None:
        """Stop the Cloud Tasks emulator, start it again and re-create the chunk queue as ``up``.

        Everything the emulator held is lost, as when a queue is lost in production: every
        queued task, the task names it remembered for dedup, queues made by tests, its counters
        and its faults. The chunk queue comes back empty, with the contract's settings.
        """
        self._require_up()
        record = self._records.pop("tasks", None)
        if record is not None:
            record.stop(child=self._children.pop(record.pid, None))
            self._save()
            logger.info("stopped tasks")
        self._start_tasks()
        self._create_queue()

    def sweep_stats(self) -> dict[str, Any]:
        """The scheduler stand-in's ``GET /stats``: periodSeconds, fired, lastStatus,
        lastFiredAt, statuses ({code: count}), failures, lastError."""
        return self._scheduler_admin("GET", "/stats")

    def set_sweep_period(self, seconds: float) -> dict[str, Any]:
        """Make the scheduler stand-in fire every ``seconds`` from now (0: only on demand);
        answer its stats."""
        _check_period(seconds)
        stats = self._scheduler_admin("POST", "/period", {"seconds": seconds})
        self.sweep_seconds = float(seconds)
        self._record_sweep_period(self.sweep_seconds)
        return stats

    def fire_sweep(self) -> int:
        """Fire the sweep once now (after any firing in progress); answer the HTTP status.

        Raises :class:`StackError` when the firing got no answer (gateway down, say); the
        stand-in counts it in ``failures``.
        """
        answer = self._scheduler_admin("POST", "/fire", {}, timeout=FIRE_TIMEOUT_SECONDS)
        status = answer.get("status")
        if not isinstance(status, int):
            raise StackError(f"the sweep firing got no answer: {answer.get('error')}")
        return status

    def reset_paynow(self) -> dict[str, Any]:
        """Empty the local PayNow API: every seeded item and order dropped, counters, knobs and
        the API key (``BACKFILL_PAYNOW_API_KEY``) back to the start."""
        try:
            return paynow.reset(f"http://127.0.0.1:{self.ports.paynow}")
        except paynow.PayNowEmulatorError as exc:
            raise StackError(str(exc)) from exc

    def reset_firestore(self) -> None:
        """Delete every document in the emulator's default database."""
        url = (
            f"http://127.0.0.1:{self.ports.firestore}/emulator/v1/projects/{PROJECT_ID}"
            "/databases/(default)/documents"
        )
        request = urllib.request.Request(url, method="DELETE")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=30) as response:
            response.read()

    def tasks_stats(self) -> dict[str, Any]:
        """The Cloud Tasks emulator's ``GET /stats`` counters."""
        return self._admin("GET", "/stats")

    def set_faults(self, duplicate_delivery: bool) -> None:
        """Turn the Cloud Tasks emulator's duplicate-delivery fault on or off."""
        self._admin("POST", "/faults", {"duplicateDelivery": duplicate_delivery})

    def wait_idle(self, timeout: float = 60.0, stable_for: float = 0.3) -> dict[str, Any]:
        """Wait until no task is due or in flight for ``stable_for`` seconds; answer /stats.

        Idle means ``queued - scheduled == 0`` and ``inFlight == 0``. ``scheduled`` counts the
        waiting tasks due more than 10 s from now: the stack's queues back off 4 s at most, so
        those are tasks deliberately created with a later ``schedule_time`` (a run's watchdog,
        which re-arms itself every 900 s by default), and waiting for them would mean waiting
        for their schedule. Such a task counts again, and is waited for, once it is due within
        10 s; so keep test schedules either well above 10 s or short enough to wait out.

        The stable period covers a handler that enqueues its follow-up just after answering.
        Raises ``TimeoutError`` with the last counters when ``timeout`` passes first.
        """
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        while True:
            stats = self.tasks_stats()
            now = time.monotonic()
            # .get: a stack left up from before the counter existed still answers without it.
            due = stats["queued"] - stats.get("scheduled", 0)
            if due == 0 and stats["inFlight"] == 0:
                idle_since = idle_since if idle_since is not None else now
                if now - idle_since >= stable_for:
                    return stats
            else:
                idle_since = None
            if now > deadline:
                raise TimeoutError(f"Cloud Tasks emulator still busy after {timeout} s: {stats}")
            time.sleep(0.05)

    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.down()

    # --- state file ---------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            self._records, self._recorded = {}, {}
            self._scheduler_period = None
            return
        except ValueError as exc:
            raise StackError(f"{self.state_file} is unreadable ({exc}); remove it") from exc
        self._recorded = {k: v for k, v in data.items() if k != "processes"}
        period = self._recorded.get("sweep_seconds")
        self._scheduler_period = float(period) if isinstance(period, int | float) else None
        self._records = {
            name: ProcessRecord(**fields) for name, fields in data.get("processes", {}).items()
        }

    def _save(self) -> None:
        data = {
            "port_base": self.ports.base,
            "overrides": self.overrides,
            "sweep_seconds": self._scheduler_period,
            "processes": {name: dataclasses.asdict(r) for name, r in self._records.items()},
        }
        self._write_state(data)

    def _write_state(self, data: Mapping[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    def _record_sweep_period(self, seconds: float) -> None:
        """Record the stand-in's period in stack.json, leaving everything else as recorded."""
        self._load()
        self._scheduler_period = seconds
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return
        data["sweep_seconds"] = seconds
        self._write_state(data)

    def _require_up(self) -> None:
        self._load()
        if not self._records:
            raise StackError(f"no stack is up in {self.state_dir}; run `up` first")

    def _recorded_port_base(self) -> int | None:
        base = self._recorded.get("port_base")
        return base if isinstance(base, int) else None

    def _recorded_overrides(self) -> dict[str, str]:
        overrides = self._recorded.get("overrides")
        return dict(overrides) if isinstance(overrides, dict) else {}

    def _write_env_file(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"export {key}={_shell_quote(value)}" for key, value in self.env().items()]
        self.env_file.write_text("\n".join(lines) + "\n")

    # --- prerequisites ------------------------------------------------------------------------

    def _check_prerequisites(self) -> None:
        problems = []
        if shutil.which("java") is None:
            problems.append(
                "java is not on PATH; the Firestore emulator needs Java 11+ "
                "(e.g. apt-get install openjdk-17-jre-headless)"
            )
        if self._sdk_file("pubsub-emulator", "bin", "cloud-pubsub-emulator") is None:
            problems.append(
                "the Pub/Sub emulator is not installed: run "
                "`gcloud components install pubsub-emulator`, or on Debian/Ubuntu "
                "`apt-get install google-cloud-cli-pubsub-emulator`"
            )
        if self._firestore_emulator() is None:
            problems.append(
                "the Firestore emulator is not installed: run "
                "`gcloud components install cloud-firestore-emulator`, or on Debian/Ubuntu "
                "`apt-get install google-cloud-cli-firestore-emulator`"
            )
        if not REQUIREMENTS_TASKS.is_file():
            problems.append(f"{REQUIREMENTS_TASKS} is missing")
        if problems:
            raise StackError("cannot start the local stack:\n  - " + "\n  - ".join(problems))

    def _firestore_emulator(self) -> Path | None:
        return self._sdk_file("cloud-firestore-emulator", "cloud_firestore_emulator")

    @functools.cache  # noqa: B019 (one stack object, a few calls; `gcloud info` is slow)
    def _sdk_file(self, component: str, *parts: str) -> Path | None:
        """A file of a Cloud SDK component (``platform/<component>/...``), if installed."""
        candidates: list[Path] = []
        if shutil.which("gcloud"):
            try:
                root = subprocess.run(
                    ["gcloud", "info", "--format=value(installation.sdk_root)"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                ).stdout.strip()
            except (subprocess.SubprocessError, OSError):
                root = ""
            if root:
                candidates.append(Path(root))
        candidates += [Path("/usr/lib/google-cloud-sdk"), Path.home() / "google-cloud-sdk"]
        for sdk_root in candidates:
            found = sdk_root.joinpath("platform", component, *parts)
            if found.is_file():
                return found
        return None

    def _check_ports(self) -> None:
        taken = [
            f"{name} {port}" for name, port in self.ports.named().items() if not _port_is_free(port)
        ]
        if not self.with_gateway:
            for unused in (f"gateway {self.ports.gateway}", f"scheduler {self.ports.scheduler}"):
                if unused in taken:
                    taken.remove(unused)
        if taken:
            raise StackError(
                f"ports in use on 127.0.0.1: {', '.join(taken)}; stop what holds them or pick "
                "another --port-base"
            )

    # --- the tasks venv -----------------------------------------------------------------------

    def _ensure_tasks_venv(self) -> None:
        """Create ``tasks-venv`` from requirements-tasks.txt unless its stamp matches."""
        wanted = hashlib.sha256(REQUIREMENTS_TASKS.read_bytes() + sys.version.encode()).hexdigest()
        stamp = self.tasks_venv / ".requirements.sha256"
        python = self.tasks_venv / "bin" / "python"
        if python.is_file() and stamp.is_file() and stamp.read_text().strip() == wanted:
            return
        logger.info("creating %s (one minute or so, once)", self.tasks_venv)
        shutil.rmtree(self.tasks_venv, ignore_errors=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = self.logs_dir / "tasks-venv.log"
        with log.open("w") as out:
            for command in (
                [sys.executable, "-m", "venv", str(self.tasks_venv)],
                [str(python), "-m", "pip", "install", "--no-input", "-r", str(REQUIREMENTS_TASKS)],
            ):
                result = subprocess.run(
                    command,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
                if result.returncode != 0:
                    raise StackError(
                        f"creating the tasks venv failed ({' '.join(command[:4])} ...); "
                        f"see {log}:\n{_tail(log)}"
                    )
        stamp.write_text(wanted + "\n")

    # --- starting processes -------------------------------------------------------------------

    def _health_urls(self, port_base: int | None = None) -> dict[str, str]:
        ports = Ports(port_base) if port_base is not None else self.ports
        host = "http://127.0.0.1"
        return {
            "firestore": f"{host}:{ports.firestore}/",
            "issuer": f"{host}:{ports.issuer}/",
            "tasks": f"{host}:{ports.tasks_admin}/",
            "gateway": f"{host}:{ports.gateway}/healthz",
            "scheduler": f"{host}:{ports.scheduler}/",
            "paynow": f"{host}:{ports.paynow}/",
            "pubsub": f"{host}:{ports.pubsub}/",
        }

    def _spawn(
        self,
        name: str,
        command: list[str],
        extra_env: Mapping[str, str],
        timeout: float,
        wait: bool = True,
    ) -> None:
        """Start ``command`` in its own session, record it, and (``wait``) wait until its
        health URL is 200."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = self.logs_dir / f"{name}.log"
        env = {**os.environ, **extra_env, "PYTHONUNBUFFERED": "1"}
        # Everything the stack talks to is on loopback: an inherited proxy must not intercept it.
        env["NO_PROXY"] = ",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1", "localhost"]))
        env["no_proxy"] = env["NO_PROXY"]
        with log.open("a") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n")
            out.flush()
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: down() stops its children too
            )
        ticks = _start_ticks(process.pid)
        if ticks is None:
            raise StackError(f"{name} exited at once; see {log}:\n{_tail(log)}")
        self._children[process.pid] = process
        self._records[name] = ProcessRecord(name, process.pid, ticks, str(log), command)
        self._save()
        if wait:
            self._await_ready(name, timeout)

    def _await_ready(self, name: str, timeout: float) -> None:
        """Wait until the process ``name`` started answers its health URL."""
        record = self._records[name]
        process = self._children[record.pid]
        log = Path(record.log)
        url = self._health_urls()[name]
        deadline = time.monotonic() + timeout
        while _http_status(url) != 200:
            if process.poll() is not None:
                raise StackError(
                    f"{name} exited with status {process.returncode}; see {log}:\n{_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise StackError(f"{name} not ready at {url} after {timeout} s; see {log}")
            time.sleep(0.1)
        logger.info("%s ready (pid %d)", name, process.pid)

    def _start_firestore(self) -> None:
        wrapper = self._firestore_emulator()
        assert wrapper is not None  # checked by _check_prerequisites
        java_options = " ".join(
            filter(None, [os.environ.get("JAVA_TOOL_OPTIONS"), FIRESTORE_JAVA_OPTIONS])
        )
        self._spawn(
            "firestore",
            [str(wrapper), "--host=127.0.0.1", f"--port={self.ports.firestore}"],
            {"JAVA_TOOL_OPTIONS": java_options},
            timeout=60,
        )

    def _start_pubsub(self) -> None:
        emulator = self._sdk_file("pubsub-emulator", "bin", "cloud-pubsub-emulator")
        assert emulator is not None  # checked by _check_prerequisites
        java_options = " ".join(
            filter(None, [os.environ.get("JAVA_TOOL_OPTIONS"), PUBSUB_JAVA_OPTIONS])
        )
        self._spawn(
            "pubsub",
            [str(emulator), "--host=127.0.0.1", f"--port={self.ports.pubsub}"],
            {"JAVA_TOOL_OPTIONS": java_options},
            timeout=90,
            wait=False,
        )

    def _create_topic(self) -> None:
        """The run-notices topic and the local pull subscription, over the emulator's REST."""
        base = f"http://127.0.0.1:{self.ports.pubsub}/v1/projects/{PROJECT_ID}"
        topic = f"projects/{PROJECT_ID}/topics/{NOTICES_TOPIC}"
        for path, body in ((f"topics/{NOTICES_TOPIC}", {}),
                           (f"subscriptions/{NOTICES_SUBSCRIPTION}", {"topic": topic})):
            request = urllib.request.Request(  # noqa: S310 (http on loopback)
                f"{base}/{path}", data=json.dumps(body).encode(), method="PUT",
                headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10):  # noqa: S310 (loopback)
                    pass
            except urllib.error.HTTPError as error:
                if error.code != 409:  # 409: it exists (a stack that was up)
                    raise StackError(f"could not create {path} on the Pub/Sub emulator: "
                                     f"{error.code}") from error

    def _start_issuer(self) -> None:
        self._spawn(
            "issuer",
            [
                self.app_python,
                "-m",
                "emulators.issuer",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ports.issuer),
                "--state-dir",
                str(self.state_dir),
            ],
            {},
            timeout=20,
        )

    def _start_paynow(self) -> None:
        """The local PayNow Management API, with the contract's key, store and subscription."""
        contract = contract_env(self.ports.base)
        self._spawn(
            "paynow",
            [
                self.app_python,
                "-m",
                "emulators.paynow",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ports.paynow),
                "--state-dir",
                str(self.state_dir),
                "--api-key",
                contract["BACKFILL_PAYNOW_API_KEY"],
                "--store-id",
                contract["BACKFILL_PAYNOW_STORE_ID"],
                "--webhook-id",
                contract["BACKFILL_PAYNOW_WEBHOOK_ID"],
            ],
            {},
            timeout=20,
        )

    def _start_tasks(self) -> None:
        self._spawn(
            "tasks",
            [
                str(self.tasks_venv / "bin" / "python"),
                str(TASKS_EMULATOR),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ports.tasks),
                "--admin-port",
                str(self.ports.tasks_admin),
                "--issuer-url",
                f"http://127.0.0.1:{self.ports.issuer}",
                "--default-project",
                PROJECT_ID,
                "--default-location",
                LOCATION,
            ],
            {},
            timeout=30,
        )

    def _start_gateway(self) -> None:
        self._spawn(
            "gateway",
            [
                self.app_python,
                "-m",
                "emulators.gateway",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ports.gateway),
            ],
            self.env(),
            timeout=30,
        )

    def _start_scheduler(self) -> None:
        """The Cloud Scheduler stand-in, sending what the sweep job of infra/scheduler.tf sends.

        Its identity and audience come from the contract, not from the gateway's overrides:
        they are the production job's configuration, which a test's overrides do not change.
        """
        contract = contract_env(self.ports.base)
        self._scheduler_period = self.sweep_seconds
        self._spawn(
            "scheduler",
            [
                self.app_python,
                "-m",
                "emulators.scheduler",
                "--host",
                "127.0.0.1",
                "--admin-port",
                str(self.ports.scheduler),
                "--target",
                contract["BACKFILL_GATEWAY_URL"] + SWEEP_PATH,
                "--issuer-url",
                contract["BACKFILL_ISSUER_URL"],
                "--identity",
                contract["BACKFILL_SCHEDULER_IDENTITY"],
                "--audience",
                contract["BACKFILL_OPERATOR_AUDIENCES"].split(",")[0].strip(),
                "--period",
                repr(self.sweep_seconds),
            ],
            {},
            timeout=20,
        )

    def _create_queue(self) -> None:
        """Create the chunk queue as the contract says, through the real client."""
        import grpc
        from google.api_core import exceptions
        from google.cloud import tasks_v2
        from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

        max_attempts = int(self.env().get("BACKFILL_TASK_MAX_ATTEMPTS", TASK_MAX_ATTEMPTS))
        channel = grpc.insecure_channel(f"127.0.0.1:{self.ports.tasks}")
        try:
            client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
            parent = f"projects/{PROJECT_ID}/locations/{LOCATION}"
            queue = queue_spec(f"{parent}/queues/{QUEUE_ID}", max_attempts, QUEUE_CONCURRENCY)
            try:
                client.create_queue(parent=parent, queue=queue, timeout=10)
            except exceptions.AlreadyExists:
                client.update_queue(queue=queue, timeout=10)
        finally:
            channel.close()

    def _admin(self, method: str, path: str, body: object | None = None) -> dict[str, Any]:
        return _admin_call(
            "Cloud Tasks emulator", self.ports.tasks_admin, method, path, body, timeout=5
        )

    def _scheduler_admin(
        self, method: str, path: str, body: object | None = None, timeout: float = 5
    ) -> dict[str, Any]:
        return _admin_call(
            "scheduler stand-in", self.ports.scheduler, method, path, body, timeout=timeout
        )


def _check_period(seconds: float) -> None:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"the sweep period must be a number of seconds >= 0, got {seconds!r}")


def _admin_call(
    what: str, port: int, method: str, path: str, body: object | None, timeout: float
) -> dict[str, Any]:
    """One JSON request to an admin API on 127.0.0.1 (no proxy); answers the JSON object."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method=method,
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            result = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise StackError(f"{what} admin API answered HTTP {exc.code} to {method} {path}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise StackError(f"{what} admin API unreachable: {exc}") from exc
    if not isinstance(result, dict):
        raise StackError(f"{what} admin API answered a non-object")
    return result


# --- CLI --------------------------------------------------------------------------------------


def _parse_env(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env expects KEY=VALUE, got {pair!r}")
        overrides[key] = value
    return overrides


def _print_status(stack: Stack) -> bool:
    rows = stack.status()
    if not rows:
        print(f"no stack recorded in {stack.state_dir}")
        return False
    for row in rows:
        state = "healthy" if row["healthy"] else ("alive, not ready" if row["alive"] else "dead")
        print(f"{row['name']:<10} pid {row['pid']:<8} {state:<17} {row['url']}  log {row['log']}")
    return all(row["healthy"] for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.stack", description=__doc__.split("\n", 1)[0] if __doc__ else None
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the stack (or report that it is up)")
    up.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE)
    up.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateway (repeatable)",
    )
    up.add_argument(
        "--without-gateway",
        action="store_true",
        help="start the emulators and the issuer only (no gateway, no scheduler stand-in)",
    )
    up.add_argument(
        "--sweep-seconds",
        type=float,
        default=DEFAULT_SWEEP_SECONDS,
        help="period of the scheduler stand-in's sweep firings (0: only on demand)",
    )
    down = commands.add_parser("down", help="stop what this state dir's `up` started")
    status = commands.add_parser("status", help="show the processes and their health")
    for sub in (up, down, status):
        sub.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    if args.command == "up" and not (
        math.isfinite(args.sweep_seconds) and args.sweep_seconds >= 0
    ):
        parser.error("--sweep-seconds must be a number >= 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        if args.command == "up":
            stack = Stack(
                args.state_dir,
                args.port_base,
                _parse_env(args.env),
                with_gateway=not args.without_gateway,
                sweep_seconds=args.sweep_seconds,
            )
            stack.up()
            _print_status(stack)
            print(f"environment: source {stack.env_file}")
            return 0
        stack = Stack(args.state_dir)
        if args.command == "down":
            stack.down()
            return 0
        return 0 if _print_status(stack) else 1
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
