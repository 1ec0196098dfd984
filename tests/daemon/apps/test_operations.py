"""An application's gates (qnode.daemon.apps.operations) on simulated QDevices, through the real
driver over TCP, scored against the simulator's exact state.

The teleportation of examples/teleportation.py, gate by gate: for every Bell state a pair may
be announced in and random input states, alice's OPERATE (state prepared in the scratch qubit,
Bell measurement with her half) and bob's correction leave bob's qubit in exactly the input
state on noiseless devices; the scratch qubit is freed; gates that cannot run are refused
before anything is sent.
"""
from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from qnode.daemon.apps.operations import check_gates, commands, run_gates
from qnode.daemon.quantum.bell_states import BELL_STATES
from qnode.drivers.errors import DeviceError
from qnode.drivers.qdevice import QDevice
from qnode.hal_sim.twins.pair_registry import PairRegistry
from qnode.hal_sim.twins.qdevice import ManualClock, QDeviceConfig, QDeviceTwin
from qnode.hal_sim.twins.registry_oracle import RegistryOracle

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "teleportation.py"


def _example():
    spec = importlib.util.spec_from_file_location("teleportation_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _bloch(twin: QDeviceTwin, qubit: int) -> np.ndarray:
    dm = twin.state(qubit)
    return np.array([dm.expectation(p) for p in "XYZ"])


@pytest.mark.parametrize("bell", BELL_STATES)
def test_teleportation_gates_carry_random_states_exactly(bell):
    tele = _example()
    registry = PairRegistry(seed=3)
    clock = ManualClock()
    config = QDeviceConfig(n_qubits=3)
    twins = {n: QDeviceTwin(config, name=n, registry=registry, clock=clock, seed=i)
             for i, n in enumerate(("alice", "bob"))}
    rng = random.Random(bell)
    with twins["alice"].server() as sa, twins["bob"].server() as sb:
        alice, bob = QDevice(sa.address), QDevice(sb.address)
        try:
            qa, qb = alice.alloc(), bob.alloc()
            for seq in range(6):
                weights = [1.0 if b == bell else 0.0 for b in BELL_STATES]
                registry.herald("ab", seq, weights, announced=bell)
                assert alice.entangle(qa, "ab", seq) == bell
                bob.entangle(qb, "ab", seq)
                theta, phi = math.acos(1 - 2 * rng.random()), 2 * math.pi * rng.random()
                m1, m2 = run_gates(alice, qa, tele.alice_gates(theta, phi))
                assert run_gates(bob, qb, tele.correction_gates(bell, m1, m2)) == []
                assert _bloch(twins["bob"], qb) == pytest.approx(tele.bloch_of(theta, phi),
                                                                 abs=1e-9)
                # the oracle's truth, as the example reads it over the wire
                oracle = RegistryOracle(registry)
                reply = oracle.handle(f"SIM:STATE? bob {qb}".encode()).decode().split()
                assert [float(v) for v in reply] == pytest.approx(
                    list(tele.bloch_of(theta, phi)), abs=1e-8)
                # the verifier's rotation back to |0>: outcome 0 every time
                assert run_gates(bob, qb, tele.verify_gates(theta, phi)) == [0]
            assert twins["alice"].allocated == [qa]      # the scratch qubit was freed
        finally:
            alice.close()
            bob.close()


def test_commands_are_qdevice_instructions():
    ops = [{"gate": "rot", "qubit": "aux", "axis": "Y", "angle_rad": 0.5},
           {"gate": "h", "qubit": "pair"}, {"gate": "y", "qubit": "aux"},
           {"gate": "cnot", "control": "aux", "target": "pair"},
           {"gate": "meas", "qubit": "pair", "basis": "X"}]
    assert commands(ops, {"pair": 3, "aux": 5}) == [
        "ROT 5 Y 0.5", f"ROT 3 Z {math.pi!r}", f"ROT 3 Y {math.pi / 2!r}",
        f"ROT 5 Y {math.pi!r}", "CNOT 5 3", "MEAS 3 X"]
    assert check_gates(ops) == (True, True)
    assert check_gates([{"gate": "x", "qubit": "pair"}]) == (False, False)


@pytest.mark.parametrize("ops, what", [
    ([{"gate": "cnot", "control": "aux", "target": "aux"}], "control and target"),
    ([{"gate": "meas", "qubit": "pair", "basis": "Z"}, {"gate": "h", "qubit": "pair"}],
     "measured before"),
])
def test_gates_that_cannot_run_are_refused_naming_the_gate(ops, what):
    with pytest.raises(ValueError, match=what):
        check_gates(ops)


def test_a_device_refusal_is_raised_and_the_scratch_qubit_freed():
    twin = QDeviceTwin(QDeviceConfig(n_qubits=2), name="alice", clock=ManualClock())
    with twin.server() as server:
        device = QDevice(server.address)
        try:
            q = device.alloc()
            with pytest.raises(DeviceError):   # qubit 1 is not allocated: ERR 4
                run_gates(device, q + 1, [{"gate": "x", "qubit": "pair"}])
            with pytest.raises(DeviceError):   # the aux qubit is taken, then the pair refused
                run_gates(device, 7, [{"gate": "h", "qubit": "aux"},
                                      {"gate": "x", "qubit": "pair"}])
            assert twin.allocated == [q]
            device.alloc()
            with pytest.raises(DeviceError):   # no qubit left for aux: ERR 3
                run_gates(device, q, [{"gate": "h", "qubit": "aux"}])
        finally:
            device.close()
