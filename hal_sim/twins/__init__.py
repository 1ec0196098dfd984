"""Simulated instruments ("twins") that speak the real instruments' wire protocols.

Each twin keeps the device's state and answers its protocol exactly as the drivers of
:mod:`qnode.drivers` expect: :mod:`~.elliptec` (Thorlabs ELL14), :mod:`~.tc200` (Thorlabs
TC200), :mod:`~.ibeam` (Toptica iBeam smart), :mod:`~.itc4001` (Thorlabs ITC4001, SCPI),
:mod:`~.single_quantum` (Single Quantum SNSPD system), :mod:`~.id900` (ID Quantique Time
Controller over ZeroMQ, streaming tags of a simulator through :mod:`~.tagger`) and
:mod:`~.qdevice` (a QDEVICE/1 quantum memory, whose joint states live in a
:mod:`~.pair_registry`, with :mod:`~.registry_oracle` serving their ground truth).
:mod:`~.serve` runs a twin on a real pty or loopback TCP port, with fault injection.
"""
