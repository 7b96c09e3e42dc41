"""``rollback``: undoes what one ended run wrote to the ledger, exactly once.

Its items are the ledger entries the rolled-back run wrote (``migrationId`` = that run), read in
descending id order, so an order's reversals (``reversal_...``) are undone before its purchase
(``purchase_...``), and, in a second chunk, the events it flagged processed without an entry
(a refund of an order it found fully reversed), which are unflagged so a later replay looks at
them again. For each entry, in one commit with its page:

- a compensating entry ``rollback_{rollbackId}_{entryId}`` of the opposite points (create-if-
  absent: written once), and the wallet moved by as much;
- the entry marked ``rolledBackBy`` (a reinstatement's original entry too), so a repeat passes
  over it and a later replay knows to reinstate it (``shared.backfills.apply``);
- a reversal's share taken off its purchase entry (``refundedAmount``, ``reversedPoints``);
- the entry's event unflagged (``processed: false``, ``rolledBackBy``), so a later replay
  re-applies it, and so is every other delivery of its order the run settled against it as a
  duplicate (recorded on the entry as ``duplicateEvents``): after a rollback no event the run
  settled claims an effect the rollback removed. A duplicate of an entry the run did not write
  (the live path's, another run's) stays as it was: its effect is still there.

A rollback with a scope (``customerIds``, ``orderIds``: the run's ``target``) undoes only the
entries of those customers or orders, and unflags only their events; every other entry it reads
is counted ``outside`` and left exactly as it was, so a later replay reinstates exactly what
it rolled back. An order's entries share its customer and order id, so a scope never splits an
order.

A purchase whose order still carries reversals the run does not undo (a refund applied by
another run or the live path since) is not rolled back: that needs a person, and is recorded
as ``reversed_since``. Started only through run control (``POST .../{migrationId}/rollback``);
its runs are internal (the trigger does not take the type).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from google.cloud import firestore

from shared.adapters import schema
from shared.backfills.apply import Book, entry_int, entry_path
from shared.backfills.base import Event, ItemResult, Page, PagePlan, PageSource, Sink, Stored
from shared.backfills.registry import BACKFILLS, BackfillType
from shared.backfills.rules import OUTSIDE_TARGET
from shared.config import Settings
from shared.domain import ledger
from shared.domain.chunking import PlannedChunk, Window
from shared.domain.records import ChunkRecord, RunRecord
from shared.domain.target import Target, order_of
from shared.errors import ItemError, MalformedPayload
from shared.models import Outcome, document_id_problem

if TYPE_CHECKING:
    from shared.adapters.stores import PlanStore

ROLLBACK = BackfillType.ROLLBACK.value
# Its two chunks: the entries the rolled-back run wrote, the events it settled without one.
ENTRIES_CHUNK = "entries"
FLAGS_CHUNK = "flags"


class ReversedSince(ItemError):
    code = "reversed_since"

    def __init__(self, order_id: str, refunded: int) -> None:
        super().__init__(
            f"Order {order_id} carries reversals this rollback does not undo "
            f"(refundedAmount {refunded}); its purchase was left as it is",
            hint="roll back the run that reversed it first (or settle the order by hand), "
                 "then roll this run back again with force: true")


class Rollback:
    """The rollback type: see the module's docstring."""

    name = ROLLBACK
    error_codes = (ReversedSince.code, MalformedPayload.code)
    page_size: int | None = None
    # Runs that write the ledger over the same dates go first (their entries must be there).
    waits_for = (BackfillType.WEBHOOK_REPLAY.value, BackfillType.REVERSAL_BACKFILL.value)
    options: frozenset[str] = frozenset()
    event_types: tuple[str, ...] = ()
    flags_events = False

    def __init__(self, scope: Target | None = None) -> None:
        self.scope = scope

    def variant(self, run: Mapping[str, Any]) -> Rollback:
        scope = Target.of(run.get("target"))
        return self if scope is None else Rollback(scope)

    def refusal(self, action: str) -> str | None:
        if action == "retry":
            return (": its failures are not retried; fix their cause, then roll back again "
                    "with force: true (it passes over what it rolled back)")
        return "; to undo it, replay its range: the replay reinstates what it rolled back"

    def chunks(self, run: RunRecord, plans: PlanStore) -> list[PlannedChunk]:
        """Two chunks: the entries the rolled-back run wrote, and the events it settled
        without one, each counted (an aggregation)."""
        assert run.rollback_of is not None
        undone = run.rollback_of["migrationId"]
        return [PlannedChunk(ENTRIES_CHUNK, None, None, plans.written(undone), None,
                             {"entriesOf": undone}),
                PlannedChunk(FLAGS_CHUNK, None, None, plans.settled(undone), None,
                             {"flagsOf": undone})]

    def source(self, db: firestore.Client, chunk: ChunkRecord, settings: Settings) -> PageSource:
        assert chunk.source is not None
        return WrittenSource.of(db, chunk.source)

    def size(self, plans: PlanStore, window: Window) -> int | None:
        raise TypeError("a rollback's chunks are its own (Rollback.chunks), not windows")

    def fetch(self, db: firestore.Client, ids: Sequence[str]) -> tuple[list[Event], list[str]]:
        raise TypeError("a rollback's failures are not retried (Rollback.refusal)")

    def lookups(self, events: Sequence[Event]) -> list[str]:
        paths: dict[str, None] = {}
        for item in events:
            entry = item.data
            if _is_event(entry):
                paths[f"{schema.EVENTS}/{item.event_id}"] = None
                # Its customer, when the scope names customers, is its purchase's.
                order_id = order_of(str(entry.get("eventType")), entry)
                if self.scope is not None and self.scope.customer_ids is not None \
                        and order_id and not document_id_problem(order_id):
                    paths[entry_path(ledger.purchase_id(order_id))] = None
                continue
            paths[entry_path(item.event_id)] = None
            for entry_id in (_order_entry(entry), entry.get("reinstates")):
                if isinstance(entry_id, str) and not document_id_problem(entry_id):
                    paths[entry_path(entry_id)] = None
            event_id = entry.get("sourceEventId")
            if isinstance(event_id, str) and event_id and not document_id_problem(event_id):
                paths[f"{schema.EVENTS}/{event_id}"] = None
        return list(paths)

    def gather(self, db: firestore.Client, sink: Sink, events: Sequence[Event],
               stored: Mapping[str, Stored], migration_id: str,
               window: Window) -> dict[str, Stored]:
        """The events the run settled as duplicates of the page's entries (and of the
        entries its reinstatements reinstate), which ``lookups`` cannot name: they are
        recorded on the entries it reads."""
        prefix = f"{schema.LEDGER}/"
        paths = {f"{schema.EVENTS}/{event_id}": None
                 for path, document in stored.items() if path.startswith(prefix)
                 for event_id in (document.data or {}).get("duplicateEvents") or []
                 if isinstance(event_id, str) and not document_id_problem(event_id)}
        return sink.read([path for path in paths if path not in stored])

    def plan(self, events: Sequence[Event], stored: Mapping[str, Stored],
             migration_id: str) -> PagePlan:
        plan = PagePlan()
        book = Book(stored, plan)
        for item in events:
            if (why := self._outside(item, stored)) is not None:
                plan.results.append(ItemResult(
                    item.event_id, _kind(item.data) or str(item.data.get("eventType", "")),
                    Outcome.SKIPPED, code=OUTSIDE_TARGET, settled=False, outside=True,
                    message=f"outside the rollback's scope: {why}"))
                continue
            if _is_event(item.data):
                plan.results.append(_unflag(item, plan, stored, migration_id))
                continue
            try:
                plan.results.append(_undo(item.event_id, book, plan, stored, migration_id))
            except ItemError as error:
                plan.results.append(ItemResult(item.event_id, _kind(item.data), Outcome.ERROR,
                                               code=error.code, message=error.message,
                                               hint=error.hint))
        return plan

    def _outside(self, item: Event, stored: Mapping[str, Stored]) -> str | None:
        """Why the item is outside the rollback's scope, or None (in it, or no scope)."""
        if self.scope is None:
            return None
        data = item.data
        if _is_event(data):
            def customer_of(order_id: str) -> str | None:
                found = stored.get(entry_path(ledger.purchase_id(order_id)))
                customer = (found.data or {}).get("customerId") if found is not None else None
                return customer if isinstance(customer, str) else None

            return self.scope.excludes(item.event_id, str(data.get("eventType")), data,
                                       customer_of)
        if self.scope.order_ids is not None and data.get("orderId") not in self.scope.order_ids:
            return "its order is not one of orderIds"
        if self.scope.customer_ids is not None \
                and data.get("customerId") not in self.scope.customer_ids:
            return "its customer is not one of customerIds"
        return None


def _undo(entry_id: str, book: Book, plan: PagePlan, stored: Mapping[str, Stored],
          migration_id: str) -> ItemResult:
    """Compensate one entry (checking everything before it changes the plan)."""
    entry = book.entry(entry_id)
    if entry is None:
        return ItemResult(entry_id, "", Outcome.SKIPPED, code="entry_gone", settled=True,
                          message="the entry no longer exists")
    kind = _kind(entry)
    if rolled_back_by := entry.get("rolledBackBy"):
        outcome = Outcome.DUPLICATE if rolled_back_by == migration_id else Outcome.SKIPPED
        return ItemResult(entry_id, kind, outcome, code="" if outcome is Outcome.DUPLICATE
                          else "already_rolled_back", settled=True,
                          message=f"rolled back by {rolled_back_by} already")
    points, customer_id = _int(entry, "points", entry_id), entry.get("customerId")
    order_entry_id = _order_entry(entry)
    if not isinstance(customer_id, str) or order_entry_id is None:
        raise MalformedPayload(f"Malformed ledger entry: {entry_id}: customerId or orderId")
    original_id = entry.get("reinstates") if kind == "reinstatement" else entry_id
    original = book.entry(original_id) if isinstance(original_id, str) else None
    if original is None:
        raise MalformedPayload(f"Malformed ledger entry: {entry_id}: reinstates")
    order = book.entry(order_entry_id)
    if _kind(original) == "reversal":
        if order is None:
            raise MalformedPayload(f"Malformed ledger entry: {entry_id}: its purchase entry "
                                   f"{order_entry_id} does not exist")
        refunded = _int(order, "refundedAmount", order_entry_id, 0)
        added = entry.get("refundedDelta", entry.get("amount", 0))
        added = added if isinstance(added, int) and not isinstance(added, bool) else 0
        book.change(order_entry_id, {
            "refundedAmount": max(0, refunded - added),
            "reversedPoints": max(0, _int(order, "reversedPoints", order_entry_id, 0) + points)})
    elif _kind(original) == "purchase":
        refunded = _int(order or {}, "refundedAmount", order_entry_id, 0)
        if refunded:
            raise ReversedSince(str(entry.get("orderId")), refunded)
    else:
        raise MalformedPayload(f"Malformed ledger entry: {entry_id}: type {kind!r} is not "
                               "one a run writes")
    plan.creates[ledger.rollback_id(migration_id, entry_id)] = {
        "customerId": customer_id,
        "type": "rollback",
        "points": -points,
        "orderId": entry.get("orderId"),
        "sourceEventId": entry.get("sourceEventId"),
        "source": "backfill",
        "migrationId": migration_id,
        "compensates": entry_id,
        "rollbackOf": entry.get("migrationId"),
    }
    # Every event the run settled against the entry goes with it: its own, and the other
    # deliveries of its order it took for duplicates (``duplicateEvents``, emptied here so a
    # later run records its own).
    duplicates = [event_id for event_id in original.get("duplicateEvents") or []
                  if isinstance(event_id, str)]
    undone: dict[str, Any] = {"rolledBackBy": migration_id}
    if duplicates:
        undone["duplicateEvents"] = []
    book.change(str(original_id), undone)
    if original_id != entry_id:
        book.change(entry_id, {"rolledBackBy": migration_id})
    plan.credit(customer_id, -points)
    for event_id in [entry.get("sourceEventId"), *duplicates]:
        event = stored.get(f"{schema.EVENTS}/{event_id}") if isinstance(event_id, str) else None
        if event is not None and event.data is not None:
            plan.event_updates[str(event_id)] = {"processed": False, "processedAt": None,
                                                 "rolledBackBy": migration_id}
    return ItemResult(entry_id, kind, Outcome.APPLIED, points=-points, customer_id=customer_id)


def _unflag(item: Event, plan: PagePlan, stored: Mapping[str, Stored],
            migration_id: str) -> ItemResult:
    """Clear the flag of an event the run settled without an entry."""
    event = stored.get(f"{schema.EVENTS}/{item.event_id}")
    data = event.data if event is not None else None
    if data is None or data.get("processed") is not True:
        return ItemResult(item.event_id, item.event_type, Outcome.SKIPPED, settled=True,
                          code="already_unflagged", message="the event is not flagged "
                                                            "processed any more")
    plan.event_updates[item.event_id] = {"processed": False, "processedAt": None,
                                         "rolledBackBy": migration_id}
    return ItemResult(item.event_id, item.event_type, Outcome.APPLIED)


def _is_event(document: Mapping[str, Any]) -> bool:
    """A webhook event (it has an ``eventType``; ledger entries have a ``type``)."""
    return "eventType" in document


def _kind(entry: Mapping[str, Any]) -> str:
    kind = entry.get("type")
    return kind if isinstance(kind, str) else ""


def _order_entry(entry: Mapping[str, Any]) -> str | None:
    """The purchase entry of the entry's order (which holds the order's refunds)."""
    order_id = entry.get("orderId")
    return ledger.purchase_id(order_id) if isinstance(order_id, str) and order_id else None


def _int(entry: Mapping[str, Any], key: str, entry_id: str, default: int | None = None) -> int:
    return entry_int(entry, key, entry_id, default, what="ledger entry")


BACKFILLS.register(Rollback(), internal=True)


class WrittenSource:
    """What a run wrote, as a rollback takes it: the ledger entries it wrote, or the events
    it settled without an entry, in descending id order (an order's reversals before its
    purchase); the cursor is the last document's id."""

    def __init__(self, db: firestore.Client, collection: str, query: Any) -> None:
        self._db = db
        self._collection = collection
        self._query = query

    @classmethod
    def of(cls, db: firestore.Client, source: Mapping[str, Any]) -> WrittenSource:
        if "entriesOf" in source:
            return cls(db, schema.LEDGER, schema.written_by(db, source["entriesOf"]))
        return cls(db, schema.EVENTS, schema.settled_by(db, source["flagsOf"]))

    def page(self, cursor: Mapping[str, Any] | None, limit: int) -> Page:
        if limit <= 0:
            return Page.empty()
        documents = self._db.collection(self._collection)
        query = self._query.order_by("__name__", direction=firestore.Query.DESCENDING) \
            .limit(limit)
        if cursor:
            query = query.start_after({"__name__": documents.document(cursor["eventId"])})
        items = [Event(snap.id, snap.to_dict() or {}) for snap in query.stream()]
        return Page(items, self.cursor_after(items[-1]) if items else None, len(items),
                    more=len(items) == limit)

    def cursor_after(self, event: Event) -> dict[str, Any]:
        return {"eventId": event.event_id}
