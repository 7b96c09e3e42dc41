"""``schema.compare_and_set`` against the Firestore emulator: a write never overwrites what was
written after the read it decided on."""

from __future__ import annotations

from typing import Any

import pytest
from google.cloud import firestore

from shared.adapters import schema
from shared.errors import Unavailable


def test_a_conflicting_write_makes_it_read_and_decide_again(clean: firestore.Client) -> None:
    ref = clean.collection("cas").document("d")
    ref.set({"n": 0})
    seen: list[int] = []

    def decide(snap: Any) -> schema.Write[int] | schema.Done[int]:
        n = int(snap.get("n"))
        seen.append(n)
        if len(seen) == 1:
            ref.update({"n": 10})  # another writer lands between this read and the write
        return schema.Write({"n": n + 1}, lambda _: n + 1)

    answer = schema.compare_and_set(clean, ref, decide, attempts=3, what="d")

    assert (answer, seen) == (11, [0, 10])
    assert (ref.get().to_dict() or {})["n"] == 11


def test_done_writes_nothing_and_endless_conflicts_give_up(clean: firestore.Client) -> None:
    ref = clean.collection("cas").document("d")
    ref.set({"n": 0})

    def always_raced(snap: Any) -> schema.Write[int] | schema.Done[int]:
        ref.update({"n": firestore.Increment(1)})
        return schema.Write({"n": -1}, lambda _: -1)

    kept = schema.compare_and_set(clean, ref, lambda snap: schema.Done("kept"), attempts=1,
                                 what="d")
    with pytest.raises(Unavailable, match="d kept changing"):
        schema.compare_and_set(clean, ref, always_raced, attempts=3, what="d")
    given_up = schema.compare_and_set(clean, ref, always_raced, attempts=1, what="d",
                                     give_up=lambda: 0)

    assert (kept, given_up) == ("kept", 0)
    assert (ref.get().to_dict() or {})["n"] == 4  # only the racing increments landed
