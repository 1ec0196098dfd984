"""The instrument kinds qnode knows, in one registry: what a node config's ``kind`` may be, which
driver opens it, and what the simulator's bench serves as its twin.

Three places read :data:`KINDS` instead of keeping lists of their own: the node config
(``qnode.daemon.runtime.config``: the allowed ``kind`` values, the tagger kinds, which kinds a
role accepts), the daemon's driver factory (``qnode.daemon.runtime.instruments``) and the bench
of ``qnode.hal_sim`` (which kinds have a twin, and what a twin couples to).

Each :class:`InstrumentKind` names its classes by import path (``"module:Class"``), imported only
when used, so reading the registry imports no driver (and no serial, VISA or ZeroMQ library).
A control driver builds itself from a config's address, name, timeout and options with
:meth:`qnode.drivers.driver.Driver.from_config`.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: What an instrument does for the node (a role asks for kinds by function).
FUNCTIONS = ("waveplate", "oven", "pump", "detectors", "tagger", "memory")


def import_path(path: str) -> Any:
    """The object at ``"package.module:Name"``."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"an import path is 'module:Name', got {path!r}")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class InstrumentKind:
    """One kind of instrument.

    ``driver``: the control driver (``"module:Class"``, a
    :class:`~qnode.drivers.driver.Driver`), or None for a kind without a control link (a file
    replay). ``tagger``: for a time tagger, the class of its tag stream (a
    :class:`~qnode.drivers.tagger.TimeTagger`), else None. ``address``: what a config's
    ``address`` is for this kind. ``function``: one of :data:`FUNCTIONS`. ``stream_defaults``:
    a tagger's stream options (``[instruments.<name>.options]``) and their defaults.
    """

    name: str
    driver: str | None
    address: str
    description: str
    function: str
    tagger: str | None = None
    stream_defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            raise ValueError(f"InstrumentKind {self.name!r}: function must be one of "
                             f"{FUNCTIONS}, got {self.function!r}")
        if (self.function == "tagger") != (self.tagger is not None):
            raise ValueError(f"InstrumentKind {self.name!r}: a tagger kind (and only one) names "
                             f"its stream class")
        object.__setattr__(self, "stream_defaults", MappingProxyType(dict(self.stream_defaults)))

    @property
    def is_tagger(self) -> bool:
        """Whether the instrument streams time tags."""
        return self.tagger is not None

    @property
    def implementation(self) -> str:
        """The dotted name of the class the daemon opens (the driver, else the stream)."""
        path = self.driver or self.tagger
        assert path is not None
        return path.replace(":", ".")

    def driver_class(self) -> Any:
        """The control driver's class (imported now); ValueError for a kind without one."""
        if self.driver is None:
            raise ValueError(f"a {self.name} has no control driver")
        return import_path(self.driver)

    def tagger_class(self) -> Any:
        """The tag stream's class (imported now); ValueError for a kind that is no tagger."""
        if self.tagger is None:
            raise ValueError(f"a {self.name} is not a time tagger")
        return import_path(self.tagger)


def _kinds(*kinds: InstrumentKind) -> Mapping[str, InstrumentKind]:
    return MappingProxyType({k.name: k for k in kinds})


#: Every instrument kind, by name (the order of the config reference's table).
KINDS: Mapping[str, InstrumentKind] = _kinds(
    InstrumentKind("elliptec", "qnode.drivers.elliptec:Elliptec", "serial port or pyserial URL",
                   "Thorlabs Elliptec ELL14 rotation mount (a waveplate)", "waveplate"),
    InstrumentKind("tc200", "qnode.drivers.tc200:TC200", "serial port or pyserial URL",
                   "Thorlabs TC200 temperature controller (the SPDC crystal's oven)", "oven"),
    InstrumentKind("ibeam", "qnode.drivers.ibeam:IBeamSmart", "serial port or pyserial URL",
                   "Toptica iBeam smart laser (the pump)", "pump"),
    InstrumentKind("itc4001", "qnode.drivers.itc4001:Itc4001", "VISA resource name",
                   "Thorlabs ITC4001 laser-diode and TEC controller, SCPI (the pump)", "pump"),
    InstrumentKind("single_quantum", "qnode.drivers.single_quantum:SingleQuantum",
                   "host or host:port", "Single Quantum SNSPD system (bias control and counts "
                   "over TCP)", "detectors"),
    InstrumentKind("id900", "qnode.drivers.id900:ID900", "host or tcp://host:port",
                   "ID Quantique ID900/ID1000 Time Controller (SCPI and DLT over ZeroMQ)",
                   "tagger", tagger="qnode.drivers.id900:ID900Tagger",
                   stream_defaults={"chunk_interval_s": 0.05, "max_latency_s": 0.2}),
    InstrumentKind("replay", None, "tag file path (PTU or qnode raw)",
                   "a recorded tag file replayed as a time tagger", "tagger",
                   tagger="qnode.drivers.replay:FileReplayTagger",
                   stream_defaults={"pace": "realtime"}),
    InstrumentKind("qdevice", "qnode.drivers.qdevice:QDevice", "host:port or socket://host:port",
                   "quantum memory of a node (QDEVICE/1 over TCP)", "memory"),
)


def kinds_for(function: str) -> tuple[str, ...]:
    """The names of the kinds with ``function`` (one of :data:`FUNCTIONS`), in registry order."""
    if function not in FUNCTIONS:
        raise ValueError(f"function must be one of {FUNCTIONS}, got {function!r}")
    return tuple(k.name for k in KINDS.values() if k.function == function)


#: The time tagger kinds.
TAGGER_KINDS = kinds_for("tagger")
