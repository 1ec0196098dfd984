"""One link of a running bench: its simulator, the fan-out its taggers read, the instruments
coupled to it and which instrument streams which node (:class:`LinkRuntime`).

:func:`build_simulator` makes the simulator of a link spec: a
:class:`~qnode.hal_sim.physics.photon_stream.PhotonStreamSimulator` for an M link, a
:class:`~qnode.hal_sim.physics.heralding.HeraldingSimulator` for a K link. A K link with quantum
memories files every herald its simulator yields in the bench's
:class:`~qnode.hal_sim.twins.pair_registry.PairRegistry` (:meth:`LinkRuntime.file_heralds_in`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..physics.clock import Clock
from ..physics.coupling import PolarisationCoupling, waveplate_analyzer_vector
from ..physics.detector import Detector
from ..physics.eavesdropper import Eavesdropper
from ..physics.heralding import HeraldingSimulator
from ..physics.link import Link, Node, simple_node
from ..physics.optics import Fibre
from ..physics.photon_stream import PhotonStreamSimulator
from ..physics.polarisation import Analyzer, BellDiagonalState, FibreDrift
from ..physics.source import CWSource
from ..twins.pair_registry import PairRegistry
from ..twins.tagger import SimulatorFanout
from .spec import KLinkSpec, LinkSpec, NodeSpec
from .truth import k_link_truth, m_link_truth


class LinkRuntime:
    """One link of a running bench: its simulator, the fan-out its taggers read, the
    instruments coupled to it and which instrument streams which node."""

    def __init__(self, spec: LinkSpec | KLinkSpec):
        self.spec = spec
        self.sim = build_simulator(spec)
        self.coupling: Callable[[Any], None] | None = None
        self.polarisation: PolarisationCoupling | None = None   # M link, if it has any
        if isinstance(spec, LinkSpec) and any(n.polarisation_drift for n in spec.nodes):
            self.polarisation_coupling()
        self.streamed: dict[str, str] = {}
        self.registry: PairRegistry | None = None   # a K link with qdevices: their registry
        self.qdevices: dict[str, str] = {}         # memory node -> instrument key
        self.fanout = SimulatorFanout(self.sim, before_step=self._before_step)

    def _before_step(self, sim: Any) -> None:
        if self.coupling is not None:
            self.coupling(sim)
        if self.polarisation is not None:
            self.polarisation(sim)

    def polarisation_coupling(self) -> PolarisationCoupling:
        """The M link's :class:`~qnode.hal_sim.physics.coupling.PolarisationCoupling` (made on
        first use, with every node's configured drift)."""
        if self.polarisation is None:
            assert isinstance(self.spec, LinkSpec)
            drifts = {}
            for i, n in enumerate(self.spec.nodes):
                if n.polarisation_drift is not None:
                    seed = (n.polarisation_seed if n.polarisation_seed is not None
                            else np.random.SeedSequence([self.spec.seed, i, 0x706F6C]))
                    drifts[n.name] = FibreDrift(n.polarisation_drift, seed)
            self.polarisation = PolarisationCoupling(drifts)
        return self.polarisation

    def polarisation_step(self, node: str, angle_deg: float,
                          axis: tuple[float, float, float] = (0.0, 1.0, 0.0)) -> float:
        """Trigger a step of ``node``'s fibre now: a rotation by ``angle_deg`` (deg) about
        ``axis`` (Poincaré (X, Y, Z); default Y), from the simulator's next slice on. Returns
        that slice's start (s of simulated time)."""
        if not isinstance(self.spec, LinkSpec):
            raise ValueError(f"{self.spec.name!r} is a K link: no polarisation to step")
        if node not in self.spec.streaming_nodes:
            raise ValueError(f"no node {node!r} in link {self.spec.name!r}; it has "
                             f"{list(self.spec.streaming_nodes)}")

        def step(sim: Any) -> float:
            pc = self.polarisation_coupling()
            pc.drift(node).advance_to(max(sim.time_ps * 1e-12, pc.drift(node).time_s))
            return float(pc.step(node, angle_deg, axis))
        return self.fanout.locked(step)

    def eavesdrop(self, node: str, fraction: float,
                  bases: Sequence[str | Sequence[float]] = ("Z", "X"),
                  weights: Sequence[float] | None = None) -> float:
        """Switch an intercept–resend eavesdropper on ``node``'s fibre on, taking ``fraction``
        (0–1) of its photons, measured in ``bases`` ("Z"/"X"/"Y" or Bloch vectors) with
        probabilities ``weights`` (default equal), from the simulator's next slice on until
        further notice; ``fraction = 0`` switches her off. It replaces any eavesdropper of the
        file (and its schedule). Returns that slice's start (s of simulated emission time)."""
        if not isinstance(self.spec, LinkSpec):
            raise ValueError(f"{self.spec.name!r} is a K link: no fibre to listen on")
        if node not in self.spec.streaming_nodes:
            raise ValueError(f"no node {node!r} in link {self.spec.name!r}; it has "
                             f"{list(self.spec.streaming_nodes)}")

        def switch(sim: Any) -> float:
            t_s = sim.time_ps * 1e-12
            while round(t_s * 1e12) > sim.time_ps:   # from_s must not round past the slice start
                t_s = math.nextafter(t_s, 0.0)
            sim.set_eavesdropper(Eavesdropper(node, fraction, tuple(bases),
                                              None if weights is None else tuple(weights),
                                              from_s=t_s))
            return t_s
        return float(self.fanout.locked(switch))

    def set_indistinguishability(self, vis: float) -> None:
        """This K link's HOM visibility V (0..1) from its simulator's next slice on (true
        heralds then have F = (1+V)/2): degrade a link of a running network, or repair it
        (:meth:`~qnode.hal_sim.physics.heralding.HeraldingSimulator.set_indistinguishability`)."""
        if not isinstance(self.spec, KLinkSpec):
            raise ValueError(f"{self.spec.name!r} is an M link: no two-photon interference")
        self.fanout.locked(lambda sim: sim.set_indistinguishability(vis))

    def file_heralds_in(self, registry: PairRegistry) -> None:
        """From now on every step of this K link's simulator files its heralds in ``registry`` (a
        :class:`~qnode.hal_sim.twins.pair_registry.PairRegistry`; see
        :mod:`qnode.hal_sim.bench`)."""
        assert isinstance(self.spec, KLinkSpec)
        if self.registry is None:
            self.registry = registry
            self.fanout.sim = HeraldTap(self.sim, self._file_heralds)
        elif self.registry is not registry:
            raise ValueError(f"link {self.spec.name!r} files its heralds elsewhere already")

    def _file_heralds(self, chunk: Any) -> None:
        assert isinstance(self.spec, KLinkSpec) and self.registry is not None
        heralds = chunk.truth.heralds
        if heralds.size:
            self.registry.herald_records_at(self.spec.link_id, heralds, self.spec.link.gate_ps)

    def truth(self) -> dict[str, Any]:
        """This link's truth (JSON-ready), read under the fan-out's lock."""
        spec = self.spec
        if isinstance(spec, KLinkSpec):
            return self.fanout.locked(lambda sim: k_link_truth(sim))
        return self.fanout.locked(lambda sim: m_link_truth(sim, spec, self.polarisation))


class HeraldTap:
    """A K link's simulator as the fan-out sees it: each chunk of :meth:`step`/:meth:`flush`
    goes to ``on_chunk`` first; everything else is the simulator's."""

    def __init__(self, sim: Any, on_chunk: Callable[[Any], None]):
        self._sim = sim
        self._on_chunk = on_chunk

    def step(self) -> Any:
        chunk = self._sim.step()
        self._on_chunk(chunk)
        return chunk

    def flush(self) -> Any:
        chunk = self._sim.flush()
        self._on_chunk(chunk)
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sim, name)


def build_simulator(spec: LinkSpec | KLinkSpec) -> Any:
    if isinstance(spec, KLinkSpec):
        return HeraldingSimulator(spec.link, seed=spec.seed,
                                  slice_ps=int(round(spec.slice_ms * 1e9)))
    def node(n: NodeSpec) -> Node:
        clock = Clock(n.clock_offset_ps, n.clock_drift_ppm)
        if not n.analyzers:
            return simple_node(n.name, n.channels, length_km=n.length_km,  # type: ignore[arg-type]
                               efficiency=n.efficiency, dark_count_rate_hz=n.dark_count_rate_hz,
                               jitter_ps=n.jitter_ps, clock=clock)

        def det(ch: int) -> Detector:  # as simple_node's: 20 ns dead time
            return Detector(ch, n.efficiency, n.dark_count_rate_hz, 20_000, n.jitter_ps)
        return Node(n.name, Fibre(n.length_km, 0.2),
                    [Analyzer(a.name, waveplate_analyzer_vector(a.angle_deg), det(a.channels[0]),
                              det(a.channels[1])) for a in n.analyzers], clock)

    nodes = (node(spec.nodes[0]), node(spec.nodes[1]))
    eve = next((n.eavesdropper for n in spec.nodes if n.eavesdropper is not None), None)
    return PhotonStreamSimulator(
        Link(CWSource(spec.pair_rate_hz), BellDiagonalState.werner(spec.visibility), nodes,
             eve),
        seed=spec.seed, slice_ps=int(round(spec.slice_ms * 1e9)))
