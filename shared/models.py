"""The bundle's data shapes: the trigger's request, webhook payloads, and run/chunk records.

Field names of records follow ``contracts/firestore.md`` (camelCase in Firestore). Payload models
validate only what a ledger effect needs; everything else PayNow sends is ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from shared.errors import MalformedPayload


class EventType(enum.StrEnum):
    ORDER_COMPLETED = "ON_ORDER_COMPLETED"
    REFUND = "ON_REFUND"
    CHARGEBACK = "ON_CHARGEBACK"


# The event types that reverse an order's purchase entry (in part or whole).
REVERSAL_TYPES = (EventType.REFUND.value, EventType.CHARGEBACK.value)


class RunStatus(enum.StrEnum):
    """A run's status; ``shared.domain.lifecycle`` says which moves are allowed and why."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    # Planned above BACKFILL_APPROVAL_EVENTS or _POINTS: no chunk runs until another approver
    # approves it (shared.runs.control.approve).
    AWAITING_APPROVAL = "awaiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ChunkState(enum.StrEnum):
    """A chunk's state; ``shared.domain.lifecycle`` says which moves are allowed and why."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
# Active runs count against the concurrency limit and block overlapping runs.
ACTIVE_RUN_STATUSES = frozenset({RunStatus.PENDING, RunStatus.RUNNING, RunStatus.PAUSED,
                                 RunStatus.AWAITING_APPROVAL})
FINAL_CHUNK_STATES = frozenset({ChunkState.COMPLETED, ChunkState.FAILED, ChunkState.CANCELLED})
# Chunks whose work a delivery may still do (a paused chunk waits for resume).
OPEN_CHUNK_STATES = frozenset({ChunkState.PENDING, ChunkState.RUNNING})


class Outcome(enum.StrEnum):
    """What happened to one event (item) in a run."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"
    ERROR = "error"


# --- webhook payloads ---------------------------------------------------------------------------


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


ModelT = TypeVar("ModelT", bound=_Payload)


def document_id_problem(value: str) -> str | None:
    """Why Firestore would refuse ``value`` as a document id (None: it would not).

    Firestore reserves ids matching ``__.*__`` and cannot store ``.``, ``..`` or a ``/``.
    """
    if "/" in value or value in (".", "..") or (
            len(value) >= 4 and value.startswith("__") and value.endswith("__")):
        return "must not contain '/' nor be '.', '..' or '__...__' (ids Firestore reserves)"
    return None


def _usable_as_document_id(value: str) -> str:
    # These ids name Firestore documents (wallet, product, ledger entry); one Firestore would
    # refuse must fail this event alone, as malformed, instead of crashing its whole page.
    if problem := document_id_problem(value):
        raise ValueError(problem)
    if len(value.encode()) > 700:
        raise ValueError("must be at most 700 bytes")
    return value


DocumentId = Annotated[str, Field(min_length=1), AfterValidator(_usable_as_document_id)]


class Customer(_Payload):
    id: DocumentId


class OrderLine(_Payload):
    product_id: DocumentId
    quantity: int = Field(gt=0)


class OrderCompleted(_Payload):
    """``ON_ORDER_COMPLETED`` body: the order whose points a purchase entry credits."""

    id: DocumentId
    customer: Customer
    lines: list[OrderLine] = Field(min_length=1)
    total_amount: int = Field(ge=0)
    currency: str = Field(min_length=1)


class Reversal(_Payload):
    """``ON_REFUND`` and ``ON_CHARGEBACK`` body: an amount of an order given back."""

    id: str = Field(min_length=1)
    order_id: DocumentId
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
