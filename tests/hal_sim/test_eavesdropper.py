"""The intercept–resend eavesdropper on an M link's fibre (hal_sim/physics/eavesdropper.py).

The channel algebra against a direct density-matrix computation; the QBER of simulated streams
against Q = Q₀ + f·V/4 (Z/X bases at ½, Werner V) within 4σ; her schedule and the run-time
trigger; bad bench values; the truth file's block. Counting as in test_hal_sim_physics.py: the
two nodes' tags merged, per-channel delays undoing each channel's true delay, accidentals from a
displaced window subtracted.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from qnode.hal_sim import (
    Analyzer,
    BellDiagonalState,
    CWSource,
    Detector,
    Fibre,
    Link,
    Node,
    PhotonStreamSimulator,
    basis,
    bench,
)
from qnode.hal_sim.physics.density_matrix import PAULIS, DensityMatrix
from qnode.hal_sim.physics.eavesdropper import (
    Eavesdropper,
    attacked_correlation,
    channel_matrix,
    expected_qber,
)
from qnode.native import Coincidences, sort_block

V = 0.9                    # Werner visibility: Q₀ = 0.05
W = 1_000                  # coincidence half-window (ps)
ACC_OFFSET = 100_000       # displaced window for accidentals (ps)
CHANNELS = {"alice": {"Z": (1, 2), "X": (3, 4)}, "bob": {"Z": (5, 6), "X": (7, 8)}}


# ------------------------------------------------------------------ the channel algebra

_AXES = {"X": 0, "Y": 1, "Z": 2}
_ORDER = ("phi+", "phi-", "psi+", "psi-")     # DensityMatrix.bell_diagonal's order


def _correlations(rho: DensityMatrix) -> np.ndarray:
    return np.array([[rho.expectation(a + b) for b in "XYZ"] for a in "XYZ"])


def _projectors(axis: np.ndarray) -> list[np.ndarray]:
    n_sigma = sum(axis[k] * PAULIS[p] for p, k in _AXES.items())
    return [(np.eye(2) + s * n_sigma) / 2 for s in (1, -1)]


def _measure_and_resend(rho: DensityMatrix, qubit: int, fraction: float,
                        axes: list[np.ndarray], probs: list[float]) -> DensityMatrix:
    """(1 − f)·ρ + f·Σ_b p_b·Σ_± Π_b± ρ Π_b± on ``qubit``, with Kraus operators."""
    kraus = [math.sqrt(1 - fraction) * np.eye(2, dtype=complex)]
    for axis, p in zip(axes, probs, strict=True):
        kraus += [math.sqrt(fraction * p) * pi for pi in _projectors(axis)]
    out = DensityMatrix.from_matrix(rho.matrix)
    out.apply_kraus(kraus, [qubit])
    return out


@pytest.mark.parametrize("side", [0, 1])
@pytest.mark.parametrize("fraction, bases, weights", [
    (1.0, ("Z", "X"), None),
    (0.4, ("Z", "X"), None),
    (0.7, ("Z", "X", "Y"), None),
    (0.6, ("Z", (1.0, 1.0, 0.0), (0.3, -0.2, 0.9)), (0.5, 0.3, 0.2)),
])
def test_channel_matches_a_density_matrix_computation(side, fraction, bases, weights):
    state = BellDiagonalState({"phi+": 0.7, "psi-": 0.2, "phi-": 0.1})
    rho = DensityMatrix.bell_diagonal([state.weights[k] for k in _ORDER])
    assert np.allclose(_correlations(rho), state.correlation_matrix)   # same conventions
    eve = Eavesdropper("n", fraction, bases, weights)
    attacked = _measure_and_resend(rho, side, fraction, [np.array(a) for a in eve.axes],
                                   list(eve.probabilities))
    expected = attacked_correlation(state.correlation_matrix, eve.matrix(), side)
    assert np.allclose(_correlations(attacked), expected, atol=1e-12)
    for q in (0, 1):      # the channel is unital: the marginals stay maximally mixed
        assert np.allclose(attacked.partial_trace([q]).matrix, np.eye(2) / 2)
    # side 0 is the row index (M·T), side 1 the column index (T·M); they differ off-diagonal
    other = attacked_correlation(state.correlation_matrix, eve.matrix(), 1 - side)
    if len(bases) == 3 and weights is not None:
        assert not np.allclose(other, expected)


def test_the_simulator_uses_the_attacked_matrix_for_either_node():
    state = BellDiagonalState({"phi+": 0.7, "psi-": 0.2, "phi-": 0.1})
    for side, name in enumerate(("alice", "bob")):
        eve = Eavesdropper(name, 0.5, ("Z", (1.0, 1.0, 0.0)), (0.3, 0.7))
        sim = PhotonStreamSimulator(_link(state, eve))
        assert np.allclose(sim.correlation_matrix,
                           attacked_correlation(state.correlation_matrix, eve.matrix(), side))
        assert sim.eavesdropper_fraction == 0.5
        clean = sim.expected_correlations(eavesdropper=False)
        assert clean[("Z", "Z")] == pytest.approx(state.correlation_matrix[2, 2])


def test_qber_formula():
    # Werner V, Z/X at ½: Q = (1 − V·(1 − f/2))/2 = Q₀ + f·V/4; 25 % at V = 1, f = 1
    for f in (0.0, 0.4, 1.0):
        q = (1 - V * (1 - f / 2)) / 2
        assert q == pytest.approx((1 - V) / 2 + f * V / 4)
        assert expected_qber(V, f, "Z") == pytest.approx(q)
        assert expected_qber(V, f, "X") == pytest.approx(q)
    assert expected_qber(1.0, 1.0) == pytest.approx(0.25)
    assert expected_qber(V, 0.6, "Z", ("Z", "X", "Y")) == pytest.approx((1 - V) / 2 + 0.6 * V / 3)
    m = channel_matrix(0.4)
    assert np.allclose(m, np.diag([0.8, 0.6, 0.8]))


# ------------------------------------------------------------------ simulated streams

def _node(name: str) -> Node:
    def det(ch: int) -> Detector:
        return Detector(ch, efficiency=0.8, dark_count_rate_hz=100.0, dead_time_ps=20_000,
                        jitter_ps=30.0)
    return Node(name, Fibre(0.2), [Analyzer(b, basis(b), det(p), det(m))
                                   for b, (p, m) in CHANNELS[name].items()])


def _link(state: BellDiagonalState | None = None, eve: Eavesdropper | None = None,
          rate_hz: float = 2e5) -> Link:
    return Link(CWSource(rate_hz), state or BellDiagonalState.werner(V),
                (_node("alice"), _node("bob")), eve)


def _collect(chunks) -> np.ndarray:
    return sort_block(np.concatenate([b for c in chunks for b in c.blocks.values()]))


def _qber(sim: PhotonStreamSimulator, tags: np.ndarray) -> dict[str, tuple[float, int]]:
    """Per basis: (QBER, events) of equal-basis coincidences, accidentals subtracted. Φ+ in Z
    and X: an error is a '+' at one node with a '−' at the other."""
    delays = {ch: -d for per in sim.truth.channel_delay_ps.values() for ch, d in per.items()}
    pairs = [(a, b) for bs in ("Z", "X")
             for a, b in itertools.product(CHANNELS["alice"][bs], CHANNELS["bob"][bs])]
    coin = Coincidences(pairs, W, delays_ps=delays, accidental_offset_ps=ACC_OFFSET)
    coin.process(tags)
    n = coin.totals.coincidences - coin.totals.accidentals
    out = {}
    for k, bs in enumerate(("Z", "X")):
        pp, pm, mp, mm = (float(x) for x in n[4 * k: 4 * k + 4])
        total = pp + pm + mp + mm
        out[bs] = ((pm + mp) / total, int(total))
    return out


def _within(measured: tuple[float, int], q: float, k: float = 4.0) -> bool:
    value, n = measured
    return abs(value - q) <= k * math.sqrt(q * (1 - q) / n)


def _between(tags: np.ndarray, lo_ps: float, hi_ps: float, margin_ps: int = 20_000_000):
    """Tags in [lo + margin, hi − margin): the fibres and detectors delay by a few µs."""
    t = tags["time"]
    return tags[(t >= lo_ps + margin_ps) & (t < hi_ps - margin_ps)]


@pytest.mark.parametrize("fraction, node", [(0.0, "bob"), (0.4, "bob"), (1.0, "alice")])
def test_measured_qber_matches_intercept_resend_theory(fraction, node):
    sim = PhotonStreamSimulator(_link(eve=Eavesdropper(node, fraction)), seed=17,
                                slice_ps=200_000_000_000)
    tags = _collect(sim.stream(3_000_000_000_000))            # 3 s: ~9·10⁴ events per basis
    q = (1 - V) / 2 + fraction * V / 4
    assert sim.expected_correlation("Z", "Z") == pytest.approx(1 - 2 * q)
    assert sim.expected_correlation("X", "X") == pytest.approx(1 - 2 * q)
    for bs, measured in _qber(sim, tags).items():
        assert measured[1] > 80_000
        assert _within(measured, q), (bs, measured, q)


def test_schedule_switches_her_on_and_off_within_a_slice():
    # slices of 0.2 s: she switches on at 0.5 s and off at 0.9 s, both inside a slice
    eve = Eavesdropper("bob", 1.0, from_s=0.5, until_s=0.9)
    sim = PhotonStreamSimulator(_link(eve=eve, rate_hz=3e5), seed=3, slice_ps=200_000_000_000)
    fractions = []
    chunks = []
    for chunk in sim.stream(1_400_000_000_000):
        chunks.append(chunk)
        fractions.append(sim.eavesdropper_fraction)
    assert fractions[:2] == [0.0, 0.0] and fractions[2:4] == [1.0, 1.0]
    assert fractions[4:] == [0.0] * (len(fractions) - 4)
    assert [c.truth.emission_end_ps for c in chunks[:3]] == [2e11, 4e11, 6e11]
    tags = _collect(chunks)
    q0, q1 = (1 - V) / 2, (1 - V) / 2 + V / 4
    for lo, hi, q in ((0, 5e11, q0), (5e11, 9e11, q1), (9e11, 1.4e12, q0)):
        for bs, measured in _qber(sim, _between(tags, lo, hi)).items():
            assert _within(measured, q), (lo, hi, bs, measured, q)


# ------------------------------------------------------------------ the bench

_INSTRUMENT = "[[instrument]]\nname = 'oven'\nkind = 'tc200'\n"


def _bench_text(eve: str = "", eve_node: int = 1) -> str:
    nodes = []
    for i, (name, ch) in enumerate((("a", (1, 2, 3, 4)), ("b", (5, 6, 7, 8)))):
        nodes.append(f"[[link.node]]\nname = '{name}'\nlength_km = 0.2\n"
                     f"analyzers = [{{name = 'Z', channels = [{ch[0]}, {ch[1]}]}}, "
                     f"{{name = 'X', channels = [{ch[2]}, {ch[3]}], angle_deg = 22.5}}]\n"
                     + (eve if i == eve_node else ""))
    return (_INSTRUMENT + "[[link]]\nname = 'm'\ntype = 'M'\npair_rate_hz = 3e5\n"
            f"visibility = {V}\nseed = 5\nslice_ms = 100\n" + "".join(nodes))


def test_bench_table_builds_her_and_the_truth_block():
    text = _bench_text("[link.node.eavesdropper]\nfraction = 0.4\nbases = ['Z', 'X']\n"
                       "from_s = 0.2\nuntil_s = 0.5\n")
    spec = bench.parse(text, "e.toml")
    eve = spec.link.nodes[1].eavesdropper
    assert eve == Eavesdropper("b", 0.4, ("Z", "X"), None, 0.2, 0.5)
    assert spec.link.nodes[0].eavesdropper is None
    rt = bench.LinkRuntime(spec.link)
    truth = rt.truth()
    block = truth["eavesdropper"]
    assert block["node"] == "b" and block["fraction"] == 0.0 and block["bases"] == ["Z", "X"]
    assert block["qber_added"] == {"Z": pytest.approx(0.0), "X": pytest.approx(0.0)}
    assert truth["qber_z"] == pytest.approx((1 - V) / 2)
    for _ in range(3):                       # 100 ms slices: now at 0.3 s, she is active
        rt.fanout.locked(lambda sim: sim.step())
    truth = rt.truth()
    block = truth["eavesdropper"]
    assert block["fraction"] == 0.4 and block["configured_fraction"] == 0.4
    assert block["from_s"] == 0.2 and block["until_s"] == 0.5
    assert block["basis_probabilities"] == [0.5, 0.5]
    assert block["qber_added"]["Z"] == pytest.approx(0.4 * V / 4)
    assert block["qber_added"]["X"] == pytest.approx(0.4 * V / 4)
    assert truth["qber_z"] == pytest.approx(expected_qber(V, 0.4, "Z"))
    assert truth["qber_x"] == pytest.approx(expected_qber(V, 0.4, "X"))
    # ⟨Φ+|ρ|Φ+⟩ = (1 + T_xx − T_yy + T_zz)/4 with T = V·diag(0.8, −0.6, 0.8)
    assert truth["fidelity_estimate"] == pytest.approx((1 + V * (0.8 + 0.6 + 0.8)) / 4)
    assert truth["visibility"] == V
    for _ in range(2):                       # at 0.5 s she has stopped
        rt.fanout.locked(lambda sim: sim.step())
    assert rt.truth()["eavesdropper"]["fraction"] == 0.0
    assert "eavesdropper" not in bench.LinkRuntime(bench.parse(_bench_text(), "c.toml").link
                                                   ).truth()


def test_inline_table_with_vector_bases_and_weights():
    spec = bench.parse(_bench_text("eavesdropper = {fraction = 1.0, bases = ['z', [1, 0, 1]], "
                                   "weights = [3, 1]}\n", eve_node=0), "e.toml")
    eve = spec.link.nodes[0].eavesdropper
    s = 1 / math.sqrt(2)
    assert eve.node == "a" and eve.axes == ((0.0, 0.0, 1.0), (s, 0.0, s))
    assert eve.probabilities == (0.75, 0.25) and eve.until_s is None
    block = bench.LinkRuntime(spec.link).truth()["eavesdropper"]
    assert block["bases"] == ["Z", [s, 0.0, s]]
    # nᵀMn along Z: 1 − f + f·(¾·1 + ¼·½) = 7/8
    assert block["qber_added"]["Z"] == pytest.approx(V * (1 - 7 / 8) / 2)


def test_runtime_trigger_switches_her_from_the_next_slice():
    rt = bench.LinkRuntime(bench.parse(_bench_text(), "t.toml").link)
    sim = rt.sim
    chunks = [rt.fanout.locked(lambda s: s.step()) for _ in range(6)]     # 0.6 s clean
    at = rt.eavesdrop("b", 1.0)
    assert at == pytest.approx(0.6) and round(at * 1e12) <= sim.time_ps
    assert sim.eavesdropper_fraction == 1.0
    assert rt.truth()["eavesdropper"]["qber_added"]["Z"] == pytest.approx(V / 4)
    chunks += [rt.fanout.locked(lambda s: s.step()) for _ in range(6)]    # 0.6 s with her
    off = rt.eavesdrop("b", 0.0)
    assert off == pytest.approx(1.2)
    assert rt.truth()["eavesdropper"]["qber_added"] == {"Z": 0.0, "X": 0.0}
    chunks += [rt.fanout.locked(lambda s: s.step()) for _ in range(6)]
    tags = _collect(chunks)
    q0, q1 = (1 - V) / 2, (1 - V) / 2 + V / 4
    delays = {ch: -d for per in sim.truth.channel_delay_ps.values() for ch, d in per.items()}
    assert set(delays) == {1, 2, 3, 4, 5, 6, 7, 8}
    for lo, hi, q in ((0, 6e11, q0), (6e11, 1.2e12, q1), (1.2e12, 1.8e12, q0)):
        for bs, measured in _qber(sim, _between(tags, lo, hi)).items():
            assert _within(measured, q), (lo, hi, bs, measured, q)
    with pytest.raises(ValueError, match="no node 'c'"):
        rt.eavesdrop("c", 0.5)
    with pytest.raises(ValueError, match="Eavesdropper.fraction"):
        rt.eavesdrop("b", 1.5)


@pytest.mark.parametrize("eve, key, problem", [
    ("eavesdropper = {bases = ['Z']}\n", "fraction", "is required"),
    ("eavesdropper = {fraction = 1.5}\n", "fraction", "must be a number in [0, 1], got 1.5"),
    ("eavesdropper = {fraction = -0.1}\n", "fraction", "must be a number in [0, 1]"),
    ("eavesdropper = {fraction = 'all'}\n", "fraction", "must be a number in [0, 1]"),
    ("eavesdropper = {fraction = 0.5, bases = []}\n", "bases", "non-empty list"),
    ("eavesdropper = {fraction = 0.5, bases = 'Z'}\n", "bases", "non-empty list"),
    ("eavesdropper = {fraction = 0.5, bases = ['Z', 'Q']}\n", "bases[1]",
     "must be \"Z\", \"X\", \"Y\" or a Bloch vector"),
    ("eavesdropper = {fraction = 0.5, bases = [[0, 0, 0]]}\n", "bases[0]", "not all zero"),
    ("eavesdropper = {fraction = 0.5, bases = [[1, 0]]}\n", "bases[0]", "got [1, 0]"),
    ("eavesdropper = {fraction = 0.5, weights = [1]}\n", "weights", "must be 2 numbers >= 0"),
    ("eavesdropper = {fraction = 0.5, weights = [0, 0]}\n", "weights", "not all 0"),
    ("eavesdropper = {fraction = 0.5, weights = [1, -1]}\n", "weights", "must be 2 numbers"),
    ("eavesdropper = {fraction = 0.5, from_s = -1}\n", "from_s", "must be a number in [0,"),
    ("eavesdropper = {fraction = 0.5, from_s = 2.0, until_s = 1.0}\n", "until_s",
     "must be after from_s (2 s)"),
    ("eavesdropper = {fraction = 0.5, after_s = 1.0}\n", "after_s", "unknown key"),
    ("eavesdropper = 0.5\n", "", "must be a table"),
])
def test_bad_values_are_refused_naming_the_key(eve, key, problem):
    with pytest.raises(bench.BenchConfigError) as err:
        bench.parse(_bench_text(eve), "x.toml")
    full = "link[0].node[1].eavesdropper" + (f".{key}" if key else "")
    assert f"x.toml: {full}: " in str(err.value)
    assert problem in str(err.value)


def test_one_eavesdropper_per_link():
    text = _bench_text("eavesdropper = {fraction = 0.5}\n")
    text = text.replace("angle_deg = 22.5}]\n", "angle_deg = 22.5}]\neavesdropper = "
                        "{fraction = 0.2}\n", 1)
    with pytest.raises(bench.BenchConfigError, match=r"node\[1\]\.eavesdropper: .*one node"):
        bench.parse(text, "x.toml")


def test_physics_configuration_errors_name_the_parameter():
    with pytest.raises(ValueError, match="Eavesdropper.fraction"):
        Eavesdropper("bob", 2.0)
    with pytest.raises(ValueError, match=r"Eavesdropper.bases\[0\]"):
        Eavesdropper("bob", 0.5, ("W",))
    with pytest.raises(ValueError, match="Eavesdropper.weights"):
        Eavesdropper("bob", 0.5, ("Z", "X"), (1.0,))
    with pytest.raises(ValueError, match="Eavesdropper.until_s"):
        Eavesdropper("bob", 0.5, from_s=1.0, until_s=1.0)
    with pytest.raises(ValueError, match="Link.eavesdropper.node"):
        _link(eve=Eavesdropper("carol", 0.5))
    sim = PhotonStreamSimulator(_link())
    with pytest.raises(ValueError, match="Link.eavesdropper.node"):
        sim.set_eavesdropper(Eavesdropper("carol", 0.5))
    assert sim.eavesdropper is None and sim.eavesdropper_fraction == 0.0
