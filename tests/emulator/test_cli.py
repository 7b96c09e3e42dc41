"""The ``backfill`` command line against the real local stack: every command goes through the
gateway's trigger, status and control functions, with tokens minted by the local issuer, and
the data is checked in Firestore.

Runs that must stay put while a test steers them are started with the Cloud Tasks queue paused
(``held_tasks``), so no task can start or finish them under the test's feet. A run watched while
another command steers it is watched by the installed ``backfill`` script in a process of its
own (``watching``), as a shell script would.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.cloud import firestore, tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from typer.testing import CliRunner, Result

from backfill_cli.cli import app
from emulators.stack import Stack
from shared.adapters import schema
from tests import data
from tests.conftest import OPERATOR

pytestmark = pytest.mark.emulator

RANGE = ("--start", "2025-01-01", "--end", "2025-01-03")
COLUMNS = ["eventId", "eventType", "code", "message", "hint", "attempts", "chunkId", "at",
           "resolvedBy", "subject", "repaired", "wouldRepair"]
CLIENT_ENV = ("BACKFILL_GATEWAY_URL", "BACKFILL_ISSUER_URL", "BACKFILL_OPERATOR_AUDIENCES")
# Would point the CLI elsewhere if the developer's shell had them set.
FOREIGN_ENV = ("BACKFILL_TOKEN", "BACKFILL_TRIGGER_URL", "BACKFILL_STATUS_URL",
               "BACKFILL_CONTROL_URL")


class Cli:
    """``backfill ARGS...`` in process, as the operator would type it."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.runner = CliRunner()

    def run(self, *args: str, answer: str | None = None) -> Result:
        return self.runner.invoke(app, list(args), input=answer)

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.exit_code == 0, result.output
        return result.stdout

    def json(self, *args: str) -> Any:
        """The command's JSON answer (the first JSON value it printed)."""
        value, _ = json.JSONDecoder().raw_decode(self.ok(*args).lstrip())
        return value

    def start(self, *args: str) -> str:
        started = self.json("start", "webhook_replay", *args)
        assert started["status"] == "pending"
        migration_id: str = started["migrationId"]
        return migration_id

    def run_status(self, migration_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.json("status", migration_id, "--json")
        return run


@pytest.fixture
def cli(stack: Stack, stack_env: dict[str, str], clean: firestore.Client,
        monkeypatch: pytest.MonkeyPatch) -> Cli:
    stack.wait_idle(timeout=60)
    for name in FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in CLIENT_ENV:
        monkeypatch.setenv(name, stack_env[name])
    monkeypatch.setenv("COLUMNS", "200")  # tables wide enough to show whole run ids
    return Cli(stack)


@contextlib.contextmanager
def held_tasks(stack_env: dict[str, str]) -> Iterator[None]:
    """The chunk queue paused: tasks are accepted but none is delivered until the block ends."""
    channel = grpc.insecure_channel(stack_env["CLOUD_TASKS_EMULATOR_HOST"])
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    queue = client.queue_path(stack_env["BACKFILL_PROJECT_ID"],
                              stack_env["BACKFILL_TASKS_LOCATION"],
                              stack_env["BACKFILL_TASKS_QUEUE"])
    client.pause_queue(name=queue)
    try:
        yield
    finally:
        client.resume_queue(name=queue)
        channel.close()


def plain(text: str) -> str:
    """Output with rich's panel borders and line breaks folded into single spaces."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def moved(run: dict[str, Any], to: str) -> dict[str, Any]:
    """The run's status history entry of its (last) move to ``to``."""
    entry: dict[str, Any] = [move for move in run["statusHistory"] if move["to"] == to][-1]
    return entry


def seed_purchases(db: firestore.Client, count: int = 30, unknown: int = 0) -> None:
    """``count`` purchases of product p1 over three days, and ``unknown`` of a retired one."""
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(count, days=3))
    data.put(db, *(data.purchase(f"bad{n}", f"obad{n}", data.at(2, 600 + n),
                                 lines=[("retired", 1)]) for n in range(unknown)))


def test_start_applies_a_range_and_status_reports_it(cli: Cli, db: firestore.Client) -> None:
    seed_purchases(db, 30)

    migration_id = cli.start(*RANGE, "--apply", "-y")
    cli.stack.wait_idle(timeout=120)
    run = cli.run_status(migration_id)
    table = cli.ok("status")
    shown = cli.ok("status", migration_id)

    assert (run["status"], run["dryRun"], run["applied"], run["errors"]) == (
        "completed", False, 30, 0)
    assert (run["startDate"], run["endDate"]) == ("2025-01-01", "2025-01-03")
    assert run["stalled"] is False and run["etaSeconds"] is None
    assert migration_id in table
    assert "completed" in shown and "statusReason" in shown
    assert len(data.credited_orders(db)) == 30
    data.assert_ledger_consistent(db)


def test_a_live_start_asks_naming_the_deployment_and_its_reviewed_dry_run(
        cli: Cli, db: firestore.Client, stack_env: dict[str, str]) -> None:
    seed_purchases(db, 6)
    where = f"[local] project {stack_env['BACKFILL_PROJECT_ID']}, database (default)"

    # No terminal and no -y: nothing starts (a script never goes live by accident).
    refused = cli.run("start", "webhook_replay", *RANGE, "--apply")
    assert refused.exit_code == 2, refused.output
    assert where in plain(refused.stderr) and "-y (--yes)" in refused.stderr
    assert "no completed dry run of this scope" in plain(refused.stderr)
    assert not list(db.collection(schema.RUNS).stream())
    # Answered "n" at the question: nothing starts either.
    declined = cli.run("start", "webhook_replay", *RANGE, "--apply", answer="n\n")
    assert declined.exit_code != 0 and not list(db.collection(schema.RUNS).stream())

    dry = cli.start(*RANGE)
    cli.stack.wait_idle(timeout=120)
    live = cli.run("start", "webhook_replay", *RANGE, "--apply", "-y")

    assert live.exit_code == 0, live.output
    assert f"reviewed dry run: {dry}" in live.stderr and where in plain(live.stderr)
    assert cli.run_status(json.JSONDecoder().raw_decode(live.stdout.lstrip())[0][
        "migrationId"])["planOf"]["migrationId"] == dry
    # Every answer names where it comes from; the banner says it before the answer.
    started = json.JSONDecoder().raw_decode(live.stdout.lstrip())[0]
    assert started["dryRun"] is False
    assert started["deployment"]["project"] == stack_env["BACKFILL_PROJECT_ID"]


def test_start_with_wait_watches_the_run_to_its_end(cli: Cli, db: firestore.Client) -> None:
    seed_purchases(db, 30)

    output = cli.ok("start", "webhook_replay", *RANGE, "--apply", "-y", "--wait")

    assert re.search(r"^\s*completed\s+100\.0%\s+taken 30/30", output, re.MULTILINE), output
    assert len(data.credited_orders(db)) == 30


def test_start_with_include_processed_repairs_processed_purchases_without_entries(
        cli: Cli, db: firestore.Client) -> None:
    data.product(db, "p1", 10)
    data.put(db, *(data.purchase(f"lost{n}", f"olost{n}", data.at(1, n), processed=True)
                   for n in range(5)))

    migration_id = cli.start(*RANGE, "--apply", "-y", "--include-processed")
    cli.stack.wait_idle(timeout=120)

    run = cli.run_status(migration_id)
    assert (run["status"], run["includeProcessed"], run["applied"]) == ("completed", True, 5)
    assert len(data.credited_orders(db)) == 5
    data.assert_ledger_consistent(db)


def test_start_of_a_canary_reads_its_customers_from_a_file(
        cli: Cli, db: firestore.Client, tmp_path: Path) -> None:
    seed_purchases(db, 30)
    customers = tmp_path / "canary.txt"
    customers.write_text("c1\n\nc2\n")

    migration_id = cli.start(*RANGE, "--apply", "-y", "--customer", f"@{customers}",
                             "--event-type", "ON_ORDER_COMPLETED")
    cli.stack.wait_idle(timeout=120)

    run = cli.run_status(migration_id)
    assert run["target"] == {"customerIds": ["c1", "c2"], "eventTypes": ["ON_ORDER_COMPLETED"]}
    assert (run["status"], run["applied"], run["outside"]) == ("completed", 9, 21)
    assert set(data.assert_ledger_consistent(db)) == {"c1", "c2"}


def test_rollback_dry_run_first_then_applied_undoes_a_run(
        cli: Cli, db: firestore.Client) -> None:
    seed_purchases(db, 12)
    migration_id = cli.start(*RANGE, "--apply", "-y")
    cli.stack.wait_idle(timeout=120)

    refused = cli.run("rollback", migration_id, "--apply", "-y")
    dry = cli.json("rollback", migration_id)
    cli.stack.wait_idle(timeout=120)
    live = cli.json("rollback", migration_id, "--apply", "-y")
    cli.stack.wait_idle(timeout=120)

    assert refused.exit_code == 1 and "dry-run the rollback" in plain(refused.output)
    assert (dry["dryRun"], live["dryRun"]) == (True, False)
    assert dry["rollbackOf"] == {"migrationId": migration_id, "entries": 12}
    run = cli.run_status(live["migrationId"])
    assert (run["type"], run["status"], run["applied"]) == ("rollback", "completed", 12)
    assert set(data.assert_ledger_consistent(db).values()) == {0}
    assert not any(event["processed"] for event in data.documents(db, schema.EVENTS).values())


def test_a_partial_rollback_by_customer_undoes_only_that_customer(
        cli: Cli, db: firestore.Client) -> None:
    seed_purchases(db, 12)  # c1 bought orders 1 and 8: 20 and 30 points
    migration_id = cli.start(*RANGE, "--apply", "-y")
    cli.stack.wait_idle(timeout=120)
    wallets = data.assert_ledger_consistent(db)

    dry = cli.json("rollback", migration_id, "--customer", "c1")
    cli.stack.wait_idle(timeout=120)
    live = cli.json("rollback", migration_id, "--customer", "c1", "--apply", "-y")
    cli.stack.wait_idle(timeout=120)

    assert dry["dryRun"] and not live["dryRun"]
    run = cli.run_status(live["migrationId"])
    assert run["target"] == {"customerIds": ["c1"]}
    assert (run["status"], run["applied"], run["outside"]) == ("completed", 2, 10)
    assert data.assert_ledger_consistent(db) == {**wallets, "c1": 0}
    assert wallets["c1"] == 50


def test_trace_shows_a_customers_history_as_a_table_and_as_json(
        cli: Cli, db: firestore.Client) -> None:
    seed_purchases(db, 12)  # c1 bought orders 1 and 8
    migration_id = cli.start(*RANGE, "--apply", "-y")
    cli.stack.wait_idle(timeout=120)

    table = plain(cli.ok("trace", "--customer", "c1"))
    found = cli.json("trace", "--customer", "c1", "--json")
    refused = cli.run("trace", "--customer", "c1", "--order", "oe00001")

    assert "wallet c1: 50 points; sum of its entries 50: matches" in table
    assert migration_id in table and "purchase_oe00001" in table
    assert [event["eventId"] for event in found["events"]] == ["e00001", "e00008"]
    assert [run["migrationId"] for run in found["runs"]] == [migration_id]
    assert refused.exit_code == 2
    assert "exactly one of --customer, --order or --event" in plain(refused.output)


def test_gaps_show_the_scope_per_day_and_the_runs_to_close_them(
        cli: Cli, db: firestore.Client) -> None:
    seed_purchases(db, 9)

    table = plain(cli.ok("gaps", "--start", "2025-01-01", "--end", "2025-01-03"))
    found = cli.json("gaps", "--start", "2025-01-01", "--end", "2025-01-03", "--json")

    assert [day["unprocessed"]["ON_ORDER_COMPLETED"] for day in found["days"]] == [3, 3, 3]
    assert "2025-01-02 3 0 0 0 0 yes" in table
    assert "next: webhook_replay over 2025-01-01..2025-01-03: 9 unprocessed event(s)" in table


def test_the_runbook_gaps_dry_run_canary_run_verify_rollback(
        cli: Cli, db: firestore.Client) -> None:
    """The README's runbook, command by command, on the local stack."""
    seed_purchases(db, 21)
    data.put(db, data.refund("r1", "oe00001", data.at(3, 1), 500))

    gaps = cli.json("gaps", "--start", "2025-01-01", "--end", "2025-01-03", "--json")
    dry = cli.start(*RANGE)
    cli.stack.wait_idle(timeout=120)
    canary = cli.start(*RANGE, "--apply", "-y", "--customer", "c1")
    cli.stack.wait_idle(timeout=120)
    run = cli.start(*RANGE, "--apply", "-y")
    cli.stack.wait_idle(timeout=120)
    db.collection(schema.WALLETS).document("c2").update({"balance": firestore.Increment(1)})
    verified = cli.json("start", "ledger_verify", *RANGE, "--apply", "-y")["migrationId"]
    cli.stack.wait_idle(timeout=120)
    shown = plain(cli.ok("status", verified))
    undo = cli.json("rollback", run)["migrationId"]
    cli.stack.wait_idle(timeout=120)

    assert sum(gaps["totals"]["unprocessed"].values()) == 22
    assert cli.run_status(dry)["applied"] == 22
    assert (cli.run_status(canary)["applied"], cli.run_status(canary)["outside"]) == (4, 18)
    assert cli.run_status(run)["applied"] == 18
    assert cli.run_status(verified)["errorCodes"] == {"wallet_drift": 1}
    assert "findings by code" in shown and "wallet_drift 1" in shown
    assert (cli.run_status(undo)["dryRun"], cli.run_status(undo)["applied"]) == (True, 18)
    assert len(data.credited_orders(db)) == 21


def test_start_by_lookback_days_covers_the_days_ending_today(cli: Cli) -> None:
    today = dt.datetime.now(dt.UTC).date()

    migration_id = cli.start("--lookback-days", "2")
    cli.stack.wait_idle(timeout=60)
    run = cli.run_status(migration_id)

    assert run["lookbackDays"] == 2 and run["dryRun"] is True
    assert (run["startDate"], run["endDate"]) == (
        (today - dt.timedelta(days=1)).isoformat(), today.isoformat())
    assert (run["status"], run["total"]) == ("completed", 0)


@pytest.mark.parametrize(("args", "message"), [
    (("--start", "2025-01-01", "--end", "2025-01-03", "--lookback-days", "2"),
     "give either --lookback-days or --start and --end, not both"),
    (("--start", "2025-01-01", "--lookback-days", "2"),
     "give either --lookback-days or --start and --end, not both"),
    ((), "give --start and --end (both), or --lookback-days"),
    (("--end", "2025-01-03"), "give --start and --end (both), or --lookback-days"),
])
def test_start_refuses_a_missing_or_doubly_given_range_before_calling(
        cli: Cli, db: firestore.Client, args: tuple[str, ...], message: str) -> None:
    result = cli.run("start", "webhook_replay", *args)

    assert result.exit_code == 2
    assert message in plain(result.output)
    assert not list(db.collection(schema.RUNS).stream())


def test_the_switch_off_pauses_every_run_and_refuses_starts_until_on_and_resume_all(
        cli: Cli, db: firestore.Client, stack_env: dict[str, str]) -> None:
    seed_purchases(db, 30)
    with held_tasks(stack_env):  # both runs stay pending until the switch is off
        first = cli.start("--start", "2025-01-01", "--end", "2025-01-01", "--apply", "-y")
        second = cli.start("--start", "2025-01-02", "--end", "2025-01-03", "--apply", "-y")
        refused = cli.run("switch", "off")  # a reason is required
        off = cli.json("switch", "off", "--reason", "ledger incident", "--json")
    cli.stack.wait_idle(timeout=60)
    shown = cli.json("switch", "--json")
    start = cli.run("start", "webhook_replay", *RANGE, "--apply", "-y", "--force")
    on = cli.run("switch", "on")
    resumed = cli.json("resume", "--all", "--json")
    cli.stack.wait_idle(timeout=120)

    assert refused.exit_code == 2
    assert sorted(off["paused"]) == sorted([first, second])
    assert (shown["enabled"], shown["running"], shown["reason"]) == (False, False,
                                                                    "ledger incident")
    assert start.exit_code == 1 and "ledger incident" in plain(start.stderr)
    assert on.exit_code == 0 and "backfill resume --all" in plain(on.stdout)
    assert resumed["matched"] == 2
    assert [cli.run_status(run)["status"] for run in (first, second)] == ["completed"] * 2
    assert len(data.credited_orders(db)) == 30


def test_preflight_prints_each_check_and_exits_1_when_one_fails(
        cli: Cli, db: firestore.Client, stack_env: dict[str, str]) -> None:
    seed_purchases(db, 12, unknown=2)

    passed = cli.run("preflight", "webhook_replay", *RANGE)
    with held_tasks(stack_env):
        paused = cli.run("preflight", "webhook_replay", *RANGE, "--json")

    assert passed.exit_code == 0, passed.output
    shown = plain(passed.stdout)
    assert "preflight of webhook_replay 2025-01-01..2025-01-03: warn" in shown
    assert "retired (2)" in shown and "14 events" in shown
    assert paused.exit_code == 1
    answer = json.JSONDecoder().raw_decode(paused.stdout.lstrip())[0]
    assert {c["check"]: c["status"] for c in answer["checks"]}["queue"] == "fail"


def test_a_paused_run_applies_nothing_until_it_is_resumed(cli: Cli,
                                                           db: firestore.Client) -> None:
    seed_purchases(db, 3000)  # 50 pages a chunk: the run is still going when it is paused
    migration_id = cli.start(*RANGE, "--apply", "-y")
    until(lambda: cli.run_status(migration_id)["taken"] > 0)

    paused = cli.json("pause", migration_id, "--reason", "checking the product table")
    again = cli.json("pause", migration_id)
    cli.stack.wait_idle(timeout=60)
    held = cli.run_status(migration_id)
    applied_while_paused = len(data.credited_orders(db))
    watched = cli.run("status", migration_id, "--watch")

    resumed = cli.json("resume", migration_id, "--reason", "products fixed")
    cli.stack.wait_idle(timeout=180)
    done = cli.run_status(migration_id)

    assert (paused["status"], paused["previousStatus"], paused["changed"]) == (
        "paused", "running", True)
    assert (again["status"], again["changed"]) == ("paused", False)
    assert held["status"] == "paused" and 0 < held["applied"] < 3000, held["applied"]
    assert applied_while_paused == held["applied"]
    assert {"from": "running", "to": "paused", "by": OPERATOR,
            "note": "checking the product table"}.items() <= moved(held, "paused").items()
    assert watched.exit_code == 5  # a watched run that is paused
    assert f"backfill resume {migration_id}" in plain(watched.stdout)
    assert (resumed["status"], resumed["previousStatus"], resumed["changed"]) == (
        "running", "paused", True)
    assert resumed["chunksMoved"] > 0
    assert moved(done, "running")["note"] == "products fixed"
    assert (done["status"], done["applied"], done["taken"]) == ("completed", 3000, 3000)
    assert set(data.credited_orders(db).values()) == {1}
    assert len(data.credited_orders(db)) == 3000
    data.assert_ledger_consistent(db)


def test_a_run_paused_before_planning_stays_paused_then_resumes(
        cli: Cli, db: firestore.Client, stack_env: dict[str, str]) -> None:
    seed_purchases(db, 30)
    with held_tasks(stack_env):
        migration_id = cli.start(*RANGE, "--apply", "-y")
        paused = cli.json("pause", migration_id)
    cli.stack.wait_idle(timeout=60)  # planning runs, but enqueues nothing for a paused run
    held = cli.run_status(migration_id)
    credited_while_held = len(data.credited_orders(db))
    resumed = cli.json("resume", migration_id)
    cli.stack.wait_idle(timeout=60)
    done = cli.run_status(migration_id)

    assert paused["status"] == "paused"
    assert (held["status"], held["planned"], held["taken"]) == ("paused", True, 0)
    assert credited_while_held == 0
    # No chunk had started, so resume moved it back to pending (its answer reads the run
    # after enqueueing: a chunk may have started by then).
    assert resumed["previousStatus"] == "paused" and resumed["status"] in ("pending", "running")
    after_pause = [move["to"] for move in done["statusHistory"]]
    assert after_pause[after_pause.index("paused") + 1] == "pending"
    assert (done["status"], done["applied"]) == ("completed", 30)
    assert len(data.credited_orders(db)) == 30


def test_cancel_asks_first_and_a_cancelled_run_stays_cancelled(
        cli: Cli, db: firestore.Client, stack_env: dict[str, str]) -> None:
    seed_purchases(db, 30)
    with held_tasks(stack_env):
        migration_id = cli.start(*RANGE, "--apply", "-y")
        declined = cli.run("cancel", migration_id, answer="n\n")
        after_no = cli.run_status(migration_id)
        cancelled = cli.json("cancel", migration_id, "--yes", "--reason", "wrong range")
    cli.stack.wait_idle(timeout=60)
    run = cli.run_status(migration_id)
    resume = cli.run("resume", migration_id)

    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert after_no["status"] == "pending"
    assert (cancelled["status"], cancelled["previousStatus"]) == ("cancelled", "pending")
    assert (run["status"], run["applied"]) == ("cancelled", 0)
    assert moved(run, "cancelled")["note"] == "wrong range"
    assert resume.exit_code == 1 and plain(resume.output).startswith("409")
    assert not data.credited_orders(db)


def test_an_overlapping_start_names_the_run_in_its_way_and_force_passes_it(
        cli: Cli, db: firestore.Client, stack_env: dict[str, str]) -> None:
    seed_purchases(db, 10)
    with held_tasks(stack_env):
        first = cli.start(*RANGE)
        refused = cli.run("start", "webhook_replay", "--start", "2025-01-02", "--end",
                          "2025-01-05")
        forced = cli.start("--start", "2025-01-02", "--end", "2025-01-05", "--force")
        for migration_id in (first, forced):
            cli.ok("cancel", migration_id, "--yes")

    assert refused.exit_code == 1
    assert plain(refused.output).startswith("409")
    assert f"runs in the way: {first}" in plain(refused.output)
    assert forced != first


def test_errors_report_and_a_retry_of_one_code_after_the_fix(
        cli: Cli, db: firestore.Client, tmp_path: Path) -> None:
    seed_purchases(db, 30, unknown=3)
    migration_id = cli.start(*RANGE, "--apply", "-y")
    cli.stack.wait_idle(timeout=120)
    failed = cli.run_status(migration_id)
    shown = cli.ok("status", migration_id)

    report = cli.ok("errors", migration_id)
    as_json = cli.json("errors", migration_id, "--json")
    none = cli.ok("errors", migration_id, "--code", "malformed_payload")
    saved = tmp_path / "errors.csv"
    cli.ok("errors", migration_id, "--code", "product_not_found", "--output", str(saved))

    rows = list(csv.DictReader(io.StringIO(report)))
    assert (failed["status"], failed["applied"], failed["errors"]) == ("completed", 30, 3)
    assert failed["errorCodes"] == {"product_not_found": 3}
    assert "product_not_found" in shown
    assert next(csv.reader(io.StringIO(report))) == COLUMNS
    assert {row["eventId"] for row in rows} == {"bad0", "bad1", "bad2"}
    assert {row["code"] for row in rows} == {"product_not_found"}
    assert as_json["count"] == 3 and {e["eventId"] for e in as_json["errors"]} == {
        "bad0", "bad1", "bad2"}
    assert list(csv.reader(io.StringIO(none))) == [COLUMNS]
    assert saved.read_text(encoding="utf-8") == report

    data.product(db, "retired", 5)
    output = cli.ok("retry", migration_id, "--code", "product_not_found", "--wait", "-y")
    started, _ = json.JSONDecoder().raw_decode(output.lstrip())
    retried = cli.run_status(started["migrationId"])

    assert started["migrationId"] != migration_id
    assert (started["status"], started["retryOf"]["migrationId"]) == ("pending", migration_id)
    assert (retried["status"], retried["dryRun"], retried["applied"], retried["errors"]) == (
        "completed", False, 3, 0)
    assert retried["retryOf"]["migrationId"] == migration_id
    assert {f"obad{n}" for n in range(3)} <= set(data.credited_orders(db))
    assert len(data.credited_orders(db)) == 33
    data.assert_ledger_consistent(db)


def test_retry_of_a_run_without_failures_and_errors_of_no_run_exit_1(cli: Cli,
                                                                      db: firestore.Client) -> None:
    seed_purchases(db, 10)
    migration_id = cli.start(*RANGE, "--apply", "-y")
    cli.stack.wait_idle(timeout=60)

    retry = cli.run("retry", migration_id, "-y")  # a live run's retry is live: asked first
    missing = cli.run("errors", "no-such-run")

    assert retry.exit_code == 1 and "a LIVE run: retry of" in plain(retry.stderr)
    assert re.search(r"(^| )409 ", plain(retry.stderr)), retry.stderr
    assert "has no failed events" in plain(retry.output)
    assert missing.exit_code == 1 and plain(missing.output).startswith("404")


def test_throttle_changes_an_active_runs_ceiling_and_status_shows_it(
        cli: Cli, db: firestore.Client) -> None:
    seed_purchases(db, 300)
    migration_id = cli.start(*RANGE, "--apply", "-y", "--max-events-per-second", "20")
    until(lambda: cli.run_status(migration_id)["taken"] > 0)
    slow = cli.run_status(migration_id)
    shown = cli.ok("status", migration_id)

    raised = cli.json("throttle", migration_id, "5000", "--reason", "off-peak")
    cli.stack.wait_idle(timeout=120)
    done = cli.run_status(migration_id)
    late = cli.run("throttle", migration_id, "10")

    assert (slow["status"], slow["maxEventsPerSecond"], slow["ceiling"]) == ("running", 20, 20)
    assert "ceiling" in shown
    assert (raised["previousMaxEventsPerSecond"], raised["ceiling"]) == (20, 5000)
    assert (done["status"], done["applied"], done["maxEventsPerSecond"]) == (
        "completed", 300, 5000)
    assert late.exit_code == 1 and "only an active run" in plain(late.output)
    assert set(data.credited_orders(db).values()) == {1}


def json_only(result: Result) -> list[Any]:
    """The stdout of a command given --json: one JSON document a line, and nothing else."""
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@contextlib.contextmanager
def watching(stack_env: dict[str, str], migration_id: str,
             tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """``backfill status ID --watch --json`` in a process of its own; its stdout and stderr go
    to ``tmp_path``/watch.out and watch.err."""
    env = {name: value for name, value in os.environ.items() if name not in FOREIGN_ENV}
    env |= {name: stack_env[name] for name in CLIENT_ENV}
    with (tmp_path / "watch.out").open("w") as out, (tmp_path / "watch.err").open("w") as err:
        watcher = subprocess.Popen(
            [str(Path(sys.executable).parent / "backfill"), "status", migration_id, "--watch",
             "--json"], stdout=out, stderr=err, text=True, env=env)
        try:
            yield watcher
        finally:
            if watcher.poll() is None:
                watcher.kill()
            watcher.wait(timeout=30)


def test_json_on_every_command_leaves_only_json_on_stdout(
        cli: Cli, db: firestore.Client, stack_env: dict[str, str]) -> None:
    seed_purchases(db, 30)
    with held_tasks(stack_env):
        [started] = json_only(cli.run("start", "webhook_replay", *RANGE, "--apply", "-y", "--json"))
        migration_id = started["migrationId"]
        steered = [json_only(cli.run(*args, "--json")) for args in (
            ("pause", migration_id, "--reason", "checking"), ("resume", migration_id),
            ("throttle", migration_id, "100"), ("status", migration_id), ("status",),
            ("cancel", migration_id, "--yes"))]
    [[found]] = [json_only(cli.run("gaps", "--start", "2025-01-01", "--end", "2025-01-03",
                                   "--json"))]
    [token] = json_only(cli.run("token", "--email", OPERATOR, "--json"))

    assert started["status"] == "pending"
    assert [answer[0]["status"] for answer in steered[:2]] == ["paused", "pending"]
    assert steered[2][0]["maxEventsPerSecond"] == 100
    assert steered[3][0]["migrationId"] == migration_id
    assert [run["migrationId"] for run in steered[4][0]] == [migration_id]
    assert steered[5][0]["status"] == "cancelled"
    assert sum(day["unprocessed"]["ON_ORDER_COMPLETED"] for day in found["days"]) == 30
    assert token["email"] == OPERATOR and token["token"].count(".") == 2


def test_a_watched_run_that_completes_exits_0_with_its_answers_as_json(
        cli: Cli, db: firestore.Client) -> None:
    seed_purchases(db, 30)

    result = cli.run("start", "webhook_replay", *RANGE, "--apply", "-y", "--wait", "--json")

    started, last = json_only(result)
    assert (started["status"], last["status"], last["applied"]) == ("pending", "completed", 30)
    assert last["migrationId"] == started["migrationId"]
    assert "completed  100.0%  taken 30/30" in result.stderr  # the progress, off stdout


@pytest.mark.parametrize(("action", "code"), [("cancel", 4), ("pause", 5)])
def test_a_watched_run_that_is_cancelled_or_paused_exits_with_its_code(
        cli: Cli, db: firestore.Client, stack_env: dict[str, str], tmp_path: Path,
        action: str, code: int) -> None:
    seed_purchases(db, 30)
    with held_tasks(stack_env):
        migration_id = cli.start(*RANGE, "--apply", "-y")
        with watching(stack_env, migration_id, tmp_path) as watcher:
            until(lambda: "pending" in (tmp_path / "watch.err").read_text())
            cli.ok(action, migration_id, "--yes") if action == "cancel" else cli.ok(
                action, migration_id)
            returncode = watcher.wait(timeout=30)

    [last] = [json.loads(line) for line in (tmp_path / "watch.out").read_text().splitlines()]
    assert returncode == code, (tmp_path / "watch.err").read_text()
    assert last["status"] == {"cancel": "cancelled", "pause": "paused"}[action]
    assert not data.credited_orders(db)
