"""Simulated photon streams as time taggers: in process, and shared by several taggers.

* :class:`SimulatedTagger` yields the TagBlocks a simulator makes for one node through the common
  :class:`~qnode.drivers.tagger.TimeTagger` interface (issue 4, option (c)), so the daemon's
  pipeline can run on simulated light exactly as on an ID900. Times are the node's clock in
  integer ps.
* :class:`SimulatorFanout` lets several taggers stream different nodes of one simulator: each
  gets a :class:`NodeFeed`, and the simulator is stepped once per slice for all of them.

A *tag source* (:class:`TagSource`) is anything with the stepping interface of
:class:`~qnode.hal_sim.PhotonStreamSimulator`: ``nodes``, ``time_ps``, ``step()``, ``flush()``
returning a chunk with ``blocks[node]``. :class:`~qnode.hal_sim.PhotonStreamSimulator` (M-type),
:class:`~qnode.hal_sim.physics.heralding.HeraldingSimulator` (K-type station) and :class:`NodeFeed`
are tag sources; a source tells a node's channels through ``node_channels(node)`` or, for the M-type
simulator, its ``link.nodes`` (:func:`node_channels`).

**Fan-out and back-pressure.** A feed is *attached* from its first ``step()`` until
:meth:`NodeFeed.detach` (a simulated tagger detaches when its acquisition stops). Whichever
attached feed needs a chunk that is not there yet steps the simulator; the chunk is queued for
every attached feed. Each queue holds at most ``max_chunks`` chunks (one simulator slice each):
when an attached feed's queue is full, the others wait (the producer blocks) until it is read or
detached, so an attached tagger that is not read stalls the link after ``max_chunks`` slices and
memory never grows without bound. Chunks made while a feed is detached are not kept for it (a
tagger that is not acquiring does not see those photons; counted in ``dropped_chunks``). Readers
that each pace themselves to real time (``pace`` of the ID900 twin) stay within a slice or two of
each other.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from qnode.drivers.tagger import TimeTagger
from qnode.native import TagBlock, empty_block, merge_channels


class TagSource(Protocol):
    """What a simulated tagger steps (see the module docstring)."""

    @property
    def nodes(self) -> tuple[str, ...]: ...

    @property
    def time_ps(self) -> int: ...

    def step(self) -> Any: ...

    def flush(self) -> Any: ...


def node_channels(source: Any, node: str) -> tuple[int, ...]:
    """The simulator channels of ``node`` in ``source`` (ValueError naming the nodes if
    there is no such node)."""
    if node not in source.nodes:
        raise ValueError(f"no node {node!r} in {tuple(source.nodes)}")
    own = getattr(source, "node_channels", None)
    if own is not None:
        return tuple(own(node))
    config = next(n for n in source.link.nodes if n.name == node)
    return tuple(config.channels)


@dataclass
class _EmptyChunk:
    """What a feed returns once the run has ended or it was detached while waiting."""

    blocks: dict[str, TagBlock]
    truth: None = None


class NodeFeed:
    """One node of a :class:`SimulatorFanout` as a tag source (``nodes`` is just that node)."""

    def __init__(self, fanout: SimulatorFanout, node: str):
        self.fanout = fanout
        self.node = node
        self.queue: deque[Any] = deque()
        self.attached = False
        self.dropped_chunks = 0
        self._time_ps = 0

    @property
    def nodes(self) -> tuple[str]:
        return (self.node,)

    def node_channels(self, node: str) -> tuple[int, ...]:
        if node != self.node:
            raise ValueError(f"this feed streams {self.node!r}, not {node!r}")
        return node_channels(self.fanout.sim, node)

    @property
    def time_ps(self) -> int:
        """Emission time (ps) up to which this feed has returned chunks; while detached, the
        shared simulator's time (where the next chunk would start)."""
        return self._time_ps if self.attached else self.fanout.sim.time_ps

    def attach(self) -> None:
        """Receive every chunk made from now on (:meth:`step` attaches too)."""
        self.fanout._attach(self)  # noqa: SLF001

    def step(self) -> Any:
        """The next chunk for this node (blocks while the producer waits for another feed)."""
        return self.fanout._next(self, final=False)  # noqa: SLF001

    def flush(self) -> Any:
        """End the shared run (for every feed) and return this feed's next chunk."""
        return self.fanout._next(self, final=True)  # noqa: SLF001

    def detach(self) -> None:
        """Stop receiving chunks (queued ones are dropped); the next :meth:`step` re-attaches."""
        self.fanout._detach(self)  # noqa: SLF001


class SimulatorFanout:
    """Steps one simulator for several per-node feeds (module docstring: back-pressure).

    ``sim``: a tag source with all the nodes; ``max_chunks``: queue bound per feed (slices);
    ``before_step``: called with the simulator, under the fan-out's lock, before every step
    (e.g. to push instrument state into the physics). :meth:`locked` runs a function on the
    simulator under the same lock (e.g. to read its truth consistently).
    """

    def __init__(self, sim: Any, *, max_chunks: int = 16,
                 before_step: Callable[[Any], None] | None = None):
        if max_chunks < 1:
            raise ValueError(f"SimulatorFanout.max_chunks must be >= 1, got {max_chunks!r}")
        self.sim = sim
        self.max_chunks = max_chunks
        self.before_step = before_step
        self.feeds: list[NodeFeed] = []
        self.waits = 0          # times a feed waited for another feed's reader
        self._cond = threading.Condition()
        self._flushed = False

    def feed(self, node: str) -> NodeFeed:
        """A new feed of ``node`` (ValueError if the simulator has no such node)."""
        node_channels(self.sim, node)
        f = NodeFeed(self, node)
        with self._cond:
            self.feeds.append(f)
        return f

    def locked(self, fn: Callable[[Any], Any]) -> Any:
        with self._cond:
            return fn(self.sim)

    def _empty(self, feed: NodeFeed) -> _EmptyChunk:
        return _EmptyChunk({feed.node: empty_block()})

    def _attach(self, feed: NodeFeed) -> None:
        with self._cond:
            if not feed.attached:
                feed.attached = True
                feed._time_ps = self.sim.time_ps  # noqa: SLF001

    def _next(self, feed: NodeFeed, final: bool) -> Any:
        with self._cond:
            self._attach(feed)  # the condition's lock is re-entrant
            while not feed.queue:
                if self._flushed or not feed.attached:
                    return self._empty(feed)
                others = [f for f in self.feeds if f.attached and f is not feed]
                if all(len(f.queue) < self.max_chunks for f in others):
                    self._advance(final)
                else:
                    self.waits += 1
                    self._cond.wait(0.1)
            chunk = feed.queue.popleft()
            truth = getattr(chunk, "truth", None)
            if truth is not None:
                feed._time_ps = truth.emission_end_ps  # noqa: SLF001
            self._cond.notify_all()
            return chunk

    def _advance(self, final: bool) -> None:
        if self.before_step is not None:
            self.before_step(self.sim)
        chunk = self.sim.flush() if final else self.sim.step()
        self._flushed = final
        for f in self.feeds:
            if f.attached:
                f.queue.append(chunk)
            else:
                f.dropped_chunks += 1
        self._cond.notify_all()

    def _detach(self, feed: NodeFeed) -> None:
        with self._cond:
            feed.attached = False
            feed.queue.clear()
            self._cond.notify_all()


class SimulatedTagger(TimeTagger):
    """Node ``node`` of ``sim`` (any :class:`TagSource`) as a time tagger.

    ``duration_ps``: emission time to stream (whole simulator slices, then the flush chunk);
    ``None`` streams until :meth:`close`. ``channel_map``: optional renumbering
    ``{simulator channel: reported channel}`` (e.g. onto ID900 inputs 1–4); channels not in the
    map are dropped. The simulator must be fresh (not stepped by anyone else) or a
    :class:`NodeFeed`; one :meth:`chunks` run per simulator.
    """

    def __init__(self, sim: TagSource, node: str, *, duration_ps: int | None = None,
                 channel_map: dict[int, int] | None = None):
        try:
            channels = node_channels(sim, node)
        except ValueError as exc:
            raise ValueError(f"SimulatedTagger: {exc}") from None
        self.sim = sim
        self.node = node
        self.duration_ps = duration_ps
        self.channel_map = None if channel_map is None else dict(channel_map)
        own = channels if channel_map is None else tuple(self.channel_map.values())
        self._channels = tuple(sorted(own))
        self.name = f"hal_sim:{node}"
        self._closed = threading.Event()

    @property
    def channels(self) -> tuple[int, ...]:
        return self._channels

    def chunks(self) -> Iterator[TagBlock]:
        """One TagBlock per simulator slice (time-ordered, int64 ps), then the flush chunk."""
        try:
            while not self._closed.is_set():
                last = self.duration_ps is not None and self.sim.time_ps >= self.duration_ps
                chunk = self.sim.flush() if last else self.sim.step()
                yield self._renumber(chunk.blocks[self.node])
                if last:
                    return
        finally:
            detach = getattr(self.sim, "detach", None)
            if detach is not None:
                detach()

    def close(self) -> None:
        self._closed.set()

    def _renumber(self, block: TagBlock) -> TagBlock:
        if self.channel_map is None:
            return block
        by_channel = {new: block["time"][block["channel"] == old]
                      for old, new in sorted(self.channel_map.items(), key=lambda kv: kv[1])}
        return merge_channels({c: np.ascontiguousarray(t) for c, t in by_channel.items()})
