"""Least privilege through the functions: viewers (``BACKFILL_VIEWERS``) read runs, errors, gaps
and the page, and are refused every write with 403 and nothing written."""

from __future__ import annotations

from typing import Any

import pytest
from functions_framework import create_app

from shared.adapters import schema
from tests import data
from tests.functions.conftest import SOURCE, Harness

VIEWER = "viewer@example.com"
RANGE = {"type": "webhook_replay", "startDate": "2025-01-01", "endDate": "2025-01-01"}


@pytest.fixture
def control(harness: Harness) -> Any:
    return create_app("backfill_control", SOURCE).test_client()


def test_a_viewer_reads_everything_and_is_refused_every_write(harness: Harness,
                                                              control: Any) -> None:
    harness.configure(viewers=(VIEWER,))
    data.product(harness.db, "p1", 10)
    data.put(harness.db, *data.purchases(3, days=1))
    migration_id = harness.start(**RANGE).get_json()["migrationId"]
    harness.deliver_all()
    before = data.ledger_state(harness.db)
    runs = [doc.id for doc in harness.db.collection(schema.RUNS).stream()]
    viewer = harness.headers(VIEWER)

    reads = [harness.status.get(path, headers=viewer) for path in (
        "/api/admin/dataMigrations", f"/api/admin/dataMigrations/{migration_id}",
        f"/api/admin/dataMigrations/{migration_id}/errors",
        "/api/admin/gaps?startDate=2025-01-01&endDate=2025-01-01", "/api/openapi.json")]
    page = harness.status.get("/api/admin/dataMigrations", headers={**viewer,
                                                                   "Accept": "text/html"})
    writes = [harness.trigger.post("/", json={**RANGE, "dryRun": False}, headers=viewer),
              harness.sweep.post("/", json={}, headers=viewer),
              *(control.post(f"/api/admin/dataMigrations/{migration_id}/{action}", json={},
                             headers=viewer)
                for action in ("pause", "resume", "cancel", "retry", "rollback", "throttle"))]

    assert [read.status_code for read in reads] == [200] * 5
    assert page.status_code == 200 and b"<table" in page.data
    # The page's banner names where it is: environment, project, database.
    banner = page.get_data(as_text=True).split('id="deployment"', 1)[1].split("</p>", 1)[0]
    assert "local" in banner and harness.settings.project_id in banner and "(default)" in banner
    assert [write.status_code for write in writes] == [403] * len(writes)
    assert all(write.get_json()["error"] == "forbidden" for write in writes)
    assert data.ledger_state(harness.db) == before
    assert [doc.id for doc in harness.db.collection(schema.RUNS).stream()] == runs
    # An operator passes the same door: the run's status, not the caller, refuses this pause.
    assert control.post(f"/api/admin/dataMigrations/{migration_id}/pause", json={},
                        headers=harness.headers()).status_code == 409
