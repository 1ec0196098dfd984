"""Bell-diagonal (BD) state algebra: the ``goodness`` (fidelity estimate) of every pair held.

A two-qubit BD state is ρ = Σ_k λ_k |B_k⟩⟨B_k|. Coefficient order (that of the simulator
SeQUeNCe's Bell-diagonal states, Wu et al., Quantum Sci. Technol. 6, 045027 (2021), and
:data:`~qnode.daemon.quantum.bell_states.BELL_STATES`): **[Φ+, Φ−, Ψ+, Ψ−]**.
Each Bell state is labelled by the Pauli error that makes it from Φ+ on the first qubit,
|B_k⟩ = (X^x Z^z ⊗ I)|Φ+⟩ (up to a global phase), and indexed by the bits (x, z) as k = 2x + z:

====== ======= ======= =====
state  (x, z)  index   Pauli
====== ======= ======= =====
Φ+     (0, 0)  0       I
Φ−     (0, 1)  1       Z
Ψ+     (1, 0)  2       X
Ψ−     (1, 1)  3       Y
====== ======= ======= =====

so that composing Pauli errors (up to phase) is XOR of indices, and every operation below is a
convolution over Z2×Z2: (p ⊛ q)_k = Σ_{i⊕j=k} p_i q_j. A Pauli P on the *second*
qubit acts like P on the first, since (I⊗P)|Φ+⟩ = (Pᵀ⊗I)|Φ+⟩ and Pᵀ = ±P.

Contents (sources per function):

* :class:`BellDiagonal` — validated coefficients, Werner states, fidelity, Pauli-frame relabelling,
  entropy H(λ).
* Ageing: :class:`PauliChannel` from T1/T2 (Pauli-twirled amplitude damping + dephasing), from
  depolarising or from SeQUeNCe's per-axis rates; :func:`apply_channels`; :func:`age_halves`
  and :func:`age` (exact Bell weights after T1/T2 decay of one or both halves: the per-qubit
  twirl plus the joint decay towards |00⟩), :func:`aged_fidelity`, :func:`cutoff_ok`,
  :func:`cutoff_for_fidelity`.
* Swapping: :func:`swap` (the convolution above with SeQUeNCe's BDS swap noise),
  :func:`pauli_frame`.
* Purification: :func:`dejmps` (Deutsch et al. 1996, *with* the bilateral ±π/2 X rotations),
  :func:`bbpssw` (Bennett et al. 1996), both with SeQUeNCe's BDS noise model;
  :func:`purify_until` (recurrence and pumping schedules).
* Capacities: :func:`hashing_yield`, :func:`dense_coding_capacity`, …

The papers are listed in docs/physicists/estimators.md (section Sources).

Everything is exact closed-form arithmetic on four numbers; times are seconds (``*_s``);
fidelities and probabilities are dimensionless; entropies and capacities are in bits.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, NamedTuple

import numpy as np

from qnode.daemon.quantum.bell_states import BELL_STATES

__all__ = [
    "BELL_NAMES", "SUM_TOLERANCE", "Bell", "BellLike", "bell", "xor_convolve",
    "BellDiagonal", "PauliChannel", "apply_channels", "age", "age_halves", "aged_fidelity",
    "cutoff_ok", "cutoff_for_fidelity", "swap", "pauli_frame", "Purified", "PurificationImpossible",
    "PurificationProtocol", "dejmps", "bbpssw", "purify", "parity_check",
    "BILATERAL_ROTATIONS", "bilateral_rotation", "PurificationPlan", "purify_until",
    "hashing_yield", "hashing_yield_clamped",
    "dense_coding_capacity", "dense_coding_capacity_clamped",
    "entanglement_assisted_capacity_depolarizing", "unassisted_capacity_depolarizing",
    "LINEAR_OPTICS_DENSE_CODING_BITS",
]

#: Bell-state names in coefficient order (:mod:`qnode.daemon.quantum.bell_states`)
BELL_NAMES = BELL_STATES

#: Probability vectors must sum to 1 within this (absolute) tolerance.
SUM_TOLERANCE = 1e-12

#: Dense coding with a linear-optics BSM decodes at most 3 messages: log2(3) bits (Mattle et al.,
#: PRL 76, 4656 (1996)).
LINEAR_OPTICS_DENSE_CODING_BITS = math.log2(3.0)


class Bell(IntEnum):
    """A Bell state, valued by its index k = 2x + z (module docstring table)."""

    PHI_PLUS = 0
    PHI_MINUS = 1
    PSI_PLUS = 2
    PSI_MINUS = 3

    @property
    def x(self) -> int:
        """Bit-flip (X) bit of the Pauli label."""
        return int(self) >> 1

    @property
    def z(self) -> int:
        """Phase-flip (Z) bit of the Pauli label."""
        return int(self) & 1

    @property
    def label(self) -> str:
        """The wire name used by the link layer (``"phi+"``, …)."""
        return BELL_NAMES[int(self)]


BellLike = Bell | int | str


def bell(value: BellLike, field: str = "bell") -> Bell:
    """Coerce a :class:`Bell`, an index 0..3 or a name from :data:`BELL_NAMES` to :class:`Bell`.

    Raises ValueError naming ``field`` otherwise.
    """
    if isinstance(value, Bell):
        return value
    if isinstance(value, str):
        if value in BELL_NAMES:
            return Bell(BELL_NAMES.index(value))
        raise ValueError(f"{field}: unknown Bell state {value!r}; expected one of {BELL_NAMES}")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value <= 3:
        return Bell(int(value))
    raise ValueError(f"{field}: expected a Bell state (0..3 or a name), got {value!r}")


def _prob_vector(values: Iterable[float], field: str) -> tuple[float, float, float, float]:
    """Validate a length-4 probability vector: finite, ≥ 0, Σ = 1 within SUM_TOLERANCE."""
    try:
        vec = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field}: expected 4 real numbers, got {values!r}") from exc
    if len(vec) != 4:
        raise ValueError(f"{field}: expected 4 entries, got {len(vec)}")
    if not all(math.isfinite(v) for v in vec):
        raise ValueError(f"{field}: entries must be finite, got {vec}")
    if min(vec) < 0.0:
        raise ValueError(f"{field}: entries must be >= 0, got {vec}")
    total = math.fsum(vec)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise ValueError(f"{field}: entries must sum to 1 (within {SUM_TOLERANCE:g}), "
                         f"got sum {total!r}")
    return vec


def _clean(vec: np.ndarray) -> np.ndarray:
    """Zero the ≤ 1e-15 negative round-off a subtraction can leave (values are ≥ 0 in exact
    arithmetic wherever this is called)."""
    return np.where((vec < 0.0) & (vec > -1e-15), 0.0, vec)


def _unit(value: float, field: str, *, lo: float = 0.0, hi: float = 1.0) -> float:
    v = float(value)
    if math.isnan(v) or not lo <= v <= hi:
        raise ValueError(f"{field}: expected a number in [{lo}, {hi}], got {value!r}")
    return v


def xor_convolve(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> np.ndarray:
    """Convolution over Z2×Z2 on Bell/Pauli indices: r_k = Σ_{i⊕j=k} p_i q_j.

    Used for Pauli-channel composition, channel application and ideal swapping.
    """
    a = np.asarray(p, dtype=float)
    b = np.asarray(q, dtype=float)
    return np.array([sum(a[i] * b[i ^ k] for i in range(4)) for k in range(4)])


# --------------------------------------------------------------------------------------------
# States


@dataclass(frozen=True)
class BellDiagonal:
    """A Bell-diagonal two-qubit state, coefficients λ in the order [Φ+, Φ−, Ψ+, Ψ−].

    ``coefficients`` must be 4 finite, non-negative numbers summing to 1 within
    :data:`SUM_TOLERANCE`; anything else raises ValueError naming the field. The coefficients
    are *absolute* (relative to Φ+); use :meth:`relabel` to express a state in another frame.
    """

    coefficients: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "coefficients", _prob_vector(self.coefficients, "coefficients"))

    @classmethod
    def werner(cls, fidelity: float) -> BellDiagonal:
        """Werner state λ = (F, (1−F)/3, (1−F)/3, (1−F)/3) (Werner, PRA 40, 4277 (1989));
        F in [0, 1]."""
        f = _unit(fidelity, "fidelity")
        q = (1.0 - f) / 3.0
        return cls((f, q, q, 1.0 - f - 2.0 * q))

    @classmethod
    def pure(cls, state: BellLike = Bell.PHI_PLUS) -> BellDiagonal:
        """The pure Bell state ``state``."""
        vec = [0.0] * 4
        vec[bell(state, "state")] = 1.0
        return cls(tuple(vec))  # type: ignore[arg-type]

    @classmethod
    def _from_array(cls, vec: np.ndarray) -> BellDiagonal:
        return cls(tuple(float(v) for v in _clean(vec)))  # type: ignore[arg-type]

    def as_array(self) -> np.ndarray:
        """The coefficients as a fresh float numpy array of shape (4,)."""
        return np.array(self.coefficients, dtype=float)

    def fidelity(self, target: BellLike = Bell.PHI_PLUS) -> float:
        """Fidelity ⟨B|ρ|B⟩ to the Bell state ``target`` (default Φ+) = λ_target."""
        return self.coefficients[bell(target, "target")]

    def relabel(self, frame: BellLike) -> BellDiagonal:
        """The same state expressed relative to the Bell state ``frame``: λ'_k = λ_{k⊕frame}.

        ``relabel(f).fidelity() == fidelity(f)``; relabelling is an involution. Physically it is
        also the state after applying the Pauli P_frame to one qubit (a Pauli-frame update).
        """
        f = int(bell(frame, "frame"))
        c = self.coefficients
        return BellDiagonal((c[f], c[1 ^ f], c[2 ^ f], c[3 ^ f]))

    def entropy(self) -> float:
        """Von Neumann entropy S(ρ) = Shannon entropy H(λ) = −Σ λ log2 λ, in bits (0 log 0 = 0)."""
        return max(0.0, -math.fsum(v * math.log2(v) for v in self.coefficients if v > 0.0))

    def twirl(self) -> BellDiagonal:
        """Depolarising twirl (BBPSSW's random bilateral rotations): the Werner state of equal
        fidelity to Φ+ (Bennett et al., PRL 76, 722 (1996))."""
        return BellDiagonal.werner(self.coefficients[0])

    def isclose(self, other: BellDiagonal, tol: float = 1e-12) -> bool:
        """Max-norm comparison of coefficients."""
        return bool(np.max(np.abs(self.as_array() - other.as_array())) <= tol)


# --------------------------------------------------------------------------------------------
# Pauli channels and ageing


@dataclass(frozen=True)
class PauliChannel:
    """A single-qubit Pauli channel ρ → Σ_P p_P PρP, probabilities in the order [I, Z, X, Y].

    The order matches the Bell indices (P_k is the error taking Φ+ to B_k), so applying the
    channel to either qubit of a BD pair is ``xor_convolve(λ, probabilities)``.
    """

    probabilities: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "probabilities",
                           _prob_vector(self.probabilities, "probabilities"))

    @property
    def p_z(self) -> float:
        return self.probabilities[1]

    @property
    def p_x(self) -> float:
        return self.probabilities[2]

    @property
    def p_y(self) -> float:
        return self.probabilities[3]

    @classmethod
    def identity(cls) -> PauliChannel:
        return cls((1.0, 0.0, 0.0, 0.0))

    @classmethod
    def _from_array(cls, vec: np.ndarray) -> PauliChannel:
        return cls(tuple(float(v) for v in _clean(vec)))  # type: ignore[arg-type]

    @classmethod
    def depolarizing(cls, p: float) -> PauliChannel:
        """ρ → (1−p)ρ + p·I/2: p_I = 1 − 3p/4, p_X = p_Y = p_Z = p/4.

        The Bloch vector shrinks by 1 − p. p = 1 is the completely depolarising channel (every
        input goes to I/2). p may go up to 4/3, where p_I = 0 and it is still a channel
        (p_I ≥ 0 iff p ≤ 4/3): for 1 < p ≤ 4/3 the Bloch vector is also inverted, and
        p = 4/3 gives ρ → (XρX + YρY + ZρZ)/3, which scales it by −1/3. ValueError outside
        [0, 4/3]."""
        p = _unit(p, "p", hi=4.0 / 3.0)
        return cls((1.0 - 0.75 * p, p / 4.0, p / 4.0, p / 4.0))

    @classmethod
    def depolarizing_from_time(cls, wait_s: float, t_dep_s: float) -> PauliChannel:
        """Depolarising memory with time constant T: p = 1 − e^{−t/T} (Bloch vector shrinks by
        e^{−t/T}). ``t_dep_s`` may be ``math.inf`` (no decay)."""
        t = _unit(wait_s, "wait_s", hi=math.inf)
        big_t = _positive_time(t_dep_s, "t_dep_s")
        return cls.depolarizing(_decay_complement(t, big_t))

    @classmethod
    def from_t1_t2(cls, wait_s: float, t1_s: float, t2_s: float) -> PauliChannel:
        """Pauli-twirled amplitude damping (T1) plus dephasing (T2) over a wait t:

            p_X = p_Y = (1 − e^{−t/T1})/4,   p_Z = (1 − e^{−t/T2})/2 − (1 − e^{−t/T1})/4.

        Source: the Pauli twirling approximation, Tomita & Svore, PRA 90, 062320 (2014),
        arXiv:1404.3747, eqs. (9)–(10) (also Ghosh, Fowler & Geller, PRA 86, 062318 (2012)).
        Derivation: twirling keeps the diagonal of the Pauli transfer matrix and drops the
        affine pull toward |0⟩. Amplitude damping + dephasing scales the Bloch components by
        (e^{−t/T2}, e^{−t/T2}, e^{−t/T1}) for (x, y, z); a Pauli channel scales them by
        (1 − 2(p_Y+p_Z), 1 − 2(p_X+p_Z), 1 − 2(p_X+p_Y)); solving gives the formulas above.
        Physicality (p_Z ≥ 0 for all t) holds iff T2 ≤ 2·T1, which is required (ValueError).
        ``t1_s``/``t2_s`` may be ``math.inf``. Channels of one memory compose in time:
        from_t1_t2(a)∘from_t1_t2(b) = from_t1_t2(a + b).

        On *one* half of a Bell-diagonal pair this channel gives the exact Bell weights; on
        both halves it misses a correlation: use :func:`age_halves` (or :func:`age`).
        """
        t = _unit(wait_s, "wait_s", hi=math.inf)
        t1 = _positive_time(t1_s, "t1_s")
        t2 = _positive_time(t2_s, "t2_s")
        if t2 > 2.0 * t1:
            raise ValueError(f"t2_s: T2 must be <= 2*T1 (physical), got T1={t1_s!r}, T2={t2_s!r}")
        g1 = _decay_complement(t, t1)  # 1 − e^{−t/T1}
        g2 = _decay_complement(t, t2)  # 1 − e^{−t/T2}
        px = g1 / 4.0
        pz = max(0.0, g2 / 2.0 - g1 / 4.0)
        return cls((1.0 - 2.0 * px - pz, pz, px, px))

    @classmethod
    def from_rates(cls, wait_s: float, rate_x: float, rate_y: float,
                   rate_z: float) -> PauliChannel:
        """Continuous Pauli errors at rates r_X, r_Y, r_Z (1/s) over t, as SeQUeNCe's BDS memory
        model: p_I = ¼[1 + e^{−2(r_x+r_y)t} + e^{−2(r_x+r_z)t} + e^{−2(r_y+r_z)t}] and
        the matching sign patterns, i.e. Bloch scalings λ_X = e^{−2(r_y+r_z)t}, etc.,
        p_P = ¼ Σ_Q ±λ_Q."""
        t = _unit(wait_s, "wait_s", hi=math.inf)
        rx, ry, rz = (_unit(r, n, hi=math.inf) for r, n in
                      ((rate_x, "rate_x"), (rate_y, "rate_y"), (rate_z, "rate_z")))
        lx = math.exp(-2.0 * (ry + rz) * t) if t > 0 else 1.0
        ly = math.exp(-2.0 * (rx + rz) * t) if t > 0 else 1.0
        lz = math.exp(-2.0 * (rx + ry) * t) if t > 0 else 1.0
        vec = np.array([1 + lx + ly + lz, 1 - lx - ly + lz, 1 + lx - ly - lz, 1 - lx + ly - lz])
        return cls._from_array(vec / 4.0)

    def compose(self, other: PauliChannel) -> PauliChannel:
        """The channel ``self`` after ``other`` (commutative): the Z2×Z2 convolution."""
        return PauliChannel._from_array(xor_convolve(self.probabilities, other.probabilities))


def _decay(t: float, big_t: float) -> float:
    """e^{−t/T} with the limits e^{−0/T} = 1, e^{−t/∞} = 1 and e^{−∞/T} = 0 (T finite)."""
    if t == 0.0 or math.isinf(big_t):
        return 1.0
    return math.exp(-t / big_t)


def _decay_complement(t: float, big_t: float) -> float:
    """1 − e^{−t/T} (via expm1 for small t/T), with the same limits as :func:`_decay`."""
    if t == 0.0 or math.isinf(big_t):
        return 0.0
    if math.isinf(t):
        return 1.0
    return -math.expm1(-t / big_t)


def _positive_time(value: float, field: str) -> float:
    v = float(value)
    if not (v > 0.0) or math.isnan(v):
        raise ValueError(f"{field}: expected a time > 0 s (math.inf allowed), got {value!r}")
    return v


def apply_channels(state: BellDiagonal, a: PauliChannel | None = None,
                   b: PauliChannel | None = None) -> BellDiagonal:
    """Apply Pauli channel ``a`` to the first qubit and ``b`` to the second (None = identity).

    λ' = λ ⊛ p_a ⊛ p_b; hence two Pauli channels on the two halves equal one channel
    ``a.compose(b)`` on one half. For T1/T2 decay of both halves this is only the Pauli-twirl
    approximation (:meth:`PauliChannel.from_t1_t2`); :func:`age_halves` is exact.
    """
    vec = state.as_array()
    for ch in (a, b):
        if ch is not None:
            vec = xor_convolve(vec, ch.probabilities)
    return BellDiagonal._from_array(vec)  # noqa: SLF001


#: Sign of the joint-decay term in each Bell weight [Φ+, Φ−, Ψ+, Ψ−]: the sign of ⟨Z⊗Z⟩ in
#: that Bell state (see :func:`age_halves`).
_ZZ_SIGNS = np.array([1.0, 1.0, -1.0, -1.0])


def _per_half(value: float | tuple[float, float], field: str) -> tuple[float, float]:
    """A number for both halves, or an (A, B) pair: → (A, B) (checked by the caller)."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"{field}: expected a number or an (a, b) pair, got {value!r}")
        return value[0], value[1]
    return value, value


def age_halves(state: BellDiagonal, wait_a_s: float, wait_b_s: float, *,
               t1_s: float | tuple[float, float],
               t2_s: float | tuple[float, float]) -> BellDiagonal:
    """Exact Bell weights of a pair after its first half (A) has decayed for ``wait_a_s`` and
    its second (B) for ``wait_b_s`` seconds in a memory with T1/T2 (s).

    The decay is amplitude damping towards |0⟩ with γ = 1 − e^{−t/T1} plus dephasing that
    takes the coherences to e^{−t/T2} (T2 ≤ 2·T1, ValueError otherwise), the model of
    :meth:`PauliChannel.from_t1_t2` before twirling. ``t1_s``/``t2_s`` are one number for both
    halves or an (A, B) pair (memories may differ); ``math.inf`` switches a process off; a
    wait of 0 leaves that half alone (a photon, a measured qubit). ``state`` and the result
    are absolute weights (relative to Φ+, in the lab's computational basis): for a state kept
    relative to an announced Bell state B, use ``age_halves(s.relabel(B), …).relabel(B)``.

    The result is λ'_k = ⟨B_k|(E_A ⊗ E_B)(ρ)|B_k⟩, the fidelity of the decohered pair to each
    Bell state (its Bell-diagonal projection):

        λ' = λ ⊛ p_A ⊛ p_B + (a·b/4)·[+1, +1, −1, −1],

    with p_A, p_B the Pauli-twirled channels of the two halves, a = 1 − e^{−t_A/T1_A} and
    b = 1 − e^{−t_B/T1_B}.

    Derivation. Write ρ = ¼(I⊗I + Σ_i c_i σ_i⊗σ_i), c = (⟨XX⟩, ⟨YY⟩, ⟨ZZ⟩) (the correlation
    form of two-qubit states; R. & M. Horodecki, PRA 54, 1838 (1996)), so that
    λ_Φ± = (1 ± c_x ∓ c_y + c_z)/4 and λ_Ψ± = (1 ± c_x ± c_y − c_z)/4. On one qubit the decay
    maps I → I + γZ, Z → (1 − γ)Z and X, Y → e^{−t/T2}·(X, Y) (the affine Bloch map of
    amplitude damping, Nielsen & Chuang, *Quantum Computation and Quantum Information*,
    §8.3.5). So c_x and c_y scale by e^{−t_A/T2_A}·e^{−t_B/T2_B}, and c_z becomes
    (1 − a)(1 − b)·c_z + a·b, the last term from I⊗I → (I + aZ)⊗(I + bZ); the local terms
    a·Z⊗I and b·I⊗Z have no Bell-diagonal part. The twirled channels give all of this except
    a·b (a twirl drops the pull towards |0⟩), which adds a·b/4 to λ_Φ± and takes it from λ_Ψ±:
    both qubits relax towards |00⟩, so ⟨Z⊗Z⟩ rises whichever Bell state the pair was, and a
    Ψ± pair is worse, a Φ± pair better, than the per-qubit twirl says. With one half only
    (b = 0) the twirl is exact. Both halves at t → ∞ end in |00⟩: λ' = [½, ½, 0, 0].
    """
    t1_a, t1_b = _per_half(t1_s, "t1_s")
    t2_a, t2_b = _per_half(t2_s, "t2_s")
    ch_a = PauliChannel.from_t1_t2(wait_a_s, t1_a, t2_a)   # validates the waits and times
    ch_b = PauliChannel.from_t1_t2(wait_b_s, t1_b, t2_b)
    out = apply_channels(state, ch_a if ch_a.probabilities[0] != 1.0 else None,
                         ch_b if ch_b.probabilities[0] != 1.0 else None)
    d = _decay_complement(float(wait_a_s), float(t1_a)) * _decay_complement(
        float(wait_b_s), float(t1_b)) / 4.0
    if d > 0.0:
        out = BellDiagonal._from_array(out.as_array() + d * _ZZ_SIGNS)  # noqa: SLF001
    return out


def age(state: BellDiagonal, wait_s: float, *, t1_s: float, t2_s: float,
        halves: Literal[1, 2] = 2) -> BellDiagonal:
    """Age a pair by ``wait_s`` seconds of memory T1/T2 decay (s) on one half (``halves=1``:
    the other is a photon or already measured) or on both halves for the same time in alike
    memories: :func:`age_halves` with the waits (``wait_s``, 0) or (``wait_s``, ``wait_s``),
    exact Bell weights. ``state`` and the result are absolute (relative to Φ+). Different
    waits or memories: :func:`age_halves`.
    """
    if halves not in (1, 2):
        raise ValueError(f"halves: expected 1 or 2, got {halves!r}")
    return age_halves(state, wait_s, wait_s if halves == 2 else 0.0, t1_s=t1_s, t2_s=t2_s)


def aged_fidelity(state: BellDiagonal, wait_s: float, *, t1_s: float, t2_s: float,
                  halves: Literal[1, 2] = 2, target: BellLike = Bell.PHI_PLUS) -> float:
    """Fidelity to the Bell state ``target`` (default Φ+) after :func:`age`, in closed form.

    With λ = ``state.relabel(target)`` (the state relative to the target), h = ``halves``,
    u = e^{−t/T1} and v = e^{−t/T2} (t = ``wait_s``, s):

        F(t) = ¼[1 + 2(λ_0 − λ_1)·v^h + (λ_0 + λ_1 − λ_2 − λ_3)·u^h] ± [h = 2]·(1 − u)²/4,

    + for a Φ± target, − for Ψ±: the correlation form of :func:`age_halves`, where
    λ_0 = (1 + c_x − c_y + c_z)/4 and c_x − c_y = 2(λ_0 − λ_1), c_z = λ_0 + λ_1 − λ_2 − λ_3.
    ``state`` is absolute (relative to Φ+), as for :func:`age`.

    Time course, when λ_0 ≥ λ_1 and λ_0 + λ_1 ≥ λ_2 + λ_3 (true whenever F ≥ ½): F(t) does
    not increase, except for a Φ± target with both halves decaying (finite T1), where it falls
    to one minimum and then rises to ½ (both halves end in |00⟩). Without these conditions
    ageing can raise the fidelity (e.g. a Ψ+ pair gains Φ+ weight from bit flips).
    """
    if halves not in (1, 2):
        raise ValueError(f"halves: expected 1 or 2, got {halves!r}")
    t = _unit(wait_s, "wait_s", hi=math.inf)
    t1, t2 = _t1_t2(t1_s, t2_s)
    tgt = bell(target, "target")
    c = state.relabel(tgt).coefficients
    e2 = _decay(t, t2) ** halves
    e1 = _decay(t, t1) ** halves
    f = 0.25 * (1.0 + 2.0 * (c[0] - c[1]) * e2 + (c[0] + c[1] - c[2] - c[3]) * e1)
    if halves == 2:
        d = 0.25 * _decay_complement(t, t1) ** 2
        f = f + d if tgt.x == 0 else f - d
    return max(0.0, f)


def _t1_t2(t1_s: float, t2_s: float) -> tuple[float, float]:
    """Validated (T1, T2) in s: both > 0 (``math.inf`` allowed) and T2 ≤ 2·T1."""
    t1 = _positive_time(t1_s, "t1_s")
    t2 = _positive_time(t2_s, "t2_s")
    if t2 > 2.0 * t1:
        raise ValueError(f"t2_s: T2 must be <= 2*T1 (physical), got T1={t1_s!r}, T2={t2_s!r}")
    return t1, t2


def cutoff_ok(state_age_s: float, cutoff_s: float) -> bool:
    """True while a pair of age ``state_age_s`` may still be used under a cutoff ``cutoff_s``.

    SeQUeNCe's convention (its BDS memories and swaps): a pair expires *at* the cutoff, i.e.
    usable iff age < cutoff. Ages and cutoffs are seconds, ≥ 0; ``cutoff_s = math.inf`` disables it.
    """
    a = _unit(state_age_s, "state_age_s", hi=math.inf)
    c = _unit(cutoff_s, "cutoff_s", hi=math.inf)
    return a < c


def cutoff_for_fidelity(state: BellDiagonal, min_fidelity: float, *, t1_s: float, t2_s: float,
                        halves: Literal[1, 2] = 2, target: BellLike = Bell.PHI_PLUS,
                        rel_tol: float = 1e-12) -> float:
    """The longest wait (s) up to which :func:`aged_fidelity` (to ``target``) stays
    ≥ ``min_fidelity``: the first time it falls below.

    Returns 0.0 if the state is already below, ``math.inf`` if ageing never takes it below.
    Needs the conditions of :func:`aged_fidelity` (λ relative to the target: λ_0 ≥ λ_1 and
    λ_0 + λ_1 ≥ λ_2 + λ_3; ValueError otherwise), under which F(t) is either non-increasing
    or (Φ± target, both halves, finite T1) falls to a single minimum and rises after it.

    Why a single minimum (Φ± target, both halves): with u = e^{−t/T1}, r = T1/T2 ≥ ½,
    D = λ_0 − λ_1 ≥ 0 and S = λ_0 + λ_1 − λ_2 − λ_3 ≥ 0, 4F = 1 + g(u) with
    g(u) = 2D·u^{2r} + (S + 1)·u² − 2u + 1, and g′(u) = 4rD·u^{2r−1} + 2(S + 1)·u − 2
    increases with u, so it changes sign at most once.
    That minimum (where dF/dt changes sign) and the crossing before it are found by bisection
    to ``rel_tol``; without one, F(∞) decides and bisection finds the crossing.
    """
    f_min = _unit(min_fidelity, "min_fidelity")
    if halves not in (1, 2):
        raise ValueError(f"halves: expected 1 or 2, got {halves!r}")
    t1, t2 = _t1_t2(t1_s, t2_s)
    tgt = bell(target, "target")
    c = state.relabel(tgt).coefficients
    if c[0] < c[1] or c[0] + c[1] < c[2] + c[3]:
        raise ValueError("state: ageing is not monotone (up to a minimum) for this state "
                         "(needs, relative to the target, λ_0 >= λ_1 and "
                         "λ_0 + λ_1 >= λ_2 + λ_3)")

    def fid(t: float) -> float:
        return aged_fidelity(state, t, t1_s=t1, t2_s=t2, halves=halves, target=tgt)

    def bisect(lo: float, hi: float, ok: Callable[[float], bool]) -> float:
        """The boundary in [lo, hi] with ok(lo) and not ok(hi), to ``rel_tol`` (returns lo)."""
        while hi - lo > rel_tol * hi:
            mid = 0.5 * (lo + hi)
            if ok(mid):
                lo = mid
            else:
                hi = mid
        return lo

    if fid(0.0) < f_min:
        return 0.0
    t_end = math.inf          # F is non-increasing on [0, t_end]
    if halves == 2 and tgt.x == 0 and not math.isinf(t1):
        d, s = c[0] - c[1], c[0] + c[1] - c[2] - c[3]

        def falling(t: float) -> bool:   # dF/dt ≤ 0 (times 4)
            u, v = _decay(t, t1), _decay(t, t2)
            return -4.0 * d * v * v / t2 - 2.0 * s * u * u / t1 + 2.0 * (1.0 - u) * u / t1 <= 0.0

        hi = min(t1, t2)
        while falling(hi) and hi < 1000.0 * t1:   # beyond: e^{−t/T1} = 0, F is constant
            hi *= 2.0
        if not falling(hi):
            t_end = bisect(0.0, hi, falling)
    if fid(t_end) >= f_min:
        return math.inf
    if math.isinf(t_end):
        lo, hi = 0.0, min(t1, t2)
        while fid(hi) >= f_min:
            lo, hi = hi, 2.0 * hi
    else:
        lo, hi = 0.0, t_end
    return bisect(lo, hi, lambda t: fid(t) >= f_min)


# --------------------------------------------------------------------------------------------
# Swapping


def pauli_frame(a_state: BellLike, b_state: BellLike, bsm_outcome: BellLike) -> Bell:
    """Pauli-frame rule: pairs (1,2) in B_a and (3,4) in B_b, a Bell measurement on
    (2,3) with result B_c leave (1,4) in B_{a⊕b⊕c} up to a global phase. E.g. two Ψ− sources
    leave (1,4) in exactly the measured state (Pan et al., PRL 80, 3891 (1998))."""
    return Bell(int(bell(a_state, "a_state")) ^ int(bell(b_state, "b_state"))
                ^ int(bell(bsm_outcome, "bsm_outcome")))


def swap(a: BellDiagonal, b: BellDiagonal, *, gate_fidelity: float = 1.0,
         meas_fidelity: float = 1.0) -> BellDiagonal:
    """End-pair BD state after entanglement swapping, in the corrected frame.

    Ideal: c = λ_a ⊛ λ_b. Each of the four BSM outcomes has probability ¼, and
    for outcome B_o the uncorrected end pair is ``swap(a, b).relabel(o)`` (the Pauli-frame rule
    applied to every term). Noise as SeQUeNCe's BDS swap: each BSM bit is read
    correctly with probability η = ``meas_fidelity``, which convolves c with the Pauli
    distribution [η², η(1−η), η(1−η), (1−η)²] (a wrong x- or z-bit leaves an X or Z after the
    correction), and the BSM gate depolarises with probability 1 − g (g = ``gate_fidelity``):

        λ'_k = g·Σ_e P(e)·c_{k⊕e} + (1 − g)/4,

    e.g. λ'_I = g[η²c_I + η(1−η)(c_Z + c_X) + (1−η)²c_Y] + (1−g)/4. Symmetric in (a, b).
    """
    g = _unit(gate_fidelity, "gate_fidelity")
    eta = _unit(meas_fidelity, "meas_fidelity")
    c = xor_convolve(a.coefficients, b.coefficients)
    if eta != 1.0:
        c = xor_convolve(c, (eta * eta, eta * (1 - eta), eta * (1 - eta), (1 - eta) ** 2))
    if g != 1.0:
        c = g * c + (1.0 - g) / 4.0
    return BellDiagonal._from_array(c)  # noqa: SLF001


# --------------------------------------------------------------------------------------------
# Purification


class Purified(NamedTuple):
    """Outcome of one purification step: success probability and the kept pair's state."""

    p_success: float
    state: BellDiagonal


PurificationProtocol = Literal["dejmps", "bbpssw"]


class PurificationImpossible(ValueError):
    """The inputs can never pass the parity check (success probability exactly 0)."""


def _per_side(value: float | tuple[float, float], field: str) -> tuple[float, float]:
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"{field}: expected a number or an (alice, bob) pair, got {value!r}")
        return _unit(value[0], field), _unit(value[1], field)
    v = _unit(value, field)
    return v, v


def _recurrence(k: np.ndarray, m: np.ndarray, big_g: float, eta_a: float,
                eta_b: float) -> Purified:
    """Bilateral CNOT (kept = control) + Z measurement of the sacrificed pair, keep iff the
    *reported* outcomes agree: SeQUeNCe's BDS formula (its ``BBPSSW_BDS`` purification),
    indices [Φ+, Φ−, Ψ+, Ψ−] = 0..3.

    Ideal algebra: the BCNOT maps (x1, z1), (x2, z2) → control (x1, z1⊕z2), target
    (x1⊕x2, z2); equal Z outcomes ⇔ x1 = x2. With read-out fidelities η_A, η_B the decision is
    right with q_s = η_Aη_B + (1−η_A)(1−η_B) and inverted (keeps x1 ≠ x2) with q_d = 1 − q_s.
    Gate noise: with probability 1 − G (G = g_A·g_B) the four qubits are fully mixed, which
    adds (1−G)/8 to every joint coefficient (success ½, output I/4).
    """
    q_s = eta_a * eta_b + (1.0 - eta_a) * (1.0 - eta_b)
    q_d = 1.0 - q_s
    same = np.array([k[0] * m[0] + k[1] * m[1], k[0] * m[1] + k[1] * m[0],
                     k[2] * m[2] + k[3] * m[3], k[2] * m[3] + k[3] * m[2]])
    diff = np.array([k[0] * m[2] + k[1] * m[3], k[0] * m[3] + k[1] * m[2],
                     k[2] * m[0] + k[3] * m[1], k[2] * m[1] + k[3] * m[0]])
    joint = big_g * (q_s * same + q_d * diff) + (1.0 - big_g) / 8.0
    p = float(math.fsum(joint))
    if not p > 0.0:
        raise PurificationImpossible("purification: success probability is 0 for these inputs")
    return Purified(p, BellDiagonal._from_array(joint / p))  # noqa: SLF001


def parity_check(kept: BellDiagonal, sacrificed: BellDiagonal, *,
                 gate_fidelity: float | tuple[float, float] = 1.0,
                 meas_fidelity: float | tuple[float, float] = 1.0) -> Purified:
    """The recurrence step without rotations or twirl: bilateral CNOT (``kept`` controls),
    ``sacrificed`` measured in Z at both ends, kept iff the outcomes agree
    (:func:`_recurrence`; noise parameters as in :func:`dejmps`). With the inputs as they are
    after each pair's bilateral rotations (:func:`bilateral_rotation`), this is the exact
    per-pair model of one round on a QDevice; :func:`dejmps` and :func:`bbpssw` are its
    averages."""
    g_a, g_b = _per_side(gate_fidelity, "gate_fidelity")
    eta_a, eta_b = _per_side(meas_fidelity, "meas_fidelity")
    return _recurrence(kept.as_array(), sacrificed.as_array(), g_a * g_b, eta_a, eta_b)


#: Bilateral rotations R_a(+π/2) ⊗ R_a(∓π/2) (Alice ⊗ Bob; Bob's angle is +π/2 for Y, where
#: R_y* = R_y) permute the Bell weights [Φ+, Φ−, Ψ+, Ψ−] = errors [I, Z, X, Y]: about X they
#: swap the Z and Y errors (DEJMPS's rotation), about Y the Z and X errors, about Z the X and
#: Y errors; Φ+ is fixed by all three. Together they generate every permutation of the three
#: errors, which is how a round twirls a pair for BBPSSW.
BILATERAL_ROTATIONS: dict[str, tuple[int, int, int, int]] = {
    "X": (0, 3, 2, 1), "Y": (0, 2, 1, 3), "Z": (0, 1, 3, 2)}

_DEJMPS_ROTATION = np.array(BILATERAL_ROTATIONS["X"])


def bilateral_rotation(state: BellDiagonal, axes: str) -> BellDiagonal:
    """``state`` (relative to Φ+) after the bilateral rotations about ``axes`` in turn
    (e.g. ``"XY"``: first X, then Y; :data:`BILATERAL_ROTATIONS`)."""
    vec = state.as_array()
    for a in axes:
        try:
            vec = vec[list(BILATERAL_ROTATIONS[a])]
        except KeyError:
            raise ValueError(f"axes: expected letters X, Y, Z, got {axes!r}") from None
    return BellDiagonal._from_array(vec)  # noqa: SLF001


def dejmps(kept: BellDiagonal, sacrificed: BellDiagonal, *,
           gate_fidelity: float | tuple[float, float] = 1.0,
           meas_fidelity: float | tuple[float, float] = 1.0) -> Purified:
    """One DEJMPS round (Deutsch et al., PRL 77, 2818 (1996)) → (p_success, output).

    Alice applies Rx(+π/2) and Bob Rx(−π/2) to both pairs, which swaps the Φ− and Ψ− weights
    (SeQUeNCe's "DEJMPS" omits this), then :func:`_recurrence`. In DEJMPS labels
    (A, B, C, D) = (Φ+, Ψ−, Ψ+, Φ−), ideal gates give Deutsch et al.'s formulas:
    N = (A1+B1)(A2+B2) + (C1+D1)(C2+D2), A' = (A1A2+B1B2)/N, B' = (C1D2+D1C2)/N,
    C' = (C1C2+D1D2)/N, D' = (A1B2+B1A2)/N; p_success = N. The output is *not* rotated back.

    ``gate_fidelity``/``meas_fidelity``: per side (a number = both sides, or (alice, bob)).
    G = g_A·g_B is SeQUeNCe's two-qubit depolarising parameter; η are read-out fidelities.
    """
    g_a, g_b = _per_side(gate_fidelity, "gate_fidelity")
    eta_a, eta_b = _per_side(meas_fidelity, "meas_fidelity")
    k = kept.as_array()[_DEJMPS_ROTATION]
    m = sacrificed.as_array()[_DEJMPS_ROTATION]
    return _recurrence(k, m, g_a * g_b, eta_a, eta_b)


def bbpssw(kept: BellDiagonal, sacrificed: BellDiagonal, *,
           gate_fidelity: float | tuple[float, float] = 1.0,
           meas_fidelity: float | tuple[float, float] = 1.0) -> Purified:
    """One BBPSSW round (Bennett et al., PRL 76, 722 (1996)) → (p_success, Werner output).

    Both inputs are twirled to Werner states of the same fidelity, purified by
    :func:`_recurrence` and the output re-twirled. Ideal, equal inputs (Bennett et al. 1996):
    p = (8F² − 4F + 5)/9, F' = [F² + ((1−F)/3)²]/p; fixed points F = ¼, ½, 1
    (8F³ − 14F² + 7F − 1 = (F−1)(2F−1)(4F−1)); F' > F iff F < ¼ or ½ < F < 1 (below ½ the
    map drifts to the useless fixed point ¼).
    Noise parameters as in :func:`dejmps`.
    """
    g_a, g_b = _per_side(gate_fidelity, "gate_fidelity")
    eta_a, eta_b = _per_side(meas_fidelity, "meas_fidelity")
    p, out = _recurrence(kept.twirl().as_array(), sacrificed.twirl().as_array(), g_a * g_b,
                         eta_a, eta_b)
    return Purified(p, out.twirl())


def purify(kept: BellDiagonal, sacrificed: BellDiagonal, *,
           protocol: PurificationProtocol = "dejmps",
           gate_fidelity: float | tuple[float, float] = 1.0,
           meas_fidelity: float | tuple[float, float] = 1.0) -> Purified:
    """:func:`dejmps` or :func:`bbpssw` by name."""
    if protocol == "dejmps":
        fn = dejmps
    elif protocol == "bbpssw":
        fn = bbpssw
    else:
        raise ValueError(f"protocol: expected 'dejmps' or 'bbpssw', got {protocol!r}")
    return fn(kept, sacrificed, gate_fidelity=gate_fidelity, meas_fidelity=meas_fidelity)


@dataclass(frozen=True)
class PurificationPlan:
    """Result of :func:`purify_until`.

    ``pairs_consumed`` is the expected number of input pairs consumed per output pair, from the
    success probabilities, assuming independent attempts, a failure discards both pairs (and,
    in pumping, the partly purified pair), and no decoherence while waiting:
    recurrence c_n = 2·c_{n−1}/p_n, pumping c_n = (c_{n−1} + 1)/p_n, c_0 = 1.
    """

    rounds: int
    success_probabilities: tuple[float, ...]
    pairs_consumed: float
    state: BellDiagonal
    protocol: PurificationProtocol
    schedule: Literal["recurrence", "pumping"]

    @property
    def yield_per_pair(self) -> float:
        """Output pairs per consumed input pair = 1 / pairs_consumed."""
        return 1.0 / self.pairs_consumed


def purify_until(state: BellDiagonal, target_fidelity: float, *,
                 protocol: PurificationProtocol = "dejmps", max_rounds: int = 20,
                 schedule: Literal["recurrence", "pumping"] = "recurrence",
                 gate_fidelity: float | tuple[float, float] = 1.0,
                 meas_fidelity: float | tuple[float, float] = 1.0,
                 fixed_point_tol: float = 1e-12) -> PurificationPlan | None:
    """Purify copies of ``state`` until the fidelity to Φ+ reaches ``target_fidelity``.

    ``schedule="recurrence"`` (entanglement recurrence / nested): round n purifies two outputs
    of round n−1. ``"pumping"``: round n purifies the current pair with a fresh ``state``.
    Returns the :class:`PurificationPlan` of the first round count reaching the target
    (0 rounds if already there), or None when the target is unreachable: detected when
    (a) a round changes no coefficient by more than ``fixed_point_tol`` (the map sits at a
    fixed point below the target, e.g. BBPSSW at F = ½, or a noisy protocol's ceiling),
    (b) the success probability is 0, or (c) ``max_rounds`` rounds did not suffice (slow
    convergence towards a fixed point below the target also ends here).
    """
    target = _unit(target_fidelity, "target_fidelity")
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 0:
        raise ValueError(f"max_rounds: expected an int >= 0, got {max_rounds!r}")
    if schedule not in ("recurrence", "pumping"):
        raise ValueError(f"schedule: expected 'recurrence' or 'pumping', got {schedule!r}")
    current, cost = state, 1.0
    probs: list[float] = []
    for n in range(max_rounds + 1):
        if current.fidelity() >= target:
            return PurificationPlan(n, tuple(probs), cost, current, protocol, schedule)
        if n == max_rounds:
            return None
        sacrificed = current if schedule == "recurrence" else state
        try:
            p, nxt = purify(current, sacrificed, protocol=protocol, gate_fidelity=gate_fidelity,
                            meas_fidelity=meas_fidelity)
        except PurificationImpossible:
            return None
        cost = (2.0 * cost if schedule == "recurrence" else cost + 1.0) / p
        probs.append(p)
        if nxt.isclose(current, fixed_point_tol):
            return None
        current = nxt
    return None  # pragma: no cover - the loop always returns


# --------------------------------------------------------------------------------------------
# Capacities


def hashing_yield(state: BellDiagonal) -> float:
    """Hashing-protocol yield D_H = 1 − S(ρ) = 1 − H(λ) (ebits per pair; Bennett, DiVincenzo,
    Smolin & Wootters, PRA 54, 3824 (1996)). May be negative (then hashing
    distils nothing); see :func:`hashing_yield_clamped`. Werner: positive iff F > 0.8107."""
    return 1.0 - state.entropy()


def hashing_yield_clamped(state: BellDiagonal) -> float:
    """max(0, :func:`hashing_yield`): the rate one-way hashing actually achieves."""
    return max(0.0, hashing_yield(state))


def dense_coding_capacity(state: BellDiagonal) -> float:
    """Bowen's dense-coding formula for a shared BD state over a noiseless qubit channel,
    C_DC = log2 d_A + S(ρ_B) − S(ρ_AB) = 2 − H(λ) bits (S(ρ_B) = 1 for BD states; Bowen,
    PRA 63, 022302 (2001); Hiroshima, J. Phys. A 34, 6907 (2001)). Unclamped: below
    1 the entanglement does not help; see :func:`dense_coding_capacity_clamped`. The advantage
    over 1 bit equals the coherent information 1 − H(λ) = :func:`hashing_yield`."""
    return 2.0 - state.entropy()


def dense_coding_capacity_clamped(state: BellDiagonal) -> float:
    """max(1, :func:`dense_coding_capacity`) bits per qubit sent: dense coding used only when it
    helps (the figure to report)."""
    return max(1.0, dense_coding_capacity(state))


def entanglement_assisted_capacity_depolarizing(p: float) -> float:
    """C_E of the qubit depolarising channel ρ → (1−p)ρ + p·I/2 (Bennett, Shor, Smolin &
    Thapliyal, PRL 83, 3081 (1999)), bits per use:
    C_E = 2 + (1−3p/4)·log2(1−3p/4) + (3p/4)·log2(p/4) = 2 − H(Werner(F = 1 − 3p/4))."""
    p = _unit(p, "p", hi=4.0 / 3.0)
    f = 1.0 - 0.75 * p
    return 2.0 - BellDiagonal.werner(f).entropy()


def unassisted_capacity_depolarizing(p: float) -> float:
    """Classical capacity of the same channel without entanglement, C = 1 − h(p/2) bits
    (King, IEEE TIT 49, 221 (2003)). p in [0, 1]."""
    p = _unit(p, "p")
    x = p / 2.0
    h = 0.0 if x in (0.0, 1.0) else -(x * math.log2(x) + (1 - x) * math.log2(1 - x))
    return 1.0 - h
