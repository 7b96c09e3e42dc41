"""Fixtures shared by the function and emulator tests: one local stack per test session.

The stack (official Firestore emulator, Cloud Tasks emulator, local OIDC issuer, local PayNow,
gateway, scheduler) runs from ``.local/test-stack`` on ports 9101-9107, apart from the
developer's ``make up`` stack. Firestore is emptied before every test that asks for ``clean``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.cloud import firestore

from emulators.issuer import mint_token
from emulators.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
TEST_PORT_BASE = int(os.environ.get("BACKFILL_TEST_PORT_BASE", "9100"))
# Small pages and a short time budget, so that tests cross page and task boundaries.
GATEWAY_OVERRIDES = {"BACKFILL_PAGE_SIZE": "20", "BACKFILL_TIME_BUDGET_SECONDS": "1"}
OPERATOR = "ops@example.com"

Mint = Callable[..., str]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    state = "test-stack" if TEST_PORT_BASE == 9100 else f"test-stack-{TEST_PORT_BASE}"
    # No background sweeps: every test shares the one Firestore emulator.
    local = Stack(ROOT / ".local" / state, TEST_PORT_BASE, GATEWAY_OVERRIDES,
                  tasks_venv=ROOT / ".local" / "tasks-venv", sweep_seconds=0)
    local.up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def stack_env(stack: Stack) -> dict[str, str]:
    return stack.env()


@pytest.fixture(scope="session")
def db(stack_env: dict[str, str]) -> firestore.Client:
    os.environ["FIRESTORE_EMULATOR_HOST"] = stack_env["FIRESTORE_EMULATOR_HOST"]
    # The functions run in this process too: their notices go to the stack's Pub/Sub emulator.
    os.environ["PUBSUB_EMULATOR_HOST"] = stack_env["PUBSUB_EMULATOR_HOST"]
    return firestore.Client(project=stack_env["BACKFILL_PROJECT_ID"])


@pytest.fixture
def clean(stack: Stack, db: firestore.Client) -> firestore.Client:
    stack.reset_firestore()
    return db


@pytest.fixture(scope="session")
def mint(stack_env: dict[str, str]) -> Mint:
    """``mint(email, audience=None)``: a token from the stack's issuer (default: operators')."""

    def _mint(email: str = OPERATOR, audience: str | None = None) -> str:
        return mint_token(stack_env["BACKFILL_ISSUER_URL"], email,
                          audience or stack_env["BACKFILL_OPERATOR_AUDIENCES"].split(",")[0])

    return _mint
