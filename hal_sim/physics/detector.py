"""Single-photon detector model: efficiency, dark counts, dead time, Gaussian timing jitter."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .. import _validate as v

JITTER_CLIP_SIGMAS = 8.0
"""Timing jitter is a Gaussian clipped at ±8σ (the tail beyond carries ~1e-15 of the mass). The
clip bounds how far a tag can move, which is what lets the stream finalise tags slice by slice."""


@dataclass(frozen=True)
class Detector:
    """One detector on one time-tagger input.

    * ``channel``: the time-tagger input number (int32) its clicks are tagged on.
    * ``efficiency``: probability that an arriving photon clicks (0..1).
    * ``dark_count_rate_hz``: Poisson rate of dark clicks (Hz).
    * ``dead_time_ps``: non-paralysable dead time after each registered click (ps).
    * ``jitter_ps``: standard deviation σ of the Gaussian timing jitter (ps), clipped at
      ±:data:`JITTER_CLIP_SIGMAS` σ.
    * ``delay_ps``: fixed extra delay (cable, electronics) added to every photon click (ps).
    """

    channel: int
    efficiency: float = 0.8
    dark_count_rate_hz: float = 100.0
    dead_time_ps: int = 20_000
    jitter_ps: float = 30.0
    delay_ps: int = 0

    def __post_init__(self) -> None:
        v.integer("Detector", "channel", self.channel, -2**31)
        v.probability("Detector", "efficiency", self.efficiency)
        v.non_negative("Detector", "dark_count_rate_hz", self.dark_count_rate_hz)
        v.integer("Detector", "dead_time_ps", self.dead_time_ps, 0)
        v.non_negative("Detector", "jitter_ps", self.jitter_ps)
        v.integer("Detector", "delay_ps", self.delay_ps)

    @property
    def jitter_clip_ps(self) -> int:
        """Largest timing displacement jitter can cause (ps), ceil(8σ)."""
        return int(math.ceil(JITTER_CLIP_SIGMAS * self.jitter_ps))
