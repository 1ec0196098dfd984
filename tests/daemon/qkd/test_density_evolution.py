"""Density evolution against published thresholds, and the code family against it."""
from __future__ import annotations

import numpy as np
import pytest

from qnode.daemon.qkd import density_evolution as de
from qnode.daemon.qkd.ldpc_codes import FAMILY


@pytest.mark.parametrize(("dv", "dc", "published"), [(3, 6, 0.084), (4, 8, 0.076)])
def test_regular_thresholds_match_richardson_urbanke(dv: int, dc: int, published: float) -> None:
    """BP thresholds of regular ensembles on the BSC, Richardson and Urbanke (IEEE Trans. Inf.
    Theory 47, 2001), Table I, given to three decimals."""
    found = de.threshold({dv: 1.0}, {dc: 1.0}, lo=0.05, hi=0.12, tol=2e-4)
    assert abs(found - published) < 1.5e-3


def test_trajectory_converges_below_and_sticks_above() -> None:
    lam, rho = {3: 1.0}, {6: 1.0}
    below = de.error_trajectory(lam, rho, 0.078)
    above = de.error_trajectory(lam, rho, 0.090)
    assert below.converged and below.errors[-1] < 1e-7
    assert not above.converged and above.errors[-1] > 1e-3
    # the error probability never rises along a converging run
    assert np.all(np.diff(below.errors) <= 1e-12)


def test_channel_density_is_the_bsc() -> None:
    grid = de.Grid()
    d = de.channel_density(0.03, grid)
    assert d.sum() == pytest.approx(1.0)
    assert de.error_probability(d, grid) == pytest.approx(0.03)


def test_concentrated_rho_has_the_asked_average() -> None:
    rho = de.concentrated_rho(23.4)
    assert set(rho) == {23, 24}
    assert 1.0 / sum(w / j for j, w in rho.items()) == pytest.approx(23.4)


@pytest.mark.parametrize("index", [2, 4])
def test_family_converges_at_its_design_qber(index: int) -> None:
    """Each code of the family works, by density evolution, at the QBER it was designed for
    (the margin the design kept), and not far above it."""
    dist = FAMILY[index]
    lam, rho = dict(dist.lam), de.concentrated_rho(dist.dc)
    assert de.error_trajectory(lam, rho, dist.design_qber).converged
    assert not de.error_trajectory(lam, rho, dist.design_qber * 1.15).converged
