"""Command line: ``python -m rtc_server.router --config PATH|NAME [--host H] [--port P]``.

``--config`` takes a file, or the name of a shipped config (``router``). Exit status: 0 after a clean
shutdown on SIGINT/SIGTERM (bridged sessions are closed with 1001 first), 2 for a bad config (the
message names the file and the key) or a ``redis_url`` without redis-py installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Sequence

from aiohttp import web
from pydantic import ValidationError

from rtc_server.config import ConfigError
from rtc_server.packaged import resolve_config_path
from rtc_server.router.app import build_router_app
from rtc_server.router.config import RouterConfig, load_router_config

__all__ = ["main"]

EXIT_BAD_CONFIG = 2
SHUTDOWN_TIMEOUT_S = 3.0  # connections still open after this are dropped at shutdown


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rtc_server.router",
        description="Router in front of rtc_server replicas: places sessions, bridges WebSockets, relays signalling.",
    )
    parser.add_argument("--config", required=True, help="router YAML file, or the name of a shipped one (router)")
    parser.add_argument("--host", help="override host")
    parser.add_argument("--port", type=int, help="override port")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def _load(args: argparse.Namespace) -> RouterConfig:
    config = load_router_config(resolve_config_path(args.config))
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        try:
            config = RouterConfig.model_validate({**config.model_dump(), **overrides})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"command line: {problems}") from exc
    if config.redis_url is not None and importlib.util.find_spec("redis") is None:
        raise ConfigError(
            "redis_url is set but redis-py is not installed: pip install 'rtc-video-stream[router]' (or [redis])"
        )
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    app = build_router_app(config)
    url = f"http://{config.host}:{config.port}/"

    def announce(_: str) -> None:
        print(f"rtc_server router listening on {url} ({len(config.replicas)} replicas)", flush=True)

    # run_app turns SIGINT/SIGTERM into a graceful exit: stop listening, close the bridges
    # (on_shutdown), run the cleanup contexts, then return normally.
    web.run_app(
        app, host=config.host, port=config.port, print=announce, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None
    )
    return 0
