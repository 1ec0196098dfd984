"""The first lock on a peer's clock: from ``align_s`` of both analyzers' tag streams to a
running :class:`~qnode.native.tracking.DriftTracker` (times in ps).

Both cross-node counters use it: the Bell-test counter
(:class:`~qnode.daemon.acquisition.cross_node.CrossNodeCounter`) and the key counter
(:class:`~qnode.daemon.acquisition.key_counter.KeyCounter`). The offset and drift come from the
correlation of both streams (:func:`qnode.native.align.find_offset_and_drift`), started near the
difference of the two streams' least-delayed chunk leads (tag time minus arrival time on this
host), which the network's jitter limits to well inside the correlation's unambiguous range.
"""
from __future__ import annotations

import collections
import logging

import numpy as np

from qnode.native.align import AlignmentError, find_offset_and_drift

__all__ = ["AlignmentError", "ClockAcquisition"]
from qnode.native.tracking import DriftTracker

log = logging.getLogger("qnode.cross_node")

LEAD_LOG_LEN = 64            # chunk arrivals kept per stream for the first offset guess
MIN_TAGS = 100               # per stream, before a correlation is tried


class ClockAcquisition:
    """Finds the peer clock from buffered stretches of both streams.

    ``align_s``: tag time both streams must cover before the correlation is tried (s);
    ``window_ps``: the coincidence window, which sets the tracker's window. :attr:`error` holds
    the last failure (empty once found)."""

    def __init__(self, align_s: float, window_ps: int):
        self.align_ps = int(align_s * 1e12)
        self.window_ps = window_ps
        self.error = ""
        # per chunk: its end time (tagger clock) minus its arrival here (host monotonic clock),
        # both ps; the largest is the chunk that waited least on its way
        self._own_lead: collections.deque[int] = collections.deque(maxlen=LEAD_LOG_LEN)
        self._peer_lead: collections.deque[int] = collections.deque(maxlen=LEAD_LOG_LEN)

    def note_own(self, t_end_ps: int, received_s: float | None) -> None:
        """An own chunk complete up to ``t_end_ps`` arrived at ``received_s`` (host monotonic
        clock, s; None: unknown)."""
        if received_s is not None:
            self._own_lead.append(t_end_ps - round(received_s * 1e12))

    def note_peer(self, t_end_ps: int, received_s: float | None) -> None:
        """As :meth:`note_own`, for a peer chunk (peer clock)."""
        if received_s is not None:
            self._peer_lead.append(t_end_ps - round(received_s * 1e12))

    def offset_hint(self, own_t: np.ndarray, peer_t: np.ndarray) -> int:
        """First guess of the peer clock's offset (peer − own, ps): the difference of the
        streams' least-delayed chunk leads, good to the network's jitter, well inside the
        correlation's unambiguous range (268 ms). Without arrival times, the first tags of both
        streams are taken to be simultaneous."""
        if self._own_lead and self._peer_lead:
            return max(self._peer_lead) - max(self._own_lead)
        return int(peer_t[0]) - int(own_t[0])

    def acquire(self, own_t: np.ndarray, peer_t: np.ndarray) -> DriftTracker | None:
        """The tracker for sorted own and peer times (ps, each its own clock); None while the
        streams do not cover ``align_s`` together yet. :class:`AlignmentError` when the
        correlation failed (logged here; the caller keeps only the newest ``align_s`` and tries
        again with newer data)."""
        if own_t.size < MIN_TAGS or peer_t.size < MIN_TAGS:
            return None
        hint = self.offset_hint(own_t, peer_t)
        overlap = min(int(own_t[-1]), int(peer_t[-1]) - hint) - max(int(own_t[0]),
                                                                   int(peer_t[0]) - hint)
        if overlap < self.align_ps:
            return None
        span = max(self.align_ps // 4, 50_000_000_000)  # ≥ 50 ms per early/late span
        try:
            est = find_offset_and_drift(own_t, peer_t, span_ps=span, offset_hint_ps=hint)
        except AlignmentError as exc:
            self.error = str(exc)
            log.warning("clock alignment failed, retrying with newer data: %s", exc)
            raise
        self.error = ""
        log.info("peer clock found: offset %d ps, drift %.3f ppm (%.0f sigma)", est.offset_ps,
                 est.drift_ppm, est.significance, extra={"offset_ps": est.offset_ps,
                                                         "drift_ppm": est.drift_ppm})
        return DriftTracker(est, tracking_window_ps=max(1000, self.window_ps))
