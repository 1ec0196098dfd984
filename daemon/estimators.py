"""Link-quality estimators: pure functions on counts, each with a Poisson standard error.

Notation (``reference/coincidence_anchors.md`` §6): N_s, N_i singles counts of the two arms, C
coincidences counted in |Δt| ≤ w (full window τ = 2w), A accidentals (counted in a displaced window
of the same width, or expected from singles), T the integration time. Counts are dimensionless;
times are ps unless a name says otherwise. Every function returns an :class:`Estimate` (value,
sigma) with first-order (delta-method) error propagation, treating each count as Poisson
(σ_N = √N) unless stated. Nothing here subtracts accidentals behind your back: the functions that
use A say so.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple


class Estimate(NamedTuple):
    """A value and its one-standard-deviation error (same units as the value)."""

    value: float
    sigma: float

    def within(self, expected: float, n_sigma: float = 3.0) -> bool:
        """True when |value − expected| ≤ n_sigma·sigma."""
        return abs(self.value - expected) <= n_sigma * self.sigma


def _nan() -> Estimate:
    return Estimate(math.nan, math.nan)


def _count(name: str, x: float) -> float:
    if not (isinstance(x, (int, float)) or hasattr(x, "__float__")) or not math.isfinite(float(x)):
        raise ValueError(f"{name} must be a finite count, got {x!r}")
    if float(x) < 0:
        raise ValueError(f"{name} must be >= 0, got {x!r}")
    return float(x)


def expected_accidentals(singles_1: float, singles_2: float, window_ps: float,
                         duration_ps: float) -> Estimate:
    """Expected accidental coincidences of a CW stream, A = R1·R2·τ·T with τ = 2w.

    With R = N/T: A = N1·N2·(2w)/T (counts). ``window_ps`` is the half-width w of |Δt| ≤ w;
    ``duration_ps`` is T. Error from the singles' Poisson errors: (σ_A/A)² = 1/N1 + 1/N2.
    (On an integer-ps grid |Δt| ≤ w spans 2w + 1 values; the 1-ps difference is ignored.)
    """
    n1, n2 = _count("singles_1", singles_1), _count("singles_2", singles_2)
    if window_ps < 0 or duration_ps <= 0:
        raise ValueError(
            f"window_ps must be >= 0 and duration_ps > 0, got {window_ps}, {duration_ps}")
    a = n1 * n2 * 2.0 * window_ps / duration_ps
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
