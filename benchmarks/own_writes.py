"""The replay's own writes at the emulator's raw rate: the denominator of the replay's ratio.

A live replay of a purchase writes three things: the event's processed flag (an update of its
document), its ``purchase_{orderId}`` ledger entry (a create) and its customer's wallet increment
(one per wallet per page). ``own_writes`` makes exactly those writes for the same events, with
the same fields, in batch commits of ``BATCH_OPS`` operations from one client, one after
another, with no read in between: what the replay would cost if it did nothing but write. The
replay's events per second over this rate is the share of the machine's write rate it reaches
(``make bench`` prints it); the rest is what the replay spends besides writing (its reads, its
round trips, its checkpoints).

The events are read and their entries computed before the clock starts; the writes land in the
emulator as the replay's would (the events flagged, the entries created, the wallets moved), so
the caller empties Firestore afterwards.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared.adapters import schema
from shared.domain import ledger
from shared.models import OrderCompleted, parse_body

BATCH_OPS = 500
_MIGRATION = "own-writes"


def _writes(db: firestore.Client, start: dt.datetime,
            end: dt.datetime) -> list[tuple[str, str, dict[str, Any]]]:
    """(event id, customer id, entry) of every unprocessed purchase received in [start, end)."""
    points = {snap.id: int((snap.to_dict() or {}).get("points", 0))
              for snap in db.collection(schema.PRODUCTS).stream()}
    query = db.collection(schema.EVENTS).where(filter=FieldFilter("processed", "==", False)) \
        .where(filter=FieldFilter("receivedAt", ">=", start)) \
        .where(filter=FieldFilter("receivedAt", "<", end))
    found = []
    for snap in query.stream():
        data = snap.to_dict() or {}
        order = parse_body(OrderCompleted, data)
        credited = sum(points.get(line.product_id, 0) * line.quantity for line in order.lines)
        found.append((snap.id, order.customer.id, {
            "customerId": order.customer.id, "type": "purchase", "points": credited,
            "orderId": order.id, "sourceEventId": snap.id, "source": "backfill",
            "migrationId": _MIGRATION, "orderTotal": order.total_amount,
            "refundedAmount": 0, "reversedPoints": 0}))
    return found


def own_writes(db: firestore.Client, start: dt.datetime, end: dt.datetime,
               batch_ops: int = BATCH_OPS) -> dict[str, Any]:
    """Write what a live replay of [start, end) writes, in ``batch_ops``-op batches with no
    reads; answer the events, documents written, seconds and events per second."""
    planned = _writes(db, start, end)
    events_ref, ledger_ref = db.collection(schema.EVENTS), db.collection(schema.LEDGER)
    wallets_ref = db.collection(schema.WALLETS)
    documents = 0
    began = time.perf_counter()
    position = 0
    while position < len(planned):
        batch = db.batch()
        deltas: dict[str, int] = defaultdict(int)
        now = dt.datetime.now(dt.UTC)
        taken = 0
        # Two writes per event, and one per wallet of the batch (written last, summed).
        while position < len(planned) and 2 * (taken + 1) + len(
                deltas.keys() | {planned[position][1]}) <= batch_ops:
            event_id, customer_id, entry = planned[position]
            batch.update(events_ref.document(event_id), {
                "processed": True, "processedAt": now, "backfillMigrationId": _MIGRATION,
                "backfillOutcome": "applied"})
            batch.create(ledger_ref.document(ledger.purchase_id(entry["orderId"])),
                         {**entry, "createdAt": now})
            deltas[customer_id] += entry["points"]
            position += 1
            taken += 1
        for customer_id, delta in deltas.items():
            batch.set(wallets_ref.document(customer_id),
                      {"balance": firestore.Increment(delta), "updatedAt": now}, merge=True)
        documents += len(batch)
        batch.commit()
    seconds = time.perf_counter() - began
    return {"events": len(planned), "documents": documents, "seconds": round(seconds, 3),
            "events_per_s": round(len(planned) / seconds) if seconds else None,
            "writes_per_event": round(documents / len(planned), 2) if planned else None,
            "batch_ops": batch_ops}

