"""The ledger's rules from ``contracts/firestore.md``, as pure functions.

Deterministic ids (``purchase_{orderId}``, ``reversal_{sourceEventId}``) are what make every
ledger effect happen at most once, whichever path (live webhook or backfill) writes it first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from shared.errors import MalformedPayload, ProductNotFound
from shared.models import OrderCompleted

# The largest integer Firestore stores (a signed 64-bit integer).
MAX_POINTS = 2**63 - 1


def purchase_id(order_id: str) -> str:
    return f"purchase_{order_id}"


def reversal_id(source_event_id: str) -> str:
    return f"reversal_{source_event_id}"


def rollback_id(rollback_migration_id: str, entry_id: str) -> str:
    """The entry a rollback run writes to compensate ``entry_id``: one per rollback and entry."""
    return f"rollback_{rollback_migration_id}_{entry_id}"


def reinstatement_id(rolled_back_by: str, entry_id: str) -> str:
    """The entry that re-applies ``entry_id`` after the rollback ``rolled_back_by`` undid it:
    one per rollback and entry, so a re-application after each rollback happens once."""
    return f"reinstate_{rolled_back_by}_{entry_id}"


def adjustment_id(migration_id: str, customer_id: str) -> str:
    """The entry an audit run writes to make a drifted wallet's entries add up to it."""
    return f"adjustment_{migration_id}_{customer_id}"


def purchase_points(order: OrderCompleted, products: Mapping[str, Mapping[str, Any] | None]) -> int:
    """Points an order credits: ``sum(product.points * quantity)`` over its lines.

    Raises ``ProductNotFound`` for the first line whose product is missing (or has no integer
    ``points``, which is as unusable as missing), and ``MalformedPayload`` when the sum does not
    fit a 64-bit integer.
    """
    total = 0
    for line in order.lines:
        product = products.get(line.product_id)
        points = product.get("points") if product is not None else None
        if not isinstance(points, int) or isinstance(points, bool):
            raise ProductNotFound(line.product_id)
        total += points * line.quantity
    if total > MAX_POINTS:
        # Firestore stores 64-bit integers: such an entry could never be written.
        raise MalformedPayload("Malformed payload: payload.body.lines: the order's points "
                               "exceed what a ledger entry can hold (2^63 - 1)")
    return total


@dataclasses.dataclass(frozen=True)
class ReversalShare:
    """What one refund or chargeback does to its purchase entry."""

    refunded_amount: int  # the purchase entry's refundedAmount afterwards
    reversed_points: int  # the purchase entry's reversedPoints afterwards
    points: int  # the reversal entry's points (<= 0)


def reverse(points: int, order_total: int, refunded_before: int, reversed_before: int,
            amount: int) -> ReversalShare:
    """Cumulative reversal: refunds add up exactly and never reverse more than was credited.

    ``refundedAmount`` grows by ``amount`` capped at ``orderTotal``; the reversed points so far
    are ``floor(points * refundedAmount / orderTotal)``, and this event reverses the difference
    from ``reversedPoints`` before it. A zero ``orderTotal`` reverses everything at once.
    """
    refunded = min(order_total, refunded_before + amount)
    target = points if order_total <= 0 else (points * refunded) // order_total
    target = max(target, reversed_before)
    return ReversalShare(refunded, target, -(target - reversed_before))
