"""End-to-end pairs through chains of 1, 2 and 4 repeaters over mosquitto, against hal_sim.

For each chain (qnode.daemon.tools.topology: alice – r1 … rN – bob, a station per link, every
link with the demo's physics): the bench, one ``qnode run`` daemon per node and a broker; wait
until every link's estimate from test pairs reaches ``--sigma``; then bob asks for ``--pairs``
pairs at once and alice for one at a time, and the bench's registry oracle reads the true state
of each of alice's pairs as its OK arrives. Prints per chain: daemons, how long the estimates
took, pairs delivered at each end and how many ids both ends got, reported − true fidelity
(mean and largest; every swap's read-out errors averaged as the estimate does, pairs with a
misread Bell-state measurement left out), and the latency from each of alice's requests to its
OK (p50, p99: the end serves a pair it holds at once, else the next one the chain completes).

    python benchmarks/repeater_chain.py [--repeaters 1,2,4] [--pairs 20] [--sigma 0.003]
                                        [--rate 3e5]

A four-repeater chain is 11 daemons and one simulator process on this 2-core machine: expect
several minutes per chain.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from qnode.daemon.linklayer import BELL_STATES  # noqa: E402
from qnode.daemon.tools.demo import DemoNetwork  # noqa: E402
from qnode.daemon.tools.topology import chain, write_chain_bench  # noqa: E402

from support.mosquitto import Mosquitto  # noqa: E402
from support.oracle import (
    Truth,
    ask_pairs,
    estimates_ready,
    over_bsm_errors,
    telemetry_until,
)  # noqa: E402


async def run_chain(repeaters: int, pairs: int, sigma: float, rate_hz: float,
                    work: Path) -> dict[str, float | int | str]:
    c = chain(repeaters)
    bench = write_chain_bench(work, c, attempt_rate_hz=rate_hz)
    latencies: list[float] = []
    with Mosquitto(work / "mosquitto") as broker:
        net = DemoNetwork(work / "net", f"mqtt://127.0.0.1:{broker.port}", work / "logs",
                          bench=bench, chain=c, max_pair_age_s=1.0, test_fraction=0.15,
                          with_m_link=False)
        try:
            t0 = time.monotonic()
            await asyncio.to_thread(net.start)
            truth = Truth(net.addresses["qdevice-truth"])
            await telemetry_until(broker.port, estimates_ready(c, sigma), 1200)
            estimates_s = time.monotonic() - t0
            oks, truths, bob_oks, unread = await ask_pairs(
                broker.port, truth, pairs, per_pair_s=120, all_s=300, latencies=latencies)
            after = await telemetry_until(
                broker.port, lambda t: all("paths" in t.get(r, {}) for r in c.repeaters), 30)
            truth.close()
        finally:
            await asyncio.to_thread(net.close)
    reported = np.array([o["goodness"] for o in oks])
    true_f = np.array([over_bsm_errors(w, repeaters)[BELL_STATES.index(o["bell_state"])]
                       for o, (_, w) in zip(oks, truths, strict=True)])
    flipped = reported - true_f > 0.2
    diff = reported[~flipped] - true_f[~flipped]
    common = {o["seq"]: o["bell_state"] for o in oks}.items() & {
        o["seq"]: o["bell_state"] for o in bob_oks}.items()
    partners = sorted({p.split(":")[0] for p, _ in truths})
    lat = np.array(latencies) * 1e3
    return {"repeaters": repeaters, "daemons": len(net.daemons),
            "estimates_s": round(estimates_s), "alice": len(oks), "bob": len(bob_oks),
            "common": len(common), "partners": ",".join(partners),
            "misread": int(flipped.sum()), "late": len(unread),
            "mean_diff": float(diff.mean()) if diff.size else float("nan"),
            "max_diff": float(np.abs(diff).max()) if diff.size else float("nan"),
            "true_mean": float(true_f[~flipped].mean()) if diff.size else float("nan"),
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p99_ms": float(np.percentile(lat, 99)),
            "swaps": ",".join(str(after[r]["paths"]["alice-bob"]["swaps_total"])
                              for r in c.repeaters)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeaters", default="1,2,4")
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--sigma", type=float, default=0.003)
    ap.add_argument("--rate", type=float, default=3e5, help="attempts per link (Hz)")
    args = ap.parse_args()
    print(f"{'rep':>3} {'daemons':>7} {'est s':>5} {'alice':>5} {'bob':>4} {'same':>4} "
          f"{'misread':>7} {'late':>4} {'true F':>7} {'mean Δ':>8} {'max |Δ|':>7} "
          f"{'p50 ms':>7} {'p99 ms':>7}  partners / swaps per repeater", flush=True)
    for n in (int(x) for x in args.repeaters.split(",")):
        with tempfile.TemporaryDirectory(prefix=f"qnode-chain{n}-") as tmp:
            r = asyncio.run(run_chain(n, args.pairs, args.sigma, args.rate, Path(tmp)))
        print(f"{r['repeaters']:>3} {r['daemons']:>7} {r['estimates_s']:>5} {r['alice']:>5} "
              f"{r['bob']:>4} {r['common']:>4} {r['misread']:>7} {r['late']:>4} "
              f"{r['true_mean']:7.4f} {r['mean_diff']:+8.4f} {r['max_diff']:7.4f} "
              f"{r['latency_p50_ms']:7.1f} {r['latency_p99_ms']:7.1f}  {r['partners']} / "
              f"{r['swaps']}", flush=True)


if __name__ == "__main__":
    main()
