"""Relaying HTTP requests to a replica: which headers travel, and how a replica's failure is told apart.

The router is a trusted hop that passes a client's request on as the client made it: its
``Authorization`` (the replica does the auth), its ``Origin`` and the ``Host`` it used. Sending that
``Host`` matters: a replica accepts a page's same-origin request by comparing ``Origin`` with
``Host``, so the page served by the router (origin = the router) passes. The router adds no
``X-Forwarded-For``/``Forwarded`` of its own: a replica without an ``auth`` section refuses forwarded
requests (``rtc_server.transports.gate.FORWARDING_HEADERS``), and the router is not the kind of
proxy that check keeps out (it exposes nothing a client could not reach directly). Headers a client
sent are passed through untouched, those included: a proxy in front of the router is still seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "ReplicaAnswer",
    "ReplicaFailed",
    "ReplicaUnreachable",
    "forward",
    "relay",
    "request_headers",
    "websocket_headers",
    "websocket_url",
]

# Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are never relayed.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
# Set again by whoever sends the message: the length (recomputed), the encoding (bodies are relayed
# decoded), and the server's own Date/Server.
_NOT_RELAYED_REQUEST = HOP_BY_HOP | {"host", "content-length", "accept-encoding", "expect"}
_NOT_RELAYED_RESPONSE = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}
# The client's WebSocket handshake is answered by the router; the replica gets one of its own.
_WEBSOCKET_HANDSHAKE = frozenset(
    h.lower()
    for h in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol")
)
# Answers that mean "nothing is listening behind this address" when a gateway in front of a
# replica gives them: treated as an unreachable replica.
GATEWAY_FAILURES = frozenset({502, 504})


class ReplicaUnreachable(Exception):
    """The replica refused or dropped the connection before answering: another replica may be tried."""


class ReplicaFailed(Exception):
    """The replica took the request but gave no answer in time: the request's outcome is unknown."""


@dataclass(frozen=True)
class ReplicaAnswer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def request_headers(request: web.BaseRequest) -> CIMultiDict[str]:
    """The client's end-to-end headers, with the ``Host`` it used (see the module docstring)."""
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _NOT_RELAYED_REQUEST)
    headers[hdrs.HOST] = request.host
    return headers


def websocket_headers(request: web.BaseRequest) -> CIMultiDict[str]:
    """``request_headers`` less the handshake's own (the subprotocols travel as ``ws_connect(protocols=)``)."""
    headers = request_headers(request)
    for name in _WEBSOCKET_HANDSHAKE:
        headers.popall(name, None)
    return headers


def response_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return CIMultiDict((k, v) for k, v in items if k.lower() not in _NOT_RELAYED_RESPONSE)


def websocket_url(replica_url: str, path_qs: str) -> str:
    """``ws(s)://`` form of ``replica_url`` followed by ``path_qs`` (path and query)."""
    scheme, rest = replica_url.split("://", 1)
    return ("wss" if scheme == "https" else "ws") + "://" + rest + path_qs


async def forward(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: CIMultiDict[str],
    body: bytes | None,
    timeout_s: float,
    connect_timeout_s: float,
) -> ReplicaAnswer:
    """Send one request to a replica and read its whole answer.

    ReplicaUnreachable when the connection is refused, times out or is dropped before an answer
    (also for a gateway's 502/504); ReplicaFailed when the replica does not answer within ``timeout_s``.
    """
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
    try:
        async with http.request(
            method, url, headers=headers, data=body, allow_redirects=False, timeout=timeout
        ) as response:
            data = await response.read()
            answer = ReplicaAnswer(status=response.status, headers=response.headers, body=data)
    # Order matters: a connect timeout is a TimeoutError too, and a read timeout a connection error.
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.ServerDisconnectedError) as exc:
        raise ReplicaUnreachable(str(exc) or type(exc).__name__) from exc
    except TimeoutError as exc:
        raise ReplicaFailed(f"no answer within {timeout_s:g} s") from exc
    except aiohttp.ClientConnectionError as exc:  # reset while sending the request
        raise ReplicaUnreachable(str(exc) or type(exc).__name__) from exc
    except aiohttp.ClientError as exc:  # a malformed answer
        raise ReplicaFailed(str(exc) or type(exc).__name__) from exc
    if answer.status in GATEWAY_FAILURES:
        raise ReplicaUnreachable(f"a gateway answered {answer.status}")
    return answer


def relay(answer: ReplicaAnswer) -> web.Response:
    """The replica's answer, as the router's."""
    return web.Response(status=answer.status, body=answer.body, headers=response_headers(answer.headers))
