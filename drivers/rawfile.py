"""qnode's own raw time-tag file: a small header, then the 16-byte ``TAG_DTYPE`` records verbatim.

The format is qnode's (no external specification). All integers are little-endian:

======  ======  ============================================================================
offset  size    field
======  ======  ============================================================================
0       8       magic ``b"QNODETAG"``
8       2       format version (u16, currently 1)
10      2       record size in bytes (u16, 16)
12      4       header length in bytes (u32): records start here; a multiple of 16
16      8       record count (u64); ``2**64 - 1`` while the file is being written (then the
                count is whatever whole records the file holds)
24      4       length of the JSON description that follows (u32)
28      n       JSON (UTF-8): ``{"record": {"names", "formats", "offsets", "itemsize"},
                "time_unit": "ps", "metadata": {...}}``; zero padding up to the header length
======  ======  ============================================================================

Records are :data:`qnode.native.TAG_DTYPE` (``type`` u8, ``reserved`` u8, ``missed`` u16,
``channel`` i32, ``time`` i64 ps), every record type included (overflow, missed-events and error
records round-trip). The header is 16-aligned so the record area can be memory-mapped as an array.
A reader checks the record description, so a file with another layout is refused rather than
misread. Reading is chunked (bounded memory); a truncated file yields every whole record and then
raises :class:`~qnode.drivers.tagger.TagFileError`.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

import numpy as np

from qnode.native import TAG_DTYPE, TagBlock, TagBlockError, check_block, empty_block

from .tagger import TagFileError, first_out_of_order

MAGIC = b"QNODETAG"
VERSION = 1
RECORD_SIZE = TAG_DTYPE.itemsize
UNKNOWN_COUNT = 2**64 - 1
DEFAULT_CHUNK_RECORDS = 100_000

_FIXED = struct.Struct("<8sHHIQI")
_COUNT_OFFSET = 16
_DISK_DTYPE = TAG_DTYPE.newbyteorder("<")


def _record_description() -> dict[str, Any]:
    fields = _DISK_DTYPE.fields
    assert fields is not None
    names = list(_DISK_DTYPE.names or ())
    return {"names": names,
            "formats": [fields[n][0].str for n in names],
            "offsets": [fields[n][1] for n in names],
            "itemsize": _DISK_DTYPE.itemsize}


class RawTagWriter:
    """Write TagBlocks to a qnode raw tag file (see the module docstring for the layout).

    ``metadata``: any JSON-serialisable mapping stored in the header (e.g. the node, the tagger,
    the acquisition settings). ``channels``: the tagger's channel numbers, stored as
    ``metadata["channels"]`` (readers report it as ``channels``). Blocks must be valid TagBlocks
    and time-ordered across calls. The record count is written on :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None,
                 channels: Iterable[int] | None = None):
        self.path = os.fspath(path)
        meta = dict(metadata or {})
        if channels is not None:
            meta["channels"] = sorted(int(c) for c in channels)
        text = json.dumps({"record": _record_description(), "time_unit": "ps",
                           "metadata": meta}).encode("utf-8")
        header_len = -(-(_FIXED.size + len(text)) // RECORD_SIZE) * RECORD_SIZE
        header = _FIXED.pack(MAGIC, VERSION, RECORD_SIZE, header_len, UNKNOWN_COUNT, len(text))
        self._fh: IO[bytes] | None = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._fh.write((header + text).ljust(header_len, b"\0"))
        self.records = 0
        self._last_time: int | None = None

    def write(self, block: TagBlock) -> None:
        """Append one block (any record types). Raises ``TagBlockError`` if it is not a valid,
        time-ordered TagBlock or starts before the previous block ended."""
        if self._fh is None:
            raise ValueError(f"{self.path}: writer is closed")
        check_block(block)
        if block.size == 0:
            return
        if self._last_time is not None and int(block["time"][0]) < self._last_time:
            raise TagBlockError(f"{self.path}: block starts at {int(block['time'][0])} ps, before "
                                f"the previous block's last tag at {self._last_time} ps")
        self._fh.write(block.astype(_DISK_DTYPE, copy=False).tobytes())
        self.records += block.size
        self._last_time = int(block["time"][-1])

    def close(self) -> None:
        """Write the record count into the header and close the file (idempotent)."""
        if self._fh is None:
            return
        fh, self._fh = self._fh, None
        try:
            fh.seek(_COUNT_OFFSET)
            fh.write(struct.pack("<Q", self.records))
        finally:
            fh.close()

    def __enter__(self) -> RawTagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawTagReader:
    """Read a qnode raw tag file in bounded chunks of ``chunk_records`` records.

    The header is parsed and checked on construction (:class:`TagFileError` for a bad magic,
    unsupported version, foreign record layout or corrupt JSON). :meth:`chunks` may be called
    repeatedly; each call reads the file from the start.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 chunk_records: int = DEFAULT_CHUNK_RECORDS):
        if chunk_records < 1:
            raise ValueError(f"chunk_records must be >= 1, got {chunk_records}")
        self.path = os.fspath(path)
        self.chunk_records = int(chunk_records)
        with open(self.path, "rb") as fh:
            fixed = fh.read(_FIXED.size)
            if len(fixed) >= len(MAGIC) and fixed[:len(MAGIC)] != MAGIC:
                raise TagFileError(self.path, f"not a qnode raw tag file (magic "
                                   f"{fixed[:len(MAGIC)]!r}, expected {MAGIC!r})", 0)
            if len(fixed) < _FIXED.size:
                raise TagFileError(self.path, f"truncated header ({len(fixed)} of "
                                   f"{_FIXED.size} bytes)", 0)
            _, version, rsize, header_len, count, json_len = _FIXED.unpack(fixed)
            if version > VERSION:
                raise TagFileError(self.path, f"unsupported raw format version {version} "
                                   f"(this reader knows up to {VERSION})", 8)
            if rsize != RECORD_SIZE:
                raise TagFileError(self.path, f"unsupported record size {rsize} "
                                   f"(expected {RECORD_SIZE})", 10)
            if header_len < _FIXED.size + json_len or header_len % RECORD_SIZE:
                raise TagFileError(self.path, f"corrupt header length {header_len}", 12)
            text = fh.read(json_len)
            if len(text) < json_len or len(fh.read(header_len - _FIXED.size - json_len)) < (
                    header_len - _FIXED.size - json_len):
                raise TagFileError(self.path, f"truncated header (expected {header_len} bytes)",
                                   _FIXED.size)
        try:
            desc = json.loads(text.decode("utf-8"))
            record = desc["record"]
        except (ValueError, KeyError, TypeError) as err:
            raise TagFileError(self.path, f"corrupt header JSON: {err}", _FIXED.size) from None
        if record != _record_description() or desc.get("time_unit") != "ps":
            raise TagFileError(self.path, f"unsupported record layout {record!r} "
                               f"(time unit {desc.get('time_unit')!r}); expected qnode TAG_DTYPE "
                               "in ps", _FIXED.size)
        self.version = version
        self.header_length = header_len
        self.declared_records = None if count == UNKNOWN_COUNT else int(count)
        self.metadata: dict[str, Any] = dict(desc.get("metadata") or {})

    @property
    def channels(self) -> tuple[int, ...]:
        """``metadata["channels"]`` as written, else ``()`` (unknown)."""
        return tuple(int(c) for c in self.metadata.get("channels", ()))

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def chunks(self) -> Iterator[TagBlock]:
        """Yield TagBlocks of up to ``chunk_records`` records, in file order.

        After the last whole record, raises :class:`TagFileError` if the file ends inside a
        record or holds fewer records than its header declares; raises it as soon as time goes
        backwards (after yielding the records before that point).
        """
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            available = max(0, size - self.header_length) // RECORD_SIZE
            total = available if self.declared_records is None else min(
                available, self.declared_records)
            fh.seek(self.header_length)
            last_time: int | None = None
            done = 0
            while done < total:
                n = min(self.chunk_records, total - done)
                block = np.empty(n, _DISK_DTYPE)
                got = fh.readinto(block.data.cast("B")) // RECORD_SIZE
                block = block[:got]
                if block.dtype != TAG_DTYPE:
                    block = block.astype(TAG_DTYPE)
                bad = first_out_of_order(block, last_time)
                if bad is not None:
                    if bad:
                        yield block[:bad].copy()
                    offset = self.header_length + (done + bad) * RECORD_SIZE
                    prev = last_time if bad == 0 else int(block["time"][bad - 1])
                    raise TagFileError(self.path, f"time goes backwards at record {done + bad}: "
                                       f"{int(block['time'][bad])} ps after {prev} ps", offset)
                if got:
                    last_time = int(block["time"][-1])
                    yield block
                done += got
                if got < n:  # the file shrank under us
                    break
            end = self.header_length + done * RECORD_SIZE
            if self.declared_records is not None and done < self.declared_records:
                raise TagFileError(self.path, f"truncated: header declares "
                                   f"{self.declared_records} records, file holds {done}", end)
            if self.declared_records is None and done == available and size > end:
                raise TagFileError(self.path, f"truncated record: {size - end} trailing bytes "
                                   f"after {done} whole records", end)

    def read(self) -> TagBlock:
        """The whole file as one block (only for files that fit in memory)."""
        blocks = list(self.chunks())
        return np.concatenate(blocks) if blocks else empty_block()


def write_raw(path: str | os.PathLike[str], blocks: Iterable[TagBlock] | TagBlock, *,
              metadata: Mapping[str, Any] | None = None,
              channels: Iterable[int] | None = None) -> int:
    """Write ``blocks`` (one TagBlock or an iterable of them) to ``path``; returns the record
    count."""
    if isinstance(blocks, np.ndarray):
        blocks = [blocks]
    with RawTagWriter(path, metadata=metadata, channels=channels) as writer:
        for block in blocks:
            writer.write(block)
    return writer.records


def read_raw(path: str | os.PathLike[str]) -> TagBlock:
    """Read a whole raw tag file into one block."""
    return RawTagReader(path).read()
