"""The heralding station's side of the link layer, as pure logic: it numbers its successes per
link (absolute numbers within a station epoch) and batches them into one :class:`Herald` per link
per chunk. The link ends it heralds are :class:`qnode.daemon.linklayer.end.LinkEnd`."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from qnode.daemon.linklayer.fields import (
    INT64_MAX,
    bad,
    check_choice,
    check_epoch,
    check_int,
    check_seq,
    check_str,
    int_array,
)
from qnode.daemon.linklayer.messages import MAX_HERALD_COUNT, Herald
from qnode.daemon.linklayer.sequence import MAX_ABS, SEQ_BITS, SEQ_MOD
from qnode.daemon.quantum.bell_states import BELL_CODES, BELL_STATES


class HeraldStation:
    """The midpoint's side (the EGP's MHP): numbers successes per link with its own ``mhp_seq``
    and batches them per chunk into one :class:`Herald` per link (empty batches included: they
    are the heartbeat that lets an end detect a lost tail). Successes are recorded one at a
    time (:meth:`success`) or as arrays (:meth:`successes`), in any mix; order is kept.

    ``epoch`` (:func:`new_epoch`, drawn when the station's state is created): its batches then
    carry the epoch, the lap and the epoch's start (module docstring), so the ends follow a
    restart that lost the state. Without one (None) it sends batches of the previous version.
    The counters are absolute (``next_abs``); ``next_seq`` is the 32-bit one."""

    def __init__(self, links: Iterable[str] = (), *, initial_seq: int = 0,
                 epoch: str | None = None) -> None:
        if epoch is not None:
            check_epoch("HeraldStation", "epoch", epoch)
        self.epoch = epoch
        self._next: dict[str, int] = {}
        self._start: dict[str, int] = {}
        self._parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._single: dict[str, tuple[list[int], list[int]]] = {}
        for link in links:
            self.add_link(link, initial_seq)

    def add_link(self, link: str, initial_seq: int = 0, *, next_abs: int | None = None,
                 start: int | None = None) -> None:
        """Number ``link``'s successes from ``initial_seq`` (or the absolute ``next_abs``);
        ``start``: the absolute number its epoch began at (default: where it starts now)."""
        check_str("HeraldStation", "link", link)
        check_seq("HeraldStation", "initial_seq", initial_seq)
        if next_abs is None:
            next_abs = initial_seq
        check_int("HeraldStation", "next_abs", next_abs, 0, MAX_ABS)
        start = next_abs if start is None else start
        check_int("HeraldStation", "start", start, 0, next_abs)
        if link in self._next:
            raise ValueError(f"HeraldStation.link: {link!r} already added")
        self._next[link] = next_abs
        self._start[link] = start
        self._parts[link] = []
        self._single[link] = ([], [])

    def next_seq(self, link: str) -> int:
        return self._next[link] % SEQ_MOD

    def next_abs(self, link: str) -> int:
        """The absolute number the next success on ``link`` gets."""
        return self._next[link]

    def _check_link(self, link: str) -> None:
        if link not in self._next:
            raise ValueError(f"HeraldStation.link: unknown link {link!r}")

    def _advance(self, link: str, n: int) -> int:
        first = self._next[link]
        if first + n > MAX_ABS:
            raise OverflowError(f"HeraldStation: link {link!r} ran out of numbers")
        self._next[link] = first + n
        return first

    def success(self, link: str, bell_state: str, time_ps: int) -> int:
        """Record one heralded success on ``link`` (Bell state name, detection time in ps);
        returns its sequence number."""
        self._check_link(link)
        check_choice("HeraldStation", "bell_state", bell_state, BELL_STATES)
        check_int("HeraldStation", "time_ps", time_ps, 0, INT64_MAX)
        seq = self._advance(link, 1)
        codes, times = self._single[link]
        codes.append(BELL_CODES[bell_state])
        times.append(time_ps)
        return seq % SEQ_MOD

    def successes(self, link: str, bell_codes: Any, times_ps: Any) -> int:
        """Record ``len(bell_codes)`` successes on ``link`` at once: Bell-state codes (indexes
        into ``BELL_STATES``) and detection times (int64 ps, ≥ 0). The arrays are copied.
        Returns the sequence number of the first (the unchanged counter when empty)."""
        self._check_link(link)
        c = "HeraldStation"
        codes = int_array(c, "bell_codes", bell_codes, 0, len(BELL_STATES) - 1, np.uint8)
        times = int_array(c, "times_ps", times_ps, 0, INT64_MAX, np.int64)
        if len(times) != len(codes):
            raise ValueError(f"{c}.times_ps: expected {len(codes)} times (one per Bell code), "
                             f"got {len(times)}")
        first = self._next[link]
        if len(codes):
            self._flush_single(link)
            self._advance(link, len(codes))
            self._parts[link].append((codes, times))
        return first % SEQ_MOD

    def _flush_single(self, link: str) -> None:
        codes, times = self._single[link]
        if codes:
            self._parts[link].append((np.array(codes, np.uint8), np.array(times, np.int64)))
            codes.clear()
            times.clear()

    def _herald(self, link: str, chunk: int, first: int, codes: np.ndarray,
                times: np.ndarray) -> Herald:
        nxt = first + len(codes)
        if self.epoch is None:
            return Herald(link, chunk, first % SEQ_MOD, codes, times, nxt % SEQ_MOD)
        return Herald(link, chunk, first % SEQ_MOD, codes, times, nxt % SEQ_MOD, self.epoch,
                      first >> SEQ_BITS, self._start[link])

    def flush(self, chunk: int) -> list[Herald]:
        """One Herald per link for ``chunk`` (in link order), and start new batches. A batch
        above ``MAX_HERALD_COUNT`` successes goes out as several Heralds of the same chunk."""
        out: list[Herald] = []
        for link, nxt in self._next.items():
            self._flush_single(link)
            parts = self._parts[link]
            if not parts:
                out.append(self._herald(link, chunk, nxt, np.zeros(0, np.uint8),
                                        np.zeros(0, np.int64)))
                continue
            codes = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
            times = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
            parts.clear()
            first = nxt - len(codes)
            for k in range(0, len(codes), MAX_HERALD_COUNT):
                out.append(self._herald(link, chunk, first + k, codes[k:k + MAX_HERALD_COUNT],
                                        times[k:k + MAX_HERALD_COUNT]))
        return out

    def snapshot(self) -> dict[str, Any]:
        """Per-link counters and the epoch (an unflushed batch is not persisted: its pairs are
        lost, and the ends see the gap at the next batch)."""
        return {"next_seq": {k: v % SEQ_MOD for k, v in self._next.items()},
                "next_abs": dict(self._next), "start": dict(self._start), "epoch": self.epoch}

    @classmethod
    def restore(cls, snap: Mapping[str, Any]) -> HeraldStation:
        """The station of a :meth:`snapshot`. One of the previous version (32-bit counters, no
        epoch) gives a station without an epoch: give it one (``station.epoch =
        new_epoch()``) to start an epoch where its counters are."""
        nxt = snap.get("next_seq") if isinstance(snap, Mapping) else None
        if not isinstance(nxt, Mapping):
            raise bad("snapshot", "next_seq", "a mapping link -> seq", nxt)
        absolute = snap.get("next_abs", {})
        starts = snap.get("start", {})
        if not isinstance(absolute, Mapping) or not isinstance(starts, Mapping):
            raise bad("snapshot", "next_abs", "mappings link -> absolute number",
                       (absolute, starts))
        epoch = snap.get("epoch")
        st = cls(epoch=epoch)
        for link, seq in nxt.items():
            a = absolute.get(link)
            if a is not None and (not isinstance(a, int) or a % SEQ_MOD != seq):
                raise bad("snapshot", f"next_abs[{link!r}]", f"≡ next_seq {seq}", a)
            st.add_link(link, seq, next_abs=a, start=starts.get(link))
        return st
