"""Purification end to end on the demo chain's link alice – herald1 – repeater, over mosquitto.

hal_sim's bench serves herald1's tagger and the QDevices (one pair registry); three ``qnode
run`` daemons (herald1, alice, repeater) bind the link's pairs to qubits and estimate its
fidelity from test pairs. A program asks alice for pairs with the repeater: first at the link's
fidelity (no purification), then above it — alice, the link's leader, runs DEJMPS or BBPSSW
pumping rounds with the repeater over ``proto/``, or DEJMPS recurrence (nested rounds) on a
link whose photons are less indistinguishable — then for a fidelity no plan reaches
(ERR UNSUPP). The bench's memories here live 60 s / 20 s (T1/T2), see :data:`T1_S`.
For every pair delivered, the bench's registry oracle gives the true state of alice's qubit and
its partner: purification must raise the true fidelity, the reported fidelity must be the true
one (on average within 3σ of the link estimate, at least ±0.005; ±0.015 per pair, but for the
rare pair a misread check kept), the
rounds must succeed as often as their predicted probabilities say, and the link pairs spent
per delivered pair must be what the plan predicted.
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from qnode.daemon.bus.client import NodeBus
from qnode.daemon.bus.topics import Topics
from qnode.daemon.linklayer import BELL_STATES, Create
from qnode.daemon.quantum.bell_diagonal import BellDiagonal, purify
from qnode.daemon.quantum.estimators import bell_diagonal_from_qber
from qnode.daemon.tools.demo import DemoNetwork, bench_config_path

from support.mosquitto import Mosquitto
from support.oracle import Truth, telemetry_until, undo_decay
from support.runs import log_tails

NODES = ("herald1", "alice", "repeater")
LINK = "alice-repeater"
SIGMA_TARGET = 0.0025
RAW, PURIFIED = 20, 40
#: A purified pair whose true fidelity is this far below its estimate was kept by a misread
#: check: about (1 − p)·2e of rounds (e the read-out error), ~1e-3 of the pumping runs' rounds
#: (2000 pumped pairs in one run had 3 such pairs, truth 0.014-0.024 against 0.99 reported,
#: about 2 predicted). The rest are within 0.004 of their estimate.
MISREAD_GAP = 0.03
#: At most this many such pairs of PURIFIED (at ~0.05 expected per run: P(more) ~ 2e-5).
MAX_MISREAD = 2
#: The memories of this bench: T1 60 s, T2 20 s (nuclear-spin-like). A round's outcomes
#: cross in 50-100 ms here; the demo's 2 s T2 loses 2-4 % in that wait, which is most of what
#: a round gains (its plans then refuse targets much above the raw pairs, as they should).
T1_S, T2_S = 60.0, 20.0


def _long_lived_bench(tmp_path, indistinguishability: float | None = None,
                      readout_error: float | None = None) -> Path:
    """The demo's bench with T1/T2 of :data:`T1_S`/:data:`T2_S`; with
    ``indistinguishability``, herald1's photons are that indistinguishable (0.92 in the demo):
    the link's pairs are then worse, by phase errors mostly; with ``readout_error``, the
    QDevices read out with that error (0.005 in the demo)."""
    text = bench_config_path().read_text()
    assert text.count("t1_ns = 5e9") == 3 and text.count("t2_ns = 2e9") == 3
    text = (text.replace("t1_ns = 5e9", f"t1_ns = {T1_S:g}e9")
            .replace("t2_ns = 2e9", f"t2_ns = {T2_S:g}e9"))
    if indistinguishability is not None:
        assert text.count("indistinguishability = 0.92\n") == 1      # herald1's
        text = text.replace("indistinguishability = 0.92\n",
                            f"indistinguishability = {indistinguishability}\n")
    if readout_error is not None:
        assert text.count("readout_error = 0.005\n") == 3
        text = text.replace("readout_error = 0.005\n", f"readout_error = {readout_error}\n")
    path = tmp_path / "bench.toml"
    path.write_text(text)
    return path


def _link(latest: dict[str, dict], node: str) -> dict:
    return latest.get(node, {}).get("links", {}).get(LINK, {})


def _estimates_ready(sigma: float):
    """Telemetry condition: both ends' test-pair estimates have standard error ``sigma``."""
    def ready(latest: dict[str, dict]) -> bool:
        return all(_link(latest, n).get("fidelity_source") == "tests"
                   and _link(latest, n).get("fidelity_sigma", 1.0) <= sigma
                   for n in ("alice", "repeater"))
    return ready


@dataclass
class Asked:
    """One phase's replies: the OKs whose truth the oracle read, their truths, the seconds
    after their OK at which the qubits of the rest held newer pairs (read too late: see
    :meth:`oracle.Reading.rebound_after`), the oracle's read lags (s after each OK) and every
    reply type."""

    oks: list[dict] = field(default_factory=list)
    truths: list[tuple[str, np.ndarray]] = field(default_factory=list)
    late: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    types: list[str] = field(default_factory=list)


async def _ask(port: int, truth: Truth, min_fidelity: float, n: int, app_id: str) -> Asked:
    """Ask alice, as application ``app_id`` (a client's message ids are its own: one id per
    phase), for ``n`` pairs of at least ``min_fidelity``, one at a time; the oracle reads
    each pair's truth as soon as its OK arrives."""
    asked = Asked()
    oks, truths, types = asked.oks, asked.truths, asked.types
    got: asyncio.Queue = asyncio.Queue()

    async def on_reply(topic, msg) -> None:
        types.append(msg.type if msg.type in ("ACK", "OK") else f"{msg.type} {msg.body}")
        if msg.type == "OK":
            try:
                reading = await asyncio.to_thread(truth.read, "alice", msg.body["qubit"])
                asked.lags.append(time.time() - msg.ts)
                late = reading.rebound_after(msg)
                if late is None:
                    partner, w = reading.pair()
            except AssertionError as exc:              # the reply is in types
                types[-1] = f"OK, but the oracle: {exc}"
                got.put_nowait(types[-1])
                return
            if late is not None:
                asked.late.append(late)
            else:
                truths.append((partner, undo_decay(w, max(0.0, time.time() - msg.ts), T1_S,
                                                   T2_S)))
                oks.append(msg.body)
        # ERR EXPIRE (the link-layer draft's): a pair delivered before reached the far end's
        # cut-off
        if msg.type != "ACK" and msg.body.get("code") != "EXPIRE":
            got.put_nowait(msg.type)

    app = NodeBus(Topics("demo", app_id), "127.0.0.1", port)
    app.on("reply", on_reply)
    app.subscribe(f"qnet/v1/demo/+/reply/{app_id}")
    runner = asyncio.create_task(app.run())
    try:
        await app.wait_connected(10)
        for _ in range(n):
            app.publish("qnet/v1/demo/alice/cmd", "CREATE",
                        Create("repeater", min_fidelity, 0, 9, 1).to_dict())
            if await asyncio.wait_for(got.get(), 60) != "OK":   # the reply is in types
                break
    finally:
        await app.close()
        await runner
    return asked


def _relative(ok: dict, weights: np.ndarray) -> np.ndarray:
    """A pair's true Bell weights relative to the frame its OK announced (Φ+ first)."""
    f = BELL_STATES.index(ok["bell_state"])
    return np.array([weights[k ^ f] for k in range(4)])


def _true_fidelities(oks: list[dict], truths: list[tuple[str, np.ndarray]]) -> np.ndarray:
    return np.array([w[BELL_STATES.index(o["bell_state"])]
                     for o, (_, w) in zip(oks, truths, strict=True)])


@dataclass
class Run:
    """What one purification run saw: alice's link estimate before, the unpurified and the
    purified OKs with their truths, the target, the reply types of the refused CREATE and
    alice's and the repeater's link telemetry after."""

    before: dict
    raw_oks: list[dict]
    raw_truths: list[tuple[str, np.ndarray]]
    target: float
    oks: list[dict]
    truths: list[tuple[str, np.ndarray]]
    refused: list[str]
    alice: dict
    repeater: dict
    late: list[float]        # s after their OKs at which unread pairs' qubits held newer ones
    lags: list[float]        # s after each OK at which the oracle read it


async def _purification_run(tmp_path, bench: Path, protocol: str, schedule: str,
                            choose_target, sigma: float = SIGMA_TARGET,
                            readout_error: float = 0.005) -> Run:
    """herald1, alice and the repeater on ``bench``; RAW pairs unpurified, then PURIFIED at
    ``choose_target(alice's link telemetry, the raw OKs)``, then one at 0.9995; asks once the
    link's estimate has standard error ``sigma``; ``readout_error``: the bench's QDevices'."""
    with Mosquitto(tmp_path / "mosquitto") as broker:
        net = DemoNetwork(tmp_path / "work", f"mqtt://127.0.0.1:{broker.port}",
                          tmp_path / "logs", nodes=NODES, max_pair_age_s=0.5,
                          test_fraction=0.1, qubits_per_link=3, bench=bench,
                          memory_t1_s=T1_S, memory_t2_s=T2_S,
                          memory_readout_error=readout_error, purification=protocol,
                          purification_schedule=schedule)
        broker.tap("demo", lambda: net.daemons)   # the contract: checked at the end
        try:
            await asyncio.to_thread(net.start)
            truth = Truth(net.addresses["qdevice-truth"])
            before = await telemetry_until(broker.port, _estimates_ready(sigma), 240)
            raw = await _ask(broker.port, truth, 0.0, RAW, "raw")
            target = choose_target(_link(before, "alice"), raw.oks)
            pure = await _ask(broker.port, truth, target, PURIFIED, "pure")
            greedy = await _ask(broker.port, truth, 0.9995, 1, "greedy")
            after = await telemetry_until(
                broker.port, lambda t: _link(t, "alice").get("purify_delivered_total", 0)
                >= PURIFIED, 20)
            truth.close()
        finally:
            await asyncio.to_thread(net.close)
    logs = log_tails(tmp_path / "logs")
    assert all(c == 0 for c in net.exit_codes.values()), (net.exit_codes, logs)
    assert len(pure.oks) + len(pure.late) == PURIFIED and len(raw.oks) + len(raw.late) == RAW, (
        raw.types, pure.types, logs)
    return Run(before, raw.oks, raw.truths, target, pure.oks, pure.truths, greedy.types,
               _link(after, "alice"), _link(after, "repeater"), raw.late + pure.late,
               raw.lags + pure.lags)


def _check_run(run: Run, label: str, gain: float) -> tuple[np.ndarray, float]:
    """What every run must show: purification raised the true fidelity to the target (and
    ``gain`` above the unpurified pairs'), the reported fidelity is the true one, the rounds
    succeeded as often as predicted, and a fidelity no plan reaches was refused at once.
    Returns the purified pairs' true fidelities and the link pairs per delivered pair that
    went into it or into failed rounds: what a plan predicts (pairs that waited in vain for a
    partner or lost it to an aborted round are extra, and counted apart)."""
    raw_true = _true_fidelities(run.raw_oks, run.raw_truths)
    reported = np.array([o["goodness"] for o in run.oks])
    true_f = _true_fidelities(run.oks, run.truths)
    a, est = run.alice, _link(run.before, "alice")
    delivered = a["purify_delivered_total"]
    spent = a["purify_pairs_used_total"] / delivered
    planned_kind = (a["purify_inputs_delivered_total"]
                    + a["purify_inputs_failed_total"]) / delivered
    rounds, kept, expected = (a["purify_rounds_total"], a["purify_kept_total"],
                              a["purify_expected_kept"])
    raw_rel = np.mean([_relative(o, w) for o, (_, w) in zip(run.raw_oks, run.raw_truths,
                                                             strict=True)], axis=0)
    print(f"{label}: link F {est['fidelity_estimate']:.4f} ± {est['fidelity_sigma']:.4f} "
          f"QBER X/Y/Z {est['qber_x']:.4f}/{est['qber_y']:.4f}/{est['qber_z']:.4f}; raw pairs' "
          f"true weights relative to their frames {np.round(raw_rel, 4).tolist()}; "
          f"raw pairs: reported "
          f"{np.mean([o['goodness'] for o in run.raw_oks]):.4f} true {raw_true.mean():.4f}; "
          f"target {run.target}: {len(run.oks)} purified, reported {reported.mean():.4f} true "
          f"{true_f.mean():.4f} max |diff| {np.abs(reported - true_f).max():.4f}; rounds "
          f"{rounds} kept {kept} predicted {expected:.1f}; link pairs per delivered pair "
          f"{spent:.3f} (delivered or failed {planned_kind:.3f}, waited in vain "
          f"{a['purify_inputs_expired_total'] / delivered:.3f}, aborted "
          f"{a['purify_inputs_aborted_total'] / delivered:.3f}), "
          f"plan {a['purify_plan_pairs_per_output']:.3f} "
          f"({a['purify_plan_rounds']} round(s), F {a['purify_plan_fidelity']:.4f}); alice "
          f"{ {k: v for k, v in a.items() if k.startswith('purify')} }; repeater "
          f"{ {k: v for k, v in run.repeater.items() if k.startswith('purify')} }; oracle read "
          f"lag median {np.median(run.lags) * 1e3:.0f} ms, max {max(run.lags) * 1e3:.0f} ms; "
          f"{int((reported - true_f > MISREAD_GAP).sum())} kept by a misread check; "
          f"{len(run.late)} read after the qubit held a newer pair "
          f"({[round(x, 3) for x in run.late]} s after the OK)")
    # each OK promises the application its pair for at least [memory].delivered_hold_s
    assert min(o["hold_ms"] for o in run.raw_oks + run.oks) >= 100
    # a pair read too late is not judged (the node kept its hold: Reading.rebound_after)
    assert len(run.late) <= (RAW + PURIFIED) // 10, run.late
    # every pair is alice's qubit entangled with one of the repeater's
    assert {p.split(":")[0] for p, _ in run.raw_truths + run.truths} == {"repeater"}
    pairs = list(zip(reported, true_f, strict=True))
    # A round whose check failed but was misread as passed keeps a pair that, given the true
    # outcomes, is off its frame: its truth is far below any estimate. The estimate counts that
    # chance (test_purification checks the expectation over thousands of rounds on the twins);
    # here such pairs must be rare and the rest must match.
    misread = reported - true_f > MISREAD_GAP
    assert misread.sum() <= MAX_MISREAD, pairs
    good = true_f[~misread]
    assert good.mean() >= run.target - 0.003 and good.mean() > raw_true.mean() + gain, pairs
    assert (reported >= run.target).all()
    diff = (reported - true_f)[~misread]
    # Every pair of a run is estimated from the same test pairs, so the mean diff is one draw
    # of the link estimate's error carried through the rounds (about one for one here), not an
    # average over PURIFIED: a CI run at σ 0.0025 had the link 2.4σ low (raw pairs reported
    # 0.0063 below their truth, purified ones 0.0061).
    mean_bound = max(0.005, 3 * est["fidelity_sigma"])
    assert abs(diff.mean()) <= mean_bound and np.abs(diff).max() <= 0.015, pairs
    # rounds kept as often as their predicted probabilities say (3 sigma)
    sd = math.sqrt(max(expected * (1 - expected / max(rounds, 1)), 1.0))
    assert abs(kept - expected) <= 3 * sd, (kept, expected, rounds)
    # a fidelity no plan reaches is refused at once
    assert [t for t in run.refused if "EXPIRE" not in t] == [
        "ERR {'code': 'UNSUPP', " + run.refused[-1].split(", ", 1)[1]], run.refused
    return true_f, planned_kind


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol, gain", [
    ("dejmps", 0.02),
    # the twirl throws away what DEJMPS uses (the link's errors are mostly one kind)
    ("bbpssw", 0.005)])
async def test_pumping_raises_fidelity_and_costs_yield_as_predicted(tmp_path, protocol, gain):
    def above_the_raw_pairs(link: dict, raw_oks: list[dict]) -> float:
        # above what a pair has when it is delivered unpurified
        return round(float(np.mean([o["goodness"] for o in raw_oks])) + gain, 4)

    run = await _purification_run(tmp_path, _long_lived_bench(tmp_path), protocol, "pumping",
                                  above_the_raw_pairs)
    _, spent = _check_run(run, f"{protocol}/pumping", 0.008)
    a = run.alice
    # ... so the yield is the plan's: link pairs per delivered pair (in it or in failed
    # rounds; the pumping runs lose next to none otherwise). BBPSSW's plan is
    # its average over the twirl; each pair's output scatters around it (by the twirl drawn),
    # and those below the target cost more pairs: there the plan is a lower bound.
    if protocol == "dejmps":
        assert spent == pytest.approx(a["purify_plan_pairs_per_output"], rel=0.2), spent
        assert a["purify_plan_rounds"] == 1
    else:
        assert spent >= 0.9 * a["purify_plan_pairs_per_output"], spent


#: herald1's photons in the recurrence test: the link's pairs have F ≈ (1 + 0.5)/2, so a
#: second, nested round gains as much as the first (with the demo's 0.92 the first round reaches
#: the gates' floor and nesting has nothing left to show). The two rounds' output moves by
#: ~0.5 of the link estimate's σ (sampled: sd 0.0022 at σ 0.004, where a mean off by more than
#: 0.005 came up in 2 % of runs), so the run waits for σ 0.003 (sd ~0.0016).
LOW_INDISTINGUISHABILITY = 0.5
#: The recurrence test's QDevices read out 10x better than the demo's. A reported fidelity is
#: the expectation given the outcomes, so it counts the chance that a misread passed a bad pair
#: (about 2e per round); the few pairs that really were misread are far below it and the rest
#: above it. Over two nested rounds of these pairs that gap is ~0.009 at e = 0.005, too much for
#: a per-pair check of ±0.005 on average; test_purification checks, over thousands of nested
#: rounds on the simulator, that the expectation itself is right at any e.
RECURRENCE_READOUT_ERROR = 0.0005


@pytest.mark.asyncio
async def test_recurrence_nests_rounds_and_costs_yield_as_predicted(tmp_path):
    def between_one_and_two_rounds(link: dict, raw_oks: list[dict]) -> float:
        """Above what one DEJMPS round can give the link's pairs, below two nested rounds:
        the devices' gates and read-out (the bench's calibration), no decay."""
        # read-out corrected QBERs: counting noise can put one just below 0 (the daemon clips)
        q = {b: min(max(link[f"qber_{b}"], 0.0), 1.0) for b in "xyz"}
        est = bell_diagonal_from_qber(q_x=q["x"], q_y=q["y"], q_z=q["z"])
        state = BellDiagonal(tuple(est.weights[k] for k in BELL_STATES))
        calibration = {"gate_fidelity": 0.999 ** 3,
                       "meas_fidelity": 1.0 - RECURRENCE_READOUT_ERROR}
        one = purify(state, state, protocol="dejmps", **calibration).state
        two = purify(one, one, protocol="dejmps", **calibration).state
        return round(one.fidelity() + 0.4 * (two.fidelity() - one.fidelity()), 4)

    bench = _long_lived_bench(tmp_path, LOW_INDISTINGUISHABILITY, RECURRENCE_READOUT_ERROR)
    run = await _purification_run(tmp_path, bench, "dejmps", "recurrence",
                                  between_one_and_two_rounds, sigma=0.003,
                                  readout_error=RECURRENCE_READOUT_ERROR)
    _, spent = _check_run(run, "dejmps/recurrence", 0.1)
    a = run.alice
    # every pair delivered is two levels deep: two level-1 pairs, each of two link pairs
    assert a["purify_plan_rounds"] == 2
    assert a["purify_inputs_delivered_total"] == 4 * a["purify_delivered_total"], a
    # The plan counts rounds only: a lower bound. With 3 qubits a level-1 pair waits for the
    # next one to be made (0.2-0.5 s here) and some reach the 0.5 s cut-off or lose their
    # partner to a round aborted at the cut-off; the rounds that made them count as failed
    # here, and their inputs apart (printed). Rounds pass as predicted (Σ p, above).
    assert spent >= 0.9 * a["purify_plan_pairs_per_output"], spent
