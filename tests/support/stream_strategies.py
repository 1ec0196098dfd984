"""Hypothesis strategies for tag streams and chunkings, and brute-force definitions.

The brute-force functions are the semantics written as plainly as possible (O(n^2) loops over
TIME_TAG records): they check the numpy reference, which in turn checks the C core at sizes the
loops cannot reach.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from qnode.native import TAG_DTYPE, TagType


def split(block: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    """Split at the given cut points (sorted, repeats allowed: they make empty chunks)."""
    edges = [0, *sorted(min(max(c, 0), block.size) for c in cuts), block.size]
    return [block[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]


@st.composite
def tag_streams(draw, channels=(1, 2, 3, 4), max_tags: int = 120, other_channels=(9,),
                with_records: bool = True) -> np.ndarray:
    """A time-ordered TagBlock with many ties, tags on unconfigured channels and, optionally,
    overflow / missed-event / error records."""
    n = draw(st.integers(0, max_tags))
    spacing = draw(st.sampled_from([0, 1, 3, 50, 400]))
    gaps = draw(st.lists(st.integers(0, spacing), min_size=n, max_size=n))
    start = draw(st.integers(-10**6, 10**6))
    pool = list(channels) + list(other_channels)
    chans = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
    block = np.zeros(n, TAG_DTYPE)
    block["time"] = start + np.cumsum(np.array(gaps, np.int64))
    block["channel"] = chans
    if with_records and n:
        kinds = draw(st.lists(st.sampled_from([0] * 12 + [1, 2, 3, 4]), min_size=n, max_size=n))
        block["type"] = kinds
        block["missed"] = np.where(block["type"] == TagType.MISSED_EVENTS, 7, 0)
    return block


@st.composite
def chunkings(draw, block: np.ndarray) -> list[np.ndarray]:
    cuts = draw(st.lists(st.integers(0, block.size), max_size=8))
    return split(block, cuts)


def _tags(block: np.ndarray, channel: int, delays: dict[int, int]) -> list[int]:
    sel = (block["type"] == TagType.TIME_TAG) & (block["channel"] == channel)
    return [int(t) + delays.get(channel, 0) for t in block["time"][sel]]


def brute_pair_deltas(block: np.ndarray, a: int, b: int, lo: int, hi: int,
                      delays: dict[int, int]) -> list[int]:
    """Every dt = T_b - T_a (delayed times) with lo <= dt <= hi, over all pairs."""
    ta, tb = _tags(block, a, delays), _tags(block, b, delays)
    return [y - x for x in ta for y in tb if lo <= y - x <= hi]


def brute_clusters(block: np.ndarray, channels: list[int], window: int, delays: dict[int, int]):
    """Greedy clusters over delayed times: [(T_open, mask), ...] for every cluster."""
    events = sorted((t, i) for i, c in enumerate(channels) for t in _tags(block, c, delays))
    out: list[tuple[int, int]] = []
    for t, i in events:
        if out and t <= out[-1][0] + window:
            out[-1] = (out[-1][0], out[-1][1] | (1 << i))
        else:
            out.append((t, 1 << i))
    return out
