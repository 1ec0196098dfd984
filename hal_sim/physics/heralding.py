"""K-type (create-and-keep) heralding: a midpoint station between two memory nodes.

The model (the station of the daemon's ``herald`` role, docs/physicists/photon-physics.md): a
linear-optics Bell-state measurement on polarisation-encoded photons (H. Weinfurter, Europhys.
Lett. 25, 559 (1994); S. L. Braunstein and A. Mann, Phys. Rev. A 51, R1727 (1995)):

* **Attempts.** Both memories attempt at ``attempt_rate_hz`` on the station's clock: attempt k's
  photons are due at the station at ``k·period_ps`` (period = round(1e12/rate) ps, station time).
  Each memory emits, with ``emission_probability``, one photon whose polarisation (H/V) is
  entangled with its qubit; it emits early by its fibre's delay, so the two photons meet at the
  beam splitter. The fibre (:class:`~qnode.hal_sim.Fibre`: length km, dB/km) passes it with
  transmission τ. α_x = p_e·τ_x is the probability that end x's photon reaches the station.
* **Station optics.** A 50:50 beam splitter (outputs c, d) and a PBS on each output: four
  :class:`~qnode.hal_sim.Detector` s, ``detectors`` = (c-H, c-V, d-H, d-V), by default on tagger
  channels 1, 2, 3, 4. Each photon alone is unpolarised (it is entangled with its memory) and
  takes c or d with 1/2. With two photons (V = ``indistinguishability``, the HOM visibility):

  ====================================  ============  ========================================
  photons                               probability   detectors (pattern)
  ====================================  ============  ========================================
  orthogonal polarisations, split       1/4           c-H & d-V or c-V & d-H (1/8 each): Ψ−
  orthogonal polarisations, one output  1/4           c-H & c-V or d-H & d-V (1/8 each): Ψ+
  same polarisation, split              (1 − V)/4     c-H & d-H or c-V & d-V: failure
  same polarisation, bunched            (1 + V)/4     two photons in one detector: one click
  ====================================  ============  ========================================

  so P(Ψ+ | both photons detected) = P(Ψ− | both detected) = 1/4 and the success probability
  given both photons arrive is ½·η_det² (the 50 % limit of linear optics).
* **Heralded state.** Partial distinguishability leaves which-path information that removes the
  coherence between the |↑↓⟩ and |↓↑⟩ terms of the memories' state: the overlap of the two
  detected two-photon wave packets is |⟨φ_a|φ_b⟩|² = V. A true herald of Ψ± leaves the memories in
  the Bell-diagonal state ρ = (1+V)/2·|Ψ±⟩⟨Ψ±| + (1−V)/2·|Ψ∓⟩⟨Ψ∓|: fidelity F = (1+V)/2 to the
  announced state. A **false herald** (one photon plus a dark count, or two dark counts) leaves
  the memories uncorrelated (a lost photon's memory is maximally mixed): F = 1/4. Each herald's
  ``state`` in the truth is one draw from that mixture (the announced state with probability
  F, else the other Ψ; uniform over the four Bell states for a false herald), a Pauli-frame
  realisation a memory simulator can carry forward.
* **Detectors.** Efficiency, dark counts (Poisson, any time), non-paralysable dead time and Gaussian
  jitter clipped at ±8σ (:mod:`qnode.hal_sim.physics.detector`), applied by the native kernels
  exactly as in :mod:`qnode.hal_sim.physics.photon_stream`; tag time = arrival + detector delay +
  jitter.
* **Herald rule (the station's decision, which defines the truth).** Attempt k's *gate* on
  channel c is ``[k·period + delay_c − ⌊G/2⌋, k·period + delay_c − ⌊G/2⌋ + G)`` (G =
  ``gate_ps``, ps, station time). The *mask* of attempt k is the set of detectors with at least
  one registered tag in their gate. A mask of exactly {c-H, d-V} or {c-V, d-H} heralds Ψ−, of
  exactly {c-H, c-V} or {d-H, d-V} heralds Ψ+; every other mask is no herald. The herald's time
  is the **later** of the two detectors' first tags in the gate (station time, ps, as streamed).
  It is **true** when both detectors registered a photon of attempt k (so both photons arrived
  and were detected), **false** otherwise. A station that does not know the attempt clock and
  clusters tags with the native N-fold core in a window w = G/2 finds the same heralds, plus
  dark-count pairs between gates (≈ 8·D²·w per second for four detectors of dark rate D, 8e-5/s
  at 100 Hz and w = 1 ns).

**Closed-form herald probability per attempt** (:func:`herald_expectation`; exact for this model
up to dead time, whose effect is of relative order D·dead_time). With q_i = 1 − exp(−D_i·G) the
probability of a dark click in detector i's gate and P_ph(S) the probability that photons click
exactly the detector set S (enumerated from the table above, with α_a, α_b and the detector
efficiencies η_i), a pattern M = {i, j} is heralded

    truly:   P_ph(M) · Π_{m∉M} (1 − q_m)
    falsely: [P_ph({i})·q_j + P_ph({j})·q_i + P_ph(∅)·q_i·q_j] · Π_{m∉M} (1 − q_m).

For equal detectors and no dark counts the total is R = attempt_rate · ½ · η_a · η_b with
η_x = p_e·τ_x·η_det; to first order in q the false-herald rate is
attempt_rate · [2·(η_a + η_b)·q + 4·q²] (for η_a, η_b ≪ 1).

Memory is bounded by the slice: the simulator keeps only pending tags within a gate of the
horizon; truth totals are counters, herald lists are per chunk.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from qnode.daemon.quantum.bell_states import BELL_STATES
from qnode.native import SimRandom, TagBlock, merge_channels

from .. import _validate as v
from .channel import DARK_ID, DetectorChannel
from .detector import Detector
from .optics import Fibre
from .source import bernoulli_positions

#: Bell-state codes of :data:`HERALD_DTYPE` (``announced``, ``state``): index into this tuple,
#: the order of qnode's link layer.
PSI_PLUS = BELL_STATES.index("psi+")
PSI_MINUS = BELL_STATES.index("psi-")

#: One herald: station time of the later click (ps), attempt index, announced Bell state, the
#: state drawn from the true mixture, the true fidelity to the announced state, true or false.
HERALD_DTYPE = np.dtype([("time", "<i8"), ("attempt", "<i8"), ("announced", "u1"),
                         ("state", "u1"), ("fidelity", "<f8"), ("true", "?")])

# Detector indices: 0 c-H, 1 c-V, 2 d-H, 3 d-V. Heralding masks (bit i = detector i).
_PATTERNS = {0b1001: PSI_MINUS, 0b0110: PSI_MINUS, 0b0011: PSI_PLUS, 0b1100: PSI_PLUS}
_MASK_STATE = np.full(16, 255, np.uint8)
for _m, _s in _PATTERNS.items():
    _MASK_STATE[_m] = _s
_OTHER_PSI = {PSI_PLUS: PSI_MINUS, PSI_MINUS: PSI_PLUS}
_EMPTY_T = np.zeros(0, np.int64)


def station_detectors(channels: Sequence[int] = (1, 2, 3, 4), **detector: float
                      ) -> tuple[Detector, Detector, Detector, Detector]:
    """Four identical detectors (c-H, c-V, d-H, d-V) on ``channels``; keywords go to
    :class:`~qnode.hal_sim.Detector` (efficiency, dark_count_rate_hz, dead_time_ps, jitter_ps,
    delay_ps)."""
    chans = tuple(channels)
    if len(chans) != 4:
        raise ValueError(f"station_detectors: channels must be 4 numbers, got {channels!r}")
    return tuple(Detector(int(c), **detector) for c in chans)  # type: ignore[return-value]


@dataclass(frozen=True)
class HeraldingLink:
    """A K-type link: two memory nodes, a midpoint station.

    * ``station``: the station node's name (the only node that streams tags).
    * ``ends``: the two memory nodes (end 0 is 'a', end 1 is 'b').
    * ``attempt_rate_hz``: attempts per second (the period is rounded to whole ps).
    * ``emission_probability``: probability that a memory emits its photon in an attempt.
    * ``fibres``: each end's fibre to the station (loss; its delay only shifts the emission).
    * ``detectors``: (c-H, c-V, d-H, d-V), see :func:`station_detectors`.
    * ``indistinguishability``: V, the photons' HOM visibility (0..1).
    * ``gate_ps``: G, the width of each attempt's detection gate (ps); G/2 must cover the jitter
      clip (8σ) so that a photon always lands in its own gate, and G must be below the period.
    """

    station: str
    ends: tuple[str, str]
    attempt_rate_hz: float = 1e6
    emission_probability: float = 0.1
    fibres: tuple[Fibre, Fibre] = (Fibre(), Fibre())
    detectors: tuple[Detector, Detector, Detector, Detector] = field(
        default_factory=station_detectors)
    indistinguishability: float = 1.0
    gate_ps: int = 2_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "ends", tuple(self.ends))
        object.__setattr__(self, "fibres", tuple(self.fibres))
        object.__setattr__(self, "detectors", tuple(self.detectors))
        if len(self.ends) != 2 or len({self.station, *self.ends}) != 3:
            raise ValueError(f"HeraldingLink: ends must be two nodes distinct from each other and "
                             f"from the station, got station {self.station!r}, ends {self.ends!r}")
        rate = v.positive("HeraldingLink", "attempt_rate_hz", self.attempt_rate_hz)
        if rate > 1e11:
            raise ValueError(f"HeraldingLink.attempt_rate_hz must be <= 1e11, got {rate!r}")
        v.probability("HeraldingLink", "emission_probability", self.emission_probability)
        v.probability("HeraldingLink", "indistinguishability", self.indistinguishability)
        if len(self.fibres) != 2 or not all(isinstance(f, Fibre) for f in self.fibres):
            raise ValueError("HeraldingLink.fibres must be two Fibre objects")
        if len(self.detectors) != 4 or not all(isinstance(d, Detector) for d in self.detectors):
            raise ValueError("HeraldingLink.detectors must be four Detector objects "
                             "(c-H, c-V, d-H, d-V)")
        chans = [d.channel for d in self.detectors]
        if len(set(chans)) != 4:
            raise ValueError(f"HeraldingLink.detectors: channels must be distinct, got {chans}")
        g = v.integer("HeraldingLink", "gate_ps", self.gate_ps, 1)
        clip = max(d.jitter_clip_ps for d in self.detectors)
        if g // 2 < clip or g - g // 2 <= clip:
            raise ValueError(f"HeraldingLink.gate_ps: {g} ps does not hold the jitter (±{clip} ps "
                             f"clip): use at least {2 * clip + 2} ps")
        if g >= self.period_ps:
            raise ValueError(f"HeraldingLink.gate_ps: {g} ps must be below the attempt period "
                             f"{self.period_ps} ps")

    @property
    def period_ps(self) -> int:
        """Attempt period (ps): round(1e12 / attempt_rate_hz)."""
        return max(1, int(round(1e12 / self.attempt_rate_hz)))

    @property
    def channels(self) -> tuple[int, int, int, int]:
        return tuple(d.channel for d in self.detectors)  # type: ignore[return-value]

    def arrival_probability(self, end: int) -> float:
        """α = p_e·τ: probability that end ``end``'s photon of one attempt reaches the station."""
        return self.emission_probability * self.fibres[end].transmission

    def gate_start_ps(self, attempt: int, channel: int) -> int:
        """First ps of attempt ``attempt``'s gate on ``channel`` (station time)."""
        det = next((d for d in self.detectors if d.channel == channel), None)
        if det is None:
            raise ValueError(f"HeraldingLink: no detector on channel {channel}")
        return attempt * self.period_ps + det.delay_ps - self.gate_ps // 2


# ------------------------------------------------------------------------------ expectation

def _photon_click_distribution(link: HeraldingLink) -> dict[int, float]:
    """P_ph(S) per attempt: probability that photons (not darks) click exactly the detector set
    S (bit mask over c-H, c-V, d-H, d-V), before dead time."""
    eta = [d.efficiency for d in link.detectors]
    aa, ab = link.arrival_probability(0), link.arrival_probability(1)
    vis = link.indistinguishability
    one, two = aa * (1 - ab) + (1 - aa) * ab, aa * ab
    p: dict[int, float] = {}

    def add(mask: int, x: float) -> None:
        p[mask] = p.get(mask, 0.0) + x

    for i in range(4):
        add(1 << i, one * eta[i] / 4)
        bunch = two * (1 + vis) / 16
        add(1 << i, bunch * (1 - (1 - eta[i]) ** 2))
    for (i, j), w in (((0, 3), 1 / 8), ((1, 2), 1 / 8), ((0, 1), 1 / 8), ((2, 3), 1 / 8),
                      ((0, 2), (1 - vis) / 8), ((1, 3), (1 - vis) / 8)):
        add((1 << i) | (1 << j), two * w * eta[i] * eta[j])
        add(1 << i, two * w * eta[i] * (1 - eta[j]))
        add(1 << j, two * w * (1 - eta[i]) * eta[j])
    p[0] = max(0.0, 1.0 - sum(p.values()))
    return p


@dataclass(frozen=True)
class HeraldExpectation:
    """Closed-form herald probabilities of a :class:`HeraldingLink` (see the module docstring).

    ``p_true`` / ``p_false``: per attempt, per announced state ("psi+", "psi-").
    ``arrival_probability``: α per end; ``detection_probability``: η_x = α_x·mean η_det.
    ``fidelity_true``: F = (1+V)/2 of a true herald; a false one has 1/4.
    """

    attempt_rate_hz: float
    arrival_probability: tuple[float, float]
    detection_probability: tuple[float, float]
    p_true: Mapping[str, float]
    p_false: Mapping[str, float]
    fidelity_true: float

    @property
    def p_herald(self) -> float:
        """Probability that an attempt heralds (true or false, either Ψ)."""
        return sum(self.p_true.values()) + sum(self.p_false.values())

    @property
    def true_herald_rate_hz(self) -> float:
        return self.attempt_rate_hz * sum(self.p_true.values())

    @property
    def false_herald_rate_hz(self) -> float:
        return self.attempt_rate_hz * sum(self.p_false.values())

    @property
    def herald_rate_hz(self) -> float:
        """R = attempt_rate·½·η_a·η_b (+ dark-count terms), heralds per second."""
        return self.attempt_rate_hz * self.p_herald

    @property
    def mean_fidelity(self) -> float:
        """Expected fidelity to the announced state of a herald picked at random."""
        t, f = sum(self.p_true.values()), sum(self.p_false.values())
        return (t * self.fidelity_true + f * 0.25) / (t + f) if t + f > 0 else float("nan")

    def as_dict(self) -> dict[str, object]:
        return {"attempt_rate_hz": self.attempt_rate_hz,
                "arrival_probability": list(self.arrival_probability),
                "detection_probability": list(self.detection_probability),
                "herald_rate_hz": self.herald_rate_hz,
                "true_herald_rate_hz": self.true_herald_rate_hz,
                "false_herald_rate_hz": self.false_herald_rate_hz,
                "p_true": dict(self.p_true), "p_false": dict(self.p_false),
                "fidelity_true": self.fidelity_true,
                "mean_fidelity": None if math.isnan(self.mean_fidelity) else self.mean_fidelity}


def herald_expectation(link: HeraldingLink) -> HeraldExpectation:
    """The closed-form herald probabilities per attempt (module docstring), dead time neglected."""
    p_ph = _photon_click_distribution(link)
    q = [1.0 - math.exp(-d.dark_count_rate_hz * link.gate_ps * 1e-12) for d in link.detectors]
    p_true = {"psi+": 0.0, "psi-": 0.0}
    p_false = {"psi+": 0.0, "psi-": 0.0}
    for mask, code in _PATTERNS.items():
        i, j = (k for k in range(4) if mask >> k & 1)
        quiet = math.prod(1 - q[m] for m in range(4) if not mask >> m & 1)
        name = BELL_STATES[code]
        p_true[name] += p_ph.get(mask, 0.0) * quiet
        p_false[name] += (p_ph.get(1 << i, 0.0) * q[j] + p_ph.get(1 << j, 0.0) * q[i]
                          + p_ph[0] * q[i] * q[j]) * quiet
    mean_eta = sum(d.efficiency for d in link.detectors) / 4
    alpha = (link.arrival_probability(0), link.arrival_probability(1))
    return HeraldExpectation(1e12 / link.period_ps, alpha,
                             (alpha[0] * mean_eta, alpha[1] * mean_eta), p_true, p_false,
                             (1 + link.indistinguishability) / 2)


# ------------------------------------------------------------------------------ truth

def _state_counts() -> dict[str, int]:
    return {"psi+": 0, "psi-": 0}


@dataclass
class HeraldChunkTruth:
    """Truth of one step: the attempts of one slice and the tags and heralds it made final.

    * ``emission_start_ps`` / ``emission_end_ps``: the slice's attempts are those due at the
      station in [start, end) (station time, ps).
    * ``horizon_ps``: {station: time up to which the station's stream is complete (ps)}.
    * ``attempts``; per end: ``emissions`` (photons emitted), ``photons_arrived`` (reached the
      station); ``both_arrived``: attempts in which both photons arrived.
    * ``singles`` / ``dark_counts``: per channel, registered tags / registered dark counts in
      this chunk.
    * ``heralds``: the heralds whose gates became final in this step (:data:`HERALD_DTYPE`;
      at most one step after their tags were streamed), in attempt order.
    * ``true_heralds`` / ``false_heralds``: their counts per announced state.
    * ``expected_heralds``: the closed-form expectation for this slice's attempts.
    """

    emission_start_ps: int
    emission_end_ps: int
    horizon_ps: dict[str, int]
    attempts: int = 0
    emissions: dict[str, int] = field(default_factory=dict)
    photons_arrived: dict[str, int] = field(default_factory=dict)
    both_arrived: int = 0
    singles: dict[int, int] = field(default_factory=dict)
    dark_counts: dict[int, int] = field(default_factory=dict)
    heralds: np.ndarray = field(default_factory=lambda: np.zeros(0, HERALD_DTYPE))
    true_heralds: dict[str, int] = field(default_factory=_state_counts)
    false_heralds: dict[str, int] = field(default_factory=_state_counts)
    expected_heralds: float = 0.0


@dataclass
class HeraldRunTruth:
    """Totals since the start (counters of :class:`HeraldChunkTruth`) and the link's constants.

    ``fidelity_sum_true``: Σ of the true heralds' fidelities; ``state_is_announced``: true
    heralds whose drawn state is the announced one; ``expected``: the closed form;
    ``complete``: set after :meth:`HeraldingSimulator.flush`.
    """

    expected: HeraldExpectation
    duration_ps: int = 0
    complete: bool = False
    attempts: int = 0
    emissions: dict[str, int] = field(default_factory=dict)
    photons_arrived: dict[str, int] = field(default_factory=dict)
    both_arrived: int = 0
    singles: dict[int, int] = field(default_factory=dict)
    dark_counts: dict[int, int] = field(default_factory=dict)
    true_heralds: dict[str, int] = field(default_factory=_state_counts)
    false_heralds: dict[str, int] = field(default_factory=_state_counts)
    fidelity_sum_true: float = 0.0
    state_is_announced: int = 0

    @property
    def heralds(self) -> int:
        return sum(self.true_heralds.values()) + sum(self.false_heralds.values())

    @property
    def mean_fidelity_true(self) -> float:
        """Mean true fidelity of the true heralds (NaN before the first)."""
        n = sum(self.true_heralds.values())
        return self.fidelity_sum_true / n if n else float("nan")

    def add(self, chunk: HeraldChunkTruth) -> None:
        self.attempts += chunk.attempts
        self.both_arrived += chunk.both_arrived
        for total, part in ((self.emissions, chunk.emissions),
                            (self.photons_arrived, chunk.photons_arrived),
                            (self.singles, chunk.singles), (self.dark_counts, chunk.dark_counts),
                            (self.true_heralds, chunk.true_heralds),
                            (self.false_heralds, chunk.false_heralds)):
            for k, n in part.items():
                total[k] = total.get(k, 0) + n
        h = chunk.heralds[chunk.heralds["true"]]
        self.fidelity_sum_true += float(h["fidelity"].sum())
        self.state_is_announced += int(np.count_nonzero(h["state"] == h["announced"]))

    def as_dict(self) -> dict[str, object]:
        """JSON-ready totals (counts, mean fidelity, the closed form)."""
        return {"duration_ps": self.duration_ps, "complete": self.complete,
                "attempts": self.attempts, "emissions": dict(self.emissions),
                "photons_arrived": dict(self.photons_arrived), "both_arrived": self.both_arrived,
                "singles": {str(c): n for c, n in self.singles.items()},
                "dark_counts": {str(c): n for c, n in self.dark_counts.items()},
                "heralds": self.heralds, "true_heralds": dict(self.true_heralds),
                "false_heralds": dict(self.false_heralds),
                "mean_fidelity_true": (None if math.isnan(self.mean_fidelity_true)
                                       else self.mean_fidelity_true),
                "state_is_announced": self.state_is_announced,
                "expected": self.expected.as_dict()}


@dataclass
class HeraldChunk:
    """One step: ``blocks[station]`` (time-ordered TagBlock, station time, ps) and its truth."""

    blocks: dict[str, TagBlock]
    truth: HeraldChunkTruth


# ------------------------------------------------------------------------------ the simulator

class HeraldingSimulator:
    """Streams a K-type link's station as TagBlock chunks, with exact ground truth.

    Same stepping interface as :class:`~qnode.hal_sim.PhotonStreamSimulator`: :attr:`nodes`
    (the streaming nodes: only the station), :attr:`time_ps`, :meth:`step`, :meth:`flush`,
    :meth:`stream`. ``seed``: everything is deterministic from it. ``slice_ps``: attempt time
    per step (rounded down to whole periods, at least one).
    """

    def __init__(self, link: HeraldingLink, seed: int | np.random.SeedSequence = 0, *,
                 slice_ps: int = 10_000_000_000):
        if not isinstance(link, HeraldingLink):
            raise ValueError(
                f"HeraldingSimulator.link must be a HeraldingLink, got {type(link).__name__}")
        v.integer("HeraldingSimulator", "slice_ps", slice_ps, 1)
        self.link = link
        self.period_ps = link.period_ps
        self.attempts_per_slice = max(1, slice_ps // self.period_ps)
        self.slice_ps = self.attempts_per_slice * self.period_ps
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        seeds = iter(ss.spawn(2 + 2 * 4))
        self._rng = np.random.default_rng(next(seeds))        # attempts, routing, states
        self._state_rng = np.random.default_rng(next(seeds))  # Bell-state draws of heralds
        self._channels = [DetectorChannel(link.station, d, 0, SimRandom(next(seeds)),
                                   np.random.default_rng(next(seeds))) for d in link.detectors]
        self._eta = np.array([d.efficiency for d in link.detectors])
        self._delays = np.array([d.delay_ps for d in link.detectors], np.int64)
        self._interference(link.indistinguishability)
        self._k = 0                 # next attempt index
        self._horizon = 0
        self._flushed = False
        # per detector: in-gate tags (gate k, time, id) of gates not yet complete
        self._pending = [(_EMPTY_T, _EMPTY_T, _EMPTY_T) for _ in range(4)]
        self.expected = herald_expectation(link)
        self.truth = HeraldRunTruth(self.expected, emissions={e: 0 for e in link.ends},
                                    photons_arrived={e: 0 for e in link.ends},
                                    singles={c: 0 for c in link.channels},
                                    dark_counts={c: 0 for c in link.channels})

    def _interference(self, vis: float) -> None:
        # Two-photon configurations: (first detector, second detector or -1 when bunched), weight
        configs = [((0, 3), 1 / 8), ((1, 2), 1 / 8), ((0, 1), 1 / 8), ((2, 3), 1 / 8),
                   ((0, 2), (1 - vis) / 8), ((1, 3), (1 - vis) / 8)]
        configs += [((i, -1), (1 + vis) / 16) for i in range(4)]
        self._pair_det = np.array([c for c, _ in configs], np.int64)
        self._pair_cdf = np.cumsum([w for _, w in configs])
        self._pair_cdf /= self._pair_cdf[-1]

    def set_indistinguishability(self, vis: float) -> None:
        """The photons' HOM visibility V (0..1) from the next attempt drawn on: a degraded (or
        repaired) interference, e.g. a source's spectrum drifting. True heralds from then on
        have F = (1+V)/2, recorded per herald; :attr:`expected` and the run truth's become the
        new link's."""
        link = replace(self.link, indistinguishability=vis)   # validates V
        self._interference(vis)
        self.link, self.expected = link, herald_expectation(link)
        self.truth.expected = self.expected

    # ------------------------------------------------------------------ configuration

    @property
    def nodes(self) -> tuple[str]:
        """The nodes that stream tags: the station only."""
        return (self.link.station,)

    @property
    def memory_nodes(self) -> tuple[str, str]:
        return self.link.ends

    def node_channels(self, node: str) -> tuple[int, ...]:
        """The tagger channels of ``node`` (the station's four detectors)."""
        if node != self.link.station:
            raise ValueError(f"no streaming node {node!r}; the station is {self.link.station!r}")
        return self.link.channels

    @property
    def time_ps(self) -> int:
        """Attempt time simulated so far (ps, station time)."""
        return self._k * self.period_ps

    # ------------------------------------------------------------------ streaming

    def step(self) -> HeraldChunk:
        """Run one slice of attempts and return the tags (and heralds) it made final."""
        if self._flushed:
            raise RuntimeError("HeraldingSimulator: the run was flushed; make a new simulator")
        k0, n = self._k, self.attempts_per_slice
        truth = self._attempts(k0, n)
        self._k = k0 + n
        h = self.time_ps + min(c.delay_ps - c.clip_ps for c in self._channels)
        return self._finalize(truth, max(h, self._horizon), final=False)

    def flush(self) -> HeraldChunk:
        """End the run: finalise every pending tag and gate; :attr:`truth` is then complete."""
        if self._flushed:
            raise RuntimeError("HeraldingSimulator: already flushed")
        truth = HeraldChunkTruth(self.time_ps, self.time_ps, {})
        gate_end = self.time_ps + int(self._delays.max()) - self.link.gate_ps // 2 \
            + self.link.gate_ps
        h = max(self.time_ps + max(c.delay_ps + c.clip_ps for c in self._channels) + 1, gate_end,
                self._horizon)
        chunk = self._finalize(truth, h, final=True)
        self._flushed = True
        self.truth.complete = True
        return chunk

    def stream(self, duration_ps: int) -> Iterator[HeraldChunk]:
        """Steps until ``duration_ps`` of attempt time (whole slices), then the flush chunk."""
        v.integer("HeraldingSimulator.stream", "duration_ps", duration_ps, 0)
        while self.time_ps < duration_ps:
            yield self.step()
        yield self.flush()

    # ------------------------------------------------------------------ internals

    #: above this arrival probability attempts are drawn as flags (cost ∝ attempts), below it
    #: as geometric gaps (cost ∝ photons)
    DENSE_ALPHA = 0.1

    def _attempts(self, k0: int, n: int) -> HeraldChunkTruth:
        """Draw n attempts from k0: which photons arrive, where they go, which click; queue the
        clicks on their detectors. Cost is proportional to the photons arriving (or, when most
        attempts send one, to the attempts)."""
        rng, link = self._rng, self.link
        truth = HeraldChunkTruth(k0 * self.period_ps, (k0 + n) * self.period_ps, {}, attempts=n,
                                 expected_heralds=n * self.expected.p_herald)
        alphas = [link.arrival_probability(end) for end in (0, 1)]
        if max(alphas) > self.DENSE_ALPHA:
            fa, fb = (rng.random(n) < a for a in alphas)
            arrived = [int(np.count_nonzero(fa)), int(np.count_nonzero(fb))]
            both, single = np.flatnonzero(fa & fb), np.flatnonzero(fa ^ fb)
        else:
            pos = [bernoulli_positions(rng, n, a) for a in alphas]
            arrived = [p.size for p in pos]
            both_a = np.isin(pos[0], pos[1], assume_unique=True)
            both = pos[0][both_a]
            single = np.sort(np.concatenate(
                [pos[0][~both_a], pos[1][~np.isin(pos[1], pos[0], assume_unique=True)]]))
        for end, name in enumerate(link.ends):
            # emitted = arrived + emitted-but-lost among the other attempts
            alpha, lost = alphas[end], link.emission_probability - alphas[end]
            extra = (int(rng.binomial(n - arrived[end], lost / (1.0 - alpha)))
                     if alpha < 1.0 and lost > 0 else 0)
            truth.emissions[name] = arrived[end] + extra
            truth.photons_arrived[name] = arrived[end]
        truth.both_arrived = int(both.size)
        # one photon: a detector at random, clicks with its efficiency
        det1 = rng.integers(0, 4, single.size)
        hit1 = rng.random(single.size) < self._eta[det1]
        # two photons: a configuration of the table, each photon clicks with its efficiency
        conf = self._pair_det[np.searchsorted(self._pair_cdf, rng.random(both.size),
                                              side="right").clip(max=self._pair_det.shape[0] - 1)]
        first, second = conf[:, 0], conf[:, 1]
        bunched = second < 0
        eta_first = np.where(bunched, 1 - (1 - self._eta[first]) ** 2, self._eta[first])
        hit_first = rng.random(both.size) < eta_first
        hit_second = (~bunched) & (rng.random(both.size) < self._eta[np.maximum(second, 0)])
        # per detector, its clicks' attempts in order: from the three sorted sources
        sources = ((single[hit1], det1[hit1]), (both[hit_first], first[hit_first]),
                   (both[hit_second], second[hit_second]))
        for i, ch in enumerate(self._channels):
            parts = [a[d == i] for a, d in sources]
            ki = np.sort(np.concatenate(parts)) + k0
            ch.add_photons(ki * self.period_ps, ki)
        return truth

    def _finalize(self, truth: HeraldChunkTruth, h: int, final: bool) -> HeraldChunk:
        """Registered tags up to station time h, merged into the station's block; gates that
        are now complete are classified into heralds."""
        h_prev = self._horizon
        by_channel: dict[int, np.ndarray] = {}
        gate, period = self.link.gate_ps, self.period_ps
        k_done = (2**62 if final else
                  (h - int(self._delays.max()) + gate // 2 - gate) // period)
        ready: list[tuple[np.ndarray, ...]] = []
        for i, ch in enumerate(self._channels):
            t, tid = ch.finalize(h_prev, h)
            by_channel[ch.channel] = t
            truth.singles[ch.channel] = int(t.size)
            truth.dark_counts[ch.channel] = int(np.count_nonzero(tid == DARK_ID))
            u = t - self._delays[i] + gate // 2
            kg = u // period
            inside = (u - kg * period) < gate
            if not inside.all():            # only dark counts fall between gates
                kg, t, tid = kg[inside], t[inside], tid[inside]
            pk, pt, pid = self._pending[i]
            if pk.size:                     # older tags of gates not complete before
                kg, t, tid = (np.concatenate(x) for x in ((pk, kg), (pt, t), (pid, tid)))
            cut = int(np.searchsorted(kg, k_done, side="right"))   # each detector's k is sorted
            ready.append((kg[:cut], np.full(cut, i, np.int8), t[:cut], tid[:cut]))
            self._pending[i] = (kg[cut:], t[cut:], tid[cut:])
        self._horizon = h
        truth.horizon_ps[self.link.station] = h
        k, det, t, tid = (np.concatenate(x) for x in zip(*ready, strict=True))
        truth.heralds = self._classify(k, det, t, tid)
        for h_row in truth.heralds:
            name = BELL_STATES[h_row["announced"]]
            (truth.true_heralds if h_row["true"] else truth.false_heralds)[name] += 1
        self.truth.add(truth)
        self.truth.duration_ps = self.time_ps
        return HeraldChunk({self.link.station: merge_channels(by_channel)}, truth)

    def _classify(self, k: np.ndarray, det: np.ndarray, t: np.ndarray,
                  tid: np.ndarray) -> np.ndarray:
        """Heralds among complete gates' tags (module docstring: the herald rule)."""
        if k.size == 0:
            return np.zeros(0, HERALD_DTYPE)
        # (gate, detector) order; stable, so each detector's tags stay in time order
        key = k * 4 + det
        order = np.argsort(key, kind="stable")
        key, k = key[order], k[order]
        # most gates hold a single tag: keep only gates with two or more
        same = k[1:] == k[:-1]
        multi = np.zeros(k.size, bool)
        multi[1:] |= same
        multi[:-1] |= same
        order, key, k = order[multi], key[multi], k[multi]
        if k.size == 0:
            return np.zeros(0, HERALD_DTYPE)
        det, t, photon = det[order], t[order], (tid[order] >= 0).astype(np.int8)
        start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])   # first tag per (gate, det)
        any_photon = np.maximum.reduceat(photon, start)
        kf, df, tf = k[start], det[start].astype(np.int64), t[start]
        gstart = np.flatnonzero(np.r_[True, kf[1:] != kf[:-1]])
        n_det = np.diff(np.r_[gstart, kf.size])
        mask = np.add.reduceat(1 << df, gstart)
        code = _MASK_STATE[mask & 0xF]
        ok = (n_det == 2) & (code != 255)
        out = np.zeros(int(ok.sum()), HERALD_DTYPE)
        out["time"] = np.maximum.reduceat(tf, gstart)[ok]
        out["attempt"] = kf[gstart][ok]
        out["announced"] = code[ok]
        true = np.minimum.reduceat(any_photon, gstart)[ok].astype(bool)
        out["true"] = true
        f_true = self.expected.fidelity_true
        out["fidelity"] = np.where(true, f_true, 0.25)
        # a draw from the true mixture: announced w.p. F, else the other Ψ; false: uniform
        u = self._state_rng.random(out.size)
        other = np.where(out["announced"] == PSI_PLUS, PSI_MINUS, PSI_PLUS).astype(np.uint8)
        uniform = self._state_rng.integers(0, 4, out.size).astype(np.uint8)
        out["state"] = np.where(true, np.where(u < f_true, out["announced"], other), uniform)
        return out
