"""The narrow handle a link's helpers hold: what memory, purification and swapping may use of
the link service they serve.

:class:`~qnode.daemon.klink.service.LinkService` implements it. The helpers import this module,
never the service, so the service may own them without an import cycle; and the rule that makes
restarts safe — state is stored before anything is sent (write-ahead) — stays in the service's
:meth:`LinkHandle.send`, the one place that sends.

Helpers plug in by registering, never by filling slots of the service: a handler per kind of
peer message (:meth:`LinkHandle.on_message`), a server for the CREATEs they take
(:meth:`LinkHandle.serve_requests`) and their part of the link's telemetry
(:meth:`LinkHandle.add_telemetry`).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from qnode.daemon.linklayer import Create, LinkEnd, Message
from qnode.daemon.runtime.context import NodeContext


@dataclass(frozen=True)
class Routed:
    """A message of a layer above for ``topic`` (an application's reply), handed to
    :meth:`LinkHandle.send` with the link's own: it is published after the store that covers the
    change it reports, like everything else the link sends."""

    topic: str
    message: Any   # anything with ``TYPE`` and ``to_dict()``


#: what a link service sends for its helpers and the layers above
Outgoing = Message | Routed
M = TypeVar("M")
#: a handler of one kind of peer message: what it returns is stored, then sent
PeerHandler = Callable[[Any], Awaitable[Iterable["Outgoing"]]]


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

    async def send(self, actions: Iterable[Outgoing]) -> None:
        """Store, then send, what a change of the link end returned (caller holds :attr:`lock`):
        messages to the peer, answers to requesters, and :class:`Routed` messages to their
        topics."""
        ...

    async def expire_pair(self, seq: int) -> None:
        """EXPIRE pair ``seq`` to the peer (caller holds :attr:`lock`)."""
        ...

    def on_message(self, kind: type[M], handler: Callable[[M], Awaitable[Iterable[Outgoing]]],
                   *, locked: bool = True) -> None:
        """Send the peer's messages of ``kind`` to ``handler`` (under :attr:`lock` when
        ``locked``; what it returns is stored, then sent)."""
        ...

    def serve_requests(self, accepts: Callable[[Create], bool],
                       serve: Callable[[Create, str], Awaitable[None]]) -> None:
        """Let ``serve(create, requester)`` take the CREATEs that ``accepts``."""
        ...

    def add_telemetry(self, part: Callable[[], Mapping[str, Any]]) -> None:
        """Merge ``part()`` into the link's telemetry records."""
        ...
