"""Resume tokens, the record's JSON, and the policy state a resumed stream restores. Plain code."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from rtc_server.generation_policy import GenerationPolicy, PolicySettings
from rtc_server.prompt_schedule import PromptChoice, PromptOrigin
from rtc_server.resume_record import (
    CorruptRecordError,
    ResumeRecord,
    hash_resume_token,
    new_resume_token,
    token_matches,
)


def policy(**settings: Any) -> GenerationPolicy:
    return GenerationPolicy(PolicySettings(default_prompt="default", **settings))


def made(p: GenerationPolicy) -> PromptChoice:
    """One segment made and its state stored: the controller takes a prompt, the runner marks the boundary."""
    choice = p.take()
    p.generated(choice)
    p.mark()
    return choice


def user(text: str) -> PromptChoice:
    return PromptChoice(text=text, origin=PromptOrigin.USER, seed=7, guidance_scale=2.5, checked=True)


def test_tokens_are_43_url_safe_characters_unique_and_kept_only_as_a_hash() -> None:
    tokens = {new_resume_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    digest = hash_resume_token(token)
    assert re.fullmatch(r"[0-9a-f]{64}", digest) and token not in digest
    assert token_matches(token, digest)
    assert not token_matches(token[:-1] + ("A" if token[-1] != "A" else "B"), digest)
    assert not token_matches(token, "not a hash at all, é")


def test_a_record_round_trips_through_json_without_its_token_hash() -> None:
    p = policy(curated=["a", "b", "c"], loop=True, enhancement=True)
    made(p)
    p.submit_user(user("a lighthouse"))
    p.paused = True
    record = ResumeRecord(
        session_id="s1", token_hash="h" * 64, next_segment_idx=4, policy=p.resume_state(), preset="fast", client_id="c"
    )
    data = record.to_json()
    assert b"h" * 64 not in data
    assert ResumeRecord.from_json(data, token_hash="h" * 64) == record


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", json.dumps({"v": 99}).encode(), json.dumps({"v": 1, "session_id": "s"}).encode()],
)
def test_an_unreadable_record_is_refused(data: bytes) -> None:
    with pytest.raises(CorruptRecordError):
        ResumeRecord.from_json(data, token_hash="h")


def test_a_restored_policy_continues_the_curated_loop_where_the_old_one_stood() -> None:
    old = policy(curated=["a", "b", "c"], loop=True)
    assert [made(old).text for _ in range(4)] == ["a", "b", "c", "a"]
    new = policy()
    new.restore(old.resume_state())
    assert [made(new).text for _ in range(3)] == ["b", "c", "a"]
    assert new.segments_done == 7 and new.loop


def test_the_resume_state_is_the_marked_boundary_not_the_segment_being_made() -> None:
    old = policy(curated=["a", "b", "c"], loop=True)
    made(old)
    old.take()  # "b" is chosen for the segment being made; it is not stored yet
    new = policy()
    new.restore(old.resume_state())
    assert made(new).text == "b"


def test_a_user_prompt_taken_for_a_segment_not_stored_yet_is_pending_again() -> None:
    old = policy(curated=["a"], loop=True)
    made(old)
    old.submit_user(user("a storm"))
    assert old.take().text == "a storm"
    state = old.resume_state()
    assert state.pending is not None and state.pending.text == "a storm" and state.pending.seed == 7
    new = policy()
    new.restore(state)
    assert (made(new).text, made(new).text) == ("a storm", "a")


def test_toggles_and_a_new_curated_list_sent_after_the_boundary_are_kept() -> None:
    old = policy(curated=["a", "b"], loop=True)
    made(old)
    made(old)
    old.set_curated(["x", "y"])
    old.take()  # "x" for the segment being made
    old.paused = True
    old.auto_extension = True
    state = old.resume_state()
    assert (state.curated, state.position.cursor, state.paused, state.auto_extension) == (("x", "y"), 0, True, True)


def test_rewinding_takes_back_the_segments_chosen_since_a_position() -> None:
    p = policy(curated=["a", "b", "c"], loop=True)
    made(p)
    before = p.marked
    made(p)  # "b": made but never shown
    p.submit_user(user("u"))
    taken = p.take()  # "u" for a segment being made
    p.rewind(before, [PromptChoice(text="b", origin=PromptOrigin.CURATED), taken])
    assert p.segments_done == 1 and p.last is not None and p.last.text == "a"
    assert [made(p).text for _ in range(3)] == ["u", "b", "c"]


def test_every_prompt_queued_in_per_prompt_mode_survives_the_record_in_order() -> None:
    old = policy(per_prompt=True)
    for text in ("one", "two", "three"):
        old.submit_user(user(text))
    made(old)  # "one" is shown and stored; "two" and "three" wait
    record = ResumeRecord(session_id="s1", token_hash="h" * 64, next_segment_idx=1, policy=old.resume_state())
    restored = ResumeRecord.from_json(record.to_json(), token_hash="h" * 64)
    assert [choice.text for choice in restored.policy.queued] == ["two", "three"]
    new = policy(per_prompt=True)
    new.restore(restored.policy)
    assert (made(new).text, made(new).text) == ("two", "three")
    assert new.hold() is not None  # nothing more to make without a prompt
