"""The committed OpenAPI document (``docs/openapi.json``) is what the code generates: a change of
a request body or an answer shows up in the document, or this fails (``make openapi``)."""

from __future__ import annotations

import json

from shared.api import openapi
from tests.conftest import ROOT


def test_the_committed_document_is_the_generated_one() -> None:
    committed = (ROOT / "docs" / "openapi.json").read_text()

    assert committed == openapi.rendered(), "docs/openapi.json is stale: run `make openapi`"


def test_every_public_operation_documents_its_answers_and_refusals() -> None:
    document = json.loads(openapi.rendered())
    operations = {(path, method): operation for path, item in document["paths"].items()
                  for method, operation in item.items()}

    assert document["openapi"] == "3.1.0"
    assert ("/api/jobs/backfill", "post") in operations
    assert {path.rsplit("/", 1)[-1] for path, _ in operations if "{migrationId}/" in path} == {
        "errors", "pause", "resume", "cancel", "retry", "rollback", "throttle", "approve"}
    for (path, _), operation in operations.items():
        assert {"401", "403"} <= set(operation["responses"]), path
    trigger = document["components"]["schemas"]["TriggerBody"]
    assert set(trigger["properties"]["type"]["enum"]) == {
        "webhook_replay", "reversal_backfill", "ledger_verify", "webhook_recovery"}
    assert trigger["additionalProperties"] is False
