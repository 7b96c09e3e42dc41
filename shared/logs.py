"""Structured logs for Cloud Logging: one JSON object per line, data in ``json_fields``.

Every record the bundle writes carries ``component: "backfill"``. ``log`` accepts only the field
names listed in ``FIELDS`` and drops any other, so a token or a payload cannot reach the logs by
a careless keyword argument; messages are fixed strings, never formatted with data. An
exception is logged by ``error_fields``: its type and code, never its text.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from google.cloud.logging.handlers import StructuredLogHandler

COMPONENT = "backfill"
FIELDS = frozenset({
    "migration_id", "type", "event_count", "start_date", "end_date", "dry_run", "processed",
    "applied", "duplicates", "skipped", "errors", "total", "eligible", "chunk_id", "chunks",
    "segment", "status", "caller", "reason", "task_name", "duration_ms", "event_id", "code",
    "attempt", "below_zero", "previous", "action", "rate", "runs", "field", "limit",
    "throttled_seconds", "error_rate", "event_type", "error_type", "cause_type", "grpc_code",
})

_configured = threading.Lock()
_done = False


def setup(project_id: str | None = None) -> None:
    """Route the root logger through ``StructuredLogHandler`` (idempotent)."""
    global _done
    with _configured:
        if _done:
            return
        root = logging.getLogger()
        root.handlers[:] = [StructuredLogHandler(project_id=project_id)]
        root.setLevel(logging.INFO)
        _done = True


def log(logger: logging.Logger, message: str, level: int = logging.INFO, **fields: Any) -> None:
    """Write ``message`` with the allowed ``fields`` as structured data."""
    data = {key: value for key, value in fields.items() if key in FIELDS}
    data["component"] = COMPONENT
    logger.log(level, message, extra={"json_fields": data})


def error_fields(error: BaseException) -> dict[str, str]:
    """What a line may say of an unexpected exception: its type's full name, its cause's (an
    error raised from another), and the gRPC status code of a Google API error (or of its
    cause, or of the last attempt a ``RetryError`` gave up after). Never its text: Firestore's
    quote document paths, and an exception of the bundle's may quote payload values."""
    fields = {"error_type": _qualified(error)}
    cause = error.__cause__ or getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        fields["cause_type"] = _qualified(cause)
    for source in (error, cause):
        code = getattr(getattr(source, "grpc_status_code", None), "name", None)
        if isinstance(code, str):
            fields["grpc_code"] = code
            break
    return fields


def _qualified(error: BaseException) -> str:
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}"
