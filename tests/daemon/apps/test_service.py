"""The application service in process (qnode.daemon.apps.service) on one K link end with a
memory: a request is stored before ACCEPTED and forgotten before its terminal reply, a node that
restarted answers every request it had accepted with ERROR unavailable (so each request still
ends in exactly one terminal reply), and refusals are answered with a code and counted."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from qnode.daemon.apps.pools import LinkPool
from qnode.daemon.apps.service import AppService
from qnode.daemon.bus.envelope import Message as Envelope
from qnode.daemon.bus.topics import parse_topic
from qnode.daemon.klink.memory import LinkMemory, QubitPool
from qnode.daemon.klink.service import LinkService
from qnode.daemon.runtime.config import ApplicationConfig, ServiceConfig

from support.daemon_harness import MemoryLinkStore, link_context

APPS = ServiceConfig({"keyapp": ApplicationConfig("keyapp", purposes=(7,)),
                      "other": ApplicationConfig("other")})


class _Bus:
    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def defer_until_idle(self, work: Any) -> bool:
        return False

    def publish(self, topic: str, type: str, body: Any, **kw: Any) -> bool:
        self.sent.append((topic, type, dict(body)))
        return True

    def replies(self, app: str) -> list[tuple[str, dict[str, Any]]]:
        return [(t, b) for topic, t, b in self.sent if topic.endswith(f"/app/{app}")]


def _service(store: MemoryLinkStore | None = None) -> tuple[AppService, Any]:
    ctx = link_context("alice", _Bus(), store)
    svc = LinkService(ctx, "ab", "bob", "K", goodness=0.9)
    svc.attach_memory(LinkMemory("ab", QubitPool("qmem", lambda: None, {}),  # type: ignore
                                 test_fraction=0.1, readout_error=0.005, t1_s=5.0, t2_s=2.0,
                                 prior_fidelity=0.9))
    return AppService(ctx, APPS, [LinkPool(svc, svc.memory, "alice")]), ctx


async def _ask(apps: AppService, app: str, type_: str, body: dict[str, Any]) -> None:
    msg = Envelope(type_, app, int(time.time_ns()), body, time.time())
    await apps._on_request(parse_topic(f"qnet/v1/t/{app}/req/alice"), msg)  # noqa: SLF001


@pytest.mark.asyncio
async def test_a_request_is_stored_while_live_and_a_restart_answers_it_unavailable():
    store = MemoryLinkStore()
    apps, ctx = _service(store)
    apps.peer_listening["ab"] = {7: "bobapp"}
    await _ask(apps, "keyapp", "REQUEST", {"request_id": "r1", "remote": "bob", "pairs": 3,
                                           "purpose": 7, "min_fidelity": 0.5})
    assert [t for t, _ in ctx.bus.replies("keyapp")] == ["ACCEPTED"]
    assert store.load_app_requests() == [("keyapp", "r1", 3, 0)]
    # the node "restarts": a new service on the same store answers r1 and forgets it
    again, ctx2 = _service(store)
    await again._orphans()  # noqa: SLF001
    (t, body), = ctx2.bus.replies("keyapp")
    assert t == "ERROR" and body["code"] == "unavailable" and body["request_id"] == "r1"
    assert store.load_app_requests() == []
    # the first service's CANCEL forgets it too, before its terminal reply
    await _ask(apps, "keyapp", "CANCEL", {"request_id": "r1"})
    assert [t for t, _ in ctx.bus.replies("keyapp")] == ["ACCEPTED", "CANCELLED"]


@pytest.mark.asyncio
async def test_refusals_are_answered_with_a_code_counted_and_change_nothing():
    apps, ctx = _service()
    cases = [
        ("mallory", "REQUEST", {"request_id": "m", "remote": "bob", "pairs": 1, "purpose": 7},
         "not_authorised"),
        ("keyapp", "REQUEST", {"request_id": "a", "remote": "bob", "pairs": 0, "purpose": 7},
         "bad_request"),
        ("keyapp", "REQUEST", {"request_id": "b", "remote": "carol", "pairs": 1, "purpose": 7},
         "unknown_remote"),
        ("keyapp", "REQUEST", {"request_id": "c", "remote": "bob", "pairs": 1, "purpose": 7},
         "no_listener"),
        ("keyapp", "REQUEST", {"request_id": "d", "remote": "bob", "pairs": 1, "purpose": 7,
                               "kind": "measure"}, "unsupported"),
        ("keyapp", "CANCEL", {"request_id": "zz"}, "unknown_request"),
        ("other", "LISTEN", {"purpose": 7}, "not_authorised"),
        ("keyapp", "NONSENSE", {"request_id": "e"}, "bad_request"),
    ]
    for app, type_, body, code in cases:
        await _ask(apps, app, type_, body)
        t, reply = ctx.bus.replies(app)[-1]
        assert (t, reply["code"]) == ("ERROR", code), (body, reply)
        assert reply["reason"]
    assert sum(apps.refused.values()) == len(cases)
    assert apps.live == {} and apps.queues["ab"].waiting_per_application() == {}
    await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_admission_refuses_more_pairs_than_the_pool_supplies_before_the_deadline():
    """With 2 pairs/s supplied over the last 10 s, 100 pairs in 10 s cannot be had (refused at
    once, the supply named), 30 can (within the 2× margin); before 10 s of watching, nothing
    is refused for the rate."""
    apps, ctx = _service()
    apps.peer_listening["ab"] = {7: "bobapp"}
    pool = apps.pools["bob"]
    memory = pool.memory  # type: ignore[attr-defined]
    apps._sample_supply(100.0)  # noqa: SLF001
    assert apps.supply_hz(pool) is None
    await _ask(apps, "keyapp", "REQUEST", {"request_id": "early", "remote": "bob",
                                           "pairs": 1000, "purpose": 7, "timeout_s": 10})
    assert ctx.bus.replies("keyapp")[-1][0] == "ACCEPTED"
    memory.counts["bound_total"] += 20
    apps._sample_supply(110.0)  # noqa: SLF001
    assert apps.supply_hz(pool) == pytest.approx(2.0)
    await _ask(apps, "keyapp", "REQUEST", {"request_id": "many", "remote": "bob", "pairs": 100,
                                           "purpose": 7, "timeout_s": 10})
    t, body = ctx.bus.replies("keyapp")[-1]
    assert (t, body["code"]) == ("ERROR", "rate_unreachable") and "2.0 pairs/s" in body["reason"]
    await _ask(apps, "keyapp", "REQUEST", {"request_id": "some", "remote": "bob", "pairs": 30,
                                           "purpose": 7, "timeout_s": 10})
    assert ctx.bus.replies("keyapp")[-1][0] == "ACCEPTED"


class _PathEndStandIn:
    """What a RoutedPool reads of a routing PathEnd: its path id, remote, memory, listeners,
    counters and link service (its lock)."""

    class _Service:
        def __init__(self, link: str):
            self.link, self.lock = link, asyncio.Lock()

    def __init__(self, pid: str, link: str, received: int, remote: str = "bob"):
        self.path = type("P", (), {"id": pid})()
        self.remote, self.memory, self.listeners = remote, None, []
        self.counts = {"pairs_received_total": received}
        self.service = self._Service(link)
        self.last_fidelity, self.pairs = None, {}
        self.mem = type("M", (), {"delivered_hold_s": 0.1})()


@pytest.mark.asyncio
async def test_a_routed_pools_supply_counts_on_across_a_move():
    """Each path end counts its pairs from 0; the pool's counter (whose rate a request's
    rate check reads) goes on across the move instead of falling back (a request right after
    a re-route was refused for a supply of -1 pairs/s)."""
    from qnode.daemon.apps.pools import RoutedPool
    old = _PathEndStandIn("alice-bob-r1", "alice-r1", 40)
    pool = RoutedPool(old, "alice")  # type: ignore[arg-type]
    assert pool.id == "route-alice-bob" and pool.supplied() == 40
    new = _PathEndStandIn("alice-bob-r2", "alice-r2", 0)
    await pool.use(new)  # type: ignore[arg-type]
    assert pool.supplied() == 40
    new.counts["pairs_received_total"] = 3
    old.counts["pairs_received_total"] = 41     # the old path's last pair: not offered here
    assert pool.supplied() == 43


@pytest.mark.asyncio
async def test_a_request_for_a_far_node_waits_for_its_routed_path_or_is_refused_with_why():
    """No pool serves carol: routing is asked for a path (the request's min_fidelity), the
    request waits, and goes on (ACCEPTED) once carol's pool is there and its other end has
    spoken (LISTENERS); a node routing cannot reach is refused at once with routing's reason;
    a path that does not come within ROUTE_WAIT_S ends the request with unknown_remote."""
    from qnode.daemon.apps.peer import Listeners
    from qnode.daemon.apps.pools import RoutedPool
    from qnode.daemon.apps.service import ROUTE_WAIT_S
    apps, ctx = _service()
    asked: list[tuple[str, float]] = []

    def route(remote: str, min_fidelity: float) -> str | None:
        asked.append((remote, min_fidelity))
        return None if remote in ("carol", "erin") else "no route: dave is not in the graph"
    apps.route = route
    await _ask(apps, "keyapp", "REQUEST", {"request_id": "r1", "remote": "carol", "pairs": 2,
                                           "purpose": 7, "min_fidelity": 0.8})
    assert ctx.bus.replies("keyapp") == [] and asked == [("carol", 0.8)]
    t = apps.telemetry()
    assert t["requests_awaiting_route"] == 1 and t["requests_routed_total"] == 1
    await _ask(apps, "keyapp", "REQUEST", {"request_id": "r2", "remote": "dave", "pairs": 1,
                                           "purpose": 7})
    t, body = ctx.bus.replies("keyapp")[-1]
    assert (t, body["code"]) == ("ERROR", "unknown_remote") and "dave is not in" in body["reason"]
    # the path comes: carol's pool, its other end not heard yet: r1 still waits
    pool = RoutedPool(_PathEndStandIn("alice-carol-r1", "ab", 0, "carol"),  # type: ignore
                      "alice")
    assert apps.add_pool(pool)
    await apps._resume_routed(ctx.now())  # noqa: SLF001
    assert len(ctx.bus.replies("keyapp")) == 1
    # carol's LISTENERS: heard (and answered at once), r1 goes on
    listeners = Listeners(pool.id, {"7": "carolapp"})
    await apps._on_peer(parse_topic("qnet/v1/t/carol/svc/alice"),  # noqa: SLF001
                        Envelope(listeners.TYPE, "carol", 1, listeners.to_dict(), time.time()))
    assert any(topic.endswith("/svc/carol") and t == "LISTENERS"
               for topic, t, _ in ctx.bus.sent)
    await apps._resume_routed(ctx.now())  # noqa: SLF001
    t, body = ctx.bus.replies("keyapp")[-1]
    assert t == "ACCEPTED" and body["request_id"] == "r1", body
    # erin's path never comes
    await _ask(apps, "keyapp", "REQUEST", {"request_id": "r3", "remote": "erin", "pairs": 1,
                                           "purpose": 7})
    await apps._resume_routed(ctx.now() + ROUTE_WAIT_S + 1)  # noqa: SLF001
    t, body = ctx.bus.replies("keyapp")[-1]
    assert (t, body["code"], body["request_id"]) == ("ERROR", "unknown_remote", "r3")
    assert apps._unrouted == {}  # noqa: SLF001
    # a waiting request's CANCEL ends it at once
    await _ask(apps, "keyapp", "REQUEST", {"request_id": "r4", "remote": "erin", "pairs": 1,
                                           "purpose": 7})
    await _ask(apps, "keyapp", "CANCEL", {"request_id": "r4"})
    t, body = ctx.bus.replies("keyapp")[-1]
    assert (t, body["request_id"], body["pairs"]) == ("CANCELLED", "r4", 0)
    assert apps._unrouted == {}  # noqa: SLF001
    t = apps.telemetry()
    assert t["requests_awaiting_route"] == 0 and t["requests_routed_total"] == 3
