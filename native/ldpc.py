"""LDPC syndrome decoding in the C core: :class:`LdpcDecoder`.

Given a binary parity-check matrix H (m × n), a syndrome s (m bits) and per-bit channel
information, find an error pattern e with H·e = s (mod 2) by belief propagation in the log
domain:

* layered (row-serial) schedule: each check updates the posteriors of its bits at once, so the
  next check already uses them (Hocevar, "A reduced complexity decoder architecture via layered
  decoding of LDPC codes", IEEE SiPS 2004; converges in about half the iterations of flooding);
* sum-product check rule, R = ±φ(Σ φ(|t_i|)) with φ(x) = −ln tanh(x/2) (Gallager 1963; MacKay
  and Neal 1996; Kschischang, Frey, Loeliger, IEEE Trans. Inf. Theory 47, 2001), the sign
  flipped for checks with s_j = 1. Kernels (:data:`KERNELS`; "auto" takes the widest this CPU
  runs, :func:`supported_kernels`):

  - "avx512": 16 edges a step; φ by a degree-5 polynomial per octave of x, its coefficients
    picked from registers by two-source permutes instead of loaded by gathers (absolute error
    ≤ 2.1e-5); two consecutive checks that share no bit run side by side, which gives the
    serial result and overlaps their chains of reductions;
  - "avx2": 8 edges a step, φ from a table of 64 chords per octave by gathers (≤ 3.4e-5);
  - "scalar": the same table, one edge at a time (any CPU);
  - "exact": φ by libm, slower: for validation;

* early stop at the first iteration whose hard decision satisfies the syndrome; posteriors
  finite: channel LLRs are clipped to ±50, check messages to ±17.3 (no infinities).

LLR convention: ln(P(e_v = 0) / P(e_v = 1)), so an error probability p gives ln((1 − p)/p):
a punctured bit (p = 0.5) has LLR 0, a shortened one (p ≈ 1e-12) about +27.6.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _loader

_ffi, _lib = _loader.require()

#: Kernel names LdpcDecoder accepts (their index is the C core's kernel code).
KERNELS = ("auto", "scalar", "exact", "avx2", "avx512")


def supported_kernels() -> tuple[str, ...]:
    """The :data:`KERNELS` this CPU and this build of the C core run ("auto", "scalar" and
    "exact" always; "avx2" with AVX2 and FMA, "avx512" with AVX-512F, unless the core was built
    with ``-DQN_NO_AVX2`` / ``-DQN_NO_AVX512``)."""
    return tuple(k for i, k in enumerate(KERNELS) if _lib.qn_ldpc_supports(i) == 1)


def built_kernels() -> tuple[str, ...]:
    """The :data:`KERNELS` this build of the C core has, whether or not this CPU runs them."""
    return tuple(k for i, k in enumerate(KERNELS) if _lib.qn_ldpc_supports(i) >= 0)


def _int_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got {arr.dtype}")
    return arr


class LdpcDecoder:
    """A layered sum-product syndrome decoder for one parity-check matrix (build once, decode
    many frames; read-only after construction, so threads may share it: each call has its own
    workspace, and the C call runs without the GIL).

    ``h``: the m × n parity-check matrix, a scipy.sparse matrix/array or a dense 0/1 array
    (entries must be 0 or 1; no empty matrix). ``kernel``: one of :data:`KERNELS`: "auto"
    (the fastest this CPU runs), "avx512", "avx2", "scalar" (table φ, no SIMD), "exact" (φ by
    libm, slower); a kernel the CPU or build cannot run raises ValueError. See
    :meth:`from_csr` for raw CSR arrays."""

    def __init__(self, h: Any, *, kernel: str = "auto") -> None:
        if hasattr(h, "tocsr"):
            csr = h.tocsr(copy=True)
            csr.sum_duplicates()
            data = np.asarray(csr.data)
            if data.size and not np.all((data == 0) | (data == 1)):
                raise ValueError("parity-check matrix entries must be 0 or 1")
            csr.eliminate_zeros()
            m, n = csr.shape
            indptr, indices = np.asarray(csr.indptr), np.asarray(csr.indices)
        else:
            dense = np.asarray(h)
            if dense.ndim != 2:
                raise ValueError(f"parity-check matrix must be 2-D, got shape {dense.shape}")
            if dense.size and not np.all((dense == 0) | (dense == 1)):
                raise ValueError("parity-check matrix entries must be 0 or 1")
            m, n = dense.shape
            rows, cols = np.nonzero(dense)
            indptr = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=m))))
            indices = cols
        self._build(indptr, indices, int(m), int(n), kernel)

    @classmethod
    def from_csr(cls, indptr: Any, indices: Any, n_cols: int, *,
                 kernel: str = "auto") -> LdpcDecoder:
        """From CSR arrays: ``indptr`` (m + 1 row offsets, starting at 0, non-decreasing),
        ``indices`` (column of each 1, in [0, n_cols), no column twice in a row)."""
        self = cls.__new__(cls)
        ip = _int_array("indptr", indptr)
        if ip.size < 2:
            raise ValueError("indptr must have m + 1 >= 2 entries")
        if isinstance(n_cols, bool) or not isinstance(n_cols, int | np.integer):
            raise ValueError(f"n_cols must be an integer, got {n_cols!r}")
        self._build(ip, _int_array("indices", indices), ip.size - 1, int(n_cols), kernel)
        return self

    def _build(self, indptr: np.ndarray, indices: np.ndarray, m: int, n: int,
               kernel: str) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if m < 1 or n < 1 or m >= 2**31 or n >= 2**31:
            raise ValueError(f"matrix shape must be between 1 and 2^31 - 1 per side, got {m}×{n}")
        if indptr.size != m + 1:
            raise ValueError(f"indptr must have {m + 1} entries, got {indptr.size}")
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.size:
            raise ValueError("malformed CSR: indptr must start at 0, not decrease, and end at "
                             f"len(indices) = {indices.size}")
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise ValueError(f"malformed CSR: column indices must lie in [0, {n})")
        if indices.size >= 2**31:
            raise ValueError("too many edges (>= 2^31)")
        self._indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self._indices = np.ascontiguousarray(indices, dtype=np.int32)
        out = _ffi.new("qn_ldpc **")
        rc = _lib.qn_ldpc_new(out, m, n, _ffi.cast("int64_t *", self._indptr.ctypes.data),
                              _ffi.cast("int32_t *", self._indices.ctypes.data)
                              if self._indices.size else _ffi.NULL, KERNELS.index(kernel))
        if rc == _lib.QN_ENOMEM:
            raise MemoryError("qn_ldpc_new: out of memory")
        if rc == _lib.QN_EUNSUPPORTED:
            raise ValueError(f"kernel {kernel!r}: this CPU (or this build of the C core) "
                             "cannot run it; see supported_kernels()")
        if rc != _lib.QN_OK:
            raise ValueError("malformed CSR: a column appears twice in one row")
        self._d = _ffi.gc(out[0], _lib.qn_ldpc_free)
        shape = _ffi.new("int64_t[5]")
        _lib.qn_ldpc_shape(self._d, shape)
        #: rows (checks), columns (bits), edges (ones in H), largest row weight
        self.m, self.n, self.edges, self.max_row_weight = (int(x) for x in shape[0:4])
        #: the kernel in use: "scalar", "exact", "avx2" or "avx512"
        self.kernel = KERNELS[shape[4]]
        self._work_size = int(_lib.qn_ldpc_work_size(self._d))

    def _syndrome(self, syndrome: Any) -> np.ndarray:
        s = np.asarray(syndrome)
        if s.ndim != 1 or s.size != self.m:
            raise ValueError(f"syndrome must be a 1-D array of {self.m} bits, got shape {s.shape}")
        if s.dtype != bool and not np.issubdtype(s.dtype, np.integer):
            raise ValueError(f"syndrome must be an integer or bool array of 0/1, got {s.dtype}")
        if s.size and (s.min() < 0 or s.max() > 1):
            raise ValueError("syndrome must hold only 0 and 1")
        return np.ascontiguousarray(s, dtype=np.uint8)

    def _vector(self, name: str, values: Any) -> np.ndarray:
        v = np.asarray(values)
        if v.ndim != 1 or v.size != self.n:
            raise ValueError(f"{name} must be a 1-D array of {self.n} values, got shape {v.shape}")
        if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
            raise ValueError(f"{name} must be a real array, got {v.dtype}")
        v = np.ascontiguousarray(v, dtype=np.float64)
        if np.isnan(v).any():
            raise ValueError(f"{name} must not contain NaN")
        return v

    def decode(self, syndrome: Any, channel_probabilities: Any,
               max_iter: int = 100) -> tuple[np.ndarray, bool, int]:
        """(e, converged, iterations) for H·e = ``syndrome``.

        ``channel_probabilities``: per bit the prior probability that e_v = 1, in [0, 1]
        (0.5: no information, e.g. a punctured bit; ~1e-12: a shortened bit). ``e``: uint8 0/1
        of length n, the hard decision after the last iteration (also when not converged);
        ``converged``: H·e = syndrome; ``iterations``: layered iterations run (0 when the prior
        hard decision already satisfies the syndrome), at most ``max_iter``."""
        p = self._vector("channel_probabilities", channel_probabilities)
        if p.size and (p.min() < 0.0 or p.max() > 1.0):
            raise ValueError("channel_probabilities must lie in [0, 1]")
        with np.errstate(divide="ignore"):
            llr = np.log1p(-p) - np.log(p)  # p = 0: +inf, p = 1: -inf (clipped in C)
        return self.decode_llr(syndrome, llr, max_iter)

    def phi(self, x: Any) -> np.ndarray:
        """φ(x) = −ln tanh(x/2) as this decoder's kernel computes it (float32; x clamped to
        [2⁻²⁴, 64) first, as in decoding): for checking each kernel against libm."""
        v = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1))
        out = np.empty_like(v)
        _lib.qn_ldpc_phi(self._d, _ffi.cast("float *", v.ctypes.data),
                         _ffi.cast("float *", out.ctypes.data), v.size)
        return out

    def workspace(self) -> np.ndarray:
        """A fresh workspace for :meth:`decode_llr` (float32; its contents are the decoder's
        state after a call, which ``resume`` continues from)."""
        return np.zeros(self._work_size, dtype=np.float32)

    def decode_llr(self, syndrome: Any, llr: Any, max_iter: int = 100, patience: int = 0, *,
                   work: np.ndarray | None = None,
                   resume: bool = False) -> tuple[np.ndarray, bool, int]:
        """As :meth:`decode` with channel log-likelihood ratios ln(P(e_v = 0)/P(e_v = 1))
        (dimensionless, ±inf allowed and clipped to ±50, NaN rejected). ``patience`` > 0 gives
        up (not converged) once the count of unsatisfied checks has not reached a new low for
        that many iterations in a row; 0 runs to convergence or ``max_iter``.

        ``work`` (from :meth:`workspace`) keeps the messages after the call; ``resume=True``
        continues from them instead of starting afresh: the same ``syndrome`` as that call,
        ``llr`` the channel LLRs now (e.g. with bits revealed since), counted in
        ``iterations`` from 0 again."""
        s = self._syndrome(syndrome)
        x = self._vector("llr", llr)
        for name, value in (("max_iter", max_iter), ("patience", patience)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) \
                    or not 0 <= value < 2**31:
                raise ValueError(f"{name} must be an integer in [0, 2^31), got {value!r}")
        e = np.empty(self.n, dtype=np.uint8)
        if work is None:
            if resume:
                raise ValueError("resume needs the work array of the call to continue")
            work = np.empty(self._work_size, dtype=np.float32)
        elif (not isinstance(work, np.ndarray) or work.dtype != np.float32
              or work.shape != (self._work_size,) or not work.flags.c_contiguous
              or not work.flags.writeable):
            raise ValueError("work must come from this decoder's workspace()")
        conv, iters = _ffi.new("int32_t *"), _ffi.new("int32_t *")
        rc = _lib.qn_ldpc_decode(self._d, _ffi.cast("float *", work.ctypes.data), work.size,
                                 _ffi.cast("uint8_t *", s.ctypes.data),
                                 _ffi.cast("double *", x.ctypes.data), int(max_iter),
                                 int(patience), int(bool(resume)),
                                 _ffi.cast("uint8_t *", e.ctypes.data), conv, iters)
        if rc != _lib.QN_OK:
            raise ValueError(f"qn_ldpc_decode: invalid arguments (code {rc})")
        return e, bool(conv[0]), int(iters[0])
