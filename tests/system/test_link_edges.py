"""Edges of the link layer: absolute numbers across laps, station epochs (a station
that restarts without its state), the station's heartbeat and herald latency.

Pure :class:`LinkEnd` tests first (a lossy, reordering channel included), then a
:class:`LinkService` with a stand-in node, then two memory daemons over mosquitto while the
test plays a station that loses its state.
"""
from __future__ import annotations

import asyncio
import heapq
import json
import random
import time
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qnode.daemon.linklayer import (
    MAX_ABS,
    SEQ_HALF,
    SEQ_MOD,
    Create,
    Epoch,
    Err,
    ErrCode,
    Expire,
    ExpireAck,
    Herald,
    HeraldStation,
    LinkEnd,
    Ok,
    message_from_dict,
    seq_in_range,
    seq_lt,
    split_actions,
)

from support.daemon_harness import MemoryLinkStore, link_context

LINK = "ab"
CD = 0.01
E1, E2, E3 = "00000000000000e1", "00000000000000e2", "00000000000000e3"


def pair_ends(**kw) -> tuple[LinkEnd, LinkEnd]:
    return (LinkEnd("alice", "bob", LINK, comm_delay=CD, **kw),
            LinkEnd("bob", "alice", LINK, comm_delay=CD, **kw))


def wire(msg):
    """Through JSON and back, as the MQTT layer will."""
    return message_from_dict(json.loads(json.dumps(msg.to_dict())))


def of(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def deliver(end: LinkEnd, msg, now: float) -> list:
    msg = wire(msg)
    if isinstance(msg, Herald):
        return end.on_herald(msg, now)
    if isinstance(msg, Expire):
        return end.on_expire(msg, now)
    if isinstance(msg, ExpireAck):
        return end.on_expire_ack(msg, now)
    return end.on_epoch(msg, now)


def talk(ends: dict[str, LinkEnd], pending: list[tuple[str, object]], now: float) -> None:
    """Deliver peer messages (dest, msg) over a reliable channel until none is left."""
    other = {"alice": "bob", "bob": "alice"}
    while pending:
        dest, msg = pending.pop(0)
        _, peer = split_actions(deliver(ends[dest], msg, now))
        pending += [(other[dest], m) for m in peer]


def to_peer(src: str, actions) -> list[tuple[str, object]]:
    dest = "bob" if src == "alice" else "alice"
    return [(dest, m) for m in split_actions(actions)[1]]


class Station:
    """A station of one link with an epoch; ``chunk(n)`` numbers n successes and flushes."""

    def __init__(self, epoch: str, initial_seq: int = 0):
        self.st = HeraldStation([LINK], epoch=epoch, initial_seq=initial_seq)
        self.k = 0

    def chunk(self, n: int, t0: int | None = None) -> Herald:
        t0 = self.k * 10**6 if t0 is None else t0
        if n:
            self.st.successes(LINK, np.arange(n) % 4, t0 + np.arange(n, dtype=np.int64))
        (h,) = self.st.flush(self.k)
        self.k += 1
        return h


def both(ends: dict[str, LinkEnd], h: Herald, now: float) -> None:
    """Herald ``h`` reaches both ends; their peer messages are exchanged."""
    pending = []
    for name, end in ends.items():
        pending += to_peer(name, end.on_herald(wire(h), now))
    talk(ends, pending, now)


def settle(ends: dict[str, LinkEnd], now: float) -> float:
    """Tick until no EXPIRE is unacknowledged and every epoch is agreed."""
    for _ in range(1000):
        if all(e.epoch_agreed and not e.unacked_expires() for e in ends.values()):
            return now
        now += 2 * CD
        pending = []
        for name, end in ends.items():
            pending += to_peer(name, end.tick(now))
        talk(ends, pending, now)
    raise AssertionError("did not settle")


# --------------------------------------------------------------------------- wire


def test_epoch_fields_round_trip_and_previous_version_messages_stay_as_they_were():
    h = Herald(LINK, 3, 5, np.array([1, 2], np.uint8), np.array([10, 20], np.int64), 7,
               E1, 3, 0)
    d = h.to_dict()
    assert (d["epoch"], d["lap"], d["start"]) == (E1, 3, 0)
    back = Herald.from_dict(json.loads(json.dumps(d)))
    assert back == h and back.first_abs == 3 * SEQ_MOD + 5 and back.next_abs == 3 * SEQ_MOD + 7
    legacy = Herald(LINK, 3, 5, np.array([1], np.uint8), np.array([10], np.int64), 6)
    assert not {"epoch", "lap", "start"} & set(legacy.to_dict())
    assert legacy.first_abs is None and Herald.from_dict(legacy.to_dict()) == legacy
    # EXPIRE / EXPIRE_ACK: laps only when set; a previous version's dict parses unchanged
    assert set(Expire(LINK, 1, 2, "a").to_dict()) == {"type", "link", "seq_lo", "seq_hi",
                                                      "origin"}
    assert set(ExpireAck(LINK, 1, 1, 2).to_dict()) == {"type", "link", "expected_seq",
                                                       "seq_lo", "seq_hi"}
    e = Expire(LINK, 7, 7, "a", 1, 3)                  # two laps long: fine with laps
    assert wire(e) == e and e.abs_range == (SEQ_MOD + 7, 3 * SEQ_MOD + 7)
    a = ExpireAck(LINK, 9, 7, 7, 3, 1, 3)
    assert wire(a) == a
    ep = Epoch(LINK, E1, 2**40, None)
    assert wire(ep) == ep and wire(Epoch(LINK, E1, 5, 2**33)).start == 2**33


@pytest.mark.parametrize("cls,d,field", [
    (Expire, {"link": LINK, "seq_lo": 1, "seq_hi": 2, "origin": "a", "lap_lo": 1}, "lap_hi"),
    (Expire, {"link": LINK, "seq_lo": 2, "seq_hi": 1, "origin": "a", "lap_lo": 1,
              "lap_hi": 1}, "lap_hi"),
    (Expire, {"link": LINK, "seq_lo": 1, "seq_hi": 2, "origin": "a", "lap_lo": -1,
              "lap_hi": 0}, "lap_lo"),
    (ExpireAck, {"link": LINK, "expected_seq": 1, "seq_lo": 1, "seq_hi": 2, "lap_hi": 1},
     "lap_lo"),
    (ExpireAck, {"link": LINK, "expected_seq": 1, "seq_lo": 1, "seq_hi": 2,
                 "lap": 2**31}, "lap"),
    (Epoch, {"link": LINK, "epoch": "E1", "pos": 1}, "epoch"),
    (Epoch, {"link": LINK, "epoch": E1, "pos": -1}, "pos"),
    (Epoch, {"link": LINK, "epoch": E1, "pos": 1, "start": MAX_ABS + 1}, "start"),
])
def test_malformed_epoch_and_lap_fields_are_rejected_naming_the_field(cls, d, field):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}"):
        cls.from_dict(d)


@pytest.mark.parametrize("change,field", [
    ({"epoch": E1}, "lap"),                                  # all three or none
    ({"epoch": "not-hex-digits!!", "lap": 0, "start": 0}, "epoch"),
    ({"epoch": E1, "lap": -1, "start": 0}, "lap"),
    ({"epoch": E1, "lap": 0, "start": True}, "start"),
    ({"epoch": E1, "lap": 2**31, "start": 0}, "lap"),
])
def test_malformed_herald_epoch_fields_are_rejected_naming_the_field(change, field):
    d = {**Station(E1).chunk(2).to_dict(), **change}
    d = {k: v for k, v in d.items() if k not in {"epoch", "lap", "start"} or k in change}
    with pytest.raises(ValueError, match=rf"Herald\.{field}"):
        Herald.from_dict(d)


def test_station_epoch_counters_persist_and_a_previous_snapshot_has_none():
    s = Station(E1, initial_seq=SEQ_MOD - 2)
    h = s.chunk(5)
    assert (h.first_seq, h.lap, h.next_seq, h.next_abs, h.start) == (
        SEQ_MOD - 2, 0, 3, SEQ_MOD + 3, SEQ_MOD - 2)
    snap = json.loads(json.dumps(s.st.snapshot()))
    st2 = HeraldStation.restore(snap)
    assert st2.epoch == E1 and st2.next_abs(LINK) == SEQ_MOD + 3
    (h2,) = st2.flush(9)
    assert (h2.lap, h2.first_seq, h2.start) == (1, 3, SEQ_MOD - 2)
    old = HeraldStation.restore({"next_seq": {LINK: 77}})    # stored by the previous version
    assert old.epoch is None and old.flush(0)[0].epoch is None and old.next_seq(LINK) == 77


# --------------------------------------------------------------------------- epochs


def test_the_first_epoch_is_agreed_before_pairs_are_taken_and_nothing_is_lost():
    s = Station(E1)
    alice, bob = pair_ends()
    ends = {"alice": alice, "bob": bob}
    h0, h1 = s.chunk(3), s.chunk(2)
    out_a = alice.on_herald(wire(h0), 0.0)
    assert of(out_a, Epoch) == [Epoch(LINK, E1, alice.expected_abs, None)]
    assert alice.inventory() == [] and not alice.epoch_agreed      # held meanwhile
    out_b = bob.on_herald(wire(h0), 0.0)
    talk(ends, to_peer("alice", out_a) + to_peer("bob", out_b), 0.0)
    both(ends, h1, 0.1)
    assert alice.epoch_agreed and bob.epoch_agreed
    # one frame for both: the station's numbers are the pair ids (no number skipped)
    assert alice.inventory() == bob.inventory() == [(LINK, s) for s in range(5)]
    assert alice.stats()["station_resets_total"] == 0
    assert [e["event"] for e in alice.take_events()] == ["epoch", "epoch_agreed"]


def test_a_station_that_lost_its_state_is_followed_and_pair_ids_never_repeat():
    alice, bob = pair_ends()
    ends = {"alice": alice, "bob": bob}
    s1 = Station(E1)
    for n in (40, 0, 25):
        both(ends, s1.chunk(n), 0.0)
    old = alice.inventory()
    late = s1.chunk(5)                         # the old station's last batch, delayed
    alice.take_events()
    s2 = Station(E2)                           # numbering from 0 again, under a new epoch
    for n in (10, 7, 0, 3):
        both(ends, s2.chunk(n), 1.0)
    assert alice.inventory() == bob.inventory()
    inv = [s for _, s in alice.inventory()]
    assert inv[:len(old)] == [s for _, s in old]             # the old pairs are still there
    new = inv[len(old):]
    assert len(new) == 20 and not set(new) & {s for _, s in old}
    assert all(seq_lt(inv[i], inv[i + 1]) for i in range(len(inv) - 1))   # ever forward
    for end in (alice, bob):
        assert end.stats()["station_resets_total"] == 1 and end.epoch == E2
    assert alice.take_events()[0] == {"event": "epoch", "old": E1, "new": E2,
                                      "pos": alice.expected_abs - 20}
    # a herald of the epoch left, late or replayed: ignored, counted, no flip back
    for end in (alice, bob):
        assert end.on_herald(wire(late), 2.0) == []
        assert end.epoch == E2 and end.stats()["epoch_batches_ignored_total"] == 1
    assert alice.on_epoch(Epoch(LINK, E1, 0, None), 2.0) == []     # nor the peer's word
    both(ends, s2.chunk(4), 3.0)
    assert alice.inventory() == bob.inventory() and len(alice.inventory()) == 65 + 24


@pytest.mark.parametrize("epoch_first", [True, False])
def test_a_reset_while_one_end_is_away_is_caught_up_from_its_queue(epoch_first):
    """Bob is offline from the old station's last chunks to after the reset; his persistent
    session then hands him, in order, what was queued (the peer's EPOCHs in either order
    with the station's batches: two topics)."""
    alice, bob = pair_ends()
    ends = {"alice": alice, "bob": bob}
    s1 = Station(E1)
    both(ends, s1.chunk(30), 0.0)
    to_bob = [s1.chunk(10), s1.chunk(5)]
    for h in to_bob:
        talk(ends, to_peer("alice", alice.on_herald(wire(h), 0.1)), 0.1)
    s2 = Station(E2)
    new = [s2.chunk(8), s2.chunk(0), s2.chunk(6)]
    queued_epochs = []
    for k, h in enumerate(new):
        queued_epochs += of(alice.on_herald(wire(h), 0.2 + k), Epoch)
        queued_epochs += of(alice.tick(0.2 + k), Epoch)         # resent while bob is away
    assert not alice.epoch_agreed and len(queued_epochs) >= 2
    alice.take_accepted()
    # bob is back: the old station's queued batches, then the new ones and alice's EPOCHs
    pending: list = []
    for h in to_bob:
        pending += to_peer("bob", bob.on_herald(wire(h), 5.0))
    talk(ends, pending, 5.0)
    queue = (queued_epochs + new) if epoch_first else (new + queued_epochs)
    for m in queue:
        talk(ends, to_peer("bob", deliver(bob, m, 5.1)), 5.1)
    settle(ends, 5.2)
    assert alice.inventory() == bob.inventory()
    assert len(alice.inventory()) == 30 + 15 + 14                # nothing lost
    # alice applied the batches she held when bob answered; their pairs' age counts from when
    # they came (the memory's cut-off), not from then
    assert [(n, t) for _, n, t in alice.take_accepted()] == [(8, 0.2), (6, 2.2)]
    assert alice.expected_seq == bob.expected_seq
    assert bob.stats()["station_resets_total"] == 1


def test_an_end_restarted_while_agreeing_asks_again_and_both_agree():
    alice, bob = pair_ends()
    ends = {"alice": alice, "bob": bob}
    s1 = Station(E1)
    both(ends, s1.chunk(12), 0.0)
    s2 = Station(E2)
    h = s2.chunk(5)
    alice.on_herald(wire(h), 1.0)                       # its EPOCH is lost
    snap = json.loads(json.dumps(alice.snapshot()))
    alice, out = LinkEnd.restore(snap, now=50.0)        # the held batch is gone with it
    ends["alice"] = alice
    assert of(out, Epoch) == [Epoch(LINK, E2, snap["epoch"]["pos"], None)]
    assert not alice.epoch_agreed and alice.epoch == E2
    talk(ends, to_peer("alice", out) + to_peer("bob", bob.on_herald(wire(h), 50.0)), 50.0)
    both(ends, s2.chunk(3), 51.0)
    settle(ends, 52.0)
    assert alice.inventory() == bob.inventory()
    assert len(alice.inventory()) == 12 + 3             # the 5 held at alice were expired


def test_a_wiped_end_takes_the_start_its_peer_agreed():
    alice, bob = pair_ends()
    ends = {"alice": alice, "bob": bob}
    s1 = Station(E1)
    both(ends, s1.chunk(100), 0.0)
    s2 = Station(E2)
    both(ends, s2.chunk(10), 1.0)
    assert bob.inventory()[100:] == [(LINK, 100 + k) for k in range(10)]
    fresh = LinkEnd("alice", "bob", LINK, comm_delay=CD)    # alice's state is lost
    ends["alice"] = fresh
    both(ends, s2.chunk(4), 2.0)
    settle(ends, 3.0)
    # bob dropped what the new alice never had; both name the new pairs alike
    assert fresh.inventory() == bob.inventory() == [(LINK, 110 + k) for k in range(4)]
    assert fresh.stats()["station_resets_total"] == 0 and fresh.epoch == E2


def test_two_starts_converge_to_the_larger():
    """Alice announces the new epoch, loses her state before bob's answer and starts again
    from nothing: the two ends first place the epoch differently, then both keep the larger
    start, and the end that moved expires what it took under the smaller one."""
    alice, bob = pair_ends()
    ends = {"alice": alice, "bob": bob}
    s1 = Station(E1)
    both(ends, s1.chunk(50), 0.0)
    late = s1.chunk(20)                     # alice alone gets the old station's last batch
    alice.on_herald(wire(late), 0.1)        # (her EXPIRE of it never reaches bob)
    s2 = Station(E2)
    h = s2.chunk(6)
    old_alice_says = of(alice.on_herald(wire(h), 1.0), Epoch)    # pos 70, never answered
    fresh = LinkEnd("alice", "bob", LINK, comm_delay=CD)
    ends["alice"] = fresh
    fresh_says = of(fresh.on_herald(wire(h), 1.1), Epoch)
    bob_says = of(bob.on_herald(wire(h), 1.1), Epoch)
    # fresh alice hears bob first: start = max(her pos, bob's pos 50) = 50; bob hears the old
    # alice first: start = max(his 50, her 70) = 70; then each hears the other's start
    talk(ends, [("alice", m) for m in bob_says] + [("bob", m) for m in old_alice_says]
         + [("bob", m) for m in fresh_says], 1.2)
    both(ends, s2.chunk(5), 1.3)
    settle(ends, 1.4)
    assert fresh.inventory() == bob.inventory()
    assert fresh.expected_seq == bob.expected_seq
    assert fresh.stats()["epoch_conflicts_total"] >= 1
    assert [s for _, s in fresh.inventory()] == [70 + 6 + k for k in range(5)]  # 2nd batch


def test_a_late_batch_of_an_earlier_epoch_never_moves_an_end_back():
    """A new end that hears the new station first, then a late batch of the old one (the
    epochs sort by creation time), stays in the new epoch."""
    alice, bob = pair_ends()
    ends = {"alice": alice, "bob": bob}
    old, new = Station(E1), Station(E2)
    late = old.chunk(9)
    both(ends, new.chunk(4), 0.0)
    for end in (alice, bob):
        assert end.on_herald(wire(late), 0.5) == [] and end.epoch == E2
        assert end.stats()["epoch_batches_ignored_total"] == 1
    assert alice.on_herald(wire(Station(E3).chunk(1)), 0.6) != []   # a later one: followed


def test_a_new_station_with_its_clock_behind_is_followed_once_the_old_one_is_silent():
    alice, bob = pair_ends(epoch_silence_s=5.0)
    ends = {"alice": alice, "bob": bob}
    s2 = Station(E2)
    both(ends, s2.chunk(10), 0.0)
    s1 = Station(E1)                  # drawn on a host whose clock is behind: sorts before E2
    both(ends, s1.chunk(3), 2.0)      # E2 spoke 2 s ago: not yet
    assert alice.epoch == bob.epoch == E2 and len(alice.inventory()) == 10
    both(ends, s1.chunk(4), 5.0)      # E2 silent for 5 s: follow the station that heralds
    both(ends, s1.chunk(5), 5.1)
    settle(ends, 5.2)
    assert alice.epoch == bob.epoch == E1 and alice.inventory() == bob.inventory()
    assert len(alice.inventory()) == 10 + 4 + 5
    assert alice.stats()["station_resets_total"] == 1


# --------------------------------------------------------------------------- laps


def _herald(epoch: str, absolute: int, n: int, t0: int, start: int = 0) -> Herald:
    """A signed station's batch at any absolute number (a station that jumps)."""
    return Herald(LINK, 0, absolute % SEQ_MOD, np.arange(n) % 4, t0 + np.arange(n),
                  (absolute + n) % SEQ_MOD, epoch, absolute >> 32, start)


def test_jumps_beyond_a_lap_and_an_expire_delayed_across_the_wrap():
    """Signed jumps of 2^33 in all, a single one of 1.5·2^32 included: both ends follow them,
    and an EXPIRE from before the wraps, delivered after them, finds its old lap (nothing to
    drop) instead of the new pairs with the same 32-bit numbers."""
    alice, bob = pair_ends()
    ends = {"alice": alice, "bob": bob}
    both(ends, _herald(E1, 0, 100, 0), 0.0)
    base = alice.expected_abs - 100
    delayed = of(bob.expire(base % SEQ_MOD + 10, base % SEQ_MOD + 20, 0.1), Expire)
    assert len(delayed) == 1 and delayed[0].lap_lo == base >> 32     # held up on the way
    both(ends, _herald(E1, SEQ_HALF, 50, 10**6), 1.0)                 # 2^31 ahead: a jump
    both(ends, _herald(E1, 2 * SEQ_MOD, 100, 2 * 10**6), 2.0)         # and 1.5·2^32 more
    new = {s for _, s in alice.inventory()}
    wrapped = {(base % SEQ_MOD + k) % SEQ_MOD for k in range(10, 20)}
    assert wrapped <= new                                             # same 32-bit ids
    before = alice.inventory()
    stale = alice.stats()["expires_stale_total"]   # (the window's EXPIREs after the jumps)
    out = alice.on_expire(wire(delayed[0]), 3.0)
    assert of(out, Err) == [] and alice.inventory() == before         # nothing dropped
    assert alice.stats()["expires_stale_total"] == stale + 1
    talk(ends, to_peer("alice", out), 3.0)
    settle(ends, 3.1)
    assert alice.inventory() == bob.inventory() == before
    # the window (2^30 numbers) forgot the pairs before the jumps: the last batch is left
    assert alice.stats()["heralds_stale_total"] == 0 and len(before) == 100


def test_a_jump_of_more_than_half_the_space_is_a_jump_not_stale():
    alice, bob = pair_ends()
    ends = {"alice": alice, "bob": bob}
    both(ends, _herald(E1, 5, 3, 0, start=5), 0.0)
    both(ends, _herald(E1, 5 + 3 + SEQ_HALF + 12345, 4, 10, start=5), 1.0)
    assert alice.inventory() == bob.inventory()
    # (new ends place the epoch's start, station number 5, at their own number 0)
    assert [s for _, s in alice.inventory()] == [(3 + SEQ_HALF + 12345 + k) % SEQ_MOD
                                                 for k in range(4)]
    assert alice.stats()["seqs_skipped_total"] == SEQ_HALF + 12345


# --------------------------------------------------------------------------- random channel


class EpochSim:
    """Two ends and a station that loses its state at the chunks in ``resets`` (a new epoch
    numbering from 0); heralds and peer messages cross a lossy, duplicating, reordering
    channel through JSON; an end may restart from its snapshot. Every success has a unique
    detection time, so a pair can be traced to the success it came from."""

    def __init__(self, rng: random.Random, *, h_loss: float, p_loss: float, dup: float,
                 jitter: float, **end_kw):
        self.rng = rng
        self.h_loss, self.p_loss, self.dup, self.jitter = h_loss, p_loss, dup, jitter
        a, b = pair_ends(**end_kw)
        self.ends = {"alice": a, "bob": b}
        self.other = {"alice": "bob", "bob": "alice"}
        self.q: list = []
        self.n = 0
        self.reliable = False
        self.t_ps = 0
        self.emitted: dict[int, int] = {}     # time -> Bell code
        self.cid: dict[str, int] = {}
        self.view: dict[str, set[int]] = {"alice": set(), "bob": set()}
        for name, end in self.ends.items():
            (ack,) = end.request(Create(self.other[name], 0.5, 0, 7, 65535), 0.0)
            self.cid[name] = ack.create_id

    def push(self, t: float, dest: str, msg, loss: float) -> None:
        copies = 1
        jitter = 0.0
        if not self.reliable:
            if self.rng.random() < loss:
                return
            copies = 2 if self.rng.random() < self.dup else 1
            jitter = self.jitter
        for _ in range(copies):
            self.n += 1
            heapq.heappush(self.q, (t + CD + self.rng.random() * jitter, self.n, dest,
                                    wire(msg)))

    def route(self, t: float, src: str, actions) -> None:
        up, peer = split_actions(actions)
        for m in peer:
            self.push(t, self.other[src], m, self.p_loss)
        view = self.view[src]
        for m in up:
            if isinstance(m, Ok):
                assert m.create_id == self.cid[src] and m.seq not in view
                view.add(m.seq)
            elif isinstance(m, Err) and m.create_id is not None:
                assert m.code is ErrCode.EXPIRE
                view.difference_update({s for s in view
                                        if seq_in_range(s, m.seq_lo, m.seq_hi)})

    def restart(self, name: str, t: float) -> None:
        snap = json.loads(json.dumps(self.ends[name].snapshot()))
        end, out = LinkEnd.restore(snap, now=t)
        self.ends[name] = end
        self.route(t, name, out)

    def run_until(self, t_end: float) -> None:
        step = CD / 2
        while self.q and self.q[0][0] <= t_end:
            tq, _, dest, msg = heapq.heappop(self.q)
            self.route(tq, dest, deliver(self.ends[dest], msg, tq))
        t = getattr(self, "_t", 0.0)
        while t + step <= t_end:
            t += step
            for name, end in self.ends.items():
                self.route(t, name, end.tick(t))
        self._t = t

    def run(self, counts: list[int], resets: set[int], restarts: dict[int, str]) -> Station:
        epochs = iter(f"{k:016x}" for k in range(1, 100))
        station = Station(next(epochs))
        t = 0.0
        for k, n in enumerate(counts):
            if k in resets:
                station = Station(next(epochs))
            if k in restarts:
                self.run_until(t)
                self.restart(restarts[k], t)
            codes = [self.rng.randrange(4) for _ in range(n)]
            times = list(range(self.t_ps, self.t_ps + n))
            self.t_ps += n + 1
            self.emitted.update(zip(times, codes, strict=True))
            if n:
                station.st.successes(LINK, codes, times)
            (h,) = station.st.flush(k)
            for dest in self.ends:
                self.push(t, dest, h, self.h_loss)
            t += 0.02
            self.run_until(t)
        self.reliable = True
        (h,) = station.st.flush(len(counts))
        for dest in self.ends:
            self.push(t + 1.0, dest, h, 0.0)
        while self.q or any(e.unacked_expires() or not e.epoch_agreed
                            for e in self.ends.values()):
            t += 0.05
            self.run_until(t)
            assert t < 200.0, "did not converge"
        return station


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       counts=st.lists(st.integers(0, 6) | st.integers(0, 300), min_size=2, max_size=20),
       resets=st.sets(st.integers(1, 19), max_size=3),
       restart=st.one_of(st.none(), st.tuples(st.integers(1, 19),
                                              st.sampled_from(["alice", "bob"]))),
       window=st.sampled_from([{}, {"max_pair_age": 50}, {"max_pair_age": 700}]),
       h_loss=st.floats(0, 0.5), p_loss=st.floats(0, 0.5), dup=st.floats(0, 0.3),
       jitter=st.floats(0, 0.06))
def test_both_ends_agree_across_station_resets_over_a_lossy_channel(
        seed, counts, resets, restart, window, h_loss, p_loss, dup, jitter):
    """Heralds reordered across a reset included (a late batch of the old station)."""
    sim = EpochSim(random.Random(seed), h_loss=h_loss, p_loss=p_loss, dup=dup, jitter=jitter,
                   **window)
    station = sim.run(counts, resets, dict([restart]) if restart else {})
    alice, bob = sim.ends["alice"], sim.ends["bob"]
    assert alice.inventory() == bob.inventory()
    assert alice.expected_seq == bob.expected_seq
    assert alice.epoch == bob.epoch == station.st.epoch
    seqs = [s for _, s in alice.inventory()]
    assert sim.view["alice"] == sim.view["bob"] == set(seqs)
    times = []
    for s in seqs:
        rec_a, rec_b = alice.pair(s), bob.pair(s)
        assert rec_a == rec_b and rec_a.status == "delivered"
        assert sim.emitted[rec_a.time_ps] == ["phi+", "phi-", "psi+", "psi-"].index(
            rec_a.bell_state)
        times.append(rec_a.time_ps)
    assert times == sorted(set(times))      # one pair per success, named in emission order


def test_a_reliable_channel_keeps_every_pair_across_resets():
    sim = EpochSim(random.Random(3), h_loss=0, p_loss=0, dup=0, jitter=0)
    sim.run([5, 3, 0, 4, 6, 2, 7], resets={2, 5}, restarts={})
    alice = sim.ends["alice"]
    assert len(alice.inventory()) == 27 and alice.inventory() == sim.ends["bob"].inventory()
    assert alice.stats()["station_resets_total"] == 2


def _any_message(r: random.Random):
    """A valid (parsable) link-layer message with extreme numbers: epochs, laps, starts."""
    epochs = [E1, E2, E3, "ffffffffffffffff", "0000000000000000"]

    def num() -> int:
        return r.choice([r.randrange(2**34), r.randrange(MAX_ABS + 1),
                         MAX_ABS - r.randrange(2**33), SEQ_MOD + r.randrange(10**6)])
    k = r.random()
    if k < 0.4:
        n = r.randrange(20)
        a = min(num(), MAX_ABS - n)
        ep = r.choice([*epochs, None])
        extra = () if ep is None else (ep, a >> 32, r.choice([0, a, num()]))
        return Herald(LINK, 0, a % SEQ_MOD, np.arange(n) % 4, np.arange(n), (a + n) % SEQ_MOD,
                      *extra)
    if k < 0.6:
        if r.random() < 0.5:
            lo = num()
            hi = min(MAX_ABS, lo + r.randrange(1, 2 ** r.randrange(1, 40)))
            lo = min(lo, hi - 1)
            return Expire(LINK, lo % SEQ_MOD, hi % SEQ_MOD, "x", lo >> 32, hi >> 32)
        lo = r.randrange(SEQ_MOD)
        return Expire(LINK, lo, (lo + r.randrange(1, SEQ_HALF)) % SEQ_MOD, "x")
    if k < 0.8:
        laps = (r.randrange(2**31), r.randrange(2**31)) if r.random() < 0.5 else (None, None)
        return ExpireAck(LINK, r.randrange(SEQ_MOD), r.randrange(SEQ_MOD), r.randrange(SEQ_MOD),
                         r.choice([None, r.randrange(2**31)]), *laps)
    return Epoch(LINK, r.choice(epochs), num(), r.choice([None, 0, num()]))


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), window=st.sampled_from([50, 2**20, 2**30]))
def test_any_valid_message_leaves_a_sound_end(seed, window):
    """Whatever valid messages a (signed, so trusted but maybe broken) station or peer sends,
    with numbers up to the largest a message carries: an end never raises, everything it
    sends parses, and its snapshot restores."""
    r = random.Random(seed)
    end = LinkEnd("alice", "bob", LINK, comm_delay=CD, max_pair_age=window)
    end.request(Create("bob", 0.5, 0, 1, 65535), 0.0)
    t = 0.0
    for _ in range(40):
        t += r.random()
        out = deliver(end, _any_message(r), t) + end.tick(t)
        for m in out:
            wire(m)
        if r.random() < 0.1:
            end, out = LinkEnd.restore(json.loads(json.dumps(end.snapshot())), now=t)
            for m in out:
                wire(m)


# --------------------------------------------------------------------------- a link service


class _Bus:
    def __init__(self):
        self.sent: list[tuple[str, str, dict]] = []
        self.connected = True

    def defer_until_idle(self, work):
        return False  # called outside a receiver's burst: the caller stores and sends now

    def publish(self, topic, type, body, **kw):
        self.sent.append((topic, type, json.loads(json.dumps(body))))


def _ctx(node: str, store: MemoryLinkStore | None = None):
    return link_context(node, _Bus(), store)


def _envelope(type_: str, body: dict, sender: str, msg_id: int, ts: float):
    from qnode.daemon.bus.envelope import Message as Envelope

    return Envelope(type_, sender, msg_id, body, ts, signed=True)


async def _exchange(services: dict) -> None:
    """Hand each service the ll messages the other published, until none is left."""
    while True:
        moved = False
        for name, svc in services.items():
            out, svc.ctx.bus.sent = svc.ctx.bus.sent, []
            for topic, type_, body in out:
                if "/ll/" not in topic:
                    continue
                dest = services[topic.rsplit("/", 1)[1]]
                parsed = message_from_dict({**body, "type": type_})
                await dest.on_peer_message(_envelope(type_, body, name, 0, time.time()), parsed)
                moved = True
        if not moved:
            return


@pytest.mark.asyncio
async def test_absurd_sender_timestamps_are_counted_not_averaged():
    """A signed herald whose envelope says ts = ±1e306 (or a far clock) is applied like any
    other; its 'latency' is left out and counted, and the telemetry stays finite JSON."""
    from qnode.daemon.bus.telemetry import validate
    from qnode.daemon.klink.service import LinkService

    svc = LinkService(_ctx("alice"), LINK, "bob", "K", goodness=0.9)
    s = Station(E1)
    for k, ts in enumerate((time.time(), -1e306, 1e306, time.time() - 3600, time.time())):
        await svc.on_herald(_envelope("HERALD", s.chunk(3).to_dict(), "station", k, ts))
    t = svc.telemetry(1.0)
    json.dumps(t, allow_nan=False)
    validate({"node": "alice", "roles": ["memory"], "t": time.time(), "uptime_s": 1.0,
              "links": {LINK: t}})
    assert t["herald_ts_implausible_total"] == 3
    assert 0.0 <= t["herald_latency_ms_p50"] <= t["herald_latency_ms_p99"] < 60e3
    assert 0.0 <= t["herald_handling_ms_p50"] <= t["herald_handling_ms_p99"]
    assert t["herald_age_s"] >= 0.0 and t["station_epoch"] == E1
    assert t["epoch_agreed"] is False          # no peer here to agree with


@pytest.mark.asyncio
async def test_link_services_follow_a_station_reset_and_log_it(caplog):
    from qnode.daemon.klink.service import LinkService

    services = {n: LinkService(_ctx(n), LINK, p, "K", goodness=0.9)
                for n, p in (("alice", "bob"), ("bob", "alice"))}
    k = 0
    for s in (Station(E1), Station(E2)):
        for n in (20, 0, 7):
            k += 1
            body = s.chunk(n).to_dict()
            for svc in services.values():
                await svc.on_herald(_envelope("HERALD", body, "station", k, time.time()))
            await _exchange(services)
    a, b = services["alice"], services["bob"]
    assert a.end.inventory() == b.end.inventory() and len(a.end.inventory()) == 54
    for svc in (a, b):
        t = svc.telemetry(1.0)
        assert t["station_resets_total"] == 1 and t["station_epoch"] == E2 and t["epoch_agreed"]
    resets = [r for r in caplog.records if getattr(r, "event", None) == "station_reset"]
    assert len(resets) == 2                    # one line per end
    assert {(r.old_epoch, r.epoch, r.link) for r in resets} == {(E1, E2, LINK)}
    assert [r.levelname for r in resets] == ["WARNING", "WARNING"]
    # the cut-off and the binding rule see the accepted pairs only (absolute numbers)
    assert sum(n for _, n, _ in a._batches) == 54


@pytest.mark.asyncio
async def test_a_previous_version_station_numbering_from_behind_is_counted_and_logged(caplog):
    """A station without epochs that restarts without its state numbers from 0 again: its
    batches are stale to the ends. Not silent any more: counted and logged (rate-limited)."""
    from qnode.daemon.klink.service import LinkService

    svc = LinkService(_ctx("alice"), LINK, "bob", "K", goodness=0.9)
    for k, st_ in enumerate([HeraldStation([LINK]), HeraldStation([LINK])]):
        for i in range(3):
            st_.successes(LINK, [0, 1, 2, 3], [1, 2, 3, 4])
            (h,) = st_.flush(i)
            await svc.on_herald(_envelope("HERALD", h.to_dict(), "station", 10 * k + i,
                                          time.time()))
    t = svc.telemetry(1.0)
    assert t["heralds_stale_total"] == 12 and t["heralds_total"] == 12
    warned = [r for r in caplog.records if getattr(r, "heralds_stale", 0)]
    assert len(warned) == 1 and warned[0].levelname == "WARNING"     # once per minute


@pytest.mark.asyncio
async def test_the_station_heartbeats_when_no_chunk_comes():
    """No tagger at all: the role's timer still sends empty, signed-ready batches carrying its
    epoch, and a restart keeps the epoch; a lost state draws a later one."""
    from qnode.daemon.roles import station as role_station

    store = MemoryLinkStore()

    def role():
        ctx = _ctx("herald1", store)
        ctx.config = types.SimpleNamespace(herald=types.SimpleNamespace(
            link=LINK, ends=("alice", "bob"), tagger="tagger", channels=(1, 2, 3, 4),
            window_ps=1000))
        return role_station.HeraldStationRole(ctx)

    r = role()
    task = asyncio.create_task(r.tasks()["heartbeat"]())
    try:
        async with asyncio.timeout(30):
            while len(r.ctx.bus.sent) < 2:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    beats = [Herald.from_dict(body) for _, _, body in r.ctx.bus.sent[:2]]
    assert all(h.count == 0 and h.epoch == r.station.epoch for h in beats)
    assert {t for t, _, _ in r.ctx.bus.sent} == {f"qnet/v1/t/herald1/herald/{LINK}"}
    rec = {"links": {}}
    r.fill_telemetry(rec, 1.0)
    assert rec["links"][LINK]["heartbeats_total"] >= 2
    assert store.links[f"station:{LINK}"]["epoch"] == r.station.epoch   # stored
    assert role().station.epoch == r.station.epoch                      # a restart keeps it
    store.links.clear()                                                 # the state is lost
    time.sleep(0.002)
    assert role().station.epoch > r.station.epoch


# --------------------------------------------------------------------------- daemons

KEY = b"k" * 32
DLINK = "alice-bob"


def _configs(tmp: Path, port: int) -> dict[str, Path]:
    from support.daemon_harness import k_link_configs

    return k_link_configs(tmp, port, link=DLINK, key=KEY)


class _DaemonStation:
    """The test as a herald station with an epoch. :meth:`wipe` is a restart that lost the
    state: a new epoch, numbering from 0. (A station that lost its state directory also lost
    its message-id lease: the ends' replay windows would refuse its ids until they passed the
    old ones; the envelope layer is not the link layer's, so here the ids carry on.)"""

    def __init__(self, port: int, tmp: Path):
        from qnode.daemon.bus.client import NodeBus
        from qnode.daemon.bus.topics import Topics

        from support.daemon_harness import identity

        self.port, self.tmp = port, tmp
        self.make_bus = lambda ids=None: NodeBus(
            Topics("t", "station"), "127.0.0.1", port, keys={DLINK: KEY}, ids=ids,
            signer=identity(tmp, "station"))
        self.station = HeraldStation([DLINK], epoch=E1)
        self.t_ps = 10**6
        self.chunk = 0

    async def start(self, ids=None) -> None:
        self.bus = self.make_bus(ids)
        self.runner = asyncio.create_task(self.bus.run())
        await self.bus.wait_connected(15)

    async def stop(self) -> None:
        await self.bus.drain(15)
        await self.bus.close()
        await self.runner

    async def wipe(self, epoch: str) -> None:
        from qnode.daemon.bus.envelope import IdCounter

        ids = IdCounter(self.bus.ids.next_id)
        await self.stop()
        self.station = HeraldStation([DLINK], epoch=epoch)
        await self.start(ids)

    def send(self, n: int = 50) -> None:
        if n:
            self.station.successes(DLINK, np.arange(n) % 4,
                                   self.t_ps + 1000 * np.arange(n, dtype=np.int64))
            self.t_ps += 1000 * n
        for h in self.station.flush(self.chunk):
            self.bus.publish(self.bus.topics.herald(DLINK), h.TYPE, h.to_dict(),
                             sign_with=DLINK)
        self.chunk += 1


async def _link_telemetry(port: int, node: str, timeout_s: float = 15.0) -> dict:
    from support.daemon_harness import telemetry_of

    return await telemetry_of(port, node, timeout_s=timeout_s)


async def _settle(port: int, epoch: str, alice_heralds: int, timeout_s: float = 60.0) -> dict:
    """Until both ends follow ``epoch``, agreed, with nothing unacknowledged, at the same
    expected number, and alice has accepted ``alice_heralds`` pairs."""
    deadline = time.monotonic() + timeout_s
    views: list = []
    while time.monotonic() < deadline:
        views = [(await _link_telemetry(port, n))["links"][DLINK] for n in ("alice", "bob")]
        if (all(v.get("station_epoch") == epoch and v.get("epoch_agreed")
                and v["expires_unacked"] == 0 for v in views)
                and views[0]["expected_seq"] == views[1]["expected_seq"]
                and views[0]["heralds_total"] == alice_heralds):
            return {"alice": views[0], "bob": views[1]}
        await asyncio.sleep(0.2)
    raise AssertionError(f"the ends did not settle: {views}")


def _stored_inventory(state_dir: Path) -> list:
    from qnode.daemon.runtime.state import StateStore

    with StateStore(state_dir / "qnode.sqlite") as store:
        end, _ = LinkEnd.restore(store.load_links()[DLINK], now=0.0)
    return end.inventory()


@pytest.mark.parametrize("bob_away", [False, True])
@pytest.mark.asyncio
async def test_daemons_follow_a_station_that_lost_its_state(tmp_path, bob_away):
    """Two memory daemons; the station sends 10 chunks, restarts without its state (a new
    epoch, numbering from 0) and sends 10 more. ``bob_away``: bob is SIGKILLed before the
    last chunks of the old station and restarted after the reset, catching up from his
    persistent session. Both ends log the reset, agree on the new epoch, keep delivering
    pairs and store exactly the same pairs."""
    from support.daemon_harness import Daemon
    from support.mosquitto import Mosquitto

    with Mosquitto(tmp_path / "mosquitto") as broker:
        broker.tap("t", ("alice", "bob"))   # the contract: checked at the end
        cfg = _configs(tmp_path, broker.port)
        alice, bob = Daemon(cfg["alice"]).start(), Daemon(cfg["bob"]).start()
        st = _DaemonStation(broker.port, tmp_path)
        try:
            await asyncio.to_thread(alice.wait_for_log, "node ready")
            await asyncio.to_thread(bob.wait_for_log, "node ready")
            await st.start()
            for _ in range(7):
                st.send()
                await asyncio.sleep(0.02)
            if bob_away:
                await st.bus.drain(15)
                await _settle(broker.port, E1, 7 * 50)
                bob.kill()
            for _ in range(3):
                st.send()
                await asyncio.sleep(0.02)
            await st.wipe(E2)
            for _ in range(10):
                st.send()
                await asyncio.sleep(0.02)
            if bob_away:
                await st.bus.drain(15)
                bob = Daemon(cfg["bob"]).start()
                await asyncio.to_thread(bob.wait_for_log, "node ready")
            for _ in range(3):
                st.send(0)                   # heartbeats
            await st.bus.drain(15)
            views = await _settle(broker.port, E2, 20 * 50)
            await st.stop()
        finally:
            codes = (alice.stop(), bob.stop())
    assert codes == (0, 0), alice.log()[-3000:] + bob.log()[-3000:]
    for v in views.values():
        assert v["station_resets_total"] == 1
    for d in (alice, bob):
        assert "restarted without its state" in d.log() and "old_epoch=" + E1 in d.log()
    inv_a = _stored_inventory(tmp_path / "state" / "alice")
    inv_b = _stored_inventory(tmp_path / "state" / "bob")
    assert inv_a == inv_b
    seqs = [s for _, s in inv_a]
    assert len(set(seqs)) == len(seqs)
    if not bob_away:
        assert len(inv_a) == 20 * 50                 # nothing lost across the reset
    else:   # the new station's 500 pairs, held by alice while bob was away, all kept; of the
        # old ones, what bob had stored when he was killed
        assert 10 * 50 < len(inv_a) <= 20 * 50
    tail = seqs[-10 * 50:]
    assert all((b - a) % SEQ_MOD == 1 for a, b in zip(tail, tail[1:], strict=False))
