"""Key post-processing end to end, in one process: blocks of sifted bits through error
correction, verification and privacy amplification at both ends, keys compared bit for bit.

Each block is drawn as an M link gives it: bases Z/X at random (50:50), the leader's bits at
random, the follower's differing with probability Q in each basis (a binary symmetric channel).
Leader and follower run :mod:`qnode.daemon.qkd.block` in turn; the messages go through JSON as
they would over the bus. Per QBER it prints, over ``--total-bits`` sifted bits:

* keys identical at both ends (must be every block that gave a key), aborts by reason;
* f_EC per block (leak_EC / (n·h(Q_measured))), mean ± sd, against the goal ≤ 1.10;
* the secret fraction ℓ/n against the finite-key bound at f = 1 and the asymptotic 1 − 2h(Q);
* CPU seconds per end (``time.process_time``) and secret Mbit/s per core of the busier end
  (goal ≥ 1 Mbit/s at 3 %), and as a baseline measured in the same run the CPU time numpy
  takes to draw the blocks, so that a loaded machine shows. A first block, not counted, builds
  the codes and decoders as a daemon does once (its CPU time is printed apart).

    python benchmarks/qkd_postprocessing.py [--qber 0.01 0.03 0.05 0.08] [--total-bits 1e7]
        [--block-bits 1048576] [--start-efficiency 1.08] [--step-efficiency 0.015]
        [--kernel auto] [--compare-kernel avx2]

``--compare-kernel`` runs every block a second time, right after, with the decoders of another
kernel, and prints the follower's CPU time against the first: a ratio that holds on a shared
machine whose speed varies (its absolute figures may vary by ±30 % from run to run).

``--total-bits 1e8`` at 3 % is the long identity check (about 100 blocks of 2²⁰ bits).
Prints figures; exits 1 only if two ends' keys differ.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from qnode.daemon.qkd import reconcile
from qnode.daemon.qkd.block import BlockFollower, BlockLeader, BlockResult, KeyParams, SiftedBlock
from qnode.daemon.qkd.finite_key import asymptotic_fraction, binary_entropy
from qnode.native.ldpc import supported_kernels

T = TypeVar("T")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.keys import wire  # noqa: E402


def _draw(rng: np.random.Generator, n: int, q: float) -> tuple[SiftedBlock, SiftedBlock]:
    bases = rng.integers(0, 2, n, dtype=np.uint8)
    a = rng.integers(0, 2, n, dtype=np.uint8)
    b = a ^ (rng.random(n) < q).astype(np.uint8)
    block_id = uuid.UUID(bytes=rng.bytes(16), version=4)
    return SiftedBlock(block_id, bases, a), SiftedBlock(block_id, bases.copy(), b)


def _one_block(lead_block: SiftedBlock, follow_block: SiftedBlock, params: KeyParams, q: float
               ) -> tuple[float, float, int, BlockResult | None, BlockResult | None]:
    """Both ends through one block: (leader CPU s, follower CPU s, reveal rounds, the leader's
    result, the follower's; None where it ended before)."""
    t0 = time.process_time()
    leader = BlockLeader(lead_block, params, q)
    offer, early = leader.offer()
    lead_s = time.process_time() - t0
    if offer is None:
        return lead_s, 0.0, 0, early, None
    follower = BlockFollower(follow_block, params)
    t0 = time.process_time()
    reply, _ = follower.on_offer(wire(offer))
    follow_s = time.process_time() - t0
    n_rounds = 0
    while True:
        t0 = time.process_time()
        kind, body, lead_result = leader.on_reply(wire(reply))
        lead_s += time.process_time() - t0
        if kind == "finish":
            break
        n_rounds += 1
        t0 = time.process_time()
        reply, _ = follower.on_reveal(wire(body))
        follow_s += time.process_time() - t0
    t0 = time.process_time()
    follow_result = follower.finish(wire(body))
    follow_s += time.process_time() - t0
    return lead_s, follow_s, n_rounds, lead_result, follow_result


def run(q: float, total_bits: int, block_bits: int, seed: int, params: KeyParams,
        compare: str | None = None) -> bool:
    rng = np.random.default_rng(seed)
    blocks = max(1, math.ceil(total_bits / block_bits))
    reasons: Counter[str] = Counter()
    f_ec, fractions, bounds_f1, rounds = [], [], [], []
    lead_s = follow_s = draw_s = 0.0
    sifted = secret = 0
    identical = True
    # a daemon builds its codes and decoders once (cached); a first block, not counted, does it
    warm_blocks = _draw(np.random.default_rng(seed + 10_000), block_bits, q)
    warm = _one_block(*warm_blocks, params, q)
    compare_s = 0.0
    if compare:
        _with_kernel(compare, _one_block, *warm_blocks, params, q)
    for i in range(blocks):
        t0 = time.process_time()
        lead_block, follow_block = _draw(rng, block_bits, q)
        draw_s += time.process_time() - t0
        sifted += block_bits
        dl, df, n_rounds, lead_result, follow_result = _one_block(lead_block, follow_block,
                                                                  params, q)
        lead_s += dl
        follow_s += df
        if compare:  # the same block again with the other kernel, right after: same load
            compare_s += _with_kernel(compare, _one_block, lead_block, follow_block, params,
                                      q)[1]
        if follow_result is None:
            reasons[lead_result.reason if lead_result and lead_result.reason else "?"] += 1
            continue
        rounds.append(n_rounds)
        assert lead_result is not None
        if lead_result.reason is not None:
            reasons[lead_result.reason] += 1
            continue
        same = np.array_equal(lead_result.key, follow_result.key)
        identical &= same
        reasons["key" if same else "KEYS DIFFER"] += 1
        secret += lead_result.length
        f_ec.append(lead_result.f_ec)
        fractions.append(lead_result.length / block_bits)
        q_meas = (lead_result.qber_z * lead_result.n_z
                  + lead_result.qber_x * lead_result.n_x) / block_bits
        h = binary_entropy(q_meas)
        bounds_f1.append(lead_result.length / block_bits + (lead_result.leak_ec_bits
                                                            - block_bits * h) / block_bits)
        print(f"  block {i + 1}/{blocks}: {reasons.most_common()}", end="\r", flush=True)
    busier = max(lead_s, follow_s)
    f = np.array(f_ec)
    print(f"Q {q:.3f}: {blocks} blocks of {block_bits} bits ({sifted:.3g} sifted); "
          f"{dict(reasons)}; reveal rounds per block {np.mean(rounds) if rounds else 0:.1f}; "
          f"keys identical in every block that gave one: {identical}")
    if f.size:
        print(f"  f_EC {f.mean():.4f} ± {f.std():.4f} (goal <= 1.10 for 2-5 %); secret fraction "
              f"{np.mean(fractions):.4f}, at f = 1 {np.mean(bounds_f1):.4f}, asymptotic "
              f"1 - 2h(Q) {asymptotic_fraction(q, q):.4f}")
    print(f"  CPU s: leader {lead_s:.2f}, follower {follow_s:.2f}, drawing the blocks "
          f"{draw_s:.2f} (baseline); the first block, not counted (builds the codes and "
          f"decoders): leader {warm[0]:.2f}, follower {warm[1]:.2f}")
    print(f"  secret {secret / 1e6:.2f} Mbit, "
          f"{secret / busier / 1e6 if busier else 0:.2f} Mbit/s per core of the busier end "
          f"(goal >= 1 at 3 %); sifted {sifted / busier / 1e6 if busier else 0:.2f} Mbit/s")
    if compare and follow_s:
        print(f"  follower CPU s with the {compare} kernel on the same blocks, each right after: "
              f"{compare_s:.2f} ({compare_s / follow_s:.2f} × the {reconcile.DECODER_KERNEL} "
              f"kernel's)")
    return identical


def _with_kernel(kernel: str, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) with the decoders of ``kernel``."""
    before, reconcile.DECODER_KERNEL = reconcile.DECODER_KERNEL, kernel
    try:
        return fn(*args)
    finally:
        reconcile.DECODER_KERNEL = before


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qber", type=float, nargs="+", default=[0.01, 0.03, 0.05, 0.08])
    ap.add_argument("--total-bits", type=float, default=1e7)
    ap.add_argument("--block-bits", type=int, default=1 << 20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start-efficiency", type=float, default=KeyParams.ec_start_efficiency,
                    help="f_EC the first decoding aims at (KeyParams.ec_start_efficiency)")
    ap.add_argument("--step-efficiency", type=float, default=KeyParams.ec_step_efficiency,
                    help="share of n·h(Q) each blind round reveals")
    ap.add_argument("--kernel", default="auto", choices=supported_kernels(),
                    help="the C decoder's kernel")
    ap.add_argument("--compare-kernel", choices=supported_kernels(), default=None,
                    help="also run every block with this kernel and print the CPU ratio")
    args = ap.parse_args()
    reconcile.DECODER_KERNEL = args.kernel
    params = KeyParams(ec_start_efficiency=args.start_efficiency,
                       ec_step_efficiency=args.step_efficiency)
    print(f"blind rounds from f = {params.ec_start_efficiency} in steps of "
          f"{params.ec_step_efficiency:.1%} of n·h(Q)")
    ok = True
    for q in args.qber:
        ok &= run(q, int(args.total_bits), args.block_bits, args.seed, params,
                  args.compare_kernel)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
