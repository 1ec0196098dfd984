"""Running ``qnode run`` daemons as real processes in tests, and a NodeBus for the test's own
messages (not a test module).

    with Daemon(config_path, env=...) as d:   # started; stopped with SIGTERM on exit
        d.wait_for_log("node ready")

Each daemon logs key=value lines to a file; :meth:`Daemon.stop` sends SIGTERM and returns the
exit code (the test decides what it expects).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from qnode.daemon.bus.client import NodeBus
from qnode.daemon.bus.identity import NodeSigner, keygen
from qnode.daemon.bus.keys import write_key_file

#: the folder beside a test's configs that holds every node's identity key and public key
IDENTITY_DIR = "identity"


def write_key(path: Path, key: bytes | str) -> Path:
    """Write an HMAC key file as a node accepts it: 0600 from creation (one key; a second
    line for a rotation: ``write_key(p, new + b"\\n" + old)``)."""
    return write_key_file(path, key)


def identity(directory: Path, node: str) -> NodeSigner:
    """Node ``node``'s identity key in ``directory/identity`` (made on first use), e.g. for a
    test that plays a herald station: ``NodeBus(..., signer=identity(tmp_path, "station"))``."""
    folder = directory / IDENTITY_DIR
    if not (folder / f"{node}.key").exists():
        keygen(node, folder)
    return NodeSigner.from_file(folder / f"{node}.key")


_SHARED_IDS: Path | None = None


def identity_lines(node: str, *trusted: str) -> str:
    """``identity_key_file`` and ``trust_dir`` lines of ``[node]`` for a config text a test
    writes by hand: ``node``'s key and those of ``trusted`` in one temporary folder of this
    test process."""
    global _SHARED_IDS
    if _SHARED_IDS is None:
        _SHARED_IDS = Path(tempfile.mkdtemp(prefix="qnode-test-identity-"))
    for name in (node, *trusted):
        if not (_SHARED_IDS / f"{name}.key").exists():
            keygen(name, _SHARED_IDS)
    return (f'identity_key_file = "{_SHARED_IDS / (node + ".key")}"\n'
            f'trust_dir = "{_SHARED_IDS}"\n')


def node_config(path: Path, *, node: str, roles: list[str], broker_port: int, state_dir: Path,
                body: str = "", network: str = "t", telemetry_interval_s: float = 0.5,
                prometheus_port: int = 0) -> Path:
    """Write a node config (``prometheus_port`` 0: no endpoint) and return its path. The node
    gets an identity key and trusts every key in ``identity/`` beside the config (made there
    for it and for each herald station and peer its links name)."""
    for name in [node, *re.findall(r'^(?:herald|peer) = "([A-Za-z0-9_-]+)"', body,
                                   re.MULTILINE)]:
        identity(path.parent, name)
    ids = path.parent / IDENTITY_DIR
    path.write_text(
        f"[node]\nid = \"{node}\"\nnetwork = \"{network}\"\nroles = {json.dumps(roles)}\n"
        f"state_dir = \"{state_dir}\"\nidentity_key_file = \"{ids / (node + '.key')}\"\n"
        f"trust_dir = \"{ids}\"\n\n[broker]\nurl = \"mqtt://127.0.0.1:{broker_port}\"\n"
        f"keepalive_s = 5\n\n[metrics]\nprometheus_port = {prometheus_port}\n"
        f"telemetry_interval_s = {telemetry_interval_s}\n\n{body}")
    return path


def k_link_configs(tmp: Path, port: int, *, link: str = "alice-bob", key: bytes = b"k" * 32,
                   network: str = "t", telemetry_interval_s: float = 0.5,
                   max_pair_age_s: float = 0.0, restart_policy: str = "resume",
                   t1_t2_s: tuple[float, float] = (0.0, 0.0),
                   alice_prometheus_port: int = 0) -> dict[str, Path]:
    """Configs of the memory nodes ``alice`` and ``bob`` on one K link heralded by
    ``station`` (played by the test), in ``tmp``: capacity 100 000 pairs, fidelity 0.9."""
    key_file = write_key(tmp / "link.key", key)
    return {node: node_config(
        tmp / f"{node}.toml", node=node, roles=["memory"], broker_port=port,
        state_dir=tmp / "state" / node, network=network,
        telemetry_interval_s=telemetry_interval_s,
        prometheus_port=alice_prometheus_port if node == "alice" else 0,
        body=f"[memory]\ncapacity = 100000\nmax_pair_age_s = {max_pair_age_s}\n"
             f"fidelity = 0.9\nrestart_policy = \"{restart_policy}\"\n"
             f"t1_s = {t1_t2_s[0]}\nt2_s = {t1_t2_s[1]}\n\n"
             f"[[links]]\nid = \"{link}\"\npeer = \"{peer}\"\n"
             f"type = \"K\"\nherald = \"station\"\nhmac_key_file = \"{key_file}\"\n")
        for node, peer in (("alice", "bob"), ("bob", "alice"))}


class MemoryLinkStore:
    """The link part of :class:`~qnode.daemon.runtime.state.StateStore`, in memory and through
    JSON as SQLite keeps it, for a LinkService under test."""

    def __init__(self) -> None:
        self.links: dict[str, dict[str, Any]] = {}
        self.app_requests: dict[tuple[str, str], tuple[int, int]] = {}

    def apply_app_requests(self, changes: list[tuple[Any, ...]]) -> None:
        for c in changes:
            if len(c) == 4:
                self.app_requests[(c[0], c[1])] = (c[2], c[3])
            else:
                self.app_requests.pop((c[0], c[1]), None)

    def load_app_requests(self) -> list[tuple[str, str, int, int]]:
        return [(a, r, p, d) for (a, r), (p, d) in sorted(self.app_requests.items())]

    def load_links(self) -> dict[str, dict[str, Any]]:
        return json.loads(json.dumps(self.links))

    def save_link(self, link: str, snap: dict[str, Any]) -> None:
        self.links[link] = json.loads(json.dumps(snap))

    def save_link_delta(self, link: str, delta: dict[str, Any]) -> None:
        from qnode.daemon.linklayer import LinkEnd

        self.links[link] = LinkEnd.apply_snapshot_delta(self.links[link],
                                                        json.loads(json.dumps(delta)))


def link_context(node: str, bus: Any, store: MemoryLinkStore | None = None) -> Any:
    """What a :class:`~qnode.daemon.klink.service.LinkService` needs of its node, without a
    node: ``bus`` (anything with ``publish``; handlers it is given with ``on`` are kept in
    ``ctx.handlers``), a :class:`MemoryLinkStore`, stores run at once, and the node's shared
    objects made on first use as :meth:`~qnode.daemon.runtime.context.NodeContext.shared` makes
    them (so a refused message is counted in the real link router's ``rejected``)."""
    import types

    from qnode.daemon.bus.topics import Topics

    async def persist(fn: Callable[[], None]) -> None:
        fn()

    made: dict[Any, Any] = {}
    handlers: dict[str, Any] = {}
    if not hasattr(bus, "on"):
        bus.on = lambda kind, handler: handlers.__setitem__(kind, handler)
    if not hasattr(bus, "subscribe"):
        bus.subscribe = lambda topic_filter: None
    ctx = types.SimpleNamespace(
        node=node, now=time.monotonic, store=store or MemoryLinkStore(), persist=persist,
        bus=bus, topics=Topics("t", node), handlers=handlers)
    ctx.shared = lambda kind: made[kind] if kind in made else made.setdefault(kind, kind(ctx))
    ctx.shared_if_made = made.get
    return ctx


class Daemon:
    """``python -m qnode.daemon.cli run --config`` with its output in ``<config>.log``."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None):
        self.config = config
        self.log_path = config.with_suffix(".log")
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qnode.daemon.cli", "run", "--config", str(self.config),
             "--log-level", "INFO"], stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before "
                                     f"{text!r}:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout_s} s:\n{self.log()[-3000:]}")

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then the exit code (SIGKILL after ``timeout_s``: code -9)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


@contextlib.asynccontextmanager
async def running(bus: NodeBus, timeout_s: float = 15.0) -> AsyncIterator[NodeBus]:
    """Run ``bus`` until the block ends (then close it and make sure its task is gone)."""
    task = asyncio.create_task(bus.run())
    try:
        await asyncio.wait_for(bus.wait_connected(), timeout_s)
        yield bus
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bus.close(drain_timeout_s=1.0), timeout_s)
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def until(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    """Wait (polling) until ``condition()``; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


async def telemetry_of(port: int, node: str, *, network: str = "t",
                       timeout_s: float = 15.0) -> dict[str, Any]:
    """The next telemetry record of ``node`` (retained: at once if it published one), unchecked
    (no identity keys)."""
    import aiomqtt

    from qnode.daemon.bus.envelope import decode
    from qnode.daemon.bus.topics import parse_topic

    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.subscribe(f"qnet/v1/{network}/{node}/telemetry")
        async with asyncio.timeout(timeout_s):
            async for m in c.messages:
                return dict(decode(bytes(m.payload), parse_topic(str(m.topic))).body)
    raise AssertionError(f"no telemetry from {node}")
