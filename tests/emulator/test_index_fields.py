"""Every field the bundle writes whose values grow with time is either exempt from single-field
indexing (``infra/firestore.tf``, ``infra/firestore.indexes.json``) or needed by a query.

The run types are driven through the functions on the real Firestore emulator (the function
tests' harness: chunk tasks kept in memory and delivered by hand), on small data: a dry and a
live ``webhook_replay`` (throttled, paused and resumed while it runs), a
``reversal_backfill``, a retry of the replay's failed events, a ``ledger_verify`` with
``repair`` over a planted drift, a ``rollback`` of the reversals, and a dry and a live
``webhook_recovery`` against the local PayNow (which writes the shared rate limit). Then
every collection and subcollection is walked (``client.collections()``, each document's
``reference.collections()``) and each field written is looked at by its top-level name: a map
(``tallies.<day>.<type>``, ``cursor.receivedAt``) or an array (``statusHistory``) counts as
its field, as its keys are dynamic and an exemption of the field covers them all.

A field "grows with time" when any value of it, or any value nested in it, is a timestamp, a
number in the range of epoch seconds or milliseconds (10^9 to 10^13: a clock reading, such as
the rate limit's ``tat``), or a string holding an ISO date and time. Such a field fails the test
unless it is exempt, or queried (the static scan of ``tests/unit/test_indexes.py``), or part of
a declared composite index. And each exemption must be of such a field, and written by the runs.
Per-document counters (``pages``, ``attempts``, ``counters.*``) are not taken for clocks: their
values do not rise across the collection with time, so they make no hotspot.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from functions_framework import create_app
from google.cloud import firestore

from emulators import paynow as local_paynow
from shared import clock
from shared.adapters import schema
from shared.wiring import use
from tests import data
from tests.conftest import Mint
from tests.functions.conftest import SOURCE, Harness
from tests.unit.test_indexes import composite_fields, exempt_fields, is_queried, queried_fields

pytestmark = pytest.mark.emulator

Field = tuple[str, str]
LEDGER_RANGE = {"startDate": "2025-01-01", "endDate": "2025-01-03"}
PURCHASE_DAYS = {"startDate": "2025-01-01", "endDate": "2025-01-02"}
TODAY = clock.now().date()
RECOVERY_RANGE = {"startDate": (TODAY - dt.timedelta(days=3)).isoformat(),
                  "endDate": (TODAY - dt.timedelta(days=1)).isoformat()}
_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
# Timestamps that stay indexed, as queries need them (docs/indexes.md): the check must see
# them grow, and let them pass.
QUERIED_TIMES = {(schema.EVENTS, "receivedAt"), (schema.RUNS, "createdAt"),
                 (schema.CHUNKS, "updatedAt"), (schema.CHUNKS, "leaseUntil"),
                 (schema.ERRORS, "at")}


@pytest.fixture
def harness(stack_env: dict[str, str], clean: firestore.Client, mint: Mint) -> Iterator[Harness]:
    harness = Harness(stack_env, clean, mint)
    # As the recovery tests: a limit high enough not to slow the run, shared in Firestore.
    harness.configure(paynow_rate_per_second=500, paynow_burst=100)
    url = stack_env["BACKFILL_PAYNOW_API_URL"]
    local_paynow.reset(url)
    local_paynow.knobs(url, rate_per_second=500, burst=500)
    yield harness
    local_paynow.reset(url)
    use(None)


@pytest.fixture
def control(harness: Harness) -> Any:
    return create_app("backfill_control", SOURCE).test_client()


def grows(value: Any) -> bool:
    """Whether ``value`` (or anything nested in it) looks like a time (module docstring)."""
    if isinstance(value, dt.datetime):
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return 1e9 <= value < 1e13
    if isinstance(value, str):
        return bool(_ISO_TIME.match(value))
    if isinstance(value, dict):
        return any(grows(item) for item in value.values())
    if isinstance(value, list):
        return any(grows(item) for item in value)
    return False


def written_fields(db: firestore.Client) -> dict[Field, bool]:
    """Every (collection id, top-level field) stored anywhere, and whether any of its values
    grows with time."""
    found: dict[Field, bool] = defaultdict(bool)

    def visit(collection: Any) -> None:
        for snap in collection.stream():
            for name, value in (snap.to_dict() or {}).items():
                found[(collection.id, name)] |= grows(value)
        # Parents that hold no fields (never written themselves) still hold subcollections.
        for ref in collection.list_documents():
            for sub in ref.collections():
                visit(sub)

    for collection in db.collections():
        visit(collection)
    return dict(found)


def started(response: Any) -> str:
    assert response.status_code == 202, response.get_json()
    migration_id: str = response.get_json()["migrationId"]
    return migration_id


def finish(harness: Harness, response: Any) -> dict[str, Any]:
    migration_id = started(response)
    harness.deliver_all()
    run: dict[str, Any] = harness.run(migration_id)
    assert run["status"] == "completed", run
    return run


def act(harness: Harness, control: Any, migration_id: str, action: str,
        body: dict[str, Any] | None = None) -> Any:
    return control.post(f"/api/admin/dataMigrations/{migration_id}/{action}", json=body,
                        headers=harness.headers())


def seed(harness: Harness) -> None:
    """Purchases on days 1-2 (one of a product not in the catalogue yet), a refund and a
    chargeback on day 3, and in PayNow's history three recent purchases the receiver missed."""
    db = harness.db
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(16, days=2),
             data.purchase("gone1", "ogone1", data.at(1, 500), "c1", [("=gone", 1)]),
             data.refund("r1", "oe00000", data.at(3, 10), 500),
             data.refund("cb1", "oe00001", data.at(3, 11), 1000, kind="ON_CHARGEBACK"))
    recent = dt.datetime.combine(TODAY - dt.timedelta(days=2), dt.time(9), tzinfo=dt.UTC)
    env = harness.env
    local_paynow.seed(env["BACKFILL_PAYNOW_API_URL"], env["BACKFILL_PAYNOW_STORE_ID"],
                      env["BACKFILL_PAYNOW_WEBHOOK_ID"],
                      [data.history_item(data.purchase(f"h{n}", f"oh{n}",
                                                       recent + dt.timedelta(minutes=n)))
                       for n in range(3)])


def drive_every_run_type(harness: Harness, control: Any) -> None:
    db = harness.db
    finish(harness, harness.start(type="webhook_replay", dryRun=True, **LEDGER_RANGE))

    replay = started(harness.start(type="webhook_replay", maxEventsPerSecond=1000,
                                   **PURCHASE_DAYS))
    harness.plan()  # its chunks exist, their tasks queued: run control moves them
    for action, body in (("throttle", {"maxEventsPerSecond": 500}), ("pause", None),
                         ("resume", None)):
        answer = act(harness, control, replay, action, body)
        assert answer.status_code == 200, (action, answer.get_json())
    harness.deliver_all()
    assert harness.run(replay)["errors"] == 1  # the product not in the catalogue

    reversals = finish(harness, harness.start(type="reversal_backfill", **LEDGER_RANGE))
    assert reversals["applied"] == 2

    data.product(db, "=gone", 5)
    retry = act(harness, control, replay, "retry")
    assert retry.status_code == 202, retry.get_json()
    harness.deliver_all()
    assert harness.run(retry.get_json()["migrationId"])["applied"] == 1

    # A purchase entry lost after its credit: verify finds the drift and repairs it.
    db.collection(schema.LEDGER).document("purchase_oe00002").delete()
    verified = finish(harness, harness.start(type="ledger_verify", repair=True, **LEDGER_RANGE))
    assert verified["errorCodes"], verified

    rollback = act(harness, control, reversals["migrationId"], "rollback")
    assert finish(harness, rollback)["applied"] == 2

    finish(harness, harness.start(type="webhook_recovery", dryRun=True, **RECOVERY_RANGE))
    assert finish(harness, harness.start(type="webhook_recovery",
                                         **RECOVERY_RANGE))["applied"] == 3
    data.assert_ledger_consistent(db)


def test_every_field_written_that_grows_with_time_is_exempt_or_queried(
        harness: Harness, control: Any) -> None:
    seed(harness)
    drive_every_run_type(harness, control)

    written = written_fields(harness.db)
    exempt, queried, composite = exempt_fields(), queried_fields(), composite_fields()

    growing = sorted(field for field, grew in written.items() if grew)
    unexplained = [field for field in growing if field not in exempt
                   and not is_queried(field, queried) and field not in composite]
    assert unexplained == [], (
        "fields whose values grow with time, neither exempt from single-field indexing "
        "(infra/firestore.tf, infra/firestore.indexes.json) nor queried")
    assert set(growing) - exempt >= QUERIED_TIMES
    # Each exemption is of a field that grows with time, and the runs wrote every one.
    assert sorted(field for field in exempt & set(written) if not written[field]) == []
    assert sorted(exempt - set(written)) == []
