"""From simulated instrument state to photon-stream parameters.

The serial twins (:mod:`qnode.hal_sim.elliptec`, :mod:`~qnode.hal_sim.tc200`,
:mod:`~qnode.hal_sim.ibeam`) keep device state; these functions turn it into what
:class:`~qnode.hal_sim.PhotonStreamSimulator` uses, and :func:`apply_instruments` pushes it in.

Conventions (Poincaré sphere as in :mod:`qnode.hal_sim.polarisation`: Z+ = H, X+ = D):

* **Waveplate → analyzer.** A half-wave plate with its fast axis at θ from H, followed by a PBS
  whose '+' (transmitted) port passes H. The HWP maps linear polarisation at φ to 2θ − φ, so the
  '+' port receives the input polarisation at φ = 2θ: the analyzer measures linear polarisation
  at 2θ, Bloch vector (sin 4θ, 0, cos 4θ). ``zero_deg`` is the mount angle at which the fast axis
  lies along H. Turning the plate by Δθ turns the measured polarisation by 2Δθ and the Bloch
  vector by 4Δθ; for Φ+ (T = diag(1, −1, 1)) and both sides linear, E = cos(2·(φ_a − φ_b)).
* **Oven → brightness.** Collinear quasi-phase-matched SPDC in a crystal of length L: the pair
  rate goes as sinc²(Δk·L/2), and Δk is linear in the temperature offset near the optimum, so
  η(T) = sinc²(x), sinc(x) = sin(x)/x, x = 2·1.391557·(T − T_opt)/ΔT_FWHM: η(T_opt) = 1 and
  η = ½ at T_opt ± ΔT_FWHM/2 (1.391557 solves sinc²(x) = ½). The defaults (45 °C, 2 °C FWHM) are
  illustrative for a PPKTP crystal of a few cm.
* **Pump → pair rate.** SPDC is linear in pump power: B = brightness_hz_per_mw · P_mW · η(T).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from .photon_stream import PhotonStreamSimulator
from .source import CWSource

#: x at which sinc²(x) = 1/2 (sinc(x) = sin x / x)
SINC2_HALF_WIDTH = 1.3915573782515103


def waveplate_analyzer_vector(hwp_angle_deg: float,
                              zero_deg: float = 0.0) -> tuple[float, float, float]:
    """Bloch vector (X, Y, Z) of the '+' port of a HWP at ``hwp_angle_deg`` (deg, mount angle)
    before a PBS: linear polarisation at 2·(θ − zero_deg), i.e. (sin 4θ', 0, cos 4θ')."""
    theta = math.radians(hwp_angle_deg - zero_deg)
    return (math.sin(4 * theta), 0.0, math.cos(4 * theta))


def phase_matching_efficiency(temperature_c: float, optimum_c: float = 45.0,
                              fwhm_c: float = 2.0) -> float:
    """Normalised SPDC phase-matching efficiency η(T) = sinc²(2·1.3916·(T − T_opt)/ΔT_FWHM),
    in [0, 1]; temperatures in °C (see the module docstring)."""
    if fwhm_c <= 0:
        raise ValueError(f"fwhm_c must be > 0, got {fwhm_c!r}")
    x = 2 * SINC2_HALF_WIDTH * (temperature_c - optimum_c) / fwhm_c
    return 1.0 if x == 0 else (math.sin(x) / x) ** 2


def pair_rate_hz(pump_power_mw: float, brightness_hz_per_mw: float = 1e6,
                 phase_matching: float = 1.0) -> float:
    """Pairs/s generated: B = brightness (pairs/s per mW of pump) · P (mW) · η."""
    return max(0.0, brightness_hz_per_mw * pump_power_mw * phase_matching)


# ------------------------------------------------------------------ the twins, by duck type

class Waveplate(Protocol):
    @property
    def angle_deg(self) -> float: ...


class Oven(Protocol):
    def phase_matching(self) -> float: ...


class Pump(Protocol):
    @property
    def power_mw(self) -> float: ...


@dataclass(frozen=True)
class WaveplateMount:
    """Where a simulated waveplate sits: ``node``/``analyzer`` of the simulator's link, the
    twin, and the twin's angle (deg) at which the fast axis lies along H."""

    node: str
    analyzer: str
    waveplate: Waveplate
    zero_deg: float = 0.0


def apply_instruments(sim: PhotonStreamSimulator, *, waveplates: tuple[WaveplateMount, ...] = (),
                      oven: Oven | None = None, pump: Pump | None = None,
                      brightness_hz_per_mw: float = 1e6) -> Mapping[str, object]:
    """Push the twins' present state into a :class:`~qnode.hal_sim.PhotonStreamSimulator`
    (takes effect from its next slice) and return what was set.

    * each waveplate → ``sim.set_analyzer_vector(node, analyzer, vector)``;
    * pump (and oven, if given) → ``sim.set_source``: a CW source gets ``pair_rate_hz``; a pulsed
      one gets ``mean_pairs_per_pulse`` = rate / rep rate.
    """
    applied: dict[str, object] = {}
    for m in waveplates:
        vec = waveplate_analyzer_vector(m.waveplate.angle_deg, m.zero_deg)
        sim.set_analyzer_vector(m.node, m.analyzer, vec)
        applied[f"analyzer:{m.node}/{m.analyzer}"] = vec
    if pump is not None:
        eta = oven.phase_matching() if oven is not None else 1.0
        rate = pair_rate_hz(pump.power_mw, brightness_hz_per_mw, eta)
        _set_source_rate(sim, rate)
        applied["phase_matching"] = eta
        applied["pair_rate_hz"] = rate
    return applied


def _set_source_rate(sim: PhotonStreamSimulator, rate_hz: float) -> None:
    source = sim.link.source
    if isinstance(source, CWSource):
        sim.set_source(dataclasses.replace(source, pair_rate_hz=rate_hz))
    else:
        sim.set_source(dataclasses.replace(source,
                                           mean_pairs_per_pulse=rate_hz / source.rep_rate_hz))


class BiasedDetectors(Protocol):
    """What the coupling reads from a detector-bias controller's simulation (e.g.
    :class:`qnode.hal_sim.single_quantum.SingleQuantumSim`)."""

    def efficiency(self, det: int) -> float: ...
    def dark_count_rate_hz(self, det: int) -> float: ...


def apply_detector_bias(sim: PhotonStreamSimulator, detectors: BiasedDetectors,
                        wiring: Mapping[int, tuple[str, int]]) -> dict[tuple[str, int], tuple]:
    """Push each biased detector's efficiency and dark-count rate (functions of its bias
    current) into the photon simulator. ``wiring`` maps the controller's detector index to the
    (node, tagger channel) it feeds. Returns {(node, channel): (efficiency, dark Hz)}."""
    applied = {}
    for det, (node, channel) in wiring.items():
        eff, dark = detectors.efficiency(det), detectors.dark_count_rate_hz(det)
        sim.set_detector(node, channel, efficiency=eff, dark_count_rate_hz=dark)
        applied[(node, channel)] = (eff, dark)
    return applied
