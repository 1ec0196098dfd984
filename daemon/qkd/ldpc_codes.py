"""Irregular LDPC parity-check matrices for key reconciliation, built deterministically.

A code is named by ``(family index, frame length, seed)``: both ends call :func:`parity_check`
with the same three numbers and get the identical matrix, because every random choice comes
from one ``numpy.random.Generator`` seeded from them. Built codes are kept in a module-level
LRU cache (construction of a 2^16-bit code takes about a second).

The degree distributions (:data:`FAMILY`) were designed for the binary symmetric channel with
an EXIT-chart linear program (variable-node curves exact for the BSC's two-valued channel LLR,
Gaussian a-priori messages, check-node curves by the duality approximation; stability bound
λ₂ ≤ 1/(B ρ'(1)), B = 2√(p(1−p)); ten Brink, Kramer, Ashikhmin 2004; Richardson, Shokrollahi,
Urbanke 2001), check-concentrated, variable degrees ≤ 20, at most 0.97 degree-2 variables per
check (so they fit on a cycle-free chain), in the manner of Elkouss,
Leverrier, Alléaume, Boutros (ISIT 2009). The matrix is drawn from the socket (configuration)
model and its 4-cycles and double edges are then removed by degree-preserving edge swaps.

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


#: The code family, by index; ordered by design QBER (so by decreasing rate). Designed with the
#: EXIT linear program described in the module docstring (maximum variable degree 20).
FAMILY: tuple[DegreeDistribution, ...] = (
    DegreeDistribution(
        0.01, ((2, 0.0348), (3, 0.35104), (8, 0.1933), (10, 0.00472), (20, 0.41613)),
        55.75),
    DegreeDistribution(
        0.02, ((2, 0.06111), (3, 0.34528), (8, 0.1994), (10, 0.0061), (20, 0.38812)),
        31.75),
    DegreeDistribution(
        0.03, ((2, 0.08435), (3, 0.33279), (8, 0.20543), (20, 0.37737)),
        23.0),
    DegreeDistribution(
        0.04, ((2, 0.10636), (3, 0.31606), (7, 0.06094), (8, 0.15264), (20, 0.364)),
        18.25),
    DegreeDistribution(
        0.05, ((2, 0.12731), (3, 0.29795), (7, 0.13579), (8, 0.08502), (20, 0.35393)),
        15.25),
    DegreeDistribution(
        0.065, ((2, 0.15545), (3, 0.26607), (6, 0.0334), (7, 0.18618), (20, 0.35891)),
        12.5),
    DegreeDistribution(
        0.08, ((2, 0.18518), (3, 0.23711), (6, 0.11395), (7, 0.12965), (20, 0.33411)),
        10.5),
    DegreeDistribution(
        0.1, ((2, 0.21505), (3, 0.21442), (6, 0.18608), (7, 0.06969), (20, 0.31476)),
        8.75),
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


def _bad_edges(rows: np.ndarray, cols: np.ndarray, m: int, n: int) -> np.ndarray:
    """Indices of edges to move: the second and later copies of a double edge, and for each
    pair of checks sharing two or more variables (a 4-cycle), one shared edge of the pair: the
    edge (later check, highest shared variable) (nodes are sorted by degree, so never a
    degree-2 chain edge)."""
    key = rows.astype(np.int64) * n + cols
    order = np.argsort(key, kind="stable")
    sorted_keys = key[order]
    dup = np.zeros(rows.size, dtype=bool)
    dup[order[1:][sorted_keys[1:] == sorted_keys[:-1]]] = True
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
    untainted), ``cycles4`` (edges still on a 4-cycle after the swap passes; normally 0)."""

    h: sp.csr_matrix
    puncture: np.ndarray
    untainted: int
    cycles4: int

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
    for _ in range(passes):
        bad = bad[bad >= n_fixed]
        if bad.size == 0:
            break
        # swap the check ends of each bad edge with those of a random free edge (keeps both
        # degree sequences); distinct partners so that the swaps do not interfere
        partners = n_fixed + rng.choice(edges - n_fixed, size=bad.size, replace=False)
        partners = partners[~np.isin(partners, bad)]
        bad = bad[:partners.size]
        rows[bad], rows[partners] = rows[partners], rows[bad].copy()
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
    rng = _generator("qnode-ldpc-v1", family, n, seed)
    h, left = _construct(FAMILY[family], n, rng)
    order, untainted = _untainted_order(h, rng)
    return Code(h=h, puncture=order, untainted=untainted, cycles4=left)
