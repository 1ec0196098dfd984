"""The numpy reference of the coincidence core: the oracle of the differential tests.

Same public classes and functions as :mod:`qnode.native`, same semantics (see ``_api.py``), built
on a different algorithm so that agreement means something: pairs are found with
``numpy.searchsorted`` over a retained tail of each channel plus the new chunk, counting exactly
the pairs in which at least one tag is new; N-fold clusters are formed greedily over the released
tags sorted by delayed time. It is 10-100x slower than the C engines; use it by name, for tests and
for checking.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import _api, _cross, _spec
from ._spec import CLUSTER_DTYPE, NFoldResult, StreamStats
from .tags import TAG_DTYPE, TagBlock, TagType

_I64_MIN = np.iinfo(np.int64).min


class _Stream:
    """Ordering check and record bookkeeping shared by the reference engines."""

    def __init__(self, channels: tuple[int, ...]):
        self.stats = StreamStats()
        self._index = {c: i for i, c in enumerate(channels)}

    def ordered_prefix(self, block: TagBlock) -> int:
        """Length of the leading part of ``block`` that keeps time order."""
        t = block["time"]
        if t.size == 0:
            return 0
        prev = np.concatenate(([self.stats.last_time], t[:-1]))
        back = np.flatnonzero(t < prev)
        return int(back[0]) if back.size else t.size

    def take(self, block: TagBlock) -> tuple[np.ndarray, np.ndarray]:
        """Account for ``block`` (already ordered); return (raw times, channel indices) of its tags
        on configured channels."""
        st = self.stats
        st.records += block.size
        if block.size:
            st.last_time = int(block["time"][-1])
        is_tag = block["type"] == TagType.TIME_TAG
        for rec in block[~is_tag]:
            kind, t = int(rec["type"]), int(rec["time"])
            if kind == TagType.OVERFLOW_BEGIN:
                st.overflows += 1
                if st.overflow_since < 0:
                    st.overflow_since = t
            elif kind == TagType.OVERFLOW_END:
                if st.overflow_since >= 0:
                    st.dead_time_ps += t - st.overflow_since
                    st.overflow_since = -1
            elif kind == TagType.MISSED_EVENTS:
                st.missed_events += int(rec["missed"])
            else:
                st.errors += 1
        tags = block[is_tag]
        ch = tags["channel"]
        idx = np.full(ch.size, -1, np.int64)
        for c, i in self._index.items():
            idx[ch == c] = i
        known = idx >= 0
        st.tags += int(known.sum())
        st.other_tags += int((~known).sum())
        return tags["time"][known].astype(np.int64), idx[known]

    def order_error(self, block: TagBlock, n: int, partial: object) -> _spec.StreamOrderError:
        prev = int(block["time"][n - 1]) if n else self.stats.last_time
        return _spec.StreamOrderError(n, int(block["time"][n]), prev, partial)


def _pair_count_and_deltas(x: np.ndarray, y: np.ndarray, dd: int, lo: int, hi: int,
                           want_deltas: bool) -> tuple[int, np.ndarray | None]:
    """Pairs (x_i, y_j) with lo <= (y_j - x_i) + dd <= hi, for sorted x; and their dt values."""
    left = np.searchsorted(x, y + dd - hi, side="left")
    right = np.searchsorted(x, y + dd - lo, side="right")
    n = np.maximum(right - left, 0)
    total = int(n.sum())
    if not want_deltas:
        return total, None
    # Expand each y_j into its run of partners x[left_j : right_j].
    owner = np.repeat(np.arange(y.size), n)
    start = np.repeat(left, n)
    within = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    return total, y[owner] - x[start + within] + dd


class _NumpyPairs:
    def __init__(self, setup: _spec.PairSetup):
        self._setup = setup
        self._stream = _Stream(setup.channels)
        n = len(setup.channels)
        self._tails = [np.empty(0, np.int64) for _ in range(n)]
        d = setup.delays
        # Longest look-back any pair needs: keep every tag this close to the newest record.
        self._keep_ps = max(abs(int(d[s.b] - d[s.a])) + max(abs(s.lo), abs(s.hi))
                            for s in setup.specs) + 1

    def process(self, block: TagBlock) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_ok = self._stream.ordered_prefix(block)
        result = self._process(block[:n_ok])
        if n_ok < block.size:
            raise self._stream.order_error(block, n_ok, result)
        return result

    def _process(self, block: TagBlock) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        setup = self._setup
        times, idx = self._stream.take(block)
        n_ch = len(setup.channels)
        singles = np.bincount(idx, minlength=n_ch).astype(np.int64)
        new = [times[idx == c] for c in range(n_ch)]
        counts = np.zeros(len(setup.specs), np.int64)
        hists = []
        for k, s in enumerate(setup.specs):
            dd = int(setup.delays[s.b] - setup.delays[s.a])
            all_a = np.concatenate((self._tails[s.a], new[s.a]))
            want = s.n_bins > 0
            # Pairs whose b-tag is new (any a-tag), then pairs of a new a-tag with an old b-tag.
            n1, d1 = _pair_count_and_deltas(all_a, new[s.b], dd, s.lo, s.hi, want)
            n2, d2 = _pair_count_and_deltas(new[s.a], self._tails[s.b], dd, s.lo, s.hi, want)
            counts[k] = n1 + n2
            if want:
                assert d1 is not None and d2 is not None
                dts: np.ndarray = np.concatenate((d1, d2))
                hists.append(np.bincount((dts - s.lo) // s.bin_width, minlength=s.n_bins))
        horizon = self._stream.stats.last_time - self._keep_ps
        for c in range(n_ch):
            merged = np.concatenate((self._tails[c], new[c]))
            self._tails[c] = merged[merged >= horizon]
        hist = np.concatenate(hists).astype(np.int64) if hists else np.zeros(0, np.int64)
        return counts, hist, singles

    def stats(self) -> StreamStats:
        return _spec.dataclasses.replace(self._stream.stats)


class _NumpyNFold:
    def __init__(self, setup: _spec.NFoldSetup):
        self._setup = setup
        self._stream = _Stream(setup.channels)
        self._min_delay = int(setup.delays.min())
        self._shift = setup.delays - self._min_delay
        self._pending_t = np.empty(0, np.int64)   # shifted delayed times, not yet released
        self._pending_c = np.empty(0, np.int64)
        self._open = False
        self._t_open = 0
        self._mask = 0

    def _empty_hist(self) -> np.ndarray | None:
        return np.zeros(1 << len(self._setup.channels), np.int64) if self._setup.histogram else None

    def _feed(self, t: np.ndarray, c: np.ndarray, hist, events: list[tuple[int, int]]) -> None:
        """Feed released tags, sorted by delayed time, to the greedy cluster rule."""
        w = self._setup.window
        i, n = 0, t.size
        while i < n:
            if not self._open:
                self._open, self._t_open, self._mask = True, int(t[i]), 0
            j = int(np.searchsorted(t, self._t_open + w, side="right"))
            if j > i:
                self._mask |= int(np.bitwise_or.reduce(
                    np.left_shift(np.uint64(1), c[i:j].astype(np.uint64))))
                i = j
            if i < n:
                self._emit(hist, events)
        return None

    def _emit(self, hist, events: list[tuple[int, int]]) -> None:
        if hist is not None:
            hist[self._mask] += 1
        if bin(self._mask).count("1") >= self._setup.min_fold:
            events.append((self._t_open + self._min_delay, self._mask))
        self._open = False

    def _release(self, upto: int | None, hist, events: list[tuple[int, int]]) -> None:
        order = np.argsort(self._pending_t, kind="stable")
        t, c = self._pending_t[order], self._pending_c[order]
        k = t.size if upto is None else int(np.searchsorted(t, upto, side="right"))
        self._feed(t[:k], c[:k], hist, events)
        self._pending_t, self._pending_c = t[k:], c[k:]

    def _result(self, hist, events: list[tuple[int, int]], singles) -> NFoldResult:
        return NFoldResult(np.array(events, CLUSTER_DTYPE), hist, singles)

    def process(self, block: TagBlock) -> NFoldResult:
        n_ok = self._stream.ordered_prefix(block)
        result = self._process(block[:n_ok])
        if n_ok < block.size:
            raise self._stream.order_error(block, n_ok, result)
        return result

    def _process(self, block: TagBlock) -> NFoldResult:
        times, idx = self._stream.take(block)
        singles = np.bincount(idx, minlength=len(self._setup.channels)).astype(np.int64)
        self._pending_t = np.concatenate((self._pending_t, times + self._shift[idx]))
        self._pending_c = np.concatenate((self._pending_c, idx))
        hist = self._empty_hist()
        events: list[tuple[int, int]] = []
        last = self._stream.stats.last_time
        if last != _I64_MIN:
            self._release(last, hist, events)
            if self._open and self._t_open + self._setup.window < last:
                self._emit(hist, events)
        return self._result(hist, events, singles)

    def flush(self) -> NFoldResult:
        hist = self._empty_hist()
        events: list[tuple[int, int]] = []
        self._release(None, hist, events)
        if self._open:
            self._emit(hist, events)
        return self._result(hist, events, np.zeros(len(self._setup.channels), np.int64))

    def stats(self) -> StreamStats:
        return _spec.dataclasses.replace(self._stream.stats)


class Coincidences(_api.Coincidences):
    __doc__ = _api.Coincidences.__doc__

    def _make_engine(self, setup):
        return _NumpyPairs(setup)


class Correlation(_api.Correlation):
    __doc__ = _api.Correlation.__doc__

    def _make_engine(self, setup):
        return _NumpyPairs(setup)


class NFold(_api.NFold):
    __doc__ = _api.NFold.__doc__

    def _make_engine(self, setup):
        return _NumpyNFold(setup)


# ------------------------------------------------------------------ stream utilities

def merge_channels(times_by_channel: Mapping[int, np.ndarray]) -> TagBlock:
    """Reference of :func:`qnode.native.merge_channels`."""
    chans = list(times_by_channel)
    arrays = [np.asarray(times_by_channel[c], np.int64) for c in chans]
    for c, a in zip(chans, arrays, strict=True):
        if a.size > 1 and np.any(np.diff(a) < 0):
            raise ValueError(f"merge_channels: times for channel {c} are not sorted")
    t = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
    ch = (np.concatenate([np.full(a.size, c, np.int32)
                          for c, a in zip(chans, arrays, strict=True)])
          if arrays else np.empty(0, np.int32))
    order = np.lexsort((ch, t))
    out = np.zeros(t.size, TAG_DTYPE)
    out["time"], out["channel"] = t[order], ch[order]
    return out


def route_pairs(times_ps, rng, cdf, route, n_outputs, n_both_classes, first_id):
    """Reference of :func:`qnode.native.route_pairs` (same random stream: ``rng.uniform``)."""
    t = np.asarray(times_ps, np.int64)
    cdf = np.asarray(cdf, np.float64)
    route = np.asarray(route, np.int32)
    cls = np.minimum(np.searchsorted(cdf, rng.uniform(t.size), side="right"), cdf.size - 1)
    both = cls < n_both_classes
    ids = np.full(t.size, -1, np.int64)
    ids[both] = first_id + np.arange(int(both.sum()))
    outs_t, outs_i = [], []
    for o in range(n_outputs):
        sel = (route[cls] == o).any(axis=1)
        outs_t.append(t[sel])
        outs_i.append(ids[sel])
    return outs_t, outs_i, int(both.sum())


def detector_finalize(pending, new, rng, sigma_ps, delay_ps, clip_ps, dark_ps, dark_id,
                      horizon_ps, dead_ps, last_click_ps):
    """Reference of :func:`qnode.native.detector_finalize`, step by step (same random stream:
    ``rng.normal``)."""
    new_t = np.asarray(new[0], np.int64) + delay_ps
    if sigma_ps > 0 and new_t.size:
        j = np.clip(sigma_ps * rng.normal(new_t.size), -clip_ps, clip_ps)
        new_t = new_t + np.rint(j).astype(np.int64)
    t = np.concatenate((np.asarray(pending[0], np.int64), new_t))
    ids = np.concatenate((np.asarray(pending[1], np.int64), np.asarray(new[1], np.int64)))
    order = np.argsort(t, kind="stable")
    t, ids = t[order], ids[order]
    dark = np.asarray(dark_ps, np.int64)
    # darks go after records of equal time, as in a merge that favours the earlier buffer
    pos = np.searchsorted(t, dark, side="right")
    t = np.insert(t, pos, dark)
    ids = np.insert(ids, pos, np.full(dark.size, dark_id, np.int64))
    cut = int(np.searchsorted(t, horizon_ps, side="left"))
    keep, last = dead_time_filter(t[:cut], dead_ps, last_click_ps)
    return t[:cut][keep], ids[:cut][keep], t[cut:], ids[cut:], last


def dead_time_filter(times_ps: np.ndarray, dead_ps: int,
                     last_click_ps: int) -> tuple[np.ndarray, int]:
    """Reference of :func:`qnode.native.dead_time_filter` (a plain loop: the rule is sequential)."""
    keep = np.zeros(len(times_ps), bool)
    last = int(last_click_ps)
    for i, t in enumerate(np.asarray(times_ps, np.int64).tolist()):
        if t - last >= dead_ps:
            keep[i] = True
            last = t
    return keep, last


def bin_mod(times_ps: np.ndarray, t0_ps: int, bin_ps: int, n_bins: int,
            out: np.ndarray | None = None) -> np.ndarray:
    """Reference of :func:`qnode.native.bin_mod`."""
    if bin_ps < 1 or n_bins < 1 or n_bins & (n_bins - 1):
        raise ValueError(
            f"bin_mod: bin_ps must be >= 1 and n_bins a power of two, got {bin_ps}, {n_bins}")
    hist = np.zeros(n_bins, np.int64) if out is None else out
    q = np.floor_divide(np.asarray(times_ps, np.int64) - t0_ps, bin_ps)
    hist += np.bincount(np.mod(q, n_bins), minlength=n_bins)
    return hist


def pair_deltas(a_ps: np.ndarray, b_ps: np.ndarray, lo_ps: int, hi_ps: int) -> np.ndarray:
    """Reference of :func:`qnode.native.pair_deltas`."""
    a = np.asarray(a_ps, np.int64)
    b = np.asarray(b_ps, np.int64)
    # dt = b - a: pairs (x=a, y=b) with lo <= y - x <= hi, ordered by a then b.
    left = np.searchsorted(b, a + lo_ps, side="left")
    right = np.searchsorted(b, a + hi_ps, side="right")
    n = np.maximum(right - left, 0)
    owner = np.repeat(np.arange(a.size), n)
    within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    return b[np.repeat(left, n) + within] - a[owner]


def sum_times(block: TagBlock) -> int:
    """Reference of :func:`qnode.native.sum_times` (wraps around like int64 in C)."""
    return int(block["time"].sum(dtype=np.int64))


# ------------------------------------------------------------------ cross-node pairs

def _greedy(lo: np.ndarray, hi: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The one-to-one rule on candidate ranges: own tag i may take peer tags [lo[i], hi[i]) (both
    non-decreasing); it takes the first not taken. Returns (own positions that paired, their
    peer positions, the next free peer position)."""
    cand = np.flatnonzero(hi > np.maximum(lo, start))  # no candidate: only moves the scan
    own, peer = [], []
    ptr = start
    for i in cand.tolist():
        p = max(ptr, int(lo[i]))
        if p < hi[i]:
            own.append(i)
            peer.append(p)
            ptr = p + 1
        else:
            ptr = p
    if lo.size:
        ptr = max(ptr, int(lo[-1]))
    return np.array(own, np.int64), np.array(peer, np.int64), ptr


class _NumpyCrossPairs:
    """Reference of the C ``qn_xpairs`` engine: the same streaming rules (see
    ``qnode.native._cross``), written with ``searchsorted`` over the buffered streams."""

    def __init__(self, setup: _cross.CrossSetup):
        self._s = setup
        self._lo, self._hi = setup.reach
        self._own_t = np.empty(0, np.int64)
        self._own_c = np.empty(0, np.int32)
        self._own_first = 0
        self._peer = np.empty(0, np.int64)
        self._peer_first = 0
        self._pc = self._pa = self._ph = 0          # absolute peer indices
        self._own_last: int | None = None
        self._peer_last: int | None = None
        self._seen = [0, 0]
        self._done = 0

    @staticmethod
    def _check(name: str, t: np.ndarray, last: int | None) -> None:
        prev = np.concatenate(([last if last is not None else 0], t[:-1]))
        bad = np.flatnonzero((t < 0) | (t >= _cross.TIME_LIMIT_PS) | (t < prev))
        if bad.size:
            i = int(bad[0])
            raise _cross.order_error(name, i, int(t[i]), int(prev[i]) if (i or last is not None)
                                     else None)

    def process(self, own_t: np.ndarray, own_c: np.ndarray, own_end: int, peer_t: np.ndarray,
                peer_end: int, clock: _cross.PeerClock) -> tuple[np.ndarray, int, np.ndarray, int]:
        s = self._s
        self._check("own", own_t, self._own_last)
        self._check("peer", peer_t, self._peer_last)
        for k, (t, end) in enumerate(((own_t, own_end), (peer_t, peer_end))):
            last = self._own_last if k == 0 else self._peer_last
            if t.size:
                last = int(t[-1])
            if end != _cross.NO_END and (last is None or end > last):
                last = end
            if k == 0:
                self._own_last = last
            else:
                self._peer_last = last
            self._seen[k] += t.size
        self._own_t = np.concatenate((self._own_t, own_t))
        self._own_c = np.concatenate((self._own_c, own_c))
        self._peer = np.concatenate((self._peer, peer_t))
        model = clock.model()
        m = np.maximum.accumulate(model.to_a(self._peer)) if self._peer.size else self._peer
        if self._peer_last is None:
            n_settle = 0
        elif self._peer_last >= _cross.TIME_LIMIT_PS:
            n_settle = self._own_t.size
        else:
            known = int(model.to_a(np.array([self._peer_last], np.int64))[0])
            n_settle = int(np.searchsorted(self._own_t, known - self._hi, side="left"))
        a = self._own_t[:n_settle]
        first = self._peer_first
        w = s.window
        # pairs
        o, p, pc = _greedy(np.searchsorted(m, a - w, side="left"),
                           np.searchsorted(m, a + w, side="right"), self._pc - first)
        pairs = np.zeros(o.size, _cross.CROSS_PAIR_DTYPE)
        pairs["own"] = self._own_first + o
        pairs["peer"] = first + p
        pairs["dt"] = m[p] - a[o]
        pairs["channel"] = self._own_c[:n_settle][o]
        acc, pa = 0, self._pa - first
        if s.with_acc:
            oa, _, pa = _greedy(np.searchsorted(m, a + s.shift - w, side="left"),
                                np.searchsorted(m, a + s.shift + w, side="right"), pa)
            acc = int(oa.size)
        hist = np.zeros(s.n_bins, np.int64)
        ph = self._ph - first
        if s.n_bins:
            lo = np.maximum(np.searchsorted(m, a + s.hist_lo, side="left"), ph)
            hi = np.searchsorted(m, a + s.hist_lo + s.n_bins * s.bin_width, side="left")
            n = np.maximum(hi - lo, 0)
            owner = np.repeat(np.arange(a.size), n)
            within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            d = m[np.repeat(lo, n) + within] - a[owner]
            hist += np.bincount((d - s.hist_lo) // s.bin_width, minlength=s.n_bins)
            if a.size:
                ph = int(max(ph, lo[-1]))
        self._own_t, self._own_c = self._own_t[n_settle:], self._own_c[n_settle:]
        self._own_first += n_settle
        self._done += n_settle
        # move the scans to the next own tag's turn, then drop the peer tags behind all of them
        if self._own_t.size or self._own_last is not None:
            nxt = int(self._own_t[0]) if self._own_t.size else self._own_last
            assert nxt is not None
            pc = max(pc, int(np.searchsorted(m, nxt - w, side="left")))
            if s.with_acc:
                pa = max(pa, int(np.searchsorted(m, nxt + s.shift - w, side="left")))
            if s.n_bins:
                ph = max(ph, int(np.searchsorted(m, nxt + s.hist_lo, side="left")))
        drop = min([pc] + ([pa] if s.with_acc else []) + ([ph] if s.n_bins else []))
        self._peer = self._peer[drop:]
        self._peer_first += drop
        self._pc, self._pa, self._ph = first + pc, first + pa, first + ph
        return pairs, acc, hist, n_settle

    def counters(self) -> tuple[int, int, int, int, int]:
        return (self._seen[0], self._seen[1], self._done, int(self._own_t.size),
                int(self._peer.size))


class CrossPairs(_cross.CrossPairs):
    __doc__ = _cross.CrossPairs.__doc__

    def _make_engine(self, setup: _cross.CrossSetup) -> _NumpyCrossPairs:
        return _NumpyCrossPairs(setup)
