"""A local PayNow Management API for the local stack and tests: webhook history, subscriptions
and orders of seeded stores, with PayNow's auth, error shape and a rate limit, plus fault knobs.

Contract (docs/local-stack-contract.md; what PayNow documents and what is assumed here:
docs/paynow-api.md):

PayNow's routes (``Authorization: APIKey <key>``; every answer is JSON and carries
``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``):

- ``GET /v1/stores/{storeId}/webhooks/{webhookId}/history?page=N&state=S`` answers
  ``WebhookHistoryDto {"page": N, "history": [QueuedWebhookDto]}``: the subscription's queued
  webhooks newest first (``created_at``, then id, descending), ``page_size`` a page, ``page``
  counted from 0; a page past the end has an empty ``history``. ``state`` is ``success``,
  ``pending``, ``failed`` or ``all`` (the default). Items created before now minus
  ``retention_days`` are in no page. Seeding newer items shifts every page under a reader.
- ``GET /v1/stores/{storeId}/webhooks`` answers the store's ``WebhookSubscriptionDto`` list.
- ``GET /v1/stores/{storeId}/orders?limit=&after=&before=&asc=`` answers a list of the store's
  seeded orders by Flake id: descending unless ``asc=true``; ``after``/``before`` are exclusive
  bounds on the id; ``limit`` 1..100, default 25.
- Errors are ``PayNowError {"status", "code", "message", "trace_id", "errors"}``: 401
  ``unauthorized`` (no key, not ``APIKey <key>``, an unknown or rotated-out key), 403
  ``forbidden`` (a good key for another store), 404 ``not_found``, 405
  ``method_not_allowed``, 400 ``validation_failed`` (with ``errors[]``), 429
  ``too_many_requests`` (with ``Retry-After``, whole seconds), 500 ``internal_server_error``.
- Order of checks: latency, the rate limit of the key as presented (token bucket,
  ``rate_per_second`` and ``burst``; 0 turns it off), auth, injected faults
  (``error_429_odds`` then ``error_500_odds``, one seeded draw a request), then the route.

Admin routes (not PayNow's; no auth; loopback only): ``POST /_emulator/reset`` (every store,
item, order, counter and knob back to the start; the start key works again),
``POST /_emulator/history`` ``{"storeId", "webhookId", "items": [...]}`` (QueuedWebhookDto-like
dicts; missing ids are Flake ids of ``created_at``, missing ``created_at`` is now; an item with
a known id replaces it), ``POST /_emulator/orders`` ``{"storeId", "orders": [...]}``,
``GET|POST /_emulator/knobs`` (set any knob, answer all; ``{"rotate_key": true}`` also rotates
and answers ``apiKey``), ``GET /_emulator/stats``, ``POST /_emulator/rotate-key`` (answers
``{"apiKey": new}``; ``{"apiKey": K}`` picks it). ``GET /`` answers 200 (readiness).

The current key is written to ``<state-dir>/paynow-api-key`` (mode 0600), as a Secret Manager
volume would hold a rotated key. State is otherwise in memory. The emulator binds loopback only.
API keys and payloads are never logged (the request line is: method, path, query).

Run: ``python -m emulators.paynow --host 127.0.0.1 --port P --state-dir DIR [--api-key K]
[--store-id S] [--webhook-id W]``. Python callers: :func:`flake_id`, :func:`flake_time`,
:func:`seed`, :func:`append`, :func:`seed_orders`, :func:`knobs`, :func:`stats`,
:func:`reset`, :func:`rotate_key`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import ipaddress
import json
import logging
import math
import os
import random
import re
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from emulators.issuer import ensure_loopback, serve_until_stopped

logger = logging.getLogger("emulators.paynow")

# PayNow's epoch (docs.paynow.gg/getting-started/flake-ids): 2022-02-22T22:22:22.000Z.
PAYNOW_EPOCH_MS = 1645568542000
_NODE_BITS, _SEQ_BITS = 10, 12
_MAX_TIME_MS = (1 << 41) - 1

# The stack's fixed ids and key (Flake ids of 2024-01-01 and 2024-01-02, node 1, increment 1).
LOCAL_STORE_ID = "245361155244036097"
LOCAL_WEBHOOK_ID = "245723543109636097"
LOCAL_API_KEY = "local-paynow-key"
KEY_FILE = "paynow-api-key"

# Assumptions where PayNow documents nothing (docs/paynow-api.md): page size, retention, limit.
DEFAULT_PAGE_SIZE = 25
DEFAULT_RETENTION_DAYS = 30.0
DEFAULT_RATE_PER_SECOND = 5.0
DEFAULT_BURST = 5
ORDERS_DEFAULT_LIMIT, ORDERS_MAX_LIMIT = 25, 100
STATES = ("success", "pending", "failed")
# A seed of a few thousand items fits; anything much bigger is a mistake.
MAX_ADMIN_BYTES = 16 * 1024 * 1024

_HISTORY = re.compile(r"^/v1/stores/([^/]+)/webhooks/([^/]+)/history$")
_WEBHOOKS = re.compile(r"^/v1/stores/([^/]+)/webhooks$")
_ORDERS = re.compile(r"^/v1/stores/([^/]+)/orders$")
KINDS = ("history", "webhooks", "orders", "other")


class PayNowEmulatorError(RuntimeError):
    """The emulator refused or failed an admin call (raised by the module's helpers)."""


# --- Flake ids ------------------------------------------------------------------------------


def flake_id(at: dt.datetime, seq: int = 0, node: int = 0) -> str:
    """PayNow's Flake id for time ``at`` (millisecond precision), increment ``seq`` (0..4095)
    and node (0..1023): ``((unix_ms - epoch) << 22) | (node << 12) | seq``, as a string.

    A naive ``at`` is taken as UTC. Raises ``ValueError`` outside the layout's range.
    """
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    elapsed = _unix_ms(at) - PAYNOW_EPOCH_MS
    if not 0 <= elapsed <= _MAX_TIME_MS:
        raise ValueError(f"{at.isoformat()} is outside PayNow's Flake id range")
    if not 0 <= seq < (1 << _SEQ_BITS) or not 0 <= node < (1 << _NODE_BITS):
        raise ValueError("seq must be 0..4095 and node 0..1023")
    return str((elapsed << (_NODE_BITS + _SEQ_BITS)) | (node << _SEQ_BITS) | seq)


def flake_time(flake: str | int) -> dt.datetime:
    """The UTC time a Flake id encodes: ``(id >> 22) + epoch`` milliseconds."""
    value = int(flake)
    if value < 0:
        raise ValueError("a Flake id is not negative")
    return dt.datetime.fromtimestamp(((value >> 22) + PAYNOW_EPOCH_MS) / 1000, tz=dt.UTC)


def event_name(history_event: str) -> str:
    """The delivered envelope's ``event_type`` of a history ``event``: ``OnOrderCompleted`` is
    ``ON_ORDER_COMPLETED`` (a name already in that form is kept)."""
    if not history_event.startswith("On") or "_" in history_event:
        return history_event.upper()
    words = re.findall(r"[A-Z][a-z0-9]*", history_event[2:])
    return "ON_" + "_".join(word.upper() for word in words)


def _unix_ms(at: dt.datetime) -> int:
    return (at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


def _iso(at: dt.datetime) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``, as PayNow's JSON dates are read."""
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _parse_time(value: Any, field: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise _Invalid(field, "must be an ISO 8601 time") from exc
    else:
        raise _Invalid(field, "must be an ISO 8601 time")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


# --- knobs ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Knobs:
    """The emulator's settings; :meth:`PayNowState.set_knobs` changes them at run time."""

    page_size: int = DEFAULT_PAGE_SIZE
    retention_days: float = DEFAULT_RETENTION_DAYS
    rate_per_second: float = DEFAULT_RATE_PER_SECOND  # 0: no rate limit
    burst: int = DEFAULT_BURST
    error_429_odds: float = 0.0
    error_500_odds: float = 0.0
    latency_ms: float = 0.0
    seed: int = 0
    # PayNow types a history item's payload `unknown`: answered as a JSON string of the
    # envelope (the assumption), or as the object when this is off.
    payload_as_string: bool = True


# name: (type, lowest, highest)
_KNOB_RANGES: dict[str, tuple[type, float, float]] = {
    "page_size": (int, 1, 1000),
    "retention_days": (float, 0, 36500),
    "rate_per_second": (float, 0, 100000),
    "burst": (int, 1, 100000),
    "error_429_odds": (float, 0, 1),
    "error_500_odds": (float, 0, 1),
    "latency_ms": (float, 0, 60000),
    "seed": (int, -(2**63), 2**63 - 1),
    "payload_as_string": (bool, 0, 1),
}


class _Invalid(ValueError):
    """A request field is wrong: answered 400 with a ValidationError for ``path``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path} {message}")
        self.path, self.message = path, message


def _knob_value(name: str, value: Any) -> Any:
    if name not in _KNOB_RANGES:
        raise _Invalid(name, f"is not a knob (knobs: {', '.join(sorted(_KNOB_RANGES))})")
    kind, low, high = _KNOB_RANGES[name]
    if kind is bool:
        if not isinstance(value, bool):
            raise _Invalid(name, "must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(name, "must be a number")
    if kind is int and value != int(value):
        raise _Invalid(name, "must be a whole number")
    if not math.isfinite(value) or not low <= value <= high:
        raise _Invalid(name, f"must be between {low:g} and {high:g}")
    return int(value) if kind is int else float(value)


# --- the rate limit -------------------------------------------------------------------------


@dataclasses.dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclasses.dataclass(frozen=True)
class Admission:
    """One request's rate-limit verdict and the headers it answers with."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after: int

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


# --- state ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Queued:
    """One queued webhook of a subscription's history."""

    id: str
    webhook_id: str
    created_at: dt.datetime
    state: str
    next_retry: str | None
    event: str
    payload: Any
    executions: list[Any]

    def sort_key(self) -> tuple[dt.datetime, int]:
        return self.created_at, int(self.id)

    def dto(self, payload_as_string: bool) -> dict[str, Any]:
        payload = self.payload
        if payload_as_string and not isinstance(payload, str) and payload is not None:
            payload = json.dumps(payload, separators=(",", ":"))
        return {
            "id": self.id,
            "webhook_id": self.webhook_id,
            "created_at": _iso(self.created_at),
            "state": self.state,
            "next_retry": self.next_retry,
            "event": self.event,
            "payload": payload,
            "executions": self.executions,
        }


class PayNowState:
    """Everything the emulator holds, behind one lock (the server serves on many threads).

    ``clock`` is the time of day (tests pass a fixed one); ``monotonic`` drives the buckets.
    """

    def __init__(self, api_key: str = LOCAL_API_KEY, store_id: str = LOCAL_STORE_ID,
                 webhook_id: str = LOCAL_WEBHOOK_ID, key_file: Path | None = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not api_key:
            raise ValueError("the API key must not be empty")
        self._start = (api_key, store_id, webhook_id)
        self._key_file = key_file
        self.clock = clock
        self._monotonic = monotonic
        self._lock = threading.RLock()
        self.reset()

    # --- admin --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the start: the start key and subscription only, empty; counters and knobs at
        their defaults."""
        api_key, store_id, webhook_id = self._start
        with self._lock:
            self.knobs = Knobs()
            self._rng = random.Random(self.knobs.seed)  # noqa: S311 - fault odds, not secrets
            self._keys: dict[str, str] = {api_key: store_id}
            self._history: dict[str, dict[str, dict[str, Queued]]] = {store_id: {webhook_id: {}}}
            self._orders: dict[str, dict[str, dict[str, Any]]] = {store_id: {}}
            self._buckets: dict[str, _Bucket] = {}
            self._seq = 0
            self._requests = dict.fromkeys(KINDS, 0)
            self._statuses: dict[str, int] = {}
            self._rate_limited = self._injected_429 = self._injected_500 = 0
            self._write_key(api_key)

    def current_key(self, store_id: str | None = None) -> str:
        """The key that works for ``store_id`` (default: the start store)."""
        wanted = store_id or self._start[1]
        with self._lock:
            return next(key for key, store in self._keys.items() if store == wanted)

    def rotate_key(self, new_key: str | None = None) -> str:
        """Replace the start store's key: the old one answers 401 from now on."""
        if new_key is not None and (not new_key or len(new_key) > 200 or not new_key.isprintable()
                                    or " " in new_key):
            raise _Invalid("apiKey", "must be 1..200 printable characters without spaces")
        with self._lock:
            store_id = self._start[1]
            old = self.current_key(store_id)
            fresh = new_key or f"local-paynow-key-{secrets.token_hex(8)}"
            del self._keys[old]
            self._keys[fresh] = store_id
            self._buckets.pop(old, None)
            self._write_key(fresh)
            return fresh

    def set_knobs(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Validate every change first, then apply them all; answer every knob."""
        values = {name: _knob_value(name, value) for name, value in changes.items()}
        with self._lock:
            for name, value in values.items():
                setattr(self.knobs, name, value)
            if "seed" in values:
                self._rng = random.Random(self.knobs.seed)  # noqa: S311 - not secrets
            if {"rate_per_second", "burst"} & values.keys():
                self._buckets.clear()  # a new limit starts full
            return dataclasses.asdict(self.knobs)

    def knob_values(self) -> dict[str, Any]:
        with self._lock:
            return dataclasses.asdict(self.knobs)

    def seed_history(self, store_id: Any, webhook_id: Any, items: Any) -> dict[str, Any]:
        """Add (or replace, by id) queued webhooks of a subscription, creating it if new."""
        store_id, webhook_id = _flake_field(store_id, "storeId"), _flake_field(webhook_id,
                                                                                "webhookId")
        if not isinstance(items, list):
            raise _Invalid("items", "must be a list")
        with self._lock:
            now = self.clock()
            made = [self._queued(webhook_id, raw, f"items[{index}]", now)
                    for index, raw in enumerate(items)]
            subscription = self._history.setdefault(store_id, {}).setdefault(webhook_id, {})
            self._orders.setdefault(store_id, {})
            for item in made:
                subscription[item.id] = item
            return {"seeded": len(made), "ids": [item.id for item in made],
                    "total": len(subscription)}

    def seed_orders(self, store_id: Any, orders: Any) -> dict[str, Any]:
        """Add (or replace, by id) orders of a store; ``id`` and ``created_at`` are filled in
        when missing, ``store_id`` is set."""
        store_id = _flake_field(store_id, "storeId")
        if not isinstance(orders, list):
            raise _Invalid("orders", "must be a list")
        with self._lock:
            now = self.clock()
            made = []
            for index, raw in enumerate(orders):
                if not isinstance(raw, dict):
                    raise _Invalid(f"orders[{index}]", "must be an object")
                created = _parse_time(raw.get("created_at", now), f"orders[{index}].created_at")
                order_id = (_flake_field(raw["id"], f"orders[{index}].id") if "id" in raw
                            else self._next_id(created))
                made.append({**raw, "id": order_id, "store_id": store_id,
                             "created_at": _iso(created)})
            book = self._orders.setdefault(store_id, {})
            self._history.setdefault(store_id, {})
            for order in made:
                book[order["id"]] = order
            return {"seeded": len(made), "ids": [order["id"] for order in made],
                    "total": len(book)}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self._requests),
                "statuses": dict(self._statuses),
                "http401": self._statuses.get("401", 0),
                "http403": self._statuses.get("403", 0),
                "http429": self._statuses.get("429", 0),
                "http500": self._statuses.get("500", 0),
                "rateLimited": self._rate_limited,
                "injected429": self._injected_429,
                "injected500": self._injected_500,
                "items": sum(len(items) for hooks in self._history.values()
                             for items in hooks.values()),
                "orders": sum(len(book) for book in self._orders.values()),
            }

    # --- PayNow's routes ----------------------------------------------------------------------

    def count(self, kind: str) -> None:
        with self._lock:
            self._requests[kind] += 1

    def answered(self, status: int) -> None:
        with self._lock:
            self._statuses[str(status)] = self._statuses.get(str(status), 0) + 1

    def admit(self, presented: str) -> Admission:
        """Take a token from the bucket of the key as presented (``""`` for none)."""
        with self._lock:
            rate, burst = self.knobs.rate_per_second, self.knobs.burst
            if rate <= 0:
                return Admission(True, burst, burst, 0, 0)
            now = self._monotonic()
            bucket = self._buckets.get(presented)
            if bucket is None:
                bucket = self._buckets[presented] = _Bucket(float(burst), now)
            bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            allowed = bucket.tokens >= 1.0
            if allowed:
                bucket.tokens -= 1.0
            else:
                self._rate_limited += 1
            reset = math.ceil((burst - bucket.tokens) / rate)
            retry = max(1, math.ceil((1.0 - bucket.tokens) / rate))
            return Admission(allowed, burst, int(bucket.tokens), reset, retry)

    def store_of(self, key: str) -> str | None:
        with self._lock:
            return self._keys.get(key)

    def injected_fault(self) -> int | None:
        """429 or 500 by the odds knobs (one seeded draw a request), or None."""
        with self._lock:
            draw = self._rng.random()
            if draw < self.knobs.error_429_odds:
                self._injected_429 += 1
                return 429
            if draw < self.knobs.error_429_odds + self.knobs.error_500_odds:
                self._injected_500 += 1
                return 500
            return None

    def latency_seconds(self) -> float:
        with self._lock:
            return self.knobs.latency_ms / 1000

    def history_page(self, store_id: str, webhook_id: str, page: int,
                     state: str) -> dict[str, Any] | None:
        """WebhookHistoryDto of page ``page`` (from 0), newest first; None: no such webhook."""
        with self._lock:
            items = self._history.get(store_id, {}).get(webhook_id)
            if items is None:
                return None
            cutoff = self.clock() - dt.timedelta(days=self.knobs.retention_days)
            kept = sorted((item for item in items.values() if item.created_at >= cutoff
                           and state in ("all", item.state)),
                          key=Queued.sort_key, reverse=True)
            size = self.knobs.page_size
            chosen = kept[page * size:(page + 1) * size]
            return {"page": page,
                    "history": [item.dto(self.knobs.payload_as_string) for item in chosen]}

    def subscriptions(self, store_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [{"id": webhook_id, "url": "http://127.0.0.1/paynow-webhook",
                     "secret": "local-webhook-secret", "subscribed_to": "OnOrderCompleted",
                     "type": "json_v1", "discord_description_template": None,
                     "discord_title": None, "discord_color": None}
                    for webhook_id in sorted(self._history.get(store_id, {}), key=int)]

    def orders_page(self, store_id: str, limit: int, after: int | None, before: int | None,
                    ascending: bool) -> list[dict[str, Any]]:
        with self._lock:
            chosen = sorted((order for order in self._orders.get(store_id, {}).values()
                             if (after is None or int(order["id"]) > after)
                             and (before is None or int(order["id"]) < before)),
                            key=lambda order: int(order["id"]), reverse=not ascending)
            return [dict(order) for order in chosen[:limit]]

    # --- helpers ------------------------------------------------------------------------------

    def _next_id(self, at: dt.datetime) -> str:
        # Ids made in one millisecond differ by increment, then by node: 4M a millisecond.
        seq, self._seq = self._seq, self._seq + 1
        return flake_id(at, seq % (1 << _SEQ_BITS), (seq >> _SEQ_BITS) % (1 << _NODE_BITS))

    def _queued(self, webhook_id: str, raw: Any, where: str, now: dt.datetime) -> Queued:
        if not isinstance(raw, dict):
            raise _Invalid(where, "must be an object")
        created = _parse_time(raw.get("created_at", now), f"{where}.created_at")
        item_id = (_flake_field(raw["id"], f"{where}.id") if "id" in raw
                   else self._next_id(created))
        state = raw.get("state", "success")
        if state not in STATES:
            raise _Invalid(f"{where}.state", f"must be one of {', '.join(STATES)}")
        event = raw.get("event", "OnOrderCompleted")
        if not isinstance(event, str) or not event:
            raise _Invalid(f"{where}.event", "must be a WebhookEventType name")
        next_retry = raw.get("next_retry")
        if next_retry is not None:
            next_retry = _iso(_parse_time(next_retry, f"{where}.next_retry"))
        if "payload" in raw:
            payload = raw["payload"]
        else:  # the envelope as PayNow delivers it (src/generated/webhooks.ts)
            payload = {"event_type": event_name(event), "event_id": self._next_id(created),
                       "body": {}}
        executions = raw.get("executions")
        if executions is None:
            executions = _executions(state, created, self._next_id(created))
        elif not isinstance(executions, list):
            raise _Invalid(f"{where}.executions", "must be a list")
        return Queued(item_id, webhook_id, created, state, next_retry, event, payload,
                      executions)

    def _write_key(self, key: str) -> None:
        if self._key_file is None:
            return
        self._key_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._key_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        tmp.replace(self._key_file)


def _executions(state: str, created: dt.datetime, execution_id: str) -> list[dict[str, Any]]:
    """ExecutedWebhookDto list for a seeded item: one attempt unless it is still pending."""
    if state == "pending":
        return []
    finished = created + dt.timedelta(milliseconds=120)
    return [{"id": execution_id, "started_at": _iso(created), "finished_at": _iso(finished),
             "status_code": 200 if state == "success" else 500,
             "response": "ok" if state == "success" else "error"}]


def _flake_field(value: Any, field: str) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isdigit() or not 0 < int(text) < 2**63:
        raise _Invalid(field, "must be a Flake id (a positive int64, as a string)")
    return str(int(text))


# --- HTTP -----------------------------------------------------------------------------------


def _error(status: int, code: str, message: str,
           errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"status": status, "code": code, "message": message,
            "trace_id": uuid.uuid4().hex, "errors": errors}


def _validation(problem: _Invalid) -> dict[str, Any]:
    return _error(400, "validation_failed", "The request is not valid.",
                  [{"code": "invalid_value", "message": problem.message, "path": problem.path,
                    "validation": "value"}])


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _int_param(query: Mapping[str, list[str]], name: str, default: int | None,
               low: int, high: int) -> int | None:
    raw = _one(query, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise _Invalid(name, "must be a whole number") from exc
    if not low <= value <= high:
        raise _Invalid(name, f"must be between {low} and {high}")
    return value


class PayNowServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that carries the emulator's :class:`PayNowState`."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: PayNowState) -> None:
        self.state = state
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "backfill-local-paynow"
    sys_version = ""  # no interpreter version in the Server header
    server: PayNowServer

    # --- plumbing -----------------------------------------------------------------------------

    def _send(self, status: int, body: object, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_ADMIN_BYTES:
            raise _Invalid("body", "has a bad Content-Length")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as exc:
            raise _Invalid("body", "must be JSON") from exc
        if not isinstance(body, dict):
            raise _Invalid("body", "must be a JSON object")
        return body

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            if url.path in ("/", "/healthz") and method == "GET":
                self._send(200, {"status": "ok", "service": "PayNow Management API (local)"})
            elif url.path.startswith("/_emulator/"):
                self._admin(method, url.path)
            elif url.path.startswith("/v1/"):
                self._paynow(method, url.path, parse_qs(url.query, keep_blank_values=True))
            else:
                self._send(404, _error(404, "not_found", "No such route."))
        except BrokenPipeError:
            pass  # the client left; nothing to answer

    # --- admin --------------------------------------------------------------------------------

    def _admin(self, method: str, path: str) -> None:
        state = self.server.state
        if not ipaddress.ip_address(self.client_address[0]).is_loopback:
            self._send(403, {"error": "the admin API serves loopback callers only"})
            return
        routes: dict[tuple[str, str], Callable[[], object]] = {
            ("POST", "/_emulator/reset"): lambda: _reset(state),
            ("POST", "/_emulator/history"): lambda: self._seed_history(),
            ("POST", "/_emulator/orders"): lambda: self._seed_orders(),
            ("GET", "/_emulator/knobs"): state.knob_values,
            ("POST", "/_emulator/knobs"): lambda: self._set_knobs(),
            ("GET", "/_emulator/stats"): state.stats,
            ("POST", "/_emulator/rotate-key"): lambda: self._rotate(),
        }
        route = routes.get((method, path))
        if route is None:
            known = any(known_path == path for _, known_path in routes)
            self._send(405 if known else 404,
                       {"error": "method not allowed" if known else "not found"})
            return
        try:
            self._send(200, route())
        except _Invalid as problem:
            self._send(400, {"error": str(problem)})

    def _seed_history(self) -> object:
        body = self._body()
        return self.server.state.seed_history(body.get("storeId"), body.get("webhookId"),
                                              body.get("items"))

    def _seed_orders(self) -> object:
        body = self._body()
        return self.server.state.seed_orders(body.get("storeId"), body.get("orders"))

    def _set_knobs(self) -> object:
        body = self._body()
        rotate = body.pop("rotate_key", False)
        if not isinstance(rotate, bool):
            raise _Invalid("rotate_key", "must be true or false")
        answer: dict[str, Any] = self.server.state.set_knobs(body)
        if rotate:
            answer = {**answer, "apiKey": self.server.state.rotate_key()}
        return answer

    def _rotate(self) -> object:
        wanted = self._body().get("apiKey")
        if wanted is not None and not isinstance(wanted, str):
            raise _Invalid("apiKey", "must be a string")
        return {"apiKey": self.server.state.rotate_key(wanted)}

    # --- PayNow -------------------------------------------------------------------------------

    def _paynow(self, method: str, path: str, query: Mapping[str, list[str]]) -> None:
        state = self.server.state
        history, webhooks, orders = _HISTORY.match(path), _WEBHOOKS.match(path), _ORDERS.match(path)
        kind = "history" if history else "webhooks" if webhooks else "orders" if orders else "other"
        state.count(kind)
        latency = state.latency_seconds()
        if latency > 0:
            time.sleep(latency)
        scheme, _, presented = (self.headers.get("Authorization") or "").partition(" ")
        presented = presented.strip() if scheme.lower() == "apikey" else ""
        admission = state.admit(presented)
        headers = admission.headers()

        def answer(status: int, body: object) -> None:
            state.answered(status)
            self._send(status, body, headers)

        if not admission.allowed:
            answer(429, _error(429, "too_many_requests", "Too many requests; retry after "
                               f"{admission.retry_after} s."))
            return
        key_store = state.store_of(presented) if presented else None
        if key_store is None:
            answer(401, _error(401, "unauthorized", "A valid API key is required."))
            return
        match = history or webhooks or orders
        store_id = match.group(1) if match else None
        if store_id is not None and store_id != key_store:
            answer(403, _error(403, "forbidden", "This API key has no access to this store."))
            return
        fault = state.injected_fault()
        if fault == 429:
            headers["Retry-After"] = "1"
            answer(429, _error(429, "too_many_requests", "Too many requests; retry after 1 s."))
            return
        if fault == 500:
            answer(500, _error(500, "internal_server_error", "An internal error occurred."))
            return
        if match is None or store_id is None:
            answer(404, _error(404, "not_found", "No such route."))
            return
        if method != "GET":
            answer(405, _error(405, "method_not_allowed", f"{method} is not served here."))
            return
        try:
            if history:
                page = _int_param(query, "page", 0, 0, 10**9)
                wanted = (_one(query, "state") or "all").lower()
                if wanted not in (*STATES, "all"):
                    raise _Invalid("state", "must be one of success, pending, failed, all")
                body = state.history_page(store_id, history.group(2), page or 0, wanted)
                if body is None:
                    answer(404, _error(404, "not_found", "No such webhook subscription."))
                else:
                    answer(200, body)
            elif webhooks:
                answer(200, state.subscriptions(store_id))
            else:
                limit = _int_param(query, "limit", ORDERS_DEFAULT_LIMIT, 1, ORDERS_MAX_LIMIT)
                after = _int_param(query, "after", None, 0, 2**63 - 1)
                before = _int_param(query, "before", None, 0, 2**63 - 1)
                ascending = (_one(query, "asc") or "false").lower()
                if ascending not in ("true", "false"):
                    raise _Invalid("asc", "must be true or false")
                answer(200, state.orders_page(store_id, limit or ORDERS_DEFAULT_LIMIT, after,
                                              before, ascending == "true"))
        except _Invalid as problem:
            answer(400, _validation(problem))

    def log_message(self, format: str, *args: Any) -> None:
        # The request line (method, path, query) holds no secret: keys travel in a header and
        # are never logged, nor are bodies.
        logger.info("%s %s", self.address_string(), format % args)


def _reset(state: PayNowState) -> dict[str, Any]:
    state.reset()
    return {"reset": True}


def make_server(host: str, port: int, state_dir: Path, api_key: str = LOCAL_API_KEY,
                store_id: str = LOCAL_STORE_ID,
                webhook_id: str = LOCAL_WEBHOOK_ID) -> PayNowServer:
    """Build (bind, not yet serve) the emulator on a loopback ``host``; raises ``ValueError``
    for a non-loopback host or bad ids."""
    ensure_loopback(host)
    store_id, webhook_id = _flake_field(store_id, "store id"), _flake_field(webhook_id,
                                                                            "webhook id")
    state = PayNowState(api_key, store_id, webhook_id, key_file=state_dir / KEY_FILE)
    return PayNowServer((host, port), state)


# --- helpers for Python callers -------------------------------------------------------------


def _wire_time(value: object) -> str:
    """JSON for a datetime in a seed (``created_at``, ``next_retry``): RFC 3339 UTC."""
    if isinstance(value, dt.datetime):
        return _iso(value if value.tzinfo else value.replace(tzinfo=dt.UTC))
    raise TypeError(f"{type(value).__name__} is not JSON")


def _call(url: str, method: str, path: str, body: object | None = None,
          timeout: float = 10.0) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise PayNowEmulatorError(f"emulator URL must be http(s): {url!r}")
    request = urllib.request.Request(  # noqa: S310 - scheme checked just above
        url.rstrip("/") + path,
        data=None if body is None else json.dumps(body, default=_wire_time).encode(),
        headers={"Content-Type": "application/json"},
        method=method,
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            result = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise PayNowEmulatorError(f"PayNow emulator answered HTTP {exc.code} to {method} "
                                  f"{path}: {detail}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PayNowEmulatorError(f"PayNow emulator at {url} is unreachable: {exc}") from exc
    if not isinstance(result, dict):
        raise PayNowEmulatorError("PayNow emulator answered a non-object")
    return result


def seed(url: str, store_id: str, webhook_id: str,
         items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Seed queued webhooks (QueuedWebhookDto-like dicts; times may be datetimes)
    into a subscription; answers ``{"seeded", "ids", "total"}``."""
    return _call(url, "POST", "/_emulator/history",
                 {"storeId": store_id, "webhookId": webhook_id, "items": list(items)})


def append(url: str, store_id: str, webhook_id: str, count: int = 1,
           event: str = "OnOrderCompleted") -> list[str]:
    """Seed ``count`` items created now, newer than everything seeded before: what a reader
    paging meanwhile sees as the list shifting. Answers their ids."""
    ids = seed(url, store_id, webhook_id, [{"event": event}] * count)["ids"]
    return [str(item) for item in ids]


def seed_orders(url: str, store_id: str, orders: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Seed orders (OrderDto-like dicts) of a store; answers ``{"seeded", "ids", "total"}``."""
    return _call(url, "POST", "/_emulator/orders", {"storeId": store_id, "orders": list(orders)})


def knobs(url: str, **changes: Any) -> dict[str, Any]:
    """Set knobs (none: just read them); answers every knob."""
    return _call(url, "POST", "/_emulator/knobs", changes)


def stats(url: str) -> dict[str, Any]:
    """The counters: requests per kind, statuses, http401/403/429/500, rateLimited,
    injected429, injected500, items, orders."""
    return _call(url, "GET", "/_emulator/stats")


def reset(url: str) -> dict[str, Any]:
    """Drop every item and order; counters, knobs and the key back to the start."""
    return _call(url, "POST", "/_emulator/reset", {})


def rotate_key(url: str, new_key: str | None = None) -> str:
    """Rotate the start store's key (the old one answers 401); answers the new key."""
    answer = _call(url, "POST", "/_emulator/rotate-key",
                   {} if new_key is None else {"apiKey": new_key})
    key = answer.get("apiKey")
    if not isinstance(key, str):
        raise PayNowEmulatorError("PayNow emulator answered no apiKey")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local PayNow Management API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--api-key", default=LOCAL_API_KEY)
    parser.add_argument("--store-id", default=LOCAL_STORE_ID)
    parser.add_argument("--webhook-id", default=LOCAL_WEBHOOK_ID)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        server = make_server(args.host, args.port, args.state_dir, args.api_key, args.store_id,
                             args.webhook_id)
    except ValueError as exc:
        print(f"paynow: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"paynow: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    logger.info("serving on http://%s:%d (store %s, webhook %s)", args.host,
                server.server_address[1], args.store_id, args.webhook_id)
    serve_until_stopped(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
