"""Two memory daemons (separate processes) on one K-type link over a real mosquitto broker.

The test plays the herald station: it numbers successes and publishes signed HERALD batches, and
loses some on purpose (so the ends must EXPIRE the gaps), sends hostile payloads, and restarts
the broker mid-run. After SIGTERM, both ends' SQLite state lists exactly the same pair ids.
Also: the systemd notify protocol of a whole daemon (READY, WATCHDOG, STOPPING).
"""
from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from qnode.daemon.bus.client import NodeBus
from qnode.daemon.bus.identity import NodeSigner
from qnode.daemon.bus.topics import Topics
from qnode.daemon.linklayer import HeraldStation, LinkEnd
from qnode.daemon.runtime.state import StateStore

from support.daemon_harness import Daemon, identity, k_link_configs, node_config, telemetry_of
from support.mosquitto import Mosquitto

LINK = "alice-bob"
KEY = b"k" * 32


def _configs(tmp: Path, port: int, *, prometheus_port: int = 0, **memory: Any) -> dict[str, Path]:
    return k_link_configs(tmp, port, link=LINK, key=KEY, alice_prometheus_port=prometheus_port,
                          **memory)


class Station:
    """The test as the herald station: numbered successes, one signed batch per chunk."""

    def __init__(self, port: int, configs: Path):
        self.station = HeraldStation([LINK])
        self.bus = NodeBus(Topics("t", "station"), "127.0.0.1", port, keys={LINK: KEY},
                           signer=identity(configs, "station"))
        self.t_ps = 1_000_000
        self.chunk = 0

    async def __aenter__(self) -> Station:
        self.runner = asyncio.create_task(self.bus.run())
        await self.bus.wait_connected(10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bus.close()
        await self.runner

    def send(self, pairs: int = 50, *, lose: bool = False) -> None:
        for _ in range(pairs):
            self.t_ps += 1000
            self.station.success(LINK, "psi+" if self.chunk % 2 else "psi-", self.t_ps)
        for batch in self.station.flush(self.chunk):
            if not lose:
                self.bus.publish(self.bus.topics.herald(LINK), batch.TYPE, batch.to_dict(),
                                 sign_with=LINK)
        self.chunk += 1


async def _settle(port: int, next_seq: int, timeout_s: float = 15.0) -> None:
    """Until both ends report the station's counter and no unacknowledged EXPIRE."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        views = [(await _telemetry(port, n))["links"][LINK] for n in ("alice", "bob")]
        if all(v["expected_seq"] == next_seq and v["expires_unacked"] == 0 for v in views):
            return
    raise AssertionError(f"the ends did not settle: {views}")


def _inventory(state_dir: Path) -> tuple[int, list[tuple[str, int]]]:
    with StateStore(state_dir / "qnode.sqlite") as store:
        snap = store.load_links()[LINK]
    end, _ = LinkEnd.restore(snap, now=0.0)
    return end.expected_seq, end.inventory()


async def _telemetry(port: int, node: str, timeout_s: float = 10.0) -> dict:
    return await telemetry_of(port, node, timeout_s=timeout_s)


@pytest.mark.asyncio
async def test_both_ends_agree_after_losses_hostile_input_and_a_broker_restart(tmp_path):
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    broker.tap("t", ("alice", "bob"))   # hostile input is the station's: not judged
    cfg = _configs(tmp_path, broker.port)
    alice, bob = Daemon(cfg["alice"]).start(), Daemon(cfg["bob"]).start()
    station = HeraldStation([LINK])
    bus = NodeBus(Topics("t", "station"), "127.0.0.1", broker.port, keys={LINK: KEY},
                  signer=identity(tmp_path, "station"))
    runner = asyncio.create_task(bus.run())
    try:
        await asyncio.to_thread(alice.wait_for_log, "node ready")
        await asyncio.to_thread(bob.wait_for_log, "node ready")
        # `qnode run` takes what exists at READY out of the cyclic collector's walks
        frozen = re.search(r'"node ready".* gc_frozen_objects=(\d+)', alice.log())
        assert frozen is not None and int(frozen.group(1)) > 10_000
        await bus.wait_connected(10)
        topic = bus.topics.herald(LINK)
        t_ps = 1_000_000
        lost = 0
        for chunk in range(60):
            for _ in range(50):
                t_ps += 1000
                station.success(LINK, "psi+" if chunk % 2 else "psi-", t_ps)
            (batch,) = station.flush(chunk)
            if chunk % 7 == 3:        # the station's batch never reaches the broker
                lost += 1
                continue
            bus.publish(topic, batch.TYPE, batch.to_dict(), sign_with=LINK)
            if chunk == 30:           # the broker goes away and comes back
                await bus.drain(10)
                await asyncio.to_thread(broker.restart)
            await asyncio.sleep(0.02)
        # hostile input on the herald topic: unsigned, forged, not JSON, wrong types
        async with aiomqtt.Client("127.0.0.1", broker.port) as raw:
            await raw.publish(topic, b"\xff not json", qos=1)
            await raw.publish(topic, json.dumps({"v": 1, "type": "HERALD", "sender": "station",
                                                 "id": 10**6, "ts": time.time(),
                                                 "body": {}}).encode(), qos=1)
            await raw.publish(topic, b"x" * (2 << 20), qos=1)
        # forged: the link key (which either end holds) but an identity key not the station's
        forger = NodeBus(Topics("t", "station"), "127.0.0.1", broker.port,
                         signer=NodeSigner.generate())
        forged = forger.envelope("HERALD", {"link": LINK, "chunk": 1}, sign_with=KEY,
                                 node_sign=True)[1]
        async with aiomqtt.Client("127.0.0.1", broker.port) as raw:
            await raw.publish(topic, forged, qos=1)
        bus.publish(topic, "HERALD", {"link": LINK, "chunk": "x"}, sign_with=LINK)  # bad body
        (last,) = station.flush(99)   # heartbeat: ends learn the final counter
        bus.publish(topic, last.TYPE, last.to_dict(), sign_with=LINK)
        await bus.drain(10)
        tel = await _telemetry(broker.port, "alice")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # let the EXPIRE exchange settle
            tel = await _telemetry(broker.port, "alice")
            if tel["links"][LINK]["expires_unacked"] == 0 and \
                    tel["links"][LINK]["expected_seq"] == station.next_seq(LINK):
                break
        rejected = tel["bus"]["rejected"]
        assert rejected.get("not_json", 0) >= 1 and rejected.get("unsigned", 0) >= 1
        assert rejected.get("oversized", 0) >= 1 and rejected.get("bad_signature", 0) >= 1
        assert tel["link_rejected"].get("bad_herald", 0) >= 1   # signed, but not a HERALD
        assert alice.proc.poll() is None and bob.proc.poll() is None  # still running
        broker.check_taps()       # across the restart too (the tap's session is persistent)
    finally:
        await bus.close()
        await runner
        codes = (alice.stop(), bob.stop())
        broker.close_taps()
        broker.stop()
    assert codes == (0, 0), alice.log()[-2000:] + bob.log()[-2000:]
    seq_a, inv_a = _inventory(tmp_path / "state" / "alice")
    seq_b, inv_b = _inventory(tmp_path / "state" / "bob")
    assert seq_a == seq_b == station.next_seq(LINK)
    assert inv_a == inv_b
    assert len(inv_a) == (60 - lost) * 50      # every pair of every delivered batch, no other
    assert "rejected" in alice.log()


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def collect(self, until: float) -> None:
        while time.monotonic() < until:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def first(self, key: str) -> float | None:
        return next((t for t, m in self.messages if key in m.split("\n")), None)


def test_the_watchdog_is_withheld_while_the_broker_is_unreachable(tmp_path):
    """A node that cannot hear its peers for longer than broker.max_offline_s stops pinging
    systemd's watchdog (so systemd restarts it) and says so once; pings resume when it hears
    the broker again."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        broker.tap("t", ("alice",))
        cfg = _configs(tmp_path, broker.port)["alice"]
        cfg.write_text(cfg.read_text().replace("keepalive_s = 5\n",
                                               "keepalive_s = 5\nmax_offline_s = 1\n"))
        notify = NotifySocket(tmp_path / "notify.sock")
        stop = threading.Event()
        collector = threading.Thread(target=lambda: [notify.collect(time.monotonic() + 0.2)
                                                     for _ in iter(stop.is_set, True)])
        collector.start()

        def pings_after(t: float) -> int:
            return sum(1 for at, m in list(notify.messages)
                       if at > t and "WATCHDOG=1" in m.split("\n"))
        try:
            with Daemon(cfg, env={"NOTIFY_SOCKET": str(notify.path),
                                  "WATCHDOG_USEC": "400000"}) as d:
                d.wait_for_log("node ready")
                broker.stop()
                d.wait_for_log("withholding the watchdog", timeout_s=60)
                # pings sent before the line are received within moments; none may follow
                seen = time.monotonic() + 2.0
                time.sleep(4.0)
                assert pings_after(seen) == 0
                broker.start()
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and pings_after(seen) == 0:
                    time.sleep(0.2)
                assert pings_after(seen) > 0  # heard the broker again: pinging again
                assert d.log().count("withholding the watchdog") == 1
            broker.check_taps()
        finally:
            stop.set()
            collector.join()
    finally:
        broker.close_taps()
        broker.stop()


def test_notify_protocol_ready_watchdog_and_stopping(tmp_path):
    with Mosquitto(tmp_path / "mosquitto") as broker:
        broker.tap("t", ("alice",))
        cfg = _configs(tmp_path, broker.port)
        notify = NotifySocket(tmp_path / "notify.sock")
        d = Daemon(cfg["alice"], env={"NOTIFY_SOCKET": str(notify.path),
                                      "WATCHDOG_USEC": "600000"})
        d.start()
        d.wait_for_log("node ready")
        notify.collect(time.monotonic() + 2.0)
        sent = time.monotonic()
        d.proc.send_signal(15)
        notify.collect(time.monotonic() + 1.0)
        code = d.stop()
    stopped = time.monotonic()
    assert code == 0
    assert notify.first("READY=1") is not None
    pings = [t for t, m in notify.messages if "WATCHDOG=1" in m.split("\n")]
    assert len(pings) >= 3                      # every 0.3 s (half of WATCHDOG_USEC)
    stopping = notify.first("STOPPING=1")
    assert stopping is not None and stopping >= sent
    assert stopped - sent < 10.0                # a clean exit within seconds


@pytest.mark.parametrize("policy", ["resume", "expire_all"])
@pytest.mark.asyncio
async def test_a_node_killed_and_restarted_resumes_and_its_peer_agrees(tmp_path, policy):
    """SIGKILL (no goodbye, the last second of state maybe unsaved), heralds while it is away,
    then a restart: "resume" keeps the pairs, "expire_all" drops them at both ends."""
    with Mosquitto(tmp_path / "mosquitto") as broker:
        broker.tap("t", ("alice", "bob"))   # bob's last will (SIGKILL) included
        cfg = _configs(tmp_path, broker.port, restart_policy=policy)
        alice, bob = Daemon(cfg["alice"]).start(), Daemon(cfg["bob"]).start()
        try:
            await asyncio.to_thread(alice.wait_for_log, "node ready")
            await asyncio.to_thread(bob.wait_for_log, "node ready")
            async with Station(broker.port, tmp_path) as st:
                for _ in range(20):
                    st.send()
                    await asyncio.sleep(0.02)
                await st.bus.drain(10)
                await asyncio.sleep(0.3)
                bob.kill()
                for _ in range(10):      # queued by the broker for bob's persistent session
                    st.send()
                await st.bus.drain(10)
                bob = Daemon(cfg["bob"]).start()
                await asyncio.to_thread(bob.wait_for_log, "node ready")
                for _ in range(10):
                    st.send()
                    await asyncio.sleep(0.02)
                for _ in range(3):
                    st.send(0)           # heartbeats
                await st.bus.drain(10)
                await _settle(broker.port, st.station.next_seq(LINK))
        finally:
            codes = (alice.stop(), bob.stop())
    assert codes == (0, 0)
    assert "restored at seq" in bob.log()
    seq_a, inv_a = _inventory(tmp_path / "state" / "alice")
    seq_b, inv_b = _inventory(tmp_path / "state" / "bob")
    assert seq_a == seq_b == 40 * 50
    assert inv_a == inv_b
    if policy == "resume":   # at most the last second before the kill was lost
        assert len(inv_a) >= 40 * 50 - 21 * 50
    else:                    # what bob held at restart is gone at both ends
        assert len(inv_a) <= 20 * 50 and len(inv_a) >= 10 * 50


@pytest.mark.asyncio
async def test_the_prometheus_endpoint_of_a_running_daemon(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from support.mosquitto import free_port

    port = free_port()
    with Mosquitto(tmp_path / "mosquitto") as broker:
        broker.tap("t", ("alice", "bob"))
        cfg = _configs(tmp_path, broker.port, prometheus_port=port)
        with Daemon(cfg["alice"]) as alice, Daemon(cfg["bob"]) as bob:
            await asyncio.to_thread(alice.wait_for_log, "node ready")
            await asyncio.to_thread(bob.wait_for_log, "node ready")
            async with Station(broker.port, tmp_path) as st:
                for _ in range(5):
                    st.send()
                await st.bus.drain(10)
                await _settle(broker.port, st.station.next_seq(LINK))
            await _telemetry(broker.port, "alice")
            import urllib.request
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                .read().decode())
    samples = {(s.name, s.labels.get("link")): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("qnode_link_heralds_total", LINK)] == 250
    assert samples[("qnode_link_expected_sequence", LINK)] == 250
    assert samples[("qnode_uptime_seconds", None)] > 0


@pytest.mark.asyncio
async def test_create_requests_on_cmd_are_answered_on_reply(tmp_path):
    """A program asks alice for pairs with bob: ACK, then one OK per pair from the inventory
    (oldest first); an unreachable fidelity is ERR UNSUPP; a malformed request is refused."""
    from qnode.daemon.linklayer import Create

    with Mosquitto(tmp_path / "mosquitto") as broker:
        broker.tap("t", ("alice", "bob"))   # the malformed CREATE is the app's: not judged
        cfg = _configs(tmp_path, broker.port)
        with Daemon(cfg["alice"]) as alice, Daemon(cfg["bob"]) as bob:
            await asyncio.to_thread(alice.wait_for_log, "node ready")
            await asyncio.to_thread(bob.wait_for_log, "node ready")
            async with Station(broker.port, tmp_path) as st:
                st.send(20)
                await st.bus.drain(10)
                await _settle(broker.port, 20)
            app = NodeBus(Topics("t", "app"), "127.0.0.1", broker.port)
            replies: asyncio.Queue = asyncio.Queue()

            async def on_reply(topic, msg) -> None:
                await replies.put(msg)

            app.on("reply", on_reply)
            app.subscribe("qnet/v1/t/alice/reply/app")
            runner = asyncio.create_task(app.run())
            try:
                await app.wait_connected(10)
                cmd = "qnet/v1/t/alice/cmd"
                app.publish(cmd, "CREATE", Create("bob", 0.85, 0, 7, 3).to_dict())
                app.publish(cmd, "CREATE", Create("bob", 0.99, 0, 7, 1).to_dict())
                app.publish(cmd, "CREATE", {"remote_node": "bob", "number": "three"})
                got = [await asyncio.wait_for(replies.get(), 10) for _ in range(5)]
            finally:
                await app.close()
                await runner
            for _ in range(20):      # the retained record first, then fresh ones
                tel = await _telemetry(broker.port, "alice")
                if tel["links"][LINK]["pairs_delivered_total"] == 3:
                    break
    kinds = [m.type for m in got]
    assert kinds == ["ACK", "OK", "OK", "OK", "ERR"], kinds
    oks = [m.body for m in got if m.type == "OK"]
    assert [o["seq"] for o in oks] == [0, 1, 2] and {o["link"] for o in oks} == {LINK}
    assert all(o["goodness"] == 0.9 and o["remote_node"] == "bob" for o in oks)
    assert got[-1].body["code"] == "UNSUPP"
    assert tel["links"][LINK]["pairs_delivered_total"] == 3
    assert "CREATE" in alice.log() and "rejected" in alice.log()  # the malformed one


def test_an_instrument_that_never_comes_up_is_named_and_the_node_exits_non_zero(tmp_path):
    import subprocess
    import sys

    from support.mosquitto import free_port

    with Mosquitto(tmp_path / "mosquitto") as broker:
        broker.tap("t", ("n",))             # what it says before it gives up
        cfg = node_config(
            tmp_path / "n.toml", node="n", roles=["memory"], broker_port=broker.port,
            state_dir=tmp_path / "state",
            body=f"[instruments.hwp]\nkind = \"elliptec\"\n"
                 f"address = \"socket://127.0.0.1:{free_port()}\"\ntimeout_s = 0.2\n")
        run = subprocess.run([sys.executable, "-m", "qnode.daemon.cli", "run", "--config",
                              str(cfg), "--ready-timeout", "2"],
                             capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "instruments not ready within 2.0 s: ['hwp']" in run.stderr
    assert "instrument=hwp" in run.stderr   # the supervisor's reconnect attempts, logged


@pytest.mark.asyncio
async def test_an_ok_carries_the_fidelity_aged_from_herald_to_delivery(tmp_path):
    """Memory T1 = 10 s, T2 = 1 s: a pair heralded at F = 0.9 and delivered ~0.5 s later has
    the closed-form aged fidelity (both halves decohering), within the timing bounds."""
    from qnode.daemon.linklayer import Create
    from qnode.daemon.quantum.bell_diagonal import BellDiagonal, age

    def aged(t: float) -> float:
        st = BellDiagonal.werner(0.9).relabel("psi-")
        return age(st, t, t1_s=10.0, t2_s=1.0, halves=2).fidelity("psi-")

    with Mosquitto(tmp_path / "mosquitto") as broker:
        broker.tap("t", ("alice", "bob"))
        cfg = _configs(tmp_path, broker.port, t1_t2_s=(10.0, 1.0))
        with Daemon(cfg["alice"]) as alice, Daemon(cfg["bob"]) as bob:
            await asyncio.to_thread(alice.wait_for_log, "node ready")
            await asyncio.to_thread(bob.wait_for_log, "node ready")
            app = NodeBus(Topics("t", "app"), "127.0.0.1", broker.port)
            replies: asyncio.Queue = asyncio.Queue()

            async def on_reply(topic, msg) -> None:
                await replies.put((time.monotonic(), msg))

            app.on("reply", on_reply)
            app.subscribe("qnet/v1/t/alice/reply/app")
            runner = asyncio.create_task(app.run())
            try:
                await app.wait_connected(10)
                async with Station(broker.port, tmp_path) as st:
                    t_sent = time.monotonic()
                    st.send(1)                    # one Ψ− pair (chunk 0)
                    await st.bus.drain(10)
                    await _settle(broker.port, 1)
                t_heard = time.monotonic()        # alice holds it by now
                await asyncio.sleep(0.5)
                t_asked = time.monotonic()
                app.publish("qnet/v1/t/alice/cmd", "CREATE", Create("bob", 0.5, 0, 1, 1).to_dict())
                ack = await asyncio.wait_for(replies.get(), 10)
                t_ok, ok = await asyncio.wait_for(replies.get(), 10)
            finally:
                await app.close()
                await runner
    assert (ack[1].type, ok.type, ok.body["bell_state"]) == ("ACK", "OK", "psi-")
    youngest, oldest = t_asked - t_heard, t_ok - t_sent
    assert aged(oldest) <= ok.body["goodness"] <= aged(youngest), (
        aged(oldest), ok.body["goodness"], aged(youngest))
    assert ok.body["goodness"] < 0.9 - 0.1              # T2 = 1 s: a visible loss at ~0.5 s
