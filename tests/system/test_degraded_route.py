"""Routing follows measured link state, over mosquitto: the mesh

    alice - r1 - bob
    alice - r2 - bob

with four herald stations and eight ``qnode run`` daemons. No config names a path. alice keeps a
routed path to bob whose pairs must be predicted at F ≥ 0.85 (``[routing] paths_to`` and
``min_fidelity``); both routes predict about 0.9.

Once the path is active, the test lowers the HOM visibility of the path's second link in the
simulator (0.92 → 0.4: that link's new pairs go from F ≈ 0.96 to 0.70) and touches nothing else.
The link's ends see their test pairs' error fractions jump, restart their estimates
(:class:`~qnode.daemon.klink.memory.LinkTomography`) and advertise the lower fidelity; alice's
prediction for the route falls below 0.85 and she moves the path to the other route. A request
made after the move is served from the new route: alice-app and bob-app get the same pairs
(ids and Bell states), alice's qubit entangled with bob's (the bench's registry oracle). The
times from the change to the restart and to the move are printed, not asserted.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from qnode.daemon.tools.demo import DemoNetwork
from qnode.daemon.tools.topology import Mesh, write_chain_bench

from support.apps import App, ask, pairs_for
from support.mosquitto import Mosquitto
from support.oracle import Truth, estimates_ready, qubit_story, telemetry_until
from support.runs import assert_ran_clean

MESH = Mesh((("alice", "r1"), ("r1", "bob"), ("alice", "r2"), ("r2", "bob")), ("alice", "bob"))
SIGMA_TARGET = 0.006
ATTEMPT_RATE_HZ, TEST_FRACTION = 3e5, 0.3
NEED = 0.85                 # alice's [routing] min_fidelity
DEGRADED_VISIBILITY = 0.4   # the bench's links have 0.92
APPS = {"alice": "\n[applications.alice-app]\nweight = 1.0\npurposes = []\n",
        "bob": "\n[applications.bob-app]\nweight = 1.0\npurposes = [7]\n"}
POOL = "route-alice-bob"
PAIRS = 3


def _routed(latest: dict[str, dict], node: str = "alice") -> dict:
    return latest.get(node, {}).get("routing", {}).get("routed", {})


def _active(latest: dict[str, dict]) -> tuple[str, dict] | None:
    """alice's active path to bob, once its repeater has swapped for it."""
    found = [(pid, p) for pid, p in _routed(latest).get("paths", {}).items()
             if p.get("state") == "active"]
    if len(found) != 1:
        return None
    pid, p = found[0]
    swaps = latest.get(p["nodes"][1], {}).get("paths", {}).get(pid, {}).get("swaps_total", 0)
    return (pid, p) if swaps > 0 else None


def _link(latest: dict[str, dict], node: str, link: str) -> dict:
    return latest.get(node, {}).get("links", {}).get(link, {})


@pytest.mark.asyncio
async def test_a_path_moves_off_a_link_whose_measured_fidelity_drops(tmp_path):
    bench = write_chain_bench(tmp_path, MESH, attempt_rate_hz=ATTEMPT_RATE_HZ)
    with Mosquitto(tmp_path / "mosquitto") as broker:
        net = DemoNetwork(tmp_path / "work", f"mqtt://127.0.0.1:{broker.port}",
                          tmp_path / "logs", bench=bench, chain=MESH, max_pair_age_s=2.0,
                          test_fraction=TEST_FRACTION, with_m_link=False, extra=APPS,
                          route_min_fidelity=NEED)
        broker.tap("demo", lambda: net.daemons)   # the contract: checked at the end
        failure = None
        alice_app = bob_app = None
        try:
            await asyncio.to_thread(net.start)
            truth = Truth(net.addresses["qdevice-truth"])
            await telemetry_until(broker.port, estimates_ready(MESH, SIGMA_TARGET), 600)
            first = _active(await telemetry_until(broker.port, _active, 60))
            assert first is not None
            old_id, old = first
            degraded = old["links"][1]
            ends = MESH.edges[MESH.links.index(degraded)]
            truth.set_visibility(degraded, DEGRADED_VISIBILITY)
            t_change = time.monotonic()

            def restarted(latest: dict[str, dict]) -> bool:
                return all(_link(latest, n, degraded).get("estimate_restarts_total", 0) >= 1
                           for n in ends)
            at_restart = await telemetry_until(broker.port, restarted, 300)
            t_restart = time.monotonic()

            def moved(latest: dict[str, dict]) -> bool:
                now = _active(latest)
                return now is not None and now[0] != old_id
            after = await telemetry_until(broker.port, moved, 180)
            t_moved = time.monotonic()
            second = _active(after)
            assert second is not None
            new_id, new = second
            # a request after the move: served from the new route at both ends
            alice_app, bob_app = App("alice-app", broker.port), App("bob-app", broker.port)
            bob_app.send("bob", "LISTEN", {"purpose": 7})
            assert bob_app.next()[0] == "LISTENING"
            replies = await asyncio.to_thread(
                ask, alice_app, "alice", "d1", 300, remote="bob", pairs=PAIRS, purpose=7,
                timeout_s=240)
            assert replies[-1][0] == "DONE", replies
            mine = [b for t, b in replies if t == "PAIR"]
            partner, _ = truth.read("alice", mine[-1]["qubit"]).pair()
            theirs = await asyncio.to_thread(pairs_for, bob_app, PAIRS, 120)
            truth.close()
        except AssertionError as exc:
            failure = f"{exc}\n{await qubit_story(broker.port, MESH.nodes)}"
        finally:
            for app in (alice_app, bob_app):
                if app is not None:
                    app.close()
            await asyncio.to_thread(net.close)
    assert_ran_clean(net, failure, tmp_path / "logs")
    reroute = _routed(after)["last_reroute"]
    seen = {n: _link(at_restart, n, degraded) for n in ends}
    print(f"path {old_id} {old['nodes']} -> {new_id} {new['nodes']}; {degraded} at V "
          f"{DEGRADED_VISIBILITY}: estimates restarted {t_restart - t_change:.1f} s after the "
          f"change ({ {n: round(s['fidelity_estimate'], 3) for n, s in seen.items()} }), path "
          f"moved {t_moved - t_change:.1f} s after it; alice's record {reroute}; pairs after: "
          f"{[(p['pair_id'], p['fidelity']) for p in mine]}")
    assert degraded not in new["links"] and new["nodes"][0] == "alice"
    assert new["nodes"][-1] == "bob" and set(new["nodes"]) & set(old["nodes"]) == {"alice", "bob"}
    assert "predicted fidelity" in reroute["reason"] and reroute["old"] == old["nodes"]
    assert _routed(after)["rerouted_total"] == 1
    # the degraded link's ends measured the change: their estimates are well below the others'
    for n, s in seen.items():
        assert s["fidelity_estimate"] < 0.85, (n, s)
    # the new route's links were never restarted
    for k, link in enumerate(new["links"]):
        for n in new["nodes"][k:k + 2]:
            assert "estimate_restarts_total" not in _link(after, n, link), (n, link)
    assert [p["pair_id"] for p in mine] == [p["pair_id"] for p in theirs], (mine, theirs)
    assert [p["bell_state"] for p in mine] == [p["bell_state"] for p in theirs]
    assert {p["pool"] for p in mine + theirs} == {POOL}
    assert partner == f"bob:{theirs[-1]['qubit']}", (partner, theirs[-1])
