"""Routing's pure parts: the TOPO advert against hostile bodies, the graph that needs both ends
of a link, the metric against the swap algebra, and route choice on a mesh with two disjoint
routes (qnode.daemon.routing.advert, .graph)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from qnode.daemon.quantum.bell_diagonal import BellDiagonal, swap
from qnode.daemon.routing.advert import (
    DOWN_AFTER_S,
    MAX_LINKS,
    LinkAdvert,
    TopologyAdvert,
    link_state,
)
from qnode.daemon.routing.graph import (
    MAX_SKEW_S,
    TopologyView,
    by_distance,
    candidate_routes,
    chain_fidelity,
    choose,
)

NOW = 1.8e9


def _link(link: str, peer: str, f: float = 0.95, rate: float = 100.0,
          state: str = "up") -> LinkAdvert:
    return LinkAdvert(link, peer, state, f, 0.002, rate, 2, 2)


def _view(links: dict[str, tuple[str, str, float, float]], *, down: set[str] = frozenset(),
          one_sided: set[str] = frozenset()) -> TopologyView:
    """A view where every node advertises its end of ``links`` (id -> a, b, fidelity, rate);
    ``down``: links whose ends say down; ``one_sided``: links only their first node claims."""
    per: dict[str, list[LinkAdvert]] = {}
    for lid, (a, b, f, rate) in links.items():
        state = "down" if lid in down else "up"
        per.setdefault(a, []).append(_link(lid, b, f, rate, state))
        per.setdefault(b, [])
        if lid not in one_sided:
            per[b].append(_link(lid, a, f, rate, state))
    view = TopologyView()
    for node, ls in per.items():
        assert view.offer(node, TopologyAdvert(NOW, 6.0, tuple(ls)), NOW) is None
    return view


# a mesh: alice – r1 – r2 – bob above, alice – r3 – r4 – bob below, r1 – r3 across
MESH = {"a-r1": ("alice", "r1", 0.97, 300.0), "r1-r2": ("r1", "r2", 0.97, 300.0),
        "r2-b": ("r2", "bob", 0.97, 300.0), "a-r3": ("alice", "r3", 0.95, 900.0),
        "r3-r4": ("r3", "r4", 0.95, 900.0), "r4-b": ("r4", "bob", 0.95, 900.0),
        "r1-r3": ("r1", "r3", 0.9, 50.0)}


def test_the_chain_fidelity_is_the_swap_algebras_for_werner_links():
    """(1 + 3·∏wᵢ)/4 against the Bell-diagonal swap of the quantum room (ideal gates), over
    one to five links of different fidelities."""
    fids = [0.97, 0.91, 0.88, 0.99, 0.8]
    for n in range(1, len(fids) + 1):
        state = BellDiagonal.werner(fids[0])
        for f in fids[1:n]:
            state = swap(state, BellDiagonal.werner(f))
        assert chain_fidelity(fids[:n]) == pytest.approx(state.fidelity(), abs=1e-12)


def test_an_edge_needs_both_ends_up_and_agreeing():
    view = _view({"x": ("a", "b", 0.9, 10.0), "y": ("b", "c", 0.9, 10.0),
                  "z": ("c", "d", 0.9, 10.0)}, down={"y"}, one_sided={"z"})
    assert [e.link for e in view.edges(NOW)] == ["x"]
    # a peer that names another node for the link: no edge
    view.offer("b", TopologyAdvert(NOW + 1, 6.0, (_link("x", "mallory"),)), NOW + 1)
    assert view.edges(NOW + 1) == []
    # a link that carries no entanglement (F <= 1/4) is no edge either
    assert _view({"x": ("a", "b", 0.25, 10.0)}).edges(NOW) == []


def test_the_edge_takes_the_lower_estimate_and_the_slower_end():
    view = TopologyView()
    view.offer("a", TopologyAdvert(NOW, 6.0, (_link("x", "b", 0.93, 120.0),)), NOW)
    view.offer("b", TopologyAdvert(NOW, 6.0, (_link("x", "a", 0.92, 100.0, "degraded"),)), NOW)
    (e,) = view.edges(NOW)
    assert (e.fidelity, e.rate_hz, e.state) == (0.92, 100.0, "degraded")


def test_adverts_expire_and_stale_future_or_excess_ones_are_refused():
    view = _view({"x": ("a", "b", 0.9, 10.0)})
    old = TopologyAdvert(NOW - 1, 6.0, ())
    assert view.offer("a", old, NOW) == "older"              # a retained copy again
    assert view.offer("a", TopologyAdvert(NOW + MAX_SKEW_S + 1, 6.0, ()), NOW) == "future"
    assert view.offer("c", TopologyAdvert(NOW - 7, 6.0, ()), NOW) == "expired"
    assert len(view.edges(NOW + 5)) == 1
    assert view.edges(NOW + 7) == [] and view.adverts == {}  # both expired: forgotten
    small = TopologyView(max_nodes=2)
    for n in ("a", "b"):
        assert small.offer(n, TopologyAdvert(NOW, 6.0, ()), NOW) is None
    assert small.offer("c", TopologyAdvert(NOW, 6.0, ()), NOW) == "full"
    assert small.offer("c", TopologyAdvert(NOW + 10, 6.0, ()), NOW + 10) is None  # room again


def test_two_disjoint_routes_are_both_candidates_and_the_faster_one_wins_when_both_fit():
    g = _view(MESH).graph(NOW)
    routes = candidate_routes(g, "alice", "bob", k=3)
    assert [r.nodes for r in routes[:2]] == [("alice", "r1", "r2", "bob"),
                                             ("alice", "r3", "r4", "bob")]
    assert routes[0].fidelity == pytest.approx(chain_fidelity([0.97] * 3))
    assert routes[0].links == ("a-r1", "r1-r2", "r2-b")
    assert routes[0].cost < routes[1].cost
    best, _ = choose(routes, 0.8)
    assert best is not None and best.nodes == ("alice", "r3", "r4", "bob")   # 900 Hz > 300 Hz
    best, _ = choose(routes, 0.88)       # only the upper route predicts more than 0.88
    assert best is not None and best.nodes == ("alice", "r1", "r2", "bob")
    best, why = choose(routes, 0.95)
    assert best is None and "predicts 0.9" in why
    assert by_distance(g, "alice") == ["r1", "r3", "r2", "r4", "bob"]


def test_a_degraded_route_loses_the_requests_that_need_high_fidelity():
    """Measured state moves routes: the upper route's middle link drops to 0.9; a request that
    needs 0.855 now takes the lower one (0.860 against 0.849); with the upper route's link
    down, no candidate uses it."""
    degraded = {**MESH, "r1-r2": ("r1", "r2", 0.9, 300.0)}
    routes = candidate_routes(_view(degraded).graph(NOW), "alice", "bob")
    best, _ = choose(routes, 0.855)
    assert best is not None and best.nodes == ("alice", "r3", "r4", "bob")
    routes = candidate_routes(_view(MESH, down={"r1-r2"}).graph(NOW), "alice", "bob")
    assert "r1-r2" not in {link for r in routes for link in r.links}
    assert candidate_routes(_view(MESH).graph(NOW), "alice", "nobody") == []


def test_link_state_from_heralds_and_estimate():
    assert link_state(None, True, True) == "down"
    assert link_state(DOWN_AFTER_S + 0.1, True, True) == "down"
    assert link_state(0.5, False, True) == "degraded"
    assert link_state(0.5, True, False) == "degraded"
    assert link_state(0.5, True, True) == "up"


def test_an_advert_round_trips():
    a = TopologyAdvert(NOW, 6.0, (_link("x", "b"), LinkAdvert("y", "c", "degraded", 0.9, None,
                                                               0.0, 0, 2)))
    assert TopologyAdvert.from_dict(a.to_dict()) == a


@pytest.mark.parametrize("body", [
    {},
    {"time": NOW, "ttl_s": 6.0},
    {"time": NOW, "ttl_s": 6.0, "links": "x"},
    {"time": NOW, "ttl_s": 6.0, "links": [], "extra": 1},
    {"time": -1.0, "ttl_s": 6.0, "links": []},
    {"time": NOW, "ttl_s": 0.0, "links": []},
    {"time": NOW, "ttl_s": 1e9, "links": []},
    {"time": math.nan, "ttl_s": 6.0, "links": []},
    {"time": NOW, "ttl_s": 6.0, "links": [{}] * (MAX_LINKS + 1)},
    {"time": NOW, "ttl_s": 6.0, "links": [_link("x", "b").to_dict()] * 2},
    {"time": NOW, "ttl_s": 6.0, "links": [{**_link("x", "b").to_dict(), "state": "great"}]},
    {"time": NOW, "ttl_s": 6.0, "links": [{**_link("x", "b").to_dict(), "fidelity": 1.5}]},
    {"time": NOW, "ttl_s": 6.0, "links": [{**_link("x", "b").to_dict(), "free_qubits": 3}]},
    {"time": NOW, "ttl_s": 6.0, "links": [{**_link("x", "b").to_dict(), "rate_hz": "fast"}]},
    {"time": NOW, "ttl_s": 6.0, "links": [{**_link("x", "b").to_dict(), "sigma": True}]},
    {"time": NOW, "ttl_s": 6.0, "links": [{**_link("x", "b").to_dict(), "peer": ""}]},
    {"time": NOW, "ttl_s": 6.0, "links": [{**_link("x", "b").to_dict(), "peer": "b/c"}]},
    {"time": NOW, "ttl_s": 6.0, "links": [{**_link("x", "b").to_dict(), "link": "x+"}]},
    {"time": NOW, "ttl_s": 6.0, "links": [{**_link("x", "b").to_dict(), "link": "l" * 65}]},
    {"time": NOW, "ttl_s": 6.0, "links": [["x", "b"]]},
])
def test_a_hostile_advert_is_a_value_error_naming_the_field(body):
    with pytest.raises(ValueError, match=r"TopologyAdvert|LinkAdvert"):
        TopologyAdvert.from_dict(body)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                        max_size=5),
                    max_leaves=20))
def test_any_json_body_is_an_advert_or_a_value_error(body):
    if not isinstance(body, dict):
        body = {"time": NOW, "ttl_s": 6.0, "links": [body]}
    try:
        TopologyAdvert.from_dict(body)
    except ValueError:
        pass
