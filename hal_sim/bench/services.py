"""The bench's self-serving instruments: twins with several ports, each serving itself.

Built by the bench as ``factory(bench, key, **options)`` (style "service" in
:mod:`qnode.hal_sim.bench.kinds`); each has ``start()``, ``stop()`` and ``addresses()``, one
address per port (``tagger.scpi``, ``tagger.dlt``).
"""
from __future__ import annotations

from typing import Any

from ..twins.id900 import SimulatedID900
from ..twins.single_quantum import SingleQuantumSim, SingleQuantumTwin
from .context import BenchContext


class ID900Service:
    """A simulated ID Quantique Time Controller streaming one node of one of the bench's links
    (options: ``link`` (default: the bench's only link), ``node`` (default for a K link: its
    station), ``pace`` = 1.0 for real time or 0 for as fast as possible, ``scpi_port``,
    ``dlt_port``: 0 picks free ports). The node's channels in ascending order are inputs 1, 2, …"""

    def __init__(self, bench: BenchContext, key: str, *, node: str | None = None,
                 link: str | None = None, pace: float = 1.0, scpi_port: int = 0,
                 dlt_port: int = 0):
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

    def __init__(self, bench: BenchContext, key: str, *, n_detectors: int = 4,
                 switching_current_ua: float = 20.0, control_port: int = 0, counts_port: int = 0):
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
