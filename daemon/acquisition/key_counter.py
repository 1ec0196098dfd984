"""Cross-node counting for keys: this analyzer's tags against the peer's detection times only.

An M link in key mode (``[analyzer.keys]``) never moves outcomes: the streaming end sends its
detection times (:mod:`qnode.daemon.bus.timewire`, each chunk with the stream index of its
first tag) and keeps its own bases and outcomes by stream index (:class:`KeyTagLog`); the
counting end pairs its own tags with those times in the C core (:class:`qnode.native.CrossPairs`,
clock found by :class:`~.clock_acquisition.ClockAcquisition` and followed by the drift servo)
and names each pair by the peer tag's stream index (:class:`KeyCounter`). Sifting then exchanges
bases only (:mod:`qnode.daemon.qkd.session`). Times in ps.

A key bit is the outcome read against the basis' eigenstates: 0 for the '+' eigenstate (outcome
0 of a PBS behind a HWP at 0° or 22.5°), 1 for '−', so both ends' bits of an ideal Φ+ pair agree
(the follower maps other source states, :func:`qnode.daemon.qkd.session.key_bit_flips`).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from qnode.daemon.acquisition.clock_acquisition import AlignmentError, ClockAcquisition
from qnode.daemon.acquisition.cross_node import (  # the Bell-test counter's, the same here
    ACCIDENTAL_SHIFT_PS,
    G2_BIN_PS,
    G2_HALF_RANGE_PS,
    MARGIN_PS,
    MAX_BUFFER_S,
)
from qnode.daemon.qkd.block import X, Z
from qnode.daemon.qkd.session import LOST
from qnode.native import CrossPairs

if TYPE_CHECKING:
    from qnode.daemon.acquisition.cross_node import BasisLayout
    from qnode.native import TagBlock
    from qnode.native.tracking import DriftTracker

SEGMENTS_KEPT = 4096         # peer chunks remembered for index translation (minutes of chunks)


def key_channels(layout: BasisLayout) -> dict[int, tuple[int, int]]:
    """Tagger channel → (basis code :data:`~qnode.daemon.qkd.block.Z`/``X``, key bit) of a
    two-basis Z/X analyzer; ValueError for any other layout."""
    out: dict[int, tuple[int, int]] = {}
    for i, pair in enumerate(layout.channels):
        pauli = layout.pauli(i)
        if pauli is None:
            raise ValueError(f"keys: basis {layout.labels[i]} is neither Z nor X")
        basis, sign = pauli
        code = Z if basis == "Z" else X
        for outcome, ch in enumerate(pair):
            out[ch] = (code, outcome ^ (sign < 0))
    if sorted(b for b, _ in out.values()) != [Z, Z, X, X]:
        raise ValueError(f"keys: the analyzer must measure Z and X (BBM92), got "
                         f"{list(layout.labels)}")
    return out


class _ChannelTable:
    """Channel → (basis, bit) as lookup arrays (channels not in the table give basis 255)."""

    def __init__(self, table: dict[int, tuple[int, int]]):
        size = max(table) + 1
        self.channels = np.array(sorted(table), np.int32)
        self.basis = np.full(size, 255, np.uint8)
        self.bit = np.zeros(size, np.uint8)
        for ch, (b, k) in table.items():
            self.basis[ch], self.bit[ch] = b, k

    def select(self, block: TagBlock) -> tuple[np.ndarray, np.ndarray]:
        """(times, channels) of the key channels' tags in ``block``."""
        keep = (block["type"] == 0) & np.isin(block["channel"], self.channels)
        sel = block[keep]
        return (np.ascontiguousarray(sel["time"], np.int64),
                np.ascontiguousarray(sel["channel"], np.int32))


@dataclasses.dataclass(frozen=True)
class KeyEvents:
    """Coincidences counted by one :meth:`KeyCounter.process`: the peer's tags by stream index
    (increasing) and this end's basis and key bit of each (uint8)."""

    peer_index: np.ndarray
    bases: np.ndarray
    bits: np.ndarray


class KeyCounter:
    """The counting end of a key link: own tags and peer times → coincidences named by the
    peer's stream index (module docstring). ``layout``: own Z/X analyzer; ``window_ps``: |Δt| ≤
    window pairs; ``align_s``: tag time of both streams the first clock lock uses (s)."""

    def __init__(self, layout: BasisLayout, window_ps: int, align_s: float):
        self.table = _ChannelTable(key_channels(layout))
        self.window_ps = window_ps
        self.clock = ClockAcquisition(align_s, window_ps)
        self.tracker: DriftTracker | None = None
        self.pairs = CrossPairs(window_ps, accidental_shift_ps=ACCIDENTAL_SHIFT_PS,
                                g2_half_range_ps=G2_HALF_RANGE_PS, g2_bin_ps=G2_BIN_PS)
        self._own: collections.deque[tuple[np.ndarray, np.ndarray]] = collections.deque()
        self._peer: collections.deque[tuple[np.ndarray, int]] = collections.deque()
        self.own_end = -1            # own stream complete up to (own clock)
        self.peer_end = -1           # peer stream complete up to (peer clock)
        self.fed_to = -1             # own clock: what went into the pair engine
        self.started_ps = -1         # own clock: the first tag fed
        self._peer_fed = 0           # peer tags given to the engine
        self._peer_next = 0          # the peer's stream index after the newest tag received
        self._segments: collections.deque[tuple[int, int]] = collections.deque(
            maxlen=SEGMENTS_KEPT)    # (engine index, stream index) of each peer piece fed
        self.own_tags = 0
        self.peer_tags = 0
        self.dropped_tags = 0
        self.coincidences = 0
        self.rejected = 0

    # ------------------------------------------------------------------ input
    def add_own(self, block: TagBlock, t_end_ps: int, received_s: float | None = None) -> None:
        """Own tags complete up to ``t_end_ps`` (own clock, ps); ``received_s`` as in
        :meth:`ClockAcquisition.note_own`. Tags of other channels are ignored."""
        times, channels = self.table.select(block)
        self._own.append((times, channels))
        self.own_end = max(self.own_end, t_end_ps)
        self.own_tags += times.size
        self.clock.note_own(t_end_ps, received_s)

    def add_peer(self, times: np.ndarray, first_index: int, t_end_ps: int,
                 received_s: float | None = None) -> None:
        """The peer's detection times (sorted, peer clock) whose first is the peer's tag
        ``first_index`` in its stream; complete up to ``t_end_ps``. ValueError when the stream
        goes back (an index or a time before what came already)."""
        if first_index < self._peer_next:
            raise ValueError(f"first_index {first_index}: the peer's stream went back "
                             f"(expected at least {self._peer_next})")
        if times.size and times[0] < self.peer_end:
            raise ValueError(f"t0_ps {int(times[0])}: before the end of the previous chunk "
                             f"({self.peer_end})")
        self._peer.append((times, first_index))
        self._peer_next = first_index + times.size
        self.peer_end = max(self.peer_end, t_end_ps)
        self.peer_tags += times.size
        self.clock.note_peer(t_end_ps, received_s)

    # ------------------------------------------------------------------ work
    def process(self) -> KeyEvents | None:
        """Pair what both streams cover; the new coincidences, or None when nothing could be
        processed yet (no clock lock, or no new common time)."""
        self._trim(int(MAX_BUFFER_S * 1e12) if self.tracker else
                   max(int(MAX_BUFFER_S * 1e12), 2 * self.clock.align_ps))
        if self.own_end < 0 or self.peer_end < 0:
            return None
        if self.tracker is None and not self._acquire():
            return None
        tracker = self.tracker
        assert tracker is not None
        horizon = min(self.own_end, int(tracker.to_reference(
            np.array([self.peer_end], np.int64))[0])) - MARGIN_PS
        if horizon <= self.fed_to:
            return None
        own_t, own_c = self._take_own(horizon)
        peer_limit = int(tracker.to_node_b(np.array([horizon], np.int64))[0])
        peer_t = self._take_peer(peer_limit)
        if self.started_ps < 0 and own_t.size:
            self.started_ps = int(own_t[0])
        self.fed_to = horizon
        tracker.update(own_t, peer_t)
        result = self.pairs.process(own_t, own_c, peer_t, tracker)
        p = result.pairs
        self.coincidences += int(p.size)
        channel = p["channel"]
        return KeyEvents(self._stream_index(p["peer"]), self.table.basis[channel],
                         self.table.bit[channel])

    def _acquire(self) -> bool:
        own, peer = list(self._own), list(self._peer)   # the loop may append meanwhile
        own_t = np.concatenate([t for t, _ in own]) if own else np.empty(0, np.int64)
        peer_t = np.concatenate([t for t, _ in peer]) if peer else np.empty(0, np.int64)
        try:
            tracker = self.clock.acquire(own_t, peer_t)
        except AlignmentError:
            self._trim(self.clock.align_ps)
            return False
        self.tracker = tracker
        return tracker is not None

    def _stream_index(self, engine_index: np.ndarray) -> np.ndarray:
        """The peer's stream index of engine peer indices (the peer skips none; pieces dropped
        here, or chunks lost on the way, leave gaps that the pieces' first indices bridge)."""
        if not engine_index.size:
            return engine_index.astype(np.int64)
        seg = np.array(self._segments, np.int64)
        k = np.searchsorted(seg[:, 0], engine_index, side="right") - 1
        if k.min() < 0:
            raise RuntimeError("a pair names a peer tag older than the index translation keeps")
        return seg[k, 1] + (engine_index - seg[k, 0])

    def _trim(self, keep_ps: int) -> None:
        """Drop (and count) what waited longer than ``keep_ps`` behind its stream's newest."""
        for queue in (self._own, self._peer):
            if not queue:
                continue
            newest = int(queue[-1][0][-1]) if queue[-1][0].size else -1
            while len(queue) > 1 and (not queue[0][0].size
                                      or int(queue[0][0][-1]) < newest - keep_ps):
                self.dropped_tags += queue.popleft()[0].size

    def _take_own(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        ts, cs = [], []
        while self._own:
            t, c = self._own[0]
            cut = int(np.searchsorted(t, horizon, side="left"))
            ts.append(t[:cut])
            cs.append(c[:cut])
            if cut < t.size:
                self._own[0] = (t[cut:], c[cut:])
                break
            self._own.popleft()
        if not ts:
            return np.empty(0, np.int64), np.empty(0, np.int32)
        return np.concatenate(ts), np.concatenate(cs)

    def _take_peer(self, limit: int) -> np.ndarray:
        ts = []
        while self._peer:
            t, first = self._peer[0]
            cut = int(np.searchsorted(t, limit, side="left"))
            if cut:
                self._segments.append((self._peer_fed, first))
                self._peer_fed += cut
                ts.append(t[:cut])
            if cut < t.size:
                self._peer[0] = (t[cut:], first + cut)
                break
            self._peer.popleft()
        return np.concatenate(ts) if ts else np.empty(0, np.int64)

    # ------------------------------------------------------------------ figures
    @property
    def counted_s(self) -> float:
        """Own tag time paired so far (s)."""
        return max(self.fed_to - self.started_ps, 0) * 1e-12 if self.started_ps >= 0 else 0.0


class KeyTagLog:
    """The streaming end's own key tags by stream index, for the follower's sifting: at most
    ``max_age_s`` of tag time behind the newest and ``max_tags`` tags (older ones are answered
    :data:`~qnode.daemon.qkd.session.LOST`)."""

    def __init__(self, layout: BasisLayout, *, max_age_s: float = 30.0,
                 max_tags: int = 100_000_000):
        self.table = _ChannelTable(key_channels(layout))
        self.max_age_ps = int(max_age_s * 1e12)
        self.max_tags = max_tags
        self._chunks: collections.deque[tuple[int, int, np.ndarray]] = collections.deque()
        self.next_index = 0          # stream index of the next tag
        self.held = 0
        self.forgotten = 0

    def add(self, block: TagBlock, t_end_ps: int) -> tuple[np.ndarray, int]:
        """Keep a chunk's key tags; (their times, the stream index of the first) to send."""
        times, channels = self.table.select(block)
        first = self.next_index
        code = (self.table.basis[channels] << 1) | self.table.bit[channels]
        self._chunks.append((first, t_end_ps, code))
        self.next_index += times.size
        self.held += times.size
        while len(self._chunks) > 1 and (self.held > self.max_tags
                                         or self._chunks[0][1] < t_end_ps - self.max_age_ps):
            gone = self._chunks.popleft()[2].size
            self.held -= gone
            self.forgotten += gone
        return times, first

    def lookup(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bases, bits) of own tags by stream index; :data:`LOST` for a tag not held."""
        bases = np.full(index.size, LOST, np.uint8)
        bits = np.zeros(index.size, np.uint8)
        if not index.size or not self._chunks:
            return bases, bits
        starts = np.array([c[0] for c in self._chunks], np.int64)
        k = np.searchsorted(starts, index, side="right") - 1
        for j in np.unique(k[k >= 0]):
            first, _, code = self._chunks[int(j)]
            sel = np.flatnonzero(k == j)
            off = index[sel] - first
            ok = off < code.size
            c = code[off[ok]]
            bases[sel[ok]] = c >> 1
            bits[sel[ok]] = c & 1
        return bases, bits
