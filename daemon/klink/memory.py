"""A memory node's qubits at work on its K links: binding heralded pairs, test pairs, estimates.

**Qubits.** :class:`QubitPool` owns the qubits of one QDevice (QDEVICE/1, :mod:`qnode.drivers.
qdevice`). At every (re)connect the device is reset and the pool allocates the qubits it was
configured for (``QubitPool.calibrate`` runs on the instrument's thread as its calibration); a
reconnect bumps :attr:`QubitPool.generation`, and pairs bound under an older generation are gone.

**Binding rule** (:class:`LinkMemory`, one per K link). A memory holds what its qubits hold, no
more: the link layer's inventory is the set of pairs bound at *both* ends. After each herald
batch, the new pairs are taken in sequence order:

1. *test pairs* — sequence numbers the rule :func:`test_basis` picks (a hash of the sequence
   number, identical at both ends, fraction ``test_fraction``) — are bound to the link's test
   qubit, measured at once in the basis the rule names, and consumed (no message: the peer
   does the same); the outcomes go to the peer in ``TESTS`` messages;
2. the next ones bind the link's free storage qubits (``ENT <q> <link> T<herald time>``);
3. every other live pair is EXPIREd to the peer.

The two ends decide independently and may disagree (one has a free qubit, the other not); the
EXPIRE of either one removes the pair at both, so a pair survives only if both ends bound it.
A storage qubit is released when its pair leaves the inventory (expired, delivered, swapped).

**Estimate** (:class:`LinkTomography`). Matched test outcomes give the error rate of each Pauli
basis relative to the announced Bell state. Read-out errors are corrected — each end reports its
read-out error e, and a correlation ⟨σσ⟩ is measured as (1 − 2e_a)(1 − 2e_b) times its true
value — and :func:`~.estimators.bell_diagonal_from_qber` gives the Bell-diagonal state relative
to the announced one, with its standard error. Until every basis has ``min_tests`` pairs the
configured prior (a Werner state of ``[memory].fidelity``) stands. The tests run within a
millisecond of the herald, so they estimate the state at its herald; the stored pairs' decay
from there is :func:`~.bell_diagonal.age` with the memory's T1/T2.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from qnode.daemon.bus.telemetry import qber_fields
from qnode.daemon.linklayer import (
    BELL_STATES,
    MAX_TESTS,
    SEQ_MOD,
    Held,
    LinkEnd,
    Message,
    TestOutcomes,
    seq_add,
    seq_diff,
    seq_lt,
)
from qnode.daemon.quantum.bell_diagonal import (
    BellDiagonal,
    age,
    age_halves,
    dense_coding_capacity,
)
from qnode.daemon.quantum.estimators import (
    BELL_SIGNS,
    Estimate,
    bell_diagonal_from_qber,
    physical_qber,
)
from qnode.daemon.runtime.waiting import wait_event
from qnode.drivers.errors import DeviceError, InstrumentError

if TYPE_CHECKING:
    from qnode.daemon.bus.telemetry import LinkMemoryTelemetry
    from qnode.daemon.klink.handle import LinkHandle
    from qnode.daemon.runtime.supervisor import ManagedInstrument
    from qnode.drivers.qdevice import PairsAt

log = logging.getLogger("qnode.qmemory")

BASES = "XYZ"
#: Matched test pairs kept waiting for the peer's outcome (per link; oldest dropped beyond).
MAX_UNMATCHED = 20_000
#: Test pairs measured per herald batch at most (two batched QDevice round trips).
MAX_TESTS_PER_BATCH = 128
#: Storage binds tried per herald batch beyond the free qubits (a failing ENT is not retried
#: down the whole batch).
EXTRA_BIND_ATTEMPTS = 2


#: a test pair picked in a batch: seq, basis, announced Bell state, herald time (ps)
TestPick = tuple[int, str, str, int]


def _mix32(x: int) -> int:
    """A 32-bit integer hash (the finaliser of MurmurHash3): spreads consecutive numbers."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_basis(seq: int, fraction: float) -> str | None:
    """The test rule both ends of a link apply: the basis (X, Y or Z) in which pair ``seq`` is
    measured as a test pair, or None when it is not one (a fraction ``fraction`` of all pairs,
    spread by a hash of ``seq``; the three bases equally often)."""
    h = _mix32(seq)
    if h >= fraction * 4294967296.0:
        return None
    return BASES[_mix32(h ^ 0x5BD1E995) % 3]


test_basis.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def split_test_picks(tests: list[TestPick]) -> tuple[list[TestPick], list[TestPick]]:
    """(measured, skipped) when there are more test pairs than a batch measures
    (``MAX_TESTS_PER_BATCH``): the ones with the smallest hash of their ``seq`` are measured,
    in their order. Both ends prefer the same pairs, so an end that takes more pairs at a time
    (a busy repeater) still measures mostly pairs its faster peer measured too; taking the
    first ones in order, about half of a busy end's test pairs found no partner outcome. The
    hash is independent of the pairs' states, so the choice does not bias the estimate."""
    order = sorted(range(len(tests)), key=lambda i: _mix32(tests[i][0]))
    keep = set(order[:MAX_TESTS_PER_BATCH])
    return ([t for i, t in enumerate(tests) if i in keep],
            [t for i, t in enumerate(tests) if i not in keep])


# ------------------------------------------------------------------------------ qubits

class QubitPool:
    """The qubits of the QDevice ``name`` (``instrument()`` gives its supervised instrument):
    ``sizes`` maps an owner (a link id) to how many qubits it gets. ``calibrate`` (on the
    instrument's thread, after every connect) resets the device and allocates them; the event
    loop then hands them out with :meth:`qubits_of`."""

    def __init__(self, name: str, instrument: Callable[[], ManagedInstrument],
                 sizes: dict[str, int]):
        self.name, self._instrument, self.sizes = name, instrument, dict(sizes)
        self.generation = 0
        self._qubits: dict[str, list[int]] = {}

    def calibrate(self, device: Any) -> None:
        """``*RST`` and ``ALLOC`` every qubit the owners need (QDEVICE/1); raises when the
        device has fewer qubits than configured."""
        count = device.qubits()
        need = sum(self.sizes.values())
        if count.capacity < need:
            raise DeviceError(f"has {count.capacity} qubits; the memory needs {need} "
                              f"({self.sizes}, [memory] qubits_per_link + 1 test qubit per link)",
                              instrument=self.name, command="QUBITS?",
                              address=str(getattr(getattr(device, "transport", None),
                                                  "address", "?")))
        device.reset()
        qubits = {owner: [device.alloc() for _ in range(n)] for owner, n in self.sizes.items()}
        self._qubits = qubits
        self.generation += 1

    def qubits_of(self, owner: str) -> list[int]:
        return list(self._qubits.get(owner, ()))

    async def call(self, fn: Any, *args: Any) -> Any:
        """``fn(driver, *args)`` on the device's thread."""
        return await self._instrument().call(fn, *args)


# ------------------------------------------------------------------------------ estimates

class LinkTomography:
    """Matched test outcomes of one link → its Bell-diagonal state relative to the announced
    state (module docstring). ``prior_fidelity``: the Werner prior used until ``min_tests``
    pairs of every basis are in.

    The estimate follows a link that changes (a degraded source, a repair): the tests come in
    segments of ``segment_tests`` per basis; when a segment's raw error fraction in some basis
    differs from that of the tests before it by more than :attr:`CHANGE_Z` standard errors of
    the difference, the estimate restarts from that segment (:attr:`restarts`, :attr:`changed`).
    At z = 5 a steady link restarts about once in 600 000 segments (three bases, two-sided);
    a drop of the fidelity from 0.95 to 0.80 (X and Y error fractions up by 0.15) is caught
    in the first whole segment after it.
    """

    #: standard errors of the difference between a segment and the tests before it that count
    #: as a change
    CHANGE_Z = 5.0

    def __init__(self, prior_fidelity: float, min_tests: int = 200, segment_tests: int = 500):
        self.prior = BellDiagonal.werner(prior_fidelity)
        self.min_tests = min_tests
        self.segment_tests = segment_tests
        self.n = np.zeros(3, np.int64)          # since the last restart (the segment included)
        self.errors = np.zeros(3, np.int64)
        self.flip = np.zeros(3)               # Σ of each pair's parity-flip probability
        self._seg = (np.zeros(3, np.int64), np.zeros(3, np.int64), np.zeros(3))
        self.restarts = 0
        #: the last restart: {"at": Unix s, "basis": …, "before": q, "after": q, "z": …}
        self.changed: dict[str, Any] | None = None
        self._cache: tuple[BellDiagonal, float] | None = None

    def add(self, basis: str, bell_state: str, outcome_a: int, outcome_b: int,
            readout_a: float, readout_b: float) -> None:
        b = BASES.index(basis)
        sign = BELL_SIGNS[bell_state][b]
        product = (1 - 2 * outcome_a) * (1 - 2 * outcome_b)
        error = int(product != sign)
        flip = readout_a + readout_b - 2 * readout_a * readout_b
        for n, errors, flips in ((self.n, self.errors, self.flip), self._seg):
            n[b] += 1
            errors[b] += error
            flips[b] += flip
        self._cache = None
        if (self._seg[0] >= self.segment_tests).all():
            self._end_segment()

    def _end_segment(self) -> None:
        seg_n, seg_err, seg_flip = self._seg
        before_n = self.n - seg_n
        if (before_n >= self.segment_tests).all():
            q_seg = seg_err / seg_n
            q_before = (self.errors - seg_err) / before_n
            var = (np.maximum(q_seg * (1 - q_seg), 1.0 / seg_n) / seg_n
                   + np.maximum(q_before * (1 - q_before), 1.0 / before_n) / before_n)
            z = np.abs(q_seg - q_before) / np.sqrt(var)
            b = int(np.argmax(z))
            if z[b] > self.CHANGE_Z:
                self.n, self.errors, self.flip = seg_n.copy(), seg_err.copy(), seg_flip.copy()
                self.restarts += 1
                self.changed = {"at": time.time(), "basis": BASES[b],
                                "before": float(q_before[b]), "after": float(q_seg[b]),
                                "z": float(z[b])}
        self._seg = (np.zeros(3, np.int64), np.zeros(3, np.int64), np.zeros(3))

    @property
    def ready(self) -> bool:
        return bool((self.n >= self.min_tests).all())

    def qbers(self) -> tuple[list[float], list[float]]:
        """Read-out-corrected QBER per basis (X, Y, Z) and its standard error."""
        qs, sigmas = [], []
        for b in range(3):
            n = max(int(self.n[b]), 1)
            q_raw = self.errors[b] / n
            p = self.flip[b] / n
            scale = 1.0 - 2.0 * p
            qs.append(float((q_raw - p) / scale))
            sigmas.append(float(math.sqrt(max(q_raw * (1 - q_raw), 1.0 / n) / n) / scale))
        return qs, sigmas

    def estimate(self) -> tuple[BellDiagonal, float]:
        """(state relative to the announced Bell state, σ of its fidelity); the prior (σ nan)
        until ready."""
        if not self.ready:
            return self.prior, math.nan
        if self._cache is None:
            qs, sig = self.qbers()
            # counting noise can push a corrected QBER just below 0: clip (σ stays)
            q = [Estimate(min(max(v, 0.0), 1.0), e) for v, e in zip(qs, sig, strict=True)]
            est = bell_diagonal_from_qber(q_x=q[0], q_y=q[1], q_z=q[2])
            state = BellDiagonal(tuple(est.weights[k] for k in BELL_STATES))  # type: ignore[arg-type]
            self._cache = (state, est.sigma["phi+"])
        return self._cache


# ------------------------------------------------------------------------------ one link

@dataclass
class Bound:
    """A pair of the link held in a storage qubit."""

    seq: int
    qubit: int
    bell_state: str          # announced by the station (the pair's frame)
    bound_at: float          # monotonic s, when the device ran the ENT (reply less its AGE?)
    generation: int


class MemoryCounts(TypedDict):
    """:class:`LinkMemory`'s counters, reported under the same names
    (:class:`~qnode.daemon.bus.telemetry.LinkMemoryTelemetry`)."""

    bound_total: int
    bind_failed_total: int
    tests_total: int
    tests_matched_total: int
    tests_failed_total: int
    tests_skipped_total: int


class LinkMemory:
    """The qubits of one K link at one end (module docstring). ``qubits``: storage qubits
    (all but the last of the pool's qubits for this link; the last is the test qubit)."""

    def __init__(self, link: str, pool: QubitPool, *, test_fraction: float,
                 readout_error: float, t1_s: float, t2_s: float, prior_fidelity: float,
                 min_tests: int = 200):
        self.link, self.pool = link, pool
        self.test_fraction = test_fraction
        self.readout_error = readout_error
        self.t1_s, self.t2_s = t1_s, t2_s
        self.tomography = LinkTomography(prior_fidelity, min_tests)
        self.bound: dict[int, Bound] = {}
        self.lent: set[int] = set()          # qubits handed on (a path's pair) with the pair
        self._held: list[tuple[float, int]] = []   # (until, qubit): delivered to an application
        self._own: OrderedDict[int, tuple[str, str, int]] = OrderedDict()   # seq -> basis, bell, m
        self._peer: OrderedDict[int, tuple[str, int, float]] = OrderedDict()  # seq -> basis, m, e
        self._outbox: list[tuple[int, str, str]] = []
        self._held_new: list[tuple[int, float]] = []   # (seq, Unix time) not yet in a HELD
        self._pending = False                  # pairs accepted that the rule has not seen
        self._pending_from = self._pending_to = 0
        self._processed_to: int | None = None  # the rule has seen every pair before this
        self._binding: set[int] = set()        # ENT in flight
        self._wake = asyncio.Event()
        self.peer_held: OrderedDict[int, float] = OrderedDict()  # seq -> the peer's bind time
        self.counts: MemoryCounts = {
            "bound_total": 0, "bind_failed_total": 0, "tests_total": 0,
            "tests_matched_total": 0, "tests_failed_total": 0, "tests_skipped_total": 0}

    # ------------------------------------------------------------------ qubits
    def _storage(self) -> list[int]:
        return self.pool.qubits_of(self.link)[:-1]

    def _test_qubit(self) -> int | None:
        qs = self.pool.qubits_of(self.link)
        return qs[-1] if qs else None

    def free_qubits(self) -> list[int]:
        used = {b.qubit for b in self.bound.values()} | self.lent
        return [q for q in self._storage() if q not in used]

    def release_gone(self, end: LinkEnd) -> None:
        """Forget bound pairs that left the inventory (or a previous device generation)."""
        for seq, b in list(self.bound.items()):
            rec = end.pair(seq)
            if b.generation != self.pool.generation or rec is None or rec.status != "live":
                del self.bound[seq]

    def take(self, seq: int) -> Bound | None:
        """Hand pair ``seq``'s qubit on (to a swap or a path): busy until :meth:`give_back`."""
        b = self.bound.pop(seq, None)
        if b is not None:
            self.lent.add(b.qubit)
        return b

    def give_back(self, qubit: int) -> None:
        self.lent.discard(qubit)

    def hold(self, qubit: int, until: float) -> None:
        """A delivered pair's qubit: the application's until ``until`` (monotonic s)."""
        self.lent.add(qubit)
        self._held.append((until, qubit))

    def held_until(self, qubit: int) -> float | None:
        """When the hold of ``qubit`` ends (monotonic s), or None if it is not held."""
        return next((u for u, q in self._held if q == qubit), None)

    def rehold(self, qubit: int, until: float) -> None:
        """Move the end of ``qubit``'s hold to ``until`` (monotonic s; e.g. past an
        application's running gates, so no new pair is bound into it meanwhile)."""
        self._held = [(until if q == qubit else u, q) for u, q in self._held]

    def release(self, qubit: int) -> None:
        """End the hold of ``qubit`` now: it goes back to the pool."""
        if any(q == qubit for _, q in self._held):
            self._held = [h for h in self._held if h[1] != qubit]
            self.give_back(qubit)

    def tick(self, now: float) -> None:
        """Held qubits whose time is up go back to the pool."""
        if self._held:
            due = [h for h in self._held if h[0] <= now]
            for h in due:
                self._held.remove(h)
                self.give_back(h[1])

    def state_of(self, b: Bound, now: float, *, halves: int = 1) -> BellDiagonal:
        """Absolute Bell weights of bound pair ``b`` now: the link's estimate in the pair's frame,
        ``halves`` of it decayed since binding (1: this end's half only)."""
        rel, _ = self.tomography.estimate()
        state = rel.relabel(b.bell_state)
        if self.t1_s > 0 and now > b.bound_at:   # exact Bell weights, in the lab's labels
            state = age(state, now - b.bound_at, t1_s=self.t1_s, t2_s=self.t2_s,
                        halves=2 if halves == 2 else 1)
        return state

    def pair_state(self, b: Bound, now: float) -> BellDiagonal:
        """Absolute Bell weights of bound pair ``b`` now, both halves decayed: this end's since
        its bind, the peer's since the peer's (its HELD time; this end's bind time while no
        HELD came). The ends bind a pair at different moments — the one that binds first has
        its half decaying longer — and the state is exact for a Bell-diagonal pair
        (:func:`~qnode.daemon.quantum.bell_diagonal.age_halves`)."""
        rel, _ = self.tomography.estimate()
        state = rel.relabel(b.bell_state)
        if self.t1_s <= 0:
            return state
        own = max(0.0, now - b.bound_at)
        peer = self.peer_age(b.seq) if b.seq in self.peer_held else own
        return age_halves(state, own, peer, t1_s=self.t1_s, t2_s=self.t2_s)

    # ------------------------------------------------------------------ heralds
    def note_new(self, first: int, count: int) -> None:
        """``count`` pairs from ``first`` were accepted (caller holds the link's lock); the
        worker (:meth:`run`) applies the binding rule to them."""
        if count:
            if not self._pending:
                self._pending_from = first
            self._pending_to = seq_add(first, count)
            self._pending = True
            self._wake.set()

    async def run(self, service: LinkHandle) -> None:
        """The worker: whenever pairs are new, apply the binding rule to all of them at once
        (test pairs measured and free qubits bound in **one** batched QDevice round trip,
        made outside the link's lock), then EXPIRE the rest and send HELD."""
        while True:
            await wait_event(self._wake, 0.5)
            self._wake.clear()
            if self._pending:
                await self._process(service)

    async def _process(self, service: LinkHandle) -> None:
        end = service.end
        async with service.lock:
            first, stop = self._pending_from, self._pending_to
            self._pending = False
            self.release_gone(end)
            tests: list[TestPick] = []
            binds: list[tuple[int, int, str, int]] = []    # seq, qubit, bell, herald time
            free = self.free_qubits()
            budget = len(free) + EXTRA_BIND_ATTEMPTS
            # the live pairs among the new ones (not every number of the range: a signed jump
            # makes a range of up to 2^32 numbers, and this runs under the link's lock)
            live = end.live_seqs()
            for seq in live[(live - first) % SEQ_MOD < seq_diff(stop, first)].tolist():
                rec = end.pair(seq)
                if rec is None or rec.status != "live":
                    continue
                basis = test_basis(seq, self.test_fraction)
                if basis is not None:
                    tests.append((seq, basis, rec.bell_state, rec.time_ps))
                elif free and budget > 0:
                    budget -= 1
                    binds.append((seq, free.pop(0), rec.bell_state, rec.time_ps))
            if len(tests) > MAX_TESTS_PER_BATCH:
                tests, skipped = split_test_picks(tests)
                end.consume(t[0] for t in skipped)
                self._outbox.extend((seq, basis, "-") for seq, basis, _, _ in skipped)
                self.counts["tests_skipped_total"] += len(skipped)
            end.consume(t[0] for t in tests)
            self._binding = {b[0] for b in binds}
            self._processed_to = stop
        tq = self._test_qubit()
        outcomes: list[int | None] = [None] * len(tests)
        bells: list[str | None] = [None] * len(binds)
        bound_ats: list[float | None] = [None] * len(binds)
        if (tests or binds) and tq is not None:
            measure = [(tq, t, basis) for _, basis, _, t in tests]
            bind = [(q, t) for _, q, _, t in binds]
            try:
                done: PairsAt = await self.pool.call(
                    lambda d: d.pairs_at(self.link, measure=measure, bind=bind))
                outcomes, bells, bound_ats = done.outcomes, done.bells, done.bound_at
            except InstrumentError as exc:
                log.warning("link %s: QDevice batch failed: %s", self.link, exc,
                            extra={"link": self.link, "error": str(exc)})
        now = service.ctx.now()
        # the wall time of each bind, from its monotonic stamp (what the peer is told in HELD)
        wall_offset = time.time() - time.monotonic()
        async with service.lock:
            for (seq, basis, bell, _), m in zip(tests, outcomes, strict=True):
                if m is not None:
                    self.counts["tests_total"] += 1
                else:
                    self.counts["tests_failed_total"] += 1
                self._outbox.append((seq, basis, "-" if m is None else str(m)))
                if m is not None:
                    self._record_own(seq, basis, bell, m)
            for (seq, q, bell, _), reply, bound_at in zip(binds, bells, bound_ats, strict=True):
                rec = end.pair(seq)
                if reply != bell or bound_at is None or rec is None or rec.status != "live":
                    # ERR (no herald near that time, halves taken), or gone meanwhile
                    self.counts["bind_failed_total"] += int(reply != bell)
                    continue
                self.bound[seq] = Bound(seq, q, bell, bound_at, self.pool.generation)
                self._held_new.append((seq, bound_at + wall_offset))
                self.counts["bound_total"] += 1
            self._binding = set()
            await service.send(self.expire_unbound(end, now) + end.serve())
            held = self.take_held()
            if held is not None:
                service.ctx.bus.publish(service.ctx.topics.ll(service.peer), held.TYPE,
                                        held.to_dict(), sign_with=service.peer)
        for notify in service.listeners:
            notify()

    def expire_unbound(self, end: LinkEnd, now: float) -> list[Message]:
        """EXPIRE every live pair the binding rule has seen and no qubit holds (as few ranges
        as the bound ones allow); pairs not yet processed, or being bound, wait."""
        live = end.live_seqs()
        if not live.size or self._processed_to is None:
            return []
        out: list[Message] = []
        lo: int | None = None
        prev: int | None = None
        for s in live.tolist():
            if not seq_lt(s, self._processed_to):
                break
            if s in self.bound or s in self._binding:
                if lo is not None and prev is not None:
                    out += end.expire(lo, seq_add(prev, 1), now)
                lo = prev = None
                continue
            lo = s if lo is None else lo
            prev = s
        if lo is not None and prev is not None:
            out += end.expire(lo, seq_add(prev, 1), now)
        return out

    def _record_own(self, seq: int, basis: str, bell: str, m: int) -> None:
        peer = self._peer.pop(seq, None)
        if peer is not None:
            self._match(basis, bell, m, peer)
            return
        self._own[seq] = (basis, bell, m)
        while len(self._own) > MAX_UNMATCHED:
            self._own.popitem(last=False)

    def _match(self, basis: str, bell: str, m: int, peer: tuple[str, int, float]) -> None:
        p_basis, p_m, p_e = peer
        if p_basis != basis:
            return
        tomo = self.tomography
        restarts = tomo.restarts
        tomo.add(basis, bell, m, p_m, self.readout_error, p_e)
        self.counts["tests_matched_total"] += 1
        if tomo.restarts != restarts and tomo.changed is not None:
            c = tomo.changed
            log.warning("link %s changed: %s-basis error fraction %.3f -> %.3f (z %.1f); the "
                        "estimate restarts from the last %d tests per basis", self.link,
                        c["basis"], c["before"], c["after"], c["z"], tomo.segment_tests,
                        extra={"link": self.link, "event": "estimate_restarted",
                               "basis": c["basis"], "before": c["before"], "after": c["after"]})

    def on_tests(self, msg: TestOutcomes) -> None:
        """The peer's test outcomes: matched with ours by sequence number."""
        for seq, basis, m in zip(msg.seqs, msg.bases, msg.outcomes, strict=True):
            if m == "-" or test_basis(seq, self.test_fraction) != basis:
                continue
            own = self._own.pop(seq, None)
            if own is not None:
                self._match(own[0], own[1], own[2], (basis, int(m), msg.readout_error))
            else:
                self._peer[seq] = (basis, int(m), msg.readout_error)
                while len(self._peer) > MAX_UNMATCHED:
                    self._peer.popitem(last=False)

    def take_held(self) -> Held | None:
        """A HELD for the pairs bound since the last call, if any."""
        if not self._held_new:
            return None
        new, self._held_new = self._held_new[-MAX_TESTS:], []
        return Held(self.link, tuple(s for s, _ in new), tuple(t for _, t in new))

    def on_held(self, msg: Held) -> None:
        """The peer bound ``msg.seqs``."""
        for seq, t in zip(msg.seqs, msg.times, strict=True):
            self.peer_held[seq] = t
        while len(self.peer_held) > MAX_UNMATCHED:
            self.peer_held.popitem(last=False)

    def peer_age(self, seq: int) -> float:
        """How long the peer's half of pair ``seq`` has been stored (s; its HELD time, Unix
        clocks of the two nodes assumed in sync), 0 if unknown."""
        t = self.peer_held.get(seq)
        return 0.0 if t is None else max(0.0, time.time() - t)

    def deliverable(self, seq: int) -> bool:
        """May the link give pair ``seq`` to a CREATE? Only if both ends hold it in qubits."""
        b = self.bound.get(seq)
        return (b is not None and b.generation == self.pool.generation
                and seq in self.peer_held)

    def confirmed(self) -> list[Bound]:
        """Bound pairs the peer holds too (its HELD came), oldest first."""
        return sorted((b for s, b in self.bound.items() if s in self.peer_held),
                      key=lambda b: b.bound_at)

    def take_outbox(self) -> list[TestOutcomes]:
        """Our test outcomes not yet sent, as TESTS messages."""
        out: list[TestOutcomes] = []
        box, self._outbox = self._outbox, []
        for i in range(0, len(box), MAX_TESTS):
            part = box[i:i + MAX_TESTS]
            out.append(TestOutcomes(self.link, tuple(s for s, _, _ in part),
                                    "".join(b for _, b, _ in part),
                                    "".join(m for _, _, m in part), self.readout_error))
        return out

    def telemetry(self) -> LinkMemoryTelemetry:
        rel, sigma = self.tomography.estimate()
        t: LinkMemoryTelemetry = {
            **self.counts, "qubits_bound": len(self.bound), "qubits_free": len(self.free_qubits()),
            "qubits_taken": len(self.lent), "qubits_held": len({q for _, q in self._held}),
            "fidelity_estimate": rel.fidelity(),
            "fidelity_source": "tests" if self.tomography.ready else "prior"}
        if not math.isnan(sigma):
            t["fidelity_sigma"] = sigma
        if self.tomography.ready:   # what a pair carries in dense coding: 2 − H(λ) of the estimate
            t["dense_coding_bits"] = dense_coding_capacity(rel)
        tomo = self.tomography
        if tomo.restarts:
            t["estimate_restarts_total"] = tomo.restarts
        if tomo.n.sum():
            t["tests_per_basis"] = tomo.n.tolist()
            for b, name in enumerate(("x", "y", "z")):
                n = int(tomo.n[b])
                if n:   # read-out corrected, clamped to [0, 1], the raw value and an interval
                    t = {**t, **qber_fields(name, physical_qber(
                        int(tomo.errors[b]), n, flip=float(tomo.flip[b]) / n))}
        return t


__all__ = ["Bound", "LinkMemory", "LinkTomography", "QubitPool", "test_basis"]
