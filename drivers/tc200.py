"""Thorlabs TC200 temperature controller (the SPDC crystal oven).

Command set: Thorlabs TC200 user manual, as implemented by QMI (QuTech's Quantum Measurement
Infrastructure) ``qmi/instruments/thorlabs/tc200.py``. FTDI serial 115200 8N1, no flow
control; commands end ``\\r``. The controller echoes the command, then ``\\r``, the response (if
any), ``\\r`` and the prompt ``> ``; ``stat?`` answers a hex status byte without the ``\\r``
(``stat?\\r11 > ``). The driver reads up to ``"> "`` and checks the echo, so a late reply is
never taken for the next command's. Error responses: ``CMD_NOT_DEFINED``, ``CMD_ARG_RANGE_ERR``
→ :class:`~qnode.drivers.errors.DeviceError` with that code.

Units: temperatures in °C (set point 20–200 °C and ≤ ``tmax``, resolution 0.1 °C), power limit in
W (0.1–18), PID gains dimensionless (P 1–250, I and D 0–250).

``ens`` *toggles* the heater output, so :meth:`TC200.enable_output` / :meth:`disable_output`
read ``stat?`` first and toggle only when needed (then read it again to confirm).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .driver import Driver
from .errors import DeviceError, GarbledReply
from .transport import SerialTransport

ERROR_REPLIES = ("CMD_NOT_DEFINED", "CMD_ARG_RANGE_ERR")

_SENSORS = {0x00: "TH10K", 0x04: "PTC100", 0x08: "PTC1000", 0x0C: "unknown"}
_UNITS = {0x00: "K", 0x10: "C", 0x20: "F", 0x30: "unknown"}
_NUMBER = r"([-+]?\d+(?:\.\d*)?)"


@dataclass(frozen=True)
class TC200Status:
    """The ``stat?`` byte: 0x01 output on, 0x02 cycle mode, 0x0C sensor, 0x30 display unit,
    0x40 sensor alarm, 0x80 cycle paused."""

    raw: int

    @property
    def output_enabled(self) -> bool:
        return bool(self.raw & 0x01)

    @property
    def cycle_mode(self) -> bool:
        return bool(self.raw & 0x02)

    @property
    def sensor(self) -> str:
        return _SENSORS[self.raw & 0x0C]

    @property
    def unit(self) -> str:
        return _UNITS[self.raw & 0x30]

    @property
    def alarm(self) -> bool:
        return bool(self.raw & 0x40)

    @property
    def paused(self) -> bool:
        return bool(self.raw & 0x80)


class TC200(Driver):
    """A TC200 on a serial port.

    ``port``: device path / pty path / pyserial URL, or a built
    :class:`~qnode.drivers.transport.SerialTransport`; ``timeout_s``: reply timeout (s).
    """

    instrument = "TC200 oven"
    transport: SerialTransport  # always: __init__ takes or builds one

    def __init__(self, port: str | SerialTransport, *, timeout_s: float = 1.0,
                 **transport_options: object):
        if isinstance(port, SerialTransport):
            self.transport = port
        else:
            self.transport = SerialTransport(
                port, instrument=self.instrument, baudrate=115200, write_termination="\r",
                read_termination="\r> ", timeout_s=timeout_s,
                serial_options={"bytesize": 8, "parity": "N", "stopbits": 1,
                                "rtscts": False, "xonxoff": False},
                **transport_options)
        self.transport.open()

    # ------------------------------------------------------------------ identity and status
    def identify(self) -> str:
        """``id?``: e.g. ``"THORLABS TC200 VERSION 2.0"``."""
        return self._exchange("id?", expect_response=True)

    def status(self) -> TC200Status:
        """``stat?``: the status byte (see :class:`TC200Status`)."""
        with self.transport.lock:
            body = self._exchange("stat?", expect_response=True, status_framing=True)
            if not re.fullmatch(r"[0-9A-Fa-f]{1,2}", body):
                raise self._garbled("stat?", body, "status is not a hex byte")
            return TC200Status(int(body, 16))

    def output_enabled(self) -> bool:
        return self.status().output_enabled

    def enable_output(self) -> None:
        """Turn the heater on: read ``stat?``; if off, send the ``ens`` toggle and confirm.
        Refuses (DeviceError, code ``"ALARM"``) while the sensor alarm is set."""
        self._set_output(True)

    def disable_output(self) -> None:
        """Turn the heater off: read ``stat?``; if on, send the ``ens`` toggle and confirm."""
        self._set_output(False)

    # ------------------------------------------------------------------ temperature
    def set_temperature_c(self, setpoint_c: float) -> None:
        """``tset=XX.X``: the set point (°C, 20–200, 0.1 °C resolution)."""
        if not 20.0 <= setpoint_c <= 200.0:
            raise ValueError(f"set point must be 20..200 °C, got {setpoint_c!r}")
        self._exchange(f"tset={setpoint_c:.1f}")

    def temperature_setpoint_c(self) -> float:
        """``tset?`` ("XX.X Celsius"): the set point (°C)."""
        return self._number("tset?", r"\s*Celsius")

    def temperature_c(self) -> float:
        """``tact?`` ("XX.X C"): the measured oven temperature (°C)."""
        return self._number("tact?", r"\s*C")

    def set_max_temperature_c(self, limit_c: float) -> None:
        """``tmax=XX.X``: upper limit of the set point (°C, 20–205)."""
        if not 20.0 <= limit_c <= 205.0:
            raise ValueError(f"tmax must be 20..205 °C, got {limit_c!r}")
        self._exchange(f"tmax={limit_c:.1f}")

    def max_temperature_c(self) -> float:
        """``tmax?``: upper limit of the set point (°C)."""
        return self._number("tmax?", r"(?:\s*C(?:elsius)?)?")

    def set_max_power_w(self, limit_w: float) -> None:
        """``pmax=X.X``: heater power limit (W, 0.1–18)."""
        if not 0.1 <= limit_w <= 18.0:
            raise ValueError(f"pmax must be 0.1..18 W, got {limit_w!r}")
        self._exchange(f"pmax={limit_w:.1f}")

    def max_power_w(self) -> float:
        """``pmax?``: heater power limit (W)."""
        return self._number("pmax?", r"(?:\s*W)?")

    # ------------------------------------------------------------------ PID
    def set_pid(self, p: int | None = None, i: int | None = None, d: int | None = None) -> None:
        """``pgain=``/``igain=``/``dgain=``: PID gains (P 1–250, I and D 0–250); None keeps."""
        with self.transport.lock:
            for name, value, lo in (("pgain", p, 1), ("igain", i, 0), ("dgain", d, 0)):
                if value is None:
                    continue
                if int(value) != value or not lo <= value <= 250:
                    raise ValueError(f"{name} must be an integer {lo}..250, got {value!r}")
                self._exchange(f"{name}={int(value)}")

    def pid(self) -> tuple[int, int, int]:
        """``pid?`` ("P I D"): the PID gains."""
        body = self._exchange("pid?", expect_response=True)
        m = re.fullmatch(r"\s*(\d+)\s+(\d+)\s+(\d+)\s*", body)
        if m is None:
            raise self._garbled("pid?", body, "expected three gains")
        return int(m[1]), int(m[2]), int(m[3])

    # ------------------------------------------------------------------ internals
    def _set_output(self, on: bool) -> None:
        with self.transport.lock:
            st = self.status()
            if on and st.alarm:
                raise self.transport.error(DeviceError, "sensor alarm set: output not enabled",
                                           "ens", code="ALARM")
            if st.output_enabled == on:
                return
            self._exchange("ens")
            if self.status().output_enabled != on:
                raise self.transport.error(DeviceError, "output did not follow the ens toggle",
                                           "ens", code="ENS")

    def _number(self, cmd: str, unit_pattern: str) -> float:
        body = self._exchange(cmd, expect_response=True)
        m = re.fullmatch(_NUMBER + unit_pattern + r"\s*", body)
        if m is None:
            raise self._garbled(cmd, body, "expected a number")
        return float(m[1])

    def _exchange(self, cmd: str, *, expect_response: bool = False,
                  status_framing: bool = False) -> str:
        """Send ``cmd``, read to the prompt, check the echo; the response text (may be "")."""
        with self.transport.lock:
            t = self.transport
            t.write(cmd)
            raw = t.read_until(b"> ", command=cmd).decode("ascii", errors="replace")
            echo, sep, rest = raw.partition("\r")
            if not sep or echo != cmd:
                raise self._garbled(cmd, raw, "echo does not match the command")
            if rest.endswith("\r"):
                body = rest[:-1]
            elif status_framing and rest.endswith(" "):
                body = rest[:-1]
            elif rest == "" and not expect_response:
                body = ""
            else:
                raise self._garbled(cmd, raw, "response not framed by \\r and the prompt")
            if "\r" in body:
                raise self._garbled(cmd, raw, "more than one response line")
            if body in ERROR_REPLIES:
                raise t.error(DeviceError, f"device replied {body}", cmd, code=body)
            if expect_response and not body:
                raise self._garbled(cmd, raw, "empty response")
            if not expect_response and body:
                raise self._garbled(cmd, raw, "unexpected response")
            return body

    def _garbled(self, cmd: str, reply: str, why: str) -> GarbledReply:
        self.transport.mark_stale()
        return self.transport.error(GarbledReply, why, cmd, reply=reply)
