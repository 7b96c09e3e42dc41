"""The apply rules, planned without I/O from a page of events and the documents they read."""

import datetime as dt
from typing import Any

from shared.backfills.base import Event, Stored
from shared.backfills.reversal_backfill import ReversalBackfill
from shared.backfills.webhook_replay import WebhookReplay
from shared.models import Outcome

AT = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
READ_AT = dt.datetime(2025, 2, 1, tzinfo=dt.UTC)
PRODUCTS = {"products/p1": Stored({"points": 10}), "products/p2": Stored({"points": 3})}


def purchase(event_id: str, order_id: str, *lines: tuple[str, int], customer: str = "c1",
             total: int = 1000) -> Event:
    body = {"id": order_id, "customer": {"id": customer}, "total_amount": total,
            "currency": "EUR", "lines": [{"product_id": p, "quantity": q} for p, q in lines]}
    return Event(event_id, {"eventType": "ON_ORDER_COMPLETED", "receivedAt": AT,
                            "payload": {"body": body}})


def refund(event_id: str, order_id: str, amount: int, kind: str = "ON_REFUND") -> Event:
    return Event(event_id, {"eventType": kind, "receivedAt": AT, "payload": {"body": {
        "id": f"r-{event_id}", "order_id": order_id, "amount": amount, "currency": "EUR"}}})


def entry(points: int, total: int = 1000, refunded: int = 0, reversed_: int = 0) -> Stored:
    data: dict[str, Any] = {"customerId": "c1", "type": "purchase", "points": points,
                            "orderTotal": total, "refundedAmount": refunded,
                            "reversedPoints": reversed_}
    return Stored(data, READ_AT)


def test_a_purchase_creates_its_entry_and_credits_the_wallet() -> None:
    plan = WebhookReplay().plan([purchase("e1", "o1", ("p1", 2), ("p2", 1))], PRODUCTS, "m1")

    assert [r.outcome for r in plan.results] == [Outcome.APPLIED]
    assert plan.creates["purchase_o1"]["points"] == 23
    assert plan.creates["purchase_o1"]["migrationId"] == "m1"
    assert plan.creates["purchase_o1"]["source"] == "backfill"
    assert plan.wallet_deltas == {"c1": 23}
    assert plan.results[0].settled is True


def test_an_existing_entry_makes_the_event_a_duplicate_without_effects() -> None:
    stored = {**PRODUCTS, "ledgerEntries/purchase_o1": entry(20)}

    plan = WebhookReplay().plan([purchase("e1", "o1", ("p1", 2))], stored, "m1")

    assert plan.results[0].outcome is Outcome.DUPLICATE
    assert plan.results[0].settled is True
    assert not plan.creates and not plan.wallet_deltas


def test_a_redelivery_in_the_same_page_is_a_duplicate_of_the_first() -> None:
    plan = WebhookReplay().plan(
        [purchase("e1", "o1", ("p1", 1)), purchase("e2", "o1", ("p1", 1))], PRODUCTS, "m1")

    assert [r.outcome for r in plan.results] == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert plan.wallet_deltas == {"c1": 10}


def test_unknown_products_and_malformed_payloads_are_errors_with_no_effect() -> None:
    bad = Event("e3", {"eventType": "ON_ORDER_COMPLETED", "receivedAt": AT,
                       "payload": {"body": {"id": "o3", "lines": "nope"}}})

    plan = WebhookReplay().plan([purchase("e1", "o1", ("p1", 1), ("gone", 1)), bad],
                                PRODUCTS, "m1")

    assert [(r.outcome, r.code) for r in plan.results] == [
        (Outcome.ERROR, "product_not_found"), (Outcome.ERROR, "malformed_payload")]
    assert plan.results[0].message == "Product not found: gone"
    assert plan.results[1].message.startswith("Malformed payload: payload.body.")
    assert not plan.creates and not plan.wallet_deltas
    assert not any(r.settled for r in plan.results)


def test_other_event_types_are_skipped_and_left_unprocessed() -> None:
    other = Event("e1", {"eventType": "ON_CUSTOMER_UPDATED", "receivedAt": AT, "payload": {}})

    plan = WebhookReplay().plan([other], {}, "m1")

    assert plan.results[0].outcome is Outcome.SKIPPED
    assert plan.results[0].code == "no_ledger_effect"
    assert plan.results[0].settled is False


def test_a_refund_after_its_purchase_in_one_page_reverses_the_new_entry() -> None:
    plan = WebhookReplay().plan([purchase("e1", "o1", ("p1", 10)), refund("r1", "o1", 250)],
                                PRODUCTS, "m1")

    assert [r.outcome for r in plan.results] == [Outcome.APPLIED, Outcome.APPLIED]
    assert plan.creates["purchase_o1"]["refundedAmount"] == 250
    assert plan.creates["purchase_o1"]["reversedPoints"] == 25
    assert plan.creates["reversal_r1"]["points"] == -25
    assert plan.wallet_deltas == {"c1": 75}
    assert not plan.updates


def test_refunds_of_a_stored_purchase_update_it_under_its_read_time() -> None:
    stored = {"ledgerEntries/purchase_o1": entry(100)}

    plan = ReversalBackfill().plan([refund("r1", "o1", 300), refund("r2", "o1", 700)],
                                   stored, "m1")

    assert [r.points for r in plan.results] == [-30, -70]
    assert plan.updates["purchase_o1"] == ({"refundedAmount": 1000, "reversedPoints": 100},
                                           READ_AT)
    assert plan.wallet_deltas == {"c1": -100}


def test_a_chargeback_after_a_full_refund_is_skipped_with_its_reason() -> None:
    stored = {"ledgerEntries/purchase_o1": entry(100, refunded=1000, reversed_=100)}

    plan = ReversalBackfill().plan([refund("c1", "o1", 500, "ON_CHARGEBACK")], stored, "m1")

    assert plan.results[0].outcome is Outcome.SKIPPED
    assert plan.results[0].code == "fully_reversed"
    assert plan.results[0].settled is True
    assert not plan.creates and not plan.updates and not plan.wallet_deltas


def test_a_refund_without_its_purchase_fails_and_says_what_to_do() -> None:
    plan = ReversalBackfill().plan([refund("r1", "o9", 100)], {}, "m1")

    assert plan.results[0].outcome is Outcome.ERROR
    assert plan.results[0].message == "Original purchase entry not found: o9"
    assert "webhook_replay first" in plan.results[0].hint


def test_an_existing_reversal_makes_the_refund_a_duplicate() -> None:
    stored = {"ledgerEntries/purchase_o1": entry(100, refunded=300, reversed_=30),
              "ledgerEntries/reversal_r1": Stored({"points": -30}, READ_AT)}

    plan = ReversalBackfill().plan([refund("r1", "o1", 300)], stored, "m1")

    assert plan.results[0].outcome is Outcome.DUPLICATE
    assert not plan.updates and not plan.wallet_deltas


def test_lookups_name_products_and_entries_once() -> None:
    events = [purchase("e1", "o1", ("p1", 1), ("p2", 1)), purchase("e2", "o2", ("p1", 1)),
              refund("r1", "o1", 5)]

    paths = WebhookReplay().lookups(events)

    assert sorted(paths) == sorted(["ledgerEntries/purchase_o1", "products/p1", "products/p2",
                                    "ledgerEntries/purchase_o2", "ledgerEntries/reversal_r1"])


def test_a_refund_too_small_for_a_point_still_records_its_amount_once() -> None:
    stored = {"ledgerEntries/purchase_o1": entry(10, total=1000)}

    plan = ReversalBackfill().plan([refund("r1", "o1", 50), refund("r2", "o1", 50)], stored, "m1")

    assert [r.points for r in plan.results] == [0, -1]
    assert plan.creates["reversal_r1"]["points"] == 0
    assert plan.updates["purchase_o1"][0] == {"refundedAmount": 100, "reversedPoints": 1}
