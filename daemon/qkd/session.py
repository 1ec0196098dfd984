"""Sifting and blocks of one M link's key session: what each end keeps, and the messages that
carry only bases (pure; the analyzer role moves the messages and runs the CPU work on a thread).

**Sifting.** The counting end (the **leader**) finds the coincidences between its own tags and
the peer's detection times (the peer sends times only, :mod:`qnode.daemon.bus.timewire`). For
each batch of coincidences it sends ``SIFT``: the peer's tags by their absolute index in the
peer's stream, and its own basis for each. The **follower** answers ``SIFTED`` with its own basis
for each (or :data:`LOST` for a tag it no longer holds). Both ends keep the events measured in
the same basis, in batch order: the sifted key, each end its own outcome as a bit, mapped so that
the ideal source gives equal bits (:func:`key_bit_flips`). Outcomes never leave a node.

**Blocks.** When the leader holds ``block_bits`` sifted bits it cuts a block (its ``start`` in the
session's sifted sequence and its length) and offers it (:mod:`.block`); the follower cuts the
same bits from its own sequence. A session has a random id; the follower drops what it holds
when a new session starts (a restarted leader), and each end keeps at most ``max_pending_bits``
sifted bits (beyond that the oldest are dropped and counted). The leader's drops decide: a block
names its start, and the follower drops what lies before it; the follower should hold more than
the leader (it appends before the leader does), or a block may start before what it still has
and the session restarts.
"""
from __future__ import annotations

import base64
import binascii
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qnode.daemon.qkd.block import BlockMessageError, SiftedBlock, StaleMessage, X, Z, body_int

#: the follower's basis code for a tag it no longer holds (the event is dropped at both ends)
LOST = 2
#: at most this many events in one SIFT message
MAX_SIFT_EVENTS = 1 << 20
#: Bell-state correlation signs (⟨XX⟩, ⟨YY⟩, ⟨ZZ⟩) of the four Bell states
_SIGNS = {"phi+": (1, -1, 1), "phi-": (-1, 1, 1), "psi+": (1, 1, -1), "psi-": (-1, -1, -1)}


def key_bit_flips(source_state: str) -> tuple[bool, bool]:
    """(flip Z bits, flip X bits) at the follower so that the ideal ``source_state`` gives equal
    bits at both ends: a basis whose Bell correlation is −1 (e.g. Z and X for ψ⁻)."""
    try:
        sx, _, sz = _SIGNS[source_state]
    except KeyError:
        raise ValueError(f"source_state: one of {sorted(_SIGNS)}, got {source_state!r}") from None
    return sz < 0, sx < 0


def _pack(arr: np.ndarray) -> str:
    return base64.b85encode(zlib.compress(np.ascontiguousarray(arr).tobytes(), 1)).decode()


def _unpack(body: Mapping[str, Any], name: str, dtype: str, n: int) -> np.ndarray:
    text = body.get(name)
    size = n * np.dtype(dtype).itemsize
    if not isinstance(text, str) or len(text) > 2 * size + 64:
        raise BlockMessageError(f"{name}: expected base85 text")
    try:
        d = zlib.decompressobj()
        raw = d.decompress(base64.b85decode(text), size + 1)
    except (ValueError, zlib.error, binascii.Error) as exc:
        raise BlockMessageError(f"{name}: {exc}") from None
    if len(raw) != size or d.unconsumed_tail:
        raise BlockMessageError(f"{name}: expected {n} values")
    return np.frombuffer(raw, dtype).copy()


@dataclass
class SiftedSequence:
    """One end's sifted bits of a session, from sifted index ``start`` on (bounded)."""

    max_bits: int
    start: int = 0
    bases: list[np.ndarray] = field(default_factory=list)
    bits: list[np.ndarray] = field(default_factory=list)
    size: int = 0
    dropped_bits: int = 0

    def append(self, bases: np.ndarray, bits: np.ndarray) -> None:
        self.bases.append(bases.astype(np.uint8))
        self.bits.append(bits.astype(np.uint8))
        self.size += int(bits.size)
        while self.size > self.max_bits and self.bits:
            gone = self.bits.pop(0).size
            self.bases.pop(0)
            self.size -= gone
            self.start += gone
            self.dropped_bits += gone

    @property
    def end(self) -> int:
        """The sifted index after the newest bit."""
        return self.start + self.size

    def take(self, start: int, n: int, block_id: uuid.UUID) -> SiftedBlock:
        """Bits [start, start + n) as a block; they and everything before leave the sequence."""
        if start != self.start or n > self.size:
            raise BlockMessageError(f"block [{start}, {start + n}) is not the next {n} of the "
                                    f"sifted bits held [{self.start}, {self.end})")
        bases, bits = np.concatenate(self.bases), np.concatenate(self.bits)
        self.bases, self.bits = [bases[n:]], [bits[n:]]
        self.start += n
        self.size -= n
        return SiftedBlock(block_id, bases[:n], bits[:n])

    def skip_to(self, start: int) -> None:
        """Drop (and count) the bits before sifted index ``start`` (the leader dropped them:
        its pending bits overflowed)."""
        if not self.start <= start <= self.end:
            raise BlockMessageError(f"block start {start} is outside the sifted bits held "
                                    f"[{self.start}, {self.end})")
        gone = start - self.start
        if gone:
            bases, bits = np.concatenate(self.bases), np.concatenate(self.bits)
            self.bases, self.bits = [bases[gone:]], [bits[gone:]]
            self.start, self.size = start, self.size - gone
            self.dropped_bits += gone

    def clear(self, start: int = 0) -> None:
        self.start, self.size, self.bases, self.bits = start, 0, [], []


class KeyLeader:
    """The counting end's sifting and block cutting (module docstring). ``block_bits``: sifted
    bits per block."""

    def __init__(self, block_bits: int, *, max_pending_bits: int | None = None):
        if block_bits < 2:
            raise ValueError(f"block_bits must be >= 2, got {block_bits}")
        self.block_bits = block_bits
        self.session = uuid.uuid4()
        self.seq = 0
        self.sifted = SiftedSequence(max_pending_bits or 4 * block_bits)
        self._pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.blocks = 0
        self.coincidences_total = 0
        self.sifted_total = 0
        self.lost_total = 0

    def restart(self) -> None:
        """A new session: everything pending or sifted is dropped (the follower follows)."""
        self.session, self.seq, self.blocks = uuid.uuid4(), 0, 0
        self._pending.clear()
        self.sifted.clear()

    def sift(self, peer_index: np.ndarray, bases: np.ndarray, bits: np.ndarray
             ) -> dict[str, Any]:
        """The ``SIFT`` body for coincidences with the peer's tags ``peer_index`` (absolute,
        increasing), this end's ``bases`` and ``bits`` (key bits, kept here until ``SIFTED``)."""
        n = int(peer_index.size)
        if n > MAX_SIFT_EVENTS or bases.size != n or bits.size != n:
            raise ValueError(f"sift: {n} events, {bases.size} bases, {bits.size} bits")
        first = int(peer_index[0]) if n else 0
        deltas = np.diff(peer_index.astype(np.int64)).astype("<u4") if n else np.empty(0, "<u4")
        self._pending[self.seq] = (bases.astype(np.uint8), bits.astype(np.uint8))
        self.coincidences_total += n
        body = {"session": str(self.session), "seq": self.seq, "n": n, "first": first,
                "gaps": _pack(deltas), "bases": _pack(bases.astype(np.uint8))}
        self.seq += 1
        return body

    def on_sifted(self, body: Mapping[str, Any]) -> None:
        """The follower's answer: the events measured in the same basis join the sifted key."""
        if body.get("session") != str(self.session):
            raise StaleMessage("session: not this session's")
        seq = body_int(body, "seq", 0, 1 << 62)
        mine = self._pending.get(seq)
        if mine is None:
            raise BlockMessageError(f"seq: no SIFT {seq} waiting")
        if seq != min(self._pending):
            raise BlockMessageError(f"seq: SIFTED {seq} before an older one")
        bases, bits = mine
        peer = _unpack(body, "bases", "u1", bases.size)
        if peer.size and peer.max() > LOST:
            raise BlockMessageError("bases: expected 0, 1 or 2 (lost)")
        del self._pending[seq]
        keep = peer == bases
        self.lost_total += int(np.count_nonzero(peer == LOST))
        self.sifted_total += int(np.count_nonzero(keep))
        self.sifted.append(bases[keep], bits[keep])

    def next_block(self) -> tuple[int, SiftedBlock] | None:
        """(start, block) when ``block_bits`` sifted bits are held, else None."""
        if self.sifted.size < self.block_bits:
            return None
        start = self.sifted.start
        block_id = uuid.uuid5(self.session, str(start))
        self.blocks += 1
        return start, self.sifted.take(start, self.block_bits, block_id)

    @property
    def waiting(self) -> int:
        """SIFT messages not answered yet."""
        return len(self._pending)


class KeyFollower:
    """The streaming end's sifting (module docstring): ``lookup(indices)`` gives this end's
    (bases, bits) of its own tags by absolute index, :data:`LOST` for one it no longer holds;
    ``flips`` (Z, X) from :func:`key_bit_flips`."""

    def __init__(self, lookup: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                 flips: tuple[bool, bool], *, max_pending_bits: int):
        self.lookup, self.flips = lookup, flips
        self.session: str | None = None
        self.next_seq = 0
        self.sifted = SiftedSequence(max_pending_bits)
        self.sessions = 0
        self.sifted_total = 0

    def on_sift(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The ``SIFTED`` body for a ``SIFT``; keeps the matching events."""
        session = body.get("session")
        try:
            uuid.UUID(str(session))
        except ValueError:
            raise BlockMessageError("session: expected a UUID") from None
        seq = body_int(body, "seq", 0, 1 << 62)
        if session != self.session:
            if seq != 0:
                raise BlockMessageError(f"seq: a new session starts at 0, got {seq}")
            self.session, self.next_seq = str(session), 0
            self.sifted.clear()
            self.sessions += 1
        if seq != self.next_seq:
            raise BlockMessageError(f"seq: expected {self.next_seq}, got {seq}")
        n = body_int(body, "n", 0, MAX_SIFT_EVENTS)
        first = body_int(body, "first", 0, 1 << 62)
        gaps = _unpack(body, "gaps", "<u4", max(n - 1, 0)).astype(np.int64)
        theirs = _unpack(body, "bases", "u1", n)
        if n and (gaps.min(initial=1) < 1 or theirs.max() > X):
            raise BlockMessageError("gaps/bases: indices must increase, bases be 0 or 1")
        index = np.empty(n, np.int64)
        if n:
            index[0] = first
            np.cumsum(gaps, out=index[1:])
            index[1:] += first
        bases, bits = self.lookup(index)
        flip = np.where(bases == Z, self.flips[0], self.flips[1]).astype(np.uint8)
        keep = bases == theirs
        self.sifted.append(bases[keep], (bits[keep] ^ flip[keep]) & 1)
        self.sifted_total += int(np.count_nonzero(keep))
        self.next_seq += 1
        return {"session": self.session, "seq": seq, "bases": _pack(bases.astype(np.uint8))}

    def block(self, offer: Mapping[str, Any]) -> SiftedBlock:
        """This end's block for a leader's offer (its ``session``, ``start`` and ``n``)."""
        if offer.get("session") != self.session:
            raise BlockMessageError("session: not this session's")
        start = body_int(offer, "start", 0, 1 << 62)
        n = body_int(offer, "n", 0, self.sifted.max_bits)
        block_id = offer.get("block")
        try:
            bid = uuid.UUID(str(block_id))
        except ValueError:
            raise BlockMessageError("block: expected a UUID") from None
        if bid != uuid.uuid5(uuid.UUID(self.session), str(start)):
            raise BlockMessageError("block: not this session's id for that start")
        if start > self.sifted.start:
            self.sifted.skip_to(start)
        return self.sifted.take(start, n, bid)
