"""qnode.client against a real network: the link alice – herald1 – repeater of the demo bench
(DemoNetwork, no path) over mosquitto, with ``alice-app`` (purposes [9]) and ``alice-other`` at
alice and ``rep-app`` (purposes [7]) at the repeater — the setting of
tests/system/test_app_service.py, spoken to through the client instead of raw MQTT.

One network serves the whole module. It shows that:

- ``create_keep`` yields typed :class:`~qnode.client.Pair` objects with the request's id and
  index, and the repeater's application receiving on the purpose gets the same pairs (ids,
  Bell states), from either end of the link;
- leaving the iterator early — ``cancel()``, ``break``, a cancelled task — sends CANCEL: the
  node counts each as a cancelled request and holds none live;
- the node's refusals are typed errors with its code (``unknown_remote``, ``unsupported`` for
  ``measure``, ``not_authorised`` for a purpose that is not the application's), a deadline is
  :class:`~qnode.client.RequestExpired`, and malformed replies are ignored and counted without
  disturbing a request;
- the blocking wrapper does the same for scripts;
- ``qnode request`` and ``qnode listen`` print JSON lines and exit 0 on DONE, non-zero with the
  node's code otherwise, and an interrupted request is cancelled (exit 130).
"""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from qnode.client import (
    Acceptance,
    ApplicationInfo,
    BlockingClient,
    ConnectionInfo,
    NodeClient,
    Pair,
    PairStream,
    RequestError,
    RequestExpired,
)
from qnode.daemon.tools.demo import DemoNetwork

from support.mosquitto import Mosquitto
from support.oracle import telemetry_until

NODES = ("herald1", "alice", "repeater")
LINK = "alice-repeater"
NETWORK = "demo"
APPS = {
    "alice": "[applications.alice-app]\nweight = 1.0\npurposes = [9]\n\n"
             "[applications.alice-other]\nweight = 1.0\n",
    "repeater": "[applications.rep-app]\nweight = 1.0\npurposes = [7]\n",
}
#: generous: events come in well under a second on an idle machine
WAIT_S = 60.0
#: pairs of a request that is still live when the test leaves it after its first pair (the link
#: delivers ~3 pairs/s: its 3 qubits are the application's for 1 s each); few enough for the
#: node's admission by supply
LONG = 50
#: refusals that say "not yet": the far end's LISTEN not announced here yet, or the pool's
#: supply over the last seconds too low for the request (it varies)
TRANSIENT = ("no_listener", "rate_unreachable")


@dataclass
class Network:
    port: int
    url: str
    connection: Path


def _ready(latest: dict[str, dict]) -> bool:
    """Both ends ready, their link's estimate from test pairs."""
    return all(latest.get(n, {}).get("state") == "ready"
               and latest[n].get("links", {}).get(LINK, {}).get("fidelity_source") == "tests"
               for n in ("alice", "repeater"))


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    tmp = tmp_path_factory.mktemp("client")
    with Mosquitto(tmp / "mosquitto") as broker:
        url = f"mqtt://127.0.0.1:{broker.port}"
        net = DemoNetwork(tmp / "work", url, tmp / "logs", nodes=NODES, paths=False,
                          max_pair_age_s=3.0, delivered_hold_s=1.0, qubits_per_link=3,
                          extra=APPS)
        try:
            net.start()
            asyncio.run(telemetry_until(broker.port, _ready, 240))
            connection = ConnectionInfo(url, NETWORK, NODES, {
                "alice-app": ApplicationInfo("alice-app", "alice", (9,), "alice-app"),
                "alice-other": ApplicationInfo("alice-other", "alice", (), "alice-other"),
                "rep-app": ApplicationInfo("rep-app", "repeater", (7,), "rep-app"),
            }).write(tmp / "connection.json")
            yield Network(broker.port, url, connection)
        finally:
            net.close()
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                     for p in sorted((tmp / "logs").glob("*.log")))
    assert all(c == 0 for c in net.exit_codes.values()), (net.exit_codes, logs)


def _client(net: Network, app: str) -> NodeClient:
    return NodeClient.from_connection(net.connection, app)


async def _keep(client: NodeClient, remote: str, pairs: int,
                **options: Any) -> tuple[PairStream, Acceptance]:
    """A started request; a :data:`TRANSIENT` refusal is retried for up to 30 s."""
    for _ in range(60):
        stream = client.create_keep(remote, pairs, **options)
        try:
            return stream, await stream.start()
        except RequestError as exc:
            if exc.code not in TRANSIENT:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("the request was refused for 30 s")


async def _next(it: Any, timeout_s: float = WAIT_S) -> Pair:
    return await asyncio.wait_for(anext(it), timeout_s)


async def _apps_telemetry(port: int, done: Any = lambda apps: True) -> dict[str, Any]:
    latest = await telemetry_until(port, lambda t: "apps" in t.get("alice", {})
                                   and done(t["alice"]["apps"]), WAIT_S)
    return latest["alice"]["apps"]


@pytest.mark.asyncio
async def test_create_keep_yields_typed_pairs_that_the_far_end_receives(network):
    async with _client(network, "alice-app") as alice, _client(network, "rep-app") as rep:
        async with rep.receive(7) as theirs, alice.receive(9) as alices:
            assert theirs.active
            stream, accepted = await _keep(alice, "repeater", 3, purpose=7, timeout_s=WAIT_S)
            assert accepted.request_id == stream.request_id and accepted.queued >= 1
            mine = [p async for p in stream]
            assert stream.outcome is not None and stream.outcome.status == "done"
            assert stream.outcome.pairs == 3
            far = [await _next(theirs) for _ in mine]

            # the other end asks (the repeater is not the link's allocator): both ends told
            stream2, _ = await _keep(rep, "alice", 2, purpose=9, timeout_s=WAIT_S)
            mine2 = [p async for p in stream2]
            far2 = [await _next(alices) for _ in mine2]
        assert not theirs.active
    for p in mine:
        assert isinstance(p, Pair) and p.kind == "keep" and p.pool == LINK
        assert p.remote == "repeater" and p.purpose == 7 and p.request_id == stream.request_id
        assert 0.0 < p.fidelity <= 1.0 and p.bell_state in ("phi+", "phi-", "psi+", "psi-")
        assert p.qubit is not None and p.hold_ms is not None and p.hold_ms > 0
        assert p.hold_s == p.hold_ms / 1000
    assert [p.index for p in mine] == [1, 2, 3]
    assert [(p.pair_id, p.bell_state) for p in far] == [(p.pair_id, p.bell_state)
                                                       for p in mine]
    assert all(p.request_id is None and p.remote_application == "alice-app"
               and p.remote == "alice" for p in far)
    assert [p.pair_id for p in far2] == [p.pair_id for p in mine2] and len(mine2) == 2
    assert {p.remote_application for p in far2} == {"rep-app"}
    assert mine[0].to_dict()["pair_id"] == mine[0].pair_id and "received_at" not in \
        mine[0].to_dict()
    assert not alice.ignored and not rep.ignored, (alice.ignored, rep.ignored)


@pytest.mark.asyncio
async def test_leaving_a_request_early_cancels_it_at_the_node(network):
    before = (await _apps_telemetry(network.port)).get("requests_total", {}).get(
        "cancelled", 0)
    async with _client(network, "alice-app") as alice, _client(network, "rep-app") as rep:
        async with rep.receive(7):
            # 1. cancel(): the node's CANCELLED is the outcome
            stream, _ = await _keep(alice, "repeater", LONG, purpose=7, timeout_s=WAIT_S)
            first = await _next(stream)
            outcome = await stream.cancel()
            assert outcome is not None and outcome.status == "cancelled", outcome
            assert outcome.pairs >= 1 and first.index == 1
            assert [p async for p in stream] == []          # left: nothing more

            # 2. break out of `async for`: the iterator is garbage, and CANCEL goes out
            async for _pair in alice.create_keep("repeater", LONG, purpose=7,
                                                 timeout_s=WAIT_S):
                break

            # 3. the task reading the iterator is cancelled
            got: list[Pair] = []

            async def consume() -> None:
                async for p in alice.create_keep("repeater", LONG, purpose=7,
                                                 timeout_s=WAIT_S):
                    got.append(p)

            task = asyncio.create_task(consume())
            async with asyncio.timeout(WAIT_S):
                while not got:
                    await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

            apps = await _apps_telemetry(network.port, lambda a: a.get(
                "requests_total", {}).get("cancelled", 0) >= before + 3
                and a.get("requests_live") == 0)
    assert apps["requests_total"]["cancelled"] == before + 3, apps
    # the CANCELLED replies found their requests; no request is left at the node
    assert not alice.ignored.get("unknown_request"), alice.ignored


@pytest.mark.asyncio
async def test_refusals_deadlines_and_malformed_replies_are_typed_or_ignored(network):
    async with _client(network, "alice-app") as alice, _client(network, "rep-app") as rep:
        with pytest.raises(RequestError) as unknown:
            async for _ in alice.create_keep("nowhere", 1, purpose=7):
                pass
        assert unknown.value.code == "unknown_remote" and unknown.value.reason
        assert unknown.value.pairs == 0 and unknown.value.outcome.status == "error"

        measure = alice.create_measure("repeater", 1, purpose=7)
        with pytest.raises(RequestError) as unsupported:
            await measure.start()
        assert unsupported.value.code == "unsupported"
        assert measure.outcome is not None and measure.outcome.code == "unsupported"

        with pytest.raises(RequestError) as refused:
            await rep.receive(8).start()                 # rep-app may take only 7
        assert refused.value.code == "not_authorised" and refused.value.request_id is None

        with pytest.raises(ValueError, match="pairs"):
            alice.create_keep("repeater", 0)             # checked before it is sent

        async with rep.receive(7):
            # a deadline: a pair at the link's estimate itself, which pairs no longer have by
            # delivery (both halves decay from their binding), waits until RequestExpired
            easy, accepted = await _keep(alice, "repeater", 1, purpose=7, timeout_s=WAIT_S)
            assert len([p async for p in easy]) == 1
            hard = accepted.fidelity_estimate
            for _ in range(20):          # the estimate moves as test pairs come: take it as is
                assert hard is not None
                stream = alice.create_keep("repeater", 1, purpose=7, timeout_s=1.5,
                                           min_fidelity=hard)
                try:
                    await stream.start()
                    break
                except RequestError as exc:
                    assert exc.code == "fidelity_unreachable", exc
                    hard = exc.fidelity_estimate
            with pytest.raises(RequestExpired) as expired:
                async for _ in stream:
                    pass
            assert expired.value.code == "expired" and expired.value.pairs == 0
            assert stream.outcome is not None and stream.outcome.status == "expired"

            # malformed and stray replies on alice-app's topic: ignored, counted, harmless
            stream, _ = await _keep(alice, "repeater", 2, purpose=7, timeout_s=WAIT_S)
            topic = alice.reply_topic
            junk = [b"not json", b"[1, 2]",
                    json.dumps({"v": 1, "type": "PAIR", "sender": "alice", "id": 1, "ts": 0,
                                "body": {"pool": "x"}}).encode(),
                    json.dumps({"v": 1, "type": "DONE", "sender": "mallory", "id": 2, "ts": 0,
                                "body": {"request_id": stream.request_id,
                                         "pairs": 0}}).encode(),
                    json.dumps({"v": 1, "type": "DONE", "sender": "alice", "id": 3, "ts": 0,
                                "body": {"request_id": "nobody", "pairs": 0}}).encode()]
            async with aiomqtt.Client("127.0.0.1", network.port) as raw:
                for payload in junk:
                    await raw.publish(topic, payload, qos=1)
            pairs = [p async for p in stream]
            assert len(pairs) == 2 and stream.outcome is not None
            assert stream.outcome.status == "done"
            async with asyncio.timeout(WAIT_S):
                while sum(alice.ignored.values()) < len(junk):
                    await asyncio.sleep(0.05)
    assert alice.ignored == {"not_json": 1, "bad_envelope": 1, "bad_reply": 1,
                             "wrong_sender": 1, "unknown_request": 1}, alice.ignored


def test_the_blocking_client_serves_scripts(network):
    with BlockingClient.from_connection(network.connection, "rep-app") as rep, \
            BlockingClient.from_connection(network.connection, "alice-app",
                                           reply_timeout_s=WAIT_S) as alice:
        with rep.receive(7) as theirs:
            theirs.start()
            mine = None
            for _ in range(60):
                try:
                    mine = list(alice.create_keep("repeater", 3, purpose=7, timeout_s=WAIT_S))
                    break
                except RequestError as exc:
                    assert exc.code in TRANSIENT, exc
                    time.sleep(0.5)
            assert mine is not None and [p.index for p in mine] == [1, 2, 3]
            far = [next(theirs) for _ in mine]
            assert [p.pair_id for p in far] == [p.pair_id for p in mine]

            with alice.create_keep("repeater", LONG, purpose=7, timeout_s=WAIT_S) as pairs:
                assert next(pairs).index == 1
            assert pairs.outcome is not None and pairs.outcome.status == "cancelled"
            assert list(pairs) == []

            with pytest.raises(RequestError) as exc:
                next(alice.create_measure("repeater", 1, purpose=7))
            assert exc.value.code == "unsupported"


# ------------------------------------------------------------------ the command line

def _qnode(*args: str) -> list[str]:
    return [sys.executable, "-m", "qnode.daemon.cli", *args]


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _request(net: Network, *args: str, timeout_s: float = 120) -> tuple[int, list[dict]]:
    """``qnode request`` as alice-app; a :data:`TRANSIENT` refusal is retried for up to
    30 s."""
    for _ in range(30):
        run = subprocess.run(_qnode("request", "--connection", str(net.connection), "--app",
                                    "alice-app", *args), capture_output=True, text=True,
                             timeout=timeout_s)
        lines = _lines(run.stdout)
        assert lines, run.stderr
        if lines[-1].get("code") not in TRANSIENT:
            return run.returncode, lines
        time.sleep(1)
    raise AssertionError(f"refused for 30 s: {lines}")


class _Listener:
    """``qnode listen`` as rep-app in the background, its lines read as they come."""

    def __init__(self, net: Network, *args: str):
        self.proc = subprocess.Popen(
            _qnode("listen", "--connection", str(net.connection), "--app", "rep-app",
                   "--purpose", "7", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()        # the listener prints within WAIT_S
        assert text, self.proc.stderr.read() if self.proc.stderr else ""
        return json.loads(text)

    def finish(self) -> tuple[int, list[dict]]:
        out, err = self.proc.communicate(timeout=WAIT_S)
        return self.proc.returncode, _lines(out)


def test_qnode_request_and_listen_print_json_lines_and_exit_codes(network):
    listener = _Listener(network, "--count", "3")
    try:
        assert listener.line() == {"event": "listening", "purpose": 7}
        code, lines = _request(network, "--remote", "repeater", "--pairs", "3", "--purpose",
                               "7", "--timeout-s", str(WAIT_S))
        assert code == 0, lines
        assert [line["event"] for line in lines] == ["accepted", "pair", "pair", "pair",
                                                     "done"]
        assert lines[-1]["pairs"] == 3 and lines[1]["index"] == 1
        assert lines[1]["pool"] == LINK and lines[1]["request_id"] == lines[0]["request_id"]
        lcode, llines = listener.finish()
    finally:
        if listener.proc.poll() is None:
            listener.proc.kill()
    assert lcode == 0, llines
    assert [line["event"] for line in llines] == ["pair", "pair", "pair", "unlistened"]
    assert [line["pair_id"] for line in llines[:3]] == [line["pair_id"] for line in lines[1:4]]
    assert llines[0]["remote_application"] == "alice-app"

    code, lines = _request(network, "--remote", "nowhere", "--pairs", "1")
    assert code == 1 and lines[-1]["event"] == "error", lines
    assert lines[-1]["code"] == "unknown_remote" and lines[-1]["reason"]
    code, lines = _request(network, "--remote", "repeater", "--pairs", "1", "--kind",
                           "measure")
    assert code == 1 and lines[-1]["code"] == "unsupported", lines
    bad = subprocess.run(_qnode("request", "--connection", str(network.connection), "--app",
                                "nobody-app", "--remote", "repeater", "--pairs", "1"),
                         capture_output=True, text=True, timeout=WAIT_S)
    assert bad.returncode == 2 and "nobody-app" in bad.stderr and not bad.stdout


def test_an_interrupted_qnode_request_is_cancelled(network):
    listener = _Listener(network)
    request = None
    try:
        assert listener.line()["event"] == "listening"
        for _ in range(30):
            request = subprocess.Popen(
                _qnode("request", "--connection", str(network.connection), "--app",
                       "alice-app", "--remote", "repeater", "--pairs", str(LONG), "--purpose",
                       "7", "--timeout-s", str(WAIT_S)), stdout=subprocess.PIPE, text=True)
            assert request.stdout is not None
            first = json.loads(request.stdout.readline())
            if first.get("code") not in TRANSIENT:
                break
            request.wait(WAIT_S)
            time.sleep(1)
        assert request is not None and first["event"] == "accepted", first
        assert request.stdout is not None
        assert json.loads(request.stdout.readline())["event"] == "pair"
        request.send_signal(signal.SIGINT)
        out, _ = request.communicate(timeout=WAIT_S)
        last = _lines(out)[-1]
        assert request.returncode == 130, out
        assert last["event"] == "cancelled" and last["confirmed"] is True, last
        assert last["request_id"] == first["request_id"] and last["pairs"] >= 1
        assert listener.line()["event"] == "pair"
        listener.proc.send_signal(signal.SIGINT)
        lcode, llines = listener.finish()
        assert lcode == 0 and llines[-1]["event"] == "unlistened", llines
    finally:
        for p in (request, listener.proc):
            if p is not None and p.poll() is None:
                p.kill()
