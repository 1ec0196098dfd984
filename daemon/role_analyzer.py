"""Role ``analyzer``: one end of an M-type (measure-directly) link (DESIGN §1, §3).

Both analyzers of a link measure their photons (``[analyzer].channels``: the detectors of outcome
0 and 1, behind a PBS; the basis is set by the half-wave plate ``[analyzer].waveplate`` at
``angle_deg``). The end whose node id sorts first is the link's **counter**, the other one the
**streamer**:

* the streamer publishes every tagger chunk as a compact ``TAGS`` message on ``tags/<link>``
  (:mod:`.tagwire`), with its waveplate angle;
* the counter buffers its own chunks, finds the peer's clock offset and drift from the first
  ``align_s`` seconds of both streams (:func:`qnode.native.align.find_offset_and_drift`), then
  follows them with the :class:`~qnode.native.tracking.DriftTracker` servo, maps the peer's tags
  into its own time base and counts cross-node coincidences with the native core (window
  ``[analyzer].window_ps``; accidentals in a window displaced by 20 ns). Each coincidence is a
  delivered pair: the counter numbers them like a herald station and publishes one ``HERALD``
  batch per processed span on ``herald/<link>``, which both ends' link layers apply. The raw
  Bell-state field of an M-type pair is its Z-parity class: ``phi+`` for equal outcomes,
  ``psi+`` for opposite ones.

Telemetry (counter): coincidence and accidental rates, CAR, the correlation E and visibility |E|,
QBER = (1 − |E|)/2 in the basis both analyzers share (``qber_z`` at 0°, ``qber_x`` at 22.5°),
the clock offset and drift, tracker state, the peer's tag rate and a g2 histogram (±5 ns).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from qnode.native import TAG_DTYPE, Coincidences, NFold, merge_channels, pair_deltas
from qnode.native.align import AlignmentError, find_offset_and_drift
from qnode.native.tracking import DriftTracker

from . import tagwire
from .acquisition import AcquisitionPipeline, IngestMeter
from .estimators import car as car_estimate
from .instruments import make_tagger
from .link_service import LinkService
from .linklayer import HeraldStation

if TYPE_CHECKING:
    from qnode.native import TagBlock

    from .messages import Message as Envelope
    from .node import NodeContext
    from .telemetry import LinkTelemetry, Telemetry
    from .topics import Topic

log = logging.getLogger("qnode.analyzer")

PEER_OFFSET = 100            # peer channel c is counted as channel PEER_OFFSET + c
ACCIDENTAL_SHIFT_PS = 20_000
G2_HALF_RANGE_PS = 5_000
G2_BIN_PS = 100
MARGIN_PS = 2_000_000        # 2 µs kept back from the newest common time (window + jitter)
MAX_BUFFER_S = 5.0           # a peer silent this long: our oldest tags are dropped (counted)
PHI_PLUS, PSI_PLUS = 0, 2    # BELL_STATES codes


class AnalyzerRole:
    name = "analyzer"

    def __init__(self, ctx: NodeContext):
        cfg = ctx.config.analyzer
        assert cfg is not None
        self.ctx, self.cfg = ctx, cfg
        links = [link for link in ctx.config.links if link.type == "M"]
        if len(links) != 1:
            raise ValueError(f"{ctx.config.path}: links: an analyzer serves exactly one M-type "
                             f"link, found {len(links)}")
        self.link = links[0]
        self.counter = ctx.node < self.link.peer
        self.service = ctx.router.add(LinkService(
            ctx, self.link.id, self.link.peer, "M", goodness=0.5, capacity=cfg.capacity,
            max_pair_age_s=cfg.max_pair_age_s))
        self.calibrations: dict[str, Callable[[Any], None]] = {}
        if cfg.waveplate is not None:
            self.calibrations[cfg.waveplate] = lambda d: d.move_absolute_deg(cfg.angle_deg)
        self.health_checks: dict[str, Callable[[Any], None]] = {}
        self.pipeline: AcquisitionPipeline | None = None
        self.ingest = IngestMeter()
        self.counting: CrossNodeCounter | None = None
        self.sent_tags = 0
        self._count_lock = asyncio.Lock()  # own chunks and peer messages both trigger counting
        if self.counter:
            self.counting = CrossNodeCounter(cfg.channels, cfg.window_ps, cfg.align_s)
            self.station = HeraldStation([self.link.id])
            ctx.bus.subscribe(f"qnet/v1/{ctx.config.network}/{self.link.peer}/tags/"
                              f"{self.link.id}")
            ctx.bus.on("tags", self._on_tags)
        else:
            ctx.bus.heralds[self.link.id] = self.link.peer  # the counter heralds this link

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        async def tick() -> None:
            await self.service.start()
            await self.service.tick_loop()
        return {"acquire": self._acquire, f"{self.link.id}:tick": tick}

    # ------------------------------------------------------------------ own tags
    async def _acquire(self) -> None:
        inst = self.ctx.instrument(self.cfg.tagger)
        await inst.wait_ready()
        if self.cfg.waveplate is not None:
            await self.ctx.instrument(self.cfg.waveplate).wait_ready()
        tagger = make_tagger(self.ctx.config.instruments[self.cfg.tagger], inst.driver,
                             self.cfg.channels)
        a, b = self.cfg.channels
        self.pipeline = pipeline = AcquisitionPipeline(
            tagger, pairs=[(a, b)], window_ps=self.cfg.window_ps, policy="block",
            keep_blocks=True)
        try:
            async with pipeline:
                async for events in pipeline.events():
                    block = events.block
                    if block is None:
                        continue
                    if self.counter:
                        assert self.counting is not None
                        self.counting.add_own(block, events.t_end_ps)
                        await self._count()
                    else:
                        body = tagwire.encode(block, link=self.link.id,
                                              chunk=events.chunk_index,
                                              extra={"t_end_ps": events.t_end_ps,
                                                     "angle_deg": self.cfg.angle_deg,
                                                     "outcome_channels": list(self.cfg.channels)})
                        self.sent_tags += body["n"]
                        self.ctx.bus.publish(self.ctx.topics.tags(self.link.id), "TAGS", body,
                                             sign_with=self.link.peer)
        finally:
            self.pipeline = None
            await asyncio.to_thread(tagger.close)

    # ------------------------------------------------------------------ peer tags (counter)
    async def _on_tags(self, topic: Topic, msg: Envelope) -> None:
        assert self.counting is not None
        if topic.arg != self.link.id or msg.sender != self.link.peer:
            self.counting.rejected += 1
            return
        try:
            times, channels = tagwire.decode(msg.body)
            t_end = msg.body.get("t_end_ps")
            if not isinstance(t_end, int) or isinstance(t_end, bool):
                raise ValueError(f"TAGS.t_end_ps: expected an integer, got {t_end!r}")
            angle = msg.body.get("angle_deg", 0.0)
            if not isinstance(angle, int | float) or not math.isfinite(angle):
                raise ValueError(f"TAGS.angle_deg: expected a number, got {angle!r}")
            outcome = msg.body.get("outcome_channels")
            if (not isinstance(outcome, list) or len(outcome) != 2
                    or not all(isinstance(c, int) and not isinstance(c, bool) for c in outcome)):
                raise ValueError(f"TAGS.outcome_channels: expected two channel numbers, "
                                 f"got {outcome!r}")
        except ValueError as exc:
            self.counting.rejected += 1
            log.warning("rejected TAGS from %s: %s", msg.sender, exc,
                        extra={"link": self.link.id, "sender": msg.sender, "error": str(exc)})
            return
        self.counting.peer_angle_deg = float(angle)
        self.counting.add_peer(times, channels, t_end, (outcome[0], outcome[1]))
        await self._count()

    async def _count(self) -> None:
        assert self.counting is not None
        async with self._count_lock:
            result = await asyncio.to_thread(self.counting.process)
            if result is not None:
                await self._herald(*result)

    async def _herald(self, codes: np.ndarray, times: np.ndarray) -> None:
        link = self.link.id
        if codes.size:
            self.station.successes(link, codes, times)
        for batch in self.station.flush(self.counting.spans):
            await self.service.on_local_herald(batch)
            self.ctx.bus.publish(self.ctx.topics.herald(link), batch.TYPE, batch.to_dict(),
                                 sign_with=link)

    # ------------------------------------------------------------------ life cycle, telemetry
    async def close(self) -> None:
        await self.service.persist()

    def fill_telemetry(self, record: Telemetry, interval_s: float) -> None:
        t = self.service.telemetry(interval_s)
        if self.counting is not None:
            t.update(self.counting.telemetry(interval_s, self.cfg.angle_deg))
            t["role"] = "counter"
            v = t.get("visibility")
            if v is not None:  # Werner assumption: F = (1 + 3V)/4 (one basis measured)
                self.service.end.set_goodness(min(1.0, max(0.0, (1 + 3 * v) / 4)))
                t["fidelity_estimate"] = self.service.end.goodness
            g2 = self.counting.g2
            record["g2"] = {"bin_ps": G2_BIN_PS, "first_bin_ps": -G2_HALF_RANGE_PS,
                            "counts": [int(x) for x in g2]}
        else:
            t.pop("fidelity_estimate", None)  # the counter measures it; this end cannot
        record["links"][self.link.id] = t
        p = self.pipeline
        if p is not None:
            self.ingest.fill(record, p.stats, interval_s)


class CrossNodeCounter:
    """Own and peer tag streams → aligned, counted cross-node coincidences (runs on a worker
    thread; the role calls :meth:`process` after each arrival). Times in ps."""

    def __init__(self, channels: tuple[int, int], window_ps: int, align_s: float):
        self.a = channels
        self.b = (PEER_OFFSET + channels[0], PEER_OFFSET + channels[1])
        self.window_ps = window_ps
        self.align_ps = int(align_s * 1e12)
        self.own: collections.deque[np.ndarray] = collections.deque()   # TagBlocks
        self.peer: collections.deque[tuple[np.ndarray, np.ndarray]] = collections.deque()
        self.own_end = -1          # own stream complete up to (own clock)
        self.peer_end = -1         # peer stream complete up to (peer clock)
        self.processed_to = -1     # own clock: everything before was counted
        self.tracker: DriftTracker | None = None
        self.peer_angle_deg = 0.0
        self.rejected = 0
        self.spans = 0
        self.peer_tags = 0
        self.dropped_tags = 0
        pairs = [(x, y) for x in self.a for y in self.b]
        self.coinc = Coincidences(pairs, window_ps, accidental_offset_ps=ACCIDENTAL_SHIFT_PS)
        self.nfold = NFold([*self.a, *self.b], window_ps, min_fold=2)
        self.mask_a = [self.nfold.mask_of([c]) for c in self.a]
        self.mask_b = [self.nfold.mask_of([c]) for c in self.b]
        self.counts = np.zeros(4, np.int64)       # (a0b0, a0b1, a1b0, a1b1)
        self.accidentals = np.zeros(4, np.int64)
        self.singles_a = 0
        self.singles_b = 0
        self.g2 = np.zeros(2 * G2_HALF_RANGE_PS // G2_BIN_PS, np.int64)
        self._last: dict[str, float] = {}
        self.alignment_error = ""

    # ---------------------------------------------------------------- input
    def add_own(self, block: TagBlock, t_end_ps: int) -> None:
        self.own.append(block[block["type"] == 0])
        self.own_end = max(self.own_end, t_end_ps)

    def add_peer(self, times: np.ndarray, channels: np.ndarray, t_end_ps: int,
                 outcome_channels: tuple[int, int]) -> None:
        """Peer tags (peer clock); ``outcome_channels``: the peer's channels of outcome 0, 1
        (renumbered to ``PEER_OFFSET + own outcome channel``; other channels are dropped)."""
        mapped = np.full(channels.shape, -1, np.int32)
        for i, ch in enumerate(outcome_channels):
            mapped[channels == ch] = self.b[i]
        keep = mapped >= 0
        times, channels = times[keep], mapped[keep]
        self.peer.append((times, channels))
        self.peer_end = max(self.peer_end, t_end_ps)
        self.peer_tags += times.size

    # ---------------------------------------------------------------- work
    def process(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Count what both streams cover; (codes, own-clock times) of the new pairs, or None
        when nothing could be processed yet."""
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
        self.processed_to = horizon
        self.spans += 1
        return self._count(own, mapped, peer_c)

    def _acquire(self) -> bool:
        """Initial alignment from ``align_s`` of both streams (kept; counted afterwards)."""
        own_t = np.concatenate([b["time"] for b in self.own]) if self.own else np.empty(0, int)
        peer_t = (np.concatenate([t for t, _ in self.peer]) if self.peer
                  else np.empty(0, np.int64))
        if own_t.size < 100 or peer_t.size < 100:
            return False
        if own_t[-1] - own_t[0] < self.align_ps or peer_t[-1] - peer_t[0] < self.align_ps:
            return False
        span = max(self.align_ps // 4, 50_000_000_000)  # ≥ 50 ms per early/late span
        try:
            est = find_offset_and_drift(own_t, peer_t, span_ps=span,
                                        offset_hint_ps=int(peer_t[0]) - int(own_t[0]))
        except AlignmentError as exc:
            self.alignment_error = str(exc)
            log.warning("clock alignment failed, retrying with newer data: %s", exc)
            self._trim(keep_ps=self.align_ps)
            return False
        log.info("peer clock found: offset %d ps, drift %.3f ppm (%.0f sigma)", est.offset_ps,
                 est.drift_ppm, est.significance, extra={"offset_ps": est.offset_ps,
                                                         "drift_ppm": est.drift_ppm})
        self.tracker = DriftTracker(est, tracking_window_ps=max(1000, self.window_ps))
        self.processed_to = int(own_t[0]) - 1
        return True

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

    def _count(self, own: np.ndarray, mapped: np.ndarray, peer_c: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        by_channel: dict[int, np.ndarray] = {}
        for ch in self.a:
            by_channel[ch] = np.ascontiguousarray(own["time"][own["channel"] == ch])
        for ch in self.b:
            sel = np.sort(mapped[peer_c == ch])
            by_channel[ch] = np.ascontiguousarray(sel, dtype=np.int64)
        block = merge_channels(by_channel)
        pc = self.coinc.process(block)
        self.counts += pc.coincidences
        if pc.accidentals is not None:
            self.accidentals += pc.accidentals
        self.singles_a += sum(by_channel[c].size for c in self.a)
        self.singles_b += sum(by_channel[c].size for c in self.b)
        a_all = np.sort(np.concatenate([by_channel[c] for c in self.a]))
        b_all = np.sort(np.concatenate([by_channel[c] for c in self.b]))
        if a_all.size and b_all.size:
            d = pair_deltas(a_all, b_all, -G2_HALF_RANGE_PS, G2_HALF_RANGE_PS - 1)
            self.g2 += np.bincount((d + G2_HALF_RANGE_PS) // G2_BIN_PS,
                                   minlength=self.g2.size)[: self.g2.size]
        ev = self.nfold.process(block).events
        masks = ev["mask"]
        equal = ((masks == self.mask_a[0] | self.mask_b[0])
                 | (masks == self.mask_a[1] | self.mask_b[1]))
        opposite = ((masks == self.mask_a[0] | self.mask_b[1])
                    | (masks == self.mask_a[1] | self.mask_b[0]))
        keep = equal | opposite
        codes = np.where(equal[keep], PHI_PLUS, PSI_PLUS).astype(np.uint8)
        return codes, np.ascontiguousarray(ev["time"][keep], dtype=np.int64)

    # ---------------------------------------------------------------- telemetry
    def telemetry(self, interval_s: float, own_angle_deg: float) -> LinkTelemetry:
        """Rates are per second of *tag time* counted since the last call (the counting lags
        the wall clock by the network and runs in bursts); the peer's tag rate is per wall
        second (``interval_s``)."""
        n = self.counts.astype(float)
        total = n.sum()
        acc = self.accidentals.astype(float)
        now = {"coinc": total, "acc": acc.sum(), "span_ps": float(max(self.processed_to, 0))}
        span_s = (now["span_ps"] - self._last.get("span_ps", now["span_ps"])) / 1e12
        t: LinkTelemetry = {"remote_tags_rate_hz":
                            (self.peer_tags - self._last.get("peer", 0.0)) / interval_s}
        if span_s > 0:
            t["coincidence_rate_hz"] = (now["coinc"] - self._last.get("coinc", 0.0)) / span_s
            t["accidental_rate_hz"] = (now["acc"] - self._last.get("acc", 0.0)) / span_s
        now["peer"] = float(self.peer_tags)
        self._last = now
        if acc.sum() > 0:
            t["car"] = car_estimate(total, acc.sum()).value
        true = n - acc
        if true.sum() > 0:
            e = (true[0] + true[3] - true[1] - true[2]) / true.sum()
            t["visibility"] = float(abs(e))
            q = float((1 - abs(e)) / 2)
            same = (own_angle_deg - self.peer_angle_deg) % 45 == 0
            if same and own_angle_deg % 45 == 0:
                t["qber_z"] = q
            elif same and (own_angle_deg - 22.5) % 45 == 0:
                t["qber_x"] = q
        tr = self.tracker
        if tr is None:
            t["tracker_state"] = "ACQUIRING"
        else:
            st = tr.state
            t["tracker_state"] = st.status.name
            t["offset_ps"] = float(tr.offset_at(self.processed_to))
            t["drift_ppb"] = float(st.drift_ppm * 1e3)
        return t
