"""Command line: ``rtc-server [--config PATH|NAME] [--host H] [--port P]``, the same as ``python -m rtc_server``.

``--config`` takes a file, or the name of a shipped config (``dev.yaml`` or ``dev``) when no such
file exists; without it the server runs on the embedded defaults (``ServiceConfig()``).

Exit status: 0 after a clean shutdown on SIGINT/SIGTERM, 2 for a bad config (including a
generator whose model directory is missing or broken, and an enabled safety filter whose model
cannot be used: the filter fails closed, it never lets prompts through unchecked).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from gpu.factory import preflight
from gpu.generator import GeneratorError
from prompt.safety import SafetyModelError, preflight_safety
from rtc_server.app import build_app
from rtc_server.auth import Authenticator, AuthSetupError, is_loopback_host
from rtc_server.config import ConfigError, ServiceConfig, load_config
from rtc_server.packaged import resolve_config_path, shipped_config_names
from rtc_server.transports.turn_credentials import IceServerList, TurnSetupError

__all__ = ["access_problem", "main", "turn_problem"]

EXIT_BAD_CONFIG = 2
SHUTDOWN_TIMEOUT_S = 3.0  # connections still open after this are dropped at shutdown


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rtc-server", description="Real-time AI video streaming server (also: python -m rtc_server)."
    )
    parser.add_argument(
        "--config",
        help="YAML config file, or the name of a shipped one ("
        + (", ".join(shipped_config_names()) or "none")
        + "); the embedded defaults when omitted",
    )
    parser.add_argument("--host", help="override server.host")
    parser.add_argument("--port", type=int, help="override server.port")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def _with_overrides(config: ServiceConfig, host: str | None, port: int | None) -> ServiceConfig:
    server = config.server.model_copy(
        update={k: v for k, v in (("host", host), ("port", port)) if v is not None}
    )
    return config.model_copy(update={"server": server})


def access_problem(config: ServiceConfig) -> str | None:
    """Why the server must not start as configured for who may use it, or None."""
    if config.auth is None and not is_loopback_host(config.server.host):
        return (
            f"server.host {config.server.host} is reachable from other machines, and there is no auth section: "
            "anyone could use the GPUs. Add auth: {mode: token, token_envs: [...]} or {mode: jwt, ...}, "
            "or write auth: {mode: none} to serve everyone knowingly."
        )
    try:
        Authenticator(config.auth)  # reads its secrets now: a missing one is a configuration error
    except AuthSetupError as exc:
        return str(exc)
    return None


def turn_problem(config: ServiceConfig) -> str | None:
    """Why the TURN section cannot be used (its secret is not in the environment), or None."""
    try:
        IceServerList(config.webrtc)
    except TurnSetupError as exc:
        return str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(resolve_config_path(args.config)) if args.config else ServiceConfig()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    config = _with_overrides(config, args.host, args.port)
    try:
        preflight(
            config.generator.backend,
            config.generator.options,
            sampling=config.default_request.sampling.model_dump(),
            sampling_key="default_request.sampling",
        )
    except GeneratorError as exc:
        print(f"error: generator: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    problem = access_problem(config) or turn_problem(config)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    safety = config.streaming.safety
    if safety.enabled:
        try:
            preflight_safety(safety.classifier_path, block_threshold=safety.block_threshold)
        except SafetyModelError as exc:
            print(f"error: streaming.safety: {exc}", file=sys.stderr)
            return EXIT_BAD_CONFIG
    app = build_app(config)
    url = f"http://{config.server.host}:{config.server.port}/"

    def announce(_: str) -> None:
        print(f"rtc_server listening on {url}", flush=True)

    # run_app turns SIGINT/SIGTERM into a graceful exit: stop listening, run the
    # cleanup contexts (sessions, peers, pool), then return normally.
    web.run_app(
        app,
        host=config.server.host,
        port=config.server.port,
        print=announce,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,
    )
    return 0
