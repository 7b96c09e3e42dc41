"""Firestore access: the client, collection names, and the few queries every part shares.

Collections follow ``contracts/firestore.md``. Below a run document the bundle keeps its own
subcollections: ``chunks/{chunkId}`` (cursor and counters of one chunk, the counter shards of
the run) and ``errors/{eventId}`` (one record per failed event; its id makes a repeat an
overwrite, never a second record) and, for dry runs, ``dryRunLedger/{entryId}``: the entries the
run would have written, which its later pages read over the ledger, so a dry run sees its own
effects exactly as a live run does.
"""

from __future__ import annotations

import functools
from typing import Any

from google.cloud import firestore

from shared.config import Settings

EVENTS = "webhookEvents"
PRODUCTS = "products"
WALLETS = "wallets"
LEDGER = "ledgerEntries"
RUNS = "dataMigrations"
CHUNKS = "chunks"
ERRORS = "errors"
SHADOW_LEDGER = "dryRunLedger"


@functools.cache
def _client(project_id: str, database: str) -> firestore.Client:
    return firestore.Client(project=project_id, database=database)


def client(settings: Settings) -> firestore.Client:
    """One Firestore client per process and database (it is thread-safe and pools channels)."""
    return _client(settings.project_id, settings.database)


def run_ref(db: firestore.Client, migration_id: str) -> firestore.DocumentReference:
    return db.collection(RUNS).document(migration_id)


def chunk_ref(db: firestore.Client, migration_id: str,
              chunk_id: str) -> firestore.DocumentReference:
    chunk: firestore.DocumentReference = run_ref(db, migration_id).collection(CHUNKS).document(
        chunk_id)
    return chunk


def count(query: Any) -> int:
    """The number of documents ``query`` matches, by an aggregation (no documents read)."""
    result = query.count().get()
    return int(result[0][0].value)
