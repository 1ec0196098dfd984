"""The simulator's C random streams (xoshiro256** + ziggurat) against the exact distributions.

Fixed seeds, so each check is deterministic; the thresholds are the 0.1 % critical values (KS:
1.95/sqrt(n)), so a correct generator fails one of them about once in a thousand seeds, and a
wrong one (bad tables, a shared bit, a skewed tail) fails them all.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from qnode.native import SimRandom

N = 400_000
KS_CRIT = 1.95 / math.sqrt(N)


def ks_statistic(sample: np.ndarray, cdf) -> float:
    x = np.sort(sample)
    f = cdf(x)
    i = np.arange(1, x.size + 1)
    return float(max(np.max(i / x.size - f), np.max(f - (i - 1) / x.size)))


def normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def test_uniform_is_uniform_on_the_open_unit_interval():
    u = SimRandom(1).uniform(N)
    assert 0 < u.min() and u.max() < 1
    assert ks_statistic(u, lambda x: x) < KS_CRIT


def test_normal_matches_the_normal_cdf_moments_and_tails():
    z = SimRandom(2).normal(N)
    assert ks_statistic(z, normal_cdf) < KS_CRIT
    assert abs(z.mean()) < 3 / math.sqrt(N)
    assert abs(z.var() - 1) < 3 * math.sqrt(2 / N)
    kurtosis = np.mean(z**4) / z.var() ** 2
    assert abs(kurtosis - 3) < 3 * math.sqrt(24 / N)
    # beyond the ziggurat's base strip (r = 3.44): the tail branch must be right
    p_tail = 2 * (1 - float(normal_cdf(np.array([3.44]))[0]))
    n_tail = int(np.count_nonzero(np.abs(z) > 3.44))
    assert abs(n_tail - N * p_tail) < 4 * math.sqrt(N * p_tail)
    assert np.count_nonzero(z > 0) == pytest.approx(N / 2, abs=4 * math.sqrt(N / 4))


def test_exponential_matches_the_exponential_cdf_and_tail():
    e = SimRandom(3).exponential(N)
    assert e.min() > 0
    assert ks_statistic(e, lambda x: 1 - np.exp(-x)) < KS_CRIT
    n_tail = int(np.count_nonzero(e > 7.697))  # the ziggurat's tail region
    p_tail = math.exp(-7.697)
    assert abs(n_tail - N * p_tail) < 4 * math.sqrt(N * p_tail) + 2


def test_sorted_uniform_is_sorted_in_range_and_uniform():
    lo, hi = -5_000_000_000, 7_000_000_000_000
    t = SimRandom(4).sorted_uniform(N, lo, hi)
    assert t.dtype == np.int64 and np.all(np.diff(t) >= 0)
    assert lo <= t[0] and t[-1] < hi
    assert ks_statistic((t - lo) / (hi - lo), lambda x: x) < KS_CRIT
    # the gaps of a Poisson process are exponential
    gaps = np.diff(t) / ((hi - lo) / N)
    assert ks_statistic(gaps, lambda x: 1 - np.exp(-x)) < KS_CRIT


def test_streams_are_deterministic_independent_and_copyable():
    a, b = SimRandom(7), SimRandom(7)
    assert np.array_equal(a.normal(1000), b.normal(1000))
    c = a.copy()
    assert np.array_equal(a.uniform(10), c.uniform(10))
    x, y = SimRandom(8).uniform(N), SimRandom(9).uniform(N)
    assert abs(np.corrcoef(x, y)[0, 1]) < 4 / math.sqrt(N)
    # successive values of one stream are uncorrelated too
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 4 / math.sqrt(N)
