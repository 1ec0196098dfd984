"""Detection times on the wire, and nothing else: one chunk of a node's tag times as a compact
JSON body, for the counting node of an M link to find cross-node coincidences (QKD).

The peer's channels hold its outcomes (the key), so a QKD node must never send them: this body
carries times only (:mod:`qnode.daemon.bus.tagwire` carries times and channels, for Bell tests
and calibration). Bases are exchanged later, for coincident events only (sifting), naming the
peer's tags by their index in this stream (see :class:`qnode.native.CrossPairs`).

Format (JSON object; sizes checked before anything is decoded)::

    {"link": str, "chunk": int, "codec": "rice-b85/1",
     "n": int,          # number of times, 0 <= n <= MAX_TAGS
     "t0_ps": int,      # first time (ps, own clock; 0 when n = 0), in [0, 2**62)
     "t_end_ps": int,   # the stream has no more tags before this time (ps), >= the last time
     "k": int,          # Rice parameter, 0..48
     "dt": str,         # base85 (RFC 1924 alphabet, as base64.b85encode) of the Rice code
     ...extra}          # caller's fields (they must not reuse the names above)

The Rice code holds the n - 1 gaps g = t[i] - t[i-1] >= 0 (ps), least significant bit first:
q = g >> k zero bits, a one bit, the k low bits of g; a gap with q >= 32 (a paused stream) is
escaped as 32 zero bits and g in 64 bits; the last byte is padded with zero bits (the coder is
``qn_rice_encode`` in ``native/qcore.c``). k = max(0, floor(log2(mean gap * ln 2))) per chunk,
the optimum for geometric gaps (Gallager & van Voorhis, IEEE Trans. Inf. Theory 21 (1975) 228).
For Poisson tags at rate R the gaps are exponential with mean 1/R, entropy log2(e/R) bits (R in
tags/ps); Rice comes within ~0.03 bit of it, base85 adds 25 % (base64: 33 %). At 10 Mtags/s:
~2.26 bytes of code and ~2.83 bytes of JSON per tag (``benchmarks/timewire.py``), against
~4.2 for tagwire's deflated uint32 deltas.

A decoder facing hostile input: ``n`` is capped at :data:`MAX_TAGS`; the base85 text must be no
longer than the worst case for ``n`` before it is decoded; the decoded code must be long enough
for n - 1 gaps (at least k + 1 bits each) before the n times are allocated; the C decoder is
bounds-checked and rejects a code holding more or fewer gaps than declared, non-zero padding, a
needless escape, or a time outside [0, 2**62).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from qnode.native import b85decode, b85encode, rice_decode, rice_encode, rice_parameter

#: upper bound of times in one message (bounds what a hostile body can make us allocate)
MAX_TAGS = 4_000_000
#: the format tag in ``codec``
CODEC = "rice-b85/1"
#: Rice parameter range of the coder
MAX_K = 48
_TIME_LIMIT = 1 << 62
_FIELDS = ("link", "chunk", "codec", "n", "t0_ps", "t_end_ps", "k", "dt")


def _b85_len(n_bytes: int) -> int:
    """Length of base64.b85encode of n_bytes bytes (no padding: 5 characters per 4 bytes, a
    partial group of r bytes takes r + 1)."""
    full, rest = divmod(n_bytes, 4)
    return 5 * full + (rest + 1 if rest else 0)


def _max_code_bytes(n: int) -> int:
    """Worst case of the Rice code for n times: every gap escaped (12 bytes)."""
    return 12 * max(n - 1, 0)


def encode(times: np.ndarray, *, link: str, chunk: int, t_end_ps: int,
           extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body for sorted tag times (int64 ps, own clock, in [0, 2**62)); ``t_end_ps``: the
    stream has no more tags before it (>= the last time). ValueError for unsorted times, a time
    out of range, more than :data:`MAX_TAGS` times, or ``extra`` reusing a field name."""
    t = np.asarray(times)
    if t.dtype.kind not in "iu" or t.ndim != 1:
        raise ValueError(f"timewire: times must be a 1-D integer array (ps), got {t.dtype}")
    t = np.ascontiguousarray(t, dtype=np.int64)
    n = int(t.size)
    if n > MAX_TAGS:
        raise ValueError(f"timewire: at most {MAX_TAGS} times per message, got {n}")
    if not isinstance(t_end_ps, (int, np.integer)) or not 0 <= int(t_end_ps) <= _TIME_LIMIT:
        raise ValueError(f"timewire: t_end_ps must be an integer in [0, 2**62], got {t_end_ps!r}")
    if n and int(t[-1]) > int(t_end_ps):
        raise ValueError(f"timewire: t_end_ps ({t_end_ps}) is before the last time ({t[-1]})")
    clash = set(extra or {}) & set(_FIELDS)
    if clash:
        raise ValueError(f"timewire: extra reuses the body's fields {sorted(clash)}")
    k = rice_parameter(t)
    code = rice_encode(t, k)
    return {"link": link, "chunk": int(chunk), "codec": CODEC, "n": n,
            "t0_ps": int(t[0]) if n else 0, "t_end_ps": int(t_end_ps), "k": k,
            "dt": b85encode(code), **(extra or {})}


def _int_field(body: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = body.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"TIMES.{key}: expected an integer in [{lo}, {hi}], got {v!r:.80}")
    return v


def decode(body: Mapping[str, Any]) -> np.ndarray:
    """The sorted times (int64 ps) of a body; ValueError naming the field for any bad input."""
    if not isinstance(body, Mapping):
        raise ValueError(f"TIMES: expected a JSON object, got {type(body).__name__}")
    codec = body.get("codec")
    if codec != CODEC:
        raise ValueError(f"TIMES.codec: expected {CODEC!r}, got {codec!r:.80}")
    n = _int_field(body, "n", 0, MAX_TAGS)
    t0 = _int_field(body, "t0_ps", 0, _TIME_LIMIT - 1)
    t_end = _int_field(body, "t_end_ps", 0, _TIME_LIMIT)
    k = _int_field(body, "k", 0, MAX_K)
    if n == 0 and t0 != 0:
        raise ValueError(f"TIMES.t0_ps: expected 0 for an empty chunk, got {t0}")
    text = body.get("dt")
    if not isinstance(text, str):
        raise ValueError(f"TIMES.dt: expected base85 text, got {type(text).__name__}")
    if len(text) > _b85_len(_max_code_bytes(n) + 1):
        raise ValueError(f"TIMES.dt: {len(text)} characters is more than {n} times can need")
    try:
        code = b85decode(text)
    except ValueError as exc:  # also UnicodeEncodeError: not ASCII
        raise ValueError(f"TIMES.dt: not base85 ({exc})") from None
    try:
        times = rice_decode(code, n, t0, k)
    except ValueError as exc:
        raise ValueError(f"TIMES.dt: {exc}") from None
    if n and int(times[-1]) > t_end:
        raise ValueError(f"TIMES.t_end_ps: {t_end} is before the last time ({times[-1]})")
    return times
