"""Link layer: the entanglement-generation service of one link, as pure logic (no I/O, no clock).

Messages and rules (docs/integrators/link-layer.md tells them to integrators):

* The service interface of the IETF Internet-Draft "The Link Layer service in a Quantum
  Internet" (Dahlberg, Skrzypczyk, Wehner, draft-dahlberg-ll-quantum-03, 2019; "the draft"
  below). A higher layer sends CREATE; the link layer answers ACK (with a create id unique per
  node) or ERR, then one OK per pair, or ERR later (EXPIRE of pairs already OK'd, TIMEOUT after
  Max Time). ``(link, seq)`` is the pair id.
* The entanglement generation protocol (EGP) of Dahlberg et al., "A link layer protocol for
  quantum networks", SIGCOMM 2019, as their simulation code QLinkLayerSimulations implements it
  (``egp.py``): the heralding station numbers its successes per link (``mhp_seq``) and each end
  applies ``_process_mhp_seq``: accept ``seq == expected``; ignore a stale ``seq < expected``;
  on a jump ``seq > expected`` issue ERR_EXPIRE upward, send EXPIRE(old, new) to the peer and
  set ``expected = seq + 1``. The peer drops the range, moves its own ``expected`` up to ``new``
  if it was behind, and answers EXPIRE_ACK(its expected); each side takes the max. An EXPIRE not
  acknowledged within 2×comm_delay is sent again.

Invariant that makes both ends agree: every sequence number is, at each end, either *accepted*
(a herald for it arrived while it was the expected one) or *skipped* (``expected`` moved past it
without accepting it). Every skip and every local drop is sent to the peer as an EXPIRE, and that
EXPIRE is retransmitted until the peer acknowledges it; the peer drops the range. So once all
EXPIREs are acknowledged, a pair is live at one end iff it is live at the other.

Choices (documented extensions of the draft):

* **Sequence space**: 32 bits (``SEQ_BITS``; the draft has 16, which wrap every 65 ms at 1 MHz
  heralding), compared with serial-number arithmetic (RFC 1982): ``a < b`` iff
  ``0 < (b − a) mod SEQ_MOD < SEQ_HALF``. A herald ``SEQ_HALF`` or more ahead is therefore
  treated as stale. Pairs are expired (and the peer told) once they are more than
  ``max_pair_age`` numbers old (at most ``MAX_PAIR_AGE`` = 2^30, 18 min at 1 MHz), so a pair id
  is never ambiguous inside the window. The window also bounds the inventory's memory, about
  15 bytes per pair held (live or delivered: a run of pairs that all expired is forgotten
  early, so pairs accepted and expired by the million under a flood cost nothing): choose
  ``max_pair_age`` from the herald rate and how long pairs are useful (2^20 ≈ 1 s at 1 MHz ≈
  16 MB). Once the window is full, the exact rule expires (and tells the peer) a little on
  every batch; with ``window_slack`` > 0 it expires down to
  ``max_pair_age − window_slack`` when it fires, so it fires once per ``window_slack`` numbers
  (no pair ever gets older than ``max_pair_age`` either way).
* **Herald batches** are columnar (:class:`Herald`: first seq, count, code and time arrays) and
  carry ``next_seq``, the station's counter after the batch. An empty batch is a heartbeat: an
  end that lost the last heralds learns of the gap from the next chunk's batch (the EGP only
  found a gap at the next success). :meth:`LinkEnd.on_herald` applies the per-entry rule to a
  whole batch at once: the entries are consecutive, so at most a leading stale part is ignored,
  at most one gap precedes them and the rest is accepted in one step. The window rule is applied
  once after the batch's entries (the per-entry rule applies it after each: the same pairs are
  expired, in fewer, wider EXPIRE ranges), then requests are served.
* **Inventory**: columnar runs of consecutive pairs (Bell code, time, status, create id arrays;
  one goodness per run), indexed by an unwrapped sequence counter. :class:`PairRecord` is a
  per-pair view built on demand (:meth:`LinkEnd.pair`).
* **EXPIRE_ACK** echoes the acknowledged ``[seq_lo, seq_hi)`` (the EGP echoes the queue id), so an
  acknowledgement names one EXPIRE (an ACK of part of a merged range cuts it at that end).
* **Bounded EXPIRE state** (a herald flood, benchmarks/flood.py): an unacknowledged EXPIRE is resent
  after 2×comm_delay, then at doubling intervals up to ``MAX_RESEND_S`` (the EGP resends at a fixed
  period). An end keeps at most ``MAX_UNACKED_EXPIRES`` unacknowledged ranges: one more merges
  ranges that touch, else the two closest, and this end expires its own pairs between them
  (``pairs_shed_total``) and EXPIREs that gap too, so every number of a range is still gone at this
  end and the peer drops all of it: the invariant below holds. The state stored before every send
  and each resend round thus stay small however many gaps a flood makes.
* **Absolute numbers and station epochs** (v1 of the wire; docs/integrators/link-layer.md). A
  station has an *epoch*, 16 hex digits drawn when its state is created, and numbers successes
  with a 63-bit counter; each :class:`Herald` carries the epoch, the lap of ``first_seq`` and
  ``start``, the counter's value when the epoch began. An end names pairs by absolute numbers
  (the 32-bit ``seq`` of a pair id is the absolute number mod 2^32; the window keeps it
  unambiguous) and compares heralds, EXPIREs and EXPIRE_ACKs absolutely: an EXPIRE from a lap
  ago finds nothing in the window (counted: ``expires_stale_total``) and cannot hit new pairs, and a
  herald's jump is taken at its face value, however large.

  The first epoch an end sees shifts its counter by whole laps so that its expected number is
  the nearest to the herald's absolute number + 2^32 (both ends do the same, so they share one
  frame and 32-bit names do not change). Every epoch, the first included, is then *agreed*
  with the peer before its pairs are accepted: each end sends :class:`Epoch` with ``pos``, its
  expected number when it first saw the epoch, and both take ``start = max(pos_a, pos_b)``:
  station number ``σ`` of the epoch is named ``start + σ − epoch start``. An end that already
  has a start sends it and the other takes it; of two different starts both keep the larger
  (the smaller one's end expires what it accepted under its start and tells the peer). Batches
  of the epoch that arrive before the agreement are held (up to ``_MAX_HELD_PAIRS``) and then
  applied. So after a station restart that lost its state (numbering from 0 under a new
  epoch), its pairs are named after every number either end used before — pair ids are never
  reused, and the old epoch's pairs stay valid — and both ends name them alike.

  Which epoch: epochs sort by their creation time (:func:`new_epoch`), and an end moves only to
  an epoch later than its own that it has not left before, so a herald of the old station that
  arrives late (reordered, or from a station that did not die) is ignored and counted
  (``epoch_batches_ignored_total``) and both ends end in the latest epoch. One exception
  covers a new station whose clock is behind: once the current epoch has been silent for
  ``epoch_silence_s`` (its station heartbeats every second), an end follows whichever epoch
  heralds. Only a herald, never a peer's message, moves an end to another epoch. Each change
  after the first is counted (``station_resets_total``) and reported
  (:meth:`LinkEnd.take_events`).

  Heralds, EXPIREs and acknowledgements without these fields (a station or peer of the previous
  version) are applied as before, relative to ``expected`` with RFC 1982, and an end that has
  not seen an epoch sends none.
* **Node ids** are strings (MQTT node names) instead of the draft's 32-bit integers.
* **Times**: ``now`` is monotonic seconds, injected by the caller; ``max_time_ms`` is ms (0 means
  no limit); ``time_ps`` / ``goodness_time_ps`` are integer picoseconds on the node's time-tagger
  time base (the herald's detection time).
* **Goodness** is a float fidelity estimate in [0, 1] (the draft packs it into 16 bits).

Routing of the returned actions: :class:`Expire` and :class:`ExpireAck` go to the peer end of the
link; :class:`Ack`, :class:`Ok` and :class:`Err` go up to the requesting layer
(:func:`split_actions`). Persistence: the caller must store the state (:meth:`LinkEnd.snapshot`,
or the cheaper :meth:`LinkEnd.snapshot_delta`) *before* sending the peer messages a call returned
(write-ahead), so a restart never forgets an EXPIRE the peer already acted on.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from qnode.daemon.linklayer.fields import (
    PAIR_STATUSES,
    SnapshotFields,
    bad,
    check_choice,
    check_epoch,
    check_float,
    check_int,
    check_seq,
    check_str,
)
from qnode.daemon.linklayer.messages import (
    Ack,
    Create,
    Epoch,
    Err,
    ErrCode,
    Expire,
    ExpireAck,
    Herald,
    Message,
    Ok,
    check_time_header,
    decode_bytes,
    decode_times,
    encode_bytes,
    encode_times,
    pack_codes,
    unpack_codes,
)
from qnode.daemon.linklayer.sequence import (
    MAX_ABS,
    MAX_PAIR_AGE,
    SEQ_BITS,
    SEQ_HALF,
    SEQ_MOD,
    seq_abs,
    seq_diff,
    seq_lt,
)
from qnode.daemon.quantum.bell_states import BELL_STATES

# --------------------------------------------------------------------------- link end state

_LIVE, _DELIVERED, _EXPIRED = (PAIR_STATUSES.index(s) for s in ("live", "delivered", "expired"))
_NO_CID = -1          # create id column: none
_MERGE_BELOW = 4096   # a run shorter than this absorbs the next contiguous accepted batch
#: see :attr:`LinkEnd.forget_expired_runs_above`
FORGET_EXPIRED_RUNS_ABOVE = 32
_MAX_OLD_EPOCHS = 16          # epochs an end remembers having left
_MAX_EARLY = 4                # peer EPOCHs kept for epochs this end has not seen yet
_MAX_HELD_PAIRS = 1 << 20     # herald entries held while an epoch is being agreed ...
_MAX_HELD_BATCHES = 4096      # ... and batches (the oldest go first; their numbers are skipped)
#: unacknowledged EXPIRE ranges an end keeps at most (more are merged, see LinkEnd._bound_unacked)
MAX_UNACKED_EXPIRES = 32
#: the longest wait (s) between two resends of an unacknowledged EXPIRE (backoff doubles to it)
MAX_RESEND_S = 16.0


@dataclass
class PairRecord:
    """One pair of the inventory (a view; the inventory itself is columnar). ``status``: "live"
    (in memory, not OK'd; possibly reserved by ``create_id`` for a non-consecutive request),
    "delivered" (OK'd under ``create_id``, or without one: taken by :meth:`LinkEnd.consume`,
    e.g. a test pair or a pair a repeater swapped), "expired" (gone; kept until it ages out of
    the window, for the record). ``time_ps``: detection time (ps)."""

    seq: int
    bell_state: str
    goodness: float
    time_ps: int
    create_id: int | None = None
    status: str = "live"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Run:
    """Consecutive pairs ``[start, start + len)`` of the unwrapped sequence counter, accepted
    together, with one goodness. Columns: Bell code (uint8), time (int64 ps), status (uint8
    index into PAIR_STATUSES), create id (int32, -1 = none)."""

    __slots__ = ("start", "goodness", "codes", "times", "status", "cid", "n_live", "n_free",
                 "n_gone", "dirty", "removed", "stored_as")

    def __init__(self, start: int, goodness: float, codes: np.ndarray, times: np.ndarray,
                 status: np.ndarray | None = None, cid: np.ndarray | None = None) -> None:
        n = len(codes)
        self.start = start
        self.goodness = goodness
        self.codes, self.times = codes, times
        self.status = np.zeros(n, np.uint8) if status is None else status
        self.cid = np.full(n, _NO_CID, np.int32) if cid is None else cid
        self.dirty = False        # changed since the last snapshot / snapshot_delta
        self.removed = False      # aged out of the inventory
        self.stored_as: int | None = None  # first_seq under which the last snapshot holds it
        if status is None and cid is None:
            self.n_live = self.n_free = n
            self.n_gone = 0
        else:
            self.recount()

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def end(self) -> int:
        return self.start + len(self.codes)

    def recount(self) -> None:
        live = self.status == _LIVE
        self.n_live = int(np.count_nonzero(live))
        self.n_free = int(np.count_nonzero(live & (self.cid == _NO_CID)))
        self.n_gone = int(np.count_nonzero(self.status == _EXPIRED))


@dataclass
class _Request:
    create_id: int
    create: Create
    submitted: float
    reserved: list[int] = field(default_factory=list)
    delivered: int = 0


class CreateIdAllocator:
    """Create ids, 16 bits, unique per requesting node (the draft's ACK). Share one allocator
    between the link ends of a node; ids still pending at the asking end are skipped."""

    def __init__(self, next_id: int = 0) -> None:
        check_int("CreateIdAllocator", "next_id", next_id, 0, 0xFFFF)
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
#: Snapshot format: 2 = 32-bit sequence numbers and columnar runs (1 was 16-bit, per pair).
SNAPSHOT_VERSION = 2
_STAT_TOTALS = ("pairs_delivered_total", "pairs_expired_total", "heralds_accepted_total",
                "herald_batches_total", "seqs_skipped_total", "heralds_stale_total",
                "epoch_batches_ignored_total", "station_resets_total", "expires_stale_total",
                "epoch_conflicts_total", "pairs_shed_total", "expires_resent_total")
#: totals a snapshot of the previous version lacks (restored as 0)
_NEW_TOTALS = frozenset(_STAT_TOTALS[5:])
_RUN_KEYS = ("first_seq", "count", "goodness", "bell", "time0_ps", "dt_bytes", "dt", "marks")
_DELTA_ONLY = ("delta", "base", "runs_upsert", "runs_delete")


class LinkEnd:
    """One end (``node``) of ``link`` towards ``peer``: sequence state, pair inventory, pending
    CREATEs and unacknowledged EXPIREs. Every method takes ``now`` (monotonic s) and returns the
    messages to send (:func:`split_actions`).

    ``max_fidelity`` is the best fidelity this link can reach (the EGP FEU's
    ``get_max_fidelity``); ``goodness`` the current fidelity estimate stamped on new pairs
    (:meth:`set_goodness`). ``measure(seq, create)`` returns (outcome, basis) for measure-directly
    requests; without it, M requests get ERR_UNSUPP. ``purposes``: allowed purpose ids (None: all).
    ``max_pair_age``: pairs more than this many sequence numbers behind ``expected_seq`` are
    expired and forgotten (1 .. ``MAX_PAIR_AGE``); ``window_slack`` (0 .. max_pair_age − 1):
    when that happens, pairs more than ``max_pair_age − window_slack`` behind go too (module
    docstring). ``epoch_silence_s``: how long the station epoch followed may be silent before
    an end follows an earlier-sorting one that heralds (a new station with its clock behind).
    """

    def __init__(self, node: str, peer: str, link: str, *, comm_delay: float = 0.05,
                 max_fidelity: float = 1.0, goodness: float | None = None,
                 purposes: Iterable[int] | None = None, initial_seq: int = 0,
                 measure: MeasureFn | None = None,
                 create_ids: CreateIdAllocator | None = None,
                 max_pair_age: int = MAX_PAIR_AGE, window_slack: int = 0,
                 epoch_silence_s: float = 10.0) -> None:
        c = "LinkEnd"
        check_str(c, "node", node)
        check_str(c, "peer", peer)
        check_str(c, "link", link)
        check_float(c, "comm_delay", comm_delay, 0.0)
        check_float(c, "max_fidelity", max_fidelity, 0.0, 1.0)
        check_seq(c, "initial_seq", initial_seq)
        check_int(c, "max_pair_age", max_pair_age, 1, MAX_PAIR_AGE)
        check_int(c, "window_slack", window_slack, 0, max_pair_age - 1)
        check_float(c, "epoch_silence_s", epoch_silence_s, 0.0)
        self.node, self.peer, self.link = node, peer, link
        self.comm_delay = float(comm_delay)
        #: a station epoch silent this long (s) gives way to any that heralds (module docstring)
        self.epoch_silence_s = float(epoch_silence_s)
        self.max_fidelity = float(max_fidelity)
        self.max_pair_age = max_pair_age
        self.window_slack = window_slack
        self.goodness = self.max_fidelity
        if goodness is not None:
            self.set_goodness(goodness)
        self.purposes = None if purposes is None else frozenset(purposes)
        self.measure = measure
        #: which live pairs a CREATE may be given (None: all); a node with qubits gives only
        #: the pairs both ends hold in qubits (:mod:`qnode.daemon.klink.memory`)
        self.deliverable: Callable[[int], bool] | None = None
        self.create_ids = create_ids if create_ids is not None else CreateIdAllocator()
        # Unwrapped expected_seq: every stored pair lies in [_floor, expected), and _floor is at
        # least expected - max_pair_age (the window rule's last cut).
        self._exp = initial_seq
        self._floor = initial_seq - max_pair_age
        self._runs: list[_Run] = []     # in sequence order; runs before _head are gone
        self._starts: list[int] = []    # run starts, for bisection
        self._head = 0
        self._runs_expired = 0          # runs whose every pair expired since the last cleanup
        #: runs whose every pair expired are forgotten once there are more than this many and
        #: they are more than half of the runs (:meth:`_forget_expired_runs`)
        self.forget_expired_runs_above = FORGET_EXPIRED_RUNS_ABOVE
        self._requests: list[_Request] = []
        # (lo, hi) -> (resend deadline, current resend interval); at most max_unacked ranges
        self._unacked: dict[tuple[int, int], tuple[float, float]] = {}
        #: unacknowledged EXPIRE ranges kept at most (more are merged: :meth:`_bound_unacked`)
        self.max_unacked = MAX_UNACKED_EXPIRES
        #: the resend interval of an unacknowledged EXPIRE doubles from 2×comm_delay up to this
        self.max_resend_s = MAX_RESEND_S
        self._last_now = 0.0
        self._totals = dict.fromkeys(_STAT_TOTALS, 0)
        self._generation = 0
        self._dirty: list[_Run] = []    # runs changed since the last snapshot
        self._deleted: list[int] = []   # stored runs (first_seq) gone since the last snapshot
        self._stored_state: dict[str, Any] | None = None  # scalars of the last snapshot
        # Station epoch (module docstring): None until a herald with one arrives.
        self._epoch: str | None = None
        self._epoch_sigma0 = 0          # the station's absolute number the epoch began at
        self._epoch_sigma_next = 0      # the station's latest next number in the epoch
        self._epoch_pos = 0             # _exp when this end first saw the epoch
        self._epoch_start: int | None = None  # name of station number sigma0 (None: waiting)
        self._epoch_from = 0            # _exp when the start became known
        self._old_epochs: list[str] = []       # epochs left, oldest first
        self._early: dict[str, tuple[int, int | None]] = {}  # peer EPOCHs of unseen epochs
        self._epoch_resend = math.inf   # when to send our EPOCH again while waiting
        self._epoch_heard = -math.inf   # when a herald of the current epoch last came
        self._held: list[tuple[Herald, float]] = []  # (batch, arrival) held while agreeing
        self._held_pairs = 0
        self._accepted: list[tuple[int, int, float]] = []  # (absolute first, count, arrival)
        self._events: list[dict[str, Any]] = []     # epoch changes, for the caller to log

    # ------------------------------------------------------------------ views

    @property
    def expected_seq(self) -> int:
        """The next sequence number this end will accept (EGP ``expected_seq``)."""
        return self._exp % SEQ_MOD

    def _live_runs(self) -> list[_Run]:
        return self._runs[self._head:]

    def inventory(self) -> list[tuple[str, int]]:
        """Pair ids ``(link, seq)`` of the pairs that exist (live or delivered), oldest first.
        One tuple per pair: for tests and small inventories (see :meth:`inventory_seqs`)."""
        return [(self.link, s) for s in self.inventory_seqs().tolist()]

    def inventory_seqs(self) -> np.ndarray:
        """Sequence numbers (int64) of the pairs that exist (live or delivered), oldest first."""
        parts = [(r.start + np.flatnonzero(r.status != _EXPIRED)) % SEQ_MOD
                 for r in self._live_runs() if r.n_gone < len(r)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def pair(self, seq: int) -> PairRecord | None:
        """The record of pair ``seq`` (live, delivered or expired), or None. Expired records
        may be gone: a run whose every pair expired is forgotten once such runs are half of
        those held."""
        loc = self._locate_seq(seq)
        if loc is None:
            return None
        run, i = loc
        cid = int(run.cid[i])
        return PairRecord(seq, BELL_STATES[run.codes[i]], run.goodness, int(run.times[i]),
                          None if cid == _NO_CID else cid, PAIR_STATUSES[run.status[i]])

    def pending_creates(self) -> list[int]:
        """Create ids of the requests not yet fulfilled, in service order."""
        return [r.create_id for r in self._ordered_requests()]

    @property
    def expected_abs(self) -> int:
        """The absolute number of :attr:`expected_seq` (module docstring)."""
        return self._exp

    @property
    def epoch(self) -> str | None:
        """The station epoch this end follows (None: none seen)."""
        return self._epoch

    @property
    def epoch_agreed(self) -> bool:
        """False while this end waits for the peer's EPOCH of the current epoch."""
        return self._epoch is None or self._epoch_start is not None

    def abs_of(self, seq: int) -> int | None:
        """The absolute number of pair ``seq`` if it lies in the window, else None."""
        back = seq_diff(self.expected_seq, seq)
        if back == 0 or back > self.max_pair_age:
            return None
        return self._exp - back

    def take_accepted(self) -> list[tuple[int, int, float]]:
        """(absolute first number, count, arrival) of the pairs accepted from heralds since the
        last call, in order (skipped numbers are not in them). ``arrival``: the ``now`` at
        which their batch came (earlier than its acceptance for a batch held while an epoch
        was agreed)."""
        out, self._accepted = self._accepted, []
        return out

    def take_events(self) -> list[dict[str, Any]]:
        """What happened to the station epoch since the last call, for the caller to log:
        ``{"event": "epoch", "old", "new", "pos"}`` when a new epoch is seen (``old`` None: the
        first), ``{"event": "epoch_agreed", "epoch", "start"}`` when it is agreed,
        ``{"event": "epoch_conflict", "epoch", "ours", "peers"}`` when the peer had another
        start."""
        out, self._events = self._events, []
        return out

    def unacked_expires(self) -> list[tuple[int, int]]:
        """The ``[lo, hi)`` ranges sent to the peer and not yet acknowledged (32-bit)."""
        return [(a % SEQ_MOD, b % SEQ_MOD) for a, b in self._unacked]

    def total(self, name: str) -> int:
        """One of the ``*_total`` counts of :meth:`stats`, in O(1) (:meth:`stats` sums over
        the inventory's runs: not for every message)."""
        return self._totals[name]

    def stats(self) -> dict[str, int]:
        """Counts: ``pairs_live`` (in memory, not OK'd), ``pairs_held`` (live or delivered, =
        ``len(inventory())``), totals since the link started (kept in snapshots):
        ``pairs_delivered_total`` (OK'd), ``pairs_expired_total`` (held pairs expired: EXPIRE
        either way, local expire, window), ``heralds_accepted_total`` (herald entries accepted
        as pairs), ``herald_batches_total`` (Herald messages applied), ``seqs_skipped_total``
        (sequence numbers passed without a herald), ``heralds_stale_total`` (herald entries
        ignored: their numbers were already accepted or skipped), ``epoch_batches_ignored_total``
        (batches of a station epoch this end left, or without an epoch once it has one),
        ``station_resets_total`` (new station epochs after the first), ``expires_stale_total``
        (EXPIREs ending half the 32-bit space or more behind, e.g. from a lap ago:
        acknowledged, nothing done),
        ``epoch_conflicts_total`` (EPOCHs with another start than ours),
        ``pairs_shed_total`` (held pairs this end expired to merge two unacknowledged EXPIRE
        ranges, :meth:`_bound_unacked`), ``expires_resent_total`` (EXPIREs sent again
        because no ACK came); ``expires_unacked`` (EXPIRE ranges awaiting an ACK, at most
        ``max_unacked``) and ``expected_seq``."""
        runs = self._live_runs()
        return {"pairs_live": sum(r.n_live for r in runs),
                "pairs_held": sum(len(r) - r.n_gone for r in runs),
                **self._totals,
                "expires_unacked": len(self._unacked),
                "expected_seq": self.expected_seq}

    def set_goodness(self, goodness: float) -> None:
        """Set the fidelity estimate stamped on pairs heralded from now on."""
        check_float("LinkEnd", "goodness", goodness, 0.0, 1.0)
        self.goodness = float(goodness)

    # ------------------------------------------------------------------ columnar store

    def _rel_abs(self, seq: int) -> int:
        """Absolute number of 32-bit ``seq`` read with RFC 1982 against ``expected``: ahead by
        less than SEQ_HALF, else behind (the rule for messages without laps)."""
        if seq_lt(self.expected_seq, seq):
            return self._exp + seq_diff(seq, self.expected_seq)
        return self._exp - seq_diff(self.expected_seq, seq)

    def _range_abs(self, lo: int, hi: int, laps: tuple[int, int] | None) -> tuple[int, int]:
        """Absolute ``[lo, hi)`` of a message's range: its laps once this end has an epoch,
        else (a previous version's message, or none yet) relative to ``expected``."""
        if laps is not None and self._epoch is not None:
            return laps
        b = self._rel_abs(hi)
        return b - seq_diff(hi, lo), b

    def _shift(self, d: int) -> None:
        """Renumber every absolute number by ``d`` (whole laps: 32-bit names do not change)."""
        if not d:
            return
        self._exp += d
        self._floor += d
        for run in self._runs:
            run.start += d
        self._starts = [a + d for a in self._starts]
        # (a range now below 0 cannot be sent with laps: there is nothing there to expire)
        self._unacked = {(max(a + d, 0), b + d): t for (a, b), t in self._unacked.items()
                         if b + d > 0}
        self._accepted = [(a + d, n, t) for a, n, t in self._accepted]

    def _locate(self, a: int) -> tuple[_Run, int] | None:
        i = bisect.bisect_right(self._starts, a, self._head) - 1
        if i < self._head:
            return None
        run = self._runs[i]
        k = a - run.start
        return (run, k) if k < len(run) else None

    def _locate_seq(self, seq: int) -> tuple[_Run, int] | None:
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < SEQ_MOD:
            return None
        back = seq_diff(self.expected_seq, seq)
        if back == 0 or back > self.max_pair_age:
            return None
        return self._locate(self._exp - back)

    def _mark(self, run: _Run) -> None:
        if not run.dirty:
            run.dirty = True
            self._dirty.append(run)

    def _append(self, codes: np.ndarray, times: np.ndarray, arrival: float) -> None:
        """Store pairs ``[expected, expected + n)`` as live, unreserved."""
        start, n = self._exp, len(codes)
        last_acc = self._accepted[-1] if self._accepted else None
        if last_acc is not None and last_acc[0] + last_acc[1] == start and last_acc[2] == arrival:
            self._accepted[-1] = (last_acc[0], last_acc[1] + n, arrival)
        else:
            self._accepted.append((start, n, arrival))
            if len(self._accepted) > 4096:   # nobody takes them: keep the latest
                del self._accepted[:-4096]
        last = self._runs[-1] if len(self._runs) > self._head else None
        if (last is not None and last.end == start and last.goodness == self.goodness
                and len(last) < _MERGE_BELOW):
            last.codes = np.concatenate([last.codes, codes])
            last.times = np.concatenate([last.times, times])
            last.status = np.concatenate([last.status, np.zeros(n, np.uint8)])
            last.cid = np.concatenate([last.cid, np.full(n, _NO_CID, np.int32)])
            last.n_live += n
            last.n_free += n
            self._mark(last)
        else:
            run = _Run(start, self.goodness, codes, times)
            self._runs.append(run)
            self._starts.append(start)
            self._mark(run)

    def _runs_from(self, a: int) -> range:
        """Indices of the live runs that may hold numbers ≥ ``a``, in order."""
        return range(max(bisect.bisect_right(self._starts, a, self._head) - 1, self._head),
                     len(self._runs))

    # ------------------------------------------------------------------ CREATE

    def request(self, create: Create, now: float) -> list[Message]:
        """Accept a CREATE (the draft's service interface): ACK with a fresh create id, then any
        OKs that pairs already in memory can serve; or ERR at CREATE time — UNSUPP if
        ``remote_node`` is not this link's peer, if ``min_fidelity`` exceeds ``max_fidelity``
        (EGP FEU rule) or for an M request without a ``measure`` function; REJECTED for a
        purpose id not allowed."""
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

    def serve(self) -> list[Message]:
        """OKs for pending requests from pairs that became deliverable since."""
        return self._serve()

    def _ordered_requests(self) -> list[_Request]:
        # EGP strict priority (0 first), FIFO within a priority (stable sort).
        return sorted(self._requests, key=lambda r: r.create.priority)

    @staticmethod
    def _first_fit(reqs: list[_Request], goodness: float) -> _Request | None:
        return next((r for r in reqs if goodness >= r.create.min_fidelity), None)

    def _serve(self) -> list[Message]:
        """Give live, unreserved pairs (oldest first) to the first request, in service order,
        whose ``min_fidelity`` the pair's goodness meets. O(1) without pending requests."""
        if not self._requests:
            return []
        reqs = self._ordered_requests()
        out: list[Message] = []
        for ri in range(self._head, len(self._runs)):
            run = self._runs[ri]
            if run.n_free == 0:
                continue
            req = self._first_fit(reqs, run.goodness)
            if req is None:
                continue
            free = np.flatnonzero((run.status == _LIVE) & (run.cid == _NO_CID)).tolist()
            if self.deliverable is not None:
                free = [i for i in free if self.deliverable((run.start + i) % SEQ_MOD)]
            for i in free:
                if not self._give(run, i, req, out):
                    continue
                self._requests.remove(req)
                reqs.remove(req)
                if not reqs:
                    return out
                req = self._first_fit(reqs, run.goodness)
                if req is None:
                    break
        return out

    def _give(self, run: _Run, i: int, req: _Request, out: list[Message]) -> bool:
        """Pair ``i`` of ``run`` to ``req``; True when the request is fulfilled."""
        if req.create.consecutive:
            out.append(self._deliver(run, i, req))
            req.delivered += 1
            return req.delivered >= req.create.number
        run.cid[i] = req.create_id
        run.n_free -= 1
        self._mark(run)
        req.reserved.append((run.start + i) % SEQ_MOD)
        if len(req.reserved) < req.create.number:
            return False
        # all pairs in memory at the same time: OK them together
        for s in req.reserved:
            loc = self._locate_seq(s)
            assert loc is not None, f"reserved pair {s} is not stored"
            out.append(self._deliver(*loc, req))
        req.delivered, req.reserved = len(req.reserved), []
        return True

    def _deliver(self, run: _Run, i: int, req: _Request) -> Ok:
        if run.status[i] == _LIVE:
            run.n_live -= 1
            if run.cid[i] == _NO_CID:
                run.n_free -= 1
        run.status[i] = _DELIVERED
        run.cid[i] = req.create_id
        self._mark(run)
        self._totals["pairs_delivered_total"] += 1
        seq = (run.start + i) % SEQ_MOD
        bell = BELL_STATES[run.codes[i]]
        cr = req.create
        if cr.tpe == "M":
            assert self.measure is not None
            outcome, basis = self.measure(seq, cr)
            return Ok(req.create_id, self.link, seq, bell, run.goodness, cr.purpose_id,
                      self.peer, "M", None, outcome, basis)
        return Ok(req.create_id, self.link, seq, bell, run.goodness, cr.purpose_id, self.peer,
                  "K", int(run.times[i]))

    def consume(self, seqs: Iterable[int]) -> list[int]:
        """Take live, unreserved pairs out of the inventory **without telling the peer**: for
        pairs both ends consume by one rule or message — test pairs chosen by their sequence
        number, pairs a repeater swapped (it says so in SWAP_RES). They count as delivered
        (``pairs_delivered_total``); an EXPIRE for them later is answered as for any pair
        gone. Returns the sequence numbers actually consumed (others were gone or reserved)."""
        done: list[int] = []
        for seq in seqs:
            loc = self._locate_seq(int(seq))
            if loc is None:
                continue
            run, i = loc
            if run.status[i] != _LIVE or run.cid[i] != _NO_CID:
                continue
            run.status[i] = _DELIVERED
            run.n_live -= 1
            run.n_free -= 1
            self._mark(run)
            done.append(int(seq))
        self._totals["pairs_delivered_total"] += len(done)
        return done

    def live_seqs(self) -> np.ndarray:
        """Sequence numbers (int64) of the live pairs (in memory, not OK'd), oldest first."""
        parts = [(r.start + np.flatnonzero(r.status == _LIVE)) % SEQ_MOD
                 for r in self._live_runs() if r.n_live]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    # ------------------------------------------------------------------ heralds

    def on_herald(self, batch: Herald, now: float) -> list[Message]:
        """Apply the EGP ``_process_mhp_seq`` rule to the batch's entries in order, then
        to its ``next_seq`` (a heartbeat closes a gap at the tail), then serve requests.

        In bulk: entry ``k`` has number ``first + k``. If ``first`` is expected or ahead, the gap
        before it is skipped and every entry is accepted; otherwise entries before the expected
        one are stale and the rest (if any) is accepted. Without pending requests this is
        O(count) numpy work and no per-pair Python objects. A batch with a station epoch is
        compared absolutely, once its epoch is agreed (module docstring); one without is
        compared with RFC 1982 (ahead by less than ``SEQ_HALF``)."""
        self._seen(now)
        if not isinstance(batch, Herald):
            raise TypeError(f"on_herald: expected a Herald, got {type(batch).__name__}")
        self._check_link(batch.link, "Herald")
        self._totals["herald_batches_total"] += 1
        if batch.epoch is None:
            if self._epoch is not None:   # a station of the previous version: not ours now
                self._totals["epoch_batches_ignored_total"] += 1
                return []
            return self._apply_relative(batch, now) + self._serve()
        out: list[Message] = []
        if batch.epoch != self._epoch:
            if not self._follows(batch.epoch, now):
                self._totals["epoch_batches_ignored_total"] += 1
                return []
            out += self._switch(batch, now)
        elif batch.start != self._epoch_sigma0:   # not this epoch's numbering
            self._totals["epoch_batches_ignored_total"] += 1
            return []
        self._epoch_heard = now
        nxt = batch.next_abs
        assert nxt is not None
        self._epoch_sigma_next = max(self._epoch_sigma_next, nxt)
        if self._epoch_start is None:
            self._hold(batch)
            return out
        return out + self._apply_absolute(batch, now, now) + self._serve()

    def _apply_relative(self, batch: Herald, now: float) -> list[Message]:
        """A batch without an epoch: numbers read with RFC 1982 against ``expected``."""
        out: list[Message] = []
        n, first = batch.count, batch.first_seq
        if n:
            ahead = seq_diff(first, self.expected_seq)
            if ahead == 0:
                k0 = 0
            elif ahead < SEQ_HALF:
                out += self._skip_to(self._exp + ahead, now)
                k0 = 0
            else:  # stale: behind expected (or SEQ_HALF ahead, undefined): up to expected
                k0 = min(SEQ_MOD - ahead, n)
                self._totals["heralds_stale_total"] += k0
            if k0 < n:
                out += self._accept(batch, k0, now)
        if seq_lt(self.expected_seq, batch.next_seq):
            out += self._skip_to(self._exp + seq_diff(batch.next_seq, self.expected_seq), now)
        return out

    def _apply_absolute(self, batch: Herald, now: float, arrival: float) -> list[Message]:
        """A batch of the agreed current epoch: station number ``σ`` is named
        ``start + σ − sigma0``."""
        assert self._epoch_start is not None and batch.first_abs is not None
        first = self._epoch_start + (batch.first_abs - self._epoch_sigma0)
        n = batch.count
        if first + n > MAX_ABS:   # beyond any number a message can carry
            self._totals["epoch_batches_ignored_total"] += 1
            return []
        out: list[Message] = []
        if n:
            if first >= self._exp:
                if first > self._exp:
                    out += self._skip_to(first, now)
                k0 = 0
            else:
                k0 = min(self._exp - first, n)
                self._totals["heralds_stale_total"] += k0
            if k0 < n:
                out += self._accept(batch, k0, arrival)
        if first + n > self._exp:
            out += self._skip_to(first + n, now)
        return out

    def _accept(self, batch: Herald, k0: int, arrival: float) -> list[Message]:
        """Store entries ``k0..`` of ``batch`` as the pairs from ``expected`` on."""
        codes, times = batch.bell_codes, batch.times_ps
        if k0:
            codes, times = codes[k0:], times[k0:]
        self._append(codes, times, arrival)
        self._exp += len(codes)
        self._totals["heralds_accepted_total"] += len(codes)
        return self._age_out()

    def _skip_to(self, new_expected: int, now: float) -> list[Message]:
        """``expected`` jumps to the absolute ``new_expected`` without accepting
        ``[expected, new)``: ERR_EXPIRE upward and EXPIRE(old, new) to the peer (the EGP's
        rule). No pair is stored at or after ``expected``, so there is nothing to drop in the
        range."""
        a, b = self._exp, min(new_expected, MAX_ABS)   # (no message carries a larger one)
        if b <= a:
            return []
        self._exp = b
        self._totals["seqs_skipped_total"] += b - a
        lo = max(a, b - (SEQ_HALF - 1))   # an ERR names at most SEQ_HALF - 1 numbers
        out: list[Message] = [Err(None, ErrCode.EXPIRE, self.link, lo % SEQ_MOD, b % SEQ_MOD,
                                  self.node),
                              *self._send_expire(a, b, now)]
        return out + self._age_out()

    # ------------------------------------------------------------------ station epochs

    def _follows(self, epoch: str, now: float) -> bool:
        """Move to the station epoch ``epoch``? Yes if none yet, if it is later than ours and
        not one we left, or if ours has been silent for ``epoch_silence_s``."""
        if self._epoch is None or now - self._epoch_heard >= self.epoch_silence_s:
            return True
        return epoch > self._epoch and epoch not in self._old_epochs

    def _switch(self, batch: Herald, now: float) -> list[Message]:
        """``batch`` is the first of a station epoch this end has not seen: follow it, and send
        the peer our EPOCH (module docstring). Resolved at once if the peer's came first."""
        prev = self._epoch
        assert batch.first_abs is not None and batch.next_abs is not None
        assert batch.epoch is not None and batch.start is not None
        if prev is None:
            # one frame for both ends: expected nearest to the herald's number + one lap
            target = min(batch.first_abs + SEQ_MOD, MAX_ABS - 2 * SEQ_MOD)
            self._shift((target - self._exp + SEQ_HALF) // SEQ_MOD * SEQ_MOD)
        else:
            self._old_epochs.append(prev)
            del self._old_epochs[:-_MAX_OLD_EPOCHS]
            self._totals["station_resets_total"] += 1
        self._epoch = batch.epoch
        self._epoch_sigma0 = batch.start
        self._epoch_sigma_next = batch.first_abs   # the batch itself is applied by the caller
        self._epoch_pos = self._exp
        self._epoch_start = None
        self._held, self._held_pairs = [], 0
        self._events.append({"event": "epoch", "old": prev, "new": batch.epoch,
                             "pos": self._exp})
        out: list[Message] = []
        early = self._early.pop(batch.epoch, None)
        if early is not None:
            pos, start = early
            out += self._resolve(max(self._epoch_pos, pos) if start is None else start, now)
        else:
            self._epoch_resend = now + 2.0 * self.comm_delay
        return [Epoch(self.link, batch.epoch, self._epoch_pos, self._epoch_start), *out]

    def _hold(self, batch: Herald) -> None:
        """Keep a batch of the epoch being agreed (bounded: the oldest go first)."""
        self._held.append((batch, self._last_now))
        self._held_pairs += batch.count
        while self._held and (len(self._held) > _MAX_HELD_BATCHES
                              or self._held_pairs > _MAX_HELD_PAIRS):
            self._held_pairs -= self._held.pop(0)[0].count

    def _resolve(self, start: int, now: float) -> list[Message]:
        """The epoch's start is agreed: apply the held batches, then skip to the station's
        latest number (a lost or dropped tail)."""
        self._epoch_start = start
        self._epoch_from = self._exp
        self._epoch_resend = math.inf
        self._events.append({"event": "epoch_agreed", "epoch": self._epoch, "start": start})
        held, self._held, self._held_pairs = self._held, [], 0
        out: list[Message] = []
        for b, arrival in held:
            out += self._apply_absolute(b, now, arrival)
        nxt = start + (self._epoch_sigma_next - self._epoch_sigma0)
        if self._exp < nxt <= MAX_ABS:
            out += self._skip_to(nxt, now)
        return out

    def _rebase(self, start: int, now: float) -> list[Message]:
        """The peer has a larger start for the current epoch: take it. What this end accepted
        under its own start is expired (and the peer told), then it skips to the station's
        latest number under the new one."""
        assert self._epoch_start is not None
        self._events.append({"event": "epoch_conflict", "epoch": self._epoch,
                             "ours": self._epoch_start, "peers": start})
        out: list[Message] = []
        lo = self._epoch_from
        if self._exp > lo:
            out += self._drop(lo, self._exp, self.node)
            out += self._send_expire(lo, self._exp, now)
        self._epoch_start = start
        nxt = start + (self._epoch_sigma_next - self._epoch_sigma0)
        if self._exp < nxt <= MAX_ABS:
            out += self._skip_to(nxt, now)
        self._epoch_from = self._exp
        return out

    def on_epoch(self, msg: Epoch, now: float) -> list[Message]:
        """The peer's EPOCH (module docstring). For our current epoch: take its start (or
        ``max(our pos, its pos)`` if it has none) when we have none; keep the larger of two
        starts; answer when the peer has no start or a smaller one. For an epoch we have not
        seen, keep it for when we do; for one we left, ignore it. Never changes the epoch."""
        self._seen(now)
        if not isinstance(msg, Epoch):
            raise TypeError(f"on_epoch: expected an Epoch, got {type(msg).__name__}")
        self._check_link(msg.link, "Epoch")
        if msg.epoch != self._epoch:
            if msg.epoch not in self._old_epochs:
                self._early[msg.epoch] = (msg.pos, msg.start)
                while len(self._early) > _MAX_EARLY:
                    del self._early[next(iter(self._early))]
            return []
        out: list[Message] = []
        if self._epoch_start is None:
            out += self._resolve(max(self._epoch_pos, msg.pos) if msg.start is None
                                 else msg.start, now)
        elif msg.start is not None and msg.start != self._epoch_start:
            self._totals["epoch_conflicts_total"] += 1
            if msg.start > self._epoch_start:
                out += self._rebase(msg.start, now)
        if msg.start is None or msg.start < self._epoch_start:  # type: ignore[operator]
            out.append(Epoch(self.link, msg.epoch, self._epoch_pos, self._epoch_start))
        return out + self._serve()

    # ------------------------------------------------------------------ EXPIRE exchange

    def on_expire(self, msg: Expire, now: float) -> list[Message]:
        """Peer's EXPIRE (the EGP's ``cmd_EXPIRE``): drop ``[lo, hi)`` (ERR_EXPIRE upward for pairs
        there), move ``expected`` up to ``hi`` if behind — expiring our own skipped
        ``[expected, lo)`` to the peer when ``expected < lo`` — and answer EXPIRE_ACK(expected).
        Idempotent: a duplicate is dropped again (nothing left) and acknowledged again. With
        laps the range is absolute: one that ends half the 32-bit space or more behind
        ``expected`` (e.g. a lap ago; RFC 1982 would read it as ahead) finds nothing in the
        window and is counted (``expires_stale_total``)."""
        self._seen(now)
        self._check_link(msg.link, "Expire")
        lo, hi = self._range_abs(msg.seq_lo, msg.seq_hi, msg.abs_range)
        lo, hi = min(lo, MAX_ABS), min(hi, MAX_ABS)
        if hi <= self._exp - SEQ_HALF:
            self._totals["expires_stale_total"] += 1
        out = self._drop(lo, hi, msg.origin)
        if hi > self._exp:
            if lo > self._exp:
                out += self._skip_to(lo, now)
            self._totals["seqs_skipped_total"] += hi - self._exp
            self._exp = hi
            out += self._age_out()
        if msg.lap_lo is None:   # a previous version's EXPIRE: an ACK it can read
            out.append(ExpireAck(self.link, self.expected_seq, msg.seq_lo, msg.seq_hi))
        else:
            lap = self._exp >> SEQ_BITS if self._epoch is not None else None
            out.append(ExpireAck(self.link, self.expected_seq, msg.seq_lo, msg.seq_hi, lap,
                                 msg.lap_lo, msg.lap_hi))
        return out + self._serve()

    def on_expire_ack(self, msg: ExpireAck, now: float) -> list[Message]:
        """Peer's EXPIRE_ACK (the EGP's): stop resending that EXPIRE; take the max of the two
        ``expected`` values — moving up skips ``[expected, peer's)``, which is expired to the
        peer like any other skip."""
        self._seen(now)
        self._check_link(msg.link, "ExpireAck")
        if msg.lap_lo is not None and msg.lap_hi is not None:
            self._ack_range(seq_abs(msg.seq_lo, msg.lap_lo), seq_abs(msg.seq_hi, msg.lap_hi))
        else:
            key = next((k for k in self._unacked if (k[0] % SEQ_MOD, k[1] % SEQ_MOD)
                        == (msg.seq_lo, msg.seq_hi)), None)
            if key is not None:
                del self._unacked[key]
            elif self._unacked:   # part of a merged range
                self._ack_range(*self._range_abs(msg.seq_lo, msg.seq_hi, None))
        if msg.lap is not None and self._epoch is not None:
            peer = seq_abs(msg.expected_seq, msg.lap)
        else:
            peer = self._rel_abs(msg.expected_seq)
        if peer > self._exp:
            return self._skip_to(peer, now) + self._serve()
        return []

    def expire(self, seq_lo: int, seq_hi: int, now: float) -> list[Message]:
        """A local decision (e.g. memory timeout) to drop pairs ``[seq_lo, seq_hi)``: ERR_EXPIRE
        upward for the pairs there and EXPIRE to the peer. The range must not reach beyond
        ``expected_seq``."""
        self._seen(now)
        check_seq("expire", "seq_lo", seq_lo)
        check_seq("expire", "seq_hi", seq_hi)
        n = seq_diff(seq_hi, seq_lo)
        if not 0 < n < SEQ_HALF or seq_lt(self.expected_seq, seq_hi):
            raise ValueError(f"expire.seq_hi: expected a non-empty range ending at or before "
                             f"expected_seq={self.expected_seq}, got [{seq_lo}, {seq_hi})")
        b = self._rel_abs(seq_hi)
        return self._expire(b - n, b, now)

    def expire_abs(self, lo: int, hi: int, now: float) -> list[Message]:
        """:meth:`expire` of the absolute ``[lo, hi)``, cut to the window ``[floor,
        expected)``: nothing (no message) if that leaves no number."""
        self._seen(now)
        lo, hi = max(lo, self._floor), min(hi, self._exp)
        if lo >= hi:
            return []
        return self._expire(lo, hi, now)

    def _expire(self, lo: int, hi: int, now: float) -> list[Message]:
        out = self._drop(lo, hi, self.node)
        out += self._send_expire(lo, hi, now)
        return out + self._serve()

    def _send_expire(self, lo: int, hi: int, now: float) -> list[Message]:
        """EXPIRE of the absolute ``[lo, hi)`` (sent now), resent until acknowledged: after
        2×comm_delay, then at doubling intervals up to ``max_resend_s``. With laps once this
        end has an epoch (a previous version's peer cannot read them before). Should that make
        more than ``max_unacked`` ranges, ranges are merged (:meth:`_bound_unacked`); what that
        sends and reports upward is returned too."""
        base = 2.0 * self.comm_delay
        self._unacked[(lo, hi)] = (now + base, base)
        out: list[Message] = [self._expire_msg(lo, hi)]
        if len(self._unacked) > self.max_unacked:
            out += self._bound_unacked(now)
        return out

    def _bound_unacked(self, now: float) -> list[Message]:
        """Bring the unacknowledged ranges down to ``max_unacked``. First ranges that overlap
        or touch become one (nothing changes at either end). Then, while still too many, the
        two ranges with the fewest numbers between them become one covering range: this end
        expires its own pairs in between (ERR_EXPIRE upward, counted in ``pairs_shed_total``)
        and sends an EXPIRE of that gap now; the covering range is resent like any other, at
        most 2×comm_delay later (its backoff starts again), so both ends still drop exactly
        the same numbers. Without an epoch (32-bit messages) a range stays shorter than
        ``SEQ_HALF``; should no merge fit, the cap is exceeded rather than agreement lost.
        O(max_unacked) per call."""
        base = 2.0 * self.comm_delay
        rs: list[list[Any]] = []    # [lo, hi, deadline, interval], sorted, disjoint
        for (lo, hi), (deadline, interval) in sorted(self._unacked.items()):
            if rs and lo <= rs[-1][1]:
                last = rs[-1]
                last[1] = max(last[1], hi)
                last[2] = min(last[2], deadline, now + base)
                last[3] = base
            else:
                rs.append([lo, hi, deadline, interval])
        out: list[Message] = []
        excess = len(rs) - self.max_unacked
        if excess > 0 and self._epoch is not None:
            # a merge leaves the other gaps as they are: the smallest ``excess`` go (ties: the
            # oldest), at once — O(n log n) for a snapshot of a previous version
            order = sorted(range(len(rs) - 1), key=lambda i: (rs[i + 1][0] - rs[i][1], i))
            joined = set(order[:excess])
            merged: list[list[Any]] = [rs[0]]
            for i in range(len(rs) - 1):
                if i in joined:
                    out += self._shed(merged[-1], rs[i + 1], now + base)
                else:
                    merged.append(rs[i + 1])
            rs = merged
        while len(rs) > self.max_unacked:   # 32-bit messages: ranges shorter than SEQ_HALF
            best, gap = -1, math.inf
            for i in range(len(rs) - 1):
                g = rs[i + 1][0] - rs[i][1]
                if g < gap and rs[i + 1][1] - rs[i][0] < SEQ_HALF - 1:
                    best, gap = i, g
            if best < 0:
                break
            out += self._shed(rs[best], rs.pop(best + 1), now + base)
        self._unacked = {(lo, hi): (deadline, interval) for lo, hi, deadline, interval in rs}
        return out

    def _shed(self, left: list[Any], right: list[Any], resend_by: float) -> list[Message]:
        """Merge the unacknowledged range ``right`` into ``left`` (``[lo, hi, deadline,
        interval]``): expire this end's pairs between them and EXPIRE that gap now."""
        c, d = left[1], right[0]
        before = self._totals["pairs_expired_total"]
        out = self._drop(c, d, self.node)
        self._totals["pairs_shed_total"] += self._totals["pairs_expired_total"] - before
        out.append(self._expire_msg(c, d))
        left[1] = right[1]
        left[2] = min(left[2], right[2], resend_by)
        left[3] = 2.0 * self.comm_delay
        return out

    def _ack_range(self, lo: int, hi: int) -> None:
        """The peer acknowledged the absolute ``[lo, hi)``: it dropped those numbers, so the
        unacknowledged ranges lose them — removed when covered, cut when it covers one end
        (an ACK of a range sent before a merge); one that holds it strictly inside stays whole
        (resending a number the peer dropped is harmless)."""
        if hi <= lo:
            return
        for key in [k for k in self._unacked if k[0] < hi and lo < k[1]]:
            a, b = key
            if lo <= a and b <= hi:
                del self._unacked[key]
            elif lo <= a:
                self._unacked[(hi, b)] = self._unacked.pop(key)
            elif b <= hi:
                self._unacked[(a, lo)] = self._unacked.pop(key)

    def _expire_msg(self, lo: int, hi: int) -> Expire:
        if self._epoch is not None:
            return Expire(self.link, lo % SEQ_MOD, hi % SEQ_MOD, self.node, lo >> SEQ_BITS,
                          hi >> SEQ_BITS)
        return Expire(self.link, lo % SEQ_MOD, hi % SEQ_MOD, self.node)

    def _drop(self, lo: int, hi: int, origin: str, *, mark: bool = True) -> list[Message]:
        """Mark live/delivered pairs in the absolute ``[lo, hi)`` expired; release
        reservations; one ERR_EXPIRE upward per create id touched (None for pairs not yet
        OK'd), in order of the first pair touched. ``mark=False``: the touched pairs are about
        to be forgotten (window rule), so the runs need not be stored again."""
        a, b = max(lo, self._floor), min(hi, self._exp)   # stored pairs lie in the window
        if a >= b or self._head >= len(self._runs):
            return []
        touched: dict[int | None, None] = {}
        released: dict[int, set[int]] = {}
        for ri in self._runs_from(a):
            run = self._runs[ri]
            if run.start >= b:
                break
            i, j = max(a - run.start, 0), min(b - run.start, len(run))
            if i >= j or run.n_gone == len(run):
                continue
            st = run.status[i:j]
            keep = st != _EXPIRED
            if not keep.any():
                continue
            cid = run.cid[i:j]
            for k in np.flatnonzero(keep & (st == _LIVE) & (cid != _NO_CID)).tolist():
                released.setdefault(int(cid[k]), set()).add((run.start + i + k) % SEQ_MOD)
            keys = np.where(st == _DELIVERED, cid, _NO_CID)[keep]
            uniq, first = np.unique(keys, return_index=True)
            for key in uniq[np.argsort(first, kind="stable")].tolist():
                touched[None if key == _NO_CID else key] = None
            self._totals["pairs_expired_total"] += int(np.count_nonzero(keep))
            st[keep] = _EXPIRED
            run.recount()
            if mark:
                self._mark(run)
            if run.n_gone == len(run):
                self._runs_expired += 1
        if released:
            for req in self._requests:
                gone = released.get(req.create_id)
                if gone:
                    req.reserved = [s for s in req.reserved if s not in gone]
        if hi - lo >= SEQ_HALF:   # an ERR names the part that held pairs
            lo, hi = a, b
        return [Err(cid, ErrCode.EXPIRE, self.link, lo % SEQ_MOD, hi % SEQ_MOD, origin)
                for cid in touched]

    def _age_out(self) -> list[Message]:
        """Window rule: when a held (live or delivered) pair is more than ``max_pair_age``
        numbers behind ``expected``, it is expired (and the peer told) so a pair id is never
        reused while its pair exists, and pairs more than ``max_pair_age − window_slack`` behind
        go with it; records that old are forgotten. Expired records alone do not fire the rule:
        they are forgotten (runs of them wholly behind the window, or any run of them once they
        are many), and whether an end still has one must not change what it expires — the ends
        forget at different moments, and they must fire alike. A run cut at the front is not
        stored again for that alone: a stored run reaching below the window is cut on
        restore."""
        self._forget_expired_runs()
        floor = self._exp - self.max_pair_age
        head = self._head
        while head < len(self._runs) and self._runs[head].n_gone == len(self._runs[head]) \
                and self._runs[head].start + len(self._runs[head]) <= floor:
            run = self._runs[head]   # all expired, all behind the window: forget it
            run.removed = True
            if run.stored_as is not None:
                self._deleted.append(run.stored_as)
            head += 1
        self._head = head
        if head >= len(self._runs) or self._runs[head].start >= floor:
            return []
        if not self._held_below(floor):
            return []
        floor += self.window_slack
        first_alive = last_alive = None
        for ri in range(self._head, len(self._runs)):
            run = self._runs[ri]
            if run.start >= floor:
                break
            if run.n_gone == len(run):
                continue
            alive = np.flatnonzero(run.status[:floor - run.start] != _EXPIRED)
            if alive.size:
                if first_alive is None:
                    first_alive = run.start + int(alive[0])
                last_alive = run.start + int(alive[-1])
        out: list[Message] = []
        if first_alive is not None:
            assert last_alive is not None
            out += self._drop(first_alive, last_alive + 1, self.node, mark=False)
            out += self._send_expire(first_alive, last_alive + 1, self._last_now)
        self._floor = floor
        head = self._head
        while head < len(self._runs) and self._runs[head].start < floor:
            run = self._runs[head]
            k = floor - run.start
            if k < len(run):  # trim the front
                run.codes, run.times = run.codes[k:], run.times[k:]
                run.status, run.cid = run.status[k:], run.cid[k:]
                run.start = floor
                self._starts[head] = floor
                run.recount()
                break
            run.removed = True
            if run.stored_as is not None:
                self._deleted.append(run.stored_as)
            head += 1
        self._head = head
        if head > 32 and 2 * head > len(self._runs):
            del self._runs[:head], self._starts[:head]
            self._head = 0
        return out

    def _held_below(self, floor: int) -> bool:
        """Whether a live or delivered pair has an absolute number below ``floor``."""
        for ri in range(self._head, len(self._runs)):
            run = self._runs[ri]
            if run.start >= floor:
                return False
            if run.n_gone < len(run) and bool(
                    np.any(run.status[:floor - run.start] != _EXPIRED)):
                return True
        return False

    def _forget_expired_runs(self) -> None:
        """Forget the runs whose every pair expired (and delete their stored rows), once they
        are at least half of the runs: an end under a flood accepts and expires millions of
        pairs long before the window rule would forget them, and their records are of no use
        (an EXPIRE of them changes nothing, a CREATE cannot get them). Amortised O(1) per run."""
        if (self._runs_expired <= self.forget_expired_runs_above
                or 2 * self._runs_expired <= len(self._runs) - self._head):
            return
        kept: list[_Run] = []
        for run in self._live_runs():
            if run.n_gone < len(run):
                kept.append(run)
                continue
            run.removed = True
            if run.stored_as is not None:
                self._deleted.append(run.stored_as)
        self._runs, self._starts = kept, [run.start for run in kept]
        self._head = self._runs_expired = 0

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> list[Message]:
        """Resend EXPIREs unacknowledged for 2×comm_delay (the EGP's period), then at doubling
        intervals up to ``max_resend_s`` (a peer that does not answer is not flooded), and our
        EPOCH while the peer's has not come; ERR_TIMEOUT for requests past Max Time (their
        reserved, not yet OK'd pairs go back to the pool)."""
        self._seen(now)
        out: list[Message] = []
        cap = max(self.max_resend_s, 2.0 * self.comm_delay)
        for key, (deadline, interval) in list(self._unacked.items()):
            if now >= deadline:
                interval = min(2.0 * interval, cap)
                self._unacked[key] = (now + interval, interval)
                self._totals["expires_resent_total"] += 1
                out.append(self._expire_msg(*key))
        if self._epoch is not None and self._epoch_start is None and now >= self._epoch_resend:
            self._epoch_resend = now + 2.0 * self.comm_delay
            out.append(Epoch(self.link, self._epoch, self._epoch_pos, None))
        for req in list(self._requests):
            mt = req.create.max_time_ms
            if mt > 0 and now - req.submitted >= mt / 1000.0:
                self._requests.remove(req)
                self._release(req)
                out.append(Err(req.create_id, ErrCode.TIMEOUT))
        return out + self._serve()

    def _release(self, req: _Request) -> None:
        for s in req.reserved:
            loc = self._locate_seq(s)
            if loc is None:
                continue
            run, i = loc
            if run.cid[i] == req.create_id and run.status[i] == _LIVE:
                run.cid[i] = _NO_CID
                run.n_free += 1
                self._mark(run)
        req.reserved = []

    def _seen(self, now: float) -> None:
        check_float("LinkEnd", "now", now, -math.inf)
        self._last_now = max(self._last_now, float(now))

    def _check_link(self, link: str, what: str) -> None:
        if link != self.link:
            raise ValueError(f"{what}.link: expected {self.link!r}, got {link!r}")

    # ------------------------------------------------------------------ persistence

    def _state_dict(self) -> dict[str, Any]:
        """Everything but the runs and the generation."""
        return {
            "version": SNAPSHOT_VERSION,
            "node": self.node, "peer": self.peer, "link": self.link,
            "comm_delay": self.comm_delay, "max_fidelity": self.max_fidelity,
            "goodness": self.goodness,
            "purposes": None if self.purposes is None else sorted(self.purposes),
            "max_pair_age": self.max_pair_age, "window_slack": self.window_slack,
            "expected_seq": self.expected_seq,
            # pairs more than this many numbers behind expected_seq are gone (stored runs may
            # still reach below: restore cuts them)
            "window_back": min(self._exp - self._floor, self.max_pair_age),
            "next_create_id": self.create_ids.next_id,
            "stats": dict(self._totals),
            "requests": [{"create_id": r.create_id, "create": r.create.to_dict(),
                          "elapsed_s": self._last_now - r.submitted,
                          "reserved": list(r.reserved), "delivered": r.delivered}
                         for r in self._requests],
            # absolute from here on (a snapshot without expected_abs holds 32-bit ranges)
            "unacked_expires": [[lo, hi] for lo, hi in self._unacked],
            "expected_abs": self._exp,
            "epoch": None if self._epoch is None else {
                "id": self._epoch, "sigma0": self._epoch_sigma0,
                "sigma_next": self._epoch_sigma_next, "pos": self._epoch_pos,
                "start": self._epoch_start, "from": self._epoch_from},
            "old_epochs": list(self._old_epochs),
            "early_epochs": {e: [p, st] for e, (p, st) in self._early.items()},
        }

    @staticmethod
    def _run_dict(run: _Run) -> dict[str, Any]:
        """A run as JSON: the Herald codecs for codes and times; ``marks`` run-length encodes
        (status, create id): ``[[status, create_id | None, length], ...]``."""
        time0, width, deltas = encode_times(run.times)
        n = len(run)
        change = np.flatnonzero((run.status[1:] != run.status[:-1])
                                | (run.cid[1:] != run.cid[:-1])) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.append(starts, n))
        marks = [[PAIR_STATUSES[s], None if c == _NO_CID else c, ln] for s, c, ln in zip(
            run.status[starts].tolist(), run.cid[starts].tolist(), lengths.tolist(),
            strict=True)]
        return {"first_seq": run.start % SEQ_MOD, "count": n, "goodness": run.goodness,
                "bell": encode_bytes(pack_codes(run.codes)), "time0_ps": time0,
                "dt_bytes": width, "dt": encode_bytes(deltas), "marks": marks}

    @staticmethod
    def _run_from_dict(d: Any, where: str) -> tuple[int, _Run]:
        """(first_seq, run with start = 0) from :meth:`_run_dict`'s form."""
        if not isinstance(d, Mapping) or set(d) != set(_RUN_KEYS):
            raise ValueError(f"{where}: expected a run with keys {list(_RUN_KEYS)}")
        check_seq(where, "first_seq", d["first_seq"])
        check_int(where, "count", d["count"], 1, MAX_PAIR_AGE)
        check_float(where, "goodness", d["goodness"], 0.0, 1.0)
        n = d["count"]
        codes = unpack_codes(decode_bytes(d["bell"], "raw", (n + 3) // 4, f"{where}.bell"), n,
                             f"{where}.bell")
        size = check_time_header(where, d["time0_ps"], d["dt_bytes"], n)
        times = decode_times(d["time0_ps"], d["dt_bytes"],
                             decode_bytes(d["dt"], "raw", size, f"{where}.dt"), n, where)
        marks = d["marks"]
        if not isinstance(marks, list) or not marks:
            raise bad(where, "marks", "a non-empty list of [status, create_id, length]", marks)
        st, ci, ln = [], [], []
        for k, m in enumerate(marks):
            w = f"{where}.marks[{k}]"
            if not isinstance(m, list) or len(m) != 3:
                raise bad(where, f"marks[{k}]", "[status, create_id, length]", m)
            check_choice(w, "status", m[0], PAIR_STATUSES)
            if m[1] is not None:   # delivered without one: consumed (test or swapped pairs)
                check_int(w, "create_id", m[1], 0, 0xFFFF)
            check_int(w, "length", m[2], 1, n)
            st.append(PAIR_STATUSES.index(m[0]))
            ci.append(_NO_CID if m[1] is None else m[1])
            ln.append(m[2])
        if sum(ln) != n:
            raise bad(where, "marks", f"lengths adding up to count={n}", sum(ln))
        status = np.repeat(np.array(st, np.uint8), ln)
        cid = np.repeat(np.array(ci, np.int32), ln)
        return d["first_seq"], _Run(0, float(d["goodness"]), codes, times, status, cid)

    def snapshot(self) -> dict[str, Any]:
        """The whole state, JSON-able (format ``SNAPSHOT_VERSION``). Request ages are stored
        relative to the latest ``now`` seen, so a restore on a new monotonic clock keeps their
        remaining Max Time. ``runs`` holds the inventory, oldest first, each run in the Herald
        codecs (about 6 bytes of JSON per pair). Starts a new generation for
        :meth:`snapshot_delta`."""
        runs = []
        for run in self._live_runs():
            d = self._run_dict(run)
            run.stored_as, run.dirty = d["first_seq"], False
            runs.append(d)
        self._dirty, self._deleted = [], []
        self._generation += 1
        state = self._stored_state = self._state_dict()
        return {**state, "generation": self._generation, "runs": runs}

    def snapshot_delta(self) -> dict[str, Any] | None:
        """What changed since the last :meth:`snapshot` / :meth:`snapshot_delta`, or None when
        nothing did (nothing to store): every scalar field of a snapshot (small),
        ``runs_upsert`` (runs new or changed, keyed by their ``first_seq``), ``runs_delete``
        (``first_seq`` of stored runs that are gone), ``base`` (the generation it applies to)
        and ``generation``. Cost O(pairs changed + requests): for a link without requests,
        about the last batch (0.3 ms and 58 kB of JSON for 10k pairs). A store keeps one row per
        run and applies deletes, then upserts, in one transaction; :meth:`apply_snapshot_delta`
        does the same to a snapshot dict."""
        state = self._state_dict()
        if not self._dirty and not self._deleted and state == self._stored_state:
            return None
        self._stored_state = state
        upserts = []
        for run in self._dirty:
            run.dirty = False
            if run.removed:
                continue
            first = run.start % SEQ_MOD
            if run.stored_as is not None and run.stored_as != first:
                self._deleted.append(run.stored_as)
            run.stored_as = first
            upserts.append(self._run_dict(run))
        deletes, self._dirty, self._deleted = self._deleted, [], []
        base = self._generation
        self._generation += 1
        return {**state, "generation": self._generation, "delta": True, "base": base,
                "runs_upsert": upserts, "runs_delete": deletes}

    @staticmethod
    def apply_snapshot_delta(snap: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
        """The snapshot that ``delta`` (from :meth:`snapshot_delta`) turns ``snap`` into.
        ValueError if ``delta`` does not follow ``snap`` (``base`` ≠ its ``generation``): a
        delta was lost, take a full :meth:`snapshot`."""
        for name, d in (("snapshot", snap), ("delta", delta)):
            if not isinstance(d, Mapping) or d.get("version") != SNAPSHOT_VERSION:
                raise ValueError(f"{name}.version: expected {SNAPSHOT_VERSION}")
        if delta.get("delta") is not True:
            raise bad("delta", "delta", "True", delta.get("delta"))
        if delta.get("base") != snap.get("generation"):
            raise ValueError(f"delta.base: expected generation {snap.get('generation')!r}, got "
                             f"{delta.get('base')!r} (a delta is missing)")
        runs = {r["first_seq"]: r for r in snap["runs"]}
        for s in delta["runs_delete"]:
            runs.pop(s, None)
        for r in delta["runs_upsert"]:
            runs[r["first_seq"]] = r
        exp = delta["expected_seq"]
        out = {k: v for k, v in delta.items() if k not in _DELTA_ONLY}
        out["runs"] = sorted(runs.values(), key=lambda r: -seq_diff(exp, r["first_seq"]))
        return out

    def _restore_epoch(self, s: SnapshotFields) -> None:
        """The epoch fields of a snapshot (:meth:`_state_dict`)."""
        ep = s.get("epoch", (dict, type(None)))
        if ep is not None:
            w = "snapshot.epoch"
            check_epoch(w, "id", ep.get("id"))
            for key in ("sigma0", "sigma_next", "pos", "from"):
                check_int(w, key, ep.get(key), 0, MAX_ABS)
            if ep.get("start") is not None:
                check_int(w, "start", ep.get("start"), 0, MAX_ABS)
            self._epoch, self._epoch_sigma0 = ep["id"], ep["sigma0"]
            self._epoch_sigma_next, self._epoch_pos = ep["sigma_next"], ep["pos"]
            self._epoch_start, self._epoch_from = ep.get("start"), ep["from"]
        old = s.get("old_epochs", list)
        for i, e in enumerate(old):
            check_epoch("snapshot", f"old_epochs[{i}]", e)
        self._old_epochs = list(old)[-_MAX_OLD_EPOCHS:]
        for e, v in s.get("early_epochs", dict).items():
            check_epoch("snapshot", "early_epochs", e)
            if (not isinstance(v, list) or len(v) != 2
                    or not isinstance(v[0], int) or not isinstance(v[1], (int, type(None)))):
                raise bad("snapshot", f"early_epochs[{e!r}]", "[pos, start | null]", v)
            self._early[e] = (v[0], v[1])

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
            raise bad("restore", "restart_policy", "'resume' or 'expire_all'", restart_policy)
        s = SnapshotFields(snap)
        if s.get("version", int) != SNAPSHOT_VERSION:
            raise bad("snapshot", "version", f"{SNAPSHOT_VERSION} (format 1 held 16-bit "
                       "sequence numbers: start the link afresh)", snap.get("version"))
        purposes = s.get("purposes", (list, type(None)))
        end = cls(s.get("node", str), s.get("peer", str), s.get("link", str),
                  comm_delay=s.get("comm_delay", (int, float)),
                  max_fidelity=s.get("max_fidelity", (int, float)),
                  goodness=s.get("goodness", (int, float)), purposes=purposes,
                  initial_seq=s.get("expected_seq", int), measure=measure,
                  create_ids=create_ids if create_ids is not None
                  else CreateIdAllocator(s.get("next_create_id", int)),
                  max_pair_age=s.get("max_pair_age", int),
                  window_slack=s.get("window_slack", int))
        end._seen(now)
        end._epoch_heard = now      # the silence of the epoch is timed from the restart
        end._generation = s.get("generation", int)
        stats = s.get("stats", dict)
        for key in _STAT_TOTALS:
            v = stats.get(key, 0 if key in _NEW_TOTALS else None)
            check_int("snapshot.stats", key, v, 0)
            end._totals[key] = v
        absolute = "expected_abs" in snap   # else a previous version's: 32-bit ranges, no epoch
        if absolute:
            exp_abs = s.get("expected_abs", int)
            if exp_abs < 0 or exp_abs > MAX_ABS or exp_abs % SEQ_MOD != end.expected_seq:
                raise bad("snapshot", "expected_abs", f"an absolute number ≡ expected_seq="
                           f"{end.expected_seq} mod 2^{SEQ_BITS}", exp_abs)
            end._exp = exp_abs
            end._restore_epoch(s)
        back = s.get("window_back", int)
        check_int("snapshot", "window_back", back, 0, end.max_pair_age)
        floor = end._floor = end._exp - back
        prev_end: int | None = None
        for i, rd in enumerate(s.get("runs", list)):
            where = f"snapshot.runs[{i}]"
            first, run = cls._run_from_dict(rd, where)
            back = seq_diff(end.expected_seq, first)
            run.start = end._exp - back
            if back == 0 or back >= SEQ_HALF or run.end > end._exp or (
                    prev_end is not None and run.start < prev_end):
                raise bad(where, "first_seq", "runs in order, ending at or before "
                           f"expected_seq={end.expected_seq}", first)
            prev_end = run.end
            run.stored_as = first
            if run.end <= floor:      # aged out before the snapshot: gone (row not deleted yet)
                end._deleted.append(first)
                continue
            if run.start < floor:     # the window cut it after it was stored
                k = floor - run.start
                run.codes, run.times = run.codes[k:], run.times[k:]
                run.status, run.cid = run.status[k:], run.cid[k:]
                run.start = floor
                run.recount()
            end._runs.append(run)
            end._starts.append(run.start)
            end._runs_expired += run.n_gone == len(run)
        for i, rq in enumerate(s.get("requests", list)):
            try:
                req = _Request(rq["create_id"], Create.from_dict(rq["create"]),
                               now - float(rq["elapsed_s"]), list(rq["reserved"]),
                               int(rq["delivered"]))
                check_int("request", "create_id", req.create_id, 0, 0xFFFF)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"snapshot.requests[{i}]: {exc!r}") from None
            end._requests.append(req)
        out: list[Message] = []
        base = 2.0 * end.comm_delay
        for i, pair in enumerate(s.get("unacked_expires", list)):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise bad("snapshot", f"unacked_expires[{i}]", "[lo, hi]", pair)
            try:
                lo, hi = int(pair[0]), int(pair[1])
                if not absolute:
                    check_seq("snapshot", f"unacked_expires[{i}]", lo)
                    hi = end._rel_abs(hi % SEQ_MOD)
                    lo = hi - seq_diff(hi % SEQ_MOD, lo)
                if not lo < hi <= MAX_ABS:
                    raise bad("snapshot", f"unacked_expires[{i}]", "a range [lo, hi)", pair)
                end._unacked[(lo, hi)] = (now + base, base)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"snapshot.unacked_expires[{i}]: {exc}") from None
        # a snapshot of a previous version may hold thousands: merged down to max_unacked
        if len(end._unacked) > end.max_unacked:
            out += [m for m in end._bound_unacked(now) if not isinstance(m, Expire)]
        out += [end._expire_msg(lo, hi) for lo, hi in end._unacked]   # resent at once
        if end._epoch is not None and end._epoch_start is None:   # still waiting: ask again
            end._epoch_resend = now + 2.0 * end.comm_delay
            out.append(Epoch(end.link, end._epoch, end._epoch_pos, None))
        if restart_policy == "expire_all":
            first_alive = next((r.start + int(np.argmax(r.status != _EXPIRED))
                                for r in end._live_runs() if r.n_gone < len(r)), None)
            if first_alive is not None:
                out += end._drop(first_alive, end._exp, end.node)
                out += end._send_expire(first_alive, end._exp, now)
            for req in end._requests:
                req.reserved = []
        return end, out + end._serve()


