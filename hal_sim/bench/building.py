"""Building a bench file's instruments: each twin from its kind's factory and its options.

:func:`build_device` makes a twin the bench serves on a pty or a TCP port (it may first answer
the instrument's ``startup`` commands and be moved on by ``settle_s``, :class:`ShiftedClock`);
:func:`build_service` makes an instrument that serves itself. The factories come from
:data:`qnode.hal_sim.bench.kinds.KINDS`, imported when an instrument of the kind is built.
"""
from __future__ import annotations

import time
from typing import Any

from qnode.drivers.kinds import import_path

from ..twins.serve import WireDevice
from .context import BenchContext
from .kinds import COUPLING_KEYS, KINDS
from .spec import BenchConfigError, InstrumentSpec, config_error


def build_service(bench: BenchContext, spec: InstrumentSpec, path: str, index: int) -> Any:
    """The self-serving instrument of ``spec`` (style "service"), the ``index``-th of the bench
    file ``path``; errors name ``instrument[index].options``."""
    factory = import_path(KINDS[spec.kind].factory)
    try:
        return factory(bench, f"instrument[{index}]", **spec.options)
    except TypeError as exc:
        raise config_error(path, f"instrument[{index}].options", str(exc)) from exc
    except ValueError as exc:
        if isinstance(exc, BenchConfigError):
            raise
        raise config_error(path, f"instrument[{index}].options", str(exc)) from exc


class ShiftedClock:
    """time.monotonic() plus an offset: lets a twin start as if it had run ``settle_s``."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset_s


def build_device(spec: InstrumentSpec, path: str, index: int,
                 bench: BenchContext | None = None) -> WireDevice:
    """The twin of ``spec`` (style "wire" or "linked"), the ``index``-th of the bench file
    ``path``: built from its options without the coupling keys, given its ``startup`` commands
    and ``settle_s``; errors name ``instrument[index]`` and the field."""
    kind = KINDS[spec.kind]
    factory = import_path(kind.factory)
    key = f"instrument[{index}]"
    if kind.style == "linked":
        try:
            return factory(bench, key, **spec.options)
        except BenchConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise config_error(path, f"{key}.options", str(exc)) from exc
    options = {k: v for k, v in spec.options.items()
               if k not in COUPLING_KEYS.get(kind.couples or "", ())}
    clock = None
    if spec.settle_s:
        clock = options["clock"] = ShiftedClock()
    try:
        device = factory(**options)
    except TypeError as exc:
        if clock is not None and "clock" in str(exc):
            raise config_error(path, f"{key}.settle_s",
                               f"{spec.kind} has no clock to settle") from exc
        raise config_error(path, f"{key}.options", str(exc)) from exc
    except ValueError as exc:
        raise config_error(path, f"{key}.options", str(exc)) from exc
    for i, command in enumerate(spec.startup):
        reply = device.handle(command.encode("ascii", errors="replace")) or b""
        if any(marker in reply for marker in kind.startup_errors):
            refusal = reply.decode(errors="replace").strip()
            raise config_error(path, f"{key}.startup[{i}]",
                               f"{command!r} was refused: {refusal!r}")
    if clock is not None:
        clock.offset_s = spec.settle_s
    return device
