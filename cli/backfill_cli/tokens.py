"""ID tokens for the bundle's functions, one per audience.

In production each function URL is its own audience (the trigger's, the status function's and
the control function's differ), so the client asks for a token per endpoint: a
``TokenProvider`` answers an ID token for an audience. ``provider`` builds the one of the mode
the operator chose (``AuthMode``):

- ``token``: the fixed token given (``--token``/``BACKFILL_TOKEN``), for every audience. It is
  never refreshed: it serves as long as it lives (an hour for Google's).
- ``google``: ``google.oauth2.id_token.fetch_id_token``: a service-account key named by
  ``GOOGLE_APPLICATION_CREDENTIALS`` (or an impersonation ADC file), else the metadata server (a
  VM, Cloud Shell, Cloud Run). User credentials from ``gcloud auth application-default login``
  cannot mint a token for an audience of their choosing; the error says so and names the modes
  that can.
- ``impersonate``: the operator's application default credentials impersonate a service account
  (``impersonated_credentials``, with ``include_email`` so that the bundle sees whose token it
  is). The operator needs ``roles/iam.serviceAccountTokenCreator`` on that account.
- ``gcloud``: ``gcloud auth print-identity-token --audiences=AUDIENCE`` (plus
  ``--impersonate-service-account=SA --include-email`` when given an account), run without a
  shell.
- ``local``: the local stack's issuer mints a token for the ``--as`` identity (production refuses
  such tokens).

Minted tokens are cached per audience and minted again once less than ``REFRESH_MARGIN_SECONDS``
remain before their ``exp``, read from the token unverified: the bundle verifies tokens, the
client only needs to know when to get another. Every failure is a ``TokenError`` whose message
says what to do; no message or exception raised here carries a token.
"""

from __future__ import annotations

import base64
import enum
import json
import shutil
import subprocess
import time
from collections.abc import Callable

import httpx

from backfill_cli.client import TokenProvider, mint_local_token

# A call takes at most the client's 60 s timeout; a token this close to its end is not sent.
REFRESH_MARGIN_SECONDS = 120.0
# A token whose expiry cannot be read (not a JWT) is used this long before asking again.
UNKNOWN_LIFETIME_SECONDS = 600.0
GCLOUD_TIMEOUT_SECONDS = 60.0
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

USER_CREDENTIALS_HINT = (
    "user credentials (gcloud auth application-default login) cannot mint an ID token for a "
    "function URL: use --auth impersonate --impersonate-service-account SA (you need "
    "roles/iam.serviceAccountTokenCreator on SA), or --auth gcloud with a service account")


class AuthMode(enum.StrEnum):
    """How the client gets its ID tokens (``--auth``/``BACKFILL_AUTH``)."""

    TOKEN = "token"  # noqa: S105 (the mode's name, not a secret)
    GOOGLE = "google"
    IMPERSONATE = "impersonate"
    GCLOUD = "gcloud"
    LOCAL = "local"


class TokenError(Exception):
    """No ID token could be had; the message says why and what to do."""


def provider(mode: AuthMode, *, token: str = "", service_account: str = "",
             issuer_url: str = "", email: str = "") -> TokenProvider:
    """The token provider of ``mode``: ``token`` for ``TOKEN``, ``service_account`` for
    ``IMPERSONATE`` (and optionally ``GCLOUD``), ``issuer_url`` and ``email`` for ``LOCAL``."""
    if mode is AuthMode.TOKEN:
        return lambda _audience: token
    minters: dict[AuthMode, Callable[[], TokenProvider]] = {
        AuthMode.GOOGLE: google_minter,
        AuthMode.IMPERSONATE: lambda: impersonating_minter(service_account),
        AuthMode.GCLOUD: lambda: gcloud_minter(service_account),
        AuthMode.LOCAL: lambda: local_minter(issuer_url, email),
    }
    return CachedTokens(minters[mode]())


class CachedTokens:
    """A provider that mints through ``mint`` once per audience, and again when that audience's
    token nears its expiry."""

    def __init__(self, mint: TokenProvider, clock: Callable[[], float] = time.time) -> None:
        self._mint = mint
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}  # audience -> (token, refresh at)

    def __call__(self, audience: str) -> str:
        now = self._clock()
        cached = self._tokens.get(audience)
        if cached is not None and now < cached[1]:
            return cached[0]
        token = self._mint(audience)
        expires = expiry(token)
        refresh_at = (now + UNKNOWN_LIFETIME_SECONDS if expires is None
                      else expires - REFRESH_MARGIN_SECONDS)
        self._tokens[audience] = (token, refresh_at)
        return token


def expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (seconds since the epoch), unverified; None if ``token`` is no
    JWT or has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def google_minter() -> TokenProvider:
    """Tokens from the environment's Google credentials (service-account key, metadata server)."""

    def mint(audience: str) -> str:
        # Imported when used: only the Google modes pay for importing google-auth and requests.
        import google.auth.exceptions
        import google.auth.transport.requests
        import google.oauth2.id_token

        try:
            # google-auth's functions are not annotated (hence the ignores below).
            token = google.oauth2.id_token.fetch_id_token(  # type: ignore[no-untyped-call]
                google.auth.transport.requests.Request(), audience)
        except google.auth.exceptions.DefaultCredentialsError as error:
            raise TokenError(f"no service-account credentials or metadata server ({error}); "
                             f"{USER_CREDENTIALS_HINT}") from None
        except google.auth.exceptions.GoogleAuthError as error:
            raise TokenError(f"google-auth could not mint an ID token for {audience}: "
                             f"{error}") from None
        return str(token)

    return mint


def impersonating_minter(service_account: str) -> TokenProvider:
    """Tokens of ``service_account``, minted by the IAM credentials API for the operator's
    application default credentials."""

    def mint(audience: str) -> str:
        import google.auth
        import google.auth.exceptions
        import google.auth.transport.requests
        from google.auth import impersonated_credentials

        try:
            source, _project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            target = impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
                source_credentials=source, target_principal=service_account,
                target_scopes=[CLOUD_PLATFORM_SCOPE])
            credentials = impersonated_credentials.IDTokenCredentials(  # type: ignore[no-untyped-call]
                target, target_audience=audience, include_email=True)
            credentials.refresh(google.auth.transport.requests.Request())
        except google.auth.exceptions.DefaultCredentialsError as error:
            raise TokenError(f"no Google credentials to impersonate {service_account} with "
                             f"({error}): run `gcloud auth application-default login`") from None
        except google.auth.exceptions.GoogleAuthError as error:
            raise TokenError(f"could not impersonate {service_account} for {audience}: {error} "
                             "(you need roles/iam.serviceAccountTokenCreator on it)") from None
        return str(credentials.token)

    return mint


def gcloud_minter(service_account: str = "") -> TokenProvider:
    """Tokens from ``gcloud auth print-identity-token``, as ``service_account`` if given."""

    def mint(audience: str) -> str:
        gcloud = shutil.which("gcloud")
        if gcloud is None:
            raise TokenError("gcloud is not on PATH: install the Google Cloud SDK, or use "
                             "--auth impersonate or --auth google")
        command = [gcloud, "auth", "print-identity-token", f"--audiences={audience}"]
        if service_account:
            # Without --include-email an impersonated token names no one the bundle can allow.
            command += [f"--impersonate-service-account={service_account}", "--include-email"]
        try:
            # No shell: the audience and the account are single arguments, never parsed.
            done = subprocess.run(  # noqa: S603
                command, capture_output=True, text=True, timeout=GCLOUD_TIMEOUT_SECONDS,
                check=False)
        except subprocess.TimeoutExpired:
            raise TokenError(f"gcloud auth print-identity-token did not answer within "
                             f"{GCLOUD_TIMEOUT_SECONDS:.0f} s") from None
        if done.returncode != 0 or not done.stdout.strip():
            said = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
            # gcloud refuses --audiences for a user account ("Invalid account type").
            hint = ("; a user account cannot choose the token's audience: add "
                    "--impersonate-service-account SA") if "--audiences" in said else ""
            raise TokenError(f"gcloud auth print-identity-token failed: {said}{hint}")
        return done.stdout.strip()

    return mint


def local_minter(issuer_url: str, email: str) -> TokenProvider:
    """Tokens for ``email`` from the local stack's issuer."""

    def mint(audience: str) -> str:
        try:
            return mint_local_token(issuer_url, email, audience)
        except httpx.HTTPError as error:
            raise TokenError(f"the local issuer {issuer_url} minted no token: {error}") from None

    return mint
