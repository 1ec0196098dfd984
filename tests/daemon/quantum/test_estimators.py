"""Estimator formulas (daemon/quantum/estimators.py): values against hand calculations, errors
against Monte-Carlo spread of Poisson counts."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qnode.daemon.quantum import estimators as est


def test_expected_accidentals_formula():
    # R1 = 1e5/s, R2 = 2e5/s over T = 1 s, w = 1 ns: A = R1·R2·τ·T with τ = 2w + 1 ps (the
    # integer offsets −w..w the core counts) = 1e5·2e5·2001e-12 = 40.02.
    a = est.expected_accidentals(1e5, 2e5, 1_000, 1e12)
    assert a.value == pytest.approx(40.02)
    assert a.sigma == pytest.approx(40.02 * math.sqrt(1 / 1e5 + 1 / 2e5))
    # w = 0 counts equal times: one offset, A = N1·N2/T, not 0
    assert est.expected_accidentals(1e5, 2e5, 0, 1e12).value == pytest.approx(0.02)


def test_car_value_and_error():
    r = est.car(1100, 100)
    assert r.value == pytest.approx(10.0)
    assert r.sigma == pytest.approx(math.sqrt(1100 / 100**2 + 1100**2 / 100**3))
    assert math.isnan(est.car(10, 0).value)
    fixed = est.car(1100, 100, accidentals_sigma=0.0)
    assert fixed.sigma == pytest.approx(math.sqrt(1100) / 100)


def test_klyshko_efficiencies():
    eta_s, eta_i = est.klyshko_efficiencies(coincidences=2_100, accidentals=100, singles_s=10_000,
                                            singles_i=20_000)
    assert eta_s.value == pytest.approx(2_000 / 20_000)
    assert eta_i.value == pytest.approx(2_000 / 10_000)
    assert eta_s.sigma == pytest.approx(math.sqrt(2_100 * (1 - 2_100 / 20_000) + 100) / 20_000)
    sym = est.symmetric_heralding_efficiency(2_100, 100, 10_000, 20_000)
    assert sym.value == pytest.approx(2_000 / math.sqrt(2e8))


def test_correlation_and_visibility():
    e = est.correlation(450, 450, 50, 50)
    assert e.value == pytest.approx(0.8)
    assert e.sigma == pytest.approx(math.sqrt((1 - 0.8**2) / 1000))
    sub = est.correlation(460, 460, 60, 60, accidentals=(10, 10, 10, 10))
    assert sub.value == pytest.approx(0.8)
    assert sub.sigma > e.sigma
    v = est.visibility(900, 100)
    assert v.value == pytest.approx(0.8)
    assert v.sigma == pytest.approx(2 * math.sqrt(900 * 100 * 1000) / 1000**2)
    q = est.qber(50, 950)
    assert q.value == pytest.approx(0.05)
    s = est.chsh(*(est.Estimate(x, 0.01) for x in (0.7, -0.7, 0.7, 0.7)))
    assert s.value == pytest.approx(2.8) and s.sigma == pytest.approx(0.02)


def test_bad_counts_are_named():
    with pytest.raises(ValueError, match="coincidences"):
        est.car(-1, 10)
    with pytest.raises(ValueError, match="accidentals"):
        est.correlation(1, 1, 1, 1, accidentals=(1, 2))


@pytest.mark.parametrize("fn,args", [
    (lambda c, a: est.car(c, a), (3_000.0, 200.0)),
    (lambda *n: est.correlation(*n), (3_000.0, 2_800.0, 200.0, 150.0)),
    (lambda *n: est.correlation(*n[:4], accidentals=n[4:]), (3_000.0, 2_800.0, 200.0, 150.0,
                                                            50.0, 50.0, 50.0, 50.0)),
    (lambda c, a: est.visibility(c, a), (3_000.0, 200.0)),
])
def test_errors_match_poisson_spread(fn, args):
    """The quoted sigma agrees with the spread of the estimate over Poisson draws (±10 %)."""
    rng = np.random.default_rng(5)
    means = args
    draws = rng.poisson(means, size=(20_000, len(means)))
    values = np.array([fn(*d).value for d in draws])
    assert fn(*means).sigma == pytest.approx(values.std(), rel=0.1)


# ==================================================================== QBER, fidelity, key, capacity

BELL = est.BELL_STATES
# a non-Werner Bell-diagonal state with distinct |T_bb| (Q_Z = 0.13, Q_X = 0.06, Q_Y = 0.11)
LAM = {"phi+": 0.85, "phi-": 0.02, "psi+": 0.09, "psi-": 0.04}


def true_qbers(lam: dict[str, float], target: str = "phi+") -> dict[str, float]:
    """Q_b = Σ of the weights whose correlation sign in b differs from the target's: computed
    from the sign table, independently of the inversion under test."""
    st = est.BELL_SIGNS[target]
    return {b: sum(lam[k] for k in BELL if est.BELL_SIGNS[k][i] != st[i])
            for i, b in enumerate("XYZ")}


def correlations(lam: dict[str, float]) -> dict[str, float]:
    return {b: sum(lam[k] * est.BELL_SIGNS[k][i] for k in BELL) for i, b in enumerate("XYZ")}


def poisson_basis_counts(rng, mean_total: float, e: float, n: int) -> np.ndarray:
    """n draws of (N++, N--, N+-, N-+) for correlation e: P(same) = (1 + e)/2, split evenly."""
    means = mean_total * np.array([1 + e, 1 + e, 1 - e, 1 - e]) / 4
    return rng.poisson(means, size=(n, 4))


def test_basis_qber_errors_follow_source_state_and_basis():
    # Φ+: errors are the anti-correlated channels in Z and X, the correlated ones in Y
    for b in "ZX":
        q = est.basis_qber(500, 450, 30, 20, basis=b)
        assert (q.value, q.errors, q.total) == (pytest.approx(0.05), 50, 1000)
        assert q.sigma == pytest.approx(math.sqrt(0.05 * 0.95 / 1000))
    assert est.basis_qber(30, 20, 500, 450, basis="Y").value == pytest.approx(0.05)
    # Ψ−: the correlated channels in every basis; Ψ+: correlated in Z only
    for b in "XYZ":
        assert est.basis_qber(30, 20, 450, 400, basis=b, source_state="psi-").errors == 50
    assert est.basis_qber(30, 20, 450, 400, basis="Z", source_state="psi+").errors == 50
    assert est.basis_qber(450, 400, 30, 20, basis="X", source_state="psi+").errors == 50
    assert math.isnan(est.basis_qber(0, 0, 0, 0).value)
    with pytest.raises(ValueError, match="source_state"):
        est.basis_qber(1, 1, 1, 1, source_state="phi")
    with pytest.raises(ValueError, match="basis"):
        est.basis_qber(1, 1, 1, 1, basis="W")
    # the sign table is hal_sim's correlation matrices' diagonal
    from qnode.hal_sim import BELL_CORRELATIONS
    for k, signs in est.BELL_SIGNS.items():
        assert np.array_equal(np.diag(BELL_CORRELATIONS[k]), signs)


def test_clopper_pearson_solves_the_binomial_tail_equations():
    def tail_ge(k, n, p):
        return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))

    for k, n in ((1, 10), (3, 10), (17, 60), (59, 60)):
        lo, hi = est.clopper_pearson_interval(k, n, 0.95)
        assert tail_ge(k, n, lo) == pytest.approx(0.025, abs=1e-9)
        assert 1 - tail_ge(k + 1, n, hi) == pytest.approx(0.025, abs=1e-9)
    # R: binom.test(3, 10)$conf.int = 0.06673951 0.65245285
    assert est.clopper_pearson_interval(3, 10) == pytest.approx((0.06673951, 0.65245285), abs=1e-8)
    # closed forms at the edges: k = 0 → (0, 1 − (α/2)^(1/n)); k = n → ((α/2)^(1/n), 1)
    assert est.clopper_pearson_interval(0, 20) == (0.0, pytest.approx(1 - 0.025 ** (1 / 20)))
    assert est.clopper_pearson_interval(20, 20) == (pytest.approx(0.025 ** (1 / 20)), 1.0)
    assert est.clopper_pearson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="whole counts"):
        est.clopper_pearson_interval(2.5, 10)


def test_wilson_bounds_solve_the_score_equation():
    z = 1.959963984540054
    for k, n in ((0, 25), (3, 10), (50, 1000), (990, 1000)):
        p_hat = k / n
        for p in est.wilson_interval(k, n):
            # (p − p̂)² = z²·p(1 − p)/n at both bounds
            assert (p - p_hat) ** 2 == pytest.approx(z * z * p * (1 - p) / n, abs=1e-12)
    assert est.wilson_interval(0, 25)[0] == 0.0 and est.wilson_interval(0, 25)[1] > 0.1
    q = est.basis_qber(10, 10, 0, 0)  # zero errors: σ = 0 but the interval is not degenerate
    assert q.sigma == 0.0 and q.interval()[1] > 0.1
    assert q.interval(method="clopper-pearson") == est.clopper_pearson_interval(0, 20)
    with pytest.raises(ValueError, match="method"):
        q.interval(method="wald")
    e = est.Estimate(1.0, 0.1).interval(0.95)
    assert e == pytest.approx((1 - 0.1 * z, 1 + 0.1 * z))


@pytest.mark.parametrize("q", [0.0, 0.01, 0.05, 0.1, 0.2, 0.25])
def test_werner_identities(q):
    v = 1 - 2 * q
    f = est.fidelity_from_qber(q_x=q, q_y=q, q_z=q)
    assert f.value == pytest.approx(1 - 1.5 * q)
    assert f.value == pytest.approx((1 + 3 * v) / 4)
    assert est.visibility_from_qber(q).value == pytest.approx(v)
    bd = est.bell_diagonal_from_qber(q_x=q, q_y=q, q_z=q)
    assert bd.weights == pytest.approx(est.werner_weights(1 - 1.5 * q))
    assert not bd.clipped
    # hal_sim's Werner state of visibility V has the same weights
    from qnode.hal_sim import BellDiagonalState
    assert BellDiagonalState.werner(v).weights == pytest.approx(bd.weights)
    assert est.chsh_max_from_qber(q_x=q, q_z=q).value == pytest.approx(2 * math.sqrt(2) * v)
    assert est.chsh_max_from_qber(q_x=q, q_y=q, q_z=q).value == pytest.approx(
        2 * math.sqrt(2) * v)
    assert est.fidelity_lower_bound(q_z=q, q_x=q).value == pytest.approx(1 - 2 * q)


def test_fidelity_errors_propagate():
    qx, qy, qz = (est.Estimate(0.05, 0.01), est.Estimate(0.06, 0.02),
                  est.Estimate(0.04, 0.02))
    f = est.fidelity_from_qber(q_x=qx, q_y=qy, q_z=qz)
    assert f.value == pytest.approx(1 - 0.075) and f.sigma == pytest.approx(0.5 * 0.03)
    lb = est.fidelity_lower_bound(q_z=qz, q_x=qx)
    assert lb.value == pytest.approx(0.91) and lb.sigma == pytest.approx(math.sqrt(5e-4))
    with pytest.raises(ValueError, match="q_y"):
        est.fidelity_from_qber(q_x=0.1, q_y=1.5, q_z=0.1)


@pytest.mark.parametrize("target", BELL)
def test_bell_diagonal_inversion_round_trips_for_every_target(target):
    rng = np.random.default_rng(3)
    for _ in range(20):
        lam = dict(zip(BELL, rng.dirichlet([1, 1, 1, 1]), strict=True))
        q = true_qbers(lam, target)
        bd = est.bell_diagonal_from_qber(q_x=q["X"], q_y=q["Y"], q_z=q["Z"],
                                         source_state=target)
        assert bd.raw == pytest.approx(lam, abs=1e-12) and not bd.clipped
        f = est.fidelity_from_qber(q_x=q["X"], q_y=q["Y"], q_z=q["Z"])
        assert f.value == pytest.approx(lam[target])
        assert est.fidelity_lower_bound(q_z=q["Z"], q_x=q["X"]).value <= f.value + 1e-12


def test_bell_diagonal_matches_the_pauli_error_formulas_and_propagates_errors():
    q = true_qbers(LAM)
    assert q == pytest.approx({"Z": 0.13, "X": 0.06, "Y": 0.11})
    qx, qy, qz = (est.Estimate(q["X"], 0.01), est.Estimate(q["Y"], 0.02),
                  est.Estimate(q["Z"], 0.03))
    bd = est.bell_diagonal_from_qber(q_x=qx, q_y=qy, q_z=qz)
    assert bd.raw["phi-"] == pytest.approx((q["X"] + q["Y"] - q["Z"]) / 2)
    assert bd.raw["psi+"] == pytest.approx((q["Y"] + q["Z"] - q["X"]) / 2)
    assert bd.raw["psi-"] == pytest.approx((q["Z"] + q["X"] - q["Y"]) / 2)
    assert bd.fidelity() == pytest.approx((0.85, 0.5 * math.sqrt(14e-4)))
    cov = np.array(bd.covariance)
    assert np.allclose(cov.sum(axis=1), 0.0) and np.allclose(cov, cov.T)
    assert all(s == pytest.approx(0.5 * math.sqrt(14e-4)) for s in bd.sigma.values())
    # F − (1 − Q_Z − Q_X) = λΨ−: the two-basis bound is tight when λΨ− = 0
    lam0 = {"phi+": 0.9, "phi-": 0.04, "psi+": 0.06, "psi-": 0.0}
    q0 = true_qbers(lam0)
    assert est.fidelity_lower_bound(q_z=q0["Z"], q_x=q0["X"]).value == pytest.approx(0.9)


def test_negative_weights_are_clipped_to_the_nearest_distribution():
    bd = est.bell_diagonal_from_qber(q_x=0.01, q_y=0.2, q_z=0.01)
    assert bd.clipped
    assert [bd.raw[k] for k in BELL] == pytest.approx([0.89, 0.10, 0.10, -0.09])
    # Euclidean projection: subtract θ = 0.03 from the positive ones, the negative one goes to 0
    assert [bd.weights[k] for k in BELL] == pytest.approx([0.86, 0.07, 0.07, 0.0])
    assert sum(bd.weights.values()) == pytest.approx(1.0)
    assert est.hashing_yield(bd).value == pytest.approx(
        1 + sum(x * math.log2(x) for x in (0.86, 0.07, 0.07)))


def test_with_sigmas_the_fit_leaves_a_precisely_measured_basis_and_the_fidelity_alone():
    # one link's test pairs (alice-repeater, LOW_INDISTINGUISHABILITY bench): λΨ± ~ 0.001, so
    # Q_X − Q_Y noise makes a raw λΨ+ negative; Q_Z has few errors and a small σ
    qx, qy, qz = est.Estimate(0.2639, 0.0078), est.Estimate(0.2421, 0.0078), est.Estimate(
        0.0005, 0.0003)
    bd = est.bell_diagonal_from_qber(q_x=qx, q_y=qy, q_z=qz)
    assert bd.clipped and bd.raw["psi+"] < 0
    assert bd.weights["phi+"] == pytest.approx(bd.raw["phi+"], abs=1e-4)
    assert min(bd.weights.values()) >= 0 and sum(bd.weights.values()) == pytest.approx(1.0)
    # without σ every basis weighs the same: the Euclidean projection takes 0.0036 off λΦ+
    plain = est.bell_diagonal_from_qber(q_x=qx.value, q_y=qy.value, q_z=qz.value)
    assert plain.weights["phi+"] == pytest.approx(0.7432, abs=1e-4)


def test_fitted_fidelity_is_unbiased_where_the_projection_was_not():
    """Differential against the truth: binomial test-pair counts of a state with λΨ± = 0.0008
    (3000 pairs per basis, σ(F) ≈ 0.004). The mean fitted λΦ+ must be the true one within 4
    standard errors of the mean; the Euclidean projection (no σ) is ~0.0014 low."""
    rng = np.random.default_rng(20261205)
    lam = {"phi+": 0.7467, "phi-": 0.2517, "psi+": 0.0008, "psi-": 0.0008}
    q_true = true_qbers(lam)
    n, fitted, projected = 3000, [], []
    for _ in range(2000):
        q = {b: rng.binomial(n, q_true[b]) / n for b in "XYZ"}
        s = {b: math.sqrt(max(q[b] * (1 - q[b]), 1 / n) / n) for b in "XYZ"}
        fitted.append(est.bell_diagonal_from_qber(
            q_x=est.Estimate(q["X"], s["X"]), q_y=est.Estimate(q["Y"], s["Y"]),
            q_z=est.Estimate(q["Z"], s["Z"])).weights["phi+"])
        projected.append(est.bell_diagonal_from_qber(q_x=q["X"], q_y=q["Y"],
                                                     q_z=q["Z"]).weights["phi+"])
    sem = np.std(fitted) / math.sqrt(len(fitted))
    assert abs(np.mean(fitted) - lam["phi+"]) <= 4 * sem, (np.mean(fitted), sem)
    assert np.mean(projected) - lam["phi+"] < -6 * sem        # why the fit is weighted


def test_chsh_from_counts_in_every_accepted_shape():
    counts = [[450, 450, 50, 50], [50, 50, 450, 450], [450, 450, 50, 50], [450, 450, 50, 50]]
    s = est.chsh_from_counts(counts)
    assert s.value == pytest.approx(3.2)
    assert s.sigma == pytest.approx(math.sqrt(4 * (1 - 0.64) / 1000))
    assert est.chsh_from_counts([x for row in counts for x in row]) == s
    assert est.chsh_from_counts(np.array(counts)) == s
    e = [est.correlation(*row) for row in counts]
    assert est.chsh_from_counts(e) == s
    acc = [[10, 10, 10, 10]] * 4
    sub = est.chsh_from_counts([[c + 10 for c in row] for row in counts], acc)
    assert sub.value == pytest.approx(3.2) and sub.sigma > s.sigma
    with pytest.raises(ValueError, match="16 counts"):
        est.chsh_from_counts([1, 2, 3])
    # Horodecki with two bases: S_max from the two largest |1 − 2Q|
    sm = est.chsh_max_from_qber(q_x=est.Estimate(0.1, 0.01), q_z=est.Estimate(0.2, 0.01),
                                q_y=0.45)
    assert sm.value == pytest.approx(2 * math.hypot(0.8, 0.6))
    assert sm.sigma == pytest.approx(2 * math.hypot(0.8 * 0.02, 0.6 * 0.02) / 1.0)


def _newton(fn, dfn, x0: float) -> float:
    x = x0
    for _ in range(50):
        x -= fn(x) / dfn(x)
    return x


def test_bbm92_symmetric_threshold_is_11_percent():
    def h(p):
        return -p * math.log2(p) - (1 - p) * math.log2(1 - p)

    def r(p):
        return 1 - 2 * h(p)

    def dr(p):
        return -2 * math.log2((1 - p) / p)

    root = _newton(r, dr, 0.1)
    assert abs(r(root)) < 1e-14
    assert root == pytest.approx(0.110028, abs=1e-6)  # 0.1100278644…
    assert est.symmetric_qber_threshold() == pytest.approx(root, abs=1e-12)
    assert est.secret_fraction(root, root, f=1.0).value == pytest.approx(0.0, abs=1e-12)
    assert est.secret_fraction(0.109, 0.109, f=1.0).value > 0
    assert est.secret_fraction(0.111, 0.111, f=1.0).value < 0
    # with the default f = 1.16 the threshold drops to 0.0981
    q116 = est.symmetric_qber_threshold(1.16)
    assert q116 == pytest.approx(0.0981, abs=1e-4)
    assert est.secret_fraction(q116, q116).value == pytest.approx(0.0, abs=1e-12)
    assert est.DEFAULT_EC_INEFFICIENCY == 1.16


def test_bbm92_key_rates():
    rs = est.sifted_key_rate(40_000, 2.0)
    assert rs == pytest.approx((10_000.0, 0.5 * 200 / 2))
    r = est.secret_fraction(est.Estimate(0.03, 0.002), est.Estimate(0.04, 0.003))
    h = est.binary_entropy
    assert r.value == pytest.approx(1 - 1.16 * h(0.03) - h(0.04))
    assert r.sigma == pytest.approx(math.hypot(1.16 * math.log2(0.97 / 0.03) * 0.002,
                                               math.log2(0.96 / 0.04) * 0.003))
    k = est.secret_key_rate(40_000, 2.0, est.Estimate(0.03, 0.002), est.Estimate(0.04, 0.003))
    assert k.value == pytest.approx(10_000 * r.value)
    assert k.sigma == pytest.approx(math.hypot(r.value * 50, 10_000 * r.sigma))
    assert est.secret_key_rate(100, 1.0, 0.2, 0.2).value < 0  # not clipped: no key
    assert est.binary_entropy(0.5) == 1.0 and est.binary_entropy(0.0) == 0.0
    with pytest.raises(ValueError, match="sifting"):
        est.sifted_key_rate(10, 1.0, sifting=0.0)


def test_hashing_and_dense_coding_vanish_at_werner_fidelity_0_8107():
    def yield_at(f):
        return est.hashing_yield(est.werner_weights(f)).value

    lo, hi = 0.5, 1.0  # bisection: the yield is increasing in F on (½, 1)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if yield_at(mid) < 0 else (lo, mid)
    assert lo == pytest.approx(0.8107, abs=1e-4)  # 0.810710…
    assert est.dense_coding_capacity(est.werner_weights(lo)).value == pytest.approx(1.0, abs=1e-12)
    assert est.dense_coding_capacity(est.werner_weights(0.75), bounded=True) == (1.0, 0.0)
    assert est.dense_coding_capacity(est.werner_weights(0.75)).value < 1
    assert est.dense_coding_capacity(est.werner_weights(0.9), bounded=True) == \
        est.dense_coding_capacity(est.werner_weights(0.9))
    # Bennett, Shor, Smolin, Thapliyal: for Werner, 2 − H(λ) is the entanglement-assisted
    # capacity C_E = 2 + F·log2F + (1−F)·log2((1−F)/3), and in terms of the depolarising p
    # (F = 1 − 3p/4): 2 + (1−3p/4)·log2(1−3p/4) + (3p/4)·log2(p/4)
    for p in (0.05, 0.2, 0.5):
        f = 1 - 0.75 * p
        c_e = 2 + (1 - 0.75 * p) * math.log2(1 - 0.75 * p) + 0.75 * p * math.log2(p / 4)
        assert est.dense_coding_capacity(est.werner_weights(f)).value == pytest.approx(c_e)
        assert c_e == pytest.approx(2 + f * math.log2(f) + (1 - f) * math.log2((1 - f) / 3))
    assert est.dense_coding_capacity({"phi+": 1.0}).value == 2.0
    assert est.hashing_yield([0.25] * 4).value == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="distribution"):
        est.hashing_yield([0.5, 0.5, 0.5, -0.5])


# ---------------------------------------------------------------------- Monte-Carlo calibration

def _calibrated(values, sigmas, truth, rel: float = 0.1) -> None:
    """Unbiased within 3 standard errors of the mean; mean reported σ = empirical spread ±rel."""
    values, sigmas = np.asarray(values), np.asarray(sigmas)
    spread = values.std(ddof=1)
    assert abs(values.mean() - truth) <= 3 * spread / math.sqrt(values.size), \
        (values.mean(), truth, spread)
    assert sigmas.mean() == pytest.approx(spread, rel=rel)


def test_qber_unbiased_sigma_calibrated_and_intervals_cover():
    rng = np.random.default_rng(11)
    q_true, n = 0.05, 1_000
    errors = rng.binomial(n, q_true, size=4_000)
    qs = [est.basis_qber(n - k, 0, k, 0) for k in errors]
    _calibrated([q.value for q in qs], [q.sigma for q in qs], q_true)
    # Wilson 95 %: coverage within [93 %, 97 %]; one interval per distinct count
    wilson = {k: est.wilson_interval(k, n) for k in np.unique(errors)}
    cover = np.mean([wilson[k][0] <= q_true <= wilson[k][1] for k in errors])
    assert 0.93 <= cover <= 0.97, cover
    # Clopper–Pearson: exact coverage (sum over the binomial pmf) is at least 95 %
    pmf = np.array([math.comb(n, k) * q_true**k * (1 - q_true) ** (n - k) for k in range(121)])
    cp = [est.clopper_pearson_interval(k, n) for k in range(121)]
    exact = sum(p for p, (lo, hi) in zip(pmf, cp, strict=True) if lo <= q_true <= hi)
    assert 0.95 <= exact <= 0.975, exact
    cover_cp = np.mean([cp[k][0] <= q_true <= cp[k][1] for k in errors])
    assert 0.94 <= cover_cp <= 0.985, cover_cp


def test_fidelity_lambda_and_capacity_from_poisson_counts():
    """Counts per basis drawn from LAM; F, λ, the two-basis bound, S_max and the capacity
    figures are unbiased and their σ matches the spread."""
    rng = np.random.default_rng(12)
    n_draws, mean_total = 3_000, 400_000  # H(λ) bias ∝ 1/N stays ≪ the SEM
    e = correlations(LAM)
    draws = {b: poisson_basis_counts(rng, mean_total, e[b], n_draws) for b in "XYZ"}
    out: dict[str, list[tuple[float, float]]] = {}
    for i in range(n_draws):
        q = {b: est.basis_qber(*draws[b][i], basis=b) for b in "XYZ"}
        bd = est.bell_diagonal_from_qber(q_x=q["X"], q_y=q["Y"], q_z=q["Z"])
        assert not bd.clipped
        for name, x in (
                ("F", est.fidelity_from_qber(q_x=q["X"], q_y=q["Y"], q_z=q["Z"])),
                ("F_lb", est.fidelity_lower_bound(q_z=q["Z"], q_x=q["X"])),
                ("S_max", est.chsh_max_from_qber(q_x=q["X"], q_y=q["Y"], q_z=q["Z"])),
                ("D_H", est.hashing_yield(bd)),
                ("C_DC", est.dense_coding_capacity(bd))):
            out.setdefault(name, []).append(tuple(x))
        for k in BELL:
            out.setdefault(k, []).append((bd.raw[k], bd.sigma[k]))
    qt = true_qbers(LAM)
    h = -sum(x * math.log2(x) for x in LAM.values())
    t = sorted((abs(1 - 2 * qt[b]) for b in "XYZ"), reverse=True)
    truth = {"F": LAM["phi+"], "F_lb": 1 - qt["Z"] - qt["X"], "S_max": 2 * math.hypot(*t[:2]),
             "D_H": 1 - h, "C_DC": 2 - h, **LAM}
    for name, vals in out.items():
        v, s = np.array(vals).T
        _calibrated(v, s, truth[name])


def test_chsh_from_counts_calibrated():
    rng = np.random.default_rng(13)
    v, n_draws = 0.9, 4_000
    e = [v / math.sqrt(2)] * 4
    e[1] = -e[1]  # S = E(a,b) − E(a,b′) + E(a′,b) + E(a′,b′) at the optimal angles
    counts = np.stack([poisson_basis_counts(rng, 5_000, x, n_draws) for x in e], axis=1)
    s = np.array([tuple(est.chsh_from_counts(c)) for c in counts])
    _calibrated(s[:, 0], s[:, 1], 2 * math.sqrt(2) * v)


def test_secret_key_rate_calibrated():
    rng = np.random.default_rng(14)
    n_draws, c_mean, duration = 4_000, 200_000, 1.0
    qz, qx = 0.03, 0.04
    c = rng.poisson(c_mean, n_draws)
    # sifted half in each of Z and X; QBER counts binomial within them
    nz = rng.binomial(c, 0.25)
    nx = rng.binomial(c, 0.25)
    ez, ex = rng.binomial(nz, qz), rng.binomial(nx, qx)
    r, k = [], []
    for i in range(n_draws):
        q_z = est.basis_qber(nz[i] - ez[i], 0, ez[i], 0)
        q_x = est.basis_qber(nx[i] - ex[i], 0, ex[i], 0, basis="X")
        r.append(tuple(est.secret_fraction(q_z, q_x)))
        k.append(tuple(est.secret_key_rate(c[i], duration, q_z, q_x)))
    h = est.binary_entropy
    r_true = 1 - 1.16 * h(qz) - h(qx)
    _calibrated(*np.array(r).T, r_true)
    _calibrated(*np.array(k).T, 0.5 * c_mean / duration * r_true)
