"""The allocator's policy (qnode.daemon.apps.scheduler) on synthetic pair streams: weighted fair
share against the configured weights (Jain's index for equal weights), strict priorities, no
head-of-line blocking by a request the pairs cannot serve, no credit for idle time, FIFO within
an application, deadlines and bounds."""
from __future__ import annotations

import numpy as np
import pytest

from qnode.daemon.apps.scheduler import FairQueue, QueueFull, Waiting


def jain(x: list[float]) -> float:
    """Jain's fairness index (Σx)² / (n·Σx²): 1 when all are equal, 1/n when one takes all."""
    a = np.asarray(x, dtype=float)
    return float(a.sum() ** 2 / (len(a) * (a ** 2).sum()))


def req(app: str, rid: str, pairs: int = 10**6, *, priority: int = 4, min_f: float = 0.0,
        deadline: float = 1e9, node: str = "alice") -> Waiting:
    return Waiting((node, app, rid), priority, min_f, pairs, deadline)


def serve(q: FairQueue, n: int, fidelity: float = 0.9) -> dict[str, int]:
    got: dict[str, int] = {}
    for _ in range(n):
        w = q.pick(fidelity)
        if w is None:
            break
        q.served(w)
        got[w.key[1]] = got.get(w.key[1], 0) + 1
    return got


def test_equal_weights_share_equally():
    q = FairQueue(lambda app: 1.0)
    apps = [f"app{i}" for i in range(8)]
    for a in apps:
        q.add(req(a, "r"))
    got = serve(q, 8000)
    assert sorted(got.values()) == [1000] * 8, got
    assert jain(list(got.values())) == pytest.approx(1.0)


def test_weights_give_proportional_shares_and_a_jain_index_on_normalised_shares():
    weights = {f"app{i}": float(i + 1) for i in range(8)}
    q = FairQueue(lambda app: weights[app[1]])
    for a in weights:
        q.add(req(a, "r"))
    got = serve(q, 36_000)          # Σw = 36: 1000 pairs per unit of weight
    for a, w in weights.items():
        assert abs(got[a] - 1000 * w) <= 1, (a, got[a])
    assert jain([got[a] / w for a, w in weights.items()]) > 0.9999


def test_a_request_the_pairs_cannot_serve_blocks_nobody():
    """The issue's head-of-line case: app1 wants F ≥ 0.9 from pairs of 0.75-0.88; app2's request
    (F ≥ 0.7, 2 pairs) is served while app1's waits."""
    q = FairQueue(lambda app: 1.0)
    first = req("app1", "hard", pairs=5, min_f=0.9, priority=0)
    q.add(first)
    q.add(req("app2", "easy", pairs=2, min_f=0.7, priority=7))
    served = []
    for f in (0.75, 0.88, 0.80):
        w = q.pick(f)
        if w is not None:
            served.append(w.key[2])
            q.served(w)
    assert served == ["easy", "easy"] and len(q) == 1 and first.delivered == 0
    assert q.pick(0.91) is first


def test_priorities_are_strict_and_fifo_holds_within_an_application():
    q = FairQueue(lambda app: 1.0)
    q.add(req("a", "low1", pairs=2, priority=5))
    q.add(req("a", "low2", pairs=2, priority=5))
    q.add(req("b", "high", pairs=3, priority=1))
    order = []
    while (w := q.pick(0.9)) is not None:
        order.append(w.key[2])
        q.served(w)
    assert order == ["high"] * 3 + ["low1"] * 2 + ["low2"] * 2


def test_an_idle_application_gets_no_credit_for_its_idle_time():
    q = FairQueue(lambda app: 1.0)
    q.add(req("busy", "r"))
    serve(q, 1000)                  # alone for 1000 pairs
    q.add(req("late", "r"))
    got = serve(q, 200)
    assert got == {"busy": 100, "late": 100}, got


def test_applications_of_both_ends_share_by_node_and_name():
    """Fair share is between (node, application): the same name at two nodes is two."""
    q = FairQueue(lambda app: 1.0)
    q.add(req("app", "r", node="alice"))
    q.add(req("app", "r", node="bob"))
    seen = []
    for _ in range(4):
        w = q.pick(0.9)
        assert w is not None
        seen.append(w.key[0])
        q.served(w)
    assert seen.count("alice") == 2 and seen.count("bob") == 2


def test_deadlines_cancels_and_bounds():
    q = FairQueue(lambda app: 1.0, max_waiting=3, max_per_application=2)
    q.add(req("a", "r1", deadline=5.0))
    q.add(req("a", "r2", deadline=50.0))
    with pytest.raises(QueueFull, match="a has 2 requests waiting"):
        q.add(req("a", "r3"))
    with pytest.raises(ValueError, match="already waiting"):
        q.add(req("a", "r1"))
    q.add(req("b", "r1"))
    with pytest.raises(QueueFull, match="3 requests waiting"):
        q.add(req("c", "r1"))
    assert [w.key for w in q.expired(5.0)] == [("alice", "a", "r1")]
    assert q.remove(("alice", "b", "r1")) is not None and q.remove(("alice", "b", "r1")) is None
    assert len(q) == 1 and q.waiting_per_application() == {("alice", "a"): 1}
    w = q.pick(0.5)
    assert w is not None and w.key[2] == "r2"
