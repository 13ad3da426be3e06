"""read_json_body against a real aiohttp server on loopback, fed by a raw socket in pieces."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from rtc_server.http_errors import HttpError, read_json_body
from rtc_server.inbound import INLINE_PARSE_MAX_BYTES

LOOPBACK = "127.0.0.1"
LIMIT_BYTES = 64 * 1024
PIECE_BYTES = 500
PAUSE_S = 0.01
LARGE_LIMIT_BYTES = 4 * INLINE_PARSE_MAX_BYTES  # room for a body parsed in a thread
Handler = Callable[[web.Request], Awaitable[web.Response]]


def echo_handler(limit: int) -> Handler:
    """A handler answering with what read_json_body parsed, or with its HttpError."""

    async def echo(request: web.Request) -> web.Response:
        try:
            body = await read_json_body(request, limit=limit)
        except HttpError as exc:
            return exc.response()
        return web.json_response({"parsed": body})

    return echo


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/echo", echo_handler(LIMIT_BYTES))
    app.router.add_post("/echo-large", echo_handler(LARGE_LIMIT_BYTES))
    test_server = TestServer(app, host=LOOPBACK)
    await test_server.start_server()
    try:
        yield test_server
    finally:
        await test_server.close()


@dataclass
class Reply:
    status: int
    body: dict[str, Any]


async def post_in_pieces(
    server: TestServer,
    body: bytes,
    *,
    chunked: bool = False,
    declared: int | None = None,
    path: str = "/echo",
    piece_bytes: int = PIECE_BYTES,
    pause_s: float = PAUSE_S,
) -> Reply:
    """POST ``body`` over a raw socket, ``piece_bytes`` at a time with a pause between pieces."""
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each piece its own segment
    length = len(body) if declared is None else declared
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    request_head = f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\n{framing}\r\n"
    writer.write((request_head + "Connection: close\r\n\r\n").encode("ascii"))
    try:
        for start in range(0, len(body), piece_bytes):
            piece = body[start : start + piece_bytes]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
            await asyncio.sleep(pause_s)
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
    except ConnectionResetError:
        pass  # the server answered (413) and closed before the whole body was sent
    try:
        # Read the response itself, not to EOF: after refusing an unread body the server may linger.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        length = int(_header(head, b"content-length"))
        payload = await asyncio.wait_for(reader.readexactly(length), timeout=10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()
    status = int(head.split(b" ", 2)[1])
    return Reply(status=status, body=json.loads(payload))


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    raise AssertionError(f"no {name!r} header in {head!r}")


def _offer_like_body(size: int) -> bytes:
    """A JSON object of about ``size`` bytes: an SDP-ish string and a list of curated prompts."""
    session_init = {"curated_prompts": ["a fox in the snow"] * 20}
    body = {"type": "offer", "sdp": "v=0\r\n" + "a=candidate " * (size // 12), "session_init": session_init}
    return json.dumps(body).encode()


async def test_a_body_sent_in_500_byte_pieces_with_pauses_is_read_whole(server: TestServer) -> None:
    body = _offer_like_body(20_000)
    assert len(body) > 20 * PIECE_BYTES
    reply = await post_in_pieces(server, body)
    assert reply.status == 200
    assert reply.body["parsed"] == json.loads(body)


async def test_a_chunked_body_in_pieces_is_read_whole(server: TestServer) -> None:
    body = _offer_like_body(20_000)
    reply = await post_in_pieces(server, body, chunked=True)
    assert reply.status == 200
    assert reply.body["parsed"] == json.loads(body)


async def test_a_body_of_exactly_the_limit_is_accepted(server: TestServer) -> None:
    base = json.dumps({"pad": ""}).encode()
    body = json.dumps({"pad": "x" * (LIMIT_BYTES - len(base))}).encode()
    assert len(body) == LIMIT_BYTES
    for chunked in (False, True):
        reply = await post_in_pieces(server, body, chunked=chunked)
        assert reply.status == 200


async def test_a_declared_length_over_the_limit_is_413_before_reading(server: TestServer) -> None:
    reply = await post_in_pieces(server, b"{}", declared=LIMIT_BYTES + 1)
    assert reply.status == 413
    assert reply.body["error"] == {
        "code": "invalid_message",
        "message": f"request body of {LIMIT_BYTES + 1} bytes exceeds the {LIMIT_BYTES} byte limit",
        "retryable": False,
    }


async def test_a_chunked_body_over_the_limit_is_413(server: TestServer) -> None:
    body = json.dumps({"pad": "x" * LIMIT_BYTES}).encode()
    reply = await post_in_pieces(server, body, chunked=True)
    assert reply.status == 413
    assert reply.body["error"]["message"] == f"request body exceeds the {LIMIT_BYTES} byte limit"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "request body: JSON nested deeper than the limit of 32 levels"),
        (b'{"n": ' + b"7" * 5000 + b"}", "request body: integer of 5000 digits, more than the limit of 32"),
        (b'{"g": NaN}', "request body: NaN is not allowed: numbers must be finite"),
        (b'{"g": 1e999}', "request body: number 1e999 is out of range"),
        (b'{"s": "\xff"}', "request body: message is not valid UTF-8: invalid start byte at byte 7"),
        (b'{"s": "\\udc00"}', "request body: a string holds an unpaired surrogate escape (\\ud800-\\udfff)"),
        (b"{nope", "request body: not valid JSON: Expecting property name enclosed in double quotes"),
    ],
    ids=["deep", "huge-int", "nan", "overflow", "bad-utf8", "lone-surrogate", "syntax"],
)
async def test_hostile_json_bodies_are_400_never_500(server: TestServer, body: bytes, message: str) -> None:
    for chunked in (False, True):
        reply = await post_in_pieces(server, body, chunked=chunked)
        assert reply.status == 400
        assert reply.body["error"]["code"] == "invalid_message"
        assert reply.body["error"]["message"].startswith(message)


async def test_a_large_body_is_parsed_off_the_loop_with_the_same_result(server: TestServer) -> None:
    body = json.dumps({"pad": "y" * (2 * INLINE_PARSE_MAX_BYTES)}).encode()
    reply = await post_in_pieces(server, body, chunked=True, path="/echo-large", piece_bytes=64 * 1024, pause_s=0)
    assert reply.status == 200
    assert reply.body["parsed"] == {"pad": "y" * (2 * INLINE_PARSE_MAX_BYTES)}
    deep = b"[" * 40 + b" " * (2 * INLINE_PARSE_MAX_BYTES) + b"]" * 40
    reply = await post_in_pieces(server, deep, path="/echo-large", piece_bytes=64 * 1024, pause_s=0)
    assert reply.status == 400
    assert "nested deeper" in reply.body["error"]["message"]
