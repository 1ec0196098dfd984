"""A simulated bench: simulated instruments served on real ptys and sockets, from a TOML file.

``python -m qnode.hal_sim bench --config bench.toml [--json] [--truth truth.json]`` starts every
instrument the file lists and prints each one's address: exactly what a node config names for
the real instrument in a lab. It runs until interrupted (Ctrl-C or SIGTERM).

File format::

    [bench]
    name = "network"

    [[instrument]]
    name = "oven"           # the name a node config uses
    kind = "tc200"          # see kinds.KINDS
    serve = "pty"           # "pty" (a serial port) or "tcp" (a loopback TCP port)
    port = 0                # tcp only: 0 picks a free port
    startup = ["tset=35.0", "ens"]  # wire commands the device gets before it is served
    settle_s = 600          # ...as if it had been running that long since (wire kinds only)
    [instrument.options]    # keyword arguments of the simulated device, plus coupling keys
    optimum_c = 35.0
    link = "source-pair"    # couples the oven to this M link's pair rate

    [[link]]                # an M link: an SPDC source measured at two analyzer nodes
    name = "source-pair"    # what instruments name in ``link``
    id = "m-ab"             # the daemon's link id, the key in the truth file (default: name)
    type = "M"
    pair_rate_hz = 1e5      # pairs/s while no pump is coupled (an oven alone scales it)
    brightness_hz_per_mw = 2500  # pairs/s per mW of a coupled pump
    visibility = 0.95       # Werner state around Φ+
    seed = 1
    slice_ms = 50           # simulated time per step (any link): each tagger chunk
    [[link.node]]           # exactly two
    name = "analyzer-a"
    channels = [1, 2]       # the + and - detectors' tagger inputs (one analyzer "a", H/V), or:
    # analyzers = [{name = "z", channels = [1, 2], angle_deg = 0.0},   # passive basis choice:
    #              {name = "x", channels = [3, 4], angle_deg = 22.5}]  #   a 50:50 BS, HWP angles
    length_km = 1.0         # also: efficiency, dark_count_rate_hz, jitter_ps,
    clock_offset_ps = 0     #   clock_offset_ps, clock_drift_ppm (the node's tagger clock)
    # optional: this fibre's polarisation drift (default none), see "Polarisation drift" below
    polarisation_drift = {walk_rad_per_sqrt_s = 0.01, steps = [{at_s = 20.0, angle_deg = 40.0}]}
    [link.node.eavesdropper]  # optional, one node per link: intercept-resend on this fibre
    fraction = 0.5          # of this node's photons she measures and resends (0-1)
    bases = ["Z", "X"]      # her bases (default): "Z", "X", "Y" or Bloch vectors [x, y, z]
    from_s = 30.0           # active in [from_s, until_s) of emission time (s; default from 0,
    until_s = 60.0          #   no end)

    [[link]]                # a K link: a heralding station between two memory nodes
    name = "alice-repeater"
    type = "K"
    station = "herald1"
    ends = ["alice", "repeater"]
    attempt_rate_hz = 1e6
    emission_probability = 0.15
    length_km = [10.0, 10.0]   # each end's fibre (or one number for both); loss_db_per_km
    channels = [1, 2, 3, 4]    # c-H, c-V, d-H, d-V; also efficiency, dark_count_rate_hz,
    indistinguishability = 0.9 #   dead_time_ps, jitter_ps (the four detectors), gate_ps, seed

The single-table form ``[link]`` of earlier files is still read: an M link named "link".

**Instruments and links.** A time tagger (``kind = "id900"``) streams one node of one link:
options ``link`` (may be left out when the bench has one link) and ``node`` (for a K link the
station, the default). Several taggers may stream different nodes of one link: the link's
simulator is stepped once per slice and each tagger gets its own node's tags
(:class:`~qnode.hal_sim.twins.tagger.SimulatorFanout`; a tagger that is streaming but not read holds
the others back after a bounded buffer of slices, never growing memory; one that is not
streaming misses those photons). Instruments with ``link = "<an M link>"`` in their options are
coupled to its physics (:mod:`qnode.hal_sim.physics.coupling`, applied before every slice): a
pump (``ibeam``, ``itc4001``) sets the pair rate = ``brightness_hz_per_mw`` × its output power
(mW) × the oven's phase matching; an oven (``tc200``) alone scales ``pair_rate_hz`` by its phase
matching; a waveplate (``elliptec``, options ``node``, ``analyzer`` (default "a"), ``zero_deg``)
turns that node's analyzer; with ``mount = "compensator"`` (options ``link``, ``node``,
``zero_deg``) it is instead the node's polarisation compensator (below).

**Polarisation drift (M links).** A node's ``polarisation_drift`` table drifts the polarisation of
its fibre (:class:`~qnode.hal_sim.physics.polarisation.FibreDrift`, deterministic from the link's
seed): ``walk_rad_per_sqrt_s`` (σ of a random walk, rad/√s; default 0), ``walk_axis`` ((X, Y, Z) on
the Poincaré sphere, default [0, 1, 0]; "isotropic" for a walk about every axis), ``grid_s`` (the
walk's time step, s; default 0.01), ``seed`` (default: from the link's seed and the node's index)
and ``steps``, a list of ``{at_s, angle_deg, axis = [x, y, z]}`` (simulated emission time, s; deg;
default axis Y). A compensator (an ``elliptec`` with ``mount = "compensator"``) is a rotator in
front of the node's analyzers: a fixed HWP and the ELL14's HWP, R_Y(4θ)
(:mod:`qnode.hal_sim.physics.coupling`); it undoes drift about Y only. Both apply before every slice
(constant over a slice). :meth:`~qnode.hal_sim.bench.links.LinkRuntime.polarisation_step` triggers a
step at run time; the truth file's ``polarisation`` block holds each fibre's rotation, the
compensators' angles, the relative rotation of the two photons and the true per-basis visibility
(see :func:`~qnode.hal_sim.bench.truth.m_link_truth`).

**Eavesdropper (M links).** A node's ``eavesdropper`` table (``[link.node.eavesdropper]`` after
that ``[[link.node]]``, or an inline ``eavesdropper = {...}``) puts an intercept–resend attack on
its fibre, at the source end (:mod:`qnode.hal_sim.physics.eavesdropper`): she takes a fraction
``fraction`` (required, 0–1) of that node's photons, measures each in a basis drawn from ``bases``
(default ``["Z", "X"]``; "Z", "X", "Y" or Bloch vectors [x, y, z], normalised) with probabilities
``weights`` (one number ≥ 0 per basis, normalised; default equal) and resends what she found. She
is active from ``from_s`` (s of simulated emission time; default 0) until ``until_s`` (s, after
``from_s``; default: no end), switched exactly at those times. With Z and X at ½ and a Werner
state of visibility V she adds f·V/4 to the QBER of each basis: Q = (1 − V·(1 − f/2))/2.
:meth:`~qnode.hal_sim.bench.links.LinkRuntime.eavesdrop` switches her on (with a fraction, 0 for
off) at run time from the next slice, replacing the file's schedule; the truth file's
``eavesdropper`` block holds her node, the fraction now, her bases and the QBER she adds per
basis.

Instruments of a "service" kind (time taggers, systems with several ports) serve themselves and
print one address per port (``tagger.scpi``, ``tagger.dlt``).

**Quantum memories of K links** (``kind = "qdevice"``, served on TCP, the QDEVICE/1 protocol of
:mod:`qnode.drivers.qdevice_protocol`): options ``link`` (a K link, or a list of them: a repeater's
one memory holds the pairs of both its links) and ``node`` (an end of each; one qdevice per node and
link), and the :class:`~qnode.hal_sim.twins.qdevice.QDeviceConfig` keys ``n_qubits``, ``t1_ns``,
``t2_ns`` and ``readout_error``, the gate noise of its 1- and 2-qubit gates as the depolarising
parameter g (``gate_depolarising_1q``, ``gate_depolarising_2q``; their earlier names
``gate_fidelity_1q``, ``gate_fidelity_2q`` are read as g) or as the average gate fidelity
(``gate_average_fidelity_1q``, ``gate_average_fidelity_2q``; 1 − F_avg = (1 − g)/2 for one qubit,
3/4·(1 − g) for two, :mod:`qnode.drivers.qdevice_noise`), at most one key per gate, plus ``seed``
(readout errors) and ``channels``, the quantum channels that start at it (``EMIT``/``ABSORB``):
tables ``{name, to, length_km, loss_db_per_km = 0.2, efficiency = 1.0, depolarising = 0.0}``,
transmission efficiency · 10^(−loss·length/10)
(:func:`~qnode.hal_sim.bench.memories.channel_transmission`). The twin is named after its node.
All qdevices of the bench share one
:class:`~qnode.hal_sim.twins.pair_registry.PairRegistry`
(:meth:`~qnode.hal_sim.bench.runtime.Bench.pair_registry`); whenever the bench steps that link's
simulator it files every herald of the chunk's truth under its station time
(:meth:`~qnode.hal_sim.twins.pair_registry.PairRegistry.herald_records_at`, tolerance = the link's
``gate_ps``), under the daemon's link id: a true herald as the model's mixture (1+V)/2 of the
announced Ψ and (1−V)/2 of the other Ψ, a false one maximally mixed. A memory node binds a pair with
``ENT <q> <link id> T<station time ps>``. The link is stepped only while a tagger streams its
station (no photons, no heralds).

**Ground truth.** With a truth file (``Bench(truth_path=...)``, ``--truth``) the bench writes every
link's truth totals as JSON, atomically (a temporary file renamed over it), every second and at stop
(:meth:`~qnode.hal_sim.bench.runtime.Bench.truth`): ``{"v": 1, "bench", "t" (Unix s), "uptime_s",
"links": {id: {"name", "type", ...}}}``, keyed by the daemon's link id. Each link's top-level
numbers are named like the daemon's telemetry fields they are compared with; ``detail`` holds the
counters (see :mod:`qnode.hal_sim.bench.truth`).

Every error names the file and the key (``instrument[2].kind``) and what is wrong with it.

**Modules.** :mod:`~qnode.hal_sim.bench.spec` (what a file describes) and
:mod:`~qnode.hal_sim.bench.parsing` (reading it), :mod:`~qnode.hal_sim.bench.kinds` (the kinds a
file can name: the twins of the instrument kinds of :mod:`qnode.drivers.kinds`),
:mod:`~qnode.hal_sim.bench.building`, :mod:`~qnode.hal_sim.bench.coupling`,
:mod:`~qnode.hal_sim.bench.services` and :mod:`~qnode.hal_sim.bench.memories` (the instruments),
:mod:`~qnode.hal_sim.bench.links` (the links' simulators), :mod:`~qnode.hal_sim.bench.truth` (the
truth file) and :mod:`~qnode.hal_sim.bench.runtime` (:class:`Bench`). The bench files of the package
are in its ``benches`` folder (:data:`BENCHES`).
"""
from pathlib import Path

from .kinds import COUPLING_KEYS, KINDS, Kind, register
from .links import LinkRuntime
from .parsing import parse
from .runtime import Bench, format_json, format_table
from .spec import (
    AnalyzerSpec,
    BenchConfigError,
    BenchSpec,
    InstrumentSpec,
    KLinkSpec,
    LinkSpec,
    NodeSpec,
)
from .truth import TruthWriter, k_link_truth, m_link_truth

#: The folder of the bench files shipped with qnode.hal_sim (``benches/*.toml``).
BENCHES = Path(__file__).resolve().parent.parent / "benches"

__all__ = [
    "AnalyzerSpec", "BENCHES", "Bench", "BenchConfigError", "BenchSpec", "COUPLING_KEYS",
    "InstrumentSpec", "KINDS", "KLinkSpec", "Kind", "LinkRuntime", "LinkSpec", "NodeSpec",
    "TruthWriter", "format_json", "format_table", "k_link_truth", "m_link_truth", "parse",
    "register",
]
