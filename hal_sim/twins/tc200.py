"""Simulated Thorlabs TC200 temperature controller driving the SPDC crystal oven (the wire twin
of :class:`qnode.drivers.tc200.TC200`).

Protocol (Thorlabs TC200 user manual as implemented by QMI, QuTech's Quantum Measurement
Infrastructure, ``qmi/instruments/thorlabs/tc200.py``): 115200 8N1, commands end ``\\r``. The
controller echoes the command, then ``\\r``, the response (if any), ``\\r`` and the prompt ``> ``;
``stat?`` answers its status byte in hex without leading zero and without the ``\\r``: ``stat?\\r11
> ``. Errors are the texts ``CMD_NOT_DEFINED`` and ``CMD_ARG_RANGE_ERR`` in place of the response.

Commands served: ``id?``, ``stat?``, ``ens`` (toggles the heater output), ``tset=``/``tset?``
(°C, "XX.X Celsius"), ``tact?`` (°C, "XX.X C"), ``pgain=``/``igain=``/``dgain=`` and ``pid?``,
``pmax=``/``pmax?`` (W), ``tmax=``/``tmax?`` (°C), ``tune``/``tune?``.

Time model: with the output on, the oven temperature follows the set point first-order,
T(t) = T_set + (T_0 − T_set)·exp(−t/τ_heat); with it off, it relaxes to ``ambient_c`` with
τ_cool. (Power limit and PID gains are stored, not modelled.) :meth:`phase_matching` turns the
temperature into the SPDC phase-matching efficiency (:mod:`qnode.hal_sim.physics.coupling`).

Device errors through the protocol: :meth:`inject_error` answers the next command with the given
error text; :attr:`alarm` sets the sensor-alarm status bit (0x40).
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from ..physics.coupling import phase_matching_efficiency
from .serve import WireDevice, split_lines

CMD_NOT_DEFINED = "CMD_NOT_DEFINED"
CMD_ARG_RANGE_ERR = "CMD_ARG_RANGE_ERR"

STATUS_OUTPUT_ON = 0x01
STATUS_UNIT_CELSIUS = 0x10
STATUS_ALARM = 0x40


class TC200Twin(WireDevice):
    """A TC200 with a crystal oven on a TH10K sensor, display in °C.

    ``ambient_c``: room temperature and the starting oven temperature (°C); ``tau_heat_s`` /
    ``tau_cool_s``: first-order time constants (s) with the output on / off; ``optimum_c`` and
    ``fwhm_c``: the crystal's phase-matching optimum and width (°C); ``clock``: a time source (s).
    """

    reply_terminator = b"> "

    def __init__(self, *, ambient_c: float = 22.0, setpoint_c: float = 25.0,
                 tau_heat_s: float = 30.0, tau_cool_s: float = 60.0, optimum_c: float = 45.0,
                 fwhm_c: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.ambient_c = float(ambient_c)
        self.tau_heat_s = float(tau_heat_s)
        self.tau_cool_s = float(tau_cool_s)
        self.optimum_c = float(optimum_c)
        self.fwhm_c = float(fwhm_c)
        self._clock = clock
        self._lock = threading.Lock()
        self._t0 = clock()
        self._temp0 = self.ambient_c
        self._setpoint = float(setpoint_c)
        self._output = False
        self.pid = (100, 20, 0)
        self.pmax_w = 18.0
        self.tmax_c = 200.0
        self.tuned = False
        self.alarm = False
        self._pending_error: str | None = None

    # ------------------------------------------------------------------ state the physics reads
    @property
    def temperature_c(self) -> float:
        """Oven temperature now (°C), from the first-order model."""
        with self._lock:
            return self._temperature_at(self._clock())

    @property
    def setpoint_c(self) -> float:
        return self._setpoint

    @property
    def output_enabled(self) -> bool:
        return self._output

    def phase_matching(self) -> float:
        """Normalised phase-matching efficiency at the present temperature (0..1):
        sinc² around ``optimum_c`` with FWHM ``fwhm_c``
        (:func:`~qnode.hal_sim.physics.coupling.phase_matching_efficiency`)."""
        return phase_matching_efficiency(self.temperature_c, self.optimum_c, self.fwhm_c)

    def inject_error(self, text: str = CMD_NOT_DEFINED) -> None:
        """The next command is answered with ``text`` (e.g. ``CMD_ARG_RANGE_ERR``) and not
        carried out."""
        self._pending_error = text

    def status_byte(self) -> int:
        return ((STATUS_OUTPUT_ON if self._output else 0) | STATUS_UNIT_CELSIUS
                | (STATUS_ALARM if self.alarm else 0))

    # ------------------------------------------------------------------ wire protocol
    def split(self, buffer: bytearray) -> list[bytes]:
        return [r.strip(b"\n") for r in split_lines(buffer, b"\r")]

    def handle(self, request: bytes) -> bytes | None:
        cmd = request.decode("ascii", errors="replace")
        if not cmd:
            return b"\r> "
        if self._pending_error is not None:
            err, self._pending_error = self._pending_error, None
            return self._frame(cmd, err)
        if cmd == "stat?":
            echo = cmd
            return f"{echo}\r{self.status_byte():x} > ".encode("ascii")
        return self._frame(cmd, self._execute(cmd))

    def _execute(self, cmd: str) -> str | None:
        if cmd == "id?":
            return "THORLABS TC200 VERSION 2.0"
        if cmd == "ens":
            self._change(output=not self._output)
            return None
        if cmd == "tset?":
            return f"{self._setpoint:.1f} Celsius"
        if cmd == "tact?":
            return f"{self.temperature_c:.1f} C"
        if cmd == "pid?":
            return " ".join(str(g) for g in self.pid)
        if cmd == "pmax?":
            return f"{self.pmax_w:.1f}"
        if cmd == "tmax?":
            return f"{self.tmax_c:.1f}"
        if cmd == "tune?":
            return "1" if self.tuned else "0"
        if cmd == "tune":
            self.tuned = not self.tuned
            return None
        name, eq, arg = cmd.partition("=")
        if not eq:
            return CMD_NOT_DEFINED
        try:
            value = float(arg)
        except ValueError:
            return CMD_ARG_RANGE_ERR
        if name == "tset":
            if not 20.0 <= value <= min(200.0, self.tmax_c):
                return CMD_ARG_RANGE_ERR
            self._change(setpoint=round(value, 1))
        elif name in ("pgain", "igain", "dgain"):
            lo = 1 if name == "pgain" else 0
            if value != int(value) or not lo <= value <= 250:
                return CMD_ARG_RANGE_ERR
            k = ("pgain", "igain", "dgain").index(name)
            gains = list(self.pid)
            gains[k] = int(value)
            self.pid = (gains[0], gains[1], gains[2])
        elif name == "pmax":
            if not 0.1 <= value <= 18.0:
                return CMD_ARG_RANGE_ERR
            self.pmax_w = round(value, 1)
        elif name == "tmax":
            if not 20.0 <= value <= 205.0:
                return CMD_ARG_RANGE_ERR
            self.tmax_c = round(value, 1)
        else:
            return CMD_NOT_DEFINED
        return None

    # ------------------------------------------------------------------ internals
    def _temperature_at(self, t: float) -> float:
        if self._output:
            target, tau = self._setpoint, self.tau_heat_s
        else:
            target, tau = self.ambient_c, self.tau_cool_s
        return target + (self._temp0 - target) * math.exp(-(t - self._t0) / tau)

    def _change(self, *, output: bool | None = None, setpoint: float | None = None) -> None:
        """Restart the exponential from the present temperature with the new target."""
        with self._lock:
            now = self._clock()
            self._temp0 = self._temperature_at(now)
            self._t0 = now
            if output is not None:
                self._output = output
            if setpoint is not None:
                self._setpoint = setpoint

    def _frame(self, cmd: str, response: str | None) -> bytes:
        echo = cmd
        body = "" if response is None else response + "\r"
        return f"{echo}\r{body}> ".encode("ascii")
