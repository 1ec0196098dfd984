"""wait_event (qnode.daemon.runtime.waiting): a deadline that never swallows a cancellation.

The race it exists for: a task loops on "wait for the wake event or a timeout", and is
cancelled in the same loop iteration as the event is set. On Python 3.11
``asyncio.wait_for`` then returns normally and the cancellation is lost (CPython gh-86296),
so the task never ends; the control below shows the scenario does trigger it there.
"""
from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import pytest

from qnode.daemon.runtime.waiting import wait_event

Wait = Callable[[asyncio.Event, float], Awaitable[bool]]


async def _via_wait_for(event: asyncio.Event, timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        return False
    return True


async def _tasks_left_running(wait: Wait, trials: int, patience_s: float) -> int:
    """Cancel a wake-loop task as its event is set, ``trials`` times; how many had not ended
    ``patience_s`` later."""
    event = asyncio.Event()

    async def wake_loop() -> None:
        while True:
            await wait(event, 10.0)
            event.clear()

    stuck = 0
    for _ in range(trials):
        task = asyncio.create_task(wake_loop())
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the task now waits on the event
        event.set()
        task.cancel()
        await asyncio.wait({task}, timeout=patience_s)
        if not task.done():
            stuck += 1
            task.cancel()
            await asyncio.wait({task}, timeout=5.0)
        assert task.done()
    return stuck


@pytest.mark.asyncio
async def test_a_cancellation_as_the_event_is_set_always_ends_the_task() -> None:
    assert await _tasks_left_running(wait_event, trials=30, patience_s=10.0) == 0


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for lost cancellations until 3.12")
@pytest.mark.asyncio
async def test_control_wait_for_loses_that_cancellation_on_python_3_11() -> None:
    assert await _tasks_left_running(_via_wait_for, trials=3, patience_s=0.5) > 0


@pytest.mark.asyncio
async def test_returns_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 30.0) is True
    assert await wait_event(event, None) is True  # already set: no wait, no deadline
    assert await wait_event(event, 0.0) is True
