"""The generation policy: gates, prompt order, LLM answers, one owner of the last prompt. Plain code."""

from __future__ import annotations

from typing import Any

from rtc_server.generation_policy import GenerationPolicy, Hold, Lookup, LookupKind, PolicySettings
from rtc_server.prompt_schedule import PromptChoice, PromptOrigin


def policy(**settings: Any) -> GenerationPolicy:
    return GenerationPolicy(PolicySettings(default_prompt="default", **settings))


def user(text: str, **overrides: Any) -> PromptChoice:
    return PromptChoice(text=text, origin=PromptOrigin.USER, checked=True, **overrides)


def generate(p: GenerationPolicy) -> PromptChoice:
    """What the controller does for one segment, with no LLM answer and a passing safety check."""
    assert p.hold() is None
    choice = p.take()
    p.generated(choice)
    return choice


def test_a_fresh_policy_may_generate_the_default_prompt_then_repeats_it() -> None:
    p = policy()
    assert generate(p).text == "default"
    again = generate(p)
    assert (again.text, again.origin, again.checked) == ("default", PromptOrigin.REPEAT, True)
    assert p.segments_done == 2 and p.last is not None and p.last.text == "default"


def test_the_last_prompt_is_the_last_one_generated_with_its_overrides() -> None:
    p = policy(curated=["a"])
    generate(p)
    p.submit_user(user("u", seed=9))
    generate(p)
    assert p.last is not None and (p.last.text, p.last.seed) == ("u", 9)
    repeat = generate(p)
    assert (repeat.text, repeat.seed, repeat.origin) == ("u", 9, PromptOrigin.REPEAT)
    assert p.recent == ("a", "u", "u")


def test_segment_cap_holds_for_good() -> None:
    p = policy(segment_cap=2)
    generate(p)
    generate(p)
    assert p.hold() is Hold.SEGMENT_CAP
    p.submit_user(user("more"))
    assert p.hold() is Hold.SEGMENT_CAP


def test_pause_holds_and_resume_releases() -> None:
    p = policy()
    p.paused = True
    assert p.hold() is Hold.PAUSED
    p.paused = False
    assert p.hold() is None


def test_single_clip_generates_one_segment_per_user_prompt() -> None:
    p = policy(single_clip=True)
    generate(p)
    assert p.hold() is Hold.SINGLE_CLIP_DONE
    p.submit_user(user("next clip"))
    assert generate(p).text == "next clip"
    assert p.hold() is Hold.SINGLE_CLIP_DONE


def test_a_blocked_first_prompt_waits_for_the_user_and_a_later_one_repeats_the_last() -> None:
    p = policy(curated=["bad"])
    assert p.refused(p.take()) is None
    assert p.hold() is Hold.AWAITING_USER_PROMPT
    p.submit_user(user("fine"))
    assert generate(p).text == "fine"
    p.set_curated(["also bad"])
    p.loop = True
    fallback = p.refused(p.take())
    assert fallback is not None and (fallback.text, fallback.origin) == ("fine", PromptOrigin.REPEAT)


def test_auto_extension_is_asked_once_and_its_answer_used_once() -> None:
    p = policy(auto_extension=True, can_enhance=True)
    assert p.lookups() == []  # nothing generated yet: nothing to extend
    generate(p)
    wanted = p.lookups()
    assert wanted == [Lookup(LookupKind.AUTO_EXTENSION, history=("default",))]
    p.asked(wanted[0])
    assert p.lookups() == [] and p.awaiting_answers
    # No answer in time: the scene continues, the question stays open.
    assert generate(p).origin is PromptOrigin.REPEAT
    p.answered(wanted[0], "the camera rises above the clouds")
    assert not p.awaiting_answers
    extended = generate(p)
    assert (extended.text, extended.origin, extended.checked) == (
        "the camera rises above the clouds",
        PromptOrigin.AUTO_EXTENSION,
        False,
    )
    assert p.lookups() == [Lookup(LookupKind.AUTO_EXTENSION, history=("default", "default", extended.text))]


def test_a_failed_auto_extension_is_asked_again_for_the_next_segment() -> None:
    p = policy(auto_extension=True, can_enhance=True)
    generate(p)
    (lookup,) = p.lookups()
    p.asked(lookup)
    p.answered(lookup, None)
    assert generate(p).origin is PromptOrigin.REPEAT
    assert [x.kind for x in p.lookups()] == [LookupKind.AUTO_EXTENSION]


def test_auto_extension_yields_to_user_prompts_loops_and_missing_enhancers() -> None:
    p = policy(auto_extension=True, can_enhance=True, curated=["a", "b"])
    generate(p)
    p.submit_user(user("u"))
    assert p.lookups() == []
    generate(p)
    p.loop = True
    assert p.lookups() == []
    no_llm = policy(auto_extension=True, can_enhance=False)
    generate(no_llm)
    assert no_llm.lookups() == []


def test_curated_prompts_are_enhanced_when_the_answer_is_there() -> None:
    p = policy(curated=["a", "b"], loop=True, enhancement=True, can_enhance=True)
    (lookup,) = p.lookups()
    assert lookup == Lookup(LookupKind.ENHANCEMENT, text="a")
    p.asked(lookup)
    assert p.awaiting_answers and p.lookups() == []
    assert generate(p).text == "a"  # not answered in time: the raw prompt
    p.answered(lookup, "a, cinematic")
    (lookup_b,) = p.lookups()
    assert lookup_b.text == "b"
    p.asked(lookup_b)
    p.answered(lookup_b, "b, golden hour")
    assert generate(p).text == "b, golden hour"
    assert generate(p).text == "a, cinematic"


def test_user_prompts_and_repeats_are_never_enhanced_again() -> None:
    p = policy(enhancement=True, can_enhance=True)
    p.submit_user(user("u"))
    assert p.lookups() == []
    generate(p)
    assert p.lookups() == []  # the next prompt repeats "u"


def test_retracted_segments_are_not_counted_and_leave_the_history() -> None:
    p = policy(segment_cap=3)
    first = generate(p)
    second = generate(p)
    p.retracted([second])
    assert p.segments_done == 1 and p.recent == (first.text,)
    assert p.hold() is None


# -- generation_mode "per_prompt" ---------------------------------------------------------------


def test_per_prompt_makes_nothing_without_a_prompt_then_one_segment_per_prompt_in_order() -> None:
    p = policy(per_prompt=True, curated=["curated"], loop=True)
    assert p.hold() is Hold.AWAITING_PROMPT
    for text in ("a", "b", "c"):
        p.submit_user(user(text))
    assert p.queued_prompts == 3
    assert [generate(p).text for _ in range(3)] == ["a", "b", "c"]
    assert p.hold() is Hold.AWAITING_PROMPT and p.segments_done == 3


def test_per_prompt_take_without_a_prompt_is_a_bug() -> None:
    p = policy(per_prompt=True)
    try:
        p.take()
    except RuntimeError:
        return
    raise AssertionError("take() made a segment without a prompt")


def test_per_prompt_bounds_waiting_and_arriving_prompts() -> None:
    p = policy(per_prompt=True, max_queued_prompts=2)
    assert p.admit_prompt() and p.admit_prompt()
    assert not p.admit_prompt()  # two are being checked
    p.submit_user(user("a"))
    p.prompt_settled()
    p.prompt_settled()  # the second one was refused by the safety filter
    assert p.queued_prompts == 1 and p.admit_prompt()
    p.submit_user(user("b"))
    p.prompt_settled()
    assert not p.admit_prompt()
    generate(p)
    assert p.admit_prompt()


def test_continuous_admits_every_prompt_and_a_newer_one_replaces_a_waiting_one() -> None:
    p = policy(max_queued_prompts=1)
    assert all(p.admit_prompt() for _ in range(5))
    p.submit_user(user("a"))
    p.submit_user(user("b"))
    assert p.queued_prompts == 1 and generate(p).text == "b"


def test_per_prompt_pause_holds_the_queue_and_the_cap_ends_it() -> None:
    p = policy(per_prompt=True, segment_cap=2)
    p.paused = True
    for text in ("a", "b", "c"):
        p.submit_user(user(text))
    assert p.hold() is Hold.PAUSED
    p.paused = False
    assert [generate(p).text for _ in range(2)] == ["a", "b"]
    assert p.hold() is Hold.SEGMENT_CAP


def test_per_prompt_single_clip_still_makes_one_segment_per_prompt() -> None:
    p = policy(per_prompt=True, single_clip=True)
    p.submit_user(user("a"))
    p.submit_user(user("b"))
    assert [generate(p).text for _ in range(2)] == ["a", "b"]
    assert p.hold() is Hold.AWAITING_PROMPT


def test_per_prompt_ignores_auto_extension_and_enhancement_but_keeps_the_choice() -> None:
    p = policy(per_prompt=True, auto_extension=True, enhancement=True, can_enhance=True)
    p.submit_user(user("a"))
    generate(p)
    p.submit_user(user("b"))
    assert p.lookups() == [] and not p.awaiting_answers and not p.enhancement
    assert generate(p).text == "b"
    assert p.resume_state().enhancement and p.resume_state().auto_extension


def test_per_prompt_resume_state_keeps_every_waiting_prompt_and_the_one_being_made() -> None:
    p = policy(per_prompt=True)
    for text in ("a", "b", "c"):
        p.submit_user(user(text))
    p.take()  # "a" is being made: its segment is not stored yet
    state = p.resume_state()
    assert [c.text for c in state.queued] == ["a", "b", "c"] and state.pending is not None
    assert state.pending.text == "a"
    other = policy(per_prompt=True)
    other.restore(state)
    assert [generate(other).text for _ in range(3)] == ["a", "b", "c"]


def test_per_prompt_rewind_makes_taken_back_prompts_again_before_the_waiting_ones() -> None:
    p = policy(per_prompt=True)
    for text in ("a", "b", "c"):
        p.submit_user(user(text))
    start = p.position()
    first, second = generate(p), generate(p)
    p.rewind(start, [first, second])
    assert p.segments_done == 0
    assert [generate(p).text for _ in range(3)] == ["a", "b", "c"]
