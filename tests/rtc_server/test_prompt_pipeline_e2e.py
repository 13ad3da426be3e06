"""End to end: the prompt pipeline as a client sees it, against a real chat-completions server on loopback.

Enhancement, auto-extension, rewrite, provider outages and fallback, the safety filter and the
system-prompt reload endpoint, each through a real server and real clients (WebRTC and WebSocket).
The LLM provider is a real aiohttp server speaking the OpenAI chat-completions format; what it
answers is switchable per test and per route, so one server can play several providers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from prompt import DEFAULT_SYSTEM_PROMPTS
from prompt.safety import (
    DEFAULT_DATA_PATH,
    PromptSafetyFilter,
    SafetyDecision,
    SafetyResult,
    train_classifier,
)
from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from rtc_server.config import ServiceConfig
from tests.conftest import RunningServer, make_config

LOOPBACK = "127.0.0.1"
TRANSPORTS = ["webrtc", "websocket"]
MODEL = "test-model"
DEFAULT_PROMPT = "a red fox running through fresh snow"  # make_config's default_request.prompt
HANG_MAX_S = 30.0  # a hanging reply is released at teardown, or after this long at most
SEGMENT_GAP_MAX_S = 2.0  # segments are 1 s of video; a longer silence between completions is a stall

# Picked for the classifier trained from the shipped data; the safety fixture checks the picks first.
UNSAFE_PROMPT = "a man's arm being torn off with blood gushing everywhere"
UNSAFE_PROMPT_2 = "a dog being skinned alive in graphic detail"
SAFE_PROMPTS = [
    "a hot air balloon drifting over lavender fields in provence",
    "a lighthouse keeper climbing a spiral staircase",
    "a train winding through snowy swiss alps",
    "a quiet garden at dusk",
]


# -- the fake LLM provider ------------------------------------------------


@dataclass(frozen=True)
class LLMCall:
    """One chat-completions request as the fake provider saw it."""

    route: str
    operation: str  # "enhance", "auto_extend" or "rewrite", told apart by the user message
    system: str
    user: str
    model: str | None


Reply = str | int | None  # text to answer with, an HTTP error status, or None to hang
Responder = Callable[[LLMCall], Reply]
Delay = Callable[[LLMCall], float]  # seconds to wait before replying


def operation_of(user: str) -> str:
    """Which enhancer operation sent ``user`` (see prompt/messages.py for the message shapes)."""
    if user.startswith("Seed prompt:"):
        return "rewrite"
    if user.startswith("Prompts of the previous segments"):
        return "auto_extend"
    return "enhance"


def prior_prompts_of(call: LLMCall) -> list[str]:
    """The numbered prior prompts an auto_extend request listed, oldest first."""
    return re.findall(r"^\d+\. (.*)$", call.user, flags=re.MULTILINE)


@dataclass
class FakeLLM:
    """Records every request; answers per route: ``responders[route]`` if set, else :meth:`derive`.

    ``derive`` answers enhance with "ENHANCED: <prompt>" (or ``enhance_map[prompt]``), auto_extend
    with "NEXT: scene <n>" (n counts the auto_extend calls), and rewrite with a heading and numbered lines.
    ``delay`` holds each reply back (until teardown at most). ``peak_in_flight`` is the most calls
    of each operation the server saw open at once (a call its client gave up on counts until replied).
    """

    url: str = ""
    calls: list[LLMCall] = field(default_factory=list)
    responders: dict[str, Responder] = field(default_factory=dict)
    enhance_map: dict[str, str] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    delay: Delay = field(default=lambda call: 0.0)
    in_flight: Counter[str] = field(default_factory=Counter)
    peak_in_flight: Counter[str] = field(default_factory=Counter)
    _scenes: int = 0

    def base_url(self, route: str) -> str:
        return f"{self.url}/{route}/v1"

    def provider(self, route: str) -> dict[str, Any]:
        """A ``streaming.prompt.providers`` entry for ``route``, named after it."""
        return {"kind": "openai_compatible", "name": route, "base_url": self.base_url(route), "model": MODEL}

    def calls_of(self, operation: str, route: str | None = None) -> list[LLMCall]:
        return [c for c in self.calls if c.operation == operation and (route is None or c.route == route)]

    def fail_with(self, route: str, status: int) -> None:
        self.responders[route] = lambda call: status

    def hang(self, route: str) -> None:
        self.responders[route] = lambda call: None

    def derive(self, call: LLMCall) -> str:
        if call.operation == "enhance":
            return self.enhance_map.get(call.user, f"ENHANCED: {call.user}")
        if call.operation == "auto_extend":
            self._scenes += 1
            return f"NEXT: scene {self._scenes}"
        seed = re.search(r"^Seed prompt: (.*)$", call.user, flags=re.MULTILINE)
        count = re.search(r"Write (\d+) alternative", call.user)
        assert seed is not None and count is not None, call.user
        lines = [f"{i}. {seed.group(1)}, variation {i}" for i in range(1, int(count.group(1)) + 1)]
        return "\n".join(["Here are the alternatives:", *lines])  # a heading the server must drop

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{route}/v1/chat/completions", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = {m["role"]: m["content"] for m in body["messages"]}
        user = messages.get("user", "")
        route = request.match_info["route"]
        call = LLMCall(route, operation_of(user), messages.get("system", ""), user, body.get("model"))
        self.calls.append(call)
        self.in_flight[call.operation] += 1
        self.peak_in_flight[call.operation] = max(self.peak_in_flight[call.operation], self.in_flight[call.operation])
        try:
            delay = self.delay(call)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), delay)  # released at teardown
            return await self._reply(call, body)
        finally:
            self.in_flight[call.operation] -= 1

    async def _reply(self, call: LLMCall, body: dict[str, Any]) -> web.StreamResponse:
        responder = self.responders.get(call.route, self.derive)
        reply = responder(call)
        if reply is None:
            try:
                await asyncio.wait_for(self.release.wait(), HANG_MAX_S)
            except TimeoutError:
                pass
            reply = "too late"
        if isinstance(reply, int):
            return web.json_response({"error": {"message": f"simulated {reply}", "type": "test"}}, status=reply)
        return web.json_response(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": body.get("model", "unknown"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        )


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    """A started fake provider; hanging replies are released and the server closed afterwards."""
    fake = FakeLLM()
    server = TestServer(fake.app(), host=LOOPBACK, port=0)
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        fake.release.set()
        await server.close()


def closed_port_url() -> str:
    """A loopback base URL nobody listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
    return f"http://{LOOPBACK}:{port}/v1"


@pytest.fixture(scope="module")
def safety_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier trained from the shipped data, after checking it judges this file's prompts as assumed."""
    path = tmp_path_factory.mktemp("safety") / "model.bin"
    train_classifier(DEFAULT_DATA_PATH, out_path=path)
    safety = PromptSafetyFilter(classifier_path=path)
    for text in [UNSAFE_PROMPT, UNSAFE_PROMPT_2]:
        assert safety.classify(text).decision is SafetyDecision.BLOCK, text
    for text in [DEFAULT_PROMPT, *SAFE_PROMPTS, *(f"ENHANCED: {p}" for p in SAFE_PROMPTS)]:
        assert safety.classify(text).decision is SafetyDecision.ALLOW, text
    return path


# -- configs and sessions -------------------------------------------------


def prompt_config(
    providers: list[dict[str, Any]],
    *,
    timeout_ms: int = 3000,
    deadline_ms: int = 5000,
    safety_model: Path | None = None,
    server: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    **prompt: Any,
) -> ServiceConfig:
    streaming: dict[str, Any] = {
        "prompt": {"providers": providers, "timeout_ms": timeout_ms, "deadline_ms": deadline_ms, **prompt}
    }
    if safety_model is not None:
        streaming["safety"] = {"enabled": True, "classifier_path": str(safety_model)}
    sections = {name: value for name, value in (("server", server), ("limits", limits)) if value}
    return make_config(streaming=streaming, **sections)


def safety_config(safety_model: Path) -> ServiceConfig:
    return make_config(streaming={"safety": {"enabled": True, "classifier_path": str(safety_model)}})


class _Timed:
    """Keeps the arrival time of every control event next to the event."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[float, dict[str, Any]]] = []

    def record_event(self, event: dict[str, Any]) -> None:
        self.arrivals.append((time.monotonic(), event))
        super().record_event(event)  # type: ignore[misc]


class TimedWebRTCClient(_Timed, WebRTCClient):
    pass


class TimedWebSocketClient(_Timed, WebSocketClient):
    pass


Client = TimedWebRTCClient | TimedWebSocketClient
Opener = Callable[[RunningServer, str, dict[str, Any]], Awaitable[Client]]


@pytest.fixture
async def open_session() -> AsyncIterator[Opener]:
    """Open a session over the named transport with the init fields given; closes them afterwards."""
    clients: list[Client] = []

    async def open_(server: RunningServer, transport: str, init: dict[str, Any]) -> Client:
        message = {"type": "session_init_v2", **init}
        if transport == "webrtc":
            rtc = TimedWebRTCClient(server.url, session_init=message)
            clients.append(rtc)
            await rtc.connect()
            await rtc.wait_channel_open()
            return rtc
        ws = TimedWebSocketClient(server.url, session_init=message)
        clients.append(ws)
        await ws.connect()
        return ws

    yield open_
    for client in reversed(clients):
        await client.close()


def segment_prompts(client: Client) -> dict[int, str]:
    """The prompt of each segment started so far, by segment index."""
    return {e["segment_idx"]: e["prompt"] for e in client.events_of("ltx2_segment_start")}


async def wait_segment_complete(client: Client, idx: int, timeout: float = 10.0) -> dict[str, Any]:
    return await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] >= idx, timeout)


async def user_prompt(client: Client, text: str) -> float:
    """Send ``text`` as a user prompt; returns when it was sent (monotonic s)."""
    sent_at = time.monotonic()
    await client.send({"type": "segment_prompt_source", "prompt": text, "source": "user"})
    return sent_at


def arrival_of(client: Client, event: dict[str, Any]) -> float:
    return next(t for t, e in client.arrivals if e is event)


def max_completion_gap(client: Client) -> float:
    times = [t for t, e in client.arrivals if e.get("type") == "ltx2_segment_complete"]
    assert len(times) >= 2, "fewer than two segments completed"
    return max(b - a for a, b in itertools.pairwise(times))


# -- 1. enhancement -------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_enhanced_user_prompt_is_acknowledged_and_drives_the_next_segment(
    transport: str, llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    server = await start_server(prompt_config([llm.provider("main")]))
    client = await open_session(server, transport, {"enhancement_enabled": True})
    await wait_segment_complete(client, 0)
    assert segment_prompts(client)[0] == f"ENHANCED: {DEFAULT_PROMPT}"  # the default prompt is enhanced too

    await user_prompt(client, "a lighthouse in a storm")
    ack = await client.wait_for_event("prompt_received")
    assert ack["prompt"] == "a lighthouse in a storm"
    assert ack["prompt_used"] == "ENHANCED: a lighthouse in a storm"
    assert ack["enhanced"] is True and ack["source"] == "user"
    start = await client.wait_for_event("ltx2_segment_start", lambda e: e["prompt"] == ack["prompt_used"])
    assert start["segment_idx"] == ack["segment_idx"]
    assert "a lighthouse in a storm" not in segment_prompts(client).values()  # the raw text is never drawn

    [call] = [c for c in llm.calls_of("enhance") if c.user == "a lighthouse in a storm"]
    assert (call.route, call.model, call.system) == ("main", MODEL, DEFAULT_SYSTEM_PROMPTS["enhance"])


async def test_enhanced_default_prompt_stays_enhanced_while_it_repeats(
    llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    server = await start_server(prompt_config([llm.provider("main")]))
    client = await open_session(server, "websocket", {"enhancement_enabled": True})
    await client.wait_for_event("ltx2_segment_start", lambda e: e["segment_idx"] == 2)
    prompts = segment_prompts(client)
    assert [prompts[i] for i in range(3)] == [f"ENHANCED: {DEFAULT_PROMPT}"] * 3
    assert [c.user for c in llm.calls_of("enhance")] == [DEFAULT_PROMPT]


async def test_without_enhancement_the_raw_prompt_is_used_and_the_llm_is_not_called(
    llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    server = await start_server(prompt_config([llm.provider("main")]))
    client = await open_session(server, "websocket", {"enhancement_enabled": False})
    await wait_segment_complete(client, 0)
    await user_prompt(client, "a lighthouse in a storm")
    ack = await client.wait_for_event("prompt_received")
    assert (ack["prompt"], ack["prompt_used"], ack["enhanced"]) == (
        "a lighthouse in a storm",
        "a lighthouse in a storm",
        False,
    )
    await client.wait_for_event("ltx2_segment_start", lambda e: e["prompt"] == "a lighthouse in a storm")
    assert segment_prompts(client)[0] == DEFAULT_PROMPT
    assert llm.calls == []

    # Switching enhancement on mid-session applies to the next prompt.
    await client.send({"type": "enhancement_updated", "enabled": True})
    await user_prompt(client, "a harbour at night")
    ack = await client.wait_for_event("prompt_received", lambda e: e["prompt"] == "a harbour at night")
    assert (ack["prompt_used"], ack["enhanced"]) == ("ENHANCED: a harbour at night", True)
    await client.wait_for_event("ltx2_segment_start", lambda e: e["prompt"] == "ENHANCED: a harbour at night")


# -- 2. auto-extension ----------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_auto_extension_takes_each_next_prompt_from_the_llm_given_the_recent_prompts(
    transport: str, llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    server = await start_server(prompt_config([llm.provider("main")], history=2))
    client = await open_session(
        server, transport, {"auto_extension_enabled": True, "loop_generation_enabled": False}
    )
    await client.wait_for_event("ltx2_segment_start", lambda e: e["segment_idx"] == 3, timeout=15)
    prompts = segment_prompts(client)
    assert [prompts[i] for i in range(4)] == [DEFAULT_PROMPT, "NEXT: scene 1", "NEXT: scene 2", "NEXT: scene 3"]

    calls = llm.calls_of("auto_extend")
    assert [c.system for c in calls[:3]] == [DEFAULT_SYSTEM_PROMPTS["auto_extend"]] * 3
    # Each request lists the prompts generated so far, oldest first, at most `history` of them.
    assert prior_prompts_of(calls[0]) == [DEFAULT_PROMPT]
    assert prior_prompts_of(calls[1]) == [DEFAULT_PROMPT, "NEXT: scene 1"]
    assert prior_prompts_of(calls[2]) == ["NEXT: scene 1", "NEXT: scene 2"]
    assert llm.calls_of("enhance") == []  # auto-extension alone does not enhance


# -- 3. rewrite -----------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_rewrite_answers_with_the_alternatives_as_a_clean_list(
    transport: str, llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    server = await start_server(prompt_config([llm.provider("main")]))
    client = await open_session(server, transport, {})
    await client.send({"type": "rewrite_seed_prompts", "seed_prompt": "a fox in the snow", "count": 3})
    done = await client.wait_for_event("rewrite_seed_prompts_complete")
    started = client.events_of("rewrite_seed_prompts_started")
    assert started == [{"type": "rewrite_seed_prompts_started", "seed_prompt": "a fox in the snow"}]
    assert client.events.index(started[0]) < client.events.index(done)
    assert done["seed_prompt"] == "a fox in the snow"
    assert done["alternatives"] == [f"a fox in the snow, variation {i}" for i in (1, 2, 3)]
    assert (done["provider"], done["model"], done["fallback_used"]) == ("main", MODEL, False)
    assert isinstance(done["latency_ms"], int | float) and done["latency_ms"] >= 0

    [call] = llm.calls_of("rewrite")
    assert call.system == DEFAULT_SYSTEM_PROMPTS["rewrite"]
    assert "Write 3 alternative prompts" in call.user


async def test_rewrite_without_providers_is_refused_as_not_enabled(
    start_server: Callable[..., Any], open_session: Opener
) -> None:
    server = await start_server(make_config())
    client = await open_session(server, "websocket", {})
    await client.send({"type": "rewrite_seed_prompts", "seed_prompt": "a fox in the snow", "count": 3})
    error = await client.wait_for_event("error")
    assert error["code"] == "invalid_message" and error["retryable"] is False
    assert "rewriting is not enabled" in error["message"]
    assert client.events_of("rewrite_seed_prompts_started") == []
    await wait_segment_complete(client, 0)  # the session goes on


# -- 4. provider outage and fallback ----------------------------------------


OUTAGE_TIMEOUT_MS = 400
OUTAGE_DEADLINE_MS = 600


def outage_providers(llm: FakeLLM, fault: str) -> list[dict[str, Any]]:
    if fault == "http_500":
        llm.fail_with("main", 500)
        return [llm.provider("main")]
    if fault == "hang":
        # Two hanging providers: the first runs out its per-call timeout (400 ms), the second
        # is cut off by the chain's deadline (600 ms) long before its own timeout.
        llm.hang("main")
        llm.hang("backup")
        return [llm.provider("main"), llm.provider("backup")]
    assert fault == "refused"
    return [{"kind": "openai_compatible", "name": "main", "base_url": closed_port_url(), "model": MODEL}]


@pytest.mark.parametrize(
    ("transport", "fault"),
    [
        ("webrtc", "http_500"),
        ("websocket", "http_500"),
        ("webrtc", "hang"),
        ("websocket", "hang"),
        ("websocket", "refused"),
    ],
)
async def test_provider_outage_degrades_to_the_raw_prompt_without_stalling_the_stream(
    transport: str, fault: str, llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    config = prompt_config(
        outage_providers(llm, fault), timeout_ms=OUTAGE_TIMEOUT_MS, deadline_ms=OUTAGE_DEADLINE_MS
    )
    server = await start_server(config)
    # Loop over curated prompts too, so every segment's prompt goes through the failing enhancer.
    curated = SAFE_PROMPTS[:2]
    client = await open_session(
        server, transport, {"enhancement_enabled": True, "loop_generation_enabled": True, "curated_prompts": curated}
    )
    await wait_segment_complete(client, 0)
    assert segment_prompts(client)[0] == curated[0]  # un-enhanced

    sent_at = await user_prompt(client, "a lighthouse in a storm")
    ack = await client.wait_for_event("prompt_received", timeout=5)
    assert arrival_of(client, ack) - sent_at < OUTAGE_DEADLINE_MS / 1000.0 + 0.6
    assert (ack["prompt"], ack["prompt_used"], ack["enhanced"]) == (
        "a lighthouse in a storm",
        "a lighthouse in a storm",
        False,
    )
    await client.wait_for_event("ltx2_segment_start", lambda e: e["prompt"] == "a lighthouse in a storm")

    await client.send({"type": "rewrite_seed_prompts", "seed_prompt": "a fox in the snow", "count": 3})
    error = await client.wait_for_event("error", timeout=5)
    assert error["code"] == "upstream_timeout" and error["retryable"] is True
    # The providers' own words (error bodies, addresses) are not passed on to the client.
    assert not any(word in error["message"] for word in ("simulated", LOOPBACK, "main:", "transport error"))
    assert client.events_of("rewrite_seed_prompts_started") == [
        {"type": "rewrite_seed_prompts_started", "seed_prompt": "a fox in the snow"}
    ]
    assert client.events_of("rewrite_seed_prompts_complete") == []

    last = await wait_segment_complete(client, 4, timeout=10)
    assert max_completion_gap(client) < SEGMENT_GAP_MAX_S
    # Every index completes in order; the one the user prompt replaced (made again with it) twice.
    completed = [e["segment_idx"] for e in client.events_of("ltx2_segment_complete")]
    assert completed == sorted(completed) and set(completed) == set(range(last["segment_idx"] + 1))
    assert set(segment_prompts(client).values()) <= {*curated, "a lighthouse in a storm"}
    assert not any(e["type"] == "ltx2_stream_complete" for e in client.events)
    if fault != "refused":
        assert llm.calls_of("enhance") and llm.calls_of("rewrite")  # the fault was met, not bypassed


async def test_second_provider_answers_when_the_first_returns_503(
    llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    llm.fail_with("primary", 503)
    server = await start_server(prompt_config([llm.provider("primary"), llm.provider("backup")]))
    client = await open_session(server, "websocket", {"enhancement_enabled": True})
    await wait_segment_complete(client, 0)
    await user_prompt(client, "a lighthouse in a storm")
    ack = await client.wait_for_event("prompt_received")
    assert (ack["prompt_used"], ack["enhanced"]) == ("ENHANCED: a lighthouse in a storm", True)
    await client.wait_for_event("ltx2_segment_start", lambda e: e["prompt"] == ack["prompt_used"])

    await client.send({"type": "rewrite_seed_prompts", "seed_prompt": "a fox in the snow", "count": 3})
    done = await client.wait_for_event("rewrite_seed_prompts_complete")
    assert (done["provider"], done["fallback_used"]) == ("backup", True)
    assert len(done["alternatives"]) == 3
    assert [c.route for c in llm.calls_of("rewrite")] == ["primary", "backup"]
    assert [c.route for c in llm.calls_of("enhance") if c.user == "a lighthouse in a storm"] == ["primary", "backup"]


# -- 5. safety ------------------------------------------------------------


async def test_unsafe_user_prompt_is_rejected_and_never_generated_while_a_safe_one_is_used(
    safety_model: Path, start_server: Callable[..., Any], open_session: Opener
) -> None:
    server = await start_server(safety_config(safety_model))
    client = await open_session(server, "webrtc", {})
    await wait_segment_complete(client, 0)
    await user_prompt(client, UNSAFE_PROMPT)
    await user_prompt(client, SAFE_PROMPTS[0])

    rejected = await client.wait_for_event("prompt_rejected")
    assert rejected["prompt"] == UNSAFE_PROMPT and rejected["label"] == "unsafe"
    assert rejected["reason"] and rejected["score"] >= 0.5
    ack = await client.wait_for_event("prompt_received")
    assert ack["prompt"] == ack["prompt_used"] == SAFE_PROMPTS[0]
    start = await client.wait_for_event("ltx2_segment_start", lambda e: e["prompt"] == SAFE_PROMPTS[0])
    await wait_segment_complete(client, start["segment_idx"] + 2)
    assert UNSAFE_PROMPT not in segment_prompts(client).values()
    assert [e["prompt"] for e in client.events_of("prompt_received")] == [SAFE_PROMPTS[0]]


async def test_a_safety_filter_that_stops_working_refuses_prompts_instead_of_passing_them(
    safety_model: Path, start_server: Callable[..., Any], open_session: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model was checked at start; a fault later (a prediction failing) must not let prompts through.
    server = await start_server(safety_config(safety_model))
    client = await open_session(server, "websocket", {})
    await wait_segment_complete(client, 0)

    def broken(_: PromptSafetyFilter, text: str) -> SafetyResult:
        return SafetyResult(
            prompt=text, decision=SafetyDecision.UNAVAILABLE, unsafe_score=None, reason="prediction failed: out of memory"
        )

    monkeypatch.setattr(PromptSafetyFilter, "classify", broken)
    await user_prompt(client, SAFE_PROMPTS[1])
    rejected = await client.wait_for_event("prompt_rejected")
    assert (rejected["prompt"], rejected["label"]) == (SAFE_PROMPTS[1], "unchecked")
    assert "could not check" in rejected["reason"]
    await wait_segment_complete(client, max(segment_prompts(client)) + 1)
    assert SAFE_PROMPTS[1] not in segment_prompts(client).values()
    assert not client.events_of("prompt_received")


async def test_unsafe_curated_prompt_in_a_loop_is_rejected_and_skipped(
    safety_model: Path, start_server: Callable[..., Any], open_session: Opener
) -> None:
    server = await start_server(safety_config(safety_model))
    curated = [SAFE_PROMPTS[0], UNSAFE_PROMPT, SAFE_PROMPTS[1]]
    client = await open_session(server, "webrtc", {"curated_prompts": curated, "loop_generation_enabled": True})
    rejected = await client.wait_for_event("prompt_rejected", timeout=10)
    assert (rejected["prompt"], rejected["label"]) == (UNSAFE_PROMPT, "unsafe")
    await client.wait_for_event("ltx2_segment_start", lambda e: e["segment_idx"] == 3, timeout=10)
    prompts = segment_prompts(client)
    # The rejected turn repeats the previous prompt, then the loop goes on.
    assert [prompts[i] for i in range(4)] == [SAFE_PROMPTS[0], SAFE_PROMPTS[0], SAFE_PROMPTS[1], SAFE_PROMPTS[0]]
    assert UNSAFE_PROMPT not in prompts.values()


async def test_enhancement_that_turns_a_safe_prompt_unsafe_is_rejected_and_not_generated(
    llm: FakeLLM, safety_model: Path, start_server: Callable[..., Any], open_session: Opener
) -> None:
    llm.enhance_map[SAFE_PROMPTS[3]] = UNSAFE_PROMPT_2
    server = await start_server(prompt_config([llm.provider("main")], safety_model=safety_model))
    client = await open_session(server, "webrtc", {"enhancement_enabled": True})
    await wait_segment_complete(client, 0)
    await user_prompt(client, SAFE_PROMPTS[3])
    rejected = await client.wait_for_event("prompt_rejected")
    # The rejection names what the client sent; the LLM's unsafe text is not echoed back.
    assert (rejected["prompt"], rejected["label"]) == (SAFE_PROMPTS[3], "unsafe")
    assert "enhanced" in rejected["reason"]
    assert [c.user for c in llm.calls_of("enhance")][-1] == SAFE_PROMPTS[3]

    await user_prompt(client, SAFE_PROMPTS[2])
    ack = await client.wait_for_event("prompt_received")
    assert (ack["prompt"], ack["prompt_used"]) == (SAFE_PROMPTS[2], f"ENHANCED: {SAFE_PROMPTS[2]}")
    start = await client.wait_for_event("ltx2_segment_start", lambda e: e["prompt"] == ack["prompt_used"])
    await wait_segment_complete(client, start["segment_idx"] + 1)
    prompts = set(segment_prompts(client).values())
    assert UNSAFE_PROMPT_2 not in prompts and SAFE_PROMPTS[3] not in prompts
    assert [e["prompt"] for e in client.events_of("prompt_received")] == [SAFE_PROMPTS[2]]


async def test_rejected_curated_prompt_is_not_generated_after_the_loop_is_switched_off(
    safety_model: Path, start_server: Callable[..., Any], open_session: Opener
) -> None:
    server = await start_server(safety_config(safety_model))
    curated = [SAFE_PROMPTS[0], UNSAFE_PROMPT]
    client = await open_session(server, "websocket", {"curated_prompts": curated, "loop_generation_enabled": True})
    await client.wait_for_event("prompt_rejected", timeout=10)
    await client.send({"type": "loop_generation_updated", "enabled": False})
    last = await wait_segment_complete(client, 1)
    await wait_segment_complete(client, last["segment_idx"] + 2)
    assert UNSAFE_PROMPT not in segment_prompts(client).values()


async def test_unsafe_auto_extension_is_not_generated_even_when_the_next_extension_fails(
    llm: FakeLLM, safety_model: Path, start_server: Callable[..., Any], open_session: Opener
) -> None:
    replies: list[Reply] = [UNSAFE_PROMPT]

    def once_unsafe_then_down(call: LLMCall) -> Reply:
        return replies.pop(0) if replies else 500

    llm.responders["main"] = once_unsafe_then_down
    server = await start_server(prompt_config([llm.provider("main")], safety_model=safety_model))
    client = await open_session(server, "websocket", {"auto_extension_enabled": True})
    rejected = await client.wait_for_event("prompt_rejected", timeout=10)
    assert rejected["prompt"] == UNSAFE_PROMPT
    last = await wait_segment_complete(client, 1)
    await wait_segment_complete(client, last["segment_idx"] + 2)
    assert len(llm.calls_of("auto_extend")) >= 2
    assert UNSAFE_PROMPT not in segment_prompts(client).values()


# -- 6. system prompt reload ----------------------------------------------


async def reload_prompts(server: RunningServer, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(
        f"{server.url}/v1/admin/prompts/reload", headers=headers or {}
    ) as response:
        assert response.content_type == "application/json"
        return response.status, json.loads(await response.text())


async def test_reload_makes_the_next_enhancement_use_the_edited_system_prompt(
    tmp_path: Path, llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    (tmp_path / "enhance.txt").write_text("You are prompt editor number one.\n", encoding="utf-8")
    server = await start_server(
        prompt_config(
            [llm.provider("main")], system_prompt_dir=str(tmp_path), server={"admin_token": "s3cret"}
        )
    )
    client = await open_session(server, "websocket", {"enhancement_enabled": True})
    await wait_segment_complete(client, 0)
    await user_prompt(client, "a lighthouse in a storm")
    await client.wait_for_event("prompt_received", lambda e: e["prompt"] == "a lighthouse in a storm")
    [first] = [c for c in llm.calls_of("enhance") if c.user == "a lighthouse in a storm"]
    assert first.system == "You are prompt editor number one."

    (tmp_path / "enhance.txt").write_text("You are prompt editor number two.\n", encoding="utf-8")
    assert await reload_prompts(server, {"Authorization": "Bearer s3cret"}) == (200, {"reloaded": True})
    await user_prompt(client, "a harbour at night")
    ack = await client.wait_for_event("prompt_received", lambda e: e["prompt"] == "a harbour at night")
    assert ack["enhanced"] is True
    [second] = [c for c in llm.calls_of("enhance") if c.user == "a harbour at night"]
    assert second.system == "You are prompt editor number two."
    assert all(c.system == DEFAULT_SYSTEM_PROMPTS["rewrite"] for c in llm.calls_of("rewrite"))


async def test_reload_needs_the_admin_bearer_token(llm: FakeLLM, start_server: Callable[..., Any]) -> None:
    server = await start_server(prompt_config([llm.provider("main")], server={"admin_token": "s3cret"}))
    for headers in [None, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}]:
        status, body = await reload_prompts(server, headers)
        assert status == 401, headers
        assert body["error"]["code"] == "unauthorized" and "token" in body["error"]["message"]
    assert await reload_prompts(server, {"Authorization": "Bearer s3cret"}) == (200, {"reloaded": True})


async def test_reload_without_providers_is_a_conflict(start_server: Callable[..., Any]) -> None:
    server = await start_server(make_config(server={"admin_token": "s3cret"}))
    status, body = await reload_prompts(server, {"Authorization": "Bearer s3cret"})
    assert status == 409
    assert body["error"]["code"] == "invalid_message" and "providers" in body["error"]["message"]


# -- 7. LLM work bounded per session -------------------------------------------


SLOW_REPLY_S = 1.5  # an LLM reply slow enough for a burst of requests to arrive while it is awaited
HANG_S = 60.0  # an LLM reply that comes only after the test: the call ends when its client gives up
BURST = 50
# The connection's own message throttle is not under test here: let the bursts through.
NO_MESSAGE_THROTTLE = {"message_burst": 4 * BURST}


def rewrite(seed_prompt: str, count: int = 2) -> dict[str, Any]:
    return {"type": "rewrite_seed_prompts", "seed_prompt": seed_prompt, "count": count}


async def wait_for_count(client: Client, kind: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The first ``count`` events of ``kind``, once that many have arrived."""
    await client.wait_for_event(kind, lambda e: len(client.events_of(kind)) >= count, timeout)
    return client.events_of(kind)[:count]


def field_is(name: str, value: object) -> Callable[[dict[str, Any]], bool]:
    """A wait_for_event predicate: the event's ``name`` is ``value``."""
    return lambda event: event.get(name) == value


def retry_after_in(message: str) -> float:
    found = re.search(r"retry in (\d+(?:\.\d+)?) s", message)
    assert found is not None, message
    return float(found.group(1))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_burst_of_rewrites_makes_one_llm_call_at_a_time_and_the_rest_are_rate_limited(
    transport: str, llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    llm.delay = lambda call: SLOW_REPLY_S if call.operation == "rewrite" else 0.0
    limits = {**NO_MESSAGE_THROTTLE, "llm_calls_per_minute": 4 * BURST}
    server = await start_server(prompt_config([llm.provider("main")], limits=limits))
    client = await open_session(server, transport, {})
    for index in range(BURST):
        await client.send(rewrite(f"a fox in the snow, take {index}"))

    refused = await wait_for_count(client, "error", BURST - 1, timeout=SLOW_REPLY_S + 5)
    assert client.events_of("rewrite_seed_prompts_complete") == []  # all refused while the first was running
    assert all(e["code"] == "rate_limited" and e["retryable"] is True for e in refused)
    assert all("'a fox in the snow, take 0' is still in progress" in e["message"] for e in refused)
    done = await client.wait_for_event("rewrite_seed_prompts_complete", timeout=SLOW_REPLY_S + 5)
    assert done["seed_prompt"] == "a fox in the snow, take 0" and len(done["alternatives"]) == 2
    assert [e["seed_prompt"] for e in client.events_of("rewrite_seed_prompts_started")] == [done["seed_prompt"]]
    assert [c.user.splitlines()[0] for c in llm.calls_of("rewrite")] == ["Seed prompt: a fox in the snow, take 0"]

    # Once it is answered the next one runs.
    await client.send(rewrite("a heron at dawn"))
    again = await client.wait_for_event(
        "rewrite_seed_prompts_complete", lambda e: e["seed_prompt"] == "a heron at dawn", timeout=SLOW_REPLY_S + 5
    )
    assert len(again["alternatives"]) == 2
    assert len(llm.calls_of("rewrite")) == 2 and llm.peak_in_flight["rewrite"] == 1
    assert len(client.events_of("error")) == BURST - 1
    await wait_segment_complete(client, 1)  # the session went on throughout


async def test_rewrites_beyond_the_llm_budget_are_refused_with_a_retry_after(
    llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    budget = 3
    server = await start_server(prompt_config([llm.provider("main")], limits={"llm_calls_per_minute": budget}))
    client = await open_session(server, "websocket", {})
    for index in range(budget):
        await client.send(rewrite(f"scene {index}"))
        await client.wait_for_event("rewrite_seed_prompts_complete", field_is("seed_prompt", f"scene {index}"))

    await client.send(rewrite(f"scene {budget}"))
    error = await client.wait_for_event("error")
    assert (error["code"], error["retryable"]) == ("rate_limited", True)
    assert f"LLM budget of {budget} calls per minute is used up" in error["message"]
    assert 0 < retry_after_in(error["message"]) <= 60 / budget
    assert [e["seed_prompt"] for e in client.events_of("rewrite_seed_prompts_started")] == [
        f"scene {i}" for i in range(budget)
    ]
    assert len(llm.calls) == budget  # the provider never saw the refused one
    await wait_segment_complete(client, 1)  # the session goes on
    assert len(llm.calls) == budget


async def test_user_prompts_beyond_the_llm_budget_are_acknowledged_and_streamed_unenhanced(
    llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    budget = 2  # the default prompt's enhancement and one user prompt's
    server = await start_server(prompt_config([llm.provider("main")], limits={"llm_calls_per_minute": budget}))
    client = await open_session(server, "webrtc", {"enhancement_enabled": True})
    await wait_segment_complete(client, 0)
    prompts = SAFE_PROMPTS[:3]

    await user_prompt(client, prompts[0])
    ack = await client.wait_for_event("prompt_received", lambda e: e["prompt"] == prompts[0])
    assert (ack["prompt_used"], ack["enhanced"]) == (f"ENHANCED: {prompts[0]}", True)
    assert client.events_of("error") == []

    for text in prompts[1:]:
        await user_prompt(client, text)
        ack = await client.wait_for_event("prompt_received", field_is("prompt", text))
        assert (ack["prompt_used"], ack["enhanced"]) == (text, False)
        await client.wait_for_event("ltx2_segment_start", field_is("prompt", text))

    [told] = client.events_of("error")  # once, however many prompts go un-enhanced
    assert (told["code"], told["retryable"]) == ("rate_limited", True)
    assert "used without enhancement" in told["message"]
    assert client.events.index(told) < client.events.index(client.events_of("prompt_received")[1])
    assert [c.user for c in llm.calls_of("enhance")] == [DEFAULT_PROMPT, prompts[0]]
    assert len(llm.calls) <= budget


async def test_server_llm_work_beyond_the_budget_is_skipped_quietly_and_leaves_the_client_a_call(
    llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    budget = 3
    server = await start_server(prompt_config([llm.provider("main")], limits={"llm_calls_per_minute": budget}))
    client = await open_session(server, "websocket", {"auto_extension_enabled": True})
    last = await wait_segment_complete(client, 5, timeout=15)

    # Auto-extension spent all but the client's reserve; the stream repeats its last prompt, no error.
    extensions = llm.calls_of("auto_extend")
    assert len(extensions) == budget - 1
    prompts = segment_prompts(client)
    assert prompts[0] == DEFAULT_PROMPT
    assert [prompts[i] for i in range(3, last["segment_idx"] + 1)] == ["NEXT: scene 2"] * (last["segment_idx"] - 2)
    assert client.events_of("error") == []
    assert max_completion_gap(client) < SEGMENT_GAP_MAX_S

    # The reserve: the client's own request still gets its call, and then the budget is spent.
    await client.send(rewrite("a fox in the snow"))
    await client.wait_for_event("rewrite_seed_prompts_complete")
    await client.send(rewrite("a heron at dawn"))
    error = await client.wait_for_event("error")
    assert error["code"] == "rate_limited" and "retry in" in error["message"]
    assert len(llm.calls) == budget


async def test_user_prompts_queued_behind_an_enhancement_wait_their_turn_and_the_newest_wins(
    llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    server = await start_server(prompt_config([llm.provider("main")], limits=NO_MESSAGE_THROTTLE))
    client = await open_session(server, "websocket", {"enhancement_enabled": True})
    await wait_segment_complete(client, 0)
    llm.delay = lambda call: SLOW_REPLY_S if call.operation == "enhance" else 0.0
    prompts = [f"a quiet garden at dusk, take {i}" for i in range(5)]
    for text in prompts:
        await user_prompt(client, text)

    # Every prompt is answered: the first (already being enhanced) and the newest are used; the ones
    # that waited behind the first were replaced by the newest before their turn.
    acks = await wait_for_count(client, "prompt_received", 2, timeout=2 * SLOW_REPLY_S + 5)
    assert [(a["prompt"], a["prompt_used"], a["enhanced"]) for a in acks] == [
        (prompts[0], f"ENHANCED: {prompts[0]}", True),
        (prompts[-1], f"ENHANCED: {prompts[-1]}", True),
    ]
    replaced = client.events_of("error")
    assert [e["code"] for e in replaced] == ["rate_limited"] * 3
    assert all(f"'{text}' was replaced by a newer one" in e["message"] for e, text in zip(replaced, prompts[1:4]))
    await client.wait_for_event("ltx2_segment_start", lambda e: e["prompt"] == f"ENHANCED: {prompts[-1]}")
    assert [c.user for c in llm.calls_of("enhance")] == [DEFAULT_PROMPT, prompts[0], prompts[-1]]
    assert llm.peak_in_flight["enhance"] == 1


async def test_a_user_prompt_preempts_the_servers_own_enhancement_in_flight(
    llm: FakeLLM, start_server: Callable[..., Any], open_session: Opener
) -> None:
    curated = SAFE_PROMPTS[0]
    llm.delay = lambda call: HANG_S if call.user == curated else 0.0
    # Provider limits far beyond the test: only the user's prompt can end the curated prompt's call.
    server = await start_server(prompt_config([llm.provider("main")], timeout_ms=30_000, deadline_ms=40_000))
    client = await open_session(
        server, "webrtc", {"enhancement_enabled": True, "loop_generation_enabled": True, "curated_prompts": [curated]}
    )
    await wait_segment_complete(client, 1)
    # The curated prompt's enhancement hangs; it is asked once, and used un-enhanced meanwhile.
    assert [c.user for c in llm.calls_of("enhance")] == [curated]
    assert set(segment_prompts(client).values()) == {curated}

    sent_at = await user_prompt(client, "a lighthouse in a storm")
    ack = await client.wait_for_event("prompt_received", timeout=5)
    assert (ack["prompt_used"], ack["enhanced"]) == ("ENHANCED: a lighthouse in a storm", True)
    assert arrival_of(client, ack) - sent_at < 2.0  # not held behind the hanging call
    await client.wait_for_event("ltx2_segment_start", lambda e: e["prompt"] == ack["prompt_used"])
    # The server's own call gave way: once the loop comes back to the curated prompt it is asked
    # again (a call still open would have kept it from being asked twice).
    await client.wait_for_event("ltx2_segment_start", lambda e: e["segment_idx"] > ack["segment_idx"])
    await wait_segment_complete(client, ack["segment_idx"] + 1)
    assert [c.user for c in llm.calls_of("enhance")] == [curated, "a lighthouse in a storm", curated]
    assert client.events_of("error") == []
