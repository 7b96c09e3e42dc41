"""One typed client of the bundle's HTTP API: the trigger, status and control functions, or the
local gateway that serves them all on one host. The ``backfill`` CLI, the demo, the benchmark
and the end-to-end tests all call the bundle through it.

Every call sends ``Authorization: Bearer <ID token>``: a token for the audience of the function
it calls (``audience_of``: the URL's origin, which is the function's URL in production and the
gateway's locally) from the client's ``TokenProvider``, or one fixed token for every call. An
answer of 400 or above raises ``ApiError`` with the status and the JSON body the bundle sent
(``field``/``reason`` on a 400, ``blocking`` on a 409 or 429). ``wait`` polls a run until it
ends or is paused: a paused run needs an operator, so waiting on it any longer would wait
forever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
PAUSED = "paused"
# A run that waits for an operator: watching it any longer would wait forever.
WAITING = frozenset({PAUSED, "awaiting_approval"})
ACTIONS = ("pause", "resume", "cancel", "retry", "throttle", "rollback", "approve")

TokenProvider = Callable[[str], str]
"""An ID token for an audience (see ``backfill_cli.tokens``)."""


class ApiError(Exception):
    """The bundle refused a call: ``status``, its JSON ``body`` (empty if it sent none) and the
    raw ``text``."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.text = response.text
        try:
            body = response.json()
        except ValueError:
            body = None
        self.body: dict[str, Any] = body if isinstance(body, dict) else {}
        super().__init__(f"{self.status} {self.text}")

    @property
    def blocking(self) -> list[str]:
        """The runs in the way of a refused start (409 conflict, 429 too many runs)."""
        blocking = self.body.get("blocking")
        return [str(run) for run in blocking] if isinstance(blocking, list) else []


class MissingEndpoint(ValueError):
    """The client was not told where the function it needs lives."""


@dataclasses.dataclass(frozen=True)
class Endpoints:
    """The base URL of each function: the trigger (``POST`` starts a run), the status (runs
    under it) and the control function (actions under it)."""

    trigger: str = ""
    status: str = ""
    control: str = ""

    @classmethod
    def gateway(cls, url: str) -> Endpoints:
        """All three on the local stack's gateway, on the runbook's paths."""
        base = url.rstrip("/")
        return cls(f"{base}/api/jobs/backfill", f"{base}/api/admin/dataMigrations",
                   f"{base}/api/admin/dataMigrations")

    def require(self, name: str) -> str:
        url: str = getattr(self, name)
        if not url:
            raise MissingEndpoint(
                "no endpoint: set BACKFILL_TRIGGER_URL/BACKFILL_STATUS_URL/BACKFILL_CONTROL_URL "
                "or BACKFILL_GATEWAY_URL (source .local/stack.env locally), or give "
                "--terraform-outputs, --terraform-dir or a config file profile")
        return url.rstrip("/")


def audience_of(url: str) -> str:
    """The audience of a call to ``url``: its origin. A deployed function's URL is its origin
    (Terraform's ``*_url`` outputs) and the bundle checks tokens against exactly that."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class BackfillClient:
    """Calls one deployed bundle (or the local gateway) as one operator."""

    def __init__(self, endpoints: Endpoints, token: str | TokenProvider, *,
                 timeout: float = 60.0, trust_env: bool = True,
                 transport: httpx.BaseTransport | None = None) -> None:
        """``token``: one ID token for every call, or a provider of a token per audience.
        ``transport``: httpx's port, for unit tests of this class (default: the network)."""
        self.endpoints = endpoints
        self._http = httpx.Client(timeout=timeout, trust_env=trust_env, transport=transport)
        self.use_token(token)

    def use_token(self, token: str | TokenProvider) -> None:
        """Call with ``token`` from now on: a fixed token (ID tokens expire after an hour), or a
        provider asked before every call."""
        self._tokens: TokenProvider = token if callable(token) else (lambda _audience: token)

    def __enter__(self) -> BackfillClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def start(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Start a run (the trigger's 202), or find the run a twin schedule firing started
        (200 ``duplicate``): ``migrationId``, ``status``, ``statusUrl`` and the rest."""
        return self._json("POST", self.endpoints.require("trigger"), json=dict(body))

    def runs(self, limit: int | None = None, backfill_type: str | None = None,
             status: str | None = None) -> list[dict[str, Any]]:
        """Recent runs, newest first."""
        params = {key: str(value) for key, value in (
            ("limit", limit), ("type", backfill_type), ("status", status)) if value is not None}
        listed: list[dict[str, Any]] = self._json(
            "GET", self.endpoints.require("status"), params=params)["runs"]
        return listed

    def deployment(self) -> dict[str, str]:
        """Where the bundle writes (``project``, ``database``, ``environment``), as its every
        answer names it: read from the status function's list of one run."""
        answer = self._json("GET", self.endpoints.require("status"), params={"limit": "1"})
        where = answer.get("deployment")
        return {str(k): str(v) for k, v in where.items()} if isinstance(where, dict) else {}

    def gaps(self, start_date: str, end_date: str, provider: bool = False) -> dict[str, Any]:
        """Per day of the range: unprocessed events by type, refunds and chargebacks without
        their reversal, processed purchases without their entry, and with ``provider`` the
        events PayNow sent that never arrived (the status function's ``/api/admin/gaps``,
        beside its runs)."""
        params = {"startDate": start_date, "endDate": end_date}
        if provider:
            params["provider"] = "true"
        return self._json("GET", f"{self._admin('status')}/gaps", params=params)

    def run(self, migration_id: str) -> dict[str, Any]:
        """One run's status: counts, progress, chunks, first errors."""
        return self._json("GET", f"{self.endpoints.require('status')}/{migration_id}")

    def control(self, migration_id: str, action: str,
                body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``pause``, ``resume``, ``cancel``, ``throttle`` (their answer), ``retry`` or
        ``rollback`` (the new run)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
        url = f"{self.endpoints.require('control')}/{migration_id}/{action}"
        return self._json("POST", url, json=dict(body) if body else None)

    def steer_all(self, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``pause``, ``resume`` or ``cancel`` every active run of a filter (``all``, ``type``,
        ``startDate``/``endDate``): each matched run's outcome."""
        if action not in ("pause", "resume", "cancel"):
            raise ValueError(f"unknown action {action!r}: pause, resume or cancel")
        return self._json("POST", f"{self.endpoints.require('control')}/{action}",
                          json=dict(body))

    def switch(self, enabled: bool | None = None, reason: str = "") -> dict[str, Any]:
        """The kill switch (``enabled`` None: as it is; else switched, every active run paused
        when off): ``/api/admin/switch`` of the status and control functions."""
        if enabled is None:
            return self._json("GET", f"{self._admin('status')}/switch")
        return self._json("POST", f"{self._admin('control')}/switch",
                          json={"enabled": enabled, "reason": reason})

    def preflight(self, backfill_type: str, start_date: str, end_date: str) -> dict[str, Any]:
        """The checks before a live run (``/api/admin/preflight`` of the status function)."""
        return self._json("GET", f"{self._admin('status')}/preflight", params={
            "type": backfill_type, "startDate": start_date, "endDate": end_date})

    def trace(self, field: str, value: str) -> dict[str, Any]:
        """What happened to a customer, order or event (``/api/admin/trace`` of the status
        function); ``field``: customerId, orderId or eventId."""
        return self._json("GET", f"{self._admin('status')}/trace", params={field: value})

    def _admin(self, endpoint: str) -> str:
        """``/api/admin`` of a function: beside its runs on the gateway; the function's own
        URL in production (its paths take the prefix or not)."""
        base = self.endpoints.require(endpoint).removesuffix("/api/admin/dataMigrations")
        return f"{base}/api/admin"

    @contextlib.contextmanager
    def errors(self, migration_id: str, code: str | None = None,
               as_json: bool = False) -> Iterator[Iterator[str]]:
        """The run's error report (CSV, or JSON), streamed: a report of any size passes through
        in constant memory. Raises ``ApiError`` before yielding if the call is refused."""
        params = {"format": "json" if as_json else "csv", **({"code": code} if code else {})}
        url = f"{self.endpoints.require('status')}/{migration_id}/errors"
        with self._http.stream("GET", url, params=params,
                               headers=self._authorization(url)) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response)
            yield response.iter_text()

    def wait(self, migration_id: str, timeout: float = 600.0, every: float = 1.0,
             progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll the run every ``every`` seconds until it ends or is paused; answer its last
        status. ``progress`` sees each status read. ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(migration_id)
            if progress is not None:
                progress(run)
            if run["status"] in FINAL_STATUSES or run["status"] in WAITING:
                return run
            if time.monotonic() >= deadline:
                raise TimeoutError(f"run {migration_id} is still {run['status']} after "
                                   f"{timeout:.0f} s")
            time.sleep(every)

    def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        response = self._http.request(method, url, headers=self._authorization(url), **kwargs)
        if response.status_code >= 400:
            raise ApiError(response)
        answer: dict[str, Any] = response.json()
        return answer

    def _authorization(self, url: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._tokens(audience_of(url))}"}


def mint_local_token(issuer_url: str, email: str, audience: str) -> str:
    """A token for ``email`` from the local stack's issuer (production refuses such tokens)."""
    response = httpx.post(f"{issuer_url.rstrip('/')}/token",
                          json={"email": email, "audience": audience}, timeout=10)
    response.raise_for_status()
    return str(response.json()["token"])
