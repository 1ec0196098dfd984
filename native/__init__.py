"""qnode.native: the coincidence core.

Public API (C engines; the numpy oracle with identical semantics is ``qnode.native.reference``):

* :data:`TAG_DTYPE`, :class:`TagType`, :func:`tag_block`, :func:`check_block`: the TagBlock model.
* :class:`Coincidences`: exact 2-fold counts (all pairs, |dt| <= w) for many pairs, accidentals.
* :class:`NFold`: N-fold clusters as a pattern histogram and an event list.
* :class:`Correlation`: start-stop histograms (g2).
* stream utilities: :func:`merge_channels`, :func:`dead_time_filter`, :func:`bin_mod`,
  :func:`pair_deltas`; for hal_sim, :class:`SimRandom`, :func:`route_pairs` and
  :func:`detector_finalize`.
* :mod:`qnode.native.align`: clock alignment of two nodes' streams.
"""
from ._spec import (CLUSTER_DTYPE, NFoldResult, PairCounts, StreamOrderError, StreamStats)
from .core import (Coincidences, Correlation, NativeCoreMissing, NFold, bin_mod, dead_time_filter,
                   detector_finalize,
                   merge_channels, native_available, native_error, pair_deltas, route_pairs,
                   SimRandom, sum_times)
from .tags import (TAG_DTYPE, TagBlock, TagBlockError, TagType, check_block, empty_block,
                   sort_block, tag_block, time_tags)

__all__ = [
    "CLUSTER_DTYPE", "Coincidences", "Correlation", "NFold", "detector_finalize", "NFoldResult", "NativeCoreMissing",
    "PairCounts", "SimRandom", "StreamOrderError", "StreamStats", "TAG_DTYPE", "TagBlock", "TagBlockError",
    "TagType", "bin_mod", "check_block", "dead_time_filter", "empty_block", "merge_channels",
    "native_available", "native_error", "pair_deltas", "route_pairs", "sort_block", "sum_times",
    "tag_block",
    "time_tags",
]
