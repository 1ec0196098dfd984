"""Link-quality estimators: pure functions on counts, each with a Poisson standard error.

Notation: N_s, N_i singles counts of the two arms, C coincidences counted in |Δt| ≤ w on the
native core's integer-picosecond grid (full window τ = 2w + 1 ps: :func:`full_window_ps`), A
accidentals (counted in a displaced window of the same width, or expected from singles), T the
integration time. Counts are dimensionless; times are ps unless a name says otherwise. Every
function returns an :class:`Estimate` (value, sigma) with first-order (delta-method) error
propagation, treating each count as Poisson (σ_N = √N) unless stated. Nothing here subtracts
accidentals behind your back: the functions that use A say so.

Entanglement and key figures (the papers behind them: docs/physicists/estimators.md, section
Sources): QBER per basis with Wilson / Clopper–Pearson intervals (:func:`basis_qber`), the
reported QBER inside its physical range, optionally read-out corrected (:func:`physical_qber`),
fidelity and the Bell-diagonal weights λ from QBERs, CHSH S from four settings and the Horodecki
S_max, BBM92 key fractions and rates, dense-coding capacity and hashing yield of an estimated λ.
Bell states are named "phi+", "phi-", "psi+", "psi-"; Pauli bases "X", "Y", "Z" with the '+'
outcome the +1 eigenvector of σ_x, σ_y, σ_z on both sides (Z+ = H, X+ = D, Y+ = R, as in
:mod:`qnode.hal_sim.physics.polarisation`).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from statistics import NormalDist
from typing import Any, NamedTuple, Protocol

import numpy as np

from qnode.daemon.quantum.bell_states import BELL_STATES


class Estimate(NamedTuple):
    """A value and its one-standard-deviation error (same units as the value)."""

    value: float
    sigma: float

    def within(self, expected: float, n_sigma: float = 3.0) -> bool:
        """True when |value − expected| ≤ n_sigma·sigma."""
        return abs(self.value - expected) <= n_sigma * self.sigma

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Two-sided normal (delta-method) interval value ∓ z·sigma, z = Φ⁻¹((1 + level)/2)
        (1.95996 at 0.95). Adequate when the estimate is far from any physical boundary; for
        proportions near 0 or 1 use :meth:`Qber.interval`."""
        z = _z(level)
        return (self.value - z * self.sigma, self.value + z * self.sigma)


def _nan() -> Estimate:
    return Estimate(math.nan, math.nan)


def _count(name: str, x: float) -> float:
    if not (isinstance(x, (int, float)) or hasattr(x, "__float__")) or not math.isfinite(float(x)):
        raise ValueError(f"{name} must be a finite count, got {x!r}")
    if float(x) < 0:
        raise ValueError(f"{name} must be >= 0, got {x!r}")
    return float(x)


def full_window_ps(window_ps: float) -> float:
    """Width τ (ps) of the coincidence window |Δt| ≤ w as the native core counts it.

    The core (``native/qcore.c``: a pair spec [lo, hi] = [−w, w] counts a partner tag at time v
    when t + lo ≤ v ≤ t + hi, both edges inclusive, on int64 picosecond times) admits every
    integer offset from −w to +w: 2w + 1 values, so τ = 2w + 1 ps, not 2w. The difference is
    −20 % at w = 2 ps, and w = 0 (equal times only) still counts one value. A non-integer w
    admits 2⌊w⌋ + 1 integer offsets. ``window_ps``: the half-width w (ps, ≥ 0).
    """
    w = float(window_ps)
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"window_ps must be a finite half-width >= 0, got {window_ps!r}")
    return 2.0 * math.floor(w) + 1.0


def expected_accidentals(singles_1: float, singles_2: float, window_ps: float,
                         duration_ps: float) -> Estimate:
    """Expected accidental coincidences of two uncorrelated streams, A = N1·N2·τ/T (counts),
    τ = 2w + 1 ps (:func:`full_window_ps`).

    Derivation: the N2 tags of stream 2 are spread uniformly over the T ps of the run, so each
    of the N1 tags of stream 1 finds on average N2/T of them at each integer offset, and the
    window |Δt| ≤ w holds 2w + 1 integer offsets. In rates, A/T = R1·R2·τ (R = N/T). Tags within
    w of the run's ends see part of the window only (a relative error of order w/T, neglected).
    ``window_ps`` is the half-width w (ps) as given to the core, ``duration_ps`` is T (ps).
    Error from the singles' Poisson errors: (σ_A/A)² = 1/N1 + 1/N2. This is the expectation; a
    count of accidentals scatters about it by more than √A when other tags often share a window
    (roughly A·(1 + (R1 + R2)·τ)).
    """
    n1, n2 = _count("singles_1", singles_1), _count("singles_2", singles_2)
    if not duration_ps > 0:
        raise ValueError(f"duration_ps must be > 0, got {duration_ps!r}")
    a = n1 * n2 * full_window_ps(window_ps) / duration_ps
    rel2 = (1.0 / n1 if n1 else 0.0) + (1.0 / n2 if n2 else 0.0)
    return Estimate(a, a * math.sqrt(rel2))


def car(coincidences: float, accidentals: float, *,
        accidentals_sigma: float | None = None) -> Estimate:
    """Coincidence-to-accidental ratio CAR = (C − A)/A (accidental-subtracted form; some papers
    quote C/A = CAR + 1).

    C and A are independent Poisson counts in windows of equal width (A from a displaced window):
    σ² = C/A² + C²·σ_A²/A⁴ with σ_A = √A, or ``accidentals_sigma`` when A is an expectation (e.g.
    from :func:`expected_accidentals`).
    """
    c, a = _count("coincidences", coincidences), _count("accidentals", accidentals)
    if a == 0:
        return _nan()
    sa2 = a if accidentals_sigma is None else float(accidentals_sigma) ** 2
    return Estimate((c - a) / a, math.sqrt(c / a**2 + c**2 * sa2 / a**4))


def klyshko_efficiency(coincidences: float, accidentals: float, singles_other: float) -> Estimate:
    """Klyshko (heralding) efficiency of one arm: η_s = (C − A)/N_i, the probability that the
    partner of a photon detected in the *other* arm (singles N_i) is detected in this arm.

    C counts pairs among the N_i heralds, so C is binomial given N_i: σ² = (C·(1 − C/N_i) + A)/N_i²
    (A an independent Poisson count). Singles must be registered counts over the same T as C.
    """
    c, a = _count("coincidences", coincidences), _count("accidentals", accidentals)
    n = _count("singles_other", singles_other)
    if n == 0:
        return _nan()
    return Estimate((c - a) / n, math.sqrt(max(c * (1.0 - c / n), 0.0) + a) / n)


def klyshko_efficiencies(coincidences: float, accidentals: float, singles_s: float,
                         singles_i: float) -> tuple[Estimate, Estimate]:
    """(η_s, η_i) = ((C − A)/N_i, (C − A)/N_s): see :func:`klyshko_efficiency`."""
    return (klyshko_efficiency(coincidences, accidentals, singles_i),
            klyshko_efficiency(coincidences, accidentals, singles_s))


def symmetric_heralding_efficiency(coincidences: float, accidentals: float, singles_s: float,
                                   singles_i: float) -> Estimate:
    """(C − A)/√(N_s·N_i); error from C and A only (singles errors are second order)."""
    c, a = _count("coincidences", coincidences), _count("accidentals", accidentals)
    ns, ni = _count("singles_s", singles_s), _count("singles_i", singles_i)
    if ns == 0 or ni == 0:
        return _nan()
    d = math.sqrt(ns * ni)
    return Estimate((c - a) / d, math.sqrt(c + a) / d)


def correlation(n_pp: float, n_mm: float, n_pm: float, n_mp: float,
                accidentals: Sequence[float] | None = None) -> Estimate:
    """Correlation E = (N++ + N−− − N+− − N−+)/ΣN of two ±1 outcomes (dimensionless, −1..1).

    With ``accidentals`` = (A++, A−−, A+−, A−+) each N is replaced by N − A (accidental-subtracted)
    and each A adds its Poisson variance. With S = same-outcome and D = different-outcome sums:
    E = (S − D)/(S + D), σ² = (2D)²·var_S/(S+D)⁴ + (2S)²·var_D/(S+D)⁴, which is (1 − E²)/ΣN
    without accidentals.
    """
    n = [_count(k, x)
         for k, x in zip(("n_pp", "n_mm", "n_pm", "n_mp"), (n_pp, n_mm, n_pm, n_mp), strict=True)]
    acc = [0.0] * 4 if accidentals is None else [_count("accidentals", x) for x in accidentals]
    if len(acc) != 4:
        raise ValueError(f"accidentals must be 4 counts (A++, A--, A+-, A-+), got {len(acc)}")
    s = n[0] - acc[0] + n[1] - acc[1]
    d = n[2] - acc[2] + n[3] - acc[3]
    tot = s + d
    if tot <= 0:
        return _nan()
    var_s = n[0] + acc[0] + n[1] + acc[1]
    var_d = n[2] + acc[2] + n[3] + acc[3]
    sigma = 2.0 * math.sqrt(d * d * var_s + s * s * var_d) / tot**2
    return Estimate((s - d) / tot, sigma)


def visibility(c_max: float, c_min: float) -> Estimate:
    """Fringe visibility V = (C_max − C_min)/(C_max + C_min), Poisson counts:
    σ = 2·√(C_max·C_min·(C_max + C_min))/(C_max + C_min)²."""
    hi, lo = _count("c_max", c_max), _count("c_min", c_min)
    tot = hi + lo
    if tot == 0:
        return _nan()
    return Estimate((hi - lo) / tot, 2.0 * math.sqrt(hi * lo * tot) / tot**2)


def qber(n_error: float, n_ok: float) -> Estimate:
    """Quantum bit error rate Q = N_err/(N_err + N_ok) ≈ (1 − V)/2, binomial error √(Q(1−Q)/N)."""
    e, o = _count("n_error", n_error), _count("n_ok", n_ok)
    tot = e + o
    if tot == 0:
        return _nan()
    q = e / tot
    return Estimate(q, math.sqrt(q * (1.0 - q) / tot))


def chsh(e_ab: Estimate, e_ab2: Estimate, e_a2b: Estimate, e_a2b2: Estimate) -> Estimate:
    """CHSH S = |E(a,b) − E(a,b′) + E(a′,b) + E(a′,b′)| from four independent correlations
    (≤ 2 for local models, 2√2 at the quantum maximum, 2√2·V for a Werner state)."""
    s = e_ab.value - e_ab2.value + e_a2b.value + e_a2b2.value
    return Estimate(abs(s), math.sqrt(sum(x.sigma**2 for x in (e_ab, e_ab2, e_a2b, e_a2b2))))


# ==================================================================== QBER, fidelity, key, capacity

BASES: tuple[str, ...] = ("X", "Y", "Z")

# ⟨B|σ_b⊗σ_b|B⟩ for b = X, Y, Z: the sign of the correlation E_bb of each Bell state (the diagonal
# of its correlation matrix; Φ+ = diag(1, −1, 1), Ψ− = −I).
BELL_SIGNS: dict[str, tuple[int, int, int]] = {
    "phi+": (1, -1, 1),
    "phi-": (-1, 1, 1),
    "psi+": (1, 1, -1),
    "psi-": (-1, -1, -1),
}

DEFAULT_EC_INEFFICIENCY = 1.16
"""Error-correction inefficiency f (leaked bits / h(Q)) of :func:`secret_fraction`. Practical
codes reach f ≈ 1.1–1.2; 1.16 is the value commonly assumed for Cascade / LDPC
reconciliation at QBERs of a few per cent. f = 1 is the Shannon limit."""


class _HasEstimate(Protocol):
    @property
    def value(self) -> float: ...

    @property
    def sigma(self) -> float: ...


QLike = _HasEstimate | float
"""A QBER given as an :class:`Estimate`, a :class:`Qber` or a bare float (then sigma = 0)."""


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def _vs(name: str, x: QLike) -> tuple[float, float]:
    """(value, sigma) of an Estimate-like or a float (sigma 0)."""
    if hasattr(x, "value") and hasattr(x, "sigma"):
        val, sig = float(x.value), float(x.sigma)
    else:
        try:
            val, sig = float(x), 0.0
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or an Estimate, got {x!r}") from None
    if not math.isfinite(val) or not (sig >= 0.0):
        raise ValueError(f"{name} must be finite with sigma >= 0, got {x!r}")
    return val, sig


def _qber_value(name: str, x: QLike) -> tuple[float, float]:
    q, s = _vs(name, x)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"{name} must be a QBER in [0, 1], got {q!r}")
    return q, s


def _bell(name: str) -> str:
    if name not in BELL_SIGNS:
        raise ValueError(f"source_state must be one of {list(BELL_STATES)}, got {name!r}")
    return name


def _basis_index(basis: str) -> int:
    try:
        return BASES.index(basis.upper())
    except (AttributeError, ValueError):
        raise ValueError(f"basis must be one of {list(BASES)}, got {basis!r}") from None


# ---------------------------------------------------------------------- binomial intervals

def wilson_interval(errors: float, total: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (Wilson, JASA 22, 209 (1927)).

    centre = (k + z²/2)/(n + z²), half-width = z/(n + z²)·√(k(n − k)/n + z²/4),
    z = Φ⁻¹((1 + level)/2). Its coverage is close to ``level`` on average (Brown, Cai, DasGupta,
    Stat. Sci. 16, 101 (2001)), it stays inside [0, 1] and is not degenerate at k = 0, unlike the
    Wald interval Q ∓ z·√(Q(1 − Q)/n). n = 0 gives (0, 1).
    """
    k, n = _count("errors", errors), _count("total", total)
    if k > n:
        raise ValueError(f"errors ({k}) must not exceed total ({n})")
    z = _z(level)
    if n == 0:
        return (0.0, 1.0)
    z2 = z * z
    centre = (k + z2 / 2.0) / (n + z2)
    half = z / (n + z2) * math.sqrt(k * (n - k) / n + z2 / 4.0)
    return (max(centre - half, 0.0), min(centre + half, 1.0))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes
    §6.4); converges in O(√max(a, b)) terms for x < (a + 1)/(a + b + 2)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b})")


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0, 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(ln_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _beta_quantile(p: float, a: float, b: float) -> float:
    """x with I_x(a, b) = p, by bisection (I_x is increasing in x) to 1e-15 absolute."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _betainc(a, b, mid) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


def clopper_pearson_interval(errors: float, total: float,
                             level: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson ("exact") interval for a binomial proportion (Biometrika 26, 404 (1934)).

    With α = 1 − level: lower = Beta⁻¹(α/2; k, n − k + 1) (0 when k = 0), upper =
    Beta⁻¹(1 − α/2; k + 1, n − k) (1 when k = n), i.e. the p at which P(X ≥ k | p) and
    P(X ≤ k | p) equal α/2. Its coverage is ≥ ``level`` for every true p (conservative): use it
    when a guaranteed bound is needed (a QBER upper bound entering a key-rate or fidelity claim)
    or for small counts. ``errors`` and ``total`` must be whole counts.
    """
    k, n = _count("errors", errors), _count("total", total)
    if k > n or k != int(k) or n != int(n):
        raise ValueError(f"errors and total must be whole counts with errors <= total, "
                         f"got {errors!r}, {total!r}")
    alpha = 1.0 - level
    _z(level)  # validates level
    if n == 0:
        return (0.0, 1.0)
    lo = 0.0 if k == 0 else _beta_quantile(alpha / 2.0, k, n - k + 1.0)
    hi = 1.0 if k == n else _beta_quantile(1.0 - alpha / 2.0, k + 1.0, n - k)
    return (lo, hi)


class Qber(NamedTuple):
    """A QBER estimate Q = errors/total with its binomial standard error σ = √(Q(1 − Q)/N).

    Given the total N, the number of errors is binomial (Poisson counts split into channels), so
    the binomial σ is the right one. Use :meth:`interval` for confidence intervals: σ alone
    (Wald) undercovers near Q = 0 and is zero at errors = 0.
    """

    value: float
    sigma: float
    errors: float
    total: float

    def within(self, expected: float, n_sigma: float = 3.0) -> bool:
        """True when |value − expected| ≤ n_sigma·sigma."""
        return abs(self.value - expected) <= n_sigma * self.sigma

    @property
    def estimate(self) -> Estimate:
        return Estimate(self.value, self.sigma)

    def interval(self, level: float = 0.95, method: str = "wilson") -> tuple[float, float]:
        """Two-sided confidence interval of the true QBER at ``level``.

        ``method="wilson"`` (default): :func:`wilson_interval`, coverage ≈ level, the one to
        report. ``method="clopper-pearson"``: :func:`clopper_pearson_interval`, coverage ≥ level,
        the one to use for guaranteed (security or SLA) bounds.
        """
        if method == "wilson":
            return wilson_interval(self.errors, self.total, level)
        if method in ("clopper-pearson", "exact"):
            return clopper_pearson_interval(self.errors, self.total, level)
        raise ValueError(f"method must be 'wilson' or 'clopper-pearson', got {method!r}")


def basis_qber(n_pp: float, n_mm: float, n_pm: float, n_mp: float, *, basis: str = "Z",
               source_state: str = "phi+") -> Qber:
    """QBER of one basis from its four coincidence counts (N++, N−−, N+−, N−+), as
    :func:`correlation` orders them (Z: + = H, − = V; X: D, A; Y: R, L).

    The errors are the outcomes the ideal ``source_state`` never gives in that basis:
    the anti-correlated channels N+− + N−+ where its correlation E_bb = +1 (Φ+ in Z and X), the
    correlated channels N++ + N−− where E_bb = −1 (Ψ− in every basis, and Φ+ in Y since
    ⟨Φ+|σ_y⊗σ_y|Φ+⟩ = −1). For a Bell-diagonal state Q_b = (1 − s_b·E_bb)/2 with s_b that sign.
    Counts are raw: accidentals stay in (they are errors of the key too, half of them on average).
    """
    same = _count("n_pp", n_pp) + _count("n_mm", n_mm)
    diff = _count("n_pm", n_pm) + _count("n_mp", n_mp)
    sign = BELL_SIGNS[_bell(source_state)][_basis_index(basis)]
    err = diff if sign > 0 else same
    total = same + diff
    if total == 0:
        return Qber(math.nan, math.nan, 0.0, 0.0)
    q = err / total
    return Qber(q, math.sqrt(q * (1.0 - q) / total), err, total)


QBER_RANGE: tuple[float, float] = (0.0, 1.0)
"""Physical range of a basis QBER against a target Bell state. Q_b is the weight of the two Bell
states that disagree with the target in basis b (Q_Z = λΨ+ + λΨ− for Φ+), so any state gives a
value in [0, 1]. Values above ½ are physical (an anti-correlated pair, e.g. a wrong Bell frame),
so the range is not cut at ½: that would hide such a fault as a plausible Q = ½."""

QBER_LEVEL = 0.95
"""Confidence level of the QBER intervals the daemon reports (``qber_<b>_ci_low`` and
``qber_<b>_ci_high`` in the telemetry)."""


def clamp_qber(q: float) -> float:
    """``q`` clamped to :data:`QBER_RANGE` (NaN stays NaN)."""
    lo, hi = QBER_RANGE
    return q if math.isnan(q) else min(max(q, lo), hi)


class PhysicalQber(NamedTuple):
    """A QBER estimate reported inside :data:`QBER_RANGE`, with the unclamped one kept.

    * ``value``: the estimate clamped to [0, 1] (reported as ``qber_<b>``).
    * ``sigma``: standard error of ``raw`` (first order), not changed by the clamp.
    * ``raw``: the unclamped estimate (k/n − p)/(1 − 2p) (reported as ``qber_<b>_raw``). It is
      unbiased, so it is the one to average over runs; with a read-out correction (p > 0)
      counting noise puts it below 0 when the true QBER is near 0.
    * ``low``, ``high``: confidence interval at ``level`` (reported as ``qber_<b>_ci_low`` and
      ``qber_<b>_ci_high``), always inside [0, 1] and always containing ``value``.
    * ``errors``, ``total``: the raw counts k and n; ``flip``: the read-out flip probability p.

    Usable wherever a QBER is expected (:data:`QLike`): ``value`` and ``sigma``.
    """

    value: float
    sigma: float
    raw: float
    low: float
    high: float
    level: float
    errors: float
    total: float
    flip: float

    @property
    def clamped(self) -> bool:
        """True when the raw estimate lay outside [0, 1]."""
        return self.raw != self.value

    def within(self, expected: float, n_sigma: float = 3.0) -> bool:
        """True when |raw − expected| ≤ n_sigma·sigma."""
        return abs(self.raw - expected) <= n_sigma * self.sigma


def physical_qber(errors: float, total: float, *, flip: float = 0.0,
                  level: float = QBER_LEVEL) -> PhysicalQber:
    """A basis QBER from k errors among n pairs, optionally corrected for read-out flips, reported
    inside its physical range [0, 1] (:data:`QBER_RANGE`) with an interval.

    Read-out correction: if each pair's outcome parity is flipped by the read-out with
    probability p (``flip``, the mean over the pairs when it varies; p < ½), the expected error
    fraction is q_obs = p + (1 − 2p)·Q, so the unbiased estimate is Q_raw = (k/n − p)/(1 − 2p),
    with σ = √(q(1 − q)/n)/(1 − 2p), q = k/n (binomial; with p varying per pair the count is
    Poisson-binomial and this σ is slightly conservative). p = 0 gives the plain fraction k/n.

    Reported value: Q_raw clamped to [0, 1]. The true QBER lies in [0, 1], so the clamped value
    is never further from it than Q_raw; it is biased upwards near 0, which is why Q_raw is
    kept beside it.

    Interval: the Wilson score interval of the observed fraction k/n (:func:`wilson_interval`)
    mapped through the same correction x → (x − p)/(1 − 2p), then intersected with [0, 1].
    The correction is increasing in x, so the mapped interval keeps the Wilson coverage when p is
    known; intersecting with the physical range removes only values the true QBER cannot take,
    so coverage is unchanged. The Wilson interval contains k/n, hence the mapped one contains
    Q_raw and the intersection contains the clamped value. When the whole mapped interval lies
    below 0 (fewer errors than the read-out alone explains, e.g. p overestimated) it collapses
    to [0, 0]; ``raw`` and ``low``/``high`` then say so. n = 0 gives NaN with the interval
    [0, 1].
    """
    k, n = _count("errors", errors), _count("total", total)
    if k > n:
        raise ValueError(f"errors ({k}) must not exceed total ({n})")
    p = float(flip)
    if not 0.0 <= p < 0.5:
        raise ValueError(f"flip must be a probability in [0, 0.5), got {flip!r}")
    lo_w, hi_w = wilson_interval(k, n, level)
    if n == 0:
        return PhysicalQber(math.nan, math.nan, math.nan, *QBER_RANGE, level, k, n, p)
    scale = 1.0 - 2.0 * p
    frac = k / n
    raw = (frac - p) / scale
    sigma = math.sqrt(frac * (1.0 - frac) / n) / scale
    return PhysicalQber(clamp_qber(raw), sigma, raw, clamp_qber((lo_w - p) / scale),
                        clamp_qber((hi_w - p) / scale), level, k, n, p)


def qber_telemetry(basis: str, q: PhysicalQber) -> dict[str, float]:
    """The telemetry fields of one basis' QBER: ``qber_<b>`` (clamped to [0, 1]),
    ``qber_<b>_raw`` (unclamped) and ``qber_<b>_ci_low``/``qber_<b>_ci_high`` (the interval at
    :data:`QBER_LEVEL`), ``<b>`` the basis in lower case ("z", "x", "y")."""
    b = BASES[_basis_index(basis)].lower()
    return {f"qber_{b}": q.value, f"qber_{b}_raw": q.raw, f"qber_{b}_ci_low": q.low,
            f"qber_{b}_ci_high": q.high}


def visibility_from_qber(q: QLike) -> Estimate:
    """Visibility of one basis, V_b = 1 − 2·Q_b, σ_V = 2σ_Q."""
    val, sig = _qber_value("q", q)
    return Estimate(1.0 - 2.0 * val, 2.0 * sig)


# ---------------------------------------------------------------------- fidelity and λ

def fidelity_from_qber(*, q_x: QLike, q_y: QLike, q_z: QLike) -> Estimate:
    """Fidelity to the target Bell state, F = 1 − (Q_X + Q_Y + Q_Z)/2 (derived below).

    Exact for any two-qubit state, not only Bell-diagonal ones: |Φ+⟩⟨Φ+| = (I⊗I + X⊗X − Y⊗Y +
    Z⊗Z)/4, so with T_bb = s_b(1 − 2Q_b) the measured correlations F = (1 + Σ_b s_b·T_bb)/4
    (likewise for the other targets). For Werner (all Q equal) F = 1 − 3Q/2. The three bases are
    disjoint sets of counts, so σ_F = ½·√(σ_X² + σ_Y² + σ_Z²).
    """
    vals = [_qber_value(n, x) for n, x in (("q_x", q_x), ("q_y", q_y), ("q_z", q_z))]
    return Estimate(1.0 - sum(v for v, _ in vals) / 2.0,
                    0.5 * math.sqrt(sum(s * s for _, s in vals)))


def fidelity_lower_bound(*, q_z: QLike, q_x: QLike) -> Estimate:
    """Two-basis lower bound on the Bell-state fidelity, F ≥ 1 − Q_Z − Q_X.

    From F = 1 − (Q_X + Q_Y + Q_Z)/2: F − (1 − Q_Z − Q_X) = (Q_Z + Q_X − Q_Y)/2 = the weight of
    the Bell state that differs from the target by both a bit and a phase flip (λΨ− for a Φ+
    target) ≥ 0; equality when that weight is 0. σ = √(σ_Z² + σ_X²).
    """
    (z, sz), (x, sx) = _qber_value("q_z", q_z), _qber_value("q_x", q_x)
    return Estimate(1.0 - z - x, math.hypot(sz, sx))


def _fit_physical_qbers(qs: Sequence[float], sigmas: Sequence[float],
                        lam: Callable[[Sequence[float]], list[float]]) -> list[float]:
    """The QBERs nearest to ``qs`` whose Bell weights ``lam(q)`` (affine in q) are all ≥ 0:
    weighted least squares, each basis weighted by 1/σ² (all equal when a σ is 0).

    Exact for this size: the optimum of a convex quadratic under the four constraints λ_k ≥ 0 is
    the equality-constrained optimum of its active set, so every active set of one to three
    constraints (any three are independent; all four cannot hold, as Σλ = 1) is solved in
    closed form, q' = q − W⁻¹Aᵀ(AW⁻¹Aᵀ)⁻¹(Aq + c), and the feasible one nearest to q is kept.
    Why weighted: a basis measured with few errors has a small σ and stays put, so noise in the
    others is not pushed into it. The Euclidean projection of the raw λ (the equal-σ case) did
    exactly that: with λΨ± truly ~0.001 and σ(Q_X) ≈ σ(Q_Y) ≈ 0.0055, Q_X − Q_Y noise made a
    raw λΨ± negative and the projection took a third of it off λΦ+ (0.7468 → 0.7432 in one run,
    a 0.003 pessimistic purified fidelity two DEJMPS rounds on)."""
    q = np.asarray(qs, np.float64)
    c = np.array(lam([0.0, 0.0, 0.0]))
    a = np.array([np.array(lam(list(e))) - c for e in np.eye(3)]).T    # λ = c + a·q
    w = (np.asarray(sigmas, np.float64) ** -2.0 if all(x > 0 for x in sigmas)
         else np.ones(3))
    w_inv = np.diag(1.0 / w)
    best: tuple[float, np.ndarray] | None = None
    for size in (1, 2, 3):
        for rows in itertools.combinations(range(4), size):
            a_s = a[list(rows)]
            try:
                mult = np.linalg.solve(a_s @ w_inv @ a_s.T, a_s @ q + c[list(rows)])
            except np.linalg.LinAlgError:
                continue
            fit = q - w_inv @ a_s.T @ mult
            if (c + a @ fit).min() < -1e-12:
                continue
            cost = float(w @ (fit - q) ** 2)
            if best is None or cost < best[0]:
                best = (cost, fit)
    assert best is not None  # the three-constraint vertices are feasible
    return best[1].tolist()


class BellDiagonalEstimate(NamedTuple):
    """Bell-diagonal weights λ estimated from three QBERs.

    * ``weights``: λ per Bell state (:data:`BELL_STATES`), a valid distribution (clipped).
    * ``raw``: the linear-inversion values (sum to 1, may be negative from statistical noise or a
      non-Bell-diagonal state).
    * ``sigma``: per state, the standard error of the raw value (first order).
    * ``covariance``: 4×4 covariance of the raw λ in :data:`BELL_STATES` order (rows sum to 0).
    * ``clipped``: True when a raw weight was < 0; ``weights`` are then those of the physical
      QBERs nearest to the measured ones (weighted by 1/σ²: :func:`_fit_physical_qbers`).
    * ``source_state``: the target Bell state the QBERs were measured against.
    """

    weights: dict[str, float]
    raw: dict[str, float]
    sigma: dict[str, float]
    covariance: tuple[tuple[float, ...], ...]
    clipped: bool
    source_state: str

    def fidelity(self, state: str | None = None) -> Estimate:
        """λ of ``state`` (default the target) with its σ; the value is the clipped weight."""
        name = _bell(state or self.source_state)
        return Estimate(self.weights[name], self.sigma[name])


def bell_diagonal_from_qber(*, q_x: QLike, q_y: QLike, q_z: QLike,
                            source_state: str = "phi+") -> BellDiagonalEstimate:
    """Bell-diagonal weights from the QBERs of the three Pauli bases.

    Relative to Φ+ (a Pauli error flips the bases it anticommutes with: Ψ+ = X flips Z and Y,
    Φ− = Z flips X and Y, Ψ− = Y flips Z and X): Q_Z = λΨ+ + λΨ−, Q_X = λΦ− + λΨ−,
    Q_Y = λΦ− + λΨ+, so λΦ+ = 1 − (Q_X + Q_Y + Q_Z)/2, λΦ− = (Q_X + Q_Y − Q_Z)/2,
    λΨ+ = (Q_Y + Q_Z − Q_X)/2, λΨ− = (Q_Z + Q_X − Q_Y)/2. In general, with
    T_bb = s_b^target·(1 − 2Q_b), λ_k = (1 + Σ_b s_b^k·T_bb)/4 (s^k the signs of
    :data:`BELL_SIGNS`), which reduces to the above for Φ+ and covers the other targets. Every λ_k
    has σ = ½·√(σ_X² + σ_Y² + σ_Z²); ``covariance`` = J·diag(σ²)·Jᵀ with
    J_kb = −s_b^k·s_b^target/2.

    The λ_k are the diagonal of ρ in the Bell basis (the weights of the twirled state) for any
    state, so a negative raw λ comes from counting noise (or misaligned bases); then ``clipped``
    is True and ``weights`` come from the QBERs nearest to the measured ones (least squares
    weighted by 1/σ², :func:`_fit_physical_qbers`) whose λ are all ≥ 0. Without σ (plain floats)
    all bases weigh the same, which is the Euclidean projection of the raw λ onto the simplex.
    """
    target = _bell(source_state)
    qs = [_qber_value(n, x) for n, x in (("q_x", q_x), ("q_y", q_y), ("q_z", q_z))]
    st = BELL_SIGNS[target]
    t = [st[b] * (1.0 - 2.0 * qs[b][0]) for b in range(3)]
    var = [s * s for _, s in qs]
    raw = [(1.0 + sum(BELL_SIGNS[k][b] * t[b] for b in range(3))) / 4.0 for k in BELL_STATES]
    jac = [[-BELL_SIGNS[k][b] * st[b] / 2.0 for b in range(3)] for k in BELL_STATES]
    cov = tuple(tuple(sum(jac[i][b] * jac[j][b] * var[b] for b in range(3)) for j in range(4))
                for i in range(4))
    clipped = any(x < 0.0 for x in raw)
    weights = list(raw)
    if clipped:
        def lam(q: Sequence[float]) -> list[float]:
            return [(1.0 + sum(BELL_SIGNS[k][b] * st[b] * (1.0 - 2.0 * q[b]) for b in range(3)))
                    / 4.0 for k in BELL_STATES]
        fit = lam(_fit_physical_qbers([v for v, _ in qs], [e for _, e in qs], lam))
        weights = [max(x, 0.0) for x in fit]
        weights = [x / sum(weights) for x in weights]
    return BellDiagonalEstimate(
        weights=dict(zip(BELL_STATES, weights, strict=True)),
        raw=dict(zip(BELL_STATES, raw, strict=True)),
        sigma={k: math.sqrt(cov[i][i]) for i, k in enumerate(BELL_STATES)},
        covariance=cov, clipped=clipped, source_state=target)


def werner_weights(fidelity: float, source_state: str = "phi+") -> dict[str, float]:
    """Bell-diagonal weights of a Werner state of fidelity F to ``source_state``:
    λ = F for the target, (1 − F)/3 for each other Bell state (visibility V = (4F − 1)/3)."""
    f = float(fidelity)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"fidelity must be in [0, 1], got {fidelity!r}")
    target = _bell(source_state)
    return {k: (f if k == target else (1.0 - f) / 3.0) for k in BELL_STATES}


# ---------------------------------------------------------------------- CHSH

def chsh_from_counts(settings: Sequence[object],
                     accidentals: Sequence[object] | None = None) -> Estimate:
    """CHSH S = |E(a,b) − E(a,b′) + E(a′,b) + E(a′,b′)| from the four settings.

    ``settings``: four correlation Estimates, or the coincidence counts as 4 rows (or 16 numbers)
    of (N++, N−−, N+−, N−+) in the setting order (a,b), (a,b′), (a′,b), (a′,b′). Each E comes from
    :func:`correlation` (σ_E² = (1 − E²)/N without accidentals; ``accidentals`` in the same shape
    are subtracted there); the four settings are disjoint counts, so σ_S = √Σσ_E²
    (Clauser, Horne, Shimony, Holt, PRL 23, 880 (1969)). For a Werner state at the optimal angles
    S = 2√2·V.
    """
    items = list(settings)
    if len(items) == 4 and all(hasattr(x, "value") and hasattr(x, "sigma") for x in items):
        if accidentals is not None:
            raise ValueError("accidentals apply to counts, not to correlation Estimates")
        return chsh(*items)  # type: ignore[arg-type]

    def rows(name: str, data: Sequence[Any]) -> list[list[float]]:
        flat: list[float] = []
        for x in data:
            if isinstance(x, (list, tuple)) or hasattr(x, "__len__"):
                flat.extend(float(y) for y in x)
            else:
                flat.append(float(x))
        if len(flat) != 16:
            raise ValueError(f"{name} must be 4 correlation Estimates or 16 counts "
                             f"(4 settings × N++, N--, N+-, N-+), got {len(flat)} numbers")
        return [flat[4 * i: 4 * i + 4] for i in range(4)]

    n = rows("settings", items)
    acc: list[list[float]] | list[None] = (rows("accidentals", list(accidentals))
                                            if accidentals is not None else [None] * 4)
    e = [correlation(n[i][0], n[i][1], n[i][2], n[i][3], accidentals=acc[i]) for i in range(4)]
    return chsh(*e)


def chsh_max_from_qber(*, q_x: QLike, q_z: QLike, q_y: QLike | None = None) -> Estimate:
    """Maximal CHSH value of the state, S_max = 2·√(t₁² + t₂²) (Horodecki, Horodecki, Horodecki,
    Phys. Lett. A 200, 340 (1995)), t₁ ≥ t₂ the two largest singular values of the correlation
    matrix T. For a Bell-diagonal state T is diagonal with |T_bb| = |1 − 2Q_b|.

    With only Q_Z and Q_X, those two are used (a lower bound on S_max if Y were larger). σ from
    σ_t = 2σ_Q: σ_S = 2·√(t₁²σ₁² + t₂²σ₂²)/√(t₁² + t₂²). Werner: S_max = 2√2·V, V = 1 − 2Q.
    """
    given = [("q_x", q_x), ("q_z", q_z)] + ([("q_y", q_y)] if q_y is not None else [])
    ts = sorted(((abs(1.0 - 2.0 * q), 2.0 * s) for q, s in
                 (_qber_value(n, x) for n, x in given)), reverse=True)[:2]
    (t1, s1), (t2, s2) = ts
    norm = math.hypot(t1, t2)
    if norm == 0.0:
        return Estimate(0.0, 2.0 * math.hypot(s1, s2))
    return Estimate(2.0 * norm, 2.0 * math.hypot(t1 * s1, t2 * s2) / norm)


# ---------------------------------------------------------------------- BBM92 key

def binary_entropy(p: float) -> float:
    """Binary entropy h(p) = −p·log2 p − (1 − p)·log2(1 − p) (bits), h(0) = h(1) = 0."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    if p in (0.0, 1.0):
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def _dh(p: float, sigma: float) -> float:
    """h′(p)·σ = log2((1 − p)/p)·σ, 0 when σ = 0 (h′ diverges at p = 0, 1)."""
    if sigma == 0.0:
        return 0.0
    if p <= 0.0 or p >= 1.0:
        return math.inf
    return math.log2((1.0 - p) / p) * sigma


def sifted_key_rate(coincidences: float, duration_s: float, sifting: float = 0.5) -> Estimate:
    """Sifted key rate R_sift = q·C/T (bits/s) from C coincidences (all bases) in T seconds.

    q is the sifting factor: ½ for BBM92 (Bennett, Brassard, Mermin, PRL 68, 557 (1992)) with
    passive, balanced basis choice, 1 if C already counts only matching-basis coincidences.
    Poisson: σ = q·√C/T.
    """
    c = _count("coincidences", coincidences)
    if not duration_s > 0 or not 0.0 < sifting <= 1.0:
        raise ValueError(f"duration_s must be > 0 and sifting in (0, 1], got {duration_s!r}, "
                         f"{sifting!r}")
    return Estimate(sifting * c / duration_s, sifting * math.sqrt(c) / duration_s)


def secret_fraction(q_z: QLike, q_x: QLike, *, f: float = DEFAULT_EC_INEFFICIENCY) -> Estimate:
    """Asymptotic BBM92 secret fraction r = 1 − f·h(Q_Z) − h(Q_X) (bits per sifted bit).

    Key from the Z basis, Q_X bounds the phase error (Shor & Preskill, PRL 85, 441 (2000);
    entanglement-based: Ma, Fung, Lo, PRA 76, 012307 (2007)). f is the
    error-correction inefficiency (:data:`DEFAULT_EC_INEFFICIENCY` = 1.16). The value is not
    clipped: r ≤ 0 means no key. σ_r² = (f·h′(Q_Z)σ_Z)² + (h′(Q_X)σ_X)², h′(p) = log2((1−p)/p).
    Symmetric case f = 1, Q_Z = Q_X = Q: r = 1 − 2h(Q), zero at Q = 11.00 %
    (:func:`symmetric_qber_threshold`).
    """
    (z, sz), (x, sx) = _qber_value("q_z", q_z), _qber_value("q_x", q_x)
    if not f >= 1.0:
        raise ValueError(f"f must be >= 1 (Shannon limit), got {f!r}")
    r = 1.0 - f * binary_entropy(z) - binary_entropy(x)
    return Estimate(r, math.hypot(f * _dh(z, sz), _dh(x, sx)))


def secret_key_rate(coincidences: float, duration_s: float, q_z: QLike, q_x: QLike, *,
                    sifting: float = 0.5, f: float = DEFAULT_EC_INEFFICIENCY) -> Estimate:
    """Asymptotic BBM92 secret key rate R = q·(C/T)·[1 − f·h(Q_Z) − h(Q_X)] (bits/s; the
    secret fraction of :func:`secret_fraction`).

    C counts all coincidences in T seconds (see :func:`sifted_key_rate` for q). The QBERs are
    ratios within the counts, independent of the Poisson total, so
    σ_R² = (q·r/T)²·C + (q·C/T)²·σ_r². Not clipped: a negative value means no key (display
    max(R, 0)); keeping the sign keeps the estimate unbiased.
    """
    rs = sifted_key_rate(coincidences, duration_s, sifting)
    r = secret_fraction(q_z, q_x, f=f)
    return Estimate(rs.value * r.value, math.hypot(r.value * rs.sigma, rs.value * r.sigma))


def symmetric_qber_threshold(f: float = 1.0) -> float:
    """The QBER Q* at which 1 − (1 + f)·h(Q) = 0 with Q_Z = Q_X (bisection on [0, ½] to 1e-15).

    f = 1: Q* = 0.110028 (the BB84/BBM92 Shor–Preskill threshold, 11.0 %);
    f = 1.16 (default EC): Q* = 0.0981.
    """
    if not f >= 1.0:
        raise ValueError(f"f must be >= 1, got {f!r}")
    lo, hi = 0.0, 0.5
    while hi - lo > 1e-15:
        mid = 0.5 * (lo + hi)
        if 1.0 - (1.0 + f) * binary_entropy(mid) > 0.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------- link capacity

def _weights(lam: BellDiagonalEstimate | Mapping[str, float] | Sequence[float]
             ) -> tuple[list[float], tuple[tuple[float, ...], ...] | None]:
    if isinstance(lam, BellDiagonalEstimate):
        return [lam.weights[k] for k in BELL_STATES], lam.covariance
    if isinstance(lam, Mapping):
        unknown = set(lam) - set(BELL_STATES)
        if unknown:
            raise ValueError(f"unknown Bell states {sorted(unknown)}; use {list(BELL_STATES)}")
        w = [float(lam.get(k, 0.0)) for k in BELL_STATES]
    else:
        w = [float(x) for x in lam]
        if len(w) != 4:
            raise ValueError(f"λ must have 4 weights {list(BELL_STATES)}, got {len(w)}")
    if any(not math.isfinite(x) or x < 0 for x in w) or not math.isclose(sum(w), 1.0,
                                                                        abs_tol=1e-9):
        raise ValueError(f"λ must be a probability distribution, got {w}")
    return w, None


def _entropy_estimate(lam: BellDiagonalEstimate | Mapping[str, float] | Sequence[float]
                      ) -> Estimate:
    """Shannon entropy H(λ) (bits) with σ² = gᵀ·Cov·g, g_k = −log2 λ_k (the −1/ln2 part of ∂H
    cancels because Σλ = 1). Weights at 0 (clipped) are held fixed: the delta method is not
    reliable there."""
    w, cov = _weights(lam)
    h = -sum(x * math.log2(x) for x in w if x > 0.0)
    if cov is None:
        return Estimate(h, 0.0)
    g = [-math.log2(x) if x > 0.0 else 0.0 for x in w]
    var = sum(g[i] * cov[i][j] * g[j] for i in range(4) for j in range(4))
    return Estimate(h, math.sqrt(max(var, 0.0)))


def hashing_yield(lam: BellDiagonalEstimate | Mapping[str, float] | Sequence[float]) -> Estimate:
    """Hashing yield D_H = 1 − H(λ) (ebits per pair; Bennett, DiVincenzo, Smolin, Wootters, PRA
    54, 3824 (1996)), the coherent information 1 − S(ρ) of a Bell-diagonal state.

    Not clipped: D_H ≤ 0 means one-way hashing distils nothing. Werner: D_H > 0 iff F > 0.8107.
    ``lam``: a :class:`BellDiagonalEstimate` (σ propagated from its covariance) or plain weights
    (σ = 0).
    """
    h = _entropy_estimate(lam)
    return Estimate(1.0 - h.value, h.sigma)


def dense_coding_capacity(lam: BellDiagonalEstimate | Mapping[str, float] | Sequence[float], *,
                          bounded: bool = False) -> Estimate:
    """Dense-coding capacity of a Bell-diagonal pair over a noiseless qubit channel (bits per
    qubit sent): C_DC = log2 d_A + S(ρ_B) − S(ρ_AB) = 2 − H(λ) (Bowen, PRA 63,
    022302 (2001); Hiroshima, J. Phys. A 34, 6907 (2001)), since S(ρ_B) = 1 for Bell-diagonal ρ.

    By default the value is 2 − H(λ) itself (unclamped, as ``daemon.bell_diagonal``'s
    ``dense_coding_capacity``). ``bounded=True`` gives the capacity of dense coding used only when
    it helps, max(1, 2 − H(λ)), because one bit per qubit needs no entanglement; then σ = 0 when the
    bound is active. For Werner 2 − H equals the entanglement-assisted capacity C_E(F) of the
    depolarising channel (Bennett, Shor, Smolin, Thapliyal) and exceeds 1 iff F > 0.8107. A
    linear-optics BSM decoder reaches at most log2 3 bits; that limit is not applied here.
    """
    h = _entropy_estimate(lam)
    c = 2.0 - h.value
    if bounded and c <= 1.0:
        return Estimate(1.0, 0.0)
    return Estimate(c, h.sigma)
