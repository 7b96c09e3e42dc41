"""One error tree for the bundle; each error knows its HTTP status and whether a retry helps.

::

    BackfillError                      status  retryable
     ├── InvalidRequest                  400     no     a request field is wrong; nothing written
     ├── Unauthenticated                 401     no     no valid OIDC token
     ├── Forbidden                       403     no     a valid token of an identity not allowed
     ├── NotFound                        404     no
     ├── MethodNotAllowed                405     no
     ├── Conflict                        409     no     the run's status does not allow the
     │                                                  action, or an active run overlaps
     ├── TooManyRuns                     429     no     the concurrency limit is reached
     ├── BackfillDisabled                503     no     the BACKFILL_ENABLED kill switch is off
     ├── Unavailable                     503     yes    Firestore, Cloud Tasks or a provider
     │                                                  did not answer (or said wait)
     └── SourceRefused                   (no HTTP status: a chunk's source refused it for good,
                                          as a provider refusing the API key; the chunk fails)

    ItemError                          (no HTTP status: recorded per event, the run goes on)
     ├── MalformedPayload                malformed_payload
     ├── ProductNotFound                 product_not_found
     ├── PurchaseNotFound                purchase_not_found (in shared.backfills.apply: its hint
     │                                                   names the types that repair it)
     └── EventMissing                    event_missing      (a retried event no longer exists)

    An unexpected exception while applying one event is retried a bounded number of times,
    then recorded as ``unexpected_error`` and passed over (see ``shared.executor.runner``, the
    executor).

Functions map a ``BackfillError`` to its status and JSON body; anything else is a bug and answers
500 without details (the traceback goes to the logs, never to the caller).
"""

from __future__ import annotations

from typing import Any, ClassVar

from google.api_core import exceptions as api_exceptions

# What Google's clients raise when a retry can cure it: an outage, a timeout, contention, a
# quota, or credentials that were refused for a moment.
TRANSIENT: tuple[type[Exception], ...] = (
    api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded,
    api_exceptions.InternalServerError, api_exceptions.Aborted,
    api_exceptions.ResourceExhausted, api_exceptions.TooManyRequests,
    api_exceptions.RetryError, api_exceptions.Unauthenticated,
    api_exceptions.PermissionDenied)


class BackfillError(Exception):
    """Base of every error a function answers with; ``code`` names it in the JSON body."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}


class InvalidRequest(BackfillError):
    """A request field is missing or wrong; ``field`` and ``reason`` say which and why."""

    status = 400
    code = "invalid_request"

    def __init__(self, field: str, reason: str, errors: list[dict[str, str]] | None = None):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.errors = errors or [{"field": field, "reason": reason}]

    def body(self) -> dict[str, Any]:
        return {**super().body(), "field": self.field, "reason": self.reason,
                "errors": self.errors}


class Unauthenticated(BackfillError):
    status = 401
    code = "unauthenticated"


class Forbidden(BackfillError):
    status = 403
    code = "forbidden"


class NotFound(BackfillError):
    status = 404
    code = "not_found"


class MethodNotAllowed(BackfillError):
    status = 405
    code = "method_not_allowed"


class Conflict(BackfillError):
    """The action conflicts with a run's status or with an active run; ``blocking`` names the
    runs in the way."""

    status = 409
    code = "conflict"

    def __init__(self, message: str, blocking: list[str] | None = None) -> None:
        super().__init__(message)
        self.blocking = blocking or []

    def body(self) -> dict[str, Any]:
        return {**super().body(), "blocking": self.blocking}


class TooManyRuns(Conflict):
    status = 429
    code = "too_many_runs"


class BackfillDisabled(BackfillError):
    status = 503
    code = "backfill_disabled"


class Unavailable(BackfillError):
    status = 503
    code = "unavailable"
    retryable = True


class SourceRefused(BackfillError):
    """A chunk's source refuses it for good (a provider refused the API key): the chunk fails
    at once with this message as its reason, since a retry of the task cannot help and many
    would only be a storm of refused calls."""

    status = 502
    code = "source_refused"


# The code of an event that failed unexpectedly on each of its attempts and was passed over.
UNEXPECTED_ERROR = "unexpected_error"


class ItemError(Exception):
    """One event cannot be applied. Recorded on the run with its event id; never a crash."""

    code: ClassVar[str] = "item_error"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class MalformedPayload(ItemError):
    code = "malformed_payload"


class ProductNotFound(ItemError):
    code = "product_not_found"

    def __init__(self, product_id: str) -> None:
        super().__init__(
            f"Product not found: {product_id}",
            hint="add the product, then retry the run's failed events",
        )


class EventMissing(ItemError):
    code = "event_missing"

    def __init__(self, event_id: str) -> None:
        super().__init__(f"Event no longer exists: {event_id}")
