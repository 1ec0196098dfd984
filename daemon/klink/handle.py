"""The narrow handle a link's helpers hold: what memory, purification and swapping may use of
the link service they serve.

:class:`~qnode.daemon.klink.service.LinkService` implements it. The helpers import this module,
never the service, so the service may own them without an import cycle; and the rule that makes
restarts safe — state is stored before anything is sent (write-ahead) — stays in the service's
:meth:`LinkHandle.send`, the one place that sends.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol

from qnode.daemon.linklayer import LinkEnd, Message
from qnode.daemon.runtime.context import NodeContext


class LinkHandle(Protocol):
    """One K link's service, seen by its helpers."""

    ctx: NodeContext
    #: the link id and the peer node at its other end
    link: str
    peer: str
    #: the link end's state machine (act on it only while holding :attr:`lock`)
    end: LinkEnd
    #: called after the link's bound pairs may have changed (a repeater's swapper)
    listeners: list[Callable[[], None]]

    @property
    def lock(self) -> asyncio.Lock:
        """Held by every call that changes the link end."""
        ...

    def changed(self) -> None:
        """The link end changed (caller holds :attr:`lock`): store it lazily."""
        ...

    async def send(self, actions: Iterable[Message]) -> None:
        """Store, then send, what a change of the link end returned (caller holds :attr:`lock`)."""
        ...

    async def expire_pair(self, seq: int) -> None:
        """EXPIRE pair ``seq`` to the peer (caller holds :attr:`lock`)."""
        ...
