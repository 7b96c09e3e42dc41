"""Rollback of a run over HTTP on the Firestore emulator: a dry run first, then compensating
entries for exactly what the run wrote (once, however often its task is delivered), the wallets
moved with them, the events unflagged; a replay afterwards restores the ledger exactly."""

from __future__ import annotations

from typing import Any

import pytest
from functions_framework import create_app

from shared.adapters import schema
from tests import data
from tests.functions.conftest import SOURCE, Harness

RANGE = {"startDate": "2025-01-01", "endDate": "2025-01-03"}


@pytest.fixture
def control(harness: Harness) -> Any:
    return create_app("backfill_control", SOURCE).test_client()


def roll_back(harness: Harness, control: Any, migration_id: str, **body: Any) -> Any:
    return control.post(f"/api/admin/dataMigrations/{migration_id}/rollback", json=body,
                        headers=harness.headers())


def finished(harness: Harness, response: Any, twice: bool = False) -> dict[str, Any]:
    assert response.status_code == 202, response.get_json()
    harness.deliver_all(twice=twice)
    run: dict[str, Any] = harness.run(response.get_json()["migrationId"])
    assert run["status"] == "completed", run
    return run


def seed(harness: Harness) -> None:
    """Purchases of four customers, partial and full refunds, a chargeback after a full
    refund, and one order the live path credited already (which no run here touches)."""
    db = harness.db
    data.product(db, "p1", 7)
    data.product(db, "p2", 3)
    data.put(db, *(data.purchase(f"e{n}", f"o{n}", data.at(1 + n % 3, n), f"c{n % 4}",
                                 [("p1", 1 + n % 2), ("p2", 1)], total=999)
                   for n in range(24)),
             data.refund("r1", "o1", data.at(2, 300), 333),
             data.refund("r2", "o1", data.at(3, 300), 333),
             data.refund("r3", "o5", data.at(3, 301), 999),
             data.refund("cb", "o5", data.at(3, 302), 999, kind="ON_CHARGEBACK"),
             data.purchase("live", "olive", data.at(1, 900), "c0", processed=True))
    ledger = db.collection(schema.LEDGER)
    ledger.document("purchase_olive").set({
        "customerId": "c0", "type": "purchase", "points": 7, "orderId": "olive",
        "sourceEventId": "live", "source": "webhook", "migrationId": None, "orderTotal": 1000,
        "refundedAmount": 0, "reversedPoints": 0})
    db.collection(schema.WALLETS).document("c0").set({"balance": 7})


def snapshot(harness: Harness) -> dict[str, Any]:
    """What the ledger is worth: wallets, each order's net points, each purchase entry's
    refund state, and which events are flagged processed."""
    purchases = {entry_id: (entry["points"], entry["refundedAmount"], entry["reversedPoints"])
                 for entry_id, entry in data.documents(harness.db, schema.LEDGER).items()
                 if entry["type"] == "purchase" and not entry.get("rolledBackBy")}
    wallets = data.assert_ledger_consistent(harness.db)
    return {"wallets": {customer: balance for customer, balance in wallets.items() if balance},
            "net": {order: points for order, points in data.net_points(harness.db).items()
                    if points},
            "purchases": purchases,
            "processed": {eid for eid, event in data.documents(harness.db, schema.EVENTS).items()
                          if event["processed"]}}


def test_a_rollback_then_a_replay_restores_the_ledger_exactly(
        harness: Harness, control: Any) -> None:
    seed(harness)
    before = snapshot(harness)
    replay = finished(harness, harness.start(type="webhook_replay", **RANGE))
    applied = snapshot(harness)
    written = {entry_id for entry_id, entry in data.documents(harness.db, schema.LEDGER).items()
               if entry["migrationId"] == replay["migrationId"]}

    dry = finished(harness, roll_back(harness, control, replay["migrationId"]))
    assert snapshot(harness) == applied  # a dry run changes nothing
    live = finished(harness, roll_back(harness, control, replay["migrationId"], dryRun=False),
                    twice=True)
    undone = snapshot(harness)
    ledger = data.documents(harness.db, schema.LEDGER)

    assert (replay["applied"], len(written)) == (27, 27)  # 24 purchases, 3 reversals
    # ... and the chargeback after a full refund, settled without an entry: unflagged too.
    assert replay["skipped"] == 1
    assert (dry["type"], dry["dryRun"], dry["applied"]) == ("rollback", True, 28)
    assert dry["rollbackOf"] == {"migrationId": replay["migrationId"], "entries": 27}
    assert (live["applied"], live["errors"], live["taken"]) == (28, 0, 28)
    assert undone == before  # wallets, orders, refunds and flags as before the replay
    assert {ledger[entry_id]["rolledBackBy"] for entry_id in written} == {live["migrationId"]}
    assert sum(entry["type"] == "rollback" for entry in ledger.values()) == 27
    assert live["pointsMoved"] == -replay["pointsMoved"]

    again = finished(harness, harness.start(type="webhook_replay", **RANGE), twice=True)

    assert again["applied"] == 27
    assert snapshot(harness) == applied
    ledger = data.documents(harness.db, schema.LEDGER)
    assert not any(ledger[entry_id].get("rolledBackBy") for entry_id in written)
    assert sum(entry["type"] == "reinstatement" for entry in ledger.values()) == 27


def test_a_purchase_reversed_since_by_another_run_is_left_for_a_person(
        harness: Harness, control: Any) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, data.purchase("e1", "o1", data.at(1)),
             data.purchase("e2", "o2", data.at(1, 5)))
    replay = finished(harness, harness.start(type="webhook_replay", **RANGE))
    data.put(harness.db, data.refund("r1", "o1", data.at(2), 500))
    finished(harness, harness.start(type="reversal_backfill", **RANGE))
    finished(harness, roll_back(harness, control, replay["migrationId"]))

    live = finished(harness, roll_back(harness, control, replay["migrationId"], dryRun=False))

    assert (live["applied"], live["errors"]) == (1, 1)
    assert live["errorCodes"] == {"reversed_since": 1}
    assert live["firstErrors"][0]["eventId"] == "purchase_o1"
    assert data.assert_ledger_consistent(harness.db) == {"c1": 5}
    assert data.net_points(harness.db) == {"o1": 5, "o2": 0}


def test_rollback_refusals_name_the_reason_and_start_nothing(
        harness: Harness, control: Any) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(6, days=1))
    dry_replay = finished(harness, harness.start(type="webhook_replay", dryRun=True, **RANGE))
    replay = finished(harness, harness.start(type="webhook_replay", **RANGE))
    runs = set(data.documents(harness.db, schema.RUNS))

    refusals = {
        "live before a dry run": roll_back(harness, control, replay["migrationId"],
                                           dryRun=False),
        "of a dry run": roll_back(harness, control, dry_replay["migrationId"]),
        "of no run": roll_back(harness, control, "webhook_replay_1"),
        "by a non-operator": control.post(
            f"/api/admin/dataMigrations/{replay['migrationId']}/rollback", json={},
            headers=harness.headers("someone@example.com")),
        "bad body": roll_back(harness, control, replay["migrationId"], dryRun="yes"),
        "through the trigger": harness.start(type="rollback", **RANGE),
    }

    answers = {name: (response.status_code, response.get_json().get("message", ""))
               for name, response in refusals.items()}
    assert answers["live before a dry run"][0] == 409
    assert "dry-run the rollback" in answers["live before a dry run"][1]
    assert answers["of a dry run"] == (409, f"run {dry_replay['migrationId']} was a dry run "
                                            "and wrote no ledger entry")
    assert answers["of no run"][0] == 404
    assert answers["by a non-operator"][0] == 403
    assert answers["bad body"][0] == 400
    assert answers["through the trigger"][0] == 400
    assert "POST .../{migrationId}/rollback" in answers["through the trigger"][1]
    assert set(data.documents(harness.db, schema.RUNS)) == runs

    finished(harness, roll_back(harness, control, replay["migrationId"]))
    live = finished(harness, roll_back(harness, control, replay["migrationId"], dryRun=False))
    twice = roll_back(harness, control, replay["migrationId"], dryRun=False)
    of_rollback = roll_back(harness, control, live["migrationId"])
    retried = control.post(f"/api/admin/dataMigrations/{live['migrationId']}/retry", json={},
                           headers=harness.headers())

    assert (twice.status_code, twice.get_json()["blocking"]) == (409, [live["migrationId"]])
    assert of_rollback.status_code == 409
    assert "replay its range" in of_rollback.get_json()["message"]
    assert retried.status_code == 409
    assert set(data.assert_ledger_consistent(harness.db).values()) == {0}


def test_a_rollback_waits_for_an_active_run_and_refuses_while_its_run_is_active(
        harness: Harness, control: Any) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(6, days=1))
    started = harness.start(type="webhook_replay", **RANGE).get_json()["migrationId"]

    refused = roll_back(harness, control, started)

    assert refused.status_code == 409
    assert "roll it back once it has ended" in refused.get_json()["message"]
    harness.deliver_all()
    run = harness.run(started)
    assert run["pitrTimestamp"].endswith(":00Z")
    assert run["pitrTimestamp"] <= run["createdAt"]


def stored_as_is(harness: Harness) -> dict[str, dict[str, Any]]:
    """Every ledger entry, wallet and event with its update time: a document rewritten with
    the same fields is not one left as it was."""
    return {collection: {snap.id: (snap.to_dict(), snap.update_time)
                         for snap in harness.db.collection(collection).stream()}
            for collection in (schema.LEDGER, schema.WALLETS, schema.EVENTS)}


def test_a_partial_rollback_undoes_only_its_customers_and_orders_and_a_replay_reinstates_them(
        harness: Harness, control: Any) -> None:
    seed(harness)
    replay = finished(harness, harness.start(type="webhook_replay", **RANGE))
    applied, replayed = snapshot(harness), stored_as_is(harness)
    scope = {"customerIds": ["c1"], "orderIds": ["o1", "o5", "o9"]}  # c1's orders, some
    in_scope = {"o1", "o5", "o9"}

    whole_dry = finished(harness, roll_back(harness, control, replay["migrationId"]))
    refused = roll_back(harness, control, replay["migrationId"], dryRun=False, **scope)
    dry = finished(harness, roll_back(harness, control, replay["migrationId"], **scope))
    assert stored_as_is(harness) == replayed  # dry runs change nothing
    live = finished(harness, roll_back(harness, control, replay["migrationId"], dryRun=False,
                                       **scope), twice=True)
    after = stored_as_is(harness)

    assert whole_dry["applied"] == 28
    assert refused.status_code == 409  # the whole run's dry run is not this scope's
    assert "dry-run the rollback of customers c1 and orders o1, o5, o9" in \
        refused.get_json()["message"]
    assert dry["target"] == live["target"] == scope
    # o1: purchase and two reversals; o5: purchase and a reversal, its chargeback unflagged;
    # o9: a purchase. Everything else the replay wrote was read and left alone.
    assert (live["applied"], live["errors"]) == (7, 0)
    assert live["outside"] == 28 - 7
    for collection, documents_ in replayed.items():
        for doc_id, (fields, updated) in documents_.items():
            touched = (collection == schema.WALLETS and doc_id == "c1") or (
                fields.get("orderId") in in_scope if collection == schema.LEDGER else
                collection == schema.EVENTS and doc_id in {"e1", "e5", "e9", "r1", "r2", "r3",
                                                           "cb"})
            if not touched:
                assert after[collection][doc_id] == (fields, updated), (collection, doc_id)
    ledger = data.documents(harness.db, schema.LEDGER)
    rolled_back = {entry_id for entry_id, entry in ledger.items()
                   if entry.get("rolledBackBy") == live["migrationId"]}
    assert {ledger[entry_id]["orderId"] for entry_id in rolled_back} == in_scope
    net = data.net_points(harness.db)
    assert all(net[order] == 0 for order in in_scope)
    assert all(net[order] == applied["net"].get(order, 0) for order in net
               if order not in in_scope)
    data.assert_ledger_consistent(harness.db)

    # Another scope is no repeat of this one: its own dry run, then live, without force.
    finished(harness, roll_back(harness, control, replay["migrationId"], orderIds=["o2"]))
    other = finished(harness, roll_back(harness, control, replay["migrationId"],
                                        dryRun=False, orderIds=["o2"]))
    again = roll_back(harness, control, replay["migrationId"], dryRun=False, **scope)
    assert other["applied"] == 1
    assert again.status_code == 409
    assert again.get_json()["blocking"] == [live["migrationId"]]

    reinstated = finished(harness, harness.start(type="webhook_replay", **RANGE), twice=True)

    # The six entries and o2's purchase, once each; the chargeback settled again.
    assert (reinstated["applied"], reinstated["skipped"]) == (7, 1)
    assert snapshot(harness) == applied


def test_a_partial_rollback_refuses_a_bad_scope_and_starts_nothing(
        harness: Harness, control: Any) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(3, days=1))
    replay = finished(harness, harness.start(type="webhook_replay", **RANGE))
    runs = set(data.documents(harness.db, schema.RUNS))

    bodies: dict[str, dict[str, Any]] = {
        "empty": {"customerIds": []},
        "not ids": {"orderIds": ["a/b"]},
        "not a list": {"customerIds": "c1"},
        "unknown field": {"eventIds": ["e1"]},
    }
    answers = {name: roll_back(harness, control, replay["migrationId"], **body)
               for name, body in bodies.items()}

    for name, response in answers.items():
        assert response.status_code == 400, name
        assert response.get_json()["field"].split(".")[0] in (
            "customerIds", "orderIds", "eventIds"), name
    assert set(data.documents(harness.db, schema.RUNS)) == runs
