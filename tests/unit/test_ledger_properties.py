"""Properties of the ledger's pure arithmetic (``shared.domain.ledger``) over random orders and
refunds: cumulative reversals add up to the contract's formula however an amount is split or
ordered, never reverse more than was credited, and nothing more once fully refunded; and the
model the function-tier properties compare with (``tests.ledgers.expected_ledger``) agrees with
the code's rule on every refund."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.ledger import purchase_points, reverse
from shared.errors import ProductNotFound
from shared.models import OrderCompleted
from tests import ledgers

MANY = settings(max_examples=1000, deadline=None, database=None)
# A random ledger is bigger: fewer of them.
LEDGERS = settings(max_examples=100, deadline=None, database=None)
POINTS = st.integers(0, 10**9)
TOTALS = st.integers(1, 10**7)


@st.composite
def refunds(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    """An order's points, total and the amounts of its refunds and chargebacks (some past the
    total, alone or together)."""
    total = draw(TOTALS)
    amounts = draw(st.lists(st.one_of(st.integers(1, total), st.integers(1, 3 * total)),
                            min_size=1, max_size=8))
    return draw(POINTS), total, amounts


def apply_all(points: int, total: int, amounts: Sequence[int]) -> tuple[int, int, list[int]]:
    """``reverse`` each amount in turn, as successive refunds of one order: answers the
    refunded amount, the reversed points and each refund's reversal points."""
    refunded, reversed_, shares = 0, 0, []
    for amount in amounts:
        share = reverse(points, total, refunded, reversed_, amount)
        refunded, reversed_ = share.refunded_amount, share.reversed_points
        shares.append(share.points)
    return refunded, reversed_, shares


@MANY
@given(order=refunds())
def test_cumulative_refunds_add_up_to_the_formula_and_never_past_the_purchase(
        order: tuple[int, int, list[int]]) -> None:
    points, total, amounts = order
    refunded, reversed_, seen = 0, 0, 0
    for amount in amounts:
        share = reverse(points, total, refunded, reversed_, amount)
        seen += amount
        assert share.points <= 0
        assert share.refunded_amount == min(seen, total)
        assert share.reversed_points == points * min(seen, total) // total
        assert share.reversed_points == reversed_ - share.points  # the entry is the step
        assert share.reversed_points <= points
        refunded, reversed_ = share.refunded_amount, share.reversed_points
    assert -sum(apply_all(points, total, amounts)[2]) == points * min(seen, total) // total


@MANY
@given(order=refunds(), data=st.data())
def test_any_split_and_any_order_of_the_same_refunds_reverses_the_same(
        order: tuple[int, int, list[int]], data: st.DataObject) -> None:
    points, total, amounts = order
    whole = sum(amounts)
    shuffled = data.draw(st.permutations(amounts), label="shuffled")
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, whole - 1)), max_size=6),
                            label="cuts") - {whole})
    split = [b - a for a, b in zip([0, *cuts], [*cuts, whole], strict=True) if b > a]

    finals = {apply_all(points, total, way)[:2] for way in (amounts, shuffled, split, [whole])}

    assert finals == {(min(whole, total), points * min(whole, total) // total)}


@MANY
@given(order=refunds(), later=st.lists(st.integers(1, 10**8), min_size=1, max_size=4))
def test_a_chargeback_after_a_full_refund_reverses_nothing(
        order: tuple[int, int, list[int]], later: list[int]) -> None:
    points, total, amounts = order
    refunded, reversed_, _ = apply_all(points, total, [*amounts, total])  # fully refunded

    for amount in later:
        share = reverse(points, total, refunded, reversed_, amount)
        assert (share.points, share.refunded_amount, share.reversed_points) == (
            0, total, points)


@MANY
@given(points=POINTS, amounts=st.lists(st.integers(1, 10**6), min_size=1, max_size=4))
def test_an_order_of_total_zero_is_reversed_whole_by_its_first_refund(
        points: int, amounts: list[int]) -> None:
    assert apply_all(points, 0, amounts)[2] == [-points] + [0] * (len(amounts) - 1)


LINES = st.lists(st.tuples(st.sampled_from(ledgers.PRODUCTS), st.integers(1, 10**6)),
                 min_size=1, max_size=6)
CATALOGUE = st.fixed_dictionaries({product: st.integers(0, 10**6)
                                   for product in ledgers.PRODUCTS})


def order_of(lines: Sequence[tuple[str, int]]) -> OrderCompleted:
    return OrderCompleted.model_validate({
        "id": "o1", "customer": {"id": "c1"}, "total_amount": 100, "currency": "EUR",
        "lines": [{"product_id": product, "quantity": quantity} for product, quantity in lines]})


@MANY
@given(lines=LINES, catalogue=CATALOGUE, data=st.data())
def test_purchase_points_are_points_times_quantity_in_any_order_of_lines(
        lines: list[tuple[str, int]], catalogue: dict[str, int], data: st.DataObject) -> None:
    products = {product: {"points": points} for product, points in catalogue.items()}
    shuffled = data.draw(st.permutations(lines), label="shuffled")

    credited = purchase_points(order_of(lines), products)

    assert credited == sum(catalogue[product] * quantity for product, quantity in lines)
    assert purchase_points(order_of(shuffled), products) == credited


@MANY
@given(lines=LINES, catalogue=CATALOGUE, gone=st.sampled_from(ledgers.PRODUCTS))
def test_an_order_of_a_missing_product_credits_nothing_and_names_it(
        lines: list[tuple[str, int]], catalogue: dict[str, int], gone: str) -> None:
    products: dict[str, dict[str, int] | None] = {
        product: {"points": points} for product, points in catalogue.items()}
    products[gone] = None

    if gone in {product for product, _ in lines}:
        first = next(product for product, _ in lines if product == gone)
        with pytest.raises(ProductNotFound, match=f"^Product not found: {first}$"):
            purchase_points(order_of(lines), products)
    else:
        assert purchase_points(order_of(lines), products) == sum(
            catalogue[product] * quantity for product, quantity in lines)


@LEDGERS
@given(ledger=ledgers.ledgers())
def test_the_model_reverses_each_refund_as_the_code_does(ledger: ledgers.Ledger) -> None:
    """The function tier's model, refund by refund, against ``shared.domain.ledger.reverse``: the
    same share for every refund that moves its order, in the order the events arrived."""
    model = ledger.expected()
    for order, events in ledger.orders().items():
        bought = model.entries.get(f"purchase_{order}")
        refunded, reversed_ = 0, 0
        for event in events:
            if event["eventType"] == ledgers.PURCHASE:
                continue
            entry = model.entries.get(f"reversal_{event['eventId']}")
            if bought is None:
                assert event["eventId"] in model.failed and entry is None
                continue
            share = reverse(bought["points"], bought["orderTotal"], refunded, reversed_,
                            event["payload"]["body"]["amount"])
            if share.refunded_amount == refunded:
                assert entry is None  # settled without an entry: fully refunded already
            else:
                assert entry is not None and entry["points"] == share.points
            refunded, reversed_ = share.refunded_amount, share.reversed_points
        if bought is not None:
            assert (bought["refundedAmount"], bought["reversedPoints"]) == (refunded, reversed_)


@LEDGERS
@given(ledger=ledgers.ledgers())
def test_a_ledger_is_printed_as_the_call_that_makes_it_again(ledger: ledgers.Ledger) -> None:
    """What hypothesis prints of a falsifying ledger, pasted, is that very ledger."""
    printed = repr(ledger)
    assert printed.startswith("parse(")
    days = ledger.days
    lines = [ledgers.describe(event, event["eventId"] in ledger.attempted)
             for event in ledger.events]

    again = ledgers.parse(days=days, products=ledger.products, events=lines)

    assert ledgers.canonical(again.events) == ledgers.canonical(ledger.events)
    assert (again.attempted, again.products, repr(again)) == (
        ledger.attempted, ledger.products, printed)
