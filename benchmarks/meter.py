"""Counting the Firestore reads and writes a client makes, as Firestore bills them.

``Meter(db)`` wraps the client's RPCs: every document a batch get answers (found or missing) is
one read, every document a query streams is one read (a query that finds nothing still bills
one), an aggregation is one read per 1,000 index entries it counts (``count`` is taken as one),
and every write of a commit is one write. Used by the benchmark, and by the tests that hold the
executor to its reads and writes per event.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

from google.cloud import firestore


@dataclasses.dataclass
class Counts:
    reads: int = 0
    writes: int = 0
    commits: int = 0
    queries: int = 0
    # Queries the executor issued from its read-ahead thread (the next page, during a commit).
    queries_ahead: int = 0
    batch_gets: int = 0
    aggregations: int = 0


class Meter:
    def __init__(self, db: firestore.Client) -> None:
        self.counts = Counts()
        self._lock = threading.Lock()
        api = db._firestore_api  # the GAPIC client every call of ``db`` goes through
        self._api = api
        self._originals: dict[str, Callable[..., Any]] = {}
        for name, wrap in (("commit", self._commit), ("batch_get_documents", self._batch_get),
                           ("run_query", self._run_query),
                           ("run_aggregation_query", self._aggregation)):
            original = getattr(api, name)
            self._originals[name] = original
            setattr(api, name, wrap(original))

    def close(self) -> None:
        """Unwrap the client's RPCs."""
        for name, original in self._originals.items():
            setattr(self._api, name, original)

    def reset(self) -> Counts:
        """The counts so far, and start again from zero."""
        with self._lock:
            counts, self.counts = self.counts, Counts()
        return counts

    def _add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.counts, name, getattr(self.counts, name) + delta)

    def _commit(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def commit(*args: Any, **kwargs: Any) -> Any:
            # Batches and transactions both pass their writes as ``request["writes"]``.
            writes = len(kwargs["request"]["writes"])
            response = original(*args, **kwargs)
            self._add(writes=writes, commits=1)
            return response
        return commit

    def _streamed(self, original: Callable[..., Any], counter: str,
                  counts: Callable[[Any], int]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Iterator[Any]:
            self._add(**{counter: 1})
            if counter == "queries" and threading.current_thread().name.startswith("read-ahead"):
                self._add(queries_ahead=1)
            found = 0
            for response in original(*args, **kwargs):
                found += counts(response)
                yield response
            self._add(reads=max(found, 1))
        return call

    def _batch_get(self, original: Callable[..., Any]) -> Callable[..., Any]:
        return self._streamed(original, "batch_gets",
                              lambda response: 1 if (response.found or response.missing) else 0)

    def _run_query(self, original: Callable[..., Any]) -> Callable[..., Any]:
        return self._streamed(original, "queries",
                              lambda response: 1 if response.document else 0)

    def _aggregation(self, original: Callable[..., Any]) -> Callable[..., Any]:
        return self._streamed(original, "aggregations", lambda response: 0)
