"""LDPC reconciliation (qnode.daemon.qkd.reconcile): efficiency, frame errors, decoder speed.

Blocks of sifted bits through a binary symmetric channel at each QBER Q (seeded numpy), the
plan chosen from the true Q as the estimate. Two modes: ``one-way`` (one syndrome, the plan's
default efficiency target) and ``blind`` (start at --blind-f, reveal punctured bits in steps of
--blind-step·h(Q) per frame until decoding succeeds; Martinez-Mateo et al. 2012). For each:
f_EC = leak / (n·h(Q_block)) mean ± sd over the blocks that decoded, the frame error rate (a
block not corrected by any round; for blind, after all rounds), wrong words (converged but not
equal to Alice's: should be 0), rounds per block, and decoder throughput = sifted bits / Bob's
decoding time summed over rounds (one core; the decoder is qnode.native.LdpcDecoder, layered
sum-product, or the ldpc package's BpDecoder when the C core is not built: the header names it;
benchmarks/ldpc_decoder.py compares the two). Baseline measured in the same run: the Shannon
limit line f = 1, and the time of one syndrome computation (Alice's side).

    python benchmarks/qkd_reconcile.py [--blocks 20] [--frame 32768] [--qbers 0.01,0.03,0.05,0.08]

Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from qnode.daemon.qkd import reconcile as rc
from qnode.daemon.qkd.ldpc_codes import parity_check


def run(q: float, n: int, frame: int, blocks: int, blind: bool, blind_f: float,
        blind_step: float, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    if blind:
        plan = rc.choose_plan(q, n, frame=frame, efficiency=blind_f, step_efficiency=blind_step)
    else:
        plan = rc.choose_plan(q, n, frame=frame)
    effs, rounds_used, dec_time, syn_time = [], [], 0.0, 0.0
    fail = wrong = 0
    for _ in range(blocks):
        xa = rng.integers(0, 2, n, dtype=np.uint8)
        err = (rng.random(n) < q).astype(np.uint8)
        xb = xa ^ err
        pad = rc.draw_padding(plan, rng)
        t0 = time.perf_counter()
        s = rc.syndrome(plan, xa, pad)
        syn_time += time.perf_counter() - t0
        out = None
        r = 0
        while True:
            rev = rc.reveal(plan, pad, r) if r else None
            t0 = time.perf_counter()
            out = rc.correct(plan, xb, s, q, rev)
            dec_time += time.perf_counter() - t0
            if out is not None or r >= plan.max_rounds():
                break
            r += 1
        if out is None:
            fail += 1
            continue
        if not np.array_equal(out, xa):
            wrong += 1
        effs.append(rc.efficiency(plan.leak_bits(r), n, float(err.mean())))
        rounds_used.append(r + 1)
    return {"rate": 1 - plan.code().m / plan.frame, "family": plan.family,
            "f": statistics.fmean(effs) if effs else float("nan"),
            "sd": statistics.pstdev(effs) if len(effs) > 1 else 0.0,
            "fer": fail / blocks, "wrong": wrong,
            "rounds": statistics.fmean(rounds_used) if rounds_used else float("nan"),
            "mbps": blocks * n / dec_time / 1e6, "syn_mbps": blocks * n / syn_time / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--frame", type=int, default=rc.DEFAULT_FRAME)
    ap.add_argument("--qbers", default="0.01,0.03,0.05,0.08")
    ap.add_argument("--modes", default="one-way,blind")
    ap.add_argument("--blind-f", type=float, default=1.06)
    ap.add_argument("--blind-step", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    n = int(rc.FILL * args.frame)
    t0 = time.perf_counter()
    for fam in range(4):
        parity_check(fam, args.frame, 1)
    print(f"code construction: {(time.perf_counter() - t0) / 4:.2f} s per code of "
          f"{args.frame} bits (cached afterwards)")
    decoder = type(rc._decoder(0, args.frame, 1)).__name__  # noqa: SLF001 (which one runs)
    print(f"block n = {n} sifted bits in one frame of {args.frame}; {args.blocks} blocks per "
          f"line; decoder {decoder}, max {rc.MAX_ITER} iterations; Shannon limit f = 1")
    print(f"{'mode':8} {'Q':>6} {'h(Q)':>6} {'rate':>6} {'f_EC':>14} {'FER':>6} {'wrong':>5} "
          f"{'rounds':>6} {'dec Mbit/s':>10} {'syn Mbit/s':>10}")
    for mode in args.modes.split(","):
        for q in (float(x) for x in args.qbers.split(",")):
            r = run(q, n, args.frame, args.blocks, mode == "blind", args.blind_f,
                    args.blind_step, args.seed)
            print(f"{mode:8} {q:6.3f} {rc._h(q):6.4f} {r['rate']:6.3f} "
                  f"{r['f']:7.3f} ± {r['sd']:.3f} {r['fer']:6.2f} {r['wrong']:5d} "
                  f"{r['rounds']:6.2f} {r['mbps']:10.3f} {r['syn_mbps']:10.1f}", flush=True)


if __name__ == "__main__":
    main()
