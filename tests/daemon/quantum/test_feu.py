"""The source's fidelity-estimation unit (qnode.daemon.quantum.feu): the model's algebra, and the
model against hal_sim's photon stream in a regime where accidentals matter.

Differential part: an M link with a CW SPDC source at several pump powers (B = b·P up to
10⁸ pairs/s, full window τ = 4 ns, so A/C ≈ B·τ reaches ~0.4), each node a passive three-way
basis choice (X, Y, Z analyzers, two detectors each). The native core counts all coincidences
and the accidentals in a displaced window; the fidelity is measured without any model from the
three bases' QBERs, F = 1 − (Q_X + Q_Y + Q_Z)/2. Comparisons are at the family-wise 3σ level:
with N comparisons in a test, each uses z = Φ⁻¹(1 − 0.00135/N) (Bonferroni), so the chance of a
false failure of the whole family is that of one 3σ (one-sided) excursion.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from qnode.daemon.quantum import estimators as est
from qnode.daemon.quantum.feu import (
    FidelityEstimationUnit,
    fidelity_of_visibility,
    visibility_of_fidelity,
)
from qnode.hal_sim import (
    Analyzer,
    BellDiagonalState,
    CWSource,
    Detector,
    Fibre,
    Link,
    Node,
    PhotonStreamSimulator,
    basis,
)
from qnode.native import Coincidences, sort_block

# ------------------------------------------------------------------ the model's algebra

MODEL = FidelityEstimationUnit(brightness_hz_per_mw=1e6, efficiency_a=0.3, efficiency_b=0.25,
                               window_ps=4000, visibility=0.95, max_power_mw=200.0,
                               dark_a_hz=2000.0, dark_b_hz=1000.0)
NO_DARKS = FidelityEstimationUnit(brightness_hz_per_mw=1e6, efficiency_a=0.3, efficiency_b=0.25,
                                  window_ps=4000, visibility=0.95, max_power_mw=200.0)


def test_the_prediction_is_the_closed_form():
    p = 10.0
    d = MODEL.detail(p)
    pairs = 1e7
    s_a, s_b = pairs * 0.3 + 2000, pairs * 0.25 + 1000
    c, a = pairs * 0.3 * 0.25, s_a * s_b * 4000e-12
    assert d.singles_a_hz == pytest.approx(s_a) and d.singles_b_hz == pytest.approx(s_b)
    assert d.true_hz == pytest.approx(c) and d.accidental_hz == pytest.approx(a)
    assert MODEL.predict(p) == pytest.approx((c + a, (1 + 3 * 0.95 * c / (c + a)) / 4))
    assert fidelity_of_visibility(visibility_of_fidelity(0.87)) == pytest.approx(0.87)


def test_rate_rises_and_fidelity_falls_with_power_above_the_dark_count_optimum():
    best = MODEL.best_power_mw()
    assert best == pytest.approx(math.sqrt(2000 * 1000 / (0.3e6 * 0.25e6)))
    powers = np.geomspace(best, MODEL.max_power_mw, 400)
    rates, fids = np.array([MODEL.predict(p) for p in powers]).T
    assert np.all(np.diff(rates) > 0) and np.all(np.diff(fids) < 0)
    below = np.geomspace(best / 100, best, 50)           # dark counts dominate: F rises
    assert np.all(np.diff([MODEL.predict(p)[1] for p in below]) > 0)
    assert MODEL.max_fidelity() == pytest.approx(MODEL.predict(best)[1])
    assert MODEL.max_fidelity() < MODEL.fidelity_limit == pytest.approx((1 + 3 * 0.95) / 4)
    # without background F falls from the source's own fidelity at P → 0
    no_dark = np.array([NO_DARKS.predict(p)[1] for p in np.geomspace(1e-6, 200, 200)])
    assert np.all(np.diff(no_dark) < 0) and no_dark[0] == pytest.approx(NO_DARKS.fidelity_limit)
    assert NO_DARKS.predict(0.0) == (0.0, NO_DARKS.fidelity_limit)


def _bisect_highest(model: FidelityEstimationUnit, f_min: float) -> float | None:
    """Independent oracle: bisection for F(P) = F_min on the falling side [P*, P_max]."""
    lo = model.best_power_mw()
    hi = model.max_power_mw
    if model.predict(lo)[1] < f_min:
        return None
    if model.predict(hi)[1] >= f_min:
        return hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if model.predict(mid)[1] >= f_min else (lo, mid)
    return lo


@pytest.mark.parametrize("model", [MODEL, NO_DARKS], ids=["darks", "no-darks"])
@pytest.mark.parametrize("f_min", [0.3, 0.62, 0.7, 0.8, 0.9, 0.95, 0.962])
def test_closed_form_choice_equals_bisection(model, f_min):
    closed, bisected = model.choose_power(f_min), _bisect_highest(model, f_min)
    assert (closed is None) == (bisected is None), (closed, bisected)
    if closed is not None:
        assert closed == pytest.approx(bisected, rel=1e-9)
        assert model.predict(closed)[1] >= f_min - 1e-12
        assert model.min_power_mw <= closed <= model.max_power_mw
        if closed < model.max_power_mw:           # the highest: a hair more is too much
            assert model.predict(closed * (1 + 1e-6))[1] < f_min


def test_choice_is_the_highest_power_within_the_limits():
    # F_min below F(P_max): the pump's limit, not the fidelity, sets the power
    assert MODEL.choose_power(MODEL.predict(200.0)[1] - 1e-3) == 200.0
    assert MODEL.choose_power(0.25) == 200.0                        # F ≥ 1/4 always holds
    limited = FidelityEstimationUnit(**{**MODEL.__dict__, "min_power_mw": 5.0,
                                        "max_power_mw": 30.0})
    p = limited.choose_power(0.9)
    assert p == pytest.approx(MODEL.choose_power(0.9)) and 5.0 <= p <= 30.0
    # the power that meets F_min lies below the pump's minimum: refused
    assert MODEL.choose_power(0.955) < 5.0 and limited.choose_power(0.955) is None
    # dark counts: the feasible powers are an interval; above P_max·F... none at all
    dark = FidelityEstimationUnit(**{**MODEL.__dict__, "dark_a_hz": 5e5, "dark_b_hz": 5e5,
                                     "max_power_mw": 1e4})
    f_best = dark.max_fidelity()
    assert dark.choose_power(f_best + 1e-6) is None
    p = dark.choose_power(f_best - 0.01)
    assert p is not None and p > dark.best_power_mw()
    assert dark.predict(p)[1] == pytest.approx(f_best - 0.01, abs=1e-9)


def test_unsupp_beyond_the_sources_own_fidelity():
    limit = MODEL.fidelity_limit                  # (1 + 3·V0)/4 = 0.9625
    assert MODEL.choose_power(limit + 1e-4) is None
    assert NO_DARKS.choose_power(limit + 1e-9) is None
    assert NO_DARKS.choose_power(1.0) is None
    # just below the limit without background: a tiny power still serves it
    p = NO_DARKS.choose_power(limit - 1e-6)
    assert p is not None and 0 < p < 1e-3


def test_bad_parameters_name_the_field():
    with pytest.raises(ValueError, match="efficiency_a"):
        FidelityEstimationUnit(1e6, 1.5, 0.3, 1000, 0.9, 100)
    with pytest.raises(ValueError, match="max_power_mw"):
        FidelityEstimationUnit(1e6, 0.5, 0.3, 1000, 0.9, max_power_mw=1, min_power_mw=2)
    with pytest.raises(ValueError, match="window_ps"):
        FidelityEstimationUnit(1e6, 0.5, 0.3, 0, 0.9, 100)
    with pytest.raises(ValueError, match="min_fidelity"):
        MODEL.choose_power(1.2)
    with pytest.raises(ValueError, match="accidentals_hz"):
        FidelityEstimationUnit.calibrate(power_mw=1, singles_a_hz=1e5, singles_b_hz=1e5,
                                         coincidences_hz=10, accidentals_hz=20, visibility=0.9,
                                         window_ps=1000, max_power_mw=10)


def test_calibration_inverts_the_model():
    """Exact model figures at one power give back the parameters."""
    for p in (0.5, 10.0, 80.0):
        d = MODEL.detail(p)
        cal = FidelityEstimationUnit.calibrate(
            power_mw=p, singles_a_hz=d.singles_a_hz, singles_b_hz=d.singles_b_hz,
            coincidences_hz=d.rate_hz, accidentals_hz=d.accidental_hz, visibility=d.visibility,
            window_ps=4000, max_power_mw=200.0, dark_a_hz=2000.0, dark_b_hz=1000.0)
        for f in ("brightness_hz_per_mw", "efficiency_a", "efficiency_b", "visibility"):
            assert getattr(cal, f) == pytest.approx(getattr(MODEL, f), rel=1e-9), (p, f)


# ------------------------------------------------------------------ against hal_sim

W_PS = 2_000                        # the core's half-window w: τ = 2w = 4 ns
TAU_PS = 2 * W_PS + 1               # |Δt| ≤ w on the integer-ps grid spans 2w + 1 values
ACC_OFFSET_PS = 50_000              # displaced window for accidentals
B_PER_MW = 1e7                      # pairs/s per mW of pump
V0 = 0.95
DARK_HZ = 2_000.0                   # per detector; 6 detectors per side
POWERS_MW = (0.5, 2.0, 5.0, 10.0)
P_MAX_MW = 20.0
BASES = ("X", "Y", "Z")
NODES = {"alice": (1.0, 0.55, 10), "bob": (4.0, 0.6, 20)}   # km, detector efficiency, channel 0


def _node(name: str) -> Node:
    km, eff, ch0 = NODES[name]

    def det(ch: int) -> Detector:
        # no dead time: the FEU does not model it (at 20 ns it would thin these ~10⁷ Hz
        # detectors by ~15 %; the fidelity would not change to first order, the rate would)
        return Detector(ch, efficiency=eff, dark_count_rate_hz=DARK_HZ, dead_time_ps=0,
                        jitter_ps=40.0)

    # equal (zero) fibre delays: the core then needs no reorder span (the losses stay)
    analyzers = [Analyzer(b, basis(b), det(ch0 + 2 * i), det(ch0 + 2 * i + 1))
                 for i, b in enumerate(BASES)]
    return Node(name, Fibre(km, 0.2, delay_ps=0), analyzers)


def _channels(name: str) -> list[int]:
    ch0 = NODES[name][2]
    return list(range(ch0, ch0 + 2 * len(BASES)))


class Measured:
    """One simulated run at a pump power, counted with the native core."""

    def __init__(self, power_mw: float, seed: int):
        self.power_mw = power_mw
        pairs = B_PER_MW * power_mw
        # about 3·10⁵ coincidences per run whatever the power
        self.t_s = min(0.4, 3e5 / (pairs * 0.085 + 1))
        link = Link(CWSource(pairs), BellDiagonalState.werner(V0),
                    (_node("alice"), _node("bob")))
        sim = PhotonStreamSimulator(link, seed=seed, slice_ps=2_000_000_000)
        parts: list[np.ndarray] = []
        for chunk in sim.stream(int(self.t_s * 1e12)):
            parts.extend(chunk.blocks.values())
        self.sim = sim
        truth = sim.truth
        self.t_s = truth.duration_ps * 1e-12     # the stream runs whole slices
        delays = {ch: -d for per in truth.channel_delay_ps.values() for ch, d in per.items()}
        a_ch, b_ch = _channels("alice"), _channels("bob")
        pairs_list = [(x, y) for x in a_ch for y in b_ch]
        coin = Coincidences(pairs_list, W_PS, delays_ps=delays,
                            accidental_offset_ps=ACC_OFFSET_PS)
        coin.process(sort_block(np.concatenate(parts)))
        counts = dict(zip(pairs_list, np.asarray(coin.totals.coincidences).tolist(),
                          strict=True))
        self.coincidences = int(np.sum(coin.totals.coincidences))
        self.accidentals = int(np.sum(coin.totals.accidentals))
        self.singles_a = sum(truth.singles["alice"].values())
        self.singles_b = sum(truth.singles["bob"].values())
        q = {}
        for i, b in enumerate(BASES):
            ap, am = a_ch[2 * i], a_ch[2 * i + 1]
            bp, bm = b_ch[2 * i], b_ch[2 * i + 1]
            q[b] = est.basis_qber(counts[(ap, bp)], counts[(am, bm)], counts[(ap, bm)],
                                  counts[(am, bp)], basis=b, source_state="phi+")
        self.fidelity = est.fidelity_from_qber(q_x=q["X"], q_y=q["Y"], q_z=q["Z"])

    def _sharing_s(self) -> float:
        """(S_a + S_b)·τ: the expected number of other tags in one tag's window."""
        return (self.singles_a + self.singles_b) / self.t_s * TAU_PS * 1e-12

    @property
    def rate_hz(self) -> est.Estimate:
        """Counted coincidences per second, with their standard error.

        All-pairs counting is over-dispersed: two counted pairs that share a tag are
        correlated. For Poisson pair emission the extra variance is the expected number of
        ordered pairs of counted pairs sharing a tag, (A + 2·C)·(S_a + S_b)·τ (per a-tag,
        E[X(X − 1)] with X = [partner] + Poisson(S_b·τ) other b-tags in its window; likewise
        per b-tag), so Var(C_m) = C_m + (A + 2·C)·(S_a + S_b)·τ, ~1.3·C_m at 10 mW here.
        """
        true = self.coincidences - self.accidentals
        var = self.coincidences + (self.accidentals + 2 * true) * self._sharing_s()
        return est.Estimate(self.coincidences / self.t_s, math.sqrt(var) / self.t_s)

    @property
    def accidentals_sigma(self) -> float:
        """Standard error of the accidental count (as :attr:`rate_hz`, without partners)."""
        return math.sqrt(self.accidentals * (1 + self._sharing_s()))

    def eta(self, node: str) -> float:
        return self.sim.truth.arm_efficiency(node)


def _z_family(n: int) -> float:
    """Per-comparison z of n comparisons at the family-wise level of one 3σ excursion."""
    return NormalDist().inv_cdf(1 - NormalDist().cdf(-3.0) / n)


@pytest.fixture(scope="module")
def runs() -> dict[float, Measured]:
    return {p: Measured(p, seed=100 + i) for i, p in enumerate(POWERS_MW)}


@pytest.fixture(scope="module")
def dark_run() -> tuple[float, float, float]:
    """Pump off: the background singles per side (Hz) and the run time (s)."""
    link = Link(CWSource(0.0), BellDiagonalState.werner(V0), (_node("alice"), _node("bob")))
    sim = PhotonStreamSimulator(link, seed=99, slice_ps=20_000_000_000)
    t_s = 2.0
    for _ in sim.stream(int(t_s * 1e12)):
        pass
    t_s = sim.truth.duration_ps * 1e-12
    return (sum(sim.truth.singles["alice"].values()) / t_s,
            sum(sim.truth.singles["bob"].values()) / t_s, t_s)


def _truth_model(m: Measured) -> FidelityEstimationUnit:
    """The FEU with hal_sim's own parameters (ground truth, nothing fitted)."""
    return FidelityEstimationUnit(
        brightness_hz_per_mw=B_PER_MW, efficiency_a=m.eta("alice"), efficiency_b=m.eta("bob"),
        window_ps=TAU_PS, visibility=V0, max_power_mw=P_MAX_MW,
        dark_a_hz=6 * DARK_HZ, dark_b_hz=6 * DARK_HZ)


def test_accidentals_matter_in_this_regime(runs):
    top = runs[max(POWERS_MW)]
    assert top.accidentals / (top.coincidences - top.accidentals) > 0.3
    assert top.fidelity.value < runs[min(POWERS_MW)].fidelity.value - 0.1


def test_predicted_rate_and_fidelity_match_the_simulation(runs):
    z = _z_family(2 * len(runs))
    model = _truth_model(runs[POWERS_MW[0]])
    for p, m in runs.items():
        rate, fid = model.predict(p)
        meas_rate = m.rate_hz
        assert abs(rate - meas_rate.value) <= z * meas_rate.sigma, (p, rate, meas_rate)
        assert abs(fid - m.fidelity.value) <= z * m.fidelity.sigma, (p, fid, m.fidelity)
    # and the model's accidentals are the core's displaced-window count
    z = _z_family(len(runs))
    for p, m in runs.items():
        acc = model.detail(p).accidental_hz * m.t_s
        assert abs(acc - m.accidentals) <= z * m.accidentals_sigma, (p, acc, m.accidentals)


def _calibration_inputs(m: Measured, dark: tuple[float, float, float]) -> dict[str, tuple]:
    """name -> (value, σ): the measured figures calibrate() takes, with their errors (Poisson;
    coincidences over-dispersed, :attr:`Measured.rate_hz`), taken as independent."""
    d_a, d_b, t_dark = dark
    t = m.t_s
    v_raw = visibility_of_fidelity(m.fidelity.value)
    return {
        "singles_a_hz": (m.singles_a / t, math.sqrt(m.singles_a) / t),
        "singles_b_hz": (m.singles_b / t, math.sqrt(m.singles_b) / t),
        "coincidences_hz": (m.rate_hz.value, m.rate_hz.sigma),
        "accidentals_hz": (m.accidentals / t, m.accidentals_sigma / t),
        "visibility": (v_raw, 4.0 / 3.0 * m.fidelity.sigma),
        "dark_a_hz": (d_a, math.sqrt(d_a * t_dark) / t_dark),
        "dark_b_hz": (d_b, math.sqrt(d_b * t_dark) / t_dark),
    }


def _calibrated(m: Measured, inputs: dict[str, float]) -> FidelityEstimationUnit:
    return FidelityEstimationUnit.calibrate(power_mw=m.power_mw, window_ps=TAU_PS,
                                            max_power_mw=P_MAX_MW, **inputs)


def _propagate(fn, inputs: dict[str, tuple]) -> tuple[np.ndarray, np.ndarray]:
    """fn(values) and its σ by linear propagation (central differences) of independent
    inputs."""
    base = {k: v for k, (v, _) in inputs.items()}
    y0 = np.asarray(fn(base), float)
    var = np.zeros_like(y0)
    for k, (v, s) in inputs.items():
        h = 1e-4 * s if s > 0 else 0.0
        if h == 0:
            continue
        up = np.asarray(fn({**base, k: v + h}), float)
        dn = np.asarray(fn({**base, k: v - h}), float)
        var += ((up - dn) / (2 * h) * s) ** 2
    return y0, np.sqrt(var)


def test_calibration_at_one_power_predicts_the_others(runs, dark_run):
    p_cal = 5.0
    cal_run = runs[p_cal]
    inputs = _calibration_inputs(cal_run, dark_run)
    cal = _calibrated(cal_run, {k: v for k, (v, _) in inputs.items()})
    # the calibrated parameters are the simulator's (loose: σ checked through predictions)
    assert cal.efficiency_a == pytest.approx(cal_run.eta("alice"), rel=0.02)
    assert cal.efficiency_b == pytest.approx(cal_run.eta("bob"), rel=0.02)
    assert cal.brightness_hz_per_mw == pytest.approx(B_PER_MW, rel=0.02)
    assert cal.visibility == pytest.approx(V0, abs=0.01)
    others = [p for p in POWERS_MW if p != p_cal]
    z = _z_family(2 * len(others))
    for p in others:
        m = runs[p]
        (rate, fid), (s_rate, s_fid) = _propagate(
            lambda x, p=p: _calibrated(cal_run, x).predict(p), inputs)
        meas = m.rate_hz
        assert abs(rate - meas.value) <= z * math.hypot(s_rate, meas.sigma), (p, rate, meas)
        assert abs(fid - m.fidelity.value) <= z * math.hypot(s_fid, m.fidelity.sigma), (
            p, fid, s_fid, m.fidelity)


def test_the_chosen_power_delivers_the_fidelity(runs, dark_run):
    """Calibrate at 5 mW, choose for F_min = 0.85, run the simulator there: the measured
    fidelity meets F_min within 3σ; 20 % more power would be predicted below F_min."""
    cal_run = runs[5.0]
    inputs = _calibration_inputs(cal_run, dark_run)
    cal = _calibrated(cal_run, {k: v for k, (v, _) in inputs.items()})
    f_min = 0.85
    p = cal.choose_power(f_min)
    assert p is not None and 2.0 < p < P_MAX_MW / 1.2
    m = Measured(p, seed=7)
    assert m.fidelity.value >= f_min - 3 * m.fidelity.sigma, (p, m.fidelity)
    assert cal.predict(1.2 * p)[1] < f_min
    # the truth model agrees that 1.2·P is too much for F_min
    assert _truth_model(m).predict(1.2 * p)[1] < f_min
    # an unattainable minimum: the source's own fidelity is the ceiling
    assert cal.choose_power(cal.fidelity_limit + 0.005) is None
