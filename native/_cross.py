"""Cross-node pairs: the front-end of the engine that pairs this node's tags with a peer's.

Bound to the C engine by :class:`qnode.native.CrossPairs` and to the numpy engine by
:class:`qnode.native.reference.CrossPairs`; both accept and reject the same arguments and return
the same results (the differential tests check it).

Semantics (both backends), times in int64 ps:

* Peer times (peer clock) are mapped to the own clock with the call's :class:`PeerClock`, exactly
  as :meth:`qnode.native.tracking.DriftTracker.to_reference` does (``ClockModel.to_a``:
  ``u = t_b - (base + ref)``, ``t_a = u - rint((dev + rate*u) / (1 + rate)) + ref``, float64,
  round half to even). Mapped times are made non-decreasing (float rounding of huge times could
  put a tag 1 ps before its predecessor: it then takes its predecessor's mapped time).
* dt = mapped peer time - own time.
* Pairing rule (one-to-one, greedy in own-time order): own tags are taken in stream order; each
  pairs with the *earliest not yet paired* peer tag with |dt| <= window, if there is one. A peer
  tag pairs at most once, an own tag at most once. (Not the nearest: with a window of a few ns and
  tags ~100 ns apart, a second candidate is rare; the rule needs no look-ahead and runs in one
  merge pass.)
* Accidentals: the same rule, on its own, with the window displaced to |dt - shift| <= window.
* g2: every (own, peer) pair, matched or not, with lower <= dt < lower + bins*bin_width, in bin
  floor((dt - lower) / bin_width).
* Indices: ``own`` / ``peer`` in a pair are positions in each stream since the engine started
  (0 = the first tag ever given): a peer tag is named by its index in the peer's stream, which
  the sifting message can carry. Channels go in for own tags only (the peer's never travel);
  a pair carries its own tag's channel.
* Streaming: an own tag is *settled* (its pair, accidental and g2 entries reported) once no later
  peer tag can change them: when own time + reach < the newest peer time (or declared
  ``peer_end_ps``) mapped, reach being the highest dt any window looks at. Until then it is
  carried over, as are the peer tags a pending or future own tag can still use. With one clock
  model throughout, any split into chunks gives exactly the one-shot result. With a model that
  changes between calls (the daemon's servo), each call maps every buffered peer tag with the
  call's model (piecewise model: a tag is judged with the model in force when it settles); the
  carried-over scan positions never move back, so nothing counts twice.
* :meth:`CrossPairs.flush` ends the peer stream: every pending own tag settles.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .align import ClockEstimate, ClockModel, as_times
from .tracking import DriftTracker

CROSS_PAIR_DTYPE = np.dtype([("own", np.int64), ("peer", np.int64), ("dt", np.int64),
                             ("channel", np.int32), ("reserved", np.int32)])
"""One cross-node pair: own and peer stream index (since the start), dt (ps, mapped peer time -
own time) and the own tag's channel (the C struct ``qn_xpair``)."""

TIME_LIMIT_PS = 1 << 62
"""Times are in [0, 2**62) ps (~53 days)."""

MAX_REACH_PS = 1 << 40
"""Bound of the window, the accidental shift and the g2 edges (ps, ~1.1 s)."""

MAX_RATE = 2e-4
"""Bound of |drift| (200 ppm) accepted by the mapping."""

_LIM60 = 1 << 60
NO_END = int(np.iinfo(np.int64).min)
"""``own_end``/``peer_end`` of an engine call that declares no end."""


@dataclasses.dataclass(frozen=True)
class PeerClock:
    """The peer's clock against this node's, as :class:`qnode.native.align.ClockModel`:
    ``t_peer = t_own + offset_ps + dev_ps + rate * (t_own - ref_ps)`` (ps; ``rate`` =
    drift_ppm * 1e-6). A :class:`~qnode.native.align.ClockEstimate` gives dev 0 and
    rate = drift_ppm * 1e-6 (as :meth:`DriftTracker.reset` does); a running tracker's model has
    a fractional ``dev_ps``: use :meth:`from_tracker` to map exactly as its ``to_reference``."""

    offset_ps: int
    ref_ps: int = 0
    rate: float = 0.0
    dev_ps: float = 0.0

    @property
    def drift_ppm(self) -> float:
        return self.rate * 1e6

    @classmethod
    def from_ppm(cls, offset_ps: int, drift_ppm: float = 0.0, ref_ps: int = 0) -> PeerClock:
        """Offset (ps) and drift (ppm) about ``ref_ps`` (own clock, ps)."""
        return cls(int(offset_ps), int(ref_ps), float(drift_ppm) * 1e-6, 0.0)

    @classmethod
    def from_model(cls, model: ClockModel) -> PeerClock:
        return cls(int(model.base), int(model.ref), float(model.rate), float(model.dev))

    @classmethod
    def from_estimate(cls, estimate: ClockEstimate) -> PeerClock:
        return cls(int(estimate.offset_ps), int(estimate.ref_ps), estimate.drift_ppm * 1e-6, 0.0)

    @classmethod
    def from_tracker(cls, tracker: DriftTracker) -> PeerClock:
        """The tracker's current model: maps exactly as ``tracker.to_reference``."""
        return cls.from_model(tracker._m)  # noqa: SLF001 (same package; no public accessor yet)

    def model(self) -> ClockModel:
        return ClockModel(base=self.offset_ps, ref=self.ref_ps, dev=self.dev_ps, rate=self.rate)

    def to_own(self, peer_ps: npt.ArrayLike) -> np.ndarray:
        """Peer times (ps) on the own clock: ``ClockModel.to_a`` (the engines' mapping, before
        the non-decreasing fix-up)."""
        return self.model().to_a(as_times(peer_ps, "peer_ps", check_sorted=False))


ClockLike = PeerClock | ClockModel | ClockEstimate | DriftTracker


def peer_clock(clock: ClockLike) -> PeerClock:
    """A :class:`PeerClock` from any clock description; ValueError when out of range (|offset|,
    |ref| <= 2**60 ps, |dev| <= 2**53 ps, |rate| <= 2e-4, finite)."""
    if isinstance(clock, DriftTracker):
        c = PeerClock.from_tracker(clock)
    elif isinstance(clock, ClockModel):
        c = PeerClock.from_model(clock)
    elif isinstance(clock, ClockEstimate):
        c = PeerClock.from_estimate(clock)
    elif isinstance(clock, PeerClock):
        c = clock
    else:
        raise TypeError(f"clock: expected a PeerClock, ClockModel, ClockEstimate or "
                        f"DriftTracker, got {type(clock).__name__}")
    if not -_LIM60 <= c.offset_ps <= _LIM60:
        raise ValueError(f"clock.offset_ps must be within +-2**60 ps, got {c.offset_ps}")
    if not -_LIM60 <= c.ref_ps < TIME_LIMIT_PS:
        raise ValueError(f"clock.ref_ps must be in [-2**60, 2**62) ps, got {c.ref_ps}")
    if not (np.isfinite(c.dev_ps) and abs(c.dev_ps) <= 2.0 ** 53):
        raise ValueError(f"clock.dev_ps must be finite, within +-2**53 ps, got {c.dev_ps}")
    if not (np.isfinite(c.rate) and abs(c.rate) <= MAX_RATE):
        raise ValueError(f"clock drift must be within +-{MAX_RATE * 1e6:g} ppm, "
                         f"got {c.rate * 1e6} ppm")
    return c


@dataclasses.dataclass(frozen=True)
class CrossSetup:
    """Validated parameters (ps)."""

    window: int
    with_acc: bool
    shift: int
    hist_lo: int
    bin_width: int
    n_bins: int

    @property
    def reach(self) -> tuple[int, int]:
        """(lowest, highest) dt any window looks at."""
        lo, hi = -self.window, self.window
        if self.with_acc:
            lo, hi = min(lo, self.shift - self.window), max(hi, self.shift + self.window)
        if self.n_bins:
            lo = min(lo, self.hist_lo)
            hi = max(hi, self.hist_lo + self.n_bins * self.bin_width - 1)
        return lo, hi


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer (ps), got {value!r}")
    return int(value)


def cross_setup(window_ps: int, accidental_shift_ps: int | None, g2_half_range_ps: int,
                g2_bin_ps: int) -> CrossSetup:
    w = _int("window_ps", window_ps)
    if not 0 <= w <= MAX_REACH_PS:
        raise ValueError(f"window_ps must be in [0, 2**40], got {w}")
    shift = 0
    if accidental_shift_ps is not None:
        shift = _int("accidental_shift_ps", accidental_shift_ps)
        if abs(shift) > MAX_REACH_PS or abs(shift) <= 2 * w:
            raise ValueError(f"accidental_shift_ps ({shift}) must exceed the full window "
                             f"2*window_ps ({2 * w}) and stay within 2**40")
    half = _int("g2_half_range_ps", g2_half_range_ps)
    bw = _int("g2_bin_ps", g2_bin_ps)
    n_bins = 0
    if half:
        if not 0 < half <= MAX_REACH_PS or bw < 1 or (2 * half) % bw:
            raise ValueError(f"g2: 2*g2_half_range_ps ({2 * half}) must be a positive multiple "
                             f"of g2_bin_ps ({bw}), within 2**40")
        n_bins = 2 * half // bw
        if n_bins > 1 << 24:
            raise ValueError(f"g2: at most 2**24 bins, got {n_bins}")
    return CrossSetup(w, accidental_shift_ps is not None, shift, -half, bw, n_bins)


@dataclasses.dataclass(frozen=True)
class CrossPairResult:
    """What one call settled: ``pairs`` (:data:`CROSS_PAIR_DTYPE`, in own-index order),
    ``accidentals`` (count in the displaced window, None when not configured), ``g2`` (this
    call's histogram increments, None when not configured) and ``settled`` (own tags settled)."""

    pairs: np.ndarray
    accidentals: int | None
    g2: npt.NDArray[np.int64] | None
    settled: int


class CrossEngine(Protocol):
    def process(self, own_t: np.ndarray, own_c: np.ndarray, own_end: int, peer_t: np.ndarray,
                peer_end: int, clock: PeerClock) -> tuple[np.ndarray, int, np.ndarray, int]:
        """(pairs, accidentals, g2 increments, own tags settled); ValueError on bad input,
        before anything is consumed."""

    def counters(self) -> tuple[int, int, int, int, int]:
        """(own seen, peer seen, own settled, own pending, peer buffered)."""


def order_error(stream: str, index: int, time_ps: int, previous_ps: int | None) -> ValueError:
    """The error both engines raise for a time out of range or out of order."""
    if not 0 <= time_ps < TIME_LIMIT_PS:
        return ValueError(f"{stream} times: tag {index} at {time_ps} ps is outside [0, 2**62)")
    return ValueError(f"{stream} times are not time-ordered: tag {index} at {time_ps} ps is "
                      f"before {previous_ps} ps (the previous tag or the declared end); "
                      "nothing of this call was consumed")


class CrossPairs:
    """Streaming cross-node pair finder: this node's tags against the peer's times (the peer's
    channels never needed). See the module docstring of ``qnode.native._cross`` for the exact
    rules; times in int64 ps.

    ``window_ps``: |dt| <= window pairs. ``accidental_shift_ps``: also count accidentals in
    |dt - shift| <= window (None: not counted; |shift| > 2*window). ``g2_half_range_ps``,
    ``g2_bin_ps``: histogram all pairs with -half <= dt < half (0: none). :attr:`totals` holds
    (pairs, accidentals, g2) since the start."""

    def __init__(self, window_ps: int, *, accidental_shift_ps: int | None = 20_000,
                 g2_half_range_ps: int = 5_000, g2_bin_ps: int = 100):
        self.setup = cross_setup(window_ps, accidental_shift_ps, g2_half_range_ps, g2_bin_ps)
        self.window_ps = self.setup.window
        self.accidental_shift_ps = accidental_shift_ps
        self._engine = self._make_engine(self.setup)
        self.total_pairs = 0
        self.total_accidentals = 0
        self.g2 = np.zeros(self.setup.n_bins, np.int64) if self.setup.n_bins else None

    def _make_engine(self, setup: CrossSetup) -> CrossEngine:
        raise NotImplementedError

    @staticmethod
    def _end(name: str, value: int | None) -> int:
        if value is None:
            return int(NO_END)
        v = _int(name, value)
        if not 0 <= v <= TIME_LIMIT_PS:
            raise ValueError(f"{name} must be in [0, 2**62], got {v}")
        return v

    def process(self, own_times: npt.ArrayLike, own_channels: npt.ArrayLike | None,
                peer_times: npt.ArrayLike, clock: ClockLike, *, own_end_ps: int | None = None,
                peer_end_ps: int | None = None) -> CrossPairResult:
        """Add the next own tags (sorted times, ps; channels int32, or None for 0) and peer
        times (sorted, peer clock, ps), map the buffered peer tags with ``clock``, and return
        what settled. ``own_end_ps``/``peer_end_ps``: that stream has no more tags before this
        time (own clock / peer clock): it settles own tags sooner and frees buffered peer tags
        when a stream is quiet. ValueError (naming the stream and tag) for unsorted or
        out-of-range input, before anything is consumed."""
        own_t = as_times(own_times, "own_times", check_sorted=False)
        if own_channels is None:
            own_c = np.zeros(own_t.size, np.int32)
        else:
            raw_c = np.asarray(own_channels)
            if raw_c.dtype.kind not in "iu" or raw_c.shape != own_t.shape:
                raise ValueError("own_channels must be integers, one per own time")
            if raw_c.size and (raw_c.min() < -2**31 or raw_c.max() >= 2**31):
                raise ValueError("own_channels must fit in int32")
            own_c = np.ascontiguousarray(raw_c, dtype=np.int32)
        peer_t = as_times(peer_times, "peer_times", check_sorted=False)
        c = peer_clock(clock)
        pairs, acc, hist, settled = self._engine.process(
            own_t, own_c, self._end("own_end_ps", own_end_ps), peer_t,
            self._end("peer_end_ps", peer_end_ps), c)
        return self._result(pairs, acc, hist, settled)

    def flush(self, clock: ClockLike) -> CrossPairResult:
        """The peer stream has ended: settle every pending own tag (later peer tags are an
        order error)."""
        empty = np.empty(0, np.int64)
        pairs, acc, hist, settled = self._engine.process(
            empty, np.empty(0, np.int32), int(NO_END), empty, TIME_LIMIT_PS, peer_clock(clock))
        return self._result(pairs, acc, hist, settled)

    def _result(self, pairs: np.ndarray, acc: int, hist: np.ndarray,
                settled: int) -> CrossPairResult:
        self.total_pairs += pairs.size
        self.total_accidentals += acc
        if self.g2 is not None:
            self.g2 += hist
        return CrossPairResult(pairs, acc if self.setup.with_acc else None,
                               hist if self.setup.n_bins else None, settled)

    def counters(self) -> dict[str, Any]:
        """Tags seen and settled: ``own_seen``, ``peer_seen``, ``own_settled``, ``own_pending``,
        ``peer_buffered``."""
        names = ("own_seen", "peer_seen", "own_settled", "own_pending", "peer_buffered")
        return dict(zip(names, self._engine.counters(), strict=True))
