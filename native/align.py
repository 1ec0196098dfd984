"""Clock alignment of two nodes' photon streams: initial offset, frequency offset, drift tracking.

Each node's time tagger stamps photons with its own clock. Photon pairs split between the nodes are
detected at (nearly) the same true time, so the cross-correlation of the two streams peaks at the
clock offset. The method is qcrypto's (s-fifteen-instruments/qcrypto, ``remotecrypto/pfind.c``,
``remotecrypto/costream.c``) and fpfind's (s-fifteen-instruments/fpfind):

* :func:`find_offset` (pfind): both streams are binned modulo ``n_bins`` at a coarse and at a fine
  resolution; the FFT cross-correlation FFT(a)*·FFT(b) of the coarse histograms gives the offset
  modulo the coarse span, the fine one resolves it within one coarse bin, and the exact pair
  differences (:func:`qnode.native.pair_deltas`) around the fine peak give a background-subtracted
  centroid. The significance is the peak's height in sigma above its local baseline (pfind
  divides by the sigma over all lags, ``maxval/sigma``; a local baseline keeps data shorter than
  the correlation period, whose background is a triangle, from faking or hiding a peak); below
  ``min_significance`` an :class:`AlignmentError` is raised.
* :func:`find_offset_and_drift` (fpfind): the same correlation on an "early" and a "late" span
  separated by Ts; the peak's drift between them over Ts is the frequency offset. The correction is
  applied and the correlation repeated at finer resolution (coarse -> ... -> fine -> exact pair
  differences) until it converges. If the first, coarse correlation is not significant the bin
  width is doubled (fpfind does the same, up to 100 us).
* :class:`qnode.native.tracking.DriftTracker` then follows the clocks through a long run
  (costream's servo with a frequency loop).

Clock model (all of this module)
--------------------------------
Node a is the reference. A photon stamped ``t_a`` by node a is stamped by node b at::

    t_b = t_a + offset_ps + drift_ppm * 1e-6 * (t_a - ref_ps)

i.e. ``t_b = t_a * (1 + drift) + const`` written about a reference time ``ref_ps`` (in a's
timebase) so that no float ever holds an absolute timestamp. ``offset_ps`` is t_b - t_a at
``t_a = ref_ps``; ``drift_ppm > 0`` means b's clock runs fast. All times are int64 picoseconds;
floats only ever hold differences (relative times, residuals), so timestamps beyond 2**53 ps
(about 2.5 h) lose nothing.

Backends
--------
The two helpers used, ``bin_mod`` and ``pair_deltas``, are taken from ``backend`` (default: the C
core, :mod:`qnode.native.core`); any object with those two functions and the same signatures (e.g.
:mod:`qnode.native.reference`) can be passed instead, which is how the differential tests run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "AlignmentError", "Backend", "ClockEstimate", "OffsetEstimate", "PeakInfo", "StageInfo",
    "find_offset", "find_offset_and_drift",
]

PS_PER_S = 10**12

#: pfind's defaults: 2^17 bins of 2 ns (fine) and 2048 ns (coarse).
DEFAULT_N_BINS = 2**17
DEFAULT_COARSE_BIN_PS = 2_048_000
DEFAULT_FINE_BIN_PS = 2_000


class Backend(Protocol):
    """What the alignment needs from a core: ``bin_mod`` and ``pair_deltas`` (see
    :func:`qnode.native.bin_mod`, :func:`qnode.native.pair_deltas`)."""

    def bin_mod(self, times_ps: np.ndarray, t0_ps: int, bin_ps: int, n_bins: int,
                out: np.ndarray | None = None) -> np.ndarray: ...

    def pair_deltas(self, a_ps: np.ndarray, b_ps: np.ndarray, lo_ps: int,
                    hi_ps: int) -> np.ndarray: ...


class AlignmentError(ValueError):
    """No significant correlation peak (or no coincidences) between the two streams.

    ``significance`` is the peak height in sigma that was found (``nan`` if not applicable) and
    ``stage`` names the correlation that failed."""

    def __init__(self, message: str, *, significance: float = math.nan, stage: str = ""):
        super().__init__(message)
        self.significance = significance
        self.stage = stage


@dataclass(frozen=True)
class PeakInfo:
    """One FFT cross-correlation: ``n_bins`` bins of ``bin_ps``; the peak at lag ``lag`` bins.

    ``offset_ps`` is the 3-bin centroid of the peak (ps, b - a, relative to the offset the streams
    were shifted by before correlating); ``significance = (height - mean) / sigma`` (pfind's
    ``maxval/sigma``), where ``mean`` is the local baseline at the peak and ``sigma`` the rms
    scatter about the baseline (see :func:`_correlate`)."""

    bin_ps: int
    n_bins: int
    lag: int
    offset_ps: float
    height: float
    mean: float
    sigma: float
    significance: float

    @property
    def span_ps(self) -> int:
        """The correlation's period: offsets are known modulo this (ps)."""
        return self.bin_ps * self.n_bins


@dataclass(frozen=True)
class OffsetEstimate:
    """Result of :func:`find_offset`: ``b ≈ a + offset_ps`` (ps).

    ``significance`` is the coarse peak's height in sigma, ``uncertainty_ps`` the statistical
    standard error of the refined centroid, ``n_pairs`` the background-subtracted number of
    coincidences in the refined peak, ``n_background`` the accidentals under it, ``peak_rms_ps``
    its rms width (both detectors' jitter, combined)."""

    offset_ps: int
    significance: float
    uncertainty_ps: float
    n_pairs: int
    n_background: float
    peak_rms_ps: float
    coarse: PeakInfo
    fine: PeakInfo


@dataclass(frozen=True)
class StageInfo:
    """One early/late iteration of :func:`find_offset_and_drift`: the residual offsets (ps) found
    in the early and late spans at resolution ``bin_ps`` (0: exact pair differences) and their
    significances (nan for the exact stage)."""

    bin_ps: int
    early_residual_ps: float
    late_residual_ps: float
    early_significance: float
    late_significance: float


@dataclass(frozen=True)
class ClockEstimate:
    """Offset and frequency offset of node b's clock against node a's.

    Model: ``t_b = t_a + offset_ps + drift_ppm * 1e-6 * (t_a - ref_ps)`` (ps; ``ref_ps`` in a's
    timebase). ``offset_uncertainty_ps`` and ``drift_uncertainty_ppm`` are statistical standard
    errors; ``significance`` is the smaller of the early and late spans' first (coarse) peak
    heights in sigma; ``n_pairs`` the coincidences used in the final early+late refinement."""

    offset_ps: int
    drift_ppm: float
    ref_ps: int
    offset_uncertainty_ps: float
    drift_uncertainty_ppm: float
    significance: float
    n_pairs: int
    span_ps: int
    separation_ps: int
    stages: tuple[StageInfo, ...] = field(default=())

    def offset_at(self, t_a_ps: int) -> int:
        """t_b - t_a (ps) at a-time ``t_a_ps``."""
        return self.offset_ps + round(self.drift_ppm * 1e-6 * (int(t_a_ps) - self.ref_ps))

    def to_reference(self, b_ps: npt.ArrayLike) -> np.ndarray:
        """Node b's timestamps (ps) mapped into node a's timebase (int64, rounded to 1 ps)."""
        return _to_a(as_times(b_ps, "b_ps", check_sorted=False), self.offset_ps, self.ref_ps, 0.0,
                     self.drift_ppm * 1e-6)

    def to_node_b(self, a_ps: npt.ArrayLike) -> np.ndarray:
        """Node a's timestamps (ps) mapped into node b's timebase (int64, rounded to 1 ps)."""
        return _to_b(as_times(a_ps, "a_ps", check_sorted=False), self.offset_ps, self.ref_ps, 0.0,
                     self.drift_ppm * 1e-6)


# ----------------------------------------------------------------------------- helpers

def resolve_backend(backend: object | None) -> Backend:
    if backend is None:
        from . import core  # the C helpers; NativeCoreMissing if not built
        return core
    return backend  # type: ignore[return-value]


def as_times(x: npt.ArrayLike, name: str, check_sorted: bool = True) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integer picoseconds, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if check_sorted and arr.size > 1 and np.any(arr[1:] < arr[:-1]):
        raise ValueError(f"{name} must be sorted (time-ordered)")
    return arr


def _to_a(b: np.ndarray, base: int, ref: int, dev: float, rate: float) -> np.ndarray:
    """Inverse of the model ``t_b = t_a + base + dev + rate*(t_a - ref)``: t_a from t_b (int64).

    With u = t_b - base - ref: t_a = ref + u - (dev + rate*u)/(1 + rate). Only the small
    correction term is computed in float64 (its rounding error is rate * 2**-53 * |u|)."""
    u = b - np.int64(base + ref)
    corr = np.rint((dev + rate * u.astype(np.float64)) / (1.0 + rate)).astype(np.int64)
    return u - corr + np.int64(ref)


def _to_b(a: np.ndarray, base: int, ref: int, dev: float, rate: float) -> np.ndarray:
    """The model ``t_b = t_a + base + dev + rate*(t_a - ref)`` on int64 arrays."""
    v = (a - np.int64(ref)).astype(np.float64)
    return a + np.int64(base) + np.rint(dev + rate * v).astype(np.int64)


BASELINE_HALFWIDTH = 64
"""Lags either side of a lag (excluding the 2 next to it) whose mean is its local baseline."""


def _correlate(a: np.ndarray, b: np.ndarray, t0: int, bin_ps: int, n_bins: int, bk: Backend,
               center_ps: float = 0.0, halfwidth_ps: float | None = None) -> PeakInfo:
    """FFT cross-correlation c[k] = sum_i A[i] B[i+k] of the two streams binned modulo n_bins
    (same origin t0); the maximum is searched among lags within ``halfwidth_ps`` of
    ``center_ps`` (the whole period if None), and reported as a signed lag near the center.

    pfind takes the mean and sigma over all lags. Here each lag's baseline is the mean of the
    lags 3..64 away on either side, so that data shorter than the correlation period (whose
    accidental background is then a triangle, not flat) neither inflates sigma nor pulls the
    maximum; sigma is the rms of c - baseline over all lags but the 5 around the peak."""
    ha = bk.bin_mod(a, t0, bin_ps, n_bins).astype(np.float64)
    hb = bk.bin_mod(b, t0, bin_ps, n_bins).astype(np.float64)
    c = np.fft.irfft(np.conj(np.fft.rfft(ha)) * np.fft.rfft(hb), n=n_bins)
    m = min(BASELINE_HALFWIDTH, n_bins // 4)
    ring = np.zeros(n_bins)
    ring[3:m + 1] = ring[-m:-2] = 1.0 / (2 * (m - 2))
    base = np.fft.irfft(np.fft.rfft(c) * np.fft.rfft(ring), n=n_bins)
    r = c - base
    kc = int(round(center_ps / bin_ps))
    if halfwidth_ps is None:
        lags = np.arange(kc - n_bins // 2, kc + n_bins // 2, dtype=np.int64)
    else:
        k_lo = math.floor((center_ps - halfwidth_ps) / bin_ps)
        k_hi = math.ceil((center_ps + halfwidth_ps) / bin_ps)
        if k_hi - k_lo + 1 > n_bins:
            raise ValueError("search range exceeds the correlation period")
        lags = np.arange(k_lo, k_hi + 1, dtype=np.int64)
    k = int(lags[int(np.argmax(r[lags % n_bins]))])
    rest = np.ones(n_bins, bool)
    rest[(k + np.arange(-2, 3)) % n_bins] = False
    sigma = float(np.sqrt(np.mean(np.square(r[rest])))) if rest.any() else 0.0
    w = np.maximum(r[(k + np.arange(-1, 2)) % n_bins], 0.0)
    frac = float((w[2] - w[0]) / w.sum()) if w.sum() > 0 else 0.0
    kk = k % n_bins
    sig = float(r[kk]) / sigma if sigma > 0 else 0.0
    return PeakInfo(bin_ps=bin_ps, n_bins=n_bins, lag=k, offset_ps=(k + frac) * bin_ps,
                    height=float(c[kk]), mean=float(base[kk]), sigma=sigma, significance=sig)


@dataclass(frozen=True)
class _Centroid:
    offset_ps: float
    uncertainty_ps: float
    n_signal: float
    n_background: float
    rms_ps: float


def _refine(a: np.ndarray, b: np.ndarray, center_ps: float, halfwidth_ps: int, bk: Backend,
            stage: str) -> _Centroid:
    """Background-subtracted centroid of the coincidence peak from the exact pair differences.

    Differences b - a within ``6 * halfwidth_ps`` of ``center_ps`` are taken; those more than
    ``2 * halfwidth_ps`` away estimate the flat accidental density; the centroid is then iterated
    inside a window of +-min(halfwidth, 5 sigma) around the current centre, each time removing the
    accidentals' contribution (uniform over the window, so their mean is the window centre)."""
    h_max = int(halfwidth_ps)
    c_int = int(round(center_ps))
    d = bk.pair_deltas(a, b, c_int - 6 * h_max, c_int + 6 * h_max)
    x = (np.asarray(d, np.int64) - c_int).astype(np.float64)
    rho = np.count_nonzero(np.abs(x) > 2 * h_max) / (8.0 * h_max)  # accidentals per ps
    core = x[np.abs(x) <= h_max]
    if core.size == 0:
        raise AlignmentError(f"{stage}: no pair differences within {h_max} ps of the expected "
                             f"offset", stage=stage)
    c = float(np.median(core))
    h = float(h_max)
    ns = nb = 0.0
    sigma = float(h_max)
    for _ in range(8):
        sel = x[np.abs(x - c) <= h]
        nb = rho * 2.0 * h
        ns = sel.size - nb
        if ns < 3.0 + 5.0 * math.sqrt(nb):
            raise AlignmentError(f"{stage}: only {ns:.1f} coincidences above {nb:.1f} "
                                 f"accidentals in the refinement window (no peak)", stage=stage)
        mu = (float(sel.sum()) - nb * c) / ns
        var = (float(np.square(sel - mu).sum()) - nb * (h * h / 3.0 + (c - mu) ** 2)) / ns
        sigma = math.sqrt(max(var, 1.0))
        done = abs(mu - c) < 0.01
        c = mu
        h = min(float(h_max), max(5.0 * sigma, 50.0))
        if done:
            break
    unc = math.sqrt(ns * sigma**2 + nb * h * h / 3.0) / ns
    return _Centroid(float(c_int + c), float(unc), float(ns), float(nb), float(sigma))


def _check_sig(peak: PeakInfo, threshold: float, stage: str) -> None:
    if not peak.significance >= threshold:
        raise AlignmentError(
            f"{stage}: correlation peak significance {peak.significance:.2f} sigma is below the "
            f"threshold {threshold:g} (bin {peak.bin_ps} ps x {peak.n_bins}); the streams do not "
            f"look correlated (check the offset hint, rates, or use longer spans)",
            significance=peak.significance, stage=stage)


# ----------------------------------------------------------------------------- pfind

def find_offset(a_ps: npt.ArrayLike, b_ps: npt.ArrayLike, *,
                coarse_bin_ps: int = DEFAULT_COARSE_BIN_PS, fine_bin_ps: int = DEFAULT_FINE_BIN_PS,
                n_bins: int = DEFAULT_N_BINS, offset_hint_ps: int = 0,
                refine_halfwidth_ps: int | None = None, min_significance: float = 6.0,
                backend: object | None = None) -> OffsetEstimate:
    """Clock offset between two nodes' photon streams, qcrypto pfind's way (two-resolution FFT
    cross-correlation), refined with the exact pair differences.

    ``a_ps``, ``b_ps``: sorted int64 photon times (ps) of node a and node b (one channel or all
    detectors merged) over the same stretch of time. Returns ``offset_ps`` with ``b ≈ a +
    offset_ps``. The clocks must not drift apart by more than about a fine bin over the data
    (use :func:`find_offset_and_drift` otherwise).

    Unambiguous range: the coarse correlation knows the offset modulo the coarse span
    ``S = coarse_bin_ps * n_bins`` (pfind's defaults: 2.048 us x 2^17 = 268 ms), so the result lies
    in ``[offset_hint_ps - S/2, offset_hint_ps + S/2)``. The fine correlation is searched within
    two coarse bins of the coarse peak, so ``fine_bin_ps * n_bins`` must exceed 4 coarse bins.
    The refinement takes pair differences within ``refine_halfwidth_ps`` (default 4 fine bins) of
    the fine peak. An offset outside the range aliases in the FFT (binning is modulo the span);
    the exact pair differences then show no peak there and :class:`AlignmentError` is raised
    (stage ``"refine"``) rather than a wrong offset returned.

    Raises :class:`AlignmentError` when the coarse or fine peak is below ``min_significance``
    sigma (the error names the significance).
    """
    bk = resolve_backend(backend)
    a = as_times(a_ps, "a_ps")
    b = as_times(b_ps, "b_ps")
    if a.size == 0 or b.size == 0:
        raise AlignmentError("find_offset: a stream is empty", stage="input")
    search = 2 * coarse_bin_ps + 2 * fine_bin_ps
    if 2 * search >= fine_bin_ps * n_bins:
        raise ValueError(f"fine span {fine_bin_ps * n_bins} ps must exceed 4 coarse bins "
                         f"({4 * coarse_bin_ps} ps)")
    hint = int(offset_hint_ps)
    bs = b - np.int64(hint)
    t0 = int(a[0])
    coarse = _correlate(a, bs, t0, coarse_bin_ps, n_bins, bk)
    _check_sig(coarse, min_significance, "coarse")
    fine = _correlate(a, bs, t0, fine_bin_ps, n_bins, bk, coarse.offset_ps, search)
    _check_sig(fine, min_significance, "fine")
    h = int(refine_halfwidth_ps or 4 * fine_bin_ps)
    r = _refine(a, bs, fine.offset_ps, h, bk, "refine")
    return OffsetEstimate(offset_ps=hint + int(round(r.offset_ps)),
                          significance=coarse.significance, uncertainty_ps=r.uncertainty_ps,
                          n_pairs=int(round(r.n_signal)), n_background=r.n_background,
                          peak_rms_ps=r.rms_ps, coarse=coarse, fine=fine)


# ----------------------------------------------------------------------------- fpfind

@dataclass
class ClockModel:
    """``t_b = t_a + base + dev + rate * (t_a - ref)``; base, ref int ps; dev float ps."""

    base: int
    ref: int
    dev: float
    rate: float

    def to_a(self, b: np.ndarray) -> np.ndarray:
        return _to_a(b, self.base, self.ref, self.dev, self.rate)

    def to_b(self, a: np.ndarray) -> np.ndarray:
        return _to_b(a, self.base, self.ref, self.dev, self.rate)

    def correct(self, r1: float, t1: float, r2: float, t2: float) -> None:
        """Apply residuals r1, r2 (ps, a units, measured at a-times t1, t2 relative to ref):
        residual(t) = r1 + eps (t - t1), and t_b = M(t_a + residual)."""
        eps = (r2 - r1) / (t2 - t1)
        self.dev += (1.0 + self.rate) * (r1 - eps * t1)
        self.rate += (1.0 + self.rate) * eps


def _window(a: np.ndarray, b: np.ndarray, m: ClockModel, start: int, length: int,
            margin: int) -> tuple[np.ndarray, np.ndarray, float]:
    """a's times in [start, start+length) and b's times mapped to a's timebase within
    [start - margin, start + length + margin); plus the mean of a's times relative to m.ref."""
    stop = start + length
    aw = a[np.searchsorted(a, start):np.searchsorted(a, stop)]
    lo_hi = m.to_b(np.array([start - margin, stop + margin], np.int64))
    bw = m.to_a(b[np.searchsorted(b, lo_hi[0] - 1000):np.searchsorted(b, lo_hi[1] + 1000)])
    t_mean = float((aw - start).mean()) + (start - m.ref) if aw.size else length / 2 + start - m.ref
    return aw, bw, t_mean


def find_offset_and_drift(a_ps: npt.ArrayLike, b_ps: npt.ArrayLike, *,
                          span_ps: int = 100_000_000_000, separation_ps: int | None = None,
                          offset_hint_ps: int = 0, drift_hint_ppm: float = 0.0,
                          coarse_bin_ps: int = DEFAULT_COARSE_BIN_PS,
                          fine_bin_ps: int = DEFAULT_FINE_BIN_PS, n_bins: int = DEFAULT_N_BINS,
                          resolution_step: int = 16, max_coarse_doublings: int = 4,
                          max_drift_ppm: float = 100.0, refine_halfwidth_ps: int | None = None,
                          min_significance: float = 6.0, max_refinements: int = 4,
                          backend: object | None = None) -> ClockEstimate:
    """Offset and frequency offset of b's clock against a's, fpfind's early/late way.

    ``a_ps``, ``b_ps``: sorted int64 photon times (ps) of the two nodes covering at least
    ``span_ps + separation_ps``. The early span is the first ``span_ps`` (Ta, default 0.1 s) of
    the overlap (in a's timebase), the late span starts ``separation_ps`` (Ts, default: as late
    as the data allow) after it. Each iteration correlates both spans (b mapped through the current
    model), converts the two residual offsets into an offset and frequency correction
    (df = peak drift / Ts) and applies it; the bin width goes from ``coarse_bin_ps`` down by
    ``resolution_step`` per iteration to ``fine_bin_ps``, and then up to ``max_refinements``
    passes on the exact pair differences (:func:`find_offset`'s centroid) follow.

    Returns a :class:`ClockEstimate` with ``t_b = t_a + offset_ps + drift_ppm*1e-6*(t_a -
    ref_ps)``, ``ref_ps`` = start of the early span (a's timebase).

    Limits: the first correlation needs |drift - drift_hint| * Ta of at most about a coarse bin
    (default: ~20 ppm at 0.1 s); if its peak is below ``min_significance`` the coarse bin is
    doubled up to ``max_coarse_doublings`` times (fpfind). The offset must lie within half the
    coarse span of ``offset_hint_ps``; the late peak is searched within ``max_drift_ppm`` * Ts
    of the early one. The statistical errors are ~ sigma_peak / sqrt(pairs per span) for the
    offset and sqrt(2) times that / Ts for the drift.
    """
    bk = resolve_backend(backend)
    a = as_times(a_ps, "a_ps")
    b = as_times(b_ps, "b_ps")
    if a.size == 0 or b.size == 0:
        raise AlignmentError("find_offset_and_drift: a stream is empty", stage="input")
    m = ClockModel(base=int(offset_hint_ps), ref=int(a[0]), dev=0.0,
               rate=float(drift_hint_ppm) * 1e-6)
    b_ends = m.to_a(b[[0, -1]])
    start = max(int(a[0]), int(b_ends[0]))
    end = min(int(a[-1]), int(b_ends[1]))
    ta = int(span_ps)
    ts = int(separation_ps) if separation_ps is not None else end - start - ta
    if ts < ta or start + ts + ta > end + 1:
        raise ValueError(f"need overlapping data of at least 2 spans: span {ta} ps, separation "
                         f"{ts} ps, overlap {end - start} ps")
    m.dev += m.rate * (start - m.ref)   # re-anchor the model at the early span's start
    m.ref = start
    late_start = start + ts
    stages: list[StageInfo] = []

    # iteration 0: coarse, global search on the early span (doubling the bin if needed)
    bin_ps = int(coarse_bin_ps)
    for doubling in range(max_coarse_doublings + 1):
        span_c = bin_ps * n_bins
        aw, bw, t1 = _window(a, b, m, start, ta, span_c // 2)
        early = _correlate(aw, bw, start, bin_ps, n_bins, bk)
        if early.significance >= min_significance or doubling == max_coarse_doublings:
            break
        bin_ps *= 2
    _check_sig(early, min_significance, f"early span, coarse bin {bin_ps} ps")
    hw = max_drift_ppm * 1e-6 * ts + 4 * bin_ps
    aw, bw, t2 = _window(a, b, m, late_start, ta, int(abs(early.offset_ps) + hw))
    late = _correlate(aw, bw, late_start, bin_ps, n_bins, bk, early.offset_ps, hw)
    _check_sig(late, min_significance, f"late span, coarse bin {bin_ps} ps")
    significance = min(early.significance, late.significance)
    stages.append(StageInfo(bin_ps, early.offset_ps, late.offset_ps, early.significance,
                            late.significance))
    m.correct(early.offset_ps, t1, late.offset_ps, t2)

    # finer correlations around the corrected model
    while bin_ps > fine_bin_ps:
        prev = bin_ps
        bin_ps = max(int(fine_bin_ps), bin_ps // resolution_step)
        hw = 4.0 * prev
        res = []
        for where, s in (("early", start), ("late", late_start)):
            aw, bw, t = _window(a, b, m, s, ta, int(hw) + bin_ps)
            p = _correlate(aw, bw, s, bin_ps, n_bins, bk, 0.0, hw)
            _check_sig(p, min_significance, f"{where} span, bin {bin_ps} ps")
            res.append((p, t))
        (p1, t1), (p2, t2) = res
        stages.append(StageInfo(bin_ps, p1.offset_ps, p2.offset_ps, p1.significance,
                                p2.significance))
        m.correct(p1.offset_ps, t1, p2.offset_ps, t2)

    # exact pair differences
    h = int(refine_halfwidth_ps or 4 * fine_bin_ps)
    cents: list[_Centroid] = []
    for _ in range(max(1, max_refinements)):
        cents = []
        times = []
        for where, s in (("early", start), ("late", late_start)):
            aw, bw, t = _window(a, b, m, s, ta, 6 * h + 1000)
            cents.append(_refine(aw, bw, 0.0, h, bk, f"{where} span refinement"))
            times.append(t)
        c1, c2 = cents
        stages.append(StageInfo(0, c1.offset_ps, c2.offset_ps, math.nan, math.nan))
        m.correct(c1.offset_ps, times[0], c2.offset_ps, times[1])
        if abs(c1.offset_ps) < 0.5 and abs(c2.offset_ps) < 0.5:
            break
    c1, c2 = cents
    t1, t2 = times
    sd_rate = math.hypot(c1.uncertainty_ps, c2.uncertainty_ps) / (t2 - t1)
    sd_off = math.hypot(c1.uncertainty_ps, sd_rate * t1)
    return ClockEstimate(offset_ps=m.base + int(round(m.dev)), drift_ppm=float(m.rate * 1e6),
                         ref_ps=m.ref,
                         offset_uncertainty_ps=sd_off, drift_uncertainty_ppm=sd_rate * 1e6,
                         significance=significance,
                         n_pairs=int(round(c1.n_signal + c2.n_signal)), span_ps=ta,
                         separation_ps=ts, stages=tuple(stages))
