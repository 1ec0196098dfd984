"""Estimator formulas (daemon/estimators.py): values against hand calculations, errors against
Monte-Carlo spread of Poisson counts."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qnode.daemon import estimators as est


def test_expected_accidentals_formula():
    # R1 = 1e5/s, R2 = 2e5/s over T = 1 s, w = 1 ns: A = R1·R2·2w·T = 40.
    a = est.expected_accidentals(1e5, 2e5, 1_000, 1e12)
    assert a.value == pytest.approx(40.0)
    assert a.sigma == pytest.approx(40.0 * math.sqrt(1 / 1e5 + 1 / 2e5))


def test_car_value_and_error():
    r = est.car(1100, 100)
    assert r.value == pytest.approx(10.0)
    assert r.sigma == pytest.approx(math.sqrt(1100 / 100**2 + 1100**2 / 100**3))
    assert math.isnan(est.car(10, 0).value)
    fixed = est.car(1100, 100, accidentals_sigma=0.0)
    assert fixed.sigma == pytest.approx(math.sqrt(1100) / 100)


def test_klyshko_efficiencies():
    eta_s, eta_i = est.klyshko_efficiencies(coincidences=2_100, accidentals=100, singles_s=10_000,
                                            singles_i=20_000)
    assert eta_s.value == pytest.approx(2_000 / 20_000)
    assert eta_i.value == pytest.approx(2_000 / 10_000)
    assert eta_s.sigma == pytest.approx(math.sqrt(2_100 * (1 - 2_100 / 20_000) + 100) / 20_000)
    sym = est.symmetric_heralding_efficiency(2_100, 100, 10_000, 20_000)
    assert sym.value == pytest.approx(2_000 / math.sqrt(2e8))


def test_correlation_and_visibility():
    e = est.correlation(450, 450, 50, 50)
    assert e.value == pytest.approx(0.8)
    assert e.sigma == pytest.approx(math.sqrt((1 - 0.8**2) / 1000))
    sub = est.correlation(460, 460, 60, 60, accidentals=(10, 10, 10, 10))
    assert sub.value == pytest.approx(0.8)
    assert sub.sigma > e.sigma
    v = est.visibility(900, 100)
    assert v.value == pytest.approx(0.8)
    assert v.sigma == pytest.approx(2 * math.sqrt(900 * 100 * 1000) / 1000**2)
    q = est.qber(50, 950)
    assert q.value == pytest.approx(0.05)
    s = est.chsh(*(est.Estimate(x, 0.01) for x in (0.7, -0.7, 0.7, 0.7)))
    assert s.value == pytest.approx(2.8) and s.sigma == pytest.approx(0.02)


def test_bad_counts_are_named():
    with pytest.raises(ValueError, match="coincidences"):
        est.car(-1, 10)
    with pytest.raises(ValueError, match="accidentals"):
        est.correlation(1, 1, 1, 1, accidentals=(1, 2))


@pytest.mark.parametrize("fn,args", [
    (lambda c, a: est.car(c, a), (3_000.0, 200.0)),
    (lambda *n: est.correlation(*n), (3_000.0, 2_800.0, 200.0, 150.0)),
    (lambda *n: est.correlation(*n[:4], accidentals=n[4:]), (3_000.0, 2_800.0, 200.0, 150.0,
                                                            50.0, 50.0, 50.0, 50.0)),
    (lambda c, a: est.visibility(c, a), (3_000.0, 200.0)),
])
def test_errors_match_poisson_spread(fn, args):
    """The quoted sigma agrees with the spread of the estimate over Poisson draws (±10 %)."""
    rng = np.random.default_rng(5)
    means = args
    draws = rng.poisson(means, size=(20_000, len(means)))
    values = np.array([fn(*d).value for d in draws])
    assert fn(*means).sigma == pytest.approx(values.std(), rel=0.1)
