"""From simulated instrument state to photon-stream parameters.

The serial twins (:mod:`qnode.hal_sim.twins.elliptec`, :mod:`~qnode.hal_sim.twins.tc200`,
:mod:`~qnode.hal_sim.twins.ibeam`) keep device state; these functions turn it into what
:class:`~qnode.hal_sim.PhotonStreamSimulator` uses, and :func:`apply_instruments` pushes it in.

Conventions (Poincaré sphere as in :mod:`qnode.hal_sim.physics.polarisation`: Z+ = H, X+ = D):

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
* **Fibre drift and compensator → the node's rotation** (:class:`PolarisationCoupling`). Each
  analyzer node's fibre drifts (:class:`~qnode.hal_sim.physics.polarisation.FibreDrift`: D(t) on the
  photon's Stokes vector). The compensator sits after the fibre, before the node's basis-choice
  beam splitter: a half-wave plate fixed with its fast axis along H, then a half-wave plate on an
  ELL14 at θ from H (mount angle − ``zero_deg``). The pair maps linear polarisation at φ to
  φ + 2θ (φ → −φ → 2θ + φ): a rotator, on the Poincaré sphere the rotation C = R_Y(4θ)
  (:func:`compensator_rotation`), identity at θ = 0. The photon reaches the analyzers as C·D·s,
  so the simulator's rotation of that node is (C·D)ᵀ (E = (R_a·a)ᵀ·T·(R_b·b)). The compensator
  undoes drift about Y (rotations of linear polarisation) exactly, and nothing else; see
  :mod:`qnode.hal_sim.physics.polarisation`. For Φ+ (and Ψ−) with Y rotations only the *relative*
  rotation of the two fibres matters (the state is invariant under R⊗R for a real rotation R),
  so one end's compensator restores the correlations of both.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .photon_stream import PhotonStreamSimulator
from .polarisation import Y_AXIS, FibreDrift, rotation_about, rotation_angle_rad
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
    :class:`qnode.hal_sim.twins.single_quantum.SingleQuantumSim`)."""

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


# ------------------------------------------------------------------ polarisation drift

def compensator_rotation(angle_deg: float, zero_deg: float = 0.0) -> np.ndarray:
    """The compensator's rotation of the Poincaré sphere (3×3): a fixed HWP along H, then a HWP
    at ``angle_deg`` (deg, mount angle; fast axis along H at ``zero_deg``): R_Y(4·(θ − zero))
    (module docstring)."""
    return rotation_about(Y_AXIS, 4.0 * math.radians(angle_deg - zero_deg))


@dataclass(frozen=True)
class CompensatorMount:
    """A node's compensator plate: ``node`` of the link, the twin (``angle_deg``), and the mount
    angle (deg) at which its fast axis lies along H."""

    node: str
    waveplate: Waveplate
    zero_deg: float = 0.0


class PolarisationCoupling:
    """The fibres' polarisation drift and the nodes' compensators of one M link; called with
    the simulator before every slice (``sim.time_ps`` is the slice's start).

    Each node's rotation is (C·D)ᵀ with D the fibre's :class:`FibreDrift` advanced to the
    slice's start and C its compensator (identity without one); it is constant over a slice and
    pushed into the simulator only when it changed. Nodes with neither are left alone.
    :meth:`step` is a triggered step; :meth:`truth` the ground truth.
    """

    def __init__(self, drifts: Mapping[str, FibreDrift] | None = None):
        self.drifts: dict[str, FibreDrift] = dict(drifts or {})
        self.compensators: dict[str, CompensatorMount] = {}
        self._applied: dict[str, np.ndarray] = {}

    def add_compensator(self, mount: CompensatorMount) -> None:
        if mount.node in self.compensators:
            raise ValueError(f"node {mount.node!r} already has a compensator")
        self.compensators[mount.node] = mount

    def drift(self, node: str) -> FibreDrift:
        """The node's fibre drift (a static one is made on first use)."""
        if node not in self.drifts:
            self.drifts[node] = FibreDrift()
        return self.drifts[node]

    def compensator_matrix(self, node: str) -> np.ndarray:
        m = self.compensators.get(node)
        return np.eye(3) if m is None else compensator_rotation(m.waveplate.angle_deg, m.zero_deg)

    def photon_rotation(self, node: str) -> np.ndarray:
        """C·D of ``node`` now: what happens to its photon's Stokes vector before the
        analyzers."""
        d = self.drifts[node].rotation if node in self.drifts else np.eye(3)
        return self.compensator_matrix(node) @ d

    def __call__(self, sim: PhotonStreamSimulator) -> None:
        t_s = sim.time_ps * 1e-12
        for node in sorted(set(self.drifts) | set(self.compensators)):
            if node in self.drifts:
                self.drifts[node].advance_to(max(t_s, self.drifts[node].time_s))
            m = self.photon_rotation(node)
            last = self._applied.get(node)
            if last is None or not np.allclose(last, m, rtol=0, atol=1e-12):
                sim.set_rotation(node, m.T)
                self._applied[node] = m

    def step(self, node: str, angle_deg: float, axis: tuple[float, float, float] = Y_AXIS
             ) -> float:
        """A triggered step of ``node``'s fibre (deg about ``axis``) at its drift's present
        time; the simulator sees it from its next slice. Returns that time (s)."""
        d = self.drift(node)
        d.step(angle_deg, axis)
        return d.time_s

    def truth(self, sim: PhotonStreamSimulator) -> dict[str, Any]:
        """Per node: the fibre's D, the compensator's angle (deg) and C·D; and
        ``relative_rotation_deg``, the angle of (C_a·D_a)·(C_b·D_b)ᵀ: 0 when the two photons
        see the same rotation, which for Φ+ or Ψ− and rotations about Y leaves the
        correlations as emitted."""
        nodes: dict[str, Any] = {}
        for n in sim.link.nodes:
            d = self.drifts.get(n.name)
            comp = self.compensators.get(n.name)
            nodes[n.name] = {
                "fibre_rotation": (d.rotation if d else np.eye(3)).tolist(),
                "fibre_angle_deg": math.degrees(rotation_angle_rad(d.rotation)) if d else 0.0,
                "walk_angle_rad": d.walk_angle_rad if d else 0.0,
                "steps": [{"at_s": t, "angle_deg": a, "axis": list(ax)}
                          for t, a, ax in (d.applied_steps if d else [])],
                "time_s": d.time_s if d else sim.time_ps * 1e-12,
                "compensator_angle_deg": None if comp is None else comp.waveplate.angle_deg,
                "photon_rotation": self.photon_rotation(n.name).tolist()}
        a, b = (n.name for n in sim.link.nodes)
        rel = self.photon_rotation(a) @ self.photon_rotation(b).T
        return {"nodes": nodes, "relative_rotation_deg": math.degrees(rotation_angle_rad(rel))}
