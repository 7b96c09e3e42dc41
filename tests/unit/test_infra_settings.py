"""Terraform passes the functions exactly the settings the code reads.

The contract between ``infra/`` and ``shared.config.Settings``:

- every environment variable Terraform gives the functions is one Settings reads. Settings
  ignores unknown variables (``extra="ignore"``), so a misspelt or dead one would otherwise go
  unnoticed and the code would silently run on its default;
- every variable Settings reads is passed by Terraform, or listed in ``NOT_PASSED`` below with
  the reason production leaves it alone;
- where Terraform passes one of its own variables through unchanged, that variable's default is
  the code's default (or both are required), so an unset tfvars means what the code means;
- the one secret the code reads, the PayNow API key, reaches the chunk function alone as a file
  of a Secret Manager volume (its latest version), at the path ``BACKFILL_PAYNOW_API_KEY_FILE``
  names; never as an environment variable (``BACKFILL_PAYNOW_API_KEY`` is for local runs), never
  as a secret version in Terraform (its value would be in the state), and only the chunk
  function's service account may read it.

Terraform cannot ``init`` here (no providers to download), so the .tf files are read as text with
regular expressions; they rely on the layout ``terraform fmt`` gives them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from unittest import mock

import pytest

from shared.config import Settings, Stage

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
    # The PayNow API key reaches the chunk function as a file from a Secret Manager volume
    # (BACKFILL_PAYNOW_API_KEY_FILE, so a rotated key is read with no redeploy); the variable
    # form is for local runs, and as a plain environment variable the key would be in the plan
    # and the state.
    "BACKFILL_PAYNOW_API_KEY",
    # The local stack and tests only: production refuses emulators and fault injection.
    "FIRESTORE_EMULATOR_HOST",
    "CLOUD_TASKS_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "BACKFILL_FAULT_EXIT_AFTER_COMMITS",
})
# The one secret: Terraform never passes its value, only (to the chunk function) the path of the
# file of the Secret Manager volume that holds it.
SECRET = "BACKFILL_PAYNOW_API_KEY"
SECRET_FILE = "BACKFILL_PAYNOW_API_KEY_FILE"
# How functions.tf picks each function's environment: the chunk function's, or the others'.
ENVIRONMENT_CHOICE = 'each.key == "chunk" ? local.chunk_environment : local.function_environment'
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


# Fields whose unset value the code derives from BACKFILL_ENV: what it is in production.
DEPLOYED_DEFAULTS: dict[str, object] = {"environment": Stage.PROD.value}


def code_default(field: str) -> object:
    if field in DEPLOYED_DEFAULTS:
        return DEPLOYED_DEFAULTS[field]
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


def local_environment(text: str, name: str) -> dict[str, str]:
    """Each entry of the environment ``local.NAME`` builds, with its HCL expression, the entries
    of the environments it merges in (``local.*_environment``) included."""
    expression = hcl_expression(text, name)
    environment: dict[str, str] = {}
    for merged in re.findall(r"\blocal\.(\w+_environment)\b", expression):
        environment.update(local_environment(text, merged))
    environment.update(ENV_ENTRY.findall(expression))
    return environment


def environment_locals(text: str) -> list[str]:
    """The locals the functions' ``environment_variables`` are set from."""
    assignments = re.findall(r"^\s*environment_variables\s*=\s*(.+)$", text, re.MULTILINE)
    # An inline map or another expression would hide its names from this test: refuse it.
    assert assignments, "no environment_variables in infra/"
    assert all(re.fullmatch(r"local\.\w+", value) or value == ENVIRONMENT_CHOICE
               for value in assignments), assignments
    return [name for value in assignments for name in re.findall(r"local\.(\w+)", value)]


def function_environment(text: str) -> dict[str, str]:
    """Each environment variable Terraform gives any function, with its HCL expression."""
    environment: dict[str, str] = {}
    for name in environment_locals(text):
        environment.update(local_environment(text, name))
    return environment


def secret_volumes(text: str) -> list[str]:
    """The text of each ``secret_volumes`` block, dynamic or static, in ``text``."""
    return [block[0] for block in re.finditer(
        r'^( *)(?:dynamic "secret_volumes"|secret_volumes) \{\n(.*?)^\1\}',
        text, re.MULTILINE | re.DOTALL)]


def attribute(block: str, name: str) -> str:
    """The one expression ``block`` assigns to ``name`` (trailing comment dropped)."""
    found: list[str] = re.findall(rf"^\s*{name}\s*=\s*(.*?)\s*(?:#.*)?$", block, re.MULTILINE)
    assert len(found) == 1, f"want one {name} in {block}, found {found}"
    return found[0]


def code_lines(text: str) -> str:
    """``text`` without its whole-line comments (which may name the secret to explain it)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def resource_blocks(text: str, kind: str) -> dict[str, str]:
    """The body of each ``resource "KIND" "NAME"`` block, by name (``terraform fmt`` closes a
    top-level block with a "}" in the first column)."""
    return dict(re.findall(rf'^resource "{kind}" "(\w+)" \{{\n(.*?)^\}}', text,
                           re.MULTILINE | re.DOTALL))


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
    assert SECRET_FILE in passed  # and the chunk function's own
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


def test_the_paynow_api_key_is_a_secret_volume_of_the_chunk_function_only() -> None:
    text = terraform_text()
    functions = (INFRA / "functions.tf").read_text()
    volumes = secret_volumes(text)

    # One secret volume, a dynamic block of the functions' service_config: a new one needs its
    # own grant and test.
    assert len(volumes) == 1, volumes
    volume = volumes[0]
    assert volume.lstrip().startswith('dynamic "secret_volumes" {'), volume
    assert volume in functions, "the secret volume belongs to the functions"
    # It yields nothing for any function but chunk, and for chunk nothing until webhook_recovery
    # is configured (no mount, no grant used, while no one has added a key).
    for_each = attribute(volume, "for_each")
    assert re.fullmatch(r'each\.key == "chunk" && local\.paynow_recovery_configured \? '
                        r'\[[^\]]+\] : \[\]', for_each), for_each
    assert attribute(volume, "secret") == "google_secret_manager_secret.paynow_api_key.secret_id"
    assert attribute(volume, "project_id") == "data.google_project.this.number"
    # The latest version, so that every read of the file fetches the newest key: rotation with
    # no redeploy. One version, one file.
    versions = re.findall(r"^( *)versions \{\n(.*?)^\1\}", volume, re.MULTILINE | re.DOTALL)
    assert len(versions) == 1, volume
    assert attribute(versions[0][1], "version") == '"latest"'
    mount_path = json.loads(attribute(volume, "mount_path"))
    path = json.loads(attribute(versions[0][1], "path"))
    assert mount_path.startswith("/etc/secrets/") and not path.startswith("/"), (mount_path, path)
    # No version of the key is chosen anywhere else (a pinned number would need a redeploy).
    assert "paynow_api_key_version" not in text

    # The chunk function reads the file BACKFILL_PAYNOW_API_KEY_FILE names: the volume's file,
    # under the same condition as the volume. The other functions get no path to the key.
    assert re.search(rf"^\s*environment_variables\s*=\s*{re.escape(ENVIRONMENT_CHOICE)}$",
                     functions, re.MULTILINE)
    chunk = local_environment(text, "chunk_environment")
    assert chunk.get(SECRET_FILE) == json.dumps(f"{mount_path}/{path}"), chunk.get(SECRET_FILE)
    assert SECRET_FILE not in local_environment(text, "function_environment")
    entry = re.search(rf"^\s*{SECRET_FILE}\s*=", hcl_expression(text, "chunk_environment"),
                      re.MULTILINE)
    assert entry
    condition = hcl_expression(text, "chunk_environment")[:entry.start()]
    assert re.search(r"\blocal\.paynow_recovery_configured \? \{$", condition), condition

    # Never the key as an environment variable: no plain entry, no secret environment variable,
    # not among the names extra_environment lets an operator set.
    assert SECRET not in function_environment(text)
    assert SECRET not in {name for name, _ in ENV_ENTRY.findall(text)}
    assert "secret_environment_variables" not in code_lines(text)
    assert f'"{SECRET}"' not in code_lines(text)
    extra = re.search(r'^variable "extra_environment" \{\n(.*?)^\}', text, re.MULTILINE | re.DOTALL)
    assert extra and not {SECRET, SECRET_FILE} & set(re.findall(r'"(BACKFILL_[A-Z_]+)"', extra[1]))
    # Never a value in Terraform: no secret version (resource or data source) anywhere in infra/.
    assert not re.search(r'^(resource|data) "google_secret_manager_secret_versions?"', text,
                         re.MULTILINE)
    assert not re.search(r"^\s*secret_data\w*\s*=", text, re.MULTILINE)
    # The chunk function runs as its own SA; the other four keep the runtime SA.
    assert re.search(r'^\s*service_account_email\s*=\s*each\.key == "chunk" \? '
                     r"google_service_account\.chunk\.email : "
                     r"google_service_account\.runtime\.email$", functions, re.MULTILINE)


def test_only_the_chunk_service_account_reads_the_paynow_api_key() -> None:
    text = terraform_text()

    assert list(resource_blocks(text, "google_secret_manager_secret")) == ["paynow_api_key"]
    grants = resource_blocks(text, "google_secret_manager_secret_iam_member")
    assert list(grants) == ["chunk_reads_paynow_api_key"]
    grant = grants["chunk_reads_paynow_api_key"]
    assert re.search(r'^\s*role\s*=\s*"roles/secretmanager\.secretAccessor"$', grant, re.MULTILINE)
    assert re.search(r"^\s*secret_id\s*=\s*"
                     r"google_secret_manager_secret\.paynow_api_key\.secret_id$", grant,
                     re.MULTILINE), grant
    members = re.findall(r"^\s*members?\s*=\s*(.+)$", grant, re.MULTILINE)
    assert members == ['"serviceAccount:${google_service_account.chunk.email}"'], members
    # No other way to read it: no binding or policy on the secret, no Secret Manager role on any
    # other resource (the project included), and no grant on the chunk SA itself (actAs or token
    # creation would let another identity read the key as it).
    assert not re.search(r'resource "google_secret_manager_secret_iam_(binding|policy)"', text)
    assert text.count("roles/secretmanager.") == 1
    assert not re.search(r"service_account_id\s*=\s*google_service_account\.chunk\.", text)
    assert "google_secret_manager_secret_iam_member.chunk_reads_paynow_api_key" in \
        (INFRA / "functions.tf").read_text(), "the chunk function must deploy after the grant"


def test_a_deployment_unnamed_is_prod_and_a_local_machine_is_local() -> None:
    production = {"BACKFILL_PROJECT_ID": "p", "BACKFILL_CHUNK_URL": "https://chunk.run.app",
                  "BACKFILL_OPERATOR_AUDIENCES": "a", "BACKFILL_TASKS_IDENTITY": "t@x"}
    # The unset value is what DEPLOYED_DEFAULTS says it is (the comparison above relies on it).
    with mock.patch.dict(os.environ, production, clear=True):
        assert Settings().stage is Stage.PROD
        assert Settings().deployment == {"project": "p", "database": "(default)",
                                         "environment": "prod"}
    with mock.patch.dict(os.environ, {**production, "BACKFILL_ENV": "local"}, clear=True):
        assert Settings().stage is Stage.LOCAL
    with mock.patch.dict(os.environ, {**production, "BACKFILL_ENVIRONMENT": "local"},
                         clear=True), pytest.raises(ValueError, match="developer machine"):
        Settings()
    with mock.patch.dict(os.environ, {**production, "BACKFILL_ENV": "local",
                                      "BACKFILL_ENVIRONMENT": "prod"},
                         clear=True), pytest.raises(ValueError, match="needs BACKFILL_ENV"):
        Settings()
