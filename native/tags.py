"""The tag model: ``TagBlock``, a time-ordered chunk of 16-byte time-tag records.

The record is Swabian Instruments' raw time-tag layout (Time Tagger API, "Time-tag streaming"):

======  ========  =======================================================
offset  field     meaning
======  ========  =======================================================
0       type      :class:`TagType` (0 = time tag; anything else is not a tag)
1       reserved  0
2       missed    events lost on ``channel`` (``MISSED_EVENTS`` records)
4       channel   int32 input number (negative numbers: falling edges)
8       time      int64 picoseconds since the tagger started
======  ========  =======================================================

A block is time-ordered across channels (non-decreasing ``time``). Timestamps are never floats:
float64 in ps stops being exact after 2**53 ps (about 2.5 h). Records of type ``OVERFLOW_BEGIN`` …
``OVERFLOW_END`` bracket dead time in which the tagger lost data; they and ``MISSED_EVENTS`` /
``ERROR`` records are bookkeeping, never counted as tags.
"""
from __future__ import annotations

import enum
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

TAG_DTYPE = np.dtype(
    [("type", np.uint8), ("reserved", np.uint8), ("missed", np.uint16),
     ("channel", np.int32), ("time", np.int64)],
    align=True,
)
assert TAG_DTYPE.itemsize == 16

TagBlock: TypeAlias = npt.NDArray[np.void]
"""A 1-D, C-contiguous numpy array of :data:`TAG_DTYPE`, time-ordered."""


class TagType(enum.IntEnum):
    """Record types, numbered as Swabian's ``Tag::Type``."""

    TIME_TAG = 0
    ERROR = 1
    OVERFLOW_BEGIN = 2
    OVERFLOW_END = 3
    MISSED_EVENTS = 4


class TagBlockError(ValueError):
    """An array is not a valid TagBlock (wrong dtype, layout or ordering)."""


def empty_block(n: int = 0) -> TagBlock:
    """A zeroed block of ``n`` records (all ``TIME_TAG`` at t = 0 ps, channel 0)."""
    return np.zeros(n, dtype=TAG_DTYPE)


def tag_block(time_ps: npt.ArrayLike, channel: npt.ArrayLike,
              type: npt.ArrayLike = TagType.TIME_TAG, missed: npt.ArrayLike = 0) -> TagBlock:
    """Build a block from field arrays (broadcast against ``time_ps``).

    ``time_ps`` must be integer picoseconds; floats are refused rather than silently rounded.
    The result is not sorted here: use :func:`sort_block` or :func:`check_block` as needed.
    """
    t = np.asarray(time_ps)
    if t.dtype.kind not in "iu":
        raise TagBlockError(f"time_ps must be integer picoseconds, got dtype {t.dtype}")
    block = np.empty(t.shape[0] if t.ndim else 1, dtype=TAG_DTYPE)
    block["time"] = t
    block["channel"] = channel
    block["type"] = type
    block["reserved"] = 0
    block["missed"] = missed
    return block


def sort_block(block: TagBlock) -> TagBlock:
    """Return ``block`` ordered by time, equal times by channel (a stable sort, so records with
    equal time and channel keep their order)."""
    order = np.lexsort((block["channel"], block["time"]))
    return block[order]


def check_block(block: object) -> TagBlock:
    """Validate a TagBlock and return it unchanged (no copy).

    Raises :class:`TagBlockError` naming what is wrong: dtype, dimensionality, contiguity, or the
    first index where time goes backwards.
    """
    if not isinstance(block, np.ndarray):
        raise TagBlockError(f"a TagBlock is a numpy array, got {type(block).__name__}")
    if block.dtype != TAG_DTYPE:
        raise TagBlockError(f"TagBlock dtype must be qnode.native.TAG_DTYPE, got {block.dtype}")
    if block.ndim != 1:
        raise TagBlockError(f"TagBlock must be 1-D, got shape {block.shape}")
    if not block.flags.c_contiguous:
        raise TagBlockError("TagBlock must be C-contiguous (use np.ascontiguousarray)")
    if block.size > 1:
        back = np.flatnonzero(np.diff(block["time"]) < 0)
        if back.size:
            i = int(back[0]) + 1
            raise TagBlockError(
                f"TagBlock is not time-ordered: record {i} at {int(block['time'][i])} ps "
                f"follows {int(block['time'][i - 1])} ps")
    return block


def time_tags(block: TagBlock) -> TagBlock:
    """Only the ``TIME_TAG`` records of ``block`` (a copy)."""
    return block[block["type"] == TagType.TIME_TAG]
