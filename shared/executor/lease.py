"""A delivery's lease on a chunk: the chunk as this delivery last read or wrote it, and the one
way it writes the chunk, under the update time it holds.

Every write of a delivery to its chunk (a page's checkpoint, a suspect event, handing the chunk
on to the next segment) is made under the update time the lease holds, so the first write after
someone else moved the chunk (a newer delivery claimed it, an operator paused it) fails. The
lease then reads the chunk again: still ours and running, the caller plans again; otherwise it
raises ``Lost`` and the delivery stops without writing anything more.

A write whose outcome is unknown is settled by reading, never taken as lost. Its answer may not
come back (a reset connection, a deadline) although it landed, and the client library's retry
of a write that landed is refused by the write's own precondition. So each guarded write, and
the claim before them, stamps the chunk with a token unique to that write (``writeToken``: the
delivery's owner id and the write's number). After any error from a write, the chunk bearing
this write's token means it landed (the delivery goes on from what it wrote: the new cursor,
the next segment); any other token, that it did not, or that a newer delivery wrote the chunk
since, which makes the chunk not ours either way. Nothing applies twice: a write that did not
land is made again only under the update time read, which fails if anything moved.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from google.cloud import firestore

from shared import logs
from shared.adapters import schema
from shared.adapters.write_token import CLAIM_WRITE, CONFLICTS, STAMP, UNSURE, token_of, write_token
from shared.domain.records import ChunkRecord
from shared.errors import Unavailable
from shared.models import ChunkState

logger = logging.getLogger(__name__)

_HAND_ON_ATTEMPTS = 3


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
        self._migration_id = migration_id
        self._ref = schema.chunk_ref(db, migration_id, chunk.chunk_id)
        self._owner = chunk.lease_owner
        self._on_commit = on_commit
        self._writes = CLAIM_WRITE
        self._token: str | None = None  # of the last batch guarded
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
        as this lease holds it; the update carries a new write token (see ``landed``)."""
        self._token = self._stamp()
        batch.update(self._ref, {**fields, STAMP: self._token},
                     option=self._precondition())

    def landed(self, error: Exception) -> dt.datetime | None:
        """The last batch guarded failed with ``error``; settle whether it landed, by reading
        the chunk. Landed: answer the update time to pass to ``committed``. Not landed and
        the chunk still ours and running: hold the chunk as read, and answer None after a
        conflict (the caller reads and plans again) or raise ``error`` again (its own
        handling stands: contention slows down, an outage is retried with the task).
        Otherwise ``Lost``."""
        assert self._token is not None, "landed() asked before a batch was guarded"
        return self._settle(self._token, error)

    def committed(self, update_time: dt.datetime, cursor: dict[str, Any] | None, read: int,
                  cleared_suspect: bool, fields: dict[str, Any] | None = None) -> None:
        """A batch with this lease's guard committed at ``update_time``: keep the chunk in step
        (its cursor moved past ``read`` more entries; ``fields``: plain values it wrote, as
        record fields)."""
        changes: dict[str, Any] = {**(fields or {}), "update_time": update_time,
                                   "read": self.taken + read}
        if cursor is not None:
            changes["cursor"] = cursor
        if cleared_suspect:
            changes["suspect"] = None
        self.chunk = self.chunk.model_copy(update=changes)
        self._on_commit()

    def write(self, fields: dict[str, Any], changes: dict[str, Any]) -> None:
        """Write ``fields`` to the chunk alone (``changes``: the same, as record fields). When
        the chunk moved meanwhile but is still ours, the write is dropped and the lease reads
        the chunk again; ``Lost`` when it is not ours. A write that landed with its answer
        lost counts as written."""
        token = self._stamp()
        try:
            result = self._ref.update({**fields, STAMP: token},
                                      option=self._precondition())
        except UNSURE as error:
            landed = self._settle(token, error)
            if landed is not None:
                self.chunk = self.chunk.model_copy(update={**changes, "update_time": landed})
            return
        self.chunk = self.chunk.model_copy(update={**changes, "update_time": result.update_time})

    def hand_on(self, lease_until: dt.datetime) -> int:
        """Release the chunk at its cursor to the next segment (whose task the caller then
        enqueues); answer that segment. ``Lost`` when the chunk moved meanwhile.

        A hand-on that landed although its write failed (its answer lost) is a hand-on: the
        caller enqueues the next segment at once, rather than leaving the chunk to the
        watchdog. One that did not land, the chunk still ours, is made again under the update
        time read (a repeat of a landed one cannot apply: its precondition fails)."""
        segment = self.chunk.segment + 1
        for _ in range(_HAND_ON_ATTEMPTS):
            token = self._stamp()
            try:
                self._ref.update({"segment": segment, "leaseOwner": None,
                                  "updatedAt": firestore.SERVER_TIMESTAMP,
                                  "leaseUntil": lease_until, STAMP: token},
                                 option=self._precondition())
            except UNSURE as error:
                if self._settle(token, error) is None:
                    continue
            return segment
        raise Unavailable("the chunk kept changing while it was handed on; retry")

    def refresh(self) -> None:
        """Read the chunk again; ``Lost`` unless it is still running under this lease."""
        snap = self._ref.get()
        self._hold(ChunkRecord.from_snapshot(snap) if snap.exists else None)

    def _settle(self, token: str, error: Exception) -> dt.datetime | None:
        """``landed`` for the write stamped ``token``."""
        snap = self._ref.get()
        chunk = ChunkRecord.from_snapshot(snap) if snap.exists else None
        if chunk is not None and token_of(snap) == token:
            logs.log(logger, "a chunk write failed but had landed", logging.WARNING,
                     migration_id=self._migration_id, chunk_id=self.chunk.chunk_id,
                     code=type(error).__name__)
            # The chunk's update time is this write's if nothing wrote it since: whoever
            # moves a chunk releases it (no owner), a delivery stamps its own token. Else
            # keep the time held before, which the chunk no longer has: the next write fails,
            # and finds out who has the chunk now.
            held = chunk.update_time if self._ours(chunk) else self.chunk.update_time
            assert held is not None
            return held
        self._hold(chunk)
        if isinstance(error, CONFLICTS):
            return None
        raise error

    def _hold(self, chunk: ChunkRecord | None) -> None:
        """Hold ``chunk`` as read; ``Lost`` unless it is still running under this lease."""
        if chunk is None or not self._ours(chunk):
            raise Lost
        self.chunk = chunk

    def _ours(self, chunk: ChunkRecord) -> bool:
        return chunk.lease_owner == self._owner and chunk.state is ChunkState.RUNNING

    def _stamp(self) -> str:
        self._writes += 1
        return write_token(self._owner, self._writes)

    def _precondition(self) -> Any:
        return self._db.write_option(last_update_time=self.chunk.update_time)
