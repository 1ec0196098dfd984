"""Role ``source``: an SPDC pair source held at its working point (DESIGN §1).

Calibration (after every connect) brings the pump to ``[source].pump_power_mw`` (iBeam smart:
``ch 2 pow`` in mW and ``la on``; ITC4001: the value is the laser-diode current in mA, then
``OUTP ON``) and the oven to ``[source].oven_temperature_c`` with its output enabled (TC200
``tset=``, ``ens``). The health check reads both back every 5 s; a pump off or an oven more than
``TEMPERATURE_TOLERANCE_C`` away from its set point after ``SETTLE_S`` marks the instrument
degraded (and with it the node). Telemetry: pump power and oven temperature.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from qnode.drivers.errors import DeviceError

if TYPE_CHECKING:
    from .node import NodeContext
    from .telemetry import Telemetry

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

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {}

    # -- pump
    def _calibrate_pump(self, pump: Any) -> None:
        if self.pump_kind == "ibeam":
            pump.set_power_mw(self.cfg.pump_power_mw)
            pump.laser_on()
        else:  # itc4001: the set point is a current (mA)
            pump.switch_on(current_a=self.cfg.pump_power_mw / 1e3)
        self._check_pump(pump)

    def _check_pump(self, pump: Any) -> None:
        if self.pump_kind == "ibeam":
            if not pump.emission_on():
                raise self._error("pump emission is off", self.cfg.pump, "sta la")
            self.pump_power_mw = pump.power_mw()
        else:
            if not pump.ld_on():
                raise self._error("laser diode is off", self.cfg.pump, "OUTP?")
            self.pump_power_mw = pump.photodiode_power_w() * 1e3

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

    def fill_telemetry(self, record: Telemetry, interval_s: float) -> None:
        if self.oven_temperature_c is not None:
            record["source_temperature_c"] = self.oven_temperature_c
        if self.pump_power_mw is not None:
            record["source_pump_power_mw"] = self.pump_power_mw
