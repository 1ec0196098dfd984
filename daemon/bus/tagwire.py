"""Time tags on the wire: one chunk of a node's tags as a compact JSON body (``tags/<link>``).

An analyzer streams its tags to the node that counts cross-node coincidences (M-type links).
Times are sent as first time + zigzag-free deltas (the chunk is time-ordered, so deltas are
≥ 0) in little-endian uint32 where they fit (uint64 otherwise), channels as uint8, both deflated
(zlib level 1) and base64-coded: about 3–5 bytes per tag at lab rates instead of 16. The header
fields stay readable in ``mosquitto_sub``.

A QKD deployment would send times and bases only, never outcomes (channels); qnode's M-type
counting needs the outcomes to estimate the correlations, so this is for Bell tests, calibration
and test benches — say so in a deployment that uses it for key.
"""
from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from qnode.native import TagBlock, TagType

#: upper bound of tags in one message (bounds the decompressed size of hostile input)
MAX_TAGS = 4_000_000


def encode(block: TagBlock, *, link: str, chunk: int, extra: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    """The body of a ``TAGS`` message for the time tags (TIME_TAG records) of ``block``."""
    tags = block[block["type"] == TagType.TIME_TAG]
    times = np.ascontiguousarray(tags["time"], dtype=np.int64)
    channels = tags["channel"]
    if channels.size and (channels.min() < 0 or channels.max() > 255):
        raise ValueError("tagwire: channels must be 0..255")
    n = int(times.size)
    first = int(times[0]) if n else 0
    deltas = np.diff(times) if n else np.empty(0, np.int64)
    wide = bool(deltas.size and deltas.max() > 0xFFFFFFFF)
    raw = deltas.astype("<u8" if wide else "<u4").tobytes()
    return {"link": link, "chunk": int(chunk), "n": n, "t0_ps": first,
            "dt_bits": 64 if wide else 32,
            "dt": base64.b64encode(zlib.compress(raw, 1)).decode("ascii"),
            "ch": base64.b64encode(zlib.compress(channels.astype(np.uint8).tobytes(), 1)
                                   ).decode("ascii"),
            **(extra or {})}


def _inflate(body: Mapping[str, Any], key: str, size: int) -> bytes:
    data = body.get(key)
    if not isinstance(data, str):
        raise ValueError(f"TAGS.{key}: expected base64 text")
    try:
        packed = base64.b64decode(data, validate=True)
        d = zlib.decompressobj()
        raw = d.decompress(packed, size + 1)
    except (binascii.Error, zlib.error) as exc:
        raise ValueError(f"TAGS.{key}: {exc}") from None
    if len(raw) != size or d.unconsumed_tail:
        raise ValueError(f"TAGS.{key}: expected {size} bytes after inflating")
    return raw


def decode(body: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(times int64 ps, channels int32) of a ``TAGS`` body; ValueError naming the field."""
    n = body.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_TAGS:
        raise ValueError(f"TAGS.n: expected an integer in [0, {MAX_TAGS}], got {n!r}")
    t0 = body.get("t0_ps")
    if not isinstance(t0, int) or isinstance(t0, bool) or not 0 <= t0 < 1 << 62:
        raise ValueError(f"TAGS.t0_ps: expected a non-negative integer, got {t0!r}")
    bits = body.get("dt_bits")
    if bits not in (32, 64):
        raise ValueError(f"TAGS.dt_bits: expected 32 or 64, got {bits!r}")
    m = max(n - 1, 0)
    deltas = np.frombuffer(_inflate(body, "dt", m * bits // 8), "<u4" if bits == 32 else "<u8")
    channels = np.frombuffer(_inflate(body, "ch", n), np.uint8).astype(np.int32)
    if bits == 64 and deltas.size and deltas.max() >= 1 << 62:
        raise ValueError("TAGS.dt: a time step is out of range")
    times = np.empty(n, np.int64)
    if n:
        times[0] = t0
        np.cumsum(deltas.astype(np.int64), out=times[1:])
        times[1:] += t0
    return times, channels
