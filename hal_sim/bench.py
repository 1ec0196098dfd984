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
    when used), ``serves`` the transports its real counterpart uses."""

    factory: str
    serves: tuple[str, ...]
    description: str


KINDS: dict[str, Kind] = {}


def register(name: str, factory: str, serves: tuple[str, ...], description: str) -> None:
    """Make a simulated instrument kind available to bench files."""
    KINDS[name] = Kind(factory, serves, description)


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
class BenchSpec:
    name: str
    instruments: tuple[InstrumentSpec, ...]


def _fail(path: str, key: str, problem: str) -> BenchConfigError:
    return BenchConfigError(f"{path}: {key}: {problem}")


def parse(text: str, path: str = "<bench>") -> BenchSpec:
    """Validate a bench file's text; BenchConfigError names the key and the problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = set(raw) - {"bench", "instrument"}
    if unknown:
        raise _fail(path, sorted(unknown)[0], "unknown section (expected [bench], [[instrument]])")
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
    return BenchSpec(name, tuple(specs))


def _build_device(spec: InstrumentSpec, path: str, index: int) -> WireDevice:
    module, _, cls = KINDS[spec.kind].factory.partition(":")
    factory = getattr(importlib.import_module(module), cls)
    try:
        return factory(**spec.options)
    except TypeError as exc:
        raise _fail(path, f"instrument[{index}].options", str(exc)) from exc


class Bench:
    """Running simulated instruments; use as a context manager. ``servers[name]`` has the
    server (its ``faults`` inject faults), ``devices[name]`` the simulated device."""

    def __init__(self, spec: BenchSpec, path: str = "<bench>"):
        self.spec = spec
        self.devices: dict[str, WireDevice] = {}
        self.servers: dict[str, PtyServer | TcpServer] = {}
        for i, inst in enumerate(spec.instruments):
            device = _build_device(inst, path, i)
            self.devices[inst.name] = device
            if inst.serve == "pty":
                self.servers[inst.name] = PtyServer(device, inst.name)
            else:
                self.servers[inst.name] = TcpServer(device, inst.name, port=inst.port)

    @classmethod
    def from_file(cls, path: str | Path) -> Bench:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise BenchConfigError(f"{p}: cannot read: {exc}") from exc
        return cls(parse(text, str(p)), str(p))

    def addresses(self) -> dict[str, str]:
        """What a node config names for each instrument (pty path or socket URL)."""
        return {name: server.address for name, server in self.servers.items()}

    def describe(self) -> list[dict[str, str]]:
        return [{"name": i.name, "kind": i.kind, "serve": i.serve,
                 "address": self.servers[i.name].address} for i in self.spec.instruments]

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
