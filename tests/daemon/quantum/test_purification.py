"""Purification rounds as the nodes run them: the per-end gates (:func:`rotations`), the keep
rule and frame update (:func:`keep_and_frame`) and the estimate (:func:`round_model`) against
an exact density-matrix computation of the same circuit on four qubits, for every pair of
Pauli frames and every twirl, with noisy gates and read-out; nested rounds (the recurrence
schedule's) on two of hal_sim's QDevice twins, thousands of times, against the per-pair model
the leader keeps; and the PURIFY messages."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from qnode.daemon.klink.purification import keep_and_frame, rotations, round_model
from qnode.daemon.klink.swapping import decay
from qnode.daemon.linklayer import TWIRLS, Purify, PurifyResult, message_from_dict
from qnode.daemon.quantum.bell_diagonal import BellDiagonal, bbpssw, dejmps
from qnode.hal_sim.physics.density_matrix import BELL_STATES, CNOT, DensityMatrix, rotation
from qnode.hal_sim.twins.pair_registry import PairRegistry
from qnode.hal_sim.twins.qdevice import ManualClock, QDeviceConfig, QDeviceTwin

A1, B1, A2, B2 = 0, 1, 2, 3      # kept pair (A1, B1), sacrificed pair (A2, B2)


def _exact_round(kept_abs, sac_abs, kept_frame, sac_frame, kept_axes, sac_axes, *, g1, g2, e):
    """(p_keep, kept pair's absolute Bell weights | keep) from the density matrix."""
    dm = DensityMatrix.bell_diagonal(kept_abs).kron(DensityMatrix.bell_diagonal(sac_abs))
    for leader, (qa, qb) in ((True, (A1, A2)), (False, (B1, B2))):
        ops = (rotations(qa, kept_axes, kept_frame, leader=leader)
               + rotations(qb, sac_axes, sac_frame, leader=leader))
        for q, axis, angle in ops:
            dm.apply(rotation(axis, angle), [q])
            dm.depolarize([q], 1 - g1)
        dm.apply(CNOT, [qa, qb])
        dm.depolarize([qa, qb], 1 - g2)
    p_keep = 0.0
    kept = np.zeros(4)
    for ma, mb in itertools.product((0, 1), repeat=2):
        branch = dm.copy()
        p = branch.probabilities(A2, "Z")[ma]
        if p <= 1e-15:
            continue
        branch.project(A2, "Z", ma)
        pb = branch.probabilities(B2, "Z")[mb]
        if pb <= 1e-15:
            continue
        branch.project(B2, "Z", mb)
        weights = branch.bell_weights((A1, B1))
        for ra, rb in itertools.product((0, 1), repeat=2):   # reported outcomes
            w = p * pb * (e if ra != ma else 1 - e) * (e if rb != mb else 1 - e)
            keep, _ = keep_and_frame(kept_frame, sac_frame, ra, rb)
            if keep:
                p_keep += w
                kept += w * weights
    return p_keep, kept / p_keep


@pytest.mark.parametrize("kept_frame, sac_frame", list(itertools.product(BELL_STATES, repeat=2)))
def test_a_round_matches_the_density_matrix_for_every_pair_of_frames(kept_frame, sac_frame):
    rng = np.random.default_rng(BELL_STATES.index(kept_frame) * 4 + BELL_STATES.index(sac_frame))
    g1, g2, e = 0.99, 0.97, 0.02
    for kept_axes, sac_axes in (("X", "X"), ("", ""), ("Y", "Z"), ("XY", "YX"), ("Z", "XY")):
        rel_k = BellDiagonal(tuple(rng.dirichlet([8, 1, 2, 1.5])))
        rel_s = BellDiagonal(tuple(rng.dirichlet([8, 1.5, 1, 2])))
        p, out = round_model(rel_k, rel_s, kept_axes, sac_axes, gate_fidelity_1q=g1,
                             gate_fidelity_2q=g2, readout_error=e)
        p_dm, kept_abs = _exact_round(rel_k.relabel(kept_frame).coefficients,
                                      rel_s.relabel(sac_frame).coefficients, kept_frame,
                                      sac_frame, kept_axes, sac_axes, g1=g1, g2=g2, e=e)
        _, frame = keep_and_frame(kept_frame, sac_frame, 0, 0)   # frame: outcome-free
        assert p == pytest.approx(p_dm, abs=1e-12), (kept_axes, sac_axes)
        assert BellDiagonal(tuple(kept_abs)).relabel(frame).coefficients == pytest.approx(
            out.coefficients, abs=1e-12), (kept_axes, sac_axes)


class _TwinRounds:
    """DEJMPS rounds between two QDevice twins (``a`` leads, ``b`` follows) sharing a registry
    on a manual clock, as the nodes run them: each end's rotations for its pairs' frames, CNOT,
    MEAS Z; and the leader's per-pair model (state relative to the frame, decayed per wait)."""

    def __init__(self, g1: float, g2: float, e: float, link_state: tuple[float, ...], seed: int,
                 t1_s: float = 60.0, t2_s: float = 20.0):
        config = QDeviceConfig(n_qubits=4, t1_ns=t1_s * 1e9, t2_ns=t2_s * 1e9,
                               gate_fidelity_1q=g1, gate_fidelity_2q=g2, readout_error=e)
        self.t1_s, self.t2_s = t1_s, t2_s
        self.registry = PairRegistry(seed=seed)
        self.clock = ManualClock()
        self.a, self.b = (QDeviceTwin(config, name=n, registry=self.registry, clock=self.clock,
                                      seed=seed + i) for i, n in enumerate(("a", "b")))
        for twin in (self.a, self.b):
            for _ in range(config.n_qubits):
                twin.handle(b"ALLOC")
        self.g1, self.g2, self.e = g1, g2, e
        self.link_state = BellDiagonal(link_state)
        self.rng = np.random.default_rng(seed)
        self.seq = 0

    @staticmethod
    def _cmd(twin: QDeviceTwin, line: str) -> str:
        reply = twin.handle(line.encode()).decode().strip()
        assert not reply.startswith("ERR"), (line, reply)
        return reply

    def fresh(self, qubit: int) -> dict:
        """A heralded pair in a random frame, bound to ``qubit`` at both ends."""
        self.seq += 1
        frame = BELL_STATES[self.rng.integers(4)]
        self.registry.herald("l", self.seq, self.link_state.relabel(frame).coefficients, frame)
        for twin in (self.a, self.b):
            self._cmd(twin, f"ENT {qubit} l {self.seq}")
        return {"qubit": qubit, "frame": frame, "state": self.link_state}

    def wait(self, seconds: float, *pairs: dict) -> None:
        self.clock.advance(seconds * 1e9)
        for pair in pairs:
            pair["state"] = decay(pair["state"], (seconds, seconds), self.t1_s, self.t2_s)

    def round(self, kept: dict, sac: dict) -> tuple[bool, float, dict]:
        """(kept?, the model's p_keep, the kept pair)."""
        outcomes = []
        for twin, leader in ((self.a, True), (self.b, False)):
            for q, axis, angle in (rotations(kept["qubit"], "X", kept["frame"], leader=leader)
                                   + rotations(sac["qubit"], "X", sac["frame"], leader=leader)):
                self._cmd(twin, f"ROT {q} {axis} {angle!r}")
            self._cmd(twin, f"CNOT {kept['qubit']} {sac['qubit']}")
            outcomes.append(int(self._cmd(twin, f"MEAS {sac['qubit']} Z")))
        keep, frame = keep_and_frame(kept["frame"], sac["frame"], *outcomes)
        p, out = round_model(kept["state"], sac["state"], "X", "X", gate_fidelity_1q=self.g1,
                             gate_fidelity_2q=self.g2, readout_error=self.e)
        return keep, p, {"qubit": kept["qubit"], "frame": frame, "state": out}

    def true_fidelity(self, pair: dict) -> float:
        _, weights = self.registry.device_pair_truth("a", pair["qubit"])
        return float(weights[BELL_STATES.index(pair["frame"])])


def _nested(sim: _TwinRounds, trials: int) -> tuple[dict, dict]:
    """Recurrence depth 2, ``trials`` times: two level-1 pairs, each from two link pairs, the
    first waiting 0.4 s for the second, then a round of the two. Returns per level the (model,
    true) fidelities of the kept pairs and the (kept?, model p) of every round."""
    levels: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    rounds: dict[int, list[tuple[bool, float]]] = {1: [], 2: []}
    for _ in range(trials):
        level1: list[dict] = []
        for qubits, age in (((0, 1), 0.05), ((1, 2), 0.2)):
            k, s = sim.fresh(qubits[0]), sim.fresh(qubits[1])
            sim.wait(age, k, s, *level1)
            keep, p, out = sim.round(k, s)
            rounds[1].append((keep, p))
            if not keep:
                break
            levels[1].append((out["state"].fidelity(), sim.true_fidelity(out)))
            level1.append(out)
            sim.wait(0.4 if len(level1) == 1 else 0.0, out)
        if len(level1) < 2:
            continue
        sim.wait(0.03, *level1)
        keep, p, out = sim.round(*level1)
        rounds[2].append((keep, p))
        if keep:
            levels[2].append((out["state"].fidelity(), sim.true_fidelity(out)))
    return levels, rounds


#: link pairs of F 0.75 with the error mostly one kind (as from partly distinguishable photons)
_LINK = (0.75, 0.24, 0.005, 0.005)


def test_nested_rounds_on_the_simulator_match_the_per_pair_model_without_misreads():
    """Without read-out error and with pure dephasing (T1 = ∞, where the Pauli model of the
    wait is exact), the leader's per-pair estimate is each kept pair's true fidelity on the
    simulator, at both levels, whatever the frames, ages and gate errors."""
    sim = _TwinRounds(g1=0.995, g2=0.99, e=0.0, link_state=_LINK, seed=5, t1_s=math.inf,
                      t2_s=5.0)
    levels, _ = _nested(sim, 200)
    for level in (1, 2):
        model, truth = np.array(levels[level]).T
        assert model.size > 40 and np.abs(truth - model).max() < 1e-9, level


def test_nested_rounds_on_the_simulator_average_to_the_per_pair_model():
    """The same with 2 % read-out error and T1 60 s, T2 20 s, 1200 times. A pair's estimate is
    the expectation given the outcomes: it counts the chance that a misread passed a bad pair.
    Over all kept pairs it is the simulator's mean truth (within 3σ), and rounds are kept as
    often as the model's p says; the pairs that were not misread (truth ≥ 0.75) are better than
    it, clearly so at this error (which is why the end-to-end test reads out better)."""
    sim = _TwinRounds(g1=0.995, g2=0.99, e=0.02, link_state=_LINK, seed=3)
    levels, rounds = _nested(sim, 1200)
    for level in (1, 2):
        model, truth = np.array(levels[level]).T
        diff = truth - model
        sigma = diff.std(ddof=1) / np.sqrt(diff.size)
        assert abs(diff.mean()) <= 3 * sigma, (level, diff.mean(), sigma, diff.size)
        clean = truth >= 0.75
        assert diff[clean].mean() > 3 * sigma, (level, diff[clean].mean(), sigma)
        kept, p = np.array(rounds[level]).T
        sd = np.sqrt((p * (1 - p)).sum())
        assert abs(kept.sum() - p.sum()) <= 3 * sd, (level, kept.sum(), p.sum())
    # the nesting is worth something: level 2 well above level 1
    assert len(levels[2]) > 250
    assert np.mean(levels[2], axis=0)[1] > np.mean(levels[1], axis=0)[1] + 0.03


def test_the_model_averages_to_dejmps_and_bbpssw():
    """DEJMPS is the X rotation on both pairs; BBPSSW is the average over the six twirls of
    each pair (the output's fidelity and p; the formula re-twirls the output)."""
    k = BellDiagonal((0.8, 0.05, 0.1, 0.05))
    s = BellDiagonal((0.75, 0.1, 0.1, 0.05))
    p, out = round_model(k, s, "X", "X", gate_fidelity_2q=0.98, readout_error=0.01)
    ref = dejmps(k, s, gate_fidelity=0.98, meas_fidelity=0.99)
    assert p == pytest.approx(ref.p_success, abs=1e-12)
    assert out.isclose(ref.state, 1e-12)
    joint_p = joint_f = 0.0
    for ta, tb in itertools.product(TWIRLS, repeat=2):
        p, out = round_model(k, s, ta, tb, gate_fidelity_2q=0.98, readout_error=0.01)
        joint_p += p / 36
        joint_f += p * out.fidelity() / 36
    ref = bbpssw(k, s, gate_fidelity=0.98, meas_fidelity=0.99)
    assert joint_p == pytest.approx(ref.p_success, abs=1e-12)
    assert joint_f / joint_p == pytest.approx(ref.state.fidelity(), abs=1e-12)


def test_the_frame_rule():
    # Φ+ pairs: keep iff equal; a Ψ sacrificed pair flips the expected parity
    assert keep_and_frame("phi+", "phi+", 1, 1) == (True, "phi+")
    assert keep_and_frame("phi+", "phi+", 0, 1)[0] is False
    assert keep_and_frame("phi+", "psi+", 0, 1) == (True, "phi+")
    # the kept pair's Z bit picks up the sacrificed pair's
    assert keep_and_frame("psi+", "phi-", 0, 1) == (True, "psi-")
    # the follower mirrors the angles; flips where the frame anticommutes with the axis
    assert [a for _, _, a in rotations(0, "XYZ", "phi+", leader=False)] == pytest.approx(
        [-np.pi / 2, np.pi / 2, -np.pi / 2])
    assert [a for _, _, a in rotations(0, "XYZ", "psi-", leader=False)] == pytest.approx(
        [np.pi / 2, np.pi / 2, np.pi / 2])
    assert all(a == pytest.approx(np.pi / 2) for _, _, a in rotations(3, "XY", "psi-",
                                                                          leader=True))


def test_purify_messages_round_trip_and_reject_bad_fields():
    m = Purify("a-b", 7, "dejmps", 10, 11, "X", "X", 1, 1.7e9)
    assert message_from_dict(m.to_dict()) == m
    r = PurifyResult("a-b", 7, "-", 1.7e9)
    assert message_from_dict(r.to_dict()) == r
    bad = [dict(m.to_dict(), protocol="dejmp"), dict(m.to_dict(), sacrificed=10),
           dict(m.to_dict(), kept_axes="XX"), dict(m.to_dict(), outcome=2),
           dict(r.to_dict(), outcome="2"), dict(m.to_dict(), round=-1)]
    for d in bad:
        with pytest.raises(ValueError):
            message_from_dict(d)
