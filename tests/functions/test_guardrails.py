"""The money guardrails through the functions on the Firestore emulator: a page that would cross
``maxPoints``, ``maxPointsPerCustomer`` or ``allowNegativeWallets: false`` commits nothing, the
run pauses saying which cap, the points so far and the customer, and ``resume`` with a raised
cap (or ``force``) goes on from that page, each order credited once."""

from __future__ import annotations

from typing import Any

import pytest
from functions_framework import create_app

from shared.adapters import schema
from tests import data
from tests.functions.conftest import SOURCE, Harness

DAY = {"type": "webhook_replay", "startDate": "2025-01-01", "endDate": "2025-01-01"}


@pytest.fixture
def control(harness: Harness) -> Any:
    return create_app("backfill_control", SOURCE).test_client()


def act(harness: Harness, control: Any, migration_id: str, action: str,
        body: dict[str, Any] | None = None) -> Any:
    return control.post(f"/api/admin/dataMigrations/{migration_id}/{action}", json=body,
                        headers=harness.headers())


def ten_point_purchases(harness: Harness, count: int, customer: str | None = None) -> None:
    """``count`` purchases on day 1 of one 10-point product each, one order each."""
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *(data.purchase(f"e{n:03}", f"o{n:03}", data.at(1, n),
                                         customer or f"c{n % 4}") for n in range(count)))


def paused_run(harness: Harness, **body: Any) -> tuple[str, dict[str, Any]]:
    answer = harness.start(**DAY, **body)
    assert answer.status_code == 202, answer.get_json()
    migration_id: str = answer.get_json()["migrationId"]
    harness.deliver_all()
    return migration_id, harness.run(migration_id)


def test_a_page_past_max_points_commits_nothing_and_a_raised_cap_resumes_it(
        harness: Harness, control: Any) -> None:
    harness.configure(page_size=10)
    ten_point_purchases(harness, 30)

    # Pages of 10 purchases move 100 points each: the second would reach 200, past 150.
    migration_id, run = paused_run(harness, maxPoints=150)

    assert run["status"] == "paused", run
    assert "guardrail maxPoints=150" in run["statusReason"]
    assert "would move 100 more" in run["statusReason"]
    assert run["statusHistory"][-1]["by"] == "guardrail"
    # Exactly the first page: its entries, its wallets, its flags; nothing of the second.
    assert len(data.credited_orders(harness.db)) == 10
    assert sum(data.assert_ledger_consistent(harness.db).values()) == 100
    flagged = [e for e in data.documents(harness.db, schema.EVENTS).values() if e["processed"]]
    assert len(flagged) == 10
    assert run["applied"] == 10

    # Resuming without a higher cap pauses at the same page again, writing nothing.
    act(harness, control, migration_id, "resume")
    harness.deliver_all()
    assert harness.run(migration_id)["status"] == "paused"
    assert len(data.credited_orders(harness.db)) == 10

    resumed = act(harness, control, migration_id, "resume", {"maxPoints": 300})
    assert resumed.status_code == 200, resumed.get_json()
    harness.deliver_all()
    done = harness.run(migration_id)

    assert done["status"] == "completed", done
    assert set(data.credited_orders(harness.db).values()) == {1}
    assert len(data.credited_orders(harness.db)) == 30
    assert sum(data.assert_ledger_consistent(harness.db).values()) == 300
    # Nothing is left reserved: every chunk gave back what it did not spend.
    pool = schema.pool_ref(harness.db, migration_id).get().to_dict()
    assert pool == {"reserved": 300}


def test_a_cap_that_fits_the_run_never_pauses_it_and_the_pool_counts_each_point(
        harness: Harness) -> None:
    harness.configure(page_size=7)
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(60, days=3))
    body = {**DAY, "endDate": "2025-01-03", "maxPoints": 10_000}

    migration_id = harness.start(**body).get_json()["migrationId"]
    harness.deliver_all(twice=True)
    run = harness.run(migration_id)

    assert run["status"] == "completed", run
    moved = sum(data.assert_ledger_consistent(harness.db).values())
    assert schema.pool_ref(harness.db, migration_id).get().to_dict() == {"reserved": moved}
    chunks = [chunk.to_dict() or {} for chunk in
              schema.run_ref(harness.db, migration_id).collection(schema.CHUNKS).stream()]
    assert chunks and all(chunk.get("allowance", 0) == 0 for chunk in chunks)


def test_a_customer_past_max_points_per_customer_is_named_and_force_lifts_the_caps(
        harness: Harness, control: Any) -> None:
    harness.configure(page_size=4)
    data.product(harness.db, "p1", 10)
    # c1 buys six times (60 points); the others once each.
    data.put(harness.db, *(data.purchase(f"e{n:03}", f"o{n:03}", data.at(1, n),
                                         "c1" if n % 2 == 0 else f"x{n}") for n in range(12)))

    migration_id, run = paused_run(harness, maxPointsPerCustomer=25)

    assert run["status"] == "paused", run
    assert "maxPointsPerCustomer=25" in run["statusReason"]
    assert "customer c1" in run["statusReason"]
    # Pages of four: c1's first two purchases (20 points) landed; the page with the third not.
    wallets = data.assert_ledger_consistent(harness.db)
    assert wallets["c1"] == 20
    assert sum(data.credited_orders(harness.db).values()) == 4

    refused = act(harness, control, migration_id, "resume",
                  {"force": True, "maxPointsPerCustomer": 100})
    assert refused.status_code == 400 and refused.get_json()["field"] == "force"
    act(harness, control, migration_id, "resume", {"force": True})
    harness.deliver_all()

    assert harness.run(migration_id)["status"] == "completed"
    assert data.assert_ledger_consistent(harness.db)["c1"] == 60
    assert set(data.credited_orders(harness.db).values()) == {1}
    assert len(data.credited_orders(harness.db)) == 12


def test_a_page_that_would_take_a_wallet_below_zero_pauses_when_negatives_are_not_allowed(
        harness: Harness, control: Any) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, data.purchase("buy", "o1", data.at(1), total=100, customer="c1"))
    first, _ = paused_run(harness)
    assert harness.run(first)["status"] == "completed"
    # The customer spent the points before the refund reached the ledger.
    harness.db.collection(schema.LEDGER).document("spend_1").set(
        {"customerId": "c1", "type": "redemption", "points": -10, "orderId": "-"})
    harness.db.collection(schema.WALLETS).document("c1").update({"balance": 0})
    data.put(harness.db, data.refund("r1", "o1", data.at(1, 30), 100))
    before = data.ledger_state(harness.db)

    migration_id, run = paused_run(harness, allowNegativeWallets=False, force=True)

    assert run["status"] == "paused", run
    assert "allowNegativeWallets=false" in run["statusReason"]
    assert "customer c1" in run["statusReason"]
    assert data.ledger_state(harness.db) == before

    act(harness, control, migration_id, "resume", {"allowNegativeWallets": True})
    harness.deliver_all()
    assert harness.run(migration_id)["status"] == "completed"
    assert data.documents(harness.db, schema.WALLETS)["c1"]["balance"] == -10


def test_caps_come_from_the_settings_and_a_request_names_its_own(harness: Harness) -> None:
    harness.configure(max_points=5000, max_points_per_customer=400,
                      allow_negative_wallets=False)
    data.product(harness.db, "p1", 10)

    defaulted = harness.start(**DAY).get_json()["migrationId"]
    named = harness.start(**DAY, maxPoints=7, force=True).get_json()["migrationId"]
    bad = harness.start(**DAY, maxPoints=0, force=True)

    runs = {run_id: schema.run_ref(harness.db, run_id).get().to_dict() or {}
            for run_id in (defaulted, named)}
    assert (runs[defaulted]["maxPoints"], runs[defaulted]["maxPointsPerCustomer"],
            runs[defaulted]["allowNegativeWallets"]) == (5000, 400, False)
    assert runs[named]["maxPoints"] == 7
    assert bad.status_code == 400 and bad.get_json()["field"] == "maxPoints"
