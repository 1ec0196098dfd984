"""Link layer: the entanglement-generation service of one link, as pure logic (no I/O, no clock).

DESIGN §4; messages and rules from ``reference/qnet_anchors.md`` §1:

* §1.1 (draft-dahlberg-ll-quantum-03): the service interface. A higher layer sends CREATE; the
  link layer answers ACK (with a create id unique per node) or ERR, then one OK per pair, or ERR
  later (EXPIRE of pairs already OK'd, TIMEOUT after Max Time). ``(link, seq)`` is the pair id.
* §1.2 (QLinkLayerSimulations ``egp.py``): the heralding station numbers its successes per link
  (``mhp_seq``) and each end applies ``_process_mhp_seq``: accept ``seq == expected``; ignore a
  stale ``seq < expected``; on a jump ``seq > expected`` issue ERR_EXPIRE upward, send
  EXPIRE(old, new) to the peer and set ``expected = seq + 1``. The peer drops the range, moves its
  own ``expected`` up to ``new`` if it was behind, and answers EXPIRE_ACK(its expected); each side
  takes the max. An EXPIRE not acknowledged within 2×comm_delay is sent again.

Invariant that makes both ends agree: every sequence number is, at each end, either *accepted*
(a herald for it arrived while it was the expected one) or *skipped* (``expected`` moved past it
without accepting it). Every skip and every local drop is sent to the peer as an EXPIRE, and that
EXPIRE is retransmitted until the peer acknowledges it; the peer drops the range. So once all
EXPIREs are acknowledged, a pair is live at one end iff it is live at the other.

Choices (documented extensions of the draft):

* **Sequence space**: the draft's 16 bits (``SEQ_BITS``), compared with serial-number arithmetic
  (RFC 1982): ``a < b`` iff ``0 < (b − a) mod 2^16 < 2^15``. A herald more than 2^15 − 1 ahead
  is therefore treated as stale. Pairs are expired (and the peer told) once they are more than
  ``MAX_PAIR_AGE`` = 2^14 numbers old, so a pair id is never ambiguous inside the window.
* **Herald batches** carry ``next_seq``, the station's counter after the batch. An empty batch is
  a heartbeat: an end that lost the last heralds learns of the gap from the next chunk's batch
  (the EGP only found a gap at the next success).
* **EXPIRE_ACK** echoes the acknowledged ``[seq_lo, seq_hi)`` (the EGP echoes the queue id), so an
  acknowledgement names one EXPIRE.
* **Node ids** are strings (MQTT node names) instead of the draft's 32-bit integers.
* **Times**: ``now`` is monotonic seconds, injected by the caller; ``max_time_ms`` is ms (0 means
  no limit); ``time_ps`` / ``goodness_time_ps`` are integer picoseconds on the node's time-tagger
  time base (the herald's detection time).
* **Goodness** is a float fidelity estimate in [0, 1] (the draft packs it into 16 bits).

Routing of the returned actions: :class:`Expire` and :class:`ExpireAck` go to the peer end of the
link; :class:`Ack`, :class:`Ok` and :class:`Err` go up to the requesting layer
(:func:`split_actions`). Persistence: the caller must store :meth:`LinkEnd.snapshot` *before*
sending the peer messages a call returned (write-ahead), so a restart never forgets an EXPIRE the
peer already acted on.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "SEQ_BITS", "SEQ_MOD", "SEQ_HALF", "MAX_PAIR_AGE", "BELL_STATES", "BASES", "RANDOM_BASIS",
    "ErrCode", "Create", "Ack", "Ok", "Err", "Expire", "ExpireAck", "HeraldEntry", "Herald",
    "Message", "message_from_dict", "split_actions", "seq_add", "seq_diff", "seq_lt",
    "seq_in_range", "PairRecord", "CreateIdAllocator", "LinkEnd", "HeraldStation",
]

# the message names are re-exported: callers import everything link-layer from here
from .ll_messages import (  # noqa: F401
    BASES,
    BELL_STATES,
    MAX_PAIR_AGE,
    PAIR_STATUSES,
    RANDOM_BASIS,
    SEQ_BITS,
    SEQ_HALF,
    SEQ_MOD,
    Ack,
    Create,
    Err,
    ErrCode,
    Expire,
    ExpireAck,
    Herald,
    HeraldEntry,
    Message,
    Ok,
    _bad,
    _check_choice,
    _check_float,
    _check_int,
    _check_seq,
    _check_str,
    message_from_dict,
    seq_add,
    seq_diff,
    seq_in_range,
    seq_lt,
    split_actions,
)

# --------------------------------------------------------------------------- link end state


@dataclass
class PairRecord:
    """One pair of the inventory. ``status``: "live" (in memory, not OK'd; possibly reserved by
    ``create_id`` for a non-consecutive request), "delivered" (OK'd under ``create_id``),
    "expired" (gone; kept until it ages out of the window, for the record)."""

    seq: int
    bell_state: str
    goodness: float
    time_ps: int
    create_id: int | None = None
    status: str = "live"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Request:
    create_id: int
    create: Create
    submitted: float
    reserved: list[int] = field(default_factory=list)
    delivered: int = 0


class CreateIdAllocator:
    """Create ids, 16 bits, unique per requesting node (draft §1.1 ACK). Share one allocator
    between the link ends of a node; ids still pending at the asking end are skipped."""

    def __init__(self, next_id: int = 0) -> None:
        _check_int("CreateIdAllocator", "next_id", next_id, 0, 0xFFFF)
        self.next_id = next_id

    def allocate(self, in_use: Iterable[int] = ()) -> int:
        used = set(in_use)
        for _ in range(0x10000):
            cid = self.next_id
            self.next_id = (self.next_id + 1) & 0xFFFF
            if cid not in used:
                return cid
        raise RuntimeError("all 65536 create ids are in use")


MeasureFn = Callable[[int, Create], tuple[int, str]]
RestartPolicy = Literal["resume", "expire_all"]
_SNAPSHOT_VERSION = 1


class LinkEnd:
    """One end (``node``) of ``link`` towards ``peer``: sequence state, pair inventory, pending
    CREATEs and unacknowledged EXPIREs. Every method takes ``now`` (monotonic s) and returns the
    messages to send (:func:`split_actions`).

    ``max_fidelity`` is the best fidelity this link can reach (the EGP FEU's
    ``get_max_fidelity``); ``goodness`` the current fidelity estimate stamped on new pairs
    (:meth:`set_goodness`). ``measure(seq, create)`` returns (outcome, basis) for measure-directly
    requests; without it, M requests get ERR_UNSUPP. ``purposes``: allowed purpose ids (None: all).
    """

    def __init__(self, node: str, peer: str, link: str, *, comm_delay: float = 0.05,
                 max_fidelity: float = 1.0, goodness: float | None = None,
                 purposes: Iterable[int] | None = None, initial_seq: int = 0,
                 measure: MeasureFn | None = None,
                 create_ids: CreateIdAllocator | None = None) -> None:
        c = "LinkEnd"
        _check_str(c, "node", node)
        _check_str(c, "peer", peer)
        _check_str(c, "link", link)
        _check_float(c, "comm_delay", comm_delay, 0.0)
        _check_float(c, "max_fidelity", max_fidelity, 0.0, 1.0)
        _check_seq(c, "initial_seq", initial_seq)
        self.node, self.peer, self.link = node, peer, link
        self.comm_delay = float(comm_delay)
        self.max_fidelity = float(max_fidelity)
        self.goodness = self.max_fidelity
        if goodness is not None:
            self.set_goodness(goodness)
        self.purposes = None if purposes is None else frozenset(purposes)
        self.measure = measure
        self.create_ids = create_ids if create_ids is not None else CreateIdAllocator()
        self._expected = initial_seq
        self._records: dict[int, PairRecord] = {}     # insertion order = serial seq order
        self._requests: list[_Request] = []
        self._unacked: dict[tuple[int, int], float] = {}  # (lo, hi) -> resend deadline
        self._last_now = 0.0

    # ------------------------------------------------------------------ views

    @property
    def expected_seq(self) -> int:
        """The next sequence number this end will accept (EGP ``expected_seq``)."""
        return self._expected

    def inventory(self) -> list[tuple[str, int]]:
        """Pair ids ``(link, seq)`` of the pairs that exist (live or delivered), oldest first."""
        recs = [r for r in self._records.values() if r.status != "expired"]
        recs.sort(key=lambda r: -seq_diff(self._expected, r.seq))
        return [(self.link, r.seq) for r in recs]

    def pair(self, seq: int) -> PairRecord | None:
        """The record of pair ``seq`` (any status), or None."""
        return self._records.get(seq)

    def pending_creates(self) -> list[int]:
        """Create ids of the requests not yet fulfilled, in service order."""
        return [r.create_id for r in self._ordered_requests()]

    def unacked_expires(self) -> list[tuple[int, int]]:
        """The ``[lo, hi)`` ranges sent to the peer and not yet acknowledged."""
        return list(self._unacked)

    def set_goodness(self, goodness: float) -> None:
        """Set the fidelity estimate stamped on pairs heralded from now on."""
        _check_float("LinkEnd", "goodness", goodness, 0.0, 1.0)
        self.goodness = float(goodness)

    # ------------------------------------------------------------------ CREATE

    def request(self, create: Create, now: float) -> list[Message]:
        """Accept a CREATE (draft §1.1): ACK with a fresh create id, then any OKs that pairs
        already in memory can serve; or ERR at CREATE time — UNSUPP if ``remote_node`` is not
        this link's peer, if ``min_fidelity`` exceeds ``max_fidelity`` (EGP FEU rule) or for an
        M request without a ``measure`` function; REJECTED for a purpose id not allowed."""
        self._seen(now)
        if not isinstance(create, Create):
            raise TypeError(f"request: expected a Create, got {type(create).__name__}")
        cid = self.create_ids.allocate(r.create_id for r in self._requests)
        if create.remote_node != self.peer:
            return [Err(cid, ErrCode.UNSUPP)]
        if create.min_fidelity > self.max_fidelity:
            return [Err(cid, ErrCode.UNSUPP)]
        if create.tpe == "M" and self.measure is None:
            return [Err(cid, ErrCode.UNSUPP)]
        if self.purposes is not None and create.purpose_id not in self.purposes:
            return [Err(cid, ErrCode.REJECTED)]
        self._requests.append(_Request(cid, create, now))
        return [Ack(cid), *self._serve()]

    def _ordered_requests(self) -> list[_Request]:
        # EGP strict priority (0 first), FIFO within a priority (stable sort).
        return sorted(self._requests, key=lambda r: r.create.priority)

    def _serve(self) -> list[Message]:
        """Give live, unreserved pairs (oldest first) to the first request, in service order,
        whose ``min_fidelity`` the pair's goodness meets."""
        if not self._requests:
            return []
        out: list[Message] = []
        for rec in list(self._records.values()):
            if rec.status != "live" or rec.create_id is not None:
                continue
            req = next((r for r in self._ordered_requests()
                        if rec.goodness >= r.create.min_fidelity), None)
            if req is None:
                continue
            rec.create_id = req.create_id
            if req.create.consecutive:
                out.append(self._deliver(rec, req))
                req.delivered += 1
                done = req.delivered >= req.create.number
            else:
                req.reserved.append(rec.seq)
                done = len(req.reserved) >= req.create.number
                if done:  # all pairs in memory at the same time: OK them together
                    out.extend(self._deliver(self._records[s], req) for s in req.reserved)
                    req.delivered, req.reserved = len(req.reserved), []
            if done:
                self._requests.remove(req)
                if not self._requests:
                    break
        return out

    def _deliver(self, rec: PairRecord, req: _Request) -> Ok:
        rec.status = "delivered"
        rec.create_id = req.create_id
        cr = req.create
        if cr.tpe == "M":
            assert self.measure is not None
            outcome, basis = self.measure(rec.seq, cr)
            return Ok(req.create_id, self.link, rec.seq, rec.bell_state, rec.goodness,
                      cr.purpose_id, self.peer, "M", None, outcome, basis)
        return Ok(req.create_id, self.link, rec.seq, rec.bell_state, rec.goodness,
                  cr.purpose_id, self.peer, "K", rec.time_ps)

    # ------------------------------------------------------------------ heralds

    def on_herald(self, batch: Herald, now: float) -> list[Message]:
        """Apply the EGP ``_process_mhp_seq`` rule (§1.2) to each entry in order, then to the
        batch's ``next_seq`` (a heartbeat closes a gap at the tail), then serve requests."""
        self._seen(now)
        self._check_link(batch.link, "Herald")
        out: list[Message] = []
        for e in batch.entries:
            if e.seq == self._expected:
                out += self._accept(e)
            elif seq_lt(self._expected, e.seq):
                out += self._skip_to(e.seq, now)
                out += self._accept(e)
            # else: stale (seq < expected, or ≥ 2^15 ahead): ignore.
        if seq_lt(self._expected, batch.next_seq):
            out += self._skip_to(batch.next_seq, now)
        return out + self._serve()

    def _accept(self, e: HeraldEntry) -> list[Message]:
        """``seq == expected``: store the pair, ``expected += 1`` (mod 2^16)."""
        self._records.pop(e.seq, None)  # a wrapped-over record; the age rule already expired it
        self._records[e.seq] = PairRecord(e.seq, e.bell_state, self.goodness, e.time_ps)
        self._expected = seq_add(e.seq, 1)
        return self._age_out()

    def _skip_to(self, new_expected: int, now: float) -> list[Message]:
        """``expected`` jumps to ``new_expected`` without accepting ``[expected, new)``: ERR_EXPIRE
        upward and EXPIRE(old, new) to the peer (§1.2)."""
        lo, hi = self._expected, new_expected
        self._expected = hi
        out: list[Message] = [Err(None, ErrCode.EXPIRE, self.link, lo, hi, self.node)]
        out += self._drop(lo, hi, self.node)  # normally empty: nothing was accepted there
        out.append(self._send_expire(lo, hi, now))
        return out + self._age_out()

    # ------------------------------------------------------------------ EXPIRE exchange

    def on_expire(self, msg: Expire, now: float) -> list[Message]:
        """Peer's EXPIRE (§1.2 ``cmd_EXPIRE``): drop ``[lo, hi)`` (ERR_EXPIRE upward for pairs
        there), move ``expected`` up to ``hi`` if behind — expiring our own skipped
        ``[expected, lo)`` to the peer when ``expected < lo`` — and answer EXPIRE_ACK(expected).
        Idempotent: a duplicate is dropped again (nothing left) and acknowledged again."""
        self._seen(now)
        self._check_link(msg.link, "Expire")
        out = self._drop(msg.seq_lo, msg.seq_hi, msg.origin)
        if seq_lt(self._expected, msg.seq_hi):
            if seq_lt(self._expected, msg.seq_lo):
                out += self._skip_to(msg.seq_lo, now)
            self._expected = msg.seq_hi
            out += self._age_out()
        out.append(ExpireAck(self.link, self._expected, msg.seq_lo, msg.seq_hi))
        return out + self._serve()

    def on_expire_ack(self, msg: ExpireAck, now: float) -> list[Message]:
        """Peer's EXPIRE_ACK (§1.2): stop resending that EXPIRE; take the max of the two
        ``expected`` values — moving up skips ``[expected, peer's)``, which is expired to the
        peer like any other skip."""
        self._seen(now)
        self._check_link(msg.link, "ExpireAck")
        self._unacked.pop((msg.seq_lo, msg.seq_hi), None)
        if seq_lt(self._expected, msg.expected_seq):
            return self._skip_to(msg.expected_seq, now) + self._serve()
        return []

    def expire(self, seq_lo: int, seq_hi: int, now: float) -> list[Message]:
        """A local decision (e.g. memory timeout) to drop pairs ``[seq_lo, seq_hi)``: ERR_EXPIRE
        upward for the pairs there and EXPIRE to the peer. The range must not reach beyond
        ``expected_seq``."""
        self._seen(now)
        _check_seq("expire", "seq_lo", seq_lo)
        _check_seq("expire", "seq_hi", seq_hi)
        n = seq_diff(seq_hi, seq_lo)
        if not 0 < n < SEQ_HALF or seq_lt(self._expected, seq_hi):
            raise ValueError(f"expire.seq_hi: expected a non-empty range ending at or before "
                             f"expected_seq={self._expected}, got [{seq_lo}, {seq_hi})")
        out = self._drop(seq_lo, seq_hi, self.node)
        out.append(self._send_expire(seq_lo, seq_hi, now))
        return out + self._serve()

    def _send_expire(self, lo: int, hi: int, now: float) -> Expire:
        self._unacked[(lo, hi)] = now + 2.0 * self.comm_delay
        return Expire(self.link, lo, hi, self.node)

    def _drop(self, lo: int, hi: int, origin: str) -> list[Message]:
        """Mark live/delivered pairs in ``[lo, hi)`` expired; release reservations; one
        ERR_EXPIRE upward per create id touched (None for pairs not yet OK'd)."""
        touched: dict[int | None, None] = {}
        for rec in self._records.values():
            if rec.status == "expired" or not seq_in_range(rec.seq, lo, hi):
                continue
            if rec.status == "live" and rec.create_id is not None:
                for req in self._requests:
                    if req.create_id == rec.create_id and rec.seq in req.reserved:
                        req.reserved.remove(rec.seq)
                touched[None] = None
            else:
                touched[rec.create_id if rec.status == "delivered" else None] = None
            rec.status = "expired"
        return [Err(cid, ErrCode.EXPIRE, self.link, lo, hi, origin) for cid in touched]

    def _age_out(self) -> list[Message]:
        """Window rule: pairs more than MAX_PAIR_AGE numbers behind ``expected`` are expired
        (and the peer told) so a 16-bit pair id is never reused while its pair exists; expired
        records that old are forgotten."""
        aged: list[PairRecord] = []
        for rec in self._records.values():
            if seq_diff(self._expected, rec.seq) <= MAX_PAIR_AGE:
                break
            aged.append(rec)
        if not aged:
            return []
        out: list[Message] = []
        alive = [r for r in aged if r.status != "expired"]
        if alive:
            lo, hi = alive[0].seq, seq_add(alive[-1].seq, 1)
            out += self._drop(lo, hi, self.node)
            out.append(self._send_expire(lo, hi, self._last_now))
        for rec in aged:
            del self._records[rec.seq]
        return out

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> list[Message]:
        """Resend EXPIREs unacknowledged for 2×comm_delay (§1.2); ERR_TIMEOUT for requests past
        Max Time (their reserved, not yet OK'd pairs go back to the pool)."""
        self._seen(now)
        out: list[Message] = []
        for (lo, hi), deadline in list(self._unacked.items()):
            if now >= deadline:
                out.append(self._send_expire(lo, hi, now))
        for req in list(self._requests):
            mt = req.create.max_time_ms
            if mt > 0 and now - req.submitted >= mt / 1000.0:
                self._requests.remove(req)
                for s in req.reserved:
                    self._records[s].create_id = None
                out.append(Err(req.create_id, ErrCode.TIMEOUT))
        return out + self._serve()

    def _seen(self, now: float) -> None:
        _check_float("LinkEnd", "now", now, -math.inf)
        self._last_now = max(self._last_now, float(now))

    def _check_link(self, link: str, what: str) -> None:
        if link != self.link:
            raise ValueError(f"{what}.link: expected {self.link!r}, got {link!r}")

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state. Request ages are stored relative to the latest ``now`` seen, so a
        restore on a new monotonic clock keeps their remaining Max Time."""
        return {
            "version": _SNAPSHOT_VERSION,
            "node": self.node, "peer": self.peer, "link": self.link,
            "comm_delay": self.comm_delay, "max_fidelity": self.max_fidelity,
            "goodness": self.goodness,
            "purposes": None if self.purposes is None else sorted(self.purposes),
            "expected_seq": self._expected,
            "next_create_id": self.create_ids.next_id,
            "records": [r.to_dict() for r in self._records.values()],
            "requests": [{"create_id": r.create_id, "create": r.create.to_dict(),
                          "elapsed_s": self._last_now - r.submitted,
                          "reserved": list(r.reserved), "delivered": r.delivered}
                         for r in self._requests],
            "unacked_expires": [[lo, hi] for lo, hi in self._unacked],
        }

    @classmethod
    def restore(cls, snap: Mapping[str, Any], *, now: float,
                restart_policy: RestartPolicy = "resume", measure: MeasureFn | None = None,
                create_ids: CreateIdAllocator | None = None) -> tuple[LinkEnd, list[Message]]:
        """Rebuild a link end after a restart; returns it and the messages to send.

        "resume": keep the inventory and requests; unacknowledged EXPIREs are resent at once (the
        restart may have lost them). "expire_all": additionally expire every pair it had, with
        ERR_EXPIRE upward and an EXPIRE to the peer, so both ends end up without them. A
        ``create_ids`` allocator shared by the node replaces the snapshot's counter.
        """
        if restart_policy not in ("resume", "expire_all"):
            raise _bad("restore", "restart_policy", "'resume' or 'expire_all'", restart_policy)
        s = _Snap(snap)
        if s.get("version", int) != _SNAPSHOT_VERSION:
            raise _bad("snapshot", "version", str(_SNAPSHOT_VERSION), snap.get("version"))
        purposes = s.get("purposes", (list, type(None)))
        end = cls(s.get("node", str), s.get("peer", str), s.get("link", str),
                  comm_delay=s.get("comm_delay", (int, float)),
                  max_fidelity=s.get("max_fidelity", (int, float)),
                  goodness=s.get("goodness", (int, float)), purposes=purposes,
                  initial_seq=s.get("expected_seq", int), measure=measure,
                  create_ids=create_ids if create_ids is not None
                  else CreateIdAllocator(s.get("next_create_id", int)))
        end._seen(now)
        for i, rd in enumerate(s.get("records", list)):
            try:
                rec = PairRecord(**rd)
                _check_seq("PairRecord", "seq", rec.seq)
                _check_choice("PairRecord", "status", rec.status, PAIR_STATUSES)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"snapshot.records[{i}]: {exc}") from None
            end._records[rec.seq] = rec
        for i, rq in enumerate(s.get("requests", list)):
            try:
                req = _Request(rq["create_id"], Create.from_dict(rq["create"]),
                               now - float(rq["elapsed_s"]), list(rq["reserved"]),
                               int(rq["delivered"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"snapshot.requests[{i}]: {exc!r}") from None
            end._requests.append(req)
        out: list[Message] = []
        for i, pair in enumerate(s.get("unacked_expires", list)):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise _bad("snapshot", f"unacked_expires[{i}]", "[lo, hi]", pair)
            out.append(end._send_expire(int(pair[0]), int(pair[1]), now))
        if restart_policy == "expire_all":
            alive = [r for r in end._records.values() if r.status != "expired"]
            if alive:
                lo = alive[0].seq
                out += end._drop(lo, end._expected, end.node)
                out.append(end._send_expire(lo, end._expected, now))
            for req in end._requests:
                req.reserved = []
        return end, out + end._serve()


class _Snap:
    """Typed access to a snapshot dict; errors name the key."""

    def __init__(self, d: Mapping[str, Any]) -> None:
        if not isinstance(d, Mapping):
            raise ValueError(f"snapshot: expected a mapping, got {type(d).__name__}")
        self.d = d

    def get(self, key: str, types: type | tuple[type, ...]) -> Any:
        if key not in self.d:
            raise ValueError(f"snapshot.{key}: missing field")
        v = self.d[key]
        if not isinstance(v, types) or (isinstance(v, bool) and types in (int, (int, float))):
            raise _bad("snapshot", key, f"{types}", v)
        return v


# --------------------------------------------------------------------------- heralding station


class HeraldStation:
    """The midpoint's side (EGP §1.2 MHP): numbers successes per link with its own ``mhp_seq``
    and batches them per chunk into one :class:`Herald` per link (empty batches included: they
    are the heartbeat that lets an end detect a lost tail)."""

    def __init__(self, links: Iterable[str] = (), *, initial_seq: int = 0) -> None:
        self._next: dict[str, int] = {}
        self._batch: dict[str, list[HeraldEntry]] = {}
        for link in links:
            self.add_link(link, initial_seq)

    def add_link(self, link: str, initial_seq: int = 0) -> None:
        _check_str("HeraldStation", "link", link)
        _check_seq("HeraldStation", "initial_seq", initial_seq)
        if link in self._next:
            raise ValueError(f"HeraldStation.link: {link!r} already added")
        self._next[link] = initial_seq
        self._batch[link] = []

    def next_seq(self, link: str) -> int:
        return self._next[link]

    def success(self, link: str, bell_state: str, time_ps: int) -> int:
        """Record one heralded success on ``link``; returns its sequence number."""
        if link not in self._next:
            raise ValueError(f"HeraldStation.link: unknown link {link!r}")
        seq = self._next[link]
        self._batch[link].append(HeraldEntry(seq, bell_state, time_ps))
        self._next[link] = seq_add(seq, 1)
        return seq

    def flush(self, chunk: int) -> list[Herald]:
        """One Herald per link for ``chunk`` (in link order), and start new batches."""
        out = [Herald(link, chunk, tuple(self._batch[link]), self._next[link])
               for link in self._next]
        for b in self._batch.values():
            b.clear()
        return out

    def snapshot(self) -> dict[str, Any]:
        """Per-link counters (an unflushed batch is not persisted: its pairs are lost, and the
        ends see the gap at the next batch)."""
        return {"next_seq": dict(self._next)}

    @classmethod
    def restore(cls, snap: Mapping[str, Any]) -> HeraldStation:
        nxt = snap.get("next_seq") if isinstance(snap, Mapping) else None
        if not isinstance(nxt, Mapping):
            raise _bad("snapshot", "next_seq", "a mapping link -> seq", nxt)
        st = cls()
        for link, seq in nxt.items():
            st.add_link(link, seq)
        return st
