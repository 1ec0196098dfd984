"""Herald flood: a node's memory, drops and latency when heralds arrive at 10× its capacity.

Real parts on loopback: a mosquitto (tests/support/mosquitto.py; per-message logging off,
``$SYS`` every second), two memory daemons ``alice`` and ``bob`` (``python -m qnode.daemon.cli
run`` through tests/support/daemon_harness.py, the config of tests/system/test_daemon_k_link.py:
one K link, capacity 100 000 pairs) and the herald station, played here as that test's ``Station``
does: a ``NodeBus`` for node ``station`` with the link key and the station's identity key,
``HeraldStation`` numbering the successes, one signed ``HERALD`` of ``--pairs`` successes per
chunk.

Phases (one line per end about every 2 s in all of them):

1. ``idle`` (5 s): no heralds; each daemon's RSS (``/proc/<pid>/status`` VmRSS) → idle RSS.
2. ``baseline`` (8 s): heralds at the normal rate (``--normal-rate`` batches/s, signed as they
   go) → the pre-flood herald latency.
3. ``capacity`` (10 s): the station publishes as fast as it can, but at most ``AHEAD``
   batches ahead of the slower end (its telemetry's ``expected_seq``), so the ends are
   saturated without a drop; the rate each end *handles* (accepted heralds / pairs per batch)
   over the last 8 s; the slower end's is the capacity C. The batches' successes are numbered
   beforehand (phase ``setup``, in worker processes: that is the slow part), each is signed as
   it is published (next id, ``ts`` now) by the flood's publisher (5.). Open-loop saturation
   would drop heralds
   at random at each end, and the EXPIREs of those gaps congest the ends' control traffic
   before the flood has even begun: C would measure that, not the herald path.
4. ``prepare``: heartbeats until the ends have settled, then no heralds while the flood's
   batches are made in worker processes: every one signed as the station would (HMAC with the
   link key, Ed25519 ``nodesig``), with the next message ids, chunk and sequence numbers, and
   its planned publish time as envelope ``ts``.
5. ``flood`` (``--duration`` s): ``--factor`` × C batches/s, published by a minimal MQTT 3.1.1
   client (pre-encoded QoS-1 PUBLISH packets on one TCP connection, PUBACKs counted; at most
   10 000 unacknowledged): Python MQTT clients top out near 10 000 messages/s on one core,
   below what a flood needs. The offered rate is the publisher's own count.
6. ``recovery`` (20 s): the normal rate again, signed as it goes; then ``settle``:
   heartbeats until both ends are at the station's counter with no EXPIRE unacknowledged (at
   most 60 s), SIGTERM, and both ends' SQLite inventories are compared (as
   tests/system/test_daemon_k_link.py does). If they differ, ``restart``: both daemons are started
   again without heralds (at most 45 s) and compared once more.

Figures come from the daemons' retained telemetry (every 0.25 s: ``bus`` — inbound queue depth
and bytes, ``dropped_incoming`` by topic kind, ``rejected`` by reason — and ``links`` —
``heralds_total``, ``herald_latency_ms_p50``/``_p99`` = receipt − envelope ``ts`` over the
interval, expiries), from ``/proc`` (RSS, VmHWM, CPU) and from mosquitto's ``$SYS`` topics.

    python benchmarks/flood.py [--duration 60] [--factor 10] [--pairs 100]
                               [--normal-rate 50] [--workdir DIR]

Prints figures; asserts nothing. Goals: RSS bounded within 2× the idle RSS, drops
counted, herald latency back to its pre-flood level within 5 s of the flood's end.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from qnode.daemon.bus.client import NodeBus  # noqa: E402
from qnode.daemon.bus.envelope import Message, decode, encode  # noqa: E402
from qnode.daemon.bus.identity import NodeSigner  # noqa: E402
from qnode.daemon.bus.inbound import DROP_OLDEST, KIND_CLASS  # noqa: E402
from qnode.daemon.bus.topics import Topics, parse_topic  # noqa: E402
from qnode.daemon.linklayer import (  # noqa: E402
    BELL_CODES,  # noqa: E402
    SEQ_MOD,
    HeraldStation,
    LinkEnd,
)
from qnode.daemon.runtime.state import StateStore  # noqa: E402

from support.daemon_harness import Daemon, identity, k_link_configs  # noqa: E402
from support.mosquitto import Mosquitto  # noqa: E402  (tests/support/mosquitto.py)

NET = "flood"
LINK = "alice-bob"
KEY = b"flood-bench-link-key-0123456789!"
ENDS = ("alice", "bob")
TELEMETRY_S = 0.25
PRINT_S = 2.0
SAMPLE_S = 0.25
AHEAD = 1000                       # capacity phase: batches the station may be ahead of an end
CAPACITY_BODIES = 60_000           # capacity phase: batches made beforehand (≤ 6000/s for 10 s)
CHUNK_PS = 10**10                  # station time per chunk (informative: the times of the pairs)
PSI = np.array([BELL_CODES["psi+"], BELL_CODES["psi-"]], np.uint8)
MiB = 1 << 20


# --------------------------------------------------------------------------- batches


def fill(station: HeraldStation, rng: np.random.Generator, pairs: int, t_ps: int) -> None:
    """Record one chunk's ``pairs`` successes (Ψ+/Ψ− at random, sorted times from ``t_ps``)."""
    if pairs:
        times = t_ps + np.cumsum(rng.integers(1, 2 * CHUNK_PS // pairs, pairs))
        station.successes(LINK, PSI[rng.integers(0, 2, pairs)], times)


@dataclass(frozen=True)
class Plan:
    """Where the flood's batches start: message id, absolute sequence number, chunk, station
    time; their planned publish times are ``t0 + k / rate``."""

    key_file: str
    pairs: int
    id0: int
    abs0: int
    chunk0: int
    t_ps0: int
    t0: float
    rate: float


def bodies(args: tuple[Plan, int, int]) -> list[dict[str, Any]]:
    """The HERALD bodies of batches ``first`` .. ``first + count`` of ``plan``: their
    successes numbered by a HeraldStation from the plan's counter (a worker process)."""
    plan, first, count = args
    station = HeraldStation()
    station.add_link(LINK, next_abs=plan.abs0 + first * plan.pairs)
    rng = np.random.default_rng(plan.abs0 + first)
    out = []
    for k in range(first, first + count):
        fill(station, rng, plan.pairs, plan.t_ps0 + k * CHUNK_PS)
        (batch,) = station.flush(plan.chunk0 + k)
        out.append(batch.to_dict())
    return out


def generate(args: tuple[Plan, int, int]) -> list[bytes]:
    """Batches ``first`` .. ``first + count`` of ``plan``, signed as the station signs, with
    the next message ids and their planned publish times as ``ts`` (a worker process)."""
    plan, first, count = args
    signer = NodeSigner.from_file(plan.key_file)
    return [encode(Message("HERALD", "station", plan.id0 + k, body, plan.t0 + k / plan.rate),
                   KEY, signer=signer)
            for k, body in enumerate(bodies(args), start=first)]


async def in_pool(pool: Any, fn: Callable[[Any], list[Any]], plan: Plan, n: int) -> list[Any]:
    """``fn`` over the ``n`` batches of ``plan``, in pieces across the pool, in order."""
    piece = max(1000, n // 64)
    parts = pool.map_async(fn, [(plan, k, min(piece, n - k)) for k in range(0, n, piece)])
    while not parts.ready():
        await asyncio.sleep(0.2)
    return [x for part in parts.get() for x in part]


def calibrate(args: tuple[int, int]) -> float:
    """Seconds per batch of ``pairs`` made by :func:`generate` here (``n`` throw-away batches
    with their own key)."""
    n, pairs = args
    with tempfile.TemporaryDirectory(prefix="flood-cal-") as tmp:
        identity(Path(tmp), "station")
        plan = Plan(str(Path(tmp) / "identity" / "station.key"), pairs, 0, 0, 0, 0,
                    time.time(), 1.0)
        t = time.perf_counter()
        generate((plan, 0, n))
        return (time.perf_counter() - t) / n


# --------------------------------------------------------------------------- raw publisher


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


class RawPublisher:
    """The least MQTT 3.1.1 a QoS-1 publisher needs: CONNECT, PUBLISH, PUBACK counting."""

    def __init__(self, host: str, port: int, client_id: str):
        self.host, self.port, self.client_id = host, port, client_id
        self.sent = 0
        self.acked = 0
        self._pid = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        cid = self.client_id.encode()
        var = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid  # clean, no ka
        self._writer.write(b"\x10" + _varint(len(var)) + var)
        await self._writer.drain()
        connack = await asyncio.wait_for(self._reader.readexactly(4), 10)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"broker refused the flood publisher: {connack!r}")
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._reader is not None
        buf = b""
        while True:
            data = await self._reader.read(1 << 16)
            if not data:
                return
            buf += data
            i = 0
            while True:           # whole packets: type byte, remaining length, body
                if i + 2 > len(buf):
                    break
                n, mult, j = 0, 1, i + 1
                while j < len(buf) and buf[j] & 0x80:
                    n += (buf[j] & 0x7F) * mult
                    mult <<= 7
                    j += 1
                if j >= len(buf):
                    break
                n += buf[j] * mult
                if j + 1 + n > len(buf):
                    break
                if buf[i] & 0xF0 == 0x40:
                    self.acked += 1
                i = j + 1 + n
            buf = buf[i:]

    def packet(self, topic: bytes, payload: bytes) -> bytes:
        self._pid = self._pid % 0xFFFF + 1
        body = len(topic).to_bytes(2, "big") + topic + self._pid.to_bytes(2, "big")
        return b"\x32" + _varint(len(body) + len(payload)) + body + payload

    async def flood(self, topic: str, payloads: list[bytes], rate: float, t0: float,
                    window: int = 10_000) -> int:
        """Publish ``payloads[k]`` at ``t0 + k / rate`` (wall clock), in order, at most
        ``window`` unacknowledged; behind schedule, as fast as the window allows. Returns how
        many were published."""
        assert self._writer is not None
        tb = topic.encode()
        n = len(payloads)
        i = 0
        while i < n:
            due = min(n, int((time.time() - t0) * rate) + 1,
                      i + window - (self.sent - self.acked))
            if due <= i:
                wait = (i / rate + t0) - time.time()
                await asyncio.sleep(min(max(wait, 0.0005), 0.01))
                continue
            upto = min(due, i + 2000)
            self._writer.write(b"".join(self.packet(tb, payloads[k]) for k in range(i, upto)))
            self.sent += upto - i
            i = upto
            await self._writer.drain()
        return i

    async def saturate(self, topic: str, body_list: list[dict[str, Any]],
                       sign: Callable[[dict[str, Any]], bytes], seconds: float,
                       ahead: Callable[[int], int]) -> int:
        """Sign and publish the bodies in order as fast as possible for ``seconds``, while
        ``ahead(published)`` (batches not yet applied by the slower end) is below
        :data:`AHEAD`. Returns how many were published."""
        assert self._writer is not None
        tb = topic.encode()
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline and i < len(body_list):
            room = min(AHEAD - ahead(i), 64, len(body_list) - i)
            if room <= 0:
                await asyncio.sleep(0.001)
                continue
            self._writer.write(b"".join(self.packet(tb, sign(b))
                                        for b in body_list[i:i + room]))
            self.sent += room
            i += room
            await self._writer.drain()
        return i

    async def wait_acked(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.acked < self.sent and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.write(b"\xe0\x00")      # DISCONNECT
                await self._writer.drain()
                self._writer.close()
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


# --------------------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) of ``pid``; {} when it is gone."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(rest.split()[0])
    return out


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine, all cores (/proc/stat)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        return (sum(f[:8]) - f[3] - f[4]) / tick, f[7] / tick   # all but idle and iowait
    return float("nan"), float("nan")


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (s)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return float("nan")


# --------------------------------------------------------------------------- monitor


@dataclass
class Record:
    """One telemetry record of an end, as received."""

    t: float                      # the daemon's wall clock when built
    body: dict[str, Any]

    @property
    def link(self) -> dict[str, Any]:
        return self.body.get("links", {}).get(LINK, {})

    @property
    def bus(self) -> dict[str, Any]:
        return self.body.get("bus", {})


@dataclass
class Phase:
    name: str
    t0: float
    t1: float = math.inf
    offered0: int = 0
    offered1: int = 0
    cpu0: dict[str, float] = field(default_factory=dict)
    cpu1: dict[str, float] = field(default_factory=dict)


class Monitor:
    """Telemetry and ``$SYS`` subscriber, RSS sampler and the 2-second printer."""

    def __init__(self, port: int, pids: dict[str, int], offered: Callable[[], int]):
        self.port = port
        self.pids = pids                     # alice, bob, broker, bench
        self.offered = offered
        self.records: dict[str, list[Record]] = {n: [] for n in ENDS}
        self.sys: dict[str, str] = {}
        self.rss: list[tuple[float, str, dict[str, int]]] = []   # (wall, phase, KiB by name)
        self.phases: list[Phase] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._last_print: tuple[float, int, dict[str, Record | None], dict[str, float]] | None \
            = None

    # phases ------------------------------------------------------------------------------
    @property
    def phase(self) -> str:
        return self.phases[-1].name if self.phases else "start"

    def cpu(self) -> dict[str, float]:
        busy, steal = machine_cpu()
        return {**{n: cpu_s(p) for n, p in self.pids.items()}, "machine": busy, "steal": steal}

    def begin(self, name: str) -> Phase:
        now, off, cpu = time.time(), self.offered(), self.cpu()
        if self.phases and self.phases[-1].t1 == math.inf:   # not ended yet
            last = self.phases[-1]
            last.t1, last.offered1, last.cpu1 = now, off, cpu
        self.phases.append(Phase(name, now, offered0=off, cpu0=cpu))
        return self.phases[-1]

    def end(self) -> None:
        last = self.phases[-1]
        last.t1, last.offered1, last.cpu1 = time.time(), self.offered(), self.cpu()

    def get(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    # tasks -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.client = aiomqtt.Client("127.0.0.1", self.port, identifier="flood-monitor",
                                     clean_session=True)
        await self.client.__aenter__()
        await self.client.subscribe([(f"qnet/v1/{NET}/+/telemetry", 0), ("$SYS/broker/#", 0)])
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._sample()),
                       asyncio.create_task(self._print_loop())]

    async def stop_printing(self) -> None:
        printer = self._tasks.pop()
        printer.cancel()
        with contextlib.suppress(BaseException):
            await printer

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        with contextlib.suppress(Exception):
            await self.client.__aexit__(None, None, None)

    async def _listen(self) -> None:
        async for m in self.client.messages:
            topic = str(m.topic)
            payload = bytes(m.payload)  # type: ignore[arg-type]
            if topic.startswith("$SYS/"):
                self.sys[topic[len("$SYS/broker/"):]] = payload.decode(errors="replace")
                continue
            try:
                t = parse_topic(topic)
                body = dict(decode(payload, t).body)
            except ValueError:
                continue
            if t.node in self.records:
                self.records[t.node].append(Record(float(body.get("t", time.time())), body))

    async def _sample(self) -> None:
        while True:
            now = time.time()
            self.rss.append((now, self.phase, {
                n: proc_status(p).get("VmRSS", 0) for n, p in self.pids.items()}))
            await asyncio.sleep(SAMPLE_S)

    def latest(self, node: str) -> Record | None:
        recs = self.records[node]
        return recs[-1] if recs else None

    async def wait_telemetry(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.latest(n) is not None and LINK in self.latest(n).body.get("links", {})
                   for n in ENDS):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("no telemetry from the daemons")

    # printing ----------------------------------------------------------------------------
    HEADER = ("   t/s phase     offered/s broker | end    RSS/MiB cpu%  handled/s  recv/s "
              " inq msgs   KiB    out  dropped_incoming  lat p50/p99 ms  expired  unacked")

    async def _print_loop(self) -> None:
        print(self.HEADER, flush=True)
        while True:
            await asyncio.sleep(PRINT_S)
            self.print_line()

    def print_line(self) -> None:
        now, off, cpu = time.time(), self.offered(), self.cpu()
        latest = {n: self.latest(n) for n in ENDS}
        prev = self._last_print
        self._last_print = (now, off, latest, cpu)
        if prev is None:
            return
        t_prev, off_prev, rec_prev, cpu_prev = prev
        dt = max(now - t_prev, 1e-9)
        t_rel = now - self.phases[0].t0 if self.phases else 0.0
        rss = self.rss[-1][2] if self.rss else {}
        for i, node in enumerate(ENDS):
            r, r0 = latest[node], rec_prev[node]
            head = (f"{t_rel:6.1f} {self.phase:9s} {(off - off_prev) / dt:9.0f} "
                    f"{rss.get('broker', 0) / 1024:6.1f} |" if i == 0 else " " * 34 + "|")
            if r is None:
                print(f"{head} {node:6s} (no telemetry yet)")
                continue
            rate = recv = float("nan")
            if r0 is not None and r.t > r0.t:
                rate = (r.link.get("heralds_total", 0) - r0.link.get("heralds_total", 0)) \
                    / PAIRS[0] / (r.t - r0.t)
                recv = (r.bus.get("received", 0) - r0.bus.get("received", 0)) / (r.t - r0.t)
                if recv < 0 or rate < 0:        # the daemon restarted: counters from 0
                    rate = recv = float("nan")
            recs = [x for x in self.records[node] if r0 is None or x.t > r0.t]
            p50s = [x.link["herald_latency_ms_p50"] for x in recs
                    if "herald_latency_ms_p50" in x.link]
            p99s = [x.link["herald_latency_ms_p99"] for x in recs
                    if "herald_latency_ms_p99" in x.link]
            lat = (f"{statistics.median(p50s):7.1f}/{max(p99s):<7.1f}" if p50s else
                   f"{'-':>7s}/{'-':<7s}")
            drops = " ".join(f"{k}={v}" for k, v in sorted(
                r.bus.get("dropped_incoming", {}).items())) or "-"
            c = 100 * (cpu[node] - cpu_prev[node]) / dt if cpu_prev.get(node, 0) <= cpu[node] \
                else float("nan")
            print(f"{head} {node:6s} {rss.get(node, 0) / 1024:7.1f} {c:4.0f} {rate:9.0f} "
                  f"{recv:8.0f} {r.bus.get('inbound_queued', 0):8d} "
                  f"{r.bus.get('inbound_bytes', 0) / 1024:5.0f} {r.bus.get('pending', 0):6d}  "
                  f"{drops:16s}  {lat}  "
                  f"{r.link.get('pairs_expired_total', 0):7d}  "
                  f"{r.link.get('expires_unacked', 0):6d}", flush=True)

    # figures -----------------------------------------------------------------------------
    def in_phase(self, node: str, name: str, skip_s: float = 0.0) -> list[Record]:
        p = self.get(name)
        return [r for r in self.records[node] if p.t0 + skip_s < r.t <= p.t1]

    def handled(self, node: str, name: str, skip_s: float = 0.0) -> float:
        """Batches/s whose heralds ``node`` accepted during phase ``name``."""
        recs = self.in_phase(node, name, skip_s)
        if len(recs) < 2 or recs[-1].t <= recs[0].t:
            return float("nan")
        a, b = recs[0], recs[-1]
        return (b.link.get("heralds_total", 0) - a.link.get("heralds_total", 0)) / PAIRS[0] \
            / (b.t - a.t)

    def rss_of(self, name: str, phase: str | None = None) -> list[int]:
        return [s[name] for _, ph, s in self.rss if (phase is None or ph == phase) and s[name]]


PAIRS = [100]     # pairs per batch, for the monitor's rates (set from --pairs)


# --------------------------------------------------------------------------- the station


class Station:
    """tests/system/test_daemon_k_link.py's Station: a NodeBus for ``station`` with the link key and
    the station's identity key, HeraldStation numbering the successes."""

    def __init__(self, port: int, workdir: Path, pairs: int):
        self.pairs = pairs
        self.station = HeraldStation([LINK])
        self.bus = NodeBus(Topics(NET, "station"), "127.0.0.1", port, keys={LINK: KEY},
                           signer=identity(workdir, "station"))
        self.topic = self.bus.topics.herald(LINK)
        self.chunk = 0
        self.t_ps = 10**12
        self.rng = np.random.default_rng(1)
        self.published = 0            # batches published, live or by the flood publisher

    async def __aenter__(self) -> Station:
        self.runner = asyncio.create_task(self.bus.run())
        await self.bus.wait_connected(10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.bus.close(drain_timeout_s=5)
        self.runner.cancel()
        with contextlib.suppress(BaseException):
            await self.runner

    def send(self, pairs: int | None = None) -> None:
        """One chunk: its successes numbered and published as one signed HERALD."""
        fill(self.station, self.rng, self.pairs if pairs is None else pairs, self.t_ps)
        for batch in self.station.flush(self.chunk):
            self.bus.publish(self.topic, batch.TYPE, batch.to_dict(), sign_with=LINK)
        self.chunk += 1
        self.t_ps += CHUNK_PS
        self.published += 1

    async def paced(self, rate: float, seconds: float) -> None:
        t0 = time.monotonic()
        for k in range(max(1, round(rate * seconds))):
            delay = t0 + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.send()

    def plan(self, key_file: str, rate: float = 1.0, t0: float = 0.0) -> Plan:
        """The batches that follow, made elsewhere (see :meth:`advance`)."""
        return Plan(key_file, self.pairs, self.bus.ids.next_id, self.station.next_abs(LINK),
                    self.chunk, self.t_ps, t0, rate)

    def advance(self, plan: Plan, sent: int) -> None:
        """The first ``sent`` batches of ``plan`` were published: number on after them (the
        rest were never sent, so they leave no gap)."""
        self.bus.ids.next_id = plan.id0 + sent
        self.station = HeraldStation()
        self.station.add_link(LINK, next_abs=plan.abs0 + sent * plan.pairs)
        self.chunk = plan.chunk0 + sent
        self.t_ps = plan.t_ps0 + sent * CHUNK_PS

    def signer(self) -> Callable[[dict[str, Any]], bytes]:
        """Signs a body now, as the station's bus would (next id, ts now, both signatures)."""
        key, ids, node = self.bus.keys[LINK], self.bus.ids, self.bus.signer

        def sign(body: dict[str, Any]) -> bytes:
            return encode(Message("HERALD", "station", ids(), body, time.time()), key,
                          signer=node)
        return sign


# --------------------------------------------------------------------------- daemons


def configs(tmp: Path, port: int) -> dict[str, Path]:
    """Two memory daemons on one K link (as tests/system/test_daemon_k_link.py's)."""
    return k_link_configs(tmp, port, link=LINK, key=KEY, network=NET,
                          telemetry_interval_s=TELEMETRY_S)


def inventory(state_dir: Path) -> tuple[int, np.ndarray, dict[str, int]]:
    with StateStore(state_dir / "qnode.sqlite") as store:
        snap = store.load_links()[LINK]
    end, _ = LinkEnd.restore(snap, now=0.0)
    return end.expected_seq, end.inventory_seqs(), end.stats()


settle_seq = [0]    # the station's next_seq at the last settle


async def settled(mon: Monitor, station: Station, timeout_s: float) -> bool:
    """Heartbeats until both ends are at the station's counter, nothing queued, no EXPIRE
    unacknowledged (True), or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    target = settle_seq[0] = station.station.next_seq(LINK)
    while time.monotonic() < deadline:
        station.send(0)
        await asyncio.sleep(0.5)
        recs = [mon.latest(n) for n in ENDS]
        if all(r is not None and r.link.get("expected_seq") == target
               and r.link.get("expires_unacked") == 0 and r.bus.get("inbound_queued") == 0
               for r in recs):
            return True
    return False


# --------------------------------------------------------------------------- main


@dataclass
class Args:
    duration: float
    factor: float
    pairs: int
    normal_rate: float
    workdir: str | None
    broker_max_queued: int = 1000


async def run(args: Args, tmp: Path) -> None:
    PAIRS[0] = args.pairs
    # the broker's per-client backlog (the shipped config has 100 000)
    broker = Mosquitto(tmp / "mosquitto", max_queued_messages=args.broker_max_queued)
    # per-message logging would make the broker the bottleneck; $SYS every second
    broker.config_path.write_text(broker.config_path.read_text().replace(
        "log_type all\n", "log_type error\nlog_type warning\nlog_type notice\nsys_interval 1\n"))
    broker.start()
    cfg = configs(tmp, broker.port)
    daemons = {n: Daemon(cfg[n]) for n in ENDS}
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(2)
    mon: Monitor | None = None
    codes: dict[str, int] = {}
    try:
        for d in daemons.values():
            d.start()
        for d in daemons.values():
            await asyncio.to_thread(d.wait_for_log, "node ready", 60)
        async with Station(broker.port, tmp, args.pairs) as st:
            raw = RawPublisher("127.0.0.1", broker.port, "station-flood")
            pids = {n: d.proc.pid for n, d in daemons.items() if d.proc is not None}
            pids |= {"broker": broker.proc.pid if broker.proc else 0, "bench": os.getpid()}
            mon = Monitor(broker.port, pids, lambda: st.published + raw.sent)
            await mon.start()
            print(f"herald flood: 2 memory daemons on K link {LINK} over mosquitto "
                  f"127.0.0.1:{broker.port}; {args.pairs} pairs per HERALD batch; normal rate "
                  f"{args.normal_rate:g} batches/s; flood {args.factor:g}× capacity for "
                  f"{args.duration:g} s; telemetry every {TELEMETRY_S} s; workdir {tmp}",
                  flush=True)
            await mon.wait_telemetry()
            try:
                await result(args, tmp, mon, st, raw, pool, daemons, broker, codes)
            finally:
                await raw.close()
    finally:
        pool.terminate()
        pool.join()
        if mon is not None:
            await mon.stop()
        for n, d in daemons.items():
            if d.proc is not None and d.proc.poll() is None:
                codes[n] = d.stop()
        broker.stop()


async def result(args: Args, tmp: Path, mon: Monitor, st: Station, raw: RawPublisher,
                 pool: Any, daemons: dict[str, Daemon], broker: Mosquitto,
                 codes: dict[str, int]) -> None:
    # 1. idle -----------------------------------------------------------------------------
    mon.begin("idle")
    await asyncio.sleep(5.0)
    # 2. baseline -------------------------------------------------------------------------
    mon.begin("baseline")
    await st.paced(args.normal_rate, 8.0)
    # 3. capacity: bodies made beforehand (numbering is the slow part), signed as published --
    mon.begin("setup")
    key_file = str(tmp / "identity" / "station.key")
    await st.bus.drain(10)
    cplan = st.plan(key_file)
    body_list = await in_pool(pool, bodies, cplan, CAPACITY_BODIES)
    await raw.connect()

    def ahead(published: int) -> int:
        """Batches the slower end has not applied, by its latest telemetry."""
        nxt = (cplan.abs0 + published * cplan.pairs) % SEQ_MOD
        seqs = [(nxt - mon.latest(nd).link.get("expected_seq", 0)) % SEQ_MOD  # type: ignore
                for nd in ENDS]
        return max(seqs) // cplan.pairs

    mon.begin("capacity")
    used = await raw.saturate(st.topic, body_list, st.signer(), 10.0, ahead)
    st.advance(cplan, used)
    await raw.wait_acked(10)
    mon.begin("prepare")
    await asyncio.sleep(2 * TELEMETRY_S + 0.2)   # the capacity phase's last records
    cap = {n: mon.handled(n, "capacity", skip_s=2.0) for n in ENDS}
    cap_phase = mon.get("capacity")
    cap_offered = (cap_phase.offered1 - cap_phase.offered0) / (cap_phase.t1 - cap_phase.t0)
    capacity = min(cap.values())
    if not math.isfinite(capacity) or capacity <= 0:
        print("no capacity figure (no telemetry during the capacity phase): stopping")
        return
    drops_cap = {n: sum(mon.latest(n).bus.get("dropped_incoming", {}).values()) for n in ENDS}
    print(f"capacity: alice {cap['alice']:.0f}, bob {cap['bob']:.0f} batches/s handled "
          f"(station offered {cap_offered:.0f}/s; drops so far alice {drops_cap['alice']}, bob "
          f"{drops_cap['bob']}) → C = {capacity:.0f} batches/s = {capacity * args.pairs:.0f} "
          f"pairs/s", flush=True)
    queued = [r.bus.get("inbound_queued", 0) for nd in ENDS
              for r in mon.in_phase(nd, "capacity", 2.0)]
    if used >= CAPACITY_BODIES or (queued and statistics.median(queued) < 20):
        print(f"  NOTE: the ends were often waiting for heralds (median inbound queue "
              f"{statistics.median(queued or [0]):.0f}; {used} of {CAPACITY_BODIES} batches "
              f"used): C may be a lower bound (station-limited)", flush=True)
    # 4. prepare: the ends catch up (heartbeats), then the flood's batches are made, signed,
    # numbered after the last heartbeat, with their planned publish times
    if not await settled(mon, st, 30.0):
        print("  NOTE: the ends had not settled before the flood", flush=True)
    rate = args.factor * capacity
    n = max(1, math.ceil(rate * args.duration))
    per = statistics.median(pool.map(calibrate, [(200, args.pairs)] * 2))
    est = n * per / 2
    t0 = time.time() + 1.5 * est + 4.0
    plan = st.plan(key_file, rate, t0)
    print(f"flood: {n} batches at {rate:.0f}/s, being signed in 2 processes "
          f"({per * 1e6:.0f} µs each, ~{est:.0f} s); starts at +{t0 - time.time():.0f} s",
          flush=True)
    payloads = await in_pool(pool, generate, plan, n)
    made = time.time()
    sizes = [len(p) for p in payloads[:1000]]
    print(f"  {len(payloads)} batches made ({sum(len(p) for p in payloads) / MiB:.0f} MiB, "
          f"{statistics.mean(sizes):.0f} bytes each); {t0 - made:.1f} s to spare", flush=True)
    wait = t0 - time.time()
    if wait > 0:
        await asyncio.sleep(wait)
    late = time.time() - t0
    # 5. flood ----------------------------------------------------------------------------
    mon.begin("flood")
    flood_sent = await raw.flood(st.topic, payloads, rate, t0)
    flood_end = time.time()
    await raw.wait_acked(10)
    st.advance(plan, flood_sent)
    del payloads
    # 6. recovery -------------------------------------------------------------------------
    mon.begin("recovery")
    await st.paced(args.normal_rate, 20.0)
    mon.begin("settle")
    ok = await settled(mon, st, 60.0)
    mon.end()
    mon.print_line()
    final = {nd: mon.latest(nd) for nd in ENDS}
    hwm = {nm: proc_status(p).get("VmHWM", 0) for nm, p in mon.pids.items()}
    for nd, d in daemons.items():
        codes[nd] = d.stop()
    inv = {nd: inventory(tmp / "state" / nd) for nd in ENDS}
    lost = {nd: sum(int(x) for x in re.findall(r"bus closing with (\d+) unacknowledged",
                                                d.log())) for nd, d in daemons.items()}
    again = None
    if not same_inventory(inv):
        again = await restart_check(mon, daemons, codes)
    broker_log = broker.log_path.read_text(errors="replace") if broker.log_path.exists() else ""
    await mon.stop_printing()
    summary(args, mon, capacity, cap, cap_offered, rate, n, raw, flood_sent, late, flood_end,
            ok, final, hwm, codes, inv, broker_log, lost, again)


def same_inventory(inv: dict[str, tuple[int, np.ndarray, dict[str, int]]]) -> bool:
    (sa, ia, _), (sb, ib, _) = inv["alice"], inv["bob"]
    return sa == sb and np.array_equal(ia, ib)


async def restart_check(mon: Monitor, daemons: dict[str, Daemon], codes: dict[str, int],
                        timeout_s: float = 45.0) -> tuple[float, bool, str]:
    """The ends differed at the stop: start both again (no heralds) and wait until neither has
    an EXPIRE unacknowledged; (seconds waited, settled, inventories after another SIGTERM)."""
    print("  the ends differ: restarting both (no heralds) to let the stored EXPIREs settle",
          flush=True)
    t0 = time.time()
    again = {nd: Daemon(d.config) for nd, d in daemons.items()}
    readies = {nd: d.log().count("node ready") for nd, d in daemons.items()}
    for nd, d in again.items():
        d.start()
        if d.proc is not None:
            mon.pids[nd] = d.proc.pid
    mon.begin("restart")
    stopped = False
    try:
        deadline = time.monotonic() + timeout_s
        ok = False
        while time.monotonic() < deadline and not ok:
            await asyncio.sleep(0.5)
            if any(d.log().count("node ready") <= readies[nd] for nd, d in again.items()):
                continue
            recs = [mon.latest(nd) for nd in ENDS]
            ok = all(r is not None and r.t > t0 and r.link.get("expires_unacked") == 0
                     and r.bus.get("inbound_queued") == 0 for r in recs) and \
                len({r.link.get("expected_seq") for r in recs if r is not None}) == 1
        mon.end()        # before the SIGTERM: the phase's CPU figures need the processes
        stopped = True
    finally:
        if not stopped:
            mon.end()
        for nd, d in again.items():
            if d.proc is not None:
                codes[f"{nd} (restart)"] = d.stop()
    waited = time.time() - t0
    inv = {nd: inventory(d.config.parent / "state" / nd) for nd, d in again.items()}
    return waited, ok, describe(inv)


def describe(inv: dict[str, tuple[int, np.ndarray, dict[str, int]]]) -> str:
    (sa, ia, _), (sb, ib, _) = inv["alice"], inv["bob"]
    text = (f"{'AGREE' if same_inventory(inv) else 'DIFFER'} — alice expected_seq {sa}, "
            f"{ia.size} pairs; bob expected_seq {sb}, {ib.size} pairs")
    if not same_inventory(inv):
        text += (f" (only at alice {np.setdiff1d(ia, ib).size}, only at bob "
                 f"{np.setdiff1d(ib, ia).size})")
    return text


def summary(args: Args, mon: Monitor, capacity: float, cap: dict[str, float],
            cap_offered: float, rate: float, n: int, raw: RawPublisher, flood_sent: int,
            late: float, flood_end: float, settled_ok: bool, final: dict[str, Record | None],
            hwm: dict[str, int], codes: dict[str, int],
            inv: dict[str, tuple[int, np.ndarray, dict[str, int]]], broker_log: str,
            lost: dict[str, int], again: tuple[float, bool, str] | None) -> None:
    fl = mon.get("flood")
    flood_s = max(fl.t1 - fl.t0, 1e-9)
    offered = flood_sent / max(flood_end - fl.t0, 1e-9)
    print("\n=== summary ===")
    print(f"setup: {args.pairs} pairs per batch; normal rate {args.normal_rate:g} batches/s "
          f"({args.normal_rate * args.pairs:.0f} pairs/s); telemetry every {TELEMETRY_S} s; "
          f"broker max_queued_messages {args.broker_max_queued}")
    print(f"capacity C (slower end, last 8 s of 10 s saturated): {capacity:.0f} batches/s "
          f"({capacity * args.pairs:.0f} pairs/s); alice {cap['alice']:.0f}, bob "
          f"{cap['bob']:.0f}; the station offered {cap_offered:.0f}/s")
    print(f"flood: target {args.factor:g} × C = {rate:.0f} batches/s for {args.duration:g} s "
          f"({n} batches); published {flood_sent} in {flood_end - fl.t0:.1f} s = "
          f"{offered:.0f}/s = {offered / capacity:.1f} × C"
          + ("" if offered >= 0.95 * rate else "  (SHORT of the target)")
          + f"; started {late:+.2f} s from plan; raw publisher: {raw.acked} of {raw.sent} "
          f"acknowledged by the broker")
    # per phase
    print(f"\nphase       s   offered/s | handled/s a / b | RSS MiB max a / b / broker "
          f"| cpu% a / b / broker / bench / machine (of {os.cpu_count()}00, steal) "
          f"| lat p50 / p99 ms (a; b)")
    for p in mon.phases:
        dur = max(p.t1 - p.t0, 1e-9)
        off = (p.offered1 - p.offered0) / dur
        h = [mon.handled(nd, p.name) for nd in ENDS]
        rss = [max(mon.rss_of(nm, p.name) or [0]) / 1024 for nm in (*ENDS, "broker")]
        cpu = [100 * (p.cpu1.get(nm, 0) - p.cpu0.get(nm, 0)) / dur
               for nm in (*ENDS, "broker", "bench", "machine", "steal")] if p.cpu1 \
            else [float("nan")] * 6
        lat = []
        for nd in ENDS:
            recs = mon.in_phase(nd, p.name)
            p50 = [r.link["herald_latency_ms_p50"] for r in recs
                   if "herald_latency_ms_p50" in r.link]
            p99 = [r.link["herald_latency_ms_p99"] for r in recs
                   if "herald_latency_ms_p99" in r.link]
            lat.append(f"{statistics.median(p50):.1f} / {max(p99):.1f}" if p50 else "-")
        print(f"{p.name:9s} {dur:5.1f} {off:9.0f} | {h[0]:7.0f} / {h[1]:<7.0f} | "
              f"{rss[0]:6.1f} / {rss[1]:6.1f} / {rss[2]:6.1f} | "
              f"{cpu[0]:4.0f} / {cpu[1]:4.0f} / {cpu[2]:4.0f} / {cpu[3]:4.0f} / "
              f"{cpu[4]:4.0f} ({cpu[5]:.0f}) | "
              f"{lat[0]}; {lat[1]}")
    # memory
    print("\nmemory (RSS sampled every 0.25 s; VmHWM = the kernel's peak):")
    for nd in ENDS:
        q_bytes = max((r.bus.get("inbound_bytes", 0) for r in mon.records[nd]), default=0)
        q_msgs = max((r.bus.get("inbound_queued", 0) for r in mon.records[nd]), default=0)
        idle = statistics.median(mon.rss_of(nd, "idle")) / 1024
        peak = max(x for p in mon.phases if p.name != "restart"
                   for x in mon.rss_of(nd, p.name) or [0]) / 1024
        peak_flood = max(mon.rss_of(nd, "flood") or [0]) / 1024
        peak_restart = max(mon.rss_of(nd, "restart") or [0]) / 1024
        print(f"  {nd}: idle {idle:.1f} MiB; peak {peak:.1f} MiB = {peak / idle:.2f} × idle "
              f"(goal ≤ 2×: {'met' if peak <= 2 * idle else 'NOT met'}); peak during the "
              f"flood {peak_flood:.1f} MiB; VmHWM {hwm[nd] / 1024:.1f} MiB"
              + (f"; after the restart {peak_restart:.1f} MiB" if peak_restart else "")
              + "; inbound queue peak "
              f"{q_bytes / MiB:.1f} MiB, {q_msgs} messages")
    b_idle = statistics.median(mon.rss_of("broker", "idle")) / 1024
    print(f"  broker: idle {b_idle:.1f} MiB; peak {max(mon.rss_of('broker')) / 1024:.1f} MiB; "
          f"VmHWM {hwm['broker'] / 1024:.1f} MiB")
    # drops
    print("\ndrops and rejections (whole run):")
    for nd in ENDS:
        r = final[nd]
        if r is None:
            continue
        dropped = r.bus.get("dropped_incoming", {})
        reasons = ", ".join(
            f"{k}: {v} ({KIND_CLASS.get(k, 'info')} class, "
            + ("the oldest dropped, superseded)" if KIND_CLASS.get(k, "info") in DROP_OLDEST
               else "the new one dropped, class queue full)")
            for k, v in sorted(dropped.items())) or "none"
        print(f"  {nd}: dropped_incoming {reasons}")
        print(f"  {nd}: bus rejected {r.bus.get('rejected', {}) or 'none'}; link_rejected "
              f"{r.body.get('link_rejected', {}) or 'none'}; herald_ts_implausible "
              f"{r.link.get('herald_ts_implausible_total', 0)}; stale heralds "
              f"{r.link.get('heralds_stale_total', 0)}; handler errors "
              f"{r.bus.get('handler_errors', 0)}; role task restarts "
              f"{r.body.get('role_restarts_total', 0)}; outgoing backlog peak "
              f"{max((x.bus.get('pending', 0) for x in mon.records[nd]), default=0)} messages")
    sysd = {k: mon.sys.get(k) for k in ("publish/messages/dropped", "store/messages/count",
                                        "store/messages/bytes", "messages/received",
                                        "messages/sent")}
    notices = broker_log.count("being dropped")
    print(f"  broker: $SYS {sysd}; 'messages are being dropped' notices: {notices}")
    # heralds accepted / expired
    print("\nlink layer at the end:")
    for nd in ENDS:
        r = final[nd]
        if r is not None:
            lk = r.link
            print(f"  {nd}: expected_seq {lk.get('expected_seq')}, heralds accepted "
                  f"{lk.get('heralds_total')} pairs ({lk.get('heralds_total', 0) / args.pairs:.0f}"
                  f" batches), expired {lk.get('pairs_expired_total')}, live "
                  f"{lk.get('pairs_live')}, EXPIREs unacked {lk.get('expires_unacked')}, "
                  f"resent {lk.get('expires_resent_total')}, pairs shed "
                  f"{lk.get('pairs_shed_total')}, sends refused (bus overloaded) "
                  f"{lk.get('send_overloaded_total')}")
    # latency
    base = {nd: [r.link["herald_latency_ms_p99"] for r in mon.in_phase(nd, "baseline", 1.0)
                 if "herald_latency_ms_p99" in r.link] for nd in ENDS}
    base50 = {nd: [r.link["herald_latency_ms_p50"] for r in mon.in_phase(nd, "baseline", 1.0)
                   if "herald_latency_ms_p50" in r.link] for nd in ENDS}
    print(f"\nherald latency (receipt − envelope ts, per {TELEMETRY_S} s telemetry record):")
    worst = 0.0
    for nd in ENDS:
        if not base[nd]:
            print(f"  {nd}: no baseline latency")
            continue
        b99, b50 = statistics.median(base[nd]), statistics.median(base50[nd])
        thr = max(2 * b99, b99 + 2.0)
        end_t = mon.get("settle").t1
        window = [r for r in mon.records[nd] if flood_end < r.t <= end_t]
        after = [r for r in window if "herald_latency_ms_p99" in r.link]
        back = None
        for i, r in enumerate(after):
            if all(x.link["herald_latency_ms_p99"] <= thr for x in after[i:]):
                back = r.t - flood_end
                break
        fl99 = [r.link["herald_latency_ms_p99"] for r in mon.in_phase(nd, "flood")
                if "herald_latency_ms_p99" in r.link]
        rec = [r for r in mon.in_phase(nd, "recovery", 5.0) if "herald_latency_ms_p99" in r.link]
        late = (window[-1].link.get("herald_ts_implausible_total", 0)
                - window[0].link.get("herald_ts_implausible_total", 0)) if window else 0
        if rec:
            rec50 = statistics.median([r.link["herald_latency_ms_p50"] for r in rec])
            rec99 = statistics.median([r.link["herald_latency_ms_p99"] for r in rec])
            recovery = (f"recovery (from +5 s) p50 {rec50:.1f} ms = {rec50 / b50:.2f} × "
                        f"pre-flood, p99 {rec99:.1f} ms = {rec99 / b99:.2f} ×")
        else:
            recovery = "recovery (from +5 s): no latency figure (no herald arrived within 60 s)"
        over = [f"+{r.t - flood_end:.1f} s {r.link['herald_latency_ms_p99']:.0f}"
                for r in after if r.link["herald_latency_ms_p99"] > thr]
        base_over = [f"{r.link['herald_latency_ms_p99']:.0f}"
                     for r in mon.in_phase(nd, "baseline", 1.0)
                     if r.link.get("herald_latency_ms_p99", 0) > thr]
        print(f"  {nd}: records over {thr:.1f} ms after the flood ({len(over)} of {len(after)}):"
              f" {', '.join(over[-12:]) or 'none'}; in the baseline {len(base_over)} of "
              f"{len(base[nd])}: {', '.join(base_over) or 'none'}")
        worst = max(worst, back if back is not None else math.inf)
        print(f"  {nd}: pre-flood p50 {b50:.1f} ms, p99 {b99:.1f} ms (median of records); "
              f"during the flood p99 up to {max(fl99, default=float('nan')):.0f} ms; "
              f"{recovery}; heralds > 60 s late after the flood (left out of the percentiles, "
              f"counted as herald_ts_implausible): {late}; back under {thr:.1f} ms "
              f"(max(2 × pre-flood p99, +2 ms)) for good "
              + (f"{back:.1f} s after the flood" if back is not None
                 else f"NEVER (within {end_t - flood_end:.0f} s)"))
    print(f"  latency back to pre-flood level: {worst:.1f} s after the flood (goal ≤ 5 s: "
          f"{'met' if worst <= 5 else 'NOT met'})")
    # agreement
    print(f"\nends after SIGTERM (exit codes alice {codes.get('alice')}, bob {codes.get('bob')};"
          f" settled before, within 60 s: {'yes' if settled_ok else 'NO'}): inventories "
          f"{describe(inv)}; the station's next_seq {settle_seq[0]}")
    print(f"  outgoing messages discarded at shutdown (log 'bus closing with N "
          f"unacknowledged'): alice {lost['alice']}, bob {lost['bob']}")
    if again is not None:
        waited, ok, text = again
        print(f"  after restarting both without heralds ({waited:.0f} s, EXPIREs "
              f"{'all acknowledged' if ok else 'still unacknowledged'}; exit codes "
              f"{codes.get('alice (restart)')}, {codes.get('bob (restart)')}): {text}")
    print(f"  (the flood lasted {flood_s:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="flood length (s)")
    ap.add_argument("--factor", type=float, default=10.0, help="flood rate / capacity")
    ap.add_argument("--pairs", type=int, default=100, help="pairs per HERALD batch")
    ap.add_argument("--normal-rate", type=float, default=50.0,
                    help="batches/s before and after the flood")
    ap.add_argument("--workdir", help="keep configs, logs and state here")
    ap.add_argument("--broker-max-queued", type=int, default=1000,
                    help="mosquitto max_queued_messages per client (shipped config: 1000)")
    ns = ap.parse_args()
    args = Args(ns.duration, ns.factor, ns.pairs, ns.normal_rate, ns.workdir,
                ns.broker_max_queued)
    if args.workdir:
        tmp = Path(args.workdir).resolve()
        tmp.mkdir(parents=True, exist_ok=True)
        asyncio.run(run(args, tmp))
        return
    with tempfile.TemporaryDirectory(prefix="flood-bench-") as d:
        asyncio.run(run(args, Path(d)))


if __name__ == "__main__":
    main()
