"""The physics behind the simulated instruments, with exact ground truth.

Configuration: :mod:`~.source` (SPDC sources), :mod:`~.optics` (fibres), :mod:`~.polarisation`
(Bell-diagonal states, analyzers, fibre drift), :mod:`~.detector`, :mod:`~.clock` and
:mod:`~.link` (the nodes and the link). Simulation: :mod:`~.photon_stream` (an M-type link's
tags per node), :mod:`~.heralding` (a K-type link's heralding station), both built on
:mod:`~.channel` (one detector channel at run time), with their truth (:mod:`~.truth`,
:mod:`~.heralding`). :mod:`~.density_matrix` is the exact n-qubit state of the quantum memories;
:mod:`~.coupling` turns simulated instruments' state (a waveplate's angle, an oven's temperature,
a pump's power, a compensator) into the simulator's parameters.

The flat API of these modules is re-exported by :mod:`qnode.hal_sim`.
"""
