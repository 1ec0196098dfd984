"""VISA transport: SCPI instruments through pyvisa, with any backend.

Backends are pyvisa's: ``"@py"`` (pyvisa-py, pure Python, the default), ``"file.yaml@sim"``
(pyvisa-sim), or ``""`` / a library path for a vendor VISA. Resource names are VISA's, e.g.
``TCPIP::127.0.0.1::5025::SOCKET`` (raw SCPI on a socket, the Keysight port convention) or
``USB0::0x1313::0x804A::M00123456::INSTR`` (a Thorlabs ITC4001 over USBTMC).

What this transport adds to pyvisa (the issues cited are pyvisa's and pyvisa-py's on GitHub):

* **One ResourceManager per backend per process** (:func:`resource_manager`), never closed:
  pyvisa #742 reports that closing one ResourceManager invalidates the others.
* **Terminations are always set.** pyvisa-py opens TCPIP SOCKET sessions with ``TERMCHAR_EN``
  off, so without a ``read_termination`` every read waits out the full timeout (pyvisa-py #301).
* **Typed errors.** ``VI_ERROR_TMO`` becomes :class:`InstrumentTimeout`; any other VISA error,
  and the raw ``OSError`` (broken pipe, reset) that pyvisa-py's socket ``write`` lets through,
  become :class:`Disconnected` and close the resource.
* **A closed peer is detected.** On pyvisa-py a closed TCP peer looks like a read timeout (its
  ``recv`` returns ``b""`` and the read polls until the timeout), and opening a refused port
  "succeeds". This transport peeks at the session's socket (pyvisa-py TCPIP SOCKET only) to
  tell EOF and socket errors from silence, and, for every backend, treats
  ``max_consecutive_timeouts`` timeouts in a row as a lost link (:class:`Disconnected`), so the
  daemon closes and reopens instead of clearing forever.
* **Resync after a timeout** drains with short reads until the line has been quiet for one whole
  timeout (as :class:`~qnode.drivers.transport.StreamTransport` does), so a late answer is
  never read as the next command's (pyvisa-py #376, QCoDeS PR #611). pyvisa-py's own
  ``clear()`` is avoided: it can spin on a closed socket.
"""
from __future__ import annotations

import select
import socket
import threading
import time

import pyvisa
from pyvisa import constants
from pyvisa.errors import VisaIOError

from .errors import Disconnected, InstrumentTimeout
from .transport import Transport

DEFAULT_BACKEND = "@py"

_MANAGERS: dict[str, pyvisa.ResourceManager] = {}
_MANAGERS_LOCK = threading.Lock()


def resource_manager(backend: str = DEFAULT_BACKEND) -> pyvisa.ResourceManager:
    """The process-wide ResourceManager for ``backend`` (created on first use, never closed)."""
    with _MANAGERS_LOCK:
        rm = _MANAGERS.get(backend)
        if rm is None:
            rm = pyvisa.ResourceManager(backend)
            _MANAGERS[backend] = rm
        return rm


def _ms(seconds: float) -> int:
    """VISA timeouts are integer milliseconds (pyvisa's unit; PyMeasure #783)."""
    return max(1, round(seconds * 1000.0))


class VisaTransport(Transport):
    """A message-based VISA resource (SCPI text commands and replies).

    ``address``: the VISA resource name; ``backend``: the pyvisa backend string (one manager per
    string per process); ``read_termination``/``write_termination``: set on the resource (the
    reply is returned without its termination); ``open_timeout_s``: how long a connect may take;
    ``max_consecutive_timeouts``: that many read timeouts in a row close the link and raise
    :class:`Disconnected` (``None``: never). Other keywords as :class:`Transport` (``timeout_s``
    in seconds, mapped to VISA milliseconds).
    """

    #: a resync gives up draining a babbling instrument after this many timeouts
    resync_limit_timeouts = 5.0

    def __init__(self, address: str, *, instrument: str, backend: str = DEFAULT_BACKEND,
                 read_termination: str = "\n", write_termination: str = "\n",
                 encoding: str = "ascii", open_timeout_s: float = 2.0,
                 max_consecutive_timeouts: int | None = 2, **kwargs: object):
        super().__init__(address, instrument=instrument, **kwargs)  # type: ignore[arg-type]
        if not read_termination:
            raise ValueError("read_termination must be set (pyvisa-py #301)")
        self.backend = backend
        self.read_termination = read_termination
        self.write_termination = write_termination
        self.encoding = encoding
        self.open_timeout_s = float(open_timeout_s)
        self.max_consecutive_timeouts = max_consecutive_timeouts
        self._resource: pyvisa.resources.MessageBasedResource | None = None
        self._timeouts_in_a_row = 0

    # -- life cycle
    def _open(self) -> None:
        rm = resource_manager(self.backend)
        resource = rm.open_resource(
            self.address, read_termination=self.read_termination,
            write_termination=self.write_termination, encoding=self.encoding,
            timeout=_ms(self.timeout_s), open_timeout=_ms(self.open_timeout_s))
        self._resource = resource  # type: ignore[assignment]
        self._timeouts_in_a_row = 0
        sock = self._socket()
        if sock is not None:
            # pyvisa-py connects non-blocking and reports success even when refused
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._close()
                raise self.error(Disconnected, f"cannot open: connect failed (errno {err})")

    def _close(self) -> None:
        resource, self._resource = self._resource, None
        if resource is not None:
            resource.close()

    # -- socket introspection (pyvisa-py TCPIP SOCKET only; None elsewhere)
    def _socket(self) -> socket.socket | None:
        if self._resource is None:
            return None
        sessions = getattr(self._resource.visalib, "sessions", None)
        if not isinstance(sessions, dict):
            return None
        sock = getattr(sessions.get(self._resource.session), "interface", None)
        return sock if isinstance(sock, socket.socket) else None

    def peer_closed(self) -> bool:
        """True if the socket under the session has seen EOF or an error (pyvisa-py TCPIP SOCKET
        only; False where the backend hides its I/O)."""
        sock = self._socket()
        if sock is None:
            return False
        try:
            readable, _, errored = select.select([sock], [], [sock], 0)
            if errored:
                return True
            if readable:
                return sock.recv(1, socket.MSG_PEEK) == b""
            return False
        except (OSError, ValueError):
            return True

    def _broken(self, why: str, command: str | None, exc: BaseException | None = None) -> None:
        self._open_now = False
        try:
            self._close()
        except Exception:  # noqa: BLE001 - closing a dead link must not fail
            pass
        raise self.error(Disconnected, f"link lost: {why}", command) from exc

    # -- exchanges
    def _send(self, command: str) -> None:
        assert self._resource is not None
        if self.peer_closed():
            self._broken("peer closed the connection", command)
        try:
            self._resource.write(command)
        except VisaIOError as exc:
            self._broken(f"VISA error {exc.abbreviation}", command, exc)
        except OSError as exc:  # pyvisa-py lets socket errors through on write
            self._broken(str(exc), command, exc)

    def _receive(self, command: str | None, deadline: float) -> str:
        assert self._resource is not None
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise VisaIOError(constants.StatusCode.error_timeout)
            self._resource.timeout = _ms(remaining)
            raw = self._resource.read_raw()
        except VisaIOError as exc:
            if exc.error_code != constants.StatusCode.error_timeout:
                self._broken(f"VISA error {exc.abbreviation}", command, exc)
            self._stale = True
            self._timeouts_in_a_row += 1
            if self.peer_closed():
                self._broken("peer closed the connection (seen as a VISA timeout)", command, exc)
            limit = self.max_consecutive_timeouts
            if limit is not None and self._timeouts_in_a_row >= limit:
                self._broken(f"{self._timeouts_in_a_row} timeouts in a row; a closed peer looks "
                             "like a timeout on pyvisa-py", command, exc)
            raise self.error(InstrumentTimeout,
                             f"no reply within {self.timeout_s:g} s", command) from exc
        except OSError as exc:
            self._broken(str(exc), command, exc)
        self._timeouts_in_a_row = 0
        text = raw.decode(self.encoding, errors="replace")
        if text.endswith(self.read_termination):
            text = text[:-len(self.read_termination)]
        return text

    def _resync(self) -> None:
        """Drop pyvisa-py's pending bytes, then read with short timeouts until the line has been
        silent for one whole timeout (replies up to about twice the timeout late are dropped)."""
        resource = self._resource
        if resource is None:
            return
        try:
            resource.flush(constants.BufferOperation.discard_read_buffer_no_io)
        except (VisaIOError, NotImplementedError, AttributeError):
            pass
        step_ms = _ms(min(0.05, self.timeout_s / 2))
        start = time.monotonic()
        quiet_since = start
        try:
            while time.monotonic() - start < self.resync_limit_timeouts * self.timeout_s:
                if self.peer_closed():
                    self._broken("peer closed the connection", None)
                resource.timeout = step_ms
                try:
                    resource.read_raw()
                    quiet_since = time.monotonic()
                except VisaIOError as exc:
                    if exc.error_code != constants.StatusCode.error_timeout:
                        self._broken(f"VISA error {exc.abbreviation}", None, exc)
                    if time.monotonic() - quiet_since >= self.timeout_s:
                        return
        except OSError as exc:
            self._broken(str(exc), None, exc)
        finally:
            if self._resource is not None:
                self._resource.timeout = _ms(self.timeout_s)
