"""The page's routes, shared by the server and the router: ``/``, the viewer page ``/watch`` and their files at ``/client/``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from rtc_server.http_errors import json_error

__all__ = ["add_web_client"]


def add_web_client(app: web.Application, directory: Path) -> None:
    """Serve ``directory``'s index.html at ``/``, its watch.html at ``/watch`` (a viewer's page:
    ``/watch?session=<id>&token=<watch_token>``; a JSON 404 when a file is missing) and its files at ``/client/``."""

    def serve(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        path = directory / name

        async def page(request: web.Request) -> web.StreamResponse:
            if not path.is_file():
                return json_error(404, "invalid_message", f"web client not found at {directory}")
            return web.FileResponse(path)

        return page

    app.router.add_get("/", serve("index.html"))
    app.router.add_get("/watch", serve("watch.html"))
    if directory.is_dir():
        app.router.add_static("/client/", directory)
