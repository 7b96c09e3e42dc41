"""Structured logs for Cloud Logging: one JSON object per line, data in ``json_fields``.

Every record the bundle writes carries ``component: "backfill"``. ``log`` accepts only the field
names listed in ``FIELDS`` and drops any other, so a token or a payload cannot reach the logs by
a careless keyword argument; messages are fixed strings, never formatted with data.
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
    "throttled_seconds", "error_rate", "event_type",
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
