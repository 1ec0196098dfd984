"""The memory's pieces without a network: the test rule, the tomography, the QDevice batch."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from qnode.daemon.klink.memory import (
    MAX_TESTS_PER_BATCH,
    LinkTomography,
    split_test_picks,
    test_basis,
)
from qnode.daemon.quantum.bell_diagonal import BellDiagonal
from qnode.daemon.quantum.estimators import BELL_SIGNS
from qnode.drivers.errors import DeviceError
from qnode.drivers.qdevice import QDevice
from qnode.hal_sim.twins.pair_registry import PairRegistry
from qnode.hal_sim.twins.qdevice import ManualClock, QDeviceConfig, QDeviceTwin
from qnode.hal_sim.twins.registry_oracle import RegistryOracle


def test_the_test_rule_picks_its_fraction_and_all_bases_evenly():
    picks = [test_basis(s, 0.2) for s in range(200_000)]
    chosen = [b for b in picks if b is not None]
    frac = len(chosen) / len(picks)
    assert abs(frac - 0.2) < 5 * math.sqrt(0.2 * 0.8 / len(picks)), frac
    counts = {b: chosen.count(b) for b in "XYZ"}
    n = len(chosen)
    assert all(abs(c - n / 3) < 5 * math.sqrt(n * 2 / 9) for c in counts.values()), counts
    assert test_basis(12345, 0.0) is None and test_basis(12345, 1.0) is not None
    # both ends compute the same thing
    assert picks[:1000] == [test_basis(s, 0.2) for s in range(1000)]


def test_capped_batches_at_both_ends_measure_the_same_test_pairs():
    """A busy end takes 4 times as many pairs per batch as its peer, its batches starting
    half-way into the peer's: it still measures only pairs the peer measured too, as both
    prefer the lowest hashes; taking the first ones in order, half of its tests would have no
    partner outcome."""
    candidates = [(s, b, "phi+", 1000 * s) for s in range(5_000_000, 5_600_000)
                  if (b := test_basis(s, 0.1)) is not None]
    chunk = 2 * MAX_TESTS_PER_BATCH
    fast: set[int] = set()
    for k in range(0, len(candidates) - chunk + 1, chunk):
        kept, skipped = split_test_picks(candidates[k:k + chunk])
        assert len(kept) == MAX_TESTS_PER_BATCH and len(skipped) == chunk - MAX_TESTS_PER_BATCH
        assert [t[0] for t in kept] == sorted(t[0] for t in kept)   # in seq order
        fast |= {t[0] for t in kept}
    for start in range(chunk // 2, len(candidates) - 5 * chunk, 4 * chunk):
        slow, _ = split_test_picks(candidates[start:start + 4 * chunk])
        assert len({t[0] for t in slow} & fast) >= 0.95 * MAX_TESTS_PER_BATCH
        in_order = candidates[start:start + MAX_TESTS_PER_BATCH]
        assert len({t[0] for t in in_order} & fast) <= 0.6 * MAX_TESTS_PER_BATCH
    # up to the limit: all measured
    assert split_test_picks(candidates[:10]) == (candidates[:10], [])


def _feed(tomo: LinkTomography, rng: np.random.Generator, rel, announced: str, n: int,
          e_a: float = 0.01, e_b: float = 0.02) -> None:
    """``n`` matched test outcomes of pairs drawn from ``rel`` (weights relative to the
    announced state), in a random basis, flipped by each end's read-out error."""
    absolute = BellDiagonal(tuple(rel)).relabel(announced).as_array()
    signs = np.array([BELL_SIGNS[k] for k in ("phi+", "phi-", "psi+", "psi-")])
    for _ in range(n):
        state = rng.choice(4, p=absolute)
        b = rng.integers(3)
        corr = signs[state][b]
        m_a = int(rng.integers(2))
        m_b = m_a if corr == 1 else 1 - m_a
        m_a ^= int(rng.random() < e_a)
        m_b ^= int(rng.random() < e_b)
        tomo.add("XYZ"[b], announced, m_a, m_b, e_a, e_b)


@pytest.mark.parametrize("announced", ["phi+", "psi-"])
def test_tomography_recovers_the_state_through_readout_errors(announced):
    """Outcomes drawn from a known state relative to the announced one, flipped by each end's
    read-out error: the corrected estimate is within 4σ of the truth, and a steady link never
    restarts it."""
    rel = np.array([0.93, 0.04, 0.02, 0.01])       # relative to the announced state
    tomo = LinkTomography(0.5, min_tests=100)
    _feed(tomo, np.random.default_rng(7), rel, announced, 30_000)
    est, sigma = tomo.estimate()
    assert abs(est.fidelity() - rel[0]) < 4 * sigma, (est, sigma)
    assert sigma < 0.005
    assert tomo.restarts == 0 and tomo.n.sum() == 30_000


def test_tomography_follows_a_link_that_degrades():
    """30 000 tests at F 0.93, then the interference degrades (F 0.78: weight to the other Ψ,
    as a lower HOM visibility does): the first segment after the change restarts the estimate,
    which is then the new state's within 4σ; the restart names the basis and both fractions."""
    rng = np.random.default_rng(11)
    tomo = LinkTomography(0.5, min_tests=100, segment_tests=500)
    _feed(tomo, rng, [0.93, 0.04, 0.02, 0.01], "psi-", 30_000)
    assert tomo.restarts == 0
    # 0.15 of weight moves to another Bell state: two bases' error fractions rise by 0.15
    _feed(tomo, rng, [0.78, 0.04, 0.17, 0.01], "psi-", 3 * 2 * 500 + 300)
    assert tomo.restarts == 1, tomo.changed
    assert tomo.changed is not None and tomo.changed["after"] > tomo.changed["before"] + 0.05
    # the tests since the restart: the segment that caught the change and those after it
    assert tomo.n.sum() < 3 * 2 * 500 + 300 + 3 * 600
    est, sigma = tomo.estimate()
    assert abs(est.fidelity() - 0.78) < 4 * sigma, (est.fidelity(), sigma)


def test_a_batch_is_one_round_trip_and_a_failed_ent_is_reported_per_pair():
    reg = PairRegistry(seed=3)
    a = QDeviceTwin(QDeviceConfig(n_qubits=2), name="a", registry=reg)
    b = QDeviceTwin(QDeviceConfig(n_qubits=2), name="b", registry=reg)
    for k in range(10):
        reg.herald_at("L", 1_000_000 * (k + 1), (1.0, 0, 0, 0), "phi+", tolerance_ps=1000)
    with a.server() as sa, b.server() as sb, \
            QDevice(sa.address, timeout_s=2) as da, QDevice(sb.address, timeout_s=2) as db:
        qa, qb = da.alloc(), db.alloc()
        pairs = [(1_000_000 * (k + 1), "XYZ"[k % 3]) for k in range(10)]
        pairs.insert(3, (55_500_000, "Z"))           # no herald there
        ma = da.measure_pairs_at(qa, "L", pairs)
        mb = db.measure_pairs_at(qb, "L", pairs)
        assert ma[3] is None and mb[3] is None
        good = [(x, y, p[1]) for x, y, p in zip(ma, mb, pairs, strict=True) if x is not None]
        assert len(good) == 10
        # Φ+: ⟨XX⟩ = ⟨ZZ⟩ = +1, ⟨YY⟩ = −1
        assert all((x == y) == (basis != "Y") for x, y, basis in good), good
        replies = da.batch(["QUBITS?", "FREE 7", "*IDN?"])
        assert replies[0] == "2 1" and isinstance(replies[1], DeviceError)
        assert replies[1].code == 4 and replies[2].startswith("QNODE")
        with pytest.raises(ValueError):
            da.batch(["QUBITS?;QUBITS?"])


class _TickingClock(ManualClock):
    """A device clock that moves 7 ms at every read: the ENT and the AGE? after it in one batch
    read it at different times, as a slow device would."""

    def __call__(self) -> int:
        return self.advance(7_000_000)


def test_a_bind_is_stamped_when_the_device_ran_the_ent_not_when_the_reply_was_read():
    """``pairs_at`` binds with ``ENT`` + ``AGE?``: the bind time is the reply's arrival less the
    device's age of the qubit, so neither the device's own delay nor a caller that reads the
    result late ages the pair. A failed ENT has no bind time."""
    reg = PairRegistry(seed=5)
    a = QDeviceTwin(QDeviceConfig(n_qubits=3), name="a", registry=reg, clock=_TickingClock())
    for k in range(2):
        reg.herald_at("L", 1_000_000 * (k + 1), (1.0, 0, 0, 0), "psi+", tolerance_ps=1000)
    with a.server() as sa, QDevice(sa.address, timeout_s=2) as da:
        qs = [da.alloc(), da.alloc()]
        before = time.monotonic()
        done = da.pairs_at("L", bind=[(qs[0], 1_000_000), (qs[1], 77_000_000)])
        time.sleep(0.05)   # the caller looks late: that must not move the stamp
        after = time.monotonic()
    assert done.bells == ["psi+", None] and done.bound_at[1] is None
    stamp = done.bound_at[0]
    assert stamp is not None
    # the device said the qubit had aged ≥ 7 ms by its AGE?: the stamp is that much before the
    # reply came back, which was before the caller's sleep
    assert before - 0.1 <= stamp <= after - 0.05 - 0.007, (before, stamp, after)


def test_a_bsm_and_a_parity_round_are_stamped_by_the_device_too():
    """The repeater's BSM and a purification round read ``AGE?`` of their measured qubit in the
    same batch: the time they ran is the reply less that age, not when the caller looked."""
    a = QDeviceTwin(QDeviceConfig(n_qubits=4), name="a", registry=PairRegistry(seed=1),
                    clock=_TickingClock())
    with a.server() as sa, QDevice(sa.address, timeout_s=2) as da:
        q = [da.alloc() for _ in range(4)]
        before = time.monotonic()
        bell, bsm_at = da.bell_measurement_at(q[0], q[1])
        outcome, round_at = da.parity_round_at(q[2], q[3], [(q[2], "X", 0.5)])
        time.sleep(0.05)
        after = time.monotonic()
    assert bell in ("phi+", "phi-", "psi+", "psi-") and outcome in (0, 1)
    for stamp in (bsm_at, round_at):
        assert before - 0.1 <= stamp <= after - 0.05 - 0.007, (before, stamp, after)


def test_the_registry_oracle_names_the_partner_and_the_true_state():
    reg = PairRegistry(seed=1)
    a = QDeviceTwin(QDeviceConfig(n_qubits=1), name="alice", registry=reg)
    b = QDeviceTwin(QDeviceConfig(n_qubits=1), name="bob", registry=reg)
    reg.herald("L", 0, (0.1, 0.0, 0.9, 0.0), "psi+")
    reg.herald("L", 1, (1.0, 0.0, 0.0, 0.0), "phi+")
    oracle = RegistryOracle(reg)
    assert a.handle(b"ALLOC") == b"0\n" and b.handle(b"ALLOC") == b"0\n"
    assert oracle.handle(b"SIM:BOUND? alice 0") == b"-\n"      # never bound
    assert a.handle(b"ENT 0 L 0") == b"psi+\n"
    first = float(oracle.handle(b"SIM:BOUND? alice 0"))
    assert 0.0 <= first < 1.0
    # the other half is not bound yet: no device holds it ("-"), the state is the herald's
    assert oracle.handle(b"SIM:PAIR? alice 0").split()[0] == b"-"
    assert b.handle(b"ENT 0 L 0") == b"psi+\n"
    where, *w = oracle.handle(b"SIM:PAIR? alice 0").decode().split()
    assert where == "bob:0"
    assert np.allclose([float(x) for x in w], [0.1, 0.0, 0.9, 0.0], atol=1e-9)
    assert a.handle(b"SIM:PAIR? 0").decode().split()[0] == "bob:0"
    assert oracle.handle(b"SIM:PAIR? carol 0").startswith(b"ERR 4")
    # a newer pair on the same qubit: the time since its ENT starts again
    time.sleep(0.2)
    assert a.handle(b"ENT 0 L 1") == b"phi+\n"
    assert float(oracle.handle(b"SIM:BOUND? alice 0")) < first + 0.2
    assert oracle.handle(b"SIM:BOUND? alice").startswith(b"ERR 2")


def test_the_swap_estimate_follows_the_density_matrix_through_waits_and_a_bsm():
    """Four halves decaying for different times around a Bell-state measurement on the twins
    (exact amplitude damping and dephasing) against :mod:`qnode.daemon.klink.swapping`'s model
    (Pauli channels per half, :func:`~qnode.daemon.quantum.bell_diagonal.swap`, the Pauli frame)."""
    from qnode.daemon.klink.swapping import decay
    from qnode.daemon.quantum.bell_diagonal import pauli_frame, swap
    from qnode.hal_sim.twins.qdevice import ManualClock

    clock = ManualClock()
    cfg = QDeviceConfig(n_qubits=2, t1_ns=5e9, t2_ns=2e9)
    reg = PairRegistry(seed=2)
    alice, rep, bob = (QDeviceTwin(cfg, name=n, registry=reg, clock=clock)
                       for n in ("alice", "rep", "bob"))
    for t in (alice, rep, bob, rep):
        t.handle(b"ALLOC")
    l1, l2 = (0.0, 0.0, 0.96, 0.04), (0.0, 0.0, 0.05, 0.95)
    reg.herald("L1", 0, l1, "psi+")
    reg.herald("L2", 0, l2, "psi-")
    for at_s, twin, cmd in ((0.0, alice, b"ENT 0 L1 0"), (0.1, rep, b"ENT 0 L1 0"),
                            (0.2, rep, b"ENT 1 L2 0"), (0.25, bob, b"ENT 0 L2 0")):
        clock.set(int(at_s * 1e9))
        assert twin.handle(cmd).strip() in (b"psi+", b"psi-")
    clock.set(int(0.4e9))
    assert rep.handle(b"CNOT 0 1") == b"OK\n"
    z, x = int(rep.handle(b"MEAS 0 X")), int(rep.handle(b"MEAS 1 Z"))
    outcome = ("phi+", "phi-", "psi+", "psi-")[2 * x + z]
    clock.set(int(0.9e9))
    partner, truth = reg.device_pair_truth("alice", 0)
    assert partner == ("bob", 0)
    a = decay(BellDiagonal(l1), (0.3,), 5.0, 2.0)      # the repeater's halves until the BSM
    b = decay(BellDiagonal(l2), (0.2,), 5.0, 2.0)
    model = decay(swap(a, b).relabel(outcome), (0.9, 0.65), 5.0, 2.0)   # the ends' halves
    frame = pauli_frame("psi+", "psi-", outcome)
    assert abs(model.fidelity(frame) - truth[int(frame)]) < 0.003, (model, truth)
    assert np.allclose(model.as_array(), truth, atol=0.003)


def test_the_drivers_bell_measurement_leaves_the_end_pair_in_the_measured_state():
    """Two pure Φ+ pairs, a BSM on the middle qubits through the driver: by the Pauli-frame
    rule the end pair is in exactly the Bell state measured (Φ+ ⊕ Φ+ ⊕ c = c)."""
    seen = set()
    for seed in range(12):
        reg = PairRegistry(seed=seed)
        a, r, b = (QDeviceTwin(QDeviceConfig(n_qubits=2), name=n, registry=reg)
                   for n in ("a", "r", "b"))
        reg.herald("L1", 0, (1.0, 0, 0, 0), "phi+")
        reg.herald("L2", 0, (1.0, 0, 0, 0), "phi+")
        with r.server() as sr, QDevice(sr.address, timeout_s=2) as dr:
            a.handle(b"ALLOC"), b.handle(b"ALLOC")
            q1, q2 = dr.alloc(), dr.alloc()
            a.handle(b"ENT 0 L1 0"), dr.entangle(q1, "L1", 0)
            dr.entangle(q2, "L2", 0), b.handle(b"ENT 0 L2 0")
            outcome = dr.bell_measurement(q1, q2)
            with pytest.raises(DeviceError):
                dr.bell_measurement(q1, 5)
        partner, w = reg.device_pair_truth("a", 0)
        assert partner == ("b", 0)
        assert w[("phi+", "phi-", "psi+", "psi-").index(outcome)] == pytest.approx(1.0)
        seen.add(outcome)
    assert len(seen) >= 3, seen   # the outcomes are random, each uniform
