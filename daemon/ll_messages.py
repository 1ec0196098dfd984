"""Link-layer messages (draft-dahlberg-ll-quantum §1.1, via reference/qnet_anchors.md) and the
16-bit sequence-number arithmetic they use (RFC 1982). Frozen dataclasses with ``to_dict()`` /
``from_dict()`` of plain JSON fields; malformed dicts raise ValueError naming the field. The state
machines that exchange them are in :mod:`qnode.daemon.linklayer`.
"""
from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

# --------------------------------------------------------------------------- sequence numbers

SEQ_BITS = 16                 # draft §1.1: Sequence Number (16 bits)
SEQ_MOD = 1 << SEQ_BITS
SEQ_HALF = SEQ_MOD >> 1       # RFC 1982: comparisons are defined for distances < 2^(SERIAL_BITS-1)
MAX_PAIR_AGE = SEQ_MOD >> 2   # pairs older than this many numbers are expired (window safety)


def seq_add(a: int, n: int) -> int:
    """``a + n`` in the sequence space (RFC 1982 §3.1, addition modulo 2^SEQ_BITS)."""
    return (a + n) % SEQ_MOD


def seq_diff(a: int, b: int) -> int:
    """Forward distance from ``b`` to ``a``: ``(a − b) mod 2^SEQ_BITS``, in [0, SEQ_MOD)."""
    return (a - b) % SEQ_MOD


def seq_lt(a: int, b: int) -> bool:
    """RFC 1982 §3.2 serial comparison ``a < b``: ``0 < (b − a) mod 2^16 < 2^15``.

    At distance exactly 2^15 the comparison is undefined; it returns False both ways.
    """
    return 0 < seq_diff(b, a) < SEQ_HALF


def seq_in_range(s: int, lo: int, hi: int) -> bool:
    """True when ``s`` lies in the half-open serial range ``[lo, hi)`` (draft ERR Seq-low
    inclusive, Seq-high exclusive)."""
    return seq_diff(s, lo) < seq_diff(hi, lo)


# --------------------------------------------------------------------------- field validation

BELL_STATES = ("phi+", "phi-", "psi+", "psi-")
# draft §1.1 OK-M Basis: 000 Z, 001 X, 010 Y, 011 Z rotated +π/4 about Y, 100 Z rotated −π/4.
BASES = {"Z": 0, "X": 1, "Y": 2, "ZR+": 3, "ZR-": 4}
# draft §1.1 RBC: 00 none, 01 X/Z (BB84), 10 X/Y/Z (six-state), 11 CHSH.
RANDOM_BASIS = ("none", "xz", "xyz", "chsh")
PAIR_STATUSES = ("live", "delivered", "expired")


def _bad(cls: str, name: str, what: str, value: Any) -> ValueError:
    return ValueError(f"{cls}.{name}: expected {what}, got {value!r}")


def _check_int(cls: str, name: str, v: Any, lo: int, hi: int | None = None) -> None:
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)
    if not ok:
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise _bad(cls, name, f"an int {rng}", v)


def _check_float(cls: str, name: str, v: Any, lo: float, hi: float = math.inf) -> None:
    ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          and lo <= v <= hi)
    if not ok:
        raise _bad(cls, name, f"a finite number in [{lo}, {hi}]", v)


def _check_str(cls: str, name: str, v: Any) -> None:
    if not isinstance(v, str) or not v:
        raise _bad(cls, name, "a non-empty string", v)


def _check_choice(cls: str, name: str, v: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if not isinstance(v, str) or v not in choices:
        raise _bad(cls, name, f"one of {choices}", v)


def _check_bool(cls: str, name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise _bad(cls, name, "a bool", v)


def _check_seq(cls: str, name: str, v: Any) -> None:
    _check_int(cls, name, v, 0, SEQ_MOD - 1)


# --------------------------------------------------------------------------- messages


class ErrCode(enum.IntEnum):
    """ERR codes with the draft's 4-bit values (qnet_anchors §1.1)."""

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

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.TYPE}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            d[f.name] = _plain(getattr(self, f.name))
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
            raise _bad(name, "type", repr(cls.TYPE), d["type"])
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
    if isinstance(v, HeraldEntry):
        return [v.seq, v.bell_state, v.time_ps]
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


@dataclass(frozen=True)
class Create(_Message):
    """CREATE (higher layer → link layer), draft §1.1 fields.

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
        _check_str(c, "remote_node", self.remote_node)
        _check_float(c, "min_fidelity", self.min_fidelity, 0.0, 1.0)
        _check_float(c, "max_time_ms", self.max_time_ms, 0.0)
        _check_int(c, "purpose_id", self.purpose_id, 0, 0xFFFF)
        _check_int(c, "number", self.number, 1, 0xFFFF)
        _check_choice(c, "tpe", self.tpe, ("K", "M"))
        _check_int(c, "priority", self.priority, 0, 7)
        _check_bool(c, "consecutive", self.consecutive)
        _check_bool(c, "atomic", self.atomic)
        _check_choice(c, "random_basis", self.random_basis, RANDOM_BASIS)


@dataclass(frozen=True)
class Ack(_Message):
    """ACK: the request was accepted under ``create_id`` (16 bits, unique per node)."""

    TYPE: ClassVar[str] = "ACK"
    create_id: int

    def __post_init__(self) -> None:
        _check_int("Ack", "create_id", self.create_id, 0, 0xFFFF)


@dataclass(frozen=True)
class Ok(_Message):
    """OK-K / OK-M for one pair, draft §1.1. ``(link, seq)`` is the pair id.

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

    def __post_init__(self) -> None:
        c = "Ok"
        _check_int(c, "create_id", self.create_id, 0, 0xFFFF)
        _check_str(c, "link", self.link)
        _check_seq(c, "seq", self.seq)
        _check_choice(c, "bell_state", self.bell_state, BELL_STATES)
        _check_float(c, "goodness", self.goodness, 0.0, 1.0)
        _check_int(c, "purpose_id", self.purpose_id, 0, 0xFFFF)
        _check_str(c, "remote_node", self.remote_node)
        _check_choice(c, "tpe", self.tpe, ("K", "M"))
        if self.tpe == "K":
            _check_int(c, "goodness_time_ps", self.goodness_time_ps, 0)
            if self.outcome is not None:
                raise _bad(c, "outcome", "None for an OK-K", self.outcome)
            if self.basis is not None:
                raise _bad(c, "basis", "None for an OK-K", self.basis)
        else:
            if self.goodness_time_ps is not None:
                raise _bad(c, "goodness_time_ps", "None for an OK-M", self.goodness_time_ps)
            _check_int(c, "outcome", self.outcome, 0, 1)
            _check_choice(c, "basis", self.basis, BASES)


@dataclass(frozen=True)
class Err(_Message):
    """ERR, draft §1.1. For EXPIRE: ``link``, ``[seq_lo, seq_hi)`` and ``origin`` (the node that
    decided the expiry) are required, and ``create_id`` is None when the range is not tied to a
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
            raise _bad(c, "code", f"an ERR code name or number {[e.name for e in ErrCode]}", code)
        if self.code is ErrCode.EXPIRE:
            if self.create_id is not None:
                _check_int(c, "create_id", self.create_id, 0, 0xFFFF)
            _check_str(c, "link", self.link)
            _check_seq(c, "seq_lo", self.seq_lo)
            _check_seq(c, "seq_hi", self.seq_hi)
            _check_str(c, "origin", self.origin)
        else:
            _check_int(c, "create_id", self.create_id, 0, 0xFFFF)
            for name in ("link", "seq_lo", "seq_hi", "origin"):
                if getattr(self, name) is not None:
                    raise _bad(c, name, f"None for ERR_{self.code.name}", getattr(self, name))


@dataclass(frozen=True)
class Expire(_Message):
    """EXPIRE (end → peer end), EGP §1.2: pairs ``[seq_lo, seq_hi)`` of ``link`` are gone at
    ``origin``; the peer drops them too and answers :class:`ExpireAck`."""

    TYPE: ClassVar[str] = "EXPIRE"
    link: str
    seq_lo: int
    seq_hi: int
    origin: str

    def __post_init__(self) -> None:
        c = "Expire"
        _check_str(c, "link", self.link)
        _check_seq(c, "seq_lo", self.seq_lo)
        _check_seq(c, "seq_hi", self.seq_hi)
        _check_str(c, "origin", self.origin)
        n = seq_diff(self.seq_hi, self.seq_lo)
        if not 0 < n < SEQ_HALF:
            raise _bad(c, "seq_hi", f"a range [seq_lo, seq_hi) of 1..{SEQ_HALF - 1} numbers",
                       self.seq_hi)


@dataclass(frozen=True)
class ExpireAck(_Message):
    """EXPIRE_ACK, EGP §1.2: the acknowledging end's ``expected_seq``; echoes the acknowledged
    range (the EGP echoes the queue id)."""

    TYPE: ClassVar[str] = "EXPIRE_ACK"
    link: str
    expected_seq: int
    seq_lo: int
    seq_hi: int

    def __post_init__(self) -> None:
        c = "ExpireAck"
        _check_str(c, "link", self.link)
        _check_seq(c, "expected_seq", self.expected_seq)
        _check_seq(c, "seq_lo", self.seq_lo)
        _check_seq(c, "seq_hi", self.seq_hi)


@dataclass(frozen=True)
class HeraldEntry:
    """One heralded success: the station's ``mhp_seq``, the Bell state its BSM announced, and the
    detection time (ps). Serialised as ``[seq, bell_state, time_ps]``."""

    seq: int
    bell_state: str
    time_ps: int

    def __post_init__(self) -> None:
        c = "HeraldEntry"
        _check_seq(c, "seq", self.seq)
        _check_choice(c, "bell_state", self.bell_state, BELL_STATES)
        _check_int(c, "time_ps", self.time_ps, 0)


@dataclass(frozen=True)
class Herald(_Message):
    """The station's batch of successes on one link for one chunk (EGP §1.2 MHP replies,
    batched). Entries are consecutive sequence numbers; ``next_seq`` is the station's counter
    after the batch (equal to the last entry + 1, or the unchanged counter for an empty batch,
    which is then a heartbeat)."""

    TYPE: ClassVar[str] = "HERALD"
    link: str
    chunk: int
    entries: tuple[HeraldEntry, ...]
    next_seq: int

    @classmethod
    def _convert(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        raw = kwargs["entries"]
        if not isinstance(raw, (list, tuple)):
            raise _bad("Herald", "entries", "a list of [seq, bell_state, time_ps]", raw)
        entries = []
        for i, e in enumerate(raw):
            if isinstance(e, HeraldEntry):
                entries.append(e)
                continue
            if not isinstance(e, (list, tuple)) or len(e) != 3:
                raise _bad("Herald", f"entries[{i}]", "[seq, bell_state, time_ps]", e)
            try:
                entries.append(HeraldEntry(*e))
            except ValueError as exc:
                raise ValueError(f"Herald.entries[{i}]: {exc}") from None
        return {**kwargs, "entries": tuple(entries)}

    def __post_init__(self) -> None:
        c = "Herald"
        _check_str(c, "link", self.link)
        _check_int(c, "chunk", self.chunk, 0)
        if not isinstance(self.entries, tuple) or not all(
                isinstance(e, HeraldEntry) for e in self.entries):
            raise _bad(c, "entries", "a tuple of HeraldEntry", self.entries)
        _check_seq(c, "next_seq", self.next_seq)
        for i in range(1, len(self.entries)):
            if self.entries[i].seq != seq_add(self.entries[i - 1].seq, 1):
                raise _bad(c, f"entries[{i}].seq", "consecutive sequence numbers",
                           self.entries[i].seq)
        if self.entries and self.next_seq != seq_add(self.entries[-1].seq, 1):
            raise _bad(c, "next_seq", "last entry's seq + 1", self.next_seq)


Message = Create | Ack | Ok | Err | Expire | ExpireAck | Herald
_BY_TYPE: dict[str, type[_Message]] = {
    cls.TYPE: cls for cls in (Create, Ack, Ok, Err, Expire, ExpireAck, Herald)}


def message_from_dict(d: Mapping[str, Any]) -> Message:
    """Parse any link-layer message by its ``"type"`` field."""
    if not isinstance(d, Mapping):
        raise ValueError(f"message: expected a mapping, got {type(d).__name__}")
    t = d.get("type")
    if t not in _BY_TYPE:
        raise ValueError(f"message.type: expected one of {sorted(_BY_TYPE)}, got {t!r}")
    return _BY_TYPE[t].from_dict(d)


def split_actions(actions: Iterable[Message]) -> tuple[list[Message], list[Message]]:
    """(up, to_peer): Ack/Ok/Err go to the requesting layer, Expire/ExpireAck to the peer."""
    up: list[Message] = []
    peer: list[Message] = []
    for a in actions:
        (peer if isinstance(a, (Expire, ExpireAck)) else up).append(a)
    return up, peer
