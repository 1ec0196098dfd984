"""The photon stream of an M-type link: time-ordered TagBlock chunks per node, slice by slice.

How a step works (one emission slice [t0, t1) of ``slice_ps``):

1. The source emits pairs; each pair falls in an outcome class (which detector, if any, each photon
   clicks, before dead time) with probabilities from the fibres, analyzers, detector efficiencies
   and the state's correlation E. The pairs not lost arrive as one sorted run of emission times
   with a class per pair; each channel takes its photons from that run, already sorted.
2. Each photon's tag time is emission + fibre delay + detector delay + clipped Gaussian jitter; it
   joins its channel's pending buffer.
3. Per node, the horizon H = t1 + min over its channels (delay − jitter clip): no later slice can
   put a tag before H on any of its channels, so tags before H are final. They are merged with
   dark counts in [previous H, H), sorted, passed through the dead-time filter (chained across
   chunks), mapped through the node's clock and merged across channels into one TagBlock.

An :class:`~qnode.hal_sim.physics.eavesdropper.Eavesdropper` (``Link.eavesdropper``) replaces the
state's correlation matrix T by the attacked one (M·T or T·M, see that module) while she is
active; a step is split at her switch-on/off times so that she acts from exactly that emission
time.

Pair ids follow both-clicking pairs through the dead-time filter, so the truth knows exactly which
pairs were registered at both ends. Memory is bounded by the slice: pending buffers hold at most
about one slice of tags plus the jitter clip.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from qnode.native import SimRandom, TagBlock, merge_channels, route_pairs

from .. import _validate as v
from .channel import DARK_ID, DetectorChannel
from .clock import ClockModel
from .eavesdropper import Eavesdropper, attacked_correlation
from .link import Link, Node
from .optics import check_rotation
from .polarisation import BellDiagonalState
from .source import CWSource, PulsedSource
from .truth import ChunkTruth, RunTruth


@dataclass
class SimChunk:
    """One step of the stream: a time-ordered TagBlock per node (node times, ps) and its truth."""

    blocks: dict[str, TagBlock]
    truth: ChunkTruth


class PhotonStreamSimulator:
    """Streams a simulated M-type link as per-node TagBlock chunks, with exact ground truth.

    ``link``: the configuration. ``seed``: everything is deterministic from it (one
    ``numpy.random.SeedSequence`` spawned per component). ``slice_ps``: emission time per step
    (ps); memory and chunk size scale with it. ``clock_history_ps``: how far behind the stream the
    clocks' truth (:meth:`time_difference_ps`) stays available; older history is dropped so that
    memory stays bounded on long runs.

    Use :meth:`stream` for a run of given length, or :meth:`step` repeatedly and :meth:`flush` at
    the end. Cumulative truth is in :attr:`truth`, per-chunk truth in each :class:`SimChunk`.
    """

    def __init__(self, link: Link, seed: int | np.random.SeedSequence = 0, *,
                 slice_ps: int = 10_000_000_000, clock_history_ps: int = 2_000_000_000_000):
        self.slice_ps = v.integer("PhotonStreamSimulator", "slice_ps", slice_ps, 1)
        self.clock_history_ps = v.integer("PhotonStreamSimulator", "clock_history_ps",
                                          clock_history_ps, 0)
        if not isinstance(link, Link):
            raise ValueError(
                f"PhotonStreamSimulator.link must be a Link, got {type(link).__name__}")
        self.link = link
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        n_channels = sum(len(n.detectors) for n in link.nodes)
        seeds = iter(ss.spawn(2 + 2 * n_channels + len(link.nodes)))
        self._source_rng = np.random.default_rng(next(seeds))  # pair counts (numpy)
        self._pair_stream = SimRandom(next(seeds))  # emission times and classes (C kernels)
        self._channels: dict[str, list[DetectorChannel]] = {}
        for node in link.nodes:
            delay = node.fibre.propagation_delay_ps
            self._channels[node.name] = [
                DetectorChannel(node.name, d, delay, SimRandom(next(seeds)),
                         np.random.default_rng(next(seeds))) for d in node.detectors]
        self._outputs = [ch for chans in self._channels.values() for ch in chans]
        self._clocks = {node.name: ClockModel(node.clock, np.random.default_rng(next(seeds)))
                        for node in link.nodes}
        self._rotations = {node.name: node.fibre.rotation_matrix for node in link.nodes}
        self._state = link.state
        self._eve_fraction = (0.0 if link.eavesdropper is None
                              else link.eavesdropper.fraction_at_ps(0))
        self._vectors = {node.name: [np.array(a.vector) for a in node.analyzers]
                         for node in link.nodes}
        self._t = 0
        self._horizon = {node.name: 0 for node in link.nodes}
        self._flushed = False
        self._next_id = 0
        self._hits = np.zeros(0, np.uint8)     # registrations per pair id, ids >= _hits_lo
        self._hits_lo = 0
        self._open_slices: deque[tuple[int, int]] = deque()  # (emission end, id end)
        self.truth = RunTruth()
        for node in link.nodes:
            self.truth.arm_transmission[node.name] = node.fibre.transmission
            w = np.array([a.weight for a in node.analyzers])
            w = w / w.sum()
            self.truth.detector_efficiency[node.name] = float(sum(
                wi * (a.plus.efficiency + a.minus.efficiency) / 2
                for wi, a in zip(w, node.analyzers, strict=True)))
            self.truth.channel_delay_ps[node.name] = {
                ch.channel: ch.delay_ps + node.clock.offset_ps for ch in self._channels[node.name]}
            self.truth.singles[node.name] = {ch.channel: 0 for ch in self._channels[node.name]}
            self.truth.dark_counts[node.name] = {ch.channel: 0 for ch in self._channels[node.name]}
        self._build_classes()

    # ------------------------------------------------------------------ configuration at run time

    @property
    def nodes(self) -> tuple[str, str]:
        return tuple(n.name for n in self.link.nodes)  # type: ignore[return-value]

    @property
    def time_ps(self) -> int:
        """Emission time simulated so far (ps)."""
        return self._t

    def set_state(self, state: BellDiagonalState) -> None:
        """Change the pair state from the next slice on."""
        self._state = state
        self.link = dataclasses.replace(self.link, state=state)
        self._build_classes()

    def set_source(self, source: CWSource | PulsedSource) -> None:
        """Replace the pair source (e.g. the pump power or the crystal's phase matching changed)
        from the next slice on."""
        if not isinstance(source, (CWSource, PulsedSource)):
            raise ValueError(f"set_source: expected a CWSource or PulsedSource, got "
                             f"{type(source).__name__}")
        self.link = dataclasses.replace(self.link, source=source)

    def set_eavesdropper(self, eavesdropper: Eavesdropper | None) -> None:
        """Put an intercept–resend eavesdropper on a node's fibre (None: remove her), replacing
        any earlier one, from the next slice on; her ``from_s``/``until_s`` schedule counts in
        the run's emission time, so ``from_s`` <= :attr:`time_ps` switches her on now."""
        self.link = dataclasses.replace(self.link, eavesdropper=eavesdropper)  # validates
        self._update_eavesdropper(self._t, force=True)

    @property
    def eavesdropper(self) -> Eavesdropper | None:
        """The configured eavesdropper (active or not), if any."""
        return self.link.eavesdropper

    @property
    def eavesdropper_fraction(self) -> float:
        """The fraction of her node's photons the eavesdropper intercepts now (0 when there is
        none or she is outside her schedule)."""
        return self._eve_fraction

    @property
    def correlation_matrix(self) -> np.ndarray:
        """T of the pairs as the nodes receive them now (3×3, (X, Y, Z), before the fibres'
        rotations): the state's, after the eavesdropper's channel while she is active."""
        T = self._state.correlation_matrix
        eve = self.link.eavesdropper
        if eve is None or self._eve_fraction == 0.0:
            return T
        side = self.nodes.index(eve.node)
        return attacked_correlation(T, eve.matrix(self._eve_fraction), side)

    def expected_correlations(self, eavesdropper: bool = True) -> dict[tuple[str, str], float]:
        """E = (R_a·a)ᵀ·T·(R_b·b) per (analyzer of node 0, analyzer of node 1) name pair under the
        current configuration; ``eavesdropper=False``: as if there were none."""
        T = self.correlation_matrix if eavesdropper else self._state.correlation_matrix
        a_node, b_node = self.link.nodes
        E = self._correlations(T)
        return {(an.name, bn.name): float(E[i, j])
                for i, an in enumerate(a_node.analyzers) for j, bn in enumerate(b_node.analyzers)}

    def _correlations(self, T: np.ndarray) -> np.ndarray:
        a_node, b_node = self.link.nodes
        va = [self._rotations[a_node.name] @ x for x in self._vectors[a_node.name]]
        vb = [self._rotations[b_node.name] @ x for x in self._vectors[b_node.name]]
        return np.array([[float(x @ T @ y) for y in vb] for x in va])

    def _update_eavesdropper(self, t_ps: int, force: bool = False) -> None:
        """Set the eavesdropper's fraction for emission from ``t_ps`` (ps) on."""
        eve = self.link.eavesdropper
        f = 0.0 if eve is None else eve.fraction_at_ps(t_ps)
        if force or f != self._eve_fraction:
            self._eve_fraction = f
            self._build_classes()

    def set_detector(self, node: str, channel: int, *, efficiency: float | None = None,
                     dark_count_rate_hz: float | None = None) -> None:
        """Change one detector's efficiency (0-1) and/or dark-count rate (Hz) from the next slice
        on (e.g. an SNSPD's bias current changed)."""
        n = self._node(node)
        changes = {k: v for k, v in (("efficiency", efficiency),
                                     ("dark_count_rate_hz", dark_count_rate_hz)) if v is not None}
        analyzers = list(n.analyzers)
        for i, an in enumerate(analyzers):
            for side in ("plus", "minus"):
                det = getattr(an, side)
                if det.channel == channel:
                    new_det = dataclasses.replace(det, **changes)  # validates the values
                    analyzers[i] = dataclasses.replace(an, **{side: new_det})
                    new_node = dataclasses.replace(n, analyzers=tuple(analyzers))
                    nodes = tuple(new_node if x.name == n.name else x for x in self.link.nodes)
                    self.link = dataclasses.replace(self.link, nodes=nodes)
                    for ch in self._channels[n.name]:
                        if ch.channel == channel:
                            ch.detector = new_det
                    self._build_classes()
                    return
        raise ValueError(f"node {node!r} has no detector on channel {channel}")

    def set_rotation(self, node: str, matrix: object) -> None:
        """Set the polarisation rotation of ``node``'s fibre (3×3, Poincaré sphere) from the next
        slice on."""
        self._rotations[self._node(node).name] = check_rotation("set_rotation", "matrix", matrix)
        self._build_classes()

    def set_analyzer_vector(self, node: str, analyzer: str, vector: object) -> None:
        """Point one analyzer at a new Bloch vector (e.g. a waveplate moved) from the next
        slice on."""
        n = self._node(node)
        names = [a.name for a in n.analyzers]
        if analyzer not in names:
            raise ValueError(f"node {node!r} has no analyzer {analyzer!r}; it has {names}")
        vec = np.asarray(vector, float)
        if vec.shape != (3,) or not np.isclose(np.linalg.norm(vec), 1.0):
            raise ValueError(f"set_analyzer_vector: vector must be a unit 3-vector, got {vector!r}")
        self._vectors[n.name][names.index(analyzer)] = vec
        self._build_classes()

    def time_difference_ps(self, node_a: str, channel_a: int, node_b: str, channel_b: int,
                           emission_ps: int) -> int:
        """Ground truth for clock alignment: t_b - t_a (node times, ps) of the two photons of a pair
        emitted at true time ``emission_ps``, before jitter; includes fibre and detector delays,
        both clocks' offsets, drifts and frequency walks."""
        def node_time(node: str, channel: int) -> int:
            ch = next((c for c in self._channels[self._node(node).name] if c.channel == channel),
                      None)
            if ch is None:
                raise ValueError(f"node {node!r} has no channel {channel}")
            return int(self._clocks[node].to_node_time(
                np.array([int(emission_ps) + ch.delay_ps], np.int64))[0])
        return node_time(node_b, channel_b) - node_time(node_a, channel_a)

    def expected_correlation(self, analyzer_a: str, analyzer_b: str) -> float:
        """E for the named analyzers of node 0 and node 1 under the current configuration."""
        return self.truth.expected_correlation[(analyzer_a, analyzer_b)]

    def _node(self, name: str) -> Node:
        for n in self.link.nodes:
            if n.name == name:
                return n
        raise ValueError(f"no node {name!r}; nodes are {self.nodes}")

    def _build_classes(self) -> None:
        """Outcome classes of a pair and their probabilities.

        An arm outcome o is (analyzer k, sign s) → one detector with efficiency η_o. With τ the
        fibre transmission and w_k the analyzer weights:
          P(o_a, o_b)  = τ_a·τ_b·w_ka·w_kb·(1 + s_a·s_b·E_ka,kb)/4·η_oa·η_ob   (both click)
          P(o_a, lost) = τ_a·w_ka·η_oa/2 − Σ_ob P(o_a, o_b)                      (marginals are 1/2)
          P(lost, o_b) likewise; the last class is 'lost on both sides'.
        """
        a_node, b_node = self.link.nodes

        def outcomes(node: Node):
            w = np.array([an.weight for an in node.analyzers])
            w = w / w.sum()
            chans = {c.channel: c for c in self._channels[node.name]}
            out = []
            for k, an in enumerate(node.analyzers):
                for s, det in ((1, an.plus), (-1, an.minus)):
                    out.append((k, s, chans[det.channel], w[k] * det.efficiency))
            return out

        oa, ob = outcomes(a_node), outcomes(b_node)
        ta, tb = a_node.fibre.transmission, b_node.fibre.transmission
        E = self._correlations(self.correlation_matrix)
        self.truth.expected_correlation = {
            (an.name, bn.name): float(E[i, j])
            for i, an in enumerate(a_node.analyzers) for j, bn in enumerate(b_node.analyzers)}
        classes: list[tuple[DetectorChannel | None, DetectorChannel | None]] = []
        probs: list[float] = []
        joint = np.zeros((len(oa), len(ob)))
        for i, (ka, sa, ca, wa) in enumerate(oa):
            for j, (kb, sb, cb, wb) in enumerate(ob):
                joint[i, j] = ta * tb * wa * wb * (1 + sa * sb * E[ka, kb]) / 4
                classes.append((ca, cb))
                probs.append(joint[i, j])
        n_both = len(classes)
        for i, (_, _, ca, wa) in enumerate(oa):
            classes.append((ca, None))
            probs.append(max(ta * wa / 2 - joint[i].sum(), 0.0))
        for j, (_, _, cb, wb) in enumerate(ob):
            classes.append((None, cb))
            probs.append(max(tb * wb / 2 - joint[:, j].sum(), 0.0))
        p = np.array(probs + [0.0])
        p[-1] = max(1.0 - p.sum(), 0.0)
        self._classes = classes
        self._n_both_classes = n_both
        self._probs = p / p.sum()
        # Kept pairs (all classes but the last) get their class from a cdf; each class routes its
        # photons to outputs numbered over all nodes' channels (self._outputs).
        kept = self._probs[:-1]
        self._keep_probability = float(kept.sum())
        self._cdf = np.cumsum(kept / kept.sum()) if kept.sum() > 0 else np.ones(kept.size)
        index = {id(ch): o for o, ch in enumerate(self._outputs)}
        self._route = np.array([[index[id(ch)] if ch is not None else -1 for ch in cls]
                                for cls in classes], np.int32).reshape(len(classes), 2)

    # ------------------------------------------------------------------ streaming

    def step(self) -> SimChunk:
        """Emit one slice and return the tags it made final."""
        if self._flushed:
            raise RuntimeError("PhotonStreamSimulator: the run was flushed; make a new simulator")
        t0, t1 = self._t, self._t + self.slice_ps
        eve = self.link.eavesdropper
        cuts = [t for t in (eve.switch_times_ps() if eve else ()) if t0 < t < t1]
        bounds = [t0, *cuts, t1]
        truth = self._emit(t0, bounds[1])
        for a, b in itertools.pairwise(bounds[1:]):   # she switches within the slice
            self._update_eavesdropper(a)
            part = self._emit(a, b)
            truth.emission_end_ps = b
            truth.pairs_emitted += part.pairs_emitted
            truth.pairs_both_detected += part.pairs_both_detected
        self._t = t1
        self._update_eavesdropper(t1)
        horizons = {name: t1 + min(c.delay_ps - c.clip_ps for c in chans)
                    for name, chans in self._channels.items()}
        return self._finalize(truth, horizons)

    def flush(self) -> SimChunk:
        """End the run: finalise every pending tag (dark counts run up to the last possible photon
        tag). Afterwards :attr:`truth` is complete."""
        if self._flushed:
            raise RuntimeError("PhotonStreamSimulator: already flushed")
        truth = ChunkTruth(self._t, self._t, {})
        horizons = {name: self._t + max(c.delay_ps + c.clip_ps for c in chans) + 1
                    for name, chans in self._channels.items()}
        chunk = self._finalize(truth, horizons, final=True)
        self._flushed = True
        self.truth.complete = True
        return chunk

    def stream(self, duration_ps: int) -> Iterator[SimChunk]:
        """Steps until ``duration_ps`` of emission time (rounded up to whole slices), then the
        flush chunk."""
        v.integer("PhotonStreamSimulator.stream", "duration_ps", duration_ps, 0)
        while self._t < duration_ps:
            yield self.step()
        yield self.flush()

    def _emit(self, t0: int, t1: int) -> ChunkTruth:
        times, n_emitted = self.link.source.emit(self._source_rng, self._pair_stream, t0, t1,
                                                 self._keep_probability)
        # Pairs seen at both ends get consecutive ids in emission order; other photons id -1.
        per_t, per_id, n_both = route_pairs(times, self._pair_stream, self._cdf,
                                            self._route, len(self._outputs),
                                            self._n_both_classes, self._next_id)
        for ch, t, ids in zip(self._outputs, per_t, per_id, strict=True):
            ch.add_photons(t, ids)
        if n_both:
            self._hits = np.concatenate([self._hits, np.zeros(n_both, np.uint8)])
            self._next_id += n_both
            self._open_slices.append((t1, self._next_id))
        self.truth.duration_ps = t1
        return ChunkTruth(t0, t1, {}, pairs_emitted=n_emitted, pairs_both_detected=n_both)

    def _finalize_node(self, name: str, h: int):
        """Finalise one node's tags up to true time ``h``: (block, singles, dark counts, ids of
        registered paired photons). Touches only that node's state."""
        h_prev = self._horizon[name]
        clock = self._clocks[name]
        by_channel: dict[int, np.ndarray] = {}
        singles, darks, paired = {}, {}, []
        for ch in self._channels[name]:
            t, ids = ch.finalize(h_prev, h)
            paired.append(ids[ids >= 0])
            singles[ch.channel] = int(t.size)
            darks[ch.channel] = int(np.count_nonzero(ids == DARK_ID))
            by_channel[ch.channel] = clock.to_node_time(t)
        clock.prune(h_prev - self.clock_history_ps)
        return merge_channels(by_channel), singles, darks, paired

    def _finalize(self, truth: ChunkTruth, horizons: dict[str, int],
                  final: bool = False) -> SimChunk:
        names = list(self._channels)
        hs = {n: max(horizons[n], self._horizon[n]) for n in names}
        results = {n: self._finalize_node(n, hs[n]) for n in names}
        blocks: dict[str, TagBlock] = {}
        emitted_final = []  # per node: emission time before which both-click pairs are final
        for name in names:
            block, singles, darks, paired = results[name]
            for ids in paired:
                if ids.size:
                    self._hits[ids - self._hits_lo] += 1
            blocks[name] = block
            truth.horizon_ps[name] = hs[name]
            truth.singles[name] = singles
            truth.dark_counts[name] = darks
            self._horizon[name] = hs[name]
            emitted_final.append(
                hs[name] - max(c.delay_ps + c.clip_ps for c in self._channels[name]))
        done_before = min(emitted_final)
        id_end = self._hits_lo
        while self._open_slices and (final or self._open_slices[0][0] <= done_before):
            id_end = self._open_slices.popleft()[1]
        if id_end > self._hits_lo:
            k = id_end - self._hits_lo
            truth.pairs_registered_both = int(np.count_nonzero(self._hits[:k] == 2))
            self._hits = self._hits[k:].copy()
            self._hits_lo = id_end
        self.truth.add(truth)
        return SimChunk(blocks, truth)
