"""Failover over mosquitto: a mesh with two disjoint routes between its ends,

    alice - r1 - bob
    alice - r2 - bob

four herald stations and eight ``qnode run`` daemons; no config names a path. alice keeps a
routed path to bob (``[routing] paths_to``): it routes one from the nodes' adverts and installs
it. A program gets pairs over it; then the herald station of the path's second link is stopped.
Its ends advertise the link down, alice moves the path to the other route (a new path id,
installed at the other repeater and at bob; the old one removed), and the program's next pairs
come over the new route: the same ids at both ends, alice's qubit entangled with bob's (the
bench's registry oracle). The time from the stop to the re-route and to the first pair over the
new route is printed (not asserted: timing on a loaded host is no test).
"""
from __future__ import annotations

import asyncio
import time

import pytest

from qnode.daemon.tools.demo import DemoNetwork
from qnode.daemon.tools.topology import Mesh, write_chain_bench

from support.mosquitto import Mosquitto
from support.oracle import Truth, ask_pairs, estimates_ready, telemetry_until
from support.runs import assert_ran_clean

MESH = Mesh((("alice", "r1"), ("r1", "bob"), ("alice", "r2"), ("r2", "bob")), ("alice", "bob"))
SIGMA_TARGET = 0.006
ATTEMPT_RATE_HZ, TEST_FRACTION = 3e5, 0.3
PAIRS = 6


def _routed(latest: dict[str, dict], node: str = "alice") -> dict:
    return latest.get(node, {}).get("routing", {}).get("routed", {})


def _active(latest: dict[str, dict]) -> tuple[str, dict] | None:
    """alice's active path to bob, once its repeater has swapped for it."""
    found = [(pid, p) for pid, p in _routed(latest).get("paths", {}).items()
             if p.get("state") == "active"]
    if len(found) != 1:
        return None
    pid, p = found[0]
    repeater = p["nodes"][1]
    swaps = latest.get(repeater, {}).get("paths", {}).get(pid, {}).get("swaps_total", 0)
    return (pid, p) if swaps > 0 else None


@pytest.mark.asyncio
async def test_a_path_whose_link_fails_moves_to_the_other_route(tmp_path):
    bench = write_chain_bench(tmp_path, MESH, attempt_rate_hz=ATTEMPT_RATE_HZ)
    with Mosquitto(tmp_path / "mosquitto") as broker:
        net = DemoNetwork(tmp_path / "work", f"mqtt://127.0.0.1:{broker.port}",
                          tmp_path / "logs", bench=bench, chain=MESH, max_pair_age_s=1.0,
                          test_fraction=TEST_FRACTION, with_m_link=False)
        broker.tap("demo", lambda: net.daemons)   # the contract: checked at the end
        failure = None
        try:
            await asyncio.to_thread(net.start)
            truth = Truth(net.addresses["qdevice-truth"])
            await telemetry_until(broker.port, estimates_ready(MESH, SIGMA_TARGET), 600)
            first = _active(await telemetry_until(broker.port, _active, 60))
            assert first is not None
            old_id, old = first
            oks1, truths1, bob1, _ = await ask_pairs(broker.port, truth, PAIRS, per_pair_s=60,
                                                     all_s=120)
            # the station of the path's second link (its repeater - bob) stops
            dead = old["links"][1]
            station = MESH.stations[MESH.links.index(dead)]
            t_stop = time.monotonic()
            await asyncio.to_thread(net.stop, [station])

            def moved(latest: dict[str, dict]) -> bool:
                now = _active(latest)
                return now is not None and now[0] != old_id
            after = await telemetry_until(broker.port, moved, 120)
            t_moved = time.monotonic()
            second = _active(after)
            assert second is not None
            new_id, new = second
            latencies: list[float] = []
            t_ask = time.monotonic()
            oks2, truths2, bob2, _ = await ask_pairs(broker.port, truth, PAIRS, per_pair_s=60,
                                                     all_s=120, latencies=latencies)
            t_first = t_ask + latencies[0]
            # bob serves from the new path, the old one draining there or gone; the old
            # route's repeater no longer swaps for it (removed there)

            def bob_moved(latest: dict[str, dict]) -> bool:
                paths = _routed(latest, "bob").get("paths", {})
                repeater = latest.get(old["nodes"][1], {}).get("routing", {})
                return (paths.get(new_id, {}).get("state") == "active"
                        and paths.get(old_id, {}).get("state", "draining") == "draining"
                        and "routed" in repeater
                        and old_id not in repeater["routed"].get("paths", {}))
            end = await telemetry_until(broker.port, bob_moved, 30)
            truth.close()
        except AssertionError as exc:
            failure = exc
        finally:
            await asyncio.to_thread(net.close)
    assert_ran_clean(net, failure, tmp_path / "logs")
    reroute = _routed(after)["last_reroute"]
    print(f"path {old_id} {old['nodes']} -> {new_id} {new['nodes']}; {station} stopped: "
          f"re-routed after {t_moved - t_stop:.1f} s (telemetry every 1 s), first pair over "
          f"the new route {t_first - t_stop:.1f} s after the stop; alice's record {reroute}")
    assert dead not in new["links"] and new["nodes"][0] == "alice" and new["nodes"][-1] == "bob"
    assert set(new["nodes"]) & set(old["nodes"]) == {"alice", "bob"}   # the other route
    assert dead in reroute["reason"] and reroute["old"] == old["nodes"]
    assert _routed(after)["rerouted_total"] == 1
    # before: over the first path; after: over the second, at both ends, the same pairs
    assert {o["link"] for o in oks1 + bob1} == {old_id}
    assert {o["link"] for o in oks2 + bob2} == {new_id}
    # (each end serves its own requester from the pairs it holds, as on a configured path:
    # alice asks one at a time, bob for all at once, so some of their pairs differ)
    common = [{o["seq"]: o["bell_state"] for o in oks}.items() & {
        o["seq"]: o["bell_state"] for o in bob_oks}.items()
        for oks, bob_oks in ((oks1, bob1), (oks2, bob2))]
    assert all(common) and sum(map(len, common)) >= PAIRS, (common, oks1, bob1, oks2, bob2)
    assert {p.split(":")[0] for p, _ in truths1 + truths2} == {"bob"}
    assert end["bob"]["routing"]["routed"]["paths"][new_id]["installer"] == "alice"
