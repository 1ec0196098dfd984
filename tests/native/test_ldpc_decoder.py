"""The C LDPC syndrome decoder (qnode.native.LdpcDecoder) against the ``ldpc`` package's
product-sum BpDecoder (Roffe et al.; flooding schedule) as the independent truth, on the
project's reconciliation codes with their puncturing and shortening; exhaustive checks on a
Hamming code; its kernels against each other and their φ against libm; bad inputs.

Statistical bound (``test_converges_at_least_as_often_as_ldpc_near_threshold``): on paired
frames, b = frames only ldpc decodes, c = frames only the C decoder decodes. If the C decoder
were no worse, b would be at most Binomial(b + c, 1/2); the test asserts b ≤ c + 3·√(b + c) + 1
(a one-sided ~3 sigma sign test), and that the C decoder's frame error rate over the frames is
at most ldpc's plus that margin.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp  # type: ignore[import-untyped]
from ldpc import BpDecoder

from qnode import native
from qnode.daemon.qkd import ldpc_codes, reconcile as rc
from qnode.native.ldpc import KERNELS, LdpcDecoder, built_kernels, supported_kernels

SURE, UNKNOWN = 1e-12, 0.5


def _ldpc(h: sp.csr_matrix, channel: np.ndarray, max_iter: int = 100) -> BpDecoder:
    dec = BpDecoder(h, error_rate=0.05, max_iter=max_iter, bp_method="product_sum",
                    schedule="parallel", input_vector_type="syndrome")
    dec.error_channel = channel
    return dec


def _frame_setup(q: float, frame: int, efficiency: float | None = None,
                 seed: int = 1) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """(H, channel error probabilities, key positions, punctured positions) of the plan's first
    frame at QBER q: key bits p = q, punctured p = 0.5, shortened p = 1e-12."""
    n = int(rc.FILL * frame)
    plan = rc.choose_plan(q, n, frame=frame, efficiency=efficiency, seed=seed)
    code = plan.code()
    punct, key = rc.frame_layout(plan, 0)
    channel = np.full(frame, SURE)
    channel[key] = q
    channel[punct] = UNKNOWN
    return code.h, channel, key, punct


def _draw(rng: np.random.Generator, h: sp.csr_matrix, q: float, key: np.ndarray,
          punct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A true error pattern (key bits BSC(q), punctured bits uniform: the unknown padding
    difference, shortened 0) and its syndrome."""
    e = np.zeros(h.shape[1], dtype=np.uint8)
    e[key] = rng.random(key.size) < q
    e[punct] = rng.integers(0, 2, punct.size)
    return e, ((h @ e) & 1).astype(np.uint8)


def _syndrome_of(h: sp.csr_matrix, e: np.ndarray) -> np.ndarray:
    return ((h @ e.astype(np.uint8)) & 1).astype(np.uint8)


@pytest.mark.parametrize(("q", "frames"), [(0.01, 6), (0.03, 8), (0.05, 8), (0.08, 8)])
def test_converges_whenever_ldpc_does_on_the_planned_frames(q: float, frames: int) -> None:
    """The plan's own efficiency target in 2^13-bit frames: every frame ldpc decodes, the C
    decoder decodes too, to the true error pattern, in fewer iterations on average."""
    rng = np.random.default_rng(int(q * 1000) + 7)
    h, channel, key, punct = _frame_setup(q, 1 << 13)
    ref, ours = _ldpc(h, channel), LdpcDecoder(h)
    its_ref, its_ours = [], []
    for _ in range(frames):
        e, s = _draw(rng, h, q, key, punct)
        d_ref = ref.decode(s)
        d, converged, iterations = ours.decode(s, channel)
        if ref.converge:
            assert converged
        if converged:
            assert np.array_equal(_syndrome_of(h, d), s)
            assert np.array_equal(d, e)
            its_ours.append(iterations)
        if ref.converge:
            assert np.array_equal(_syndrome_of(h, d_ref), s)
            its_ref.append(ref.iter)
    assert its_ref, "ldpc decoded no frame: the plan's target does not fit the code"
    assert np.mean(its_ours) < np.mean(its_ref)


def test_converges_at_least_as_often_as_ldpc_near_threshold() -> None:
    """160 paired 2^12-bit frames of the 3 % code run at f = 1.18 (ldpc fails on roughly half
    of them): the C decoder (table φ, layered) fails no more often, within the bound of the
    module docstring; whenever it converges its word is the true error pattern or at least has
    the syndrome."""
    q, frames = 0.03, 160
    rng = np.random.default_rng(2024)
    h, channel, key, punct = _frame_setup(q, 1 << 12, efficiency=1.18)
    ref, ours = _ldpc(h, channel), LdpcDecoder(h)
    only_ref = only_ours = ok_ref = ok_ours = wrong = 0
    for _ in range(frames):
        e, s = _draw(rng, h, q, key, punct)
        ref.decode(s)
        d, converged, _ = ours.decode(s, channel)
        ok_ref += ref.converge
        ok_ours += converged
        only_ref += ref.converge and not converged
        only_ours += converged and not ref.converge
        if converged:
            assert np.array_equal(_syndrome_of(h, d), s)
            wrong += not np.array_equal(d, e)
    assert 0.15 * frames < ok_ref < 0.95 * frames, f"not near the threshold: {ok_ref}/{frames}"
    margin = 3.0 * np.sqrt(only_ref + only_ours) + 1.0
    assert only_ref <= only_ours + margin, (only_ref, only_ours, ok_ref, ok_ours)
    assert ok_ours >= ok_ref - margin
    assert wrong <= 1


def test_every_kernel_loses_nothing_against_exact_phi() -> None:
    """Each approximate φ (chord table, scalar and AVX2; per-octave polynomial, AVX-512)
    against φ by libm on the same near-threshold frames (3 % code, 2^12 bits, f = 1.18): the
    same frames decode, to the same words."""
    q = 0.03
    rng = np.random.default_rng(99)
    h, channel, key, punct = _frame_setup(q, 1 << 12, efficiency=1.18)
    decs = {k: LdpcDecoder(h, kernel=k) for k in supported_kernels()}
    ok = dict.fromkeys(decs, 0)
    disagree = 0
    for _ in range(40):
        _, s = _draw(rng, h, q, key, punct)
        results = {k: d.decode(s, channel) for k, d in decs.items()}
        for k, (_, conv, _) in results.items():
            ok[k] += conv
        words = [r[0] for r in results.values() if r[1]]
        disagree += any(not np.array_equal(words[0], w) for w in words[1:])
    assert 5 <= ok["exact"] <= 38
    for k in decs:
        assert abs(ok[k] - ok["exact"]) <= 2, ok
    assert disagree == 0


@pytest.mark.parametrize(("q", "frame"), [(0.01, 1 << 13), (0.05, 1 << 12)])
def test_kernels_take_the_same_path_at_the_planned_efficiency(q: float, frame: int) -> None:
    """At the plan's own target, φ's approximation error (≤ ~3e-5) seldom changes a decision:
    each kernel gives the scalar kernel's word and iteration count on nearly every frame (40
    frames; measured 38–40). This catches a kernel that updates rows in a different order,
    e.g. AVX-512 running side by side two rows that share a column (then 28–32 of 40)."""
    rng = np.random.default_rng(4)
    h, channel, key, punct = _frame_setup(q, frame)
    decs = {k: LdpcDecoder(h, kernel=k) for k in supported_kernels() if k != "auto"}
    same = dict.fromkeys(decs, 0)
    for _ in range(40):
        _, s = _draw(rng, h, q, key, punct)
        results = {k: d.decode(s, channel) for k, d in decs.items()}
        ref = results["scalar"]
        for k, r in results.items():
            same[k] += np.array_equal(r[0], ref[0]) and r[1:] == ref[1:]
    assert min(same.values()) >= 36, same


def test_each_kernels_phi_against_libm() -> None:
    """φ(x) = −ln tanh(x/2) as each kernel computes it, on 200 001 points log-spaced over
    [1e-8, 100] (the kernels clamp x to [2⁻²⁴, 64)): absolute error ≤ 5e-5 against libm in
    double (measured: table 3.4e-5, polynomial 2.1e-5), never negative, and φ(φ(x)) ≈ x
    where the decoder needs it (x in [0.01, 10])."""
    x = np.geomspace(1e-8, 100.0, 200_001).astype(np.float32)
    xc = np.clip(x.astype(np.float64), 2.0**-24, 63.99)
    truth = -np.log(np.tanh(xc / 2.0))
    for kernel in supported_kernels():
        dec = LdpcDecoder(HAMMING, kernel=kernel)
        y = dec.phi(x)
        err = np.abs(y - truth)
        assert err.max() <= (1e-6 if kernel == "exact" else 5e-5), (kernel, err.max(),
                                                                    x[err.argmax()])
        assert y.min() >= 0.0, kernel
        mid = (x >= 0.01) & (x <= 10.0)
        back = dec.phi(y[mid])
        assert np.max(np.abs(back - x[mid]) / x[mid]) < 2e-2, kernel


def test_auto_runs_the_widest_simd_this_cpu_has() -> None:
    """Reading the CPU's flags independently of the core: with AVX-512F the AVX-512 kernel runs
    and "auto" takes it, else with AVX2 and FMA the AVX2 one (among the kernels this build
    has: a build with -DQN_NO_AVX512 or -DQN_NO_AVX2 forces a narrower path); asking for a
    kernel the CPU or build lacks is a clear error."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    kernels, built = supported_kernels(), built_kernels()
    assert {"auto", "scalar", "exact"} <= set(kernels) and set(kernels) <= set(built)
    cpu = {"avx512": "avx512f" in flags, "avx2": {"avx2", "fma"} <= flags}
    assert {k for k in ("avx512", "avx2") if k in built and cpu[k]} == \
        {k for k in ("avx512", "avx2") if k in kernels}
    best = next((k for k in ("avx512", "avx2") if k in built and cpu[k]), "scalar")
    assert LdpcDecoder(HAMMING).kernel == best
    for k in set(KERNELS) - set(kernels):
        with pytest.raises(ValueError, match="cannot run"):
            LdpcDecoder(HAMMING, kernel=k)


HAMMING = np.array([[(c >> b) & 1 for c in range(1, 8)] for b in range(3)], dtype=np.uint8)


@pytest.mark.parametrize("kernel", supported_kernels())
def test_hamming_code_exhaustive(kernel: str) -> None:
    """[7,4] Hamming code, all 128 error patterns at bit error probabilities 0.01, 0.1, 0.3:
    the converged flag is true exactly when the word has the syndrome; at p = 0.01 every
    single-bit error (and no error) is found exactly, in 0 iterations for no error. (BP is not
    maximum-likelihood on this dense code full of 4-cycles: at p = 0.1 the layered schedule
    oscillates on two single-bit errors, at 0.3 on all; flooding (ldpc) fails there at 0.3 and
    returns a weight-4 word for one of them at 0.1.) Every pair of its rows shares a column, so
    no kernel may run two of them side by side."""
    dec = LdpcDecoder(HAMMING, kernel=kernel)
    h = sp.csr_matrix(HAMMING)
    for p0 in (0.01, 0.1, 0.3):
        p = np.full(7, p0)
        for pattern in range(128):
            e = np.array([(pattern >> i) & 1 for i in range(7)], dtype=np.uint8)
            s = _syndrome_of(h, e)
            d, converged, iterations = dec.decode(s, p, max_iter=50)
            assert d.dtype == np.uint8 and d.shape == (7,)
            assert converged == np.array_equal(_syndrome_of(h, d), s)
            assert converged or iterations == 50
            if p0 == 0.01 and e.sum() <= 1:
                assert converged and np.array_equal(d, e)
                assert (iterations == 0) == (e.sum() == 0)


def test_known_bits_and_llr_interface() -> None:
    """A shortened bit (p ≈ 0) never flips, a known-wrong bit (p = 1) is taken as flipped;
    decode with probabilities equals decode_llr with ln((1 − p)/p); ±inf LLRs are clipped."""
    dec = LdpcDecoder(HAMMING)
    h = sp.csr_matrix(HAMMING)
    e = np.array([0, 0, 1, 0, 0, 0, 0], dtype=np.uint8)
    s = _syndrome_of(h, e)
    p = np.full(7, 0.1)
    p[2] = 1.0
    d, converged, iterations = dec.decode(s, p)
    assert converged and np.array_equal(d, e) and iterations == 0
    p = np.full(7, 0.2)
    p[[0, 1]] = 0.0
    with np.errstate(divide="ignore"):
        llr = np.log1p(-p) - np.log(p)
    assert np.isinf(llr).sum() == 2
    a, b = dec.decode(s, p), dec.decode_llr(s, llr)
    assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    assert a[1] and a[0][0] == 0 and a[0][1] == 0


def test_max_iter_and_unsatisfiable_syndrome() -> None:
    """A check with no bits and syndrome 1 can never be satisfied: max_iter iterations, not
    converged; max_iter = 0 runs none."""
    h = sp.csr_matrix(np.vstack([HAMMING, np.zeros(7, dtype=np.uint8)]))
    dec = LdpcDecoder(h)
    s = np.array([1, 0, 0, 1], dtype=np.uint8)
    d, converged, iterations = dec.decode(s, np.full(7, 0.1), max_iter=17)
    assert not converged and iterations == 17 and d.shape == (7,)
    _, converged, iterations = dec.decode(s, np.full(7, 0.1), max_iter=0)
    assert not converged and iterations == 0


def test_construction_forms_agree_and_describe_the_matrix() -> None:
    h = sp.random(40, 90, density=0.1, random_state=3, format="csr").astype(np.uint8)
    h.data[:] = 1
    a = LdpcDecoder(h)
    b = LdpcDecoder.from_csr(h.indptr, h.indices, 90)
    c = LdpcDecoder(h.toarray().astype(np.uint8))
    assert (a.m, a.n, a.edges) == (b.m, b.n, b.edges) == (c.m, c.n, c.edges) == (40, 90, h.nnz)
    assert a.max_row_weight == int(np.diff(h.indptr).max())
    assert a.kernel in supported_kernels() and LdpcDecoder(h, kernel="exact").kernel == "exact"
    rng = np.random.default_rng(0)
    p = np.full(90, 0.02)
    for _ in range(5):
        e = (rng.random(90) < 0.02).astype(np.uint8)
        s = _syndrome_of(h, e)
        ra, rb, rc_ = a.decode(s, p), b.decode(s, p), c.decode(s, p)
        assert np.array_equal(ra[0], rb[0]) and np.array_equal(ra[0], rc_[0])
        assert ra[1:] == rb[1:] == rc_[1:]
    assert native.LdpcDecoder is LdpcDecoder


def test_threads_share_one_decoder() -> None:
    """Each call has its own workspace: concurrent decodes give the serial results."""
    q = 0.05
    rng = np.random.default_rng(5)
    h, channel, key, punct = _frame_setup(q, 1 << 12)
    dec = LdpcDecoder(h)
    syndromes = [_draw(rng, h, q, key, punct)[1] for _ in range(8)]
    serial = [dec.decode(s, channel) for s in syndromes]
    results: dict[int, tuple[np.ndarray, bool, int]] = {}

    def work(i: int) -> None:
        results[i] = dec.decode(syndromes[i], channel)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(syndromes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (d, conv, its) in enumerate(serial):
        assert np.array_equal(results[i][0], d) and results[i][1:] == (conv, its)


def test_bad_inputs_raise_value_error() -> None:
    dec = LdpcDecoder(HAMMING)
    s, p = np.zeros(3, dtype=np.uint8), np.full(7, 0.1)
    with pytest.raises(ValueError, match="syndrome"):
        dec.decode(s[:-1], p)
    with pytest.raises(ValueError, match="syndrome"):
        dec.decode(s + 2, p)
    with pytest.raises(ValueError, match="syndrome"):
        dec.decode(s.astype(float), p)
    with pytest.raises(ValueError, match="channel_probabilities"):
        dec.decode(s, p[:-1])
    with pytest.raises(ValueError, match="channel_probabilities"):
        dec.decode(s, np.where(np.arange(7) == 3, np.nan, p))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dec.decode(s, p + 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dec.decode(s, -p)
    with pytest.raises(ValueError, match="llr"):
        dec.decode_llr(s, np.full(7, np.nan))
    with pytest.raises(ValueError, match="max_iter"):
        dec.decode(s, p, max_iter=-1)
    with pytest.raises(ValueError, match="max_iter"):
        dec.decode(s, p, max_iter=2.5)  # type: ignore[arg-type]
    indptr, indices = np.array([0, 2, 4]), np.array([0, 1, 1, 2])
    LdpcDecoder.from_csr(indptr, indices, 3)
    with pytest.raises(ValueError, match="malformed CSR"):
        LdpcDecoder.from_csr([0, 3, 2], indices, 3)  # decreasing
    with pytest.raises(ValueError, match="malformed CSR"):
        LdpcDecoder.from_csr([1, 2, 4], indices, 3)  # does not start at 0
    with pytest.raises(ValueError, match="malformed CSR"):
        LdpcDecoder.from_csr([0, 2, 5], indices, 3)  # past the end of indices
    with pytest.raises(ValueError, match="malformed CSR"):
        LdpcDecoder.from_csr(indptr, [0, 1, 1, 3], 3)  # column out of range
    with pytest.raises(ValueError, match="malformed CSR"):
        LdpcDecoder.from_csr(indptr, [0, -1, 1, 2], 3)
    with pytest.raises(ValueError, match="twice"):
        LdpcDecoder.from_csr(indptr, [0, 0, 1, 2], 3)  # repeated column in a row
    with pytest.raises(ValueError, match="integers"):
        LdpcDecoder.from_csr(indptr, indices.astype(float), 3)
    with pytest.raises(ValueError, match="indptr"):
        LdpcDecoder.from_csr([0], [], 3)
    with pytest.raises(ValueError, match="shape"):
        LdpcDecoder.from_csr(indptr, indices, 0)
    with pytest.raises(ValueError, match="0 or 1"):
        LdpcDecoder(HAMMING * 2)
    with pytest.raises(ValueError, match="0 or 1"):
        LdpcDecoder(sp.csr_matrix(HAMMING * 3))
    with pytest.raises(ValueError, match="2-D"):
        LdpcDecoder(np.ones(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="kernel"):
        LdpcDecoder(HAMMING, kernel="fast")


def test_resume_continues_the_same_iterations() -> None:
    """Stopping after a few iterations and resuming with the same channel gives exactly what one
    longer call gives (the workspace is the whole decoder state)."""
    h, channel, key, punct = _frame_setup(0.03, 1 << 13, efficiency=1.4)
    dec = LdpcDecoder(h)
    rng = np.random.default_rng(3)
    llr = np.log1p(-channel) - np.log(channel)
    for _ in range(20):  # a frame that converges, in more than a few iterations
        e, s = _draw(rng, h, 0.03, key, punct)
        whole, ok_whole, it_whole = dec.decode_llr(s, llr, 60)
        if ok_whole and it_whole > 4:
            break
    assert ok_whole and np.array_equal(whole, e) and it_whole > 4
    work = dec.workspace()
    _, ok_first, it_first = dec.decode_llr(s, llr, 3, work=work)
    assert not ok_first and it_first == 3
    rest, ok_rest, it_rest = dec.decode_llr(s, llr, 60, work=work, resume=True)
    assert ok_rest and np.array_equal(rest, whole) and it_first + it_rest == it_whole


def test_resume_takes_revealed_bits() -> None:
    """A frame that fails with its padding unknown decodes when resumed with part of the padding
    now known (the blind round of reconcile)."""
    # the 4 % code in a 2^13 frame, punctured down to f = 1.0 at Q = 3 %; all padding known
    # brings it to f = 1.41
    frame, n = 1 << 13, int(rc.FILL * (1 << 13))
    fam = next(i for i, d in enumerate(ldpc_codes.FAMILY) if d.design_qber == 0.04)
    m = ldpc_codes.parity_check(fam, frame, 1).m
    h_q = -(0.03 * np.log2(0.03) + 0.97 * np.log2(0.97))  # binary entropy, bits
    plan = rc.Plan(n=n, family=fam, frame=frame, seed=1, frames=1,
                   punctured=m - round(n * h_q))
    punct, key = rc.frame_layout(plan, 0)
    h = plan.code().h
    channel = np.full(frame, SURE)
    channel[key], channel[punct] = 0.03, UNKNOWN
    dec = LdpcDecoder(h)
    rng = np.random.default_rng(5)
    for _ in range(20):
        e, s = _draw(rng, h, 0.03, key, punct)
        llr = np.log1p(-channel) - np.log(channel)
        work = dec.workspace()
        if dec.decode_llr(s, llr, 50, 10, work=work)[1]:
            continue
        known = llr.copy()
        known[punct] = np.where(e[punct] == 1, -50.0, 50.0)
        d, ok, _ = dec.decode_llr(s, known, 50, work=work, resume=True)
        assert ok and np.array_equal(d, e)
        return
    pytest.fail("no frame failed at f = 1.0")


def test_patience_gives_up_on_a_hopeless_frame() -> None:
    """Far above the code's QBER the count of unsatisfied checks stalls: with patience the
    decoder stops early, without it it runs to max_iter."""
    h, channel, key, punct = _frame_setup(0.02, 1 << 13)
    dec = LdpcDecoder(h)
    e, s = _draw(np.random.default_rng(9), h, 0.15, key, punct)
    llr = np.log1p(-channel) - np.log(channel)
    _, ok, its = dec.decode_llr(s, llr, 200)
    assert not ok and its == 200
    _, ok, its = dec.decode_llr(s, llr, 200, patience=8)
    assert not ok and 8 <= its < 200


def test_workspace_misuse_raises() -> None:
    h, channel, key, punct = _frame_setup(0.03, 1 << 13)
    dec = LdpcDecoder(h)
    e, s = _draw(np.random.default_rng(1), h, 0.03, key, punct)
    llr = np.log1p(-channel) - np.log(channel)
    with pytest.raises(ValueError, match="resume"):
        dec.decode_llr(s, llr, 10, resume=True)
    for bad in (np.zeros(10, np.float32), dec.workspace().astype(np.float64)):
        with pytest.raises(ValueError, match="workspace"):
            dec.decode_llr(s, llr, 10, work=bad)
    with pytest.raises(ValueError, match="patience"):
        dec.decode_llr(s, llr, 10, patience=-1)
