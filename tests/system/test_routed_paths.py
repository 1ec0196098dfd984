"""A routed path over mosquitto: the chain alice – r1 – r2 – bob with **no** ``[[paths]]`` in any
config (qnode.daemon.routing.paths).

Every memory node advertises its links; a program asks bob, then alice, for pairs with the
other end. bob's CREATE cannot be placed at bob: it asks alice (PATH_REQ), whose id sorts
first; alice chooses the route from the adverts and installs it at r1, r2 and bob with
identity-signed PATH messages; both ends serve the CREATEs from the path's pairs. Both must
receive the same pair ids in the same frames, alice's qubit must be entangled with bob's (the
bench's registry oracle), the reported fidelity must be the truth within three standard errors
of the links' composed estimate, and every message on the broker must keep the MQTT contract
(the PATHs and adverts too).
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from qnode.daemon.linklayer import BELL_STATES
from qnode.daemon.tools.demo import DemoNetwork
from qnode.daemon.tools.topology import chain, write_chain_bench

from support.mosquitto import Mosquitto
from support.oracle import (
    Truth,
    ask_pairs,
    composed_sigma,
    estimates_ready,
    over_bsm_errors,
    telemetry_until,
)
from support.runs import assert_ran_clean

CHAIN = chain(2)
SIGMA_TARGET = 0.004
ATTEMPT_RATE_HZ, TEST_FRACTION = 3e5, 0.3
PAIRS = 8


def _routed(latest: dict[str, dict]) -> dict:
    return latest.get("alice", {}).get("routing", {}).get("routed", {})


def _swapped(latest: dict[str, dict]) -> bool:
    """Both repeaters report swaps for the routed path alice installed, and every node's
    telemetry has come (the checks below read bob's and the repeaters' too)."""
    paths = _routed(latest).get("paths", {})
    if len(paths) != 1 or not all("routing" in latest.get(n, {}) for n in CHAIN.nodes):
        return False
    (pid,) = paths
    return all(latest.get(r, {}).get("paths", {}).get(pid, {}).get("swaps_total", 0) > 0
               for r in CHAIN.repeaters)


@pytest.mark.asyncio
async def test_a_request_for_a_far_node_is_routed_installed_and_served(tmp_path):
    bench = write_chain_bench(tmp_path, CHAIN, attempt_rate_hz=ATTEMPT_RATE_HZ)
    with Mosquitto(tmp_path / "mosquitto") as broker:
        net = DemoNetwork(tmp_path / "work", f"mqtt://127.0.0.1:{broker.port}",
                          tmp_path / "logs", bench=bench, chain=CHAIN, max_pair_age_s=1.0,
                          test_fraction=TEST_FRACTION, with_m_link=False, paths=False)
        broker.tap("demo", lambda: net.daemons)   # the contract: checked at the end
        failure = None
        try:
            await asyncio.to_thread(net.start)
            truth = Truth(net.addresses["qdevice-truth"])
            before = await telemetry_until(broker.port, estimates_ready(CHAIN, SIGMA_TARGET),
                                           600)
            assert not _routed(before).get("paths"), "a path before any request"
            oks, truths, bob_oks, unread = await ask_pairs(broker.port, truth, PAIRS,
                                                           per_pair_s=60, all_s=120)
            after = await telemetry_until(broker.port, _swapped, 30)
            truth.close()
        except AssertionError as exc:
            failure = exc
        finally:
            await asyncio.to_thread(net.close)
    assert_ran_clean(net, failure, tmp_path / "logs")
    routed = _routed(after)
    (pid, path), = routed["paths"].items()
    print(f"routed path {pid}: {path}; alice {routed}; bob "
          f"{after['bob']['routing'].get('routed')}")
    assert path["nodes"] == list(CHAIN.nodes) and path["links"] == list(CHAIN.links)
    assert path["state"] == "active" and pid.startswith("alice-bob-r")
    assert routed["installed_total"] == 1 and routed["rerouted_total"] == 0
    for node in (*CHAIN.repeaters, "bob"):    # installed where it runs, by alice's PATH
        theirs = after[node]["routing"]["routed"]
        assert list(theirs["paths"]) == [pid], (node, theirs)
        assert theirs["paths"][pid]["installer"] == "alice" and not theirs["refused_total"]
    # the OKs name the routed path; the same pairs at both ends: ids and frames
    assert {o["link"] for o in oks + bob_oks} == {pid}
    common = {o["seq"]: o["bell_state"] for o in oks}.items() & {
        o["seq"]: o["bell_state"] for o in bob_oks}.items()
    assert len(common) >= PAIRS // 2, (len(common), oks, bob_oks)
    assert len(unread) <= 2, unread
    assert {p.split(":")[0] for p, _ in truths} == {"bob"}   # alice's qubit: bob's partner
    reported = np.array([o["goodness"] for o in oks])
    true_f = np.array([over_bsm_errors(w, 2)[BELL_STATES.index(o["bell_state"])]
                       for o, (_, w) in zip(oks, truths, strict=True)])
    flipped = reported - true_f > 0.2      # a misread BSM: one Pauli off its frame
    assert flipped.sum() <= 2, list(zip(reported, true_f, strict=True))
    diff = reported[~flipped] - true_f[~flipped]
    sigma = composed_sigma([(before[CHAIN.nodes[k]]["links"][link]["fidelity_estimate"],
                             before[CHAIN.nodes[k]]["links"][link]["fidelity_sigma"])
                            for k, link in enumerate(CHAIN.links)])
    print(f"delivered {len(oks)}: reported {reported.mean():.4f} true {true_f.mean():.4f}, "
          f"mean diff {diff.mean():+.4f} (3σ {3 * sigma:.4f})")
    assert abs(diff.mean()) <= 3 * sigma + 0.001, (sigma, list(zip(reported, true_f,
                                                                   strict=True)))
