"""The page's routes, shared by the server and the router: ``/`` and its files at ``/client/``."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from rtc_server.http_errors import json_error

__all__ = ["add_web_client"]


def add_web_client(app: web.Application, directory: Path) -> None:
    """Serve ``directory``'s index.html at ``/`` (a JSON 404 when missing) and its files at ``/client/``."""
    index = directory / "index.html"

    async def page(request: web.Request) -> web.StreamResponse:
        if not index.is_file():
            return json_error(404, "invalid_message", f"web client not found at {directory}")
        return web.FileResponse(index)

    app.router.add_get("/", page)
    if directory.is_dir():
        app.router.add_static("/client/", directory)
