"""A headless viewer of a session's fMP4 watch socket (``GET /v1/sessions/{id}/watch``)."""

from __future__ import annotations

from rtc_server.clients.ws_client import WebSocketClient

__all__ = ["WatchClient"]


class WatchClient(WebSocketClient):
    """Receives a session's segments as a viewer: the same events and segments as WebSocketClient,
    without a session of its own (``connect(send_init=False)``). The token rides as a subprotocol."""

    def __init__(self, base_url: str, *, session_id: str, watch_token: str, receive_buffer_bytes: int | None = None) -> None:
        super().__init__(base_url, receive_buffer_bytes=receive_buffer_bytes, auth_token=watch_token)
        self._url = base_url.rstrip("/").replace("http://", "ws://", 1) + f"/v1/sessions/{session_id}/watch"

    async def watch(self) -> None:
        await self.connect(send_init=False)
