"""Where the client finds a deployed bundle (or the local stack's gateway), from the environment.

``BACKFILL_TOKEN`` is an ID token for the operator (for example from
``gcloud auth print-identity-token``); ``BACKFILL_ISSUER_URL`` exists only on the local stack,
whose issuer mints tokens for any identity. ``BACKFILL_CONTROL_URL`` is the control function's URL
on a deployed bundle (each function has its own URL there); without it, control calls go under
the status URL, which is right on the local gateway: it routes ``POST
/api/admin/dataMigrations/...`` to the control function.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backfill_cli.client import Endpoints


class ClientSettings(BaseSettings):
    """The client's configuration: endpoint URLs, a token or the local issuer."""

    model_config = SettingsConfigDict(env_prefix="BACKFILL_", frozen=True, extra="ignore")

    trigger_url: str = ""
    status_url: str = ""
    control_url: str = ""
    gateway_url: str = ""
    issuer_url: str = ""
    operator_audiences: Annotated[tuple[str, ...], NoDecode] = ()
    token: str = ""

    @field_validator("operator_audiences", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @property
    def endpoints(self) -> Endpoints:
        """Each function's URL: the one set for it, else its path on the gateway."""
        gateway = Endpoints.gateway(self.gateway_url) if self.gateway_url else Endpoints()
        status = self.status_url or gateway.status
        return Endpoints(trigger=self.trigger_url or gateway.trigger, status=status,
                         control=self.control_url or status)
