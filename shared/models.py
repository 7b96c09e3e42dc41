"""The bundle's data shapes: the trigger's request, webhook payloads, and run/chunk records.

Field names of records follow ``contracts/firestore.md`` (camelCase in Firestore). Payload models
validate only what a ledger effect needs; everything else PayNow sends is ignored.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import InvalidRequest, MalformedPayload


class BackfillType(enum.StrEnum):
    """A backfill type (job kind): what a run reads and how it applies one event."""

    WEBHOOK_REPLAY = "webhook_replay"
    REVERSAL_BACKFILL = "reversal_backfill"


class EventType(enum.StrEnum):
    ORDER_COMPLETED = "ON_ORDER_COMPLETED"
    REFUND = "ON_REFUND"
    CHARGEBACK = "ON_CHARGEBACK"


class RunStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class ChunkState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


FINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED})
FINAL_CHUNK_STATES = frozenset({ChunkState.COMPLETED, ChunkState.FAILED})


class Outcome(enum.StrEnum):
    """What happened to one event (item) in a run."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"
    ERROR = "error"


class BackfillRequest(BaseModel):
    """The trigger's JSON body, as operators and Cloud Scheduler send it.

    Dates are UTC days; ``endDate`` is inclusive. ``maxEvents`` bounds how many events the run
    takes, oldest first; without it the run takes every eligible event of the range.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    type: BackfillType
    start_date: dt.date = Field(alias="startDate")
    end_date: dt.date = Field(alias="endDate")
    dry_run: bool = Field(False, alias="dryRun")
    max_events: int | None = Field(None, alias="maxEvents", gt=0, le=10_000_000)

    @model_validator(mode="after")
    def _dates_in_order(self) -> BackfillRequest:
        if self.start_date > self.end_date:
            raise ValueError("endDate: must be on or after startDate")
        return self

    @property
    def days(self) -> int:
        return (self.end_date - self.start_date).days + 1


def parse_request(raw: bytes, max_range_days: int, today: dt.date) -> BackfillRequest:
    """Parse and validate a trigger body; raise ``InvalidRequest`` naming the field and reason."""
    if not raw.strip():
        raise InvalidRequest("body", "a JSON object is required")
    try:
        request = BackfillRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = [_field_error(error) for error in exc.errors(include_input=False)]
        first = errors[0]
        raise InvalidRequest(first["field"], first["reason"], errors) from None
    if request.days > max_range_days:
        raise InvalidRequest(
            "endDate", f"the range spans {request.days} days; at most {max_range_days} per run"
        )
    if request.start_date > today:
        raise InvalidRequest("startDate", f"is in the future (today is {today.isoformat()} UTC)")
    return request


def _field_error(error: Any) -> dict[str, str]:
    location = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"])
    # A model-level check names its own field ("endDate: ...").
    if not location and message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
        field, _, reason = message.partition(": ")
        return {"field": field, "reason": reason}
    if error["type"] == "json_invalid":
        return {"field": "body", "reason": "is not valid JSON"}
    if error["type"] == "model_type":
        return {"field": "body", "reason": "must be a JSON object"}
    if error["type"] == "extra_forbidden":
        return {"field": location, "reason": "is not a known field"}
    return {"field": location or "body", "reason": message}


# --- webhook payloads ---------------------------------------------------------------------------


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


ModelT = TypeVar("ModelT", bound=_Payload)


class Customer(_Payload):
    id: str = Field(min_length=1)


class OrderLine(_Payload):
    product_id: str = Field(min_length=1)
    quantity: int = Field(gt=0)


class OrderCompleted(_Payload):
    """``ON_ORDER_COMPLETED`` body: the order whose points a purchase entry credits."""

    id: str = Field(min_length=1)
    customer: Customer
    lines: list[OrderLine] = Field(min_length=1)
    total_amount: int = Field(ge=0)
    currency: str = Field(min_length=1)


class Reversal(_Payload):
    """``ON_REFUND`` and ``ON_CHARGEBACK`` body: an amount of an order given back."""

    id: str = Field(min_length=1)
    order_id: str = Field(min_length=1)
    amount: int = Field(gt=0)
    currency: str = Field(min_length=1)


def parse_body(model: type[ModelT], event: Mapping[str, Any]) -> ModelT:
    """Validate an event's ``payload.body``; raise ``MalformedPayload`` saying where and why.

    The message names fields and reasons only, never values: payload contents stay out of
    error records and logs.
    """
    payload = event.get("payload")
    if not isinstance(payload, dict):
        raise MalformedPayload("Malformed payload: payload: must be a map")
    body = payload.get("body")
    if not isinstance(body, dict):
        raise MalformedPayload("Malformed payload: payload.body: must be a map")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        location = ".".join(str(part) for part in ("payload", "body", *first["loc"]))
        raise MalformedPayload(f"Malformed payload: {location}: {first['msg']}") from None
