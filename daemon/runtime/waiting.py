"""Waiting with a deadline inside long-lived tasks.

Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives in the same loop
iteration as the awaited event (CPython issue gh-86296, fixed in 3.12 by reimplementing it on
``asyncio.timeout``): the task then carries on instead of ending, and a supervisor that cancels
it waits forever. The key link hung that way in one test run out of three. ``asyncio.timeout``
does not have the flaw, so every deadline in the daemon uses it.
"""
from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` seconds have passed (None: no deadline);
    True when it was set. A cancellation always propagates."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
