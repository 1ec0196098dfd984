"""Loads the compiled extension ``qnode.native._qcore`` and says clearly when it is missing."""
from __future__ import annotations

from typing import Any

BUILD_HINT = (
    "qnode's native coincidence core (qnode.native._qcore) is not built. Build it by installing "
    "the checkout: `pip install -e .` (or `pip install .`), which needs gcc and the Python headers "
    "(Debian: build-essential python3-dev). The numpy reference stays available by name as "
    "qnode.native.reference.")


class NativeCoreMissing(ImportError):
    """The compiled extension ``qnode.native._qcore`` is not there (or does not load)."""


try:
    from ._qcore import ffi, lib  # type: ignore[import-not-found]
    IMPORT_ERROR: Exception | None = None
    lib.qn_init()  # builds the ziggurat tables once, before any thread can use them
except ImportError as exc:
    ffi = lib = None
    IMPORT_ERROR = exc


def native_available() -> bool:
    """True when the compiled core can be used."""
    return lib is not None


def native_error() -> str | None:
    """Why the compiled core cannot be used, or None."""
    return None if IMPORT_ERROR is None else str(IMPORT_ERROR)


def require():
    """(ffi, lib), or NativeCoreMissing with the command that builds the extension."""
    if lib is None:
        raise NativeCoreMissing(f"{BUILD_HINT} Import error: {IMPORT_ERROR}")
    return ffi, lib


def pointer(ctype: str, arr: Any) -> Any:
    """A cffi pointer of ``ctype`` to numpy array ``arr``'s data (NULL when it is empty)."""
    ffi, _ = require()
    return ffi.cast(ctype, arr.ctypes.data) if arr.size else ffi.NULL


def raise_for(rc: int, what: str) -> None:
    """Raise the Python error of a C core return code ``rc`` from ``what``."""
    _, lib = require()
    if rc == lib.QN_ENOMEM:
        raise MemoryError(f"{what}: out of memory")
    if rc == lib.QN_EARG:
        raise ValueError(f"{what}: invalid arguments")
    if rc == lib.QN_ECAPACITY:
        raise RuntimeError(f"{what}: output buffer too small (a bug in qnode.native)")
    raise RuntimeError(f"{what}: error code {rc}")
