"""Firestore access: the client, collection names, and the few queries every part shares.

Collections follow ``contracts/firestore.md``. Below a run document the bundle keeps its own
subcollections: ``chunks/{chunkId}`` (cursor and counters of one chunk, the counter shards of
the run) and ``errors/{eventId}`` (one record per failed event; its id makes a repeat an
overwrite, never a second record) and, for dry runs, ``dryRunLedger/{entryId}``: the entries the
run would have written, which its later pages read over the ledger, so a dry run sees its own
effects exactly as a live run does.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from shared.config import MAX_COMMIT_BYTES, MAX_WRITES_PER_COMMIT, Settings
from shared.domain.chunking import Window
from shared.errors import Unavailable

T = TypeVar("T")

EVENTS = "webhookEvents"
PRODUCTS = "products"
WALLETS = "wallets"
LEDGER = "ledgerEntries"
RUNS = "dataMigrations"
CHUNKS = "chunks"
# A run's chunk ids in planning order, GRID_IDS to a document (``dataMigrations/{id}/grid/{n}``
# holds those of planning index n x GRID_IDS on): a page of the chunk grid is read by id.
GRID = "grid"
GRID_IDS = 100
ERRORS = "errors"
SHADOW_LEDGER = "dryRunLedger"
# dataMigrations/{id}/dryRunDocuments/{shadow id}: the documents of other collections a dry run
# would have stored ({"path": where, "data": what}).
SHADOW_DOCUMENTS = "dryRunDocuments"
# dataMigrations/{id}/audits/{customerId}: a ledger_verify run's audit of one customer.
AUDITS = "audits"
# The stored kill switch: switch/killSwitch ({enabled, reason, by, changedAt}).
SWITCH = "backfillSwitch"
SWITCH_ID = "killSwitch"
# The money guardrails (shared.executor.guard): dataMigrations/{id}/guard/points holds the points
# of maxPoints reserved ({"reserved"}), dataMigrations/{id}/customerPoints/{customerId} those
# the run moved of one customer ({"points", "customerId"}).
# backfillNotices/{migrationId}-{key}: a run's status changes (and stalls, error rates), each
# published once to the notices topic (shared.adapters.notices).
NOTICES = "backfillNotices"
GUARD = "guard"
GUARD_POOL = "points"
CUSTOMER_POINTS = "customerPoints"


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


def pool_ref(db: firestore.Client, migration_id: str) -> firestore.DocumentReference:
    """The run's pool of maxPoints: the points reserved by its chunks."""
    pool: firestore.DocumentReference = run_ref(db, migration_id).collection(GUARD).document(
        GUARD_POOL)
    return pool


def customer_points_ref(db: firestore.Client, migration_id: str,
                        customer_id: str) -> firestore.DocumentReference:
    """The points the run moved of one customer (maxPointsPerCustomer)."""
    points: firestore.DocumentReference = run_ref(db, migration_id).collection(
        CUSTOMER_POINTS).document(customer_id)
    return points


# Firestore takes at most five aggregations in one aggregation query.
MAX_AGGREGATIONS = 5
# Fields of a chunk document that only the status answer reads (``shared.executor.commit.marks``):
# per code the records its pages wrote, and whether a page took a wallet below zero or tallied
# (true or absent: matched by equality, so that it can be one side of an OR).
ERROR_CODES = "errorCodes"
NOTABLE = "notable"


def count(query: Any, read_time: Any = None) -> int:
    """The number of documents ``query`` matches, by an aggregation (no documents read); as of
    ``read_time`` if given."""
    result = query.count().get(read_time=read_time)
    return int(result[0][0].value)


def aggregate(query: Any, fields: list[str | FieldPath], *, count: bool = False,
              read_time: Any = None) -> tuple[int, list[int]]:
    """The number of documents ``query`` matches (0 unless ``count``) and the sums of
    ``fields`` over them (a field no document holds sums to 0), as of ``read_time`` if given:
    ``MAX_AGGREGATIONS`` to an aggregation query, the queries run side by side. The emulator
    counts and sums, in one aggregation query, only the documents that hold every field it
    sums: give fields that each document holds all of, or none of."""
    wanted: list[str | FieldPath | None] = [None] * count + list(fields)
    if not wanted:
        return 0, []
    groups = [wanted[first:first + MAX_AGGREGATIONS]
              for first in range(0, len(wanted), MAX_AGGREGATIONS)]

    def run(group: list[str | FieldPath | None]) -> list[int]:
        aggregation: Any = query
        for index, field in enumerate(group):
            aggregation = (aggregation.count(alias=f"a{index}") if field is None
                           else aggregation.sum(field, alias=f"a{index}"))
        values = {result.alias: result.value
                  for result in aggregation.get(read_time=read_time)[0]}
        return [int(values.get(f"a{index}") or 0) for index in range(len(group))]

    if len(groups) == 1:
        results = [run(groups[0])]
    else:
        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            results = list(pool.map(run, groups))
    flat = [value for result in results for value in result]
    return (flat[0] if count else 0), flat[int(count):]


def errors_query(db: firestore.Client, migration_id: str, code: str | None = None) -> Any:
    """A run's error records (one per failed event), of one ``code`` if given."""
    query: Any = run_ref(db, migration_id).collection(ERRORS)
    if code:
        query = query.where(filter=FieldFilter("code", "==", code))
    return query


def written_by(db: firestore.Client, migration_id: str) -> Any:
    """The ledger entries a run wrote (``migrationId``)."""
    return db.collection(LEDGER).where(filter=FieldFilter("migrationId", "==", migration_id))


def settled_by(db: firestore.Client, migration_id: str) -> Any:
    """The events a run flagged processed without writing them an entry (skipped as settled:
    a refund of an order already fully reversed)."""
    return db.collection(EVENTS).where(
        filter=FieldFilter("backfillMigrationId", "==", migration_id)).where(
        filter=FieldFilter("backfillOutcome", "==", "skipped"))


def sums(query: Any, fields: tuple[str, ...]) -> dict[str, int]:
    """The sums of ``fields`` over the documents ``query`` matches, in one aggregation."""
    aggregation = query.sum(fields[0], alias="f0")
    for index, field in enumerate(fields[1:], start=1):
        aggregation = aggregation.sum(field, alias=f"f{index}")
    values = {result.alias: result.value for result in aggregation.get()[0]}
    return {field: int(values.get(f"f{index}") or 0) for index, field in enumerate(fields)}


@dataclasses.dataclass(frozen=True)
class Write(Generic[T]):
    """``compare_and_set`` writes ``fields``, and creates the documents of ``creates`` in the
    same commit (it fails whole if one exists), then answers ``then(update_time)``."""

    fields: dict[str, Any]
    then: Callable[[Any], T]
    creates: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Done(Generic[T]):
    """``compare_and_set`` writes nothing and answers ``value``."""

    value: T


def compare_and_set(db: firestore.Client, ref: firestore.DocumentReference,
                    decide: Callable[[Any], Write[T] | Done[T]], *, attempts: int, what: str,
                    read: Any = None, give_up: Callable[[], T] | None = None) -> T:
    """Read ``ref``, let ``decide`` look at the snapshot, and write what it asks for under the
    update time read, so that nothing written meanwhile is overwritten; on a conflict, read and
    decide again.

    ``read`` is a snapshot to decide on first instead of reading. After ``attempts`` conflicts:
    ``give_up()`` if given, else ``Unavailable`` naming ``what`` (a retry of the request can
    help).
    """
    for attempt in range(attempts):
        snap = read if read is not None and attempt == 0 else ref.get()
        decision = decide(snap)
        if isinstance(decision, Done):
            return decision.value
        option = db.write_option(last_update_time=snap.update_time)
        try:
            if decision.creates:
                batch = db.batch()
                batch.update(ref, decision.fields, option=option)
                for path, document in decision.creates.items():
                    batch.create(db.document(path), document)
                update_time = batch.commit()[0].update_time
            else:
                update_time = ref.update(decision.fields, option=option).update_time
        except api_exceptions.FailedPrecondition:
            time.sleep(random.uniform(0.01, 0.05))  # noqa: S311 (jitter, not security)
            continue
        return decision.then(update_time)
    if give_up is not None:
        return give_up()
    raise Unavailable(f"{what} kept changing under concurrent writes; retry")


def fits_one_commit(batch: firestore.WriteBatch) -> bool:
    """Whether ``batch`` is within one commit's budget: ``MAX_WRITES_PER_COMMIT`` writes and
    ``MAX_COMMIT_BYTES`` of encoded writes (under the request limit of Firestore and of its
    emulator, so a commit is never refused for its size after it was planned)."""
    writes = batch._write_pbs  # the encoded writes the commit sends (the client's own list)
    if len(writes) > MAX_WRITES_PER_COMMIT:
        return False
    encoded: int = sum(type(write).pb(write).ByteSize() for write in writes)
    return encoded <= MAX_COMMIT_BYTES


def in_window(query: Any, window: Window) -> Any:
    """``query`` narrowed to the events received in ``window`` (start inclusive, end not)."""
    return query.where(filter=FieldFilter("receivedAt", ">=", window.start)).where(
        filter=FieldFilter("receivedAt", "<", window.end))


def shadow_id(path: str) -> str:
    """The id a dry run keeps the document it would store at ``path`` under (one per path)."""
    return path.replace("/", "__")
