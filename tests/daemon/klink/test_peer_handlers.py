"""A link service dispatches each kind of peer message to the one handler registered for it:
the link end's own (EXPIRE, EXPIRE_ACK, EPOCH), and what its helpers register (the memory's TEST
and HELD, the purifier's PURIFY at the follower or PURIFY_RES at the
leader). A kind nobody here handles is refused, counted by the node's link router, and changes
nothing; a second handler for one kind is a programming error."""
from __future__ import annotations

import time
from typing import Any

import pytest

from qnode.daemon.bus.envelope import Message as Envelope
from qnode.daemon.klink.memory import LinkMemory, QubitPool
from qnode.daemon.klink.purification import Purifier
from qnode.daemon.klink.service import LinkRouter, LinkService
from qnode.daemon.linklayer import (
    TWIRLS,
    Held,
    Purify,
    PurifyResult,
    TestOutcomes,
)
from qnode.daemon.runtime.config import MemoryConfig

from support.daemon_harness import link_context

MEM = MemoryConfig(qdevice="qmem", readout_error=0.005, t1_s=5.0, t2_s=2.0,
                   purification="dejmps")


class _Bus:
    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def defer_until_idle(self, work: Any) -> bool:
        return False

    def publish(self, topic: str, type: str, body: Any, **kw: Any) -> bool:
        self.sent.append((topic, type))
        return True


def _memory(link: str) -> LinkMemory:
    return LinkMemory(link, QubitPool("qmem", lambda: None, {}),  # type: ignore[arg-type,return-value]
                      test_fraction=0.1, readout_error=0.005, t1_s=5.0, t2_s=2.0,
                      prior_fidelity=0.9)


def _env(msg: Any, sender: str) -> Envelope:
    return Envelope(msg.TYPE, sender, 1, msg.to_dict(), time.time(), signed=True)


def _service(node: str, peer: str) -> tuple[LinkService, Any]:
    ctx = link_context(node, _Bus())
    svc = ctx.shared(LinkRouter).add(LinkService(ctx, "ab", peer, "K", goodness=0.9))
    return svc, ctx


@pytest.mark.asyncio
async def test_a_kind_nobody_registered_is_refused_counted_and_changes_nothing():
    svc, ctx = _service("alice", "bob")
    swap = Purify("ab", 0, "dejmps", 10, 11, "", "X", 0, time.time())   # no purifier here
    def state() -> dict[str, Any]:   # the snapshot's generation counts the snapshots taken
        return {k: v for k, v in svc.end.snapshot().items() if k != "generation"}
    before = state()
    await svc.on_peer_message(_env(swap, "bob"), swap)
    held = Held("ab", (1,), (time.time(),))
    await svc.on_peer_message(_env(held, "bob"), held)   # no memory here: nobody takes HELD
    assert ctx.shared(LinkRouter).rejected["not_a_peer_message"] == 2
    assert state() == before and ctx.bus.sent == []


@pytest.mark.asyncio
async def test_the_memory_takes_test_and_held_once_attached():
    svc, ctx = _service("alice", "bob")
    memory = _memory("ab")
    svc.attach_memory(memory)
    woken: list[int] = []
    svc.listeners.append(lambda: woken.append(1))
    held = Held("ab", (5, 6), (time.time(), time.time()))
    await svc.on_peer_message(_env(held, "bob"), held)
    assert set(memory.peer_held) == {5, 6} and woken == [1]
    tests = TestOutcomes("ab", (7,), "Z", "1", 0.01)
    await svc.on_peer_message(_env(tests, "bob"), tests)
    assert ctx.shared(LinkRouter).rejected == {}
    with pytest.raises(ValueError, match="HELD already has a handler"):
        svc.on_message(Held, lambda m: None)   # type: ignore[arg-type,return-value]


@pytest.mark.asyncio
@pytest.mark.parametrize("node, peer", [("alice", "bob"), ("bob", "alice")])
async def test_the_purifier_registers_only_its_side_of_the_protocol(node, peer):
    """The leader (the smaller node id) takes PURIFY_RES, the follower PURIFY; the other kind is
    refused as not for this end. It also serves the CREATEs above the link's fidelity and adds
    its telemetry."""
    svc, ctx = _service(node, peer)
    svc.attach_memory(_memory("ab"))
    purifier = Purifier(ctx, svc, svc.memory, MEM)
    assert purifier.leader == (node == "alice")
    wrong: Any = (Purify("ab", 1, "dejmps", 1, 2, TWIRLS[0], TWIRLS[0], 0, time.time())
                  if purifier.leader else PurifyResult("ab", 1, "0", time.time()))
    await svc.on_peer_message(_env(wrong, peer), wrong)
    assert ctx.shared(LinkRouter).rejected["not_a_peer_message"] == 1
    assert "purify_rounds_total" in svc.telemetry(1.0)
