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
