from dataclasses import replace

from rtc_server.prompt_schedule import PromptChoice, PromptOrigin, PromptSchedule


def user(text: str) -> PromptChoice:
    return PromptChoice(text=text, origin=PromptOrigin.USER, checked=True)


def run(schedule: PromptSchedule, count: int) -> list[PromptChoice]:
    """Take ``count`` prompts, each time telling the schedule what the previous segment used."""
    last: PromptChoice | None = None
    taken = []
    for _ in range(count):
        last = schedule.take(last)
        taken.append(last)
    return taken


def test_default_prompt_starts_a_stream_with_nothing_else() -> None:
    first, second = run(PromptSchedule(default_prompt="default"), 2)
    assert first.text == "default" and first.origin is PromptOrigin.DEFAULT
    assert second.text == "default" and second.origin is PromptOrigin.REPEAT


def test_first_curated_prompt_starts_and_then_repeats_without_loop() -> None:
    assert [c.text for c in run(PromptSchedule(default_prompt="d", curated=["a", "b"]), 3)] == ["a", "a", "a"]


def test_loop_generation_cycles_curated_prompts() -> None:
    schedule = PromptSchedule(default_prompt="d", curated=["a", "b", "c"], loop=True)
    assert [c.text for c in run(schedule, 5)] == ["a", "b", "c", "a", "b"]


def test_newest_user_prompt_wins_then_stream_continues_with_it() -> None:
    schedule = PromptSchedule(default_prompt="d", curated=["a"])
    last = schedule.take(None)
    schedule.submit_user(user("old"))
    schedule.submit_user(user("new"))
    last = schedule.take(last)
    assert last.text == "new"
    assert schedule.take(last).text == "new"


def test_user_prompt_interrupts_the_loop_which_then_resumes() -> None:
    schedule = PromptSchedule(default_prompt="d", curated=["a", "b"], loop=True)
    last = schedule.take(None)
    assert last.text == "a"
    schedule.submit_user(user("u"))
    last = schedule.take(last)
    assert last.text == "u"
    assert schedule.take(last).text == "b"


def test_overrides_travel_with_a_repeated_prompt() -> None:
    schedule = PromptSchedule(default_prompt="d")
    schedule.submit_user(replace(user("u"), seed=7, num_inference_steps=2))
    repeated = schedule.take(schedule.take(None))
    assert (repeated.text, repeated.origin) == ("u", PromptOrigin.REPEAT)
    assert (repeated.seed, repeated.num_inference_steps) == (7, 2)


def test_peek_shows_the_next_prompt_without_taking_it() -> None:
    schedule = PromptSchedule(default_prompt="d", curated=["a", "b"], loop=True)
    assert schedule.peek(None).text == "a"
    assert schedule.peek(None).text == "a"
    schedule.submit_user(user("u"))
    assert schedule.peek(None).text == "u" and schedule.has_pending_user_prompt
    assert schedule.take(None).text == "u"
    assert schedule.take(None).text == "a"


def test_blank_curated_prompts_are_ignored() -> None:
    schedule = PromptSchedule(default_prompt="d")
    schedule.set_curated(["  ", ""])
    assert schedule.take(None).text == "d"
    assert not schedule.cycles_curated


def test_per_prompt_takes_every_user_prompt_once_in_arrival_order() -> None:
    schedule = PromptSchedule(default_prompt="default", per_prompt=True)
    for text in ("a", "b", "c"):
        schedule.submit_user(user(text))
    assert [c.text for c in schedule.queued] == ["a", "b", "c"]
    assert schedule.peek(None).text == "a"
    assert [c.text for c in run(schedule, 3)] == ["a", "b", "c"]
    assert not schedule.has_pending_user_prompt and schedule.pending is None


def test_per_prompt_never_takes_curated_prompts_even_with_loop_on() -> None:
    schedule = PromptSchedule(default_prompt="default", curated=["c1", "c2"], loop=True, per_prompt=True)
    assert not schedule.cycles_curated
    schedule.submit_user(user("u"))
    assert schedule.take(None).text == "u"


def test_per_prompt_requeue_puts_taken_back_prompts_first_and_restore_keeps_the_queue() -> None:
    schedule = PromptSchedule(default_prompt="default", per_prompt=True)
    schedule.submit_user(user("c"))
    schedule.requeue([user("a"), user("b")])
    assert [c.text for c in schedule.queued] == ["a", "b", "c"]
    schedule.restore(curated=[], cursor=0, pending=user("x"), queued=[user("x"), user("y")])
    assert [c.text for c in schedule.queued] == ["x", "y"]
