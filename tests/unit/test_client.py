"""The operator's client (``backfill_cli.client``) against httpx's mock transport: what it sends
(a token per function's audience), how it reads refusals, and that waiting stops at a paused
run. The same client runs against the
real stack in tests/emulator."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backfill_cli.client import (
    ApiError,
    BackfillClient,
    Endpoints,
    MissingEndpoint,
    audience_of,
)

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = Endpoints.gateway("http://127.0.0.1:1")


def client_of(answers: Iterator[httpx.Response], seen: list[httpx.Request]) -> BackfillClient:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers)

    return BackfillClient(GATEWAY, "tok", transport=httpx.MockTransport(handle))


def status(value: str) -> httpx.Response:
    return httpx.Response(200, json={"migrationId": "r", "status": value})


@pytest.mark.parametrize("last", ["paused", "completed", "failed", "cancelled"])
def test_wait_stops_when_the_run_ends_or_is_paused(last: str) -> None:
    seen: list[httpx.Request] = []
    client = client_of(iter([status("pending"), status("running"), status(last)]), seen)

    run = client.wait("r", every=0)

    assert run["status"] == last
    assert len(seen) == 3
    assert {request.url.path for request in seen} == {"/api/admin/dataMigrations/r"}
    assert seen[0].headers["Authorization"] == "Bearer tok"


def test_wait_gives_up_after_its_timeout() -> None:
    client = client_of(iter([status("running")] * 100), [])

    with pytest.raises(TimeoutError, match="still running"):
        client.wait("r", timeout=0, every=0)


def test_a_refusal_is_an_api_error_with_its_body_and_the_runs_in_the_way() -> None:
    refusal = httpx.Response(409, json={"error": "conflict", "message": "overlaps",
                                        "blocking": ["webhook_replay_1"]})
    seen: list[httpx.Request] = []
    client = client_of(iter([refusal]), seen)

    with pytest.raises(ApiError) as refused:
        client.start({"type": "webhook_replay", "lookbackDays": 2})

    assert (refused.value.status, refused.value.blocking) == (409, ["webhook_replay_1"])
    assert refused.value.body["error"] == "conflict"
    assert seen[0].method == "POST" and seen[0].url.path == "/api/jobs/backfill"
    assert json.loads(seen[0].content) == {"type": "webhook_replay", "lookbackDays": 2}


def test_control_posts_the_action_under_the_control_url() -> None:
    seen: list[httpx.Request] = []
    client = client_of(iter([httpx.Response(200, json={"status": "paused"})]), seen)

    assert client.control("r", "pause", {"reason": "maintenance"})["status"] == "paused"
    assert seen[0].url.path == "/api/admin/dataMigrations/r/pause"
    with pytest.raises(ValueError, match="unknown action"):
        client.control("r", "explode")


def test_each_call_carries_a_token_for_its_functions_own_url() -> None:
    # In production the trigger, status and control functions are three audiences.
    seen: list[httpx.Request] = []
    asked: list[str] = []

    def tokens(audience: str) -> str:
        asked.append(audience)
        return f"token-for-{audience}"

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"migrationId": "r", "status": "paused", "runs": []})

    endpoints = Endpoints("https://trigger.example",
                          "https://status.example/api/admin/dataMigrations",
                          "https://control.example:8443")
    client = BackfillClient(endpoints, tokens, transport=httpx.MockTransport(handle))

    client.start({"type": "webhook_replay", "lookbackDays": 2})
    client.runs()
    client.control("r", "pause")

    assert asked == ["https://trigger.example", "https://status.example",
                     "https://control.example:8443"]
    assert [request.headers["Authorization"] for request in seen] == [
        f"Bearer token-for-{audience}" for audience in asked]


def test_use_token_replaces_the_provider_with_one_fixed_token() -> None:
    seen: list[httpx.Request] = []
    client = client_of(iter([status("running"), status("running")]), seen)

    client.run("r")
    client.use_token("fresh")
    client.run("r")

    assert [request.headers["Authorization"] for request in seen] == ["Bearer tok",
                                                                     "Bearer fresh"]


@pytest.mark.parametrize(("url", "audience"), [
    ("https://backfill-status-123.us-central1.run.app/api/admin/dataMigrations/r",
     "https://backfill-status-123.us-central1.run.app"),
    ("http://127.0.0.1:9105/api/jobs/backfill", "http://127.0.0.1:9105"),
    ("https://backfill-trigger-123.us-central1.run.app",
     "https://backfill-trigger-123.us-central1.run.app"),
])
def test_the_audience_of_a_call_is_its_urls_origin(url: str, audience: str) -> None:
    assert audience_of(url) == audience


def test_a_missing_endpoint_is_named_before_any_call() -> None:
    client = BackfillClient(Endpoints(), "tok")

    with pytest.raises(MissingEndpoint, match="BACKFILL_TRIGGER_URL"):
        client.start({})


def test_the_deployed_functions_carry_no_client_code(tmp_path: Path) -> None:
    out = tmp_path / "functions"
    subprocess.run(["bash", str(ROOT / "scripts" / "package_functions.sh"), str(out)],
                   check=True, capture_output=True, timeout=120)

    requirements = (out / "requirements.txt").read_text()
    assert not {"typer", "rich"} & {line.split("==")[0] for line in requirements.splitlines()}
    assert not (out / "backfill_cli").exists() and not (out / "shared" / "cli.py").exists()
    # httpx is deployed for one reason: PayNow's API, in its adapter alone.
    assert {path.relative_to(out).as_posix() for path in (out / "shared").rglob("*.py")
            if "httpx" in path.read_text()} == {"shared/adapters/paynow.py"}
