"""The CLI is its own distribution (``cli/``, ``backfill-cli``): it imports nothing but the
standard library, its declared dependencies and itself, and a fresh virtualenv given
``pip install ./cli`` (from PyPI, pinned by constraints.txt) runs ``backfill`` without any of the
server code."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "cli"
PACKAGE = CLI / "backfill_cli"
SERVER = {"shared", "functions", "emulators", "tests", "benchmarks"}
# The import name of each distribution cli/pyproject.toml depends on.
MODULES = {"httpx": "httpx", "typer": "typer", "rich": "rich", "pydantic": "pydantic",
           "pydantic-settings": "pydantic_settings", "google-auth": "google",
           "requests": "requests"}


def imported(path: Path) -> set[str]:
    """The top-level modules ``path`` imports (relative imports count as the package's own)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("backfill_cli" if node.level else (node.module or "").split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


def dependencies() -> dict[str, str]:
    """cli/pyproject.toml's dependencies: name -> pinned version."""
    project = tomllib.loads((CLI / "pyproject.toml").read_text())["project"]
    return dict(requirement.partition("==")[::2] for requirement in project["dependencies"])


def test_the_cli_imports_only_the_standard_library_its_dependencies_and_itself() -> None:
    allowed = set(sys.stdlib_module_names) | set(MODULES.values()) | {"backfill_cli"}
    found = {path.name: names for path in PACKAGE.glob("*.py")
             if (names := imported(path) - allowed)}

    assert found == {}
    assert not any(imported(path) & SERVER for path in PACKAGE.glob("*.py"))
    assert set(dependencies()) == set(MODULES)


def test_the_cli_pins_what_the_bundle_pins() -> None:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pinned = {name.lower().replace("_", "-"): version for name, _, version in
              (line.partition("==") for line in lines if "==" in line)}

    assert {name: pinned.get(name) for name in dependencies()} == dependencies()


def test_pip_install_of_cli_gives_a_backfill_command_without_the_server_code(
        tmp_path: Path) -> None:
    source = tmp_path / "cli"
    # A copy: pip builds in its source tree, which would leave build/ and egg-info in cli/.
    shutil.copytree(CLI, source, ignore=shutil.ignore_patterns(
        "__pycache__", "build", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    bin_dir = venv / "bin"
    # Nothing of this checkout on the path: what runs is what pip installed.
    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    # As CI does: an editable line of a regenerated constraints.txt names this checkout.
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(
        line for line in (ROOT / "constraints.txt").read_text().splitlines(keepends=True)
        if not line.startswith("-e ")))
    subprocess.run([str(bin_dir / "pip"), "install", "--quiet", "-c", str(constraints),
                    str(source)],
                   check=True, capture_output=True, timeout=300, env=env, cwd=tmp_path)

    helped = subprocess.run([str(bin_dir / "backfill"), "--help"], capture_output=True,
                            text=True, timeout=60, env=env | {"COLUMNS": "120"}, cwd=tmp_path)
    server = subprocess.run(
        [str(bin_dir / "python"), "-c",
         "import importlib.util as u; print([m for m in ('shared', 'functions', 'emulators') "
         "if u.find_spec(m)])"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)

    assert helped.returncode == 0, helped.stderr
    assert "Usage: backfill" in helped.stdout and "rollback" in helped.stdout
    assert server.stdout.strip() == "[]", server.stderr
