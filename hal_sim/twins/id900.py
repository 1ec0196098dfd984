"""A simulated ID Quantique ID900/ID1000 Time Controller on real ZeroMQ sockets.

What it serves (commands from ID Quantique's "Time Controller Series User Manual" §9/§10 and
IDQ's scripting examples, ``utils/common.py``):

* a **SCPI server** (REQ/REP, the real device's port 5555): ``*IDN?``, ``*RST``,
  ``DEVIce:RESolution?``, ``INPUt#:ENABle``, ``:THREshold`` (V or mV), ``:EDGE``, ``:COUPling``,
  ``:SELEct``, ``:COUNter?``, ``:COUNter:MODE``, ``:COUNter:RESEt``, ``DELAy#:VALUe`` (ps, or with a
  unit), ``RAW#:REF:LINK``, ``RAW#:SEND``, ``RAW#:ERRORS:CLEAR``; short or long forms, any case,
  ``;`` chaining within a block and ``;:`` across blocks, one reply line per query. Errors reply
  ``Error: <description>`` (the simulator's format: the manual does not give the real firmware's
  wording).
* a **DataLinkTarget** (DLT) service (REQ/REP, port 6060 on the real PC): ``start-stream
  --address A --channel C --stream-port P [--with-ref-index]`` → ``{"id": ...}``; ``stop --id``;
  ``status --id`` (``acquisitions_count``, ``errors``, ``inactivity`` s, ``timestamps_count``);
  ``list``; failures → ``{"error": {"description": ...}}``.
* **timestamp streams**: for each started stream a ZMQ PAIR socket connected to the client's
  ``tcp://127.0.0.1:P`` carries little-endian ``uint64`` ps timestamps (or ``(uint64 ts, uint64
  ref index)`` pairs, ref index 0, with ``--with-ref-index``), one message per simulation slice.

The tags are those of one node of a tag source (:class:`~qnode.hal_sim.twins.tagger.TagSource`): a
:class:`~qnode.hal_sim.PhotonStreamSimulator` (M-type analyzer node), a
:class:`~qnode.hal_sim.physics.heralding.HeraldingSimulator` (K-type station) or a
:class:`~qnode.hal_sim.twins.tagger.NodeFeed` (one node of a simulator shared with other taggers),
its channels mapped to inputs 1–4 (``channel_map``, default: the node's channels in ascending order
→ 1, 2, …). The simulated clock runs while at least one ``RAW#:SEND`` is ON (time 0 = the first such
command for a simulator of its own; a shared one runs while any of its taggers sends, and a tagger
that stops sending detaches from it); a chained ``RAW1:SEND ON;:RAW2:SEND ON`` switches several
outputs at one instant, so no channel misses the start. An input's tags are counted
(``INPUt#:COUNter?``, cumulative since ``:RESEt``; the MODE is stored, not modelled) while it is
enabled, and streamed when it is enabled, its RAW output sends and a DLT stream exists for it.
Delays and thresholds are state only: the RAW outputs carry the inputs' own timestamps. Tags at
negative node time (a clock offset) cannot be sent as uint64 and are dropped (``dropped_negative``).
A slow client is met with back-pressure (the simulator waits), never with loss. ``pace``: ``None``
as fast as possible, 1.0 real time, 2.0 twice as fast, counted from the moment the outputs
(re)started sending.

Fault injection on the SCPI server (:class:`ScpiFaults`, take effect at once): slow, dropped and
garbled replies and a hang (as :class:`qnode.hal_sim.twins.serve.Faults`), ``device_error`` (the
next N replies are error replies) and :meth:`SimulatedID900.restart` (the SCPI port closes and is
bound again). The server is a ROUTER socket: to the client it is the device's REP socket, but it may
drop, delay or withhold replies. On the streams, :meth:`SimulatedID900.stall_streams` cuts the tags
without closing anything (a stalled tagger: the sockets stay connected, SCPI and DLT keep answering,
the DLT's ``inactivity`` grows, and nothing arrives, not even dark counts) until it is called with
``False``.
"""
from __future__ import annotations

import heapq
import json
import re
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq

from .serve import Faults
from .tagger import TagSource, node_channels

N_INPUTS = 4
IDN = "ID Quantique,ID900,SIM-0001,hal_sim"


class ScpiError(Exception):
    """A command the simulated device rejects; its text is the error reply's description."""


# ------------------------------------------------------------------------------ SCPI state

def _node_matches(token: str, short: str, long: str) -> bool:
    """SCPI mnemonic match: the short form, the long form, or anything in between."""
    t = token.upper()
    return long.upper().startswith(t) and len(t) >= len(short)


def _on_off(value: str) -> bool:
    v = value.strip().upper()
    if v in ("ON", "1"):
        return True
    if v in ("OFF", "0"):
        return False
    raise ScpiError(f"expected ON or OFF, got {value!r}")


_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_VOLT_UNITS = {"": 1.0, "V": 1.0, "MV": 1e-3}
_TIME_UNITS = {"": 1, "PS": 1, "TB": 1, "NS": 1_000, "US": 1_000_000, "MS": 1_000_000_000,
               "S": 1_000_000_000_000}


def _quantity(value: str, units: dict, what: str) -> float:
    m = re.fullmatch(_NUMBER + r"\s*([A-Za-z]*)", value.strip())
    if m is None or m.group(2).upper() not in units:
        raise ScpiError(f"bad {what} {value!r}")
    return float(m.group(1)) * units[m.group(2).upper()]


@dataclass
class InputState:
    enabled: bool = False
    threshold_v: float = 0.0
    edge: str = "RISING"
    coupling: str = "DC"
    select: str = "UNSHAPED"
    counter_mode: str = "ACCU"
    count: int = 0
    delay_ps: int = 0
    raw_send: bool = False
    raw_ref: str = "NONE"


class Id900State:
    """The simulated device's settings and counters, and its SCPI interpreter (thread-safe)."""

    threshold_range_v = (-2.0, 2.0)
    delay_range_ps = (0, 1_000_000_000_000)

    def __init__(self, resolution: str = "HIRES"):
        self.lock = threading.Lock()
        self.resolution = resolution
        self.inputs = {n: InputState() for n in range(1, N_INPUTS + 1)}

    # -- used by the acquisition
    def sending(self) -> frozenset[int]:
        with self.lock:
            return frozenset(n for n, s in self.inputs.items() if s.raw_send)

    def enabled(self) -> frozenset[int]:
        with self.lock:
            return frozenset(n for n, s in self.inputs.items() if s.enabled)

    def count(self, n: int, tags: int) -> None:
        with self.lock:
            if self.inputs[n].enabled:
                self.inputs[n].count += tags

    # -- SCPI
    def execute(self, command: str) -> str:
        """Run one (possibly chained) command line; the reply has one line per query. The whole
        line is applied under the lock, so chained settings take effect at one instant."""
        with self.lock:
            lines: list[str] = []
            base: list[str] = []
            for segment in (s.strip() for s in command.split(";")):
                if not segment:
                    continue
                if segment.startswith(":"):
                    segment, base = segment[1:], []
                header, _, arg = segment.partition(" ")
                if header.startswith("*"):  # common commands stand outside the block tree
                    nodes = [header]
                else:
                    nodes = base + header.split(":")
                    base = nodes[:-1]
                reply = self._one(nodes, arg.strip(), segment)
                if reply is not None:
                    lines.append(reply)
            return "\n".join(lines)

    def _one(self, nodes: list[str], arg: str, segment: str) -> str | None:
        query = nodes[-1].endswith("?")
        if query:
            nodes = nodes[:-1] + [nodes[-1][:-1]]
        head = nodes[0].upper()
        if head == "*IDN" and query:
            return IDN
        if head == "*RST" and not query:
            self.inputs = {n: InputState() for n in self.inputs}
            return None
        m = re.fullmatch(r"([A-Za-z]+)(\d*)", nodes[0])
        if m is None:
            raise ScpiError(f"undefined header {segment!r}")
        word, number = m.group(1), m.group(2)
        rest = nodes[1:]
        if _node_matches(word, "DEVI", "DEVICE") and not number:
            if len(rest) == 1 and _node_matches(rest[0], "RES", "RESOLUTION") and query:
                return self.resolution
            raise ScpiError(f"undefined header {segment!r}")
        blocks = (("INPU", "INPUT"), ("DELA", "DELAY"), ("RAW", "RAW"))
        kind = next((s for s, lg in blocks if _node_matches(word, s, lg)), None)
        if kind is None or not rest:
            raise ScpiError(f"undefined header {segment!r}")
        n = int(number) if number else 1
        if n not in self.inputs:
            raise ScpiError(f"no block {word}{number} (1-{N_INPUTS})")
        s = self.inputs[n]
        handler = {"INPU": self._input, "DELA": self._delay, "RAW": self._raw}[kind]
        return handler(s, [r.upper() for r in rest], arg, query, segment)

    def _input(self, s: InputState, rest: list[str], arg: str, query: bool,
               segment: str) -> str | None:
        leaf = rest[0]
        if len(rest) == 1 and _node_matches(leaf, "ENAB", "ENABLE"):
            if query:
                return "ON" if s.enabled else "OFF"
            s.enabled = _on_off(arg)
            return None
        if len(rest) == 1 and _node_matches(leaf, "THRE", "THRESHOLD"):
            if query:
                return f"{s.threshold_v:g}V"
            v = _quantity(arg, _VOLT_UNITS, "threshold")
            lo, hi = self.threshold_range_v
            if not lo <= v <= hi:
                raise ScpiError(f"threshold {v:g} V out of range [{lo:g}, {hi:g}] V")
            s.threshold_v = v
            return None
        for short, long, attr, allowed in (("EDGE", "EDGE", "edge", ("RISING", "FALLING")),
                                           ("COUP", "COUPLING", "coupling", ("DC", "AC")),
                                           ("SELE", "SELECT", "select", ("UNSHAPED", "SHAPED"))):
            if len(rest) == 1 and _node_matches(leaf, short, long):
                if query:
                    return getattr(s, attr)
                value = arg.upper()
                if value not in allowed:
                    raise ScpiError(f"expected one of {allowed}, got {arg!r}")
                setattr(s, attr, value)
                return None
        if _node_matches(leaf, "COUN", "COUNTER"):
            if len(rest) == 1 and query:
                return str(s.count)
            if len(rest) == 2 and _node_matches(rest[1], "RESE", "RESET") and not query:
                s.count = 0
                return None
            if len(rest) == 2 and _node_matches(rest[1], "MODE", "MODE"):
                if query:
                    return s.counter_mode
                if arg.upper() not in ("CYCL", "ACCU"):
                    raise ScpiError(f"counter mode must be CYCL or ACCU, got {arg!r}")
                s.counter_mode = arg.upper()
                return None
        raise ScpiError(f"undefined header {segment!r}")

    def _delay(self, s: InputState, rest: list[str], arg: str, query: bool,
               segment: str) -> str | None:
        if len(rest) == 1 and _node_matches(rest[0], "VALU", "VALUE"):
            if query:
                return str(s.delay_ps)
            ps = _quantity(arg, _TIME_UNITS, "delay")
            lo, hi = self.delay_range_ps
            if not lo <= ps <= hi or ps != int(ps):
                raise ScpiError(f"delay {arg!r} out of range [{lo}, {hi}] ps")
            s.delay_ps = int(ps)
            return None
        raise ScpiError(f"undefined header {segment!r}")

    def _raw(self, s: InputState, rest: list[str], arg: str, query: bool,
             segment: str) -> str | None:
        if len(rest) == 1 and _node_matches(rest[0], "SEND", "SEND"):
            if query:
                return "ON" if s.raw_send else "OFF"
            s.raw_send = _on_off(arg)
            return None
        if rest[:2] == ["REF", "LINK"] and len(rest) == 2:
            if query:
                return s.raw_ref
            s.raw_ref = arg.upper()
            return None
        if (len(rest) == 2 and _node_matches(rest[0], "ERR", "ERRORS")
                and _node_matches(rest[1], "CLE", "CLEAR") and not query):
            return None
        raise ScpiError(f"undefined header {segment!r}")


# ------------------------------------------------------------------------------ REQ/REP servers

@dataclass
class ScpiFaults(Faults):
    """:class:`~qnode.hal_sim.twins.serve.Faults` plus ``device_error``: the next N replies are the
    device's error reply (``Error: <device_error_text>``)."""

    device_error: int = 0
    device_error_text: str = "simulated device error"
    _extra_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def clear(self) -> None:
        super().clear()
        with self._extra_lock:
            self.device_error = 0

    def device_error_reply(self) -> str | None:
        with self._extra_lock:
            if self.device_error > 0:
                self.device_error -= 1
                return f"Error: {self.device_error_text}"
            return None


class ReplyServer:
    """A REP-style text server on a ZMQ ROUTER socket, run by a background thread.

    ``handler`` maps a request to its reply. ``faults`` (optional) mangle replies. The port is
    chosen at construction (``port=0``: a free one) and kept across :meth:`restart`.
    """

    def __init__(self, handler: Callable[[str], str], *, name: str, host: str = "127.0.0.1",
                 port: int = 0, faults: ScpiFaults | None = None,
                 context: zmq.Context | None = None):
        self.handler = handler
        self.name = name
        self.host = host
        self.port = port
        self.faults = faults
        self.requests: list[str] = []
        self.context = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def start(self) -> None:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.port == 0:
            self.port = sock.bind_to_random_port(f"tcp://{self.host}")
        else:
            sock.bind(self.address)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(sock,), daemon=True,
                                        name=f"hal_sim-{self.name}")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def restart(self, downtime_s: float = 0.0) -> None:
        """Close the port (clients lose the connection), wait, bind the same port again."""
        self.stop()
        time.sleep(downtime_s)
        self.start()

    def _run(self, sock: zmq.Socket) -> None:
        late: list[tuple[float, int, list[bytes]]] = []  # (due, seq, frames)
        seq = 0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while late and late[0][0] <= now:
                    sock.send_multipart(heapq.heappop(late)[2])
                wait_ms = 50 if not late else max(0, min(50, int((late[0][0] - now) * 1000)))
                if not sock.poll(wait_ms, zmq.POLLIN):
                    continue
                frames = sock.recv_multipart()
                envelope, body = frames[:-1], frames[-1]
                request = body.decode("utf-8", errors="replace")
                self.requests.append(request)
                reply = self._reply(request)
                out, delay = (reply.encode(), 0.0) if self.faults is None else \
                    self.faults.apply(reply.encode())
                if out is None:
                    continue
                if delay > 0:
                    seq += 1
                    heapq.heappush(late, (time.monotonic() + delay, seq, envelope + [out]))
                else:
                    sock.send_multipart(envelope + [out])
        finally:
            sock.close(linger=0)

    def _reply(self, request: str) -> str:
        if self.faults is not None:
            error = self.faults.device_error_reply()
            if error is not None:
                return error
        return self.handler(request)


# ------------------------------------------------------------------------------ DLT and streams

@dataclass
class Stream:
    """One DLT timestamp stream: input ``channel`` to the client's PAIR socket on ``port``."""

    id: str
    channel: int
    port: int
    with_ref_index: bool
    sent: int = 0
    last_data: float = field(default_factory=time.monotonic)


class Acquisition:
    """Steps the photon simulator while a RAW output sends and streams each input's tags.

    Owns every PAIR socket (ZMQ sockets stay in one thread): streams registered by the DLT
    service are connected and closed here.
    """

    max_frame_tags = 65_536

    def __init__(self, sim: TagSource, node: str, channel_map: dict[int, int],
                 state: Id900State, *, duration_ps: int | None, pace: float | None,
                 host: str, context: zmq.Context):
        self.sim, self.node, self.channel_map, self.state = sim, node, channel_map, state
        self.duration_ps, self.pace, self.host, self.context = duration_ps, pace, host, context
        self.lock = threading.Lock()
        self.streams: dict[str, Stream] = {}
        self.finished = threading.Event()
        self.stalled = threading.Event()   # fault: nothing is streamed while set
        self.produced = {n: 0 for n in channel_map.values()}   # tags per input, all
        self.dropped_negative = 0
        self._sockets: dict[str, zmq.Socket] = {}
        self._stop = threading.Event()
        self._wall_start: float | None = None
        self._sim_start = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="hal_sim-id900-raw")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._detach()  # wakes a step that waits for another tagger of a shared simulator
        self._thread.join(timeout=5.0)

    def _detach(self) -> None:
        detach = getattr(self.sim, "detach", None)
        if detach is not None:
            detach()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                sending = self.state.sending()
                self._sync_sockets()
                if not sending or self.finished.is_set() or self.stalled.is_set():
                    # not sending (or stalled): this tagger's clock holds and, on a shared
                    # simulator, it misses the photons meanwhile; pace anew on restart
                    if self._wall_start is not None:
                        self._wall_start = None
                        self._detach()
                    self._stop.wait(0.02)
                    continue
                self._step(sending)
        finally:
            self._detach()
            for sock in self._sockets.values():
                sock.close(linger=0)
            self._sockets.clear()

    def _sync_sockets(self) -> None:
        with self.lock:
            wanted = dict(self.streams)
        for sid in [s for s in self._sockets if s not in wanted]:
            self._sockets.pop(sid).close(linger=0)
        for sid, stream in wanted.items():
            if sid not in self._sockets:
                sock = self.context.socket(zmq.PAIR)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(f"tcp://{self.host}:{stream.port}")
                self._sockets[sid] = sock

    def _step(self, sending: frozenset[int]) -> None:
        if self._wall_start is None:
            self._wall_start = time.monotonic()
            self._sim_start = self.sim.time_ps
        last = self.duration_ps is not None and self.sim.time_ps >= self.duration_ps
        block = (self.sim.flush() if last else self.sim.step()).blocks[self.node]
        enabled = self.state.enabled()
        with self.lock:
            streams = list(self.streams.values())
        for sim_channel, n in self.channel_map.items():
            times = block["time"][block["channel"] == sim_channel]
            negative = int(np.count_nonzero(times < 0))
            if negative:
                self.dropped_negative += negative
                times = times[times >= 0]
            if n not in enabled:
                continue
            self.produced[n] += times.size
            self.state.count(n, times.size)
            if n not in sending:
                continue
            for stream in streams:
                if stream.channel == n and stream.id in self._sockets:
                    self._send(self._sockets[stream.id], stream, times)
        if last:
            self.finished.set()
        elif self.pace is not None:
            due = self._wall_start + (self.sim.time_ps - self._sim_start) * 1e-12 / self.pace
            self._stop.wait(max(0.0, due - time.monotonic()))

    def _send(self, sock: zmq.Socket, stream: Stream, times: np.ndarray) -> None:
        for i in range(0, times.size, self.max_frame_tags):
            part = times[i:i + self.max_frame_tags].astype("<u8")
            if stream.with_ref_index:
                part = np.stack([part, np.zeros_like(part)], axis=1)
            data = part.tobytes()
            while not self._stop.is_set():  # back-pressure: wait for the client, never drop
                try:
                    sock.send(data, zmq.NOBLOCK)
                    break
                except zmq.Again:
                    sock.poll(50, zmq.POLLOUT)
            stream.sent += len(part)
            stream.last_data = time.monotonic()


class DataLinkTarget:
    """The DLT service's command interpreter (manual §10): text in, JSON out."""

    def __init__(self, acquisition: Acquisition):
        self.acquisition = acquisition
        self._next = 0

    def handle(self, request: str) -> str:
        try:
            return json.dumps(self._handle(request))
        except (ValueError, KeyError) as exc:
            return json.dumps({"error": {"description": str(exc).strip("'\"")}})

    def _handle(self, request: str) -> object:
        words = shlex.split(request)
        if not words:
            raise ValueError("empty command")
        verb, opts = words[0], self._options(words[1:])
        acq = self.acquisition
        if verb == "start-stream":
            channel = int(opts["channel"])
            port = int(opts["stream-port"])
            if channel not in range(1, N_INPUTS + 1):
                raise ValueError(f"channel must be 1-{N_INPUTS}, got {channel}")
            if "address" not in opts:
                raise ValueError("missing --address")
            with acq.lock:
                self._next += 1
                sid = f"{acq.host}:{5555 + self._next}"
                acq.streams[sid] = Stream(sid, channel, port, "with-ref-index" in opts)
            return {"id": sid}
        if verb == "stop":
            with acq.lock:
                if acq.streams.pop(opts["id"], None) is None:
                    raise ValueError(f"no acquisition with id {opts['id']}")
            return {}
        if verb == "status":
            with acq.lock:
                s = acq.streams.get(opts["id"])
            if s is None:
                raise ValueError(f"no acquisition with id {opts['id']}")
            return {"acquisitions_count": 1, "errors": 0,
                    "inactivity": round(time.monotonic() - s.last_data, 3),
                    "timestamps_count": s.sent}
        if verb == "list":
            with acq.lock:
                return sorted(acq.streams)
        raise ValueError(f"unknown command {verb!r}")

    @staticmethod
    def _options(words: list[str]) -> dict[str, str]:
        opts: dict[str, str] = {}
        i = 0
        while i < len(words):
            if not words[i].startswith("--"):
                raise ValueError(f"unexpected argument {words[i]!r}")
            key = words[i][2:]
            if i + 1 < len(words) and not words[i + 1].startswith("--"):
                opts[key] = words[i + 1]
                i += 2
            else:
                opts[key] = ""
                i += 1
        return opts


# ------------------------------------------------------------------------------ the device

class SimulatedID900:
    """The simulated Time Controller: SCPI server, DLT service and timestamp streams for node
    ``node`` of ``sim``, a :class:`~qnode.hal_sim.twins.tagger.TagSource` (see the module
    docstring).

    ``duration_ps``: emission time to simulate before the run ends (:attr:`finished` is then
    set; ``None`` runs forever). ``scpi_port``/``dlt_port``: 0 picks free ports (the real ones
    are 5555/6060). Use as a context manager, or :meth:`start`/:meth:`stop`.
    """

    def __init__(self, sim: TagSource, node: str, *,
                 duration_ps: int | None = None, channel_map: dict[int, int] | None = None,
                 pace: float | None = None, host: str = "127.0.0.1", scpi_port: int = 0,
                 dlt_port: int = 0, resolution: str = "HIRES",
                 context: zmq.Context | None = None):
        try:
            sim_channels = sorted(node_channels(sim, node))
        except ValueError as exc:
            raise ValueError(f"SimulatedID900: {exc}") from None
        if channel_map is None:
            channel_map = {c: i + 1 for i, c in enumerate(sim_channels)}
        if not set(channel_map.values()) <= set(range(1, N_INPUTS + 1)):
            raise ValueError(f"SimulatedID900: inputs must be 1-{N_INPUTS}, got {channel_map}")
        self.channel_map = dict(channel_map)
        context = context or zmq.Context.instance()
        self.state = Id900State(resolution)
        self.acquisition = Acquisition(sim, node, self.channel_map, self.state,
                                       duration_ps=duration_ps, pace=pace, host=host,
                                       context=context)
        self.faults = ScpiFaults()
        self.scpi = ReplyServer(self._scpi, name="id900-scpi", host=host, port=scpi_port,
                                faults=self.faults, context=context)
        self.dlt = ReplyServer(DataLinkTarget(self.acquisition).handle, name="id900-dlt",
                               host=host, port=dlt_port, context=context)
        self.host = host

    @property
    def scpi_address(self) -> str:
        return self.scpi.address

    @property
    def dlt_address(self) -> str:
        return self.dlt.address

    @property
    def finished(self) -> threading.Event:
        return self.acquisition.finished

    @property
    def produced(self) -> dict[int, int]:
        """Tags per input produced while it was enabled (what its counter counted)."""
        return dict(self.acquisition.produced)

    def start(self) -> SimulatedID900:
        self.scpi.start()
        self.dlt.start()
        self.acquisition.start()
        return self

    def stop(self) -> None:
        self.acquisition.stop()
        self.dlt.stop()
        self.scpi.stop()

    def restart(self, downtime_s: float = 0.0) -> None:
        """Restart the SCPI server: the port closes for ``downtime_s``, then is bound again."""
        self.scpi.restart(downtime_s)

    def stall_streams(self, stalled: bool = True) -> None:
        """Fault: cut (``True``) or restore (``False``) the timestamp streams without closing
        anything (module docstring). Takes effect within one simulation slice."""
        if stalled:
            self.acquisition.stalled.set()
        else:
            self.acquisition.stalled.clear()

    @property
    def streams_stalled(self) -> bool:
        return self.acquisition.stalled.is_set()

    def __enter__(self) -> SimulatedID900:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _scpi(self, request: str) -> str:
        try:
            return self.state.execute(request)
        except ScpiError as exc:
            return f"Error: {exc}"
