"""A trace's reads on Firestore (``shared.runs.trace.TraceSource``): every read goes through an
index, none scans a collection.

- a customer's purchases: ``payload.body.customer.id ==`` (its single-field index);
- an order's events: ``payload.body.id ==`` with ``eventType ==`` (the purchase), and
  ``payload.body.order_id in`` (its refunds and chargebacks), 30 orders to a query;
- ledger entries: ``customerId ==``, ``orderId ==`` or ``sourceEventId ==`` (single-field);
- a wallet by id, and the sum of a customer's entries as one aggregation;
- every run's records of some events: the ``errors`` collection group by ``eventId in``, and
  a verify's findings about a customer by ``subject ==`` (collection-group single-field
  indexes, declared in ``infra/firestore.tf`` and ``infra/firestore.indexes.json``);
- the runs named, by id in one batched read.

The ``in`` queries run side by side on a small pool: a customer with 1,000 events (700 orders)
is some 30 queries of index reads in Firestore. The emulator has no index: it scans the whole
collection for each value of an ``in`` filter, so there a trace's time grows with the size of
``webhookEvents`` (``docs/performance.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared.adapters import schema
from shared.models import EventType

# Firestore's limit of values in one ``in`` filter.
_IN_VALUES = 30
# Queries side by side. The emulator, which scans its whole collection for each value of an
# ``in`` filter, runs out of its 1 GiB heap with 8 of them over 10,000 events.
_WORKERS = 4

Row = dict[str, Any]


class FirestoreTraces:
    def __init__(self, db: firestore.Client) -> None:
        self._db = db

    def event(self, event_id: str) -> Row | None:
        snap = self._db.collection(schema.EVENTS).document(event_id).get()
        return {**(snap.to_dict() or {}), "eventId": snap.id} if snap.exists else None

    def purchases_of(self, customer_id: str, limit: int) -> list[Row]:
        return _rows(self._db.collection(schema.EVENTS).where(
            filter=FieldFilter("payload.body.customer.id", "==", customer_id)).limit(limit),
            "eventId")

    def events_of(self, order_ids: Sequence[str], limit: int,
                  purchases: bool = True) -> list[Row]:
        """The orders' refunds and chargebacks, and (``purchases``) their purchases."""
        events = self._db.collection(schema.EVENTS)

        def bought(ids: list[str]) -> Any:
            return events.where(filter=FieldFilter("eventType", "==",
                                                   EventType.ORDER_COMPLETED.value)).where(
                filter=FieldFilter("payload.body.id", "in", ids)).limit(limit)

        def reversals(ids: list[str]) -> Any:
            return events.where(filter=FieldFilter("payload.body.order_id", "in", ids)) \
                .limit(limit)

        return _each(order_ids, [bought, reversals] if purchases else [reversals], "eventId")

    def entries(self, field: str, value: str, limit: int) -> list[Row]:
        """The ledger entries whose ``field`` (customerId, orderId, sourceEventId) is
        ``value``."""
        return _rows(self._db.collection(schema.LEDGER).where(
            filter=FieldFilter(field, "==", value)).limit(limit), "entryId")

    def entries_of(self, order_ids: Sequence[str], limit: int) -> list[Row]:
        ledger = self._db.collection(schema.LEDGER)
        return _each(order_ids, [lambda ids: ledger.where(
            filter=FieldFilter("orderId", "in", ids)).limit(limit)], "entryId")

    def wallet(self, customer_id: str) -> tuple[int | None, int]:
        """The wallet's balance (None: no wallet) and the sum of the customer's entries."""
        snap = self._db.collection(schema.WALLETS).document(customer_id).get()
        balance = (snap.to_dict() or {}).get("balance") if snap.exists else None
        total = schema.sums(self._db.collection(schema.LEDGER).where(
            filter=FieldFilter("customerId", "==", customer_id)), ("points",))["points"]
        return (balance if isinstance(balance, int) else None), total

    def records(self, ids: Sequence[str], subject: str | None, limit: int) -> list[Row]:
        """Every run's error records of the events or entries ``ids`` and, with ``subject``,
        the findings about it; each with the run it belongs to (``migrationId``)."""
        errors = self._db.collection_group(schema.ERRORS)
        rows = _each(ids, [lambda chunk: errors.where(
            filter=FieldFilter("eventId", "in", chunk)).limit(limit)], "recordId",
            with_run=True)
        if subject is not None:
            rows += _rows(errors.where(filter=FieldFilter("subject", "==", subject))
                          .limit(limit), "recordId", with_run=True)
        unique = {(row["migrationId"], row["recordId"]): row for row in rows}
        return list(unique.values())

    def runs(self, migration_ids: Iterable[str]) -> list[Row]:
        refs = [schema.run_ref(self._db, migration_id) for migration_id in migration_ids]
        return [{**(snap.to_dict() or {}), "migrationId": snap.id}
                for snap in self._db.get_all(refs) if snap.exists] if refs else []


def _rows(query: Any, key: str, with_run: bool = False) -> list[Row]:
    rows = []
    for snap in query.stream():
        row = {**(snap.to_dict() or {}), key: snap.id}
        if with_run:  # dataMigrations/{migrationId}/errors/{recordId}
            row["migrationId"] = snap.reference.parent.parent.id
        rows.append(row)
    return rows


def _each(values: Sequence[str], queries: list[Callable[[list[str]], Any]], key: str,
          with_run: bool = False) -> list[Row]:
    """Every query over ``values`` in groups of 30 (an ``in`` filter's most), side by side."""
    unique = sorted(set(values))
    groups = [unique[first:first + _IN_VALUES] for first in range(0, len(unique), _IN_VALUES)]
    jobs = [(query, group) for group in groups for query in queries]
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(_WORKERS, len(jobs))) as pool:
        found = pool.map(lambda job: _rows(job[0](job[1]), key, with_run), jobs)
        return [row for rows in found for row in rows]
