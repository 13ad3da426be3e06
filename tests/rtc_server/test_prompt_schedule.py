from rtc_server.prompt_schedule import PromptChoice, PromptOrigin, PromptSchedule


def user(text: str) -> PromptChoice:
    return PromptChoice(text=text, origin=PromptOrigin.USER)


def test_default_prompt_starts_a_stream_with_nothing_else() -> None:
    schedule = PromptSchedule(default_prompt="default")
    assert schedule.next().text == "default"
    assert schedule.next().origin is PromptOrigin.REPEAT


def test_first_curated_prompt_starts_and_then_repeats_without_loop() -> None:
    schedule = PromptSchedule(default_prompt="d", curated=["a", "b"])
    assert [schedule.next().text for _ in range(3)] == ["a", "a", "a"]


def test_loop_generation_cycles_curated_prompts() -> None:
    schedule = PromptSchedule(default_prompt="d", curated=["a", "b", "c"], loop=True)
    assert [schedule.next().text for _ in range(5)] == ["a", "b", "c", "a", "b"]


def test_newest_user_prompt_wins_then_stream_continues_with_it() -> None:
    schedule = PromptSchedule(default_prompt="d", curated=["a"])
    schedule.next()
    schedule.submit_user(user("old"))
    schedule.submit_user(user("new"))
    assert schedule.next().text == "new"
    assert schedule.next().text == "new"


def test_user_prompt_interrupts_the_loop_which_then_resumes() -> None:
    schedule = PromptSchedule(default_prompt="d", curated=["a", "b"], loop=True)
    assert schedule.next().text == "a"
    schedule.submit_user(user("u"))
    assert schedule.next().text == "u"
    assert schedule.next().text == "b"


def test_overrides_travel_with_a_repeated_prompt() -> None:
    schedule = PromptSchedule(default_prompt="d")
    schedule.submit_user(PromptChoice(text="u", origin=PromptOrigin.USER, seed=7, num_inference_steps=2))
    schedule.next()
    repeated = schedule.next()
    assert (repeated.seed, repeated.num_inference_steps) == (7, 2)


def test_auto_extension_is_wanted_only_without_user_prompt_or_loop() -> None:
    schedule = PromptSchedule(default_prompt="d", curated=["a"])
    schedule.auto_extension_enabled = True
    assert not schedule.wants_auto_extension  # nothing generated yet
    schedule.next()
    assert schedule.wants_auto_extension
    schedule.submit_user(user("u"))
    assert not schedule.wants_auto_extension
    schedule.next()
    schedule.loop_enabled = True
    assert not schedule.wants_auto_extension
    schedule.loop_enabled = False
    assert schedule.accept_auto_extension("next scene").origin is PromptOrigin.AUTO_EXTENSION
    assert schedule.last is not None and schedule.last.text == "next scene"


def test_blank_curated_prompts_are_ignored() -> None:
    schedule = PromptSchedule(default_prompt="d")
    schedule.set_curated(["  ", ""])
    assert schedule.next().text == "d"
