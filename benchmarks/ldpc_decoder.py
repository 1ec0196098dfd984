"""LDPC syndrome decoders on the reconciliation codes: the C core's layered sum-product decoder
(qnode.native.LdpcDecoder) against the ``ldpc`` package's product-sum BpDecoder (flooding
schedule, Roffe et al.), on the same frames in the same run.

For each QBER Q: the plan :func:`qnode.daemon.qkd.reconcile.choose_plan` makes for one frame
(default efficiency target, or --efficiency), its first frame's layout (key bits BSC(Q),
punctured bits unknown: p = 0.5, shortened bits p = 1e-12), random error patterns (seeded
numpy). Per decoder: wall time per frame, ns per edge per iteration (time / (edges ·
iterations summed over frames)), sifted Mbit/s per core (key bits per frame / time per frame),
mean iterations, frame error rate (not converged, or converged to a word other than the true
error pattern: counted apart as ``wrong``), and the speed-up per frame against ldpc. By
default every C kernel this CPU runs (scalar, avx2, avx512; ``supported_kernels()``); the
decoders take turns frame by frame, so their ratios hold on a machine whose load varies.

    python benchmarks/ldpc_decoder.py [--frames 20] [--frame 32768] [--qbers 0.01,0.03,0.05,0.08]
                                      [--kernels scalar,avx2,avx512] [--efficiency F]

Prints figures; asserts nothing. Timing is single-threaded wall time (time.perf_counter).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from ldpc import BpDecoder

from qnode.daemon.qkd import reconcile as rc
from qnode.native.ldpc import LdpcDecoder, supported_kernels


def frames_for(q: float, frame: int, count: int, efficiency: float | None, seed: int):
    """(H, channel error probabilities, key bit count, [(true e, syndrome)] × count)."""
    n = int(rc.FILL * frame)
    plan = rc.choose_plan(q, n, frame=frame, efficiency=efficiency)
    code = plan.code()
    punct, key = rc.frame_layout(plan, 0)
    channel = np.full(frame, 1e-12)
    channel[key] = q
    channel[punct] = 0.5
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        e = np.zeros(frame, dtype=np.uint8)
        e[key] = rng.random(key.size) < q
        e[punct] = rng.integers(0, 2, punct.size)
        out.append((e, ((code.h @ e) & 1).astype(np.uint8)))
    return code.h, channel, key.size, out


def measure(decoders: dict[str, Callable[[np.ndarray], tuple[np.ndarray, bool, int]]],
            frames, edges: int, n_key: int) -> dict[str, dict[str, float]]:
    """Each decoder(syndrome) -> (e, converged, iterations) on every frame, the decoders taking
    turns frame by frame (so that a load that comes and goes on a shared machine weighs on
    all of them alike); figures per decoder over the frames."""
    tally = {name: {"t": 0.0, "it": 0, "fail": 0, "wrong": 0} for name in decoders}
    for e, s in frames:
        for name, decode in decoders.items():
            t0 = time.perf_counter()
            d, converged, iterations = decode(s)
            c = tally[name]
            c["t"] += time.perf_counter() - t0
            c["it"] += iterations
            if not converged:
                c["fail"] += 1
            elif not np.array_equal(d, e):
                c["wrong"] += 1
    return {name: {"ms": c["t"] / len(frames) * 1e3,
                   "ns_edge_it": c["t"] / max(c["it"], 1) / edges * 1e9,
                   "mbps": n_key * len(frames) / c["t"] / 1e6,
                   "iters": c["it"] / len(frames),
                   "fer": (c["fail"] + c["wrong"]) / len(frames), "wrong": c["wrong"]}
            for name, c in tally.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--frame", type=int, default=rc.DEFAULT_FRAME)
    ap.add_argument("--qbers", default="0.01,0.03,0.05,0.08")
    ap.add_argument("--kernels", default=",".join(k for k in supported_kernels()
                                                  if k not in ("auto", "exact")),
                    help="C kernels, of: " + ", ".join(supported_kernels()))
    ap.add_argument("--efficiency", type=float, default=None,
                    help="f_EC target of the plan (default: the plan's own)")
    ap.add_argument("--max-iter", type=int, default=rc.MAX_ITER)
    ap.add_argument("--no-ldpc", action="store_true", help="skip the ldpc package's decoder")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    print(f"frame {args.frame} bits, {args.frames} frames per line, max {args.max_iter} "
          f"iterations; ldpc = ldpc.BpDecoder product_sum (flooding); C = "
          f"qnode.native.LdpcDecoder (layered sum-product)")
    print(f"{'Q':>5} {'decoder':>10} {'edges':>7} {'key bits':>8} {'ms/frame':>9} "
          f"{'ns/edge-it':>10} {'Mbit/s':>7} {'iters':>6} {'FER':>5} {'wrong':>5} "
          f"{'speed-up':>8}")
    for q in (float(x) for x in args.qbers.split(",")):
        h, channel, n_key, frames = frames_for(q, args.frame, args.frames, args.efficiency,
                                               args.seed)
        edges = int(h.nnz)
        decoders: dict[str, Callable[[np.ndarray], tuple[np.ndarray, bool, int]]] = {}
        if not args.no_ldpc:
            ref = BpDecoder(h, error_rate=0.05, max_iter=args.max_iter, bp_method="product_sum",
                            schedule="parallel", input_vector_type="syndrome")
            ref.error_channel = channel

            def ldpc_decode(s: np.ndarray, ref: BpDecoder = ref):
                d = ref.decode(s)
                return d, bool(ref.converge), int(ref.iter)

            decoders["ldpc"] = ldpc_decode
        llr = np.log1p(-channel) - np.log(channel)
        for kernel in args.kernels.split(","):
            dec = LdpcDecoder(h, kernel=kernel)
            decoders[f"C {dec.kernel}"] = (
                lambda s, dec=dec, llr=llr: dec.decode_llr(s, llr, args.max_iter))
        rows = list(measure(decoders, frames, edges, n_key).items())
        base = rows[0][1]["ms"] if not args.no_ldpc else float("nan")
        for name, r in rows:
            print(f"{q:5.3f} {name:>10} {edges:7d} {n_key:8d} {r['ms']:9.2f} "
                  f"{r['ns_edge_it']:10.2f} {r['mbps']:7.3f} {r['iters']:6.1f} {r['fer']:5.2f} "
                  f"{int(r['wrong']):5d} {base / r['ms']:8.1f}", flush=True)


if __name__ == "__main__":
    main()
