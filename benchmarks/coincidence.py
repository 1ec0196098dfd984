"""Throughput of the coincidence core, with baselines measured in the same run.

Stream: 4 channels at --rate-mcps per channel (default 10 Mcps), of which --pairs-mcps are true
pairs on (1,2) and on (3,4) with 100 ps rms jitter, the rest uncorrelated; processed in chunks of
--chunk records. Each figure is the median over --repeats runs. Baselines:
  (a) a streaming int64 sum over the same records' time field (memory bandwidth, C), chunk by
      chunk like the engines. It is timed in alternation with each C function (one untimed
      warm-up run of both first), so that a ratio compares runs under the same machine load;
  (b) the numpy reference (qnode.native.reference) on a prefix of the stream.
Besides the streaming engines it times the stream utilities and the offset search
(qnode.native.align.find_offset with the C helpers against the same with the numpy ones).

    python benchmarks/coincidence.py [--seconds 1.0] [--repeats 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qnode import native
from qnode.native import align, reference

from streams import make_stream  # benchmarks/streams.py (scripts run from this folder)

WINDOW_PS = 500  # |dt| <= 500 ps: a 1 ns full coincidence window


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


def paired_times(run: Callable[[], object], baseline: Callable[[], object],
                 repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per run of ``run`` and of ``baseline``, timed alternately after one untimed run
    of each (so both work on warm caches and see the same load on a shared machine)."""
    run()
    baseline()
    times, base_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        baseline()
        t1 = time.perf_counter()
        run()
        t2 = time.perf_counter()
        base_times.append(t1 - t0)
        times.append(t2 - t1)
    return times, base_times


def engines(mod) -> dict[str, Callable[[], object]]:
    """Fresh engine factories, by benchmark name."""
    return {
        "2-fold exact": lambda: mod.Coincidences([(1, 2), (3, 4)], WINDOW_PS),
        "2-fold + accidentals": lambda: mod.Coincidences([(1, 2), (3, 4)], WINDOW_PS,
                                                         accidental_offset_ps=20_000),
        "N-fold (4 ch, 1 ns)": lambda: mod.NFold([1, 2, 3, 4], 2 * WINDOW_PS, min_fold=2),
        "g2 histogram (+-100 ns, 10 ps)": lambda: mod.Correlation(1, 2, 10, 20_000),
    }


@dataclass
class Workload:
    """One benchmark line: the same work done by the C core and by the numpy reference (on
    ``ref_tags`` tags, usually fewer)."""

    name: str
    tags: int
    run: Callable[[], object]
    ref_tags: int
    run_ref: Callable[[], object]


def engine_workloads(chunks: list[np.ndarray], ref_chunks: list[np.ndarray]) -> list[Workload]:
    def streaming(make: Callable[[], object], cs: list[np.ndarray]) -> Callable[[], None]:
        def run() -> None:
            engine = make()
            for c in cs:
                engine.process(c)
        return run

    n, n_ref = sum(c.size for c in chunks), sum(c.size for c in ref_chunks)
    both = zip(engines(native).items(), engines(reference).items(), strict=True)
    return [Workload(name, n, streaming(make, chunks), n_ref, streaming(make_ref, ref_chunks))
            for (name, make), (_, make_ref) in both]


def per_channel_chunks(chunks: list[np.ndarray]) -> list[dict[int, np.ndarray]]:
    """Each chunk split into per-channel time arrays, as a tagger with per-channel streams
    (e.g. an ID900) delivers them."""
    return [{ch: c["time"][c["channel"] == ch] for ch in (1, 2, 3, 4)} for c in chunks]


def utility_workloads(block: np.ndarray, chunk: int, ref_tags: int) -> list[Workload]:
    """The stream utilities and the offset search, on this stream's per-channel times."""
    split = per_channel_chunks(chunks_of(block, chunk))
    split_ref = per_channel_chunks(chunks_of(block[:ref_tags], chunk))
    per_channel = {ch: block["time"][block["channel"] == ch] for ch in (1, 2, 3, 4)}
    short = block[:ref_tags]
    per_channel_ref = {ch: short["time"][short["channel"] == ch] for ch in (1, 2, 3, 4)}
    times, times_ref = block["time"], short["time"]
    t1, t2 = per_channel[1], per_channel[2]
    t1_ref, t2_ref = per_channel_ref[1], per_channel_ref[2]
    # the offset search on 0.1 s of channels 1 and 2 (true pairs at zero delay)
    span = int(0.1e12)
    a01, b01 = t1[t1 < t1[0] + span], t2[t2 < t1[0] + span]
    return [
        Workload("merge_channels (4 ch, per chunk)", times.size,
                 lambda: [native.merge_channels(c) for c in split],
                 times_ref.size, lambda: [reference.merge_channels(c) for c in split_ref]),
        Workload("bin_mod (2 ns, 2^17 bins)", times.size,
                 lambda: native.bin_mod(times, 0, 2_000, 1 << 17), times_ref.size,
                 lambda: reference.bin_mod(times_ref, 0, 2_000, 1 << 17)),
        Workload("pair_deltas (ch1-ch2, +-1 ns)", t1.size + t2.size,
                 lambda: native.pair_deltas(t1, t2, -1_000, 1_000), t1_ref.size + t2_ref.size,
                 lambda: reference.pair_deltas(t1_ref, t2_ref, -1_000, 1_000)),
        Workload("align.find_offset (0.1 s, 2 ch)", a01.size + b01.size,
                 lambda: align.find_offset(a01, b01), a01.size + b01.size,
                 lambda: align.find_offset(a01, b01, backend=reference)),
    ]


def run_all(block: np.ndarray, chunk: int, repeats: int, numpy_tags: int) -> dict:
    chunks = chunks_of(block, chunk)

    def streaming_sum() -> None:
        for c in chunks:
            native.sum_times(c)

    results = {"tags": block.size, "chunk": chunk, "functions": {}}
    workloads = (engine_workloads(chunks, chunks_of(block[:numpy_tags], chunk))
                 + utility_workloads(block, chunk, numpy_tags))
    all_sum_times = []
    for w in workloads:
        times, sum_times = paired_times(w.run, streaming_sum, repeats)
        all_sum_times += sum_times
        rate = w.tags / statistics.median(times)
        sum_rate = block.size / statistics.median(sum_times)
        ref_rate = median_rate(w.ref_tags, w.run_ref, max(1, repeats // 2))
        results["functions"][w.name] = {
            "mtags_s": rate / 1e6,
            "vs_sum": rate / sum_rate,
            "sum_mtags_s": sum_rate / 1e6,
            "numpy_mtags_s": ref_rate / 1e6,
            "vs_numpy": rate / ref_rate,
        }
    results["sum_mtags_s"] = block.size / statistics.median(all_sum_times) / 1e6
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
    print(f"  baseline (a) streaming int64 sum over the records: {res['sum_mtags_s']:8.0f} Mtags/s "
          "(median of all its runs)")
    print("  x sum: against the sum timed in alternation with the function (its rate shown next)")
    print(f"  {'function':34s} {'Mtags/s':>9s} {'x sum':>7s} {'(sum Mtags/s)':>14s} "
          f"{'numpy Mtags/s':>14s} {'x numpy':>8s}")
    for name, f in res["functions"].items():
        print(f"  {name:34s} {f['mtags_s']:9.0f} {f['vs_sum']:7.2f} {f['sum_mtags_s']:14.0f} "
              f"{f['numpy_mtags_s']:14.1f} {f['vs_numpy']:8.0f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
