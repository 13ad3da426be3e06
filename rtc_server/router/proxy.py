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

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "RefusalKeepingResponse",
    "ReplicaAnswer",
    "ReplicaFailed",
    "ReplicaUnreachable",
    "forward",
    "keeping_refusals",
    "open_stream",
    "relay",
    "relay_stream",
    "request_headers",
    "websocket_headers",
    "websocket_url",
]

logger = logging.getLogger(__name__)

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
STREAM_CHUNK_BYTES = 64 * 1024  # what a streamed body is copied in
MAX_REFUSAL_BYTES = 64 * 1024  # the most of a refused upgrade's body kept (replicas send small JSON)


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


def _client_errors(exc: BaseException, timeout_s: float) -> Exception:
    """The ReplicaUnreachable / ReplicaFailed an aiohttp error while requesting means (see ``forward``)."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError | aiohttp.ServerDisconnectedError):
        return ReplicaUnreachable(str(exc) or type(exc).__name__)
    if isinstance(exc, TimeoutError):
        return ReplicaFailed(f"no answer within {timeout_s:g} s")
    if isinstance(exc, aiohttp.ClientConnectionError):
        return ReplicaUnreachable(str(exc) or type(exc).__name__)
    return ReplicaFailed(str(exc) or type(exc).__name__)


async def open_stream(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: CIMultiDict[str],
    read_timeout_s: float,
    connect_timeout_s: float,
) -> aiohttp.ClientResponse:
    """Send one request to a replica and return its answer with the body unread (the caller releases it).

    No total timeout (a large download may take long): each read waits at most ``read_timeout_s``.
    Failures as for ``forward``.
    """
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
    try:
        response = await http.request(method, url, headers=headers, allow_redirects=False, timeout=timeout)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _client_errors(exc, read_timeout_s) from exc
    if response.status in GATEWAY_FAILURES:
        response.release()
        raise ReplicaUnreachable(f"a gateway answered {response.status}")
    return response


async def read_small(response: aiohttp.ClientResponse, limit: int = MAX_REFUSAL_BYTES) -> ReplicaAnswer:
    """``response`` as a ReplicaAnswer, its body read up to ``limit`` bytes (an error's JSON)."""
    body = bytearray()
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        while len(body) < limit and (chunk := await response.content.read(limit - len(body))):
            body += chunk
    return ReplicaAnswer(status=response.status, headers=response.headers, body=bytes(body))


async def relay_stream(request: web.BaseRequest, response: aiohttp.ClientResponse) -> web.StreamResponse:
    """The replica's answer as the router's, its body copied as it arrives (never held whole).

    ``Content-Length`` travels when the body is relayed as sent (it was not compressed). A replica that
    fails mid-body gets the client's connection dropped: the client sees a short body, never a whole one.
    """
    out = web.StreamResponse(status=response.status, reason=response.reason, headers=response_headers(response.headers))
    if response.content_length is not None and hdrs.CONTENT_ENCODING not in response.headers:
        out.content_length = response.content_length
    await out.prepare(request)
    try:
        async for chunk in response.content.iter_chunked(STREAM_CHUNK_BYTES):
            await out.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("router: replica failed while relaying %s: %s", request.path, exc or type(exc).__name__)
        if request.transport is not None:
            request.transport.close()
        return out
    await out.write_eof()
    return out


# -- the body of a refused WebSocket upgrade ----------------------------------------------------
# aiohttp's ws_connect raises WSServerHandshakeError with the status and headers of a refusal but
# drops its body. The router's HTTP client makes its answers as RefusalKeepingResponse, which, while
# ``keeping_refusals()`` is in force in the task, reads the body of an answer that is not a 101 first.

_REFUSALS: ContextVar[list[bytes] | None] = ContextVar("router_refusals", default=None)


class RefusalKeepingResponse(aiohttp.ClientResponse):
    """An aiohttp client response that keeps a refused upgrade's body for ``keeping_refusals``."""

    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        response = await super().start(connection)
        sink = _REFUSALS.get()
        if sink is not None and self.status != 101:
            sink.append((await read_small(self)).body)
        return response


@contextlib.contextmanager
def keeping_refusals() -> Iterator[list[bytes]]:
    """Within: a refused upgrade's body (of a client made with RefusalKeepingResponse) lands in the list."""
    sink: list[bytes] = []
    token = _REFUSALS.set(sink)
    try:
        yield sink
    finally:
        _REFUSALS.reset(token)
