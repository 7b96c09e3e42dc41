"""The PayNow adapter's answers to PayNow's failures (``shared.adapters.paynow``), on an httpx
transport that answers as PayNow does: a refused key fails at once (one call, no storm) unless a
rotated key is found, 429 holds the key's shared limit for ``Retry-After`` and tries again (or
hands the wait to Cloud Tasks when it is long), 5xx and timeouts are retried with jittered
backoff and then ``Unavailable``; the key never reaches a message or a log line. (The same
paths against the local PayNow over real HTTP: ``tests/functions/test_recovery.py``.)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shared.adapters.paynow import Account, PayNow, event_name, parse_item
from shared.errors import SourceRefused, Unavailable

KEY = "pnapi_secret_value_123"
ITEM: dict[str, Any] = {
    "id": "411486491630370816", "webhook_id": "w1", "created_at": "2026-11-20T10:00:00Z",
    "state": "failed", "event": "OnOrderCompleted", "executions": [], "next_retry": None,
        "payload": json.dumps({"event_type": "ON_ORDER_COMPLETED", "event_id": "e1",
                               "body": {"id": "o1"}})}


class Limiter:
    def __init__(self) -> None:
        self.acquired = 0
        self.held: list[float] = []

    def acquire(self) -> float:
        self.acquired += 1
        return 0.0

    def hold(self, seconds: float) -> None:
        self.held.append(seconds)


def client(answers: list[Callable[[httpx.Request], httpx.Response]],
           refresh: Callable[[], str] | None = None) -> tuple[PayNow, Limiter, list[float],
                                                             list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1](request)

    limiter, slept = Limiter(), list[float]()
    paynow = PayNow(Account("https://api.paynow.test", "s1", "w1", KEY, refresh=refresh),
                    limiter,  # type: ignore[arg-type]
                    client=httpx.Client(base_url="https://api.paynow.test",
                                        transport=httpx.MockTransport(handle)),
                    sleep=slept.append)
    return paynow, limiter, slept, seen


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"history": [ITEM], "page": 0})


def status(code: int, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(code, headers=headers, json={
        "status": code, "code": "some-code", "message": f"it quotes {KEY}"})


def test_a_page_is_read_with_the_key_in_the_header_only_and_parsed_into_items() -> None:
    paynow, limiter, _, seen = client([ok])

    items = paynow.history(3)

    assert [item.event_id for item in items] == ["e1"]
    assert items[0].created_at == dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC)
    assert items[0].event_type == "ON_ORDER_COMPLETED"
    assert seen[0].url.path == "/v1/stores/s1/webhooks/w1/history"
    assert seen[0].url.params["page"] == "3"
    assert seen[0].headers["authorization"] == f"APIKey {KEY}"
    assert limiter.acquired == 1


@pytest.mark.parametrize("code", [401, 403])
def test_a_refused_key_fails_at_once_with_one_call(code: int,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    paynow, _, slept, seen = client([status(code)])

    with caplog.at_level(logging.DEBUG), pytest.raises(SourceRefused) as refused:
        paynow.history(0)

    assert len(seen) == 1 and slept == []
    assert "PayNow API key refused" in refused.value.message
    assert KEY not in refused.value.message and KEY not in caplog.text


def test_a_rotated_key_is_read_again_once_and_used_from_then_on() -> None:
    rotated = "pnapi_rotated"
    paynow, _, _, seen = client(
        [status(401), lambda request: ok(request) if rotated in request.headers[
            "authorization"] else status(401)(request)], refresh=lambda: rotated)

    assert len(paynow.history(0)) == 1
    assert len(paynow.history(1)) == 1
    assert [r.headers["authorization"] for r in seen] == [
        f"APIKey {KEY}", f"APIKey {rotated}", f"APIKey {rotated}"]


def test_a_key_refused_again_after_a_refresh_fails() -> None:
    paynow, _, _, seen = client([status(401)], refresh=lambda: "pnapi_also_wrong")

    with pytest.raises(SourceRefused):
        paynow.history(0)
    assert len(seen) == 2


def test_429_holds_the_shared_limit_for_retry_after_and_tries_again() -> None:
    paynow, limiter, _, seen = client([status(429, **{"Retry-After": "2"}), ok])

    assert len(paynow.history(0)) == 1
    assert limiter.held == [2.0]
    assert len(seen) == 2 and limiter.acquired == 2  # the retry waited for a slot too


def test_a_long_retry_after_is_handed_to_cloud_tasks_not_slept() -> None:
    paynow, limiter, slept, seen = client([status(429, **{"Retry-After": "60"})])

    with pytest.raises(Unavailable) as unavailable:
        paynow.history(0)
    assert len(seen) == 1 and slept == [] and limiter.held == [60.0]
    assert "rate limit" in unavailable.value.message


def test_5xx_and_timeouts_are_retried_with_jittered_backoff_then_unavailable(
        caplog: pytest.LogCaptureFixture) -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    paynow, _, slept, seen = client([status(500), timeout, status(503), status(502)])

    with caplog.at_level(logging.DEBUG), pytest.raises(Unavailable) as unavailable:
        paynow.history(0)
    assert len(seen) == 4
    assert len(slept) == 3
    assert all(0 <= wait <= cap for wait, cap in zip(slept, (0.25, 0.5, 1.0), strict=True))
    assert "gave up after 4 tries" in unavailable.value.message
    assert KEY not in caplog.text and "quotes" not in caplog.text


def test_a_transient_failure_then_success_answers_the_page() -> None:
    paynow, _, slept, _ = client([status(500), ok])

    assert len(paynow.history(0)) == 1
    assert len(slept) == 1


def test_items_nothing_can_place_are_left_out_and_names_follow_the_webhook_body() -> None:
    assert parse_item({"id": "x"}) is None
    assert parse_item({"created_at": "2026-11-20T10:00:00Z"}) is None
    bare = parse_item({**ITEM, "payload": "not json"})
    assert bare is not None and bare.envelope is None and bare.event_id is None
    assert bare.event_type == "ON_ORDER_COMPLETED"
    assert event_name("OnRefund") == "ON_REFUND"
    assert event_name("OnChargeback") == "ON_CHARGEBACK"
    assert event_name("OnSubscriptionRenewed") == "ON_SUBSCRIPTION_RENEWED"
    assert event_name("on_order_completed") == "ON_ORDER_COMPLETED"
