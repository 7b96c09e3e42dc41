"""One local HTTP server for the five functions, on the runbook's paths.

In production each function has its own URL; locally ``/api/jobs/backfill`` goes to the
trigger, ``GET /api/admin/dataMigrations...`` to the status function, ``POST
/api/admin/dataMigrations/...`` to the control function, ``/api/jobs/sweep`` to the sweep
(which the local stack's scheduler stand-in calls) and ``/tasks/chunk`` to the chunk handler,
each app built by functions-framework exactly as it would be deployed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import functions_framework
from werkzeug.serving import run_simple

from shared.config import get_settings

SOURCE = Path(__file__).resolve().parent.parent / "functions" / "main.py"
# (path prefix, method or "" for any, target)
ROUTES = (
    ("/api/jobs/backfill", "", "backfill_trigger"),
    ("/api/jobs/sweep", "", "backfill_sweep"),
    ("/api/admin/dataMigrations", "POST", "backfill_control"),
    ("/api/admin/dataMigrations", "", "backfill_status"),
    ("/api/admin/gaps", "", "backfill_status"),
    ("/api/admin/switch", "POST", "backfill_control"),
    ("/api/admin/switch", "", "backfill_status"),
    ("/api/admin/preflight", "", "backfill_status"),
    ("/api/admin/trace", "", "backfill_status"),
    ("/api/openapi.json", "", "backfill_status"),
    ("/tasks/chunk", "", "backfill_chunk"),
)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def make_app() -> WsgiApp:
    apps = {target: functions_framework.create_app(target=target, source=str(SOURCE))
            for _, _, target in ROUTES}

    def gateway(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        method = environ.get("REQUEST_METHOD", "")
        for prefix, only, target in ROUTES:
            if (path == prefix or path.startswith(prefix + "/")) and only in ("", method):
                app: WsgiApp = apps[target]
                return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"error": "not_found", "message": "no such path"}']

    return gateway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if not get_settings().local:
        raise SystemExit("the gateway is for local runs only (BACKFILL_ENV=local)")
    run_simple(args.host, args.port, make_app(), threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
