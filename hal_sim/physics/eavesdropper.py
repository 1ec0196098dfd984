"""An intercept–resend eavesdropper on one fibre of an M link.

Eve taps the fibre of one node (``node``) where it leaves the source, so she sees the photons in
the source's polarisation frame, before the fibre's drift and the node's compensator. She takes a
fraction ``fraction`` of that node's photons, measures each in a basis drawn at random (Bloch
axis n_b with probability p_b; by default the protocol's bases Z = (0, 0, 1) and X = (1, 0, 0),
½ each) and sends on a fresh photon in the state she found (Bloch vector ±n_b). The other photons
pass untouched.

**The channel.** Measuring along n and re-preparing maps the photon's density matrix
ρ = (I + r·σ)/2 to Σ_± Π_± ρ Π_± with Π_± = (I ± n·σ)/2, i.e. σ_i → n_i·(n·σ): its Bloch vector
r → (n·r)·n = n nᵀ r. Averaged over her basis choice and mixed with the photons she leaves alone,
Eve's channel on that photon is r → M·r with

    M = (1 − f)·I + f·Σ_b p_b·n_b n_bᵀ        (3×3, symmetric; f = ``fraction``).

A pair state with zero local Bloch vectors is ρ = (I⊗I + Σ_ij T_ij σ_i⊗σ_j)/4; in this code base
T_ij = ⟨σ_i ⊗ σ_j⟩ with i the photon of ``Link.nodes[0]`` and j that of ``Link.nodes[1]``
(E = aᵀ·T·b, :mod:`~qnode.hal_sim.physics.polarisation`). The channel on node 0's photon
multiplies T from the left, on node 1's photon from the right:

    node 0:  T → M·T          node 1:  T → T·Mᵀ = T·M

(:func:`attacked_correlation`). The channel is unital, so the local Bloch vectors stay zero: the
attacked pair is again fully described by T (no longer Bell-diagonal for bases off the Pauli
axes, which the simulator does not need: it draws outcomes from E = aᵀ·T·b and uniform
marginals). The statistics of the two nodes' outcomes are those of the per-photon attack, because
averaging over Eve's basis choices and results is exactly what the nodes, who do not know them,
see.

**The QBER she adds.** For a Werner state T = V·T_Φ+ (V the visibility) and nodes measuring along
an axis n with T·n = ±V·n (Z or X for Φ+), E_nn = V·nᵀ M n, so

    Q_n = (1 − V·nᵀ M n)/2                                         (:func:`expected_qber`).

With Z and X equally likely and the nodes measuring Z (or X): nᵀ M n = 1 − f + f/2 = 1 − f/2, so

    Q = (1 − V·(1 − f/2))/2 = Q₀ + f·V/4,    Q₀ = (1 − V)/2,

i.e. 25 % × f × (1 − 2·Q₀) added in each basis: the standard intercept–resend result for BB84 and
its entanglement-based form BBM92 (25 % QBER when Eve takes every photon, f = 1, and V = 1; N.
Gisin, G. Ribordy, W. Tittel, H. Zbinden, Rev. Mod. Phys. 74, 145 (2002)). A third basis makes
her more visible: with Z, X, Y at ⅓ each, nᵀ M n = 1 − 2f/3 and Q = Q₀ + f·V/3.

**Schedule.** Eve is active in simulated emission time [``from_s``, ``until_s``) (s; ``until_s``
None: to the end). :class:`~qnode.hal_sim.physics.photon_stream.PhotonStreamSimulator` switches
her exactly at those times, splitting a slice if needed.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import _validate as v

#: The protocol bases by name: Bloch axes (X, Y, Z) on the Poincaré sphere.
BASIS_AXES: dict[str, tuple[float, float, float]] = {
    "Z": (0.0, 0.0, 1.0), "X": (1.0, 0.0, 0.0), "Y": (0.0, 1.0, 0.0)}

Axis = tuple[float, float, float]


def basis_axis(owner: str, name: str, basis: object) -> Axis:
    """A basis given as "Z"/"X"/"Y" (any case) or as a Bloch vector (three finite numbers, not
    all zero; normalised here), as a unit axis."""
    if isinstance(basis, str):
        axis = BASIS_AXES.get(basis.upper())
        if axis is None:
            raise ValueError(f"{owner}.{name} must be \"Z\", \"X\", \"Y\" or a Bloch vector "
                             f"[x, y, z], got {basis!r}")
        return axis
    vec = np.asarray(basis, dtype=float) if not isinstance(basis, bool) else np.zeros(0)
    if vec.shape != (3,) or not np.isfinite(vec).all() or np.linalg.norm(vec) < 1e-12:
        raise ValueError(f"{owner}.{name} must be \"Z\", \"X\", \"Y\" or a Bloch vector [x, y, z] "
                         f"(three finite numbers, not all zero), got {basis!r}")
    vec = vec / np.linalg.norm(vec)
    return (float(vec[0]), float(vec[1]), float(vec[2]))


def channel_matrix(fraction: float, bases: Sequence[Axis] = (BASIS_AXES["Z"], BASIS_AXES["X"]),
                   weights: Sequence[float] | None = None) -> np.ndarray:
    """M = (1 − f)·I + f·Σ_b p_b·n_b n_bᵀ (3×3): the intercept–resend channel on one photon's
    Bloch vector, for unit axes ``bases`` chosen with probabilities ``weights`` (normalised;
    default equal) on a fraction ``fraction`` of the photons."""
    f = v.probability("channel_matrix", "fraction", fraction)
    n = np.asarray(bases, dtype=float).reshape(-1, 3)
    p = (np.full(len(n), 1.0 / len(n)) if weights is None
         else np.asarray(weights, dtype=float) / float(np.sum(weights)))
    return (1.0 - f) * np.eye(3) + f * np.einsum("b,bi,bj->ij", p, n, n)


def attacked_correlation(corr: np.ndarray, m: np.ndarray, side: int) -> np.ndarray:
    """The pair's correlation matrix T after the channel M (3×3) on the photon of node ``side``
    (0: ``Link.nodes[0]``, T's row index: M·T; 1: ``Link.nodes[1]``, the column index: T·Mᵀ)."""
    if side == 0:
        return m @ corr
    if side == 1:
        return corr @ m.T
    raise ValueError(f"attacked_correlation: side must be 0 or 1, got {side!r}")


@dataclass(frozen=True)
class Eavesdropper:
    """Intercept–resend on ``node``'s fibre (see the module docstring).

    * ``node``: the node whose photons she intercepts (a name of ``Link.nodes``).
    * ``fraction``: the fraction of its photons she measures and resends (0–1).
    * ``bases``: her bases, each "Z"/"X"/"Y" or a Bloch vector (normalised); default Z and X.
      Held as unit axes (:attr:`axes`) once constructed.
    * ``weights``: the probability of each basis (normalised; default equal).
    * ``from_s`` / ``until_s``: she is active in simulated emission time [from_s, until_s) (s;
      ``until_s`` None: to the end of the run).
    """

    node: str
    fraction: float
    bases: Sequence[str | Sequence[float]] = ("Z", "X")
    weights: Sequence[float] | None = None
    from_s: float = 0.0
    until_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.node, str) or not self.node:
            raise ValueError(f"Eavesdropper.node must be a node name, got {self.node!r}")
        v.probability("Eavesdropper", "fraction", self.fraction)
        raw = self.bases
        if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
            raise ValueError(f"Eavesdropper.bases must be a non-empty list of bases, got {raw!r}")
        object.__setattr__(self, "bases", tuple(
            basis_axis("Eavesdropper", f"bases[{i}]", b) for i, b in enumerate(raw)))
        if self.weights is not None:
            w = tuple(self.weights) if isinstance(self.weights, Sequence) else None
            if w is None or len(w) != len(self.bases):
                raise ValueError(f"Eavesdropper.weights must give one number per basis "
                                 f"({len(self.bases)}), got {self.weights!r}")
            for i, x in enumerate(w):
                v.non_negative("Eavesdropper", f"weights[{i}]", x)
            if sum(w) <= 0:
                raise ValueError(f"Eavesdropper.weights must not all be 0, got {self.weights!r}")
            object.__setattr__(self, "weights", tuple(float(x) / sum(w) for x in w))
        v.non_negative("Eavesdropper", "from_s", self.from_s)
        if self.until_s is not None:
            v.finite("Eavesdropper", "until_s", self.until_s)
            if self.until_s <= self.from_s:
                raise ValueError(f"Eavesdropper.until_s must be after from_s ({self.from_s} s), "
                                 f"got {self.until_s!r}")

    @property
    def axes(self) -> tuple[Axis, ...]:
        """Her bases as unit Bloch axes."""
        return tuple(self.bases)  # type: ignore[arg-type]  # normalised in __post_init__

    @property
    def labels(self) -> list[str | list[float]]:
        """Her bases as "Z"/"X"/"Y" where they are one of those, else as [x, y, z]."""
        names = {axis: name for name, axis in BASIS_AXES.items()}
        return [names.get(a, list(a)) for a in self.axes]

    @property
    def probabilities(self) -> tuple[float, ...]:
        """p_b per basis (sums to 1)."""
        if self.weights is None:
            return tuple(1.0 / len(self.bases) for _ in self.bases)
        return tuple(self.weights)

    @property
    def from_ps(self) -> int:
        """``from_s`` in ps (rounded)."""
        return int(round(self.from_s * 1e12))

    @property
    def until_ps(self) -> int | None:
        """``until_s`` in ps (rounded), None without an end."""
        return None if self.until_s is None else int(round(self.until_s * 1e12))

    def active_at_ps(self, t_ps: int) -> bool:
        """Whether she intercepts photons emitted at simulated time ``t_ps`` (ps)."""
        until = self.until_ps
        return self.from_ps <= t_ps and (until is None or t_ps < until)

    def fraction_at_ps(self, t_ps: int) -> float:
        """The fraction of photons she takes at ``t_ps`` (ps): ``fraction`` while active, else
        0."""
        return float(self.fraction) if self.active_at_ps(t_ps) else 0.0

    def switch_times_ps(self) -> tuple[int, ...]:
        """The emission times (ps) at which she switches on or off."""
        until = self.until_ps
        return tuple(t for t in (self.from_ps, until) if t is not None and t > 0)

    def matrix(self, fraction: float | None = None) -> np.ndarray:
        """M for ``fraction`` (default: the configured one)."""
        return channel_matrix(self.fraction if fraction is None else fraction, self.axes,
                              self.probabilities)

    def expected_qber(self, visibility: float, axis: object,
                      fraction: float | None = None) -> float:
        """Q = (1 − V·nᵀ M n)/2 along ``axis`` n ("Z"/"X"/"Y" or a Bloch vector) for a Werner
        state of visibility V whose correlation matrix has n as an eigen-axis (T·n = ±V·n: Z, X
        and Y for a Bell state). Without Eve (fraction 0) this is Q₀ = (1 − V)/2."""
        vis = v.probability("Eavesdropper.expected_qber", "visibility", visibility)
        n = np.array(basis_axis("Eavesdropper.expected_qber", "axis", axis))
        return float((1.0 - vis * float(n @ self.matrix(fraction) @ n)) / 2.0)


def expected_qber(visibility: float, fraction: float, axis: object = "Z",
                  bases: Sequence[object] = ("Z", "X")) -> float:
    """Q along ``axis`` with Eve on a fraction ``fraction`` of one node's photons, bases equally
    likely (see :meth:`Eavesdropper.expected_qber`); for the default Z/X bases and a Z or X
    axis: (1 − V·(1 − f/2))/2 = (1 − V)/2 + f·V/4."""
    eve = Eavesdropper("eve", fraction, tuple(bases))  # type: ignore[arg-type]
    return eve.expected_qber(visibility, axis)
