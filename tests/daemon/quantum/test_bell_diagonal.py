"""Bell-diagonal algebra (daemon/quantum/bell_diagonal.py): closed forms against published values
(the papers of docs/physicists/estimators.md, section Sources), Deutsch et al.'s DEJMPS formulas,
SeQUeNCe's BDS formulas transcribed literally, hypothesis properties, and explicit 4-qubit
density-matrix circuits.

Exact values verified here (more digits than the papers give, from the formulas):
* BBPSSW at F = 0.8: p = 173/225 = 0.768888…, F' = 145/173 = 0.838150289017341…
* Werner swap 0.9 ⊗ 0.9: F = 61/75 = 0.813333…
* hashing yield of a Werner state is 0 at F = 0.8107103750847682… (bisection below).
* BBPSSW fixed points F = ¼, ½, 1.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from qnode.daemon.quantum import bell_diagonal as bd
from qnode.daemon.quantum.bell_diagonal import Bell, BellDiagonal, PauliChannel

W = BellDiagonal.werner
TOL = 1e-12

# --------------------------------------------------------------------------------------------
# Independent references (written from the papers and SeQUeNCe, not from the module)

I2 = np.eye(2, dtype=complex)
X = np.array([[0, 1], [1, 0]], dtype=complex)
Y = np.array([[0, -1j], [1j, 0]], dtype=complex)
Z = np.diag([1.0, -1.0]).astype(complex)
PAULI = [I2, Z, X, X @ Z]  # Bell index k = 2x + z ↔ X^x Z^z
PHI_PLUS = np.array([1, 0, 0, 1], dtype=complex) / math.sqrt(2)
BELL_VECS = [np.kron(P, I2) @ PHI_PLUS for P in PAULI]
BELL_MAT = np.column_stack(BELL_VECS)  # columns |Φ+⟩, |Φ−⟩, |Ψ+⟩, |Ψ−⟩


def xor_conv(p, q) -> np.ndarray:
    return np.array([sum(p[i] * q[j] for i in range(4) for j in range(4) if i ^ j == k)
                     for k in range(4)])


def deutsch_two_pair(s1, s2):
    """DEJMPS, Deutsch et al. PRL 77, 2818 (1996), in their labels; returns (N, [Φ+,Φ−,Ψ+,Ψ−])."""
    a1, d1, c1, b1 = s1  # [Φ+, Φ−, Ψ+, Ψ−] = [A, D, C, B]
    a2, d2, c2, b2 = s2
    n = (a1 + b1) * (a2 + b2) + (c1 + d1) * (c2 + d2)
    a_ = (a1 * a2 + b1 * b2) / n
    b_ = (c1 * d2 + d1 * c2) / n
    c_ = (c1 * c2 + d1 * d2) / n
    d_ = (a1 * b2 + b1 * a2) / n
    return n, np.array([a_, d_, c_, b_])


def deutsch_identical(s):
    a, d, c, b = s
    n = (a + b) ** 2 + (c + d) ** 2
    return n, np.array([(a * a + b * b) / n, 2 * a * b / n, (c * c + d * d) / n, 2 * c * d / n])


def sequence_bds(k, m, big_g=1.0, eta_a=1.0, eta_b=1.0):
    """SeQUeNCe's BBPSSW_BDS success probability and output, transcribed (1-based k1..k4)."""
    k1, k2, k3, k4 = k
    m1, m2, m3, m4 = m
    a, b = k1 + k2, m1 + m2
    q_s = eta_a * eta_b + (1 - eta_a) * (1 - eta_b)
    q_d = 1 - q_s
    x = a * b + (1 - a) * (1 - b)
    p = big_g * (x * q_s + (1 - x) * q_d) + (1 - big_g) / 2
    raw = [q_s * (k1 * m1 + k2 * m2) + q_d * (k1 * m3 + k2 * m4),
           q_s * (k1 * m2 + k2 * m1) + q_d * (k1 * m4 + k2 * m3),
           q_s * (k3 * m3 + k4 * m4) + q_d * (k3 * m1 + k4 * m2),
           q_s * (k3 * m4 + k4 * m3) + q_d * (k3 * m2 + k4 * m1)]
    return p, np.array([(big_g * r + (1 - big_g) / 8) / p for r in raw])


def rot(v):
    """DEJMPS relabelling: swap the Φ− and Ψ− entries."""
    return np.array([v[0], v[3], v[2], v[1]])


def bd_rho(lam) -> np.ndarray:
    return sum(lam[k] * np.outer(BELL_VECS[k], BELL_VECS[k].conj()) for k in range(4))


def bell_coefficients(rho: np.ndarray, *, check_diagonal: bool = True) -> np.ndarray:
    m = BELL_MAT.conj().T @ rho @ BELL_MAT
    if check_diagonal:
        assert np.max(np.abs(m - np.diag(np.diag(m)))) < 1e-12, "output is not Bell-diagonal"
    assert np.max(np.abs(np.diag(m).imag)) < 1e-12
    return np.diag(m).real.copy()


def on_qubit(op: np.ndarray, j: int, n: int = 4) -> np.ndarray:
    out = np.array([[1.0 + 0j]])
    for i in range(n):
        out = np.kron(out, op if i == j else I2)
    return out


def cnot(c: int, t: int, n: int = 4) -> np.ndarray:
    p0 = np.diag([1.0, 0.0]).astype(complex)
    p1 = np.diag([0.0, 1.0]).astype(complex)
    return on_qubit(p0, c, n) + on_qubit(p1, c, n) @ on_qubit(X, t, n)


def rx(theta: float) -> np.ndarray:
    return math.cos(theta / 2) * I2 - 1j * math.sin(theta / 2) * X


def dejmps_circuit(k, m, *, big_g=1.0, eta_a=1.0, eta_b=1.0, rotate=True):
    """Explicit DEJMPS on qubits (A1, B1, A2, B2): Rx(+π/2) on Alice's, Rx(−π/2) on Bob's,
    CNOT A1→A2 and B1→B2, Z-measure A2, B2, keep iff the reported bits agree (each bit read
    correctly with η). With probability 1 − G the 4 qubits are replaced by I/16 (SeQUeNCe's
    gate-noise model). Returns (p_success, output Bell coefficients)."""
    rho = np.kron(bd_rho(k), bd_rho(m))
    u = cnot(0, 2) @ cnot(1, 3)
    if rotate:
        ra, rb = rx(math.pi / 2), rx(-math.pi / 2)
        u = u @ on_qubit(ra, 0) @ on_qubit(rb, 1) @ on_qubit(ra, 2) @ on_qubit(rb, 3)
    rho = u @ rho @ u.conj().T
    rho = big_g * rho + (1 - big_g) * np.eye(16) / 16
    q_s = eta_a * eta_b + (1 - eta_a) * (1 - eta_b)
    kept = np.zeros((4, 4), dtype=complex)
    for a in (0, 1):
        for b in (0, 1):
            proj = np.kron(np.eye(4), np.kron(np.diag(np.eye(2)[a]), np.diag(np.eye(2)[b])))
            weight = q_s if a == b else 1 - q_s
            part = (proj @ rho @ proj).reshape(4, 4, 4, 4)
            kept += weight * np.einsum("ijkj->ik", part)
    p = float(np.trace(kept).real)
    return p, bell_coefficients(kept / p)


def swap_circuit(lam1, lam2, outcome: int):
    """Pairs (1,2) and (3,4); project (2,3) on Bell state ``outcome``; return (p, (1,4) coeffs)."""
    rho = np.kron(bd_rho(lam1), bd_rho(lam2))
    b = BELL_VECS[outcome]
    proj = np.kron(np.kron(I2, np.outer(b, b.conj())), I2)
    post = (proj @ rho @ proj).reshape([2] * 8)
    red = np.einsum("abcdebch->adeh", post).reshape(4, 4)
    p = float(np.trace(red).real)
    return p, bell_coefficients(red / p)


def random_bd(rng: np.random.Generator) -> BellDiagonal:
    v = rng.random(4) ** 2
    return BellDiagonal(tuple(v / v.sum()))


def werner_hashing(f: float) -> float:
    return 1 + f * math.log2(f) + (1 - f) * math.log2((1 - f) / 3)


def bisect(fn, lo: float, hi: float) -> float:
    flo = fn(lo)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if (fn(mid) > 0) == (flo > 0):
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------------------
# Strategies

unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def bd_states(draw) -> BellDiagonal:
    raw = draw(st.lists(unit, min_size=4, max_size=4).filter(lambda v: math.fsum(v) > 1e-3))
    s = math.fsum(raw)
    return BellDiagonal(tuple(v / s for v in raw))


@st.composite
def good_states(draw) -> BellDiagonal:
    """States with F ≥ ½ (for which ageing is monotone)."""
    f = draw(st.floats(0.5, 1.0))
    rest = draw(st.lists(unit, min_size=3, max_size=3).filter(lambda v: math.fsum(v) > 1e-3))
    s = math.fsum(rest)
    vec = [f] + [(1 - f) * v / s for v in rest]
    t = math.fsum(vec)
    return BellDiagonal(tuple(v / t for v in vec))


fidelities = st.floats(0.5, 1.0)


# --------------------------------------------------------------------------------------------
# States, validation, frames


def test_bell_order_has_one_source():
    """Every part that numbers the Bell states reads the one tuple of quantum.bell_states (a
    copy, even an equal one, is a second source that could drift)."""
    from qnode.daemon import linklayer
    from qnode.daemon.quantum import bell_states, estimators
    from qnode.daemon.runtime import config
    from qnode.drivers import qdevice, qdevice_protocol
    from qnode.hal_sim.physics import density_matrix, heralding

    one = bell_states.BELL_STATES
    for order in (bd.BELL_NAMES, estimators.BELL_STATES, config.SOURCE_STATES,
                  linklayer.BELL_STATES, qdevice.BELL_STATES, density_matrix.BELL_STATES,
                  heralding.BELL_STATES):
        assert order is one
    assert qdevice_protocol.BELL_TOKENS == set(one)
    assert linklayer.BELL_CODES is bell_states.BELL_CODES
    assert [b.label for b in Bell] == list(bd.BELL_NAMES)
    assert [(b.x, b.z) for b in Bell] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert bd.bell("psi-") is Bell.PSI_MINUS and bd.bell(2) is Bell.PSI_PLUS


@pytest.mark.parametrize("bad", [(0.5, 0.5, 0.1, -0.1), (0.5, 0.5, 0.0, 1e-9), (1.0, 0.0, 0.0),
                                 (math.nan, 0.0, 0.0, 1.0), ("a", 0, 0, 1)])
def test_validation_names_the_field(bad):
    with pytest.raises(ValueError, match="coefficients"):
        BellDiagonal(bad)
    with pytest.raises(ValueError, match="probabilities"):
        PauliChannel(bad)


def test_validation_of_arguments():
    with pytest.raises(ValueError, match="fidelity"):
        W(1.5)
    with pytest.raises(ValueError, match="frame"):
        W(0.9).relabel("chi+")
    with pytest.raises(ValueError, match="t2_s"):
        PauliChannel.from_t1_t2(1.0, 1.0, 2.5)
    with pytest.raises(ValueError, match="gate_fidelity"):
        bd.swap(W(0.9), W(0.9), gate_fidelity=1.1)
    with pytest.raises(ValueError, match="protocol"):
        bd.purify(W(0.9), W(0.9), protocol="dejmp")  # type: ignore[arg-type]
    with pytest.raises(bd.PurificationImpossible, match="success probability is 0"):
        bd.dejmps(BellDiagonal.pure("phi+"), BellDiagonal.pure("psi+"))
    BellDiagonal((0.25 + 5e-13, 0.25, 0.25, 0.25))  # within the 1e-12 sum tolerance


def test_werner_fidelity_relabel_entropy():
    w = W(0.7)
    assert w.coefficients == pytest.approx((0.7, 0.1, 0.1, 0.1), abs=1e-15)
    assert w.fidelity() == 0.7 and w.fidelity("psi-") == pytest.approx(0.1)
    s = BellDiagonal((0.1, 0.2, 0.3, 0.4))
    for f in Bell:
        assert s.relabel(f).fidelity() == s.fidelity(f)
    assert BellDiagonal.pure("psi-").relabel("psi-") == BellDiagonal.pure("phi+")
    assert BellDiagonal.pure("psi+").relabel("phi-") == BellDiagonal.pure("psi-")
    assert W(1.0).entropy() == 0.0
    assert W(0.25).entropy() == pytest.approx(2.0, abs=1e-15)
    assert s.entropy() == pytest.approx(-sum(v * math.log2(v) for v in (0.1, 0.2, 0.3, 0.4)))
    assert s.twirl() == W(0.1)


@settings(max_examples=200, deadline=None)
@given(bd_states(), st.sampled_from(list(Bell)))
def test_relabel_is_an_involution(s, f):
    assert s.relabel(f).relabel(f) == s
    assert s.relabel(f).entropy() == pytest.approx(s.entropy(), abs=1e-12)


# --------------------------------------------------------------------------------------------
# Ageing


def kraus_t1_t2(t: float, t1: float, t2: float) -> list[np.ndarray]:
    """Amplitude damping γ = 1 − e^{−t/T1} followed by pure dephasing that brings the total
    coherence decay to e^{−t/T2} (needs T2 ≤ 2·T1)."""
    g = 1 - math.exp(-t / t1)
    ad = [np.array([[1, 0], [0, math.sqrt(1 - g)]], dtype=complex),
          np.array([[0, math.sqrt(g)], [0, 0]], dtype=complex)]
    f = math.exp(-t / t2) / math.exp(-t / (2 * t1))
    pd = [math.sqrt((1 + f) / 2) * I2, math.sqrt((1 - f) / 2) * Z]
    return [q @ a for q in pd for a in ad]


@pytest.mark.parametrize(("t", "t1", "t2"), [(0.3, 1.0, 1.5), (2.0, 1.0, 2.0), (0.01, 5e-3, 1e-3),
                                             (1.0, 1.0, 0.2)])
def test_t1_t2_channel_is_the_pauli_twirl_of_amplitude_damping(t, t1, t2):
    kraus = kraus_t1_t2(t, t1, t2)
    # χ-matrix diagonal = Pauli-twirled channel probabilities, order [I, Z, X, Y].
    chi = [sum(abs(np.trace(P.conj().T @ K)) ** 2 for K in kraus) / 4 for P in (I2, Z, X, Y)]
    ch = PauliChannel.from_t1_t2(t, t1, t2)
    assert np.allclose(ch.probabilities, chi, atol=1e-14, rtol=0)
    g1 = 1 - math.exp(-t / t1)
    assert ch.p_x == ch.p_y == pytest.approx(g1 / 4)
    assert ch.p_z == pytest.approx((1 - math.exp(-t / t2)) / 2 - g1 / 4)
    # The Bell-diagonal part of the *untwirled* channel acting on one half of a BD pair is
    # exactly the twirled channel's action (the BD projection is itself a twirl). On both halves
    # the joint decay toward |00⟩ adds (1 − e^{−t/T1})²/4·[+1, +1, −1, −1] (bd.age is exact).
    s = random_bd(np.random.default_rng(7))
    rho = bd_rho(s.coefficients)
    one = sum(np.kron(K, I2) @ rho @ np.kron(K, I2).conj().T for K in kraus)
    other = sum(np.kron(I2, K) @ rho @ np.kron(I2, K).conj().T for K in kraus)
    both = sum(np.kron(K, L) @ rho @ np.kron(K, L).conj().T for K in kraus for L in kraus)
    aged1 = bd.age(s, t, t1_s=t1, t2_s=t2, halves=1).as_array()
    assert np.allclose(bell_coefficients(one, check_diagonal=False), aged1, atol=1e-13, rtol=0)
    assert np.allclose(bell_coefficients(other, check_diagonal=False), aged1, atol=1e-13, rtol=0)
    exact = bell_coefficients(both, check_diagonal=False)
    twirled = bd.apply_channels(s, ch, ch).as_array()
    assert np.allclose(exact - twirled, g1**2 / 4 * np.array([1, 1, -1, -1]), atol=1e-13, rtol=0)
    assert np.allclose(exact, bd.age(s, t, t1_s=t1, t2_s=t2).as_array(),
                       atol=1e-13, rtol=0)
    assert bd.aged_fidelity(s, t, t1_s=t1, t2_s=t2) == pytest.approx(
        exact[0], abs=1e-13)


def test_channel_forms_agree():
    # SeQUeNCe's rate form with r_x = r_y = r equals T1 = 1/(4r), T2 = 1/(2(r + r_z)).
    r, rz, t = 3.0, 5.0, 0.07
    a = PauliChannel.from_rates(t, r, r, rz)
    b = PauliChannel.from_t1_t2(t, 1 / (4 * r), 1 / (2 * (r + rz)))
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-15, rtol=0)
    d = PauliChannel.depolarizing(0.2)
    assert d.probabilities == pytest.approx((0.85, 0.05, 0.05, 0.05))
    assert PauliChannel.depolarizing_from_time(2.0, 1.0) == PauliChannel.depolarizing(
        1 - math.exp(-2.0))
    # A depolarised half of Φ+ is a Werner state with F = 1 − 3p/4.
    assert bd.apply_channels(BellDiagonal.pure(), d).isclose(W(0.85), 1e-15)
    # Time composition of one memory, and infinite T1/T2.
    c1 = PauliChannel.from_t1_t2(0.2, 1.0, 0.7).compose(PauliChannel.from_t1_t2(0.5, 1.0, 0.7))
    assert np.allclose(c1.probabilities, PauliChannel.from_t1_t2(0.7, 1.0, 0.7).probabilities,
                       atol=1e-15, rtol=0)
    assert PauliChannel.from_t1_t2(5.0, math.inf, math.inf) == PauliChannel.identity()
    assert PauliChannel.from_t1_t2(math.inf, 1.0, 1.0).probabilities == pytest.approx(
        (0.25, 0.25, 0.25, 0.25))


@settings(max_examples=150, deadline=None)
@given(bd_states(), st.floats(0.0, 10.0), st.floats(1e-3, 10.0), st.floats(0.01, 1.0),
       st.floats(0.0, 10.0), st.floats(1e-3, 10.0), st.floats(0.01, 1.0))
def test_ageing_both_halves_equals_composed_channel(s, ta, t1a, ra, tb, t1b, rb):
    a = PauliChannel.from_t1_t2(ta, t1a, 2 * t1a * ra)
    b = PauliChannel.from_t1_t2(tb, t1b, 2 * t1b * rb)
    both = bd.apply_channels(s, a, b)
    assert both.isclose(bd.apply_channels(s, a.compose(b)), 1e-14)
    assert both.isclose(bd.apply_channels(s, None, b.compose(a)), 1e-14)
    assert bd.age(s, 0.0, t1_s=t1a, t2_s=t1a) == s


@settings(max_examples=150, deadline=None)
@given(good_states(), st.floats(1e-3, 10.0), st.floats(0.01, 1.0),
       st.lists(st.floats(0.0, 20.0), min_size=2, max_size=6), st.sampled_from([1, 2]))
def test_fidelity_decreases_monotonically_with_wait(s, t1, ratio, waits, halves):
    t2 = 2 * t1 * ratio
    fs = [bd.age(s, t, t1_s=t1, t2_s=t2, halves=halves).fidelity() for t in sorted(waits)]
    # one half: non-increasing; both: down to one minimum, then up (both halves end in |00⟩)
    k = fs.index(min(fs)) if halves == 2 else len(fs) - 1
    assert all(b <= a + 1e-15 for a, b in zip(fs[:k + 1], fs[1:k + 1], strict=False))
    assert all(b >= a - 1e-15 for a, b in zip(fs[k:], fs[k + 1:], strict=False))
    for t in waits:
        assert bd.aged_fidelity(s, t, t1_s=t1, t2_s=t2, halves=halves) == pytest.approx(
            bd.age(s, t, t1_s=t1, t2_s=t2, halves=halves).fidelity(), abs=1e-14)


def test_ageing_can_raise_fidelity_of_a_bad_frame():
    # Monotonicity needs F ≥ ½ (more precisely λΦ+ ≥ λΦ− and λΦ+ + λΦ− ≥ λΨ+ + λΨ−).
    psi = BellDiagonal.pure("psi+")
    assert bd.age(psi, 1.0, t1_s=1.0, t2_s=1.0).fidelity() > psi.fidelity()
    with pytest.raises(ValueError, match="monotone"):
        bd.cutoff_for_fidelity(psi, 0.1, t1_s=1.0, t2_s=1.0)


def test_cutoffs():
    assert bd.cutoff_ok(0.0, 1.0) and bd.cutoff_ok(0.999, 1.0)
    assert not bd.cutoff_ok(1.0, 1.0) and not bd.cutoff_ok(2.0, 1.0)
    assert bd.cutoff_ok(1e9, math.inf)
    with pytest.raises(ValueError, match="state_age_s"):
        bd.cutoff_ok(-1.0, 1.0)
    s, kw = W(0.95), {"t1_s": 2.0, "t2_s": 1.0}
    t = bd.cutoff_for_fidelity(s, 0.9, **kw)
    assert bd.aged_fidelity(s, t, **kw) == pytest.approx(0.9, abs=1e-11)
    assert bd.aged_fidelity(s, t * (1 + 1e-6), **kw) < 0.9
    assert bd.cutoff_for_fidelity(s, 0.96, **kw) == 0.0
    assert bd.cutoff_for_fidelity(s, 0.25, **kw) == math.inf  # F dips, then rises to ½
    assert bd.cutoff_for_fidelity(s, 0.9, t1_s=math.inf, t2_s=math.inf) == math.inf


# --------------------------------------------------------------------------------------------
# Swapping


def test_werner_swap_published_value():
    # the Werner swap (ideal BSM): 0.9 ⊗ 0.9 → 0.8133; exactly 0.81 + 0.01/3 = 61/75.
    f = bd.swap(W(0.9), W(0.9)).fidelity()
    assert f == pytest.approx(61 / 75, abs=1e-15)
    assert round(f, 4) == 0.8133


@settings(max_examples=100, deadline=None)
@given(fidelities, fidelities)
def test_werner_swap_multiplies_werner_parameters(f1, f2):
    out = bd.swap(W(f1), W(f2))
    assert out.isclose(W(f1 * f2 + (1 - f1) * (1 - f2) / 3), 1e-15)
    w = lambda f: (4 * f - 1) / 3  # noqa: E731
    assert w(out.fidelity()) == pytest.approx(w(f1) * w(f2), abs=1e-14)


def test_pauli_frame_rule_all_cases_by_density_matrix():
    for a in Bell:
        for b in Bell:
            for c in Bell:
                p, coeffs = swap_circuit(BellDiagonal.pure(a).coefficients,
                                         BellDiagonal.pure(b).coefficients, c)
                assert p == pytest.approx(0.25, abs=1e-14)
                assert int(np.argmax(coeffs)) == bd.pauli_frame(a, b, c)
                assert coeffs.max() == pytest.approx(1.0, abs=1e-14)
    # Pan et al. PRL 80, 3891 (1998): two Ψ− sources leave (1,4) in the measured Bell state.
    assert all(bd.pauli_frame("psi-", "psi-", c) == c for c in Bell)


def test_swap_matches_density_matrix_for_every_outcome():
    rng = np.random.default_rng(11)
    for _ in range(10):
        s1, s2 = random_bd(rng), random_bd(rng)
        corrected = bd.swap(s1, s2)
        for c in Bell:
            p, coeffs = swap_circuit(s1.coefficients, s2.coefficients, c)
            assert p == pytest.approx(0.25, abs=1e-13)
            assert np.allclose(coeffs, corrected.relabel(c).as_array(), atol=1e-12, rtol=0)


@settings(max_examples=200, deadline=None)
@given(bd_states(), bd_states(), unit, unit)
def test_swap_properties(a, b, g, eta):
    ab = bd.swap(a, b, gate_fidelity=g, meas_fidelity=eta)
    assert ab.isclose(bd.swap(b, a, gate_fidelity=g, meas_fidelity=eta), 1e-15)
    assert math.fsum(ab.coefficients) == pytest.approx(1.0, abs=1e-12) and min(ab.coefficients) >= 0
    # SeQUeNCe's BDS swap, literally:
    # λ'_k = g[η²c_k + η(1−η)(c_{k⊕Z} + c_{k⊕X}) + (1−η)²c_{k⊕Y}] + (1−g)/4
    c = xor_conv(a.coefficients, b.coefficients)
    lit = [g * (eta**2 * c[k] + eta * (1 - eta) * (c[k ^ 1] + c[k ^ 2]) + (1 - eta) ** 2 * c[k ^ 3])
           + (1 - g) / 4 for k in range(4)]
    assert np.allclose(ab.as_array(), lit, atol=1e-15, rtol=0)
    assert np.allclose(bd.swap(a, b, gate_fidelity=1.0, meas_fidelity=1.0).as_array(), c,
                       atol=1e-15, rtol=0)


# --------------------------------------------------------------------------------------------
# Purification: closed forms


def test_bbpssw_published_values():
    # Bennett et al., PRL 76, 722 (1996): F = 0.8 → p = 0.7689, F' = 0.8382. Exactly
    # p = 6.92/9 = 173/225 and F' = 5.8/6.92 = 145/173 = 0.838150289017341…
    p, out = bd.bbpssw(W(0.8), W(0.8))
    assert p == pytest.approx(173 / 225, abs=1e-15)
    assert out.fidelity() == pytest.approx(145 / 173, abs=1e-15)
    assert (round(p, 4), round(out.fidelity(), 4)) == (0.7689, 0.8382)
    assert out == out.twirl()


def test_bbpssw_fixed_points_and_improvement():
    # 8F³ − 14F² + 7F − 1 = (F − 1)(2F − 1)(4F − 1): fixed points ¼, ½, 1 (the paper names ½, 1).
    for f in (0.25, 0.5, 1.0):
        assert bd.bbpssw(W(f), W(f)).state.fidelity() == pytest.approx(f, abs=1e-15)
    for f in np.linspace(0.01, 0.99, 99):
        if min(abs(f - 0.25), abs(f - 0.5)) < 1e-6:
            continue  # the fixed points themselves are checked above
        gain = bd.bbpssw(W(f), W(f)).state.fidelity() - f
        assert (gain > 0) == (f < 0.25 - 1e-9 or f > 0.5 + 1e-9), f


@settings(max_examples=150, deadline=None)
@given(bd_states(), bd_states())
def test_dejmps_matches_deutsch_1996(k, m):
    n, ref = deutsch_two_pair(k.coefficients, m.coefficients)
    assume(n > 1e-9)
    p, out = bd.dejmps(k, m)
    assert p == pytest.approx(n, abs=1e-15)
    assert np.allclose(out.as_array(), ref, atol=1e-12, rtol=0)
    n1, ref1 = deutsch_identical(k.coefficients)
    assume(n1 > 1e-9)
    p1, out1 = bd.dejmps(k, k)
    assert p1 == pytest.approx(n1, abs=1e-15)
    assert np.allclose(out1.as_array(), ref1, atol=1e-12, rtol=0)


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_dejmps_on_werner_equals_bbpssw_before_retwirl(f1, f2):
    """On Werner inputs (λ_Φ− = λ_Ψ−) the DEJMPS rotation is invisible: the whole output vector
    equals the un-rotated, un-twirled recurrence, and BBPSSW is its twirl (same p and F)."""
    p_d, out_d = bd.dejmps(W(f1), W(f2))
    p_s, ref = sequence_bds(W(f1).coefficients, W(f2).coefficients)
    p_b, out_b = bd.bbpssw(W(f1), W(f2))
    assert p_d == pytest.approx(p_s, abs=1e-15) and p_d == pytest.approx(p_b, abs=1e-15)
    assert np.allclose(out_d.as_array(), ref, atol=1e-13, rtol=0)
    assert out_b.isclose(out_d.twirl(), 1e-13)
    q1, q2 = (1 - f1) / 3, (1 - f2) / 3
    assert p_b == pytest.approx(f1 * f2 + f1 * q2 + q1 * f2 + 5 * q1 * q2, abs=1e-15)
    assert out_b.fidelity() == pytest.approx((f1 * f2 + q1 * q2) / p_b, abs=1e-13)
    # ... but the DEJMPS output is not Werner (Φ− carries 2F·q/N): not re-twirled.
    if 0.3 < f1 == f2 < 0.99:
        assert not out_d.isclose(out_d.twirl(), 1e-6)


def test_dejmps_rotation_is_not_the_sequence_untwirled_recurrence():
    """SeQUeNCe's "DEJMPS" (is_twirled=False) omits the ±π/2 rotations of Deutsch et al. For a state
    whose Φ− and Ψ− weights differ, it gives a different (wrong for DEJMPS) answer."""
    s = BellDiagonal((0.7, 0.2, 0.05, 0.05))
    p, out = bd.dejmps(s, s)
    p_seq, seq = sequence_bds(s.coefficients, s.coefficients)
    assert abs(p - p_seq) > 0.05 and abs(out.fidelity() - seq[0]) > 0.01
    p_circ, circ = dejmps_circuit(s.coefficients, s.coefficients)
    p_norot, norot = dejmps_circuit(s.coefficients, s.coefficients, rotate=False)
    assert p == pytest.approx(p_circ, abs=1e-12) and np.allclose(out.as_array(), circ, atol=1e-12)
    assert p_seq == pytest.approx(p_norot, abs=1e-12) and np.allclose(seq, norot, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.floats(0.501, 0.999), st.integers(2, 6))
def test_later_dejmps_rounds_beat_bbpssw(f, rounds):
    d = b = W(f)
    for _ in range(rounds):
        d = bd.dejmps(d, d).state
        b = bd.bbpssw(b, b).state
    assert d.fidelity() >= b.fidelity() - 1e-15
    if b.fidelity() < 1 - 1e-9:
        assert d.fidelity() > b.fidelity()


def test_dejmps_needs_fewer_rounds_and_pairs_than_bbpssw():
    for f, target in ((0.6, 0.95), (0.7, 0.99), (0.8, 0.999), (0.9, 0.99)):
        d = bd.purify_until(W(f), target, protocol="dejmps", max_rounds=40)
        b = bd.purify_until(W(f), target, protocol="bbpssw", max_rounds=40)
        assert d is not None and b is not None
        assert d.rounds < b.rounds and d.pairs_consumed < b.pairs_consumed
    d = bd.purify_until(W(0.8), 0.999, protocol="dejmps", max_rounds=40)
    b = bd.purify_until(W(0.8), 0.999, protocol="bbpssw", max_rounds=40)
    assert (d.rounds, b.rounds) == (5, 16)


# --------------------------------------------------------------------------------------------
# Purification: noise model and density-matrix cross-check


@settings(max_examples=150, deadline=None)
@given(bd_states(), bd_states(), unit, unit, unit, unit)
def test_noisy_purification_follows_sequence_bds_structure(k, m, ga, gb, ea, eb):
    assume(ga * gb < 1 or deutsch_two_pair(k.coefficients, m.coefficients)[0] > 1e-9)
    p, out = bd.dejmps(k, m, gate_fidelity=(ga, gb), meas_fidelity=(ea, eb))
    p_ref, ref = sequence_bds(rot(k.coefficients), rot(m.coefficients), ga * gb, ea, eb)
    assert p == pytest.approx(p_ref, abs=1e-14)
    assert np.allclose(out.as_array(), ref, atol=1e-12, rtol=0)
    kw, mw = k.twirl().coefficients, m.twirl().coefficients
    assume(ga * gb < 1 or deutsch_two_pair(kw, mw)[0] > 1e-9)
    p_b, out_b = bd.bbpssw(k, m, gate_fidelity=(ga, gb), meas_fidelity=(ea, eb))
    p_ref, ref = sequence_bds(kw, mw, ga * gb, ea, eb)
    assert p_b == pytest.approx(p_ref, abs=1e-14)
    assert out_b.isclose(W(ref[0]), 1e-12)


@settings(max_examples=150, deadline=None)
@given(bd_states(), bd_states())
def test_noisy_ops_at_fidelity_one_equal_ideal(k, m):
    n, ref = deutsch_two_pair(k.coefficients, m.coefficients)
    assume(n > 1e-9)
    p, out = bd.dejmps(k, m, gate_fidelity=1.0, meas_fidelity=(1.0, 1.0))
    assert p == pytest.approx(n, abs=1e-15) and np.allclose(out.as_array(), ref, atol=1e-12)
    assert bd.swap(k, m, gate_fidelity=1.0, meas_fidelity=1.0).isclose(
        BellDiagonal(tuple(xor_conv(k.coefficients, m.coefficients))), 1e-15)
    f1, f2 = k.fidelity(), m.fidelity()
    q1, q2 = (1 - f1) / 3, (1 - f2) / 3
    nb = f1 * f2 + f1 * q2 + q1 * f2 + 5 * q1 * q2
    assume(nb > 1e-9)
    p_b, out_b = bd.bbpssw(k, m, gate_fidelity=1.0, meas_fidelity=1.0)
    assert p_b == pytest.approx(nb, abs=1e-15)
    assert out_b.fidelity() == pytest.approx((f1 * f2 + q1 * q2) / nb, abs=1e-12)


def test_dejmps_closed_form_equals_explicit_circuit():
    """Random BD inputs through the explicit 16×16 circuit (rotations, bilateral CNOT, Z
    measurement, post-selection): output and success probability agree to 1e-12, the output is
    Bell-diagonal, and this fixes the rotation convention Rx(+π/2)_Alice ⊗ Rx(−π/2)_Bob."""
    rng = np.random.default_rng(2024)
    for _ in range(25):
        k, m = random_bd(rng), random_bd(rng)
        p, out = bd.dejmps(k, m)
        p_c, circ = dejmps_circuit(k.coefficients, m.coefficients)
        assert abs(p - p_c) < 1e-12
        assert np.max(np.abs(out.as_array() - circ)) < 1e-12


def test_noisy_dejmps_equals_noisy_circuit():
    rng = np.random.default_rng(99)
    for _ in range(15):
        k, m = random_bd(rng), random_bd(rng)
        ga, gb, ea, eb = rng.uniform(0.8, 1.0, 4)
        p, out = bd.dejmps(k, m, gate_fidelity=(ga, gb), meas_fidelity=(ea, eb))
        p_c, circ = dejmps_circuit(k.coefficients, m.coefficients, big_g=ga * gb, eta_a=ea,
                                   eta_b=eb)
        assert abs(p - p_c) < 1e-12
        assert np.max(np.abs(out.as_array() - circ)) < 1e-12


def test_rotation_swaps_phi_minus_and_psi_minus():
    u = np.kron(rx(math.pi / 2), rx(-math.pi / 2))
    for k, target in enumerate([0, 3, 2, 1]):
        rho = u @ bd_rho(BellDiagonal.pure(k).coefficients) @ u.conj().T
        assert bell_coefficients(rho)[target] == pytest.approx(1.0, abs=1e-14)


# --------------------------------------------------------------------------------------------
# Every operation returns a valid state


def assert_valid(s: BellDiagonal) -> None:
    assert isinstance(s, BellDiagonal)
    assert min(s.coefficients) >= 0.0
    assert abs(math.fsum(s.coefficients) - 1.0) <= 1e-12


@settings(max_examples=200, deadline=None)
@given(bd_states(), bd_states(), unit, unit, st.floats(0.0, 5.0), st.floats(1e-3, 5.0),
       st.floats(0.01, 1.0), st.sampled_from(["dejmps", "bbpssw"]))
def test_every_operation_returns_a_valid_state(a, b, g, eta, t, t1, ratio, protocol):
    assert_valid(a.relabel("psi-"))
    assert_valid(a.twirl())
    assert_valid(bd.age(a, t, t1_s=t1, t2_s=2 * t1 * ratio))
    assert_valid(bd.age(a, t, t1_s=t1, t2_s=2 * t1 * ratio, halves=1))
    assert_valid(bd.apply_channels(a, PauliChannel.depolarizing(g), PauliChannel.from_rates(
        t, g, eta, ratio)))
    assert_valid(bd.swap(a, b, gate_fidelity=g, meas_fidelity=eta))
    try:
        p, out = bd.purify(a, b, protocol=protocol, gate_fidelity=g, meas_fidelity=eta)
    except bd.PurificationImpossible:
        assert g == 1.0
        return
    assert 0.0 < p <= 1.0 + 1e-15
    assert_valid(out)


# --------------------------------------------------------------------------------------------
# Schedules


def test_purify_until_costs():
    plan = bd.purify_until(W(0.8), 0.8, max_rounds=5)
    assert plan is not None and (plan.rounds, plan.pairs_consumed) == (0, 1.0)
    plan = bd.purify_until(W(0.8), 0.83, protocol="bbpssw", max_rounds=5)
    assert plan.rounds == 1 and plan.success_probabilities == pytest.approx((173 / 225,))
    assert plan.pairs_consumed == pytest.approx(2 * 225 / 173)
    assert plan.yield_per_pair == pytest.approx(173 / 450)
    assert plan.state.fidelity() == pytest.approx(145 / 173)
    # Recurrence: c_n = 2 c_{n-1}/p_n.  Pumping: c_n = (c_{n-1} + 1)/p_n.
    rec = bd.purify_until(W(0.7), 0.95, schedule="recurrence", max_rounds=10)
    c = 1.0
    for p in rec.success_probabilities:
        c = 2 * c / p
    assert rec.pairs_consumed == pytest.approx(c)
    pump = bd.purify_until(W(0.9), 0.95, schedule="pumping", max_rounds=10)
    assert pump.rounds == 2
    p1, s1 = bd.dejmps(W(0.9), W(0.9))
    p2, s2 = bd.dejmps(s1, W(0.9))
    assert pump.success_probabilities == pytest.approx((p1, p2))
    assert pump.pairs_consumed == pytest.approx(((1 + 1) / p1 + 1) / p2)
    assert pump.state == s2


def test_purify_until_unreachable():
    # BBPSSW at its fixed point F = ½: one round changes nothing → None without using max_rounds.
    assert bd.purify_until(W(0.5), 0.6, protocol="bbpssw", max_rounds=10**6) is None
    # Ideal DEJMPS pumping with raw Werner 0.9 saturates at F ≈ 0.96017 (fixed point detected).
    assert bd.purify_until(W(0.9), 0.97, schedule="pumping", max_rounds=10**6) is None
    # Gate noise caps recurrence (g = 0.99 per side: DEJMPS ceiling ≈ 0.98700).
    assert bd.purify_until(W(0.9), 0.99, gate_fidelity=0.99, max_rounds=10**6) is None
    assert bd.purify_until(W(0.9), 0.98, gate_fidelity=0.99, max_rounds=100) is not None
    # Not enough rounds.
    assert bd.purify_until(W(0.6), 0.99, max_rounds=3) is None
    # Zero success probability.
    assert bd.purify_until(BellDiagonal((0.0, 0.0, 1.0, 0.0)), 0.5) is None


# --------------------------------------------------------------------------------------------
# Capacities


def test_hashing_threshold():
    """Werner hashing yield 1 + F log2 F + (1−F) log2((1−F)/3) is zero at
    F* = 0.8107103750847682 (bisection; Bennett, DiVincenzo, Smolin, Wootters 1996 give 0.8107)."""
    root = bisect(werner_hashing, 0.6, 0.99)
    assert root == pytest.approx(0.8107, abs=1e-4)
    assert root == pytest.approx(0.8107103750847682, abs=1e-12)
    assert abs(bd.hashing_yield(W(root))) < 1e-12
    assert bd.hashing_yield(W(root - 1e-6)) < 0 < bd.hashing_yield(W(root + 1e-6))
    for f in (0.5, 0.7, 0.9, 0.99):
        assert bd.hashing_yield(W(f)) == pytest.approx(werner_hashing(f), abs=1e-14)


def test_capacities():
    low = W(0.5)
    assert bd.hashing_yield(low) < 0 and bd.hashing_yield_clamped(low) == 0.0
    assert bd.hashing_yield(W(1.0)) == 1.0 and bd.dense_coding_capacity(W(1.0)) == 2.0
    assert bd.dense_coding_capacity(W(0.25)) == pytest.approx(0.0, abs=1e-15)
    assert bd.dense_coding_capacity_clamped(W(0.25)) == 1.0
    s = BellDiagonal((0.6, 0.2, 0.15, 0.05))
    assert bd.dense_coding_capacity(s) == pytest.approx(1.0 + bd.hashing_yield(s), abs=1e-15)
    for p in (0.0, 0.1, 0.5, 1.0, 4 / 3):
        f = 1 - 3 * p / 4
        lit = 2 + (1 - 3 * p / 4) * (math.log2(1 - 3 * p / 4) if f > 0 else 0.0) + (
            3 * p / 4 * math.log2(p / 4) if p > 0 else 0.0)
        ce = bd.entanglement_assisted_capacity_depolarizing(p)
        assert ce == pytest.approx(lit, abs=1e-14)
        assert ce == pytest.approx(bd.dense_coding_capacity(W(f)), abs=1e-14)
    assert bd.unassisted_capacity_depolarizing(0.0) == 1.0
    assert bd.unassisted_capacity_depolarizing(1.0) == 0.0
    assert bd.unassisted_capacity_depolarizing(0.2) == pytest.approx(
        1 + 0.1 * math.log2(0.1) + 0.9 * math.log2(0.9))
    assert bd.LINEAR_OPTICS_DENSE_CODING_BITS == pytest.approx(1.585, abs=5e-4)
