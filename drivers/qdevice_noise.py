"""The gate noise of a quantum memory (QDevice) as configs give it: the depolarising parameter g
or the average gate fidelity F_avg, and the conversion between the two.

**The model.** A k-qubit gate U (d = 2^k) acts as the depolarising channel

    ρ → g·UρU† + (1 − g)·I/d ⊗ Tr_k ρ

(the twin, :class:`qnode.hal_sim.twins.qdevice.QDeviceTwin`, applies exactly this; the daemon's
estimates of swaps and purification assume it). g is *not* the gate's fidelity: with
probability 1 − g the gate's qubits are replaced by the maximally mixed state, which still
overlaps the ideal output.

**Average gate fidelity.** F_avg = ∫dψ ⟨ψ|U†·E(|ψ⟩⟨ψ|)·U|ψ⟩ over Haar-random pure states ψ, what
randomised benchmarking reports. It follows from the entanglement fidelity
F_e = ⟨Φ|(1 ⊗ U†E)(|Φ⟩⟨Φ|)|Φ⟩ of the maximally entangled state Φ of the qubits with a copy
(M. Horodecki, P. Horodecki and R. Horodecki, Phys. Rev. A 60, 1888 (1999); M. A. Nielsen,
Phys. Lett. A 303, 249 (2002)):

    F_avg = (d·F_e + 1)/(d + 1).

For the channel above, Φ keeps weight g and the rest becomes I/d², of which Φ holds 1/d², so
F_e = g + (1 − g)/d². Then d·F_e + 1 = d·g + (1 − g)/d + 1 and

    1 − F_avg = (d(1 − g) − (1 − g)/d)/(d + 1) = (1 − g)·(d² − 1)/(d·(d + 1))
              = (1 − g)·(d − 1)/d,

that is two qubits (d = 4): 1 − F_avg = 3/4·(1 − g); one qubit (d = 2): 1 − F_avg = 1/2·(1 − g).
g in [0, 1] spans F_avg in [1/d, 1].

**Config keys.** A node's ``[memory]`` table and a bench's qdevice options name the parameter
of the k-qubit gates either way, by distinct keys (:data:`KEYS`): ``gate_depolarising_<k>q``
(g) or ``gate_average_fidelity_<k>q`` (F_avg). ``gate_fidelity_<k>q``, the name of earlier
configs, is read as g. At most one of the three may be given (:func:`given_key`).
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class GateNoiseKeys:
    """The config keys of the gate noise of k-qubit gates: ``depolarising`` (g),
    ``average_fidelity`` (F_avg) and ``legacy`` (the earlier name of g)."""

    depolarising: str
    average_fidelity: str
    legacy: str

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.depolarising, self.average_fidelity, self.legacy)


#: The keys per gate size (qubits).
KEYS: dict[int, GateNoiseKeys] = {
    k: GateNoiseKeys(f"gate_depolarising_{k}q", f"gate_average_fidelity_{k}q",
                     f"gate_fidelity_{k}q") for k in (1, 2)}


def _dimension(n_qubits: int) -> int:
    if n_qubits not in KEYS:
        raise ValueError(f"gate noise is defined for 1- and 2-qubit gates, got {n_qubits!r}")
    return 2 ** n_qubits


def min_average_fidelity(n_qubits: int) -> float:
    """The F_avg of the completely depolarising gate (g = 0): 1/d."""
    return 1.0 / _dimension(n_qubits)


def average_fidelity(g: float, n_qubits: int) -> float:
    """F_avg of an ``n_qubits`` gate with depolarising parameter ``g``:
    1 − (1 − g)·(d − 1)/d (module docstring)."""
    d = _dimension(n_qubits)
    return 1.0 - (1.0 - g) * (d - 1) / d


def depolarising_parameter(f_avg: float, n_qubits: int) -> float:
    """g of an ``n_qubits`` gate with average gate fidelity ``f_avg``:
    1 − (1 − F_avg)·d/(d − 1) (module docstring)."""
    d = _dimension(n_qubits)
    return 1.0 - (1.0 - f_avg) * d / (d - 1)


def given_key(present: Collection[str], n_qubits: int) -> str | None:
    """Which of the ``n_qubits`` gate-noise keys is among the keys ``present`` (None: none of
    them); ValueError naming them when more than one is."""
    _dimension(n_qubits)
    keys = KEYS[n_qubits]
    given = [k for k in keys.all if k in present]
    if len(given) > 1:
        raise ValueError(f"give one of {keys.depolarising} (g) or {keys.average_fidelity} "
                         f"(F_avg) ({keys.legacy} is the earlier name of "
                         f"{keys.depolarising}), not {' and '.join(given)}")
    return given[0] if given else None
