"""Role ``analyzer``: one end of an M-type (measure-directly) link (docs/physicists/estimators.md,
section What the M link's counter reports).

Both analyzers of a link measure their photons. ``[analyzer].channels`` lists the detectors of
outcome 0 and 1 of one basis (a PBS; the basis set by the half-wave plate ``waveplate`` at
``angle_deg``), or of two bases (BBM92's passive basis choice, Bennett, Brassard, Mermin 1992:
a 50:50 beam splitter into two analyzers, each a PBS with two detectors, the second behind a HWP):
``[b0_out0, b0_out1, b1_out0, b1_out1]`` with ``bases`` (labels "Z"/"X") or ``angles_deg`` (HWP
angles, default Z 0°, X 22.5°). A HWP at θ makes outcome 0 the linear polarisation at 2θ, Bloch
vector (sin 4θ, 0, cos 4θ) in the Z–X plane. The end whose node id sorts first is the link's
**counter**, the other one the **streamer**:

* the streamer publishes every tagger chunk as a compact ``TAGS`` message on ``tags/<link>``
  (:mod:`qnode.daemon.bus.tagwire`) whose header carries its layout: ``outcome_channels`` (one
  [out0, out1] pair per basis), ``bases`` (labels) and ``angles_deg`` (HWP angles, deg);
* the counter buffers its own chunks, finds the peer's clock offset and drift from the first
  ``align_s`` seconds of both streams (:func:`qnode.native.align.find_offset_and_drift`), then
  follows them with the :class:`~qnode.native.tracking.DriftTracker` servo, maps the peer's tags
  into its own time base and counts cross-node coincidences with the native core (|Δt| ≤ w,
  w = ``[analyzer].window_ps``, a full width of 2w + 1 ps on the integer-ps grid; accidentals
  in a window displaced by 20 ns) for every setting pair
  (own basis i, peer basis j) and outcome pair: up to 4×4 channel pairs in one
  :class:`~qnode.native.Coincidences`. Each two-fold coincidence between an own and a peer
  detector is a delivered pair, whatever the two bases (M-type: a pair measured in different
  bases is still delivered; which bases it was measured in is recorded nowhere for now). The
  counter numbers them like a herald station and publishes one ``HERALD`` batch per processed
  span on ``herald/<link>``, which both ends' link layers apply. The raw Bell-state field of an
  M-type pair is its outcome-parity class (the Z-parity class in the Z basis): ``phi+`` for
  equal outcome numbers, ``psi+`` for opposite ones.

Telemetry (counter; :func:`link_figures`): coincidence and accidental rates, CAR; per basis both
ends measure (Z–Z, X–X) the QBER (``qber_z``, ``qber_x``; :func:`~.estimators.basis_qber`
against ``[analyzer].source_state``, raw counts: accidentals are key errors too; inside [0, 1]
with ``qber_<b>_raw`` and the 95 % interval ``qber_<b>_ci_low``/``_ci_high``:
:func:`~.estimators.physical_qber`); the
visibility; ``fidelity_estimate`` = 1 − Q_Z − Q_X (``fidelity_method`` "two_basis_bound") when
both are measured, else the Werner form F = (1 + 3V)/4 from the one basis ("werner"); the BBM92
``secret_fraction`` 1 − f·h(Q_Z) − h(Q_X) and ``sifted_key_rate_hz``; CHSH ``chsh_s`` ±
``chsh_s_err`` when both ends have two settings that violate the CHSH bound for the ideal
source state; the clock offset and drift, tracker state, the peer's tag rate and a g2 histogram
(±5 ns).

Polarisation compensation (``[analyzer].compensator``, ``compensate = true``): the counter runs
a :class:`~.polarisation_control.PolarisationController` as the role task ``polarisation``: it
watches the visibility of recent windows of counts (:meth:`~.cross_node.CrossNodeCounter.window`)
and, after a drop, turns the compensator's ELL14 until it is back (``calibrating`` while it
does), then restarts the cumulative counts. Its fields join the link's telemetry
(``polarisation_state``, ``calibrating``, ``recalibration_s``, ...). The streamer's compensator
is only set to ``compensator_angle_deg`` (one end compensates the relative rotation of both
fibres; see :mod:`qnode.daemon.acquisition.polarisation_control`). Either end's compensator
returns to the angle in use after a reconnect.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from qnode.daemon.acquisition.cross_node import (
    G2_BIN_PS,
    G2_HALF_RANGE_PS,
    BasisLayout,
    CrossNodeCounter,
    parse_layout,
)
from qnode.daemon.acquisition.pipeline import AcquisitionPipeline, IngestMeter
from qnode.daemon.acquisition.polarisation_control import CounterMeter, PolarisationController
from qnode.daemon.bus import tagwire
from qnode.daemon.klink.service import LinkRouter, LinkService
from qnode.daemon.linklayer import HeraldStation, new_epoch
from qnode.daemon.roles.key_link import KeyLink
from qnode.daemon.runtime.instruments import make_tagger

if TYPE_CHECKING:
    from qnode.daemon.bus.envelope import Message as Envelope
    from qnode.daemon.bus.telemetry import Telemetry
    from qnode.daemon.bus.topics import Topic
    from qnode.daemon.runtime.context import NodeContext
    from qnode.native import TagBlock

log = logging.getLogger("qnode.analyzer")


MAX_TAGS_BACKLOG = 100       # TAGS messages waiting for the broker before chunks are dropped


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
        # key mode: the link makes keys (roles.key_link), not pairs: no link layer, no heralds
        self.keys: KeyLink | None = None
        if cfg.keys is not None:
            self.keys = KeyLink(ctx, self.link, cfg, BasisLayout.make(
                cfg.channels, cfg.angles_deg, cfg.bases), leader=self.counter)
        self.service = None if self.keys is not None else ctx.shared(LinkRouter).add(
            LinkService(ctx, self.link.id, self.link.peer, "M", goodness=0.5,
                        capacity=cfg.capacity, max_pair_age_s=cfg.max_pair_age_s))
        self.calibrations: dict[str, Callable[[Any], None]] = {}
        if cfg.waveplate is not None:
            self.calibrations[cfg.waveplate] = lambda d: d.move_absolute_deg(cfg.angle_deg)
        self.health_checks: dict[str, Callable[[Any], None]] = {}
        self.pipeline: AcquisitionPipeline | None = None
        self.ingest = IngestMeter()
        self.counting: CrossNodeCounter | None = None
        self.sent_tags = 0
        self.unsent_tags = 0
        self._count_lock = asyncio.Lock()  # own chunks and peer messages both trigger counting
        if self.keys is not None:
            if self.counter:
                ctx.bus.subscribe(f"qnet/v1/{ctx.config.network}/{self.link.peer}/tags/"
                                  f"{self.link.id}")
                ctx.bus.on("tags", self._on_times)
        elif self.counter:
            self.counting = CrossNodeCounter(cfg.channels, cfg.window_ps, cfg.align_s,
                                             angles_deg=cfg.angles_deg, labels=cfg.bases,
                                             source_state=cfg.source_state)
            # a new epoch at every start: the counter keeps no numbering across restarts, and
            # both ends agree where the new one starts (see linklayer: station epochs)
            self.station = HeraldStation([self.link.id], epoch=new_epoch())
            ctx.bus.subscribe(f"qnet/v1/{ctx.config.network}/{self.link.peer}/tags/"
                              f"{self.link.id}")
            ctx.bus.on("tags", self._on_tags)
        else:
            ctx.bus.heralds[self.link.id] = self.link.peer  # the counter heralds this link
        self.controller: PolarisationController | None = None
        comp = cfg.compensation
        if comp is not None:
            self.calibrations[comp.compensator] = lambda d: d.move_absolute_deg(
                self.controller.angle_deg if self.controller else comp.start_angle_deg)
            if comp.enabled and self.counting is not None:
                self.controller = PolarisationController(
                    comp, move=self._move_compensator,
                    meter=CounterMeter(self.counting, self._restart_counts), link=self.link.id)
            elif comp.enabled:
                log.info("polarisation compensation of %s runs at its counter %s", self.link.id,
                         self.link.peer, extra={"link": self.link.id, "peer": self.link.peer})

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        tasks: dict[str, Callable[[], Awaitable[None]]] = {"acquire": self._acquire}
        if self.keys is not None:
            tasks[f"{self.link.id}:keys"] = self.keys.run
        else:
            service = self.service
            assert service is not None

            async def tick() -> None:
                await service.start()
                await service.tick_loop()
            tasks[f"{self.link.id}:tick"] = tick
        if self.controller is not None:
            tasks["polarisation"] = self.controller.run
        return tasks

    async def _move_compensator(self, angle_deg: float) -> float:
        """Turn the compensator's ELL14 to ``angle_deg`` (deg); where it stopped (deg)."""
        comp = self.cfg.compensation
        assert comp is not None
        inst = self.ctx.instrument(comp.compensator)
        await inst.wait_ready()
        return await inst.call(lambda d, a: d.move_absolute_deg(a), angle_deg)

    async def _restart_counts(self) -> None:
        assert self.counting is not None
        async with self._count_lock:   # not while a span is being counted
            self.counting.restart_counts()

    # ------------------------------------------------------------------ own tags
    async def _acquire(self) -> None:
        inst = self.ctx.instrument(self.cfg.tagger)
        await inst.wait_ready()
        if self.cfg.waveplate is not None:
            await self.ctx.instrument(self.cfg.waveplate).wait_ready()
        icfg = self.ctx.config.instruments[self.cfg.tagger]
        tagger = make_tagger(icfg, inst.driver, self.cfg.channels)
        # a stall (no tag for stall_s) or a stream error degrades the tagger, counts it,
        # reconnects it and restarts the stream (qnode.daemon.acquisition.pipeline)
        self.pipeline = pipeline = AcquisitionPipeline(
            tagger, pairs=list(self.cfg.basis_channels), window_ps=self.cfg.window_ps,
            policy="block", keep_blocks=True, instrument=inst, stall_s=icfg.stall_s)
        try:
            async with pipeline:
                async for events in pipeline.events():
                    block = events.block
                    if block is None:
                        continue
                    if self.keys is not None:
                        await self._key_chunk(block, events.t_end_ps, events.chunk_index)
                    elif self.counter:
                        assert self.counting is not None
                        self.counting.add_own(block, events.t_end_ps, time.monotonic())
                        await self._count()
                    else:
                        body = tagwire.encode(block, link=self.link.id,
                                              chunk=events.chunk_index,
                                              extra={"t_end_ps": events.t_end_ps,
                                                     **self.tags_header()})
                        self._send_tags("TAGS", body)
        finally:
            self.pipeline = None
            await asyncio.to_thread(tagger.close)

    def _send_tags(self, type_: str, body: dict[str, Any]) -> None:
        if self.ctx.bus.pending > MAX_TAGS_BACKLOG:
            # the broker is away or slow: a chunk the counter gets late is worth less than
            # memory; drop it (counted), do not queue GBs
            self.unsent_tags += body["n"]
            return
        self.sent_tags += body["n"]
        self.ctx.bus.publish(self.ctx.topics.tags(self.link.id), type_, body,
                             sign_with=self.link.peer)

    async def _key_chunk(self, block: TagBlock, t_end_ps: int, chunk: int) -> None:
        """Key mode: the counter pairs its chunk with the peer's times and sifts; the streamer
        sends the chunk's times (its outcomes stay here)."""
        keys = self.keys
        assert keys is not None
        if self.counter:
            keys.add_own(block, t_end_ps, time.monotonic())
            await keys.count()
        else:
            self._send_tags("TIMES", keys.times_body(block, t_end_ps, chunk))

    def tags_header(self) -> dict[str, Any]:
        """The layout fields of this end's ``TAGS`` messages (see :func:`parse_layout`)."""
        return {"outcome_channels": [list(p) for p in self.cfg.basis_channels],
                "bases": list(self.cfg.bases), "angles_deg": list(self.cfg.angles_deg)}

    # ------------------------------------------------------------------ peer tags (counter)
    async def _on_times(self, topic: Topic, msg: Envelope) -> None:
        """Key mode: the streamer's detection times."""
        keys = self.keys
        assert keys is not None and keys.counter is not None
        if topic.arg != self.link.id or msg.sender != self.link.peer or msg.type != "TIMES":
            keys.counter.rejected += 1
            return
        try:
            keys.add_peer(msg.body, time.monotonic())
        except ValueError as exc:
            keys.counter.rejected += 1
            log.warning("rejected TIMES from %s: %s", msg.sender, exc,
                        extra={"link": self.link.id, "sender": msg.sender, "error": str(exc)})
            return
        await keys.count()

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
            layout = parse_layout(msg.body)
        except ValueError as exc:
            self.counting.rejected += 1
            log.warning("rejected TAGS from %s: %s", msg.sender, exc,
                        extra={"link": self.link.id, "sender": msg.sender, "error": str(exc)})
            return
        self.counting.add_peer(times, channels, t_end, layout, time.monotonic())
        await self._count()

    async def _count(self) -> None:
        assert self.counting is not None
        async with self._count_lock:
            result = await asyncio.to_thread(self.counting.process)
            if result is not None:
                await self._herald(*result)

    async def _herald(self, codes: np.ndarray, times: np.ndarray) -> None:
        assert self.counting is not None and self.service is not None
        link = self.link.id
        if codes.size:
            self.station.successes(link, codes, times)
        for batch in self.station.flush(self.counting.spans):
            await self.service.on_local_herald(batch)
            self.ctx.bus.publish(self.ctx.topics.herald(link), batch.TYPE, batch.to_dict(),
                                 sign_with=link)

    # ------------------------------------------------------------------ life cycle, telemetry
    async def close(self) -> None:
        if self.service is not None:
            await self.service.persist()

    def fill_telemetry(self, record: Telemetry, interval_s: float) -> None:
        p = self.pipeline
        if p is not None:
            self.ingest.fill(record, p.stats, interval_s)
        if self.keys is not None:
            lt = self.keys.telemetry(interval_s)
            if not self.counter:
                lt["unmatched_tags_total"] = self.unsent_tags
            record["links"][self.link.id] = lt
            g2 = self.keys.counter.pairs.g2 if self.keys.counter is not None else None
            if g2 is not None:
                record["g2"] = {"bin_ps": G2_BIN_PS, "first_bin_ps": -G2_HALF_RANGE_PS,
                                "counts": [int(x) for x in g2]}
            return
        assert self.service is not None
        t = self.service.telemetry(interval_s)
        if self.counting is not None:
            t.update(self.counting.telemetry(interval_s))
            t["role"] = "counter"
            f = t.get("fidelity_estimate")
            if f is not None:  # see link_figures: two-basis bound or Werner form
                self.service.end.set_goodness(min(1.0, max(0.0, f)))
                t["fidelity_estimate"] = self.service.end.goodness
            g2 = self.counting.g2
            record["g2"] = {"bin_ps": G2_BIN_PS, "first_bin_ps": -G2_HALF_RANGE_PS,
                            "counts": [int(x) for x in g2]}
            t["unmatched_tags_total"] = self.counting.dropped_tags
            if self.controller is not None:
                t = {**t, **self.controller.telemetry()}
        else:
            t.pop("fidelity_estimate", None)  # the counter measures it; this end cannot
            t["unmatched_tags_total"] = self.unsent_tags
        record["links"][self.link.id] = t


