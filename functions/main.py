"""HTTP entry points of the backfill bundle: authenticate, parse, call ``shared``, map errors.

- ``backfill_trigger``  POST  /api/jobs/backfill                        operators, Cloud Scheduler
- ``backfill_status``   GET   /api/admin/dataMigrations[/{id}[/errors]] operators
- ``backfill_control``  POST  /api/admin/dataMigrations/{id}/{action}   operators
                              (action: pause, resume, cancel, retry)
- ``backfill_chunk``    POST  (the Cloud Tasks target)                  the tasks service account

Every answer is JSON, except the error report as CSV. A ``BackfillError`` answers its own status
and body; anything else is a bug: it is logged with its traceback and answers 500 with no
details.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Collection
from typing import Any

import flask
import functions_framework

from shared import control, logs, progress, reports, runs, store
from shared.auth import Caller, authenticate
from shared.chunks import Delivery
from shared.config import Settings
from shared.dispatch import ChunkTask
from shared.errors import (
    BackfillDisabled,
    BackfillError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
)
from shared.models import ControlRequest, RetryRequest, parse_json, parse_request
from shared.wiring import Services, services

logger = logging.getLogger("backfill.functions")

_RUN_PATH = re.compile(r"^(?:/api/admin/dataMigrations)?/([A-Za-z0-9_-]{1,200})/?$")
_ERRORS_PATH = re.compile(r"^(?:/api/admin/dataMigrations)?/([A-Za-z0-9_-]{1,200})/errors/?$")
_LIST_PATH = re.compile(r"^(?:/api/admin/dataMigrations)?/?$")
_ACTION_PATH = re.compile(
    r"^(?:/api/admin/dataMigrations)?/([A-Za-z0-9_-]{1,200})/(pause|resume|cancel|retry)/?$")

Answer = tuple[dict[str, Any], int] | flask.Response


def _answer(handler: Callable[[flask.Request], Answer], request: flask.Request) -> flask.Response:
    try:
        answer = handler(request)
        if isinstance(answer, flask.Response):
            return answer
        body, status = answer
    except BackfillError as error:
        body, status = error.body(), error.status
    except Exception:
        logger.exception("unexpected failure", extra={"json_fields": {"component": "backfill"}})
        body, status = {"error": "internal", "message": "unexpected failure; see the logs"}, 500
    return flask.Response(json.dumps(body), status=status, mimetype="application/json")


# Each endpoint's accepted token audiences and allowed identities.
Admission = Callable[[Settings], tuple[Collection[str], Collection[str]]]
_TRIGGER_CALL: Admission = lambda s: (s.operator_audiences, s.trigger_identities)  # noqa: E731
_STATUS_CALL: Admission = lambda s: (s.operator_audiences, s.status_identities)  # noqa: E731
_CONTROL_CALL: Admission = lambda s: (s.operator_audiences, s.control_identities)  # noqa: E731
_TASK_CALL: Admission = lambda s: ((s.effective_chunk_audience,), s.chunk_identities)  # noqa: E731


def _admit(request: flask.Request, method: str, admission: Admission) -> tuple[Services, Caller]:
    """Check the method, then the caller's token against the endpoint's admission."""
    svc = services()
    if request.method != method:
        raise MethodNotAllowed(f"use {method}")
    audiences, allowed = admission(svc.settings)
    caller = authenticate(request.headers.get("Authorization"), svc.settings, audiences, allowed)
    return svc, caller


@functions_framework.http
def backfill_trigger(request: flask.Request) -> flask.Response:
    """Start a run: 202 with its id and status URL; nothing written on any 4xx or 503."""
    return _answer(_trigger, request)


def _trigger(request: flask.Request) -> tuple[dict[str, Any], int]:
    svc, caller = _admit(request, "POST", _TRIGGER_CALL)
    settings = svc.settings
    if not settings.enabled:
        raise BackfillDisabled("backfills are switched off (BACKFILL_ENABLED=false); "
                               "nothing was started")
    backfill = parse_request(request.get_data(cache=False), settings.max_range_days,
                             dt.datetime.now(dt.UTC).date())
    started = runs.start_run(backfill, caller, settings, svc.db, svc.dispatcher,
                             scheduled_for=_schedule_time(request))
    return _started(settings, started)


def _started(settings: Settings, started: runs.StartedRun) -> tuple[dict[str, Any], int]:
    body: dict[str, Any] = {
        "migrationId": started.migration_id,
        "status": started.status.value,
        "statusUrl": f"{settings.status_url.rstrip('/')}/{started.migration_id}",
        "chunks": started.chunks,
    }
    if started.duplicate:
        body["duplicate"] = True
        body["message"] = "this schedule time started this run already; nothing new started"
        return body, 200
    return body, 202


def _schedule_time(request: flask.Request) -> dt.datetime | None:
    """Cloud Scheduler's schedule time of this firing (the same on its retries), if any."""
    value = request.headers.get("X-CloudScheduler-ScheduleTime")
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest("X-CloudScheduler-ScheduleTime",
                             "must be an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise InvalidRequest("X-CloudScheduler-ScheduleTime", "must carry a time zone")
    return parsed


@functions_framework.http
def backfill_status(request: flask.Request) -> flask.Response:
    """List recent runs, or show one run with per-chunk progress and its first errors."""
    return _answer(_status, request)


def _status(request: flask.Request) -> Answer:
    svc, _ = _admit(request, "GET", _STATUS_CALL)
    settings = svc.settings
    if match := _ERRORS_PATH.match(request.path):
        return _errors(svc, match.group(1), request)
    if match := _RUN_PATH.match(request.path):
        return progress.describe_run(svc.db, match.group(1), settings.first_errors_shown), 200
    if _LIST_PATH.match(request.path):
        limit = request.args.get("limit", "20")
        if not limit.isdigit():
            raise InvalidRequest("limit", "must be a whole number")
        listed = progress.list_runs(svc.db, int(limit), request.args.get("type"),
                                    request.args.get("status"))
        return {"runs": listed}, 200
    raise NotFound("no such resource")


def _errors(svc: Services, migration_id: str, request: flask.Request) -> Answer:
    """The run's failed events: CSV (default) or JSON (``?format=json``), ``?code=`` filters."""
    output = request.args.get("format", "csv")
    if output not in ("csv", "json"):
        raise InvalidRequest("format", "must be csv or json")
    rows = reports.error_rows(svc.db, migration_id, request.args.get("code"))
    if output == "json":
        listed = list(rows)
        return {"migrationId": migration_id, "count": len(listed), "errors": listed}, 200
    return flask.Response(reports.as_csv(rows), status=200, mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{migration_id}-errors.csv"'})


@functions_framework.http
def backfill_control(request: flask.Request) -> flask.Response:
    """Steer a run: pause, resume, cancel, or retry its failed events in a new run."""
    return _answer(_control, request)


def _control(request: flask.Request) -> tuple[dict[str, Any], int]:
    svc, caller = _admit(request, "POST", _CONTROL_CALL)
    match = _ACTION_PATH.match(request.path)
    if match is None:
        raise NotFound("no such action: POST .../dataMigrations/{migrationId}/"
                       "{pause|resume|cancel|retry}")
    migration_id, action = match.groups()
    raw = request.get_data(cache=False)
    settings, db = svc.settings, svc.db
    if action == "retry":
        retry = parse_json(raw, RetryRequest)
        if not settings.enabled:
            raise BackfillDisabled("backfills are switched off (BACKFILL_ENABLED=false); "
                                   "nothing was started")
        started = runs.start_retry(migration_id, caller, settings, db, svc.dispatcher,
                                   retry.code, retry.dry_run, retry.force)
        body, status = _started(settings, started)
        retry_of = store.run_ref(db, started.migration_id).get().get("retryOf")
        return {**body, "retryOf": retry_of}, status
    note = parse_json(raw, ControlRequest).reason
    if action == "pause":
        steered = control.pause(settings, db, migration_id, caller.email, note)
    elif action == "cancel":
        steered = control.cancel(settings, db, migration_id, caller.email, note)
    else:
        steered = control.resume(settings, db, svc.dispatcher, migration_id, caller.email, note)
    logs.log(logger, "run control", migration_id=migration_id, action=action,
             status=steered.status, previous=steered.previous, chunks=steered.chunks,
             caller=caller.email)
    return steered.body(), 200


@functions_framework.http
def backfill_chunk(request: flask.Request) -> flask.Response:
    """Process one chunk task. 2xx when the work is done, handed on or failed for good; a
    retryable status only when a retry can help."""
    return _answer(_chunk, request)


def _chunk(request: flask.Request) -> tuple[dict[str, Any], int]:
    svc, _ = _admit(request, "POST", _TASK_CALL)
    task = _parse_task(request)
    retries = request.headers.get("X-CloudTasks-TaskRetryCount", "0")
    delivery = Delivery(task, int(retries) if retries.isdigit() else 0)
    report = svc.chunks.run(delivery)
    logs.log(logger, "chunk task answered", migration_id=task.migration_id,
             chunk_id=task.chunk_id, segment=task.segment, status=report.result,
             event_count=report.events, attempt=delivery.retry_count + 1)
    return {"result": report.result, "pages": report.pages, "events": report.events,
            "detail": report.detail}, 200


def _parse_task(request: flask.Request) -> ChunkTask:
    try:
        body = json.loads(request.get_data(cache=False) or b"null")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object")
    migration_id, chunk_id, segment = (body.get("migrationId"), body.get("chunkId"),
                                       body.get("segment", 0))
    for field, value in (("migrationId", migration_id), ("chunkId", chunk_id)):
        if not isinstance(value, str) or not value:
            raise InvalidRequest(field, "must be a non-empty string")
    if not isinstance(segment, int) or isinstance(segment, bool) or segment < 0:
        raise InvalidRequest("segment", "must be a whole number >= 0")
    return ChunkTask(str(migration_id), str(chunk_id), segment)
