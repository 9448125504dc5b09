"""API tokens: bearer tokens from SCARCHES_API_TOKENS and/or SCARCHES_API_TOKENS_FILE, compared in constant time.

With tokens configured, every endpoint but ``/liveness`` needs ``Authorization: Bearer <token>``: none gives 401 (with
``WWW-Authenticate: Bearer``), a wrong one 403. With none configured the API is open, which the embedded default on
loopback may be; :func:`startup_warning` says so at start, louder when the service binds beyond loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from pathlib import Path
from typing import Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from scarches_api.errors import ConfigError, ScarchesError

OPEN_PATHS = frozenset({"/liveness"})
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}

# auto_error=False: the errors are ours (401 vs 403, JSON body); declaring the scheme puts it in the OpenAPI schema.
bearer_scheme = HTTPBearer(auto_error=False, description="An API token from SCARCHES_API_TOKENS(_FILE).")


class AuthError(ScarchesError):
    """No or a wrong API token. ``headers`` go on the answer (``WWW-Authenticate`` for a 401)."""

    status_code = 401
    kind = "auth"

    def __init__(self, message: str, *, status_code: int = 401, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers


def load_tokens(settings: Any) -> list[str]:
    """The configured tokens: ``api_tokens`` (comma-separated) plus ``api_tokens_file`` (one per line; blank lines and
    ``#`` comments skipped). A file that is named but unreadable is a ConfigError: failing open would be worse."""
    tokens: list[str] = []
    raw = getattr(settings, "api_tokens", None)
    if hasattr(raw, "get_secret_value"):  # a pydantic SecretStr keeps it out of reprs and logs
        raw = raw.get_secret_value()
    if raw:
        items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
        tokens.extend(t.strip() for t in items)
    path = getattr(settings, "api_tokens_file", None)
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"SCARCHES_API_TOKENS_FILE {str(path)!r} can't be read: {exc.strerror or exc}") from None
        tokens.extend(line.strip() for line in text.splitlines() if not line.strip().startswith("#"))
    tokens = list(dict.fromkeys(t for t in tokens if t))
    if (path or raw) and not tokens:
        raise ConfigError("SCARCHES_API_TOKENS(_FILE) is set but holds no token; the API would run open")
    return tokens


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests: the time taken tells nothing about a token's length or prefix.
    return hashlib.sha256(token.encode()).digest()


def token_matches(given: str, tokens: list[str]) -> bool:
    """True when ``given`` is one of ``tokens``; every token is compared, each in constant time."""
    given_digest = _digest(given)
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given_digest, _digest(token))
    return found


def _tokens_of(request: Request) -> list[str]:
    state = request.app.state
    tokens = getattr(state, "api_tokens", None)
    if tokens is None:
        tokens = state.api_tokens = load_tokens(state.settings)
    return tokens


async def require_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)
) -> None:
    """FastAPI dependency: pass a request with a configured bearer token (or any request when none is configured)."""
    if request.url.path in OPEN_PATHS:
        return
    tokens = _tokens_of(request)
    if not tokens:
        return
    if credentials is None or not credentials.credentials:
        header = request.headers.get("authorization")
        what = "no Authorization header" if not header else "an Authorization header that is not 'Bearer <token>'"
        raise AuthError(
            f"this API needs a token: the request had {what}; send 'Authorization: Bearer <token>'",
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not token_matches(credentials.credentials, tokens):
        raise AuthError("the API token is not valid for this service", status_code=403)


def binds_loopback_only(host: str) -> bool:
    """True when ``host`` (Settings.host) is a loopback address or name, so only this machine can connect."""
    host = (host or "").strip().strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup_warning(settings: Any) -> str | None:
    """A line for the start-up log when the API is open (no tokens), saying who can reach it; None with tokens."""
    if load_tokens(settings):
        return None
    host = getattr(settings, "host", "0.0.0.0")
    port = getattr(settings, "port", None)
    where = f"{host}:{port}" if port else host
    if binds_loopback_only(host):
        return (
            f"no API tokens configured: the API on {where} is open, to this machine only (it binds loopback); "
            "set SCARCHES_API_TOKENS or SCARCHES_API_TOKENS_FILE to require a token"
        )
    return (
        f"no API tokens configured and the API binds {where}, beyond loopback: anyone who can reach it can start "
        "jobs and read results; set SCARCHES_API_TOKENS or SCARCHES_API_TOKENS_FILE, or HOST=127.0.0.1"
    )
