"""A realistic sample of PayNow webhooks for the local emulator (never for production).

``seed`` writes products, wallets, ledger entries and webhook events over several UTC days, as a
live payment app with gaps would have left them: most purchases unprocessed, some already applied
by the live path (some of those still flagged unprocessed, as when the live path died before its
last write), some with unknown products, some malformed, some delivered twice under another id,
refunds (partial and full) and chargebacks, and events of types with no ledger effect.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections import Counter
from typing import Any

from google.cloud import firestore

from shared.adapters import schema

OTHER_TYPES = ("ON_SUBSCRIPTION_RENEWED", "ON_CUSTOMER_UPDATED", "ON_CHECKOUT_ABANDONED")


@dataclasses.dataclass(frozen=True)
class SampleShape:
    start: dt.date = dt.date(2025, 1, 1)
    days: int = 5
    purchases: int = 2200
    customers: int = 150
    products: int = 20
    live_applied: float = 0.15
    live_credited_unflagged: float = 0.04
    unknown_product: float = 0.03
    malformed: float = 0.01
    redelivered: float = 0.02
    refunds: int = 180
    chargebacks: int = 40
    other: int = 300
    seed: int = 7
    # The share of purchases received on the first day (an incident day), the rest spread
    # over all days; 0 spreads them all.
    busy_share: float = 0.0


def seed(db: firestore.Client, shape: SampleShape = SampleShape()) -> Counter[str]:
    """Write the sample; return how many events of each kind it wrote."""
    rng = random.Random(shape.seed)  # noqa: S311 (sample data, not secrets)
    writer = _Writer(db)
    kinds: Counter[str] = Counter()
    points = {f"prod-{i:02}": rng.randint(1, 40) for i in range(shape.products)}
    for product_id, value in points.items():
        writer.set(f"{schema.PRODUCTS}/{product_id}", {"name": product_id.title(), "points": value})
    start = dt.datetime.combine(shape.start, dt.time(), tzinfo=dt.UTC)
    seconds = shape.days * 86_400
    wallets: Counter[str] = Counter()
    orders: list[tuple[str, int, str, dt.datetime]] = []  # orderId, total, customer, receivedAt

    for n in range(shape.purchases):
        order_id, customer = f"ord-{n:05}", f"cust-{rng.randrange(shape.customers):04}"
        busy = bool(shape.busy_share) and rng.random() < shape.busy_share
        received = start + dt.timedelta(seconds=rng.randrange(86_400 if busy else seconds))
        lines: list[dict[str, Any]] = [
            {"product_id": rng.choice(list(points)), "quantity": rng.randint(1, 3),
             "unit_amount": rng.randint(500, 5000)} for _ in range(rng.randint(1, 3))]
        total = sum(line["unit_amount"] * line["quantity"] for line in lines)
        body: dict[str, Any] = {"id": order_id, "customer": {"id": customer, "email": "x@y.z"},
                                "lines": lines, "total_amount": total, "currency": "EUR",
                                "created_at": received.isoformat()}
        roll = rng.random()
        processed = False
        if roll < shape.unknown_product:
            lines[0]["product_id"] = f"prod-retired-{n % 4}"
            kind = "purchase_unknown_product"
        elif roll < shape.unknown_product + shape.malformed:
            if n % 2:
                del body["customer"]
            else:
                lines[0]["quantity"] = "two"
            kind = "purchase_malformed"
        else:
            credit = sum(points[line["product_id"]] * line["quantity"] for line in lines)
            live = rng.random()
            if live < shape.live_applied + shape.live_credited_unflagged:
                writer.set(f"{schema.LEDGER}/purchase_{order_id}", {
                    "customerId": customer, "type": "purchase", "points": credit,
                    "orderId": order_id, "sourceEventId": f"evt-p-{n:05}", "createdAt": received,
                    "source": "webhook", "migrationId": None, "orderTotal": total,
                    "refundedAmount": 0, "reversedPoints": 0})
                wallets[customer] += credit
                processed = live < shape.live_applied
                kind = "purchase_live_applied" if processed else "purchase_live_unflagged"
            else:
                kind = "purchase_missing"
            orders.append((order_id, total, customer, received))
        kinds[kind] += 1
        writer.set(f"{schema.EVENTS}/evt-p-{n:05}",
                   _event(f"evt-p-{n:05}", "ON_ORDER_COMPLETED", received, body, processed))
        if kind == "purchase_missing" and rng.random() < shape.redelivered:
            again = received + dt.timedelta(minutes=rng.randint(1, 90))
            writer.set(f"{schema.EVENTS}/evt-p-{n:05}-again",
                       _event(f"evt-p-{n:05}-again", "ON_ORDER_COMPLETED", again, body, False))
            kinds["purchase_redelivered"] += 1

    for n in range(shape.refunds + shape.chargebacks):
        order_id, total, _, bought = rng.choice(orders)
        kind = "ON_REFUND" if n < shape.refunds else "ON_CHARGEBACK"
        amount = total if rng.random() < 0.5 else rng.randint(1, total)
        received = min(bought + dt.timedelta(hours=rng.randint(1, 48)),
                       start + dt.timedelta(seconds=seconds - 1))
        event_id = f"evt-{'r' if kind == 'ON_REFUND' else 'c'}-{n:05}"
        writer.set(f"{schema.EVENTS}/{event_id}", _event(event_id, kind, received, {
            "id": f"{kind[3:].lower()}-{n:05}", "order_id": order_id, "amount": amount,
            "currency": "EUR", "created_at": received.isoformat()}, False))
        kinds[kind.lower()] += 1

    for n in range(shape.other):
        received = start + dt.timedelta(seconds=rng.randrange(seconds))
        kind = OTHER_TYPES[n % len(OTHER_TYPES)]
        writer.set(f"{schema.EVENTS}/evt-o-{n:05}",
                   _event(f"evt-o-{n:05}", kind, received, {"id": f"o-{n}"}, False))
        kinds["other_type"] += 1

    for customer, balance in wallets.items():
        writer.set(f"{schema.WALLETS}/{customer}", {"balance": balance, "updatedAt": start})
    writer.flush()
    return kinds


def _event(event_id: str, event_type: str, received: dt.datetime, body: dict[str, Any],
           processed: bool) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "provider": "paynow",
        "eventType": event_type,
        "receivedAt": received,
        "payload": {"event_type": event_type, "event_id": event_id, "body": body},
        "processed": processed,
        "processedAt": received if processed else None,
        "processingError": None if processed else "ledger write timed out",
    }


class _Writer:
    """Batched writes, 500 to a commit (the sample is not the thing being tested)."""

    def __init__(self, db: firestore.Client) -> None:
        self._db = db
        self._batch = db.batch()
        self._count = 0

    def set(self, path: str, data: dict[str, Any]) -> None:
        self._batch.set(self._db.document(path), data)
        self._count += 1
        if self._count == 500:
            self.flush()

    def flush(self) -> None:
        if self._count:
            self._batch.commit()
        self._batch, self._count = self._db.batch(), 0
