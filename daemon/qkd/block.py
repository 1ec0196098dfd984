"""One key block through post-processing, at both ends in lock step: the pure state machines.

Both ends of an M link hold the same block of sifted events: for each, the basis both measured
in (Z or X, equal after sifting) and their own outcome bit, already mapped so that the ideal
source gives equal bits (:class:`SiftedBlock`). The **leader** (the link's counter) and the
**follower** exchange these messages per block (JSON bodies on the link's signed ``key/<link>``
messages, after the sample of :mod:`.estimate`; :mod:`qnode.daemon.roles.key_link` carries
them):

1. ``KEY_OFFER`` (leader → follower): the block cut into chunks of one code frame each
   (:mod:`.reconcile`), the error-correction plan of each chunk chosen for the estimated QBER,
   the leader's syndromes, and a fresh public seed for the verification hash — or no offer, and
   an abort, when the estimate is above the QBER threshold (nothing is disclosed then);
2. ``KEY_REPLY`` (follower → leader): the follower decodes each chunk towards the leader's
   bits. If some chunks did not decode, it names them; the leader answers ``KEY_REVEAL`` with
   more of those chunks' punctured bits (blind reconciliation: Martinez-Mateo, Elkouss and
   Martin 2012), and the follower tries them again, up to each plan's rounds. Once every chunk
   decoded, the reply carries the errors corrected in each basis and the verification tag of
   the corrected block (:mod:`.hashing`);
3. ``KEY_FINISH`` (leader → follower): the leader compares the tag with its own, computes the
   finite-key length (:func:`block_secret_length`) from the measured error fractions and every
   disclosed bit, and either announces the length and a public seed for privacy amplification,
   or aborts with a reason. Both ends then hash their (now identical) block to that length.

The phase errors of the Z-basis key bits are bounded by the error fraction of the X-basis bits
of the block and vice versa (BBM92 with a passive basis choice: which basis an event was
measured in is random and independent of the source, so each basis is a random sample of the
other's phase errors); the error counts are exact because error correction found every error
(the verification makes that hold except with probability ε_cor). Outcomes never leave a node:
only syndromes, revealed padding bits, two error counts and a hash do, and each counts as
leaked.
"""
from __future__ import annotations

import base64
import binascii
import math
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qnode.daemon.qkd import reconcile
from qnode.daemon.qkd.finite_key import (
    EPS_COR,
    EPS_SEC,
    binary_entropy,
    statistical_deviation,
)
from qnode.daemon.qkd.hashing import SEED_BYTES, amplify, verification_bits, verification_tag

Z, X = 0, 1

#: Reveal rounds at the end of a block's budget that replan every chunk still failing (one-way,
#: each a quarter higher QBER than the last) instead of revealing more of an optimistic plan.
REPLAN_RESERVE = 4

#: Why a block gave no key (the ``reason`` of an abort; stable strings for logs and metrics).
ABORT_REASONS = ("qber_above_threshold", "too_few_bits", "decoding_failed",
                 "verification_failed", "finite_size", "protocol_error")


@dataclass(frozen=True)
class KeyParams:
    """A link's post-processing settings: ``qber_threshold`` (abort above it, before or after
    error correction), ``eps_sec``/``eps_cor`` (per block), ``min_bits`` (a block smaller than
    this is not processed) and the error correction's (below)."""

    qber_threshold: float = 0.11
    eps_sec: float = EPS_SEC
    eps_cor: float = EPS_COR
    min_bits: int = 10_000
    #: the f_EC the first decoding of a chunk aims at, and the share of n·h(Q) each further
    #: round reveals (blind reconciliation; docs/physicists/error-correction.md)
    ec_start_efficiency: float = 1.08
    ec_step_efficiency: float = 0.015
    #: reveal rounds per block at most (a channel far worse than estimated ends sooner)
    ec_max_rounds: int = 24
    #: the code draw both ends use
    code_seed: int = 1
    #: bits of each block disclosed to estimate its QBER first (:mod:`.estimate`; at most an
    #: eighth of the block)
    sample_bits: int = 8192

    def __post_init__(self) -> None:
        if not 0.0 < self.qber_threshold < 0.5:
            raise ValueError(f"qber_threshold must lie in (0, 0.5), got {self.qber_threshold}")
        for name in ("eps_sec", "eps_cor"):
            value = getattr(self, name)
            if not 0.0 < value < 1e-3:
                raise ValueError(f"{name} must lie in (0, 1e-3), got {value}")
        if self.min_bits < 2:
            raise ValueError(f"min_bits must be >= 2, got {self.min_bits}")
        if not 1.0 <= self.ec_start_efficiency <= 2.0:
            raise ValueError(f"ec_start_efficiency must lie in [1, 2], got "
                             f"{self.ec_start_efficiency}")
        if not 0.0 < self.ec_step_efficiency <= 0.5:
            raise ValueError(f"ec_step_efficiency must lie in (0, 0.5], got "
                             f"{self.ec_step_efficiency}")
        if not 0 <= self.sample_bits <= 1 << 20:
            raise ValueError(f"sample_bits must lie in [0, 2**20], got {self.sample_bits}")
        if not 0 <= self.ec_max_rounds <= 1000:
            raise ValueError(f"ec_max_rounds must lie in [0, 1000], got {self.ec_max_rounds}")


@dataclass(frozen=True)
class SiftedBlock:
    """One end's block: ``bases`` (uint8, :data:`Z` or :data:`X`, the same at both ends) and
    ``bits`` (uint8 0/1, this end's outcomes). Never printed (``repr`` hides the bits)."""

    block_id: uuid.UUID
    bases: np.ndarray = field(repr=False)
    bits: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if self.bases.shape != self.bits.shape or self.bits.ndim != 1:
            raise ValueError("a block's bases and bits must be 1-D arrays of one length")
        if self.bits.size and (self.bits.max() > 1 or self.bases.max() > 1):
            raise ValueError("a block's bases and bits must hold only 0 and 1")

    @property
    def n(self) -> int:
        return int(self.bits.size)

    def counts(self) -> tuple[int, int]:
        """(Z bits, X bits)."""
        n_x = int(self.bases.sum())
        return self.n - n_x, n_x


@dataclass(frozen=True)
class BlockResult:
    """What a block gave at one end: ``key`` (uint8 0/1, ``length`` bits; empty on abort, never
    printed) or the abort ``reason``; the measured error fractions, the leak and f_EC =
    leak_EC / (n·h(Q)) (Q the block's measured error fraction; NaN without errors or key)."""

    block_id: uuid.UUID
    reason: str | None
    n: int
    n_z: int
    n_x: int
    qber_z: float
    qber_x: float
    leak_ec_bits: int
    leak_bits: int
    length: int
    key: np.ndarray = field(repr=False)

    @property
    def f_ec(self) -> float:
        q = (self.qber_z * self.n_z + self.qber_x * self.n_x) / self.n if self.n else 0.0
        h = binary_entropy(min(max(q, 0.0), 1.0)) if not math.isnan(q) else 0.0
        return self.leak_ec_bits / (self.n * h) if h > 0 else math.nan

    def key_units(self, size_bits: int) -> list[tuple[uuid.UUID, bytes]]:
        """The key cut into ``size_bits`` units (the rest, < one unit, is dropped), each named
        by a UUID both ends derive alike: uuid5(block id, index)."""
        units = self.length // size_bits
        packed = np.packbits(self.key[:units * size_bits]).tobytes()
        step = size_bits // 8
        return [(uuid.uuid5(self.block_id, str(i)), packed[i * step:(i + 1) * step])
                for i in range(units)]


def block_secret_length(n_z: int, n_x: int, errors_z: int, errors_x: int, leak_bits: int, *,
                        eps_sec: float = EPS_SEC, eps_cor: float = EPS_COR) -> int:
    """Secret bits of a block whose key bits are both bases' (module docstring): the finite-key
    bound of :mod:`.finite_key` with each basis' phase errors bounded by the other basis'
    measured error fraction plus μ(n_b, n_other) at ε_sec/2 each (a union bound over the two
    estimates), minus ``leak_bits`` and log₂(2/(ε_sec²·ε_cor)). 0 when either basis is empty."""
    if n_z <= 0 or n_x <= 0:
        return 0
    entropy = 0.0
    for n_b, n_other, errors_other in ((n_z, n_x, errors_x), (n_x, n_z, errors_z)):
        bound = errors_other / n_other + statistical_deviation(n_b, n_other, eps_sec / 2)
        entropy += n_b * (1.0 - binary_entropy(bound)) if bound < 0.5 else 0.0
    length = math.floor(entropy - leak_bits - math.log2(2.0 / (eps_sec ** 2 * eps_cor)))
    return max(0, length)


# ------------------------------------------------------------------------ messages
class BlockMessageError(ValueError):
    """A block message that is malformed or does not fit the block (the daemon counts it by
    ``reason`` and aborts the block; never shows key material)."""


class StaleMessage(BlockMessageError):
    """A message of a session or block that is over here (e.g. an answer that crossed a
    restart): refused and counted, nothing else changes."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(body: Mapping[str, Any], name: str, max_bytes: int) -> bytes:
    value = body.get(name)
    if not isinstance(value, str) or len(value) > 4 * (max_bytes // 3 + 1):
        raise BlockMessageError(f"{name}: expected base64 of at most {max_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BlockMessageError(f"{name}: not base64") from exc


def body_int(body: Mapping[str, Any], name: str, lo: int, hi: int) -> int:
    """Field ``name`` of a message body: an integer (not a bool) in [lo, hi], else
    :class:`BlockMessageError`."""
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BlockMessageError(f"{name}: expected an integer in [{lo}, {hi}]")
    return value


def _block_id(body: Mapping[str, Any], expected: uuid.UUID) -> None:
    if body.get("block") != str(expected):
        raise BlockMessageError(f"block: expected {expected}, got {body.get('block')!r}")


# ------------------------------------------------------------------------ the two ends
def _abort(block: SiftedBlock, reason: str, *, errors: tuple[int, int] = (0, 0),
           leak_ec: int = 0, leak: int = 0) -> BlockResult:
    n_z, n_x = block.counts()
    return BlockResult(block.block_id, reason, block.n, n_z, n_x,
                       errors[0] / n_z if n_z else math.nan, errors[1] / n_x if n_x else math.nan,
                       leak_ec, leak, 0, np.zeros(0, np.uint8))


def _count_bits(n: int) -> int:
    """Bits of one disclosed error count of a block of ``n`` bits."""
    return max(1, math.ceil(math.log2(n + 1)))


def _disclosed(n: int, leak_ec: int, eps_cor: float) -> int:
    """Every bit a block discloses: error correction's, the verification tag, two counts."""
    return leak_ec + verification_bits(eps_cor) + 2 * _count_bits(n)


#: a chunk should fill at least this share of its frame with key bits: the syndrome of a frame
#: has the same length however few key bits it carries, so a sparsely filled frame reaches a
#: given leak per key bit only with a higher-rate code or more punctured bits
MIN_FRAME_FILL = 0.75


def chunk_sizes(n: int) -> list[int]:
    """A block of ``n`` bits cut into chunks of one code frame each (as equal as possible): in
    the longest frame up to :data:`reconcile.DEFAULT_FRAME` that the chunks fill to at least
    :data:`MIN_FRAME_FILL` (longer frames decode closer to the Shannon limit), else in the
    frame they fill best."""
    frames = [f for f in reconcile.FRAMES if 1 << 13 <= f <= reconcile.DEFAULT_FRAME]

    def count(frame: int) -> int:
        return max(1, math.ceil(n / (reconcile.FILL * frame)))

    def fill(frame: int) -> float:
        return n / count(frame) / frame

    good = [f for f in frames if fill(f) >= MIN_FRAME_FILL]
    k = count(max(good) if good else max(frames, key=lambda f: (fill(f), f)))
    base, extra = divmod(n, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def _bounds(sizes: list[int]) -> list[tuple[int, int]]:
    ends = np.cumsum([0, *sizes])
    return [(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:], strict=True)]


def _syndromes(plans: list[reconcile.Plan], syndrome: np.ndarray) -> list[np.ndarray]:
    """The concatenated syndrome of ``plans`` cut into one per plan."""
    return [syndrome[a:z] for a, z in _bounds([p.syndrome_bits() for p in plans])]


def pack_bits(bits: np.ndarray) -> str:
    """0/1 bits (uint8) as base64 of their packed bytes."""
    return _b64(np.packbits(bits).tobytes())


def unpack_bits(body: Mapping[str, Any], name: str, n: int) -> np.ndarray:
    """``n`` bits from field ``name`` (:func:`pack_bits`); :class:`BlockMessageError` if it
    does not hold exactly that many."""
    packed = _unb64(body, name, (n + 7) // 8)
    if len(packed) != (n + 7) // 8:
        raise BlockMessageError(f"{name}: expected {n} bits")
    return np.unpackbits(np.frombuffer(packed, np.uint8), count=n)


def _closing(params: KeyParams, reveals: int) -> bool:
    """Whether the reveal round after ``reveals`` is one of the block's last
    :data:`REPLAN_RESERVE`, where every chunk still failing is replanned."""
    return params.ec_max_rounds - reveals <= REPLAN_RESERVE


def _chunk_list(body: Mapping[str, Any], name: str, allowed: set[int]) -> list[int]:
    value = body.get(name)
    if (not isinstance(value, list) or not value or len(value) > len(allowed)
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in value)
            or value != sorted(set(value)) or not set(value) <= allowed):
        raise BlockMessageError(f"{name}: expected increasing chunk numbers of this block")
    return value


class BlockLeader:
    """The leader's side of one block (module docstring): :meth:`offer`, then :meth:`on_reply`
    until it returns the finish."""

    def __init__(self, block: SiftedBlock, params: KeyParams, qber_estimate: float):
        self.block, self.params, self.qber_estimate = block, params, qber_estimate
        self.plans: list[reconcile.Plan] = []
        self._padding: list[np.ndarray] = []
        self.rounds: list[int] = []
        self._spent: list[int] = []
        self._verify_seed = b""
        self.reveals = 0
        self.qber_plan = 0.0
        self._chunk_qber: list[float] = []   # the QBER each chunk's plan is for

    def leak_ec(self) -> int:
        """Bits error correction disclosed so far (syndromes and revealed padding, of the plans
        in use and of those a chunk gave up)."""
        return sum(self._spent) + sum(p.leak_bits(r) for p, r in zip(self.plans, self.rounds,
                                                                       strict=True))

    def offer(self) -> tuple[dict[str, Any] | None, BlockResult | None]:
        """The ``KEY_OFFER`` body, or (None, the abort) when the block is too small or the QBER
        estimate is above the threshold (nothing disclosed)."""
        b, p = self.block, self.params
        n_z, n_x = b.counts()
        if b.n < p.min_bits or not n_z or not n_x:
            return None, _abort(b, "too_few_bits")
        if self.qber_estimate > p.qber_threshold:
            return None, _abort(b, "qber_above_threshold")
        q = self.qber_plan = max(self.qber_estimate, 1e-3)
        syndromes = []
        for lo, hi in _bounds(chunk_sizes(b.n)):
            plan = reconcile.choose_plan(q, hi - lo, efficiency=p.ec_start_efficiency,
                                         step_efficiency=p.ec_step_efficiency, seed=p.code_seed)
            pad = reconcile.draw_padding(plan)
            syndromes.append(reconcile.syndrome(plan, b.bits[lo:hi], pad))
            self.plans.append(plan)
            self._padding.append(pad)
            self.rounds.append(0)
            self._spent.append(0)
            self._chunk_qber.append(q)
        syndrome = np.concatenate(syndromes)
        self._verify_seed = secrets.token_bytes(SEED_BYTES)
        return {"block": str(b.block_id), "n": b.n, "n_x": n_x, "qber": q,
                "plans": [plan.to_dict() for plan in self.plans],
                "syndrome_bits": int(syndrome.size), "syndrome": pack_bits(syndrome),
                "verify_seed": _b64(self._verify_seed)}, None

    def on_reply(self, reply: Mapping[str, Any]
                 ) -> tuple[str, dict[str, Any], BlockResult | None]:
        """("reveal", the ``KEY_REVEAL`` body, None) while chunks wait for more padding, else
        ("finish", the ``KEY_FINISH`` body, this end's result)."""
        b = self.block
        if not self.plans:
            raise RuntimeError("on_reply() before a successful offer()")
        try:
            _block_id(reply, b.block_id)
            if reply.get("ok") is True:
                return ("finish", *self._finish(reply))
            if "failed" not in reply:
                return ("finish", *self._abort_msg("decoding_failed"))
            failed = _chunk_list(reply, "failed", set(range(len(self.plans))))
        except BlockMessageError:
            return ("finish", *self._abort_msg("protocol_error"))
        if self.reveals >= self.params.ec_max_rounds:
            return ("finish", *self._abort_msg("decoding_failed"))
        revealed, replanned, syndromes = [], [], []
        # the last REPLAN_RESERVE rounds replan what still fails: a sample that underestimated
        # the QBER (2σ low at a 2048-bit sample, a few blocks in a hundred) leaves plans whose
        # blind rounds reach past the block's budget, and those chunks would be lost unplanned
        closing = _closing(self.params, self.reveals)
        for c in failed:
            if self.rounds[c] < self.plans[c].max_rounds() and not closing:
                self.rounds[c] += 1
                revealed.append(reconcile.reveal(self.plans[c], self._padding[c],
                                                 self.rounds[c]).reshape(-1))
            else:
                replanned.append(c)
                syndromes.append(self._replan(c))
        self.reveals += 1
        bits = np.concatenate(revealed) if revealed else np.zeros(0, np.uint8)
        body = {"block": str(b.block_id), "round": self.reveals,
                "chunks": [c for c in failed if c not in replanned],
                "revealed_bits": int(bits.size), "revealed": pack_bits(bits)}
        if replanned:
            syndrome = np.concatenate(syndromes)
            body.update({"replanned": replanned,
                         "plans": [self.plans[c].to_dict() for c in replanned],
                         "syndrome_bits": int(syndrome.size), "syndrome": pack_bits(syndrome)})
        return "reveal", body, None

    def _replan(self, c: int) -> np.ndarray:
        """A chunk whose blind rounds are used up gets a new plan, one-way at the codes'
        measured margin for a QBER a quarter above the one its last plan was for (so a chunk
        that fails again asks for more each time), with fresh padding; what the old plan
        disclosed stays counted. Returns the new syndrome."""
        self._spent[c] += self.plans[c].leak_bits(self.rounds[c])
        self._chunk_qber[c] = min(1.25 * self._chunk_qber[c], reconcile.QBER_MAX)
        plan = reconcile.choose_plan(self._chunk_qber[c], self.plans[c].n,
                                     step_efficiency=self.params.ec_step_efficiency,
                                     seed=self.params.code_seed)
        lo, hi = _bounds([pl.n for pl in self.plans])[c]
        self.plans[c], self.rounds[c] = plan, 0
        self._padding[c] = reconcile.draw_padding(plan)
        return reconcile.syndrome(plan, self.block.bits[lo:hi], self._padding[c])

    def _finish(self, reply: Mapping[str, Any]) -> tuple[dict[str, Any], BlockResult]:
        b, p = self.block, self.params
        n_z, n_x = b.counts()
        leak_ec = self.leak_ec()
        leak = _disclosed(b.n, leak_ec, p.eps_cor)
        errors = (body_int(reply, "errors_z", 0, n_z), body_int(reply, "errors_x", 0, n_x))
        tag = _unb64(reply, "tag", 64)
        if tag != verification_tag(b.bits, self._verify_seed, p.eps_cor):
            return self._abort_msg("verification_failed", errors)
        if max(errors[0] / n_z, errors[1] / n_x) > p.qber_threshold:
            return self._abort_msg("qber_above_threshold", errors)
        length = block_secret_length(n_z, n_x, *errors, leak, eps_sec=p.eps_sec,
                                     eps_cor=p.eps_cor)
        if length <= 0:
            return self._abort_msg("finite_size", errors)
        seed = secrets.token_bytes(SEED_BYTES)
        key = amplify(b.bits, seed, length)
        result = BlockResult(b.block_id, None, b.n, n_z, n_x, errors[0] / n_z, errors[1] / n_x,
                             leak_ec, leak, length, key)
        return ({"block": str(b.block_id), "length": length, "errors_z": errors[0],
                 "errors_x": errors[1], "leak": leak, "leak_ec": leak_ec,
                 "amplify_seed": _b64(seed)}, result)

    def _abort_msg(self, reason: str, errors: tuple[int, int] = (0, 0)
                   ) -> tuple[dict[str, Any], BlockResult]:
        leak_ec = self.leak_ec()
        result = _abort(self.block, reason, errors=errors, leak_ec=leak_ec,
                        leak=_disclosed(self.block.n, leak_ec, self.params.eps_cor))
        return {"block": str(self.block.block_id), "abort": reason}, result


class BlockFollower:
    """The follower's side of one block: :meth:`on_offer`, :meth:`on_reveal` while chunks wait,
    then :meth:`finish`. A message that does not fit makes this end answer ``ok: false`` and
    end with a ``protocol_error`` result (the leader then aborts)."""

    #: at most this many chunks in one block (2²² bits take 36 chunks of 2¹⁷-bit frames)
    MAX_CHUNKS = 256
    #: bytes of decoder messages kept for failed chunks' next blind round (about 4 MB per
    #: 2¹⁷-bit frame); chunks beyond it start their next round afresh
    MAX_KEPT_BYTES = 64 << 20

    def __init__(self, block: SiftedBlock, params: KeyParams):
        self.block, self.params = block, params
        self.plans: list[reconcile.Plan] = []
        self.rounds: list[int] = []
        self._spent: list[int] = []
        self._syndromes: list[np.ndarray] = []
        self._revealed: list[np.ndarray | None] = []
        self._decoded: list[np.ndarray | None] = []
        self._states: list[np.ndarray | None] = []
        self._qber = 0.0
        self._seed = b""
        self._errors = (0, 0)
        self._corrected: np.ndarray | None = None
        self._reveals = 0

    def _refuse(self) -> tuple[dict[str, Any], BlockResult]:
        return {"block": str(self.block.block_id), "ok": False}, _abort(self.block,
                                                                         "protocol_error")

    def on_offer(self, offer: Mapping[str, Any]) -> tuple[dict[str, Any], BlockResult | None]:
        """The ``KEY_REPLY`` to an offer; with a result when this end already knows the block
        failed (the leader learns it from the reply and answers with an abort)."""
        b = self.block
        n_z, n_x = b.counts()
        try:
            _block_id(offer, b.block_id)
            if body_int(offer, "n", 0, b.n) != b.n or body_int(offer, "n_x", 0, b.n) != n_x:
                raise BlockMessageError("n/n_x: the offer is for another block")
            plans = offer.get("plans")
            if not isinstance(plans, list) or not 0 < len(plans) <= self.MAX_CHUNKS:
                raise BlockMessageError("plans: expected a list of chunk plans")
            if not all(isinstance(p, dict) for p in plans):
                raise BlockMessageError("plans: expected objects")
            parsed = [reconcile.Plan.from_dict(p) for p in plans]
            if sum(p.n for p in parsed) != b.n:
                raise BlockMessageError("plans: the chunks do not add up to the block")
            m = body_int(offer, "syndrome_bits", 1, 1 << 24)
            if m != sum(p.syndrome_bits() for p in parsed):
                raise BlockMessageError("syndrome_bits: not the plans' syndromes")
            syndrome = unpack_bits(offer, "syndrome", m)
            self._seed = _unb64(offer, "verify_seed", SEED_BYTES)
            if len(self._seed) != SEED_BYTES:
                raise BlockMessageError("verify_seed: wrong length")
            qber = offer.get("qber")
            if not isinstance(qber, float | int) or isinstance(qber, bool) \
                    or not 0.0 < qber < 0.5:
                raise BlockMessageError("qber: expected a number in (0, 0.5)")
        except (BlockMessageError, ValueError):
            # ValueError: a plan the codes refuse (hostile or from another version)
            return self._refuse()
        self._qber, self.plans = float(qber), parsed
        self._syndromes = _syndromes(self.plans, syndrome)
        self.rounds = [0] * len(self.plans)
        self._spent = [0] * len(self.plans)
        self._revealed = [None] * len(self.plans)
        self._decoded = [None] * len(self.plans)
        self._states = [None] * len(self.plans)
        return self._decode(range(len(self.plans))), None

    def on_reveal(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], BlockResult | None]:
        """The ``KEY_REPLY`` after the leader revealed more padding of the failed chunks."""
        try:
            _block_id(body, self.block.block_id)
            if body_int(body, "round", 1, 1 << 20) != self._reveals + 1:
                raise BlockMessageError("round: not the next round")
            waiting = {c for c, d in enumerate(self._decoded) if d is None}
            chunks = _chunk_list(body, "chunks", waiting) if body.get("chunks") else []
            replanned = (_chunk_list(body, "replanned", waiting) if "replanned" in body
                         else [])
            if set(chunks) | set(replanned) != waiting or set(chunks) & set(replanned):
                raise BlockMessageError("chunks/replanned: not the chunks that wait")
            sizes = [(self.rounds[c] + 1) * self.plans[c].step for c in chunks]
            if any(self.rounds[c] + 1 > self.plans[c].max_rounds() for c in chunks):
                raise BlockMessageError("chunks: no rounds left")
            if not _closing(self.params, self._reveals) and any(
                    self.rounds[c] < self.plans[c].max_rounds() for c in replanned):
                raise BlockMessageError("replanned: a chunk with rounds left")
            n = body_int(body, "revealed_bits", 0, 1 << 24)
            if n != sum(sizes):
                raise BlockMessageError("revealed_bits: not what those chunks reveal")
            bits = unpack_bits(body, "revealed", n)
            new_plans, new_syndromes = self._new_plans(body, replanned)
        except (BlockMessageError, ValueError):
            return self._refuse()
        self._reveals += 1
        start = 0
        for c, size in zip(chunks, sizes, strict=True):
            self.rounds[c] += 1
            self._revealed[c] = bits[start:start + size].reshape(1, size)
            start += size
        for c, plan, syndrome in zip(replanned, new_plans, new_syndromes, strict=True):
            self._spent[c] += self.plans[c].leak_bits(self.rounds[c])
            self.plans[c], self.rounds[c], self._revealed[c] = plan, 0, None
            self._syndromes[c], self._states[c] = syndrome, None
        return self._decode(sorted(chunks + replanned)), None

    def _new_plans(self, body: Mapping[str, Any], replanned: list[int]
                   ) -> tuple[list[reconcile.Plan], list[np.ndarray]]:
        """The new plans and syndromes of the ``replanned`` chunks of a ``KEY_REVEAL``."""
        if not replanned:
            return [], []
        raw = body.get("plans")
        if not isinstance(raw, list) or len(raw) != len(replanned) or not all(
                isinstance(p, dict) for p in raw):
            raise BlockMessageError("plans: one plan per replanned chunk")
        plans = [reconcile.Plan.from_dict(p) for p in raw]
        if [p.n for p in plans] != [self.plans[c].n for c in replanned]:
            raise BlockMessageError("plans: not the chunks' lengths")
        m = body_int(body, "syndrome_bits", 1, 1 << 24)
        if m != sum(p.syndrome_bits() for p in plans):
            raise BlockMessageError("syndrome_bits: not the plans' syndromes")
        return plans, _syndromes(plans, unpack_bits(body, "syndrome", m))

    def _decode(self, chunks: Any) -> dict[str, Any]:
        b = self.block
        bounds = _bounds([p.n for p in self.plans])
        for c in chunks:
            lo, hi = bounds[c]
            # a failed chunk keeps its decoder's messages for the next round (bounded)
            fits = (self._states[c] is not None
                    or sum(st.nbytes for st in self._states if st is not None)
                    < self.MAX_KEPT_BYTES)
            states = [self._states[c]]
            self._decoded[c] = reconcile.correct(self.plans[c], b.bits[lo:hi],
                                                 self._syndromes[c], self._qber,
                                                 revealed=self._revealed[c], states=states)
            self._states[c] = states[0] if self._decoded[c] is None and fits else None
        failed = [c for c, d in enumerate(self._decoded) if d is None]
        if failed:
            return {"block": str(b.block_id), "round": self._reveals, "failed": failed}
        corrected = np.concatenate([d for d in self._decoded if d is not None])
        diff = corrected != b.bits
        self._errors = (int(np.count_nonzero(diff & (b.bases == Z))),
                        int(np.count_nonzero(diff & (b.bases == X))))
        self._corrected = corrected
        tag = verification_tag(corrected, self._seed, self.params.eps_cor)
        return {"block": str(b.block_id), "round": self._reveals, "ok": True,
                "errors_z": self._errors[0], "errors_x": self._errors[1], "tag": _b64(tag)}

    def finish(self, msg: Mapping[str, Any]) -> BlockResult:
        """This end's result from the leader's ``KEY_FINISH``."""
        b, p = self.block, self.params
        n_z, n_x = b.counts()
        leak_ec = sum(self._spent) + sum(pl.leak_bits(r) for pl, r in zip(self.plans, self.rounds,
                                                                           strict=True))
        leak = _disclosed(b.n, leak_ec, p.eps_cor)
        try:
            _block_id(msg, b.block_id)
            reason = msg.get("abort")
            if reason is not None:
                if reason not in ABORT_REASONS:
                    raise BlockMessageError("abort: unknown reason")
                return _abort(b, str(reason), errors=self._errors, leak_ec=leak_ec, leak=leak)
            if self._corrected is None:
                raise BlockMessageError("a key announced for a block this end did not correct")
            length = body_int(msg, "length", 1, b.n)
            seed = _unb64(msg, "amplify_seed", SEED_BYTES)
            if len(seed) != SEED_BYTES:
                raise BlockMessageError("amplify_seed: wrong length")
            # the leader's length is checked against the bound this end computes itself,
            # from its own tally of what was disclosed
            bound = block_secret_length(n_z, n_x, *self._errors, leak, eps_sec=p.eps_sec,
                                        eps_cor=p.eps_cor)
            if length > bound:
                raise BlockMessageError(f"length {length} above the bound {bound}")
        except BlockMessageError:
            return _abort(b, "protocol_error", errors=self._errors, leak_ec=leak_ec, leak=leak)
        key = amplify(self._corrected, seed, length)
        return BlockResult(b.block_id, None, b.n, n_z, n_x, self._errors[0] / n_z,
                           self._errors[1] / n_x, leak_ec, leak, length, key)
