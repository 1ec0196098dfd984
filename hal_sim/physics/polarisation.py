"""Polarisation of the pair and the analyzers that measure it.

Polarisation states are written on the Poincaré (Bloch) sphere in (X, Y, Z) order with
Z+ = H, Z− = V, X+ = D, X− = A, Y+ = R (right circular), Y− = L.

The pair is Bell-diagonal: zero local Bloch vectors and a correlation matrix T (3×3), so for
analyzer vectors a, b the outcomes s_a, s_b = ±1 have

    P(s_a, s_b) = (1 + s_a·s_b·E)/4,    E = aᵀ·T·b,

and each side's marginal is uniform. Bell states in (X, Y, Z): Φ+ diag(1,−1,1), Φ− diag(−1,1,1),
Ψ+ diag(1,1,−1), Ψ− diag(−1,−1,−1).

**Fibre polarisation drift** (:class:`PolarisationDrift`, :class:`FibreDrift`). A fibre maps the
photon's Stokes vector s to D·s, D ∈ SO(3) (an SU(2) unitary seen on the Poincaré sphere). D(t)
evolves as a seeded random walk — increments of N(0, σ²·Δt) rad about a fixed axis (default Y,
see below) or, with ``walk_axis = None``, about each of X, Y, Z (isotropic Brownian rotation,
E[D(t)] = e^(−σ²t)·I) — plus steps: a rotation by a given angle about a given axis at a given
time, D ← R(axis, angle)·D. An analyzer measuring a photon that went through D measures Dᵀ·a
on the state as emitted, so the simulator's per-node rotation is Dᵀ (times whatever follows the
fibre, :mod:`qnode.hal_sim.physics.coupling`).

Why Y by default: a rotation about Y turns linear polarisation into linear polarisation (at
φ + angle/2): it is what a polarisation *rotator* undoes, and a rotator is what two half-wave
plates make (one fixed, one on an ELL14: the analyzer nodes' compensator). Birefringence with
its axes along H/V or D/A (rotations about Z or X) makes linear polarisation elliptical; one
rotator cannot undo it (that takes a QWP–HWP–QWP controller). Steps and the walk may name any
axis, so that limit can be shown; only the Y component is compensable by the bench's analyzer
nodes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import _validate as v
from .detector import Detector

BELL_CORRELATIONS: dict[str, np.ndarray] = {
    "phi+": np.diag([1.0, -1.0, 1.0]),
    "phi-": np.diag([-1.0, 1.0, 1.0]),
    "psi+": np.diag([1.0, 1.0, -1.0]),
    "psi-": np.diag([-1.0, -1.0, -1.0]),
}

_BASIS = {
    "Z": (0.0, 0.0, 1.0), "H": (0.0, 0.0, 1.0), "V": (0.0, 0.0, -1.0),
    "X": (1.0, 0.0, 0.0), "D": (1.0, 0.0, 0.0), "A": (-1.0, 0.0, 0.0),
    "Y": (0.0, 1.0, 0.0), "R": (0.0, 1.0, 0.0), "L": (0.0, -1.0, 0.0),
}


def basis(name: str) -> tuple[float, float, float]:
    """Bloch vector of the '+' output of a named basis: Z/H, V, X/D, A, Y/R, L."""
    try:
        return _BASIS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown basis {name!r}; use one of {sorted(_BASIS)}") from None


def linear_polariser(theta_rad: float) -> tuple[float, float, float]:
    """Bloch vector of a linear polariser at angle θ from H (rad): (sin 2θ, 0, cos 2θ)."""
    return (math.sin(2 * theta_rad), 0.0, math.cos(2 * theta_rad))


@dataclass(frozen=True)
class BellDiagonalState:
    """A Bell-diagonal two-photon polarisation state Σ λ_i |B_i⟩⟨B_i|.

    ``weights`` maps "phi+", "phi-", "psi+", "psi-" to λ_i ≥ 0 summing to 1 (missing ones are 0).
    """

    weights: Mapping[str, float] = field(default_factory=lambda: {"phi+": 1.0})

    def __post_init__(self) -> None:
        w = dict(self.weights)
        for k, x in w.items():
            if k not in BELL_CORRELATIONS:
                raise ValueError(f"BellDiagonalState.weights: unknown Bell state {k!r}; "
                                 f"use {sorted(BELL_CORRELATIONS)}")
            v.probability("BellDiagonalState", f"weights[{k!r}]", x)
        if not math.isclose(sum(w.values()), 1.0, abs_tol=1e-9):
            raise ValueError(f"BellDiagonalState.weights must sum to 1, got {sum(w.values())}")
        object.__setattr__(self, "weights", {k: float(w.get(k, 0.0)) for k in BELL_CORRELATIONS})

    @classmethod
    def werner(cls, visibility: float, bell: str = "phi+") -> BellDiagonalState:
        """V·|B⟩⟨B| + (1 − V)·I/4 (visibility V in [0, 1]): T = V·T_B."""
        vis = v.probability("BellDiagonalState.werner", "visibility", visibility)
        if bell not in BELL_CORRELATIONS:
            raise ValueError(f"BellDiagonalState.werner: unknown Bell state {bell!r}")
        w = {k: (1.0 - vis) / 4.0 for k in BELL_CORRELATIONS}
        w[bell] += vis
        return cls(w)

    @property
    def correlation_matrix(self) -> np.ndarray:
        """T = Σ λ_i T_i, 3×3 in (X, Y, Z) order."""
        return sum(self.weights[k] * BELL_CORRELATIONS[k] for k in BELL_CORRELATIONS)

    def fidelity(self, bell: str = "phi+") -> float:
        """⟨B|ρ|B⟩ = λ_B."""
        return self.weights[bell]

    def correlation(self, a: object, b: object, rotation_a: object = None,
                    rotation_b: object = None) -> float:
        """E = (R_a·a)ᵀ·T·(R_b·b) for analyzer Bloch vectors a, b (rotations default to I)."""
        va = (np.asarray(a, float) if rotation_a is None
              else np.asarray(rotation_a, float) @ np.asarray(a, float))
        vb = (np.asarray(b, float) if rotation_b is None
              else np.asarray(rotation_b, float) @ np.asarray(b, float))
        return float(va @ self.correlation_matrix @ vb)


@dataclass(frozen=True)
class Analyzer:
    """A polarisation analyzer: projects on ``vector`` (Bloch vector of the '+' port of its PBS)
    with a detector on each output port.

    * ``name``: label used in ground truth (e.g. "Z", "X", "a1").
    * ``vector``: unit Bloch vector of the '+' outcome (see :func:`basis`,
      :func:`linear_polariser`).
    * ``plus`` / ``minus``: the detectors on the '+' and '−' ports.
    * ``weight``: relative probability that a photon goes to this analyzer when a node has several
      (passive basis choice by a beam splitter); weights are normalised per node.
    """

    name: str
    vector: tuple[float, float, float]
    plus: Detector
    minus: Detector
    weight: float = 1.0

    def __post_init__(self) -> None:
        vec = np.asarray(self.vector, dtype=float)
        if vec.shape != (3,) or not np.isfinite(vec).all():
            raise ValueError(
                f"Analyzer({self.name!r}).vector must be 3 finite numbers, got {self.vector!r}")
        if not math.isclose(float(np.linalg.norm(vec)), 1.0, abs_tol=1e-9):
            raise ValueError(f"Analyzer({self.name!r}).vector must be a unit vector, "
                             f"got norm {np.linalg.norm(vec):.6g}")
        object.__setattr__(self, "vector", tuple(float(x) for x in vec))
        v.positive(f"Analyzer({self.name!r})", "weight", self.weight)
        if self.plus.channel == self.minus.channel:
            raise ValueError(f"Analyzer({self.name!r}): plus and minus detectors share channel "
                             f"{self.plus.channel}")


# ------------------------------------------------------------------ rotations and fibre drift

Y_AXIS: tuple[float, float, float] = (0.0, 1.0, 0.0)


def _unit_axis(owner: str, name: str, axis: object) -> tuple[float, float, float]:
    vec = np.asarray(axis, dtype=float)
    if vec.shape != (3,) or not np.isfinite(vec).all() or np.linalg.norm(vec) < 1e-12:
        raise ValueError(f"{owner}.{name} must be three finite numbers, not all zero "
                         f"(an axis on the Poincaré sphere, (X, Y, Z)), got {axis!r}")
    vec = vec / np.linalg.norm(vec)
    return (float(vec[0]), float(vec[1]), float(vec[2]))


def rotation_about(axis: Sequence[float], angle_rad: float) -> np.ndarray:
    """The proper rotation (3×3) by ``angle_rad`` (rad, right-handed) about ``axis`` (any
    non-zero 3-vector, normalised here): Rodrigues' formula. About Y, Z turns towards X."""
    n = np.asarray(axis, dtype=float)
    n = n / np.linalg.norm(n)
    k = np.array([[0.0, -n[2], n[1]], [n[2], 0.0, -n[0]], [-n[1], n[0], 0.0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1.0 - math.cos(angle_rad)) * (k @ k)


def rotation_angle_rad(matrix: object) -> float:
    """The angle (rad, in [0, π]) of a proper rotation: arccos((tr R − 1)/2)."""
    m = np.asarray(matrix, dtype=float)
    return float(math.acos(max(-1.0, min(1.0, (float(np.trace(m)) - 1.0) / 2.0))))


@dataclass(frozen=True)
class PolarisationStep:
    """A sudden change of a fibre's polarisation at simulated time ``at_s`` (s, emission time of
    the link): a rotation by ``angle_deg`` (deg) about ``axis`` ((X, Y, Z), normalised; default
    Y: a rotation of linear polarisation by angle/2 in real space), applied after what the fibre
    did before: D ← R(axis, angle)·D."""

    at_s: float
    angle_deg: float
    axis: tuple[float, float, float] = Y_AXIS

    def __post_init__(self) -> None:
        v.non_negative("PolarisationStep", "at_s", self.at_s)
        v.finite("PolarisationStep", "angle_deg", self.angle_deg)
        object.__setattr__(self, "axis", _unit_axis("PolarisationStep", "axis", self.axis))


@dataclass(frozen=True)
class PolarisationDrift:
    """How one fibre's polarisation drifts (see the module docstring).

    * ``walk_rad_per_sqrt_s``: σ of the random walk (rad/√s): the walk angle after t seconds
      has variance σ²·t (about a fixed axis) — 0 for none.
    * ``walk_axis``: the fixed axis of the walk ((X, Y, Z), normalised; default Y, the
      component a rotator compensates), or None for an isotropic walk (σ²·Δt about each axis).
    * ``steps``: :class:`PolarisationStep` s at given simulated times (any order).
    * ``grid_s``: the walk's time step (s): one increment per grid cell, drawn in order from the
      seed, so the path does not depend on how often it is sampled.
    """

    walk_rad_per_sqrt_s: float = 0.0
    walk_axis: tuple[float, float, float] | None = Y_AXIS
    steps: tuple[PolarisationStep, ...] = ()
    grid_s: float = 0.01

    def __post_init__(self) -> None:
        v.non_negative("PolarisationDrift", "walk_rad_per_sqrt_s", self.walk_rad_per_sqrt_s)
        v.positive("PolarisationDrift", "grid_s", self.grid_s)
        if self.walk_axis is not None:
            object.__setattr__(self, "walk_axis",
                               _unit_axis("PolarisationDrift", "walk_axis", self.walk_axis))
        steps = tuple(self.steps)
        for i, st in enumerate(steps):
            if not isinstance(st, PolarisationStep):
                raise ValueError(f"PolarisationDrift.steps[{i}] must be a PolarisationStep, "
                                 f"got {type(st).__name__}")
        object.__setattr__(self, "steps", tuple(sorted(steps, key=lambda st: st.at_s)))

    @property
    def static(self) -> bool:
        """True when the fibre never changes by itself (no walk, no scheduled step)."""
        return self.walk_rad_per_sqrt_s == 0 and not self.steps


class FibreDrift:
    """One fibre's drifting polarisation transformation D(t) ∈ SO(3) (acting on the photon's
    Stokes vector), deterministic from ``seed`` (an int or a ``numpy.random.SeedSequence``).

    :meth:`advance_to` moves it to a simulated time (s, never backwards); :meth:`step` applies a
    step now (a triggered step). Ground truth: :attr:`rotation`, :attr:`walk_angle_rad` (the
    fixed-axis walk's accumulated angle), :attr:`applied_steps`.
    """

    def __init__(self, config: PolarisationDrift | None = None,
                 seed: int | np.random.SeedSequence = 0):
        self.config = config or PolarisationDrift()
        self._rng = np.random.default_rng(seed)
        self._rotation = np.eye(3)
        self._cell = 0                       # walk increments applied so far
        self._next_step = 0                  # index into config.steps
        self.time_s = 0.0
        self.walk_angle_rad = 0.0
        self.applied_steps: list[tuple[float, float, tuple[float, float, float]]] = []

    @property
    def rotation(self) -> np.ndarray:
        """D now (3×3, a copy)."""
        return self._rotation.copy()

    def advance_to(self, t_s: float) -> np.ndarray:
        """Evolve to simulated time ``t_s`` (s): the walk's increments of every grid cell that
        ended by then and the scheduled steps due by then, in time order. Returns D."""
        if t_s < self.time_s:
            raise ValueError(f"FibreDrift.advance_to: time runs forwards ({t_s} < "
                             f"{self.time_s} s)")
        cfg = self.config
        steps = cfg.steps
        while True:
            step_t = steps[self._next_step].at_s if self._next_step < len(steps) else math.inf
            if step_t > t_s:
                self._walk_until(t_s)
                break
            self._walk_until(step_t)
            st = steps[self._next_step]
            self._next_step += 1
            self._apply_step(st.at_s, st.angle_deg, st.axis)
        self.time_s = t_s
        return self.rotation

    def step(self, angle_deg: float, axis: Sequence[float] = Y_AXIS) -> np.ndarray:
        """A triggered step now (at :attr:`time_s`): D ← R(axis, angle_deg)·D. Returns D."""
        v.finite("FibreDrift.step", "angle_deg", angle_deg)
        self._apply_step(self.time_s, float(angle_deg), _unit_axis("FibreDrift.step", "axis",
                                                                   axis))
        return self.rotation

    def _apply_step(self, t_s: float, angle_deg: float,
                    axis: tuple[float, float, float]) -> None:
        self._set(rotation_about(axis, math.radians(angle_deg)) @ self._rotation)
        self.applied_steps.append((t_s, angle_deg, axis))

    def _set(self, m: np.ndarray) -> None:
        u, _, vt = np.linalg.svd(m)          # the nearest rotation: no rounding drift on long runs
        self._rotation = u @ vt

    def _walk_until(self, t_s: float) -> None:
        """Apply the increments of the grid cells ending at or before ``t_s``."""
        cfg = self.config
        n = int(math.floor(t_s / cfg.grid_s + 1e-9)) - self._cell
        if n <= 0 or cfg.walk_rad_per_sqrt_s == 0:
            self._cell += max(n, 0)
            return
        self._cell += n
        sd = cfg.walk_rad_per_sqrt_s * math.sqrt(cfg.grid_s)
        if cfg.walk_axis is not None:          # one axis: the increments add
            d = float(self._rng.standard_normal(n).sum()) * sd
            self.walk_angle_rad += d
            self._set(rotation_about(cfg.walk_axis, d) @ self._rotation)
            return
        m = self._rotation
        for w in self._rng.standard_normal((n, 3)) * sd:   # isotropic: compose in order
            angle = float(np.linalg.norm(w))
            if angle > 0:
                m = rotation_about(w, angle) @ m
        self._set(m)
