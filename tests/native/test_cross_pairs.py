"""Cross-node pairs (qnode.native.CrossPairs) against the numpy reference and a brute force
written from the rule, on one-shot and chunked input, and the mapping against DriftTracker."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qnode import native
from qnode.native import CROSS_PAIR_DTYPE, PeerClock, reference
from qnode.native.align import ClockEstimate, ClockModel
from qnode.native.tracking import DriftTracker

BACKENDS = [native, reference]
LIMIT = 1 << 62


def make_streams(rng: np.random.Generator, n: int, frac: float, clock: PeerClock,
                 span_ps: int, jitter_ps: float = 60.0, t0: int = 10**9
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Own (times, channels) and peer times (peer clock): n tags each, a fraction true pairs."""
    k = int(n * frac)
    src = t0 + rng.integers(0, span_ps, k)
    own = np.concatenate([src + np.round(rng.normal(0, jitter_ps, k)).astype(np.int64),
                          t0 + rng.integers(0, span_ps, n - k)])
    peer_own_clock = np.concatenate([src, t0 + rng.integers(0, span_ps, n - k)])
    peer = np.round(clock.model().to_b(peer_own_clock)).astype(np.int64)
    own = np.sort(np.clip(own, 0, None))
    return own, rng.integers(0, 4, own.size).astype(np.int32), np.sort(np.clip(peer, 0, None))


def run(mod, own_chunks, peer_chunks, clocks, ends=None, **kw):
    cp = mod.CrossPairs(kw.pop("window", 1000), **kw)
    pairs, acc, g2 = [], 0, None
    for i, (o, p, c) in enumerate(zip(own_chunks, peer_chunks, clocks, strict=True)):
        oe, pe = ends[i] if ends else (None, None)
        r = cp.process(o[0], o[1], p, c, own_end_ps=oe, peer_end_ps=pe)
        pairs.append(r.pairs)
        acc += r.accidentals or 0
    f = cp.flush(clocks[-1])
    pairs.append(f.pairs)
    acc += f.accidentals or 0
    assert cp.counters()["own_pending"] == 0
    g2 = cp.g2
    return np.concatenate(pairs), acc, g2, cp


def brute(own, chans, peer, clock, window, shift, g2_half, g2_bin):
    """The rule, literally: own tags in order take the first untaken peer tag in the window."""
    m = np.maximum.accumulate(clock.to_own(peer)) if peer.size else peer
    m = [int(x) for x in m]

    def greedy(lo, hi):
        taken, out = set(), []
        for i, a in enumerate(own.tolist()):
            for j, b in enumerate(m):
                if j not in taken and lo <= b - a <= hi:
                    taken.add(j)
                    out.append((i, j, b - a, int(chans[i])))
                    break
        return out

    pairs = greedy(-window, window)
    acc = len(greedy(shift - window, shift + window)) if shift is not None else None
    hist = None
    if g2_half:
        hist = np.zeros(2 * g2_half // g2_bin, np.int64)
        for a in own.tolist():
            for b in m:
                if -g2_half <= b - a < g2_half:
                    hist[(b - a + g2_half) // g2_bin] += 1
    return pairs, acc, hist


def as_tuples(pairs: np.ndarray) -> list[tuple[int, int, int, int]]:
    return [(int(p["own"]), int(p["peer"]), int(p["dt"]), int(p["channel"])) for p in pairs]


def cut(n: int, rng: np.random.Generator, pieces: int) -> list[int]:
    return sorted(rng.integers(0, n + 1, pieces).tolist())


def chunked(own, chans, peer, own_cuts, peer_cuts):
    oe = [0, *own_cuts, own.size]
    pe = [0, *peer_cuts, peer.size]
    return ([(own[a:b], chans[a:b]) for a, b in zip(oe[:-1], oe[1:], strict=True)],
            [peer[a:b] for a, b in zip(pe[:-1], pe[1:], strict=True)])


clock_st = st.builds(PeerClock, st.integers(-10**6, 10**6), st.integers(0, 10**7),
                     st.floats(-150e-6, 150e-6), st.floats(-1e4, 1e4))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), clock=clock_st, window=st.sampled_from([0, 3, 50, 400]),
       spacing=st.sampled_from([1, 20, 300, 3000]))
def test_small_streams_equal_brute_force(data, clock, window, spacing):
    n_own = data.draw(st.integers(0, 40))
    n_peer = data.draw(st.integers(0, 40))
    own = np.cumsum(data.draw(st.lists(st.integers(0, spacing), min_size=n_own,
                                       max_size=n_own)), dtype=np.int64) + 10**7
    chans = np.array(data.draw(st.lists(st.integers(0, 7), min_size=n_own, max_size=n_own)),
                     np.int32)
    peer_own = np.cumsum(data.draw(st.lists(st.integers(0, spacing), min_size=n_peer,
                                            max_size=n_peer)), dtype=np.int64) + 10**7
    peer = np.sort(np.clip(clock.model().to_b(peer_own), 0, None))
    shift = data.draw(st.sampled_from([None, 2 * window + 1, -(2 * window + 7)]))
    g2_half, g2_bin = data.draw(st.sampled_from([(0, 1), (500, 50), (1000, 1)]))
    want_pairs, want_acc, want_hist = brute(own, chans, peer, clock, window, shift, g2_half,
                                            g2_bin)
    own_cuts = data.draw(st.lists(st.integers(0, n_own), max_size=4))
    peer_cuts = data.draw(st.lists(st.integers(0, n_peer), max_size=4))
    pieces = max(len(own_cuts), len(peer_cuts))
    own_cuts = sorted(own_cuts + [n_own] * (pieces - len(own_cuts)))
    peer_cuts = sorted(peer_cuts + [n_peer] * (pieces - len(peer_cuts)))
    oc, pc = chunked(own, chans, peer, own_cuts, peer_cuts)
    for mod in BACKENDS:
        for o_chunks, p_chunks in (([(own, chans)], [peer]), (oc, pc)):
            pairs, acc, g2, _ = run(mod, o_chunks, p_chunks, [clock] * len(o_chunks),
                                    window=window, accidental_shift_ps=shift,
                                    g2_half_range_ps=g2_half, g2_bin_ps=g2_bin)
            assert as_tuples(pairs) == want_pairs
            assert (acc if shift is not None else None) == want_acc
            if want_hist is None:
                assert g2 is None
            else:
                np.testing.assert_array_equal(g2, want_hist)


@pytest.mark.parametrize("seed", range(4))
def test_random_chunks_equal_one_shot_and_reference(seed):
    rng = np.random.default_rng(seed)
    clock = PeerClock(int(rng.integers(-10**9, 10**9)), 2 * 10**9, float(rng.uniform(-50, 50)) *
                      1e-6, float(rng.uniform(-1000, 1000)))
    own, chans, peer = make_streams(rng, 30_000, 0.05, clock, span_ps=3 * 10**9)
    one = run(native, [(own, chans)], [peer], [clock])
    ref = run(reference, [(own, chans)], [peer], [clock])
    assert one[0].dtype == CROSS_PAIR_DTYPE and one[0].size > 1000
    np.testing.assert_array_equal(one[0], ref[0])
    assert one[1] == ref[1] and one[1] > 0
    np.testing.assert_array_equal(one[2], ref[2])
    for pieces in (3, 40, 400):
        oc, pc = chunked(own, chans, peer, cut(own.size, rng, pieces), cut(peer.size, rng, pieces))
        for mod in BACKENDS:
            got = run(mod, oc, pc, [clock] * len(oc))
            np.testing.assert_array_equal(got[0], one[0])
            assert got[1] == one[1]
            np.testing.assert_array_equal(got[2], one[2])


def test_declared_ends_keep_results_and_bound_buffers():
    rng = np.random.default_rng(11)
    clock = PeerClock.from_ppm(5_000, 2.0, 0)
    own, chans, peer = make_streams(rng, 20_000, 0.05, clock, span_ps=2 * 10**9)
    one = run(native, [(own, chans)], [peer], [clock])
    # chunks on common time edges, each declaring its end (as the wire's t_end_ps does)
    edges = np.linspace(int(own[0]), int(own[-1]) + 1, 30).astype(np.int64)
    peer_edges = clock.model().to_b(edges)
    oi = np.searchsorted(own, edges)
    pi = np.searchsorted(peer, peer_edges)
    oc, pc = chunked(own, chans, peer, oi[1:-1].tolist(), pi[1:-1].tolist())
    ends = list(zip(edges[1:].tolist(), peer_edges[1:].tolist(), strict=True))
    for mod in BACKENDS:
        got = run(mod, oc, pc, [clock] * len(oc), ends)
        np.testing.assert_array_equal(got[0], one[0])
        assert got[1] == one[1]
        np.testing.assert_array_equal(got[2], one[2])
    # a quiet own stream with a declared end frees the peer tags behind it
    cp = native.CrossPairs(1000)
    cp.process(np.empty(0, np.int64), None, peer, clock, own_end_ps=int(own[-1]) + 10**9)
    assert cp.counters()["peer_buffered"] == 0


def test_changing_clock_native_equals_reference():
    rng = np.random.default_rng(5)
    clock = PeerClock(77_000, 10**9, 20e-6, 0.25)
    own, chans, peer = make_streams(rng, 30_000, 0.05, clock, span_ps=3 * 10**9)
    oc, pc = chunked(own, chans, peer, cut(own.size, rng, 50), cut(peer.size, rng, 50))
    clocks = [PeerClock(clock.offset_ps + int(rng.integers(-3, 4)), clock.ref_ps,
                        clock.rate + float(rng.normal(0, 1e-8)), float(rng.uniform(-2, 2)))
              for _ in oc]
    a = run(native, oc, pc, clocks)
    b = run(reference, oc, pc, clocks)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    np.testing.assert_array_equal(a[2], b[2])
    assert np.unique(a[0]["peer"]).size == a[0].size        # nothing paired twice
    assert np.unique(a[0]["own"]).size == a[0].size


def test_indices_name_the_tags():
    rng = np.random.default_rng(2)
    clock = PeerClock.from_ppm(-123_456, -7.5, 5 * 10**8)
    own, chans, peer = make_streams(rng, 20_000, 0.1, clock, span_ps=10**9)
    oc, pc = chunked(own, chans, peer, cut(own.size, rng, 20), cut(peer.size, rng, 20))
    pairs = run(native, oc, pc, [clock] * len(oc))[0]
    assert np.all(np.diff(pairs["own"]) > 0)
    np.testing.assert_array_equal(chans[pairs["own"]], pairs["channel"])
    mapped = clock.to_own(peer)
    np.testing.assert_array_equal(mapped[pairs["peer"]] - own[pairs["own"]], pairs["dt"])
    assert np.all(np.abs(pairs["dt"]) <= 1000)
    assert pairs.size >= 0.9 * 2000


def tracker_after_updates() -> DriftTracker:
    rng = np.random.default_rng(3)
    est = ClockEstimate(offset_ps=250_000, drift_ppm=3.0, ref_ps=10**9,
                        offset_uncertainty_ps=10.0, drift_uncertainty_ppm=0.01, significance=20,
                        n_pairs=1000, span_ps=10**11, separation_ps=10**11)
    true = PeerClock.from_ppm(250_040, 3.02, 10**9)
    own, _, peer = make_streams(rng, 400_000, 0.2, true, span_ps=4 * 10**10)
    tr = DriftTracker(est, interval_ps=2 * 10**9)
    tr.update(own, peer)
    return tr


def test_mapping_is_drift_trackers_to_reference():
    tr = tracker_after_updates()
    clock = PeerClock.from_tracker(tr)
    assert clock.dev_ps != 0.0 and clock.dev_ps != round(clock.dev_ps)
    rng = np.random.default_rng(8)
    models = [clock, PeerClock.from_estimate(ClockEstimate(
        offset_ps=-5, drift_ppm=-80.0, ref_ps=3, offset_uncertainty_ps=1.0,
        drift_uncertainty_ppm=0.1, significance=9, n_pairs=9, span_ps=1, separation_ps=1))]
    models += [PeerClock(0, 0, 0.0, d) for d in (0.5, 1.5, 2.5, -0.5, -1.5)]  # ties: to even
    models += [PeerClock(int(rng.integers(-2**59, 2**59)), int(rng.integers(0, 2**61)),
                         float(rng.uniform(-2e-4, 2e-4)), float(rng.uniform(-2**40, 2**40)))
               for _ in range(6)]
    for c in models:
        # well-separated peer times over the whole range, and the exact own times they map to
        peer = np.sort(rng.integers(0, LIMIT, 20_000) // 10**6 * 10**6)
        peer = np.unique(peer)
        want = np.maximum.accumulate(
            tr.to_reference(peer) if c is clock else c.model().to_a(peer))
        keep = (want >= 0) & (want < LIMIT)
        own, pk = want[keep], np.flatnonzero(keep)
        # window 0: a pair forms only where the C mapping equals the tracker's to the ps
        got = run(native, [(own, None)], [peer], [c], window=0, accidental_shift_ps=None,
                  g2_half_range_ps=0)[0]
        np.testing.assert_array_equal(got["peer"], pk)
        assert np.all(got["dt"] == 0)


def test_bad_input_consumes_nothing():
    cp = native.CrossPairs(1000)
    clock = PeerClock(0)
    cp.process(np.array([10, 20]), None, np.array([10, 30]), clock)
    before = cp.counters()
    for mod in BACKENDS:
        c = mod.CrossPairs(1000)
        c.process(np.array([10, 20]), None, np.array([10, 30]), clock)
        with pytest.raises(ValueError, match="own times are not time-ordered: tag 0"):
            c.process(np.array([5]), None, np.array([40]), clock)
        with pytest.raises(ValueError, match="peer times are not time-ordered: tag 1"):
            c.process(np.array([25]), None, np.array([40, 35]), clock)
        with pytest.raises(ValueError, match="outside"):
            c.process(np.array([LIMIT]), None, np.empty(0, np.int64), clock)
        with pytest.raises(ValueError, match="peer times are not time-ordered"):
            c.process(np.empty(0, np.int64), None, np.array([50]), clock, peer_end_ps=100)
            c.process(np.empty(0, np.int64), None, np.array([60]), clock)
        assert c.counters()["own_seen"] == before["own_seen"]
    with pytest.raises(ValueError, match="drift"):
        cp.process(np.array([30]), None, np.array([40]), PeerClock(0, 0, 1e-3))
    with pytest.raises(ValueError, match="dev_ps"):
        cp.process(np.array([30]), None, np.array([40]), PeerClock(0, 0, 0.0, float("nan")))
    with pytest.raises(TypeError):
        cp.process(np.array([30]), None, np.array([40]), 5)  # type: ignore[arg-type]
    assert cp.counters() == before
    cp.flush(clock)
    with pytest.raises(ValueError, match="peer"):
        cp.process(np.empty(0, np.int64), None, np.array([LIMIT - 1]), clock)


@pytest.mark.parametrize("kw", [dict(window_ps=-1), dict(window_ps=10, accidental_shift_ps=20),
                                dict(window_ps=10, g2_half_range_ps=5, g2_bin_ps=3),
                                dict(window_ps=1.5)])
def test_bad_setup(kw):
    for mod in BACKENDS:
        with pytest.raises(ValueError):
            mod.CrossPairs(**kw)


def test_model_conversions_agree():
    m = ClockModel(base=10, ref=20, dev=0.75, rate=3e-6)
    x = np.array([0, 10**12, 2**61], np.int64)
    np.testing.assert_array_equal(PeerClock.from_model(m).to_own(x), m.to_a(x))
    c = PeerClock.from_ppm(10, 3.0, 20)
    assert c.drift_ppm == pytest.approx(3.0)
