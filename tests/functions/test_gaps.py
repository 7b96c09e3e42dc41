"""``GET /api/admin/gaps`` through the status function on the Firestore emulator: per day, what
a backfill would find to do; nothing written; zero once the runs it names have run."""

from __future__ import annotations

from typing import Any

import pytest

from shared.adapters import schema
from tests import data
from tests.functions.conftest import Harness

URL = "/api/admin/gaps"


def gaps(harness: Harness, email: str = "ops@example.com", **params: str) -> Any:
    return harness.status.get(URL, query_string=params, headers=harness.headers(email))


def seed(harness: Harness) -> None:
    db = harness.db
    data.product(db, "p1", 10)
    settled = data.refund("r-settled", "o-full", data.at(2, 40), 100)
    settled.update(processed=True, backfillOutcome="skipped")
    lost_reversal = data.refund("cb-lost", "o-kept", data.at(2, 50), 100, kind="ON_CHARGEBACK")
    lost_reversal.update(processed=True)
    data.put(db, *(data.purchase(f"u{n}", f"ou{n}", data.at(1, n)) for n in range(3)),
             data.refund("r-new", "ou0", data.at(1, 30), 500),
             data.purchase("lost1", "olost1", data.at(2, 1), processed=True),
             data.purchase("lost2", "olost2", data.at(2, 2), processed=True),
             data.purchase("kept", "o-kept", data.at(2, 3), processed=True),
             settled, lost_reversal)
    db.collection(schema.LEDGER).document("purchase_o-kept").set({
        "customerId": "c1", "type": "purchase", "points": 10, "orderId": "o-kept",
        "sourceEventId": "kept", "source": "webhook", "migrationId": None,
        "orderTotal": 1000, "refundedAmount": 0, "reversedPoints": 0})
    db.collection(schema.WALLETS).document("c1").set({"balance": 10})


def test_gaps_per_day_then_none_once_the_runs_it_names_have_run(harness: Harness) -> None:
    seed(harness)
    before = data.ledger_state(harness.db)

    found = gaps(harness, startDate="2025-01-01", endDate="2025-01-03")

    assert found.status_code == 200, found.get_json()
    body = found.get_json()
    day1, day2, day3 = body["days"]
    assert day1 == {"date": "2025-01-01", "complete": True,
                    "unprocessed": {"ON_ORDER_COMPLETED": 3, "ON_REFUND": 1, "ON_CHARGEBACK": 0},
                    "reversalsMissing": 1, "purchasesWithoutEntry": 0,
                    "scanned": {"reversals": 1, "processedPurchases": 0}}
    assert (day2["unprocessed"], day2["reversalsMissing"], day2["purchasesWithoutEntry"]) == (
        {"ON_ORDER_COMPLETED": 0, "ON_REFUND": 0, "ON_CHARGEBACK": 0}, 1, 2)
    assert day2["scanned"] == {"reversals": 2, "processedPurchases": 3}
    assert (day3["reversalsMissing"], day3["purchasesWithoutEntry"]) == (0, 0)
    assert body["totals"] == {"unprocessed": {"ON_ORDER_COMPLETED": 3, "ON_REFUND": 1,
                                              "ON_CHARGEBACK": 0},
                              "reversalsMissing": 2, "purchasesWithoutEntry": 2}
    assert [step.split(" over ")[0] for step in body["next"]] == [
        "webhook_replay", "webhook_replay with includeProcessed", "reversal_backfill"]
    assert "2025-01-01..2025-01-02" in body["next"][2]
    assert data.ledger_state(harness.db) == before
    assert data.documents(harness.db, schema.RUNS) == {}

    for run in ({"type": "webhook_replay"}, {"type": "webhook_replay", "includeProcessed": True},
                {"type": "reversal_backfill"}):
        started = harness.start(**run, startDate="2025-01-01", endDate="2025-01-03")
        assert started.status_code == 202, started.get_json()
        harness.deliver_all()

    after = gaps(harness, startDate="2025-01-01", endDate="2025-01-03").get_json()
    assert after["totals"] == {"unprocessed": {"ON_ORDER_COMPLETED": 0, "ON_REFUND": 0,
                                               "ON_CHARGEBACK": 0},
                               "reversalsMissing": 0, "purchasesWithoutEntry": 0}
    assert after["next"] == []


@pytest.mark.parametrize(("params", "field"), [
    ({"endDate": "2025-01-02"}, "startDate"),
    ({"startDate": "2025-01-01"}, "endDate"),
    ({"startDate": "2025-1-1", "endDate": "2025-01-02"}, "startDate"),
    ({"startDate": "2025-01-03", "endDate": "2025-01-02"}, "endDate"),
    ({"startDate": "2025-01-01", "endDate": "2025-02-01"}, "endDate"),
    ({"startDate": "2999-01-01", "endDate": "2999-01-02"}, "startDate"),
])
def test_a_bad_range_gets_a_400_naming_the_field(harness: Harness, params: dict[str, str],
                                                 field: str) -> None:
    response = gaps(harness, **params)

    assert response.status_code == 400
    assert response.get_json()["field"] == field


def test_gaps_admit_operators_only(harness: Harness) -> None:
    response = gaps(harness, "someone@example.com", startDate="2025-01-01",
                    endDate="2025-01-01")

    assert response.status_code == 403
