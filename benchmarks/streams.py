"""The synthetic tag stream the throughput benchmarks share."""
from __future__ import annotations

import numpy as np

from qnode import native


def make_stream(seconds: float, rate_mcps: float, pairs_mcps: float, seed: int) -> np.ndarray:
    """4 channels at ``rate_mcps`` each (Mcps), of which ``pairs_mcps`` are true pairs on (1, 2)
    and on (3, 4) with 100 ps rms jitter, the rest uncorrelated; one TagBlock of ``seconds``."""
    rng = np.random.default_rng(seed)
    span = int(seconds * 1e12)
    per_channel: dict[int, np.ndarray] = {}
    for a, b in ((1, 2), (3, 4)):
        pairs = rng.integers(0, span, int(pairs_mcps * 1e6 * seconds))
        for ch in (a, b):
            noise = rng.integers(0, span, int((rate_mcps - pairs_mcps) * 1e6 * seconds))
            jittered = pairs + np.rint(rng.normal(0, 100, pairs.size)).astype(np.int64)
            per_channel[ch] = np.sort(np.concatenate([noise, jittered]))
    return native.merge_channels(per_channel)
