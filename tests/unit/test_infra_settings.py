"""Terraform passes the functions exactly the settings the code reads.

The contract between ``infra/`` and ``shared.config.Settings``:

- every environment variable Terraform gives the functions is one Settings reads. Settings
  ignores unknown variables (``extra="ignore"``), so a misspelt or dead one would otherwise go
  unnoticed and the code would silently run on its default;
- every variable Settings reads is passed by Terraform, or listed in ``NOT_PASSED`` below with
  the reason production leaves it alone;
- where Terraform passes one of its own variables through unchanged, that variable's default is
  the code's default (or both are required), so an unset tfvars means what the code means.

Terraform cannot ``init`` here (no providers to download), so the .tf files are read as text with
regular expressions; they rely on the layout ``terraform fmt`` gives them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from shared.config import Settings

INFRA = Path(__file__).resolve().parents[2] / "infra"

# Variables Settings reads that Terraform deliberately does not pass, and why.
NOT_PASSED = frozenset({
    # Production must keep Google's certificates and issuers: Settings refuses any other value.
    "BACKFILL_CERTS_URL",
    "BACKFILL_ISSUERS",
    # Tuning production leaves at the code default: an operator who needs another value sets it
    # through var.extra_environment (merged under the variables Terraform derives).
    "BACKFILL_CHUNK_DAYS",
    "BACKFILL_PAGE_SIZE",
    "BACKFILL_MAX_RANGE_DAYS",
    "BACKFILL_ENQUEUE_WORKERS",
    "BACKFILL_FIRST_ERRORS_SHOWN",
    # The local stack and tests only: production refuses emulators and fault injection.
    "FIRESTORE_EMULATOR_HOST",
    "CLOUD_TASKS_EMULATOR_HOST",
    "BACKFILL_FAULT_EXIT_AFTER_COMMITS",
})
# What a Terraform variable without a default, or a required Settings field, defaults to.
REQUIRED = object()

# An environment entry in an HCL map: an upper-case key, then its expression (comment dropped).
ENV_ENTRY = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=\s*(.*?)\s*(?:#.*)?$", re.MULTILINE)
# A variable's own default, indented once (a validation block's lines are indented twice).
DEFAULT = re.compile(r"^  default\s*=\s*(.+)$", re.MULTILINE)


def settings_variables() -> dict[str, str]:
    """Each environment variable Settings reads, with its field: the prefixed, upper-cased field
    name, or the field's alias (the emulator hosts the Google client libraries read too)."""
    prefix = Settings.model_config.get("env_prefix", "")
    variables = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        variables[alias if isinstance(alias, str) else f"{prefix}{name}".upper()] = name
    return variables


def code_default(field: str) -> object:
    info = Settings.model_fields[field]
    return REQUIRED if info.is_required() else info.default


def terraform_text() -> str:
    return "\n".join(path.read_text() for path in sorted(INFRA.glob("*.tf")))


def hcl_expression(text: str, name: str) -> str:
    """The expression assigned to ``name``: from its "=" to the end of the line on which its
    brackets close (the environment is a ``merge`` of maps spanning many lines)."""
    match = re.search(rf"^\s*{name}\s*=", text, re.MULTILINE)
    assert match, f"no assignment to {name} in infra/"
    depth = 0
    for index in range(match.end(), len(text)):
        if text[index] in "([{":
            depth += 1
        elif text[index] in ")]}":
            depth -= 1
        elif text[index] == "\n" and depth == 0:
            return text[match.end():index]
    raise AssertionError(f"the brackets of {name} never close")


def function_environment(text: str) -> dict[str, str]:
    """Each environment variable Terraform gives the functions, with its HCL expression."""
    assignments = re.findall(r"^\s*environment_variables\s*=\s*(.+)$", text, re.MULTILINE)
    # An inline map or another expression would hide its names from this test: refuse it.
    assert assignments, "no environment_variables in infra/"
    assert all(re.fullmatch(r"local\.\w+", value) for value in assignments), assignments
    environment: dict[str, str] = {}
    for value in assignments:
        environment.update(ENV_ENTRY.findall(hcl_expression(text, value.removeprefix("local."))))
    return environment


def passed_through(expression: str) -> str | None:
    """The Terraform variable ``expression`` passes on unchanged (maybe as a string), if any."""
    used = re.fullmatch(r"var\.(\w+)", re.sub(r"^tostring\((.*)\)$", r"\1", expression))
    return used[1] if used else None


def variable_default(text: str, name: str) -> object:
    """Terraform variable ``name``'s default as a Python value (these literals are JSON's), or
    ``REQUIRED``. ``terraform fmt`` closes a variable block with a "}" in the first column."""
    block = re.search(rf'^variable "{name}" \{{\n(.*?)^\}}', text, re.MULTILINE | re.DOTALL)
    assert block, f"no variable {name} in infra/"
    default = DEFAULT.search(block[1])
    return json.loads(default[1]) if default else REQUIRED


def test_terraform_passes_only_variables_the_code_reads() -> None:
    passed = function_environment(terraform_text())

    assert "BACKFILL_TASKS_IDENTITY" in passed  # the parse found the environment at all
    assert sorted(passed.keys() - settings_variables().keys()) == []


def test_every_variable_the_code_reads_is_passed_or_deliberately_not() -> None:
    read = settings_variables().keys()
    passed = function_environment(terraform_text()).keys()

    assert sorted(read - passed - NOT_PASSED) == [], "pass it in infra/locals.tf or say why not"
    # The list must stay honest: no entry for a variable Terraform passes or the code never reads.
    assert sorted(NOT_PASSED & passed) == []
    assert sorted(NOT_PASSED - read) == []


def test_terraform_variables_passed_on_default_to_the_code_default() -> None:
    text = terraform_text()
    fields = settings_variables()
    # A name the code does not read is the first test's failure, not this one's.
    passed_on = {
        fields[env]: variable
        for env, expression in function_environment(text).items()
        if env in fields and (variable := passed_through(expression))
    }

    assert "task_max_attempts" in passed_on  # the parse found the pass-through variables
    # A derived value (the queue's location, the URLs) has no one default to compare with.
    assert {
        field: (terraform, code_default(field))
        for field, variable in passed_on.items()
        if (terraform := variable_default(text, variable)) != code_default(field)
    } == {}


def test_only_cloud_tasks_can_reach_the_chunk_function() -> None:
    # checkov's CKV_GCP_124 is skipped (it sees the five functions as one resource): this
    # holds the line it would have, for the one function no person calls.
    text = (INFRA / "functions.tf").read_text()
    blocks = re.findall(r"\n    (\w+) = \{\n(.*?)\n    \}", text, re.S)
    ingress = {name: found.group(1) for name, body in blocks
               if (found := re.search(r'ingress\s*=\s*"(\w+)"', body))}

    assert ingress == {"trigger": "ALLOW_ALL", "chunk": "ALLOW_INTERNAL_ONLY",
                       "status": "ALLOW_ALL", "control": "ALLOW_ALL", "sweep": "ALLOW_ALL"}
    assert "ingress_settings               = each.value.ingress" in text


def test_extra_environment_takes_exactly_the_tuning_terraform_does_not_pass() -> None:
    text = (INFRA / "variables.tf").read_text()
    block = text[text.index('variable "extra_environment"'):]
    block = block[:block.index("\n}\n")]
    allowed = set(re.findall(r'"(BACKFILL_[A-Z_]+)"', block.split("condition", 1)[1]
                             .split("error_message", 1)[0]))

    assert allowed == {"BACKFILL_PAGE_SIZE", "BACKFILL_CHUNK_DAYS", "BACKFILL_MAX_RANGE_DAYS",
                       "BACKFILL_ENQUEUE_WORKERS", "BACKFILL_FIRST_ERRORS_SHOWN"}
    # Each is a setting the code reads that Terraform leaves alone.
    assert allowed <= NOT_PASSED
