"""The status page: what the status function answers a browser (``Accept: text/html``).

Three views, built from the same answers as the JSON (``shared.runs.progress``,
``shared.runs.trace``): the recent runs (status, a progress bar, rate, ETA, errors); one run
(progress, a grid of its chunks coloured by state, error codes with counts and the first
errors, its status history, links to the error report); and a trace (a customer's, order's or
event's wallets, history in time order, and the runs that touched it). Rate and ETA are the
status answer's, already bounded by the run's ceiling: the page computes none of its own. Every
value is escaped (Jinja's autoescape: event data is untrusted); the page has no script at all,
and its one style sheet is allowed by its hash in the page's Content-Security-Policy, so
nothing injected could run or load. A page of an active run refreshes itself every
``REFRESH_SECONDS``.

It carries no token: the browser (or the proxy in front of it, such as
``gcloud run services proxy``) sends the caller's own on every request, refreshes included.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import jinja2

from shared import clock

REFRESH_SECONDS = 10
ACTIVE = frozenset({"pending", "running", "paused"})
_TEMPLATES = Path(__file__).parent / "templates"
_STYLE = (_TEMPLATES / "page.css").read_text()

# The Content-Security-Policy: no script, no remote anything, this style sheet only.
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
CSP = (f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src 'none'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_COUNTS = (("total", "total"), ("taken", "taken"), ("processed", "processed"),
           ("applied", "applied"), ("duplicates", "duplicates"), ("skipped", "skipped"),
           ("errors", "errors"), ("outside", "outside the target"),
           ("pointsMoved", "points moved"))

# Autoescape on for every template, whatever its name: every value is escaped.
_PAGES = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
                            undefined=jinja2.StrictUndefined)


def wants_html(accept: Any) -> bool:
    """Whether a request's ``Accept`` prefers HTML to JSON (a browser's does)."""
    return bool(accept.best_match(["application/json", "text/html"]) == "text/html")


def runs_page(runs: list[dict[str, Any]], base: str, deployment: dict[str, str]) -> str:
    """The recent runs, each linked under ``base`` (the list's own path); the page's banner
    names the ``deployment`` (``Settings.deployment``), red for prod."""
    shown = []
    for run in runs:
        taken, total = run["taken"], run["total"] or 0
        shown.append({**run, "href": f"{base}/{run['migrationId']}",
                      "progressMax": max(total, taken, 1),
                      "eta": _duration(run.get("etaSeconds"))})
    refresh = REFRESH_SECONDS if any(run["status"] in ACTIVE for run in runs) else None
    return _PAGES.get_template("runs.html").render(title="Backfill runs", runs=shown,
                                              refresh=refresh, style=_STYLE, now=_now(),
                                              deployment=deployment)


def run_page(run: dict[str, Any], path: str, list_href: str,
             deployment: dict[str, str]) -> str:
    """One run, its error report linked under ``path`` (the run's own path). The grid shows
    the answer's page of chunks (``chunks``; ``chunkStates`` counts them all), linked to the
    pages before and after it under ``path``."""
    refresh = REFRESH_SECONDS if run["status"] in ACTIVE else None
    return _PAGES.get_template("run.html").render(
        title=f"{run['migrationId']}: {run['status']}", run=run, counts=_COUNTS,
        progress_max=max(run["total"], run["taken"], 1), eta=_duration(run.get("etaSeconds")),
        errors_href=f"{path}/errors", list_href=list_href, refresh=refresh, style=_STYLE,
        now=_now(), chunk_total=sum(run["chunkStates"].values()), deployment=deployment,
        next_href=_page_href(path, run.get("nextChunks")),
        previous_href=_page_href(path, run.get("previousChunks")))


def trace_page(trace: dict[str, Any], runs_href: str, deployment: dict[str, str]) -> str:
    """A trace (``shared.runs.trace``): wallets, its history in time order, and the runs that
    touched it, each linked under ``runs_href``."""
    query = " ".join(f"{field} {value}" for field, value in trace["query"].items())
    return _PAGES.get_template("trace.html").render(
        title=f"Trace of {query}", trace=trace, runs_href=runs_href, refresh=None,
        style=_STYLE, now=_now(), deployment=deployment)


def _page_href(path: str, answer_path: str | None) -> str | None:
    """A page of chunks under the page's own ``path`` (the answer's path may be served under
    another prefix): the answer's query string on it."""
    if answer_path is None:
        return None
    return f"{path}?{answer_path.split('?', 1)[1]}" if "?" in answer_path else path


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}h{minute:02}m" if hours else f"{minute}m{second:02}s"


def _now() -> str:
    return clock.now().strftime("%Y-%m-%d %H:%M:%S UTC")
