"""Replay a recorded time-tag file (PicoQuant PTU T2 or qnode raw) as a :class:`TimeTagger`.

``pace="fast"`` yields chunks as fast as they are read. ``pace="realtime"`` releases each chunk
when the wall clock, scaled by ``speed``, reaches the time of the chunk's last tag, measured from
the first tag of the file — as a live tagger delivers data only after it happened. At realtime
pace a chunk also spans at most ``max_chunk_ps`` of tag time (default 0.1 s), so a sparse file
still yields regularly. Sleeping uses an event that :meth:`FileReplayTagger.close` sets, so a
close from another thread ends the replay promptly.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Literal

import numpy as np

from qnode.native import TagBlock

from . import ptu, rawfile
from .tagger import TagFileError, TimeTagger

Pace = Literal["realtime", "fast"]
FileFormat = Literal["ptu", "raw"]


def detect_format(path: str | os.PathLike[str]) -> FileFormat:
    """``"ptu"`` or ``"raw"`` from the file's magic; :class:`TagFileError` otherwise."""
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic == ptu.PTU_MAGIC:
        return "ptu"
    if magic == rawfile.MAGIC:
        return "raw"
    raise TagFileError(path, f"unknown tag file format (magic {magic!r}; expected "
                       f"{ptu.PTU_MAGIC!r} for PTU or {rawfile.MAGIC!r} for qnode raw)", 0)


def open_tag_file(path: str | os.PathLike[str], *, chunk_records: int = 100_000,
                  format: FileFormat | None = None,
                  marker_channel_offset: int | None = None
                  ) -> ptu.PtuReader | rawfile.RawTagReader:
    """A chunked reader for ``path`` (format from the magic unless given)."""
    fmt = format or detect_format(path)
    if fmt == "ptu":
        return ptu.PtuReader(path, chunk_records=chunk_records,
                             marker_channel_offset=marker_channel_offset)
    if fmt == "raw":
        return rawfile.RawTagReader(path, chunk_records=chunk_records)
    raise ValueError(f"format must be 'ptu' or 'raw', got {fmt!r}")


class FileReplayTagger(TimeTagger):
    """A recorded file replayed as a time tagger.

    ``path``: a PTU T2 or qnode raw file (format detected from the magic unless ``format``).
    ``pace``: ``"fast"`` or ``"realtime"``; ``speed``: tag-time seconds per wall second at
    realtime pace (2.0 replays twice as fast). ``chunk_records``: records per read (default 1e5).
    ``max_chunk_ps``: realtime pace only, the longest tag-time span of one chunk (ps).
    ``marker_channel_offset``: PTU markers as tags on channel offset + m (default: dropped).
    Each call of :meth:`chunks` replays the file from the start. Channel numbering is the
    reader's (see :mod:`qnode.drivers.ptu`).
    """

    def __init__(self, path: str | os.PathLike[str], *, pace: Pace = "fast",
                 speed: float = 1.0, chunk_records: int = 100_000,
                 max_chunk_ps: int = 100_000_000_000, format: FileFormat | None = None,
                 marker_channel_offset: int | None = None):
        if pace not in ("realtime", "fast"):
            raise ValueError(f"pace must be 'realtime' or 'fast', got {pace!r}")
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        if max_chunk_ps < 1:
            raise ValueError(f"max_chunk_ps must be >= 1, got {max_chunk_ps}")
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path)
        self.pace = pace
        self.speed = float(speed)
        self.max_chunk_ps = int(max_chunk_ps)
        self.reader = open_tag_file(self.path, chunk_records=chunk_records, format=format,
                                    marker_channel_offset=marker_channel_offset)
        self._closed = threading.Event()

    @property
    def channels(self) -> tuple[int, ...]:
        return self.reader.channels

    def close(self) -> None:
        """Stop an ongoing replay (thread-safe, idempotent); later :meth:`chunks` calls yield
        nothing."""
        self._closed.set()

    def chunks(self) -> Iterator[TagBlock]:
        source = self.reader.chunks()
        if self.pace == "fast":
            for block in source:
                if self._closed.is_set():
                    return
                yield block
            return
        t0_tag: int | None = None
        t0_wall = 0.0
        for block in source:
            for piece in self._split(block):
                if self._closed.is_set():
                    return
                if piece.size:
                    if t0_tag is None:
                        t0_tag, t0_wall = int(piece["time"][0]), time.monotonic()
                    due = t0_wall + (int(piece["time"][-1]) - t0_tag) * 1e-12 / self.speed
                    delay = due - time.monotonic()
                    if delay > 0 and self._closed.wait(delay):
                        return
                yield piece

    def _split(self, block: TagBlock) -> Iterator[TagBlock]:
        """Cut ``block`` so that no piece spans more than ``max_chunk_ps``."""
        if block.size == 0 or int(block["time"][-1]) - int(block["time"][0]) <= self.max_chunk_ps:
            yield block
            return
        t = block["time"]
        start = 0
        while start < block.size:
            stop = int(np.searchsorted(t, int(t[start]) + self.max_chunk_ps, side="right"))
            yield block[start:stop]
            start = stop
