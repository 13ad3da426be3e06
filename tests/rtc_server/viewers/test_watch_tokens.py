"""Watch tokens and their config: pure checks."""

from __future__ import annotations

import json

from rtc_server.config import StreamingConfig
from rtc_server.protocol import SessionInfo, serialize
from rtc_server.viewers.watch_tokens import WatchToken, hash_watch_token, new_watch_token


def test_tokens_are_random_url_safe_and_long() -> None:
    tokens = {new_watch_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 43 and all(c.isalnum() or c in "-_" for c in t) for t in tokens)


def test_a_token_is_handed_out_once_and_then_only_its_hash_is_kept() -> None:
    token = WatchToken()
    plain = token.take()
    assert plain is not None and token.take() is None
    assert plain not in repr(vars(token))
    assert hash_watch_token(plain) in vars(token).values()
    assert token.matches(plain)


def test_a_wrong_or_missing_token_never_matches() -> None:
    token = WatchToken("secret-one")
    assert not token.matches("secret-two")
    assert not token.matches("")
    assert not token.matches(None)
    assert token.matches("secret-one")


def test_viewers_are_on_by_default_with_fifty_per_session() -> None:
    viewers = StreamingConfig().viewers
    assert viewers.enabled and viewers.max_per_session == 50
    assert StreamingConfig.model_validate({"viewers": {"enabled": False}}).viewers.enabled is False


def test_session_info_leaves_out_a_missing_watch_token() -> None:
    assert "watch_token" not in json.loads(serialize(SessionInfo(session_id="s", resume_token="r")))
    sent = json.loads(serialize(SessionInfo(session_id="s", resume_token="r", watch_token="w")))
    assert sent == {"type": "session_info", "session_id": "s", "resume_token": "r", "watch_token": "w"}
