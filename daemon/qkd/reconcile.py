"""Error correction (information reconciliation) of a sifted key block with LDPC syndromes.

Alice (the leader) holds ``x_A``, Bob (the follower) ``x_B``; they differ in a fraction Q of
positions (the QBER). Alice discloses the syndrome ``s_A = H·x_A mod 2`` of a parity-check
matrix H both build from a :class:`Plan`; Bob decodes the error pattern e with
``H·e = s_A ⊕ H·x_B`` by belief propagation and returns ``x_B ⊕ e``. The decoder is
:class:`qnode.native.LdpcDecoder` (C core): sum-product in the log domain with the layered
(row-serial) schedule of Hocevar (IEEE SiPS 2004), early stop at the first iteration whose hard
decision has the right syndrome, at most :data:`MAX_ITER` iterations; about 30 times faster per
frame than the ``ldpc`` package's flooding product-sum ``BpDecoder`` (Roffe et al.), which is
the independent reference of the tests (tests/native/test_ldpc_decoder.py). BP can
converge to a wrong word with the right syndrome; the later verification hash catches that.

Rate adaptation (Elkouss, Martinez-Mateo, Martin 2010/2011): a block of n key bits is carried in
a frame of N ≥ n code bits of a mother code (:mod:`.ldpc_codes`); of the d = N − n extra
positions, ``punctured`` hold secret random bits Bob does not know (channel LLR 0) and the rest
are shortened (value 0, known to both). The leak is the syndrome length minus the punctured
bits, m − p per frame: the syndrome is a function of key and padding, and ``p`` syndrome bits
are spent on the padding (H restricted to the punctured columns has full column rank when they
are untainted). Optionally (``step`` > 0) the plan allows extra rounds of blind reconciliation
(Martinez-Mateo, Elkouss, Martin 2012): after a failure Alice reveals ``step`` punctured bits
per frame (they become shortened), each revealed bit counted as leaked, and Bob decodes again.

Efficiency: f_EC = leak / (n · h(Q)), h the binary entropy, Q the block's true error fraction.

Needs numpy, scipy and the C core (``qnode.native``).
"""
from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from qnode.daemon.qkd.ldpc_codes import FAMILY, Code, parity_check
from qnode.native.ldpc import LdpcDecoder

#: 2: the density-evolution code family and its construction; a peer on another version builds
#: other matrices, so its plans are refused instead of failing to decode
PLAN_VERSION = 2
#: Frame lengths (bits) a plan may use; both ends must accept the leader's choice.
FRAMES = (1 << 12, 1 << 13, 1 << 14, 1 << 15, 1 << 16, 1 << 17)
#: Default frame for long blocks: efficiency grows with the frame (the codes' finite-length
#: loss shrinks), decoder memory grows with it.
DEFAULT_FRAME = 1 << 17
#: At most this fraction of a frame carries key bits (the rest is punctured or shortened).
FILL = 0.92
#: Decoder settings: sum-product (layered, qnode.native.LdpcDecoder). Normalised min-sum lost
#: ~0.5 % of QBER threshold with these check degrees (20–60) at any single scaling factor.
#: 50: converged frames take 16–21 iterations on average (benchmarks/ldpc_decoder.py), and a
#: frame that fails, common in blind rounds, costs all of them; at 3 % on 2²⁰-bit blocks 50
#: instead of 100 kept f_EC (1.145) and raised throughput by 40 %.
MAX_ITER = 50
#: give a frame up once its count of unsatisfied checks has not reached a new low for this many
#: iterations (qnode.native.LdpcDecoder ``patience``): a frame that fails, common in blind
#: rounds, then costs about this many iterations instead of MAX_ITER
PATIENCE = 10
QBER_MIN, QBER_MAX = 1e-3, 0.15
#: blind rounds a plan leaves room for in its punctured bits (when blind rounds are asked for),
#: at least; and how far above the start efficiency its padding should reach, at most
BLIND_ROOM_STEPS = 2
BLIND_REACH = 0.10
_SURE = 1e-12  # channel error probability of a shortened (known) bit
_UNKNOWN = 0.5  # ... of a punctured bit


def _h(q: float) -> float:
    """Binary entropy h(q) in bits."""
    if q <= 0.0 or q >= 1.0:
        return 0.0
    return -q * math.log2(q) - (1.0 - q) * math.log2(1.0 - q)


def target_efficiency(qber: float, frame: int) -> float:
    """The f_EC a one-way plan aims at for an estimated ``qber`` in a ``frame``-bit frame: the
    smallest f at which the codes decoded with a frame error rate of about 5 % (measured with
    ``benchmarks/ldpc_decoder.py``-style runs of 16–24 frames; larger at low QBER and in short
    frames)."""
    q = min(max(qber, 0.005), 0.11)
    # measured (qber, f) for a 2^17 frame: docs/physicists/error-correction.md
    qs, fs = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.11), (1.30, 1.24, 1.14, 1.12, 1.09, 1.08, 1.12)
    f = float(np.interp(q, qs, fs))
    # shorter frames: a larger margin (finite-length loss grows roughly as N^-1/2; 0.42 fits
    # the 5 % points measured at 3 % in frames of 2^15 (1.17) and 2^14 (1.22))
    return f + 0.42 * (f - 1.0) * (math.sqrt((1 << 17) / frame) - 1.0)


@dataclass(frozen=True)
class Plan:
    """What both ends agree on for one block (JSON-able via :meth:`to_dict`).

    ``n`` key bits are cut into ``frames`` frames of ``frame`` code bits each (the first
    ``n % frames`` frames carry one key bit more); code ``family`` of :data:`ldpc_codes.FAMILY`,
    drawn with ``seed``; ``punctured`` bits per frame (secret random padding), the rest of each
    frame's free positions shortened; ``step`` punctured bits per frame revealed per extra
    round (0: one-way)."""

    n: int
    family: int
    frame: int
    seed: int
    frames: int
    punctured: int
    step: int = 0

    def __post_init__(self) -> None:
        if self.frame not in FRAMES:
            raise ValueError(f"plan frame must be one of {FRAMES}, got {self.frame}")
        if not 0 <= self.family < len(FAMILY):
            raise ValueError(f"plan family must lie in 0..{len(FAMILY) - 1}, got {self.family}")
        if self.frames < 1 or self.n < self.frames:
            raise ValueError(f"plan needs 1 <= frames <= n, got frames={self.frames} n={self.n}")
        if self.n > self.frames * self.frame:
            raise ValueError(f"plan: {self.n} key bits do not fit {self.frames} frames of "
                             f"{self.frame}")
        if not 0 <= self.seed < 1 << 32:
            raise ValueError(f"plan seed must lie in [0, 2^32), got {self.seed}")
        if not 0 <= self.step <= self.punctured or self.punctured < 0:
            raise ValueError(f"plan needs 0 <= step <= punctured, got step={self.step} "
                             f"punctured={self.punctured}")
        if self.frame - self.key_lengths()[0] - self.punctured < 0:
            raise ValueError("plan: key bits plus punctured bits exceed the frame")

    def to_dict(self) -> dict[str, int]:
        """A small JSON-able dict (``v`` the plan version)."""
        return {"v": PLAN_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Parse :meth:`to_dict`'s output; ValueError on anything else."""
        if data.get("v") != PLAN_VERSION:
            raise ValueError(f"plan version must be {PLAN_VERSION}, got {data.get('v')!r}")
        fields = ("n", "family", "frame", "seed", "frames", "punctured", "step")
        extra = set(data) - set(fields) - {"v"}
        if extra:
            raise ValueError(f"plan: unknown fields {sorted(extra)}")
        values = {}
        for name in fields:
            value = data.get(name, 0 if name == "step" else None)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"plan field {name!r} must be an integer, got {value!r}")
            values[name] = value
        return cls(**values)

    def code(self) -> Code:
        """The mother code (cached; both ends build the identical matrix)."""
        return parity_check(self.family, self.frame, self.seed)

    def key_lengths(self) -> list[int]:
        """Key bits in each frame."""
        base, extra = divmod(self.n, self.frames)
        return [base + (1 if i < extra else 0) for i in range(self.frames)]

    def max_rounds(self) -> int:
        """Extra (blind) rounds the plan allows after the first decoding."""
        return self.punctured // self.step if self.step else 0

    def syndrome_bits(self) -> int:
        """Length of the syndrome Alice sends (bits)."""
        return self.frames * self.code().m

    def leak_bits(self, rounds: int = 0) -> int:
        """Bits disclosed about the key after ``rounds`` extra rounds: per frame the syndrome
        length minus the punctured bits still unrevealed (m − p + rounds·step)."""
        if not 0 <= rounds <= self.max_rounds():
            raise ValueError(f"rounds must lie in 0..{self.max_rounds()}, got {rounds}")
        return self.frames * (self.code().m - self.punctured + rounds * self.step)


def choose_plan(qber_estimate: float, n: int, *, frame: int | None = None,
                efficiency: float | None = None, step_efficiency: float = 0.0,
                seed: int = 1) -> Plan:
    """The plan for ``n`` key bits at an estimated QBER (deterministic in its arguments).

    ``frame``: code length in bits (default: :data:`DEFAULT_FRAME`, or the smallest frame that
    holds a short block). ``efficiency``: the f_EC aimed at (default
    :func:`target_efficiency`). ``step_efficiency`` > 0 allows blind rounds, each revealing
    about ``step_efficiency · n_frame · h(Q)`` punctured bits per frame. ``seed`` names the code
    drawn (any fixed number both ends use)."""
    if not isinstance(n, int | np.integer) or n < 64:
        raise ValueError(f"n must be an integer >= 64, got {n!r}")
    if not (math.isfinite(qber_estimate) and 0.0 <= qber_estimate < 0.5):
        raise ValueError(f"qber_estimate must lie in [0, 0.5), got {qber_estimate}")
    q = min(max(qber_estimate, QBER_MIN), QBER_MAX)
    if frame is None:
        frame = next((f for f in FRAMES if n <= FILL * f and f >= 1 << 13), DEFAULT_FRAME)
        frame = min(frame, DEFAULT_FRAME) if n > FILL * DEFAULT_FRAME else frame
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame}")
    n = int(n)
    frames = max(1, math.ceil(n / (FILL * frame)))
    n_frame = math.ceil(n / frames)
    f = target_efficiency(q, frame) if efficiency is None else efficiency
    want = f * n_frame * _h(q)  # syndrome bits minus punctured bits, per frame
    free = frame - n_frame
    # the least punctured code that fits, with room for BLIND_ROOM_STEPS blind rounds: a code
    # with (almost) nothing punctured has nothing to reveal, and a frame it fails is re-planned
    # one-way at a far higher leak. A code that would need more punctured bits than the frame
    # has free positions starts above the asked leak, with the frame's free bits punctured; it
    # is taken when no code leaves the room at the asked leak, the one closest to it.
    room = 0
    if step_efficiency > 0:
        # padding to reveal up to the one-way target of this frame length (short frames need
        # more), at least BLIND_ROOM_STEPS steps, at most BLIND_REACH above the start: more
        # would force a heavily punctured lower-rate code on the first round where the target
        # is far (at 1 %, f = 1.24)
        reach = min(target_efficiency(q, frame) - f, BLIND_REACH) * n_frame * _h(q)
        room = max(BLIND_ROOM_STEPS * round(step_efficiency * n_frame * _h(q)), round(reach))
    best: tuple[int, int] | None = None
    best_key: tuple[int, int] | None = None
    for least in (room, 0):
        for fam in range(len(FAMILY)):
            m = round(frame * (1.0 - FAMILY[fam].design_rate()))
            p = min(round(m - want), free)
            if p < least:
                continue
            key = (m - p, p)  # the leak first (never below the asked one), then puncturing
            if best_key is None or key < best_key:
                best, best_key = (fam, p), key
        if best is not None:
            break
    if best is None:
        # outside the family's range: the code closest to the wanted leak, clamped puncturing
        fam = min(range(len(FAMILY)), key=lambda i: abs(
            round(frame * (1.0 - FAMILY[i].design_rate())) - want))
        m = round(frame * (1.0 - FAMILY[fam].design_rate()))
        best = (fam, min(max(round(m - want), 0), free))
    fam, p = best
    code = parity_check(fam, frame, seed)
    p = min(p, code.untainted, code.m - 1)
    step = 0
    if step_efficiency > 0:  # nothing punctured (p = 0): nothing to reveal, one-way
        step = min(p, max(1, round(step_efficiency * n_frame * _h(q))))
    return Plan(n=n, family=fam, frame=frame, seed=seed, frames=frames, punctured=p, step=step)


def _as_bits(name: str, bits: np.ndarray, length: int) -> np.ndarray:
    arr = np.asarray(bits)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size != length:
        raise ValueError(f"{name} must hold {length} bits, got {arr.size}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer or bool array of 0/1, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ValueError(f"{name} must hold only 0 and 1")
    return arr.astype(np.uint8, copy=False)


@functools.lru_cache(maxsize=64)
def _positions(family: int, frame: int, seed: int, n_key: int,
               punctured: int) -> tuple[np.ndarray, np.ndarray]:
    """(punctured positions in revealing order, key positions ascending) of a frame layout,
    read-only: the first ``punctured`` of the code's untainted puncturing order, then the
    shortened ones drawn from the others in the code's random shortening order, and the rest
    carry key bits."""
    code = parity_check(family, frame, seed)
    punct = code.puncture[:punctured]
    rest = code.shorten[~np.isin(code.shorten, punct)]
    key = np.sort(rest[frame - n_key - punctured:])
    punct.setflags(write=False)
    key.setflags(write=False)
    return punct, key


def frame_layout(plan: Plan, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(punctured positions, key positions) of one frame of ``plan`` (read-only int64 arrays;
    the shortened positions are the rest): key bit i of the frame sits at position
    ``key[i]``, padding bit j at ``punctured[j]`` (the last ones are revealed first)."""
    return _positions(plan.family, plan.frame, plan.seed, plan.key_lengths()[frame_index],
                      plan.punctured)


def draw_padding(plan: Plan, rng: np.random.Generator | None = None) -> np.ndarray:
    """Alice's secret random values of the punctured bits, shape (frames, punctured), uint8.
    ``rng`` defaults to one seeded from the OS's entropy (:mod:`secrets`): the padding must be
    unknown to Eve. Keep it for :func:`reveal` when the plan allows extra rounds."""
    if rng is None:
        rng = np.random.default_rng(secrets.randbits(128))
    return rng.integers(0, 2, size=(plan.frames, plan.punctured), dtype=np.uint8)


def syndrome(plan: Plan, bits: np.ndarray, padding: np.ndarray | None = None) -> np.ndarray:
    """Alice's syndrome (uint8 0/1, ``plan.syndrome_bits()`` long): per frame H·x mod 2 of the
    frame (key bits, the punctured padding, zeros at shortened positions). ``padding`` from
    :func:`draw_padding` (a fresh secret one when None: one-way use)."""
    code = plan.code()
    x = _as_bits("bits", bits, plan.n)
    if padding is None:
        padding = draw_padding(plan)
    pad = np.asarray(padding)
    if pad.shape != (plan.frames, plan.punctured):
        raise ValueError(f"padding must have shape {(plan.frames, plan.punctured)}, got "
                         f"{pad.shape}")
    out = np.empty((plan.frames, code.m), dtype=np.uint8)
    start = 0
    for i, n_key in enumerate(plan.key_lengths()):
        punct, key = frame_layout(plan, i)
        word = np.zeros(plan.frame, dtype=np.uint8)
        word[key] = x[start:start + n_key]
        word[punct] = pad[i]
        out[i] = (code.h @ word) & 1  # row weights < 256: uint8 sums keep their parity
        start += n_key
    return out.reshape(-1)


def reveal(plan: Plan, padding: np.ndarray, rounds: int) -> np.ndarray:
    """What Alice discloses for ``rounds`` extra rounds in total: the values of the last
    ``rounds · step`` punctured bits of each frame, shape (frames, rounds·step), uint8. Each
    round's leak is :meth:`Plan.leak_bits` (rounds) − leak_bits(rounds − 1)."""
    if not 0 <= rounds <= plan.max_rounds():
        raise ValueError(f"rounds must lie in 0..{plan.max_rounds()}, got {rounds}")
    k = rounds * plan.step
    return np.ascontiguousarray(np.asarray(padding, dtype=np.uint8)[:, plan.punctured - k:])


#: the C decoder's kernel (qnode.native.ldpc.KERNELS): "auto" takes the widest the CPU runs;
#: benchmarks set another to compare kernels in one run
DECODER_KERNEL = "auto"


@functools.lru_cache(maxsize=16)
def _decoder(family: int, frame: int, seed: int, kernel: str) -> LdpcDecoder:
    """The C core's decoder of a code, built once per kernel."""
    return LdpcDecoder(parity_check(family, frame, seed).h, kernel=kernel)


@functools.lru_cache(maxsize=64)
def _channel_llr(family: int, frame: int, seed: int, q: float, n_key: int, punctured: int,
                 revealed: int) -> np.ndarray:
    """Channel LLRs ln((1 − p)/p) of one frame layout (read-only): key bits p = q, unrevealed
    punctured bits p = 0.5 (LLR 0), shortened and revealed ones p = 1e-12."""
    punct, key = _positions(family, frame, seed, n_key, punctured)
    channel = np.full(frame, _SURE)
    channel[key] = q
    channel[punct[:punctured - revealed]] = _UNKNOWN
    llr = np.log1p(-channel) - np.log(channel)
    llr.setflags(write=False)
    return llr


def correct(plan: Plan, bits: np.ndarray, syndrome: np.ndarray, qber_estimate: float,
            revealed: np.ndarray | None = None,
            states: list[np.ndarray | None] | None = None) -> np.ndarray | None:
    """Bob's bits corrected to Alice's (uint8, n), or None when belief propagation did not
    reach a word with Alice's syndrome in some frame.

    ``syndrome``: Alice's (:func:`syndrome`); ``qber_estimate``: the error probability the
    decoder assumes for key bits; ``revealed``: Alice's disclosures so far (:func:`reveal`),
    None in the first round. ``states``: one entry per frame, to carry the decoder's messages
    from round to round: None entries get a fresh workspace, and a frame whose entry is set
    from an earlier call with this plan and syndrome resumes from it (a revealed bit only
    changes its channel LLR, so the frame picks up where it stopped)."""
    code = plan.code()
    x = _as_bits("bits", bits, plan.n)
    s = _as_bits("syndrome", syndrome, plan.syndrome_bits()).reshape(plan.frames, code.m)
    if not (math.isfinite(qber_estimate) and 0.0 <= qber_estimate < 0.5):
        raise ValueError(f"qber_estimate must lie in [0, 0.5), got {qber_estimate}")
    if states is not None and len(states) != plan.frames:
        raise ValueError(f"states must have one entry per frame ({plan.frames})")
    q = min(max(qber_estimate, QBER_MIN), 0.49)
    k = 0
    if revealed is not None:
        rev = np.asarray(revealed)
        if rev.ndim != 2 or rev.shape[0] != plan.frames or plan.step == 0 \
                or rev.shape[1] % plan.step or rev.shape[1] > plan.punctured:
            raise ValueError(f"revealed must have shape ({plan.frames}, r·{plan.step}) with "
                             f"r <= {plan.max_rounds()}, got {rev.shape}")
        rev = _as_bits("revealed", rev.reshape(-1), rev.size).reshape(rev.shape)
        k = rev.size // plan.frames
    dec = _decoder(plan.family, plan.frame, plan.seed, DECODER_KERNEL)
    out = np.empty(plan.n, dtype=np.uint8)
    start = 0
    for i, n_key in enumerate(plan.key_lengths()):
        punct, key = frame_layout(plan, i)
        llr = _channel_llr(plan.family, plan.frame, plan.seed, q, n_key, plan.punctured, k)
        if k:
            # the word Bob decodes keeps 0 at every punctured position, so the syndrome
            # difference stays that of the first round; a revealed bit is then an error bit
            # known for sure: its LLR carries the revealed value
            llr = llr.copy()
            llr[punct[plan.punctured - k:]] *= 1.0 - 2.0 * rev[i]
        word = np.zeros(plan.frame, dtype=np.uint8)
        word[key] = x[start:start + n_key]
        diff = s[i] ^ ((code.h @ word) & 1)
        if states is None:
            err, converged, _ = dec.decode_llr(diff, llr, MAX_ITER, PATIENCE)
        else:
            resume = states[i] is not None
            if states[i] is None:
                states[i] = dec.workspace()
            err, converged, _ = dec.decode_llr(diff, llr, MAX_ITER, PATIENCE, work=states[i],
                                               resume=resume)
        if not converged:
            return None
        out[start:start + n_key] = x[start:start + n_key] ^ err[key]
        start += n_key
    return out


def efficiency(leak_bits: int, n: int, qber: float) -> float:
    """f_EC = leak / (n · h(Q)) (NaN when h(Q) = 0)."""
    hq = _h(qber)
    return leak_bits / (n * hq) if hq > 0 else math.nan


class LdpcReconciler:
    """One-way reconciliation with plans as JSON-able dicts (the interface ``block`` uses).

    ``frame``: code length (None: chosen per block by :func:`choose_plan`); ``seed``: the code
    draw both ends use."""

    def __init__(self, *, frame: int | None = None, seed: int = 1) -> None:
        self.frame, self.seed = frame, seed

    def plan(self, qber: float, n: int) -> dict[str, Any]:
        """A JSON-able plan for ``n`` bits at an estimated ``qber``."""
        return choose_plan(qber, n, frame=self.frame, seed=self.seed).to_dict()

    def syndrome(self, plan: Mapping[str, Any], bits: np.ndarray) -> np.ndarray:
        """The leader's syndrome (uint8 0/1), with fresh secret padding."""
        return syndrome(Plan.from_dict(plan), bits)

    def correct(self, plan: Mapping[str, Any], bits: np.ndarray, syndrome: np.ndarray,
                qber: float) -> np.ndarray | None:
        """The follower's bits corrected to the leader's, or None when decoding failed."""
        return correct(Plan.from_dict(plan), bits, syndrome, qber)

    def leak_bits(self, plan: Mapping[str, Any]) -> int:
        """Bits the (one-way) plan discloses: syndrome bits minus punctured bits."""
        return Plan.from_dict(plan).leak_bits()
