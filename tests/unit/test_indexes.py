"""The composite indexes are declared twice, for Terraform (``infra/firestore.tf``) and for the
Firebase CLI (``infra/firestore.indexes.json``): the two lists must name the same indexes."""

from __future__ import annotations

import json
import re

from tests.conftest import ROOT

Index = tuple[str, tuple[tuple[str, str], ...]]


def _without_name(fields: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    # __name__ closes every index implicitly; Terraform spells it out, the JSON need not.
    return tuple(field for field in fields if field[0] != "__name__")


def terraform_indexes() -> set[Index]:
    text = (ROOT / "infra" / "firestore.tf").read_text()
    found = set()
    for collection, body in re.findall(
            r'collection\s*=\s*"(\w+)"\s*query_scope\s*=\s*"\w+"\s*fields\s*=\s*\[(.*?)\]\n',
            text, re.S):
        found.add((collection, _without_name(re.findall(r'\["([\w.]+)", "(\w+)"\]', body))))
    return found


def json_indexes() -> set[Index]:
    listed = json.loads((ROOT / "infra" / "firestore.indexes.json").read_text())["indexes"]
    return {(index["collectionGroup"], _without_name(
        [(field["fieldPath"], field["order"]) for field in index["fields"]]))
        for index in listed}


def test_terraform_and_the_firebase_cli_declare_the_same_indexes() -> None:
    terraform = terraform_indexes()

    assert len(terraform) >= 10
    assert terraform == json_indexes()
