"""An M link that makes keys (``[analyzer.keys]``): sifting and blocks between its two analyzers
over signed ``key/<link>`` messages, the keys into the node's key store.

The link's counter is the **leader**: it pairs its tags with the peer's detection times
(:class:`~qnode.daemon.acquisition.key_counter.KeyCounter`), sends ``SIFT`` for each batch of
coincidences and cuts blocks. The streamer is the **follower**: it sends its times (``TIMES`` on
``tags/<link>``, :mod:`qnode.daemon.bus.timewire`), keeps its outcomes
(:class:`~qnode.daemon.acquisition.key_counter.KeyTagLog`) and answers. Per block, in order::

    leader                                 follower
    KEY_SAMPLE   (its bits at k positions) →
                                           ← KEY_SAMPLED (errors of the sample per basis)
    KEY_OFFER    (plans, syndromes)        →             (or KEY_FINISH with an abort)
                                           ← KEY_REPLY   (decoded, or the chunks that failed)
    KEY_REVEAL   (more padding)            →             (while chunks fail)
    KEY_FINISH   (length, seed | abort)    →
                                           ← KEY_STORED  (the follower stored the keys the
                                                          leader masters)
    KEY_COMMIT                             →             (the leader stored all of them; the
                                                          follower stores those it masters)

:mod:`qnode.daemon.qkd` does the work (on a worker thread); this module moves the messages, keeps
one block in flight, restarts the session when the other end stops answering
(``block_timeout_s``), stores each block's key units (master alternating between the ends by
unit index, so both ends' applications can start a key) and reports the link's figures. A key
enters its master's store only after the other end has stored it (the ``KEY_STORED`` /
``KEY_COMMIT`` round): an application that takes a key at the master (``enc_keys``) finds it
at the other end (``dec_keys``) at once. Every
message is signed with the link's HMAC key (the pre-shared authentication key; see
docs/physicists/keys.md for what that assumes). Key material is never logged.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qnode.daemon.acquisition.key_counter import KeyCounter, KeyEvents, KeyTagLog
from qnode.daemon.bus import timewire
from qnode.daemon.bus.telemetry import LinkTelemetry, qber_fields
from qnode.daemon.kme.service import KmeService
from qnode.daemon.kme.store import KeyStore
from qnode.daemon.logs import RateLimitedLog
from qnode.daemon.qkd import estimate
from qnode.daemon.qkd.block import (
    ABORT_REASONS,
    BlockFollower,
    BlockLeader,
    BlockMessageError,
    BlockResult,
    SiftedBlock,
    StaleMessage,
)
from qnode.daemon.qkd.session import KeyFollower, KeyLeader, key_bit_flips
from qnode.daemon.quantum import estimators as est

if TYPE_CHECKING:
    from qnode.daemon.acquisition.cross_node import BasisLayout
    from qnode.daemon.bus.envelope import Message as Envelope
    from qnode.daemon.bus.topics import Topic
    from qnode.daemon.runtime.config import AnalyzerConfig, LinkConfig
    from qnode.daemon.runtime.context import NodeContext
    from qnode.native import TagBlock

log = logging.getLogger("qnode.keys")

#: key messages waiting for the session task; beyond this the newest is dropped (counted)
MAX_INBOX = 2000
#: SIFT messages without an answer before the leader gives the session up
MAX_UNANSWERED_SIFTS = 256
LEADER_TYPES = frozenset({"SIFTED", "KEY_SAMPLED", "KEY_REPLY", "KEY_STORED"})
FOLLOWER_TYPES = frozenset({"SIFT", "KEY_SAMPLE", "KEY_OFFER", "KEY_REVEAL", "KEY_FINISH",
                            "KEY_COMMIT"})
#: blocks whose keys wait for the other end's KEY_STORED / KEY_COMMIT (then: dropped, counted)
MAX_UNCOMMITTED = 16


#: a key unit on its way into the store: (master node, key id, material)
_Unit = tuple[str, uuid.UUID, bytes]


@dataclass
class _Active:
    """The block in flight."""

    block_id: uuid.UUID
    last_s: float               # the block's latest message (host monotonic clock, s)
    sample: SiftedBlock
    rest: SiftedBlock
    leader: BlockLeader | None = None
    follower: BlockFollower | None = None


class KeyFigures:
    """What the link's blocks gave (both ends), for the telemetry."""

    def __init__(self) -> None:
        self.blocks = 0
        self.aborted: collections.Counter[str] = collections.Counter()
        self.secret_bits = 0
        self.sifted_bits = 0
        self.disclosed_bits = 0
        self.units = 0
        self.stop_reason = ""
        self.last: BlockResult | None = None
        self.last_key: BlockResult | None = None
        self.sample_qber: tuple[float, float] = (math.nan, math.nan)
        self._rate_mark = (time.monotonic(), 0)

    def add(self, r: BlockResult) -> None:
        self.blocks += 1
        self.sifted_bits += r.n
        self.disclosed_bits += r.leak_bits
        if r.reason is not None:
            self.aborted[r.reason] += 1
            self.stop_reason = r.reason
        else:
            self.secret_bits += r.length
            self.stop_reason = ""
            self.last_key = r
        self.last = r

    def telemetry(self) -> LinkTelemetry:
        now = time.monotonic()
        t0, bits0 = self._rate_mark
        self._rate_mark = (now, self.secret_bits)
        t: LinkTelemetry = {
            "key_blocks_total": self.blocks, "key_aborts_total": dict(self.aborted),
            "key_secret_bits_total": self.secret_bits, "key_sifted_bits_total": self.sifted_bits,
            "key_disclosed_bits_total": self.disclosed_bits, "key_units_total": self.units,
            "key_stop_reason": self.stop_reason,
            "key_rate_bps": (self.secret_bits - bits0) / (now - t0) if now > t0 else 0.0}
        r = self.last_key     # the error counts of the latest block that made a key: exact
        if r is not None:
            t["key_f_ec"] = r.f_ec
            t["key_secret_fraction"] = r.length / r.n if r.n else 0.0
            for basis, q, n in (("Z", r.qber_z, r.n_z), ("X", r.qber_x, r.n_x)):
                if n and math.isfinite(q):
                    t.update(qber_fields(basis, est.physical_qber(round(q * n), n)))
            # as the Bell-test counter reports them: V_b = 1 − 2Q_b, F ≥ 1 − Q_Z − Q_X
            t["visibility"] = 1.0 - r.qber_z - r.qber_x
            t["fidelity_estimate"] = max(0.0, 1.0 - r.qber_z - r.qber_x)
            t["fidelity_method"] = "two_basis_bound"
        q_z, q_x = self.sample_qber
        if math.isfinite(q_z):
            t["key_sample_qber_z"] = q_z
        if math.isfinite(q_x):
            t["key_sample_qber_x"] = q_x
        return t


class KeyLink:
    """The key session of this node's end of M link ``link`` (module docstring); its keys go
    into ``store`` (default: the node's KME's)."""

    def __init__(self, ctx: NodeContext, link: LinkConfig, cfg: AnalyzerConfig,
                 layout: BasisLayout, *, leader: bool, store: KeyStore | None = None):
        assert cfg.keys is not None
        self.ctx, self.link, self.keys = ctx, link, cfg.keys
        self.params = cfg.keys.params
        self.leader = leader
        self.store = store if store is not None else ctx.shared(KmeService).store
        self.inbox: asyncio.Queue[tuple[str, Mapping[str, Any]]] = asyncio.Queue(MAX_INBOX)
        self.figures = KeyFigures()
        self.rejected: collections.Counter[str] = collections.Counter()
        self.dropped_messages = 0
        self.restarts = 0
        self.active: _Active | None = None
        # block id -> (the keys this end stores once the other end has, since when)
        self.uncommitted: dict[str, tuple[list[_Unit], float]] = {}
        self.uncommitted_dropped = 0
        self._sifted_s = time.monotonic()   # the latest SIFTED, or a SIFT sent with none waiting
        self._rlog = RateLimitedLog(log, 10.0)
        self._count_lock = asyncio.Lock()
        self._last_counts: tuple[float, int, int, int, int] | None = None
        pending = 4 * cfg.keys.block_bits
        self.counter: KeyCounter | None = None
        self.tag_log: KeyTagLog | None = None
        self.lead: KeyLeader | None = None
        self.follow: KeyFollower | None = None
        if leader:
            self.counter = KeyCounter(layout, cfg.window_ps, cfg.align_s)
            self.lead = KeyLeader(cfg.keys.block_bits, max_pending_bits=pending)
        else:
            self.tag_log = KeyTagLog(layout, max_age_s=cfg.keys.max_tag_age_s)
            # more than the leader holds: the leader's drops decide (qkd.session)
            self.follow = KeyFollower(self.tag_log.lookup, key_bit_flips(cfg.source_state),
                                      max_pending_bits=2 * pending)
        ctx.bus.subscribe(f"qnet/v1/{ctx.config.network}/{link.peer}/key/{link.id}")
        ctx.bus.on("key", self._on_key)

    # ------------------------------------------------------------------ the wire
    def _send(self, type_: str, body: Mapping[str, Any]) -> None:
        self.ctx.bus.publish(self.ctx.topics.key(self.link.id), type_, body,
                             sign_with=self.link.peer)

    async def _on_key(self, topic: Topic, msg: Envelope) -> None:
        allowed = LEADER_TYPES if self.leader else FOLLOWER_TYPES
        if topic.arg != self.link.id or msg.sender != self.link.peer or msg.type not in allowed:
            self._reject("unexpected", f"{msg.type} from {msg.sender} on {topic}")
            return
        try:
            self.inbox.put_nowait((msg.type, msg.body))
        except asyncio.QueueFull:
            self.dropped_messages += 1
            self._rlog("inbox_full", logging.WARNING, "key messages of %s dropped: the session "
                       "is %d messages behind", self.link.id, MAX_INBOX, link=self.link.id)

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        self._rlog(f"rejected:{reason}", logging.WARNING, "key message of %s rejected (%s): %s",
                   self.link.id, reason, detail, link=self.link.id, reason=reason)

    # ------------------------------------------------------------------ streams
    def times_body(self, block: TagBlock, t_end_ps: int, chunk: int) -> dict[str, Any]:
        """(Follower) the ``TIMES`` body of an own chunk; its outcomes stay in the tag log."""
        assert self.tag_log is not None
        times, first = self.tag_log.add(block, t_end_ps)
        return timewire.encode(times, link=self.link.id, chunk=chunk, t_end_ps=t_end_ps,
                               extra={"first_index": first})

    def add_own(self, block: TagBlock, t_end_ps: int, received_s: float | None = None) -> None:
        assert self.counter is not None
        self.counter.add_own(block, t_end_ps, received_s)

    def add_peer(self, body: Mapping[str, Any], received_s: float | None = None) -> None:
        """(Leader) a ``TIMES`` body; ValueError naming the field for a bad one."""
        assert self.counter is not None
        times = timewire.decode(body)
        first = body.get("first_index")
        if not isinstance(first, int) or isinstance(first, bool) or not 0 <= first < 1 << 62:
            raise ValueError(f"TIMES.first_index: expected a non-negative integer, "
                             f"got {first!r:.40}")
        self.counter.add_peer(times, first, int(body["t_end_ps"]), received_s)

    async def count(self) -> None:
        """(Leader) pair what both streams cover and send its ``SIFT``."""
        assert self.counter is not None and self.lead is not None
        async with self._count_lock:
            events: KeyEvents | None = await asyncio.to_thread(self.counter.process)
            if events is None or not events.peer_index.size:
                return
            if self.lead.waiting >= MAX_UNANSWERED_SIFTS:
                self._restart(f"{self.lead.waiting} SIFT messages unanswered")
            if not self.lead.waiting:
                self._sifted_s = time.monotonic()
            self._send("SIFT", self.lead.sift(events.peer_index, events.bases, events.bits))

    # ------------------------------------------------------------------ the session task
    async def run(self) -> None:
        """The role task: handle the peer's key messages in order; give up a stalled session."""
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that arrives as the queue hands out an item, and the task never ends
                async with asyncio.timeout(1.0):
                    type_, body = await self.inbox.get()
            except TimeoutError:
                self._check_stall()
                continue
            try:
                await (self._lead_message(type_, body) if self.leader
                       else self._follow_message(type_, body))
            except StaleMessage as exc:
                self._reject("stale", f"{type_}: {exc}")
            except BlockMessageError as exc:
                self._reject("protocol", f"{type_}: {exc}")
                self._give_up(f"{type_} did not fit: {exc}")
            except Exception as exc:   # a bug, not the peer's: say where, keep the session alive
                self.rejected["error"] += 1
                self._rlog("error", logging.ERROR, "key message %s of %s broke its handler",
                           type_, self.link.id, exc_info=exc, link=self.link.id)
                self._give_up(f"{type_} broke its handler")
            self._check_stall()

    def _give_up(self, why: str) -> None:
        """The session cannot go on as it is: the leader starts a new one. The follower keeps
        what it holds: the leader decides (a block the follower cannot follow is refused in its
        reply; a SIFT it could not answer ends in the leader's timeout)."""
        if self.leader:
            self._restart(why)

    def _check_stall(self) -> None:
        if not self.leader or self.lead is None:
            return
        now, limit = time.monotonic(), self.keys.block_timeout_s
        if self.active is not None and now - self.active.last_s > limit:
            self._restart(f"block {self.active.block_id}: no answer from {self.link.peer} for "
                          f"{limit:g} s")
        elif self.lead.waiting and now - self._sifted_s > limit:
            self._restart(f"SIFT: no answer from {self.link.peer} for {limit:g} s")

    def _restart(self, why: str) -> None:
        assert self.lead is not None
        self.restarts += 1
        self.active = None
        self.lead.restart()
        self._sifted_s = time.monotonic()
        log.warning("key session of %s restarted: %s", self.link.id, why,
                    extra={"link": self.link.id, "reason": why})

    # ------------------------------------------------------------------ leader
    async def _lead_message(self, type_: str, body: Mapping[str, Any]) -> None:
        lead = self.lead
        assert lead is not None
        if type_ == "SIFTED":   # on the loop: count() sifts on it too
            lead.on_sifted(body)
            self._sifted_s = time.monotonic()
        elif type_ == "KEY_SAMPLED":
            await self._on_sampled(body)
        elif type_ == "KEY_REPLY":
            await self._on_reply(body)
        elif type_ == "KEY_STORED":
            self._commit(body)
            self._send("KEY_COMMIT", {"block": str(body.get("block"))})
        if self.active is None:
            self._next_block()

    def _active_block(self, body: Mapping[str, Any]) -> _Active:
        a = self.active
        if a is None or body.get("block") != str(a.block_id):
            raise StaleMessage(f"block: {body.get('block')!r:.60} is not the block in flight")
        a.last_s = time.monotonic()
        return a

    def _next_block(self) -> None:
        assert self.lead is not None
        cut = self.lead.next_block()
        if cut is None:
            return
        start, block = cut
        sample, rest = estimate.split(block, estimate.sample_size(block.n,
                                                                  self.params.sample_bits))
        self.active = _Active(block.block_id, time.monotonic(), sample, rest)
        self._send("KEY_SAMPLE", {"session": str(self.lead.session), "start": start,
                                  "n": block.n, "block": str(block.block_id),
                                  **estimate.sample_message(sample)})

    async def _on_sampled(self, body: Mapping[str, Any]) -> None:
        a = self._active_block(body)
        if a.leader is not None:
            raise BlockMessageError("KEY_SAMPLED twice")
        sample = estimate.SampleEstimate(a.sample, body)
        self.figures.sample_qber = (sample.qber_z, sample.qber_x)
        threshold = self.params.qber_threshold
        if sample.above(threshold):
            self._finish_block(a, BlockResult(
                a.block_id, "qber_above_threshold", a.rest.n, *a.rest.counts(), sample.qber_z,
                sample.qber_x, 0, 0, 0, np.zeros(0, np.uint8)),
                {"block": str(a.block_id), "abort": "qber_above_threshold"})
            return
        a.leader = BlockLeader(a.rest, self.params, sample.plan_qber(threshold))
        offer, result = await asyncio.to_thread(a.leader.offer)
        if offer is None:
            assert result is not None and result.reason is not None
            self._finish_block(a, result, {"block": str(a.block_id), "abort": result.reason})
        else:
            self._send("KEY_OFFER", offer)

    async def _on_reply(self, body: Mapping[str, Any]) -> None:
        a = self._active_block(body)
        if a.leader is None:
            raise BlockMessageError("KEY_REPLY before an offer")
        kind, msg, result = await asyncio.to_thread(a.leader.on_reply, body)
        if kind == "reveal":
            self._send("KEY_REVEAL", msg)
            return
        assert result is not None
        self._finish_block(a, result, msg)

    def _finish_block(self, a: _Active, result: BlockResult, msg: Mapping[str, Any]) -> None:
        self._send("KEY_FINISH", msg)
        self.active = None
        self._record(result)

    # ------------------------------------------------------------------ follower
    async def _follow_message(self, type_: str, body: Mapping[str, Any]) -> None:
        follow = self.follow
        assert follow is not None
        if type_ == "SIFT":     # on the loop: the acquisition adds to the tag log on it
            self._send("SIFTED", follow.on_sift(body))
        elif type_ == "KEY_SAMPLE":
            block = follow.block(body)
            sample, rest = estimate.split(block, estimate.sample_size(block.n,
                                                                      self.params.sample_bits))
            reply = estimate.compare(sample, body)
            self.active = _Active(block.block_id, time.monotonic(), sample, rest,
                                  follower=BlockFollower(rest, self.params))
            self.figures.sample_qber = (
                reply["sample_errors_z"] / max(sample.counts()[0], 1),
                reply["sample_errors_x"] / max(sample.counts()[1], 1))
            self._send("KEY_SAMPLED", {"block": str(block.block_id), **reply})
        elif type_ in ("KEY_OFFER", "KEY_REVEAL"):
            a = self._active_block(body)
            assert a.follower is not None
            step = a.follower.on_offer if type_ == "KEY_OFFER" else a.follower.on_reveal
            reply, result = await asyncio.to_thread(step, body)
            self._send("KEY_REPLY", reply)
            if result is not None:
                log.warning("key block %s of %s: this end could not follow (%s)", a.block_id,
                            self.link.id, result.reason, extra={"link": self.link.id})
        elif type_ == "KEY_FINISH":
            a = self._active_block(body)
            assert a.follower is not None
            self.active = None
            reason = body.get("abort")
            if reason is not None and reason not in ABORT_REASONS:
                raise BlockMessageError("abort: unknown reason")
            result = await asyncio.to_thread(a.follower.finish, body)
            self._record(result)
            if result.reason is None:
                self._send("KEY_STORED", {"block": str(result.block_id)})
        elif type_ == "KEY_COMMIT":
            self._commit(body)

    # ------------------------------------------------------------------ results
    def _record(self, r: BlockResult) -> None:
        self.figures.add(r)
        extra = {"link": self.link.id, "block": str(r.block_id), "n": r.n,
                 "qber_z": round(r.qber_z, 5), "qber_x": round(r.qber_x, 5)}
        if r.reason is not None:
            self._rlog(f"abort:{r.reason}", logging.WARNING,
                       "key block %s of %s aborted: %s (QBER Z %.4f, X %.4f, %d sifted bits)",
                       r.block_id, self.link.id, r.reason, r.qber_z, r.qber_x, r.n,
                       reason=r.reason, **extra)
            return
        me, peer = self.ctx.node, self.link.peer
        leader_node, follower_node = (me, peer) if self.leader else (peer, me)
        # unit i is mastered by the leader for even i, by the follower for odd i. The follower
        # stores the leader's now and its own at KEY_COMMIT; the leader stores all of them at
        # KEY_STORED (module docstring)
        units = [(leader_node if i % 2 == 0 else follower_node, key_id, material)
                 for i, (key_id, material) in enumerate(r.key_units(self.store.key_size_bits))]
        now = [] if self.leader else [u for u in units if u[0] == leader_node]
        self._store(now)
        self._hold(str(r.block_id), [u for u in units if u not in now])
        log.info("key block %s of %s: %d secret bits from %d sifted (QBER Z %.4f, X %.4f, "
                 "f_EC %.3f), %d keys", r.block_id, self.link.id, r.length, r.n, r.qber_z,
                 r.qber_x, r.f_ec, len(units),
                 extra={**extra, "length": r.length, "f_ec": round(r.f_ec, 4),
                        "keys": len(units)})

    def _hold(self, block: str, units: list[_Unit]) -> None:
        """Keep ``units`` until the other end has stored its copies (bounded)."""
        if not units:
            return
        while len(self.uncommitted) >= MAX_UNCOMMITTED:
            oldest = next(iter(self.uncommitted))
            self.uncommitted_dropped += len(self.uncommitted.pop(oldest)[0])
            log.warning("keys of block %s of %s dropped: %s never confirmed storing them",
                        oldest, self.link.id, self.link.peer,
                        extra={"link": self.link.id, "block": oldest})
        self.uncommitted[block] = (units, time.monotonic())

    def _commit(self, body: Mapping[str, Any]) -> None:
        """The other end stored its copies of a block's keys: store what was held for it."""
        held = self.uncommitted.pop(str(body.get("block")), None)
        if held is None:
            raise StaleMessage(f"block: {body.get('block')!r:.60} holds no keys here")
        self._store(held[0])

    def _store(self, units: list[_Unit]) -> None:
        """Put (master, key id, material) units of this link into the key store."""
        by_master: dict[str, list[tuple[uuid.UUID, bytes]]] = {}
        for master, key_id, material in units:
            by_master.setdefault(master, []).append((key_id, material))
        for master, keys in by_master.items():
            self.figures.units += self.store.add(self.link.id, self.link.peer, master, keys)

    # ------------------------------------------------------------------ telemetry
    @property
    def state(self) -> str:
        if self.leader and (self.counter is None or self.counter.tracker is None):
            return "acquiring"
        if self.figures.last is None:
            return "sifting"
        return "stopped" if self.figures.stop_reason else "producing"

    def telemetry(self, interval_s: float) -> LinkTelemetry:
        t = self.figures.telemetry()
        t.update({"type": "M", "peer": self.link.peer,
                  "role": "counter" if self.leader else "end", "key_state": self.state,
                  "key_session_restarts_total": self.restarts,
                  "key_messages_rejected_total": sum(self.rejected.values()),
                  "key_messages_dropped_total": self.dropped_messages,
                  "key_units_waiting": sum(len(u) for u, _ in self.uncommitted.values()),
                  "key_units_dropped_total": self.uncommitted_dropped})
        session = self.lead if self.lead is not None else self.follow
        assert session is not None
        t["key_sifted_pending_bits"] = session.sifted.size
        t["key_sifted_dropped_bits_total"] = session.sifted.dropped_bits
        c = self.counter
        if c is not None:
            t.update(self._counter_telemetry(c, interval_s))
        return t

    def _counter_telemetry(self, c: KeyCounter, interval_s: float) -> LinkTelemetry:
        last = self._last_counts
        now = (c.counted_s, c.coincidences, c.pairs.total_accidentals, c.peer_tags,
               self.lead.sifted_total if self.lead else 0)
        self._last_counts = now
        t: LinkTelemetry = {"unmatched_tags_total": c.dropped_tags}
        if last is not None:
            span = now[0] - last[0]
            t["remote_tags_rate_hz"] = (now[3] - last[3]) / interval_s
            if span > 0:
                t["coincidence_rate_hz"] = (now[1] - last[1]) / span
                t["accidental_rate_hz"] = (now[2] - last[2]) / span
                t["sifted_key_rate_hz"] = (now[4] - last[4]) / span
        if c.pairs.total_accidentals:
            t["car"] = est.car(c.coincidences, c.pairs.total_accidentals).value
        tr = c.tracker
        if tr is None:
            t["tracker_state"] = "ACQUIRING"
        else:
            t["tracker_state"] = tr.state.status.name
            t["offset_ps"] = float(tr.offset_at(max(c.fed_to, 0)))
            t["drift_ppb"] = float(tr.state.drift_ppm * 1e3)
        return t
