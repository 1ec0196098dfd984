"""From a config's ``[instruments.<name>]`` table to an open driver (and a time tagger).

Which class serves a kind comes from the one registry of instrument kinds,
:data:`qnode.drivers.kinds.KINDS`. The daemon never imports ``hal_sim``: a simulated instrument
is reached by its address exactly as a real one
(docs/developers/decisions/0006-simulator-behind-addresses.md). ``options`` are passed to the
driver's :meth:`~qnode.drivers.driver.Driver.from_config`, except the keys a tagger needs for
streaming (``dlt``, ``inputs``, ``chunk_interval_s``, ``max_latency_s``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from qnode.daemon.runtime.config import InstrumentConfig
from qnode.drivers.driver import Driver
from qnode.drivers.kinds import KINDS
from qnode.drivers.tagger import TimeTagger

#: option keys used to build the streaming side of a tagger, not its control driver
TAGGER_OPTIONS = ("dlt", "inputs", "chunk_interval_s", "max_latency_s")


class InstrumentConfigError(ValueError):
    """An instrument's options do not fit its driver; names the instrument."""


def _driver_options(cfg: InstrumentConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.options.items() if k not in TAGGER_OPTIONS}


def driver_factory(cfg: InstrumentConfig) -> Callable[[], Driver] | None:
    """A function that builds and opens the driver of ``cfg`` (run on the instrument's thread),
    or None for kinds without a control link (``replay``)."""
    kind = KINDS.get(cfg.kind)
    if kind is not None and kind.driver is None:
        return None
    opts = _driver_options(cfg)

    def build() -> Driver:
        if kind is None:
            raise InstrumentConfigError(
                f"instruments.{cfg.name}.kind: no driver for {cfg.kind!r}")
        driver = kind.driver_class()
        try:
            return driver.from_config(cfg.address, name=cfg.name, timeout_s=cfg.timeout_s,
                                      **opts).open()
        except TypeError as exc:  # an option the driver does not take
            raise InstrumentConfigError(
                f"instruments.{cfg.name}.options: {exc}") from None

    return build


def make_tagger(cfg: InstrumentConfig, driver: Driver | None,
                channels: tuple[int, ...]) -> TimeTagger:
    """The streaming side of tagger ``cfg`` for ``channels``: an ID900's DLT streams (option
    ``dlt``: the DataLinkTarget address) over its open control ``driver``, or a file replay.
    Stream options not given take the kind's defaults (``stream_defaults`` of the registry)."""
    kind = KINDS.get(cfg.kind)
    if kind is None or not kind.is_tagger:
        raise InstrumentConfigError(f"instruments.{cfg.name}: a {cfg.kind} is not a time tagger")
    o: Mapping[str, Any] = {**kind.stream_defaults, **cfg.options}
    if cfg.kind == "replay":
        return kind.tagger_class()(cfg.address, pace=o["pace"])
    if cfg.kind == "id900":
        if "dlt" not in o:
            raise InstrumentConfigError(
                f"instruments.{cfg.name}.options.dlt: the ID900's DataLinkTarget address is "
                f"required to stream tags")
        if driver is None or not isinstance(driver, kind.driver_class()):
            raise InstrumentConfigError(f"instruments.{cfg.name}: the ID900 is not connected")
        return kind.tagger_class()(driver, str(o["dlt"]), inputs=o.get("inputs", channels),
                                   chunk_interval_s=float(o["chunk_interval_s"]),
                                   max_latency_s=float(o["max_latency_s"]))
    raise InstrumentConfigError(f"instruments.{cfg.name}: no tag stream is built for a "
                                f"{cfg.kind}")
