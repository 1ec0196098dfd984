"""A simulated bench: simulated instruments served on real ptys and sockets, from a TOML file.

``python -m qnode.hal_sim bench --config bench.toml`` starts every instrument the file lists and
prints each one's address: exactly what a node config names for the real instrument in a lab.
It runs until interrupted (Ctrl-C or SIGTERM).

File format::

    [bench]
    name = "alice-bench"

    [[instrument]]
    name = "oven"           # the name a node config uses
    kind = "tc200"          # see KINDS
    serve = "pty"           # "pty" (a serial port) or "tcp" (a loopback TCP port)
    port = 0                # tcp only: 0 picks a free port
    [instrument.options]    # keyword arguments of the simulated device
    ambient_c = 22.0

    [link]                  # the photon link that simulated time taggers stream (optional)
    pair_rate_hz = 2e5
    visibility = 0.95
    seed = 1
    [[link.node]]           # exactly two
    name = "alice"
    channels = [1, 2]       # the + and - detectors' tagger inputs
    length_km = 1.0         # also: efficiency, dark_count_rate_hz, jitter_ps

Instruments of a "service" kind (time taggers, systems with several ports) serve themselves and
print one address per port (``tagger.scpi``, ``tagger.dlt``).

Every error names the file and the key (``instrument[2].kind``) and what is wrong with it.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .serve import PtyServer, TcpServer, WireDevice


@dataclasses.dataclass(frozen=True)
class Kind:
    """How to build one kind of simulated instrument: ``factory`` is "module:Class" (imported
    when used), ``serves`` the transports its real counterpart uses.

    ``style`` "wire": the factory builds a :class:`WireDevice` that the bench serves on a pty or a
    TCP port. ``style`` "service": ``factory(bench, **options)`` builds an object that serves
    itself, with ``start()``, ``stop()`` and ``addresses() -> {label: address}``."""

    factory: str
    serves: tuple[str, ...]
    description: str
    style: str = "wire"


KINDS: dict[str, Kind] = {}


def register(name: str, factory: str, serves: tuple[str, ...], description: str,
             style: str = "wire") -> None:
    """Make a simulated instrument kind available to bench files."""
    KINDS[name] = Kind(factory, serves, description, style)


class BenchConfigError(ValueError):
    """A bench file is malformed; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class InstrumentSpec:
    name: str
    kind: str
    serve: str
    port: int
    options: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    name: str
    channels: tuple[int, int]
    length_km: float = 0.0
    efficiency: float = 0.8
    dark_count_rate_hz: float = 100.0
    jitter_ps: float = 30.0


@dataclasses.dataclass(frozen=True)
class LinkSpec:
    pair_rate_hz: float
    visibility: float
    seed: int
    nodes: tuple[NodeSpec, NodeSpec]


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    name: str
    instruments: tuple[InstrumentSpec, ...]
    link: LinkSpec | None = None


def _fail(path: str, key: str, problem: str) -> BenchConfigError:
    return BenchConfigError(f"{path}: {key}: {problem}")


def parse(text: str, path: str = "<bench>") -> BenchSpec:
    """Validate a bench file's text; BenchConfigError names the key and the problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = set(raw) - {"bench", "instrument", "link"}
    if unknown:
        raise _fail(path, sorted(unknown)[0],
                    "unknown section (expected [bench], [[instrument]], [link])")
    bench = raw.get("bench", {})
    if not isinstance(bench, dict):
        raise _fail(path, "bench", "must be a table")
    name = bench.get("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        raise _fail(path, "bench.name", "must be a non-empty string")
    items = raw.get("instrument", [])
    if not isinstance(items, list) or not items:
        raise _fail(path, "instrument", "list at least one [[instrument]]")
    specs: list[InstrumentSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        key = f"instrument[{i}]"
        if not isinstance(item, dict):
            raise _fail(path, key, "must be a table")
        extra = set(item) - {"name", "kind", "serve", "port", "options"}
        if extra:
            raise _fail(path, f"{key}.{sorted(extra)[0]}", "unknown key")
        iname = item.get("name")
        if not isinstance(iname, str) or not iname:
            raise _fail(path, f"{key}.name", "must be a non-empty string")
        if iname in seen:
            raise _fail(path, f"{key}.name", f"{iname!r} is used twice")
        seen.add(iname)
        kind = item.get("kind")
        if kind not in KINDS:
            raise _fail(path, f"{key}.kind", f"{kind!r} is not one of {sorted(KINDS)}")
        serve = item.get("serve", KINDS[kind].serves[0])
        if serve not in KINDS[kind].serves:
            raise _fail(path, f"{key}.serve", f"{kind} is served over {list(KINDS[kind].serves)}, "
                                              f"not {serve!r}")
        port = item.get("port", 0)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
            raise _fail(path, f"{key}.port", f"must be an integer port 0-65535, got {port!r}")
        options = item.get("options", {})
        if not isinstance(options, dict):
            raise _fail(path, f"{key}.options", "must be a table")
        specs.append(InstrumentSpec(iname, kind, serve, port, options))
    return BenchSpec(name, tuple(specs), _parse_link(raw.get("link"), path))


def _number(path: str, key: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise _fail(path, key, f"must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _parse_link(raw: object, path: str) -> LinkSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail(path, "link", "must be a table")
    extra = set(raw) - {"pair_rate_hz", "visibility", "seed", "node"}
    if extra:
        raise _fail(path, f"link.{sorted(extra)[0]}", "unknown key")
    rate = _number(path, "link.pair_rate_hz", raw.get("pair_rate_hz", 1e5), 0, 1e10)
    vis = _number(path, "link.visibility", raw.get("visibility", 0.95), 0, 1)
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise _fail(path, "link.seed", f"must be a non-negative integer, got {seed!r}")
    nodes = raw.get("node", [])
    if not isinstance(nodes, list) or len(nodes) != 2:
        raise _fail(path, "link.node", "list exactly two [[link.node]] tables")
    specs = []
    for i, n in enumerate(nodes):
        key = f"link.node[{i}]"
        if not isinstance(n, dict):
            raise _fail(path, key, "must be a table")
        extra = set(n) - {f.name for f in dataclasses.fields(NodeSpec)}
        if extra:
            raise _fail(path, f"{key}.{sorted(extra)[0]}", "unknown key")
        name = n.get("name")
        if not isinstance(name, str) or not name:
            raise _fail(path, f"{key}.name", "must be a non-empty string")
        ch = n.get("channels")
        if (not isinstance(ch, list) or len(ch) != 2
                or not all(isinstance(c, int) and not isinstance(c, bool) for c in ch)
                or ch[0] == ch[1]):
            raise _fail(path, f"{key}.channels", f"must be two different integers, got {ch!r}")
        specs.append(NodeSpec(
            name, (ch[0], ch[1]),
            _number(path, f"{key}.length_km", n.get("length_km", 0.0), 0, 1e4),
            _number(path, f"{key}.efficiency", n.get("efficiency", 0.8), 0, 1),
            _number(path, f"{key}.dark_count_rate_hz", n.get("dark_count_rate_hz", 100.0), 0, 1e9),
            _number(path, f"{key}.jitter_ps", n.get("jitter_ps", 30.0), 0, 1e6)))
    if specs[0].name == specs[1].name:
        raise _fail(path, "link.node[1].name", f"{specs[0].name!r} is used twice")
    return LinkSpec(rate, vis, seed, (specs[0], specs[1]))


def _build_service(bench: Bench, spec: InstrumentSpec, path: str, index: int) -> Any:
    module, _, cls = KINDS[spec.kind].factory.partition(":")
    factory = getattr(importlib.import_module(module), cls)
    try:
        return factory(bench, f"instrument[{index}]", **spec.options)
    except TypeError as exc:
        raise _fail(path, f"instrument[{index}].options", str(exc)) from exc
    except ValueError as exc:
        if isinstance(exc, BenchConfigError):
            raise
        raise _fail(path, f"instrument[{index}].options", str(exc)) from exc


def _build_device(spec: InstrumentSpec, path: str, index: int) -> WireDevice:
    module, _, cls = KINDS[spec.kind].factory.partition(":")
    factory = getattr(importlib.import_module(module), cls)
    try:
        return factory(**spec.options)
    except TypeError as exc:
        raise _fail(path, f"instrument[{index}].options", str(exc)) from exc


class Bench:
    """Running simulated instruments; use as a context manager. ``servers[name]`` has the
    server (its ``faults`` inject faults) or the self-serving service, ``devices[name]`` the
    simulated device."""

    def __init__(self, spec: BenchSpec, path: str = "<bench>"):
        self.spec = spec
        self.path = path
        self._simulator = None
        self._simulator_claimed_by: str | None = None
        self.devices: dict[str, Any] = {}
        self.servers: dict[str, Any] = {}
        for i, inst in enumerate(spec.instruments):
            if KINDS[inst.kind].style == "service":
                service = _build_service(self, inst, path, i)
                self.devices[inst.name] = getattr(service, "device", service)
                self.servers[inst.name] = service
                continue
            device = _build_device(inst, path, i)
            self.devices[inst.name] = device
            if inst.serve == "pty":
                self.servers[inst.name] = PtyServer(device, inst.name)
            else:
                self.servers[inst.name] = TcpServer(device, inst.name, port=inst.port)

    def claim_simulator(self, instrument_key: str):
        """The bench's photon simulator, built from [link], for the one instrument that streams
        it (``instrument_key`` names it in errors). A simulated tagger steps the simulator
        itself, so a second one would see other photons than the first: refused until taggers
        share a fan-out. BenchConfigError if the file has no [link]."""
        if self._simulator_claimed_by is not None:
            raise _fail(self.path, instrument_key,
                        f"the [link] already streams to {self._simulator_claimed_by}; a bench "
                        f"serves one simulated tagger per link for now")
        self._simulator_claimed_by = instrument_key
        if self._simulator is None:
            link = self.spec.link
            if link is None:
                raise _fail(self.path, instrument_key, "needs a [link] section (the photons)")
            from .link import Link, simple_node
            from .photon_stream import PhotonStreamSimulator
            from .polarisation import BellDiagonalState
            from .source import CWSource

            nodes = tuple(simple_node(n.name, n.channels, length_km=n.length_km,
                                      efficiency=n.efficiency,
                                      dark_count_rate_hz=n.dark_count_rate_hz,
                                      jitter_ps=n.jitter_ps) for n in link.nodes)
            self._simulator = PhotonStreamSimulator(
                Link(CWSource(link.pair_rate_hz), BellDiagonalState.werner(link.visibility),
                     nodes), seed=link.seed)
        return self._simulator

    @classmethod
    def from_file(cls, path: str | Path) -> Bench:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise BenchConfigError(f"{p}: cannot read: {exc}") from exc
        return cls(parse(text, str(p)), str(p))

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
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

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
