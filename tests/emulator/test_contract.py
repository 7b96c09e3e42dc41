"""The running bundle keeps its OpenAPI contract: schemathesis generates requests for every
operation of ``docs/openapi.json`` (valid and invalid bodies, parameters and ids) and sends
them through the local stack's gateway with an operator's token. Every answer must be
documented (status code, content type) and match its schema, and none may be a server error.
The examples are bounded, so the run takes about a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from google.cloud import firestore

from emulators.stack import Stack
from tests import data
from tests.conftest import ROOT, Mint

pytestmark = pytest.mark.emulator

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance")


def ended_run(gateway: str, token: str, db: firestore.Client) -> str:
    """A live replay that ended with a failed event: every run operation has a run to act on
    (retry and rollback start runs of their own; pause, cancel and throttle get a 409)."""
    data.product(db, "p1", 10)
    data.put(db, *data.purchases(12, days=1),
             data.purchase("bad", "obad", data.at(1, 700), lines=[("retired", 1)]))
    started = httpx.post(f"{gateway}/api/jobs/backfill", timeout=30,
                         headers={"Authorization": f"Bearer {token}"},
                         json={"type": "webhook_replay", "startDate": "2025-01-01",
                               "endDate": "2025-01-01", "dryRun": False}).json()
    migration_id: str = started["migrationId"]
    return migration_id


def test_the_stack_answers_as_its_openapi_document_says(
        stack: Stack, stack_env: dict[str, str], clean: firestore.Client, mint: Mint,
        tmp_path: Path) -> None:
    gateway = stack_env["BACKFILL_GATEWAY_URL"]
    token = mint()
    served = httpx.get(f"{gateway}/api/openapi.json",
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert served.status_code == 200
    assert served.json() == json.loads((ROOT / "docs" / "openapi.json").read_text())
    migration_id = ended_run(gateway, token, clean)
    stack.wait_idle(timeout=120)
    config = tmp_path / "schemathesis.toml"
    # Every operation on a run acts on this one (no random id would find a run), and a trace
    # is of a customer the run credited (data.purchases: c0..c6).
    config.write_text("[[operations]]\n"
                      "include-path-regex = '\\{migrationId\\}'\n"
                      f"parameters = {{ migrationId = '{migration_id}' }}\n"
                      "[[operations]]\n"
                      "include-path-regex = '/api/admin/trace'\n"
                      "parameters = { customerId = 'c1' }\n")

    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
         str(ROOT / "docs" / "openapi.json"),
         "--url", gateway, "--header", f"Authorization: Bearer {token}",
         "--checks", ",".join(CHECKS), "--max-examples", "12", "--workers", "1",
         "--phases", "examples,coverage,fuzzing", "--seed", "20261201",
         "--suppress-health-check", "all", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    stack.wait_idle(timeout=120)

    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # The run operations reached a run (not only 404s), and every generated case passed.
    assert "Missing test data" not in result.stdout, result.stdout[-3000:]
    assert " passed" in result.stdout and " failed" not in result.stdout, result.stdout[-3000:]
