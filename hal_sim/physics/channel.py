"""One detector channel of a simulated link at run time, shared by both link simulators.

:class:`DetectorChannel` holds a detector's pending tags (true times, ps, and pair ids), its
dead-time chain and its random streams; :meth:`DetectorChannel.finalize` turns the tags before a
horizon into registered clicks (delay, clipped Gaussian jitter, dark counts, dead time) through
:func:`qnode.native.detector_finalize`. Dark counts carry the pair id :data:`DARK_ID`.
"""
from __future__ import annotations

import numpy as np

from qnode.native import SimRandom, detector_finalize

from .detector import Detector

#: Pair id of a dark count (pair ids of photons are >= 0).
DARK_ID = -2
_FAR_PAST = -(2**62)
_NO_TAGS = np.zeros(0, np.int64)


class DetectorChannel:
    """Runtime state of one detector: pending tags, dead-time chain, its random streams."""

    def __init__(self, node: str, detector: Detector, fibre_delay_ps: int,
                 jitter_rng: SimRandom, dark_rng: np.random.Generator):
        self.node = node
        self.detector = detector
        self.channel = detector.channel
        self.delay_ps = fibre_delay_ps + detector.delay_ps
        self.clip_ps = detector.jitter_clip_ps
        self.sigma = float(detector.jitter_ps)
        self.jitter_rng = jitter_rng
        self.dark_rng = dark_rng
        self.pending_t = _NO_TAGS
        self.pending_id = _NO_TAGS
        self.new_t = _NO_TAGS
        self.new_id = _NO_TAGS
        self.last_click = _FAR_PAST

    def add_photons(self, emission_ps: np.ndarray, ids: np.ndarray) -> None:
        """Queue this slice's photons (sorted emission times, ps, with their pair ids); delay and
        jitter come at :meth:`finalize`."""
        self.new_t, self.new_id = emission_ps, ids

    def finalize(self, h_prev: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Registered tags with true time in [.., h): (times, ids), sorted; keeps the rest pending.

        The slice's photons arrive as sorted emission times; delay and jitter leave them nearly
        sorted (disorder within 2 x the jitter clip), and pending tags overlap them only in that
        window, so :func:`qnode.native.detector_finalize` sorts them with one insertion pass.
        """
        new_t, new_id = self.new_t, self.new_id
        self.new_t = self.new_id = _NO_TAGS
        n_dark = int(self.dark_rng.poisson(self.detector.dark_count_rate_hz * (h - h_prev) * 1e-12))
        dark = (np.sort(self.dark_rng.integers(h_prev, h, n_dark, dtype=np.int64)) if n_dark
                else _NO_TAGS)
        t, ids, self.pending_t, self.pending_id, self.last_click = detector_finalize(
            (self.pending_t, self.pending_id), (new_t, new_id), self.jitter_rng, self.sigma,
            self.delay_ps, self.clip_ps, dark, DARK_ID, h, self.detector.dead_time_ps,
            self.last_click)
        return t, ids
