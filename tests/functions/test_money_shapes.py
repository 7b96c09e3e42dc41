"""The money paths in shapes the other tests do not build, over HTTP on the Firestore emulator,
with pages of 40 events: customers whose events span pages and chunks, webhooks PayNow
delivered twice, a dry-run repair, and a run stopped by the circuit breaker then retried live.
Each case once moved points it should not have, failed the run, or misled its reader."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from functions_framework import create_app
from google.cloud import firestore

from shared.adapters import schema
from tests import data
from tests.functions.conftest import SOURCE, Harness

RANGE = {"startDate": "2025-01-01", "endDate": "2025-01-02"}
PAGE = 40


@pytest.fixture
def control(harness: Harness) -> Any:
    harness.configure(page_size=PAGE)
    return create_app("backfill_control", SOURCE).test_client()


def finished(harness: Harness, response: Any, status: str = "completed") -> dict[str, Any]:
    assert response.status_code == 202, response.get_json()
    harness.deliver_all()
    run: dict[str, Any] = harness.run(response.get_json()["migrationId"])
    assert run["status"] == status, run
    return run


def findings(harness: Harness, migration_id: str) -> dict[tuple[str, str], dict[str, str]]:
    report = harness.status.get(f"/api/admin/dataMigrations/{migration_id}/errors",
                                headers=harness.headers())
    assert report.status_code == 200
    return {(row["code"], row["subject"]): row
            for row in csv.DictReader(io.StringIO(report.get_data(as_text=True)))}


def wallets(db: firestore.Client) -> dict[str, int]:
    return {cid: w["balance"] for cid, w in data.documents(db, schema.WALLETS).items()}


def busy_customers(harness: Harness) -> None:
    """Customers c1 and c2 with 50 purchases each over two days (so each spans pages and both
    day chunks), a partial refund of c1's first order, a few other customers; replayed."""
    db = harness.db
    data.product(db, "p1", 7)
    events = [data.purchase(f"{c}e{n:02}", f"{c}o{n:02}", data.at(1 + n % 2, n * 13), c,
                            [("p1", 1 + n % 3)], total=900)
              for c in ("c1", "c2") for n in range(50)]
    events += [data.purchase(f"x{n}", f"xo{n}", data.at(1 + n % 2, n), f"c{3 + n % 4}")
               for n in range(30)]
    events.append(data.refund("r1", "c1o00", data.at(2, 1400), 300))
    data.put(db, *events)
    finished(harness, harness.start(type="webhook_replay", **RANGE))


def lose_reversal_after_its_debit(db: firestore.Client) -> int:
    """c1's reversal entry vanishes, its purchase back to unrefunded; the debit stays."""
    ledger = db.collection(schema.LEDGER)
    points = int((ledger.document("reversal_r1").get().to_dict() or {})["points"])
    ledger.document("reversal_r1").delete()
    ledger.document("purchase_c1o00").update({"refundedAmount": 0, "reversedPoints": 0})
    return points


def lose_purchase_after_its_credit(db: firestore.Client) -> None:
    """c2's last order's entry vanishes; the credit stays in the wallet."""
    db.collection(schema.LEDGER).document("purchase_c2o49").delete()


def test_a_repair_of_a_customer_spanning_pages_and_chunks_moves_no_wallet_twice(
        harness: Harness, control: Any) -> None:
    busy_customers(harness)
    db = harness.db
    debit = lose_reversal_after_its_debit(db)
    lose_purchase_after_its_credit(db)
    before = wallets(db)

    run = finished(harness, harness.start(type="ledger_verify", repair=True, **RANGE))

    found = findings(harness, run["migrationId"])
    assert debit < 0
    assert wallets(db) == before  # both effects had happened: nothing moves
    ledger = data.documents(db, schema.LEDGER)
    assert ledger["reversal_r1"]["points"] == debit
    assert ledger["purchase_c2o49"]["points"] > 0
    assert not [entry for entry in ledger.values() if entry["type"] == "adjustment"]
    assert {key: row["repaired"] for key, row in found.items()} == {
        ("missing_reversal", "webhookEvents/r1"): "True",
        ("wallet_drift", "wallets/c1"): "True",
        ("missing_entry", "webhookEvents/c2e49"): "True",
        ("wallet_drift", "wallets/c2"): "True"}
    data.assert_ledger_consistent(db)
    again = finished(harness, harness.start(type="ledger_verify", repair=True, **RANGE))
    assert (again["errorCodes"], wallets(db)) == ({}, before)


def test_a_dry_run_repair_completes_writes_only_its_shadow_and_says_would(
        harness: Harness, control: Any) -> None:
    busy_customers(harness)
    db = harness.db
    lose_reversal_after_its_debit(db)
    lose_purchase_after_its_credit(db)
    db.collection(schema.WALLETS).document("c5").set({"balance": firestore.Increment(4)},
                                                     merge=True)  # drift, nothing missing
    before = data.ledger_state(db)

    run = finished(harness, harness.start(type="ledger_verify", repair=True, dryRun=True,
                                          **RANGE))

    assert data.ledger_state(db) == before
    found = findings(harness, run["migrationId"])
    assert set(found) == {("missing_reversal", "webhookEvents/r1"),
                          ("wallet_drift", "wallets/c1"),
                          ("missing_entry", "webhookEvents/c2e49"),
                          ("wallet_drift", "wallets/c2"), ("wallet_drift", "wallets/c5")}
    assert {(row["repaired"], row["wouldRepair"]) for row in found.values()} == {
        ("False", "True")}
    assert all(row["hint"].startswith("dry run: nothing was written") for row in
               found.values())
    shadow = data.documents(db, f"{schema.RUNS}/{run['migrationId']}/{schema.SHADOW_LEDGER}")
    assert {"reversal_r1", "purchase_c2o49",
            f"adjustment_{run['migrationId']}_c5"} <= set(shadow)


def test_a_rollback_unflags_the_redeliveries_it_settled_and_verify_recredits_none(
        harness: Harness, control: Any) -> None:
    db = harness.db
    data.product(db, "p1", 11)
    events = [data.purchase(f"e{n:02}", f"o{n:02}", data.at(1 + n % 2, n * 7), f"c{n % 5}")
              for n in range(60)]
    # PayNow delivered ten of the orders' webhooks twice: two events, one order.
    events += [data.purchase(f"e{n:02}again", f"o{n:02}", data.at(2, 1000 + n), f"c{n % 5}")
               for n in range(10)]
    # And the live path took one order's redelivery for a duplicate of its own entry.
    events.append(data.purchase("live", "olive", data.at(1, 5), "c0", processed=True))
    events.append(data.purchase("liveagain", "olive", data.at(1, 6), "c0"))
    data.put(db, *events)
    db.collection(schema.LEDGER).document("purchase_olive").set({
        "customerId": "c0", "type": "purchase", "points": 11, "orderId": "olive",
        "sourceEventId": "live", "source": "webhook", "migrationId": None,
        "orderTotal": 1000, "refundedAmount": 0, "reversedPoints": 0})
    db.collection(schema.WALLETS).document("c0").set({"balance": 11})
    replay = finished(harness, harness.start(type="webhook_replay", **RANGE))
    first = data.ledger_state(db)
    flagged = {eid for eid, e in data.documents(db, schema.EVENTS).items() if e["processed"]}
    assert len(flagged) == len(events)

    rollback = f"/api/admin/dataMigrations/{replay['migrationId']}/rollback"
    finished(harness, control.post(rollback, json={}, headers=harness.headers()))
    finished(harness, control.post(rollback, json={"dryRun": False},
                                   headers=harness.headers()))

    processed = {eid for eid, e in data.documents(db, schema.EVENTS).items() if e["processed"]}
    assert processed == {"live", "liveagain"}  # the live path's duplicate stays as it was
    assert wallets(db) == {**{f"c{n}": 0 for n in range(5)}, "c0": 11}
    undone = data.ledger_state(db)
    verify = finished(harness, harness.start(type="ledger_verify", repair=True, **RANGE))
    assert verify["errorCodes"] == {}
    assert data.ledger_state(db) == undone  # nothing re-credited

    again = finished(harness, harness.start(type="webhook_replay", **RANGE))
    assert wallets(db) == first["wallets"]
    assert {eid for eid, e in data.documents(db, schema.EVENTS).items()
            if e["processed"]} == flagged
    assert set(data.credited_orders(db).values()) == {1}
    data.assert_ledger_consistent(db)

    # The replay that reinstated the entries is rolled back just as exactly.
    rollback = f"/api/admin/dataMigrations/{again['migrationId']}/rollback"
    finished(harness, control.post(rollback, json={}, headers=harness.headers()))
    finished(harness, control.post(rollback, json={"dryRun": False},
                                   headers=harness.headers()))
    assert {eid for eid, e in data.documents(db, schema.EVENTS).items()
            if e["processed"]} == {"live", "liveagain"}
    assert wallets(db) == {**{f"c{n}": 0 for n in range(5)}, "c0": 11}
    data.assert_ledger_consistent(db)


def test_a_live_retry_after_the_breaker_completes_and_says_what_a_replay_must_do(
        harness: Harness, control: Any) -> None:
    harness.configure(page_size=PAGE, breaker_min_events=PAGE, breaker_error_rate=0.5)
    db = harness.db
    # Refunds arrive before their orders, whose product is missing: each refund fails, and the
    # breaker stops the run before it reaches the purchases (which have no error record).
    events = [data.refund(f"r{n:02}", f"o{n:02}", data.at(1, n), 250) for n in range(PAGE)]
    events += [data.purchase(f"e{n:02}", f"o{n:02}", data.at(1, 600 + n), f"c{n % 3}",
                             [("gone", 2)]) for n in range(PAGE)]
    data.put(db, *events)
    stopped = finished(harness, harness.start(type="webhook_replay", startDate="2025-01-01",
                                              endDate="2025-01-01"), status="failed")
    assert stopped["statusReason"].startswith("circuit breaker: ")
    assert "a new replay of its range" in stopped["statusReason"]
    assert set(data.documents(db, f"{schema.RUNS}/{stopped['migrationId']}/errors")) == {
        f"r{n:02}" for n in range(PAGE)}
    data.product(db, "gone", 5)  # the operator fixes the cause

    retry = control.post(f"/api/admin/dataMigrations/{stopped['migrationId']}/retry",
                         json={"code": "purchase_not_found"}, headers=harness.headers())
    run = finished(harness, retry)

    assert (run["errors"], run["applied"]) == (0, 2 * PAGE)  # refunds, and purchases pulled
    rows = data.documents(db, f"{schema.RUNS}/{stopped['migrationId']}/errors")
    assert {row.get("resolvedBy") for row in rows.values()} == {run["migrationId"]}
    assert set(data.credited_orders(db).values()) == {1}
    assert len(data.credited_orders(db)) == PAGE
    # Each order: 2 x 5 points, less floor(10 * 250 / 1000) for its refund.
    assert wallets(db) == {"c0": 14 * 8, "c1": 13 * 8, "c2": 13 * 8}
    data.assert_ledger_consistent(db)
