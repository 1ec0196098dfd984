"""Cross-node tag exchange (M-type links): one analyzer's tags to the counting node over MQTT.

A hal_sim link (two analyzers, the peer's clock offset by ms and 2.5 ppm fast) is simulated once;
the peer's chunks are then:

* encoded (:mod:`qnode.daemon.bus.tagwire`: deltas + deflate + base64) and decoded — per-tag cost;
* published as signed ``TAGS`` messages through ``NodeBus`` (QoS 1) to a real mosquitto broker and
  received, verified and decoded by a second ``NodeBus`` in another process — the wire rate;
* counted by the :class:`~qnode.daemon.roles.analyzer.CrossNodeCounter` against the own stream
  (alignment, drift servo, native coincidences) — the counting rate.

Baseline in the same run: the same payload bytes published raw (no envelope, signature or JSON)
through the same broker. Figures are medians of --repeats runs.

    python benchmarks/tag_exchange.py [--seconds 2] [--pair-rate 2e6] [--repeats 3]

Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from qnode.daemon import tagwire  # noqa: E402
from qnode.daemon.acquisition.cross_node import CrossNodeCounter  # noqa: E402
from qnode.daemon.bus.client import NodeBus  # noqa: E402
from qnode.daemon.bus.topics import Topics  # noqa: E402
from qnode.hal_sim import (  # noqa: E402
    BellDiagonalState,
    Clock,
    CWSource,
    Link,
    PhotonStreamSimulator,
    simple_node,
)

from support.mosquitto import Mosquitto  # noqa: E402

KEY = b"bench-key-" * 4
DET = dict(efficiency=0.6, dark_count_rate_hz=500.0, dead_time_ps=20_000, jitter_ps=30.0)


def simulate(seconds: float, pair_rate: float):
    link = Link(CWSource(pair_rate), BellDiagonalState.werner(0.95),
                (simple_node("a", (1, 2), **DET),
                 simple_node("b", (1, 2), clock=Clock(offset_ps=2_345_678_901, drift_ppm=2.5),
                             **DET)))
    sim = PhotonStreamSimulator(link, seed=1)
    return [(c.blocks["a"], c.blocks["b"]) for c in sim.stream(int(seconds * 1e12))]


def _receiver(port: int, n_messages: int, raw: bool, out: mp.Queue) -> None:
    async def main() -> None:
        got = 0
        tags = 0
        done = asyncio.Event()
        first = [0.0]
        bus = NodeBus(Topics("bench", "counter"), "127.0.0.1", port, keys={"streamer": KEY})

        async def on_tags(topic, msg) -> None:
            nonlocal got, tags
            if not got:
                first[0] = time.perf_counter()
            t, _ = tagwire.decode(msg.body)
            tags += t.size
            got += 1
            if got == n_messages:
                done.set()

        bus.on("tags", on_tags)
        bus.subscribe("qnet/v1/bench/streamer/tags/m")
        if raw:
            import aiomqtt
            async with aiomqtt.Client("127.0.0.1", port) as c:
                await c.subscribe("raw/#", qos=1)
                out.put("ready")
                async for _ in c.messages:
                    if not got:
                        first[0] = time.perf_counter()
                    got += 1
                    if got == n_messages:
                        break
        else:
            task = asyncio.create_task(bus.run())
            await bus.wait_connected(10)
            await asyncio.sleep(0.3)
            out.put("ready")
            await done.wait()
            await bus.close()
            await task
        out.put((time.perf_counter(), tags))

    asyncio.run(main())


async def _send(port: int, bodies: list[dict], raw_payloads: list[bytes] | None) -> float:
    t0 = time.perf_counter()
    if raw_payloads is not None:
        import aiomqtt
        async with aiomqtt.Client("127.0.0.1", port, max_inflight_messages=64) as c:
            t0 = time.perf_counter()
            for p in raw_payloads:
                await c.publish("raw/m", p, qos=1)
        return t0
    bus = NodeBus(Topics("bench", "streamer"), "127.0.0.1", port, keys={"counter": KEY})
    task = asyncio.create_task(bus.run())
    await bus.wait_connected(10)
    t0 = time.perf_counter()
    for i, body in enumerate(bodies):
        bus.publish(bus.topics.tags("m"), "TAGS", body, sign_with="counter")
        if i % 8 == 7:
            await asyncio.sleep(0)
    await bus.drain(120)
    await bus.close()
    await task
    return t0


def wire_rate(port: int, bodies: list[dict], raw: bool) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    payloads = [str(b).encode() for b in bodies] if raw else None
    p = ctx.Process(target=_receiver, args=(port, len(bodies), raw, q))
    p.start()
    assert q.get(timeout=30) == "ready"
    t0 = asyncio.run(_send(port, bodies, payloads))
    t_end, tags = q.get(timeout=300)
    p.join(30)
    return t_end - t0, tags


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--pair-rate", type=float, default=2e6)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    chunks = simulate(args.seconds, args.pair_rate)
    peer = [b for _, b in chunks]
    n_tags = sum(b.size for b in peer)
    print(f"stream: {args.seconds:g} s simulated, pair rate {args.pair_rate:.3g}/s, "
          f"{n_tags / args.seconds / 1e6:.2f} Mtags/s at the peer, {len(peer)} chunks")

    enc, dec = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        bodies = [tagwire.encode(b, link="m", chunk=i) for i, b in enumerate(peer)]
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        for body in bodies:
            tagwire.decode(body)
        dec.append(time.perf_counter() - t)
    wire_bytes = sum(len(b["dt"]) + len(b["ch"]) for b in bodies)
    print(f"tagwire: {wire_bytes / n_tags:.2f} bytes/tag (16 in memory); encode "
          f"{n_tags / statistics.median(enc) / 1e6:.1f} Mtags/s, decode "
          f"{n_tags / statistics.median(dec) / 1e6:.1f} Mtags/s")

    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as broker:
        rates, raws = [], []
        for _ in range(args.repeats):
            dt, tags = wire_rate(broker.port, bodies, raw=False)
            assert tags == n_tags, (tags, n_tags)
            rates.append(n_tags / dt)
            dt_raw, _ = wire_rate(broker.port, bodies, raw=True)
            raws.append(n_tags / dt_raw)
    r, b = statistics.median(rates), statistics.median(raws)
    print(f"over mosquitto (signed TAGS, QoS 1, decoded): {r / 1e6:.2f} Mtags/s "
          f"(runs {', '.join(f'{x / 1e6:.2f}' for x in rates)}); raw QoS-1 baseline "
          f"{b / 1e6:.2f} Mtags/s; ratio {r / b:.2f}")

    times = []
    for _ in range(args.repeats):
        counter = CrossNodeCounter((1, 2), window_ps=1000, align_s=0.5)
        t = time.perf_counter()
        for a, bb in chunks:
            counter.add_own(a, int(a["time"][-1]) if a.size else 0)
            counter.add_peer(bb["time"], bb["channel"], int(bb["time"][-1]) if bb.size else 0,
                             (1, 2))
            counter.process()
        times.append(time.perf_counter() - t)
    total = n_tags + sum(a.size for a, _ in chunks)
    pairs = int(counter.counts.sum())
    state = counter.tracker.status.name if counter.tracker else "-"
    print(f"cross-node counting (align + servo + native core): "
          f"{total / statistics.median(times) / 1e6:.2f} Mtags/s of both streams, "
          f"{pairs} coincidences, tracker {state}")


if __name__ == "__main__":
    main()
