"""Gaps before running: the operator's scope check before a dry run. Per UTC day of a range:

- ``unprocessed``: events not flagged processed, by event type (counts, no document read);
- ``reversalsMissing``: refunds and chargebacks without their ``reversal_{eventId}`` entry
  (except those a backfill settled as skipped: their order was fully reversed already);
- ``purchasesWithoutEntry``: purchases flagged processed whose ``purchase_{orderId}`` entry
  does not exist (the live path died between its writes, or the entry was lost).

The last two read the day's refunds and processed purchases (only the fields they need) and
look their entries up, at most ``SCAN_LIMIT`` of each per day; a day with more says so
(``complete: false``) rather than guess. Nothing is written. The answer ends with the runs that
would close the gaps found.

With ``provider``, and only then (it costs PayNow API calls, under the key's shared limit),
each day also says what never arrived: ``provider: {paynow, stored, neverArrived}``, the
distinct events PayNow's webhook history holds for the day, how many of them ``webhookEvents``
holds, and the difference (at most ``PROVIDER_LIMIT`` events over the range; more says
``complete: false``).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from shared.adapters.gap_scans import Scan
from shared.backfills.registry import BACKFILLS
from shared.config import Settings
from shared.domain import chunking
from shared.domain.chunking import Window
from shared.errors import InvalidRequest
from shared.models import EventType

MAX_DAYS = 31
SCAN_LIMIT = 20_000
# Events of PayNow's history a provider check reads over its range (at 25 a page, 400 calls).
PROVIDER_LIMIT = 10_000
_TYPES = tuple(kind.value for kind in EventType)


class GapSource(Protocol):
    def unprocessed(self, window: Window, event_type: str) -> int:
        """Events of ``event_type`` in ``window`` not flagged processed (an aggregation)."""

    def reversals(self, window: Window, limit: int) -> Scan:
        """Refunds and chargebacks in ``window`` without their reversal entry."""

    def purchases(self, window: Window, limit: int) -> Scan:
        """Purchases in ``window`` flagged processed without their purchase entry."""

    def stored(self, event_ids: list[str]) -> set[str]:
        """Which of ``event_ids`` ``webhookEvents`` holds."""


# What a provider sent, by day: the event ids of each UTC day of a window, and whether the
# window was read whole within a limit (the ``sent`` hook of the type that repairs
# ``neverArrived``).
Sent = Callable[[Window, int], tuple[dict[str, set[str]], bool]]


def provider_days(sent: Sent, source: GapSource, first: dt.date, last: dt.date,
                  limit: int = PROVIDER_LIMIT) -> tuple[dict[str, Any], bool]:
    """Per UTC day of ``first..last``: the distinct events the provider sent, how many
    ``webhookEvents`` holds, and how many never arrived; and whether the range was read whole
    (at most ``limit`` events)."""
    by_day, complete = sent(chunking.span(first, last), limit)
    days = {}
    for window in chunking.windows(first, last, 1):
        day = window.start.date().isoformat()
        ids = sorted(by_day.get(day, ()))
        stored = len(source.stored(ids)) if ids else 0
        days[day] = {"paynow": len(ids), "stored": stored, "neverArrived": len(ids) - stored}
    return days, complete


def parse_range(start: str | None, end: str | None, today: dt.date) -> tuple[dt.date, dt.date]:
    """The range of a gaps request; ``InvalidRequest`` naming the field and why."""
    days: list[dt.date] = []
    for field, value in (("startDate", start), ("endDate", end)):
        if not value:
            raise InvalidRequest(field, "is required (YYYY-MM-DD, a UTC day)")
        try:
            days.append(dt.date.fromisoformat(value))
        except ValueError:
            raise InvalidRequest(field, "must be a day as YYYY-MM-DD") from None
    first, last = days
    if first > last:
        raise InvalidRequest("endDate", "must be on or after startDate")
    if (last - first).days + 1 > MAX_DAYS:
        raise InvalidRequest("endDate", f"at most {MAX_DAYS} days per gaps request")
    if first > today:
        raise InvalidRequest("startDate", f"is in the future (today is {today.isoformat()} UTC)")
    return first, last


def provider_sent(value: str | None, settings: Settings, db: Any) -> Sent | None:
    """What the provider sent, when ``provider`` asks for it (``true``), else None;
    ``InvalidRequest`` naming ``provider`` when it is neither, or the provider cannot be asked
    from here (the recovering type says why)."""
    if value in (None, "", "false"):
        return None
    if value != "true":
        raise InvalidRequest("provider", "must be true or false")
    recovery = BACKFILLS.get(BACKFILLS.repairing("neverArrived"))
    problem = recovery.provider_problem(settings)  # type: ignore[attr-defined]
    if problem:
        raise InvalidRequest("provider", problem)
    sent: Sent = functools.partial(recovery.sent, settings, db)  # type: ignore[attr-defined]
    return sent


def find_gaps(source: GapSource, first: dt.date, last: dt.date, workers: int = 8,
              sent: Sent | None = None) -> dict[str, Any]:
    """The gaps of the UTC days ``first..last``, per day and in total, and the runs that
    would close them; with ``sent`` (what the provider sent), what never arrived too."""
    windows = chunking.windows(first, last, 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        days = list(pool.map(lambda window: _day(source, window), windows))
    totals: dict[str, Any] = {
        "unprocessed": {kind: sum(day["unprocessed"][kind] for day in days) for kind in _TYPES},
        "reversalsMissing": sum(day["reversalsMissing"] for day in days),
        "purchasesWithoutEntry": sum(day["purchasesWithoutEntry"] for day in days),
    }
    complete = all(day["complete"] for day in days)
    if sent is not None:
        provider, read_whole = provider_days(sent, source, first, last)
        for day in days:
            day["provider"] = provider[day["date"]]
            day["neverArrived"] = day["provider"]["neverArrived"]
        totals["neverArrived"] = sum(day["neverArrived"] for day in days)
        complete = complete and read_whole
    return {"startDate": first.isoformat(), "endDate": last.isoformat(), "days": days,
            "totals": totals, "complete": complete, "next": list(_next_runs(days, totals))}


def _day(source: GapSource, window: Window) -> dict[str, Any]:
    reversals = source.reversals(window, SCAN_LIMIT)
    purchases = source.purchases(window, SCAN_LIMIT)
    return {"date": window.start.date().isoformat(),
            "unprocessed": {kind: source.unprocessed(window, kind) for kind in _TYPES},
            "reversalsMissing": reversals.missing,
            "purchasesWithoutEntry": purchases.missing,
            "scanned": {"reversals": reversals.scanned, "processedPurchases": purchases.scanned},
            "complete": reversals.complete and purchases.complete}


def _next_runs(days: list[dict[str, Any]], totals: dict[str, Any]) -> Iterator[str]:
    def span(key: str) -> str:
        dated = [day["date"] for day in days if (sum(day[key].values()) if isinstance(
            day[key], dict) else day[key])]
        return f"{dated[0]}..{dated[-1]}"

    replay = BACKFILLS.repairing("unprocessed")
    backfill = BACKFILLS.repairing("reversalsMissing")
    if totals.get("neverArrived"):
        yield (f"{BACKFILLS.repairing('neverArrived')} over {span('neverArrived')}: "
               f"{totals['neverArrived']} event(s) PayNow sent that never arrived; dry run "
               f"first, then {replay} of the same days")
    unprocessed = sum(totals["unprocessed"].values())
    if unprocessed:
        yield (f"{replay} over {span('unprocessed')}: {unprocessed} unprocessed "
               "event(s); dry run first")
    if totals["purchasesWithoutEntry"]:
        yield (f"{replay} with includeProcessed over {span('purchasesWithoutEntry')}: "
               f"{totals['purchasesWithoutEntry']} processed purchase(s) without an entry")
    if totals["reversalsMissing"]:
        yield (f"{backfill} over {span('reversalsMissing')}: "
               f"{totals['reversalsMissing']} refund(s) or chargeback(s) without a reversal "
               "(after the replay: a reversal needs its purchase entry)")
