"""The bounded receive queue between the MQTT client and the node's handlers.

The MQTT library acknowledges a QoS-1 message when it arrives, before any handler runs, and a
broker delivers as fast as the network allows: without a bound, a peer (or anyone who can
publish) sending faster than the node can handle grows the node's memory without limit. This
queue sits where the client puts every message (aiomqtt's ``queue_type``) and keeps each class
of traffic within its own limits of messages and bytes, so a flood of one class can neither
exhaust memory nor crowd out another:

========== ========================== =====================================================
class      topic kinds                when the class is full
========== ========================== =====================================================
control    ``ll``, ``proto``, ``cmd``, the new message is dropped and counted. The link layer
           ``reply``, ``key``         resends what must arrive (EXPIRE until acknowledged);
                                      a requester whose CREATE was dropped times out; a key
                                      session that misses a message starts a new session.
bulk       ``herald``, ``tags``       the new message is dropped and counted. A link end that
                                      misses a herald batch sees the gap in the station's
                                      numbering and expires those pairs at both ends
                                      (explicitly, never silently).
info       ``status``, ``telemetry``, the *oldest* queued message of the class is dropped: a
           ``topo``, anything else    newer status supersedes it.
========== ========================== =====================================================

One instance lives as long as the bus, across reconnects, so nothing already acknowledged to
the broker is lost when a connection breaks. Drops are counted by topic kind in
:attr:`InboundQueue.dropped` and reported through ``on_drop``.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

#: topic kind (the fifth topic segment) -> class
KIND_CLASS = {"ll": "control", "proto": "control", "cmd": "control", "reply": "control",
              "key": "control",
              "herald": "bulk", "tags": "bulk", "status": "info", "telemetry": "info",
              "topo": "info"}
#: classes whose oldest message makes room for a new one; the others drop the new one
DROP_OLDEST = frozenset({"info"})
#: (messages, bytes) each class may hold
DEFAULT_LIMITS: Mapping[str, tuple[int, int]] = {
    "control": (10_000, 16 << 20),
    "bulk": (2_000, 32 << 20),
    "info": (1_000, 8 << 20),
}
#: bytes charged per message on top of its payload (topic, objects)
OVERHEAD_BYTES = 256


def topic_kind(topic: str) -> str:
    """The kind segment of ``qnet/v1/<network>/<node>/<kind>[/...]`` ("" for other topics)."""
    parts = topic.split("/", 5)
    return parts[4] if len(parts) > 4 else ""


@dataclasses.dataclass(eq=False)
class _Entry:
    item: Any
    cls: str
    kind: str
    size: int
    dropped: bool = False


class InboundQueue(asyncio.Queue[Any]):
    """An :class:`asyncio.Queue` of MQTT messages (objects with ``topic`` and ``payload``)
    bounded per class (see the module docstring); :meth:`put_nowait` never raises."""

    if TYPE_CHECKING:  # the internals of CPython's asyncio.Queue used below; typeshed omits them
        _unfinished_tasks: int
        _finished: asyncio.Event
        _getters: collections.deque[asyncio.Future[None]]

        def _wakeup_next(self, waiters: collections.deque[asyncio.Future[None]]) -> None: ...

    def __init__(self, limits: Mapping[str, tuple[int, int]] = DEFAULT_LIMITS,
                 on_drop: Callable[[str, str, str], None] | None = None):
        super().__init__()
        self.limits = dict(limits)
        self.on_drop = on_drop
        #: dropped messages by topic kind
        self.dropped: collections.Counter[str] = collections.Counter()
        self.peak_bytes = 0
        self._class_entries: dict[str, collections.deque[_Entry]] = {
            c: collections.deque() for c in self.limits}
        self._class_bytes: collections.Counter[str] = collections.Counter()
        self._live = 0
        self._bytes = 0

    # asyncio.Queue's storage hooks: a deque of entries, dropped ones skipped lazily
    def _init(self, maxsize: int) -> None:
        self._queue: collections.deque[_Entry] = collections.deque()

    def qsize(self) -> int:
        return self._live

    def empty(self) -> bool:
        return self._live == 0

    def full(self) -> bool:
        return False

    @property
    def bytes(self) -> int:
        """Bytes held now (payloads plus :data:`OVERHEAD_BYTES` each)."""
        return self._bytes

    def _get(self) -> Any:
        while True:
            entry = self._queue.popleft()
            if not entry.dropped:
                break
        self._class_entries[entry.cls].popleft()
        self._forget(entry)
        return entry.item

    def _forget(self, entry: _Entry) -> None:
        self._live -= 1
        self._bytes -= entry.size
        self._class_bytes[entry.cls] -= entry.size

    def _drop(self, entry: _Entry, topic: str, why: str) -> None:
        self.dropped[entry.kind] += 1
        if self.on_drop is not None:
            self.on_drop(entry.kind, topic, why)

    def put_nowait(self, item: Any) -> None:
        topic = str(getattr(item, "topic", ""))
        payload = getattr(item, "payload", b"")
        size = (len(payload) if isinstance(payload, bytes | bytearray | str) else 0) \
            + OVERHEAD_BYTES
        kind = topic_kind(topic)
        cls = KIND_CLASS.get(kind, "info")
        entry = _Entry(item, cls, kind, size)
        max_count, max_bytes = self.limits[cls]
        entries = self._class_entries[cls]
        if cls in DROP_OLDEST:
            while entries and (len(entries) + 1 > max_count
                               or self._class_bytes[cls] + size > max_bytes):
                old = entries.popleft()
                old.dropped = True
                self._forget(old)
                self._drop(old, str(getattr(old.item, "topic", "")), "superseded")
                old.item = None
            if len(self._queue) > 2 * self._live + 1024:  # dropped entries wait to be skipped
                self._queue = collections.deque(e for e in self._queue if not e.dropped)
        if len(entries) + 1 > max_count or self._class_bytes[cls] + size > max_bytes:
            self._drop(entry, topic, f"{cls} queue full ({len(entries)} messages, "
                                     f"{self._class_bytes[cls]} bytes)")
            return
        self._queue.append(entry)
        entries.append(entry)
        self._live += 1
        self._bytes += size
        self._class_bytes[cls] += size
        self.peak_bytes = max(self.peak_bytes, self._bytes)
        self._unfinished_tasks += 1
        self._finished.clear()
        self._wakeup_next(self._getters)

    def metrics(self) -> dict[str, Any]:
        return {"queued": self._live, "queued_bytes": self._bytes,
                "peak_bytes": self.peak_bytes, "dropped": dict(self.dropped)}
