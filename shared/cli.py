"""``backfill``: the operator's command line for starting and watching runs.

It calls the same HTTP API as curl does (trigger and status functions, or the local gateway),
with an ID token from ``--token``/``BACKFILL_TOKEN`` or, on the local stack only, one minted by
the local issuer for ``--as``.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from shared.config import ClientSettings

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
console = Console()
FINAL = {"completed", "failed"}


def _settings() -> ClientSettings:
    return ClientSettings()


def mint_local_token(email: str, audience: str | None = None) -> str:
    """A token from the local stack's issuer; refused when no local issuer is configured."""
    settings = _settings()
    if not settings.issuer_url:
        raise typer.BadParameter("no local issuer (BACKFILL_ISSUER_URL): source "
                                 ".local/stack.env, or pass --token on a deployed bundle")
    audience = audience or (settings.operator_audiences[0] if settings.operator_audiences
                            else settings.gateway_url)
    response = httpx.post(f"{settings.issuer_url}/token",
                          json={"email": email, "audience": audience}, timeout=10)
    response.raise_for_status()
    return str(response.json()["token"])


def _token(token: str | None, email: str) -> str:
    return token or _settings().token or mint_local_token(email)


def _call(method: str, url: str, token: str, body: dict[str, Any] | None = None) -> Any:
    if not url:
        raise typer.BadParameter("no endpoint: set BACKFILL_TRIGGER_URL/BACKFILL_STATUS_URL "
                                 "or BACKFILL_GATEWAY_URL (source .local/stack.env locally)")
    response = httpx.request(method, url, json=body, timeout=60,
                             headers={"Authorization": f"Bearer {token}"})
    if response.status_code >= 400:
        console.print(f"[red]{response.status_code}[/red] {response.text}")
        raise typer.Exit(1)
    return response.json()


TokenOption = Annotated[str | None, typer.Option(help="ID token (default: BACKFILL_TOKEN)")]
AsOption = Annotated[str, typer.Option("--as", help="local stack only: identity to mint for")]


@app.command()
def token(
    email: Annotated[str, typer.Option(help="identity to mint a local token for")],
    audience: Annotated[str | None, typer.Option(help="default: the operator audience")] = None,
) -> None:
    """Print a local-stack ID token for EMAIL (the local issuer signs it; production refuses it)."""
    typer.echo(mint_local_token(email, audience))


@app.command()
def start(
    backfill_type: Annotated[str, typer.Argument(metavar="TYPE",
                                                 help="webhook_replay or reversal_backfill")],
    start_date: Annotated[str, typer.Option("--start", help="first UTC day, YYYY-MM-DD")],
    end_date: Annotated[str, typer.Option("--end", help="last UTC day (inclusive)")],
    dry_run: Annotated[bool, typer.Option("--dry-run/--apply")] = True,
    max_events: Annotated[int | None, typer.Option(help="bound on events taken")] = None,
    wait: Annotated[bool, typer.Option(help="watch the run until it ends")] = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Start a run (a dry run unless --apply)."""
    body: dict[str, Any] = {"type": backfill_type, "startDate": start_date, "endDate": end_date,
                            "dryRun": dry_run}
    if max_events is not None:
        body["maxEvents"] = max_events
    bearer = _token(token, as_email)
    started = _call("POST", _settings().effective_trigger_url, bearer, body)
    console.print_json(json.dumps(started))
    if wait:
        _watch(started["migrationId"], bearer, 1.0)


@app.command()
def status(
    migration_id: Annotated[str | None, typer.Argument(help="a run; none: recent runs")] = None,
    watch: Annotated[bool, typer.Option(help="refresh until the run ends")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON")] = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Show recent runs, or one run's progress."""
    bearer = _token(token, as_email)
    base = _settings().effective_status_url
    if migration_id is None:
        runs = _call("GET", base, bearer)["runs"]
        if as_json:
            console.print_json(json.dumps(runs))
            return
        table = Table("migrationId", "type", "status", "dryRun", "dates", "total", "createdAt")
        for run in runs:
            table.add_row(run["migrationId"], run["type"], run["status"], str(run["dryRun"]),
                          f"{run['startDate']}..{run['endDate']}", str(run["total"]),
                          run["createdAt"])
        console.print(table)
    elif watch:
        _watch(migration_id, bearer, 1.0)
    else:
        run = _call("GET", f"{base}/{migration_id}", bearer)
        console.print_json(json.dumps(run)) if as_json else _show(run)


def _watch(migration_id: str, bearer: str, every: float) -> dict[str, Any]:
    base = _settings().effective_status_url
    while True:
        run: dict[str, Any] = _call("GET", f"{base}/{migration_id}", bearer)
        console.print(f"{run['status']:>9}  {run['percent']:5.1f}%  taken {run['taken']}/"
                      f"{run['total']}  processed {run['processed']}  skipped {run['skipped']}"
                      f"  errors {run['errors']}")
        if run["status"] in FINAL:
            _show(run)
            return run
        time.sleep(every)


def _show(run: dict[str, Any]) -> None:
    keys = ("status", "total", "processed", "applied", "duplicates", "skipped", "errors",
            "percent", "pointsMoved", "leftForLaterRun", "startedAt", "finishedAt")
    summary = Table(*keys, title=f"{run['migrationId']} ({'dry run' if run['dryRun'] else 'live'})")
    summary.add_row(*(str(run.get(key)) for key in keys))
    console.print(summary)
    if run.get("firstErrors"):
        errors = Table("eventId", "code", "message", title="first errors")
        for error in run["firstErrors"]:
            errors.add_row(error["eventId"], error["code"], error["message"])
        console.print(errors)
