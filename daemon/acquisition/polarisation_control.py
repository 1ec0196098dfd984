"""Polarisation compensation of an M-type link: keep the visibility while the fibres drift.

Each fibre from the source turns the photons' polarisation, and the turn drifts (temperature,
stress). The analyzer node's **compensator** — a half-wave plate fixed along H followed by a
half-wave plate on an ELL14 rotation mount, in front of the node's analyzers — is a rotator: the
plate at θ turns linear polarisation by 2θ, the Poincaré sphere by 4θ about Y (``[analyzer].
compensator``; :mod:`qnode.hal_sim.physics.coupling` simulates it). It undoes the part of a
drift that rotates linear polarisation (about Y) and nothing else: birefringence along H/V or
D/A makes linear polarisation elliptical and needs a three-plate controller (QWP–HWP–QWP). A
drift with such a component leaves a visibility this controller cannot restore; it then reports
``unlocked`` instead of pretending.

**Which end.** Only the link's counter (the analyzer whose id sorts first) runs the controller:
it is where the cross-node coincidences are counted, so it measures the visibility without a
round trip, and one end is enough. For Φ+ (and Ψ−) a rotation R applied to both photons leaves
the state as it is (R⊗R for a real rotation), so with rotations about Y only the *relative*
turn of the two fibres matters: the counter's rotator undoes its own fibre's drift and its
peer's alike.

**What it does** (:class:`PolarisationController`):

1. *referencing*: once the counter's clock tracker is LOCKED, the visibility V_ref is measured
   with σ ≤ 0.3·tolerance (``compensate_at_start``: after a search).
2. *locked*: the visibility of consecutive windows of ``compensate_window_s`` of tag time is
   watched; a window with V < (1 − threshold)·V_ref, lower by more than 3σ, starts a
   recalibration.
3. *calibrating*: a search through the ELL14 driver (``move_absolute_deg``):
   a coarse scan of ``compensate_scan_points`` plate angles over one period of V(θ) (90° of the
   plate: V depends on 4θ), each measured to σ ≤ 0.03, a weighted fit of
   V(θ) = c₀ + c₁·cos 4θ + c₂·sin 4θ and its maximum θ*; then a fine step: θ* and
   θ* ± ``compensate_fine_step_deg`` to σ ≤ 0.5·tolerance, and the fit again over all points.
   Every point waits ``compensate_settle_s`` of tag time after the move (the photons counted
   were measured with the plate there), then integrates until its σ is reached: the
   coincidences it needs are N = (1 − V²)/σ² (:func:`required_coincidences`), so the
   integration time is N over the matched-basis coincidence rate (logged per point). The plate
   goes to the fitted maximum and the visibility is measured as at referencing: at
   V ≥ (1 − tolerance)·V_ref the link is *locked* again, the time since the drop was detected
   is reported (``recalibration_s``) and the counter's cumulative figures restart (they would
   mix the drifted stretch in otherwise). Otherwise the search repeats from there, up to
   ``compensate_max_attempts`` times, then the plate stays at the best angle found and the
   state is *unlocked*: it is watched as when locked (a window back within tolerance locks it)
   and searched again every ``compensate_retry_s``.

The visibility is the counter's (:func:`~.cross_node.link_figures`): the mean over the bases
both ends measure of s_b·E_bb, accidentals subtracted. Telemetry (:meth:`telemetry`):
``polarisation_state`` (referencing | locked | calibrating | unlocked), ``calibrating``,
``compensator_angle_deg``, ``visibility_reference``, ``visibility_window``,
``recalibrations_total``, ``recalibration_s`` (the last one).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from qnode.daemon.acquisition.cross_node import link_figures
from qnode.daemon.bus.telemetry import POLARISATION_STATES

if TYPE_CHECKING:
    from qnode.daemon.acquisition.cross_node import CountWindow, CrossNodeCounter
    from qnode.daemon.bus.telemetry import PolarisationTelemetry
    from qnode.daemon.runtime.config import CompensationConfig

log = logging.getLogger("qnode.polarisation")

STATES = POLARISATION_STATES
COARSE_SIGMA = 0.03          # σ of a coarse-scan point's visibility
MIN_SIFTED = 200             # no measurement from fewer matched-basis coincidences
PERIOD_DEG = 90.0            # V(θ) of a rotator: a function of 4θ


class MeterTimeout(RuntimeError):
    """No measurement of the wanted precision came within the time allowed."""


@dataclass(frozen=True)
class Measurement:
    """One visibility measurement: ``visibility`` (accidental-subtracted), its ``sigma``, the
    matched-basis coincidences behind it (``sifted``), the tag time integrated (``span_s``, s)
    and the compensator angle it was taken at (``angle_deg``, deg)."""

    visibility: float
    sigma: float
    sifted: int
    span_s: float
    angle_deg: float = math.nan


def required_coincidences(sigma: float, visibility: float) -> int:
    """Matched-basis coincidences for a visibility of standard error ``sigma``:
    N = (1 − V²)/σ² (binomial error of a correlation E from N events), at least
    :data:`MIN_SIFTED`; V is clipped to [0, 0.99] so a near-perfect guess asks enough."""
    v = min(max(abs(visibility), 0.0), 0.99)
    return max(MIN_SIFTED, math.ceil((1.0 - v * v) / (sigma * sigma)))


def visibility_sigma(visibility: float, sifted: float) -> float:
    """σ of a visibility from ``sifted`` coincidences: √((1 − V²)/N), with 1 − V² ≥ 0.02."""
    if sifted <= 0:
        return math.inf
    return math.sqrt(max(1.0 - visibility * visibility, 0.02) / sifted)


def fit_sinusoid(angles_deg: list[float], values: list[float], sigmas: list[float]
                 ) -> tuple[float, float, float, float]:
    """Weighted least squares of V(θ) = c₀ + c₁·cos 4θ + c₂·sin 4θ (θ in deg). Returns
    (c₀, amplitude A = √(c₁² + c₂²), θ* in [0, 90) deg where V is largest, σ_A)."""
    th = np.radians(np.asarray(angles_deg, float)) * 4.0
    w = 1.0 / np.maximum(np.asarray(sigmas, float), 1e-6)
    design = np.column_stack([np.ones_like(th), np.cos(th), np.sin(th)])
    coef, *_ = np.linalg.lstsq(design * w[:, None], np.asarray(values, float) * w, rcond=None)
    c0, c1, c2 = (float(x) for x in coef)
    amplitude = math.hypot(c1, c2)
    best = (math.degrees(math.atan2(c2, c1)) / 4.0) % PERIOD_DEG
    cov = np.linalg.pinv((design * w[:, None]).T @ (design * w[:, None]))
    # σ of the amplitude along the fitted direction
    u = np.array([0.0, c1, c2]) / max(amplitude, 1e-12)
    sigma_a = float(math.sqrt(max(float(u @ cov @ u), 0.0)))
    return c0, amplitude, best, sigma_a


class VisibilityMeter(Protocol):
    """Where the controller's visibilities come from (:class:`CounterMeter` on a node)."""

    async def wait_ready(self) -> None: ...

    async def measure(self, *, sigma: float | None = None, span_s: float | None = None,
                      skip_s: float = 0.0, timeout_s: float = 60.0) -> Measurement: ...

    async def restart(self) -> None: ...


class PolarisationController:
    """The compensation loop of one analyzer end (module docstring).

    ``cfg``: the ``[analyzer]`` compensation keys; ``move(angle_deg)``: turns the compensator's
    ELL14 and returns where it stopped (deg); ``meter``: visibility measurements; ``link``: for
    the logs; ``clock``/``sleep``: time (s), replaceable in tests.
    """

    def __init__(self, cfg: CompensationConfig, *, move: Callable[[float], Awaitable[float]],
                 meter: VisibilityMeter, link: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep):
        self.cfg = cfg
        self._move = move
        self.meter = meter
        self.link = link
        self._clock = clock
        self._sleep = sleep
        self.state = "referencing"
        self.angle_deg = float(cfg.start_angle_deg)
        self.reference: Measurement | None = None
        self.window: Measurement | None = None
        self.recalibrations = 0
        self.failures = 0
        self.last_recalibration_s: float | None = None
        self.points: list[Measurement] = []      # the last search's measurements
        self._unlocked_at: float | None = None

    # ------------------------------------------------------------------ precision targets
    @property
    def fine_sigma(self) -> float:
        return 0.5 * self.cfg.tolerance

    @property
    def reference_sigma(self) -> float:
        return 0.3 * self.cfg.tolerance

    @property
    def calibrating(self) -> bool:
        return self.state == "calibrating"

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        """Reference, then watch and recalibrate until cancelled (a role task)."""
        await self.meter.wait_ready()
        if self.reference is None:
            await self.move(self.angle_deg)
            await self.take_reference()
        while True:
            drop = await self.monitor_once()
            if drop:
                await self.recalibrate()
            elif (self.state == "unlocked" and self._unlocked_at is not None
                  and self._clock() - self._unlocked_at >= self.cfg.retry_s):
                await self.recalibrate(reason="retry")

    async def take_reference(self) -> Measurement:
        """The reference visibility (after a search with ``at_start``); state → locked."""
        self._set_state("calibrating" if self.cfg.at_start else "referencing")
        started = self._clock()
        if self.cfg.at_start:
            found = await self._search()
            if found is not None:
                await self.move(found)
        ref = await self._measure(sigma=self.reference_sigma, skip=True)
        self.reference = self.window = ref
        if self.cfg.at_start:
            self.last_recalibration_s = self._clock() - started
        self._set_state("locked")
        log.info("polarisation reference taken: V = %.4f ± %.4f at %.2f deg", ref.visibility,
                 ref.sigma, self.angle_deg,
                 extra=self._extra(visibility=round(ref.visibility, 5),
                                   sigma=round(ref.sigma, 5)))
        return ref

    async def monitor_once(self) -> bool:
        """One window of ``window_s``: True if it shows a significant drop (locked/unlocked);
        an unlocked link back within tolerance is locked again."""
        assert self.reference is not None
        m = await self.meter.measure(span_s=self.cfg.window_s,
                                     timeout_s=max(30.0, 10 * self.cfg.window_s))
        self.window = m
        ref = self.reference
        if self.state == "unlocked" and m.visibility >= (1 - self.cfg.tolerance) * ref.visibility:
            self._set_state("locked")
            log.info("polarisation back within tolerance: V = %.4f", m.visibility,
                     extra=self._extra(visibility=round(m.visibility, 5)))
            return False
        if self.state != "locked":
            return False
        limit = (1 - self.cfg.threshold) * ref.visibility
        significant = ref.visibility - m.visibility > 3 * math.hypot(m.sigma, ref.sigma)
        return m.visibility < limit and significant

    async def recalibrate(self, reason: str = "drop") -> bool:
        """Search for the plate angle that restores the reference visibility; True when the
        link is locked again (module docstring)."""
        assert self.reference is not None
        ref = self.reference.visibility
        started = self._clock()
        self._set_state("calibrating")
        seen = self.window.visibility if self.window is not None else math.nan
        log.warning("polarisation %s: V = %.4f against %.4f; calibrating", reason, seen, ref,
                    extra=self._extra(visibility=round(seen, 5), reference=round(ref, 5),
                                      reason=reason))
        best: Measurement | None = None
        try:
            for attempt in range(1, self.cfg.max_attempts + 1):
                found = await self._search()
                if found is not None:
                    await self.move(found)
                check = await self._measure(sigma=self.reference_sigma, skip=True)
                self.window = check
                if best is None or check.visibility > best.visibility:
                    best = check
                if check.visibility >= (1 - self.cfg.tolerance) * ref:
                    self.recalibrations += 1
                    self.last_recalibration_s = self._clock() - started
                    await self.meter.restart()
                    self._set_state("locked")
                    log.info("polarisation locked again in %.2f s: V = %.4f ± %.4f at %.2f deg "
                             "(attempt %d)", self.last_recalibration_s, check.visibility,
                             check.sigma, self.angle_deg, attempt,
                             extra=self._extra(visibility=round(check.visibility, 5),
                                               reference=round(ref, 5), attempt=attempt,
                                               recalibration_s=round(
                                                   self.last_recalibration_s, 3)))
                    return True
                log.info("polarisation search attempt %d ended at V = %.4f (want ≥ %.4f)",
                         attempt, check.visibility, (1 - self.cfg.tolerance) * ref,
                         extra=self._extra(visibility=round(check.visibility, 5),
                                           attempt=attempt))
        except BaseException:
            self._set_state("unlocked")
            self._unlocked_at = self._clock()
            raise
        assert best is not None
        if abs(best.angle_deg - self.angle_deg) > 1e-6 and math.isfinite(best.angle_deg):
            await self.move(best.angle_deg)
        self.failures += 1
        self._unlocked_at = self._clock()
        self._set_state("unlocked")
        log.warning("polarisation not restored after %d searches: best V = %.4f against %.4f "
                    "(a drift the rotator cannot undo?); retrying in %g s",
                    self.cfg.max_attempts, best.visibility, ref, self.cfg.retry_s,
                    extra=self._extra(visibility=round(best.visibility, 5),
                                      reference=round(ref, 5)))
        return False

    # ------------------------------------------------------------------ the search
    async def _search(self) -> float | None:
        """Coarse scan, fit, fine step, fit: the plate angle (deg) of the largest visibility, or
        None when the scan shows no dependence on the angle."""
        cfg = self.cfg
        base = self.angle_deg
        self.points = []
        for k in range(cfg.scan_points):
            self.points.append(await self._point(base + k * PERIOD_DEG / cfg.scan_points,
                                                 COARSE_SIGMA))
        c0, amp, best, sigma_a = self._fit()
        if amp < 3 * sigma_a:
            log.warning("polarisation scan shows no fringe (amplitude %.3f ± %.3f)", amp,
                        sigma_a, extra=self._extra(amplitude=round(amp, 4)))
            return None
        best = self._near(best, base)
        for a in (best - cfg.fine_step_deg, best + cfg.fine_step_deg, best):
            self.points.append(await self._point(a, self.fine_sigma))
        c0, amp, best, sigma_a = self._fit()
        best = self._near(best, self.angle_deg)
        log.info("polarisation fit: V(θ) = %.3f + %.3f·cos 4(θ − %.2f°)", c0, amp, best,
                 extra=self._extra(offset=round(c0, 4), amplitude=round(amp, 4),
                                   best_deg=round(best, 3)))
        return best

    def _fit(self) -> tuple[float, float, float, float]:
        pts = self.points
        return fit_sinusoid([p.angle_deg for p in pts], [p.visibility for p in pts],
                            [p.sigma for p in pts])

    @staticmethod
    def _near(angle: float, to: float) -> float:
        """The angle ≡ ``angle`` (mod 90°) nearest ``to``, in [0, 360)."""
        k = round((to - angle) / PERIOD_DEG)
        return (angle + k * PERIOD_DEG) % 360.0

    async def _point(self, angle_deg: float, sigma: float) -> Measurement:
        await self.move(angle_deg % 360.0)
        m = await self._measure(sigma=sigma, skip=True)
        log.debug("polarisation point %.2f deg: V = %.4f ± %.4f (%d coincidences, %.2f s)",
                  self.angle_deg, m.visibility, m.sigma, m.sifted, m.span_s,
                  extra=self._extra(visibility=round(m.visibility, 5)))
        return m

    async def _measure(self, *, sigma: float, skip: bool) -> Measurement:
        m = await self.meter.measure(sigma=sigma, skip_s=self.cfg.settle_s if skip else 0.0)
        return Measurement(m.visibility, m.sigma, m.sifted, m.span_s, self.angle_deg)

    async def move(self, angle_deg: float) -> float:
        """Turn the compensator (deg); returns and keeps the angle it reached."""
        self.angle_deg = float(await self._move(float(angle_deg)))
        return self.angle_deg

    # ------------------------------------------------------------------ reporting
    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.info("polarisation %s -> %s", self.state, state,
                     extra=self._extra(previous=self.state, polarisation_state=state))
            self.state = state

    def _extra(self, **fields: object) -> dict[str, object]:
        return {"link": self.link, "polarisation_state": self.state,
                "angle_deg": round(self.angle_deg, 3), **fields}

    def telemetry(self) -> PolarisationTelemetry:
        """The link telemetry fields of the controller (module docstring)."""
        t: PolarisationTelemetry = {
            "polarisation_state": self.state, "calibrating": self.calibrating,
            "compensator_angle_deg": self.angle_deg, "recalibrations_total": self.recalibrations}
        if self.reference is not None:
            t["visibility_reference"] = self.reference.visibility
        if self.window is not None:
            t["visibility_window"] = self.window.visibility
        if self.last_recalibration_s is not None:
            t["recalibration_s"] = self.last_recalibration_s
        return t


class CounterMeter:
    """Visibility measurements from a :class:`~.cross_node.CrossNodeCounter` (the counter
    end), read on the event loop while the counter runs on a worker thread.

    A measurement starts where the own stream stands now (``own_end``) plus ``skip_s`` of tag
    time and sums the counted spans from there (:meth:`~.cross_node.CrossNodeCounter.window`)
    until its σ and span are reached. ``restart``: restarts the counter's cumulative figures
    (the role does it under its counting lock). ``poll_s``: how often it looks (s).
    """

    def __init__(self, counter: CrossNodeCounter, restart: Callable[[], Awaitable[None]], *,
                 poll_s: float = 0.05):
        self.counter = counter
        self._restart = restart
        self.poll_s = poll_s

    async def wait_ready(self) -> None:
        """Until the peer clock is LOCKED and a visibility can be measured."""
        while True:
            c = self.counter
            tracker = c.tracker
            if (tracker is not None and tracker.state.status.name == "LOCKED"
                    and c.peer_layout is not None and c.processed_to > 0):
                w = c.window(c.processed_to - 500_000_000_000)
                if self.figures(w) is not None:
                    return
            await asyncio.sleep(0.2)

    def figures(self, w: CountWindow) -> tuple[float, int] | None:
        """(visibility, matched-basis coincidences) of a window, or None when it has none."""
        c = self.counter
        if c.peer_layout is None or w.spans == 0:
            return None
        f = link_figures(w.counts, w.accidentals, c.layout, c.peer_layout, c.source_state)
        if "visibility" not in f:
            return None
        n = f.get("sifted_total")
        if n is None:
            n = float(w.counts[0, 0].sum())
        return float(f["visibility"]), int(n)

    def sifted_rate_hz(self, span_s: float = 1.0) -> float | None:
        """Matched-basis coincidences per second of tag time over the last ``span_s``."""
        c = self.counter
        w = c.window(c.processed_to - int(span_s * 1e12))
        fig = self.figures(w)
        if fig is None or w.span_s <= 0:
            return None
        return fig[1] / w.span_s

    async def measure(self, *, sigma: float | None = None, span_s: float | None = None,
                      skip_s: float = 0.0, timeout_s: float = 60.0) -> Measurement:
        """From now + ``skip_s`` of tag time, until σ ≤ ``sigma`` and at least ``span_s`` of
        tag time (either may be None); MeterTimeout after ``timeout_s`` of wall time."""
        c = self.counter
        start = c.own_end + int(skip_s * 1e12)
        rate = self.sifted_rate_hz()
        if sigma is not None and rate:
            planned = required_coincidences(sigma, 0.0) / rate
            log.debug("integration for σ %.4f: ≤ %d coincidences, ≤ %.2f s at %.0f Hz", sigma,
                      required_coincidences(sigma, 0.0), planned, rate,
                      extra={"sigma": sigma, "rate_hz": round(rate, 1),
                             "planned_s": round(planned, 3)})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            await asyncio.sleep(self.poll_s)
            w = c.window(start)
            fig = self.figures(w)
            if fig is not None:
                vis, n = fig
                err = visibility_sigma(vis, n)
                if (n >= MIN_SIFTED and (sigma is None or err <= sigma)
                        and (span_s is None or w.span_s >= span_s)):
                    return Measurement(vis, err, n, w.span_s)
            if loop.time() > deadline:
                raise MeterTimeout(f"no visibility to σ {sigma} over {span_s} s within "
                                   f"{timeout_s} s (have {w.spans} spans)")

    async def restart(self) -> None:
        await self._restart()
