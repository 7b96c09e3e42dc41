"""The write token: how a guarded write that landed is told from one that did not when its
answer was lost. Each guarded write of a delivery stamps the chunk with a token unique to that
write; reading the chunk back says whether it landed (``shared.executor.lease``), so a retry of
a commit whose answer was lost is never applied twice nor taken for a conflict.
"""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions as api_exceptions

# What a write under a stale update time (or to a deleted chunk) fails with.
CONFLICTS = (api_exceptions.Conflict, api_exceptions.FailedPrecondition,
             api_exceptions.NotFound)
# What a write may fail with although it landed: anything Google's client raises (its retry
# of a commit that landed is refused, conflicts, runs out of time or is pushed back).
UNSURE = (api_exceptions.GoogleAPIError,)

# The chunk field each guarded write of a delivery stamps with its token, and the number of
# the claim's write (the lease numbers its own writes from the next one).
STAMP = "writeToken"
CLAIM_WRITE = 0


def write_token(owner: str, write: int) -> str:
    """The token of the ``write``-th guarded write of the delivery ``owner``: unique, as owner
    ids are unique per delivery."""
    return f"{owner}/{write}"


def token_of(snap: Any) -> str | None:
    """The token of the last guarded write a chunk snapshot bears (None: none yet)."""
    token = (snap.to_dict() or {}).get(STAMP)
    return token if isinstance(token, str) else None
