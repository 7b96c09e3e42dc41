"""Webhook replay through the functions: trigger, chunk tasks delivered by hand, status."""

from __future__ import annotations

from typing import Any

import pytest

from shared.adapters import schema
from tests import data
from tests.functions.conftest import Harness

RANGE: dict[str, Any] = {"type": "webhook_replay", "startDate": "2025-01-01",
                         "endDate": "2025-01-03"}


def seed_mixed(harness: Harness) -> None:
    db = harness.db
    data.product(db, "p1", 10)
    data.product(db, "p2", 3)
    data.put(db, *data.purchases(90, days=3))
    data.put(db,
             data.purchase("unknown", "o-unknown", data.at(2, 5), lines=[("retired", 1)]),
             data.event("malformed", "ON_ORDER_COMPLETED", data.at(2, 6), {"id": "o-bad"}),
             data.event("other", "ON_CUSTOMER_UPDATED", data.at(3, 1), {"id": "x"}),
             data.purchase("redelivered", "oe00001", data.at(3, 2)))
    # The live path credited this order but died before flagging its event.
    db.collection(schema.LEDGER).document("purchase_oe00002").set({
        "customerId": "c2", "type": "purchase", "points": 30, "orderId": "oe00002",
        "sourceEventId": "e00002", "source": "webhook", "migrationId": None, "orderTotal": 1000,
        "refundedAmount": 0, "reversedPoints": 0})
    db.collection(schema.WALLETS).document("c2").set({"balance": 30})


def test_a_replay_credits_each_order_once_and_explains_every_failure(harness: Harness) -> None:
    seed_mixed(harness)

    migration_id = harness.start(**RANGE).get_json()["migrationId"]
    harness.deliver_all(twice=True)

    run = harness.run(migration_id)
    assert run["status"] == "completed"
    assert (run["total"], run["taken"], run["percent"]) == (94, 94, 100.0)
    assert (run["applied"], run["duplicates"], run["skipped"], run["errors"]) == (89, 2, 1, 2)
    assert run["processed"] == 91
    assert {(e["eventId"], e["code"]) for e in run["firstErrors"]} == {
        ("unknown", "product_not_found"), ("malformed", "malformed_payload")}
    assert [e["message"] for e in run["firstErrors"] if e["eventId"] == "unknown"] == [
        "Product not found: retired"]
    assert set(data.credited_orders(harness.db).values()) == {1}
    assert len(data.credited_orders(harness.db)) == 90
    data.assert_ledger_consistent(harness.db)
    events = data.documents(harness.db, schema.EVENTS)
    assert not events["unknown"]["processed"] and not events["malformed"]["processed"]
    assert not events["other"]["processed"]
    assert events["redelivered"]["processed"] and events["e00002"]["processed"]
    assert events["e00002"]["backfillOutcome"] == "duplicate"


def test_rerunning_a_finished_replay_changes_nothing(harness: Harness) -> None:
    seed_mixed(harness)
    harness.start(**RANGE)
    harness.deliver_all()
    before = data.ledger_state(harness.db)

    again = harness.start(**RANGE).get_json()
    harness.deliver_all()

    run = harness.run(again["migrationId"])
    assert run["status"] == "completed"
    assert (run["total"], run["applied"], run["errors"], run["skipped"]) == (3, 0, 2, 1)
    assert data.ledger_state(harness.db) == before


def test_a_dry_run_reports_without_writing_ledger_or_wallets(harness: Harness) -> None:
    seed_mixed(harness)
    before = data.ledger_state(harness.db)

    migration_id = harness.start(**RANGE, dryRun=True).get_json()["migrationId"]
    harness.deliver_all()

    run = harness.run(migration_id)
    assert run["dryRun"] is True
    assert run["status"] == "completed"
    assert (run["applied"], run["duplicates"], run["skipped"], run["errors"]) == (89, 2, 1, 2)
    assert data.ledger_state(harness.db) == before
    events = data.documents(harness.db, schema.EVENTS)
    assert all(e["dryRunProcessed"] for e in events.values())
    assert not any(e["processed"] for e in events.values())


def test_a_dry_run_estimates_how_long_its_live_run_takes_and_a_live_run_does_not(
        harness: Harness) -> None:
    # No ramp; one chunk applies 10 events a second (and takes up to 600: no split); the
    # queue runs two chunks at once.
    harness.configure(ramp_start_writes=0, chunk_events_per_second=10, chunk_goal_seconds=60,
                      queue_concurrency=2)
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(60, days=3), *data.purchases(30, days=1, prefix="x"))

    dry = harness.start(**RANGE, dryRun=True).get_json()["migrationId"]
    harness.deliver_all()

    estimate = harness.run(dry)["liveEstimate"]
    # Chunks of 50, 20 and 20 events, two at a time at 10 events/s: 90 / 20 = 4.5 s, but the
    # day of 50 takes 5 s alone.
    assert (estimate["events"], estimate["chunks"], estimate["concurrency"]) == (90, 3, 2)
    assert (estimate["seconds"], estimate["boundBy"]) == (5.0, "largest chunk")
    assert (estimate["chunkEventsPerSecond"], estimate["ceiling"]) == (10, None)
    live = harness.start(**RANGE, dryRun=False).get_json()["migrationId"]
    harness.deliver_all()
    assert "liveEstimate" not in harness.run(live)


def test_max_events_takes_the_oldest_and_says_what_is_left(harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(60, days=3))

    started = harness.start(**RANGE, maxEvents=25).get_json()
    harness.deliver_all(twice=True)

    run = harness.run(started["migrationId"])
    assert (run["total"], run["applied"], run["leftForLaterRun"]) == (25, 25, 35)
    assert "left for a later run" in run["note"]
    processed = [e for e in data.documents(harness.db, schema.EVENTS).values() if e["processed"]]
    unprocessed = [e for e in data.documents(harness.db, schema.EVENTS).values()
                   if not e["processed"]]
    assert len(processed) == 25
    assert max(e["receivedAt"] for e in processed) < min(e["receivedAt"] for e in unprocessed)


def test_a_chunk_out_of_time_continues_from_its_cursor_in_a_new_task(harness: Harness) -> None:
    harness.configure(time_budget_seconds=0.001, page_size=7)
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(30, days=1))

    migration_id = harness.start(**{**RANGE, "endDate": "2025-01-01"}).get_json()["migrationId"]
    deliveries = harness.deliver_all(twice=True)

    chunk = schema.chunk_ref(harness.db, migration_id, "2025-01-01").get().to_dict()
    assert chunk is not None
    assert chunk["segment"] == 4  # pages of 7, 7, 7, 7, 2: one page per segment
    assert deliveries == 12  # the planning task and five segments, each delivered twice
    assert harness.run(migration_id)["applied"] == 30
    data.assert_ledger_consistent(harness.db)


def test_a_page_past_the_commit_byte_budget_is_split_and_applied_once(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # A budget of a few kilobytes stands for Firestore's request limit: pages halve until
    # their writes fit, and every event is still credited exactly once.
    monkeypatch.setattr(schema, "MAX_COMMIT_BYTES", 4000)
    harness.configure(page_size=30, time_budget_seconds=60)
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(30, days=1))

    migration_id = harness.start(**{**RANGE, "endDate": "2025-01-01"}).get_json()["migrationId"]
    harness.deliver_all(twice=True)

    chunk = schema.chunk_ref(harness.db, migration_id, "2025-01-01").get().to_dict()
    assert chunk is not None
    assert chunk["pages"] > 2  # no page of 30 purchases (or of 15) fits in 4,000 bytes
    run = harness.run(migration_id)
    assert (run["status"], run["applied"], run["errors"]) == ("completed", 30, 0)
    data.assert_ledger_consistent(harness.db)


def test_the_chunk_handler_accepts_only_the_tasks_identity(harness: Harness) -> None:
    body = b'{"migrationId": "webhook_replay_1", "chunkId": "2025-01-01", "segment": 0}'
    audience = harness.settings.effective_chunk_audience

    operator = harness.chunk.post("/", data=body, headers=harness.headers(audience=audience))
    anonymous = harness.chunk.post("/", data=body)
    wrong_audience = harness.chunk.post("/", data=body, headers=harness.headers(
        harness.settings.tasks_identity))

    assert (operator.status_code, anonymous.status_code, wrong_audience.status_code) == (
        403, 401, 401)


@pytest.mark.parametrize(("body", "field"), [
    (b'{"chunkId": 5}', "migrationId"),
    (b'{"migrationId": "a/b", "chunkId": "2025-01-01"}', "migrationId"),
    (b'{"migrationId": "webhook_replay_1", "chunkId": "."}', "chunkId"),
    (b'{"migrationId": "webhook_replay_1", "chunkId": ".."}', "chunkId"),
    (b'{"migrationId": "__x__", "chunkId": "2025-01-01"}', "migrationId"),
    (b'{"migrationId": "webhook_replay_1", "chunkId": "__plan__"}', "chunkId"),
    (b'{"migrationId": "webhook_replay_1", "chunkId": "d", "segment": -1}', "segment"),
    (b'{"kind": "chunk", "migrationId": "webhook_replay_1"}', "chunkId"),
    (b'{"kind": "plan", "migrationId": "webhook_replay_1", "chunkId": "d"}', "chunkId"),
    (b'{"kind": "nap", "migrationId": "webhook_replay_1"}', "kind"),
    (b'{"kind": "chunk", "migrationId": "webhook_replay_1", "chunkId": "d", "segment": true}',
     "segment"),
    (b"[" * 100_000 + b"]" * 100_000, "body"),
    (b"not json", "body"),
])
def test_a_task_no_retry_can_mend_is_dropped_with_a_2xx_and_changes_nothing(
        harness: Harness, body: bytes, field: str) -> None:
    headers = harness.headers(harness.settings.tasks_identity,
                              harness.settings.effective_chunk_audience)

    response = harness.chunk.post("/", data=body, headers=headers,
                                  content_type="application/json")

    # Cloud Tasks retries every answer outside 2xx, 4xx included: 200 is what drops it.
    assert response.status_code == 200
    assert response.get_json()["result"] == "dropped"
    assert response.get_json()["field"] == field
    assert not list(harness.db.collection(schema.RUNS).limit(1).stream())
    assert not harness.dispatcher.queued


@pytest.mark.parametrize("path", [
    "/api/admin/dataMigrations/__x__", "/api/admin/dataMigrations/%5F%5Fx%5F%5F",
    "/api/admin/dataMigrations/__x__/errors", "/api/admin/dataMigrations/a.b",
    "/api/admin/dataMigrations/%2E%2E",
])
def test_run_ids_firestore_reserves_answer_400_naming_the_run_id(
        harness: Harness, path: str) -> None:
    response = harness.status.get(path, headers=harness.headers())

    assert response.status_code == 400
    assert response.get_json()["field"] == "migrationId"


@pytest.mark.parametrize("query", ["limit=%C2%B2", "limit=%D9%A3", "limit=-1", "limit=1e3",
                                   "limit=99999999999"])
def test_a_limit_that_is_not_an_ascii_whole_number_answers_400(
        harness: Harness, query: str) -> None:
    response = harness.status.get(f"/api/admin/dataMigrations?{query}",
                                  headers=harness.headers())

    assert response.status_code == 400
    assert response.get_json()["field"] == "limit"


def test_an_order_whose_points_overflow_64_bits_is_malformed_at_once(harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, data.purchase("huge", "o-huge", data.at(1), lines=[("p1", 2**62)]),
             data.purchase("fine", "o-fine", data.at(1, 1)))
    migration_id = harness.start(**RANGE).get_json()["migrationId"]

    deliveries = harness.deliver_all()

    run = harness.run(migration_id)
    assert deliveries == 2  # planning, then the one chunk with events: no retry
    assert (run["status"], run["applied"], run["errors"]) == ("completed", 1, 1)
    [error] = run["firstErrors"]
    assert (error["eventId"], error["code"], error["attempts"]) == (
        "huge", "malformed_payload", 1)
    assert "exceed" in error["message"]
    data.assert_ledger_consistent(harness.db)


def test_include_processed_repairs_purchases_flagged_processed_without_their_entry(
        harness: Harness) -> None:
    db = harness.db
    data.product(db, "p1", 10)
    data.put(db, data.purchase("lost", "o-lost", data.at(1), processed=True),
             data.purchase("kept", "o-kept", data.at(1, 1), processed=True),
             data.purchase("new", "o-new", data.at(2)),
             data.event("other", "ON_CUSTOMER_UPDATED", data.at(2, 1), {"id": "x"}, True))
    # The live path applied "kept" fully; for "lost" it flagged the event but the entry is gone.
    db.collection(schema.LEDGER).document("purchase_o-kept").set({
        "customerId": "c1", "type": "purchase", "points": 10, "orderId": "o-kept",
        "sourceEventId": "kept", "source": "webhook", "migrationId": None, "orderTotal": 1000,
        "refundedAmount": 0, "reversedPoints": 0})
    db.collection(schema.WALLETS).document("c1").set({"balance": 10})
    plain_id = harness.start(**RANGE).get_json()["migrationId"]
    harness.deliver_all()
    plain = harness.run(plain_id)
    kept_before = data.documents(db, schema.EVENTS)["kept"]

    repair_id = harness.start(**RANGE, includeProcessed=True).get_json()["migrationId"]
    harness.deliver_all()

    repair = harness.run(repair_id)
    assert (plain["applied"], plain["total"]) == (1, 1)  # a plain replay cannot see the gap
    assert (repair["status"], repair["includeProcessed"]) == ("completed", True)
    assert (repair["total"], repair["applied"], repair["duplicates"], repair["errors"]) == (
        3, 1, 2, 0)
    assert set(data.credited_orders(db)) == {"o-lost", "o-kept", "o-new"}
    assert data.assert_ledger_consistent(db) == {"c1": 30}
    events = data.documents(db, schema.EVENTS)
    assert events["lost"]["backfillMigrationId"] == repair_id
    assert events["kept"] == kept_before  # a duplicate of a processed event is not rewritten


def test_include_processed_is_for_webhook_replay_only(harness: Harness) -> None:
    response = harness.start(**{**RANGE, "type": "reversal_backfill"}, includeProcessed=True)

    assert response.status_code == 400
    assert response.get_json()["field"] == "includeProcessed"


def test_status_lists_runs_newest_first_and_404s_unknown_ones(harness: Harness) -> None:
    first = harness.start(**RANGE).get_json()["migrationId"]
    second = harness.start(**{**RANGE, "type": "reversal_backfill"}).get_json()["migrationId"]

    listed = harness.status.get("/api/admin/dataMigrations", headers=harness.headers())
    only_replays = harness.status.get("/api/admin/dataMigrations?type=webhook_replay",
                                      headers=harness.headers())
    missing = harness.status.get("/api/admin/dataMigrations/webhook_replay_1",
                                 headers=harness.headers())
    bad_filter = harness.status.get("/api/admin/dataMigrations?status=done",
                                    headers=harness.headers())
    intruder = harness.status.get("/api/admin/dataMigrations",
                                  headers=harness.headers("intruder@example.com"))

    assert [run["migrationId"] for run in listed.get_json()["runs"]] == [second, first]
    assert [run["migrationId"] for run in only_replays.get_json()["runs"]] == [first]
    assert missing.status_code == 404
    assert (bad_filter.status_code, bad_filter.get_json()["field"]) == (400, "status")
    assert intruder.status_code == 403


def test_status_shows_a_run_with_its_chunks(harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(6, days=2))
    migration_id = harness.start(**RANGE, maxEvents=100).get_json()["migrationId"]

    pending = harness.run(migration_id)
    harness.deliver_all()
    done = harness.run(migration_id)

    for key in ("migrationId", "type", "status", "dryRun", "startDate", "endDate", "maxEvents",
                "total", "processed", "skipped", "errors", "createdAt", "startedAt",
                "finishedAt"):
        assert key in done
    assert (pending["status"], pending["startedAt"], pending["processed"]) == ("pending", None, 0)
    assert (done["status"], done["processed"], done["maxEvents"]) == ("completed", 6, 100)
    assert done["startedAt"] is not None and done["finishedAt"] is not None
    assert [(c["chunkId"], c["state"], c["applied"]) for c in done["chunks"]] == [
        ("2025-01-01", "completed", 3), ("2025-01-02", "completed", 3),
        ("2025-01-03", "completed", 0)]


@pytest.mark.parametrize(("query", "field"), [
    ("chunksFrom=abc", "chunksFrom"), ("chunksFrom=-1", "chunksFrom"),
    ("chunksFrom=%D9%A3", "chunksFrom"), ("chunksPerPage=0", "chunksPerPage"),
    ("chunksPerPage=1001", "chunksPerPage"), ("chunksPerPage=1e3", "chunksPerPage")])
def test_a_chunk_page_out_of_range_answers_400_naming_the_field(
        harness: Harness, query: str, field: str) -> None:
    migration_id = harness.start(**RANGE).get_json()["migrationId"]

    for accept in ("application/json", "text/html"):
        response = harness.status.get(f"/api/admin/dataMigrations/{migration_id}?{query}",
                                      headers={**harness.headers(), "Accept": accept})
        assert response.status_code == 400
        assert response.get_json()["field"] == field


def test_a_busy_day_is_planned_as_several_chunks_and_each_event_is_applied_once(
        harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    # 120 purchases within a morning of day 1, 6 on day 2: with a bound of 25 events per
    # chunk, day 1 becomes several chunks, day 2 stays one.
    busy = [data.purchase(f"b{n:04}", f"ob{n:04}", data.at(1, 360 + n), f"c{n % 9}",
                          [("p1", 1)]) for n in range(120)]
    quiet = [data.purchase(f"q{n}", f"oq{n}", data.at(2, 60 * n), "c1", [("p1", 1)])
             for n in range(6)]
    data.put(harness.db, *busy, *quiet)
    harness.configure(split_events=25)

    migration_id = harness.start(**RANGE, maxEvents=110).get_json()["migrationId"]
    harness.deliver_all(twice=True)

    run = harness.run(migration_id)
    ids = [chunk["chunkId"] for chunk in run["chunks"]]
    assert run["status"] == "completed"
    assert ids == sorted(ids) and ids[0] == "2025-01-01" and "2025-01-02" in ids
    day_one = [chunk for chunk in run["chunks"] if chunk["chunkId"].startswith("2025-01-01")]
    assert len(day_one) >= 120 // 25
    assert all(chunk["eligible"] <= 25 for chunk in run["chunks"])
    assert sum(chunk["eligible"] for chunk in run["chunks"]) == 126
    # maxEvents, oldest first: the 110 oldest of day 1's busy morning.
    assert (run["total"], run["applied"]) == (110, 110)
    assert set(data.credited_orders(harness.db)) == {f"ob{n:04}" for n in range(110)}
    assert set(data.credited_orders(harness.db).values()) == {1}
    data.assert_ledger_consistent(harness.db)
