"""Configuration of an M-type link: one SPDC source, two nodes (fibre → analyzers → detectors,
clock)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .clock import Clock
from .detector import Detector
from .eavesdropper import Eavesdropper
from .optics import Fibre
from .polarisation import Analyzer, BellDiagonalState
from .source import CWSource, PulsedSource


@dataclass(frozen=True)
class Node:
    """One end of the link: the fibre from the source, one or more analyzers (a photon picks one
    with probability ∝ ``Analyzer.weight``), and the node's tagger clock."""

    name: str
    fibre: Fibre
    analyzers: Sequence[Analyzer]
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        object.__setattr__(self, "analyzers", tuple(self.analyzers))
        if not self.analyzers:
            raise ValueError(f"Node({self.name!r}).analyzers must name at least one analyzer")
        chans = [d.channel for a in self.analyzers for d in (a.plus, a.minus)]
        if len(set(chans)) != len(chans):
            raise ValueError(
                f"Node({self.name!r}): detector channels must be distinct, got {chans}")
        names = [a.name for a in self.analyzers]
        if len(set(names)) != len(names):
            raise ValueError(f"Node({self.name!r}): analyzer names must be distinct, got {names}")

    @property
    def detectors(self) -> tuple[Detector, ...]:
        return tuple(d for a in self.analyzers for d in (a.plus, a.minus))

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(d.channel for d in self.detectors)


@dataclass(frozen=True)
class Link:
    """Source, pair state and the two nodes it feeds (``nodes[0]`` gets the 'a' photon), and
    optionally an intercept–resend :class:`~qnode.hal_sim.physics.eavesdropper.Eavesdropper` on
    one node's fibre."""

    source: CWSource | PulsedSource
    state: BellDiagonalState
    nodes: tuple[Node, Node]
    eavesdropper: Eavesdropper | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        if len(self.nodes) != 2:
            raise ValueError(f"Link.nodes must be two nodes, got {len(self.nodes)}")
        if self.nodes[0].name == self.nodes[1].name:
            raise ValueError(
                f"Link.nodes must have distinct names, got {self.nodes[0].name!r} twice")
        eve = self.eavesdropper
        if eve is not None:
            if not isinstance(eve, Eavesdropper):
                raise ValueError(f"Link.eavesdropper must be an Eavesdropper or None, got "
                                 f"{type(eve).__name__}")
            names = [n.name for n in self.nodes]
            if eve.node not in names:
                raise ValueError(f"Link.eavesdropper.node must be one of the link's nodes "
                                 f"{names}, got {eve.node!r}")


def simple_node(name: str, channels: tuple[int, int], *, basis_vector=(0.0, 0.0, 1.0),
                length_km: float = 0.0, loss_db_per_km: float = 0.2, efficiency: float = 0.8,
                dark_count_rate_hz: float = 100.0, dead_time_ps: int = 20_000,
                jitter_ps: float = 30.0, clock: Clock | None = None,
                analyzer_name: str = "a") -> Node:
    """A node with one analyzer and two identical detectors on ``channels`` (+, −)."""
    def det(ch: int) -> Detector:
        return Detector(ch, efficiency, dark_count_rate_hz, dead_time_ps, jitter_ps)
    return Node(name, Fibre(length_km, loss_db_per_km),
                (Analyzer(analyzer_name, basis_vector, det(channels[0]), det(channels[1])),),
                clock or Clock())
