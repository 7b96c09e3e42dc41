"""The local PayNow Management API (``emulators/paynow.py``) through real HTTP: the emulator runs
as its own process on a free loopback port (no stack needed), and every check goes through
httpx as the bundle's adapter would call it, or through the module's admin helpers.

It pages a subscription's history newest first and shifts the pages when newer items are
seeded, refuses a missing, malformed, wrong or rotated key (401) and a key of another store
(403) in PayNow's error shape, answers 429 with ``Retry-After`` past its rate limit and the
rate-limit headers on every answer, injects 429s and 500s at seeded odds, drops items older
than the retention, and counts what it served."""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulators import paynow
from tests.conftest import ROOT

KEY = "test-paynow-key"
STORE = paynow.LOCAL_STORE_ID
WEBHOOK = paynow.LOCAL_WEBHOOK_ID
OTHER_STORE = paynow.flake_id(dt.datetime(2024, 2, 1, tzinfo=dt.UTC), 1, 1)
HISTORY = f"/v1/stores/{STORE}/webhooks/{WEBHOOK}/history"
ERROR_FIELDS = {"status", "code", "message", "trace_id", "errors"}
ITEM_FIELDS = {"id", "webhook_id", "created_at", "state", "next_retry", "event", "payload",
               "executions"}
RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state_dir = tmp_path_factory.mktemp("paynow")
    port = _free_port()
    log = (state_dir / "paynow.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.paynow", "--host", "127.0.0.1", "--port", str(port),
         "--state-dir", str(state_dir), "--api-key", KEY],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (state_dir / "paynow.log").read_text()
            try:
                if httpx.get(base + "/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the PayNow emulator did not start"
            time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        # The key never reaches the log.
        assert KEY not in (state_dir / "paynow.log").read_text()


@pytest.fixture
def api(url: str) -> Iterator[httpx.Client]:
    """A client with the start key, on a reset emulator whose rate limit is off (the rate-limit
    test turns it back on)."""
    paynow.reset(url)
    paynow.knobs(url, rate_per_second=0)
    with httpx.Client(base_url=url, headers={"Authorization": f"APIKey {KEY}"},
                      timeout=10) as client:
        yield client


def _ago(**delta: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(**delta)


def _seed_minutes(url: str, count: int, **extra: Any) -> list[str]:
    """``count`` items, one a minute, the newest a minute ago; answers their ids oldest first."""
    items = [{"created_at": _ago(minutes=count - index), **extra} for index in range(count)]
    return [str(item) for item in paynow.seed(url, STORE, WEBHOOK, items)["ids"]]


def _page(api: httpx.Client, page: int, **params: Any) -> list[dict[str, Any]]:
    answer = api.get(HISTORY, params={"page": page, **params})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"page", "history"}
    assert body["page"] == page
    history: list[dict[str, Any]] = body["history"]
    return history


def _assert_error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert set(body) == ERROR_FIELDS
    assert (body["status"], body["code"]) == (status, code)
    assert isinstance(body["message"], str) and body["message"]
    return body


def test_history_pages_newest_first_from_page_zero(url: str, api: httpx.Client) -> None:
    oldest_first = _seed_minutes(url, 60)

    pages = [_page(api, number) for number in range(4)]

    assert [len(page) for page in pages] == [25, 25, 10, 0]  # 25 a page; past the end: empty
    items = [item for page in pages for item in page]
    assert [item["id"] for item in items] == oldest_first[::-1]
    times = [item["created_at"] for item in items]
    assert times == sorted(times, reverse=True)
    first = items[0]
    assert set(first) == ITEM_FIELDS
    assert (first["webhook_id"], first["state"], first["event"]) == (WEBHOOK, "success",
                                                                      "OnOrderCompleted")
    assert first["created_at"].endswith("Z")
    assert paynow.flake_time(first["id"]) == dt.datetime.fromisoformat(
        first["created_at"].replace("Z", "+00:00"))
    envelope = json.loads(first["payload"])  # the envelope as delivered, kept as a string
    assert set(envelope) == {"event_type", "event_id", "body"}
    assert envelope["event_type"] == "ON_ORDER_COMPLETED"
    assert first["executions"][0]["status_code"] == 200


def test_a_page_shifts_when_newer_items_are_seeded(url: str, api: httpx.Client) -> None:
    paynow.knobs(url, page_size=10)
    _seed_minutes(url, 30)
    before = [_page(api, number) for number in range(3)]

    fresh = paynow.append(url, STORE, WEBHOOK, count=3)
    after = [_page(api, number) for number in range(4)]

    ids_before = [item["id"] for page in before for item in page]
    ids_after = [item["id"] for page in after for item in page]
    assert ids_after == fresh[::-1] + ids_before  # the three new ones lead, nothing is lost
    # The reader's page 1 now starts with what was 8th on page 0: three items moved back.
    assert after[1][0]["id"] == before[0][7]["id"]
    assert len(after[3]) == 3


def test_state_filters_and_bad_parameters_are_refused(url: str, api: httpx.Client) -> None:
    paynow.seed(url, STORE, WEBHOOK, [{"state": "success"}, {"state": "failed"},
                                      {"state": "pending", "next_retry": _ago(minutes=-5)}])

    assert [item["state"] for item in _page(api, 0, state="failed")] == ["failed"]
    pending = _page(api, 0, state="pending")
    assert pending[0]["executions"] == [] and pending[0]["next_retry"].endswith("Z")
    assert len(_page(api, 0, state="all")) == len(_page(api, 0)) == 3

    bad = _assert_error(api.get(HISTORY, params={"state": "lost"}), 400, "validation_failed")
    assert bad["errors"][0]["path"] == "state"
    _assert_error(api.get(HISTORY, params={"page": -1}), 400, "validation_failed")
    _assert_error(api.get(HISTORY, params={"page": "two"}), 400, "validation_failed")


def test_a_missing_or_wrong_key_is_401_and_another_store_403(url: str, api: httpx.Client) -> None:
    paynow.seed(url, OTHER_STORE, WEBHOOK, [{}])
    full = f"{url}{HISTORY}"

    for headers in ({}, {"Authorization": f"Bearer {KEY}"}, {"Authorization": "APIKey"},
                    {"Authorization": "APIKey not-the-key"}):
        answer = httpx.get(full, headers=headers)
        _assert_error(answer, 401, "unauthorized")
        assert all(name in answer.headers for name in RATE_HEADERS)
    other = api.get(f"/v1/stores/{OTHER_STORE}/webhooks/{WEBHOOK}/history")
    _assert_error(other, 403, "forbidden")
    _assert_error(api.get(f"/v1/stores/{STORE}/webhooks/{OTHER_STORE}/history"), 404,
                  "not_found")
    _assert_error(api.post(HISTORY), 405, "method_not_allowed")

    counters = paynow.stats(url)
    assert (counters["http401"], counters["http403"]) == (4, 1)
    assert counters["statuses"]["404"] == counters["statuses"]["405"] == 1


def test_a_rotated_key_stops_working_and_reset_restores_the_start_key(
        url: str, api: httpx.Client, tmp_path: Path) -> None:
    assert api.get(HISTORY).status_code == 200

    fresh = paynow.rotate_key(url)

    assert fresh != KEY
    _assert_error(api.get(HISTORY), 401, "unauthorized")
    assert httpx.get(f"{url}{HISTORY}", headers={"Authorization": f"APIKey {fresh}"}
                     ).status_code == 200
    by_knob = paynow.knobs(url, rotate_key=True)
    assert by_knob["apiKey"] not in (fresh, KEY)
    assert paynow.rotate_key(url, "chosen-key") == "chosen-key"
    assert httpx.get(f"{url}{HISTORY}", headers={"Authorization": "APIKey chosen-key"}
                     ).status_code == 200

    paynow.reset(url)
    paynow.knobs(url, rate_per_second=0)
    assert api.get(HISTORY).status_code == 200


def test_past_the_rate_limit_it_answers_429_with_retry_after(url: str, api: httpx.Client) -> None:
    paynow.knobs(url, rate_per_second=1, burst=3)

    answers = [api.get(HISTORY) for _ in range(4)]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert [answer.headers["x-ratelimit-remaining"] for answer in answers] == ["2", "1", "0",
                                                                                "0"]
    for answer in answers:
        assert answer.headers["x-ratelimit-limit"] == "3"
        assert int(answer.headers["x-ratelimit-reset"]) >= 1
    limited = answers[-1]
    _assert_error(limited, 429, "too_many_requests")
    assert int(limited.headers["retry-after"]) >= 1
    assert "retry-after" not in answers[0].headers
    time.sleep(1.1)  # one token back at 1 per second
    assert api.get(HISTORY).status_code == 200
    counters = paynow.stats(url)
    assert (counters["rateLimited"], counters["http429"], counters["injected429"]) == (1, 1, 0)


def test_fault_odds_inject_500s_and_429s_repeatably_by_seed(url: str, api: httpx.Client) -> None:
    def statuses() -> list[int]:
        return [api.get(HISTORY).status_code for _ in range(40)]

    paynow.knobs(url, error_500_odds=0.5, seed=7)
    first = statuses()
    paynow.knobs(url, seed=7)  # the same seed replays the same draws
    second = statuses()

    assert first == second
    assert set(first) == {200, 500}
    counters = paynow.stats(url)
    assert counters["injected500"] == counters["http500"] == first.count(500) * 2

    paynow.knobs(url, error_500_odds=0, error_429_odds=1)
    injected = api.get(HISTORY)
    _assert_error(injected, 429, "too_many_requests")
    assert injected.headers["retry-after"] == "1"
    assert paynow.stats(url)["injected429"] == 1


def test_items_older_than_the_retention_are_gone(url: str, api: httpx.Client) -> None:
    paynow.seed(url, STORE, WEBHOOK, [{"created_at": _ago(days=40)},
                                      {"created_at": _ago(days=29)}, {}])

    assert len(_page(api, 0)) == 2  # 30 days by default
    paynow.knobs(url, retention_days=10)
    assert len(_page(api, 0)) == 1
    paynow.knobs(url, retention_days=100)
    assert len(_page(api, 0)) == 3


def test_latency_knob_delays_answers(url: str, api: httpx.Client) -> None:
    paynow.knobs(url, latency_ms=300)
    started = time.monotonic()
    assert api.get(HISTORY).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_subscriptions_and_orders(url: str, api: httpx.Client) -> None:
    subscriptions = api.get(f"/v1/stores/{STORE}/webhooks").json()
    assert [(row["id"], row["type"]) for row in subscriptions] == [(WEBHOOK, "json_v1")]

    ids = paynow.seed_orders(url, STORE, [{"created_at": _ago(hours=5 - hour), "total_amount": 100}
                                          for hour in range(5)])["ids"]
    orders = f"/v1/stores/{STORE}/orders"

    assert [row["id"] for row in api.get(orders).json()] == ids[::-1]  # newest first
    assert [row["id"] for row in api.get(orders, params={"asc": "true"}).json()] == ids
    assert [row["id"] for row in api.get(orders, params={"limit": 2}).json()] == ids[:-3:-1]
    assert [row["id"] for row in api.get(orders, params={"after": ids[1], "before": ids[4],
                                                         "asc": "true"}).json()] == ids[2:4]
    assert api.get(orders).json()[0]["store_id"] == STORE
    _assert_error(api.get(orders, params={"limit": 0}), 400, "validation_failed")
    _assert_error(api.get(orders, params={"limit": 101}), 400, "validation_failed")


def test_stats_count_requests_per_kind(url: str, api: httpx.Client) -> None:
    api.get(HISTORY)
    api.get(HISTORY)
    api.get(f"/v1/stores/{STORE}/webhooks")
    api.get(f"/v1/stores/{STORE}/orders")
    _assert_error(api.get(f"/v1/stores/{STORE}/nothing"), 404, "not_found")

    counters = paynow.stats(url)

    assert counters["requests"] == {"history": 2, "webhooks": 1, "orders": 1, "other": 1}
    assert counters["statuses"] == {"200": 4, "404": 1}
    paynow.reset(url)
    assert paynow.stats(url)["requests"] == dict.fromkeys(paynow.KINDS, 0)


def test_admin_refuses_bad_seeds_and_knobs(url: str, api: httpx.Client) -> None:
    with pytest.raises(paynow.PayNowEmulatorError, match="400"):
        paynow.knobs(url, page_size=0)
    with pytest.raises(paynow.PayNowEmulatorError, match="not a knob"):
        paynow.knobs(url, pages=3)
    with pytest.raises(paynow.PayNowEmulatorError, match="400"):
        paynow.seed(url, STORE, WEBHOOK, [{"state": "lost"}])
    with pytest.raises(paynow.PayNowEmulatorError, match="400"):
        paynow.seed(url, "store", WEBHOOK, [{}])
    assert paynow.knobs(url)["page_size"] == paynow.DEFAULT_PAGE_SIZE


def test_the_emulator_binds_loopback_only(tmp_path: Path) -> None:
    assert paynow.main(["--host", "0.0.0.0", "--port", "0", "--state-dir", str(tmp_path)]) == 2
