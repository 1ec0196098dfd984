"""The QDevice trio: the density-matrix simulator (exact checks), the protocol of the twin, and the
driver against the twin on real loopback sockets — allocation, heralded pairs shared by two nodes
through a PairRegistry, T1/T2 decay, an explicit DEJMPS round and an explicit entanglement swap
(statistics against the Bell-diagonal formulas), and fault injection."""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import pytest

from qnode.drivers.errors import DeviceError, GarbledReply, InstrumentTimeout
from qnode.drivers.qdevice import QDevice, QubitCount, QubitInfo
from qnode.drivers.qdevice_protocol import (
    ERR_NO_FREE,
    ERR_NO_PAIR,
    ERR_PAIR_TAKEN,
    ERR_QUBIT,
    ERR_RESOURCE,
    ERR_SYNTAX,
    ERR_UNKNOWN,
)
from qnode.hal_sim.physics.density_matrix import (
    BELL_VECTORS,
    CNOT,
    DensityMatrix,
    H,
    X,
    Z,
    decoherence_kraus,
    rotation,
    werner_weights,
)
from qnode.hal_sim.physics.heralding import HERALD_DTYPE
from qnode.hal_sim.twins.pair_registry import PairRegistry
from qnode.hal_sim.twins.qdevice import ManualClock, QDeviceConfig, QDeviceTwin
from qnode.hal_sim.twins.serve import TcpServer

# ====================================================================== density matrix (exact)


def _random_state(n: int, rng: np.random.Generator) -> DensityMatrix:
    a = rng.normal(size=(2 ** n, 2 ** n)) + 1j * rng.normal(size=(2 ** n, 2 ** n))
    rho = a @ a.conj().T
    return DensityMatrix.from_matrix(rho / np.trace(rho))


def _random_unitary(k: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(2 ** k, 2 ** k)) + 1j * rng.normal(size=(2 ** k, 2 ** k)))
    return q * (np.diag(r) / abs(np.diag(r)))


def _embed(op: np.ndarray, qubits: list[int], n: int) -> np.ndarray:
    """Reference: the full 2^n x 2^n matrix of ``op`` on ``qubits`` (by permutation)."""
    k = len(qubits)
    rest = [q for q in range(n) if q not in qubits]
    full = np.kron(op, np.eye(2 ** (n - k)))  # acts on (qubits..., rest...)
    order = qubits + rest
    perm = np.argsort(order)
    t = full.reshape((2,) * (2 * n))
    t = t.transpose(list(perm) + [n + p for p in perm])
    return t.reshape(2 ** n, 2 ** n)


def test_gates_match_the_kronecker_reference_and_preserve_trace_and_positivity():
    rng = np.random.default_rng(11)
    for qubits in ([0], [2], [0, 3], [3, 1], [2, 0]):
        dm = _random_state(4, rng)
        rho = dm.matrix
        u = _random_unitary(len(qubits), rng)
        assert np.allclose(u.conj().T @ u, np.eye(2 ** len(qubits)))
        dm.apply(u, qubits)
        full = _embed(u, qubits, 4)
        assert np.allclose(dm.matrix, full @ rho @ full.conj().T, atol=1e-12)
        assert dm.trace() == pytest.approx(1.0, abs=1e-12)
        assert np.allclose(dm.matrix, dm.matrix.conj().T)
        assert np.linalg.eigvalsh(dm.matrix).min() > -1e-12


def test_bell_state_from_hadamard_and_cnot():
    dm = DensityMatrix(2)
    dm.apply(H, [0])
    dm.apply(CNOT, [0, 1])
    assert np.allclose(dm.matrix, np.outer(BELL_VECTORS[0], BELL_VECTORS[0].conj()))
    assert dm.bell_weights() == pytest.approx([1, 0, 0, 0], abs=1e-12)
    assert dm.expectation("XX") == pytest.approx(1.0)
    assert dm.expectation("YY") == pytest.approx(-1.0)
    assert dm.expectation("ZZ") == pytest.approx(1.0)
    assert np.allclose(dm.partial_trace([1]).matrix, np.eye(2) / 2)
    # |1> on the control flips the target; Bell-diagonal constructor round-trips
    lam = [0.4, 0.3, 0.2, 0.1]
    assert DensityMatrix.bell_diagonal(lam).bell_weights() == pytest.approx(lam)
    assert werner_weights(0.7, "psi-") == pytest.approx((0.1, 0.1, 0.1, 0.7))


def test_kron_and_partial_trace_are_inverse_on_products():
    rng = np.random.default_rng(3)
    a, b = _random_state(2, rng), _random_state(1, rng)
    ab = a.kron(b)
    assert np.allclose(ab.matrix, np.kron(a.matrix, b.matrix))
    assert np.allclose(ab.partial_trace([0, 1]).matrix, a.matrix)
    assert np.allclose(ab.partial_trace([2]).matrix, b.matrix)
    swap = np.eye(4)[[0, 2, 1, 3]]
    assert np.allclose(ab.partial_trace([1, 0]).matrix, swap @ a.matrix @ swap)


@pytest.mark.parametrize("t1, t2, t", [(1.0, 0.5, 0.3), (2.0, 4.0, 1.7), (math.inf, 1.0, 0.8),
                                       (1.0, 1.0, 0.0)])
def test_t1_t2_decay_of_populations_and_coherence(t1: float, t2: float, t: float):
    ks = decoherence_kraus(t, t1, t2)
    assert np.allclose(sum(k.conj().T @ k for k in ks), np.eye(2))
    plus = DensityMatrix(1)
    plus.apply(H, [0])
    plus.decohere(0, t, t1, t2)
    assert plus.expectation("X") == pytest.approx(math.exp(-t / t2), abs=1e-12)
    assert plus.trace() == pytest.approx(1.0, abs=1e-12)
    plusi = DensityMatrix(1)
    plusi.apply(rotation("X", -math.pi / 2), [0])          # |+i>
    assert plusi.expectation("Y") == pytest.approx(1.0)
    plusi.decohere(0, t, t1, t2)
    assert plusi.expectation("Y") == pytest.approx(math.exp(-t / t2), abs=1e-12)
    one = DensityMatrix(1)
    one.apply(X, [0])
    one.decohere(0, t, t1, t2)
    assert one.probabilities(0, "Z")[1] == pytest.approx(math.exp(-t / t1), abs=1e-12)
    # split waits compose to one wait
    two = DensityMatrix(1)
    two.apply(H, [0])
    two.decohere(0, t / 2, t1, t2)
    two.decohere(0, t / 2, t1, t2)
    assert np.allclose(two.matrix, plus.matrix, atol=1e-12)


def test_decoherence_rejects_t2_above_twice_t1():
    with pytest.raises(ValueError, match="T2"):
        decoherence_kraus(1.0, 1.0, 2.5)
    with pytest.raises(ValueError, match="T2"):
        QDeviceConfig(t1_ns=1e3, t2_ns=3e3)


def test_depolarising_gate_error_one_and_two_qubits():
    bell = DensityMatrix.bell_diagonal([1, 0, 0, 0])
    bell.depolarize([0, 1], 0.2)
    assert bell.bell_weights() == pytest.approx([0.8 + 0.05, 0.05, 0.05, 0.05])
    one = DensityMatrix.bell_diagonal([1, 0, 0, 0])
    one.depolarize([1], 1.0)                                # one half fully depolarised
    assert np.allclose(one.matrix, np.eye(4) / 4)
    q = DensityMatrix(1)
    q.depolarize([0], 0.3)
    assert q.expectation("Z") == pytest.approx(0.7)


def test_measurement_born_rule_collapse_and_readout_error():
    rng = np.random.default_rng(5)
    n = 4000
    ones = 0
    for _ in range(n):
        dm = DensityMatrix(1)
        dm.apply(rotation("Y", math.pi / 3), [0])          # P(1) = sin²(π/6) = 1/4
        ones += dm.measure(0, "Z", rng)
        assert dm.expectation("Z") in (pytest.approx(1.0), pytest.approx(-1.0))
    assert abs(ones / n - 0.25) < 3 * math.sqrt(0.25 * 0.75 / n)
    plus = DensityMatrix(1)
    plus.apply(H, [0])
    assert plus.measure(0, "X", rng) == 0 and plus.expectation("X") == pytest.approx(1.0)
    plusi = DensityMatrix(1)
    plusi.apply(rotation("X", -math.pi / 2), [0])
    assert plusi.measure(0, "Y", rng) == 0 and plusi.expectation("Y") == pytest.approx(1.0)
    flips = sum(DensityMatrix(1).measure(0, "Z", rng, readout_error=0.1) for _ in range(n))
    assert abs(flips / n - 0.1) < 3 * math.sqrt(0.1 * 0.9 / n)
    bell = DensityMatrix.bell_diagonal([1, 0, 0, 0])
    m = bell.measure(0, "X", rng, remove=True)
    assert bell.n_qubits == 1 and bell.expectation("X") == pytest.approx(1 - 2 * m)


def _dejmps_formula(l1, l2):
    """The DEJMPS recurrence (D. Deutsch et al., Phys. Rev. Lett. 77, 2818 (1996)) in [Φ+, Φ−,
    Ψ+, Ψ−] order (A = Φ+, B = Ψ−, C = Ψ+, D = Φ−)."""
    a1, d1, c1, b1 = l1
    a2, d2, c2, b2 = l2
    n = (a1 + b1) * (a2 + b2) + (c1 + d1) * (c2 + d2)
    return n, np.array([a1 * a2 + b1 * b2, a1 * b2 + b1 * a2, c1 * c2 + d1 * d2,
                        c1 * d2 + d1 * c2]) / n


def test_dejmps_circuit_matches_the_bell_diagonal_recurrence_exactly():
    """Qubits (a1, b1, a2, b2); Alice Rx(+π/2), Bob Rx(−π/2), CNOT kept→sacrificed, keep iff equal Z
    outcomes: exactly the recurrence for non-Werner inputs (the rotation convention matters)."""
    l1, l2 = [0.6, 0.2, 0.15, 0.05], [0.7, 0.05, 0.1, 0.15]
    dm = DensityMatrix.bell_diagonal(l1).kron(DensityMatrix.bell_diagonal(l2))
    for q in (0, 2):
        dm.apply(rotation("X", math.pi / 2), [q])
    for q in (1, 3):
        dm.apply(rotation("X", -math.pi / 2), [q])
    dm.apply(CNOT, [0, 2])
    dm.apply(CNOT, [1, 3])
    p, out = 0.0, np.zeros(4)
    for m in (0, 1):
        branch = dm.copy()
        pm = branch.project(2, "Z", m) * branch.project(3, "Z", m)
        p += pm
        out += pm * branch.bell_weights([0, 1])
    n, expected = _dejmps_formula(l1, l2)
    assert p == pytest.approx(n, abs=1e-12)
    assert out / p == pytest.approx(expected, abs=1e-12)
    nw, lw = _dejmps_formula(werner_weights(0.8), werner_weights(0.8))
    assert nw == pytest.approx(0.7689, abs=5e-5) and lw[0] == pytest.approx(0.8382, abs=5e-5)


def test_swap_circuit_gives_the_pauli_convolution_in_every_branch():
    """(A, R1) in λ1, (R2, B) in λ2; CNOT R1→R2, H R1, measure both, correct B with
    X^m2 Z^m1: (A, B) is λ'_k = Σ_{i⊕j=k} λ1_i λ2_j whatever the outcomes."""
    l1, l2 = np.array([0.6, 0.2, 0.15, 0.05]), np.array([0.7, 0.05, 0.1, 0.15])
    pauli = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (x, z) per Bell index
    conv = np.zeros(4)
    for i, (xi, zi) in enumerate(pauli):
        for j, (xj, zj) in enumerate(pauli):
            conv[pauli.index((xi ^ xj, zi ^ zj))] += l1[i] * l2[j]
    dm = DensityMatrix.bell_diagonal(l1).kron(DensityMatrix.bell_diagonal(l2))  # A R1 R2 B
    dm.apply(CNOT, [1, 2])
    dm.apply(H, [1])
    for m1 in (0, 1):
        for m2 in (0, 1):
            br = dm.copy()
            assert br.project(1, "Z", m1) * br.project(2, "Z", m2) == pytest.approx(0.25)
            if m2:
                br.apply(X, [3])
            if m1:
                br.apply(Z, [3])
            assert br.partial_trace([0, 3]).bell_weights() == pytest.approx(conv, abs=1e-12)
    w = werner_weights(0.9)
    f = sum(w[i] * w[j] for i in range(4) for j in range(4) if i == j)
    assert f == pytest.approx(0.8133, abs=5e-5)


# ====================================================================== the twin's protocol


@pytest.mark.parametrize("request_line, code", [
    (b"FOO", ERR_UNKNOWN), (b"", ERR_UNKNOWN), (b"\xff\xfe", ERR_SYNTAX),
    (b"ALLOC 1", ERR_SYNTAX), (b"FREE", ERR_SYNTAX), (b"FREE x", ERR_SYNTAX),
    (b"FREE 3", ERR_QUBIT), (b"FREE 99999", ERR_QUBIT), (b"INIT -1", ERR_SYNTAX),
    (b"ROT 0 W 1.0", ERR_SYNTAX), (b"ROT 0 X nan", ERR_SYNTAX), (b"ROT 0 X 1e999", ERR_SYNTAX),
    (b"ROT 0 X", ERR_SYNTAX), (b"CNOT 0 0", ERR_SYNTAX), (b"CNOT 0 1", ERR_QUBIT),
    (b"MEAS 0 Q", ERR_SYNTAX), (b"ENT 0 a/b 1", ERR_SYNTAX), (b"ENT 0 ab -1", ERR_SYNTAX),
    (b"ENT 0 ab 7", ERR_NO_PAIR), (b"AGE? 2", ERR_QUBIT), (b"INFO", ERR_SYNTAX),
])
def test_every_bad_request_gets_an_err_reply(request_line: bytes, code: int):
    twin = QDeviceTwin(QDeviceConfig(n_qubits=4), clock=ManualClock())
    assert twin.handle(b"ALLOC") == b"0\n"
    reply = twin.handle(request_line)
    assert reply.startswith(f"ERR {code} ".encode()) and reply.endswith(b"\n")
    assert reply.count(b"\n") == 1 and reply.isascii()


def test_wire_replies_are_one_line_and_case_insensitive():
    clock = ManualClock(1000)
    twin = QDeviceTwin(QDeviceConfig(n_qubits=2), name="alice", clock=clock)
    assert twin.handle(b"*idn?\r") == b"QNODE,QDEVICE-SIM,alice,1.0\n"
    assert twin.handle(b"qubits?") == b"2 2\n"
    assert twin.handle(b"alloc") == b"0\n"
    assert twin.handle(b"rot 0 x 3.141592653589793") == b"OK\n"
    assert twin.handle(b"TIME?") == b"1000\n"
    clock.advance(250)
    assert twin.handle(b"INFO 0") == b"AGE=250 LINK=- SEQ=- BELL=-\n"
    assert twin.handle(b"meas 0 z") == b"1\n"
    assert twin.handle(b"AGE? 0") == b"0\n"
    assert twin.handle(b"*RST") == b"OK\n" and twin.handle(b"QUBITS?") == b"2 2\n"


# ====================================================================== driver against the twin


@dataclass
class Net:
    registry: PairRegistry
    clock: ManualClock
    twins: dict[str, QDeviceTwin]
    servers: dict[str, TcpServer]
    drivers: dict[str, QDevice]


@contextmanager
def network(*names: str, config: QDeviceConfig | None = None, seed: int = 0,
            timeout_s: float = 1.0) -> Iterator[Net]:
    """Twins sharing one registry and one manual clock, each served on its own TCP port, and a
    driver for each."""
    registry = PairRegistry(seed=seed)
    clock = ManualClock()
    twins = {n: QDeviceTwin(config, name=n, registry=registry, clock=clock, seed=seed + 1 + i)
             for i, n in enumerate(names)}
    with ExitStack() as stack:
        servers = {n: stack.enter_context(t.server()) for n, t in twins.items()}
        drivers = {}
        for n, s in servers.items():
            drivers[n] = QDevice(s.address, timeout_s=timeout_s)
            stack.callback(drivers[n].close)
        yield Net(registry, clock, twins, servers, drivers)


def _check(estimate: float, expected: float, sigma: float, k: float, what: str) -> None:
    assert abs(estimate - expected) <= k * sigma, (
        f"{what}: {estimate:.4f} vs {expected:.4f} (|Δ| = {abs(estimate - expected) / sigma:.2f}σ,"
        f" σ = {sigma:.4f}, allowed {k}σ)")


def _correlator(pairs: list[tuple[int, int]]) -> tuple[float, float]:
    """⟨PP⟩ = 1 − 2·P(outcomes differ) and its standard error."""
    n = len(pairs)
    e = 1.0 - 2.0 * sum(a != b for a, b in pairs) / n
    return e, math.sqrt(max(1.0 - e * e, 1.0 / n) / n)


def _fidelity_phi_plus(samples: dict[str, list[tuple[int, int]]]) -> tuple[float, float]:
    """F to Φ+ = (1 + ⟨XX⟩ − ⟨YY⟩ + ⟨ZZ⟩)/4 and its standard error."""
    est = {b: _correlator(s) for b, s in samples.items()}
    f = (1 + est["X"][0] - est["Y"][0] + est["Z"][0]) / 4
    return f, math.sqrt(sum(s * s for _, s in est.values())) / 4


def test_identity_capacity_allocation_and_free():
    with network("alice", config=QDeviceConfig(n_qubits=3)) as net:
        d = net.drivers["alice"]
        assert d.identify() == "QNODE,QDEVICE-SIM,alice,1.0"
        assert d.qubits() == QubitCount(3, 3) and d.capacity() == 3
        assert [d.alloc() for _ in range(3)] == [0, 1, 2]
        with pytest.raises(DeviceError) as err:
            d.alloc()
        assert err.value.code == ERR_NO_FREE and err.value.command == "ALLOC"
        assert d.qubits().free == 0
        d.free(1)
        assert d.qubits().free == 1 and d.alloc() == 1
        d.free(2)
        with pytest.raises(DeviceError) as err:
            d.measure(2)
        assert err.value.code == ERR_QUBIT
        d.reset()
        assert d.qubits() == QubitCount(3, 3)


def test_gates_measure_and_reset_over_the_socket():
    config = QDeviceConfig(n_qubits=2, gate_fidelity_2q=0.9)
    with network("alice", config=config) as net:
        d, twin = net.drivers["alice"], net.twins["alice"]
        q0, q1 = d.alloc(), d.alloc()
        d.rx(q0, math.pi)
        assert d.measure(q0) == 1
        assert d.measure(q0) == 0              # measure-and-reset: back in |0⟩
        d.hadamard(q0)
        d.cnot(q0, q1)                         # a local Bell pair with a depolarising CNOT
        assert twin.state(q0, q1).bell_weights() == pytest.approx(
            [0.9 + 0.1 / 4, 0.1 / 4, 0.1 / 4, 0.1 / 4], abs=1e-12)
        d.init(q1)
        assert np.allclose(twin.state(q1).matrix, np.diag([1, 0]))
        with pytest.raises(ValueError):
            d.cnot(q0, q0)


def test_readout_error_flips_reported_outcomes():
    with network("alice", config=QDeviceConfig(n_qubits=1, readout_error=0.2), seed=4) as net:
        d = net.drivers["alice"]
        q = d.alloc()
        n = 800
        ones = sum(d.measure(q) for _ in range(n))
        _check(ones / n, 0.2, math.sqrt(0.2 * 0.8 / n), 3, "readout flips")


def test_ent_binds_two_devices_to_one_heralded_pair():
    with network("alice", "bob") as net:
        a, b = net.drivers["alice"], net.drivers["bob"]
        qa, qb = a.alloc(), b.alloc()
        lam = [0.1, 0.05, 0.15, 0.7]
        with pytest.raises(DeviceError) as err:
            a.entangle(qa, "ab", 0)
        assert err.value.code == ERR_NO_PAIR
        net.registry.herald("ab", 0, lam, "psi-")
        net.clock.advance(500)
        assert a.entangle(qa, "ab", 0) == "psi-"
        with pytest.raises(DeviceError) as err:
            a.entangle(qa, "ab", 0)                    # the other half, onto the same qubit
        assert err.value.code == ERR_PAIR_TAKEN
        assert b.entangle(qb, "ab", 0) == "psi-"
        with pytest.raises(DeviceError) as err:
            a.entangle(a.alloc(), "ab", 0)
        assert err.value.code == ERR_PAIR_TAKEN
        truth = net.registry.state([net.twins["alice"].key(qa), net.twins["bob"].key(qb)])
        assert truth.bell_weights() == pytest.approx(lam, abs=1e-12)
        net.clock.advance(1234)
        assert a.info(qa) == QubitInfo(qa, 1234, "ab", 0, "psi-")
        assert a.age_ns(qa) == 1234 and a.time_ns() == 1734
        a.measure(qa)
        assert a.info(qa) == QubitInfo(qa, 0, None, None, None)


def test_herald_record_loads_the_heralding_models_state():
    registry = PairRegistry(seed=1)
    twin = QDeviceTwin(name="alice", registry=registry, clock=ManualClock())
    peer = QDeviceTwin(name="bob", registry=registry, clock=ManualClock())
    rows = np.zeros(2, HERALD_DTYPE)
    rows[0] = (10, 3, 3, 2, 0.9, True)          # a true Ψ− herald, F = 0.9
    rows[1] = (20, 4, 2, 0, 0.25, False)        # a false Ψ+ herald
    registry.herald_record("ab", 0, rows[0])
    registry.herald_record("ab", 1, rows[1])
    registry.herald_record("ab", 2, rows[0], realised=True)
    for t in (twin, peer):
        t.handle(b"ALLOC")
    for seq, lam in ((0, [0, 0, 0.1, 0.9]), (1, [0.25] * 4), (2, [0, 0, 1, 0])):
        assert twin.handle(f"ENT 0 ab {seq}".encode()) in (b"psi-\n", b"psi+\n")
        peer.handle(f"ENT 0 ab {seq}".encode())
        state = registry.state([twin.key(0), peer.key(0)])
        assert state.bell_weights() == pytest.approx(lam, abs=1e-12)


def test_registry_forgets_consumed_and_expired_pairs():
    registry = PairRegistry(seed=0, remember_bound=1)
    a = QDeviceTwin(name="a", registry=registry, clock=ManualClock())
    b = QDeviceTwin(name="b", registry=registry, clock=ManualClock())
    for t in (a, b):
        t.handle(b"ALLOC")
    for seq in (0, 1):
        registry.herald("ab", seq, (1, 0, 0, 0))
        assert a.handle(f"ENT 0 ab {seq}".encode()) == b"phi+\n"
        assert b.handle(f"ENT 0 ab {seq}".encode()) == b"phi+\n"
    assert a.handle(b"ENT 0 ab 1").startswith(f"ERR {ERR_PAIR_TAKEN} ".encode())
    assert a.handle(b"ENT 0 ab 0").startswith(f"ERR {ERR_NO_PAIR} ".encode())  # forgotten
    registry.herald("ab", 2, (1, 0, 0, 0))
    assert a.handle(b"ENT 0 ab 2") == b"phi+\n"
    registry.expire("ab", 2)                     # b's half is discarded; a keeps its half
    assert b.handle(b"ENT 0 ab 2").startswith(f"ERR {ERR_NO_PAIR} ".encode())
    assert np.allclose(a.state(0).matrix, np.eye(2) / 2)


def test_joint_register_limit_is_an_err_not_a_crash():
    registry = PairRegistry(seed=0, max_register_qubits=3)
    twin = QDeviceTwin(QDeviceConfig(n_qubits=4), registry=registry, clock=ManualClock())
    for _ in range(4):
        twin.handle(b"ALLOC")
    assert twin.handle(b"CNOT 0 1") == b"OK\n" and twin.handle(b"CNOT 1 2") == b"OK\n"
    assert twin.handle(b"CNOT 2 3").startswith(f"ERR {ERR_RESOURCE} ".encode())


def test_pair_correlations_match_the_loaded_bell_diagonal_state():
    lam = (0.7, 0.1, 0.15, 0.05)
    expected = {"Z": lam[0] + lam[1] - lam[2] - lam[3], "X": lam[0] - lam[1] + lam[2] - lam[3],
                "Y": -lam[0] + lam[1] + lam[2] - lam[3]}
    n = 700
    with network("alice", "bob", seed=21) as net:
        a, b = net.drivers["alice"], net.drivers["bob"]
        qa, qb = a.alloc(), b.alloc()
        seq = 0
        for basis, e in expected.items():
            pairs = []
            for _ in range(n):
                net.registry.herald("ab", seq, lam, "phi+")
                assert a.entangle(qa, "ab", seq) == "phi+"
                b.entangle(qb, "ab", seq)
                pairs.append((a.measure(qa, basis), b.measure(qb, basis)))
                seq += 1
            est, sigma = _correlator(pairs)
            _check(est, e, sigma, 3, f"<{basis}{basis}>")


def test_waiting_decoheres_a_pair_as_t1_t2_predict():
    t1, t2, wait = 1_000_000.0, 500_000.0, 400_000  # ns
    expected = {"X": math.exp(-2 * wait / t2),
                "Z": math.exp(-2 * wait / t1) + (1 - math.exp(-wait / t1)) ** 2}
    n = 1000
    config = QDeviceConfig(n_qubits=1, t1_ns=t1, t2_ns=t2)
    with network("alice", "bob", config=config, seed=8) as net:
        a, b = net.drivers["alice"], net.drivers["bob"]
        qa, qb = a.alloc(), b.alloc()
        seq = 0
        for basis, e in expected.items():
            pairs = []
            for _ in range(n):
                net.registry.herald("ab", seq, (1, 0, 0, 0), "phi+")
                a.entangle(qa, "ab", seq)
                b.entangle(qb, "ab", seq)
                net.clock.advance(wait)
                pairs.append((a.measure(qa, basis), b.measure(qb, basis)))
                seq += 1
            est, sigma = _correlator(pairs)
            _check(est, e, sigma, 3, f"<{basis}{basis}> after {wait} ns")
            assert abs(est - 1.0) > 10 * sigma       # it did decay
        # the ground truth at the same age agrees exactly
        net.registry.herald("ab", seq, (1, 0, 0, 0), "phi+")
        a.entangle(qa, "ab", seq)
        b.entangle(qb, "ab", seq)
        net.clock.advance(wait)
        assert a.age_ns(qa) == wait
        net.twins["alice"].state(qa)
        net.twins["bob"].state(qb)
        truth = net.registry.state([net.twins["alice"].key(qa), net.twins["bob"].key(qb)])
        assert truth.expectation("XX") == pytest.approx(expected["X"], abs=1e-12)
        assert truth.expectation("ZZ") == pytest.approx(expected["Z"], abs=1e-12)


def test_dejmps_round_on_two_werner_pairs():
    """Both nodes: Rx(±π/2) on both pairs, CNOT kept→sacrificed, measure the sacrificed qubits in
    Z, keep iff equal. Werner F = 0.8 in: p = 0.7689, F' = 0.8382 (the DEJMPS recurrence, A = F,
    B = C = D = (1 − F)/3), both within 2σ."""
    w = werner_weights(0.8)
    p_expected, lam_out = _dejmps_formula(w, w)
    rounds = 3000
    with network("alice", "bob", config=QDeviceConfig(n_qubits=2), seed=5) as net:
        a, b = net.drivers["alice"], net.drivers["bob"]
        kept, sac = a.alloc(), a.alloc()
        assert (b.alloc(), b.alloc()) == (kept, sac)
        kept_samples: dict[str, list[tuple[int, int]]] = {"X": [], "Y": [], "Z": []}
        successes = 0
        for r in range(rounds):
            for q, seq in ((kept, 2 * r), (sac, 2 * r + 1)):
                net.registry.herald("ab", seq, w, "phi+")
                a.entangle(q, "ab", seq)
                b.entangle(q, "ab", seq)
            for q in (kept, sac):
                a.rx(q, math.pi / 2)
                b.rx(q, -math.pi / 2)
            a.cnot(kept, sac)
            b.cnot(kept, sac)
            if a.measure(sac, "Z") != b.measure(sac, "Z"):
                continue
            successes += 1
            basis = "XYZ"[successes % 3]
            kept_samples[basis].append((a.measure(kept, basis), b.measure(kept, basis)))
    p = successes / rounds
    _check(p, p_expected, math.sqrt(p_expected * (1 - p_expected) / rounds), 2,
           "DEJMPS success probability")
    f, sigma = _fidelity_phi_plus(kept_samples)
    _check(f, lam_out[0], sigma, 2, "DEJMPS output fidelity")
    assert p_expected == pytest.approx(0.7689, abs=5e-5)
    assert lam_out[0] == pytest.approx(0.8382, abs=5e-5)
    assert f - 0.8 > 2 * sigma                        # purification did purify


def test_entanglement_swap_at_a_repeater_with_pauli_frame_correction():
    """alice–rep and rep–bob Werner 0.9 pairs; the repeater does CNOT, H, measures both; the
    end pair, after the Pauli-frame correction (X^m2 Z^m1 on bob's side), has F = 0.8133."""
    w = werner_weights(0.9)
    f_expected = 0.9 * 0.9 + 0.1 * 0.1 / 3
    rounds = 2400
    with network("alice", "rep", "bob", config=QDeviceConfig(n_qubits=2), seed=9) as net:
        alice, rep, bob = (net.drivers[n] for n in ("alice", "rep", "bob"))
        qa, r1, r2, qb = alice.alloc(), rep.alloc(), rep.alloc(), bob.alloc()
        samples: dict[str, list[tuple[int, int]]] = {"X": [], "Y": [], "Z": []}
        frames = set()
        for k in range(rounds):
            net.registry.herald("ar", k, w, "phi+")
            net.registry.herald("rb", k, w, "phi+")
            alice.entangle(qa, "ar", k)
            rep.entangle(r1, "ar", k)
            rep.entangle(r2, "rb", k)
            bob.entangle(qb, "rb", k)
            rep.cnot(r1, r2)
            rep.hadamard(r1)
            m1, m2 = rep.measure(r1, "Z"), rep.measure(r2, "Z")
            frames.add((m1, m2))
            basis = "XYZ"[k % 3]
            xa, xb = alice.measure(qa, basis), bob.measure(qb, basis)
            flip = (m2 and basis in "ZY") ^ (m1 and basis in "XY")  # X^m2 Z^m1 on bob
            samples[basis].append((xa, xb ^ int(flip)))
    assert frames == {(0, 0), (0, 1), (1, 0), (1, 1)}
    f, sigma = _fidelity_phi_plus(samples)
    assert f_expected == pytest.approx(0.8133, abs=5e-5)
    _check(f, f_expected, sigma, 2, "swapped end-pair fidelity")


# ====================================================================== faults


def test_garbled_reply_names_the_command_then_the_driver_recovers():
    with network("alice", timeout_s=0.2) as net:
        d, server = net.drivers["alice"], net.servers["alice"]
        q = d.alloc()
        server.faults.garble = 1
        with pytest.raises(GarbledReply) as err:
            d.measure(q, "X")
        assert err.value.command == "MEAS 0 X" and err.value.reply
        assert "MEAS 0 X" in str(err.value)
        assert d.identify().startswith("QNODE,")
        server.faults.garble = 1
        with pytest.raises(GarbledReply) as err:
            d.alloc()
        assert err.value.command == "ALLOC"
        assert d.qubits() == QubitCount(4, 2)   # the ALLOC ran on the device: INFO/QUBITS? tell


def test_unknown_command_gets_err_over_the_socket_and_dropped_reply_times_out():
    with network("alice", timeout_s=0.2) as net:
        d, server = net.drivers["alice"], net.servers["alice"]
        assert d.transport.query("FROB 1 2").startswith(f"ERR {ERR_UNKNOWN} ")
        assert d.transport.query("ROT 0 X 1").startswith(f"ERR {ERR_QUBIT} ")
        server.faults.drop = 1
        with pytest.raises(InstrumentTimeout) as err:
            d.time_ns()
        assert err.value.command == "TIME?"
        assert d.time_ns() == 0
