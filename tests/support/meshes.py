"""The two-route mesh of the routing system tests (tests/system/test_failover.py,
test_degraded_route.py) and what they read of it:

    alice - r1 - bob
    alice - r2 - bob

alice keeps a routed path to bob; ``alice-app`` asks alice for pairs with bob, ``bob-app``
listens at bob on purpose 7, both through the application service (support.apps)."""
from __future__ import annotations

from qnode.daemon.tools.topology import Mesh

from support.apps import App, ask, pairs_for
from support.oracle import Truth

TWO_ROUTES = Mesh((("alice", "r1"), ("r1", "bob"), ("alice", "r2"), ("r2", "bob")),
                  ("alice", "bob"))
APPS = {"alice": "\n[applications.alice-app]\nweight = 1.0\npurposes = []\n",
        "bob": "\n[applications.bob-app]\nweight = 1.0\npurposes = [7]\n"}
#: the application service's pool of alice's routed paths to bob, at both ends
POOL = "route-alice-bob"
PURPOSE = 7


def routed(latest: dict[str, dict], node: str = "alice") -> dict:
    """``node``'s routed paths (telemetry ``routing.routed``)."""
    return latest.get(node, {}).get("routing", {}).get("routed", {})


def active_path(latest: dict[str, dict]) -> tuple[str, dict] | None:
    """alice's active path to bob (id, telemetry), once its repeater has swapped for it."""
    found = [(pid, p) for pid, p in routed(latest).get("paths", {}).items()
             if p.get("state") == "active"]
    if len(found) != 1:
        return None
    pid, p = found[0]
    swaps = latest.get(p["nodes"][1], {}).get("paths", {}).get(pid, {}).get("swaps_total", 0)
    return (pid, p) if swaps > 0 else None


def listening_apps(port: int) -> tuple[App, App]:
    """alice-app, and bob-app listening at bob."""
    alice_app, bob_app = App("alice-app", port), App("bob-app", port)
    bob_app.send("bob", "LISTEN", {"purpose": PURPOSE})
    assert bob_app.next()[0] == "LISTENING"
    return alice_app, bob_app


def served_at_both_ends(alice_app: App, bob_app: App, truth: Truth, rid: str, pairs: int, *,
                        sent: bool = False) -> tuple[list[dict], list[dict], str]:
    """alice-app's request ``rid`` for ``pairs`` pairs with bob (made here, or ``sent``
    earlier), to DONE: its PAIRs, bob-app's PAIRs as the listener, and the partner of alice's
    last qubit (the registry oracle, read at once). Blocking: call it in a thread."""
    if sent:
        replies = alice_app.until(rid, 300)
    else:
        replies = ask(alice_app, "alice", rid, 300, remote="bob", pairs=pairs,
                      purpose=PURPOSE, timeout_s=240)
    assert replies[-1][0] == "DONE", replies
    mine = [b for t, b in replies if t == "PAIR"]
    partner, _ = truth.read("alice", mine[-1]["qubit"]).pair()
    return mine, pairs_for(bob_app, pairs, 120), partner
