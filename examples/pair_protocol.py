"""The loop two applications share in the examples: one pair, one message.

The sender's application asks its node for pairs with the receiver's node (on ``purpose``, in
requests of ``batch`` pairs: a node refuses at once what it cannot supply in time) and, for each
pair, does its part (``sender_turn``: gates on its half) and tells the receiver's application
what it needs in a ``DATA`` (the note ``sender_turn`` returns, with the ``pair_id``). The
receiver's application listens on the purpose and gets the same pairs; when a pair and its note
are both in, it does its part (``receiver_turn``). A pair whose receiver turn has not come
``wait_s`` after its note (the pair or the DATA lost) is counted in ``lost`` as
``receiver_missed``; a turn that raises is counted by the exception's name.

    lost = await run_pairs(sender, receiver, 100, remote="bob", purpose=7,
                           sender_turn=..., receiver_turn=...)
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from qnode.client import NodeClient, Pair, RequestError

SenderTurn = Callable[[Pair], Awaitable[dict[str, Any] | None]]
ReceiverTurn = Callable[[Pair, dict[str, Any]], Awaitable[None]]


async def run_pairs(sender: NodeClient, receiver: NodeClient, n: int, *, remote: str,
                    purpose: int, sender_turn: SenderTurn, receiver_turn: ReceiverTurn,
                    batch: int = 50, wait_s: float = 10.0,
                    timeout_s: float = 600.0) -> dict[str, int]:
    """Run ``n`` pairs through both turns (see the module docstring); what was lost, by why.
    ``sender_turn`` returns the note for the receiver, or None to skip the pair."""
    lost: dict[str, int] = {}
    done = 0
    pending: dict[int, float] = {}       # pair id -> when its note was sent (monotonic s)
    held: dict[int, Pair] = {}
    notes: dict[int, dict[str, Any]] = {}
    wake = asyncio.Event()
    ready = asyncio.Event()

    def count_lost(why: str, k: int = 1) -> None:
        lost[why] = lost.get(why, 0) + k

    async def receiving() -> None:
        nonlocal done
        async with receiver.receive(purpose) as incoming:
            async def take_pairs() -> None:
                async for p in incoming:
                    held[p.pair_id] = p
                    wake.set()

            async def take_notes() -> None:
                async for m in receiver.data():
                    if m.sender == sender.application:
                        notes[int(m.data["pair_id"])] = m.data
                        wake.set()
            readers = [asyncio.ensure_future(take_pairs()), asyncio.ensure_future(take_notes())]
            ready.set()
            try:
                while True:
                    await wake.wait()
                    wake.clear()
                    for pid in [k for k in notes if k in held]:
                        pair, note = held.pop(pid), notes.pop(pid)
                        try:
                            await receiver_turn(pair, note)
                            done += 1
                        except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                            count_lost(f"receiver_{type(exc).__name__}")
                        finally:
                            pending.pop(pid, None)
            finally:
                for r in readers:
                    r.cancel()
                await asyncio.gather(*readers, return_exceptions=True)

    task = asyncio.ensure_future(receiving())
    await ready.wait()
    try:
        async with asyncio.timeout(timeout_s):
            while done < n and sum(lost.values()) <= n:
                pending.clear()
                try:
                    async for pair in sender.create_keep(remote, pairs=min(batch, n - done),
                                                         purpose=purpose, timeout_s=timeout_s):
                        try:
                            note = await sender_turn(pair)
                        except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                            count_lost(f"sender_{type(exc).__name__}")
                            continue
                        if note is None:
                            continue
                        pending[pair.pair_id] = time.monotonic()
                        await sender.send_data(receiver.application,
                                               {"pair_id": pair.pair_id, **note})
                except RequestError as exc:
                    if exc.code != "no_listener":   # the LISTEN has not reached the sender yet
                        raise
                    await asyncio.sleep(0.5)
                while pending and not task.done():   # this round's receiver turns
                    if time.monotonic() - max(pending.values()) > wait_s:
                        count_lost("receiver_missed", len(pending))
                        break
                    await asyncio.sleep(0.05)
                if task.done():
                    task.result()       # its error, if it ended with one
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return lost
