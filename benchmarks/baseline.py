"""The simplest correct alternative to the bundle's replay, for the benchmark to compare with:
one Firestore transaction per event, on a pool of threads.

Each transaction reads the event (skipping it if it is processed meanwhile) and the documents
its rule needs, plans the event alone with the bundle's own rules, and writes its ledger entry,
wallet increment and processed flag. It is exactly-once by the transaction, so it is a fair
baseline: what a careful engineer would write in an afternoon, with none of the bundle's
batching, chunking or task fan-out.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared.adapters import schema
from shared.backfills.base import Event, Stored
from shared.backfills.registry import BACKFILLS, BackfillType
from shared.executor import sinks
from shared.models import Outcome

WORKERS = 8


@dataclasses.dataclass
class BaselineResult:
    events: int
    applied: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def unprocessed(db: firestore.Client, start: dt.datetime, end: dt.datetime) -> list[str]:
    """The ids of the unprocessed events received in ``[start, end)``."""
    query = db.collection(schema.EVENTS).where(filter=FieldFilter("processed", "==", False)) \
        .where(filter=FieldFilter("receivedAt", ">=", start)) \
        .where(filter=FieldFilter("receivedAt", "<", end))
    return [snap.id for snap in query.select([]).stream()]


def replay(db: firestore.Client, event_ids: list[str], workers: int = WORKERS) -> BaselineResult:
    """Apply each event in its own transaction, ``workers`` at a time."""
    backfill = BACKFILLS.get(BackfillType.WEBHOOK_REPLAY)
    ledger = sinks.LiveLedger(db, "baseline")
    events = db.collection(schema.EVENTS)

    def apply(event_id: str) -> bool:
        @firestore.transactional
        def one(transaction: firestore.Transaction) -> bool:
            snap = events.document(event_id).get(transaction=transaction)
            data: dict[str, Any] = snap.to_dict() or {}
            if not snap.exists or data.get("processed"):
                return False
            event = Event(event_id, data)
            paths = backfill.lookups([event])
            stored = {found.reference.path: Stored(found.to_dict() if found.exists else None,
                                                   found.update_time)
                      for found in db.get_all([db.document(path) for path in paths],
                                              transaction=transaction)}
            plan = backfill.plan([event], stored, "baseline")
            # A transaction takes writes as a batch does (both are write batches).
            writes = cast(firestore.WriteBatch, transaction)
            ledger.write(writes, plan, stored)
            ledger.flag(writes, plan.results, set())
            return any(result.outcome is Outcome.APPLIED for result in plan.results)

        applied: bool = one(db.transaction())
        return applied

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        applied = sum(pool.map(apply, event_ids))
    return BaselineResult(len(event_ids), applied, time.perf_counter() - started)
