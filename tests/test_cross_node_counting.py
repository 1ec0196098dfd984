"""Cross-node counting of an M-type link, scored against hal_sim's truth.

Two analyzers' streams from one simulated SPDC link, bob's clock offset by milliseconds and
running 2.5 ppm fast: the counter finds the clock, tracks it, and counts coincidences whose
number matches the pairs registered at both ends (truth), with the Werner visibility.
"""
from __future__ import annotations

import numpy as np

from qnode.daemon import tagwire
from qnode.daemon.role_analyzer import CrossNodeCounter
from qnode.hal_sim import (
    BellDiagonalState,
    Clock,
    CWSource,
    Link,
    PhotonStreamSimulator,
    simple_node,
)

DETECTOR = dict(efficiency=0.6, dark_count_rate_hz=200.0, dead_time_ps=20_000, jitter_ps=30.0)
VISIBILITY = 0.94


def test_counter_aligns_tracks_and_counts_what_the_simulator_registered():
    bob_clock = Clock(offset_ps=3_210_987_654, drift_ppm=2.5)
    link = Link(CWSource(4e5), BellDiagonalState.werner(VISIBILITY),
                (simple_node("alice", (1, 2), length_km=1.0, **DETECTOR),
                 simple_node("bob", (3, 4), length_km=2.0, clock=bob_clock, **DETECTOR)))
    sim = PhotonStreamSimulator(link, seed=5)
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
    true = counter.counts - counter.accidentals
    e = (true[0] + true[3] - true[1] - true[2]) / true.sum()
    assert abs(e - VISIBILITY) < 4 * np.sqrt((1 - e * e) / true.sum()) + 0.005
    assert codes.size >= 0.99 * n and np.mean(codes == 0) > 0.9
    # the g2 histogram peaks at zero delay after alignment
    peak = np.argmax(counter.g2)
    assert abs((peak * 100 - 5000) + 50) <= 200


def test_hostile_tags_bodies_are_refused_with_the_field_named():
    import base64
    import zlib

    import pytest

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
