"""A run's target, decided per event (``shared.domain.target``): pure rules."""

from __future__ import annotations

from shared.domain.target import NO_CUSTOMER_YET, Target
from tests import data

PURCHASE = data.purchase("e1", "o1", data.at(1), "c1")
REFUND = data.refund("r1", "o1", data.at(1), 100)


def excludes(target: Target, event: dict[str, object],
             customers: dict[str, str] | None = None) -> str | None:
    return target.excludes(str(event["eventId"]), str(event["eventType"]), event,
                           lambda order: (customers or {}).get(order))


def test_no_target_and_an_empty_record_take_everything() -> None:
    assert Target.of(None) is None
    assert Target.of({}) is None
    assert excludes(Target(), PURCHASE) is None


def test_each_field_narrows_and_all_must_match() -> None:
    both = Target(customer_ids=frozenset({"c1"}), order_ids=frozenset({"o2"}))

    assert excludes(Target(event_ids=frozenset({"e2"})), PURCHASE) == "not one of eventIds"
    assert excludes(Target(event_types=frozenset({"ON_REFUND"})), PURCHASE) == \
        "its type is not one of eventTypes"
    assert excludes(Target(order_ids=frozenset({"o1"})), REFUND) is None
    assert excludes(both, PURCHASE) == "its order is not one of orderIds"


def test_a_refunds_customer_is_its_orders_and_unknown_without_a_purchase_entry() -> None:
    canary = Target(customer_ids=frozenset({"c1"}))

    assert excludes(canary, PURCHASE) is None
    assert excludes(canary, REFUND, {"o1": "c1"}) is None
    assert excludes(canary, REFUND, {"o1": "c2"}) == "its customer is not one of customerIds"
    assert excludes(canary, REFUND) == NO_CUSTOMER_YET


def test_a_malformed_event_is_outside_a_customer_or_order_target() -> None:
    nameless = data.event("x", "ON_ORDER_COMPLETED", data.at(1), {"lines": []})

    assert excludes(Target(order_ids=frozenset({"o1"})), nameless) == \
        "it names no order (malformed payload)"
    assert excludes(Target(customer_ids=frozenset({"c1"})), nameless) == \
        "it names no customer (malformed payload)"


def test_types_narrow_the_selection() -> None:
    assert Target(event_types=frozenset({"ON_REFUND"})).types(
        ("ON_ORDER_COMPLETED", "ON_REFUND")) == ["ON_REFUND"]
    assert Target().types(("ON_REFUND",)) == ["ON_REFUND"]
