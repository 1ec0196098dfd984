"""Sequence numbers of the link layer: RFC 1982 serial-number arithmetic on ``SEQ_BITS`` bits,
absolute numbers (``lap·2^SEQ_BITS + seq``) and station epochs.

``SEQ_BITS`` is 32 where the link-layer draft (draft-dahlberg-ll-quantum) has 16: at 1 MHz
heralding 16 bits wrap every 65 ms, 32 bits every 71 minutes. The arithmetic is RFC 1982's,
unchanged; every width derives from ``SEQ_BITS``.
"""
from __future__ import annotations

import re
import secrets
import time

SEQ_BITS = 32                 # the draft says 16 bits (module docstring)
SEQ_MOD = 1 << SEQ_BITS
SEQ_HALF = SEQ_MOD >> 1       # RFC 1982: comparisons are defined for distances < 2^(SERIAL_BITS-1)
# Pairs older than this many numbers are expired (window safety: a pair id is never ambiguous).
# 2^30 = 18 minutes at 1 MHz; a link end may use a smaller window (LinkEnd ``max_pair_age``).
MAX_PAIR_AGE = SEQ_MOD >> 2
#: Absolute sequence numbers (``lap·SEQ_MOD + seq``) are integers in [0, MAX_ABS].
MAX_ABS = (1 << 63) - 1
MAX_LAP = MAX_ABS >> SEQ_BITS
EPOCH_RE = re.compile(r"[0-9a-f]{16}")


def seq_abs(seq: int, lap: int) -> int:
    """The absolute number of ``seq`` in lap ``lap``."""
    return lap * SEQ_MOD + seq


def new_epoch(now: float | None = None) -> str:
    """A fresh station epoch: 16 lowercase hex digits, the creation time (Unix ms, 44 bits)
    then 20 random bits, so that a later epoch sorts after an earlier one (as strings)."""
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 44) - 1)
    return f"{ms:011x}{secrets.randbits(20):05x}"


def seq_add(a: int, n: int) -> int:
    """``a + n`` in the sequence space (RFC 1982 §3.1, addition modulo 2^SEQ_BITS)."""
    return (a + n) % SEQ_MOD


def seq_diff(a: int, b: int) -> int:
    """Forward distance from ``b`` to ``a``: ``(a − b) mod 2^SEQ_BITS``, in [0, SEQ_MOD)."""
    return (a - b) % SEQ_MOD


def seq_lt(a: int, b: int) -> bool:
    """RFC 1982 §3.2 serial comparison ``a < b``: ``0 < (b − a) mod SEQ_MOD < SEQ_HALF``.

    At distance exactly ``SEQ_HALF`` the comparison is undefined; it returns False both ways.
    """
    return 0 < seq_diff(b, a) < SEQ_HALF


def seq_in_range(s: int, lo: int, hi: int) -> bool:
    """True when ``s`` lies in the half-open serial range ``[lo, hi)`` (draft ERR Seq-low
    inclusive, Seq-high exclusive)."""
    return seq_diff(s, lo) < seq_diff(hi, lo)
