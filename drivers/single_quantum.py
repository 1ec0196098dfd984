"""Single Quantum SNSPD system (detector bias, trigger levels, counters) over two TCP sockets.

Protocol source: Single Quantum's own QCoDeS driver (QCoDeS/Qcodes_contrib_drivers
``drivers/SingleQuantum/SingleQuantum.py``, MIT):

* **Control**, TCP 12000: the client sends bare JSON objects; the system answers with JSON
  messages ``{"label": ..., "value": ...}``, each followed by ``\\x17`` (a chunk may hold several
  objects back to back, which the vendor client splits at ``}{``). Settings:
  ``SetAllBiasCurrents``/``BiasCurrent`` (µA per detector), ``SetAllTriggerLevels``/
  ``TriggerLevel`` (mV), ``DetectorEnable`` (bool), ``SetMeasurementPeriod``/
  ``InptMeasurementPeriod`` (ms). A label containing "Error" is the system's error report.
* **Counts**, TCP 12345: CSV lines ``timestamp, c1, c2, ...``, one per measurement period.

Assumptions this driver makes beyond the vendor code (check on a real system): a setting is
acknowledged by a broadcast of its label with the new value (the vendor client folds such
broadcasts into its label table); a label can be requested by name, ``{"request": <label>}``
(the vendor client does so for ``BiasVoltage``); pass ``use_label_props=True`` to request the
full ``labelProps`` table instead, as the vendor client does for the other labels. The counts are
taken as counts per measurement period, so rates in Hz are counts / period.

Transport: :class:`TcpLineTransport`, pyserial's ``socket://`` URL under the shared
:class:`~qnode.drivers.transport.SerialTransport` (lock, timeouts, resync, reconnect).
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass

from .driver import Driver
from .errors import DeviceError, GarbledReply, InstrumentError, InstrumentTimeout
from .transport import SerialTransport

CONTROL_PORT = 12000
COUNTS_PORT = 12345
_INT = re.compile(r"^\s*[+-]?\d+\s*$")
_FLOAT = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """``(host, port)`` of ``host:port``; ``(address, default_port)`` when no port is given."""
    host, _, port = address.rpartition(":")
    if host and port.isdigit():
        return host, int(port)
    return address, default_port


class TcpLineTransport(SerialTransport):
    """A TCP stream through pyserial's ``socket://host:port`` URL, with
    :meth:`discard_input` to drop whatever a streaming peer has sent so far."""

    @classmethod
    def to(cls, host: str, port: int, **kwargs: object) -> TcpLineTransport:
        return cls(f"socket://{host}:{port}", **kwargs)  # type: ignore[arg-type]

    def discard_input(self) -> None:
        """Drop buffered and pending bytes without waiting (the next read is fresh)."""
        with self.lock:
            self._buffer.clear()
            if self._port is not None and self._open_now:
                try:
                    # every pyserial backend has reset_input_buffer; the stubs declare it only
                    # on the concrete classes, not on SerialBase
                    self._port.reset_input_buffer()  # type: ignore[attr-defined]
                except Exception as exc:  # noqa: BLE001 - a broken link: say so, typed
                    self._broken(exc, None)


@dataclass(frozen=True)
class CountsSample:
    """One line of the counts stream: the system's timestamp, counts per detector in one
    measurement period, and those counts as rates (Hz)."""

    timestamp: float
    counts: tuple[int, ...]
    rates_hz: tuple[float, ...]


class SingleQuantum(Driver):
    """A Single Quantum SNSPD system. Detectors are numbered from 0 here (column ``det + 1`` of
    the counts CSV). Units: bias µA, trigger mV, period ms, rates Hz.
    """

    def __init__(self, control: SerialTransport, counts: SerialTransport | None = None, *,
                 use_label_props: bool = False):
        self.control = control
        self.counts_link = counts
        self.use_label_props = use_label_props
        self._n: int | None = None
        self._period_ms: float | None = None

    @classmethod
    def connect(cls, host: str = "127.0.0.1", *, control_port: int = CONTROL_PORT,
                counts_port: int = COUNTS_PORT, timeout_s: float = 1.0,
                instrument: str = "Single Quantum SNSPD", use_label_props: bool = False,
                **options: object) -> SingleQuantum:
        """A driver on two new (unopened) :class:`TcpLineTransport` links; ``options`` go to
        both transports (e.g. ``reconnect_attempts``)."""
        control = TcpLineTransport.to(host, control_port, instrument=f"{instrument} control",
                                      read_termination="\x17", write_termination="",
                                      encoding="utf-8", timeout_s=timeout_s, **options)
        counts = TcpLineTransport.to(host, counts_port, instrument=f"{instrument} counts",
                                     read_termination="\n", encoding="ascii",
                                     timeout_s=timeout_s, **options)
        return cls(control, counts, use_label_props=use_label_props)

    @classmethod
    def from_config(cls, address: str, *, name: str, timeout_s: float,
                    **options: object) -> SingleQuantum:
        """:meth:`connect` to ``address``, ``host`` or ``host:port`` of the control port
        (default :data:`CONTROL_PORT`); ``options`` are :meth:`connect`'s keywords."""
        host, port = split_host_port(address, CONTROL_PORT)
        return cls.connect(host, control_port=port, timeout_s=timeout_s,
                           **options)  # type: ignore[arg-type]

    # -- life cycle: two links (control and counts)
    def open(self) -> SingleQuantum:
        self.control.open()
        if self.counts_link is not None:
            self.counts_link.open()
        return self

    def close(self) -> None:
        self.control.close()
        if self.counts_link is not None:
            self.counts_link.close()

    def reconnect(self) -> None:
        self.control.reconnect()
        if self.counts_link is not None:
            self.counts_link.reconnect()

    # -- control messages
    def _garbled(self, link: SerialTransport, message: str, command: str | None,
                 reply: str) -> InstrumentError:
        link.mark_stale()
        return link.error(GarbledReply, message, command, reply=reply)

    def _messages(self, chunk: str, command: str) -> list[dict]:
        """JSON objects in one ``\\x17``-terminated chunk (strict)."""
        decoder = json.JSONDecoder()
        out, i, text = [], 0, chunk.strip()
        while i < len(text):
            try:
                obj, i = decoder.raw_decode(text, i)
            except ValueError:
                raise self._garbled(self.control, "malformed JSON message", command,
                                    chunk) from None
            if not isinstance(obj, dict) or "label" not in obj or "value" not in obj:
                raise self._garbled(self.control, "expected {label, value}", command, chunk)
            out.append(obj)
            while i < len(text) and text[i].isspace():
                i += 1
        return out

    def _exchange(self, message: dict, label: str, accept=lambda value: True,
                  timeout_s: float | None = None) -> object:
        """Send ``message``; read messages until one with ``label`` whose value ``accept``s;
        that value. Other labels (broadcasts) are skipped; an "Error" label is a DeviceError."""
        command = json.dumps(message)
        link = self.control
        with link.lock:
            deadline = time.monotonic() + (link.timeout_s if timeout_s is None else timeout_s)
            chunk = link.query(command, timeout_s=timeout_s)
            while True:
                for msg in self._messages(chunk, command):
                    name, value = str(msg["label"]), msg["value"]
                    if "Error" in name:
                        raise link.error(DeviceError, f"device error: {value}", command,
                                         code=str(value))
                    if name == label and isinstance(value, dict) and "value" in value:
                        value = value["value"]  # labelProps form
                    if name == label and accept(value):
                        return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    link.mark_stale()
                    raise link.error(InstrumentTimeout,
                                     f"no {label!r} message within {link.timeout_s:g} s", command)
                chunk = link.read(command=command, timeout_s=remaining)

    def get(self, label: str) -> object:
        """The current value of ``label`` (requested by name, or via labelProps)."""
        request = {"request": "labelProps", "value": "None"} if self.use_label_props \
            else {"request": label}
        return self._exchange(request, label)

    def _set(self, command: str, label: str, value: object) -> None:
        """Send a setting and wait for the system's broadcast of the new value."""
        self._exchange({"command": command, "label": label, "value": value}, label,
                       accept=lambda got: _same(got, value))

    # -- typed readers
    def _floats(self, label: str) -> list[float]:
        value = self.get(label)
        n = self.number_of_detectors
        if not isinstance(value, list) or len(value) != n or not all(_is_number(v) for v in value):
            raise self._garbled(self.control, f"expected {n} numbers for {label}", label,
                                repr(value))
        return [float(v) for v in value]

    @property
    def number_of_detectors(self) -> int:
        """Detector channels of the system (cached after the first read)."""
        if self._n is None:
            value = self.get("NumberOfDetectors")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise self._garbled(self.control, "expected a positive integer",
                                    "NumberOfDetectors", repr(value))
            self._n = value
        return self._n

    def _check_det(self, det: int) -> None:
        if not 0 <= det < self.number_of_detectors:
            raise ValueError(f"detector {det} not in 0..{self.number_of_detectors - 1}")

    # -- bias
    def bias_currents_ua(self) -> list[float]:
        """Bias current of every detector (µA)."""
        return self._floats("BiasCurrent")

    def set_bias_currents_ua(self, currents_ua: list[float]) -> None:
        """Bias current of every detector (µA); DeviceError if the system refuses."""
        values = [float(v) for v in currents_ua]
        if len(values) != self.number_of_detectors:
            raise ValueError(f"need {self.number_of_detectors} bias currents")
        self._set("SetAllBiasCurrents", "BiasCurrent", values)

    def bias_current_ua(self, det: int) -> float:
        self._check_det(det)
        return self.bias_currents_ua()[det]

    def set_bias_current_ua(self, det: int, current_ua: float) -> None:
        """Bias of one detector (read-modify-write of the array, under the control lock)."""
        self._check_det(det)
        with self.control.lock:
            values = self.bias_currents_ua()
            values[det] = float(current_ua)
            self.set_bias_currents_ua(values)

    def bias_voltages_mv(self) -> list[float]:
        """Voltage read back on each bias line (mV)."""
        return self._floats("BiasVoltage")

    # -- trigger
    def trigger_levels_mv(self) -> list[float]:
        """Comparator trigger level of every detector (mV)."""
        return self._floats("TriggerLevel")

    def set_trigger_levels_mv(self, levels_mv: list[float]) -> None:
        values = [float(v) for v in levels_mv]
        if len(values) != self.number_of_detectors:
            raise ValueError(f"need {self.number_of_detectors} trigger levels")
        self._set("SetAllTriggerLevels", "TriggerLevel", values)

    def set_trigger_level_mv(self, det: int, level_mv: float) -> None:
        self._check_det(det)
        with self.control.lock:
            values = self.trigger_levels_mv()
            values[det] = float(level_mv)
            self.set_trigger_levels_mv(values)

    # -- enable, period
    @property
    def detectors_enabled(self) -> bool:
        value = self.get("DetectorEnable")
        if not isinstance(value, bool):
            raise self._garbled(self.control, "expected true/false", "DetectorEnable",
                                repr(value))
        return value

    def enable_detectors(self, on: bool = True) -> None:
        """Switch the bias of all detectors on or off."""
        self._set("DetectorEnable", "DetectorEnable", bool(on))

    @property
    def measurement_period_ms(self) -> float:
        """Counter integration period (ms)."""
        value = self.get("InptMeasurementPeriod")
        if not _is_number(value) or value <= 0:  # type: ignore[operator]
            raise self._garbled(self.control, "expected a positive number",
                                "InptMeasurementPeriod", repr(value))
        self._period_ms = float(value)  # type: ignore[arg-type]
        return self._period_ms

    def set_measurement_period_ms(self, period_ms: int) -> None:
        self._set("SetMeasurementPeriod", "InptMeasurementPeriod", int(period_ms))
        self._period_ms = float(int(period_ms))

    # -- counts
    def read_counts(self, *, fresh: bool = True, timeout_s: float | None = None) -> CountsSample:
        """The next line of the counts stream; ``fresh`` first drops lines already received
        (so the sample is measured after this call). Timeout: the link's, which must exceed the
        measurement period."""
        link = self.counts_link
        if link is None:
            raise ValueError("no counts link")
        if self._period_ms is None:
            self.measurement_period_ms  # noqa: B018 - read and cache the period
        with link.lock:
            if fresh and isinstance(link, TcpLineTransport):
                link.discard_input()
            line = link.read(command="<counts stream>", timeout_s=timeout_s)
        return self._parse_counts(line)

    def _parse_counts(self, line: str) -> CountsSample:
        link = self.counts_link
        assert link is not None
        fields = line.strip().split(",")
        n = self.number_of_detectors
        if len(fields) != n + 1 or not _FLOAT.match(fields[0]) or not all(
                _INT.match(f) for f in fields[1:]):
            raise self._garbled(link, f"expected 'timestamp,c1..c{n}'", "<counts stream>", line)
        counts = tuple(int(f) for f in fields[1:])
        period_s = (self._period_ms or 1000.0) / 1000.0
        return CountsSample(float(fields[0]), counts, tuple(c / period_s for c in counts))


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same(got: object, want: object) -> bool:
    """Does an acknowledged value match the one sent (floats to 1e-6 relative)?"""
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(
            _same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if _is_number(want) and _is_number(got):
        return math.isclose(float(got), float(want), rel_tol=1e-6, abs_tol=1e-9)  # type: ignore[arg-type]
    return got == want
