"""A scale run: a chain of N repeaters (2N + 3 daemons: N + 2 memory nodes, N + 1 herald
stations) with simulated instruments and one mosquitto on this machine, and what one broker
can carry.

The chain (qnode.daemon.tools.topology) runs for ``--duration`` seconds once every link's ends
estimate its fidelity from test pairs (``--sigma``); no application asks for pairs, so the
repeaters swap whatever their links hold and the path's ends assemble end-to-end pairs.
Measured over the window:

* per daemon (by role): CPU (% of one core, from /proc utime + stime) and resident memory;
  the simulator's and mosquitto's CPU and memory;
* the broker: messages in and out per second and bytes in (its ``$SYS/broker`` counters);
* heralds per second per link, swaps per repeater, and the end-to-end pairs the path's first
  end assembled per second;
* mosquitto's CPU per message routed (in + out), and from it how many messages per second,
  and nodes like these, one broker core carries at ``--broker-budget`` of a core: the point
  at which a site should split into bridged brokers (docs/operators/bridged-sites.md).

    python benchmarks/scale.py [--repeaters 9] [--duration 60] [--rate 1e5] [--sigma 0.02]
                               [--keep DIR]

Nothing is asserted: the figures are printed for docs/operators/bridged-sites.md.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from qnode.daemon.tools.demo import DemoNetwork  # noqa: E402
from qnode.daemon.tools.topology import chain, write_chain_bench  # noqa: E402

from support.mosquitto import Mosquitto  # noqa: E402
from support.oracle import estimates_ready, telemetry_until  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
SYS_COUNTERS = ("messages/received", "messages/sent", "bytes/received", "bytes/sent")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def broker_counters(port: int) -> dict[str, int]:
    """mosquitto's ``$SYS/broker`` message and byte counters (it publishes them every
    ``sys_interval``, retained)."""
    got: dict[str, int] = {}
    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.subscribe([(f"$SYS/broker/{k}", 0) for k in SYS_COUNTERS])
        async with asyncio.timeout(30):
            async for m in c.messages:
                got[str(m.topic).removeprefix("$SYS/broker/")] = int(bytes(m.payload))
                if len(got) == len(SYS_COUNTERS):
                    return got
    return got


def _links(latest: dict[str, dict], node: str) -> dict[str, dict]:
    return latest.get(node, {}).get("links", {})


async def run(repeaters: int, duration_s: float, rate_hz: float, sigma: float,
              work: Path) -> dict:
    c = chain(repeaters)
    bench = write_chain_bench(work, c, attempt_rate_hz=rate_hz)
    # $SYS every second, so that the window's counters are read at its ends
    with Mosquitto(work / "mosquitto", more="sys_interval 1\n") as broker:
        net = DemoNetwork(work / "net", f"mqtt://127.0.0.1:{broker.port}", work / "logs",
                          bench=bench, chain=c, max_pair_age_s=1.0, test_fraction=0.15,
                          with_m_link=False, telemetry_interval_s=2.0)
        try:
            t0 = time.monotonic()
            await asyncio.to_thread(net.start)
            everyone = set(net.daemons)
            await telemetry_until(broker.port, lambda t: everyone <= set(t), 600)
            up_s = time.monotonic() - t0
            # the repeaters swap once every link's ends estimate its fidelity from test pairs
            first = await telemetry_until(broker.port, estimates_ready(c, sigma), 1200)
            ready_s = time.monotonic() - t0
            assert broker.proc is not None and net.bench.proc is not None
            pids = {n: d.proc.pid for n, d in net.daemons.items() if d.proc is not None}
            pids["(simulator)"], pids["(mosquitto)"] = net.bench.proc.pid, broker.proc.pid
            cpu0 = {n: cpu_s(p) for n, p in pids.items()}
            sys0, w0 = await broker_counters(broker.port), time.monotonic()
            await asyncio.sleep(duration_s)
            cpu1 = {n: cpu_s(p) for n, p in pids.items()}
            sys1, w1 = await broker_counters(broker.port), time.monotonic()
            rss = {n: rss_mib(p) for n, p in pids.items()}
            last = await telemetry_until(broker.port, lambda t: everyone <= set(t), 60)
        finally:
            await asyncio.to_thread(net.close)
    window = w1 - w0
    roles = {n: ("station" if n in c.stations else "repeater" if n in c.repeaters
                 else "end") for n in net.daemons}
    roles.update({"(simulator)": "simulator", "(mosquitto)": "broker"})
    cpu = {n: 100 * (cpu1[n] - cpu0[n]) / window for n in pids}
    rates = {k: (sys1.get(k, 0) - sys0.get(k, 0)) / window for k in SYS_COUNTERS}
    end = c.nodes[0]
    received = [r.get("paths", {}).get("alice-bob", {}).get("pairs_received_total", 0)
                for r in (first.get(end, {}), last.get(end, {}))]
    heralds = [sum(_links(t, n).get(lk, {}).get("heralds_total", 0)
                   for n, lk in zip(c.nodes, c.links, strict=False)) for t in (first, last)]
    swaps = [last.get(r, {}).get("paths", {}).get("alice-bob", {}).get("swaps_total", 0)
             for r in c.repeaters]
    return {"daemons": len(net.daemons), "up_s": up_s, "ready_s": ready_s,
            "window_s": window, "cpu": cpu,
            "rss": rss, "roles": roles, "rates": rates,
            "pairs_hz": (received[1] - received[0]) / (last[end]["t"] - first[end]["t"]),
            "heralds_hz": (heralds[1] - heralds[0]) / (last[end]["t"] - first[end]["t"])
            / len(c.links), "swaps": swaps}


def report(r: dict, budget: float) -> None:
    print(f"{r['daemons']} daemons up in {r['up_s']:.0f} s, every link's estimate from test "
          f"pairs after {r['ready_s']:.0f} s; window {r['window_s']:.0f} s")
    print(f"{'process':<14} {'role':<9} {'CPU %':>6} {'RSS MiB':>8}")
    for n in sorted(r["cpu"], key=lambda n: (r["roles"][n], n)):
        print(f"{n:<14} {r['roles'][n]:<9} {r['cpu'][n]:6.1f} {r['rss'][n]:8.1f}")
    by_role: dict[str, list[float]] = {}
    for n, v in r["cpu"].items():
        by_role.setdefault(r["roles"][n], []).append(v)
    print("per role, mean CPU %: " + ", ".join(
        f"{k} {sum(v) / len(v):.1f} (×{len(v)})" for k, v in sorted(by_role.items())))
    total = sum(r["cpu"].values())
    print(f"all processes: {total:.0f} % of one core (this host has {os.cpu_count()} cores)")
    rates = r["rates"]
    routed = rates["messages/received"] + rates["messages/sent"]
    print(f"broker: {rates['messages/received']:.0f} msg/s in, {rates['messages/sent']:.0f} "
          f"msg/s out, {rates['bytes/received'] / 1e3:.0f} kB/s in, "
          f"{rates['bytes/sent'] / 1e3:.0f} kB/s out")
    print(f"links: {r['heralds_hz']:.0f} heralds/s each; swaps per repeater {r['swaps']}; "
          f"end-to-end pairs assembled at the first end: {r['pairs_hz']:.1f}/s")
    broker_cpu = r["cpu"]["(mosquitto)"] / 100
    if routed > 0 and broker_cpu > 0:
        per_msg_us = broker_cpu / routed * 1e6
        per_node = routed / r["daemons"]
        carried = budget / (per_msg_us * 1e-6)
        print(f"mosquitto: {per_msg_us:.1f} µs CPU per message routed (in or out); "
              f"{per_node:.0f} routed messages/s per daemon here; at {budget:.0%} of a core one "
              f"broker routes ~{carried:.0f} messages/s: ~{carried / per_node:.0f} daemons like "
              "these")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeaters", type=int, default=9, help="9: 21 daemons")
    ap.add_argument("--duration", type=float, default=60.0, help="measuring window (s)")
    ap.add_argument("--rate", type=float, default=1e5, help="attempts per link (Hz)")
    ap.add_argument("--broker-budget", type=float, default=0.5,
                    help="the share of a core the broker may use in the estimate")
    ap.add_argument("--sigma", type=float, default=0.02,
                    help="the links' estimates' standard error before the window")
    ap.add_argument("--keep", metavar="DIR", help="run in DIR and keep it (configs, logs)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix=f"qnode-scale{args.repeaters}-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        r = asyncio.run(run(args.repeaters, args.duration, args.rate, args.sigma, work))
    report(r, args.broker_budget)


if __name__ == "__main__":
    main()
