"""One commit's budget (``schema.fits_one_commit``): counted on the client's own encoded writes,
so what is checked is what the commit would send."""

from __future__ import annotations

from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from shared.adapters import schema
from shared.config import (
    MAX_COMMIT_BYTES,
    MAX_PAGE_SIZE,
    MAX_WRITES_PER_COMMIT,
    MAX_WRITES_PER_EVENT,
)


def _batch(writes: int, size: int) -> firestore.WriteBatch:
    db = firestore.Client(project="budget", credentials=AnonymousCredentials())
    batch = db.batch()
    for number in range(writes):
        batch.set(db.collection("c").document(f"d{number}"), {"blob": "x" * size})
    return batch


def test_a_full_page_of_the_largest_events_fits_the_write_count() -> None:
    assert MAX_PAGE_SIZE * MAX_WRITES_PER_EVENT + 1 <= MAX_WRITES_PER_COMMIT


def test_the_write_count_is_a_limit() -> None:
    assert schema.fits_one_commit(_batch(MAX_WRITES_PER_COMMIT, 10))
    assert not schema.fits_one_commit(_batch(MAX_WRITES_PER_COMMIT + 1, 10))


def test_the_encoded_size_is_a_limit() -> None:
    size = 100_000
    under = MAX_COMMIT_BYTES // (size + 200)
    assert schema.fits_one_commit(_batch(under, size))
    assert not schema.fits_one_commit(_batch(under + 2, size))
