"""The backfill types, by name: each is a whole job definition (``shared.backfills.base.Backfill``)
declared once, in its own module, which registers it here. A new type is that module and its
import in ``shared/backfills/__init__.py``; the trigger, the planner, the executor and the status
find it here by the ``type`` of a request or a run.
"""

from __future__ import annotations

import enum

from shared.backfills.base import Backfill
from shared.domain.records import RunRecord
from shared.errors import UNEXPECTED_ERROR, EventMissing


class BackfillType(enum.StrEnum):
    """The built-in types' names: the one place outside their modules that names them."""

    WEBHOOK_REPLAY = "webhook_replay"
    REVERSAL_BACKFILL = "reversal_backfill"
    # Checks the ledger against the data contract (shared.backfills.ledger_verify).
    LEDGER_VERIFY = "ledger_verify"
    # Started through run control only: undoes what one run wrote (shared.backfills.rollback).
    ROLLBACK = "rollback"
    # Stores the events PayNow's webhook history has and webhookEvents lacks
    # (shared.backfills.webhook_recovery).
    WEBHOOK_RECOVERY = "webhook_recovery"


class Registry:
    def __init__(self) -> None:
        self._types: dict[str, Backfill] = {}
        self._internal: set[str] = set()

    def register(self, backfill: Backfill, internal: bool = False) -> Backfill:
        """Add a type; its name must be new. An ``internal`` type's runs are started by the
        bundle itself (a rollback, through run control), never by the trigger."""
        if backfill.name in self._types:
            raise ValueError(f"a backfill type {backfill.name!r} is registered already")
        self._types[backfill.name] = backfill
        if internal:
            self._internal.add(backfill.name)
        return backfill

    def triggered(self) -> tuple[str, ...]:
        """The types the trigger starts."""
        return tuple(name for name in self._types if name not in self._internal)

    def internal(self, name: str) -> bool:
        return name in self._internal

    def unregister(self, name: str) -> None:
        """Remove a type (tests that register one of their own)."""
        del self._types[name]
        self._internal.discard(name)

    def get(self, name: str) -> Backfill:
        """The type called ``name``; ``KeyError`` if there is none."""
        return self._types[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._types)

    def reviewed(self) -> tuple[str, ...]:
        """The types whose live runs are bound to a reviewed dry run (``reviewed``)."""
        return tuple(name for name, backfill in self._types.items()
                     if getattr(backfill, "reviewed", False))

    def repairing(self, gap: str) -> str:
        """The type a gaps report suggests for ``gap`` (a key of its totals): the first
        registered whose ``repairs`` names it."""
        return next(backfill.name for backfill in self._types.values()
                    if gap in getattr(backfill, "repairs", ()))

    def undoer(self) -> str:
        """The type whose runs undo another run (started by run control's rollback)."""
        return BackfillType.ROLLBACK.value

    def of(self, run: RunRecord) -> Backfill:
        """The definition a run describes: its type, as its options select it."""
        return self.get(run.type).variant({"includeProcessed": run.include_processed,
                                           "repair": run.repair, "target": run.target,
                                           "dryRun": run.dry_run})

    def error_codes(self) -> tuple[str, ...]:
        """Every per-event error code a run may record: its types', then the executor's."""
        codes: dict[str, None] = {}
        for backfill in self._types.values():
            codes.update(dict.fromkeys(backfill.error_codes))
        codes.update(dict.fromkeys((EventMissing.code, UNEXPECTED_ERROR)))
        return tuple(codes)


BACKFILLS = Registry()

