"""Pools of pairs as the application service sees them: what can be given now, and taking one.

A :class:`LinkPool` is one K link whose pairs live in qubits (``[memory].qdevice``): a pair can
be given once both ends hold it and enough of its time is left (the link service's
``deliverable``); its fidelity is the link's estimate in the pair's frame with both halves
decayed since binding. Every call is made with the link's lock held.
"""
from __future__ import annotations

from dataclasses import dataclass

from qnode.daemon.klink.memory import LinkMemory
from qnode.daemon.klink.service import LinkService
from qnode.daemon.linklayer import hold_ms


@dataclass(frozen=True)
class Taken:
    """A pair taken out of a pool for an application."""

    seq: int
    bell_state: str          # in the pool's frame (the same at both ends)
    fidelity: float          # estimated, at taking
    qubit: int
    hold_ms: int | None      # the qubit is the application's this long (ms; None: unbounded)


class LinkPool:
    """The pairs of K link ``service`` held in ``memory``'s qubits. ``node`` is this node: the
    allocator is the end whose id sorts first."""

    def __init__(self, service: LinkService, memory: LinkMemory, node: str):
        self.service, self.memory = service, memory
        self.id, self.remote = service.link, service.peer
        self.allocator = node < service.peer

    def estimate(self) -> float:
        """The fidelity of the link's fresh pairs now (its test-pair estimate)."""
        return float(self.service.end.goodness)

    def offers(self, now: float) -> list[tuple[int, float]]:
        """``(seq, fidelity)`` of every pair that may be given now, the freshest (best) first:
        an application gets the best pair there is, and the oldest ones, which the link's
        cut-off expires anyway, are the ones left over (the link layer's own CREATEs are
        served oldest first, as the EGP does)."""
        out: list[tuple[int, float]] = []
        for seq in reversed(self.service.end.live_seqs().tolist()):
            b = self.memory.bound.get(seq)
            if b is None or not self.service.deliverable(seq):
                continue
            state = self.memory.state_of(b, now, halves=2)
            out.append((seq, state.fidelity(b.bell_state)))
        return out

    def take(self, seq: int, now: float) -> Taken | None:
        """Take pair ``seq`` out of the link's inventory (without telling the peer: the GIVE
        does) and hold its qubit for the application; None if it is not held here."""
        bound = self.memory.take(seq)
        if bound is None:
            return None
        if not self.service.end.consume([seq]):
            self.memory.give_back(bound.qubit)
            return None
        hold = self.service.hold_s
        self.memory.give_back(bound.qubit)
        self.memory.hold(bound.qubit, now + hold)
        self.service.changed()
        state = self.memory.state_of(bound, now, halves=2)
        return Taken(seq, bound.bell_state, round(state.fidelity(bound.bell_state), 6),
                     bound.qubit, hold_ms(hold))
