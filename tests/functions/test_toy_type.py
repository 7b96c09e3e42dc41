"""A third backfill type, added in this file alone: its definition registered by name is all it
takes for the trigger, planning, the executor, run control and the status to run it like the
built-in ones (over HTTP, on the Firestore emulator).

It shares nothing with the ledger types: its source is not Firestore but an in-process catalog
that pages with "has more" and cannot count (so planning takes its window whole), and its effect
is not a ledger entry but a document of a collection of its own (``catalogCopies``), which a
dry run keeps in its shadow instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from functions_framework import create_app
from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from shared.adapters import schema
from shared.adapters.stores import PlanStore
from shared.backfills.base import Backfill, Event, ItemResult, Page, PagePlan, PageSource, Stored
from shared.backfills.registry import BACKFILLS
from shared.config import Settings
from shared.domain.chunking import Window
from shared.domain.records import ChunkRecord
from shared.errors import ItemError
from shared.models import Outcome
from tests import data
from tests.functions.conftest import SOURCE, Harness

COPIES = "catalogCopies"
NAME = "catalog_copy"


class NegativePrice(ItemError):
    code = "catalog_negative_price"


@dataclasses.dataclass
class Catalog:
    """A remote catalog as its API serves it: items listed after a cursor, a page at a time,
    with ``has_more``; no count. ``down_after`` makes it fail (a 503) after that many pages,
    as a provider going away mid-chunk."""

    items: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    pages_served: int = 0
    down_after: int | None = None

    def list(self, window: Window, after: str | None, limit: int) -> tuple[list[str], bool]:
        if self.down_after is not None and self.pages_served >= self.down_after:
            self.down_after = None  # back on the next try
            raise api_exceptions.ServiceUnavailable("the catalog is down")
        self.pages_served += 1
        ids = sorted(item_id for item_id, item in self.items.items()
                     if window.start <= item["at"] < window.end and (after is None
                                                                   or item_id > after))
        return ids[:limit], len(ids) > limit


CATALOG = Catalog()


class CatalogSource:
    def __init__(self, window: Window) -> None:
        self._window = window

    def page(self, cursor: Mapping[str, Any] | None, limit: int) -> Page:
        if limit <= 0:
            return Page.empty()
        ids, more = CATALOG.list(self._window, cursor["after"] if cursor else None, limit)
        items = [Event(item_id, dict(CATALOG.items[item_id])) for item_id in ids]
        return Page(items, {"after": ids[-1]} if ids else None, len(items), more=more)

    def cursor_after(self, event: Event) -> dict[str, Any]:
        return {"after": event.event_id}


class CatalogCopy:
    """Copies catalog items into ``catalogCopies`` (an item copied already is a duplicate); an
    item with a negative price fails."""

    name = NAME
    error_codes = (NegativePrice.code,)
    page_size = 4
    waits_for: tuple[str, ...] = ()
    options: frozenset[str] = frozenset()
    event_types: tuple[str, ...] = ()
    flags_events = False

    def variant(self, run: Mapping[str, Any]) -> Backfill:
        return self

    def refusal(self, action: str) -> str | None:
        return None

    def source(self, db: firestore.Client, chunk: ChunkRecord, settings: Settings) -> PageSource:
        assert chunk.window_start is not None and chunk.window_end is not None
        return CatalogSource(Window(chunk.window_start, chunk.window_end))

    def size(self, plans: PlanStore, window: Window) -> int | None:
        return None  # the catalog cannot count

    def fetch(self, db: firestore.Client, ids: Sequence[str]) -> tuple[list[Event], list[str]]:
        return ([Event(i, dict(CATALOG.items[i])) for i in ids if i in CATALOG.items],
                [i for i in ids if i not in CATALOG.items])

    def lookups(self, events: Sequence[Event]) -> list[str]:
        return [f"{COPIES}/{item.event_id}" for item in events]

    def plan(self, events: Sequence[Event], stored: Mapping[str, Stored],
             migration_id: str) -> PagePlan:
        plan = PagePlan()
        for item in events:
            if item.data["price"] < 0:
                error = NegativePrice(f"item {item.event_id} has a negative price")
                plan.results.append(ItemResult(item.event_id, "item", Outcome.ERROR,
                                               code=error.code, message=error.message))
                continue
            path = f"{COPIES}/{item.event_id}"
            if stored[path].data is not None:
                plan.results.append(ItemResult(item.event_id, "item", Outcome.DUPLICATE))
                continue  # stored already (an earlier run): created once, never again
            plan.documents[path] = {
                "name": item.data["name"], "price": item.data["price"], "copiedBy": migration_id}
            plan.results.append(ItemResult(item.event_id, "item", Outcome.APPLIED))
        return plan


@pytest.fixture
def catalog() -> Iterator[Catalog]:
    BACKFILLS.register(CatalogCopy())
    CATALOG.items = {f"i{n:02}": {"name": f"item {n}", "price": 100 + n,
                                  "at": data.at(1, n)} for n in range(10)}
    CATALOG.items["late"] = {"name": "next day", "price": 1, "at": data.at(2, 0)}
    CATALOG.pages_served, CATALOG.down_after = 0, None
    yield CATALOG
    BACKFILLS.unregister(NAME)


@pytest.fixture
def control(harness: Harness) -> Any:
    return create_app("backfill_control", SOURCE).test_client()


def start(harness: Harness, **more: Any) -> str:
    response = harness.start(type=NAME, startDate="2025-01-01", endDate="2025-01-01", **more)
    assert response.status_code == 202, response.get_json()
    migration_id: str = response.get_json()["migrationId"]
    return migration_id


def copies(harness: Harness) -> dict[str, dict[str, Any]]:
    return data.documents(harness.db, COPIES)


def test_a_live_run_stores_every_item_once_in_pages_its_source_says_are_the_last(
        harness: Harness, catalog: Catalog) -> None:
    migration_id = start(harness)
    harness.deliver_all(twice=True)  # every task delivered twice

    run = harness.run(migration_id)
    assert (run["type"], run["status"]) == (NAME, "completed")
    assert (run["applied"], run["errors"], run["total"]) == (10, 0, 10)
    assert sorted(copies(harness)) == [f"i{n:02}" for n in range(10)]
    assert {copy["copiedBy"] for copy in copies(harness).values()} == {migration_id}
    # 4, 4, 2: the source said the third was the last (no empty page read to find out), and
    # the second delivery of the chunk's task found it completed.
    assert run["chunks"][0]["pages"] == 3
    assert catalog.pages_served == 3
    assert data.documents(harness.db, schema.LEDGER) == {}


def test_a_second_run_finds_every_item_stored_and_writes_nothing_again(
        harness: Harness, catalog: Catalog) -> None:
    first = start(harness)
    harness.deliver_all()
    catalog.items["i03"]["name"] = "renamed since"
    second = start(harness, force=True)
    harness.deliver_all()

    run = harness.run(second)
    assert (run["status"], run["applied"], run["duplicates"]) == ("completed", 0, 10)
    assert {copy["copiedBy"] for copy in copies(harness).values()} == {first}
    assert copies(harness)["i03"]["name"] == "item 3"


def test_a_dry_run_stores_nothing_and_keeps_what_it_would_store_in_its_shadow(
        harness: Harness, catalog: Catalog) -> None:
    migration_id = start(harness, dryRun=True)
    harness.deliver_all()

    run = harness.run(migration_id)
    shadow = data.documents(harness.db, f"{schema.RUNS}/{migration_id}/{schema.SHADOW_DOCUMENTS}")
    assert (run["status"], run["dryRun"], run["applied"]) == ("completed", True, 10)
    assert copies(harness) == {}
    assert sorted(doc["path"] for doc in shadow.values()) == [
        f"{COPIES}/i{n:02}" for n in range(10)]
    assert shadow[schema.shadow_id(f"{COPIES}/i03")]["data"]["price"] == 103


def test_pause_and_resume_mid_run_store_every_item_once(
        harness: Harness, catalog: Catalog, control: Any) -> None:
    harness.configure(time_budget_seconds=0.001)  # a page per delivery
    migration_id = start(harness)
    harness.plan()
    harness.deliver(harness._due())  # the first page; its continuation is queued
    path = f"/api/admin/dataMigrations/{migration_id}"

    paused = control.post(f"{path}/pause", json={}, headers=harness.headers())
    harness.deliver_all()  # the continuation finds its chunk paused
    held = dict(copies(harness))
    resumed = control.post(f"{path}/resume", json={}, headers=harness.headers())
    harness.deliver_all()

    run = harness.run(migration_id)
    assert paused.status_code == 200 and resumed.status_code == 200
    assert sorted(held) == ["i00", "i01", "i02", "i03"]
    assert (run["status"], run["applied"]) == ("completed", 10)
    assert sorted(copies(harness)) == [f"i{n:02}" for n in range(10)]


def test_a_delivery_that_dies_mid_chunk_is_resumed_from_its_cursor(
        harness: Harness, catalog: Catalog) -> None:
    catalog.down_after = 1  # the first page lands; the second read fails
    migration_id = start(harness)
    harness.deliver_all()  # a 503, then Cloud Tasks' retry of the task

    run = harness.run(migration_id)
    assert (run["status"], run["applied"], run["total"]) == ("completed", 10, 10)
    assert run["chunks"][0]["pages"] == 3  # the page before the failure was not read again
    assert catalog.pages_served == 3
    assert sorted(copies(harness)) == [f"i{n:02}" for n in range(10)]


def test_a_retry_takes_exactly_the_failed_items_again_from_the_type_source(
        harness: Harness, catalog: Catalog, control: Any) -> None:
    catalog.items["i04"]["price"] = -1
    catalog.items["i07"]["price"] = -2
    failed = start(harness)
    harness.deliver_all()
    first = harness.run(failed)
    catalog.items["i04"]["price"] = 4  # the cause fixed (i07's is not)

    response = control.post(f"/api/admin/dataMigrations/{failed}/retry", json={},
                            headers=harness.headers())
    harness.deliver_all()

    retry = harness.run(response.get_json()["migrationId"])
    errors = data.documents(harness.db, f"{schema.RUNS}/{failed}/{schema.ERRORS}")
    assert (first["applied"], first["errors"]) == (8, 2)
    assert first["errorCodes"] == {NegativePrice.code: 2}
    assert response.status_code == 202, response.get_json()
    assert (retry["status"], retry["applied"], retry["errors"]) == ("completed", 1, 1)
    assert copies(harness)["i04"]["price"] == 4 and "i07" not in copies(harness)
    assert errors["i04"]["resolvedBy"] == retry["migrationId"]
    assert "resolvedBy" not in errors["i07"]


def test_an_unregistered_type_is_refused_naming_the_types_there_are(harness: Harness) -> None:
    response = harness.start(type=NAME, startDate="2025-01-01", endDate="2025-01-01")

    assert response.status_code == 400
    assert response.get_json()["field"] == "type"
    reason = response.get_json()["reason"]
    assert "webhook_replay" in reason and "reversal_backfill" in reason
    assert NAME not in reason
