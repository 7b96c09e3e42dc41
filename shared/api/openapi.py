"""The OpenAPI 3.1 document of the bundle's public HTTP API, generated from the pydantic models
of its request bodies (``shared.api.bodies``) and answers (``shared.api.answers``,
``shared.domain.records``).

Served by the status function at ``GET /api/openapi.json`` and committed as
``docs/openapi.json`` (``make openapi`` writes it; ``tests/unit/test_openapi.py`` fails when the
two differ). Each function has its own URL in production, so the paths are the runbook's: on
the local gateway they all live on one host. The chunk handler is Cloud Tasks' target, not a
public endpoint, and is left out.

``python -m shared.api.openapi`` prints the document.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel

from shared.api import answers, bodies
from shared.backfills.registry import BACKFILLS
from shared.models import EventType, RunStatus
from shared.runs.progress import DEFAULT_CHUNKS_PER_PAGE, MAX_CHUNKS_PER_PAGE

OPENAPI_PATH = "/api/openapi.json"
_JSON = "application/json"
_HTML = {"text/html": {"schema": {"type": "string"}}}


class _Schemas:
    """The document's ``components.schemas``, filled as operations refer to models."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, model: type[BaseModel], mode: str = "serialization") -> dict[str, Any]:
        name = model.__name__.lstrip("_")
        if name not in self.components:
            schema = model.model_json_schema(by_alias=True, mode=mode,  # type: ignore[arg-type]
                                             ref_template="#/components/schemas/{model}")
            for sub, definition in schema.pop("$defs", {}).items():
                self.components.setdefault(sub, definition)
            self.components[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}


def document() -> dict[str, Any]:
    """The whole document, deterministic (so the committed copy can be compared)."""
    schemas = _Schemas()
    trigger = schemas.ref(bodies._TriggerBody, "validation")
    _narrow_trigger(schemas.components["TriggerBody"])
    refusals = _refusals(schemas)
    paths: dict[str, Any] = {
        "/api/jobs/backfill": {"post": _operation(
            "startRun", "Start a run (the trigger)", refusals, body=trigger, answers={
                "202": ("the run is recorded and its planning queued",
                        schemas.ref(answers.StartedAnswer)),
                "200": ("a twin firing of one Cloud Scheduler schedule time: the run it "
                        "started already", schemas.ref(answers.StartedAnswer))},
            refused=("400", "401", "403", "405", "409", "429", "503"))},
        "/api/admin/dataMigrations": {"get": _operation(
            "listRuns", "Recent runs, newest first", refusals, parameters=[
                _query("limit", {"type": "string", "pattern": "^[0-9]{1,6}$"},
                       "how many (1-200, default 20)"),
                _query("type", {"type": "string"}, "only runs of this type"),
                _query("status", {"type": "string", "enum": [s.value for s in RunStatus]},
                       "only runs of this status")],
            answers={"200": ("the runs (a page for Accept: text/html)",
                             schemas.ref(answers.RunList), _HTML)},
            refused=("400", "401", "403", "405"))},
        "/api/admin/dataMigrations/{migrationId}": {"get": _operation(
            "getRun", "One run: counts, progress, a page of its chunks, first errors",
            refusals, parameters=[
                _run_id(),
                _query("chunksFrom", {"type": "string", "pattern": "^[0-9]{1,9}$"},
                       "the page's first chunk, by planning index (default 0): the answer's "
                       "nextChunks and previousChunks name the pages around it"),
                _query("chunksPerPage", {"type": "string", "pattern": "^[0-9]{1,9}$"},
                       f"chunks in the page (1-{MAX_CHUNKS_PER_PAGE}, default "
                       f"{DEFAULT_CHUNKS_PER_PAGE}); chunkStates counts them all")],
            answers={"200": ("the run's status (a page for Accept: text/html)",
                             schemas.ref(answers.RunAnswer), _HTML)},
            refused=("400", "401", "403", "404", "405"))},
        "/api/admin/dataMigrations/{migrationId}/errors": {"get": _operation(
            "getRunErrors", "The run's failed events (a verify's findings): CSV or JSON",
            refusals, parameters=[
                _run_id(), _query("format", {"type": "string", "enum": ["csv", "json"]},
                                  "csv (default) or json"),
                _query("code", {"type": "string", "pattern": "^[a-z_]{1,64}$"},
                       "only this error code")],
            answers={"200": ("the report", {"oneOf": [schemas.ref(answers.ErrorReport)]},
                             {"text/csv": {"schema": {"type": "string"}}})},
            refused=("400", "401", "403", "404", "405"))},
        "/api/admin/gaps": {"get": _operation(
            "getGaps", "Per day: what a backfill of the range would find to do", refusals,
            parameters=[
                _query("startDate", {"type": "string", "format": "date"}, "first UTC day",
                       required=True),
                _query("endDate", {"type": "string", "format": "date"},
                       "last UTC day (at most 31 days)", required=True),
                _query("provider", {"type": "string", "enum": ["true", "false"]},
                       "also ask PayNow's webhook history what never arrived (API calls)")],
            answers={"200": ("the gaps", schemas.ref(answers.GapsAnswer))},
            refused=("400", "401", "403", "405"))},
        "/api/admin/preflight": {"get": _operation(
            "getPreflight", "What to know before a live run: switch, queue, PITR, indexes, "
            "alerting, unknown products, an estimate", refusals, parameters=[
                _query("type", {"type": "string", "enum": list(BACKFILLS.triggered())},
                       "the run's type", required=True),
                _query("startDate", {"type": "string", "format": "date"}, "first UTC day",
                       required=True),
                _query("endDate", {"type": "string", "format": "date"}, "last UTC day",
                       required=True)],
            answers={"200": ("the checks", schemas.ref(answers.PreflightAnswer))},
            refused=("400", "401", "403", "405"))},
        "/api/admin/trace": {"get": _operation(
            "getTrace", "What happened to one customer, order or event: its events, entries, "
            "wallet and every run that touched them, in time order", refusals, parameters=[
                _query("customerId", {"type": "string"}, "a customer (or orderId, or eventId)"),
                _query("orderId", {"type": "string"}, "an order"),
                _query("eventId", {"type": "string"}, "a webhook event")],
            answers={"200": ("the trace", schemas.ref(answers.TraceAnswer))},
            refused=("400", "401", "403", "404", "405"))},
        "/api/jobs/sweep": {"post": _operation(
            "sweep", "A watchdog round for every active run (Cloud Scheduler)", refusals,
            answers={"200": ("what it did", schemas.ref(answers.SweepAnswer))},
            refused=("401", "403", "405"))},
        OPENAPI_PATH: {"get": _operation(
            "getOpenApi", "This document", refusals,
            answers={"200": ("the OpenAPI document", {"type": "object"})},
            refused=("401", "403", "405"))},
    }
    steer = {"pause": "Pause a pending or running run", "resume": "Resume a paused run "
             "(with raised guardrails, or force to lift them)", "cancel": "Cancel an active run",
             "approve": "Approve a run that awaits approval (an approver, not its starter)"}
    for action, summary in steer.items():
        body = bodies.ResumeRequest if action == "resume" else bodies.ControlRequest
        paths[f"/api/admin/dataMigrations/{{migrationId}}/{action}"] = {"post": _operation(
            f"{action}Run", summary, refusals, parameters=[_run_id()],
            body=schemas.ref(body, "validation"), optional_body=True,
            answers={"200": ("where the run stands", schemas.ref(answers.SteeredAnswer))},
            refused=("400", "401", "403", "404", "405", "409", "503"))}
        if action == "approve":
            continue  # one run at a time
        paths[f"/api/admin/dataMigrations/{action}"] = {"post": _operation(
            f"{action}Runs", f"{action.capitalize()} every active run of a filter (all, a type, "
            "dates)", refusals, body=schemas.ref(bodies.SteerAllRequest, "validation"),
            answers={"200": ("each matched run's outcome",
                             schemas.ref(answers.SteeredAllAnswer))},
            refused=("400", "401", "403", "405", "503"))}
    paths["/api/admin/switch"] = {
        "get": _operation("getSwitch", "The kill switch, and whether backfills run", refusals,
                          answers={"200": ("the switch", schemas.ref(answers.SwitchState))},
                          refused=("401", "403", "405")),
        "post": _operation("setSwitch", "Switch backfills off (every active run paused) or on",
                           refusals, body=schemas.ref(bodies.SwitchRequest, "validation"),
                           answers={"200": ("the switch, and the runs it paused",
                                            schemas.ref(answers.SwitchAnswer))},
                           refused=("400", "401", "403", "405", "503"))}
    started = {"202": ("the new run", schemas.ref(answers.StartedAnswer))}
    paths["/api/admin/dataMigrations/{migrationId}/retry"] = {"post": _operation(
        "retryRun", "Start a run over the events that failed in an ended run", refusals,
        parameters=[_run_id()], body=schemas.ref(bodies.RetryRequest, "validation"),
        optional_body=True, answers=started,
        refused=("400", "401", "403", "404", "405", "409", "429", "503"))}
    paths["/api/admin/dataMigrations/{migrationId}/rollback"] = {"post": _operation(
        "rollbackRun", "Start a run that undoes what an ended run wrote (a dry run first)",
        refusals, parameters=[_run_id()], body=schemas.ref(bodies.RollbackRequest, "validation"),
        optional_body=True, answers=started,
        refused=("400", "401", "403", "404", "405", "409", "429", "503"))}
    paths["/api/admin/dataMigrations/{migrationId}/throttle"] = {"post": _operation(
        "throttleRun", "Set an active run's ceiling in events per second", refusals,
        parameters=[_run_id()], body=schemas.ref(bodies.ThrottleRequest, "validation"),
        answers={"200": ("the new ceiling", schemas.ref(answers.ThrottleAnswer))},
        refused=("400", "401", "403", "404", "405", "409"))}
    return {
        "openapi": "3.1.0",
        "info": {"title": "The backfill bundle", "version": "1",
                 "description": "Repairs a points ledger from stored payment webhooks. Each "
                                "function has its own URL in production (trigger, status, "
                                "control, sweep); the local gateway serves every path on one "
                                "host. Every call needs an OIDC ID token for the function's "
                                "URL of an allowed identity."},
        "servers": [{"url": "/"}],
        "security": [{"oidc": []}],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(schemas.components.items())),
                       "securitySchemes": {"oidc": {"type": "http", "scheme": "bearer",
                                                    "bearerFormat": "JWT"}}},
    }


def _narrow_trigger(schema: dict[str, Any]) -> None:
    """What pydantic cannot say of the trigger's body: the registered types and event types."""
    properties = schema["properties"]
    properties["type"] = {**properties["type"], "enum": list(BACKFILLS.triggered())}
    event_types = properties["eventTypes"]["anyOf"][0]
    event_types["items"] = {"type": "string", "enum": [kind.value for kind in EventType]}


def _refusals(schemas: _Schemas) -> dict[str, tuple[str, dict[str, Any]]]:
    plain = schemas.ref(answers.ErrorAnswer)
    conflict = schemas.ref(answers.ConflictAnswer)
    return {
        "400": ("a field is wrong; nothing was written: the first field and why, and all",
                schemas.ref(answers.InvalidAnswer)),
        "401": ("no valid OIDC token", plain),
        "403": ("a valid token of an identity not allowed here", plain),
        "404": ("no such run", plain),
        "405": ("another method is expected", plain),
        "409": ("the run's status does not allow it, or an active run is in the way",
                conflict),
        "429": ("BACKFILL_MAX_ACTIVE_RUNS runs are active", conflict),
        "503": ("backfills are switched off, or Firestore or Cloud Tasks did not answer "
                "(retry)", plain),
    }


def _operation(operation_id: str, summary: str,
               refusals: dict[str, tuple[str, dict[str, Any]]], *,
               answers: dict[str, tuple[Any, ...]], refused: tuple[str, ...],
               parameters: list[dict[str, Any]] | None = None,
               body: dict[str, Any] | None = None,
               optional_body: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, (description, schema, *more) in {**answers,
                                                 **{s: refusals[s] for s in refused}}.items():
        content = {_JSON: {"schema": schema}}
        for extra in more:
            content.update(extra)
        responses[status] = {"description": description, "content": content}
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary,
                                 "responses": dict(sorted(responses.items()))}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": not optional_body,
                                    "content": {_JSON: {"schema": body}}}
    return operation


def _query(name: str, schema: dict[str, Any], description: str,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


def _run_id() -> dict[str, Any]:
    return {"name": "migrationId", "in": "path", "required": True,
            "description": "a run id, {type}_{epoch milliseconds}",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,200}$"}}


def rendered() -> str:
    """The document as committed: indented, keys in order, one newline at the end."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(rendered())
