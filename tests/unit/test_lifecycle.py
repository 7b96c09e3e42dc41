"""The status tables: every move has a reason, final statuses have no way out, and a move the
tables do not list is refused with a message naming where the run stands."""

from __future__ import annotations

import pytest

from shared.domain import lifecycle
from shared.errors import Conflict
from shared.models import FINAL_CHUNK_STATES, FINAL_RUN_STATUSES, ChunkState, RunStatus


def test_every_move_has_a_reason_and_final_statuses_have_none() -> None:
    assert all(reason.strip() for reason in lifecycle.RUN_MOVES.values())
    assert all(reason.strip() for reason in lifecycle.CHUNK_MOVES.values())
    assert not [move for move in lifecycle.RUN_MOVES if move[0] in FINAL_RUN_STATUSES]
    assert not [move for move in lifecycle.CHUNK_MOVES if move[0] in FINAL_CHUNK_STATES]


def test_every_status_can_be_reached_and_every_active_one_can_end() -> None:
    reached = {RunStatus.PENDING} | {to for _, to in lifecycle.RUN_MOVES}
    assert reached == set(RunStatus)
    for status in set(RunStatus) - FINAL_RUN_STATUSES:
        assert lifecycle.run_can_move(status, RunStatus.CANCELLED)
    assert {to for _, to in lifecycle.CHUNK_MOVES} | {ChunkState.PENDING} == set(ChunkState)


@pytest.mark.parametrize(("current", "target"), [
    (RunStatus.COMPLETED, RunStatus.PAUSED),
    (RunStatus.CANCELLED, RunStatus.RUNNING),
    (RunStatus.FAILED, RunStatus.COMPLETED),
])
def test_a_move_out_of_a_final_status_is_refused(current: RunStatus, target: RunStatus) -> None:
    with pytest.raises(Conflict) as caught:
        lifecycle.run_move(current, target)

    assert caught.value.status == 409
    assert caught.value.message.startswith(f"the run is {current}; it cannot become {target}")
    assert "it is final" in caught.value.message


def test_a_paused_run_names_where_it_can_go() -> None:
    assert lifecycle.run_move("running", RunStatus.PAUSED).startswith("paused;")
    with pytest.raises(Conflict, match=r"from paused: cancelled, completed, failed, pending"):
        lifecycle.run_move("paused", RunStatus.PAUSED)
    with pytest.raises(Conflict):
        lifecycle.chunk_move("completed", ChunkState.RUNNING)
