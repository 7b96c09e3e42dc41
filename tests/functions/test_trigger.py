"""The trigger through its public surface: tokens, validation, kill switch, the run it records."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from emulators.issuer import Issuer, SigningKey
from shared.adapters import schema
from tests import data
from tests.conftest import ROOT, TEST_PORT_BASE
from tests.functions.conftest import Harness

BODY: dict[str, Any] = {"type": "webhook_replay", "startDate": "2025-01-01",
                        "endDate": "2025-01-03", "dryRun": False, "maxEvents": 1000}


def stack_key() -> SigningKey:
    """The test stack issuer's own key, to sign tokens it would not hand out (expired ones)."""
    state = ROOT / ".local" / ("test-stack" if TEST_PORT_BASE == 9100
                               else f"test-stack-{TEST_PORT_BASE}")
    certificate = (state / "issuer-cert.pem").read_bytes()
    der = x509.load_pem_x509_certificate(certificate).public_bytes(Encoding.DER)
    return SigningKey(hashlib.sha256(der).hexdigest()[:40],
                      (state / "issuer-key.pem").read_bytes(), certificate)


def nothing_written(harness: Harness) -> bool:
    return not list(harness.db.collection(schema.RUNS).limit(1).stream()) and \
        not harness.dispatcher.queued


def test_a_valid_request_records_a_run_and_enqueues_its_planning(harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(30, days=2))

    response = harness.start(**BODY)

    assert response.status_code == 202
    body = response.get_json()
    assert body["migrationId"].startswith("webhook_replay_")
    assert body["statusUrl"].endswith(f"/api/admin/dataMigrations/{body['migrationId']}")
    assert (body["status"], body["chunks"]) == ("pending", 3)
    run = schema.run_ref(harness.db, body["migrationId"]).get().to_dict()
    assert run is not None
    assert (run["status"], run["planned"]) == ("pending", False)
    assert run["requestedBy"] == "ops@example.com"
    assert (run["startDate"], run["endDate"], run["maxEvents"]) == ("2025-01-01", "2025-01-03",
                                                                    1000)
    assert [t.kind for t in harness.dispatcher.queued] == ["plan", "watch"]
    watchdog = harness.dispatcher.queued[1]
    assert harness.dispatcher.delays[watchdog] == harness.settings.lease_seconds


def test_a_body_without_dry_run_starts_a_dry_run_and_every_answer_says_where(
        harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(5, days=1))
    body = {key: value for key, value in BODY.items() if key != "dryRun"}
    where = {"project": harness.settings.project_id, "database": "(default)",
             "environment": "local"}

    answer = harness.trigger.post("/", json=body, headers=harness.headers())

    assert answer.status_code == 202
    assert answer.get_json()["dryRun"] is True
    assert answer.get_json()["deployment"] == where
    run = schema.run_ref(harness.db, answer.get_json()["migrationId"]).get().to_dict()
    assert run is not None and run["dryRun"] is True
    live = harness.start(**BODY, force=True)  # beside the dry run of the same days
    assert live.get_json()["dryRun"] is False
    # A refusal names the deployment too, in its body and (as any answer) in its headers.
    refused = harness.trigger.post("/", json={**BODY, "maxEvents": 0}, headers=harness.headers())
    assert refused.status_code == 400
    assert refused.get_json()["deployment"] == where
    assert refused.headers["X-Backfill-Project"] == harness.settings.project_id
    assert refused.headers["X-Backfill-Environment"] == "local"


def test_where_a_reason_is_required_a_live_run_without_one_is_refused(
        harness: Harness) -> None:
    harness.configure(require_reason=True)  # production's default
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(5, days=1))

    refused = [harness.start(**BODY), harness.start(**BODY, reason="   ")]
    assert nothing_written(harness)
    dry = harness.start(**{**BODY, "dryRun": True})  # a dry run needs none
    live = harness.start(**BODY, reason="INC-2041: points missing since the outage",
                         force=True)
    too_long = harness.start(**BODY, reason="x" * 501, force=True)

    for answer in refused:
        assert answer.status_code == 400
        assert answer.get_json()["field"] == "reason"
        assert "a ticket or an incident id" in answer.get_json()["message"]
    assert (dry.status_code, live.status_code, too_long.status_code) == (202, 202, 400)
    run = harness.run(live.get_json()["migrationId"])
    assert run["reason"] == "INC-2041: points missing since the outage"
    assert too_long.get_json()["field"] == "reason"


def test_planning_counts_chunks_and_enqueues_those_with_work_once(harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(30, days=2))
    migration_id = harness.start(**BODY).get_json()["migrationId"]
    planning = harness.dispatcher.take()

    harness.deliver(planning, twice=True)

    run = harness.run(migration_id)
    assert (run["status"], run["planned"], run["eligible"], run["total"]) == (
        "pending", True, 30, 30)
    assert [(c["chunkId"], c["state"], c["eligible"]) for c in run["chunks"]] == [
        ("2025-01-01", "pending", 15), ("2025-01-02", "pending", 15),
        ("2025-01-03", "completed", 0)]
    assert sorted(t.chunk_id for t in harness.dispatcher.queued) == ["2025-01-01", "2025-01-02"]


def test_a_run_with_no_eligible_event_completes_when_planned(harness: Harness) -> None:
    migration_id = harness.start(**BODY).get_json()["migrationId"]

    harness.plan()

    assert harness.run(migration_id)["status"] == "completed"
    assert not harness.dispatcher.queued


@pytest.mark.parametrize(("change", "field"), [
    ({"type": "full_rebuild"}, "type"),
    ({"startDate": "2025-02-01"}, "endDate"),
    ({"endDate": "yesterday"}, "endDate"),
    ({"maxEvents": -5}, "maxEvents"),
    ({"dryRun": "no"}, "dryRun"),
    ({"extra": 1}, "extra"),
])
def test_bad_bodies_answer_400_naming_the_field_and_write_nothing(
        harness: Harness, change: dict[str, Any], field: str) -> None:
    response = harness.start(**{**BODY, **change})

    assert response.status_code == 400
    assert response.get_json()["field"] == field
    assert response.get_json()["reason"]
    assert nothing_written(harness)


def test_a_body_that_is_not_json_answers_400(harness: Harness) -> None:
    response = harness.trigger.post("/", data=b"type=webhook_replay", headers=harness.headers())

    assert response.status_code == 400
    assert response.get_json()["field"] == "body"
    assert nothing_written(harness)


def test_no_token_answers_401_and_writes_nothing(harness: Harness) -> None:
    response = harness.trigger.post("/", json=BODY)

    assert response.status_code == 401
    assert "Bearer" in response.get_json()["message"]
    assert nothing_written(harness)


def test_a_token_for_another_audience_answers_401(harness: Harness) -> None:
    response = harness.trigger.post("/", json=BODY, headers=harness.headers(
        audience="https://someone-else.example.com"))

    assert response.status_code == 401
    assert nothing_written(harness)


@pytest.mark.parametrize("forge", ["foreign_key", "expired", "tampered", "not_yet_valid"])
def test_forged_and_expired_tokens_answer_401(harness: Harness, forge: str) -> None:
    issuer_url = harness.env["BACKFILL_ISSUER_URL"]
    audience = harness.settings.operator_audiences[0]
    if forge == "foreign_key":
        token = Issuer(issuer_url, SigningKey.generate()).mint("ops@example.com", audience)
    elif forge == "expired":
        token = Issuer(issuer_url, stack_key()).mint("ops@example.com", audience,
                                                     now=int(time.time()) - 7200)
    elif forge == "not_yet_valid":
        token = Issuer(issuer_url, stack_key()).mint("ops@example.com", audience,
                                                     extra={"nbf": int(time.time()) + 600})
    else:
        header, payload, signature = harness.mint().split(".")
        other = harness.mint("intruder@example.com").split(".")[1]
        token = ".".join((header, other[:-4] + payload[-4:], signature))

    response = harness.trigger.post("/", json=BODY, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401
    assert nothing_written(harness)


def test_a_token_valid_from_now_within_the_clock_skew_is_accepted(harness: Harness) -> None:
    token = Issuer(harness.env["BACKFILL_ISSUER_URL"], stack_key()).mint(
        "ops@example.com", harness.settings.operator_audiences[0],
        extra={"nbf": int(time.time()) + 5})

    response = harness.trigger.post("/", json=BODY, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 202


def test_a_valid_token_of_an_identity_not_allowed_answers_403(harness: Harness) -> None:
    response = harness.trigger.post("/", json=BODY,
                                    headers=harness.headers("intruder@example.com"))

    assert response.status_code == 403
    assert "intruder@example.com" in response.get_json()["message"]
    assert nothing_written(harness)


def test_the_scheduler_identity_may_trigger(harness: Harness) -> None:
    response = harness.trigger.post(
        "/", json=BODY, headers=harness.headers(harness.settings.scheduler_identity))

    assert response.status_code == 202


def test_the_kill_switch_answers_503_and_writes_nothing(harness: Harness) -> None:
    harness.configure(enabled=False)

    response = harness.start(**BODY)

    assert response.status_code == 503
    assert "BACKFILL_ENABLED" in response.get_json()["message"]
    assert nothing_written(harness)


def test_other_methods_answer_405(harness: Harness) -> None:
    response = harness.trigger.get("/", headers=harness.headers())

    assert response.status_code == 405


def test_a_year_long_range_is_planned_as_one_chunk_a_day(harness: Harness) -> None:
    data.product(harness.db, "p1", 1)
    data.put(harness.db, *data.purchases(10, days=10))

    response = harness.start(type="webhook_replay", startDate="2024-02-01",
                             endDate="2025-01-31")

    harness.plan()

    assert response.status_code == 202
    assert response.get_json()["chunks"] == 366
    chunks = schema.run_ref(harness.db, response.get_json()["migrationId"]).collection(
        schema.CHUNKS)
    assert schema.count(chunks) == 366
    assert len(harness.dispatcher.queued) == 10


def test_an_end_date_past_its_months_end_runs_to_the_end_of_that_month(
        harness: Harness) -> None:
    response = harness.start(type="webhook_replay", startDate="2024-11-01",
                             endDate="2024-11-31")

    body = response.get_json()
    assert response.status_code == 202
    assert (body["startDate"], body["endDate"], body["requestedEndDate"]) == (
        "2024-11-01", "2024-11-30", "2024-11-31")
    assert "2024-11-30" in body["note"]
    run = harness.run(body["migrationId"])
    assert (run["endDate"], run["requestedEndDate"], run["chunkCount"]) == (
        "2024-11-30", "2024-11-31", 30)


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({"startDate": "2024-11-31", "endDate": "2024-12-31"}, "startDate",
     "start on 2024-11-30 or 2024-12-01"),
    ({"startDate": "2024-11-01", "endDate": "2024-11-32"}, "endDate", "day value is outside"),
    ({"startDate": "2024-11-01", "endDate": "2024-13-31"}, "endDate", "month value is outside"),
])
def test_days_that_exist_in_no_month_answer_400_saying_how_to_write_them(
        harness: Harness, body: dict[str, str], field: str, reason: str) -> None:
    response = harness.start(type="webhook_replay", **body)

    assert response.status_code == 400
    assert response.get_json()["field"] == field
    assert reason in response.get_json()["reason"]
    assert nothing_written(harness)
