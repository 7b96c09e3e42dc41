"""Watching a run until it ends or is paused: a rich progress bar on a terminal, a line per
status read elsewhere, and the exit code a watched run ends with.

Both show the run as its status answer has it, computing nothing of their own: the status text
(the run's status, the runs it waits for, stalled chunks, errors so far), ``taken``/``total``
events, ``percent``, the rate in events/s (``rate``, that of the deliveries working now, else
``averageRate``, since the start) and the ETA (``etaSeconds``). The server bounds ``rate`` and
``etaSeconds`` by the run's ceiling over a window long enough to mean something; a rate of the
watch's own, from the change between two polls, would show a delivery's burst instead.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from backfill_cli.client import BackfillClient


class ExitCode(enum.IntEnum):
    """The ``backfill`` command's exit codes (see ``backfill_cli.cli``)."""

    OK = 0
    REFUSED = 1
    USAGE = 2
    FAILED = 3
    CANCELLED = 4
    PAUSED = 5
    INTERRUPTED = 130  # the shell's code for Ctrl-C; the run itself goes on


RUN_EXIT_CODES = {"completed": ExitCode.OK, "failed": ExitCode.FAILED,
                  "cancelled": ExitCode.CANCELLED, "paused": ExitCode.PAUSED,
                  "awaiting_approval": ExitCode.PAUSED}


def exit_code(run: dict[str, Any]) -> ExitCode:
    """The exit code of a watched run's last status: a run stands still only once it has ended
    or is paused."""
    return RUN_EXIT_CODES[run["status"]]


@dataclasses.dataclass(frozen=True)
class Shown:
    """What the bar shows of one status read."""

    description: str
    taken: int
    total: int | None  # None until the run is planned (the bar pulses)
    percent: str
    rate: str
    eta: str


def shown(run: dict[str, Any]) -> Shown:
    eta = run["etaSeconds"]
    return Shown(description=status_text(run), taken=run["taken"],
                 total=run["total"] if run["planned"] and run["total"] else None,
                 percent=f"{run['percent']:5.1f}%", rate=rate_text(run),
                 eta="ETA -" if eta is None else f"ETA {duration(eta)}")


def status_text(run: dict[str, Any]) -> str:
    text = str(run["status"])
    if run.get("waitingFor") and not run.get("planned"):
        text += f", waiting for {', '.join(run['waitingFor'])}"
    if run.get("stalledChunks"):
        text += f", stalled: {', '.join(run['stalledChunks'])}"
    if run.get("errors"):
        text += f", {run['errors']} errors"
    return text


def rate_text(run: dict[str, Any]) -> str:
    if run.get("rate"):
        return f"{run['rate']:.0f} events/s"
    if run.get("averageRate"):
        return f"{run['averageRate']:.0f} events/s on average"
    return "- events/s"


def duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02}m{secs:02}s" if hours else f"{minutes}m{secs:02}s"


class RunBar:
    """One run's progress bar on ``console``, kept on screen when it stops. The status text
    comes last, where a narrow terminal may cut it; the run's id is left out (the command or
    the start answer above names it, and it would take a third of an 80-column line)."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            BarColumn(bar_width=30), MofNCompleteColumn(), TextColumn("{task.fields[percent]}"),
            TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[eta]}"),
            TextColumn("{task.description}"), console=console)
        self._task = self._progress.add_task("", total=None, percent="", rate="", eta="")

    def __enter__(self) -> RunBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, run: dict[str, Any]) -> None:
        now = shown(run)
        # total=None leaves rich's total as it was: unknown until the run is planned.
        self._progress.update(self._task, description=now.description, completed=now.taken,
                              total=now.total, percent=now.percent, rate=now.rate, eta=now.eta)


def progress_lines(run: dict[str, Any]) -> list[str]:
    """The line-per-poll form of one status read (and its stalled chunks, if any)."""
    line = (f"{run['status']:>9}  {run['percent']:5.1f}%  taken {run['taken']}/"
            f"{run['total']}  processed {run['processed']}  skipped {run['skipped']}"
            f"  errors {run['errors']}")
    if run.get("rate"):
        line += f"  {run['rate']} events/s"
    elif run.get("averageRate"):
        line += f"  {run['averageRate']} events/s on average"
    if run.get("etaSeconds") is not None:
        line += f"  ETA {duration(run['etaSeconds'])}"
    if run.get("ceiling"):
        line += f"  ceiling {run['ceiling']:.0f}/s"
    if run.get("waitingFor") and not run.get("planned"):
        line += f"  waiting for {', '.join(run['waitingFor'])}"
    lines = [line]
    if run.get("stalledChunks"):
        lines.append(f"  stalled chunks (no checkpoint within their lease): "
                     f"{', '.join(run['stalledChunks'])}")
    return lines


def watch(client: BackfillClient, migration_id: str, console: Console, *, bar: bool,
          every: float = 1.0) -> dict[str, Any]:
    """Poll the run every ``every`` seconds until it ends or is paused, showing each read on
    ``console`` as a bar (``bar``) or as lines; answer its last status."""
    if bar:
        with RunBar(console) as run_bar:
            return client.wait(migration_id, timeout=float("inf"), every=every,
                               progress=run_bar.update)

    def print_lines(run: dict[str, Any]) -> None:
        for line in progress_lines(run):
            console.print(line, soft_wrap=True, markup=False)

    return client.wait(migration_id, timeout=float("inf"), every=every, progress=print_lines)
