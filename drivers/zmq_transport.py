"""ZeroMQ request/reply transport, for instruments that speak REQ/REP (the ID Quantique Time
Controller's SCPI server on port 5555 and its DataLinkTarget service on port 6060; IDQ's scripting
examples, ``utils/common.py``).

One command is one ZMQ message (UTF-8 text), one reply is one message. A REQ socket insists on
strict send/receive alternation, so after a timeout it cannot be used again; this transport
follows the "lazy pirate" pattern of the ZeroMQ guide (ch. 4): a timeout marks the link stale and
the resync before the next command closes the socket (linger 0) and opens a fresh one. A late
reply then goes to the closed socket and is dropped by ZeroMQ, so it can never be read as the
next command's reply.

The socket is opened with ``ZMQ_IMMEDIATE`` so that messages queue only on a completed
connection: :meth:`open` waits (up to ``timeout_s``) until the peer accepts the connection and
raises :class:`~qnode.drivers.errors.Disconnected` otherwise, and a command sent while the peer is
gone (an instrument restarting) raises Disconnected instead of vanishing into a queue. ZeroMQ
errors (``zmq.ZMQError``) are mapped to Disconnected too.
"""
from __future__ import annotations

import time

import zmq

from .errors import Disconnected, GarbledReply, InstrumentTimeout
from .transport import Transport


class ZmqReqTransport(Transport):
    """A ZMQ REQ socket connected to ``address`` (``tcp://host:port``).

    ``context``: the ``zmq.Context`` to use (default: the process-wide instance);
    ``encoding``: of commands and replies. Other keyword arguments (``timeout_s`` in seconds,
    reconnect back-off) go to :class:`~qnode.drivers.transport.Transport`.
    """

    def __init__(self, address: str, *, instrument: str, context: zmq.Context | None = None,
                 encoding: str = "utf-8", **kwargs: object):
        super().__init__(address, instrument=instrument, **kwargs)  # type: ignore[arg-type]
        self.context = context or zmq.Context.instance()
        self.encoding = encoding
        self._socket: zmq.Socket | None = None

    # -- life cycle
    def _open(self) -> None:
        self._socket = self._new_socket()

    def _new_socket(self) -> zmq.Socket:
        """A connected REQ socket; Disconnected when the peer does not accept within the
        timeout."""
        try:
            sock = self.context.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.connect(self.address)
            ready = sock.poll(int(self.timeout_s * 1000), zmq.POLLOUT)
        except zmq.ZMQError as exc:
            raise self.error(Disconnected, f"cannot open: {exc}") from exc
        if not ready:
            sock.close(linger=0)
            raise self.error(Disconnected, f"no connection within {self.timeout_s:g} s")
        return sock

    def _close(self) -> None:
        if self._socket is not None:
            sock, self._socket = self._socket, None
            sock.close(linger=0)

    def _resync(self) -> None:
        """Lazy pirate: drop the socket (with any reply still owed to it) and open a fresh one."""
        self._close()
        try:
            self._socket = self._new_socket()
        except Disconnected:
            self._open_now = False
            raise

    # -- exchanges
    def write(self, command: str) -> None:
        """Send ``command`` and discard its reply: a REQ socket must read every reply before the
        next command, so a "write" is a query whose answer is dropped."""
        self.query(command)

    def _send(self, command: str) -> None:
        sock = self._require(command)
        try:
            if not sock.poll(int(self.timeout_s * 1000), zmq.POLLOUT):
                # Nothing was sent: the socket is still in its send state, no resync needed.
                raise self.error(Disconnected,
                                 f"peer not connected (nothing sent within {self.timeout_s:g} s)",
                                 command)
            sock.send(command.encode(self.encoding), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self._stale = True
            raise self.error(Disconnected, f"send failed: {exc}", command) from exc

    def _receive(self, command: str | None, deadline: float) -> str:
        sock = self._require(command)
        try:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not sock.poll(remaining_ms, zmq.POLLIN):
                self._stale = True
                raise self.error(InstrumentTimeout, f"no reply within {self.timeout_s:g} s",
                                 command)
            raw = sock.recv(zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self._stale = True
            raise self.error(Disconnected, f"receive failed: {exc}", command) from exc
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise self.error(GarbledReply, f"reply is not {self.encoding} text", command,
                             reply=raw) from exc

    def _require(self, command: str | None) -> zmq.Socket:
        if self._socket is None:
            raise self.error(Disconnected, "not open", command)
        return self._socket
