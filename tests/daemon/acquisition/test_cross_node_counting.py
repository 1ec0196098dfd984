"""Cross-node counting of an M-type link, scored against hal_sim's truth.

Two analyzers' streams from one simulated SPDC link, bob's clock offset by milliseconds and
running 2.5 ppm fast: the counter finds the clock, tracks it, and counts coincidences whose
number matches the pairs registered at both ends (truth), with the Werner visibility. With
passive two-basis analyzers (BBM92) it reports each basis' QBER and the fidelity
bound 1 − Q_Z − Q_X within 3σ of the true state, and with CHSH settings S = 2√2·V.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from qnode.daemon.acquisition.cross_node import CrossNodeCounter, link_figures, parse_layout
from qnode.daemon.bus import tagwire
from qnode.daemon.bus.telemetry import unknown_fields
from qnode.daemon.quantum import estimators as est
from qnode.daemon.runtime.config import basis_label
from qnode.hal_sim import (
    Analyzer,
    BellDiagonalState,
    Clock,
    CWSource,
    Detector,
    Fibre,
    Link,
    Node,
    PhotonStreamSimulator,
    simple_node,
)
from qnode.hal_sim.physics.coupling import waveplate_analyzer_vector

from support.daemon_harness import identity_lines

DETECTOR = dict(efficiency=0.6, dark_count_rate_hz=200.0, dead_time_ps=20_000, jitter_ps=30.0)
VISIBILITY = 0.94


def _simulator(seed: int) -> PhotonStreamSimulator:
    """A Werner-state M link: alice 1 km, bob 2 km with a clock 3.2 ms off drifting 2.5 ppm."""
    bob_clock = Clock(offset_ps=3_210_987_654, drift_ppm=2.5)
    link = Link(CWSource(4e5), BellDiagonalState.werner(VISIBILITY),
                (simple_node("alice", (1, 2), length_km=1.0, **DETECTOR),
                 simple_node("bob", (3, 4), length_km=2.0, clock=bob_clock, **DETECTOR)))
    return PhotonStreamSimulator(link, seed=seed)


def test_counter_aligns_tracks_and_counts_what_the_simulator_registered():
    sim = _simulator(seed=5)
    counter = CrossNodeCounter((1, 2), window_ps=1000, align_s=0.5)
    codes = []
    for i, chunk in enumerate(sim.stream(3_000_000_000_000)):  # 3 s
        a, b = chunk.blocks["alice"], chunk.blocks["bob"]
        counter.add_own(a, int(a["time"][-1]) if a.size else 0)
        # bob's chunk crosses the wire as a TAGS body
        times, chans = tagwire.decode(tagwire.encode(b, link="m", chunk=i))
        assert np.array_equal(times, b["time"]) and np.array_equal(chans, b["channel"])
        counter.add_peer(times, chans, int(b["time"][-1]) if b.size else 0, (3, 4))
        out = counter.process()
        if out is not None:
            codes.append(out[0])
    codes = np.concatenate(codes)
    st = counter.tracker.state
    alice_delay = sim.truth.channel_delay_ps["alice"][1]  # alice's clock is ideal
    truth_offset = sim.time_difference_ps("alice", 1, "bob", 3,
                                          counter.processed_to - alice_delay)
    assert abs(counter.tracker.offset_at(counter.processed_to) - truth_offset) <= 20
    assert abs(st.drift_ppm - 2.5) < 0.01
    # pairs registered at both ends, counted in the processed span (the last ~µs stays back)
    registered = sim.truth.pairs_registered_both
    n = counter.counts.sum() - counter.accidentals.sum()
    assert abs(n - registered) < 5 * np.sqrt(registered) + 0.01 * registered, (n, registered)
    # the Z-basis correlation of a Werner state: E = V (equal outcomes dominate)
    true = (counter.counts - counter.accidentals)[0, 0].ravel()  # Z–Z: (00, 01, 10, 11)
    e = (true[0] + true[3] - true[1] - true[2]) / true.sum()
    assert abs(e - VISIBILITY) < 4 * np.sqrt((1 - e * e) / true.sum()) + 0.005
    assert codes.size >= 0.99 * n and np.mean(codes == 0) > 0.9
    # the g2 histogram peaks at zero delay after alignment
    peak = np.argmax(counter.g2)
    assert abs((peak * 100 - 5000) + 50) <= 200


@pytest.mark.parametrize("late", ["bob", "alice"])
def test_streams_that_start_apart_align_at_the_first_try(late):
    """One end starts streaming 0.3 s after the other (more than half the correlation's
    268 ms unambiguous range): the chunks' arrival times place the streams, so the first
    alignment finds the true offset instead of failing on first tags that are not
    simultaneous."""
    sim = _simulator(seed=11)
    counter = CrossNodeCounter((1, 2), window_ps=1000, align_s=0.5)
    start_ps = 300_000_000_000
    host_s = 1234.5                  # the host's monotonic clock when alice's tagger read 0
    for i, chunk in enumerate(sim.stream(2_000_000_000_000)):
        a, b = chunk.blocks["alice"], chunk.blocks["bob"]
        if not a.size or not b.size:
            continue
        arrival = host_s + int(a["time"][-1]) * 1e-12 + 0.002 * (i % 5)   # network jitter
        if late != "alice" or a["time"][0] >= start_ps:
            counter.add_own(a, int(a["time"][-1]), arrival)
        if late != "bob" or a["time"][0] >= start_ps:
            counter.add_peer(b["time"], b["channel"], int(b["time"][-1]), (3, 4), arrival)
        counter.process()
    assert counter.alignment_error == ""
    assert counter.tracker is not None
    alice_delay = sim.truth.channel_delay_ps["alice"][1]
    truth_offset = sim.time_difference_ps("alice", 1, "bob", 3,
                                          counter.processed_to - alice_delay)
    assert abs(counter.tracker.offset_at(counter.processed_to) - truth_offset) <= 20
    assert counter.counts.sum() > 1000


def test_hostile_tags_bodies_are_refused_with_the_field_named():
    import base64
    import zlib

    from qnode.native import merge_channels
    block = merge_channels({1: np.arange(0, 10_000, 100, dtype=np.int64),
                            2: np.arange(50, 10_000, 100, dtype=np.int64)})
    good = tagwire.encode(block, link="m", chunk=0)
    bomb = base64.b64encode(zlib.compress(b"\0" * 50_000_000)).decode()
    for change, field in (({"n": -1}, "TAGS.n"), ({"n": 10**9}, "TAGS.n"),
                          ({"n": good["n"] + 1}, "TAGS.dt"), ({"t0_ps": -5}, "TAGS.t0_ps"),
                          ({"dt_bits": 16}, "TAGS.dt_bits"), ({"dt": "!!"}, "TAGS.dt"),
                          ({"dt": bomb}, "TAGS.dt"), ({"ch": 3}, "TAGS.ch")):
        with pytest.raises(ValueError, match=field):
            tagwire.decode({**good, **change})


# ------------------------------------------------------------------ passive two-basis analyzers

PASSIVE_DETECTOR = dict(efficiency=0.6, dark_count_rate_hz=200.0, dead_time_ps=20_000,
                        jitter_ps=30.0)
PASSIVE_WINDOW_PS = 300     # 7σ of the 42 ps pair jitter: few accidentals in the raw QBERs


def _passive_node(name: str, channels: tuple[int, int, int, int], angles_deg: tuple[float, float],
                  km: float, clock: Clock | None = None) -> Node:
    """A 50:50 BS into two analyzers (PBS + two detectors, each behind a HWP at its angle)."""
    def det(ch: int) -> Detector:
        return Detector(ch, **PASSIVE_DETECTOR)
    return Node(name, Fibre(km), [
        Analyzer(f"b{i}", waveplate_analyzer_vector(angle), det(channels[2 * i]),
                 det(channels[2 * i + 1])) for i, angle in enumerate(angles_deg)],
        clock or Clock())


def _run_passive(state: BellDiagonalState, own_angles: tuple[float, float],
                 peer_angles: tuple[float, float], seed: int, seconds: float = 3.0):
    """alice counts, bob streams as TAGS (header through parse_layout); bob's clock offset by
    ms and 2.5 ppm fast. Returns (counter, simulator, last telemetry)."""
    bob_clock = Clock(offset_ps=3_210_987_654, drift_ppm=2.5)
    link = Link(CWSource(4e5), state,
                (_passive_node("alice", (1, 2, 3, 4), own_angles, 1.0),
                 _passive_node("bob", (5, 6, 7, 8), peer_angles, 2.0, bob_clock)))
    sim = PhotonStreamSimulator(link, seed=seed)
    counter = CrossNodeCounter((1, 2, 3, 4), window_ps=PASSIVE_WINDOW_PS, align_s=0.5,
                               angles_deg=own_angles)
    header = {"outcome_channels": [[5, 6], [7, 8]],
              "bases": [basis_label(a) for a in peer_angles], "angles_deg": list(peer_angles)}
    for i, chunk in enumerate(sim.stream(int(seconds * 1e12))):
        a, b = chunk.blocks["alice"], chunk.blocks["bob"]
        counter.add_own(a, int(a["time"][-1]) if a.size else 0)
        body = tagwire.encode(b, link="m", chunk=i, extra=header)
        times, chans = tagwire.decode(body)
        counter.add_peer(times, chans, int(b["time"][-1]) if b.size else 0, parse_layout(body))
        counter.process()
    telemetry = counter.telemetry(1.0)
    assert unknown_fields({"links": {"m": telemetry}}) == []  # the schema names every field
    return counter, sim, telemetry


BELL_DIAGONAL = BellDiagonalState({"phi+": 0.8, "phi-": 0.03, "psi+": 0.12, "psi-": 0.05})


@pytest.mark.parametrize("state,seed", [(BellDiagonalState.werner(0.9), 31), (BELL_DIAGONAL, 32)],
                         ids=["werner-0.9", "bell-diagonal"])
def test_passive_z_x_analyzers_give_each_basis_qber_and_the_fidelity_bound(state, seed):
    counter, sim, t = _run_passive(state, (0.0, 22.5), (0.0, 22.5), seed)
    assert counter.tracker.state.status.name == "LOCKED"
    assert abs(counter.tracker.state.drift_ppm - 2.5) < 0.01
    lam = state.weights
    truth = {"Z": lam["psi+"] + lam["psi-"], "X": lam["phi-"] + lam["psi-"]}  # the flipped bases
    assert truth["Z"] == pytest.approx((1 - sim.expected_correlation("b0", "b0")) / 2)
    assert truth["X"] == pytest.approx((1 - sim.expected_correlation("b1", "b1")) / 2)
    figures = link_figures(counter.counts, counter.accidentals, counter.layout,
                           counter.peer_layout)
    n = counter.counts.astype(float)
    for i, b in enumerate("ZX"):
        q, sigma = t[f"qber_{b.lower()}"], figures[f"qber_{b.lower()}_err"]
        assert q == figures[f"qber_{b.lower()}"]
        # raw QBERs keep the accidentals: each adds ½ an error; that shift must be ≪ σ here
        shift = counter.accidentals[i, i].sum() / n[i, i].sum() * (0.5 - truth[b])
        assert shift < sigma / 3, (b, shift, sigma)
        assert abs(q - truth[b]) <= 3 * sigma, (b, q, truth[b], sigma)
        assert sigma < 0.0015
    bound = est.fidelity_lower_bound(q_z=est.Estimate(t["qber_z"], figures["qber_z_err"]),
                                     q_x=est.Estimate(t["qber_x"], figures["qber_x_err"]))
    assert t["fidelity_method"] == "two_basis_bound"
    assert t["fidelity_estimate"] == pytest.approx(bound.value)
    assert bound.within(lam["phi+"] - lam["psi-"], 3), (bound, lam["phi+"] - lam["psi-"])
    assert t["secret_fraction"] == pytest.approx(
        est.secret_fraction(t["qber_z"], t["qber_x"]).value)
    assert t["visibility"] == pytest.approx(1 - t["qber_z"] - t["qber_x"], abs=0.01)
    assert "chsh_s" not in t                 # Z/X at both ends: S = 0 for Φ+, not a Bell test
    # every setting pair is delivered, ¼ each; the cross-basis ones are uncorrelated
    registered = sim.truth.pairs_registered_both
    total = (counter.counts - counter.accidentals).sum()
    assert abs(total - registered) < 5 * np.sqrt(registered) + 0.01 * registered
    for i in range(2):
        for j in range(2):
            share = (counter.counts[i, j].sum() - counter.accidentals[i, j].sum()) / total
            assert abs(share - 0.25) < 0.01, (i, j, share)
            if i != j:
                m = counter.counts[i, j]
                e = (m[0, 0] + m[1, 1] - m[0, 1] - m[1, 0]) / m.sum()
                assert abs(e) < 4 / np.sqrt(m.sum())


CHSH_SEED = 41


def chsh_run(v: float, seed: int, seconds: float = 2.0):
    """Own Z, X (HWP 0°, 22.5°: Bloch 0, π/2); peer HWP ±11.25° (Bloch ±π/4): S = 2√2·V."""
    return _run_passive(BellDiagonalState.werner(v), (0.0, 22.5), (11.25, -11.25), seed, seconds)


def test_chsh_on_the_m_link_gives_2_sqrt2_v_within_2_sigma():
    """The issue's figure: S = 2√2·V within 2σ (a fixed seed; over 50 seeds 2σ holds in about
    95 % of runs, as a normal estimate should: see the module's chsh_run)."""
    v = 0.9
    counter, sim, t = chsh_run(v, CHSH_SEED)
    e = {(i, j): sim.expected_correlation(f"b{i}", f"b{j}") for i in (0, 1) for j in (0, 1)}
    truth = e[0, 0] + e[0, 1] + e[1, 0] - e[1, 1]           # the documented sign convention
    assert truth == pytest.approx(2 * math.sqrt(2) * v)
    s, err = t["chsh_s"], t["chsh_s_err"]
    assert abs(s - 2 * math.sqrt(2) * v) <= 2 * err, (s, err)
    assert s > 2 + 10 * err and err < 0.01
    # without the subtraction the uncorrelated accidentals scale every E by (1 − their share)
    share = counter.accidentals.sum() / counter.counts.sum()
    raw, raw_err = t["chsh_s_raw"], t["chsh_s_raw_err"]
    assert raw < s and abs(raw - s * (1 - share)) <= 3 * raw_err + 0.002, (raw, s, share)
    # the peer measures no Pauli basis: no QBER, no key, no fidelity from QBERs
    assert not {"qber_z", "qber_x", "secret_fraction", "fidelity_estimate"} & set(t)


def test_tags_layout_fields_are_checked_and_named():
    good = {"outcome_channels": [[1, 2], [3, 4]], "bases": ["Z", "X"], "angles_deg": [0, 22.5]}
    assert parse_layout(good).labels == ("Z", "X")
    legacy = parse_layout({"outcome_channels": [3, 4], "angle_deg": 22.5})
    assert legacy.channels == ((3, 4),) and legacy.labels == ("X",)
    for change, field in (({"outcome_channels": [[1, 2], [3]]}, "TAGS.outcome_channels"),
                          ({"outcome_channels": [[1, 2], [2, 4]]}, "TAGS.outcome_channels"),
                          ({"outcome_channels": [[1, 2]] * 3}, "TAGS.outcome_channels"),
                          ({"angles_deg": [0]}, "TAGS.angles_deg"),
                          ({"angles_deg": [0, float("nan")]}, "TAGS.angles_deg"),
                          ({"angles_deg": [0, True]}, "TAGS.angles_deg"),
                          ({"bases": ["X", "Z"]}, "TAGS.bases"),
                          ({"bases": "ZX"}, "TAGS.bases")):
        with pytest.raises(ValueError, match=field):
            parse_layout({**good, **change})


ANALYZER_NODE = """
[node]
id = "n1"
network = "net"
roles = ["analyzer"]
""" + identity_lines("n1") + """[broker]
url = "mqtt://127.0.0.1"
[instruments.tagger]
kind = "id900"
address = "127.0.0.1"
[[links]]
id = "m"
peer = "n2"
type = "M"
[analyzer]
"""


def test_analyzer_table_one_or_two_bases():
    from qnode.daemon.runtime.config import parse_config

    one = parse_config(ANALYZER_NODE).analyzer
    assert (one.channels, one.bases, one.angles_deg, one.angle_deg) == ((1, 2), ("Z",), (0.0,), 0)
    x = parse_config(ANALYZER_NODE + "angle_deg = 22.5\n").analyzer
    assert x.bases == ("X",) and x.basis_channels == ((1, 2),)
    two = parse_config(ANALYZER_NODE + "channels = [1, 2, 3, 4]\n").analyzer
    assert two.bases == ("Z", "X") and two.angles_deg == (0.0, 22.5) and two.angle_deg == 22.5
    assert two.basis_channels == ((1, 2), (3, 4)) and two.source_state == "phi+"
    swapped = parse_config(ANALYZER_NODE + 'channels = [1, 2, 3, 4]\nbases = ["x", "z"]\n'
                           'source_state = "psi-"\n').analyzer
    assert swapped.angles_deg == (22.5, 0.0) and swapped.source_state == "psi-"
    chsh = parse_config(ANALYZER_NODE + "channels = [1, 2, 3, 4]\nangles_deg = [11.25, -11.25]\n"
                        ).analyzer
    assert chsh.bases == ("11.25deg", "-11.25deg")


@pytest.mark.parametrize("table, key", [
    ("channels = [1, 2, 3]\n", "analyzer.channels"),
    ("channels = [1, 2, 3, 3]\n", "analyzer.channels"),
    ('channels = [1, 2, 3, 4]\nbases = ["Z"]\n', "analyzer.bases"),
    ('channels = [1, 2, 3, 4]\nbases = ["Z", "Y"]\n', "analyzer.bases"),
    ('channels = [1, 2, 3, 4]\nbases = ["Z", "Z"]\n', "analyzer.bases"),
    ("channels = [1, 2, 3, 4]\nangles_deg = [0.0]\n", "analyzer.angles_deg"),
    ("channels = [1, 2, 3, 4]\nangles_deg = [0.0, 45.0]\n", "analyzer.angles_deg"),
    ('channels = [1, 2, 3, 4]\nangles_deg = [0.0, 10.0]\nbases = ["Z", "X"]\n',
     "analyzer.bases[1]"),
    ("channels = [1, 2, 3, 4]\nangle_deg = 22.5\n", "analyzer.angle_deg"),
    ("angle_deg = 0.0\nangles_deg = [0.0]\n", "analyzer.angle_deg"),
    ('source_state = "bell"\n', "analyzer.source_state"),
])
def test_analyzer_table_mistakes_name_the_key(table, key):
    from qnode.daemon.runtime.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config(ANALYZER_NODE + table)
    assert err.value.key == key, str(err.value)


def test_a_silent_peer_does_not_grow_the_counters_memory():
    """After alignment the peer goes silent for 12 s of tags: the counter keeps at most
    MAX_BUFFER_S of its own stream (the rest is dropped and counted), then counts again."""
    from qnode.daemon.acquisition.cross_node import MAX_BUFFER_S

    link = Link(CWSource(2e5), BellDiagonalState.werner(0.94),
                (simple_node("alice", (1, 2), **DETECTOR),
                 simple_node("bob", (3, 4), clock=Clock(offset_ps=1_234_567), **DETECTOR)))
    sim = PhotonStreamSimulator(link, seed=8)
    counter = CrossNodeCounter((1, 2), window_ps=1000, align_s=0.5)
    own_tags = 0
    buffered = []
    counts_at_return = None
    for chunk in sim.stream(16_000_000_000_000):
        a, b = chunk.blocks["alice"], chunk.blocks["bob"]
        own_tags += a.size
        counter.add_own(a, int(a["time"][-1]) if a.size else 0)
        silent = 2e12 < sim.time_ps <= 14e12
        if not silent:
            if counts_at_return is None and sim.time_ps > 14e12:
                counts_at_return = counter.counts.sum()
            counter.add_peer(b["time"], b["channel"], int(b["time"][-1]) if b.size else 0,
                             (3, 4))
        counter.process()
        buffered.append(sum(blk.size for blk in counter.own))
    own_rate = own_tags / 16.0
    assert max(buffered) <= own_rate * (MAX_BUFFER_S + 0.2)
    assert counter.dropped_tags > own_rate * 5            # ~7 s of own tags had no partner
    assert counter.tracker is not None
    assert counter.counts.sum() > counts_at_return > 0    # and it counts again afterwards
