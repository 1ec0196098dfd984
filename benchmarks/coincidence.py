"""Throughput of the coincidence core, with baselines measured in the same run.

Stream: 4 channels at --rate-mcps per channel (default 10 Mcps), of which --pairs-mcps are true
pairs on (1,2) and on (3,4) with 100 ps rms jitter, the rest uncorrelated; processed in chunks of
--chunk records. Each figure is the median over --repeats runs. Baselines:
  (a) a streaming int64 sum over the same records' time field (memory bandwidth, C);
  (b) the numpy reference (qnode.native.reference) on a prefix of the stream.

    python benchmarks/coincidence.py [--seconds 1.0] [--repeats 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from qnode import native
from qnode.native import reference

WINDOW_PS = 500  # |dt| <= 500 ps: a 1 ns full coincidence window


def make_stream(seconds: float, rate_mcps: float, pairs_mcps: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    span = int(seconds * 1e12)
    per_channel: dict[int, np.ndarray] = {}
    for a, b in ((1, 2), (3, 4)):
        pairs = rng.integers(0, span, int(pairs_mcps * 1e6 * seconds))
        for ch in (a, b):
            noise = rng.integers(0, span, int((rate_mcps - pairs_mcps) * 1e6 * seconds))
            jittered = pairs + np.rint(rng.normal(0, 100, pairs.size)).astype(np.int64)
            per_channel[ch] = np.sort(np.concatenate([noise, jittered]))
    return native.merge_channels(per_channel)


def chunks_of(block: np.ndarray, size: int) -> list[np.ndarray]:
    return [block[i:i + size] for i in range(0, block.size, size)]


def median_rate(n_tags: int, run: Callable[[], object], repeats: int) -> float:
    """Median tags/s over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return n_tags / statistics.median(times)


def engines(mod) -> dict[str, Callable[[], object]]:
    """Fresh engine factories, by benchmark name."""
    return {
        "2-fold exact": lambda: mod.Coincidences([(1, 2), (3, 4)], WINDOW_PS),
        "2-fold + accidentals": lambda: mod.Coincidences([(1, 2), (3, 4)], WINDOW_PS,
                                                         accidental_offset_ps=20_000),
        "N-fold (4 ch, 1 ns)": lambda: mod.NFold([1, 2, 3, 4], 2 * WINDOW_PS, min_fold=2),
        "g2 histogram (+-100 ns, 10 ps)": lambda: mod.Correlation(1, 2, 10, 20_000),
    }


def run_all(block: np.ndarray, chunk: int, repeats: int, numpy_tags: int) -> dict:
    chunks = chunks_of(block, chunk)
    n = block.size
    sum_rate = median_rate(n, lambda: [native.sum_times(c) for c in chunks], repeats)
    ref_chunks = chunks_of(block[:numpy_tags], chunk)
    results = {"tags": n, "chunk": chunk, "sum_mtags_s": sum_rate / 1e6, "functions": {}}
    both = zip(engines(native).items(), engines(reference).items(), strict=True)
    for (name, make), (_, make_ref) in both:
        def run(make=make, cs=chunks):
            engine = make()
            for c in cs:
                engine.process(c)
        def run_ref(make=make_ref, cs=ref_chunks):
            engine = make()
            for c in cs:
                engine.process(c)
        rate = median_rate(n, run, repeats)
        ref_rate = median_rate(sum(c.size for c in ref_chunks), run_ref, max(1, repeats // 2))
        results["functions"][name] = {
            "mtags_s": rate / 1e6,
            "vs_sum": rate / sum_rate,
            "numpy_mtags_s": ref_rate / 1e6,
            "vs_numpy": rate / ref_rate,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="simulated stream length, s")
    parser.add_argument("--rate-mcps", type=float, default=10.0, help="singles per channel, Mcps")
    parser.add_argument("--pairs-mcps", type=float, default=1.0, help="true pairs per pair, Mcps")
    parser.add_argument("--chunk", type=int, default=1 << 20, help="records per chunk")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--numpy-tags", type=int, default=4_000_000,
                        help="records the numpy reference processes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    print(f"generating {args.seconds:g} s at {args.rate_mcps:g} Mcps x 4 channels ...", flush=True)
    block = make_stream(args.seconds, args.rate_mcps, args.pairs_mcps, args.seed)
    res = run_all(block, args.chunk, args.repeats, min(args.numpy_tags, block.size))
    res["config"] = vars(args)
    print(f"{res['tags']:,} tags in chunks of {res['chunk']:,}; medians of {args.repeats} runs")
    print(f"  baseline (a) streaming int64 sum over the records: {res['sum_mtags_s']:8.0f} Mtags/s")
    print(f"  {'function':34s} {'Mtags/s':>9s} {'x sum':>7s} {'numpy Mtags/s':>14s} "
          f"{'x numpy':>8s}")
    for name, f in res["functions"].items():
        print(f"  {name:34s} {f['mtags_s']:9.0f} {f['vs_sum']:7.2f} {f['numpy_mtags_s']:14.1f} "
              f"{f['vs_numpy']:8.0f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
