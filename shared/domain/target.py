"""A run's target: the subset of its range's events a targeted run (or a canary) takes.

The request fields ``eventTypes``, ``customerIds``, ``orderIds`` and ``eventIds`` each narrow
the events; given together, an event must match them all. Event types narrow the Firestore
selection itself (so planning counts only those); the others are decided per event, as a page
is planned, because a refund names its order but not its customer: a refund's customer is the
``customerId`` of its order's purchase entry. An event outside the target is left exactly as it
was (not applied, not flagged) and counted apart, as ``outside``.

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from shared.models import EventType

# The request fields that aim a run, as runs record them under ``target``.
FIELDS = ("eventTypes", "customerIds", "orderIds", "eventIds")
# Why an event is outside the target, when its customer cannot be known yet.
NO_CUSTOMER_YET = "its order has no purchase entry yet, so its customer is unknown"


@dataclasses.dataclass(frozen=True)
class Target:
    event_types: frozenset[str] | None = None
    customer_ids: frozenset[str] | None = None
    order_ids: frozenset[str] | None = None
    event_ids: frozenset[str] | None = None

    @classmethod
    def of(cls, recorded: Mapping[str, Any] | None) -> Target | None:
        """The target a run records (None: the run takes every event of its range)."""
        if not recorded:
            return None

        def values(field: str) -> frozenset[str] | None:
            listed = recorded.get(field)
            return frozenset(listed) if listed else None

        return cls(values("eventTypes"), values("customerIds"), values("orderIds"),
                   values("eventIds"))

    def types(self, taken: tuple[str, ...]) -> list[str]:
        """The event types a selection takes: those of ``taken`` the target names."""
        if self.event_types is None:
            return list(taken)
        return [name for name in taken if name in self.event_types]

    def excludes(self, event_id: str, event_type: str, data: Mapping[str, Any],
                 customer_of: Callable[[str], str | None]) -> str | None:
        """Why the event is outside the target, or None when it is in it. ``customer_of``
        answers the customer of an order (from its purchase entry), None if unknown."""
        if self.event_ids is not None and event_id not in self.event_ids:
            return "not one of eventIds"
        if self.event_types is not None and event_type not in self.event_types:
            return "its type is not one of eventTypes"
        if self.order_ids is None and self.customer_ids is None:
            return None
        body = _body(data)
        order_id, customer_id = _order_and_customer(event_type, body)
        if self.order_ids is not None and order_id not in self.order_ids:
            return "its order is not one of orderIds" if order_id else \
                "it names no order (malformed payload)"
        if self.customer_ids is None:
            return None
        if customer_id is None and order_id and event_type != EventType.ORDER_COMPLETED:
            customer_id = customer_of(order_id)
            if customer_id is None:
                return NO_CUSTOMER_YET
        if customer_id not in self.customer_ids:
            return "its customer is not one of customerIds" if customer_id else \
                "it names no customer (malformed payload)"
        return None


def order_of(event_type: str, data: Mapping[str, Any]) -> str:
    """The order a stored webhook event names ("" when it names none)."""
    return _order_and_customer(event_type, _body(data))[0]


def _body(data: Mapping[str, Any]) -> Mapping[str, Any]:
    payload = data.get("payload")
    body = payload.get("body") if isinstance(payload, dict) else None
    return body if isinstance(body, dict) else {}


def _order_and_customer(event_type: str, body: Mapping[str, Any]) -> tuple[str, str | None]:
    """The order an event names and, for a purchase, its customer (as sent: "" or None when
    missing or not a string)."""
    if event_type == EventType.ORDER_COMPLETED:
        customer = body.get("customer")
        customer_id = customer.get("id") if isinstance(customer, dict) else None
        order_id = body.get("id")
        return (order_id if isinstance(order_id, str) else "",
                customer_id if isinstance(customer_id, str) else "")
    order_id = body.get("order_id")
    return order_id if isinstance(order_id, str) else "", None
