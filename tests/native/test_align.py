"""Tests of qnode.native.align: pfind-style offset, fpfind-style drift, costream-style tracking.

The two nodes' streams are simulated here with numpy (no hal_sim): photon pairs are emitted as a
Poisson process; node a and node b detect each pair with efficiencies eff_a, eff_b, each adding
Gaussian jitter; each node adds uncorrelated background singles; node b's clock reads
``t_b = t + offset + phase(t)`` where t is node a's clock and ``phase`` integrates a frequency
offset ``drift_ppm + drift_rate * t``. Node a's clock starts at 3 h (> 2**53 ps), so any float64 of
an absolute timestamp would show up as errors.

Statistics of the default scenario: coincidences R_c = 200 k/s * 0.35 * 0.30 = 21 k/s; the
coincidence peak's rms width is sqrt(2) * 50 ps = 71 ps, so an offset from N coincidences has a
standard error of 71 ps / sqrt(N) (0.2 s: N = 4200, 1.1 ps).
"""
from __future__ import annotations

import math
import types
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest

from qnode import native
from qnode.native import align, tracking

PS = 10**12
A0 = 3 * 3600 * PS            # node a's clock reads 3 h at the start (> 2**53 ps)
PAIR_RATE, EFF_A, EFF_B, BG, JITTER = 200e3, 0.35, 0.30, 150e3, 50.0
PEAK_RMS = math.sqrt(2) * JITTER


@dataclass
class Streams:
    a: np.ndarray                                   # node a's photon times, ps, sorted
    b: np.ndarray                                   # node b's photon times, ps, sorted
    n_both: int                                     # pairs detected by both nodes
    offset_at: Callable[[np.ndarray], np.ndarray]   # true t_b - t_a at a-time t_a (int64 ps)
    drift_at: Callable[[float], float]              # true frequency offset (ppm) at a-time t_a


def _poisson_times(rng: np.random.Generator, rate: float, duration_ps: int) -> np.ndarray:
    n = int(rate * duration_ps / PS * 1.05) + 100
    t = np.cumsum(rng.exponential(PS / rate, n)).astype(np.int64)
    return t[t < duration_ps]


def simulate(duration_s: float, *, seed: int, offset_ps: int = 0, drift_ppm: float = 0.0,
             drift_rate_ppm_per_s: float = 0.0, correlated: bool = True,
             b_dark: tuple[float, float] | None = None) -> Streams:
    """Two nodes' streams (see the module docstring); ``b_dark``: node b sees nothing in this
    interval of seconds."""
    rng = np.random.default_rng(seed)
    T = int(duration_s * PS)
    t = _poisson_times(rng, PAIR_RATE, T)
    da = rng.random(t.size) < EFF_A
    db = rng.random(t.size) < EFF_B
    tb_true = t[db] if correlated else _poisson_times(rng, PAIR_RATE * EFF_B, T)

    def phase(tt: np.ndarray) -> np.ndarray:   # tt: relative ps (< 2**53), so float is exact
        s = np.asarray(tt, np.float64) / PS
        return np.rint((drift_ppm * s + 0.5 * drift_rate_ppm_per_s * s * s) * 1e6).astype(np.int64)

    def jitter(n: int) -> np.ndarray:
        return np.rint(rng.normal(0.0, JITTER, n)).astype(np.int64)

    ta = t[da] + jitter(int(da.sum()))
    tb = tb_true + jitter(tb_true.size)
    a = A0 + np.sort(np.concatenate([ta, _poisson_times(rng, BG, T)]), kind="stable")
    braw = np.sort(np.concatenate([tb, _poisson_times(rng, BG, T)]), kind="stable")
    if b_dark is not None:
        lo, hi = (int(x * PS) for x in b_dark)
        braw = braw[(braw < lo) | (braw >= hi)]
    b = A0 + offset_ps + braw + phase(braw)     # b's clock is monotonic: stays sorted
    n_both = int((da & db).sum()) if correlated else 0
    return Streams(a, b, n_both,
                   lambda t_a: offset_ps + phase(np.asarray(t_a, np.int64) - A0),
                   lambda t_a: drift_ppm + drift_rate_ppm_per_s * (t_a - A0) / PS)


def first(s: Streams, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """The first ``seconds`` of both streams (each in its own clock)."""
    return (s.a[:np.searchsorted(s.a, s.a[0] + int(seconds * PS))],
            s.b[:np.searchsorted(s.b, s.b[0] + int(seconds * PS))])


def run_tracker(tracker: tracking.DriftTracker, s: Streams, chunk_s: float,
                t_end_s: float | None = None) -> np.ndarray:
    """Feed both streams in chunks of ``chunk_s`` of each node's own clock; all step records."""
    steps = []
    ia = ib = 0
    k = 1
    while ia < s.a.size or ib < s.b.size:
        ja = np.searchsorted(s.a, A0 + int(k * chunk_s * PS))
        jb = np.searchsorted(s.b, s.b[0] + int(k * chunk_s * PS))
        steps.append(tracker.update(s.a[ia:ja], s.b[ib:jb]).steps)
        ia, ib, k = ja, jb, k + 1
    steps.append(tracker.flush().steps)
    return np.concatenate(steps)


# ----------------------------------------------------------------------------- numpy oracle

def _np_bin_mod(times_ps, t0_ps, bin_ps, n_bins, out=None):
    idx = np.floor_divide(np.asarray(times_ps, np.int64) - np.int64(t0_ps), bin_ps) % n_bins
    h = np.bincount(idx, minlength=n_bins).astype(np.int64)
    if out is None:
        return h
    out += h
    return out


def _np_pair_deltas(a_ps, b_ps, lo_ps, hi_ps):
    a = np.asarray(a_ps, np.int64)
    b = np.asarray(b_ps, np.int64)
    lo = np.searchsorted(b, a + lo_ps, "left")
    hi = np.searchsorted(b, a + hi_ps, "right")
    n = np.maximum(hi - lo, 0)
    i = np.repeat(np.arange(a.size), n)
    j = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()))
    return b[j] - a[i]


NUMPY_BACKEND = types.SimpleNamespace(bin_mod=_np_bin_mod, pair_deltas=_np_pair_deltas)


def _backends() -> list:
    from qnode.native import reference

    return [pytest.param(NUMPY_BACKEND, id="test-numpy"),
            pytest.param(reference, id="qnode.native.reference")]


# ----------------------------------------------------------------------------- pfind

@pytest.mark.parametrize("offset_ps", [12_345_678, -101_000_000_123, 3, -987_654])
def test_find_offset_recovers_offset(offset_ps: int) -> None:
    s = simulate(0.2, seed=abs(offset_ps) % 1000, offset_ps=offset_ps)
    est = align.find_offset(s.a, s.b)
    err = est.offset_ps - offset_ps
    assert abs(err) <= 20
    assert abs(err) <= 5 * est.uncertainty_ps + 1
    # the statistics: N ~ 0.2 s * 21 k/s coincidences, width sqrt(2) * 50 ps
    assert est.n_pairs == pytest.approx(s.n_both, rel=0.03)
    assert est.peak_rms_ps == pytest.approx(PEAK_RMS, rel=0.1)
    assert est.uncertainty_ps == pytest.approx(PEAK_RMS / math.sqrt(s.n_both), rel=0.2)
    # ~4200 pairs over a noise of ~sqrt(14000): 35 sigma, halved when split over two bins
    assert est.significance > 12 and est.fine.significance > 12
    assert est.coarse.span_ps == align.DEFAULT_COARSE_BIN_PS * align.DEFAULT_N_BINS


def test_find_offset_error_scatter_matches_uncertainty() -> None:
    errs, uncs = [], []
    for seed in range(8):
        off = int(np.random.default_rng(seed).integers(-10**11, 10**11))
        s = simulate(0.2, seed=100 + seed, offset_ps=off)
        est = align.find_offset(s.a, s.b)
        errs.append(est.offset_ps - off)
        uncs.append(est.uncertainty_ps)
    # expected sigma ~1.1 ps (+ 0.3 ps rounding); a bias of a few ps would show here
    assert abs(np.mean(errs)) < 3 * np.mean(uncs) / math.sqrt(len(errs)) + 0.5
    assert np.std(errs) < 2.5 * np.mean(uncs)


def test_unambiguous_range_and_hint() -> None:
    span = align.DEFAULT_COARSE_BIN_PS * align.DEFAULT_N_BINS
    near_edge = span // 2 - 20 * align.DEFAULT_COARSE_BIN_PS
    for off in (near_edge, -near_edge):
        s = simulate(0.3, seed=11, offset_ps=off)
        assert abs(align.find_offset(s.a, s.b).offset_ps - off) <= 20
    # beyond half the span the FFT peak aliases: the exact pair differences then show no peak
    # at the aliased offset (an error, not a wrong answer); with a hint it is found
    far = 5 * PS + 123_456_789
    s = simulate(0.3, seed=12, offset_ps=far)
    with pytest.raises(align.AlignmentError) as info:
        align.find_offset(s.a, s.b)
    assert info.value.stage == "refine"
    hinted = align.find_offset(s.a, s.b, offset_hint_ps=5 * PS + 50_000_000_000)
    assert abs(hinted.offset_ps - far) <= 20


def test_independent_streams_raise() -> None:
    s = simulate(0.2, seed=5, offset_ps=1_000_000, correlated=False)
    with pytest.raises(align.AlignmentError, match="significance") as info:
        align.find_offset(s.a, s.b)
    assert info.value.significance < 6.0
    assert info.value.stage == "coarse"
    # the same rates, correlated: far above the threshold
    c = simulate(0.2, seed=5, offset_ps=1_000_000)
    assert align.find_offset(c.a, c.b).significance > 6.0 * 2


def test_rejects_float_and_unsorted_times() -> None:
    s = simulate(0.05, seed=1)
    with pytest.raises(TypeError):
        align.find_offset(s.a.astype(np.float64), s.b)
    with pytest.raises(ValueError, match="sorted"):
        align.find_offset(s.a[::-1], s.b)


# ----------------------------------------------------------------------------- fpfind

@pytest.mark.parametrize("offset_ps,drift_ppm", [(-7_654_321_987, -4.3), (31_415_926_535, 2.7),
                                                 (-55_555, 0.0)])
def test_find_offset_and_drift(offset_ps: int, drift_ppm: float) -> None:
    s = simulate(2.0, seed=int(abs(drift_ppm) * 10), offset_ps=offset_ps, drift_ppm=drift_ppm)
    est = align.find_offset_and_drift(s.a, s.b)
    ts = (est.separation_ps) / PS
    # expected: residual per span sigma_r = 71 ps / sqrt(21 k/s * 0.1 s) = 1.5 ps,
    # drift sigma = sqrt(2) sigma_r / Ts = 1.2e-6 ppm at Ts = 1.9 s
    sigma_r = PEAK_RMS / math.sqrt(PAIR_RATE * EFF_A * EFF_B * est.span_ps / PS)
    sigma_drift = math.sqrt(2) * sigma_r / ts * 1e-6
    assert est.drift_uncertainty_ppm == pytest.approx(sigma_drift, rel=0.3)
    assert abs(est.drift_ppm - drift_ppm) < 5 * sigma_drift
    assert abs(est.offset_ps - int(s.offset_at(est.ref_ps))) <= 20
    assert est.ref_ps == max(s.a[0], s.b[0])    # start of the overlap (offset hint 0)
    assert est.significance > 6
    assert [st.bin_ps for st in est.stages][:4] == [2_048_000, 128_000, 8_000, 2_000]
    # mapping b into a's timebase puts partner photons on top of each other
    t_a = np.array([s.a[0], s.a[-1]])
    assert np.all(np.abs(est.to_node_b(t_a) - t_a - s.offset_at(t_a)) <= 20)


def test_large_drift_needs_bin_doubling() -> None:
    # 150 ppm over the 0.1 s early span smears the peak over ~7 coarse bins of 2 us: not
    # significant; fpfind's remedy, doubling the bin, recovers it
    s = simulate(2.0, seed=21, offset_ps=4_000_000, drift_ppm=150.0)
    with pytest.raises(align.AlignmentError, match="significance"):
        align.find_offset_and_drift(s.a, s.b, max_drift_ppm=200, max_coarse_doublings=0)
    est = align.find_offset_and_drift(s.a, s.b, max_drift_ppm=200)
    assert est.stages[0].bin_ps > align.DEFAULT_COARSE_BIN_PS
    assert abs(est.drift_ppm - 150.0) < 1e-5
    assert abs(est.offset_ps - int(s.offset_at(est.ref_ps))) <= 20


def test_clock_estimate_mapping_is_exact_beyond_2_53() -> None:
    est = align.ClockEstimate(offset_ps=-123_456_789_012, drift_ppm=3.25, ref_ps=A0 + 17,
                              offset_uncertainty_ps=1.0, drift_uncertainty_ppm=1e-6,
                              significance=30.0, n_pairs=1000, span_ps=PS // 10,
                              separation_ps=PS)
    t_a = np.array([A0 + 17, A0 + 3_600 * PS + 1, A0 + 86_400 * PS + 999], np.int64)
    assert t_a[-1] > 2**53
    exact = [int(t) - 123_456_789_012 + round(Fraction(int(t) - (A0 + 17)) * Fraction(325, 10**8))
             for t in t_a]
    assert est.to_node_b(t_a).tolist() == exact
    assert np.all(np.abs(est.to_reference(est.to_node_b(t_a)) - t_a) <= 1)


def test_drift_independent_streams_raise() -> None:
    s = simulate(1.0, seed=8, correlated=False)
    with pytest.raises(align.AlignmentError, match="significance"):
        align.find_offset_and_drift(s.a, s.b)


# ----------------------------------------------------------------------------- costream servo

MINUTE_CASES = {
    # drift ramps by +1 ppm / min, offset negative
    "up": dict(seed=31, offset_ps=-2_500_000_123, drift_ppm=3.7, drift_rate_ppm_per_s=1 / 60),
    # drift ramps by -1 ppm / min, offset positive
    "down": dict(seed=32, offset_ps=812_345_678, drift_ppm=-4.2, drift_rate_ppm_per_s=-1 / 60),
}


@pytest.fixture(scope="module", params=list(MINUTE_CASES))
def minute(request) -> Streams:
    return simulate(60.0, **MINUTE_CASES[request.param])


def test_tracker_follows_drift_over_a_minute(minute: Streams) -> None:
    s = minute
    est = align.find_offset_and_drift(*first(s, 2.0))
    tracker = tracking.DriftTracker(est)
    steps = run_tracker(tracker, s, chunk_s=0.5)
    assert steps.size == 6000                 # 10 ms intervals
    err = steps["offset_ps"] - s.offset_at(steps["time_ps"])
    # the first interval corrects the estimate's linear-model error under the frequency ramp
    # (a chord over the 2 s estimate: ~0.8 ns); after 50 ms the error stays within 50 ps
    settled = steps["time_ps"] >= A0 + 50 * 10**9
    assert np.abs(err[settled]).max() <= 50
    assert np.sqrt(np.mean(err[settled] ** 2)) <= 15
    assert np.all(steps["status"][settled] == tracking.TrackStatus.LOCKED)
    state = tracker.state
    assert state.status == tracking.TrackStatus.LOCKED and state.lock_losses == 0
    assert abs(state.drift_ppm - s.drift_at(state.time_ps)) < 0.01
    assert abs(steps["drift_ppm"][-1] - s.drift_at(int(steps["time_ps"][-1]))) < 0.01
    assert state.residual_rms_ps == pytest.approx(PEAK_RMS, rel=0.25)
    # coincidences after alignment: accidental-corrected count = pairs both nodes detected
    found = int(steps["n_pairs"].sum() - steps["n_accidentals"].sum())
    assert found == pytest.approx(s.n_both, rel=0.005)
    assert state.n_coincidences == int(steps["n_pairs"].sum())
    # to_reference maps b's last photons onto a's clock
    t_end = s.b[-1000:]
    mapped = tracker.to_reference(t_end)
    assert np.all(np.abs(mapped + s.offset_at(mapped) - t_end) <= 60)


def test_tracker_reports_lock_loss_and_relocks() -> None:
    s = simulate(3.0, seed=41, offset_ps=-1_234_567, drift_ppm=-2.5, b_dark=(1.5, 1.8))
    est = align.find_offset_and_drift(*first(s, 1.0))
    tracker = tracking.DriftTracker(est)
    steps = run_tracker(tracker, s, chunk_s=0.25)
    t = (steps["time_ps"] - A0) / PS
    status = steps["status"]
    assert np.all(status[t < 1.49] == tracking.TrackStatus.LOCKED)
    dark = (t > 1.51) & (t < 1.79)
    assert np.all(np.isin(status[dark], [tracking.TrackStatus.HOLDOVER, tracking.TrackStatus.LOST]))
    assert np.all(status[(t > 1.62) & (t < 1.79)] == tracking.TrackStatus.LOST)  # > 100 ms dark
    assert np.all(steps["n_pairs"][dark] == 0)
    assert np.all(status[t > 1.81] == tracking.TrackStatus.LOCKED)       # coasting kept the window
    assert tracker.state.lock_losses == 1
    err = steps["offset_ps"] - s.offset_at(steps["time_ps"])
    # while coasting the error grows with the frequency error (~2e-4 ppm rms * 0.3 s ~ 60 ps)
    assert np.abs(err[dark]).max() <= 300
    assert np.abs(err[(t > 0.05) & ~dark]).max() <= 50


def test_tracker_lost_on_uncorrelated_or_dark_stream() -> None:
    s = simulate(1.0, seed=42, offset_ps=5_000_000, drift_ppm=1.0)
    est = align.find_offset_and_drift(*first(s, 1.0), span_ps=PS // 10)
    # node b goes dark: only a's photons arrive, the caller vouches for the time span
    tracker = tracking.DriftTracker(est)
    rep = tracker.update(s.a, np.empty(0, np.int64), end_ps=int(s.a[-1]))
    assert rep.steps.size > 50 and rep.n_coincidences == 0
    assert rep.state.status == tracking.TrackStatus.LOST and rep.state.lock_losses == 1
    # node b sees unrelated light
    u = simulate(1.0, seed=43, offset_ps=5_000_000, drift_ppm=1.0, correlated=False)
    tracker = tracking.DriftTracker(est)
    steps = run_tracker(tracker, u, chunk_s=0.25)
    assert tracker.state.status == tracking.TrackStatus.LOST
    assert np.all(steps["status"] != tracking.TrackStatus.LOCKED)


def test_tracker_chunking_does_not_change_results() -> None:
    s = simulate(1.0, seed=44, offset_ps=-77_777_777, drift_ppm=1.5)
    est = align.find_offset_and_drift(s.a, s.b, span_ps=PS // 10)
    one = run_tracker(tracking.DriftTracker(est), s, chunk_s=10.0)
    many = run_tracker(tracking.DriftTracker(est), s, chunk_s=0.0371)
    np.testing.assert_array_equal(one, many)
    # every pair both nodes detected is counted exactly once across chunk boundaries
    found = int(many["n_pairs"].sum() - many["n_accidentals"].sum())
    assert found == pytest.approx(s.n_both, rel=0.01)


# ----------------------------------------------------------------------------- backends

def test_numpy_oracle_matches_c_helpers() -> None:
    rng = np.random.default_rng(3)
    a = np.sort(rng.integers(-10**6, 10**6, 5000))
    b = np.sort(rng.integers(-10**6, 10**6, 5000))
    np.testing.assert_array_equal(_np_bin_mod(a, 123, 77, 256), native.bin_mod(a, 123, 77, 256))
    np.testing.assert_array_equal(_np_pair_deltas(a, b, -500, 700),
                                  native.pair_deltas(a, b, -500, 700))


@pytest.mark.parametrize("backend", _backends())
def test_backends_agree(backend) -> None:
    z = simulate(0.1, seed=50, offset_ps=-3_333_333_333)
    assert align.find_offset(z.a, z.b, backend=backend) == align.find_offset(z.a, z.b)
    s = simulate(1.0, seed=51, offset_ps=-3_333_333_333, drift_ppm=-3.3)
    e_c = align.find_offset_and_drift(s.a, s.b, span_ps=PS // 10)
    e_ref = align.find_offset_and_drift(s.a, s.b, span_ps=PS // 10, backend=backend)
    assert (e_ref.offset_ps, e_ref.drift_ppm, e_ref.offset_uncertainty_ps) == \
        (e_c.offset_ps, e_c.drift_ppm, e_c.offset_uncertainty_ps)
    np.testing.assert_equal([vars(x) for x in e_ref.stages], [vars(x) for x in e_c.stages])
    steps_c = run_tracker(tracking.DriftTracker(e_c), s, chunk_s=0.3)
    steps_ref = run_tracker(tracking.DriftTracker(e_c, backend=backend), s, chunk_s=0.3)
    np.testing.assert_array_equal(steps_ref, steps_c)
