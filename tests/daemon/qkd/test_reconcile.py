"""LDPC reconciliation: correction over a binary symmetric channel, efficiency, failure,
determinism of the codes, input validation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from qnode.daemon.qkd import ldpc_codes, reconcile as rc


def _pair(rng: np.random.Generator, n: int, q: float) -> tuple[np.ndarray, np.ndarray, float]:
    xa = rng.integers(0, 2, n, dtype=np.uint8)
    err = (rng.random(n) < q).astype(np.uint8)
    return xa, xa ^ err, float(err.mean())


def _blind(plan: rc.Plan, xa: np.ndarray, xb: np.ndarray, q: float,
           rng: np.random.Generator) -> tuple[np.ndarray | None, int]:
    """Alice and Bob in lock step: syndrome, then reveal rounds until Bob decodes."""
    pad = rc.draw_padding(plan, rng)
    s = rc.syndrome(plan, xa, pad)
    for r in range(plan.max_rounds() + 1):
        out = rc.correct(plan, xb, s, q, rc.reveal(plan, pad, r) if r else None)
        if out is not None:
            return out, r
    return None, plan.max_rounds()


@pytest.mark.parametrize(("q", "f_bound"), [(0.01, 1.7), (0.03, 1.35), (0.05, 1.3), (0.08, 1.3)])
def test_blind_rounds_give_identical_keys(q: float, f_bound: float) -> None:
    """f_EC per block under a stated bound."""
    rng = np.random.default_rng(int(q * 1000))
    # 2^14-bit frames; at 1 % a 2^15 frame (the 1 % code's range is too narrow at 2^14)
    frame = 1 << 15 if q < 0.02 else 1 << 14
    n = int(rc.FILL * frame)
    start = rc.target_efficiency(q, frame) - 0.1
    plan = rc.choose_plan(q, n, frame=frame, efficiency=start, step_efficiency=0.05)
    for _ in range(3):
        xa, xb, q_true = _pair(rng, n, q)
        out, rounds = _blind(plan, xa, xb, q, rng)
        assert out is not None
        assert np.array_equal(out, xa)
        assert rc.efficiency(plan.leak_bits(rounds), n, q_true) <= f_bound


def test_every_qber_and_length_gets_a_valid_plan() -> None:
    """Over the whole QBER range a chunk's plan can be asked for (re-plans escalate the QBER up
    to QBER_MAX), with and without blind rounds, choose_plan returns a plan that validates
    (a plan with nothing punctured once had step 1 > punctured 0 and raised in the leader)."""
    for n in (7_000, 26_215):
        for q in np.linspace(0.0, 0.2, 41):
            for step in (0.0, 0.015, 0.05):
                plan = rc.choose_plan(float(q), n, step_efficiency=step)
                assert 0 <= plan.step <= plan.punctured
                assert plan.leak_bits(plan.max_rounds()) >= plan.leak_bits(0)


def test_one_way_large_block_over_several_frames() -> None:
    rng = np.random.default_rng(5)
    n = 100_000
    plan = rc.choose_plan(0.03, n, frame=1 << 15, efficiency=1.25)
    assert plan.frames > 1 and sum(plan.key_lengths()) == n
    xa, xb, q_true = _pair(rng, n, 0.03)
    s = rc.syndrome(plan, xa)
    assert s.size == plan.syndrome_bits() and s.dtype == np.uint8
    out = rc.correct(plan, xb, s, 0.03)
    assert out is not None and np.array_equal(out, xa)
    assert rc.efficiency(plan.leak_bits(), n, q_true) < 1.3


def test_efficiency_at_three_percent() -> None:
    """Blind reconciliation in 2^17-bit frames from the key blocks' start (f = 1.08, steps of
    1.5 % of n·h(Q)): measured f_EC 1.08–1.11 per frame (the goal is 1.10); asserted mean
    ≤ 1.12 over these frames."""
    rng = np.random.default_rng(33)
    n = int(rc.FILL * (1 << 17))
    plan = rc.choose_plan(0.03, n, frame=1 << 17, efficiency=1.08, step_efficiency=0.015)
    effs, wrong = [], 0
    for _ in range(3):
        xa, xb, q_true = _pair(rng, n, 0.03)
        out, rounds = _blind(plan, xa, xb, 0.03, rng)
        assert out is not None
        wrong += int(not np.array_equal(out, xa))
        effs.append(rc.efficiency(plan.leak_bits(rounds), n, q_true))
    assert wrong == 0
    assert float(np.mean(effs)) <= 1.12, effs


def test_failure_is_none_not_a_wrong_key() -> None:
    """A block with far more errors than planned for: None, not a wrong key (the code is the
    one test_bad_inputs_raise_value_error uses, so it is built once)."""
    rng = np.random.default_rng(11)
    n = 7_000
    plan = rc.choose_plan(0.03, n, frame=1 << 13)
    for _ in range(3):
        xa, xb, _ = _pair(rng, n, 0.11)
        assert rc.correct(plan, xb, rc.syndrome(plan, xa), 0.03) is None


def test_both_ends_build_the_same_code() -> None:
    plan = rc.choose_plan(0.04, 7_000, frame=1 << 13, seed=7)
    wire = json.loads(json.dumps(plan.to_dict()))
    assert rc.Plan.from_dict(wire) == plan
    a = plan.code()
    # the other end's build, from scratch (not the cache; clearing it would cost later tests
    # their codes)
    other_end = rc.Plan.from_dict(wire)
    b = ldpc_codes.parity_check.__wrapped__(other_end.family, other_end.frame, other_end.seed)
    assert a is not b
    assert (a.h != b.h).nnz == 0 and np.array_equal(a.puncture, b.puncture)
    other = ldpc_codes.parity_check(plan.family, plan.frame, 8)
    assert (a.h != other.h).nnz > 0
    # the matrix has the designed rate and no column of weight < 2 (a 2^13 frame keeps some
    # 4-cycles: its degree-20 columns are too dense to remove them all by swaps)
    assert abs(a.m / a.n - (1 - ldpc_codes.FAMILY[plan.family].design_rate())) < 1e-3
    assert np.diff(a.h.tocsc().indptr).min() >= 2


def test_reconciler_protocol_round_trip() -> None:
    rng = np.random.default_rng(3)
    rec = rc.LdpcReconciler()
    xa, xb, _ = _pair(rng, 30_000, 0.05)
    plan = json.loads(json.dumps(rec.plan(0.05, 30_000)))
    out = rec.correct(plan, xb, rec.syndrome(plan, xa), 0.05)
    assert out is not None and np.array_equal(out, xa)
    assert rec.leak_bits(plan) == rc.Plan.from_dict(plan).leak_bits() > 0


def test_bad_inputs_raise_value_error() -> None:
    plan = rc.choose_plan(0.03, 7_000, frame=1 << 13)
    bits = np.zeros(7_000, dtype=np.uint8)
    s = rc.syndrome(plan, bits)
    with pytest.raises(ValueError, match="7000 bits"):
        rc.syndrome(plan, bits[:-1])
    with pytest.raises(ValueError, match="only 0 and 1"):
        rc.syndrome(plan, bits + 2)
    with pytest.raises(ValueError, match="integer or bool"):
        rc.syndrome(plan, bits.astype(float))
    with pytest.raises(ValueError, match="1-D"):
        rc.correct(plan, bits.reshape(70, 100), s, 0.03)
    with pytest.raises(ValueError, match="syndrome must hold"):
        rc.correct(plan, bits, s[:-3], 0.03)
    with pytest.raises(ValueError, match="qber_estimate"):
        rc.correct(plan, bits, s, 0.7)
    with pytest.raises(ValueError, match="padding"):
        rc.syndrome(plan, bits, np.zeros((2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="rounds"):
        plan.leak_bits(rounds=1)
    with pytest.raises(ValueError, match="revealed"):
        rc.correct(plan, bits, s, 0.03, np.zeros((1, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="n must be"):
        rc.choose_plan(0.03, 10)
    bad = plan.to_dict() | {"frame": 1000}
    with pytest.raises(ValueError, match="frame"):
        rc.Plan.from_dict(bad)
    with pytest.raises(ValueError, match="version"):
        rc.Plan.from_dict({k: v for k, v in plan.to_dict().items() if k != "v"})
    with pytest.raises(ValueError, match="integer"):
        rc.Plan.from_dict(plan.to_dict() | {"seed": "1"})
