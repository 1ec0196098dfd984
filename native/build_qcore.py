"""cffi build script for the coincidence core (API mode, out-of-line).

Used by setup.py (``cffi_modules``) and runnable by hand: ``python native/build_qcore.py`` builds
``_qcore`` next to this file. ``QNODE_CFLAGS`` replaces the default optimisation flags, e.g.
``QNODE_CFLAGS="-O3 -march=native"`` for a build that only needs to run on this CPU.
"""
from __future__ import annotations

import os
import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
HEADER = (HERE / "qcore.h").read_text()
_cdef = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", HEADER, re.S)
if _cdef is None:
    raise SystemExit(f"{HERE / 'qcore.h'}: no /* CDEF-BEGIN */ ... /* CDEF-END */ block")
CDEF = _cdef.group(1)
# cffi's cdef parser does not take comments inside struct bodies well; strip them.
CDEF = re.sub(r"/\*.*?\*/", "", CDEF, flags=re.S)

CFLAGS = os.environ.get("QNODE_CFLAGS", "-O3 -fno-strict-aliasing").split()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "qnode.native._qcore",
    '#include "qcore.h"',
    sources=[str((HERE / "qcore.c").relative_to(pathlib.Path.cwd()))
             if (HERE / "qcore.c").is_relative_to(pathlib.Path.cwd()) else str(HERE / "qcore.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-std=c11", *CFLAGS],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE / "_build"), verbose=True)
