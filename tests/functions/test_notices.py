"""Run notices on the official Pub/Sub emulator: every status change of a run published once,
with every task delivered twice, with announcers racing, and after an announcer died; the
message as ``docs/notifications.md`` documents it. Messages are counted on a subscription of
the stack's topic made for each test."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
from functions_framework import create_app

from emulators.stack import NOTICES_TOPIC, PROJECT_ID
from shared.adapters import notices, schema
from shared.adapters.notices import Announcer
from tests import data
from tests.functions.conftest import SOURCE, Harness
from tests.functions.test_control import lose_everything, started_mid_run, sweep

RANGE = {"startDate": "2025-01-01", "endDate": "2025-01-03"}
FIELDS = {"noticeId", "seq", "kind", "migrationId", "type", "dryRun", "status", "previous",
          "reason", "by", "note", "runStatus", "counts", "project", "database", "environment",
          "link", "at", "text"}


class Subscription:
    """A pull subscription of the stack's notices topic, over the emulator's REST API."""

    def __init__(self, host: str) -> None:
        self.url = (f"http://{host}/v1/projects/{PROJECT_ID}/subscriptions/"
                    f"test-{uuid.uuid4().hex[:12]}")
        created = httpx.put(self.url, json={
            "topic": f"projects/{PROJECT_ID}/topics/{NOTICES_TOPIC}"}, timeout=10)
        assert created.status_code == 200, created.text

    def messages(self) -> list[dict[str, Any]]:
        """Every message published since the subscription was made (pulled until empty)."""
        got: list[dict[str, Any]] = []
        empty = 0
        while empty < 2:
            pulled = httpx.post(f"{self.url}:pull", json={
                "maxMessages": 1000, "returnImmediately": True}, timeout=10).json()
            received = pulled.get("receivedMessages", [])
            if not received:
                empty += 1
                continue
            httpx.post(f"{self.url}:acknowledge", json={
                "ackIds": [item["ackId"] for item in received]}, timeout=10)
            for item in received:
                message = item["message"]
                got.append({**json.loads(base64.b64decode(message["data"])),
                            "attributes": message.get("attributes", {}),
                            "messageId": message["messageId"]})
        return got

    def delete(self) -> None:
        httpx.delete(self.url, timeout=10)


@pytest.fixture
def subscription(stack_env: dict[str, str]) -> Iterator[Subscription]:
    made = Subscription(stack_env["PUBSUB_EMULATOR_HOST"])
    yield made
    made.delete()


@pytest.fixture
def control(harness: Harness) -> Any:
    return create_app("backfill_control", SOURCE).test_client()


def finished(harness: Harness, response: Any) -> str:
    assert response.status_code == 202, response.get_json()
    harness.deliver_all(twice=True)
    migration_id: str = response.get_json()["migrationId"]
    assert harness.run(migration_id)["status"] == "completed"
    return migration_id


def of(messages: list[dict[str, Any]], migration_id: str) -> list[tuple[str, str]]:
    return [(message["kind"], message["status"]) for message in
            sorted((m for m in messages if m["migrationId"] == migration_id),
                   key=lambda m: m["noticeId"])]


def test_every_status_change_is_published_once_with_every_task_delivered_twice(
        harness: Harness, control: Any, subscription: Subscription) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(30, days=3))
    replay = finished(harness, harness.start(type="webhook_replay", **RANGE))
    started = control.post(f"/api/admin/dataMigrations/{replay}/rollback", json={},
                           headers=harness.headers())
    dry = finished(harness, started)
    live = finished(harness, control.post(f"/api/admin/dataMigrations/{replay}/rollback",
                                          json={"dryRun": False}, headers=harness.headers()))

    messages = subscription.messages()

    assert Counter(message["noticeId"] for message in messages).most_common(1)[0][1] == 1
    assert of(messages, replay) == [
        ("status", "pending"), ("status", "running"), ("status", "completed"),
        ("rolled_back", "rolled_back")]
    for rollback in (dry, live):
        assert of(messages, rollback) == [
            ("status", "pending"), ("status", "running"), ("status", "completed")]
    assert len(messages) == 10
    done = next(m for m in messages if m["migrationId"] == replay and m["status"] == "completed")
    assert set(done) - {"attributes", "messageId"} == FIELDS
    assert (done["previous"], done["reason"], done["runStatus"]) == (
        "running", "its last chunk ended", "completed")
    assert done["counts"]["applied"] == 30 and done["counts"]["errors"] == 0
    assert (done["environment"], done["project"], done["type"], done["dryRun"]) == (
        "local", PROJECT_ID, "webhook_replay", False)
    assert done["link"].endswith(f"/api/admin/dataMigrations/{replay}")
    assert "LIVE" in done["text"] and done["link"] in done["text"]
    assert done["attributes"] == {"noticeId": done["noticeId"], "migrationId": replay,
                                  "status": "completed", "environment": "local"}
    undone = next(m for m in messages if m["kind"] == "rolled_back")
    assert undone["reason"] == f"rolled back by {live}"
    # Every notice is marked published, with the message id Pub/Sub gave it.
    stored = [snap.to_dict() or {} for snap in harness.db.collection(schema.NOTICES).stream()]
    assert len(stored) == 10 and all(n["published"] is True for n in stored)
    assert {n["messageId"] for n in stored} == {m["messageId"] for m in messages}


class Refusing:
    """A publisher whose every publish fails (Pub/Sub unreachable)."""

    topic: str | None = "projects/x/topics/y"

    def publish(self, data: bytes, attributes: Mapping[str, str]) -> str | None:
        raise ConnectionError("unreachable")


def test_racing_announcers_and_a_dead_ones_notices_are_published_once(
        harness: Harness, control: Any, subscription: Subscription) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(6, days=1))
    # Without a topic, notices are recorded and marked published with topic null.
    harness.configure(notices_topic="")
    migration_id = harness.start(type="webhook_replay", **RANGE).get_json()["migrationId"]
    harness.deliver_all()
    recorded = list(harness.db.collection(schema.NOTICES).stream())
    assert len(recorded) == 3
    assert all((snap.to_dict() or {})["topic"] is None for snap in recorded)
    # Say they were not: then Pub/Sub is unreachable, and a failed publish is left for later.
    for snap in recorded:
        snap.reference.update({"published": False, "messageId": None})
    harness.configure()
    assert Announcer(harness.db, harness.settings, Refusing()).announce(migration_id) == 0
    assert all((snap.to_dict() or {})["published"] is False
               for snap in harness.db.collection(schema.NOTICES).stream())

    announcers = [Announcer(harness.db, harness.settings) for _ in range(6)]
    published: list[int] = []
    threads = [threading.Thread(target=lambda a=a: published.append(a.announce(migration_id)))
               for a in announcers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sweep(harness)  # the sweep finds nothing left to publish
    messages = subscription.messages()

    assert sum(published) == 3
    assert of(messages, migration_id) == [
        ("status", "pending"), ("status", "running"), ("status", "completed")]


def test_a_claim_that_lapsed_is_published_by_the_next_announcer(
        harness: Harness, subscription: Subscription) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(3, days=1))
    harness.configure(notices_topic="")
    migration_id = harness.start(type="webhook_replay", **RANGE).get_json()["migrationId"]
    notice = notices.ref(harness.db, notices.status_id(migration_id, 0))
    # An announcer claimed it and died: its claim holds, then lapses.
    notice.update({"published": False, "topic": None,
                   "claimedUntil": dt.datetime.now(dt.UTC) + dt.timedelta(days=1)})
    harness.configure()
    assert Announcer(harness.db, harness.settings).announce(migration_id) == 0
    notice.update({"claimedUntil": data.at(1)})

    assert Announcer(harness.db, harness.settings).pending() == 1
    assert of(subscription.messages(), migration_id) == [("status", "pending")]


def test_a_stall_is_published_once_however_often_the_sweep_sees_it(
        harness: Harness, subscription: Subscription) -> None:
    migration_id = started_mid_run(harness)
    lose_everything(harness, migration_id)

    sweep(harness)
    sweep(harness)  # the chunk was picked up under a new segment: no stall any more
    messages = subscription.messages()

    stalls = [m for m in messages if m["kind"] == "stalled"]
    assert len(stalls) == 1
    assert stalls[0]["migrationId"] == migration_id
    assert "made no progress for a lease" in stalls[0]["reason"]
