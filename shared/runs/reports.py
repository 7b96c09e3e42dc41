"""A run's error report: one row per failed event (for ``ledger_verify``: per finding, with its
``subject`` and whether it was ``repaired``), as JSON or CSV, optionally of one code.

Rows come from the run's ``errors`` subcollection (one record per failed event, keyed by event
id), read in pages in event id order, so a report of any size streams in constant memory.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterator
from typing import Any

from shared.adapters.stores import Stores
from shared.errors import InvalidRequest, NotFound

COLUMNS = ("eventId", "eventType", "code", "message", "hint", "attempts", "chunkId", "at",
           "resolvedBy", "subject", "repaired", "wouldRepair")
_CODE = re.compile(r"^[a-z_]{1,64}$")
_PAGE = 500
# A cell a spreadsheet would run as a formula: messages quote ids taken from payloads.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def check_code(code: str | None) -> str | None:
    if code is not None and not _CODE.match(code):
        raise InvalidRequest("code", "must be an error code such as product_not_found")
    return code


def error_rows(stores: Stores, migration_id: str,
               code: str | None = None) -> Iterator[dict[str, Any]]:
    """The run's error records in event id order; ``NotFound`` if there is no such run."""
    if stores.runs.get(migration_id) is None:
        raise NotFound(f"no run {migration_id}")
    records = stores.errors.pages(migration_id, check_code(code), _PAGE)
    return ({column: _plain(row.get(column)) for column in COLUMNS}
            for row in (record.model_dump(by_alias=True) for record in records))


def as_csv(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """A header line, then one CSV line per row (formula-looking cells quoted with ``'``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def line(values: list[Any]) -> str:
        writer.writerow(values)
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    yield line(list(COLUMNS))
    for row in rows:
        yield line([_safe(row[column]) for column in COLUMNS])


def _safe(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return value
