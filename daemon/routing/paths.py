"""Routed paths: a CREATE for a node that no link and no ``[[paths]]`` reaches is served over a
path that routing chose, installed at its repeaters by signed messages, and moved when it breaks.

**Who installs.** Of the two ends, the one whose node id sorts first (the *installer*) chooses
the route (:meth:`~qnode.daemon.routing.service.RoutingService.route_for`) and sends
:class:`~qnode.daemon.linklayer.messages.PathSetup` (PATH, identity-signed, on ``ll/<node>``)
to every other node of it; a CREATE at the other end first asks it to (PATH_REQ) and waits for
the PATH (at most ``PATH_WAIT_S``). Each node checks that the PATH comes from the path's first
node, that it is on the path, and that the links the path names on its sides are its own with
the right peers; then a repeater swaps for the path (a
:class:`~qnode.daemon.klink.swapping.Swapper`) and the far end serves the path's pairs (a
:class:`~qnode.daemon.klink.swapping.PathEnd`), exactly as for a configured path.

**Soft state.** A path lives ``3 × [routing].advert_interval_s`` past its last PATH: the
installer refreshes it every interval, so a path whose installer died or moved on lapses by
itself; a PATH with ``ttl_s`` 0 removes it at once.

**Failover.** Every interval the installer checks its path against the graph: every link of it
still advertised up or degraded by both ends, and the predicted fidelity still at least what
the path was chosen for. If not, it chooses again, installs the new path (a new id), removes the
old one and hands the old end's waiting CREATEs to the new end. An end's old path is kept for
its pairs' cut-off (``[memory].max_pair_age_s`` and a guard) but serves no request: the pairs
in flight on the dead route are discarded at each end's cut-off. Each change is logged, counted
and in the telemetry (``routing.paths``), with the time since the broken link's evidence.

A routed path serves the link layer's CREATEs (each end its own requester, as on a configured
path) and the application service: one pool per remote node
(:class:`~qnode.daemon.apps.pools.RoutedPool`, ``on_end``) that moves with the path, so both
ends' applications get the same pairs across a re-route.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qnode.daemon.bus.client import BusOverloaded
from qnode.daemon.klink.swapping import CHAIN_WAIT_S, CUTOFF_GUARD_S, PathEnd, Swapper
from qnode.daemon.linklayer import (
    MAX_HOPS,
    Create,
    CreateIdAllocator,
    Err,
    ErrCode,
    PathRequest,
    PathSetup,
)
from qnode.daemon.logs import RateLimitedLog
from qnode.daemon.routing.graph import Route
from qnode.daemon.runtime.config import PathConfig

if TYPE_CHECKING:
    from qnode.daemon.bus.envelope import Message as Envelope
    from qnode.daemon.bus.telemetry import PathTelemetry, Reroute, RoutedPathTelemetry
    from qnode.daemon.klink.service import LinkRouter, LinkService
    from qnode.daemon.routing.service import RoutingService
    from qnode.daemon.runtime.config import MemoryConfig, RoutingConfig
    from qnode.daemon.runtime.context import NodeContext

log = logging.getLogger("qnode.routing")

#: a CREATE at the end that does not install waits this long (s) for the PATH
PATH_WAIT_S = 10.0
#: CREATEs waiting for a PATH, per remote node (more are refused: ERR UNSUPP)
MAX_WAITING_CREATES = 64
#: routed paths a node keeps at once (more PATHs are refused and counted)
MAX_PATHS = 256
#: a path's lifetime without a refresh, in advert intervals
TTL_INTERVALS = 3.0


def path_id(installer: str, remote: str, serial: int) -> str:
    """A routed path's id: ``<installer>-<remote>-r<serial>``, or, when that is longer than a
    name may be (64), ``route-<hash of both>-r<serial>``."""
    pid = f"{installer}-{remote}-r{serial}"
    if len(pid) <= 64:
        return pid
    digest = hashlib.sha256(f"{installer}\0{remote}".encode()).hexdigest()[:16]
    return f"route-{digest}-r{serial}"


@dataclass
class LocalPath:
    """A routed path through or ending at this node."""

    path: PathConfig
    installed_at: float                 # Unix s
    expires_at: float                   # monotonic s (inf: this node installed it)
    need: float = 0.0                   # the fidelity it was chosen for (installer)
    swapper: Swapper | None = None
    end: PathEnd | None = None
    task: asyncio.Task[None] | None = None
    draining_until: float | None = None  # monotonic s: removed, its pairs kept until then
    services: tuple[LinkService, ...] = ()


@dataclass
class _Waiting:
    create: Create
    requester: str
    since: float                        # monotonic s


@dataclass
class PathCounts:
    installed: int = 0
    removed: int = 0
    rerouted: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)


class PathManager:
    """This node's routed paths (module docstring). ``services``: its K link services with
    qubits, by link id."""

    def __init__(self, ctx: NodeContext, routing: RoutingService, router: LinkRouter,
                 services: dict[str, LinkService], mem: MemoryConfig, cfg: RoutingConfig):
        self.ctx, self.routing, self.router = ctx, routing, router
        self.services, self.mem, self.cfg = services, mem, cfg
        self.local: dict[str, LocalPath] = {}        # path id -> path
        self.mine: dict[str, LocalPath] = {}         # remote -> the active path installed here
        self.waiting: dict[str, list[_Waiting]] = {}
        self.create_ids: dict[str, CreateIdAllocator] = {}
        self.counts = PathCounts()
        self.last_reroute: Reroute | None = None
        self._serial = itertools.count(int(time.time()))   # ids unique across restarts
        self._asked: dict[str, float] = {}                  # remote -> when PATH_REQ went
        self._rlog = RateLimitedLog(log)
        self._slowlog = RateLimitedLog(log, 30.0)   # "no route yet": once per 30 s and remote
        self._running = False
        #: called with each path end installed here (the application service's pools)
        self.on_end: list[Callable[[PathEnd], Awaitable[None]]] = []
        router.serve_paths(self.on_message)
        router.serve_unplaced(self.on_create)

    @property
    def ttl_s(self) -> float:
        return TTL_INTERVALS * self.cfg.advert_interval_s

    # ------------------------------------------------------------------ messages
    async def on_message(self, msg: Envelope, parsed: PathSetup | PathRequest) -> None:
        """A PATH or PATH_REQ (identity-signed: the router checked)."""
        if isinstance(parsed, PathRequest):
            await self._on_request(msg.sender, parsed)
            return
        why = self._refuse_setup(msg.sender, parsed)
        if why is not None:
            self.counts.refused[why[0]] += 1
            self._rlog(f"refused:{why[0]}", logging.WARNING, "routing: PATH %s from %s "
                       "refused: %s", parsed.path, msg.sender, why[1], path=parsed.path,
                       sender=msg.sender, reason=why[0])
            return
        if parsed.ttl_s == 0:
            found = self.local.get(parsed.path)
            if found is not None:
                self._remove(found, "removed by its installer")
            return
        found = self.local.get(parsed.path)
        if found is not None:
            found.expires_at = self.ctx.now() + parsed.ttl_s
            return
        self._install(PathConfig(parsed.path, parsed.nodes, parsed.links),
                      self.ctx.now() + parsed.ttl_s)

    def _refuse_setup(self, sender: str, m: PathSetup) -> tuple[str, str] | None:
        me = self.ctx.node
        if sender != m.nodes[0] or not m.nodes[0] < m.nodes[-1]:
            return "not_installer", (f"a path is set up by its end whose id sorts first, as "
                                     f"nodes[0]; {sender!r} sent {list(m.nodes)}")
        if me not in m.nodes[1:]:
            return "not_on_path", f"{me!r} is not on {list(m.nodes)}"
        k = m.nodes.index(me)
        for j in (k - 1, k):
            if 0 <= j < len(m.links):
                s = self.services.get(m.links[j])
                peer = m.nodes[j + 1] if j == k else m.nodes[j]
                if s is None or s.peer != peer:
                    return "wrong_link", (f"link {m.links[j]!r} is not a K link with qubits of "
                                          f"{me} with {peer!r}")
        configured = self.router.paths.get(m.nodes[0])
        if k == len(m.nodes) - 1 and configured is not None and not any(
                lp.end is configured for lp in self.local.values()):
            return "configured", (f"a configured path ({configured.path.id!r}) serves "
                                  f"{m.nodes[0]!r} here")
        existing = self.local.get(m.path)
        if existing is not None and (existing.path.nodes, existing.path.links) != (
                m.nodes, m.links):
            return "changed", f"path {m.path!r} exists along {list(existing.path.nodes)}"
        if existing is None and m.ttl_s > 0 and len(self.local) >= MAX_PATHS:
            return "full", f"{len(self.local)} routed paths held (at most {MAX_PATHS})"
        if existing is None and m.ttl_s > 0 and m.path in self.router.path_ends:
            return "taken", f"path id {m.path!r} is a configured path's"
        return None

    async def _on_request(self, sender: str, m: PathRequest) -> None:
        me = self.ctx.node
        if not me < sender:
            self.counts.refused["not_installer"] += 1
            return
        if sender in self.mine or sender in self.router.paths:
            self._refresh(self.mine.get(sender))   # it may have missed the PATH
            return
        self._route_to(sender, m.min_fidelity)

    # ------------------------------------------------------------------ wanted
    def want(self, remote: str, min_fidelity: float) -> str | None:
        """A path to ``remote`` is wanted (an application's request for a node no pool of
        this node serves): installed here by the installer, else asked of it (PATH_REQ, at
        most once an advert interval). None when a path is coming (its end arrives through
        :attr:`on_end`), else why no path can serve it."""
        need = max(min_fidelity, self.cfg.min_fidelity)
        route, why = self.routing.route_for(remote, need)
        if route is None:
            return why
        if route.hops < 2:
            return f"{remote} is a neighbour: its link serves it once the link is up"
        if route.hops > MAX_HOPS:
            return f"the best route has {route.hops} links, a path at most {MAX_HOPS}"
        if self.ctx.node < remote:
            self._route_to(remote, need)
        else:
            self._ask_installer(remote, need)
        return None

    def _ask_installer(self, remote: str, need: float) -> None:
        """PATH_REQ to ``remote``, the installer of a path to it (at most once an advert
        interval)."""
        now = self.ctx.now()
        if now - self._asked.get(remote, -math.inf) > self.cfg.advert_interval_s:
            self._asked[remote] = now
            self._publish(remote, PathRequest(need))

    # ------------------------------------------------------------------ CREATE
    async def on_create(self, create: Create, msg: Envelope) -> None:
        """A CREATE that no link or path of this node serves (the router's fallback)."""
        remote = create.remote_node
        if remote == self.ctx.node or create.tpe != "K":
            self._err(msg.sender, ErrCode.UNSUPP)
            return
        if self.ctx.node < remote:
            lp = self._route_to(remote, create.min_fidelity)
            if lp is None or lp.end is None:
                self._err(msg.sender, ErrCode.UNSUPP)
                return
            async with lp.end.service.lock:
                await lp.end.request(create, msg.sender)
            return
        route, why = self.routing.route_for(remote, max(create.min_fidelity,
                                                        self.cfg.min_fidelity))
        if route is None:   # the installer could not route it either: say so now
            self._no_route(remote, why)
            self._err(msg.sender, ErrCode.UNSUPP)
            return
        queue = self.waiting.setdefault(remote, [])
        if len(queue) >= MAX_WAITING_CREATES:
            self.counts.refused["waiting_full"] += 1
            self._err(msg.sender, ErrCode.UNSUPP)
            return
        queue.append(_Waiting(create, msg.sender, self.ctx.now()))
        self._ask_installer(remote, max(create.min_fidelity, 0.0))

    def _no_route(self, remote: str, why: str) -> None:
        self._slowlog(f"noroute:{remote}", logging.WARNING, "routing: no path to %s: %s",
                      remote, why, remote=remote, reason=why)

    def _err(self, requester: str, code: ErrCode) -> None:
        cid = self.create_ids.setdefault("", CreateIdAllocator()).allocate()
        self.ctx.bus.publish(self.ctx.topics.reply(requester), "ERR", Err(cid, code).to_dict())

    # ------------------------------------------------------------------ install, remove
    def _route_to(self, remote: str, min_fidelity: float) -> LocalPath | None:
        """The active path to ``remote`` installed here, installing one if needed."""
        found = self.mine.get(remote)
        if found is not None:
            return found
        need = max(min_fidelity, self.cfg.min_fidelity)
        route, why = self.routing.route_for(remote, need)
        if route is None:
            self._no_route(remote, why)
            return None
        if route.hops < 2:
            return None      # a neighbour: its link serves it
        if route.hops > MAX_HOPS:
            self._slowlog(f"toolong:{remote}", logging.WARNING, "routing: no path to %s: the "
                          "best route has %d links, a path at most %d", remote, route.hops,
                          MAX_HOPS, remote=remote)
            return None
        return self._install_mine(route, need)

    def _install_mine(self, route: Route, need: float) -> LocalPath:
        pid = path_id(self.ctx.node, route.nodes[-1], next(self._serial))
        lp = self._install(PathConfig(pid, route.nodes, route.links), math.inf)
        lp.need = need
        self.mine[route.nodes[-1]] = lp
        self._refresh(lp)
        return lp

    def _install(self, path: PathConfig, expires_at: float) -> LocalPath:
        me = self.ctx.node
        k = path.nodes.index(me)
        lp = LocalPath(path, time.time(), expires_at)
        if 0 < k < len(path.nodes) - 1:
            pair = (self.services[path.links[k - 1]], self.services[path.links[k]])
            m0, m1 = pair[0].memory, pair[1].memory
            assert m0 is not None and m1 is not None
            lp.swapper = Swapper(self.ctx, path, pair, (m0, m1), self.mem)
            lp.services = pair
            for s in pair:
                s.listeners.append(lp.swapper.poke)
        else:
            service = self.services[path.links[0 if k == 0 else -1]]
            assert service.memory is not None
            end = lp.end = PathEnd(self.ctx, path, service, service.memory, self.mem)
            end.create_ids = self.create_ids.setdefault(end.remote, CreateIdAllocator())
            lp.services = (service,)
            previous = self.router.paths.get(end.remote)
            self.router.add_path(end)
            if previous is not None and previous is not end:
                previous.hand_over(end)
            for w in self.waiting.pop(end.remote, []):
                self._spawn(self._serve_waiting(end, w))
            for hook in self.on_end:
                self._spawn(hook(end))
        self.local[path.id] = lp
        self.counts.installed += 1
        if self._running:
            self._start(lp)
        log.info("routing: path %s installed: %s (%s)", path.id, ">".join(path.nodes),
                 "swapping here" if lp.swapper else "an end here",
                 extra={"path": path.id, "nodes": list(path.nodes), "links": list(path.links)})
        return lp

    async def _serve_waiting(self, end: PathEnd, w: _Waiting) -> None:
        async with end.service.lock:
            await end.request(w.create, w.requester)

    def _remove(self, lp: LocalPath, why: str) -> None:
        """Stop swapping for ``lp``, or stop serving requests from it (its pairs drain)."""
        if lp.draining_until is not None:
            return
        self.counts.removed += 1
        if lp.swapper is not None:
            for s in lp.services:
                with contextlib.suppress(ValueError):
                    s.listeners.remove(lp.swapper.poke)
            if lp.task is not None:
                lp.task.cancel()
            del self.local[lp.path.id]
        else:
            assert lp.end is not None
            self.router.drop_path(lp.end, reports_too=False)
            cutoff = self.mem.max_pair_age_s if self.mem.max_pair_age_s > 0 else CHAIN_WAIT_S
            lp.draining_until = self.ctx.now() + cutoff + 2 * CUTOFF_GUARD_S
        if self.mine.get(lp.path.ends[-1]) is lp:
            del self.mine[lp.path.ends[-1]]
        log.info("routing: path %s removed (%s)", lp.path.id, why,
                 extra={"path": lp.path.id, "reason": why})

    def _drained(self, lp: LocalPath) -> None:
        assert lp.end is not None
        self.router.drop_path(lp.end, reports_too=True)
        if lp.task is not None:
            lp.task.cancel()
        del self.local[lp.path.id]

    def _refresh(self, lp: LocalPath | None, *, ttl_s: float | None = None) -> None:
        """Send ``lp``'s PATH to every other node of it (``ttl_s`` 0: its removal)."""
        if lp is None:
            return
        p = lp.path
        setup = PathSetup(p.id, p.nodes, p.links, self.ttl_s if ttl_s is None else ttl_s,
                          time.time())
        for node in p.nodes[1:]:
            self._publish(node, setup)

    def _publish(self, node: str, m: PathSetup | PathRequest) -> None:
        try:
            self.ctx.bus.publish(self.ctx.topics.ll(node), m.TYPE, m.to_dict(), node_sign=True)
        except BusOverloaded:
            self.counts.refused["send_overloaded"] += 1

    # ------------------------------------------------------------------ every interval
    def tick(self) -> None:
        """Failover of the paths installed here, their refresh, the lapse of the rest, and
        the standing paths of ``[routing] paths_to``."""
        now = self.ctx.now()
        for remote in self.cfg.paths_to:
            if remote in self.mine or remote in self.router.paths or remote == self.ctx.node:
                continue
            if self.ctx.node < remote:
                self._route_to(remote, self.cfg.min_fidelity)
            else:
                self._ask_installer(remote, self.cfg.min_fidelity)
        for remote, lp in list(self.mine.items()):
            broken = self.routing.check(lp.path, lp.need)
            if broken is not None:
                self._reroute(remote, lp, broken)
            else:
                self._refresh(lp)
        for lp in list(self.local.values()):
            if lp.draining_until is not None:
                if now >= lp.draining_until:
                    self._drained(lp)
            elif now >= lp.expires_at:
                self._remove(lp, "not refreshed by its installer")
        for remote, queue in list(self.waiting.items()):
            for w in [w for w in queue if now - w.since > PATH_WAIT_S]:
                queue.remove(w)
                self.counts.refused["no_path_in_time"] += 1
                self._err(w.requester, ErrCode.UNSUPP)
            if not queue:
                del self.waiting[remote]

    def _reroute(self, remote: str, old: LocalPath, why: tuple[str, float | None]) -> None:
        reason, since = why
        route, no_route = self.routing.route_for(remote, old.need)
        t0 = time.monotonic()
        if route is None or route.nodes == old.path.nodes or not 2 <= route.hops <= MAX_HOPS:
            # every interval while it lasts: one line per 30 s is enough at 3 a.m.
            self._slowlog(f"broken:{old.path.id}", logging.WARNING,
                          "routing: path %s is broken (%s) and no other route serves it: %s",
                          old.path.id, reason, no_route, path=old.path.id, reason=reason)
            self._refresh(old)
            return
        new = self._install_mine(route, old.need)
        self._refresh(old, ttl_s=0.0)
        self._remove(old, f"re-routed: {reason}")
        self.counts.rerouted += 1
        evidence = None if since is None else max(0.0, time.time() - since)
        self.last_reroute = {"old": list(old.path.nodes), "new": list(route.nodes),
                             "reason": reason, "at": time.time(),
                             "switch_ms": (time.monotonic() - t0) * 1e3}
        if evidence is not None:
            self.last_reroute["evidence_age_s"] = evidence
        log.info("routing: path to %s re-routed: %s -> %s (%s; the evidence is %s old)", remote,
                 ">".join(old.path.nodes), ">".join(route.nodes), reason,
                 "?" if evidence is None else f"{evidence:.1f} s",
                 extra={"remote": remote, "old": old.path.id, "new": new.path.id,
                        "reason": reason, "evidence_age_s": evidence})

    # ------------------------------------------------------------------ tasks
    def _start(self, lp: LocalPath) -> None:
        if lp.swapper is not None:
            lp.task = self._spawn(lp.swapper.run())
        elif lp.end is not None:
            lp.task = self._spawn(self._end_ticker(lp.end))

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("routing: a path's task failed", exc_info=task.exception())

    @staticmethod
    async def _end_ticker(end: PathEnd) -> None:
        while True:
            await asyncio.sleep(0.1)
            async with end.service.lock:
                end.tick()

    async def run(self) -> None:
        """The node's task: every interval :meth:`tick`; the paths' own tasks run under it."""
        self._running = True
        for lp in self.local.values():
            if lp.task is None or lp.task.done():
                self._start(lp)
        try:
            while True:
                await asyncio.sleep(self.cfg.advert_interval_s)
                self.tick()
        finally:
            self._running = False
            for lp in self.local.values():
                if lp.task is not None:
                    lp.task.cancel()
                    lp.task = None

    async def close(self) -> None:
        """A clean stop: the paths installed here are removed at their other nodes."""
        for lp in list(self.mine.values()):
            self._refresh(lp, ttl_s=0.0)

    # ------------------------------------------------------------------ telemetry
    def path_telemetry(self) -> dict[str, PathTelemetry]:
        """The routed paths' own figures, as a configured path's (``paths``)."""
        out: dict[str, PathTelemetry] = {}
        for pid, lp in self.local.items():
            if lp.swapper is not None:
                out[pid] = lp.swapper.telemetry()
            elif lp.end is not None:
                out[pid] = lp.end.telemetry()
        return out

    def telemetry(self) -> RoutedPathTelemetry:
        t: RoutedPathTelemetry = {
            "installed_total": self.counts.installed, "removed_total": self.counts.removed,
            "rerouted_total": self.counts.rerouted,
            "refused_total": dict(self.counts.refused),
            "creates_waiting": sum(len(q) for q in self.waiting.values()),
            "paths": {pid: {"nodes": list(lp.path.nodes), "links": list(lp.path.links),
                            "state": "draining" if lp.draining_until is not None else "active",
                            "installer": lp.path.nodes[0]}
                      for pid, lp in list(self.local.items())[:32]}}
        if self.last_reroute is not None:
            t["last_reroute"] = self.last_reroute
        return t


__all__ = ["PathManager", "path_id"]
