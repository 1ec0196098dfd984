"""Coupling simulated instruments to an M link's physics.

Pumps (``ibeam``, ``itc4001``) and ovens (``tc200``) set the link's pair rate, waveplates
(``elliptec``) turn an analyzer (:func:`couple`, through
:func:`qnode.hal_sim.physics.coupling.apply_instruments`): the bench pushes the twins' state into
the simulator before every slice, when it has changed. An ELL14 with ``mount = "compensator"`` is
instead a node's polarisation compensator (:func:`couple_compensator`). Which role a kind plays
is its ``couples`` (:mod:`qnode.hal_sim.bench.kinds`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..physics.coupling import CompensatorMount, WaveplateMount, apply_instruments
from .context import BenchContext
from .spec import KLinkSpec, config_error


class _Itc4001Pump:
    """An ITC4001's laser diode as a pump: ``power_mw`` from its optical power (W)."""

    def __init__(self, twin: Any):
        self.twin = twin

    @property
    def power_mw(self) -> float:
        return self.twin.optical_power_w * 1e3


@dataclasses.dataclass(frozen=True)
class _NominalPump:
    """The pump of a link without a coupled one: a fixed power (mW)."""

    power_mw: float


class MLinkCoupling:
    """The instruments coupled to one M link; called with its simulator before every slice.

    Pair rate B = ``brightness_hz_per_mw`` · P_mW · η(T) with a coupled pump; with an oven
    alone, B = ``pair_rate_hz`` · η(T) (a nominal pump of pair_rate_hz / brightness mW).
    """

    def __init__(self, pair_rate_hz: float, brightness_hz_per_mw: float):
        self.pair_rate_hz = pair_rate_hz
        self.brightness_hz_per_mw = brightness_hz_per_mw
        self.pump: Any = None
        self.oven: Any = None
        self.waveplates: list[Any] = []
        self.applied: Mapping[str, object] = {}
        self._last: tuple | None = None

    def _state(self) -> tuple:
        """The coupled twins' state, rounded so that converged ramps stop re-applying."""
        return (None if self.pump is None else round(self.pump.power_mw, 9),
                None if self.oven is None else round(self.oven.phase_matching(), 12),
                tuple(round(m.waveplate.angle_deg, 9) for m in self.waveplates))

    def __call__(self, sim: Any) -> None:
        state = self._state()
        if state == self._last:
            return
        self._last = state
        pump = self.pump
        if pump is None and self.oven is not None:
            pump = _NominalPump(self.pair_rate_hz / max(self.brightness_hz_per_mw, 1e-300))
        self.applied = apply_instruments(sim, waveplates=tuple(self.waveplates), oven=self.oven,
                                         pump=pump, brightness_hz_per_mw=self.brightness_hz_per_mw)


def couple(bench: BenchContext, key: str, role: str, device: Any,
           options: Mapping[str, Any]) -> None:
    """Couple ``device`` (a twin playing ``role``: pump, oven or waveplate) to the M link its
    ``options`` name; errors name ``key`` (``instrument[i].options``) and the field."""
    rt = bench.link_runtime(key, options.get("link"))
    if isinstance(rt.spec, KLinkSpec):
        raise config_error(bench.path, f"{key}.link", f"{rt.spec.name!r} is a K link; pumps, "
                                                      f"ovens and waveplates couple to M links")
    if rt.coupling is None:
        rt.coupling = MLinkCoupling(rt.spec.pair_rate_hz, rt.spec.brightness_hz_per_mw)
    c: MLinkCoupling = rt.coupling  # type: ignore[assignment]
    if role in ("pump", "oven"):
        if getattr(c, role) is not None:
            raise config_error(bench.path, f"{key}.link",
                               f"link {rt.spec.name!r} already has a coupled {role}")
        setattr(c, role, _Itc4001Pump(device) if hasattr(device, "optical_power_w") else device)
        return
    node = options.get("node")
    names = [n.name for n in rt.spec.nodes]
    if node not in names:
        raise config_error(bench.path, f"{key}.node", f"must name a node of link {rt.spec.name!r}, "
                                               f"one of {names}; got {node!r}")
    spec = next(n for n in rt.spec.nodes if n.name == node)
    analyzers = [a.name for a in spec.analyzers] or ["a"]
    # default: the last analyzer (with a passive basis choice, the arm behind the plate)
    analyzer = options.get("analyzer", analyzers[-1])
    if analyzer not in analyzers:
        raise config_error(bench.path, f"{key}.analyzer",
                           f"must name an analyzer of node {node!r}, one of {analyzers}; "
                           f"got {analyzer!r}")
    zero = options.get("zero_deg", 0.0)
    if isinstance(zero, bool) or not isinstance(zero, (int, float)):
        raise config_error(bench.path, f"{key}.zero_deg", f"must be a number (deg), got {zero!r}")
    if any(m.node == node for m in c.waveplates):
        raise config_error(bench.path, f"{key}.node", f"{node!r} already has a coupled waveplate")
    c.waveplates.append(WaveplateMount(node, analyzer, device, float(zero)))


def couple_compensator(bench: BenchContext, key: str, device: Any,
                       options: Mapping[str, Any]) -> None:
    """An ELL14 with ``mount = "compensator"``: the polarisation compensator of ``node`` of the
    M link ``link`` (:class:`~qnode.hal_sim.physics.coupling.PolarisationCoupling`); errors name
    ``key.<field>`` (``key``: ``instrument[i].options``)."""
    if options.get("mount") != "compensator":
        raise config_error(bench.path, f"{key}.mount", f"must be \"analyzer\" (default) or "
                                               f"\"compensator\", got {options.get('mount')!r}")
    if "analyzer" in options:
        raise config_error(bench.path, f"{key}.analyzer",
                           "a compensator sits before all of a node's analyzers: drop analyzer")
    rt = bench.link_runtime(key, options.get("link"))
    if isinstance(rt.spec, KLinkSpec):
        raise config_error(bench.path, f"{key}.link",
                           f"{rt.spec.name!r} is a K link; compensators couple to M links")
    node = options.get("node")
    names = [n.name for n in rt.spec.nodes]
    if node not in names:
        raise config_error(bench.path, f"{key}.node", f"must name a node of link {rt.spec.name!r}, "
                                               f"one of {names}; got {node!r}")
    zero = options.get("zero_deg", 0.0)
    if isinstance(zero, bool) or not isinstance(zero, (int, float)):
        raise config_error(bench.path, f"{key}.zero_deg", f"must be a number (deg), got {zero!r}")
    try:
        rt.polarisation_coupling().add_compensator(
            CompensatorMount(node, device, float(zero)))
    except ValueError as exc:
        raise config_error(bench.path, f"{key}.node", str(exc)) from exc
