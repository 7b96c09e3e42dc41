"""The gaps report's reads on Firestore (``shared.runs.gaps.GapSource``): aggregations and
id-only reads, so a day's scan costs a count and one read per ledger entry looked up."""

from __future__ import annotations

import dataclasses

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared.adapters import schema
from shared.adapters.schema import in_window
from shared.domain import ledger
from shared.domain.chunking import Window
from shared.models import REVERSAL_TYPES, EventType, document_id_problem

_LOOKUP_BATCH = 300


@dataclasses.dataclass(frozen=True)
class Scan:
    """What one day's scan of one kind found."""

    scanned: int
    missing: int
    complete: bool


class FirestoreGaps:
    def __init__(self, db: firestore.Client) -> None:
        self._db = db

    def unprocessed(self, window: Window, event_type: str) -> int:
        events = self._db.collection(schema.EVENTS)
        return schema.count(in_window(events.where(filter=FieldFilter("processed", "==", False))
                                     .where(filter=FieldFilter("eventType", "==", event_type)),
                                     window))

    def reversals(self, window: Window, limit: int) -> Scan:
        query = in_window(self._db.collection(schema.EVENTS).where(
            filter=FieldFilter("eventType", "in", list(REVERSAL_TYPES))), window)
        wanted: dict[str, str] = {}
        snaps = list(query.select(["processed", "backfillOutcome"]).limit(limit + 1).stream())
        for snap in snaps[:limit]:
            data = snap.to_dict() or {}
            if data.get("processed") is True and data.get("backfillOutcome") == "skipped":
                continue  # settled: its order was fully reversed already
            wanted[ledger.reversal_id(snap.id)] = snap.id
        return Scan(min(len(snaps), limit), len(wanted) - self._existing(list(wanted)),
                    len(snaps) <= limit)

    def purchases(self, window: Window, limit: int) -> Scan:
        query = in_window(self._db.collection(schema.EVENTS).where(
            filter=FieldFilter("eventType", "==", EventType.ORDER_COMPLETED.value)).where(
            filter=FieldFilter("processed", "==", True)), window)
        snaps = list(query.select(["payload.body.id"]).limit(limit + 1).stream())
        entries: set[str] = set()
        for snap in snaps[:limit]:
            payload = (snap.to_dict() or {}).get("payload")
            body = payload.get("body") if isinstance(payload, dict) else None
            order_id = body.get("id") if isinstance(body, dict) else None
            if isinstance(order_id, str) and order_id and not document_id_problem(order_id):
                entries.add(ledger.purchase_id(order_id))
        return Scan(min(len(snaps), limit), len(entries) - self._existing(sorted(entries)),
                    len(snaps) <= limit)

    def stored(self, event_ids: list[str]) -> set[str]:
        """Which of the events ``event_ids`` ``webhookEvents`` holds (read without fields)."""
        return self._present(schema.EVENTS, event_ids)

    def _present(self, collection: str, ids: list[str]) -> set[str]:
        ref, found = self._db.collection(collection), set[str]()
        for start in range(0, len(ids), _LOOKUP_BATCH):
            refs = [ref.document(doc_id) for doc_id in ids[start:start + _LOOKUP_BATCH]]
            found.update(snap.id for snap in self._db.get_all(refs, field_paths=["eventId"])
                         if snap.exists)
        return found

    def _existing(self, entry_ids: list[str]) -> int:
        """How many of the ledger entries ``entry_ids`` exist (read without their fields)."""
        ledger_ref = self._db.collection(schema.LEDGER)
        found = 0
        for start in range(0, len(entry_ids), _LOOKUP_BATCH):
            refs = [ledger_ref.document(entry_id)
                    for entry_id in entry_ids[start:start + _LOOKUP_BATCH]]
            found += sum(snap.exists for snap in self._db.get_all(refs, field_paths=["type"]))
        return found
