"""End-to-end pairs over a chain of any number of repeaters: what each end learns from the
repeaters' swaps, and how it puts them together.

A path runs through nodes ``n_0 … n_H`` joined by the K links ``l_0 … l_{H−1}`` (``l_k`` between
``n_k`` and ``n_{k+1}``); ``n_1 … n_{H−1}`` are repeaters. Each repeater swaps on its own, as soon
as both of its links hold a pair both ends of that link hold (swap as soon as possible: no
repeater waits for another, and the order in which they swap does not matter, since operations
at different nodes commute). It reports each swap to **both ends** of the path in a
:class:`HopReport`: which pair of each of its links it joined (link, sequence number), the Bell
measurement's outcome, each pair's announced Bell state and estimate at binding, how long its
own halves were stored until the measurement, how long the link neighbours' halves had been
stored by then, its memory's T1/T2 and its measurement's gate fidelity and read-out fidelity.

**Assembly** (:class:`ChainAssembler`). The reports of one end-to-end pair form a chain: the
report of hop k names as its right pair the pair that the report of hop k + 1 names as its left
one. Reports arrive in any order, from different nodes; the assembler files each under both of
its pairs and, after every report, walks left and right from it. When the walk reaches hop 1 on
one side and hop H − 1 on the other, the chain is complete: both ends, given the same reports,
find the same chain, and name the pair by the sequence number of its pair on ``l_0``
(:attr:`Chain.pair_id`; unique, since a link never reuses a sequence number).

**Composition** (:func:`compose`), for Bell-diagonal link pairs and Pauli-frame tracking
(docs/physicists/memories-and-swapping.md):

- the frame: the XOR of every link pair's announced Bell state and every outcome (the
  two-pair rule :func:`~qnode.daemon.quantum.bell_diagonal.pauli_frame` applied hop by hop);
- the state: each link pair's estimate with the halves the repeaters stored decayed for their
  storage times — exactly, with :func:`~qnode.daemon.quantum.bell_diagonal.age_halves`, both
  halves of a link between two repeaters at once and with each repeater's T1/T2 — then swapped
  hop by hop with each measurement's errors (:func:`~qnode.daemon.quantum.bell_diagonal.swap`).
  The ends' own halves are left out: an end decays them up to the moment it asks (its own
  since its binding, the far end's from the age its neighbour repeater reported).

The weights are exact for Bell-diagonal link pairs whose stored halves only dephase; amplitude
damping (T1) of a stored half leaves the pair slightly off Bell-diagonal before its measurement,
which the per-link Bell weights do not carry (a difference of order (t/T1)², checked against the
simulator's density matrices in the tests).
"""
from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass

from qnode.daemon.quantum.bell_diagonal import Bell, BellDiagonal, age_halves, swap

#: a link pair: (link id, its sequence number on that link)
PairRef = tuple[str, int]


@dataclass(frozen=True)
class HopReport:
    """One repeater's swap on a path, as both ends receive it.

    ``hop``: the repeater's place ``k`` on the path (node ``n_k``, 1 … H − 1); ``left`` and
    ``right``: the pairs it joined on ``l_{k−1}`` and ``l_k``; ``outcome``: the Bell measurement's
    result. Per side: ``*_bell`` the pair's announced Bell state, ``*_state`` the link's estimate
    of it at binding (absolute Bell weights [Φ+, Φ−, Ψ+, Ψ−]), ``*_wait_s`` how long this
    repeater stored its half until the measurement (s), ``*_age_s`` how long the link neighbour
    had stored the other half by then (s; from its HELD). ``t1_s``/``t2_s``: the repeater's
    memory (s; ``t1_s`` ≤ 0: no decay model); ``gate_fidelity``/``meas_fidelity``: the
    measurement's two-qubit gate depolarising parameter and per-bit read-out fidelity.
    ``time``: when the measurement ran (Unix s)."""

    hop: int
    left: PairRef
    right: PairRef
    outcome: Bell
    left_bell: Bell
    right_bell: Bell
    left_state: BellDiagonal
    right_state: BellDiagonal
    left_wait_s: float
    right_wait_s: float
    left_age_s: float
    right_age_s: float
    t1_s: float
    t2_s: float
    gate_fidelity: float
    meas_fidelity: float
    time: float


@dataclass(frozen=True)
class Chain:
    """The reports of one end-to-end pair, in path order (hop 1 first)."""

    reports: tuple[HopReport, ...]

    @property
    def pair_id(self) -> int:
        """The end-to-end pair's number: its pair's sequence number on the first link."""
        return self.reports[0].left[1]

    @property
    def first(self) -> PairRef:
        """The pair on the first link (held by ``n_0``)."""
        return self.reports[0].left

    @property
    def last(self) -> PairRef:
        """The pair on the last link (held by ``n_H``)."""
        return self.reports[-1].right

    def frame(self) -> Bell:
        """The end pair's Bell state in the Pauli frame (module docstring)."""
        return compose_frame(self.reports)

    def state(self) -> BellDiagonal:
        """The end pair's absolute Bell weights after the last measurement, the ends' halves
        not decayed (module docstring)."""
        return compose(self.reports)


def compose_frame(reports: Sequence[HopReport]) -> Bell:
    """The XOR of every link pair's Bell state and every outcome along ``reports`` (path
    order)."""
    frame = int(reports[0].left_bell)
    for r in reports:
        frame ^= int(r.outcome) ^ int(r.right_bell)
    return Bell(frame)


def _half(r: HopReport | None, side: str) -> tuple[float, float, float]:
    """(storage time, T1, T2) in s of the half repeater ``r`` stored on its ``side`` of the
    link; no decay for an end's half (None: the end decays it itself) or a repeater without a
    decay model."""
    if r is None or r.t1_s <= 0:
        return 0.0, math.inf, math.inf
    wait = r.left_wait_s if side == "left" else r.right_wait_s
    return max(0.0, wait), r.t1_s, r.t2_s


def _stored(state: BellDiagonal, left: HopReport | None, right: HopReport | None
            ) -> BellDiagonal:
    """A link pair's state with the halves stored at the repeaters ``left`` (on its right
    side) and ``right`` (on its left side) decayed."""
    a, b = _half(left, "right"), _half(right, "left")
    if a[0] == 0.0 and b[0] == 0.0:
        return state
    return age_halves(state, a[0], b[0], t1_s=(a[1], b[1]), t2_s=(a[2], b[2]))


def compose(reports: Sequence[HopReport]) -> BellDiagonal:
    """The end pair's absolute Bell weights from ``reports`` in path order (module docstring):
    link pairs decayed where repeaters stored them, swapped hop by hop."""
    if not reports:
        raise ValueError("compose: no reports")
    state = _stored(reports[0].left_state, None, reports[0])
    for k, r in enumerate(reports):
        nxt = reports[k + 1] if k + 1 < len(reports) else None
        link = _stored(r.right_state, r, nxt)
        # swap() gives the corrected frame; relabelled by the outcome, the weights are absolute
        state = swap(state, link, gate_fidelity=r.gate_fidelity,
                     meas_fidelity=r.meas_fidelity).relabel(r.outcome)
    return state


class ChainAssembler:
    """Collects the :class:`HopReport` of a path with ``hops`` links (module docstring) and
    gives each chain once it is complete. Holds at most ``max_reports`` reports: the oldest
    goes first (counted in :attr:`evicted`); :meth:`expire` drops reports older than a
    cut-off."""

    def __init__(self, links: Sequence[str], *, max_reports: int = 4096):
        if len(links) < 2:
            raise ValueError(f"a chain joins at least two links, got {list(links)!r}")
        self.links = tuple(links)
        self.hops = len(self.links)
        self.max_reports = max_reports
        self._by_left: dict[PairRef, HopReport] = {}
        self._by_right: dict[PairRef, HopReport] = {}
        self._order: collections.OrderedDict[PairRef, HopReport] = collections.OrderedDict()
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._order)

    def check(self, report: HopReport) -> str | None:
        """Why ``report`` cannot belong to this path (None: it can)."""
        if not 1 <= report.hop < self.hops:
            return f"hop {report.hop} is not a repeater of a {self.hops}-link path"
        want = (self.links[report.hop - 1], self.links[report.hop])
        if (report.left[0], report.right[0]) != want:
            return (f"hop {report.hop} joins links {want[0]!r} and {want[1]!r}, not "
                    f"{report.left[0]!r} and {report.right[0]!r}")
        if report.left in self._by_left or report.right in self._by_right:
            return f"a report for pair {report.left} or {report.right} is already here"
        return None

    def add(self, report: HopReport) -> Chain | None:
        """File ``report`` (ValueError if :meth:`check` refuses it); the chain it completes,
        removed from the assembler, or None."""
        why = self.check(report)
        if why is not None:
            raise ValueError(why)
        self._by_left[report.left] = report
        self._by_right[report.right] = report
        self._order[report.left] = report
        while len(self._order) > self.max_reports:
            self._drop(next(iter(self._order.values())))
            self.evicted += 1
        chain = self._walk(report)
        if chain is not None:
            for r in chain.reports:
                self._drop(r)
        return chain

    def _walk(self, report: HopReport) -> Chain | None:
        left: list[HopReport] = []
        r: HopReport | None = report
        while r is not None and r.hop > 1:
            r = self._by_right.get(r.left)
            if r is not None:
                left.append(r)
        if r is None:
            return None
        right: list[HopReport] = []
        r = report
        while r is not None and r.hop < self.hops - 1:
            r = self._by_left.get(r.right)
            if r is not None:
                right.append(r)
        if r is None:
            return None
        return Chain((*reversed(left), report, *right))

    def _drop(self, report: HopReport) -> None:
        self._order.pop(report.left, None)
        if self._by_left.get(report.left) is report:
            del self._by_left[report.left]
        if self._by_right.get(report.right) is report:
            del self._by_right[report.right]

    def expire(self, before: float) -> int:
        """Drop reports of measurements before ``before`` (Unix s); how many."""
        old = [r for r in self._order.values() if r.time < before]
        for r in old:
            self._drop(r)
        self.expired += len(old)
        return len(old)

    def pending(self, pair: PairRef) -> bool:
        """Is a report that names ``pair`` waiting for the rest of its chain?"""
        return pair in self._by_left or pair in self._by_right

