"""A memory node's routing: it advertises its links and keeps routes to every other node.

Every ``[routing].advert_interval_s`` the node publishes its TOPO advert (retained, signed
with its identity key; :mod:`qnode.daemon.routing.advert`) built from its K links' measured
state, takes every node's advert from ``qnet/v1/<network>/+/topo`` into its
:class:`~qnode.daemon.routing.graph.TopologyView`, and recomputes, for each other node of the
graph, the ``k_routes`` cheapest routes and the one a request of ``[routing].min_fidelity``
would take (:func:`~qnode.daemon.routing.graph.choose`). A change of that route is logged (one
line: the old route, the new one, and the links that made the difference) and counted; the
routes are in the telemetry (``routing``), so ``qnode status`` and the metrics show them.

An advert is accepted only with its sender's valid identity signature (the bus checks it
against the trust store) from the sender named by its topic; one that fails any check is
counted by reason (``routing.adverts_refused_total``) and logged at most once a second per
reason. A clean stop publishes an advert without links, so the others route around the node
at once instead of after the advert's time-to-live.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qnode.daemon.bus.client import BusOverloaded
from qnode.daemon.logs import RateLimitedLog
from qnode.daemon.routing.advert import LinkAdvert, TopologyAdvert, link_state
from qnode.daemon.routing.graph import (
    Route,
    TopologyView,
    by_distance,
    candidate_routes,
    chain_fidelity,
    choose,
    graph_of,
)

if TYPE_CHECKING:
    from qnode.daemon.bus.envelope import Message as Envelope
    from qnode.daemon.bus.telemetry import RoutingTelemetry
    from qnode.daemon.bus.topics import Topic
    from qnode.daemon.klink.service import LinkService
    from qnode.daemon.runtime.config import PathConfig, RoutingConfig
    from qnode.daemon.runtime.context import NodeContext

log = logging.getLogger("qnode.routing")

#: destinations routes are kept for (the nearest first, then the nodes that advertise but are
#: not reachable; a bound on the work per interval)
MAX_DESTINATIONS = 256
#: routes listed in the telemetry record (the nearest destinations first)
MAX_TELEMETRY_ROUTES = 32


@dataclass
class _Rate:
    """Pairs bound on one link, for the rate over an advert interval."""

    bound: int
    at: float


class LinkReporter:
    """Measures what the node's advert says of its K links with qubits (``services``)."""

    def __init__(self, services: list[LinkService]):
        self.services = [s for s in services if s.memory is not None]
        self._last: dict[str, _Rate] = {}

    def adverts(self, now: float) -> tuple[LinkAdvert, ...]:
        """Each link's state now (``now``: monotonic s); the rate is over the time since the
        previous call (0 at the first)."""
        out = []
        for s in self.services:
            mem = s.memory
            assert mem is not None
            state, sigma = mem.tomography.estimate()
            bound = mem.counts["bound_total"]
            last = self._last.get(s.link)
            rate = 0.0
            if last is not None and now > last.at:
                rate = max(0, bound - last.bound) / (now - last.at)
            self._last[s.link] = _Rate(bound, now)
            storage = len(mem.pool.qubits_of(s.link)[:-1])
            out.append(LinkAdvert(
                s.link, s.peer, link_state(s.herald_age_s(), mem.tomography.ready,
                                           s.end.epoch_agreed),
                min(1.0, max(0.0, state.fidelity())), None if math.isnan(sigma) else sigma,
                rate, min(len(mem.free_qubits()), storage), storage))
        return tuple(out)


class RoutingService:
    """The node's adverts and routes (module docstring); ``links`` measures its own links."""

    def __init__(self, ctx: NodeContext, cfg: RoutingConfig, links: LinkReporter):
        self.ctx, self.cfg, self.links = ctx, cfg, links
        self.view = TopologyView()
        #: destination -> (the chosen route or None, why not, the candidates)
        self.routes: dict[str, tuple[Route | None, str, list[Route]]] = {}
        self.refused: collections.Counter[str] = collections.Counter()
        self.route_changes = 0
        self.adverts_sent = 0
        self.adverts_overloaded = 0
        self._rlog = RateLimitedLog(log)
        ctx.bus.on("topo", self._on_topo)
        ctx.bus.subscribe(ctx.topics.topo_all)

    # ------------------------------------------------------------------ adverts
    def advertise(self, links: tuple[LinkAdvert, ...] | None = None) -> TopologyAdvert:
        """Publish this node's advert (its links measured now unless ``links`` is given) and
        take it into the view."""
        now = time.time()
        advert = TopologyAdvert(now, self.cfg.advert_ttl_s,
                                self.links.adverts(self.ctx.now()) if links is None else links)
        try:
            self.ctx.bus.publish(self.ctx.topics.topo, advert.TYPE, advert.to_dict(),
                                 retain=True, node_sign=True)
            self.adverts_sent += 1
        except BusOverloaded:
            self.adverts_overloaded += 1
        self.view.offer(self.ctx.node, advert, now)
        return advert

    async def _on_topo(self, topic: Topic, msg: Envelope) -> None:
        if msg.sender == self.ctx.node:
            return                      # our own, taken into the view when it was made
        if not msg.node_signed:
            self._refuse("unsigned", msg.sender, "a TOPO must carry its sender's identity "
                                                 "signature")
            return
        if msg.type != TopologyAdvert.TYPE:
            self._refuse("bad_type", msg.sender, f"type {msg.type[:40]!r} on a topo topic")
            return
        try:
            advert = TopologyAdvert.from_dict(msg.body)
        except (ValueError, TypeError) as exc:
            self._refuse("bad_body", msg.sender, str(exc))
            return
        why = self.view.offer(msg.sender, advert, time.time())
        if why not in (None, "older"):   # a retained copy again is no fault
            self._refuse(why or "", msg.sender, f"advert of {advert.time:.3f}")

    def _refuse(self, reason: str, sender: str, detail: str) -> None:
        self.refused[reason] += 1
        self._rlog(reason, logging.WARNING, "routing: TOPO from %s refused (%s): %s",
                   sender[:64], reason, detail[:300], sender=sender[:64], reason=reason)

    # ------------------------------------------------------------------ routes
    def recompute(self) -> None:
        """The routes to every other node of the graph now; changes are logged and counted."""
        edges = self.view.edges(time.time())
        g = graph_of(edges)
        new: dict[str, tuple[Route | None, str, list[Route]]] = {}
        reachable = by_distance(g, self.ctx.node)
        cut_off = sorted(set(self.view.adverts) - set(reachable) - {self.ctx.node})
        for dst in (reachable + cut_off)[:MAX_DESTINATIONS]:   # the second: "no route"
            cands = candidate_routes(g, self.ctx.node, dst, self.cfg.k_routes)
            best, why = choose(cands, self.cfg.min_fidelity)
            new[dst] = (best, why, cands)
        present = {e.link for e in edges}
        for dst in sorted(set(self.routes) | set(new)):
            old = self.routes.get(dst, (None, "", []))[0]
            cur, why, _ = new.get(dst, (None, "no route: the node left the graph", []))
            if (old.nodes if old else None) != (cur.nodes if cur else None):
                self._changed(dst, old, cur, why, present)
        self.routes = new

    def _changed(self, dst: str, old: Route | None, new: Route | None, why: str,
                 present: set[str]) -> None:
        self.route_changes += 1
        gone = [link for link in (old.links if old else ()) if link not in present]
        log.info("routing: route to %s: %s -> %s%s", dst, old.describe() if old else "none",
                 f"{new.describe()} (predicted F {new.fidelity:.3f}, {new.rate_hz:.0f} Hz)"
                 if new else f"none ({why})",
                 f"; links gone: {', '.join(gone)}" if gone else "",
                 extra={"destination": dst, "old": old.describe() if old else None,
                        "new": new.describe() if new else None, "links_gone": gone})

    def route_for(self, dst: str, min_fidelity: float) -> tuple[Route | None, str]:
        """The route a path to ``dst`` whose pairs must reach ``min_fidelity`` takes now, from
        the graph as it is (not the last interval's), or why there is none."""
        g = self.view.graph(time.time())
        return choose(candidate_routes(g, self.ctx.node, dst, self.cfg.k_routes), min_fidelity)

    def check(self, path: PathConfig, min_fidelity: float) -> tuple[str, float | None] | None:
        """None if ``path`` still works now: every link of it advertised by both ends, not
        down, and the predicted fidelity at least ``min_fidelity``. Else why not, and since
        when (Unix s) the evidence says so (None: not known)."""
        now = time.time()
        edges = {e.link: e for e in self.view.edges(now)}
        gone = [link for link in path.links if link not in edges]
        if gone:
            since = [self.view.lost_at[link] for link in gone if link in self.view.lost_at]
            return f"link {', '.join(gone)} lost", (min(since) if since else None)
        predicted = chain_fidelity(edges[link].fidelity for link in path.links)
        if predicted < min_fidelity:
            return (f"predicted fidelity {predicted:.3f} below the {min_fidelity:.3f} it was "
                    f"chosen for"), None
        return None

    def best(self, dst: str) -> tuple[Route | None, str]:
        """The route a request for a pair with ``dst`` takes now, or why there is none."""
        found = self.routes.get(dst)
        if found is None:
            return None, f"no route: {dst!r} is not in this node's graph"
        return found[0], found[1]

    async def run(self) -> None:
        while True:
            self.advertise()
            self.recompute()
            await asyncio.sleep(self.cfg.advert_interval_s)

    async def close(self) -> None:
        """A clean stop: an advert without links, so the others route around this node now."""
        self.advertise(())

    def telemetry(self) -> RoutingTelemetry:
        now = time.time()
        t: RoutingTelemetry = {
            "nodes_known": len(self.view.adverts), "links_known": len(self.view.edges(now)),
            "adverts_sent_total": self.adverts_sent,
            "adverts_overloaded_total": self.adverts_overloaded,
            "adverts_refused_total": dict(self.refused),
            "route_changes_total": self.route_changes, "routes": {}}
        for dst, (best, why, cands) in list(self.routes.items())[:MAX_TELEMETRY_ROUTES]:
            if best is None:
                t["routes"][dst] = {"error": why[:200], "candidates": len(cands)}
            else:
                t["routes"][dst] = {**best.to_dict(), "candidates": len(cands)}
        return t


__all__ = ["LinkReporter", "RoutingService"]
