"""The bench's quantum memories: a QDevice twin per memory node, all sharing the bench's pair
registry, and the registry's ground truth on a wire of its own.

``qdevice_twin`` and ``qdevice_truth`` are the factories of the bench kinds ``qdevice`` and
``qdevice_truth`` (style "linked" in :mod:`qnode.hal_sim.bench.kinds`): they need the bench's K
links, whose simulators file every herald in the registry the twins bind pairs from.
"""
from __future__ import annotations

import math
import re
from typing import Any

from qnode.drivers import qdevice_protocol as wire
from qnode.drivers.qdevice_noise import (
    KEYS as GATE_NOISE_KEYS,
    depolarising_parameter,
    given_key,
    min_average_fidelity,
)

from ..twins.pair_registry import PairRegistry
from ..twins.qdevice import QDeviceConfig, QDeviceTwin
from ..twins.registry_oracle import RegistryOracle
from .context import BenchContext
from .spec import KLinkSpec, config_error


def qdevice_twin(bench: BenchContext, key: str, *, link: str | list[str] | None = None,
                 node: str | None = None, n_qubits: int = 4, t1_ns: float = math.inf,
                 t2_ns: float = math.inf, readout_error: float = 0.0, seed: int | None = None,
                 gate_depolarising_1q: float | None = None,
                 gate_average_fidelity_1q: float | None = None,
                 gate_fidelity_1q: float | None = None,
                 gate_depolarising_2q: float | None = None,
                 gate_average_fidelity_2q: float | None = None,
                 gate_fidelity_2q: float | None = None,
                 channels: list[dict[str, Any]] | None = None) -> QDeviceTwin:
    """A :class:`~qnode.hal_sim.twins.qdevice.QDeviceTwin` named ``node``, the memory of ``node``
    on the K link ``link`` (or on each of a list of K links: a repeater), sharing the bench's
    :class:`~qnode.hal_sim.twins.pair_registry.PairRegistry`, where every step of those links'
    simulators files its heralds; errors name ``key.options.<field>``.

    The gate noise of the k-qubit gates is given as the depolarising parameter g
    (``gate_depolarising_<k>q``, or by its earlier name ``gate_fidelity_<k>q``) or as the average
    gate fidelity (``gate_average_fidelity_<k>q``), at most one of them
    (:mod:`qnode.drivers.qdevice_noise`); default g = 1, noiseless.

    ``channels``: the quantum channels that start here (:func:`channel_transmission`), each a
    table ``{name, to, length_km, loss_db_per_km = 0.2, efficiency = 1.0, depolarising = 0.0}``:
    ``to`` the node whose qdevice absorbs its photons, ``efficiency`` both memory–photon
    interfaces' together."""
    okey = f"{key}.options"
    g1 = _depolarising(bench.path, okey, 1, {
        "gate_depolarising_1q": gate_depolarising_1q,
        "gate_average_fidelity_1q": gate_average_fidelity_1q,
        "gate_fidelity_1q": gate_fidelity_1q})
    g2 = _depolarising(bench.path, okey, 2, {
        "gate_depolarising_2q": gate_depolarising_2q,
        "gate_average_fidelity_2q": gate_average_fidelity_2q,
        "gate_fidelity_2q": gate_fidelity_2q})
    if link is None:
        raise config_error(bench.path, f"{okey}.link",
                           "name the K link whose heralded pairs it holds")
    names = link if isinstance(link, list) else [link]
    if not names or not all(isinstance(n, str) for n in names):
        raise config_error(bench.path, f"{okey}.link", f"must be a link name or a list of them, "
                                                f"got {link!r}")
    runtimes = []
    for name in names:
        rt = bench.link_runtime(okey, name)
        if not isinstance(rt.spec, KLinkSpec):
            raise config_error(bench.path, f"{okey}.link", f"{rt.spec.name!r} is an M link; a "
                                                           f"qdevice holds the pairs of a K link")
        ends = list(rt.spec.link.ends)
        if node not in ends:
            raise config_error(bench.path, f"{okey}.node",
                               f"must name a memory node of link {rt.spec.name!r}, one of {ends}; "
                               f"got {node!r}")
        if node in rt.qdevices:
            raise config_error(bench.path, f"{okey}.node",
                               f"{node!r} of link {rt.spec.name!r} already has a qdevice, "
                               f"{rt.qdevices[node]}")
        runtimes.append(rt)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise config_error(bench.path, f"{okey}.seed", f"must be an integer >= 0, got {seed!r}")
    try:
        config = QDeviceConfig(n_qubits=n_qubits, t1_ns=t1_ns, t2_ns=t2_ns,
                               gate_fidelity_1q=g1, gate_fidelity_2q=g2,
                               readout_error=readout_error)
    except (TypeError, ValueError) as exc:
        m = re.match(r"QDeviceConfig\.(\w+)", str(exc))
        field = m[1] if m else ("t2_ns" if "T2" in str(exc) else None)
        raise config_error(bench.path, f"{okey}.{field}" if field else okey, str(exc)) from exc
    assert isinstance(node, str)   # an end of every link named
    registry = bench.pair_registry()
    twin = QDeviceTwin(config, name=node, registry=registry, seed=seed)
    for i, table in enumerate(channels or []):
        _add_channel(bench.path, f"{okey}.channels[{i}]", registry, node, table)
    for rt in runtimes:
        rt.file_heralds_in(registry)
        rt.qdevices[node] = key
    return twin


def _depolarising(path: str, okey: str, n_qubits: int, given: dict[str, float | None]) -> float:
    """g of the ``n_qubits`` gates from the one of ``given`` (key -> value or None) that is set
    (default 1); errors name ``okey.<key>``."""
    present = [k for k, v in given.items() if v is not None]
    try:
        key = given_key(present, n_qubits)
    except ValueError as exc:
        raise config_error(path, f"{okey}.{present[-1]}", str(exc)) from None
    if key is None:
        return 1.0
    value = given[key]
    average = key == GATE_NOISE_KEYS[n_qubits].average_fidelity
    lo = min_average_fidelity(n_qubits) if average else 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= 1:
        raise config_error(path, f"{okey}.{key}",
                           f"must be a number in [{lo:g}, 1], got {value!r}")
    return depolarising_parameter(value, n_qubits) if average else float(value)


CHANNEL_KEYS = frozenset({"name", "to", "length_km", "loss_db_per_km", "efficiency",
                          "depolarising"})


def channel_transmission(length_km: float, loss_db_per_km: float, efficiency: float) -> float:
    """The probability that a photon sent down a fibre of ``length_km`` (km) with
    ``loss_db_per_km`` (dB/km) is stored at the far end, given both interfaces' ``efficiency``:
    η = efficiency · 10^(−loss · length / 10)."""
    return efficiency * 10 ** (-loss_db_per_km * length_km / 10)


def _add_channel(path: str, where: str, registry: PairRegistry, node: str, table: Any) -> None:
    if not isinstance(table, dict):
        raise config_error(path, where, f"must be a table, got {table!r}")
    unknown = sorted(set(table) - CHANNEL_KEYS)
    if unknown:
        raise config_error(path, f"{where}.{unknown[0]}",
                           f"unknown key; the keys are {', '.join(sorted(CHANNEL_KEYS))}")
    name, to = table.get("name"), table.get("to")
    for field, value in (("name", name), ("to", to)):
        if not isinstance(value, str) or not wire.LINK.fullmatch(value):
            raise config_error(path, f"{where}.{field}",
                               f"must be 1-64 of [A-Za-z0-9_.:-], got {value!r}")
    if to == node:
        raise config_error(path, f"{where}.to", f"a channel runs to another node than {node!r}")
    numbers = {}
    for field, default, hi in (("length_km", None, 1e5), ("loss_db_per_km", 0.2, 100.0),
                               ("efficiency", 1.0, 1.0), ("depolarising", 0.0, 1.0)):
        value = table.get(field, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value <= hi:
            raise config_error(path, f"{where}.{field}", f"must be a number in [0, {hi:g}], "
                                                         f"got {value!r}")
        numbers[field] = float(value)
    try:
        registry.add_channel(name, node, to, transmission=channel_transmission(
            numbers["length_km"], numbers["loss_db_per_km"], numbers["efficiency"]),
            depolarising=numbers["depolarising"])
    except ValueError as exc:
        raise config_error(path, f"{where}.name", str(exc)) from None


def qdevice_truth(bench: BenchContext, key: str) -> RegistryOracle:
    """The :class:`~qnode.hal_sim.twins.registry_oracle.RegistryOracle` of the bench's pair
    registry: the true state of any pair its qdevices hold, for tests (``SIM:PAIR? <device>
    <q>``), and the control of its K links' interference (``SIM:VIS <link> <V>``)."""
    return RegistryOracle(bench.pair_registry(), bench.links)
