"""K-type heralding (hal_sim.heralding) against its closed form, within 3σ (fixed seeds).

The streamed station tags are classified here by an independent numpy implementation of the
herald rule (per-attempt gates, the set of detectors that clicked) and compared with the
simulator's truth list herald by herald.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from qnode.drivers.id900 import ID900, ID900Tagger
from qnode.hal_sim import Fibre
from qnode.hal_sim.physics.heralding import (
    BELL_STATES,
    HeraldingLink,
    HeraldingSimulator,
    herald_expectation,
    station_detectors,
)
from qnode.hal_sim.twins.id900 import SimulatedID900
from qnode.hal_sim.twins.tagger import SimulatedTagger

PSI = {"psi+": BELL_STATES.index("psi+"), "psi-": BELL_STATES.index("psi-")}


def main_link(**kw) -> HeraldingLink:
    """10 MHz attempts, 10 km and 15 km of fibre, V = 0.9: about 40 k heralds per second."""
    args = dict(attempt_rate_hz=1e7, emission_probability=0.2,
                fibres=(Fibre(10.0), Fibre(15.0)),
                detectors=station_detectors(efficiency=0.8, dark_count_rate_hz=100.0),
                indistinguishability=0.9)
    args.update(kw)
    return HeraldingLink("station", ("alice", "bob"), **args)


def dark_link() -> HeraldingLink:
    """Bright dark counts (1 MHz per detector, q = 2e-3 per 2 ns gate) against a weak link:
    false heralds are a fifth of all."""
    return HeraldingLink("station", ("alice", "bob"), attempt_rate_hz=2e6,
                         emission_probability=0.1, fibres=(Fibre(20.0), Fibre(20.0)),
                         detectors=station_detectors(efficiency=0.8, dark_count_rate_hz=1e6,
                                                     dead_time_ps=2_000),
                         indistinguishability=0.8, gate_ps=2_000)


def run(link: HeraldingLink, seed: int, duration_ps: int, slice_ps: int = 10_000_000_000):
    sim = HeraldingSimulator(link, seed=seed, slice_ps=slice_ps)
    blocks, heralds, chunks = [], [], []
    for chunk in sim.stream(duration_ps):
        blocks.append(chunk.blocks["station"])
        heralds.append(chunk.truth.heralds)
        chunks.append(chunk.truth)
    return sim, np.concatenate(blocks), np.concatenate(heralds), chunks


def classify(block: np.ndarray, link: HeraldingLink) -> dict[str, np.ndarray]:
    """The herald rule on a station stream: attempt k's gate on channel c is
    [k·P + delay_c − G//2, +G); its mask is the set of detectors (c-H, c-V, d-H, d-V) with a tag
    in it; {c-H,d-V}/{c-V,d-H} is Ψ−, {c-H,c-V}/{d-H,d-V} is Ψ+. Time: the later of the two
    detectors' first tags."""
    period, gate = link.period_ps, link.gate_ps
    channels = np.array([d.channel for d in link.detectors])
    det = np.searchsorted(channels, block["channel"])   # channels 1-4 in order here
    assert np.array_equal(channels[det], block["channel"])
    delay = np.array([d.delay_ps for d in link.detectors], np.int64)[det]
    u = block["time"] - delay + gate // 2
    k = u // period
    keep = (u % period) < gate
    t, k, det = block["time"][keep], k[keep], det[keep]
    # first tag of each (attempt, detector): the stream is time-ordered
    _, first = np.unique(k * 4 + det, return_index=True)
    t, k, det = t[first], k[first], det[first]
    attempts, inverse = np.unique(k, return_inverse=True)
    mask = np.zeros(attempts.size, np.int64)
    np.bitwise_or.at(mask, inverse, 1 << det)
    later = np.zeros(attempts.size, np.int64)
    np.maximum.at(later, inverse, t)
    state = np.full(attempts.size, -1)
    for m, name in ((0b1001, "psi-"), (0b0110, "psi-"), (0b0011, "psi+"), (0b1100, "psi+")):
        state[mask == m] = PSI[name]
    ok = state >= 0
    return {"attempt": attempts[ok], "time": later[ok], "announced": state[ok]}


@pytest.fixture(scope="module")
def main_run():
    return run(main_link(), seed=21, duration_ps=1_000_000_000_000)  # 1e7 attempts


@pytest.fixture(scope="module")
def dark_run():
    return run(dark_link(), seed=5, duration_ps=2_000_000_000_000)   # 4e6 attempts


def within_3_sigma(observed: float, expected: float, sigma: float) -> None:
    assert abs(observed - expected) <= 3 * sigma, (observed, expected, sigma)


def test_closed_form_without_darks_is_half_eta_a_eta_b():
    link = main_link(detectors=station_detectors(efficiency=0.8, dark_count_rate_hz=0.0))
    e = herald_expectation(link)
    eta = [0.2 * f.transmission * 0.8 for f in link.fibres]
    assert e.herald_rate_hz == pytest.approx(1e7 * 0.5 * eta[0] * eta[1], rel=1e-12)
    assert e.false_herald_rate_hz == 0.0
    assert e.p_true["psi+"] == pytest.approx(e.p_true["psi-"], rel=1e-12)


def test_herald_rate_and_bell_state_split_match_the_formula(main_run):
    sim, _, heralds, _ = main_run
    n, expected = heralds.size, sim.expected.p_herald * sim.truth.attempts
    p = sim.expected.p_herald
    within_3_sigma(n, expected, math.sqrt(sim.truth.attempts * p * (1 - p)))
    assert n > 30_000
    n_plus = int(np.count_nonzero(heralds["announced"] == PSI["psi+"]))
    within_3_sigma(n_plus, n / 2, math.sqrt(n / 4))
    assert n_plus + int(np.count_nonzero(heralds["announced"] == PSI["psi-"])) == n
    t = sim.truth
    assert sum(t.true_heralds.values()) + sum(t.false_heralds.values()) == n
    for name in ("alice", "bob"):   # emissions ~ Bin(attempts, p_e), arrivals ~ Bin(., α)
        within_3_sigma(t.emissions[name], 0.2 * t.attempts, math.sqrt(t.attempts * 0.2 * 0.8))
    alpha = sim.expected.arrival_probability
    within_3_sigma(t.photons_arrived["bob"], alpha[1] * t.attempts,
                   math.sqrt(t.attempts * alpha[1]))


def test_true_heralds_carry_the_fidelity_of_the_indistinguishability(main_run):
    sim, _, heralds, _ = main_run
    true = heralds[heralds["true"]]
    f = (1 + 0.9) / 2
    assert np.all(true["fidelity"] == f)
    assert np.all(heralds[~heralds["true"]]["fidelity"] == 0.25)
    assert sim.truth.mean_fidelity_true == pytest.approx(f)
    # each herald's drawn state is the announced one with probability F, else the other Ψ
    same = int(np.count_nonzero(true["state"] == true["announced"]))
    within_3_sigma(same, f * true.size, math.sqrt(true.size * f * (1 - f)))
    assert set(np.unique(true["state"])) <= {PSI["psi+"], PSI["psi-"]}
    assert sim.truth.state_is_announced == same


def test_a_visibility_changed_mid_run_sets_the_fidelity_of_the_heralds_after_it():
    """set_indistinguishability(0.5) between slices: heralds before keep F = 0.95, those
    after have F = 0.75 (recorded, and the drawn states within 3σ); a bad V changes nothing."""
    sim = HeraldingSimulator(main_link(), seed=9, slice_ps=100_000_000)
    before = np.concatenate([sim.step().truth.heralds for _ in range(10)])
    sim.set_indistinguishability(0.5)
    assert sim.link.indistinguishability == 0.5 and sim.expected.fidelity_true == 0.75
    assert sim.truth.expected is sim.expected
    after = np.concatenate([sim.step().truth.heralds for _ in range(10)])
    for heralds, f in ((before, 0.95), (after, 0.75)):
        true = heralds[heralds["true"]]
        assert np.all(true["fidelity"] == f)
        same = int(np.count_nonzero(true["state"] == true["announced"]))
        within_3_sigma(same, f * true.size, math.sqrt(true.size * f * (1 - f)))
    with pytest.raises(ValueError, match="indistinguishability"):
        sim.set_indistinguishability(1.5)
    assert sim.link.indistinguishability == 0.5


def test_false_heralds_from_dark_counts_match_the_derived_rate(dark_run):
    sim, _, heralds, _ = dark_run
    link, e, n = sim.link, sim.expected, sim.truth.attempts
    false = heralds[~heralds["true"]]
    within_3_sigma(false.size, n * sum(e.p_false.values()),
                   math.sqrt(n * sum(e.p_false.values())))
    within_3_sigma(heralds.size - false.size, n * sum(e.p_true.values()),
                   math.sqrt(n * sum(e.p_true.values())))
    assert false.size > 500
    assert np.all(false["fidelity"] == 0.25)
    # leading order: attempt_rate·[2·(η_a + η_b)·q + 4·q²], q = D·G
    q = 1e6 * link.gate_ps * 1e-12
    eta_a, eta_b = e.detection_probability
    assert e.false_herald_rate_hz == pytest.approx(
        e.attempt_rate_hz * (2 * (eta_a + eta_b) * q + 4 * q * q), rel=0.05)
    # the drawn state of a false herald is uniform over the four Bell states
    assert len(np.unique(false["state"])) == 4


@pytest.mark.parametrize("which", ["main_run", "dark_run"])
def test_numpy_classifier_of_the_stream_agrees_with_the_truth_list(which, request):
    sim, block, heralds, _ = request.getfixturevalue(which)
    assert np.all(np.diff(block["time"]) >= 0)
    got = classify(block, sim.link)
    assert np.array_equal(got["attempt"], heralds["attempt"])
    assert np.array_equal(got["time"], heralds["time"])
    assert np.array_equal(got["announced"], heralds["announced"])


def test_same_seed_same_stream_other_seed_other_stream():
    link = main_link()
    _, b1, h1, _ = run(link, 3, 20_000_000_000)
    _, b2, h2, _ = run(link, 3, 20_000_000_000)
    _, b3, _, _ = run(link, 4, 20_000_000_000)
    assert np.array_equal(b1, b2) and np.array_equal(h1, h2)
    assert b1.size != b3.size or not np.array_equal(b1, b3)


def test_gates_straddling_chunk_boundaries_are_classified_once():
    """Slices of three attempts and unequal detector delays: most gates cross a horizon."""
    dets = tuple(station_detectors(efficiency=0.8, dark_count_rate_hz=1e5))
    dets = tuple(type(d)(d.channel, d.efficiency, d.dark_count_rate_hz, d.dead_time_ps,
                         d.jitter_ps, delay) for d, delay in zip(dets, (0, 150, 37, 400),
                                                                 strict=True))
    link = HeraldingLink("station", ("alice", "bob"), attempt_rate_hz=1e6,
                         emission_probability=0.5, detectors=dets, gate_ps=1_000)
    sim, block, heralds, chunks = run(link, 8, 10_000_000_000, slice_ps=3_000_000)
    assert len(chunks) > 3000 and heralds.size > 500
    assert np.all(np.diff(heralds["attempt"]) > 0)
    got = classify(block, link)
    assert np.array_equal(got["time"], heralds["time"])
    assert np.array_equal(got["announced"], heralds["announced"])
    assert sim.truth.attempts == sum(c.attempts for c in chunks) == 3 * 3334  # whole slices
    assert sim.truth.singles == {c: int(np.count_nonzero(block["channel"] == c))
                                 for c in (1, 2, 3, 4)}
    assert sim.truth.complete


def test_the_id900_twin_streams_the_station_through_the_real_driver():
    link = main_link(attempt_rate_hz=1e6)
    duration = 50_000_000_000
    expected = np.concatenate(list(SimulatedTagger(HeraldingSimulator(link, seed=2), "station",
                                                   duration_ps=duration).chunks()))
    with SimulatedID900(HeraldingSimulator(link, seed=2), "station",
                        duration_ps=duration) as dev, \
            ID900(dev.scpi_address, timeout_s=0.5) as d, \
            ID900Tagger(d, dev.dlt_address, inputs=(1, 2, 3, 4), idle_end_s=0.3) as tagger:
        got = np.concatenate(list(tagger.chunks()))
    assert np.array_equal(got["time"], expected["time"])
    assert np.array_equal(got["channel"], expected["channel"])
    assert classify(got, link)["time"].size > 50
