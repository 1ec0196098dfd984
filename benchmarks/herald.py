"""Herald path over a real mosquitto: station → NodeBus → broker → NodeBus → LinkEnd, per link.

Four processes on loopback: mosquitto (tests/support/mosquitto.py, message logging off), a
herald station and the two link ends ``alice`` and ``bob`` (separate processes, so the cores are
shared as in a deployment). The station numbers each chunk's successes with
``HeraldStation.successes`` and publishes one ``Herald`` per chunk per link (``to_dict`` in the
envelope of daemon/bus/envelope.py, HMAC-signed with the link key, QoS 1) through
``NodeBus.publish``. Each end decodes and checks the envelope (signature, dedup), parses
``Herald.from_dict``, applies ``LinkEnd.on_herald`` and sends what the call returned (the
EXPIREs of the window, ``--max-pair-age`` and ``--window-slack``) to the peer end over
``ll/<peer>``. Persistence (``--persist``): ``LinkEnd.snapshot_delta`` goes to SQLite (WAL,
``synchronous=FULL`` as in daemon/runtime/state.py, one row per run, one transaction per delta) on a
writer thread; write-ahead: before a call's messages are sent, its delta is stored. A call with
nothing to send (a herald batch on an idle link) is stored with the next periodic save
("coalesce", every ``--persist-interval-ms``: a crash loses at most that many pairs, which the
sequence rule then expires at both ends) or at once ("batch"). Each chunk carries ``--pairs``
successes (default: rate × period, Poisson arrival times, Ψ+/Ψ− at random).

Phases, each ``--repeats`` times, in the same processes and broker:

* ``paced``: one chunk every ``--period-ms`` (offered ``--rate`` pairs/s per link);
* ``saturated``: chunks back to back, at most ``--window`` chunks ahead of the slower end
  (end-to-end flow control): the capacity of the path;
* the same two with a **baseline**: the same number of bytes per chunk published as raw QoS-1
  MQTT messages (aiomqtt, 64 in flight like NodeBus) and only timestamped at the ends — no
  envelope, signature, JSON, link layer or persistence.

Figures: pairs/s conveyed per link (pairs accepted by the link ends / phase time; median over
repeats), herald latency percentiles (end applied the batch minus the envelope's ``ts``, and
minus the chunk's close time, pooled over repeats and ends), payload bytes per pair, CPU time
per pair (process time of station and ends over the phase), and the ratios link layer /
baseline. At the end both ends' inventories (pair ids) are compared.

    python benchmarks/herald.py [--seconds 3] [--repeats 3] [--period-ms 10] [--rate 1e6]
                                [--links 1] [--codec raw] [--persist coalesce] [--window 8]

Prints figures; asserts nothing. Goal: ≥ 1,000,000 pairs/s per link, herald p99 ≤ 20 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing as mp
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from qnode.daemon.bus.client import NodeBus  # noqa: E402
from qnode.daemon.bus.envelope import Message, encode  # noqa: E402
from qnode.daemon.bus.topics import Topics  # noqa: E402
from qnode.daemon.linklayer import (
    Expire,
    ExpireAck,
    Herald,
    HeraldStation,
    LinkEnd,
    message_from_dict,
    split_actions,
)

from support.mosquitto import Mosquitto  # noqa: E402  (tests/support/mosquitto.py)

NET = "bench"
KEY = b"herald-bench-link-key-0123456789"
ENDS = ("alice", "bob")
RAW_HEADER = struct.Struct("<dq")   # publish wall time (s), chunk number
POOL = 16                           # distinct pre-made chunks per link


@dataclass(frozen=True)
class Config:
    seconds: float
    repeats: int
    period_s: float
    pairs: int
    links: int
    codec: str
    persist: str
    persist_interval_s: float
    window: int
    max_pair_age: int
    window_slack: int
    workdir: str

    @property
    def link_ids(self) -> list[str]:
        return [f"l{i}" for i in range(self.links)]

    def phases(self) -> list[tuple[str, str]]:
        """(path, pacing) of every phase, in order: the same list in every process."""
        one = [("ll", "paced"), ("ll", "saturated"), ("raw", "paced"), ("raw", "saturated")]
        return one * self.repeats


# --------------------------------------------------------------------------- shared state


@dataclass
class Shared:
    """Cross-process coordination: barrier (parent + 3 workers), phase start time, the last
    chunk number of the running phase (set by the station before it publishes it) and each
    end's count of batches applied (for the saturated phases' flow control)."""

    barrier: Any
    t0: Any
    stop_chunk: Any
    progress: dict[str, Any]
    results: Any


async def sync(shared: Shared) -> None:
    await asyncio.get_running_loop().run_in_executor(None, shared.barrier.wait)


# --------------------------------------------------------------------------- station


def make_pool(cfg: Config, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """POOL chunks of (codes, times relative to the chunk's start) with Poisson arrivals."""
    rng = np.random.default_rng(seed)
    mean_ps = cfg.period_s * 1e12 / cfg.pairs
    out = []
    for _ in range(POOL):
        dt = rng.exponential(mean_ps, cfg.pairs).astype(np.int64)
        codes = rng.integers(2, 4, cfg.pairs).astype(np.uint8)   # psi+ / psi-
        out.append((codes, np.cumsum(dt)))
    return out


async def station_main(cfg: Config, host: str, port: int, shared: Shared) -> None:
    topics = Topics(NET, "station")
    links = cfg.link_ids
    bus = NodeBus(topics, host, port, keys={link: KEY for link in links})
    runner = asyncio.create_task(bus.run())
    raw = aiomqtt.Client(host, port, identifier="station-raw", max_inflight_messages=64)
    await raw.__aenter__()
    raw.pending_calls_threshold = 1000
    await bus.wait_connected(10)
    station = HeraldStation(links)
    pools = {link: make_pool(cfg, i) for i, link in enumerate(links)}
    chunk = 0
    tag_time = 10**15          # ps on the station's time base
    payload_bytes = 0
    sent = 0                   # heralds published, all phases (the ends count the same way)
    await sync(shared)         # everyone connected
    for path, pacing in cfg.phases():
        await sync(shared)     # phase start (t0 set by the parent)
        t0 = shared.t0.value
        cpu0 = time.process_time()
        window = asyncio.Semaphore(64)
        pending: set[asyncio.Task[None]] = set()
        i = 0
        while True:
            if pacing == "paced":
                if i >= round(cfg.seconds / cfg.period_s):
                    break
                delay = t0 + (i + 1) * cfg.period_s - time.time()   # the chunk closes
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                if time.time() >= t0 + cfg.seconds:
                    break
                while sent - min(p.value for p in shared.progress.values()) > \
                        cfg.window * len(links):
                    await asyncio.sleep(0.0002)
            last = (pacing == "paced" and i + 1 >= round(cfg.seconds / cfg.period_s))
            if pacing == "saturated" and time.time() >= t0 + cfg.seconds - cfg.period_s:
                last = True
            if last:
                shared.stop_chunk.value = chunk
            if path == "ll":
                for link in links:
                    codes, rel = pools[link][chunk % POOL]
                    station.successes(link, codes, rel + tag_time)
                tag_time += int(cfg.period_s * 1e12)
                for h in station.flush(chunk):
                    body = h.to_dict(cfg.codec)
                    bus.publish(topics.herald(h.link), h.TYPE, body, sign_with=h.link)
                    if not payload_bytes:
                        payload_bytes = len(encode(Message(h.TYPE, "station", 10**6, body,
                                                           time.time()), KEY))
            else:
                for link in links:
                    data = bytearray(payload_bytes)
                    RAW_HEADER.pack_into(data, 0, time.time(), chunk)
                    await window.acquire()
                    task = asyncio.create_task(_raw_publish(raw, link, bytes(data), window))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            sent += len(links)
            chunk += 1
            i += 1
            if last:
                break
        await bus.drain(30)
        if pending:
            await asyncio.gather(*pending)
        shared.results.put(("station", path, pacing, {
            "cpu_s": time.process_time() - cpu0, "chunks": i, "payload_bytes": payload_bytes}))
        await sync(shared)     # phase end
    await sync(shared)         # ends settled
    await raw.__aexit__(None, None, None)
    await bus.close()
    runner.cancel()
    with contextlib.suppress(BaseException):
        await runner


async def _raw_publish(client: aiomqtt.Client, link: str, data: bytes,
                       window: asyncio.Semaphore) -> None:
    try:
        await client.publish(f"bench/raw/{link}", data, qos=1)
    finally:
        window.release()


# --------------------------------------------------------------------------- link ends


class End:
    """One link end process: its LinkEnds, bus handlers, persistence and phase bookkeeping."""

    def __init__(self, node: str, cfg: Config, shared: Shared, bus: NodeBus) -> None:
        self.node, self.cfg, self.shared, self.bus = node, cfg, shared, bus
        self.peer = ENDS[1 - ENDS.index(node)]
        # comm_delay: an EXPIRE is resent after 2 × 0.25 s without an ACK (as the daemon does)
        self.ends = {link: LinkEnd(node, self.peer, link, comm_delay=0.25,
                                   max_pair_age=cfg.max_pair_age,
                                   window_slack=cfg.window_slack) for link in cfg.link_ids}
        self.db: sqlite3.Connection | None = None
        # one writer thread: deltas reach SQLite in order, off the event loop
        self.writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")
        self.unsaved: set[str] = set()
        if cfg.persist != "none":
            self.db = sqlite3.connect(Path(cfg.workdir) / f"{node}.sqlite3",
                                      check_same_thread=False)
            self.db.execute("pragma journal_mode=wal")
            self.db.execute("pragma synchronous=full")   # as daemon/runtime/state.py
            self.db.execute("create table runs(link text, first_seq int, body text, "
                            "primary key (link, first_seq))")
            self.db.execute("create table link(link text primary key, body text)")
            for link, end in self.ends.items():
                self._store(link, end.snapshot())
        self.phase: tuple[str, str] | None = None
        self.lat_pub: list[float] = []
        self.lat_close: list[float] = []
        self.pairs = 0
        self.t_last = 0.0
        self.done_links: set[str] = set()
        self.done = asyncio.Event()
        self.persist_s = 0.0
        self.writes = 0

    def _store(self, link: str, snap: dict[str, Any]) -> None:
        """One transaction: deletes, then upserts of runs (a row each), then the scalars."""
        assert self.db is not None
        upserts = snap.pop("runs_upsert", None)
        deletes = snap.pop("runs_delete", [])
        if upserts is None:
            upserts = snap.pop("runs")
        with self.db:
            self.db.executemany("delete from runs where link = ? and first_seq = ?",
                                [(link, s) for s in deletes])
            self.db.executemany("insert or replace into runs values (?, ?, ?)",
                                [(link, r["first_seq"], json.dumps(r)) for r in upserts])
            self.db.execute("insert or replace into link values (?, ?)",
                            (link, json.dumps(snap)))

    def _write(self, link: str, delta: dict[str, Any]) -> None:
        t = time.thread_time()        # the writer thread's CPU: JSON, SQLite
        self._store(link, delta)
        self.persist_s += time.thread_time() - t

    async def save(self, link: str) -> None:
        """Store what changed at ``link`` (a delta) on the writer thread and wait for it."""
        t = time.thread_time()
        delta = self.ends[link].snapshot_delta()
        self.persist_s += time.thread_time() - t
        self.unsaved.discard(link)
        if delta is not None:
            self.writes += 1
            await asyncio.get_running_loop().run_in_executor(self.writer, self._write, link,
                                                             delta)

    async def commit(self, link: str, actions: list[Any]) -> None:
        """Write-ahead: if the call returned messages, persist, then send. With nothing to send
        ("coalesce"), the change waits for the next periodic save."""
        _, to_peer = split_actions(actions)   # (no requests here: nothing goes up)
        if self.db is not None:
            if to_peer or self.cfg.persist == "batch":
                await self.save(link)
            else:
                self.unsaved.add(link)
        for m in to_peer:
            self.bus.publish(self.bus.topics.ll(self.peer), m.TYPE, m.to_dict(),
                             sign_with=self.peer)

    async def save_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.persist_interval_s)
            for link in list(self.unsaved):
                await self.save(link)

    def _arrived(self, link: str, chunk: int, ts: float, pairs: int) -> None:
        now = time.time()
        self.shared.progress[self.node].value += 1
        if self.phase is None:
            return
        t0 = self.shared.t0.value
        self.lat_pub.append(now - ts)
        if self.phase[1] == "paced":
            k = chunk - self.chunk0
            self.lat_close.append(now - (t0 + (k + 1) * self.cfg.period_s))
        self.pairs += pairs
        self.t_last = now
        if chunk == self.shared.stop_chunk.value:
            self.done_links.add(link)
            if len(self.done_links) == self.cfg.links:
                self.done.set()

    async def on_herald(self, topic: Any, msg: Message) -> None:
        h = Herald.from_dict(msg.body)
        end = self.ends[h.link]
        before = end.stats()["heralds_accepted_total"]
        actions = end.on_herald(h, time.monotonic())
        self._arrived(h.link, h.chunk, msg.ts, end.stats()["heralds_accepted_total"] - before)
        await self.commit(h.link, actions)

    async def on_ll(self, topic: Any, msg: Message) -> None:
        m = message_from_dict({**msg.body, "type": msg.type})
        end = self.ends[m.link]
        if isinstance(m, Expire):
            actions = end.on_expire(m, time.monotonic())
        elif isinstance(m, ExpireAck):
            actions = end.on_expire_ack(m, time.monotonic())
        else:
            return
        await self.commit(m.link, actions)

    def on_raw(self, link: str, payload: bytes) -> None:
        ts, chunk = RAW_HEADER.unpack_from(payload, 0)
        self._arrived(link, chunk, ts, self.cfg.pairs)

    async def tick_loop(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            for link, end in self.ends.items():
                actions = end.tick(time.monotonic())
                if actions:
                    await self.commit(link, actions)


async def end_main(node: str, cfg: Config, host: str, port: int, shared: Shared) -> None:
    topics = Topics(NET, node)
    links = cfg.link_ids
    peer = ENDS[1 - ENDS.index(node)]
    bus = NodeBus(topics, host, port, keys={**{link: KEY for link in links}, peer: KEY},
                  heralds={link: "station" for link in links})
    end = End(node, cfg, shared, bus)
    bus.on("herald", end.on_herald)
    bus.on("ll", end.on_ll)
    runner = asyncio.create_task(bus.run())
    ticker = asyncio.create_task(end.tick_loop())
    saver = asyncio.create_task(end.save_loop())
    raw = aiomqtt.Client(host, port, identifier=f"{node}-raw", max_inflight_messages=64)
    await raw.__aenter__()
    await raw.subscribe([(f"bench/raw/{link}", 1) for link in links])

    async def raw_loop() -> None:
        async for m in raw.messages:
            end.on_raw(str(m.topic).rsplit("/", 1)[-1], bytes(m.payload))  # type: ignore[arg-type]

    raw_task = asyncio.create_task(raw_loop())
    await bus.wait_connected(10)
    await sync(shared)
    chunk0 = 0
    for path, pacing in cfg.phases():
        end.phase = (path, pacing)
        end.chunk0 = chunk0  # type: ignore[attr-defined]
        end.lat_pub, end.lat_close, end.pairs = [], [], 0
        end.done_links, end.done = set(), asyncio.Event()
        end.persist_s, end.writes = 0.0, 0
        await sync(shared)
        cpu0 = time.process_time()
        t0 = shared.t0.value
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(end.done.wait(), cfg.seconds + 30)
        shared.results.put((node, path, pacing, {
            "cpu_s": time.process_time() - cpu0, "pairs": end.pairs,
            "duration_s": max(end.t_last - t0, 1e-9), "complete": end.done.is_set(),
            "lat_pub_ms": [x * 1e3 for x in end.lat_pub],
            "lat_close_ms": [x * 1e3 for x in end.lat_close],
            "persist_s": end.persist_s, "writes": end.writes}))
        end.phase = None
        chunk0 = shared.stop_chunk.value + 1
        await sync(shared)
    # settle: every EXPIRE acknowledged, at both ends
    deadline = time.monotonic() + 10
    while any(e.unacked_expires() for e in end.ends.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    inv = {}
    for link, e in end.ends.items():
        seqs = e.inventory_seqs()
        inv[link] = {"n": int(seqs.size), "sha256": hashlib.sha256(seqs.tobytes()).hexdigest(),
                     "first": int(seqs[0]) if seqs.size else None,
                     "last": int(seqs[-1]) if seqs.size else None, "stats": e.stats()}
    shared.results.put((node, "final", "", {"inventory": inv, "bus": bus.metrics()}))
    await sync(shared)
    raw_task.cancel()
    ticker.cancel()
    saver.cancel()
    with contextlib.suppress(BaseException):
        await raw.__aexit__(None, None, None)
    await bus.close()
    runner.cancel()
    end.writer.shutdown()
    for t in (raw_task, ticker, saver, runner):
        with contextlib.suppress(BaseException):
            await t


def worker(role: str, cfg: Config, host: str, port: int, shared: Shared,
           profile: str | None = None) -> None:
    coro = (station_main(cfg, host, port, shared) if role == "station"
            else end_main(role, cfg, host, port, shared))
    if not profile:
        asyncio.run(coro)
        return
    import cProfile
    with cProfile.Profile() as prof:
        asyncio.run(coro)
    prof.dump_stats(Path(profile) / f"{role}.prof")


# --------------------------------------------------------------------------- parent


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each phase (s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--period-ms", type=float, default=10.0, help="chunk period (ms)")
    ap.add_argument("--rate", type=float, default=1e6, help="offered pairs/s per link (paced)")
    ap.add_argument("--pairs", type=int, default=0, help="pairs per chunk (default rate×period)")
    ap.add_argument("--links", type=int, default=1)
    ap.add_argument("--codec", choices=("raw", "zlib"), default="raw")
    ap.add_argument("--persist", choices=("coalesce", "batch", "none"), default="coalesce",
                    help="store LinkEnd.snapshot_delta in SQLite before sending anything, and "
                         "otherwise every --persist-interval-ms (coalesce) or every batch")
    ap.add_argument("--persist-interval-ms", type=float, default=100.0)
    ap.add_argument("--window", type=int, default=8, help="saturated: chunks in flight")
    ap.add_argument("--max-pair-age", type=int, default=1 << 20,
                    help="LinkEnd window in sequence numbers (bounds the inventory)")
    ap.add_argument("--window-slack", type=int, default=-1,
                    help="LinkEnd window_slack (default max-pair-age / 8; 0: exact rule, an "
                         "EXPIRE each way on every batch once the window is full)")
    ap.add_argument("--profile", metavar="DIR", help="write cProfile stats of each process")
    args = ap.parse_args()
    period = args.period_ms / 1e3
    with tempfile.TemporaryDirectory(prefix="herald-bench-") as tmp:
        cfg = Config(args.seconds, args.repeats, period,
                     args.pairs or round(args.rate * period), args.links, args.codec,
                     args.persist, args.persist_interval_ms / 1e3, args.window,
                     args.max_pair_age,
                     args.max_pair_age // 8 if args.window_slack < 0 else args.window_slack, tmp)
        broker = Mosquitto(Path(tmp) / "mosquitto")
        # Per-message logging would make the broker the bottleneck: errors and warnings only.
        broker.config_path.write_text(broker.config_path.read_text().replace(
            "log_type all\n", "log_type error\nlog_type warning\n"))
        broker.start()
        ctx = mp.get_context("spawn")
        shared = Shared(ctx.Barrier(4), ctx.Value("d", 0.0, lock=False),
                        ctx.Value("q", -1, lock=False),
                        {n: ctx.Value("q", 0, lock=False) for n in ENDS}, ctx.Queue())
        procs = [ctx.Process(target=worker, args=(role, cfg, broker.host, broker.port, shared,
                                                  args.profile),
                             name=f"herald-bench-{role}") for role in ("station", *ENDS)]
        try:
            for p in procs:
                p.start()
            shared.barrier.wait(60)
            results: list[tuple[str, str, str, dict[str, Any]]] = []
            for _ in cfg.phases():
                shared.stop_chunk.value = -1
                shared.t0.value = time.time() + 0.2
                shared.barrier.wait(60)
                shared.barrier.wait(cfg.seconds + 90)
                for _ in range(3):
                    results.append(shared.results.get(timeout=30))
            shared.barrier.wait(60)
            finals = {}
            for _ in ENDS:
                node, *_, data = shared.results.get(timeout=30)
                finals[node] = data
            for p in procs:
                p.join(30)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            broker.stop()
    report(cfg, results, finals)


def report(cfg: Config, results: list[tuple[str, str, str, dict[str, Any]]],
           finals: dict[str, dict[str, Any]]) -> None:
    print(f"herald path over mosquitto (loopback), {cfg.links} link(s), chunk "
          f"{cfg.period_s * 1e3:g} ms × {cfg.pairs} pairs (paced: "
          f"{cfg.pairs / cfg.period_s / 1e6:.2f} M pairs/s/link offered), codec {cfg.codec}, "
          f"persist {cfg.persist}"
          + (f" every {cfg.persist_interval_s * 1e3:g} ms" if cfg.persist == "coalesce" else "")
          + f", window {cfg.max_pair_age} pairs (slack "
          f"{cfg.window_slack}), {cfg.repeats} × "
          f"{cfg.seconds:g} s per phase")
    payload = max(r[3]["payload_bytes"] for r in results if r[0] == "station")
    print(f"payload: {payload} bytes per herald message = {payload / cfg.pairs:.2f} bytes/pair "
          f"(signed JSON envelope; raw baseline sends the same bytes)")
    figures: dict[tuple[str, str], dict[str, float]] = {}
    for path in ("ll", "raw"):
        for pacing in ("paced", "saturated"):
            rows = [r for r in results if r[1] == path and r[2] == pacing]
            ends = [r[3] for r in rows if r[0] in ENDS]
            stations = [r[3] for r in rows if r[0] == "station"]
            rates = []
            for k in range(cfg.repeats):   # per repeat: the slower end
                per = [e for e in ends[2 * k:2 * k + 2]]
                rates.append(min(e["pairs"] / e["duration_s"] for e in per) / cfg.links)
            pairs_total = sum(e["pairs"] for e in ends) / len(ENDS)
            lat = [x for e in ends for x in e["lat_pub_ms"]]
            latc = [x for e in ends for x in e["lat_close_ms"]]
            f = {"rate": statistics.median(rates), "rates": rates,
                 "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99),
                 "c50": pct(latc, 50), "c90": pct(latc, 90), "c99": pct(latc, 99),
                 "cpu_station": sum(s["cpu_s"] for s in stations) / pairs_total * 1e6,
                 "cpu_end": sum(e["cpu_s"] for e in ends) / len(ENDS) / pairs_total * 1e6,
                 "persist": sum(e["persist_s"] for e in ends) / len(ENDS) / pairs_total * 1e6,
                 "writes": sum(e["writes"] for e in ends) / len(ENDS) / cfg.repeats,
                 "complete": all(e["complete"] for e in ends)}
            figures[(path, pacing)] = f
            name = "link layer" if path == "ll" else "raw QoS-1 "
            print(f"\n{name} {pacing:9s}: {f['rate'] / 1e6:.3f} M pairs/s/link (median; runs "
                  f"{', '.join(f'{r / 1e6:.3f}' for r in rates)})"
                  + ("" if f["complete"] else "  [INCOMPLETE: a phase timed out]"))
            print(f"  latency publish→applied  p50 {f['p50']:.2f}  p90 {f['p90']:.2f}  "
                  f"p99 {f['p99']:.2f} ms")
            if pacing == "paced":
                print(f"  latency chunk close→applied  p50 {f['c50']:.2f}  p90 {f['c90']:.2f}"
                      f"  p99 {f['c99']:.2f} ms")
            print(f"  CPU per pair: station {f['cpu_station'] * 1e3:.0f} ns, each end "
                  f"{f['cpu_end'] * 1e3:.0f} ns"
                  + (f" (of which persistence {f['persist'] * 1e3:.0f} ns; "
                     f"{f['writes']:.0f} SQLite transactions per end per run)"
                     if path == "ll" and cfg.persist != "none" else ""))
    ll, raw = figures[("ll", "saturated")], figures[("raw", "saturated")]
    llp, rawp = figures[("ll", "paced")], figures[("raw", "paced")]
    print(f"\nlink layer / raw: capacity {ll['rate'] / raw['rate']:.2f}×, paced p99 latency "
          f"{llp['p99']:.2f} vs {rawp['p99']:.2f} ms, end CPU per pair "
          f"{llp['cpu_end'] / max(rawp['cpu_end'], 1e-12):.1f}×")
    a, b = finals["alice"]["inventory"], finals["bob"]["inventory"]
    for link in cfg.link_ids:
        same = {k: v for k, v in a[link].items() if k != "stats"} == {
            k: v for k, v in b[link].items() if k != "stats"}
        sa = a[link]["stats"]
        print(f"inventories {link}: {'AGREE' if same else 'DIFFER'} — alice {a[link]['n']} "
              f"pairs [{a[link]['first']}..{a[link]['last']}], bob {b[link]['n']} pairs "
              f"[{b[link]['first']}..{b[link]['last']}]; expected_seq {sa['expected_seq']}, "
              f"accepted {sa['heralds_accepted_total']}, expired {sa['pairs_expired_total']},"
              f" skipped {sa['seqs_skipped_total']}, unacked {sa['expires_unacked']}")
    for node in ENDS:
        m = finals[node]["bus"]
        print(f"bus {node}: published {m['published']}, received {m['received']}, "
              f"rejected {m['rejected']}, handler errors {m['handler_errors']}, "
              f"reconnects {m['reconnects']}")
    print(json.dumps({"config": asdict(cfg) | {"workdir": None}, "figures": {
        f"{p}/{q}": {k: v for k, v in f.items()} for (p, q), f in figures.items()}},
        default=float))


if __name__ == "__main__":
    main()
