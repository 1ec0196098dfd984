"""The node's KME at work: its key store and its ETSI GS QKD 014 server, one per node.

Made on first use through ``ctx.shared(KmeService)`` (by the node when ``[kme]`` is configured,
and by a role that makes keys, :mod:`qnode.daemon.roles.analyzer`): the store opens at once (the
key producers add to it from the start), the server runs as the supervised task ``kme``
(:meth:`run`: started, and stopped when the task is cancelled at shutdown).
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import TYPE_CHECKING

from qnode.daemon.kme.server import KmeServer
from qnode.daemon.kme.store import KeyStore
from qnode.daemon.runtime.config import ConfigError

if TYPE_CHECKING:
    from qnode.daemon.bus.telemetry import KmeTelemetry
    from qnode.daemon.runtime.context import NodeContext

log = logging.getLogger("qnode.kme")


class KmeService:
    """The key store and the KME server of ``ctx``'s node (its ``[kme]`` table)."""

    def __init__(self, ctx: NodeContext):
        cfg = ctx.config.kme
        if cfg is None:
            raise ValueError(f"{ctx.config.path}: [kme] is not configured")
        self.config = cfg
        try:
            self.store = KeyStore(cfg.store, ctx.node, key_size_bits=cfg.key_size_bits,
                                  max_key_count=cfg.max_key_count)
        except (ValueError, OSError, sqlite3.Error) as exc:
            # another node's store, another key size, a file that is not a store
            raise ConfigError(ctx.config.path, "kme.store", str(exc)) from None
        self.server = KmeServer(cfg, self.store)

    async def run(self) -> None:
        """The supervised task: serve until cancelled, then stop listening and close the
        store."""
        await self.server.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.server.stop()

    def close(self) -> None:
        self.store.close()

    def telemetry(self) -> KmeTelemetry:
        """The KME's figures (:class:`~qnode.daemon.bus.telemetry.KmeTelemetry`)."""
        store = self.store
        return {"kme_id": self.config.kme_id, "port": self._port(),
                "keys_added_total": store.added_total,
                "keys_delivered_total": store.delivered_total,
                "keys_dropped_total": store.dropped_total,
                "keys_refused_total": dict(store.refused_total),
                "requests_total": dict(self.server.served),
                "requests_rejected_total": dict(self.server.rejected)}

    def _port(self) -> int:
        try:
            return self.server.bound_port
        except RuntimeError:
            return 0
