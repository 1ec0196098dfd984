"""Link layer (daemon/linklayer/end.py): EGP sequence rule, EXPIRE/EXPIRE_ACK agreement between the
two ends of a link over a lossy, reordering, duplicating channel; CREATE handling; persistence;
message (de)serialisation."""
from __future__ import annotations

import heapq
import json
import math
import random

import pytest
from hypothesis import given, settings, strategies as st

from qnode.daemon.linklayer import (
    MAX_PAIR_AGE,
    SEQ_HALF,
    SEQ_MOD,
    Ack,
    Create,
    CreateIdAllocator,
    Err,
    ErrCode,
    Expire,
    ExpireAck,
    Herald,
    HeraldEntry,
    HeraldStation,
    LinkEnd,
    Ok,
    hold_ms,
    message_from_dict,
    seq_add,
    seq_diff,
    seq_in_range,
    seq_lt,
    split_actions,
)

LINK = "ab"
CD = 0.01  # comm_delay, s


def pair_ends(initial_seq: int = 0, **kw) -> tuple[LinkEnd, LinkEnd]:
    return (LinkEnd("alice", "bob", LINK, comm_delay=CD, initial_seq=initial_seq, **kw),
            LinkEnd("bob", "alice", LINK, comm_delay=CD, initial_seq=initial_seq, **kw))


def wire(msg):
    """Through JSON and back, as the MQTT layer will."""
    return message_from_dict(json.loads(json.dumps(msg.to_dict())))


def of(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def chunks(station: HeraldStation, counts: list[int]) -> list[Herald]:
    """One herald per chunk for LINK, with counts[k] successes in chunk k."""
    out = []
    t = 0
    for k, n in enumerate(counts):
        for _ in range(n):
            t += 1000
            station.success(LINK, "psi+" if t % 3 else "psi-", t)
        (h,) = station.flush(k)
        out.append(h)
    return out


# --------------------------------------------------------------------------- serial numbers


TOP = SEQ_MOD - 1  # the largest sequence number


def test_serial_arithmetic_wraps():
    assert SEQ_MOD == 2 ** 32 and SEQ_HALF == 2 ** 31 and MAX_PAIR_AGE == 2 ** 30
    assert seq_add(TOP, 1) == 0 and seq_add(TOP - 5, 10) == 4
    assert seq_diff(2, TOP - 1) == 4
    assert seq_lt(TOP, 0) and not seq_lt(0, TOP)
    assert seq_lt(0, SEQ_HALF - 1) and not seq_lt(SEQ_HALF - 1, 0)
    assert not seq_lt(0, SEQ_HALF) and not seq_lt(SEQ_HALF, 0)  # undefined: neither
    assert not seq_lt(7, 7)
    assert seq_in_range(TOP, TOP - 1, 2) and seq_in_range(1, TOP - 1, 2)
    assert not seq_in_range(2, TOP - 1, 2) and not seq_in_range(TOP - 2, TOP - 1, 2)


# --------------------------------------------------------------------------- EGP rule


def test_in_order_heralds_are_accepted_by_both_ends():
    st_ = HeraldStation([LINK])
    alice, bob = pair_ends()
    for h in chunks(st_, [2, 0, 3]):
        assert alice.on_herald(wire(h), 0.0) == []
        assert bob.on_herald(wire(h), 0.0) == []
    assert alice.inventory() == bob.inventory() == [(LINK, s) for s in range(5)]
    assert alice.expected_seq == bob.expected_seq == 5
    rec = alice.pair(3)
    assert rec is not None and rec.status == "live" and rec.time_ps == 4000


def test_lost_herald_expires_gap_retransmits_until_acked():
    st_ = HeraldStation([LINK])
    alice, bob = pair_ends()
    h0, h1, h2 = chunks(st_, [1, 1, 1])
    for h in (h0, h1, h2):
        bob.on_herald(h, 0.0)
    alice.on_herald(h0, 0.0)
    out = alice.on_herald(h2, 1.0)           # h1 lost on the way to alice
    up, peer = split_actions(out)
    assert up == [Err(None, ErrCode.EXPIRE, LINK, 1, 2, "alice")]
    assert peer == [Expire(LINK, 1, 2, "alice")]
    assert alice.inventory() == [(LINK, 0), (LINK, 2)]
    # The EXPIRE is lost; nothing before 2×comm_delay, then a resend, and again after twice
    # that (the interval doubles: backoff).
    assert alice.tick(1.0 + 2 * CD - 1e-6) == []
    assert alice.tick(1.0 + 2 * CD) == [Expire(LINK, 1, 2, "alice")]
    assert alice.tick(1.0 + 6 * CD - 1e-6) == []
    resent = alice.tick(1.0 + 6 * CD)
    assert resent == [Expire(LINK, 1, 2, "alice")]
    back = bob.on_expire(wire(resent[0]), 1.05)
    assert of(back, ExpireAck) == [ExpireAck(LINK, 3, 1, 2)]
    assert of(back, Err) == [Err(None, ErrCode.EXPIRE, LINK, 1, 2, "alice")]
    # A duplicate EXPIRE is harmless and acknowledged again.
    assert bob.on_expire(resent[0], 1.06) == [ExpireAck(LINK, 3, 1, 2)]
    assert alice.on_expire_ack(wire(back[-1]), 1.07) == []
    assert alice.unacked_expires() == [] and alice.tick(10.0) == []
    assert alice.inventory() == bob.inventory() == [(LINK, 0), (LINK, 2)]


def test_stale_and_duplicate_heralds_are_ignored():
    st_ = HeraldStation([LINK])
    alice, _ = pair_ends()
    h0, h1, h2 = chunks(st_, [2, 1, 1])
    alice.on_herald(h0, 0.0)
    assert alice.on_herald(h0, 0.1) == []     # duplicate
    alice.on_herald(h2, 0.2)                   # h1 overtaken: gap [2, 3) expired
    assert alice.on_herald(h1, 0.3) == []     # late: stale
    assert alice.on_herald(h2, 0.4) == []
    assert alice.inventory() == [(LINK, 0), (LINK, 1), (LINK, 3)]


def test_empty_batch_heartbeat_exposes_a_lost_tail():
    st_ = HeraldStation([LINK])
    alice, bob = pair_ends()
    h0, h1, h2 = chunks(st_, [1, 2, 0])
    for h in (h0, h1, h2):
        bob.on_herald(h, 0.0)
    alice.on_herald(h0, 0.0)
    out = alice.on_herald(h2, 0.1)             # h1 (the last successes) lost; h2 is empty
    assert of(out, Expire) == [Expire(LINK, 1, 3, "alice")]
    bob.on_expire(out[-1], 0.2)
    assert alice.inventory() == bob.inventory() == [(LINK, 0)]


def test_expire_overtaking_heralds_makes_the_peer_expire_its_own_gap():
    st_ = HeraldStation([LINK])
    alice, bob = pair_ends()
    h0, h1, h2 = chunks(st_, [1, 1, 1])
    alice.on_herald(h0, 0.0)
    (exp,) = of(alice.on_herald(h2, 0.0), Expire)      # alice lost h1
    out = bob.on_expire(exp, 0.01)                      # bob has not seen h0 yet
    assert of(out, Expire) == [Expire(LINK, 0, 1, "bob")]
    assert of(out, ExpireAck) == [ExpireAck(LINK, 2, 1, 2)]
    for h in (h0, h1, h2):                              # h0, h1 now stale at bob
        bob.on_herald(h, 0.02)
    alice.on_expire(of(out, Expire)[0], 0.03)
    alice.on_expire_ack(of(out, ExpireAck)[0], 0.03)
    assert alice.inventory() == bob.inventory() == [(LINK, 2)]


def test_expire_ack_takes_the_max_and_expires_the_skipped_range():
    alice, _ = pair_ends()
    alice.on_herald(Herald.from_entries(LINK, 0, (), 2), 0.0)   # gap [0, 2)
    out = alice.on_expire_ack(ExpireAck(LINK, 5, 0, 2), 0.1)
    assert alice.expected_seq == 5 and alice.unacked_expires() == [(2, 5)]
    assert of(out, Expire) == [Expire(LINK, 2, 5, "alice")]


def test_local_expire_is_told_to_the_peer():
    st_ = HeraldStation([LINK])
    alice, bob = pair_ends()
    for h in chunks(st_, [4]):
        alice.on_herald(h, 0.0)
        bob.on_herald(h, 0.0)
    out = alice.expire(1, 3, 0.5)                      # memory timeout at alice
    assert of(out, Expire) == [Expire(LINK, 1, 3, "alice")]
    assert of(out, Err)[0].code is ErrCode.EXPIRE
    ack = bob.on_expire(of(out, Expire)[0], 0.51)
    alice.on_expire_ack(ack[-1], 0.52)
    assert alice.inventory() == bob.inventory() == [(LINK, 0), (LINK, 3)]
    with pytest.raises(ValueError, match="expire.seq_hi"):
        alice.expire(3, 9, 0.6)                        # beyond expected_seq


def test_wrap_around_top_to_0():
    st_ = HeraldStation([LINK], initial_seq=TOP - 2)
    alice, bob = pair_ends(initial_seq=TOP - 2)
    hs = chunks(st_, [1, 1, 1, 2])                      # TOP-2 | TOP-1 | TOP | 0, 1
    assert [e.seq for h in hs for e in h.entries] == [TOP - 2, TOP - 1, TOP, 0, 1]
    for h in hs:
        alice.on_herald(h, 0.0)
    bob.on_herald(hs[0], 0.0)
    bob.on_herald(hs[1], 0.0)
    out = bob.on_herald(hs[3], 0.0)                     # lost TOP at bob
    assert of(out, Expire) == [Expire(LINK, TOP, 0, "bob")]
    assert bob.on_herald(hs[2], 0.1) == []              # stale across the wrap
    alice.on_expire(of(out, Expire)[0], 0.1)
    expect = [(LINK, TOP - 2), (LINK, TOP - 1), (LINK, 0), (LINK, 1)]   # oldest first
    assert alice.inventory() == bob.inventory() == expect
    assert alice.expected_seq == bob.expected_seq == 2


def test_old_pairs_age_out_of_the_sequence_window():
    alice, _ = pair_ends()
    alice.on_herald(Herald.from_entries(
        LINK, 0, (HeraldEntry(0, "psi+", 1), HeraldEntry(1, "psi-", 2)), 2), 0)
    jump = MAX_PAIR_AGE + 10
    out = alice.on_herald(Herald.from_entries(LINK, 1, (), jump), 1.0)
    assert Expire(LINK, 0, 2, "alice") in of(out, Expire)
    assert alice.inventory() == [] and alice.pair(0) is None


# --------------------------------------------------------------------------- random channel


class Sim:
    """Two link ends and a station; every message crosses a lossy, duplicating, reordering
    channel (random delays), through JSON. Time is injected; each end ticks every comm_delay/2."""

    def __init__(self, rng: random.Random, *, initial_seq: int, h_loss: float, h_dup: float,
                 h_jitter: float, p_loss: float, p_dup: float, p_jitter: float,
                 **end_kw) -> None:
        self.rng = rng
        self.h = (h_loss, h_dup, h_jitter)
        self.p = (p_loss, p_dup, p_jitter)
        self.station = HeraldStation([LINK], initial_seq=initial_seq)
        a, b = pair_ends(initial_seq=initial_seq, **end_kw)
        self.ends = {"alice": a, "bob": b}
        self.other = {"alice": "bob", "bob": "alice"}
        self.q: list = []
        self.n = 0
        self.lossless_after = float("inf")
        self.emitted: set[int] = set()
        # The higher layer at each end: one open-ended consecutive request; its view of pairs.
        self.cid = {}
        self.view: dict[str, set[int]] = {"alice": set(), "bob": set()}
        for name, end in self.ends.items():
            (ack,) = end.request(Create(self.other[name], 0.5, 0, 7, 65535), 0.0)
            self.cid[name] = ack.create_id

    def push(self, t: float, dest: str, msg, params) -> None:
        loss, dup, jitter = params
        if t < self.lossless_after:
            if self.rng.random() < loss:
                return
            copies = 2 if self.rng.random() < dup else 1
        else:
            copies, jitter = 1, 0.0
        for _ in range(copies):
            self.n += 1
            heapq.heappush(self.q, (t + CD + self.rng.random() * jitter, self.n, dest, msg))

    def route(self, t: float, src: str, actions) -> None:
        up, peer = split_actions(actions)
        for m in peer:
            self.push(t, self.other[src], wire(m), self.p)
        view = self.view[src]
        for m in up:
            if isinstance(m, Ok):
                assert m.create_id == self.cid[src] and m.seq not in view
                view.add(m.seq)
            elif isinstance(m, Err):
                assert m.code is ErrCode.EXPIRE
                if m.create_id is not None:
                    view.difference_update(
                        {s for s in view if seq_in_range(s, m.seq_lo, m.seq_hi)})

    def deliver(self, t: float, dest: str, msg) -> None:
        end = self.ends[dest]
        if isinstance(msg, Herald):
            acts = end.on_herald(msg, t)
        elif isinstance(msg, Expire):
            acts = end.on_expire(msg, t)
        else:
            acts = end.on_expire_ack(msg, t)
        self.route(t, dest, acts)

    def run(self, counts: list[int], chunk_period: float) -> None:
        t_station = 0.0
        for k, n in enumerate(counts):
            if n > 8:  # in bulk
                t0 = int(t_station * 1e12) + self.n
                first = self.station.successes(LINK, [self.rng.randrange(4) for _ in range(n)],
                                               list(range(t0, t0 + n)))
                self.emitted.update(seq_add(first, i) for i in range(n))
            for _ in range(n if n <= 8 else 0):
                self.emitted.add(self.station.success(LINK, self.rng.choice(
                    ("phi+", "phi-", "psi+", "psi-")), int(t_station * 1e12) + self.n))
            (h,) = self.station.flush(k)
            for dest in self.ends:
                self.push(t_station, dest, wire(h), self.h)
            t_station += chunk_period
        # Afterwards the channels become reliable and one more (empty) chunk goes out.
        self.lossless_after = t_station
        (h,) = self.station.flush(len(counts))
        for dest in self.ends:
            self.push(t_station + 1.0, dest, h, self.h)
        t, step = 0.0, CD / 2
        while self.q or any(e.unacked_expires() for e in self.ends.values()):
            t_next = self.q[0][0] if self.q else t + step
            while t + step <= t_next:
                t += step
                for name, end in self.ends.items():
                    self.route(t, name, end.tick(t))
            if self.q and self.q[0][0] <= t + step:
                tq, _, dest, msg = heapq.heappop(self.q)
                self.deliver(tq, dest, msg)
            assert t < t_station + 100.0, "did not converge"


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       counts=st.lists(st.integers(0, 6), min_size=1, max_size=25),
       initial_seq=st.sampled_from([0, SEQ_MOD - 20, SEQ_HALF - 10, 30000]),
       h_loss=st.floats(0, 0.5), h_dup=st.floats(0, 0.3), h_jitter=st.floats(0, 0.05),
       p_loss=st.floats(0, 0.6), p_dup=st.floats(0, 0.3), p_jitter=st.floats(0, 0.05))
def test_both_ends_agree_over_a_lossy_reordering_duplicating_channel(
        seed, counts, initial_seq, h_loss, h_dup, h_jitter, p_loss, p_dup, p_jitter):
    sim = Sim(random.Random(seed), initial_seq=initial_seq, h_loss=h_loss, h_dup=h_dup,
              h_jitter=h_jitter, p_loss=p_loss, p_dup=p_dup, p_jitter=p_jitter)
    sim.run(counts, chunk_period=0.02)
    alice, bob = sim.ends["alice"], sim.ends["bob"]
    assert alice.inventory() == bob.inventory()
    assert alice.expected_seq == bob.expected_seq == sim.station.next_seq(LINK)
    assert not alice.unacked_expires() and not bob.unacked_expires()
    seqs = {s for _, s in alice.inventory()}
    assert seqs <= sim.emitted
    # The higher layer's view (OKs minus ERR_EXPIRE) is the inventory, at both ends.
    assert sim.view["alice"] == sim.view["bob"] == seqs
    for end in (alice, bob):
        for s in seqs:
            rec = end.pair(s)
            assert rec is not None and rec.status == "delivered"
    # Both ends received the same Bell state for every pair they agree on.
    assert all(alice.pair(s).bell_state == bob.pair(s).bell_state for s in seqs)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       counts=st.lists(st.integers(0, 400), min_size=1, max_size=12),
       initial_seq=st.sampled_from([0, SEQ_MOD - 700]),
       max_pair_age=st.sampled_from([50, 300, 5000]),
       h_loss=st.floats(0, 0.5), h_dup=st.floats(0, 0.3), p_loss=st.floats(0, 0.6))
def test_both_ends_agree_with_large_batches_and_a_small_window(
        seed, counts, initial_seq, max_pair_age, h_loss, h_dup, p_loss):
    """The same agreement with bulk batches of hundreds of pairs, a window that expires pairs
    while batches are in flight, and a wrap-around of the sequence space."""
    sim = Sim(random.Random(seed), initial_seq=initial_seq, h_loss=h_loss, h_dup=h_dup,
              h_jitter=0.04, p_loss=p_loss, p_dup=0.1, p_jitter=0.04,
              max_pair_age=max_pair_age)
    sim.run(counts, chunk_period=0.02)
    alice, bob = sim.ends["alice"], sim.ends["bob"]
    assert alice.inventory() == bob.inventory()
    assert alice.expected_seq == bob.expected_seq == sim.station.next_seq(LINK)
    assert not alice.unacked_expires() and not bob.unacked_expires()
    seqs = {s for _, s in alice.inventory()}
    assert seqs <= sim.emitted and len(seqs) <= max_pair_age
    assert sim.view["alice"] == sim.view["bob"] == seqs
    assert all(alice.pair(s) == bob.pair(s) for s in seqs)
    assert alice.stats()["pairs_held"] == bob.stats()["pairs_held"] == len(seqs)


def test_reliable_channel_keeps_every_pair():
    sim = Sim(random.Random(1), initial_seq=SEQ_MOD - 6, h_loss=0, h_dup=0.2, h_jitter=0.0,
              p_loss=0, p_dup=0, p_jitter=0)
    sim.run([3, 0, 5, 4], chunk_period=0.02)
    assert {s for _, s in sim.ends["alice"].inventory()} == sim.emitted
    assert sim.ends["alice"].inventory() == sim.ends["bob"].inventory()


# --------------------------------------------------------------------------- persistence


def _run_some() -> tuple[LinkEnd, LinkEnd, HeraldStation]:
    st_ = HeraldStation([LINK])
    alice, bob = pair_ends()
    h0, h1, h2 = chunks(st_, [2, 2, 2])
    for h in (h0, h1, h2):
        bob.on_herald(h, 0.0)
    alice.on_herald(h0, 0.0)
    (exp,) = of(alice.on_herald(h2, 0.0), Expire)
    bob.on_expire(exp, 0.0)                       # acknowledged, but the ack is not delivered
    return alice, bob, st_


def test_restart_resume_keeps_inventory_and_resends_unacked_expires():
    alice, bob, st_ = _run_some()
    snap = json.loads(json.dumps(alice.snapshot()))
    alice2, out = LinkEnd.restore(snap, now=500.0, restart_policy="resume")
    assert out == [Expire(LINK, 2, 4, "alice")]
    assert alice2.inventory() == alice.inventory() == bob.inventory()
    assert alice2.expected_seq == alice.expected_seq
    alice2.on_expire_ack(bob.on_expire(out[0], 500.0)[-1], 500.01)
    # Carries on: new heralds land at both ends.
    (h,) = chunks(st_, [2])
    alice2.on_herald(h, 501.0)
    bob.on_herald(h, 501.0)
    assert alice2.inventory() == bob.inventory()
    assert [s for _, s in bob.inventory()] == [0, 1, 4, 5, 6, 7]


def test_restart_expire_all_empties_both_ends():
    alice, bob, _ = _run_some()
    alice2, out = LinkEnd.restore(alice.snapshot(), now=7.0, restart_policy="expire_all")
    up, peer = split_actions(out)
    assert alice2.inventory() == []
    assert Expire(LINK, 0, 6, "alice") in peer
    assert all(isinstance(e, Err) and e.code is ErrCode.EXPIRE for e in up)
    for m in peer:
        alice2.on_expire_ack(bob.on_expire(wire(m), 7.01)[-1], 7.02)
    assert alice2.inventory() == bob.inventory() == []
    assert alice2.unacked_expires() == []


def test_restore_keeps_remaining_request_time_and_rejects_bad_snapshots():
    alice, _ = pair_ends()
    alice.request(Create("bob", 0.5, 1000.0, 1, 3), 10.0)
    alice.tick(10.4)
    snap = alice.snapshot()
    alice2, _ = LinkEnd.restore(snap, now=0.0)    # a new monotonic clock
    assert alice2.tick(0.59) == []
    assert of(alice2.tick(0.6), Err) == [Err(0, ErrCode.TIMEOUT)]
    with pytest.raises(ValueError, match="snapshot.expected_seq"):
        LinkEnd.restore({k: v for k, v in snap.items() if k != "expected_seq"}, now=0.0)
    with pytest.raises(ValueError, match="restart_policy"):
        LinkEnd.restore(snap, now=0.0, restart_policy="forget")  # type: ignore[arg-type]


def test_station_snapshot_restores_counters():
    st_ = HeraldStation(["ab", "bc"])
    st_.success("ab", "psi+", 1)
    st_.success("bc", "psi-", 2)
    st_.success("bc", "psi-", 3)
    hs = st_.flush(0)
    assert [(h.link, h.count, len(h.entries), h.next_seq) for h in hs] == [
        ("ab", 1, 1, 1), ("bc", 2, 2, 2)]
    st2 = HeraldStation.restore(json.loads(json.dumps(st_.snapshot())))
    assert st2.success("bc", "psi+", 4) == 2
    assert [h.next_seq for h in st2.flush(1)] == [1, 3]


# --------------------------------------------------------------------------- CREATE


def test_create_ack_unique_ids_and_errors():
    alice = LinkEnd("alice", "bob", LINK, max_fidelity=0.9, purposes={1, 2})
    ids = [alice.request(Create("bob", 0.8, 0, 1, 1), 0.0)[0] for _ in range(3)]
    assert all(isinstance(a, Ack) for a in ids)
    assert len({a.create_id for a in ids}) == 3
    (e,) = alice.request(Create("bob", 0.95, 0, 1, 1), 0.0)
    assert isinstance(e, Err) and e.code is ErrCode.UNSUPP and e.code == 1
    (e,) = alice.request(Create("carol", 0.5, 0, 1, 1), 0.0)
    assert e.code is ErrCode.UNSUPP
    (e,) = alice.request(Create("bob", 0.5, 0, 9, 1), 0.0)
    assert e.code is ErrCode.REJECTED and e.code == 3
    (e,) = alice.request(Create("bob", 0.5, 0, 1, 1, tpe="M"), 0.0)
    assert e.code is ErrCode.UNSUPP                    # no measure function at this end


def test_shared_allocator_keeps_create_ids_unique_per_node():
    ids = CreateIdAllocator(65535)
    a = LinkEnd("alice", "bob", "ab", create_ids=ids)
    c = LinkEnd("alice", "carol", "ac", create_ids=ids)
    got = [a.request(Create("bob", 0.5, 0, 1, 1), 0)[0].create_id,
           c.request(Create("carol", 0.5, 0, 1, 1), 0)[0].create_id,
           a.request(Create("bob", 0.5, 0, 1, 1), 0)[0].create_id]
    assert got == [65535, 0, 1]


def test_create_timeout():
    alice, _ = pair_ends()
    (ack,) = alice.request(Create("bob", 0.5, 250.0, 1, 2), 1.0)
    assert alice.tick(1.249) == []
    assert alice.tick(1.25) == [Err(ack.create_id, ErrCode.TIMEOUT)]
    assert alice.pending_creates() == []


def test_oks_fifo_priority_fidelity_and_non_consecutive():
    alice, _ = pair_ends(goodness=0.8)
    (a1,) = alice.request(Create("bob", 0.5, 0, 1, 1), 0.0)
    (a2,) = alice.request(Create("bob", 0.9, 0, 1, 1), 0.0)            # unreachable goodness
    (a3,) = alice.request(Create("bob", 0.5, 0, 1, 2, consecutive=False), 0.0)
    (a4,) = alice.request(Create("bob", 0.5, 0, 1, 1, priority=0), 0.0)
    assert alice.pending_creates() == [a1.create_id, a2.create_id, a3.create_id, a4.create_id]
    entries = tuple(HeraldEntry(s, "psi-", 100 * s) for s in range(3))
    oks = of(alice.on_herald(Herald.from_entries(LINK, 0, entries, 3), 0.1), Ok)
    # Pair 0 → a1; pairs 1, 2 reserved for a3 and then OK'd together; a4 waits (FIFO).
    assert [(o.create_id, o.seq) for o in oks] == [(a1.create_id, 0), (a3.create_id, 1),
                                                   (a3.create_id, 2)]
    assert oks[0] == Ok(a1.create_id, LINK, 0, "psi-", 0.8, 1, "bob", "K", 0)
    assert alice.pending_creates() == [a2.create_id, a4.create_id]
    # A pair already in memory is served at request time.
    (b,) = alice.request(Create("bob", 0.5, 0, 1, 1, priority=0), 0.2)
    oks = of(alice.on_herald(Herald.from_entries(LINK, 1, (HeraldEntry(3, "psi+", 5),), 4),
                             0.3), Ok)
    assert [o.create_id for o in oks] == [a4.create_id]


def test_only_deliverable_pairs_are_given_and_serve_hands_them_out_later():
    """With qubits, a CREATE gets only pairs both ends hold (``deliverable``); a pair that
    becomes deliverable later is handed out by ``serve()``."""
    alice, _ = pair_ends(goodness=0.8)
    held: set[int] = {1}
    alice.deliverable = held.__contains__
    entries = tuple(HeraldEntry(s, "psi-", 100 * s) for s in range(3))
    alice.on_herald(Herald.from_entries(LINK, 0, entries, 3), 0.1)
    ack, ok = alice.request(Create("bob", 0.5, 0, 1, 1), 0.2)
    assert ok.seq == 1                                   # not 0: no qubit holds it
    (ack,) = alice.request(Create("bob", 0.5, 0, 1, 1), 0.3)
    assert alice.serve() == []
    held.add(2)
    assert [(o.create_id, o.seq) for o in alice.serve()] == [(ack.create_id, 2)]


def test_non_consecutive_reservation_released_when_a_reserved_pair_expires():
    alice, _ = pair_ends()
    (a,) = alice.request(Create("bob", 0.5, 0, 1, 2, consecutive=False), 0.0)
    alice.on_herald(Herald.from_entries(LINK, 0, (HeraldEntry(0, "psi+", 1),), 1), 0.0)
    alice.expire(0, 1, 0.1)
    out = alice.on_herald(Herald.from_entries(LINK, 1, (HeraldEntry(1, "psi+", 2),), 2), 0.2)
    assert of(out, Ok) == []
    out = alice.on_herald(Herald.from_entries(LINK, 2, (HeraldEntry(2, "psi+", 3),), 3), 0.3)
    assert [o.seq for o in of(out, Ok)] == [1, 2]


def test_measure_directly_ok_and_expire_of_delivered_pairs():
    alice = LinkEnd("alice", "bob", LINK, measure=lambda seq, cr: (seq % 2, "X"))
    (a,) = alice.request(Create("bob", 0.5, 0, 4, 2, tpe="M", random_basis="xz"), 0.0)
    entries = (HeraldEntry(0, "psi+", 1), HeraldEntry(1, "psi+", 2))
    oks = of(alice.on_herald(Herald.from_entries(LINK, 0, entries, 2), 0.0), Ok)
    assert [(o.tpe, o.outcome, o.basis, o.goodness_time_ps) for o in oks] == [
        ("M", 0, "X", None), ("M", 1, "X", None)]
    errs = of(alice.on_expire(Expire(LINK, 0, 2, "bob"), 0.1), Err)
    assert errs == [Err(a.create_id, ErrCode.EXPIRE, LINK, 0, 2, "bob")]


# --------------------------------------------------------------------------- serialisation


ROUND_TRIP = [
    Create("bob", 0.75, 12.5, 3, 10, "M", 2, False, True, "chsh"),
    Ack(17),
    Ok(3, LINK, TOP, "phi-", 0.91, 4, "bob", "K", 123_456_789_012_345),
    Ok(3, LINK, 7, "psi+", 0.9, 4, "bob", "M", None, 1, "ZR+"),
    Err(5, ErrCode.TIMEOUT),
    Err(None, ErrCode.EXPIRE, LINK, TOP - 5, 3, "alice"),
    Err(9, ErrCode.EXPIRE, LINK, 1, 2, "bob"),
    Expire(LINK, TOP, 1, "alice"),
    ExpireAck(LINK, 42, 40, 41),
    Herald.from_entries(LINK, 3, (HeraldEntry(TOP, "psi+", 10), HeraldEntry(0, "psi-", 11)), 1),
    Herald.from_entries(LINK, 4, (), 1),
    Ok(3, LINK, 8, "phi+", 0.95, 4, "bob", "K", 5, qubit=2, hold_ms=250),
]


@pytest.mark.parametrize("msg", ROUND_TRIP, ids=lambda m: type(m).__name__)
def test_to_dict_from_dict_round_trip(msg):
    d = json.loads(json.dumps(msg.to_dict()))
    assert type(msg).from_dict(d) == msg
    assert message_from_dict(d) == msg


def test_hold_ms_rounds_down_so_the_promise_holds():
    assert [hold_ms(s) for s in (0.1, 0.0999, 0.25, -0.01, 1e9)] == [100, 99, 250, 0, 3_600_000]
    assert hold_ms(math.inf) is None


def test_err_code_names_and_draft_numbers():
    assert {e.name: int(e) for e in ErrCode} == {
        "UNSUPP": 1, "CREATE": 2, "REJECTED": 3, "OTHER": 4, "EXPIRE": 5, "TIMEOUT": 6}
    assert Err(1, ErrCode.TIMEOUT).to_dict()["code"] == "TIMEOUT"
    assert Err.from_dict({"create_id": 1, "code": 6}) == Err(1, ErrCode.TIMEOUT)


@pytest.mark.parametrize("cls, d, field", [
    (Ok, {**ROUND_TRIP[2].to_dict(), "seq": SEQ_MOD}, "Ok.seq"),
    (Ok, {**ROUND_TRIP[2].to_dict(), "seq": -1}, "Ok.seq"),
    (Ok, {**ROUND_TRIP[2].to_dict(), "bell_state": "phi"}, "Ok.bell_state"),
    (Ok, {**ROUND_TRIP[2].to_dict(), "goodness_time_ps": None}, "Ok.goodness_time_ps"),
    (Ok, {**ROUND_TRIP[3].to_dict(), "outcome": 2}, "Ok.outcome"),
    (Ok, {k: v for k, v in ROUND_TRIP[2].to_dict().items() if k != "link"}, "Ok.link"),
    (Ok, {**ROUND_TRIP[2].to_dict(), "extra": 1}, "Ok.extra"),
    (Ok, {**ROUND_TRIP[2].to_dict(), "type": "ERR"}, "Ok.type"),
    (Ok, {**ROUND_TRIP[2].to_dict(), "hold_ms": 100}, "Ok.hold_ms"),           # no qubit
    (Ok, {**ROUND_TRIP[-1].to_dict(), "hold_ms": -1}, "Ok.hold_ms"),
    (Err, {"create_id": 1, "code": "NOPE"}, "Err.code"),
    (Err, {"create_id": None, "code": "EXPIRE", "link": LINK, "seq_lo": 1, "origin": "a"},
     "Err.seq_hi"),
    (Err, {"create_id": 1, "code": "TIMEOUT", "seq_lo": 3}, "Err.seq_lo"),
    (Err, {"create_id": None, "code": "TIMEOUT"}, "Err.create_id"),
    (Expire, {"link": LINK, "seq_lo": 4, "seq_hi": 4, "origin": "a"}, "Expire.seq_hi"),
    (Expire, {"link": LINK, "seq_lo": True, "seq_hi": 4, "origin": "a"}, "Expire.seq_lo"),
    (Expire, {"link": "", "seq_lo": 1, "seq_hi": 4, "origin": "a"}, "Expire.link"),
    (ExpireAck, {"link": LINK, "expected_seq": "3", "seq_lo": 1, "seq_hi": 2},
     "ExpireAck.expected_seq"),
    (Create, {**ROUND_TRIP[0].to_dict(), "min_fidelity": 1.5}, "Create.min_fidelity"),
    (Create, {**ROUND_TRIP[0].to_dict(), "number": 0}, "Create.number"),
    (Herald, {**ROUND_TRIP[9].to_dict(), "next_seq": 5}, "Herald.next_seq"),
    (Herald, {**ROUND_TRIP[9].to_dict(), "first_seq": SEQ_MOD}, "Herald.first_seq"),
    (Herald, {k: v for k, v in ROUND_TRIP[9].to_dict().items() if k != "dt"}, "Herald.dt"),
    (Herald, {**ROUND_TRIP[9].to_dict(), "entries": []}, "Herald.entries"),
])
def test_malformed_dicts_are_rejected_naming_the_field(cls, d, field):
    with pytest.raises(ValueError, match=field):
        cls.from_dict(d)


def test_message_from_dict_rejects_unknown_type():
    with pytest.raises(ValueError, match="message.type"):
        message_from_dict({"type": "HELLO"})
    with pytest.raises(ValueError, match="Herald.link"):
        LinkEnd("alice", "bob", LINK).on_herald(Herald.from_entries("xy", 0, (), 0), 0.0)


@pytest.mark.parametrize("entries, next_seq, field", [
    ((HeraldEntry(0, "psi+", 1), HeraldEntry(2, "psi+", 2)), None, r"Herald.entries\[1\].seq"),
    (((0, "psi+", 1),), None, r"Herald.entries\[0\]"),
    ((HeraldEntry(0, "psi+", 1),), 5, "Herald.next_seq"),
    ((), None, "Herald.next_seq"),
])
def test_herald_from_entries_rejects_bad_entries_naming_the_field(entries, next_seq, field):
    with pytest.raises(ValueError, match=field):
        Herald.from_entries(LINK, 0, entries, next_seq)
