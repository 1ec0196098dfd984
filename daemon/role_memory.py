"""Roles ``memory`` and ``repeater``: keep the pairs heralded on the node's K-type links.

Each K-type link of the config gets a :class:`~.link_service.LinkService`: heralds from the
link's station are applied with the EGP rule, the inventory lives in SQLite, the memory's limits
(``[memory].capacity`` live pairs per link, cut-off ``[memory].max_pair_age_s``) expire the
oldest pairs (telling the peer), and CREATE requests on ``cmd`` are served from the inventory.

The node's quantum memories (instruments of kind ``qdevice``, QDEVICE/1) are supervised like any
instrument: calibration and the health check read ``QUBITS?`` (capacity, free), reported as
``memory_qubits``/``memory_qubits_free``. The link layer does not bind pairs to their qubits yet
(issue 6); the pairs' fidelity estimate is ``[memory].fidelity``, aged with ``t1_s``/``t2_s``.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .link_service import LinkService

if TYPE_CHECKING:
    from .node import NodeContext
    from .telemetry import Telemetry


class MemoryRole:
    name = "memory"

    def __init__(self, ctx: NodeContext):
        mem = ctx.config.memory
        assert mem is not None
        self.ctx = ctx
        self.router = ctx.router
        self.capacity = mem.capacity
        self.services = [
            self.router.add(LinkService(ctx, link.id, link.peer, "K", goodness=mem.fidelity,
                                        capacity=mem.capacity,
                                        max_pair_age_s=mem.max_pair_age_s,
                                        restart_policy=mem.restart_policy,
                                        max_fidelity=mem.fidelity, t1_s=mem.t1_s,
                                        t2_s=mem.t2_s))
            for link in ctx.config.links if link.type == "K"]
        self.qubits: dict[str, tuple[int, int]] = {}   # qdevice -> (capacity, free)
        self.calibrations = {name: self._read_qubits(name)
                             for name, inst in ctx.config.instruments.items()
                             if inst.kind == "qdevice"}
        self.health_checks = dict(self.calibrations)

    def _read_qubits(self, name: str) -> Callable[[Any], None]:
        def read(device: Any) -> None:   # QDEVICE/1 ``QUBITS?``
            count = device.qubits()
            self.qubits[name] = (count.capacity, count.free)
        return read

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        out: dict[str, Callable[[], Awaitable[None]]] = {}
        for s in self.services:
            out[f"{s.link}:tick"] = self._ticker(s)
        return out

    @staticmethod
    def _ticker(service: LinkService) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await service.start()
            await service.tick_loop()
        return run

    async def close(self) -> None:
        for s in self.services:
            await s.persist()

    def fill_telemetry(self, record: Telemetry, interval_s: float) -> None:
        used = 0
        for s in self.services:
            t = s.telemetry(interval_s)
            record["links"][s.link] = t
            used += t.get("pairs_live", 0)
        record["memory_used"] = used
        record["memory_capacity"] = self.capacity * len(self.services)
        if self.qubits:
            record["memory_qubits"] = sum(c for c, _ in self.qubits.values())
            record["memory_qubits_free"] = sum(f for _, f in self.qubits.values())
