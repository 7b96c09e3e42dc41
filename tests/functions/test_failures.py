"""What failed, through the functions: the error report (JSON and CSV), retrying a run's failed
events, poison events and the circuit breaker, against the Firestore emulator."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from functions_framework import create_app

from shared.adapters import schema
from shared.backfills import webhook_replay
from shared.backfills.apply import apply_purchase
from shared.backfills.base import Event, ItemResult
from tests import data
from tests.functions.conftest import SOURCE, Harness

RANGE: dict[str, Any] = {"type": "webhook_replay", "startDate": "2025-01-01",
                         "endDate": "2025-01-03"}
COLUMNS = ["eventId", "eventType", "code", "message", "hint", "attempts", "chunkId", "at",
           "resolvedBy", "subject", "repaired", "wouldRepair"]


@pytest.fixture
def control(harness: Harness) -> Any:
    return create_app("backfill_control", SOURCE).test_client()


def seed_failures(harness: Harness) -> None:
    """60 good purchases, 6 of a product not yet in the catalogue, 2 malformed."""
    db = harness.db
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(60, days=3))
    data.put(db, *data.purchases(6, days=3, prefix="r", product_id="=retired"))
    data.put(db, data.event("bad1", "ON_ORDER_COMPLETED", data.at(1, 9), {"id": "o-bad"}),
             data.purchase("bad2", "o/slash", data.at(2, 9)))


def finished(harness: Harness, **body: Any) -> str:
    migration_id: str = harness.start(**{**RANGE, **body}).get_json()["migrationId"]
    harness.deliver_all()
    return migration_id


def report(harness: Harness, migration_id: str, query: str = "") -> Any:
    return harness.status.get(f"/api/admin/dataMigrations/{migration_id}/errors{query}",
                              headers=harness.headers())


def rows(response: Any) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def test_the_error_report_lists_exactly_the_failed_events(harness: Harness) -> None:
    seed_failures(harness)
    migration_id = finished(harness)

    as_csv = report(harness, migration_id)
    only_products = report(harness, migration_id, "?code=product_not_found&format=json")
    run = harness.run(migration_id)

    assert as_csv.status_code == 200
    assert as_csv.mimetype == "text/csv"
    assert f'filename="{migration_id}-errors.csv"' in as_csv.headers["Content-Disposition"]
    assert as_csv.get_data(as_text=True).splitlines()[0] == ",".join(COLUMNS)
    listed = rows(as_csv)
    unprocessed = {eid for eid, e in data.documents(harness.db, schema.EVENTS).items()
                   if not e["processed"]}
    assert {row["eventId"] for row in listed} == unprocessed == {
        "bad1", "bad2", *(f"r{n:05}" for n in range(6))}
    by_id = {row["eventId"]: row for row in listed}
    assert by_id["r00000"]["code"] == "product_not_found"
    # A message quoting a payload id that a spreadsheet would run as a formula is defused.
    assert by_id["r00000"]["message"] == "Product not found: =retired"
    assert by_id["bad2"]["code"] == "malformed_payload"
    assert "payload.body.id: Value error, must not contain '/'" in by_id["bad2"]["message"]
    assert (by_id["r00001"]["eventType"], by_id["r00001"]["attempts"]) == ("ON_ORDER_COMPLETED",
                                                                           "1")
    assert by_id["r00001"]["chunkId"] == "2025-01-02"
    assert only_products.get_json()["count"] == 6
    assert {e["code"] for e in only_products.get_json()["errors"]} == {"product_not_found"}
    assert run["errorCodes"] == {"malformed_payload": 2, "product_not_found": 6}


def test_a_formula_in_a_cell_is_quoted() -> None:
    from shared.runs.reports import as_csv

    lines = list(as_csv(iter([{"eventId": "e1", "eventType": "T", "code": "c",
                               "message": "=HYPERLINK(1)", "hint": "+1", "attempts": 1,
                               "chunkId": "-x", "at": None, "resolvedBy": None,
                               "subject": "@x", "repaired": None, "wouldRepair": None}])))

    assert lines[1] == "e1,T,c,'=HYPERLINK(1),'+1,1,'-x,,,'@x,,\r\n"


def test_the_error_report_refuses_bad_filters_and_unknown_runs(harness: Harness) -> None:
    seed_failures(harness)
    migration_id = finished(harness)

    assert report(harness, "webhook_replay_1").status_code == 404
    bad_code = report(harness, migration_id, "?code=DROP%20TABLE")
    assert (bad_code.status_code, bad_code.get_json()["field"]) == (400, "code")
    assert report(harness, migration_id, "?format=xml").get_json()["field"] == "format"


def test_retry_reapplies_exactly_the_failed_events_once_the_cause_is_fixed(
        harness: Harness, control: Any) -> None:
    seed_failures(harness)
    source = finished(harness)
    data.product(harness.db, "=retired", 4)  # the operator adds the missing product

    response = control.post(f"/api/admin/dataMigrations/{source}/retry", headers=harness.headers())
    retry = response.get_json()
    harness.deliver_all(twice=True)
    run = harness.run(retry["migrationId"])
    source_rows = {row["eventId"]: row for row in rows(report(harness, source))}

    assert response.status_code == 202, retry
    assert retry["retryOf"] == {"migrationId": source, "code": None, "events": 8}
    assert run["status"] == "completed"
    assert run["retryOf"] == {"migrationId": source, "code": None, "events": 8}
    assert (run["total"], run["applied"], run["errors"]) == (8, 6, 2)
    assert {e["eventId"] for e in run["firstErrors"]} == {"bad1", "bad2"}
    assert {eid for eid, row in source_rows.items() if row["resolvedBy"]} == {
        f"r{n:05}" for n in range(6)}
    assert {row["resolvedBy"] for row in source_rows.values()} == {retry["migrationId"], ""}
    assert set(data.credited_orders(harness.db).values()) == {1}
    assert len(data.credited_orders(harness.db)) == 66
    data.assert_ledger_consistent(harness.db)


def test_retry_by_code_and_its_refusals(harness: Harness, control: Any) -> None:
    seed_failures(harness)
    source = finished(harness)
    dry = finished(harness, startDate="2025-01-01", endDate="2025-01-01", dryRun=True)

    def retry(run: str, body: dict[str, Any] | None = None) -> Any:
        return control.post(f"/api/admin/dataMigrations/{run}/retry", json=body,
                            headers=harness.headers())

    only_malformed = retry(source, {"code": "malformed_payload"})
    harness.deliver_all()
    assert only_malformed.status_code == 202
    assert harness.run(only_malformed.get_json()["migrationId"])["total"] == 2
    nothing = retry(source, {"code": "purchase_not_found"})
    assert (nothing.status_code, nothing.get_json()["blocking"]) == (409, [source])
    live_of_dry = retry(dry, {"dryRun": False})
    assert live_of_dry.status_code == 409
    assert "was a dry run" in live_of_dry.get_json()["message"]
    assert retry(source, {"code": 7}).get_json()["field"] == "code"
    assert retry("webhook_replay_1").status_code == 404


def test_a_poison_event_is_passed_over_after_bounded_attempts(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(45, days=1))

    def explodes_on_e00021(event: Event, *args: Any) -> ItemResult:
        if event.event_id == "e00021":
            raise RuntimeError("a bug this event's data triggers")
        return apply_purchase(event, *args)

    rules = {**webhook_replay.WebhookReplay.rules, "ON_ORDER_COMPLETED": explodes_on_e00021}
    monkeypatch.setattr(webhook_replay.WebhookReplay, "rules", rules)
    migration_id = finished(harness, endDate="2025-01-01")
    run = harness.run(migration_id)
    errors = {e["eventId"]: e for e in run["firstErrors"]}

    assert run["status"] == "completed"
    assert (run["applied"], run["errors"], run["taken"]) == (44, 1, 45)
    assert errors["e00021"]["code"] == "unexpected_error"
    assert errors["e00021"]["attempts"] == harness.settings.poison_attempts
    assert "RuntimeError" in errors["e00021"]["message"]
    assert "a bug" not in errors["e00021"]["message"]  # exception text may quote payload data
    assert len(data.credited_orders(harness.db)) == 44
    data.assert_ledger_consistent(harness.db)


def test_the_circuit_breaker_stops_a_run_that_mostly_fails(harness: Harness) -> None:
    harness.configure(breaker_min_events=20, breaker_error_rate=0.5, page_size=10)
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(20, days=1))
    data.put(harness.db, *data.purchases(80, days=1, prefix="x", product_id="gone"))

    migration_id = finished(harness, endDate="2025-01-01")
    run = harness.run(migration_id)

    assert run["status"] == "failed"
    assert run["statusReason"].startswith("circuit breaker: ")
    assert "BACKFILL_BREAKER_ERROR_RATE=0.5" in run["statusReason"]
    assert run["chunkStates"] == {"cancelled": 1}
    assert 20 <= run["taken"] < 100  # stopped early, not at the end
    assert run["errors"] / run["taken"] > 0.5
    data.assert_ledger_consistent(harness.db)


def test_a_dry_run_is_not_stopped_by_the_breaker(harness: Harness) -> None:
    harness.configure(breaker_min_events=20, breaker_error_rate=0.5, page_size=10)
    data.put(harness.db, *data.purchases(60, days=1, product_id="gone"))

    run = harness.run(finished(harness, endDate="2025-01-01", dryRun=True))

    assert (run["status"], run["errors"]) == ("completed", 60)
