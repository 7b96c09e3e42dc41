"""A delivery's lease on a chunk: the chunk as this delivery last read or wrote it, and the one
way it writes the chunk, under the update time it holds.

Every write of a delivery to its chunk (a page's checkpoint, a suspect event, handing the chunk
on to the next segment) is made under the update time the lease holds, so the first write after
someone else moved the chunk (a newer delivery claimed it, an operator paused it) fails. The
lease then reads the chunk again: still ours and running, the caller plans again; otherwise it
raises ``Lost`` and the delivery stops without writing anything more.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from shared import store
from shared.models import ChunkState
from shared.records import ChunkRecord

# What a write under a stale update time (or to a deleted chunk) fails with.
CONFLICTS = (api_exceptions.Conflict, api_exceptions.FailedPrecondition,
             api_exceptions.NotFound)


class Lost(Exception):
    """Another delivery owns the chunk now, or it ended, was paused or cancelled meanwhile."""


class Lease:
    def __init__(self, db: firestore.Client, migration_id: str, chunk: ChunkRecord,
                 on_commit: Callable[[], None] = lambda: None) -> None:
        """``chunk`` is the chunk as claimed (``ChunkStore.claim``), with its update time;
        ``on_commit`` is called after each batch this lease guarded committed."""
        assert chunk.update_time is not None
        assert chunk.lease_owner is not None
        self._db = db
        self._ref = store.chunk_ref(db, migration_id, chunk.chunk_id)
        self._owner = chunk.lease_owner
        self._on_commit = on_commit
        self.chunk = chunk

    @property
    def taken(self) -> int:
        """Events read from the chunk's own source so far (what its quota bounds)."""
        return self.chunk.read

    @property
    def left(self) -> int | None:
        """Events the chunk's quota still allows (None: no quota)."""
        quota = self.chunk.quota
        return None if quota is None else quota - self.taken

    def guard(self, batch: firestore.WriteBatch, fields: dict[str, Any]) -> None:
        """Add the chunk's update to ``batch``, so the batch commits only if the chunk is still
        as this lease holds it."""
        batch.update(self._ref, fields, option=self._precondition())

    def committed(self, update_time: dt.datetime, cursor: dict[str, Any] | None, read: int,
                  cleared_suspect: bool) -> None:
        """A batch with this lease's guard committed at ``update_time``: keep the chunk in step
        (its cursor moved past ``read`` more entries)."""
        changes: dict[str, Any] = {"update_time": update_time, "read": self.taken + read}
        if cursor is not None:
            changes["cursor"] = cursor
        if cleared_suspect:
            changes["suspect"] = None
        self.chunk = self.chunk.model_copy(update=changes)
        self._on_commit()

    def write(self, fields: dict[str, Any], changes: dict[str, Any]) -> None:
        """Write ``fields`` to the chunk alone (``changes``: the same, as record fields). When
        the chunk moved meanwhile but is still ours, the write is dropped and the lease reads
        the chunk again; ``Lost`` when it is not ours."""
        try:
            result = self._ref.update(fields, option=self._precondition())
        except CONFLICTS:
            self.refresh()
            return
        self.chunk = self.chunk.model_copy(update={**changes, "update_time": result.update_time})

    def hand_on(self, lease_until: dt.datetime) -> int:
        """Release the chunk at its cursor to the next segment (whose task the caller then
        enqueues); answer that segment. ``Lost`` when the chunk moved meanwhile."""
        segment = self.chunk.segment + 1
        try:
            self._ref.update({"segment": segment, "leaseOwner": None,
                              "updatedAt": firestore.SERVER_TIMESTAMP,
                              "leaseUntil": lease_until}, option=self._precondition())
        except CONFLICTS:
            raise Lost from None
        return segment

    def refresh(self) -> None:
        """Read the chunk again; ``Lost`` unless it is still running under this lease."""
        snap = self._ref.get()
        chunk = ChunkRecord.from_snapshot(snap) if snap.exists else None
        if (chunk is None or chunk.lease_owner != self._owner
                or chunk.state is not ChunkState.RUNNING):
            raise Lost
        self.chunk = chunk

    def _precondition(self) -> Any:
        return self._db.write_option(last_update_time=self.chunk.update_time)
