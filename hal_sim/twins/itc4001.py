"""Twin of a Thorlabs ITC4001 laser-diode / TEC controller, serving SCPI on a loopback socket.

Drivers reach it as a VISA raw socket, ``TCPIP::127.0.0.1::<port>::SOCKET`` (pyvisa-py), the
stand-in for the real instrument's USBTMC resource. Commands follow the SCPI reference of Thorlabs'
"ITC4000 Series Operation Manual" (short and long forms, case-insensitive); the interlock query
``OUTP:PROT:INTL:TRIP?`` is the one Thorlabs' CLD/ITC controllers share (seen in public lab code
next to ``OUTP:PROT:KEYL:TRIP?``).

State and physics:

* TEC: the case temperature relaxes exponentially (time constant ``tau_s``) towards the set point
  while the TEC output is on and towards ``ambient_c`` while it is off.
* LD: refuses to switch on while the TEC is off, the interlock is open or the key lock is tripped
  (the output stays off and an error is queued); opening the interlock switches it off. Optical
  power is ``slope_w_per_a * (I - threshold_a)`` above threshold; the photodiode reads
  ``pd_coupling`` of it.
* Error queue: ``SYST:ERR:NEXT?`` pops ``<code>,"<message>"``, ``+0,"No error"`` when empty.
  Codes are the SCPI-99 standard ones (-113 undefined header, -104 data type, -222 data out of
  range, -221 settings conflict, -350 queue overflow); :meth:`Itc4001Sim.inject_error` queues a
  device error on demand (fault injection).

Wire faults (slow, dropped, garbled, truncated, hang, disconnect) come from the server
(:mod:`qnode.hal_sim.twins.serve`); a garbled reply keeps its terminator and reaches the driver as a
malformed line.
"""
from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable

from .serve import TcpServer, WireDevice, split_lines


def scpi_header(spec: str) -> re.Pattern[str]:
    """A regex for a SCPI header written as in manuals: capitals = short form, ``[...]`` =
    optional node or suffix. ``"SOURce[1]:CURRent[:LEVel]"`` matches ``SOUR:CURR``,
    ``source1:current:level`` ... (case-insensitive, short or full form of each keyword)."""
    out = []
    for optional, body in re.findall(r"(\[)?([^\[\]]+)\]?", spec):
        parts = []
        for token in re.split(r"(:)", body):
            if token in ("", ":"):
                parts.append(token)
                continue
            m = re.fullmatch(r"(\*?[A-Z]*)([a-z]*)(\d*)(\??)", token)
            if m is None:
                raise ValueError(f"bad SCPI spec token {token!r}")
            short, rest, digits, q = m.groups()
            word = f"(?:{short}{rest.upper()}|{short})" if rest else re.escape(short)
            parts.append(word + digits + re.escape(q))
        node = "".join(parts)
        out.append(f"(?:{node})?" if optional else node)
    return re.compile("".join(out) + "$", re.IGNORECASE)


class Itc4001Sim(WireDevice):
    """State and SCPI handling of one ITC4001 (see the module docstring).

    Units: currents in A, temperatures in °C, power in W, times in s. ``clock`` (s, monotonic)
    can be replaced in tests.
    """

    reply_terminator = b"\n"

    IDN = "Thorlabs,ITC4001,M00000001,1.8.0/1.5.0/2.3.0"
    ERROR_QUEUE_LEN = 30

    def __init__(self, *, ambient_c: float = 25.0, tau_s: float = 0.3,
                 max_current_a: float = 0.2, threshold_a: float = 0.02,
                 slope_w_per_a: float = 0.5, pd_coupling: float = 0.01,
                 clock: Callable[[], float] = time.monotonic):
        self.ambient_c = ambient_c
        self.tau_s = tau_s
        self.max_current_a = max_current_a
        self.threshold_a = threshold_a
        self.slope_w_per_a = slope_w_per_a
        self.pd_coupling = pd_coupling
        self.clock = clock
        self.lock = threading.RLock()
        self.ld_on = False
        self.tec_on = False
        self.ld_current_set_a = 0.0
        self.temp_set_c = ambient_c
        self._temp_c = ambient_c
        self._t_last = clock()
        self.interlock_closed = True
        self.keylock_tripped = False
        self.errors: deque[tuple[int, str]] = deque()
        self._commands: list[tuple[re.Pattern[str], Callable[[str], str | None]]] = [
            (scpi_header("*IDN?"), lambda a: self.IDN),
            (scpi_header("*RST"), self._rst),
            (scpi_header("*CLS"), self._cls),
            (scpi_header("*OPC?"), lambda a: "1"),
            (scpi_header("SYSTem:ERRor[:NEXT]?"), self._next_error),
            (scpi_header("SOURce[1]:CURRent[:LEVel][:IMMediate][:AMPLitude]?"),
             lambda a: _num(self.ld_current_set_a)),
            (scpi_header("SOURce[1]:CURRent[:LEVel][:IMMediate][:AMPLitude]"), self._set_current),
            (scpi_header("MEASure[:SCALar]:CURRent[1][:DC]?"), lambda a: _num(self.ld_current_a)),
            (scpi_header("OUTPut[1][:STATe]?"), lambda a: "1" if self.ld_on else "0"),
            (scpi_header("OUTPut[1][:STATe]"), self._set_ld),
            (scpi_header("OUTPut2[:STATe]?"), lambda a: "1" if self.tec_on else "0"),
            (scpi_header("OUTPut2[:STATe]"), self._set_tec),
            (scpi_header("SOURce2:TEMPerature[:SPOint]?"), lambda a: _num(self.temp_set_c)),
            (scpi_header("SOURce2:TEMPerature[:SPOint]"), self._set_temp),
            (scpi_header("MEASure[:SCALar]:TEMPerature?"), lambda a: _num(self.temperature_c)),
            (scpi_header("MEASure[:SCALar]:POWer2?"), lambda a: _num(self.photodiode_power_w)),
            (scpi_header("MEASure[:SCALar]:POWer[1]?"), lambda a: _num(self.optical_power_w)),
            (scpi_header("OUTPut[1]:PROTection:KEYLock:TRIPped?"),
             lambda a: "1" if self.keylock_tripped else "0"),
            (scpi_header("OUTPut[1]:PROTection:INTLock:TRIPped?"),
             lambda a: "0" if self.interlock_closed else "1"),
        ]

    # -- physics
    @property
    def temperature_c(self) -> float:
        """Case temperature (°C): first-order relaxation towards the target, time constant
        ``tau_s``; the target is the set point with the TEC on, ambient with it off."""
        with self.lock:
            self._advance()
            return self._temp_c

    def _advance(self) -> None:
        now = self.clock()
        dt, self._t_last = now - self._t_last, now
        target = self.temp_set_c if self.tec_on else self.ambient_c
        self._temp_c = target + (self._temp_c - target) * math.exp(-max(dt, 0.0) / self.tau_s)

    @property
    def ld_current_a(self) -> float:
        """Actual laser-diode current (A): the set point while the output is on, else 0."""
        return self.ld_current_set_a if self.ld_on else 0.0

    @property
    def optical_power_w(self) -> float:
        """Emitted power (W): linear above threshold."""
        return max(0.0, self.slope_w_per_a * (self.ld_current_a - self.threshold_a))

    @property
    def photodiode_power_w(self) -> float:
        """Monitor photodiode reading (W)."""
        return self.pd_coupling * self.optical_power_w

    # -- external events (tests, physics coupling, fault injection)
    def open_interlock(self) -> None:
        """The interlock loop opens: the LD output trips off."""
        with self.lock:
            self.interlock_closed = False
            if self.ld_on:
                self.ld_on = False
                self.push_error(-221, "Settings conflict; interlock opened, LD output off")

    def close_interlock(self) -> None:
        with self.lock:
            self.interlock_closed = True

    def inject_error(self, code: int, message: str) -> None:
        """Queue a device error as the instrument would (fault injection)."""
        self.push_error(code, message)

    def push_error(self, code: int, message: str) -> None:
        with self.lock:
            if len(self.errors) >= self.ERROR_QUEUE_LEN:
                self.errors[-1] = (-350, "Queue overflow")
                return
            self.errors.append((code, message))

    # -- wire protocol
    def split(self, buffer: bytearray) -> list[bytes]:
        return split_lines(buffer, b"\n")

    def handle(self, request: bytes) -> bytes | None:
        replies = []
        with self.lock:
            self._advance()
            for command in request.decode("ascii", errors="replace").strip().split(";"):
                reply = self._dispatch(command.strip())
                if reply is not None:
                    replies.append(reply)
        return (";".join(replies) + "\n").encode("ascii") if replies else None

    def _dispatch(self, command: str) -> str | None:
        if not command:
            return None
        header, _, arg = command.partition(" ")
        for pattern, action in self._commands:
            if pattern.match(header):
                return action(arg.strip())
        self.push_error(-113, "Undefined header")
        return None

    # -- command actions
    def _rst(self, arg: str) -> None:
        self.ld_on = self.tec_on = False
        self.ld_current_set_a = 0.0
        self.temp_set_c = self.ambient_c

    def _cls(self, arg: str) -> None:
        self.errors.clear()

    def _next_error(self, arg: str) -> str:
        code, message = self.errors.popleft() if self.errors else (0, "No error")
        return f"{code:+d},\"{message}\""

    def _number(self, arg: str) -> float | None:
        try:
            return float(arg)
        except ValueError:
            self.push_error(-104, "Data type error")
            return None

    def _switch(self, arg: str) -> bool | None:
        value = {"ON": True, "1": True, "OFF": False, "0": False}.get(arg.upper())
        if value is None:
            self.push_error(-104, "Data type error")
        return value

    def _set_current(self, arg: str) -> None:
        value = self._number(arg)
        if value is None:
            return
        if not 0.0 <= value <= self.max_current_a:
            self.push_error(-222, "Data out of range")
            return
        self.ld_current_set_a = value

    def _set_temp(self, arg: str) -> None:
        value = self._number(arg)
        if value is None:
            return
        if not 5.0 <= value <= 45.0:
            self.push_error(-222, "Data out of range")
            return
        self.temp_set_c = value

    def _set_tec(self, arg: str) -> None:
        on = self._switch(arg)
        if on is None:
            return
        if not on and self.ld_on:
            self.ld_on = False  # the LD is protected: it trips with its TEC
        self.tec_on = on

    def _set_ld(self, arg: str) -> None:
        on = self._switch(arg)
        if on is None:
            return
        if on and not self.tec_on:
            self.push_error(-221, "Settings conflict; TEC output is off")
        elif on and not self.interlock_closed:
            self.push_error(-221, "Settings conflict; interlock open")
        elif on and self.keylock_tripped:
            self.push_error(-221, "Settings conflict; key lock tripped")
        else:
            self.ld_on = on


def _num(value: float) -> str:
    """SCPI NR3 as the instrument prints it, e.g. ``2.500000E+01``."""
    return f"{value:.6E}"


def serve_itc4001(sim: Itc4001Sim | None = None, *, port: int = 0) -> TcpServer:
    """A started :class:`TcpServer` serving ``sim`` (a new one if None) on loopback; drivers open
    ``f"TCPIP::127.0.0.1::{server.port}::SOCKET"``. ``server.device`` is the simulator."""
    server = TcpServer(sim or Itc4001Sim(), "itc4001", port=port)
    return server.start()  # type: ignore[return-value]
