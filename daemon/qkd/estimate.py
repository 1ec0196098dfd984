"""Parameter estimation of a block before error correction: a disclosed random sample.

Error correction needs the block's QBER before it starts (the code rate is chosen for it), and a
channel that an eavesdropper has pushed past the threshold must be recognised *before* anything
else is disclosed. So each block begins with a sample: both ends cut the same ``k`` random
positions out of the block (the positions follow from the block id, which both ends hold), the
leader sends its bits at those positions (``KEY_SAMPLE``), and the follower answers with the
errors it counts in each basis (``KEY_SAMPLED``). The sampled bits are public from then on and
leave the key; the rest of the block goes through error correction, whose exact error counts
then bound the phase errors (:mod:`.block`).

The leader aborts the block when the sample's error fraction in either basis is above the
threshold with confidence: its lower Wilson bound at ``z`` = 3 (one-sided, about 0.1 %) exceeds
``qber_threshold`` (docs/physicists/keys.md, Parameter estimation). Otherwise the code is chosen
for the sample's error fraction, capped at the threshold: blind rounds cover an estimate that
came out low at a smaller cost than a code chosen for an upper bound costs every block.
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from qnode.daemon.qkd.block import (
    BlockMessageError,
    SiftedBlock,
    X,
    Z,
    body_int,
    pack_bits,
    unpack_bits,
)

#: z of the one-sided bound that must clear the threshold before a block is aborted
ABORT_Z = 3.0


def sample_size(n: int, sample_bits: int) -> int:
    """Bits sampled from a block of ``n``: ``sample_bits``, at most an eighth of the block."""
    return max(0, min(sample_bits, n // 8))


def split(block: SiftedBlock, k: int) -> tuple[SiftedBlock, SiftedBlock]:
    """(sample, rest) of ``block``: ``k`` positions drawn from the block id (both ends draw the
    same), the rest in order under the same id."""
    rng = np.random.default_rng(uuid.UUID(str(block.block_id)).int)
    picked = np.zeros(block.n, bool)
    picked[rng.choice(block.n, size=k, replace=False)] = True
    return (SiftedBlock(block.block_id, block.bases[picked], block.bits[picked]),
            SiftedBlock(block.block_id, block.bases[~picked], block.bits[~picked]))


def sample_message(sample: SiftedBlock) -> dict[str, Any]:
    """The leader's ``KEY_SAMPLE`` fields: its bits at the sampled positions."""
    return {"sample_bits": sample.n, "sample": pack_bits(sample.bits)}


def compare(sample: SiftedBlock, body: Mapping[str, Any]) -> dict[str, Any]:
    """The follower's ``KEY_SAMPLED`` fields: the errors of its sample against the leader's
    bits, per basis. :class:`BlockMessageError` for a sample that does not fit."""
    if body_int(body, "sample_bits", 0, sample.n) != sample.n:
        raise BlockMessageError("sample_bits: not this block's sample")
    theirs = unpack_bits(body, "sample", sample.n)
    diff = theirs != sample.bits
    return {"sample_errors_z": int(np.count_nonzero(diff & (sample.bases == Z))),
            "sample_errors_x": int(np.count_nonzero(diff & (sample.bases == X)))}


def wilson_bound(errors: int, n: int, z: float, upper: bool) -> float:
    """Wilson score bound of an error fraction (``upper``: the upper one) at ``z``."""
    if n <= 0:
        return 1.0 if upper else 0.0
    p = errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return min(1.0, centre + half) if upper else max(0.0, centre - half)


class SampleEstimate:
    """The sample's verdict at the leader: per basis the errors and bits, the error fractions,
    whether to abort, and the QBER the error correction is planned for."""

    def __init__(self, sample: SiftedBlock, reply: Mapping[str, Any]):
        self.n_z, self.n_x = sample.counts()
        self.errors_z = body_int(reply, "sample_errors_z", 0, self.n_z)
        self.errors_x = body_int(reply, "sample_errors_x", 0, self.n_x)

    @property
    def qber_z(self) -> float:
        return self.errors_z / self.n_z if self.n_z else math.nan

    @property
    def qber_x(self) -> float:
        return self.errors_x / self.n_x if self.n_x else math.nan

    def above(self, threshold: float) -> bool:
        """Is either basis' error fraction above ``threshold`` with confidence?"""
        return any(wilson_bound(e, n, ABORT_Z, upper=False) > threshold
                   for e, n in ((self.errors_z, self.n_z), (self.errors_x, self.n_x)) if n)

    def plan_qber(self, threshold: float) -> float:
        """The QBER to plan error correction for: both bases' pooled error fraction, at most
        the threshold."""
        n = self.n_z + self.n_x
        return min((self.errors_z + self.errors_x) / n if n else threshold, threshold)
