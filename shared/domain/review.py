"""Plan, then apply exactly: a live run bound to the dry run it was reviewed from (``planOf``).

A live ``webhook_replay``, ``reversal_backfill`` or ``webhook_recovery`` may name the completed
dry run an operator reviewed; with ``BACKFILL_REQUIRE_PLAN`` (prod's default) it must, unless
Cloud Scheduler started it (the nightly job has no one to review it). Two checks, both before
anything is written:

- at the trigger (``refusal``): the dry run exists, completed, ended within
  ``BACKFILL_PLAN_MAX_AGE_HOURS``, and had the same scope (type, dates, target, caps, options);
- at planning (``drift``): the live run's events and the catalog's points are what the dry run
  found, within ``BACKFILL_PLAN_TOLERANCE``; else the run fails with what moved, having written
  no chunk and no ledger entry.

Pure: the launcher and the planner read the documents and act on the answers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from shared.config import Settings
from shared.domain.records import RunRecord
from shared.domain.run_request import BackfillRequest
from shared.models import RunStatus

# A catalog of more products than this is kept as a digest only (a run document stays small).
CATALOG_PRODUCTS = 2000


def scope(run: RunRecord | BackfillRequest) -> dict[str, Any]:
    """What a dry run and the live run it plans must share."""
    target = run.target or None
    return {"type": run.type, "startDate": run.start_date.isoformat(),
            "endDate": run.end_date.isoformat(), "target": target,
            "maxEvents": run.max_events, "includeProcessed": run.include_processed,
            "repair": run.repair, "maxPoints": run.max_points,
            "maxPointsPerCustomer": run.max_points_per_customer,
            "allowNegativeWallets": run.allow_negative_wallets}


def refusal(settings: Settings, plan: RunRecord, live: RunRecord, now: dt.datetime,
            replayed_by: str | None = None) -> str | None:
    """Why ``live`` (as it would be recorded) may not run on ``plan``, or None; a plan whose
    type is ``replayed_by`` the live run's (a recovery's, for its replay) may plan it too."""
    name = plan.migration_id
    if not plan.dry_run:
        return f"planOf: {name} is a live run; name the dry run you reviewed"
    if plan.status is not RunStatus.COMPLETED:
        return f"planOf: {name} is {plan.status.value}, not completed; review a completed dry run"
    ended = plan.finished_at or plan.created_at
    age_hours = (now - ended).total_seconds() / 3600
    if age_hours > settings.plan_max_age_hours:
        return (f"planOf: {name} ended {age_hours:.1f} hours ago, more than "
                f"BACKFILL_PLAN_MAX_AGE_HOURS={settings.plan_max_age_hours:g}; run a new dry run")
    theirs, ours = scope(plan), scope(live)
    if replayed_by == live.type:
        # The replay of what a recovery stores: reviewed in the recovery's dry run (a
        # replay's own dry run finds nothing before the events are stored).
        theirs["type"] = live.type
    differing = [key for key in ours if theirs[key] != ours[key]
                 and not (key == "target" and narrower(live.target, plan.target))]
    if differing:
        moved = "; ".join(f"{key} {theirs[key]!r} in the plan, {ours[key]!r} here"
                          for key in differing)
        return f"planOf: {name} had another scope ({moved}); run a dry run of this one"
    return None


def narrower(target: dict[str, list[str]] | None,
             planned: dict[str, list[str]] | None) -> bool:
    """Whether ``target`` takes only events ``planned`` took: a canary of some customers of
    the reviewed range is within its review."""
    if planned is None:
        return True
    if target is None:
        return False
    return all(key in target and set(target[key]) <= set(values)
               for key, values in planned.items())


def plan_record(plan: RunRecord, live: RunRecord) -> dict[str, Any]:
    """What a live run keeps of its plan to check at planning (the count only when the plan
    counted the same events: a recovery's dry run counts what it would store)."""
    total = plan.total if plan.type == live.type else None
    return {"migrationId": plan.migration_id, "total": total, "catalog": plan.catalog}


def catalog(points: dict[str, int]) -> dict[str, Any]:
    """The products' points as a run keeps them: a digest, and the points when few enough."""
    digest = hashlib.sha256(json.dumps(points, sort_keys=True).encode()).hexdigest()
    kept: dict[str, Any] = {"digest": digest, "count": len(points)}
    if len(points) <= CATALOG_PRODUCTS:
        kept["points"] = dict(sorted(points.items()))
    return kept


def drift(settings: Settings, plan: dict[str, Any], total: int,
          found: dict[str, Any]) -> str | None:
    """What moved since the dry run ``plan`` (``plan_record``): events added to the range
    (the live run's ``total`` above the plan's by more than ``BACKFILL_PLAN_TOLERANCE``), and
    the catalog's points (``found``: ``catalog``); None when nothing did. Fewer events is no
    move: those the live path or a canary processed since leave a part of what was reviewed."""
    name, moved = plan["migrationId"], []
    planned = plan.get("total")
    if planned is not None:
        allowed = int(settings.plan_tolerance * planned)
        if total - planned > allowed:
            moved.append(f"the range holds {total} events to take, {total - planned} more "
                         f"than the {planned} of the dry run (tolerance {allowed})")
    theirs = plan.get("catalog") or {}
    if theirs and theirs.get("digest") != found.get("digest"):
        moved.append("the products' points changed: " + _catalog_changes(theirs, found))
    if not moved:
        return None
    return (f"the plan {name} no longer holds: " + "; ".join(moved) + ". Nothing was "
            "written; run a new dry run of this scope, review it, and name it in planOf")


def _catalog_changes(theirs: dict[str, Any], ours: dict[str, Any]) -> str:
    before, after = theirs.get("points"), ours.get("points")
    if before is None or after is None:
        return f"{theirs.get('count')} products then, {ours.get('count')} now"
    changes = [f"{product} {before.get(product, 'absent')} -> {after.get(product, 'absent')}"
               for product in sorted({*before, *after})
               if before.get(product) != after.get(product)]
    shown = ", ".join(changes[:10])
    return shown + (f" (and {len(changes) - 10} more)" if len(changes) > 10 else "")
