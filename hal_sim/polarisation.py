"""Polarisation of the pair and the analyzers that measure it.

Polarisation states are written on the Poincaré (Bloch) sphere in (X, Y, Z) order with
Z+ = H, Z− = V, X+ = D, X− = A, Y+ = R (right circular), Y− = L.

The pair is Bell-diagonal: zero local Bloch vectors and a correlation matrix T (3×3), so for
analyzer vectors a, b the outcomes s_a, s_b = ±1 have

    P(s_a, s_b) = (1 + s_a·s_b·E)/4,    E = aᵀ·T·b,

and each side's marginal is uniform. Bell states in (X, Y, Z): Φ+ diag(1,−1,1), Φ− diag(−1,1,1),
Ψ+ diag(1,1,−1), Ψ− diag(−1,−1,−1).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import _validate as v
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
