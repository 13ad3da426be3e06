import asyncio

import pytest

from rtc_server.admission import AdmissionQueue


class Positions:
    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[int, int]]] = {}

    def for_(self, name: str):  # type: ignore[no-untyped-def]
        self.seen[name] = []
        return lambda position, depth: self.seen[name].append((position, depth))


async def test_free_slots_are_granted_at_once() -> None:
    queue = AdmissionQueue(slots=2)
    assert queue.try_enter("a") and queue.try_enter("b")
    assert not queue.try_enter("c")
    assert queue.active == 2


async def test_waiters_are_served_in_order_and_told_their_positions() -> None:
    queue = AdmissionQueue(slots=1)
    positions = Positions()
    assert queue.try_enter("a")
    b = asyncio.create_task(queue.wait("b", positions.for_("b")))
    c = asyncio.create_task(queue.wait("c", positions.for_("c")))
    await asyncio.sleep(0)
    assert positions.seen == {"b": [(1, 1)], "c": [(2, 2)]}
    queue.leave("a")
    await b
    assert not c.done()
    assert positions.seen["c"][-1] == (1, 1)
    queue.leave("b")
    await c
    assert queue.depth == 0 and queue.active == 1


async def test_a_waiter_that_leaves_frees_its_place() -> None:
    queue = AdmissionQueue(slots=1)
    positions = Positions()
    queue.try_enter("a")
    b = asyncio.create_task(queue.wait("b", positions.for_("b")))
    c = asyncio.create_task(queue.wait("c", positions.for_("c")))
    await asyncio.sleep(0)
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    assert positions.seen["c"][-1] == (1, 1)
    queue.leave("a")
    await c


async def test_newcomers_do_not_jump_the_queue() -> None:
    queue = AdmissionQueue(slots=1)
    queue.try_enter("a")
    waiting = asyncio.create_task(queue.wait("b", lambda p, d: None))
    await asyncio.sleep(0)
    queue.leave("a")
    assert not queue.try_enter("late")
    await waiting


def test_unknown_leave_is_a_no_op_and_slots_must_be_positive() -> None:
    AdmissionQueue(slots=1).leave("nobody")
    with pytest.raises(ValueError):
        AdmissionQueue(slots=0)
