"""The node daemon: one asyncio program that runs a node's config (``qnode run --config``).

Start-up (docs/operators/systemd.md, section How a node starts, runs and stops)::

    state (SQLite) → MQTT bus → supervisor: instruments on their threads, role tasks
    → every instrument READY → READY=1 and retained status "ready" → WATCHDOG=1 from the loop

Shutdown on SIGTERM/SIGINT (or :meth:`Node.stop`): STOPPING=1, roles persist their link state,
the bus drains what the broker has not acknowledged (bounded) and publishes the retained
``offline`` status, instruments close, and the process exits 0 within seconds.

The roles (:mod:`qnode.daemon.roles.station`, :mod:`qnode.daemon.roles.memory`,
:mod:`qnode.daemon.roles.analyzer`,
:mod:`qnode.daemon.roles.source`) share a :class:`NodeContext`: the config, bus, state store,
supervisor, and the rules for persisting link state *before* sending what a link-layer call
returned.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from qnode.daemon.bus.client import NodeBus
from qnode.daemon.bus.envelope import Deduplicator
from qnode.daemon.bus.identity import NodeSigner, TrustStore
from qnode.daemon.bus.telemetry import SCHEMA_VERSION, Telemetry
from qnode.daemon.bus.topics import Topics
from qnode.daemon.klink.service import LinkRouter
from qnode.daemon.runtime.config import NodeConfig
from qnode.daemon.runtime.context import LeasedIds, NodeContext, Role, read_keys, tls_context
from qnode.daemon.runtime.instruments import driver_factory
from qnode.daemon.runtime.sdnotify import Notifier, watchdog_interval_s, watchdog_loop
from qnode.daemon.runtime.state import StateStore
from qnode.daemon.runtime.supervisor import InstrumentState, ManagedInstrument, Supervisor

if TYPE_CHECKING:
    from qnode.daemon.kme.service import KmeService

log = logging.getLogger("qnode.node")

class Node:
    """A running node. ``await Node(config).run()`` returns after :meth:`stop` (or SIGTERM with
    ``handle_signals``). ``notifier``: systemd notifications (default: from the environment).
    ``telemetry_listeners`` get every record built (the Prometheus exporter, tests).
    ``freeze_gc``: at READY, move every object of the process out of the cyclic collector's
    reach (``gc.freeze``); only for a process that is this node (``qnode run``), since objects
    frozen are never collected as cycles."""

    def __init__(self, config: NodeConfig, *, notifier: Notifier | None = None,
                 handle_signals: bool = True, ready_timeout_s: float | None = None,
                 freeze_gc: bool = False):
        self.config = config
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.handle_signals = handle_signals
        self.freeze_gc = freeze_gc
        self.ready_timeout_s = ready_timeout_s
        self.telemetry_listeners: list[Callable[[Telemetry], None]] = []
        self.roles: list[Role] = []
        self.state = "starting"
        self.started = time.monotonic()
        self._stop = asyncio.Event()
        #: the key delivery service, on a node with [kme] only: it brings aiohttp (0.1 s and
        #: some MB of import), which the other nodes never load
        self._kme: KmeService | None = None
        self._ready = asyncio.Event()
        self.ctx: NodeContext | None = None
        self._last_telemetry = time.monotonic()
        self._offline_reported = False
        #: why the node stopped on its own (None: it was asked to stop)
        self.failed: str | None = None

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask the node to shut down (idempotent; call on the node's loop)."""
        self._stop.set()

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        async with asyncio.timeout(timeout_s):  # not wait_for: see runtime/waiting.py
            await self._ready.wait()

    # ------------------------------------------------------------------ main
    async def run(self) -> None:
        cfg = self.config
        store = StateStore(cfg.state_dir / "qnode.sqlite")
        try:
            await self._run(store)
        finally:
            store.close()

    async def _run(self, store: StateStore) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        dedup = Deduplicator()
        discarded = dedup.restore(store.load_dedup())
        if discarded:
            log.warning("discarded %d stored replay windows not tied to a link key (written by "
                        "an older version, which let unsigned messages move them)", discarded,
                        extra={"discarded": discarded})
        keys = read_keys(cfg)
        heralds = {link.id: link.herald for link in cfg.links
                   if link.type == "K" and link.herald is not None}
        bus = NodeBus(Topics(cfg.network, cfg.id), cfg.broker.host, cfg.broker.port,
                      tls=tls_context(cfg), keys=keys, ids=LeasedIds(store), dedup=dedup,
                      signer=(NodeSigner.from_file(cfg.identity_key_file)
                              if cfg.identity_key_file is not None else None),
                      trust=TrustStore.from_dir(cfg.trust_dir) if cfg.trust_dir is not None
                      else None,
                      heralds=heralds, keepalive_s=int(cfg.broker.keepalive_s))
        sup = Supervisor()
        self.ctx = ctx = NodeContext(cfg, bus, store, sup, keys)
        self.roles = build_roles(ctx)
        calibrations = _collect(self.roles, "calibrations")
        checks = _collect(self.roles, "health_checks")
        for inst in cfg.instruments.values():
            factory = driver_factory(inst)
            if factory is None:
                continue
            sup.add_instrument(ManagedInstrument(
                inst.name, factory, calibrate=calibrations.get(inst.name),
                health_check=checks.get(inst.name), check_interval_s=5.0,
                backoff_initial_s=0.2, backoff_max_s=10.0))
        for role in self.roles:
            for name, task in role.tasks().items():
                sup.add_task(f"{role.name}:{name}", task)
        sup.add_task("keys", keys.watch)  # key rotation: files are re-read when they change
        if cfg.kme is not None:
            from qnode.daemon.kme.service import KmeService
            self._kme = ctx.shared(KmeService)
            sup.add_task("kme", self._kme.run)
        sup.add_task("telemetry", self._telemetry_loop)
        sup.add_task("persist", self._persist_loop)
        interval = watchdog_interval_s()
        if interval is not None:
            sup.add_task("watchdog", lambda: watchdog_loop(self.notifier, interval,
                                                           healthy=self._healthy))
        log.info("node starting", extra={"node": cfg.id, "roles": ",".join(cfg.roles),
                                         "broker": cfg.broker.url,
                                         "instruments": len(cfg.instruments)})
        # the bus runs beside the supervisor: it has its own reconnect loop (which nothing but
        # close() ends), and it must outlive the role tasks at shutdown to drain what they sent
        bus_task = asyncio.create_task(bus.run(), name="bus")
        bus_task.add_done_callback(self._bus_ended)
        await sup.start()
        bus.status("starting", roles=list(cfg.roles))
        try:
            await self._bring_up(sup, bus)
            await self._stop.wait()
        finally:
            await self._shutdown(sup, bus, bus_task, store, dedup)

    async def _until_stopped(self, aw: Awaitable[Any]) -> tuple[bool, Any]:
        """(True, result) when ``aw`` finished first, (False, None) when stop() came first."""
        waiter = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not waiter.done():
            waiter.cancel()
            return False, None
        return True, waiter.result()

    async def _bring_up(self, sup: Supervisor, bus: NodeBus) -> None:
        """READY=1 once every instrument is up and the broker has our subscriptions (a node
        that cannot hear its heralds is not ready); the roles' tasks already run."""
        self.notifier.status(f"{self.config.id}: bringing up {len(sup.instruments)} "
                             f"instruments")
        finished, ok = await self._until_stopped(sup.wait_ready(self.ready_timeout_s))
        if not finished:
            return
        if not ok:
            down = [n for n, i in sup.instruments.items() if i.state is not InstrumentState.READY]
            raise RuntimeError(f"instruments not ready within {self.ready_timeout_s} s: {down}")
        if not bus.connected:
            self.notifier.status(f"{self.config.id}: waiting for the broker "
                                 f"{self.config.broker.url}")
            log.info("instruments up; waiting for the broker", extra={
                "broker": self.config.broker.url})
            finished, _ = await self._until_stopped(bus.wait_connected())
            if not finished:
                return
        self.state = "ready"
        self.notifier.ready(f"{self.config.id}: {len(sup.instruments)} instruments ready")
        bus.status("ready", roles=list(self.config.roles),
                   links=[link.id for link in self.config.links])
        self._ready.set()
        # What exists now (modules, config, roles: ~40k objects) lives as long as the node.
        # Frozen, the cyclic collector no longer walks it: a full collection went from 10-18 ms
        # (both cores busy, after a herald flood) to 1-3 ms; those pauses were one cause of
        # the herald latency outliers seen after an overload (benchmarks/flood.py).
        if self.freeze_gc:
            gc.collect()
            gc.freeze()
        log.info("node ready", extra={"node": self.config.id,
                                      "gc_frozen_objects": gc.get_freeze_count()})

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s; stopping", sig.name, extra={"signal": sig.name})
        self.stop()

    def _bus_ended(self, task: asyncio.Task[None]) -> None:
        """The bus only ends when the node closes it; anything else leaves the node deaf, so it
        stops (exit 1) for systemd to restart it rather than run on unheard."""
        if self.state == "stopping" or task.cancelled():
            return
        self.failed = f"the MQTT bus ended: {task.exception()!r}"
        log.critical("mqtt bus ended unexpectedly; stopping the node", exc_info=task.exception(),
                     extra={"node": self.config.id})
        self.stop()

    def _healthy(self) -> bool:
        """The watchdog's gate: the loop runs (the ping comes from it), the supervisor runs, and
        the broker has not been unreachable for longer than ``broker.max_offline_s`` (a node
        that cannot hear its peers is restarted). A degraded instrument is *not* a reason to be
        restarted: the supervisor already reconnects it, and a restart would not bring back an
        instrument that is away; it is reported as state "degraded" in status and telemetry
        instead."""
        assert self.ctx is not None
        limit = self.config.broker.max_offline_s
        if limit and self.ctx.bus.disconnected_s > limit:
            if not self._offline_reported:
                self._offline_reported = True
                log.error("broker unreachable for %.0f s (max_offline_s %.0f): withholding the "
                          "watchdog", self.ctx.bus.disconnected_s, limit,
                          extra={"broker": self.config.broker.url, "max_offline_s": limit})
            return False
        self._offline_reported = False
        return self.ctx.supervisor.running

    async def _shutdown(self, sup: Supervisor, bus: NodeBus, bus_task: asyncio.Task[None],
                        store: StateStore, dedup: Deduplicator) -> None:
        """Role tasks and instruments stop first (nothing new is heralded), then the bus
        drains what was sent and says offline (incoming messages are handled until then), then
        the roles store their final state."""
        self.state = "stopping"
        self.notifier.stopping(f"{self.config.id}: stopping")
        log.info("node stopping", extra={"node": self.config.id})
        await sup.stop()
        with contextlib.suppress(Exception):
            await bus.close(drain_timeout_s=2.0)
        if not bus_task.done():
            bus_task.cancel()
        with contextlib.suppress(BaseException):
            await bus_task
        for role in self.roles:
            try:
                async with asyncio.timeout(5.0):
                    await role.close()
            except Exception:
                log.exception("role %s failed to close", role.name, extra={"role": role.name})
        assert self.ctx is not None
        await asyncio.to_thread(self.ctx.close)
        if self._kme is not None:
            self._kme.close()
        store.save_dedup(dedup.snapshot())
        log.info("node stopped", extra={"node": self.config.id})

    # ------------------------------------------------------------------ periodic work
    async def _persist_loop(self) -> None:
        """Persist the de-duplication windows once a second (a crash may then accept a
        redelivery of the last second's messages again; every link-layer message is
        idempotent under the EGP rule, so that is harmless)."""
        assert self.ctx is not None
        while True:
            await asyncio.sleep(1.0)
            snap = self.ctx.bus.dedup.snapshot()
            await self.ctx.persist(lambda s=snap: self.ctx.store.save_dedup(s))  # type: ignore

    def telemetry(self) -> Telemetry:
        """A telemetry record now; see :mod:`qnode.daemon.bus.telemetry`."""
        assert self.ctx is not None
        now = time.monotonic()
        interval = max(now - self._last_telemetry, 1e-3)
        self._last_telemetry = now
        sup = self.ctx.supervisor
        record: Telemetry = {
            "v": SCHEMA_VERSION, "node": self.config.id, "roles": list(self.config.roles),
            "t": time.time(), "uptime_s": now - self.started,
            # degraded: an instrument is away, or the broker is (then only the local Prometheus
            # endpoint can tell)
            "state": (self.state if self.state != "ready" or (sup.healthy()
                                                              and self.ctx.bus.connected)
                      else "degraded"),
            "instruments": {n: {"kind": self.config.instruments[n].kind,
                                "state": i.state.value, "errors_total": i.failures}
                            for n, i in sup.instruments.items()},
            "role_restarts_total": sum(sup.restarts.values()),
            "links": {},
        }
        for role in self.roles:
            role.fill_telemetry(record, interval)
        router = self.ctx.shared_if_made(LinkRouter)
        if router is not None:
            record["link_rejected"] = dict(router.rejected)
        record["bus"] = self.ctx.bus.metrics()
        if self._kme is not None:
            record["kme"] = self._kme.telemetry()
        return record

    async def _telemetry_loop(self) -> None:
        assert self.ctx is not None
        period = self.config.metrics.telemetry_interval_s
        while True:
            await asyncio.sleep(period)
            record = self.telemetry()
            # retained, so `qnode status` sees every node's latest figures at once
            self.ctx.bus.publish(self.ctx.topics.telemetry, "telemetry", record,
                                 state_changing=False, retain=True)
            for listener in self.telemetry_listeners:
                try:
                    listener(record)
                except Exception:
                    log.exception("telemetry listener failed")


def _collect(roles: list[Role], attr: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role in roles:
        out.update(getattr(role, attr, {}))
    return out


def build_roles(ctx: NodeContext) -> list[Role]:
    """The role objects of ``ctx.config.roles`` (memory and repeater share one)."""
    roles: list[Role] = []
    names = set(ctx.config.roles)
    if "herald" in names:
        from qnode.daemon.roles.station import HeraldStationRole
        roles.append(HeraldStationRole(ctx))
    if names & {"memory", "repeater"}:
        from qnode.daemon.roles.memory import MemoryRole
        roles.append(MemoryRole(ctx))
    if "analyzer" in names:
        from qnode.daemon.roles.analyzer import AnalyzerRole
        roles.append(AnalyzerRole(ctx))
    if "source" in names:
        from qnode.daemon.roles.source import SourceRole
        roles.append(SourceRole(ctx))
    return roles
