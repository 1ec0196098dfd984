"""Fibre link model: loss (dB/km), propagation delay, polarisation rotation."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import _validate as v

SPEED_OF_LIGHT_M_PER_S = 299_792_458.0
SMF28_GROUP_INDEX = 1.4682
"""Group index of SMF-28 at 1550 nm: about 4.897 µs of delay per km."""


def check_rotation(owner: str, name: str, matrix: object) -> np.ndarray:
    """Validate a 3×3 proper rotation of the Poincaré sphere and return it as a float array."""
    m = np.asarray(matrix, dtype=float)
    if m.shape != (3, 3):
        raise ValueError(f"{owner}.{name} must be a 3x3 rotation matrix, got shape {m.shape}")
    if not np.allclose(m @ m.T, np.eye(3), atol=1e-9) or np.linalg.det(m) < 0:
        raise ValueError(f"{owner}.{name} must be a proper rotation (orthogonal, det +1)")
    return m


@dataclass(frozen=True)
class Fibre:
    """A fibre from the source to one node's analyzer.

    * ``length_km``: fibre length (km).
    * ``loss_db_per_km``: attenuation (dB/km); ``extra_loss_db`` adds lumped losses (connectors,
      filters, coupling) in dB.
    * ``group_index``: sets the delay, length·n_g/c, unless ``delay_ps`` gives it explicitly (ps).
    * ``rotation``: 3×3 rotation of the polarisation (Poincaré sphere) the fibre applies; identity
      by default. It enters the correlation as E = (R_a·a)ᵀ·T·(R_b·b) for analyzer vectors a, b.
    """

    length_km: float = 0.0
    loss_db_per_km: float = 0.2
    extra_loss_db: float = 0.0
    group_index: float = SMF28_GROUP_INDEX
    delay_ps: int | None = None
    rotation: tuple[tuple[float, ...], ...] | None = field(default=None)

    def __post_init__(self) -> None:
        v.non_negative("Fibre", "length_km", self.length_km)
        v.non_negative("Fibre", "loss_db_per_km", self.loss_db_per_km)
        v.non_negative("Fibre", "extra_loss_db", self.extra_loss_db)
        v.positive("Fibre", "group_index", self.group_index)
        if self.delay_ps is not None:
            v.integer("Fibre", "delay_ps", self.delay_ps, 0)
        if self.rotation is not None:
            m = check_rotation("Fibre", "rotation", self.rotation)
            object.__setattr__(self, "rotation", tuple(map(tuple, m.tolist())))

    @property
    def loss_db(self) -> float:
        """Total loss (dB)."""
        return self.length_km * self.loss_db_per_km + self.extra_loss_db

    @property
    def transmission(self) -> float:
        """Probability that a photon reaches the analyzer, 10^(−loss_dB/10)."""
        return 10.0 ** (-self.loss_db / 10.0)

    @property
    def propagation_delay_ps(self) -> int:
        """Delay from the source to the analyzer (ps)."""
        if self.delay_ps is not None:
            return int(self.delay_ps)
        return int(round(self.length_km * 1e3 * self.group_index / SPEED_OF_LIGHT_M_PER_S * 1e12))

    @property
    def rotation_matrix(self) -> np.ndarray:
        return np.eye(3) if self.rotation is None else np.array(self.rotation, dtype=float)
