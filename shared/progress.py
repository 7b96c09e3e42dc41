"""What the status function reports: recent runs, and one run with its chunks and first errors.

Counts are the sums of the chunk documents' counters (the run document is never written per
event). ``processed`` is the events whose ledger effect now exists (applied + duplicates); in a
dry run every count says what the run would have done.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared import runs, store
from shared.errors import InvalidRequest, NotFound
from shared.models import BackfillType, RunStatus

_RUN_FIELDS = ("migrationId", "type", "status", "dryRun", "startDate", "endDate", "maxEvents",
               "planned", "eligible", "total", "chunkCount", "requestedBy", "createdAt",
               "startedAt", "finishedAt", "failureReason")


def list_runs(db: firestore.Client, limit: int = 20, backfill_type: str | None = None,
              status: str | None = None) -> list[dict[str, Any]]:
    """The most recent runs, newest first, optionally of one type or status."""
    if not 1 <= limit <= 200:
        raise InvalidRequest("limit", "must be between 1 and 200")
    query: Any = db.collection(store.RUNS)
    if backfill_type is not None:
        if backfill_type not in set(BackfillType):
            raise InvalidRequest("type", f"unknown backfill type {backfill_type!r}")
        query = query.where(filter=FieldFilter("type", "==", backfill_type))
    if status is not None:
        if status not in set(RunStatus):
            raise InvalidRequest("status", f"unknown status {status!r}")
        query = query.where(filter=FieldFilter("status", "==", status))
    query = query.order_by("createdAt", direction=firestore.Query.DESCENDING).limit(limit)
    return [_jsonable({key: (snap.to_dict() or {}).get(key) for key in _RUN_FIELDS})
            for snap in query.stream()]


def describe_run(db: firestore.Client, migration_id: str, first_errors: int) -> dict[str, Any]:
    """One run: parameters, status, summed counts, percent, per-chunk progress, first errors."""
    snap = store.run_ref(db, migration_id).get()
    if not snap.exists:
        raise NotFound(f"no run {migration_id}")
    run = snap.to_dict() or {}
    chunk_docs = [(chunk.id, chunk.to_dict() or {}) for chunk in
                  store.run_ref(db, migration_id).collection(store.CHUNKS).order_by("index")
                  .stream()]
    sums = runs.summarize([data for _, data in chunk_docs])
    total = int(run.get("total") or 0)
    taken = sums["taken"]
    left_over = int(run.get("eligible") or 0) - total
    states: dict[str, int] = {}
    for _, data in chunk_docs:
        states[data["state"]] = states.get(data["state"], 0) + 1
    errors = (store.run_ref(db, migration_id).collection(store.ERRORS)
              .order_by("at").limit(first_errors).stream())
    body = {key: run.get(key) for key in _RUN_FIELDS}
    body.update(
        total=total,
        processed=sums["processed"],
        applied=sums["applied"],
        duplicates=sums["duplicates"],
        skipped=sums["skipped"],
        errors=sums["errors"],
        taken=taken,
        pointsMoved=sums["points"],
        percent=_percent(run, taken, total),
        leftForLaterRun=max(left_over, 0),
        walletsBelowZero={"count": len(sums["belowZero"]), "customerIds": sums["belowZero"]},
        chunkStates=states,
        chunks=[_chunk_view(chunk_id, data) for chunk_id, data in chunk_docs],
        firstErrors=[_error_view(error.to_dict() or {}) for error in errors],
    )
    if not run.get("planned"):
        body["note"] = "planning: counting the events of each chunk"
    elif left_over > 0:
        body["note"] = (f"maxEvents bounded this run: {left_over} eligible event(s) are left "
                        "for a later run")
    result: dict[str, Any] = _jsonable(body)
    return result


def _percent(run: dict[str, Any], taken: int, total: int) -> float:
    if not run.get("planned"):
        return 0.0
    if total == 0:
        return 100.0
    return round(min(100.0, 100.0 * taken / total), 1)


def _chunk_view(chunk_id: str, data: dict[str, Any]) -> dict[str, Any]:
    counters = data.get("counters") or {}
    cursor = data.get("cursor") or {}
    return {
        "chunkId": chunk_id,
        "state": data.get("state"),
        "windowStart": data.get("windowStart"),
        "windowEnd": data.get("windowEnd"),
        "eligible": data.get("eligible"),
        "quota": data.get("quota"),
        "taken": counters.get("taken", 0),
        "applied": counters.get("applied", 0),
        "duplicates": counters.get("duplicates", 0),
        "skipped": counters.get("skipped", 0),
        "errors": counters.get("errors", 0),
        "segment": data.get("segment"),
        "pages": data.get("pages", 0),
        "cursorEventId": cursor.get("eventId"),
        "updatedAt": data.get("updatedAt"),
        "note": data.get("note") or data.get("failureReason") or "",
    }


def _error_view(data: dict[str, Any]) -> dict[str, Any]:
    return {key: data.get(key) for key in
            ("eventId", "eventType", "code", "message", "hint", "chunkId", "attempts", "at")}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return value
