"""Simulated networks beyond the demo's: a chain of memory nodes through any number of
repeaters, as a bench file for hal_sim and the names :func:`~qnode.daemon.tools.demo.plan_network`
gives its nodes.

A chain of ``repeaters`` repeaters is ``alice – r1 – … – rN – bob`` (one repeater: the demo's
``alice – repeater – bob``), each pair of neighbours joined by a K link ``<left>-<right>``
heralded by its own station ``herald<k>`` (k = 1 … N + 1). The bench gives every link the demo's
link physics (10 km of fibre on each side, 0.2 dB/km, 85 % detectors, indistinguishability
0.92), every memory node a QDevice with the demo's calibration (T1 5 s, T2 2 s, gates 0.999,
read-out 0.005) and the registry oracle ``qdevice-truth``.

A topology file (``qnode demo --topology FILE``; shipped ones in ``examples/topologies/``) names
such a chain and its links' attempt rate::

    [chain]
    repeaters = 4              # 1 to MAX_DEMO_REPEATERS
    attempt_rate_hz = 3e5      # per link, 1e3 to 1e7 (the demo's links: 1e6)
"""
from __future__ import annotations

import math
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


#: the demo's chain
DEMO_CHAIN = Chain(("alice", "repeater", "bob"))


def chain(repeaters: int) -> Chain:
    """``alice – r1 – … – r<repeaters> – bob`` (``repeaters`` = 1: the demo's chain)."""
    if repeaters < 1:
        raise ValueError(f"a chain has at least one repeater, got {repeaters}")
    if repeaters == 1:
        return DEMO_CHAIN
    return Chain(("alice", *(f"r{k}" for k in range(1, repeaters + 1)), "bob"))


def chain_bench_text(c: Chain, *, attempt_rate_hz: float = 1e6, qubits_per_link: int = 2,
                     seed: int = 101) -> str:
    """A hal_sim bench file for chain ``c`` (module docstring)."""
    out = ['[bench]\nname = "chain"\n']
    for k, (link, station) in enumerate(zip(c.links, c.stations, strict=True)):
        out.append(
            f'[[link]]\nname = "{link}"\ntype = "K"\nstation = "{station}"\n'
            f'ends = ["{c.nodes[k]}", "{c.nodes[k + 1]}"]\nattempt_rate_hz = {attempt_rate_hz:g}\n'
            f'emission_probability = 0.15\nlength_km = [10.0, 10.0]\nloss_db_per_km = 0.2\n'
            f'channels = [1, 2, 3, 4]\nefficiency = 0.85\ndark_count_rate_hz = 100.0\n'
            f'dead_time_ps = 20000\njitter_ps = 30.0\nindistinguishability = 0.92\n'
            f'gate_ps = 4000\nseed = {seed + k}\n')
    for link, station in zip(c.links, c.stations, strict=True):
        out.append(f'[[instrument]]\nname = "{station}-tagger"\nkind = "id900"\n'
                   f'[instrument.options]\nlink = "{link}"\nnode = "{station}"\npace = 1.0\n')
    for k, node in enumerate(c.nodes):
        links = [c.links[j] for j in (k - 1, k) if 0 <= j < len(c.links)]
        linked = f'"{links[0]}"' if len(links) == 1 else f'["{links[0]}", "{links[1]}"]'
        out.append(f'[[instrument]]\nname = "{node}-qdevice"\nkind = "qdevice"\nserve = "tcp"\n'
                   f'[instrument.options]\nlink = {linked}\nnode = "{node}"\n'
                   f'n_qubits = {len(links) * (qubits_per_link + 1) + 2}\nt1_ns = 5e9\n'
                   f't2_ns = 2e9\ngate_depolarising_1q = 0.999\ngate_depolarising_2q = 0.999\n'
                   f'readout_error = 0.005\n')
    out.append('[[instrument]]\nname = "qdevice-truth"\nkind = "qdevice_truth"\nserve = "tcp"\n')
    return "\n".join(out)


def write_chain_bench(directory: Path, c: Chain, **options: float | int) -> Path:
    """:func:`chain_bench_text` written to ``directory/chain-<N>.toml``."""
    path = directory / f"chain-{len(c.repeaters)}.toml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(chain_bench_text(c, **options))  # type: ignore[arg-type]
    return path


#: the longest chain a topology file may ask for (2N + 3 daemons on one host)
MAX_DEMO_REPEATERS = 16


@dataclass(frozen=True)
class Topology:
    """A topology file's network: the chain and the bench options of its links."""

    chain: Chain
    bench: dict[str, float] = field(default_factory=dict)


def load_topology(path: str | Path) -> Topology:
    """Read a topology file (module docstring); ValueError naming the file and key."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    unknown = set(data) - {"chain"}
    if unknown or not isinstance(data.get("chain"), dict):
        raise ValueError(f"{path}: expected one [chain] table"
                         + (f", not {', '.join(sorted(unknown))}" if unknown else ""))
    table = data["chain"]
    extra = set(table) - {"repeaters", "attempt_rate_hz"}
    if extra:
        raise ValueError(f"{path}: chain: unknown key(s) {', '.join(sorted(extra))}")
    n = table.get("repeaters")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_DEMO_REPEATERS:
        raise ValueError(f"{path}: chain.repeaters: expected an integer from 1 to "
                         f"{MAX_DEMO_REPEATERS}, got {n!r}")
    bench: dict[str, float] = {}
    if "attempt_rate_hz" in table:
        rate = table["attempt_rate_hz"]
        if isinstance(rate, bool) or not isinstance(rate, int | float) \
                or not math.isfinite(rate) or not 1e3 <= rate <= 1e7:
            raise ValueError(f"{path}: chain.attempt_rate_hz: expected 1e3 to 1e7 attempts/s, "
                             f"got {rate!r}")
        bench["attempt_rate_hz"] = float(rate)
    return Topology(chain(n), bench)
