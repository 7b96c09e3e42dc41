"""A trace through the status function on the Firestore emulator: a customer's, order's and
event's history after a purchase, a refund, a failed replay, a retry, a rollback and a replay,
exactly that history; nothing written; refusals named."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from functions_framework import create_app

from shared.adapters import schema
from tests import data
from tests.functions.conftest import SOURCE, Harness

RANGE = {"startDate": "2025-01-01", "endDate": "2025-01-03"}
VIEWER = "viewer@example.com"


@pytest.fixture
def control(harness: Harness) -> Any:
    return create_app("backfill_control", SOURCE).test_client()


def finished(harness: Harness, response: Any) -> str:
    assert response.status_code == 202, response.get_json()
    harness.deliver_all()
    migration_id: str = response.get_json()["migrationId"]
    assert harness.run(migration_id)["status"] == "completed"
    return migration_id


def traced(harness: Harness, **query: str) -> Any:
    return harness.status.get("/api/admin/trace", query_string=query,
                              headers=harness.headers(VIEWER))


def everything(harness: Harness) -> dict[str, Any]:
    return {collection: {snap.id: (snap.to_dict(), snap.update_time)
                         for snap in harness.db.collection(collection).stream()}
            for collection in (schema.EVENTS, schema.LEDGER, schema.WALLETS, schema.RUNS)}


def deeds(trace: dict[str, Any], migration_id: str) -> set[tuple[str, str, str]]:
    run = next(run for run in trace["runs"] if run["migrationId"] == migration_id)
    return {(deed["what"], deed.get("eventId") or deed.get("entryId") or "",
             deed.get("code") or "") for deed in run["did"]}


def test_a_customers_trace_lists_exactly_its_history_and_writes_nothing(
        harness: Harness, control: Any) -> None:
    harness.configure(viewers=(VIEWER,))
    db = harness.db
    data.product(db, "p1", 10)
    data.put(db, data.purchase("e1", "o1", data.at(1, 10), "c1", [("p1", 2)]),
             data.refund("r1", "o1", data.at(2, 10), 500),
             data.purchase("e2", "o2", data.at(1, 20), "c1", [("gone", 1)]),
             data.purchase("x1", "ox", data.at(1, 30), "c2", [("p1", 1)]))

    replay = finished(harness, harness.start(type="webhook_replay", **RANGE))
    data.product(db, "gone", 3)
    retry = finished(harness, control.post(f"/api/admin/dataMigrations/{replay}/retry",
                                           json={}, headers=harness.headers()))
    finished(harness, control.post(f"/api/admin/dataMigrations/{replay}/rollback", json={},
                                   headers=harness.headers()))
    rollback = finished(harness, control.post(
        f"/api/admin/dataMigrations/{replay}/rollback", json={"dryRun": False},
        headers=harness.headers()))
    again = finished(harness, harness.start(type="webhook_replay", **RANGE))
    before = everything(harness)

    answer = traced(harness, customerId="c1")
    page = harness.status.get("/api/admin/trace", query_string={"customerId": "c1"},
                              headers={**harness.headers(VIEWER), "Accept": "text/html"})

    assert answer.status_code == 200, answer.get_json()
    trace = answer.get_json()
    assert everything(harness) == before  # a trace writes nothing
    assert trace["customers"] == ["c1"]
    assert [event["eventId"] for event in trace["events"]] == ["e1", "e2", "r1"]  # not c2's
    assert trace["wallets"] == [{"customerId": "c1", "balance": 20 - 10 + 3,
                                 "entriesSum": 13, "matches": True}]
    entries = {entry["entryId"]: (entry["type"], entry["points"], entry["migrationId"])
               for entry in trace["entries"]}
    assert entries == {
        "purchase_o1": ("purchase", 20, replay), "reversal_r1": ("reversal", -10, replay),
        "purchase_o2": ("purchase", 3, retry),
        f"rollback_{rollback}_purchase_o1": ("rollback", -20, rollback),
        f"rollback_{rollback}_reversal_r1": ("rollback", 10, rollback),
        f"reinstate_{rollback}_purchase_o1": ("reinstatement", 20, again),
        f"reinstate_{rollback}_reversal_r1": ("reinstatement", -10, again)}
    # Every run that touched them, in the order they ran, with what each did.
    assert [run["migrationId"] for run in trace["runs"]] == [replay, retry, rollback, again]
    assert {("wrote", "purchase_o1", ""), ("wrote", "reversal_r1", ""),
            ("error", "e2", "product_not_found")} <= deeds(trace, replay)
    assert deeds(trace, retry) == {("wrote", "purchase_o2", ""), ("applied", "e2", "")}
    assert {("rolled_back", f"rollback_{rollback}_purchase_o1", ""),
            ("rolled_back", f"rollback_{rollback}_reversal_r1", "")} <= deeds(trace, rollback)
    assert {("reinstated", f"reinstate_{rollback}_purchase_o1", ""),
            ("applied", "e1", ""), ("applied", "r1", "")} <= deeds(trace, again)
    assert next(event for event in trace["events"] if event["eventId"] == "e2")["state"] == \
        f"processed (applied by {retry})"
    error = next(record for record in trace["records"] if record["eventId"] == "e2")
    assert (error["migrationId"], error["code"], error["resolvedBy"]) == (
        replay, "product_not_found", retry)
    assert all(run["link"].endswith(f"/{run['migrationId']}") for run in trace["runs"])
    times = [dt.datetime.fromisoformat(item["at"].replace("Z", "+00:00"))
             for item in trace["timeline"]]
    assert times == sorted(times) and len(times) == 3 + 7 + 1
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "product_not_found" in html and f'href="/api/admin/dataMigrations/{replay}"' in html


def test_an_orders_and_an_events_trace_and_refusals(harness: Harness) -> None:
    harness.configure(viewers=(VIEWER,))
    db = harness.db
    data.product(db, "p1", 10)
    data.put(db, data.purchase("e1", "o1", data.at(1, 10), "c1", [("p1", 2)]),
             data.refund("r1", "o1", data.at(2, 10), 500),
             data.refund("r9", "o9", data.at(2, 20), 100),  # of an order never bought
             data.purchase("e3", "o3", data.at(1, 30), "c1", [("p1", 1)]))
    replay = finished(harness, harness.start(type="webhook_replay", **RANGE))

    order = traced(harness, orderId="o1").get_json()
    refund = traced(harness, eventId="r1").get_json()
    orphan = traced(harness, eventId="r9").get_json()
    answers = {
        "none": traced(harness),
        "two": traced(harness, customerId="c1", orderId="o1"),
        "reserved id": traced(harness, orderId="__x__"),
        "unknown": traced(harness, customerId="nobody"),
        "no token": harness.status.get("/api/admin/trace?customerId=c1"),
        "a stranger": harness.status.get("/api/admin/trace?customerId=c1",
                                         headers=harness.headers("someone@example.com")),
    }

    assert [event["eventId"] for event in order["events"]] == ["e1", "r1"]
    assert {entry["entryId"] for entry in order["entries"]} == {"purchase_o1", "reversal_r1"}
    assert order["wallets"][0]["balance"] == order["wallets"][0]["entriesSum"] == 20 - 10 + 10
    assert [event["eventId"] for event in refund["events"]] == ["r1"]
    assert [entry["entryId"] for entry in refund["entries"]] == ["reversal_r1"]
    assert [run["migrationId"] for run in refund["runs"]] == [replay]
    # A refund whose purchase never came: its error, and no customer to show.
    assert orphan["customers"] == [] and orphan["entries"] == []
    assert orphan["events"][0]["state"].startswith(
        f"unprocessed: failed in {replay} (purchase_not_found); retry")
    assert [(record["migrationId"], record["code"]) for record in orphan["records"]] == [
        (replay, "purchase_not_found")]
    statuses = {name: response.status_code for name, response in answers.items()}
    assert statuses == {"none": 400, "two": 400, "reserved id": 400, "unknown": 404,
                        "no token": 401, "a stranger": 403}
    assert answers["none"].get_json()["field"] == "customerId"
    assert answers["reserved id"].get_json()["field"] == "orderId"
