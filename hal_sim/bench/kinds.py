"""The instrument kinds a bench file can name, and how the bench builds and serves each twin.

The kinds are those of the one registry of instrument kinds, :data:`qnode.drivers.kinds.KINDS`
(a bench's ``kind = "tc200"`` means what a node config's does), plus the simulator-only
``qdevice_truth``. For each, :data:`KINDS` holds the twin's factory (``"module:Name"``, imported
only when an instrument of the kind is built), the transports its real counterpart uses ("pty"
for serial instruments, "tcp" for a TCP socket; a serial instrument may also be served on TCP,
reached with a ``socket://`` URL, which survives restarts) and what the twin couples to in an M
link's physics: the driver registry's function of the kind when it is a pump, an oven or a
waveplate (:mod:`qnode.hal_sim.bench.coupling`).
"""
from __future__ import annotations

import dataclasses

from qnode.drivers.kinds import KINDS as DRIVER_KINDS

#: Option keys a coupled instrument takes besides its twin's own keyword arguments.
COUPLING_KEYS = {"pump": ("link",), "oven": ("link",),
                 "waveplate": ("link", "node", "analyzer", "zero_deg", "mount")}

#: How a kind's twin is built and served (:class:`Kind`).
STYLES = ("wire", "linked", "service")


@dataclasses.dataclass(frozen=True)
class Kind:
    """How to build one kind of simulated instrument: ``factory`` is "module:Name" (imported
    when used), ``serves`` the transports its real counterpart uses.

    ``style`` "wire": the factory builds a :class:`~qnode.hal_sim.twins.serve.WireDevice` that
    the bench serves on a pty or a TCP port; ``style`` "linked": the same, built by
    ``factory(bench, key, **options)`` (a twin that needs the bench's links). ``style``
    "service": ``factory(bench, key, **options)`` builds an object that serves itself, with
    ``start()``, ``stop()`` and ``addresses() -> {label: address}``. ``couples``: what the device
    is to an M link's physics ("pump", "oven", "waveplate") when its options name a ``link``.
    ``startup_errors``: reply fragments that mark a ``startup`` command as refused."""

    factory: str
    serves: tuple[str, ...]
    description: str
    style: str = "wire"
    couples: str | None = None
    startup_errors: tuple[bytes, ...] = ()


KINDS: dict[str, Kind] = {}


def register(name: str, factory: str, serves: tuple[str, ...], description: str,
             style: str = "wire", couples: str | None = None,
             startup_errors: tuple[bytes, ...] = ()) -> None:
    """Make a simulated instrument kind available to bench files."""
    if couples is not None and couples not in COUPLING_KEYS:
        raise ValueError(f"register: couples must be one of {sorted(COUPLING_KEYS)}")
    if style not in STYLES:
        raise ValueError(f"register: style must be one of {STYLES}, got {style!r}")
    KINDS[name] = Kind(factory, serves, description, style, couples, startup_errors)


def register_twin(name: str, factory: str, serves: tuple[str, ...], note: str = "",
                  style: str = "wire", startup_errors: tuple[bytes, ...] = ()) -> None:
    """Register the twin of the instrument kind ``name`` of :data:`qnode.drivers.kinds.KINDS`:
    its description is the registry's (and ``note``), what it couples to its function."""
    kind = DRIVER_KINDS[name]
    couples = kind.function if kind.function in COUPLING_KEYS else None
    register(name, factory, serves, f"{kind.description}{note}", style, couples,
             startup_errors)


register_twin("elliptec", "qnode.hal_sim.twins.elliptec:ElliptecTwin", ("pty", "tcp"))
register_twin("tc200", "qnode.hal_sim.twins.tc200:TC200Twin", ("pty", "tcp"),
              startup_errors=(b"CMD_NOT_DEFINED", b"CMD_ARG_RANGE_ERR"))
register_twin("ibeam", "qnode.hal_sim.twins.ibeam:IBeamSmartTwin", ("pty", "tcp"),
              startup_errors=(b"%SYS-E",))
register_twin("itc4001", "qnode.hal_sim.twins.itc4001:Itc4001Sim", ("tcp",),
              "; reach it as TCPIP::127.0.0.1::<port>::SOCKET")
register_twin("id900", "qnode.hal_sim.bench.services:ID900Service", ("zmq",),
              ", streaming a node of one of the bench's links", style="service")
register_twin("single_quantum", "qnode.hal_sim.bench.services:SingleQuantumService", ("tcp",),
              style="service")
register_twin("qdevice", "qnode.hal_sim.bench.memories:qdevice_twin", ("tcp",),
              " on one or more K links, holding the pairs they herald", style="linked")
register("qdevice_truth", "qnode.hal_sim.bench.memories:qdevice_truth", ("tcp",),
         "ground truth of the bench's quantum memories (simulator only): the true Bell weights "
         "of the pair a qubit holds", style="linked")
