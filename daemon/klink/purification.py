"""Entanglement purification on a K link: DEJMPS and BBPSSW rounds as LOCC over MQTT.

**When.** A CREATE on a K link whose ``min_fidelity`` is above the fidelity the link's pairs
have when they are used (its test-pair estimate, :mod:`qnode.daemon.klink.memory`, decayed by the
median age of the pairs rounds have used) is served by purification: the node plans
(:meth:`Purifier.plan`: the link's state, ``[memory].purification`` protocol and
``purification_schedule``, the device's gate and read-out errors, and the decay while the
outcomes cross, as the last rounds measured it). No plan within
``purification_max_rounds`` rounds (or more qubits than the link has) → ``ERR UNSUPP`` at once;
otherwise ACK, rounds until a pair's estimate reaches the minimum, and an OK per pair.

**Who.** Rounds are led by one end of the link, the one whose node id sorts first (so the two
ends never start rounds on the same pairs); the other end follows. A CREATE needing
purification at the following end is refused with ERR UNSUPP (the log names the leader).

**A round** (docs/physicists/purification.md), on two pairs both ends hold (fresh ones: bound at
both ends, the peer's HELD came; or outputs of earlier rounds):

1. the leader applies each pair's bilateral rotations on its halves (DEJMPS: R_x(+π/2); BBPSSW:
   one of the six permutations of the Pauli errors, drawn at random per pair — the twirl),
   CNOT kept → sacrificed and measures the sacrificed qubit in Z, in one QDevice round trip
   (:meth:`qnode.drivers.qdevice.QDevice.parity_round`), and sends ``PURIFY`` with its outcome;
2. the follower does the same with the mirrored angles (R_x(−π/2), R_y(+π/2), R_z(−π/2), the
   sign flipped where the pair's Pauli frame anticommutes with the axis, so the frame is
   tracked, not corrected) and answers ``PURIFY_RES`` with its outcome;
3. both keep the pair iff the outcomes agree up to the frames: m_A ⊕ m_B = x_kept ⊕ x_sacrificed
   (the X bits of the two pairs' Bell states); the kept pair's frame becomes
   (x_kept, z_kept ⊕ z_sacrificed). A failed round discards both pairs at both ends; a missing
   pair at the follower (``-``) or no answer within :data:`ROUND_TIMEOUT_S` discards them too.

**Estimates.** Each pair carries its Bell-diagonal state relative to its frame and, per half,
the time it refers to (this end's half: monotonic; the peer's: Unix, from the messages). A
round's output is the exact per-pair model: both halves decayed (T1/T2) to their end's gates,
the single-qubit gates' depolarising error, the pair's rotations as a permutation of the
weights (:func:`~.bell_diagonal.bilateral_rotation`), then :func:`~.bell_diagonal.parity_check`
with the CNOT fidelity and read-out error. Averaged over the twirl it is BBPSSW; with the X
rotation it is DEJMPS. Both ends compute it (from the same outcomes and times). It is the
expectation given the outcomes: it counts the chance (about twice the read-out error per round)
that a misread passed a bad pair, so the rare misread pairs are far below it and the rest
slightly above it.

**Yield.** Telemetry counts the link pairs taken (``purify_pairs_used_total``) and where they
went: into delivered pairs (``purify_inputs_delivered_total``), failed rounds
(``purify_inputs_failed_total``; with the delivered ones, what the plan's pairs per output
predicts), stored pairs that reached the cut-off or too many rounds
(``purify_inputs_expired_total``: pairs that waited for a partner in vain) and rounds aborted
for a missing pair or answer (``purify_inputs_aborted_total``).

**Schedules.** ``pumping``: the best pair so far keeps, a fresh pair is sacrificed, until the
target is met (a pair that has had ``plan.rounds + 2`` rounds without meeting it is discarded).
``recurrence``: two pairs of the same level make one of the next level (nested rounds), so
depth n needs n + 1 qubits per end.

A delivered pair's qubit is the application's until its cut-off (``[memory].max_pair_age_s``);
the follower keeps its copy until then, so a pair is delivered only while at least
``delivered_hold_s`` is left before it.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from qnode.daemon.klink.swapping import decay
from qnode.daemon.linklayer import (
    BELL_STATES,
    TWIRLS,
    Ack,
    Create,
    Err,
    ErrCode,
    Message,
    Ok,
    Purify,
    PurifyResult,
    hold_ms,
)
from qnode.daemon.quantum.bell_diagonal import (
    Bell,
    BellDiagonal,
    PauliChannel,
    PurificationImpossible,
    PurificationPlan,
    apply_channels,
    bilateral_rotation,
    parity_check,
    purify,
)
from qnode.daemon.runtime.waiting import wait_event
from qnode.drivers.errors import InstrumentError

if TYPE_CHECKING:
    from qnode.daemon.bus.telemetry import PurificationTelemetry
    from qnode.daemon.klink.handle import LinkHandle
    from qnode.daemon.klink.memory import Bound, LinkMemory
    from qnode.daemon.runtime.config import MemoryConfig
    from qnode.daemon.runtime.context import NodeContext

log = logging.getLogger("qnode.purify")

#: The leader discards a round's pairs when the follower has not answered within this (s).
ROUND_TIMEOUT_S = 2.0
#: Age (s) of each half of a fresh pair when a round uses it, and the wait of a round's output
#: for the outcomes to cross, before rounds have measured them.
DEFAULT_INPUT_AGE_S = 0.05
#: A stored pair goes into a round only if it has the measured outcome lag plus this (s) left
#: before its cut-off (the follower drops it then).
CUTOFF_MARGIN_S = 0.05
#: Rounds beyond the plan's that a pumped pair gets before it is discarded.
EXTRA_ROUNDS = 2

_HALF_PI = math.pi / 2
#: Does the Pauli frame (Bell state) anticommute with the rotation axis?
_ANTICOMMUTES = {"X": lambda b: b.z, "Y": lambda b: b.x ^ b.z, "Z": lambda b: b.x}


def rotations(qubit: int, axes: str, frame: str, *, leader: bool) -> list[tuple[int, str, float]]:
    """This end's rotations (qubit, axis, rad) of a pair in Bell state ``frame`` for the
    bilateral rotations about ``axes`` (module docstring, step 2)."""
    b = Bell(BELL_STATES.index(frame))
    out = []
    for a in axes:
        if leader:
            angle = _HALF_PI
        else:
            angle = _HALF_PI if a == "Y" else -_HALF_PI
            if _ANTICOMMUTES[a](b):
                angle = -angle
        out.append((qubit, a, angle))
    return out


def keep_and_frame(kept_frame: str, sacrificed_frame: str, outcome_a: int,
                   outcome_b: int) -> tuple[bool, str]:
    """(keep?, the kept pair's new Bell state) from the two ends' outcomes (step 3)."""
    k = Bell(BELL_STATES.index(kept_frame))
    s = Bell(BELL_STATES.index(sacrificed_frame))
    keep = (outcome_a ^ outcome_b) == (k.x ^ s.x)
    return keep, BELL_STATES[2 * k.x + (k.z ^ s.z)]


def round_model(kept: BellDiagonal, sacrificed: BellDiagonal, kept_axes: str,
                sacrificed_axes: str, *, gate_fidelity_1q: float = 1.0,
                gate_fidelity_2q: float = 1.0, readout_error: float = 0.0
                ) -> tuple[float, BellDiagonal]:
    """(p_keep, the kept pair's state if kept), both states relative to their frames, of one
    round in which each end rotates each pair about its axes (each rotation depolarising its
    qubit with probability 1 − ``gate_fidelity_1q``, the device's model), then CNOTs
    (``gate_fidelity_2q``) and reads out (``readout_error``). p_keep is 0 when the pair can
    never pass (the state then is the rotated input)."""
    states = []
    for state, axes in ((kept, kept_axes), (sacrificed, sacrificed_axes)):
        if axes and gate_fidelity_1q < 1.0:
            ch = PauliChannel.depolarizing(1.0 - gate_fidelity_1q ** len(axes))
            state = apply_channels(state, ch, ch)
        states.append(bilateral_rotation(state, axes))
    try:
        return parity_check(states[0], states[1], gate_fidelity=gate_fidelity_2q,
                            meas_fidelity=1.0 - readout_error)
    except PurificationImpossible:
        return 0.0, states[0]


@dataclass
class PurePair:
    """A pair this end holds for purification (taken from the link: no longer live there)."""

    seq: int                 # the link pair whose qubit this is: the pair's name at both ends
    qubit: int
    frame: str               # its Bell state (Pauli frame)
    state: BellDiagonal      # relative to ``frame``, each half at the time below
    own_at: float            # monotonic s: this end's half
    peer_at: float           # Unix s: the peer's half
    rounds: int = 0          # successful rounds behind it (its level)
    inputs: int = 1          # link pairs that went into it
    generation: int = 0

    def at(self, own_now: float, peer_now: float, t1_s: float, t2_s: float) -> BellDiagonal:
        """The state (relative to the frame) with this half at monotonic ``own_now`` and the
        peer's at Unix ``peer_now``."""
        return decay(self.state, (max(0.0, own_now - self.own_at),
                                  max(0.0, peer_now - self.peer_at)), t1_s, t2_s)

    def life_left(self, now: float, wall: float, cutoff_s: float) -> float:
        """Seconds until the older half is ``cutoff_s`` old (the cut-off; < 0: past it; inf
        without a cut-off, ``cutoff_s`` ≤ 0), at monotonic ``now`` and Unix ``wall``."""
        if cutoff_s <= 0:
            return math.inf
        return cutoff_s - max(now - self.own_at, wall - self.peer_at)


@dataclass
class _Request:
    create_id: int
    create: Create
    requester: str
    t0: float
    plan: PurificationPlan
    served: int = 0


class PurifyCounts(TypedDict):
    """:class:`Purifier`'s counters, reported under the same names
    (:class:`~qnode.daemon.bus.telemetry.PurificationTelemetry`)."""

    purify_rounds_total: int
    purify_kept_total: int
    purify_discarded_total: int
    purify_aborted_total: int
    purify_delivered_total: int
    purify_inputs_delivered_total: int
    purify_refused_total: int
    purify_pairs_used_total: int
    purify_inputs_failed_total: int
    purify_inputs_expired_total: int
    purify_inputs_aborted_total: int


class Purifier:
    """Purification on ``service``'s link at this end (module docstring)."""

    def __init__(self, ctx: NodeContext, service: LinkHandle, memory: LinkMemory,
                 mem: MemoryConfig, *, rng: random.Random | None = None):
        self.ctx, self.service, self.memory, self.mem = ctx, service, memory, mem
        self.link, self.peer = service.link, service.peer
        self.leader = ctx.node < service.peer
        self.protocol = mem.purification
        self.schedule = mem.purification_schedule
        self.store: collections.OrderedDict[int, PurePair] = collections.OrderedDict()
        self.requests: list[_Request] = []
        self.create_ids = service.end.create_ids   # one id space with the link's own CREATEs
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._waiting: dict[int, asyncio.Future[PurifyResult]] = {}
        self._input_ages: collections.deque[tuple[float, float]] = collections.deque(maxlen=200)
        self._lags: collections.deque[tuple[float, float]] = collections.deque(maxlen=200)
        service.listeners.append(self.poke)
        service.serve_requests(self.needed, self.request)
        service.add_telemetry(self.telemetry)
        if self.leader:
            service.on_message(PurifyResult, self._on_result, locked=False)
        else:
            service.on_message(Purify, self._on_purify, locked=False)
        self.counts: PurifyCounts = {
            "purify_rounds_total": 0, "purify_kept_total": 0, "purify_discarded_total": 0,
            "purify_aborted_total": 0, "purify_delivered_total": 0,
            "purify_inputs_delivered_total": 0, "purify_refused_total": 0,
            "purify_pairs_used_total": 0,
            # where the link pairs went that no delivered pair holds
            "purify_inputs_failed_total": 0, "purify_inputs_expired_total": 0,
            "purify_inputs_aborted_total": 0}
        self.last_plan: PurificationPlan | None = None
        self.expected_kept = 0.0          # Σ of the rounds' predicted success probabilities
        self.delivered_fidelity: collections.deque[float] = collections.deque(maxlen=1000)

    # ------------------------------------------------------------------ policy
    def fresh_state(self) -> BellDiagonal:
        """The link's state (relative to a pair's frame) at binding: its test-pair estimate."""
        return self.memory.tomography.estimate()[0]

    def needed(self, create: Create) -> bool:
        """Does ``create`` need purification: a K pair above what the link's pairs have when
        they are used (:meth:`input_state`; a pair delivered unpurified has decayed as much),
        or above what the link layer serves (its ``max_fidelity``, which it would refuse: a
        minimum near the estimate, which moves with every test pair, must not then get ERR
        UNSUPP from the link layer for one CREATE and purified pairs for the next)?"""
        return (self.protocol != "off" and create.tpe == "K"
                and create.min_fidelity > min(self.input_state().fidelity(),
                                              self.service.end.max_fidelity))

    def input_state(self) -> BellDiagonal:
        """The state a round's fresh pair has when it is used: the link's state with each half
        decayed by the median age (this end's half, the peer's) of the last rounds' fresh
        pairs (:data:`DEFAULT_INPUT_AGE_S` before the first round)."""
        return decay(self.fresh_state(), self._median(self._input_ages), self.mem.t1_s,
                     self.mem.t2_s)

    def _median(self, samples: collections.deque[tuple[float, float]]) -> tuple[float, float]:
        if not samples:
            return DEFAULT_INPUT_AGE_S, DEFAULT_INPUT_AGE_S
        return (float(np.median([x for x, _ in samples])),
                float(np.median([y for _, y in samples])))

    def plan(self, min_fidelity: float) -> PurificationPlan | None:
        """The plan for ``min_fidelity``, or None (unreachable within
        ``purification_max_rounds``, no gain per round, or more qubits than the link has).

        Fresh pairs enter as old as they are when rounds use them (:meth:`input_state`); each
        round is the protocol's average (:func:`~.bell_diagonal.purify`; each side's gates: its
        CNOT and two rotations) and its output then waits for the outcomes to cross: both
        halves decay by the median lag of the last rounds (this end's gates to the decision,
        the peer's gates to the decision). Pairs consumed per output as in
        :class:`~.bell_diagonal.PurificationPlan`."""
        mem = self.mem
        g = mem.gate_fidelity_2q * mem.gate_fidelity_1q ** 2
        fresh = self.input_state()
        lag = self._median(self._lags)
        probs: list[float] = []
        state, cost = fresh, 1.0
        for n in range(mem.purification_max_rounds + 1):
            if state.fidelity() >= min_fidelity:
                qubits = 2 if self.schedule == "pumping" else n + 1
                if qubits > mem.qubits_per_link:
                    return None
                return PurificationPlan(n, tuple(probs), cost, state,
                                        self.protocol, self.schedule)  # type: ignore[arg-type]
            sacrificed = state if self.schedule == "recurrence" else fresh
            try:
                p, out = purify(state, sacrificed, protocol=self.protocol,  # type: ignore[arg-type]
                                gate_fidelity=g, meas_fidelity=1.0 - mem.readout_error)
            except PurificationImpossible:
                return None
            out = decay(out, lag, mem.t1_s, mem.t2_s)
            if out.fidelity() <= state.fidelity():
                return None          # a round loses more to the wait than it gains
            cost = (2.0 * cost if self.schedule == "recurrence" else cost + 1.0) / p
            probs.append(p)
            state = out
        return None

    async def request(self, create: Create, requester: str) -> None:
        """Serve ``create`` by purification (caller holds the link's lock)."""
        cid = self.create_ids.allocate(r.create_id for r in self.requests)
        plan = self.plan(create.min_fidelity) if self.leader else None
        if plan is None:
            self.counts["purify_refused_total"] += 1
            why = (f"rounds are led by {self.peer}" if not self.leader else
                   f"{self.protocol}/{self.schedule} cannot reach it within "
                   f"{self.mem.purification_max_rounds} rounds and "
                   f"{self.mem.qubits_per_link} qubits")
            log.warning("link %s: CREATE from %s for F >= %.4f (link %.4f) refused: %s",
                        self.link, requester, create.min_fidelity,
                        self.input_state().fidelity(), why,
                        extra={"link": self.link, "requester": requester,
                               "min_fidelity": create.min_fidelity, "reason": why})
            self._reply(requester, Err(cid, ErrCode.UNSUPP))
            return
        log.info("link %s: purifying for %s: F %.4f (pairs as used) -> %.4f in %d %s "
                 "round(s), %.2f pairs per output predicted", self.link, requester,
                 self.input_state().fidelity(),
                 plan.state.fidelity(), plan.rounds, self.protocol, plan.pairs_consumed,
                 extra={"link": self.link, "requester": requester, "rounds": plan.rounds,
                        "pairs_per_output": plan.pairs_consumed})
        self._reply(requester, Ack(cid))
        self.last_plan = plan
        self.requests.append(_Request(cid, create, requester, self.ctx.now(), plan))
        self._wake.set()

    def _reply(self, requester: str, m: Ack | Ok | Err) -> None:
        self.ctx.bus.publish(self.ctx.topics.reply(requester), m.TYPE, m.to_dict())

    # ------------------------------------------------------------------ pairs
    def _from_link(self, b: Bound) -> PurePair:
        """Take bound pair ``b`` off the link (caller holds the lock)."""
        self.memory.take(b.seq)
        self.service.end.consume([b.seq])
        self.counts["purify_pairs_used_total"] += 1
        self.service.changed()
        wall_bound = time.time() - (time.monotonic() - b.bound_at)
        peer_at = self.memory.peer_held.get(b.seq, wall_bound)
        return PurePair(b.seq, b.qubit, b.bell_state, self.fresh_state(), b.bound_at, peer_at,
                        generation=b.generation)

    def _drop(self, pair: PurePair) -> None:
        """Give ``pair``'s qubit back (its pair is gone)."""
        if pair.generation == self.memory.pool.generation:
            self.memory.give_back(pair.qubit)

    def _claim(self, seq: int) -> PurePair | None:
        """Pair ``seq`` for a round: from the store or off the link (caller holds the lock)."""
        pair = self.store.pop(seq, None)
        if pair is not None:
            return pair
        b = self.memory.bound.get(seq)
        if b is None or b.generation != self.memory.pool.generation:
            return None
        rec = self.service.end.pair(seq)
        if rec is None or rec.status != "live":
            return None
        return self._from_link(b)

    def _model(self, kept: PurePair, sac: PurePair, kept_axes: str, sac_axes: str,
               own_t: float, peer_wall: float) -> tuple[float, BellDiagonal, float]:
        """(p_keep, the kept pair's state if kept, its fidelity before) for a round whose
        gates ran here at ``own_t`` (monotonic) and at the peer at ``peer_wall`` (Unix)."""
        mem = self.mem
        k = kept.at(own_t, peer_wall, mem.t1_s, mem.t2_s)
        s = sac.at(own_t, peer_wall, mem.t1_s, mem.t2_s)
        p, out = round_model(k, s, kept_axes, sac_axes, gate_fidelity_1q=mem.gate_fidelity_1q,
                             gate_fidelity_2q=mem.gate_fidelity_2q,
                             readout_error=mem.readout_error)
        return p, out, k.fidelity()

    def _settle(self, rnd: int, kept: PurePair, sac: PurePair, kept_axes: str, sac_axes: str,
                outcomes: tuple[int, int], own_t: float, peer_wall: float) -> bool:
        """Apply a round both ends did: keep or discard (caller holds the lock)."""
        keep, frame = keep_and_frame(kept.frame, sac.frame, *outcomes)
        p, out, before = self._model(kept, sac, kept_axes, sac_axes, own_t, peer_wall)
        if sac.rounds == 0:
            self._input_ages.append((max(0.0, own_t - sac.own_at),
                                     max(0.0, peer_wall - sac.peer_at)))
        self._drop(sac)                  # measured: its qubit is free (MEAS resets it)
        self.counts["purify_rounds_total"] += 1
        self.expected_kept += p
        log.debug("link %s: round %d on %d+%d (levels %d+%d): p %.3f, %s, F %.4f -> %.4f",
                  self.link, rnd, kept.seq, sac.seq, kept.rounds, sac.rounds, p,
                  "kept" if keep else "discarded", before, out.fidelity() if keep else 0.0,
                  extra={"link": self.link, "round": rnd, "kept": keep})
        if not keep:
            self._drop(kept)
            self.counts["purify_discarded_total"] += 1
            self.counts["purify_inputs_failed_total"] += kept.inputs + sac.inputs
            return False
        self._lags.append((max(0.0, time.monotonic() - own_t),
                           max(0.0, time.time() - peer_wall)))
        self.counts["purify_kept_total"] += 1
        self.store[kept.seq] = PurePair(kept.seq, kept.qubit, frame, out, own_t, peer_wall,
                                        max(kept.rounds, sac.rounds) + 1,
                                        kept.inputs + sac.inputs, kept.generation)
        return True

    # ------------------------------------------------------------------ the leader
    async def run(self) -> None:
        """Serve requests (the leader's rounds) and apply the cut-off, until cancelled."""
        while True:
            await wait_event(self._wake, 0.05)
            self._wake.clear()
            async with self.service.lock:
                self.tick()
            while self.leader and self.requests and await self._round():
                pass

    def poke(self) -> None:
        """The link's bound pairs changed: a round may be possible."""
        if self.requests:
            self._wake.set()

    def _choose(self) -> tuple[PurePair, PurePair] | None:
        """The next round's (kept, sacrificed) per the schedule (caller holds the lock)."""
        self.memory.release_gone(self.service.end)
        # newest first: a pair decays from the moment it is bound
        fresh = [b for b in reversed(self.memory.confirmed())
                 if b.generation == self.memory.pool.generation]
        # a stored pair the follower will have dropped at its cut-off when PURIFY gets there
        # would abort the round and cost its partner too: leave it to expire alone
        now, wall, cutoff = self.ctx.now(), time.time(), self.mem.max_pair_age_s
        margin = max(self._median(self._lags)) + CUTOFF_MARGIN_S
        by_level = sorted((p for p in self.store.values()
                           if p.life_left(now, wall, cutoff) > margin),
                          key=lambda p: -p.rounds)
        if self.schedule == "pumping":
            if by_level and fresh:
                kept = self.store.pop(by_level[0].seq)
                return kept, self._from_link(fresh[0])
        else:
            for a, b in zip(by_level, by_level[1:], strict=False):
                if a.rounds == b.rounds:
                    return self.store.pop(a.seq), self.store.pop(b.seq)
        if len(fresh) >= 2:
            return self._from_link(fresh[0]), self._from_link(fresh[1])
        return None

    async def _round(self) -> bool:
        """One round, if the pairs are there; False when it must wait for pairs."""
        service = self.service
        async with service.lock:
            self._serve()
            if not self.requests:
                return False
            req = self.requests[0]
            chosen = self._choose()
            if chosen is None:
                return False
        kept, sac = chosen
        if self.protocol == "dejmps":
            axes = ("X", "X")
        else:
            axes = (self._rng.choice(TWIRLS), self._rng.choice(TWIRLS))
        rnd = self.ctx.bus.ids() & 0xFFFFFFFF
        done = await self._gates(rnd, kept, sac, axes[0], axes[1])
        if done is None:
            return True
        m_a, own_t = done
        own_wall = time.time() - (time.monotonic() - own_t)
        fut: asyncio.Future[PurifyResult] = asyncio.get_running_loop().create_future()
        self._waiting[rnd] = fut
        msg = Purify(self.link, rnd, self.protocol, kept.seq, sac.seq, axes[0], axes[1], m_a,
                     own_wall)
        self.ctx.bus.publish(self.ctx.topics.proto(self.peer), msg.TYPE, msg.to_dict(),
                             sign_with=self.peer)
        try:
            async with asyncio.timeout(ROUND_TIMEOUT_S):
                res = await fut
        except TimeoutError:
            res = None
        finally:
            self._waiting.pop(rnd, None)
        async with service.lock:
            if res is None or res.outcome == "-":
                log.warning("link %s: purification round %d: %s", self.link, rnd,
                            "no answer" if res is None else f"{self.peer} lacks a pair",
                            extra={"link": self.link, "round": rnd})
                self._abort(kept, sac)
                return True
            # this end's gates ran at own_t; a monotonic reading for the peer's Unix time
            self._settle(rnd, kept, sac, axes[0], axes[1], (m_a, int(res.outcome)), own_t,
                         res.time)
            self._serve()
            pair = self.store.get(kept.seq)
            if pair is not None and pair.rounds > req.plan.rounds + EXTRA_ROUNDS:
                del self.store[kept.seq]
                self._drop(pair)
                self.counts["purify_discarded_total"] += 1
                self.counts["purify_inputs_expired_total"] += pair.inputs
        return True

    async def _gates(self, rnd: int, kept: PurePair, sac: PurePair, kept_axes: str,
                     sac_axes: str) -> tuple[int, float] | None:
        """This end's side of round ``rnd`` on the QDevice (rotations, CNOT, MEAS Z): the
        outcome and when the gates ran (monotonic s, the device's own time: its reply less its
        ``AGE?``), or None when the device failed (both pairs are then dropped)."""
        ops = (rotations(kept.qubit, kept_axes, kept.frame, leader=self.leader)
               + rotations(sac.qubit, sac_axes, sac.frame, leader=self.leader))
        try:
            return await self.memory.pool.call(
                lambda d: d.parity_round_at(kept.qubit, sac.qubit, ops))
        except InstrumentError as exc:
            log.warning("link %s: purification round %d failed on the QDevice: %s", self.link,
                        rnd, exc, extra={"link": self.link, "round": rnd, "error": str(exc)})
            async with self.service.lock:
                self._abort(kept, sac)
            return None

    def _abort(self, kept: PurePair, sac: PurePair) -> None:
        self.counts["purify_aborted_total"] += 1
        self.counts["purify_inputs_aborted_total"] += kept.inputs + sac.inputs
        self._drop(kept)
        self._drop(sac)

    async def _on_result(self, msg: PurifyResult) -> list[Message]:
        self.on_result(msg)
        return []

    async def _on_purify(self, msg: Purify) -> list[Message]:
        await self.on_purify(msg)
        return []

    def on_result(self, msg: PurifyResult) -> None:
        """The follower's PURIFY_RES."""
        fut = self._waiting.get(msg.round)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _serve(self) -> None:
        """Deliver stored pairs that meet the first request (caller holds the lock)."""
        now, wall = self.ctx.now(), time.time()
        mem = self.mem
        cutoff = mem.max_pair_age_s
        while self.requests and self.store:
            req = self.requests[0]
            # the follower drops its copy at the cut-off: leave the application its hold
            ready = [p for p in self.store.values()
                     if p.life_left(now, wall, cutoff) >= mem.delivered_hold_s]
            if not ready:
                return
            f, best = max(((p.at(now, wall, mem.t1_s, mem.t2_s).fidelity(), p)
                           for p in ready), key=lambda fp: fp[0])
            if f < req.create.min_fidelity:
                return
            del self.store[best.seq]
            goodness = round(f, 6)
            # the application's until the cut-off (at least the hold: it was ready)
            left = best.life_left(now, wall, cutoff) if cutoff > 0 else mem.delivered_hold_s
            self.memory.hold(best.qubit, now + left)
            self._reply(req.requester, Ok(req.create_id, self.link, best.seq, best.frame,
                                          goodness, req.create.purpose_id, self.peer, "K",
                                          int(time.monotonic_ns() * 1000), qubit=best.qubit,
                                          hold_ms=hold_ms(left)))
            self.counts["purify_delivered_total"] += 1
            self.counts["purify_inputs_delivered_total"] += best.inputs
            self.delivered_fidelity.append(goodness)
            req.served += 1
            if req.served >= req.create.number:
                self.requests.pop(0)

    # ------------------------------------------------------------------ the follower
    async def on_purify(self, msg: Purify) -> None:
        """The leader's PURIFY: do this end's side and answer (module docstring)."""
        service = self.service
        async with service.lock:
            kept, sac = self._claim(msg.kept), self._claim(msg.sacrificed)
            if kept is None or sac is None:
                for p in (kept, sac):
                    if p is not None:
                        self._drop(p)
                        self.counts["purify_inputs_aborted_total"] += p.inputs
                self.counts["purify_aborted_total"] += 1
                log.warning("link %s: PURIFY round %d names pair %d or %d, not held here",
                            self.link, msg.round, msg.kept, msg.sacrificed,
                            extra={"link": self.link, "round": msg.round})
                self._answer(msg.round, "-", time.time())
                return
        done = await self._gates(msg.round, kept, sac, msg.kept_axes, msg.sacrificed_axes)
        if done is None:
            self._answer(msg.round, "-", time.time())
            return
        m_b, own_t = done
        own_wall = time.time() - (time.monotonic() - own_t)
        self._answer(msg.round, str(m_b), own_wall)
        async with service.lock:
            self._settle(msg.round, kept, sac, msg.kept_axes, msg.sacrificed_axes,
                         (msg.outcome, m_b), own_t, msg.time)

    def _answer(self, rnd: int, outcome: str, wall: float) -> None:
        res = PurifyResult(self.link, rnd, outcome, wall)
        self.ctx.bus.publish(self.ctx.topics.proto(self.peer), res.TYPE, res.to_dict(),
                             sign_with=self.peer)

    # ------------------------------------------------------------------ both
    def tick(self) -> None:
        """Cut-off of stored pairs, device resets and request time-outs (caller holds the
        lock)."""
        now, wall = self.ctx.now(), time.time()
        cutoff = self.mem.max_pair_age_s
        for seq, pair in list(self.store.items()):
            if pair.generation != self.memory.pool.generation:
                del self.store[seq]
            elif pair.life_left(now, wall, cutoff) < 0:
                del self.store[seq]
                self._drop(pair)
                self.counts["purify_discarded_total"] += 1
                self.counts["purify_inputs_expired_total"] += pair.inputs
        for req in list(self.requests):
            if req.create.max_time_ms > 0 and now - req.t0 >= req.create.max_time_ms / 1000.0:
                self.requests.remove(req)
                self._reply(req.requester, Err(req.create_id, ErrCode.TIMEOUT))
        self._serve()

    def telemetry(self) -> PurificationTelemetry:
        t: PurificationTelemetry = {
            "purify_role": "leader" if self.leader else "follower",
            "purify_protocol": self.protocol, "purify_schedule": self.schedule, **self.counts,
            "purify_expected_kept": round(self.expected_kept, 3),
            "purify_pairs_held": len(self.store)}
        if self.last_plan is not None:
            t["purify_plan_rounds"] = self.last_plan.rounds
            t["purify_plan_fidelity"] = self.last_plan.state.fidelity()
            t["purify_plan_pairs_per_output"] = self.last_plan.pairs_consumed
        if self.delivered_fidelity:
            t["purify_delivered_fidelity_mean"] = (sum(self.delivered_fidelity)
                                                   / len(self.delivered_fidelity))
        return t


__all__ = ["PurePair", "Purifier", "keep_and_frame", "rotations", "round_model"]
