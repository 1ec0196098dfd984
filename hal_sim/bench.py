"""A simulated bench: simulated instruments served on real ptys and sockets, from a TOML file.

``python -m qnode.hal_sim bench --config bench.toml [--json] [--truth truth.json]`` starts every
instrument the file lists and prints each one's address: exactly what a node config names for
the real instrument in a lab. It runs until interrupted (Ctrl-C or SIGTERM).

File format::

    [bench]
    name = "network"

    [[instrument]]
    name = "oven"           # the name a node config uses
    kind = "tc200"          # see KINDS
    serve = "pty"           # "pty" (a serial port) or "tcp" (a loopback TCP port)
    port = 0                # tcp only: 0 picks a free port
    startup = ["tset=35.0", "ens"]  # wire commands the device gets before it is served
    settle_s = 600          # ...as if it had been running that long since (wire kinds only)
    [instrument.options]    # keyword arguments of the simulated device, plus coupling keys
    optimum_c = 35.0
    link = "source-pair"    # couples the oven to this M link's pair rate

    [[link]]                # an M link: an SPDC source measured at two analyzer nodes
    name = "source-pair"    # what instruments name in ``link``
    id = "m-ab"             # the daemon's link id, the key in the truth file (default: name)
    type = "M"
    pair_rate_hz = 1e5      # pairs/s while no pump is coupled (an oven alone scales it)
    brightness_hz_per_mw = 2500  # pairs/s per mW of a coupled pump
    visibility = 0.95       # Werner state around Φ+
    seed = 1
    slice_ms = 50           # simulated time per step (any link): each tagger chunk
    [[link.node]]           # exactly two
    name = "analyzer-a"
    channels = [1, 2]       # the + and - detectors' tagger inputs (one analyzer "a", H/V), or:
    # analyzers = [{name = "z", channels = [1, 2], angle_deg = 0.0},   # passive basis choice:
    #              {name = "x", channels = [3, 4], angle_deg = 22.5}]  #   a 50:50 BS, HWP angles
    length_km = 1.0         # also: efficiency, dark_count_rate_hz, jitter_ps,
    clock_offset_ps = 0     #   clock_offset_ps, clock_drift_ppm (the node's tagger clock)
    # optional: this fibre's polarisation drift (default none), see "Polarisation drift" below
    polarisation_drift = {walk_rad_per_sqrt_s = 0.01, steps = [{at_s = 20.0, angle_deg = 40.0}]}

    [[link]]                # a K link: a heralding station between two memory nodes
    name = "alice-repeater"
    type = "K"
    station = "herald1"
    ends = ["alice", "repeater"]
    attempt_rate_hz = 1e6
    emission_probability = 0.15
    length_km = [10.0, 10.0]   # each end's fibre (or one number for both); loss_db_per_km
    channels = [1, 2, 3, 4]    # c-H, c-V, d-H, d-V; also efficiency, dark_count_rate_hz,
    indistinguishability = 0.9 #   dead_time_ps, jitter_ps (the four detectors), gate_ps, seed

The single-table form ``[link]`` of earlier files is still read: an M link named "link".

**Instruments and links.** A time tagger (``kind = "id900"``) streams one node of one link:
options ``link`` (may be left out when the bench has one link) and ``node`` (for a K link the
station, the default). Several taggers may stream different nodes of one link: the link's
simulator is stepped once per slice and each tagger gets its own node's tags
(:class:`~qnode.hal_sim.tagger.SimulatorFanout`; a tagger that is streaming but not read holds
the others back after a bounded buffer of slices, never growing memory; one that is not
streaming misses those photons). Instruments with ``link = "<an M link>"`` in their options are
coupled to its physics (:mod:`qnode.hal_sim.physics_coupling`, applied before every slice): a
pump (``ibeam``, ``itc4001``) sets the pair rate = ``brightness_hz_per_mw`` × its output power
(mW) × the oven's phase matching; an oven (``tc200``) alone scales ``pair_rate_hz`` by its phase
matching; a waveplate (``elliptec``, options ``node``, ``analyzer`` (default "a"), ``zero_deg``)
turns that node's analyzer; with ``mount = "compensator"`` (options ``link``, ``node``,
``zero_deg``) it is instead the node's polarisation compensator (below).

**Polarisation drift (M links).** A node's ``polarisation_drift`` table drifts the polarisation
of its fibre (:class:`~qnode.hal_sim.polarisation.FibreDrift`, deterministic from the link's
seed): ``walk_rad_per_sqrt_s`` (σ of a random walk, rad/√s; default 0), ``walk_axis`` ((X, Y,
Z) on the Poincaré sphere, default [0, 1, 0]; "isotropic" for a walk about every axis),
``grid_s`` (the walk's time step, s; default 0.01), ``seed`` (default: from the link's seed and
the node's index) and ``steps``, a list of ``{at_s, angle_deg, axis = [x, y, z]}`` (simulated
emission time, s; deg; default axis Y). A compensator (an ``elliptec`` with ``mount =
"compensator"``) is a rotator in front of the node's analyzers: a fixed HWP and the ELL14's HWP,
R_Y(4θ) (:mod:`qnode.hal_sim.physics_coupling`); it undoes drift about Y only. Both apply
before every slice (constant over a slice). :meth:`LinkRuntime.polarisation_step` triggers a
step at run time; the truth file's ``polarisation`` block holds each fibre's rotation, the
compensators' angles, the relative rotation of the two photons and the true per-basis
visibility (see :func:`m_link_truth`).

Instruments of a "service" kind (time taggers, systems with several ports) serve themselves and
print one address per port (``tagger.scpi``, ``tagger.dlt``).

**Quantum memories of K links** (``kind = "qdevice"``, served on TCP, the QDEVICE/1 protocol of
:mod:`qnode.drivers.qdevice`): options ``link`` (a K link, or a list of them: a repeater's one
memory holds the pairs of both its links) and ``node`` (an end of each; one qdevice per node and
link), and the :class:`~qnode.hal_sim.qdevice.QDeviceConfig` keys
``n_qubits``, ``t1_ns``, ``t2_ns``, ``gate_fidelity_1q``, ``gate_fidelity_2q``,
``readout_error``, plus ``seed`` (readout errors). The twin is named after its node. All
qdevices of the bench share one :class:`~qnode.hal_sim.qdevice.PairRegistry`
(:meth:`Bench.pair_registry`); whenever the bench steps that link's simulator it
files every herald of the chunk's truth under its station time
(:meth:`~qnode.hal_sim.qdevice.PairRegistry.herald_records_at`, tolerance = the link's
``gate_ps``), under the daemon's link id: a true herald as the model's mixture (1+V)/2 of the
announced Ψ and (1−V)/2 of the other Ψ, a false one maximally mixed. A memory node binds a pair
with ``ENT <q> <link id> T<station time ps>``. The link is stepped only while a tagger streams
its station (no photons, no heralds).

**Ground truth.** With a truth file (``Bench(truth_path=...)``, ``--truth``) the bench writes
every link's truth totals as JSON, atomically (a temporary file renamed over it), every second
and at stop (:meth:`Bench.truth`): ``{"v": 1, "bench", "t" (Unix s), "uptime_s", "links": {id:
{"name", "type", ...}}}``, keyed by the daemon's link id.
Each link's top-level numbers are named like the daemon's telemetry fields they are compared
with; ``detail`` holds the counters (see :func:`m_link_truth`, :func:`k_link_truth`).

Every error names the file and the key (``instrument[2].kind``) and what is wrong with it.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import re
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .serve import PtyServer, TcpServer, WireDevice

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Kind:
    """How to build one kind of simulated instrument: ``factory`` is "module:Class" (imported
    when used), ``serves`` the transports its real counterpart uses.

    ``style`` "wire": the factory builds a :class:`WireDevice` that the bench serves on a pty or a
    TCP port; ``style`` "linked": the same, built by ``factory(bench, key, **options)`` (a twin
    that needs the bench's links). ``style`` "service": ``factory(bench, key, **options)``
    builds an object that serves itself, with ``start()``, ``stop()`` and
    ``addresses() -> {label: address}``.
    ``couples``: what the device is to an M link's physics ("pump", "oven", "waveplate") when its
    options name a ``link``. ``startup_errors``: reply fragments that mark a ``startup``
    command as refused."""

    factory: str
    serves: tuple[str, ...]
    description: str
    style: str = "wire"
    couples: str | None = None
    startup_errors: tuple[bytes, ...] = ()


KINDS: dict[str, Kind] = {}

#: Option keys a coupled instrument takes besides its device's own keyword arguments.
COUPLING_KEYS = {"pump": ("link",), "oven": ("link",),
                 "waveplate": ("link", "node", "analyzer", "zero_deg", "mount")}


def register(name: str, factory: str, serves: tuple[str, ...], description: str,
             style: str = "wire", couples: str | None = None,
             startup_errors: tuple[bytes, ...] = ()) -> None:
    """Make a simulated instrument kind available to bench files."""
    if couples is not None and couples not in COUPLING_KEYS:
        raise ValueError(f"register: couples must be one of {sorted(COUPLING_KEYS)}")
    KINDS[name] = Kind(factory, serves, description, style, couples, startup_errors)


class BenchConfigError(ValueError):
    """A bench file is malformed; the message names the file and the key."""


# ------------------------------------------------------------------------------ the file

@dataclasses.dataclass(frozen=True)
class InstrumentSpec:
    name: str
    kind: str
    serve: str
    port: int
    options: Mapping[str, Any]
    startup: tuple[str, ...] = ()
    settle_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class AnalyzerSpec:
    """One analyzer of a node with a passive basis choice: a PBS with its '+' and '−' detectors
    on ``channels``, behind a half-wave plate at ``angle_deg`` (deg from H): it measures linear
    polarisation at 2θ, Bloch vector (sin 4θ, 0, cos 4θ)
    (:func:`~qnode.hal_sim.physics_coupling.waveplate_analyzer_vector`)."""

    name: str
    channels: tuple[int, int]
    angle_deg: float = 0.0


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """One analyzer node of an M link (lengths km, rates Hz, times ps, drift ppm).

    ``analyzers`` empty: one analyzer "a" measuring H/V on ``channels`` (+, −). Otherwise a
    50:50 beam splitter picks one of ``analyzers`` (passive basis choice, anchors §6) and
    ``channels`` lists all their detectors."""

    name: str
    channels: tuple[int, ...]
    length_km: float = 0.0
    efficiency: float = 0.8
    dark_count_rate_hz: float = 100.0
    jitter_ps: float = 30.0
    clock_offset_ps: int = 0
    clock_drift_ppm: float = 0.0
    analyzers: tuple[AnalyzerSpec, ...] = ()
    polarisation_drift: Any = None   # a PolarisationDrift, or None: the fibre does not drift
    polarisation_seed: int | None = None


class _LinkNaming:
    """What both kinds of link spec share: the daemon's id of the link."""

    id: str
    name: str

    @property
    def link_id(self) -> str:
        """The daemon's id of the link (the truth file's key): ``id``, else the name."""
        return self.id or self.name


@dataclasses.dataclass(frozen=True)
class LinkSpec(_LinkNaming):
    """An M link: SPDC pairs (``pair_rate_hz``, Werner ``visibility``) to two nodes."""

    pair_rate_hz: float
    visibility: float
    seed: int
    nodes: tuple[NodeSpec, NodeSpec]
    name: str = "link"
    brightness_hz_per_mw: float = 1e6
    key: str = "link"
    type: str = "M"
    id: str = ""
    slice_ms: float = 50.0

    @property
    def streaming_nodes(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)


@dataclasses.dataclass(frozen=True)
class KLinkSpec(_LinkNaming):
    """A K link: ``link`` is the :class:`~qnode.hal_sim.heralding.HeraldingLink`."""

    name: str
    link: Any
    seed: int
    key: str
    type: str = "K"
    id: str = ""
    slice_ms: float = 50.0

    @property
    def streaming_nodes(self) -> tuple[str, ...]:
        return (self.link.station,)


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    name: str
    instruments: tuple[InstrumentSpec, ...]
    links: tuple[LinkSpec | KLinkSpec, ...] = ()

    @property
    def link(self) -> LinkSpec | KLinkSpec | None:
        """The first link (files of the single-``[link]`` form have at most one)."""
        return self.links[0] if self.links else None


def _fail(path: str, key: str, problem: str) -> BenchConfigError:
    return BenchConfigError(f"{path}: {key}: {problem}")


class _Table:
    """Reads one TOML table, naming ``path: key.field`` in every error."""

    def __init__(self, path: str, key: str, raw: object, allowed: set[str]):
        if not isinstance(raw, dict):
            raise _fail(path, key, "must be a table")
        extra = set(raw) - allowed
        if extra:
            raise _fail(path, f"{key}.{sorted(extra)[0]}", "unknown key")
        self.path, self.key, self.raw = path, key, raw

    def fail(self, field: str, problem: str) -> BenchConfigError:
        return _fail(self.path, f"{self.key}.{field}", problem)

    def number(self, field: str, default: float, lo: float, hi: float) -> float:
        value = self.raw.get(field, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise self.fail(field, f"must be a number in [{lo:g}, {hi:g}], got {value!r}")
        return float(value)

    def integer(self, field: str, default: int, lo: int, hi: int) -> int:
        value = self.raw.get(field, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(field, f"must be an integer in [{lo}, {hi}], got {value!r}")
        return value

    def name(self, field: str, default: str | None = None) -> str:
        value = self.raw.get(field, default)
        if not isinstance(value, str) or not value:
            raise self.fail(field, "must be a non-empty string")
        return value

    def channels(self, field: str, n: int, default: list[int] | None = None) -> tuple[int, ...]:
        ch = self.raw.get(field, default)
        if (not isinstance(ch, list) or len(ch) != n
                or not all(isinstance(c, int) and not isinstance(c, bool) for c in ch)
                or len(set(ch)) != n):
            raise self.fail(field, f"must be {n} different integers, got {ch!r}")
        return tuple(ch)


def parse(text: str, path: str = "<bench>") -> BenchSpec:
    """Validate a bench file's text; BenchConfigError names the key and the problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = set(raw) - {"bench", "instrument", "link"}
    if unknown:
        raise _fail(path, sorted(unknown)[0],
                    "unknown section (expected [bench], [[instrument]], [[link]])")
    bench = _Table(path, "bench", raw.get("bench", {}), {"name"})
    name = bench.name("name", Path(path).stem)
    items = raw.get("instrument", [])
    if not isinstance(items, list) or not items:
        raise _fail(path, "instrument", "list at least one [[instrument]]")
    specs: list[InstrumentSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        specs.append(_parse_instrument(_Table(path, f"instrument[{i}]", item, {
            "name", "kind", "serve", "port", "options", "startup", "settle_s"}), seen))
    return BenchSpec(name, tuple(specs), _parse_links(raw.get("link"), path))


def _parse_instrument(t: _Table, seen: set[str]) -> InstrumentSpec:
    iname = t.name("name")
    if iname in seen:
        raise t.fail("name", f"{iname!r} is used twice")
    seen.add(iname)
    kind = t.raw.get("kind")
    if kind not in KINDS:
        raise t.fail("kind", f"{kind!r} is not one of {sorted(KINDS)}")
    serve = t.raw.get("serve", KINDS[kind].serves[0])
    if serve not in KINDS[kind].serves:
        raise t.fail("serve", f"{kind} is served over {list(KINDS[kind].serves)}, not {serve!r}")
    port = t.raw.get("port", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
        raise t.fail("port", f"must be an integer port 0-65535, got {port!r}")
    options = t.raw.get("options", {})
    if not isinstance(options, dict):
        raise t.fail("options", "must be a table")
    startup = t.raw.get("startup", [])
    if not isinstance(startup, list) or not all(isinstance(c, str) for c in startup):
        raise t.fail("startup", f"must be a list of command strings, got {startup!r}")
    settle_s = t.number("settle_s", 0.0, 0.0, 1e7)
    if (startup or settle_s) and KINDS[kind].style != "wire":
        raise t.fail("startup" if startup else "settle_s",
                     f"{kind} is built by the bench; startup and settle_s are for wire kinds")
    return InstrumentSpec(iname, kind, serve, port, options, tuple(startup), settle_s)


def _parse_links(raw: object, path: str) -> tuple[LinkSpec | KLinkSpec, ...]:
    if raw is None:
        return ()
    if isinstance(raw, dict):        # the single [link] table of earlier files: an M link
        t = _Table(path, "link", raw, _M_KEYS | {"name", "type"})
        if raw.get("type", "M") != "M":
            raise t.fail("type", "a single [link] table is an M link; write K links as [[link]]")
        return (_parse_m_link(t, t.name("name", "link")),)
    if not isinstance(raw, list) or not raw:
        raise _fail(path, "link", "must be [[link]] tables")
    links: list[LinkSpec | KLinkSpec] = []
    names: set[str] = set()
    ids: set[str] = set()
    for i, item in enumerate(raw):
        key = f"link[{i}]"
        if not isinstance(item, dict):
            raise _fail(path, key, "must be a table")
        kind = item.get("type")
        if kind not in ("M", "K"):
            raise _fail(path, f"{key}.type", f"must be \"M\" or \"K\", got {kind!r}")
        allowed = (_M_KEYS if kind == "M" else _K_KEYS) | {"name", "type"}
        t = _Table(path, key, item, allowed)
        lname = t.name("name")
        if lname in names:
            raise t.fail("name", f"{lname!r} is used twice")
        names.add(lname)
        links.append(_parse_m_link(t, lname) if kind == "M" else _parse_k_link(t, lname))
        if links[-1].link_id in ids:
            raise t.fail("id", f"link id {links[-1].link_id!r} is used twice")
        ids.add(links[-1].link_id)
    return tuple(links)


_M_KEYS = {"pair_rate_hz", "visibility", "seed", "node", "brightness_hz_per_mw", "id",
           "slice_ms"}
_NODE_KEYS = {f.name for f in dataclasses.fields(NodeSpec)} - {"polarisation_seed"}
_K_KEYS = {"station", "ends", "attempt_rate_hz", "emission_probability", "length_km",
           "loss_db_per_km", "channels", "efficiency", "dark_count_rate_hz", "dead_time_ps",
           "jitter_ps", "indistinguishability", "gate_ps", "seed", "id", "slice_ms"}


def _parse_m_link(t: _Table, name: str) -> LinkSpec:
    rate = t.number("pair_rate_hz", 1e5, 0, 1e10)
    vis = t.number("visibility", 0.95, 0, 1)
    seed = t.integer("seed", 0, 0, 2**63 - 1)
    brightness = t.number("brightness_hz_per_mw", 1e6, 0, 1e12)
    nodes = t.raw.get("node", [])
    if not isinstance(nodes, list) or len(nodes) != 2:
        raise t.fail("node", f"list exactly two [[{t.key.split('[')[0]}.node]] tables")
    specs = []
    for i, n in enumerate(nodes):
        nt = _Table(t.path, f"{t.key}.node[{i}]", n, _NODE_KEYS)
        analyzers = _parse_analyzers(nt)
        if analyzers and "channels" in nt.raw:
            raise nt.fail("channels", "give channels or analyzers (each with its channels), "
                                      "not both")
        channels = (tuple(c for a in analyzers for c in a.channels) if analyzers
                    else nt.channels("channels", 2))
        drift, drift_seed = _parse_drift(nt)
        specs.append(NodeSpec(
            nt.name("name"), channels,
            nt.number("length_km", 0.0, 0, 1e4), nt.number("efficiency", 0.8, 0, 1),
            nt.number("dark_count_rate_hz", 100.0, 0, 1e9), nt.number("jitter_ps", 30.0, 0, 1e6),
            nt.integer("clock_offset_ps", 0, -10**15, 10**15),
            nt.number("clock_drift_ppm", 0.0, -1e4, 1e4), analyzers, drift, drift_seed))
    if specs[0].name == specs[1].name:
        raise _fail(t.path, f"{t.key}.node[1].name", f"{specs[0].name!r} is used twice")
    return LinkSpec(rate, vis, seed, (specs[0], specs[1]), name, brightness, t.key,
                    id=t.name("id", name), slice_ms=t.number("slice_ms", 50.0, 0.001, 10_000))


_DRIFT_KEYS = {"walk_rad_per_sqrt_s", "walk_axis", "grid_s", "seed", "steps"}


def _axis_of(t: _Table, field: str, default: list[float]) -> tuple[float, float, float]:
    raw = t.raw.get(field, default)
    if (not isinstance(raw, list) or len(raw) != 3
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                       and math.isfinite(x) for x in raw)
            or math.hypot(*raw) < 1e-12):
        extra = ' or "isotropic"' if field == "walk_axis" else ""
        raise t.fail(field, f"must be an axis [x, y, z] on the Poincaré sphere (three numbers, "
                            f"not all zero){extra}, got {raw!r}")
    return (float(raw[0]), float(raw[1]), float(raw[2]))


def _parse_drift(nt: _Table) -> tuple[Any, int | None]:
    """A node's ``polarisation_drift = {walk_rad_per_sqrt_s, walk_axis, grid_s, seed, steps}``:
    (PolarisationDrift or None, seed or None)."""
    from .polarisation import PolarisationDrift, PolarisationStep

    raw = nt.raw.get("polarisation_drift")
    if raw is None:
        return None, None
    t = _Table(nt.path, f"{nt.key}.polarisation_drift", raw, _DRIFT_KEYS)
    if t.raw.get("walk_axis") == "isotropic":
        walk_axis = None
    else:
        walk_axis = _axis_of(t, "walk_axis", [0.0, 1.0, 0.0])
    raw_steps = t.raw.get("steps", [])
    if not isinstance(raw_steps, list):
        raise t.fail("steps", "must be a list of {at_s, angle_deg, axis} tables")
    steps = []
    for j, item in enumerate(raw_steps):
        st = _Table(t.path, f"{t.key}.steps[{j}]", item, {"at_s", "angle_deg", "axis"})
        if "at_s" not in st.raw or "angle_deg" not in st.raw:
            raise st.fail("at_s" if "at_s" not in st.raw else "angle_deg", "is required")
        steps.append(PolarisationStep(st.number("at_s", 0.0, 0, 1e9),
                                      st.number("angle_deg", 0.0, -3600, 3600),
                                      _axis_of(st, "axis", [0.0, 1.0, 0.0])))
    seed = t.integer("seed", 0, 0, 2**63 - 1) if "seed" in t.raw else None
    drift = PolarisationDrift(t.number("walk_rad_per_sqrt_s", 0.0, 0, 100), walk_axis,
                              tuple(steps), t.number("grid_s", 0.01, 1e-6, 60))
    return drift, seed


def _parse_analyzers(nt: _Table) -> tuple[AnalyzerSpec, ...]:
    """A node's ``analyzers = [{name, channels = [+, −], angle_deg}, ...]`` (passive choice)."""
    raw = nt.raw.get("analyzers")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise nt.fail("analyzers", "must be a list of {name, channels, angle_deg} tables")
    out: list[AnalyzerSpec] = []
    for j, item in enumerate(raw):
        at = _Table(nt.path, f"{nt.key}.analyzers[{j}]", item, {"name", "channels", "angle_deg"})
        out.append(AnalyzerSpec(at.name("name"), at.channels("channels", 2),  # type: ignore[arg-type]
                                at.number("angle_deg", 0.0, -360, 360)))
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        raise nt.fail("analyzers", f"analyzer names must differ, got {names}")
    chans = [c for a in out for c in a.channels]
    if len(set(chans)) != len(chans):
        raise nt.fail("analyzers", f"detector channels must differ, got {chans}")
    return tuple(out)


def _parse_k_link(t: _Table, name: str) -> KLinkSpec:
    from .detector import Detector
    from .heralding import HeraldingLink
    from .optics import Fibre

    station = t.name("station")
    ends = t.raw.get("ends")
    if (not isinstance(ends, list) or len(ends) != 2
            or not all(isinstance(e, str) and e for e in ends) or len({station, *ends}) != 3):
        raise t.fail("ends", f"must be two node names, distinct and not the station, got {ends!r}")
    lengths = t.raw.get("length_km", 0.0)
    if not isinstance(lengths, list):
        lengths = [lengths, lengths]
    if len(lengths) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                    and 0 <= x <= 1e4 for x in lengths):
        raise t.fail("length_km", f"must be a number or two numbers in [0, 1e4] km, "
                                  f"got {t.raw.get('length_km')!r}")
    loss = t.number("loss_db_per_km", 0.2, 0, 100)
    det = dict(efficiency=t.number("efficiency", 0.8, 0, 1),
               dark_count_rate_hz=t.number("dark_count_rate_hz", 100.0, 0, 1e9),
               dead_time_ps=t.integer("dead_time_ps", 20_000, 0, 10**12),
               jitter_ps=t.number("jitter_ps", 30.0, 0, 1e6))
    fields = dict(
        attempt_rate_hz=t.number("attempt_rate_hz", 1e6, 1e-3, 1e11),
        emission_probability=t.number("emission_probability", 0.1, 0, 1),
        indistinguishability=t.number("indistinguishability", 1.0, 0, 1),
        gate_ps=t.integer("gate_ps", 2_000, 1, 10**12))
    channels = t.channels("channels", 4, [1, 2, 3, 4])
    seed = t.integer("seed", 0, 0, 2**63 - 1)
    try:
        link = HeraldingLink(
            station, (ends[0], ends[1]),
            fibres=(Fibre(float(lengths[0]), loss), Fibre(float(lengths[1]), loss)),
            detectors=tuple(Detector(c, **det) for c in channels),  # type: ignore[arg-type]
            **fields)
    except ValueError as exc:
        m = re.match(r"HeraldingLink\.(\w+)", str(exc))
        if m and m.group(1) in _K_KEYS:
            raise t.fail(m.group(1), str(exc)) from exc
        raise _fail(t.path, t.key, str(exc)) from exc
    return KLinkSpec(name, link, seed, t.key, id=t.name("id", name),
                     slice_ms=t.number("slice_ms", 50.0, 0.001, 10_000))


# ------------------------------------------------------------------------------ building

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


class _ShiftedClock:
    """time.monotonic() plus an offset: lets a twin start as if it had run ``settle_s``."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset_s


def _build_device(spec: InstrumentSpec, path: str, index: int,
                  bench: Bench | None = None) -> WireDevice:
    kind = KINDS[spec.kind]
    module, _, cls = kind.factory.partition(":")
    factory = getattr(importlib.import_module(module), cls)
    key = f"instrument[{index}]"
    if kind.style == "linked":
        try:
            return factory(bench, key, **spec.options)
        except BenchConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise _fail(path, f"{key}.options", str(exc)) from exc
    options = {k: v for k, v in spec.options.items()
               if k not in COUPLING_KEYS.get(kind.couples or "", ())}
    clock = None
    if spec.settle_s:
        clock = options["clock"] = _ShiftedClock()
    try:
        device = factory(**options)
    except TypeError as exc:
        if clock is not None and "clock" in str(exc):
            raise _fail(path, f"{key}.settle_s", f"{spec.kind} has no clock to settle") from exc
        raise _fail(path, f"{key}.options", str(exc)) from exc
    except ValueError as exc:
        raise _fail(path, f"{key}.options", str(exc)) from exc
    for i, command in enumerate(spec.startup):
        reply = device.handle(command.encode("ascii", errors="replace")) or b""
        if any(marker in reply for marker in kind.startup_errors):
            raise _fail(path, f"{key}.startup[{i}]",
                        f"{command!r} was refused: {reply.decode(errors='replace').strip()!r}")
    if clock is not None:
        clock.offset_s = spec.settle_s
    return device


class LinkRuntime:
    """One link of a running bench: its simulator, the fan-out its taggers read, the
    instruments coupled to it and which instrument streams which node."""

    def __init__(self, spec: LinkSpec | KLinkSpec):
        self.spec = spec
        self.sim = _build_simulator(spec)
        self.coupling: Callable[[Any], None] | None = None
        self.polarisation: Any = None              # M link: a PolarisationCoupling, if any
        if isinstance(spec, LinkSpec) and any(n.polarisation_drift for n in spec.nodes):
            self.polarisation_coupling()
        self.streamed: dict[str, str] = {}
        self.registry: Any = None                  # a K link with qdevices: their PairRegistry
        self.qdevices: dict[str, str] = {}         # memory node -> instrument key
        from .tagger import SimulatorFanout

        self.fanout = SimulatorFanout(self.sim, before_step=self._before_step)

    def _before_step(self, sim: Any) -> None:
        if self.coupling is not None:
            self.coupling(sim)
        if self.polarisation is not None:
            self.polarisation(sim)

    def polarisation_coupling(self) -> Any:
        """The M link's :class:`~qnode.hal_sim.physics_coupling.PolarisationCoupling` (made on
        first use, with every node's configured drift)."""
        if self.polarisation is None:
            import numpy as np

            from .physics_coupling import PolarisationCoupling
            from .polarisation import FibreDrift

            assert isinstance(self.spec, LinkSpec)
            drifts = {}
            for i, n in enumerate(self.spec.nodes):
                if n.polarisation_drift is not None:
                    seed = (n.polarisation_seed if n.polarisation_seed is not None
                            else np.random.SeedSequence([self.spec.seed, i, 0x706F6C]))
                    drifts[n.name] = FibreDrift(n.polarisation_drift, seed)
            self.polarisation = PolarisationCoupling(drifts)
        return self.polarisation

    def polarisation_step(self, node: str, angle_deg: float,
                          axis: tuple[float, float, float] = (0.0, 1.0, 0.0)) -> float:
        """Trigger a step of ``node``'s fibre now: a rotation by ``angle_deg`` (deg) about
        ``axis`` (Poincaré (X, Y, Z); default Y), from the simulator's next slice on. Returns
        that slice's start (s of simulated time)."""
        if not isinstance(self.spec, LinkSpec):
            raise ValueError(f"{self.spec.name!r} is a K link: no polarisation to step")
        if node not in self.spec.streaming_nodes:
            raise ValueError(f"no node {node!r} in link {self.spec.name!r}; it has "
                             f"{list(self.spec.streaming_nodes)}")

        def step(sim: Any) -> float:
            pc = self.polarisation_coupling()
            pc.drift(node).advance_to(max(sim.time_ps * 1e-12, pc.drift(node).time_s))
            return float(pc.step(node, angle_deg, axis))
        return self.fanout.locked(step)

    def file_heralds_in(self, registry: Any) -> None:
        """From now on every step of this K link's simulator files its heralds in ``registry``
        (a :class:`~qnode.hal_sim.qdevice.PairRegistry`, module docstring)."""
        assert isinstance(self.spec, KLinkSpec)
        if self.registry is None:
            self.registry = registry
            self.fanout.sim = _HeraldTap(self.sim, self._file_heralds)
        elif self.registry is not registry:
            raise ValueError(f"link {self.spec.name!r} files its heralds elsewhere already")

    def _file_heralds(self, chunk: Any) -> None:
        assert isinstance(self.spec, KLinkSpec)
        heralds = chunk.truth.heralds
        if heralds.size:
            self.registry.herald_records_at(self.spec.link_id, heralds, self.spec.link.gate_ps)

    def truth(self) -> dict[str, Any]:
        """This link's truth (JSON-ready), read under the fan-out's lock."""
        if isinstance(self.spec, KLinkSpec):
            return self.fanout.locked(lambda sim: k_link_truth(sim))
        return self.fanout.locked(lambda sim: m_link_truth(sim, self.spec, self.polarisation))


class _HeraldTap:
    """A K link's simulator as the fan-out sees it: each chunk of :meth:`step`/:meth:`flush`
    goes to ``on_chunk`` first; everything else is the simulator's."""

    def __init__(self, sim: Any, on_chunk: Callable[[Any], None]):
        self._sim = sim
        self._on_chunk = on_chunk

    def step(self) -> Any:
        chunk = self._sim.step()
        self._on_chunk(chunk)
        return chunk

    def flush(self) -> Any:
        chunk = self._sim.flush()
        self._on_chunk(chunk)
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sim, name)


def _build_simulator(spec: LinkSpec | KLinkSpec) -> Any:
    if isinstance(spec, KLinkSpec):
        from .heralding import HeraldingSimulator

        return HeraldingSimulator(spec.link, seed=spec.seed,
                                  slice_ps=int(round(spec.slice_ms * 1e9)))
    from .clock import Clock
    from .detector import Detector
    from .link import Link, Node, simple_node
    from .optics import Fibre
    from .photon_stream import PhotonStreamSimulator
    from .physics_coupling import waveplate_analyzer_vector
    from .polarisation import Analyzer, BellDiagonalState
    from .source import CWSource

    def node(n: NodeSpec) -> Node:
        clock = Clock(n.clock_offset_ps, n.clock_drift_ppm)
        if not n.analyzers:
            return simple_node(n.name, n.channels, length_km=n.length_km,  # type: ignore[arg-type]
                               efficiency=n.efficiency, dark_count_rate_hz=n.dark_count_rate_hz,
                               jitter_ps=n.jitter_ps, clock=clock)

        def det(ch: int) -> Detector:  # as simple_node's: 20 ns dead time
            return Detector(ch, n.efficiency, n.dark_count_rate_hz, 20_000, n.jitter_ps)
        return Node(n.name, Fibre(n.length_km, 0.2),
                    [Analyzer(a.name, waveplate_analyzer_vector(a.angle_deg), det(a.channels[0]),
                              det(a.channels[1])) for a in n.analyzers], clock)

    nodes = tuple(node(n) for n in spec.nodes)
    return PhotonStreamSimulator(
        Link(CWSource(spec.pair_rate_hz), BellDiagonalState.werner(spec.visibility), nodes),
        seed=spec.seed, slice_ps=int(round(spec.slice_ms * 1e9)))


# ------------------------------------------------------------------------------ truth

def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


_PHI_PLUS_T = (1.0, -1.0, 1.0)   # diagonal of Φ+'s correlation matrix, (X, Y, Z)


def _axis(vec: Any) -> tuple[str, int] | None:
    """("Z" | "X", ±1) when the Bloch vector is ±Z or ±X, else None."""
    for basis, k in (("X", 0), ("Z", 2)):
        if abs(abs(float(vec[k])) - 1.0) < 1e-9:
            return basis, (1 if vec[k] > 0 else -1)
    return None


def _setting_truth(sim: Any, spec: LinkSpec) -> dict[str, float]:
    """``qber_z``/``qber_x``/``chsh_s`` of the analyzers as set now (see :func:`m_link_truth`)."""
    a_node, b_node = sim.link.nodes
    corr = sim.link.state.correlation_matrix
    if not any(n.analyzers for n in spec.nodes):   # one H/V analyzer per node: as before
        return {"qber_z": (1 - abs(float(corr[2, 2]))) / 2,
                "qber_x": (1 - abs(float(corr[0, 0]))) / 2}
    vectors = getattr(sim, "_vectors", {})
    va = vectors.get(a_node.name, [a.vector for a in a_node.analyzers])
    vb = vectors.get(b_node.name, [a.vector for a in b_node.analyzers])
    out: dict[str, float] = {}
    for basis, vis in _basis_visibility(sim, va, vb).items():
        out[f"qber_{basis.lower()}"] = (1 - vis) / 2
    if len(va) == 2 and len(vb) == 2:
        names_a = [x.name for x in a_node.analyzers]
        names_b = [x.name for x in b_node.analyzers]
        e = [[sim.truth.expected_correlation[(x, y)] for y in names_b] for x in names_a]
        ideal = [[sum(float(va[i][m]) * _PHI_PLUS_T[m] * float(vb[j][m]) for m in range(3))
                  for j in range(2)] for i in range(2)]

        def chsh(m: list[list[float]]) -> float:
            return m[0][0] + m[0][1] + m[1][0] - m[1][1]
        if abs(chsh(ideal)) > 2 + 1e-9:
            out["chsh_s"] = abs(chsh(e))
    return out


def _basis_visibility(sim: Any, va: Any, vb: Any) -> dict[str, float]:
    """Per Pauli basis both nodes measure (an analyzer at ±Z or ±X as set, before the fibres):
    s_b·σ_a·σ_b·E of those two analyzers, E with the fibres' rotations (the simulator's
    expected correlation), σ = ±1 the analyzers' orientation, s_b Φ+'s sign of the basis: the
    visibility V_b = 1 − 2·Q_b the daemon measures in that basis."""
    a_node, b_node = sim.link.nodes
    out: dict[str, float] = {}
    for basis, k in (("Z", 2), ("X", 0)):
        pa = [(an.name, ax[1]) for an, ax in zip(a_node.analyzers, map(_axis, va), strict=True)
              if ax is not None and ax[0] == basis]
        pb = [(an.name, ax[1]) for an, ax in zip(b_node.analyzers, map(_axis, vb), strict=True)
              if ax is not None and ax[0] == basis]
        if pa and pb:
            (na, sa), (nb, sb) = pa[0], pb[0]
            e = sim.truth.expected_correlation[(na, nb)]
            out[basis] = _PHI_PLUS_T[k] * sa * sb * float(e)
    return out


def _polarisation_truth(sim: Any, spec: LinkSpec, polarisation: Any) -> dict[str, Any]:
    """The ``polarisation`` block of :func:`m_link_truth`."""
    out = polarisation.truth(sim)
    a_node, b_node = sim.link.nodes
    vectors = getattr(sim, "_vectors", {})
    va = vectors.get(a_node.name, [a.vector for a in a_node.analyzers])
    vb = vectors.get(b_node.name, [a.vector for a in b_node.analyzers])
    per_basis = _basis_visibility(sim, va, vb)
    out["visibility_by_basis"] = per_basis
    if per_basis:
        out["visibility"] = sum(per_basis.values()) / len(per_basis)
    elif len(va) == 1 and len(vb) == 1:
        name_a, name_b = a_node.analyzers[0].name, b_node.analyzers[0].name
        out["visibility"] = abs(sim.truth.expected_correlation[(name_a, name_b)])
    return out


def m_link_truth(sim: Any, spec: LinkSpec, polarisation: Any = None) -> dict[str, Any]:
    """Truth of an M link. Top level (telemetry names): ``pair_rate_hz`` (now),
    ``coincidence_rate_hz`` = B·η_a·η_b (true pairs registered at both ends per second, before
    dead time), ``visibility`` (Werner V), ``fidelity_estimate`` = ⟨Φ+|ρ|Φ+⟩; ``qber_z`` /
    ``qber_x``: nodes with one H/V analyzer: (1 − |T_zz|)/2, (1 − |T_xx|)/2 of the state; nodes
    with declared ``analyzers``: (1 − s_b·T_bb)/2 against Φ+ (s = +1 in Z and X), present when
    both nodes have an analyzer in that basis (Bloch vector ±Z, ±X as set now); ``chsh_s``
    (two analyzers per node whose settings violate the CHSH bound for Φ+): |E(a0,b0) +
    E(a0,b1) + E(a1,b0) − E(a1,b1)| of the state at the analyzers as set now (a: node 0's
    analyzers in file order, b: node 1's). QBERs and S include the fibres' polarisation
    rotations. ``polarisation`` (links with drift or compensators): per node the fibre's rotation
    D (3×3, on the photon's Stokes vector) and its angle (deg), the walk's angle (rad), the steps
    applied (s, deg, axis), the compensator's angle (deg) and C·D; ``relative_rotation_deg``;
    ``visibility_by_basis`` and ``visibility``, the true visibility now (mean over the bases both
    ends measure of V_b = 1 − 2Q_b, as the daemon's ``visibility``; ``visibility`` at the top
    level stays the source's Werner V). ``detail``: pairs emitted / both detected / registered
    at both ends, singles and dark counts per node and channel, the expected correlation E of
    the analyzers as set now ("node:analyzer|node:analyzer"), arm efficiencies, each node's
    clock (offset ps, drift ppm) and channel delays (ps, fibre + detector + clock offset)."""
    t = sim.truth
    a, b = (n.name for n in sim.link.nodes)
    rate = float(getattr(sim.link.source, "pair_rate_hz", float("nan")))
    state = sim.link.state
    clocks = {n.name: {"offset_ps": n.clock.offset_ps, "drift_ppm": n.clock.drift_ppm}
              for n in sim.link.nodes}
    return {
        "type": "M", "nodes": [a, b],
        "pair_rate_hz": rate,
        "coincidence_rate_hz": rate * t.arm_efficiency(a) * t.arm_efficiency(b),
        "visibility": spec.visibility,
        **_setting_truth(sim, spec),
        "fidelity_estimate": state.fidelity("phi+"),
        "detail": {
            "duration_ps": t.duration_ps, "pairs_emitted": t.pairs_emitted,
            "pairs_both_detected": t.pairs_both_detected,
            "pairs_registered_both": t.pairs_registered_both,
            "singles": {n: {str(c): k for c, k in per.items()} for n, per in t.singles.items()},
            "dark_counts": {n: {str(c): k for c, k in per.items()}
                            for n, per in t.dark_counts.items()},
            "expected_correlation": {f"{a}:{x}|{b}:{y}": e
                                     for (x, y), e in t.expected_correlation.items()},
            "arm_efficiency": {n: t.arm_efficiency(n) for n in (a, b)},
            "clock": clocks,
            "channel_delay_ps": {n: {str(c): d for c, d in per.items()}
                                 for n, per in t.channel_delay_ps.items()},
            "state_weights": dict(state.weights)},
        **({} if polarisation is None
           else {"polarisation": _polarisation_truth(sim, spec, polarisation)})}


def k_link_truth(sim: Any) -> dict[str, Any]:
    """Truth of a K link. Top level (telemetry names): ``herald_rate_hz`` (closed form),
    ``fidelity_estimate`` (mean true fidelity of the heralds so far, false ones at 1/4; the
    closed form before the first), ``mean_fidelity_true`` (of the true heralds),
    ``false_heralds_total``, ``true_heralds_total``. ``detail``: the run's counters
    (:meth:`~qnode.hal_sim.heralding.HeraldRunTruth.as_dict`), the station, the ends, the attempt
    period and gate (ps) and each channel's role and delay, as a classifier needs them."""
    t, link = sim.truth, sim.link
    n_true, n_false = sum(t.true_heralds.values()), sum(t.false_heralds.values())
    fid = ((t.fidelity_sum_true + 0.25 * n_false) / (n_true + n_false) if n_true + n_false
           else sim.expected.mean_fidelity)
    detail = t.as_dict()
    detail.update(station=link.station, ends=list(link.ends), attempt_period_ps=link.period_ps,
                  gate_ps=link.gate_ps,
                  channels=dict(zip(("c_h", "c_v", "d_h", "d_v"), link.channels, strict=True)),
                  channel_delay_ps={str(d.channel): d.delay_ps for d in link.detectors})
    return {"type": "K", "station": link.station, "ends": list(link.ends),
            "herald_rate_hz": sim.expected.herald_rate_hz,
            "fidelity_estimate": _finite(fid),
            "mean_fidelity_true": _finite(t.mean_fidelity_true),
            "true_heralds_total": n_true, "false_heralds_total": n_false,
            "detail": detail}


class TruthWriter:
    """Rewrites ``path`` with ``snapshot()`` as JSON every ``interval_s`` (atomically: a
    temporary file in the same directory, then ``os.replace``) and once more at :meth:`stop`."""

    def __init__(self, path: str | Path, snapshot: Callable[[], dict[str, Any]],
                 interval_s: float = 1.0):
        self.path = Path(path)
        self.snapshot = snapshot
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self) -> None:
        data = json.dumps(self.snapshot(), indent=1, allow_nan=False)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(data)
        os.replace(tmp, self.path)

    def _write_logged(self) -> None:
        try:
            self.write()
        except (OSError, ValueError) as exc:  # keep serving; say why the file is stale
            log.warning("cannot write the truth file %s: %s", self.path, exc)

    def start(self) -> None:
        self.write()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hal_sim-truth")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write_logged()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.write()


# ------------------------------------------------------------------------------ the bench

class Bench:
    """Running simulated instruments; use as a context manager. ``servers[name]`` has the
    server (its ``faults`` inject faults) or the self-serving service, ``devices[name]`` the
    simulated device, ``links[name]`` each link's :class:`LinkRuntime`. ``truth_path``: write
    the links' truth there (module docstring)."""

    def __init__(self, spec: BenchSpec, path: str = "<bench>", *,
                 truth_path: str | Path | None = None, truth_interval_s: float = 1.0):
        from .instruments import couple  # the coupling rules live with the kinds

        self.spec = spec
        self.path = path
        self.links = {link.name: LinkRuntime(link) for link in spec.links}
        self._registry: Any = None
        self.devices: dict[str, Any] = {}
        self.servers: dict[str, Any] = {}
        self._started_at = time.time()
        for i, inst in enumerate(spec.instruments):
            kind = KINDS[inst.kind]
            if kind.style == "service":
                service = _build_service(self, inst, path, i)
                self.devices[inst.name] = getattr(service, "device", service)
                self.servers[inst.name] = service
                continue
            device = _build_device(inst, path, i, self)
            self.devices[inst.name] = device
            if (kind.couples == "waveplate" and "link" in inst.options
                    and inst.options.get("mount", "analyzer") != "analyzer"):
                self._couple_compensator(f"instrument[{i}].options", device, inst.options)
            elif kind.couples is not None and "link" in inst.options:
                couple(self, f"instrument[{i}].options", kind.couples, device, inst.options)
            if inst.serve == "pty":
                self.servers[inst.name] = PtyServer(device, inst.name)
            else:
                self.servers[inst.name] = TcpServer(device, inst.name, port=inst.port)
        self.truth_writer = (None if truth_path is None else
                             TruthWriter(truth_path, self.truth, truth_interval_s))

    def pair_registry(self) -> Any:
        """The bench's one :class:`~qnode.hal_sim.qdevice.PairRegistry`, made on first use and
        shared by every qdevice, so a repeater's memory can act on pairs of two links at once
        (seeded with the bench name's CRC, for reproducible measurement sampling)."""
        if self._registry is None:
            import zlib

            from .qdevice import PairRegistry
            self._registry = PairRegistry(seed=zlib.crc32(self.spec.name.encode()))
        return self._registry

    def _couple_compensator(self, key: str, device: Any, options: Mapping[str, Any]) -> None:
        """An ELL14 with ``mount = "compensator"``: the polarisation compensator of ``node``
        of the M link ``link`` (module docstring); errors name ``key.<field>``."""
        from .physics_coupling import CompensatorMount

        if options.get("mount") != "compensator":
            raise _fail(self.path, f"{key}.mount", f"must be \"analyzer\" (default) or "
                                                   f"\"compensator\", got {options.get('mount')!r}")
        if "analyzer" in options:
            raise _fail(self.path, f"{key}.analyzer",
                        "a compensator sits before all of a node's analyzers: drop analyzer")
        rt = self.link_runtime(key, options.get("link"))
        if isinstance(rt.spec, KLinkSpec):
            raise _fail(self.path, f"{key}.link",
                        f"{rt.spec.name!r} is a K link; compensators couple to M links")
        node = options.get("node")
        names = [n.name for n in rt.spec.nodes]
        if node not in names:
            raise _fail(self.path, f"{key}.node", f"must name a node of link {rt.spec.name!r}, "
                                                   f"one of {names}; got {node!r}")
        zero = options.get("zero_deg", 0.0)
        if isinstance(zero, bool) or not isinstance(zero, (int, float)):
            raise _fail(self.path, f"{key}.zero_deg", f"must be a number (deg), got {zero!r}")
        try:
            rt.polarisation_coupling().add_compensator(
                CompensatorMount(node, device, float(zero)))
        except ValueError as exc:
            raise _fail(self.path, f"{key}.node", str(exc)) from exc

    def link_runtime(self, key: str, link: object) -> LinkRuntime:
        """The link named ``link`` (``None``: the bench's only link); errors name ``key``."""
        if link is None:
            if len(self.links) == 1:
                return next(iter(self.links.values()))
            if not self.links:
                raise _fail(self.path, f"{key}.link",
                            "needs a [[link]] (the photons); the file has none")
            raise _fail(self.path, f"{key}.link", f"name one of the links {sorted(self.links)}")
        if link not in self.links:
            raise _fail(self.path, f"{key}.link",
                        f"{link!r} is not a link of this bench; it has {sorted(self.links)}")
        return self.links[link]  # type: ignore[index]

    def feed(self, instrument_key: str, link: str | None, node: str | None) -> Any:
        """A :class:`~qnode.hal_sim.tagger.NodeFeed` of ``node`` of ``link`` for the tagger
        ``instrument_key`` (errors name ``instrument_key.options.link`` / ``.node``); a node is
        streamed by at most one tagger."""
        key = f"{instrument_key}.options"
        rt = self.link_runtime(key, link)
        nodes = rt.spec.streaming_nodes
        if node is None:
            if isinstance(rt.spec, KLinkSpec):
                node = rt.spec.link.station
            else:
                raise _fail(self.path, f"{key}.node", f"name the node it streams, one of {nodes}")
        if node not in nodes:
            raise _fail(self.path, f"{key}.node",
                        f"{node!r} is not a node of link {rt.spec.name!r} that streams tags; "
                        f"those are {list(nodes)}")
        if node in rt.streamed:
            raise _fail(self.path, f"{key}.node",
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
