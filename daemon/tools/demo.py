"""``qnode demo``: a whole simulated network on this machine, watched live, then a report.

What runs (every part a separate process or a real socket, as on a lab network):

* an MQTT broker: the embedded ``amqtt`` broker on a free loopback port (or ``--broker``);
* ``python -m qnode.hal_sim bench`` serving the simulated instruments of
  ``hal_sim/benches/network.toml`` on ptys and loopback sockets, with its ground truth in a file;
* one ``qnode run`` daemon per node, each with a generated config that names its instruments by
  the addresses the bench printed — exactly what a lab config names:

  - the K-type chain alice – herald1 – repeater – herald2 – bob (memories and two midpoint
    stations heralding Ψ± over MQTT);
  - the M-type link: a source (pump and oven kept at their working point) and two analyzers
    whose streams are aligned and counted across nodes.

The demo subscribes to every node's telemetry, shows a live view (a table on a terminal, a
progress line otherwise), records the telemetry, and at the end stops everything with SIGTERM and
writes the report (plots and ``summary.json``, with the simulator's truth beside the estimates).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from qnode.daemon.bus.identity import keygen
from qnode.daemon.bus.keys import write_key_file
from qnode.daemon.kme.pki import DemoPki, write_demo_pki
from qnode.daemon.tools.topology import (
    DEMO_CHAIN,
    Chain,
    Mesh,
    Network,
    Topology,
    links_of,
    load_topology,
    write_chain_bench,
)

log = logging.getLogger("qnode.demo")

NETWORK = "demo"
BENCH_FILE = "network.toml"


@dataclass
class NodePlan:
    """One node of the demo network: its config text and where it is written."""

    name: str
    roles: tuple[str, ...]
    text: str
    path: Path | None = None


@dataclass
class NetworkPlan:
    nodes: dict[str, NodePlan] = field(default_factory=dict)
    kmes: dict[str, str] = field(default_factory=dict)   # node -> its KME's https URL

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for node in self.nodes.values():
            node.path = directory / f"{node.name}.toml"
            node.path.write_text(node.text)


#: the M link's analyzer settings (HWP angles, deg, of analyzer-b's two arms; analyzer-a
#: measures Z and X, HWP 0° and 22.5°): ``key`` Z and X as well (BBM92: QBERs, key fraction);
#: ``bell`` HWP ±11.25° (Bloch angles ±π/4), where Φ+ gives CHSH S = 2√2·V
M_LINK_SETTINGS: dict[str, tuple[float, float]] = {"key": (0.0, 22.5), "bell": (11.25, -11.25)}


def bench_config_path() -> Path:
    """The demo network's bench file, shipped with the package."""
    return Path(str(resources.files("qnode.hal_sim") / "benches" / BENCH_FILE))


def write_bench_variant(directory: Path, m_link: str) -> Path:
    """The demo's bench file with analyzer-b's arms at :data:`M_LINK_SETTINGS` ``[m_link]``,
    written into ``directory``."""
    text = bench_config_path().read_text()
    head, sep, tail = text.partition('name = "analyzer-b"')
    z, x = M_LINK_SETTINGS[m_link]
    arms = ('analyzers = [{name = "z", channels = [1, 2], angle_deg = 0.0},\n'
            '             {name = "x", channels = [3, 4], angle_deg = 22.5}]')
    if not sep or arms not in tail:
        raise RuntimeError(f"{bench_config_path()}: analyzer-b's arms are not where expected")
    # the names stay: the ELL14's options name the arm it turns ("x")
    tail = tail.replace(arms, f'analyzers = [{{name = "z", channels = [1, 2], angle_deg = {z}}},'
                              f'\n             {{name = "x", channels = [3, 4], '
                              f'angle_deg = {x}}}]', 1)
    path = directory / f"network-{m_link}.toml"
    path.write_text(head + sep + tail)
    return path


def _toml_str(s: str | Path) -> str:
    return json.dumps(str(s))


def plan_network(addresses: dict[str, str], broker_url: str, workdir: Path, *,
                 telemetry_interval_s: float = 1.0, network: str = NETWORK,
                 memory_fidelity: float = 0.9, max_pair_age_s: float = 2.0,
                 capacity: int = 20_000, quantum_memory: bool = True,
                 test_fraction: float = 0.1, min_tests: int = 300, qubits_per_link: int = 2,
                 purification: str = "dejmps",
                 purification_schedule: str = "pumping", memory_t1_s: float = 5.0,
                 memory_t2_s: float = 2.0, memory_readout_error: float = 0.005,
                 paths: bool = True, delivered_hold_s: float = 0.1, m_link: str = "key",
                 keys: bool = False, key_block_bits: int = 1 << 18,
                 pump_power_mw: float = 40.0, chain: Network = DEMO_CHAIN,
                 with_m_link: bool | None = None,
                 extra: dict[str, str] | None = None,
                 brokers: Mapping[str, str] | None = None,
                 route_min_fidelity: float | None = None,
                 standing_path: bool = True) -> NetworkPlan:
    """Node configs for the demo network given the bench's ``addresses`` (``bench
    --json`` rows by name). Link keys are fresh random files under ``workdir/keys``.
    ``max_pair_age_s``/``capacity``: the memories' cut-off and size (0: none).
    ``quantum_memory``: the memory nodes hold their pairs in the bench's QDevices (with the
    devices' calibrated T1, T2, CNOT fidelity and read-out error), measure ``test_fraction``
    of them as test pairs, and the repeater swaps for the path alice–bob; without it the
    memories keep every pair in the link layer alone (their QDevices are only supervised).
    ``qubits_per_link``, ``purification``, ``purification_schedule``: ``[memory]``'s;
    ``memory_t1_s``/``memory_t2_s``/``memory_readout_error``: the QDevices' calibration (a
    bench variant's). ``paths``: the repeater swaps for the path alice–bob (else its links
    serve their own pairs); ``delivered_hold_s``: ``[memory]``'s; ``m_link``: the M link's
    settings (a key of :data:`M_LINK_SETTINGS`; the bench must match, see
    :func:`write_bench_variant`); ``keys``: the M link makes keys (``[analyzer.keys]``, blocks
    of ``key_block_bits``) into each analyzer's key store, served by its KME (``[kme]``, the
    demo PKI of :func:`demo_key_pki` under ``workdir/pki``); ``pump_power_mw``: the source's
    set point (2500 pairs/s per mW); ``chain``: the memory nodes, alice – repeater – bob or
    a longer :class:`~qnode.daemon.tools.topology.Chain`, or a
    :class:`~qnode.daemon.tools.topology.Mesh` (no ``[[paths]]``: its ends keep a routed path
    to each other, ``[routing] paths_to``; the bench must have its links, stations and
    QDevices: :func:`~qnode.daemon.tools.topology.write_chain_bench`);
    ``with_m_link``: plan the M link's source and analyzers (the demo's bench has them, a
    chain's bench has not; default: with the demo's chain only); ``extra``: more config text
    per node name (e.g. its ``[applications.<name>]`` tables); ``brokers``: another broker URL
    for some nodes (a site's broker: :mod:`~qnode.daemon.tools.bridges`), ``broker_url`` for
    the rest; ``route_min_fidelity``: a mesh's ends' ``[routing] min_fidelity`` (the fidelity
    their routed path must predict; default the config's); ``standing_path``: a mesh's ends
    keep a routed path to each other from the start (``paths_to``; else the first request
    routes it)."""
    if m_link not in M_LINK_SETTINGS:
        raise ValueError(f"m_link: expected one of {', '.join(M_LINK_SETTINGS)}, got {m_link!r}")
    link_keys = workdir / "keys"
    link_keys.mkdir(mode=0o700, parents=True, exist_ok=True)

    def key(link: str) -> Path:
        p = link_keys / f"{link}.key"
        if not p.exists():
            write_key_file(p, secrets.token_hex(32))  # 0600 from creation
        return p

    identities = workdir / "identity"

    def head(name: str, roles: list[str]) -> str:
        if not (identities / f"{name}.key").exists():
            keygen(name, identities)  # the node's identity key; every node trusts the folder
        return (f"[node]\nid = {_toml_str(name)}\nnetwork = {_toml_str(network)}\n"
                f"roles = {json.dumps(roles)}\nstate_dir = {_toml_str(workdir / 'state' / name)}"
                f"\nidentity_key_file = {_toml_str(identities / f'{name}.key')}\n"
                f"trust_dir = {_toml_str(identities)}"
                f"\n\n[broker]\nurl = {_toml_str((brokers or {}).get(name, broker_url))}\n"
                f"keepalive_s = 10\n\n"
                f"[metrics]\nprometheus_port = 0\ntelemetry_interval_s = {telemetry_interval_s}"
                f"\n\n")

    def tagger(inst: str, inputs: list[int]) -> str:
        return (f"[instruments.tagger]\nkind = \"id900\"\n"
                f"address = {_toml_str(addresses[f'{inst}.scpi'])}\ntimeout_s = 2.0\n"
                f"[instruments.tagger.options]\ndlt = {_toml_str(addresses[f'{inst}.dlt'])}\n"
                f"inputs = {json.dumps(inputs)}\nchunk_interval_s = 0.1\n\n")

    def k_link(link: str, peer: str, station: str) -> str:
        return (f"[[links]]\nid = {_toml_str(link)}\npeer = {_toml_str(peer)}\ntype = \"K\"\n"
                f"herald = {_toml_str(station)}\nhmac_key_file = {_toml_str(key(link))}\n\n")

    memory = (f"[memory]\ncapacity = {capacity}\nmax_pair_age_s = {max_pair_age_s}\n"
              f"fidelity = {memory_fidelity}\n")
    if quantum_memory:   # the bench's qdevices: T1 5 s, T2 2 s, CNOT 0.999, read-out 0.005
        memory += (f"qdevice = \"qmem\"\nqubits_per_link = {qubits_per_link}\n"
                   f"test_fraction = {test_fraction}\nmin_tests = {min_tests}\n"
                   f"t1_s = {memory_t1_s}\nt2_s = {memory_t2_s}\n"
                   f"readout_error = {memory_readout_error}\n"
                   f"gate_depolarising_2q = 0.999\n"
                   f"gate_depolarising_1q = 0.999\npurification = {_toml_str(purification)}\n"
                   f"purification_schedule = {_toml_str(purification_schedule)}\n"
                   f"delivered_hold_s = {delivered_hold_s}\n")
    if quantum_memory and paths and isinstance(chain, Chain):
        memory += (f"\n[[paths]]\nid = \"alice-bob\"\nnodes = {json.dumps(list(chain.nodes))}\n"
                   f"links = {json.dumps(list(chain.links))}\n")
    memory += "\n"
    plan = NetworkPlan()

    def add(name: str, roles: list[str], text: str) -> None:
        more = (extra or {}).get(name, "")
        plan.nodes[name] = NodePlan(name, tuple(roles), head(name, roles) + text + more)

    for station, link, ends in zip(chain.stations, chain.links, chain.edges, strict=True):
        add(station, ["herald"], tagger(f"{station}-tagger", [1, 2, 3, 4])
            + f"[herald]\nlink = {_toml_str(link)}\nends = {json.dumps(list(ends))}\n"
              f"channels = [1, 2, 3, 4]\nwindow_ps = 2000\n"
              f"hmac_key_file = {_toml_str(key(link))}\n")

    def qdevice(name: str, bench_name: str) -> str:
        return (f"[instruments.{name}]\nkind = \"qdevice\"\n"
                f"address = {_toml_str(addresses[bench_name])}\n\n")

    def routed(node: str) -> str:   # a mesh's ends keep a routed path to each other
        if not (quantum_memory and isinstance(chain, Mesh) and node in chain.ends):
            return ""
        other = chain.ends[1] if node == chain.ends[0] else chain.ends[0]
        need = ("" if route_min_fidelity is None
                else f"min_fidelity = {float(route_min_fidelity)!r}\n")
        standing = f"paths_to = [{_toml_str(other)}]\n" if standing_path else ""
        return f"[routing]\n{standing}{need}\n"

    def channels(node: str) -> str:   # the demo bench's quantum channels from alice's memory
        ends = {"alice": ("repeater", "bob"), "repeater": ("repeater",), "bob": ("bob",)}
        if not quantum_memory or chain != DEMO_CHAIN:
            return ""
        return "".join(f"[[quantum_channels]]\nid = \"qc-alice-{to}\"\nfrom = \"alice\"\n"
                       f"to = \"{to}\"\n\n" for to in ends[node])

    for node in chain.nodes:
        links = "".join(k_link(link, peer, station)
                        for link, peer, station in links_of(chain, node))
        add(node, ["repeater" if node in chain.repeaters else "memory"],
            memory + qdevice("qmem", f"{node}-qdevice") + links + channels(node)
            + routed(node))
    if not (chain == DEMO_CHAIN if with_m_link is None else with_m_link):
        return plan
    add("source", ["source"],
        f"[instruments.pump]\nkind = \"ibeam\"\naddress = {_toml_str(addresses['pump'])}\n\n"
        f"[instruments.oven]\nkind = \"tc200\"\naddress = {_toml_str(addresses['oven'])}\n\n"
        f"[source]\npump_power_mw = {pump_power_mw}\noven_temperature_c = 35.0\n")
    for name, peer in (("analyzer-a", "analyzer-b"), ("analyzer-b", "analyzer-a")):
        arms = M_LINK_SETTINGS["key" if name == "analyzer-a" else m_link]
        add(name, ["analyzer"], tagger(f"{name}-tagger", [1, 2, 3, 4])
            + f"[instruments.hwp]\nkind = \"elliptec\"\n"
              f"address = {_toml_str(addresses[f'{name}-hwp'])}\n\n"
              f"[analyzer]\nchannels = [1, 2, 3, 4]\nangles_deg = {json.dumps(list(arms))}\n"
              f"window_ps = 1000\n"
              f"align_s = 1.0\ncapacity = {capacity}\nmax_pair_age_s = {max_pair_age_s}\n\n"
            + (key_tables(name, workdir, key_block_bits, plan) if keys else "")
            + f"[[links]]\nid = \"m-ab\"\npeer = {_toml_str(peer)}\ntype = \"M\"\n"
              f"hmac_key_file = {_toml_str(key('m-ab'))}\n")
    return plan


#: the demo's applications of keys: one SAE at each analyzer (ETSI GS QKD 014)
KEY_SAES = {"sae-a": "analyzer-a", "sae-b": "analyzer-b"}


def demo_key_pki(workdir: Path) -> DemoPki:
    """The demo's KME certificates and the :data:`KEY_SAES`' client certificates, written into
    ``workdir/pki`` once (the same files for every node of the run)."""
    folder = workdir / "pki"
    if (folder / "ca.crt").exists():
        return DemoPki(ca=folder / "ca.crt", server_cert=folder / "kme.crt",
                       server_key=folder / "kme.key",
                       clients={s: (folder / f"{s}.crt", folder / f"{s}.key") for s in KEY_SAES})
    return write_demo_pki(folder, saes=list(KEY_SAES))


def key_tables(node: str, workdir: Path, block_bits: int, plan: NetworkPlan) -> str:
    """``[analyzer.keys]`` and ``[kme]`` of analyzer ``node`` in the demo; its KME's URL into
    ``plan.kmes`` (a free port now, for the connection file)."""
    pki = demo_key_pki(workdir)
    port = free_port()
    plan.kmes[node] = f"https://127.0.0.1:{port}"
    store = workdir / "state" / node / "keys.sqlite"
    store.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    saes = ", ".join(f"{{id = {_toml_str(s)}, node = {_toml_str(n)}}}"
                     for s, n in KEY_SAES.items())
    return (f"[analyzer.keys]\nblock_bits = {block_bits}\n\n"
            f"[kme]\nlisten = \"127.0.0.1:{port}\"\ncert = {_toml_str(pki.server_cert)}\n"
            f"key = {_toml_str(pki.server_key)}\nca = {_toml_str(pki.ca)}\n"
            f"store = {_toml_str(store)}\nsaes = [{saes}]\n\n")


# ---------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """amqtt's broker on a loopback port (MQTT 3.1.1, anonymous, in this process's loop)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> EmbeddedBroker:
        try:
            from amqtt.broker import Broker  # type: ignore[import-untyped]  # no type hints
        except ImportError as exc:
            raise RuntimeError("the embedded broker needs amqtt: pip install 'qnode[demo]' "
                               "(or pass --broker mqtt://host:port)") from exc
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._broker = Broker({
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}",
                                      "max_connections": 64}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                        {"allow_anonymous": True}}})
        await self._broker.start()
        return self

    async def stop(self) -> None:
        if self._broker is not None:
            with contextlib.suppress(Exception):
                await self._broker.shutdown()


class BenchProcess:
    """``python -m qnode.hal_sim bench`` in a child process; its addresses from ``--json``."""

    def __init__(self, config: Path, truth: Path, log_file: Path):
        self.config, self.truth, self.log_file = config, truth, log_file
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 60.0) -> dict[str, str]:
        self._log = open(self.log_file, "w")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qnode.hal_sim", "bench", "--config", str(self.config),
             "--json", "--truth", str(self.truth)],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            text += line
            with contextlib.suppress(json.JSONDecodeError):
                rows = json.loads(text)
                return {row["name"]: row["address"] for row in rows}
        self.stop()
        raise RuntimeError(f"the simulated bench did not start; see {self.log_file}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()


class DaemonProcess:
    """``qnode run --config`` for one node, its log in a file."""

    def __init__(self, node: NodePlan, log_dir: Path):
        self.node = node
        self.log_path = log_dir / f"{node.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.node.path is not None
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qnode.daemon.cli", "run", "--config", str(self.node.path)],
            stdout=self._log, stderr=subprocess.STDOUT)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int | None:
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code


# ---------------------------------------------------------------------------- the run

async def _watch(broker_url: str, network: str, duration_s: float, recorder: Any,
                 view: Any, procs: list[DaemonProcess], *, stop: asyncio.Event | None = None,
                 on_tick: Callable[[dict[str, Mapping[str, Any]]], None] | None = None,
                 ) -> dict[str, Mapping[str, Any]]:
    """Collect telemetry for ``duration_s`` (s; or until ``stop`` is set); returns the latest
    record per node. ``recorder``: None records nothing; ``on_tick(latest)`` is called once a
    second."""
    import aiomqtt

    from qnode.daemon.bus.envelope import MessageRejected, decode
    from qnode.daemon.bus.topics import parse_topic

    parts = urlsplit(broker_url)
    latest: dict[str, Mapping[str, Any]] = {}
    async with aiomqtt.Client(parts.hostname or "127.0.0.1", parts.port or 1883,
                              identifier=f"qnode-demo-{os.getpid()}") as client:
        await client.subscribe(f"qnet/v1/{network}/+/telemetry", qos=0)
        end = time.monotonic() + duration_s

        async def receive() -> None:
            async for m in client.messages:
                try:
                    topic = parse_topic(str(m.topic))
                    msg = decode(bytes(m.payload), topic)
                except (ValueError, MessageRejected):
                    continue
                latest[topic.node] = msg.body
                if recorder is not None:
                    recorder.add(msg.body)

        task = asyncio.create_task(receive())
        try:
            while time.monotonic() < end and not (stop is not None and stop.is_set()):
                if stop is None:
                    await asyncio.sleep(1.0)
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await stop.wait()
                    if stop.is_set():
                        break
                if math.isfinite(end):
                    view.update(latest, remaining_s=end - time.monotonic())
                else:
                    view.update(latest)
                dead = [p.node.name for p in procs if p.proc and p.proc.poll() is not None]
                if dead:
                    raise RuntimeError(f"daemon(s) exited early: {dead}; see their logs")
                if on_tick is not None:
                    on_tick(latest)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return latest


STATIONS = ("herald1", "herald2", "analyzer-a")  # nodes that herald: stopped first


class DemoNetwork:
    """The bench (``bench``: a variant of the demo's bench file; by default the shipped one, or
    for ``m_link`` other than ``key`` its :func:`write_bench_variant`) and one daemon per node
    (or per node of ``nodes``), under ``workdir`` (configs, keys, state, truth); logs in
    ``log_dir``. ``plan_options`` go to :func:`plan_network`."""

    def __init__(self, workdir: Path, broker_url: str, log_dir: Path, *,
                 nodes: tuple[str, ...] | None = None, bench: Path | None = None,
                 **plan_options: Any):
        self.workdir, self.broker_url, self.log_dir = workdir, broker_url, log_dir
        self.nodes = nodes
        self.plan_options = plan_options
        self.bench = BenchProcess(bench or bench_config_path(), workdir / "truth.json",
                                  log_dir / "hal_sim.log")
        self.daemons: dict[str, DaemonProcess] = {}
        self.exit_codes: dict[str, int | None] = {}
        self.addresses: dict[str, str] = {}
        self.kmes: dict[str, str] = {}

    def start(self) -> None:
        """:meth:`prepare`, then :meth:`launch`."""
        self.prepare()
        self.launch()

    def prepare(self) -> list[Path]:
        """Start the bench and write the node configs (under ``workdir/configs``); returns
        their paths (e.g. to plan a site's broker bridge from them before :meth:`launch`)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        m_link = self.plan_options.get("m_link", "key")
        if m_link != "key" and self.bench.config == bench_config_path():
            self.bench.config = write_bench_variant(self.workdir, m_link)
        addresses = self.addresses = self.bench.start()
        plan = plan_network(addresses, self.broker_url, self.workdir, **self.plan_options)
        plan.write(self.workdir / "configs")
        self.kmes = plan.kmes
        self.daemons = {n.name: DaemonProcess(n, self.log_dir) for n in plan.nodes.values()
                        if self.nodes is None or n.name in self.nodes}
        return [d.node.path for d in self.daemons.values() if d.node.path is not None]

    def launch(self) -> None:
        """Start one daemon per planned node (after :meth:`prepare`)."""
        for d in self.daemons.values():
            d.start()

    def state_dir(self, node: str) -> Path:
        return self.workdir / "state" / node

    def truth(self) -> dict[str, Any] | None:
        path = self.workdir / "truth.json"
        return json.loads(path.read_text()) if path.exists() else None

    def stop(self, names: list[str] | tuple[str, ...], timeout_s: float = 15.0) -> None:
        """SIGTERM ``names`` together and wait for them; exit codes in ``exit_codes``."""
        procs = [self.daemons[n] for n in names if n in self.daemons
                 and n not in self.exit_codes]
        for d in procs:
            d.terminate()
        for d in procs:
            self.exit_codes[d.node.name] = d.wait(timeout_s)

    def close(self, settle_s: float = 1.0) -> None:
        """Stop the nodes that herald first, let the ends apply what is in flight, then the
        rest and the bench."""
        self.stop((*STATIONS, *(n for n, d in self.daemons.items() if "herald" in d.node.roles)))
        time.sleep(settle_s)
        self.stop(tuple(self.daemons))
        self.bench.stop()


#: plan_network options of the demo's M link: it makes keys (the analyzers' KMEs serve them),
#: with the source at twice the working point so that a block of 2¹⁷ sifted bits comes every
#: few seconds
DEMO_KEYS: dict[str, Any] = {"keys": True, "key_block_bits": 1 << 17, "pump_power_mw": 80.0}


async def run_demo(duration_s: float, report_dir: Path, broker_url: str | None = None,
                   keep: bool = False, topology: Topology | None = None) -> dict[str, Any]:
    """The timed demo: the demo's network (or ``topology``'s chain) for ``duration_s`` with a
    live view, then the report in ``report_dir``; returns its summary."""
    from qnode.daemon.tools.liveview import LiveView
    from qnode.daemon.tools.report import Recorder, write_report

    report_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="qnode-demo-"))
    broker = None
    if broker_url is None:
        broker = await EmbeddedBroker().start()
        broker_url = broker.url
    if topology is None:
        net = DemoNetwork(work, broker_url, report_dir / "logs", **DEMO_KEYS)
    else:
        net = DemoNetwork(work, broker_url, report_dir / "logs", chain=topology.network,
                          bench=write_chain_bench(work, topology.network, **topology.bench),
                          with_m_link=False)
    latest: dict[str, Mapping[str, Any]] = {}
    try:
        print(f"qnode demo: broker {broker_url}; starting the simulated instruments ...",
              flush=True)
        await asyncio.to_thread(net.start)
        print(f"qnode demo: {len(net.daemons)} daemons started ({', '.join(net.daemons)}); "
              f"running {duration_s:.0f} s", flush=True)
        recorder = Recorder(report_dir)
        view = LiveView()
        try:
            latest = await _watch(broker_url, NETWORK, duration_s, recorder, view,
                                  list(net.daemons.values()))
        finally:
            view.close()
            recorder.close()
    finally:
        await asyncio.to_thread(net.close)
        if broker is not None:
            await broker.stop()
    summary = write_report(report_dir, truth=net.truth(),
                           summary_extra={"exit_codes": net.exit_codes,
                                          "run_duration_s": duration_s,
                                          "nodes_heard": sorted(latest)})
    if keep:
        shutil.copytree(work / "configs", report_dir / "configs", dirs_exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return summary


# ---------------------------------------------------------------------------- --serve

#: the applications ``qnode demo --serve`` configures: name -> (its node, the purposes it may
#: listen on). alice and bob share the path alice-bob; the repeater's links feed the path.
SERVE_APPLICATIONS: dict[str, tuple[str, tuple[int, ...]]] = {
    "alice-app": ("alice", (9,)),
    "alice-other": ("alice", ()),
    "bob-app": ("bob", (7,)),
}
#: plan_network options of the served network: an application's qubit is its for 1 s (enough
#: for a teleportation's two round trips and a DATA between the applications)
SERVE_PLAN: dict[str, Any] = {"delivered_hold_s": 1.0}
#: how long --serve waits for every node to be ready and the path's pairs to flow before it
#: writes the connection file anyway (s)
SERVE_READY_TIMEOUT_S = 180.0
#: the connection file's format (qnode.client.connection reads it; the daemon does not import
#: the client, so the few lines that write it are here)
CONNECTION_FORMAT = 1


def applications_config(apps: Mapping[str, tuple[str, tuple[int, ...]]]) -> dict[str, str]:
    """``[applications.<name>]`` tables per node (``plan_network``'s ``extra``) for ``apps``
    (name -> (node, purposes))."""
    out: dict[str, str] = {}
    for name, (node, purposes) in apps.items():
        out[node] = (out.get(node, "") + f"\n[applications.{name}]\nweight = 1.0\n"
                     f"purposes = {json.dumps(list(purposes))}\n")
    return out


def kme_record(workdir: Path, kmes: Mapping[str, str]) -> dict[str, Any] | None:
    """The connection file's ``kme`` block: each analyzer's KME URL (ETSI GS QKD 014 under
    ``/api/v1/keys/``), the CA that signs the KMEs' certificates, and the demo SAEs with their
    node and client certificate (None without KMEs)."""
    if not kmes:
        return None
    pki = demo_key_pki(workdir)
    return {"ca_file": str(pki.ca), "nodes": dict(sorted(kmes.items())),
            "saes": {sae: {"node": node, "client_cert": str(pki.clients[sae][0]),
                           "client_key": str(pki.clients[sae][1])}
                     for sae, node in sorted(KEY_SAES.items())}}


def connection_record(broker_url: str, network: str, nodes: list[str],
                      apps: Mapping[str, tuple[str, tuple[int, ...]]],
                      truth: str | None = None,
                      truth_file: Path | None = None,
                      kme: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The connection file's content (docs/integrators/client.md): the broker, the network,
    its nodes and its applications, whose broker user name is their name (the embedded
    broker takes anyone; another broker needs the credentials filled in); ``truth``: the
    simulator's registry oracle (``simulator.truth``) and ``truth_file`` the bench's truth
    file (``simulator.truth_file``), for examples that compare with them; ``kme``: the key
    delivery (:func:`kme_record`)."""
    return {"simulator": {"truth": truth,
                          "truth_file": None if truth_file is None else str(truth_file)},
            "qnode_connection": CONNECTION_FORMAT,
            "broker": {"url": broker_url, "ca_file": None},
            "network": network, "nodes": sorted(nodes),
            "applications": {name: {"node": node, "purposes": list(purposes),
                                    "username": name, "password": None,
                                    "client_cert": None, "client_key": None}
                             for name, (node, purposes) in sorted(apps.items())},
            **({"kme": dict(kme)} if kme else {}),
            "description": "qnode demo --serve: a simulated network; alice and bob share the "
                           "path alice-bob (over the repeater)",
            "pid": os.getpid(), "created": time.time()}


def _write_private(path: Path, record: Mapping[str, Any]) -> None:
    """Write JSON ``record`` to ``path`` atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _owner_pid(path: Path) -> int | None:
    """The pid a connection file names, or None (no file, not one, no pid)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        pid = json.loads(path.read_text()).get("pid")
        return pid if isinstance(pid, int) else None
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _serving(latest: Mapping[str, Mapping[str, Any]], nodes: list[str]) -> bool:
    """Every node ready (or degraded), the memories' link estimates from test pairs (not the
    configured prior), and the path's pairs at both of its ends."""
    if any(latest.get(n, {}).get("state") not in ("ready", "degraded") for n in nodes):
        return False
    for n in ("alice", "repeater", "bob"):
        links = latest.get(n, {}).get("links", {}) if n in nodes else {}
        if any(t.get("fidelity_source") != "tests" for t in links.values()):
            return False
    return all(latest.get(end, {}).get("paths", {}).get("alice-bob", {}).get(
        "pairs_received_total", 0) > 0 for end in ("alice", "bob") if end in nodes)


async def serve_demo(connection: Path, log_dir: Path, broker_url: str | None = None,
                     duration_s: float | None = None,
                     ready_timeout_s: float = SERVE_READY_TIMEOUT_S,
                     m_link: str = "key") -> dict[str, int | None]:
    """``qnode demo --serve``: the demo network with :data:`SERVE_APPLICATIONS` until SIGINT or
    SIGTERM (or ``duration_s``, s); the connection file is written to ``connection`` once the
    network serves (or after ``ready_timeout_s``, s) and removed at the end. ``m_link``: the M
    link's settings (:data:`M_LINK_SETTINGS`). Returns the daemons' exit codes."""
    pid = _owner_pid(connection)
    if pid is not None and pid != os.getpid() and _alive(pid):
        raise RuntimeError(f"{connection} belongs to a running qnode demo --serve (pid {pid}): "
                           f"stop it, or pass another --connection")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    work = Path(tempfile.mkdtemp(prefix="qnode-demo-"))
    broker = None
    written = False
    net: DemoNetwork | None = None
    try:
        if broker_url is None:
            broker = await EmbeddedBroker().start()
            broker_url = broker.url
        net = DemoNetwork(work, broker_url, log_dir, m_link=m_link,
                          extra=applications_config(SERVE_APPLICATIONS), **SERVE_PLAN,
                          **(DEMO_KEYS if m_link == "key" else {}))
        print(f"qnode demo --serve: broker {broker_url}; starting the simulated instruments ...",
              flush=True)
        await asyncio.to_thread(net.start)
        nodes = list(net.daemons)
        print(f"qnode demo --serve: {len(nodes)} daemons started ({', '.join(nodes)}); the "
              f"connection file comes once they serve; SIGINT/SIGTERM (Ctrl-C) stops",
              flush=True)
        ready_by = time.monotonic() + ready_timeout_s
        from qnode.daemon.tools.liveview import LiveView

        view = LiveView()
        view.note = "starting"

        def publish(latest: dict[str, Mapping[str, Any]]) -> None:
            nonlocal written
            if written:
                return
            serving = _serving(latest, nodes)
            if not serving and time.monotonic() < ready_by:
                return
            assert broker_url is not None
            _write_private(connection, connection_record(
                broker_url, NETWORK, nodes, SERVE_APPLICATIONS,
                net.addresses.get("qdevice-truth") if net is not None else None,
                work / "truth.json", kme_record(work, net.kmes) if net is not None else None))
            written = True
            view.note = f"serving: {connection}"
            note = "" if serving else " (not every node is ready yet: see the live view)"
            print(f"qnode demo --serve: serving{note}; connection file {connection.resolve()}; "
                  f"configs in {work / 'configs'}; logs in {log_dir}", flush=True)

        try:
            await _watch(broker_url, NETWORK, math.inf if duration_s is None else duration_s,
                         None, view, list(net.daemons.values()), stop=stop, on_tick=publish)
        finally:
            view.close()
    finally:
        if written and _owner_pid(connection) == os.getpid():
            connection.unlink(missing_ok=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if net is not None:
            await asyncio.to_thread(net.close)
        if broker is not None:
            await broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("qnode demo --serve: stopped" + ("; connection file removed" if written else ""),
          flush=True)
    return net.exit_codes


def _serve_main(args: argparse.Namespace) -> int:
    if args.keep:
        print("qnode demo: --keep is for the timed demo; with --serve the configs are live (in "
              "the folder it prints) while it runs", file=sys.stderr)
        return 2
    try:
        codes = asyncio.run(serve_demo(Path(args.connection), Path(args.report) / "logs",
                                       args.broker, args.duration, m_link=args.m_link))
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, OSError) as exc:
        print(f"qnode demo: {exc}", file=sys.stderr)
        return 1
    bad = {n: c for n, c in codes.items() if c != 0}
    if bad:
        print(f"qnode demo: daemons exited with errors: {bad}", file=sys.stderr)
        return 1
    return 0


def main(args: argparse.Namespace) -> int:
    from qnode.daemon.logs import setup_logging

    setup_logging("WARNING")
    if getattr(args, "serve", False):
        if getattr(args, "topology", None) is not None:
            print("qnode demo: --topology is for the timed demo (--serve serves the demo's "
                  "network)", file=sys.stderr)
            return 2
        return _serve_main(args)
    if getattr(args, "m_link", "key") != "key":
        print("qnode demo: --m-link is for --serve (the timed demo's report shows the key "
              "settings' figures)", file=sys.stderr)
        return 2
    topology = None
    if getattr(args, "topology", None) is not None:
        try:
            topology = load_topology(args.topology)
        except ValueError as exc:
            print(f"qnode demo: --topology: {exc}", file=sys.stderr)
            return 2
    report = Path(args.report)
    duration = 60.0 if args.duration is None else args.duration
    try:
        summary = asyncio.run(run_demo(duration, report, args.broker, args.keep, topology))
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        print(f"qnode demo: {exc}", file=sys.stderr)
        return 1
    bad = {n: c for n, c in summary.get("exit_codes", {}).items() if c != 0}
    print(f"qnode demo: report in {report.resolve()}")
    if bad:
        print(f"qnode demo: daemons exited with errors: {bad}", file=sys.stderr)
        return 1
    return 0
