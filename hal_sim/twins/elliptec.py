"""Simulated Thorlabs Elliptec ELL14 rotation mount (the wire twin of
:class:`qnode.drivers.elliptec.Elliptec`).

Protocol (Thorlabs "ELLx modules communication protocol" manual, as implemented by pyLabLib
``devices/Thorlabs/elliptec.py``): 9600 8N1; a request is the bus address
``0``–``F``, a two-letter lower-case command and hex data, with no terminator; replies are the
address, an upper-case two-letter code and hex data, ending ``\\r\\n``.

=========  ==============================  ===============================================
request    reply                           meaning
=========  ==============================  ===============================================
``in``     ``IN`` + 30 chars               model (2 hex), serial (8), year (4 dec), fw (2 hex),
                                           hw (2 hex), travel (4 hex, deg), pulses per travel
                                           (8 hex)
``gs``     ``GS`` + 2 hex                  status: 0 ok, 1 comm timeout, 2 mech timeout,
                                           3 not supported, 4 out of range, 9 busy, ...
``gp``     ``PO`` + 8 hex                  position, pulses, signed 32-bit
``ma``/``mr`` + 8 hex                      absolute / relative move → ``PO`` at the end
``ho`` + ``0``/``1``                       home CW / CCW → ``PO``
=========  ==============================  ===============================================

Model: the position is kept in pulses, wrapped to one revolution (``pulses_per_rev``, default
143360 = 0x23000, the value an ELL14 reports in its ``in`` reply: 398.2 pulses/deg). A move takes
|distance| / ``speed_deg_s`` and, as on the real stage, the device says nothing while it moves:
the ``PO`` comes at the end (requests sent meanwhile are answered after it). :attr:`angle_deg`
interpolates during a move, so the physics coupling sees the plate turn.

Device errors go through the protocol: :meth:`inject_error` makes the next request answer
``GS<code>`` (and the next ``gs`` report it once, then 0, as the real one clears a fault status on
read). Unknown commands answer ``GS03`` (not supported).
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

from .serve import WireDevice

#: data characters after the two-letter command, per request
_DATA_LEN = {"ma": 8, "mr": 8, "so": 8, "sj": 8, "ho": 1, "ca": 1, "sv": 2}
_REQUEST = re.compile(rb"[0-9A-F][a-z][a-z0-9]")


class ElliptecTwin(WireDevice):
    """One ELL14 on the bus at ``address`` (0–15).

    ``pulses_per_rev``: encoder pulses in 360° (reported by ``in``); ``speed_deg_s``: rotation
    speed (deg/s); ``angle_deg``: the starting angle (deg); ``clock``/``sleep``: time sources
    (s), replaceable in tests.
    """

    reply_terminator = b"\r\n"

    model = 0x0E  # ELL14

    def __init__(self, address: int = 0, *, pulses_per_rev: int = 143360,
                 speed_deg_s: float = 360.0, angle_deg: float = 0.0,
                 serial_no: str = "11400517", year: int = 2023, firmware: int = 0x17,
                 hardware: int = 0x01, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if not 0 <= address <= 15:
            raise ValueError(f"address must be 0..15, got {address!r}")
        self.address = address
        self.pulses_per_rev = int(pulses_per_rev)
        self.speed_deg_s = float(speed_deg_s)
        self.serial_no = serial_no
        self.year = year
        self.firmware = firmware
        self.hardware = hardware
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        p = self._wrap(round(angle_deg * self.pulses_per_rev / 360.0))
        self._from = self._to = p
        self._t_start = self._t_end = clock()
        self._pending_error: int | None = None
        self._status = 0
        self.moves: list[tuple[float, float, float]] = []  # (from deg, to deg, duration s)

    # ------------------------------------------------------------------ state the physics reads
    @property
    def pulses_per_deg(self) -> float:
        return self.pulses_per_rev / 360.0

    @property
    def position_pulses(self) -> int:
        """Encoder position now (pulses), interpolated during a move."""
        with self._lock:
            now = self._clock()
            if now >= self._t_end:
                return self._to
            frac = (now - self._t_start) / (self._t_end - self._t_start)
            return round(self._from + frac * (self._to - self._from))

    @property
    def angle_deg(self) -> float:
        """Mount angle now (deg, in [0, 360)), interpolated during a move."""
        return (self.position_pulses / self.pulses_per_deg) % 360.0

    @property
    def moving(self) -> bool:
        return self._clock() < self._t_end

    def inject_error(self, code: int) -> None:
        """The next request is answered ``GS<code>`` (e.g. 2 mechanical timeout, 4 out of
        range) instead of being carried out."""
        self._pending_error = int(code)

    # ------------------------------------------------------------------ wire protocol
    def split(self, buffer: bytearray) -> list[bytes]:
        out = []
        while buffer:
            if buffer[:1] in (b"\r", b"\n", b" "):
                del buffer[:1]
                continue
            if len(buffer) < 3:
                break
            if not _REQUEST.match(bytes(buffer[:3])):
                del buffer[:1]  # line noise: resynchronise on the next plausible header
                continue
            n = 3 + _DATA_LEN.get(buffer[1:3].decode(), 0)
            if len(buffer) < n:
                break
            out.append(bytes(buffer[:n]))
            del buffer[:n]
        return out

    def handle(self, request: bytes) -> bytes | None:
        text = request.decode("ascii", errors="replace")
        if int(text[0], 16) != self.address:
            return None  # another device's request on the shared bus
        cmd, data = text[1:3], text[3:]
        if self._pending_error is not None:
            code, self._pending_error = self._pending_error, None
            self._status = code
            return self._reply("GS", f"{code:02X}")
        if cmd == "in":
            return self._reply("IN", f"{self.model:02X}{self.serial_no:>8.8}{self.year:04d}"
                                     f"{self.firmware:02X}{self.hardware:02X}{360:04X}"
                                     f"{self.pulses_per_rev:08X}")
        if cmd == "gs":
            code, self._status = self._status, 0
            return self._reply("GS", f"{code:02X}")
        if cmd == "gp":
            return self._position_reply()
        if cmd in ("ma", "mr"):
            try:
                value = _signed32(int(data, 16))
            except ValueError:
                return self._reply("GS", "04")
            target = value if cmd == "ma" else self.position_pulses + value
            return self._move_to(target)
        if cmd == "ho":
            return self._move_to(0)
        return self._reply("GS", "03")

    # ------------------------------------------------------------------ internals
    def _wrap(self, pulses: int) -> int:
        return pulses % self.pulses_per_rev

    def _move_to(self, target: int) -> bytes:
        start = self.position_pulses
        duration = abs(target - start) / self.pulses_per_deg / self.speed_deg_s
        with self._lock:
            self._from, self._to = start, target
            self._t_start = self._clock()
            self._t_end = self._t_start + duration
        self.moves.append((start / self.pulses_per_deg, target / self.pulses_per_deg, duration))
        self._sleep(duration)  # silent while moving, as the real stage
        with self._lock:
            self._from = self._to = self._wrap(target)
            self._t_end = min(self._t_end, self._clock())
        return self._position_reply()

    def _position_reply(self) -> bytes:
        return self._reply("PO", f"{self.position_pulses & 0xFFFFFFFF:08X}")

    def _reply(self, code: str, data: str) -> bytes:
        return f"{self.address:X}{code}{data}\r\n".encode("ascii")


def _signed32(value: int) -> int:
    return (value + 2**31) % 2**32 - 2**31
