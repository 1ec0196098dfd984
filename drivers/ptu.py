"""PicoQuant PTU files in T2 mode: chunked reading into TagBlocks, and writing from TagBlocks.

Sources. The PTU container (``b"PQTTTR\\0\\0"``, tagged header, then 32-bit TTTR records) and the
record bit layouts follow PicoQuant's "PTU demos" (github.com/PicoQuant/PicoQuant-Time-Tagged-
File-Format-Demos: ``PTU/C/ptudemo.c`` ``ProcessPHT2`` / ``ProcessHHT2``, and ``Read_PTU.py``);
ptufile (Christoph Gohlke, ``_ptufile.pyx`` ``decode_pt2`` / ``decode_ht2`` / ``decode_ht2v1``)
agrees with them. The header is parsed with :class:`ptufile.PtuFile` and written with
:func:`ptufile.ptufile.encode_tag`. The records are decoded here, vectorised in numpy, rather than
with ``PtuFile.decode_records`` (ptufile 2026.2.6) for three reasons: its overflow state restarts at
every call, so it cannot decode a big file in bounded chunks; it reports the sync input and input 1
both as channel 0; and it multiplies a HydraHarp-V2/generic overflow record's count by 2**25 in
32-bit arithmetic, so a record counting 128 or more periods (a gap of >= 4.3 ms at 1 ps) gives wrong
times. ptufile's decoder serves as an independent cross-check in the tests.

T2 record layouts (little-endian uint32 words; "ticks" are units of the header's
``MeasDesc_GlobalResolution``):

* PicoHarp 300 (``rtPicoHarpT2``, 0x00010203): bits 28-31 channel, bits 0-27 time.
  Channel 0xF is special: low 4 time bits == 0 → overflow, +210 698 240 ticks; else a marker
  (bits = markers 1-4; the demo keeps the time as is, error < 16 ticks). Channels 0-4 are inputs
  (0 is the "sync"/channel-0 input).
* HydraHarp V1 (``rtHydraHarpT2``, 0x00010204): bit 31 special, bits 25-30 channel, bits 0-24
  time. Special with channel 0x3F → overflow, +33 552 000 ticks (one per record).
* HydraHarp V2, TimeHarp 260 N/P, MultiHarp and PicoHarp 330 (``rtHydraHarp2T2`` 0x01010204,
  ``rtTimeHarp260NT2`` 0x00010205, ``rtTimeHarp260PT2`` 0x00010206, ``rtGenericT2``
  0x00010207): as V1, but an overflow record carries its count n in the time bits and adds
  n · 2**25 ticks (n == 0: one, old firmware).
* In both HydraHarp-style layouts, special with channel 0 is the sync input (a real time tag);
  special with channel 1-15 is a marker record (bits = markers 1-4); channels 16-62 are undefined.

qnode channel numbers: 0 is the sync input (PicoHarp 300: input channel 0); k >= 1 is detector
input k as labelled on the instrument, i.e. record channel k - 1 in the HydraHarp-style layouts
(``ptudemo.c``: ``c = T2Rec.bits.channel + 1``) and record channel k on the PicoHarp 300.
Overflow records are consumed into absolute times and never appear in the output (they are time
wraps, not dead time). Markers are dropped and counted by default, or, with
``marker_channel_offset=M``, yielded as ``TIME_TAG`` records on channel M + m for marker m (1-4).

Resolution: the header stores it as a float64 in seconds. Every PicoQuant T2 resolution is a
whole number of picoseconds (PicoHarp 300: 4, HydraHarp 400: 1, MultiHarp 150/160: 5 or 80,
TimeHarp 260: 25 or 250, PicoHarp 330: 1), and the float nearest to k·1e-12 times 1e12 lies within
a few ulps of k, so ``round(seconds * 1e12)`` recovers k exactly; a value further than 1e-6
(relative) from a whole picosecond is refused. Times are then ``ticks * k`` in int64 ps, exact.
"""
from __future__ import annotations

import dataclasses
import os
import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import IO, Any

import numpy as np
import ptufile
from ptufile.ptufile import encode_tag  # not re-exported by the package

from qnode.native import TAG_DTYPE, TagBlock, TagBlockError, TagType, check_block, empty_block

from .tagger import TagFileError, first_out_of_order

PTU_MAGIC = b"PQTTTR\0\0"
DEFAULT_CHUNK_RECORDS = 100_000

WRAP_PICOHARP_T2 = 210_698_240
"""Ticks added per PicoHarp 300 T2 overflow record (ptudemo.c ``T2WRAPAROUND``)."""
WRAP_HYDRAHARP_V1_T2 = 33_552_000
"""Ticks added per HydraHarp V1 T2 overflow record (``T2WRAPAROUND_V1``)."""
WRAP_T2_V2 = 1 << 25
"""Ticks per overflow count in the HydraHarp V2 / generic T2 layout (``T2WRAPAROUND_V2``)."""

RecordType = ptufile.PtuRecordType

_LAYOUT = {
    RecordType.PicoHarpT2: "pt2",
    RecordType.HydraHarpT2: "ht2v1",
    RecordType.HydraHarp2T2: "ht2",
    RecordType.TimeHarp260NT2: "ht2",
    RecordType.TimeHarp260PT2: "ht2",
    RecordType.GenericT2: "ht2",
}
SUPPORTED_RECORD_TYPES: tuple[RecordType, ...] = tuple(_LAYOUT)
WRITABLE_RECORD_TYPES: tuple[RecordType, ...] = tuple(
    t for t, layout in _LAYOUT.items() if layout == "ht2")

_MEASUREMENT_MODE_T2 = 2  # Measurement_Mode tag: 2 = T2, 3 = T3 (PicoQuant tag dictionary)


def resolution_to_ps(seconds: float) -> int:
    """The header resolution (float seconds) as an exact whole number of picoseconds.

    Raises ``ValueError`` if it is not positive or not within 1e-6 (relative) of whole ps.
    """
    scaled = float(seconds) * 1e12
    ps = round(scaled)
    if ps < 1 or abs(scaled - ps) > 1e-6 * ps:
        raise ValueError(f"resolution {seconds!r} s is not a whole number of picoseconds")
    return int(ps)


@dataclasses.dataclass
class PtuStats:
    """What a reader met so far (records are 32-bit PTU records; ``tags`` are output records)."""

    records: int = 0
    tags: int = 0
    sync_tags: int = 0
    overflow_records: int = 0
    wraps: int = 0
    markers: int = 0
    markers_dropped: int = 0
    invalid_dropped: int = 0


class T2Decoder:
    """Stateful decoder of T2 record words into TagBlocks; the overflow correction carries over
    from one :meth:`decode` call to the next, so a file can be decoded in any chunking."""

    def __init__(self, record_type: int, resolution_ps: int, *,
                 marker_channel_offset: int | None = None):
        try:
            self.record_type = RecordType(record_type)
            self._layout = _LAYOUT[self.record_type]
        except (ValueError, KeyError):
            raise ValueError(f"unsupported PTU record type 0x{int(record_type):08x}; T2 types "
                             "supported: " + ", ".join(t.name for t in _LAYOUT)) from None
        self.resolution_ps = int(resolution_ps)
        self.marker_channel_offset = marker_channel_offset
        self.overflow_ticks = 0
        self.stats = PtuStats()

    def decode(self, words: np.ndarray) -> TagBlock:
        """Decode consecutive records (``uint32``, file order) into a TagBlock in file order."""
        w = np.asarray(words, dtype=np.uint32)
        st = self.stats
        st.records += w.size
        if self._layout == "pt2":
            ch = (w >> 28).astype(np.int32)
            tt = (w & 0x0FFFFFFF).astype(np.int64)
            special = ch == 0xF
            low = (tt & 0xF).astype(np.int32)
            overflow = special & (low == 0)
            marker = special & (low != 0)
            marker_bits = np.where(marker, low, 0)
            photon = ~special
            sync = np.zeros(w.size, bool)
            channel = ch
            wraps = overflow.astype(np.int64)
            add = wraps * WRAP_PICOHARP_T2
            invalid = np.zeros(w.size, bool)
        else:
            special = (w >> 31).astype(bool)
            ch = ((w >> 25) & 0x3F).astype(np.int32)
            tt = (w & 0x1FFFFFF).astype(np.int64)
            overflow = special & (ch == 0x3F)
            sync = special & (ch == 0)
            marker = special & (ch >= 1) & (ch <= 15)
            marker_bits = np.where(marker, ch, 0)
            invalid = special & (ch >= 16) & (ch < 0x3F)
            photon = ~special
            channel = np.where(photon, ch + 1, 0)
            if self._layout == "ht2v1":
                wraps = overflow.astype(np.int64)
                add = wraps * WRAP_HYDRAHARP_V1_T2
            else:
                wraps = np.where(overflow, np.maximum(tt, 1), 0)
                add = wraps * WRAP_T2_V2
        cum = np.cumsum(add)
        cum += self.overflow_ticks
        ticks = cum + tt
        if w.size:
            self.overflow_ticks = int(cum[-1])
        n_marker = int(marker.sum())
        st.overflow_records += int(overflow.sum())
        st.wraps += int(wraps.sum())
        st.markers += n_marker
        st.invalid_dropped += int(invalid.sum())
        st.sync_tags += int(sync.sum())

        keep = photon | sync
        idx = np.flatnonzero(keep)
        out_ticks, out_ch = ticks[idx], channel[idx]
        if n_marker and self.marker_channel_offset is not None:
            parts_i, parts_c = [idx], [out_ch]
            for bit in range(4):
                m = np.flatnonzero(marker & ((marker_bits >> bit) & 1).astype(bool))
                parts_i.append(m)
                parts_c.append(np.full(m.size, self.marker_channel_offset + bit + 1, np.int32))
            all_i, all_c = np.concatenate(parts_i), np.concatenate(parts_c)
            order = np.lexsort((all_c, all_i))
            idx, out_ch = all_i[order], all_c[order]
            out_ticks = ticks[idx]
        elif n_marker:
            st.markers_dropped += n_marker
        block = np.zeros(idx.size, TAG_DTYPE)
        block["time"] = out_ticks * self.resolution_ps
        block["channel"] = out_ch
        st.tags += idx.size
        return block


class PtuReader:
    """Read a PTU T2 file as TagBlocks of bounded size (``chunk_records`` PTU records per read).

    The header is read with ptufile on construction; :class:`TagFileError` names the file and
    the problem for a bad magic, a corrupt header, a T3 file or an unsupported record type.
    :meth:`chunks` may be called repeatedly (each call starts from the first record);
    :attr:`stats` describes the last (or ongoing) pass. ``tags`` holds the PTU header tags.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 chunk_records: int = DEFAULT_CHUNK_RECORDS,
                 marker_channel_offset: int | None = None):
        if chunk_records < 1:
            raise ValueError(f"chunk_records must be >= 1, got {chunk_records}")
        self.path = os.fspath(path)
        self.chunk_records = int(chunk_records)
        self.marker_channel_offset = marker_channel_offset
        with open(self.path, "rb") as fh:
            magic = fh.read(len(PTU_MAGIC))
        if magic != PTU_MAGIC:
            raise TagFileError(self.path, f"not a PicoQuant PTU file (magic {magic!r}, "
                               f"expected {PTU_MAGIC!r})", 0)
        try:
            with ptufile.PtuFile(self.path) as ptu:
                self.tags: dict[str, Any] = dict(ptu.tags)
                self.record_offset = int(ptu.record_offset)
        except Exception as err:  # ptufile raises PqFileError, or others on some truncations
            raise TagFileError(self.path, f"corrupt PTU header: {type(err).__name__}: {err}"
                               ) from None
        tags = self.tags
        for key in ("Measurement_Mode", "TTResultFormat_TTTRRecType",
                    "MeasDesc_GlobalResolution"):
            if key not in tags:
                raise TagFileError(self.path, f"PTU header lacks the {key} tag")
        if tags["Measurement_Mode"] != _MEASUREMENT_MODE_T2:
            raise TagFileError(self.path, f"unsupported measurement mode "
                               f"{tags['Measurement_Mode']} (only T2 = 2 is read)")
        rectype = int(tags["TTResultFormat_TTTRRecType"])
        if rectype not in _LAYOUT:
            try:
                name = RecordType(rectype).name
            except ValueError:
                name = "unknown"
            raise TagFileError(self.path, f"unsupported record type 0x{rectype:08x} ({name}); "
                               "T2 types read: " + ", ".join(t.name for t in _LAYOUT))
        self.record_type = RecordType(rectype)
        bits = int(tags.get("TTResultFormat_BitsPerRecord", 32))
        if bits not in (0, 32):
            raise TagFileError(self.path, f"unsupported record size {bits} bits (expected 32)")
        try:
            self.resolution_ps = resolution_to_ps(tags["MeasDesc_GlobalResolution"])
        except ValueError as err:
            raise TagFileError(self.path, str(err)) from None
        declared = int(tags.get("TTResult_NumberOfRecords", 0))
        self.declared_records = declared if declared > 0 else None
        self.stats = PtuStats()

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def channels(self) -> tuple[int, ...]:
        """qnode channel numbers the instrument had: PicoHarp 300: (0, 1); otherwise 0 (sync)
        … ``HW_InpChannels - 1`` when the header records ``HW_InpChannels`` (inputs plus sync),
        else ``()``."""
        if self.record_type == RecordType.PicoHarpT2:
            return (0, 1)
        n = self.tags.get("HW_InpChannels")
        return tuple(range(int(n))) if isinstance(n, int) and n > 0 else ()

    def chunks(self) -> Iterator[TagBlock]:
        """Yield TagBlocks (TIME_TAG records only) decoded from up to ``chunk_records`` PTU
        records each; blocks may be empty when a stretch holds only overflow/marker records.

        After the last whole record, raises :class:`TagFileError` if the file ends inside a
        record or holds fewer records than ``TTResult_NumberOfRecords``; raises it as soon as
        time goes backwards (after yielding the records before that point).
        """
        decoder = T2Decoder(self.record_type, self.resolution_ps,
                            marker_channel_offset=self.marker_channel_offset)
        self.stats = decoder.stats
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            available = max(0, size - self.record_offset) // 4
            total = available if self.declared_records is None else min(
                available, self.declared_records)
            fh.seek(self.record_offset)
            last_time: int | None = None
            done = 0
            while done < total:
                n = min(self.chunk_records, total - done)
                words = np.fromfile(fh, dtype="<u4", count=n)
                block = decoder.decode(words)
                bad = first_out_of_order(block, last_time)
                if bad is not None:
                    if bad:
                        yield block[:bad].copy()
                    prev = last_time if bad == 0 else int(block["time"][bad - 1])
                    raise TagFileError(self.path, f"time goes backwards in the records from "
                                       f"record {done}: {int(block['time'][bad])} ps (channel "
                                       f"{int(block['channel'][bad])}) after {prev} ps",
                                       self.record_offset + 4 * done)
                if block.size:
                    last_time = int(block["time"][-1])
                yield block
                done += words.size
                if words.size < n:  # the file shrank under us
                    break
            end = self.record_offset + 4 * done
            if self.declared_records is not None and done < self.declared_records:
                raise TagFileError(self.path, f"truncated: header declares "
                                   f"{self.declared_records} records, file holds {done}", end)
            if self.declared_records is None and done == available and size > end:
                raise TagFileError(self.path, f"truncated record: {size - end} trailing bytes "
                                   f"after {done} whole records", end)

    def read(self) -> TagBlock:
        """The whole file as one block (only for files that fit in memory)."""
        blocks = [b for b in self.chunks() if b.size]
        return np.concatenate(blocks) if blocks else empty_block()


_SPECIAL = np.uint32(1 << 31)
_OVERFLOW_WORD = np.uint32((1 << 31) | (0x3F << 25))
_MAX_OVERFLOW_COUNT = (1 << 25) - 1
_NUMBER_OF_RECORDS = "TTResult_NumberOfRecords"


class PtuT2Writer:
    """Write a TagBlock stream as a PTU T2 file in the HydraHarp V2 / generic T2 layout.

    ptufile's own ``PtuWriter`` writes only T3 image files, so the records are encoded here
    following the layout in the module docstring; the header tags are encoded with
    :func:`ptufile.ptufile.encode_tag`. ``record_type``: one of :data:`WRITABLE_RECORD_TYPES`
    (default ``GenericT2``, as MultiHarp / PicoHarp 330 write). ``resolution_ps``: the tick (every
    time must be a non-negative multiple of it). ``input_channels``: the number of detector inputs,
    written as ``HW_InpChannels`` (inputs + sync). qnode channel 0 is written as a sync record and
    channel k (1-64) as input k; other channels raise ``ValueError``. Non-``TIME_TAG`` records have
    no T2 equivalent: they are dropped and counted in :attr:`dropped`. Overflow records are inserted
    before every tag that starts a new 2**25-tick period (one record holds up to 2**25 - 1 periods).
    The record count is written into the header on :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *, resolution_ps: int = 1,
                 record_type: RecordType = RecordType.GenericT2,
                 input_channels: int | None = None, comment: str = "",
                 tags: Mapping[str, Any] | None = None):
        self.path = os.fspath(path)
        record_type = RecordType(record_type)
        if record_type not in WRITABLE_RECORD_TYPES:
            raise ValueError(f"cannot write {record_type.name}; writable: "
                             + ", ".join(t.name for t in WRITABLE_RECORD_TYPES))
        if int(resolution_ps) < 1:
            raise ValueError(f"resolution_ps must be >= 1, got {resolution_ps}")
        self.resolution_ps = int(resolution_ps)
        self.record_type = record_type
        self.records = 0
        self.tags_written = 0
        self.dropped = 0
        self._period = 0
        self._last_time: int | None = None
        header_tags: dict[str, Any] = {
            "File_GUID": f"{{{uuid.uuid4()}}}".upper(),
            "File_Comment": comment,
            "File_CreatingTime": datetime.now(),
            "CreatorSW_Name": "qnode",
            "CreatorSW_Version": "1",
            "Measurement_Mode": _MEASUREMENT_MODE_T2,
            "Measurement_SubMode": 0,  # oscilloscope (point) mode
            "MeasDesc_GlobalResolution": self.resolution_ps * 1e-12,
            "MeasDesc_Resolution": self.resolution_ps * 1e-12,
            "TTResultFormat_TTTRRecType": int(record_type),
            "TTResultFormat_BitsPerRecord": 32,
            _NUMBER_OF_RECORDS: 0,
        }
        if input_channels is not None:
            header_tags["HW_InpChannels"] = int(input_channels) + 1
        for key, value in (tags or {}).items():
            header_tags.setdefault(key, value)
        parts = [PTU_MAGIC, b"1.0.00\0\0"]
        parts += [encode_tag(k, v) for k, v in header_tags.items()]
        parts.append(encode_tag("Header_End", None))
        header = b"".join(parts)
        # tag layout: 32-byte ident, int32 index, uint32 type, 8-byte value (PicoQuant PTU demo)
        self._count_offset = header.index(_NUMBER_OF_RECORDS.encode()) + 40
        self._fh: IO[bytes] | None = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._fh.write(header)

    def write(self, block: TagBlock) -> None:
        """Append one block; must continue the time order of the previous blocks."""
        if self._fh is None:
            raise ValueError(f"{self.path}: writer is closed")
        check_block(block)
        tags = block[block["type"] == TagType.TIME_TAG]
        self.dropped += block.size - tags.size
        if tags.size == 0:
            return
        t = tags["time"]
        ch = tags["channel"].astype(np.int64)
        if self._last_time is not None and int(t[0]) < self._last_time:
            raise TagBlockError(f"{self.path}: block starts at {int(t[0])} ps, before the "
                                f"previous block's last tag at {self._last_time} ps")
        if int(t[0]) < 0:
            raise ValueError(f"{self.path}: PTU times cannot be negative ({int(t[0])} ps)")
        if np.any(t % self.resolution_ps):
            i = int(np.flatnonzero(t % self.resolution_ps)[0])
            raise ValueError(f"{self.path}: time {int(t[i])} ps is not a multiple of the "
                             f"resolution {self.resolution_ps} ps")
        if np.any((ch < 0) | (ch > 64)):
            i = int(np.flatnonzero((ch < 0) | (ch > 64))[0])
            raise ValueError(f"{self.path}: channel {int(ch[i])} cannot be written to a T2 "
                             "record (0 = sync, 1-64 = inputs)")
        ticks = t // self.resolution_ps
        period = ticks >> 25
        tt = (ticks & 0x1FFFFFF).astype(np.uint32)
        prev = np.empty_like(period)
        prev[0] = self._period
        prev[1:] = period[:-1]
        gap = period - prev
        n_ofl = (gap + _MAX_OVERFLOW_COUNT - 1) // _MAX_OVERFLOW_COUNT
        ends = np.cumsum(n_ofl)
        pos = np.arange(tags.size) + ends
        out = np.empty(tags.size + int(ends[-1]), np.uint32)
        out[pos] = np.where(ch == 0, _SPECIAL | tt,
                            (np.maximum(ch - 1, 0).astype(np.uint32) << 25) | tt)
        if ends[-1]:
            owner = np.repeat(np.arange(tags.size), n_ofl)
            j = np.arange(owner.size) - (ends - n_ofl)[owner]
            count = np.minimum(_MAX_OVERFLOW_COUNT, gap[owner] - j * _MAX_OVERFLOW_COUNT)
            out[pos[owner] - n_ofl[owner] + j] = _OVERFLOW_WORD | count.astype(np.uint32)
        self._fh.write(out.astype("<u4", copy=False).tobytes())
        self.records += out.size
        self.tags_written += tags.size
        self._period = int(period[-1])
        self._last_time = int(t[-1])

    def close(self) -> None:
        """Write ``TTResult_NumberOfRecords`` and close the file (idempotent)."""
        if self._fh is None:
            return
        fh, self._fh = self._fh, None
        try:
            fh.seek(self._count_offset)
            fh.write(struct.pack("<q", self.records))
        finally:
            fh.close()

    def __enter__(self) -> PtuT2Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_ptu(path: str | os.PathLike[str], blocks: Iterable[TagBlock] | TagBlock,
              **options: Any) -> int:
    """Write ``blocks`` (one TagBlock or an iterable) to a PTU T2 file; returns the PTU record
    count. ``options`` go to :class:`PtuT2Writer`."""
    if isinstance(blocks, np.ndarray):
        blocks = [blocks]
    with PtuT2Writer(path, **options) as writer:
        for block in blocks:
            writer.write(block)
    return writer.records


def read_ptu(path: str | os.PathLike[str], **options: Any) -> TagBlock:
    """Read a whole PTU T2 file into one block (``options`` go to :class:`PtuReader`)."""
    return PtuReader(path, **options).read()
