"""OPERATE and DATA through the client, against a real mosquitto and a scripted node ``alice``
of network ``lab``.

The script answers an OPERATE by its pair: pair 1 with a RESULT (an outcome per ``meas`` gate:
1 for the pair's qubit, 0 for the scratch qubit), sent after a stray RESULT of another request
and one naming another pair, which the client drops and counts; pair 2 with ``ERROR
unknown_pair``; pair 3 not at all. It accepts a REQUEST and leaves it live until its CANCEL, so
that an operation's ERROR can be seen not to reach a request. It shows that:

- ``operate`` sends the gates of :mod:`qnode.client.gates` as the protocol's OPERATE, with a
  fresh request id, and returns the node's outcomes as an :class:`~qnode.client.Operation`;
  the node's ERROR is a :class:`~qnode.client.RequestError` with its code and the OPERATE's
  id, and silence a :class:`~qnode.client.NoReply`;
- applications exchange DATA; a forged one (its envelope's sender not the topic's), malformed
  or oversized ones are ignored and counted; the buffer keeps the newest ``max_buffered``;
- the blocking client does the same;
- through the shipped broker ACL, the client's subscription to its DATA is granted, and DATA
  reaches only its receiver.

Waits are generous and wait for events (a loaded machine is slow); nothing asserts a timing.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from qnode.client import (
    AUX,
    PAIR,
    BlockingClient,
    DataMessage,
    NoData,
    NodeClient,
    NoReply,
    Operation,
    Pair,
    RequestError,
    gates,
)
from qnode.daemon.apps.protocol import MAX_DATA_BYTES, Operate

from support import REPO
from support.certs import Pki
from support.mosquitto import Mosquitto

NETWORK = "lab"
NODE = "alice"
#: generous: everything here happens in well under a second on an idle machine
WAIT_S = 60.0
ACL = REPO / "systemd" / "mosquitto-qnode.acl"
CONF = REPO / "systemd" / "mosquitto-qnode.conf"


class ScriptedNode:
    """The node ``alice``: answers OPERATE and REQUEST/CANCEL as the module docstring says, and
    keeps the OPERATE bodies it read (``operates``)."""

    def __init__(self, port: int, tls_context: ssl.SSLContext | None = None):
        self.port, self.tls_context = port, tls_context
        self.operates: list[dict[str, Any]] = []
        self.subscribed = asyncio.Event()
        self._ids = iter(range(1, 1_000_000))

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier=NODE,
                                  tls_context=self.tls_context) as c:
            await c.subscribe(f"qnet/v1/{NETWORK}/+/req/{NODE}", qos=1)
            self.subscribed.set()
            async for m in c.messages:
                assert isinstance(m.payload, bytes | bytearray)
                env = json.loads(m.payload)
                await self._answer(c, env["sender"], env["type"], env["body"])

    async def _reply(self, c: aiomqtt.Client, app: str, type_: str,
                     body: dict[str, Any]) -> None:
        payload = json.dumps({"v": 1, "type": type_, "sender": NODE, "id": next(self._ids),
                              "ts": time.time(), "body": body})
        await c.publish(f"qnet/v1/{NETWORK}/{NODE}/app/{app}", payload, qos=1)

    async def _answer(self, c: aiomqtt.Client, app: str, type_: str,
                      body: dict[str, Any]) -> None:
        rid = body.get("request_id")
        if type_ == "REQUEST":
            await self._reply(c, app, "ACCEPTED", {"request_id": rid, "queued": 1})
        elif type_ == "CANCEL":
            await self._reply(c, app, "CANCELLED", {"request_id": rid, "pairs": 0})
        elif type_ == "OPERATE":
            self.operates.append(body)
            pool, pair_id = body["pool"], body["pair_id"]
            if pair_id == 1:
                outcomes = [1 if g["qubit"] == PAIR else 0 for g in body["ops"]
                            if g["gate"] == "meas"]
                released = bool(body.get("release")) or any(
                    g["gate"] == "meas" and g["qubit"] == PAIR for g in body["ops"])
                result = {"request_id": rid, "pool": pool, "pair_id": pair_id,
                          "outcomes": outcomes, "released": released, "fidelity": 0.875}
                if not released:
                    result["hold_ms"] = 400
                # hostile first: another request's RESULT, then one naming another pair
                await self._reply(c, app, "RESULT", {**result, "request_id": "nobody"})
                await self._reply(c, app, "RESULT", {**result, "pair_id": 99})
                await self._reply(c, app, "RESULT", result)
            elif pair_id == 2:
                await self._reply(c, app, "ERROR", {
                    "request_id": rid, "code": "unknown_pair",
                    "reason": f"{app} holds no pair {pool}/{pair_id}"})
            # pair 3: silence


@contextlib.asynccontextmanager
async def _running(node: ScriptedNode) -> AsyncIterator[ScriptedNode]:
    task = asyncio.create_task(node.run())
    try:
        async with asyncio.timeout(WAIT_S):
            waiter = asyncio.create_task(node.subscribed.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        if task.done():
            task.result()                   # the script failed: say why
        yield node
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _client(broker: Mosquitto, application: str, **options: Any) -> NodeClient:
    return NodeClient(f"mqtt://127.0.0.1:{broker.port}", network=NETWORK,
                      application=application, node=NODE, **options)


async def _until(condition: Any, what: str) -> None:
    """Wait (up to WAIT_S) until ``condition()`` holds."""
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


def test_the_gate_builders_make_the_protocols_gates_and_check_their_arguments():
    assert gates.rot(PAIR, "y", 0.5) == {"gate": "rot", "qubit": "pair", "axis": "Y",
                                         "angle_rad": 0.5}
    assert gates.h(AUX) == {"gate": "h", "qubit": "aux"}
    assert [gates.x(PAIR)["gate"], gates.y(PAIR)["gate"], gates.z(PAIR)["gate"]] == \
        ["x", "y", "z"]
    assert gates.cnot(AUX, PAIR) == {"gate": "cnot", "control": "aux", "target": "pair"}
    assert gates.meas(PAIR) == {"gate": "meas", "qubit": "pair", "basis": "Z"}
    assert gates.meas(AUX, "x")["basis"] == "X"
    with pytest.raises(ValueError, match="qubit"):
        gates.h("q0")
    with pytest.raises(ValueError, match="axis"):
        gates.rot(PAIR, "W", 0.1)
    for angle in (math.nan, 5 * math.pi, True, "1"):
        with pytest.raises(ValueError, match="angle_rad"):
            gates.rot(PAIR, "X", angle)       # type: ignore[arg-type]
    with pytest.raises(ValueError, match="control and target"):
        gates.cnot(PAIR, PAIR)
    with pytest.raises(ValueError, match="basis"):
        gates.meas(PAIR, "W")
    assert gates.send(PAIR, "bob") == {"gate": "send", "qubit": "pair", "to": "bob"}
    assert gates.receive("alice", 7) == {"gate": "receive", "qubit": "aux", "from": "alice",
                                         "photon": 7}
    with pytest.raises(ValueError, match="to"):
        gates.send(PAIR, "bob/x")
    for photon in (-1, True, 1.5, 2**63):
        with pytest.raises(ValueError, match="photon"):
            gates.receive("alice", photon)    # type: ignore[arg-type]
    for g in (gates.send(AUX, "n-1"), gates.receive("n_2", 0)):   # what the node accepts
        assert Operate.from_dict({"type": "OPERATE", "request_id": "r", "pool": "p",
                                  "pair_id": 0, "ops": [g]}).ops == [g]


@pytest.mark.asyncio
async def test_operate_returns_outcomes_and_raises_the_nodes_error_or_its_silence(broker):
    async with _running(ScriptedNode(broker.port)) as node, \
            _client(broker, "alice-app", reply_timeout_s=WAIT_S) as alice:
        # a live request: the operation's ERROR below must not reach it
        stream = alice.create_keep("bob", 5, timeout_s=WAIT_S)
        accepted = await stream.start()

        pair = Pair("alice-bob", 1, "bob", 0, "phi+", 0.9, "keep", qubit=0, hold_ms=900)
        ops = [gates.rot(AUX, "Y", 0.3), gates.cnot(AUX, PAIR), gates.h(AUX),
               gates.meas(AUX), gates.meas(PAIR, "X")]
        result = await alice.operate(pair, ops)
        assert isinstance(result, Operation)
        assert (result.pool, result.pair_id, result.outcomes) == ("alice-bob", 1, (0, 1))
        assert result.released and result.hold_ms is None and result.hold_s is None
        assert result.fidelity == 0.875 and result.to_dict()["fidelity"] == 0.875
        assert result.to_dict()["outcomes"] == [0, 1]

        kept = await alice.operate(("alice-bob", 1), [gates.z(PAIR)])
        assert kept.outcomes == () and not kept.released and kept.hold_s == 0.4

        with pytest.raises(RequestError) as refused:
            await alice.operate(("alice-bob", 2), [gates.meas(PAIR)], release=True)
        assert refused.value.code == "unknown_pair" and "alice-bob/2" in refused.value.reason
        assert refused.value.request_id == node.operates[-1]["request_id"]

        with pytest.raises(NoReply) as silent:
            await alice.operate(("alice-bob", 3), [], timeout_s=1.0)
        assert silent.value.code == "no_reply"

        # checked before anything is sent, as the node would
        with pytest.raises(ValueError, match="ops"):
            await alice.operate(pair, [{"gate": "swap", "qubit": "pair"}])
        with pytest.raises(ValueError, match="pair"):
            await alice.operate("alice-bob", [])          # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout_s"):
            await alice.operate(pair, [], timeout_s=0)

        # the request did not see the operation's ERROR; it is live until cancelled
        assert stream.outcome is None and accepted.request_id == stream.request_id
        outcome = await stream.cancel()
        assert outcome is not None and outcome.status == "cancelled"

        # both RESULTs of pair 1 were preceded by a stray and a mismatched one
        await _until(lambda: alice.ignored["mismatch"] >= 2, "the mismatched RESULTs")
        await _until(lambda: alice.ignored["unknown_request"] >= 2, "the stray RESULTs")
        assert alice.ignored == {"mismatch": 2, "unknown_request": 2}, alice.ignored

    assert [o["ops"] for o in node.operates[:1]] == [ops]
    assert [o.get("release", False) for o in node.operates] == [False, False, True, False]
    rids = [o["request_id"] for o in node.operates]
    assert len(set(rids)) == len(rids) and stream.request_id not in rids
    assert [o["request_id"] for o in node.operates[:2]] == [result.request_id,
                                                           kept.request_id]


@pytest.mark.asyncio
async def test_two_applications_exchange_data_and_forgeries_are_ignored(broker):
    async with _client(broker, "alice-app") as alice, _client(broker, "bob-app") as bob:
        await alice.send_data("bob-app", {"bits": [1, 0], "note": "ünïcode"})
        got = await bob.receive_data(WAIT_S)
        assert isinstance(got, DataMessage)
        assert got.sender == "alice-app" and got.data == {"bits": [1, 0], "note": "ünïcode"}
        await bob.send_data("alice-app", {"ack": True})
        back = await alice.receive_data(WAIT_S)
        assert back.sender == "bob-app" and back.data == {"ack": True}

        # forged, malformed and oversized DATA to bob-app: ignored and counted
        def env(sender: str, body: Any, type_: str = "DATA") -> bytes:
            return json.dumps({"v": 1, "type": type_, "sender": sender, "id": 1,
                               "ts": time.time(), "body": body}).encode()

        base = f"qnet/v1/{NETWORK}"
        junk = [
            (f"{base}/mallory/to/bob-app", env("alice-app", {"data": {"bits": [0, 0]}})),
            (f"{base}/alice-app/to/bob-app", b"not json"),
            (f"{base}/alice-app/to/bob-app", env("alice-app", {"data": [1, 0]})),
            (f"{base}/alice-app/to/bob-app", env("alice-app", {"data": {}, "more": 1})),
            (f"{base}/alice-app/to/bob-app", env("alice-app", {"data": {}}, "REQUEST")),
            (f"{base}/alice-app/to/bob-app",
             env("alice-app", {"data": {"x": "y" * MAX_DATA_BYTES}})),
        ]
        async with aiomqtt.Client("127.0.0.1", broker.port) as raw:
            for topic, payload in junk:
                await raw.publish(topic, payload, qos=1)
        await alice.send_data("bob-app", {"seq": 1})
        await _until(lambda: sum(bob.ignored.values()) >= len(junk), "the junk")
        assert bob.ignored == {"data_wrong_sender": 1, "data_not_json": 1, "data_bad": 2,
                               "data_bad_envelope": 1, "data_oversized": 1}, bob.ignored
        it = bob.data()
        assert (await asyncio.wait_for(anext(it), WAIT_S)).data == {"seq": 1}
        await it.aclose()
        with pytest.raises(NoData) as nothing:
            await bob.receive_data(0.1)
        assert nothing.value.code == "no_data" and isinstance(nothing.value, TimeoutError)
        assert bob.data_received == 2 and bob.discarded == 0 and not alice.ignored

        # checked before anything is sent
        for bad, problem in (([1, 2], "object"), ({"x": math.nan}, "JSON"),
                             ({"x": "y" * MAX_DATA_BYTES}, "bytes"),
                             ({"x": object()}, "JSON")):
            with pytest.raises(ValueError, match=problem):
                await alice.send_data("bob-app", bad)     # type: ignore[arg-type]
        with pytest.raises(ValueError, match="application"):
            await alice.send_data("bob app", {})


@pytest.mark.asyncio
async def test_unread_data_keeps_the_newest_max_buffered(broker):
    async with _client(broker, "alice-app") as alice, \
            _client(broker, "bob-app", max_buffered=2) as bob:
        for seq in range(5):
            await alice.send_data("bob-app", {"seq": seq})
        await _until(lambda: bob.data_received == 5, "five DATA")
        assert bob.discarded == 3 and bob.data_waiting == 2
        assert [(await bob.receive_data(WAIT_S)).data["seq"] for _ in range(2)] == [3, 4]


@contextlib.contextmanager
def _node_in_a_thread(port: int) -> Iterator[ScriptedNode]:
    """The scripted node on an event loop of its own (for the blocking client's tests)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="scripted-node", daemon=True)
    thread.start()
    node = ScriptedNode(port)

    async def start() -> asyncio.Task[None]:
        task = asyncio.create_task(node.run())
        waiter = asyncio.create_task(node.subscribed.wait())
        await asyncio.wait({task, waiter}, timeout=WAIT_S,
                           return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()
        return task

    async def stop(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        task = asyncio.run_coroutine_threadsafe(start(), loop).result(WAIT_S + 10)
        try:
            yield node
        finally:
            asyncio.run_coroutine_threadsafe(stop(task), loop).result(WAIT_S)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()


def test_the_blocking_client_operates_and_exchanges_data(broker):
    url = f"mqtt://127.0.0.1:{broker.port}"
    with _node_in_a_thread(broker.port), \
            BlockingClient(url, network=NETWORK, application="alice-app", node=NODE,
                           reply_timeout_s=WAIT_S) as alice, \
            BlockingClient(url, network=NETWORK, application="bob-app", node=NODE) as bob:
        result = alice.operate(("alice-bob", 1), [gates.h(PAIR), gates.meas(PAIR)])
        assert result.outcomes == (1,) and result.released
        with pytest.raises(RequestError) as refused:
            alice.operate(("alice-bob", 2), [gates.meas(PAIR)])
        assert refused.value.code == "unknown_pair"
        with pytest.raises(NoReply):
            alice.operate(("alice-bob", 3), [], timeout_s=1.0)

        alice.send_data("bob-app", {"m": list(result.outcomes)})
        got = bob.receive_data(WAIT_S)
        assert got.sender == "alice-app" and got.data == {"m": [1]}
        with pytest.raises(NoData):
            bob.receive_data(0.1)


# ------------------------------------------------------------------ the shipped ACL

@pytest.fixture
def pki_broker(tmp_path: Path) -> Iterator[tuple[Pki, Mosquitto]]:
    pki = Pki(tmp_path / "pki")
    broker = Mosquitto(tmp_path / "mosquitto", listener_options=pki.shipped_options(CONF, ACL),
                       allow_anonymous=False)
    with broker:
        yield pki, broker


def _tls_client(pki: Pki, broker: Mosquitto, application: str) -> NodeClient:
    cert, key = pki.client(application)
    return NodeClient(f"mqtts://127.0.0.1:{broker.port}", network=NETWORK,
                      application=application, node=NODE, ca_file=str(pki.ca),
                      client_cert=str(cert), client_key=str(key), reply_timeout_s=WAIT_S)


@pytest.mark.asyncio
async def test_through_the_shipped_acl_data_reaches_only_its_receiver(pki_broker):
    pki, broker = pki_broker
    node_cert, node_key = pki.client(NODE)
    node_ctx = ssl.create_default_context(cafile=str(pki.ca))
    node_ctx.load_cert_chain(str(node_cert), str(node_key))
    eve_cert, eve_key = pki.client("eve-app")
    eve_ctx = ssl.create_default_context(cafile=str(pki.ca))
    eve_ctx.load_cert_chain(str(eve_cert), str(eve_key))
    base = f"qnet/v1/{NETWORK}"
    async with _running(ScriptedNode(broker.port, node_ctx)), \
            _tls_client(pki, broker, "alice-app") as alice, \
            _tls_client(pki, broker, "bob-app") as bob, \
            aiomqtt.Client("127.0.0.1", broker.port, tls_context=eve_ctx,
                           identifier="eve-app-snoop") as eve:
        result = await alice.operate(("alice-bob", 1), [gates.meas(PAIR)])
        assert result.outcomes == (1,)

        # eve tries to read bob's DATA (the broker refuses, or delivers nothing) and her own
        await eve.subscribe([(f"{base}/+/to/bob-app", 1), (f"{base}/+/to/eve-app", 1)])
        await alice.send_data("bob-app", {"to": "bob"})
        await alice.send_data("eve-app", {"to": "eve"})
        async with asyncio.timeout(WAIT_S):
            async for m in eve.messages:
                # in order from one publisher: bob's, had it come, would be first
                assert str(m.topic) == f"{base}/alice-app/to/eve-app", m.topic
                break
        got = await bob.receive_data(WAIT_S)
        assert got.sender == "alice-app" and got.data == {"to": "bob"}

        # eve cannot publish as alice (the broker drops it): bob sees only eve's own
        forged = {"v": 1, "type": "DATA", "sender": "alice-app", "id": 1, "ts": time.time(),
                  "body": {"data": {"to": "bob", "forged": True}}}
        await eve.publish(f"{base}/alice-app/to/bob-app", json.dumps(forged), qos=1)
        await eve.publish(f"{base}/eve-app/to/bob-app", json.dumps(
            {**forged, "sender": "eve-app", "id": 2}), qos=1)
        got = await bob.receive_data(WAIT_S)
        assert got.sender == "eve-app" and got.data["forged"] is True
        assert bob.data_received == 2 and bob.data_waiting == 0
        # the script's stray and mismatched RESULTs came before its RESULT
        assert alice.ignored == {"unknown_request": 1, "mismatch": 1}, alice.ignored
        assert not bob.ignored, bob.ignored

