"""Role ``source``: an SPDC pair source held at its working point.

Calibration (after every connect) brings the pump to ``[source].pump_power_mw`` (iBeam smart:
``ch 2 pow`` in mW and ``la on``; ITC4001: the value is the laser-diode current in mA, then
``OUTP ON``) and the oven to ``[source].oven_temperature_c`` with its output enabled (TC200
``tset=``, ``ens``). The health check reads both back every 5 s; a pump off or an oven more than
``TEMPERATURE_TOLERANCE_C`` away from its set point after ``SETTLE_S`` marks the instrument
degraded (and with it the node). Telemetry: pump power and oven temperature.

**CREATE service** (with ``[source].link``): the source serves its M link's CREATE requests on
``cmd`` like the QuTech link layer's fidelity-estimation unit (:mod:`qnode.daemon.quantum.feu`): a
CREATE of type M whose ``remote_node`` is one of ``[source].ends`` (any node when ``ends`` is not
given) gets the highest pump power within ``[min_pump_mw, max_pump_mw]`` whose predicted fidelity
meets its ``min_fidelity``; the pump is set to it through the driver (it becomes the set point the
calibration restores after a reconnect) and the requester gets ACK on ``reply/<requester>``.
No such power: ERR UNSUPP; the pump refusing the new power: ERR OTHER; both leave the pump
where it was. The latest accepted CREATE sets the power (the source holds no per-request
state: a stricter request later lowers it, a laxer one raises it). The chosen power, predicted
rate and fidelity are in telemetry (``source_feu_*``) and in the log line ``CREATE served``;
the ACK itself carries only the create id (:class:`qnode.daemon.linklayer.messages.Ack`).
Malformed CREATEs, other command types and (with ``[source].hmac_key_file``) unsigned ones are
counted by reason in ``link_rejected`` and logged by the node's link router, which owns ``cmd`` and
hands this source the CREATEs it accepts
(:meth:`qnode.daemon.klink.service.LinkRouter.serve_creates`); nothing is answered. A CREATE for
another link (a K link, or a remote node not among ``ends``) goes to the router's link services if
one serves it, else the source answers ERR UNSUPP.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from qnode.daemon.bus.keys import KeyRing
from qnode.daemon.klink.service import LinkRouter
from qnode.daemon.linklayer import Ack, Create, CreateIdAllocator, Err, ErrCode
from qnode.daemon.quantum.feu import Prediction
from qnode.drivers.errors import DeviceError, InstrumentError

if TYPE_CHECKING:
    from qnode.daemon.bus.envelope import Message as Envelope
    from qnode.daemon.bus.telemetry import Telemetry
    from qnode.daemon.runtime.context import NodeContext

log = logging.getLogger("qnode.source")

TEMPERATURE_TOLERANCE_C = 0.5
SETTLE_S = 120.0


class SourceRole:
    name = "source"

    def __init__(self, ctx: NodeContext):
        cfg = ctx.config.source
        assert cfg is not None
        self.ctx, self.cfg = ctx, cfg
        self.pump_kind = ctx.config.instruments[cfg.pump].kind
        self.pump_power_mw: float | None = None
        self.oven_temperature_c: float | None = None
        self._oven_set_at = time.monotonic()
        self.calibrations: dict[str, Callable[[Any], None]] = {
            cfg.pump: self._calibrate_pump, cfg.oven: self._calibrate_oven}
        self.health_checks: dict[str, Callable[[Any], None]] = {
            cfg.pump: self._check_pump, cfg.oven: self._check_oven}
        # the pump's set point: [source].pump_power_mw until a CREATE chooses another
        self.set_point_mw = cfg.pump_power_mw
        self.feu = cfg.feu
        self.chosen: Prediction | None = None
        self.creates_total = 0
        self.creates_unsupp_total = 0
        self._create_ids = CreateIdAllocator()
        if cfg.link is not None:
            self._serve_creates(ctx)

    def _serve_creates(self, ctx: NodeContext) -> None:
        """Serve this source's CREATEs through the node's link router, which parses and counts
        every command on ``cmd`` and keeps CREATEs for other links."""
        if self.cfg.hmac_key_file is not None:
            # the bus checks a signed message on ``cmd`` with the key stored under the
            # addressee, i.e. this node: the source's link key, in the bus's ring so that it
            # follows the file (read_keys has loaded it already; loading is idempotent)
            if not isinstance(ctx.keys, KeyRing) or ctx.bus.keys is not ctx.keys:
                raise RuntimeError("source: the bus does not share the node's key ring")
            ctx.keys.load_file(self.cfg.hmac_key_file, ctx.node)
        ctx.shared(LinkRouter).serve_creates(self._is_mine, self._on_create,
                                             fallback=self._refuse)

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {}

    # -- pump
    def _calibrate_pump(self, pump: Any) -> None:
        if self.pump_kind == "ibeam":
            pump.set_power_mw(self.set_point_mw)
            pump.laser_on()
        else:  # itc4001: the set point is a current (mA)
            pump.switch_on(current_a=self.set_point_mw / 1e3)
        self._check_pump(pump)

    def _set_pump(self, pump: Any, power_mw: float) -> float:
        """Set the running pump to ``power_mw`` (ibeam: mW; itc4001: mA, as the calibration);
        the power read back (mW)."""
        if self.pump_kind == "ibeam":
            pump.set_power_mw(power_mw)
        else:
            pump.set_ld_current(power_mw / 1e3)
        self._check_pump(pump)
        assert self.pump_power_mw is not None
        return self.pump_power_mw

    def _check_pump(self, pump: Any) -> None:
        if self.pump_kind == "ibeam":
            if not pump.emission_on():
                raise self._error("pump emission is off", self.cfg.pump, "sta la")
            self.pump_power_mw = pump.power_mw()
        else:
            if not pump.ld_on:
                raise self._error("laser diode is off", self.cfg.pump, "OUTP?")
            self.pump_power_mw = pump.photodiode_power_w * 1e3

    # -- oven
    def _calibrate_oven(self, oven: Any) -> None:
        oven.set_temperature_c(self.cfg.oven_temperature_c)
        oven.enable_output()
        self._oven_set_at = time.monotonic()
        self.oven_temperature_c = oven.temperature_c()

    def _check_oven(self, oven: Any) -> None:
        self.oven_temperature_c = t = oven.temperature_c()
        settled = time.monotonic() - self._oven_set_at > SETTLE_S
        if settled and abs(t - self.cfg.oven_temperature_c) > TEMPERATURE_TOLERANCE_C:
            raise self._error(f"oven at {t:.2f} C, set point {self.cfg.oven_temperature_c} C",
                              self.cfg.oven, "tact?")

    def _error(self, message: str, name: str, command: str) -> DeviceError:
        return DeviceError(message, instrument=name,
                           address=self.ctx.config.instruments[name].address, command=command)

    async def close(self) -> None:
        """The source stays on at shutdown: a restart must not cost the crystal's settling."""

    # -- CREATE service (module docstring)
    def _is_mine(self, create: Create) -> bool:
        ends = self.cfg.ends
        return create.tpe == "M" and (ends is None or create.remote_node in ends)

    def _reply(self, requester: str, message: Ack | Err) -> None:
        self.ctx.bus.publish(self.ctx.topics.reply(requester), message.TYPE, message.to_dict())

    async def _on_create(self, create: Create, msg: Envelope) -> None:
        """A CREATE for this source's link (the router's ``serve_creates``)."""
        if self.cfg.hmac_key_file is not None and not msg.signed:
            self.ctx.shared(LinkRouter).count(
                "unsigned", msg, f"a CREATE for link {self.cfg.link} must be signed with the "
                                 f"link key")
            return
        await self._serve(create, msg.sender)

    async def _refuse(self, create: Create, msg: Envelope) -> None:
        """A CREATE no link of this node serves: ERR UNSUPP, counted as the source's."""
        cid = self._create_ids.allocate()
        self.creates_total += 1
        self.creates_unsupp_total += 1
        log.info("CREATE refused: not for link %s", self.cfg.link, extra={
            "link": self.cfg.link, "requester": msg.sender, "create_id": cid,
            "remote_node": create.remote_node, "tpe": create.tpe, "code": "UNSUPP"})
        self._reply(msg.sender, Err(cid, ErrCode.UNSUPP))

    async def _serve(self, create: Create, requester: str) -> None:
        assert self.feu is not None
        self.creates_total += 1
        cid = self._create_ids.allocate()
        fields = {"link": self.cfg.link, "requester": requester, "create_id": cid,
                  "remote_node": create.remote_node, "min_fidelity": create.min_fidelity}
        power = self.feu.choose_power(create.min_fidelity)
        if power is None:
            self.creates_unsupp_total += 1
            log.info("CREATE refused: no pump power reaches the fidelity", extra={
                **fields, "code": "UNSUPP", "max_fidelity": round(self.feu.max_fidelity(), 6)})
            self._reply(requester, Err(cid, ErrCode.UNSUPP))
            return
        try:
            read_mw = await self.ctx.instrument(self.cfg.pump).call(self._set_pump, power)
        except (InstrumentError, ValueError) as exc:
            log.warning("CREATE failed: the pump refused %.4f mW: %s", power, exc, extra={
                **fields, "code": "OTHER", "power_mw": power, "error": str(exc)})
            self._reply(requester, Err(cid, ErrCode.OTHER))
            return
        self.set_point_mw = power
        self.chosen = p = self.feu.detail(power)
        log.info("CREATE served", extra={
            **fields, "power_mw": round(power, 6), "pump_read_mw": round(read_mw, 6),
            "predicted_rate_hz": round(p.rate_hz, 3), "predicted_fidelity": round(p.fidelity, 6),
            "predicted_accidental_hz": round(p.accidental_hz, 3)})
        self._reply(requester, Ack(cid))

    def fill_telemetry(self, record: Telemetry, interval_s: float) -> None:
        if self.oven_temperature_c is not None:
            record["source_temperature_c"] = self.oven_temperature_c
        if self.pump_power_mw is not None:
            record["source_pump_power_mw"] = self.pump_power_mw
        if self.feu is None:
            return
        now = self.feu.detail(self.set_point_mw)
        record["source_pump_set_point_mw"] = self.set_point_mw
        record["source_feu_rate_hz"] = now.rate_hz             # predicted at the set point
        record["source_feu_fidelity"] = now.fidelity
        record["source_feu_max_fidelity"] = self.feu.max_fidelity()
        record["source_creates_total"] = self.creates_total
        record["source_creates_unsupp_total"] = self.creates_unsupp_total
        if self.chosen is not None:                            # the last CREATE's choice
            record["source_feu_power_mw"] = self.chosen.power_mw
