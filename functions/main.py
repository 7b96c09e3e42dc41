"""HTTP entry points of the backfill bundle: authenticate, parse, call ``shared``, map errors.

- ``backfill_trigger``  POST  /api/jobs/backfill                        operators, Cloud Scheduler
- ``backfill_status``   GET   /api/admin/dataMigrations[/{id}[/errors]] viewers, operators
                              (a page for a browser: Accept text/html)
                        GET   /api/admin/gaps?startDate&endDate[&provider] viewers, operators
                        GET   /api/admin/switch (the kill switch)          viewers, operators
                        GET   /api/admin/preflight?type&startDate&endDate  viewers, operators
                        GET   /api/admin/trace?customerId|orderId|eventId  viewers, operators
                              (a page for a browser)
                        GET   /api/openapi.json (this API, OpenAPI 3.1)   viewers, operators
- ``backfill_control``  POST  /api/admin/dataMigrations/{id}/{action}   operators
                              (action: pause, resume, cancel, retry,
                               throttle, rollback, approve)
                        POST  /api/admin/dataMigrations/{pause|resume|cancel} (many runs)
                        POST  /api/admin/switch {enabled, reason}       operators
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
from shared.adapters.cloud_tasks import ChunkTask, TaskBody
from shared.adapters.firestore_admin import FirestoreAdmin
from shared.adapters.gap_scans import FirestoreGaps
from shared.adapters.oidc import Caller, authenticate
from shared.adapters.trace_reads import FirestoreTraces
from shared.api import openapi, status_page
from shared.api.answers import StartedAnswer
from shared.api.bodies import (
    ControlRequest,
    ResumeRequest,
    RetryRequest,
    RollbackRequest,
    SteerAllRequest,
    SwitchRequest,
    ThrottleRequest,
    parse_json,
    parse_request,
)
from shared.config import Settings
from shared.errors import (
    TRANSIENT,
    BackfillError,
    Conflict,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
)
from shared.executor.runner import Delivery
from shared.models import document_id_problem
from shared.runs import control, gaps, launcher, preflight, progress, reports, trace
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
_PREFLIGHT_PATH = re.compile(r"^(?:/api/admin)?/preflight/?$")
_TRACE_PATH = re.compile(r"^(?:/api/admin)?/trace/?$")
_SWITCH_PATH = re.compile(r"^(?:/api/admin)?/switch/?$")
_STEER_ALL_PATH = re.compile(r"^(?:/api/admin/dataMigrations)?/(pause|resume|cancel)/?$")
_ACTION_PATH = re.compile(
    rf"^(?:/api/admin/dataMigrations)?/{_ID}/"
    r"(pause|resume|cancel|retry|throttle|rollback|approve)/?$")
# Run and chunk ids are the bundle's own: {type}_{epoch ms}, a UTC day, plan, watch, retry.
_BUNDLE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")
_LIMIT = re.compile(r"[0-9]{1,6}")  # ASCII digits only: str.isdigit() also takes "²"
_INDEX = re.compile(r"[0-9]{1,9}")  # a chunk's planning index, a page's size

Answer = tuple[dict[str, Any], int] | flask.Response


def _answer(handler: Callable[[flask.Request], Answer], request: flask.Request) -> flask.Response:
    """The handler's answer, or its error's; either names the deployment (``_where``)."""
    return _where(_answered(handler, request))


def _where(response: flask.Response) -> flask.Response:
    """Name the project, database and environment this bundle writes in every answer: in the
    JSON object's ``deployment`` and, for any answer (CSV, pages, the OpenAPI document), in
    ``X-Backfill-*`` headers. An operator reading an answer knows which ledger it is about."""
    try:
        deployment = services().settings.deployment
    except Exception:  # no valid settings: the answer says so itself
        return response
    for name, value in deployment.items():
        response.headers[f"X-Backfill-{name.capitalize()}"] = value
    if response.mimetype == "application/json" and not response.direct_passthrough:
        body = response.get_json(silent=True)
        if isinstance(body, dict) and "openapi" not in body:
            response.set_data(json.dumps({**body, "deployment": deployment}))
    return response


def _answered(handler: Callable[[flask.Request], Answer],
              request: flask.Request) -> flask.Response:
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
    backfill = parse_request(request.get_data(cache=False), settings.max_range_days,
                             clock.now().date())
    if not backfill.dry_run and settings.preflight_required and not backfill.force:
        checked = preflight.run(settings, svc.stores, svc.dispatcher, FirestoreAdmin(settings),
                                backfill.type, backfill.start_date, backfill.end_date,
                                clock.now(), backfill.max_events_per_second)
        if failing := preflight.failed(checked):
            raise Conflict("the preflight failed, nothing was started: " + "; ".join(failing)
                           + " (GET /api/admin/preflight says what to do; force: true starts "
                           "it anyway)", [])
    started = launcher.start_run(backfill, caller, settings, svc.stores, svc.dispatcher,
                                 scheduled_for=_schedule_time(request))
    waiting = [] if started.duplicate else control.make_way(settings, svc.stores,
                                                            started.migration_id)
    return StartedAnswer.of(started, settings.status_url, made_wait=waiting or None).answer()


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
    for path, route in _STATUS_ROUTES:
        if match := path.match(request.path):
            return route(svc, request, match)
    raise NotFound("no such resource")


def _openapi(svc: Services, request: flask.Request, match: re.Match[str]) -> Answer:
    return openapi.document(), 200


def _gaps(svc: Services, request: flask.Request, match: re.Match[str]) -> Answer:
    first, last = gaps.parse_range(request.args.get("startDate"), request.args.get("endDate"),
                                   clock.now().date())
    sent = gaps.provider_sent(request.args.get("provider"), svc.settings, svc.db)
    return gaps.find_gaps(FirestoreGaps(svc.db), first, last, svc.settings.enqueue_workers,
                          sent), 200


def _preflight(svc: Services, request: flask.Request, match: re.Match[str]) -> Answer:
    """What to know before a live run of ``?type`` over ``?startDate..endDate``."""
    now = clock.now()
    backfill_type, first, last = preflight.parse(
        svc.settings, request.args.get("type"), request.args.get("startDate"),
        request.args.get("endDate"), now.date())
    return preflight.run(svc.settings, svc.stores, svc.dispatcher, FirestoreAdmin(svc.settings),
                         backfill_type, first, last, now), 200


def _trace(svc: Services, request: flask.Request, match: re.Match[str]) -> Answer:
    """What happened to one customer, order or event (``shared.runs.trace``): JSON, or a page
    for a browser. Reads only."""
    field, value = trace.parse(request.args)
    traced = trace.trace(FirestoreTraces(svc.db), field, value, svc.settings.status_url)
    if status_page.wants_html(request.accept_mimetypes):
        runs_href = request.path.rstrip("/").removesuffix("/trace") + "/dataMigrations"
        return _page(status_page.trace_page(traced, runs_href, svc.settings.deployment))
    return traced, 200


def _switch(svc: Services, request: flask.Request, match: re.Match[str]) -> Answer:
    """The kill switch as stored, and whether backfills run."""
    switch = svc.stores.switch.get()
    return {"enabled": switch.enabled, "reason": switch.reason, "by": switch.by,
            "changedAt": switch.changed_at.isoformat() if switch.changed_at else None,
            "deployTimeEnabled": svc.settings.enabled,
            "running": control.switched_off(svc.settings, svc.stores) is None}, 200


def _run(svc: Services, request: flask.Request, match: re.Match[str]) -> Answer:
    """One run's status, with one page of its chunks: ``?chunksFrom=`` (a planning index,
    default 0) and ``?chunksPerPage=`` (1-1000, default 100)."""
    migration_id = _run_id(match.group(1))
    described = svc.describe(
        migration_id, _whole("chunksFrom", request.args.get("chunksFrom", "0")),
        _whole("chunksPerPage", request.args.get(
            "chunksPerPage", str(progress.DEFAULT_CHUNKS_PER_PAGE))))
    if status_page.wants_html(request.accept_mimetypes):
        path = request.path.rstrip("/")
        return _page(status_page.run_page(described, path, path.rsplit("/", 1)[0] or "/",
                                          svc.settings.deployment))
    return described, 200


def _whole(field: str, value: str) -> int:
    """A query parameter that is a whole number, or ``InvalidRequest`` naming it."""
    if not _INDEX.fullmatch(value):
        raise InvalidRequest(field, "must be a whole number (ASCII digits)")
    return int(value)


def _runs(svc: Services, request: flask.Request, match: re.Match[str]) -> Answer:
    limit = request.args.get("limit", "20")
    if not _LIMIT.fullmatch(limit):
        raise InvalidRequest("limit", "must be a whole number (ASCII digits)")
    kind, status = request.args.get("type"), request.args.get("status")
    if status_page.wants_html(request.accept_mimetypes):
        overview = progress.overview(svc.stores, int(limit), kind, status, settings=svc.settings)
        return _page(status_page.runs_page(overview, request.path.rstrip("/"),
                                           svc.settings.deployment))
    return {"runs": progress.list_runs(svc.stores, int(limit), kind, status)}, 200


def _page(html: str) -> flask.Response:
    """A status page: no script may run, nothing may be framed, sniffed or cached."""
    return flask.Response(html, status=200, mimetype="text/html", headers={
        "Content-Security-Policy": status_page.CSP, "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def _errors(svc: Services, request: flask.Request, match: re.Match[str]) -> Answer:
    """The run's failed events: CSV (default) or JSON (``?format=json``), ``?code=`` filters."""
    migration_id = _run_id(match.group(1))
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
    if _SWITCH_PATH.match(request.path):
        switch = parse_json(request.get_data(cache=False), SwitchRequest)
        return control.flip(svc.settings, svc.stores, switch.enabled, switch.reason,
                            caller.email), 200
    if steer_all := _STEER_ALL_PATH.match(request.path):
        body = parse_json(request.get_data(cache=False), SteerAllRequest)
        return control.steer_all(svc.settings, svc.stores, svc.dispatcher, steer_all.group(1),
                                 caller.email, body.reason, body.type, body.start_date,
                                 body.end_date), 200
    match = _ACTION_PATH.match(request.path)
    if match is None:
        raise NotFound("no such action: POST .../dataMigrations/{migrationId}/"
                       "{pause|resume|cancel|retry|throttle|rollback|approve}")
    migration_id, action = _run_id(match.group(1)), match.group(2)
    return _ACTIONS[action](svc, caller, migration_id, request.get_data(cache=False))


def _retry(svc: Services, caller: Caller, migration_id: str,
           raw: bytes) -> tuple[dict[str, Any], int]:
    retry = parse_json(raw, RetryRequest)
    started = launcher.start_retry(migration_id, caller, svc.settings, svc.stores,
                                   svc.dispatcher, retry.code, retry.dry_run, retry.force)
    waiting = control.make_way(svc.settings, svc.stores, started.migration_id)
    return StartedAnswer.of(started, svc.settings.status_url, retry_of=started.retry_of,
                            made_wait=waiting or None).answer()


def _rollback(svc: Services, caller: Caller, migration_id: str,
              raw: bytes) -> tuple[dict[str, Any], int]:
    undo = parse_json(raw, RollbackRequest)
    started = launcher.start_rollback(migration_id, caller, svc.settings, svc.stores,
                                      svc.dispatcher, undo.dry_run, undo.force, undo.target,
                                      undo.reason)
    control.make_way(svc.settings, svc.stores, started.migration_id)
    return StartedAnswer.of(started, svc.settings.status_url,
                            rollback_of=started.rollback_of).answer()


def _throttle(svc: Services, caller: Caller, migration_id: str,
              raw: bytes) -> tuple[dict[str, Any], int]:
    limit = parse_json(raw, ThrottleRequest)
    return control.throttle(svc.settings, svc.stores, migration_id, caller.email,
                            limit.max_events_per_second, limit.reason), 200


def _steer(action: str, move: Callable[[Services, str, str, str], control.Steered]) -> Action:
    """A pause, resume or cancel: its reason from the body, its answer, its log line."""
    def steer(svc: Services, caller: Caller, migration_id: str,
              raw: bytes) -> tuple[dict[str, Any], int]:
        steered = move(svc, migration_id, caller.email, parse_json(raw, ControlRequest).reason)
        logs.log(logger, "run control", migration_id=migration_id, action=action,
                 status=steered.status, previous=steered.previous, chunks=steered.chunks,
                 caller=caller.email)
        return steered.body(), 200
    return steer


def _resume(svc: Services, caller: Caller, migration_id: str,
            raw: bytes) -> tuple[dict[str, Any], int]:
    """Resume, with the run's new guardrails if the body names any (or ``force``)."""
    body = parse_json(raw, ResumeRequest)
    steered = control.resume(svc.settings, svc.stores, svc.dispatcher, migration_id,
                             caller.email, body.reason, body.caps() or None)
    logs.log(logger, "run control", migration_id=migration_id, action="resume",
             status=steered.status, previous=steered.previous, chunks=steered.chunks,
             caller=caller.email, guardrails=sorted(body.caps()))
    return steered.body(), 200


Action = Callable[[Services, Caller, str, bytes], tuple[dict[str, Any], int]]
# The route table of run control: POST .../dataMigrations/{migrationId}/{action}.
_ACTIONS: dict[str, Action] = {
    "pause": _steer("pause", lambda svc, run, by, note: control.pause(
        svc.settings, svc.stores, run, by, note)),
    "resume": _resume,
    "cancel": _steer("cancel", lambda svc, run, by, note: control.cancel(
        svc.settings, svc.stores, run, by, note, svc.dispatcher)),
    "approve": _steer("approve", lambda svc, run, by, note: control.approve(
        svc.settings, svc.stores, svc.dispatcher, run, by, note)),
    "throttle": _throttle, "retry": _retry, "rollback": _rollback,
}


@functions_framework.http
def backfill_sweep(request: flask.Request) -> flask.Response:
    """The durable safety net (Cloud Scheduler, every few minutes): a watchdog round for every
    active run, which picks up lost chunks and re-arms the run's watchdog."""
    return _answer(_sweep, request)


def _sweep(request: flask.Request) -> tuple[dict[str, Any], int]:
    svc, _ = _admit(request, "POST", _SWEEP_CALL)
    return svc.sweep().body(), 200


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
             kind=task.kind.value, chunk_id=task.chunk_id, segment=task.segment,
             status=report.result,
             event_count=report.events, attempt=delivery.retry_count + 1)
    return {"result": report.result, "pages": report.pages, "events": report.events,
            "detail": report.detail}, 200


def _parse_task(request: flask.Request) -> ChunkTask:
    """A task's body (``TaskBody``); ``InvalidRequest`` names the field no retry can mend."""
    try:
        body = parse_json(request.get_data(cache=False) or b"null", TaskBody)
    except RecursionError:  # nested deeper than the parser goes
        raise InvalidRequest("body", "must be a JSON object") from None
    _check_id("migrationId", body.migration_id)
    if body.chunk_id is not None:
        _check_id("chunkId", body.chunk_id)
    return body.task()


Route = Callable[[Services, flask.Request, re.Match[str]], Answer]
# The route table of the status function (GET), first match wins.
_STATUS_ROUTES: list[tuple[re.Pattern[str], Route]] = [
    (re.compile(r"^(?:/api)?/openapi\.json/?$"), _openapi),
    (_GAPS_PATH, _gaps),
    (_SWITCH_PATH, _switch),
    (_PREFLIGHT_PATH, _preflight),
    (_TRACE_PATH, _trace),
    (_ERRORS_PATH, _errors),
    (_RUN_PATH, _run),
    (_LIST_PATH, _runs),
]


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
