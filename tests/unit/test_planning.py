import datetime as dt
import itertools

from shared.dispatch import ChunkTask, InProcessDispatcher
from shared.planning import quotas, windows


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
