"""The life cycle every instrument driver shares."""
from __future__ import annotations

from typing import Self

from .transport import Transport


class Driver:
    """A driver over one :class:`~qnode.drivers.transport.Transport` (``self.transport``).

    ``open()`` is idempotent and returns the driver; ``close()`` never raises for a dead link;
    ``reconnect()`` reopens with the transport's bounded back-off, holding the instrument's lock,
    then runs :meth:`_after_reconnect` (a driver whose instrument forgets settings on a power
    cycle re-initialises there). As a context manager the driver opens on entry and closes on
    exit.
    """

    transport: Transport

    def open(self) -> Self:
        self.transport.open()
        return self

    def close(self) -> None:
        self.transport.close()

    def reconnect(self) -> None:
        """Close and reopen (Disconnected when the instrument stays away), then re-initialise."""
        with self.transport.lock:
            self.transport.reconnect()
            self._after_reconnect()

    def _after_reconnect(self) -> None:
        """Restore what the instrument loses on a reconnect (nothing, by default)."""

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
