"""The preflight through the status function on the Firestore emulator: each check passes,
warns or fails with what to do, it writes nothing, and with ``BACKFILL_REQUIRE_PREFLIGHT`` a
live run whose preflight fails is refused unless forced."""

from __future__ import annotations

from typing import Any

from functions_framework import create_app

from shared.adapters import schema
from tests import data
from tests.functions.conftest import SOURCE, Harness

QUERY = "/api/admin/preflight?type=webhook_replay&startDate=2025-01-01&endDate=2025-01-03"


def checks(answer: Any) -> dict[str, dict[str, str]]:
    assert answer.status_code == 200, answer.get_json()
    return {check["check"]: check for check in answer.get_json()["checks"]}


def test_the_preflight_names_unknown_products_estimates_and_writes_nothing(
        harness: Harness) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(30, days=3),
             *(data.purchase(f"gone{n}", f"ogone{n}", data.at(2, n), lines=[("retired", 1)])
               for n in range(4)))
    before = data.ledger_state(harness.db), data.documents(harness.db, schema.EVENTS)

    stranger = harness.status.get(QUERY, headers=harness.headers("viewer@example.com"))
    harness.configure(viewers=("viewer@example.com",))  # viewers may read it
    answer = harness.status.get(QUERY, headers=harness.headers("viewer@example.com"))
    found = checks(answer)

    assert stranger.status_code == 403
    assert answer.get_json()["result"] == "warn"
    assert found["switch"]["status"] == found["queue"]["status"] == "pass"
    assert found["products"]["status"] == "warn"
    assert "retired (4)" in found["products"]["detail"]
    assert "product_not_found" in found["products"]["detail"]
    assert "34 events in about 3 chunks" in found["estimate"]["detail"]
    # The emulator has no Admin API: said, not passed.
    assert found["pitr"]["status"] == found["indexes"]["status"] == "warn"
    assert "not checked" in found["pitr"]["detail"]
    assert found["alerting"]["status"] == "warn"
    assert all(check["action"] for check in found.values() if check["status"] != "pass")
    assert (data.ledger_state(harness.db), data.documents(harness.db, schema.EVENTS)) == before
    assert not list(harness.db.collection(schema.RUNS).stream())


def test_a_paused_queue_or_the_switch_off_fails_it_and_a_required_preflight_refuses_the_run(
        harness: Harness) -> None:
    control = create_app("backfill_control", SOURCE).test_client()
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(6, days=3))
    harness.configure(require_preflight=True)
    harness.dispatcher.state = "PAUSED"
    body = {"type": "webhook_replay", "startDate": "2025-01-01", "endDate": "2025-01-03"}

    paused = checks(harness.status.get(QUERY, headers=harness.headers()))
    refused = harness.start(**body)
    dry = harness.start(**body, dryRun=True)  # a dry run needs no preflight
    forced = harness.start(**body, force=True)

    assert paused["queue"]["status"] == "fail" and "PAUSED" in paused["queue"]["detail"]
    assert "gcloud tasks queues resume" in paused["queue"]["action"]
    assert refused.status_code == 409
    assert "the preflight failed" in refused.get_json()["message"]
    assert "queue:" in refused.get_json()["message"]
    assert (dry.status_code, forced.status_code) == (202, 202)

    harness.dispatcher.state = "RUNNING"
    control.post("/api/admin/switch", json={"enabled": False, "reason": "INC-7"},
                 headers=harness.headers())
    off = checks(harness.status.get(QUERY, headers=harness.headers()))
    assert off["switch"]["status"] == "fail" and "INC-7" in off["switch"]["detail"]


def test_a_bad_preflight_query_answers_400_naming_the_field(harness: Harness) -> None:
    for query, field in (("type=nope&startDate=2025-01-01&endDate=2025-01-02", "type"),
                         ("type=webhook_replay&startDate=2025-1-1&endDate=2025-01-02",
                          "startDate"),
                         ("type=webhook_replay&startDate=2025-01-03&endDate=2025-01-02",
                          "endDate"),
                         ("type=webhook_replay&startDate=2024-01-01&endDate=2025-06-01",
                          "endDate")):
        answer = harness.status.get(f"/api/admin/preflight?{query}", headers=harness.headers())
        assert (answer.status_code, answer.get_json()["field"]) == (400, field), query
