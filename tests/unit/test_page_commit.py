"""The page commit's steps on fakes: ``plan`` reads only through the delivery's sink, and what a
page's commit writes to its chunk (``checkpoint``) and whether it is the chunk's last
(``is_final``) are decided without Firestore. The write itself is the functions tier's."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import pytest
from google.cloud import firestore

from shared.adapters.stores import Stores
from shared.backfills.base import Event, Finding, ItemResult, Page, PagePlan, Stored
from shared.backfills.registry import BACKFILLS
from shared.config import Settings
from shared.domain.records import RunRecord
from shared.executor.commit import PAGE_MESSAGE, PageCommit, Planned, checkpoint, is_final
from shared.executor.context import Context
from shared.models import ChunkState, Outcome, RunStatus
from tests.fakes import memory_stores

NOW = dt.datetime(2025, 1, 5, tzinfo=dt.UTC)
SETTINGS = Settings.model_validate({
    "env": "local", "project_id": "demo", "chunk_url": "http://127.0.0.1:1/tasks/chunk",
    "operator_audiences": "http://127.0.0.1:1", "tasks_identity": "tasks@demo.example"})


class FakeSink:
    """Documents by path; records what was read."""

    creates_if_absent = False

    def __init__(self, documents: Mapping[str, dict[str, Any]]) -> None:
        self.documents = dict(documents)
        self.reads: list[list[str]] = []

    def read(self, paths: list[str]) -> dict[str, Stored]:
        self.reads.append(list(paths))
        return {path: Stored(self.documents.get(path)) for path in paths}

    def write(self, batch: firestore.WriteBatch, plan: PagePlan,
              stored: dict[str, Stored]) -> None:
        raise AssertionError("planning writes nothing")

    def flag(self, batch: firestore.WriteBatch, results: Iterable[ItemResult],
             already: set[str]) -> None:
        raise AssertionError("planning writes nothing")

    def customer_ledger(self, customer_id: str) -> tuple[dict[str, Stored], Stored]:
        raise AssertionError("not an audit")


class Debit:
    """Takes each item's ``points`` off its customer's wallet; needs the item's own document."""

    name = "debit"
    error_codes: tuple[str, ...] = ()
    page_size = None
    waits_for: tuple[str, ...] = ()
    options: frozenset[str] = frozenset()
    event_types: tuple[str, ...] = ()
    flags_events = True

    def lookups(self, events: Sequence[Event]) -> list[str]:
        return [f"items/{event.event_id}" for event in events]

    def plan(self, events: Sequence[Event], stored: Mapping[str, Stored],
             migration_id: str) -> PagePlan:
        plan = PagePlan()
        for event in events:
            assert stored[f"items/{event.event_id}"].data is not None  # read before planning
            plan.credit(event.data["customer"], -event.data["points"])
            plan.results.append(ItemResult(event.event_id, "debit", Outcome.APPLIED,
                                           points=-event.data["points"],
                                           repeat=event.data.get("repeat", False)))
        return plan


def context(sink: FakeSink, stores: Stores | None = None) -> Context:
    run = RunRecord.model_validate({
        "id": "run_1", "type": "debit", "status": RunStatus.RUNNING, "start_date": NOW.date(),
        "end_date": NOW.date(), "chunk_days": 1, "chunk_count": 1, "requested_by": "ops",
        "created_at": NOW})
    return Context(SETTINGS, cast(Any, None), stores or memory_stores()[0], run, "2025-01-05",
                   cast(Any, Debit()), sink, lambda: NOW, lambda: 0.0)


def item(item_id: str, customer: str = "c1", points: int = 5, **more: Any) -> Event:
    return Event(item_id, {"customer": customer, "points": points, **more})


def test_planning_reads_through_the_sink_only_and_reports_items_gone_and_wallets_below_zero(
        ) -> None:
    sink = FakeSink({"items/a": {}, "items/b": {}, "wallets/c1": {"balance": 7},
                     "wallets/c2": {"balance": 100}})
    page = Page([item("a", "c1", 5), item("b", "c2", 5, processed=True),
                 item("a2", "c1", 5)], {"after": "a2"}, 4, more=True, missing=["gone"])
    sink.documents["items/a2"] = {}

    planned = PageCommit(context(sink)).plan(page)

    assert [r.event_id for r in planned.plan.results] == ["a", "b", "a2", "gone"]
    assert planned.plan.results[-1].code == "event_missing"
    assert planned.plan.wallet_deltas == {"c1": -10, "c2": -5}
    assert planned.below_zero == ["c1"]  # 7 - 10; c2 stays above zero
    assert planned.already == {"b"}
    assert sink.reads == [["items/a", "items/b", "items/a2"], ["wallets/c1", "wallets/c2"]]


@pytest.mark.parametrize(("more", "limit", "left", "final"), [
    (False, 10, None, True),   # the source says it was the last
    (True, 10, None, False),   # more to come
    (True, 10, 10, True),      # the chunk's quota ends with it
    (True, 10, 11, False),
    (True, 0, None, True),     # nothing left to take
])
def test_a_page_is_the_last_when_its_source_or_its_quota_says_so(
        more: bool, limit: int, left: int | None, final: bool) -> None:
    page = Page([item("a")] * 10 if limit else [], {"after": "a"}, limit, more=more)
    assert is_final(page, limit, left) is final


def increments(update: Mapping[str, Any]) -> dict[str, int]:
    """The update's increments, but the zeros it writes to hold every error code."""
    return {key: value.value for key, value in update.items()
            if isinstance(value, firestore.Increment)
            and (value.value or not key.startswith("errorCodes."))}


def test_a_checkpoint_counts_each_item_once_pulled_ones_where_applied() -> None:
    plan = PagePlan(results=[
        ItemResult("a", "t", Outcome.APPLIED, points=5),
        ItemResult("b", "t", Outcome.APPLIED, points=3, repeat=True),  # applied earlier
        ItemResult("c", "t", Outcome.ERROR, code="x"),
        ItemResult("d", "t", Outcome.SKIPPED, outside=True),
        ItemResult("p", "t", Outcome.APPLIED, points=2)])  # pulled in from another page
    planned = Planned(plan, [item("p")], {}, set(), ["c9"])
    page = Page([item(i) for i in "abcd"], {"after": "d"}, 4, more=True)

    update = checkpoint(SETTINGS, page, planned, final=False, clears_suspect=False)
    last = checkpoint(SETTINGS, page, planned, final=True, clears_suspect=True)

    assert increments(update) == {"pages": 1, "read": 4, "counters.taken": 4,
                                  "counters.points": 10, "counters.applied": 2,
                                  "counters.errors": 1, "counters.outside": 1,
                                  # What the status reads instead of every chunk.
                                  "errorCodes.x": 1}
    assert update["cursor"] == {"after": "d"}
    assert "state" not in update and "suspect" not in update
    assert (last["state"], last["leaseOwner"], last["suspect"]) == (
        ChunkState.COMPLETED.value, None, None)
    assert isinstance(last["belowZero"], firestore.ArrayUnion)
    assert update["notable"] is True  # a wallet below zero: the status reads the chunk whole


def test_a_checkpoint_counts_each_record_it_writes_by_code_and_marks_a_tallying_chunk() -> None:
    plan = PagePlan(results=[ItemResult("a", "t", Outcome.ERROR, code="x"),
                             ItemResult("b", "t", Outcome.ERROR, code="x"),
                             ItemResult("c", "t", Outcome.ERROR, code="y")],
                    findings=[Finding("z", "wallets/c1", "drift")])
    plan.tally("2025-01-01", "t")
    page = Page([item(i) for i in "abc"], {"after": "c"}, 3, more=True)

    update = checkpoint(SETTINGS, page, Planned(plan, [], {}, set(), []), final=False,
                        clears_suspect=False)

    assert {key: value for key, value in increments(update).items()
            if not key.startswith(("counters.", "pages", "read", "tallies."))} == {
        "errorCodes.x": 2, "errorCodes.y": 1, "errorCodes.z": 1}
    assert update["notable"] is True
    # Every registered code, 0 or more: a chunk holds all of them or none (one aggregation).
    assert {key for key in update if key.startswith("errorCodes.")} >= {
        f"errorCodes.{code}" for code in BACKFILLS.error_codes()}


def test_account_logs_the_page_line_and_answers_what_it_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    plan = PagePlan(results=[ItemResult("a", "t", Outcome.APPLIED),
                             ItemResult("c", "t", Outcome.ERROR, code="x")])
    page = Page([item("a"), item("c")], None, 2, more=False)
    caplog.set_level(logging.INFO)

    committed = PageCommit(context(FakeSink({}))).account(
        page, Planned(plan, [], {}, set(), []), True, 0.0)

    assert (committed.read, committed.final, committed.errors) == (2, True, 1)
    messages = [record.getMessage() for record in caplog.records]
    assert PAGE_MESSAGE in messages and "event failed" in messages
