"""Targeted runs over HTTP on the Firestore emulator: ``eventTypes``, ``customerIds``,
``orderIds`` and ``eventIds`` narrow a replay or a reversal backfill; events outside the target
stay exactly as they were and are counted as ``outside``; a canary followed by the full run
applies every event once."""

from __future__ import annotations

from typing import Any

import pytest

from shared.adapters import schema
from tests import data
from tests.functions.conftest import Harness

RANGE = {"startDate": "2025-01-01", "endDate": "2025-01-02"}


def seed(harness: Harness) -> None:
    """Three customers' purchases over two days; c1's second order refunded the next day, its
    purchase unprocessed (the refund's page comes first: its purchase must be pulled in)."""
    db = harness.db
    data.product(db, "p1", 10)
    data.put(db, *(data.purchase(f"e{c}{n}", f"o{c}{n}", data.at(1 + n % 2, 10 * n), f"c{c}")
                   for c in (1, 2, 3) for n in range(6)),
             data.refund("r1", "o11", data.at(1, 1), 500),
             data.refund("r2", "o21", data.at(2, 700), 1000))


def run_of(harness: Harness, **body: Any) -> dict[str, Any]:
    started = harness.start(**body)
    assert started.status_code == 202, started.get_json()
    harness.deliver_all()
    result: dict[str, Any] = harness.run(started.get_json()["migrationId"])
    return result


def test_a_canary_on_one_customer_then_the_full_run_applies_every_event_once(
        harness: Harness) -> None:
    seed(harness)
    before = data.documents(harness.db, schema.EVENTS)

    canary = run_of(harness, type="webhook_replay", customerIds=["c1"], **RANGE)

    events = data.documents(harness.db, schema.EVENTS)
    touched = {eid for eid, event in events.items() if event != before[eid]}
    assert canary["status"] == "completed"
    assert canary["target"] == {"customerIds": ["c1"]}
    assert (canary["applied"], canary["outside"], canary["skipped"]) == (7, 13, 0)
    assert touched == {f"e1{n}" for n in range(6)} | {"r1"}  # c1's events alone
    wallets = data.assert_ledger_consistent(harness.db)
    assert wallets == {"c1": 60 - 5}

    full = run_of(harness, type="webhook_replay", **RANGE)

    assert (full["applied"], full["outside"]) == (13, 0)
    assert set(data.credited_orders(harness.db).values()) == {1}
    assert data.assert_ledger_consistent(harness.db) == {"c1": 55, "c2": 50, "c3": 60}


def test_event_types_order_ids_and_event_ids_narrow_a_run(harness: Harness) -> None:
    seed(harness)
    run_of(harness, type="webhook_replay", eventTypes=["ON_ORDER_COMPLETED"], **RANGE)
    assert not data.documents(harness.db, schema.EVENTS)["r1"]["processed"]

    by_type = run_of(harness, type="reversal_backfill", eventTypes=["ON_REFUND"],
                     orderIds=["o21"], **RANGE)
    by_id = run_of(harness, type="reversal_backfill", eventIds=["r1"], **RANGE)

    # Event types narrow the selection: the first run read refunds only.
    assert (by_type["total"], by_type["applied"], by_type["outside"]) == (2, 1, 1)
    assert (by_id["applied"], by_id["outside"]) == (1, 1)
    ledger = data.documents(harness.db, schema.LEDGER)
    assert {entry_id for entry_id in ledger if entry_id.startswith("reversal_")} == {
        "reversal_r1", "reversal_r2"}
    data.assert_ledger_consistent(harness.db)


def test_a_targeted_dry_run_leaves_the_events_outside_it_unmarked(harness: Harness) -> None:
    seed(harness)

    dry = run_of(harness, type="webhook_replay", dryRun=True, orderIds=["o30", "o31"], **RANGE)

    marked = {eid for eid, event in data.documents(harness.db, schema.EVENTS).items()
              if event.get("dryRunProcessed")}
    assert (dry["applied"], dry["outside"]) == (2, 18)
    assert marked == {"e30", "e31"}
    assert data.documents(harness.db, schema.LEDGER) == {}


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({"customerIds": []}, "customerIds", "at least 1 item"),
    ({"orderIds": ["a/b"]}, "orderIds.0", "must not contain '/'"),
    ({"eventIds": ["x"] * 501}, "eventIds", "at most 500 items"),
    ({"eventTypes": ["ON_PAYOUT"]}, "eventTypes", "applies only ON_ORDER_COMPLETED"),
    ({"eventTypes": ["ON_REFUND"], "type": "reversal_backfill", "customerIds": [""]},
     "customerIds.0", "at least 1 character"),
    ({"type": "reversal_backfill", "eventTypes": ["ON_ORDER_COMPLETED"]}, "eventTypes",
     "reversal_backfill applies only ON_REFUND, ON_CHARGEBACK"),
])
def test_a_bad_target_gets_a_400_naming_the_field_and_starts_nothing(
        harness: Harness, body: dict[str, Any], field: str, reason: str) -> None:
    response = harness.start(**{"type": "webhook_replay", **RANGE, **body})

    assert response.status_code == 400
    answer = response.get_json()
    assert answer["field"] == field
    assert reason in answer["reason"]
    assert data.documents(harness.db, schema.RUNS) == {}
