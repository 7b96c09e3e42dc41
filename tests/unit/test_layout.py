"""The library's shape, checked on its import graph: the use cases stand side by side (each
depends on records, stores and ports, never on another use case), only the composition
(``shared.router``, ``shared.wiring``, ``functions/main.py``) puts them together, and the deployed
library carries no client code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USE_CASES = {"launcher", "planner", "chunks", "control", "watchdog", "progress", "reports"}
CLIENT_ONLY = {"httpx", "typer", "rich", "backfill_cli"}


def imported(module: str) -> set[str]:
    """The modules ``shared/<module>.py`` imports, as top-level names below ``shared``, plus
    the other top-level packages it imports."""
    tree = ast.parse((ROOT / "shared" / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "shared" and len(parts) == 1:
                names.update(alias.name for alias in node.names)
            elif parts[0] == "shared":
                names.add(parts[1])
            else:
                names.add(parts[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


@pytest.mark.parametrize("use_case", sorted(USE_CASES))
def test_a_use_case_imports_no_other_use_case(use_case: str) -> None:
    assert imported(use_case) & (USE_CASES - {use_case}) == set()


def test_the_library_imports_no_client_code() -> None:
    modules = [path.stem for path in (ROOT / "shared").glob("*.py")]
    assert {module: found for module in modules
            if (found := imported(module) & CLIENT_ONLY)} == {}


def test_below_the_use_cases_nothing_imports_one() -> None:
    # Only the composition puts use cases together; the executor's roles (sources, commit,
    # ledgers, poison, lease), the stores and the records serve every use case alike.
    composition = {"router", "wiring", "__init__"}
    below = [path.stem for path in (ROOT / "shared").glob("*.py")
             if path.stem not in USE_CASES | composition]
    assert "commit" in below
    assert {module: found for module in below if (found := imported(module) & USE_CASES)} == {}
