"""The node context: what the roles of one node share (config, bus, state store, supervisor,
keys), the write-ahead rule (:meth:`NodeContext.persist`: store before sending), message ids
leased from the store, and the :class:`Role` interface the node runs."""
from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from qnode.daemon.bus.client import NodeBus
from qnode.daemon.bus.envelope import IdCounter
from qnode.daemon.bus.keys import KeyRing
from qnode.daemon.bus.telemetry import Telemetry
from qnode.daemon.runtime.config import NodeConfig
from qnode.daemon.runtime.state import StateStore
from qnode.daemon.runtime.supervisor import ManagedInstrument, Supervisor

T = TypeVar("T")

#: message ids are leased from the state store in blocks, so a restart never reuses one
ID_LEASE = 100_000


class LeasedIds(IdCounter):
    """Own message ids that keep increasing across restarts and crashes: the store holds the
    end of the current lease, so after a crash ids continue above anything ever sent."""

    def __init__(self, store: StateStore, lease: int = ID_LEASE):
        super().__init__(store.next_message_id())
        self.store, self.lease = store, lease
        self._limit = self.next_id + lease
        store.save_next_message_id(self._limit)

    def __call__(self) -> int:
        if self.next_id >= self._limit:
            self._limit = self.next_id + self.lease
            self.store.save_next_message_id(self._limit)
        return super().__call__()


class Role(Protocol):
    """A node role: supervised tasks, a share of the telemetry, persistence at shutdown."""

    name: str

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]: ...

    def fill_telemetry(self, record: Telemetry, interval_s: float) -> None: ...

    async def close(self) -> None: ...


class NodeContext:
    """What roles share: config, bus, store, supervisor and a few helpers."""

    def __init__(self, config: NodeConfig, bus: NodeBus, store: StateStore,
                 supervisor: Supervisor, keys: KeyRing):
        self.config, self.bus, self.store, self.supervisor = config, bus, store, supervisor
        self.keys = keys
        self.node = config.id
        self.topics = bus.topics
        self._shared: dict[Callable[[NodeContext], object], Any] = {}
        # one writer thread: stores reach SQLite in the order they were asked for, so a late
        # write can never overwrite a newer one (e.g. the final store at shutdown)
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="state")

    def shared(self, kind: Callable[[NodeContext], T]) -> T:
        """The node's one ``kind`` object, made as ``kind(self)`` on first use (e.g. the link
        router of :mod:`qnode.daemon.klink`, which claims the bus handlers for ``herald``, ``ll``
        and ``cmd``). The context names no such kind itself: the layers above bring them."""
        obj = self._shared.get(kind)
        if obj is None:
            obj = self._shared[kind] = kind(self)
        return obj

    def shared_if_made(self, kind: type[T]) -> T | None:
        """The node's ``kind`` object if :meth:`shared` made one, else ``None``."""
        return self._shared.get(kind)

    def instrument(self, name: str) -> ManagedInstrument:
        return self.supervisor.instruments[name]

    def now(self) -> float:
        """Monotonic seconds: the link layer's clock."""
        return time.monotonic()

    async def persist(self, fn: Callable[[], None]) -> None:
        """Run a store write on the writer thread and wait for it (write-ahead: before
        sending). Writes run in call order, even when a caller was cancelled meanwhile."""
        await asyncio.get_running_loop().run_in_executor(self._writer, fn)

    def close(self) -> None:
        """Wait for queued writes (shutdown)."""
        self._writer.shutdown(wait=True)


def read_keys(config: NodeConfig) -> KeyRing:
    """The node's HMAC keys, read from its config's key files, by the name the bus looks them
    up under: each link's under its peer (``ll``/``proto``/``tags``) and its id (``herald``),
    the station's (``[herald]``) under the link it heralds, the source's (``[source]``) under
    the node's own id (CREATEs on its ``cmd``). The ring follows the files
    (:meth:`~qnode.daemon.bus.keys.KeyRing.reload`);
    :class:`~qnode.daemon.bus.keys.KeyFileError` if a file is refused."""
    ring = KeyRing()
    for link in config.links:
        if link.hmac_key_file is not None:
            ring.load_file(link.hmac_key_file, link.peer, link.id)
    if config.herald is not None and config.herald.hmac_key_file is not None:
        ring.load_file(config.herald.hmac_key_file, config.herald.link)
    source = config.source
    if source is not None and source.link is not None and source.hmac_key_file is not None:
        ring.load_file(source.hmac_key_file, config.id)
    return ring


def tls_context(config: NodeConfig) -> ssl.SSLContext | None:
    b = config.broker
    if not b.tls:
        return None
    ctx = ssl.create_default_context(cafile=str(b.ca_file) if b.ca_file else None)
    if b.client_cert is not None:
        ctx.load_cert_chain(str(b.client_cert), str(b.client_key) if b.client_key else None)
    return ctx
