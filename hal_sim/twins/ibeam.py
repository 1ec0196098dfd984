"""Simulated Toptica iBeam smart pump laser (the wire twin of
:class:`qnode.drivers.ibeam.IBeamSmart`).

Protocol (Toptica iBeam smart manual as implemented by pymeasure
``pymeasure/instruments/toptica/ibeamsmart.py`` and its test): 115200 baud, ``\\r\\n`` both ways. At
power-on the laser echoes each command and prints a prompt ``CMD> ``; ``echo off`` and ``prom off``
switch those off, ``talk usual`` sets normal verbosity. Every reply is an empty line, data lines,
then ``[OK]`` (errors too: the error text comes before ``[OK]``). Values read ``name = <value>
[unit]``, e.g. ``PIC  = 000001 uW  ``.

Commands served: ``ver``, ``serial``, ``sh temp`` (diode, °C), ``sh temp sys`` (base plate, °C),
``sh cur`` (mA), ``sh pow`` (µW), ``sta la``/``la on``/``la off``, ``ch pow <µW> mic`` (channel
2, the power channel), ``ch <n> pow <µW> mic``, ``sta ch <n>``, ``en <n>``/``di <n>``, ``di 0``
(all channels off), ``en ext``/``di ext``, ``echo on|off``, ``prom on|off``, ``talk usual|quiet``.

The error text format is this simulator's choice (the references show only that an error is text
before ``[OK]``): ``%SYS-E-<nnn>: <message>``, 001 unknown command, 002 value out of range.

Model: output power = set power of channel 2 (plus channel 1's, the bias) when emission is on and
the channel enabled, reached first-order with ``tau_power_s``; the diode is TEC-stabilised at
``diode_temperature_c`` (+0.002 °C/mW); the base plate warms by ``0.02 °C/mW`` above ambient with
``tau_thermal_s``. Diode current = threshold + P/slope.
"""
from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable

from .serve import WireDevice, split_lines

ERR_UNKNOWN = "%SYS-E-001: unknown command"
ERR_RANGE = "%SYS-E-002: value out of range"


class IBeamSmartTwin(WireDevice):
    """An iBeam smart (e.g. 405 nm, ``max_power_uw`` µW).

    Exposes :attr:`power_mw` (optical output now, mW) and :attr:`emission_on` for the physics.
    """

    reply_terminator = b"[OK]\r\n"  # with the prompt off, as after the init sequence

    def __init__(self, *, max_power_uw: float = 200_000.0, tau_power_s: float = 0.05,
                 tau_thermal_s: float = 30.0, ambient_c: float = 22.0,
                 diode_temperature_c: float = 25.0, firmware: str = "iBPs-001A01-05",
                 serial_no: str = "iBEAM-SMART-405-S-12345",
                 clock: Callable[[], float] = time.monotonic):
        self.max_power_uw = float(max_power_uw)
        self.tau_power_s = float(tau_power_s)
        self.tau_thermal_s = float(tau_thermal_s)
        self.ambient_c = float(ambient_c)
        self.diode_temperature_c = float(diode_temperature_c)
        self.firmware = firmware
        self.serial_no = serial_no
        self._clock = clock
        self._lock = threading.Lock()
        self.channel_power_uw = {1: 0.0, 2: 0.0}
        self.channel_enabled = {1: False, 2: False}
        self.emission = False
        self.external_modulation = False
        self._pending_error: str | None = None
        self._p0_uw = 0.0
        self._t0 = clock()
        self._plate0_c = self.ambient_c
        self.power_cycle()

    def power_cycle(self) -> None:
        """Back to power-on communication settings: echo and prompt on."""
        self.echo = True
        self.prompt = True
        self.talk = "usual"

    # ------------------------------------------------------------------ state the physics reads
    @property
    def emission_on(self) -> bool:
        return self.emission

    @property
    def power_uw(self) -> float:
        """Optical output now (µW)."""
        with self._lock:
            return self._power_at(self._clock())

    @property
    def power_mw(self) -> float:
        """Optical output now (mW)."""
        return self.power_uw / 1000.0

    @property
    def base_plate_temperature_c(self) -> float:
        with self._lock:
            now = self._clock()
            target = self.ambient_c + 0.02 * self._target_uw() / 1000.0
            return target + (self._plate0_c - target) * math.exp(-(now - self._t0)
                                                                  / self.tau_thermal_s)

    def inject_error(self, text: str = ERR_RANGE) -> None:
        """The next command is answered with ``text`` before ``[OK]`` and not carried out."""
        self._pending_error = text

    # ------------------------------------------------------------------ wire protocol
    def split(self, buffer: bytearray) -> list[bytes]:
        return [r.strip(b"\r") for r in split_lines(buffer, b"\n")]

    def handle(self, request: bytes) -> bytes | None:
        cmd = " ".join(request.decode("ascii", errors="replace").split())
        if self._pending_error is not None:
            lines, self._pending_error = [self._pending_error], None
        else:
            lines = self._execute(cmd.lower())
        out = (request.decode("ascii", errors="replace") + "\r\n") if self.echo else ""
        out += "\r\n" + "".join(line + "\r\n" for line in lines) + "[OK]\r\n"
        if self.prompt:
            out += "CMD> "
        return out.encode("ascii")

    def _execute(self, cmd: str) -> list[str]:
        fixed = {"ver": [self.firmware], "serial": [self.serial_no],
                 "sta la": ["ON" if self.emission else "OFF"]}
        if cmd in fixed:
            return fixed[cmd]
        if cmd == "sh pow":
            return [f"PIC  = {round(self.power_uw):06d} uW  "]
        if cmd == "sh temp":
            return [f"TEMP = {self.diode_temperature_c + 2e-6 * self.power_uw:.1f} C"]
        if cmd == "sh temp sys":
            return [f"SYS TEMP = {self.base_plate_temperature_c:.1f} C"]
        if cmd == "sh cur":
            return [f"LDC  = {35.0 + self.power_uw / 1000.0 / 0.8:.1f} mA"]
        m = re.fullmatch(r"(echo|prom) (on|off)", cmd)
        if m:
            setattr(self, "echo" if m[1] == "echo" else "prompt", m[2] == "on")
            return []
        m = re.fullmatch(r"talk (usual|quiet)", cmd)
        if m:
            self.talk = m[1]
            return []
        m = re.fullmatch(r"la (on|off)", cmd)
        if m:
            self._change(lambda: setattr(self, "emission", m[1] == "on"))
            return []
        m = re.fullmatch(r"ch(?: (\d))? pow ([-+0-9.eE]+) mic", cmd)
        if m:
            ch = int(m[1] or 2)
            try:
                uw = float(m[2])
            except ValueError:
                return [ERR_RANGE]
            if ch not in self.channel_power_uw or not 0 <= uw <= self.max_power_uw:
                return [ERR_RANGE]
            self._change(lambda: self.channel_power_uw.__setitem__(ch, uw))
            return []
        m = re.fullmatch(r"sta ch (\d)", cmd)
        if m:
            ch = int(m[1])
            if ch not in self.channel_enabled:
                return [ERR_RANGE]
            return ["ON" if self.channel_enabled[ch] else "OFF"]
        m = re.fullmatch(r"(en|di) (\d|ext)", cmd)
        if m:
            on = m[1] == "en"
            if m[2] == "ext":
                self.external_modulation = on
                return []
            ch = int(m[2])
            if ch == 0 and not on:
                self._change(lambda: self.channel_enabled.update({1: False, 2: False}))
                return []
            if ch not in self.channel_enabled:
                return [ERR_RANGE]
            self._change(lambda: self.channel_enabled.__setitem__(ch, on))
            return []
        return [ERR_UNKNOWN]

    # ------------------------------------------------------------------ time model
    def _target_uw(self) -> float:
        if not self.emission:
            return 0.0
        return sum(p for ch, p in self.channel_power_uw.items() if self.channel_enabled[ch])

    def _power_at(self, t: float) -> float:
        target = self._target_uw()
        return target + (self._p0_uw - target) * math.exp(-(t - self._t0) / self.tau_power_s)

    def _change(self, update: Callable[[], None]) -> None:
        """Apply ``update`` and restart the power and plate ramps from where they are."""
        plate = self.base_plate_temperature_c
        with self._lock:
            now = self._clock()
            self._p0_uw = self._power_at(now)
            self._plate0_c = plate
            self._t0 = now
            update()
