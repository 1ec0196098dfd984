"""End-to-end pairs over a path ``nodes[0] – repeaters … – nodes[H]`` (config ``[[paths]]``),
through any number of repeaters (docs/developers/decisions/0010-chains-of-repeaters.md).

**At a repeater** (:class:`Swapper`). As soon as both of its links on the path hold a pair in a
qubit that the node at the other side holds too (its HELD came: each end binds by itself and
EXPIREs what it could not bind, so a pair the repeater bound may be gone at the other side),
one of each goes through a Bell-state measurement on the QDevice
(:meth:`qnode.drivers.qdevice.QDevice.bell_measurement`): of the pairs young enough that the
path pair would still have ``delivered_hold_s`` + :data:`SWAP_MARGIN_S` before its cut-off,
the newest on a link to a path end and the oldest on a link to another repeater (both
repeaters of that link must pick the same pair; :meth:`Swapper._pick`). Both pairs leave the links'
inventories (consumed at both ends of each link: the report says so) and both ends of the path
get a :class:`~qnode.daemon.linklayer.messages.SwapResult`: which pair of each link it joined,
the raw outcome, each pair's announced Bell state and estimate at binding, how long the
repeater stored its halves and how long the links' other ends had stored theirs, and the
repeater's memory and measurement errors. It is signed with the link key when the end is the
repeater's link neighbour, else with the repeater's identity key. No repeater waits for another.

**At an end** (:class:`PathEnd`). A report of the repeater next to this end takes this end's
link pair out of its link (it is now part of a path pair); the reports of all repeaters are put
together by :class:`~qnode.daemon.klink.chain.ChainAssembler`, and a complete chain becomes a
path pair in the same qubit: its Bell state in the Pauli frame (the XOR of every link state and
outcome: tracked, not corrected, docs/physicists/memories-and-swapping.md), its weights at the
measurements (:func:`~qnode.daemon.klink.chain.compose`), and the age of the far end's half.
Its estimate at any later time adds this end's half's decay since it was bound and the far
end's half's decay since *it* was bound: the Bell weights of the memory's T1/T2 decay of both
halves, exact for a Bell-diagonal pair (:func:`decay`; both ends' memories are assumed alike).
The pair id is the sequence number of its pair on the first link: the same at both ends.
A link pair whose chain does not complete by the cut-off (a repeater further on failed or
dropped its pair) is discarded, and its qubit reused a guard time later.

A CREATE whose ``remote_node`` is the other end is served from the path's pairs, oldest first,
with OKs on ``reply/<requester>``: ``link`` = the path id, ``seq`` = the pair id, the frame's
Bell state, the estimate now, and the qubit. Each end serves its own applications; a delivered
qubit is the application's until the pair's cut-off (the far end may deliver its copy until
then). A pair is delivered only while at least ``[memory].delivered_hold_s`` is left before its
cut-off, so both ends' applications have their halves that long; path pairs older than
``max_pair_age_s`` are discarded, and their qubits reused a guard time later.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from qnode.daemon.klink.chain import Chain, ChainAssembler, HopReport, compose, compose_frame
from qnode.daemon.linklayer import (
    BELL_STATES,
    Ack,
    Create,
    CreateIdAllocator,
    Err,
    ErrCode,
    Ok,
    SwapResult,
    hold_ms,
)
from qnode.daemon.logs import RateLimitedLog
from qnode.daemon.quantum.bell_diagonal import (
    BellDiagonal,
    BellLike,
    PauliChannel,
    age_halves,
    apply_channels,
    bell,
)
from qnode.daemon.runtime.waiting import wait_event
from qnode.drivers.errors import InstrumentError

if TYPE_CHECKING:
    from qnode.daemon.bus.telemetry import PathTelemetry
    from qnode.daemon.klink.handle import LinkHandle
    from qnode.daemon.klink.memory import Bound, LinkMemory
    from qnode.daemon.runtime.config import MemoryConfig, PathConfig
    from qnode.daemon.runtime.context import NodeContext

log = logging.getLogger("qnode.swap")

#: A path pair's qubit is reused this long (s) after its cut-off, not at once (PathEnd.tick).
CUTOFF_GUARD_S = 0.1


def decay(state: BellDiagonal, waits_s: tuple[float, ...], t1_s: float, t2_s: float, *,
          frame: BellLike | None = None) -> BellDiagonal:
    """``state`` after its halves waited ``waits_s`` (s; one entry per half, at most two) in
    memories of T1/T2 (s; ``t1_s`` ≤ 0: no decay model, ``state`` unchanged).

    ``frame``: the Bell state the coefficients of ``state`` (and the result) are relative to
    (``"phi+"``: absolute). Given, the result is exact for a Bell-diagonal pair
    (:func:`~qnode.daemon.quantum.bell_diagonal.age_halves`: the per-half Pauli twirl plus the joint
    decay of the halves towards |00⟩, a·b/4 off the Ψ± weights and onto the Φ± ones in the lab's
    labels, a and b = 1 − e^{−t/T1} of each half). None: the per-half Pauli-twirl approximation,
    which needs no frame but over-estimates Ψ± (and under-estimates Φ±) pairs by a·b/4 when both
    halves decay; exact for one half.
    """
    if t1_s <= 0:
        return state
    if frame is None:
        for w in waits_s:
            if w > 0:
                state = apply_channels(state, PauliChannel.from_t1_t2(w, t1_s, t2_s))
        return state
    if len(waits_s) > 2:
        raise ValueError(f"waits_s: one wait per half (at most 2), got {waits_s!r}")
    wait_a, wait_b = (*waits_s, 0.0, 0.0)[:2]
    return age_halves(state.relabel(frame), max(0.0, wait_a), max(0.0, wait_b), t1_s=t1_s,
                      t2_s=t2_s).relabel(frame)


class SwapCounts(TypedDict):
    """:class:`Swapper`'s counters, reported under the same names
    (:class:`~qnode.daemon.bus.telemetry.PathTelemetry`)."""

    swaps_total: int
    swaps_failed_total: int


class Swapper:
    """The repeater's side of ``path`` (module docstring)."""

    def __init__(self, ctx: NodeContext, path: PathConfig, services: tuple[LinkHandle,
                 LinkHandle], memories: tuple[LinkMemory, LinkMemory], mem: MemoryConfig):
        self.ctx, self.path, self.services, self.memories = ctx, path, services, memories
        self.mem = mem
        #: this repeater's place on the path (nodes[hop]); services: its left and right link
        self.hop = path.nodes.index(ctx.node)
        self._wake = asyncio.Event()
        self.counts: SwapCounts = {"swaps_total": 0, "swaps_failed_total": 0}
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.last_fidelity: float | None = None

    def poke(self) -> None:
        """A link's qubits changed: try to swap."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await wait_event(self._wake, 0.2)
            self._wake.clear()
            while await self._swap_once():
                pass

    async def _swap_once(self) -> bool:
        s1, s2 = self.services
        m1, m2 = self.memories
        # the two links' locks in one order for every path through this node (sorted by link
        # id): two paths crossing it in opposite directions must not each hold one and wait
        first, second = sorted((s1, s2), key=lambda s: s.link)
        async with first.lock, second.lock:
            m1.release_gone(s1.end)
            m2.release_gone(s2.end)
            now = time.monotonic()
            b1, b2 = self._pick(0, m1, now), self._pick(1, m2, now)
            if b1 is None or b2 is None:
                return False     # the next bound pair pokes again
            m1.take(b1.seq)
            m2.take(b2.seq)
            try:
                outcome, bsm_at = await m1.pool.call(
                    lambda d: d.bell_measurement_at(b1.qubit, b2.qubit))
            except InstrumentError as exc:
                self.counts["swaps_failed_total"] += 1
                log.warning("path %s: Bell-state measurement failed: %s", self.path.id, exc,
                            extra={"path": self.path.id, "error": str(exc)})
                await s1.expire_pair(b1.seq)
                await s2.expire_pair(b2.seq)
                return True
            finally:
                m1.give_back(b1.qubit)
                m2.give_back(b2.qubit)
            s1.end.consume([b1.seq])
            s2.end.consume([b2.seq])
            s1.changed()
            s2.changed()
            # the BSM's time is the device's (its reply less its AGE?), not when this task woke
            self._announce(b1, b2, outcome, bsm_at, m1, m2)
        return True

    def _pick(self, side: int, m: LinkMemory, now: float) -> Bound | None:
        """The confirmed pair of link ``side`` (0: towards ``nodes[hop - 1]``) to swap, among
        those whose halves are young enough that the path pair would still have
        ``delivered_hold_s`` + :data:`SWAP_MARGIN_S` before its cut-off (a path pair lives as
        long as its oldest half): next to a path end the newest (the end only follows the
        report, and the freshest pair decays least), between two repeaters the oldest, the
        choice the repeater at the link's other end makes too (each must join the same pair
        of the link, or both chains break). Swapping the oldest everywhere, as before,
        joined pairs about to expire to fresh ones: the ends discarded the result at once,
        or had dropped their half before the report came."""
        cutoff = self.mem.max_pair_age_s
        need = self.mem.delivered_hold_s + SWAP_MARGIN_S
        usable = [b for b in m.confirmed()
                  if cutoff <= 0 or cutoff - max(now - b.bound_at, m.peer_age(b.seq)) >= need]
        if not usable:
            return None
        neighbour = self.hop - 1 if side == 0 else self.hop + 1
        at_end = neighbour in (0, len(self.path.nodes) - 1)
        return usable[-1] if at_end else usable[0]

    def _announce(self, b1: Bound, b2: Bound, outcome: str, bsm_at: float, m1: LinkMemory,
                  m2: LinkMemory) -> None:
        """SWAP_RES to both ends for the BSM of ``b1``, ``b2`` that ran at ``bsm_at``
        (monotonic s): the link pairs' estimates at binding, this repeater's halves' storage
        and its link neighbours' halves' ages at the BSM."""
        since = max(0.0, time.monotonic() - bsm_at)
        mem = self.mem
        msg = SwapResult(
            self.path.id, self.hop, self.services[0].link, b1.seq, self.services[1].link,
            b2.seq, outcome, _bell_name(b1.bell_state), _bell_name(b2.bell_state),
            _weights(m1.state_of(b1, b1.bound_at)), _weights(m2.state_of(b2, b2.bound_at)),
            max(0.0, bsm_at - b1.bound_at), max(0.0, bsm_at - b2.bound_at),
            max(0.0, m1.peer_age(b1.seq) - since), max(0.0, m2.peer_age(b2.seq) - since),
            mem.t1_s if mem.t1_s > 0 else 0.0, mem.t2_s if mem.t1_s > 0 else 0.0,
            mem.gate_fidelity_2q, 1.0 - mem.readout_error, time.time() - since)
        report = report_of(msg)
        joined = compose((report,))
        frame = BELL_STATES[int(compose_frame((report,)))]
        self.counts["swaps_total"] += 1
        self.outcomes[outcome] += 1
        self.last_fidelity = joined.fidelity(frame)
        neighbours = {s.peer for s in self.services}
        for end in self.path.ends:
            if end in neighbours:
                self.ctx.bus.publish(self.ctx.topics.ll(end), msg.TYPE, msg.to_dict(),
                                     sign_with=end)
            else:   # no link key with a far end: the repeater's identity signature
                self.ctx.bus.publish(self.ctx.topics.ll(end), msg.TYPE, msg.to_dict(),
                                     node_sign=True)
        log.info("path %s: swapped %s %d + %s %d (BSM %s), joined F %.4f", self.path.id,
                 self.services[0].link, b1.seq, self.services[1].link, b2.seq, outcome,
                 self.last_fidelity,
                 extra={"path": self.path.id, "hop": self.hop, "left_seq": b1.seq,
                        "right_seq": b2.seq, "outcome": outcome,
                        "fidelity": round(self.last_fidelity, 5)})

    def telemetry(self) -> PathTelemetry:
        t: PathTelemetry = {"role": "repeater", "ends": list(self.path.ends), **self.counts,
                            "bsm_outcomes": dict(self.outcomes)}
        if self.last_fidelity is not None:
            t["fidelity_estimate"] = self.last_fidelity
        return t


def _bell_name(value: BellLike) -> str:
    return BELL_STATES[int(bell(value))]


def _weights(state: BellDiagonal) -> tuple[float, float, float, float]:
    """Absolute Bell weights for the wire: rounded to 1e-9, summing to 1."""
    w = tuple(round(x, 9) for x in state.coefficients)
    total = sum(w)
    return tuple(x / total for x in w)  # type: ignore[return-value]


def report_of(msg: SwapResult) -> HopReport:
    """The :class:`~qnode.daemon.klink.chain.HopReport` a SWAP_RES carries."""
    return HopReport(
        msg.hop, (msg.left_link, msg.left_seq), (msg.right_link, msg.right_seq),
        bell(msg.outcome), bell(msg.left_bell), bell(msg.right_bell),
        BellDiagonal(msg.left_weights), BellDiagonal(msg.right_weights), msg.left_wait_s,
        msg.right_wait_s, msg.left_age_s, msg.right_age_s, msg.t1_s, msg.t2_s,
        msg.gate_fidelity, msg.meas_fidelity, msg.time)


@dataclass
class PathPair:
    pair_id: int
    seq: int                 # this end's pair on its link
    qubit: int
    bell_state: str          # in the Pauli frame
    weights: BellDiagonal    # after the measurements (absolute), the ends' halves not decayed
    own_bound_at: float      # monotonic s
    remote_age_s: float      # the far end's half's age at its neighbour's measurement
    bsm_at: float            # monotonic s, this end's view of that measurement's time


@dataclass
class _Waiting:
    """This end's link pair, taken out of its link by its neighbour's report, until the rest
    of its chain comes."""

    qubit: int
    bound_at: float          # monotonic s


class PathEndCounts(TypedDict):
    """:class:`PathEnd`'s counters, reported under the same names
    (:class:`~qnode.daemon.bus.telemetry.PathTelemetry`)."""

    pairs_received_total: int
    pairs_delivered_total: int
    pairs_discarded_total: int
    chains_incomplete_total: int
    swap_orphaned_total: int
    swap_reports_refused_total: int
    send_overloaded_total: int


#: life (s) a path pair must have left beyond ``[memory].delivered_hold_s`` for a repeater to
#: make it: its report's way to the ends, and theirs to each other (HOLDS)
SWAP_MARGIN_S = 0.1

#: without a cut-off (``max_pair_age_s`` ≤ 0), a link pair waits this long (s) for the rest
#: of its chain
CHAIN_WAIT_S = 10.0


class PathEnd:
    """One end of ``path`` (module docstring); ``memory`` is this end's link memory."""

    def __init__(self, ctx: NodeContext, path: PathConfig, service: LinkHandle,
                 memory: LinkMemory, mem: MemoryConfig):
        self.ctx, self.path, self.service, self.memory, self.mem = ctx, path, service, memory, mem
        #: 0 at the first node, else the last; the far end; the reporter next to this end
        self.side = 0 if path.nodes[0] == ctx.node else len(path.nodes) - 1
        self.remote = path.nodes[-1] if self.side == 0 else path.nodes[0]
        self.neighbour_hop = 1 if self.side == 0 else len(path.nodes) - 2
        self.assembler = ChainAssembler(path.links)
        self._rlog = RateLimitedLog(log)   # refused and orphaned reports come from outside
        self.waiting: dict[int, _Waiting] = {}     # this end's link seq -> its pair
        self.pairs: collections.OrderedDict[int, PathPair] = collections.OrderedDict()
        self.create_ids = CreateIdAllocator()
        self._requests: list[tuple[int, Create, str, float, int]] = []  # cid, create, who, t, n
        self.counts: PathEndCounts = {"pairs_received_total": 0, "pairs_delivered_total": 0,
                                      "pairs_discarded_total": 0, "chains_incomplete_total": 0,
                                      "swap_orphaned_total": 0,
                                      "swap_reports_refused_total": 0,
                                      "send_overloaded_total": 0}
        self.delivered_fidelity: collections.deque[float] = collections.deque(maxlen=1000)
        #: called after a pair arrived (the application service's allocator or follower)
        self.listeners: list[Callable[[], None]] = []
        #: the fidelity of the last pair at its arrival (an estimate of what fresh pairs have)
        self.last_fidelity: float | None = None

    def estimate(self, pair: PathPair, now: float) -> BellDiagonal:
        """Absolute Bell weights of ``pair`` now (module docstring)."""
        since = max(0.0, now - pair.bsm_at)
        return decay(pair.weights, (max(0.0, now - pair.own_bound_at),
                                    pair.remote_age_s + since), self.mem.t1_s, self.mem.t2_s,
                     frame="phi+")   # the weights are absolute (the frame is not corrected)

    def refuse(self, sender: str, msg: SwapResult, report: HopReport) -> str | None:
        """Why a SWAP_RES from ``sender`` (``report``: its :func:`report_of`) is not this
        path's (None: it is)."""
        if msg.path != self.path.id:
            return f"path {msg.path!r} is not {self.path.id!r}"
        if not 1 <= msg.hop < len(self.path.nodes) - 1 or self.path.nodes[msg.hop] != sender:
            return f"{sender!r} is not the repeater at hop {msg.hop} of path {self.path.id!r}"
        return self.assembler.check(report)

    async def on_swap_result(self, msg: SwapResult, sender: str) -> None:
        """A repeater's SWAP_RES; the caller holds the link service's lock."""
        report = report_of(msg)
        why = self.refuse(sender, msg, report)
        if why is not None:
            self.counts["swap_reports_refused_total"] += 1
            self._rlog("refused", logging.WARNING, "path %s: SWAP_RES from %s refused: %s",
                       self.path.id, sender, why[:300], path=self.path.id, sender=sender,
                       reason=why[:300])
            return
        if report.hop == self.neighbour_hop:
            mine = report.left if self.side == 0 else report.right
            if not self._take(mine[1]):
                return
        chain = self.assembler.add(report)
        if chain is not None:
            self._arrived(chain)

    def _take(self, seq: int) -> bool:
        """Take this end's link pair ``seq`` out of its link for its chain; False (counted)
        if it is not held here."""
        bound = self.memory.take(seq)
        if bound is None or bound.generation != self.memory.pool.generation:
            self.counts["swap_orphaned_total"] += 1
            if bound is not None:
                self.memory.give_back(bound.qubit)
            self._rlog("orphaned", logging.WARNING,
                       "path %s: SWAP_RES for pair %d of %s, which is not held here",
                       self.path.id, seq, self.service.link, path=self.path.id,
                       link=self.service.link, seq=seq)
            return False
        self.service.end.consume([seq])
        self.service.changed()
        self.waiting[seq] = _Waiting(bound.qubit, bound.bound_at)
        return True

    def _arrived(self, chain: Chain) -> None:
        now = self.ctx.now()
        mine = chain.first if self.side == 0 else chain.last
        own = self.waiting.pop(mine[1], None)
        if own is None:   # refused or discarded meanwhile: the chain has no qubit here
            self.counts["swap_orphaned_total"] += 1
            return
        far = chain.reports[-1] if self.side == 0 else chain.reports[0]
        remote_age = far.right_age_s if self.side == 0 else far.left_age_s
        bsm_at = now - max(0.0, time.time() - far.time)
        pair = PathPair(chain.pair_id, mine[1], own.qubit, BELL_STATES[int(chain.frame())],
                        chain.state(), own.bound_at, remote_age, bsm_at)
        self.pairs[pair.pair_id] = pair
        self.counts["pairs_received_total"] += 1
        self.last_fidelity = self.estimate(pair, now).fidelity(pair.bell_state)
        self._serve(now)
        for notify in self.listeners:
            notify()

    async def request(self, create: Create, requester: str) -> None:
        now = self.ctx.now()
        cid = self.create_ids.allocate(r[0] for r in self._requests)
        if create.tpe != "K":
            self._reply(requester, Err(cid, ErrCode.UNSUPP))
            return
        self._reply(requester, Ack(cid))
        self._requests.append((cid, create, requester, now, 0))
        self._serve(now)

    def hand_over(self, other: PathEnd) -> int:
        """Give this end's waiting CREATEs (their create ids and the pairs still owed) to
        ``other``, an end of another path to the same remote (a re-route), which serves them
        from its pairs; returns how many. This end keeps its pairs until their cut-off, and
        its repeaters' reports: its held pairs are delivered by neither end."""
        moved, self._requests = self._requests, []
        other._requests.extend(moved)    # noqa: SLF001 (the same class)
        if moved:
            other._serve(self.ctx.now())  # noqa: SLF001
        return len(moved)

    def _reply(self, requester: str, m: Ack | Ok | Err) -> None:
        self.ctx.bus.publish(self.ctx.topics.reply(requester), m.TYPE, m.to_dict())

    def _serve(self, now: float) -> None:
        while self._requests and self.pairs:
            cid, create, who, t0, n = self._requests[0]
            pick = None
            for pid, pair in self.pairs.items():
                # the far end drops its copy at the cut-off: leave the application its hold
                if self.cutoff_at(pair, now) - now < self.mem.delivered_hold_s:
                    continue
                state = self.estimate(pair, now)
                if state.fidelity(pair.bell_state) >= create.min_fidelity:
                    pick = (pid, pair, state)
                    break
            if pick is None:
                return
            pid, pair, state = pick
            del self.pairs[pid]
            goodness = round(state.fidelity(pair.bell_state), 6)
            self._reply(who, Ok(cid, self.path.id, pid, pair.bell_state, goodness,
                                create.purpose_id, self.remote, "K",
                                int(time.monotonic_ns() * 1000), qubit=pair.qubit,
                                hold_ms=hold_ms(self.cutoff_at(pair, now) - now)))
            self.counts["pairs_delivered_total"] += 1
            self.delivered_fidelity.append(goodness)
            # the far end keeps its copy until the cut-off: so does this qubit (+ a guard)
            self.memory.hold(pair.qubit, self.cutoff_at(pair, now) + CUTOFF_GUARD_S)
            n += 1
            if n >= create.number:
                self._requests.pop(0)
            else:
                self._requests[0] = (cid, create, who, t0, n)

    def cutoff_at(self, pair: PathPair, now: float) -> float:
        """When ``pair`` reaches the cut-off (monotonic s; inf without one): its older half
        is then ``max_pair_age_s`` old."""
        cutoff = self.mem.max_pair_age_s
        if cutoff <= 0:
            return float("inf")
        oldest = max(now - pair.own_bound_at, now - pair.bsm_at + pair.remote_age_s)
        return now + cutoff - oldest

    def tick(self) -> None:
        """Time-outs and the cut-off of path pairs. A discarded pair's qubit is reused only
        ``CUTOFF_GUARD_S`` later: the far end, whose clock and view of the ages differ by
        milliseconds, may still hand its copy to an application until its own cut-off."""
        now = self.ctx.now()
        for pid, pair in list(self.pairs.items()):
            if self.cutoff_at(pair, now) < now:
                del self.pairs[pid]
                self.memory.hold(pair.qubit, now + CUTOFF_GUARD_S)
                self.counts["pairs_discarded_total"] += 1
        wait = self.mem.max_pair_age_s if self.mem.max_pair_age_s > 0 else CHAIN_WAIT_S
        for seq, w in list(self.waiting.items()):
            if now - w.bound_at > wait:   # the rest of its chain did not come in time
                del self.waiting[seq]
                self.memory.hold(w.qubit, now + CUTOFF_GUARD_S)
                self.counts["chains_incomplete_total"] += 1
        self.assembler.expire(time.time() - wait - CUTOFF_GUARD_S)
        for req in list(self._requests):
            cid, create, who, t0, _ = req
            if create.max_time_ms > 0 and now - t0 >= create.max_time_ms / 1000.0:
                self._requests.remove(req)
                self._reply(who, Err(cid, ErrCode.TIMEOUT))
        self._serve(now)

    def telemetry(self) -> PathTelemetry:
        t: PathTelemetry = {"role": "end", "remote": self.remote, **self.counts,
                            "pairs_held": len(self.pairs), "chains_waiting": len(self.waiting),
                            "swap_reports_evicted_total": self.assembler.evicted}
        if self.delivered_fidelity:
            t["delivered_fidelity_mean"] = sum(self.delivered_fidelity) / len(
                self.delivered_fidelity)
        return t

