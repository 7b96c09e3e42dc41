"""The preflight: what to know before a live run of a type over a range, checked in one call
(``GET /api/admin/preflight``, ``backfill preflight``). It writes nothing.

Each check passes, warns or fails, and says what to do:

- ``switch``: the kill switch (stored, and ``BACKFILL_ENABLED``) is on;
- ``queue``: the chunk queue is not paused, with its rate and concurrency;
- ``pitr``: point-in-time recovery is on (a run's ``pitrTimestamp`` is a restore point only then);
- ``indexes``: the composite indexes the bundle's queries need exist and are ready;
- ``alerting``: Terraform created the alert policies (``BACKFILL_ALERTING_ENABLED``);
- ``products``: every product the range's purchases name is in the catalog (a purchase of an
  unknown product fails as ``product_not_found``);
- ``estimate``: how long the live run would take (``shared.domain.estimate``) from the range's
  event count, the queue's concurrency, the ramp and the ceiling.

A live run in prod whose preflight fails is refused unless forced (``functions/main.py``).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.adapters.cloud_tasks import Dispatcher
from shared.adapters.firestore_admin import FirestoreAdmin
from shared.adapters.stores import Stores, switched_off
from shared.backfills.registry import BACKFILLS
from shared.config import Settings
from shared.domain import chunking, estimate
from shared.domain.records import RunRecord
from shared.errors import InvalidRequest
from shared.models import RunStatus

PASS, WARN, FAIL = "pass", "warn", "fail"
# Purchases read for the product check, oldest first: enough to find a missing product in a
# range's usual mix without reading a whole year.
PRODUCT_SAMPLE = 5000


def _check(name: str, status: str, detail: str, action: str = "") -> dict[str, str]:
    return {"check": name, "status": status, "detail": detail, "action": action}


def run(settings: Settings, stores: Stores, dispatcher: Dispatcher, admin: FirestoreAdmin,
        backfill_type: str, first: dt.date, last: dt.date, now: dt.datetime,
        ceiling: int | None = None) -> dict[str, Any]:
    """Every check for a live ``backfill_type`` over ``first``..``last``; the worst of them is
    the ``result``."""
    checks = [_switch(settings, stores), _queue(settings, dispatcher), _pitr(admin),
              _indexes(admin), _alerting(settings),
              _products(stores, backfill_type, first, last),
              _estimate(settings, stores, backfill_type, first, last, now, ceiling)]
    statuses = {check["status"] for check in checks}
    result = FAIL if FAIL in statuses else WARN if WARN in statuses else PASS
    return {"type": backfill_type, "startDate": first.isoformat(), "endDate": last.isoformat(),
            "result": result, "checks": checks}


def parse(settings: Settings, backfill_type: str | None, start: str | None, end: str | None,
          today: dt.date) -> tuple[str, dt.date, dt.date]:
    """A preflight's query: a type the trigger starts and a range a run may take;
    ``InvalidRequest`` naming the field and why."""
    if backfill_type not in BACKFILLS.triggered():
        raise InvalidRequest("type", f"must be one of: {', '.join(BACKFILLS.triggered())}")
    days: list[dt.date] = []
    for field, value in (("startDate", start), ("endDate", end)):
        try:
            days.append(dt.date.fromisoformat(value or ""))
        except ValueError:
            raise InvalidRequest(field, "is required, a UTC day as YYYY-MM-DD") from None
    first, last = days
    if first > last:
        raise InvalidRequest("endDate", "must be on or after startDate")
    if (last - first).days + 1 > settings.max_range_days:
        raise InvalidRequest("endDate", f"at most {settings.max_range_days} days per run")
    if first > today:
        raise InvalidRequest("startDate", f"is in the future (today is {today.isoformat()} UTC)")
    return backfill_type, first, last


def failed(answer: dict[str, Any]) -> list[str]:
    """The failed checks of a preflight answer, each as "check: detail"."""
    return [f"{check['check']}: {check['detail']}" for check in answer["checks"]
            if check["status"] == FAIL]


def _switch(settings: Settings, stores: Stores) -> dict[str, str]:
    off = switched_off(settings, stores)
    if off is None:
        return _check("switch", PASS, "backfills are switched on")
    return _check("switch", FAIL, off, "switch backfills on (backfill switch on), then resume")


def _queue(settings: Settings, dispatcher: Dispatcher) -> dict[str, str]:
    queue = dispatcher.queue()
    if queue is None:
        return _check("queue", WARN, f"Cloud Tasks did not describe {settings.tasks_queue}",
                      "check the queue exists and the caller may read it "
                      "(roles/cloudtasks.viewer)")
    limits = (f"{queue.max_dispatches_per_second:g}/s" if queue.max_dispatches_per_second
              else "rate not reported") + ", " + (
        f"{queue.max_concurrent_dispatches} at once" if queue.max_concurrent_dispatches
        else "concurrency not reported")
    if queue.state != "RUNNING":
        return _check("queue", FAIL, f"{settings.tasks_queue} is {queue.state} ({limits})",
                      f"gcloud tasks queues resume {settings.tasks_queue}")
    if (queue.max_concurrent_dispatches
            and queue.max_concurrent_dispatches != settings.queue_concurrency):
        return _check("queue", WARN, f"{settings.tasks_queue} runs {limits}, but "
                      f"BACKFILL_QUEUE_CONCURRENCY is {settings.queue_concurrency}",
                      "make them equal (Terraform passes queue_max_concurrent_dispatches): "
                      "estimates and ceilings assume it")
    return _check("queue", PASS, f"{settings.tasks_queue} is running ({limits})")


def _pitr(admin: FirestoreAdmin) -> dict[str, str]:
    answer = admin.pitr()
    if answer.unchecked:
        return _check("pitr", WARN, f"not checked: {answer.unchecked}",
                      "check point-in-time recovery in the console")
    if answer.value:
        return _check("pitr", PASS, "point-in-time recovery is on: the run's pitrTimestamp "
                      "is a restore point for 7 days")
    return _check("pitr", WARN, "point-in-time recovery is off: a run's pitrTimestamp "
                  "restores nothing", "gcloud firestore databases update "
                  "--enable-pitr (Terraform: point_in_time_recovery_enablement)")


def _indexes(admin: FirestoreAdmin) -> dict[str, str]:
    answer = admin.indexes()
    if answer.unchecked:
        return _check("indexes", WARN, f"not checked: {answer.unchecked}",
                      "gcloud firestore indexes composite list: every index READY")
    problems = answer.value if isinstance(answer.value, list) else []
    if problems:
        return _check("indexes", FAIL, "not ready: " + "; ".join(problems),
                      "apply infra/firestore.indexes.json (terraform apply) and wait until "
                      "every index is READY")
    return _check("indexes", PASS, "every composite index the queries need is ready")


def _alerting(settings: Settings) -> dict[str, str]:
    if settings.alerting_enabled:
        return _check("alerting", PASS, "the alert policies exist (BACKFILL_ALERTING_ENABLED)")
    return _check("alerting", WARN, "no alert policies: a failing run is seen only by "
                  "looking", "set alerting_enabled and alert_notification_channels in "
                  "Terraform")


def _products(stores: Stores, backfill_type: str, first: dt.date,
              last: dt.date) -> dict[str, str]:
    if not getattr(BACKFILLS.get(backfill_type), "credits_products", False):
        return _check("products", PASS, f"{backfill_type} credits no purchase")
    named, scanned = stores.plans.products_named(chunking.span(first, last), PRODUCT_SAMPLE)
    if not named:
        return _check("products", PASS, f"no purchase in the range names a product "
                      f"({scanned} read)")
    catalog = stores.plans.catalog()
    missing = Counter({product: count for product, count in named.items()
                       if product not in catalog})
    sample = (f"the first {scanned} purchases" if scanned >= PRODUCT_SAMPLE
              else f"all {scanned} purchases")
    if not missing:
        return _check("products", PASS, f"every product {sample} name is in the catalog")
    listed = ", ".join(f"{product} ({count})" for product, count in missing.most_common(10))
    return _check("products", WARN, f"{sample} name products the catalog lacks: {listed}; "
                  "their purchases would fail as product_not_found",
                  "add the products (products/{id} with points), or run and retry the "
                  "failures (backfill retry ID --code product_not_found) once added")


def _estimate(settings: Settings, stores: Stores, backfill_type: str, first: dt.date,
              last: dt.date, now: dt.datetime, ceiling: int | None) -> dict[str, str]:
    run = RunRecord(id="preflight", type=backfill_type, status=RunStatus.PENDING,
                    start_date=first, end_date=last, created_at=now)
    backfill = BACKFILLS.of(run)
    windows = [chunking.before(window, now - dt.timedelta(minutes=settings.settle_minutes))
               for window in chunking.windows(first, last, settings.chunk_days)]
    with ThreadPoolExecutor(max_workers=settings.enqueue_workers) as pool:
        sizes = list(pool.map(lambda window: backfill.size(stores.plans, window), windows))
    if any(size is None for size in sizes):
        return _check("estimate", WARN, f"{backfill_type} cannot count its items ahead",
                      "its dry run reports what it finds")
    counts = [size or 0 for size in sizes]
    events = sum(counts)
    chunks = sum(-(-count // settings.chunk_events) for count in counts)
    work = estimate.Workload(
        events=events, chunks=max(chunks, 1),
        largest_chunk=min(max(counts, default=0), settings.chunk_events),
        chunk_rate=settings.chunk_events_per_second, concurrency=settings.queue_concurrency,
        ceiling=ceiling or settings.max_events_per_second)
    found = estimate.estimate(settings, work)
    return _check("estimate", PASS, f"{events} events in about {chunks} chunks: about "
                  f"{_duration(found.seconds)} live (bound by the {found.bound}; the "
                  "estimate's error against make bench is stated in docs/performance.md)")


def _duration(seconds: float) -> str:
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours} h {minute:02} min" if hours else f"{minute} min {second:02} s"
