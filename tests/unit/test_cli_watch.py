"""Watching a run (``backfill_cli.watch``): what the progress bar and the line-per-poll form show
of a status answer, and the exit code each way a watched run stops maps to."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from rich.console import Console

from backfill_cli.client import BackfillClient, Endpoints
from backfill_cli.watch import (
    ExitCode,
    RunBar,
    Shown,
    exit_code,
    progress_lines,
    shown,
    watch,
)


def status(**changes: Any) -> dict[str, Any]:
    """A status answer of a running run, 1,200 of 3,000 events taken."""
    run: dict[str, Any] = {
        "migrationId": "webhook_replay_1", "status": "running", "planned": True,
        "total": 3000, "taken": 1200, "processed": 1190, "skipped": 5, "errors": 0,
        "percent": 40.0, "rate": 120.4, "averageRate": 98.0, "etaSeconds": 15,
        "ceiling": None, "waitingFor": [], "stalledChunks": []}
    return run | changes


@pytest.mark.parametrize(("final", "code"), [
    ("completed", ExitCode.OK), ("failed", ExitCode.FAILED),
    ("cancelled", ExitCode.CANCELLED), ("paused", ExitCode.PAUSED),
])
def test_a_watched_run_exits_with_the_code_of_how_it_stopped(final: str,
                                                             code: ExitCode) -> None:
    assert exit_code(status(status=final)) is code


def test_the_exit_codes_are_the_documented_numbers() -> None:
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4, 5, 130]


def test_the_bar_shows_the_status_answer_as_it_is() -> None:
    assert shown(status()) == Shown(description="running", taken=1200, total=3000,
                                    percent=" 40.0%", rate="120 events/s", eta="ETA 0m15s")


def test_the_bar_falls_back_to_the_average_rate_and_an_unknown_eta() -> None:
    now = shown(status(rate=0.0, averageRate=98.0, etaSeconds=None))

    assert (now.rate, now.eta) == ("98 events/s on average", "ETA -")
    assert shown(status(rate=0.0, averageRate=0.0)).rate == "- events/s"


def test_the_bar_has_no_total_until_the_run_is_planned_and_says_what_it_waits_for() -> None:
    now = shown(status(status="pending", planned=False, total=0, taken=0,
                       waitingFor=["webhook_replay_0"]))

    assert now.total is None
    assert now.description == "pending, waiting for webhook_replay_0"


def test_the_bar_names_stalled_chunks_and_errors_so_far() -> None:
    now = shown(status(stalledChunks=["2025-01-02"], errors=3))

    assert now.description == "running, stalled: 2025-01-02, 3 errors"


def test_the_bar_renders_taken_of_total_percent_rate_and_eta() -> None:
    screen = Console(file=io.StringIO(), force_terminal=True, width=160, record=True)

    with RunBar(screen) as bar:
        bar.update(status(errors=3))

    text = screen.export_text()
    assert "1200/3000" in text and "40.0%" in text
    assert "120 events/s" in text and "ETA 0m15s" in text
    assert text.rstrip().endswith("running, 3 errors")


def test_a_line_per_poll_off_a_terminal() -> None:
    lines = progress_lines(status(ceiling=200.0, stalledChunks=["2025-01-02"]))

    assert lines == [
        "  running   40.0%  taken 1200/3000  processed 1190  skipped 5  errors 0  120.4 events/s"
        "  ETA 0m15s  ceiling 200/s",
        "  stalled chunks (no checkpoint within their lease): 2025-01-02"]


def client_answering(answers: Iterator[dict[str, Any]]) -> BackfillClient:
    return BackfillClient(Endpoints.gateway("http://127.0.0.1:1"), "tok",
                          transport=httpx.MockTransport(
                              lambda request: httpx.Response(200, json=next(answers))))


@pytest.mark.parametrize("bar", [True, False])
def test_watch_shows_every_status_read_and_answers_the_last(bar: bool) -> None:
    screen = Console(file=io.StringIO(), force_terminal=bar, width=160, record=True)
    reads = iter([status(taken=0, percent=0.0), status(),
                  status(status="completed", taken=3000, percent=100.0, etaSeconds=None)])

    last = watch(client_answering(reads), "webhook_replay_1", screen, bar=bar, every=0)

    text = screen.export_text()
    assert last["status"] == "completed"
    assert "3000/3000" in text if bar else "completed  100.0%  taken 3000/3000" in text


def test_watch_shows_the_servers_bounded_rate_and_eta_not_one_of_its_own() -> None:
    # Two reads a poll apart, 1,000 events apart: a rate from the deltas would read 1,000/s.
    # The status answer's rate and ETA are bounded by the run's ceiling: those are shown.
    screen = Console(file=io.StringIO(), force_terminal=False, width=200, record=True)
    throttled = {"ceiling": 8.0, "rate": 8.0, "averageRate": 16.2}
    reads = iter([status(taken=613, percent=20.4, etaSeconds=299, **throttled),
                  status(taken=1613, percent=53.8, etaSeconds=174, **throttled),
                  status(status="paused", taken=1613, percent=53.8, etaSeconds=None,
                         **throttled)])

    watch(client_answering(reads), "webhook_replay_1", screen, bar=False, every=0)

    lines = screen.export_text().splitlines()
    assert [line.split("  errors 0  ")[1] for line in lines] == [
        "8.0 events/s  ETA 4m59s  ceiling 8/s", "8.0 events/s  ETA 2m54s  ceiling 8/s",
        "8.0 events/s  ceiling 8/s"]
