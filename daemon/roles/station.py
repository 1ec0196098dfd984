"""Role ``herald``: the midpoint station of a K-type link (docs/integrators/link-layer.md).

Four detectors behind a 50:50 beam splitter (outputs c, d) and a PBS on each output
(``[herald].channels`` = c-H, c-V, d-H, d-V). A photon from each memory node meeting at the beam
splitter announces a Bell state by its two-click pattern (polarisation encoding; Lütkenhaus,
Calsamiglia & Suominen 1999: linear optics identifies two of the four Bell states):

* Ψ− : one click in each output with orthogonal polarisations (c-H & d-V, or c-V & d-H);
* Ψ+ : both clicks in one output with orthogonal polarisations (c-H & c-V, or d-H & d-V);
* any other pattern (same polarisation, three or four clicks) is a failure.

The station runs the tagger through the acquisition pipeline with the native N-fold core
(window ``[herald].window_ps``), classifies each cluster of exactly two clicks, numbers the
successes with :class:`~.linklayer.HeraldStation` and publishes **one** signed ``HERALD`` batch
per tagger chunk on ``herald/<link>`` — an empty batch too: it is the heartbeat that lets an end
see a lost tail. The station's counter is stored before the batch is sent.

**Heartbeat on a timer.** When no batch went out for ``HEARTBEAT_S`` (the tag stream cut, the
tagger down or not yet up), the station sends an empty batch anyway, so an end can tell "station
alive, no successes" from "station silent" (its ``herald_age_s``).

**Epoch.** A station whose state is created (first start, or a state directory lost) draws a
new epoch (:func:`~.linklayer.new_epoch`) and numbers from 0 under it; every batch carries it.
The ends notice a new epoch, log and count it, and agree where its numbers go
(:mod:`qnode.daemon.linklayer.end`), so a station that lost its state is followed, not ignored. A
state of the previous version (no epoch) gets an epoch that continues its counter.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import numpy as np

from qnode.daemon.acquisition.pipeline import AcquisitionPipeline, ChunkEvents, IngestMeter
from qnode.daemon.linklayer import BELL_STATES, HeraldStation, new_epoch
from qnode.daemon.runtime.instruments import make_tagger

if TYPE_CHECKING:
    from qnode.daemon.bus.telemetry import Telemetry
    from qnode.daemon.runtime.context import NodeContext

log = logging.getLogger("qnode.station")

#: an empty batch goes out when no batch did for this long (s)
HEARTBEAT_S = 1.0

PSI_PLUS = BELL_STATES.index("psi+")
PSI_MINUS = BELL_STATES.index("psi-")
FAILURE = 255


def pattern_table(mask_of: Callable[[list[int]], int], channels: tuple[int, int, int, int]
                  ) -> np.ndarray:
    """Lookup ``mask -> Bell state code`` (FAILURE for every other pattern) for 4 detectors."""
    c_h, c_v, d_h, d_v = channels
    table = np.full(16, FAILURE, dtype=np.uint8)
    for a, b, code in ((c_h, d_v, PSI_MINUS), (c_v, d_h, PSI_MINUS),
                       (c_h, c_v, PSI_PLUS), (d_h, d_v, PSI_PLUS)):
        table[mask_of([a, b])] = code
    return table


def classify(clusters: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, times_ps) of the successes among N-fold ``clusters`` (time, mask)."""
    codes = table[clusters["mask"] & 0xF]
    codes[clusters["mask"] > 0xF] = FAILURE
    ok = codes != FAILURE
    return codes[ok], np.ascontiguousarray(clusters["time"][ok], dtype=np.int64)


class HeraldStationRole:
    name = "herald"

    def __init__(self, ctx: NodeContext):
        cfg = ctx.config.herald
        assert cfg is not None
        self.ctx, self.cfg = ctx, cfg
        stored = ctx.store.load_links().get(self._key)
        if stored is None:
            self.station = HeraldStation([cfg.link], epoch=new_epoch())
            log.info("herald station: no stored state, numbering from 0 under a new epoch %s",
                     self.station.epoch, extra={"link": cfg.link, "epoch": self.station.epoch})
        else:
            self.station = HeraldStation.restore(stored)
            if self.station.epoch is None:   # stored by the previous version
                self.station.epoch = new_epoch()
                log.info("herald station: epoch %s from seq %d", self.station.epoch,
                         self.station.next_seq(cfg.link),
                         extra={"link": cfg.link, "epoch": self.station.epoch})
        self._send_lock = asyncio.Lock()     # a heartbeat never overtakes a chunk's batch
        self._last_sent = time.monotonic()
        self._last_chunk = 0
        self.heartbeats = 0
        self.calibrations: dict[str, Callable] = {}
        self.health_checks: dict[str, Callable] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.singles: dict[int, int] = {}
        self._last_counts: collections.Counter[str] = collections.Counter()
        self._last_singles: dict[int, int] = {}
        self._pipeline: AcquisitionPipeline | None = None
        self.ingest = IngestMeter()

    @property
    def _key(self) -> str:
        return f"station:{self.cfg.link}"

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {"acquire": self._acquire, "heartbeat": self._heartbeat}

    async def _heartbeat(self) -> None:
        """An empty batch when no batch went out for ``HEARTBEAT_S``, whatever the tagger
        does (not while the broker is away: the ends learn the counter from the next one)."""
        while True:
            await asyncio.sleep(max(0.05, self._last_sent + HEARTBEAT_S - time.monotonic()))
            if time.monotonic() - self._last_sent < HEARTBEAT_S:
                continue
            if not self.ctx.bus.connected:
                self._last_sent = time.monotonic()
                continue
            async with self._send_lock:
                if time.monotonic() - self._last_sent >= HEARTBEAT_S:
                    await self._send(self.station.flush(self._last_chunk))
                    self.heartbeats += 1

    async def _send(self, batches: list) -> None:
        """Store the counters (write-ahead), then publish ``batches`` (caller holds
        ``_send_lock``)."""
        link = self.cfg.link
        snap = self.station.snapshot()
        await self.ctx.persist(lambda: self.ctx.store.save_link(self._key, snap))
        for batch in batches:
            self.ctx.bus.publish(self.ctx.topics.herald(link), batch.TYPE, batch.to_dict(),
                                 sign_with=link)
        self._last_sent = time.monotonic()

    async def _acquire(self) -> None:
        inst = self.ctx.instrument(self.cfg.tagger)
        await inst.wait_ready()
        icfg = self.ctx.config.instruments[self.cfg.tagger]
        tagger = make_tagger(icfg, inst.driver, self.cfg.channels)
        c_h, c_v, d_h, d_v = self.cfg.channels
        pipeline = AcquisitionPipeline(
            tagger, pairs=[(c_h, d_v), (c_v, d_h), (c_h, c_v), (d_h, d_v)],
            window_ps=self.cfg.window_ps, nfold_channels=self.cfg.channels,
            nfold_window_ps=self.cfg.window_ps, nfold_min_fold=2, policy="block",
            instrument=inst, stall_s=icfg.stall_s)
        assert pipeline.nfold is not None
        table = pattern_table(pipeline.nfold.mask_of, self.cfg.channels)
        self._pipeline = pipeline
        log.info("herald station streaming", extra={"link": self.cfg.link,
                                                   "tagger": self.cfg.tagger})
        try:
            async with pipeline:
                async for events in pipeline.events():
                    await self._chunk(events, table)
        finally:
            self._pipeline = None
            await asyncio.to_thread(tagger.close)

    async def _chunk(self, events: ChunkEvents, table: np.ndarray) -> None:
        codes, times = classify(events.clusters, table)
        link = self.cfg.link
        self.counts["psi+"] += int(np.count_nonzero(codes == PSI_PLUS))
        self.counts["psi-"] += int(np.count_nonzero(codes == PSI_MINUS))
        self.counts["clusters"] += int(events.clusters.size)
        self.counts["tags"] += events.n_tags
        for ch, n in events.singles.items():
            self.singles[ch] = self.singles.get(ch, 0) + n
        async with self._send_lock:
            if codes.size:
                self.station.successes(link, codes, times)
            self._last_chunk = events.chunk_index
            # one batch, unless > 2^22 successes
            await self._send(self.station.flush(events.chunk_index))

    async def close(self) -> None:
        snap = self.station.snapshot()
        await self.ctx.persist(lambda: self.ctx.store.save_link(self._key, snap))

    def fill_telemetry(self, record: Telemetry, interval_s: float) -> None:
        c, last = self.counts, self._last_counts
        heralds = c["psi+"] + c["psi-"]
        rate = (heralds - last["psi+"] - last["psi-"]) / interval_s
        singles = {str(ch): (n - self._last_singles.get(ch, 0)) / interval_s
                   for ch, n in self.singles.items()}
        self._last_counts = collections.Counter(c)
        self._last_singles = dict(self.singles)
        record["links"][self.cfg.link] = {
            "type": "K", "peer": "+".join(self.cfg.ends), "role": "station",
            "expected_seq": self.station.next_seq(self.cfg.link), "heralds_total": heralds,
            "herald_rate_hz": rate, "psi_plus_total": c["psi+"], "psi_minus_total": c["psi-"],
            "heartbeats_total": self.heartbeats,
            "herald_age_s": max(0.0, time.monotonic() - self._last_sent)}
        if self.station.epoch is not None:
            record["links"][self.cfg.link]["station_epoch"] = self.station.epoch
        record["singles_hz"] = singles
        p = self._pipeline
        if p is not None:
            self.ingest.fill(record, p.stats, interval_s)
