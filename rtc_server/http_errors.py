"""JSON error responses and size-limited JSON body reading for the HTTP endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from rtc_server.inbound import INLINE_PARSE_MAX_BYTES, loads_json
from rtc_server.protocol import ErrorCode, InvalidMessage, error_payload

__all__ = ["HttpError", "json_error", "read_body", "read_json_body"]


class HttpError(Exception):
    """An error the handler answers with a JSON body ``{error: {code, message, retryable}}``."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code: ErrorCode = code
        self.message = message
        self.retryable = retryable
        self.headers = headers or {}

    def response(self) -> web.Response:
        return json_error(self.status, self.code, self.message, retryable=self.retryable, headers=self.headers)


def json_error(
    status: int, code: ErrorCode, message: str, *, retryable: bool = False, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(error_payload(code, message, retryable=retryable), status=status, headers=headers)


async def read_body(request: web.Request, *, limit: int) -> bytes:
    """The whole request body, however it is split on the wire; HttpError 413 past ``limit`` bytes.

    A declared Content-Length over the limit is refused before anything is read; a chunked body (or
    one that sends more than it declared) is refused as soon as it passes the limit, so no more than
    ``limit`` bytes are ever held.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(f"request body of {declared} bytes exceeds the {limit} byte limit")
    body = bytearray()
    # iter_any yields whatever has arrived, waiting for more until the body ends.
    async for chunk in request.content.iter_any():
        if len(body) + len(chunk) > limit:
            raise _too_large(f"request body exceeds the {limit} byte limit")
        body += chunk
    return bytes(body)


async def read_json_body(request: web.Request, *, limit: int) -> Any:
    """The whole body parsed as hardened JSON (``inbound.loads_json``): 413 past ``limit``, 400 when not JSON."""
    body = await read_body(request, limit=limit)
    try:
        if len(body) > INLINE_PARSE_MAX_BYTES:
            return await asyncio.to_thread(loads_json, body, max_bytes=limit)
        return loads_json(body, max_bytes=limit)
    except InvalidMessage as exc:
        raise HttpError(400, "invalid_message", f"request body: {exc}") from exc


def _too_large(message: str) -> HttpError:
    return HttpError(413, "invalid_message", message)
