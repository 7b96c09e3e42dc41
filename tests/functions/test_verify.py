"""``ledger_verify`` over HTTP on the Firestore emulator: it finds every kind of corruption
planted in a replayed ledger, reports each as a finding (CSV, status by code) without writing
anything, then with ``repair`` fixes what is safe and leaves the rest for a person."""

from __future__ import annotations

import csv
import io
from typing import Any

from google.cloud import firestore

from shared.adapters import schema
from tests import data
from tests.functions.conftest import Harness

RANGE = {"startDate": "2025-01-01", "endDate": "2025-01-01"}
# What a person must settle: repair leaves these.
FOR_A_PERSON = {"wrong_points": 1, "orphan_entry": 1, "duplicate_entries": 1,
                "reversal_over_purchase": 1, "reversal_mismatch": 2}


def ledger_entry(db: firestore.Client, entry_id: str) -> Any:
    return db.collection(schema.LEDGER).document(entry_id)


def wallet(db: firestore.Client, customer: str, delta: int) -> None:
    db.collection(schema.WALLETS).document(customer).set(
        {"balance": firestore.Increment(delta)}, merge=True)


def planted(harness: Harness) -> None:
    """A replayed ledger of customers c1..c10, then one corruption of each kind."""
    db = harness.db
    data.product(db, "p1", 10)
    data.put(db, *(data.purchase(f"e{n}", f"o{n}", data.at(1, n), f"c{n}")
                   for n in range(1, 11)),
             data.refund("r7", "o7", data.at(1, 30), 1000),
             data.refund("r8", "o8", data.at(1, 31), 500),
             data.refund("r10", "o10", data.at(1, 32), 500))
    started = harness.start(type="webhook_replay", **RANGE)
    assert started.status_code == 202
    harness.deliver_all()
    # missing_entry, the credit never happened (wallet agrees with the entries left):
    ledger_entry(db, "purchase_o2").delete()
    wallet(db, "c2", -10)
    # missing_entry, the credit happened (the wallet shows it: drift +10):
    ledger_entry(db, "purchase_o3").delete()
    # wrong_points (the wallet moved with it, so no drift):
    ledger_entry(db, "purchase_o4").update({"points": 99})
    wallet(db, "c4", 89)
    # unflagged_event:
    db.collection(schema.EVENTS).document("e5").update({"processed": False})
    # orphan_entry: an entry whose event does not exist
    ledger_entry(db, "purchase_oghost").set({
        "customerId": "c1", "type": "purchase", "points": 10, "orderId": "oghost",
        "sourceEventId": "ghost", "source": "webhook", "orderTotal": 1000,
        "refundedAmount": 0, "reversedPoints": 0})
    wallet(db, "c1", 10)
    # duplicate_entries: a second purchase entry for one order
    ledger_entry(db, "purchase_o6_again").set({
        "customerId": "c6", "type": "purchase", "points": 10, "orderId": "o6",
        "sourceEventId": "e6", "source": "webhook", "orderTotal": 1000,
        "refundedAmount": 0, "reversedPoints": 0})
    wallet(db, "c6", 10)
    # reversal_over_purchase (and its mismatch): o7 is reversed 15 of its 10 points
    ledger_entry(db, "reversal_r7x").set({
        "customerId": "c7", "type": "reversal", "points": -5, "orderId": "o7",
        "sourceEventId": "r7", "source": "webhook", "reversesEntryId": "purchase_o7",
        "amount": 500})
    wallet(db, "c7", -5)
    # reversal_mismatch: o8's reversedPoints is not floor(10 * 500 / 1000)
    ledger_entry(db, "purchase_o8").update({"reversedPoints": 7})
    # wallet_drift with nothing missing:
    wallet(db, "c9", 3)
    # missing_reversal, the debit never happened:
    ledger_entry(db, "reversal_r10").delete()
    ledger_entry(db, "purchase_o10").update({"refundedAmount": 0, "reversedPoints": 0})
    wallet(db, "c10", 5)


def verify(harness: Harness, **body: Any) -> dict[str, Any]:
    started = harness.start(type="ledger_verify", **RANGE, **body)
    assert started.status_code == 202, started.get_json()
    harness.deliver_all()
    run: dict[str, Any] = harness.run(started.get_json()["migrationId"])
    assert run["status"] == "completed", run
    return run


def findings(harness: Harness, migration_id: str) -> list[dict[str, str]]:
    report = harness.status.get(f"/api/admin/dataMigrations/{migration_id}/errors",
                                headers=harness.headers())
    assert report.status_code == 200
    return list(csv.DictReader(io.StringIO(report.get_data(as_text=True))))


def test_verify_finds_every_planted_corruption_and_repairs_what_is_safe(
        harness: Harness) -> None:
    planted(harness)
    before = data.ledger_state(harness.db)

    found = verify(harness)

    assert found["errorCodes"] == {"missing_entry": 2, "missing_reversal": 1,
                                   "unflagged_event": 1, "wallet_drift": 2, **FOR_A_PERSON}
    rows = findings(harness, found["migrationId"])
    subjects = {(row["code"], row["subject"]) for row in rows}
    assert subjects >= {("missing_entry", "webhookEvents/e2"),
                        ("missing_entry", "webhookEvents/e3"),
                        ("wallet_drift", "wallets/c3"), ("wallet_drift", "wallets/c9"),
                        ("wrong_points", "ledgerEntries/purchase_o4"),
                        ("unflagged_event", "webhookEvents/e5"),
                        ("orphan_entry", "ledgerEntries/purchase_oghost"),
                        ("duplicate_entries", "orders/o6"),
                        ("reversal_over_purchase", "ledgerEntries/purchase_o7"),
                        ("reversal_mismatch", "ledgerEntries/purchase_o7"),
                        ("reversal_mismatch", "ledgerEntries/purchase_o8"),
                        ("missing_reversal", "webhookEvents/r10")}
    assert {row["repaired"] for row in rows} == {"False"}
    assert data.ledger_state(harness.db) == before  # a report writes nothing

    repaired = verify(harness, repair=True)

    assert repaired["errorCodes"] == found["errorCodes"]
    rows = findings(harness, repaired["migrationId"])
    assert {row["code"] for row in rows if row["repaired"] == "True"} == {
        "missing_entry", "missing_reversal", "unflagged_event", "wallet_drift"}
    assert {row["code"] for row in rows if row["repaired"] == "False"} == set(FOR_A_PERSON)
    ledger = data.documents(harness.db, schema.LEDGER)
    wallets = {cid: w["balance"] for cid, w in
               data.documents(harness.db, schema.WALLETS).items()}
    assert (ledger["purchase_o2"]["points"], wallets["c2"]) == (10, 10)  # credited now
    assert (ledger["purchase_o3"]["points"], wallets["c3"]) == (10, 10)  # credited before
    assert (ledger["reversal_r10"]["points"], wallets["c10"]) == (-5, 5)
    adjustment, = (entry for entry in ledger.values() if entry["type"] == "adjustment")
    assert (adjustment["customerId"], adjustment["points"], wallets["c9"]) == ("c9", 3, 13)
    assert data.documents(harness.db, schema.EVENTS)["e5"]["processed"] is True

    again = verify(harness)

    assert again["errorCodes"] == FOR_A_PERSON
    # What a person settles (here: by hand, as the hints say), verify no longer finds.
    db = harness.db
    ledger_entry(db, "purchase_o4").update({"points": 10})
    wallet(db, "c4", -89)
    for entry_id, customer, points in (("purchase_oghost", "c1", 10),
                                       ("purchase_o6_again", "c6", 10),
                                       ("reversal_r7x", "c7", -5)):
        ledger_entry(db, entry_id).delete()
        wallet(db, customer, -points)
    ledger_entry(db, "purchase_o8").update({"reversedPoints": 5})
    assert verify(harness)["errorCodes"] == {}
    data.assert_ledger_consistent(db)
