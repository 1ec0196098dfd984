"""The QDevice's gate noise: the conversion between the depolarising parameter g and the average
gate fidelity F_avg (qnode.drivers.qdevice_noise) against direct numerical computations of the
channel the twin applies (hal_sim's density matrix): the average over Haar-random pure states,
the entanglement fidelity with F_avg = (d·F_e + 1)/(d + 1), and the twin itself over its wire
commands."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qnode.drivers.qdevice_noise import (
    KEYS,
    average_fidelity,
    depolarising_parameter,
    given_key,
    min_average_fidelity,
)
from qnode.hal_sim.physics.density_matrix import CNOT, DensityMatrix, rotation
from qnode.hal_sim.twins.qdevice import ManualClock, QDeviceConfig, QDeviceTwin

#: (qubits, the ideal gate): the twin's CNOT and an arbitrary single-qubit rotation
GATES = {2: CNOT, 1: rotation("Y", 0.7) @ rotation("Z", 1.9)}


def _channel(rho: DensityMatrix, n: int, g: float) -> None:
    """The noisy gate as the twin's registry applies it: U, then depolarising 1 − g."""
    qubits = list(range(n))
    rho.apply(GATES[n], qubits)
    rho.depolarize(qubits, 1.0 - g)


def _haar_states(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    z = rng.normal(size=(count, 2 ** n)) + 1j * rng.normal(size=(count, 2 ** n))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def haar_average_fidelity(n: int, g: float, count: int = 400, seed: int = 1) -> float:
    """The mean of ⟨ψ|U†·E(|ψ⟩⟨ψ|)·U|ψ⟩ over ``count`` Haar-random pure states."""
    total = 0.0
    for psi in _haar_states(n, count, np.random.default_rng(seed)):
        rho = DensityMatrix.from_vector(psi)
        _channel(rho, n, g)
        ideal = GATES[n] @ psi
        total += float(np.real(ideal.conj() @ rho.matrix @ ideal))
    return total / count


def entanglement_fidelity(n: int, g: float) -> float:
    """F_e = ⟨Φ|(1 ⊗ U†E)(|Φ⟩⟨Φ|)|Φ⟩: the gate on the last n of 2n qubits in the maximally
    entangled state Φ of the first n with the last n."""
    d = 2 ** n
    phi = np.zeros(d * d, complex)
    for i in range(d):
        phi[i * d + i] = 1 / math.sqrt(d)
    rho = DensityMatrix.from_vector(phi)
    last = list(range(n, 2 * n))
    rho.apply(GATES[n], last)
    rho.depolarize(last, 1.0 - g)
    rho.apply(GATES[n].conj().T, last)
    return float(np.real(phi.conj() @ rho.matrix @ phi))


@pytest.mark.parametrize("n, g, f_avg", [
    (2, 0.999, 0.99925), (2, 0.96, 0.97), (2, 0.0, 0.25),
    (1, 0.999, 0.9995), (1, 0.9, 0.95), (1, 0.0, 0.5)])
def test_conversion_matches_the_channels_average_gate_fidelity(n, g, f_avg):
    """1 − F_avg = 3/4·(1 − g) for two qubits, 1/2·(1 − g) for one, computed three ways."""
    assert average_fidelity(g, n) == pytest.approx(f_avg, abs=1e-12)
    assert depolarising_parameter(f_avg, n) == pytest.approx(g, abs=1e-12)
    assert haar_average_fidelity(n, g) == pytest.approx(f_avg, abs=1e-12)
    d = 2 ** n
    assert (d * entanglement_fidelity(n, g) + 1) / (d + 1) == pytest.approx(f_avg, abs=1e-12)


def test_the_haar_average_is_a_real_average():
    """The per-state fidelity of the depolarised gate is g + (1 − g)/d for every state; a gate
    whose noise is not depolarising (an extra Z rotation) spreads it, and the Haar average then
    matches the 2-design formula (d·F_e + 1)/(d + 1) within its statistical error."""
    rng = np.random.default_rng(7)
    extra = rotation("Z", 0.4)
    fids = []
    for psi in _haar_states(1, 4000, rng):
        rho = DensityMatrix.from_vector(psi)
        _channel(rho, 1, 0.98)
        rho.apply(extra, [0])
        ideal = GATES[1] @ psi
        fids.append(float(np.real(ideal.conj() @ rho.matrix @ ideal)))
    # F_e of extra∘depolarising: g·|Tr R/2|² + (1 − g)/4, R = Rz(0.4): |Tr R/2|² = cos²(0.2)
    f_e = 0.98 * math.cos(0.2) ** 2 + 0.02 / 4
    mean, sem = float(np.mean(fids)), float(np.std(fids) / math.sqrt(len(fids)))
    assert sem > 1e-4
    assert abs(mean - (2 * f_e + 1) / 3) < 4 * sem


def test_the_twin_delivers_the_average_fidelity_it_was_given():
    """A twin configured with g = depolarising_parameter(F_avg) delivers F_avg on its CNOT over
    the wire, for random product inputs (single-qubit gates noiseless)."""
    f_avg = 0.97
    g = depolarising_parameter(f_avg, 2)
    twin = QDeviceTwin(QDeviceConfig(n_qubits=2, gate_fidelity_2q=g), name="t",
                       clock=ManualClock(), seed=3)
    rng = np.random.default_rng(11)
    fids = []
    for _ in range(20):
        assert twin.handle(b"*RST") == b"OK\n"
        q = [int(twin.handle(b"ALLOC")) for _ in range(2)]
        psi = np.ones(1, complex)
        for qi in q:
            a, b = (float(x) for x in rng.uniform(0, 2 * math.pi, 2))
            assert twin.handle(f"ROT {qi} Y {a!r}".encode()) == b"OK\n"
            assert twin.handle(f"ROT {qi} Z {b!r}".encode()) == b"OK\n"
            psi = np.kron(psi, rotation("Z", b) @ rotation("Y", a) @ np.array([1, 0], complex))
        assert twin.handle(f"CNOT {q[0]} {q[1]}".encode()) == b"OK\n"
        ideal = CNOT @ psi
        fids.append(float(np.real(ideal.conj() @ twin.state(*q).matrix @ ideal)))
    assert np.allclose(fids, f_avg, atol=1e-12)


def test_limits_and_round_trip():
    for n in (1, 2):
        assert min_average_fidelity(n) == average_fidelity(0.0, n) == 1 / 2 ** n
        assert average_fidelity(1.0, n) == depolarising_parameter(1.0, n) == 1.0
        for g in np.linspace(0, 1, 11):
            assert depolarising_parameter(average_fidelity(g, n), n) == pytest.approx(g)
    with pytest.raises(ValueError, match="1- and 2-qubit"):
        average_fidelity(0.9, 3)


def test_at_most_one_key_per_gate():
    k = KEYS[2]
    assert (k.depolarising, k.average_fidelity, k.legacy) == (
        "gate_depolarising_2q", "gate_average_fidelity_2q", "gate_fidelity_2q")
    assert given_key({"readout_error", "gate_fidelity_1q"}, 2) is None
    assert given_key({"gate_fidelity_1q"}, 1) == "gate_fidelity_1q"
    assert given_key({"gate_average_fidelity_2q", "gate_depolarising_1q"}, 2) == \
        "gate_average_fidelity_2q"
    with pytest.raises(ValueError, match="gate_depolarising_2q and gate_average_fidelity_2q"):
        given_key({"gate_depolarising_2q", "gate_average_fidelity_2q"}, 2)
