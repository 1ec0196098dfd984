"""Generation rate of the hal_sim photon stream (Mtags/s of wall time), at a lab-like load.

Configuration: CW source B = 100 M pairs/s, 1 km + 2 km of fibre (0.2 dB/km), one analyzer per
node with two detectors of 20 % efficiency (≈ 9 Mcps singles per detector), 1 kHz dark counts,
20 ns dead time, 20 ps jitter, bob's clock offset and drifting by 1 ppm. Prints the median over
several runs of total tags generated (all four detectors) per second of wall time.

    python benchmarks/photon_stream.py [--seconds 0.2] [--runs 5] [--slice-ms 10]
"""
from __future__ import annotations

import argparse
import statistics
import time

from qnode.hal_sim import (
    BellDiagonalState,
    Clock,
    CWSource,
    Link,
    PhotonStreamSimulator,
    PulsedSource,
    simple_node,
)


def lab_link(pulsed: bool = False) -> Link:
    common = dict(efficiency=0.2, dark_count_rate_hz=1_000.0, dead_time_ps=20_000, jitter_ps=20.0)
    source = (PulsedSource(80e6, 1.25, "poisson") if pulsed else CWSource(100e6))
    return Link(source, BellDiagonalState.werner(0.97),
                (simple_node("alice", (1, 2), length_km=1.0, **common),
                 simple_node("bob", (3, 4), length_km=2.0,
                             clock=Clock(offset_ps=1_234_567, drift_ppm=1.0), **common)))


def run_once(link: Link, seconds: float, slice_ps: int, seed: int) -> tuple[int, float, int]:
    sim = PhotonStreamSimulator(link, seed=seed, slice_ps=slice_ps)
    n = 0
    biggest = 0
    start = time.perf_counter()
    for chunk in sim.stream(int(seconds * 1e12)):
        for block in chunk.blocks.values():
            n += block.size
            biggest = max(biggest, block.size)
    return n, time.perf_counter() - start, biggest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.2,
                    help="simulated emission time per run (s)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--slice-ms", type=float, default=10.0, help="emission slice (ms)")
    ap.add_argument("--pulsed", action="store_true", help="80 MHz pulsed source, μ = 1.25")
    args = ap.parse_args()
    link = lab_link(args.pulsed)
    slice_ps = int(args.slice_ms * 1e9)
    rates, sim_rates = [], []
    for i in range(args.runs):
        n, wall, biggest = run_once(link, args.seconds, slice_ps, seed=i)
        rates.append(n / wall / 1e6)
        sim_rates.append(n / args.seconds / 1e6)
        print(f"run {i}: {n:,} tags in {wall:.3f} s wall = {rates[-1]:.1f} Mtags/s "
              f"(largest chunk {biggest:,} tags)")
    print(f"simulated load: {statistics.median(sim_rates):.1f} Mtags/s of simulated time "
          f"(≈ {statistics.median(sim_rates) / 4:.1f} Mcps per detector)")
    print(f"generation rate: median {statistics.median(rates):.1f} Mtags/s "
          f"(min {min(rates):.1f}, max {max(rates):.1f}) over {args.runs} runs")


if __name__ == "__main__":
    main()
