"""The simulated instrument kinds a bench file can name (see :mod:`qnode.hal_sim.bench`).

Each maps to its twin class (imported only when used) and the transports its real counterpart
uses: "pty" for serial instruments, "tcp" for instruments on a TCP socket (a serial instrument
may also be served on TCP, reached with a ``socket://`` URL, which survives restarts).
"""
from __future__ import annotations

from typing import Any

from .bench import Bench, register

register("elliptec", "qnode.hal_sim.elliptec:ElliptecTwin", ("pty", "tcp"),
         "Thorlabs Elliptec ELL14 rotation mount (waveplate)")
register("tc200", "qnode.hal_sim.tc200:TC200Twin", ("pty", "tcp"),
         "Thorlabs TC200 temperature controller (SPDC crystal oven)")
register("ibeam", "qnode.hal_sim.ibeam:IBeamSmartTwin", ("pty", "tcp"),
         "Toptica iBeam smart pump laser")
register("itc4001", "qnode.hal_sim.itc4001:Itc4001Sim", ("tcp",),
         "Thorlabs ITC4001 laser-diode/TEC controller (SCPI; reach it as "
         "TCPIP::127.0.0.1::<port>::SOCKET)")


class ID900Service:
    """A simulated ID Quantique Time Controller streaming one node of the bench's [link]
    (options: ``node``, ``pace`` = 1.0 for real time or 0 for as fast as possible,
    ``scpi_port``, ``dlt_port``: 0 picks free ports)."""

    def __init__(self, bench: Bench, key: str, *, node: str, pace: float = 1.0,
                 scpi_port: int = 0, dlt_port: int = 0):
        from .id900 import SimulatedID900

        sim = bench.claim_simulator(key)
        self.device = SimulatedID900(sim, node, pace=pace or None, scpi_port=scpi_port,
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
         "of the bench's [link]", style="service")
register("single_quantum", "qnode.hal_sim.instruments:SingleQuantumService", ("tcp",),
         "Single Quantum SNSPD system (bias control and counts over TCP)", style="service")
