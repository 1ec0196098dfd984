"""Twin of a Single Quantum SNSPD system: JSON control socket plus CSV counts stream.

Protocol (from Single Quantum's own QCoDeS driver, QCoDeS/Qcodes_contrib_drivers
``drivers/SingleQuantum/SingleQuantum.py``, MIT):

* **Control** (port 12000 on the real system): the client sends bare JSON objects; the system
  sends JSON messages ``{"label": ..., "value": ...}`` each followed by ``\\x17``. Commands
  ``{"command": "SetAllBiasCurrents", "label": "BiasCurrent", "value": [µA, ...]}``,
  ``SetAllTriggerLevels``/``TriggerLevel`` (mV), ``DetectorEnable``/``DetectorEnable`` (bool),
  ``SetMeasurementPeriod``/``InptMeasurementPeriod`` (ms). Requests ``{"request": "labelProps"}``
  (every label, value as ``{"value": ..., "unit": ...}``) and ``{"request": <label>}`` (one
  label; the vendor client uses this form for ``BiasVoltage``). After a command the twin
  broadcasts the label's new value; a refused one gives ``{"label": "Error", "value": text}``
  (the vendor client treats any label containing "Error" as an error report).
* **Counts** (port 12345): one CSV line per measurement period, ``timestamp_ms,c1,c2,...``, with
  ``c_i`` the counts of detector *i* in that period.

Physics (phenomenological; ``I`` bias current, ``I_sw`` switching current of the detector):

* detection efficiency ``η(I) = η_max / (1 + exp(-(I/I_sw - x_half)/width))``, the plateau
  SNSPDs show below the switching current; above ``I_sw`` the wire latches normal: ``η = 0``;
* dark-count rate ``D(I) = D_floor + D_sw · exp((I - I_sw)/(k · I_sw))``, rising exponentially
  towards ``I_sw``; 0 when latched;
* counts in one period ~ Poisson((η · Φ + D) · T) with ``Φ`` the incident photon flux
  (:attr:`SingleQuantumSim.photon_flux_hz`, set by the optics model), 0 when detectors are
  disabled or the trigger level exceeds the pulse amplitude.

:class:`SingleQuantumTwin` serves both sockets on loopback (ports chosen freely by default).
"""
from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence

import numpy as np

from .serve import TcpServer, WireDevice

ETB = b"\x17"


class SingleQuantumSim:
    """State and physics of an ``n_detectors`` SNSPD system (units: µA, mV, ms, Hz)."""

    def __init__(self, n_detectors: int = 4, *,
                 switching_current_ua: float | Sequence[float] = 20.0,
                 eta_max: float = 0.85, x_half: float = 0.75, width: float = 0.04,
                 dark_floor_hz: float = 1.0, dark_at_switching_hz: float = 1.0e5,
                 dark_scale: float = 0.03, pulse_amplitude_mv: float = 300.0,
                 measurement_period_ms: int = 100, seed: int | None = 0):
        n = int(n_detectors)
        isw = ([float(switching_current_ua)] * n if isinstance(switching_current_ua, (int, float))
               else [float(v) for v in switching_current_ua])
        if len(isw) != n:
            raise ValueError("one switching current per detector")
        self.n_detectors = n
        self.switching_current_ua = isw
        self.eta_max = eta_max
        self.x_half = x_half
        self.width = width
        self.dark_floor_hz = dark_floor_hz
        self.dark_at_switching_hz = dark_at_switching_hz
        self.dark_scale = dark_scale
        self.pulse_amplitude_mv = pulse_amplitude_mv
        self.lock = threading.RLock()
        self.bias_ua = [0.0] * n
        self.trigger_mv = [100.0] * n
        self.enabled = False
        self.measurement_period_ms = int(measurement_period_ms)
        self.photon_flux_hz = [0.0] * n  # incident photons/s per detector (physics input)
        self.rng = np.random.default_rng(seed)
        self.t0 = time.monotonic()

    # -- physics
    def latched(self, det: int) -> bool:
        """True when the bias is at or above the switching current (the wire stays normal)."""
        return self.bias_ua[det] >= self.switching_current_ua[det]

    def efficiency(self, det: int) -> float:
        """System detection efficiency of detector ``det`` (0-based) at its present bias."""
        with self.lock:
            if self.latched(det):
                return 0.0
            x = self.bias_ua[det] / self.switching_current_ua[det]
            return self.eta_max / (1.0 + math.exp(-(x - self.x_half) / self.width))

    def dark_count_rate_hz(self, det: int) -> float:
        """Dark-count rate (Hz) of detector ``det`` at its present bias."""
        with self.lock:
            if self.latched(det):
                return 0.0
            isw = self.switching_current_ua[det]
            excess = (self.bias_ua[det] - isw) / (self.dark_scale * isw)
            return self.dark_floor_hz + self.dark_at_switching_hz * math.exp(excess)

    def count_rate_hz(self, det: int) -> float:
        """Expected click rate (Hz): efficiency × flux + darks, gated by enable and trigger."""
        with self.lock:
            if not self.enabled or self.trigger_mv[det] > self.pulse_amplitude_mv:
                return 0.0
            return self.efficiency(det) * self.photon_flux_hz[det] + self.dark_count_rate_hz(det)

    def sample_counts(self) -> list[int]:
        """Counts of each detector in one measurement period (Poisson)."""
        with self.lock:
            t = self.measurement_period_ms / 1000.0
            return [int(self.rng.poisson(self.count_rate_hz(d) * t))
                    for d in range(self.n_detectors)]

    def counts_line(self) -> bytes:
        """One line of the counts stream: ``timestamp_ms,c1,...,cn\\n``."""
        stamp = round((time.monotonic() - self.t0) * 1000.0)
        return (",".join(str(v) for v in [stamp, *self.sample_counts()]) + "\n").encode()

    def bias_voltage_mv(self, det: int) -> float:
        """Voltage across the bias resistor (10 kΩ), more when latched (mV)."""
        r_kohm = 10.0 + (0.5 if self.latched(det) else 0.0)
        return self.bias_ua[det] * r_kohm

    # -- labels
    def labels(self) -> dict[str, tuple[object, str]]:
        """Every label: (value, unit)."""
        with self.lock:
            return {
                "NumberOfDetectors": (self.n_detectors, ""),
                "BiasCurrent": (list(self.bias_ua), "uA"),
                "TriggerLevel": (list(self.trigger_mv), "mV"),
                "DetectorEnable": (self.enabled, ""),
                "InptMeasurementPeriod": (self.measurement_period_ms, "ms"),
                "BiasVoltage": ([self.bias_voltage_mv(d) for d in range(self.n_detectors)],
                                "mV"),
            }

    def apply(self, command: str, value: object) -> tuple[str, object]:
        """Apply one command; (label, new value). ValueError with the device's text if refused."""
        n = self.n_detectors
        with self.lock:
            if command == "SetAllBiasCurrents":
                values = _numbers(value, n, "BiasCurrent")
                if any(not -100.0 <= v <= 100.0 for v in values):
                    raise ValueError("BiasCurrent out of range [-100, 100] uA")
                self.bias_ua = values
                return "BiasCurrent", list(values)
            if command == "SetAllTriggerLevels":
                values = _numbers(value, n, "TriggerLevel")
                if any(not -2000.0 <= v <= 2000.0 for v in values):
                    raise ValueError("TriggerLevel out of range [-2000, 2000] mV")
                self.trigger_mv = values
                return "TriggerLevel", list(values)
            if command == "DetectorEnable":
                if not isinstance(value, bool):
                    raise ValueError("DetectorEnable expects true or false")
                self.enabled = value
                return "DetectorEnable", value
            if command == "SetMeasurementPeriod":
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or not 10 <= value <= 60000:
                    raise ValueError("InptMeasurementPeriod out of range [10, 60000] ms")
                self.measurement_period_ms = int(value)
                return "InptMeasurementPeriod", self.measurement_period_ms
            raise ValueError(f"unknown command {command!r}")


def _numbers(value: object, n: int, label: str) -> list[float]:
    if not isinstance(value, list) or len(value) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{label} expects a list of {n} numbers")
    return [float(v) for v in value]


def split_json_objects(buffer: bytearray) -> list[bytes]:
    """Cut complete top-level JSON objects from ``buffer`` (bytes outside objects, such as
    ``\\x17`` separators, are dropped; an unfinished object stays)."""
    out = []
    while True:
        start = buffer.find(b"{")
        if start < 0:
            buffer.clear()
            return out
        depth, in_string, escaped, end = 0, False, False, -1
        for i in range(start, len(buffer)):
            c = buffer[i]
            if in_string:
                if escaped:
                    escaped = False
                elif c == 0x5C:  # backslash
                    escaped = True
                elif c == 0x22:
                    in_string = False
            elif c == 0x22:
                in_string = True
            elif c == 0x7B:
                depth += 1
            elif c == 0x7D:
                depth -= 1
                if depth == 0:
                    end = i + 1
                    break
        if end < 0:
            del buffer[:start]
            return out
        out.append(bytes(buffer[start:end]))
        del buffer[:end]


class SingleQuantumControl(WireDevice):
    """The control socket's protocol on top of a :class:`SingleQuantumSim`."""

    reply_terminator = ETB

    def __init__(self, sim: SingleQuantumSim):
        self.sim = sim

    def split(self, buffer: bytearray) -> list[bytes]:
        return split_json_objects(buffer)

    @staticmethod
    def message(label: str, value: object) -> bytes:
        return json.dumps({"label": label, "value": value}).encode() + ETB

    def handle(self, request: bytes) -> bytes | None:
        try:
            msg = json.loads(request)
        except ValueError:
            return self.message("Error", "malformed JSON")
        if not isinstance(msg, dict):
            return self.message("Error", "expected a JSON object")
        if "command" in msg:
            try:
                label, value = self.sim.apply(str(msg["command"]), msg.get("value"))
            except ValueError as exc:
                return self.message("Error", str(exc))
            return self.message(label, value)
        request_name = msg.get("request")
        labels = self.sim.labels()
        if request_name == "labelProps":
            return b"".join(self.message(k, {"value": v, "unit": u})
                            for k, (v, u) in labels.items())
        if request_name in labels:
            return self.message(str(request_name), labels[str(request_name)][0])
        return self.message("Error", f"unknown request {request_name!r}")


class NoRequests(WireDevice):
    """The counts socket takes no requests: whatever a client sends is discarded."""

    reply_terminator = b"\n"

    def split(self, buffer: bytearray) -> list[bytes]:
        buffer.clear()
        return []

    def handle(self, request: bytes) -> bytes | None:
        return None


class CountsServer(TcpServer):
    """Pushes :meth:`SingleQuantumSim.counts_line` to the connected client every measurement
    period (faults apply to each line)."""

    def __init__(self, sim: SingleQuantumSim, name: str = "sq-counts", port: int = 0,
                 host: str = "127.0.0.1"):
        super().__init__(NoRequests(), name, port, host)
        self.sim = sim

    def _run(self) -> None:
        next_push = time.monotonic()
        while not self._stop.is_set():
            if self._client is None:
                try:
                    assert self._listener is not None
                    self._client, _ = self._listener.accept()
                    self._client.settimeout(0.005)
                    next_push = time.monotonic() + self.sim.measurement_period_ms / 1000.0
                except (TimeoutError, OSError):
                    pass
                continue
            client = self._client
            try:
                if not client.recv(4096):  # the driver closed its side
                    self.disconnect()
                    continue
            except TimeoutError:
                pass
            except OSError:
                self._client = None
                continue
            now = time.monotonic()
            if now < next_push:
                continue
            period = self.sim.measurement_period_ms / 1000.0
            next_push = max(next_push + period, now)
            out, delay = self.faults.apply(self.sim.counts_line())
            if out is None:
                continue
            try:
                if delay > 0:
                    threading.Timer(delay, self._send_late, (client.sendall, out)).start()
                else:
                    client.sendall(out)
            except OSError:
                self._client = None


class SingleQuantumTwin:
    """Both servers of one simulated system: :attr:`control` (JSON, ``\\x17``-separated
    replies) and :attr:`counts` (CSV stream), on loopback ports :attr:`control_port` and
    :attr:`counts_port`. :attr:`sim` is the shared state and physics."""

    def __init__(self, sim: SingleQuantumSim | None = None, *, control_port: int = 0,
                 counts_port: int = 0):
        self.sim = sim or SingleQuantumSim()
        self.control = TcpServer(SingleQuantumControl(self.sim), "sq-control", port=control_port)
        self.counts = CountsServer(self.sim, port=counts_port)

    @property
    def host(self) -> str:
        return self.control.host

    @property
    def control_port(self) -> int:
        return self.control.port

    @property
    def counts_port(self) -> int:
        return self.counts.port

    def start(self) -> SingleQuantumTwin:
        self.control.start()
        self.counts.start()
        return self

    def stop(self) -> None:
        self.control.stop()
        self.counts.stop()

    def restart(self, downtime_s: float = 0.0) -> None:
        """Both sockets close, then listen again on the same ports (state is kept)."""
        self.counts.stop()
        self.control.restart(downtime_s)
        self.counts.restart()

    def __enter__(self) -> SingleQuantumTwin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
