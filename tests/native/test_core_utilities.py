"""Stream utilities of the core (merge, dead time, binning, pair deltas) against the reference."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from qnode import native
from qnode.native import reference

sorted_times = arrays(np.int64, st.integers(0, 80), elements=st.integers(-5000, 5000)).map(np.sort)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(-3, 40), sorted_times, max_size=6))
def test_merge_channels_matches_reference(by_channel):
    got = native.merge_channels(by_channel)
    want = reference.merge_channels(by_channel)
    assert np.array_equal(got, want)
    native.check_block(got)
    # equal times come ordered by channel
    t, c = got["time"], got["channel"]
    same = t[1:] == t[:-1]
    assert np.all(c[1:][same] >= c[:-1][same])


def test_merge_channels_rejects_unsorted_input_naming_the_channel():
    with pytest.raises(ValueError, match="channel 5"):
        native.merge_channels({1: np.array([1, 2]), 5: np.array([3, 1])})


@settings(max_examples=200, deadline=None)
@given(times=sorted_times, dead=st.integers(0, 600), last=st.integers(-10**6, 0),
       cut=st.integers(0, 80))
def test_dead_time_filter_matches_reference_and_chains(times, dead, last, cut):
    keep, new_last = native.dead_time_filter(times, dead, last)
    keep_ref, last_ref = reference.dead_time_filter(times, dead, last)
    assert keep.tolist() == keep_ref.tolist() and new_last == last_ref
    k1, l1 = native.dead_time_filter(times[:cut], dead, last)
    k2, l2 = native.dead_time_filter(times[cut:], dead, l1)
    assert np.concatenate([k1, k2]).tolist() == keep.tolist() and l2 == new_last
    kept = times[keep]
    assert np.all(np.diff(kept) >= dead)


@settings(max_examples=200, deadline=None)
@given(times=arrays(np.int64, st.integers(0, 200), elements=st.integers(-10**9, 10**9)),
       t0=st.integers(-10**9, 10**9), bin_ps=st.integers(1, 10**6),
       log2_bins=st.integers(0, 10))
def test_bin_mod_matches_reference(times, t0, bin_ps, log2_bins):
    n = 1 << log2_bins
    assert np.array_equal(native.bin_mod(times, t0, bin_ps, n),
                          reference.bin_mod(times, t0, bin_ps, n))


def test_bin_mod_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        native.bin_mod(np.arange(5), 0, 1, 6)


@settings(max_examples=200, deadline=None)
@given(a=sorted_times, b=sorted_times, lo=st.integers(-3000, 3000), width=st.integers(0, 3000))
def test_pair_deltas_matches_reference(a, b, lo, width):
    got = native.pair_deltas(a, b, lo, lo + width)
    want = reference.pair_deltas(a, b, lo, lo + width)
    assert got.tolist() == want.tolist()
    brute = [int(y - x) for x in a for y in b if lo <= y - x <= lo + width]
    assert got.tolist() == brute


def test_pair_deltas_grows_its_buffer_for_dense_pairs():
    a = np.zeros(100, np.int64)
    b = np.zeros(100, np.int64)
    assert native.pair_deltas(a, b, 0, 0).size == 10_000


def test_sum_times_matches_numpy_including_wraparound():
    block = native.tag_block(np.array([2**62, 2**62, 2**62, 5], np.int64), np.zeros(4, np.int32))
    assert native.sum_times(block) == reference.sum_times(block)
    rng = np.random.default_rng(0)
    block = native.tag_block(np.sort(rng.integers(0, 2**40, 10_000)), np.zeros(10_000, np.int32))
    assert native.sum_times(block) == int(block["time"].sum())


def test_merge_handles_the_extremes_of_int64():
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    got = native.merge_channels({3: np.array([lo, hi]), 1: np.array([lo, 0, hi])})
    assert (got["time"].tolist() == [lo, lo, 0, hi, hi]
            and got["channel"].tolist() == [1, 3, 1, 1, 3])


@settings(max_examples=150, deadline=None)
@given(times=sorted_times, n_classes=st.integers(1, 6), seed=st.integers(0, 2**32 - 1),
       first_id=st.integers(0, 10**6))
def test_route_pairs_matches_reference(times, n_classes, seed, first_id):
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(rng.random(n_classes))
    cdf /= cdf[-1]
    route = rng.integers(-1, 3, (n_classes, 2)).astype(np.int32)
    route[:, 1] = np.where(route[:, 1] == route[:, 0], -1, route[:, 1])  # a photon per side
    n_both = int(rng.integers(0, n_classes + 1))
    stream = native.SimRandom(seed)
    got = native.route_pairs(times, stream.copy(), cdf, route, 3, n_both, first_id)
    want = reference.route_pairs(times, stream.copy(), cdf, route, 3, n_both, first_id)
    assert got[2] == want[2]
    for g, w in zip(got[0] + got[1], want[0] + want[1], strict=True):
        assert g.tolist() == w.tolist()


@settings(max_examples=200, deadline=None)
@given(pending=sorted_times, new=sorted_times, dark=sorted_times, seed=st.integers(0, 2**32 - 1),
       sigma=st.sampled_from([0.0, 3.0, 40.0]), delay=st.integers(-100, 100),
       clip=st.sampled_from([0.0, 5.0, 80.0]), horizon=st.integers(-6000, 6000),
       dead=st.integers(0, 300), last=st.integers(-10**6, 0))
def test_detector_finalize_matches_reference(pending, new, dark, seed, sigma, delay, clip, horizon,
                                             dead, last):
    stream = native.SimRandom(seed)
    args = ((pending, np.arange(pending.size, dtype=np.int64)),
            (new, 1000 + np.arange(new.size, dtype=np.int64)))
    rest = (sigma, delay, clip, dark, -2, horizon, dead, last)
    got = native.detector_finalize(*args, stream.copy(), *rest)
    want = reference.detector_finalize(*args, stream.copy(), *rest)
    for g, w in zip(got[:4], want[:4], strict=True):
        assert g.tolist() == w.tolist()
    assert got[4] == want[4]


@pytest.mark.parametrize("n_channels", [1, 2, 3, 5, 8, 17, 37])
def test_merge_channels_many_channels_matches_reference(n_channels):
    """Several merge rounds, odd run counts, ties across channels."""
    rng = np.random.default_rng(n_channels)
    by_channel = {int(c): np.sort(rng.integers(0, 5_000, rng.integers(0, 400)))
                  for c in rng.choice(np.arange(-50, 50), n_channels, replace=False)}
    assert np.array_equal(native.merge_channels(by_channel), reference.merge_channels(by_channel))


@pytest.mark.parametrize("bin_ps", [1, 3, 7, 2_000, 10**9 + 7])
def test_bin_mod_far_from_t0_uses_exact_arithmetic(bin_ps):
    """Beyond 2**52 ps from t0 a float estimate could be off; the result must stay exact."""
    rng = np.random.default_rng(bin_ps)
    big = np.concatenate([rng.integers(2**52 - 10**6, 2**52 + 10**6, 2_000),
                          rng.integers(2**61, 2**62, 2_000), -rng.integers(2**61, 2**62, 2_000)])
    for t0 in (0, 12345, -(2**52)):
        got = native.bin_mod(big, t0, bin_ps, 1 << 10)
        assert np.array_equal(got, reference.bin_mod(big, t0, bin_ps, 1 << 10))
