"""Bearer tokens (`INGEST_API_TOKENS`): required on every /api request. Without tokens, /api answers anonymous
requests only with the explicit opt-in INGEST_API_ALLOW_ANONYMOUS, and then only those that arrive on a loopback
address and were not relayed by a proxy, like Flower without auth. Where a request came from is no proof by
itself: a reverse proxy on the same host that adds no forwarding header makes every request look local."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from worker.edge.flower_guard import is_loopback
from worker.settings import get_settings

log = logging.getLogger(__name__)

bearer = HTTPBearer(auto_error=False, description="A token from INGEST_API_TOKENS.")


def api_tokens() -> list[bytes]:
    configured = get_settings().ingest_api_tokens
    if configured is None:
        return []
    return [token.strip().encode() for token in configured.get_secret_value().split(",") if token.strip()]


def anonymous_allowed() -> bool:
    """No tokens are set and the operator opted in to anonymous calls from loopback."""
    return not api_tokens() and get_settings().ingest_api_allow_anonymous


def warn_about_access() -> None:
    """At start: say loudly when the API is open to anonymous local calls, or closed to every call."""
    if api_tokens():
        return
    if anonymous_allowed():
        log.warning(
            "INGEST_API_ALLOW_ANONYMOUS is set and INGEST_API_TOKENS is not: /api answers anyone on this host, "
            "including through a local reverse proxy; set INGEST_API_TOKENS for anything but development"
        )
    else:
        log.warning("INGEST_API_TOKENS is not set: every /api request is refused (401); /healthz and /readyz answer")


#: Headers a proxy adds: a request that carries one came from elsewhere, even if it arrived on loopback.
_RELAYED = ("forwarded", "x-forwarded-for", "x-real-ip")


def _local_request(request: Request) -> bool:
    """Arrived on a loopback address (or a Unix socket), not relayed by a proxy; anything unknown is not."""
    server = request.scope.get("server")
    if server is None or any(name in request.headers for name in _RELAYED):
        return False
    return server[1] is None or is_loopback(str(server[0]))  # a port of None: a Unix socket


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    tokens = api_tokens()
    if not tokens:
        if not get_settings().ingest_api_allow_anonymous:
            raise _unauthorized("no INGEST_API_TOKENS are set on this server, so it answers no /api request")
        if not _local_request(request):
            raise _unauthorized("this server is reachable beyond loopback: set INGEST_API_TOKENS to use it")
        return
    offered = credentials.credentials.encode() if credentials else b""
    # Compare with every token in constant time: how far a guess matched must not show in the timing.
    matches = [hmac.compare_digest(offered, token) for token in tokens]
    if not any(matches):
        raise _unauthorized("a valid bearer token is required")
