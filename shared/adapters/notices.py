"""A run's notices: every status change (and a stall, a live run's error rate) published once
to a Pub/Sub topic as a documented JSON message (``docs/notifications.md``).

An outbox. The commit that changes a run's status also creates its notice,
``backfillNotices/{migrationId}-{seq}`` (``seq`` counts the run's changes: ``noticeSeq`` on
the run, read under the run's update time), so a change is never without its notice and a
duplicate delivery, which makes no change, makes no notice. Whoever made the change then
announces the run's unpublished notices, in order: each is claimed first (a lease on the
notice, under its update time: two announcers racing cannot both claim it), published, and
marked ``published``. A notice whose announcer died is announced by the next status change of
its run, its watchdog round or the sweep, once its claim lapsed. Duplicate deliveries and
races publish a change once; a process that dies between Pub/Sub's answer and the mark makes
the one case that publishes twice, so every message carries its ``noticeId`` (attribute and
field) for a subscriber to drop a repeat.

Without a topic (``BACKFILL_NOTICES_TOPIC`` empty) notices are still recorded, and marked
published with ``topic: null``. A publish that fails is logged (never the message) and left for
the next announcer. Nothing here raises into the caller: a status change is made whether or not
its notice can be sent now.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared import clock, logs
from shared.adapters import schema
from shared.config import Settings
from shared.domain.records import COUNTERS

logger = logging.getLogger(__name__)

# How long a claim holds a notice for its announcer (a publish waits at most PUBLISH_SECONDS).
CLAIM_SECONDS = 60
PUBLISH_SECONDS = 30
# Notices the sweep announces at most per round.
SWEEP_LIMIT = 200
_OWNER = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Publisher(Protocol):
    topic: str | None

    def publish(self, data: bytes, attributes: Mapping[str, str]) -> str | None:
        """Publish one message; answers its message id (None: no topic to publish to)."""


class NoTopic:
    topic: str | None = None

    def publish(self, data: bytes, attributes: Mapping[str, str]) -> str | None:
        return None


class PubSubPublisher:
    """The real Pub/Sub client (the emulator's where ``PUBSUB_EMULATOR_HOST`` is set)."""

    def __init__(self, project_id: str, topic: str) -> None:
        # Imported only where a topic is configured.
        from google.cloud.pubsub_v1 import PublisherClient

        self._client = PublisherClient()
        self.topic = self._client.topic_path(project_id, topic)

    def publish(self, data: bytes, attributes: Mapping[str, str]) -> str | None:
        future = self._client.publish(self.topic, data, **attributes)
        message_id: str = future.result(timeout=PUBLISH_SECONDS)
        return message_id


@functools.cache
def publisher(project_id: str, topic: str, emulator: str | None) -> Publisher:
    """One publisher per process and topic (``emulator``: part of the key only)."""
    return PubSubPublisher(project_id, topic) if topic else NoTopic()


def publisher_for(settings: Settings) -> Publisher:
    return publisher(settings.project_id, settings.notices_topic,
                     os.environ.get("PUBSUB_EMULATOR_HOST"))


def ref(db: firestore.Client, notice_id: str) -> firestore.DocumentReference:
    return db.collection(schema.NOTICES).document(notice_id)


def path(notice_id: str) -> str:
    return f"{schema.NOTICES}/{notice_id}"


def status_id(migration_id: str, seq: int) -> str:
    return f"{migration_id}-{seq:04d}"


def status_notice(run: Mapping[str, Any], migration_id: str, seq: int, status: str,
                  previous: str | None, reason: str, by: str = "",
                  note: str = "") -> tuple[str, dict[str, Any]]:
    """The path and document of a run's ``seq``-th status change (``run``: its document)."""
    return path(status_id(migration_id, seq)), {
        "migrationId": migration_id, "seq": seq, "kind": "status", "status": status,
        "previous": previous, "reason": reason, "by": by, "note": note,
        "type": run.get("type"), "dryRun": bool(run.get("dryRun")),
        "at": firestore.SERVER_TIMESTAMP, "published": False}


def create(db: firestore.Client, migration_id: str, key: str, fields: dict[str, Any]) -> bool:
    """Create the notice ``{migrationId}-{key}`` if absent; answers whether it was new."""
    try:
        ref(db, f"{migration_id}-{key}").create({
            "migrationId": migration_id, "seq": None, "kind": key.split("-")[0],
            "at": firestore.SERVER_TIMESTAMP, "published": False, **fields})
    except api_exceptions.AlreadyExists:
        return False
    return True


class Announcer:
    """Publishes a run's unpublished notices (see the module's docstring)."""

    def __init__(self, db: firestore.Client, settings: Settings,
                 publisher_: Publisher | None = None) -> None:
        self._db = db
        self._settings = settings
        self._publisher = publisher_ or publisher_for(settings)

    def record(self, migration_id: str, key: str, fields: dict[str, Any]) -> bool:
        """Create the notice ``{migrationId}-{key}`` if absent (a stall, an error rate: its
        key names the occurrence, so a repeat of the round that found it makes none), then
        announce the run's notices. Answers whether it was new."""
        if not create(self._db, migration_id, key, fields):
            return False
        self.announce(migration_id)
        return True

    def announce(self, migration_id: str) -> int:
        """Publish the run's unpublished notices in order; answers how many this call
        published. Never raises."""
        try:
            waiting = sorted(
                (snap for snap in self._db.collection(schema.NOTICES).where(
                    filter=FieldFilter("migrationId", "==", migration_id)).stream()
                 if (snap.to_dict() or {}).get("published") is False),
                key=lambda snap: snap.id)
            return sum(self._announce_one(snap) for snap in waiting)
        except Exception as error:  # a notice waits for the next announcer; the change stands
            logs.log(logger, "notices not announced", logging.WARNING,
                     migration_id=migration_id, reason=type(error).__name__)
            return 0

    def pending(self, limit: int = SWEEP_LIMIT) -> int:
        """Announce every run's unpublished notices (the sweep: what a dead announcer left)."""
        try:
            runs = sorted({str((snap.to_dict() or {}).get("migrationId")) for snap in
                           self._db.collection(schema.NOTICES).where(
                               filter=FieldFilter("published", "==", False)).limit(limit)
                          .stream()})
        except Exception as error:
            logs.log(logger, "notices not swept", logging.WARNING, reason=type(error).__name__)
            return 0
        return sum(self.announce(str(migration_id)) for migration_id in runs)

    def _announce_one(self, snap: Any) -> int:
        if not self._claim(snap):
            return 0
        notice = snap.to_dict() or {}
        notice_ref = snap.reference
        try:
            message = self._message(snap.id, notice)
            message_id = self._publisher.publish(
                json.dumps(message, default=str).encode(),
                {"noticeId": snap.id, "migrationId": str(notice.get("migrationId")),
                 "status": str(message["status"]),
                 "environment": self._settings.stage.value})
        except Exception as error:
            notice_ref.update({"claimedUntil": None, "lastError": type(error).__name__})
            logs.log(logger, "notice not published", logging.WARNING,
                     migration_id=notice.get("migrationId"), reason=type(error).__name__)
            return 0
        notice_ref.update({"published": True, "publishedAt": firestore.SERVER_TIMESTAMP,
                           "messageId": message_id, "topic": self._publisher.topic,
                           "claimedUntil": None})
        logs.log(logger, "notice published", migration_id=notice.get("migrationId"),
                 status=str(message["status"]))
        return 1

    def _claim(self, snap: Any) -> bool:
        now = clock.now()

        def decide(current: Any) -> schema.Write[bool] | schema.Done[bool]:
            data = current.to_dict() or {}
            held = data.get("claimedUntil")
            if data.get("published") is not False or (held is not None and held > now):
                return schema.Done(False)
            return schema.Write({"claimedUntil": now + dt.timedelta(seconds=CLAIM_SECONDS),
                                 "claimedBy": _OWNER}, lambda _: True)

        return schema.compare_and_set(self._db, snap.reference, decide, attempts=3,
                                      what="a notice", read=snap, give_up=lambda: False)

    def _message(self, notice_id: str, notice: dict[str, Any]) -> dict[str, Any]:
        """The documented message (``docs/notifications.md``): the notice, the run's counts
        as of now, where it is, and a line for a chat room."""
        migration_id = str(notice.get("migrationId"))
        run_ref = schema.run_ref(self._db, migration_id)
        run = run_ref.get().to_dict() or {}
        # At most five aggregations a query (Firestore's limit).
        fields = tuple(f"counters.{name}" for name in COUNTERS)
        sums: dict[str, int] = {}
        for first in range(0, len(fields), 5):
            sums.update(schema.sums(run_ref.collection(schema.CHUNKS), fields[first:first + 5]))
        counts = {name: sums[f"counters.{name}"] for name in COUNTERS}
        settings = self._settings
        link = f"{settings.status_url.rstrip('/')}/{migration_id}" if settings.status_url \
            else f"/api/admin/dataMigrations/{migration_id}"
        status = notice.get("status") or notice.get("kind")
        live = "dry run" if run.get("dryRun") else "LIVE"
        text = (f"[{settings.stage.value}] {run.get('type')} {migration_id} ({live}) {status}: "
                f"{notice.get('reason', '')}; taken {counts['taken']}, applied "
                f"{counts['applied']}, errors {counts['errors']}. {link}")
        at: Any = notice.get("at")
        return {"noticeId": notice_id, "seq": notice.get("seq"), "kind": notice.get("kind"),
                "migrationId": migration_id, "type": run.get("type"),
                "dryRun": bool(run.get("dryRun")), "status": status,
                "previous": notice.get("previous"), "reason": notice.get("reason", ""),
                "by": notice.get("by", ""), "note": notice.get("note", ""),
                "runStatus": run.get("status"), "counts": counts,
                "project": settings.project_id, "database": settings.database,
                "environment": settings.stage.value, "link": link,
                "at": at.isoformat().replace("+00:00", "Z") if hasattr(at, "isoformat") else at,
                "text": text}
