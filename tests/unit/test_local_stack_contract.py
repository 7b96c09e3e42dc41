"""The local stack contract's table of paths (``docs/local-stack-contract.md``) against what the
gateway routes (``emulators.gateway.ROUTES``) and the API the functions document
(``shared.api.openapi``): a path added to either and not to the table, or a row sent to another
function than the gateway sends it to, fails here."""

from __future__ import annotations

from emulators.gateway import ROUTES
from shared.api import openapi
from tests.conftest import ROOT

HEADER = "| method | path | function | what |"
GATEWAY_ITSELF = "(the gateway)"
# Served by the gateway but no part of the operators' API: the Cloud Tasks target, readiness.
NOT_IN_THE_API = {("POST", "/tasks/chunk"), ("GET", "/healthz")}


def documented() -> list[tuple[str, str, str]]:
    """The table's rows: (method, path, function)."""
    lines = (ROOT / "docs" / "local-stack-contract.md").read_text().splitlines()
    start = lines.index(HEADER) + 2  # past the header and its |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        method, path, function = (cell.strip() for cell in line.strip("|").split("|")[:3])
        rows.append((method, path, function))
    return rows


def routed_to(method: str, path: str) -> str | None:
    """The function the gateway sends ``method path`` to: its first route whose prefix is the
    path or a parent of it and whose method is the request's or any ("")."""
    for prefix, only, target in ROUTES:
        if (path == prefix or path.startswith(prefix + "/")) and only in ("", method):
            return target
    return None


def test_every_documented_path_goes_to_the_function_the_table_names() -> None:
    rows = documented()

    assert len(rows) == len(set(rows)) > 0
    for method, path, function in rows:
        expected = None if function == GATEWAY_ITSELF else function
        assert routed_to(method, path) == expected, (method, path)


def test_every_gateway_route_is_documented() -> None:
    rows = documented()

    for prefix, only, target in ROUTES:
        assert any(function == target and only in ("", method)
                   and (path == prefix or path.startswith(prefix + "/"))
                   for method, path, function in rows), (prefix, only, target)


def test_the_table_lists_every_operation_of_the_api_and_nothing_it_lacks() -> None:
    operations = {(method.upper(), path) for path, item in openapi.document()["paths"].items()
                  for method in item}

    assert {(method, path) for method, path, _ in documented()} - NOT_IN_THE_API == operations
