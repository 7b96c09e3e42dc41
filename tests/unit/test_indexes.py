"""The Firestore indexes, declared twice, for Terraform (``infra/firestore.tf``) and for the
Firebase CLI (``infra/firestore.indexes.json``): the two lists of composite indexes must name the
same indexes, and the two lists of single-field index exemptions the same fields.

An exempt field has no single-field index: a query that filters or orders on it alone fails in
production (the emulator, which enforces no index, would not tell). So no exempt field may be
one the code queries, nor one a declared composite index holds (``docs/indexes.md``).

How the code's queries are found (``queried_fields``), statically, per collection as well as
the source allows: every function and method of ``shared/`` and ``functions/`` is read on its
own (its source text, nested functions included). The fields it queries are the names given
to ``FieldFilter(...)`` (a string, or a ``schema`` constant), ``order_by(...)``,
``where("...")``, ``start_after({...})`` keys, ``.sum("...")``/``.avg("...")`` and, in a
function that aggregates (``aggregate``, ``sums``, ``.sum(``), ``FieldPath(...)`` and
f-strings of the form ``f"name.{...}"`` (``counters.{name}``; elsewhere those name what a write
sets). ``select([...])`` is left out:
a projection needs no index. The collections those queries run on are the ones the function
names (``COLLECTION_HINTS``: ``schema.EVENTS``, ``in_window(``, ``self._shadow``, ...), or its
class stands for (``CLASS_HINTS``: ``FirestoreChunks`` and its ``self._collection``); a
function that names none is taken to query every collection (the safe side). Field paths count
by their top-level field (``counters.taken`` as ``counters``, ``payload.body.id`` as
``payload``), as an exemption of a map field covers its subfields.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.adapters import rate_limit, schema
from shared.adapters.firestore_admin import COMPOSITE_INDEXES
from tests.conftest import ROOT

Index = tuple[str, tuple[tuple[str, str], ...]]
# (collection group id, top-level field path)
Field = tuple[str, str]
EVERY = "*"  # a function whose collection the scan cannot tell: any collection


def _without_name(fields: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    # __name__ closes every index implicitly; Terraform spells it out, the JSON need not.
    return tuple(field for field in fields if field[0] != "__name__")


def _terraform() -> str:
    return (ROOT / "infra" / "firestore.tf").read_text()


def _json() -> dict[str, list[dict[str, Any]]]:
    loaded: dict[str, list[dict[str, Any]]] = json.loads(
        (ROOT / "infra" / "firestore.indexes.json").read_text())
    return loaded


def terraform_indexes() -> set[Index]:
    found = set()
    for collection, body in re.findall(
            r'collection\s*=\s*"(\w+)"\s*query_scope\s*=\s*"\w+"\s*fields\s*=\s*\[(.*?)\]\n',
            _terraform(), re.S):
        found.add((collection, _without_name(re.findall(r'\["([\w.]+)", "(\w+)"\]', body))))
    return found


def json_indexes() -> set[Index]:
    listed = _json()["indexes"]
    return {(index["collectionGroup"], _without_name(
        [(field["fieldPath"], field["order"]) for field in index["fields"]]))
        for index in listed}


def terraform_exemptions() -> list[Field]:
    """The ``google_firestore_field`` resources' (collection, field), in declared order."""
    block = re.search(r"firestore_field_exemptions\s*=\s*\{(.*?)\n  \}\n", _terraform(), re.S)
    assert block, "no local.firestore_field_exemptions in infra/firestore.tf"
    return re.findall(r'\{\s*collection\s*=\s*"([^"]+)"\s*,\s*field\s*=\s*"([^"]+)"\s*\}',
                      block.group(1))


def json_exemptions() -> list[Field]:
    return [(str(override["collectionGroup"]), str(override["fieldPath"]))
            for override in _json()["fieldOverrides"] if override["indexes"] == []]


def terraform_collection_group_fields() -> list[Field]:
    block = re.search(r"firestore_collection_group_fields\s*=\s*\{(.*?)\n  \}\n",
                      _terraform(), re.S)
    assert block, "no local.firestore_collection_group_fields in infra/firestore.tf"
    return re.findall(r'\{\s*collection\s*=\s*"([^"]+)"\s*,\s*field\s*=\s*"([^"]+)"\s*\}',
                      block.group(1))


def json_collection_group_fields() -> list[Field]:
    return [(str(override["collectionGroup"]), str(override["fieldPath"]))
            for override in _json()["fieldOverrides"]
            if any(index.get("queryScope") == "COLLECTION_GROUP"
                   for index in override["indexes"])]


def exempt_fields() -> set[Field]:
    return set(terraform_exemptions())


def composite_fields() -> set[Field]:
    """Every (collection, top-level field) a declared composite index holds."""
    return {(collection, path.split(".")[0])
            for collection, fields in terraform_indexes() for path, _ in fields}


# --- the code's queries ---------------------------------------------------------------------

# Text in a function's source that names the collection its queries run on.
COLLECTION_HINTS: dict[str, tuple[str, ...]] = {
    schema.EVENTS: (r"\bEVENTS\b", r"\bin_window\(", r"\bsettled_by\(", r"\bevents(_ref)?\b"),
    schema.LEDGER: (r"\bLEDGER\b", r"\bwritten_by\("),
    schema.WALLETS: (r"\bWALLETS\b",),
    schema.PRODUCTS: (r"\bPRODUCTS\b",),
    schema.RUNS: (r"collection\((schema\.)?RUNS\)",),
    schema.CHUNKS: (r"\bCHUNKS\b",),
    schema.ERRORS: (r"\bERRORS\b", r"\berrors_query\("),
    schema.AUDITS: (r"\bAUDITS\b",),
    schema.SHADOW_LEDGER: (r"\bSHADOW_LEDGER\b", r"self\._shadow\b"),
    schema.SHADOW_DOCUMENTS: (r"\bSHADOW_DOCUMENTS\b",),
    rate_limit.COLLECTION: (r"collection\(COLLECTION\)",),
}
# Classes whose every method works on one collection (through a helper the hints do not see).
CLASS_HINTS = {"FirestoreChunks": schema.CHUNKS, "FirestoreRuns": schema.RUNS,
               "FirestoreErrors": schema.ERRORS}
_AGGREGATES = re.compile(r"\baggregate\(|\bsums\(|\.sum\(|\.avg\(")
_FIELD_NAMES = (
    re.compile(r'FieldFilter\(\s*"([^"]+)"'),
    re.compile(r'\border_by\(\s*"([^"]+)"'),
    re.compile(r'\.where\(\s*"([^"]+)"'),
    re.compile(r'\.(?:sum|avg)\(\s*"([^"]+)"'),
)
_FIELD_CONSTANTS = re.compile(r"FieldFilter\(\s*(?:schema\.)?([A-Z][A-Z_]+)\b")
# Read only in a function that aggregates: elsewhere they name fields a write sets.
_PATH_NAMES = re.compile(r'FieldPath\(\s*"([^"]+)"')
_PATH_CONSTANTS = re.compile(r"FieldPath\(\s*(?:schema\.)?([A-Z][A-Z_]+)\b")
_START_AFTER = re.compile(r"start_after\(\s*\{([^}]*)\}")
_MAP_PREFIX = re.compile(r'f"(\w+)\.\{')


def _functions(path: Path) -> Iterator[tuple[str | None, str]]:
    """Each top-level function and method of a module: its class (if a method), its source."""
    text = path.read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield None, ast.get_source_segment(text, node) or ""
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield node.name, ast.get_source_segment(text, item) or ""


def _fields_in(source: str) -> set[str]:
    """The top-level fields a function's source queries."""
    names: set[str] = set()
    for pattern in _FIELD_NAMES:
        names.update(pattern.findall(source))
    constants = _FIELD_CONSTANTS.findall(source)
    for keys in _START_AFTER.findall(source):
        names.update(re.findall(r'"([^"]+)"\s*:', keys))
    if _AGGREGATES.search(source):
        names.update(_MAP_PREFIX.findall(source))
        names.update(_PATH_NAMES.findall(source))
        constants += _PATH_CONSTANTS.findall(source)
    for constant in constants:
        value = getattr(schema, constant, None)
        if isinstance(value, str):
            names.add(value)
    return {name.split(".")[0] for name in names if name != "__name__"}


def _collections_in(source: str, cls: str | None) -> set[str]:
    found = {collection for collection, hints in COLLECTION_HINTS.items()
             if any(re.search(hint, source) for hint in hints)}
    if cls in CLASS_HINTS:
        found.add(CLASS_HINTS[cls])
    return found or {EVERY}


def queried_fields() -> set[Field]:
    """(collection, top-level field) for each field the code queries; collection ``EVERY``
    when the function querying it names no collection (see the module's docstring)."""
    queried: set[Field] = set()
    for folder in ("shared", "functions"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for cls, source in _functions(path):
                fields = _fields_in(source)
                for collection in _collections_in(source, cls) if fields else ():
                    queried.update((collection, field) for field in fields)
    return queried


def is_queried(field: Field, queried: set[Field]) -> bool:
    return field in queried or (EVERY, field[1]) in queried


# --- the tests ------------------------------------------------------------------------------


def test_terraform_and_the_firebase_cli_declare_the_same_indexes() -> None:
    terraform = terraform_indexes()

    assert len(terraform) >= 10
    assert terraform == json_indexes()


def test_terraform_and_the_firebase_cli_declare_the_same_exemptions() -> None:
    terraform, firebase = terraform_exemptions(), json_exemptions()

    assert len(terraform) >= 20
    assert len(set(terraform)) == len(terraform), "an exemption is declared twice"
    assert sorted(terraform) == sorted(firebase)
    # Each one drops every single-field index and touches nothing else (no TTL policy); the
    # only other overrides add a collection-group index (and keep the collection's).
    for override in _json()["fieldOverrides"]:
        assert set(override) == {"collectionGroup", "fieldPath", "indexes"}, override
        assert override["indexes"] in ([], [
            {"order": "ASCENDING", "queryScope": "COLLECTION"},
            {"order": "ASCENDING", "queryScope": "COLLECTION_GROUP"}]), override
    resource = re.search(r'resource "google_firestore_field" "exempt" \{(.*?)\n\}', _terraform(),
                         re.S)
    assert resource, "no google_firestore_field resource in infra/firestore.tf"
    assert re.search(r"^\s*index_config \{\}$", resource.group(1), re.M)
    assert "ttl_config" not in resource.group(1)
    assert "for_each = local.firestore_field_exemptions" in resource.group(1)


def test_terraform_and_the_firebase_cli_declare_the_same_collection_group_fields() -> None:
    terraform = terraform_collection_group_fields()

    assert sorted(terraform) == sorted(json_collection_group_fields())
    # A trace reads every run's records of some events, and the findings about a customer.
    assert {("errors", "eventId"), ("errors", "subject")} <= set(terraform)
    assert not set(terraform) & exempt_fields()
    resource = re.search(r'resource "google_firestore_field" "collection_group" \{(.*?)\n\}',
                         _terraform(), re.S)
    assert resource and 'query_scope = "COLLECTION_GROUP"' in resource.group(1)
    assert "for_each = local.firestore_collection_group_fields" in resource.group(1)


def test_the_query_scan_finds_the_queries_it_must() -> None:
    queried = queried_fields()

    # One of each kind the scan reads: a range filter, an order alone, a constant, an
    # aggregation over a map's subfields, a map subfield in an equality.
    assert {(schema.EVENTS, "receivedAt"), (schema.CHUNKS, "leaseUntil"),
            (schema.CHUNKS, "updatedAt"), (schema.CHUNKS, "index"), (schema.ERRORS, "at"),
            (schema.RUNS, "createdAt"), (schema.CHUNKS, schema.NOTABLE),
            (schema.CHUNKS, "counters"), (schema.CHUNKS, schema.ERROR_CODES),
            (schema.RUNS, "rollbackOf"), (schema.EVENTS, "payload"),
            (schema.LEDGER, "migrationId"), (schema.SHADOW_LEDGER, "customerId")} <= queried
    # The scan tells collections apart: these are queried only where they are.
    assert not is_queried((schema.LEDGER, "updatedAt"), queried)
    assert not is_queried((schema.AUDITS, "at"), queried)


def test_no_exempt_field_is_queried_or_in_a_composite_index() -> None:
    queried, composite = queried_fields(), composite_fields()

    assert [field for field in terraform_exemptions() if is_queried(field, queried)] == []
    assert [field for field in terraform_exemptions() if field in composite] == []


def test_the_preflight_checks_the_composite_indexes_infra_declares() -> None:
    declared = json.loads((ROOT / "infra" / "firestore.indexes.json").read_text())["indexes"]

    assert sorted((index["collectionGroup"], tuple(f["fieldPath"] for f in index["fields"]))
                  for index in declared) == sorted(COMPOSITE_INDEXES)
