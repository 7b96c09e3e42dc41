"""``backfill``: the operator's command line for starting, watching and steering runs.

It calls the same HTTP API as curl does (trigger, status and control functions, or the local
gateway), with an ID token from ``--token``/``BACKFILL_TOKEN`` or, on the local stack only, one
minted by the local issuer for ``--as``. Any answer of 400 or above is printed with its status
and body, and the command exits 1.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from backfill_cli.client import (
    PAUSED,
    ApiError,
    BackfillClient,
    MissingEndpoint,
    mint_local_token,
)
from backfill_cli.settings import ClientSettings

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
console = Console()
notes = Console(stderr=True)


def _settings() -> ClientSettings:
    return ClientSettings()


def _local_token(email: str, audience: str | None = None) -> str:
    """A token from the local stack's issuer; refused when no local issuer is configured."""
    settings = _settings()
    if not settings.issuer_url:
        raise typer.BadParameter("no local issuer (BACKFILL_ISSUER_URL): source "
                                 ".local/stack.env, or pass --token on a deployed bundle")
    audience = audience or (settings.operator_audiences[0] if settings.operator_audiences
                            else settings.gateway_url)
    return mint_local_token(settings.issuer_url, email, audience)


@contextlib.contextmanager
def _client(token: str | None, email: str) -> Iterator[BackfillClient]:
    """A client of the configured bundle; a refused call is printed with its status and body
    (and the runs in its way, if any), and the command exits 1."""
    settings = _settings()
    bearer = token or settings.token or _local_token(email)
    try:
        with BackfillClient(settings.endpoints, bearer) as client:
            yield client
    except MissingEndpoint as error:
        raise typer.BadParameter(str(error)) from None
    except ApiError as error:
        console.print(f"[red]{error.status}[/red] {escape(error.text)}", soft_wrap=True)
        if error.blocking:
            console.print(f"runs in the way: {', '.join(error.blocking)} (see `backfill status "
                          "ID`)", soft_wrap=True)
        raise typer.Exit(1) from None


TokenOption = Annotated[str | None, typer.Option(help="ID token (default: BACKFILL_TOKEN)")]
AsOption = Annotated[str, typer.Option("--as", help="local stack only: identity to mint for")]
RunArgument = Annotated[str, typer.Argument(metavar="ID", help="the run's migrationId")]
ReasonOption = Annotated[str | None, typer.Option(
    help="why (kept in the run's status history)")]
ForceOption = Annotated[bool, typer.Option(
    help="start even over an overlapping active run or past the active run limit")]
WaitOption = Annotated[bool, typer.Option(help="watch the run until it ends or is paused")]


@app.command()
def token(
    email: Annotated[str, typer.Option(help="identity to mint a local token for")],
    audience: Annotated[str | None, typer.Option(help="default: the operator audience")] = None,
) -> None:
    """Print a local-stack ID token for EMAIL (the local issuer signs it; production refuses it)."""
    typer.echo(_local_token(email, audience))


@app.command()
def start(
    backfill_type: Annotated[str, typer.Argument(metavar="TYPE",
                                                 help="webhook_replay, reversal_backfill "
                                                      "or ledger_verify")],
    start_date: Annotated[str | None, typer.Option("--start", help="first UTC day, YYYY-MM-DD")]
    = None,
    end_date: Annotated[str | None, typer.Option("--end", help="last UTC day (inclusive)")]
    = None,
    lookback_days: Annotated[int | None, typer.Option(
        min=1, help="the N UTC days ending today (instead of --start and --end)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run/--apply")] = True,
    max_events: Annotated[int | None, typer.Option(help="bound on events taken")] = None,
    max_events_per_second: Annotated[int | None, typer.Option(
        min=1, help="the run's ceiling in events per second (change it later with "
                    "`backfill throttle`)")] = None,
    force: ForceOption = False,
    include_processed: Annotated[bool, typer.Option(
        help="webhook_replay: also take events flagged processed, to repair those whose "
             "ledger entry is missing")] = False,
    repair: Annotated[bool, typer.Option(
        help="ledger_verify: repair what is safe to repair (flags, missing entries, a "
             "drifted wallet), not only report it")] = False,
    event_types: Annotated[list[str] | None, typer.Option(
        "--event-type", help="only events of this type (repeat it for more)")] = None,
    customer_ids: Annotated[list[str] | None, typer.Option(
        "--customer", help="only this customer's events: a canary (repeat it, or @FILE "
                           "with one id per line)")] = None,
    order_ids: Annotated[list[str] | None, typer.Option(
        "--order", help="only this order's events (repeat it, or @FILE)")] = None,
    event_ids: Annotated[list[str] | None, typer.Option(
        "--event", help="only this event (repeat it, or @FILE)")] = None,
    wait: WaitOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Start a run over --start..--end or the last --lookback-days days (a dry run unless
    --apply); --event-type, --customer, --order and --event narrow it to a target."""
    body: dict[str, Any] = {"type": backfill_type, "dryRun": dry_run}
    body.update(_range(start_date, end_date, lookback_days))
    if max_events is not None:
        body["maxEvents"] = max_events
    if max_events_per_second is not None:
        body["maxEventsPerSecond"] = max_events_per_second
    if force:
        body["force"] = True
    if include_processed:
        body["includeProcessed"] = True
    if repair:
        body["repair"] = True
    for field, values in (("eventTypes", event_types), ("customerIds", customer_ids),
                          ("orderIds", order_ids), ("eventIds", event_ids)):
        if values:
            body[field] = _listed(values)
    with _client(token, as_email) as client:
        started = client.start(body)
        console.print_json(json.dumps(started))
        if wait:
            _watch(client, started["migrationId"])


def _listed(values: list[str]) -> list[str]:
    """Values as given, with ``@FILE`` read as one value per line (blank lines ignored)."""
    listed: list[str] = []
    for value in values:
        if value.startswith("@"):
            try:
                lines = Path(value[1:]).read_text().splitlines()
            except OSError as error:
                raise typer.BadParameter(f"cannot read {value[1:]}: {error.strerror}") from None
            listed += [line.strip() for line in lines if line.strip()]
        else:
            listed.append(value)
    return listed


def _range(start_date: str | None, end_date: str | None,
           lookback_days: int | None) -> dict[str, Any]:
    """The request's range: dates or a lookback, exactly one of the two kinds."""
    dated = start_date is not None or end_date is not None
    if lookback_days is not None:
        if dated:
            raise typer.BadParameter("give either --lookback-days or --start and --end, not both",
                                     param_hint="'--lookback-days'")
        return {"lookbackDays": lookback_days}
    if start_date is None or end_date is None:
        raise typer.BadParameter("give --start and --end (both), or --lookback-days",
                                 param_hint="'--start' / '--end'")
    return {"startDate": start_date, "endDate": end_date}


@app.command()
def status(
    migration_id: Annotated[str | None, typer.Argument(help="a run; none: recent runs")] = None,
    watch: Annotated[bool, typer.Option(help="refresh until the run ends or is paused")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON")] = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Show recent runs, or one run's progress."""
    with _client(token, as_email) as client:
        if migration_id is None:
            runs = client.runs()
            if as_json:
                console.print_json(json.dumps(runs))
                return
            table = Table("migrationId", "type", "status", "dryRun", "dates", "total",
                          "createdAt")
            for run in runs:
                table.add_row(run["migrationId"], run["type"], run["status"],
                              str(run["dryRun"]), f"{run['startDate']}..{run['endDate']}",
                              str(run["total"]), run["createdAt"])
            console.print(table)
        elif watch:
            _watch(client, migration_id)
        else:
            run = client.run(migration_id)
            console.print_json(json.dumps(run)) if as_json else _show(run)


@app.command()
def gaps(
    start_date: Annotated[str, typer.Option("--start", help="first UTC day, YYYY-MM-DD")],
    end_date: Annotated[str, typer.Option("--end", help="last UTC day (inclusive)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON")] = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """What a backfill of --start..--end would find to do, per day: the scope check before a
    dry run. Writes nothing."""
    with _client(token, as_email) as client:
        found = client.gaps(start_date, end_date)
    if as_json:
        console.print_json(json.dumps(found))
        return
    table = Table("day", "unprocessed purchases", "unprocessed refunds",
                  "unprocessed chargebacks", "reversals missing", "purchases without entry",
                  "complete")
    for day in found["days"]:
        unprocessed = day["unprocessed"]
        table.add_row(day["date"], str(unprocessed["ON_ORDER_COMPLETED"]),
                      str(unprocessed["ON_REFUND"]), str(unprocessed["ON_CHARGEBACK"]),
                      str(day["reversalsMissing"]), str(day["purchasesWithoutEntry"]),
                      "yes" if day["complete"] else "[yellow]no: more than a scan takes[/]")
    console.print(table)
    for step in found["next"] or ["no gaps found in this range"]:
        console.print(f"next: {escape(step)}", soft_wrap=True)


@app.command()
def pause(migration_id: RunArgument, reason: ReasonOption = None, token: TokenOption = None,
          as_email: AsOption = "ops@example.com") -> None:
    """Pause a pending or running run: its chunks stop at their next page and keep their
    cursors."""
    _steer("pause", migration_id, reason, token, as_email)


@app.command()
def resume(migration_id: RunArgument, reason: ReasonOption = None, token: TokenOption = None,
           as_email: AsOption = "ops@example.com") -> None:
    """Resume a paused run from its chunks' cursors (refused while backfills are switched
    off)."""
    _steer("resume", migration_id, reason, token, as_email)


@app.command()
def cancel(
    migration_id: RunArgument,
    reason: ReasonOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]
    = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Cancel a pending, running or paused run for good: its chunks stop at their next page
    (what they applied stays applied)."""
    if not yes:
        typer.confirm(f"Cancel run {migration_id}? It cannot be resumed afterwards", abort=True)
    _steer("cancel", migration_id, reason, token, as_email)


@app.command()
def throttle(
    migration_id: RunArgument,
    max_events_per_second: Annotated[int | None, typer.Argument(
        min=1, metavar="[EVENTS_PER_SECOND]",
        help="the run's new ceiling; none: lift it (the ramp still holds)")] = None,
    reason: ReasonOption = None,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Change an active run's ceiling in events per second; its chunks take it within a few
    seconds."""
    body: dict[str, Any] = {"maxEventsPerSecond": max_events_per_second}
    if reason:
        body["reason"] = reason
    with _client(token, as_email) as client:
        answer = client.control(migration_id, "throttle", body)
    console.print_json(json.dumps(answer))


def _steer(action: str, migration_id: str, reason: str | None, token: str | None,
           as_email: str) -> None:
    with _client(token, as_email) as client:
        answer = client.control(migration_id, action, {"reason": reason} if reason else None)
    console.print_json(json.dumps(answer))


@app.command()
def retry(
    migration_id: RunArgument,
    code: Annotated[str | None, typer.Option(
        help="only the failures of this error code, e.g. product_not_found")] = None,
    dry_run: Annotated[bool | None, typer.Option(
        "--dry-run/--apply", help="default: as the run retried", show_default=False)] = None,
    force: ForceOption = False,
    wait: WaitOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Start a new run that re-applies the events that failed in an ended run (once their
    cause is fixed)."""
    body: dict[str, Any] = {}
    if code is not None:
        body["code"] = code
    if dry_run is not None:
        body["dryRun"] = dry_run
    if force:
        body["force"] = True
    with _client(token, as_email) as client:
        started = client.control(migration_id, "retry", body or None)
        console.print_json(json.dumps(started))
        if wait:
            _watch(client, started["migrationId"])


@app.command()
def rollback(
    migration_id: RunArgument,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run/--apply", help="a dry run first: a live rollback needs one completed")]
    = True,
    force: Annotated[bool, typer.Option(
        help="roll back without a dry run first, or again after an earlier rollback")] = False,
    wait: WaitOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Start a run that undoes what an ended run wrote: a compensating entry for each of its
    ledger entries (wallets moved with them) and its events unflagged, so a later replay can
    apply them again. A dry run unless --apply."""
    body: dict[str, Any] = {"dryRun": dry_run}
    if force:
        body["force"] = True
    with _client(token, as_email) as client:
        started = client.control(migration_id, "rollback", body)
        console.print_json(json.dumps(started))
        if wait:
            _watch(client, started["migrationId"])


@app.command()
def errors(
    migration_id: RunArgument,
    code: Annotated[str | None, typer.Option(help="only this error code")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of CSV")] = False,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", dir_okay=False, writable=True,
        help="write the report to FILE instead of standard output")] = None,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """A run's failed events, one row each: event, code, message, hint, attempts, chunk."""
    with _client(token, as_email) as client, client.errors(migration_id, code,
                                                           as_json) as report:
        if output is None:
            for text in report:
                typer.echo(text, nl=False)
            if as_json:
                typer.echo()
            return
        with output.open("w", encoding="utf-8", newline="") as file:
            for text in report:
                file.write(text)
    notes.print(f"wrote {output}")


def _watch(client: BackfillClient, migration_id: str, every: float = 1.0) -> dict[str, Any]:
    """Print the run's progress every ``every`` seconds until it ends or is paused."""
    run = client.wait(migration_id, timeout=float("inf"), every=every, progress=_progress)
    _show(run)
    if run["status"] == PAUSED:
        console.print(f"{migration_id} is paused; continue it with `backfill resume "
                      f"{migration_id}`, or end it with `backfill cancel {migration_id}`",
                      soft_wrap=True, markup=False)
    return run


def _progress(run: dict[str, Any]) -> None:
    line = (f"{run['status']:>9}  {run['percent']:5.1f}%  taken {run['taken']}/"
            f"{run['total']}  processed {run['processed']}  skipped {run['skipped']}"
            f"  errors {run['errors']}")
    if run.get("rate"):
        line += f"  {run['rate']} events/s"
    elif run.get("averageRate"):
        line += f"  {run['averageRate']} events/s on average"
    if run.get("etaSeconds") is not None:
        line += f"  ETA {_duration(run['etaSeconds'])}"
    if run.get("ceiling"):
        line += f"  ceiling {run['ceiling']:.0f}/s"
    if run.get("waitingFor") and not run.get("planned"):
        line += f"  waiting for {', '.join(run['waitingFor'])}"
    console.print(line, soft_wrap=True, markup=False)
    if run.get("stalledChunks"):
        console.print(f"  stalled chunks (no checkpoint within their lease): "
                      f"{', '.join(run['stalledChunks'])}", soft_wrap=True, markup=False)


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02}m{secs:02}s" if hours else f"{minutes}m{secs:02}s"


def _show(run: dict[str, Any]) -> None:
    keys = ("status", "statusReason", "total", "processed", "applied", "duplicates", "skipped",
            "errors", "outside", "percent", "pointsMoved", "leftForLaterRun", "rate", "averageRate",
            "etaSeconds", "ceiling", "maxEventsPerSecond", "stalled", "startedAt", "finishedAt")
    summary = Table("field", "value",
                    title=f"{run['migrationId']} ({'dry run' if run['dryRun'] else 'live'})")
    for key in keys:
        if key in run:
            summary.add_row(key, escape(str(run[key])))
    for key in ("retryOf", "rollbackOf", "target"):
        if run.get(key):
            summary.add_row(key, escape(json.dumps(run[key])))
    if run.get("pitrTimestamp"):
        summary.add_row("pitrTimestamp", escape(run["pitrTimestamp"]))
    console.print(summary)
    if run.get("stalledChunks"):
        console.print(f"stalled chunks (the watchdog picks them up): "
                      f"{', '.join(run['stalledChunks'])}", markup=False)
    if run.get("errorCodes"):
        audit = run["type"] == "ledger_verify"
        codes = Table("code", "findings" if audit else "events",
                      title="findings by code" if audit else "errors by code")
        for code, count in run["errorCodes"].items():
            codes.add_row(code, str(count))
        console.print(codes)
        console.print(f"report: backfill errors {run['migrationId']} [--code CODE]; after a fix: "
                      f"backfill retry {run['migrationId']} [--code CODE]", markup=False,
                      soft_wrap=True)
    if run.get("firstErrors"):
        first = Table("eventId", "code", "message", title="first errors")
        for error in run["firstErrors"]:
            first.add_row(error["eventId"], error["code"], escape(str(error["message"])))
        console.print(first)
