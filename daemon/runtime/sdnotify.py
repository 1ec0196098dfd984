"""The systemd notify protocol, spoken directly (no libsystemd, no python-systemd).

systemd passes a service of ``Type=notify`` the address of its notification socket in
``$NOTIFY_SOCKET``: a file-system path (``/run/systemd/notify``) or, when it starts with ``@``, a
Linux abstract-namespace name. The service sends ``AF_UNIX``/``SOCK_DGRAM`` datagrams to it, each a
newline-separated list of ``KEY=VALUE`` assignments (sd_notify(3)):

* ``READY=1``: start-up finished; ``systemctl start`` returns and dependants start
  (systemd.service(5), ``Type=notify``). qnode sends it once the instruments are up.
* ``STATUS=...``: a one-line status shown by ``systemctl status``.
* ``WATCHDOG=1``: keep-alive. With ``WatchdogSec=`` systemd passes the period in
  ``$WATCHDOG_USEC`` (and the intended process in ``$WATCHDOG_PID``); if no ping arrives within it,
  the service is killed (``WatchdogSignal=``, SIGABRT) and, with ``Restart=on-failure``, restarted.
* ``STOPPING=1``: shutdown has begun (sent on SIGTERM).
* ``RELOADING=1``: a configuration reload has begun (followed by ``READY=1`` when done). systemd
  253's ``Type=notify-reload`` expects ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC, µs) with it, so
  :meth:`Notifier.reloading` always adds it.
* ``ERRNO=<n>``: the errno-style reason of a failure.
* ``EXTEND_TIMEOUT_USEC=<µs>``: ask for more time for the current start-up / shutdown phase.

Without ``$NOTIFY_SOCKET`` (run by hand, in tests, in a container) every call is a no-op, so the
daemon's code is the same inside and outside systemd. A failed send (socket gone, queue full) is
logged and dropped, never raised into the daemon: the socket is non-blocking, so a notification
can never stall the event loop either.

Usage in the daemon::

    notifier = Notifier.from_env()
    async with asyncio.TaskGroup() as tg:
        interval = watchdog_interval_s()
        if interval is not None:
            tg.create_task(watchdog_loop(notifier, interval, healthy=lambda: supervisor.running))
        await bring_up_instruments()
        notifier.ready("instruments up")
        ...
    # on SIGTERM:
    notifier.stopping()
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "watchdog_interval_s", "watchdog_loop"]

log = logging.getLogger(__name__)


def _socket_address(value: str) -> str | None:
    """``$NOTIFY_SOCKET`` → an ``AF_UNIX`` address (abstract names get their leading NUL), or
    ``None`` for an address this module cannot use (sd_notify(3) accepts absolute paths and
    ``@``-names; systemd ≥ 254 also passes ``vsock:`` addresses, which are not supported here)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


class Notifier:
    """Sends sd_notify(3) messages to ``$NOTIFY_SOCKET``; a no-op when there is none.

    ``address`` is the raw ``$NOTIFY_SOCKET`` value (``/path`` or ``@abstract``), or ``None`` for
    a disabled notifier. All senders return ``True`` when the datagram was sent, ``False`` when
    the notifier is disabled or the send failed (logged). They never raise.
    """

    def __init__(self, address: str | None) -> None:
        self._raw = address
        self._address = _socket_address(address) if address else None
        if address and self._address is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or @abstract name; notifications off",
                        address)
        self._sock: socket.socket | None = None
        self._failing = False  # log the first of a run of failures as a warning, the rest at debug

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` (``env`` defaults to ``os.environ``)."""
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        """Whether there is a notification socket to send to."""
        return self._address is not None

    def __repr__(self) -> str:
        return f"Notifier({self._raw!r})"

    # -- the protocol ------------------------------------------------------------------------

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` assignments (sd_notify(3)), e.g.
        ``notify("READY=1", "STATUS=up")``. A newline inside an assignment would smuggle in
        another assignment, so it is refused (``ValueError``: a bug in the caller)."""
        for item in assignments:
            if "=" not in item or "\n" in item:
                raise ValueError(f"not a single KEY=VALUE assignment: {item!r}")
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "sd_notify to %s failed (%s): %r", self._raw, exc, assignments)
            self._failing = True
            return False
        if self._failing:
            log.info("sd_notify to %s works again", self._raw)
            self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (with an optional ``STATUS=``): start-up is complete."""
        return self.notify("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        """``STATUS=<text>``, shown by ``systemctl status`` (newlines become spaces)."""
        return self.notify(*self._status(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping (systemd.service(5), ``WatchdogSec=``)."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.notify("STOPPING=1", *self._status(status))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC=`` (required by systemd ≥ 253 for
        ``Type=notify-reload``); send :meth:`ready` when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *self._status(status))

    def errno(self, code: int, status: str | None = None) -> bool:
        """``ERRNO=<code>``: the errno-style reason for a failure."""
        return self.notify(f"ERRNO={int(code)}", *self._status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: the current start/stop phase needs up to ``seconds`` more
        (e.g. a TEC settling before ``READY=1``)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1e6))}")

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        return ("STATUS=" + " ".join(text.splitlines()),)

    # -- life cycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket (it is reopened by the next send)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def watchdog_interval_s(env: Mapping[str, str] | None = None, pid: int | None = None
                        ) -> float | None:
    """The recommended ping interval in seconds: half of ``$WATCHDOG_USEC`` (sd_watchdog_enabled(3)
    recommends pinging at half the period), or ``None`` when the watchdog is off for this process:
    ``$WATCHDOG_USEC`` unset, not a positive integer, or ``$WATCHDOG_PID`` set to another pid
    (the variables were inherited from a parent the watchdog is meant for). ``pid`` defaults to
    ``os.getpid()``."""
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; watchdog off", raw)
        return None
    if usec <= 0:
        return None
    want_pid = env.get("WATCHDOG_PID")
    if want_pid:
        try:
            if int(want_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not an integer; watchdog off", want_pid)
            return None
    return usec / 2 / 1e6


async def watchdog_loop(notifier: Notifier, interval_s: float,
                        healthy: Callable[[], bool] = lambda: True) -> None:
    """Ping ``WATCHDOG=1`` every ``interval_s`` seconds from the event loop, as long as
    ``healthy()`` is true; runs until cancelled.

    The pings come from the loop itself, so a blocked loop stops them, and an unhealthy daemon
    (``healthy()`` false, or raising) withholds them: either way systemd's watchdog expires and
    ``Restart=on-failure`` restarts the service. Pinging resumes if ``healthy()`` becomes true
    again before the watchdog fires. The first ping is sent at once. Ticks follow a fixed
    schedule (no drift); after a stall there is one ping and the schedule restarts from then,
    with no burst of catch-up pings.
    """
    if not interval_s > 0:
        raise ValueError(f"watchdog interval must be > 0 s, got {interval_s!r}")
    loop = asyncio.get_running_loop()
    next_tick = loop.time()
    was_healthy = True
    while True:
        try:
            ok = bool(healthy())
        except Exception:
            log.exception("watchdog health check raised; treating as unhealthy")
            ok = False
        if ok:
            notifier.watchdog()
            if not was_healthy:
                log.info("daemon healthy again; watchdog pings resumed")
        elif was_healthy:
            log.error("daemon unhealthy; withholding watchdog pings (systemd will restart it)")
        was_healthy = ok
        now = loop.time()
        next_tick += interval_s
        if next_tick <= now:  # the loop was stalled: one ping now (above), the next in a period
            next_tick = now + interval_s
        await asyncio.sleep(next_tick - now)
