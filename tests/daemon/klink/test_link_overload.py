"""A link under overload (a flood at many times its capacity): each end loses most herald
batches independently and some EXPIRE / EXPIRE_ACKs. The unacknowledged EXPIREs stay at most
``max_unacked`` ranges (merged, the pairs in between shed at both ends), resends back off, and once
the loss stops both ends agree exactly. A LinkService whose bus is overloaded counts and goes on."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import json
import random
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qnode.daemon.linklayer import (
    MAX_RESEND_S,
    MAX_UNACKED_EXPIRES,
    SEQ_MOD,
    Epoch,
    Err,
    ErrCode,
    Expire,
    ExpireAck,
    Herald,
    HeraldStation,
    LinkEnd,
    Message,
    message_from_dict,
    split_actions,
)

from support.daemon_harness import MemoryLinkStore, link_context

LINK = "ab"
CD = 0.01
EPOCH = "00000000000000e1"


def wire(msg: Message) -> Message:
    return message_from_dict(json.loads(json.dumps(msg.to_dict())))


def ends(**kw) -> dict[str, LinkEnd]:
    return {"alice": LinkEnd("alice", "bob", LINK, comm_delay=CD, **kw),
            "bob": LinkEnd("bob", "alice", LINK, comm_delay=CD, **kw)}


def agree(a: LinkEnd, b: LinkEnd, h: Herald) -> None:
    """Both ends get the epoch's first batch ``h`` and exchange their EPOCHs."""
    out_a, out_b = a.on_herald(wire(h), 0.0), b.on_herald(wire(h), 0.0)
    for m in out_a:
        if isinstance(m, Epoch):
            b.on_epoch(wire(m), 0.0)
    for m in out_b:
        if isinstance(m, Epoch):
            a.on_epoch(wire(m), 0.0)
    assert a.epoch_agreed and b.epoch_agreed and a.expected_abs == b.expected_abs


class Station:
    def __init__(self, epoch: str | None = EPOCH):
        self.st = HeraldStation([LINK], epoch=epoch)
        self.k = 0

    def chunk(self, n: int) -> Herald:
        if n:
            t0 = self.k * 10**6
            self.st.successes(LINK, np.arange(n) % 4, t0 + np.arange(n, dtype=np.int64))
        (h,) = self.st.flush(self.k)
        self.k += 1
        return h


class LossySim:
    """Heralds reach each end with probability ``1 − h_loss`` (independently); peer messages
    are lost with ``p_loss`` and delayed by CD..2·CD, until ``lossless_after``."""

    def __init__(self, rng: random.Random, h_loss: float, p_loss: float, cap: int,
                 epoch: str | None = EPOCH):
        self.rng, self.h_loss, self.p_loss = rng, h_loss, p_loss
        self.ends = ends()
        for e in self.ends.values():
            e.max_unacked = cap
        self.cap = cap
        self.station = Station(epoch)
        self.q: list[tuple[float, int, str, Message]] = []
        self.n = 0
        self.lossless_after = float("inf")
        self.max_seen = 0
        self.sent_expires = 0
        self.up: dict[str, list[Message]] = {"alice": [], "bob": []}

    def push(self, t: float, dest: str, msg: Message) -> None:
        self.n += 1
        heapq.heappush(self.q, (t, self.n, dest, msg))

    def route(self, t: float, src: str, out: list[Message]) -> None:
        up, to_peer = split_actions(out)
        self.up[src] += up
        dest = "bob" if src == "alice" else "alice"
        for m in to_peer:
            self.sent_expires += isinstance(m, Expire)
            if t < self.lossless_after and self.rng.random() < self.p_loss:
                continue
            self.push(t + CD * (1 + self.rng.random()), dest, wire(m))
        e = self.ends[src]
        assert len(e.unacked_expires()) <= self.cap
        self.max_seen = max(self.max_seen, len(e.unacked_expires()))

    def deliver(self, t: float, dest: str, msg: Message) -> None:
        end = self.ends[dest]
        if isinstance(msg, Herald):
            out = end.on_herald(msg, t)
        elif isinstance(msg, Expire):
            out = end.on_expire(msg, t)
        elif isinstance(msg, ExpireAck):
            out = end.on_expire_ack(msg, t)
        else:
            assert isinstance(msg, Epoch)
            out = end.on_epoch(msg, t)
        self.route(t, dest, out)

    def run(self, counts: list[int], period: float) -> float:
        t = 0.0
        for n in counts:
            h = wire(self.station.chunk(n))
            for dest in self.ends:
                if self.rng.random() >= self.h_loss:
                    self.push(t, dest, h)
            t += period
        self.lossless_after = t
        h = wire(self.station.chunk(0))           # a heartbeat both ends get
        for dest in self.ends:
            self.push(t + 0.5, dest, h)
        now, step = 0.0, CD
        while self.q or any(e.unacked_expires() or not e.epoch_agreed
                            for e in self.ends.values()):
            t_next = self.q[0][0] if self.q else now + step
            while now + step <= t_next:
                now += step
                for name, end in self.ends.items():
                    self.route(now, name, end.tick(now))
            if self.q and self.q[0][0] <= now + step:
                tq, _, dest, msg = heapq.heappop(self.q)
                self.deliver(tq, dest, msg)
            assert now < t + 4 * MAX_RESEND_S + 10, "did not converge"
        return now


def assert_agree(a: LinkEnd, b: LinkEnd) -> None:
    assert a.expected_abs == b.expected_abs
    assert a.inventory() == b.inventory()
    assert not a.unacked_expires() and not b.unacked_expires()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h_loss=st.floats(0.5, 0.97),
       p_loss=st.floats(0.0, 0.5), cap=st.sampled_from([2, 4, MAX_UNACKED_EXPIRES]),
       counts=st.lists(st.integers(0, 30), min_size=20, max_size=150),
       epoch=st.sampled_from([EPOCH, None]))
def test_flooded_ends_keep_few_unacked_ranges_and_agree_after(seed, h_loss, p_loss, cap,
                                                             counts, epoch):
    sim = LossySim(random.Random(seed), h_loss, p_loss, cap, epoch)
    sim.run(counts, period=CD / 4)     # faster than an ACK comes back: gaps pile up
    a, b = sim.ends["alice"], sim.ends["bob"]
    assert sim.max_seen <= cap
    assert_agree(a, b)
    # every pair either end holds was heralded, and what was shed counts as expired
    for e in (a, b):
        st_ = e.stats()
        assert st_["pairs_shed_total"] <= st_["pairs_expired_total"]
        assert st_["pairs_held"] == len(e.inventory())


def test_a_heavy_flood_sheds_pairs_but_stays_bounded_and_agrees():
    """94 % of herald batches lost at each end, 30 % of peer messages: the worst case of the
    benchmark, at a smaller scale."""
    sim = LossySim(random.Random(7), 0.94, 0.3, MAX_UNACKED_EXPIRES)
    sim.run([100] * 6000, period=CD / 200)
    a, b = sim.ends["alice"], sim.ends["bob"]
    assert sim.max_seen == MAX_UNACKED_EXPIRES           # the cap was reached, never passed
    assert a.stats()["pairs_shed_total"] + b.stats()["pairs_shed_total"] > 0
    assert_agree(a, b)
    # the higher layer's view: every accepted pair was either delivered or ERR_EXPIREd; no
    # pair is left that the peer does not have
    assert len(a.inventory()) == len(b.inventory())


def test_resends_back_off_to_max_resend_s():
    """An EXPIRE the peer never answers is resent after 2·comm_delay, then after twice the
    previous interval, up to ``max_resend_s``: a dead peer costs few messages."""
    e = LinkEnd("alice", "bob", LINK, comm_delay=0.25)
    s = Station()
    e.on_herald(s.chunk(3), 0.0)
    e.on_epoch(Epoch(LINK, EPOCH, e.expected_abs, None), 0.0)
    s.chunk(3)                                   # lost
    out = e.on_herald(s.chunk(3), 1.0)
    assert len([m for m in out if isinstance(m, Expire)]) == 1
    times = []
    t = 1.0
    while t < 200.0:
        t = round(t + 0.1, 6)
        if any(isinstance(m, Expire) for m in e.tick(t)):
            times.append(t)
    gaps = np.diff([1.0, *times])
    assert gaps[:6] == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0, 16.0], abs=0.11)
    assert max(gaps) <= MAX_RESEND_S + 0.11
    assert len(times) <= 6 + 200 / MAX_RESEND_S
    assert e.stats()["expires_resent_total"] == len(times)


def test_merging_sheds_the_pairs_in_between_at_both_ends():
    """With a cap of 2, a third gap merges the two closest ranges: this end's pairs between
    them are expired (ERR_EXPIRE upward, counted), the gap's EXPIRE goes out now, and the peer
    drops them too when it gets it."""
    a, b = ends().values()
    a.max_unacked = 2
    s = Station()
    hs = [s.chunk(n) for n in (5, 5, 5, 5, 2, 5, 5)]
    now = 0.0
    agree(a, b, hs[0])
    for h in hs[1:]:                             # bob gets everything
        b.on_herald(wire(h), now)
    base = a.expected_abs - 5
    # alice: gets 0, 2, 4, 6: gaps at 1, 3, 5
    a.on_herald(hs[2], now)
    a.on_herald(hs[4], now)
    assert a.unacked_expires() == [((base + 5) % SEQ_MOD, (base + 10) % SEQ_MOD),
                                   ((base + 15) % SEQ_MOD, (base + 20) % SEQ_MOD)]
    out = a.on_herald(hs[6], now)
    up, peer = split_actions(out)
    # the closest two are [15, 20) and the new [22, 27): the 2 pairs of batch 4 are shed
    assert a.stats()["pairs_shed_total"] == 2
    assert [(m.seq_lo, m.seq_hi) for m in peer] == [
        ((base + 22) % SEQ_MOD, (base + 27) % SEQ_MOD),
        ((base + 20) % SEQ_MOD, (base + 22) % SEQ_MOD)]
    assert Err(None, ErrCode.EXPIRE, LINK, (base + 20) % SEQ_MOD, (base + 22) % SEQ_MOD,
               "alice") in up
    assert sorted(a.unacked_expires()) == sorted([
        ((base + 5) % SEQ_MOD, (base + 10) % SEQ_MOD),
        ((base + 15) % SEQ_MOD, (base + 27) % SEQ_MOD)])
    # the peer acknowledges the pieces; the merged range needs its own ACK (resent by tick)
    for m in peer:
        for r in b.on_expire(wire(m), now):
            if isinstance(r, ExpireAck):
                a.on_expire_ack(wire(r), now)
    assert len(a.unacked_expires()) == 2          # the ACK of [20, 27) cut [15, 27) to [15, 20)
    assert ((base + 15) % SEQ_MOD, (base + 20) % SEQ_MOD) in a.unacked_expires()
    t = now
    while a.unacked_expires():
        t += CD
        for m in a.tick(t):
            for r in b.on_expire(wire(m), t):
                if isinstance(r, ExpireAck):
                    a.on_expire_ack(wire(r), t)
                elif isinstance(r, Expire):
                    a.on_expire(wire(r), t)
        assert t < 10
    # bob skipped nothing; settle what bob still owes
    for m in b.tick(t + 1):
        for r in a.on_expire(wire(m), t + 1):
            if isinstance(r, ExpireAck):
                b.on_expire_ack(wire(r), t + 1)
    assert a.inventory() == b.inventory()
    assert len(a.inventory()) == 5 + 5 + 5       # batches 0, 2, 6; batch 4 shed


def test_an_expire_of_a_billion_numbers_is_applied_through_runs():
    """A merged range may be long: the peer drops it run by run, not number by number."""
    a, b = ends().values()
    s = Station()
    agree(a, b, s.chunk(100))
    for _ in range(49):
        h = wire(s.chunk(100))
        a.on_herald(h, 0.0)
        b.on_herald(h, 0.0)
    lo, hi = a.expected_abs - 2500, a.expected_abs + 10**9
    out = a.on_expire(Expire(LINK, lo % SEQ_MOD, hi % SEQ_MOD, "bob", lo >> 32, hi >> 32), 0.0)
    assert a.expected_abs == hi
    assert len(a.inventory()) == 2500
    ack = [m for m in out if isinstance(m, ExpireAck)]
    assert len(ack) == 1 and ack[0].seq_hi == hi % SEQ_MOD


def test_an_old_snapshot_with_thousands_of_unacked_ranges_restores_merged():
    """A snapshot from before the cap (4 000 unacknowledged ranges) restores with at most
    ``max_unacked``, covering all of them; the pairs in between are shed at both ends."""
    a, b = ends().values()
    s = Station()
    a.max_unacked = 10**6
    agree(a, b, s.chunk(10))
    for k in range(4000):
        h = wire(s.chunk(3))
        if k % 2:
            a.on_herald(h, 0.0)
        b.on_herald(h, 0.0)
    assert len(a.unacked_expires()) == 2000
    snap = json.loads(json.dumps(a.snapshot()))
    ranges = [tuple(r) for r in snap["unacked_expires"]]
    a2, out = LinkEnd.restore(snap, now=1.0)
    kept = sorted(a2._unacked)
    assert len(kept) <= MAX_UNACKED_EXPIRES
    assert all(any(lo <= x and y <= hi for lo, hi in kept) for x, y in ranges)
    sent = [m for m in out if isinstance(m, Expire)]
    assert len(sent) == len(kept)
    assert a2.stats()["pairs_shed_total"] > 0
    # the peer applies them; then both agree
    t = 1.0
    for m in sent:
        for r in b.on_expire(wire(m), t):
            if isinstance(r, ExpireAck):
                a2.on_expire_ack(wire(r), t)
    assert not a2.unacked_expires()
    assert a2.inventory() == b.inventory()


def test_storing_state_costs_little_with_a_full_cap(capsys):
    """Micro-benchmark (printed, not asserted): a delta and its scalars with 0 and with
    ``max_unacked`` unacknowledged ranges."""
    results = {}
    for n_unacked in (0, MAX_UNACKED_EXPIRES, 4096):
        e = LinkEnd("alice", "bob", LINK, comm_delay=CD)
        e.max_unacked = max(n_unacked, MAX_UNACKED_EXPIRES)   # 4096: as before the cap
        s = Station()
        e.on_herald(s.chunk(10), 0.0)
        e.on_epoch(Epoch(LINK, EPOCH, e.expected_abs, None), 0.0)
        for _ in range(n_unacked):
            s.chunk(1)
            e.on_herald(s.chunk(1), 0.0)
        assert len(e.unacked_expires()) == n_unacked
        e.snapshot()
        reps = 200 if n_unacked > MAX_UNACKED_EXPIRES else 2000
        t0 = time.perf_counter()
        for k in range(reps):
            e.set_goodness(0.5 + (k % 2) / 4)   # a scalar changes: a delta every time
            d = e.snapshot_delta()
            json.dumps(d)
        results[n_unacked] = (time.perf_counter() - t0) / reps * 1e6
    with capsys.disabled():
        print(f"\nstore per message: {results[0]:.1f} µs with 0 unacked, "
              f"{results[MAX_UNACKED_EXPIRES]:.1f} µs with {MAX_UNACKED_EXPIRES} (the cap), "
              f"{results[4096]:.1f} µs with 4096 (uncapped, as in the flood before)")


# --------------------------------------------------------------------------- LinkService


class _FullBus:
    """A bus whose outgoing queue is full."""

    def __init__(self):
        self.attempts = 0
        self.connected = True

    def defer_until_idle(self, work):
        return False  # called outside a receiver's burst: the caller stores and sends now

    def publish(self, topic, type, body, **kw):
        from qnode.daemon.bus.client import BusOverloaded

        self.attempts += 1
        raise BusOverloaded("100000 messages wait for the broker (max_queue=100000)")


def _ctx(node: str):
    return link_context(node, _FullBus())


def _envelope(type_: str, body: dict, sender: str, msg_id: int):
    from qnode.daemon.bus.envelope import Message as Envelope

    return Envelope(type_, sender, msg_id, body, time.time(), signed=True)


@pytest.mark.asyncio
async def test_an_overloaded_bus_is_counted_not_raised(caplog):
    """BusOverloaded while sending (state already stored): counted, logged rate-limited, never
    raised out of a handler or the tick; the EXPIREs stay unacknowledged, to be resent."""
    from qnode.daemon.bus.telemetry import validate
    from qnode.daemon.klink.service import LinkService

    svc = LinkService(_ctx("alice"), LINK, "bob", "K", goodness=0.9, comm_delay_s=0.0)
    s = Station()
    k = 0
    for n in range(40):
        h = s.chunk(5)
        if n % 3 == 0:       # gaps: EXPIREs to send
            k += 1
            await svc.on_herald(_envelope("HERALD", h.to_dict(), "station", k))
    ep = Epoch(LINK, EPOCH, svc.end.expected_abs, None)
    await svc.on_peer_message(_envelope("EPOCH", ep.to_dict(), "bob", 1), wire(ep))
    ex = Expire(LINK, 1, 2, "bob", svc.end.expected_abs >> 32, svc.end.expected_abs >> 32)
    await svc.on_peer_message(_envelope("EXPIRE", ex.to_dict(), "bob", 2), wire(ex))
    # the tick path: resends fail the same way, the tick does not die
    async with svc.lock:
        await svc._commit(svc.end.tick(time.monotonic() + 100.0))
    t = svc.telemetry(1.0)
    assert t["send_overloaded_total"] == svc.ctx.bus.attempts > 0
    assert t["expires_unacked"] > 0
    validate({"node": "alice", "roles": ["memory"], "t": time.time(), "uptime_s": 1.0,
              "links": {LINK: t}})
    logged = [r for r in caplog.records if getattr(r, "send_overloaded_total", None)]
    assert len(logged) == 1 and logged[0].levelname == "WARNING"   # rate-limited
    # the state was stored before each attempt
    assert svc.ctx.store.links[LINK]["unacked_expires"]


@pytest.mark.asyncio
async def test_shed_pairs_are_logged_once_and_reported(caplog):
    from qnode.daemon.klink.service import LinkService

    svc = LinkService(_ctx("alice"), LINK, "bob", "K", goodness=0.9)
    svc.end.max_unacked = 2
    s = Station()
    k = 0
    for n in range(30):
        h = s.chunk(5)
        if n % 2 == 0:
            k += 1
            await svc.on_herald(_envelope("HERALD", h.to_dict(), "station", k))
        if n == 0:
            ep = Epoch(LINK, EPOCH, svc.end.expected_abs, None)
            await svc.on_peer_message(_envelope("EPOCH", ep.to_dict(), "bob", 1), wire(ep))
    t = svc.telemetry(1.0)
    assert t["pairs_shed_total"] > 0 and t["expires_unacked"] <= 2
    shed = [r for r in caplog.records if getattr(r, "pairs_shed_total", None)]
    assert len(shed) == 1 and shed[0].levelname == "WARNING"


def test_runs_whose_pairs_all_expired_are_forgotten_in_memory_and_store():
    """Under a flood the ends accept batches and expire them soon after (gaps, shedding): the
    records of runs whose pairs all expired are forgotten, in memory and in the store, long
    before the 2^30-number window would forget them (without that, most runs held here had
    no pair left: about 15 bytes per expired pair, 300 MiB per end in the flood benchmark)."""
    sim = LossySim(random.Random(11), 0.9, 0.0, MAX_UNACKED_EXPIRES)
    stored = {name: json.loads(json.dumps(e.snapshot())) for name, e in sim.ends.items()}
    for _ in range(5):
        sim.run([100] * 1000, period=CD / 200)
        for name, e in sim.ends.items():
            delta = e.snapshot_delta()
            if delta is not None:
                stored[name] = LinkEnd.apply_snapshot_delta(stored[name],
                                                            json.loads(json.dumps(delta)))
    a, b = sim.ends["alice"], sim.ends["bob"]
    assert_agree(a, b)
    for name, e in sim.ends.items():
        st_ = e.stats()
        assert st_["pairs_expired_total"] > 10 * st_["pairs_held"] > 0
        runs = e.snapshot()["runs"]
        with_pairs = sum(any(m[0] != "expired" for m in r["marks"]) for r in runs)
        assert len(runs) <= 2 * with_pairs + 33, (name, len(runs), with_pairs)
        # the store followed: what it holds restores the same pairs, without the old runs
        assert len(stored[name]["runs"]) == len(runs)
        back, _ = LinkEnd.restore(stored[name], now=0.0)
        assert back.inventory() == e.inventory()


class _GatedStore(MemoryLinkStore):
    """A link store whose writes wait at a gate once it is closed (a slow disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.open.set()
        self.waiting = threading.Event()   # a write is held at the closed gate

    def _gate(self) -> None:
        if not self.open.is_set():
            self.waiting.set()
            assert self.open.wait(60.0), "the gate was never opened"

    def save_link(self, link, snap):
        self._gate()
        super().save_link(link, snap)

    def save_link_delta(self, link, delta):
        self._gate()
        super().save_link_delta(link, delta)


class _RecordingBus:
    """Records what is published and, for each EXPIRE, whether the store already held it."""

    def __init__(self, store: MemoryLinkStore):
        self.store, self.connected = store, True
        self.sent: list[tuple[str, dict, bool]] = []

    def defer_until_idle(self, work):
        return False

    def publish(self, topic, type, body, **kw):
        stored = self.store.links.get(LINK, {}).get("unacked_expires", [])
        self.sent.append((type, json.loads(json.dumps(body)), bool(stored)))


@pytest.mark.asyncio
async def test_a_slow_lazy_store_does_not_hold_up_heralds_and_stores_stay_in_order():
    """The tick's lazy store (in-order batches, nothing to send) is written after the link's
    lock is released: with the write held at a closed gate, a herald is still applied. A
    change that sends (an EXPIRE) waits for its own store, which lands after the held one;
    the EXPIRE leaves only once the store holds it, and the store ends equal to the end."""
    from qnode.daemon.klink.service import LinkService

    store = _GatedStore()
    bus = _RecordingBus(store)
    ctx = link_context("alice", bus, store)
    writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")

    async def persist(fn):     # as NodeContext.persist: one writer thread, in call order
        await asyncio.get_running_loop().run_in_executor(writer, fn)
    ctx.persist = persist
    svc = LinkService(ctx, LINK, "bob", "K", goodness=0.9)
    station = HeraldStation([LINK])

    def herald(k: int, n: int = 10):
        station.successes(LINK, np.arange(n) % 4, k * 10**6 + np.arange(n, dtype=np.int64))
        (h,) = station.flush(k)
        return _envelope("HERALD", h.to_dict(), "station", k + 1)

    tick = asyncio.create_task(svc.tick_loop())
    try:
        await svc.on_herald(herald(0))
        await svc.persist()                        # the first, full store
        store.open.clear()
        await svc.on_herald(herald(1))             # in order: stored lazily by the tick
        assert await asyncio.to_thread(store.waiting.wait, 30.0), "no lazy store came"
        # the lazy store is held in the writer thread; the lock is free
        await asyncio.wait_for(svc.on_herald(herald(2)), 30.0)
        assert svc.end.expected_seq == 30
        expire = asyncio.create_task(svc.expire_pair(int(svc.end.inventory_seqs()[0])))
        await asyncio.sleep(0.3)
        assert not expire.done() and not bus.sent  # its store waits behind the held one
        store.open.set()
        await asyncio.wait_for(expire, 30.0)
        await svc.persist()
    finally:
        tick.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tick
        store.open.set()
        writer.shutdown(wait=True)
    assert [(t, stored) for t, _, stored in bus.sent] == [("EXPIRE", True)]
    restored, _ = LinkEnd.restore(store.load_links()[LINK], now=time.monotonic())
    assert restored.expected_seq == 30
    assert restored.inventory() == svc.end.inventory() and len(restored.inventory()) == 29
