"""Ground truth of a simulated run: what really happened, to compare estimates against."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChunkTruth:
    """Truth for one step of the stream (one emission slice and the tags it finalised).

    * ``emission_start_ps`` / ``emission_end_ps``: the emission slice [start, end) in source time.
    * ``horizon_ps``: per node, the true (detector) time up to which that node's stream is now
      complete; the chunk holds the node's tags in [previous horizon, horizon).
    * ``pairs_emitted``: pairs emitted in the slice (all, including those lost).
    * ``pairs_both_detected``: pairs of the slice whose photons both clicked a detector, before
      dead time.
    * ``pairs_registered_both``: pairs whose two photons both produced a registered tag (after dead
      time), counted when both ends are final (may lag the slice by a step).
    * ``singles``: per node, per channel, registered tags in this chunk.
    * ``dark_counts``: per node, per channel, registered tags in this chunk that were dark counts.
    """

    emission_start_ps: int
    emission_end_ps: int
    horizon_ps: dict[str, int]
    pairs_emitted: int = 0
    pairs_both_detected: int = 0
    pairs_registered_both: int = 0
    singles: dict[str, dict[int, int]] = field(default_factory=dict)
    dark_counts: dict[str, dict[int, int]] = field(default_factory=dict)


@dataclass
class RunTruth:
    """Cumulative truth of a run (see :class:`ChunkTruth` for the counters) and its constants.

    * ``duration_ps``: emission time simulated so far (ps).
    * ``complete``: True after the run was flushed (then ``pairs_registered_both`` is final).
    * ``expected_correlation``: E = (R_a·a)ᵀ·T·(R_b·b) per (analyzer of node 0, analyzer of node 1)
      name pair, from the configured state (current configuration).
    * ``arm_transmission``: per node, fibre transmission (0..1).
    * ``detector_efficiency``: per node, mean detection efficiency of a photon reaching the node
      (analyzer-weighted mean over its detectors; outcomes are equiprobable).
    * ``channel_delay_ps``: per node, per channel, true delay from emission to the tag in node time
      at t = 0: fibre delay + detector delay + clock offset (ps). Drift adds φ(t) on top.
    """

    duration_ps: int = 0
    complete: bool = False
    pairs_emitted: int = 0
    pairs_both_detected: int = 0
    pairs_registered_both: int = 0
    singles: dict[str, dict[int, int]] = field(default_factory=dict)
    dark_counts: dict[str, dict[int, int]] = field(default_factory=dict)
    expected_correlation: dict[tuple[str, str], float] = field(default_factory=dict)
    arm_transmission: dict[str, float] = field(default_factory=dict)
    detector_efficiency: dict[str, float] = field(default_factory=dict)
    channel_delay_ps: dict[str, dict[int, int]] = field(default_factory=dict)

    def arm_efficiency(self, node: str) -> float:
        """Probability that a photon sent to ``node`` clicks one of its detectors (fibre ×
        detector), before dead time: the heralding (Klyshko) efficiency of that arm."""
        return self.arm_transmission[node] * self.detector_efficiency[node]

    def delay_difference_ps(self, node_a: str, channel_a: int, node_b: str, channel_b: int) -> int:
        """t_b − t_a (node times, ps) for the two photons of a pair, at t = 0: where the g2 peak
        between the two channels sits."""
        return self.channel_delay_ps[node_b][channel_b] - self.channel_delay_ps[node_a][channel_a]

    def add(self, chunk: ChunkTruth) -> None:
        self.pairs_emitted += chunk.pairs_emitted
        self.pairs_both_detected += chunk.pairs_both_detected
        self.pairs_registered_both += chunk.pairs_registered_both
        for total, part in ((self.singles, chunk.singles), (self.dark_counts, chunk.dark_counts)):
            for node, per in part.items():
                acc = total.setdefault(node, {})
                for ch, n in per.items():
                    acc[ch] = acc.get(ch, 0) + n
