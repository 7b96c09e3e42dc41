"""Where the client finds a deployed bundle (or the local stack's gateway) and how it gets its
tokens: the one place that resolves both.

Each value comes from the first of these that has it:

1. the command line (the keyword arguments ``ClientSettings(...)`` is built with);
2. the environment, ``BACKFILL_<FIELD>``: ``BACKFILL_TRIGGER_URL``, ``BACKFILL_STATUS_URL``,
   ``BACKFILL_CONTROL_URL``, ``BACKFILL_GATEWAY_URL``, ``BACKFILL_AUTH``, ``BACKFILL_TOKEN``, ...;
3. a profile of the config file (``BACKFILL_CONFIG``, default
   ``$XDG_CONFIG_HOME/backfill/config.toml``, else ``~/.config/backfill/config.toml``), a TOML
   table per profile, ``[default]`` unless ``BACKFILL_PROFILE``/``--profile`` names another.
   Its keys are ``PROFILE_KEYS``; relative paths in it are relative to the file;
4. Terraform's outputs ``trigger_url``, ``status_url`` and ``control_url`` (infra/outputs.tf),
   from the JSON of ``terraform output -json`` saved in a file (``terraform_outputs``) or read
   by running it in a directory (``terraform_dir``), either given at any level above. Terraform
   runs only if a URL is still missing.

A config file, profile or Terraform output named but unusable raises ``ConfigError`` naming it
(a missing default config file or ``[default]`` profile is simply no values).

``BACKFILL_TOKEN`` is an ID token for the operator (for example from
``gcloud auth print-identity-token``); ``BACKFILL_ISSUER_URL`` exists only on the local stack,
whose issuer mints tokens for any identity. Without ``auth``, the mode is ``token`` if a token
is set, else ``local`` if an issuer is, else ``impersonate`` if a service account is, else
``google``. ``BACKFILL_CONTROL_URL`` is the control function's URL on a deployed bundle (each
function has its own URL there); without it, control calls go under the status URL, which is
right on the local gateway: it routes ``POST /api/admin/dataMigrations/...`` to the control
function.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from backfill_cli.client import Endpoints, TokenProvider
from backfill_cli.tokens import AuthMode, provider

DEFAULT_PROFILE = "default"
PROFILE_KEYS = frozenset({"trigger_url", "status_url", "control_url", "gateway_url", "auth",
                          "impersonate_service_account", "terraform_outputs", "terraform_dir"})
PATH_KEYS = frozenset({"terraform_outputs", "terraform_dir"})
TERRAFORM_OUTPUTS = ("trigger_url", "status_url", "control_url")
TERRAFORM_TIMEOUT_SECONDS = 120.0


class ConfigError(ValueError):
    """A config file, profile or set of Terraform outputs that cannot be used."""


class ClientSettings(BaseSettings):
    """The client's configuration: endpoint URLs, and a token, its source or the local issuer."""

    model_config = SettingsConfigDict(env_prefix="BACKFILL_", frozen=True, extra="ignore")

    trigger_url: str = ""
    status_url: str = ""
    control_url: str = ""
    gateway_url: str = ""
    issuer_url: str = ""
    operator_audiences: Annotated[tuple[str, ...], NoDecode] = ()
    token: str = ""
    auth: AuthMode | None = None
    impersonate_service_account: str = ""
    config: Path | None = None
    profile: str | None = None
    terraform_outputs: Path | None = None
    terraform_dir: Path | None = None

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first; each later source sees what the earlier ones found (current_state).
        return (init_settings, env_settings, ProfileSource(settings_cls),
                TerraformSource(settings_cls))

    @field_validator("operator_audiences", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @model_validator(mode="after")
    def _auth_has_what_it_needs(self) -> ClientSettings:
        needs = {AuthMode.TOKEN: ("token", "--token or BACKFILL_TOKEN"),
                 AuthMode.IMPERSONATE: ("impersonate_service_account",
                                        "--impersonate-service-account or "
                                        "BACKFILL_IMPERSONATE_SERVICE_ACCOUNT"),
                 AuthMode.LOCAL: ("issuer_url", "BACKFILL_ISSUER_URL (source .local/stack.env)")}
        if self.auth in needs and not getattr(self, needs[self.auth][0]):
            raise ValueError(f"auth {self.auth.value} needs {needs[self.auth][1]}")
        return self

    @property
    def auth_mode(self) -> AuthMode:
        """The mode chosen, or the one the values set imply."""
        if self.auth is not None:
            return self.auth
        if self.token:
            return AuthMode.TOKEN
        if self.issuer_url:
            return AuthMode.LOCAL
        if self.impersonate_service_account:
            return AuthMode.IMPERSONATE
        return AuthMode.GOOGLE

    def token_provider(self, email: str) -> TokenProvider:
        """Tokens of the chosen mode; ``email`` is the identity the local issuer mints for."""
        return provider(self.auth_mode, token=self.token,
                        service_account=self.impersonate_service_account,
                        issuer_url=self.issuer_url, email=email)

    @property
    def endpoints(self) -> Endpoints:
        """Each function's URL: the one set for it, else its path on the gateway."""
        gateway = Endpoints.gateway(self.gateway_url) if self.gateway_url else Endpoints()
        status = self.status_url or gateway.status
        return Endpoints(trigger=self.trigger_url or gateway.trigger, status=status,
                         control=self.control_url or status)


class _StateSource(PydanticBaseSettingsSource):
    """A source whose values depend on what the sources above it found, not on one field."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: ``__call__`` answers all values at once


class ProfileSource(_StateSource):
    """The values of the selected profile of the config file."""

    def __call__(self) -> dict[str, Any]:
        named = self.current_state.get("config")
        path = Path(named).expanduser() if named else default_config_path()
        profile = self.current_state.get("profile")
        return read_profile(path, profile or DEFAULT_PROFILE, required=bool(named or profile))


class TerraformSource(_StateSource):
    """The function URLs among Terraform's outputs, when a URL is still missing."""

    def __call__(self) -> dict[str, Any]:
        state = self.current_state
        if all(state.get(name) for name in TERRAFORM_OUTPUTS):
            return {}
        saved, directory = state.get("terraform_outputs"), state.get("terraform_dir")
        if saved and directory:
            raise ConfigError("give either terraform_outputs or terraform_dir, not both")
        if saved:
            path = Path(saved).expanduser()
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as error:
                raise ConfigError(f"cannot read Terraform outputs {path}: "
                                  f"{error.strerror}") from None
            return read_terraform_outputs(text, str(path))
        if directory:
            return read_terraform_outputs(terraform_output(Path(directory).expanduser()),
                                          f"terraform output -json in {directory}")
        return {}


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "backfill" / "config.toml"


def read_profile(path: Path, profile: str, *, required: bool) -> dict[str, Any]:
    """The values of ``profile`` in the TOML file ``path``, relative paths made relative to the
    file. A missing file or profile is ``{}``, or, if ``required`` (the file or the profile was
    named), a ``ConfigError``."""
    try:
        profiles = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ConfigError(f"no config file {path} (for profile {profile!r})") from None
        return {}
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not TOML: {error}") from None
    values = profiles.get(profile)
    if values is None:
        if required:
            raise ConfigError(f"no profile [{profile}] in {path} (it has: "
                              f"{', '.join(sorted(profiles)) or 'none'})")
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"[{profile}] in {path} must be a table of keys")
    if unknown := set(values) - PROFILE_KEYS:
        raise ConfigError(f"unknown key(s) in [{profile}] of {path}: {', '.join(sorted(unknown))}"
                          f" (known: {', '.join(sorted(PROFILE_KEYS))})")
    if bad := sorted(key for key in PATH_KEYS & set(values) if not isinstance(values[key], str)):
        raise ConfigError(f"[{profile}] in {path}: {', '.join(bad)} must be a path (a string)")
    return {key: path.parent / Path(value).expanduser() if key in PATH_KEYS else value
            for key, value in values.items()}


def read_terraform_outputs(text: str, origin: str) -> dict[str, str]:
    """The function URLs in ``terraform output -json``'s answer ``text`` (read from ``origin``)."""
    try:
        outputs = json.loads(text)
    except ValueError:
        raise ConfigError(f"{origin}: not the JSON of `terraform output -json`") from None
    urls: dict[str, str] = {}
    for name in TERRAFORM_OUTPUTS:
        output = outputs.get(name) if isinstance(outputs, dict) else None
        value = output.get("value") if isinstance(output, dict) else None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{origin}: no output {name} (the outputs of infra/ have "
                              f"{', '.join(TERRAFORM_OUTPUTS)})")
        urls[name] = value
    return urls


def terraform_output(directory: Path) -> str:
    """``terraform output -json`` run in ``directory`` (its state must be reachable)."""
    terraform = shutil.which("terraform")
    if terraform is None:
        raise ConfigError("terraform is not on PATH: install it, or save `terraform output "
                          "-json` to a file and give it as --terraform-outputs")
    try:
        # No shell: the directory is one argument.
        done = subprocess.run(  # noqa: S603
            [terraform, f"-chdir={directory}", "output", "-json"], capture_output=True,
            text=True, timeout=TERRAFORM_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"terraform output -json in {directory} did not answer within "
                          f"{TERRAFORM_TIMEOUT_SECONDS:.0f} s") from None
    if done.returncode != 0:
        said = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise ConfigError(f"terraform output -json in {directory} failed: {said}")
    return done.stdout
