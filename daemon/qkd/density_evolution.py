"""Discretized density evolution of sum-product decoding on the binary symmetric channel, and
the design of irregular LDPC degree distributions with it.

Density evolution (Richardson and Urbanke, IEEE Trans. Inf. Theory 47, 2001) follows the
probability density of the messages of belief propagation on a cycle-free graph of an LDPC
ensemble, for the all-zero codeword (enough for a symmetric channel and decoder). Messages are
log-likelihood ratios on a uniform grid x_k = k·Δ, k = −K..K (:class:`Grid`), as in the
discretized density evolution of Chung, Forney, Richardson and Urbanke (IEEE Commun. Lett. 5,
2001):

* **variable node** of degree i: the channel LLR plus i − 1 incoming check messages, a
  convolution of densities (real FFTs; mass beyond ±K·Δ is kept at the edge bins);
* **check node** of degree j: the quantized pairwise rule
  R(a, b) = 2 atanh(tanh(a/2) tanh(b/2)) applied j − 2 times, by repeated squaring. With
  S = p(+m) + p(−m) and D = p(+m) − p(−m) per magnitude bin m, the pairwise rule takes S to the
  table-folded product of S_a and S_b and D likewise, so signs cost nothing extra.

:func:`error_trajectory` runs the ensemble at a crossover probability p; :func:`threshold`
bisects for the largest p at which the message error probability goes to zero;
:func:`optimise` designs λ for a given check-node distribution by the iterative linear program
of Richardson, Shokrollahi and Urbanke (IEEE Trans. Inf. Theory 47, 2001): on the densities of
the current ensemble's trajectory, the next λ must bring the error probability down at every
iteration by a margin, keep the stability condition λ₂ ≤ 1/(B ρ'(1)), B = 2√(p(1−p)), and stay
within a trust region of the current λ, while maximising the rate Σ λ_i / i.

The published BP thresholds of regular ensembles on the BSC are the check (tests: (3,6) 0.084,
(4,8) 0.076; Richardson and Urbanke 2001, Table I). Used offline, by
``benchmarks/ldpc_design.py``, to make :data:`qnode.daemon.qkd.ldpc_codes.FAMILY`; nothing in
the daemon runs it.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """The LLR grid: ``k_max`` bins each side of 0, step ``step`` (nats); LLRs beyond
    ±k_max·step are clipped to the edge bins."""

    step: float = 0.05
    k_max: int = 500

    @property
    def size(self) -> int:
        return 2 * self.k_max + 1


@functools.lru_cache(maxsize=4)
def _boxplus_table(grid: Grid) -> np.ndarray:
    """Flat index of the output magnitude bin for each pair of input magnitude bins (m1, m2):
    round(2 atanh(tanh(m1Δ/2) tanh(m2Δ/2)) / Δ)."""
    m = np.arange(grid.k_max + 1, dtype=np.float64)
    t = np.tanh(m * grid.step / 2.0)
    prod = np.minimum(np.outer(t, t), 1.0 - 1e-16)
    out = np.rint(2.0 * np.arctanh(prod) / grid.step).astype(np.int64)
    return np.minimum(out, grid.k_max).reshape(-1)


def _to_sd(density: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(S, D) per magnitude bin of a full density (index k + K)."""
    k = grid.k_max
    pos, neg = density[k:], density[k::-1]
    s, d = pos + neg, pos - neg
    s[0], d[0] = density[k], 0.0
    return s, d


def _from_sd(s: np.ndarray, d: np.ndarray, grid: Grid) -> np.ndarray:
    k = grid.k_max
    out = np.empty(grid.size)
    out[k:] = (s + d) / 2.0
    out[:k] = ((s[1:] - d[1:]) / 2.0)[::-1]
    out[k] = s[0]
    return out


def _boxplus(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
             grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    table = _boxplus_table(grid)
    bins = grid.k_max + 1
    s = np.bincount(table, weights=np.outer(a[0], b[0]).reshape(-1), minlength=bins)
    d = np.bincount(table, weights=np.outer(a[1], b[1]).reshape(-1), minlength=bins)
    return s, d


def _check_power(sd: tuple[np.ndarray, np.ndarray], count: int,
                 grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The pairwise rule over ``count`` ≥ 1 independent inputs of one density."""
    result: tuple[np.ndarray, np.ndarray] | None = None
    base = sd
    while count:
        if count & 1:
            result = base if result is None else _boxplus(result, base, grid)
        count >>= 1
        if count:
            base = _boxplus(base, base, grid)
    assert result is not None
    return result


def check_update(v2c: np.ndarray, rho: Mapping[int, float], grid: Grid) -> np.ndarray:
    """Density of check-to-variable messages for edge-perspective check degrees ``rho``
    (degree j → ρ_j) and variable-to-check density ``v2c``."""
    sd = _to_sd(v2c, grid)
    s = np.zeros(grid.k_max + 1)
    d = np.zeros(grid.k_max + 1)
    for j, w in rho.items():
        if w > 0:
            ps, pd = _check_power(sd, j - 1, grid)
            s += w * ps
            d += w * pd
    return _from_sd(s, d, grid)


def channel_density(p: float, grid: Grid) -> np.ndarray:
    """The BSC's LLR density (all-zero word): mass 1 − p at +ln((1−p)/p), p at −ln((1−p)/p),
    each split linearly between the two nearest bins (so it is continuous in p)."""
    if not 0.0 < p < 0.5:
        raise ValueError(f"p must lie in (0, 0.5), got {p}")
    x = min(math.log((1.0 - p) / p) / grid.step, grid.k_max - 1e-9)
    lo = int(math.floor(x))
    frac = x - lo
    out = np.zeros(grid.size)
    for sign, mass in ((1, 1.0 - p), (-1, p)):
        out[grid.k_max + sign * lo] += mass * (1.0 - frac)
        out[grid.k_max + sign * (lo + 1)] += mass * frac
    return out


class _VariableSide:
    """Variable-node updates by real FFTs, with every degree's output available."""

    def __init__(self, channel: np.ndarray, max_degree: int, grid: Grid) -> None:
        self.grid = grid
        width = max_degree * grid.size
        self.nfft = 1 << math.ceil(math.log2(width))
        self.channel_f = np.fft.rfft(channel, self.nfft)

    def _fold(self, full: np.ndarray, copies: int) -> np.ndarray:
        """Cut the linear convolution of ``copies`` densities back to the grid (tails to the
        edge bins, FFT noise below 0 removed)."""
        k = self.grid.k_max
        centre = copies * k
        out = full[centre - k:centre + k + 1].copy()
        out[0] += full[:centre - k].sum()
        out[-1] += full[centre + k + 1:copies * self.grid.size].sum()
        np.maximum(out, 0.0, out=out)
        return out / out.sum()

    def update(self, c2v: np.ndarray, lam: Mapping[int, float]) -> tuple[np.ndarray, float]:
        """(mixed variable-to-check density, its error probability)."""
        cf = np.fft.rfft(c2v, self.nfft)
        out = np.zeros(self.grid.size)
        for i, w in lam.items():
            if w > 0:
                out += w * self.degree_output(cf, i)
        return out, error_probability(out, self.grid)

    def degree_output(self, cf: np.ndarray, degree: int) -> np.ndarray:
        """Output density of a degree-``degree`` variable node (``cf``: the check density's
        transform)."""
        full = np.fft.irfft(self.channel_f * cf ** (degree - 1), self.nfft)
        return self._fold(full, degree)


def error_probability(density: np.ndarray, grid: Grid) -> float:
    """P(message < 0) + ½ P(message = 0)."""
    return float(density[:grid.k_max].sum() + 0.5 * density[grid.k_max])


@dataclass(frozen=True)
class Trajectory:
    """A density-evolution run: ``errors[ℓ]`` the variable-to-check error probability after
    iteration ℓ (``errors[0]`` the channel's), ``converged`` when it fell below the target."""

    errors: tuple[float, ...]
    converged: bool


def error_trajectory(lam: Mapping[int, float], rho: Mapping[int, float], p: float, *,
                     grid: Grid = Grid(), max_iter: int = 400, target: float = 1e-7,
                     keep_checks: list[np.ndarray] | None = None) -> Trajectory:
    """Run density evolution for edge-perspective ``lam`` and ``rho`` at crossover ``p``. When
    ``keep_checks`` is a list, the check-to-variable density of every iteration is appended
    to it (the linear program's data)."""
    channel = channel_density(p, grid)
    var = _VariableSide(channel, max(lam), grid)
    v2c = channel
    errors = [error_probability(channel, grid)]
    stalled = 0
    for _ in range(max_iter):
        c2v = check_update(v2c, rho, grid)
        if keep_checks is not None:
            keep_checks.append(c2v)
        v2c, err = var.update(c2v, lam)
        errors.append(err)
        if err < target:
            return Trajectory(tuple(errors), True)
        # a fixed point: no relative progress for many iterations
        stalled = stalled + 1 if err > errors[-2] * (1 - 1e-5) else 0
        if stalled >= 20:
            break
    return Trajectory(tuple(errors), False)


def threshold(lam: Mapping[int, float], rho: Mapping[int, float], *, lo: float = 0.001,
              hi: float = 0.2, tol: float = 2e-4, grid: Grid = Grid(),
              max_iter: int = 400) -> float:
    """Largest p (within ``tol``) at which density evolution converges: bisection."""
    if not error_trajectory(lam, rho, lo, grid=grid, max_iter=max_iter).converged:
        return lo
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if error_trajectory(lam, rho, mid, grid=grid, max_iter=max_iter).converged:
            lo = mid
        else:
            hi = mid
    return lo


def concentrated_rho(dc: float) -> dict[int, float]:
    """Edge fractions of check degrees concentrated on the two integers around ``dc`` (the
    edge-average degree 1/Σ(ρ_j/j) is dc)."""
    lo = int(math.floor(dc))
    if lo == dc:
        return {lo: 1.0}
    # 1/dc = a/lo + (1−a)/(lo+1)
    a = (1.0 / dc - 1.0 / (lo + 1)) / (1.0 / lo - 1.0 / (lo + 1))
    return {lo: a, lo + 1: 1.0 - a}


def design_rate(lam: Mapping[int, float], rho: Mapping[int, float]) -> float:
    """1 − (Σ ρ_j/j)/(Σ λ_i/i)."""
    return 1.0 - sum(w / j for j, w in rho.items()) / sum(w / i for i, w in lam.items())


def optimise(p: float, rho: Mapping[int, float], degrees: Sequence[int],
             start: Mapping[int, float], *, rounds: int = 30, trust: float = 0.03,
             margin: float = 0.02, max_deg2_per_check: float = 0.97, grid: Grid = Grid(),
             max_iter: int = 400, log: Callable[[str], None] | None = None
             ) -> dict[int, float]:
    """λ (edge fractions on ``degrees``) of highest rate whose density evolution converges at
    ``p``, for check-node edge fractions ``rho``, starting from ``start`` (which should
    converge at ``p``). Returns the best converging λ found."""
    from scipy.optimize import linprog  # type: ignore[import-untyped]

    degs = sorted(degrees)
    lam = {i: float(start.get(i, 0.0)) for i in degs}
    best = dict(lam)
    sum_rho_over_j = sum(w / j for j, w in rho.items())
    rho_prime_1 = sum(w * (j - 1) for j, w in rho.items())
    stability = 1.0 / (2.0 * math.sqrt(p * (1.0 - p)) * rho_prime_1)
    for rnd in range(rounds):
        checks: list[np.ndarray] = []
        traj = error_trajectory(lam, rho, p, grid=grid, max_iter=max_iter, keep_checks=checks)
        if not traj.converged:
            if log:
                log(f"round {rnd}: current λ does not converge at p={p}; shrinking the step")
            lam = dict(best)
            trust /= 2.0
            if trust < 1e-4:
                break
            continue
        best = dict(lam)
        channel = channel_density(p, grid)
        var = _VariableSide(channel, max(degs), grid)
        rows = []
        bounds_b = []
        for ell, c2v in enumerate(checks):
            cf = np.fft.rfft(c2v, var.nfft)
            e = [error_probability(var.degree_output(cf, i), grid) for i in degs]
            rows.append(e)
            bounds_b.append((1.0 - margin) * traj.errors[ell])
        a_ub = np.array(rows)
        b_ub = np.array(bounds_b)
        # degree-2 stability and the chain limit: n·Λ₂ ≤ c·m ⇔ (λ₂/2) ≤ c·(Σρ_j/j)
        extra_a, extra_b = [], []
        if 2 in degs:
            row = np.zeros(len(degs))
            row[degs.index(2)] = 1.0
            extra_a += [row, row]
            extra_b += [stability, 2.0 * max_deg2_per_check * sum_rho_over_j]
        a_ub = np.vstack([a_ub, *extra_a]) if extra_a else a_ub
        b_ub = np.concatenate([b_ub, extra_b])
        cur = np.array([lam[i] for i in degs])
        res = linprog(-np.array([1.0 / i for i in degs]), A_ub=a_ub, b_ub=b_ub,
                      A_eq=np.ones((1, len(degs))), b_eq=[1.0],
                      bounds=[(max(0.0, c - trust), min(1.0, c + trust)) for c in cur],
                      method="highs")
        if res.status != 0:
            trust /= 2.0
            if log:
                log(f"round {rnd}: LP infeasible; trust {trust:.4f}")
            continue
        new = {i: float(v) for i, v in zip(degs, res.x, strict=True)}
        if log:
            log(f"round {rnd}: rate {design_rate(lam, rho):.5f} -> {design_rate(new, rho):.5f}"
                f" ({len(traj.errors) - 1} iterations)")
        if design_rate(new, rho) - design_rate(lam, rho) < 1e-6:
            break
        lam = new
    return {i: w for i, w in best.items() if w > 1e-6}
