"""A stand-in for Cloud Scheduler's sweep job: fires the bundle's sweep endpoint periodically.

Contract (docs/local-stack-contract.md):

- Every ``--period`` seconds (``0``: never on its own, only on demand) it sends what the sweep job
  of ``infra/scheduler.tf`` sends: ``POST --target`` with body ``{}``, ``Content-Type:
  application/json``, ``Authorization: Bearer <ID token>`` minted by the local issuer
  (``--issuer-url``) for ``--identity`` with ``aud`` = ``--audience``, and Cloud Scheduler's
  headers ``User-Agent: Google-Cloud-Scheduler``, ``X-CloudScheduler: true``,
  ``X-CloudScheduler-JobName`` (``--job-name``) and ``X-CloudScheduler-ScheduleTime`` (the
  firing's scheduled time, RFC 3339 UTC with a ``Z``). Each attempt times out after
  ``--timeout`` seconds (default 60); there are no retries, as on the sweep job.
- Firings are on a grid: the first one ``period`` seconds after start (or after the period is
  set), then every ``period``. Firings never overlap: a periodic firing waits for an on-demand one
  and the other way round; grid points missed meanwhile are skipped, and the firing made late
  carries the latest grid point that came due as its schedule time.
- Any HTTP answer counts as fired, whatever its status (redirects are not followed); a target or
  issuer that cannot be reached, or a timeout, counts as a failure.

Admin HTTP (``--host``, loopback only, ``--admin-port``):

- ``GET /`` -> 200 ``{"status": "ok"}`` (readiness).
- ``GET /stats`` -> ``{"periodSeconds", "fired", "lastStatus", "lastFiredAt", "statuses":
  {"<code>": count}, "failures", "lastError"}``: ``fired`` counts firings that got an answer,
  ``failures`` those that did not; ``lastStatus`` and ``lastFiredAt`` (scheduled time, RFC 3339)
  describe the latest firing (``lastStatus`` is null when it failed), ``lastError`` the latest
  failure.
- ``POST /period`` ``{"seconds": number >= 0}`` sets the period at once (the next periodic firing
  is ``seconds`` from now; 0 stops them) and answers the stats.
- ``POST /fire`` fires once now, synchronously, and answers ``{"status": code}``, or
  ``{"status": null, "error": ...}`` when the firing failed.

Run: ``python -m emulators.scheduler --host 127.0.0.1 --admin-port P --target URL
--issuer-url URL --identity EMAIL --audience AUD --period SECONDS``. Stops on SIGTERM.
Logs carry statuses and durations only; never tokens or bodies.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import sys
import threading
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulators.issuer import (
    IssuerError,
    JsonHandler,
    ensure_loopback,
    mint_token,
    serve_until_stopped,
)

logger = logging.getLogger("emulators.scheduler")

DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_JOB_NAME = "backfill-sweep"


def rfc3339(moment: dt.datetime) -> str:
    """``moment`` in UTC as RFC 3339 with a ``Z``: whole seconds, or milliseconds if it has any."""
    utc = moment.astimezone(dt.UTC)
    spec = "seconds" if utc.microsecond == 0 else "milliseconds"
    return utc.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Cloud Scheduler does not follow redirects: a 3xx is the firing's answer."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Scheduler:
    """Fires ``target`` every ``period`` seconds on its own thread, and on demand."""

    def __init__(
        self,
        target: str,
        issuer_url: str,
        identity: str,
        audience: str,
        period: float,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        job_name: str = DEFAULT_JOB_NAME,
    ) -> None:
        if not target.startswith(("http://", "https://")):
            raise ValueError(f"--target must be an http(s) URL, got {target!r}")
        if not math.isfinite(period) or period < 0:
            raise ValueError(f"--period must be a number >= 0, got {period!r}")
        self.target = target
        self.issuer_url = issuer_url
        self.identity = identity
        self.audience = audience
        self.timeout = timeout
        self.job_name = job_name
        # No proxy: everything the local stack talks to is on loopback.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
        self._fire_lock = threading.Lock()  # one firing at a time
        self._cond = threading.Condition()  # guards the schedule and the counters below
        self._stopping = False
        self._period = period
        self._next_due: float | None = None
        self._fired = 0
        self._failures = 0
        self._statuses: dict[int, int] = {}
        self._last_status: int | None = None
        self._last_fired_at: str | None = None
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self.set_period(period)

    # --- schedule -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: float = 1.0) -> None:
        """Stop the periodic firings; a firing in progress is given ``wait`` seconds to end."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(wait)

    def set_period(self, seconds: float) -> dict[str, Any]:
        """Fire every ``seconds`` from now on (0: only on demand); answer the stats."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("seconds must be a number >= 0")
        with self._cond:
            self._period = float(seconds)
            self._next_due = time.monotonic() + seconds if seconds > 0 else None
            self._cond.notify_all()
        logger.info("period set to %s s", seconds)
        return self.stats()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    if self._next_due is not None and now >= self._next_due:
                        break
                    self._cond.wait(None if self._next_due is None else self._next_due - now)
                due, period = self._next_due, self._period
                assert due is not None  # a due time exists only when period > 0
                # Fire for the latest grid point that came due (any missed before it are
                # skipped) and plan the next; set_period during the firing below replaces it.
                due += period * math.floor((now - due) / period)
                self._next_due = due + period
            scheduled = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=now - due)
            self.fire(scheduled)

    # --- firing -------------------------------------------------------------------------------

    def fire(self, scheduled: dt.datetime | None = None) -> tuple[int | None, str | None]:
        """Fire once (after any firing in progress); answer ``(status, None)`` or
        ``(None, error)`` when no answer came."""
        with self._fire_lock:
            schedule_time = rfc3339(scheduled or dt.datetime.now(dt.UTC))
            started = time.monotonic()
            status: int | None = None
            error: str | None = None
            try:
                status = self._send(schedule_time)
            except IssuerError as exc:
                error = f"no token: {exc}"
            except (urllib.error.URLError, OSError) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                error = f"target unreachable: {reason}"
            elapsed_ms = (time.monotonic() - started) * 1000
            with self._cond:
                self._last_fired_at = schedule_time
                self._last_status = status
                if status is None:
                    self._failures += 1
                    self._last_error = error
                else:
                    self._fired += 1
                    self._statuses[status] = self._statuses.get(status, 0) + 1
            if status is None:
                logger.warning("firing for %s failed after %.0f ms: %s",
                               schedule_time, elapsed_ms, error)
            else:
                logger.info("fired for %s: status %d in %.0f ms", schedule_time, status,
                            elapsed_ms)
            return status, error

    def _send(self, schedule_time: str) -> int:
        token = mint_token(self.issuer_url, self.identity, self.audience)
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self.target,
            data=b"{}",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "User-Agent": "Google-Cloud-Scheduler",
                "X-CloudScheduler": "true",
                "X-CloudScheduler-JobName": self.job_name,
                "X-CloudScheduler-ScheduleTime": schedule_time,
            },
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "periodSeconds": self._period,
                "fired": self._fired,
                "lastStatus": self._last_status,
                "lastFiredAt": self._last_fired_at,
                "statuses": {str(code): n for code, n in sorted(self._statuses.items())},
                "failures": self._failures,
                "lastError": self._last_error,
            }


def _admin_handler(scheduler: Scheduler) -> type[BaseHTTPRequestHandler]:
    class AdminHandler(JsonHandler):
        server_version = "backfill-local-scheduler"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/":
                self.send_json(HTTPStatus.OK, {"status": "ok"})
            elif path == "/stats":
                self.send_json(HTTPStatus.OK, scheduler.stats())
            else:
                self.send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            body = self.read_json()
            if body is None:
                return
            if path == "/period":
                seconds = body.get("seconds")
                if (
                    not isinstance(seconds, int | float)
                    or isinstance(seconds, bool)
                    or not math.isfinite(seconds)
                    or seconds < 0
                ):
                    self.send_json(HTTPStatus.BAD_REQUEST,
                                   {"error": "seconds must be a number >= 0"})
                    return
                self.send_json(HTTPStatus.OK, scheduler.set_period(float(seconds)))
            elif path == "/fire":
                status, error = scheduler.fire()
                answer: dict[str, Any] = {"status": status}
                if error is not None:
                    answer["error"] = error
                self.send_json(HTTPStatus.OK, answer)
            else:
                self.send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})


        def log_message(self, format: str, *args: Any) -> None:
            # Readiness and stats polls would drown the firings; admin changes are logged.
            if self.command != "GET":
                logger.info("admin %s", format % args)

    return AdminHandler


def make_server(host: str, port: int, scheduler: Scheduler) -> ThreadingHTTPServer:
    """Build (bind, not yet serve) the admin server; refuses non-loopback hosts."""
    ensure_loopback(host)
    server = ThreadingHTTPServer((host, port), _admin_handler(scheduler))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local Cloud Scheduler stand-in (sweep job).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--target", required=True, help="URL to POST to")
    parser.add_argument("--issuer-url", required=True)
    parser.add_argument("--identity", required=True, help="service account the token is for")
    parser.add_argument("--audience", required=True)
    parser.add_argument("--period", type=float, default=60.0, help="seconds; 0: on demand only")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS)
    parser.add_argument("--job-name", default=DEFAULT_JOB_NAME)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        scheduler = Scheduler(
            args.target,
            args.issuer_url,
            args.identity,
            args.audience,
            args.period,
            timeout=args.timeout,
            job_name=args.job_name,
        )
        server = make_server(args.host, args.admin_port, scheduler)
    except ValueError as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"scheduler: cannot bind {args.host}:{args.admin_port}: {exc}", file=sys.stderr)
        return 1

    scheduler.start()
    logger.info("admin on http://%s:%d; firing %s every %s s", args.host,
                server.server_address[1], args.target, args.period)
    serve_until_stopped(server)
    scheduler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
