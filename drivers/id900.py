"""ID Quantique ID900/ID1000 Time Controller: SCPI control, DataLinkTarget streams, time tagger.

Sources: ID Quantique's "Time Controller Series User Manual" §9 (SCPI syntax: short or long
mnemonics, ``?`` queries, ``#`` block numbers, ``;`` chains within a block and ``;:``
across blocks, one reply line per query; time base 1 ps) and §10 (DataLinkTarget service), and
IDQ's scripting examples (``utils/common.py``: ZMQ REQ to ``tcp://<ip>:5555``, ``send_string`` then
``recv``; DLT on port 6060, streams on a PAIR socket the client binds, ``4241 + channel`` in the
examples).

* :class:`ID900`: the SCPI side (identify, inputs, thresholds, delays in ps, counters,
  resolution, raw timestamp outputs).
* :class:`DataLinkTarget`: the DLT service's commands (JSON replies).
* :class:`ID900Tagger`: a :class:`~qnode.drivers.tagger.TimeTagger` that streams the enabled
  inputs' timestamps and merges them into time-ordered TagBlocks.

Replies are checked: a reply with control characters or of the wrong form is a
:class:`~qnode.drivers.errors.GarbledReply`; a reply line starting ``Error`` (the device's error
reply; the manual does not give the real firmware's exact wording) or a DLT
``{"error": ...}`` is a :class:`~qnode.drivers.errors.DeviceError`.

**Merge and latency rule** (:class:`WatermarkMerger`). Each input arrives on its own stream, so a
tag is released only when no earlier tag can still come: the *watermark* is the smallest "latest
timestamp seen" over the inputs, and every buffered tag with ``time < watermark`` is merged
(``qnode.native.merge_channels``; equal times ordered by input) and yielded; the rest waits for
the next chunk. An input that has sent nothing for ``max_latency_s`` (wall clock) is treated as
having nothing older than the others and is left out of the minimum, so a dark input cannot stall
the output for more than ``max_latency_s``; if every input is silent that long, everything buffered
is released. A tag that then arrives older than what was already released cannot be placed in
time order: it is dropped and counted in :attr:`ID900Tagger.late_tags` (with a warning). The
watermark never decreases, so the output is time-ordered across chunk boundaries.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from typing import NoReturn
from urllib.parse import urlsplit

import numpy as np
import zmq

from qnode.native import TagBlock, merge_channels

from .driver import Driver
from .errors import DeviceError, GarbledReply
from .tagger import TimeTagger
from .zmq_transport import ZmqReqTransport

log = logging.getLogger(__name__)

SCPI_PORT = 5555
DLT_PORT = 6060
INPUTS = (1, 2, 3, 4)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _endpoint(address: str, port: int) -> str:
    """``tcp://host:port`` from a bare host or a full endpoint."""
    return address if "://" in address else f"tcp://{address}:{port}"


def _check_input(n: int) -> int:
    if n not in INPUTS:
        raise ValueError(f"ID900 input must be one of {INPUTS}, got {n!r}")
    return n


class ID900(Driver):
    """SCPI control of an ID900/ID1000 Time Controller (the user manual's §9).

    ``address``: the device's host (port 5555 is added), a ``tcp://host:port`` endpoint, or a
    ready :class:`~qnode.drivers.zmq_transport.ZmqReqTransport`. ``timeout_s`` (s) and other
    keywords go to the transport. Thread-safe: every call holds the transport's lock.
    """

    def __init__(self, address: str | ZmqReqTransport, *, name: str = "ID900",
                 timeout_s: float = 1.0, **transport_options: object):
        if isinstance(address, ZmqReqTransport):
            self.transport = address
        else:
            self.transport = ZmqReqTransport(_endpoint(address, SCPI_PORT), instrument=name,
                                             timeout_s=timeout_s,
                                             **transport_options)  # type: ignore[arg-type]
        self.name = name

    @classmethod
    def from_config(cls, address: str, *, name: str, timeout_s: float,
                    **options: object) -> ID900:
        """The Time Controller at ``address``, named ``ID900 <name>`` in its errors."""
        return cls(address, name=f"ID900 {name}", timeout_s=timeout_s, **options)

    # -- life cycle
    @property
    def host(self) -> str:
        """The device's host name or IP (what the DLT's ``--address`` wants)."""
        return urlsplit(self.transport.address).hostname or self.transport.address


    # -- raw access
    def command(self, command: str) -> str:
        """Send one (possibly chained) SCPI line and return its checked reply ("" for settings).

        Raises DeviceError on an error reply, GarbledReply on a mangled one, InstrumentTimeout
        or Disconnected from the transport."""
        reply = self.transport.query(command)
        if _CONTROL.search(reply):
            self.transport.mark_stale()
            raise self.transport.error(GarbledReply, "control characters in reply", command,
                                       reply=reply)
        for line in reply.splitlines():
            if line.strip().lower().startswith("error"):
                raise self.transport.error(DeviceError, f"device error: {line.strip()}",
                                           command, code=line.strip())
        return reply.strip()

    def query_lines(self, command: str, n: int) -> list[str]:
        """A query answered by exactly ``n`` lines (one per queried block)."""
        lines = self.command(command).splitlines()
        if len(lines) != n:
            self._garbled(command, "\n".join(lines), f"expected {n} reply line(s)")
        return [line.strip() for line in lines]

    def _garbled(self, command: str, reply: str, why: str) -> NoReturn:
        self.transport.mark_stale()
        raise self.transport.error(GarbledReply, why, command, reply=reply)

    def _int(self, command: str) -> int:
        (reply,) = self.query_lines(command, 1)
        m = re.fullmatch(r"([-+]?\d+)\s*(?:ps|PS|TB)?", reply)
        if m is None:
            self._garbled(command, reply, "expected an integer")
        return int(m.group(1))

    def _bool(self, command: str) -> bool:
        (reply,) = self.query_lines(command, 1)
        if reply.upper() in ("ON", "1"):
            return True
        if reply.upper() in ("OFF", "0"):
            return False
        self._garbled(command, reply, "expected ON or OFF")
        raise AssertionError  # unreachable

    # -- device (manual §9: *IDN?, DEVIce:RESolution?)
    def identify(self) -> str:
        """``*IDN?``: manufacturer, model, serial, firmware (comma separated)."""
        (reply,) = self.query_lines("*IDN?", 1)
        if reply.count(",") < 1 or not all(reply.split(",")):
            self._garbled("*IDN?", reply, "expected comma-separated identification")
        return reply

    def resolution(self) -> str:
        """``DEVIce:RESolution?``, e.g. ``HIRES``."""
        (reply,) = self.query_lines("DEVIce:RESolution?", 1)
        if not re.fullmatch(r"[A-Za-z0-9_]+", reply):
            self._garbled("DEVIce:RESolution?", reply, "expected a resolution name")
        return reply

    # -- inputs (INPU#:ENAB, :THRE, :COUNter)
    def enable_input(self, n: int, on: bool = True) -> None:
        """``INPUt#:ENABle ON|OFF``."""
        self.command(f"INPU{_check_input(n)}:ENAB {'ON' if on else 'OFF'}")

    def disable_input(self, n: int) -> None:
        self.enable_input(n, False)

    def input_enabled(self, n: int) -> bool:
        """``INPUt#:ENABle?``."""
        return self._bool(f"INPU{_check_input(n)}:ENAB?")

    def set_threshold(self, n: int, volts: float) -> None:
        """``INPUt#:THREshold <V>V`` (volts)."""
        self.command(f"INPU{_check_input(n)}:THRE {float(volts):g}V")

    def threshold(self, n: int) -> float:
        """``INPUt#:THREshold?`` in volts (a reply in mV is converted)."""
        command = f"INPU{_check_input(n)}:THRE?"
        (reply,) = self.query_lines(command, 1)
        m = re.fullmatch(rf"({_NUMBER})\s*(mV|V)?", reply, re.IGNORECASE)
        if m is None:
            self._garbled(command, reply, "expected a voltage")
        value = float(m.group(1))
        unit = (m.group(2) or "V").upper()
        return value / 1000 if unit == "MV" else value

    def counter(self, n: int) -> int:
        """``INPUt#:COUNter?``: the input's count (per the counter mode)."""
        return self._int(f"INPU{_check_input(n)}:COUN?")

    def counters(self, inputs: Iterable[int] = INPUTS) -> dict[int, int]:
        """Several counters in one batched read (``INPU1:COUN?;:INPU2:COUN?``, one line each)."""
        ns = [_check_input(n) for n in inputs]
        command = ";:".join(f"INPU{n}:COUN?" for n in ns)
        out = {}
        for n, line in zip(ns, self.query_lines(command, len(ns)), strict=True):
            if not re.fullmatch(r"\d+", line):
                self._garbled(command, line, "expected an integer count")
            out[n] = int(line)
        return out

    def reset_counter(self, n: int) -> None:
        """``INPUt#:COUNter:RESEt``."""
        self.command(f"INPU{_check_input(n)}:COUN:RESE")

    # -- delays (DELA#:VALU <ps>)
    def set_delay_ps(self, n: int, delay_ps: int) -> None:
        """``DELAy#:VALUe <ps>`` (integer picoseconds)."""
        if int(delay_ps) != delay_ps:
            raise ValueError(f"delay must be integer ps, got {delay_ps!r}")
        self.command(f"DELA{_check_input(n)}:VALU {int(delay_ps)}")

    def delay_ps(self, n: int) -> int:
        """``DELAy#:VALUe?`` in ps."""
        return self._int(f"DELA{_check_input(n)}:VALU?")

    # -- raw timestamp outputs (RAW#:REF:LINK, RAW#:SEND)
    def set_raw_reference(self, n: int, link: str = "NONE") -> None:
        """``RAW#:REF:LINK <block>|NONE`` (NONE: absolute timestamps)."""
        self.command(f"RAW{_check_input(n)}:REF:LINK {link}")

    def set_raw_send(self, inputs: Iterable[int], on: bool) -> None:
        """``RAW#:SEND ON|OFF`` for several outputs in one chained line (one instant)."""
        state = "ON" if on else "OFF"
        self.command(";:".join(f"RAW{_check_input(n)}:SEND {state}" for n in inputs))


class DataLinkTarget(Driver):
    """The DataLinkTarget service (manual §10): text commands over ZMQ REQ (port 6060), JSON
    replies; ``{"error": {"description": ...}}`` raises DeviceError.

    ``address``: host (port 6060 added), ``tcp://host:port`` or a ZmqReqTransport.
    """

    def __init__(self, address: str | ZmqReqTransport = "127.0.0.1", *,
                 name: str = "ID900 DataLinkTarget", timeout_s: float = 1.0,
                 **transport_options: object):
        if isinstance(address, ZmqReqTransport):
            self.transport = address
        else:
            self.transport = ZmqReqTransport(_endpoint(address, DLT_PORT), instrument=name,
                                             timeout_s=timeout_s,
                                             **transport_options)  # type: ignore[arg-type]

    def request(self, command: str) -> object:
        """Send one command; the decoded JSON reply."""
        reply = self.transport.query(command)
        try:
            value = json.loads(reply)
        except ValueError as exc:
            self.transport.mark_stale()
            raise self.transport.error(GarbledReply, "reply is not JSON", command,
                                       reply=reply) from exc
        if isinstance(value, dict) and "error" in value:
            err = value["error"]
            text = err.get("description", err) if isinstance(err, dict) else err
            raise self.transport.error(DeviceError, f"DLT error: {text}", command, code=str(text))
        return value

    def start_stream(self, tc_address: str, channel: int, stream_port: int, *,
                     with_ref_index: bool = False) -> str:
        """``start-stream --address --channel --stream-port [--with-ref-index]`` → stream id."""
        command = (f"start-stream --address {tc_address} --channel {_check_input(channel)} "
                   f"--stream-port {int(stream_port)}" + (" --with-ref-index"
                                                          if with_ref_index else ""))
        value = self.request(command)
        if not isinstance(value, dict) or not isinstance(value.get("id"), str):
            self.transport.mark_stale()
            raise self.transport.error(GarbledReply, "expected {\"id\": ...}", command,
                                       reply=json.dumps(value))
        return value["id"]

    def stop(self, stream_id: str) -> None:
        """``stop --id``."""
        self.request(f"stop --id {stream_id}")

    def status(self, stream_id: str) -> dict:
        """``status --id``: acquisitions_count, errors, inactivity, timestamps_count."""
        value = self.request(f"status --id {stream_id}")
        if not isinstance(value, dict):
            raise self.transport.error(GarbledReply, "expected a JSON object",
                                       f"status --id {stream_id}", reply=json.dumps(value))
        return value

    def list(self) -> list:
        """``list``: the running acquisitions."""
        value = self.request("list")
        return value if isinstance(value, list) else [value]


class WatermarkMerger:
    """Per-input sorted timestamp streams in, time-ordered TagBlocks out (rule in the module
    docstring). ``now`` arguments are ``time.monotonic()`` seconds."""

    def __init__(self, channels: Iterable[int], max_latency_s: float, now: float):
        self.channels = tuple(channels)
        self.max_latency_s = float(max_latency_s)
        self._pending: dict[int, list[np.ndarray]] = {c: [] for c in self.channels}
        self._latest: dict[int, int | None] = dict.fromkeys(self.channels)
        self._heard = dict.fromkeys(self.channels, now)
        self._released = np.iinfo(np.int64).min  # every tag < this was released
        self.pending = 0
        self.late_tags = 0

    def add(self, channel: int, times: np.ndarray, now: float) -> None:
        """Buffer sorted int64 ps ``times`` of ``channel``; ValueError if they go backwards."""
        if times.size == 0:
            return
        latest = self._latest[channel]
        if np.any(times[1:] < times[:-1]) or (latest is not None and times[0] < latest):
            raise ValueError("timestamps go backwards")
        late = int(np.searchsorted(times, self._released, side="left"))
        if late:
            self.late_tags += late
            log.warning("input %d: %d tag(s) arrived after the watermark passed them; dropped",
                        channel, late)
            times = times[late:]
        self._heard[channel] = now
        self._latest[channel] = int(times[-1]) if times.size else latest
        if times.size:
            self._pending[channel].append(times)
            self.pending += times.size

    def watermark(self, now: float) -> int:
        """Tags strictly before this time (ps) are final."""
        active = [c for c in self.channels if now - self._heard[c] <= self.max_latency_s]
        if active:
            known = [t for c in active if (t := self._latest[c]) is not None]
            if len(known) < len(active):
                return self._released
            mark = min(known)
        else:
            seen = [t for t in self._latest.values() if t is not None]
            mark = max(seen) + 1 if seen else self._released
        return max(mark, self._released)

    def pop(self, now: float, *, final: bool = False) -> TagBlock:
        """Merge and return every final tag (all buffered tags if ``final``)."""
        mark = np.iinfo(np.int64).max if final else self.watermark(now)
        out: dict[int, np.ndarray] = {}
        for c in self.channels:
            buffered = (np.concatenate(self._pending[c]) if len(self._pending[c]) > 1
                        else self._pending[c][0] if self._pending[c] else np.empty(0, np.int64))
            cut = buffered.size if final else int(np.searchsorted(buffered, mark, side="left"))
            out[c] = buffered[:cut]
            self._pending[c] = [buffered[cut:]] if cut < buffered.size else []
            self.pending -= cut
        if not final:
            self._released = mark
        block = merge_channels(out)
        if final and block.size:
            self._released = max(self._released, int(block["time"][-1]) + 1)
        return block


class ID900Tagger(TimeTagger):
    """The ID900's timestamp streams as one :class:`~qnode.drivers.tagger.TimeTagger`.

    :meth:`chunks` enables ``inputs`` (``INPU#:ENAB ON``, ``RAW#:REF:LINK NONE``), binds a ZMQ
    PAIR socket per input (``stream_ports`` ``{input: port}``, default: free ports on
    ``stream_host``; IDQ's examples use ``4241 + input``), asks the DLT for a stream per input,
    switches the raw outputs on in one chained command, and yields merged TagBlocks (channel =
    input number, time = device timestamp in ps) at least every ``chunk_interval_s`` (possibly
    empty) or when ``max_chunk_tags`` are ready. Merge and latency rule: see the module docstring
    (``max_latency_s``). It ends on :meth:`close`, or, if ``idle_end_s`` is set, once no input has
    sent anything for that long (everything buffered is then released). On the way out it
    switches the raw outputs off, stops the DLT streams and closes its sockets.

    ``dlt``: a :class:`DataLinkTarget` or its address (then the tagger owns and closes it).
    """

    #: frames read from one input's socket per poll round, before the others get their turn
    frames_per_poll = 64

    def __init__(self, device: ID900, dlt: DataLinkTarget | str, inputs: Iterable[int] = INPUTS,
                 *, stream_host: str = "127.0.0.1", stream_ports: dict[int, int] | None = None,
                 with_ref_index: bool = False, chunk_interval_s: float = 0.1,
                 max_chunk_tags: int = 1_000_000, max_latency_s: float = 0.5,
                 idle_end_s: float | None = None, context: zmq.Context | None = None):
        self.device = device
        self._own_dlt = not isinstance(dlt, DataLinkTarget)
        self.dlt: DataLinkTarget = dlt if isinstance(dlt, DataLinkTarget) \
            else DataLinkTarget(dlt, timeout_s=device.transport.timeout_s)
        self.inputs = tuple(sorted(_check_input(n) for n in inputs))
        self.stream_host = stream_host
        self.stream_ports = dict(stream_ports or {})
        self.with_ref_index = with_ref_index
        self.chunk_interval_s = chunk_interval_s
        self.max_chunk_tags = max_chunk_tags
        self.max_latency_s = max_latency_s
        self.idle_end_s = idle_end_s
        self.context = context or zmq.Context.instance()
        self.name = f"{device.name}@{device.host}"
        self.late_tags = 0
        self.stream_ids: dict[int, str] = {}
        self._closed = threading.Event()
        self._running = threading.Lock()
        self._gen: Generator[TagBlock, None, None] | None = None

    @property
    def channels(self) -> tuple[int, ...]:
        return self.inputs

    def chunks(self) -> Iterator[TagBlock]:
        gen = self._chunks()
        self._gen = gen
        return gen

    def close(self) -> None:
        """Stop the stream (from any thread); idempotent."""
        self._closed.set()
        gen = self._gen
        if gen is not None:
            try:
                gen.close()  # runs the clean-up now if the generator is suspended
            except ValueError:
                pass  # running in another thread: it sees _closed within one poll

    def _chunks(self) -> Generator[TagBlock, None, None]:
        if not self._running.acquire(blocking=False):
            raise RuntimeError(f"{self.name}: chunks() is already running")
        sockets: dict[int, zmq.Socket] = {}
        try:
            if self._closed.is_set():
                return
            self._start(sockets)
            yield from self._read(sockets)
        finally:
            self._stop(sockets)
            if self._own_dlt:
                self.dlt.close()
            self._running.release()

    def _start(self, sockets: dict[int, zmq.Socket]) -> None:
        """Configure inputs, bind one PAIR socket per input (into ``sockets``), start the DLT
        streams, then switch every raw output on at one instant."""
        d = self.device
        d.open()
        if self._own_dlt:
            self.dlt.open()
        d.command(";:".join(f"INPU{n}:ENAB ON;:RAW{n}:REF:LINK NONE" for n in self.inputs))
        for n in self.inputs:
            sock = self.context.socket(zmq.PAIR)
            sock.setsockopt(zmq.LINGER, 0)
            sockets[n] = sock
            port = self.stream_ports.get(n, 0)
            if port:
                sock.bind(f"tcp://{self.stream_host}:{port}")
            else:
                port = sock.bind_to_random_port(f"tcp://{self.stream_host}")
            self.stream_ids[n] = self.dlt.start_stream(d.host, n, port,
                                                      with_ref_index=self.with_ref_index)
        d.set_raw_send(self.inputs, True)

    def _read(self, sockets: dict[int, zmq.Socket]) -> Iterator[TagBlock]:
        poller = zmq.Poller()
        which = {}
        for n, sock in sockets.items():
            poller.register(sock, zmq.POLLIN)
            which[sock] = n
        now = time.monotonic()
        merger = WatermarkMerger(self.inputs, self.max_latency_s, now)
        last_yield = last_data = now
        while not self._closed.is_set():
            wait = self.chunk_interval_s - (time.monotonic() - last_yield)
            ready = poller.poll(max(0, min(50, int(wait * 1000))))
            now = time.monotonic()
            for sock, _ in ready:
                n = which[sock]
                for _ in range(self.frames_per_poll):  # fair to every input
                    try:
                        frame = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._add(merger, n, frame, now)
                    last_data = now
            self.late_tags = merger.late_tags
            if self.idle_end_s is not None and now - last_data >= self.idle_end_s:
                yield merger.pop(now, final=True)
                return
            if now - last_yield >= self.chunk_interval_s or merger.pending >= self.max_chunk_tags:
                last_yield = now
                yield merger.pop(now)
        block = merger.pop(time.monotonic(), final=True)
        if block.size:
            yield block

    def _add(self, merger: WatermarkMerger, n: int, frame: bytes, now: float) -> None:
        try:
            merger.add(n, self._decode(n, frame), now)
        except ValueError as exc:
            raise self.device.transport.error(
                GarbledReply, f"stream of input {n}: {exc}", f"stream of input {n}",
                reply=frame[:64]) from exc

    def _decode(self, n: int, frame: bytes) -> np.ndarray:
        """A stream frame: little-endian uint64 ps timestamps (or (ts, ref index) pairs)."""
        width = 16 if self.with_ref_index else 8
        command = f"stream of input {n} ({self.stream_ids.get(n)})"
        if len(frame) % width:
            raise self.device.transport.error(
                GarbledReply, f"stream frame of {len(frame)} bytes, not a multiple of {width}",
                command, reply=frame[:64])
        raw = np.frombuffer(frame, "<u8")
        if self.with_ref_index:
            raw = raw[0::2]
        if raw.size and raw.max() > np.iinfo(np.int64).max:
            raise self.device.transport.error(GarbledReply, "timestamp beyond 2**63 ps",
                                              command, reply=frame[:64])
        return raw.astype(np.int64)

    def _stop(self, sockets: dict[int, zmq.Socket]) -> None:
        """Best effort: raw outputs off, DLT streams stopped, sockets closed (errors logged)."""
        if sockets:
            try:
                self.device.set_raw_send(self.inputs, False)
            except Exception as exc:  # noqa: BLE001 - clean-up must not mask the cause
                log.warning("%s: could not switch raw outputs off: %s", self.name, exc)
        for n, sid in list(self.stream_ids.items()):
            try:
                self.dlt.stop(sid)
            except Exception as exc:  # noqa: BLE001
                log.warning("%s: could not stop DLT stream %s of input %d: %s",
                            self.name, sid, n, exc)
            del self.stream_ids[n]
        for sock in sockets.values():
            sock.close(linger=0)


__all__ = ["DLT_PORT", "DataLinkTarget", "ID900", "ID900Tagger", "INPUTS", "SCPI_PORT",
           "WatermarkMerger"]
