"""Ledger sinks: where a page's planned effects go.

``LiveLedger`` writes ledger entries (create-if-absent), changed entries (under the update time
they were read at), wallet increments (summed per wallet) and event flags. ``ShadowLedger`` is a
dry run's: its entries go to the run's shadow ledger (``dataMigrations/{id}/dryRunLedger``),
which its reads overlay on the real ledger, so later pages see the run's own effects exactly as
a live run's do; it writes no wallet, and flags events ``dryRunProcessed``. The executor calls
one or the other the same way: a dry run only swaps the sink.

Every write goes into the page's one batch; nothing here commits. Entries, flags and wallets are
stamped with the page's time (the one clock's), taken as the page is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared import clock
from shared.adapters import schema
from shared.backfills.base import Finding, ItemResult, PagePlan, Sink, Stored
from shared.domain.records import ErrorRecord
from shared.models import Outcome


def read_documents(db: firestore.Client, paths: list[str]) -> dict[str, Stored]:
    """The documents at ``paths`` (``Stored.data`` None for those that do not exist)."""
    if not paths:
        return {}
    return {snap.reference.path: Stored(snap.to_dict() if snap.exists else None,
                                        snap.update_time)
            for snap in db.get_all([db.document(path) for path in paths])}


def _entries(query: Any) -> dict[str, Stored]:
    return {f"{schema.LEDGER}/{snap.id}": Stored(snap.to_dict() or {}, snap.update_time)
            for snap in query.stream()}


# Collections a dry run reads as they are: reference data, and wallets (it never moves one).
_UNSHADOWED = (f"{schema.PRODUCTS}/", f"{schema.WALLETS}/")


class LiveLedger:
    # Entries and stored documents are written with ``create``: one that exists fails the
    # page's whole commit.
    creates_if_absent = True

    def __init__(self, db: firestore.Client, migration_id: str) -> None:
        self._db = db
        self._migration_id = migration_id

    def read(self, paths: list[str]) -> dict[str, Stored]:
        return read_documents(self._db, paths)

    def customer_ledger(self, customer_id: str) -> tuple[dict[str, Stored], Stored]:
        wallet_ref = self._db.collection(schema.WALLETS).document(customer_id)
        query = self._db.collection(schema.LEDGER).where(
            filter=FieldFilter("customerId", "==", customer_id))
        for _ in range(5):
            wallet = wallet_ref.get()
            entries = _entries(query)
            if wallet_ref.get().update_time == wallet.update_time:
                break
        return entries, Stored(wallet.to_dict() if wallet.exists else None,
                               wallet.update_time if wallet.exists else None)

    def write(self, batch: firestore.WriteBatch, plan: PagePlan,
              stored: dict[str, Stored]) -> None:
        ledger = self._db.collection(schema.LEDGER)
        # The page's time, not the server's: a server timestamp is one more field transform
        # to encode per write, and encoding writes is most of the executor's CPU.
        now = clock.now()
        for entry_id, data in plan.creates.items():
            batch.create(ledger.document(entry_id), {**data, "createdAt": now})
        for entry_id, (fields, read_at) in plan.updates.items():
            batch.update(ledger.document(entry_id),
                         {**fields, "updatedAt": firestore.SERVER_TIMESTAMP},
                         option=self._db.write_option(last_update_time=read_at))
        wallets = self._db.collection(schema.WALLETS)
        for customer_id, delta in plan.wallet_deltas.items():
            if delta and customer_id not in plan.wallet_guards:
                batch.set(wallets.document(customer_id),
                          {"balance": firestore.Increment(delta), "updatedAt": now},
                          merge=True)
        for customer_id, read_at in plan.wallet_guards.items():
            # A repair decided on this wallet as read: written only if it has not moved.
            delta = plan.wallet_deltas.get(customer_id, 0)
            batch.update(wallets.document(customer_id),
                         {"balance": firestore.Increment(delta), "updatedAt": now} if delta
                         else {"verifiedAt": now},
                         option=self._db.write_option(last_update_time=read_at))
        events = self._db.collection(schema.EVENTS)
        for event_id, fields in plan.event_updates.items():
            batch.update(events.document(event_id), fields)
        for path, data in plan.documents.items():
            batch.create(self._db.document(path), data)

    def flag(self, batch: firestore.WriteBatch, results: Iterable[ItemResult],
             already: set[str]) -> None:
        events = self._db.collection(schema.EVENTS)
        now = clock.now()  # the page's time (see ``write``)
        for result in results:
            if result.settled and not (result.event_id in already
                                       and result.outcome is not Outcome.APPLIED):
                batch.update(events.document(result.event_id), {
                    "processed": True, "processedAt": now,
                    "backfillMigrationId": self._migration_id,
                    "backfillOutcome": result.outcome.value})


class ShadowLedger:
    # Its creates go to the shadow, where an entry the real ledger holds does not exist.
    creates_if_absent = False

    def __init__(self, db: firestore.Client, migration_id: str) -> None:
        self._db = db
        self._migration_id = migration_id
        self._shadow = schema.run_ref(db, migration_id).collection(schema.SHADOW_LEDGER)

    def read(self, paths: list[str]) -> dict[str, Stored]:
        """The documents, with the ledger entries the run's shadow ledger holds in their place
        (read in the same round trip)."""
        prefix = f"{schema.LEDGER}/"
        shadow_of = {self._shadow.document(path.removeprefix(prefix)).path: path
                     for path in paths if path.startswith(prefix)}
        # Documents of other collections the run would have stored (not reference data nor
        # wallets, which a dry run never writes): its own shadow's, where it holds them.
        stored = schema.run_ref(self._db, self._migration_id).collection(
            schema.SHADOW_DOCUMENTS)
        shadow_of.update((stored.document(schema.shadow_id(path)).path, path) for path in paths
                         if not path.startswith((prefix, *_UNSHADOWED)))
        found = read_documents(self._db, [*paths, *shadow_of])
        for shadow_path, path in shadow_of.items():
            entry = found.pop(shadow_path)
            if entry.data is None:
                continue
            data = entry.data if path.startswith(prefix) else entry.data.get("data")
            found[path] = dataclasses.replace(entry, data=data, shadowed=True)
        return found

    def customer_ledger(self, customer_id: str) -> tuple[dict[str, Stored], Stored]:
        """The customer's entries with the run's shadow entries in their place, and their
        wallet as the run's effects would have moved it: a dry run writes no wallet, so its
        balance is the real one plus the points of the entries only its shadow holds."""
        entries, wallet = LiveLedger(self._db, self._migration_id).customer_ledger(customer_id)
        shadowed = _entries(self._shadow.where(
            filter=FieldFilter("customerId", "==", customer_id)))
        moved = sum(int((entry.data or {}).get("points", 0))
                    for path, entry in shadowed.items() if path not in entries)
        entries.update((path, dataclasses.replace(entry, shadowed=True))
                       for path, entry in shadowed.items())
        if moved:
            data = dict(wallet.data or {})
            data["balance"] = int(data.get("balance", 0)) + moved
            wallet = dataclasses.replace(wallet, data=data)
        return entries, wallet

    def write(self, batch: firestore.WriteBatch, plan: PagePlan,
              stored: dict[str, Stored]) -> None:
        now = clock.now()  # the page's time (see ``LiveLedger.write``)
        for entry_id, data in plan.creates.items():
            batch.create(self._shadow.document(entry_id), {**data, "createdAt": now})
        for entry_id, (fields, read_at) in plan.updates.items():
            original = stored[f"{schema.LEDGER}/{entry_id}"]
            if not original.shadowed:
                # The run's first change of a real entry: copy it into the shadow ledger.
                batch.create(self._shadow.document(entry_id), {**(original.data or {}), **fields})
            else:
                batch.update(self._shadow.document(entry_id),
                             {**fields, "updatedAt": firestore.SERVER_TIMESTAMP},
                             option=self._db.write_option(last_update_time=read_at))
        # Documents of other collections: kept in the run's shadow under their path, so the
        # dry run stores nothing where they would go and its report can say what it would.
        shadow_documents = schema.run_ref(self._db, self._migration_id).collection(
            schema.SHADOW_DOCUMENTS)
        for path, data in plan.documents.items():
            batch.create(shadow_documents.document(schema.shadow_id(path)),
                         {"path": path, "data": data})

    def flag(self, batch: firestore.WriteBatch, results: Iterable[ItemResult],
             already: set[str]) -> None:
        events = self._db.collection(schema.EVENTS)
        for result in results:
            if result.outside:
                continue  # a dry run leaves the events outside its target alone too
            batch.update(events.document(result.event_id), {
                "dryRunProcessed": True, "dryRunOutcome": result.outcome.value,
                "dryRunMigrationId": self._migration_id})


def sink_of(db: firestore.Client, migration_id: str, dry_run: bool) -> Sink:
    return ShadowLedger(db, migration_id) if dry_run else LiveLedger(db, migration_id)


def record_error(db: firestore.Client, batch: firestore.WriteBatch, migration_id: str,
                 chunk_id: str, result: ItemResult, attempts: int = 1) -> None:
    """The event's error record in the run (its id is the event's: a repeat overwrites)."""
    errors = schema.run_ref(db, migration_id).collection(schema.ERRORS)
    record = ErrorRecord(id=result.event_id, event_id=result.event_id,
                         event_type=result.event_type, code=result.code, message=result.message,
                         hint=result.hint, chunk_id=chunk_id)
    batch.set(errors.document(result.event_id), {
        **record.fields(), "at": firestore.SERVER_TIMESTAMP,
        "attempts": firestore.Increment(attempts)}, merge=True)


def record_finding(db: firestore.Client, batch: firestore.WriteBatch, migration_id: str,
                   chunk_id: str, finding: Finding) -> None:
    """An audit's finding, as one of the run's records (beside its failed events)."""
    records = schema.run_ref(db, migration_id).collection(schema.ERRORS)
    record = ErrorRecord(id=finding.record_id, event_id=finding.event_id,
                         event_type=finding.event_type, code=finding.code,
                         message=finding.message, hint=finding.hint, subject=finding.subject,
                         repaired=finding.repaired, would_repair=finding.would_repair,
                         chunk_id=chunk_id, attempts=1)
    batch.set(records.document(finding.record_id), {
        **record.fields(), "at": firestore.SERVER_TIMESTAMP})


def record_audit(db: firestore.Client, batch: firestore.WriteBatch, migration_id: str,
                 customer_id: str, audit: dict[str, Any]) -> None:
    """A run's audit of one customer, created if absent: the page that commits it first is
    the one that audited the customer; any other page's commit fails on it whole and is
    planned again, reading it (``ledger_verify``)."""
    audits = schema.run_ref(db, migration_id).collection(schema.AUDITS)
    batch.create(audits.document(customer_id), {**audit, "at": firestore.SERVER_TIMESTAMP})


def mark_resolved(db: firestore.Client, batch: firestore.WriteBatch, retried_run: str,
                  migration_id: str, results: Iterable[ItemResult]) -> None:
    """A live retry run settled these events: mark their error records in the run it retries."""
    errors = schema.run_ref(db, retried_run).collection(schema.ERRORS)
    for result in results:
        # A repeat too: this run settled it already, on an earlier page (a refund pulled it).
        if result.settled and result.outcome is not Outcome.ERROR:
            batch.update(errors.document(result.event_id), {
                "resolvedBy": migration_id, "resolvedAt": firestore.SERVER_TIMESTAMP})


