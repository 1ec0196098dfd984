"""Thorlabs ITC4001 laser-diode / TEC controller (SCPI over VISA).

Commands are those of the SCPI reference of Thorlabs' "ITC4000 Series Operation Manual" (as used
by a Lantz-style ITC4020 driver and an "ITC4000 SCPI in Python" example):
``SOUR:CURR <A>``/``?`` and ``MEAS:CURR?`` (LD current), ``OUTP1:STAT ON|OFF`` (LD output),
``OUTP2:STAT ON|OFF`` (TEC output), ``SOUR2:TEMP <°C>``/``?`` and ``MEAS:SCAL:TEMP?``
(TEC), ``MEAS:POW2?`` (monitor photodiode), ``OUTP:PROT:KEYL:TRIP?`` (key lock),
``SYST:ERR:NEXT?`` (error queue, ``+0,"No error"`` when empty). The interlock query
``OUTP:PROT:INTL:TRIP?`` is shared by Thorlabs' CLD/ITC controllers (seen in public lab code next
to the key-lock query). The manual's order of operation: **TEC on first, wait for the
temperature, then LD on; switch off in reverse.**

Every setting is followed by a drain of the error queue, so a refused command (e.g. LD on while
the TEC is off) raises :class:`~qnode.drivers.errors.DeviceError` carrying the device's code.
Replies are parsed strictly; anything else raises :class:`~qnode.drivers.errors.GarbledReply`
and marks the transport stale (it resyncs before the next command).

The real instrument is a USBTMC device (``USB0::0x1313::0x804A::<serial>::INSTR``; pyvisa-py
needs pyusb and udev permissions); its twin, :mod:`qnode.hal_sim.twins.itc4001`, speaks the same
SCPI on a raw socket (``TCPIP::127.0.0.1::<port>::SOCKET``).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from .driver import Driver
from .errors import DeviceError, GarbledReply, InstrumentTimeout
from .transport import Transport
from .visa import DEFAULT_BACKEND, VisaTransport

_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")
_ERROR = re.compile(r'^\s*([+-]?\d+)\s*,\s*"(.*)"\s*$')


@dataclass(frozen=True)
class Identity:
    """``*IDN?``: manufacturer, model, serial number, firmware."""

    manufacturer: str
    model: str
    serial: str
    firmware: str


class Itc4001(Driver):
    """One ITC4001 over a transport (normally :class:`~qnode.drivers.visa.VisaTransport`).

    Units: current in A, temperature in °C, power in W, time in s. The driver holds the
    transport lock across each multi-command step (setting plus error drain, the switch-on
    sequence), so two threads sharing an instrument never interleave.
    """

    #: most error-queue entries read in one drain (the queue holds about 30)
    MAX_ERRORS = 32

    def __init__(self, transport: Transport):
        self.transport = transport

    @classmethod
    def over_visa(cls, resource: str, *, backend: str = DEFAULT_BACKEND,
                  timeout_s: float = 1.0, instrument: str = "ITC4001",
                  **transport_options: object) -> Itc4001:
        """A driver on a new (unopened) :class:`VisaTransport` with ``\\n`` terminations."""
        return cls(VisaTransport(resource, instrument=instrument, backend=backend,
                                 timeout_s=timeout_s, read_termination="\n",
                                 write_termination="\n", **transport_options))  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, address: str, *, name: str, timeout_s: float,
                    **options: object) -> Itc4001:
        """:meth:`over_visa` at the VISA resource ``address`` (``options`` its keywords)."""
        return cls.over_visa(address, timeout_s=timeout_s, **options)  # type: ignore[arg-type]


    # -- low-level helpers
    def _garbled(self, message: str, command: str, reply: str) -> GarbledReply:
        self.transport.mark_stale()
        return self.transport.error(GarbledReply, message, command,
                                    reply=reply)

    def query_float(self, command: str) -> float:
        """A numeric query; the reply must be one SCPI number (NR1/NR2/NR3)."""
        reply = self.transport.query(command)
        if not _NUMBER.match(reply):
            raise self._garbled("expected a number", command, reply)
        return float(reply)

    def query_bool(self, command: str) -> bool:
        """A 0/1 query."""
        reply = self.transport.query(command).strip()
        if reply not in ("0", "1"):
            raise self._garbled("expected 0 or 1", command, reply)
        return reply == "1"

    def next_error(self) -> tuple[int, str]:
        """One ``SYST:ERR:NEXT?`` entry as (code, message); (0, "No error") when empty."""
        command = "SYST:ERR:NEXT?"
        reply = self.transport.query(command)
        m = _ERROR.match(reply)
        if m is None:
            raise self._garbled('expected <code>,"<message>"', command, reply)
        return int(m.group(1)), m.group(2)

    def errors(self) -> list[tuple[int, str]]:
        """Drain the error queue; the entries in order (empty if none)."""
        out: list[tuple[int, str]] = []
        with self.transport.lock:
            for _ in range(self.MAX_ERRORS):
                code, message = self.next_error()
                if code == 0:
                    break
                out.append((code, message))
        return out

    def check(self, command: str | None = None) -> None:
        """Drain the error queue and raise DeviceError (code of the first entry) if it held any."""
        errors = self.errors()
        if errors:
            code, _ = errors[0]
            text = "; ".join(f"{c:+d} {m}" for c, m in errors)
            raise self.transport.error(DeviceError, f"device error {text}", command, code=code)

    def write(self, command: str) -> None:
        """Send a setting and check the error queue (DeviceError names ``command``)."""
        with self.transport.lock:
            self.transport.write(command)
            self.check(command)

    # -- identity
    def identify(self) -> Identity:
        """``*IDN?``, e.g. ``Thorlabs,ITC4001,M00123456,1.8.0/1.5.0/2.3.0``."""
        reply = self.transport.query("*IDN?")
        fields = [f.strip() for f in reply.split(",")]
        if len(fields) != 4 or not all(fields) or not fields[1].upper().startswith("ITC4"):
            raise self._garbled("expected 'Thorlabs,ITC4xxx,<serial>,<firmware>'", "*IDN?",
                                reply)
        return Identity(*fields)

    # -- laser diode
    @property
    def ld_on(self) -> bool:
        """LD output state (``OUTP1:STAT?``)."""
        return self.query_bool("OUTP1:STAT?")

    def set_ld(self, on: bool) -> None:
        """LD output on/off (``OUTP1:STAT``); DeviceError if the instrument refuses (TEC off,
        interlock open, key lock)."""
        self.write(f"OUTP1:STAT {'ON' if on else 'OFF'}")

    @property
    def ld_current_setpoint_a(self) -> float:
        """LD current set point in A (``SOUR:CURR?``)."""
        return self.query_float("SOUR:CURR?")

    def set_ld_current(self, current_a: float) -> None:
        """LD current set point in A (``SOUR:CURR``); DeviceError if out of range."""
        if not current_a >= 0:
            raise ValueError(f"current must be >= 0 A, got {current_a!r}")
        self.write(f"SOUR:CURR {current_a:.6E}")

    @property
    def ld_current_a(self) -> float:
        """Measured LD current in A (``MEAS:CURR?``)."""
        return self.query_float("MEAS:CURR?")

    @property
    def photodiode_power_w(self) -> float:
        """Monitor photodiode power in W (``MEAS:POW2?``)."""
        return self.query_float("MEAS:POW2?")

    # -- TEC
    @property
    def tec_on(self) -> bool:
        """TEC output state (``OUTP2:STAT?``)."""
        return self.query_bool("OUTP2:STAT?")

    def set_tec(self, on: bool) -> None:
        """TEC output on/off (``OUTP2:STAT``)."""
        self.write(f"OUTP2:STAT {'ON' if on else 'OFF'}")

    @property
    def temperature_setpoint_c(self) -> float:
        """TEC set point in °C (``SOUR2:TEMP?``)."""
        return self.query_float("SOUR2:TEMP?")

    def set_temperature(self, temperature_c: float) -> None:
        """TEC set point in °C (``SOUR2:TEMP``); DeviceError if out of range."""
        self.write(f"SOUR2:TEMP {temperature_c:.6E}")

    @property
    def temperature_c(self) -> float:
        """Measured temperature in °C (``MEAS:SCAL:TEMP?``)."""
        return self.query_float("MEAS:SCAL:TEMP?")

    def wait_for_temperature(self, *, window_c: float = 0.1, timeout_s: float = 60.0,
                             poll_s: float = 0.1) -> float:
        """Poll until the temperature is within ``window_c`` of the set point; the reading (°C).
        InstrumentTimeout (command ``MEAS:SCAL:TEMP?``) if it does not settle in ``timeout_s``."""
        target = self.temperature_setpoint_c
        deadline = time.monotonic() + timeout_s
        while True:
            t = self.temperature_c
            if abs(t - target) <= window_c:
                return t
            if time.monotonic() >= deadline:
                raise self.transport.error(
                    InstrumentTimeout, f"temperature {t:.3f} °C not within {window_c:g} °C of "
                    f"{target:.3f} °C after {timeout_s:g} s", "MEAS:SCAL:TEMP?")
            time.sleep(poll_s)

    # -- protection
    @property
    def keylock_tripped(self) -> bool:
        """Key lock protection tripped (``OUTP:PROT:KEYL:TRIP?``)."""
        return self.query_bool("OUTP:PROT:KEYL:TRIP?")

    @property
    def interlock_tripped(self) -> bool:
        """Interlock open / tripped (``OUTP:PROT:INTL:TRIP?``)."""
        return self.query_bool("OUTP:PROT:INTL:TRIP?")

    # -- sequences
    def switch_on(self, *, current_a: float | None = None, temperature_c: float | None = None,
                  window_c: float = 0.1, settle_timeout_s: float = 60.0,
                  poll_s: float = 0.1) -> None:
        """The manual's order: (set point,) TEC on, wait until the temperature is within
        ``window_c``, (current,) then LD on. DeviceError if the LD refuses (interlock, key)."""
        with self.transport.lock:
            if temperature_c is not None:
                self.set_temperature(temperature_c)
            self.set_tec(True)
            self.wait_for_temperature(window_c=window_c, timeout_s=settle_timeout_s,
                                      poll_s=poll_s)
            if current_a is not None:
                self.set_ld_current(current_a)
            self.set_ld(True)

    def switch_off(self) -> None:
        """Reverse order: LD off, then TEC off."""
        with self.transport.lock:
            self.set_ld(False)
            self.set_tec(False)
