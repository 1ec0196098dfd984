"""The timing-only wire (qnode.daemon.bus.timewire): lossless JSON bodies of tag times, small
enough (<= 3 bytes/tag at 10 Mtags/s), and a decoder that turns every malformed or hostile body
into a ValueError naming the field."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qnode.daemon.bus import tagwire, timewire
from qnode.native import tag_block

LIMIT = 1 << 62


def poisson(rate_hz: float, n: int, seed: int = 0, t0: int = 10**9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return t0 + np.cumsum(rng.exponential(1e12 / rate_hz, n)).astype(np.int64)


def body_for(t: np.ndarray, **kw) -> dict:
    end = int(t[-1]) + 1 if t.size else 0
    return timewire.encode(t, link="m1", chunk=3, t_end_ps=end, **kw)


def test_round_trip_and_header():
    t = poisson(1e7, 50_000)
    body = body_for(t, extra={"layout": "passive"})
    assert json.loads(json.dumps(body)) == body
    assert body["n"] == t.size and body["t0_ps"] == int(t[0]) and body["link"] == "m1"
    assert body["layout"] == "passive" and body["codec"] == timewire.CODEC
    np.testing.assert_array_equal(timewire.decode(body), t)


def test_bytes_per_tag_at_10_mcps_beats_tagwire():
    t = poisson(1e7, 200_000, seed=3)
    body = body_for(t)
    per_tag = len(json.dumps(body)) / t.size
    assert per_tag <= 3.0
    block = tag_block(t, np.zeros(t.size, np.int32))
    assert per_tag < len(json.dumps(tagwire.encode(block, link="m1", chunk=3))) / t.size


@pytest.mark.parametrize("times", [
    [], [0], [LIMIT - 1], [7, 7, 7], [0, LIMIT - 1], [LIMIT - 3, LIMIT - 2, LIMIT - 1],
    [5, 10**12, 10**12, 4 * 10**12]], ids=lambda t: str(len(t)))
def test_edge_cases(times):
    t = np.array(times, np.int64)
    np.testing.assert_array_equal(timewire.decode(body_for(t)), t)


def test_encode_rejects():
    with pytest.raises(ValueError):
        body_for(np.array([5, 3], np.int64))
    with pytest.raises(ValueError):
        body_for(np.array([0.5]))
    with pytest.raises(ValueError, match="t_end_ps"):
        timewire.encode(np.array([5, 9], np.int64), link="m", chunk=0, t_end_ps=8)
    with pytest.raises(ValueError, match="extra"):
        body_for(np.array([5, 9], np.int64), extra={"n": 3})


GOOD = body_for(poisson(1e7, 1000, seed=9))


@pytest.mark.parametrize("change, field", [
    ({"n": GOOD["n"] + 1}, "dt"), ({"n": GOOD["n"] - 1}, "dt"), ({"n": -1}, "n"),
    ({"n": timewire.MAX_TAGS + 1}, "n"), ({"n": "1000"}, "n"), ({"n": True}, "n"),
    ({"n": 10**15}, "n"),
    ({"k": -1}, "k"), ({"k": 49}, "k"), ({"k": 1.5}, "k"), ({"k": GOOD["k"] + 1}, "dt"),
    ({"t0_ps": -5}, "t0_ps"), ({"t0_ps": LIMIT}, "t0_ps"), ({"t0_ps": None}, "t0_ps"),
    ({"t0_ps": LIMIT - 2}, "dt"),
    ({"t_end_ps": 0}, "t_end_ps"), ({"t_end_ps": LIMIT + 1}, "t_end_ps"),
    ({"codec": "zlib"}, "codec"),
    ({"dt": GOOD["dt"][:-5]}, "dt"), ({"dt": GOOD["dt"] + "00000"}, "dt"),
    ({"dt": GOOD["dt"][:-1]}, "dt"), ({"dt": "\x00" + GOOD["dt"][1:]}, "dt"),
    ({"dt": "é" + GOOD["dt"][1:]}, "dt"), ({"dt": 5}, "dt"), ({"dt": None}, "dt"),
    ({"dt": "~" * 5000 * 12}, "dt"), ({"dt": ""}, "dt"),
])
def test_hostile_bodies(change, field):
    with pytest.raises(ValueError, match=f"TIMES.{field}"):
        timewire.decode({**GOOD, **change})


def test_missing_fields_and_not_an_object():
    for key in ("n", "t0_ps", "t_end_ps", "k", "dt", "codec"):
        with pytest.raises(ValueError, match=f"TIMES.{key}"):
            timewire.decode({k: v for k, v in GOOD.items() if k != key})
    with pytest.raises(ValueError):
        timewire.decode([1, 2, 3])  # type: ignore[arg-type]


def test_empty_chunk_must_be_empty():
    body = body_for(np.empty(0, np.int64))
    assert timewire.decode(body).size == 0
    with pytest.raises(ValueError, match="TIMES.dt"):
        timewire.decode({**body, "dt": base64.b85encode(b"\x01").decode()})
    with pytest.raises(ValueError, match="TIMES.t0_ps"):
        timewire.decode({**body, "t0_ps": 5})


def test_a_lying_count_does_not_allocate():
    # n at the cap with a 5-character code: refused before n times are allocated
    with pytest.raises(ValueError, match="TIMES.dt"):
        timewire.decode({**GOOD, "n": timewire.MAX_TAGS, "dt": "00000"})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, LIMIT - 1), max_size=200), st.integers(0, 3))
def test_round_trip_property(xs, bump):
    t = np.array(sorted(xs), np.int64)
    end = min(int(t[-1]) + bump, LIMIT) if t.size else bump
    body = timewire.encode(t, link="m", chunk=0, t_end_ps=end)
    np.testing.assert_array_equal(timewire.decode(json.loads(json.dumps(body))), t)
