"""A real chat-completions server on loopback whose behaviour per route is switchable, for provider tests.

Each provider under test gets its own route (``{url}/{route}/v1``) so one server can play several
providers at once, each with its own fault.
"""

from __future__ import annotations

import asyncio
import enum
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SLOW_REPLY_MAX_S = 10.0  # seconds a "slow" reply waits at most; teardown releases it at once


class Fault(enum.Enum):
    OK = "ok"
    HTTP_500 = 500
    HTTP_503 = 503
    HTTP_429 = 429
    HTTP_401 = 401
    HTTP_400 = 400
    SLOW = "slow"  # answers only after the test is over (past any client timeout)
    NON_JSON = "non_json"  # 200 with an HTML body, as a misrouted proxy would send
    EMPTY_CHOICES = "empty_choices"
    NO_CONTENT = "no_content"  # a choice whose message content is empty


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    route: str
    path: str
    headers: dict[str, str]
    body: Any
    peer: tuple[str, int] | None  # the client's address and port: the same port means the same connection


@dataclass
class ChatServer:
    """Records every request; answers per route as ``faults`` and ``replies`` say (default: OK, "reply from <route>")."""

    url: str = ""
    faults: dict[str, Fault] = field(default_factory=dict)
    replies: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def base_url(self, route: str) -> str:
        return f"{self.url}/{route}/v1"

    def routes_called(self) -> list[str]:
        return [r.route for r in self.received]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{route}/v1/chat/completions", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route = request.match_info["route"]
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        self.received.append(Received(route, request.path, dict(request.headers), body, peer))
        fault = self.faults.get(route, Fault.OK)
        if isinstance(fault.value, int):
            error = {"error": {"message": f"simulated {fault.value}", "type": "test"}}
            return web.json_response(error, status=fault.value)
        if fault is Fault.SLOW:
            try:
                await asyncio.wait_for(self.release.wait(), SLOW_REPLY_MAX_S)
            except TimeoutError:
                pass
        if fault is Fault.NON_JSON:
            return web.Response(text="<html><body>502 bad gateway</body></html>", content_type="text/html")
        model = body.get("model", "unknown") if isinstance(body, dict) else "unknown"
        if fault is Fault.EMPTY_CHOICES:
            return web.json_response({"id": "x", "object": "chat.completion", "model": model, "choices": []})
        content = "" if fault is Fault.NO_CONTENT else self.replies.get(route, f"reply from {route}")
        return web.json_response(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        )
