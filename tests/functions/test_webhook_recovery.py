"""``webhook_recovery`` through HTTP on the Firestore emulator and the local PayNow
(``emulators/paynow.py``, real HTTP): what PayNow's webhook history has and ``webhookEvents``
lacks is stored once, in the live receiver's shape; what is stored already is ``present`` and
never rewritten, a differing payload is a finding; a dry run stores nothing and tallies what it
would; a refused key fails at once; a rotated key is read again; a live delivery racing the
recovery leaves one event; a list that grows while it is read loses nothing; days PayNow no
longer keeps are refused; recovery then replay credits every recovered order once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulators import paynow as local_paynow
from shared import clock
from shared.adapters import paynow, schema
from shared.backfills.webhook_recovery import PAYLOAD_CONFLICT
from tests import data
from tests.functions.conftest import Harness

pytestmark = pytest.mark.emulator

RECOVERY = "webhook_recovery"
TODAY = clock.now().date()
# The range: five days ending yesterday (well inside PayNow's retention).
START, END = TODAY - dt.timedelta(days=5), TODAY - dt.timedelta(days=1)
RANGE = {"startDate": START.isoformat(), "endDate": END.isoformat()}


def at(day: int, minute: int = 0) -> dt.datetime:
    """A time on day ``day`` of the range (0 = its first day)."""
    return dt.datetime.combine(START + dt.timedelta(days=day), dt.time(), tzinfo=dt.UTC) \
        + dt.timedelta(minutes=minute)


@dataclasses.dataclass
class PayNowStore:
    """The local PayNow's store and subscription the stack's settings name."""

    url: str
    store_id: str
    webhook_id: str

    def seed(self, events: list[dict[str, Any]], state: str = "failed") -> None:
        """History items for receiver-shaped ``events`` (their payload and receivedAt)."""
        local_paynow.seed(self.url, self.store_id, self.webhook_id,
                          [data.history_item(event, state) for event in events])

    def stats(self) -> dict[str, Any]:
        return local_paynow.stats(self.url)

    def knobs(self, **knobs: Any) -> dict[str, Any]:
        return local_paynow.knobs(self.url, **knobs)

    def rotate_key(self) -> str:
        return local_paynow.rotate_key(self.url)


def history_reads(stats: dict[str, Any]) -> int:
    """How many history pages the local PayNow answered."""
    reads: int = stats["requests"]["history"]
    return reads


@pytest.fixture
def store(harness: Harness) -> Iterator[PayNowStore]:
    env = harness.env
    local = PayNowStore(env["BACKFILL_PAYNOW_API_URL"], env["BACKFILL_PAYNOW_STORE_ID"],
                        env["BACKFILL_PAYNOW_WEBHOOK_ID"])
    local_paynow.reset(local.url)
    # Tests are not about speed: a limit high enough not to slow them, shared as in production.
    local.knobs(rate_per_second=500, burst=500)
    harness.configure(paynow_rate_per_second=500, paynow_burst=100)
    yield local
    local_paynow.reset(local.url)


def purchases(count: int, days: int = 4, prefix: str = "e") -> list[dict[str, Any]]:
    return [data.purchase(f"{prefix}{n:05}", f"o{prefix}{n:05}", at(n % days, (n * 7) % 1440),
                          f"c{n % 5}", [("p1", 1 + n % 3)]) for n in range(count)]


def start(harness: Harness, **more: Any) -> str:
    response = harness.start(type=RECOVERY, **{**RANGE, **more})
    assert response.status_code == 202, response.get_json()
    migration_id: str = response.get_json()["migrationId"]
    return migration_id


def events(harness: Harness) -> dict[str, dict[str, Any]]:
    return data.documents(harness.db, schema.EVENTS)


RECEIVER_FIELDS = {"eventId", "provider", "eventType", "receivedAt", "payload", "processed",
                   "processedAt", "processingError"}


def test_what_paynow_has_and_firestore_lacks_is_stored_once_in_the_receivers_shape(
        harness: Harness, store: PayNowStore) -> None:
    history = purchases(40)
    store.seed(history)
    received = history[::4]  # the receiver got every fourth one
    data.put(harness.db, *received)

    migration_id = start(harness)
    harness.deliver_all(twice=True)  # every task delivered twice

    run = harness.run(migration_id)
    stored = events(harness)
    recovered = {eid: doc for eid, doc in stored.items() if "recovered" in doc}
    assert (run["status"], run["applied"], run["duplicates"], run["errors"]) == (
        "completed", 30, 10, 0)
    assert len(stored) == 40 and len(recovered) == 30
    by_id = {event["eventId"]: event for event in history}
    for event_id, doc in recovered.items():
        original = by_id[event_id]
        assert set(doc) == RECEIVER_FIELDS | {"recovered"}
        assert {key: doc[key] for key in RECEIVER_FIELDS} == {
            **{key: original[key] for key in RECEIVER_FIELDS}, "processed": False}
        assert doc["recovered"]["by"] == migration_id
        assert doc["recovered"]["state"] == "failed"
    for event in received:  # present: as the receiver stored it
        assert stored[event["eventId"]] == event
    assert sum(sum(day.values()) for day in run["tallies"].values()) == 30
    # Day 0's events are the ones the receiver got (every fourth, four days): none stored.
    assert set(run["tallies"]) == {(START + dt.timedelta(days=d)).isoformat()
                                   for d in range(1, 4)}


def test_a_second_recovery_stores_nothing(harness: Harness, store: PayNowStore) -> None:
    store.seed(purchases(25))
    first = start(harness)
    harness.deliver_all()
    before = events(harness)

    second = start(harness)
    harness.deliver_all()

    run = harness.run(second)
    assert (run["status"], run["applied"], run["duplicates"]) == ("completed", 0, 25)
    assert events(harness) == before
    assert {doc["recovered"]["by"] for doc in before.values()} == {first}


def test_a_dry_run_stores_nothing_and_tallies_what_it_would_by_day_and_type(
        harness: Harness, store: PayNowStore) -> None:
    history = purchases(12)
    refunds = [data.refund(f"r{n}", f"oe{n:05}", at(3, 600 + n), 100) for n in range(3)]
    store.seed(history + refunds)

    migration_id = start(harness, dryRun=True)
    harness.deliver_all()

    run = harness.run(migration_id)
    shadow = data.documents(harness.db,
                            f"{schema.RUNS}/{migration_id}/{schema.SHADOW_DOCUMENTS}")
    assert (run["status"], run["dryRun"], run["applied"]) == ("completed", True, 15)
    assert events(harness) == {}
    assert len(shadow) == 15
    last_day = (START + dt.timedelta(days=3)).isoformat()
    assert run["tallies"][last_day] == {"ON_ORDER_COMPLETED": 3, "ON_REFUND": 3}
    page = harness.status.get(f"/api/admin/dataMigrations/{migration_id}",
                              headers={**harness.headers(), "Accept": "text/html"})
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Would store by day and type" in html
    assert f"<td>{last_day}</td><td>ON_REFUND</td><td class=\"n\">3</td>" in html


def test_a_stored_event_whose_payload_differs_is_a_finding_left_as_it_is(
        harness: Harness, store: PayNowStore) -> None:
    history = purchases(6)
    store.seed(history)
    changed = {**history[2], "payload": {**history[2]["payload"],
                                         "body": {**history[2]["payload"]["body"],
                                                  "total_amount": 1}}}
    data.put(harness.db, changed)

    migration_id = start(harness)
    harness.deliver_all()

    run = harness.run(migration_id)
    records = data.documents(harness.db, f"{schema.RUNS}/{migration_id}/{schema.ERRORS}")
    assert (run["status"], run["applied"], run["skipped"]) == ("completed", 5, 1)
    assert run["errorCodes"] == {PAYLOAD_CONFLICT: 1}
    assert [record["subject"] for record in records.values()] == [
        f"{schema.EVENTS}/{history[2]['eventId']}"]
    assert events(harness)[history[2]["eventId"]] == changed


def test_a_refused_key_fails_the_run_at_once_without_a_storm(
        harness: Harness, store: PayNowStore) -> None:
    store.seed(purchases(5))
    store.rotate_key()  # the configured key no longer works, and nothing says the new one

    migration_id = start(harness)
    harness.deliver_all()

    run = harness.run(migration_id)
    assert run["status"] == "failed"
    assert "PayNow API key refused" in json.dumps(run), run
    assert harness.env["BACKFILL_PAYNOW_API_KEY"] not in json.dumps(run)
    assert store.stats()["http401"] == 1
    assert events(harness) == {}


def test_a_rotated_key_is_read_again_from_its_file(
        harness: Harness, store: PayNowStore, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store.seed(purchases(8))
    key_file = tmp_path / "paynow-api-key"
    key_file.write_text(harness.env["BACKFILL_PAYNOW_API_KEY"])
    harness.configure(paynow_rate_per_second=500, paynow_burst=100,
                      paynow_api_key_file=str(key_file))
    original = paynow.PayNow.history

    def rotated_once_read(self: paynow.PayNow, page: int) -> list[paynow.Delivered]:
        if not rotated:  # the key is rotated after the delivery read it: a new version
            rotated.append(store.rotate_key())
            key_file.write_text(rotated[0])
        return original(self, page)

    rotated: list[str] = []
    monkeypatch.setattr(paynow.PayNow, "history", rotated_once_read)
    migration_id = start(harness)
    harness.deliver_all()

    run = harness.run(migration_id)
    assert (run["status"], run["applied"]) == ("completed", 8)
    assert store.stats()["http401"] == 1


def test_days_paynow_no_longer_keeps_are_refused_naming_the_field(harness: Harness) -> None:
    old = TODAY - dt.timedelta(days=harness.settings.paynow_retention_days + 3)
    response = harness.start(type=RECOVERY, startDate=old.isoformat(),
                             endDate=END.isoformat())

    assert response.status_code == 400
    assert response.get_json()["field"] == "startDate"
    assert "keeps webhook history" in response.get_json()["reason"]
    assert data.documents(harness.db, schema.RUNS) == {}


def test_a_live_delivery_racing_the_recovery_leaves_one_event(
        harness: Harness, store: PayNowStore, monkeypatch: pytest.MonkeyPatch) -> None:
    history = purchases(10)
    store.seed(history)
    racer = history[4]
    original = paynow.PayNow.history
    raced: list[int] = []

    def history_then_the_receiver(self: paynow.PayNow, page: int) -> list[paynow.Delivered]:
        items = original(self, page)
        if not raced:  # the receiver stores one of the page's events before the commit
            raced.append(page)
            data.put(harness.db, racer)
        return items

    monkeypatch.setattr(paynow.PayNow, "history", history_then_the_receiver)
    migration_id = start(harness)
    harness.deliver_all()

    run = harness.run(migration_id)
    assert (run["status"], run["applied"], run["duplicates"]) == ("completed", 9, 1)
    assert events(harness)[racer["eventId"]] == racer  # the receiver's, not rewritten
    assert len(events(harness)) == 10


def test_webhooks_arriving_while_the_history_is_read_lose_nothing(
        harness: Harness, store: PayNowStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.knobs(page_size=5)
    history = purchases(30)
    store.seed(history)
    original = paynow.PayNow.history
    arrived = Counter[str]()

    def history_while_orders_come_in(self: paynow.PayNow, page: int) -> list[paynow.Delivered]:
        items = original(self, page)
        # Three new webhooks after every read: every older item moves three places on.
        news = [data.purchase(f"new{arrived.total() + n}", f"onew{arrived.total() + n}",
                              clock.now(), "c1") for n in range(3)]
        arrived.update(event["eventId"] for event in news)
        store.seed(news)
        return items

    monkeypatch.setattr(paynow.PayNow, "history", history_while_orders_come_in)
    migration_id = start(harness)
    harness.deliver_all()

    run = harness.run(migration_id)
    assert (run["status"], run["applied"], run["duplicates"]) == ("completed", 30, 0)
    assert sorted(events(harness)) == sorted(event["eventId"] for event in history)


def test_429s_and_500s_are_retried_and_every_event_is_stored_once(
        harness: Harness, store: PayNowStore) -> None:
    store.knobs(page_size=10, error_429_odds=0.2, error_500_odds=0.1, seed=7)
    store.seed(purchases(100))

    migration_id = start(harness)
    harness.deliver_all()

    run = harness.run(migration_id)
    stats = store.stats()
    assert (run["status"], run["applied"], run["duplicates"]) == ("completed", 100, 0)
    assert len(events(harness)) == 100
    assert stats["http429"] > 0 and stats["http500"] > 0


def test_recovery_then_replay_credits_every_recovered_order_once(
        harness: Harness, store: PayNowStore) -> None:
    data.product(harness.db, "p1", 10)
    history = purchases(30)
    refunds = [data.refund(f"r{n}", f"oe{n:05}", at(3, 900 + n), 500) for n in range(0, 30, 5)]
    store.seed(history + refunds)
    data.put(harness.db, *history[:5])  # the receiver got a few

    recovery = start(harness)
    harness.plan()  # planned, its chunk still queued: the recovery is active
    replay = harness.start(type="webhook_replay", **RANGE)
    harness.deliver_all()

    replayed = harness.run(replay.get_json()["migrationId"])
    assert replay.status_code == 202
    assert replay.get_json()["waitingFor"] == [recovery]
    assert harness.run(recovery)["status"] == "completed"
    assert (replayed["status"], replayed["errors"]) == ("completed", 0)
    assert data.credited_orders(harness.db) == Counter(
        event["payload"]["body"]["id"] for event in history)
    data.assert_ledger_consistent(harness.db)


def test_gaps_with_provider_say_per_day_what_never_arrived(
        harness: Harness, store: PayNowStore) -> None:
    history = purchases(12, days=3)
    store.seed(history)
    data.put(harness.db, *history[:5])  # days 0, 1, 2, 0, 1: five arrived
    query = {"startDate": START.isoformat(), "endDate": END.isoformat()}

    before = store.stats()
    plain = harness.status.get("/api/admin/gaps", query_string=query, headers=harness.headers())
    calls = store.stats()
    found = harness.status.get("/api/admin/gaps", query_string={**query, "provider": "true"},
                               headers=harness.headers())
    refused = harness.status.get("/api/admin/gaps", query_string={**query, "provider": "yes"},
                                 headers=harness.headers())

    body = found.get_json()
    days = {day["date"]: day["provider"] for day in body["days"]}
    assert found.status_code == 200, body
    assert "provider" not in plain.get_json()["days"][0]
    assert plain.status_code == 200
    assert history_reads(calls) == history_reads(before)  # a plain gaps asks PayNow nothing
    assert days[START.isoformat()] == {"paynow": 4, "stored": 2, "neverArrived": 2}
    assert days[(START + dt.timedelta(days=1)).isoformat()] == {
        "paynow": 4, "stored": 2, "neverArrived": 2}
    assert days[(START + dt.timedelta(days=2)).isoformat()] == {
        "paynow": 4, "stored": 1, "neverArrived": 3}
    assert body["totals"]["neverArrived"] == 7
    assert body["next"][0].startswith("webhook_recovery over ")
    assert refused.status_code == 400 and refused.get_json()["field"] == "provider"
    assert events(harness).keys() == {event["eventId"] for event in history[:5]}


def test_a_history_item_without_an_event_id_is_an_error_record_and_stores_nothing(
        harness: Harness, store: PayNowStore) -> None:
    history = purchases(3)
    bare = data.history_item(history[1])
    bare["payload"] = json.dumps({"event_type": "ON_ORDER_COMPLETED",
                                  "body": history[1]["payload"]["body"]})  # no event_id
    store.seed([history[0], history[2]])
    local_paynow.seed(store.url, store.store_id, store.webhook_id, [bare])

    migration_id = start(harness)
    harness.deliver_all()

    run = harness.run(migration_id)
    records = data.documents(harness.db, f"{schema.RUNS}/{migration_id}/{schema.ERRORS}")
    assert (run["status"], run["applied"], run["errors"]) == ("completed", 2, 1)
    assert run["errorCodes"] == {"malformed_payload": 1}
    assert [record["code"] for record in records.values()] == ["malformed_payload"]
    assert sorted(events(harness)) == sorted([history[0]["eventId"], history[2]["eventId"]])
