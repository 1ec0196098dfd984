"""Front-ends of the coincidence core, written once over a backend's engines.

``qnode.native`` binds them to the C engines (``core.py``); ``qnode.native.reference`` binds them to
the numpy engines. Semantics (both backends):

* Delays: a tag on channel c at time t is treated as occurring at t + delay[c] (ps, may be < 0).
* 2-fold: every pair (tag on a, tag on b) with |dt| <= w, dt = (t_b + d_b) - (t_a + d_a), both edges
  inclusive, counts once: all pairs, not just nearest neighbours.
* Accidentals: the same count in the displaced window |dt - offset| <= w.
* Correlation: every pair with dt in [lower_edge, lower_edge + n_bins*bin_width) lands in bin
  floor((dt - lower_edge) / bin_width).
* Only TIME_TAG records count; overflow/missed/error records are tallied in ``stats``.
* Results depend only on the stream, never on how it is split into chunks.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np

from . import _spec
from ._spec import NFoldResult, PairCounts, StreamStats
from .tags import TAG_DTYPE, TagBlock, check_block


class PairEngine(Protocol):
    def process(self, block: TagBlock) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return this chunk's (counts per spec, concatenated histograms, singles)."""

    def stats(self) -> StreamStats: ...


class NFoldEngine(Protocol):
    def process(self, block: TagBlock) -> NFoldResult: ...
    def flush(self) -> NFoldResult: ...
    def stats(self) -> StreamStats: ...


def _checked(block: TagBlock) -> TagBlock:
    """Cheap layout checks on the hot path; ordering is checked by the engine as it streams."""
    if not (isinstance(block, np.ndarray) and block.dtype == TAG_DTYPE and block.ndim == 1
            and block.flags.c_contiguous):
        check_block(block)  # raises with the precise reason
    return block


class Coincidences:
    """Exact streaming 2-fold coincidence counter for many channel pairs at once.

    ``pairs``: (a, b) channel numbers. ``window_ps``: w, counting |dt| <= w on integer ps
    (2w + 1 values: full width 2w + 1 ps).
    ``delays_ps``: per-channel delay added to each tag's time. ``accidental_offset_ps``: also count
    accidentals in |dt - offset| <= w (|offset| must exceed 2w). ``channels``: channels to keep
    singles for (default: those in ``pairs``).
    """

    def __init__(self, pairs: Sequence[tuple[int, int]], window_ps: int, *,
                 delays_ps: Mapping[int, int] | None = None,
                 accidental_offset_ps: int | None = None,
                 channels: Iterable[int] | None = None):
        setup = _spec.coincidence_setup(pairs, window_ps, channels, delays_ps, accidental_offset_ps)
        self.pairs = [tuple(p) for p in pairs]
        self.channels = setup.channels
        self.window_ps = int(window_ps)
        self.accidental_offset_ps = accidental_offset_ps
        self._n = len(self.pairs)
        self._engine = self._make_engine(setup)
        self.totals = self._empty()

    def _make_engine(self, setup: _spec.PairSetup) -> PairEngine:
        raise NotImplementedError

    def _empty(self) -> PairCounts:
        return PairCounts(np.zeros(self._n, np.int64),
                          (None if self.accidental_offset_ps is None
                           else np.zeros(self._n, np.int64)),
                          np.zeros(len(self.channels), np.int64))

    def _result(self, counts: np.ndarray, singles: np.ndarray) -> PairCounts:
        acc = None if self.accidental_offset_ps is None else counts[self._n:].copy()
        return PairCounts(counts[:self._n].copy(), acc, singles)

    def process(self, block: TagBlock) -> PairCounts:
        """Count one chunk; returns this chunk's counts and adds them to ``totals``."""
        try:
            counts, _, singles = self._engine.process(_checked(block))
        except _spec.StreamOrderError as err:
            counts, _, singles = err.partial
            err.partial = self._result(counts, singles)
            self.totals += err.partial
            raise
        result = self._result(counts, singles)
        self.totals += result
        return result

    @property
    def stats(self) -> StreamStats:
        return self._engine.stats()


class Correlation:
    """Start-stop correlation histogram (the g2 measurement) over all pairs, both signs.

    Histograms dt = (t_stop + d_stop) - (t_start + d_start) in ``n_bins`` bins of ``bin_width_ps``
    starting at ``lower_edge_ps`` (default: centred, -(n_bins//2)*bin_width_ps).
    """

    def __init__(self, start: int, stop: int, bin_width_ps: int, n_bins: int, *,
                 lower_edge_ps: int | None = None, delays_ps: Mapping[int, int] | None = None):
        setup = _spec.correlation_setup(start, stop, bin_width_ps, n_bins, lower_edge_ps, delays_ps)
        spec = setup.specs[0]
        self.start, self.stop = setup.channels
        self.bin_width_ps = spec.bin_width
        self.bin_edges_ps = spec.lo + spec.bin_width * np.arange(spec.n_bins + 1, dtype=np.int64)
        self.histogram = np.zeros(spec.n_bins, np.int64)
        self.singles = np.zeros(2, np.int64)
        self._engine = self._make_engine(setup)

    def _make_engine(self, setup: _spec.PairSetup) -> PairEngine:
        raise NotImplementedError

    @property
    def bin_centers_ps(self) -> np.ndarray:
        """Bin centres in ps (float: a centre may fall on half a picosecond)."""
        return self.bin_edges_ps[:-1] + self.bin_width_ps / 2

    def process(self, block: TagBlock) -> np.ndarray:
        """Histogram one chunk; returns this chunk's histogram and adds it to ``histogram``."""
        try:
            _, hist, singles = self._engine.process(_checked(block))
        except _spec.StreamOrderError as err:
            _, hist, singles = err.partial
            self.histogram += hist
            self.singles += singles
            err.partial = hist
            raise
        self.histogram += hist
        self.singles += singles
        return hist

    @property
    def stats(self) -> StreamStats:
        return self._engine.stats()


class NFold:
    """N-fold coincidence patterns on a channel set, as a histogram and an event list.

    Cluster rule: order the configured channels' tags by delayed time T = t + delay. A cluster
    opens at the earliest tag not yet in a cluster; it holds every tag with
    T <= T_open + window_ps (inclusive); the first tag beyond that opens the next cluster. A
    cluster's time is T_open and its mask has bit i set when ``channels[i]`` has a tag in it.
    Every cluster counts in ``histogram[mask]`` (single-channel clusters too); clusters with at
    least ``min_fold`` channels are also reported as events (time, mask). A cluster is reported
    once no later tag can join it (at the latest on :meth:`flush`).
    """

    def __init__(self, channels: Iterable[int], window_ps: int, *,
                 delays_ps: Mapping[int, int] | None = None, min_fold: int = 2):
        setup = _spec.nfold_setup(channels, window_ps, delays_ps, min_fold)
        self.channels = setup.channels
        self.window_ps = setup.window
        self.min_fold = setup.min_fold
        self.histogram = np.zeros(1 << len(self.channels), np.int64) if setup.histogram else None
        self.singles = np.zeros(len(self.channels), np.int64)
        self._engine = self._make_engine(setup)

    def _make_engine(self, setup: _spec.NFoldSetup) -> NFoldEngine:
        raise NotImplementedError

    def mask_of(self, channels: Iterable[int]) -> int:
        """The bitmask naming ``channels`` (channel numbers, not indices)."""
        index = {c: i for i, c in enumerate(self.channels)}
        return sum(1 << index[c] for c in set(channels))

    def _add(self, r: NFoldResult) -> NFoldResult:
        if self.histogram is not None and r.histogram is not None:
            self.histogram += r.histogram
        self.singles += r.singles
        return r

    def process(self, block: TagBlock) -> NFoldResult:
        """Process one chunk; returns the clusters it completed."""
        try:
            return self._add(self._engine.process(_checked(block)))
        except _spec.StreamOrderError as err:
            self._add(err.partial)
            raise

    def flush(self) -> NFoldResult:
        """End of stream: complete every pending cluster."""
        return self._add(self._engine.flush())

    @property
    def stats(self) -> StreamStats:
        return self._engine.stats()
