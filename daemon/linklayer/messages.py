"""Link-layer messages (those of the IETF Internet-Draft "The Link Layer service in a Quantum
Internet", draft-dahlberg-ll-quantum-03, and of the EGP of Dahlberg et al., SIGCOMM 2019) and the
sequence-number arithmetic they use (RFC 1982). Frozen dataclasses with ``to_dict()`` /
``from_dict()`` of plain JSON fields; malformed dicts raise ValueError naming the field. The state
machines that exchange them are in :mod:`qnode.daemon.linklayer.end`.

Sequence space (a documented extension of the draft): ``SEQ_BITS`` = 32 instead of the draft's 16.
At 1 MHz heralding 16 bits wrap every 65 ms; 32 bits wrap every 71 minutes. The arithmetic is
RFC 1982 serial-number arithmetic on ``SEQ_BITS`` bits, unchanged; every width below derives from
``SEQ_BITS``.

Absolute numbers and station epochs (the link layer's v1 wire, docs/integrators/link-layer.md): a
station that numbers its successes with an *epoch* (16 hex digits, time-ordered, drawn when its
state is created) sends each :class:`Herald` with the epoch, the *lap* of ``first_seq``
(absolute number ``lap·2^32 + first_seq``) and the epoch's first absolute number ``start``.
Link ends then name pairs by absolute numbers that never repeat, across laps and station
restarts; :class:`Expire` and :class:`ExpireAck` carry the laps of their numbers so an old one
cannot hit new pairs, and :class:`Epoch` lets the two ends agree where a new station epoch's
numbers go. Messages without these fields (a station or peer of the previous version) are still
read, with the RFC 1982 rule.

:class:`Herald` is columnar: a batch of consecutive successes travels as a first sequence number,
a count, numpy arrays of Bell-state codes and detection times, and a compact JSON encoding
(:meth:`Herald.to_dict`): 2-bit packed codes and zigzag delta-encoded times, base64, optionally
zlib. The codecs here (:func:`pack_codes`, :func:`encode_times`, ...) are also what
:meth:`qnode.daemon.linklayer.end.LinkEnd.snapshot` uses for its pair runs.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from qnode.daemon.linklayer.fields import (
    BASES,
    INT64_MAX,
    RANDOM_BASIS,
    bad,
    check_bool,
    check_choice,
    check_epoch,
    check_float,
    check_int,
    check_laps,
    check_name,
    check_seq,
    check_str,
    int_array,
)
from qnode.daemon.linklayer.sequence import MAX_ABS, MAX_LAP, SEQ_HALF, seq_abs, seq_add, seq_diff
from qnode.daemon.quantum.bell_states import BELL_CODES, BELL_STATES

# --------------------------------------------------------------------------- field validation

# --------------------------------------------------------------------------- messages


class ErrCode(enum.IntEnum):
    """ERR codes with the draft's 4-bit values."""

    UNSUPP = 0b0001    # at CREATE: cannot be served (e.g. fidelity unreachable)
    CREATE = 0b0010    # at CREATE: parse error
    REJECTED = 0b0011  # at CREATE (e.g. by purpose id) or later, rejected by the peer
    OTHER = 0b0100
    EXPIRE = 0b0101    # later: pairs already OK'd are gone (carries a [lo, hi) range)
    TIMEOUT = 0b0110   # later: Max Time exceeded


class _Message:
    """Common ``to_dict`` / ``from_dict`` of the frozen message dataclasses.

    ``to_dict`` gives plain JSON-able fields plus ``"type"``; ``from_dict`` rejects a missing,
    unknown or ill-typed field with a ValueError naming ``Class.field``.
    """

    TYPE: ClassVar[str]
    #: optional fields left out of ``to_dict`` when None (a previous version's reader knows the
    #: message without them)
    _OMIT_NONE: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.TYPE}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is None and f.name in self._OMIT_NONE:
                continue
            d[f.name] = _plain(v)
        return d

    @classmethod
    def _convert(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        name = cls.__name__
        if not isinstance(d, Mapping):
            raise ValueError(f"{name}: expected a mapping, got {type(d).__name__}")
        if "type" in d and d["type"] != cls.TYPE:
            raise bad(name, "type", repr(cls.TYPE), d["type"])
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(fields) - {"type"})
        if unknown:
            raise ValueError(f"{name}.{unknown[0]}: unknown field")
        kwargs: dict[str, Any] = {}
        for fname, f in fields.items():
            if fname in d:
                kwargs[fname] = d[fname]
            elif f.default is dataclasses.MISSING:
                raise ValueError(f"{name}.{fname}: missing field")
        return cls(**cls._convert(kwargs))


def _plain(v: Any) -> Any:
    if isinstance(v, ErrCode):
        return v.name
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


@dataclass(frozen=True)
class Create(_Message):
    """CREATE (higher layer → link layer), the draft's fields.

    ``max_time_ms`` = 0 means no limit. ``tpe`` (the draft's TPE bit; "type" is the message
    discriminator in ``to_dict``): "K" create-and-keep, "M" measure-directly. ``priority`` 0 is
    served first (EGP strict priority), FIFO within a priority. ``consecutive`` (CON): one OK per
    pair as it arrives; otherwise all OKs together once ``number`` pairs are in memory at the same
    time. ``random_basis`` (RBC) applies to M requests.
    """

    TYPE: ClassVar[str] = "CREATE"
    remote_node: str
    min_fidelity: float
    max_time_ms: float
    purpose_id: int
    number: int
    tpe: Literal["K", "M"] = "K"
    priority: int = 0
    consecutive: bool = True
    atomic: bool = False
    random_basis: str = "none"

    def __post_init__(self) -> None:
        c = "Create"
        check_str(c, "remote_node", self.remote_node)
        check_float(c, "min_fidelity", self.min_fidelity, 0.0, 1.0)
        check_float(c, "max_time_ms", self.max_time_ms, 0.0)
        check_int(c, "purpose_id", self.purpose_id, 0, 0xFFFF)
        check_int(c, "number", self.number, 1, 0xFFFF)
        check_choice(c, "tpe", self.tpe, ("K", "M"))
        check_int(c, "priority", self.priority, 0, 7)
        check_bool(c, "consecutive", self.consecutive)
        check_bool(c, "atomic", self.atomic)
        check_choice(c, "random_basis", self.random_basis, RANDOM_BASIS)


@dataclass(frozen=True)
class Ack(_Message):
    """ACK: the request was accepted under ``create_id`` (16 bits, unique per node)."""

    TYPE: ClassVar[str] = "ACK"
    create_id: int

    def __post_init__(self) -> None:
        check_int("Ack", "create_id", self.create_id, 0, 0xFFFF)


#: The longest hold an OK states (ms): an hour. A longer one is stated as an hour, which
#: still holds (a promise of at least that long).
MAX_HOLD_MS = 3_600_000


@dataclass(frozen=True)
class Ok(_Message):
    """OK-K / OK-M for one pair, as in the draft. ``(link, seq)`` is the pair id.

    ``qubit``: the QDevice qubit (K) that holds this node's half, when the node binds its pairs
    to a quantum memory (the draft's logical qubit id). ``hold_ms`` (with ``qubit``): for how
    long (ms) from this OK the pair is the application's: this node does not reuse the qubit,
    and the far end keeps its half (the pair's cut-off), at least that long (absent: no cut-off
    limits it; see :func:`hold_ms`).

    K: ``goodness_time_ps`` is the herald time (ps) at which ``goodness`` applies; no outcome.
    M: ``outcome`` (0/1) and ``basis`` (key of :data:`BASES`); no time of goodness (outcomes do
    not decohere).
    """

    TYPE: ClassVar[str] = "OK"
    create_id: int
    link: str
    seq: int
    bell_state: str
    goodness: float
    purpose_id: int
    remote_node: str
    tpe: Literal["K", "M"] = "K"
    goodness_time_ps: int | None = None
    outcome: int | None = None
    basis: str | None = None
    qubit: int | None = None
    hold_ms: int | None = None

    def __post_init__(self) -> None:
        c = "Ok"
        if self.qubit is not None:
            check_int(c, "qubit", self.qubit, 0, 0xFFFF)
        if self.hold_ms is not None:
            if self.qubit is None:
                raise bad(c, "hold_ms", "None without a qubit", self.hold_ms)
            check_int(c, "hold_ms", self.hold_ms, 0, MAX_HOLD_MS)
        check_int(c, "create_id", self.create_id, 0, 0xFFFF)
        check_str(c, "link", self.link)
        check_seq(c, "seq", self.seq)
        check_choice(c, "bell_state", self.bell_state, BELL_STATES)
        check_float(c, "goodness", self.goodness, 0.0, 1.0)
        check_int(c, "purpose_id", self.purpose_id, 0, 0xFFFF)
        check_str(c, "remote_node", self.remote_node)
        check_choice(c, "tpe", self.tpe, ("K", "M"))
        if self.tpe == "K":
            check_int(c, "goodness_time_ps", self.goodness_time_ps, 0)
            if self.outcome is not None:
                raise bad(c, "outcome", "None for an OK-K", self.outcome)
            if self.basis is not None:
                raise bad(c, "basis", "None for an OK-K", self.basis)
        else:
            if self.goodness_time_ps is not None:
                raise bad(c, "goodness_time_ps", "None for an OK-M", self.goodness_time_ps)
            check_int(c, "outcome", self.outcome, 0, 1)
            check_choice(c, "basis", self.basis, BASES)


def hold_ms(seconds: float) -> int | None:
    """An OK's ``hold_ms`` for a hold of ``seconds`` (s): whole ms, rounded down so that the
    promise holds, at most :data:`MAX_HOLD_MS`; None for an unbounded hold."""
    if not math.isfinite(seconds):
        return None
    return min(MAX_HOLD_MS, max(0, math.floor(seconds * 1000.0)))


@dataclass(frozen=True)
class Err(_Message):
    """ERR, as in the draft. For EXPIRE: ``link``, ``[seq_lo, seq_hi)`` and ``origin`` (the node
    that decided the expiry) are required, and ``create_id`` is None when the range is not tied to a
    request (the draft's S flag: expire by sequence range). For other codes ``create_id`` is
    required and the range fields must be None."""

    TYPE: ClassVar[str] = "ERR"
    create_id: int | None
    code: ErrCode
    link: str | None = None
    seq_lo: int | None = None
    seq_hi: int | None = None
    origin: str | None = None

    def __post_init__(self) -> None:
        c = "Err"
        code = self.code
        if isinstance(code, str) and not isinstance(code, ErrCode) and code in ErrCode.__members__:
            object.__setattr__(self, "code", ErrCode[code])
        elif isinstance(code, int) and not isinstance(code, (bool, ErrCode)) and code in set(
                ErrCode):
            object.__setattr__(self, "code", ErrCode(code))
        elif not isinstance(code, ErrCode):
            raise bad(c, "code", f"an ERR code name or number {[e.name for e in ErrCode]}", code)
        if self.code is ErrCode.EXPIRE:
            if self.create_id is not None:
                check_int(c, "create_id", self.create_id, 0, 0xFFFF)
            check_str(c, "link", self.link)
            check_seq(c, "seq_lo", self.seq_lo)
            check_seq(c, "seq_hi", self.seq_hi)
            check_str(c, "origin", self.origin)
        else:
            check_int(c, "create_id", self.create_id, 0, 0xFFFF)
            for name in ("link", "seq_lo", "seq_hi", "origin"):
                if getattr(self, name) is not None:
                    raise bad(c, name, f"None for ERR_{self.code.name}", getattr(self, name))


@dataclass(frozen=True)
class Expire(_Message):
    """EXPIRE (end → peer end), the EGP's: pairs ``[seq_lo, seq_hi)`` of ``link`` are gone at
    ``origin``; the peer drops them too and answers :class:`ExpireAck`.

    ``lap_lo`` / ``lap_hi`` (both or neither): the laps of ``seq_lo`` / ``seq_hi``, so the range
    is the absolute ``[lap_lo·2^32 + seq_lo, lap_hi·2^32 + seq_hi)`` (any non-empty length): an
    EXPIRE delayed across a wrap of the 32-bit numbers cannot hit the next lap's pairs. Without
    laps (a previous version) the range is 1 .. 2^31 − 1 numbers, read with RFC 1982."""

    TYPE: ClassVar[str] = "EXPIRE"
    _OMIT_NONE: ClassVar[tuple[str, ...]] = ("lap_lo", "lap_hi")
    link: str
    seq_lo: int
    seq_hi: int
    origin: str
    lap_lo: int | None = None
    lap_hi: int | None = None

    def __post_init__(self) -> None:
        c = "Expire"
        check_str(c, "link", self.link)
        check_seq(c, "seq_lo", self.seq_lo)
        check_seq(c, "seq_hi", self.seq_hi)
        check_str(c, "origin", self.origin)
        r = self.abs_range if check_laps(c, ("lap_lo", "lap_hi"), (self.lap_lo, self.lap_hi)) \
            else None
        if r is not None:
            if r[1] <= r[0]:
                raise bad(c, "lap_hi", "an absolute range [lo, hi) of at least one number",
                           self.lap_hi)
            return
        n = seq_diff(self.seq_hi, self.seq_lo)
        if not 0 < n < SEQ_HALF:
            raise bad(c, "seq_hi", f"a range [seq_lo, seq_hi) of 1..{SEQ_HALF - 1} numbers",
                       self.seq_hi)

    @property
    def abs_range(self) -> tuple[int, int] | None:
        """The absolute ``[lo, hi)``, or None without laps."""
        if self.lap_lo is None or self.lap_hi is None:
            return None
        return seq_abs(self.seq_lo, self.lap_lo), seq_abs(self.seq_hi, self.lap_hi)


@dataclass(frozen=True)
class ExpireAck(_Message):
    """EXPIRE_ACK, the EGP's: the acknowledging end's ``expected_seq``; echoes the acknowledged
    range (the EGP echoes the queue id). ``lap``: the lap of ``expected_seq``; ``lap_lo`` /
    ``lap_hi``: the echoed EXPIRE's laps (all absent for a previous version)."""

    TYPE: ClassVar[str] = "EXPIRE_ACK"
    _OMIT_NONE: ClassVar[tuple[str, ...]] = ("lap", "lap_lo", "lap_hi")
    link: str
    expected_seq: int
    seq_lo: int
    seq_hi: int
    lap: int | None = None
    lap_lo: int | None = None
    lap_hi: int | None = None

    def __post_init__(self) -> None:
        c = "ExpireAck"
        check_str(c, "link", self.link)
        check_seq(c, "expected_seq", self.expected_seq)
        check_seq(c, "seq_lo", self.seq_lo)
        check_seq(c, "seq_hi", self.seq_hi)
        check_laps(c, ("lap",), (self.lap,))
        check_laps(c, ("lap_lo", "lap_hi"), (self.lap_lo, self.lap_hi))


@dataclass(frozen=True)
class Epoch(_Message):
    """EPOCH (end → peer end): this end follows the station epoch ``epoch`` of ``link``.

    ``pos``: the absolute number this end expected when it first saw the epoch; ``start``: the
    absolute number at which the epoch's first success is named (None while this end waits for
    the peer's EPOCH). Both ends take ``start = max(pos, peer's pos)``, or the peer's ``start``
    if it already has one (the larger if both have one), see :mod:`qnode.daemon.linklayer.end`."""

    TYPE: ClassVar[str] = "EPOCH"
    link: str
    epoch: str
    pos: int
    start: int | None = None

    def __post_init__(self) -> None:
        c = "Epoch"
        check_str(c, "link", self.link)
        check_epoch(c, "epoch", self.epoch)
        check_int(c, "pos", self.pos, 0, MAX_ABS)
        if self.start is not None:
            check_int(c, "start", self.start, 0, MAX_ABS)


# --------------------------------------------------------------------------- columnar codecs

#: Most successes one :class:`Herald` may carry; it also bounds what ``from_dict`` decompresses.
MAX_HERALD_COUNT = 1 << 22
#: Encodings of the binary fields: "raw" = base64; "zlib" = base64 of zlib (level 1).
CODECS = ("raw", "zlib")
_DT_WIDTHS = (1, 2, 4, 8)


def pack_codes(codes: np.ndarray) -> bytes:
    """2-bit packing of codes 0..3, four per byte, the first in the low bits; the unused high
    bits of the last byte are zero."""
    c = np.asarray(codes, np.uint8)
    pad = (-len(c)) % 4
    if pad:
        c = np.concatenate([c, np.zeros(pad, np.uint8)])
    q = c.reshape(-1, 4)
    return (q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6)).tobytes()


def unpack_codes(data: bytes, count: int, where: str) -> np.ndarray:
    """Inverse of :func:`pack_codes`; ValueError naming ``where`` on a wrong length or non-zero
    padding bits."""
    need = (count + 3) // 4
    if len(data) != need:
        raise ValueError(f"{where}: expected {need} bytes for {count} 2-bit codes, "
                         f"got {len(data)}")
    b = np.frombuffer(data, np.uint8)
    out = np.empty((len(b), 4), np.uint8)
    out[:, 0] = b & 3
    out[:, 1] = (b >> 2) & 3
    out[:, 2] = (b >> 4) & 3
    out[:, 3] = b >> 6
    flat = out.reshape(-1)
    if flat[count:].any():
        raise ValueError(f"{where}: non-zero padding bits after {count} codes")
    return flat[:count]


def encode_times(times: np.ndarray) -> tuple[int | None, int, bytes]:
    """(first time, bytes per delta, deltas): successive differences of int64 ``times`` (any
    order), zigzag-mapped to unsigned (0, −1, 1, −2, ... → 0, 1, 2, 3, ...) and stored little
    endian in the narrowest of 1, 2, 4, 8 bytes that holds them all. First time None and width
    0 for an empty array; width 0 for a single time."""
    t = np.asarray(times, np.int64)
    if len(t) == 0:
        return None, 0, b""
    if len(t) == 1:
        return int(t[0]), 0, b""
    d = np.diff(t)
    z = ((d << 1) ^ (d >> 63)).view(np.uint64)
    top = int(z.max())
    width = next(w for w in _DT_WIDTHS if w == 8 or top < 1 << (8 * w))
    return int(t[0]), width, z.astype(f"<u{width}", copy=False).tobytes()


def check_time_header(where: str, time0: Any, width: Any, count: int) -> int:
    """Check ``time0_ps`` and ``dt_bytes`` of ``count`` encoded times; returns the number of
    delta bytes expected. ValueError naming ``where.time0_ps`` / ``where.dt_bytes``."""
    if count == 0:
        if time0 is not None:
            raise bad(where, "time0_ps", "null for an empty batch", time0)
    else:
        check_int(where, "time0_ps", time0, 0, INT64_MAX)
    want_w = (0,) if count <= 1 else _DT_WIDTHS
    if isinstance(width, bool) or not isinstance(width, int) or width not in want_w:
        raise bad(where, "dt_bytes", f"one of {want_w} for {count} times", width)
    return max(count - 1, 0) * width


def decode_times(time0: Any, width: Any, data: bytes, count: int, where: str) -> np.ndarray:
    """Inverse of :func:`encode_times` for ``count`` times; ValueError naming ``where`` (+ the
    field) on a wrong type, width or length, on overflow, or on a negative time."""
    check_time_header(where, time0, width, count)
    if count == 0:
        out = np.zeros(0, np.int64)
    elif count == 1:
        out = np.array([time0], np.int64)
    else:
        need = (count - 1) * width
        if len(data) != need:
            raise ValueError(f"{where}.dt: expected {need} bytes ({count - 1} deltas of "
                             f"{width} bytes), got {len(data)}")
        z = np.frombuffer(data, f"<u{width}").astype(np.uint64)
        d = (z >> np.uint64(1)).view(np.int64) ^ -(z & np.uint64(1)).view(np.int64)
        out = np.empty(count, np.int64)
        out[0] = time0
        np.cumsum(d, out=out[1:])
        out[1:] += out[0]  # int64 wrap-around on overflow; detected below
        if time0 + (count - 1) * (1 << (8 * width - 1)) > INT64_MAX:
            prev, cur = out[:-1], out[1:]
            if (((d >= 0) & (cur < prev)) | ((d < 0) & (cur > prev))).any():
                raise ValueError(f"{where}.dt: times overflow int64")
        if int(out.min()) < 0:
            raise ValueError(f"{where}.dt: a negative time, {int(out.min())} ps")
    out.flags.writeable = False
    return out


def encode_bytes(data: bytes, codec: str = "raw") -> str:
    """``data`` as text: base64 ("raw") or base64 of zlib level 1 ("zlib")."""
    if codec == "zlib":
        data = zlib.compress(data, 1)
    elif codec != "raw":
        raise bad("encode_bytes", "codec", f"one of {CODECS}", codec)
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: Any, codec: str, size: int, where: str) -> bytes:
    """Inverse of :func:`encode_bytes` for exactly ``size`` bytes. Never produces more than
    ``size`` bytes (a decompression bomb stops there); ValueError naming ``where`` otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a base64 string, got {type(text).__name__}")
    if codec == "raw" and len(text) != 4 * ((size + 2) // 3):
        raise ValueError(f"{where}: expected {4 * ((size + 2) // 3)} base64 characters for "
                         f"{size} bytes, got {len(text)}")
    try:  # strict: only the alphabet, correct padding, nothing after it (checked in C)
        raw = binascii.a2b_base64(text, strict_mode=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise ValueError(f"{where}: not base64 ({exc})") from None
    if codec == "raw":
        return raw
    dec = zlib.decompressobj()
    try:
        out = dec.decompress(raw, size)
        if len(out) == size and not dec.eof:  # only the end of the stream may remain
            out += dec.decompress(dec.unconsumed_tail, 1)
    except zlib.error as exc:
        raise ValueError(f"{where}: not zlib data ({exc})") from None
    if len(out) != size or not dec.eof or dec.unused_data:
        raise ValueError(f"{where}: expected zlib data of exactly {size} bytes")
    return out


# --------------------------------------------------------------------------- heralds


@dataclass(frozen=True)
class HeraldEntry:
    """One heralded success: the station's ``mhp_seq``, the Bell state its BSM announced, and the
    detection time (ps). A per-entry view of a :class:`Herald` (``Herald.entries``)."""

    seq: int
    bell_state: str
    time_ps: int

    def __post_init__(self) -> None:
        c = "HeraldEntry"
        check_seq(c, "seq", self.seq)
        check_choice(c, "bell_state", self.bell_state, BELL_STATES)
        check_int(c, "time_ps", self.time_ps, 0)


@dataclass(frozen=True, eq=False)
class Herald(_Message):
    """The station's batch of successes on one link for one chunk (the EGP's MHP replies,
    batched), columnar.

    Success ``i`` has sequence number ``first_seq + i`` (mod ``SEQ_MOD``), Bell state
    ``BELL_STATES[bell_codes[i]]`` and detection time ``times_ps[i]`` (int64 ps, ≥ 0, on the
    station's time-tagger time base). ``next_seq`` is the station's counter after the batch and
    always equals ``first_seq + count``; an empty batch (``first_seq == next_seq``) is a
    heartbeat. The arrays are copied on construction and read-only. ``count`` ≤
    :data:`MAX_HERALD_COUNT`.

    JSON form (:meth:`to_dict`)::

        {"type": "HERALD", "link": "ab", "chunk": 12, "first_seq": 4000, "count": 3,
         "next_seq": 4003, "codec": "raw", "bell": "Lg==", "time0_ps": 1000000,
         "dt_bytes": 4, "dt": "wFwVAGCuCgA="}

    (codes psi+, psi-, psi+ at 1.0, 1.7 and 2.05 µs.)

    ``bell``: the codes 2-bit packed (:func:`pack_codes`); ``time0_ps``: the first time (null
    when empty); ``dt``: the ``count − 1`` successive differences, zigzag-mapped, ``dt_bytes``
    (0, 1, 2, 4 or 8; 0 iff count ≤ 1) little-endian bytes each (:func:`encode_times`);
    ``codec``: "raw" (base64) or "zlib" (base64 of zlib) for ``bell`` and ``dt``.

    A station with an epoch (all of ``epoch``, ``lap``, ``start``, or none of them) adds
    ``"epoch": "<16 hex digits>"``, ``"lap"`` (of ``first_seq``: the batch's absolute numbers are
    ``lap·2^32 + first_seq`` ...) and ``"start"`` (the absolute number the epoch began at); the
    ends then name pairs by absolute numbers (:mod:`qnode.daemon.linklayer.end`). The absolute
    numbers stay
    ≤ :data:`MAX_ABS`.
    """

    TYPE: ClassVar[str] = "HERALD"
    link: str
    chunk: int
    first_seq: int
    bell_codes: np.ndarray
    times_ps: np.ndarray
    next_seq: int
    epoch: str | None = None
    lap: int | None = None
    start: int | None = None

    _FIELDS: ClassVar[tuple[str, ...]] = (
        "link", "chunk", "first_seq", "count", "next_seq", "codec", "bell", "time0_ps",
        "dt_bytes", "dt")
    _EPOCH_FIELDS: ClassVar[tuple[str, ...]] = ("epoch", "lap", "start")

    def __post_init__(self) -> None:
        c = "Herald"
        check_str(c, "link", self.link)
        check_int(c, "chunk", self.chunk, 0)
        check_seq(c, "first_seq", self.first_seq)
        codes = int_array(c, "bell_codes", self.bell_codes, 0, len(BELL_STATES) - 1, np.uint8)
        times = int_array(c, "times_ps", self.times_ps, 0, INT64_MAX, np.int64)
        if len(times) != len(codes):
            raise ValueError(f"{c}.times_ps: expected {len(codes)} times (one per Bell code), "
                             f"got {len(times)}")
        if len(codes) > MAX_HERALD_COUNT:
            raise ValueError(f"{c}.bell_codes: at most {MAX_HERALD_COUNT} successes per "
                             f"batch, got {len(codes)}")
        check_seq(c, "next_seq", self.next_seq)
        if self.next_seq != seq_add(self.first_seq, len(codes)):
            raise bad(c, "next_seq", f"first_seq + count = "
                       f"{seq_add(self.first_seq, len(codes))}", self.next_seq)
        if self.epoch is None:
            for name in ("lap", "start"):
                if getattr(self, name) is not None:
                    raise bad(c, name, "None without an epoch", getattr(self, name))
        else:
            check_epoch(c, "epoch", self.epoch)
            check_int(c, "lap", self.lap, 0, MAX_LAP)
            check_int(c, "start", self.start, 0, MAX_ABS)
            if seq_abs(self.first_seq, self.lap) + len(codes) > MAX_ABS:  # type: ignore[arg-type]
                raise bad(c, "lap", f"absolute numbers up to {MAX_ABS}", self.lap)
        object.__setattr__(self, "bell_codes", codes)
        object.__setattr__(self, "times_ps", times)

    # ------------------------------------------------------------------ views

    @property
    def count(self) -> int:
        """Number of successes in the batch."""
        return len(self.bell_codes)

    @property
    def first_abs(self) -> int | None:
        """Absolute number of the first entry (of ``next_seq`` when empty); None without an
        epoch."""
        return None if self.lap is None else seq_abs(self.first_seq, self.lap)

    @property
    def next_abs(self) -> int | None:
        """Absolute number of ``next_seq``; None without an epoch."""
        return None if self.lap is None else seq_abs(self.first_seq, self.lap) + self.count

    @property
    def entries(self) -> tuple[HeraldEntry, ...]:
        """Per-entry view (one Python object per success: for tests and small batches)."""
        return tuple(HeraldEntry(seq_add(self.first_seq, i), BELL_STATES[c], t)
                     for i, (c, t) in enumerate(zip(self.bell_codes.tolist(),
                                                    self.times_ps.tolist(), strict=True)))

    @classmethod
    def from_entries(cls, link: str, chunk: int, entries: Iterable[HeraldEntry],
                     next_seq: int | None = None, *, epoch: str | None = None,
                     lap: int | None = None, start: int | None = None) -> Herald:
        """A batch from per-entry objects (consecutive sequence numbers). ``next_seq`` defaults
        to the last entry's seq + 1 and is required for an empty batch (heartbeat)."""
        es = tuple(entries)
        for i, e in enumerate(es):
            if not isinstance(e, HeraldEntry):
                raise bad("Herald", f"entries[{i}]", "a HeraldEntry", e)
            if i and e.seq != seq_add(es[i - 1].seq, 1):
                raise bad("Herald", f"entries[{i}].seq", "consecutive sequence numbers", e.seq)
        if not es:
            if next_seq is None:
                raise bad("Herald", "next_seq", "a sequence number for an empty batch", None)
            first = next_seq
        else:
            first = es[0].seq
            if next_seq is None:
                next_seq = seq_add(es[-1].seq, 1)
        return cls(link, chunk, first,
                   np.array([BELL_CODES[e.bell_state] for e in es], np.uint8),
                   np.array([e.time_ps for e in es], np.int64), next_seq, epoch, lap, start)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Herald):
            return NotImplemented
        return (self.link == other.link and self.chunk == other.chunk
                and self.first_seq == other.first_seq and self.next_seq == other.next_seq
                and (self.epoch, self.lap, self.start) == (other.epoch, other.lap, other.start)
                and np.array_equal(self.bell_codes, other.bell_codes)
                and np.array_equal(self.times_ps, other.times_ps))

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ JSON

    def to_dict(self, codec: str = "raw") -> dict[str, Any]:
        """The JSON form (class docstring). ``codec`` "raw" is the fastest (about 5.7 bytes of
        JSON per success at 1 µs mean spacing); "zlib" is about 20 % smaller and ~10× slower
        to encode."""
        time0, width, deltas = encode_times(self.times_ps)
        d = {"type": self.TYPE, "link": self.link, "chunk": self.chunk,
             "first_seq": self.first_seq, "count": self.count, "next_seq": self.next_seq,
             "codec": codec, "bell": encode_bytes(pack_codes(self.bell_codes), codec),
             "time0_ps": time0, "dt_bytes": width, "dt": encode_bytes(deltas, codec)}
        if self.epoch is not None:
            d.update(epoch=self.epoch, lap=self.lap, start=self.start)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Herald:
        """Parse and check the JSON form; ValueError naming ``Herald.<field>`` on anything
        malformed (hostile input included: it never decodes more than ``count`` allows)."""
        c = "Herald"
        if not isinstance(d, Mapping):
            raise ValueError(f"{c}: expected a mapping, got {type(d).__name__}")
        if "type" in d and d["type"] != cls.TYPE:
            raise bad(c, "type", repr(cls.TYPE), d["type"])
        unknown = sorted(set(d) - set(cls._FIELDS) - set(cls._EPOCH_FIELDS) - {"type"})
        if unknown:
            raise ValueError(f"{c}.{unknown[0]}: unknown field")
        for f in cls._FIELDS:
            if f not in d:
                raise ValueError(f"{c}.{f}: missing field")
        if any(f in d for f in cls._EPOCH_FIELDS):
            for f in cls._EPOCH_FIELDS:
                if f not in d:
                    raise ValueError(f"{c}.{f}: missing field (with {cls._EPOCH_FIELDS})")
            check_epoch(c, "epoch", d["epoch"])
            check_int(c, "lap", d["lap"], 0, MAX_LAP)
            check_int(c, "start", d["start"], 0, MAX_ABS)
        check_str(c, "link", d["link"])
        check_int(c, "chunk", d["chunk"], 0)
        check_seq(c, "first_seq", d["first_seq"])
        check_int(c, "count", d["count"], 0, MAX_HERALD_COUNT)
        check_seq(c, "next_seq", d["next_seq"])
        count = d["count"]
        if d["next_seq"] != seq_add(d["first_seq"], count):
            raise bad(c, "next_seq", f"first_seq + count = {seq_add(d['first_seq'], count)}",
                       d["next_seq"])
        check_choice(c, "codec", d["codec"], CODECS)
        codes = unpack_codes(decode_bytes(d["bell"], d["codec"], (count + 3) // 4, f"{c}.bell"),
                             count, f"{c}.bell")
        size = check_time_header(c, d["time0_ps"], d["dt_bytes"], count)
        times = decode_times(d["time0_ps"], d["dt_bytes"],
                             decode_bytes(d["dt"], d["codec"], size, f"{c}.dt"), count, c)
        return cls(d["link"], d["chunk"], d["first_seq"], codes, times, d["next_seq"],
                   d.get("epoch"), d.get("lap"), d.get("start"))


#: Test-pair bases and outcomes are strings of one character per pair; at most this many pairs.
MAX_TESTS = 4096
#: the most links a path may have (``[[paths]]``: at most MAX_HOPS − 1 repeaters)
MAX_HOPS = 64


@dataclass(frozen=True)
class TestOutcomes(_Message):
    """TESTS (end → peer end): this end measured the test pairs ``seqs`` of ``link`` (chosen at
    both ends by the same rule from the sequence number, see :mod:`qnode.daemon.klink.memory`) in
    ``bases``
    (one of X, Y, Z per pair) with ``outcomes`` (0/1 per pair; ``-`` when the pair could not be
    measured here). ``readout_error``: this end's read-out error probability, which the peer
    needs to correct the correlations."""

    __test__ = False   # not a pytest class
    TYPE: ClassVar[str] = "TESTS"
    link: str
    seqs: tuple[int, ...]
    bases: str
    outcomes: str
    readout_error: float = 0.0

    def __post_init__(self) -> None:
        c = "TestOutcomes"
        check_str(c, "link", self.link)
        if isinstance(self.seqs, list):
            object.__setattr__(self, "seqs", tuple(self.seqs))
        if not isinstance(self.seqs, tuple) or len(self.seqs) > MAX_TESTS:
            raise bad(c, "seqs", f"a list of at most {MAX_TESTS} sequence numbers", self.seqs)
        for s in self.seqs:
            check_seq(c, "seqs", s)
        n = len(self.seqs)
        for name, alphabet in (("bases", "XYZ"), ("outcomes", "01-")):
            v = getattr(self, name)
            if not isinstance(v, str) or len(v) != n or any(ch not in alphabet for ch in v):
                raise bad(c, name, f"a string of {n} characters from {alphabet!r}", v)
        check_float(c, "readout_error", self.readout_error, 0.0, 0.5)


@dataclass(frozen=True)
class Held(_Message):
    """HELD (end → peer end): this end bound pairs ``seqs`` of ``link`` to qubits at Unix times
    ``times`` (s). A pair is stored only where both ends bound it (the other end EXPIREs it
    otherwise), so a repeater swaps only pairs its peers have confirmed, and it knows from the
    times how long the peers' halves have been decaying."""

    TYPE: ClassVar[str] = "HELD"
    link: str
    seqs: tuple[int, ...]
    times: tuple[float, ...]

    def __post_init__(self) -> None:
        c = "Held"
        check_str(c, "link", self.link)
        for name in ("seqs", "times"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.seqs, tuple) or not 0 < len(self.seqs) <= MAX_TESTS:
            raise bad(c, "seqs", f"a list of 1 to {MAX_TESTS} sequence numbers", self.seqs)
        for s in self.seqs:
            check_seq(c, "seqs", s)
        if not isinstance(self.times, tuple) or len(self.times) != len(self.seqs):
            raise bad(c, "times", f"{len(self.seqs)} Unix times (s)", self.times)
        for t in self.times:
            check_float(c, "times", t, 0.0)


@dataclass(frozen=True)
class SwapResult(_Message):
    """SWAP_RES (repeater → both ends of a path): the repeater at place ``hop`` of ``path``
    (node ``nodes[hop]``) joined pair ``left_seq`` of ``left_link`` (towards ``nodes[0]``) and
    pair ``right_seq`` of ``right_link`` by a Bell-state measurement with result ``outcome``
    (qnode.daemon.klink.chain: each end puts the reports of one end-to-end pair together).

    Per side: ``*_bell`` the pair's announced Bell state; ``*_weights`` the link's estimate of
    it at binding (absolute Bell weights [Φ+, Φ−, Ψ+, Ψ−]); ``*_wait_s`` how long the
    repeater stored its half until the measurement (s); ``*_age_s`` how long the link's other
    end had stored its half by then (s, from its HELD). ``t1_s``/``t2_s``: the repeater's
    memory (s; ``t1_s`` = 0: no decay model); ``gate_fidelity``: the measurement's two-qubit
    gate (depolarising parameter); ``meas_fidelity``: per-bit read-out fidelity; ``time``:
    Unix time of the measurement (s)."""

    TYPE: ClassVar[str] = "SWAP_RES"
    path: str
    hop: int
    left_link: str
    left_seq: int
    right_link: str
    right_seq: int
    outcome: str
    left_bell: str
    right_bell: str
    left_weights: tuple[float, float, float, float]
    right_weights: tuple[float, float, float, float]
    left_wait_s: float
    right_wait_s: float
    left_age_s: float
    right_age_s: float
    t1_s: float
    t2_s: float
    gate_fidelity: float
    meas_fidelity: float
    time: float

    def __post_init__(self) -> None:
        c = "SwapResult"
        check_str(c, "path", self.path)
        check_int(c, "hop", self.hop, 1, MAX_HOPS - 1)
        for side in ("left", "right"):
            check_str(c, f"{side}_link", getattr(self, f"{side}_link"))
            check_seq(c, f"{side}_seq", getattr(self, f"{side}_seq"))
            check_choice(c, f"{side}_bell", getattr(self, f"{side}_bell"), BELL_STATES)
            name = f"{side}_weights"
            w = getattr(self, name)
            if isinstance(w, list):
                object.__setattr__(self, name, w := tuple(w))
            if (not isinstance(w, tuple) or len(w) != 4
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                               and math.isfinite(x) and 0.0 <= x <= 1.0 for x in w)
                    or abs(math.fsum(w) - 1.0) > 1e-6):
                raise bad(c, name, "4 probabilities summing to 1", w)
            for field in ("wait_s", "age_s"):
                check_float(c, f"{side}_{field}", getattr(self, f"{side}_{field}"), 0.0)
        check_choice(c, "outcome", self.outcome, BELL_STATES)
        check_float(c, "t1_s", self.t1_s, 0.0)
        check_float(c, "t2_s", self.t2_s, 0.0)
        if self.t1_s > 0 and not 0 < self.t2_s <= 2 * self.t1_s:
            raise bad(c, "t2_s", f"0 < T2 <= 2 T1 = {2 * self.t1_s}", self.t2_s)
        check_float(c, "gate_fidelity", self.gate_fidelity, 0.0, 1.0)
        check_float(c, "meas_fidelity", self.meas_fidelity, 0.0, 1.0)
        check_float(c, "time", self.time, 0.0)


#: the longest time a path may be kept without a refresh (s)
MAX_PATH_TTL_S = 3600.0


@dataclass(frozen=True)
class PathSetup(_Message):
    """PATH (a path's first node → every other node of it): keep path ``path`` along
    ``nodes`` (the ends first and last) over ``links`` (``links[k]`` joins ``nodes[k]`` and
    ``nodes[k + 1]``) for ``ttl_s`` more seconds, from Unix time ``time``; ``ttl_s`` = 0 removes
    it. The first node is the end whose id sorts first: it chose the route
    (:mod:`qnode.daemon.routing.paths`) and refreshes the path before it lapses. Identity-signed.
    """

    TYPE: ClassVar[str] = "PATH"
    path: str
    nodes: tuple[str, ...]
    links: tuple[str, ...]
    ttl_s: float
    time: float

    def __post_init__(self) -> None:
        c = "PathSetup"
        check_name(c, "path", self.path)
        for name in ("nodes", "links"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.nodes, tuple) or not 3 <= len(self.nodes) <= MAX_HOPS + 1:
            raise bad(c, "nodes", f"a list of 3 to {MAX_HOPS + 1} node ids", self.nodes)
        for n in self.nodes:
            check_name(c, "nodes", n)
        if len(set(self.nodes)) != len(self.nodes):
            raise bad(c, "nodes", "different node ids", self.nodes)
        if not isinstance(self.links, tuple) or len(self.links) != len(self.nodes) - 1:
            raise bad(c, "links", f"{len(self.nodes) - 1} link ids", self.links)
        for link in self.links:
            check_name(c, "links", link)
        if len(set(self.links)) != len(self.links):
            raise bad(c, "links", "different link ids", self.links)
        check_float(c, "ttl_s", self.ttl_s, 0.0, MAX_PATH_TTL_S)
        check_float(c, "time", self.time, 0.0)


@dataclass(frozen=True)
class PathRequest(_Message):
    """PATH_REQ (an end → the other end, whose id sorts first): route a path between us whose
    pairs can reach ``min_fidelity``; a CREATE for the sender's pairs with the other end waits
    for the PATH that follows."""

    TYPE: ClassVar[str] = "PATH_REQ"
    min_fidelity: float

    def __post_init__(self) -> None:
        check_float("PathRequest", "min_fidelity", self.min_fidelity, 0.0, 1.0)


PURIFICATION_PROTOCOLS = ("dejmps", "bbpssw")
#: A pair's bilateral rotations in a round
# (``qnode.daemon.quantum.bell_diagonal.BILATERAL_ROTATIONS``):
#: DEJMPS rotates about X; BBPSSW twirls with one of the six permutations of the errors.
TWIRLS = ("", "X", "Y", "Z", "XY", "YX")


@dataclass(frozen=True)
class Purify(_Message):
    """PURIFY (the link's leading end → the other end, on ``proto/<peer>``): round ``round`` of
    ``protocol`` on ``link``: pair ``kept`` keeps, pair ``sacrificed`` (both named by their
    link sequence numbers) is measured. ``kept_axes``/``sacrificed_axes``: each pair's
    bilateral rotations (:data:`TWIRLS`). The leader has done its side: ``outcome`` is its Z
    outcome of the sacrificed qubit, ``time`` (Unix s) when its gates ran."""

    TYPE: ClassVar[str] = "PURIFY"
    link: str
    round: int
    protocol: str
    kept: int
    sacrificed: int
    kept_axes: str
    sacrificed_axes: str
    outcome: int
    time: float

    def __post_init__(self) -> None:
        c = "Purify"
        check_str(c, "link", self.link)
        check_int(c, "round", self.round, 0, 0xFFFFFFFF)
        check_choice(c, "protocol", self.protocol, PURIFICATION_PROTOCOLS)
        check_seq(c, "kept", self.kept)
        check_seq(c, "sacrificed", self.sacrificed)
        if self.kept == self.sacrificed:
            raise bad(c, "sacrificed", "a pair other than kept", self.sacrificed)
        check_choice(c, "kept_axes", self.kept_axes, TWIRLS)
        check_choice(c, "sacrificed_axes", self.sacrificed_axes, TWIRLS)
        check_int(c, "outcome", self.outcome, 0, 1)
        check_float(c, "time", self.time, 0.0)


@dataclass(frozen=True)
class PurifyResult(_Message):
    """PURIFY_RES (the other end → the leader): its Z outcome of round ``round``'s sacrificed
    qubit (``"0"``/``"1"``), or ``"-"`` when it did not hold both pairs (both are then
    discarded at both ends); ``time``: Unix s when its gates ran."""

    TYPE: ClassVar[str] = "PURIFY_RES"
    link: str
    round: int
    outcome: str
    time: float

    def __post_init__(self) -> None:
        c = "PurifyResult"
        check_str(c, "link", self.link)
        check_int(c, "round", self.round, 0, 0xFFFFFFFF)
        check_choice(c, "outcome", self.outcome, ("0", "1", "-"))
        check_float(c, "time", self.time, 0.0)


Message = (Create | Ack | Ok | Err | Expire | ExpireAck | Epoch | Herald | TestOutcomes | Held
           | SwapResult | Purify | PurifyResult | PathSetup | PathRequest)
MESSAGE_TYPES: dict[str, type[_Message]] = {
    cls.TYPE: cls for cls in (Create, Ack, Ok, Err, Expire, ExpireAck, Epoch, Herald,
                              TestOutcomes, Held, SwapResult, Purify, PurifyResult, PathSetup,
                              PathRequest)}


def message_from_dict(d: Mapping[str, Any]) -> Message:
    """Parse any link-layer message by its ``"type"`` field."""
    if not isinstance(d, Mapping):
        raise ValueError(f"message: expected a mapping, got {type(d).__name__}")
    t = d.get("type")
    if t not in MESSAGE_TYPES:
        raise ValueError(f"message.type: expected one of {sorted(MESSAGE_TYPES)}, got {t!r}")
    return MESSAGE_TYPES[t].from_dict(d)


_A = TypeVar("_A")


def split_actions(actions: Iterable[_A]) -> tuple[list[_A], list[_A]]:
    """(up, to_peer): Ack/Ok/Err (and anything else) go to the requesting layer,
    Expire/ExpireAck/Epoch to the peer."""
    up: list[_A] = []
    peer: list[_A] = []
    for a in actions:
        (peer if isinstance(a, (Expire, ExpireAck, Epoch)) else up).append(a)
    return up, peer
