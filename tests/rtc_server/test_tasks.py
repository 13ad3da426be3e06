import asyncio
import logging

import pytest

from rtc_server.tasks import TaskSet


async def test_cancel_all_cancels_and_awaits_every_task() -> None:
    tasks = TaskSet("test")
    started = asyncio.Event()
    cancelled: list[str] = []

    async def forever(name: str) -> None:
        try:
            started.set()
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    tasks.spawn(forever("a"))
    tasks.spawn(forever("b"))
    await started.wait()
    await tasks.cancel_all()
    assert sorted(cancelled) == ["a", "b"] and len(tasks) == 0


async def test_a_failing_task_is_logged_with_its_owner(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("session abc")

    async def boom() -> None:
        raise ValueError("broken")

    with caplog.at_level(logging.ERROR, logger="rtc_server.tasks"):
        task = tasks.spawn(boom())
        await asyncio.wait({task})
        await asyncio.sleep(0)
    assert "session abc" in caplog.text and "broken" in caplog.text
    assert len(tasks) == 0
