"""Thorlabs Elliptec ELL14 rotation mount (the motorised half-wave plate of an analyzer).

Command set: Thorlabs "ELLx modules communication protocol" manual, as implemented by pyLabLib
``pylablib/devices/Thorlabs/elliptec.py`` (and roesel/elliptec).
Serial 9600 8N1, no flow control. A request is the bus address (one hex digit ``0``–``F``), a
two-letter lower-case command and hex data, **no terminator**; a reply is the address, a
two-letter upper-case code and hex data, ending ``\\r\\n``.

Units: angles in degrees (deg). The scale is not hard-coded: :meth:`Elliptec.identify` reads the
``in`` reply's travel (deg) and pulses-per-travel fields and uses pulses/travel pulses per degree
(as pyLabLib's ``stage`` scale). The stage does not talk while it moves, so a move waits for its
``PO`` reply for up to ``move_timeout_s``.

Errors: a ``GS`` reply with a non-zero code to a move or setting raises
:class:`~qnode.drivers.errors.DeviceError` with that code (``STATUS_CODES`` names them); a reply
that does not match the protocol raises :class:`~qnode.drivers.errors.GarbledReply`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .driver import Driver
from .errors import DeviceError, GarbledReply
from .transport import SerialTransport

#: GS status codes (ELLx protocol manual; names as in pyLabLib)
STATUS_CODES = {0: "ok", 1: "comm_timeout", 2: "mech_timeout", 3: "not_supported",
                4: "value_out_of_range", 5: "isolated", 6: "out_of_isolation", 7: "init_error",
                8: "therm_error", 9: "busy", 10: "sens_error", 11: "motor_error",
                12: "out_of_range", 13: "overcurrent"}

_REPLY = re.compile(r"^([0-9A-F])([A-Z]{2})([0-9A-Fa-f]*)$")
_DATA_LEN = {"IN": 30, "GS": 2, "PO": 8}


@dataclass(frozen=True)
class ElliptecInfo:
    """The ``in`` reply: model number (14 for an ELL14), serial, year, firmware and hardware
    versions, travel (deg for a rotation mount) and encoder pulses over that travel."""

    model: int
    serial_no: str
    year: int
    firmware: int
    hardware: int
    travel: int
    pulses_per_travel: int

    @property
    def pulses_per_deg(self) -> float:
        return self.pulses_per_travel / self.travel


class Elliptec(Driver):
    """One Elliptec stage (ELL14) on a serial port.

    ``port``: a device path / pty path / pyserial URL (``socket://host:port``), or an already
    built :class:`~qnode.drivers.transport.SerialTransport`. ``device_address``: the stage's bus
    address (0–15). ``timeout_s``: reply timeout of ordinary requests (s); ``move_timeout_s``:
    how long a move or home may take (s). The port is opened and the stage identified (which
    sets the pulse scale) on construction.
    """

    instrument = "ELL14 rotation mount"

    def __init__(self, port: str | SerialTransport, *, device_address: int = 0,
                 timeout_s: float = 1.0, move_timeout_s: float = 5.0,
                 **transport_options: object):
        if not 0 <= device_address <= 15:
            raise ValueError(f"device_address must be 0..15, got {device_address!r}")
        if isinstance(port, SerialTransport):
            self.transport = port
        else:
            self.transport = SerialTransport(
                port, instrument=self.instrument, baudrate=9600, write_termination="",
                read_termination="\r\n", timeout_s=timeout_s,
                serial_options={"bytesize": 8, "parity": "N", "stopbits": 1},
                **transport_options)
        self.device_address = device_address
        self.move_timeout_s = float(move_timeout_s)
        self.info: ElliptecInfo | None = None
        self.transport.open()
        self.identify()

    def _after_reconnect(self) -> None:
        self.identify()  # the deg scale comes from the `in` reply

    # ------------------------------------------------------------------ commands
    def identify(self) -> ElliptecInfo:
        """``in``: model, serial, year, versions, travel and pulses; sets the deg scale."""
        with self.transport.lock:
            cmd = self._cmd("in")
            data = self._query(cmd, "IN")
            try:
                info = ElliptecInfo(model=int(data[0:2], 16), serial_no=data[2:10],
                                    year=int(data[10:14]), firmware=int(data[14:16], 16),
                                    hardware=int(data[16:18], 16), travel=int(data[18:22], 16),
                                    pulses_per_travel=int(data[22:30], 16))
            except ValueError:
                raise self._garbled(cmd, data, "bad IN fields") from None
            if info.travel <= 0 or info.pulses_per_travel <= 0:
                raise self._garbled(cmd, data, "IN reports no travel or no pulses")
            self.info = info
            return info

    @property
    def pulses_per_deg(self) -> float:
        """Encoder pulses per degree, from the last ``in`` reply."""
        if self.info is None:
            self.identify()
        assert self.info is not None
        return self.info.pulses_per_deg

    def status(self) -> int:
        """``gs``: the status code (0 ok, 9 busy, ...; see ``STATUS_CODES``). Reading it clears
        a latched fault on the device. Returned, not raised."""
        with self.transport.lock:
            cmd = self._cmd("gs")
            data = self._query(cmd, "GS")
            return int(data, 16)

    def position_deg(self) -> float:
        """``gp``: the position (deg) as the stage reports it."""
        with self.transport.lock:
            cmd = self._cmd("gp")
            return self._pulses_to_deg(self._query(cmd, "PO"))

    def home(self, direction: str = "cw") -> float:
        """``ho0`` (clockwise) / ``ho1`` (counter-clockwise): home; returns the position (deg)
        when the stage has stopped."""
        if direction not in ("cw", "ccw"):
            raise ValueError(f"direction must be 'cw' or 'ccw', got {direction!r}")
        return self._move(self._cmd("ho", "0" if direction == "cw" else "1"))

    def move_absolute_deg(self, angle_deg: float) -> float:
        """``ma<8 hex pulses>``: move to ``angle_deg`` (deg); returns the final position (deg)."""
        return self._move(self._cmd("ma", self._deg_to_hex(angle_deg)))

    def move_relative_deg(self, delta_deg: float) -> float:
        """``mr<8 hex pulses>``: move by ``delta_deg`` (deg, positive = forward); returns the
        final position (deg)."""
        return self._move(self._cmd("mr", self._deg_to_hex(delta_deg)))

    # ------------------------------------------------------------------ internals
    def _cmd(self, command: str, data: str = "") -> str:
        return f"{self.device_address:X}{command}{data}"

    def _deg_to_hex(self, deg: float) -> str:
        pulses = round(deg * self.pulses_per_deg)
        if not -2**31 <= pulses < 2**31:
            raise ValueError(f"{deg} deg is beyond the 32-bit pulse range")
        return f"{pulses & 0xFFFFFFFF:08X}"

    def _pulses_to_deg(self, data: str) -> float:
        value = int(data, 16)
        value = (value + 2**31) % 2**32 - 2**31
        return value / self.pulses_per_deg

    def _move(self, cmd: str) -> float:
        with self.transport.lock:
            code, data = self._exchange(cmd, ("PO", "GS"), timeout_s=self.move_timeout_s)
            if code == "GS":
                self._raise_status(cmd, int(data, 16))
                return self.position_deg()
            return self._pulses_to_deg(data)

    def _query(self, cmd: str, expect: str) -> str:
        code, data = self._exchange(cmd, (expect, "GS"))
        if code == "GS" and expect != "GS":
            self._raise_status(cmd, int(data, 16))
            raise self._garbled(cmd, f"GS{data}", f"expected {expect}")
        return data

    def _exchange(self, cmd: str, expect: tuple[str, ...],
                  timeout_s: float | None = None) -> tuple[str, str]:
        reply = self.transport.query(cmd, timeout_s=timeout_s)
        m = _REPLY.match(reply)
        if m is None:
            raise self._garbled(cmd, reply, "not an Elliptec reply")
        addr, code, data = m.groups()
        if int(addr, 16) != self.device_address:
            raise self._garbled(cmd, reply, f"reply from address {addr}")
        if code not in expect or len(data) != _DATA_LEN[code]:
            raise self._garbled(cmd, reply, f"expected {'/'.join(expect)}")
        return code, data

    def _raise_status(self, cmd: str, status: int) -> None:
        if status != 0:
            raise self.transport.error(
                DeviceError, f"status {status} ({STATUS_CODES.get(status, 'reserved')})", cmd,
                code=status)

    def _garbled(self, cmd: str, reply: str, why: str) -> GarbledReply:
        self.transport.mark_stale()
        return self.transport.error(GarbledReply, why, cmd, reply=reply)
