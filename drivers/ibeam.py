"""Toptica iBeam smart diode laser (the SPDC pump).

Command set: Toptica iBeam smart manual, as implemented by pymeasure
``pymeasure/instruments/toptica/ibeamsmart.py`` and its test. Serial
115200 8N1, ``\\r\\n`` both ways. Init: ``echo off``, ``prom off``, flush, ``talk usual``. Every
reply is an empty line, data lines, then ``[OK]``; an error is text before the ``[OK]``. Values
read ``name = <value> [unit]`` (``PIC  = 000001 uW``).

Units: power set in µW on the wire (``ch pow <µW> mic``); this driver's API takes and returns mW
(``*_mw``) or µW (``*_uw``) as named; temperatures °C, current mA.

Errors: text before ``[OK]`` in reply to a setting, or a line starting with ``%`` where a value is
expected, raises :class:`~qnode.drivers.errors.DeviceError` (``code`` = the first token, e.g.
``%SYS-E-002:`` without the colon, or the whole text); a reply not framed as above or a value
that does not parse raises :class:`~qnode.drivers.errors.GarbledReply`.
"""
from __future__ import annotations

import re
import time

from .driver import Driver
from .errors import DeviceError, GarbledReply
from .transport import SerialTransport

_VALUE = re.compile(r"^\s*([A-Za-z][\w ]*?)\s*=\s*([-+]?\d+(?:\.\d*)?)\s*([A-Za-z%]*)\s*$")
_MAX_LINES = 16


class IBeamSmart(Driver):
    """An iBeam smart on a serial port.

    ``port``: device path / pty path / pyserial URL, or a built
    :class:`~qnode.drivers.transport.SerialTransport`; ``timeout_s``: reply timeout (s);
    ``initialize``: run the init sequence (:meth:`initialize`) on construction.
    ``power_channel``: the driver channel whose power :meth:`set_power_mw` sets (2 on the
    iBeam smart; pymeasure's ``ch pow`` without a channel addresses the same).
    """

    instrument = "iBeam smart pump laser"

    def __init__(self, port: str | SerialTransport, *, timeout_s: float = 1.0,
                 initialize: bool = True, power_channel: int = 2,
                 **transport_options: object):
        if isinstance(port, SerialTransport):
            self.transport = port
        else:
            self.transport = SerialTransport(
                port, instrument=self.instrument, baudrate=115200, write_termination="\r\n",
                read_termination="\r\n", timeout_s=timeout_s,
                serial_options={"bytesize": 8, "parity": "N", "stopbits": 1},
                **transport_options)
        self.power_channel = int(power_channel)
        self.transport.open()
        if initialize:
            self.initialize()

    # ------------------------------------------------------------------ life cycle
    def initialize(self) -> None:
        """``echo off``, ``prom off`` (their replies, still echoed, are flushed), then
        ``talk usual``, whose reply must be a clean empty line + ``[OK]``."""
        with self.transport.lock:
            self.transport.write("echo off")
            self.transport.write("prom off")
            time.sleep(0.04)
            self.transport.resync()
            self._setting("talk usual")

    def _after_reconnect(self) -> None:
        self.initialize()  # a power-cycled laser comes back with echo and prompt on

    # ------------------------------------------------------------------ identity
    def identify(self) -> str:
        """``ver``: firmware version, e.g. ``iBPs-001A01-05``."""
        return self._text("ver")

    def serial_number(self) -> str:
        """``serial``: the laser's serial number."""
        return self._text("serial")

    # ------------------------------------------------------------------ emission
    def emission_on(self) -> bool:
        """``sta la``: is the laser diode driver on (``ON``/``OFF``)."""
        return self._on_off("sta la")

    def laser_on(self) -> None:
        """``la on``: emission on."""
        self._setting("la on")

    def laser_off(self) -> None:
        """``la off``: emission off."""
        self._setting("la off")

    def enable_channel(self, channel: int) -> None:
        """``en <n>``: enable driver channel n (1 bias, 2 power)."""
        self._setting(f"en {int(channel)}")

    def disable_channel(self, channel: int) -> None:
        """``di <n>``: disable driver channel n; ``di 0`` disables all."""
        self._setting(f"di {int(channel)}")

    def channel_enabled(self, channel: int) -> bool:
        """``sta ch <n>``: is channel n enabled."""
        return self._on_off(f"sta ch {int(channel)}")

    def shutdown(self) -> None:
        """``di 0`` then ``la off``: all channels off, emission off (pymeasure's shutdown)."""
        with self.transport.lock:
            self._setting("di 0")
            self._setting("la off")

    # ------------------------------------------------------------------ power and temperatures
    def set_power_uw(self, power_uw: float, channel: int | None = None) -> None:
        """``ch <n> pow <µW> mic``: set point of channel n (default :attr:`power_channel`), µW."""
        if not 0 <= power_uw <= 200_000:
            raise ValueError(f"power must be 0..200000 µW, got {power_uw!r}")
        ch = self.power_channel if channel is None else int(channel)
        self._setting(f"ch {ch} pow {power_uw:f} mic")

    def set_power_mw(self, power_mw: float, channel: int | None = None) -> None:
        """As :meth:`set_power_uw`, in mW."""
        self.set_power_uw(power_mw * 1000.0, channel)

    def power_uw(self) -> float:
        """``sh pow``: actual output power (µW)."""
        return self._value("sh pow", ("uW",))

    def power_mw(self) -> float:
        """``sh pow``: actual output power (mW)."""
        return self.power_uw() / 1000.0

    def temperature_c(self) -> float:
        """``sh temp``: laser diode temperature (°C)."""
        return self._value("sh temp", ("C",))

    def system_temperature_c(self) -> float:
        """``sh temp sys``: base plate (heat sink) temperature (°C)."""
        return self._value("sh temp sys", ("C",))

    def current_ma(self) -> float:
        """``sh cur``: laser diode current (mA)."""
        return self._value("sh cur", ("mA",))

    # ------------------------------------------------------------------ internals
    def _exchange(self, cmd: str) -> list[str]:
        """Send ``cmd``; the data lines between the empty first line and ``[OK]``."""
        with self.transport.lock:
            t = self.transport
            first = t.query(cmd)
            if first != "":
                raise self._garbled(cmd, first, "reply does not start with an empty line")
            lines: list[str] = []
            while True:
                line = t.read(command=cmd)
                if line == "[OK]":
                    return lines
                lines.append(line)
                if len(lines) > _MAX_LINES:
                    raise self._garbled(cmd, "\n".join(lines), "no [OK] after many lines")

    def _setting(self, cmd: str) -> None:
        lines = self._exchange(cmd)
        if lines:
            raise self._device_error(cmd, lines)

    def _single(self, cmd: str) -> str:
        lines = self._exchange(cmd)
        if len(lines) == 1 and lines[0].lstrip().startswith("%"):
            raise self._device_error(cmd, lines)
        if len(lines) != 1:
            raise self._garbled(cmd, "\n".join(lines), "expected one data line")
        return lines[0]

    def _text(self, cmd: str) -> str:
        line = self._single(cmd).strip()
        if not line or not line.isprintable():
            raise self._garbled(cmd, line, "expected printable text")
        return line

    def _on_off(self, cmd: str) -> bool:
        line = self._single(cmd).strip()
        if line not in ("ON", "OFF"):
            raise self._garbled(cmd, line, "expected ON or OFF")
        return line == "ON"

    def _value(self, cmd: str, units: tuple[str, ...]) -> float:
        line = self._single(cmd)
        m = _VALUE.match(line)
        if m is None or m[3] not in units:
            raise self._garbled(cmd, line, f"expected 'name = value {'/'.join(units)}'")
        return float(m[2])

    def _device_error(self, cmd: str, lines: list[str]) -> DeviceError:
        text = " ".join(x.strip() for x in lines)
        first = text.split()[0].rstrip(":,") if text.split() else text
        code = first if first.startswith("%") else text
        return self.transport.error(DeviceError, f"laser replied {text!r}", cmd,
                                    code=code)

    def _garbled(self, cmd: str, reply: str, why: str) -> GarbledReply:
        self.transport.mark_stale()
        return self.transport.error(GarbledReply, why, cmd, reply=reply)
