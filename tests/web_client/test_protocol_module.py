"""web_client/protocol.js, the one protocol module both transports use, run in the browser.

The messages it builds are checked against the server's own parser (rtc_server.protocol), so a
renamed field on either side fails here; StreamModel is fed a normal session's messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from rtc_server.protocol import parse_client_message
from tests.conftest import RunningServer, make_config
from tests.web_client.pagekit import new_page

pytestmark = pytest.mark.slow

BUILD_MESSAGES_JS = """async () => {
    const p = await import("/client/protocol.js");
    const settings = {
        curatedPrompts: ["a", " ", "b"], enhancement: true, autoExtension: false, loop: true, singleClip: true,
        initialImage: {mime: "image/png", name: "x.png", data: "iVBORw0KGgo="},
        continuationState: {kind: "synthetic.v1", payload: {segment_idx: 3}}, continuationFallback: "fresh",
    };
    return {
        init: p.sessionInit(settings, "webrtc"),
        plainInit: p.sessionInit({curatedPrompts: []}, "av_fmp4"),
        prompt: p.promptMessage("a whale"),
        curated: p.promptMessage("a seed", "curated"),
        seeds: p.seedPromptsMessage(["one", "", "two"]),
        enhancement: p.toggleMessage("enhancement", true),
        autoExtension: p.toggleMessage("autoExtension", false),
        loop: p.toggleMessage("loop", true),
        paused: p.pausedMessage(true),
        snapshot: p.snapshotMessage(),
        rewrite: p.rewriteMessage("a seed", 3),
    };
}"""

MODEL_JS = """async () => {
    const p = await import("/client/protocol.js");
    const m = new p.StreamModel();
    const seen = [];
    const feed = (msg) => seen.push(m.apply(msg));
    feed({type: "queue_status", position: 2, queue_depth: 2});
    const queued = {position: m.queuePosition, depth: m.queueDepth};
    feed({type: "queue_status", position: 0, queue_depth: 1});
    feed({type: "gpu_assigned", gpu_id: 1, session_timeout: 300});
    feed({type: "ltx2_stream_start", width: 256, height: 256, fps: 24, num_frames: 24});
    feed({type: "ltx2_segment_start", segment_idx: 0, prompt: "fox", total_steps: 2});
    feed({type: "step_complete", segment_idx: 0, step: 1, total_steps: 2, stage: "denoise"});
    const step = m.step;
    feed({type: "prompt_received", prompt: "whale", prompt_used: "a whale, cinematic", source: "user", enhanced: true, segment_idx: 1});
    const next = m.nextPrompt;
    feed({type: "ltx2_segment_complete", segment_idx: 0, generation_time_ms: 12.5, e2e_latency_ms: 30});
    feed({type: "ltx2_segment_start", segment_idx: 1, prompt: "a whale, cinematic", total_steps: 2});
    const afterStart = {next: m.nextPrompt, enhanced: m.enhancedForCurrent(), started: m.segmentsStarted};
    feed({type: "ltx2_segment_complete", segment_idx: 1, generation_time_ms: 10, e2e_latency_ms: 20});
    feed({type: "ltx2_stream_complete", reason: "segment_cap"});
    return {
        queued, step, next, afterStart,
        admitted: seen[1].admitted, promptChanged: seen[8].promptChanged, ended: seen[seen.length - 1].ended,
        final: {gpu: m.gpuId, timeout: m.sessionTimeoutS, received: m.segmentsReceived, idx: m.segmentIdx,
                gen: m.generationMs, e2e: m.e2eMs, end: m.endReason, generating: m.generating},
        errors: [
            p.describeError({code: "session_rejected", message: "full", retryable: false}),
            p.describeError({code: "invalid_message", message: "prompt rewriting is not enabled on this server", retryable: false}),
            p.describeError({code: "unauthorized", message: "missing bearer token", retryable: true}),
            p.describeError({code: "rate_limited", message: "slow down", retryable: true}),
        ],
        closes: [p.describeClose(1013, ""), p.describeClose(1000, ""), p.describeClose(1003, "bad init"), p.describeClose(4401, ""),
                 p.describeClose(4429, "")],
        rejection: p.describeRejection({prompt: "x", reason: "unsafe", label: "violence", score: 0.93}),
        snapshots: [
            p.snapshotFromFile({format: "live-video-snapshot", state: {kind: "k", payload: {a: 1}}}),
            p.snapshotFromFile({kind: "k", payload: {a: 1}}),
            p.snapshotFromFile({type: "continuation_state_snapshot", state: {kind: "k", payload: {}}}),
            p.snapshotFromFile({kind: "k", payload: [1]}),
            p.snapshotFromFile("nonsense"),
        ],
        parsed: [p.parseMessage('{"type":"error","code":"x"}'), p.parseMessage("[1]"), p.parseMessage("{")],
    };
}"""


async def test_protocol_module_speaks_the_servers_protocol(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch()
    page, log = await new_page(browser)
    await page.goto(
        f"{server.url}/healthz"
    )  # any page of the origin; no session is opened

    messages = await page.evaluate(BUILD_MESSAGES_JS)
    for name, message in messages.items():
        parsed = parse_client_message(
            message
        )  # the server's parser: raises on any mismatch
        assert parsed.type == message["type"], name
    init = messages["init"]
    assert init == {
        "type": "session_init_v2",
        "stream_mode": "webrtc",
        "curated_prompts": ["a", "b"],
        "enhancement_enabled": True,
        "auto_extension_enabled": False,
        "loop_generation_enabled": True,
        "single_clip_mode": True,
        "initial_image": {"mime": "image/png", "name": "x.png", "data": "iVBORw0KGgo="},
        "continuation_state": {"kind": "synthetic.v1", "payload": {"segment_idx": 3}},
        "continuation_fallback": "fresh",
    }
    assert (
        "continuation_state" not in messages["plainInit"]
        and "initial_image" not in messages["plainInit"]
    )
    assert messages["prompt"] == {
        "type": "segment_prompt_source",
        "prompt": "a whale",
        "source": "user",
    }
    assert messages["seeds"] == {
        "type": "seed_prompts_updated",
        "seed_prompts": ["one", "two"],
    }
    assert messages["autoExtension"] == {
        "type": "auto_extension_updated",
        "enabled": False,
    }
    assert messages["paused"] == {"type": "generation_paused_updated", "paused": True}
    assert messages["rewrite"] == {
        "type": "rewrite_seed_prompts",
        "seed_prompt": "a seed",
        "count": 3,
    }

    result = await page.evaluate(MODEL_JS)
    assert result["queued"] == {"position": 2, "depth": 2}
    assert result["admitted"] is True and result["step"] == 1
    assert (
        result["next"]["segmentIdx"] == 1
        and result["next"]["promptUsed"] == "a whale, cinematic"
    )
    assert (
        result["afterStart"]["next"] is None
    )  # the queued prompt became the segment's prompt
    assert result["afterStart"]["enhanced"]["prompt"] == "whale"
    assert result["afterStart"]["started"] == 2 and result["promptChanged"] is True
    assert result["ended"] is True
    assert result["final"] == {
        "gpu": 1,
        "timeout": 300,
        "received": 2,
        "idx": 1,
        "gen": 10,
        "e2e": 20,
        "end": "segment_cap",
        "generating": False,
    }
    assert (
        result["errors"][0]["title"] == "The server is full"
        and result["errors"][0]["retryable"] is True
    )
    assert result["errors"][1]["title"] == "Prompt suggestions are unavailable"
    assert result["errors"][1]["retryable"] is False
    unauthorized, limited = result["errors"][2:]
    assert unauthorized["title"] == "Not authorized: this page needs a valid access token"
    assert unauthorized["retryable"] is False  # the same token is refused again, whatever the server says
    assert "#token=" in unauthorized["hint"] and unauthorized["detail"] == "missing bearer token"
    assert limited["title"] == "Too many requests" and limited["retryable"] is True
    assert result["errors"][0]["hint"] == ""
    assert (
        result["closes"][0]["retryable"] is True
        and "1013" in result["closes"][0]["text"]
    )
    assert result["closes"][1]["normal"] is True
    assert (
        result["closes"][2]["retryable"] is False
        and "bad init" in result["closes"][2]["text"]
    )
    assert result["closes"][0]["error"] is None
    assert result["closes"][3]["retryable"] is False
    assert result["closes"][3]["error"] == {
        "code": "unauthorized",
        "message": "not authorized (code 4401)",
        "retryable": False,
    }
    assert result["closes"][4]["retryable"] is True and result["closes"][4]["error"]["code"] == "rate_limited"
    assert result["rejection"]["detail"] == "“x”: unsafe (violence, score 0.93)"
    assert result["snapshots"][:3] == [
        {"kind": "k", "payload": {"a": 1}},
        {"kind": "k", "payload": {"a": 1}},
        {"kind": "k", "payload": {}},
    ]
    assert result["snapshots"][3:] == [None, None]
    assert result["parsed"] == [{"type": "error", "code": "x"}, None, None]
    assert log.page_errors == []
    await page.close()
