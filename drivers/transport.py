"""Transports: the byte- or message-level link to one instrument, under every driver.

Rules every transport keeps (docs/operators/instruments.md describes them for operators):

* **One lock per instrument.** ``Transport.lock`` (re-entrant) serialises every exchange;
  drivers hold it across multi-step transactions (``with t.lock: ...``). pyvisa and pyserial are
  not thread-safe, so two threads never talk to one instrument at once.
* **Every call has a timeout** (``timeout_s``, seconds) and raises
  :class:`~qnode.drivers.errors.InstrumentTimeout` naming the instrument, address and command.
* **Resync after trouble.** After a timeout or a garbled reply the transport is marked stale;
  before the next exchange it discards whatever arrives until the line has been quiet for a whole
  timeout, so a late answer is never read as the reply to the next command (pyvisa-py #376,
  QCoDeS PR #611).
* **Reconnect** closes and reopens with bounded, growing back-off, raising
  :class:`~qnode.drivers.errors.Disconnected` when the attempts run out.

:class:`StreamTransport` frames text commands on a byte stream (serial ports, ptys, TCP sockets
via pyserial URLs); message transports (VISA, ZeroMQ) subclass :class:`Transport` directly.
"""
from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, TypeVar

import serial

from .errors import Disconnected, InstrumentError, InstrumentTimeout

E = TypeVar("E", bound=InstrumentError)


class Transport(ABC):
    """A link to one instrument (see the module docstring for the rules it keeps).

    ``address``: where the instrument is (port path, URL, VISA resource); ``instrument``: a
    human name for messages ("TC200 oven"); ``timeout_s``: default timeout of each call;
    ``reconnect_attempts``/``reconnect_backoff_s``/``reconnect_max_backoff_s``: how
    :meth:`reconnect` retries (back-off doubles from the first value up to the maximum).
    """

    def __init__(self, address: str, *, instrument: str, timeout_s: float = 1.0,
                 reconnect_attempts: int = 5, reconnect_backoff_s: float = 0.1,
                 reconnect_max_backoff_s: float = 2.0):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.address = address
        self.instrument = instrument
        self.timeout_s = float(timeout_s)
        self.reconnect_attempts = int(reconnect_attempts)
        self.reconnect_backoff_s = float(reconnect_backoff_s)
        self.reconnect_max_backoff_s = float(reconnect_max_backoff_s)
        self.lock = threading.RLock()
        self._open_now = False
        self._stale = False

    # -- errors that name this instrument
    def error(self, cls: type[E], message: str, command: str | None = None,
              **extra: object) -> E:
        """An error of type ``cls`` naming this transport's instrument and address."""
        return cls(message, instrument=self.instrument, address=self.address, command=command,
                   **extra)

    # -- life cycle
    @property
    def is_open(self) -> bool:
        return self._open_now

    def open(self) -> None:
        """Open the link (idempotent). Raises Disconnected if it cannot be opened."""
        with self.lock:
            if self._open_now:
                return
            try:
                self._open()
            except InstrumentError:
                raise
            except Exception as exc:  # the library's own error: name the instrument
                raise self.error(Disconnected, f"cannot open: {exc}") from exc
            self._open_now = True
            self._stale = False

    def close(self) -> None:
        """Close the link (idempotent; never raises for an already broken link)."""
        with self.lock:
            if not self._open_now:
                return
            self._open_now = False
            try:
                self._close()
            except Exception:  # noqa: BLE001 - closing a dead link must not fail
                pass

    def reconnect(self) -> None:
        """Close, then reopen with bounded back-off; Disconnected when every attempt failed."""
        with self.lock:
            self.close()
            delay = self.reconnect_backoff_s
            last: Exception | None = None
            for _ in range(max(1, self.reconnect_attempts)):
                try:
                    self.open()
                    return
                except Disconnected as exc:
                    last = exc
                    time.sleep(delay)
                    delay = min(2 * delay, self.reconnect_max_backoff_s)
            raise self.error(Disconnected,
                             f"reconnect failed after {self.reconnect_attempts} attempts: {last}")

    def __enter__(self) -> Transport:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- exchanges
    def query(self, command: str, *, timeout_s: float | None = None) -> str:
        """Send ``command`` and return its reply (framing per transport)."""
        with self.lock:
            self._before_exchange(command)
            self._send(command)
            return self._receive(command, self._deadline(timeout_s))

    def write(self, command: str) -> None:
        """Send ``command``, expecting no reply."""
        with self.lock:
            self._before_exchange(command)
            self._send(command)

    def read(self, *, command: str | None = None, timeout_s: float | None = None) -> str:
        """Read one reply (e.g. a second line of a multi-line answer)."""
        with self.lock:
            if not self._open_now:
                raise self.error(Disconnected, "not open", command)
            return self._receive(command, self._deadline(timeout_s))

    def mark_stale(self) -> None:
        """Note that the line may hold a stray reply (drivers call this after a garbled one)."""
        self._stale = True

    def resync(self) -> None:
        """Discard anything pending so the next exchange starts clean."""
        with self.lock:
            if self._open_now:
                self._resync()
            self._stale = False

    def _before_exchange(self, command: str) -> None:
        if not self._open_now:
            raise self.error(Disconnected, "not open", command)
        if self._stale:
            self.resync()

    def _deadline(self, timeout_s: float | None) -> float:
        return time.monotonic() + (self.timeout_s if timeout_s is None else float(timeout_s))

    # -- what each transport implements
    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...

    @abstractmethod
    def _send(self, command: str) -> None:
        """Send one command (framed); raise Disconnected on a broken link."""

    @abstractmethod
    def _receive(self, command: str | None, deadline: float) -> str:
        """Return one reply; on timeout mark stale and raise InstrumentTimeout."""

    @abstractmethod
    def _resync(self) -> None:
        """Drop pending input (and any half-read reply)."""


class StreamTransport(Transport):
    """Text commands framed on a byte stream.

    ``write_termination`` is appended to each command; a reply ends at ``read_termination``
    (returned without it). :meth:`write_bytes`, :meth:`read_until` and :meth:`read_exactly` serve
    protocols with other framing (e.g. a prompt). Subclasses provide the raw byte I/O.
    """

    #: a resync gives up draining a babbling line after this many timeouts
    resync_limit_timeouts = 5.0

    def __init__(self, address: str, *, instrument: str, write_termination: str = "\n",
                 read_termination: str = "\n", encoding: str = "ascii", **kwargs: object):
        super().__init__(address, instrument=instrument, **kwargs)  # type: ignore[arg-type]
        self.write_termination = write_termination
        self.read_termination = read_termination
        self.encoding = encoding
        self._buffer = bytearray()

    # raw byte I/O, per medium
    @abstractmethod
    def _write_raw(self, data: bytes) -> None: ...

    @abstractmethod
    def _read_raw(self, timeout_s: float) -> bytes:
        """Up to a few bytes, waiting at most ``timeout_s``; b"" if none arrived."""

    def write_bytes(self, data: bytes, *, command: str | None = None) -> None:
        with self.lock:
            if not self._open_now:
                raise self.error(Disconnected, "not open", command)
            try:
                self._write_raw(data)
            except (serial.SerialException, OSError) as exc:
                self._broken(exc, command)

    def read_until(self, terminator: bytes, *, command: str | None = None,
                   timeout_s: float | None = None) -> bytes:
        """Bytes up to ``terminator`` (excluded; it is consumed)."""
        with self.lock:
            deadline = self._deadline(timeout_s)
            while True:
                i = self._buffer.find(terminator)
                if i >= 0:
                    out = bytes(self._buffer[:i])
                    del self._buffer[:i + len(terminator)]
                    return out
                self._fill(command, deadline)

    def read_exactly(self, n: int, *, command: str | None = None,
                     timeout_s: float | None = None) -> bytes:
        with self.lock:
            deadline = self._deadline(timeout_s)
            while len(self._buffer) < n:
                self._fill(command, deadline)
            out = bytes(self._buffer[:n])
            del self._buffer[:n]
            return out

    def _fill(self, command: str | None, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._stale = True
            got = f"; partial reply {bytes(self._buffer)!r}" if self._buffer else ""
            raise self.error(InstrumentTimeout,
                             f"no complete reply within {self.timeout_s:g} s{got}", command)
        if not self._open_now:
            raise self.error(Disconnected, "not open", command)
        try:
            self._buffer += self._read_raw(min(remaining, 0.1))
        except (serial.SerialException, OSError) as exc:
            self._broken(exc, command)

    def _broken(self, exc: Exception, command: str | None) -> None:
        self._open_now = False
        try:
            self._close()
        except Exception:  # noqa: BLE001
            pass
        raise self.error(Disconnected, f"link lost: {exc}", command) from exc

    def _send(self, command: str) -> None:
        self.write_bytes((command + self.write_termination).encode(self.encoding),
                         command=command)

    def _receive(self, command: str | None, deadline: float) -> str:
        term = self.read_termination.encode(self.encoding)
        raw = self.read_until(term, command=command,
                              timeout_s=max(0.0, deadline - time.monotonic()))
        return raw.decode(self.encoding, errors="replace")

    def _resync(self) -> None:
        """Drop the buffer and drain until the line has been silent for one whole timeout: a
        reply up to twice the timeout late is discarded here (later ones are caught by drivers
        whose protocols echo the command)."""
        self._buffer.clear()
        start = time.monotonic()
        quiet_since = start
        while time.monotonic() - start < self.resync_limit_timeouts * self.timeout_s:
            try:
                data = self._read_raw(min(0.05, self.timeout_s / 2))
            except (serial.SerialException, OSError) as exc:
                self._broken(exc, None)
            if data:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= self.timeout_s:
                return


class SerialTransport(StreamTransport):
    """A serial port through pyserial: a device path (``/dev/ttyUSB0``, a pty such as
    ``/dev/pts/7``) or any pyserial URL (``socket://host:port``, ``rfc2217://...``).

    ``serial_options`` go to ``serial.serial_for_url`` (baudrate, bytesize, parity, stopbits,
    rtscts, xonxoff ...).
    """

    def __init__(self, address: str, *, instrument: str, baudrate: int = 9600,
                 serial_options: dict[str, object] | None = None, **kwargs: object):
        super().__init__(address, instrument=instrument, **kwargs)  # type: ignore[arg-type]
        self.baudrate = baudrate
        self.serial_options: dict[str, Any] = dict(serial_options or {})
        self._port: serial.SerialBase | None = None

    def _open(self) -> None:
        self._port = serial.serial_for_url(self.address, baudrate=self.baudrate, timeout=0.1,
                                           write_timeout=self.timeout_s, **self.serial_options)
        self._buffer.clear()

    def _close(self) -> None:
        if self._port is not None:
            port, self._port = self._port, None
            try:
                port.close()
            finally:
                # pyserial's socket:// close() skips the socket's close() when shutdown() fails
                # on a reset connection, leaking the socket: close it here in any case.
                sock = getattr(port, "_socket", None)
                if sock is not None:
                    sock.close()

    def _write_raw(self, data: bytes) -> None:
        assert self._port is not None
        self._port.write(data)
        self._port.flush()

    def _read_raw(self, timeout_s: float) -> bytes:
        assert self._port is not None
        self._port.timeout = timeout_s
        # every pyserial backend (serial_for_url's Serial, socket://, loop://) has in_waiting;
        # the stubs declare it only on the concrete classes, not on SerialBase
        waiting = self._port.in_waiting  # type: ignore[attr-defined]
        return self._port.read(waiting if waiting else 1)
