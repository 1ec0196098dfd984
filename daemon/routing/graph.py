"""The network as the adverts describe it, and routes through it.

**The graph** (:class:`TopologyView`). Each node's newest TOPO advert
(:mod:`qnode.daemon.routing.advert`) is kept until it expires. An edge joins two memory nodes
for link L only when *both* ends advertise L with each other as its peer and neither says it is
down: a node speaks only for its own end, so no node can put a link into the graph alone (an
intruder with an identity key can lie about its own links, not about two others'). The edge's
fidelity is the lower of the two ends' estimates (they measure the same test pairs, so they
differ by little), its rate and free qubits the smaller ones.

**The metric.** Swapping two Werner pairs of parameters w₁ and w₂ (w = (4F − 1)/3) with an
ideal Bell-state measurement leaves a Werner pair of parameter w₁·w₂ (Dür, Briegel, Cirac and
Zoller, PRA 59, 169 (1999), §II), so a route's end-to-end fidelity is (1 + 3·∏wᵢ)/4 and its
cost Σ −ln wᵢ is additive: the cheapest route is the one of highest predicted fidelity. The
prediction leaves out the repeaters' gate and read-out errors and the storage decay while
pairs wait, so it is an upper bound (the swap chain's own estimate, from the SWAP_RES reports,
is what a delivered pair carries). A link of F ≤ 1/4 carries no entanglement and is no edge.

**Routes** (:func:`candidate_routes`, :func:`choose`). The ``k`` cheapest loop-free routes
(Yen's algorithm, networkx ``shortest_simple_paths``), then, among those whose predicted
fidelity meets the request's minimum, the one of the highest predicted rate: the slowest link's
rate of pairs bound at both ends (an upper bound on a swap-as-soon-as-possible chain's rate),
ties broken by cost.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict

import networkx as nx

from qnode.daemon.routing.advert import TopologyAdvert

#: an advert stamped further than this in the future (s) is refused (clocks are NTP-synced;
#: a node's Unix clock this far off is a fault, or an attempt to pin its advert)
MAX_SKEW_S = 30.0
#: nodes a view keeps adverts of (a bound on memory, whoever advertises)
MAX_NODES = 4096
#: links whose loss a view remembers the time of (the oldest forgotten)
MAX_LOST_LINKS = 4 * MAX_NODES


def werner_parameter(fidelity: float) -> float:
    """w = (4F − 1)/3 of a Werner state of fidelity F."""
    return (4.0 * fidelity - 1.0) / 3.0


def chain_fidelity(fidelities: Iterable[float]) -> float:
    """End-to-end fidelity of Werner links of ``fidelities`` joined by ideal swaps:
    (1 + 3·∏wᵢ)/4."""
    w = 1.0
    for f in fidelities:
        w *= werner_parameter(f)
    return (1.0 + 3.0 * w) / 4.0


@dataclass(frozen=True)
class Edge:
    """A link both ends advertise (module docstring)."""

    link: str
    ends: tuple[str, str]
    fidelity: float
    rate_hz: float
    free_qubits: int
    state: str            # "up", or "degraded" when either end says so

    @property
    def cost(self) -> float:
        return -math.log(werner_parameter(self.fidelity))


@dataclass(frozen=True)
class Route:
    """A loop-free route ``nodes[0] … nodes[-1]`` over ``links`` (``links[k]`` joins
    ``nodes[k]`` and ``nodes[k + 1]``): its predicted end-to-end fidelity, rate (Hz) and cost
    (module docstring)."""

    nodes: tuple[str, ...]
    links: tuple[str, ...]
    fidelity: float
    rate_hz: float
    cost: float

    @property
    def hops(self) -> int:
        return len(self.links)

    def describe(self) -> str:
        return ">".join(self.nodes)

    def to_dict(self) -> RouteDict:
        return {"nodes": list(self.nodes), "links": list(self.links),
                "fidelity": round(self.fidelity, 5), "rate_hz": round(self.rate_hz, 3)}


class RouteDict(TypedDict):
    """:meth:`Route.to_dict`."""

    nodes: list[str]
    links: list[str]
    fidelity: float
    rate_hz: float


class TopologyView:
    """The newest unexpired advert of every node (module docstring)."""

    def __init__(self, max_nodes: int = MAX_NODES):
        self.max_nodes = max_nodes
        self.adverts: dict[str, TopologyAdvert] = {}
        #: link -> when an end last reported it lost (Unix s: the advert's time that said down
        #: or left it out, or the expiry of an end's advert); bounded like the adverts
        self.lost_at: dict[str, float] = {}

    def _note_lost(self, before: TopologyAdvert | None, after: TopologyAdvert | None,
                   at: float) -> None:
        """Record the links ``before`` had up that ``after`` (None: no advert) has not."""
        if before is None:
            return
        kept = {la.link for la in (after.links if after else ()) if la.state != "down"}
        for la in before.links:
            if la.state != "down" and la.link not in kept:
                self.lost_at[la.link] = at
        while len(self.lost_at) > MAX_LOST_LINKS:
            del self.lost_at[next(iter(self.lost_at))]

    def offer(self, node: str, advert: TopologyAdvert, now: float) -> str | None:
        """Take ``node``'s advert (``now``: Unix time, s). None if it is now the node's, else
        why not: ``older`` (not newer than the one kept: a retained copy again; harmless),
        ``expired``, ``future`` (stamped more than ``MAX_SKEW_S`` ahead), ``full`` (the view
        holds ``max_nodes`` other nodes)."""
        if advert.time > now + MAX_SKEW_S:
            return "future"
        if advert.expires_at() < now:
            return "expired"
        kept = self.adverts.get(node)
        if kept is not None and advert.time <= kept.time:
            return "older"
        if kept is None:
            self.expire(now)
            if len(self.adverts) >= self.max_nodes:
                return "full"
        self._note_lost(kept, advert, advert.time)
        self.adverts[node] = advert
        return None

    def expire(self, now: float) -> list[str]:
        """Forget the adverts that expired by ``now``; the nodes forgotten."""
        gone = [n for n, a in self.adverts.items() if a.expires_at() < now]
        for n in gone:
            self._note_lost(self.adverts[n], None, self.adverts[n].expires_at())
            del self.adverts[n]
        return gone

    def edges(self, now: float) -> list[Edge]:
        """The links both ends advertise, up or degraded (module docstring)."""
        self.expire(now)
        out: list[Edge] = []
        for a, advert in sorted(self.adverts.items()):
            for la in advert.links:
                b = la.peer
                if b <= a or b not in self.adverts or la.state == "down":
                    continue
                lb = next((x for x in self.adverts[b].links if x.link == la.link), None)
                if lb is None or lb.peer != a or lb.state == "down":
                    continue
                f = min(la.fidelity, lb.fidelity)
                if werner_parameter(f) <= 0.0:
                    continue
                state = "up" if la.state == lb.state == "up" else "degraded"
                out.append(Edge(la.link, (a, b), f, min(la.rate_hz, lb.rate_hz),
                                min(la.free_qubits, lb.free_qubits), state))
        return out

    def graph(self, now: float) -> nx.Graph[str]:
        """:func:`graph_of` the edges now."""
        return graph_of(self.edges(now))


def graph_of(edges: Iterable[Edge]) -> nx.Graph[str]:
    """``edges`` as a networkx graph (two links between one pair of nodes: the cheaper)."""
    g: nx.Graph[str] = nx.Graph()
    for e in sorted(edges, key=lambda e: e.cost, reverse=True):
        g.add_edge(*e.ends, edge=e, cost=e.cost)   # the cheaper one is added last
    return g


def by_distance(g: nx.Graph[str], source: str) -> list[str]:
    """The other nodes ``source`` reaches in ``g``, nearest (fewest hops) first, then by name."""
    if source not in g:
        return []
    hops = nx.single_source_shortest_path_length(g, source)
    return sorted((n for n in hops if n != source), key=lambda n: (hops[n], n))


def route_of(g: nx.Graph[str], nodes: list[str] | tuple[str, ...]) -> Route:
    """The :class:`Route` along ``nodes`` of graph ``g`` (consecutive nodes must be joined)."""
    edges: list[Edge] = [g.edges[u, v]["edge"] for u, v in itertools.pairwise(nodes)]
    return Route(tuple(nodes), tuple(e.link for e in edges),
                 chain_fidelity(e.fidelity for e in edges),
                 min((e.rate_hz for e in edges), default=0.0), sum(e.cost for e in edges))


def candidate_routes(g: nx.Graph[str], source: str, target: str, k: int = 3) -> list[Route]:
    """The ``k`` cheapest loop-free routes from ``source`` to ``target`` (fewer if there are
    not as many; none if either is not in the graph or they are not connected)."""
    if source not in g or target not in g or source == target:
        return []
    try:
        found = list(itertools.islice(nx.shortest_simple_paths(g, source, target,
                                                               weight="cost"), k))
    except nx.NetworkXNoPath:
        return []
    return [route_of(g, p) for p in found]


def choose(routes: list[Route], min_fidelity: float) -> tuple[Route | None, str]:
    """The route to use for a request of ``min_fidelity`` (module docstring), and a reason
    when there is none."""
    if not routes:
        return None, "no route: the two nodes are not joined by links both ends advertise up"
    fit = [r for r in routes if r.fidelity >= min_fidelity]
    if not fit:
        best = max(routes, key=lambda r: r.fidelity)
        return None, (f"no route meets fidelity {min_fidelity:.3f}: the best of {len(routes)} "
                      f"candidates ({best.describe()}) predicts {best.fidelity:.3f}")
    return max(fit, key=lambda r: (r.rate_hz, -r.cost)), "ok"


__all__ = ["Edge", "Route", "TopologyView", "by_distance", "candidate_routes", "chain_fidelity",
           "choose", "graph_of", "route_of", "werner_parameter"]
