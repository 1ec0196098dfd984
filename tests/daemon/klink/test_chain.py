"""Chains of repeaters (qnode.daemon.klink.chain) against the simulator's density matrices.

hal_sim's QDevice twins share one pair registry and a manual clock: heralded link pairs of
random Bell-diagonal states and announced Bell states are bound along a chain of 1, 2 or 4
repeaters at random moments, the repeaters run their Bell measurements (the driver's
``bell_measurement``) in a random order, and the ends' qubits are read from the registry. The
composed frame must be the truth's Bell state and the composed weights the truth's: exactly when
the stored halves only dephase, within a bound when they also relax (T1). The assembler must
find the same chains whatever order the reports come in.
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import pytest

from qnode.daemon.klink.chain import ChainAssembler, HopReport, compose, compose_frame
from qnode.daemon.quantum.bell_diagonal import Bell, BellDiagonal, age_halves
from qnode.drivers.qdevice import QDevice
from qnode.hal_sim.twins.pair_registry import PairRegistry
from qnode.hal_sim.twins.qdevice import ManualClock, QDeviceConfig, QDeviceTwin

NAMES = ("phi+", "phi-", "psi+", "psi-")


@contextmanager
def chain_devices(hops: int, config: QDeviceConfig, seed: int
                  ) -> Iterator[tuple[PairRegistry, ManualClock, list[QDeviceTwin],
                                      list[QDevice]]]:
    """Twins n_0 … n_hops sharing one registry and clock, each behind its own driver."""
    registry, clock = PairRegistry(seed=seed), ManualClock()
    twins = [QDeviceTwin(config, name=f"n{k}", registry=registry, clock=clock, seed=seed + k + 1)
             for k in range(hops + 1)]
    with ExitStack() as stack:
        drivers = []
        for t in twins:
            server = stack.enter_context(t.server())
            drivers.append(QDevice(server.address, timeout_s=2.0))
            stack.callback(drivers[-1].close)
        yield registry, clock, twins, drivers


def _link_state(rng: random.Random, announced: int) -> BellDiagonal:
    """A random Bell-diagonal pair of fidelity 0.85–0.97 to ``announced`` (absolute weights)."""
    f = rng.uniform(0.85, 0.97)
    rest = [rng.random() + 0.05 for _ in range(3)]
    rel = [f] + [(1 - f) * x / sum(rest) for x in rest]
    return BellDiagonal(tuple(rel)).relabel(Bell(announced))


def run_chains(hops: int, runs: int, *, t1_ns: float, t2_ns: float, gate: float, seed: int
               ) -> Iterator[tuple[list[HopReport], BellDiagonal, np.ndarray]]:
    """``runs`` end-to-end pairs over ``hops`` links, one after the other on the same devices:
    for each, the repeaters' reports (in the order the measurements ran), the composed weights
    with the ends' halves decayed up to the reading, and the truth's weights then."""
    rng = random.Random(seed)
    config = QDeviceConfig(n_qubits=2, t1_ns=t1_ns, t2_ns=t2_ns, gate_fidelity_2q=gate)
    links = [f"l{k}" for k in range(hops)]
    with chain_devices(hops, config, seed) as (registry, clock, twins, drivers):
        qubit: dict[tuple[int, int], int] = {}       # (node, link) -> qubit
        for k in range(hops + 1):
            for link in (k - 1, k):
                if 0 <= link < hops:
                    qubit[(k, link)] = drivers[k].alloc()
        for run in range(runs):
            seq = [1000 * run + link for link in range(hops)]
            bells = [rng.randrange(4) for _ in range(hops)]
            states = [_link_state(rng, b) for b in bells]
            for link in range(hops):
                registry.herald(links[link], seq[link], states[link].coefficients,
                                NAMES[bells[link]])
            bound_at: dict[tuple[int, int], int] = {}    # (node, link) -> ns
            events = list(qubit)
            rng.shuffle(events)
            for node, link in events:                    # binds at random moments
                clock.advance(rng.randrange(0, 100_000))
                drivers[node].entangle(qubit[(node, link)], links[link], seq[link])
                bound_at[(node, link)] = clock()
            reports = []
            for k in rng.sample(range(1, hops), hops - 1):   # measurements in a random order
                clock.advance(rng.randrange(0, 100_000))
                now = clock()
                outcome = drivers[k].bell_measurement(qubit[(k, k - 1)], qubit[(k, k)])
                reports.append(HopReport(
                    hop=k, left=(links[k - 1], seq[k - 1]), right=(links[k], seq[k]),
                    outcome=Bell(NAMES.index(outcome)), left_bell=Bell(bells[k - 1]),
                    right_bell=Bell(bells[k]), left_state=states[k - 1], right_state=states[k],
                    left_wait_s=(now - bound_at[(k, k - 1)]) * 1e-9,
                    right_wait_s=(now - bound_at[(k, k)]) * 1e-9,
                    left_age_s=(now - bound_at[(k - 1, k - 1)]) * 1e-9,
                    right_age_s=(now - bound_at[(k + 1, k)]) * 1e-9,
                    t1_s=t1_ns * 1e-9, t2_s=t2_ns * 1e-9,
                    gate_fidelity=gate, meas_fidelity=1.0, time=now * 1e-9))
            clock.advance(rng.randrange(0, 100_000))
            now = clock()
            waits = ((now - bound_at[(0, 0)]) * 1e-9, (now - bound_at[(hops, hops - 1)]) * 1e-9)
            partner, truth = registry.device_pair_truth("n0", qubit[(0, 0)])
            assert partner == twins[hops].key(qubit[(hops, hops - 1)])
            state = age_halves(compose(sorted(reports, key=lambda r: r.hop)), waits[0],
                               waits[1], t1_s=t1_ns * 1e-9, t2_s=t2_ns * 1e-9)
            yield reports, state, np.asarray(truth, dtype=float)


@pytest.mark.parametrize("hops", [2, 3, 5])
def test_frame_and_weights_are_the_truths_when_the_halves_dephase(hops):
    """T2 only: every storage is a Pauli channel, so the composition is exact. (With the inner
    links' Bell states left out of the frame, this test fails with 2 and 4 repeaters.)"""
    for reports, state, truth in run_chains(hops, 24, t1_ns=float("inf"), t2_ns=400_000.0,
                                            gate=0.995, seed=hops):
        frame = compose_frame(sorted(reports, key=lambda r: r.hop))
        assert int(np.argmax(truth)) == int(frame), (truth, frame)
        assert np.allclose(state.as_array(), truth, atol=1e-9), (state, truth)


@pytest.mark.parametrize(("hops", "bound"), [(2, 0.0015), (3, 0.004), (5, 0.007)])
def test_weights_are_close_to_the_truth_when_the_halves_also_relax(hops, bound):
    """T1 = 10 ms, T2 = 5 ms, halves stored up to ~0.5 ms: the composition leaves out the
    off-Bell-diagonal part that relaxation gives a stored half. Measured on these draws: at
    most 0.0008, 0.0026 and 0.0048 off the truth with 1, 2 and 4 repeaters; the bound is about
    1.5 times that."""
    worst = 0.0
    for reports, state, truth in run_chains(hops, 12, t1_ns=10e6, t2_ns=5e6, gate=1.0,
                                            seed=70 + hops):
        frame = compose_frame(sorted(reports, key=lambda r: r.hop))
        assert int(np.argmax(truth)) == int(frame)
        worst = max(worst, float(np.max(np.abs(state.as_array() - truth))))
    assert worst < bound, worst


def _reports_of(pairs: int, hops: int, rng: random.Random) -> list[list[HopReport]]:
    """``pairs`` chains' worth of reports with distinct sequence numbers per link."""
    out = []
    seqs = {k: rng.sample(range(10_000), pairs) for k in range(hops)}
    werner = BellDiagonal.werner(0.9)
    for p in range(pairs):
        out.append([HopReport(k, (f"l{k - 1}", seqs[k - 1][p]), (f"l{k}", seqs[k][p]),
                              Bell(rng.randrange(4)), Bell(0), Bell(0), werner, werner, 0.0,
                              0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, float(p))
                    for k in range(1, hops)])
    return out


@pytest.mark.parametrize("hops", [2, 3, 5])
def test_assembler_finds_every_chain_whatever_the_order(hops):
    rng = random.Random(hops)
    chains = _reports_of(20, hops, rng)
    links = [f"l{k}" for k in range(hops)]
    for _trial in range(5):
        ends = ChainAssembler(links), ChainAssembler(links)
        found: tuple[dict[int, tuple[HopReport, ...]], ...] = ({}, {})
        for end, got in zip(ends, found, strict=True):
            arrivals = [r for c in chains for r in c]
            rng.shuffle(arrivals)
            for r in arrivals:
                chain = end.add(r)
                if chain is not None:
                    assert chain.pair_id not in got
                    got[chain.pair_id] = chain.reports
            assert len(end) == 0
        assert found[0] == found[1]
        assert {c[0].left[1] for c in chains} == set(found[0])
        for c in chains:
            assert found[0][c[0].left[1]] == tuple(c)


def test_assembler_refuses_what_is_not_of_its_path_and_stays_bounded():
    links = ["l0", "l1", "l2"]
    asm = ChainAssembler(links, max_reports=8)
    werner = BellDiagonal.werner(0.9)

    def report(hop: int, left: tuple[str, int], right: tuple[str, int], t: float = 0.0):
        return HopReport(hop, left, right, Bell(0), Bell(0), Bell(0), werner, werner, 0.0, 0.0,
                         0.0, 0.0, 0.0, 0.0, 1.0, 1.0, t)

    with pytest.raises(ValueError, match="hop 3"):
        asm.add(report(3, ("l2", 1), ("l3", 1)))
    with pytest.raises(ValueError, match="joins links"):
        asm.add(report(1, ("l1", 1), ("l2", 1)))
    assert asm.add(report(1, ("l0", 5), ("l1", 6))) is None
    with pytest.raises(ValueError, match="already here"):
        asm.add(report(1, ("l0", 5), ("l1", 7)))
    assert asm.pending(("l0", 5)) and asm.pending(("l1", 6))
    for s, t in zip(range(100, 120), itertools.count(1.0), strict=False):
        asm.add(report(2, ("l1", s), ("l2", s), t))
    assert len(asm) == 8 and asm.evicted == 13
    assert asm.expire(before=15.0) == 2 and len(asm) == 6
    assert asm.add(report(1, ("l0", 1), ("l1", 119))).pair_id == 1
