"""The Rice coder of time gaps (qnode.native.rice_encode / rice_decode): lossless round trips on
random and edge-case streams, and a decoder that rejects every malformed code with ValueError
(never reads past the buffer, never accepts a count that does not match the code)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qnode import native

LIMIT = 1 << 62


def round_trip(t: np.ndarray, k: int | None = None) -> bytes:
    t = np.asarray(t, np.int64)
    k = native.rice_parameter(t) if k is None else k
    code = native.rice_encode(t, k)
    back = native.rice_decode(code, t.size, int(t[0]) if t.size else 0, k)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, t)
    return code


@pytest.mark.parametrize("rate_mcps", [1, 10, 100])
def test_poisson_round_trip_and_size(rate_mcps):
    rng = np.random.default_rng(rate_mcps)
    mean = 1e6 / rate_mcps
    t = np.cumsum(rng.exponential(mean, 200_000)).astype(np.int64)
    code = round_trip(t)
    bits = 8 * len(code) / (t.size - 1)
    entropy = np.log2(np.e * mean)
    assert entropy - 0.1 < bits < entropy + 0.3     # Rice is within ~0.03 bit of it


@pytest.mark.parametrize("times", [
    [], [0], [LIMIT - 1], [5, 5, 5, 5], [0, LIMIT - 1], [0, 1, 2, 3],
    [LIMIT - 10, LIMIT - 9, LIMIT - 1],
    [0, 10**12, 10**12 + 1, 3 * 10**12],            # paused stream: huge gaps (escapes)
], ids=lambda t: f"{len(t)}")
@pytest.mark.parametrize("k", [None, 0, 7, 48])
def test_edge_cases(times, k):
    round_trip(np.array(times, np.int64), k)


def test_escape_boundary():
    for k in (0, 3, 16, 48):
        for g in ((32 << k) - 1, 32 << k, (32 << k) + 1, (1 << 62) - 1):
            if g < LIMIT:
                round_trip(np.array([0, g], np.int64), k)


def test_rice_parameter():
    assert native.rice_parameter(np.array([], np.int64)) == 0
    assert native.rice_parameter(np.array([7], np.int64)) == 0
    # mean gap 100000 ps: floor(log2(100000 ln 2)) = 16
    assert native.rice_parameter(np.arange(0, 10**7, 100_000)) == 16
    assert native.rice_parameter(np.array([0, 1], np.int64)) == 0
    assert native.rice_parameter(np.array([0, LIMIT - 1], np.int64)) == 48


@pytest.mark.parametrize("times, k", [
    ([3, 2], 0), ([-1, 2], 0), ([0, LIMIT], 0), ([0, 1], -1), ([0, 1], 49)])
def test_encoder_rejects(times, k):
    with pytest.raises(ValueError):
        native.rice_encode(np.array(times, np.int64), k)


def good_code() -> tuple[np.ndarray, bytes, int]:
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.exponential(1e5, 1000)).astype(np.int64)
    k = native.rice_parameter(t)
    return t, native.rice_encode(t, k), k


def test_decoder_rejects_wrong_count_truncation_and_extra_bytes():
    t, code, k = good_code()
    n, t0 = t.size, int(t[0])
    for bad_n in (n - 1, n + 1, n + 100, 0):
        with pytest.raises(ValueError):
            native.rice_decode(code, bad_n, t0, k)
    for cut in (1, 2, len(code) // 2, len(code) - 1):
        with pytest.raises(ValueError):
            native.rice_decode(code[:cut], n, t0, k)
    for extra in (b"\0", b"\x01", b"\xff" * 9):
        with pytest.raises(ValueError):
            native.rice_decode(code + extra, n, t0, k)
    with pytest.raises(ValueError):                   # non-zero padding bits
        native.rice_decode(code[:-1] + bytes([code[-1] | 0x80]), n, t0, k)
    with pytest.raises(ValueError):
        native.rice_decode(b"\0", 1, t0, k)          # one time: no code at all
    with pytest.raises(ValueError):
        native.rice_decode(code, n, t0, 49)
    with pytest.raises(ValueError):
        native.rice_decode(code, n, LIMIT, k)
    with pytest.raises(ValueError):
        native.rice_decode(code, n, -1, k)


def test_decoder_rejects_overflowing_and_needless_escapes():
    # gap 2**62 - 1 after t0 = 5 leaves the time range
    code = native.rice_encode(np.array([0, LIMIT - 1], np.int64), 0)
    with pytest.raises(ValueError):
        native.rice_decode(code, 2, 5, 0)
    # an escape (32 zero bits + 64 bits) holding a gap that needed none: g = 1 at k = 0
    bits = "0" * 32 + format(1, "064b")[::-1]
    bits += "0" * (-len(bits) % 8)
    raw = bytes(int(bits[i:i + 8][::-1], 2) for i in range(0, len(bits), 8))
    with pytest.raises(ValueError, match="malformed"):
        native.rice_decode(raw, 2, 0, 0)
    # an unending unary run: all zero bytes
    with pytest.raises(ValueError):
        native.rice_decode(b"\0" * 64, 3, 0, 0)


def test_decoder_survives_random_garbage():
    rng = np.random.default_rng(7)
    t, code, k = good_code()
    for _ in range(2000):
        junk = bytearray(code)
        for _ in range(int(rng.integers(1, 4))):
            junk[int(rng.integers(len(junk)))] ^= 1 << int(rng.integers(8))
        n = t.size + int(rng.integers(-2, 3))
        try:
            out = native.rice_decode(bytes(junk), max(n, 0), int(t[0]), k)
        except ValueError:
            continue
        assert out.size == max(n, 0)                  # decoded: a valid stream of that size
        assert np.all(np.diff(out) >= 0) and (out.size == 0 or out[-1] < LIMIT)
    for size in (0, 1, 5, 100):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        for n in (0, 1, 2, 50, 1000):
            try:
                native.rice_decode(data, n, 0, int(rng.integers(0, 49)))
            except ValueError:
                pass


def test_decoder_does_not_allocate_from_a_lying_count():
    # 10**12 times cannot fit in 3 bytes: refused before the output is allocated
    with pytest.raises(ValueError, match="cannot hold"):
        native.rice_decode(b"abc", 10**12, 0, 0)


sorted_times = st.lists(st.integers(0, LIMIT - 1), max_size=300).map(
    lambda xs: np.array(sorted(xs), np.int64))
clustered = st.tuples(st.integers(0, LIMIT // 2), st.lists(st.integers(0, 5000), max_size=300)
                      ).map(lambda p: p[0] + np.cumsum(np.array(p[1], np.int64)))


@settings(max_examples=300, deadline=None)
@given(t=st.one_of(sorted_times, clustered), k=st.one_of(st.none(), st.integers(0, 48)))
def test_round_trip_property(t, k):
    round_trip(t, k)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64))
def test_b85_is_the_stdlibs(data):
    import base64
    text = native.b85encode(data)
    assert text == base64.b85encode(data).decode("ascii")
    assert native.b85decode(text) == data


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="0123456789ABCXYZabcxyz!#$%&~|}{`^_@?=<>;-+*()\\\" ", max_size=23))
def test_b85_decoder_accepts_only_what_the_stdlib_accepts(text):
    import base64
    try:
        want = base64.b85decode(text)
    except ValueError:
        want = None
    try:
        got = native.b85decode(text)
    except ValueError:
        got = None
    if len(text) % 5 == 1:
        assert got is None                             # b85encode never writes it: refused
    else:
        assert got == want
