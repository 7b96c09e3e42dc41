"""One delivery's context: the run, the chunk, its type, the stores, the sink and the clocks,
built once when the delivery claims its chunk and shared by its roles (the page loop, the page
commit, poison), instead of each holding copies of the chunk's identity."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

from google.cloud import firestore

from shared.adapters.stores import Stores
from shared.backfills.base import Backfill, Sink
from shared.config import Settings
from shared.domain import chunking
from shared.domain.chunking import Window
from shared.domain.records import RunRecord


@dataclasses.dataclass(frozen=True)
class Context:
    """What one delivery of a chunk task works with. ``sink`` is where its pages' effects go:
    the live data, or the run's shadow in a dry run (``shared.executor.sinks``)."""

    settings: Settings
    db: firestore.Client
    stores: Stores
    run: RunRecord
    chunk_id: str
    backfill: Backfill
    sink: Sink
    now: Callable[[], dt.datetime]
    monotonic: Callable[[], float]

    @property
    def migration_id(self) -> str:
        return self.run.migration_id

    @property
    def dry_run(self) -> bool:
        return self.run.dry_run

    @property
    def window(self) -> Window:
        """The run's whole range (what a type's hooks look across: a refund's purchase)."""
        return chunking.span(self.run.start_date, self.run.end_date)
