"""A hypothesis fuzz of the trust boundary: at least 10^5 generated messages per run, through the
decoder *and* the handlers of a running memory node (K link, real mosquitto), with zero escapes.

Messages start from real ones of every type the node handles (a station's HERALD batch, the
peer's EXPIRE, EXPIRE_ACK, HELD, TESTS, SWAP_RES, PURIFY, PURIFY_RES, an application's CREATE),
then hypothesis changes them: a field replaced by any JSON value (huge, negative, non-finite
numbers, wrong types, deep nesting), dropped, or added; the envelope's fields likewise; and raw
byte damage. Most are signed with the link key, so they pass the envelope and reach the link
layer's validation. An escape is anything but a counted rejection: an exception out of
:meth:`NodeBus.deliver`, a handler error, a decoder error, a restarted role task, or a node
that no longer takes a genuine herald.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from qnode.daemon.bus.envelope import MAX_ID, Message, encode
from qnode.daemon.bus.identity import NodeSigner
from qnode.daemon.klink.service import LinkRouter
from qnode.daemon.linklayer import (
    Create,
    Expire,
    ExpireAck,
    Held,
    HeraldStation,
    Purify,
    PurifyResult,
    SwapResult,
    TestOutcomes,
    seq_add,
)
from qnode.daemon.node import Node
from qnode.daemon.runtime.config import load_config

from support.contract import ContractTap
from support.daemon_harness import identity, node_config, write_key
from support.mosquitto import Mosquitto

LINK, KEY = "alice-bob", b"fuzz link key, thirty-two bytes!"
#: examples × messages per example ≥ 10^5
EXAMPLES, PER_EXAMPLE = int(os.environ.get("QNODE_FUZZ_EXAMPLES", 2_000)), 50


def seeds() -> list[tuple[str, str, dict[str, Any], str]]:
    """(topic, sender, body, type) of one genuine message of each type alice handles."""
    station = HeraldStation([LINK])
    for i in range(5):
        station.success(LINK, "psi+" if i % 2 else "psi-", 1000 * (i + 1))
    (herald,) = station.flush(0)
    bob = [
        Expire(LINK, 0, 3, "bob"), ExpireAck(LINK, 5, 0, 3),
        Held(LINK, (0, 1), (0.5, 0.75)), TestOutcomes(LINK, (2,), "Z", "1", 0.01),
        SwapResult("p", 1, LINK, 1, "x-carol", 7, "phi+", "psi+", "phi+",
                   (0.9, 0.05, 0.03, 0.02), (0.9, 0.05, 0.03, 0.02), 0.1, 0.1, 0.2, 0.2, 5.0,
                   2.0, 0.999, 0.995, 1.0),
        Purify(LINK, 1, "dejmps", 0, 1, "X", "X", 1, 1.0), PurifyResult(LINK, 1, "1", 1.0),
    ]
    out = [(f"qnet/v1/t/station/herald/{LINK}", "station", herald.to_dict(), herald.TYPE)]
    out += [(f"qnet/v1/t/bob/{'proto' if isinstance(m, Purify | PurifyResult) else 'll'}/alice",
             "bob", m.to_dict(), m.TYPE) for m in bob]
    create = Create("bob", 0.5, 1000.0, 1, 2)
    out.append(("qnet/v1/t/alice/cmd", "app", create.to_dict(), create.TYPE))
    return out


SEEDS = seeds()

json_leaf = (st.none() | st.booleans()
             | st.integers(-(1 << 70), 1 << 70)
             | st.sampled_from([0, -1, 1, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63,
                                -(1 << 63), 10**19, 10**25])
             | st.floats(allow_nan=False, allow_infinity=False)
             | st.sampled_from([1e306, -1e306, 5e-324, -0.0])
             | st.text(max_size=12)
             | st.sampled_from(["psi+", "psi-", "phi+", "phi-", "alice", "bob", LINK, "é", "",
                                "\x00", "A" * 300]))
json_value = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=4)
                          | st.dictionaries(st.text(max_size=6), kids, max_size=4),
                          max_leaves=8)


TYPES = ["HERALD", "EXPIRE", "EXPIRE_ACK", "HELD", "TESTS", "SWAP_RES", "PURIFY", "PURIFY_RES",
         "CREATE", "OK"]


LEAVES: list[Any] = [None, True, False, 0, -1, 1, (1 << 32) - 1, 1 << 32, (1 << 63) - 1,
                     1 << 63, -(1 << 63), 10**19, 10**25, 0.5, -0.0, 1e306, -1e306, 5e-324,
                     "", "psi+", "psi-", "phi+", "phi-", "alice", "bob", LINK, "é", "\x00",
                     "A" * 300, "\u2028", "0" * 64]


def quick_json(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value from a seed: cheap, so that 10^5 messages fit a test run (hypothesis's own
    recursive strategy is used for a share of the messages too)."""
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return [quick_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if depth < 3 and roll < 0.25:
        return {rng.choice(["", "a", "link", "é", "seq"]) + str(i): quick_json(rng, depth + 1)
                for i in range(rng.randrange(4))}
    if roll < 0.45:
        return rng.randint(-(1 << 70), 1 << 70) >> rng.randrange(70)
    if roll < 0.55:
        return rng.uniform(-1e300, 1e300) * rng.random() ** 40
    return rng.choice(LEAVES)


@st.composite
def hostile(draw: st.DrawFn) -> dict[str, Any]:
    """A recipe for one message (the test encodes it, with fresh ids where asked). Hypothesis
    draws the seed message, what to do to it and where; a drawn seed feeds the rest, so that
    10^5 messages fit a test run."""
    topic, sender, body, seed_type = draw(st.sampled_from(SEEDS))
    body = dict(body)
    how = draw(st.sampled_from(["replace", "replace", "replace", "replace", "drop", "add",
                                "envelope", "bytes", "genuine"]))
    rng = random.Random(draw(st.integers(0, 1 << 32)))
    value = draw(json_value) if rng.random() < 0.1 else quick_json(rng)
    if how == "replace" and body:
        body[draw(st.sampled_from(sorted(body)))] = value
    elif how == "drop" and body:
        del body[draw(st.sampled_from(sorted(body)))]
    elif how == "add":
        body[rng.choice(["", "x", "seq", "é", "link", "\x00"]) + str(rng.randrange(9))] = value
    recipe: dict[str, Any] = {
        "topic": topic, "sender": sender, "body": body, "how": how,
        # the seed's own type mostly; any type sometimes (a HELD on a herald topic, ...)
        "type": seed_type if rng.random() < 0.8 else rng.choice(TYPES),
        # commands are unsigned (anyone's), the rest signed with the link key mostly
        "signed": not topic.endswith("/cmd") and rng.random() < 0.9,
        # the sender's next id mostly; else a replay of a recent one, a jump ahead (as after a
        # restart), or any id at all
        "id": rng.choice(["next"] * 12 + ["recent", "jump", "any"]),
        "k": rng.randint(1, 1 << 20),
        "any": rng.randint(0, (1 << 63) - 1),
    }
    if how == "envelope":
        recipe["field"] = rng.choice(["v", "type", "sender", "id", "ts", "body", "sig",
                                      "nodesig", "extra"])
        recipe["value"] = value
    if how == "bytes":
        recipe["at"] = rng.random()
        # random bytes, or an escape that is valid JSON but no text (a lone surrogate)
        recipe["splice"] = (rng.randbytes(rng.randrange(5)) if rng.random() < 0.8
                            else rng.choice([b"\\ud800", b"\\uDC00x"]))
    return recipe


class Encoder:
    """Turns recipes into payloads: fresh ids count up per sender, as a real sender's do."""

    def __init__(self, station: NodeSigner) -> None:
        self.next_id: dict[str, int] = {}
        self.station = station  # heralds carry the station's identity signature too

    def __call__(self, r: dict[str, Any]) -> tuple[str, bytes]:
        sender, mtype = r["sender"], r["type"]
        nxt = self.next_id.get(sender, 0)
        mid = {"next": nxt, "recent": max(0, nxt - r["k"] % 64), "jump": nxt + r["k"],
               "any": r["any"]}[r["id"]]
        if mid >= nxt and mid < MAX_ID - (1 << 40):  # a real sender goes on from there
            self.next_id[sender] = mid + 1
        msg = Message(mtype, sender, mid, r["body"], ts=1.0)
        herald = "/herald/" in r["topic"]
        payload = encode(msg, KEY if r["signed"] else None,
                         signer=self.station if r["signed"] and herald else None)
        if r["how"] == "envelope":
            env = json.loads(payload)
            env[r["field"]] = r["value"]
            payload = json.dumps(env).encode()
        elif r["how"] == "bytes":
            at = int(r["at"] * (len(payload) - 1))
            payload = payload[:at] + r["splice"] + payload[at + 1:]
        return r["topic"], payload


class RunningNode:
    """An in-process memory node on its own event loop thread."""

    def __init__(self, config: Path):
        self.node = Node(load_config(config), handle_signals=False, ready_timeout_s=60)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.error: BaseException | None = None
        self.station: NodeSigner | None = None
        self.tap: ContractTap | None = None

    def _main(self) -> None:
        try:
            self.loop.run_until_complete(self.node.run())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def call(self, coro: Any, timeout_s: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def __enter__(self) -> RunningNode:
        self.thread.start()

        async def ready() -> None:
            while self.node.ctx is None:
                await asyncio.sleep(0.01)
            await self.node.wait_ready(60)
        self.call(ready(), 90)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.node.stop)
        self.thread.join(60)


@pytest.fixture
def alice(tmp_path: Path, broker: Mosquitto) -> Iterator[RunningNode]:
    key = tmp_path / "link.key"
    write_key(key, KEY)
    config = node_config(
        tmp_path / "alice.toml", node="alice", roles=["memory"], broker_port=broker.port,
        state_dir=tmp_path / "state",
        body=f"[memory]\ncapacity = 1000\nmax_pair_age_s = 0\n\n[[links]]\nid = \"{LINK}\"\n"
             f"peer = \"bob\"\ntype = \"K\"\nherald = \"station\"\nhmac_key_file = \"{key}\"\n")
    # what alice answers the fuzz (EXPIRE_ACKs, replies, ...) crosses the broker: the tap judges
    # it; the fuzz itself is delivered in process and never reaches the broker
    tap = broker.tap("t", ("alice",))
    try:
        with RunningNode(config) as node:
            node.station = identity(tmp_path, "station")
            node.tap = tap
            yield node
    finally:
        broker.close_taps()


class Escapes(logging.Handler):
    """Keeps the tracebacks of errors logged with one (handler and decoder errors)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.tracebacks.append(record.getMessage() + "\n"
                                   + "".join(traceback.format_exception(*record.exc_info)))


def test_generated_messages_never_escape_the_boundary(alice: RunningNode) -> None:
    bus = alice.node.ctx.bus  # type: ignore[union-attr]
    escapes = Escapes()
    logging.getLogger("qnode").addHandler(escapes)
    sent, delivering = 0, 0.0
    encoder = Encoder(alice.station)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(hostile(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def fuzz(recipes: list[dict[str, Any]]) -> None:
        nonlocal sent, delivering
        messages = [encoder(r) for r in recipes]

        async def deliver_all() -> None:
            for topic, payload in messages:
                await bus.deliver(topic, payload)
        t0 = time.perf_counter()
        alice.call(deliver_all())
        delivering += time.perf_counter() - t0
        sent += len(messages)

    fuzz()
    assert sent >= EXAMPLES * PER_EXAMPLE
    metrics = bus.metrics()
    sup = alice.node.ctx.supervisor  # type: ignore[union-attr]
    logging.getLogger("qnode").removeHandler(escapes)
    assert metrics["handler_errors"] == 0, escapes.tracebacks[:3]
    assert metrics["rejected"].get("decoder_error", 0) == 0, metrics
    assert sum(sup.restarts.values()) == 0 and sup.running
    assert alice.error is None and bus.connected
    # most reached the handlers, the rest were rejected with a reason
    assert metrics["received"] + sum(metrics["rejected"].values()) >= sent * 0.99
    # and a genuine herald still moves the link
    end = alice.node.ctx.shared(LinkRouter).services[LINK].end
    before = end.expected_seq
    station = HeraldStation([LINK], initial_seq=before)
    for i in range(3):
        station.success(LINK, "psi-", 10**12 + i)
    (batch,) = station.flush(10**6)
    # an id the station's window has not seen (the fuzz held the key, so it may have moved it)
    high, bits = bus.dedup.snapshot().get("@station|station", (-1, 0))
    mid = high + 1 if high < MAX_ID else next(high - k for k in range(1, 4096)
                                               if not (bits >> k) & 1)
    genuine = encode(Message(batch.TYPE, "station", mid, batch.to_dict()), KEY,
                     signer=alice.station)
    alice.call(bus.deliver(f"qnet/v1/t/station/herald/{LINK}", genuine))
    assert end.expected_seq == seq_add(before, 3)
    assert alice.tap is not None
    summary = alice.tap.assert_clean()
    print(f"fuzz: {sent} messages ({delivering:.1f} s delivering), {metrics['received']} "
          f"reached handlers, rejected "
          f"{dict(metrics['rejected'])}, link expected_seq {before} -> {end.expected_seq}; "
          f"contract tap: {summary}")
