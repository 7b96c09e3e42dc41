"""OIDC bearer-token verification for every endpoint.

A request is let in only with a Google-signed (or, in local mode, locally signed) ID token whose
signature, expiry, audience and issuer check out, whose email is verified, and whose email is on
the endpoint's allow-list. Missing or invalid tokens are ``Unauthenticated`` (401); a valid token
of an identity that is not allowed is ``Forbidden`` (403). Tokens are never logged or echoed.

google-auth fetches the signing certificates on every verification; the session below caches
them as their ``Cache-Control`` headers allow (the approach google-auth's docs recommend).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Collection

import cachecontrol
import requests
from google.auth import exceptions as google_exceptions
from google.auth.transport import requests as google_requests
from google.oauth2 import id_token

from shared.config import Settings
from shared.errors import Forbidden, Unauthenticated, Unavailable

logger = logging.getLogger(__name__)

_CLOCK_SKEW_SECONDS = 10
_request = google_requests.Request(session=cachecontrol.CacheControl(requests.Session()))


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who made a request, as its verified token says."""

    email: str
    subject: str


def authenticate(
    authorization: str | None,
    settings: Settings,
    audiences: Collection[str],
    allowed: Collection[str],
) -> Caller:
    """Verify ``Authorization: Bearer <token>`` for one endpoint and return the caller.

    Raises ``Unauthenticated`` for a missing, malformed, expired, foreign or mis-addressed token,
    ``Forbidden`` for a valid token of an identity not in ``allowed``, and ``Unavailable`` when
    the signing certificates cannot be fetched (a retry can help).
    """
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("an Authorization: Bearer <OIDC ID token> header is required")
    try:
        claims = id_token.verify_token(
            token.strip(),
            _request,
            audience=list(audiences),
            certs_url=settings.certs_url,
            clock_skew_in_seconds=_CLOCK_SKEW_SECONDS,
        )
    except google_exceptions.TransportError as exc:
        logger.warning("signing certificates unavailable: %s", type(exc).__name__)
        raise Unavailable("cannot fetch the token signing certificates; retry later") from None
    except Exception as exc:  # google-auth raises ValueError, GoogleAuthError and PyJWT errors
        logger.info("token rejected: %s", type(exc).__name__)
        raise Unauthenticated("the bearer token is invalid, expired or not for this endpoint") \
            from None
    # google-auth checks iat and exp but not nbf: a token not valid yet is refused here.
    not_before = claims.get("nbf")
    if not_before is not None and (not isinstance(not_before, int | float) or isinstance(
            not_before, bool) or not_before > time.time() + _CLOCK_SKEW_SECONDS):
        raise Unauthenticated("the bearer token is not valid yet (nbf)")
    if claims.get("iss") not in settings.issuers:
        raise Unauthenticated("the bearer token was not issued by an accepted issuer")
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is not True:
        raise Unauthenticated("the bearer token carries no verified email")
    if email not in allowed:
        raise Forbidden(f"{email} is not allowed to call this endpoint")
    return Caller(email=email, subject=str(claims.get("sub", "")))
