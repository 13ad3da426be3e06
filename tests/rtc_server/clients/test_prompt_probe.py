from gpu.frame_marker import FrameMarker, prompt_tag
from rtc_server.clients.prompt_probe import PromptProbe


def marker(prompt: str, frame: int = 0) -> FrameMarker:
    return FrameMarker(segment_idx=0, frame_number=frame, prompt_tag=prompt_tag(prompt))


def test_the_first_frame_of_a_prompt_completes_its_latency_and_later_ones_do_not() -> None:
    probe = PromptProbe()
    probe.sent("a fox", at=10.0)
    assert probe.frame(marker("the old scene"), at=10.2) is None
    assert probe.frame(None, at=10.3) is None  # unreadable marker
    assert probe.frame(marker("a fox"), at=10.5) == 0.5
    assert probe.frame(marker("a fox", 1), at=10.6) is None
    assert probe.latencies_s == [0.5] and probe.pending == 0


def test_an_enhanced_prompt_is_recognised_by_the_text_the_server_used() -> None:
    probe = PromptProbe()
    probe.sent("a fox", at=1.0)
    probe.acknowledged("a fox", "a red fox in deep snow, golden light")
    assert probe.frame(marker("a red fox in deep snow, golden light"), at=1.75) == 0.75


def test_a_prompt_overtaken_before_showing_counts_as_superseded() -> None:
    probe = PromptProbe()
    probe.sent("first", at=0.0)
    probe.sent("second", at=0.1)
    assert probe.frame(marker("second"), at=0.9) == 0.9 - 0.1
    assert probe.superseded == 1 and probe.pending == 0
