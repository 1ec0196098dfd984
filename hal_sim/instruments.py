"""The simulated instrument kinds a bench file can name (see :mod:`qnode.hal_sim.bench`).

Each maps to its twin class (imported only when used) and the transports its real counterpart
uses: "pty" for serial instruments, "tcp" for instruments on a TCP socket (a serial instrument
may also be served on TCP, reached with a ``socket://`` URL, which survives restarts).

Coupling to an M link's physics (:func:`couple`, through
:func:`qnode.hal_sim.physics_coupling.apply_instruments`): pumps (``ibeam``, ``itc4001``) and
ovens (``tc200``) set the link's pair rate, waveplates (``elliptec``) turn an analyzer. The bench
pushes the twins' state into the simulator before every slice, when it has changed.

Quantum memories (``qdevice``, :func:`qdevice_twin`) hold the pairs a K link heralds (see
:mod:`qnode.hal_sim.bench`).
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from .bench import Bench, KLinkSpec, _fail, register

register("elliptec", "qnode.hal_sim.elliptec:ElliptecTwin", ("pty", "tcp"),
         "Thorlabs Elliptec ELL14 rotation mount (waveplate)", couples="waveplate")
register("tc200", "qnode.hal_sim.tc200:TC200Twin", ("pty", "tcp"),
         "Thorlabs TC200 temperature controller (SPDC crystal oven)", couples="oven",
         startup_errors=(b"CMD_NOT_DEFINED", b"CMD_ARG_RANGE_ERR"))
register("ibeam", "qnode.hal_sim.ibeam:IBeamSmartTwin", ("pty", "tcp"),
         "Toptica iBeam smart pump laser", couples="pump", startup_errors=(b"%SYS-E",))
register("itc4001", "qnode.hal_sim.itc4001:Itc4001Sim", ("tcp",),
         "Thorlabs ITC4001 laser-diode/TEC controller (SCPI; reach it as "
         "TCPIP::127.0.0.1::<port>::SOCKET)", couples="pump")


# ------------------------------------------------------------------------------ coupling

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
        from .physics_coupling import apply_instruments

        state = self._state()
        if state == self._last:
            return
        self._last = state
        pump = self.pump
        if pump is None and self.oven is not None:
            pump = _NominalPump(self.pair_rate_hz / max(self.brightness_hz_per_mw, 1e-300))
        self.applied = apply_instruments(sim, waveplates=tuple(self.waveplates), oven=self.oven,
                                         pump=pump, brightness_hz_per_mw=self.brightness_hz_per_mw)


def couple(bench: Bench, key: str, role: str, device: Any, options: Mapping[str, Any]) -> None:
    """Couple ``device`` (a twin playing ``role``: pump, oven or waveplate) to the M link its
    ``options`` name; errors name ``key`` (``instrument[i].options``) and the field."""
    from .physics_coupling import WaveplateMount

    rt = bench.link_runtime(key, options.get("link"))
    if isinstance(rt.spec, KLinkSpec):
        raise _fail(bench.path, f"{key}.link",
                    f"{rt.spec.name!r} is a K link; pumps, ovens and waveplates couple to M links")
    if rt.coupling is None:
        rt.coupling = MLinkCoupling(rt.spec.pair_rate_hz, rt.spec.brightness_hz_per_mw)
    c: MLinkCoupling = rt.coupling  # type: ignore[assignment]
    if role in ("pump", "oven"):
        if getattr(c, role) is not None:
            raise _fail(bench.path, f"{key}.link",
                        f"link {rt.spec.name!r} already has a coupled {role}")
        setattr(c, role, _Itc4001Pump(device) if hasattr(device, "optical_power_w") else device)
        return
    node = options.get("node")
    names = [n.name for n in rt.spec.nodes]
    if node not in names:
        raise _fail(bench.path, f"{key}.node", f"must name a node of link {rt.spec.name!r}, "
                                               f"one of {names}; got {node!r}")
    spec = next(n for n in rt.spec.nodes if n.name == node)
    analyzers = [a.name for a in spec.analyzers] or ["a"]
    # default: the last analyzer (with a passive basis choice, the arm behind the plate)
    analyzer = options.get("analyzer", analyzers[-1])
    if analyzer not in analyzers:
        raise _fail(bench.path, f"{key}.analyzer",
                    f"must name an analyzer of node {node!r}, one of {analyzers}; "
                    f"got {analyzer!r}")
    zero = options.get("zero_deg", 0.0)
    if isinstance(zero, bool) or not isinstance(zero, (int, float)):
        raise _fail(bench.path, f"{key}.zero_deg", f"must be a number (deg), got {zero!r}")
    if any(m.node == node for m in c.waveplates):
        raise _fail(bench.path, f"{key}.node", f"{node!r} already has a coupled waveplate")
    c.waveplates.append(WaveplateMount(node, analyzer, device, float(zero)))


# ------------------------------------------------------------------------------ services

class ID900Service:
    """A simulated ID Quantique Time Controller streaming one node of one of the bench's links
    (options: ``link`` (default: the bench's only link), ``node`` (default for a K link: its
    station), ``pace`` = 1.0 for real time or 0 for as fast as possible, ``scpi_port``,
    ``dlt_port``: 0 picks free ports). The node's channels in ascending order are inputs 1, 2, …"""

    def __init__(self, bench: Bench, key: str, *, node: str | None = None,
                 link: str | None = None, pace: float = 1.0, scpi_port: int = 0,
                 dlt_port: int = 0):
        from .id900 import SimulatedID900

        feed = bench.feed(key, link, node)
        self.feed = feed
        self.device = SimulatedID900(feed, feed.node, pace=pace or None, scpi_port=scpi_port,
                                     dlt_port=dlt_port)

    def start(self) -> ID900Service:
        self.device.start()
        return self

    def stop(self) -> None:
        self.device.stop()

    def addresses(self) -> dict[str, str]:
        return {"scpi": self.device.scpi_address, "dlt": self.device.dlt_address}


class SingleQuantumService:
    """A simulated Single Quantum SNSPD system: control (JSON) and counts (CSV) ports
    (options: ``n_detectors``, ``switching_current_ua``, ``control_port``, ``counts_port``)."""

    def __init__(self, bench: Bench, key: str, *, n_detectors: int = 4,
                 switching_current_ua: float = 20.0, control_port: int = 0, counts_port: int = 0):
        from .single_quantum import SingleQuantumSim, SingleQuantumTwin

        self.device = SingleQuantumTwin(
            SingleQuantumSim(n_detectors, switching_current_ua=switching_current_ua),
            control_port=control_port, counts_port=counts_port)

    def start(self) -> SingleQuantumService:
        self.device.start()
        return self

    def stop(self) -> None:
        self.device.stop()

    def addresses(self) -> dict[str, Any]:
        host = self.device.host
        return {"control": f"{host}:{self.device.control_port}",
                "counts": f"{host}:{self.device.counts_port}"}


register("id900", "qnode.hal_sim.instruments:ID900Service", ("zmq",),
         "ID Quantique ID900/ID1000 time controller (SCPI + DLT over ZeroMQ), streaming a node "
         "of one of the bench's links", style="service")
register("single_quantum", "qnode.hal_sim.instruments:SingleQuantumService", ("tcp",),
         "Single Quantum SNSPD system (bias control and counts over TCP)", style="service")


# ------------------------------------------------------------------------------ quantum memories

def qdevice_twin(bench: Bench, key: str, *, link: str | list[str] | None = None,
                 node: str | None = None, n_qubits: int = 4, t1_ns: float = math.inf,
                 t2_ns: float = math.inf, gate_fidelity_1q: float = 1.0,
                 gate_fidelity_2q: float = 1.0, readout_error: float = 0.0,
                 seed: int | None = None) -> Any:
    """A :class:`~qnode.hal_sim.qdevice.QDeviceTwin` named ``node``, the memory of ``node`` on
    the K link ``link`` (or on each of a list of K links: a repeater), sharing the bench's
    :class:`~qnode.hal_sim.qdevice.PairRegistry`, where every step of those links' simulators
    files its heralds; errors name ``key.options.<field>``."""
    from .qdevice import QDeviceConfig, QDeviceTwin

    okey = f"{key}.options"
    if link is None:
        raise _fail(bench.path, f"{okey}.link", "name the K link whose heralded pairs it holds")
    names = link if isinstance(link, list) else [link]
    if not names or not all(isinstance(n, str) for n in names):
        raise _fail(bench.path, f"{okey}.link", f"must be a link name or a list of them, "
                                                f"got {link!r}")
    runtimes = []
    for name in names:
        rt = bench.link_runtime(okey, name)
        if not isinstance(rt.spec, KLinkSpec):
            raise _fail(bench.path, f"{okey}.link",
                        f"{rt.spec.name!r} is an M link; a qdevice holds the pairs of a K link")
        ends = list(rt.spec.link.ends)
        if node not in ends:
            raise _fail(bench.path, f"{okey}.node",
                        f"must name a memory node of link {rt.spec.name!r}, one of {ends}; "
                        f"got {node!r}")
        if node in rt.qdevices:
            raise _fail(bench.path, f"{okey}.node",
                        f"{node!r} of link {rt.spec.name!r} already has a qdevice, "
                        f"{rt.qdevices[node]}")
        runtimes.append(rt)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise _fail(bench.path, f"{okey}.seed", f"must be an integer >= 0, got {seed!r}")
    try:
        config = QDeviceConfig(n_qubits=n_qubits, t1_ns=t1_ns, t2_ns=t2_ns,
                               gate_fidelity_1q=gate_fidelity_1q,
                               gate_fidelity_2q=gate_fidelity_2q, readout_error=readout_error)
    except (TypeError, ValueError) as exc:
        m = re.match(r"QDeviceConfig\.(\w+)", str(exc))
        field = m[1] if m else ("t2_ns" if "T2" in str(exc) else None)
        raise _fail(bench.path, f"{okey}.{field}" if field else okey, str(exc)) from exc
    registry = bench.pair_registry()
    twin = QDeviceTwin(config, name=node, registry=registry, seed=seed)
    for rt in runtimes:
        rt.file_heralds_in(registry)
        rt.qdevices[node] = key
    return twin


def qdevice_truth(bench: Bench, key: str) -> Any:
    """The :class:`~qnode.hal_sim.qdevice.RegistryOracle` of the bench's pair registry: the
    true state of any pair its qdevices hold, for tests (``SIM:PAIR? <device> <q>``)."""
    from .qdevice import RegistryOracle

    return RegistryOracle(bench.pair_registry())


register("qdevice_truth", "qnode.hal_sim.instruments:qdevice_truth", ("tcp",),
         "ground truth of the bench's quantum memories (simulator only): the true Bell weights "
         "of the pair a qubit holds", style="linked")
register("qdevice", "qnode.hal_sim.instruments:qdevice_twin", ("tcp",),
         "quantum memory of a node on one or more K links (QDEVICE/1 over TCP), holding the "
         "pairs they herald", style="linked")
