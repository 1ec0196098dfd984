"""Per-node clock: offset, frequency drift (ppm) and an optional random walk of the frequency.

A node's time tagger stamps a click at true time t (ps) as

    t_node = t + offset_ps + φ(t),   φ(t) = ∫₀ᵗ f(t′) dt′,   f = drift_ppm·1e−6 (+ random walk)

kept in int64 ps. With no random walk φ(t) = drift_ppm·1e−6·t. The random walk changes f by a
Gaussian step of ``frequency_walk_ppm_per_sqrt_s``·√(step) every ``walk_step_ps``, on a fixed time
grid, so the clock does not depend on how the stream is sliced.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import _validate as v


@dataclass(frozen=True)
class Clock:
    """Configuration of a node's clock (see module docstring): ``offset_ps`` (ps), ``drift_ppm``
    (fractional frequency error in ppm, > 0 runs fast), ``frequency_walk_ppm_per_sqrt_s`` (random
    walk of the frequency, ppm/√s) updated every ``walk_step_ps`` (ps)."""

    offset_ps: int = 0
    drift_ppm: float = 0.0
    frequency_walk_ppm_per_sqrt_s: float = 0.0
    walk_step_ps: int = 1_000_000_000

    def __post_init__(self) -> None:
        v.integer("Clock", "offset_ps", self.offset_ps)
        d = v.finite("Clock", "drift_ppm", self.drift_ppm)
        if abs(d) >= 1e5:
            raise ValueError(f"Clock.drift_ppm must be within ±1e5 ppm, got {self.drift_ppm!r}")
        v.non_negative("Clock", "frequency_walk_ppm_per_sqrt_s", self.frequency_walk_ppm_per_sqrt_s)
        v.integer("Clock", "walk_step_ps", self.walk_step_ps, 1)


class ClockModel:
    """The running clock of one node: maps sorted true times (int64 ps) to node times.

    Calls must come in non-decreasing time order across calls (the stream's order); within a call
    any order is accepted. The map is non-decreasing, so sorted input stays sorted.
    """

    def __init__(self, clock: Clock, rng: np.random.Generator):
        self.clock = clock
        self._rng = rng
        self._offset = int(clock.offset_ps)
        self._f0 = clock.drift_ppm * 1e-6
        self._step = int(clock.walk_step_ps)
        self._walk = clock.frequency_walk_ppm_per_sqrt_s * 1e-6 * math.sqrt(self._step * 1e-12)
        self._seg0 = 0                       # index of the first stored grid segment
        self._freq = np.array([self._f0])    # fractional frequency per stored segment
        self._phase = np.array([0.0])        # φ at the start of each stored segment (ps)

    def _extend(self, last_segment: int) -> None:
        have = self._seg0 + self._freq.size - 1
        if last_segment <= have:
            return
        n = last_segment - have
        freq = self._freq[-1] + np.cumsum(self._rng.standard_normal(n) * self._walk)
        f_all = np.concatenate([self._freq, freq])
        phase = self._phase[-1] + np.cumsum(f_all[-n - 1:-1] * self._step)
        self._freq = f_all
        self._phase = np.concatenate([self._phase, phase])

    def correction_ps(self, t_ps: np.ndarray) -> np.ndarray:
        """φ(t) rounded to int64 ps."""
        t = np.asarray(t_ps, np.int64)
        if self._walk == 0.0:
            if self._f0 == 0.0:
                return np.zeros(t.shape, np.int64)
            return np.rint(t.astype(np.float64) * self._f0).astype(np.int64)
        if t.size == 0:
            return np.zeros(0, np.int64)
        seg = np.maximum(t // self._step, 0)
        self._extend(int(seg.max()))
        idx = seg - self._seg0
        if idx.min() < 0:
            raise ValueError("ClockModel: times went back beyond the pruned history")
        frac = (t - seg * self._step).astype(np.float64)
        return np.rint(self._phase[idx] + self._freq[idx] * frac).astype(np.int64)

    def to_node_time(self, t_ps: np.ndarray) -> np.ndarray:
        """Node (tagger) time of true times ``t_ps`` (int64 ps)."""
        t = np.asarray(t_ps, np.int64)
        if self._walk == 0.0 and self._f0 == 0.0:
            return t + self._offset if self._offset else t.copy()
        out = t + self.correction_ps(t)
        if self._offset:
            out += self._offset
        return out

    def frequency_at(self, t_ps: int) -> float:
        """Fractional frequency error f at true time t (dimensionless; ×1e6 for ppm)."""
        if self._walk == 0.0:
            return self._f0
        seg = max(int(t_ps) // self._step, 0)
        self._extend(seg)
        return float(self._freq[seg - self._seg0])

    def offset_at(self, t_ps: int) -> int:
        """t_node − t at true time t (ps): offset + φ(t)."""
        return self._offset + int(self.correction_ps(np.array([int(t_ps)], np.int64))[0])

    def prune(self, before_ps: int) -> None:
        """Forget grid segments that end before ``before_ps`` (bounded memory)."""
        if self._walk == 0.0:
            return
        seg = max(int(before_ps) // self._step, 0)
        drop = min(seg - self._seg0, self._freq.size - 1)
        if drop > 0:
            self._freq = self._freq[drop:]
            self._phase = self._phase[drop:]
            self._seg0 += drop
