"""A third backfill type, added in this file alone: its definition registered by name is all it
takes for the trigger, planning, the executor and the status to run it like the built-in ones
(over HTTP, on the Firestore emulator)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared.adapters import schema
from shared.adapters.schema import in_window
from shared.backfills.apply import Book
from shared.backfills.base import Event, ItemResult, PagePlan
from shared.backfills.registry import BACKFILLS
from shared.backfills.rules import Rule, RuleBook
from shared.domain.chunking import Window
from shared.errors import ItemError
from shared.models import Outcome
from tests import data
from tests.functions.conftest import Harness


class MissingCustomer(ItemError):
    code = "audit_missing_customer"


def audit(event: Event, book: Book, plan: PagePlan, migration_id: str) -> ItemResult:
    """A customer update is seen, or fails when it names no customer; no ledger effect."""
    body = (event.data.get("payload") or {}).get("body") or {}
    if not isinstance(body.get("id"), str):
        raise MissingCustomer("Customer update without a customer id")
    return ItemResult(event.event_id, event.event_type, Outcome.SKIPPED, code="audited",
                      message="customer update seen")


class CustomerAudit(RuleBook):
    name = "customer_audit"
    error_codes = (MissingCustomer.code,)
    page_size = 5
    rules: ClassVar[Mapping[str, Rule]] = {"ON_CUSTOMER_UPDATED": audit}
    lookups_by_type: ClassVar[Mapping[str, Any]] = {}

    def selection(self, events: firestore.CollectionReference, window: Window) -> Any:
        return in_window(events.where(filter=FieldFilter("eventType", "==",
                                                          "ON_CUSTOMER_UPDATED")), window)


@pytest.fixture
def toy() -> Iterator[None]:
    BACKFILLS.register(CustomerAudit())
    yield
    BACKFILLS.unregister(CustomerAudit.name)


def test_a_type_registered_in_one_module_runs_through_the_functions(
        harness: Harness, toy: None) -> None:
    data.product(harness.db, "p1", 10)
    data.put(harness.db,
             *(data.event(f"u{n:02}", "ON_CUSTOMER_UPDATED", data.at(1, n), {"id": f"c{n}"})
               for n in range(12)),
             data.event("nameless", "ON_CUSTOMER_UPDATED", data.at(1, 30), {"name": "x"}),
             data.purchase("buy", "o1", data.at(1, 40)))
    before = data.ledger_state(harness.db)

    started = harness.start(type="customer_audit", startDate="2025-01-01",
                            endDate="2025-01-01")
    harness.deliver_all()

    run = harness.run(started.get_json()["migrationId"])
    assert started.status_code == 202
    assert (run["type"], run["status"]) == ("customer_audit", "completed")
    assert (run["total"], run["skipped"], run["errors"], run["applied"]) == (13, 12, 1, 0)
    assert run["errorCodes"] == {"audit_missing_customer": 1}
    assert run["chunks"][0]["pages"] == 3  # its own page size: 5, 5, 3
    assert data.ledger_state(harness.db) == before
    assert not data.documents(harness.db, schema.EVENTS)["buy"]["processed"]


def test_an_unregistered_type_is_refused_naming_the_types_there_are(harness: Harness) -> None:
    response = harness.start(type="customer_audit", startDate="2025-01-01",
                             endDate="2025-01-01")

    assert response.status_code == 400
    assert response.get_json()["field"] == "type"
    reason = response.get_json()["reason"]
    assert "webhook_replay" in reason and "reversal_backfill" in reason
    assert "customer_audit" not in reason
