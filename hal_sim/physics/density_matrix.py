"""A small exact density-matrix simulator (numpy) for the simulated QDevice, up to ~10 qubits.

State: ρ of ``n`` qubits, held as a tensor of shape ``(2,)*2n`` — axes ``0..n-1`` are the row
(ket) indices of qubits ``0..n-1``, axes ``n..2n-1`` the column (bra) indices. Qubit 0 is the
most significant bit of the ``2^n × 2^n`` matrix (:attr:`DensityMatrix.matrix`), so
``|q0 q1 ...⟩`` reads left to right as in textbooks.

Operations (all in place, except :meth:`~DensityMatrix.kron` and
:meth:`~DensityMatrix.partial_trace`):

* :meth:`~DensityMatrix.apply`: a k-qubit operator (1 or 2 qubits in practice) by tensor
  contraction on the k row axes and the k column axes — ``O(4^n·2^k)``, never a
  ``2^n × 2^n`` Kronecker product per gate.
* :meth:`~DensityMatrix.apply_kraus`: a channel ``ρ → Σ K ρ K†``.
* :meth:`~DensityMatrix.depolarize`: ``ρ → (1 − p)·ρ + p·(I/2^k ⊗ Tr_q ρ)`` on k qubits
  (depolarising probability p; SeQUeNCe's and Dür–Briegel's gate fidelity is g = 1 − p).
* :meth:`~DensityMatrix.decohere`: T1/T2 for a wait time t on one qubit — amplitude damping with
  γ = 1 − exp(−t/T1) (Kraus ``[[1, 0], [0, √(1−γ)]]``, ``[[0, √γ], [0, 0]]``), then pure
  dephasing (Kraus ``√(1−p)·I``, ``√p·Z``) with p = (1 − exp(−t·(1/T2 − 1/(2·T1))))/2, so that
  populations relax as exp(−t/T1) towards |0⟩ and coherences (⟨X⟩, ⟨Y⟩) decay as exp(−t/T2).
  Needs T2 ≤ 2·T1 (``math.inf`` switches a process off). t, T1 and T2 share one unit.
* :meth:`~DensityMatrix.measure`: projective measurement of one qubit in Z, X or Y (outcome 0 is
  the +1 eigenstate: |0⟩, |+⟩, |+i⟩), sampled from a seeded :class:`numpy.random.Generator`;
  the state collapses (or the qubit is removed with ``remove=True``); a readout error flips the
  *reported* outcome with the given probability.
* :meth:`~DensityMatrix.partial_trace`, :meth:`~DensityMatrix.remove`,
  :meth:`~DensityMatrix.expectation` (Pauli strings), :meth:`~DensityMatrix.bell_diagonal`
  (λ in the order [Φ+, Φ−, Ψ+, Ψ−], with Φ± = (|00⟩ ± |11⟩)/√2, Ψ± = (|01⟩ ± |10⟩)/√2).

Gates: :data:`I2`, :data:`X`, :data:`Y`, :data:`Z`, :data:`H`, :data:`S`, :data:`CNOT` (control =
first qubit), :func:`rotation` ``R_a(θ) = exp(−iθσ_a/2)`` (θ in rad).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from qnode.daemon.quantum.bell_states import BELL_STATES

#: Bell states in qnode's order (the link layer's, SeQUeNCe's): [Φ+, Φ−, Ψ+, Ψ−].
#: Largest register this module accepts (2^20 complex entries = 16 MiB).
MAX_QUBITS = 10

I2 = np.eye(2, dtype=complex)
X = np.array([[0, 1], [1, 0]], dtype=complex)
Y = np.array([[0, -1j], [1j, 0]], dtype=complex)
Z = np.array([[1, 0], [0, -1]], dtype=complex)
H = np.array([[1, 1], [1, -1]], dtype=complex) / math.sqrt(2.0)
S = np.array([[1, 0], [0, 1j]], dtype=complex)
CNOT = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=complex)
PAULIS = {"I": I2, "X": X, "Y": Y, "Z": Z}

_SQ = 1.0 / math.sqrt(2.0)
#: Bell-state vectors in the order of :data:`BELL_STATES` (basis |00⟩, |01⟩, |10⟩, |11⟩).
BELL_VECTORS = np.array([[_SQ, 0, 0, _SQ], [_SQ, 0, 0, -_SQ],
                         [0, _SQ, _SQ, 0], [0, _SQ, -_SQ, 0]], dtype=complex)

# Basis change V_b taking the b-basis eigenstates to |0⟩, |1⟩ (V_b |+b⟩ = |0⟩).
_TO_Z = {"Z": I2, "X": H, "Y": H @ S.conj().T}


def rotation(axis: str, angle_rad: float) -> np.ndarray:
    """``R_a(θ) = exp(−iθσ_a/2) = cos(θ/2)·I − i·sin(θ/2)·σ_a`` for axis ``"X"|"Y"|"Z"``."""
    a = axis.upper()
    if a not in ("X", "Y", "Z"):
        raise ValueError(f"rotation axis must be X, Y or Z, got {axis!r}")
    return math.cos(angle_rad / 2) * I2 - 1j * math.sin(angle_rad / 2) * PAULIS[a]


def werner_weights(fidelity: float, bell: str = "phi+") -> tuple[float, float, float, float]:
    """λ of the Werner state with fidelity F to ``bell``: F there, (1 − F)/3 on the others."""
    if not 0.0 <= fidelity <= 1.0:
        raise ValueError(f"fidelity must be in [0, 1], got {fidelity!r}")
    k = BELL_STATES.index(bell)
    return tuple(fidelity if i == k else (1.0 - fidelity) / 3.0  # type: ignore[return-value]
                 for i in range(4))


def decoherence_kraus(t: float, t1: float, t2: float) -> list[np.ndarray]:
    """Kraus operators of T1/T2 decay for a wait ``t`` (same unit as ``t1``, ``t2``): amplitude
    damping composed with pure dephasing (see the module docstring). ``t1``/``t2`` may be
    ``math.inf``; T2 ≤ 2·T1 is required."""
    if t < 0:
        raise ValueError(f"wait time must be >= 0, got {t!r}")
    if not (t1 > 0 and t2 > 0):
        raise ValueError(f"T1 and T2 must be > 0, got T1={t1!r}, T2={t2!r}")
    if t2 > 2 * t1 * (1 + 1e-12):
        raise ValueError(f"T2 must be <= 2*T1, got T1={t1!r}, T2={t2!r}")
    gamma = 0.0 if math.isinf(t1) else -math.expm1(-t / t1)
    rate_phi = (0.0 if math.isinf(t2) else 1.0 / t2) - (0.0 if math.isinf(t1) else 0.5 / t1)
    p = max(0.0, -math.expm1(-t * max(rate_phi, 0.0)) / 2.0)
    ad = [np.array([[1, 0], [0, math.sqrt(1 - gamma)]], dtype=complex),
          np.array([[0, math.sqrt(gamma)], [0, 0]], dtype=complex)]
    deph = [math.sqrt(1 - p) * I2, math.sqrt(p) * Z]
    return [d @ a for d in deph for a in ad]


class DensityMatrix:
    """ρ of ``n_qubits`` qubits (see the module docstring for layout and conventions).

    ``DensityMatrix(n)`` is |0…0⟩⟨0…0|; :meth:`from_matrix`, :meth:`from_vector` and
    :meth:`bell_diagonal` build others.
    """

    def __init__(self, n_qubits: int = 1):
        n = int(n_qubits)
        if not 0 <= n <= MAX_QUBITS:
            raise ValueError(f"n_qubits must be 0..{MAX_QUBITS}, got {n_qubits!r}")
        t = np.zeros((2,) * (2 * n), dtype=complex)
        t[(0,) * (2 * n)] = 1.0
        self._n = n
        self._t = t

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_matrix(cls, rho: np.ndarray) -> DensityMatrix:
        """From a ``2^n × 2^n`` Hermitian, unit-trace matrix (checked loosely)."""
        m = np.asarray(rho, dtype=complex)
        d = m.shape[0]
        n = int(round(math.log2(d))) if d > 0 else -1
        if m.shape != (d, d) or 2 ** n != d:
            raise ValueError(f"need a 2^n x 2^n matrix, got shape {m.shape}")
        if not np.allclose(m, m.conj().T, atol=1e-9) or not math.isclose(
                np.trace(m).real, 1.0, abs_tol=1e-9):
            raise ValueError("a density matrix must be Hermitian with unit trace")
        out = cls(0)
        out._n = n
        out._t = m.reshape((2,) * (2 * n)).copy()
        return out

    @classmethod
    def from_vector(cls, psi: Sequence[complex] | np.ndarray) -> DensityMatrix:
        """|ψ⟩⟨ψ| for a (normalised here) state vector of length 2^n."""
        v = np.asarray(psi, dtype=complex).ravel()
        v = v / np.linalg.norm(v)
        return cls.from_matrix(np.outer(v, v.conj()))

    @classmethod
    def bell_diagonal(cls, weights: Sequence[float]) -> DensityMatrix:
        """Σ λ_i |B_i⟩⟨B_i| for λ = ``weights`` in the order [Φ+, Φ−, Ψ+, Ψ−] (λ ≥ 0, Σ = 1)."""
        lam = np.asarray(weights, dtype=float)
        if lam.shape != (4,) or np.any(lam < -1e-12) or not math.isclose(
                float(lam.sum()), 1.0, abs_tol=1e-9):
            raise ValueError(f"need 4 weights >= 0 summing to 1, got {weights!r}")
        rho = sum(lam[i] * np.outer(BELL_VECTORS[i], BELL_VECTORS[i].conj()) for i in range(4))
        return cls.from_matrix(rho)

    def copy(self) -> DensityMatrix:
        out = DensityMatrix(0)
        out._n, out._t = self._n, self._t.copy()
        return out

    # ------------------------------------------------------------------ views
    @property
    def n_qubits(self) -> int:
        return self._n

    @property
    def matrix(self) -> np.ndarray:
        """ρ as a ``2^n × 2^n`` matrix (a copy)."""
        d = 2 ** self._n
        return self._t.reshape(d, d).copy()

    def trace(self) -> float:
        d = 2 ** self._n
        return float(np.trace(self._t.reshape(d, d)).real)

    def expectation(self, paulis: str) -> float:
        """⟨P⟩ for a Pauli string over all qubits, e.g. ``"XX"`` or ``"ZIZ"`` (qubit 0 first)."""
        if len(paulis) != self._n or any(c not in PAULIS for c in paulis.upper()):
            raise ValueError(f"need a Pauli string of length {self._n}, got {paulis!r}")
        t = self._t
        for q, c in enumerate(paulis.upper()):
            if c != "I":
                t = _left(t, PAULIS[c].reshape(2, 2), (q,))
        d = 2 ** self._n
        return float(np.trace(t.reshape(d, d)).real)

    def bell_weights(self, qubits: Sequence[int] = (0, 1)) -> np.ndarray:
        """⟨B_i|ρ_q|B_i⟩ of the two given qubits' reduced state, order [Φ+, Φ−, Ψ+, Ψ−]."""
        r = self.partial_trace(qubits).matrix
        return np.array([float((b.conj() @ r @ b).real) for b in BELL_VECTORS])

    def probabilities(self, qubit: int, basis: str = "Z") -> tuple[float, float]:
        """(P(0), P(1)) for a measurement of ``qubit`` in ``basis`` (Z, X or Y)."""
        v = _TO_Z[_basis(basis)]
        r = self.partial_trace([qubit]).matrix
        r = v @ r @ v.conj().T
        p0 = min(1.0, max(0.0, float(r[0, 0].real)))
        return p0, 1.0 - p0

    # ------------------------------------------------------------------ operations
    def apply(self, op: np.ndarray, qubits: Sequence[int]) -> None:
        """ρ → O ρ O† for a ``2^k × 2^k`` operator O on the k given (distinct) qubits, the first
        listed being the most significant (for :data:`CNOT`: control, target)."""
        qs = self._check(qubits)
        k = len(qs)
        o = np.asarray(op, dtype=complex)
        if o.shape != (2 ** k, 2 ** k):
            raise ValueError(f"operator on {k} qubit(s) must be {2**k}x{2**k}, got {o.shape}")
        t = o.reshape((2,) * (2 * k))
        self._t = _left(_left(self._t, t, qs), t.conj(), [self._n + q for q in qs])

    def apply_kraus(self, ops: Sequence[np.ndarray], qubits: Sequence[int]) -> None:
        """ρ → Σ K ρ K† (trace preserving iff Σ K†K = I; not checked)."""
        qs = self._check(qubits)
        k = len(qs)
        cols = [self._n + q for q in qs]
        acc = np.zeros_like(self._t)
        for op in ops:
            t = np.asarray(op, dtype=complex).reshape((2,) * (2 * k))
            acc += _left(_left(self._t, t, qs), t.conj(), cols)
        self._t = acc

    def depolarize(self, qubits: Sequence[int], p: float) -> None:
        """ρ → (1 − p)·ρ + p·(I/2^k ⊗ Tr_qubits ρ): depolarising probability ``p`` (0..1)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"depolarising probability must be in [0, 1], got {p!r}")
        qs = self._check(qubits)
        if p == 0.0:
            return
        mixed = self._t
        for q in qs:  # the full twirl of one qubit: (1/4)·Σ_P P ρ P = I/2 ⊗ Tr_q ρ
            acc = np.zeros_like(mixed)
            for pm in PAULIS.values():
                acc += _left(_left(mixed, pm, (q,)), pm.conj(), (self._n + q,))
            mixed = acc / 4.0
        self._t = (1.0 - p) * self._t + p * mixed

    def decohere(self, qubit: int, t: float, t1: float, t2: float) -> None:
        """T1/T2 decay of ``qubit`` for a wait ``t`` (unit of ``t1``, ``t2``; see module doc)."""
        if t == 0:
            return
        self.apply_kraus(decoherence_kraus(t, t1, t2), [qubit])

    def project(self, qubit: int, basis: str, outcome: int) -> float:
        """Collapse ``qubit`` onto outcome 0/1 of ``basis``; the outcome's probability (the
        state is renormalised; ValueError for a zero-probability outcome)."""
        b = _basis(basis)
        v = _TO_Z[b]
        p = self.probabilities(qubit, b)[outcome]
        if p <= 0.0:
            raise ValueError(f"outcome {outcome} has probability 0")
        proj = v.conj().T @ np.diag([1.0 - outcome, float(outcome)]).astype(complex) @ v
        self.apply(proj, [qubit])
        self._t /= p
        return p

    def measure(self, qubit: int, basis: str, rng: np.random.Generator, *,
                readout_error: float = 0.0, remove: bool = False) -> int:
        """Measure ``qubit`` in ``basis`` (Z, X or Y); 0 is the +1 eigenvalue. The state
        collapses (``remove=True``: the qubit is then traced out, the others renumber down).
        ``readout_error``: probability that the reported outcome is flipped (the state follows
        the true outcome)."""
        p0, _ = self.probabilities(qubit, basis)
        outcome = 0 if rng.random() < p0 else 1
        self.project(qubit, basis, outcome)
        if remove:
            self.remove(qubit)
        if readout_error > 0.0 and rng.random() < readout_error:
            outcome ^= 1
        return outcome

    # ------------------------------------------------------------------ composition
    def kron(self, other: DensityMatrix) -> DensityMatrix:
        """self ⊗ other: other's qubits follow self's (numbered n, n+1, ...)."""
        n, m = self._n, other._n
        if n + m > MAX_QUBITS:
            raise ValueError(f"{n + m} qubits exceed MAX_QUBITS = {MAX_QUBITS}")
        t = np.multiply.outer(self._t, other._t)  # axes: rows_a, cols_a, rows_b, cols_b
        perm = (list(range(n)) + list(range(2 * n, 2 * n + m))
                + list(range(n, 2 * n)) + list(range(2 * n + m, 2 * n + 2 * m)))
        out = DensityMatrix(0)
        out._n, out._t = n + m, np.ascontiguousarray(t.transpose(perm))
        return out

    def partial_trace(self, keep: Sequence[int]) -> DensityMatrix:
        """The reduced state of the qubits ``keep``, in that order (a new object)."""
        ks = self._check(keep, allow_empty=True)
        n = self._n
        gone = [q for q in range(n) if q not in ks]
        dk, dg = 2 ** len(ks), 2 ** len(gone)
        t = self._t.transpose(ks + gone + [n + q for q in ks] + [n + q for q in gone])
        r = np.einsum("ajbj->ab", t.reshape(dk, dg, dk, dg))
        out = DensityMatrix(0)
        out._n, out._t = len(ks), r.reshape((2,) * (2 * len(ks)))
        return out

    def remove(self, qubit: int) -> None:
        """Trace out ``qubit``; qubits above it renumber down by one."""
        self._check([qubit])
        keep = [q for q in range(self._n) if q != qubit]
        r = self.partial_trace(keep)
        self._n, self._t = r._n, r._t  # noqa: SLF001

    # ------------------------------------------------------------------ internals
    def _check(self, qubits: Sequence[int], allow_empty: bool = False) -> list[int]:
        qs = [int(q) for q in qubits]
        if (not qs and not allow_empty) or len(set(qs)) != len(qs) or any(
                not 0 <= q < self._n for q in qs):
            raise ValueError(f"qubits must be distinct, in 0..{self._n - 1}, got {qubits!r}")
        return qs


def _left(t: np.ndarray, op: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """Contract a k-qubit operator (tensor ``(2,)*2k``: out axes, then in axes) into ``axes``."""
    k = len(axes)
    res = np.tensordot(op, t, axes=(list(range(k, 2 * k)), list(axes)))
    return np.moveaxis(res, list(range(k)), list(axes))


def _basis(basis: str) -> str:
    b = basis.upper()
    if b not in _TO_Z:
        raise ValueError(f"basis must be Z, X or Y, got {basis!r}")
    return b
