"""Fidelity-estimation unit (FEU) of an M-type link's CW SPDC source: the pump power to run at.

Like the FEU of QuTech's link layer (Dahlberg et al., "A link layer protocol for quantum networks",
SIGCOMM 2019, and its simulation code qlinklayer: the largest bright-state population α with
F(α) ≥ F_min, else ERR_UNSUPP), :meth:`choose_power` picks the **highest pump power, hence the
highest rate, whose predicted fidelity meets a CREATE's minimum**, or None (→ ERR UNSUPP) when no
power within the pump's limits does.

Model (continuous-wave SPDC, after Neumann et al., PRA 104, 022406 (2021); the same closed forms
hal_sim's physics tests check, ``tests/hal_sim/test_hal_sim_physics.py``). With pump power P (mW),
brightness b (pairs/s per mW), per-side detection efficiencies η_a, η_b (fibre, optics and
detectors: the probability that the side's photon of a pair is registered on any of the side's
detectors) and background rates D_a, D_b (Hz, dark counts and stray light summed over the side's
detectors):

* pair rate            B = b·P                                   (pairs/s)
* singles              S_i = B·η_i + D_i                         (Hz, summed over the side)
* true coincidences    C = B·η_a·η_b                             (Hz)
* accidentals          A = S_a·S_b·τ                             (Hz; τ = full window, s)
* delivered rate       R = C + A  (every counted coincidence is delivered: they cannot be told
  apart)
* the delivered pair is the source's Werner state (visibility V0) with probability
  p = C/(C + A), otherwise two photons of different pairs (white noise, I/4): a Werner state
  of visibility V = V0·C/(C + A), fidelity to the source's Bell state F = (1 + 3V)/4.

The window: the native core counts a coincidence when |Δt| ≤ w on integer picoseconds (both
edges included), which admits 2w + 1 values of Δt; for uncorrelated tags each value is equally
likely, so the accidental window is τ = (2w + 1) ps, not 2w (:func:`full_window_ps`; the
accidental rate of two uniform streams is R_a·R_b per integer offset).

A/C = τ·(αP + D_a)(βP + D_b)/(kP) with α = bη_a, β = bη_b, k = bη_aη_b grows linearly with P
at high power (multi-pair accidentals: A/C → τ·B) and as 1/P at low power (dark counts), so F(P)
rises to a maximum at P* = √(D_a·D_b/(α·β)) and falls beyond it. Without background (D = 0) it
is monotone decreasing from F = (1 + 3·V0)/4 at P → 0.

Not modelled (valid while they are small): detector dead time (it thins singles and coincidences
by 1/(1 + λ·t_dead) per detector but cancels in A/C to first order, so the rate is over-predicted
and the fidelity is not), true pairs falling outside the window through jitter (absorbed into η
by :meth:`FidelityEstimationUnit.calibrate`), multi-pair emission beyond the accidental term,
and pulsed sources.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

from qnode.daemon.quantum.estimators import full_window_ps

PS = 1e-12  # seconds per picosecond

__all__ = ["FidelityEstimationUnit", "Prediction", "fidelity_of_visibility",
           "full_window_ps", "visibility_of_fidelity"]


class Prediction(NamedTuple):
    """What the model predicts at one pump power (rates in Hz, dimensionless fractions)."""

    power_mw: float
    singles_a_hz: float
    singles_b_hz: float
    true_hz: float          # C = b·P·η_a·η_b
    accidental_hz: float    # A = S_a·S_b·τ
    rate_hz: float          # C + A: the delivered coincidence rate
    visibility: float       # V = V0·C/(C + A)
    fidelity: float         # F = (1 + 3V)/4


def _finite(name: str, value: float, lo: float, hi: float = math.inf) -> float:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and lo <= value <= hi)
    if not ok:
        raise ValueError(f"FidelityEstimationUnit.{name}: expected a finite number in "
                         f"[{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def fidelity_of_visibility(visibility: float) -> float:
    """Werner fidelity to the Bell state, F = (1 + 3V)/4 (the Werner weight V = (4F − 1)/3)."""
    return (1.0 + 3.0 * visibility) / 4.0


def visibility_of_fidelity(fidelity: float) -> float:
    """Inverse of :func:`fidelity_of_visibility`: V = (4F − 1)/3."""
    return (4.0 * fidelity - 1.0) / 3.0


@dataclasses.dataclass(frozen=True)
class FidelityEstimationUnit:
    """Calibrated model of a CW SPDC source and its two detection sides (module docstring).

    * ``brightness_hz_per_mw``: b, pairs/s generated per mW of pump at the working temperature
      (> 0).
    * ``efficiency_a``, ``efficiency_b``: η_a, η_b in (0, 1], per side, including fibre.
    * ``window_ps``: τ, the **full** width of the coincidence window (ps). The native core's
      half-width w counts |Δt| ≤ w on integer picoseconds, both edges included: 2w + 1 offsets,
      so τ = 2w + 1 ps (:func:`full_window_ps`; 2w would under-predict the accidentals by
      1/(2w + 1), −20 % at w = 2 ps).
    * ``visibility``: V0 in [0, 1], the Werner visibility of the source's pairs (without
      accidentals).
    * ``max_power_mw``: the highest pump power allowed (mW); ``min_power_mw`` the lowest (≥ 0).
    * ``dark_a_hz``, ``dark_b_hz``: D_a, D_b ≥ 0, background clicks/s per side.
    """

    brightness_hz_per_mw: float
    efficiency_a: float
    efficiency_b: float
    window_ps: float
    visibility: float
    max_power_mw: float
    min_power_mw: float = 0.0
    dark_a_hz: float = 0.0
    dark_b_hz: float = 0.0

    def __post_init__(self) -> None:
        _finite("brightness_hz_per_mw", self.brightness_hz_per_mw, 0.0)
        if self.brightness_hz_per_mw <= 0:
            raise ValueError("FidelityEstimationUnit.brightness_hz_per_mw: expected > 0, got "
                             f"{self.brightness_hz_per_mw!r}")
        for name in ("efficiency_a", "efficiency_b"):
            if _finite(name, getattr(self, name), 0.0, 1.0) <= 0:
                raise ValueError(f"FidelityEstimationUnit.{name}: expected > 0, got 0")
        if _finite("window_ps", self.window_ps, 0.0) <= 0:
            raise ValueError("FidelityEstimationUnit.window_ps: expected > 0, got 0")
        _finite("visibility", self.visibility, 0.0, 1.0)
        _finite("min_power_mw", self.min_power_mw, 0.0)
        _finite("max_power_mw", self.max_power_mw, self.min_power_mw)
        _finite("dark_a_hz", self.dark_a_hz, 0.0)
        _finite("dark_b_hz", self.dark_b_hz, 0.0)

    # ------------------------------------------------------------------ the model

    @property
    def tau_s(self) -> float:
        """The full coincidence window τ in seconds."""
        return self.window_ps * PS

    @property
    def fidelity_limit(self) -> float:
        """F without any accidentals, (1 + 3·V0)/4: no power reaches more."""
        return fidelity_of_visibility(self.visibility)

    def detail(self, power_mw: float) -> Prediction:
        """Singles, true and accidental coincidence rates (Hz), V and F at ``power_mw`` (mW)."""
        p = _finite("power_mw", power_mw, 0.0)
        pairs = self.brightness_hz_per_mw * p
        s_a = pairs * self.efficiency_a + self.dark_a_hz
        s_b = pairs * self.efficiency_b + self.dark_b_hz
        true = pairs * self.efficiency_a * self.efficiency_b
        acc = s_a * s_b * self.tau_s
        total = true + acc
        # P → 0 without background: A/C → 0, the pairs are the source's own
        frac = true / total if total > 0 else 1.0
        vis = self.visibility * frac
        return Prediction(p, s_a, s_b, true, acc, total, vis, fidelity_of_visibility(vis))

    def predict(self, power_mw: float) -> tuple[float, float]:
        """(delivered coincidence rate C + A in Hz, fidelity F) at pump power ``power_mw`` (mW)."""
        d = self.detail(power_mw)
        return d.rate_hz, d.fidelity

    def best_power_mw(self) -> float:
        """The power of highest fidelity within the limits (mW): P* = √(D_a·D_b/(α·β)) clipped
        to [min_power_mw, max_power_mw]; P* = 0 without background on a side."""
        alpha = self.brightness_hz_per_mw * self.efficiency_a
        beta = self.brightness_hz_per_mw * self.efficiency_b
        p_star = math.sqrt(self.dark_a_hz * self.dark_b_hz / (alpha * beta))
        return min(max(p_star, self.min_power_mw), self.max_power_mw)

    def max_fidelity(self) -> float:
        """The best fidelity the source can deliver within its power limits (the EGP FEU's
        ``get_max_fidelity``): F at :meth:`best_power_mw`."""
        return self.detail(self.best_power_mw()).fidelity

    def choose_power(self, min_fidelity: float) -> float | None:
        """The highest pump power (mW) within [min_power_mw, max_power_mw] whose predicted
        fidelity is ≥ ``min_fidelity``, or None when no power reaches it (→ ERR UNSUPP).

        Closed form, not bisection: F ≥ F_min ⇔ V0·C/(C + A) ≥ V_min = (4F_min − 1)/3 ⇔
        A ≤ r·C with r = V0/V_min − 1, i.e. the quadratic

            τ·α·β·P² + (τ·(α·D_b + β·D_a) − r·k)·P + τ·D_a·D_b ≤ 0,

        whose solution set is the interval between its two positive roots [P_lo, P_hi] (empty
        when the discriminant is negative). The answer is min(P_hi, max_power_mw) if that is
        ≥ max(P_lo, min_power_mw). The quadratic is exact and costs O(1) with no tolerance or
        iteration count, and it handles the low-power, dark-count-limited branch (F rising with
        P up to P*) explicitly; bisection would first need the monotone bracket [P*, P_max]
        and would only approach the root to a tolerance. The roots are taken in the
        cancellation-free form q = (−b + √disc)/2, P_hi = q/a, P_lo = c/q.
        """
        f_min = _finite("min_fidelity", min_fidelity, 0.0, 1.0)
        v_min = visibility_of_fidelity(f_min)
        if v_min <= 0:  # F ≥ 1/4 always holds: any power does
            return self.max_power_mw if self.max_power_mw > 0 else None
        if v_min > self.visibility:
            return None
        r = self.visibility / v_min - 1.0
        alpha = self.brightness_hz_per_mw * self.efficiency_a
        beta = self.brightness_hz_per_mw * self.efficiency_b
        k = alpha * self.efficiency_b
        tau = self.tau_s
        a = tau * alpha * beta
        b = tau * (alpha * self.dark_b_hz + beta * self.dark_a_hz) - r * k
        c = tau * self.dark_a_hz * self.dark_b_hz
        disc = b * b - 4.0 * a * c
        if b >= 0 or disc < 0:
            return None
        q = (-b + math.sqrt(disc)) / 2.0
        p_hi, p_lo = q / a, c / q
        power = min(p_hi, self.max_power_mw)
        if power <= 0 or power < max(p_lo, self.min_power_mw):
            return None
        return power

    # ------------------------------------------------------------------ calibration

    @classmethod
    def calibrate(cls, *, power_mw: float, singles_a_hz: float, singles_b_hz: float,
                  coincidences_hz: float, accidentals_hz: float, visibility: float,
                  window_ps: float, max_power_mw: float, min_power_mw: float = 0.0,
                  dark_a_hz: float = 0.0, dark_b_hz: float = 0.0) -> FidelityEstimationUnit:
        """The model from one measurement at a known pump power.

        Inputs (rates in Hz over the same interval): ``singles_a_hz``/``singles_b_hz`` summed
        over each side's detectors; ``coincidences_hz`` all counted coincidences C_m between the
        sides in the window of full width ``window_ps`` (ps, τ = 2w + 1 for the core's
        half-width w: :func:`full_window_ps`); ``accidentals_hz`` the
        same count in a displaced window (the native core's ``accidentals``); ``visibility`` the
        raw visibility of the counted coincidences (accidentals included, e.g. 1 − 2Q in a basis
        of a Werner source); ``dark_a_hz``/``dark_b_hz`` the singles with the pump off.

        * true coincidences C = C_m − A;
        * pair photons registered per side N_i = S_i − D_i;
        * Klyshko efficiencies η_a = C/N_b, η_b = C/N_a (each side's from the other side's
          singles: Klyshko, Sov. J. Quantum Electron. 10, 1112 (1980));
        * pair rate B = N_a·N_b/C, brightness b = B/P;
        * V0 = V_raw·C_m/C: the raw visibility with the accidentals' white noise removed,
          clipped to [0, 1].

        ValueError (naming the argument) when the figures cannot come from this model (no true
        coincidences, singles not above the background, efficiencies above 1).
        """
        p = _finite("power_mw", power_mw, 0.0)
        if p <= 0:
            raise ValueError("calibrate: power_mw must be > 0")
        c_m = _finite("coincidences_hz", coincidences_hz, 0.0)
        acc = _finite("accidentals_hz", accidentals_hz, 0.0)
        true = c_m - acc
        if true <= 0:
            raise ValueError(f"calibrate: coincidences_hz ({c_m:g}) must exceed accidentals_hz "
                             f"({acc:g})")
        n_a = _finite("singles_a_hz", singles_a_hz, 0.0) - _finite("dark_a_hz", dark_a_hz, 0.0)
        n_b = _finite("singles_b_hz", singles_b_hz, 0.0) - _finite("dark_b_hz", dark_b_hz, 0.0)
        for name, n in (("singles_a_hz", n_a), ("singles_b_hz", n_b)):
            if n < true:
                raise ValueError(f"calibrate: {name} above the background ({n:g} Hz) must be at "
                                 f"least the true coincidences ({true:g} Hz)")
        v_raw = _finite("visibility", visibility, -1.0, 1.0)
        return cls(brightness_hz_per_mw=n_a * n_b / true / p,
                   efficiency_a=true / n_b, efficiency_b=true / n_a,
                   window_ps=window_ps,
                   visibility=min(1.0, max(0.0, v_raw * c_m / true)),
                   max_power_mw=max_power_mw, min_power_mw=min_power_mw,
                   dark_a_hz=dark_a_hz, dark_b_hz=dark_b_hz)
