"""One link end at work: the link layer's :class:`~.linklayer.LinkEnd` wired to MQTT and SQLite.

:class:`LinkService` applies heralds, the peer's EXPIRE/EXPIRE_ACK and CREATE requests to its
link end and, for every call, **stores the new snapshot before sending** what the call returned
(write-ahead, see :mod:`qnode.daemon.linklayer.end`): a crash after the send can never make this
end forget an EXPIRE the peer already acted on. It enforces the memory's limits (``capacity`` live
pairs, cut-off ``max_pair_age_s``) by expiring the oldest pairs, which tells the peer. The peer's
messages go on ``ll/<peer>`` signed with the link key; answers to a CREATE (ACK/OK/ERR) go on
``reply/<requester>``.

:class:`LinkRouter` is the node's entry point for link-layer traffic: it owns the bus handlers for
``herald``, ``ll`` and ``cmd`` and dispatches by link id.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from qnode.daemon.bus.client import BusOverloaded
from qnode.daemon.bus.envelope import Message as Envelope
from qnode.daemon.bus.topics import Topic
from qnode.daemon.klink.handle import M, Outgoing, PeerHandler, Routed
from qnode.daemon.linklayer import (
    SEQ_MOD,
    Create,
    CreateIdAllocator,
    Epoch,
    Err,
    ErrCode,
    Expire,
    ExpireAck,
    Held,
    Herald,
    LinkEnd,
    Message,
    Ok,
    PathRequest,
    PathSetup,
    SwapResult,
    TestOutcomes,
    hold_ms,
    message_from_dict,
    seq_add,
    split_actions,
)
from qnode.daemon.logs import RateLimitedLog
from qnode.daemon.quantum.bell_diagonal import BellDiagonal, age

if TYPE_CHECKING:
    from qnode.daemon.bus.telemetry import LinkTelemetry, LinkType
    from qnode.daemon.klink.memory import LinkMemory
    from qnode.daemon.klink.swapping import PathEnd
    from qnode.daemon.runtime.context import NodeContext

log = logging.getLogger("qnode.link")

#: Answers one parsed CREATE; the envelope tells the requester and whether it was signed.
CreateServer = Callable[[Create, Envelope], Awaitable[None]]
#: what takes a routed path's PATH or PATH_REQ (identity-signed: the router checked)
PathHandler = Callable[[Envelope, PathSetup | PathRequest], Awaitable[None]]

TICK_S = 0.1
LAZY_PERSIST_S = 0.1
#: A herald's transit time (receipt on this node's wall clock − the envelope's ``ts`` on the
#: station's) is recorded only within [−MAX_CLOCK_SKEW_S, MAX_TRANSIT_S]; anything else (a wrong
#: clock, a hostile ``ts`` of ±1e306) is counted, not averaged (negative ones count as 0).
MAX_TRANSIT_S = 60.0
MAX_CLOCK_SKEW_S = 1.0
#: at most one warning per this many seconds about heralds ignored as stale or of another epoch
STALE_LOG_S = 60.0
#: at most one warning per this many seconds (per kind) about an overloaded bus or shed pairs
OVERLOAD_LOG_S = 10.0


class LinkService:
    """Link ``link_id`` towards ``peer`` at this node (see the module docstring).

    ``goodness``: the fidelity estimate stamped on new pairs; ``capacity``: live pairs kept
    (0: no limit); ``max_pair_age_s``: pairs older than this (since their herald arrived) are
    expired (0: never); ``comm_delay_s``: the EXPIRE resend period is twice this.
    ``restart_policy``: what a restart does with the pairs it had (see ``LinkEnd.restore``).
    ``max_fidelity``: the best fidelity the link can deliver; a CREATE asking for more is
    refused at once with ERR UNSUPP (the EGP's fidelity-estimation rule). ``t1_s``/``t2_s``
    (s, 0: no model): the memory's decoherence; an OK then carries the pair's fidelity aged
    from its herald to its delivery (a Werner state of the stamped goodness, relative to the
    announced Bell state, through :func:`~.bell_diagonal.age` on both halves). Serving a
    CREATE still compares the goodness stamped at herald time with its minimum.
    """

    def __init__(self, ctx: NodeContext, link_id: str, peer: str, link_type: LinkType, *,
                 goodness: float, capacity: int = 0, max_pair_age_s: float = 0.0,
                 comm_delay_s: float = 0.25, restart_policy: str = "resume",
                 max_fidelity: float = 1.0, t1_s: float = 0.0, t2_s: float = 0.0):
        self.ctx, self.link, self.peer, self.type = ctx, link_id, peer, link_type
        self.capacity, self.max_pair_age_s = capacity, max_pair_age_s
        self.t1_s, self.t2_s = t1_s, t2_s
        self.hold_s = 0.1   # a delivered qubit is the application's this long (s)
        now = ctx.now()
        snap = ctx.store.load_links().get(link_id)
        self._startup: list[Message] = []
        if snap is not None:
            self.end, self._startup = LinkEnd.restore(snap, now=now,
                                                      restart_policy=restart_policy)  # type: ignore[arg-type]
            self.end.set_goodness(goodness)
            log.info("link %s restored at seq %d (%s)", link_id, self.end.expected_seq,
                     restart_policy, extra={"link": link_id, "peer": peer,
                                            "expected_seq": self.end.expected_seq})
        else:
            self.end = LinkEnd(ctx.node, peer, link_id, comm_delay=comm_delay_s,
                               max_fidelity=max_fidelity, goodness=goodness)
        # the limits are checked at most every limit_check_s (≥ TICK_S): fewer, larger EXPIREs
        self.limit_check_s = max(TICK_S, max_pair_age_s / 4 if max_pair_age_s > 0 else 0.5)
        self._next_limit_check = 0.0
        self._dirty = False
        self._persisted_at = 0.0
        self._full_saved = False
        #: what calls returned and is not yet sent: it waits for the store that covers it
        self._outbox: list[Outgoing] = []
        self._lock = asyncio.Lock()
        #: the link's qubits, when the node binds pairs to a QDevice
        # (:mod:`qnode.daemon.klink.memory`)
        self.memory: LinkMemory | None = None
        #: the handler of each kind of message from the peer (:meth:`on_message`): the link
        # end's own (EXPIRE, EXPIRE_ACK, EPOCH) and what the helpers register — the memory's
        # TEST and HELD, the purifier's PURIFY or PURIFY_RES (SWAP_RES goes to the path end)
        self._handlers: dict[type[Any], tuple[PeerHandler, bool]] = {}
        self.on_message(Expire, lambda m: self._end_call(self.end.on_expire, m))
        self.on_message(ExpireAck, lambda m: self._end_call(self.end.on_expire_ack, m))
        self.on_message(Epoch, self._on_epoch)
        #: (accepts, serve) of the helpers that serve some CREATEs themselves (purification
        #: serves those above the link's fidelity), tried in order before the link end
        self._request_servers: list[tuple[Callable[[Create], bool],
                                          Callable[[Create, str], Awaitable[None]]]] = []
        #: the helpers' parts of this link's telemetry record
        self._telemetry_parts: list[Callable[[], Mapping[str, Any]]] = []
        #: called after the link's bound pairs may have changed (a repeater's swapper)
        self.listeners: list[Callable[[], None]] = []
        # (absolute first, count, when) of the pairs accepted, oldest first
        self._batches: collections.deque[tuple[int, int, float]] = collections.deque()
        self._requesters: dict[int, str] = {}   # create id -> requesting node
        #: publish → receipt (ms, wall clocks of two hosts; plausible values only)
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=20_000)
        #: receipt → applied (ms, this node's monotonic clock; its store and sends follow at the
        #: end of the bus's burst)
        self.handling_ms: collections.deque[float] = collections.deque(maxlen=20_000)
        self.implausible_ts = 0       # heralds whose envelope ts gave no plausible transit time
        #: messages not sent because the bus's outgoing queue was full (BusOverloaded)
        self.send_overloaded = 0
        self._rlog = RateLimitedLog(log, OVERLOAD_LOG_S)
        self._shed_logged = self.end.total("pairs_shed_total")
        self._last_herald: float | None = None   # monotonic time of the last herald batch
        self._ignored_logged = (0, 0)             # (stale entries, ignored batches) last logged
        self._ignored_log_at = -STALE_LOG_S
        self._heralds_at_last = self.end.total("heralds_accepted_total")

    def on_message(self, kind: type[M], handler: Callable[[M], Awaitable[Iterable[Outgoing]]],
                   *, locked: bool = True) -> None:
        """Send the peer's messages of ``kind`` to ``handler``: with ``locked``, it runs under
        :attr:`lock` and what it returns is stored, then sent (:meth:`send`); otherwise it takes
        the lock itself. One handler per kind; a kind nobody registered is refused and counted
        (``not_a_peer_message``)."""
        if kind in self._handlers:
            name = getattr(kind, "TYPE", kind.__name__)
            raise ValueError(f"link {self.link}: {name} already has a handler")
        self._handlers[kind] = (handler, locked)

    def serve_requests(self, accepts: Callable[[Create], bool],
                       serve: Callable[[Create, str], Awaitable[None]]) -> None:
        """Let ``serve(create, requester)`` (called under :attr:`lock`) take the CREATEs that
        ``accepts`` instead of the link end."""
        self._request_servers.append((accepts, serve))

    def add_telemetry(self, part: Callable[[], Mapping[str, Any]]) -> None:
        """Merge ``part()`` into every telemetry record of this link."""
        self._telemetry_parts.append(part)

    async def _end_call(self, call: Callable[[Any, float], Iterable[Message]],
                        msg: Message) -> Iterable[Message]:
        return call(msg, self.ctx.now())

    async def _on_epoch(self, msg: Epoch) -> Iterable[Message]:
        actions = list(self.end.on_epoch(msg, self.ctx.now()))
        self._took()   # an agreed epoch applies the batches held for it
        return actions

    def attach_memory(self, memory: LinkMemory) -> None:
        """Keep this link's pairs in ``memory``'s qubits: it learns of every accepted batch, is
        ticked with the link, stamps the OKs, and takes the peer's TEST outcomes and HELD."""
        self.memory = memory
        self.end.deliverable = self.deliverable

        async def on_tests(msg: TestOutcomes) -> list[Message]:
            memory.on_tests(msg)
            return []

        async def on_held(msg: Held) -> list[Message]:
            memory.on_held(msg)
            for notify in self.listeners:
                notify()
            return list(self.end.serve())
        self.on_message(TestOutcomes, on_tests)
        self.on_message(Held, on_held)

    @property
    def lock(self) -> asyncio.Lock:
        """Held by every call that changes the link end (take it to act on its pairs)."""
        return self._lock

    def changed(self) -> None:
        """The link end changed outside the calls below (caller holds :attr:`lock`): store it
        lazily, as an in-order herald batch is."""
        self._dirty = True

    async def send(self, actions: Iterable[Outgoing]) -> None:
        """Store and send what a change of the link end returned (caller holds :attr:`lock`;
        from a message handler, both happen at the end of the bus's burst: see :meth:`_commit`)."""
        await self._commit(actions)

    async def expire_pair(self, seq: int) -> None:
        """EXPIRE pair ``seq`` to the peer (caller holds :attr:`lock`)."""
        await self._commit(self.end.expire(seq, seq_add(seq, 1), self.ctx.now()))

    def _took(self) -> None:
        """Record what the last call of the link end accepted (cut-off, binding rule; a pair's
        age counts from its batch's arrival) and log what happened to the station epoch
        (caller holds :attr:`lock`)."""
        for first, n, arrived in self.end.take_accepted():
            self._batches.append((first, n, arrived))
            if self.memory is not None:
                self.memory.note_new(first % SEQ_MOD, n)
        floor = self.end.expected_abs - self.end.max_pair_age   # the window forgot these
        while self._batches and sum(self._batches[0][:2]) <= floor:
            self._batches.popleft()
        for ev in self.end.take_events():
            self._log_event(ev)
        self._log_ignored()

    def _log_ignored(self) -> None:
        """A warning (at most every ``STALE_LOG_S``) when heralds are being ignored: entries
        whose numbers were already taken (a station of the previous version that restarted
        without its state numbers from behind) or batches of an epoch this end has left."""
        # per herald batch: the O(1) totals, not stats() (a sum over the inventory's runs)
        now_counts = (self.end.total("heralds_stale_total"),
                      self.end.total("epoch_batches_ignored_total"))
        if now_counts == self._ignored_logged:
            return
        now = self.ctx.now()
        if now - self._ignored_log_at < STALE_LOG_S:
            return
        stale = now_counts[0] - self._ignored_logged[0]
        batches = now_counts[1] - self._ignored_logged[1]
        self._ignored_logged, self._ignored_log_at = now_counts, now
        log.warning("link %s: ignored %d herald entries already taken and %d batches of "
                    "another station epoch since the last report (a station numbering from "
                    "behind, e.g. restarted without its state, or late heralds)", self.link,
                    stale, batches,
                    extra={"link": self.link, "heralds_stale": stale,
                           "herald_batches_ignored": batches,
                           "heralds_stale_total": now_counts[0],
                           "herald_batches_ignored_total": now_counts[1]})

    def _log_event(self, ev: dict[str, Any]) -> None:
        extra = {"link": self.link, "peer": self.peer, "expected_seq": self.end.expected_seq}
        kind = ev["event"]
        if kind == "epoch" and ev["old"] is None:
            log.info("link %s: station epoch %s (the first this end sees); agreeing where its "
                     "numbers go with %s", self.link, ev["new"], self.peer,
                     extra={**extra, "epoch": ev["new"]})
        elif kind == "epoch":
            log.warning("link %s: the station restarted without its state (epoch %s, was %s): "
                        "resynchronising with %s", self.link, ev["new"], ev["old"], self.peer,
                        extra={**extra, "event": "station_reset", "epoch": ev["new"],
                               "old_epoch": ev["old"], "pos": ev["pos"],
                               "station_resets_total":
                                   self.end.total("station_resets_total")})
        elif kind == "epoch_agreed":
            log.info("link %s: station epoch %s agreed with %s: its first pair is number %d",
                     self.link, ev["epoch"], self.peer, ev["start"] % SEQ_MOD,
                     extra={**extra, "epoch": ev["epoch"], "start": ev["start"]})
        elif kind == "epoch_conflict":
            log.warning("link %s: %s placed station epoch %s at %d, this end at %d: both keep "
                        "the larger", self.link, self.peer, ev["epoch"], ev["peers"],
                        ev["ours"], extra={**extra, "epoch": ev["epoch"]})

    # ------------------------------------------------------------------ inputs
    async def start(self) -> None:
        """Send what the restore returned (resent EXPIREs), persisting first."""
        async with self._lock:
            await self._commit(self._startup)
            self._startup = []

    def herald_age_s(self) -> float | None:
        """Seconds since the last herald batch of the link (a station's heartbeat counts), or
        None before the first."""
        return None if self._last_herald is None else max(0.0, self.ctx.now() - self._last_herald)

    async def on_herald(self, msg: Envelope) -> None:
        received = self.ctx.now()
        try:
            batch = Herald.from_dict(msg.body)
        except ValueError as exc:
            self._reject("bad_herald", msg, exc)
            return
        if batch.link != self.link:  # the topic names this link; a signed body naming another
            self._reject("wrong_link", msg, ValueError(f"a HERALD of link {batch.link!r} on "
                                                       f"the topic of {self.link!r}"))
            return
        transit = time.time() - msg.ts   # two hosts' wall clocks: informative only
        if math.isfinite(transit) and -MAX_CLOCK_SKEW_S <= transit <= MAX_TRANSIT_S:
            self.latencies_ms.append(max(0.0, transit) * 1e3)
        else:
            self.implausible_ts += 1
        await self.on_local_herald(batch)
        self.handling_ms.append((self.ctx.now() - received) * 1e3)

    async def on_local_herald(self, batch: Herald) -> None:
        """Apply a batch heralded by this node itself (the counter of an M-type link)."""
        async with self._lock:
            now = self.ctx.now()
            self._last_herald = now
            actions = list(self.end.on_herald(batch, now))
            self._took()
            await self._commit(actions)

    async def on_peer_message(self, msg: Envelope, parsed: Message) -> None:
        found = self._handlers.get(type(parsed))
        if found is None:
            self._reject("not_a_peer_message", msg,
                         ValueError(f"{parsed.TYPE} is not a peer message of this link end"))
            return
        handler, locked = found
        if not locked:
            await handler(parsed)
            return
        async with self._lock:
            actions = await handler(parsed)
            await self._commit(list(actions))

    async def request(self, create: Create, requester: str) -> None:
        async with self._lock:
            server = next((serve for accepts, serve in self._request_servers
                           if accepts(create)), None)
            if server is not None:
                await server(create, requester)
                return
            actions = list(self.end.request(create, self.ctx.now()))
            for a in actions:
                cid = getattr(a, "create_id", None)
                if cid is not None:
                    self._requesters[cid] = requester
            await self._commit(actions)

    async def tick_loop(self) -> None:
        """Resend unacknowledged EXPIREs, time out requests, apply the cut-off."""
        while True:
            await asyncio.sleep(TICK_S)
            async with self._lock:
                now = self.ctx.now()
                actions = list(self.end.tick(now)) + self._enforce_limits(now)
                if self.memory is not None:
                    actions += self._memory_tick(now)
                if actions:
                    await self._commit(actions)
                lazy = (self._take_store() if self._dirty
                        and now - self._persisted_at >= LAZY_PERSIST_S else None)
            if lazy is not None:
                # Outside the lock: heralds go on being applied while the writer thread stores
                # (3-24 ms per delta with a full memory, measured in benchmarks/flood.py, and
                # the herald latency tail was those waits). A write-ahead store made later
                # still lands after this one: writes run in call order (NodeContext.persist).
                await self.ctx.persist(lazy)

    async def persist(self) -> None:
        """Store the link end now (at shutdown), and log where it stopped: the figures both
        ends of a link must agree on after a clean stop."""
        async with self._lock:
            await self._persist_now()
            stats = self.end.stats()
        log.info("link %s: end stored at expected_seq %d", self.link, stats["expected_seq"],
                 extra={"link": self.link, "peer": self.peer,
                        **{k: stats[k] for k in (
                            "expected_seq", "pairs_live", "seqs_skipped_total",
                            "heralds_stale_total", "epoch_batches_ignored_total",
                            "epoch_conflicts_total", "expires_unacked")},
                        "epoch": self.end.epoch, "epoch_agreed": self.end.epoch_agreed})

    async def _persist_now(self) -> None:
        """Store what changed since the last store and wait for it (caller holds :attr:`lock`)."""
        write = self._take_store()
        if write is not None:
            await self.ctx.persist(write)

    def _take_store(self) -> Callable[[], None] | None:
        """The store write covering every change so far, or None when nothing changed (caller
        holds :attr:`lock`): a delta, O(changed runs), made now and self-contained, so it may
        run after the lock is released; the first store after start is a full snapshot that
        the deltas build on."""
        self._dirty = False
        self._persisted_at = self.ctx.now()
        store, link = self.ctx.store, self.link
        if not self._full_saved:
            snap = self.end.snapshot()
            self._full_saved = True
            return lambda: store.save_link(link, snap)
        delta = self.end.snapshot_delta()
        if delta is None:
            return None
        return lambda: store.save_link_delta(link, delta)

    def _memory_tick(self, now: float) -> list[Message]:
        """Send our test outcomes, stamp the link's estimate on new pairs, and EXPIRE what no
        qubit holds (e.g. pairs left from before a restart)."""
        memory = self.memory
        assert memory is not None
        for m in memory.take_outbox():
            self._publish(self.ctx.topics.ll(self.peer), m, sign_with=self.peer)
        memory.tick(now)
        memory.release_gone(self.end)
        rel, _ = memory.tomography.estimate()
        self.end.set_goodness(rel.fidelity())
        return memory.expire_unbound(self.end, now)

    # ------------------------------------------------------------------ limits
    def _enforce_limits(self, now: float) -> list[Message]:
        """Expire what is past the cut-off or beyond the capacity: the oldest pairs, in **one**
        range per check (one EXPIRE, not one per herald batch)."""
        if now < self._next_limit_check:
            return []
        self._next_limit_check = now + self.limit_check_s
        lo: int | None = None
        hi: int | None = None
        if self.max_pair_age_s > 0:
            while self._batches and now - self._batches[0][2] > self.max_pair_age_s:
                b_lo, n, _ = self._batches.popleft()
                lo = b_lo if lo is None else lo
                hi = b_lo + n
        if self.capacity > 0:
            excess = self.end.stats()["pairs_live"] - self.capacity
            while excess > 0 and self._batches:
                b_lo, n, t = self._batches[0]
                k = min(n, excess)
                lo = b_lo if lo is None else lo
                hi = b_lo + k
                excess -= k
                if k == n:
                    self._batches.popleft()
                else:
                    self._batches[0] = (b_lo + k, n - k, t)
        if lo is None or hi is None:
            return []
        # absolute numbers: a range over a huge jump is still one EXPIRE, cut to the window
        return list(self.end.expire_abs(lo, hi, now))

    # ------------------------------------------------------------------ output
    async def _commit(self, actions: Iterable[Outgoing]) -> None:
        """Persist the link end, then send: peer messages on ll/<peer>, answers to requesters.

        Write-ahead where it matters: nothing is sent before a store that covers the change that
        produced it. A call that sends nothing (a herald batch accepted in order) is stored
        lazily, at most ``LAZY_PERSIST_S`` later: if a crash loses it, the restarted end is
        behind, sees the jump at the next batch and EXPIREs the lost range to the peer, so both
        ends still agree. Called from a message handler, the store and the sends wait for the
        end of the bus's burst (:meth:`.NodeBus.defer_until_idle`): one store then covers every
        message of the burst, and the sends leave in the order they were made."""
        actions = list(actions)
        if not actions:
            self._dirty = True
            return
        self._outbox.extend(actions)
        if self.ctx.bus.defer_until_idle(self._flush_deferred):
            self._dirty = True
            return
        await self._flush()

    async def _flush_deferred(self) -> None:
        async with self._lock:
            if self._outbox:
                await self._flush()

    async def _flush(self) -> None:
        """Store the link end, then send the outbox (caller holds :attr:`lock`)."""
        out, self._outbox = self._outbox, []
        up, to_peer = split_actions(out)
        await self._persist_now()
        self._log_shed()
        topics = self.ctx.topics
        for m in to_peer:
            self._publish(topics.ll(self.peer), m, sign_with=self.peer)
        for m in up:
            if isinstance(m, Routed):
                self._publish(m.topic, m.message)
                continue
            if isinstance(m, Ok):
                m = self._aged(m)
            cid = getattr(m, "create_id", None)
            requester = self._requesters.get(cid) if cid is not None else None
            if requester is not None:
                self._publish(topics.reply(requester), m)

    def _publish(self, topic: str, m: Any, *, sign_with: str | None = None) -> bool:
        """Publish ``m``; False (counted in ``send_overloaded_total``, logged rate-limited) if
        the bus's outgoing queue is full. The state was stored first, and the link layer does
        not depend on any one message arriving: an unacknowledged EXPIRE is resent by the
        tick, a lost ACK makes the peer resend its EXPIRE, an EPOCH is resent while waiting.
        (An OK or ERR to a requester lost this way is not resent: the log says so.)"""
        try:
            self.ctx.bus.publish(topic, m.TYPE, m.to_dict(), sign_with=sign_with)
            return True
        except BusOverloaded as exc:
            self.send_overloaded += 1
            self._rlog("overloaded", logging.WARNING,
                       "link %s: %s to %s not sent, the bus is overloaded (%s); EXPIREs are "
                       "resent, answers to requesters are lost", self.link, m.TYPE, topic, exc,
                       link=self.link, peer=self.peer,
                       send_overloaded_total=self.send_overloaded)
            return False

    def _log_shed(self) -> None:
        """A warning (rate-limited) when this end shed pairs to bound its unacknowledged
        EXPIREs (``pairs_shed_total``; ``LinkEnd``'s bound on unacknowledged ranges)."""
        shed = self.end.total("pairs_shed_total")
        if shed == self._shed_logged:
            return
        self._rlog("shed", logging.WARNING,
                   "link %s: %d unacknowledged EXPIRE ranges to %s (the most kept): merged, "
                   "expiring %d pairs of this end in between (%d in all); %s drops them too",
                   self.link, self.end.max_unacked, self.peer, shed - self._shed_logged, shed,
                   self.peer, link=self.link, peer=self.peer, pairs_shed_total=shed)
        self._shed_logged = shed

    def deliverable(self, seq: int) -> bool:
        """May a CREATE be given pair ``seq`` (a node with qubits)? Both ends must hold it
        (:meth:`.LinkMemory.deliverable`), and at least ``hold_s`` must be left before its
        cut-off: the peer drops its copy then, and the application should have its half."""
        if self.memory is None or not self.memory.deliverable(seq):
            return False
        if self.max_pair_age_s <= 0:
            return True
        accepted = self._accepted_at(seq)
        return accepted is not None and (
            self.ctx.now() - accepted <= self.max_pair_age_s - self.hold_s)

    def _accepted_at(self, seq: int) -> float | None:
        """When the herald of pair ``seq`` was accepted here (monotonic s), if still known."""
        a = self.end.abs_of(seq)
        if a is None:
            return None
        for lo, n, t in self._batches:
            if lo <= a < lo + n:
                return t
        return None

    def _aged(self, ok: Ok) -> Ok:
        """``ok`` with its goodness aged from the herald to now (see the class docstring); with
        qubits, the link's estimate decayed since binding, and the qubit (held for the
        application, ``[memory].delivered_hold_s``)."""
        memory = self.memory
        if memory is not None and ok.tpe == "K":
            bound = memory.take(ok.seq)
            if bound is not None:
                now = self.ctx.now()
                memory.hold(bound.qubit, now + self.hold_s)
                state = memory.pair_state(bound, now)
                return dataclasses.replace(ok, goodness=round(state.fidelity(ok.bell_state), 6),
                                           qubit=bound.qubit, hold_ms=hold_ms(self.hold_s))
        if self.t1_s <= 0 or ok.tpe != "K":
            return ok
        accepted = self._accepted_at(ok.seq)
        if accepted is None:
            return ok
        state = BellDiagonal.werner(ok.goodness).relabel(ok.bell_state)
        aged = age(state, max(0.0, self.ctx.now() - accepted), t1_s=self.t1_s,
                   t2_s=self.t2_s, halves=2)
        return dataclasses.replace(ok, goodness=round(aged.fidelity(ok.bell_state), 6))

    def _reject(self, reason: str, msg: Envelope, exc: Exception) -> None:
        """Count (in the node's :attr:`LinkRouter.rejected`, by reason) and log a message that
        passed the envelope checks but is not a valid link-layer message."""
        self.ctx.shared(LinkRouter).count(reason, msg, f"link {self.link}: {exc}")

    # ------------------------------------------------------------------ views
    def telemetry(self, interval_s: float) -> LinkTelemetry:
        stats = self.end.stats()
        lat = np.asarray(self.latencies_ms, dtype=float)
        handling = np.asarray(self.handling_ms, dtype=float)
        heralds = stats["heralds_accepted_total"]  # entries accepted, not skipped numbers
        rate = (heralds - self._heralds_at_last) / interval_s
        self._heralds_at_last = heralds
        t: LinkTelemetry = {
            "type": self.type, "peer": self.peer, "role": "end",
            "expected_seq": stats["expected_seq"], "heralds_total": heralds,
            "herald_rate_hz": rate, "pairs_live": stats["pairs_live"],
            "pairs_delivered_total": stats["pairs_delivered_total"],
            "pairs_expired_total": stats["pairs_expired_total"],
            "expires_unacked": stats["expires_unacked"],
            "fidelity_estimate": self.end.goodness,
            "heralds_stale_total": stats["heralds_stale_total"],
            "herald_batches_ignored_total": stats["epoch_batches_ignored_total"],
            "station_resets_total": stats["station_resets_total"],
            "expires_stale_total": stats["expires_stale_total"],
            "epoch_conflicts_total": stats["epoch_conflicts_total"],
            "pairs_shed_total": stats["pairs_shed_total"],
            "expires_resent_total": stats["expires_resent_total"],
            "send_overloaded_total": self.send_overloaded,
            "herald_ts_implausible_total": self.implausible_ts,
            "epoch_agreed": self.end.epoch_agreed,
        }
        if self.end.epoch is not None:
            t["station_epoch"] = self.end.epoch
        age = self.herald_age_s()
        if age is not None:
            t["herald_age_s"] = age
        if self.memory is not None:
            t = {**t, **self.memory.telemetry()}
        for part in self._telemetry_parts:
            t = {**t, **part()}   # type: ignore[typeddict-item]
        if lat.size:
            t["herald_latency_ms_p50"] = float(np.percentile(lat, 50))
            t["herald_latency_ms_p99"] = float(np.percentile(lat, 99))
        if handling.size:
            t["herald_handling_ms_p50"] = float(np.percentile(handling, 50))
            t["herald_handling_ms_p99"] = float(np.percentile(handling, 99))
        self.latencies_ms.clear()
        self.handling_ms.clear()
        return t


class LinkRouter:
    """The node's handlers for ``herald``, ``ll`` and ``cmd`` traffic, dispatching by link."""

    def __init__(self, ctx: NodeContext):
        self.ctx = ctx
        self.services: dict[str, LinkService] = {}
        self.paths: dict[str, PathEnd] = {}     # remote end of a path -> this end
        self.path_ends: dict[str, PathEnd] = {}  # path id -> this end
        self._refusals = CreateIdAllocator()    # create ids of CREATEs refused outright
        self._servers: list[tuple[Callable[[Create], bool], CreateServer]] = []
        self._fallback: CreateServer | None = None
        self._path_handler: PathHandler | None = None
        self.rejected: collections.Counter[str] = collections.Counter()
        self._rlog = RateLimitedLog(log)
        ctx.bus.on("herald", self._on_herald)
        ctx.bus.on("ll", self._on_ll)
        ctx.bus.on("proto", self._on_proto)
        ctx.bus.on("cmd", self._on_cmd)

    def add(self, service: LinkService) -> LinkService:
        self.services[service.link] = service
        return service

    def serve_creates(self, accepts: Callable[[Create], bool], server: CreateServer, *,
                      fallback: CreateServer | None = None) -> None:
        """Let ``server(create, msg)`` answer the CREATEs ``accepts`` takes, before the link
        services (e.g. a source's M link, served by choosing its pump power); ``fallback``
        answers those nothing here can place, instead of the router's ERR UNSUPP. Parsing and
        counting malformed commands stay the router's."""
        self._servers.append((accepts, server))
        if fallback is not None:
            self._fallback = fallback

    def add_path(self, end: PathEnd) -> PathEnd:
        """Serve CREATEs for pairs with ``end.remote`` from the path end ``end``."""
        self.paths[end.remote] = end
        self.path_ends[end.path.id] = end
        return end

    def drop_path(self, end: PathEnd, *, reports_too: bool) -> None:
        """Serve no more CREATEs from ``end`` (its remote's CREATEs go to another path end,
        or none); with ``reports_too``, its repeaters' SWAP_RES are not its either."""
        if self.paths.get(end.remote) is end:
            del self.paths[end.remote]
        if reports_too and self.path_ends.get(end.path.id) is end:
            del self.path_ends[end.path.id]

    def serve_unplaced(self, server: CreateServer) -> None:
        """Let ``server`` answer the CREATEs nothing here can place (no link, path or server
        takes them), instead of the router's ERR UNSUPP (routed paths: a CREATE for a node
        further away)."""
        self._fallback = server

    def serve_paths(self, handler: PathHandler) -> None:
        """Hand PATH and PATH_REQ (routed paths' setup, :mod:`qnode.daemon.routing.paths`) to
        ``handler(envelope, message)``; without one they are counted as ``unknown_path``."""
        self._path_handler = handler

    def count(self, reason: str, msg: Envelope, detail: str) -> None:
        """Count (by reason, reported as ``link_rejected``) and log a refused message (at most
        one line per reason and second: a flood of bad requests must not drown the log)."""
        self.rejected[reason] += 1
        self._rlog(reason, logging.WARNING, "rejected %s from %s id %d: %s", msg.type[:40],
                   msg.sender, msg.id, detail[:300], reason=reason, sender=msg.sender,
                   type=msg.type[:40])

    async def _on_herald(self, topic: Topic, msg: Envelope) -> None:
        service = self.services.get(topic.arg or "")
        if service is None:
            self.count("unknown_link", msg, f"no link {topic.arg!r} here")
            return
        await service.on_herald(msg)

    def _parse(self, msg: Envelope) -> Message | None:
        try:
            return message_from_dict({**msg.body, "type": msg.type})
        except ValueError as exc:
            self.count("bad_body", msg, str(exc))
            return None

    def _peer_message(self, msg: Envelope, parsed: Message) -> tuple[Message,
                                                                      LinkService] | None:
        """Find the link of a message from a link's peer; counted and None if it fails (the
        sender must be the link's peer)."""
        service = self.services.get(getattr(parsed, "link", ""))
        if service is None or service.peer != msg.sender:
            self.count("unknown_link", msg, f"no link {getattr(parsed, 'link', '')!r} with "
                                             f"{msg.sender}")
            return None
        return parsed, service

    async def _on_ll(self, topic: Topic, msg: Envelope) -> None:
        parsed = self._parse(msg)
        if isinstance(parsed, SwapResult):
            await self._on_swap_result(msg, parsed)
            return
        if isinstance(parsed, PathSetup | PathRequest):
            if self._path_handler is None:
                self.count("unknown_path", msg, "this node routes no paths")
            elif not msg.node_signed:
                self.count("unsigned", msg, f"a {parsed.TYPE} must carry its sender's "
                                            f"identity signature")
            else:
                await self._path_handler(msg, parsed)
            return
        found = self._peer_message(msg, parsed) if parsed is not None else None
        if found is not None:
            await found[1].on_peer_message(msg, found[0])

    async def _on_swap_result(self, msg: Envelope, parsed: SwapResult) -> None:
        """A repeater's SWAP_RES, to this node's end of its path: from a link neighbour signed
        with the link key, from a repeater further on with its identity key (the bus checked
        the signature; the path end checks that the sender is the path's repeater at that
        hop)."""
        end = self.path_ends.get(parsed.path)
        if end is None:
            self.count("unknown_path", msg, f"no path {parsed.path!r} ends here")
            return
        if not (msg.signed or msg.node_signed):
            self.count("unsigned", msg, "a SWAP_RES must be signed")
            return
        async with end.service.lock:
            await end.on_swap_result(parsed, msg.sender)

    async def _on_proto(self, topic: Topic, msg: Envelope) -> None:
        """PURIFY / PURIFY_RES of a link's purification (:mod:`qnode.daemon.klink.purification`),
        to the handler its purifier registered."""
        await self._on_ll(topic, msg)

    async def _on_cmd(self, topic: Topic, msg: Envelope) -> None:
        if msg.type != "CREATE":
            self.count("unknown_command", msg, f"command {msg.type!r}")
            return
        try:
            create = Create.from_dict(msg.body)
        except ValueError as exc:
            self.count("bad_body", msg, str(exc))
            return
        service = next((s for s in self.services.values()
                        if s.peer == create.remote_node and s.type == create.tpe), None)
        path = self.paths.get(create.remote_node)
        server = next((h for accepts, h in self._servers if accepts(create)), None)
        if server is not None:
            await server(create, msg)
            return
        if service is None and path is not None:
            async with path.service.lock:
                await path.request(create, msg.sender)
            return
        if service is None and self._fallback is not None:
            await self._fallback(create, msg)
            return
        if service is None:   # no link or path to that node here: refused at CREATE time
            cid = self._refusals.allocate()
            self.ctx.bus.publish(self.ctx.topics.reply(msg.sender), "ERR",
                                 Err(cid, ErrCode.UNSUPP).to_dict())
            return
        await service.request(create, msg.sender)

    def telemetry(self, interval_s: float) -> dict[str, LinkTelemetry]:
        return {link: s.telemetry(interval_s) for link, s in self.services.items()}
