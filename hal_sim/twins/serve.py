"""Serving a simulated instrument's wire protocol on a real pty or TCP socket, with faults.

A simulated device is a :class:`WireDevice`: it cuts requests out of the incoming bytes
(:meth:`WireDevice.split`) and answers each (:meth:`WireDevice.handle`), keeping its own state.
A server runs it on a background thread:

* :class:`PtyServer`: a real pseudo-terminal; drivers open :attr:`~PtyServer.address` (e.g.
  ``/dev/pts/7``) as a serial port, exactly as a USB-serial adapter in the lab.
* :class:`TcpServer`: a loopback TCP port; drivers open ``socket://127.0.0.1:<port>`` with
  pyserial, or ``TCPIP::127.0.0.1::<port>::SOCKET`` with pyvisa-py. It survives
  :meth:`~TcpServer.restart` on the same port, which is how reconnects are tested.

Fault injection (:class:`Faults`, shared by both servers; thread-safe, take effect at once): slow
replies, dropped replies, garbled replies (framing kept: the driver must reject the content),
truncated replies (the terminator never comes), a hang (requests read, never answered) and
disconnects. Device-reported errors belong to the device (its protocol decides what they look
like).
"""
from __future__ import annotations

import os
import socket
import threading
import time
import tty
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


class WireDevice(ABC):
    """The protocol side of a simulated instrument. ``reply_terminator`` is what ends each of
    its replies (garbled replies keep it, so they arrive as complete but wrong messages)."""

    reply_terminator: bytes = b""

    @abstractmethod
    def split(self, buffer: bytearray) -> list[bytes]:
        """Remove complete requests from the front of ``buffer`` and return them."""

    @abstractmethod
    def handle(self, request: bytes) -> bytes | None:
        """The reply to one request (already framed), or None for no reply."""


def split_lines(buffer: bytearray, terminator: bytes) -> list[bytes]:
    """Helper for line protocols: complete requests ending in ``terminator`` (stripped)."""
    out = []
    while True:
        i = buffer.find(terminator)
        if i < 0:
            return out
        out.append(bytes(buffer[:i]))
        del buffer[:i + len(terminator)]


@dataclass
class Faults:
    """What the server does wrong, on purpose. Counters apply to the next N replies.

    ``delay_s``: every reply is sent this late (a slow instrument, or one that answers after the
    driver's timeout: the late answer must not be taken for the next command's).
    ``drop``: the next N replies are swallowed. ``garble``: the next N replies arrive complete
    (``terminator`` kept) but wrong: half the body, its first byte no longer ASCII.
    ``truncate``: the next N replies stop half way (the terminator never comes). ``hang``:
    requests are read but nothing is answered until cleared.
    """

    terminator: bytes = b""
    delay_s: float = 0.0
    drop: int = 0
    garble: int = 0
    truncate: int = 0
    hang: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def clear(self) -> None:
        with self.lock:
            self.delay_s, self.drop, self.garble, self.truncate = 0.0, 0, 0, 0
            self.hang = False

    def apply(self, reply: bytes) -> tuple[bytes | None, float]:
        """(reply to send or None, delay in s) after the configured faults."""
        with self.lock:
            if self.hang:
                return None, 0.0
            if self.drop > 0:
                self.drop -= 1
                return None, 0.0
            if self.truncate > 0 and reply:
                self.truncate -= 1
                return reply[: len(reply) // 2], self.delay_s
            if self.garble > 0 and reply:
                self.garble -= 1
                term = self.terminator if reply.endswith(self.terminator) else b""
                body = reply[: len(reply) - len(term)] or b"?"
                mangled = bytearray(body[: max(1, len(body) // 2)])
                mangled[0] ^= 0x80  # not ASCII any more: no strict parser accepts it
                return bytes(mangled) + term, self.delay_s
            return reply, self.delay_s


class _Server(ABC):
    """Request loop shared by the servers: read, split, answer (with faults)."""

    def __init__(self, device: WireDevice, name: str):
        self.device = device
        self.name = name
        self.faults = Faults(terminator=device.reply_terminator)
        self.requests: list[bytes] = []  # everything received, for tests and logs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    @abstractmethod
    def address(self) -> str:
        """What a driver opens."""

    def start(self) -> _Server:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"hal_sim-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._close_io()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def __enter__(self) -> _Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve_bytes(self, buffer: bytearray, send) -> None:
        for request in self.device.split(buffer):
            self.requests.append(request)
            reply = self.device.handle(request)
            if reply is None:
                continue
            out, delay = self.faults.apply(reply)
            if out is None:
                continue
            if delay > 0:
                threading.Timer(delay, self._send_late, (send, out)).start()
            else:
                send(out)

    @staticmethod
    def _send_late(send, data: bytes) -> None:
        try:
            send(data)
        except OSError:
            pass  # the link went away meanwhile: a late reply is lost, as on real hardware

    @abstractmethod
    def _run(self) -> None: ...

    @abstractmethod
    def _close_io(self) -> None: ...


class PtyServer(_Server):
    """Serves ``device`` on a new pseudo-terminal; :attr:`address` is the slave's path.

    :meth:`disconnect` closes the master side: the driver's port then fails (EIO), as when a
    USB-serial adapter is unplugged; :meth:`restart` opens a new pty (a new path, as a
    re-plugged adapter may get)."""

    def __init__(self, device: WireDevice, name: str = "pty"):
        super().__init__(device, name)
        self._master = -1
        self._slave = -1
        self._path = ""
        self._new_pty()

    def _new_pty(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: bytes pass as on a serial line
        self._path = os.ttyname(self._slave)

    @property
    def address(self) -> str:
        return self._path

    def disconnect(self) -> None:
        """Pull the plug: close the pty (the server thread ends)."""
        self.stop()

    def restart(self) -> None:
        """A fresh pty and serving thread; read :attr:`address` again."""
        self.stop()
        self._new_pty()
        self.start()

    def _send(self, data: bytes) -> None:
        os.write(self._master, data)

    def _run(self) -> None:
        import select

        buffer = bytearray()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(self._master, 4096)
            except OSError:
                return
            if data:
                buffer += data
                self._serve_bytes(buffer, self._send)

    def _close_io(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = -1


class TcpServer(_Server):
    """Serves ``device`` on a loopback TCP port (one client at a time; a new client replaces
    the old). ``port=0`` picks a free port; :attr:`port` tells which, and :meth:`restart`
    reuses it."""

    def __init__(self, device: WireDevice, name: str = "tcp", port: int = 0,
                 host: str = "127.0.0.1"):
        super().__init__(device, name)
        self.host = host
        self.port = port
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._listen()

    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(1)
        s.settimeout(0.05)
        self.port = s.getsockname()[1]
        self._listener = s

    @property
    def address(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def disconnect(self) -> None:
        """Drop the current client connection (the server keeps listening)."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()

    def restart(self, downtime_s: float = 0.0) -> None:
        """Stop (the port closes: connections are refused), wait, listen again on the port."""
        self.stop()
        time.sleep(downtime_s)
        self._listen()
        self.start()

    def _run(self) -> None:
        buffer = bytearray()
        while not self._stop.is_set():
            if self._client is None:
                try:
                    assert self._listener is not None
                    self._client, _ = self._listener.accept()
                    self._client.settimeout(0.05)
                    buffer.clear()
                except (TimeoutError, OSError):
                    continue
            client = self._client
            try:
                data = client.recv(4096)
            except TimeoutError:
                continue
            except OSError:  # reset by the driver: drop (and close) this connection
                self.disconnect()
                continue
            if not data:  # the driver closed its side
                self.disconnect()
                continue
            buffer += data
            try:
                self._serve_bytes(buffer, client.sendall)
            except OSError:
                self.disconnect()

    def _close_io(self) -> None:
        # The listener first: a reconnect must find the port closed, not a dying server.
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.disconnect()
