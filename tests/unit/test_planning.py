import bisect
import datetime as dt
import hashlib
import itertools
import json
import random
import re
from typing import Any

import pytest
from pydantic import ValidationError

from shared.adapters.cloud_tasks import ChunkTask, InProcessDispatcher, TaskBody
from shared.domain.chunking import Counted, Window, quotas, split, windows

# What the chunk handler accepts as a chunk id (functions/main.py), and Cloud Tasks in names.
_BUNDLE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


def test_one_window_per_utc_day_end_inclusive() -> None:
    result = windows(dt.date(2025, 1, 30), dt.date(2025, 2, 1), 1)

    assert [w.chunk_id for w in result] == ["2025-01-30", "2025-01-31", "2025-02-01"]
    assert result[0].start == dt.datetime(2025, 1, 30, tzinfo=dt.UTC)
    assert result[-1].end == dt.datetime(2025, 2, 2, tzinfo=dt.UTC)
    assert all(a.end == b.start for a, b in itertools.pairwise(result))


def test_multi_day_windows_cut_the_last_one_short() -> None:
    result = windows(dt.date(2025, 1, 1), dt.date(2025, 1, 10), 4)

    assert [(w.start.day, w.end.day) for w in result] == [(1, 5), (5, 9), (9, 11)]


def test_a_year_is_366_chunks_at_most() -> None:
    assert len(windows(dt.date(2024, 1, 1), dt.date(2024, 12, 31), 1)) == 366


def test_max_events_goes_to_the_oldest_chunks_first() -> None:
    assert quotas([5, 0, 7, 9], 10) == [5, 0, 5, 0]
    assert quotas([5, 7], 100) == [5, 7]
    assert quotas([3, 4], None) == [None, None]


def test_task_names_are_deterministic_and_valid() -> None:
    task = ChunkTask("webhook_replay_1704844800000", "2025-01-01", 2)

    assert task.name == ChunkTask("webhook_replay_1704844800000", "2025-01-01", 2).name
    assert task.name != ChunkTask("webhook_replay_1704844800000", "2025-01-01", 3).name
    assert task.name.endswith("-webhook_replay_1704844800000-2025-01-01-2")
    assert all(c.isalnum() or c in "-_" for c in task.name)


def test_in_process_dispatcher_dedups_names_like_cloud_tasks() -> None:
    dispatcher = InProcessDispatcher()
    task = ChunkTask("run", "2025-01-01")

    assert dispatcher.enqueue(task) is True
    assert dispatcher.enqueue(task) is False
    assert dispatcher.take() == [task]


# --- splitting busy windows ------------------------------------------------------------------

DAY = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


class Events:
    """Event times to count, as the planner's aggregation would; records every count asked."""

    def __init__(self, times: list[dt.datetime]) -> None:
        self.times = sorted(times)
        self.asked = 0

    def count(self, window: Window) -> int:
        self.asked += 1
        return bisect.bisect_left(self.times, window.end) - bisect.bisect_left(
            self.times, window.start)

    def counted(self, windows: list[Window]) -> list[Counted]:
        return [Counted(window, self.count(window)) for window in windows]


def incident(quiet_days: int, per_quiet_day: int, busy: int) -> Events:
    """``busy`` events within one hour of the first day, then quiet days."""
    rng = random.Random(7)
    times = [DAY + dt.timedelta(hours=9, seconds=rng.uniform(0, 3600)) for _ in range(busy)]
    for day in range(1, quiet_days + 1):
        times += [DAY + dt.timedelta(days=day, seconds=rng.uniform(0, 86400))
                  for _ in range(per_quiet_day)]
    return Events(times)


def test_an_incident_day_is_split_into_windows_that_tile_it_and_hold_at_most_the_bound() -> None:
    events = incident(quiet_days=3, per_quiet_day=100, busy=9000)
    days = windows(DAY.date(), DAY.date() + dt.timedelta(days=3), 1)

    pieces = split(events.counted(days), events.count, bound=1000, cap=499)

    assert all(piece.count <= 1000 for piece in pieces)
    assert sum(piece.count for piece in pieces) == len(events.times)
    assert [piece.count for piece in pieces] == [events.count(p.window) for p in pieces]
    assert pieces[0].window.start == days[0].start and pieces[-1].window.end == days[-1].end
    assert all(a.window.end == b.window.start for a, b in itertools.pairwise(pieces))
    ids = [piece.window.chunk_id for piece in pieces]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids[0] == "2025-01-01" and ids[-3:] == ["2025-01-02", "2025-01-03", "2025-01-04"]
    assert all(_BUNDLE_ID.fullmatch(chunk_id) for chunk_id in ids)
    # Halves hold about half: 9000 events fan out into 16 windows of 9000/16, not 9000 / 1.
    assert 9 <= len(pieces) - 3 <= 16
    assert all(piece.note == "" for piece in pieces)


def test_splitting_is_deterministic_and_leaves_quiet_windows_alone() -> None:
    quiet = incident(quiet_days=4, per_quiet_day=50, busy=0)
    days = windows(DAY.date() + dt.timedelta(days=1), DAY.date() + dt.timedelta(days=4), 1)
    counted = quiet.counted(days)
    asked = quiet.asked

    assert split(counted, quiet.count, bound=100, cap=499) == counted
    assert quiet.asked == asked  # no window over the bound: no count asked
    busy = incident(quiet_days=0, per_quiet_day=0, busy=5000)
    day = windows(DAY.date(), DAY.date(), 1)
    first = split(busy.counted(day), busy.count, bound=600, cap=499)
    again = split(busy.counted(day), busy.count, bound=600, cap=499)
    assert len(first) > 1
    assert first == again


def test_the_cap_bounds_the_chunks_and_the_windows_left_whole_say_why() -> None:
    events = incident(quiet_days=0, per_quiet_day=0, busy=8000)
    day = windows(DAY.date(), DAY.date(), 1)

    pieces = split(events.counted(day), events.count, bound=100, cap=5)

    assert len(pieces) == 5
    assert sum(piece.count for piece in pieces) == 8000
    over = [piece for piece in pieces if piece.count > 100]
    assert over and all("the run has 5 chunks" in piece.note for piece in over)


def test_events_of_one_instant_cannot_be_split_and_are_left_whole() -> None:
    instant = DAY + dt.timedelta(hours=3)
    events = Events([instant] * 500 + [DAY + dt.timedelta(hours=20)] * 10)
    day = windows(DAY.date(), DAY.date(), 1)

    pieces = split(events.counted(day), events.count, bound=100, cap=499)

    assert [piece.count for piece in pieces] == [500, 10]
    assert "one instant" in pieces[0].note
    assert pieces[1].note == ""


def test_max_events_stays_oldest_first_across_split_windows() -> None:
    events = incident(quiet_days=1, per_quiet_day=10, busy=3000)
    days = windows(DAY.date(), DAY.date() + dt.timedelta(days=1), 1)
    pieces = split(events.counted(days), events.count, bound=500, cap=499)

    shares = quotas([piece.count for piece in pieces], 1200)

    taken = 0
    for piece, share in zip(pieces, shares, strict=True):
        assert share == min(piece.count, 1200 - taken)
        taken += share or 0
    assert taken == 1200


def test_a_task_body_names_its_kind_and_reads_back_as_the_task() -> None:
    tasks = [ChunkTask("run_1", "2025-01-01", 3), ChunkTask.planning("run_1", 2),
             ChunkTask.watching("run_1", 7)]

    bodies = [json.loads(task.body()) for task in tasks]

    assert bodies == [
        {"kind": "chunk", "migrationId": "run_1", "chunkId": "2025-01-01", "segment": 3},
        {"kind": "plan", "migrationId": "run_1", "segment": 2},
        {"kind": "watch", "migrationId": "run_1", "segment": 7}]
    assert [TaskBody.model_validate_json(task.body()).task() for task in tasks] == tasks


def test_a_body_queued_before_kinds_were_explicit_reads_as_the_task_it_was() -> None:
    older = [b'{"migrationId": "run_1", "chunkId": "plan", "segment": 1}',
             b'{"migrationId": "run_1", "chunkId": "watch", "segment": 4}',
             b'{"migrationId": "run_1", "chunkId": "2025-01-01"}']

    tasks = [TaskBody.model_validate_json(body).task() for body in older]

    assert tasks == [ChunkTask.planning("run_1", 1), ChunkTask.watching("run_1", 4),
                     ChunkTask("run_1", "2025-01-01", 0)]
    # Named as they were then, so a repeat of a task queued before is a no-op.
    digest = hashlib.sha256(b"run_1-plan-1").hexdigest()[:8]
    assert tasks[0].name == f"{digest}-run_1-plan-1"


@pytest.mark.parametrize(("body", "wrong"), [
    ({"kind": "chunk", "migrationId": "r"}, "chunkId: is required for a chunk task"),
    ({"kind": "watch", "migrationId": "r", "chunkId": "d"}, "chunkId: a watch task names no"),
    ({"kind": "chunk", "migrationId": "r", "chunkId": "d", "segment": -1}, "segment"),
    ({"kind": "sleep", "migrationId": "r"}, "kind"),
])
def test_a_task_body_that_contradicts_its_kind_is_refused(body: dict[str, Any],
                                                           wrong: str) -> None:
    with pytest.raises(ValidationError, match=wrong.split(":")[0]):
        TaskBody.model_validate(body)
