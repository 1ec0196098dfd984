"""Detector bias -> efficiency and dark counts -> the photon stream, through the real driver.

The Single Quantum driver sets bias currents over TCP on the simulated SNSPD system; the coupling
moves the twin's efficiency and dark-count rate into the photon simulator; the registered singles
follow, within Poisson errors.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from qnode.drivers.single_quantum import SingleQuantum
from qnode.hal_sim import BellDiagonalState, CWSource, Link, PhotonStreamSimulator, simple_node
from qnode.hal_sim.physics.coupling import apply_detector_bias
from qnode.hal_sim.twins.single_quantum import SingleQuantumSim, SingleQuantumTwin

B = 2e5          # pairs/s
SLICE = 20_000_000_000  # 20 ms
WIRING = {0: ("alice", 1), 1: ("alice", 2)}


def run_slices(sim: PhotonStreamSimulator, n: int) -> int:
    """Alice's registered tags over n slices."""
    return sum(int(sim.step().blocks["alice"].size) for _ in range(n))


def expected_singles(sim: PhotonStreamSimulator, n: int) -> float:
    """Photons reaching alice's two detectors times their efficiencies, plus darks, over n
    slices (dead time negligible at these rates)."""
    node = sim.link.nodes[0]
    t = n * SLICE * 1e-12
    photons_per_detector = B * node.fibre.transmission / 2
    return sum((photons_per_detector * d.efficiency + d.dark_count_rate_hz) * t
               for d in node.detectors)


def test_bias_current_sets_efficiency_and_dark_counts_of_the_photon_stream():
    link = Link(CWSource(B), BellDiagonalState.werner(0.95),
                (simple_node("alice", (1, 2), length_km=1.0, efficiency=0.5, dark_count_rate_hz=0),
                 simple_node("bob", (3, 4), length_km=1.0)))
    sim = PhotonStreamSimulator(link, seed=5, slice_ps=SLICE)
    snspd = SingleQuantumSim(n_detectors=2, switching_current_ua=20.0)
    with SingleQuantumTwin(snspd) as twin, SingleQuantum.connect(
            twin.host, control_port=twin.control_port, counts_port=twin.counts_port,
            timeout_s=1.0) as driver:
        measured = {}
        for bias in (18.0, 12.0, 19.8):
            driver.set_bias_currents_ua([bias, bias])
            applied = apply_detector_bias(sim, snspd, WIRING)
            eff, dark = applied[("alice", 1)]
            assert eff == pytest.approx(snspd.efficiency(0))
            assert sim.link.nodes[0].detectors[0].efficiency == pytest.approx(eff)
            n = run_slices(sim, 10)
            expected = expected_singles(sim, 10)
            assert abs(n - expected) <= 5 * math.sqrt(expected) + 5, (bias, n, expected)
            measured[bias] = (n, eff, dark)
    # working point (18 uA) >> below the knee (12 uA)
    assert measured[18.0][0] > 20 * measured[12.0][0]
    # darks: floor + D_sw * exp((I - I_sw) / (dark_scale * I_sw)), steeply up towards switching
    def darks(i_ua: float) -> float:
        return snspd.dark_floor_hz + snspd.dark_at_switching_hz * math.exp(
            (i_ua - 20.0) / (snspd.dark_scale * 20.0))
    assert measured[19.8][2] == pytest.approx(darks(19.8), rel=1e-9)
    assert measured[18.0][2] == pytest.approx(darks(18.0), rel=1e-9)
    assert measured[19.8][2] > 15 * measured[18.0][2]


def test_set_detector_rejects_unknown_channels_and_bad_values():
    link = Link(CWSource(B), BellDiagonalState.werner(0.95),
                (simple_node("alice", (1, 2)), simple_node("bob", (3, 4))))
    sim = PhotonStreamSimulator(link, seed=1)
    with pytest.raises(ValueError, match="no detector on channel 9"):
        sim.set_detector("alice", 9, efficiency=0.5)
    with pytest.raises(ValueError, match="efficiency"):
        sim.set_detector("alice", 1, efficiency=1.5)
    sim.set_detector("bob", 4, dark_count_rate_hz=1234.0)
    assert [d.dark_count_rate_hz for d in sim.link.nodes[1].detectors][1] == 1234.0
    assert np.isclose(sim.link.nodes[1].detectors[0].dark_count_rate_hz, 100.0)
