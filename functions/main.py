"""HTTP entry points of the backfill bundle: authenticate, parse, call ``shared``, map errors.

- ``backfill_trigger``  POST  /api/jobs/backfill                        operators, Cloud Scheduler
- ``backfill_status``   GET   /api/admin/dataMigrations[/{id}[/errors]] operators
                              (a page for a browser: Accept text/html)
                        GET   /api/admin/gaps?startDate&endDate       operators
                        GET   /api/openapi.json (this API, OpenAPI 3.1)   operators
- ``backfill_control``  POST  /api/admin/dataMigrations/{id}/{action}   operators
                              (action: pause, resume, cancel, retry,
                               throttle, rollback)
- ``backfill_sweep``    POST  /api/jobs/sweep                           Cloud Scheduler, operators
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

from shared import clock, logs
from shared.adapters.cloud_tasks import ChunkTask
from shared.adapters.gap_scans import FirestoreGaps
from shared.adapters.oidc import Caller, authenticate
from shared.api import openapi, status_page
from shared.api.bodies import (
    ControlRequest,
    RetryRequest,
    RollbackRequest,
    ThrottleRequest,
    parse_json,
    parse_request,
)
from shared.config import Settings
from shared.errors import (
    TRANSIENT,
    BackfillDisabled,
    BackfillError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
)
from shared.executor.runner import Delivery
from shared.models import document_id_problem
from shared.runs import control, gaps, launcher, progress, reports, watchdog
from shared.wiring import Services, check_configuration, services

logger = logging.getLogger("backfill.functions")

# Refuse to start, rather than fail the first request, when the configuration is unsafe.
check_configuration()

# A path segment that may name a run; ``_run_id`` then refuses the ids Firestore reserves.
_ID = r"([^/]{1,1500})"
_RUN_PATH = re.compile(rf"^(?:/api/admin/dataMigrations)?/{_ID}/?$")
_ERRORS_PATH = re.compile(rf"^(?:/api/admin/dataMigrations)?/{_ID}/errors/?$")
_LIST_PATH = re.compile(r"^(?:/api/admin/dataMigrations)?/?$")
_GAPS_PATH = re.compile(r"^(?:/api/admin)?/gaps/?$")
_ACTION_PATH = re.compile(
    rf"^(?:/api/admin/dataMigrations)?/{_ID}/(pause|resume|cancel|retry|throttle|rollback)/?$")
# Run and chunk ids are the bundle's own: {type}_{epoch ms}, a UTC day, plan, watch, retry.
_BUNDLE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")
_LIMIT = re.compile(r"[0-9]{1,6}")  # ASCII digits only: str.isdigit() also takes "²"

Answer = tuple[dict[str, Any], int] | flask.Response


def _answer(handler: Callable[[flask.Request], Answer], request: flask.Request) -> flask.Response:
    try:
        answer = handler(request)
        if isinstance(answer, flask.Response):
            return answer
        body, status = answer
    except BackfillError as error:
        body, status = error.body(), error.status
        if error.retryable:
            # A 503 the bundle answers for a failure beneath it: name that failure (by type
            # and code, never its text, which may quote document paths or payload values).
            logs.log(logger, "a request failed; retry", logging.WARNING, code=error.code,
                     **logs.error_fields(error))
    except TRANSIENT as error:
        # Firestore or Cloud Tasks did not answer, or pushed back: a retry can cure it (and a
        # chunk task is retried by Cloud Tasks on a 503).
        logs.log(logger, "a Google service did not answer; retry", logging.WARNING,
                 code=type(error).__name__, **logs.error_fields(error))
        body, status = {"error": "unavailable", "message": f"Firestore or Cloud Tasks did not "
                        f"answer ({type(error).__name__}); retry"}, 503
    except Exception as error:
        logger.exception("unexpected failure", extra={"json_fields": {
            "component": "backfill", **logs.error_fields(error)}})
        body, status = {"error": "internal", "message": "unexpected failure; see the logs"}, 500
    return flask.Response(json.dumps(body), status=status, mimetype="application/json")


# Each endpoint's accepted token audiences and allowed identities.
Admission = Callable[[Settings], tuple[Collection[str], Collection[str]]]
_TRIGGER_CALL: Admission = lambda s: (s.operator_audiences, s.trigger_identities)  # noqa: E731
_STATUS_CALL: Admission = lambda s: (s.operator_audiences, s.status_identities)  # noqa: E731
_CONTROL_CALL: Admission = lambda s: (s.operator_audiences, s.control_identities)  # noqa: E731
_SWEEP_CALL: Admission = lambda s: (s.operator_audiences, s.trigger_identities)  # noqa: E731
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
                             clock.now().date())
    started = launcher.start_run(backfill, caller, settings, svc.stores, svc.dispatcher,
                                 scheduled_for=_schedule_time(request))
    return _started(settings, started)


def _started(settings: Settings, started: launcher.StartedRun) -> tuple[dict[str, Any], int]:
    body: dict[str, Any] = {
        "migrationId": started.migration_id,
        "status": started.status.value,
        "statusUrl": f"{settings.status_url.rstrip('/')}/{started.migration_id}",
        "chunks": started.chunks,
        "startDate": started.start_date,
        "endDate": started.end_date,
    }
    notes: list[str] = []
    if started.requested_end_date:
        body["requestedEndDate"] = started.requested_end_date
        notes.append(f"endDate {started.requested_end_date} is past the end of its month; "
                     f"the run ends with {started.end_date}, the month's last day")
    if started.waiting_for:
        body["waitingFor"] = list(started.waiting_for)
        waiting = ", ".join(started.waiting_for)
        notes.append(f"waiting for {waiting}, active over these dates: this run is planned "
                     "once it has ended, so the refunds find the purchases it applies")
    if notes:
        body["note"] = "; ".join(notes)
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
    if request.path.rstrip("/") in (openapi.OPENAPI_PATH, "/openapi.json"):
        return openapi.document(), 200
    if _GAPS_PATH.match(request.path):
        first, last = gaps.parse_range(request.args.get("startDate"),
                                       request.args.get("endDate"), clock.now().date())
        return gaps.find_gaps(FirestoreGaps(svc.db), first, last,
                              svc.settings.enqueue_workers), 200
    html = status_page.wants_html(request.accept_mimetypes)
    if match := _ERRORS_PATH.match(request.path):
        return _errors(svc, _run_id(match.group(1)), request)
    if match := _RUN_PATH.match(request.path):
        described = _describe(svc, _run_id(match.group(1)))
        if html:
            path = request.path.rstrip("/")
            return _page(status_page.run_page(described, path, path.rsplit("/", 1)[0] or "/"))
        return described, 200
    if _LIST_PATH.match(request.path):
        limit = request.args.get("limit", "20")
        if not _LIMIT.fullmatch(limit):
            raise InvalidRequest("limit", "must be a whole number (ASCII digits)")
        kind, status = request.args.get("type"), request.args.get("status")
        if html:
            overview = progress.overview(svc.stores, int(limit), kind, status,
                                         settings=svc.settings)
            return _page(status_page.runs_page(overview, request.path.rstrip("/")))
        return {"runs": progress.list_runs(svc.stores, int(limit), kind, status)}, 200
    raise NotFound("no such resource")


def _page(html: str) -> flask.Response:
    """A status page: no script may run, nothing may be framed, sniffed or cached."""
    return flask.Response(html, status=200, mimetype="text/html", headers={
        "Content-Security-Policy": status_page.CSP, "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def _describe(svc: Services, migration_id: str) -> dict[str, Any]:
    """One run's status. A stalled run is re-armed on the way (its lost chunks picked up, its
    watchdog enqueued again), so looking at a stuck run is enough to get it going."""
    body = progress.describe_run(svc.settings, svc.stores, migration_id)
    if body.get("stalled") and svc.settings.enabled:
        body["recovery"] = watchdog.rescue(svc.settings, svc.stores, svc.dispatcher,
                                           migration_id)
    return body


def _errors(svc: Services, migration_id: str, request: flask.Request) -> Answer:
    """The run's failed events: CSV (default) or JSON (``?format=json``), ``?code=`` filters."""
    output = request.args.get("format", "csv")
    if output not in ("csv", "json"):
        raise InvalidRequest("format", "must be csv or json")
    rows = reports.error_rows(svc.stores, migration_id, request.args.get("code"))
    if output == "json":
        listed = list(rows)
        return {"migrationId": migration_id, "count": len(listed), "errors": listed}, 200
    return flask.Response(reports.as_csv(rows), status=200, mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{migration_id}-errors.csv"'})


@functions_framework.http
def backfill_control(request: flask.Request) -> flask.Response:
    """Steer a run: pause, resume, cancel, throttle, retry its failed events in a new run, or
    roll back what it wrote in a new run."""
    return _answer(_control, request)


def _control(request: flask.Request) -> tuple[dict[str, Any], int]:
    svc, caller = _admit(request, "POST", _CONTROL_CALL)
    match = _ACTION_PATH.match(request.path)
    if match is None:
        raise NotFound("no such action: POST .../dataMigrations/{migrationId}/"
                       "{pause|resume|cancel|retry|throttle|rollback}")
    migration_id, action = _run_id(match.group(1)), match.group(2)
    raw = request.get_data(cache=False)
    settings = svc.settings
    if action == "retry":
        retry = parse_json(raw, RetryRequest)
        if not settings.enabled:
            raise BackfillDisabled("backfills are switched off (BACKFILL_ENABLED=false); "
                                   "nothing was started")
        started = launcher.start_retry(migration_id, caller, settings, svc.stores,
                                       svc.dispatcher, retry.code, retry.dry_run, retry.force)
        body, status = _started(settings, started)
        return {**body, "retryOf": started.retry_of}, status
    if action == "rollback":
        undo = parse_json(raw, RollbackRequest)
        if not settings.enabled:
            raise BackfillDisabled("backfills are switched off (BACKFILL_ENABLED=false); "
                                   "nothing was started")
        started = launcher.start_rollback(migration_id, caller, settings, svc.stores,
                                          svc.dispatcher, undo.dry_run, undo.force)
        body, status = _started(settings, started)
        return {**body, "rollbackOf": started.rollback_of, "dryRun": undo.dry_run}, status
    if action == "throttle":
        limit = parse_json(raw, ThrottleRequest)
        return control.throttle(settings, svc.stores, migration_id, caller.email,
                                limit.max_events_per_second, limit.reason), 200
    note = parse_json(raw, ControlRequest).reason
    if action == "pause":
        steered = control.pause(settings, svc.stores, migration_id, caller.email, note)
    elif action == "cancel":
        steered = control.cancel(settings, svc.stores, migration_id, caller.email, note)
    else:
        steered = control.resume(settings, svc.stores, svc.dispatcher, migration_id,
                                 caller.email, note)
    logs.log(logger, "run control", migration_id=migration_id, action=action,
             status=steered.status, previous=steered.previous, chunks=steered.chunks,
             caller=caller.email)
    return steered.body(), 200


@functions_framework.http
def backfill_sweep(request: flask.Request) -> flask.Response:
    """The durable safety net (Cloud Scheduler, every few minutes): a watchdog round for every
    active run, which picks up lost chunks and re-arms the run's watchdog."""
    return _answer(_sweep, request)


def _sweep(request: flask.Request) -> tuple[dict[str, Any], int]:
    svc, _ = _admit(request, "POST", _SWEEP_CALL)
    if not svc.settings.enabled:
        # The kill switch: pause every active run, as their next deliveries would.
        paused = {run.migration_id: control.kill_switch(svc.settings, svc.stores,
                                                        run.migration_id)
                  for run in svc.stores.runs.active()}
        return watchdog.Swept(paused, 0).body(), 200
    return watchdog.sweep(svc.settings, svc.stores, svc.dispatcher).body(), 200


@functions_framework.http
def backfill_chunk(request: flask.Request) -> flask.Response:
    """Process one chunk task. 2xx when the work is done, handed on or failed for good; a
    retryable status only when a retry can help."""
    return _answer(_chunk, request)


def _chunk(request: flask.Request) -> tuple[dict[str, Any], int]:
    svc, _ = _admit(request, "POST", _TASK_CALL)
    try:
        task = _parse_task(request)
    except InvalidRequest as error:
        # Cloud Tasks retries every answer outside 2xx, 4xx included, and no retry can mend
        # this body: answer 2xx so the queue drops the task, and say why in the log.
        logs.log(logger, "chunk task dropped", logging.ERROR, field=error.field,
                 reason=error.reason)
        return {"result": "dropped", "error": error.code, "field": error.field,
                "reason": error.reason}, 200
    retries = request.headers.get("X-CloudTasks-TaskRetryCount", "0")
    delivery = Delivery(task, int(retries) if _LIMIT.fullmatch(retries) else 0)
    report = svc.tasks.route(delivery)
    logs.log(logger, "chunk task answered", migration_id=task.migration_id,
             chunk_id=task.chunk_id, segment=task.segment, status=report.result,
             event_count=report.events, attempt=delivery.retry_count + 1)
    return {"result": report.result, "pages": report.pages, "events": report.events,
            "detail": report.detail}, 200


def _parse_task(request: flask.Request) -> ChunkTask:
    """A chunk task's body; ``InvalidRequest`` names the field no retry can mend."""
    try:
        body = json.loads(request.get_data(cache=False) or b"null")
    except (ValueError, RecursionError):
        body = None  # RecursionError: nested deeper than the parser goes
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object")
    migration_id, chunk_id, segment = (body.get("migrationId"), body.get("chunkId"),
                                       body.get("segment", 0))
    for field, value in (("migrationId", migration_id), ("chunkId", chunk_id)):
        if not isinstance(value, str):
            raise InvalidRequest(field, "must be a string")
        _check_id(field, value)
    if not isinstance(segment, int) or isinstance(segment, bool) or not 0 <= segment < 2**63:
        raise InvalidRequest("segment", "must be a whole number >= 0")
    return ChunkTask(str(migration_id), str(chunk_id), segment)


def _run_id(value: str) -> str:
    """A run id from a path, or ``InvalidRequest`` naming ``migrationId`` and why."""
    return _check_id("migrationId", value)


def _check_id(field: str, value: str) -> str:
    if not _BUNDLE_ID.fullmatch(value):
        raise InvalidRequest(field, "must be 1-200 letters, digits, '_' or '-' "
                                    "(a run id looks like webhook_replay_1704844800000)")
    if problem := document_id_problem(value):
        raise InvalidRequest(field, problem)
    return value
