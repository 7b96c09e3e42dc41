"""The ``backfill`` commands against a fake bundle (httpx's mock transport): ``--json`` leaves
only JSON on stdout, a watched run exits with the code of how it stopped, a refused or
unreachable call exits 1, a bad configuration 2, and the token never shows. The real stack runs
the same commands in tests/emulator/test_cli.py."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from backfill_cli import cli, tokens
from backfill_cli.client import BackfillClient

SECRET = "secret-token-never-shown"
GATEWAY = "http://bundle.test"


def run_status(status: str = "running", **changes: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "migrationId": "r1", "type": "webhook_replay", "status": status, "dryRun": True,
        "planned": True, "startDate": "2025-01-01", "endDate": "2025-01-03", "total": 10,
        "taken": 10 if status == "completed" else 4, "processed": 4, "skipped": 0, "errors": 0,
        "percent": 40.0, "rate": 4.0, "averageRate": 4.0, "etaSeconds": None, "ceiling": None,
        "waitingFor": [], "stalledChunks": [], "createdAt": "2025-01-04T00:00:00Z"}
    return run | changes


class FakeBundle:
    """The trigger, status and control functions on one host; a run reads as ``statuses``, one
    per status call, the last one repeated."""

    def __init__(self, *statuses: str) -> None:
        self.statuses = list(statuses) or ["completed"]
        self.requests: list[httpx.Request] = []
        self.refusal: httpx.Response | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.refusal is not None:
            return self.refusal
        path = request.url.path
        if path == "/api/jobs/backfill":
            return httpx.Response(202, json={"migrationId": "r1", "status": "pending"})
        if path == "/api/admin/gaps":
            return httpx.Response(200, json={"days": [], "totals": {}, "next": []})
        if path == "/api/admin/dataMigrations":
            return httpx.Response(200, json={"runs": [run_status()]})
        action = path.rsplit("/", 1)[-1]
        if request.method == "POST" and action in {"retry", "rollback"}:
            return httpx.Response(202, json={"migrationId": "r1", "status": "pending"})
        if request.method == "POST":
            return httpx.Response(200, json={"migrationId": "r1", "status": action,
                                             "changed": True})
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return httpx.Response(200, json=run_status(status))


@pytest.fixture
def bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeBundle:
    """A fake bundle behind the CLI's client, reached with a fixed token."""
    for name in list(os.environ):
        if name.startswith("BACKFILL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("BACKFILL_GATEWAY_URL", GATEWAY)
    monkeypatch.setenv("BACKFILL_TOKEN", SECRET)
    fake = FakeBundle()
    monkeypatch.setattr(cli, "BackfillClient", functools.partial(
        BackfillClient, transport=httpx.MockTransport(fake)))
    return fake


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli.app, list(args))


def json_lines(result: Result) -> list[Any]:
    """Every line of stdout as JSON (fails on a line that is not)."""
    return [json.loads(line) for line in result.stdout.splitlines()]


RANGE = ("--start", "2025-01-01", "--end", "2025-01-03")


@pytest.mark.parametrize("args", [
    ("start", "webhook_replay", *RANGE),
    ("status",),
    ("status", "r1"),
    ("gaps", *RANGE),
    ("pause", "r1", "--reason", "why"),
    ("resume", "r1"),
    ("cancel", "r1", "--yes"),
    ("throttle", "r1", "50"),
    ("retry", "r1"),
    ("rollback", "r1"),
])
def test_json_leaves_one_json_answer_on_stdout(bundle: FakeBundle, args: tuple[str, ...]) -> None:
    result = invoke(*args, "--json")

    assert result.exit_code == 0, result.output
    assert len(json_lines(result)) == 1


def test_token_json_is_the_token_and_for_whom(bundle: FakeBundle,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKFILL_ISSUER_URL", "http://issuer.test")
    monkeypatch.setattr(cli, "mint_local_token", lambda issuer, email, audience: "local-jwt")

    result = invoke("token", "--email", "ops@example.com", "--json")

    assert json_lines(result) == [{"token": "local-jwt", "email": "ops@example.com",
                                   "audience": GATEWAY}]


@pytest.mark.parametrize(("final", "code"), [
    ("completed", 0), ("failed", 3), ("cancelled", 4), ("paused", 5),
])
def test_a_watched_start_exits_with_its_runs_code_and_prints_json_only(
        bundle: FakeBundle, final: str, code: int) -> None:
    bundle.statuses = ["running", final]

    result = invoke("start", "webhook_replay", *RANGE, "--wait", "--json")

    assert result.exit_code == code, result.output
    started, last = json_lines(result)
    assert (started["status"], last["status"]) == ("pending", final)
    assert "running   40.0%  taken 4/10" in result.stderr  # the progress, off stdout


@pytest.mark.parametrize("command", [("status", "r1", "--watch"), ("retry", "r1", "--wait"),
                                     ("rollback", "r1", "--wait")])
def test_every_watch_exits_with_the_runs_code(bundle: FakeBundle,
                                              command: tuple[str, ...]) -> None:
    bundle.statuses = ["cancelled"]

    result = invoke(*command)

    assert result.exit_code == 4, result.output
    assert "cancelled" in result.stdout


def test_a_paused_run_watched_says_how_to_go_on(bundle: FakeBundle) -> None:
    bundle.statuses = ["paused"]

    result = invoke("status", "r1", "--watch")

    assert result.exit_code == 5
    assert "backfill resume r1" in result.stdout


def test_status_without_watch_exits_0_whatever_the_run(bundle: FakeBundle) -> None:
    bundle.statuses = ["failed"]

    result = invoke("status", "r1", "--json")

    assert result.exit_code == 0 and json_lines(result)[0]["status"] == "failed"


def test_a_refused_call_exits_1_with_the_body_on_stdout_under_json(bundle: FakeBundle) -> None:
    bundle.refusal = httpx.Response(409, json={"error": "conflict", "blocking": ["r0"]})

    as_json = invoke("start", "webhook_replay", *RANGE, "--json")
    plain = invoke("start", "webhook_replay", *RANGE)

    assert (as_json.exit_code, plain.exit_code) == (1, 1)
    assert json_lines(as_json) == [{"error": "conflict", "blocking": ["r0"]}]
    assert "409" in as_json.stderr and "runs in the way: r0" in as_json.stderr
    assert plain.stdout == "" and "409" in plain.stderr
    assert all(SECRET not in result.output for result in (as_json, plain))


def test_an_unreachable_bundle_exits_1(bundle: FakeBundle,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    monkeypatch.setattr(cli, "BackfillClient", functools.partial(
        BackfillClient, transport=httpx.MockTransport(unreachable)))

    result = invoke("status")

    assert result.exit_code == 1
    assert "could not reach the bundle: connection refused" in result.stderr


def test_a_token_that_cannot_be_had_exits_1_saying_why(bundle: FakeBundle,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKFILL_TOKEN")
    monkeypatch.setenv("PATH", "/nonexistent")

    result = invoke("--auth", "gcloud", "status")

    assert result.exit_code == 1
    assert "no ID token: gcloud is not on PATH" in result.stderr


@pytest.mark.parametrize("args", [
    ("--profile", "prod", "status"),
    ("--auth", "impersonate", "status"),
    ("--config", "/nonexistent/config.toml", "status"),
])
def test_a_bad_configuration_exits_2_naming_the_problem(bundle: FakeBundle,
                                                        args: tuple[str, ...]) -> None:
    result = invoke(*args)

    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and SECRET not in result.output


def test_each_function_gets_a_token_for_its_own_url(bundle: FakeBundle, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = {name: {"value": f"https://{name.removesuffix('_url')}.test"}
               for name in ("trigger_url", "status_url", "control_url")}
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    monkeypatch.delenv("BACKFILL_TOKEN")
    monkeypatch.setenv("BACKFILL_ISSUER_URL", "http://issuer.test")
    monkeypatch.setattr(tokens, "mint_local_token",
                        lambda issuer, email, audience: f"for-{audience}")

    for args in (("start", "webhook_replay", *RANGE), ("status", "r1"), ("pause", "r1")):
        assert invoke("--terraform-outputs", str(tmp_path / "outputs.json"), *args,
                      "--json").exit_code == 0

    assert [(request.url.host, request.headers["Authorization"])
            for request in bundle.requests] == [
        ("trigger.test", "Bearer for-https://trigger.test"),
        ("status.test", "Bearer for-https://status.test"),
        ("control.test", "Bearer for-https://control.test")]


def test_a_command_line_token_beats_the_configured_mode(bundle: FakeBundle,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKFILL_AUTH", "gcloud")

    result = invoke("status", "--token", "given", "--json")

    assert result.exit_code == 0, result.output
    assert bundle.requests[0].headers["Authorization"] == "Bearer given"
