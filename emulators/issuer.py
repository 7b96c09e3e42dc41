"""A local OIDC issuer that signs Google-style ID tokens for the local stack and tests.

Contract (docs/local-stack-contract.md):

- ``GET /oauth2/v1/certs`` answers ``{kid: PEM certificate}``, Google's v1 format, with
  ``Cache-Control: public, max-age=300``.
- ``POST /token`` with ``{"email": ..., "audience": ...}`` answers ``{"token": ...}``: an RS256 JWT
  with a ``kid`` header and the claims iss (this issuer's URL), aud, sub, email,
  email_verified (true), iat and exp (one hour later).
- ``GET /`` answers 200 (readiness).

The RSA-2048 key and its self-signed certificate are made fresh at every start and written to the
state dir (mode 0600), so a token minted by an earlier run of the issuer does not verify against
the current certs. The issuer binds loopback addresses only: it signs whatever it is asked to, so
it must never be reachable from another machine.

Run: ``python -m emulators.issuer --host 127.0.0.1 --port P --state-dir DIR``.
Tokens are never logged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

logger = logging.getLogger("emulators.issuer")

TOKEN_LIFETIME_SECONDS = 3600
CERTS_PATH = "/oauth2/v1/certs"
TOKEN_PATH = "/token"  # noqa: S105 - a URL path, not a secret
# A token request is two short strings; anything much bigger is a mistake or abuse.
MAX_REQUEST_BYTES = 16 * 1024


class IssuerError(RuntimeError):
    """The issuer refused or failed a request (raised by :func:`mint_token`)."""


@dataclass(frozen=True)
class SigningKey:
    """One RSA key with its self-signed certificate, identified by ``kid``."""

    kid: str
    private_key_pem: bytes
    certificate_pem: bytes

    @classmethod
    def generate(cls, common_name: str = "backfill-local-issuer") -> SigningKey:
        """Make a fresh RSA-2048 key and a self-signed certificate valid for one day."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            # Backdated a little so that a clock a few seconds behind still accepts it.
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        cert_der = cert.public_bytes(serialization.Encoding.DER)
        return cls(
            kid=hashlib.sha256(cert_der).hexdigest()[:40],
            private_key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        )

    def write(self, state_dir: Path) -> None:
        """Store the key (0600) and certificate in ``state_dir`` for inspection and debugging."""
        state_dir.mkdir(parents=True, exist_ok=True)
        key_path = state_dir / "issuer-key.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.private_key_pem)
        (state_dir / "issuer-cert.pem").write_bytes(self.certificate_pem)


class Issuer:
    """Signs ID tokens for ``issuer_url`` with one :class:`SigningKey`."""

    def __init__(self, issuer_url: str, key: SigningKey) -> None:
        self.issuer_url = issuer_url
        self.key = key
        self._signer: crypt.Signer = crypt.RSASigner.from_string(  # type: ignore[no-untyped-call]
            key.private_key_pem, key_id=key.kid
        )

    def certs(self) -> dict[str, str]:
        """The certs document in Google's v1 format: ``{kid: PEM certificate}``."""
        return {self.key.kid: self.key.certificate_pem.decode("ascii")}

    def mint(self, email: str, audience: str, now: int | None = None,
             extra: dict[str, Any] | None = None) -> str:
        """An RS256 ID token for ``email`` with ``aud`` = ``audience``, valid for one hour;
        ``extra`` claims (tests: an ``nbf``) are added or replace the usual ones."""
        issued_at = int(time.time()) if now is None else now
        payload = {
            "iss": self.issuer_url,
            "aud": audience,
            # Google puts the account's numeric id in sub; a stable digest of the email plays
            # that role here so that sub differs from email, as it does in production.
            "sub": str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16)),
            "email": email,
            "email_verified": True,
            "iat": issued_at,
            "exp": issued_at + TOKEN_LIFETIME_SECONDS,
            **(extra or {}),
        }
        token: bytes = jwt.encode(self._signer, payload)  # type: ignore[no-untyped-call]
        return token.decode("ascii")


class JsonHandler(BaseHTTPRequestHandler):
    """A loopback endpoint of the local stack (the issuer, the scheduler stand-in's admin API):
    small JSON objects in, JSON out; a bad request gets a 400 with a JSON ``error``."""

    # HTTP/1.1 keeps connections alive for clients such as google-auth's requests session.
    protocol_version = "HTTP/1.1"

    def read_json(self) -> dict[str, Any] | None:
        """The request's JSON object (``{}`` when empty); None after answering 400."""
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if length < 0 or length > MAX_REQUEST_BYTES:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"})
            return None
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": "body must be JSON"})
            return None
        if not isinstance(body, dict):
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": "body must be a JSON object"})
            return None
        return body

    def send_json(self, status: HTTPStatus, body: object,
                  cache_control: str = "no-store") -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", cache_control)
        self.end_headers()
        self.wfile.write(data)


def _make_handler(issuer: Issuer) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        server_version = "backfill-local-issuer"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == CERTS_PATH:
                self.send_json(HTTPStatus.OK, issuer.certs(), cache_control="public, max-age=300")
            elif path in ("/", "/healthz"):
                self.send_json(HTTPStatus.OK, {"status": "ok", "issuer": issuer.issuer_url})
            else:
                self.send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != TOKEN_PATH:
                self.send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            body = self.read_json()
            if body is None:
                return
            email, audience = body.get("email"), body.get("audience")
            if not isinstance(email, str) or not email or "@" not in email:
                self.send_json(HTTPStatus.BAD_REQUEST, {"error": "email must be an address"})
                return
            if not isinstance(audience, str) or not audience:
                self.send_json(HTTPStatus.BAD_REQUEST, {"error": "audience is required"})
                return
            self.send_json(HTTPStatus.OK, {"token": issuer.mint(email, audience)})


        def log_message(self, format: str, *args: Any) -> None:
            # The request line holds no secrets (tokens travel in bodies), so method, path and
            # status are safe to log; bodies are never logged.
            logger.info("%s %s", self.address_string(), format % args)

    return Handler


def ensure_loopback(host: str) -> None:
    """Raise ``ValueError`` unless ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"--host must be a loopback IP address, got {host!r}") from exc
    if not address.is_loopback:
        raise ValueError(f"refusing to bind {host}: the local issuer serves loopback only")


def make_server(host: str, port: int, state_dir: Path) -> ThreadingHTTPServer:
    """Build (bind, not yet serve) an issuer server; its issuer URL is ``http://host:port``."""
    ensure_loopback(host)
    key = SigningKey.generate()
    key.write(state_dir)
    # Bind first so that port 0 resolves to the real port before the issuer URL is fixed.
    server = ThreadingHTTPServer((host, port), BaseHTTPRequestHandler)
    server.daemon_threads = True
    issuer = Issuer(f"http://{host}:{server.server_address[1]}", key)
    server.RequestHandlerClass = _make_handler(issuer)
    return server


def mint_token(issuer_url: str, email: str, audience: str, timeout: float = 5.0) -> str:
    """Ask the local issuer at ``issuer_url`` for an ID token for ``email`` and ``audience``.

    Raises :class:`IssuerError` if the issuer cannot be reached or refuses the request.
    """
    if not issuer_url.startswith(("http://", "https://")):
        raise IssuerError(f"issuer URL must be http(s): {issuer_url!r}")
    request = urllib.request.Request(  # noqa: S310 - scheme checked just above
        issuer_url.rstrip("/") + TOKEN_PATH,
        data=json.dumps({"email": email, "audience": audience}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise IssuerError(f"issuer refused the token request: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise IssuerError(f"issuer at {issuer_url} is unreachable: {exc}") from exc
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise IssuerError("issuer answered without a token")
    return token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local OIDC issuer for the backfill stack.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        server = make_server(args.host, args.port, args.state_dir)
    except ValueError as exc:
        print(f"issuer: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"issuer: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    logger.info("serving on http://%s:%d", args.host, server.server_address[1])
    serve_until_stopped(server)
    return 0


def serve_until_stopped(server: ThreadingHTTPServer) -> None:
    """Serve until SIGTERM or SIGINT, then close the server."""

    def stop(signum: int, frame: object) -> None:
        # shutdown() blocks until serve_forever returns, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever(poll_interval=0.2)
    server.server_close()


if __name__ == "__main__":
    sys.exit(main())
