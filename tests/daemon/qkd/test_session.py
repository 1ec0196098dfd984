"""Sifting and block cutting of a key session (qnode.daemon.qkd.session), both ends in process:
only bases cross, the two sifted sequences agree, blocks go through the block protocol to
identical keys, and hostile or out-of-order messages change nothing."""
from __future__ import annotations

import numpy as np
import pytest

from qnode.daemon.qkd.block import BlockFollower, BlockLeader, BlockMessageError, KeyParams
from qnode.daemon.qkd.session import LOST, KeyFollower, KeyLeader, key_bit_flips

from support.keys import exchange, wire


class Link:
    """Two ends of a simulated link: the follower's tags (bases, outcomes) by absolute index,
    and coincidences with the leader's at random indices; outcomes agree but for ``qber``, and
    the follower's are stored as the source gives them (ψ⁻: anti-correlated)."""

    def __init__(self, seed: int, qber: float, source: str = "psi-", held_from: int = 0):
        self.rng = np.random.default_rng(seed)
        self.qber, self.source, self.held_from = qber, source, held_from
        self.f_bases = self.rng.integers(0, 2, 10**7, dtype=np.uint8)
        self.f_bits = self.rng.integers(0, 2, 10**7, dtype=np.uint8)
        self.next_index = 0

    def lookup(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bases = self.f_bases[index].copy()
        bases[index < self.held_from] = LOST
        return bases, self.f_bits[index]

    def coincidences(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(follower indices, leader bases, leader bits) of ``n`` coincidences."""
        gaps = self.rng.integers(1, 4, n)
        index = self.next_index + np.cumsum(gaps)
        self.next_index = int(index[-1])
        bases = self.rng.integers(0, 2, n, dtype=np.uint8)
        flip_z, flip_x = key_bit_flips(self.source)
        ideal = self.f_bits[index] ^ np.where(bases == 0, flip_z, flip_x).astype(np.uint8)
        errors = (self.rng.random(n) < self.qber).astype(np.uint8)
        return index, bases, ideal ^ errors


def _sift(leader: KeyLeader, follower: KeyFollower, link: Link, batches: int, size: int):
    for _ in range(batches):
        index, bases, bits = link.coincidences(size)
        leader.on_sifted(wire(follower.on_sift(wire(leader.sift(index, bases, bits)))))


def test_bit_flips_of_the_bell_states():
    assert key_bit_flips("phi+") == (False, False)
    assert key_bit_flips("psi-") == (True, True)
    assert key_bit_flips("phi-") == (False, True)
    assert key_bit_flips("psi+") == (True, False)
    with pytest.raises(ValueError):
        key_bit_flips("bell")


def test_sifting_keeps_equal_bases_in_the_same_order_at_both_ends():
    link = Link(1, 0.0)
    leader = KeyLeader(4096)
    follower = KeyFollower(link.lookup, key_bit_flips(link.source), max_pending_bits=10**6)
    _sift(leader, follower, link, 20, 1000)
    # about half of the coincidences are in equal bases
    assert leader.sifted_total == follower.sifted_total
    assert 0.45 < leader.sifted_total / 20_000 < 0.55
    while (cut := leader.next_block()) is not None:
        start, a = cut
        b = follower.block({"session": str(leader.session), "start": start, "n": a.n,
                            "block": str(a.block_id)})
        assert np.array_equal(a.bases, b.bases) and np.array_equal(a.bits, b.bits)
    assert leader.blocks == 20_000 // 2 // 4096


def test_a_million_sifted_bits_through_sifting_and_blocks_give_identical_keys():
    """The session and the block protocol together: ≥ 10⁶ sifted bits at 3 % QBER (ψ⁻ source,
    so the follower flips every bit), every block's key identical at both ends."""
    link = Link(2, 0.03)
    params = KeyParams()
    leader = KeyLeader(1 << 18)
    follower = KeyFollower(link.lookup, key_bit_flips(link.source), max_pending_bits=1 << 20)
    keys, reasons = 0, []
    while leader.sifted_total < 10**6 + (1 << 18):
        _sift(leader, follower, link, 4, 100_000)
        while (cut := leader.next_block()) is not None:
            start, lead_block = cut
            lead = BlockLeader(lead_block, params, 0.03)
            offer, early = lead.offer()
            assert offer is not None, early
            offer = {**offer, "session": str(leader.session), "start": start}
            follow = BlockFollower(follower.block(wire(offer)), params)
            a, b, _ = exchange(lead, follow, offer)
            reasons.append(a.reason)
            if a.reason is None:
                assert np.array_equal(a.key, b.key) and a.key_units(256) == b.key_units(256)
                keys += a.length
    assert leader.sifted_total >= 10**6
    assert reasons.count(None) >= len(reasons) - 1, reasons
    assert keys > 0


def test_lost_tags_are_dropped_at_both_ends():
    link = Link(3, 0.0, held_from=10**9)           # the follower holds none of them
    leader = KeyLeader(1000)
    follower = KeyFollower(link.lookup, key_bit_flips(link.source), max_pending_bits=10**6)
    _sift(leader, follower, link, 2, 500)
    assert leader.sifted_total == follower.sifted_total == 0
    assert leader.lost_total == 1000


def test_a_new_session_resets_the_follower():
    link = Link(4, 0.0)
    leader = KeyLeader(1000)
    follower = KeyFollower(link.lookup, key_bit_flips(link.source), max_pending_bits=10**6)
    _sift(leader, follower, link, 3, 500)
    assert follower.sifted.size > 0
    leader.restart()
    _sift(leader, follower, link, 1, 500)
    assert follower.sessions == 2 and follower.sifted.start == 0
    assert follower.sifted.size == leader.sifted.size


@pytest.mark.parametrize("tamper", [
    lambda b: {**b, "seq": 5},
    lambda b: {**b, "session": "not-a-uuid"},
    lambda b: {**b, "n": 10**9},
    lambda b: {**b, "gaps": "!!"},
    lambda b: {**b, "bases": b["gaps"]},
    lambda b: {**b, "first": -1},
])
def test_a_bad_sift_changes_nothing(tamper):
    link = Link(5, 0.0)
    leader = KeyLeader(1000)
    follower = KeyFollower(link.lookup, key_bit_flips(link.source), max_pending_bits=10**6)
    _sift(leader, follower, link, 1, 300)
    before = (follower.session, follower.next_seq, follower.sifted.size)
    index, bases, bits = link.coincidences(300)
    with pytest.raises(BlockMessageError):
        follower.on_sift(wire(tamper(leader.sift(index, bases, bits))))
    assert (follower.session, follower.next_seq, follower.sifted.size) == before


def test_a_bad_sifted_or_block_request_changes_nothing():
    link = Link(6, 0.0)
    leader = KeyLeader(1000)
    follower = KeyFollower(link.lookup, key_bit_flips(link.source), max_pending_bits=10**6)
    index, bases, bits = link.coincidences(400)
    answer = follower.on_sift(wire(leader.sift(index, bases, bits)))
    for bad in ({**answer, "seq": 7}, {**answer, "session": "x"},
                {**answer, "bases": "@@"}):
        with pytest.raises(BlockMessageError):
            leader.on_sifted(wire(bad))
    assert leader.sifted.size == 0 and leader.waiting == 1
    leader.on_sifted(wire(answer))
    held = follower.sifted.size
    for offer in ({"session": "x", "start": 0, "n": 10, "block": "y"},
                  {"session": follower.session, "start": 3, "n": 10, "block": "y"},
                  {"session": follower.session, "start": 0, "n": 10, "block": "00000000-0000-"
                   "0000-0000-000000000000"}):
        with pytest.raises(BlockMessageError):
            follower.block(offer)
    assert follower.sifted.size == held


def test_the_sifted_sequence_is_bounded_and_counts_drops():
    link = Link(7, 0.0)
    leader = KeyLeader(1000, max_pending_bits=2000)
    follower = KeyFollower(link.lookup, key_bit_flips(link.source), max_pending_bits=2000)
    _sift(leader, follower, link, 10, 1000)
    assert leader.sifted.size <= 2000 and follower.sifted.size <= 2000
    assert leader.sifted.dropped_bits == follower.sifted.dropped_bits > 0
