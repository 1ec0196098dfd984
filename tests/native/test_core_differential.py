"""The C core against the numpy reference (and both against brute force on small streams).

Every property is checked on chunked input: any split of a stream into chunks, including empty
and one-record chunks, must give exactly the result of the unsplit stream.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qnode import native
from qnode.native import reference

from support.stream_strategies import (
    brute_clusters,
    brute_pair_deltas,
    chunkings,
    split,
    tag_streams,
)

CHANNELS = (1, 2, 3, 4)
PAIRS = [(1, 2), (3, 4), (1, 4), (2, 3)]
BACKENDS = [native, reference]

delays_st = st.dictionaries(st.sampled_from(CHANNELS), st.integers(-300, 300), max_size=4)
window_st = st.sampled_from([0, 1, 2, 5, 50, 120])


def run_coincidences(mod, chunks, window, delays, offset):
    counter = mod.Coincidences(PAIRS, window, delays_ps=delays, accidental_offset_ps=offset,
                               channels=CHANNELS)
    per_chunk = [counter.process(c) for c in chunks]
    return counter, per_chunk


@settings(max_examples=300, deadline=None)
@given(data=st.data(), block=tag_streams(), window=window_st, delays=delays_st)
def test_two_fold_native_equals_reference_and_brute_force(data, block, window, delays):
    offset = (2 * window + data.draw(st.integers(1, 400))) * data.draw(st.sampled_from([1, -1]))
    chunks = data.draw(chunkings(block))
    c_nat, per_chunk = run_coincidences(native, chunks, window, delays, offset)
    c_ref, _ = run_coincidences(reference, chunks, window, delays, offset)
    c_whole, _ = run_coincidences(native, [block], window, delays, offset)

    expected = [len(brute_pair_deltas(block, a, b, -window, window, delays)) for a, b in PAIRS]
    expected_acc = [len(brute_pair_deltas(block, a, b, offset - window, offset + window, delays))
                    for a, b in PAIRS]
    for c in (c_nat, c_ref, c_whole):
        assert c.totals.coincidences.tolist() == expected
        assert c.totals.accidentals.tolist() == expected_acc
    assert sum(r.coincidences for r in per_chunk).tolist() == expected
    singles = [int(((block["type"] == 0) & (block["channel"] == ch)).sum()) for ch in CHANNELS]
    assert c_nat.totals.singles.tolist() == singles == c_ref.totals.singles.tolist()
    assert c_nat.stats == c_ref.stats == c_whole.stats


@settings(max_examples=200, deadline=None)
@given(data=st.data(), block=tag_streams(channels=(1, 2)),
       bin_width=st.sampled_from([1, 3, 10, 64]), n_bins=st.integers(1, 40),
       lower=st.one_of(st.none(), st.integers(-600, 200)), delays=st.dictionaries(
           st.sampled_from((1, 2)), st.integers(-200, 200), max_size=2))
def test_correlation_native_equals_reference_and_brute_force(data, block, bin_width, n_bins, lower,
                                                             delays):
    chunks = data.draw(chunkings(block))
    results = []
    for mod in BACKENDS:
        corr = mod.Correlation(1, 2, bin_width, n_bins, lower_edge_ps=lower, delays_ps=delays)
        for c in chunks:
            corr.process(c)
        results.append(corr)
    lo = int(results[0].bin_edges_ps[0])
    dts = brute_pair_deltas(block, 1, 2, lo, lo + n_bins * bin_width - 1, delays)
    expected = np.bincount((np.array(dts, np.int64) - lo) // bin_width, minlength=n_bins)
    for corr in results:
        assert corr.histogram.tolist() == expected.tolist()


@settings(max_examples=300, deadline=None)
@given(data=st.data(), block=tag_streams(), window=window_st, delays=delays_st,
       min_fold=st.integers(1, 4))
def test_nfold_native_equals_reference_and_brute_force(data, block, window, delays, min_fold):
    chunks = data.draw(chunkings(block))
    clusters = brute_clusters(block, list(CHANNELS), window, delays)
    expected_hist = np.zeros(16, np.int64)
    for _, mask in clusters:
        expected_hist[mask] += 1
    expected_events = [(t, m) for t, m in clusters if bin(m).count("1") >= min_fold]
    for mod in BACKENDS:
        nf = mod.NFold(CHANNELS, window, delays_ps=delays, min_fold=min_fold)
        events = [nf.process(c).events for c in chunks] + [nf.flush().events]
        got = [(int(t), int(m)) for t, m in np.concatenate(events)]
        assert got == expected_events, mod.__name__
        assert nf.histogram.tolist() == expected_hist.tolist(), mod.__name__


@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_tags_exactly_at_the_window_edges_count(mod):
    # dt = -w, +w count (inclusive); -w-1, w+1 do not.
    w = 100
    t = [0, 1000 - w - 1, 2000 - w, 3000 + w, 4000 + w + 1]
    block = native.tag_block(np.array([0, 1000, 2000, 3000, 4000, *t[1:]]),
                             np.array([1, 1, 1, 1, 1, 2, 2, 2, 2]))
    block = native.sort_block(block)
    c = mod.Coincidences([(1, 2)], w)
    c.process(block)
    # pairs: (0 ch1 with nothing near), (2000, 1900) dt=-100, (3000, 3100) dt=+100
    assert c.totals.coincidences.tolist() == [2]


@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_equal_timestamps_pair_and_cluster_once(mod):
    block = native.tag_block(np.array([5, 5, 5, 5]), np.array([2, 1, 2, 1]))
    c = mod.Coincidences([(1, 2)], 0)
    c.process(block)
    assert c.totals.coincidences.tolist() == [4]  # all pairs: 2 x 2
    nf = mod.NFold([1, 2], 0, min_fold=2)
    ev = np.concatenate([nf.process(block).events, nf.flush().events])
    assert [(int(t), int(m)) for t, m in ev] == [(5, 3)]


@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_coincidences_straddling_every_chunk_boundary(mod):
    # Pairs (1 at 10k, 2 at 10k + 7): cut between every pair's two tags.
    n = 500
    t = np.repeat(np.arange(n, dtype=np.int64) * 10_000, 2) + np.tile([0, 7], n)
    block = native.tag_block(t, np.tile([1, 2], n))
    chunks = split(block, list(range(1, 2 * n, 2)))
    c = mod.Coincidences([(1, 2)], 10)
    for ch in chunks:
        c.process(ch)
    assert c.totals.coincidences.tolist() == [n]
    nf = mod.NFold([1, 2], 10)
    events = [nf.process(ch).events for ch in chunks] + [nf.flush().events]
    assert len(np.concatenate(events)) == n


@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_one_tag_and_empty_chunks_equal_whole_stream(mod):
    rng = np.random.default_rng(7)
    t = np.sort(rng.integers(0, 200_000, 2000))
    block = native.sort_block(native.tag_block(t, rng.integers(1, 5, t.size)))
    one_by_one = [block[i:i + 1] for i in range(block.size)]
    with_empties = [x for b in one_by_one for x in (b, block[:0])]
    whole = mod.Coincidences(PAIRS, 60, delays_ps={1: -90, 4: 130}, accidental_offset_ps=500)
    whole.process(block)
    pieces = mod.Coincidences(PAIRS, 60, delays_ps={1: -90, 4: 130}, accidental_offset_ps=500)
    for ch in with_empties:
        pieces.process(ch)
    assert pieces.totals.coincidences.tolist() == whole.totals.coincidences.tolist()
    assert pieces.totals.accidentals.tolist() == whole.totals.accidentals.tolist()


def test_large_random_stream_many_channels_native_equals_reference():
    """16 channels, 40 pairs, delays of both signs, accidentals; 400k tags in uneven chunks."""
    rng = np.random.default_rng(11)
    n = 400_000
    channels = list(range(16))
    t = np.cumsum(rng.exponential(25.0, n)).astype(np.int64)  # 40 tags/ns across channels
    block = native.sort_block(native.tag_block(t, rng.integers(0, 16, n)))
    pairs = [(a, b) for a in range(8) for b in range(8, 16) if (a + b) % 3 == 0][:40]
    delays = {c: int(d) for c, d in zip(channels, rng.integers(-2000, 2000, 16), strict=True)}
    cuts = sorted(rng.integers(0, n, 30).tolist())
    counters = [m.Coincidences(pairs, 500, delays_ps=delays, accidental_offset_ps=-7000,
                               channels=channels) for m in BACKENDS]
    for chunk in split(block, cuts):
        for c in counters:
            c.process(chunk)
    nat, ref = (c.totals for c in counters)
    assert nat.coincidences.tolist() == ref.coincidences.tolist()
    assert nat.accidentals.tolist() == ref.accidentals.tolist()
    assert nat.singles.tolist() == ref.singles.tolist()
    assert nat.coincidences.sum() > 10_000  # the comparison is not vacuous


def test_ring_growth_wide_histogram_dense_stream():
    """A correlation window holding more tags than the engine's initial ring (1024)."""
    rng = np.random.default_rng(3)
    t = np.sort(rng.integers(0, 8_000_000, 8_000))  # 0.5 tags/ns per channel
    block = native.sort_block(native.tag_block(t, rng.integers(1, 3, t.size)))
    hists = []
    for mod in BACKENDS:
        corr = mod.Correlation(1, 2, 1000, 8000, delays_ps={2: 5000})  # +-4 us: ~2000 tags deep
        for chunk in np.array_split(block, 9):
            corr.process(chunk)
        hists.append(corr.histogram)
    assert hists[0].tolist() == hists[1].tolist()
    assert hists[0].sum() > 5_000_000


def test_nfold_large_delay_reorders_far_beyond_initial_buffer():
    """A delay spanning thousands of tags exercises the reorder FIFOs' growth."""
    rng = np.random.default_rng(5)
    t = np.sort(rng.integers(0, 20_000_000, 200_000))
    block = native.sort_block(native.tag_block(t, rng.integers(1, 5, t.size)))
    delays = {1: 1_000_000, 2: -3_000, 4: 250}
    results = []
    for mod in BACKENDS:
        nf = mod.NFold(CHANNELS, 40, delays_ps=delays, min_fold=2)
        ev = [nf.process(c).events for c in np.array_split(block, 5)] + [nf.flush().events]
        results.append((np.concatenate(ev), nf.histogram))
    (ev_n, h_n), (ev_r, h_r) = results
    assert len(ev_n) > 1000
    assert np.array_equal(ev_n, ev_r)
    assert h_n.tolist() == h_r.tolist()
    assert int(h_n.sum()) > 100_000
