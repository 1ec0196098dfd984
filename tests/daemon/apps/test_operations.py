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

from qnode.daemon.apps.operations import Channels, PhotonLost, check_gates, commands, run_gates
from qnode.daemon.quantum.bell_states import BELL_STATES
from qnode.drivers.errors import DeviceError
from qnode.drivers.qdevice import QDevice
from qnode.hal_sim.twins.pair_registry import PairRegistry
from qnode.hal_sim.twins.qdevice import ManualClock, QDeviceConfig, QDeviceTwin
from qnode.hal_sim.twins.registry_oracle import RegistryOracle

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "teleportation.py"


def _example():
    if str(EXAMPLE.parent) not in sys.path:     # as when run as a script: its sibling modules
        sys.path.insert(0, str(EXAMPLE.parent))
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
                (m1, m2), _ = run_gates(alice, qa, tele.alice_gates(theta, phi))
                assert run_gates(bob, qb, tele.correction_gates(bell, m1, m2)) == ([], [])
                assert _bloch(twins["bob"], qb) == pytest.approx(tele.bloch_of(theta, phi),
                                                                 abs=1e-9)
                # the oracle's truth, as the example reads it over the wire
                oracle = RegistryOracle(registry)
                reply = oracle.handle(f"SIM:STATE? bob {qb}".encode()).decode().split()
                assert [float(v) for v in reply] == pytest.approx(
                    list(tele.bloch_of(theta, phi)), abs=1e-8)
                # the verifier's rotation back to |0>: outcome 0 every time
                assert run_gates(bob, qb, tele.verify_gates(theta, phi)) == ([0], [])
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
     "measured or sent before"),
    ([{"gate": "send", "qubit": "pair", "to": "bob"}], "no quantum channel to 'bob'"),
    ([{"gate": "x", "qubit": "pair"},
      {"gate": "receive", "qubit": "aux", "from": "alice", "photon": 0}],
     "receive must be the first gate"),
    ([{"gate": "receive", "qubit": "aux", "from": "carol", "photon": 0}],
     "no quantum channel from 'carol'"),
    ([{"gate": "send", "qubit": "pair", "to": "dave"}, {"gate": "x", "qubit": "pair"}],
     "measured or sent before"),
])
def test_gates_that_cannot_run_are_refused_naming_the_gate(ops, what):
    channels = Channels(out={"dave": "qc-ad"}, into={"alice": "qc-ba"})
    with pytest.raises(ValueError, match=what):
        check_gates(ops, channels)


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


def _superdense_devices(transmission: float):
    registry = PairRegistry(seed=4)
    clock = ManualClock()
    twins = {n: QDeviceTwin(QDeviceConfig(n_qubits=3), name=n, registry=registry, clock=clock,
                            seed=i) for i, n in enumerate(("alice", "bob"))}
    registry.add_channel("qc-ab", "alice", "bob", transmission=transmission)
    return registry, twins


ALICE_CHANNELS = Channels(out={"bob": "qc-ab"})
BOB_CHANNELS = Channels(into={"alice": "qc-ab"})


def test_superdense_coding_gates_carry_two_bits_per_pair_exactly():
    """Alice encodes k = 2x + z as X^x Z^z on her half of Φ+ and sends it; bob receives it into
    aux and Bell-measures aux with his half (CNOT, X and Z measurements): k every time, on
    noiseless devices; the scratch qubit is freed."""
    registry, twins = _superdense_devices(1.0)
    assert commands([{"gate": "send", "qubit": "pair", "to": "bob"}], {"pair": 2},
                    ALICE_CHANNELS) == ["EMIT 2 qc-ab"]
    with twins["alice"].server() as sa, twins["bob"].server() as sb:
        alice, bob = QDevice(sa.address), QDevice(sb.address)
        try:
            qa, qb = alice.alloc(), bob.alloc()
            for seq, k in enumerate([0, 1, 2, 3, 3, 1]):
                registry.herald("ab", seq, (1, 0, 0, 0), announced="phi+")
                alice.entangle(qa, "ab", seq)
                bob.entangle(qb, "ab", seq)
                x, z = divmod(k, 2)
                encode = ([{"gate": "z", "qubit": "pair"}] if z else []) + \
                    ([{"gate": "x", "qubit": "pair"}] if x else [])
                outcomes, photons = run_gates(alice, qa, encode + [
                    {"gate": "send", "qubit": "pair", "to": "bob"}], ALICE_CHANNELS)
                assert outcomes == [] and photons == [seq]
                decoded, sent = run_gates(bob, qb, [
                    {"gate": "receive", "qubit": "aux", "from": "alice", "photon": photons[0]},
                    {"gate": "cnot", "control": "aux", "target": "pair"},
                    {"gate": "meas", "qubit": "aux", "basis": "X"},
                    {"gate": "meas", "qubit": "pair", "basis": "Z"}], BOB_CHANNELS)
                assert sent == [] and 2 * decoded[1] + decoded[0] == k
            assert twins["bob"].allocated == [qb] and twins["alice"].allocated == [qa]
        finally:
            alice.close()
            bob.close()


def test_a_lost_photon_runs_nothing_and_leaves_the_pair():
    registry, twins = _superdense_devices(0.0)
    with twins["alice"].server() as sa, twins["bob"].server() as sb:
        alice, bob = QDevice(sa.address), QDevice(sb.address)
        try:
            qa, qb = alice.alloc(), bob.alloc()
            registry.herald("ab", 0, (0.9, 0.05, 0.03, 0.02), announced="phi+")
            alice.entangle(qa, "ab", 0)
            bob.entangle(qb, "ab", 0)
            _, photons = run_gates(alice, qa, [{"gate": "send", "qubit": "pair", "to": "bob"}],
                                   ALICE_CHANNELS)
            before = twins["bob"].state(qb).matrix.copy()
            with pytest.raises(PhotonLost, match="photon 0 from alice did not arrive"):
                run_gates(bob, qb, [
                    {"gate": "receive", "qubit": "aux", "from": "alice", "photon": photons[0]},
                    {"gate": "meas", "qubit": "pair", "basis": "Z"}], BOB_CHANNELS)
            assert np.allclose(twins["bob"].state(qb).matrix, before, atol=1e-12)
            assert twins["bob"].allocated == [qb]         # the scratch qubit was freed
            # a channel the device does not have (a config that names another): its error,
            # and again nothing else ran
            with pytest.raises(DeviceError) as err:
                run_gates(bob, qb, [
                    {"gate": "receive", "qubit": "aux", "from": "alice", "photon": 0},
                    {"gate": "meas", "qubit": "pair", "basis": "Z"}],
                    Channels(into={"alice": "qc-elsewhere"}))
            assert err.value.code == 8
            assert np.allclose(twins["bob"].state(qb).matrix, before, atol=1e-12)
            assert twins["bob"].allocated == [qb]
        finally:
            alice.close()
            bob.close()
