"""From a config's ``[instruments.<name>]`` table to an open driver (and a time tagger).

The daemon never imports ``hal_sim``: a simulated instrument is reached by its address exactly as
a real one (DESIGN §2). ``options`` are passed to the driver's constructor, except the keys a
tagger needs for streaming (``dlt``, ``inputs``, ``chunk_interval_s``, ``max_latency_s``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from qnode.daemon.runtime.config import InstrumentConfig
from qnode.drivers.driver import Driver
from qnode.drivers.tagger import TimeTagger

#: option keys used to build the streaming side of a tagger, not its control driver
TAGGER_OPTIONS = ("dlt", "inputs", "chunk_interval_s", "max_latency_s")


class InstrumentConfigError(ValueError):
    """An instrument's options do not fit its driver; names the instrument."""


def _driver_options(cfg: InstrumentConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.options.items() if k not in TAGGER_OPTIONS}


def _split_host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if host and port.isdigit():
        return host, int(port)
    return address, default_port


def driver_factory(cfg: InstrumentConfig) -> Callable[[], Driver] | None:
    """A function that builds and opens the driver of ``cfg`` (run on the instrument's thread),
    or None for kinds without a control link (``replay``)."""
    opts = _driver_options(cfg)
    t = cfg.timeout_s

    def build() -> Driver:
        try:
            if cfg.kind == "elliptec":
                from qnode.drivers.elliptec import Elliptec
                return Elliptec(cfg.address, timeout_s=t, **opts).open()
            if cfg.kind == "tc200":
                from qnode.drivers.tc200 import TC200
                return TC200(cfg.address, timeout_s=t, **opts).open()
            if cfg.kind == "ibeam":
                from qnode.drivers.ibeam import IBeamSmart
                return IBeamSmart(cfg.address, timeout_s=t, **opts).open()
            if cfg.kind == "itc4001":
                from qnode.drivers.itc4001 import Itc4001
                return Itc4001.over_visa(cfg.address, timeout_s=t, **opts).open()
            if cfg.kind == "single_quantum":
                from qnode.drivers.single_quantum import CONTROL_PORT, SingleQuantum
                host, port = _split_host_port(cfg.address, CONTROL_PORT)
                return SingleQuantum.connect(host, control_port=port, timeout_s=t,
                                             **opts).open()
            if cfg.kind == "qdevice":
                from qnode.drivers.qdevice import QDevice
                return QDevice(cfg.address, timeout_s=t, **opts).open()
            if cfg.kind == "id900":
                from qnode.drivers.id900 import ID900
                return ID900(cfg.address, name=f"ID900 {cfg.name}", timeout_s=t,
                             **opts).open()
        except TypeError as exc:  # an option the driver does not take
            raise InstrumentConfigError(
                f"instruments.{cfg.name}.options: {exc}") from None
        raise InstrumentConfigError(f"instruments.{cfg.name}.kind: no driver for {cfg.kind!r}")

    return None if cfg.kind == "replay" else build


def make_tagger(cfg: InstrumentConfig, driver: Driver | None,
                channels: tuple[int, ...]) -> TimeTagger:
    """The streaming side of tagger ``cfg`` for ``channels``: an ID900's DLT streams (option
    ``dlt``: the DataLinkTarget address) over its open control ``driver``, or a file replay."""
    o: Mapping[str, Any] = cfg.options
    if cfg.kind == "replay":
        from qnode.drivers.replay import FileReplayTagger
        return FileReplayTagger(cfg.address, pace=o.get("pace", "realtime"))
    if cfg.kind == "id900":
        from qnode.drivers.id900 import ID900, ID900Tagger
        if "dlt" not in o:
            raise InstrumentConfigError(
                f"instruments.{cfg.name}.options.dlt: the ID900's DataLinkTarget address is "
                f"required to stream tags")
        if not isinstance(driver, ID900):
            raise InstrumentConfigError(f"instruments.{cfg.name}: the ID900 is not connected")
        return ID900Tagger(driver, str(o["dlt"]), inputs=o.get("inputs", channels),
                           chunk_interval_s=float(o.get("chunk_interval_s", 0.05)),
                           max_latency_s=float(o.get("max_latency_s", 0.2)))
    raise InstrumentConfigError(f"instruments.{cfg.name}: a {cfg.kind} is not a time tagger")
