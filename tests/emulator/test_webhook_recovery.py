"""A recovery end to end on the real emulators and the local PayNow: 30 days and 10,000 webhooks
in PayNow's history, a tenth of them stored by the receiver, with 5% of PayNow's answers 429 and
1% 500, the API key rotated mid-run and the chunk handler killed twice: every event is stored
once, none is missing, and the history's pages are fetched at most 5% above the minimum plus one
per kill.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import httpx
import pytest
from google.cloud import firestore

from backfill_cli.client import BackfillClient, Endpoints
from emulators import paynow as local_paynow
from emulators.stack import Stack
from shared import clock
from shared.adapters import schema
from tests import data
from tests.conftest import GATEWAY_OVERRIDES, Mint

pytestmark = pytest.mark.emulator

EVENTS, RECEIVED_EVERY, DAYS = 10_000, 10, 30
KILL_AFTER_COMMITS = 60


def _alive(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def _until_dead(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _alive(url):
        time.sleep(0.05)
    assert not _alive(url), "the handler did not die"


def test_a_recovery_under_faults_kills_and_a_rotated_key_stores_every_event_once(
        stack: Stack, clean: firestore.Client, mint: Mint, tmp_path: Path) -> None:
    env = stack.env()
    url, store_id, webhook_id = (env["BACKFILL_PAYNOW_API_URL"], env["BACKFILL_PAYNOW_STORE_ID"],
                                 env["BACKFILL_PAYNOW_WEBHOOK_ID"])
    today = clock.now().date()
    start = today - dt.timedelta(days=DAYS - 1)
    first = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC)
    span = (clock.now() - dt.timedelta(hours=1) - first).total_seconds()
    events = [data.purchase(f"pn{n:06}", f"opn{n:06}",
                            first + dt.timedelta(seconds=span * n / EVENTS), f"c{n % 97}")
              for n in range(EVENTS)]
    local_paynow.reset(url)
    local_paynow.seed(url, store_id, webhook_id, [data.history_item(event) for event in events])
    received = events[::RECEIVED_EVERY]
    data.put(clean, *received)
    page_size = local_paynow.knobs(url, rate_per_second=100, burst=20, error_429_odds=0.05,
                                   error_500_odds=0.01, seed=11)["page_size"]
    key_file = tmp_path / "paynow-api-key"
    key_file.write_text(env["BACKFILL_PAYNOW_API_KEY"])
    overrides = {**GATEWAY_OVERRIDES, "BACKFILL_PAGE_SIZE": "100",
                 "BACKFILL_TIME_BUDGET_SECONDS": "60", "BACKFILL_PAYNOW_RATE_PER_SECOND": "100",
                 "BACKFILL_PAYNOW_BURST": "20", "BACKFILL_PAYNOW_API_KEY_FILE": str(key_file)}
    gateway = env["BACKFILL_GATEWAY_URL"]
    try:
        stack.restart_gateway({**overrides,
                               "BACKFILL_FAULT_EXIT_AFTER_COMMITS": str(KILL_AFTER_COMMITS)})
        client = BackfillClient(Endpoints.gateway(gateway), mint())
        migration_id = client.start({"type": "webhook_recovery", "dryRun": False,
                                     "startDate": start.isoformat(),
                                     "endDate": today.isoformat()})["migrationId"]
        _until_dead(gateway)
        stack.restart_gateway({**overrides,
                               "BACKFILL_FAULT_EXIT_AFTER_COMMITS": str(KILL_AFTER_COMMITS)})
        # Mid-run, the key is rotated: its new version is in the secret's file first, then
        # PayNow refuses the old one; the delivery reads the file again on the refusal.
        read = local_paynow.stats(url)["requests"]["history"]
        while local_paynow.stats(url)["requests"]["history"] < read + 10 and _alive(gateway):
            time.sleep(0.02)
        key_file.write_text("local-paynow-key-rotated")
        local_paynow.rotate_key(url, "local-paynow-key-rotated")
        _until_dead(gateway)
        stack.restart_gateway(overrides)
        stack.wait_idle(timeout=300)
        run = client.run(migration_id)
    finally:
        stack.restart_gateway(GATEWAY_OVERRIDES)

    stored = data.documents(clean, schema.EVENTS)
    stats = local_paynow.stats(url)
    recovered = [doc for doc in stored.values() if doc.get("recovered", {}).get("by")]
    assert (run["status"], run["applied"], run["duplicates"], run["errors"]) == (
        "completed", EVENTS - len(received), len(received), 0)
    assert sorted(stored) == sorted(event["eventId"] for event in events)  # none missing
    assert len(recovered) == EVENTS - len(received)
    for event in received:
        assert stored[event["eventId"]] == event  # present: as the receiver stored it
    assert stats["http401"] == 1  # the rotated key: refused once, then read again
    assert stats["http429"] > 0 and stats["http500"] > 0
    minimum = -(-EVENTS // page_size) + 1  # every page, and the empty one past the end
    fetched = stats["requests"]["history"] - stats["http429"] - stats["http500"] \
        - stats["http401"]
    assert fetched <= minimum * 1.05 + 2, (stats, minimum)
