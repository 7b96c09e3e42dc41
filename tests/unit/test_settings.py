import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config import MAX_CHUNKS, Settings

ROOT = Path(__file__).resolve().parents[2]

LOCAL = {
    "BACKFILL_ENV": "local",
    "BACKFILL_PROJECT_ID": "demo",
    "BACKFILL_CHUNK_URL": "http://127.0.0.1:8685/tasks/chunk",
    "BACKFILL_OPERATOR_AUDIENCES": "http://127.0.0.1:8685",
    "BACKFILL_OPERATORS": "ops@example.com, lead@example.com",
    "BACKFILL_TASKS_IDENTITY": "tasks@demo.iam.gserviceaccount.com",
    "BACKFILL_CERTS_URL": "http://127.0.0.1:8684/oauth2/v1/certs",
    "BACKFILL_ISSUERS": "http://127.0.0.1:8684",
    "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8681",
}
PRODUCTION = {
    "BACKFILL_PROJECT_ID": "payments",
    "BACKFILL_CHUNK_URL": "https://backfill-chunk-123.europe-west1.run.app",
    "BACKFILL_OPERATOR_AUDIENCES": "https://backfill-trigger-123.europe-west1.run.app",
    "BACKFILL_TASKS_IDENTITY": "tasks@payments.iam.gserviceaccount.com",
}


def settings_from(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    for key in (*LOCAL, *PRODUCTION, "BACKFILL_FAULT_EXIT_AFTER_COMMITS",
                "CLOUD_TASKS_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "BACKFILL_ENABLED"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_production_is_the_default_and_trusts_only_google(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, PRODUCTION)

    assert settings.local is False
    assert settings.certs_url == "https://www.googleapis.com/oauth2/v1/certs"
    assert set(settings.issuers) == {"https://accounts.google.com", "accounts.google.com"}


def test_local_mode_reads_lists_and_identities(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, LOCAL)

    assert settings.operators == ("ops@example.com", "lead@example.com")
    assert settings.chunk_identities == {"tasks@demo.iam.gserviceaccount.com"}
    assert settings.effective_chunk_audience == LOCAL["BACKFILL_CHUNK_URL"]


@pytest.mark.parametrize("shortcut", [
    {"BACKFILL_CERTS_URL": "http://127.0.0.1:8684/oauth2/v1/certs"},
    {"BACKFILL_ISSUERS": "http://127.0.0.1:8684"},
    {"FIRESTORE_EMULATOR_HOST": "127.0.0.1:8681"},
    {"CLOUD_TASKS_EMULATOR_HOST": "127.0.0.1:8682"},
    {"BACKFILL_FAULT_EXIT_AFTER_COMMITS": "3"},
    {"BACKFILL_CHUNK_URL": "http://127.0.0.1:8685/tasks/chunk"},
    {"BACKFILL_PAYNOW_API_URL": "http://127.0.0.1:9107"},
    {"BACKFILL_PAYNOW_API_URL": "http://api.paynow.gg"},
])
def test_production_refuses_every_local_shortcut(monkeypatch: pytest.MonkeyPatch,
                                                 shortcut: dict[str, str]) -> None:
    monkeypatch.delenv("CLOUD_TASKS_EMULATOR_HOST", raising=False)
    with pytest.raises(ValidationError, match="unsafe production configuration"):
        settings_from(monkeypatch, {**PRODUCTION, **shortcut})


def test_the_time_budget_must_leave_room_under_the_dispatch_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="at most half"):
        settings_from(monkeypatch, {**LOCAL, "BACKFILL_TIME_BUDGET_SECONDS": "400",
                                    "BACKFILL_DISPATCH_DEADLINE_SECONDS": "600"})


@pytest.mark.parametrize(("extra", "message"), [
    ({"BACKFILL_LEASE_SECONDS": "100"}, "BACKFILL_LEASE_SECONDS must be at least"),
    ({"BACKFILL_POISON_ATTEMPTS": "10"}, "BACKFILL_POISON_ATTEMPTS must be below"),
    ({"BACKFILL_BREAKER_ERROR_RATE": "0"}, "breaker_error_rate"),
])
def test_run_control_settings_refuse_combinations_that_cannot_work(
        monkeypatch: pytest.MonkeyPatch, extra: dict[str, str], message: str) -> None:
    monkeypatch.delenv("BACKFILL_LEASE_SECONDS", raising=False)
    with pytest.raises(ValidationError, match=message):
        settings_from(monkeypatch, {**PRODUCTION, **extra})


def test_run_control_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, PRODUCTION)

    assert (settings.max_active_runs, settings.lease_seconds, settings.poison_attempts) == (
        3, 900.0, 3)
    assert (settings.breaker_error_rate, settings.breaker_min_events) == (0.5, 200)
    assert settings.control_identities == settings.status_identities


@pytest.mark.parametrize("url", [
    "https://localhost./tasks", "https://LOCALHOST/", "https://api.localhost/", "https://127.1/",
    "https://0x7f.1/", "https://2130706433/", "https://0.0.0.0/", "https://0/", "https://[::1]/",
    "https://[::]/", "https://[::ffff:127.0.0.1]/", "https://169.254.169.254/", "https:///",
])
def test_production_refuses_chunk_urls_that_point_at_this_machine(
        monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    with pytest.raises(ValidationError, match="BACKFILL_CHUNK_URL must be an https URL"):
        settings_from(monkeypatch, {**PRODUCTION, "BACKFILL_CHUNK_URL": url})


def test_production_accepts_a_deployed_functions_url(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, {
        **PRODUCTION, "BACKFILL_CHUNK_URL": "https://europe-west1-payments.cloudfunctions.net/c"})

    assert settings.chunk_url.startswith("https://europe-west1-payments")


def _start_function(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Load a function as functions-framework does at start, in a process of its own."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BACKFILL_")
           and key not in ("FIRESTORE_EMULATOR_HOST", "CLOUD_TASKS_EMULATOR_HOST",
                           "PUBSUB_EMULATOR_HOST")}
    env.update(PRODUCTION, **extra)
    code = ("import functions_framework; "
            "functions_framework.create_app(target='backfill_status', source='functions/main.py')")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_a_function_with_an_unsafe_production_configuration_refuses_to_start() -> None:
    unsafe = _start_function({"BACKFILL_ISSUERS": "http://127.0.0.1:8684"})
    safe = _start_function({})

    assert unsafe.returncode != 0
    assert "refusing to serve" in unsafe.stderr
    assert "BACKFILL_ISSUERS may only name Google's issuers" in unsafe.stderr
    assert safe.returncode == 0, safe.stderr


def test_a_chunk_holds_what_it_applies_in_its_goal_duration_unless_a_bound_is_set(
        monkeypatch: pytest.MonkeyPatch) -> None:
    goal = settings_from(monkeypatch, {**LOCAL, "BACKFILL_CHUNK_GOAL_SECONDS": "30",
                                       "BACKFILL_CHUNK_EVENTS_PER_SECOND": "150"})
    assert goal.chunk_events == 4500
    fixed = settings_from(monkeypatch, {**LOCAL, "BACKFILL_SPLIT_EVENTS": "700"})
    assert fixed.chunk_events == 700


def test_a_range_of_ten_years_of_daily_chunks_fits_one_plan(
        monkeypatch: pytest.MonkeyPatch) -> None:
    many = settings_from(monkeypatch, {**LOCAL, "BACKFILL_MAX_RANGE_DAYS": "3660",
                                       "BACKFILL_CHUNK_DAYS": "1"})
    assert many.max_range_days // many.chunk_days <= MAX_CHUNKS
