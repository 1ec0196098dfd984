"""A path end (qnode.daemon.klink.swapping.PathEnd) on a chain a – r1 – r2 – b: both ends
turn the same repeater reports, in any order, into the same pairs; reports that are not the
path's are refused and counted; a pair whose chain does not complete is discarded at the
cut-off; a report for a pair this end does not hold is an orphan."""
from __future__ import annotations

import asyncio
import random
import time
import types
from typing import Any

import pytest

from qnode.daemon.bus.topics import Topics
from qnode.daemon.klink.memory import Bound, LinkMemory, QubitPool
from qnode.daemon.klink.swapping import CUTOFF_GUARD_S, PathEnd
from qnode.daemon.linklayer import BELL_STATES, SwapResult
from qnode.daemon.runtime.config import MemoryConfig, PathConfig

PATH = PathConfig("a-b", ("a", "r1", "r2", "b"), ("l0", "l1", "l2"))
MEM = MemoryConfig(qdevice="qmem", max_pair_age_s=1.0, t1_s=5.0, t2_s=2.0)
WEIGHTS = (0.91, 0.03, 0.03, 0.03)


class _End:
    """The link service a path end needs: its lock, the link end's ``consume``, ``changed``."""

    def __init__(self, link: str, peer: str):
        self.link, self.peer = link, peer
        self.lock = asyncio.Lock()
        self.consumed: list[int] = []
        self.end = types.SimpleNamespace(consume=self.consumed.extend)

    def changed(self) -> None:
        pass


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _end(node: str, seqs: list[int], clock: _Clock) -> PathEnd:
    """``node``'s end of PATH with its link pairs ``seqs`` bound (qubit i for the i-th)."""
    link, peer = ("l0", "r1") if node == "a" else ("l2", "r2")
    ctx = types.SimpleNamespace(node=node, now=clock, topics=Topics("net", node),
                                bus=types.SimpleNamespace(publish=lambda *a, **k: True))
    memory = LinkMemory(link, QubitPool("qmem", lambda: None, {}),  # type: ignore[arg-type,return-value]
                        test_fraction=0.0, readout_error=0.0, t1_s=5.0, t2_s=2.0,
                        prior_fidelity=0.9)
    for q, seq in enumerate(seqs):
        memory.bound[seq] = Bound(seq, q, "phi+", clock() - 0.01, memory.pool.generation)
    return PathEnd(ctx, PATH, _End(link, peer), memory, MEM)  # type: ignore[arg-type]


def _report(hop: int, left: int, right: int, outcome: str, **kw: Any) -> SwapResult:
    fields: dict[str, Any] = dict(
        path="a-b", hop=hop, left_link=PATH.links[hop - 1], left_seq=left,
        right_link=PATH.links[hop], right_seq=right, outcome=outcome, left_bell="phi+",
        right_bell="phi+", left_weights=WEIGHTS, right_weights=WEIGHTS, left_wait_s=0.002,
        right_wait_s=0.001, left_age_s=0.004, right_age_s=0.003, t1_s=5.0, t2_s=2.0,
        gate_fidelity=0.999, meas_fidelity=0.995, time=time.time())
    fields.update(kw)
    return SwapResult(**fields)


@pytest.mark.asyncio
async def test_both_ends_make_the_same_pairs_from_reports_in_any_order():
    rng = random.Random(3)
    clock = _Clock()
    first, middle, last = [10, 11, 12, 13, 14], [70, 71, 72, 73, 74], [40, 41, 42, 43, 44]
    reports = []
    for k in range(5):
        reports.append(("r1", _report(1, first[k], middle[k], rng.choice(BELL_STATES))))
        reports.append(("r2", _report(2, middle[k], last[k], rng.choice(BELL_STATES))))
    ends = {"a": _end("a", first, clock), "b": _end("b", last, clock)}
    for end in ends.values():
        order = reports[:]
        rng.shuffle(order)
        for sender, msg in order:
            await end.on_swap_result(msg, sender)
    a, b = ends["a"], ends["b"]
    assert sorted(a.pairs) == sorted(b.pairs) == first     # the first link's seqs name them
    for pid in first:
        assert a.pairs[pid].bell_state == b.pairs[pid].bell_state
        assert a.pairs[pid].weights.isclose(b.pairs[pid].weights)
    k = first.index(12)
    frame = BELL_STATES.index(reports[2 * k][1].outcome) ^ BELL_STATES.index(
        reports[2 * k + 1][1].outcome)
    assert a.pairs[12].bell_state == BELL_STATES[frame]
    assert a.pairs[12].qubit == 2 and b.pairs[12].qubit == 2
    assert a.counts["pairs_received_total"] == b.counts["pairs_received_total"] == 5
    assert sorted(a.service.consumed) == first  # type: ignore[attr-defined]
    assert sorted(b.service.consumed) == last  # type: ignore[attr-defined]
    assert not a.waiting and len(a.assembler) == 0


@pytest.mark.asyncio
async def test_reports_not_of_the_path_are_refused_and_counted():
    clock = _Clock()
    a = _end("a", [10], clock)
    await a.on_swap_result(_report(1, 10, 70, "phi+"), "r2")             # r2 is hop 2
    await a.on_swap_result(_report(2, 70, 40, "phi+", right_link="l9"), "r2")
    await a.on_swap_result(_report(1, 10, 70, "phi+", path="x-y"), "r1")
    assert a.counts["swap_reports_refused_total"] == 3
    assert 10 in a.memory.bound and not a.waiting and not a.pairs


@pytest.mark.asyncio
async def test_a_chain_that_does_not_complete_is_discarded_at_the_cut_off():
    clock = _Clock()
    a = _end("a", [10, 11], clock)
    await a.on_swap_result(_report(1, 10, 70, "phi+"), "r1")     # r2 never swaps 70
    await a.on_swap_result(_report(1, 99, 71, "phi+"), "r1")     # not held here: an orphan
    assert set(a.waiting) == {10} and a.counts["swap_orphaned_total"] == 1
    a.tick()
    assert set(a.waiting) == {10}
    clock.t += MEM.max_pair_age_s + 0.1
    a.tick()
    assert not a.waiting and a.counts["chains_incomplete_total"] == 1
    assert a.memory.held_until(0) == pytest.approx(clock.t + CUTOFF_GUARD_S)
    t = a.memory.telemetry()    # the qubit is accounted for: taken, and held for the guard
    assert (t["qubits_bound"], t["qubits_taken"], t["qubits_held"]) == (1, 1, 1)
    a.memory.tick(clock.t + CUTOFF_GUARD_S)
    t = a.memory.telemetry()
    assert (t["qubits_bound"], t["qubits_taken"], t["qubits_held"]) == (1, 0, 0)
    # the rest of the chain arriving late finds no qubit here: counted, nothing made
    await a.on_swap_result(_report(2, 70, 40, "phi+"), "r2")
    assert not a.pairs and a.counts["pairs_received_total"] == 0
    assert a.counts["swap_orphaned_total"] == 2


@pytest.mark.asyncio
async def test_the_router_hands_a_signed_report_to_its_path_end_and_counts_the_rest():
    """A SWAP_RES goes to the end of its path whether the link key (a neighbour) or only the
    repeater's identity key (a far repeater) signed it; an unsigned one, or one for a path
    that does not end here, is counted and dropped."""
    from qnode.daemon.bus.envelope import Message as Envelope
    from qnode.daemon.bus.topics import parse_topic
    from qnode.daemon.klink.service import LinkRouter

    from support.daemon_harness import link_context

    clock = _Clock()
    a = _end("a", [10, 11], clock)
    ctx = link_context("a", types.SimpleNamespace(publish=lambda *x, **k: True))
    router = ctx.shared(LinkRouter)
    router.add_path(a)
    handler = ctx.handlers["ll"]

    def env(msg: SwapResult, sender: str, **sig: bool) -> Envelope:
        return Envelope(msg.TYPE, sender, 1, msg.to_dict(), time.time(), **sig)

    topic = parse_topic("qnet/v1/t/r1/ll/a")
    await handler(topic, env(_report(1, 10, 70, "phi+"), "r1", signed=True))
    await handler(parse_topic("qnet/v1/t/r2/ll/a"),
                  env(_report(2, 70, 40, "psi-"), "r2", node_signed=True))
    assert list(a.pairs) == [10] and a.pairs[10].bell_state == "psi-"
    await handler(topic, env(_report(1, 11, 71, "phi+"), "r1"))
    await handler(topic, env(_report(1, 11, 71, "phi+", path="x-y"), "r1", signed=True))
    assert router.rejected["unsigned"] == 1 and router.rejected["unknown_path"] == 1
    assert 11 in a.memory.bound
