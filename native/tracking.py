"""Streaming clock servo for two nodes' photon streams (qcrypto costream's tracking, with the
frequency loop of fpfind's freqservo): :class:`DriftTracker`, started from
:func:`qnode.native.align.find_offset_and_drift`'s :class:`~qnode.native.align.ClockEstimate`.

Clock model as in :mod:`qnode.native.align`:
``t_b = t_a + offset_ps + drift_ppm * 1e-6 * (t_a - ref_ps)`` (int64 ps; node a is the reference).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .align import PS_PER_S, ClockEstimate, ClockModel, as_times, resolve_backend

__all__ = ["STEP_DTYPE", "DriftTracker", "TrackStatus", "TrackerReport", "TrackerState"]



class TrackStatus(enum.IntEnum):
    """LOCKED: the last interval gave a measurement. HOLDOVER: no usable coincidences for less
    than ``lock_timeout_ps`` (the model coasts). LOST: none for longer (costream switches its
    servo off after 100 ms without tracking events); the tracker keeps coasting and re-locks by
    itself if coincidences reappear in the tracking window, else re-run
    :func:`find_offset_and_drift` and :meth:`DriftTracker.reset`."""

    LOCKED = 0
    HOLDOVER = 1
    LOST = 2


#: One record per tracking interval (see :meth:`DriftTracker.update`).
STEP_DTYPE = np.dtype([
    ("time_ps", np.int64),        # a-time of the measurement (mean of a's photons in the interval)
    ("offset_ps", np.int64),      # model t_b - t_a at time_ps, after this interval's update
    ("drift_ppm", np.float64),    # model frequency offset after the update
    ("residual_ps", np.float64),  # measured mean residual b - a (nan if no measurement)
    ("n_pairs", np.int64),        # pairs within +-tracking_window_ps
    ("n_accidentals", np.int64),  # pairs in the displaced window of the same width
    ("status", np.uint8),         # TrackStatus
])


@dataclass(frozen=True)
class TrackerState:
    """The tracker after the last processed interval.

    ``offset_ps`` is t_b - t_a at a-time ``time_ps``; ``drift_ppm`` the frequency offset; the
    uncertainties are the Kalman filter's standard deviations. ``n_coincidences`` and
    ``n_accidentals`` are totals since the start (pairs in the tracking window, and in the
    displaced window of the same width), ``residual_rms_ps`` the coincidence peak's rms width in
    the last measured interval. ``lock_losses`` counts transitions into LOST."""

    time_ps: int
    offset_ps: int
    drift_ppm: float
    offset_uncertainty_ps: float
    drift_uncertainty_ppm: float
    status: TrackStatus
    n_coincidences: int
    n_accidentals: int
    residual_rms_ps: float
    n_intervals: int
    lock_losses: int


@dataclass(frozen=True)
class TrackerReport:
    """What one :meth:`DriftTracker.update` did: the state after it and one :data:`STEP_DTYPE`
    record per interval processed."""

    state: TrackerState
    steps: np.ndarray

    @property
    def n_coincidences(self) -> int:
        return int(self.steps["n_pairs"].sum())

    @property
    def n_accidentals(self) -> int:
        return int(self.steps["n_accidentals"].sum())


class DriftTracker:
    """Streaming clock servo for two nodes' photon streams (qcrypto costream's tracking, with a
    frequency loop as in fpfind's freqservo).

    Feed matching chunks of both nodes' sorted int64 photon times (ps) to :meth:`update`; state is
    kept across calls (a coincidence straddling a chunk boundary counts once). Time is cut into
    intervals of ``interval_ps`` of a's timebase; per interval, b's photons are mapped through the
    current model, pairs with |b' - a| <= ``tracking_window_ps`` are collected (and, for the
    accidentals, pairs in the window displaced by ``accidental_shift_ps``), and the
    background-corrected mean residual feeds a Kalman filter with state (offset, frequency):
    constant-frequency dynamics with white phase noise ``phase_noise_ps_per_sqrt_s`` and a random
    walk of the frequency ``freq_noise_ppm_per_sqrt_s`` (the default, 0.003 ppm/sqrt(s), follows
    a frequency ramp of 1 ppm/min with ~1 ps lag at 21 k coincidences/s; larger values follow
    faster changes but make the frequency noisier, which matters while coasting). An interval is
    usable if it has at least ``min_pairs`` pairs above the accidentals and pairs/accidentals >=
    ``min_pairs_to_accidentals`` (QKDServer's 2.5); otherwise the model coasts (HOLDOVER), and
    after ``lock_timeout_ps`` without a usable interval the status is LOST (see
    :class:`TrackStatus`). :meth:`flush` ends the run; chunks after it are not accepted.

    Clock model: ``t_b = t_a + offset + drift_ppm*1e-6*(t_a - t_ref)`` as in :class:`ClockEstimate`.
    """

    def __init__(self, estimate: ClockEstimate, *, tracking_window_ps: int = 1_000,
                 accidental_shift_ps: int = 20_000, interval_ps: int = 10_000_000_000,
                 min_pairs: int = 10, min_pairs_to_accidentals: float = 2.5,
                 lock_timeout_ps: int = 100_000_000_000, freq_noise_ppm_per_sqrt_s: float = 0.003,
                 phase_noise_ps_per_sqrt_s: float = 1.0, backend: object | None = None):
        if accidental_shift_ps <= 2 * tracking_window_ps:
            raise ValueError("accidental_shift_ps must exceed twice the tracking window")
        self._bk = resolve_backend(backend)
        self.tracking_window_ps = int(tracking_window_ps)
        self.accidental_shift_ps = int(accidental_shift_ps)
        self.interval_ps = int(interval_ps)
        self.min_pairs = int(min_pairs)
        self.min_pairs_to_accidentals = float(min_pairs_to_accidentals)
        self.lock_timeout_ps = int(lock_timeout_ps)
        self._qf = (freq_noise_ppm_per_sqrt_s * 1e6) ** 2      # (ps/s)^2 per s
        self._qp = phase_noise_ps_per_sqrt_s ** 2              # ps^2 per s
        self.reset(estimate)

    def reset(self, estimate: ClockEstimate) -> None:
        """Restart from a new estimate (e.g. after LOST), dropping buffered data."""
        self._m = ClockModel(base=int(estimate.offset_ps), ref=int(estimate.ref_ps), dev=0.0,
                         rate=estimate.drift_ppm * 1e-6)
        self._nu = estimate.drift_ppm * 1e6                    # frequency, ps/s
        self._P = np.diag([max(estimate.offset_uncertainty_ps, 1.0) ** 2,
                           max(estimate.drift_uncertainty_ppm * 1e6, 1.0) ** 2])
        self._a = np.empty(0, np.int64)
        self._b = np.empty(0, np.int64)
        self._next: int | None = None
        self._start = 0
        self._steps = np.empty(0, STEP_DTYPE)
        self._last_good: int | None = None
        self._status = TrackStatus.LOCKED
        self._n_pairs = self._n_acc = self._n_int = self._losses = 0
        self._rms = math.nan
        self._time = int(estimate.ref_ps)
        self._a_last: int | None = None
        self._b_last: int | None = None
        self._flushed = False

    # -- model access
    def offset_at(self, t_a_ps: int) -> int:
        """Current model's t_b - t_a (ps) at a-time ``t_a_ps``."""
        m = self._m
        return m.base + int(round(m.dev + m.rate * (int(t_a_ps) - m.ref)))

    def to_reference(self, b_ps: npt.ArrayLike) -> np.ndarray:
        """Node b's timestamps (ps) in node a's timebase through the current model (int64)."""
        return self._m.to_a(as_times(b_ps, "b_ps", check_sorted=False))

    def to_node_b(self, a_ps: npt.ArrayLike) -> np.ndarray:
        """Node a's timestamps (ps) in node b's timebase through the current model (int64)."""
        return self._m.to_b(as_times(a_ps, "a_ps", check_sorted=False))

    @property
    def state(self) -> TrackerState:
        sd = np.sqrt(np.maximum(np.diag(self._P), 0.0))
        return TrackerState(time_ps=self._time, offset_ps=self.offset_at(self._time),
                            drift_ppm=self._m.rate * 1e6, offset_uncertainty_ps=float(sd[0]),
                            drift_uncertainty_ppm=float(sd[1]) * 1e-6, status=self._status,
                            n_coincidences=self._n_pairs, n_accidentals=self._n_acc,
                            residual_rms_ps=self._rms, n_intervals=self._n_int,
                            lock_losses=self._losses)

    @property
    def status(self) -> TrackStatus:
        return self._status

    # -- Kalman filter
    def _predict(self, t: int) -> None:
        m = self._m
        dt = (t - m.ref) / PS_PER_S                            # s
        m.dev += self._nu * dt
        m.ref = t
        F = np.array([[1.0, dt], [0.0, 1.0]])
        adt = abs(dt)
        Q = self._qf * np.array([[adt**3 / 3, dt**2 / 2], [dt**2 / 2, adt]])
        Q[0, 0] += self._qp * adt
        self._P = F @ self._P @ F.T + Q

    def _measure(self, residual_ps: float, variance_ps2: float) -> None:
        m = self._m
        y = residual_ps * (1.0 + m.rate)
        P = self._P
        s = P[0, 0] + variance_ps2
        k = P[:, 0] / s
        m.dev += k[0] * y
        self._nu = float(self._nu + k[1] * y)
        m.dev = float(m.dev)
        m.rate = self._nu / PS_PER_S
        self._P = P - np.outer(k, P[0, :])

    # -- streaming
    def update(self, a_chunk_ps: npt.ArrayLike, b_chunk_ps: npt.ArrayLike, *,
               end_ps: int | None = None) -> TrackerReport:
        """Add the next chunks of both nodes' sorted photon times (ps; b in b's own timebase)
        and process every interval that is complete.

        Data are complete up to a-time ``end_ps`` if given (the caller vouches that both nodes'
        chunks cover everything before it; this is how a dark detector is noticed), else up to
        the earlier of a's last photon and b's last photon mapped into a's timebase."""
        if self._flushed:
            raise RuntimeError("DriftTracker.update after flush(); reset() first")
        a = as_times(a_chunk_ps, "a_chunk_ps")
        b = as_times(b_chunk_ps, "b_chunk_ps")
        if a.size:
            if self._a_last is not None and a[0] < self._a_last:
                raise ValueError("a_chunk_ps goes back in time against the previous chunk")
            self._a_last = int(a[-1])
            self._a = np.concatenate([self._a, a]) if self._a.size else a
        if b.size:
            if self._b_last is not None and b[0] < self._b_last:
                raise ValueError("b_chunk_ps goes back in time against the previous chunk")
            self._b_last = int(b[-1])
            self._b = np.concatenate([self._b, b]) if self._b.size else b
        if end_ps is not None:
            horizon = int(end_ps)
        elif self._a_last is None or self._b_last is None:
            return TrackerReport(self.state, np.empty(0, STEP_DTYPE))
        else:
            horizon = min(self._a_last,
                          int(self._m.to_a(np.array([self._b_last], np.int64))[0]))
        if self._next is None:
            if not self._a.size:
                return TrackerReport(self.state, np.empty(0, STEP_DTYPE))
            self._next = self._start = int(self._a[0])
        state = self._run(horizon)
        return TrackerReport(state, self._steps)

    def flush(self) -> TrackerReport:
        """Process what is buffered as if both streams were complete (end of the run)."""
        self._flushed = True
        if self._next is None or self._a_last is None:
            return TrackerReport(self.state, np.empty(0, STEP_DTYPE))
        horizon = self._a_last + self.interval_ps + self.accidental_shift_ps + \
            self.tracking_window_ps + 1
        state = self._run(horizon)
        return TrackerReport(state, self._steps)

    def _run(self, horizon: int) -> TrackerState:
        w, shift = self.tracking_window_ps, self.accidental_shift_ps
        reach = shift + w
        steps = []
        a_all = self._a
        b_all = self._b
        assert self._next is not None
        while self._next + self.interval_ps + reach <= horizon:
            s = self._next
            e = s + self.interval_ps
            aw = a_all[np.searchsorted(a_all, s):np.searchsorted(a_all, e)]
            lo_hi = self._m.to_b(np.array([s - reach, e + reach], np.int64))
            braw = b_all[np.searchsorted(b_all, lo_hi[0] - 1000):
                         np.searchsorted(b_all, lo_hi[1] + 1000)]
            t_m = s + int(round(float((aw - s).mean()))) if aw.size else s + self.interval_ps // 2
            self._predict(t_m)
            bw = self._m.to_a(braw)
            n_pairs = n_acc = 0
            residual = math.nan
            if aw.size and bw.size:
                d = self._bk.pair_deltas(aw, bw, -w, w)
                n_pairs = int(d.size)
                n_acc = int(self._bk.pair_deltas(aw, bw, shift - w, shift + w).size)
                ns = n_pairs - n_acc
                if ns >= self.min_pairs and n_pairs >= self.min_pairs_to_accidentals * n_acc:
                    x = np.asarray(d, np.float64)
                    mu = float(x.sum()) / ns            # accidentals: uniform, mean 0
                    var = (float(np.square(x).sum()) - n_acc * w * w / 3.0) / ns - mu * mu
                    self._rms = math.sqrt(max(var, 1.0))
                    residual = mu
                    self._measure(mu, max(var, 100.0) / ns)
                    self._last_good = t_m
            if not math.isnan(residual):
                self._status = TrackStatus.LOCKED
            else:
                since = t_m - (self._last_good if self._last_good is not None else self._start)
                if since > self.lock_timeout_ps:
                    if self._status != TrackStatus.LOST:
                        self._losses += 1
                    self._status = TrackStatus.LOST
                else:
                    self._status = TrackStatus.HOLDOVER
            self._n_pairs += n_pairs
            self._n_acc += n_acc
            self._n_int += 1
            self._time = t_m
            steps.append((t_m, self.offset_at(t_m), self._m.rate * 1e6, residual, n_pairs, n_acc,
                          int(self._status)))
            self._next = e
        # drop what no later interval needs
        self._a = a_all[np.searchsorted(a_all, self._next):]
        b_keep = int(self._m.to_b(np.array([self._next - reach], np.int64))[0]) - 1000
        self._b = b_all[np.searchsorted(b_all, b_keep):]
        self._steps = np.array(steps, STEP_DTYPE)
        return self.state
