"""End to end on the demo chain alice – herald1 – repeater – herald2 – bob, over mosquitto.

hal_sim's bench serves the two herald stations' taggers and the three nodes' QDevices (one
shared pair registry); five ``qnode run`` daemons bind heralded pairs to qubits, measure test
pairs for each link's fidelity estimate, and the repeater swaps. A program asks alice and bob
for end-to-end pairs; for every pair alice delivers, the bench's registry oracle
(``SIM:PAIR?``, simulator only) gives the true state of alice's qubit and its partner — which
must be bob's — and the reported fidelity must be the true one on average within three
standard errors of the links' composed estimate (under ±0.01), and within ±0.01 for nine
pairs in ten (all but one within ±0.02, that one within ±0.03).
"""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from qnode.daemon.linklayer import BELL_STATES
from qnode.daemon.tools.demo import DemoNetwork, bench_config_path

from support.mosquitto import Mosquitto
from support.oracle import (
    Truth,
    ask_pairs,
    composed_sigma,
    over_bsm_errors,
    qubit_story,
    telemetry_until,
)
from support.runs import assert_ran_clean

CHAIN = ("herald1", "herald2", "alice", "repeater", "bob")
LINKS = {"alice": "alice-repeater", "bob": "repeater-bob"}
#: wait for each link's test-pair estimate to reach this standard error before asking
SIGMA_TARGET = 0.002
#: ... for at most this long (s)
ESTIMATE_WAIT_S = 600
#: The bench's links attempt at 0.3 MHz (≈1,000 heralds/s each instead of ≈3,300) and 30 % of
#: the pairs are test pairs. The bench's QDevices are one Python process: at the demo's rate it
#: saturated a core, the repeater saw its test pairs only after alice had expired their range
#: and the estimate's σ stalled at 0.0027 after 240 s on a slower 2-core host; here both ends
#: keep up, nearly every test pair is matched and σ reaches 0.002 in about 1 min (with 15 %
#: test pairs it took 2.5 min: the test ran 211 s, now 118 s).
ATTEMPT_RATE_HZ, TEST_FRACTION = 3e5, 0.3
PAIRS = 40


def _estimates_ready(latest: dict[str, dict]) -> bool:
    for node, link in (("alice", "alice-repeater"), ("bob", "repeater-bob"),
                       ("repeater", "alice-repeater"), ("repeater", "repeater-bob")):
        t = latest.get(node, {}).get("links", {}).get(link, {})
        if t.get("fidelity_source") != "tests" or t.get("fidelity_sigma", 1.0) > SIGMA_TARGET:
            return False
    return True


@pytest.mark.asyncio
async def test_end_to_end_pairs_report_the_simulators_fidelity(tmp_path):
    text = bench_config_path().read_text()
    assert text.count("attempt_rate_hz = 1e6") == len(LINKS)   # both K links' rate is set
    bench = tmp_path / "bench.toml"
    bench.write_text(text.replace("attempt_rate_hz = 1e6",
                                  f"attempt_rate_hz = {ATTEMPT_RATE_HZ:g}"))
    with Mosquitto(tmp_path / "mosquitto") as broker:
        net = DemoNetwork(tmp_path / "work", f"mqtt://127.0.0.1:{broker.port}",
                          tmp_path / "logs", nodes=CHAIN, max_pair_age_s=1.0,
                          test_fraction=TEST_FRACTION, bench=bench)
        broker.tap("demo", lambda: net.daemons)   # the contract: checked at the end
        failure = None
        try:
            await asyncio.to_thread(net.start)
            truth = Truth(net.addresses["qdevice-truth"])
            before = await telemetry_until(broker.port, _estimates_ready, ESTIMATE_WAIT_S)
            oks, truths, bob_oks, unread = await ask_pairs(broker.port, truth, PAIRS)
            after = await telemetry_until(
                broker.port, lambda t: "paths" in t.get("repeater", {}), 20)
            truth.close()
        except AssertionError as exc:
            failure = f"{exc}\n{await qubit_story(broker.port, ('alice', 'repeater', 'bob'))}"
        finally:
            await asyncio.to_thread(net.close)
    assert_ran_clean(net, failure, tmp_path / "logs", 4000)

    reported = np.array([o["goodness"] for o in oks])
    true_f = np.array([over_bsm_errors(w)[BELL_STATES.index(o["bell_state"])]
                       for o, (_, w) in zip(oks, truths, strict=True)])
    partners = {p.split(":")[0] for p, _ in truths}
    est = {n: before[n]["links"][LINKS[n]] for n in LINKS}
    summary = [(n, round(e["fidelity_estimate"], 4), round(e["fidelity_sigma"], 4),
                round(e.get("herald_latency_ms_p50", -1)))
               for n, e in est.items()]
    rep = before["repeater"]["links"]
    summary += [("repeater", link, round(rep[link].get("herald_latency_ms_p50", -1)))
                for link in rep]
    print(f"link estimates {summary}; "
          f"delivered {len(oks)}: reported {reported.mean():.4f} true {true_f.mean():.4f}, "
          f"max |diff| {np.abs(reported - true_f).max():.4f}; repeater "
          f"{json.dumps(after['repeater']['paths'])}; {len(unread)} read after the qubit held a "
          f"newer pair ({[round(x, 3) for x in unread]} s after the OK)")
    # each OK promises the application its pair for at least [memory].delivered_hold_s
    assert min(o["hold_ms"] for o in oks + bob_oks) >= 100
    # a pair read too late is not judged (alice kept its hold: oracle.Reading.rebound_after)
    assert len(unread) <= PAIRS // 10, unread
    assert partners == {"bob"}, partners            # alice's qubit is entangled with bob's
    assert {o["link"] for o in oks} == {"alice-bob"} and {o["remote_node"] for o in oks} == {"bob"}
    # the same end-to-end pairs at both ends: ids and frame
    common = {o["seq"]: o["bell_state"] for o in oks}.items() & {
        o["seq"]: o["bell_state"] for o in bob_oks}.items()
    assert len(common) >= PAIRS // 2, (len(common), len(oks), len(bob_oks))
    # Each pair against its own truth. A pair whose BSM was misread (or depolarised) is in
    # another Bell state than its frame says: it cannot match. About 1.1 % of pairs are; more
    # than 3 of 40 has probability ~1e-3. The rest must be within ±0.01.
    diff = reported - true_f
    flipped = true_f < 0.5
    assert flipped.sum() <= 3, list(zip(reported, true_f, strict=True))
    # The estimate is right on average (one link's ±0.002 error and the model's bias) and per
    # pair within ±0.01 but for the scatter of a few ms in the time stamps of a loaded host.
    good = np.abs(diff[~flipped])
    pairs = list(zip(reported, true_f, strict=True))
    # The mean is off by the links' estimate errors, which every pair shares: 3σ of the
    # composed estimate (≤ 0.0085 at σ 0.002 per link), plus 0.001 of model bias. A fixed
    # 0.005 is 1.9σ, a false failure in ~6 % of runs (one seen: −0.0066 at σ_e2e 0.0025).
    # The bound is below the issue's ±0.01 whenever the links reach SIGMA_TARGET.
    sigma = composed_sigma([(e["fidelity_estimate"], e["fidelity_sigma"]) for e in est.values()])
    assert abs(diff[~flipped].mean()) <= min(3 * sigma + 0.001, 0.01), (sigma, pairs)
    # Binds and BSMs are stamped by the device (the reply's arrival less its AGE? of the
    # qubit), so a late event loop no longer ages a pair. One pair in about 40 still strays:
    # 0.0296 was seen on a fresh clone while other simulations loaded both cores (before the
    # device stamps, 0.0215 in two of about ten runs); its cause is not known yet, and this
    # bound names it, no more: one pair may pass 0.02, none 0.03.
    assert (good <= 0.01).mean() >= 0.9 and (good > 0.02).sum() <= 1, pairs
    assert good.max() <= 0.03, pairs
    # swapping costs fidelity as the closed form says: below either link
    assert true_f.mean() < min(e["fidelity_estimate"] for e in est.values())
