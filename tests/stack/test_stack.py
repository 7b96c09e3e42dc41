"""The local stack behaves like production where the bundle relies on it.

Real processes: the Firestore emulator, the Cloud Tasks emulator and the issuer, started by
``emulators.stack.Stack`` (without the gateway) on port base 9300. Tasks go to a tiny HTTP
target served by this module. Every test uses its own queue so that counters do not mix.
The scheduler stand-in is tested in-process against that target, then, at the end of the module
(``full_stack``), the same stack gets its gateway and stand-in for the outage helpers.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.auth.transport.requests import Request
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.oauth2 import id_token

from emulators.issuer import Issuer, SigningKey, mint_token
from emulators.stack import QUEUE_ID, REPO_ROOT, Stack, queue_spec

pytestmark = pytest.mark.emulator

PORT_BASE = int(os.environ.get("BACKFILL_STACK_TEST_PORT_BASE", "9300"))
PARENT = "projects/demo-backfill/locations/us-central1"
TASKS_SA = "tasks@demo-backfill.iam.gserviceaccount.com"


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float


class Target:
    """An HTTP task target: ``/ok``, ``/fail`` (500) and ``/sleep/<seconds>``, per test prefix."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.active: dict[str, int] = {}
        self.max_active: dict[str, int] = {}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                prefix = self.path.split("/")[1]
                with target._lock:
                    target.deliveries.append(
                        Delivery(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.monotonic(),
                        )
                    )
                    active = target.active[prefix] = target.active.get(prefix, 0) + 1
                    target.max_active[prefix] = max(target.max_active.get(prefix, 0), active)
                try:
                    status = 500 if self.path.endswith("/fail") else 200
                    if "/sleep/" in self.path:
                        time.sleep(float(self.path.rsplit("/", 1)[1]))
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the emulator gave up on this attempt (dispatch deadline)
                finally:
                    with target._lock:
                        target.active[prefix] -= 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def for_prefix(self, prefix: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.path.startswith(f"/{prefix}/")]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    state_dir = REPO_ROOT / ".local" / "stack-tests"
    # Share the dev stack's tasks venv when it exists: building one takes ~15 s.
    shared_venv = REPO_ROOT / ".local" / "tasks-venv"
    with Stack(
        state_dir,
        PORT_BASE,
        with_gateway=False,
        tasks_venv=shared_venv if shared_venv.is_dir() else None,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    served = Target()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[tasks_v2.CloudTasksClient]:
    channel = grpc.insecure_channel(stack.env()["CLOUD_TASKS_EMULATOR_HOST"])
    yield tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    channel.close()


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


def make_queue(
    client: tasks_v2.CloudTasksClient,
    queue_id: str,
    max_attempts: int = 3,
    max_concurrent: int = 4,
) -> str:
    queue = client.create_queue(
        parent=PARENT,
        queue=queue_spec(f"{PARENT}/queues/{queue_id}", max_attempts, max_concurrent),
    )
    return str(queue.name)


def http_task(
    queue: str,
    task_id: str,
    url: str,
    *,
    audience: str = "",
    deadline: float | None = None,
    schedule_in: float | None = None,
) -> tasks_v2.Task:
    task = tasks_v2.Task(
        name=f"{queue}/tasks/{task_id}",
        http_request=tasks_v2.HttpRequest(
            url=url,
            http_method=tasks_v2.HttpMethod.POST,
            headers={"Content-Type": "application/json", "X-Chunk": task_id},
            body=json.dumps({"chunk": task_id}).encode(),
            oidc_token=tasks_v2.OidcToken(service_account_email=TASKS_SA, audience=audience),
        ),
    )
    if deadline is not None:
        task.dispatch_deadline = dt.timedelta(seconds=deadline)
    if schedule_in is not None:
        task.schedule_time = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=schedule_in)
    return task


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def verify(stack: Stack, token: str, audience: str) -> dict[str, Any]:
    claims = id_token.verify_token(
        token, Request(), audience=audience, certs_url=stack.env()["BACKFILL_CERTS_URL"]
    )
    return dict(claims)


# --- issuer -----------------------------------------------------------------------------------


def test_issuer_tokens_verify_with_google_auth(stack: Stack) -> None:
    issuer_url = stack.env()["BACKFILL_ISSUER_URL"]

    token = mint_token(issuer_url, "ops@example.com", "http://127.0.0.1/aud")

    claims = verify(stack, token, "http://127.0.0.1/aud")
    assert claims["iss"] == issuer_url
    assert claims["email"] == "ops@example.com"
    assert claims["email_verified"] is True
    assert claims["exp"] - claims["iat"] == 3600


def test_issuer_tokens_fail_on_tampering_foreign_keys_and_wrong_audience(stack: Stack) -> None:
    issuer_url = stack.env()["BACKFILL_ISSUER_URL"]
    token = mint_token(issuer_url, "ops@example.com", "aud")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["email"] = "attacker@example.com"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    tampered = f"{header}.{forged_payload}.{signature}"
    own_kid = next(iter(json.loads(_get(stack.env()["BACKFILL_CERTS_URL"]))))
    foreign_key = SigningKey.generate()
    same_kid_key = SigningKey(own_kid, foreign_key.private_key_pem, foreign_key.certificate_pem)

    for bad_token, audience in [
        (tampered, "aud"),
        (Issuer(issuer_url, foreign_key).mint("ops@example.com", "aud"), "aud"),
        (Issuer(issuer_url, same_kid_key).mint("ops@example.com", "aud"), "aud"),
        (token, "another-audience"),
    ]:
        with pytest.raises(ValueError):
            verify(stack, bad_token, audience)


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


# --- Cloud Tasks emulator -------------------------------------------------------------------


def test_stack_creates_the_chunk_queue_from_the_contract(
    stack: Stack, client: tasks_v2.CloudTasksClient
) -> None:
    queue = client.get_queue(name=f"{PARENT}/queues/{QUEUE_ID}")

    assert queue.retry_config.max_attempts == int(stack.env()["BACKFILL_TASK_MAX_ATTEMPTS"])
    assert queue.retry_config.min_backoff == dt.timedelta(seconds=0.2)
    assert queue.retry_config.max_backoff == dt.timedelta(seconds=4)
    assert queue.retry_config.max_doublings == 4
    assert queue.rate_limits.max_concurrent_dispatches == 4
    assert "export BACKFILL_TASKS_QUEUE='backfill-chunks'" in stack.env_file.read_text()


def test_task_names_are_deduplicated_like_production(
    stack: Stack, client: tasks_v2.CloudTasksClient, target: Target, prefix: str
) -> None:
    queue = make_queue(client, prefix)
    task = http_task(queue, "chunk-1", f"{target.url}/{prefix}/ok")
    before = stack.tasks_stats()["deduplicated"]

    client.create_task(parent=queue, task=task)
    with pytest.raises(exceptions.AlreadyExists):
        client.create_task(parent=queue, task=task)  # still pending or running
    stack.wait_idle(10)
    with pytest.raises(exceptions.AlreadyExists):
        client.create_task(parent=queue, task=task)  # already executed

    assert len(target.for_prefix(prefix)) == 1
    assert stack.tasks_stats()["deduplicated"] == before + 2


def test_tasks_carry_a_verifiable_oidc_token_and_production_headers(
    stack: Stack, client: tasks_v2.CloudTasksClient, target: Target, prefix: str
) -> None:
    queue = make_queue(client, prefix)
    url = f"{target.url}/{prefix}/ok"

    client.create_task(parent=queue, task=http_task(queue, "default-aud", url))
    client.create_task(
        parent=queue, task=http_task(queue, "explicit-aud", url, audience="https://chunk.example")
    )
    stack.wait_idle(10)

    by_name = {d.headers["x-cloudtasks-taskname"]: d for d in target.for_prefix(prefix)}
    assert set(by_name) == {"default-aud", "explicit-aud"}
    for name, audience in [("default-aud", url), ("explicit-aud", "https://chunk.example")]:
        delivery = by_name[name]
        scheme, token = delivery.headers["authorization"].split(" ", 1)
        claims = verify(stack, token, audience)
        assert scheme == "Bearer"
        assert claims["email"] == TASKS_SA
        assert claims["email_verified"] is True
        assert delivery.headers["x-cloudtasks-queuename"] == prefix
        assert delivery.headers["x-cloudtasks-taskretrycount"] == "0"
        assert delivery.headers["x-cloudtasks-taskexecutioncount"] == "0"
        assert delivery.headers["x-chunk"] == name
        assert delivery.headers["content-type"] == "application/json"
        assert json.loads(delivery.body) == {"chunk": name}


def test_failing_tasks_back_off_and_stop_after_max_attempts(
    stack: Stack, client: tasks_v2.CloudTasksClient, target: Target, prefix: str
) -> None:
    queue = make_queue(client, prefix, max_attempts=4)
    before = stack.tasks_stats()

    client.create_task(parent=queue, task=http_task(queue, "doomed", f"{target.url}/{prefix}/fail"))
    stack.wait_idle(15)

    deliveries = target.for_prefix(prefix)
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(deliveries)]
    after = stack.tasks_stats()
    assert [d.headers["x-cloudtasks-taskretrycount"] for d in deliveries] == ["0", "1", "2", "3"]
    # min_backoff 0.2 s doubling: 0.2, 0.4, 0.8 (a little scheduling slack either way).
    for gap, expected in zip(gaps, [0.2, 0.4, 0.8], strict=True):
        assert expected * 0.9 <= gap <= expected + 0.5
    assert after["droppedForGood"] == before["droppedForGood"] + 1
    assert after["retried"] == before["retried"] + 3


def test_dispatch_is_concurrent_up_to_the_queue_limit_and_survives_a_hung_handler(
    stack: Stack, client: tasks_v2.CloudTasksClient, target: Target, prefix: str
) -> None:
    queue = make_queue(client, prefix, max_attempts=1, max_concurrent=3)
    # The hung handler has its own path prefix: it keeps sleeping after the emulator gives up.
    hung = http_task(queue, "hung", f"{target.url}/{prefix}h/sleep/3", deadline=0.5)
    started = time.monotonic()

    client.create_task(parent=queue, task=hung)
    for index in range(6):
        task = http_task(queue, f"slow-{index}", f"{target.url}/{prefix}/sleep/0.4")
        client.create_task(parent=queue, task=task)
    wait_for(lambda: len(target.for_prefix(prefix)) == 6)
    stats = stack.wait_idle(10)
    elapsed = time.monotonic() - started

    assert len(target.for_prefix(prefix + "h")) == 1  # timed out once, max_attempts 1
    assert target.max_active[prefix] == 3
    # Serially this takes 2.4 s plus the hung handler; three at a time it takes about 1.3 s.
    assert elapsed < 2.4
    assert stats["queues"][prefix] == {"queued": 0, "scheduled": 0, "inFlight": 0}


def test_schedule_time_is_honoured(
    stack: Stack, client: tasks_v2.CloudTasksClient, target: Target, prefix: str
) -> None:
    queue = make_queue(client, prefix)
    created = time.monotonic()

    client.create_task(
        parent=queue, task=http_task(queue, "later", f"{target.url}/{prefix}/ok", schedule_in=1.0)
    )
    stack.wait_idle(10)

    [delivery] = target.for_prefix(prefix)
    assert delivery.received_at - created >= 0.9


def test_wait_idle_passes_over_tasks_scheduled_far_ahead_but_waits_for_due_ones(
    stack: Stack, client: tasks_v2.CloudTasksClient, target: Target, prefix: str
) -> None:
    queue = make_queue(client, prefix)
    # Like a run's watchdog: created with a schedule_time well beyond the 10 s rule.
    watchdog = http_task(queue, "watchdog", f"{target.url}/{prefix}/ok", schedule_in=60)
    due_now = http_task(queue, "due-now", f"{target.url}/{prefix}/sleep/1")

    client.create_task(parent=queue, task=watchdog)
    try:
        with_watchdog_only = stack.tasks_stats()["queues"][prefix]
        started = time.monotonic()
        stack.wait_idle(5)
        waited_for_watchdog = time.monotonic() - started
        client.create_task(parent=queue, task=due_now)
        started = time.monotonic()
        stats = stack.wait_idle(10)
        waited_for_due_task = time.monotonic() - started
    finally:
        client.delete_task(name=watchdog.name)

    assert with_watchdog_only == {"queued": 1, "scheduled": 1, "inFlight": 0}
    assert waited_for_watchdog < 2
    assert waited_for_due_task >= 0.9  # the due task's handler sleeps 1 s
    assert [d.headers["x-cloudtasks-taskname"] for d in target.for_prefix(prefix)] == ["due-now"]
    assert stats["queues"][prefix] == {"queued": 1, "scheduled": 1, "inFlight": 0}
    assert stats["queued"] - stats["scheduled"] == 0


def test_duplicate_delivery_fault_delivers_each_successful_task_twice(
    stack: Stack, client: tasks_v2.CloudTasksClient, target: Target, prefix: str
) -> None:
    queue = make_queue(client, prefix)
    stack.set_faults(duplicate_delivery=True)
    try:
        client.create_task(
            parent=queue, task=http_task(queue, "twice", f"{target.url}/{prefix}/ok")
        )
        client.create_task(
            parent=queue, task=http_task(queue, "failing", f"{target.url}/{prefix}/fail")
        )
        stack.wait_idle(15)
    finally:
        stack.set_faults(duplicate_delivery=False)

    names = [d.headers["x-cloudtasks-taskname"] for d in target.for_prefix(prefix)]
    assert names.count("twice") == 2
    assert names.count("failing") == 3  # failures are retried, never duplicated


def test_reset_firestore_empties_the_database(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud import firestore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", stack.env()["FIRESTORE_EMULATOR_HOST"])
    db = firestore.Client(project="demo-backfill")
    db.collection("stackProbe").document("one").set({"ok": True})

    stack.reset_firestore()

    assert not db.collection("stackProbe").document("one").get().exists


def test_up_is_idempotent_and_refuses_taken_ports(stack: Stack, tmp_path: Path) -> None:
    started = time.monotonic()
    Stack(stack.state_dir, PORT_BASE, with_gateway=False, tasks_venv=stack.tasks_venv).up()
    assert time.monotonic() - started < 2

    other = Stack(tmp_path / "other", PORT_BASE, with_gateway=False)
    with pytest.raises(Exception, match="ports in use"):
        other.up()


# --- Cloud Scheduler stand-in ---------------------------------------------------------------


def _schedule_time(value: str) -> dt.datetime:
    assert value.endswith("Z")
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _gateway_up(stack: Stack) -> bool:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{stack.env()['BACKFILL_GATEWAY_URL']}/healthz", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def scheduler_for(stack: Stack) -> Iterator[Any]:
    """``scheduler_for(url, period)``: an in-process stand-in firing ``url``, stopped after."""
    from emulators.scheduler import Scheduler

    started: list[Scheduler] = []
    env = stack.env()

    def make(url: str, period: float = 0.0, issuer_url: str | None = None) -> Scheduler:
        scheduler = Scheduler(
            url,
            issuer_url or env["BACKFILL_ISSUER_URL"],
            env["BACKFILL_SCHEDULER_IDENTITY"],
            env["BACKFILL_GATEWAY_URL"],
            period,
            timeout=5,
        )
        scheduler.start()
        started.append(scheduler)
        return scheduler

    yield make
    for scheduler in started:
        scheduler.stop(wait=5)


def test_scheduler_fires_periodically_like_cloud_scheduler_with_a_verifiable_token(
    stack: Stack, target: Target, prefix: str, scheduler_for: Any
) -> None:
    env = stack.env()
    scheduler = scheduler_for(f"{target.url}/{prefix}/ok", 0.2)

    wait_for(lambda: len(target.for_prefix(prefix)) >= 3, timeout=5)
    # A firing is counted once its delivery is answered, a moment after the target saw it.
    wait_for(lambda: scheduler.stats()["fired"] >= 3, timeout=5)
    scheduler.set_period(0)
    deliveries = target.for_prefix(prefix)[:3]
    stats = scheduler.stats()

    times = [_schedule_time(d.headers["x-cloudscheduler-scheduletime"]) for d in deliveries]
    for delivery, scheduled in zip(deliveries, times, strict=True):
        scheme, token = delivery.headers["authorization"].split(" ", 1)
        claims = verify(stack, token, env["BACKFILL_GATEWAY_URL"])
        assert scheme == "Bearer"
        assert claims["email"] == env["BACKFILL_SCHEDULER_IDENTITY"]
        assert claims["email_verified"] is True
        assert claims["iss"] == env["BACKFILL_ISSUER_URL"]
        assert json.loads(delivery.body) == {}
        assert delivery.headers["content-type"] == "application/json"
        assert delivery.headers["user-agent"] == "Google-Cloud-Scheduler"
        assert delivery.headers["x-cloudscheduler"] == "true"
        assert delivery.headers["x-cloudscheduler-jobname"] == "backfill-sweep"
        assert scheduled.utcoffset() == dt.timedelta(0)
        assert abs((dt.datetime.now(dt.UTC) - scheduled).total_seconds()) < 5
    # On a 0.2 s grid: scheduled times are whole periods apart, whatever the firings took (a
    # firing that overran skips the grid points it missed).
    for earlier, later in itertools.pairwise(times):
        periods = (later - earlier).total_seconds() / 0.2
        assert round(periods) >= 1
        assert abs(periods - round(periods)) < 0.05
    assert stats["periodSeconds"] == 0
    assert stats["fired"] >= 3
    assert stats["statuses"] == {"200": stats["fired"]}
    assert stats["lastStatus"] == 200
    assert stats["failures"] == 0


def test_scheduler_firings_never_overlap_and_failures_are_counted_apart(
    stack: Stack, target: Target, prefix: str, scheduler_for: Any
) -> None:
    # Each firing takes 0.3 s against a 0.05 s period, and on-demand firings come in between.
    slow = scheduler_for(f"{target.url}/{prefix}/sleep/0.3", 0.05)
    on_demand = [threading.Thread(target=slow.fire) for _ in range(2)]
    for thread in on_demand:
        thread.start()
    time.sleep(1.0)
    slow.set_period(0)
    for thread in on_demand:
        thread.join(5)
    wait_for(lambda: target.active.get(prefix, 0) == 0, timeout=5)

    unreachable = scheduler_for(f"http://127.0.0.1:{_free_port()}/sweep")
    no_issuer = scheduler_for(f"{target.url}/{prefix}n/ok", issuer_url=unreachable.target)

    assert target.max_active[prefix] == 1
    assert 3 <= slow.stats()["fired"] <= 5  # about 1 s / 0.3 s, plus the two on demand
    status, error = unreachable.fire()
    assert status is None
    assert "unreachable" in str(error)
    status, error = no_issuer.fire()
    assert status is None
    assert "no token" in str(error)
    assert target.for_prefix(prefix + "n") == []
    for failed in (unreachable, no_issuer):
        stats = failed.stats()
        assert (stats["fired"], stats["failures"], stats["lastStatus"]) == (0, 1, None)
        assert stats["lastFiredAt"] is not None


def test_scheduler_serves_loopback_only(stack: Stack) -> None:
    from emulators import scheduler

    env = stack.env()
    argv = ["--admin-port", "0", "--target", "http://127.0.0.1:1/", "--issuer-url",
            env["BACKFILL_ISSUER_URL"], "--identity", "a@b.c", "--audience", "aud"]

    assert scheduler.main(["--host", "0.0.0.0", *argv]) == 2  # refused
    assert scheduler.main(["--host", "127.0.0.1", "--period", "-1", *argv]) == 2


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def full_stack(stack: Stack) -> Stack:
    """This module's stack with the gateway and the scheduler stand-in (on-demand sweeps).

    ``up`` on the running stack adds them; the module's ``stack`` fixture stops them with the rest.
    """
    full = Stack(stack.state_dir, PORT_BASE, tasks_venv=stack.tasks_venv, sweep_seconds=0)
    full.up()
    return full


def test_stack_scheduler_fires_the_sweep_on_demand_and_counts_it(full_stack: Stack) -> None:
    before = full_stack.sweep_stats()

    status = full_stack.fire_sweep()

    after = full_stack.sweep_stats()
    assert isinstance(status, int)
    # 404 until the gateway routes the sweep; never 401/403: the token is the scheduler's.
    assert status in (200, 404), status
    assert after["periodSeconds"] == 0
    assert after["fired"] == before["fired"] + 1
    assert after["statuses"][str(status)] == before["statuses"].get(str(status), 0) + 1
    assert after["lastStatus"] == status
    assert abs((dt.datetime.now(dt.UTC) - _schedule_time(after["lastFiredAt"])).total_seconds()) < 5
    assert full_stack.env()["BACKFILL_SCHEDULER_ADMIN_URL"] == f"http://127.0.0.1:{PORT_BASE + 6}"
    assert [row["name"] for row in full_stack.status()][-2:] == ["gateway", "scheduler"]


def test_stack_sweep_period_can_be_set_and_zero_stops_it(full_stack: Stack) -> None:
    start = full_stack.sweep_stats()["fired"]

    assert full_stack.set_sweep_period(0.3)["periodSeconds"] == 0.3
    wait_for(lambda: full_stack.sweep_stats()["fired"] >= start + 3, timeout=5)
    full_stack.set_sweep_period(0)
    time.sleep(0.3)  # a firing already under way still finishes
    stopped_at = full_stack.sweep_stats()["fired"]
    time.sleep(0.9)

    assert full_stack.sweep_stats()["fired"] == stopped_at
    assert json.loads(full_stack.state_file.read_text())["sweep_seconds"] == 0
    # `up` on the running stack with another period only sets it.
    again = Stack(full_stack.state_dir, PORT_BASE, tasks_venv=full_stack.tasks_venv,
                  sweep_seconds=120)
    started = time.monotonic()
    again.up()
    assert time.monotonic() - started < 2
    assert full_stack.sweep_stats()["periodSeconds"] == 120
    assert json.loads(full_stack.state_file.read_text())["sweep_seconds"] == 120
    full_stack.set_sweep_period(0)


def test_stop_gateway_takes_the_functions_down_and_start_gateway_brings_them_back(
    full_stack: Stack,
) -> None:
    full_stack.stop_gateway()
    try:
        failures = full_stack.sweep_stats()["failures"]
        assert not _gateway_up(full_stack)
        assert "gateway" not in [row["name"] for row in full_stack.status()]
        with pytest.raises(Exception, match="no answer"):
            full_stack.fire_sweep()
        assert full_stack.sweep_stats()["failures"] == failures + 1
        full_stack.stop_gateway()  # a no-op when it is down
    finally:
        full_stack.start_gateway()

    assert _gateway_up(full_stack)
    assert full_stack.healthy()
    assert isinstance(full_stack.fire_sweep(), int)
    pid = next(row["pid"] for row in full_stack.status() if row["name"] == "gateway")
    full_stack.start_gateway()  # a no-op when it is up
    assert next(row["pid"] for row in full_stack.status() if row["name"] == "gateway") == pid


def test_restart_tasks_loses_every_queued_task_and_leaves_a_working_chunk_queue(
    full_stack: Stack, target: Target, prefix: str
) -> None:
    chunk_queue = f"{PARENT}/queues/{QUEUE_ID}"

    def new_client() -> tuple[grpc.Channel, tasks_v2.CloudTasksClient]:
        channel = grpc.insecure_channel(full_stack.env()["CLOUD_TASKS_EMULATOR_HOST"])
        return channel, tasks_v2.CloudTasksClient(
            transport=CloudTasksGrpcTransport(channel=channel)
        )

    channel, before = new_client()
    try:
        lost = http_task(chunk_queue, f"{prefix}-lost", f"{target.url}/{prefix}/lost",
                         schedule_in=60)
        before.create_task(parent=chunk_queue, task=lost)
        assert full_stack.tasks_stats()["queues"][QUEUE_ID]["queued"] == 1
    finally:
        channel.close()
    old_pid = next(row["pid"] for row in full_stack.status() if row["name"] == "tasks")

    full_stack.restart_tasks()

    assert next(row["pid"] for row in full_stack.status() if row["name"] == "tasks") != old_pid
    stats = full_stack.tasks_stats()
    assert stats["queued"] == 0
    assert stats["queues"][QUEUE_ID] == {"queued": 0, "scheduled": 0, "inFlight": 0}
    channel, after = new_client()
    try:
        queue = after.get_queue(name=chunk_queue)
        assert queue.retry_config.max_attempts == int(
            full_stack.env()["BACKFILL_TASK_MAX_ATTEMPTS"]
        )
        assert queue.rate_limits.max_concurrent_dispatches == 4
        with pytest.raises(exceptions.NotFound):
            after.get_task(name=lost.name)
        after.create_task(
            parent=chunk_queue,
            task=http_task(chunk_queue, f"{prefix}-new", f"{target.url}/{prefix}/ok"),
        )
        full_stack.wait_idle(10)
    finally:
        channel.close()

    assert [d.path for d in target.for_prefix(prefix)] == [f"/{prefix}/ok"]
    assert full_stack.tasks_stats()["succeeded"] == 1
    assert full_stack.healthy()
