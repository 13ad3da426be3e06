"""Command line: ``rtc-server [--config PATH|NAME] [--host H] [--port P] [--check]``, the same as ``python -m rtc_server``.

``--config`` takes a file, or the name of a shipped config (``dev.yaml`` or ``dev``) when no such
file exists; without it the server runs on the embedded defaults (``ServiceConfig()``). The file may
also be in the original system's layout (FastVideo's ``fastvideo serve`` config): it is translated
(:mod:`rtc_server.config_compat`), with a ``warning:`` line on stderr per key not honoured.

``--check`` runs every start-up check that needs no network (config, generator preflight, access,
TURN and auth secrets present, safety model) and prints the resolved config as YAML, every key with
its effective value, secrets masked; it starts nothing.

Exit status: 0 after a clean shutdown on SIGINT/SIGTERM (or a config that passes ``--check``), 2 for
a bad config (including a generator whose model directory is missing or broken, and an enabled
safety filter whose model cannot be used: the filter fails closed, it never lets prompts through
unchecked).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from gpu.factory import preflight
from gpu.generator import GeneratorError
from prompt.safety import SafetyModelError, preflight_safety
from rtc_server.app import build_app
from rtc_server.auth import Authenticator, AuthSetupError, is_loopback_host
from rtc_server.config import ConfigError, ServiceConfig
from rtc_server.config_compat import LoadedConfig, load_any_config, origin_hints
from rtc_server.packaged import resolve_config_path, shipped_config_names
from rtc_server.transports.turn_credentials import IceServerList, TurnSetupError

__all__ = ["access_problem", "main", "masked", "startup_problem", "turn_problem"]

EXIT_BAD_CONFIG = 2
MASK = "***"
# Keys whose values are secrets (admin_token, a TURN credential, a password in a URL); names of
# environment variables (``*_env``, ``*_envs``) are not secrets and stay visible.
_SECRET_KEY = re.compile(r"(^|_)(token|secret|password|passwd|credential|api_key|apikey)$", re.IGNORECASE)
_ENV_NAME_KEY = re.compile(r"_envs?$")
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*:)[^/@\s]+(?P<tail>@)", re.IGNORECASE)
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
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config and run the start-up checks that need no network, print the resolved config "
        "(secrets masked) and exit: 0 when it would start, 2 naming the problem",
    )
    return parser.parse_args(argv)


def _with_overrides(config: ServiceConfig, host: str | None, port: int | None) -> ServiceConfig:
    server = config.server.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v is not None})
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


def masked(value: Any, key: str = "") -> Any:
    """``value`` (a config dump) with every secret replaced by ``***``; variable names stay visible."""
    if isinstance(value, Mapping):
        return {name: masked(item, str(name)) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [masked(item, key) for item in value]
    if value is not None and _SECRET_KEY.search(key) and not _ENV_NAME_KEY.search(key):
        return MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", value)
    return value


def resolved_yaml(config: ServiceConfig) -> str:
    """Every key of ``config`` with its effective value, as YAML, secrets masked."""
    return yaml.safe_dump(masked(config.model_dump(mode="json")), sort_keys=False, allow_unicode=True)


def startup_problem(config: ServiceConfig) -> str | None:
    """Why the server would refuse to start with ``config`` (the checks that need no network), or None."""
    try:
        preflight(
            config.generator.backend,
            config.generator.options,
            sampling=config.default_request.sampling.model_dump(),
            sampling_key="default_request.sampling",
        )
    except GeneratorError as exc:
        return f"generator: {exc}"
    problem = access_problem(config) or turn_problem(config)
    if problem is not None:
        return problem
    safety = config.streaming.safety
    if safety.enabled:
        try:
            preflight_safety(safety.classifier_path, block_threshold=safety.block_threshold)
        except SafetyModelError as exc:
            return f"streaming.safety: {exc}"
    return None


def _load(config_arg: str | None) -> tuple[LoadedConfig, Path | None]:
    if not config_arg:
        return LoadedConfig(config=ServiceConfig(), layout="ours"), None
    path = resolve_config_path(config_arg)
    return load_any_config(path), path


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        loaded, path = _load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    for unhonoured in loaded.warnings:
        print(f"warning: {path}: {unhonoured.key}: {unhonoured.reason}", file=sys.stderr)
    config = _with_overrides(loaded.config, args.host, args.port)
    problem = startup_problem(config)
    if problem is not None:
        where = f"{path}: " if path is not None else ""
        hints = origin_hints(problem, loaded.origins or {})
        print("\n".join([f"error: {where}{problem}", *hints]), file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.check:
        source = "embedded defaults" if path is None else str(path)
        if loaded.layout == "original":
            source += " (original FastVideo serve layout, translated)"
        print(f"# resolved config: {source}; secrets masked\n{resolved_yaml(config)}", end="", flush=True)
        return 0
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
