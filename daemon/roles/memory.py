"""Roles ``memory`` and ``repeater``: keep the pairs heralded on the node's K-type links.

Each K-type link of the config gets a :class:`~qnode.daemon.klink.service.LinkService`: heralds from
the link's station are applied with the EGP rule, the inventory lives in SQLite, the memory's limits
(``[memory].capacity`` live pairs per link, cut-off ``[memory].max_pair_age_s``) expire the oldest
pairs (telling the peer), and CREATE requests on ``cmd`` are served from the inventory.

With ``[memory].qdevice`` the pairs live in that QDevice's qubits (QDEVICE/1): every connect resets
it and allocates ``qubits_per_link`` storage qubits and one test qubit per K link, and each link
binds its pairs by the rule of :mod:`qnode.daemon.klink.memory` — test pairs measured for the link's
fidelity estimate, the rest bound while qubits are free and EXPIREd otherwise. ``[[paths]]`` through
this node make it a repeater that swaps (:class:`~qnode.daemon.klink.swapping.Swapper`) or a path
end that serves end-to-end pairs (:class:`~qnode.daemon.klink.swapping.PathEnd`). Without a QDevice
the pairs are the link layer's alone, with the fidelity ``[memory].fidelity`` aged with
``t1_s``/``t2_s``.

With an identity key and the network's public keys, the node also advertises its links'
measured state and keeps routes to every other node (:mod:`qnode.daemon.routing`), and serves
CREATEs and applications' requests for nodes no link or ``[[paths]]`` reaches over routed
paths, installed and moved by the end whose id sorts first (:mod:`qnode.daemon.routing.paths`).

QDevices are supervised like any instrument: calibration and the health check read ``QUBITS?``
(capacity, free), reported as ``memory_qubits``/``memory_qubits_free``.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from qnode.daemon.apps.operations import Channels
from qnode.daemon.apps.pools import LinkPool, PathPool, Pool, RoutedPool
from qnode.daemon.apps.service import AppService
from qnode.daemon.klink.memory import LinkMemory, QubitPool
from qnode.daemon.klink.purification import Purifier
from qnode.daemon.klink.service import LinkRouter, LinkService
from qnode.daemon.klink.swapping import PathEnd, Swapper
from qnode.daemon.routing.paths import PathManager
from qnode.daemon.routing.service import LinkReporter, RoutingService
from qnode.daemon.runtime.config import ConfigError

if TYPE_CHECKING:
    from qnode.daemon.bus.telemetry import PathTelemetry, Telemetry
    from qnode.daemon.runtime.context import NodeContext


class MemoryRole:
    name = "memory"

    def __init__(self, ctx: NodeContext):
        mem = ctx.config.memory
        assert mem is not None
        self.ctx = ctx
        self.router = ctx.shared(LinkRouter)
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
        self.calibrations: dict[str, Callable[[Any], None]] = {
            name: self._read_qubits(name) for name, inst in ctx.config.instruments.items()
            if inst.kind == "qdevice"}
        self.health_checks = dict(self.calibrations)
        self.pool: QubitPool | None = None
        self.swappers: list[Swapper] = []
        self.purifiers: dict[str, Purifier] = {}   # link -> its purifier
        self.path_ends: list[PathEnd] = []
        if mem.qdevice is not None:
            self._bind_qubits(mem.qdevice)
        self._paths()
        #: adverts and routes, on a node whose pairs live in qubits and who can sign and check
        #: identity signatures
        self.routing: RoutingService | None = None
        self.routed: PathManager | None = None
        if self.pool is not None and ctx.bus.signer is not None and ctx.bus.trust is not None:
            self.routing = RoutingService(ctx, ctx.config.routing, LinkReporter(self.services))
            self.routed = PathManager(ctx, self.routing, self.router,
                                      {s.link: s for s in self.services if s.memory is not None},
                                      mem, ctx.config.routing)
        self.apps: AppService | None = None
        if ctx.config.service is not None:
            feeding = {lid for p in ctx.config.paths for lid in p.links}
            pools: list[Pool] = [LinkPool(s, s.memory, ctx.node) for s in self.services
                                 if s.memory is not None and s.link not in feeding]
            pools += [PathPool(end, ctx.node) for end in self.path_ends]
            qcs, me = ctx.config.quantum_channels, ctx.node
            self.apps = AppService(ctx, ctx.config.service, pools, Channels(
                out={c.target: c.id for c in qcs if c.source == me},
                into={c.source: c.id for c in qcs if c.target == me}))
        #: remote node -> the pool of the routed paths to it (the application service's)
        self.routed_pools: dict[str, RoutedPool] = {}
        if self.routed is not None and self.apps is not None:
            self.routed.on_end.append(self._routed_pool)
            self.apps.route = self.routed.want   # a request for a far node routes a path

    async def _routed_pool(self, end: PathEnd) -> None:
        """A routed path's end was installed here: the application service serves its remote
        from it (a new pool, or the pool moved to it)."""
        assert self.apps is not None
        pool = self.routed_pools.get(end.remote)
        if pool is not None:
            await pool.use(end)
            return
        pool = RoutedPool(end, self.ctx.node)
        if self.apps.add_pool(pool):    # not when a link or a configured path serves it
            self.routed_pools[end.remote] = pool

    def _bind_qubits(self, qdevice: str) -> None:
        mem = self.ctx.config.memory
        assert mem is not None
        pool = self.pool = QubitPool(qdevice, lambda: self.ctx.instrument(qdevice),
                                     {s.link: mem.qubits_per_link + 1 for s in self.services})
        read = self.calibrations[qdevice]

        def calibrate(device: Any) -> None:
            pool.calibrate(device)
            read(device)
        self.calibrations[qdevice] = calibrate
        for s in self.services:
            memory = LinkMemory(s.link, pool, test_fraction=mem.test_fraction,
                                readout_error=mem.readout_error, t1_s=mem.t1_s,
                                t2_s=mem.t2_s, prior_fidelity=mem.fidelity,
                                min_tests=mem.min_tests)
            s.attach_memory(memory)
            s.hold_s = mem.delivered_hold_s
            if mem.purification != "off":
                self.purifiers[s.link] = Purifier(self.ctx, s, memory, mem)

    def _paths(self) -> None:
        cfg = self.ctx.config
        mem = cfg.memory
        assert mem is not None
        by_link = {s.link: s for s in self.services}
        for i, path in enumerate(cfg.paths):
            if cfg.id not in path.nodes:
                continue
            if self.pool is None:
                raise ConfigError(cfg.path, f"paths[{i}]", "a path's repeaters and ends need "
                                                           "their pairs in qubits: set "
                                                           "[memory].qdevice")
            k = path.nodes.index(cfg.id)
            if cfg.id in path.repeaters:
                pair = (by_link[path.links[k - 1]], by_link[path.links[k]])
                m0, m1 = pair[0].memory, pair[1].memory
                assert m0 is not None and m1 is not None
                swapper = Swapper(self.ctx, path, pair, (m0, m1), mem)
                for s in pair:
                    s.listeners.append(swapper.poke)
                self.swappers.append(swapper)
            else:
                service = by_link[path.links[0 if k == 0 else -1]]
                assert service.memory is not None
                end = PathEnd(self.ctx, path, service, service.memory, mem)
                self.router.add_path(end)
                self.path_ends.append(end)

    def _read_qubits(self, name: str) -> Callable[[Any], None]:
        def read(device: Any) -> None:   # QDEVICE/1 ``QUBITS?``
            count = device.qubits()
            self.qubits[name] = (count.capacity, count.free)
        return read

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        out: dict[str, Callable[[], Awaitable[None]]] = {}
        for s in self.services:
            out[f"{s.link}:tick"] = self._ticker(s)
            if s.memory is not None:
                out[f"{s.link}:qubits"] = self._qubit_worker(s)
            if s.link in self.purifiers:
                out[f"{s.link}:purify"] = self.purifiers[s.link].run
        for sw in self.swappers:
            out[f"{sw.path.id}:swap"] = sw.run
        for end in self.path_ends:
            out[f"{end.path.id}:end"] = self._path_ticker(end)
        if self.apps is not None:
            out["apps"] = self.apps.run
        if self.routing is not None:
            out["routing"] = self.routing.run
        if self.routed is not None:
            out["routed-paths"] = self.routed.run
        return out

    @staticmethod
    def _ticker(service: LinkService) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await service.start()
            await service.tick_loop()
        return run

    @staticmethod
    def _qubit_worker(service: LinkService) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            assert service.memory is not None
            await service.memory.run(service)
        return run

    @staticmethod
    def _path_ticker(end: PathEnd) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            while True:
                await asyncio.sleep(0.1)
                async with end.service.lock:
                    end.tick()
        return run

    async def close(self) -> None:
        if self.routed is not None:
            await self.routed.close()
        if self.routing is not None:
            await self.routing.close()
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
        paths: dict[str, PathTelemetry] = {sw.path.id: sw.telemetry() for sw in self.swappers}
        paths.update({end.path.id: end.telemetry() for end in self.path_ends})
        if self.routed is not None:
            paths.update(self.routed.path_telemetry())
        if paths:
            record["paths"] = paths
        if self.apps is not None:
            record["apps"] = self.apps.telemetry()
        if self.routing is not None:
            record["routing"] = self.routing.telemetry()
            if self.routed is not None:
                record["routing"]["routed"] = self.routed.telemetry()
