"""What happened to one customer, order or event: the trace an incident starts with.

``GET /api/admin/trace?customerId=|orderId=|eventId=`` (viewers) answers, in time order, every
webhook event of the customer, order or event with its state (processed, and by what: the live
path or a run; unprocessed and why; rolled back; a dry run's outcome), every ledger entry with
its points, each customer's wallet against the sum of its entries, and every run that touched
them with what it did to each (``applied``, ``duplicate``, ``skipped``, ``error`` with its code
and whether a later run resolved it, ``wrote`` an entry, ``rolled_back``, ``reinstated``,
``repaired``, a ``finding``, ``dry_run``) and a link to its status.

A run is found by what it left: the ``migrationId`` of the entries it wrote, the
``backfillMigrationId``, ``rolledBackBy`` and ``dryRunMigrationId`` of the events it settled,
and its error records (every run's, by event id). An event's flags hold only the last run that
settled it; the entries and error records hold every run's part. Nothing is written; every read
is an indexed query or a read by id (``shared.adapters.trace_reads``).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from shared.domain.target import order_of
from shared.errors import InvalidRequest, NotFound
from shared.models import EventType, document_id_problem

# Documents of one kind a trace reads at most (a customer with more says ``complete: false``).
LIMIT = 5_000
FIELDS = ("customerId", "orderId", "eventId")
# Where a run's status is, when no status URL is configured.
RUNS_PATH = "/api/admin/dataMigrations"
# What a run's entry of each type says it did.
_WROTE = {"purchase": "wrote", "reversal": "wrote", "rollback": "rolled_back",
          "reinstatement": "reinstated"}

Row = dict[str, Any]


class TraceSource(Protocol):
    def event(self, event_id: str) -> Row | None:
        """The stored webhook event (``eventId`` added), or None."""

    def purchases_of(self, customer_id: str, limit: int) -> list[Row]:
        """The customer's purchase events."""

    def events_of(self, order_ids: Sequence[str], limit: int,
                  purchases: bool = True) -> list[Row]:
        """The orders' refunds and chargebacks, and (``purchases``) their purchases."""

    def entries(self, field: str, value: str, limit: int) -> list[Row]:
        """The ledger entries (``entryId`` added) whose ``field`` is ``value``."""

    def entries_of(self, order_ids: Sequence[str], limit: int) -> list[Row]:
        """The ledger entries of the orders."""

    def wallet(self, customer_id: str) -> tuple[int | None, int]:
        """The wallet's balance (None: none) and the sum of the customer's entries."""

    def records(self, ids: Sequence[str], subject: str | None, limit: int) -> list[Row]:
        """Every run's error records of ``ids`` and findings about ``subject``."""

    def runs(self, migration_ids: Iterable[str]) -> list[Row]:
        """The runs, by id."""


def parse(args: Mapping[str, str]) -> tuple[str, str]:
    """The one field a trace is asked by and its value; ``InvalidRequest`` naming it else."""
    given = [(field, args[field]) for field in FIELDS if args.get(field) is not None]
    if len(given) != 1:
        raise InvalidRequest("customerId", "give exactly one of customerId, orderId or "
                                           "eventId")
    field, value = given[0]
    if not value or len(value) > 256:
        raise InvalidRequest(field, "must be 1-256 characters")
    if problem := document_id_problem(value):
        raise InvalidRequest(field, problem)
    return field, value


def trace(source: TraceSource, field: str, value: str, status_url: str = "") -> Row:
    """The trace of the customer, order or event (``NotFound`` when nothing names it)."""
    events, entries = _gather(source, field, value)
    if not events and not entries:
        raise NotFound(f"no webhook event nor ledger entry names {field} {value}")
    customers = sorted({entry["customerId"] for entry in entries
                        if isinstance(entry.get("customerId"), str)}
                       | {customer for event in events if (customer := _customer(event))})
    records = source.records([*(event["eventId"] for event in events),
                              *(entry["entryId"] for entry in entries)],
                             value if field == "customerId" else None, LIMIT)
    wallets = []
    for customer_id in customers:
        balance, total = source.wallet(customer_id)
        wallets.append({"customerId": customer_id, "balance": balance, "entriesSum": total,
                        "matches": (balance or 0) == total})
    # The last run that failed each event and has not seen it resolved (its state says so).
    failed: dict[str, Row] = {}
    for record in sorted(records, key=lambda row: _when(_time(row.get("at")))):
        if record.get("eventId") and not record.get("subject") and not record.get("resolvedBy"):
            failed[str(record["eventId"])] = record
    shown_events = [_event(event, failed.get(event["eventId"])) for event in events]
    shown_entries = [_entry(entry) for entry in entries]
    shown_records = [_record(record) for record in records]
    did = _deeds(events, entries, records)
    runs = sorted(({"migrationId": run["migrationId"], "type": run.get("type"),
                    "status": run.get("status"), "dryRun": run.get("dryRun"),
                    "createdAt": _time(run.get("createdAt")),
                    "requestedBy": run.get("requestedBy"),
                    "link": f"{status_url.rstrip('/') or RUNS_PATH}/{run['migrationId']}",
                    "did": did[run["migrationId"]]}
                   for run in source.runs(sorted(did))),
                  key=lambda run: (_when(run["createdAt"]), run["migrationId"]))
    timeline = sorted(
        [{"at": event["receivedAt"], "kind": "event", "id": event["eventId"],
          "what": f"{event['eventType']} received; {event['state']}"} for event in shown_events]
        + [{"at": entry["createdAt"], "kind": "entry", "id": entry["entryId"],
            "what": f"{entry['type']} entry {entry['points']:+d} points by "
                    f"{entry['migrationId'] or 'the live path'}",
            "migrationId": entry["migrationId"]} for entry in shown_entries]
        + [{"at": record["at"], "kind": "record", "id": record["eventId"] or record["recordId"],
            "what": f"{record['code']} in {record['migrationId']}"
                    + (f", resolved by {record['resolvedBy']}" if record["resolvedBy"] else ""),
            "migrationId": record["migrationId"]} for record in shown_records],
        key=lambda item: (_when(item["at"]), item["kind"], item["id"]))
    return {"query": {field: value}, "customers": customers, "wallets": wallets,
            "timeline": timeline, "events": shown_events, "entries": shown_entries,
            "records": shown_records, "runs": runs,
            "complete": len(events) < LIMIT and len(entries) < LIMIT and len(records) < LIMIT}


def _gather(source: TraceSource, field: str, value: str) -> tuple[list[Row], list[Row]]:
    """The events and ledger entries the trace shows, each once, in id order."""
    if field == "eventId":
        event = source.event(value)
        events = [event] if event is not None else []
        entries = source.entries("sourceEventId", value, LIMIT)
        order = _order(event) if event is not None else None
        if order and not entries:  # a refund that wrote nothing: its order's purchase
            entries = [entry for entry in source.entries("orderId", order, LIMIT)
                       if entry.get("type") == "purchase"]
    elif field == "orderId":
        events = source.events_of([value], LIMIT)
        entries = source.entries("orderId", value, LIMIT)
    else:
        purchases = source.purchases_of(value, LIMIT)
        entries = source.entries("customerId", value, LIMIT)
        orders = {order for event in purchases if (order := _order(event))} \
            | {entry["orderId"] for entry in entries if isinstance(entry.get("orderId"), str)}
        # Its purchases are found by customer already; an order's refunds name only the order.
        events = [*purchases, *source.events_of(sorted(orders), LIMIT, purchases=False)]
    return (sorted({event["eventId"]: event for event in events}.values(),
                   key=lambda event: event["eventId"]),
            sorted({entry["entryId"]: entry for entry in entries}.values(),
                   key=lambda entry: entry["entryId"]))


def _event(event: Row, failed: Row | None = None) -> Row:
    processed = event.get("processed") is True
    by = event.get("backfillMigrationId")
    if processed:
        state = f"processed ({event.get('backfillOutcome')} by {by})" if by else \
            "processed by the live path"
    elif failed is not None:
        state = (f"unprocessed: failed in {failed['migrationId']} ({failed.get('code')}); "
                 "retry that run's failures once the cause is fixed")
    elif event.get("rolledBackBy"):
        state = f"rolled back by {event['rolledBackBy']}; unprocessed"
    else:
        error = event.get("processingError")
        state = f"unprocessed ({error})" if error else "unprocessed"
    dry = ({"migrationId": event["dryRunMigrationId"], "outcome": event.get("dryRunOutcome")}
           if event.get("dryRunMigrationId") else None)
    return {"eventId": event["eventId"], "eventType": event.get("eventType"),
            "orderId": _order(event), "customerId": _customer(event),
            "receivedAt": _time(event.get("receivedAt")), "processed": processed,
            "processedAt": _time(event.get("processedAt")), "state": state,
            "backfillMigrationId": by, "backfillOutcome": event.get("backfillOutcome"),
            "rolledBackBy": event.get("rolledBackBy"),
            "processingError": event.get("processingError"), "dryRun": dry}


def _entry(entry: Row) -> Row:
    points = entry.get("points")
    return {"entryId": entry["entryId"], "type": entry.get("type"),
            "points": points if isinstance(points, int) else 0,
            "customerId": entry.get("customerId"), "orderId": entry.get("orderId"),
            "sourceEventId": entry.get("sourceEventId"), "source": entry.get("source"),
            "migrationId": entry.get("migrationId"), "createdAt": _time(entry.get("createdAt")),
            "rolledBackBy": entry.get("rolledBackBy"), "compensates": entry.get("compensates"),
            "reinstates": entry.get("reinstates")}


def _record(record: Row) -> Row:
    return {"migrationId": record["migrationId"], "recordId": record["recordId"],
            "eventId": record.get("eventId"), "code": record.get("code"),
            "message": record.get("message"), "hint": record.get("hint"),
            "subject": record.get("subject"), "repaired": record.get("repaired"),
            "resolvedBy": record.get("resolvedBy"), "at": _time(record.get("at"))}


def _deeds(events: list[Row], entries: list[Row], records: list[Row]) -> dict[str, list[Row]]:
    """What each run did, by run id: to the events it settled, with the entries it wrote, in
    its records."""
    did: dict[str, list[Row]] = defaultdict(list)
    for event in events:
        if by := event.get("backfillMigrationId"):
            did[by].append({"what": event.get("backfillOutcome"), "eventId": event["eventId"]})
        if by := event.get("rolledBackBy"):
            did[by].append({"what": "unflagged", "eventId": event["eventId"]})
        if by := event.get("dryRunMigrationId"):
            did[by].append({"what": "dry_run", "outcome": event.get("dryRunOutcome"),
                            "eventId": event["eventId"]})
    for entry in entries:
        points = entry.get("points") if isinstance(entry.get("points"), int) else 0
        if by := entry.get("migrationId"):
            did[by].append({"what": _WROTE.get(str(entry.get("type")), "repaired"),
                            "entryId": entry["entryId"], "points": points})
    for record in records:
        if record.get("subject"):
            did[record["migrationId"]].append({
                "what": "finding", "code": record.get("code"), "subject": record["subject"],
                "repaired": record.get("repaired")})
        else:
            did[record["migrationId"]].append({
                "what": "error", "code": record.get("code"), "eventId": record.get("eventId"),
                "resolvedBy": record.get("resolvedBy")})
    return did


def _order(event: Row) -> str | None:
    return order_of(str(event.get("eventType")), event) or None


def _customer(event: Row) -> str | None:
    """The customer a purchase names (a refund names only its order)."""
    if event.get("eventType") != EventType.ORDER_COMPLETED:
        return None
    payload = event.get("payload")
    body = payload.get("body") if isinstance(payload, dict) else None
    customer = body.get("customer") if isinstance(body, dict) else None
    found = customer.get("id") if isinstance(customer, dict) else None
    return found if isinstance(found, str) and found else None


def _time(value: Any) -> str | None:
    """A stored time as RFC 3339 UTC (``Z``), None when absent."""
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        return str(value.isoformat()).replace("+00:00", "Z")
    return str(value)



def _when(value: str | None) -> dt.datetime:
    """A shown time, for sorting (RFC 3339 strings of varying precision do not sort as text);
    none sorts first."""
    if value is None:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
