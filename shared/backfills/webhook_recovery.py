"""``webhook_recovery``: stores the webhook events PayNow sent (or tried to) that never reached
``webhookEvents``, read from the subscription's webhook history (``shared.adapters.paynow``).

What it stores. For each history item created in the run's range, the event as the live receiver
stores it (the data contract's shape: ``eventId``, ``provider``, ``eventType``, ``receivedAt``,
``payload``, ``processed: false``, ``processedAt``, ``processingError``), under PayNow's event id,
created only if absent, with ``receivedAt`` = when PayNow created it (a replay of the original
dates finds it) and ``recovered`` saying by which run, from which history item and in what state
PayNow had it. An event stored already (by the receiver, an earlier recovery, PayNow's retry) is
``present`` (counted as a duplicate) and never rewritten; one whose stored payload differs from
PayNow's copy is a ``payload_conflict`` finding, left as it is. A history item without an event
id is a ``malformed_payload`` error.

Why nothing is stored twice. The page's documents, its records and the chunk's cursor commit in
one batch (``shared.executor.commit``), each document created if absent: a killed delivery
repeats at most its last page, which finds its events present; a live delivery that lands
between the read and the commit fails the commit whole, and the page is planned again on it.

How it reads a list that grows while it is read. The history is newest first and paged by page
number, so new webhooks push every item to later pages while the recovery reads; a page number
never names the same items twice. The cursor is therefore the page to read next and the key
(``created_at``, id) of the oldest item handled: a page re-read after the list moved holds
items handled already, which are passed over, and no item is missed because items only ever move
to later pages. The first page of a range that ends in the past is found by probing (doubling
then halving page numbers), reading only pages that hold items older than the range's end.

Why one chunk. Page numbers do not map to time windows (they move as the list grows), so a
window's first page is found only by probing, and every window's reads share the key's one rate
limit (``shared.adapters.rate_limit``): parallel windows would spend calls on probes and go no
faster. A run is one chunk over its whole range, planned without a count ("unknown: taken
whole"), paged as fast as the limit allows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from google.cloud import firestore

from shared.adapters import paynow, rate_limit, schema
from shared.adapters.paynow import Delivered
from shared.backfills.base import Event, Finding, ItemResult, Page, PagePlan, PageSource, Stored
from shared.backfills.registry import BACKFILLS, BackfillType
from shared.config import Settings
from shared.domain import target
from shared.domain.chunking import PlannedChunk, Window, span
from shared.domain.records import ChunkRecord, RunRecord
from shared.errors import InvalidRequest, MalformedPayload, SourceRefused
from shared.models import EventType, Outcome

if TYPE_CHECKING:
    from shared.adapters.stores import PlanStore

RECOVERY = BackfillType.WEBHOOK_RECOVERY.value
REPLAY = BackfillType.WEBHOOK_REPLAY.value
CHUNK = "history"
PAYLOAD_CONFLICT = "payload_conflict"
# How many pages a probe for a range's first page may read before it gives up (2^20 pages
# are far beyond any history PayNow keeps).
_PROBES = 40


def history_of(settings: Settings, db: firestore.Client) -> paynow.PayNow:
    """The PayNow client of the configured store and key, under the key's shared limit."""
    def read_key() -> str:
        if settings.paynow_api_key_file:
            try:
                with open(settings.paynow_api_key_file, encoding="utf-8") as file:
                    return file.read().strip()
            except OSError:
                return ""
        return settings.paynow_api_key.get_secret_value()

    key = read_key()
    if not key:
        raise SourceRefused("PayNow API key refused: neither BACKFILL_PAYNOW_API_KEY_FILE nor "
                            "BACKFILL_PAYNOW_API_KEY gives the chunk function a key")
    limiter = rate_limit.SharedLimiter(
        db, rate_limit.limit_id(paynow.PROVIDER, key),
        rate_limit.Rate(settings.paynow_rate_per_second * settings.paynow_rate_fraction,
                        settings.paynow_burst))
    return paynow.PayNow(paynow.Account(settings.paynow_api_url, settings.paynow_store_id,
                                        settings.paynow_webhook_id, key,
                                        settings.paynow_timeout_seconds, refresh=read_key),
                         limiter)


def _key(cursor: Mapping[str, Any]) -> tuple[dt.datetime, str] | None:
    before = cursor.get("before")
    if not before:
        return None
    return dt.datetime.fromisoformat(before[0]), str(before[1])


def _before(key: tuple[dt.datetime, str]) -> list[str]:
    return [key[0].isoformat(), key[1]]


class HistorySource:
    """The history items created in ``window``, newest first, a PayNow page at a time.

    The cursor is ``{page, before}``: the page to read next, and the key of the oldest item
    handled (None: none yet). A page yields the items older than ``before`` and in the window,
    at most ``limit`` of them (then the next read takes the same page again, from its memo);
    the source says it is done at the first item older than the window or an empty page.
    """

    def __init__(self, read: Callable[[int], list[Delivered]], window: Window) -> None:
        self._read = read
        self._window = window
        # The last page read (its number and items): a page that yields fewer than it holds
        # is not fetched again, nor is the probe's last page.
        self._memo: tuple[int, list[Delivered]] | None = None

    def _fetch(self, number: int) -> list[Delivered]:
        memo = self._memo
        if memo is not None and memo[0] == number:
            return memo[1]
        items = self._read(number)
        self._memo = (number, items)
        return items

    def first_page(self) -> int:
        """The first page holding an item older than the window's end: 0 when the newest
        item is, else found by doubling, then halving, page numbers."""
        end = self._window.end

        def reaches(number: int) -> bool:  # the page holds an item older than the end
            items = self._fetch(number)
            return not items or items[-1].created_at < end

        if reaches(0):
            return 0
        low, high, probes = 0, 1, 1
        while not reaches(high):
            low, high = high, high * 2
            probes += 1
            if probes > _PROBES:
                raise RuntimeError("the webhook history has no end; check the subscription")
        while high - low > 1:  # reaches(high), not reaches(low)
            middle = (low + high) // 2
            if reaches(middle):
                high = middle
            else:
                low = middle
        return high

    def page(self, cursor: Mapping[str, Any] | None, limit: int) -> Page:
        if limit <= 0:
            return Page.empty()
        number = int(cursor["page"]) if cursor else self.first_page()
        before = _key(cursor) if cursor else None
        items = self._fetch(number)
        if not items:
            return Page([], None, 0, more=False)
        window, last = self._window, before
        taken: list[Event] = []
        for item in items:
            if before is not None and item.key >= before:
                continue  # handled already: the list moved since that page was read
            if item.created_at < window.start:
                return Page(taken, {"page": number, "before": _before(last)} if last else None,
                            len(taken), more=False)
            if len(taken) == limit:
                # The page holds more than ``limit``: the next read takes it again (memo).
                return Page(taken, {"page": number, "before": _before(last)} if last else None,
                            len(taken), more=True)
            last = item.key
            if item.created_at < window.end:
                taken.append(_event(item, number))
        cursor_after = {"page": number + 1, "before": _before(last) if last else None}
        return Page(taken, cursor_after, len(taken), more=True)

    def cursor_after(self, event: Event) -> dict[str, Any]:
        return {"page": event.data["historyPage"],
                "before": [event.received_at.isoformat(), event.data["historyId"]]}


def _event(item: Delivered, number: int) -> Event:
    """A history item as an item of a page: its event id (the history id when it has none:
    such an item fails), and what storing it needs."""
    return Event(item.event_id or item.history_id, {
        "eventType": item.event_type, "receivedAt": item.created_at,
        "historyId": item.history_id, "historyPage": number, "state": item.state,
        "payload": dict(item.envelope) if item.envelope is not None else None,
        "hasEventId": item.event_id is not None})


def stored_event(event: Event, migration_id: str) -> dict[str, Any]:
    """The ``webhookEvents`` document of a recovered event, as the live receiver stores it,
    plus its ``recovered`` record."""
    data = event.data
    return {
        "eventId": event.event_id, "provider": paynow.PROVIDER, "eventType": event.event_type,
        "receivedAt": event.received_at, "payload": data["payload"], "processed": False,
        "processedAt": None, "processingError": None,
        "recovered": {"by": migration_id, "historyId": data["historyId"],
                      "state": data["state"]},
    }


@dataclasses.dataclass(frozen=True)
class WebhookRecovery:
    """Recovers a range's webhook events from PayNow's history (see the module's docstring)."""

    target: target.Target | None = None

    name = RECOVERY
    # Its findings are records of the run too (counted by code in its status).
    error_codes = (MalformedPayload.code, PAYLOAD_CONFLICT)
    page_size = None
    waits_for: tuple[str, ...] = ()
    options = frozenset({"eventTypes"})
    # The gap it closes (``shared.runs.gaps``): events PayNow sent that never arrived.
    repairs = ("neverArrived",)
    # A live run is bound to the dry run it was reviewed from (``shared.domain.review``); so is
    # the replay of what it stores, which has no dry run of its own to review.
    reviewed = True
    replayed_by = REPLAY
    event_types = tuple(event_type.value for event_type in EventType)
    flags_events = False

    def variant(self, run: Mapping[str, Any]) -> WebhookRecovery:
        return WebhookRecovery(target.Target.of(run.get("target")))

    def refusal(self, action: str) -> str | None:
        if action == "retry":
            return (": a recovery is not retried; start it again over the same dates (what it "
                    "stored is found present, nothing is stored twice)")
        if action == "rollback":
            return ("; the events it stored are PayNow's own: replay them (webhook_replay), "
                    "or roll back that replay")
        return None

    def admit(self, settings: Settings, start: dt.date, today: dt.date) -> None:
        """A range PayNow no longer keeps history of is refused (``InvalidRequest``)."""
        # The key is the chunk function's alone (a secret): only the ids are checked here.
        if not settings.paynow_store_id or not settings.paynow_webhook_id:
            raise InvalidRequest("type", "webhook_recovery needs BACKFILL_PAYNOW_STORE_ID and "
                                 "BACKFILL_PAYNOW_WEBHOOK_ID (the store and the webhook "
                                 "subscription whose history it reads)")
        oldest = today - dt.timedelta(days=settings.paynow_retention_days - 1)
        if start < oldest:
            raise InvalidRequest(
                "startDate", f"PayNow keeps webhook history for "
                f"{settings.paynow_retention_days} days: the oldest day a recovery can read is "
                f"{oldest.isoformat()}; for older days, ask PayNow for an export, or recover "
                "orders from the orders list")

    def provider_problem(self, settings: Settings) -> str | None:
        """Why PayNow cannot be asked from this function (gaps with ``provider``), or None."""
        if not settings.paynow_store_id or not settings.paynow_webhook_id:
            return ("needs BACKFILL_PAYNOW_STORE_ID and BACKFILL_PAYNOW_WEBHOOK_ID (the store and "
                    "the webhook subscription whose history it reads)")
        if not settings.paynow_api_key_file and not settings.paynow_api_key.get_secret_value():
            return (f"this function has no PayNow API key (in production only the chunk "
                    f"function reads it); a {RECOVERY} dry run of the same days counts what "
                    "never arrived instead (its tallies)")
        return None

    def sent(self, settings: Settings, db: firestore.Client, window: Window,
             limit: int) -> tuple[dict[str, set[str]], bool]:
        """The event ids PayNow's history holds for each UTC day of ``window`` (at most
        ``limit`` events), and whether the window was read whole: gaps' "never arrived"."""
        reader = HistorySource(history_of(settings, db).history, window)
        by_day: dict[str, set[str]] = {}
        cursor: dict[str, Any] | None = None
        seen = 0
        while True:
            page = reader.page(cursor, 100)
            for event in page.events:
                if event.data.get("hasEventId"):
                    by_day.setdefault(event.received_at.date().isoformat(), set()).add(
                        event.event_id)
            seen += len(page.events)
            cursor = page.cursor or cursor
            if not page.more:
                return by_day, True
            if seen >= limit:
                return by_day, False

    def chunks(self, run: RunRecord, plans: PlanStore) -> list[PlannedChunk]:
        """One chunk over the whole range, uncounted: an API cannot count (see the module)."""
        window = span(run.start_date, run.end_date)
        return [PlannedChunk(CHUNK, window.start, window.end, None, run.max_events,
                             note="not counted: PayNow's history is read whole")]

    def source(self, db: firestore.Client, chunk: ChunkRecord, settings: Settings) -> PageSource:
        assert chunk.window_start is not None
        assert chunk.window_end is not None
        return HistorySource(history_of(settings, db).history,
                             Window(chunk.window_start, chunk.window_end))

    def size(self, plans: PlanStore, window: Window) -> int | None:
        return None

    def fetch(self, db: firestore.Client, ids: Sequence[str]) -> tuple[list[Event], list[str]]:
        raise TypeError("a recovery's failures are not retried (WebhookRecovery.refusal)")

    def lookups(self, events: Sequence[Event]) -> list[str]:
        return [f"{schema.EVENTS}/{event.event_id}" for event in events
                if event.data.get("hasEventId")]

    def plan(self, events: Sequence[Event], stored: Mapping[str, Stored],
             migration_id: str) -> PagePlan:
        plan = PagePlan()
        for event in events:
            result = self._plan_one(event, stored, migration_id, plan)
            plan.results.append(result)
        return plan

    def _plan_one(self, event: Event, stored: Mapping[str, Stored], migration_id: str,
                  plan: PagePlan) -> ItemResult:
        event_type = event.event_type
        if self.target is not None and self.target.event_types is not None \
                and event_type not in self.target.event_types:
            return ItemResult(event.event_id, event_type, Outcome.SKIPPED, outside=True)
        if not event.data.get("hasEventId") or not event.data.get("payload"):
            error = MalformedPayload(
                f"history item {event.data['historyId']} carries no webhook body with an "
                "event_id", hint="look the item up in PayNow's dashboard; it cannot be stored")
            return ItemResult(event.event_id, event_type, Outcome.ERROR, code=error.code,
                              message=error.message, hint=error.hint)
        path = f"{schema.EVENTS}/{event.event_id}"
        if path in plan.documents:
            return ItemResult(event.event_id, event_type, Outcome.DUPLICATE, repeat=True)
        present = stored[path].data
        if present is None:
            plan.documents[path] = stored_event(event, migration_id)
            plan.tally(event.received_at.date().isoformat(), event_type)
            return ItemResult(event.event_id, event_type, Outcome.APPLIED)
        if present.get("payload") != event.data["payload"]:
            plan.findings.append(Finding(
                PAYLOAD_CONFLICT, path, f"event {event.event_id} is stored with a payload that "
                "differs from PayNow's copy; it was left as it is",
                hint="compare the two (PayNow's dashboard) before replaying it",
                event_id=event.event_id, event_type=event_type))
            return ItemResult(event.event_id, event_type, Outcome.SKIPPED,
                              code=PAYLOAD_CONFLICT, message="payload differs from PayNow's")
        return ItemResult(event.event_id, event_type, Outcome.DUPLICATE)


BACKFILLS.register(WebhookRecovery())
