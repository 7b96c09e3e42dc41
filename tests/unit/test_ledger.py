import itertools

import pytest

from shared.domain.ledger import purchase_points, reverse
from shared.errors import MalformedPayload, ProductNotFound
from shared.models import OrderCompleted


def test_purchase_points_sum_points_times_quantity() -> None:
    order = OrderCompleted.model_validate({
        "id": "o1", "customer": {"id": "c1"}, "total_amount": 100, "currency": "EUR",
        "lines": [{"product_id": "a", "quantity": 2}, {"product_id": "b", "quantity": 3}]})

    assert purchase_points(order, {"a": {"points": 5}, "b": {"points": 7}}) == 31


def test_a_missing_product_names_itself() -> None:
    order = OrderCompleted.model_validate({
        "id": "o1", "customer": {"id": "c1"}, "total_amount": 100, "currency": "EUR",
        "lines": [{"product_id": "a", "quantity": 1}, {"product_id": "gone", "quantity": 1}]})

    with pytest.raises(ProductNotFound, match=r"^Product not found: gone$"):
        purchase_points(order, {"a": {"points": 5}, "gone": None})


def test_points_beyond_64_bits_are_a_malformed_payload() -> None:
    order = OrderCompleted.model_validate({
        "id": "o1", "customer": {"id": "c1"}, "total_amount": 100, "currency": "EUR",
        "lines": [{"product_id": "a", "quantity": 2**62}, {"product_id": "a", "quantity": 1}]})

    assert purchase_points(order, {"a": {"points": 1}}) == 2**62 + 1
    with pytest.raises(MalformedPayload, match="exceed what a ledger entry can hold"):
        purchase_points(order, {"a": {"points": 2}})


def test_partial_refunds_add_up_to_the_whole_credit() -> None:
    refunded, reversed_, reversal_points = 0, 0, []
    for amount in (333, 333, 334):
        share = reverse(100, 1000, refunded, reversed_, amount)
        refunded, reversed_ = share.refunded_amount, share.reversed_points
        reversal_points.append(share.points)

    assert reversal_points == [-33, -33, -34]
    assert (refunded, reversed_) == (1000, 100)


def test_a_chargeback_after_a_full_refund_reverses_nothing_more() -> None:
    full = reverse(100, 1000, 0, 0, 1000)
    chargeback = reverse(100, 1000, full.refunded_amount, full.reversed_points, 500)

    assert full.points == -100
    assert chargeback.points == 0
    assert chargeback.refunded_amount == 1000


@pytest.mark.parametrize("amounts", list(itertools.permutations([1, 250, 400, 700], 3)))
def test_reversed_points_always_follow_the_contract_formula(amounts: tuple[int, ...]) -> None:
    points, total, refunded, reversed_ = 77, 1000, 0, 0
    for amount in amounts:
        share = reverse(points, total, refunded, reversed_, amount)
        refunded, reversed_ = share.refunded_amount, share.reversed_points
        assert share.points <= 0
        assert reversed_ == points * min(refunded, total) // total
    assert reversed_ <= points
