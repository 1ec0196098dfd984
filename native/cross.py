"""The C engine of cross-node pair finding (``qn_xpairs``) behind
:class:`~qnode.native._cross.CrossPairs`: :class:`CrossPairs` is the one the package exports.

Apart from :mod:`qnode.native.core` so that the core's helpers do not import the clock model
(:mod:`qnode.native.align` uses the core's helpers).
"""
from __future__ import annotations

import numpy as np

from . import _cross, _loader

_ffi, _lib = _loader.require()
_ptr, _raise_for = _loader.pointer, _loader.raise_for


class _NativeCrossPairs:
    """The C cross-node pair engine (``qn_xpairs``)."""

    def __init__(self, setup: _cross.CrossSetup):
        out = _ffi.new("qn_xpairs **")
        rc = _lib.qn_xpairs_new(out, setup.window, int(setup.with_acc), setup.shift,
                                setup.hist_lo, setup.bin_width, setup.n_bins)
        if rc != _lib.QN_OK:
            _raise_for(rc, "qn_xpairs_new")
        self._p = _ffi.gc(out[0], _lib.qn_xpairs_free)
        self._n_bins = setup.n_bins
        self._clock = _ffi.new("qn_clock *")
        self._n = _ffi.new("int64_t *")
        self._acc = _ffi.new("int64_t *")
        self._bad = _ffi.new("int64_t[2]")
        self._last: list[int | None] = [None, None]  # newest time per stream (error message)

    def process(self, own_t: np.ndarray, own_c: np.ndarray, own_end: int, peer_t: np.ndarray,
                peer_end: int, clock: _cross.PeerClock) -> tuple[np.ndarray, int, np.ndarray, int]:
        c = self._clock
        c.base, c.ref, c.dev, c.rate = clock.offset_ps, clock.ref_ps, clock.dev_ps, clock.rate
        cap = int(_lib.qn_xpairs_capacity(self._p, own_t.size, peer_t.size))
        pairs = np.empty(cap, _cross.CROSS_PAIR_DTYPE)
        hist = np.zeros(self._n_bins, np.int64)
        before = self.counters()[2]
        rc = _lib.qn_xpairs_process(
            self._p, _ptr("int64_t *", own_t), _ptr("int32_t *", own_c), own_t.size, own_end,
            _ptr("int64_t *", peer_t), peer_t.size, peer_end, c, _ptr("qn_xpair *", pairs), cap,
            self._n, self._acc, _ptr("int64_t *", hist), self._bad)
        if rc in (_lib.QN_EORDER, _lib.QN_EARG) and self._bad[0] >= 0:
            which, i = int(self._bad[0]), int(self._bad[1])
            t = own_t if which == 0 else peer_t
            prev = int(t[i - 1]) if i else self._last[which]
            raise _cross.order_error(("own", "peer")[which], i, int(t[i]), prev)
        if rc != _lib.QN_OK:
            _raise_for(rc, "qn_xpairs_process")
        for k, (t, end) in enumerate(((own_t, own_end), (peer_t, peer_end))):
            last = int(t[-1]) if t.size else None
            if end != _cross.NO_END and (last is None or end > last):
                last = end
            prev = self._last[k]
            if last is not None and (prev is None or last > prev):
                self._last[k] = last
        n = int(self._n[0])
        return (pairs[:n].copy() if 4 * n < cap else pairs[:n], int(self._acc[0]), hist,
                self.counters()[2] - before)

    def counters(self) -> tuple[int, int, int, int, int]:
        raw = _ffi.new("int64_t[6]")
        _lib.qn_xpairs_counters(self._p, raw)
        return int(raw[0]), int(raw[1]), int(raw[2]), int(raw[3]), int(raw[4])


class CrossPairs(_cross.CrossPairs):
    __doc__ = _cross.CrossPairs.__doc__

    def _make_engine(self, setup: _cross.CrossSetup) -> _NativeCrossPairs:
        return _NativeCrossPairs(setup)
