"""qnode.hal_sim: simulated instruments and the physics behind them.

Three subpackages: :mod:`qnode.hal_sim.physics` (the photons, detectors, clocks and quantum
states, with exact ground truth), :mod:`qnode.hal_sim.twins` (simulated instruments speaking the
real wire protocols on ptys and sockets) and :mod:`qnode.hal_sim.bench` (a bench file's twins
served and coupled to its links' physics: ``python -m qnode.hal_sim bench``). This module
re-exports the physics' public API.

Photon-stream physics of an M-type link (one SPDC source, two nodes), streamed as per-node
TagBlock chunks (``qnode.native.TAG_DTYPE``, int64 ps, time-ordered), deterministic from a seed,
with exact ground truth:

* sources: :class:`CWSource` (Poisson pairs at rate B), :class:`PulsedSource` (rep rate, μ pairs per
  pulse, Poisson or thermal);
* :class:`Fibre` (length, dB/km loss, delay = length·n_g/c or explicit, polarisation rotation);
* :class:`Analyzer` (Bloch vector of its '+' port; :func:`basis`, :func:`linear_polariser`) with two
  :class:`Detector` s (channel, efficiency, dark counts Hz, dead time ps, Gaussian jitter σ ps);
* :class:`Clock` per node (offset ps, drift ppm, optional frequency random walk);
* :class:`BellDiagonalState` (``BellDiagonalState.werner(V)``) for the pair's polarisation;
* :class:`Node`, :class:`Link`, :func:`simple_node`: the configuration;
* :class:`PhotonStreamSimulator`: ``stream(duration_ps)`` / ``step()`` / ``flush()`` yield
  :class:`SimChunk` (``blocks[node]`` TagBlock, ``truth`` :class:`ChunkTruth`); cumulative
  :class:`RunTruth` in ``sim.truth``.

K-type heralding (:mod:`qnode.hal_sim.physics.heralding`): :class:`HeraldingLink` (two memory nodes,
a midpoint station with four detectors, :func:`station_detectors`) and :class:`HeraldingSimulator`,
which streams the station's tags with the same stepping interface and a truth list of heralds
(:data:`HERALD_DTYPE`), totals (:class:`HeraldRunTruth`) and the closed form
(:func:`herald_expectation`). ``qnode.hal_sim.twins.tagger.SimulatorFanout`` lets several taggers
stream different nodes of one simulator.

Example::

    from qnode.hal_sim import (BellDiagonalState, Clock, CWSource, Link, PhotonStreamSimulator,
                               simple_node)

    link = Link(CWSource(pair_rate_hz=1e6), BellDiagonalState.werner(0.95),
                (simple_node("alice", (1, 2), length_km=1.0),
                 simple_node("bob", (3, 4), length_km=5.0,
                             clock=Clock(offset_ps=12_345, drift_ppm=0.5))))
    sim = PhotonStreamSimulator(link, seed=7)
    for chunk in sim.stream(duration_ps=100_000_000_000):       # 0.1 s of emission
        alice, bob = chunk.blocks["alice"], chunk.blocks["bob"]   # each in its node's clock
        ...
    sim.truth.pairs_registered_both                 # exact, after the stream ended
    sim.truth.delay_difference_ps("alice", 1, "bob", 3)  # where the g2 peak sits (at t = 0)
"""
from .physics.clock import Clock, ClockModel
from .physics.detector import JITTER_CLIP_SIGMAS, Detector
from .physics.heralding import (
    HERALD_DTYPE,
    HeraldChunk,
    HeraldChunkTruth,
    HeraldExpectation,
    HeraldingLink,
    HeraldingSimulator,
    HeraldRunTruth,
    herald_expectation,
    station_detectors,
)
from .physics.link import Link, Node, simple_node
from .physics.optics import SMF28_GROUP_INDEX, Fibre
from .physics.photon_stream import PhotonStreamSimulator, SimChunk
from .physics.polarisation import (
    BELL_CORRELATIONS,
    Analyzer,
    BellDiagonalState,
    basis,
    linear_polariser,
)
from .physics.source import CWSource, PulsedSource
from .physics.truth import ChunkTruth, RunTruth

__all__ = [
    "Analyzer", "BELL_CORRELATIONS", "BellDiagonalState", "CWSource", "ChunkTruth", "Clock",
    "ClockModel", "Detector", "Fibre", "HERALD_DTYPE", "HeraldChunk", "HeraldChunkTruth",
    "HeraldExpectation", "HeraldRunTruth", "HeraldingLink", "HeraldingSimulator",
    "JITTER_CLIP_SIGMAS", "Link", "Node", "PhotonStreamSimulator", "PulsedSource", "RunTruth",
    "SMF28_GROUP_INDEX", "SimChunk", "basis",
    "herald_expectation", "linear_polariser", "simple_node", "station_detectors",
]
