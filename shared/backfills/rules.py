"""What the ledger backfills share: a rule book that applies each event of a page by the rule of
its event type (events of other types are skipped), and the window every selection takes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Self

from shared.backfills.apply import Book, PurchaseNotFound
from shared.backfills.base import Event, ItemResult, PagePlan, Stored
from shared.backfills.webhook_events import WebhookEvents
from shared.domain.target import NO_CUSTOMER_YET, Target
from shared.errors import ItemError
from shared.models import Outcome

Rule = Callable[[Event, Book, PagePlan, str], ItemResult]
# The code of an event outside a targeted run's target (not counted as skipped: ``outside``).
OUTSIDE_TARGET = "outside_target"


class RuleBook(WebhookEvents):
    """Applies each event by the rule of its type; events of other types are skipped. A type
    built on it has no options and waits for nobody unless it says so. A run's ``target``
    (``shared.domain.target``) narrows the events it applies; the rest are ``outside``."""

    rules: ClassVar[Mapping[str, Rule]]
    lookups_by_type: ClassVar[Mapping[str, Callable[[Event], list[str]]]]
    creates_by_type: ClassVar[Mapping[str, Callable[[Event], list[str]]]] = {}
    page_size: int | None = None
    waits_for: tuple[str, ...] = ()
    options: frozenset[str] = frozenset()
    target: Target | None = None
    flags_events = True

    @property
    def event_types(self) -> tuple[str, ...]:
        """The event types it applies (a target's ``eventTypes`` must be among them)."""
        return tuple(self.rules)

    def variant(self, run: Mapping[str, Any]) -> Self:
        return self.aimed(Target.of(run.get("target")))

    def aimed(self, target: Target | None) -> Self:
        """This definition for a run of ``target`` (itself, without one)."""
        if target is None:
            return self
        aimed = copy.copy(self)
        aimed.target = target
        return aimed

    def types(self) -> list[str]:
        """The event types its selection takes: its own, narrowed by the target."""
        taken = tuple(self.rules)
        return self.target.types(taken) if self.target is not None else list(taken)

    def lookups(self, events: Sequence[Event]) -> list[str]:
        paths: dict[str, None] = {}
        for event in events:
            finder = self.lookups_by_type.get(event.event_type)
            if finder is not None:
                paths.update(dict.fromkeys(finder(event)))
        return list(paths)

    def creates(self, events: Sequence[Event]) -> set[str]:
        """Paths among ``lookups`` that ``plan`` reads only to learn they are absent, and then
        creates (the ``creates`` hook of ``Backfill``): an event's ``creates_by_type`` paths
        that no other event of the page reads for what it holds."""
        created: set[str] = set()
        read: set[str] = set()
        for event in events:
            finder = self.creates_by_type.get(event.event_type)
            made = set(finder(event)) if finder is not None else set()
            created |= made
            if (lookup := self.lookups_by_type.get(event.event_type)) is not None:
                read.update(path for path in lookup(event) if path not in made)
        return created - read

    def plan(self, events: Sequence[Event], stored: Mapping[str, Stored],
             migration_id: str) -> PagePlan:
        plan = PagePlan()
        book = Book(stored, plan)
        for event in events:
            plan.results.append(self._apply(event, book, plan, migration_id))
        return plan

    def _apply(self, event: Event, book: Book, plan: PagePlan, migration_id: str) -> ItemResult:
        if self.target is not None and (why := self.target.excludes(
                event.event_id, event.event_type, event.data, book.customer_of)) is not None:
            return ItemResult(event.event_id, event.event_type, Outcome.SKIPPED,
                              code=OUTSIDE_TARGET, message=f"outside the run's target: {why}",
                              settled=False, outside=True,
                              wants_purchase=why == NO_CUSTOMER_YET)
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
                              message=error.message, hint=error.hint,
                              wants_purchase=error.code == PurchaseNotFound.code)


