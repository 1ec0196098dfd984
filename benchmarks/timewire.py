"""Size and speed of the timing-only wire (qnode.daemon.bus.timewire) against tagwire, on the
same times in the same run.

Poisson tags (exponential gaps, ps resolution) at 1, 10 and 100 Mtags/s, one message per
--chunk-ms of tag time. Bytes per tag are len(json.dumps(body)) / n, header included; the
theory line is the entropy of an exponential gap of mean mu ps rounded to 1 ps, log2(e * mu)
bits, and what Rice coding (within ~0.03 bit of it) and base85 (x 5/4) make of it. Speeds are
tags/s of encode and decode (median of --repeats).

    python benchmarks/timewire.py [--chunk-ms 50] [--repeats 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable

import numpy as np

from qnode.daemon.bus import tagwire, timewire
from qnode.native import tag_block


def median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def measure(rate_hz: float, chunk_ms: float, repeats: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    mean_ps = 1e12 / rate_hz
    n = min(int(rate_hz * chunk_ms * 1e-3), timewire.MAX_TAGS // 2)  # 100 Mtags/s: 20 ms
    t = 10**12 + np.cumsum(np.rint(rng.exponential(mean_ps, n))).astype(np.int64)
    end = int(t[-1]) + 1
    body = timewire.encode(t, link="m1", chunk=7, t_end_ps=end)
    assert np.array_equal(timewire.decode(json.loads(json.dumps(body))), t)
    block = tag_block(t, rng.integers(0, 4, n).astype(np.int32))
    tag_body = tagwire.encode(block, link="m1", chunk=7)
    entropy = math.log2(math.e * mean_ps)
    text = json.dumps(body)
    return {
        "rate_mtags_s": rate_hz / 1e6, "tags": n, "k": body["k"],
        "timewire_bytes_per_tag": len(text) / n,
        "rice_bits_per_tag": 8 * len(body["dt"]) * 4 / 5 / max(n - 1, 1),
        "entropy_bits_per_tag": entropy,
        "entropy_b85_bytes_per_tag": entropy / 8 * 5 / 4,
        "tagwire_bytes_per_tag": len(json.dumps(tag_body)) / n,
        "tagwire_times_only_bytes_per_tag": len(json.dumps({**tag_body, "ch": ""})) / n,
        "encode_mtags_s": n / median_s(lambda: timewire.encode(t, link="m1", chunk=7,
                                                               t_end_ps=end), repeats) / 1e6,
        "decode_mtags_s": n / median_s(lambda: timewire.decode(body), repeats) / 1e6,
        "tagwire_encode_mtags_s": n / median_s(lambda: tagwire.encode(block, link="m1", chunk=7),
                                               repeats) / 1e6,
        "tagwire_decode_mtags_s": n / median_s(lambda: tagwire.decode(tag_body), repeats) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-ms", type=float, default=50.0, help="tag time per message, ms")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    rows = [measure(r, args.chunk_ms, args.repeats) for r in (1e6, 1e7, 1e8)]
    print(f"Poisson tags, one message per {args.chunk_ms:g} ms; bytes/tag of the JSON body")
    print(f"{'Mtags/s':>8} {'k':>3} {'entropy':>8} {'Rice':>6} {'ideal b85':>9} "
          f"{'timewire':>9} {'tagwire':>8} {'(no ch)':>8} | {'enc':>6} {'dec':>6} "
          f"{'tw enc':>6} {'tw dec':>6} Mtags/s")
    for r in rows:
        print(f"{r['rate_mtags_s']:8g} {r['k']:3d} {r['entropy_bits_per_tag']:6.2f} b "
              f"{r['rice_bits_per_tag']:4.2f} b {r['entropy_b85_bytes_per_tag']:7.2f} B "
              f"{r['timewire_bytes_per_tag']:7.2f} B {r['tagwire_bytes_per_tag']:6.2f} B "
              f"{r['tagwire_times_only_bytes_per_tag']:6.2f} B | {r['encode_mtags_s']:6.1f} "
              f"{r['decode_mtags_s']:6.1f} {r['tagwire_encode_mtags_s']:6.1f} "
              f"{r['tagwire_decode_mtags_s']:6.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
