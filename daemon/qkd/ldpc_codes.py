"""Irregular LDPC parity-check matrices for key reconciliation, built deterministically.

A code is named by ``(family index, frame length, seed)``: both ends call :func:`parity_check`
with the same three numbers and get the identical matrix, because every random choice comes
from one ``numpy.random.Generator`` seeded from them. Built codes are kept in a module-level
LRU cache (construction of a 2^16-bit code takes about a second).

The degree distributions (:data:`FAMILY`) were designed for the binary symmetric channel by
discretized density evolution (:mod:`.density_evolution`; Richardson and Urbanke 2001; Chung,
Forney, Richardson, Urbanke 2001) and the iterative linear program of Richardson, Shokrollahi
and Urbanke (2001): for check degrees concentrated on two integers, λ maximises the rate subject
to the message error probability falling at every iteration of the trajectory, the stability
bound λ₂ ≤ 1/(B ρ'(1)), B = 2√(p(1−p)), and at most 0.97 degree-2 variables per check (so they
fit on a cycle-free chain); variable degrees up to 40 (``benchmarks/ldpc_design.py`` makes
them). The application to QKD follows Elkouss, Leverrier, Alléaume, Boutros (ISIT 2009). The
matrix is drawn from the socket (configuration) model; its 4-cycles and double edges are then
removed by degree-preserving random edge swaps, pass after pass while a pass still removes 2 %
of them (the densest codes, check degrees 40–64, keep some 4-cycles).

Puncturing order (:func:`puncture_order`): untainted puncturing (Elkouss, Martinez-Mateo,
Martin, IEEE WCL 2012), i.e. no check node has two punctured neighbours among the first
positions of the order, so every punctured bit is recoverable in one BP step.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp  # type: ignore[import-untyped]


@dataclass(frozen=True)
class DegreeDistribution:
    """An irregular LDPC ensemble in edge perspective: ``lam`` maps a variable degree i to λ_i
    (fraction of edges at degree-i variable nodes); the check side is concentrated on the two
    integers around the edge-average check degree ``dc`` (units: edges per check node).
    ``design_qber`` is the BSC crossover probability it was optimised for."""

    design_qber: float
    lam: tuple[tuple[int, float], ...]
    dc: float

    def check_edge_fractions(self) -> dict[int, float]:
        lo = int(np.floor(self.dc))
        frac_lo = lo + 1 - self.dc
        return {lo: frac_lo, lo + 1: 1.0 - frac_lo}

    def design_rate(self) -> float:
        """Ensemble rate 1 − (Σ ρ_j/j)/(Σ λ_i/i)."""
        sv = sum(w / i for i, w in self.lam)
        sc = sum(w / j for j, w in self.check_edge_fractions().items())
        return 1.0 - sc / sv


#: The code family, by index; ordered by design QBER (so by decreasing rate). Designed by density
#: evolution (module docstring; ``python benchmarks/ldpc_design.py`` prints these lines).
FAMILY: tuple[DegreeDistribution, ...] = (
    # rate 0.9114, density-evolution threshold 0.0100: f = 1.0936 there
    DegreeDistribution(
        0.01, ((2, 0.03019), (3, 0.28139), (4, 0.04627), (8, 0.05009), (9, 0.14488),
         (10, 0.13259), (12, 0.03444), (14, 0.11646), (16, 0.03287), (20, 0.11423), (25, 0.01658)),
        64.25),
    # rate 0.8784, density-evolution threshold 0.0150: f = 1.0795 there
    DegreeDistribution(
        0.015, ((2, 0.04195), (3, 0.27871), (4, 0.04862), (8, 0.01752), (9, 0.14096),
         (10, 0.15762), (12, 0.04388), (14, 0.03478), (16, 0.07172), (20, 0.09762), (25, 0.06663)),
        46.25),
    # rate 0.8471, density-evolution threshold 0.0201: f = 1.0785 there
    DegreeDistribution(
        0.02, ((2, 0.05279), (3, 0.20000), (4, 0.15270), (5, 0.03500), (9, 0.03826),
         (10, 0.07464), (12, 0.08383), (14, 0.10000), (16, 0.10625), (20, 0.09972), (25, 0.04981),
         (30, 0.00701)),
        36.75),
    # rate 0.8185, density-evolution threshold 0.0251: f = 1.0738 there
    DegreeDistribution(
        0.025, ((2, 0.06309), (3, 0.18437), (4, 0.15580), (5, 0.04119), (6, 0.00879), (7, 0.00037),
         (9, 0.04661), (10, 0.07516), (12, 0.05953), (14, 0.07813), (16, 0.08438), (20, 0.10171),
         (25, 0.07417), (30, 0.02060), (35, 0.00611)),
        30.75),
    # rate 0.7947, density-evolution threshold 0.0301: f = 1.0534 there
    DegreeDistribution(
        0.03, ((2, 0.07252), (3, 0.27165), (4, 0.02566), (8, 0.02190), (9, 0.15024),
         (10, 0.14414), (12, 0.05739), (20, 0.04197), (25, 0.15282), (30, 0.06172)),
        26.75),
    # rate 0.7471, density-evolution threshold 0.0400: f = 1.0428 there
    DegreeDistribution(
        0.04, ((2, 0.09023), (3, 0.26617), (7, 0.00391), (8, 0.08133), (9, 0.16697),
         (10, 0.08941), (12, 0.01056), (20, 0.02190), (25, 0.13595), (30, 0.13356)),
        21.5),
    # rate 0.7033, density-evolution threshold 0.0500: f = 1.0365 there
    DegreeDistribution(
        0.05, ((2, 0.10778), (3, 0.25072), (8, 0.12993), (9, 0.16581), (10, 0.03902),
         (20, 0.00391), (25, 0.14711), (30, 0.14867), (35, 0.00705)),
        18.0),
    # rate 0.6432, density-evolution threshold 0.0649: f = 1.0288 there
    DegreeDistribution(
        0.065, ((2, 0.12933), (3, 0.18738), (4, 0.05428), (5, 0.02421), (6, 0.00489),
         (7, 0.02818), (8, 0.03984), (9, 0.04947), (10, 0.07742), (12, 0.08183), (14, 0.02171),
         (16, 0.01681), (20, 0.01886), (25, 0.03710), (30, 0.04276), (35, 0.09523), (40, 0.09069)),
        15.0),
    # rate 0.5878, density-evolution threshold 0.0799: f = 1.0254 there
    DegreeDistribution(
        0.08, ((2, 0.14570), (3, 0.15390), (4, 0.06230), (5, 0.04079), (6, 0.03851), (7, 0.02011),
         (8, 0.02505), (9, 0.03065), (10, 0.03945), (12, 0.05324), (14, 0.04229), (16, 0.02466),
         (20, 0.02415), (25, 0.02579), (30, 0.06628), (35, 0.09469), (40, 0.11242)),
        13.0),
    # rate 0.5203, density-evolution threshold 0.1000: f = 1.0227 there
    DegreeDistribution(
        0.1, ((2, 0.15625), (3, 0.16105), (4, 0.05432), (5, 0.03125), (6, 0.04251), (7, 0.01875),
         (8, 0.02965), (9, 0.03750), (10, 0.04375), (12, 0.04461), (14, 0.02324), (16, 0.01116),
         (20, 0.00143), (30, 0.08568), (35, 0.10953), (40, 0.14932)),
        11.0),
)


def _generator(*parts: int | str) -> np.random.Generator:
    """A Generator seeded from the parameters (SHA-256 of their text, so stable across
    platforms and numpy versions' seeding of int tuples)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _node_degrees(weights: dict[int, float], count: int) -> np.ndarray:
    """Node degrees (one per node, sorted ascending) for edge fractions ``weights``: node
    fractions Λ_i ∝ λ_i / i, rounded by largest remainder so that they sum to ``count``."""
    degs = np.array(sorted(weights))
    node = np.array([weights[d] / d for d in degs])
    node /= node.sum()
    raw = node * count
    nodes = np.floor(raw).astype(np.int64)
    rest = count - int(nodes.sum())
    nodes[np.argsort(-(raw - nodes), kind="stable")[:rest]] += 1
    return np.repeat(degs, nodes)


def _check_degrees(edges: int, m: int, dc: float) -> np.ndarray:
    """Check-node degrees, the two integers around edges/m, summing to ``edges``."""
    lo = edges // m
    hi_count = edges - lo * m
    out = np.full(m, lo, dtype=np.int64)
    out[:hi_count] += 1
    return out


def _doubles(rows: np.ndarray, cols: np.ndarray, n: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edge order by (check, variable), the sorted keys, mask of the second and later copies
    of a double edge)."""
    key = rows.astype(np.int64) * n + cols
    order = np.argsort(key, kind="stable")
    sorted_keys = key[order]
    dup = np.zeros(rows.size, dtype=bool)
    dup[order[1:][sorted_keys[1:] == sorted_keys[:-1]]] = True
    return order, sorted_keys, dup


def _bad_edges(rows: np.ndarray, cols: np.ndarray, m: int, n: int) -> np.ndarray:
    """Indices of edges to move: the second and later copies of a double edge, and for each
    pair of checks sharing two or more variables (a 4-cycle), one shared edge of the pair: the
    edge (later check, highest shared variable) (nodes are sorted by degree, so never a
    degree-2 chain edge)."""
    order, sorted_keys, dup = _doubles(rows, cols, n)
    # every pair of checks (a < b) that share a variable v, as (a·m + b, v): from each
    # variable's sorted distinct checks, the pairs k apart for k = 1, 2, ...
    ok = ~dup
    hc = sp.csc_matrix((np.ones(int(ok.sum()), dtype=np.int32), (rows[ok], cols[ok])),
                       shape=(m, n))
    hc.sort_indices()
    indptr, checks = hc.indptr, hc.indices.astype(np.int64)
    var_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    ends = indptr[1:][var_of]
    pair_keys, pair_vars = [], []
    pos = np.arange(checks.size, dtype=np.int64)
    for k in range(1, int(np.diff(indptr).max(initial=0))):
        sel = pos[pos + k < ends]
        if not sel.size:
            break
        pair_keys.append(checks[sel] * m + checks[sel + k])
        pair_vars.append(var_of[sel])
    bad = [np.flatnonzero(dup)]
    if pair_keys:
        both = np.concatenate(pair_keys) * n + np.concatenate(pair_vars)  # < m²·n < 2⁶³
        both.sort()                           # by pair, then variable ascending
        pk, pv = both // n, both % n
        last = np.ones(pk.size, dtype=bool)   # the last entry of each pair: its highest v
        last[:-1] = pk[1:] != pk[:-1]
        first = np.ones(pk.size, dtype=bool)
        first[1:] = pk[1:] != pk[:-1]
        shared2 = last & ~first               # pairs that share two or more variables
        b, v = pk[shared2] % m, pv[shared2]
        k_idx = np.searchsorted(sorted_keys, b * n + v)
        bad.append(order[k_idx])
    return np.unique(np.concatenate(bad).astype(np.int64))


@dataclass(frozen=True)
class Code:
    """A built code: ``h`` (scipy CSR, uint8, m × n), ``puncture`` (all variable positions in
    puncturing order, int64), ``untainted`` (how many leading positions of that order are
    untainted), ``cycles4`` (edges still on a 4-cycle after the swap passes; 0 in the sparser
    codes at 2^15 and above), ``shorten`` (all variable positions in a seeded random order, the
    order in which positions that are neither punctured nor key bits are shortened: at random,
    so that shortening keeps the degree distribution)."""

    h: sp.csr_matrix
    puncture: np.ndarray
    untainted: int
    cycles4: int
    shorten: np.ndarray

    @property
    def m(self) -> int:
        return int(self.h.shape[0])

    @property
    def n(self) -> int:
        return int(self.h.shape[1])


def _construct(dist: DegreeDistribution, n: int, rng: np.random.Generator,
               passes: int = 60) -> tuple[sp.csr_matrix, int]:
    var_deg = _node_degrees(dict(dist.lam), n)  # ascending: degree-2 nodes first
    edges = int(var_deg.sum())
    m = int(round(n * (1.0 - dist.design_rate())))
    chk_deg = _check_degrees(edges, m, dist.dc)
    n2 = int(np.count_nonzero(var_deg == 2))
    if n2 >= m:
        raise ValueError("degree distribution has more degree-2 variables than checks")
    # degree-2 variables on a zig-zag chain through the checks in a random order: no cycle
    # runs through degree-2 nodes only, which would be a low-weight codeword (error floor)
    chain = rng.permutation(m)
    fixed_rows = np.stack([chain[:n2], chain[1:n2 + 1]], axis=1).reshape(-1)
    fixed_cols = np.repeat(np.arange(n2, dtype=np.int64), 2)
    left = chk_deg - np.bincount(fixed_rows, minlength=m)
    free_cols = np.repeat(np.arange(n2, n, dtype=np.int64), var_deg[n2:])
    free_rows = np.repeat(np.arange(m, dtype=np.int64), left)
    rng.shuffle(free_rows)
    rows = np.concatenate([fixed_rows, free_rows])
    cols = np.concatenate([fixed_cols, free_cols])
    n_fixed = fixed_rows.size
    bad = _bad_edges(rows, cols, m, n)
    before, doubles_only = float("inf"), False
    for _ in range(passes):
        bad = bad[bad >= n_fixed]
        if not doubles_only and bad.size > 0.98 * before:
            # the swaps no longer gain (dense codes settle at some 4-cycles): from here on
            # only double edges move, which must all go (they cancel in GF(2))
            doubles_only = True
        if doubles_only:
            bad = np.flatnonzero(_doubles(rows, cols, n)[2])
            bad = bad[bad >= n_fixed]
        if bad.size == 0:
            break
        before = bad.size
        # swap the check ends of each bad edge with those of a random free edge (keeps both
        # degree sequences); distinct partners so that the swaps do not interfere
        partners = n_fixed + rng.choice(edges - n_fixed, size=bad.size, replace=False)
        partners = partners[~np.isin(partners, bad)]
        bad = bad[:partners.size]
        rows[bad], rows[partners] = rows[partners], rows[bad].copy()
        bad = _bad_edges(rows, cols, m, n)
    if doubles_only:
        bad = _bad_edges(rows, cols, m, n)
    h = sp.csr_matrix((np.ones(edges, dtype=np.uint8), (rows, cols)), shape=(m, n))
    h.sum_duplicates()
    h.data %= 2
    h.eliminate_zeros()
    return h.astype(np.uint8), int(bad.size)


def _untainted_order(h: sp.csr_matrix, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """All variable positions, untainted ones first (greedy: lowest degree first, ties in a
    seeded random order; a position is taken if none of its checks already has a punctured
    neighbour), then the rest in the same order."""
    hc = h.tocsc()
    deg = np.diff(hc.indptr)
    cand = np.lexsort((rng.permutation(h.shape[1]), deg))
    tainted = np.zeros(h.shape[0], dtype=bool)
    first: list[int] = []
    indptr, indices = hc.indptr, hc.indices
    for v in cand.tolist():
        checks = indices[indptr[v]:indptr[v + 1]]
        if not tainted[checks].any():
            tainted[checks] = True
            first.append(v)
    taken = np.zeros(h.shape[1], dtype=bool)
    taken[first] = True
    order = np.concatenate([np.array(first, dtype=np.int64), cand[~taken[cand]]])
    return order, len(first)


@functools.lru_cache(maxsize=16)
def parity_check(family: int, n: int, seed: int) -> Code:
    """The code of family member ``family`` (index into :data:`FAMILY`) with ``n`` variable
    nodes (the frame length, bits), drawn with ``seed``; cached. Deterministic: the same three
    numbers give the same matrix and puncturing order on every machine."""
    if not 0 <= family < len(FAMILY):
        raise ValueError(f"unknown code family {family} (0..{len(FAMILY) - 1})")
    if not 256 <= n <= 1 << 20:
        raise ValueError(f"frame length must lie in [256, 2^20], got {n}")
    rng = _generator("qnode-ldpc-v2", family, n, seed)
    h, left = _construct(FAMILY[family], n, rng)
    order, untainted = _untainted_order(h, rng)
    return Code(h=h, puncture=order, untainted=untainted, cycles4=left,
                shorten=rng.permutation(n).astype(np.int64))
