"""``backfill``: the operator's command line for starting, watching and steering runs.

It calls the same HTTP API as curl does (trigger, status and control functions, or the local
gateway). Where the bundle is and how to get ID tokens comes from the options before the
command, the environment (BACKFILL_*), a config file profile or Terraform's outputs, in that
order (see backfill_cli.settings); tokens come from --token/BACKFILL_TOKEN, google-auth, an
impersonated service account, gcloud or, on the local stack only, the local issuer (--auth).

With --json a command prints only JSON on stdout, one document a line: its answer (a watched
start, retry or rollback also its run's last status; a refused call the bundle's JSON body);
progress and notes go to stderr. Watching shows a progress bar on a terminal, else a line per
status read.

Exit codes: 0 the command succeeded (and a watched run completed, with or without failed
events); 1 the bundle refused the call (HTTP 400 or above), could not be reached, no token could
be had, or a confirmation was declined; 2 usage or configuration error; 3 the watched run failed;
4 it was cancelled; 5 it was paused; 130 watching was interrupted (the run goes on). `status ID`
without --watch exits 0 whatever the run's status: read it from --json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from pydantic import ValidationError
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
from backfill_cli.settings import ClientSettings, ConfigError
from backfill_cli.tokens import AuthMode, TokenError
from backfill_cli.watch import ExitCode, exit_code, watch

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
console = Console()
notes = Console(stderr=True)


@app.callback()
def main(
    ctx: typer.Context,
    profile: Annotated[str | None, typer.Option(
        help="the config file's profile (default: BACKFILL_PROFILE, else default)")] = None,
    config: Annotated[Path | None, typer.Option(
        dir_okay=False, help="the config file (default: BACKFILL_CONFIG, else "
                             "~/.config/backfill/config.toml)")] = None,
    terraform_outputs: Annotated[Path | None, typer.Option(
        dir_okay=False, help="the URLs from `terraform output -json` saved in FILE")] = None,
    terraform_dir: Annotated[Path | None, typer.Option(
        file_okay=False, help="the URLs from `terraform output -json` run in DIR")] = None,
    auth: Annotated[AuthMode | None, typer.Option(
        help="how to get ID tokens (default: token if BACKFILL_TOKEN is set, else local if "
             "BACKFILL_ISSUER_URL is, else impersonate if a service account is given, else "
             "google)")] = None,
    impersonate_service_account: Annotated[str | None, typer.Option(
        metavar="SA", help="the service account to get tokens as (impersonate, gcloud)")] = None,
    trigger_url: Annotated[str | None, typer.Option(help="the trigger function's URL")] = None,
    status_url: Annotated[str | None, typer.Option(help="the status function's URL")] = None,
    control_url: Annotated[str | None, typer.Option(help="the control function's URL")] = None,
) -> None:
    options = {"profile": profile, "config": config, "terraform_outputs": terraform_outputs,
               "terraform_dir": terraform_dir, "auth": auth,
               "impersonate_service_account": impersonate_service_account,
               "trigger_url": trigger_url, "status_url": status_url, "control_url": control_url}
    # The commands build ClientSettings from these, above the environment and the files.
    ctx.obj = {name: value for name, value in options.items() if value is not None}


@dataclasses.dataclass(frozen=True)
class Output:
    """Where a command writes: with ``as_json``, answers as one JSON document a line on stdout
    and everything else on stderr; without, pretty JSON, tables and progress on stdout."""

    as_json: bool

    @property
    def human(self) -> Console:
        return notes if self.as_json else console

    def answer(self, value: Any) -> None:
        if self.as_json:
            typer.echo(json.dumps(value))
        else:
            if isinstance(value, dict) and isinstance(value.get("deployment"), dict):
                notes.print(banner(value["deployment"]), soft_wrap=True, markup=False,
                            highlight=False)
            console.print_json(json.dumps(value))


def banner(where: dict[str, str]) -> str:
    """The line that names where an answer comes from (every answer carries it)."""
    return (f"[{where.get('environment', '?')}] project {where.get('project', '?')}, "
            f"database {where.get('database', '?')}")


def _settings(ctx: typer.Context, token: str | None = None) -> ClientSettings:
    """The settings of the options before the command (and ``--token``), the environment and
    the files; a bad configuration exits 2, naming what is wrong (never a value)."""
    overrides: dict[str, Any] = dict(ctx.obj or {})
    if token:
        overrides |= {"token": token, "auth": AuthMode.TOKEN}
    try:
        return ClientSettings(**overrides)
    except ConfigError as error:
        _fail(str(error), ExitCode.USAGE)
    except ValidationError as error:
        _fail("; ".join(f"{'.'.join(map(str, problem['loc'])) or 'settings'}: {problem['msg']}"
                        for problem in error.errors()), ExitCode.USAGE)


def _fail(message: str, code: ExitCode) -> NoReturn:
    notes.print(f"error: {message}", soft_wrap=True, markup=False, highlight=False)
    raise typer.Exit(code)


@contextlib.contextmanager
def _client(ctx: typer.Context, token: str | None, email: str,
            out: Output) -> Iterator[BackfillClient]:
    """A client of the configured bundle. A refused call is printed with its status and body
    (and the runs in its way, if any) on stderr, its JSON body on stdout with --json, and the
    command exits 1, as it does when no token could be had or the bundle could not be
    reached."""
    settings = _settings(ctx, token)
    try:
        with BackfillClient(settings.endpoints, settings.token_provider(email)) as client:
            yield client
    except MissingEndpoint as error:
        raise typer.BadParameter(str(error)) from None
    except ApiError as error:
        if out.as_json and error.body:
            typer.echo(json.dumps(error.body))
        notes.print(f"[red]{error.status}[/red] {escape(error.text)}", soft_wrap=True)
        if error.blocking:
            notes.print(f"runs in the way: {', '.join(error.blocking)} (see `backfill status "
                        "ID`)", soft_wrap=True, markup=False)
        raise typer.Exit(ExitCode.REFUSED) from None
    except TokenError as error:
        _fail(f"no ID token: {error}", ExitCode.REFUSED)
    except httpx.TransportError as error:
        _fail(f"could not reach the bundle: {error}", ExitCode.REFUSED)


TokenOption = Annotated[str | None, typer.Option(
    help="ID token for every call (default: BACKFILL_TOKEN, else --auth)")]
AsOption = Annotated[str, typer.Option("--as", help="local stack only: identity to mint for")]
JsonOption = Annotated[bool, typer.Option("--json", help="print only the JSON answer on stdout")]
RunArgument = Annotated[str, typer.Argument(metavar="ID", help="the run's migrationId")]
ReasonOption = Annotated[str | None, typer.Option(
    help="why (kept in the run's status history)")]
WhyOption = Annotated[str | None, typer.Option(
    "--reason", help="why it is started: a ticket or an incident id (required for a live run "
                     "in production)")]
ForceOption = Annotated[bool, typer.Option(
    help="start even over an overlapping active run or past the active run limit")]
# A run's range and mode, as start and recover take them.
StartOption = Annotated[str | None, typer.Option("--start", help="first UTC day, YYYY-MM-DD")]
EndOption = Annotated[str | None, typer.Option("--end", help="last UTC day (inclusive)")]
LookbackOption = Annotated[int | None, typer.Option(
    min=1, help="the N UTC days ending today (instead of --start and --end)")]
DryRunOption = Annotated[bool, typer.Option("--dry-run/--apply")]
EventTypesOption = Annotated[list[str] | None, typer.Option(
    "--event-type", help="only events of this type (repeat it for more)")]
WaitOption = Annotated[bool, typer.Option(
    help="watch the run until it ends or is paused; exit with its code")]
MaxPointsOption = Annotated[int | None, typer.Option(
    min=1, help="guardrail: the points the run may move in all; a page past it pauses the run")]
MaxPointsPerCustomerOption = Annotated[int | None, typer.Option(
    min=1, help="guardrail: the points the run may move of one customer")]
NegativeWalletsOption = Annotated[bool | None, typer.Option(
    "--allow-negative-wallets/--no-negative-wallets", show_default=False,
    help="guardrail: whether a page may take a wallet below zero (default: the bundle's)")]
YesOption = Annotated[bool, typer.Option(
    "--yes", "-y", help="start a live run without asking (scripts)")]


def _confirm_live(client: BackfillClient, what: str, yes: bool,
                  scope: dict[str, Any] | None = None) -> str | None:
    """Ask before a live run, naming the project, database and environment it will change,
    and the completed dry run of the same ``scope`` (type, dates, target) it will be bound to
    (``planOf``: answered), or warn that there is none. Exits 2 without ``--yes`` when nobody
    can answer (no terminal), so a script never goes live by accident: it says ``-y``."""
    where = client.deployment()
    notes.print(f"a LIVE run: {what}, in {banner(where)}", soft_wrap=True, markup=False,
                highlight=False)
    reviewed = None
    if scope is not None:
        reviewed = _reviewed_dry_run(client, scope)
        if reviewed is None:
            notes.print("warning: no completed dry run of this scope (type, dates, target); "
                        "run the same command without --apply first", soft_wrap=True,
                        markup=False, highlight=False)
        else:
            notes.print(f"reviewed dry run: {reviewed} (the run is bound to it: planOf)",
                        soft_wrap=True, markup=False)
    if yes:
        return reviewed
    if not sys.stdin.isatty():
        _fail("a live run is confirmed at a terminal, or with -y (--yes) in scripts",
              ExitCode.USAGE)
    if not typer.confirm(f"change {where.get('environment', '?')} now?", default=False,
                         err=True):
        _fail("not started", ExitCode.USAGE)
    return reviewed


# The types whose live runs are bound to a reviewed dry run (the bundle's
# shared.domain.review.PLANNED_TYPES).
PLANNED_TYPES = ("webhook_replay", "reversal_backfill", "webhook_recovery")


def _reviewed_dry_run(client: BackfillClient, scope: dict[str, Any]) -> str | None:
    """The newest completed dry run of the same type, dates and target, if any."""
    for run in client.runs(limit=50, backfill_type=scope["type"], status="completed"):
        if run.get("dryRun") and all(run.get(key) == scope.get(key)
                                     for key in ("startDate", "endDate", "target")):
            return str(run["migrationId"])
    return None


def _scope(body: dict[str, Any]) -> dict[str, Any]:
    """A start's scope as the runs list records it: dates (a lookback's, from today UTC) and
    target."""
    if "lookbackDays" in body:
        today = dt.datetime.now(dt.UTC).date()
        dates = {"startDate": (today - dt.timedelta(days=body["lookbackDays"] - 1)).isoformat(),
                 "endDate": today.isoformat()}
    else:
        dates = {"startDate": body["startDate"], "endDate": body["endDate"]}
    target = {field: sorted(set(body[field])) for field in
              ("eventTypes", "customerIds", "orderIds", "eventIds") if field in body}
    return {"type": body["type"], **dates, "target": target or None}


@app.command()
def token(
    ctx: typer.Context,
    email: Annotated[str, typer.Option(help="identity to mint a local token for")],
    audience: Annotated[str | None, typer.Option(help="default: the operator audience")] = None,
    as_json: JsonOption = False,
) -> None:
    """Print a local-stack ID token for EMAIL (the local issuer signs it; production refuses it)."""
    settings = _settings(ctx)
    if not settings.issuer_url:
        raise typer.BadParameter("no local issuer (BACKFILL_ISSUER_URL): source "
                                 ".local/stack.env; a deployed bundle takes Google's tokens")
    audience = audience or (settings.operator_audiences[0] if settings.operator_audiences
                            else settings.gateway_url)
    try:
        minted = mint_local_token(settings.issuer_url, email, audience)
    except httpx.HTTPError as error:
        _fail(f"the local issuer minted no token: {error}", ExitCode.REFUSED)
    if as_json:
        Output(as_json).answer({"token": minted, "email": email, "audience": audience})
    else:
        typer.echo(minted)


@app.command()
def start(
    ctx: typer.Context,
    backfill_type: Annotated[str, typer.Argument(metavar="TYPE",
                                                 help="webhook_replay, reversal_backfill, "
                                                      "ledger_verify or webhook_recovery")],
    start_date: StartOption = None,
    end_date: EndOption = None,
    lookback_days: LookbackOption = None,
    dry_run: DryRunOption = True,
    max_events: Annotated[int | None, typer.Option(help="bound on events taken")] = None,
    max_events_per_second: Annotated[int | None, typer.Option(
        min=1, help="the run's ceiling in events per second (change it later with "
                    "`backfill throttle`)")] = None,
    max_points: MaxPointsOption = None,
    max_points_per_customer: MaxPointsPerCustomerOption = None,
    negative_wallets: NegativeWalletsOption = None,
    force: ForceOption = False,
    include_processed: Annotated[bool, typer.Option(
        help="webhook_replay: also take events flagged processed, to repair those whose "
             "ledger entry is missing")] = False,
    repair: Annotated[bool, typer.Option(
        help="ledger_verify: repair what is safe to repair (flags, missing entries, a "
             "drifted wallet), not only report it")] = False,
    event_types: EventTypesOption = None,
    customer_ids: Annotated[list[str] | None, typer.Option(
        "--customer", help="only this customer's events: a canary (repeat it, or @FILE "
                           "with one id per line)")] = None,
    order_ids: Annotated[list[str] | None, typer.Option(
        "--order", help="only this order's events (repeat it, or @FILE)")] = None,
    event_ids: Annotated[list[str] | None, typer.Option(
        "--event", help="only this event (repeat it, or @FILE)")] = None,
    reason: WhyOption = None,
    wait: WaitOption = False,
    yes: YesOption = False,
    as_json: JsonOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Start a run over --start..--end or the last --lookback-days days (a dry run unless
    --apply, which asks first: -y in scripts); --event-type, --customer, --order and --event
    narrow it to a target."""
    body: dict[str, Any] = {"type": backfill_type, "dryRun": dry_run}
    body.update(_range(start_date, end_date, lookback_days))
    if reason:
        body["reason"] = reason
    if max_events is not None:
        body["maxEvents"] = max_events
    if max_events_per_second is not None:
        body["maxEventsPerSecond"] = max_events_per_second
    body.update(_caps(max_points, max_points_per_customer, negative_wallets))
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
    out = Output(as_json)
    with _client(ctx, token, as_email, out) as client:
        if not dry_run:
            scope = _scope(body)
            plan = _confirm_live(client, f"{backfill_type} over {scope['startDate']}.."
                                         f"{scope['endDate']}", yes, scope)
            if plan is not None and backfill_type in PLANNED_TYPES:
                body["planOf"] = plan
        started = client.start(body)
        out.answer(started)
        if wait:
            _watch(client, started["migrationId"], out)


@app.command()
def recover(
    ctx: typer.Context,
    start_date: StartOption = None,
    end_date: EndOption = None,
    lookback_days: LookbackOption = None,
    dry_run: DryRunOption = True,
    event_types: EventTypesOption = None,
    wait: WaitOption = False,
    yes: YesOption = False,
    as_json: JsonOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Recover the webhooks PayNow has and webhookEvents lacks, then replay them: with --apply,
    a live webhook_recovery and a live webhook_replay of the same days (the replay waits for the
    recovery, then applies what it stored); without, the recovery's dry run alone (what it
    would store, by day and type: a replay's dry run has nothing to read before it is stored).
    """
    span = _range(start_date, end_date, lookback_days)
    body: dict[str, Any] = {"type": "webhook_recovery", "dryRun": dry_run, **span}
    if event_types:
        body["eventTypes"] = _listed(event_types)
    out = Output(as_json)
    with _client(ctx, token, as_email, out) as client:
        if not dry_run:
            scope = _scope(body)
            plan = _confirm_live(client, f"webhook_recovery and webhook_replay over "
                                         f"{scope['startDate']}..{scope['endDate']}", yes, scope)
            if plan is not None:
                body["planOf"] = plan
        recovery = client.start(body)
        out.answer(recovery)
        replay = None
        if not dry_run:
            replay = client.start({"type": "webhook_replay", "dryRun": False, **span,
                                   **({"planOf": body["planOf"]} if "planOf" in body else {}),
                                   **({"eventTypes": body["eventTypes"]} if event_types
                                      else {})})
            out.answer(replay)
        else:
            out.human.print("a dry run: nothing stored, nothing replayed; read what it would "
                            f"store with `backfill status {recovery['migrationId']}`, then run "
                            "this again with --apply", soft_wrap=True, markup=False)
        if wait:
            _watch(client, recovery["migrationId"], out, final=replay is None)
            if replay is not None:
                _watch(client, replay["migrationId"], out)


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
    ctx: typer.Context,
    migration_id: Annotated[str | None, typer.Argument(help="a run; none: recent runs")] = None,
    watch_run: Annotated[bool, typer.Option(
        "--watch", help="refresh until the run ends or is paused; exit with its code")] = False,
    as_json: JsonOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Show recent runs, or one run's progress."""
    out = Output(as_json)
    with _client(ctx, token, as_email, out) as client:
        if migration_id is None:
            runs = client.runs()
            if as_json:
                out.answer(runs)
                return
            table = Table("migrationId", "type", "status", "dryRun", "dates", "total",
                          "createdAt")
            for run in runs:
                table.add_row(run["migrationId"], run["type"], run["status"],
                              str(run["dryRun"]), f"{run['startDate']}..{run['endDate']}",
                              str(run["total"]), run["createdAt"])
            console.print(table)
        elif watch_run:
            _watch(client, migration_id, out)
        else:
            run = client.run(migration_id)
            out.answer(run) if as_json else _show(run)


@app.command()
def gaps(
    ctx: typer.Context,
    start_date: Annotated[str, typer.Option("--start", help="first UTC day, YYYY-MM-DD")],
    end_date: Annotated[str, typer.Option("--end", help="last UTC day (inclusive)")],
    provider: Annotated[bool, typer.Option(
        "--provider", help="also ask PayNow's webhook history what never arrived (costs API "
                           "calls)")] = False,
    as_json: JsonOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """What a backfill of --start..--end would find to do, per day: the scope check before a
    dry run. Writes nothing."""
    out = Output(as_json)
    with _client(ctx, token, as_email, out) as client:
        found = client.gaps(start_date, end_date, provider)
    if as_json:
        out.answer(found)
        return
    table = Table("day", *(["never arrived (PayNow / stored)"] if provider else []),
                  "unprocessed purchases", "unprocessed refunds",
                  "unprocessed chargebacks", "reversals missing", "purchases without entry",
                  "complete")
    for day in found["days"]:
        unprocessed = day["unprocessed"]
        arrived = day.get("provider") or {}
        table.add_row(day["date"], *([f"{arrived['neverArrived']} ({arrived['paynow']} / "
                                      f"{arrived['stored']})"] if provider else []),
                      str(unprocessed["ON_ORDER_COMPLETED"]),
                      str(unprocessed["ON_REFUND"]), str(unprocessed["ON_CHARGEBACK"]),
                      str(day["reversalsMissing"]), str(day["purchasesWithoutEntry"]),
                      "yes" if day["complete"] else "[yellow]no: more than a scan takes[/]")
    console.print(table)
    for step in found["next"] or ["no gaps found in this range"]:
        console.print(f"next: {escape(step)}", soft_wrap=True)


@app.command()
def trace(
    ctx: typer.Context,
    customer_id: Annotated[str | None, typer.Option(
        "--customer", help="a customer (\"my points never arrived\")")] = None,
    order_id: Annotated[str | None, typer.Option("--order", help="an order")] = None,
    event_id: Annotated[str | None, typer.Option("--event", help="a webhook event")] = None,
    as_json: JsonOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """What happened to one customer, order or event, in time order: its webhook events and
    their state, its ledger entries, its wallet against the sum of its entries, and every run
    that touched them (with what it did). Writes nothing."""
    given = [(field, value) for field, value in (
        ("customerId", customer_id), ("orderId", order_id), ("eventId", event_id)) if value]
    if len(given) != 1:
        _fail("give exactly one of --customer, --order or --event", ExitCode.USAGE)
    out = Output(as_json)
    with _client(ctx, token, as_email, out) as client:
        found = client.trace(*given[0])
    if as_json:
        out.answer(found)
        return
    for wallet in found["wallets"]:
        state = "[green]matches[/]" if wallet["matches"] else "[red]DOES NOT MATCH[/]"
        console.print(f"wallet {escape(wallet['customerId'])}: {wallet['balance']} points; "
                      f"sum of its entries {wallet['entriesSum']}: {state}", soft_wrap=True)
    table = Table("at (UTC)", "what", "id", "it says")
    for item in found["timeline"]:
        table.add_row(item["at"] or "-", item["kind"], escape(item["id"]), escape(item["what"]))
    console.print(table)
    runs = Table("run", "type", "status", "dry run", "what it did")
    for run in found["runs"]:
        runs.add_row(escape(run["migrationId"]), run["type"] or "-", run["status"] or "-",
                     "yes" if run["dryRun"] else "no", escape("; ".join(
                         f"{deed['what']} {deed.get('eventId') or deed.get('entryId') or ''}"
                         + (f" ({deed['code']})" if deed.get("code") else "")
                         for deed in run["did"])))
    console.print(runs)
    if not found["complete"]:
        console.print("[yellow]more documents than a trace reads: the lists are cut[/]")


# Many runs at once, instead of one ID (pause, resume, cancel).
AllOption = Annotated[bool, typer.Option("--all", help="every active run (instead of an ID)")]
TypeFilterOption = Annotated[str | None, typer.Option(
    "--type", help="the active runs of this type (instead of an ID)")]
StartFilterOption = Annotated[str | None, typer.Option(
    "--start", help="with --end: the active runs overlapping these days (instead of an ID)")]
EndFilterOption = Annotated[str | None, typer.Option("--end", help="see --start")]
OptionalRun = Annotated[str | None, typer.Argument(
    metavar="[ID]", help="the run's migrationId (or --all, --type, --start/--end)")]


def _filter(migration_id: str | None, every: bool, backfill_type: str | None,
            start_date: str | None, end_date: str | None) -> dict[str, Any] | None:
    """The filter of a many-run pause, resume or cancel; None: one run, by its ID."""
    given: dict[str, Any] = {key: value for key, value in (
        ("type", backfill_type), ("startDate", start_date), ("endDate", end_date))
        if value is not None}
    if every:
        given["all"] = True
    if migration_id is not None and given:
        raise typer.BadParameter("give a run's ID, or --all / --type / --start --end, not both")
    if migration_id is None and not given:
        raise typer.BadParameter("give a run's ID, or --all, --type or --start/--end")
    return given or None


def _steer_many(ctx: typer.Context, action: str, body: dict[str, Any], reason: str | None,
                token: str | None, as_email: str, out: Output) -> None:
    with _client(ctx, token, as_email, out) as client:
        answer = client.steer_all(action, {**body, **({"reason": reason} if reason else {})})
    out.answer(answer)


@app.command()
def pause(ctx: typer.Context, migration_id: OptionalRun = None, reason: ReasonOption = None,
          every: AllOption = False, backfill_type: TypeFilterOption = None,
          start_date: StartFilterOption = None, end_date: EndFilterOption = None,
          as_json: JsonOption = False, token: TokenOption = None,
          as_email: AsOption = "ops@example.com") -> None:
    """Pause a pending or running run (or every one of a filter): its chunks stop at their
    next page and keep their cursors."""
    many = _filter(migration_id, every, backfill_type, start_date, end_date)
    if many is not None:
        _steer_many(ctx, "pause", many, reason, token, as_email, Output(as_json))
    else:
        assert migration_id is not None
        _steer(ctx, "pause", migration_id, reason, token, as_email, Output(as_json))


@app.command()
def approve(ctx: typer.Context, migration_id: RunArgument, reason: ReasonOption = None,
            as_json: JsonOption = False, token: TokenOption = None,
            as_email: AsOption = "ops@example.com") -> None:
    """Approve a live run that awaits approval (an approver who did not start it): its chunks
    start."""
    _steer(ctx, "approve", migration_id, reason, token, as_email, Output(as_json))


@app.command()
def preflight(
    ctx: typer.Context,
    backfill_type: Annotated[str, typer.Argument(metavar="TYPE", help="the live run's type")],
    start_date: Annotated[str, typer.Option("--start", help="first UTC day, YYYY-MM-DD")],
    end_date: Annotated[str, typer.Option("--end", help="last UTC day (inclusive)")],
    as_json: JsonOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """What to know before a live run: the switch, the queue, point-in-time recovery, the
    indexes, alerting, products the range's purchases name that the catalog lacks, and how
    long it would take. Exits 1 when a check fails. Writes nothing."""
    out = Output(as_json)
    with _client(ctx, token, as_email, out) as client:
        answer = client.preflight(backfill_type, start_date, end_date)
    if as_json:
        out.answer(answer)
    else:
        table = Table("check", "status", "detail", "what to do",
                      title=f"preflight of {backfill_type} {start_date}..{end_date}: "
                            f"{answer['result']}")
        for check in answer["checks"]:
            colour = {"pass": "green", "warn": "yellow", "fail": "red"}[check["status"]]
            table.add_row(check["check"], f"[{colour}]{check['status']}[/{colour}]",
                          escape(check["detail"]), escape(check["action"]))
        if isinstance(answer.get("deployment"), dict):
            notes.print(banner(answer["deployment"]), markup=False, highlight=False)
        console.print(table)
    if answer["result"] == "fail":
        raise typer.Exit(ExitCode.REFUSED)


@app.command()
def switch(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Argument(
        metavar="[on|off]", help="off: every active run paused, nothing starts or resumes; "
                                 "on: runs may start and resume again; none: show it")] = None,
    reason: Annotated[str | None, typer.Option(help="why (required to switch off)")] = None,
    as_json: JsonOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """The kill switch, stored (no redeploy): show it, or switch backfills off or on."""
    if state not in (None, "on", "off"):
        raise typer.BadParameter("on or off (or nothing, to show it)")
    if state == "off" and not reason:
        raise typer.BadParameter("say why with --reason: everyone it refuses reads it")
    out = Output(as_json)
    with _client(ctx, token, as_email, out) as client:
        answer = client.switch(None if state is None else state == "on", reason or "")
    out.answer(answer)
    if state == "on":
        out.human.print("runs stay paused: `backfill resume --all` resumes them", markup=False)


@app.command()
def resume(
    ctx: typer.Context,
    migration_id: OptionalRun = None,
    reason: ReasonOption = None,
    every: AllOption = False,
    backfill_type: TypeFilterOption = None,
    start_date: StartFilterOption = None,
    end_date: EndFilterOption = None,
    max_points: MaxPointsOption = None,
    max_points_per_customer: MaxPointsPerCustomerOption = None,
    negative_wallets: NegativeWalletsOption = None,
    force: Annotated[bool, typer.Option(
        help="lift every guardrail (maxPoints, maxPointsPerCustomer, negative wallets) for the "
             "rest of the run")] = False,
    as_json: JsonOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Resume a paused run from its chunks' cursors (refused while backfills are switched
    off); a run a guardrail paused goes on with a raised cap, or --force."""
    many = _filter(migration_id, every, backfill_type, start_date, end_date)
    body: dict[str, Any] = {"reason": reason} if reason else {}
    body.update(_caps(max_points, max_points_per_customer, negative_wallets))
    if force:
        body["force"] = True
    out = Output(as_json)
    if many is not None:
        if len(body) > (1 if reason else 0):
            raise typer.BadParameter("guardrails are raised one run at a time: give its ID")
        _steer_many(ctx, "resume", many, reason, token, as_email, out)
        return
    assert migration_id is not None
    with _client(ctx, token, as_email, out) as client:
        answer = client.control(migration_id, "resume", body or None)
    out.answer(answer)


def _caps(max_points: int | None, per_customer: int | None,
          negative_wallets: bool | None) -> dict[str, Any]:
    """The guardrail fields of a start or resume body that were given."""
    return {field: value for field, value in (
        ("maxPoints", max_points), ("maxPointsPerCustomer", per_customer),
        ("allowNegativeWallets", negative_wallets)) if value is not None}


@app.command()
def cancel(
    ctx: typer.Context,
    migration_id: OptionalRun = None,
    reason: ReasonOption = None,
    every: AllOption = False,
    backfill_type: TypeFilterOption = None,
    start_date: StartFilterOption = None,
    end_date: EndFilterOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]
    = False,
    as_json: JsonOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Cancel a pending, running or paused run for good: its chunks stop at their next page
    (what they applied stays applied)."""
    many = _filter(migration_id, every, backfill_type, start_date, end_date)
    what = f"run {migration_id}" if many is None else "every active run of the filter"
    if not yes:
        # On stderr: stdout carries only the answer.
        typer.confirm(f"Cancel {what}? It cannot be resumed afterwards", abort=True, err=True)
    if many is not None:
        _steer_many(ctx, "cancel", many, reason, token, as_email, Output(as_json))
        return
    assert migration_id is not None
    _steer(ctx, "cancel", migration_id, reason, token, as_email, Output(as_json))


@app.command()
def throttle(
    ctx: typer.Context,
    migration_id: RunArgument,
    max_events_per_second: Annotated[int | None, typer.Argument(
        min=1, metavar="[EVENTS_PER_SECOND]",
        help="the run's new ceiling; none: lift it (the ramp still holds)")] = None,
    reason: ReasonOption = None,
    as_json: JsonOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Change an active run's ceiling in events per second; its chunks take it within a few
    seconds."""
    body: dict[str, Any] = {"maxEventsPerSecond": max_events_per_second}
    if reason:
        body["reason"] = reason
    out = Output(as_json)
    with _client(ctx, token, as_email, out) as client:
        answer = client.control(migration_id, "throttle", body)
    out.answer(answer)


def _steer(ctx: typer.Context, action: str, migration_id: str, reason: str | None,
           token: str | None, as_email: str, out: Output) -> None:
    with _client(ctx, token, as_email, out) as client:
        answer = client.control(migration_id, action, {"reason": reason} if reason else None)
    out.answer(answer)


@app.command()
def retry(
    ctx: typer.Context,
    migration_id: RunArgument,
    code: Annotated[str | None, typer.Option(
        help="only the failures of this error code, e.g. product_not_found")] = None,
    dry_run: Annotated[bool | None, typer.Option(
        "--dry-run/--apply", help="default: as the run retried", show_default=False)] = None,
    force: ForceOption = False,
    wait: WaitOption = False,
    yes: YesOption = False,
    as_json: JsonOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Start a new run that re-applies the events that failed in an ended run (once their
    cause is fixed). A live retry (--apply, or the default of a live run's) asks first."""
    body: dict[str, Any] = {}
    if code is not None:
        body["code"] = code
    if dry_run is not None:
        body["dryRun"] = dry_run
    if force:
        body["force"] = True
    _start_by_control(ctx, migration_id, "retry", body or None, wait, Output(as_json), token,
                      as_email, yes, live=None if dry_run is None else not dry_run)


@app.command()
def rollback(
    ctx: typer.Context,
    migration_id: RunArgument,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run/--apply", help="a dry run first: a live rollback needs one completed")]
    = True,
    force: Annotated[bool, typer.Option(
        help="roll back without a dry run first, or again after an earlier rollback")] = False,
    customer_ids: Annotated[list[str] | None, typer.Option(
        "--customer", help="only this customer's entries (repeat it, or @FILE with one id "
                           "per line)")] = None,
    order_ids: Annotated[list[str] | None, typer.Option(
        "--order", help="only this order's entries (repeat it, or @FILE)")] = None,
    reason: WhyOption = None,
    wait: WaitOption = False,
    yes: YesOption = False,
    as_json: JsonOption = False,
    token: TokenOption = None,
    as_email: AsOption = "ops@example.com",
) -> None:
    """Start a run that undoes what an ended run wrote: a compensating entry for each of its
    ledger entries (wallets moved with them) and its events unflagged, so a later replay can
    apply them again; --customer and --order undo only theirs, leaving the rest as it is. A
    dry run unless --apply (which needs a dry run of the same scope first)."""
    body: dict[str, Any] = {"dryRun": dry_run}
    if force:
        body["force"] = True
    for field, values in (("customerIds", customer_ids), ("orderIds", order_ids)):
        if values:
            body[field] = _listed(values)
    if reason:
        body["reason"] = reason
    _start_by_control(ctx, migration_id, "rollback", body, wait, Output(as_json), token,
                      as_email, yes, live=not dry_run)


def _start_by_control(ctx: typer.Context, migration_id: str, action: str,
                      body: dict[str, Any] | None, wait: bool, out: Output, token: str | None,
                      as_email: str, yes: bool, live: bool | None) -> None:
    """Start a run through run control (retry, rollback): ask first when it is live (None:
    as the run it starts from), print it, and watch it if asked."""
    with _client(ctx, token, as_email, out) as client:
        if live is None:
            live = not client.run(migration_id).get("dryRun", True)
        if live:
            _confirm_live(client, f"{action} of {migration_id}", yes)
        started = client.control(migration_id, action, body)
        out.answer(started)
        if wait:
            _watch(client, started["migrationId"], out)


@app.command()
def errors(
    ctx: typer.Context,
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
    with (_client(ctx, token, as_email, Output(as_json)) as client,
          client.errors(migration_id, code, as_json) as report):
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


def _watch(client: BackfillClient, migration_id: str, out: Output, final: bool = True) -> None:
    """Show the run's progress until it ends or is paused (a bar on a terminal, else a line per
    status read), then its last status; exit with the run's code unless it completed (or, not
    ``final``, unless it completed with no failure: another run is watched next)."""
    try:
        run = watch(client, migration_id, out.human, bar=not out.as_json and console.is_terminal)
    except KeyboardInterrupt:
        _fail(f"stopped watching; {migration_id} goes on (`backfill status {migration_id} "
              "--watch`)", ExitCode.INTERRUPTED)
    out.answer(run) if out.as_json else _show(run)
    if run["status"] == PAUSED:
        out.human.print(f"{migration_id} is paused; continue it with `backfill resume "
                        f"{migration_id}`, or end it with `backfill cancel {migration_id}`",
                        soft_wrap=True, markup=False)
    if run["status"] == "awaiting_approval":
        out.human.print(f"{migration_id} awaits approval: another approver runs `backfill "
                        f"approve {migration_id}`", soft_wrap=True, markup=False)
    if (code := exit_code(run)) is not ExitCode.OK:
        raise typer.Exit(code)
    if not final and run.get("errors"):
        out.human.print(f"{migration_id} completed with failed items: read them with `backfill "
                        f"errors {migration_id}` before what follows", soft_wrap=True,
                        markup=False)


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
    if run.get("tallies"):
        types = sorted({name for day in run["tallies"].values() for name in day})
        tallied = Table("day", *types, title=("would store" if run["dryRun"] else "stored")
                        + " by day and type")
        for day, counts in run["tallies"].items():
            tallied.add_row(day, *(str(counts.get(name, 0)) for name in types))
        console.print(tallied)
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
