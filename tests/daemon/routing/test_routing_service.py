"""The routing service's handling of adverts and routes, behind a bus that records what is
published (the bus's own signature checks are tests/daemon/bus's; a real network runs it in
tests/system/test_repeater_chain.py): its own advert out, retained and identity-signed; other
nodes' adverts into the graph; hostile ones refused and counted; route changes logged once
each, with the links that made the difference; a clean stop withdraws the links."""
from __future__ import annotations

import logging
import time
import types
from typing import Any

import pytest

from qnode.daemon.bus.envelope import Message
from qnode.daemon.bus.topics import Topics, parse_topic
from qnode.daemon.routing.advert import LinkAdvert, TopologyAdvert
from qnode.daemon.routing.service import RoutingService
from qnode.daemon.runtime.config import RoutingConfig


class _Bus:
    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}
        self.subscribed: list[str] = []
        self.published: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []

    def on(self, kind: str, handler: Any) -> None:
        self.handlers[kind] = handler

    def subscribe(self, topic_filter: str) -> None:
        self.subscribed.append(topic_filter)

    def publish(self, topic: str, mtype: str, body: dict[str, Any], **kw: Any) -> None:
        self.published.append((topic, mtype, body, kw))


class _Links:
    """alice's own links, as the reporter would measure them."""

    def __init__(self) -> None:
        self.links = (LinkAdvert("a-r1", "r1", "up", 0.97, 0.002, 300.0, 1, 2),
                      LinkAdvert("a-r3", "r3", "up", 0.95, 0.002, 900.0, 2, 2))

    def adverts(self, now: float) -> tuple[LinkAdvert, ...]:
        return self.links


def _service() -> tuple[RoutingService, _Bus, _Links]:
    bus, links = _Bus(), _Links()
    ctx = types.SimpleNamespace(node="alice", bus=bus, topics=Topics("net", "alice"),
                                now=time.monotonic)
    return RoutingService(ctx, RoutingConfig(min_fidelity=0.8), links), bus, links  # type: ignore[arg-type]


def _advert(node: str, links: list[tuple[str, str, float, float]], *,
            t: float | None = None) -> TopologyAdvert:
    return TopologyAdvert(time.time() if t is None else t, 6.0, tuple(
        LinkAdvert(link, peer, "up", f, 0.002, rate, 2, 2) for link, peer, f, rate in links))


async def _offer(svc: RoutingService, node: str, body: Any, *, signed: bool = True,
                 mtype: str = "TOPO") -> None:
    topic = parse_topic(f"qnet/v1/net/{node}/topo")
    await svc._on_topo(topic, Message(mtype, node, 1, body, node_signed=signed))  # noqa: SLF001


MESH = {"r1": [("a-r1", "alice", 0.97, 300.0), ("r1-r2", "r2", 0.97, 300.0)],
        "r2": [("r1-r2", "r1", 0.97, 300.0), ("r2-b", "bob", 0.97, 300.0)],
        "r3": [("a-r3", "alice", 0.95, 900.0), ("r3-r4", "r4", 0.95, 900.0)],
        "r4": [("r3-r4", "r3", 0.95, 900.0), ("r4-b", "bob", 0.95, 900.0)],
        "bob": [("r2-b", "r2", 0.97, 300.0), ("r4-b", "r4", 0.95, 900.0)]}


@pytest.mark.asyncio
async def test_adverts_make_routes_and_a_lost_link_moves_them(caplog):
    svc, bus, _ = _service()
    assert bus.subscribed == ["qnet/v1/net/+/topo"] and "topo" in bus.handlers
    own = svc.advertise()
    topic, mtype, body, kw = bus.published[-1]
    assert (topic, mtype, kw) == ("qnet/v1/net/alice/topo", "TOPO",
                                  {"retain": True, "node_sign": True})
    assert TopologyAdvert.from_dict(body) == own
    for node, links in MESH.items():
        await _offer(svc, node, _advert(node, links).to_dict())
    caplog.set_level(logging.INFO, "qnode.routing")
    svc.recompute()
    best, why = svc.best("bob")
    assert best is not None and best.nodes == ("alice", "r3", "r4", "bob"), why  # 900 Hz
    t = svc.telemetry()
    assert t["nodes_known"] == 6 and t["links_known"] == 6
    assert t["routes"]["bob"]["nodes"] == ["alice", "r3", "r4", "bob"]
    assert t["route_changes_total"] == 5        # every destination: none -> a route
    # r4 says its link to bob is down: the route moves to the upper one, logged with the cause
    caplog.clear()
    await _offer(svc, "r4", TopologyAdvert(time.time() + 0.5, 6.0, (
        LinkAdvert("r3-r4", "r3", "up", 0.95, 0.002, 900.0, 2, 2),
        LinkAdvert("r4-b", "bob", "down", 0.95, 0.002, 900.0, 2, 2))).to_dict())
    svc.recompute()
    best, _ = svc.best("bob")
    assert best is not None and best.nodes == ("alice", "r1", "r2", "bob")
    lines = [r.getMessage() for r in caplog.records]
    assert any("route to bob: alice>r3>r4>bob -> alice>r1>r2>bob" in m and "links gone: r4-b"
               in m for m in lines), lines
    # recomputing without a change logs nothing more
    caplog.clear()
    svc.recompute()
    assert not [r for r in caplog.records if "route to" in r.getMessage()]


@pytest.mark.asyncio
async def test_hostile_adverts_are_refused_counted_and_change_nothing():
    svc, _, _ = _service()
    await _offer(svc, "r1", _advert("r1", MESH["r1"]).to_dict(), signed=False)
    await _offer(svc, "r1", {"time": 1.0}, signed=True)
    await _offer(svc, "r1", {**_advert("r1", MESH["r1"]).to_dict(), "links": "all"})
    await _offer(svc, "r1", _advert("r1", MESH["r1"]).to_dict(), mtype="OK")
    await _offer(svc, "r1", _advert("r1", MESH["r1"], t=time.time() + 3600).to_dict())
    await _offer(svc, "r1", _advert("r1", MESH["r1"], t=time.time() - 3600).to_dict())
    assert dict(svc.refused) == {"unsigned": 1, "bad_body": 2, "bad_type": 1, "future": 1,
                                 "expired": 1}
    assert set(svc.view.adverts) == set()
    # a retained copy delivered again is not a refusal
    good = _advert("r1", MESH["r1"]).to_dict()
    await _offer(svc, "r1", good)
    await _offer(svc, "r1", good)
    assert sum(svc.refused.values()) == 6 and "r1" in svc.view.adverts


@pytest.mark.asyncio
async def test_a_clean_stop_withdraws_the_links():
    svc, bus, _ = _service()
    await svc.close()
    _, _, body, kw = bus.published[-1]
    assert body["links"] == [] and kw["retain"] is True
