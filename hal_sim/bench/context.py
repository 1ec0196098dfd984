"""What the builders of a bench's instruments may ask of the bench: :class:`BenchContext`.

The coupling rules (:mod:`qnode.hal_sim.bench.coupling`), the self-serving services
(:mod:`qnode.hal_sim.bench.services`) and the quantum memories
(:mod:`qnode.hal_sim.bench.memories`) are handed the bench while it builds its instruments; they
see it through this protocol, so none of them imports the bench
(:class:`qnode.hal_sim.bench.runtime.Bench` implements it).
"""
from __future__ import annotations

from typing import Protocol

from ..twins.pair_registry import PairRegistry
from ..twins.tagger import NodeFeed
from .links import LinkRuntime


class BenchContext(Protocol):
    """A bench being built. ``path``: its file (errors name it); ``links``: its links by name
    (all built before any instrument)."""

    path: str
    links: dict[str, LinkRuntime]

    def link_runtime(self, key: str, link: object) -> LinkRuntime:
        """The link named ``link`` (``None``: the bench's only link); errors name ``key``."""
        ...

    def feed(self, instrument_key: str, link: str | None, node: str | None) -> NodeFeed:
        """The tags of ``node`` of ``link`` for the tagger ``instrument_key`` (each node is
        streamed by at most one tagger)."""
        ...

    def pair_registry(self) -> PairRegistry:
        """The bench's one pair registry, shared by every qdevice."""
        ...
