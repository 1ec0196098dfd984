"""SPDC pair sources: CW (Poisson process of pairs) and pulsed (Poisson or thermal pairs per pulse).

A source emits pairs in an emission-time slice [t0, t1) (int64 ps). Each pair falls into one of a
set of outcome classes (which detector, if any, each photon reaches) with given probabilities; the
last class is 'lost on both sides'. The source is told the probability that a pair is kept (not
lost on both sides) and returns the *sorted* emission times of the kept pairs and the total
number of pairs emitted: lost pairs are only counted, never generated. The simulator then gives
each kept pair its class. Both photons of a pair are emitted at the
same time (the ~ps biphoton correlation time is below any detector's jitter).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from qnode.native import SimRandom

from .. import _validate as v

_EMPTY = np.zeros(0, np.int64)


def bernoulli_positions(rng: np.random.Generator, n: int, q: float) -> np.ndarray:
    """Sorted indices in [0, n) of successes of n Bernoulli(q) trials, drawn as geometric gaps
    (cost proportional to the number of successes, not n)."""
    if n <= 0 or q <= 0.0:
        return _EMPTY
    if q >= 1.0:
        return np.arange(n, dtype=np.int64)
    parts = []
    last = -1
    while True:
        m = int(n * q + 6.0 * np.sqrt(n * q) + 16)
        pos = last + np.cumsum(rng.geometric(q, m).astype(np.int64))
        parts.append(pos)
        last = int(pos[-1])
        if last >= n:
            break
    pos = np.concatenate(parts)
    return pos[: np.searchsorted(pos, n)]


class PairSource(Protocol):
    """What the stream needs from a source."""

    def emit(self, rng: np.random.Generator, stream: SimRandom, t0_ps: int, t1_ps: int,
             keep_probability: float) -> tuple[np.ndarray, int]:
        """Pairs emitted in [t0, t1), each kept independently with ``keep_probability``: the
        sorted emission times (int64 ps) of the kept pairs, and the number of pairs emitted.
        ``rng`` draws counts, ``stream`` (C kernels) the sorted times."""
        ...

    def mean_pairs(self, duration_ps: int) -> float:
        """Expected pairs emitted in ``duration_ps``."""
        ...


@dataclass(frozen=True)
class CWSource:
    """Continuous-wave SPDC: pairs form a Poisson process of rate ``pair_rate_hz`` (pairs/s, the
    brightness B at the crystal)."""

    pair_rate_hz: float

    def __post_init__(self) -> None:
        v.non_negative("CWSource", "pair_rate_hz", self.pair_rate_hz)

    def mean_pairs(self, duration_ps: int) -> float:
        return self.pair_rate_hz * duration_ps * 1e-12

    def emit(self, rng, stream, t0_ps, t1_ps, keep_probability):
        # A thinned Poisson process: kept pairs form a Poisson process of rate B*p_keep, lost
        # ones an independent one of rate B*(1 - p_keep), which is only counted.
        mean = self.mean_pairs(t1_ps - t0_ps)
        n_kept = int(rng.poisson(mean * keep_probability))
        n_lost = int(rng.poisson(mean * (1.0 - keep_probability)))
        return stream.sorted_uniform(n_kept, t0_ps, t1_ps), n_kept + n_lost


@dataclass(frozen=True)
class PulsedSource:
    """Pulsed SPDC: pump pulses at ``rep_rate_hz`` (pulse k at ``phase_ps`` + k·period_ps, with
    period_ps = round(1e12/rep_rate_hz)), each carrying n pairs with mean
    ``mean_pairs_per_pulse`` μ:

    * ``statistics="poisson"``: P(n) = e^−μ μⁿ/n! (many modes, the usual multimode SPDC limit);
    * ``statistics="thermal"``: P(n) = μⁿ/(1+μ)ⁿ⁺¹ (single spectral/temporal mode).

    A pulse with several pairs emits them all at the pulse time, each pair independently analysed.
    """

    rep_rate_hz: float
    mean_pairs_per_pulse: float
    statistics: Literal["poisson", "thermal"] = "poisson"
    phase_ps: int = 0

    def __post_init__(self) -> None:
        v.positive("PulsedSource", "rep_rate_hz", self.rep_rate_hz)
        if self.rep_rate_hz > 1e12:
            raise ValueError(f"PulsedSource.rep_rate_hz must be <= 1e12 (1 ps period), "
                             f"got {self.rep_rate_hz!r}")
        v.non_negative("PulsedSource", "mean_pairs_per_pulse", self.mean_pairs_per_pulse)
        if self.statistics not in ("poisson", "thermal"):
            raise ValueError(f"PulsedSource.statistics must be 'poisson' or 'thermal', "
                             f"got {self.statistics!r}")
        v.integer("PulsedSource", "phase_ps", self.phase_ps)

    @property
    def period_ps(self) -> int:
        """Pulse period (ps), the rounded 1e12/rep_rate_hz."""
        return max(1, int(round(1e12 / self.rep_rate_hz)))

    def pulse_range(self, t0_ps: int, t1_ps: int) -> tuple[int, int]:
        """Indices [k0, k1) of the pulses emitted in [t0, t1)."""
        p = self.period_ps
        return -((self.phase_ps - t0_ps) // p), -((self.phase_ps - t1_ps) // p)

    def mean_pairs(self, duration_ps: int) -> float:
        return self.mean_pairs_per_pulse * duration_ps / self.period_ps

    def emit(self, rng, stream, t0_ps, t1_ps, keep_probability):
        k0, k1 = self.pulse_range(t0_ps, t1_ps)
        n_pulses = k1 - k0
        p, mu = self.period_ps, self.mean_pairs_per_pulse
        if self.statistics == "poisson":
            # Independent Poisson pair numbers per pulse: kept pairs fall on pulses uniformly.
            n_kept = int(rng.poisson(mu * n_pulses * keep_probability))
            n_lost = int(rng.poisson(mu * n_pulses * (1.0 - keep_probability)))
            k = stream.sorted_uniform(n_kept, 0, n_pulses)
            return self.phase_ps + (k + k0) * p, n_kept + n_lost
        # Thermal: pairs in one pulse are bunched, so draw pulses explicitly. Non-empty pulses
        # (probability μ/(1+μ)) by geometric gaps; given n >= 1, n − 1 is again thermal(μ).
        pulses = bernoulli_positions(rng, n_pulses, mu / (1.0 + mu))
        per_pulse = rng.geometric(1.0 / (1.0 + mu), pulses.size)
        pair_pulse = np.repeat(pulses, per_pulse)
        kept = rng.random(pair_pulse.size) < keep_probability
        return self.phase_ps + (pair_pulse[kept] + k0) * p, int(pair_pulse.size)
