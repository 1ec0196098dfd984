"""Expected accidentals against what the native core counts: the window |Δt| ≤ w on integer
picoseconds holds 2w + 1 values of Δt, so A = N1·N2·(2w + 1)/T, not N1·N2·2w/T.

Two independent streams of uniform integer-ps timestamps (Poisson numbers of tags, 2·10⁻³ tags
per ps each, T = 10⁹ ps) are counted by the C core and by a plain numpy count (searchsorted on
[t − w, t + w], both edges included); both counts must agree exactly, and the prediction must
lie within 5σ of them. σ² = A·(1 + (R1 + R2)·τ): the Poisson variance plus the pairs that share a
tag (with the numbers of tags fixed the spread is somewhat smaller, so this σ is conservative).
With A ≈ 4000·(2w + 1) counts, the old 2w prediction is 63σ off at w = 0 (it predicts 0), 36σ
at w = 1, 28σ at w = 2 (−20 %) and 19σ at w = 5; at w = 1000 the 1-ps difference (0.05 %) is
below the noise, and that case only checks that the corrected formula still holds.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from qnode import native
from qnode.daemon.quantum import estimators as est
from qnode.daemon.quantum.feu import FidelityEstimationUnit

T_PS = 1_000_000_000
RATE_PER_PS = 2e-3           # 2 GHz per stream: many accidentals in a short run
N_SIGMA = 5.0                # tolerance of the corrected prediction (two-sided p ≈ 6·10⁻⁷)
WINDOWS = (0, 1, 2, 5, 1000)
RESOLVED = (0, 1, 2, 5)      # windows where the old 2w prediction must be rejected


@pytest.fixture(scope="module")
def streams() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times of channel 1, times of channel 2, the merged TagBlock); sorted, integer ps."""
    rng = np.random.default_rng(20240521)
    t1 = np.sort(rng.integers(0, T_PS, rng.poisson(RATE_PER_PS * T_PS)))
    t2 = np.sort(rng.integers(0, T_PS, rng.poisson(RATE_PER_PS * T_PS)))
    block = native.sort_block(np.concatenate([native.tag_block(t1, 1), native.tag_block(t2, 2)]))
    return t1, t2, block


def numpy_count(t1: np.ndarray, t2: np.ndarray, w: int) -> int:
    """Pairs (a in t1, b in t2) with |b − a| ≤ w, both edges included."""
    return int((np.searchsorted(t2, t1 + w, "right") - np.searchsorted(t2, t1 - w, "left")).sum())


def sigma(expected: float, n1: int, n2: int, w: int) -> float:
    return math.sqrt(expected * (1.0 + (n1 + n2) / T_PS * (2 * w + 1)))


def test_full_window_counts_integer_offsets():
    assert [est.full_window_ps(w) for w in WINDOWS] == [1.0, 3.0, 5.0, 11.0, 2001.0]
    assert est.full_window_ps(2.5) == 5.0      # |Δt| ≤ 2.5 admits −2..2
    for bad in (-1, math.nan, math.inf):
        with pytest.raises(ValueError):
            est.full_window_ps(bad)


@pytest.mark.parametrize("w", WINDOWS)
def test_prediction_matches_native_and_numpy_counts(streams, w):
    t1, t2, block = streams
    counter = native.Coincidences([(1, 2)], w)
    counter.process(block)
    counted = int(counter.totals.coincidences[0])
    assert counted == numpy_count(t1, t2, w)
    assert counter.totals.singles.tolist() == [t1.size, t2.size]

    predicted = est.expected_accidentals(t1.size, t2.size, w, T_PS)
    s = sigma(predicted.value, t1.size, t2.size, w)
    assert abs(counted - predicted.value) <= N_SIGMA * s, (w, counted, predicted.value, s)
    old = t1.size * t2.size * 2 * w / T_PS
    if w in RESOLVED:  # the test can tell the two formulas apart here
        assert abs(counted - old) > 3 * N_SIGMA * s, (w, counted, old, s)


def test_zero_window_predicts_one_offset(streams):
    t1, t2, _ = streams
    a = est.expected_accidentals(t1.size, t2.size, 0, T_PS)
    assert a.value == pytest.approx(t1.size * t2.size / T_PS)
    assert a.value > 3000
    assert numpy_count(t1, t2, 0) > 3000     # equal timestamps do happen and are counted


def test_displaced_window_accidentals_match_too(streams):
    """The core's accidentals (|Δt − offset| ≤ w) are a window of the same 2w + 1 values."""
    t1, t2, block = streams
    w, offset = 2, 50
    counter = native.Coincidences([(1, 2)], w, accidental_offset_ps=offset)
    counter.process(block)
    acc = int(counter.totals.accidentals[0])
    predicted = est.expected_accidentals(t1.size, t2.size, w, T_PS).value
    assert abs(acc - predicted) <= N_SIGMA * sigma(predicted, t1.size, t2.size, w)


def test_feu_accidentals_with_the_core_window(streams):
    """The FEU takes the full window τ: built with full_window_ps(w) its accidental rate at zero
    pump power (the background alone, two uncorrelated streams) is what the core counts."""
    t1, t2, block = streams
    w = 2
    t_s = T_PS * 1e-12
    feu = FidelityEstimationUnit(brightness_hz_per_mw=1.0, efficiency_a=0.5, efficiency_b=0.5,
                                 window_ps=est.full_window_ps(w), visibility=0.9,
                                 max_power_mw=1.0, dark_a_hz=t1.size / t_s,
                                 dark_b_hz=t2.size / t_s)
    predicted = feu.detail(0.0).accidental_hz * t_s
    counted = numpy_count(t1, t2, w)
    s = sigma(predicted, t1.size, t2.size, w)
    assert abs(counted - predicted) <= N_SIGMA * s
    assert abs(counted - predicted * 2 * w / (2 * w + 1)) > 3 * N_SIGMA * s  # τ = 2w: rejected
