"""Design the reconciliation code family (``ldpc_codes.FAMILY``) by density evolution.

For each design QBER p: check degrees concentrated on the two integers around ``dc`` (chosen so
that the average variable degree stays near 5.5 at a rate about 1 − 1.06·h(p)), variable
degrees from :data:`DEGREES`; λ starts spread evenly over the degrees ≥ 3 (a low-rate
ensemble that converges) and climbs by the iterative linear program of
:func:`qnode.daemon.qkd.density_evolution.optimise` (every iteration of the trajectory must cut
the message error probability by ``--margin``, relative). Prints, per family, the rate, the
density-evolution threshold, the efficiency at the design point and at the threshold
((1 − R)/h(p)), the average variable degree, and a ``DegreeDistribution`` line to paste into
``daemon/qkd/ldpc_codes.py``.

    python benchmarks/ldpc_design.py [--qbers 0.01 0.02 ...] [--rounds 80] [--margin 0.005]

Takes minutes per family on one core; prints progress per round.
"""
from __future__ import annotations

import argparse
import math
import time

from qnode.daemon.qkd import density_evolution as de
from qnode.daemon.qkd.ldpc_codes import FAMILY

#: variable-node degrees the design may use
DEGREES = (2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 20, 25, 30, 35, 40)


def _h(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def check_degree(p: float, var_degree: float = 5.5, efficiency: float = 1.06) -> float:
    """Edge-average check degree for an average variable degree ``var_degree`` at rate
    1 − efficiency·h(p), rounded to a quarter."""
    return round(4 * var_degree / (efficiency * _h(p))) / 4


def design(p: float, rounds: int, margin: float) -> None:
    dc = check_degree(p)
    rho = de.concentrated_rho(dc)
    start = {i: 1.0 / sum(1 for d in DEGREES if d >= 3) for i in DEGREES if i >= 3}
    t0 = time.time()
    lam = de.optimise(p, rho, DEGREES, start, rounds=rounds, trust=0.05, margin=margin,
                      log=lambda msg: print(f"  p={p}: {msg}", flush=True))
    rate = de.design_rate(lam, rho)
    th = de.threshold(lam, rho, lo=0.8 * p, hi=1.3 * p, tol=1e-4)
    avg_v = 1.0 / sum(w / i for i, w in lam.items())
    print(f"p={p}: dc {dc}, rate {rate:.4f}, DE threshold {th:.4f}, f at p "
          f"{(1 - rate) / _h(p):.4f}, f at threshold {(1 - rate) / _h(th):.4f}, average "
          f"variable degree {avg_v:.2f} ({time.time() - t0:.0f} s)", flush=True)
    terms = ", ".join(f"({i}, {w:.5f})" for i, w in sorted(lam.items()))
    print(f"    DegreeDistribution(\n        {p}, ({terms}),\n        {dc}),", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qbers", type=float, nargs="+",
                    default=[d.design_qber for d in FAMILY])
    ap.add_argument("--rounds", type=int, default=80)
    ap.add_argument("--margin", type=float, default=0.005)
    args = ap.parse_args()
    for p in args.qbers:
        design(p, args.rounds, args.margin)


if __name__ == "__main__":
    main()
