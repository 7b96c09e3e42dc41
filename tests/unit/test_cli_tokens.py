"""The CLI's ID tokens (``backfill_cli.tokens``): the provider of each mode, with Google, gcloud
and the local issuer replaced by fakes, and the cache that mints once per audience and again
near expiry. No call leaves the machine."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import google.auth
import google.auth.exceptions
import google.oauth2.id_token
import pytest
from google.auth import impersonated_credentials

from backfill_cli import tokens
from backfill_cli.tokens import AuthMode, CachedTokens, TokenError, expiry, provider
from tests.unit.test_cli_settings import fake_program

AUDIENCE = "https://backfill-trigger-123.us-central1.run.app"
SA = "ops-bot@p.iam.gserviceaccount.com"


def jwt(exp: float, subject: str = "ops") -> str:
    """A token shaped like an ID token (unsigned: the client never verifies one)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part({'sub': subject, 'exp': exp})}.signature"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Minter:
    """Mints ``jwt``s living ``lifetime`` seconds from the clock, recording each audience."""

    def __init__(self, clock: Clock, lifetime: float = 3600.0) -> None:
        self.clock, self.lifetime = clock, lifetime
        self.audiences: list[str] = []

    def __call__(self, audience: str) -> str:
        self.audiences.append(audience)
        return jwt(self.clock.now + self.lifetime, subject=str(len(self.audiences)))


def test_expiry_reads_exp_of_a_jwt_and_nothing_else() -> None:
    assert expiry(jwt(1234.0)) == 1234.0
    for not_a_jwt in ("opaque", "a.b.c", "a.bnVsbA.c", f"x.{jwt(1).split('.')[0]}.y"):
        assert expiry(not_a_jwt) is None


def test_cache_mints_once_per_audience_while_tokens_are_fresh() -> None:
    clock = Clock()
    mint = Minter(clock)
    cached = CachedTokens(mint, clock=clock)

    first = cached(AUDIENCE)
    clock.now += 3000  # 10 minutes left: still fresh
    again = cached(AUDIENCE)
    other = cached("https://backfill-status-123.us-central1.run.app")

    assert first == again != other
    assert mint.audiences == [AUDIENCE, "https://backfill-status-123.us-central1.run.app"]


def test_cache_mints_again_when_a_token_nears_its_expiry() -> None:
    clock = Clock()
    mint = Minter(clock)
    cached = CachedTokens(mint, clock=clock)

    first = cached(AUDIENCE)
    clock.now += 3600 - tokens.REFRESH_MARGIN_SECONDS
    second = cached(AUDIENCE)

    assert first != second and mint.audiences == [AUDIENCE, AUDIENCE]


def test_cache_keeps_a_token_without_expiry_for_a_while_only() -> None:
    clock = Clock()
    minted: list[str] = []

    def opaque(audience: str) -> str:
        minted.append(audience)
        return "opaque"

    cached = CachedTokens(opaque, clock=clock)

    cached(AUDIENCE)
    clock.now += tokens.UNKNOWN_LIFETIME_SECONDS - 1
    cached(AUDIENCE)
    clock.now += 1
    cached(AUDIENCE)

    assert len(minted) == 2


def test_a_fixed_token_serves_every_audience() -> None:
    fixed = provider(AuthMode.TOKEN, token="given")

    assert {fixed(AUDIENCE), fixed("https://other.example")} == {"given"}


def test_local_mode_mints_for_the_identity_and_each_audience(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str, str]] = []

    def mint(issuer_url: str, email: str, audience: str) -> str:
        asked.append((issuer_url, email, audience))
        return jwt(9e9)

    monkeypatch.setattr(tokens, "mint_local_token", mint)
    local = provider(AuthMode.LOCAL, issuer_url="http://127.0.0.1:9103", email="ops@example.com")

    local("http://127.0.0.1:9105")
    local("http://127.0.0.1:9105")

    assert asked == [("http://127.0.0.1:9103", "ops@example.com", "http://127.0.0.1:9105")]


def test_google_mode_asks_google_auth_for_the_audience(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def fetch(request: object, audience: str) -> str:
        asked.append(audience)
        return jwt(9e9)

    monkeypatch.setattr(google.oauth2.id_token, "fetch_id_token", fetch)

    assert provider(AuthMode.GOOGLE)(AUDIENCE) == jwt(9e9)
    assert asked == [AUDIENCE]


def test_google_mode_without_service_account_credentials_says_what_works_instead(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def fetch(request: object, audience: str) -> str:
        raise google.auth.exceptions.DefaultCredentialsError(
            "Neither metadata server or valid service account credentials are found.")

    monkeypatch.setattr(google.oauth2.id_token, "fetch_id_token", fetch)

    with pytest.raises(TokenError, match=r"user credentials \(gcloud auth application-default "
                                         r"login\) cannot mint.*--auth impersonate.*--auth gcloud"):
        provider(AuthMode.GOOGLE)(AUDIENCE)


class FakeIdTokenCredentials:
    """impersonated_credentials.IDTokenCredentials, recording how it was made."""

    made: ClassVar[list[dict[str, Any]]] = []  # how each was made; reset by the test

    def __init__(self, target: Any, target_audience: str, include_email: bool) -> None:
        self.made.append({"target": target, "audience": target_audience,
                          "include_email": include_email})
        self.token: str | None = None

    def refresh(self, request: object) -> None:
        self.token = jwt(9e9)


def test_impersonate_mode_mints_as_the_service_account_with_its_email(
        monkeypatch: pytest.MonkeyPatch) -> None:
    FakeIdTokenCredentials.made = []
    monkeypatch.setattr(google.auth, "default", lambda scopes: ("adc", "project"))
    monkeypatch.setattr(impersonated_credentials, "Credentials",
                        lambda **kwargs: ("impersonated", kwargs))
    monkeypatch.setattr(impersonated_credentials, "IDTokenCredentials", FakeIdTokenCredentials)

    token = provider(AuthMode.IMPERSONATE, service_account=SA)(AUDIENCE)

    assert token == jwt(9e9)
    [made] = FakeIdTokenCredentials.made
    assert (made["audience"], made["include_email"]) == (AUDIENCE, True)
    assert made["target"] == ("impersonated", {
        "source_credentials": "adc", "target_principal": SA,
        "target_scopes": [tokens.CLOUD_PLATFORM_SCOPE]})


def test_impersonate_mode_refused_by_iam_names_the_role_needed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(self: Any, request: object) -> None:
        raise google.auth.exceptions.RefreshError("Error getting ID token: PERMISSION_DENIED")

    monkeypatch.setattr(google.auth, "default", lambda scopes: ("adc", "project"))
    monkeypatch.setattr(impersonated_credentials, "Credentials", lambda **kwargs: "impersonated")
    monkeypatch.setattr(FakeIdTokenCredentials, "refresh", refused)
    monkeypatch.setattr(impersonated_credentials, "IDTokenCredentials", FakeIdTokenCredentials)

    with pytest.raises(TokenError, match=f"could not impersonate {SA}.*PERMISSION_DENIED.*"
                                         "roles/iam.serviceAccountTokenCreator"):
        provider(AuthMode.IMPERSONATE, service_account=SA)(AUDIENCE)


@pytest.fixture
def gcloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``gcloud`` on PATH that records its arguments and prints a token."""
    record = tmp_path / "gcloud-args"
    fake = fake_program(tmp_path, "gcloud", f'printf "%s\\n" "$@" > {record}\n'
                                            f'echo "{jwt(9e9)}"')
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    return record


def test_gcloud_mode_prints_an_identity_token_for_the_audience(gcloud: Path) -> None:
    assert provider(AuthMode.GCLOUD)(AUDIENCE) == jwt(9e9)
    assert gcloud.read_text().splitlines() == ["auth", "print-identity-token",
                                               f"--audiences={AUDIENCE}"]


def test_gcloud_mode_impersonates_with_the_email_in_the_token(gcloud: Path) -> None:
    provider(AuthMode.GCLOUD, service_account=SA)(AUDIENCE)

    assert gcloud.read_text().splitlines()[3:] == [f"--impersonate-service-account={SA}",
                                                   "--include-email"]


def test_gcloud_mode_failing_passes_on_gclouds_error_and_a_hint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_program(tmp_path, "gcloud", 'echo "ERROR: (gcloud.auth.print-identity-token) '
                                            'Invalid account type for `--audiences`." >&2; exit 1')
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")

    with pytest.raises(TokenError, match=r"Invalid account type.*--impersonate-service-account"):
        provider(AuthMode.GCLOUD)(AUDIENCE)


def test_gcloud_mode_without_gcloud_says_so(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(TokenError, match="gcloud is not on PATH"):
        provider(AuthMode.GCLOUD)(AUDIENCE)
