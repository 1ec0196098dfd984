"""qnode.native: the coincidence core.

Public API (C engines; the numpy oracle with identical semantics is ``qnode.native.reference``):

* :data:`TAG_DTYPE`, :class:`TagType`, :func:`tag_block`, :func:`check_block`: the TagBlock model.
* :class:`Coincidences`: exact 2-fold counts (all pairs, |dt| <= w) for many pairs, accidentals.
* :class:`NFold`: N-fold clusters as a pattern histogram and an event list.
* :class:`Correlation`: start-stop histograms (g2).
* :class:`CrossPairs`: cross-node pairs of an M link (own tags against the peer's times, mapped
  through a :class:`PeerClock`), one-to-one, with stream indices, dt, accidentals and g2.
* :func:`rice_encode`, :func:`rice_decode`, :func:`rice_parameter`: Rice-coded time gaps, and
  :func:`b85encode`, :func:`b85decode` (base85 as the stdlib's, in C): the timing-only wire,
  ``qnode.daemon.bus.timewire``.
* stream utilities: :func:`merge_channels`, :func:`dead_time_filter`, :func:`bin_mod`,
  :func:`pair_deltas`; for hal_sim, :class:`SimRandom`, :func:`route_pairs` and
  :func:`detector_finalize`.
* :class:`LdpcDecoder` (:mod:`qnode.native.ldpc`): layered sum-product syndrome decoding of
  binary LDPC codes (key reconciliation).
* :mod:`qnode.native.align` (offset, frequency) and :mod:`qnode.native.tracking` (drift servo):
  clock alignment of two nodes' streams.

The C-backed names load on first use: without the compiled extension they raise
:class:`NativeCoreMissing`, which says how to build it, while the tag model and
``qnode.native.reference`` keep working.
"""
# These imports are re-exported: ruff cannot see that they are used, as __all__ is computed.
from ._cross import CROSS_PAIR_DTYPE, CrossPairResult, PeerClock  # noqa: F401
from ._loader import NativeCoreMissing, native_available, native_error  # noqa: F401
from ._spec import (  # noqa: F401
    CLUSTER_DTYPE,
    NFoldResult,
    PairCounts,
    StreamOrderError,
    StreamStats,
)
from .tags import (  # noqa: F401
    TAG_DTYPE,
    TagBlock,
    TagBlockError,
    TagType,
    check_block,
    empty_block,
    sort_block,
    tag_block,
    time_tags,
)

_CORE_NAMES = frozenset({
    "Coincidences", "Correlation", "NFold", "SimRandom", "b85decode", "b85encode",
    "bin_mod",
    "dead_time_filter", "detector_finalize", "merge_channels", "pair_deltas", "rice_decode",
    "rice_encode", "rice_parameter", "route_pairs", "sum_times",
})


def __getattr__(name: str):
    if name == "LdpcDecoder":
        from .ldpc import LdpcDecoder  # raises NativeCoreMissing when the extension is not built
        return LdpcDecoder
    if name == "CrossPairs":
        from .cross import CrossPairs  # NativeCoreMissing when the extension is not built
        return CrossPairs
    if name in _CORE_NAMES:
        from . import core  # raises NativeCoreMissing when the extension is not built
        return getattr(core, name)
    raise AttributeError(f"module 'qnode.native' has no attribute {name!r}")


__all__ = sorted(_CORE_NAMES | {
    "CLUSTER_DTYPE", "CrossPairs", "LdpcDecoder", "CROSS_PAIR_DTYPE", "CrossPairResult",
    "PeerClock",
    "NFoldResult", "NativeCoreMissing", "PairCounts", "StreamOrderError",
    "StreamStats", "TAG_DTYPE", "TagBlock", "TagBlockError", "TagType", "check_block",
    "empty_block", "native_available", "native_error", "sort_block", "tag_block", "time_tags",
})
