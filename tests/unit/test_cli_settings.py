"""Where the CLI finds the bundle (``backfill_cli.settings``): command line over environment over
the config file's profile over Terraform's outputs, and every file it reads refused with a
message naming it when unusable."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from backfill_cli.client import Endpoints
from backfill_cli.settings import ClientSettings, ConfigError
from backfill_cli.tokens import AuthMode

TRIGGER = "https://backfill-trigger-123.us-central1.run.app"
STATUS = "https://backfill-status-123.us-central1.run.app"
CONTROL = "https://backfill-control-123.us-central1.run.app"


def outputs(**urls: str) -> str:
    """``terraform output -json`` of infra/outputs.tf (a subset of its outputs)."""
    return json.dumps({name: {"sensitive": False, "type": "string", "value": value}
                       for name, value in urls.items()} | {
        "queue_id": {"sensitive": False, "type": "string", "value": "backfill-chunks"}})


TF_OUTPUTS = outputs(trigger_url=TRIGGER, status_url=STATUS, control_url=CONTROL)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BACKFILL_* of the developer's shell, and a config home of the test's own."""
    for name in list(os.environ):
        if name.startswith("BACKFILL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_nothing_configured_means_no_endpoints_and_google_tokens() -> None:
    settings = ClientSettings()

    assert settings.endpoints == Endpoints()
    assert settings.auth_mode is AuthMode.GOOGLE


def test_the_default_profile_of_the_default_config_file_is_read(tmp_path: Path) -> None:
    home = tmp_path / "config-home" / "backfill"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(f'[default]\ntrigger_url = "{TRIGGER}"\n'
                                      f'status_url = "{STATUS}"\nauth = "gcloud"\n')

    settings = ClientSettings()

    assert settings.endpoints == Endpoints(TRIGGER, STATUS, STATUS)
    assert settings.auth_mode is AuthMode.GCLOUD


def test_command_line_beats_environment_beats_profile_beats_terraform(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tf.json").write_text(TF_OUTPUTS)
    config = write_config(tmp_path, '[prod]\nterraform_outputs = "tf.json"\n'
                                    'status_url = "https://status.from-profile"\n'
                                    'control_url = "https://control.from-profile"\n'
                                    'auth = "impersonate"\n'
                                    'impersonate_service_account = "ops@p.example"\n')
    monkeypatch.setenv("BACKFILL_CONFIG", str(config))
    monkeypatch.setenv("BACKFILL_PROFILE", "prod")
    monkeypatch.setenv("BACKFILL_CONTROL_URL", "https://control.from-env")
    monkeypatch.setenv("BACKFILL_AUTH", "gcloud")

    settings = ClientSettings(auth=AuthMode.TOKEN, token="given")
    from_env = ClientSettings()

    # trigger: Terraform; status: the profile; control: the environment; auth: the command line
    assert settings.endpoints == Endpoints(TRIGGER, "https://status.from-profile",
                                           "https://control.from-env")
    assert (settings.auth_mode, from_env.auth_mode) == (AuthMode.TOKEN, AuthMode.GCLOUD)
    assert settings.impersonate_service_account == "ops@p.example"


def test_terraform_outputs_give_the_three_function_urls(tmp_path: Path) -> None:
    saved = tmp_path / "outputs.json"
    saved.write_text(TF_OUTPUTS)

    settings = ClientSettings(terraform_outputs=saved)

    assert settings.endpoints == Endpoints(TRIGGER, STATUS, CONTROL)


def test_terraform_dir_runs_terraform_output_there(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    infra = tmp_path / "infra"
    infra.mkdir()
    (infra / "answer.json").write_text(TF_OUTPUTS)
    fake = fake_program(tmp_path, "terraform", 'cd "${1#-chdir=}" && [ "$2 $3" = "output -json" ]'
                                               ' && cat answer.json')
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")

    settings = ClientSettings(terraform_dir=infra)

    assert settings.endpoints == Endpoints(TRIGGER, STATUS, CONTROL)


def test_terraform_is_not_run_when_every_url_is_given(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_program(tmp_path, "terraform", "exit 1")
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")

    settings = ClientSettings(terraform_dir=tmp_path, trigger_url=TRIGGER, status_url=STATUS,
                              control_url=CONTROL)

    assert settings.endpoints == Endpoints(TRIGGER, STATUS, CONTROL)


def test_a_failing_terraform_is_a_config_error_with_its_last_word(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_program(tmp_path, "terraform", 'echo "Error: No outputs found" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")

    with pytest.raises(ConfigError, match="failed: Error: No outputs found"):
        ClientSettings(terraform_dir=tmp_path)


def test_no_terraform_on_path_says_what_to_do_instead(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(ConfigError, match=r"terraform is not on PATH.*--terraform-outputs"):
        ClientSettings(terraform_dir=tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "not the JSON of `terraform output -json`"),
    ("[]", "no output trigger_url"),
    (outputs(trigger_url=TRIGGER, status_url=STATUS), "no output control_url"),
    (json.dumps({"trigger_url": {"value": 1}}), "no output trigger_url"),
])
def test_outputs_that_are_not_the_bundles_are_refused(tmp_path: Path, text: str,
                                                      message: str) -> None:
    saved = tmp_path / "outputs.json"
    saved.write_text(text)

    with pytest.raises(ConfigError, match=message):
        ClientSettings(terraform_outputs=saved)


def test_outputs_file_and_directory_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="either terraform_outputs or terraform_dir"):
        ClientSettings(terraform_outputs=tmp_path / "o.json", terraform_dir=tmp_path)


@pytest.mark.parametrize(("text", "profile", "message"), [
    ("[prod]\ntrigger_url = 1\n", "prod", "trigger_url"),
    ("[prod]\ntriger_url = 'x'\n", "prod", r"unknown key\(s\) in \[prod\].*: triger_url"),
    ("[prod]\ntrigger_url = 'x'\n", "staging", r"no profile \[staging\].*it has: prod"),
    ("prod = 1\n", "prod", r"\[prod\] .* must be a table"),
    ("[prod]\nterraform_dir = 3\n", "prod", "terraform_dir must be a path"),
    ("[prod\n", "prod", "is not TOML"),
])
def test_a_bad_profile_is_refused_naming_the_file_and_the_key(
        tmp_path: Path, text: str, profile: str, message: str) -> None:
    config = write_config(tmp_path, text)

    with pytest.raises((ConfigError, ValidationError), match=message):
        ClientSettings(config=config, profile=profile)


def test_a_named_config_file_must_exist_the_default_one_need_not(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config file"):
        ClientSettings(config=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"no config file .*for profile 'prod'"):
        ClientSettings(profile="prod")
    assert ClientSettings().endpoints == Endpoints()


def test_relative_paths_of_a_profile_are_relative_to_its_file(tmp_path: Path) -> None:
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "prod.json").write_text(TF_OUTPUTS)
    config = write_config(tmp_path, '[default]\nterraform_outputs = "envs/prod.json"\n')

    assert ClientSettings(config=config).endpoints.trigger == TRIGGER


@pytest.mark.parametrize(("values", "mode"), [
    ({"token": "t", "issuer_url": "http://127.0.0.1:1"}, AuthMode.TOKEN),
    ({"issuer_url": "http://127.0.0.1:1", "impersonate_service_account": "sa"}, AuthMode.LOCAL),
    ({"impersonate_service_account": "sa"}, AuthMode.IMPERSONATE),
    ({}, AuthMode.GOOGLE),
    ({"auth": "gcloud", "token": "t"}, AuthMode.GCLOUD),
])
def test_the_default_auth_mode_follows_what_is_set(values: dict[str, Any],
                                                   mode: AuthMode) -> None:
    assert ClientSettings(**values).auth_mode is mode


@pytest.mark.parametrize(("mode", "needs"), [
    ("token", "--token or BACKFILL_TOKEN"),
    ("impersonate", "--impersonate-service-account"),
    ("local", "BACKFILL_ISSUER_URL"),
])
def test_a_chosen_mode_without_what_it_needs_is_refused(mode: str, needs: str) -> None:
    with pytest.raises(ValidationError, match=f"auth {mode} needs {needs}"):
        ClientSettings(auth=mode)


def test_the_gateway_serves_every_endpoint_unless_one_is_set() -> None:
    settings = ClientSettings(gateway_url="http://127.0.0.1:9105/",
                              trigger_url="https://trigger.example")

    assert settings.endpoints == Endpoints(
        "https://trigger.example", "http://127.0.0.1:9105/api/admin/dataMigrations",
        "http://127.0.0.1:9105/api/admin/dataMigrations")


def fake_program(tmp_path: Path, name: str, script: str) -> Path:
    """A directory holding an executable ``name`` that runs ``script`` (sh) with its args."""
    directory = tmp_path / "bin"
    directory.mkdir(exist_ok=True)
    program = directory / name
    program.write_text(f"#!/bin/sh\n{script}\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return directory
