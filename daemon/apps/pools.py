"""Pools of pairs as the application service sees them: what can be given now, and taking one.

Two kinds, one interface (:class:`Pool`):

- :class:`LinkPool`: a K link whose pairs live in qubits (``[memory].qdevice``) and that feeds no
  path. A pair can be given once both ends hold it and enough of its time is left (the link
  service's ``deliverable``); its fidelity is the link's estimate in the pair's frame with both
  halves decayed since binding. Taking a pair changes the link end, so what is sent about it
  waits for the link's store (:meth:`LinkPool.send`).
- :class:`PathPool`: the end-to-end pairs of a path at one of its ends (the repeater's swaps,
  :class:`~qnode.daemon.klink.swapping.PathEnd`). A pair can be given while at least
  ``[memory].delivered_hold_s`` is left before its cut-off; its fidelity is the path end's
  estimate. Path pairs are not stored, so replies leave at once.

Every call but :meth:`Pool.send` is made with the pool's :attr:`Pool.lock` held.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from qnode.daemon.bus.client import BusOverloaded
from qnode.daemon.klink.handle import Routed
from qnode.daemon.klink.memory import LinkMemory
from qnode.daemon.klink.service import LinkService
from qnode.daemon.klink.swapping import CUTOFF_GUARD_S, PathEnd
from qnode.daemon.linklayer import hold_ms


@dataclass(frozen=True)
class Taken:
    """A pair taken out of a pool for an application."""

    pair_id: int             # the link's sequence number, or the path's pair id
    bell_state: str          # in the pool's frame (the same at both ends)
    fidelity: float          # estimated, at taking
    qubit: int
    hold_ms: int | None      # the qubit is the application's this long (ms; None: unbounded)
    #: the pair's estimated fidelity to ``bell_state`` at a later monotonic time (s), both
    #: halves decaying by the node's memory model (for an OPERATE's RESULT)
    fidelity_at: Callable[[float], float] | None = None
    #: the memory whose qubit holds it, when not the pool's (a routed path's previous end)
    memory: LinkMemory | None = None


class Pool(Protocol):
    """What the application service needs of a pool of pairs shared with one other node."""

    id: str                  # the link or path id
    remote: str              # the node at the other end
    allocator: bool          # this end gives the pairs (its node id sorts first)
    kind: str                # "link" | "path"
    #: the link memory whose qubits hold this end's halves (and the applications' holds)
    memory: LinkMemory
    #: called when pairs may have become available
    listeners: list[Callable[[], None]]

    @property
    def lock(self) -> asyncio.Lock: ...

    def estimate(self) -> float | None:
        """The fidelity fresh pairs have now (None: not known yet)."""
        ...

    def supplied(self) -> int:
        """Pairs that have become available to give so far (a counter: its rate is the pool's
        supply, pairs/s)."""
        ...

    def offers(self, now: float) -> list[tuple[int, float]]:
        """``(pair_id, fidelity)`` of every pair that may be given now, the best first."""
        ...

    def take(self, pair_id: int, now: float) -> Taken | None:
        """Take pair ``pair_id`` for an application; None if it is not held here."""
        ...

    async def send(self, out: Iterable[Routed]) -> None:
        """Publish ``out`` (caller holds the lock), after the store that covers any pair taken."""
        ...


class LinkPool:
    """The pairs of K link ``service`` held in ``memory``'s qubits. ``node`` is this node: the
    allocator is the end whose id sorts first."""

    kind = "link"

    def __init__(self, service: LinkService, memory: LinkMemory, node: str):
        self.service, self.memory = service, memory
        self.id, self.remote = service.link, service.peer
        self.allocator = node < service.peer
        self.listeners = service.listeners

    @property
    def lock(self) -> asyncio.Lock:
        return self.service.lock

    def estimate(self) -> float | None:
        return float(self.service.end.goodness)

    def supplied(self) -> int:
        """Pairs bound to qubits (only those can be given)."""
        return int(self.memory.counts["bound_total"])

    def offers(self, now: float) -> list[tuple[int, float]]:
        """The freshest (best) first: an application gets the best pair there is, and the oldest
        ones, which the link's cut-off expires anyway, are left over (the link layer's own
        CREATEs are served oldest first, as the EGP does)."""
        out: list[tuple[int, float]] = []
        # the bound pairs (a few per qubit), not the link's whole inventory
        for b in sorted(self.memory.bound.values(), key=lambda b: -b.bound_at):
            if self.service.deliverable(b.seq):
                out.append((b.seq, self.memory.pair_state(b, now).fidelity(b.bell_state)))
        return out

    def take(self, pair_id: int, now: float) -> Taken | None:
        """Out of the link's inventory (without telling the peer: the GIVE does), the qubit
        held for the application for ``[memory].delivered_hold_s``."""
        bound = self.memory.take(pair_id)
        if bound is None:
            return None
        if not self.service.end.consume([pair_id]):
            self.memory.give_back(bound.qubit)
            return None
        hold = self.service.hold_s
        self.memory.give_back(bound.qubit)
        self.memory.hold(bound.qubit, now + hold)
        self.service.changed()
        def fidelity_at(t: float) -> float:
            return round(self.memory.pair_state(bound, t).fidelity(bound.bell_state), 6)
        return Taken(pair_id, bound.bell_state, fidelity_at(now), bound.qubit, hold_ms(hold),
                     fidelity_at)

    async def send(self, out: Iterable[Routed]) -> None:
        await self.service.send(out)


class PathPool:
    """The end-to-end pairs of path end ``end`` at this node. The repeater tells each end of a
    swap in its own SWAP_RES, so an end cannot know the other holds a pair until it says so
    (``HOLDS``): the allocator offers only pairs the other end :meth:`confirm` ed, and the
    other end reports the pairs it received (:meth:`unannounced`)."""

    kind = "path"
    #: pair ids remembered as confirmed by the other end (the oldest are forgotten beyond)
    MAX_CONFIRMED = 4096

    def __init__(self, end: PathEnd, node: str):
        self.end = end
        self.id, self.remote = end.path.id, end.remote
        self.memory = end.memory
        self.allocator = node < end.remote
        self.listeners = end.listeners
        self._confirmed: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._announced: set[int] = set()

    def confirm(self, pair_ids: Iterable[int]) -> None:
        """The other end holds ``pair_ids`` (its HOLDS)."""
        for pid in pair_ids:
            self._confirmed[pid] = None
        while len(self._confirmed) > self.MAX_CONFIRMED:
            self._confirmed.popitem(last=False)

    def unannounced(self) -> list[int]:
        """The pairs received here that the other end has not been told of yet (then they
        count as told)."""
        held = set(self.end.pairs)
        new = sorted(held - self._announced)
        self._announced = (self._announced & held) | set(new)
        return new

    @property
    def lock(self) -> asyncio.Lock:
        return self.end.service.lock

    def estimate(self) -> float | None:
        return self.end.last_fidelity

    def supplied(self) -> int:
        """End-to-end pairs received from the repeater's swaps."""
        return int(self.end.counts["pairs_received_total"])

    def offers(self, now: float) -> list[tuple[int, float]]:
        hold = self.end.mem.delivered_hold_s
        out = []
        for pid, pair in self.end.pairs.items():
            if pid in self._confirmed and self.end.cutoff_at(pair, now) - now >= hold:
                out.append((pid, self.end.estimate(pair, now).fidelity(pair.bell_state)))
        out.sort(key=lambda o: -o[1])
        return out

    def take(self, pair_id: int, now: float) -> Taken | None:
        """Out of the path end's pairs; the qubit is the application's until the pair's
        cut-off (the far end keeps its copy until then), plus a guard time."""
        return _take_from(self.end, pair_id, now)

    async def send(self, out: Iterable[Routed]) -> None:
        """Publish at once (path pairs are not stored); a full outgoing queue is counted in the
        path end's telemetry (``send_overloaded_total``), never raised."""
        bus = self.end.ctx.bus
        for r in out:
            try:
                bus.publish(r.topic, r.message.TYPE, r.message.to_dict())
            except BusOverloaded:
                self.end.counts["send_overloaded_total"] += 1


def _take_from(end: PathEnd, pair_id: int, now: float) -> Taken | None:
    """Pair ``pair_id`` out of path end ``end`` (:meth:`PathPool.take`)."""
    pair = end.pairs.pop(pair_id, None)
    if pair is None:
        return None
    cutoff = end.cutoff_at(pair, now)
    end.memory.hold(pair.qubit, cutoff + CUTOFF_GUARD_S)
    end.counts["pairs_delivered_total"] += 1

    def fidelity_at(t: float) -> float:
        return round(end.estimate(pair, t).fidelity(pair.bell_state), 6)
    fidelity = fidelity_at(now)
    end.delivered_fidelity.append(fidelity)
    return Taken(pair_id, pair.bell_state, fidelity, pair.qubit, hold_ms(cutoff - now),
                 fidelity_at, end.memory)


def routed_pool_id(a: str, b: str) -> str:
    """The pool id both ends give the routed paths between nodes ``a`` and ``b``:
    ``route-<first>-<second>`` in sorted order, or ``route-<hash>`` when that is longer than a
    name may be (64)."""
    lo, hi = sorted((a, b))
    pid = f"route-{lo}-{hi}"
    if len(pid) <= 64:
        return pid
    return "route-" + hashlib.sha256(f"{lo}\0{hi}".encode()).hexdigest()[:24]


class RoutedPool(PathPool):
    """The pairs between this node and ``end.remote`` over routed paths
    (:mod:`qnode.daemon.routing.paths`): one pool id at both ends (:func:`routed_pool_id`)
    however often the path moves, so the requests waiting in it, and the other end's, stay.
    :meth:`use` moves it to the new path's end; a GIVE for a pair of a previous path that
    crossed the move (the two ends move one message apart) still finds its pair there."""

    #: previous paths' ends a GIVE may still name a pair of
    MAX_PREVIOUS = 4

    def __init__(self, end: PathEnd, node: str):
        super().__init__(end, node)
        self.id = routed_pool_id(node, end.remote)
        self._previous: collections.deque[PathEnd] = collections.deque(
            maxlen=self.MAX_PREVIOUS)
        self._supplied_before = 0    # pairs the previous paths' ends had received at the move

    def supplied(self) -> int:
        """End-to-end pairs received over every path this pool served from (a counter across
        moves: each path end counts from 0)."""
        return self._supplied_before + super().supplied()

    async def use(self, end: PathEnd) -> None:
        """Serve from ``end`` (the path moved): under both ends' link locks (in link order),
        so no call of the application service sees half a move."""
        if end is self.end:
            return
        locks = [s.lock for s in sorted({self.end.service, end.service}, key=lambda s: s.link)]
        async with contextlib.AsyncExitStack() as stack:
            for lock in locks:
                await stack.enter_async_context(lock)
            for notify in self.listeners:
                if notify not in end.listeners:
                    end.listeners.append(notify)
            self._supplied_before = self.supplied()
            self._previous.append(self.end)
            self.end, self.memory, self.listeners = end, end.memory, end.listeners
            self._announced = set()
        for notify in self.listeners:
            notify()

    def take(self, pair_id: int, now: float) -> Taken | None:
        """From the current path's end, else from a previous one's (see the class)."""
        taken = _take_from(self.end, pair_id, now)
        for old in reversed(self._previous):
            if taken is not None:
                break
            taken = _take_from(old, pair_id, now)
        return taken
