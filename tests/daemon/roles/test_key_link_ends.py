"""Both ends of a key link (``roles.key_link.KeyLink``) in one event loop, their messages through
JSON between them as the bus carries them, their keys into two real SQLite key stores, the
streams from hal_sim's two-basis M link: the stores end up with the same keys under the same
ids, and hostile or stale messages at either end are refused and counted while keys keep
coming."""
from __future__ import annotations

import asyncio
import itertools
import time
import types

import pytest

from qnode.daemon.acquisition.cross_node import BasisLayout
from qnode.daemon.bus.envelope import Message
from qnode.daemon.bus.topics import parse_topic
from qnode.daemon.kme.store import KeyStore
from qnode.daemon.qkd.block import KeyParams
from qnode.daemon.roles.key_link import KeyLink
from qnode.daemon.runtime.config import AnalyzerConfig, KeysConfig, LinkConfig
from qnode.hal_sim import BellDiagonalState

from support.daemon_harness import link_context
from support.keys import bbm92_link, stored_keys, wire

STATE = BellDiagonalState({"phi+": 0.97, "phi-": 0.01, "psi+": 0.01, "psi-": 0.01})
KEYS = KeysConfig(block_bits=1 << 15, params=KeyParams(min_bits=1 << 13, sample_bits=4096))


class _Wire:
    """The bus between the two ends: what one publishes, the other's handler gets (JSON there
    and back, a fresh message id each)."""

    def __init__(self) -> None:
        self.ends: dict[str, KeyLink] = {}
        self.ids = itertools.count(1)
        self.pending = 0
        self.tasks: set[asyncio.Task] = set()

    def bus_for(self, node: str) -> types.SimpleNamespace:
        def publish(topic: str, type_: str, body: dict, **_: object) -> None:
            t = parse_topic(topic)
            other = next(e for n, e in self.ends.items() if n != node)
            msg = Message(type_, node, next(self.ids), wire(body), time.time(), signed=True)
            task = asyncio.get_running_loop().create_task(other._on_key(t, msg))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return types.SimpleNamespace(publish=publish, pending=0)


def _end(node: str, peer: str, leader: bool, channels: tuple[int, ...], net: _Wire,
         store: KeyStore) -> KeyLink:
    ctx = link_context(node, net.bus_for(node))
    ctx.config = types.SimpleNamespace(network="t")
    cfg = AnalyzerConfig("tagger", channels, window_ps=300, align_s=0.5, bases=("Z", "X"),
                         angles_deg=(0.0, 22.5), keys=KEYS)
    end = KeyLink(ctx, LinkConfig("m", peer, "M"), cfg, BasisLayout.make(channels),
                  leader=leader, store=store)
    net.ends[node] = end
    return end


async def _hostile(alice: KeyLink, bob: KeyLink) -> None:
    """Messages a broken or replaying peer might send, at both ends."""
    t_a, t_b = parse_topic("qnet/v1/t/bob/key/m"), parse_topic("qnet/v1/t/alice/key/m")
    junk = [("SIFT", {"session": "x", "seq": 0}), ("SIFT", {"session": 5}),
            ("KEY_SAMPLE", {"session": "00000000-0000-0000-0000-000000000000", "start": 0,
                            "n": 10, "block": "nope"}),
            ("KEY_OFFER", {"block": "00000000-0000-0000-0000-000000000000"}),
            ("KEY_FINISH", {"block": [], "abort": "because"}),
            ("KEY_REVEAL", {})]
    for i, (type_, body) in enumerate(junk):
        await bob._on_key(t_b, Message(type_, "alice", 10**6 + i, body, time.time()))
    for i, (type_, body) in enumerate([("SIFTED", {"session": "old", "seq": 3}),
                                       ("KEY_REPLY", {"block": "x", "ok": True}),
                                       ("KEY_SAMPLED", {"sample_errors_z": -1}),
                                       ("SIFT", {})]):   # not a leader's message to take
        await alice._on_key(t_a, Message(type_, "bob", 10**6 + i, body, time.time()))
    # a message from someone else on the link's topic
    await alice._on_key(t_a, Message("SIFTED", "mallory", 1, {}, time.time()))


@pytest.mark.asyncio
async def test_both_ends_store_the_same_keys_and_shrug_off_bad_messages(tmp_path):
    net = _Wire()
    with KeyStore(tmp_path / "a.sqlite", "alice") as sa, \
            KeyStore(tmp_path / "b.sqlite", "bob") as sb:
        alice = _end("alice", "bob", True, (1, 2, 3, 4), net, sa)
        bob = _end("bob", "alice", False, (5, 6, 7, 8), net, sb)
        runs = [asyncio.create_task(e.run()) for e in (alice, bob)]
        try:
            end = 0
            for i, chunk in enumerate(bbm92_link(STATE, seed=21).stream(6_000_000_000_000)):
                a, b = chunk.blocks["alice"], chunk.blocks["bob"]
                end = max(end, int(b["time"][-1]) if b.size else 0, int(a["time"][-1])
                          if a.size else 0)
                alice.add_own(a, end, None)
                alice.add_peer(wire(bob.times_body(b, end, i)), None)
                await alice.count()
                if i == 20:
                    await _hostile(alice, bob)
                stalled = time.monotonic() + 60
                while alice.lead.waiting > 4:     # real time: a chunk every 50 ms, not faster
                    assert time.monotonic() < stalled, (i, alice.telemetry(1.0),
                                                        bob.telemetry(1.0), bob.rejected)
                    await asyncio.sleep(0.005)
            deadline = time.monotonic() + 120
            while (alice.figures.blocks < 3 or bob.figures.blocks < 3 or alice.uncommitted
                   or bob.uncommitted or alice.active is not None):
                assert time.monotonic() < deadline, (alice.telemetry(1.0), bob.telemetry(1.0))
                await asyncio.sleep(0.1)
        finally:
            for r in runs:
                r.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
        ta, tb = alice.telemetry(1.0), bob.telemetry(1.0)
    assert ta["key_state"] == tb["key_state"] == "producing", (ta, tb)
    assert ta["key_secret_bits_total"] == tb["key_secret_bits_total"] > 10_000
    assert alice.rejected["unexpected"] == 2 and alice.rejected["stale"] >= 1, alice.rejected
    assert sum(bob.rejected.values()) >= 5, bob.rejected
    assert ta["key_session_restarts_total"] == 0      # stale and foreign messages are not fatal
    keys_a, keys_b = stored_keys(tmp_path / "a.sqlite"), stored_keys(tmp_path / "b.sqlite")
    assert len(keys_a) >= 40 and keys_a == keys_b
    assert {m for m, _ in keys_a.values()} == {"alice", "bob"}   # both ends master some
