"""Refunds and chargebacks through the functions: reversed exactly once, cumulatively."""

from __future__ import annotations

from typing import Any

import pytest
from functions_framework import create_app

from shared.adapters import schema
from shared.backfills.registry import BACKFILLS, BackfillType
from tests import data
from tests.functions.conftest import SOURCE, Harness

REPLAY: dict[str, Any] = {"type": "webhook_replay", "startDate": "2025-01-01",
                          "endDate": "2025-01-04"}
REVERSALS: dict[str, Any] = {**REPLAY, "type": "reversal_backfill"}


def entry(harness: Harness, entry_id: str) -> dict[str, Any]:
    return data.documents(harness.db, schema.LEDGER)[entry_id]


def run_to_end(harness: Harness, twice: bool = False, **body: Any) -> Any:
    migration_id = harness.start(**body).get_json()["migrationId"]
    harness.deliver_all(twice=twice)
    return harness.run(migration_id)


def test_partial_refunds_sum_to_the_order_total(harness: Harness) -> None:
    data.product(harness.db, "p1", 33)
    data.put(harness.db,
             data.purchase("buy", "o1", data.at(1), lines=[("p1", 3)], total=1000),
             data.refund("r1", "o1", data.at(2), 333),
             data.refund("r2", "o1", data.at(3), 333),
             data.refund("r3", "o1", data.at(4), 334))

    run = run_to_end(harness, twice=True, **REPLAY)

    assert (run["applied"], run["errors"]) == (4, 0)
    purchase = entry(harness, "purchase_o1")
    assert (purchase["refundedAmount"], purchase["reversedPoints"]) == (1000, 99)
    assert [entry(harness, f"reversal_{r}")["points"] for r in ("r1", "r2", "r3")] == [
        -32, -33, -34]
    assert data.assert_ledger_consistent(harness.db) == {"c1": 0}


def test_a_chargeback_after_a_full_refund_reverses_nothing_more(harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db,
             data.purchase("buy", "o1", data.at(1), total=500),
             data.refund("r1", "o1", data.at(2), 500),
             data.refund("cb", "o1", data.at(3), 500, kind="ON_CHARGEBACK"))

    run = run_to_end(harness, **REPLAY)

    assert (run["applied"], run["skipped"], run["errors"]) == (2, 1, 0)
    assert "reversal_cb" not in data.documents(harness.db, schema.LEDGER)
    assert data.documents(harness.db, schema.EVENTS)["cb"]["backfillOutcome"] == "skipped"
    assert data.assert_ledger_consistent(harness.db) == {"c1": 0}


def test_a_refund_and_its_purchase_in_one_run_apply_in_any_chunk_order(harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, data.purchase("buy", "o1", data.at(1), lines=[("p1", 4)], total=400),
             data.refund("r1", "o1", data.at(3), 100))
    migration_id = harness.start(**REPLAY).get_json()["migrationId"]
    harness.plan()
    tasks = sorted(harness.dispatcher.take(), key=lambda task: task.chunk_id, reverse=True)

    harness.deliver(tasks)  # the refund's day first

    run = harness.run(migration_id)
    assert (run["status"], run["errors"]) == ("completed", 0)
    assert entry(harness, "reversal_r1")["points"] == -10
    assert data.assert_ledger_consistent(harness.db) == {"c1": 30}


def test_reversal_backfill_repairs_processed_refunds_missing_their_reversal(
        harness: Harness) -> None:
    db = harness.db
    data.product(db, "p1", 10)
    data.put(db, data.purchase("buy1", "o1", data.at(1), total=1000, lines=[("p1", 10)]),
             data.purchase("buy2", "o2", data.at(1), total=1000, lines=[("p1", 10)]))
    run_to_end(harness, **REPLAY)
    # The live path flagged both refunds processed; it wrote only r2's reversal.
    data.put(db, {**data.refund("r1", "o1", data.at(2), 500), "processed": True},
             {**data.refund("r2", "o2", data.at(2), 500), "processed": True})
    run_to_end(harness, **{**REVERSALS, "endDate": "2025-01-02"})  # both reversals, once
    db.collection(schema.LEDGER).document("reversal_r1").delete()
    db.collection(schema.LEDGER).document("purchase_o1").update(
        {"refundedAmount": 0, "reversedPoints": 0})
    db.collection(schema.WALLETS).document("c1").update({"balance": 150})  # r2 stays reversed

    run = run_to_end(harness, **REVERSALS)

    assert (run["total"], run["applied"], run["duplicates"], run["errors"]) == (2, 1, 1, 0)
    assert entry(harness, "reversal_r1")["points"] == -50
    assert data.assert_ledger_consistent(db) == {"c1": 100}


def test_rerunning_reversals_changes_nothing(harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, data.purchase("buy", "o1", data.at(1), total=300),
             data.refund("r1", "o1", data.at(2), 100))
    run_to_end(harness, **REPLAY)
    before = data.ledger_state(harness.db)

    replay_again = run_to_end(harness, **REPLAY)
    reversals = run_to_end(harness, twice=True, **REVERSALS)

    assert replay_again["total"] == 0
    assert (reversals["applied"], reversals["duplicates"]) == (0, 1)
    assert data.ledger_state(harness.db) == before


def test_the_runbook_order_repairs_a_refund_whose_purchase_was_missing(harness: Harness) -> None:
    db = harness.db
    data.product(db, "p1", 10)
    # The purchase arrived before the range of the reversal backfill and was never applied.
    data.put(db, data.purchase("buy", "o1", data.at(1), total=1000, lines=[("p1", 5)]),
             data.refund("r1", "o1", data.at(3), 400))

    failed = run_to_end(harness, **{**REVERSALS, "startDate": "2025-01-02"})
    first_error = failed["firstErrors"][0]
    replayed = run_to_end(harness, **{**REPLAY, "endDate": "2025-01-01"})
    repaired = run_to_end(harness, **{**REVERSALS, "startDate": "2025-01-02"})

    assert (failed["status"], failed["errors"]) == ("completed", 1)
    assert first_error["message"] == "Original purchase entry not found: o1"
    assert "webhook_replay first" in first_error["hint"]
    assert replayed["applied"] == 1
    assert (repaired["applied"], repaired["errors"]) == (1, 0)
    assert data.assert_ledger_consistent(db) == {"c1": 30}


def test_wallets_taken_below_zero_are_reported(harness: Harness) -> None:
    db = harness.db
    data.product(db, "p1", 10)
    data.put(db, data.purchase("buy", "o1", data.at(1), total=100, customer="spender"))
    run_to_end(harness, **REPLAY)
    # The customer spent the points before the refund reached the ledger.
    db.collection(schema.LEDGER).document("spend_1").set(
        {"customerId": "spender", "type": "redemption", "points": -10, "orderId": "-"})
    db.collection(schema.WALLETS).document("spender").update({"balance": 0})
    data.put(db, data.refund("r1", "o1", data.at(2), 100))

    run = run_to_end(harness, **REPLAY)

    assert run["walletsBelowZero"] == {"count": 1, "customerIds": ["spender"]}
    assert data.documents(db, schema.WALLETS)["spender"]["balance"] == -10


def test_a_dry_run_reports_the_reversals_it_would_create(harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, data.purchase("buy", "o1", data.at(1), total=200),
             data.refund("r1", "o1", data.at(2), 100),
             data.refund("r2", "o1", data.at(3), 100),
             data.refund("cb", "o1", data.at(4), 100, kind="ON_CHARGEBACK"))
    before = data.ledger_state(harness.db)

    run = run_to_end(harness, **REPLAY, dryRun=True)

    assert (run["applied"], run["skipped"], run["errors"], run["pointsMoved"]) == (3, 1, 0, 0)
    assert data.ledger_state(harness.db) == before


def test_a_page_that_pulls_purchases_is_split_to_fit_one_commit(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # The commit's write budget, made small: the same rule splits a page of 1,249 refunds.
    monkeypatch.setattr(schema, "MAX_WRITES_PER_COMMIT", 100)
    harness.configure(page_size=24)
    data.product(harness.db, "p1", 10)
    pairs = 20  # each refund pulls its purchase: five writes a pair, 101 in one commit
    data.put(harness.db, *(data.refund(f"r{n:03}", f"o{n:03}", data.at(1, n), 500)
                           for n in range(pairs)),
             *(data.purchase(f"b{n:03}", f"o{n:03}", data.at(2, n), customer=f"c{n}")
               for n in range(pairs)))

    run = run_to_end(harness, **REPLAY)

    day_one = schema.chunk_ref(harness.db, run["migrationId"], "2025-01-01").get().to_dict()
    assert day_one is not None
    assert day_one["pages"] == 2
    assert (run["status"], run["applied"], run["errors"]) == ("completed", 2 * pairs, 0)
    data.assert_ledger_consistent(harness.db)


def test_a_purchase_applied_by_its_own_chunk_while_its_refund_looks_for_it(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, data.purchase("buy", "o1", data.at(1), lines=[("p1", 4)], total=400),
             data.refund("r1", "o1", data.at(3), 100))
    migration_id = harness.start(**REPLAY).get_json()["migrationId"]
    harness.plan()
    tasks = {task.chunk_id: task for task in harness.dispatcher.take()}
    replay = BACKFILLS.get(BackfillType.WEBHOOK_REPLAY)
    look_for_purchase = replay.pull  # type: ignore[attr-defined]

    def purchase_lands_first(*args: Any) -> Any:
        # The refund's chunk has read no purchase entry; the purchase's chunk commits now.
        harness.deliver([tasks["2025-01-01"]])
        return look_for_purchase(*args)

    monkeypatch.setattr(replay, "pull", purchase_lands_first)
    harness.deliver([tasks["2025-01-03"]])

    run = harness.run(migration_id)
    assert (run["status"], run["applied"], run["errors"]) == ("completed", 2, 0)
    assert entry(harness, "reversal_r1")["points"] == -10
    data.assert_ledger_consistent(harness.db)


def test_a_failing_purchase_pulled_by_its_refund_is_counted_once_by_its_own_chunk(
        harness: Harness) -> None:
    data.product(harness.db, "free", 0)
    data.put(harness.db,
             data.purchase("buy", "o1", data.at(1), lines=[("gone", 1)], total=400),
             data.purchase("gift", "o2", data.at(1, 1), lines=[("free", 1)], total=400),
             data.refund("r1", "o1", data.at(3), 100), data.refund("r2", "o2", data.at(3, 1), 100))
    migration_id = harness.start(**REPLAY).get_json()["migrationId"]
    harness.plan()
    tasks = sorted(harness.dispatcher.take(), key=lambda task: task.chunk_id, reverse=True)

    harness.deliver(tasks)  # the refunds' day first: each pulls its purchase, which fails

    run = harness.run(migration_id)
    assert run["status"] == "completed"
    assert (run["total"], run["taken"], run["errors"], run["skipped"]) == (4, 4, 3, 1)
    errors = {e["eventId"]: e for e in run["firstErrors"]}
    assert (errors["buy"]["code"], errors["buy"]["attempts"], errors["buy"]["chunkId"]) == (
        "product_not_found", 1, "2025-01-01")
    assert {errors["r1"]["code"], errors["r2"]["code"]} == {"purchase_not_found"}
    days = {c["chunkId"]: c for c in run["chunks"]}
    assert (days["2025-01-01"]["taken"], days["2025-01-03"]["taken"]) == (2, 2)


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_refund_received_before_its_purchase_in_the_same_page_applies(
        harness: Harness, dry_run: bool) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, data.refund("r1", "o1", data.at(1, 5), 100),
             data.purchase("buy", "o1", data.at(1, 10), lines=[("p1", 4)], total=400))

    run = run_to_end(harness, **REPLAY, dryRun=dry_run)

    assert (run["status"], run["taken"], run["applied"], run["errors"]) == (
        "completed", 2, 2, 0)
    assert run["pointsMoved"] == 30
    if not dry_run:
        assert entry(harness, "reversal_r1")["points"] == -10
        assert data.assert_ledger_consistent(harness.db) == {"c1": 30}


def test_a_reversal_backfill_started_beside_an_active_replay_waits_for_it(
        harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *(data.purchase(f"b{n}", f"o{n}", data.at(1, n), lines=[("p1", 4)],
                                         total=400) for n in range(30)),
             *(data.refund(f"r{n}", f"o{n}", data.at(2, n), 100) for n in range(30)))
    replay_id = harness.start(**REPLAY).get_json()["migrationId"]

    started = harness.start(**REVERSALS)
    reversal_id = started.get_json()["migrationId"]
    waiting = harness.run(reversal_id)
    # Whenever both have tasks due, the reversal backfill's go first: the order that made its
    # refunds fail while the replay had not applied their purchases yet.
    while tasks := [t for t in harness.dispatcher.take() if t.kind != "watch"]:
        harness.deliver(sorted(tasks, key=lambda task: task.migration_id != reversal_id))

    assert started.status_code == 202
    assert started.get_json()["waitingFor"] == [replay_id]
    assert (waiting["status"], waiting["planned"], waiting["waitingFor"]) == (
        "pending", False, [replay_id])
    assert replay_id in waiting["note"]
    replay, reversal = harness.run(replay_id), harness.run(reversal_id)
    assert (replay["status"], replay["errors"]) == ("completed", 0)
    assert (reversal["status"], reversal["errors"], reversal["duplicates"]) == (
        "completed", 0, 30)
    assert data.assert_ledger_consistent(harness.db) == {"c1": 30 * 30}


def test_a_waiting_run_with_a_month_end_date_is_told_both(harness: Harness) -> None:
    replay_id = harness.start(type="webhook_replay", startDate="2024-11-01",
                              endDate="2024-11-30").get_json()["migrationId"]

    answer = harness.start(type="reversal_backfill", startDate="2024-11-01",
                           endDate="2024-11-31").get_json()

    assert (answer["endDate"], answer["waitingFor"]) == ("2024-11-30", [replay_id])
    assert "2024-11-30" in answer["note"] and replay_id in answer["note"]


def seeded_refunds(harness: Harness) -> None:
    """Six purchases the live path never applied, on day 1, each refunded in half on day 2."""
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *(data.purchase(f"buy{n}", f"o{n}", data.at(1, n), f"c{n}",
                                         total=100) for n in range(6)),
             *(data.refund(f"r{n}", f"o{n}", data.at(2, n), 50) for n in range(6)))


def test_a_replay_started_during_a_reversal_backfill_makes_it_wait_and_no_refund_fails(
        harness: Harness) -> None:
    seeded_refunds(harness)
    reversal = harness.start(**REVERSALS).get_json()["migrationId"]
    harness.plan()  # its chunks are queued: without the replay, each refund would fail

    replay = harness.start(**REPLAY)
    waiting = harness.run(reversal)
    harness.deliver_all()  # the reversal's queued tasks find it paused; the replay runs
    done = harness.run(reversal)

    assert replay.status_code == 202 and replay.get_json()["madeWait"] == [reversal]
    assert waiting["status"] == "paused"
    assert waiting["statusReason"].startswith(f"waiting for {replay.get_json()['migrationId']}")
    assert waiting["statusHistory"][-1]["by"] == "bundle"
    assert harness.run(replay.get_json()["migrationId"])["status"] == "completed"
    assert (done["status"], done["errors"]) == ("completed", 0), done
    assert done["statusHistory"][-2]["to"] in ("running", "pending")  # resumed by itself
    assert data.assert_ledger_consistent(harness.db) == {f"c{n}": 5 for n in range(6)}
    reversals = [e for e in data.documents(harness.db, schema.LEDGER).values()
                 if e["type"] == "reversal"]
    assert sorted(e["sourceEventId"] for e in reversals) == [f"r{n}" for n in range(6)]


def test_a_waiting_reversal_resumes_when_the_replay_is_cancelled_and_an_operators_pause_holds(
        harness: Harness) -> None:
    control = create_app("backfill_control", SOURCE).test_client()
    seeded_refunds(harness)
    reversal = harness.start(**REVERSALS).get_json()["migrationId"]
    harness.plan()
    replay = harness.start(**REPLAY).get_json()["migrationId"]
    held = harness.start(**{**REVERSALS, "type": "ledger_verify"}, force=True)
    harness.plan()
    verify = held.get_json()["migrationId"]
    # An operator pauses the verify (which waited for the replay at its start: waitingFor).
    control.post(f"/api/admin/dataMigrations/{verify}/pause", json={},
                 headers=harness.headers())

    cancelled = control.post(f"/api/admin/dataMigrations/{replay}/cancel", json={},
                             headers=harness.headers())

    assert cancelled.status_code == 200
    assert harness.run(reversal)["status"] in ("pending", "running")
    assert harness.run(verify)["status"] == "paused"  # the operator's pause stands
    harness.deliver_all()
    assert harness.run(reversal)["status"] == "completed"
