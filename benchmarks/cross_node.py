"""Throughput of cross-node pair finding (qnode.native.CrossPairs), with baselines measured in
the same run.

Stream: two nodes at --rate-mcps each (default 10 Mtags/s), of which --pair-fraction (5 %) are
true pairs (60 ps rms jitter); the peer's clock is offset by 1.234 µs and runs 3 ppm fast. Both
streams are fed in chunks of --chunk tags per node, own tags with 4 channels (2 bases x 2
outcomes), peer times only; window +-500 ps, accidentals at +20 ns, g2 +-5 ns in 100 ps bins.
Figures are tags/s of both streams together (own + peer tags per second), the median of
--repeats runs, each timed in alternation with
  (a) a streaming int64 sum over the same number of records (memory bandwidth, C);
  (b) the single-node 2-fold engine (native.Coincidences, one pair, the same window and
      accidentals) on the same tags merged into one TagBlock (own = channel 1, peer mapped to
      the own clock = channel 2): the cost of counting all pairs, without indices or mapping;
  (c) once, the daemon's current path, CrossNodeCounter.process (qnode.daemon.acquisition), on
      a prefix (--counter-seconds) of the same streams.

    python benchmarks/cross_node.py [--seconds 1.0] [--repeats 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
from coincidence import paired_times  # benchmarks/coincidence.py (run from this folder)

from qnode import native
from qnode.native import TAG_DTYPE, PeerClock
from qnode.native.align import ClockEstimate

WINDOW_PS = 500
SHIFT_PS = 20_000
CLOCK = PeerClock.from_ppm(1_234_000, 3.0, 0)


def make_streams(seconds: float, rate_mcps: float, fraction: float, seed: int = 1
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(own times, own channels, peer times in the peer clock), sorted, ps."""
    rng = np.random.default_rng(seed)
    span = int(seconds * 1e12)
    n = int(rate_mcps * 1e6 * seconds)
    k = int(n * fraction)
    src = rng.integers(0, span, k)
    own = np.sort(np.concatenate([src + np.rint(rng.normal(0, 60, k)).astype(np.int64),
                                  rng.integers(0, span, n - k)]).clip(0))
    peer = CLOCK.model().to_b(np.concatenate([src, rng.integers(0, span, n - k)]))
    return own, rng.integers(0, 4, n).astype(np.int32), np.sort(peer)


def cross_run(own: np.ndarray, chans: np.ndarray, peer: np.ndarray,
              chunk: int) -> Callable[[], object]:
    edges = np.arange(0, own.size + chunk, chunk)
    # chunks cut on common time edges (own clock), as a daemon gets them
    t_edges = np.append(own[np.minimum(edges, own.size - 1)], own[-1] + 1)[: edges.size]
    pi = np.searchsorted(peer, CLOCK.model().to_b(t_edges))
    oi = np.searchsorted(own, t_edges)
    pieces = [(own[a:b], chans[a:b], peer[c:d]) for a, b, c, d in
              zip(oi[:-1], oi[1:], pi[:-1], pi[1:], strict=True)]
    pieces.append((own[oi[-1]:], chans[oi[-1]:], peer[pi[-1]:]))

    def run() -> object:
        cp = native.CrossPairs(WINDOW_PS, accidental_shift_ps=SHIFT_PS, g2_half_range_ps=5_000,
                               g2_bin_ps=100)
        for o, c, p in pieces:
            cp.process(o, c, p, CLOCK)
        cp.flush(CLOCK)
        return cp
    return run


def twofold_run(own: np.ndarray, peer: np.ndarray, chunk: int) -> tuple[Callable[[], object],
                                                                      list[np.ndarray]]:
    block = native.merge_channels({1: own, 2: CLOCK.to_own(peer)})
    chunks = [block[i:i + 2 * chunk] for i in range(0, block.size, 2 * chunk)]

    def run() -> object:
        c = native.Coincidences([(1, 2)], WINDOW_PS, accidental_offset_ps=SHIFT_PS)
        for b in chunks:
            c.process(b)
        return c
    return run, chunks


def counter_rate(own: np.ndarray, chans: np.ndarray, peer: np.ndarray, seconds: float,
                 chunk: int) -> float | None:
    """Tags/s (both streams) of CrossNodeCounter.process on the first ``seconds``."""
    try:
        from qnode.daemon.acquisition.cross_node import CrossNodeCounter
        from qnode.native.tracking import DriftTracker
    except ImportError:
        return None
    end = int(seconds * 1e12)
    own_n, peer_n = int(np.searchsorted(own, end)), int(np.searchsorted(peer, end))
    counter = CrossNodeCounter([0, 1, 2, 3], 2 * WINDOW_PS, align_s=0.1)
    est = ClockEstimate(offset_ps=CLOCK.offset_ps, drift_ppm=CLOCK.drift_ppm, ref_ps=0,
                        offset_uncertainty_ps=1.0, drift_uncertainty_ppm=1e-3, significance=50,
                        n_pairs=1000, span_ps=10**11, separation_ps=10**11)
    counter.tracker = DriftTracker(est, tracking_window_ps=2 * WINDOW_PS)
    counter.processed_to = int(own[0]) - 1
    peer_ch = np.random.default_rng(2).integers(0, 4, peer.size).astype(np.int32)
    t0 = time.perf_counter()
    for i in range(0, own_n, chunk):
        j = min(i + chunk, own_n)
        o = np.zeros(j - i, TAG_DTYPE)
        o["time"], o["channel"] = own[i:j], chans[i:j]
        lo, hi = np.searchsorted(peer, CLOCK.model().to_b(own[[i, j - 1]]))
        counter.add_own(o, int(o["time"][-1]))
        counter.add_peer(peer[lo:hi], peer_ch[lo:hi], int(peer[max(hi - 1, 0)]),
                         [[0, 1], [2, 3]])
        counter.process()
    return (own_n + peer_n) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="stream length, s")
    parser.add_argument("--rate-mcps", type=float, default=10.0, help="tags per node, Mtags/s")
    parser.add_argument("--pair-fraction", type=float, default=0.05)
    parser.add_argument("--chunk", type=int, default=500_000, help="tags per node per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--counter-seconds", type=float, default=0.2,
                        help="stream prefix for CrossNodeCounter (slow), s; 0: skip")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    own, chans, peer = make_streams(args.seconds, args.rate_mcps, args.pair_fraction)
    n = own.size + peer.size
    cross = cross_run(own, chans, peer, args.chunk)
    twofold, chunks = twofold_run(own, peer, args.chunk)

    def streaming_sum() -> None:
        for c in chunks:
            native.sum_times(c)

    t_cross, t_sum1 = paired_times(cross, streaming_sum, args.repeats)
    t_two, t_sum2 = paired_times(twofold, streaming_sum, args.repeats)
    cp = cross()
    r = {
        "tags": n, "chunk": args.chunk, "pairs": cp.total_pairs,  # type: ignore[attr-defined]
        "accidentals": cp.total_accidentals,  # type: ignore[attr-defined]
        "cross_mtags_s": n / statistics.median(t_cross) / 1e6,
        "twofold_mtags_s": n / statistics.median(t_two) / 1e6,
        "sum_mtags_s": n / statistics.median(t_sum1 + t_sum2) / 1e6,
    }
    r["cross_over_twofold"] = r["cross_mtags_s"] / r["twofold_mtags_s"]
    if args.counter_seconds > 0:
        rate = counter_rate(own, chans, peer, min(args.counter_seconds, args.seconds),
                            args.chunk)
        r["cross_node_counter_mtags_s"] = None if rate is None else rate / 1e6
    print(f"{n} tags ({args.rate_mcps:g} Mtags/s per node, {args.pair_fraction:.0%} pairs, "
          f"chunks of {args.chunk} per node): {r['pairs']} pairs, {r['accidentals']} accidentals")
    print(f"  CrossPairs (C, indices + dt + accidentals + g2): {r['cross_mtags_s']:8.1f} Mtags/s")
    print(f"  2-fold engine (native.Coincidences), same tags:  {r['twofold_mtags_s']:8.1f} Mtags/s"
          f"   ratio CrossPairs / 2-fold = {r['cross_over_twofold']:.2f}")
    print(f"  streaming sum (bandwidth baseline):               {r['sum_mtags_s']:8.1f} Mtags/s")
    if r.get("cross_node_counter_mtags_s") is not None:
        print(f"  CrossNodeCounter.process (current daemon path):  "
              f"{r['cross_node_counter_mtags_s']:8.1f} Mtags/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
