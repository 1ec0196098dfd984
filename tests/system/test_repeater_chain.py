"""End to end through two repeaters, over mosquitto: alice – r1 – r2 – bob, three herald
stations, seven ``qnode run`` daemons and one hal_sim bench (qnode.daemon.tools.topology).

Each repeater swaps on its own and reports to both ends; r1 and r2 each reach one end only
through their identity signature. A program asks both ends for end-to-end pairs: both must
receive the same pair ids in the same frames, alice's qubit must be entangled with bob's
(the bench's registry oracle), and the reported fidelity must be the truth on average. The
fidelity goal of the issue (±0.01 of the truth on average) needs the links at σ ≤ 0.002; here
they reach σ ≤ 0.003 (three links, 12 pairs, to keep the suite short) and the mean must be
within three standard errors of the composed estimate. Routing runs too: alice's route to bob
is the chain, its prediction bounds what is delivered, and a clean stop of r2 removes it.
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from qnode.daemon.linklayer import BELL_STATES
from qnode.daemon.routing.graph import chain_fidelity
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
SIGMA_TARGET = 0.003
ESTIMATE_WAIT_S = 600
ATTEMPT_RATE_HZ, TEST_FRACTION = 3e5, 0.3
PAIRS = 12


def _route(latest: dict[str, dict], node: str, dst: str) -> dict:
    return latest.get(node, {}).get("routing", {}).get("routes", {}).get(dst, {})


def _routed(latest: dict[str, dict]) -> bool:
    """alice's and bob's routes to each other are the chain, every link advertised up."""
    return (all(n in latest for n in CHAIN.nodes)
            and _route(latest, "alice", "bob").get("nodes") == list(CHAIN.nodes)
            and _route(latest, "bob", "alice").get("nodes") == list(reversed(CHAIN.nodes))
            and latest["alice"]["routing"]["links_known"] == len(CHAIN.links))


@pytest.mark.asyncio
async def test_pairs_through_two_repeaters_are_the_same_at_both_ends_and_true(tmp_path):
    bench = write_chain_bench(tmp_path, CHAIN, attempt_rate_hz=ATTEMPT_RATE_HZ)
    with Mosquitto(tmp_path / "mosquitto") as broker:
        net = DemoNetwork(tmp_path / "work", f"mqtt://127.0.0.1:{broker.port}",
                          tmp_path / "logs", bench=bench, chain=CHAIN, max_pair_age_s=1.0,
                          test_fraction=TEST_FRACTION, with_m_link=False)
        failure = None
        try:
            await asyncio.to_thread(net.start)
            assert set(net.daemons) == {*CHAIN.nodes, *CHAIN.stations}
            truth = Truth(net.addresses["qdevice-truth"])
            before = await telemetry_until(broker.port, estimates_ready(CHAIN, SIGMA_TARGET),
                                           ESTIMATE_WAIT_S)
            oks, truths, bob_oks, unread = await ask_pairs(broker.port, truth, PAIRS,
                                                           per_pair_s=60, all_s=120)
            after = await telemetry_until(
                broker.port, lambda t: all("paths" in t.get(r, {}) for r in CHAIN.repeaters),
                20)
            truth.close()
            # routing: every node advertises its links; alice's route to bob is the chain
            routed = await telemetry_until(broker.port, _routed, 30)
            # a clean stop of r2 withdraws its links: alice has no route to bob, at once
            # (r2's last advert has no links; its time-to-live is not waited for)
            await asyncio.to_thread(net.stop, ["r2"])
            unrouted = await telemetry_until(
                broker.port, lambda t: "error" in _route(t, "alice", "bob"), 30)
        except AssertionError as exc:
            failure = exc
        finally:
            await asyncio.to_thread(net.close)
    assert_ran_clean(net, failure, tmp_path / "logs")
    for r in CHAIN.repeaters:
        assert after[r]["paths"]["alice-bob"]["swaps_total"] > 0
    # the same pairs at both ends: ids and frames
    common = {o["seq"]: o["bell_state"] for o in oks}.items() & {
        o["seq"]: o["bell_state"] for o in bob_oks}.items()
    assert len(common) >= PAIRS // 2, (len(common), oks, bob_oks)
    assert len(unread) <= 2, unread                 # at most two read too late
    assert {p.split(":")[0] for p, _ in truths} == {"bob"}   # alice's qubit: bob's partner
    reported = np.array([o["goodness"] for o in oks])
    true_f = np.array([over_bsm_errors(w, 2)[BELL_STATES.index(o["bell_state"])]
                       for o, (_, w) in zip(oks, truths, strict=True)])
    # a misread BSM leaves the pair one Pauli off its frame (about 2 % of pairs): its truth is
    # then far below the estimate (pairs that waited long are near 0.5 anyway: not a criterion)
    flipped = reported - true_f > 0.2
    assert flipped.sum() <= 2, list(zip(reported, true_f, strict=True))
    diff = reported[~flipped] - true_f[~flipped]
    links = {link: before[CHAIN.nodes[k]]["links"][link]["fidelity_estimate"]
             for k, link in enumerate(CHAIN.links)}
    print(f"link estimates {links}; delivered {len(oks)}: reported {reported.mean():.4f} "
          f"true {true_f.mean():.4f}, mean diff {diff.mean():+.4f}, max |diff| "
          f"{np.abs(diff).max():.4f}")
    # every pair shares the three links' estimate errors: at σ 0.003 per link the mean is
    # within 3σ of the composed estimate (~0.014) plus 0.001 of model bias; the issue's ±0.01
    # at four repeaters is benchmarks/repeater_chain.py's (links at σ 0.002 or better)
    sigma = composed_sigma([(before[CHAIN.nodes[k]]["links"][link]["fidelity_estimate"],
                             before[CHAIN.nodes[k]]["links"][link]["fidelity_sigma"])
                            for k, link in enumerate(CHAIN.links)])
    assert abs(diff.mean()) <= 3 * sigma + 0.001, (sigma, list(zip(reported, true_f,
                                                                   strict=True)))
    assert np.abs(diff).max() <= 0.03, list(zip(reported, true_f, strict=True))
    # two swaps cost more than one: below every link
    assert true_f.mean() < min(links.values())
    # the route's prediction (Werner links, ideal swaps: qnode.daemon.routing.graph) is the
    # links' estimates composed, and an upper bound of what the chain delivers
    route = routed["alice"]["routing"]["routes"]["bob"]
    est = [routed[CHAIN.nodes[k]]["links"][link]["fidelity_estimate"]
           for k, link in enumerate(CHAIN.links)]
    print(f"route {route}; predicted from the links now {chain_fidelity(est):.4f}; after r2 "
          f"stopped: {_route(unrouted, 'alice', 'bob')}")
    assert route["links"] == list(CHAIN.links)
    assert route["fidelity"] == pytest.approx(chain_fidelity(est), abs=0.01)
    assert true_f[~flipped].mean() < route["fidelity"]
    assert unrouted["alice"]["routing"]["route_changes_total"] >= 2   # none -> chain -> none
