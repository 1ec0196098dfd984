"""The hal_sim photon stream of one node as a time tagger: no instrument, no wire.

:class:`SimulatedTagger` yields the TagBlocks a :class:`~qnode.hal_sim.PhotonStreamSimulator`
makes for one node through the common :class:`~qnode.drivers.tagger.TimeTagger` interface
(issue 4, option (c)), so the daemon's pipeline can run on simulated light exactly as on an
ID900. Times are the node's clock in integer ps.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np

from qnode.drivers.tagger import TimeTagger
from qnode.native import TagBlock, merge_channels

from .photon_stream import PhotonStreamSimulator


class SimulatedTagger(TimeTagger):
    """Node ``node`` of ``sim`` as a time tagger.

    ``duration_ps``: emission time to stream (whole simulator slices, then the flush chunk);
    ``None`` streams until :meth:`close`. ``channel_map``: optional renumbering
    ``{simulator channel: reported channel}`` (e.g. onto ID900 inputs 1–4); channels not in the
    map are dropped. The simulator must be fresh (not stepped by anyone else); one
    :meth:`chunks` run per simulator.
    """

    def __init__(self, sim: PhotonStreamSimulator, node: str, *, duration_ps: int | None = None,
                 channel_map: dict[int, int] | None = None):
        config = next((n for n in sim.link.nodes if n.name == node), None)
        if config is None:
            raise ValueError(f"SimulatedTagger: no node {node!r} in {sim.nodes}")
        self.sim = sim
        self.node = node
        self.duration_ps = duration_ps
        self.channel_map = None if channel_map is None else dict(channel_map)
        own = config.channels if channel_map is None else tuple(self.channel_map.values())
        self._channels = tuple(sorted(own))
        self.name = f"hal_sim:{node}"
        self._closed = threading.Event()

    @property
    def channels(self) -> tuple[int, ...]:
        return self._channels

    def chunks(self) -> Iterator[TagBlock]:
        """One TagBlock per simulator slice (time-ordered, int64 ps), then the flush chunk."""
        while not self._closed.is_set():
            last = self.duration_ps is not None and self.sim.time_ps >= self.duration_ps
            chunk = self.sim.flush() if last else self.sim.step()
            yield self._renumber(chunk.blocks[self.node])
            if last:
                return

    def close(self) -> None:
        self._closed.set()

    def _renumber(self, block: TagBlock) -> TagBlock:
        if self.channel_map is None:
            return block
        by_channel = {new: block["time"][block["channel"] == old]
                      for old, new in sorted(self.channel_map.items(), key=lambda kv: kv[1])}
        return merge_channels({c: np.ascontiguousarray(t) for c, t in by_channel.items()})
