"""Quantum channels between QDevices (``EMIT``/``ABSORB``): a half of a heralded pair sent from
one twin to another arrives with the pair's state (exactly; depolarised as configured; lost
as often as the transmission says), and superdense coding over it decodes as much as the
dense-coding capacity 2 − H(λ) of the pair (Bowen 2001), checked against the daemon's formula.
Refused commands change nothing. The driver's calls run against the twins on real sockets."""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import pytest

from qnode.daemon.quantum.bell_diagonal import BellDiagonal, dense_coding_capacity
from qnode.drivers.errors import DeviceError
from qnode.drivers.qdevice import QDevice
from qnode.drivers.qdevice_protocol import ERR_NO_CHANNEL, ERR_NO_PAIR, ERR_QUBIT, ERR_SYNTAX
from qnode.hal_sim.twins.pair_registry import PairRegistry
from qnode.hal_sim.twins.qdevice import ManualClock, QDeviceConfig, QDeviceTwin

LAMBDA = (0.82, 0.08, 0.06, 0.04)     # [Φ+, Φ−, Ψ+, Ψ−], announced Φ+


class Pair:
    """Two twins (alice, bob) sharing a registry, a manual clock and a channel alice → bob."""

    def __init__(self, *, transmission: float = 1.0, depolarising: float = 0.0,
                 max_in_flight: int = 1024, seed: int = 3):
        self.registry = PairRegistry(seed=seed)
        clock = ManualClock()
        cfg = QDeviceConfig(n_qubits=4)
        self.alice = QDeviceTwin(cfg, name="alice", registry=self.registry, clock=clock, seed=1)
        self.bob = QDeviceTwin(cfg, name="bob", registry=self.registry, clock=clock, seed=2)
        self.registry.add_channel("a-b", "alice", "bob", transmission=transmission,
                                  depolarising=depolarising, max_in_flight=max_in_flight)
        self.seq = 0
        for twin, qubits in ((self.alice, "0"), (self.bob, "01")):
            for q in qubits:    # alice's 0 and bob's 0 hold the pairs, bob's 1 takes photons
                assert self.ask(twin, "ALLOC") == q

    @staticmethod
    def ask(twin: QDeviceTwin, line: str) -> str:
        return twin.handle(line.encode()).decode().strip()

    def share(self, weights=LAMBDA) -> None:
        """A fresh pair in alice's qubit 0 and bob's qubit 0."""
        self.registry.herald("ab", self.seq, weights, "phi+")
        assert self.ask(self.alice, f"ENT 0 ab {self.seq}") == "phi+"
        assert self.ask(self.bob, f"ENT 0 ab {self.seq}") == "phi+"
        self.seq += 1


def _bell_weights(registry: PairRegistry, a, b) -> np.ndarray:
    return registry.state([a, b]).bell_weights()


def test_a_sent_half_arrives_with_the_pairs_state_and_the_sender_keeps_a_fresh_qubit():
    p = Pair()
    p.share()
    assert p.ask(p.alice, "EMIT 0 a-b") == "0"
    assert p.ask(p.bob, "ABSORB 1 a-b 0") == "OK"
    assert np.allclose(_bell_weights(p.registry, ("bob", 0), ("bob", 1)), LAMBDA, atol=1e-12)
    assert np.allclose(p.alice.state(0).matrix, [[1, 0], [0, 0]], atol=1e-12)   # |0⟩
    assert p.ask(p.alice, "QUBITS?") == "4 3"                   # still allocated
    assert p.ask(p.alice, "INFO 0").endswith("LINK=- SEQ=- BELL=-")
    assert p.ask(p.bob, "ABSORB 1 a-b 0").startswith(f"ERR {ERR_NO_PAIR} ")   # taken


def test_the_channel_depolarises_the_sent_half_as_configured():
    p = Pair(depolarising=0.3)
    p.share()
    n = p.ask(p.alice, "EMIT 0 a-b")
    assert p.ask(p.bob, f"ABSORB 1 a-b {n}") == "OK"
    # one half depolarised with probability p: λ → (1 − p)·λ + p/4 (a Pauli twirl)
    expected = 0.7 * np.array(LAMBDA) + 0.3 / 4
    assert np.allclose(_bell_weights(p.registry, ("bob", 0), ("bob", 1)), expected, atol=1e-12)


def test_photons_are_lost_as_often_as_the_transmission_says_and_the_sender_never_knows():
    eta, n = 0.6, 600
    p = Pair(transmission=eta, seed=11)
    arrived = 0
    for _ in range(n):
        p.share()
        sent = p.ask(p.alice, "EMIT 0 a-b")
        assert sent.isdigit()                     # the same reply, lost or not
        reply = p.ask(p.bob, f"ABSORB 1 a-b {sent}")
        assert reply == "OK" or reply.startswith(f"ERR {ERR_NO_PAIR} "), reply
        arrived += reply == "OK"
    sigma = math.sqrt(n * eta * (1 - eta))
    assert abs(arrived - eta * n) <= 5 * sigma, (arrived, eta * n, sigma)


def _superdense(p: Pair, trials: int, rng: np.random.Generator, weights) -> np.ndarray:
    """Alice encodes k = 2x + z as X^x Z^z on her half (Φ+ → Bell state k), sends it; bob
    decodes with a Bell-state measurement (CNOT, X and Z measurements: z and x bits). The 4×4
    counts of (sent, decoded)."""
    counts = np.zeros((4, 4), int)
    for _ in range(trials):
        p.share(weights)
        k = int(rng.integers(4))
        x, z = divmod(k, 2)
        if z:
            p.ask(p.alice, f"ROT 0 Z {math.pi}")
        if x:
            p.ask(p.alice, f"ROT 0 X {math.pi}")
        sent = p.ask(p.alice, "EMIT 0 a-b")
        assert p.ask(p.bob, f"ABSORB 1 a-b {sent}") == "OK"
        replies = p.ask(p.bob, "CNOT 1 0;MEAS 1 X;MEAS 0 Z").split(";")
        assert replies[0] == "OK", replies
        z_bit, x_bit = int(replies[1]), int(replies[2])
        counts[k, 2 * x_bit + z_bit] += 1
    return counts


def _mutual_information(counts: np.ndarray) -> float:
    p = counts / counts.sum()
    px, py = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / (px @ py)[nz])).sum())


@pytest.mark.parametrize("weights, beyond", [
    (LAMBDA, None),                               # 2 − H = 1.044: hardly worth a pair
    ((0.96, 0.02, 0.01, 0.01), math.log2(3))],   # 1.698: beyond linear optics' log2 3
    ids=["F0.82", "F0.96"])
def test_superdense_coding_over_the_channel_reaches_the_dense_coding_capacity(weights, beyond):
    trials = 3000
    counts = _superdense(Pair(seed=5), trials, np.random.default_rng(7), weights)
    # each message is decoded as message ⊕ k with probability λ_k (k = 2x + z, XOR of bits)
    for sent in range(4):
        row = counts[sent]
        for got in range(4):
            lam = weights[sent ^ got]
            sigma = math.sqrt(row.sum() * lam * (1 - lam))
            assert abs(row[got] - lam * row.sum()) <= 5 * sigma + 1, (sent, got, row)
    capacity = dense_coding_capacity(BellDiagonal(weights))
    h = -sum(x * math.log2(x) for x in weights)
    assert capacity == pytest.approx(2 - h)
    # the decoded bits per pair: the mutual information of the counts, its plug-in bias
    # (Miller–Madow: 9 / (2 N ln 2) for 4 × 4) removed; σ from the spread of log2(4 λ_k)
    achieved = _mutual_information(counts) - 9 / (2 * trials * math.log(2))
    spread = sum(x * math.log2(4 * x) ** 2 for x in weights) - capacity ** 2
    sigma = math.sqrt(spread / trials)
    assert abs(achieved - capacity) <= 4 * sigma, (achieved, capacity, sigma)
    if beyond is not None:   # a linear-optics Bell measurement decodes at most log2 3
        assert achieved > beyond + 4 * sigma, (achieved, beyond, sigma)


def test_refused_channel_commands_say_why_and_change_nothing():
    p = Pair(max_in_flight=2)
    p.share()
    before = p.bob.state(0, 1).matrix.copy()
    for twin, line, code in (
            (p.bob, "EMIT 0 a-b", ERR_NO_CHANNEL),          # the channel starts at alice
            (p.alice, "ABSORB 0 a-b 0", ERR_NO_CHANNEL),    # ... and ends at bob
            (p.alice, "EMIT 0 nowhere", ERR_NO_CHANNEL),
            (p.alice, "EMIT 0 a/b", ERR_SYNTAX),
            (p.alice, "EMIT 3 a-b", ERR_QUBIT),
            (p.bob, "ABSORB 1 a-b x", ERR_SYNTAX),
            (p.bob, "ABSORB 1 a-b 0", ERR_NO_PAIR),          # never sent
            (p.bob, "ABSORB 2 a-b 0", ERR_QUBIT)):
        assert p.ask(twin, line).startswith(f"ERR {code} "), (line, p.ask(twin, line))
    assert np.allclose(p.bob.state(0, 1).matrix, before, atol=1e-12)
    assert np.allclose(_bell_weights(p.registry, ("alice", 0), ("bob", 0)), LAMBDA, atol=1e-12)
    # at most max_in_flight photons wait: the oldest goes
    for expected in ("0", "1", "2"):
        p.share()
        assert p.ask(p.alice, "EMIT 0 a-b") == expected
    assert p.ask(p.bob, "ABSORB 1 a-b 0").startswith(f"ERR {ERR_NO_PAIR} ")
    assert p.ask(p.bob, "ABSORB 1 a-b 2") == "OK"
    with pytest.raises(ValueError, match="exists already"):
        p.registry.add_channel("a-b", "alice", "bob")
    with pytest.raises(ValueError, match="transmission"):
        p.registry.add_channel("b-a", "bob", "alice", transmission=1.5)


@contextmanager
def _served(p: Pair) -> Iterator[tuple[QDevice, QDevice]]:
    with ExitStack() as stack:
        drivers = []
        for twin in (p.alice, p.bob):
            server = stack.enter_context(twin.server())
            drivers.append(QDevice(server.address, timeout_s=2.0))
            stack.callback(drivers[-1].close)
        yield drivers[0], drivers[1]


def test_the_driver_sends_and_stores_a_qubit_and_raises_the_devices_codes():
    p = Pair(transmission=0.0)
    p.share()
    with _served(p) as (alice, bob):
        q = bob.alloc()
        lost = alice.emit(0, "a-b")
        with pytest.raises(DeviceError) as err:
            bob.absorb(q, "a-b", lost)
        assert err.value.code == ERR_NO_PAIR
        with pytest.raises(DeviceError) as err:
            bob.emit(q, "a-b")
        assert err.value.code == ERR_NO_CHANNEL
        with pytest.raises(ValueError, match="channel"):
            alice.emit(0, "a b")
        with pytest.raises(ValueError, match="photon"):
            bob.absorb(q, "a-b", -1)
    p2 = Pair()
    p2.share()
    with _served(p2) as (alice, bob):
        q = bob.alloc()
        bob.absorb(q, "a-b", alice.emit(0, "a-b"))
        assert np.allclose(_bell_weights(p2.registry, ("bob", 0), ("bob", q)), LAMBDA,
                           atol=1e-12)
