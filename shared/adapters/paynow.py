"""PayNow's Management API, as the recovery reads it: one subscription's webhook history.

Every provider shape lives here (paths, query parameters, DTO fields, event names, the error
body); the rest of the bundle sees ``Delivered`` items and two errors. What PayNow documents and
what this assumes where it is silent: ``docs/paynow-api.md``.

- ``GET /v1/stores/{storeId}/webhooks/{webhookId}/history?page=N`` answers
  ``WebhookHistoryDto {history: QueuedWebhookDto[], page}``, newest first, a fixed number of
  items a page; an empty ``history`` is past the end. The list grows at its head while it is
  read, so page N holds other items a moment later (``shared.backfills.webhook_recovery`` reads
  it by a cursor of its own, never "page N is done").
- ``Authorization: APIKey <key>``. 401 and 403 are a refused key: ``SourceRefused`` at once,
  never retried (a storm of refused calls helps nobody).
- 429: ``Retry-After`` (seconds) is honoured for every caller of the key (the shared limit is
  held that long); 5xx, timeouts and refused connections are retried a few times with
  exponential backoff and full jitter, then ``Unavailable``: the task answers 503 and Cloud Tasks
  backs off, instead of a delivery sleeping its time budget away.
- Every call first takes a slot of the key's shared limit (``shared.adapters.rate_limit``).

The key is sent only in the header: it never reaches a log line, an error message or an
answer; nor do payloads (errors name the status and PayNow's error ``code``, not its message).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from shared import logs
from shared.adapters.rate_limit import SharedLimiter
from shared.errors import SourceRefused, Unavailable

logger = logging.getLogger(__name__)

PROVIDER = "paynow"
# Answers PayNow may give a moment later: a retry can cure them.
_RETRIED_STATUSES = frozenset({500, 502, 503, 504})
# A Retry-After this long or longer is not slept in a delivery: the task is retried later.
_MAX_SLEEP_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class Delivered:
    """One item of a subscription's webhook history: a webhook PayNow queued (and tried to
    deliver), in the words of the bundle.

    ``history_id`` is the queued webhook's id (a Flake id); ``created_at`` when PayNow created
    it; ``event_type`` the event as the webhook's body names it (``ON_ORDER_COMPLETED``);
    ``envelope`` the body PayNow sent, ``{event_type, event_id, body}`` (None when the item
    carries none that parses); ``state`` PayNow's delivery state (success, pending, failed).
    """

    history_id: str
    created_at: dt.datetime
    event_type: str
    envelope: Mapping[str, Any] | None
    state: str

    @property
    def event_id(self) -> str | None:
        value = (self.envelope or {}).get("event_id")
        return value if isinstance(value, str) and value else None

    @property
    def key(self) -> tuple[dt.datetime, str]:
        """Its place in the history: newest first means descending ``key``."""
        return self.created_at, self.history_id


def event_name(history_event: str) -> str:
    """The webhook body's name of a history item's event: ``OnOrderCompleted`` (the OpenAPI
    document's spelling) and ``on_order_completed`` (an older one's) are
    ``ON_ORDER_COMPLETED``."""
    if "_" in history_event or history_event.islower():
        return history_event.upper()
    words = re.findall(r"[A-Z][a-z0-9]*", history_event.removeprefix("On"))
    return "ON_" + "_".join(word.upper() for word in words) if words else history_event


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _envelope(payload: Any) -> Mapping[str, Any] | None:
    """The webhook body a history item carries: PayNow keeps it as sent (a JSON string), or
    as an object."""
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return None
    return payload if isinstance(payload, dict) else None


def parse_item(raw: Any) -> Delivered | None:
    """A ``QueuedWebhookDto`` as a ``Delivered``; None when it lacks an id or a creation time
    (nothing can place it)."""
    if not isinstance(raw, dict):
        return None
    history_id, created_at = raw.get("id"), _time(raw.get("created_at"))
    if not isinstance(history_id, str) or not history_id or created_at is None:
        return None
    envelope = _envelope(raw.get("payload"))
    event = raw.get("event")
    event_type = event_name(event) if isinstance(event, str) else ""
    if envelope and isinstance(envelope.get("event_type"), str):
        event_type = envelope["event_type"]
    state = raw.get("state")
    return Delivered(history_id, created_at, event_type, envelope,
                     state if isinstance(state, str) else "")


@dataclasses.dataclass(frozen=True)
class Account:
    """Where and as whom the recovery reads: the API's base URL, the store, the webhook
    subscription and the API key (kept out of ``repr``: it is a secret)."""

    base_url: str
    store_id: str
    webhook_id: str
    api_key: str = dataclasses.field(repr=False)
    timeout_seconds: float = 10.0
    attempts: int = 4
    # Where a rotated key is read again (a Secret Manager volume's file: it holds the secret's
    # latest version): asked once when PayNow refuses the key, before giving up.
    refresh: Callable[[], str] | None = dataclasses.field(default=None, repr=False)


class PayNow:
    """Calls to one store's Management API with one key, each after a slot of the key's
    shared limit."""

    def __init__(self, account: Account, limiter: SharedLimiter,
                 client: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._account = account
        self._limiter = limiter
        self._client = client or httpx.Client(base_url=account.base_url,
                                              timeout=account.timeout_seconds)
        self._sleep = sleep
        self._key = account.api_key
        self.calls = 0  # requests sent (a benchmark's and a test's count)

    def history(self, page: int) -> list[Delivered]:
        """Page ``page`` (from 0) of the subscription's webhook history, newest first; items
        nothing can place are left out (``parse_item``)."""
        account = self._account
        path = f"/v1/stores/{account.store_id}/webhooks/{account.webhook_id}/history"
        body = self._get(path, {"page": page})
        items = body.get("history") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise Unavailable("PayNow answered a webhook history page without its history list")
        return [item for item in map(parse_item, items) if item is not None]

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        account = self._account
        refreshed, problem = False, ""
        for attempt in range(account.attempts):
            self._limiter.acquire()
            self.calls += 1
            headers = {"Authorization": f"APIKey {self._key}", "Accept": "application/json"}
            try:
                answer = self._client.get(path, params=params, headers=headers)
            except httpx.TransportError as error:  # timeouts, refused connections
                problem = f"PayNow did not answer ({type(error).__name__})"
            else:
                if answer.status_code in (401, 403):
                    fresh = account.refresh() if account.refresh and not refreshed else None
                    refreshed = True
                    if fresh and fresh != self._key:
                        self._key = fresh  # the key was rotated: go on with the new one
                        logs.log(logger, "paynow key refreshed", logging.WARNING)
                        continue
                    raise SourceRefused(f"PayNow API key refused ({answer.status_code} "
                                        f"{_code(answer)}): check the key's secret and its "
                                        "store, then start the run again")
                if answer.status_code == 429:
                    wait = _retry_after(answer.headers)
                    self._limiter.hold(wait)
                    problem = f"PayNow's rate limit was reached (Retry-After {wait:.0f} s)"
                    if wait >= _MAX_SLEEP_SECONDS:
                        raise Unavailable(problem + "; the task is retried later")
                elif answer.status_code in _RETRIED_STATUSES:
                    problem = f"PayNow answered {answer.status_code} {_code(answer)}"
                elif answer.is_success:
                    try:
                        return answer.json()
                    except ValueError:
                        problem = "PayNow answered a body that is not JSON"
                else:
                    raise Unavailable(f"PayNow answered {answer.status_code} {_code(answer)} "
                                      f"to GET {_shape(path)}")
            logs.log(logger, "paynow call retried", logging.WARNING, attempt=attempt + 1,
                     problem=problem)
            if attempt + 1 < account.attempts:
                # Full jitter: callers that failed together do not come back together.
                self._sleep(random.uniform(0, min(4.0, 0.25 * 2 ** attempt)))  # noqa: S311
        raise Unavailable(f"{problem}; gave up after {account.attempts} tries")


def _retry_after(headers: Mapping[str, str]) -> float:
    """Seconds to wait, from ``Retry-After`` (seconds or an HTTP date) or the rate-limit
    reset header; 1 s when neither says."""
    value = headers.get("retry-after", "").strip()
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            return max(0.0, (parsedate_to_datetime(value) - dt.datetime.now(dt.UTC))
                       .total_seconds())
        except (TypeError, ValueError):
            pass
    reset = headers.get("ratelimit-reset") or headers.get("x-ratelimit-reset") or ""
    try:
        return max(0.0, float(reset))
    except ValueError:
        return 1.0


def _code(answer: httpx.Response) -> str:
    """PayNow's error ``code`` from its error body (never its message: it may quote input)."""
    try:
        body = answer.json()
    except ValueError:
        return ""
    code = body.get("code") if isinstance(body, dict) else None
    return str(code)[:64] if isinstance(code, (str, int)) else ""


def _shape(path: str) -> str:
    """A path with its ids left out, for messages."""
    return re.sub(r"/(stores|webhooks)/[^/]+", r"/\1/{id}", path)
