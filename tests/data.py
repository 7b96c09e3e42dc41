"""Test data in the shape of ``contracts/firestore.md``, and the ledger's invariants."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from typing import Any

from google.cloud import firestore

from shared.adapters import schema

DAY = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def at(day: int, minute: int = 0) -> dt.datetime:
    """A receivedAt on UTC day ``day`` (1 = 2025-01-01)."""
    return DAY + dt.timedelta(days=day - 1, minutes=minute)


def product(db: firestore.Client, product_id: str, points: int) -> None:
    db.collection(schema.PRODUCTS).document(product_id).set({"name": product_id, "points": points})


def event(event_id: str, event_type: str, received: dt.datetime, body: Any,
          processed: bool = False) -> dict[str, Any]:
    return {"eventId": event_id, "provider": "paynow", "eventType": event_type,
            "receivedAt": received, "processed": processed, "processedAt": None,
            "processingError": None,
            "payload": {"event_type": event_type, "event_id": event_id, "body": body}}


def purchase(event_id: str, order_id: str, received: dt.datetime, customer: str = "c1",
             lines: list[tuple[str, int]] | None = None, total: int = 1000,
             processed: bool = False) -> dict[str, Any]:
    return event(event_id, "ON_ORDER_COMPLETED", received, {
        "id": order_id, "customer": {"id": customer}, "total_amount": total, "currency": "EUR",
        "lines": [{"product_id": p, "quantity": q} for p, q in (lines or [("p1", 1)])]},
        processed)


def refund(event_id: str, order_id: str, received: dt.datetime, amount: int,
           kind: str = "ON_REFUND") -> dict[str, Any]:
    return event(event_id, kind, received, {"id": f"x-{event_id}", "order_id": order_id,
                                            "amount": amount, "currency": "EUR"})


def history_item(event: dict[str, Any], state: str = "failed") -> dict[str, Any]:
    """A queued webhook as PayNow's history lists it (the local PayNow's seed), for a
    receiver-shaped event: created when it was received, its delivery tried once and refused."""
    name = "".join(word.capitalize() for word in event["eventType"].lower().split("_"))
    received = event["receivedAt"].isoformat()
    return {"created_at": received.replace("+00:00", "Z"), "event": name, "state": state,
            "payload": json.dumps(event["payload"]),
            "executions": [{"status_code": 503, "started_at": received,
                            "finished_at": received}]}


def put(db: firestore.Client, *events: dict[str, Any]) -> None:
    for start in range(0, len(events), 400):
        batch = db.batch()
        for data in events[start:start + 400]:
            batch.set(db.collection(schema.EVENTS).document(data["eventId"]), data)
        batch.commit()


def purchases(count: int, days: int = 3, customers: int = 7, prefix: str = "e",
              product_id: str = "p1") -> list[dict[str, Any]]:
    """``count`` unprocessed purchases spread evenly over ``days`` days, one order each."""
    return [purchase(f"{prefix}{n:05}", f"o{prefix}{n:05}",
                     at(1 + n % days, (n * 7) % 1440), f"c{n % customers}",
                     [(product_id, 1 + n % 3)])
            for n in range(count)]


def documents(db: firestore.Client, collection: str) -> dict[str, dict[str, Any]]:
    return {doc.id: doc.to_dict() or {} for doc in db.collection(collection).stream()}


def ledger_state(db: firestore.Client) -> dict[str, Any]:
    """Everything the ledger consists of, to compare before and after."""
    return {"ledger": documents(db, schema.LEDGER), "wallets": {
        cid: w["balance"] for cid, w in documents(db, schema.WALLETS).items()}}


def assert_ledger_consistent(db: firestore.Client) -> dict[str, int]:
    """Every wallet equals the sum of its entries, and reversals follow the contract formula.

    Answers the wallets. (No order can be credited twice: ``purchase_{orderId}`` is unique.)
    """
    sums: dict[str, int] = defaultdict(int)
    for entry_id, entry in documents(db, schema.LEDGER).items():
        sums[entry["customerId"]] += entry["points"]
        if entry["type"] == "purchase":
            assert entry_id == f"purchase_{entry['orderId']}"
            total = entry["orderTotal"]
            refunded = min(entry["refundedAmount"], total)
            assert entry["reversedPoints"] == entry["points"] * refunded // total, entry_id
        elif entry["type"] == "reversal":
            assert entry_id == f"reversal_{entry['sourceEventId']}"
        elif entry["type"] == "rollback":
            assert entry_id == f"rollback_{entry['migrationId']}_{entry['compensates']}"
        elif entry["type"] == "adjustment":
            assert entry_id == f"adjustment_{entry['migrationId']}_{entry['customerId']}"
        else:
            assert entry["type"] == "reinstatement", entry_id
            assert entry_id.startswith("reinstate_") and entry_id.endswith(entry["reinstates"])
    wallets = {cid: w["balance"] for cid, w in documents(db, schema.WALLETS).items()}
    assert {c: b for c, b in wallets.items() if b} == {c: s for c, s in sums.items() if s}
    return wallets


def net_points(db: firestore.Client) -> dict[str, int]:
    """Each order's points over all its entries (purchases, reversals, rollbacks and
    reinstatements): what the order is worth to its customer now."""
    net: dict[str, int] = defaultdict(int)
    for entry in documents(db, schema.LEDGER).values():
        net[entry["orderId"]] += entry["points"]
    return dict(net)


def credited_orders(db: firestore.Client) -> Counter[str]:
    return Counter(e["orderId"] for e in documents(db, schema.LEDGER).values()
                   if e["type"] == "purchase")
