"""What a bench file describes, once parsed: the instruments and the links, as frozen specs.

:func:`qnode.hal_sim.bench.parsing.parse` builds a :class:`BenchSpec`; the bench
(:class:`qnode.hal_sim.bench.runtime.Bench`) builds the running instruments and simulators from
it. Lengths in km, rates in Hz, times in ps unless a name says otherwise.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..physics.eavesdropper import Eavesdropper
from ..physics.heralding import HeraldingLink
from ..physics.polarisation import PolarisationDrift


class BenchConfigError(ValueError):
    """A bench file is malformed; the message names the file and the key."""


def config_error(path: str, key: str, problem: str) -> BenchConfigError:
    """The error for ``key`` of the bench file ``path``: ``"<path>: <key>: <problem>"``."""
    return BenchConfigError(f"{path}: {key}: {problem}")


@dataclasses.dataclass(frozen=True)
class InstrumentSpec:
    """One ``[[instrument]]``: its ``name``, ``kind`` (a key of
    :data:`qnode.hal_sim.bench.kinds.KINDS`), how it is served (``serve``: "pty", "tcp" or a
    service's transport; ``port``: tcp, 0 for a free one), its ``options`` (the twin's keyword
    arguments plus coupling keys), ``startup`` wire commands and ``settle_s`` (s)."""

    name: str
    kind: str
    serve: str
    port: int
    options: Mapping[str, Any]
    startup: tuple[str, ...] = ()
    settle_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class AnalyzerSpec:
    """One analyzer of a node with a passive basis choice: a PBS with its '+' and '−' detectors
    on ``channels``, behind a half-wave plate at ``angle_deg`` (deg from H): it measures linear
    polarisation at 2θ, Bloch vector (sin 4θ, 0, cos 4θ)
    (:func:`~qnode.hal_sim.physics.coupling.waveplate_analyzer_vector`)."""

    name: str
    channels: tuple[int, int]
    angle_deg: float = 0.0


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """One analyzer node of an M link (lengths km, rates Hz, times ps, drift ppm).

    ``analyzers`` empty: one analyzer "a" measuring H/V on ``channels`` (+, −). Otherwise a
    50:50 beam splitter picks one of ``analyzers`` (a passive basis choice) and
    ``channels`` lists all their detectors. ``eavesdropper``: an intercept–resend eavesdropper
    on this node's fibre (at most one node of a link has one)."""

    name: str
    channels: tuple[int, ...]
    length_km: float = 0.0
    efficiency: float = 0.8
    dark_count_rate_hz: float = 100.0
    jitter_ps: float = 30.0
    clock_offset_ps: int = 0
    clock_drift_ppm: float = 0.0
    analyzers: tuple[AnalyzerSpec, ...] = ()
    polarisation_drift: PolarisationDrift | None = None   # None: the fibre does not drift
    polarisation_seed: int | None = None
    eavesdropper: Eavesdropper | None = None               # None: nobody listens on the fibre


class _LinkNaming:
    """What both kinds of link spec share: the daemon's id of the link."""

    id: str
    name: str

    @property
    def link_id(self) -> str:
        """The daemon's id of the link (the truth file's key): ``id``, else the name."""
        return self.id or self.name


@dataclasses.dataclass(frozen=True)
class LinkSpec(_LinkNaming):
    """An M link: SPDC pairs (``pair_rate_hz``, Werner ``visibility``) to two nodes."""

    pair_rate_hz: float
    visibility: float
    seed: int
    nodes: tuple[NodeSpec, NodeSpec]
    name: str = "link"
    brightness_hz_per_mw: float = 1e6
    key: str = "link"
    type: str = "M"
    id: str = ""
    slice_ms: float = 50.0

    @property
    def streaming_nodes(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)


@dataclasses.dataclass(frozen=True)
class KLinkSpec(_LinkNaming):
    """A K link: ``link`` is the :class:`~qnode.hal_sim.physics.heralding.HeraldingLink`."""

    name: str
    link: HeraldingLink
    seed: int
    key: str
    type: str = "K"
    id: str = ""
    slice_ms: float = 50.0

    @property
    def streaming_nodes(self) -> tuple[str, ...]:
        return (self.link.station,)


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """A whole bench file: its ``name``, instruments and links (in file order)."""

    name: str
    instruments: tuple[InstrumentSpec, ...]
    links: tuple[LinkSpec | KLinkSpec, ...] = ()

    @property
    def link(self) -> LinkSpec | KLinkSpec | None:
        """The first link (files of the single-``[link]`` form have at most one)."""
        return self.links[0] if self.links else None
