"""What the ledger backfills share: a rule book that applies each event of a page by the rule of
its event type (events of other types are skipped), and the window every selection takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Self

from google.cloud.firestore_v1.base_query import FieldFilter

from shared.backfills.apply import Book
from shared.backfills.base import Event, ItemResult, PagePlan, Stored
from shared.errors import ItemError
from shared.models import EventType, Outcome
from shared.planning import Window

Rule = Callable[[Event, Book, PagePlan, str], ItemResult]
REVERSAL_TYPES = (EventType.REFUND.value, EventType.CHARGEBACK.value)


def in_window(query: Any, window: Window) -> Any:
    return query.where(filter=FieldFilter("receivedAt", ">=", window.start)).where(
        filter=FieldFilter("receivedAt", "<", window.end))


class RuleBook:
    """Applies each event by the rule of its type; events of other types are skipped. A type
    built on it has no options and waits for nobody unless it says so."""

    rules: ClassVar[Mapping[str, Rule]]
    lookups_by_type: ClassVar[Mapping[str, Callable[[Event], list[str]]]]
    page_size: int | None = None
    waits_for: tuple[str, ...] = ()
    options: frozenset[str] = frozenset()

    def variant(self, run: Mapping[str, Any]) -> Self:
        return self

    def lookups(self, events: Sequence[Event]) -> list[str]:
        paths: dict[str, None] = {}
        for event in events:
            finder = self.lookups_by_type.get(event.event_type)
            if finder is not None:
                paths.update(dict.fromkeys(finder(event)))
        return list(paths)

    def plan(self, events: Sequence[Event], stored: Mapping[str, Stored],
             migration_id: str) -> PagePlan:
        plan = PagePlan()
        book = Book(stored, plan)
        for event in events:
            plan.results.append(self._apply(event, book, plan, migration_id))
        return plan

    def _apply(self, event: Event, book: Book, plan: PagePlan, migration_id: str) -> ItemResult:
        rule = self.rules.get(event.event_type)
        if rule is None:
            return ItemResult(event.event_id, event.event_type, Outcome.SKIPPED,
                              code="no_ledger_effect",
                              message=f"event type {event.event_type or '(none)'} "
                                      "has no ledger effect")
        try:
            # Rules check everything before they change the plan, so an error leaves no trace.
            return rule(event, book, plan, migration_id)
        except ItemError as error:
            return ItemResult(event.event_id, event.event_type, Outcome.ERROR, code=error.code,
                              message=error.message, hint=error.hint)


