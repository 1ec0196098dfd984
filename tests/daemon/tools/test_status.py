"""``qnode status`` against a real mosquitto (retained status, telemetry, the last will, garbage),
its exit codes, and the terminal rendering it shares with the demo's live view."""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from typing import Any

import aiomqtt
import pytest

from qnode.daemon.bus.client import NodeBus
from qnode.daemon.bus.envelope import Message, encode
from qnode.daemon.bus.identity import NodeSigner, TrustStore
from qnode.daemon.bus.telemetry import TELEMETRY_TYPE, Telemetry, validate
from qnode.daemon.bus.topics import Topics
from qnode.daemon.tools import status
from qnode.daemon.tools.liveview import LiveView, fmt_duration, fmt_si, render, summary_line
from qnode.daemon.tools.status import BrokerUnreachable, Views, collect, format_status

from support.daemon_harness import running
from support.mosquitto import Mosquitto, free_port

NET = "lab"
T = 1_732_345_678.0
TIMEOUT_S = 15.0   # generous: only reached when something is broken
WAIT_S = 1.0       # how long collect() listens; retained messages arrive at once




def telemetry(node: str = "alice", **over: Any) -> Telemetry:
    rec: dict[str, Any] = {
        "v": 1, "node": node, "roles": ["analyzer", "memory"], "t": T, "uptime_s": 3725.0,
        "state": "ready", "ingest_mtags_s": 1.25, "dropped_chunks_total": 0,
        "dropped_tags_total": 0, "memory_used": 17, "memory_capacity": 1000,
        "instruments": {"tagger": {"kind": "id900", "state": "ready", "errors_total": 0},
                        "hwp": {"kind": "elliptec", "state": "degraded", "errors_total": 3}},
        "singles_hz": {"1": 120_000.0},
        "links": {
            "alice-bob": {"type": "M", "peer": "bob", "role": "counter",
                          "coincidence_rate_hz": 1523.0, "qber_z": 0.021, "qber_x": 0.034,
                          "visibility": 0.962, "chsh_s": 2.71, "offset_ps": 123_456.0,
                          "pairs_delivered_total": 1_250_000},
            "alice-rep": {"type": "K", "peer": "repeater", "role": "end",
                          "herald_rate_hz": 85.5, "heralds_total": 4311, "pairs_live": 17,
                          "pairs_delivered_total": 4200, "fidelity_estimate": 0.912}}}
    rec.update(over)
    return validate(rec)


def envelope(sender: str, body: dict[str, Any], type: str = TELEMETRY_TYPE,
             msg_id: int = 1_000_000, signer: NodeSigner | None = None, ts: float = T) -> bytes:
    return encode(Message(type, sender, msg_id, body, ts), signer=signer)


async def publish_retained(broker: Mosquitto, items: list[tuple[str, bytes]]) -> None:
    """Publish retained at QoS 1: the broker holds each one when this returns."""
    async with aiomqtt.Client(broker.host, broker.port) as c:
        for topic, payload in items:
            await c.publish(topic, payload, qos=1, retain=True)




# -- against the broker -----------------------------------------------------------------------

@pytest.mark.asyncio
async def test_online_node_with_telemetry(broker: Mosquitto) -> None:
    alice = Topics(NET, "alice")
    bus = NodeBus(alice, broker.host, broker.port, reconnect_initial_s=0.05)
    async with running(bus):
        bus.status("online", roles=["analyzer", "memory"], version="0.1.0")
        await asyncio.wait_for(bus.drain(), TIMEOUT_S)
        await publish_retained(broker, [(alice.telemetry, envelope("alice", telemetry()))])
        views = await collect(broker.host, broker.port, NET, wait_s=WAIT_S)
    assert set(views) == {"alice"} and not views.malformed
    view = views["alice"]
    assert view.state == "online" and view.roles == ["analyzer", "memory"]
    assert view.status == {"state": "online", "roles": ["analyzer", "memory"],
                           "version": "0.1.0"}
    assert view.telemetry is not None and view.telemetry["uptime_s"] == 3725.0
    assert view.telemetry_age_s(T + 2.5) == 2.5

    text = format_status(views, now=T + 2.5)
    assert text.startswith("network lab: 1 node (1 online)")
    assert "alice  ONLINE  (node ready, telemetry 2.5 s old)" in text
    assert "roles        analyzer, memory" in text
    assert 'version "0.1.0"' in text
    assert "hwp (elliptec) degraded, 3 errors" in text and "tagger (id900) ready" in text
    assert "up 1h02m" in text and "ingest 1.25 Mt/s" in text and "memory 17/1000" in text
    assert "singles      ch 1: 120 kHz" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()
            if line.startswith("  alice-")}
    assert rows["alice-bob"][:4] == ["alice-bob", "M", "bob", "1.52"]
    assert {"1.25M", "2.1%/3.4%", "0.962", "2.71", "+123"} <= set(rows["alice-bob"])
    assert rows["alice-rep"][:4] == ["alice-rep", "K", "repeater", "85.5"]
    assert {"4311", "17", "4200", "0.912"} <= set(rows["alice-rep"])


BUS_PROCESS = """
import asyncio, sys
from qnode.daemon.bus.client import NodeBus
from qnode.daemon.bus.topics import Topics
asyncio.run(NodeBus(Topics(sys.argv[1], sys.argv[2]), "127.0.0.1", int(sys.argv[3])).run())
"""


async def next_state(watcher: aiomqtt.Client, state: str) -> None:
    async for m in watcher.messages:
        if json.loads(m.payload)["body"]["state"] == state:  # type: ignore[arg-type]
            return


@pytest.mark.asyncio
async def test_vanished_node_shows_offline(broker: Mosquitto) -> None:
    bob = Topics(NET, "bob")
    proc = subprocess.Popen([sys.executable, "-c", BUS_PROCESS, NET, "bob", str(broker.port)],
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        async with aiomqtt.Client(broker.host, broker.port) as watcher:
            await watcher.subscribe(bob.status, qos=1)
            await asyncio.wait_for(next_state(watcher, "online"), TIMEOUT_S)
            # its last telemetry stays retained; then it dies: the broker publishes its will
            await publish_retained(broker, [(bob.telemetry, envelope(
                "bob", telemetry("bob", roles=["analyzer"], links={})))])
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(next_state(watcher, "offline"), TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    views = await collect(broker.host, broker.port, NET, wait_s=WAIT_S)
    assert views["bob"].state == "offline" and views["bob"].status == {"state": "offline"}
    text = format_status(views, now=T + 600)
    assert "network lab: 1 node (1 offline)" in text
    assert "bob  OFFLINE  (node ready, telemetry 10m00s old)" in text


@pytest.mark.asyncio
async def test_degraded_node_and_malformed_messages(broker: Mosquitto) -> None:
    carol, eve = Topics(NET, "carol"), Topics(NET, "eve")
    await publish_retained(broker, [
        (carol.status, envelope("carol", {"state": "online"}, type="status")),
        (carol.telemetry, envelope("carol", telemetry("carol", state="degraded"))),
        (eve.telemetry, b"garbage \xff"),                                       # not_json
        (eve.status, envelope("alice", {"state": "online"}, type="status")),     # impostor
        (Topics(NET, "dave").status, envelope("dave", {"up": True}, type="status")),
        (Topics(NET, "frank").telemetry, envelope("frank", {"node": "frank", "roles": "x",
                                                            "t": T, "uptime_s": 1})),
        (Topics(NET, "gina").telemetry, envelope("gina", dict(telemetry("alice")))),
        (Topics("other-net", "zed").status, envelope("zed", {"state": "online"}, "status")),
    ])
    views = await collect(broker.host, broker.port, NET, wait_s=WAIT_S)
    assert set(views) == {"carol"}
    assert views["carol"].state == "degraded"
    assert dict(views.malformed) == {"not_json": 1, "sender_mismatch": 2, "bad_status": 1,
                                     "bad_telemetry": 1}
    assert "roles" in views.examples["bad_telemetry"]
    text = format_status(views, now=T + 1)
    assert text.startswith("network lab: 1 node (1 degraded); 5 messages ignored "
                           "(bad_status 1, bad_telemetry 1, not_json 1, sender_mismatch 2)")
    assert "carol  DEGRADED  (status online, telemetry 1.0 s old)" in text

    only = await collect(broker.host, broker.port, NET, wait_s=WAIT_S, node="eve")
    assert not only and sum(only.malformed.values()) == 2


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    status.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_main_exit_codes(broker: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"mqtt://{broker.host}:{broker.port}"
    assert status.main(cli("--broker", url, "--network", NET, "--wait", "0.3")) == 2
    assert "nothing heard from any node of network 'lab'" in capsys.readouterr().err

    alice = Topics(NET, "alice")
    asyncio.run(publish_retained(broker, [
        (alice.status, envelope("alice", {"state": "online"}, type="status")),
        (alice.telemetry, envelope("alice", telemetry()))]))
    assert status.main(cli("--broker", url, "--network", NET, "--wait", "0.5")) == 0
    assert "alice  ONLINE" in capsys.readouterr().out
    assert status.main(cli("--broker", url, "--network", NET, "--wait", "0.5", "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["nodes"]["alice"]["state"] == "online" and doc["malformed"] == {}
    assert doc["nodes"]["alice"]["telemetry"]["links"]["alice-rep"]["heralds_total"] == 4311
    assert status.main(cli("--broker", url, "--network", NET, "--wait", "0.3",
                           "--node", "bob")) == 2
    assert "nothing heard from node bob" in capsys.readouterr().err

    dead = f"mqtt://127.0.0.1:{free_port()}"
    assert status.main(cli("--broker", dead, "--network", NET, "--wait", "0.3")) == 1
    err = capsys.readouterr().err
    assert "cannot reach the MQTT broker at 127.0.0.1:" in err
    assert status.main(cli("--broker", url)) == 1
    assert "--network" in capsys.readouterr().err
    assert status.main(cli("--broker", "http://x", "--network", NET)) == 1
    assert "mqtt://host" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_unreachable_broker_raises_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(BrokerUnreachable, match=f"127.0.0.1:{port}"):
        await collect("127.0.0.1", port, NET, wait_s=0.1)


# -- without a broker ---------------------------------------------------------------------------

def test_views_take_anything_without_raising() -> None:
    views = Views(NET)
    views.add("not/a/qnode/topic", b"{}")
    views.add(f"qnet/v1/{NET}/alice/ll/bob", b"{}")
    views.add(f"qnet/v1/{NET}/alice/telemetry", None)
    views.add(f"qnet/v1/{NET}/alice/telemetry", "[1, 2]")
    views.add(f"qnet/v1/{NET}/alice/status", json.dumps({"v": 1}).encode())
    assert not views
    assert dict(views.malformed) == {"bad_topic": 2, "not_json": 1, "bad_envelope": 2}
    # the newest record (by message id, never by the sender's clock) wins, whatever the
    # arrival order
    topic = f"qnet/v1/{NET}/alice/telemetry"
    views.add(topic, envelope("alice", telemetry(t=T, uptime_s=5.0), msg_id=7))
    views.add(topic, envelope("alice", telemetry(t=T + 5, uptime_s=1.0), msg_id=6))
    assert views["alice"].telemetry["uptime_s"] == 5.0  # type: ignore[index]
    assert views["alice"].messages == 2 and views["alice"].state == "ready"


def test_render_table() -> None:
    recs = {"alice": telemetry(), "station": validate({
        "node": "station", "roles": ["herald"], "t": T - 8, "uptime_s": 40.0,
        "state": "degraded", "links": {"alice-rep": {"type": "K", "role": "station",
                                                     "herald_rate_hz": 86.0,
                                                     "heralds_total": 4400,
                                                     "psi_plus_total": 2200}}})}
    text = render(recs, width=100, now=T + 2)
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert lines[0].startswith("qnode · 2 nodes · 1 degraded, 1 ready · ")
    assert lines[1].split()[:3] == ["NODE", "STATE", "UP"]
    assert lines[2].split()[:3] == ["LINK", "T", "PEER"]
    alice = next(line for line in lines if line.startswith("alice "))
    assert alice.split()[:7] == ["alice", "ready", "1h02m", "1.25", "Mt/s", "0", "17/1000"]
    assert "2.0 s" in alice and alice.endswith("analyzer, memory")
    station = next(line for line in lines if line.startswith("station "))
    assert "degraded" in station and "10 s" in station
    assert sum(line.startswith("  alice-rep") for line in lines) == 2
    narrow = render(recs, width=60, now=T + 2)
    assert all(len(line) <= 60 for line in narrow.splitlines())
    assert render({}, now=T).endswith("(no telemetry yet)")
    # a record with only the required fields, and one with odd values, still render
    odd = {"x": validate({"node": "x", "roles": [], "t": T, "uptime_s": 0.0}),
           "y": {"node": "y", "links": {"l": {"qber_z": "high", "chsh_s": float("nan")}},
                 "t": "yesterday"}}
    assert "x" in render(odd, now=T)  # type: ignore[arg-type]


def test_summary_line_and_shared_formatting() -> None:
    recs = {"alice": telemetry(), "bob": telemetry("bob", state="degraded", links={})}
    line = summary_line(recs, elapsed_s=75)
    assert line == ("[ 1m15s] nodes 2 (1 degraded, 1 ready) | heralds 4311 | "
                    "delivered 1.25M | F 0.912 | ingest 2.50 Mt/s | dropped 0")
    assert fmt_si(1523.0, "Hz") == "1.52 kHz" and fmt_si(None, "Hz") == "-"
    assert fmt_duration(3725) == "1h02m" and fmt_duration(float("inf")) == "-"


def test_live_view_modes() -> None:
    clock = [100.0]
    log = io.StringIO()
    view = LiveView(log, tty=False, summary_every_s=10.0, clock=lambda: clock[0])
    view.update(telemetry())
    view.update({"roles": []})  # type: ignore[typeddict-item]  # no node: ignored
    assert list(view.views) == ["alice"]
    for t in (100.0, 101.0, 109.0, 110.5, 111.0):  # summaries at 100 and 110.5 only
        clock[0] = t
        view.tick()
    view.close()  # and a final one
    lines = log.getvalue().splitlines()
    assert [line[:8] for line in lines] == ["[ 0.0 s]", "[  10 s]", "[  11 s]"]
    assert "\x1b" not in log.getvalue()

    term = io.StringIO()
    view = LiveView(term, tty=True, width=100)
    view.update(telemetry())
    view.tick()
    first = term.getvalue()
    assert first.startswith(LiveView.CLEAR_BELOW) and "alice" in first
    n = first.count("\n")
    # the latest record of every node at once (the demo's watcher): also draws
    view.update({"alice": telemetry(), "bob": telemetry("bob")}, remaining_s=42)
    second = term.getvalue()[len(first):]
    assert second.startswith(f"\x1b[{n}F{LiveView.CLEAR_BELOW}qnode · 2 nodes")
    assert "42 s left" in second.splitlines()[0]
    view.close()
    assert term.getvalue().count(LiveView.CLEAR_BELOW) == 3


def test_only_what_a_node_signed_is_believed() -> None:
    """Finding 6: ``qnode status`` trusted unsigned retained status and let the newest
    timestamp win: a live node could be shown offline, a node that does not exist ready. With
    the network's public keys, only signed messages count; the rest are ignored and reported."""
    alice_key, mallory_key = NodeSigner.generate(), NodeSigner.generate()
    trust = TrustStore({"alice": alice_key.public_key()})
    views = Views(NET, trust)
    status_topic = f"qnet/v1/{NET}/alice/status"
    views.add(status_topic, envelope("alice", {"state": "ready"}, "status", 10, alice_key))
    views.add(f"qnet/v1/{NET}/alice/telemetry", envelope("alice", telemetry(), msg_id=11,
                                                         signer=alice_key))
    # a forged "offline" for alice, newer by id and by clock: unsigned, then mis-signed
    views.add(status_topic, envelope("alice", {"state": "offline"}, "status", 99, ts=T + 60))
    views.add(status_topic, envelope("alice", {"state": "offline"}, "status", 99,
                                     mallory_key, ts=T + 60))
    # a ghost nobody holds a key for
    views.add(f"qnet/v1/{NET}/ghost/status", envelope("ghost", {"state": "ready"}, "status"))
    views.add(f"qnet/v1/{NET}/ghost/status", envelope("ghost", {"state": "ready"}, "status", 2,
                                                      mallory_key))
    assert set(views) == {"alice"} and views["alice"].state == "ready"
    assert dict(views.malformed) == {"unsigned": 2, "bad_signature": 2}
    text = format_status(views, T + 1)
    assert "4 messages ignored (bad_signature 2, unsigned 2)" in text
    assert "UNVERIFIED" not in text
    assert "UNVERIFIED" in format_status(Views(NET), T)


@pytest.mark.asyncio
async def test_status_of_signing_daemons_over_mosquitto(broker: Mosquitto, tmp_path) -> None:
    """A node's bus signs its retained status and its telemetry; ``collect`` with the public
    keys shows what it signed, and neither a forged status published after it nor a ghost."""
    from qnode.daemon.bus.identity import keygen

    private, _ = keygen("alice", tmp_path / "ids")
    trust = TrustStore.from_dir(tmp_path / "ids")
    bus = NodeBus(Topics(NET, "alice"), broker.host, broker.port,
                  signer=NodeSigner.from_file(private))
    async with running(bus):
        bus.status("ready", roles=["memory"])
        bus.publish(bus.topics.telemetry, TELEMETRY_TYPE, telemetry(), state_changing=False,
                    retain=True)
        await bus.drain(15)
        await publish_retained(broker, [
            (f"qnet/v1/{NET}/alice/status", envelope("alice", {"state": "offline"}, "status",
                                                      1 << 40, ts=T + 1e6)),
            (f"qnet/v1/{NET}/ghost/status", envelope("ghost", {"state": "ready"}, "status"))])
        views = await collect(broker.host, broker.port, NET, wait_s=2.0, trust=trust)
        # the forged status replaced alice's retained one at the broker (deployments' ACL
        # stops that), but it is not believed: alice is shown by her signed telemetry
        assert set(views) == {"alice"} and views["alice"].status_state is None
        assert views["alice"].state == "ready"
        assert views.malformed["unsigned"] == 2
    # the clean close leaves a signed offline status: still believed
    views = await collect(broker.host, broker.port, NET, wait_s=1.0, trust=trust)
    assert views["alice"].status_state == "offline"


def test_a_memory_nodes_routes_are_listed() -> None:
    """The routing part of the telemetry: a route per destination (or why there is none),
    and what the node knows of the network."""
    routing = {"nodes_known": 4, "links_known": 3, "adverts_sent_total": 40,
               "adverts_refused_total": {}, "route_changes_total": 2, "routes": {
                   "bob": {"nodes": ["alice", "r1", "bob"], "links": ["a-r1", "r1-b"],
                           "fidelity": 0.8712, "rate_hz": 240.0, "candidates": 2},
                   "carol": {"error": "no route meets fidelity 0.500", "candidates": 1}},
               "routed": {"installed_total": 2, "removed_total": 1, "rerouted_total": 1,
                          "refused_total": {}, "creates_waiting": 0,
                          "paths": {"alice-bob-r9": {"nodes": ["alice", "r1", "bob"],
                                                     "links": ["a-r1", "r1-b"],
                                                     "state": "active", "installer": "alice"}},
                          "last_reroute": {"old": ["alice", "r2", "bob"],
                                           "new": ["alice", "r1", "bob"],
                                           "reason": "link r2-b lost", "at": T}}}
    views = Views(NET)
    views.add(f"qnet/v1/{NET}/alice/telemetry",
              envelope("alice", telemetry(routing=routing), msg_id=3))
    text = format_status(views, T + 1)
    assert "route        to bob: alice>r1>bob (predicted F 0.871, 240 Hz, 2 candidates)" in text
    assert "route        to carol: none (no route meets fidelity 0.500)" in text
    assert "routing      4 nodes, 3 links known · 2 route changes" in text
    assert "routed path  alice-bob-r9: alice>r1>bob (active, installed by alice)" in text
    assert "re-routes    1, the last: link r2-b lost" in text
