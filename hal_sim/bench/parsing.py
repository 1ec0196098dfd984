"""Reading a bench file: TOML text to a :class:`~qnode.hal_sim.bench.spec.BenchSpec`.

Every value is checked where it is read; a :class:`~qnode.hal_sim.bench.spec.BenchConfigError`
names the file, the key (``instrument[2].kind``, ``link[0].node[1].length_km``) and what is
wrong with it. The format is described in :mod:`qnode.hal_sim.bench`.
"""
from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from ..physics.detector import Detector
from ..physics.eavesdropper import BASIS_AXES, Eavesdropper
from ..physics.heralding import HeraldingLink
from ..physics.optics import Fibre
from ..physics.polarisation import PolarisationDrift, PolarisationStep
from .kinds import KINDS
from .spec import (
    AnalyzerSpec,
    BenchConfigError,
    BenchSpec,
    InstrumentSpec,
    KLinkSpec,
    LinkSpec,
    NodeSpec,
    config_error,
)


class _Table:
    """Reads one TOML table, naming ``path: key.field`` in every error."""

    def __init__(self, path: str, key: str, raw: object, allowed: set[str]):
        if not isinstance(raw, dict):
            raise config_error(path, key, "must be a table")
        extra = set(raw) - allowed
        if extra:
            raise config_error(path, f"{key}.{sorted(extra)[0]}", "unknown key")
        self.path, self.key, self.raw = path, key, raw

    def fail(self, field: str, problem: str) -> BenchConfigError:
        return config_error(self.path, f"{self.key}.{field}", problem)

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
        raise config_error(path, sorted(unknown)[0],
                           "unknown section (expected [bench], [[instrument]], [[link]])")
    bench = _Table(path, "bench", raw.get("bench", {}), {"name"})
    name = bench.name("name", Path(path).stem)
    items = raw.get("instrument", [])
    if not isinstance(items, list) or not items:
        raise config_error(path, "instrument", "list at least one [[instrument]]")
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
        raise config_error(path, "link", "must be [[link]] tables")
    links: list[LinkSpec | KLinkSpec] = []
    names: set[str] = set()
    ids: set[str] = set()
    for i, item in enumerate(raw):
        key = f"link[{i}]"
        if not isinstance(item, dict):
            raise config_error(path, key, "must be a table")
        kind = item.get("type")
        if kind not in ("M", "K"):
            raise config_error(path, f"{key}.type", f"must be \"M\" or \"K\", got {kind!r}")
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
    specs: list[NodeSpec] = []
    for i, n in enumerate(nodes):
        nt = _Table(t.path, f"{t.key}.node[{i}]", n, _NODE_KEYS)
        analyzers = _parse_analyzers(nt)
        if analyzers and "channels" in nt.raw:
            raise nt.fail("channels", "give channels or analyzers (each with its channels), "
                                      "not both")
        channels = (tuple(c for a in analyzers for c in a.channels) if analyzers
                    else nt.channels("channels", 2))
        drift, drift_seed = _parse_drift(nt)
        eve = _parse_eavesdropper(nt)
        if eve is not None and any(s.eavesdropper is not None for s in specs):
            raise nt.fail("eavesdropper", "an eavesdropper listens on one node's fibre only; "
                                          f"{t.key}.node[0] has one already")
        specs.append(NodeSpec(
            nt.name("name"), channels,
            nt.number("length_km", 0.0, 0, 1e4), nt.number("efficiency", 0.8, 0, 1),
            nt.number("dark_count_rate_hz", 100.0, 0, 1e9), nt.number("jitter_ps", 30.0, 0, 1e6),
            nt.integer("clock_offset_ps", 0, -10**15, 10**15),
            nt.number("clock_drift_ppm", 0.0, -1e4, 1e4), analyzers, drift, drift_seed, eve))
    if specs[0].name == specs[1].name:
        raise config_error(t.path, f"{t.key}.node[1].name", f"{specs[0].name!r} is used twice")
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


_EVE_KEYS = {"fraction", "bases", "weights", "from_s", "until_s"}


def _parse_eavesdropper(nt: _Table) -> Eavesdropper | None:
    """A node's ``eavesdropper = {fraction, bases, weights, from_s, until_s}`` (or
    ``[link.node.eavesdropper]``): intercept–resend on its fibre, or None."""
    raw = nt.raw.get("eavesdropper")
    if raw is None:
        return None
    t = _Table(nt.path, f"{nt.key}.eavesdropper", raw, _EVE_KEYS)
    if "fraction" not in t.raw:
        raise t.fail("fraction", "is required: the fraction of the node's photons she "
                                 "intercepts, a number in [0, 1]")
    fraction = t.number("fraction", 0.0, 0, 1)
    raw_bases = t.raw.get("bases", ["Z", "X"])
    if not isinstance(raw_bases, list) or not raw_bases:
        raise t.fail("bases", f"must be a non-empty list of bases, each \"Z\", \"X\", \"Y\" "
                              f"or a Bloch vector [x, y, z], got {raw_bases!r}")
    bases: list[str | tuple[float, float, float]] = []
    for j, b in enumerate(raw_bases):
        if isinstance(b, str) and b.upper() in BASIS_AXES:
            bases.append(b.upper())
        elif (isinstance(b, list) and len(b) == 3
              and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                      and math.isfinite(x) for x in b)
              and math.hypot(*b) >= 1e-12):
            bases.append((float(b[0]), float(b[1]), float(b[2])))
        else:
            raise t.fail(f"bases[{j}]", "must be \"Z\", \"X\", \"Y\" or a Bloch vector [x, y, z] "
                                        f"(three numbers, not all zero), got {b!r}")
    weights = t.raw.get("weights")
    if weights is not None and (
            not isinstance(weights, list) or len(weights) != len(bases)
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                       and math.isfinite(x) and x >= 0 for x in weights)
            or sum(weights) <= 0):
        raise t.fail("weights", f"must be {len(bases)} numbers >= 0 (one per basis, not all 0), "
                                f"got {weights!r}")
    from_s = t.number("from_s", 0.0, 0, 1e9)
    until_s = t.number("until_s", 0.0, 0, 1e9) if "until_s" in t.raw else None
    if until_s is not None and until_s <= from_s:
        raise t.fail("until_s", f"must be after from_s ({from_s:g} s), got {until_s:g}")
    return Eavesdropper(nt.name("name"), fraction, tuple(bases),
                        None if weights is None else tuple(float(x) for x in weights),
                        from_s, until_s)


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
    fields: dict[str, Any] = dict(
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
        raise config_error(t.path, t.key, str(exc)) from exc
    return KLinkSpec(name, link, seed, t.key, id=t.name("id", name),
                     slice_ms=t.number("slice_ms", 50.0, 0.001, 10_000))
