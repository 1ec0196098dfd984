"""Simulated networks beyond the demo's: a chain of memory nodes through any number of
repeaters, or a mesh, as a bench file for hal_sim and the names
:func:`~qnode.daemon.tools.demo.plan_network` gives its nodes.

A chain of ``repeaters`` repeaters is ``alice – r1 – … – rN – bob`` (one repeater: the demo's
``alice – repeater – bob``); a :class:`Mesh` is any set of links between named memory nodes,
two of which are its ends. Every link ``<a>-<b>`` is a K link heralded by its own station
``herald<k>`` (k = 1, 2, … in link order). The bench gives every link the demo's link physics
(10 km of fibre on each side, 0.2 dB/km, 85 % detectors, indistinguishability 0.92), every
memory node a QDevice with the demo's calibration (T1 5 s, T2 2 s, gates 0.999, read-out
0.005) and the registry oracle ``qdevice-truth``.

A topology file (``qnode demo --topology FILE``; shipped ones in ``examples/topologies/``)
names a chain and its links' attempt rate::

    [chain]
    repeaters = 4              # 1 to MAX_DEMO_REPEATERS
    attempt_rate_hz = 3e5      # per link, 1e3 to 1e7 (the demo's links: 1e6)

or a mesh (its nodes are the links' ends; its two ends keep a routed path to each other,
:mod:`qnode.daemon.routing.paths`)::

    [mesh]
    ends = ["alice", "bob"]
    links = [["alice", "r1"], ["r1", "bob"], ["alice", "r2"], ["r2", "bob"]]
    attempt_rate_hz = 3e5
"""
from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Chain:
    """Memory nodes in path order (the ends first and last), the K links between neighbours
    and the station heralding each link."""

    nodes: tuple[str, ...]

    @property
    def links(self) -> tuple[str, ...]:
        return tuple(f"{a}-{b}" for a, b in zip(self.nodes, self.nodes[1:], strict=False))

    @property
    def stations(self) -> tuple[str, ...]:
        return tuple(f"herald{k + 1}" for k in range(len(self.links)))

    @property
    def repeaters(self) -> tuple[str, ...]:
        return self.nodes[1:-1]

    @property
    def ends(self) -> tuple[str, str]:
        return self.nodes[0], self.nodes[-1]

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        """Each link's two nodes, in link order."""
        return tuple(zip(self.nodes, self.nodes[1:], strict=False))


@dataclass(frozen=True)
class Mesh:
    """Memory nodes joined by K links (``edges``: each link's two nodes, in link order), two
    of them the ``ends`` an application uses; the rest are repeaters."""

    edges: tuple[tuple[str, str], ...]
    ends: tuple[str, str]

    def __post_init__(self) -> None:
        seen = set()
        for a, b in self.edges:
            if a == b or frozenset((a, b)) in seen:
                raise ValueError(f"mesh: link {a}-{b} joins a node to itself or is twice")
            seen.add(frozenset((a, b)))
        if not set(self.ends) <= {n for e in self.edges for n in e} \
                or self.ends[0] == self.ends[1]:
            raise ValueError(f"mesh: the ends {list(self.ends)} must be two of its nodes")

    @property
    def nodes(self) -> tuple[str, ...]:
        """The ends first and last, the rest in order of appearance."""
        rest = [n for e in self.edges for n in e if n not in self.ends]
        return (self.ends[0], *dict.fromkeys(rest), self.ends[1])

    @property
    def links(self) -> tuple[str, ...]:
        return tuple(f"{a}-{b}" for a, b in self.edges)

    @property
    def stations(self) -> tuple[str, ...]:
        return tuple(f"herald{k + 1}" for k in range(len(self.edges)))

    @property
    def repeaters(self) -> tuple[str, ...]:
        return self.nodes[1:-1]


#: a network a bench and a plan can be made of
Network = Chain | Mesh


def links_of(net: Network, node: str) -> list[tuple[str, str, str]]:
    """``node``'s links in ``net``: (link, peer, station) each, in link order."""
    return [(link, b if a == node else a, station)
            for (a, b), link, station in zip(net.edges, net.links, net.stations, strict=True)
            if node in (a, b)]


#: the demo's chain
DEMO_CHAIN = Chain(("alice", "repeater", "bob"))


def chain(repeaters: int) -> Chain:
    """``alice – r1 – … – r<repeaters> – bob`` (``repeaters`` = 1: the demo's chain)."""
    if repeaters < 1:
        raise ValueError(f"a chain has at least one repeater, got {repeaters}")
    if repeaters == 1:
        return DEMO_CHAIN
    return Chain(("alice", *(f"r{k}" for k in range(1, repeaters + 1)), "bob"))


def chain_bench_text(c: Network, *, attempt_rate_hz: float = 1e6, qubits_per_link: int = 2,
                     seed: int = 101) -> str:
    """A hal_sim bench file for the chain or mesh ``c`` (module docstring)."""
    out = ['[bench]\nname = "chain"\n']
    for k, ((a, b), link, station) in enumerate(zip(c.edges, c.links, c.stations,
                                                    strict=True)):
        out.append(
            f'[[link]]\nname = "{link}"\ntype = "K"\nstation = "{station}"\n'
            f'ends = ["{a}", "{b}"]\nattempt_rate_hz = {attempt_rate_hz:g}\n'
            f'emission_probability = 0.15\nlength_km = [10.0, 10.0]\nloss_db_per_km = 0.2\n'
            f'channels = [1, 2, 3, 4]\nefficiency = 0.85\ndark_count_rate_hz = 100.0\n'
            f'dead_time_ps = 20000\njitter_ps = 30.0\nindistinguishability = 0.92\n'
            f'gate_ps = 4000\nseed = {seed + k}\n')
    for link, station in zip(c.links, c.stations, strict=True):
        out.append(f'[[instrument]]\nname = "{station}-tagger"\nkind = "id900"\n'
                   f'[instrument.options]\nlink = "{link}"\nnode = "{station}"\npace = 1.0\n')
    for node in c.nodes:
        links = [link for link, _, _ in links_of(c, node)]
        linked = f'"{links[0]}"' if len(links) == 1 else json.dumps(links)
        out.append(f'[[instrument]]\nname = "{node}-qdevice"\nkind = "qdevice"\nserve = "tcp"\n'
                   f'[instrument.options]\nlink = {linked}\nnode = "{node}"\n'
                   f'n_qubits = {len(links) * (qubits_per_link + 1) + 2}\nt1_ns = 5e9\n'
                   f't2_ns = 2e9\ngate_depolarising_1q = 0.999\ngate_depolarising_2q = 0.999\n'
                   f'readout_error = 0.005\n')
    out.append('[[instrument]]\nname = "qdevice-truth"\nkind = "qdevice_truth"\nserve = "tcp"\n')
    return "\n".join(out)


def write_chain_bench(directory: Path, c: Network, **options: float | int) -> Path:
    """:func:`chain_bench_text` written to ``directory/chain-<N>.toml`` (a mesh:
    ``mesh-<links>.toml``)."""
    path = directory / (f"chain-{len(c.repeaters)}.toml" if isinstance(c, Chain)
                        else f"mesh-{len(c.links)}.toml")
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(chain_bench_text(c, **options))  # type: ignore[arg-type]
    return path


#: the longest chain a topology file may ask for (2N + 3 daemons on one host)
MAX_DEMO_REPEATERS = 16
#: the most links a mesh file may have (one station each, plus the memory nodes)
MAX_DEMO_LINKS = 24
_NAME = re.compile(r"^[A-Za-z0-9_]{1,32}$")   # no '-': a link is named <a>-<b>


@dataclass(frozen=True)
class Topology:
    """A topology file's network: the chain or mesh and the bench options of its links."""

    network: Network
    bench: dict[str, float] = field(default_factory=dict)


def _rate(path: str | Path, table: dict[str, object], where: str) -> dict[str, float]:
    if "attempt_rate_hz" not in table:
        return {}
    rate = table["attempt_rate_hz"]
    if isinstance(rate, bool) or not isinstance(rate, int | float) \
            or not math.isfinite(rate) or not 1e3 <= rate <= 1e7:
        raise ValueError(f"{path}: {where}.attempt_rate_hz: expected 1e3 to 1e7 attempts/s, "
                         f"got {rate!r}")
    return {"attempt_rate_hz": float(rate)}


def _mesh(path: str | Path, table: dict[str, object]) -> Mesh:
    ends, links = table.get("ends"), table.get("links")
    if not isinstance(ends, list) or len(ends) != 2 or not all(
            isinstance(e, str) and _NAME.fullmatch(e) for e in ends):
        raise ValueError(f"{path}: mesh.ends: expected two node names (letters, digits, _), "
                         f"got {ends!r}")
    if not isinstance(links, list) or not 2 <= len(links) <= MAX_DEMO_LINKS or not all(
            isinstance(pair, list) and len(pair) == 2
            and all(isinstance(n, str) and _NAME.fullmatch(n) for n in pair) for pair in links):
        raise ValueError(f"{path}: mesh.links: expected 2 to {MAX_DEMO_LINKS} pairs of node "
                         f"names, got {links!r}")
    try:
        return Mesh(tuple((a, b) for a, b in links), (ends[0], ends[1]))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_topology(path: str | Path) -> Topology:
    """Read a topology file (module docstring); ValueError naming the file and key."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    kinds = [k for k in ("chain", "mesh") if isinstance(data.get(k), dict)]
    unknown = set(data) - {"chain", "mesh"}
    if unknown or len(kinds) != 1:
        raise ValueError(f"{path}: expected one [chain] or [mesh] table"
                         + (f", not {', '.join(sorted(unknown))}" if unknown else ""))
    kind = kinds[0]
    table = data[kind]
    allowed = {"repeaters", "attempt_rate_hz"} if kind == "chain" else {
        "ends", "links", "attempt_rate_hz"}
    extra = set(table) - allowed
    if extra:
        raise ValueError(f"{path}: {kind}: unknown key(s) {', '.join(sorted(extra))}")
    bench = _rate(path, table, kind)
    if kind == "mesh":
        return Topology(_mesh(path, table), bench)
    n = table.get("repeaters")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_DEMO_REPEATERS:
        raise ValueError(f"{path}: chain.repeaters: expected an integer from 1 to "
                         f"{MAX_DEMO_REPEATERS}, got {n!r}")
    return Topology(chain(n), bench)
