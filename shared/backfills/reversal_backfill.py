"""``reversal_backfill``: takes every refund and chargeback of a window, processed or not, and
makes sure each has its reversal entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from shared.adapters.schema import in_window
from shared.backfills.apply import PurchaseNotFound, apply_reversal, reversal_lookups
from shared.backfills.base import Event
from shared.backfills.registry import BACKFILLS, BackfillType
from shared.backfills.rules import Rule, RuleBook
from shared.domain import target
from shared.domain.chunking import Window
from shared.errors import MalformedPayload
from shared.models import REVERSAL_TYPES


class ReversalBackfill(RuleBook):
    """Takes every refund and chargeback of a window, processed or not. It waits for the active
    replays of its dates (``waits_for``): a refund whose purchase a replay is about to apply
    would otherwise fail as "Original purchase entry not found"."""

    rules: ClassVar[Mapping[str, Rule]] = dict.fromkeys(REVERSAL_TYPES, apply_reversal)
    lookups_by_type: ClassVar[Mapping[str, Callable[[Event], list[str]]]] = dict.fromkeys(
        REVERSAL_TYPES, reversal_lookups)

    name = BackfillType.REVERSAL_BACKFILL.value
    error_codes = (MalformedPayload.code, PurchaseNotFound.code)
    waits_for = (BackfillType.WEBHOOK_REPLAY.value, BackfillType.ROLLBACK.value,
                 BackfillType.WEBHOOK_RECOVERY.value)
    options = frozenset(target.FIELDS)
    repairs = ("reversalsMissing",)
    # A live run is bound to the dry run it was reviewed from (``shared.domain.review``).
    reviewed = True

    def selection(self, events: firestore.CollectionReference, window: Window) -> Any:
        return in_window(events.where(filter=FieldFilter("eventType", "in", self.types())),
                         window)


BACKFILLS.register(ReversalBackfill())
