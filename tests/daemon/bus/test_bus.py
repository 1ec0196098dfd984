"""The MQTT bus against a real mosquitto: signed delivery exactly once and in order, a broker
restart mid-run without loss or double application, hostile payloads rejected and counted, the
last will, and a raising handler that does not stop delivery."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import aiomqtt
import pytest

from qnode.daemon.bus.client import NodeBus
from qnode.daemon.bus.envelope import Deduplicator, Message, encode
from qnode.daemon.bus.topics import Topic, Topics

from support.daemon_harness import running
from support.mosquitto import Mosquitto, find_mosquitto

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")

NET = "lab"
KEY = b"alice-bob link key 0123456789abc"
ALICE, BOB = Topics(NET, "alice"), Topics(NET, "bob")
TIMEOUT_S = 15.0  # generous: only reached when something is broken




def make_bus(broker: Mosquitto, topics: Topics, **kw: Any) -> NodeBus:
    kw.setdefault("reconnect_initial_s", 0.05)
    kw.setdefault("reconnect_max_s", 0.4)
    return NodeBus(topics, broker.host, broker.port, **kw)




class Inbox:
    """A handler recording what it is given; ``wait_for(pred)`` without polling."""

    def __init__(self) -> None:
        self.items: list[tuple[Topic, Message]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, topic: Topic, msg: Message) -> None:
        async with self._changed:
            self.items.append((topic, msg))
            self._changed.notify_all()

    async def wait_for(self, pred: Callable[[list[tuple[Topic, Message]]], object],
                       timeout_s: float = TIMEOUT_S) -> None:
        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: pred(self.items))
        await asyncio.wait_for(until(), timeout_s)

    def bodies(self, field: str = "n") -> list[object]:
        return [m.body.get(field) for _, m in self.items]


def pair(broker: Mosquitto, **kw: Any) -> tuple[NodeBus, NodeBus, Inbox]:
    alice = make_bus(broker, ALICE, keys={"bob": KEY}, **kw)
    bob = make_bus(broker, BOB, keys={"alice": KEY}, **kw)
    inbox = Inbox()
    bob.on("ll", inbox)
    return alice, bob, inbox


@pytest.mark.asyncio
async def test_signed_messages_arrive_exactly_once_in_order(broker: Mosquitto) -> None:
    alice, bob, inbox = pair(broker)
    n = 100
    async with running(bob), running(alice):
        sent = [alice.publish(ALICE.ll("bob"), "ll.test", {"n": i}, sign_with="bob")
                for i in range(n)]
        await inbox.wait_for(lambda items: len(items) >= n)
        await asyncio.wait_for(alice.drain(), TIMEOUT_S)
    assert inbox.bodies() == list(range(n))
    assert [m.id for _, m in inbox.items] == [m.id for m in sent]
    assert all(m.signed and m.sender == "alice" for _, m in inbox.items)
    assert {str(t) for t, _ in inbox.items} == {ALICE.ll("bob")}
    assert not bob.rejected and bob.received == n
    assert alice.acked == alice.published == n and alice.pending == 0


@pytest.mark.asyncio
async def test_broker_restart_loses_nothing_and_applies_nothing_twice(broker: Mosquitto) -> None:
    alice, bob, inbox = pair(broker)
    total, stop_at = 200, 60
    reached = asyncio.Event()

    async def outage() -> None:
        await reached.wait()
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(1.0)  # the outage itself: the broker is gone for ~1 s
        await asyncio.to_thread(broker.start)

    async with running(bob), running(alice):
        chaos = asyncio.create_task(outage())
        for i in range(total):
            if i == stop_at:
                reached.set()
            alice.publish(ALICE.ll("bob"), "ll.test", {"n": i}, sign_with="bob")
            await asyncio.sleep(0.005)  # a steady stream that outlasts the outage start
        await asyncio.wait_for(chaos, TIMEOUT_S)
        # A sentinel after everything: per-topic order means every resend is in before it.
        alice.publish(ALICE.ll("bob"), "ll.test", {"n": "end"}, sign_with="bob")
        try:
            await inbox.wait_for(lambda items: items and items[-1][1].body["n"] == "end")
        except TimeoutError:
            pytest.fail(f"sentinel not received: got {inbox.bodies()}\nalice "
                        f"{alice.metrics()}\nbob {bob.metrics()}\n{broker.log_tail(80)}")
        await asyncio.wait_for(alice.drain(), TIMEOUT_S)
    got = inbox.bodies()[:-1]
    assert sorted(got) == list(range(total)), "lost or applied twice"
    assert got == list(range(total)), "out of order"
    ids = [m.id for _, m in inbox.items]
    assert len(set(ids)) == len(ids)
    assert alice.queued > 0 or alice.resent > 0, alice.metrics()
    assert alice.reconnects >= 1 and bob.reconnects >= 1, (alice.metrics(), bob.metrics())
    assert set(bob.rejected) <= {"duplicate"}, bob.metrics()  # resends dropped, nothing else


@pytest.mark.asyncio
async def test_persistent_session_queues_for_an_absent_node(broker: Mosquitto) -> None:
    dedup = Deduplicator()
    alice = make_bus(broker, ALICE, keys={"bob": KEY})
    async with running(make_bus(broker, BOB, keys={"alice": KEY}, dedup=dedup)):
        pass  # bob's session (and its subscriptions) now exist on the broker; bob leaves
    async with running(alice):
        for i in range(20):
            alice.publish(ALICE.ll("bob"), "ll.test", {"n": i}, sign_with="bob")
        await asyncio.wait_for(alice.drain(), TIMEOUT_S)  # all with the broker, bob away
        bob = make_bus(broker, BOB, keys={"alice": KEY}, dedup=dedup)  # bob "restarts"
        inbox = Inbox()
        bob.on("ll", inbox)
        async with running(bob):
            await inbox.wait_for(lambda items: len(items) >= 20)
    assert inbox.bodies() == list(range(20))


@pytest.mark.asyncio
async def test_hostile_payloads_are_rejected_counted_and_logged(
        broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="qnode.bus")
    bob = make_bus(broker, BOB, keys={"alice": KEY}, max_bytes=4096)
    inbox = Inbox()
    bob.on("ll", inbox)
    topic = ALICE.ll("bob")

    def env(mid: int, key: bytes | None = KEY, **over: object) -> bytes:
        raw = json.loads(encode(Message("ll.test", "alice", mid, {"n": mid}), key))
        raw.update(over)
        return json.dumps(raw).encode()

    hostile = [
        ("oversized", env(1, body={"pad": "x" * 5000})),
        ("not_json", b"\xff\xfe{not json"),
        ("not_json", b""),
        ("bad_envelope", b"[1, 2, 3]"),
        ("bad_envelope", env(2, id="2")),                  # wrongly typed field
        ("bad_envelope", env(3, body=[1])),
        ("bad_envelope", env(4, extra=True)),
        ("bad_version", env(5, v=99)),
        ("sender_mismatch", env(6, sender="mallory")),
        ("unsigned", env(7, key=None)),
        ("bad_signature", env(8, key=b"a key mallory made up")),  # forged
        ("bad_signature", env(9, body={"n": 10})),          # tampered after signing
        # the two that killed the connection (issue 12, finding 2)
        ("not_json", env(12, body={"n": int("9" * 2000)})),  # a 2,000-digit integer
        ("bad_signature", env(13, sig="é")),                 # non-ASCII signature
        ("too_deep", env(14, body={"n": [[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]})),
    ]
    async with running(bob), aiomqtt.Client(broker.host, broker.port,
                                            identifier="raw-alice") as raw:
        for _, payload in hostile:
            await raw.publish(topic, payload, qos=1)
        good = env(10)
        await raw.publish(topic, good, qos=1)
        await raw.publish(topic, good, qos=1)  # a replay
        await raw.publish(topic, env(11), qos=1)
        await inbox.wait_for(lambda items: len(items) >= 2)
        assert bob.connected
    expected: dict[str, int] = {}
    for reason, _ in hostile:
        expected[reason] = expected.get(reason, 0) + 1
    expected["duplicate"] = 1
    assert dict(bob.rejected) == expected
    assert inbox.bodies() == [10, 11] and bob.received == 2
    logged = {getattr(r, "reason", None) for r in caplog.records if r.name == "qnode.bus"}
    assert set(expected) <= logged
    assert all(getattr(r, "topic", None) == topic for r in caplog.records
               if getattr(r, "reason", None))


@pytest.mark.asyncio
async def test_rejection_log_is_rate_limited(broker: Mosquitto,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="qnode.bus")
    bob = make_bus(broker, BOB)
    for _ in range(500):
        await bob.deliver(ALICE.ll("bob"), b"junk")
    assert bob.rejected["not_json"] == 500
    assert sum(1 for r in caplog.records if getattr(r, "reason", None) == "not_json") <= 2


async def read_status(broker: Mosquitto, topics: Topics,
                      want: str | None = None) -> dict[str, object]:
    """The retained status of ``topics`` as a fresh subscriber sees it (or, with ``want``,
    the first status with that state)."""
    async with aiomqtt.Client(broker.host, broker.port) as c:
        await c.subscribe(topics.status, qos=1)
        async def first() -> dict[str, object]:
            async for m in c.messages:
                env = json.loads(m.payload)  # type: ignore[arg-type]
                if want is None or env["body"]["state"] == want:
                    return env
            raise AssertionError("unreachable")
        return await asyncio.wait_for(first(), TIMEOUT_S)


BUS_PROCESS = """
import asyncio, sys
from qnode.daemon.bus.client import NodeBus
from qnode.daemon.bus.topics import Topics
asyncio.run(NodeBus(Topics(sys.argv[1], sys.argv[2]), "127.0.0.1", int(sys.argv[3])).run())
"""


@pytest.mark.asyncio
async def test_last_will_and_clean_close_leave_offline_status(broker: Mosquitto) -> None:
    carol = Topics(NET, "carol")
    # A bus in a process that is killed: the broker publishes the will.
    proc = subprocess.Popen([sys.executable, "-c", BUS_PROCESS, NET, "carol", str(broker.port)],
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        async with aiomqtt.Client(broker.host, broker.port) as watcher:
            await watcher.subscribe(carol.status, qos=1)

            async def next_state(state: str) -> dict[str, object]:
                async for m in watcher.messages:
                    env = json.loads(m.payload)  # type: ignore[arg-type]
                    if env["body"]["state"] == state:
                        return env
                raise AssertionError("unreachable")

            online = await asyncio.wait_for(next_state("online"), TIMEOUT_S)
            proc.send_signal(signal.SIGKILL)
            offline = await asyncio.wait_for(next_state("offline"), TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert online["type"] == offline["type"] == "status" and online["sender"] == "carol"
    retained = await read_status(broker, carol)
    assert retained["body"] == {"state": "offline"} and retained["sender"] == "carol"

    # A bus that connects says online (retained), and a clean close() says offline.
    dave = Topics(NET, "dave")
    bus = make_bus(broker, dave)
    async with running(bus):
        assert (await read_status(broker, dave))["body"]["state"] == "online"
        bus.status("online", links=2)
        await asyncio.wait_for(bus.drain(), TIMEOUT_S)
        assert (await read_status(broker, dave))["body"] == {"state": "online", "links": 2}
    assert (await read_status(broker, dave))["body"] == {"state": "offline"}

    # A bus whose task is cancelled (supervisor shutdown) says offline too.
    erin = Topics(NET, "erin")
    bus = make_bus(broker, erin)
    task = asyncio.create_task(bus.run())
    await asyncio.wait_for(bus.wait_connected(), TIMEOUT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await read_status(broker, erin))["body"] == {"state": "offline"}


@pytest.mark.asyncio
async def test_raising_handler_does_not_stop_delivery(broker: Mosquitto) -> None:
    alice, bob, inbox = pair(broker)

    async def handler(topic: Topic, msg: Message) -> None:
        if msg.body["n"] == 0:
            raise RuntimeError("handler bug")
        await inbox(topic, msg)

    bob.on("ll", handler)
    async with running(bob), running(alice):
        for i in range(3):
            alice.publish(ALICE.ll("bob"), "ll.test", {"n": i}, sign_with="bob")
        await inbox.wait_for(lambda items: len(items) >= 2)
    assert inbox.bodies() == [1, 2]
    assert bob.handler_errors == 1 and bob.received == 3


@pytest.mark.asyncio
async def test_telemetry_dropped_offline_and_queue_bounded(broker: Mosquitto) -> None:
    from qnode.daemon.bus.client import BusOverloaded
    bus = make_bus(broker, ALICE, keys={"bob": KEY}, max_queue=3)
    bus.publish(ALICE.telemetry, "telemetry", {"x": 1}, state_changing=False)
    assert bus.dropped_telemetry == 1
    for i in range(3):
        bus.publish(ALICE.ll("bob"), "ll.test", {"n": i}, sign_with="bob")
    with pytest.raises(BusOverloaded):
        bus.publish(ALICE.ll("bob"), "ll.test", {"n": 3}, sign_with="bob")
    assert bus.queued == 3 and bus.pending == 3
    async with running(bus):
        await asyncio.wait_for(bus.drain(), TIMEOUT_S)
        assert bus.acked == 3 and bus.pending == 0


@pytest.mark.asyncio
async def test_one_bad_message_does_not_kill_the_connection(broker: Mosquitto) -> None:
    """Finding 2: a herald with ``"sig": "é"`` killed both ends' connections at once, silently.
    Now it is rejected and counted, the connection stays, and the next herald is delivered."""
    bob = make_bus(broker, BOB, keys={"alice": KEY, "ab": KEY}, heralds={"ab": "alice"})
    inbox = Inbox()
    bob.on("herald", inbox)
    topic = ALICE.herald("ab")
    raw_sig = json.loads(encode(Message("HERALD", "alice", 1, {"n": 1}), KEY))
    raw_sig["sig"] = "é"
    async with running(bob), aiomqtt.Client(broker.host, broker.port,
                                            identifier="raw-station") as raw:
        await raw.publish(topic, json.dumps(raw_sig, ensure_ascii=False).encode(), qos=1)
        await raw.publish(topic, b'{"v": 1, "n": ' + b"1" * 5000 + b"}", qos=1)
        await raw.publish(topic, encode(Message("HERALD", "alice", 2, {"n": 2}), KEY), qos=1)
        await inbox.wait_for(lambda items: len(items) >= 1)
        assert bob.connected and bob.connections == 1 and bob.session_errors == 0
    assert dict(bob.rejected) == {"bad_signature": 1, "not_json": 1}
    assert inbox.bodies() == [2]


@pytest.mark.asyncio
async def test_an_unexpected_error_in_a_session_is_logged_and_reconnected(
        broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing but close() ends the bus: a bug that breaks one session is logged with its
    traceback and counted, and the bus connects again."""
    caplog.set_level(logging.ERROR, logger="qnode.bus")
    alice, bob, inbox = pair(broker)
    real = bob._subscribe_now
    calls = 0

    async def broken_once(client: Any, filters: list[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the first session")
        await real(client, filters)

    bob._subscribe_now = broken_once  # type: ignore[method-assign]
    async with running(alice), running(bob):
        alice.publish(ALICE.ll("bob"), "ll.test", {"n": 1}, sign_with="bob")
        await inbox.wait_for(lambda items: len(items) >= 1)
    assert bob.session_errors == 1 and bob.disconnects >= 1
    assert any("unexpected error" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.asyncio
async def test_a_flood_is_bounded_dropped_by_class_and_counted(broker: Mosquitto) -> None:
    """Finding 3: incoming messages were queued without limit. With a handler that cannot keep
    up, the inbound queue holds at most its limit of herald messages; the rest are dropped and
    counted, control messages keep their own room, and the bus stays connected."""
    limits = {"control": (50, 1 << 20), "bulk": (20, 1 << 20), "info": (5, 1 << 20)}
    bob = make_bus(broker, BOB, keys={"alice": KEY, "ab": KEY}, heralds={"ab": "alice"},
                   inbound_limits=limits)
    gate = asyncio.Event()
    heralds, control = Inbox(), Inbox()

    async def slow(topic: Topic, msg: Message) -> None:
        await gate.wait()
        await heralds(topic, msg)

    bob.on("herald", slow)
    bob.on("ll", control)
    alice = make_bus(broker, ALICE, keys={"bob": KEY, "ab": KEY})
    async with running(alice), running(bob):
        for i in range(300):
            alice.publish(ALICE.herald("ab"), "HERALD", {"n": i}, sign_with="ab")
        await alice.drain(TIMEOUT_S)
        alice.publish(ALICE.ll("bob"), "ll.test", {"n": "control"}, sign_with="bob")
        await alice.drain(TIMEOUT_S)

        async def until_dropped() -> None:
            while sum(bob.inbound.dropped.values()) < 300 - 21:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(until_dropped(), TIMEOUT_S)
        assert bob.inbound.qsize() <= 20 + 1 and bob.connected
        gate.set()
        await control.wait_for(lambda items: len(items) == 1)
        await heralds.wait_for(lambda items: len(items) == 300 - bob.inbound.dropped["herald"])
    dropped = bob.inbound.dropped["herald"]
    # one herald is in the handler, 20 wait: the rest were dropped, the earliest kept (FIFO)
    assert dropped == 300 - 21 and heralds.bodies() == list(range(21))
    assert bob.metrics()["dropped_incoming"] == {"herald": dropped}


@pytest.mark.asyncio
async def test_deferred_work_runs_once_after_a_burst(broker: Mosquitto) -> None:
    """A handler may defer its store-and-send to the end of the burst it is part of
    (group commit): the messages already queued behind a busy handler are handled first, then the
    deferred work runs once, however many of them asked for it. Outside the receiver (a direct
    ``deliver``) nothing is deferred."""
    alice, bob, _ = pair(broker)
    gate = asyncio.Event()
    handled: list[object] = []
    flushes: list[int] = []          # how many messages had been handled at each flush

    async def flush() -> None:
        flushes.append(len(handled))

    async def handler(topic: Topic, msg: Message) -> None:
        if not handled:
            await gate.wait()
        handled.append(msg.body["n"])
        assert bob.defer_until_idle(flush)

    bob.on("ll", handler)
    async with running(alice), running(bob):
        for i in range(50):
            alice.publish(ALICE.ll("bob"), "ll.test", {"n": i}, sign_with="bob")
        await alice.drain(TIMEOUT_S)

        async def until(pred: Callable[[], bool]) -> None:
            while not pred():
                await asyncio.sleep(0.02)
        # the first message waits in the handler, the other 49 in the queue behind it
        await asyncio.wait_for(until(lambda: bob.inbound.qsize() == 49), TIMEOUT_S)
        gate.set()
        await asyncio.wait_for(until(lambda: bool(flushes)), TIMEOUT_S)
        assert handled == list(range(50)) and flushes == [50]
        alice.publish(ALICE.ll("bob"), "ll.test", {"n": 50}, sign_with="bob")
        await asyncio.wait_for(until(lambda: len(flushes) == 2), TIMEOUT_S)
        assert flushes == [50, 51]
    assert not bob.defer_until_idle(flush)


@pytest.mark.asyncio
async def test_a_retained_advert_delivered_again_is_no_replay() -> None:
    """Routing adverts (``topo``) are retained and come again after every reconnect: they
    carry their own time (the receiver keeps the newest), so the replay window lets a copy
    through uncounted, as it does not for telemetry. Their identity signature is still
    required."""
    from qnode.daemon.bus.identity import NodeSigner, TrustStore

    key = NodeSigner.generate()
    bob = NodeBus(BOB, "127.0.0.1", 1, trust=TrustStore({"alice": key.public_key()}))
    inbox = Inbox()
    bob.on("topo", inbox)
    bob.on("telemetry", inbox)
    advert = encode(Message("TOPO", "alice", 7, {"time": 1.0, "ttl_s": 6.0, "links": []}),
                    signer=key)
    for _ in range(3):
        await bob.deliver(ALICE.topo, advert)
    assert len(inbox.items) == 3 and not bob.rejected
    record = encode(Message("telemetry", "alice", 8, {"node": "alice"}), signer=key)
    await bob.deliver(ALICE.telemetry, record)
    await bob.deliver(ALICE.telemetry, record)
    assert len(inbox.items) == 4 and bob.rejected == {"duplicate": 1}
    await bob.deliver(ALICE.topo, encode(Message("TOPO", "alice", 9, {"time": 2.0,
                                                                     "ttl_s": 6.0,
                                                                     "links": []})))
    assert len(inbox.items) == 4 and bob.rejected["unsigned"] == 1
