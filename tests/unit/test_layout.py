"""The library's shape, checked on its import graph: folders are layers, and each folder says
what it may import.

- the kernel (``config``, ``errors``, ``clock``, ``logs``, ``models``) imports only itself;
- ``domain/`` (records, statuses, planning and ledger rules, targets, throttle) imports the
  kernel and itself, and no Google library;
- ``adapters/`` (Firestore, Cloud Tasks, OIDC) are the only ones that build Google clients;
- ``backfills/`` (one module per type) sit on the domain and the adapters;
- ``executor/`` (one delivery of a chunk task) is used from outside only through its runner;
- ``runs/`` are the use cases side by side: none imports another, but ``completion`` (a run's
  end, which every path that ends a chunk shares);
- ``api/`` (bodies, answers, OpenAPI, the page) is imported by nothing below it;
- ``router`` and ``wiring`` (the composition root) and ``functions/main.py`` put them together.

And no two modules bear near-twin names, the deployed library carries no client code, and no
module outside ``backfills/`` names a backfill type but the registry.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / "shared"
KERNEL = {"config", "errors", "clock", "logs", "models"}
COMPOSITION = {"router", "wiring"}
FOLDERS = {"domain", "adapters", "backfills", "executor", "runs", "api"}
# What each part may import from the library (besides itself and the kernel).
ALLOWED = {
    "kernel": set(),
    "domain": set(),
    "adapters": {"domain"},
    "backfills": {"domain", "adapters"},
    "executor": {"domain", "adapters", "backfills", "runs.completion"},
    "runs": {"domain", "adapters", "backfills", "executor.runner", "runs.completion"},
    "api": {"domain", "adapters", "backfills", "runs"},
    "composition": {"domain", "adapters", "backfills", "executor.runner", "runs", "api",
                    "composition"},
}
# Google libraries that build clients or speak a service's protocol (an exception class from
# ``google.api_core`` is not a client).
CLIENTS = ("google.cloud", "google.auth", "google.oauth2")
CLIENT_ONLY = {"httpx", "typer", "rich", "backfill_cli"}


def modules() -> dict[str, Path]:
    """Every library module by dotted name below ``shared`` (``executor.runner``, ``config``)."""
    found = {}
    for path in SHARED.rglob("*.py"):
        relative = path.relative_to(SHARED).with_suffix("")
        if relative.name == "__init__":
            continue
        found[".".join(relative.parts)] = path
    return found


def part_of(module: str) -> str:
    """The layer a module belongs to: its folder, the kernel or the composition root."""
    head = module.split(".")[0]
    if head in FOLDERS:
        return head
    return "kernel" if head in KERNEL else "composition"


def imports(path: Path) -> set[str]:
    """The dotted names a module imports: library modules below ``shared`` (as
    ``executor.runner``) and other packages in full (``google.cloud.firestore``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "shared" or node.module.startswith("shared."):
                base = node.module.removeprefix("shared").lstrip(".")
                for alias in node.names:
                    name = f"{base}.{alias.name}" if base else alias.name
                    names.add(name if _is_module(name) else base)
            else:
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name}


def _is_module(name: str) -> bool:
    return (SHARED / Path(*name.split("."))).with_suffix(".py").exists() or (
        SHARED / Path(*name.split("."))).is_dir()


def library(names: set[str]) -> set[str]:
    return {name for name in names if name.split(".")[0] in FOLDERS | KERNEL | COMPOSITION}


def allowed(module: str, imported: str) -> bool:
    own, theirs = part_of(module), part_of(imported)
    if theirs == "kernel":
        return True
    if own == theirs == "runs":
        return imported == "runs.completion"
    if own == theirs:
        return True
    return theirs in ALLOWED[own] or imported in ALLOWED[own]


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_what_its_folder_may(module: str) -> None:
    wrong = {name for name in library(imports(MODULES[module])) if not allowed(module, name)}
    assert wrong == set(), f"shared.{module} may not import {sorted(wrong)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if part_of(m) == "runs"))
def test_a_use_case_imports_no_other_use_case(module: str) -> None:
    peers = {name for name in library(imports(MODULES[module]))
             if part_of(name) == "runs" and name not in (module, "runs.completion")}
    assert peers == set()


def test_only_adapters_and_the_executor_speak_to_google() -> None:
    # The executor's page commit and sources still build Firestore batches and queries; the
    # domain, the use cases and the api never do.
    speakers = {module for module, path in MODULES.items()
                if any(name.startswith(CLIENTS) for name in imports(path))}
    assert {part_of(module) for module in speakers} <= {
        "adapters", "executor", "backfills", "composition", "kernel"}
    assert not {module for module in speakers if part_of(module) in ("domain", "runs", "api")}


def test_the_library_imports_no_client_code() -> None:
    # httpx is also a provider's HTTP client, in that provider's adapter (PayNow's API).
    provider_clients = {"adapters.paynow": {"httpx"}}
    assert {module: found for module, path in MODULES.items()
            if (found := {name.split(".")[0] for name in imports(path)} & CLIENT_ONLY
                - provider_clients.get(module, set()))} == {}


def _stem(name: str) -> str:
    for suffix in ("ing", "ers", "er", "s"):
        if name.endswith(suffix) and len(name) - len(suffix) >= 4:
            return name[: -len(suffix)]
    return name


def test_no_two_modules_bear_near_twin_names() -> None:
    names = sorted({module.split(".")[-1] for module in MODULES} | FOLDERS)
    stems: dict[str, list[str]] = {}
    for name in names:
        stems.setdefault(_stem(name), []).append(name)
    assert {stem: found for stem, found in stems.items() if len(found) > 1} == {}


def named_types(path: Path, names: re.Pattern[str]) -> set[str]:
    """The backfill types a module's code names: in its string constants (docstrings aside:
    prose may speak of a type) and as ``BackfillType`` members."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            found.update(names.findall(node.value))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "BackfillType":
            found.add(node.attr.lower())
    return found


def test_no_type_is_named_outside_the_backfills_but_in_the_registry() -> None:
    from shared.backfills.registry import BACKFILLS

    # An internal type is named after the run-control action that starts it (``rollback``:
    # POST .../{migrationId}/rollback), so its name is the action's too: only the types the
    # trigger takes are looked for by name.
    names = re.compile(r"\b(" + "|".join(BACKFILLS.triggered()) + r")\b")
    assert names.search("a run of webhook_replay")  # the rule can fail
    modules = {f"shared.{module}": path for module, path in MODULES.items()
               if part_of(module) != "backfills"}
    modules["functions.main"] = ROOT / "functions" / "main.py"
    assert {module: found for module, path in modules.items()
            if (found := named_types(path, names))} == {}


def test_the_executor_is_used_from_outside_only_through_its_runner() -> None:
    users = {(module, name) for module, path in MODULES.items() if part_of(module) != "executor"
             for name in library(imports(path)) if part_of(name) == "executor"}
    assert {name for _, name in users} <= {"executor.runner"}
    assert ("router", "executor.runner") in users


def test_the_architecture_page_names_every_module_of_the_library() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    tree = page.split("## The tree", 1)[1].split("```")[1]
    words = set(re.findall(r"[a-z_]+", tree))
    assert {module.split(".")[-1] for module in MODULES} - words == set()
