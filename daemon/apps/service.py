"""The application service of a node: requests in, pairs out, both ends told.

Applications configured in ``[applications.<name>]`` send :mod:`~qnode.daemon.apps.protocol`
messages on ``<application>/req/<node>`` and read replies on ``<node>/app/<application>``. Their
pairs come from pools (:mod:`~qnode.daemon.apps.pools`): the node's K links whose pairs live in
qubits and that feed no path, and the paths it ends. The two ends of a pool speak the
:mod:`~qnode.daemon.apps.peer` messages on ``svc/<peer>``, signed with their identity keys. Per
pool, the end whose node id sorts first allocates (decision record 0008 in ``docs/``):

- a request made at the allocator joins its :class:`~qnode.daemon.apps.scheduler.FairQueue`; one
  made at the other end is answered ``ACCEPTED`` there and forwarded (``SERVE``);
- each pair that can be given goes to the request the scheduler picks; the allocator takes it
  out of its inventory and sends ``GIVE`` (stored first, then sent, with the replies to its own
  applications); the other end takes the same pair on ``GIVE``;
- each end tells its application: the requester gets ``PAIR`` with its ``request_id``, the far
  end's application listening on the request's purpose gets ``PAIR`` with the requester's name;
- the end where the request was made gives its one terminal reply: ``DONE`` after the last pair,
  ``EXPIRED`` at its deadline, ``CANCELLED``, or ``ERROR`` with a code and a reason.

A message that is not a valid request is answered with ``ERROR bad_request`` when it names a
request id, and counted and logged (rate-limited, no traceback) either way; nothing changes.

The requests made here are stored (SQLite, ``app_requests``) before ``ACCEPTED`` goes out and
forgotten before their terminal reply does; a node that restarts answers each request it had
accepted with ``ERROR unavailable``, so a request still ends in exactly one terminal reply.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from qnode.daemon.apps.operations import (
    NO_CHANNELS,
    Channels,
    PhotonLost,
    check_gates,
    run_gates,
)
from qnode.daemon.apps.peer import (
    PEER_TYPES,
    Give,
    Holds,
    Listeners,
    PeerMessage,
    Serve,
    ServeEnd,
    Withdraw,
)
from qnode.daemon.apps.pools import PathPool, Pool, RoutedPool, Taken
from qnode.daemon.apps.protocol import (
    REQUEST_ID_PATTERN,
    Accepted,
    AppMessage,
    Cancel,
    Cancelled,
    Done,
    Error,
    ErrorCode,
    Expired,
    Listen,
    Listening,
    Operate,
    Pair,
    Request,
    Result,
    Unlisten,
    parse_request,
)
from qnode.daemon.apps.scheduler import FairQueue, QueueFull, RequestKey, Waiting
from qnode.daemon.bus.client import BusOverloaded
from qnode.daemon.bus.envelope import Message as Envelope
from qnode.daemon.bus.telemetry import AppsTelemetry, LatencyHistogram
from qnode.daemon.bus.topics import Topic
from qnode.daemon.klink.handle import Routed
from qnode.daemon.klink.memory import LinkMemory
from qnode.daemon.linklayer import hold_ms
from qnode.daemon.logs import RateLimitedLog
from qnode.daemon.runtime.config import ServiceConfig
from qnode.daemon.runtime.context import NodeContext
from qnode.daemon.runtime.waiting import wait_event

log = logging.getLogger("qnode.apps")

#: how often deadlines are checked and pools looked at without a wake-up (s)
TICK_S = 0.1
#: how long a GIVE for a path pair this end has not received yet waits for its SWAP_RES (s)
GIVE_WAIT_S = 1.0
#: a pool's supply (pairs/s) is measured over this long (s) before admission uses it
SUPPLY_WINDOW_S = 10.0
#: admission refuses a request for more than this many times what the pool supplies before
#: its deadline (with nothing else waiting): generous, as the supply varies
SUPPLY_MARGIN = 2.0
#: a request for a node reached only over a routed path waits this long (s) for the path
ROUTE_WAIT_S = 15.0
#: requests waiting for a routed path, per remote node, and remote nodes waited for
MAX_UNROUTED = 64
MAX_UNROUTED_REMOTES = 16
#: latency histogram buckets (s): request → first pair, request → done
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: OPERATEs of one application running at once (more are refused: queue_full)
MAX_OPERATIONS_PER_APPLICATION = 8
#: ended holdings whose reason an OPERATE's ERROR can still give
GONE_REMEMBERED = 4096
_ID = re.compile(REQUEST_ID_PATTERN)


@dataclass
class Live:
    """A request made at this node, until its terminal reply."""

    application: str
    request: Request
    pool: Pool
    arrived: float                 # monotonic s
    deadline: float                # monotonic s
    delivered: int = 0


@dataclass
class Holding:
    """A delivered pair whose qubit is ``application``'s until ``until`` (monotonic s)."""

    application: str
    pool: Pool
    pair_id: int
    qubit: int
    memory: LinkMemory
    generation: int          # the QDevice's generation at delivery (a reset loses the qubit)
    delivered: float         # monotonic s
    until: float
    #: the pair's estimated fidelity at a monotonic time (s) (:attr:`Taken.fidelity_at`)
    fidelity_at: Callable[[float], float] | None = None
    busy: bool = False       # an OPERATE on it is running


@dataclass
class Histogram:
    """A cumulative histogram of seconds with :data:`LATENCY_BUCKETS_S` (as Prometheus keeps)."""

    counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_S))
    count: int = 0
    total: float = 0.0

    def observe(self, s: float) -> None:
        self.count += 1
        self.total += s
        for i, b in enumerate(LATENCY_BUCKETS_S):
            if s <= b:
                self.counts[i] += 1

    def as_dict(self) -> LatencyHistogram:
        return {"buckets": dict(zip((str(b) for b in LATENCY_BUCKETS_S), self.counts,
                                    strict=True)),
                "count": self.count, "sum": round(self.total, 6)}


class AppService:
    """The node's application service over ``pools`` (see the module docstring); ``channels``:
    the quantum channels of the node's QDevice, for OPERATE's send and receive."""

    def __init__(self, ctx: NodeContext, config: ServiceConfig, pools: list[Pool],
                 channels: Channels = NO_CHANNELS):
        self.ctx, self.config = ctx, config
        self.pools: dict[str, Pool] = {}           # remote node -> pool (a link before a path)
        for p in sorted(pools, key=lambda p: p.kind != "link"):
            self.pools.setdefault(p.remote, p)
        self.by_id = {p.id: p for p in self.pools.values()}
        self.queues = {p.id: FairQueue(self._weight, max_waiting=config.max_waiting,
                                       max_per_application=config.max_per_application)
                       for p in self.pools.values() if p.allocator}
        self.live: dict[tuple[str, str], Live] = {}
        #: (application, pool id, pair id) -> its delivered pair's qubit
        self.holding: dict[tuple[str, str, int], Holding] = {}
        #: why recent holdings ended (for the ERROR of a late OPERATE), the oldest forgotten
        self._gone: collections.OrderedDict[tuple[str, str, int], str] = (
            collections.OrderedDict())
        self.operations: collections.Counter[str] = collections.Counter()
        #: the quantum channels of this node's QDevice, by the node at their other end
        self.channels = channels
        self._running: collections.Counter[str] = collections.Counter()   # per application
        self._tasks: set[asyncio.Task[None]] = set()
        self.listening: dict[int, str] = {}              # purpose -> application here
        self.peer_listening: dict[str, dict[int, str]] = {p.id: {} for p in self.pools.values()}
        #: changes to the stored requests not yet written (see :meth:`_store`)
        self._unstored: list[tuple[str, str, int, int] | tuple[str, str]] = []
        #: GIVEs of path pairs whose SWAP_RES has not come yet: (pool, pair id) -> (GIVE, when)
        self._early: dict[tuple[str, int], tuple[Give, float]] = {}
        self._weights: dict[tuple[str, str], float] = {}  # peer applications' (from SERVE)
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        #: asks routing for a path to a node no pool serves (remote, min_fidelity): None when
        #: one is coming, else why none can (the memory role's: routing.paths.PathManager.want)
        self.route: Callable[[str, float], str | None] | None = None
        #: requests for a remote whose routed path is coming: remote -> [(application, request,
        #: since when: monotonic s)]
        self._unrouted: dict[str, list[tuple[str, Request, float]]] = {}
        #: pools whose other end's LISTENERS came (a new pool's requests wait for them)
        self._heard: set[str] = set()
        self.pairs_delivered: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self.refused_peer: collections.Counter[str] = collections.Counter()
        self.first_pair_s = Histogram()
        self.done_s = Histogram()
        self._rlog = RateLimitedLog(log)
        self._wake = asyncio.Event()
        #: (monotonic s, pool.supplied()) samples per pool over SUPPLY_WINDOW_S
        self._supply: dict[str, collections.deque[tuple[float, int]]] = {
            p.id: collections.deque() for p in self.pools.values()}
        for p in self.pools.values():
            p.listeners.append(self._wake.set)
        base = f"qnet/v1/{ctx.topics.network}/+"
        ctx.bus.on("req", self._on_request)
        ctx.bus.subscribe(f"{base}/req/{ctx.node}")
        ctx.bus.on("svc", self._on_peer)
        ctx.bus.subscribe(f"{base}/svc/{ctx.node}")

    def add_pool(self, pool: Pool) -> bool:
        """Serve requests for ``pool.remote`` from ``pool`` too, from now on (a routed path's
        pool, :class:`~qnode.daemon.apps.pools.RoutedPool`); False, and nothing changes, when
        a link or a configured path serves that node already."""
        if pool.remote in self.pools or pool.id in self.by_id:
            return False
        self.pools[pool.remote] = self.by_id[pool.id] = pool
        if pool.allocator:
            self.queues[pool.id] = FairQueue(
                self._weight, max_waiting=self.config.max_waiting,
                max_per_application=self.config.max_per_application)
        self.peer_listening[pool.id] = {}
        self._supply[pool.id] = collections.deque()
        pool.listeners.append(self._wake.set)
        if not pool.allocator:
            self._announce(pool)   # the installer's pool came first: it answers (_on_peer)
        self._wake.set()
        return True

    # ------------------------------------------------------------------ helpers
    def _weight(self, app: tuple[str, str]) -> float:
        if app[0] == self.ctx.node:
            a = self.config.applications.get(app[1])
            return a.weight if a is not None else 1.0
        return self._weights.get(app, 1.0)

    def _reply(self, application: str, msg: AppMessage) -> Routed:
        return Routed(self.ctx.topics.app(application), msg)

    def _to_peer(self, pool: Pool, msg: PeerMessage) -> Routed:
        return Routed(self.ctx.topics.svc(pool.remote), msg)

    async def _store(self) -> None:
        """Write the changes to the stored requests made so far (before the replies they
        cover: writes run in call order on the node's writer thread, so a link's own store
        queued after this one also lands after it)."""
        if self._unstored:
            changes, self._unstored = self._unstored, []
            store = self.ctx.store
            await self.ctx.persist(lambda: store.apply_app_requests(changes))

    async def _send(self, pool: Pool, out: list[Routed]) -> None:
        """Store, then send ``out`` (caller holds the pool's lock)."""
        await self._store()
        if out:
            await pool.send(out)

    def _publish(self, application: str, msg: AppMessage) -> None:
        """Reply now (no link state changed with it); a full outgoing queue is counted and
        logged, never raised into a handler."""
        try:
            self.ctx.bus.publish(self.ctx.topics.app(application), msg.TYPE, msg.to_dict())
        except BusOverloaded as exc:
            self.counts["replies_overloaded_total"] += 1
            self._rlog("overloaded", logging.WARNING, "apps: %s to %s not sent: %s", msg.TYPE,
                       application, exc, application=application)

    def _refuse(self, application: str, request_id: str | None, code: ErrorCode,
                reason: str, fidelity_estimate: float | None = None) -> None:
        self.refused[code.value] += 1
        self.outcomes["error"] += 1
        self._rlog(f"refused:{code.value}", logging.WARNING,
                   "apps: refused %s's request %s: %s (%s)", application, request_id, reason,
                   code.value, application=application, request_id=request_id,
                   code=code.value)
        self._publish(application, Error(code, reason[:500], request_id,
                                         fidelity_estimate=fidelity_estimate))

    # ------------------------------------------------------------------ requests
    async def _on_request(self, topic: Topic, msg: Envelope) -> None:
        application = msg.sender
        raw_id = msg.body.get("request_id")
        request_id = raw_id if isinstance(raw_id, str) and _ID.fullmatch(raw_id) else None
        if topic.arg != self.ctx.node:
            return   # not addressed to this node (a wildcard we did not ask for)
        if application not in self.config.applications:
            self._refuse(application, request_id, ErrorCode.NOT_AUTHORISED,
                         f"{application!r} is not an application of {self.ctx.node} "
                         f"(its config lists {len(self.config.applications)})")
            return
        try:
            parsed = parse_request({**msg.body, "type": msg.type})
        except ValueError as exc:
            self._refuse(application, request_id, ErrorCode.BAD_REQUEST, str(exc))
            return
        if isinstance(parsed, Request):
            await self._request(application, parsed)
        elif isinstance(parsed, Cancel):
            await self._cancel(application, parsed.request_id, cancelled=True)
        elif isinstance(parsed, Listen):
            self._listen(application, parsed.purpose, True)
        elif isinstance(parsed, Unlisten):
            self._listen(application, parsed.purpose, False)
        elif isinstance(parsed, Operate):
            self._operate(application, parsed)

    async def _request(self, application: str, req: Request) -> None:
        key = (application, req.request_id)
        if key in self.live:
            self._refuse(application, req.request_id, ErrorCode.DUPLICATE_REQUEST,
                         f"request id {req.request_id!r} is in use by a live request")
            return
        pool = self.pools.get(req.remote)
        if pool is None or (isinstance(pool, RoutedPool) and pool.id not in self._heard):
            self._await_route(application, req)
            return
        if req.kind != "keep":
            self._refuse(application, req.request_id, ErrorCode.UNSUPPORTED,
                         f"kind {req.kind!r}: the pairs of link {pool.id} are kept in qubits; "
                         f"measure them there")
            return
        listener = self.peer_listening[pool.id].get(req.purpose)
        if listener is None:
            self._refuse(application, req.request_id, ErrorCode.NO_LISTENER,
                         f"no application at {pool.remote} listens on purpose {req.purpose}")
            return
        estimate = pool.estimate()
        if estimate is not None and req.min_fidelity > estimate:
            self._refuse(application, req.request_id, ErrorCode.FIDELITY_UNREACHABLE,
                         f"min_fidelity {req.min_fidelity:g} is above the fidelity of {pool.kind} "
                         f"{pool.id}'s fresh pairs ({estimate:.4f})", round(estimate, 6))
            return
        supply = self.supply_hz(pool)
        # no supply at all says the pool is starting or down, not how fast it will be
        if supply and req.pairs > SUPPLY_MARGIN * supply * req.timeout_s + 1:
            self._refuse(application, req.request_id, ErrorCode.RATE_UNREACHABLE,
                         f"{req.pairs} pairs in {req.timeout_s:g} s: {pool.kind} {pool.id} "
                         f"supplied {supply:.1f} pairs/s over the last "
                         f"{SUPPLY_WINDOW_S:g} s; ask for fewer or allow longer")
            return
        now = self.ctx.now()
        live = Live(application, req, pool, now, now + req.timeout_s)
        shown = None if estimate is None else round(estimate, 6)
        async with pool.lock:
            if pool.allocator:
                w = Waiting((self.ctx.node, application, req.request_id), req.priority,
                            req.min_fidelity, req.pairs, live.deadline, context=req)
                try:
                    self.queues[pool.id].add(w)
                except QueueFull as exc:
                    self._refuse(application, req.request_id, ErrorCode.QUEUE_FULL, str(exc))
                    return
                self.live[key] = live
                self._unstored.append((application, req.request_id, req.pairs, 0))
                await self._store()
                queued = len(self.queues[pool.id])
                self._publish(application, Accepted(req.request_id, queued, shown))
                await self._send(pool, self._serve(pool))
            else:
                self.live[key] = live
                self._unstored.append((application, req.request_id, req.pairs, 0))
                await self._store()
                weight = self._weight((self.ctx.node, application))
                self._publish(application, Accepted(req.request_id, 1, shown))
                await self._send(pool, [self._to_peer(pool, Serve(
                    pool.id, application, req.request_id, req.pairs, req.purpose,
                    req.min_fidelity, req.timeout_s, req.priority, weight))])

    def _await_route(self, application: str, req: Request) -> None:
        """A request for a node no pool serves yet: routing is asked for a path, and the
        request waits for its pool (at most ``ROUTE_WAIT_S``; :meth:`_resume_routed`), or is
        refused at once with why no path can serve it."""
        waiting = self._unrouted.get(req.remote, [])
        if any(a == application and r.request_id == req.request_id for a, r, _ in waiting):
            self._refuse(application, req.request_id, ErrorCode.DUPLICATE_REQUEST,
                         f"request id {req.request_id!r} is in use by a waiting request")
            return
        if req.remote in self.pools:
            why: str | None = None         # the pool is there, its other end not heard yet
        elif self.route is None:
            why = ("this node does not route (routing needs [memory].qdevice, an identity key "
                   "and the network's public keys)")
        elif req.remote == self.ctx.node:
            why = "that is this node"
        else:
            why = self.route(req.remote, req.min_fidelity)
        if why is None and len(waiting) >= MAX_UNROUTED:
            why = f"{MAX_UNROUTED} requests wait for a path to it already"
        if why is None and req.remote not in self._unrouted \
                and len(self._unrouted) >= MAX_UNROUTED_REMOTES:
            why = f"requests wait for paths to {MAX_UNROUTED_REMOTES} nodes already"
        if why is not None:
            self._refuse(application, req.request_id, ErrorCode.UNKNOWN_REMOTE,
                         f"{self.ctx.node} has no pool of pairs with {req.remote!r} (pools "
                         f"with: {sorted(self.pools) or 'none'}) and no path to it: {why}")
            return
        self._unrouted.setdefault(req.remote, []).append((application, req, self.ctx.now()))
        self.counts["requests_routed_total"] += 1

    async def _resume_routed(self, now: float) -> None:
        """The waiting requests whose routed pool has come (and heard its other end) go on as
        if just made; those that waited ``ROUTE_WAIT_S`` are refused."""
        for remote, waiting in list(self._unrouted.items()):
            pool = self.pools.get(remote)
            ready = pool is not None and (not isinstance(pool, RoutedPool)
                                          or pool.id in self._heard)
            if ready:
                del self._unrouted[remote]
                for application, req, _ in waiting:
                    await self._request(application, req)
                continue
            why = (f"no path to {remote!r} came within {ROUTE_WAIT_S:g} s (routing: "
                   f"{self.ctx.node}'s log says why)" if pool is None else
                   f"the path to {remote!r} is up, but its application service did not answer "
                   f"within {ROUTE_WAIT_S:g} s")
            for item in [w for w in waiting if now - w[2] > ROUTE_WAIT_S]:
                waiting.remove(item)
                self._refuse(item[0], item[1].request_id, ErrorCode.UNKNOWN_REMOTE, why)
            if not waiting:
                del self._unrouted[remote]

    def _unpark(self, application: str, request_id: str) -> bool:
        """Forget the request waiting for a routed path, if there is one."""
        for remote, waiting in list(self._unrouted.items()):
            for item in waiting:
                if item[0] == application and item[1].request_id == request_id:
                    waiting.remove(item)
                    if not waiting:
                        del self._unrouted[remote]
                    return True
        return False

    async def _cancel(self, application: str, request_id: str, *, cancelled: bool) -> None:
        live = self.live.get((application, request_id))
        if live is None and self._unpark(application, request_id):
            self.outcomes["cancelled"] += 1
            self._publish(application, Cancelled(request_id, 0))
            return
        if live is None:
            self._refuse(application, request_id, ErrorCode.UNKNOWN_REQUEST,
                         f"no live request {request_id!r} of {application} here")
            return
        pool = live.pool
        async with pool.lock:
            out = self._end(live, "cancelled")
            if not pool.allocator:
                out.append(self._to_peer(pool, Withdraw(pool.id, application, request_id)))
            await self._send(pool, out)

    def _end(self, live: Live, outcome: str, code: ErrorCode | None = None,
             reason: str = "") -> list[Routed]:
        """Terminal reply for ``live`` (caller holds its pool's lock): out of ``self.live`` and
        its pool's queue; the reply to send after the store."""
        key = (live.application, live.request.request_id)
        self.live.pop(key, None)
        self._unstored.append(key)
        q = self.queues.get(live.pool.id)
        if q is not None:
            q.remove((self.ctx.node, *key))
        rid, n = live.request.request_id, live.delivered
        self.outcomes[outcome] += 1
        msg: AppMessage
        if outcome == "done":
            msg = Done(rid, n)
            self.done_s.observe(self.ctx.now() - live.arrived)
        elif outcome == "expired":
            msg = Expired(rid, n)
        elif outcome == "cancelled":
            msg = Cancelled(rid, n)
        else:
            assert code is not None
            self.refused[code.value] += 1
            msg = Error(code, reason[:500], rid, n)
        log.info("apps: %s's request %s %s after %d of %d pairs", live.application, rid,
                 outcome, n, live.request.pairs,
                 extra={"application": live.application, "request_id": rid,
                        "outcome": outcome, "pairs": n})
        return [self._reply(live.application, msg)]

    def _listen(self, application: str, purpose: int, on: bool) -> None:
        allowed = self.config.applications[application].purposes
        if purpose not in allowed:
            self._refuse(application, None, ErrorCode.NOT_AUTHORISED,
                         f"purpose {purpose} is not {application}'s (its config allows "
                         f"{list(allowed)})")
            return
        if on:
            self.listening[purpose] = application
        elif self.listening.get(purpose) == application:
            del self.listening[purpose]
        self._publish(application, Listening(purpose, on))
        self._announce()

    # ------------------------------------------------------------------ allocation
    def _serve(self, pool: Pool) -> list[Routed]:
        """Give what can be given now (allocator; caller holds the pool's lock): the GIVEs and
        this end's replies, to be sent after the store."""
        queue = self.queues[pool.id]
        out: list[Routed] = []
        if not len(queue):
            return out
        now = self.ctx.now()
        for seq, fidelity in pool.offers(now):
            w = queue.pick(fidelity)
            if w is None:
                continue
            taken = pool.take(seq, now)
            if taken is None:
                continue
            last = queue.served(w)
            origin, application, rid = w.key
            req: Request | Serve = w.context  # type: ignore[assignment]
            out.append(self._to_peer(pool, Give(pool.id, seq, origin, application, rid,
                                                req.purpose, w.delivered, last)))
            out += self._delivered(pool, taken, origin, application, rid, req.purpose, last)
            if not len(queue):
                break
        return out

    def _delivered(self, pool: Pool, taken: Taken, origin: str, application: str,
                   rid: str, purpose: int, last: bool) -> list[Routed]:
        """Replies at this end for a pair of ``origin``'s request (allocator or not)."""
        out: list[Routed] = []
        now = self.ctx.now()
        if origin == self.ctx.node:
            live = self.live.get((application, rid))
            if live is None:   # it ended here meanwhile (deadline, CANCEL): the pair is lost
                self.counts["pairs_after_end_total"] += 1
                return out
            live.delivered += 1
            self._unstored.append((application, rid, live.request.pairs, live.delivered))
            if live.delivered == 1:
                self.first_pair_s.observe(now - live.arrived)
            self.pairs_delivered[application] += 1
            self._hold(application, pool, taken, now)
            out.append(self._reply(application, Pair(
                pool.id, taken.pair_id, pool.remote, purpose, taken.bell_state, taken.fidelity,
                "keep", rid, taken.qubit, taken.hold_ms, index=live.delivered)))
            if last or live.delivered >= live.request.pairs:
                out += self._end(live, "done")
        else:
            listener = self.listening.get(purpose)
            if listener is None:
                self.counts["pairs_unclaimed_total"] += 1
                return out
            self.pairs_delivered[listener] += 1
            self._hold(listener, pool, taken, now)
            out.append(self._reply(listener, Pair(
                pool.id, taken.pair_id, pool.remote, purpose, taken.bell_state, taken.fidelity,
                "keep", None, taken.qubit, taken.hold_ms, remote_application=application)))
        return out

    # ------------------------------------------------------------------ operations
    def _hold(self, application: str, pool: Pool, taken: Taken, now: float) -> None:
        until = math.inf if taken.hold_ms is None else now + taken.hold_ms / 1000.0
        key = (application, pool.id, taken.pair_id)
        self._gone.pop(key, None)
        memory = taken.memory or pool.memory
        self.holding[key] = Holding(application, pool, taken.pair_id, taken.qubit, memory,
                                    memory.pool.generation, now, until, taken.fidelity_at)

    def _operate(self, application: str, op: Operate) -> None:
        """Check an OPERATE and start it (its RESULT or ERROR goes out when it ends)."""
        try:
            _, consumes_pair = check_gates(op.ops, self.channels)
        except ValueError as exc:
            self._operation_refused(application, op, ErrorCode.BAD_REQUEST, str(exc))
            return
        key = (application, op.pool, op.pair_id)
        h = self.holding.get(key)
        now = self.ctx.now()
        why = None
        if h is None:
            why = self._gone.get(key, "was not delivered to it")
        elif h.generation != h.memory.pool.generation:
            why = "was lost: the QDevice was reset since its delivery"
        elif h.until <= now and not h.busy:
            why = f"is no longer held: its hold ended {now - h.until:.3f} s ago"
        if h is None or why is not None:
            if h is not None and not h.busy:
                self._drop_holding(key, why or "")
            self._operation_refused(application, op, ErrorCode.UNKNOWN_PAIR,
                                    f"pair {op.pair_id} of {op.pool} is not {application}'s: "
                                    f"it {why}")
            return
        if h.busy:
            self._operation_refused(application, op, ErrorCode.BAD_REQUEST,
                                    f"an OPERATE on pair {op.pair_id} of {op.pool} is running; "
                                    f"send the next after its reply")
            return
        if self._running[application] >= MAX_OPERATIONS_PER_APPLICATION:
            self._operation_refused(application, op, ErrorCode.QUEUE_FULL,
                                    f"{application} has {MAX_OPERATIONS_PER_APPLICATION} "
                                    f"OPERATEs running; wait for their replies")
            return
        h.busy = True
        self._running[application] += 1
        h.memory.rehold(h.qubit, math.inf)    # no pair is bound into it while the gates run
        task = asyncio.ensure_future(self._run_operation(key, h, op, consumes_pair))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_operation(self, key: tuple[str, str, int], h: Holding, op: Operate,
                             consumed: bool) -> None:
        application = h.application
        try:
            outcomes, photons = await h.memory.pool.call(run_gates, h.qubit, op.ops,
                                                         self.channels)
        except PhotonLost as exc:   # nothing ran: the pair stays the application's
            h.memory.rehold(h.qubit, h.until)
            # a fibre loses most photons: physics, not a fault (counted, logged as INFO)
            self._operation_refused(application, op, ErrorCode.PHOTON_LOST, str(exc),
                                    logging.INFO)
            return
        except Exception as exc:  # noqa: BLE001 - any failure of the device ends the operation
            h.memory.release(h.qubit)      # its state is unknown now: not the application's
            self._drop_holding(key, "was given back when the QDevice failed an OPERATE")
            self._operation_refused(application, op, ErrorCode.UNAVAILABLE,
                                    f"the QDevice failed the gates ({type(exc).__name__}: "
                                    f"{str(exc)[:200]}); the pair's qubit is given back")
            return
        finally:
            h.busy = False
            self._running[application] -= 1
        now = self.ctx.now()
        fidelity = None if h.fidelity_at is None else h.fidelity_at(now)
        released = consumed or op.release or h.until <= now
        if released:
            h.memory.release(h.qubit)
            self._drop_holding(key, "was measured or sent" if consumed else "was released")
        else:
            h.memory.rehold(h.qubit, h.until)
        self.operations["result"] += 1
        self._publish(application, Result(op.request_id, op.pool, op.pair_id, outcomes,
                                          released, None if released else hold_ms(h.until - now),
                                          fidelity, photons or None))

    def _operation_refused(self, application: str, op: Operate, code: ErrorCode,
                           reason: str, level: int = logging.WARNING) -> None:
        self.operations[code.value] += 1
        self._rlog(f"operate:{code.value}", level,
                   "apps: refused %s's OPERATE %s: %s (%s)", application, op.request_id, reason,
                   code.value, application=application, request_id=op.request_id,
                   code=code.value)
        self._publish(application, Error(code, reason[:500], op.request_id))

    def _drop_holding(self, key: tuple[str, str, int], why: str) -> None:
        """Forget a holding; why it ended is kept a while for a later OPERATE's ERROR."""
        self.holding.pop(key, None)
        self._gone[key] = why
        while len(self._gone) > GONE_REMEMBERED:
            self._gone.popitem(last=False)

    def _forget_holdings(self, now: float) -> None:
        """Drop the holdings whose hold ended (the memory gave their qubits back)."""
        for key, h in list(self.holding.items()):
            if h.until <= now and not h.busy:
                self._drop_holding(key, f"is no longer held: its hold ended at "
                                        f"{h.until - h.delivered:.3f} s after delivery")

    # ------------------------------------------------------------------ peer messages
    async def _on_peer(self, topic: Topic, msg: Envelope) -> None:
        """A message of the other end of one of this node's pools (identity-signed: the bus
        verified the sender)."""
        cls = PEER_TYPES.get(msg.type)
        if cls is None:
            self._bad_peer("unknown_type", msg, f"{msg.type[:40]!r} is not a service message")
            return
        try:
            m = cls.from_dict({**msg.body, "type": msg.type})
        except ValueError as exc:
            self._bad_peer("bad_body", msg, str(exc))
            return
        pool = self.by_id.get(m.link)
        if pool is None or pool.remote != msg.sender:
            self._bad_peer("unknown_pool", msg, f"no pool {m.link!r} with {msg.sender} here")
            return
        async with pool.lock:
            if isinstance(m, Listeners):
                self.peer_listening[pool.id] = {int(p): a for p, a in m.purposes.items()}
                out: list[Routed] = []
                if pool.id not in self._heard:   # first word from a new pool: answer at once
                    self._heard.add(pool.id)
                    self._announce(pool)
            elif isinstance(m, Serve) and pool.allocator:
                out = self._on_serve(pool, m)
            elif isinstance(m, Withdraw) and pool.allocator:
                self.queues[pool.id].remove((pool.remote, m.application, m.request_id))
                out = []
            elif isinstance(m, Give) and not pool.allocator:
                out = self._on_give(pool, m)
            elif isinstance(m, Holds) and pool.allocator and isinstance(pool, PathPool):
                pool.confirm(m.pair_ids)
                out = self._serve(pool)
            elif isinstance(m, ServeEnd) and not pool.allocator:
                live = self.live.get((m.application, m.request_id))
                out = [] if live is None else self._end(live, "error", ErrorCode(m.code),
                                                        m.reason)
            else:
                self._bad_peer("wrong_end", msg, f"{msg.type} is not for the "
                                                 f"{'allocator' if pool.allocator else 'other'}"
                                                 f" end of {pool.id}")
                return
            await self._send(pool, out)

    def supply_hz(self, pool: Pool) -> float | None:
        """Pairs per second that ``pool`` made available over the last
        :data:`SUPPLY_WINDOW_S` (None until it has been watched that long)."""
        samples = self._supply[pool.id]
        if len(samples) < 2 or samples[-1][0] - samples[0][0] < 0.9 * SUPPLY_WINDOW_S:
            return None
        (t0, n0), (t1, n1) = samples[0], samples[-1]
        return (n1 - n0) / (t1 - t0)

    def _sample_supply(self, now: float) -> None:
        for pool in self.pools.values():
            samples = self._supply[pool.id]
            samples.append((now, pool.supplied()))
            while len(samples) > 2 and now - samples[1][0] >= SUPPLY_WINDOW_S:
                samples.popleft()

    def _bad_peer(self, reason: str, msg: Envelope, detail: str) -> None:
        self.refused_peer[reason] += 1
        self._rlog(f"peer:{reason}", logging.WARNING, "apps: refused %s from %s: %s",
                   msg.type[:40], msg.sender, detail[:300], reason=reason, sender=msg.sender)

    def _on_serve(self, pool: Pool, m: Serve) -> list[Routed]:
        key: RequestKey = (pool.remote, m.application, m.request_id)
        queue = self.queues[pool.id]
        if key in queue:
            return []
        self._weights[(pool.remote, m.application)] = m.weight
        try:
            queue.add(Waiting(key, m.priority, m.min_fidelity, m.pairs,
                              self.ctx.now() + m.timeout_s, context=m))
        except QueueFull as exc:
            return [self._to_peer(pool, ServeEnd(pool.id, m.application, m.request_id,
                                                 ErrorCode.QUEUE_FULL.value, str(exc), 0))]
        return self._serve(pool)

    def _on_give(self, pool: Pool, m: Give) -> list[Routed]:
        now = self.ctx.now()
        taken = pool.take(m.seq, now)
        if taken is None:
            if pool.kind == "path":   # the repeater's SWAP_RES to this end may still come
                self._early[(pool.id, m.seq)] = (m, now)
                return []
            self.counts["gives_failed_total"] += 1
            self._rlog("give_failed", logging.WARNING,
                       "apps: GIVE of pair %d of %s, which is not held here", m.seq, m.link,
                       link=m.link, seq=m.seq)
            return []
        return self._delivered(pool, taken, m.origin, m.application, m.request_id, m.purpose,
                               m.last)

    def _early_gives(self, pool: Pool, now: float) -> list[Routed]:
        """GIVEs that came before their path pair: applied once it is here, dropped (counted)
        after :data:`GIVE_WAIT_S`."""
        out: list[Routed] = []
        for key, (m, at) in list(self._early.items()):
            if key[0] != pool.id:
                continue
            taken = pool.take(m.seq, now)
            if taken is not None:
                del self._early[key]
                out += self._delivered(pool, taken, m.origin, m.application, m.request_id,
                                       m.purpose, m.last)
            elif now - at > GIVE_WAIT_S:
                del self._early[key]
                self.counts["gives_failed_total"] += 1
                self._rlog("give_failed", logging.WARNING,
                           "apps: GIVE of pair %d of %s: the pair never came", m.seq, m.link,
                           link=m.link, seq=m.seq)
        return out

    def _announce(self, only: Pool | None = None) -> None:
        """Tell every pool's other end (or ``only``'s) which purposes are listened on here."""
        purposes = {str(p): a for p, a in sorted(self.listening.items())}
        for pool in self.pools.values() if only is None else (only,):
            msg = Listeners(pool.id, purposes)
            self.ctx.bus.publish(self.ctx.topics.svc(pool.remote), msg.TYPE, msg.to_dict())

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        """Deadlines, pairs that became deliverable, and the periodic LISTENERS; first, the
        requests a previous run accepted end in ``ERROR unavailable``."""
        await self._orphans()
        next_announce = 0.0
        while True:
            await wait_event(self._wake, TICK_S)
            self._wake.clear()
            now = self.ctx.now()
            self._sample_supply(now)
            self._forget_holdings(now)
            if self._unrouted:
                await self._resume_routed(now)
            if now >= next_announce:
                self._announce()
                next_announce = now + self.config.listeners_every_s
            for pool in self.pools.values():
                async with pool.lock:
                    out: list[Routed] = []
                    now = self.ctx.now()
                    for live in [v for v in self.live.values() if v.pool is pool]:
                        if live.deadline <= now:
                            out += self._end(live, "expired")
                            if not pool.allocator:
                                out.append(self._to_peer(pool, Withdraw(
                                    pool.id, live.application, live.request.request_id)))
                    if pool.allocator:
                        self.queues[pool.id].expired(now)   # the other end's: it replies
                        out += self._serve(pool)
                    else:
                        if isinstance(pool, PathPool):
                            new = pool.unannounced()
                            for k in range(0, len(new), 1024):
                                out.append(self._to_peer(pool, Holds(pool.id, new[k:k + 1024])))
                        if self._early:
                            out += self._early_gives(pool, now)
                    await self._send(pool, out)

    async def _orphans(self) -> None:
        """The terminal reply of each request stored by a previous run of this node."""
        store = self.ctx.store
        rows = await asyncio.to_thread(store.load_app_requests)
        self._unstored += [(application, rid) for application, rid, _, _ in rows]
        await self._store()
        for application, rid, pairs, delivered in rows:
            self.outcomes["error"] += 1
            self.refused[ErrorCode.UNAVAILABLE.value] += 1
            log.warning("apps: %s's request %s was live when the node stopped: answered "
                        "ERROR unavailable", application, rid,
                        extra={"application": application, "request_id": rid})
            self._publish(application, Error(
                ErrorCode.UNAVAILABLE, f"{self.ctx.node} restarted while serving the request "
                f"({delivered} of {pairs} pairs delivered before); ask again", rid, delivered))

    def telemetry(self) -> AppsTelemetry:
        """The ``apps`` part of the node's telemetry."""
        return {
            "requests_waiting": sum(len(q) for q in self.queues.values()),
            "requests_live": len(self.live),
            "requests_awaiting_route": sum(len(w) for w in self._unrouted.values()),
            "requests_routed_total": self.counts["requests_routed_total"],
            "requests_total": dict(self.outcomes),
            "requests_refused_total": dict(self.refused),
            "pairs_delivered_total": dict(self.pairs_delivered),
            "listening": {str(p): a for p, a in sorted(self.listening.items())},
            "request_first_pair_seconds": self.first_pair_s.as_dict(),
            "request_done_seconds": self.done_s.as_dict(),
            "pairs_after_end_total": self.counts["pairs_after_end_total"],
            "pairs_unclaimed_total": self.counts["pairs_unclaimed_total"],
            "gives_failed_total": self.counts["gives_failed_total"],
            "replies_overloaded_total": self.counts["replies_overloaded_total"],
            "peer_rejected_total": dict(self.refused_peer),
            "operations_total": dict(self.operations),
            "pairs_held": len(self.holding),
        }
