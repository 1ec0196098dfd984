"""Routed paths at one node, without a network (qnode.daemon.routing.paths): a PATH is taken
only from the path's first node, by a node on the path whose links it names; hostile ones are
counted and change nothing; a repeater swaps for an installed path, stops on its removal and
when its installer stops refreshing it; the router takes only identity-signed PATHs. A real
network installs and moves paths in tests/system/test_routed_paths.py and test_failover.py."""
from __future__ import annotations

import asyncio
import time
import types
from typing import Any

import pytest

from qnode.daemon.bus.envelope import Message
from qnode.daemon.bus.topics import Topics, parse_topic
from qnode.daemon.klink.service import LinkRouter
from qnode.daemon.linklayer import PathRequest, PathSetup
from qnode.daemon.routing.paths import MAX_PATHS, PathManager, path_id
from qnode.daemon.runtime.config import MemoryConfig, RoutingConfig

NODES = ("alice", "r1", "bob")
LINKS = ("alice-r1", "r1-bob")


class _Bus:
    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}
        self.published: list[tuple[str, str, dict[str, Any]]] = []

    def on(self, kind: str, handler: Any) -> None:
        self.handlers[kind] = handler

    def subscribe(self, topic_filter: str) -> None:
        pass

    def publish(self, topic: str, mtype: str, body: dict[str, Any], **kw: Any) -> None:
        self.published.append((topic, mtype, body))


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _service(link: str, peer: str) -> Any:
    return types.SimpleNamespace(link=link, peer=peer, memory=object(), listeners=[],
                                 lock=asyncio.Lock())


def _manager(node: str = "r1") -> tuple[PathManager, LinkRouter, _Clock]:
    clock = _Clock()
    ctx = types.SimpleNamespace(node=node, bus=_Bus(), topics=Topics("net", node), now=clock)
    router = LinkRouter(ctx)  # type: ignore[arg-type]
    services = {"alice-r1": _service("alice-r1", "alice"), "r1-bob": _service("r1-bob", "bob")}
    routing = types.SimpleNamespace(route_for=lambda *a: (None, "no route"))
    manager = PathManager(ctx, routing, router, services,  # type: ignore[arg-type]
                          MemoryConfig(qdevice="qmem"), RoutingConfig())
    return manager, router, clock


async def _path(manager: PathManager, setup: PathSetup, sender: str = "alice") -> None:
    await manager.on_message(Message(setup.TYPE, sender, 1, setup.to_dict(), node_signed=True),
                             setup)


def _setup(pid: str = "alice-bob-r1", nodes: tuple[str, ...] = NODES,
           links: tuple[str, ...] = LINKS, ttl_s: float = 6.0) -> PathSetup:
    return PathSetup(pid, nodes, links, ttl_s, time.time())


@pytest.mark.asyncio
async def test_a_repeater_swaps_for_a_path_until_it_is_removed_or_lapses():
    manager, _, clock = _manager()
    await _path(manager, _setup())
    lp = manager.local["alice-bob-r1"]
    assert lp.swapper is not None and lp.swapper.hop == 1
    assert all(lp.swapper.poke in s.listeners for s in manager.services.values())
    await _path(manager, _setup())                  # a refresh: the same path, a new lease
    assert manager.counts.installed == 1
    await _path(manager, _setup(ttl_s=0.0))         # removed by its installer
    assert "alice-bob-r1" not in manager.local
    assert not any(s.listeners for s in manager.services.values())
    # a path its installer stops refreshing lapses after its ttl
    await _path(manager, _setup("alice-bob-r2"))
    clock.t += 5.0
    manager.tick()
    assert "alice-bob-r2" in manager.local
    clock.t += 1.5
    manager.tick()
    assert "alice-bob-r2" not in manager.local and manager.counts.removed == 2


@pytest.mark.asyncio
async def test_hostile_paths_are_refused_counted_and_change_nothing():
    manager, router, _ = _manager()
    await _path(manager, _setup(), sender="bob")                 # not the first node
    await _path(manager, _setup(nodes=("bob", "r1", "alice"), links=LINKS[::-1]),
                sender="bob")                                    # bob does not sort first
    await _path(manager, _setup(nodes=("alice", "r9", "bob")))   # not on the path
    await _path(manager, _setup(links=("alice-r1", "r1-carol")))   # not r1's link
    await _path(manager, _setup(nodes=("alice", "r1", "carol")))   # r1-bob is not with carol
    assert dict(manager.counts.refused) == {"not_installer": 2, "not_on_path": 1,
                                            "wrong_link": 2}
    await _path(manager, _setup())
    await _path(manager, _setup(nodes=("alice", "r1", "dave"), links=("alice-r1", "r1-bob")))
    assert manager.counts.refused["wrong_link"] == 3
    assert manager.local["alice-bob-r1"].path.nodes == NODES      # unchanged
    for k in range(MAX_PATHS - 1):
        await _path(manager, _setup(f"p{k}"))
    await _path(manager, _setup("one-too-many"))
    assert manager.counts.refused["full"] == 1 and len(manager.local) == MAX_PATHS
    # the router hands on only identity-signed ones
    body = _setup("unsigned").to_dict()
    await router._on_ll(parse_topic("qnet/v1/net/alice/ll/r1"),  # noqa: SLF001
                        Message("PATH", "alice", 9, body))
    assert router.rejected["unsigned"] == 1 and "unsigned" not in manager.local


@pytest.mark.asyncio
async def test_only_the_installer_routes_on_a_path_request():
    manager, _, _ = _manager("bob")
    await manager.on_message(Message("PATH_REQ", "alice", 1, {"min_fidelity": 0.5},
                                     node_signed=True), PathRequest(0.5))
    assert manager.counts.refused["not_installer"] == 1 and not manager.local


def test_path_ids_are_names_however_long_the_node_ids():
    assert path_id("alice", "bob", 7) == "alice-bob-r7"
    long = path_id("a" * 40, "b" * 40, 1796678390)
    assert len(long) <= 64 and long.startswith("route-") and long.endswith("-r1796678390")
    assert long != path_id("a" * 40, "c" * 40, 1796678390)


@pytest.mark.parametrize("body", [
    {"path": "p", "nodes": ["a", "b"], "links": ["x"], "ttl_s": 1.0, "time": 1.0},
    {"path": "p", "nodes": ["a", "b", "a"], "links": ["x", "y"], "ttl_s": 1.0, "time": 1.0},
    {"path": "p", "nodes": ["a", "b", "c"], "links": ["x"], "ttl_s": 1.0, "time": 1.0},
    {"path": "p", "nodes": ["a", "b", "c"], "links": ["x", "x"], "ttl_s": 1.0, "time": 1.0},
    {"path": "p/q", "nodes": ["a", "b", "c"], "links": ["x", "y"], "ttl_s": 1.0, "time": 1.0},
    {"path": "p", "nodes": ["a", "b+", "c"], "links": ["x", "y"], "ttl_s": 1.0, "time": 1.0},
    {"path": "p", "nodes": ["a", "b", "c"], "links": ["x", "y"], "ttl_s": -1.0, "time": 1.0},
    {"path": "p", "nodes": ["a", "b", "c"], "links": ["x", "y"], "ttl_s": 1e9, "time": 1.0},
    {"path": "p", "nodes": ["a"] * 70, "links": ["x"] * 69, "ttl_s": 1.0, "time": 1.0},
    {"path": "p", "nodes": "abc", "links": ["x", "y"], "ttl_s": 1.0, "time": 1.0},
])
def test_a_hostile_path_setup_is_a_value_error(body):
    with pytest.raises(ValueError, match="PathSetup"):
        PathSetup.from_dict(body)
