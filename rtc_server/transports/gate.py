"""What every request that opens a session passes first: its web origin, its credentials, its share.

Shared by both transports and the session endpoints. The caller's identity (token subject, else
network address) is the key of the per-client limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from rtc_server.auth import Authenticator, Principal, Unauthorized
from rtc_server.client_limits import TooManyRequests
from rtc_server.http_errors import HttpError

__all__ = ["Caller", "Gate", "too_many"]

CORS_MAX_AGE_S = 600  # how long a browser may cache a preflight answer
ALLOWED_HEADERS = "Authorization, Content-Type"
AUTH_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="rtcvs"'}


@dataclass(frozen=True)
class Caller:
    """Who opens a session: the per-client limits key, and the principal when credentials were checked."""

    client: str
    principal: Principal | None


def too_many(exc: TooManyRequests) -> HttpError:
    """A 429 answer for a client over its share."""
    return HttpError(429, "rate_limited", str(exc), retryable=True, headers={"Retry-After": exc.retry_after_header})


FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


class Gate:
    """Origin and credential checks, with the CORS answers that go with them."""

    def __init__(self, *, authenticator: Authenticator, allowed_origins: list[str] | None) -> None:
        self.authenticator = authenticator
        self._any_origin = allowed_origins is not None and "*" in allowed_origins
        self._origins = frozenset(origin.rstrip("/").lower() for origin in allowed_origins or ())

    def check_origin(self, request: web.Request) -> None:
        """HttpError 403 when a browser page from a web origin not allowed makes the request."""
        origin = request.headers.get("Origin")
        if origin is None or self._origin_allowed(request, origin):
            return
        raise HttpError(403, "unauthorized", f"web origin {origin[:200]!r} is not allowed to open sessions here")

    def _origin_allowed(self, request: web.Request, origin: str) -> bool:
        if self._any_origin or origin.rstrip("/").lower() in self._origins:
            return True
        # The server's own page: same host and port (the scheme may differ behind a TLS proxy).
        return urlsplit(origin).netloc.lower() == (request.host or "").lower()

    def cors_headers(self, request: web.Request) -> dict[str, str]:
        """Headers letting an allowed cross-origin page read the answer (none for same-origin or no Origin)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def preflight(self, request: web.Request) -> web.Response:
        """The answer to a CORS preflight (OPTIONS) of a session endpoint."""
        try:
            self.check_origin(request)
        except HttpError as exc:
            return exc.response()
        headers = {
            **self.cors_headers(request),
            "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
        }
        return web.Response(status=204, headers=headers)

    def caller(self, request: web.Request, token: str | None) -> Caller:
        """Who is asking: HttpError 401 when credentials are required and missing or invalid.

        Without an auth section the server is for this machine only; a reverse proxy in front would
        let the whole network in through loopback, so a forwarded request is refused (403).
        """
        if self.authenticator.loopback_only and any(name in request.headers for name in FORWARDING_HEADERS):
            raise HttpError(
                403,
                "unauthorized",
                "this request came through a proxy, and the server has no auth section: it serves its own "
                "machine only. Configure auth (or auth: {mode: none} to serve everyone knowingly).",
            )
        try:
            principal = self.authenticator.authenticate(token)
        except Unauthorized as exc:
            raise HttpError(401, "unauthorized", str(exc), headers=AUTH_CHALLENGE) from exc
        client = principal.subject if principal is not None else f"addr:{request.remote or 'unknown'}"
        return Caller(client=client, principal=principal)
