"""Cross-node counting of an M-type link: two analyzers' streams, aligned and counted.

:class:`CrossNodeCounter` takes this node's tag chunks and the peer's (from ``TAGS`` messages,
peer clock), finds the peer's clock offset and drift, follows them with the drift servo, and
counts coincidences for every setting pair with the native core; :func:`link_figures` turns the
counts into the link's telemetry (QBER per basis, fidelity, visibility, BBM92 figures, CHSH);
:meth:`CrossNodeCounter.window` sums the counts of a recent stretch of tag time (what the
polarisation controller, :mod:`qnode.daemon.acquisition.polarisation_control`, measures with);
:class:`BasisLayout` / :func:`parse_layout` describe and check an analyzer end's settings. The
role that runs it on a node is :mod:`qnode.daemon.roles.analyzer` (see its docstring for the
physics).
"""
from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from qnode.daemon.acquisition.clock_acquisition import AlignmentError, ClockAcquisition
from qnode.daemon.quantum import estimators as est
from qnode.daemon.quantum.estimators import car as car_estimate
from qnode.daemon.runtime.config import basis_label as _label, pauli_of_angle
from qnode.native import TAG_DTYPE, Coincidences, NFold, merge_channels, pair_deltas
from qnode.native.tracking import DriftTracker

if TYPE_CHECKING:
    from qnode.daemon.bus.telemetry import LinkTelemetry
    from qnode.native import TagBlock

log = logging.getLogger("qnode.cross_node")

PEER_BASE = 1 << 16          # peer basis j, outcome k is counted as channel PEER_BASE + 2j + k
MAX_BASES = 2                # per analyzer (passive BBM92 choice)
ACCIDENTAL_SHIFT_PS = 20_000
G2_HALF_RANGE_PS = 5_000
G2_BIN_PS = 100
MARGIN_PS = 2_000_000        # 2 µs kept back from the newest common time (window + jitter)
MAX_BUFFER_S = 5.0           # a stream waits at most this long for the other (then: dropped)
PHI_PLUS, PSI_PLUS = 0, 2    # BELL_STATES codes
SPAN_LOG_LEN = 4096          # counted spans kept for windows (~ 3 min at 20 spans/s)


@dataclass(frozen=True)
class CountWindow:
    """The counts of the spans inside a stretch of own-clock tag time [``t_start_ps``,
    ``t_end_ps``) (ps): ``counts``/``accidentals`` as :attr:`CrossNodeCounter.counts`."""

    counts: np.ndarray
    accidentals: np.ndarray
    t_start_ps: int
    t_end_ps: int
    spans: int

    @property
    def span_s(self) -> float:
        return max(self.t_end_ps - self.t_start_ps, 0) * 1e-12


@dataclass(frozen=True)
class BasisLayout:
    """One analyzer end's settings: per basis the (outcome 0, outcome 1) tagger channels, its
    label ("Z", "X" or "<angle>deg") and its HWP angle (deg; Bloch angle 4θ in the Z–X plane)."""

    channels: tuple[tuple[int, int], ...]
    labels: tuple[str, ...]
    angles_deg: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.channels)

    def pauli(self, i: int) -> tuple[str, int] | None:
        """(basis, sign) of basis i (sign −1: outcome 0 is the basis' '−' eigenstate)."""
        return pauli_of_angle(self.angles_deg[i])

    @classmethod
    def make(cls, channels: Sequence[int] | Sequence[Sequence[int]],
             angles_deg: Sequence[float] | None = None,
             labels: Sequence[str] | None = None) -> BasisLayout:
        """From flat channels (2 or 4) or pairs; angles default to Z 0°, X 22.5°; labels from
        the angles."""
        flat = ([int(c) for c in channels if isinstance(c, (int, np.integer))]
                if all(isinstance(c, (int, np.integer)) for c in channels) else None)
        pairs = (tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2)) if flat is not None
                 else tuple((int(p[0]), int(p[1])) for p in channels))  # type: ignore[index]
        if flat is not None and len(flat) % 2:
            raise ValueError(f"channels: expected pairs of outcome channels, got {channels!r}")
        if angles_deg is None:
            angles_deg = [0.0, 22.5][: len(pairs)]
        angles = tuple(float(a) for a in angles_deg)
        if labels is None:
            labels = tuple(_label(a) for a in angles)
        return cls(pairs, tuple(labels), angles)


def _int_list(x: object) -> bool:
    return isinstance(x, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in x)


def parse_layout(body: Mapping[str, Any]) -> BasisLayout:
    """The streamer's layout from a ``TAGS`` header; ValueError naming the field.

    ``outcome_channels``: one [out0, out1] pair per basis (1 or 2 bases), or the flat pair of
    the one-basis form; ``angles_deg``: the HWP angle per basis (deg; the one-basis form's
    ``angle_deg`` is read too, default 0); ``bases``: labels, each "Z" or "X" matching its angle
    or the "<angle>deg" label of a non-Pauli setting."""
    outcome = body.get("outcome_channels")
    if _int_list(outcome) and len(outcome) == 2:  # type: ignore[arg-type]
        pairs = [outcome]
    elif (isinstance(outcome, list) and 1 <= len(outcome) <= MAX_BASES
          and all(_int_list(p) and len(p) == 2 for p in outcome)):
        pairs = outcome
    else:
        raise ValueError(f"TAGS.outcome_channels: expected 1 or {MAX_BASES} pairs of channel "
                         f"numbers [out0, out1], got {outcome!r:.80}")
    flat = [c for p in pairs for c in p]  # type: ignore[union-attr]
    if len(set(flat)) != len(flat) or not all(0 <= c < 256 for c in flat):
        raise ValueError(f"TAGS.outcome_channels: channels must be distinct, 0..255, got {flat}")
    n = len(pairs)
    if "angles_deg" in body:
        angles = body["angles_deg"]
        if (not isinstance(angles, list) or len(angles) != n
                or not all(isinstance(a, int | float) and not isinstance(a, bool)
                           and math.isfinite(a) for a in angles)):
            raise ValueError(f"TAGS.angles_deg: expected {n} finite numbers, got {angles!r:.80}")
    else:
        angle = body.get("angle_deg", 0.0)
        if (not isinstance(angle, int | float) or isinstance(angle, bool)
                or not math.isfinite(angle) or n != 1):
            raise ValueError(f"TAGS.angles_deg: expected {n} finite numbers, got none "
                             f"(angle_deg {angle!r:.40})")
        angles = [angle]
    derived = [_label(float(a)) for a in angles]
    if "bases" in body:
        labels = body["bases"]
        if not isinstance(labels, list) or labels != derived:
            raise ValueError(f"TAGS.bases: expected the labels of angles_deg {derived}, "
                             f"got {labels!r:.80}")
    return BasisLayout(tuple((int(p[0]), int(p[1])) for p in pairs), tuple(derived),  # type: ignore[index]
                       tuple(float(a) for a in angles))


def _ideal_e(source_state: str, alpha_deg: float, beta_deg: float) -> float:
    """E of the ideal Bell state for analyzers at Bloch angles α, β in the Z–X plane:
    E = T_xx·sin α·sin β + T_zz·cos α·cos β (T diagonal, signs :data:`~.estimators.BELL_SIGNS`)."""
    sx, _, sz = est.BELL_SIGNS[source_state]
    a, b = math.radians(alpha_deg), math.radians(beta_deg)
    return sx * math.sin(a) * math.sin(b) + sz * math.cos(a) * math.cos(b)


def _quad(n: np.ndarray, own_sign: int = 1,
          peer_sign: int = 1) -> tuple[float, float, float, float]:
    """(N++, N−−, N+−, N−+) of a 2×2 outcome array n[own outcome, peer outcome] (outcome 0 is
    '+' unless that side's sign is −1)."""
    if own_sign < 0:
        n = n[::-1, :]
    if peer_sign < 0:
        n = n[:, ::-1]
    return (float(n[0, 0]), float(n[1, 1]), float(n[0, 1]), float(n[1, 0]))


def link_figures(counts: np.ndarray, accidentals: np.ndarray, own: BasisLayout,
                 peer: BasisLayout, source_state: str = "phi+") -> dict[str, Any]:
    """Link figures from the coincidences of every setting pair.

    ``counts``/``accidentals``: arrays [own basis i, peer basis j, own outcome, peer outcome]
    (at least own.n × peer.n). Returns (absent when not defined):

    * ``qber_z``/``qber_x``: :func:`~.estimators.basis_qber` of the coincidences of the own and
      peer bases with that label, outcomes mapped to the basis' ± eigenstates, against
      ``source_state``; raw counts (accidentals stay in: they are errors of the key as well),
      reported through :func:`~.estimators.physical_qber` without read-out correction:
      ``qber_<b>`` inside [0, 1], ``qber_<b>_raw`` the unclamped value (the same here: an error
      fraction of raw counts cannot leave [0, 1]), ``qber_<b>_ci_low``/``qber_<b>_ci_high`` the
      95 % Wilson interval; ``qber_<b>_err`` its σ (not in the telemetry).
    * ``visibility``: mean over those bases of s_b·E_bb (accidental-subtracted correlation, s_b
      the source state's sign, V_b = 1 − 2Q_b); with one setting on each side and no
      common Pauli basis, |E| of that setting pair (accidental-subtracted).
    * ``fidelity_estimate``, ``fidelity_method``: "two_basis_bound" F ≥ 1 − Q_Z − Q_X
      (:func:`~.estimators.fidelity_lower_bound`) when both are measured, else "werner":
      F = (1 + 3V)/4 from the one basis' raw V = 1 − 2Q (or the visibility above).
    * ``secret_fraction``: BBM92 1 − f·h(Q_Z) − h(Q_X) (:func:`~.estimators.secret_fraction`).
    * ``sifted_total``: raw coincidences of the matched-basis setting pairs (the sifted bits).
    * ``chsh_s``, ``chsh_s_err``: with two settings on each side whose ideal S for
      ``source_state`` exceeds the local bound 2, S = |E(a0,b0) + E(a0,b1) + E(a1,b0) −
      E(a1,b1)| (a = own, b = peer, E with outcome 0 = +1; accidental-subtracted,
      :func:`~.estimators.chsh_from_counts`). For Φ+ (E = cos(α − β) at Bloch angles α, β) it
      is 2√2 at own α = 0, π/2 (HWP 0°, 22.5°: Z, X) and peer β = π/4, −π/4 (HWP 11.25°,
      −11.25°). ``chsh_s_raw``, ``chsh_s_raw_err``: the same from the raw coincidences, the
      accidentals kept (what a test without any subtraction claims; below ``chsh_s``).
    """
    out: dict[str, Any] = {}
    c = np.asarray(counts, float)
    a = np.asarray(accidentals, float)
    per_basis: dict[str, list[np.ndarray]] = {}
    per_basis_acc: dict[str, list[np.ndarray]] = {}
    for i in range(own.n):
        for j in range(peer.n):
            po, pp = own.pauli(i), peer.pauli(j)
            if po is None or pp is None or po[0] != pp[0]:
                continue
            per_basis.setdefault(po[0], []).append(np.array(_quad(c[i, j], po[1], pp[1])))
            per_basis_acc.setdefault(po[0], []).append(np.array(_quad(a[i, j], po[1], pp[1])))
    q: dict[str, est.Qber] = {}
    vis: list[float] = []
    sifted = 0.0
    for b, quads in per_basis.items():
        n = np.sum(quads, axis=0)
        acc = np.sum(per_basis_acc[b], axis=0)
        sifted += float(n.sum())
        qb = est.basis_qber(*n, basis=b, source_state=source_state)
        if qb.total == 0:
            continue
        q[b] = qb
        out.update(est.qber_telemetry(b, est.physical_qber(qb.errors, qb.total)))
        out[f"qber_{b.lower()}_err"] = qb.sigma
        n_pp, n_mm, n_pm, n_mp = n
        e = est.correlation(n_pp, n_mm, n_pm, n_mp, accidentals=list(np.minimum(acc, n)))
        if math.isfinite(e.value):
            vis.append(est.BELL_SIGNS[source_state][est.BASES.index(b)] * e.value)
    if per_basis:
        out["sifted_total"] = sifted
    if vis:
        out["visibility"] = float(np.mean(vis))
    elif own.n == 1 and peer.n == 1:
        e = est.correlation(*_quad(c[0, 0]), accidentals=list(np.minimum(_quad(a[0, 0]),
                                                                          _quad(c[0, 0]))))
        if math.isfinite(e.value):
            out["visibility"] = abs(e.value)
    if "Z" in q and "X" in q:
        f = est.fidelity_lower_bound(q_z=q["Z"], q_x=q["X"])
        out["fidelity_estimate"], out["fidelity_method"] = f.value, "two_basis_bound"
        out["secret_fraction"] = est.secret_fraction(q["Z"], q["X"]).value
    elif q:
        qb = next(iter(q.values()))
        out["fidelity_estimate"], out["fidelity_method"] = 1 - 1.5 * qb.value, "werner"
    elif "visibility" in out:
        out["fidelity_estimate"] = (1 + 3 * out["visibility"]) / 4
        out["fidelity_method"] = "werner"
    if own.n == 2 and peer.n == 2:
        alpha = [4 * x for x in own.angles_deg]
        beta = [4 * x for x in peer.angles_deg]
        ideal = (_ideal_e(source_state, alpha[0], beta[0]) + _ideal_e(source_state, alpha[0],
                 beta[1]) + _ideal_e(source_state, alpha[1], beta[0])
                 - _ideal_e(source_state, alpha[1], beta[1]))
        if abs(ideal) > 2 + 1e-9:
            # chsh_from_counts: S = |E1 − E2 + E3 + E4| over settings (a,b), (a,b'), (a',b),
            # (a',b'); with a = a1, a' = a0, b = b0, b' = b1 that is our convention.
            order = [(1, 0), (1, 1), (0, 0), (0, 1)]
            rows = [_quad(c[i, j]) for i, j in order]
            accs = [tuple(min(x, y) for x, y in zip(_quad(a[i, j]), r, strict=True))
                    for (i, j), r in zip(order, rows, strict=True)]
            if all(sum(r) > 0 for r in rows):
                s = est.chsh_from_counts(rows, accs)
                if math.isfinite(s.value):
                    out["chsh_s"], out["chsh_s_err"] = s.value, s.sigma
                raw = est.chsh_from_counts(rows)
                if math.isfinite(raw.value):
                    out["chsh_s_raw"], out["chsh_s_raw_err"] = raw.value, raw.sigma
    return out


class CrossNodeCounter:
    """Own and peer tag streams → aligned, counted cross-node coincidences (runs on a worker
    thread; the role calls :meth:`process` after each arrival). Times in ps.

    ``channels``: own outcome channels, 2 (one basis) or 4 (two bases, outcome 0 and 1 of each);
    ``angles_deg``/``labels``: own HWP angle and label per basis (default Z 0°, X 22.5°);
    ``source_state``: the ideal state the QBERs count errors against. :attr:`counts` and
    :attr:`accidentals` are [own basis, peer basis (2), own outcome, peer outcome] since the
    start or the peer's last layout change (:meth:`add_peer`)."""

    def __init__(self, channels: Sequence[int], window_ps: int, align_s: float, *,
                 angles_deg: Sequence[float] | None = None, labels: Sequence[str] | None = None,
                 source_state: str = "phi+"):
        self.layout = BasisLayout.make(channels, angles_deg, labels)
        if not 1 <= self.layout.n <= MAX_BASES:
            raise ValueError(f"channels: 2 or 4 own channels, got {list(channels)}")
        self.source_state = source_state
        self.a = tuple(c for p in self.layout.channels for c in p)
        self.b = tuple(PEER_BASE + k for k in range(2 * MAX_BASES))
        self.peer_layout: BasisLayout | None = None
        self.window_ps = window_ps
        self.align_ps = int(align_s * 1e12)
        self.own: collections.deque[np.ndarray] = collections.deque()   # TagBlocks
        self.peer: collections.deque[tuple[np.ndarray, np.ndarray]] = collections.deque()
        self.own_end = -1          # own stream complete up to (own clock)
        self.peer_end = -1         # peer stream complete up to (peer clock)
        self.processed_to = -1     # own clock: everything before was counted
        self.tracker: DriftTracker | None = None
        self.rejected = 0
        self.spans = 0
        self.peer_tags = 0
        self.dropped_tags = 0
        self.layout_changes = 0
        pairs = [(x, y) for x in self.a for y in self.b]   # order: i, k, j, l
        self.coinc = Coincidences(pairs, window_ps, accidental_offset_ps=ACCIDENTAL_SHIFT_PS)
        self.nfold = NFold([*self.a, *self.b], window_ps, min_fold=2)
        codes: dict[int, int] = {}
        for ia, ca in enumerate(self.a):
            for ib, cb in enumerate(self.b):
                codes[self.nfold.mask_of([ca, cb])] = PHI_PLUS if ia % 2 == ib % 2 else PSI_PLUS
        self._pair_masks = np.array(sorted(codes), np.uint64)
        self._pair_codes = np.array([codes[m] for m in sorted(codes)], np.uint8)
        shape = (self.layout.n, MAX_BASES, 2, 2)
        self.counts = np.zeros(shape, np.int64)
        self.accidentals = np.zeros(shape, np.int64)
        self.singles_a = 0
        self.singles_b = 0
        self.g2 = np.zeros(2 * G2_HALF_RANGE_PS // G2_BIN_PS, np.int64)
        self._last: dict[str, float] = {}
        self.clock = ClockAcquisition(align_s, window_ps)
        # (start, end, counts, accidentals) of each counted span; read from the event loop
        self.span_log: collections.deque[tuple[int, int, np.ndarray, np.ndarray]] = (
            collections.deque(maxlen=SPAN_LOG_LEN))
        self._span_lock = threading.Lock()

    # ---------------------------------------------------------------- input
    def add_own(self, block: TagBlock, t_end_ps: int, received_s: float | None = None) -> None:
        """Own tags, complete up to ``t_end_ps`` (own clock, ps); ``received_s``: when the chunk
        arrived (host monotonic clock, s), which places the two streams for the first
        alignment when they did not start together."""
        self.own.append(block[block["type"] == 0])
        self.own_end = max(self.own_end, t_end_ps)
        self.clock.note_own(t_end_ps, received_s)

    def add_peer(self, times: np.ndarray, channels: np.ndarray, t_end_ps: int,
                 layout: BasisLayout | Sequence[int] | Sequence[Sequence[int]],
                 received_s: float | None = None) -> None:
        """Peer tags (peer clock) and the peer's layout (a :class:`BasisLayout`, or its outcome
        channels: one pair, or one pair per basis, angles then Z 0°, X 22.5°). Peer basis j,
        outcome k is renumbered to ``PEER_BASE + 2j + k``; other channels are dropped. A new
        layout restarts the per-setting counts (they would mix settings otherwise).
        ``received_s``: as in :meth:`add_own`."""
        if not isinstance(layout, BasisLayout):
            layout = BasisLayout.make(layout)
        if not 1 <= layout.n <= MAX_BASES:
            raise ValueError(f"outcome_channels: 1 or {MAX_BASES} bases, got {layout.n}")
        if layout != self.peer_layout:
            if self.peer_layout is not None:
                log.warning("peer analyzer settings changed (%s → %s): counts restart",
                            self.peer_layout, layout)
                self.layout_changes += 1
                self.restart_counts()
                with self._span_lock:
                    self.span_log.clear()
            self.peer_layout = layout
        mapped = np.full(channels.shape, -1, np.int32)
        for j, pair in enumerate(layout.channels):
            for k, ch in enumerate(pair):
                mapped[channels == ch] = PEER_BASE + 2 * j + k
        keep = mapped >= 0
        times, channels = times[keep], mapped[keep]
        self.peer.append((times, channels))
        self.peer_end = max(self.peer_end, t_end_ps)
        self.peer_tags += times.size
        self.clock.note_peer(t_end_ps, received_s)

    # ---------------------------------------------------------------- work
    def process(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Count what both streams cover; (codes, own-clock times) of the new pairs, or None
        when nothing could be processed yet."""
        # neither stream waits for the other without bound (a silent peer, a stopped tagger):
        # what is older than that behind its own newest tag is dropped, and counted
        self._trim(max(int(MAX_BUFFER_S * 1e12), 2 * self.align_ps))
        if self.own_end < 0 or self.peer_end < 0:
            return None
        if self.tracker is None and not self._acquire():
            return None
        assert self.tracker is not None
        horizon = min(self.own_end, int(self.tracker.to_reference(
            np.array([self.peer_end], np.int64))[0])) - MARGIN_PS
        if horizon <= self.processed_to:
            return None
        own = self._take_own(horizon)
        peer_t, peer_c = self._take_peer(horizon)
        self.tracker.update(own["time"], peer_t)
        mapped = self.tracker.to_reference(peer_t) if peer_t.size else peer_t
        start, self.processed_to = self.processed_to, horizon
        self.spans += 1
        return self._count(own, mapped, peer_c, (start, horizon))

    def restart_counts(self) -> None:
        """Zero the cumulative counts behind the link figures (e.g. after the analyzer
        settings changed: they would mix settings otherwise). The span log stays."""
        self.counts[:] = 0
        self.accidentals[:] = 0
        self._last.pop("sift", None)

    def window(self, t_start_ps: int, t_end_ps: int | None = None) -> CountWindow:
        """The counts of the spans that lie inside [t_start_ps, t_end_ps) (own clock, ps;
        ``None``: up to the newest). Spans are what one :meth:`process` counted (a tagger
        chunk or less), so the window's edges are the spans' edges inside it."""
        counts = np.zeros_like(self.counts)
        accidentals = np.zeros_like(self.accidentals)
        lo, hi, n = -1, -1, 0
        end = t_end_ps if t_end_ps is not None else 2**62
        inside = []
        with self._span_lock:          # spans are in time order: walk back from the newest
            for span in reversed(self.span_log):
                if span[0] < t_start_ps:
                    break
                if span[1] <= end:
                    inside.append(span)
        for t0, t1, c, a in reversed(inside):
            counts += c
            accidentals += a
            lo = t0 if n == 0 else lo
            hi, n = t1, n + 1
        return CountWindow(counts, accidentals, lo, hi, n)

    def _acquire(self) -> bool:
        """Initial alignment from ``align_s`` of both streams (kept; counted afterwards)."""
        own_t = np.concatenate([b["time"] for b in self.own]) if self.own else np.empty(0, int)
        peer_t = (np.concatenate([t for t, _ in self.peer]) if self.peer
                  else np.empty(0, np.int64))
        try:
            tracker = self.clock.acquire(own_t, peer_t)
        except AlignmentError:
            self._trim(keep_ps=self.align_ps)
            return False
        if tracker is None:
            return False
        self.tracker = tracker
        self.processed_to = int(own_t[0]) - 1
        return True

    @property
    def alignment_error(self) -> str:
        """Why the last clock alignment failed ("" once found)."""
        return self.clock.error

    def _trim(self, keep_ps: int) -> None:
        if self.own:
            newest = int(self.own[-1]["time"][-1]) if self.own[-1].size else self.own_end
            while len(self.own) > 1 and (not self.own[0].size
                                         or int(self.own[0]["time"][-1]) < newest - keep_ps):
                self.dropped_tags += self.own.popleft().size
        if self.peer:
            newest = int(self.peer[-1][0][-1]) if self.peer[-1][0].size else self.peer_end
            while len(self.peer) > 1 and (not self.peer[0][0].size
                                          or int(self.peer[0][0][-1]) < newest - keep_ps):
                self.dropped_tags += self.peer.popleft()[0].size

    def _take_own(self, horizon: int) -> np.ndarray:
        parts = []
        while self.own:
            blk = self.own[0]
            cut = int(np.searchsorted(blk["time"], horizon, side="left"))
            parts.append(blk[:cut])
            if cut < blk.size:
                self.own[0] = blk[cut:]
                break
            self.own.popleft()
        return np.concatenate(parts) if parts else np.empty(0, dtype=TAG_DTYPE)

    def _take_peer(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.tracker is not None
        limit = int(self.tracker.to_node_b(np.array([horizon], np.int64))[0])
        ts, cs = [], []
        while self.peer:
            t, c = self.peer[0]
            cut = int(np.searchsorted(t, limit, side="left"))
            ts.append(t[:cut])
            cs.append(c[:cut])
            if cut < t.size:
                self.peer[0] = (t[cut:], c[cut:])
                break
            self.peer.popleft()
        if not ts:
            return np.empty(0, np.int64), np.empty(0, np.int32)
        return np.concatenate(ts), np.concatenate(cs)

    def _count(self, own: np.ndarray, mapped: np.ndarray, peer_c: np.ndarray,
               span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        by_channel: dict[int, np.ndarray] = {}
        for ch in self.a:
            by_channel[ch] = np.ascontiguousarray(own["time"][own["channel"] == ch])
        for ch in self.b:
            sel = np.sort(mapped[peer_c == ch])
            by_channel[ch] = np.ascontiguousarray(sel, dtype=np.int64)
        block = merge_channels(by_channel)
        pc = self.coinc.process(block)
        # pairs are ordered (own basis i, own outcome k, peer basis j, peer outcome l)
        shape = (self.layout.n, 2, MAX_BASES, 2)
        dc = pc.coincidences.reshape(shape).transpose(0, 2, 1, 3).astype(np.int64)
        da = (np.zeros_like(dc) if pc.accidentals is None
              else pc.accidentals.reshape(shape).transpose(0, 2, 1, 3).astype(np.int64))
        self.counts += dc
        self.accidentals += da
        with self._span_lock:
            self.span_log.append((span[0], span[1], dc, da))
        self.singles_a += sum(by_channel[c].size for c in self.a)
        self.singles_b += sum(by_channel[c].size for c in self.b)
        a_all = np.sort(np.concatenate([by_channel[c] for c in self.a]))
        b_all = np.sort(np.concatenate([by_channel[c] for c in self.b]))
        if a_all.size and b_all.size:
            d = pair_deltas(a_all, b_all, -G2_HALF_RANGE_PS, G2_HALF_RANGE_PS - 1)
            self.g2 += np.bincount((d + G2_HALF_RANGE_PS) // G2_BIN_PS,
                                   minlength=self.g2.size)[: self.g2.size]
        ev = self.nfold.process(block).events
        masks = ev["mask"].astype(np.uint64)
        idx = np.searchsorted(self._pair_masks, masks)
        idx_c = np.minimum(idx, self._pair_masks.size - 1)
        keep = self._pair_masks[idx_c] == masks       # exactly one own and one peer detector
        codes = self._pair_codes[idx_c[keep]]
        return codes, np.ascontiguousarray(ev["time"][keep], dtype=np.int64)

    # ---------------------------------------------------------------- telemetry
    def telemetry(self, interval_s: float) -> LinkTelemetry:
        """Rates are per second of *tag time* counted since the last call (the counting lags
        the wall clock by the network and runs in bursts); the peer's tag rate is per wall
        second (``interval_s``). QBERs, visibility, fidelity, key fraction and CHSH S come from
        the counts since the start (or the peer's last layout change): :func:`link_figures`."""
        total = float(self.counts.sum())
        acc_total = float(self.accidentals.sum())
        now = {"coinc": total, "acc": acc_total, "span_ps": float(max(self.processed_to, 0))}
        span_s = (now["span_ps"] - self._last.get("span_ps", now["span_ps"])) / 1e12
        t: LinkTelemetry = {"remote_tags_rate_hz":
                            (self.peer_tags - self._last.get("peer", 0.0)) / interval_s}
        if span_s > 0:
            t["coincidence_rate_hz"] = (now["coinc"] - self._last.get("coinc", 0.0)) / span_s
            t["accidental_rate_hz"] = (now["acc"] - self._last.get("acc", 0.0)) / span_s
        now["peer"] = float(self.peer_tags)
        if acc_total > 0:
            t["car"] = car_estimate(total, acc_total).value
        if self.peer_layout is not None:
            figures = link_figures(self.counts, self.accidentals, self.layout, self.peer_layout,
                                   self.source_state)
            sifted = figures.pop("sifted_total", None)
            for key in ("qber_z_err", "qber_x_err"):
                figures.pop(key, None)
            # what is left are telemetry fields; the QBERs' names are built from the basis
            t = {**t, **cast("LinkTelemetry", figures)}
            if sifted is not None:
                now["sift"] = sifted
                if span_s > 0 and "sift" in self._last:
                    t["sifted_key_rate_hz"] = est.sifted_key_rate(
                        max(sifted - self._last["sift"], 0.0), span_s, sifting=1.0).value
        self._last = now
        tr = self.tracker
        if tr is None:
            t["tracker_state"] = "ACQUIRING"
        else:
            st = tr.state
            t["tracker_state"] = st.status.name
            t["offset_ps"] = float(tr.offset_at(self.processed_to))
            t["drift_ppb"] = float(st.drift_ppm * 1e3)
        return t
