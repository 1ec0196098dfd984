"""The life cycle every instrument driver shares."""
from __future__ import annotations

from typing import Any, Self

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

    @classmethod
    def from_config(cls, address: str, *, name: str, timeout_s: float, **options: Any) -> Self:
        """The driver of the configured instrument ``name`` at ``address`` (a node config's
        ``[instruments.<name>]``: reply timeout ``timeout_s`` in s, ``options`` the driver's
        keyword arguments), not yet opened. By default ``cls(address, timeout_s=..., **options)``;
        a driver built otherwise overrides this. TypeError for an option the driver does not
        take."""
        return cls(address, timeout_s=timeout_s, **options)  # type: ignore[call-arg]

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
