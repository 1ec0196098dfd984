"""Parameters and results shared by the native core and its numpy reference.

Both backends build their engines from the same validated setup objects, so they accept and
reject exactly the same arguments and return the same result types.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .tags import TagBlockError

CLUSTER_DTYPE = np.dtype([("time", np.int64), ("mask", np.uint64)])
"""N-fold event record: cluster time (ps, delayed time of its first tag) and channel bitmask."""

MAX_HISTOGRAM_CHANNELS = 16
"""N-fold pattern histograms have 2**n entries; above this many channels only events are kept."""


class StreamOrderError(TagBlockError):
    """A record's time is earlier than the previous record's.

    The engine consumed the records before ``index`` (their results are in the engine's totals and
    in ``partial``); the rest of the chunk was not processed.
    """

    def __init__(self, index: int, time_ps: int, previous_ps: int, partial: Any = None):
        super().__init__(
            f"stream is not time-ordered: record {index} at {time_ps} ps follows {previous_ps} ps; "
            f"the {index} records before it were processed, the rest of the chunk was not")
        self.index = index
        self.partial = partial


def _int(name: str, value: object, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer (ps or count), got {value!r}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _delays(channels: Sequence[int], delays_ps: Mapping[int, int] | None) -> np.ndarray:
    delays_ps = dict(delays_ps or {})
    unknown = set(delays_ps) - set(channels)
    if unknown:
        raise ValueError(f"delays_ps names channels {sorted(unknown)} that are not in use "
                         f"(channels: {list(channels)})")
    return np.array([_int(f"delays_ps[{c}]", delays_ps.get(c, 0)) for c in channels], np.int64)


def _channels(channels: Iterable[int]) -> tuple[int, ...]:
    out = tuple(_int("channel", c) for c in channels)
    if not out:
        raise ValueError("at least one channel is needed")
    if len(set(out)) != len(out):
        raise ValueError(f"channels must be distinct, got {list(out)}")
    if not all(-2**31 <= c < 2**31 for c in out):
        raise ValueError("channels must fit in int32")
    if max(out) - min(out) >= 1 << 20:
        raise ValueError("channel numbers must span fewer than 2**20 values")
    return out


@dataclasses.dataclass(frozen=True)
class PairSpec:
    """Count pairs with lo <= dt <= hi, dt = (t_b + delay_b) - (t_a + delay_a) (channel indices
    a, b); histogram them when n_bins > 0 (then hi = lo + n_bins*bin_width - 1)."""

    a: int
    b: int
    lo: int
    hi: int
    bin_width: int = 0
    n_bins: int = 0


@dataclasses.dataclass(frozen=True)
class PairSetup:
    channels: tuple[int, ...]
    delays: np.ndarray
    specs: tuple[PairSpec, ...]


def coincidence_setup(pairs: Sequence[tuple[int, int]], window_ps: int,
                      channels: Iterable[int] | None = None,
                      delays_ps: Mapping[int, int] | None = None,
                      accidental_offset_ps: int | None = None) -> PairSetup:
    """Specs for 2-fold coincidences |dt| <= w and, optionally, accidentals |dt - offset| <= w."""
    w = _int("window_ps", window_ps, 0)
    pairs = [(_int("pair channel", a), _int("pair channel", b)) for a, b in pairs]
    if not pairs:
        raise ValueError("pairs: at least one channel pair is needed")
    for a, b in pairs:
        if a == b:
            raise ValueError(f"pair ({a}, {b}): a pair needs two different channels")
    if channels is None:
        channels = sorted({c for p in pairs for c in p})
    chans = _channels(channels)
    missing = {c for p in pairs for c in p} - set(chans)
    if missing:
        raise ValueError(f"pairs use channels {sorted(missing)} that are not in channels")
    idx = {c: i for i, c in enumerate(chans)}
    specs = [PairSpec(idx[a], idx[b], -w, w) for a, b in pairs]
    if accidental_offset_ps is not None:
        off = _int("accidental_offset_ps", accidental_offset_ps)
        if abs(off) <= 2 * w:
            raise ValueError(f"accidental_offset_ps ({off}) must exceed the full window "
                             f"2*window_ps ({2 * w}) so the displaced window does not overlap "
                             "the true one")
        specs += [PairSpec(idx[a], idx[b], off - w, off + w) for a, b in pairs]
    return PairSetup(chans, _delays(chans, delays_ps), tuple(specs))


def correlation_setup(start: int, stop: int, bin_width_ps: int, n_bins: int,
                      lower_edge_ps: int | None = None,
                      delays_ps: Mapping[int, int] | None = None) -> PairSetup:
    """Spec for a start-stop histogram of dt = t_stop - t_start over all pairs, both signs."""
    bw = _int("bin_width_ps", bin_width_ps, 1)
    nb = _int("n_bins", n_bins, 1)
    lo = -(nb // 2) * bw if lower_edge_ps is None else _int("lower_edge_ps", lower_edge_ps)
    chans = _channels([start, stop])
    spec = PairSpec(0, 1, lo, lo + nb * bw - 1, bw, nb)
    return PairSetup(chans, _delays(chans, delays_ps), (spec,))


@dataclasses.dataclass(frozen=True)
class NFoldSetup:
    channels: tuple[int, ...]
    delays: np.ndarray
    window: int
    min_fold: int
    histogram: bool


def nfold_setup(channels: Iterable[int], window_ps: int, delays_ps: Mapping[int, int] | None = None,
                min_fold: int = 2) -> NFoldSetup:
    chans = _channels(channels)
    if len(chans) > 64:
        raise ValueError(
            f"N-fold clusters take at most 64 channels (a uint64 mask), got {len(chans)}")
    w = _int("window_ps", window_ps, 0)
    mf = _int("min_fold", min_fold, 1)
    if mf > len(chans):
        raise ValueError(f"min_fold ({mf}) exceeds the number of channels ({len(chans)})")
    return NFoldSetup(chans, _delays(chans, delays_ps), w, mf, len(chans) <= MAX_HISTOGRAM_CHANNELS)


@dataclasses.dataclass
class StreamStats:
    """What an engine saw of its input, beyond the tags it counted."""

    records: int = 0
    tags: int = 0
    other_tags: int = 0
    missed_events: int = 0
    overflows: int = 0
    errors: int = 0
    dead_time_ps: int = 0
    overflow_since: int = -1
    last_time: int = np.iinfo(np.int64).min


@dataclasses.dataclass
class PairCounts:
    """Counts from one chunk (or cumulative totals), indexed like the counter's ``pairs`` and
    ``channels``. ``accidentals`` is None unless an accidental window was configured."""

    coincidences: npt.NDArray[np.int64]
    accidentals: npt.NDArray[np.int64] | None
    singles: npt.NDArray[np.int64]

    def __iadd__(self, other: PairCounts) -> PairCounts:
        self.coincidences += other.coincidences
        if self.accidentals is not None and other.accidentals is not None:
            self.accidentals += other.accidentals
        self.singles += other.singles
        return self


@dataclasses.dataclass
class NFoldResult:
    """Clusters closed during one call: ``events`` (CLUSTER_DTYPE, those with at least
    ``min_fold`` channels) and ``histogram`` increments indexed by mask (None above
    MAX_HISTOGRAM_CHANNELS channels)."""

    events: np.ndarray
    histogram: npt.NDArray[np.int64] | None
    singles: npt.NDArray[np.int64]
