"""The whole demo network as separate processes over a real mosquitto broker.

hal_sim's bench serves every instrument on ptys and sockets; eight ``qnode run`` daemons (two
herald stations, three memory nodes, a source, two analyzers) reach them by address. After the
run both ends of every link list exactly the same pair ids and sequence numbers, and what the
daemons measured matches the simulator's truth.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import aiomqtt
import numpy as np

from qnode.daemon.bus.envelope import decode
from qnode.daemon.bus.topics import parse_topic
from qnode.daemon.tools.demo import STATIONS, DemoNetwork

from support.mosquitto import Mosquitto
from support.runs import log_tails
from support.stored import settle, stored_end

RUN_S = 15.0
LINKS = {"alice-repeater": ("alice", "repeater"), "repeater-bob": ("repeater", "bob"),
         "m-ab": ("analyzer-a", "analyzer-b")}


async def _watch(port: int, seconds: float) -> dict[str, list[dict]]:
    records: dict[str, list[dict]] = {}
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("qnet/v1/demo/+/telemetry")
        end = time.monotonic() + seconds
        try:
            async with asyncio.timeout(seconds):
                async for m in client.messages:
                    msg = decode(bytes(m.payload), parse_topic(str(m.topic)))
                    records.setdefault(msg.sender, []).append(msg.body)
        except TimeoutError:
            pass
        assert time.monotonic() >= end - 0.5
    return records


def _link_story(log_dir, link: str) -> str:
    """Every line of every daemon's log that names ``link``: its epochs, EXPIREs and the
    figures each end stored at its stop (what a disagreement needs explaining with)."""
    return "\n".join(f"{p.stem}: {line[:400]}" for p in sorted(log_dir.glob("*.log"))
                     for line in p.read_text(errors="replace").splitlines()
                     if f"link={link}" in line)


def test_a_whole_network_agrees_and_measures_what_the_simulator_did(tmp_path):
    with Mosquitto(tmp_path / "mosquitto") as broker:
        # no cut-off: every heralded pair stays, so the inventories are a strong check
        net = DemoNetwork(tmp_path / "work", f"mqtt://127.0.0.1:{broker.port}",
                          tmp_path / "logs", max_pair_age_s=0, capacity=0,
                          quantum_memory=False)
        broker.tap("demo", lambda: net.daemons)   # the contract: checked at the end
        try:
            net.start()
            records = asyncio.run(_watch(broker.port, RUN_S))
            status = subprocess.run(
                [sys.executable, "-m", "qnode.daemon.cli", "status", "--broker",
                 f"mqtt://127.0.0.1:{broker.port}", "--network", "demo", "--wait", "2",
                 "--json"], capture_output=True, text=True, timeout=60)
            table = subprocess.run(
                [sys.executable, "-m", "qnode.daemon.cli", "status", "--broker",
                 f"mqtt://127.0.0.1:{broker.port}", "--network", "demo", "--wait", "2"],
                capture_output=True, text=True, timeout=60)
        finally:
            settle(net, STATIONS, LINKS)
            net.close(settle_s=0.0)
        truth = net.truth()
    logs = log_tails(tmp_path / "logs", 1500)
    assert net.exit_codes and all(c == 0 for c in net.exit_codes.values()), \
        f"{net.exit_codes}\n{logs}"
    assert set(records) == set(net.daemons), (set(net.daemons) - set(records), logs)
    assert all(r[-1]["state"] == "ready" for r in records.values())
    assert all(r[-1]["role_restarts_total"] == 0 for r in records.values()), logs
    # the memories' QDevices are supervised instruments, read over QDEVICE/1
    for node, n in (("alice", 6), ("repeater", 10), ("bob", 6)):   # 2 for gates
        last = records[node][-1]
        assert {i["state"] for i in last["instruments"].values()} == {"ready"}
        assert last["memory_qubits"] == n and last["memory_qubits_free"] == n
    # `qnode status` sees the same network
    assert status.returncode == 0, status.stderr
    nodes = json.loads(status.stdout)["nodes"]
    assert set(nodes) == set(net.daemons) and {v["state"] for v in nodes.values()} == {"ready"}
    assert table.returncode == 0 and all(n in table.stdout for n in net.daemons)

    # 1. both ends of every link hold exactly the same pairs
    for link, (a, b) in LINKS.items():
        end_a, end_b = stored_end(net.state_dir(a), link), stored_end(net.state_dir(b), link)
        assert end_a.expected_seq == end_b.expected_seq > 1000, (
            link, end_a.expected_seq, end_b.expected_seq, _link_story(tmp_path / "logs", link))
        assert end_a.inventory() == end_b.inventory(), link
        assert len(end_a.inventory()) > 1000, link

    # 2. K links: the stations' herald rates against the simulated rate
    for station, link in (("herald1", "alice-repeater"), ("herald2", "repeater-bob")):
        rates = [r["links"][link]["herald_rate_hz"] for r in records[station][2:]]
        expected = truth["links"][link]["herald_rate_hz"]
        assert abs(np.mean(rates) - expected) < 0.1 * expected, (link, np.mean(rates), expected)
        last = records[station][-1]["links"][link]
        plus, minus = last["psi_plus_total"], last["psi_minus_total"]
        assert abs(plus - minus) < 4 * np.sqrt(plus + minus), (plus, minus)  # ½ each

    # 3. the M link: aligned, locked, and the visibility the source has
    m = records["analyzer-a"][-1]["links"]["m-ab"]
    assert m["tracker_state"] == "LOCKED"
    assert abs(m["visibility"] - truth["links"]["m-ab"]["visibility"]) < 0.02, m
    assert m["car"] > 10
    # passive Z/X analyzers at both ends (BBM92): each basis' QBER, the two-basis bound, key
    for basis in ("qber_z", "qber_x"):
        assert abs(m[basis] - truth["links"]["m-ab"][basis]) < 0.02, (basis, m)
    assert m["fidelity_method"] == "two_basis_bound"
    assert abs(m["fidelity_estimate"] - (1 - m["qber_z"] - m["qber_x"])) < 1e-9
    assert m["secret_fraction"] > 0 and m["sifted_key_rate_hz"] > 0
