"""Field validation for link-layer messages and snapshots: each check raises a ValueError that
names ``Class.field``, what was expected and what came (the messages' ``from_dict`` and the
link end's ``restore`` use them), plus the small enumerations of the wire (bases, random-basis
choices, pair statuses)."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from qnode.daemon.linklayer.sequence import EPOCH_RE, MAX_LAP, SEQ_MOD

#: the largest time in ps, and other int64 fields
INT64_MAX = (1 << 63) - 1

# the draft's OK-M Basis: 000 Z, 001 X, 010 Y, 011 Z rotated +π/4 about Y, 100 Z rotated −π/4.
BASES = {"Z": 0, "X": 1, "Y": 2, "ZR+": 3, "ZR-": 4}
# the draft's RBC: 00 none, 01 X/Z (BB84), 10 X/Y/Z (six-state), 11 CHSH.
RANDOM_BASIS = ("none", "xz", "xyz", "chsh")
PAIR_STATUSES = ("live", "delivered", "expired")


def bad(cls: str, name: str, what: str, value: Any) -> ValueError:
    return ValueError(f"{cls}.{name}: expected {what}, got {value!r}")


def check_int(cls: str, name: str, v: Any, lo: int, hi: int | None = None) -> None:
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)
    if not ok:
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise bad(cls, name, f"an int {rng}", v)


def check_float(cls: str, name: str, v: Any, lo: float, hi: float = math.inf) -> None:
    ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          and lo <= v <= hi)
    if not ok:
        raise bad(cls, name, f"a finite number in [{lo}, {hi}]", v)


def check_str(cls: str, name: str, v: Any) -> None:
    if not isinstance(v, str) or not v:
        raise bad(cls, name, "a non-empty string", v)


#: the characters of a node, link or path name (a topic segment: no '/', '+', '#')
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def check_name(cls: str, name: str, v: Any) -> None:
    """A node, link or path name: 1 to 64 letters, digits, '_' or '-' (what a topic segment
    and a config id may be)."""
    if not isinstance(v, str) or not 0 < len(v) <= 64 or not set(v) <= NAME_CHARS:
        raise bad(cls, name, "a name of 1 to 64 letters, digits, '_' or '-'", v)


def check_choice(cls: str, name: str, v: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if not isinstance(v, str) or v not in choices:
        raise bad(cls, name, f"one of {choices}", v)


def check_bool(cls: str, name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise bad(cls, name, "a bool", v)


def check_seq(cls: str, name: str, v: Any) -> None:
    check_int(cls, name, v, 0, SEQ_MOD - 1)


def check_epoch(cls: str, name: str, v: Any) -> None:
    if not isinstance(v, str) or not EPOCH_RE.fullmatch(v):
        raise bad(cls, name, "a station epoch (16 lowercase hex digits)", v)


def check_laps(cls: str, names: tuple[str, ...], values: tuple[Any, ...]) -> bool:
    """True if the lap fields ``names`` are all set (each in [0, MAX_LAP]), False if all are
    None; ValueError otherwise."""
    if all(v is None for v in values):
        return False
    for n, v in zip(names, values, strict=True):
        if v is None:
            raise bad(cls, n, f"a lap (with {', '.join(names)})", v)
        check_int(cls, n, v, 0, MAX_LAP)
    return True



def int_array(cls: str, name: str, v: Any, lo: int, hi: int, dtype: type) -> np.ndarray:
    """``v`` as a fresh read-only 1-D array of ``dtype``; integer values in [lo, hi] only."""
    a = np.asarray(v)
    if a.ndim != 1:
        raise ValueError(f"{cls}.{name}: expected a 1-D array, got shape {a.shape}")
    if a.size == 0:
        a = np.zeros(0, dtype)
    elif a.dtype.kind not in "iu":
        raise ValueError(f"{cls}.{name}: expected integers, got dtype {a.dtype}")
    elif int(a.min()) < lo or int(a.max()) > hi:
        raise ValueError(f"{cls}.{name}: expected values in [{lo}, {hi}], got min {int(a.min())}"
                         f" max {int(a.max())}")
    out: np.ndarray = np.array(a, dtype=dtype, copy=True)
    out.flags.writeable = False
    return out



class SnapshotFields:
    """Typed access to a snapshot dict; errors name the key."""

    def __init__(self, d: Mapping[str, Any]) -> None:
        if not isinstance(d, Mapping):
            raise ValueError(f"snapshot: expected a mapping, got {type(d).__name__}")
        self.d = d

    def get(self, key: str, types: type | tuple[type, ...]) -> Any:
        if key not in self.d:
            raise ValueError(f"snapshot.{key}: missing field")
        v = self.d[key]
        if not isinstance(v, types) or (isinstance(v, bool) and types in (int, (int, float))):
            raise bad("snapshot", key, f"{types}", v)
        return v
