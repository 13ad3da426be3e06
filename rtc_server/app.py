"""The aiohttp application: shared objects under typed keys, routes, and ordered teardown.

Startup order: pool (warm-up runs in the background so /readyz can say
"warming"), session store and resume records, session logs and the init-image
directory, recordings, session registry, WebRTC transport, WebSocket transport. At
shutdown (SIGTERM/SIGINT) aiohttp first stops listening; then (on_shutdown)
the registry drains: new sessions are refused and /readyz says "draining"
(503), every live session stores where its stream stands, is told
``error{gpu_unavailable, retryable}`` and closed, its resume record left for
another replica. Then the cleanup contexts run in reverse: transports,
registry, pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gpu.factory import build_generator
from gpu.generator import Generator, SegmentRequest
from gpu.pool import GpuPool, InProcessGpuPool
from gpu.subprocess_pool import SubprocessGpuPool, WorkerSettings, audio_slot_bytes
from prompt import PromptEnhancer, open_providers
from prompt.safety import PromptSafetyFilter
from rtc_server.admin import is_admin, public_status
from rtc_server.auth import Authenticator, bearer_token
from rtc_server.config import ServiceConfig, StoreConfig
from rtc_server.health import healthz_payload, readyz_payload, session_slots
from rtc_server.http_errors import HttpError, json_error
from rtc_server.metrics import CONTENT_TYPE, ServiceMetrics
from rtc_server.packaged import shipped_dir
from rtc_server.prompt_pipeline import PromptPipeline
from rtc_server.registry import SessionRegistry
from rtc_server.session_log import SessionLogger
from rtc_server.session_services import SessionServices
from rtc_server.store import BlobStore, InMemoryBlobStore, InMemorySessionStore, SessionStore
from rtc_server.store.resume_records import InMemoryResumeRecords, ResumeRecords
from rtc_server.transports import webrtc, websocket
from rtc_server.transports.gate import Gate
from rtc_server.transports.ice import apply_bitrate_bounds
from rtc_server.viewers import recording_endpoint, watch_endpoint, whep
from rtc_server.viewers.recording import RecordingService
from rtc_server.web_page import add_web_client

__all__ = [
    "CONFIG",
    "GATE",
    "IMAGE_DIR",
    "METRICS",
    "POOL",
    "PROMPTS",
    "RECORDINGS",
    "REGISTRY",
    "RESUME",
    "SESSION_LOG",
    "STORE",
    "WEBRTC",
    "WEBSOCKET",
    "build_app",
]

logger = logging.getLogger(__name__)

CONFIG = web.AppKey("config", ServiceConfig)
POOL = web.AppKey("pool", GpuPool)  # type: ignore[type-abstract]
STORE = web.AppKey("store", SessionStore)  # type: ignore[type-abstract]
RESUME = web.AppKey("resume", ResumeRecords)  # type: ignore[type-abstract]
SESSION_LOG = web.AppKey("session_log", SessionLogger)
IMAGE_DIR = web.AppKey("image_dir", Path)
REGISTRY = web.AppKey("registry", SessionRegistry)
METRICS = web.AppKey("metrics", ServiceMetrics)
PROMPTS = web.AppKey("prompts", PromptPipeline)
WEBRTC = web.AppKey("webrtc", webrtc.WebRTCTransport)
WEBSOCKET = web.AppKey("websocket", websocket.WebSocketTransport)
GATE = web.AppKey("gate", Gate)
RECORDINGS = web.AppKey("recordings", RecordingService)

# The page served at / when server.web_client_dir is unset: the copy packaged in a wheel install,
# else the repository's web_client/ (a checkout or an editable install: edits show at once).
DEFAULT_WEB_CLIENT_DIR = shipped_dir("web_client")


def build_pool(config: ServiceConfig) -> GpuPool:
    """The pool selected by ``pool.backend``."""
    generator_config = config.generator

    def make_generator() -> Generator:
        return build_generator(generator_config.backend, generator_config.options)

    sampling = config.default_request.sampling
    # Warm up at the real size and step count: that is what compiles kernels and sizes caches.
    warmup_request = SegmentRequest(
        prompt=config.default_request.prompt,
        width=sampling.width,
        height=sampling.height,
        num_frames=sampling.num_frames,
        fps=sampling.fps,
        num_inference_steps=sampling.num_inference_steps,
        guidance_scale=sampling.guidance_scale,
        seed=sampling.seed,
    )
    pool_config = config.pool
    if pool_config.backend == "subprocess":
        return SubprocessGpuPool(
            WorkerSettings(
                backend=generator_config.backend,
                options=generator_config.options,
                per_worker_options=pool_config.worker_options,
                num_workers=pool_config.num_workers,
                gpu_ids=tuple(pool_config.gpu_ids) if pool_config.gpu_ids else None,
                sessions_per_worker=pool_config.sessions_per_worker,
                max_frame_bytes=sampling.width * sampling.height * 3 * sampling.num_frames,
                max_audio_bytes=audio_slot_bytes(sampling.num_frames, sampling.fps),
                warmup=pool_config.warmup,
                warmup_request=warmup_request,
                boot_timeout_s=pool_config.boot_timeout_seconds,
                segment_timeout_s=pool_config.segment_timeout_seconds,
                restart_delay_s=pool_config.restart_delay_seconds,
            )
        )
    return InProcessGpuPool(
        make_generator,
        max_parallel=pool_config.max_parallel,
        warmup=pool_config.warmup,
        warmup_request=warmup_request,
    )


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = build_pool(app[CONFIG])
    app[POOL] = pool
    warmup = asyncio.create_task(pool.start(), name="pool-start")
    yield
    if not warmup.done():
        warmup.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await warmup
    await pool.shutdown()


@dataclass(frozen=True)
class Stores:
    """The session store, its blob store and the sessions' resume records of ``store.backend``."""

    sessions: SessionStore
    blobs: BlobStore
    records: ResumeRecords

    async def close(self) -> None:
        """Close all three, one by one (over Redis they share one client, closed with the last)."""
        await self.records.close()
        await self.sessions.close()
        await self.blobs.close()


async def open_store(config: StoreConfig) -> Stores:
    """The stores selected by ``store.backend``."""
    if config.backend == "redis":
        from rtc_server.store.redis_store import open_redis_backends  # redis is an optional dependency

        assert config.redis_url is not None
        backends = await open_redis_backends(
            config.redis_url,
            key_prefix=config.key_prefix,
            inline_limit_bytes=config.inline_limit_bytes,
            snapshot_ttl_s=config.snapshot_ttl_seconds,
            state_ttl_s=config.state_ttl_seconds,
        )
        return Stores(backends.sessions, backends.blobs, backends.resume)
    blobs = InMemoryBlobStore()
    store = InMemorySessionStore(
        blobs,
        inline_limit_bytes=config.inline_limit_bytes,
        snapshot_ttl_s=config.snapshot_ttl_seconds,
    )
    return Stores(store, blobs, InMemoryResumeRecords(ttl_s=config.state_ttl_seconds))


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    stores = await open_store(app[CONFIG].store)
    app[STORE], app[RESUME] = stores.sessions, stores.records
    yield
    await stores.close()


async def _session_files_ctx(app: web.Application) -> AsyncIterator[None]:
    streaming = app[CONFIG].streaming
    session_log = SessionLogger(streaming.session_log_dir)
    app[SESSION_LOG] = session_log
    own_dir = streaming.init_image_dir is None
    image_dir = Path(tempfile.mkdtemp(prefix="rtc-init-images-")) if own_dir else Path(streaming.init_image_dir or "")
    image_dir.mkdir(parents=True, exist_ok=True)
    app[IMAGE_DIR] = image_dir
    yield
    await asyncio.to_thread(session_log.close)
    if own_dir:
        await asyncio.to_thread(shutil.rmtree, image_dir, True)


async def _prompt_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[CONFIG].streaming.prompt
    safety_settings = app[CONFIG].streaming.safety
    safety = PromptSafetyFilter(
        classifier_path=safety_settings.classifier_path,
        enabled=safety_settings.enabled,
        block_threshold=safety_settings.block_threshold,
    )
    if safety.enabled:
        # Load once now, not on the first user's prompt. Fail closed: a filter that cannot run
        # stops the start (SafetyModelError naming the path), it never lets prompts through unchecked.
        await asyncio.to_thread(safety.require_ready)
    async with contextlib.AsyncExitStack() as stack:
        enhancer = None
        if settings.providers:
            providers = await stack.enter_async_context(
                open_providers(settings.providers, timeout_s=settings.timeout_ms / 1000.0)
            )
            enhancer = PromptEnhancer(
                providers=providers,
                model=settings.model,
                timeout_ms=settings.timeout_ms,
                temperature=settings.temperature,
                max_tokens=settings.max_tokens,
                system_prompt_dir=settings.system_prompt_dir,
            )
        app[PROMPTS] = PromptPipeline(enhancer=enhancer, safety=safety, deadline_s=settings.deadline_ms / 1000.0)
        yield


async def _recordings_ctx(app: web.Application) -> AsyncIterator[None]:
    # Before the registry: sessions record through it; closed after the registry, it finalises every
    # recording the ended sessions left running.
    pool = app[POOL]
    recordings = RecordingService(config=app[CONFIG], audio_format=lambda: pool.audio_format)
    await recordings.start()
    app[RECORDINGS] = recordings
    yield
    await recordings.close()


async def _registry_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    services = SessionServices(
        pool=app[POOL],
        store=app[STORE],
        log=app[SESSION_LOG],
        metrics=app[METRICS],
        prompts=app[PROMPTS],
        streaming=config.streaming,
        defaults=config.default_request,
        limits=config.limits,
        image_dir=app[IMAGE_DIR],
        records=app[RESUME],
        recordings=app[RECORDINGS],
    )
    registry = SessionRegistry(config=config, services=services)
    app[METRICS].watch(registry.live_counts)
    app[REGISTRY] = registry
    registry.start_reaper()
    yield
    await registry.close()


async def _webrtc_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    apply_bitrate_bounds(
        min_bps=config.webrtc.min_bitrate, max_bps=config.webrtc.max_bitrate, start_bps=config.webrtc.start_bitrate
    )
    transport = webrtc.WebRTCTransport(config=config, registry=app[REGISTRY], gate=app[GATE])
    app[WEBRTC] = transport
    yield
    await transport.close()


async def _gate_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # Secrets are read now: a missing one stops the server at start, not every client later.
    authenticator = Authenticator(config.auth)
    app[GATE] = Gate(authenticator=authenticator, allowed_origins=config.server.allowed_origins)
    yield


async def _websocket_ctx(app: web.Application) -> AsyncIterator[None]:
    transport = websocket.WebSocketTransport(config=app[CONFIG], registry=app[REGISTRY], gate=app[GATE])
    app[WEBSOCKET] = transport
    yield
    await transport.close()


async def _end_sessions(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for handlers: ending sessions here closes the
    # long-lived WebSocket handlers and peers instead of waiting out the shutdown timeout.
    await app[REGISTRY].drain()


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response(healthz_payload())


async def _readyz(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    # queue_size as the original means it: every session waiting for admission, in the server's
    # admission queue or in the pool's acquire().
    status = request.app[POOL].status().with_waiting_sessions(registry.depth)
    payload, ready = readyz_payload(status, draining=registry.draining)
    return web.json_response(payload, status=200 if ready else 503)


async def _health(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    status = "draining" if registry.draining else "ok"
    return web.json_response({"status": status, "sessions": len(registry), "stream_mode": "av_fmp4", "transports": ["webrtc", "websocket"]})


async def _status(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    status = request.app[POOL].status().with_waiting_sessions(registry.depth)  # as in _readyz
    body = status.to_json() if is_admin(request, request.app[CONFIG].server.admin_token) else public_status(status)
    # free session slots: what the router places sessions by
    open_sessions, taking = registry.active + registry.depth, status.ready and not registry.draining
    body.update(session_slots(capacity=registry.capacity.total, open_sessions=open_sessions, ready=taking))
    return web.json_response(body)


def _admin_refusal(request: web.Request) -> web.Response | None:
    """None for an operator; else the answer that refuses the request."""
    if is_admin(request, request.app[CONFIG].server.admin_token):
        return None
    return json_error(401, "unauthorized", "this endpoint needs the operators' bearer token (server.admin_token)")


async def _metrics(request: web.Request) -> web.Response:
    refusal = _admin_refusal(request)
    if refusal is not None:
        return refusal
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


async def _session_frames(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    controller = request.app[REGISTRY].get(session_id)
    if controller is None:
        return json_error(404, "invalid_message", f"no live session {session_id!r}")
    return web.json_response({"session_id": session_id, "frames": controller.delivery.recent()})


async def _reload_prompts(request: web.Request) -> web.Response:
    refusal = _admin_refusal(request)
    if refusal is not None:
        return refusal
    if not await request.app[PROMPTS].reload_system_prompts():
        return json_error(409, "invalid_message", "no prompt enhancer is configured (streaming.prompt.providers)")
    return web.json_response({"reloaded": True})


async def _delete_session(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    registry, gate = request.app[REGISTRY], request.app[GATE]
    controller = registry.get(session_id)
    if controller is None:
        return json_error(404, "invalid_message", f"no live session {session_id!r}")
    if not is_admin(request, request.app[CONFIG].server.admin_token):
        try:
            caller = gate.caller(request, bearer_token(request.headers.get("Authorization")))
        except HttpError as exc:
            return exc.response()
        if caller.client != registry.owner(session_id):
            return json_error(403, "unauthorized", "only the client that opened a session (or an operator) may end it")
    await controller.request_stop()
    return web.json_response({"session_id": session_id, "state": controller.session.state.value})


def build_app(config: ServiceConfig) -> web.Application:
    """The service as an aiohttp application; shared objects live in its cleanup contexts."""
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[CONFIG] = config
    app[METRICS] = ServiceMetrics()
    app.cleanup_ctx.extend(
        [_gate_ctx, _pool_ctx, _store_ctx, _session_files_ctx, _prompt_ctx, _recordings_ctx, _registry_ctx, _webrtc_ctx, _websocket_ctx]
    )
    app.on_shutdown.append(_end_sessions)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/health", _health)
    app.router.add_get("/status", _status)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/v1/admin/prompts/reload", _reload_prompts)
    app.router.add_get("/v1/sessions/{session_id}/frames", _session_frames)
    app.router.add_delete("/v1/sessions/{session_id}", _delete_session)
    webrtc.register_routes(app, WEBRTC, config)
    websocket.register_routes(app, WEBSOCKET)
    watch_endpoint.register_routes(app, config=CONFIG, registry=REGISTRY, gate=GATE)
    recording_endpoint.register_routes(app, recordings=RECORDINGS, gate=GATE)
    whep.register_routes(app, config=CONFIG, registry=REGISTRY, gate=GATE, webrtc=WEBRTC)
    web_dir = Path(config.server.web_client_dir) if config.server.web_client_dir else DEFAULT_WEB_CLIENT_DIR
    add_web_client(app, web_dir)
    return app
