"""JSON error responses and size-limited JSON body reading for the HTTP endpoints."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from rtc_server.protocol import ErrorCode, error_payload

__all__ = ["HttpError", "json_error", "read_json_body"]


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


async def read_json_body(request: web.Request, *, limit: int) -> Any:
    """Read at most ``limit`` bytes of JSON; 413 when larger, 400 when not JSON."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise HttpError(413, "invalid_message", f"request body of {declared} bytes exceeds the {limit} byte limit")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise HttpError(413, "invalid_message", f"request body exceeds the {limit} byte limit")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HttpError(400, "invalid_message", f"request body is not valid JSON: {exc}") from exc
