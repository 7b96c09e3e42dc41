"""The PayNow emulator's pieces without a server: Flake ids as PayNow documents them, the names
of events, knob checks, the token bucket and retention on fixed clocks."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from emulators import paynow
from emulators.stack import Ports, contract_env

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def test_flake_ids_follow_paynows_layout() -> None:
    epoch = dt.datetime(2022, 2, 22, 22, 22, 22, tzinfo=dt.UTC)

    assert paynow.flake_id(epoch) == "0"
    assert int(paynow.flake_id(epoch + dt.timedelta(milliseconds=1))) == 1 << 22
    assert int(paynow.flake_id(epoch, seq=5, node=3)) == (3 << 12) | 5
    at = dt.datetime(2025, 3, 4, 5, 6, 7, 891000, tzinfo=dt.UTC)
    assert paynow.flake_time(paynow.flake_id(at, 4095, 1023)) == at
    # The docs' example id (411486491630370816) is a time in 2025.
    assert paynow.flake_time("411486491630370816").year == 2025
    with pytest.raises(ValueError, match="range"):
        paynow.flake_id(epoch - dt.timedelta(seconds=1))
    with pytest.raises(ValueError, match="seq"):
        paynow.flake_id(at, seq=4096)


def test_the_stacks_ids_are_flake_ids_of_fixed_days() -> None:
    assert paynow.flake_time(paynow.LOCAL_STORE_ID) == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert paynow.flake_time(paynow.LOCAL_WEBHOOK_ID) == dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    env = contract_env(9100)
    assert env["BACKFILL_PAYNOW_API_URL"] == f"http://127.0.0.1:{Ports(9100).paynow}"
    assert Ports(9100).paynow == 9107
    assert (env["BACKFILL_PAYNOW_STORE_ID"], env["BACKFILL_PAYNOW_WEBHOOK_ID"],
            env["BACKFILL_PAYNOW_API_KEY"]) == (paynow.LOCAL_STORE_ID, paynow.LOCAL_WEBHOOK_ID,
                                                paynow.LOCAL_API_KEY)


@pytest.mark.parametrize(("history", "envelope"), [
    ("OnOrderCompleted", "ON_ORDER_COMPLETED"),
    ("OnRefund", "ON_REFUND"),
    ("OnChargebackClosed", "ON_CHARGEBACK_CLOSED"),
    ("ON_REFUND", "ON_REFUND"),
    ("on_refund", "ON_REFUND"),
])
def test_event_names(history: str, envelope: str) -> None:
    assert paynow.event_name(history) == envelope


def test_knobs_are_checked_before_any_is_applied() -> None:
    state = paynow.PayNowState(clock=lambda: NOW)

    with pytest.raises(ValueError, match="page_size"):
        state.set_knobs({"burst": 9, "page_size": 0})
    with pytest.raises(ValueError, match="not a knob"):
        state.set_knobs({"pages": 1})
    with pytest.raises(ValueError, match="true or false"):
        state.set_knobs({"payload_as_string": 1})

    assert state.knob_values()["burst"] == paynow.DEFAULT_BURST
    assert state.set_knobs({"retention_days": 7})["retention_days"] == 7.0


def test_the_bucket_refills_at_the_rate_and_says_when() -> None:
    clock = [100.0]
    state = paynow.PayNowState(clock=lambda: NOW, monotonic=lambda: clock[0])
    state.set_knobs({"rate_per_second": 2, "burst": 2})

    first, second, third = (state.admit("k") for _ in range(3))

    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert third.headers()["Retry-After"] == "1"
    assert third.headers()["X-RateLimit-Remaining"] == "0"
    assert "Retry-After" not in first.headers()
    assert state.admit("another key").allowed  # a bucket per key
    clock[0] += 0.5  # one token back at 2 a second
    assert state.admit("k").allowed
    assert not state.admit("k").allowed
    state.set_knobs({"rate_per_second": 0})
    assert all(state.admit("k").allowed for _ in range(50))


def test_retention_and_paging_on_a_fixed_clock(tmp_path: Path) -> None:
    state = paynow.PayNowState(key_file=tmp_path / "key", clock=lambda: NOW)
    store, webhook = paynow.LOCAL_STORE_ID, paynow.LOCAL_WEBHOOK_ID
    state.seed_history(store, webhook, [
        {"created_at": (NOW - dt.timedelta(days=days)).isoformat(), "state": state_name}
        for days, state_name in ((31, "success"), (29, "failed"), (1, "success"), (0, "pending"))
    ])
    state.set_knobs({"page_size": 2})

    page0 = state.history_page(store, webhook, 0, "all")
    page1 = state.history_page(store, webhook, 1, "all")

    assert page0 is not None and page1 is not None
    assert [item["state"] for item in page0["history"]] == ["pending", "success"]
    assert [item["state"] for item in page1["history"]] == ["failed"]  # 31 days: gone
    assert state.history_page(store, "1", 0, "all") is None
    assert (tmp_path / "key").read_text().strip() == paynow.LOCAL_API_KEY
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600


def test_a_seeded_id_replaces_the_item_it_names() -> None:
    state = paynow.PayNowState(clock=lambda: NOW)
    store, webhook = paynow.LOCAL_STORE_ID, paynow.LOCAL_WEBHOOK_ID
    item_id = paynow.flake_id(NOW)

    state.seed_history(store, webhook, [{"id": item_id, "state": "failed"}])
    answer = state.seed_history(store, webhook, [{"id": item_id, "state": "success",
                                                  "payload": {"event_type": "ON_REFUND"}}])

    assert answer["total"] == 1
    page = state.history_page(store, webhook, 0, "all")
    assert page is not None
    assert page["history"][0]["state"] == "success"
    assert page["history"][0]["payload"] == '{"event_type":"ON_REFUND"}'
    state.set_knobs({"payload_as_string": False})
    page = state.history_page(store, webhook, 0, "all")
    assert page is not None and page["history"][0]["payload"] == {"event_type": "ON_REFUND"}
