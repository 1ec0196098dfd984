"""The C engines behind ``qnode.native``'s public classes, and stream utilities.

Thin cffi glue: numpy arrays go in and out by pointer (no copies of tag data on the hot path).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import _api, _loader, _spec
from ._spec import CLUSTER_DTYPE, NFoldResult, StreamStats
from .tags import TAG_DTYPE, TagBlock

# Importing this module without the compiled extension raises NativeCoreMissing, naming the
# command that builds it.
_ffi, _lib = _loader.require()


_ptr = _loader.pointer


def _tags_ptr(block: TagBlock):
    return _ffi.cast("qn_tag *", block.ctypes.data) if block.size else _ffi.NULL


_raise_for = _loader.raise_for


def _stats(raw) -> StreamStats:
    return StreamStats(**{f.name: int(getattr(raw, f.name))
                          for f in _spec.dataclasses.fields(StreamStats)})


def _order_error(block: TagBlock, index: int, previous_ps: int,
                 partial: object) -> _spec.StreamOrderError:
    """``previous_ps``: the engine's last good record time (the C engines stop right there)."""
    return _spec.StreamOrderError(index, int(block["time"][index]), previous_ps, partial)


class _NativePairs:
    """The C pair engine (2-fold counts, accidentals, correlation histograms)."""

    def __init__(self, setup: _spec.PairSetup):
        self._n_channels = len(setup.channels)
        self._n_specs = len(setup.specs)
        self._n_bins = sum(s.n_bins for s in setup.specs)
        chans = np.array(setup.channels, np.int32)
        specs = _ffi.new("qn_pair_spec[]", self._n_specs)
        for cs, s in zip(specs, setup.specs, strict=True):
            cs.a, cs.b, cs.lo, cs.hi = s.a, s.b, s.lo, s.hi
            cs.bin_width, cs.n_bins = s.bin_width, s.n_bins
        out = _ffi.new("qn_pairs **")
        rc = _lib.qn_pairs_new(out, self._n_channels, _ptr("int32_t *", chans),
                              _ptr("int64_t *", setup.delays), self._n_specs, specs)
        if rc != _lib.QN_OK:
            _raise_for(rc, "qn_pairs_new")
        self._p = _ffi.gc(out[0], _lib.qn_pairs_free)
        self._bad = _ffi.new("int64_t *")

    def process(self, block: TagBlock) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        counts = np.zeros(self._n_specs, np.int64)
        hist = np.zeros(self._n_bins, np.int64)
        singles = np.zeros(self._n_channels, np.int64)
        rc = _lib.qn_pairs_process(self._p, _tags_ptr(block), block.size, _ptr("int64_t *", counts),
                                   _ptr("int64_t *", hist), _ptr("int64_t *", singles), self._bad)
        if rc == _lib.QN_EORDER:
            raise _order_error(block, self._bad[0], self.stats().last_time, (counts, hist, singles))
        if rc != _lib.QN_OK:
            _raise_for(rc, "qn_pairs_process")
        return counts, hist, singles

    def stats(self) -> StreamStats:
        raw = _ffi.new("qn_stats *")
        _lib.qn_pairs_stats(self._p, raw)
        return _stats(raw)


class _NativeNFold:
    """The C N-fold cluster engine."""

    def __init__(self, setup: _spec.NFoldSetup):
        self._n_channels = len(setup.channels)
        self._hist_size = (1 << self._n_channels) if setup.histogram else 0
        chans = np.array(setup.channels, np.int32)
        out = _ffi.new("qn_nfold **")
        rc = _lib.qn_nfold_new(out, self._n_channels, _ptr("int32_t *", chans),
                              _ptr("int64_t *", setup.delays), setup.window, setup.min_fold,
                              int(setup.histogram))
        if rc != _lib.QN_OK:
            _raise_for(rc, "qn_nfold_new")
        self._p = _ffi.gc(out[0], _lib.qn_nfold_free)
        self._n_events = _ffi.new("int64_t *")
        self._bad = _ffi.new("int64_t *")

    def _buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        # Every closed cluster consumed at least one tag, plus the one open cluster.
        capacity = n + int(_lib.qn_nfold_pending(self._p)) + 1
        return np.zeros(self._hist_size, np.int64), np.empty(capacity, CLUSTER_DTYPE)

    def _result(self, hist, events, singles) -> NFoldResult:
        return NFoldResult(events[: self._n_events[0]].copy(),
                           hist if self._hist_size else None, singles)

    def process(self, block: TagBlock) -> NFoldResult:
        hist, events = self._buffers(block.size)
        singles = np.zeros(self._n_channels, np.int64)
        rc = _lib.qn_nfold_process(self._p, _tags_ptr(block), block.size, _ptr("int64_t *", hist),
                                   _ptr("int64_t *", singles), _ptr("qn_cluster *", events),
                                   events.size, self._n_events, self._bad)
        if rc == _lib.QN_EORDER:
            raise _order_error(block, self._bad[0], self.stats().last_time,
                                   self._result(hist, events, singles))
        if rc != _lib.QN_OK:
            _raise_for(rc, "qn_nfold_process")
        return self._result(hist, events, singles)

    def flush(self) -> NFoldResult:
        hist, events = self._buffers(0)
        rc = _lib.qn_nfold_flush(self._p, _ptr("int64_t *", hist), _ptr("qn_cluster *", events),
                                 events.size, self._n_events)
        if rc != _lib.QN_OK:
            _raise_for(rc, "qn_nfold_flush")
        return self._result(hist, events, np.zeros(self._n_channels, np.int64))

    def stats(self) -> StreamStats:
        raw = _ffi.new("qn_stats *")
        _lib.qn_nfold_stats(self._p, raw)
        return _stats(raw)


class Coincidences(_api.Coincidences):
    __doc__ = _api.Coincidences.__doc__

    def _make_engine(self, setup):
        return _NativePairs(setup)


class Correlation(_api.Correlation):
    __doc__ = _api.Correlation.__doc__

    def _make_engine(self, setup):
        return _NativePairs(setup)


class NFold(_api.NFold):
    __doc__ = _api.NFold.__doc__

    def _make_engine(self, setup):
        return _NativeNFold(setup)


# ------------------------------------------------------------------ stream utilities

def _int64_array(name: str, a: object) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer picoseconds, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def merge_channels(times_by_channel: Mapping[int, np.ndarray]) -> TagBlock:
    """Merge per-channel sorted time arrays (ps) into one TagBlock, equal times ordered
    by channel."""
    chans = list(times_by_channel)
    arrays = [_int64_array(f"times for channel {c}", times_by_channel[c]) for c in chans]
    total = sum(a.size for a in arrays)
    out = np.empty(total, TAG_DTYPE)
    if len(chans) > 64:
        raise ValueError(f"merge_channels: at most 64 channels, got {len(chans)}")
    ptrs = _ffi.new("int64_t *[]", [_ptr("int64_t *", a) for a in arrays] or [_ffi.NULL])
    lengths = np.array([a.size for a in arrays] or [0], np.int64)
    channels = np.array(chans or [0], np.int32)
    bad = _ffi.new("int64_t *")
    rc = _lib.qn_merge(len(chans), _ffi.cast("const int64_t **", ptrs), _ptr("int64_t *", lengths),
                      _ptr("int32_t *", channels), _tags_ptr(out), bad)
    if rc == _lib.QN_EORDER:
        raise ValueError(f"merge_channels: times for channel {chans[bad[0]]} are not sorted")
    if rc != _lib.QN_OK:
        _raise_for(rc, "qn_merge")
    return out


class SimRandom:
    """A xoshiro256** random stream with ziggurat normal and exponential variates, for the
    simulator's C kernels (hal_sim). Deterministic from ``seed``; ``copy()`` forks an identical
    stream (the differential tests feed the numpy references from one)."""

    def __init__(self, seed: int | np.random.SeedSequence = 0, *, _state: np.ndarray | None = None):
        if _state is not None:
            self.state = _state.copy()
        else:
            ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
            self.state = ss.generate_state(4, np.uint64)
            if not self.state.any():  # the one state xoshiro cannot leave
                self.state[0] = 1

    def copy(self) -> SimRandom:
        return SimRandom(_state=self.state)

    @property
    def _ptr(self):
        return _ffi.cast("uint64_t *", self.state.ctypes.data)

    def _fill(self, kind: int, n: int) -> np.ndarray:
        out = np.empty(int(n), np.float64)
        _lib.qn_rng_fill(self._ptr, kind, _ptr("double *", out), out.size)
        return out

    def uniform(self, n: int) -> np.ndarray:
        """``n`` uniform variates in (0, 1)."""
        return self._fill(0, n)

    def normal(self, n: int) -> np.ndarray:
        """``n`` standard normal variates."""
        return self._fill(1, n)

    def exponential(self, n: int) -> np.ndarray:
        """``n`` standard exponential variates."""
        return self._fill(2, n)

    def sorted_uniform(self, n: int, lo: int, hi: int) -> np.ndarray:
        """``n`` sorted i.i.d. uniform integers in [lo, hi) (int64 ps), from normalised partial sums
        of exponentials (no sort)."""
        if n and hi <= lo:
            raise ValueError(f"sorted_uniform: empty range [{lo}, {hi})")
        out = np.empty(int(n), np.int64)
        _lib.qn_rng_sorted_uniform(self._ptr, out.size, int(lo), int(hi), _ptr("int64_t *", out))
        return out


def route_pairs(times_ps: np.ndarray, rng: SimRandom, cdf: np.ndarray, route: np.ndarray,
                n_outputs: int, n_both_classes: int, first_id: int
                ) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Simulation support: pair i (sorted ``times_ps``) takes the first class c with
    u < ``cdf[c]`` (u uniform from ``rng``); ``route[c, side]`` is the output its photon on that
    side reaches (or -1). Pairs of classes < ``n_both_classes`` get consecutive ids from
    ``first_id``; other photons id -1. Returns per output (sorted times, ids), and the number of
    ids given."""
    t = _int64_array("times_ps", times_ps)
    c = np.ascontiguousarray(cdf, np.float64)
    r = np.ascontiguousarray(route, np.int32)
    if r.ndim != 2 or r.shape[0] != c.size or r.max(initial=-1) >= n_outputs:
        raise ValueError("route_pairs: route must be (classes, sides) with outputs below n_outputs")
    outs_t = [np.empty(t.size, np.int64) for _ in range(n_outputs)]
    outs_i = [np.empty(t.size, np.int64) for _ in range(n_outputs)]
    counts = np.zeros(n_outputs, np.int64)
    n_ids = _lib.qn_route_pairs(
        _ptr("int64_t *", t), rng._ptr, t.size, c.size, _ptr("double *", c),  # noqa: SLF001
        _ptr("int32_t *", r), r.shape[1], int(n_both_classes), int(first_id),
        _ffi.new("int64_t *[]", [_ptr("int64_t *", a) for a in outs_t] or [_ffi.NULL]),
        _ffi.new("int64_t *[]", [_ptr("int64_t *", a) for a in outs_i] or [_ffi.NULL]),
        _ptr("int64_t *", counts))
    if n_ids < 0:
        raise ValueError("route_pairs: at most 64 classes, 8 sides and 64 outputs")
    return ([a[:k] for a, k in zip(outs_t, counts, strict=True)],
            [a[:k] for a, k in zip(outs_i, counts, strict=True)],
            int(n_ids))


def detector_finalize(pending: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray],
                      rng: SimRandom, sigma_ps: float, delay_ps: int, clip_ps: float,
                      dark_ps: np.ndarray, dark_id: int, horizon_ps: int, dead_ps: int,
                      last_click_ps: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Simulation support: one detector's tags up to ``horizon_ps``.

    ``pending``: (sorted times, ids) left over; ``new``: (sorted emission times, ids) to which
    ``delay_ps`` and Gaussian jitter (``sigma_ps`` from ``rng``, clipped at +-``clip_ps``, rounded)
    are added; ``dark_ps``: sorted dark-count times, id ``dark_id``. Records before the horizon pass
    the non-paralysable dead time. Returns (times, ids) registered, (times, ids) still pending,
    and the new last click."""
    pt, pi = (_int64_array("pending times", pending[0]), _int64_array("pending ids", pending[1]))
    nt, ni = (_int64_array("new times", new[0]), _int64_array("new ids", new[1]))
    dk = _int64_array("dark_ps", dark_ps)
    if pt.shape != pi.shape or nt.shape != ni.shape:
        raise ValueError("detector_finalize: times and ids differ in length")
    total = pt.size + nt.size + dk.size
    out_t, out_i = np.empty(total, np.int64), np.empty(total, np.int64)
    last = _ffi.new("int64_t *", int(last_click_ps))
    cut = _ffi.new("int64_t *")
    m = _lib.qn_detector_finalize(
        _ptr("int64_t *", pt), _ptr("int64_t *", pi), pt.size, _ptr("int64_t *", nt),
        _ptr("int64_t *", ni), rng._ptr, float(sigma_ps), nt.size, int(delay_ps), float(clip_ps),  # noqa: SLF001
        _ptr("int64_t *", dk), int(dark_id), dk.size, int(horizon_ps), int(dead_ps), last,
        _ptr("int64_t *", out_t), _ptr("int64_t *", out_i), cut)
    c = int(cut[0])
    return out_t[:m], out_i[:m], out_t[c:].copy(), out_i[c:].copy(), int(last[0])


def dead_time_filter(times_ps: np.ndarray, dead_ps: int,
                     last_click_ps: int) -> tuple[np.ndarray, int]:
    """Non-paralysable dead time on one detector's sorted times: a click at t blinds the detector
    for [t, t + dead_ps). Returns (keep mask, time of the last registered click) so that calls on
    consecutive pieces of a stream chain exactly."""
    t = _int64_array("times_ps", times_ps)
    keep = np.empty(t.size, np.uint8)
    last = _ffi.new("int64_t *", int(last_click_ps))
    _lib.qn_dead_time(_ptr("int64_t *", t), t.size, int(dead_ps), last, _ptr("uint8_t *", keep))
    return keep.view(np.bool_), int(last[0])


def bin_mod(times_ps: np.ndarray, t0_ps: int, bin_ps: int, n_bins: int,
            out: np.ndarray | None = None) -> np.ndarray:
    """Histogram floor((t - t0)/bin) mod n_bins (n_bins a power of two); adds into ``out``."""
    t = _int64_array("times_ps", times_ps)
    hist = np.zeros(n_bins, np.int64) if out is None else out
    if hist.dtype != np.int64 or hist.size != n_bins or not hist.flags.c_contiguous:
        raise ValueError("out must be a contiguous int64 array of n_bins entries")
    rc = _lib.qn_bin_mod(_ptr("int64_t *", t), t.size, int(t0_ps), int(bin_ps), int(n_bins),
                        _ptr("int64_t *", hist))
    if rc != _lib.QN_OK:
        raise ValueError(
            f"bin_mod: bin_ps must be >= 1 and n_bins a power of two, got {bin_ps}, {n_bins}")
    return hist


def pair_deltas(a_ps: np.ndarray, b_ps: np.ndarray, lo_ps: int, hi_ps: int) -> np.ndarray:
    """Every difference b[j] - a[i] with lo <= diff <= hi, for sorted ``a`` and ``b`` (ps),
    ordered by i then j."""
    a = _int64_array("a_ps", a_ps)
    b = _int64_array("b_ps", b_ps)
    cap = max(16, 2 * min(a.size, b.size))
    while True:
        out = np.empty(cap, np.int64)
        n = _lib.qn_pair_deltas(_ptr("int64_t *", a), a.size, _ptr("int64_t *", b), b.size,
                               int(lo_ps), int(hi_ps), _ptr("int64_t *", out), cap)
        if n <= cap:
            return out[:n]
        cap = int(n)


def sum_times(block: TagBlock) -> int:
    """Sum of the time field: the memory-bandwidth baseline of the benchmarks."""
    return int(_lib.qn_sum_times(_tags_ptr(block), block.size))


# ------------------------------------------------------------------ Rice-coded times

#: times are int64 ps below 2**62 (the streams' range; qnode.native._cross checks it too)
TIME_LIMIT_PS = 1 << 62
RICE_MAX_K = 48
"""Largest Rice parameter k (the coder's limit; mean gaps up to ~2**48 ps need no more)."""


def rice_parameter(times_ps: np.ndarray) -> int:
    """The Rice parameter for sorted times (ps): k = max(0, floor(log2(mean_gap * ln 2))), the
    optimum for geometric gaps of that mean (Gallager & van Voorhis 1975; Kiely 2004, IPN PR
    42-159, eq. 12), clipped to [0, 48]. 0 for fewer than two times."""
    n = int(np.size(times_ps))
    if n < 2:
        return 0
    mean = (int(times_ps[-1]) - int(times_ps[0])) / (n - 1)
    x = mean * 0.6931471805599453
    return 0 if x < 1.0 else min(int(np.floor(np.log2(x))), RICE_MAX_K)


def rice_encode(times_ps: np.ndarray, k: int) -> bytes:
    """The gaps of sorted times in [0, 2**62) ps as a Rice code with parameter ``k`` (format:
    ``qcore.h``, ``qn_rice_encode``; the first time is not in it). ValueError for unsorted or
    out-of-range times or k."""
    t = _int64_array("times_ps", times_ps)
    if not 0 <= int(k) <= RICE_MAX_K:
        raise ValueError(f"rice_encode: k must be in [0, {RICE_MAX_K}], got {k}")
    cap = int(_lib.qn_rice_bound(t.size))
    out = np.empty(cap, np.uint8)
    n_out = _ffi.new("int64_t *")
    bad = _ffi.new("int64_t *")
    rc = _lib.qn_rice_encode(_ptr("int64_t *", t), t.size, int(k), _ptr("uint8_t *", out), cap,
                             n_out, bad)
    if rc == _lib.QN_EORDER:
        raise ValueError(f"rice_encode: times are not sorted at index {bad[0]}")
    if rc == _lib.QN_EARG:
        raise ValueError(f"rice_encode: time {bad[0]} is outside [0, 2**62) ps")
    if rc != _lib.QN_OK:
        _raise_for(rc, "qn_rice_encode")
    return out[: n_out[0]].tobytes()


def rice_decode(data: bytes, n: int, t0_ps: int, k: int) -> np.ndarray:
    """Inverse of :func:`rice_encode`: ``n`` times from the first ``t0_ps`` and the coded gaps.
    ValueError when ``data`` does not hold exactly n - 1 gaps (short, extra bytes, non-zero
    padding, a non-canonical escape) or a time leaves [0, 2**62). Allocates n int64 only after
    checking that ``data`` is long enough for them (n - 1 <= 8*len(data)/(k + 1))."""
    if not 0 <= int(k) <= RICE_MAX_K:
        raise ValueError(f"rice_decode: k must be in [0, {RICE_MAX_K}], got {k}")
    if not 0 <= int(t0_ps) < TIME_LIMIT_PS:
        raise ValueError(f"rice_decode: t0 must be in [0, 2**62) ps, got {t0_ps}")
    n, buf = int(n), bytes(data)
    if n < 0 or (n == 0 and buf) or (n > 1 and n - 1 > 8 * len(buf) // (int(k) + 1)):
        raise ValueError(f"rice_decode: {len(buf)} bytes cannot hold {max(n - 1, 0)} gaps "
                         f"at k = {k}")
    out = np.empty(n, np.int64)
    bad = _ffi.new("int64_t *")
    rc = _lib.qn_rice_decode(_ffi.from_buffer("uint8_t[]", buf) if buf else _ffi.NULL, len(buf),
                             n, int(t0_ps), int(k), _ptr("int64_t *", out), bad)
    if rc == _lib.QN_EFORMAT:
        raise ValueError(f"rice_decode: malformed stream at bit {bad[0]} (expected exactly "
                         f"{max(n - 1, 0)} gaps in {len(buf)} bytes, times in [0, 2**62))")
    if rc != _lib.QN_OK:
        _raise_for(rc, "qn_rice_decode")
    return out


def b85encode(data: bytes) -> str:
    """``base64.b85encode(data).decode()``, in C (the stdlib's is pure Python, ~13 ns/byte)."""
    buf = bytes(data)
    cap = 5 * ((len(buf) + 3) // 4)
    out = np.empty(max(cap, 1), np.uint8)
    n_out = _ffi.new("int64_t *")
    rc = _lib.qn_b85_encode(_ffi.from_buffer("uint8_t[]", buf) if buf else _ffi.NULL, len(buf),
                            _ptr("uint8_t *", out), cap, n_out)
    if rc != _lib.QN_OK:
        _raise_for(rc, "qn_b85_encode")
    return out[: n_out[0]].tobytes().decode("ascii")


def b85decode(text: str | bytes) -> bytes:
    """``base64.b85decode``, in C, for what ``b85encode`` writes; ValueError for a character
    outside the RFC 1924 alphabet, a group above 2**32 - 1 or a one-character final group."""
    raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    out = np.empty(max(len(raw), 1), np.uint8)
    n_out = _ffi.new("int64_t *")
    bad = _ffi.new("int64_t *")
    rc = _lib.qn_b85_decode(_ffi.from_buffer("uint8_t[]", raw) if raw else _ffi.NULL, len(raw),
                            _ptr("uint8_t *", out), len(raw), n_out, bad)
    if rc == _lib.QN_EFORMAT:
        raise ValueError(f"bad base85 at character {bad[0]}")
    if rc != _lib.QN_OK:
        _raise_for(rc, "qn_b85_decode")
    return out[: n_out[0]].tobytes()
