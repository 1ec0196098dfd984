"""Exact ageing of both halves of a pair (daemon/quantum/bell_diagonal.py ``age_halves``, ``age``,
``aged_fidelity``, ``cutoff_for_fidelity``) and its call sites (the link service's OK, the link
memory's estimate, a path pair's estimate), differentially against hal_sim's density matrix:
amplitude damping and dephasing Kraus operators on each half (``DensityMatrix.decohere``), then
⟨B_k|ρ|B_k⟩ (``bell_weights``), for every announced Bell state.

The per-qubit Pauli twirl, which these replaced, misses the joint decay of both halves towards
|00⟩: with T1 5 s / T2 2 s a Werner F = 0.9 Ψ+ pair at 1 s was reported 0.5547 against the
density matrix's 0.5464 (:func:`test_the_issue_figure_old_new_and_truth`).
"""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest

from qnode.daemon.klink.memory import Bound, LinkMemory
from qnode.daemon.klink.service import LinkService
from qnode.daemon.klink.swapping import PathEnd, PathPair, decay
from qnode.daemon.linklayer import Ok
from qnode.daemon.quantum import bell_diagonal as bd
from qnode.daemon.quantum.bell_diagonal import BELL_NAMES, BellDiagonal, PauliChannel
from qnode.hal_sim.physics.density_matrix import DensityMatrix, werner_weights
from qnode.hal_sim.twins.pair_registry import PairRegistry
from qnode.hal_sim.twins.qdevice import ManualClock, QDeviceConfig, QDeviceTwin

TOL = 1e-9
WAITS_S = (0.0, 0.1, 1.0, 2.0, 10.0)
#: (T1, T2) in s: the bench's memories, T2 = 2·T1 (no pure dephasing), fast dephasing, and
#: T1 switched off (dephasing only).
MEMORIES = ((5.0, 2.0), (1.0, 2.0), (0.3, 0.05), (math.inf, 3.0))
#: Absolute Bell weights of a pair announced as Φ+ (relabelled to the others): a Werner state,
#: a non-Werner one (mostly one kind of error) and a pure one.
RELATIVE_STATES = ((0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3), (0.8, 0.12, 0.05, 0.03),
                   (1.0, 0.0, 0.0, 0.0))


def truth(weights, wait_a_s: float, wait_b_s: float, mem_a: tuple[float, float],
          mem_b: tuple[float, float] | None = None) -> np.ndarray:
    """hal_sim's Bell weights [Φ+, Φ−, Ψ+, Ψ−] of the pair ``weights`` (absolute) after half 0
    decayed ``wait_a_s`` in memory ``mem_a`` = (T1, T2) and half 1 ``wait_b_s`` in ``mem_b``."""
    dm = DensityMatrix.bell_diagonal(weights)
    dm.decohere(0, wait_a_s, *mem_a)
    dm.decohere(1, wait_b_s, *(mem_b or mem_a))
    return dm.bell_weights()


def announced_states():
    """(announced Bell state, absolute state) for every Bell state and relative state."""
    for name in BELL_NAMES:
        for rel in RELATIVE_STATES:
            yield name, BellDiagonal(rel).relabel(name)


# ------------------------------------------------------------------------------ the formula

@pytest.mark.parametrize(("t1", "t2"), MEMORIES)
def test_equal_waits_match_the_density_matrix(t1, t2):
    for (name, state), t in itertools.product(announced_states(), WAITS_S):
        want = truth(state.coefficients, t, t, (t1, t2))
        got = bd.age(state, t, t1_s=t1, t2_s=t2)
        assert np.abs(got.as_array() - want).max() < TOL, (name, state, t)
        assert bd.age_halves(state, t, t, t1_s=t1, t2_s=t2) == got
        for target in BELL_NAMES:
            assert bd.aged_fidelity(state, t, t1_s=t1, t2_s=t2, target=target) == pytest.approx(
                want[BELL_NAMES.index(target)], abs=TOL)


@pytest.mark.parametrize(("t1", "t2"), MEMORIES)
def test_unequal_waits_match_the_density_matrix(t1, t2):
    for (name, state), (ta, tb) in itertools.product(
            announced_states(), itertools.permutations(WAITS_S, 2)):
        want = truth(state.coefficients, ta, tb, (t1, t2))
        got = bd.age_halves(state, ta, tb, t1_s=t1, t2_s=t2).as_array()
        assert np.abs(got - want).max() < TOL, (name, state, ta, tb)


def test_different_memories_on_the_two_halves_match_the_density_matrix():
    mem_a, mem_b = (5.0, 2.0), (1.0, 0.5)
    for (name, state), ta, tb in itertools.product(announced_states(), WAITS_S, WAITS_S):
        want = truth(state.coefficients, ta, tb, mem_a, mem_b)
        got = bd.age_halves(state, ta, tb, t1_s=(mem_a[0], mem_b[0]), t2_s=(mem_a[1], mem_b[1]))
        assert np.abs(got.as_array() - want).max() < TOL, (name, state, ta, tb)


def test_random_states_and_memories_match_the_density_matrix():
    rng = np.random.default_rng(11)
    for _ in range(300):
        state = BellDiagonal(tuple(rng.dirichlet(np.ones(4))))
        ta, tb = rng.uniform(0.0, 5.0, 2)
        t1a, t1b = rng.uniform(0.2, 10.0, 2)
        t2a, t2b = 2 * t1a * rng.uniform(0.01, 1.0), 2 * t1b * rng.uniform(0.01, 1.0)
        want = truth(state.coefficients, ta, tb, (t1a, t2a), (t1b, t2b))
        got = bd.age_halves(state, ta, tb, t1_s=(t1a, t1b), t2_s=(t2a, t2b)).as_array()
        assert np.abs(got - want).max() < TOL


def test_the_correction_is_the_joint_decay_towards_00_in_the_lab_frame():
    """Exact = per-qubit twirl + a·b/4 on Φ± − a·b/4 on Ψ±, whichever state was announced;
    one half alone is the twirl; both halves at t → ∞ leave |00⟩ (½ Φ+, ½ Φ−)."""
    t1, t2, ta, tb = 5.0, 2.0, 1.0, 2.5
    a, b = 1 - math.exp(-ta / t1), 1 - math.exp(-tb / t1)
    for _, state in announced_states():
        twirl = bd.apply_channels(state, PauliChannel.from_t1_t2(ta, t1, t2),
                                  PauliChannel.from_t1_t2(tb, t1, t2)).as_array()
        exact = bd.age_halves(state, ta, tb, t1_s=t1, t2_s=t2).as_array()
        assert np.allclose(exact - twirl, a * b / 4 * np.array([1, 1, -1, -1]), atol=1e-15,
                           rtol=0)
        assert bd.age(state, ta, t1_s=t1, t2_s=t2, halves=1) == bd.apply_channels(
            state, PauliChannel.from_t1_t2(ta, t1, t2))
        assert bd.age_halves(state, 0.0, tb, t1_s=t1, t2_s=t2).isclose(
            bd.apply_channels(state, None, PauliChannel.from_t1_t2(tb, t1, t2)), 1e-15)
        assert bd.age(state, math.inf, t1_s=t1, t2_s=t2).isclose(
            BellDiagonal((0.5, 0.5, 0.0, 0.0)), 1e-15)
        assert bd.age(state, 0.0, t1_s=t1, t2_s=t2) == state


def test_ageing_validates_its_arguments():
    s = BellDiagonal.werner(0.9)
    with pytest.raises(ValueError, match="t2_s"):
        bd.age_halves(s, 1.0, 1.0, t1_s=(5.0, 1.0), t2_s=(2.0, 2.5))   # T2 > 2·T1 on B
    with pytest.raises(ValueError, match="t1_s"):
        bd.age_halves(s, 1.0, 1.0, t1_s=(5.0, 1.0, 2.0), t2_s=2.0)      # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wait_s"):
        bd.age_halves(s, -1.0, 1.0, t1_s=5.0, t2_s=2.0)
    with pytest.raises(ValueError, match="halves"):
        bd.age(s, 1.0, t1_s=5.0, t2_s=2.0, halves=3)                    # type: ignore[arg-type]


# ------------------------------------------------------------------------------ call sites

def _registry_truth(weights, announced: str, wait_s: float, t1_s: float = 5.0,
                    t2_s: float = 2.0) -> np.ndarray:
    """The simulated QDevices' truth: a pair heralded as ``announced`` with absolute
    ``weights``, bound by alice and bob at t = 0, read ``wait_s`` later (both halves decayed)."""
    clock = ManualClock()
    cfg = QDeviceConfig(n_qubits=1, t1_ns=t1_s * 1e9, t2_ns=t2_s * 1e9)
    reg = PairRegistry(seed=1)
    alice, bob = (QDeviceTwin(cfg, name=n, registry=reg, clock=clock) for n in ("alice", "bob"))
    for twin in (alice, bob):
        twin.handle(b"ALLOC")
    reg.herald("L", 0, weights, announced)
    for twin in (alice, bob):
        assert twin.handle(b"ENT 0 L 0").decode().strip() == announced
    clock.set(int(wait_s * 1e9))
    partner, w = reg.device_pair_truth("alice", 0)
    assert partner == ("bob", 0)
    return w


def _ok(bell_state: str, goodness: float) -> Ok:
    return Ok(1, "L", 0, bell_state, goodness, 0, "bob", "K", 0)


def _service(now_s: float, memory: LinkMemory | None = None) -> SimpleNamespace:
    """What :meth:`LinkService._aged` reads of its service: a pair accepted at t = 0."""
    return SimpleNamespace(memory=memory, t1_s=5.0, t2_s=2.0, hold_s=0.5,
                           ctx=SimpleNamespace(now=lambda: now_s),
                           _accepted_at=lambda seq: 0.0)


def test_the_issue_figure_old_new_and_truth():
    """T1 5 s / T2 2 s, a Werner F = 0.9 pair announced Ψ+, 1 s on both halves: the twirl said
    0.5547, the simulated memories hold 0.5464, and the OK now carries that (6 digits)."""
    state = BellDiagonal.werner(0.9).relabel("psi+")
    assert np.allclose(state.coefficients, werner_weights(0.9, "psi+"), atol=1e-15, rtol=0)
    want = _registry_truth(werner_weights(0.9, "psi+"), "psi+", 1.0)[2]
    assert want == pytest.approx(0.5464357995, abs=1e-10)
    ch = PauliChannel.from_t1_t2(1.0, 5.0, 2.0)
    old = bd.apply_channels(state, ch, ch).fidelity("psi+")
    assert old == pytest.approx(0.5546504345, abs=1e-10)
    assert old - want == pytest.approx((1 - math.exp(-0.2)) ** 2 / 4, abs=1e-12)   # +0.0082
    ok = LinkService._aged(_service(1.0), _ok("psi+", 0.9))             # type: ignore[arg-type]
    assert ok.goodness == round(want, 6) == 0.546436
    # at 2 s the twirl's error was +0.027
    want2 = _registry_truth(werner_weights(0.9, "psi+"), "psi+", 2.0)[2]
    ch2 = PauliChannel.from_t1_t2(2.0, 5.0, 2.0)
    assert bd.apply_channels(state, ch2, ch2).fidelity("psi+") - want2 == pytest.approx(
        0.0272, abs=1e-4)
    assert LinkService._aged(_service(2.0), _ok("psi+", 0.9)).goodness == round(  # type: ignore[arg-type]
        want2, 6)


@pytest.mark.parametrize("announced", BELL_NAMES)
@pytest.mark.parametrize("wait_s", WAITS_S)
def test_the_ok_carries_the_density_matrix_fidelity(announced, wait_s):
    """The link service's OK (no memory model: a Werner state of the stamped goodness, relative
    to the announced state, aged since the herald) against the simulated QDevices."""
    state = BellDiagonal.werner(0.85).relabel(announced)
    want = _registry_truth(state.coefficients, announced, wait_s)
    ok = LinkService._aged(_service(wait_s), _ok(announced, 0.85))       # type: ignore[arg-type]
    assert abs(ok.goodness - want[BELL_NAMES.index(announced)]) <= 5e-7 + 1e-12


def _memory(prior: float = 0.9) -> LinkMemory:
    return LinkMemory("L", None, test_fraction=0.1, readout_error=0.0,  # type: ignore[arg-type]
                      t1_s=5.0, t2_s=2.0, prior_fidelity=prior)


@pytest.mark.parametrize("announced", BELL_NAMES)
@pytest.mark.parametrize("wait_s", WAITS_S)
def test_the_link_memory_estimate_matches_the_density_matrix(announced, wait_s):
    """``LinkMemory.state_of`` (the link's estimate in the pair's frame, decayed since binding)
    on both halves and on one, and the OK the link service builds from it."""
    mem = _memory()
    bound = Bound(0, 0, announced, 10.0, 0)
    state = BellDiagonal.werner(0.9).relabel(announced)
    both = truth(state.coefficients, wait_s, wait_s, (5.0, 2.0))
    one = truth(state.coefficients, wait_s, 0.0, (5.0, 2.0))
    assert np.abs(mem.state_of(bound, 10.0 + wait_s, halves=2).as_array() - both).max() < TOL
    assert np.abs(mem.state_of(bound, 10.0 + wait_s).as_array() - one).max() < TOL
    mem.bound[0] = bound
    ok = LinkService._aged(_service(10.0 + wait_s, mem), _ok(announced, 0.9))  # type: ignore[arg-type]
    assert ok.qubit == 0
    assert abs(ok.goodness - both[BELL_NAMES.index(announced)]) <= 5e-7 + 1e-12


@pytest.mark.parametrize("frame", BELL_NAMES)
def test_a_path_pairs_estimate_matches_the_density_matrix(frame):
    """``PathEnd.estimate``: absolute weights at the BSM, this end's half decayed since it was
    bound and the far end's since *it* was (its age at the BSM plus the time since)."""
    weights = BellDiagonal((0.7, 0.1, 0.15, 0.05)).relabel(frame)
    pair = PathPair(1, 0, 0, frame, weights, own_bound_at=3.0, remote_age_s=0.4, bsm_at=3.5)
    end = SimpleNamespace(mem=SimpleNamespace(t1_s=5.0, t2_s=2.0))
    for now in (3.5, 4.0, 5.0, 13.0):
        want = truth(weights.coefficients, now - 3.0, 0.4 + now - 3.5, (5.0, 2.0))
        got = PathEnd.estimate(end, pair, now)                             # type: ignore[arg-type]
        assert np.abs(got.as_array() - want).max() < TOL, now


def test_decay_in_a_frame_is_exact_and_without_one_the_twirl():
    """``swapping.decay``: a state relative to ``frame`` is aged in the lab's labels; without a
    frame (purification's callers) it keeps the per-half twirl."""
    rel = BellDiagonal((0.8, 0.12, 0.05, 0.03))
    for frame in BELL_NAMES:
        want = truth(rel.relabel(frame).coefficients, 1.5, 0.7, (5.0, 2.0))
        got = decay(rel, (1.5, 0.7), 5.0, 2.0, frame=frame).relabel(frame)
        assert np.abs(got.as_array() - want).max() < TOL, frame
        one = truth(rel.relabel(frame).coefficients, 1.5, 0.0, (5.0, 2.0))
        assert np.abs(decay(rel, (1.5,), 5.0, 2.0, frame=frame).relabel(frame).as_array()
                      - one).max() < TOL
    twirl = bd.apply_channels(rel, PauliChannel.from_t1_t2(1.5, 5.0, 2.0),
                              PauliChannel.from_t1_t2(0.7, 5.0, 2.0))
    assert decay(rel, (1.5, 0.7), 5.0, 2.0).isclose(twirl, 1e-15)
    assert decay(rel, (1.5, 0.7), 0.0, 0.0, frame="psi+") is rel     # no memory model
    with pytest.raises(ValueError, match="waits_s"):
        decay(rel, (1.0, 1.0, 1.0), 5.0, 2.0, frame="phi+")


# ------------------------------------------------------------------------------ cut-offs

def _dm_fidelity(state: BellDiagonal, t: float, t1: float, t2: float, target: str) -> float:
    return float(truth(state.coefficients, t, t, (t1, t2))[BELL_NAMES.index(target)])


def test_fidelity_to_phi_falls_to_a_minimum_and_rises_back_to_a_half():
    """Both halves relax to |00⟩ = (Φ+ + Φ−)/√2: the fidelity to Φ+ is not monotone. The cut-off
    is the first crossing; a minimum above the threshold means no cut-off."""
    s, t1, t2 = BellDiagonal.werner(0.95), 2.0, 1.0
    grid = np.linspace(0.0, 30.0, 3001)
    f_dm = np.array([_dm_fidelity(s, t, t1, t2, "phi+") for t in grid])
    f = np.array([bd.aged_fidelity(s, t, t1_s=t1, t2_s=t2) for t in grid])
    assert np.abs(f - f_dm).max() < TOL
    k = int(np.argmin(f_dm))
    assert 0 < k < len(grid) - 1 and f_dm[k] == pytest.approx(0.3893, abs=1e-4)
    assert f_dm[-1] == pytest.approx(0.5, abs=1e-6)
    # 4F = 1 + 2D·u⁴ + S·u² + (1 − u)², u = e^{−t/T1} (e^{−2t/T2} = u⁴ here), D = S = 14/15
    u = np.linspace(0.0, 1.0, 200001)
    f_low = float(np.min(1 + 2 * (14 / 15) * u**4 + (14 / 15) * u**2 + (1 - u) ** 2)) / 4
    assert min(f) >= f_low - 1e-9 and f_dm[k] == pytest.approx(f_low, abs=1e-6)
    for f_min in (0.9, 0.6, 0.45, 0.39):
        cut = bd.cutoff_for_fidelity(s, f_min, t1_s=t1, t2_s=t2)
        assert bd.aged_fidelity(s, cut, t1_s=t1, t2_s=t2) == pytest.approx(f_min, abs=1e-10)
        assert bd.aged_fidelity(s, cut * (1 + 1e-6), t1_s=t1, t2_s=t2) < f_min
        first = grid[np.argmax(f_dm < f_min)]                  # first grid point below
        assert first - 0.01 <= cut < first
    assert bd.cutoff_for_fidelity(s, f_low - 1e-9, t1_s=t1, t2_s=t2) == math.inf
    assert bd.cutoff_for_fidelity(s, f_low + 1e-6, t1_s=t1, t2_s=t2) < grid[k]
    assert bd.cutoff_for_fidelity(s, 0.96, t1_s=t1, t2_s=t2) == 0.0


@pytest.mark.parametrize("target", BELL_NAMES)
def test_cutoff_for_each_announced_state_matches_the_density_matrix(target):
    """A Ψ± pair falls monotonically to 0 (|00⟩ has no Ψ weight), a Φ± pair to its minimum;
    at the cut-off the density matrix's fidelity is the threshold."""
    s, t1, t2 = BellDiagonal.werner(0.9).relabel(target), 5.0, 2.0
    for f_min in (0.8, 0.6, 0.5):
        cut = bd.cutoff_for_fidelity(s, f_min, t1_s=t1, t2_s=t2, target=target)
        assert 0.0 < cut < math.inf
        assert _dm_fidelity(s, cut, t1, t2, target) == pytest.approx(f_min, abs=TOL)
    lim = _dm_fidelity(s, 200.0, t1, t2, target)
    assert lim == pytest.approx(0.5 if target.startswith("phi") else 0.0, abs=1e-9)
    # the twirl's cut-off for a Ψ pair was later than the truth's: it over-estimated it
    if target.startswith("psi"):
        cut = bd.cutoff_for_fidelity(s, 0.6, t1_s=t1, t2_s=t2, target=target)
        ch = PauliChannel.from_t1_t2(cut, t1, t2)
        assert bd.apply_channels(s, ch, ch).fidelity(target) > 0.6 + 1e-3


def test_cutoff_one_half_and_refusals():
    s = BellDiagonal.werner(0.9).relabel("psi-")
    cut = bd.cutoff_for_fidelity(s, 0.7, t1_s=5.0, t2_s=2.0, halves=1, target="psi-")
    want = truth(s.coefficients, cut, 0.0, (5.0, 2.0))[3]
    assert want == pytest.approx(0.7, abs=TOL)
    assert bd.cutoff_for_fidelity(s, 0.7, t1_s=math.inf, t2_s=math.inf, target="psi-") == math.inf
    with pytest.raises(ValueError, match="monotone"):
        bd.cutoff_for_fidelity(s, 0.5, t1_s=5.0, t2_s=2.0)        # relative to Φ+ it is bad
    with pytest.raises(ValueError, match="halves"):
        bd.cutoff_for_fidelity(s, 0.5, t1_s=5.0, t2_s=2.0, halves=3)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ depolarising

def test_depolarising_parameter_range():
    """p = 1 sends every input to I/2 (half of Φ+ depolarised: the maximally mixed pair);
    p = 4/3 is the last channel (p_I = 0) and scales the Bloch vector by −1/3."""
    assert bd.apply_channels(BellDiagonal.pure(), PauliChannel.depolarizing(1.0)).isclose(
        BellDiagonal.werner(0.25), 1e-15)
    ch = PauliChannel.depolarizing(4 / 3)
    assert ch.probabilities == pytest.approx((0.0, 1 / 3, 1 / 3, 1 / 3), abs=1e-15)
    # Bloch scaling of a Pauli channel along z: 1 − 2(p_X + p_Y)
    assert 1 - 2 * (ch.p_x + ch.p_y) == pytest.approx(-1 / 3, abs=1e-15)
    with pytest.raises(ValueError, match="p"):
        PauliChannel.depolarizing(4 / 3 + 1e-9)
