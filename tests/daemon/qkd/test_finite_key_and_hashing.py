"""The finite-key bound against its closed form and its limits, and the Toeplitz hashes against
exact matrix products (differential: FFT against direct GF(2) arithmetic)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.linalg import toeplitz

from qnode.daemon.qkd.finite_key import (
    asymptotic_fraction,
    binary_entropy,
    qber_threshold,
    secret_length,
    statistical_deviation,
)
from qnode.daemon.qkd.hashing import (
    SEED_BYTES,
    amplify,
    expand_seed,
    toeplitz_hash,
    verification_bits,
    verification_tag,
)


def _direct_toeplitz(x: np.ndarray, s: np.ndarray, m: int) -> np.ndarray:
    n = x.size
    # T[i, j] = s[i - j + n - 1]: first column s[n-1:], first row s[n-1::-1]
    t = toeplitz(s[n - 1:n - 1 + m], s[n - 1::-1]).astype(np.int64)
    return (t @ x.astype(np.int64) & 1).astype(np.uint8)


def test_binary_entropy_published_values():
    assert binary_entropy(0.5) == 1.0 and binary_entropy(0.0) == 0.0
    assert binary_entropy(0.11) == pytest.approx(0.4999, abs=1e-4)
    assert binary_entropy(0.03) == pytest.approx(0.194392, abs=1e-6)
    with pytest.raises(ValueError):
        binary_entropy(1.2)


def test_threshold_is_the_shor_preskill_11_percent():
    assert qber_threshold() == pytest.approx(0.110028, abs=1e-5)
    # worse error correction lowers it
    assert qber_threshold(1.16) < qber_threshold(1.0)


def test_secret_length_is_the_closed_form():
    n, k, q, leak = 10**6, 10**6, 0.03, 220_000
    mu = math.sqrt((n + k) / (n * k) * (k + 1) / k * math.log(2 / 1e-10))
    expected = math.floor(n * (1 - binary_entropy(q + mu)) - leak
                          - math.log2(2 / (1e-10 ** 2 * 1e-15)))
    got = secret_length(n, k, q, leak)
    assert got.length == expected and got.mu == pytest.approx(mu)
    assert got.mu == pytest.approx(statistical_deviation(n, k))


def test_secret_length_approaches_the_asymptotic_fraction():
    q, f = 0.03, 1.1
    fractions = []
    for n in (10**4, 10**5, 10**6, 10**7, 10**9):
        leak = math.ceil(f * n * binary_entropy(q))
        fractions.append(secret_length(n, n, q, leak).length / n)
    assert fractions == sorted(fractions)
    assert fractions[-1] == pytest.approx(asymptotic_fraction(q, q, f), abs=2e-3)
    # a small block at this QBER yields nothing (the finite-size cost eats it)
    assert secret_length(1000, 1000, q, math.ceil(f * 1000 * binary_entropy(q))).length == 0


def test_no_key_past_half_and_bad_arguments():
    assert secret_length(10**6, 10**6, 0.49, 0).length == 0
    with pytest.raises(ValueError):
        secret_length(0, 10, 0.01, 0)
    with pytest.raises(ValueError):
        secret_length(10, 10, 0.01, -1)


@pytest.mark.parametrize("n, m", [(1, 1), (7, 3), (64, 64), (1000, 1), (2000, 1500), (3, 9)])
def test_toeplitz_fft_is_the_matrix_product(n, m):
    rng = np.random.default_rng(n * 7919 + m)
    x = rng.integers(0, 2, n, dtype=np.uint8)
    s = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
    want = _direct_toeplitz(x, s, m)
    for method in ("auto", "fft", "direct"):
        assert np.array_equal(toeplitz_hash(x, s, m, method=method), want), method


def test_toeplitz_fft_exact_on_a_4_million_bit_block():
    """The worst case for the float FFT is an all-ones input and seed (every sum is as large
    as it gets); a random one too. Exact reference: the first 48 outputs by integer dots."""
    n, m = 4 * 10**6, 48
    rng = np.random.default_rng(5)
    for x, s in ((np.ones(n, np.uint8), np.ones(n + m - 1, np.uint8)),
                 (rng.integers(0, 2, n, dtype=np.uint8),
                  rng.integers(0, 2, n + m - 1, dtype=np.uint8))):
        want = np.array([int(np.dot(s[i:i + n][::-1].astype(np.int64), x)) & 1
                         for i in range(m)], dtype=np.uint8)
        assert np.array_equal(toeplitz_hash(x, s, m, method="fft"), want)
        assert np.array_equal(toeplitz_hash(x, s, m, method="direct"), want)


def test_verification_tags_agree_on_equal_blocks_and_differ_on_one_flip():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, 50_000, dtype=np.uint8)
    seed = bytes(rng.integers(0, 256, SEED_BYTES, dtype=np.uint8))
    assert verification_bits(1e-15) == 50
    tag = verification_tag(bits, seed, 1e-15)
    assert len(tag) == 7 and tag == verification_tag(bits.copy(), seed, 1e-15)
    flipped = bits.copy()
    flipped[12345] ^= 1
    assert verification_tag(flipped, seed, 1e-15) != tag


def test_collision_rate_of_short_tags_is_two_to_minus_m():
    """Two-universality measured: 8-bit tags of two fixed different blocks collide in about
    1/256 of the seeds (binomial: 4000 seeds, 15.6 expected, 3σ about 12)."""
    rng = np.random.default_rng(2)
    a = rng.integers(0, 2, 300, dtype=np.uint8)
    b = a.copy()
    b[[3, 77, 200]] ^= 1
    collisions = 0
    for _ in range(4000):
        s = rng.integers(0, 2, 300 + 8 - 1, dtype=np.uint8)
        collisions += np.array_equal(toeplitz_hash(a, s, 8), toeplitz_hash(b, s, 8))
    assert 4 <= collisions <= 28, collisions


def test_amplify_and_seed_expansion():
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2, 10_000, dtype=np.uint8)
    seed = bytes(SEED_BYTES)
    key = amplify(bits, seed, 6000)
    assert key.size == 6000 and np.array_equal(key, amplify(bits.copy(), seed, 6000))
    assert 0.45 < key.mean() < 0.55
    # the two labels give different hashes from one seed
    assert not np.array_equal(expand_seed(seed, 256, b"a"), expand_seed(seed, 256, b"b"))
    with pytest.raises(ValueError, match="32 bytes"):
        expand_seed(b"short", 10, b"a")
    with pytest.raises(ValueError, match="only 0 and 1"):
        amplify(np.array([0, 2, 1]), seed, 1)
    with pytest.raises(ValueError, match="cannot amplify"):
        amplify(bits, seed, 10_001)
