"""Universal hashing of key blocks: Toeplitz matrices, for verification and privacy amplification.

A Toeplitz matrix T (m × n over GF(2)) is fixed by the n + m − 1 bits of its first column and
row, ``seed``: T[i, j] = seed[i − j + n − 1]. The family of all of them is two-universal (Carter
and Wegman 1979; Krawczyk 1994): two different n-bit inputs collide with probability 2⁻ᵐ over
the seed. That one property serves twice:

* **verification** — both ends hash their corrected block to ``m`` = :func:`verification_bits`
  bits with the same fresh seed; blocks that still differ pass with probability ≤ 2⁻ᵐ = ε_cor;
* **privacy amplification** — the leftover hash lemma turns a block with enough smooth
  min-entropy into ``m`` = ℓ nearly uniform bits (ℓ from :mod:`.finite_key`).

T·x is a slice of the (circular) convolution of ``seed`` and x, computed with real FFTs in
float64 (or, for a short tag, one float32 matrix-vector product): every sum is an integer of at
most n, and the rounding error stays far below 1/2 for the blocks used here (the tests check
the products bit for bit against exact ones up to 4·10⁶ bits).
:func:`expand_seed` turns a short public seed into the n + m − 1 bits with SHAKE-256 (FIPS 202),
so that a block's messages carry 32 bytes instead of a second block; the choice of the hash is
then pseudo-random (docs/physicists/keys.md states the assumption).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import scipy.fft  # type: ignore[import-untyped]

#: Bytes of the public seed a hash is expanded from (:func:`expand_seed`).
SEED_BYTES = 32


def _check_bits(name: str, bits: np.ndarray) -> np.ndarray:
    arr = np.asarray(bits)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of bits, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ValueError(f"{name} must hold only 0 and 1")
    return arr.astype(np.uint8, copy=False)


def expand_seed(seed: bytes, n_bits: int, label: bytes) -> np.ndarray:
    """``n_bits`` bits (uint8 0/1) from the public ``seed`` (:data:`SEED_BYTES`) by SHAKE-256 of
    ``label`` + ``seed``: the label keeps the verification and amplification hashes of one block
    apart."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a hash seed has {SEED_BYTES} bytes, got {len(seed)}")
    if n_bits < 0:
        raise ValueError(f"n_bits must be >= 0, got {n_bits}")
    stream = hashlib.shake_256(label + b"\0" + seed).digest((n_bits + 7) // 8)
    return np.unpackbits(np.frombuffer(stream, dtype=np.uint8), count=n_bits)


#: up to this many output bits, T·x is m dot products (cheaper than the FFTs of a long block)
DIRECT_MAX_BITS = 64


def toeplitz_hash(bits: np.ndarray, seed_bits: np.ndarray, m: int, *,
                  method: str = "auto") -> np.ndarray:
    """T·x over GF(2) for the m × n Toeplitz matrix of ``seed_bits`` (n + m − 1 bits; module
    docstring) and the n bits ``bits``: m bits (uint8 0/1). ``method``: "fft", "direct" (m dot
    products, exact integer sums in float64) or "auto" (direct up to
    :data:`DIRECT_MAX_BITS` output bits)."""
    x = _check_bits("bits", bits)
    s = _check_bits("seed_bits", seed_bits)
    n = x.size
    if m < 0:
        raise ValueError(f"the output length must be >= 0, got {m}")
    if method not in ("auto", "fft", "direct"):
        raise ValueError(f"method: auto, fft or direct, got {method!r}")
    if m == 0 or n == 0:
        return np.zeros(m, dtype=np.uint8)
    if s.size != n + m - 1:
        raise ValueError(f"a {m} x {n} Toeplitz matrix needs {n + m - 1} seed bits, got {s.size}")
    if method == "direct" or (method == "auto" and m <= DIRECT_MAX_BITS):
        # y_i = sum_j r[m - 1 - i + j] x_j with r the reversed seed: the rows of r's sliding
        # windows times x, one matrix-vector product. Every partial sum is an integer <= n, so
        # float32 is exact up to 2^24 bits
        dtype = np.float32 if n <= 1 << 24 else np.float64
        r, xf = s[::-1].astype(dtype), x.astype(dtype)
        sums = (np.lib.stride_tricks.sliding_window_view(r, n) @ xf)[::-1]
        return (np.rint(sums).astype(np.int64) & 1).astype(np.uint8)
    # y_i = sum_j s[i - j + n - 1] x_j = (s * x)[i + n - 1]. A circular convolution of any
    # length L >= n + m - 1 gives it: the seed index i - j + n - 1 lies in [0, n + m - 2] for
    # every term, so nothing wraps; L is the next length with small prime factors (a third of
    # the power of two that holds the full linear convolution)
    size = scipy.fft.next_fast_len(n + m - 1, real=True)
    conv = scipy.fft.irfft(scipy.fft.rfft(s.astype(np.float64), size)
                           * scipy.fft.rfft(x.astype(np.float64), size), size)
    return (np.rint(conv[n - 1:n - 1 + m]).astype(np.int64) & 1).astype(np.uint8)


def verification_bits(eps_cor: float) -> int:
    """Hash length (bits) whose collision probability 2⁻ᵐ is at most ``eps_cor``."""
    if not 0.0 < eps_cor < 1.0:
        raise ValueError(f"eps_cor must lie in (0, 1), got {eps_cor}")
    return math.ceil(-math.log2(eps_cor))


def verification_tag(bits: np.ndarray, seed: bytes, eps_cor: float) -> bytes:
    """The verification hash of a corrected block (:func:`verification_bits` of ``eps_cor``
    bits, packed, big-endian bit order) under the public ``seed``."""
    x = _check_bits("bits", bits)
    m = verification_bits(eps_cor)
    tag = toeplitz_hash(x, expand_seed(seed, x.size + m - 1, b"qnode-verify"), m)
    return np.packbits(tag).tobytes()


def amplify(bits: np.ndarray, seed: bytes, length: int) -> np.ndarray:
    """Privacy amplification: the ``length`` secret bits (uint8 0/1) of a verified block under the
    public ``seed``."""
    x = _check_bits("bits", bits)
    if length > x.size:
        raise ValueError(f"cannot amplify {x.size} bits to {length}")
    return toeplitz_hash(x, expand_seed(seed, x.size + length - 1, b"qnode-amplify"), length)
