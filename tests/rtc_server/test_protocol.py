import json

import pytest

from rtc_server.protocol import (
    ErrorMessage,
    InvalidMessage,
    PromptReceived,
    SegmentPromptSource,
    SessionInitV2,
    StreamStart,
    parse_client_message,
    parse_client_text,
    serialize,
)


def test_session_init_defaults_and_extra_fields_are_kept() -> None:
    message = parse_client_message({"type": "session_init_v2", "custom": 1})
    assert isinstance(message, SessionInitV2)
    assert message.curated_prompts == []
    assert message.stream_mode == "av_fmp4"
    assert message.model_extra == {"custom": 1}


def test_segment_prompt_source_defaults_to_user() -> None:
    message = parse_client_text('{"type": "segment_prompt_source", "prompt": "a fox"}')
    assert isinstance(message, SegmentPromptSource)
    assert message.source == "user"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"prompt": "x"}', "'type'"),
        ('{"type": "dance"}', "unknown message type 'dance'"),
        ('{"type": "segment_prompt_source"}', "prompt"),
        ('{"type": "segment_prompt_source", "prompt": ""}', "prompt"),
        ('{"type": "generation_paused_updated", "paused": "yes"}', "paused"),
        ('{"type": "enhancement_updated"}', "enabled"),
        ('{"type": "session_init_v2", "stream_mode": "smoke"}', "stream_mode"),
        ('{"type": "session_init_v2", "continuation_state": {"kind": "x"}}', "payload"),
    ],
)
def test_bad_client_messages_raise_invalid_message_with_reason(text: str, fragment: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_client_text(text)
    assert fragment in str(info.value)


def test_server_messages_leave_out_nulls() -> None:
    text = serialize(StreamStart(width=512, height=512, fps=24, num_frames=24))
    assert json.loads(text) == {"type": "ltx2_stream_start", "width": 512, "height": 512, "fps": 24, "num_frames": 24}
    ack = json.loads(serialize(PromptReceived(prompt="a", prompt_used="a", source="user")))
    assert "segment_idx" not in ack


def test_error_message_shape() -> None:
    payload = json.loads(serialize(ErrorMessage(code="invalid_message", message="bad", retryable=False)))
    assert payload == {"type": "error", "code": "invalid_message", "message": "bad", "retryable": False}
