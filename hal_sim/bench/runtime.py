"""A running bench: every instrument of a bench file served, every link simulated.

:class:`Bench` builds the links' simulators (:class:`~qnode.hal_sim.bench.links.LinkRuntime`),
the instruments (:mod:`qnode.hal_sim.bench.building`) and their coupling to the links'
physics (:mod:`qnode.hal_sim.bench.coupling`), serves each twin on a pty or a loopback TCP port
(:mod:`qnode.hal_sim.twins.serve`) and, with a truth file, writes the links' ground truth
(:class:`~qnode.hal_sim.bench.truth.TruthWriter`). :func:`format_table` and :func:`format_json`
print where each instrument is.
"""
from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import Any

from ..twins.pair_registry import PairRegistry
from ..twins.serve import PtyServer, TcpServer
from ..twins.tagger import NodeFeed
from .building import build_device, build_service
from .coupling import couple, couple_compensator
from .kinds import KINDS
from .links import LinkRuntime
from .parsing import parse
from .spec import BenchConfigError, BenchSpec, KLinkSpec, config_error
from .truth import TruthWriter


class Bench:
    """Running simulated instruments; use as a context manager. ``servers[name]`` has the
    server (its ``faults`` inject faults) or the self-serving service, ``devices[name]`` the
    simulated device, ``links[name]`` each link's :class:`LinkRuntime`. ``truth_path``: write
    the links' truth there (see :mod:`qnode.hal_sim.bench`)."""

    def __init__(self, spec: BenchSpec, path: str = "<bench>", *,
                 truth_path: str | Path | None = None, truth_interval_s: float = 1.0):
        self.spec = spec
        self.path = path
        self.links = {link.name: LinkRuntime(link) for link in spec.links}
        self._registry: PairRegistry | None = None
        self.devices: dict[str, Any] = {}
        self.servers: dict[str, Any] = {}
        self._started_at = time.time()
        for i, inst in enumerate(spec.instruments):
            kind = KINDS[inst.kind]
            if kind.style == "service":
                service = build_service(self, inst, path, i)
                self.devices[inst.name] = getattr(service, "device", service)
                self.servers[inst.name] = service
                continue
            device = build_device(inst, path, i, self)
            self.devices[inst.name] = device
            if (kind.couples == "waveplate" and "link" in inst.options
                    and inst.options.get("mount", "analyzer") != "analyzer"):
                couple_compensator(self, f"instrument[{i}].options", device, inst.options)
            elif kind.couples is not None and "link" in inst.options:
                couple(self, f"instrument[{i}].options", kind.couples, device, inst.options)
            if inst.serve == "pty":
                self.servers[inst.name] = PtyServer(device, inst.name)
            else:
                self.servers[inst.name] = TcpServer(device, inst.name, port=inst.port)
        self.truth_writer = (None if truth_path is None else
                             TruthWriter(truth_path, self.truth, truth_interval_s))

    def pair_registry(self) -> PairRegistry:
        """The bench's one :class:`~qnode.hal_sim.twins.pair_registry.PairRegistry`, made on first
        use and shared by every qdevice, so a repeater's memory can act on pairs of two links at
        once (seeded with the bench name's CRC, for reproducible measurement sampling)."""
        if self._registry is None:
            self._registry = PairRegistry(seed=zlib.crc32(self.spec.name.encode()))
        return self._registry

    def link_runtime(self, key: str, link: object) -> LinkRuntime:
        """The link named ``link`` (``None``: the bench's only link); errors name ``key``."""
        if link is None:
            if len(self.links) == 1:
                return next(iter(self.links.values()))
            if not self.links:
                raise config_error(self.path, f"{key}.link",
                                   "needs a [[link]] (the photons); the file has none")
            raise config_error(self.path, f"{key}.link",
                               f"name one of the links {sorted(self.links)}")
        if link not in self.links:
            raise config_error(self.path, f"{key}.link",
                               f"{link!r} is not a link of this bench; it has {sorted(self.links)}")
        return self.links[str(link)]

    def feed(self, instrument_key: str, link: str | None, node: str | None) -> NodeFeed:
        """A :class:`~qnode.hal_sim.twins.tagger.NodeFeed` of ``node`` of ``link`` for the tagger
        ``instrument_key`` (errors name ``instrument_key.options.link`` / ``.node``); a node is
        streamed by at most one tagger."""
        key = f"{instrument_key}.options"
        rt = self.link_runtime(key, link)
        nodes = rt.spec.streaming_nodes
        if node is None:
            if isinstance(rt.spec, KLinkSpec):
                node = rt.spec.link.station
            else:
                raise config_error(self.path, f"{key}.node",
                                   f"name the node it streams, one of {nodes}")
        if node not in nodes:
            raise config_error(self.path, f"{key}.node",
                               f"{node!r} is not a node of link {rt.spec.name!r} that streams "
                               f"tags; those are {list(nodes)}")
        if node in rt.streamed:
            raise config_error(self.path, f"{key}.node",
                               f"{node!r} of link {rt.spec.name!r} is already streamed by "
                               f"{rt.streamed[node]}")
        rt.streamed[node] = instrument_key
        return rt.fanout.feed(node)

    def truth(self) -> dict[str, Any]:
        """Every link's truth now (the truth file's content)."""
        return {"v": 1, "bench": self.spec.name, "t": time.time(),
                "uptime_s": time.time() - self._started_at,
                "links": {rt.spec.link_id: {"name": name, **rt.truth()}
                          for name, rt in self.links.items()}}

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> Bench:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise BenchConfigError(f"{p}: cannot read: {exc}") from exc
        return cls(parse(text, str(p)), str(p), **kwargs)

    def addresses(self) -> dict[str, str]:
        """What a node config names for each instrument (pty path or socket URL); a service
        with several ports gives one entry per port, ``name.label``."""
        return {row["name"]: row["address"] for row in self.describe()}

    def describe(self) -> list[dict[str, str]]:
        rows = []
        for i in self.spec.instruments:
            server = self.servers[i.name]
            if KINDS[i.kind].style == "service":
                rows += [{"name": f"{i.name}.{label}", "kind": i.kind, "serve": i.serve,
                          "address": address} for label, address in server.addresses().items()]
            else:
                rows.append({"name": i.name, "kind": i.kind, "serve": i.serve,
                             "address": server.address})
        return rows

    def start(self) -> Bench:
        for server in self.servers.values():
            server.start()
        if self.truth_writer is not None:
            self.truth_writer.start()
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        if self.truth_writer is not None:
            self.truth_writer.stop()

    def __enter__(self) -> Bench:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def format_table(rows: list[dict[str, str]]) -> str:
    width = max(len(r["name"]) for r in rows)
    kind_width = max(len(r["kind"]) for r in rows)
    return "\n".join(f"{r['name']:<{width}}  {r['kind']:<{kind_width}}  {r['address']}"
                     for r in rows)


def format_json(rows: list[dict[str, str]]) -> str:
    return json.dumps(rows, indent=2)
