"""Physics of the hal_sim photon stream against closed-form expectations (within 3σ, fixed seeds).

Counting uses qnode.native's Coincidences / Correlation on the two nodes' streams merged into one,
with per-channel delays that undo each channel's true delay (fibre + detector + clock offset).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from qnode.daemon.quantum import estimators as est
from qnode.hal_sim import (
    Analyzer,
    BellDiagonalState,
    Clock,
    ClockModel,
    CWSource,
    Detector,
    Fibre,
    Link,
    Node,
    PhotonStreamSimulator,
    PulsedSource,
    basis,
    linear_polariser,
    simple_node,
)
from qnode.native import Coincidences, Correlation, check_block, sort_block

W = 1_000                 # coincidence half-window w (ps): |dt| <= 1 ns
ACC_OFFSET = 100_000      # displaced window for accidentals (ps)


def run(link: Link, seed: int, duration_ps: int, slice_ps: int = 5_000_000_000):
    """Run to the end; return the simulator, per-node concatenated blocks and the chunks' sizes."""
    sim = PhotonStreamSimulator(link, seed=seed, slice_ps=slice_ps)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in sim.nodes}
    for chunk in sim.stream(duration_ps):
        for name, block in chunk.blocks.items():
            parts[name].append(block)
    return sim, {n: np.concatenate(p) for n, p in parts.items()}


def aligning_delays(sim: PhotonStreamSimulator) -> dict[int, int]:
    """Per-channel delays mapping each tag back to its emission time (channels are distinct)."""
    return {ch: -d for per in sim.truth.channel_delay_ps.values() for ch, d in per.items()}


def count(sim, blocks, pairs, window_ps=W, offset_ps=ACC_OFFSET):
    joint = sort_block(np.concatenate(list(blocks.values())))
    used = {c for p in pairs for c in p}
    delays = {c: d for c, d in aligning_delays(sim).items() if c in used}
    coin = Coincidences(pairs, window_ps, delays_ps=delays,
                        accidental_offset_ps=offset_ps)
    coin.process(joint)
    return coin.totals


def det(ch: int, **kw) -> Detector:
    base = dict(efficiency=0.5, dark_count_rate_hz=500.0, dead_time_ps=10_000, jitter_ps=40.0)
    base.update(kw)
    return Detector(ch, **base)


# ------------------------------------------------------------------ CW link: rates, CAR, Klyshko

B = 2e6                   # pairs/s
T_PS = 250_000_000_000    # 0.25 s


@pytest.fixture(scope="module")
def cw_run():
    alice = Node("alice", Fibre(1.0, 0.2), [Analyzer("Z", basis("Z"), det(1), det(2))])
    bob = Node("bob", Fibre(3.0, 0.2), [Analyzer("Z", basis("Z"), det(3), det(4))],
               Clock(offset_ps=7_777_777))
    link = Link(CWSource(B), BellDiagonalState.werner(0.9), (alice, bob))
    sim, blocks = run(link, seed=11, duration_ps=T_PS)
    pairs = [(1, 3), (1, 4), (2, 3), (2, 4)]
    return sim, blocks, count(sim, blocks, pairs)


def _incoming_rate(sim, node: str) -> float:
    """Photon + dark arrival rate at one detector of ``node`` (Hz), before dead time."""
    return B * sim.truth.arm_efficiency(node) / 2 + 500.0


def _registered_fraction(rate_hz: float, dead_ps: int = 10_000) -> float:
    """Non-paralysable dead time with Poisson arrivals: a fraction 1/(1 + λτ) is registered."""
    return 1.0 / (1.0 + rate_hz * dead_ps * 1e-12)


def test_true_coincidences_match_brightness_times_efficiencies(cw_run):
    sim, _, totals = cw_run
    t_s = T_PS * 1e-12
    eta_a, eta_b = sim.truth.arm_efficiency("alice"), sim.truth.arm_efficiency("bob")
    f = (_registered_fraction(_incoming_rate(sim, "alice"))
         * _registered_fraction(_incoming_rate(sim, "bob")))
    expected = B * eta_a * eta_b * t_s * f          # B·η1·η2·T, thinned by dead time
    c, a = totals.coincidences.sum(), totals.accidentals.sum()
    sigma = math.sqrt(c + a + expected)
    assert abs((c - a) - expected) <= 3 * sigma, (c, a, expected)


def test_accidentals_match_singles_product(cw_run):
    sim, _, totals = cw_run
    singles = {**sim.truth.singles["alice"], **sim.truth.singles["bob"]}
    expected = [est.expected_accidentals(singles[x], singles[y], W, T_PS)
                for x, y in [(1, 3), (1, 4), (2, 3), (2, 4)]]
    exp_total = sum(e.value for e in expected)
    measured = totals.accidentals.sum()
    sigma = math.sqrt(exp_total + sum(e.sigma**2 for e in expected))
    assert abs(measured - exp_total) <= 3 * sigma, (measured, exp_total)


def test_car_matches_expectation(cw_run):
    sim, _, totals = cw_run
    c, a = int(totals.coincidences.sum()), int(totals.accidentals.sum())
    singles = {**sim.truth.singles["alice"], **sim.truth.singles["bob"]}
    a_exp = sum(est.expected_accidentals(singles[x], singles[y], W, T_PS).value
                for x, y in [(1, 3), (1, 4), (2, 3), (2, 4)])
    true_pairs = sim.truth.pairs_registered_both
    measured = est.car(c, a)
    assert measured.within(true_pairs / a_exp), (measured, true_pairs / a_exp)


def test_klyshko_efficiencies_recovered(cw_run):
    sim, _, totals = cw_run
    c, a = int(totals.coincidences.sum()), int(totals.accidentals.sum())
    n_a = sum(sim.truth.singles["alice"].values())
    n_b = sum(sim.truth.singles["bob"].values())
    eta_alice, eta_bob = est.klyshko_efficiencies(c, a, singles_s=n_a, singles_i=n_b)
    for node, other, measured in (("alice", "bob", eta_alice), ("bob", "alice", eta_bob)):
        # (C − A)/N_other = η·(dead-time survival here)·(photon fraction of the other's singles)
        lam_other = _incoming_rate(sim, other)
        expected = (sim.truth.arm_efficiency(node) * _registered_fraction(_incoming_rate(sim, node))
                    * (lam_other - 500.0) / lam_other)
        assert measured.within(expected), (node, measured, expected)


def test_truth_counters(cw_run):
    sim, _, _ = cw_run
    truth = sim.truth
    assert truth.complete
    assert truth.pairs_registered_both < truth.pairs_both_detected < truth.pairs_emitted
    assert abs(truth.pairs_emitted - B * T_PS * 1e-12) <= 3 * math.sqrt(B * T_PS * 1e-12)
    expected_both = B * T_PS * 1e-12 * truth.arm_efficiency("alice") * truth.arm_efficiency("bob")
    assert abs(truth.pairs_both_detected - expected_both) <= 3 * math.sqrt(expected_both)


def test_counted_pairs_match_truth():
    """C − A from the tags equals the exactly known pairs registered at both ends.

    Without dead time: with a dead time longer than the window, a registered pair's partner click
    blinds its detector around zero delay, so the zero-delay window holds fewer accidentals than
    the displaced one (by ~25 % at these heralding efficiencies) and C − A undercounts slightly.
    """
    d = dict(dead_time_ps=0, efficiency=0.5, dark_count_rate_hz=500.0, jitter_ps=40.0)
    link = Link(CWSource(B), BellDiagonalState.werner(0.9),
                (simple_node("alice", (1, 2), length_km=1.0, **d),
                 simple_node("bob", (3, 4), length_km=3.0, clock=Clock(offset_ps=-123_456), **d)))
    sim, blocks = run(link, seed=12, duration_ps=150_000_000_000)
    totals = count(sim, blocks, [(1, 3), (1, 4), (2, 3), (2, 4)])
    c, a = totals.coincidences.sum(), totals.accidentals.sum()
    assert sim.truth.pairs_registered_both == sim.truth.pairs_both_detected
    assert abs((c - a) - sim.truth.pairs_registered_both) <= 3 * math.sqrt(2 * a + 1)


def test_singles_are_what_the_blocks_hold(cw_run):
    sim, blocks, totals = cw_run
    for node, block in blocks.items():
        check_block(block)
        for ch, n in sim.truth.singles[node].items():
            assert np.count_nonzero(block["channel"] == ch) == n
    dark = sum(sum(d.values()) for d in sim.truth.dark_counts.values())
    expected_dark = 4 * 500.0 * T_PS * 1e-12
    assert abs(dark - expected_dark) <= 3 * math.sqrt(expected_dark) + 5


def test_g2_peak_at_true_delay_difference(cw_run):
    sim, blocks, _ = cw_run
    delta = sim.truth.delay_difference_ps("alice", 1, "bob", 3)
    # Fibres 1 km vs 3 km (≈ 9.8 µs) plus bob's 7.78 µs clock offset.
    assert 17_000_000 < delta < 18_000_000
    joint = sort_block(np.concatenate(list(blocks.values())))
    coarse = Correlation(1, 3, bin_width_ps=50, n_bins=2_000, lower_edge_ps=delta - 50_000)
    coarse.process(joint)
    peak = coarse.bin_centers_ps[np.argmax(coarse.histogram)]
    assert abs(peak - delta) <= 50
    fine = Correlation(1, 3, bin_width_ps=1, n_bins=1_001, lower_edge_ps=delta - 500)
    fine.process(joint)
    h = fine.histogram
    mean = float((fine.bin_edges_ps[:-1] * h).sum() / h.sum())
    sigma_pair = math.hypot(40.0, 40.0)
    assert abs(mean - delta) <= 3 * sigma_pair / math.sqrt(h.sum()) + 1


# ------------------------------------------------------------------ correlations per basis

def _two_analyzer_node(name, angles, channels, fibre_km):
    an = [Analyzer(f"{name[0]}{i}", linear_polariser(th), det(channels[2 * i]),
                   det(channels[2 * i + 1])) for i, th in enumerate(angles)]
    return Node(name, Fibre(fibre_km), an)


def _measured_correlations(sim, blocks, a_chans, b_chans):
    """E per analyzer combination from accidental-subtracted counts."""
    out = {}
    pairs = [(a, b) for a in a_chans for b in b_chans]
    totals = count(sim, blocks, [p for (ap, am), (bp, bm) in pairs
                                 for p in ((ap, bp), (am, bm), (ap, bm), (am, bp))])
    for k, ((ia, _), (ib, _)) in enumerate(
            (x, y) for x in enumerate(a_chans) for y in enumerate(b_chans)):
        n = totals.coincidences[4 * k: 4 * k + 4]
        acc = totals.accidentals[4 * k: 4 * k + 4]
        out[(ia, ib)] = est.correlation(*n, accidentals=acc)
    return out


def test_chsh_correlations_match_werner_visibility():
    v = 0.9
    alice = _two_analyzer_node("alice", [0.0, math.pi / 4], [1, 2, 5, 6], 0.5)
    bob = _two_analyzer_node("bob", [math.pi / 8, 3 * math.pi / 8], [3, 4, 7, 8], 1.5)
    link = Link(CWSource(1e6), BellDiagonalState.werner(v), (alice, bob))
    sim, blocks = run(link, seed=5, duration_ps=400_000_000_000)
    e = _measured_correlations(sim, blocks, [(1, 2), (5, 6)], [(3, 4), (7, 8)])
    names_a, names_b = ["a0", "a1"], ["b0", "b1"]
    for (i, j), measured in e.items():
        expected = sim.expected_correlation(names_a[i], names_b[j])
        assert expected == pytest.approx(
            v * math.cos(2 * ([0, math.pi / 4][i] - [math.pi / 8, 3 * math.pi / 8][j])))
        assert measured.within(expected), ((i, j), measured, expected)
    s = est.chsh(e[(0, 0)], e[(0, 1)], e[(1, 0)], e[(1, 1)])
    assert s.within(2 * math.sqrt(2) * v)
    assert s.value > 2.0


def test_pauli_correlations_of_a_bell_diagonal_state():
    weights = {"phi+": 0.7, "psi-": 0.2, "phi-": 0.1}
    state = BellDiagonalState(weights)
    expected_t = np.diag([0.7 - 0.2 - 0.1, -0.7 - 0.2 + 0.1, 0.7 - 0.2 + 0.1])
    assert np.allclose(state.correlation_matrix, expected_t)

    def node(name, chans):
        return Node(name, Fibre(0.2),
                    [Analyzer(b, basis(b), det(chans[2 * i]), det(chans[2 * i + 1]))
                     for i, b in enumerate("ZXY")])
    link = Link(CWSource(1.5e6), state, (node("alice", [1, 2, 5, 6, 9, 10]),
                                        node("bob", [3, 4, 7, 8, 11, 12])))
    sim, blocks = run(link, seed=9, duration_ps=300_000_000_000)
    e = _measured_correlations(sim, blocks, [(1, 2), (5, 6), (9, 10)], [(3, 4), (7, 8), (11, 12)])
    axis = {"Z": 2, "X": 0, "Y": 1}
    for (i, j), measured in e.items():
        bi, bj = "ZXY"[i], "ZXY"[j]
        expected = expected_t[axis[bi], axis[bj]]
        assert sim.expected_correlation(bi, bj) == pytest.approx(expected)
        assert measured.within(expected), ((bi, bj), measured, expected)


def test_fibre_rotation_enters_the_correlation():
    # A half-wave rotation of the Poincaré sphere about X maps Z → −Z: Φ+ looks like Ψ+ in Z.
    rot = ((1, 0, 0), (0, -1, 0), (0, 0, -1))
    alice = simple_node("alice", (1, 2))
    bob = Node("bob", Fibre(0.0, rotation=rot), simple_node("bob", (3, 4)).analyzers)
    sim = PhotonStreamSimulator(Link(CWSource(1e5), BellDiagonalState.werner(1.0), (alice, bob)))
    assert sim.expected_correlation("a", "a") == pytest.approx(-1.0)
    sim.set_rotation("bob", np.eye(3))
    assert sim.expected_correlation("a", "a") == pytest.approx(1.0)
    sim.set_analyzer_vector("bob", "a", basis("X"))
    assert sim.expected_correlation("a", "a") == pytest.approx(0.0)


# ------------------------------------------------------------------ pulsed sources

@pytest.mark.parametrize("statistics", ["poisson", "thermal"])
def test_pulsed_zero_delay_and_side_peaks(statistics):
    """Per detector pair, P(both click in one pulse) and P(click in different pulses) from the
    photon-number statistics: generating function G(q) = E[(1−q)^n], e^(−μq) for Poisson pairs,
    1/(1 + μq) for thermal; a detector clicks at most once per pulse (dead time < period)."""
    mu, rep = 0.1, 80e6
    source = PulsedSource(rep, mu, statistics)
    d = dict(dark_count_rate_hz=0.0, dead_time_ps=1_000, jitter_ps=30.0, efficiency=0.6)
    link = Link(source, BellDiagonalState.werner(0.95),
                (simple_node("alice", (1, 2), length_km=0.5, **d),
                 simple_node("bob", (3, 4), length_km=0.7, **d)))
    duration = 50_000_000_000
    sim, blocks = run(link, seed=3, duration_ps=duration, slice_ps=1_000_000_000)
    totals = count(sim, blocks, [(1, 3), (1, 4)], offset_ps=source.period_ps)
    n_pulses = duration // source.period_ps
    qa, qb = sim.truth.arm_efficiency("alice") / 2, sim.truth.arm_efficiency("bob") / 2
    e = sim.expected_correlation("a", "a")

    def no_click(q):  # P(no photon lands in a set with per-pair probability q)
        return math.exp(-mu * q) if statistics == "poisson" else 1.0 / (1.0 + mu * q)

    for k, same in enumerate((1, -1)):
        p_ab = 4 * qa * qb * (1 + same * e) / 4
        zero = n_pulses * (1 - no_click(qa) - no_click(qb) + no_click(qa + qb - p_ab))
        side = n_pulses * (1 - no_click(qa)) * (1 - no_click(qb))
        c, a = totals.coincidences[k], totals.accidentals[k]
        assert abs(c - zero) <= 3 * math.sqrt(zero), (statistics, same, c, zero)
        assert abs(a - side) <= 3 * math.sqrt(side), (statistics, same, a, side)
    assert abs(sim.truth.pairs_emitted - mu * n_pulses) <= 3 * math.sqrt(
        mu * n_pulses * (1 if statistics == "poisson" else 1 + mu))


def test_pulsed_tags_sit_on_the_pulse_grid():
    source = PulsedSource(50e6, 0.2, "poisson", phase_ps=1_234)
    node = simple_node("alice", (1, 2), jitter_ps=0.0, dark_count_rate_hz=0.0, dead_time_ps=0)
    link = Link(source, BellDiagonalState.werner(1.0), (node, simple_node("bob", (3, 4))))
    sim, blocks = run(link, seed=1, duration_ps=2_000_000_000, slice_ps=300_000_000)
    t = blocks["alice"]["time"] - sim.truth.channel_delay_ps["alice"][1]
    assert t.size > 1_000
    assert np.all((t - 1_234) % source.period_ps == 0)


# ------------------------------------------------------------------ detector effects

def test_dead_time_thins_singles_and_spaces_clicks():
    dead = 100_000
    node = lambda name, ch: simple_node(name, ch, efficiency=1.0, dead_time_ps=dead,  # noqa: E731
                                        dark_count_rate_hz=0.0, jitter_ps=20.0)
    link = Link(CWSource(8e6), BellDiagonalState.werner(1.0),
                (node("alice", (1, 2)), node("bob", (3, 4))))
    duration = 50_000_000_000
    sim, blocks = run(link, seed=2, duration_ps=duration, slice_ps=1_000_000_000)
    lam = 8e6 * sim.truth.arm_transmission["alice"] / 2
    expected = lam * duration * 1e-12 / (1 + lam * dead * 1e-12)       # λ/(1+λτ)·T
    for ch in (1, 2):
        t = blocks["alice"]["time"][blocks["alice"]["channel"] == ch]
        assert np.diff(t).min() >= dead
        assert abs(t.size - expected) <= 3 * math.sqrt(expected), (t.size, expected)
    assert sim.truth.pairs_registered_both < 0.8 * sim.truth.pairs_both_detected


def test_dark_counts_only():
    node = lambda name, ch: simple_node(name, ch, dark_count_rate_hz=2e5, dead_time_ps=0)  # noqa: E731
    link = Link(CWSource(0.0), BellDiagonalState.werner(1.0),
                (node("alice", (1, 2)), node("bob", (3, 4))))
    sim, blocks = run(link, seed=4, duration_ps=100_000_000_000)
    assert sim.truth.pairs_emitted == 0
    for node_name, per in sim.truth.dark_counts.items():
        for ch, n in per.items():
            assert n == sim.truth.singles[node_name][ch]
            assert abs(n - 2e4) <= 3 * math.sqrt(2e4) + 2e5 * 1e-12 * 10_000_000


# ------------------------------------------------------------------ streaming properties

_SMALL_LINK_CLOCK = Clock(offset_ps=-3_000, drift_ppm=3.0, frequency_walk_ppm_per_sqrt_s=0.5,
                          walk_step_ps=10_000_000)


def _small_link(clock=_SMALL_LINK_CLOCK):
    return Link(CWSource(3e6), BellDiagonalState.werner(0.8),
                (simple_node("alice", (1, 2), length_km=2.0),
                 simple_node("bob", (3, 4), length_km=0.1, clock=clock)))


def test_deterministic_from_seed():
    def blocks(seed):
        sim = PhotonStreamSimulator(_small_link(), seed=seed, slice_ps=700_000_000)
        return ([b.tobytes() for c in sim.stream(5_000_000_000) for b in c.blocks.values()],
                sim.truth)
    a, ta = blocks(21)
    b, tb = blocks(21)
    c, _ = blocks(22)
    assert a == b and ta == tb
    assert a != c


def test_chunks_time_ordered_monotone_and_bounded():
    slice_ps = 1_000_000_000
    sim = PhotonStreamSimulator(_small_link(), seed=8, slice_ps=slice_ps)
    last = {n: -(2**63) for n in sim.nodes}
    expected_per_slice = 3e6 * slice_ps * 1e-12 * 2           # ≤ 2 photons per pair
    n_chunks = 0
    for chunk in sim.stream(40_000_000_000):
        n_chunks += 1
        for name, block in chunk.blocks.items():
            check_block(block)
            assert block.size <= 1.2 * expected_per_slice + 100     # memory bounded by the slice
            if block.size:
                assert block["time"][0] >= last[name]
                last[name] = int(block["time"][-1])
        pending = sum(c.pending_t.size for chans in sim._channels.values() for c in chans)
        assert pending <= 0.01 * expected_per_slice + 50
    assert n_chunks == 41
    assert sim.truth.complete


def test_clock_offset_drift_and_walk():
    t = np.array([0, 10**9, 10**12, 3 * 10**12], np.int64)
    fixed = ClockModel(Clock(offset_ps=500, drift_ppm=2.0), np.random.default_rng(0))
    assert fixed.to_node_time(t).tolist() == [500, 10**9 + 500 + 2_000, 10**12 + 500 + 2_000_000,
                                              3 * 10**12 + 500 + 6_000_000]
    walk = Clock(drift_ppm=1.0, frequency_walk_ppm_per_sqrt_s=0.1, walk_step_ps=10**9)
    m1 = ClockModel(walk, np.random.default_rng(1))
    m2 = ClockModel(walk, np.random.default_rng(1))
    dense = np.arange(0, 2 * 10**12, 10**8, dtype=np.int64)
    a = m1.to_node_time(dense)
    b = np.concatenate([m2.to_node_time(dense[:5000]), m2.to_node_time(dense[5000:])])
    assert np.array_equal(a, b)                 # independent of how the stream is split
    assert np.all(np.diff(a) > 0)
    drift = (a - dense)[-1] / dense[-1]
    assert abs(drift - 1e-6) < 1e-6             # the walk wanders around the mean drift


def test_configuration_errors_name_the_parameter():
    with pytest.raises(ValueError, match="Detector.efficiency"):
        Detector(1, efficiency=1.5)
    with pytest.raises(ValueError, match="Fibre.loss_db_per_km"):
        Fibre(1.0, -0.2)
    with pytest.raises(ValueError, match="PulsedSource.statistics"):
        PulsedSource(80e6, 0.1, "laser")
    with pytest.raises(ValueError, match="CWSource.pair_rate_hz"):
        CWSource(-1)
    with pytest.raises(ValueError, match="vector"):
        Analyzer("a", (1.0, 1.0, 0.0), Detector(1), Detector(2))
    with pytest.raises(ValueError, match="channels must be distinct"):
        Node("n", Fibre(), [Analyzer("a", basis("Z"), Detector(1), Detector(2)),
                            Analyzer("b", basis("X"), Detector(2), Detector(3))])
    with pytest.raises(ValueError, match="weights must sum to 1"):
        BellDiagonalState({"phi+": 0.5})
