"""Tag files and replay: PTU T2 (PicoQuant) and qnode raw files, read in chunks, replayed as a
TimeTagger, giving the same coincidences as the stream they recorded."""
from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

import numpy as np
import ptufile
import pytest
from ptufile.ptufile import encode_tag

from qnode import native
from qnode.drivers import rawfile
from qnode.drivers.ptu import PtuReader, PtuT2Writer, read_ptu, resolution_to_ps, write_ptu
from qnode.drivers.rawfile import RawTagReader, write_raw
from qnode.drivers.replay import FileReplayTagger, detect_format
from qnode.drivers.tagger import TagFileError, TimeTagger
from qnode.hal_sim import BellDiagonalState, CWSource, Link, PhotonStreamSimulator, simple_node
from qnode.native import TagType, sort_block, tag_block

PERIOD = 1 << 25  # HydraHarp V2 / generic T2 time-tag period, ticks


def concat(blocks) -> np.ndarray:
    blocks = [b for b in blocks if b.size]
    return np.concatenate(blocks) if blocks else native.empty_block()


def stream(seed: int = 1, n: int = 5000, resolution_ps: int = 1,
           big_gaps: bool = True) -> np.ndarray:
    """Tags on sync (0) and inputs 1-64, with runs of equal times, short gaps within one T2
    period and gaps spanning one, several and (``big_gaps``) a million and more than
    2**25 - 1 periods."""
    rng = np.random.default_rng(seed)
    gaps = rng.choice([0, 1, 17, 5_000, PERIOD - 1, PERIOD, 3 * PERIOD + 11,
                       (10**6 if big_gaps else 100) * PERIOD],
                      size=n, p=[0.15, 0.1, 0.2, 0.4, 0.05, 0.05, 0.04, 0.01])
    if big_gaps:
        gaps[n // 2] = (PERIOD - 1) * PERIOD * 3  # needs several overflow records in a row
    ticks = np.cumsum(gaps) + 3
    channels = rng.choice([0, 1, 2, 3, 4, 64], size=n)
    return sort_block(tag_block(ticks * resolution_ps, channels))


def split(block: np.ndarray, sizes=(1, 2, 333, 1000)) -> list[np.ndarray]:
    out, i, k = [], 0, 0
    while i < block.size:
        out.append(block[i:i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    return out


# --- hand-built PTU files, independent of PtuT2Writer --------------------------------------

def ptu_bytes(record_type: int, words, *, resolution_s: float = 1e-12,
              number_of_records: int | None = None, mode: int = 2) -> bytes:
    """A PTU file: magic, version, tags encoded per PicoQuant's tag layout, then the words."""
    words = np.asarray(words, dtype="<u4")
    tags = {"File_GUID": "{00000000-0000-0000-0000-000000000000}",
            "Measurement_Mode": mode, "Measurement_SubMode": 0,
            "MeasDesc_GlobalResolution": resolution_s, "MeasDesc_Resolution": resolution_s,
            "TTResultFormat_TTTRRecType": record_type, "TTResultFormat_BitsPerRecord": 32,
            "TTResult_NumberOfRecords": (words.size if number_of_records is None
                                         else number_of_records)}
    header = b"PQTTTR\0\0" + b"1.0.00\0\0" + b"".join(encode_tag(k, v) for k, v in tags.items())
    return header + encode_tag("Header_End", None) + words.tobytes()


def ht2(channel: int, timetag: int) -> int:
    """HydraHarp/generic T2 input record: bits 25-30 channel (0-based), 0-24 time tag."""
    return (channel << 25) | timetag


def ht2_special(channel: int, timetag: int) -> int:
    """Special record: bit 31 set; channel 0 = sync, 1-15 = markers, 0x3F = overflow."""
    return (1 << 31) | (channel << 25) | timetag


def pt2(channel: int, timetag: int) -> int:
    """PicoHarp 300 T2 record: bits 28-31 channel (0xF special), 0-27 time tag."""
    return (channel << 28) | timetag


def write_bytes(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def times_channels(block: np.ndarray) -> list[tuple[int, int]]:
    return [(int(t), int(c)) for t, c in zip(block["time"], block["channel"], strict=True)]


def test_generic_t2_overflow_records_give_absolute_times(tmp_path):
    words = [
        ht2(0, 100),                 # input 1 at 100
        ht2_special(0, 200),         # sync at 200
        ht2_special(0x3F, 1),        # 1 overflow
        ht2(2, 5),                   # input 3 at 2**25 + 5
        ht2_special(0x3F, 0),        # count 0: old-style single overflow
        ht2_special(0x3F, 1000),     # 1000 overflows in one record
        ht2(1, PERIOD - 1),          # input 2 at 1002 * 2**25 + 2**25 - 1
        ht2(1, PERIOD - 1),          # same time again
        ht2_special(4, PERIOD - 1),  # marker 3 (bits 0b0100)
        ht2_special(20, 9),          # undefined special channel: dropped
        ht2(63, 0x1FFFFFF),          # input 64 at the last tick of the period
    ]
    path = write_bytes(tmp_path, "generic.ptu", ptu_bytes(0x00010207, words, resolution_s=5e-12))
    reader = PtuReader(path)
    got = reader.read()
    assert reader.resolution_ps == 5
    assert times_channels(got) == [
        (100 * 5, 1), (200 * 5, 0), ((PERIOD + 5) * 5, 3),
        ((1002 * PERIOD + PERIOD - 1) * 5, 2), ((1002 * PERIOD + PERIOD - 1) * 5, 2),
        ((1002 * PERIOD + 0x1FFFFFF) * 5, 64)]
    assert set(got["type"]) == {TagType.TIME_TAG}
    s = reader.stats
    assert (s.records, s.tags, s.sync_tags, s.overflow_records, s.wraps) == (11, 6, 1, 3, 1002)
    assert (s.markers, s.markers_dropped, s.invalid_dropped) == (1, 1, 1)

    with_markers = PtuReader(path, marker_channel_offset=100).read()
    assert ((1002 * PERIOD + PERIOD - 1) * 5, 103) in times_channels(with_markers)


def test_hydraharp_v1_and_picoharp_overflow_layouts(tmp_path):
    v1 = [ht2(0, 10), ht2_special(0x3F, 7), ht2(1, 20), ht2_special(0x3F, 0), ht2_special(0, 30)]
    got = read_ptu(write_bytes(tmp_path, "hh1.ptu", ptu_bytes(0x00010204, v1)))
    # V1: each overflow record adds 33 552 000 ticks, whatever its time bits hold
    assert times_channels(got) == [(10, 1), (33_552_000 + 20, 2), (2 * 33_552_000 + 30, 0)]

    ph = [pt2(1, 1000), pt2(0xF, 0), pt2(0, 50), pt2(0xF, 0x40 | 0b0010), pt2(0xF, 0),
          pt2(0xF, 0), pt2(1, 0x0FFFFFFF)]
    path = write_bytes(tmp_path, "ph.ptu", ptu_bytes(0x00010203, ph, resolution_s=4e-12))
    reader = PtuReader(path)
    got = reader.read()
    wrap = 210_698_240
    assert times_channels(got) == [(1000 * 4, 1), ((wrap + 50) * 4, 0),
                                   ((3 * wrap + 0x0FFFFFFF) * 4, 1)]
    assert (reader.stats.overflow_records, reader.stats.markers) == (3, 1)
    assert reader.channels == (0, 1)


def test_our_decoder_agrees_with_ptufile_on_input_channels(tmp_path):
    """ptufile reports sync and input 1 both as channel 0, so compare the inputs >= 2. Gaps stay
    below 128 periods: ptufile 2026.2.6 multiplies an overflow record's count by 2**25 in 32-bit
    arithmetic, so a record counting >= 128 periods wraps (see the next test)."""
    block = stream(seed=3, n=3000, big_gaps=False)
    path = tmp_path / "s.ptu"
    write_ptu(path, block)
    with ptufile.PtuFile(path) as f:
        assert f.record_type == ptufile.PtuRecordType.GenericT2 and not f.is_t3
        dec = f.decode_records()
    theirs = dec[dec["channel"] >= 1]
    ours = block[block["channel"] >= 2]
    np.testing.assert_array_equal(theirs["time"].astype(np.int64), ours["time"])
    np.testing.assert_array_equal(theirs["channel"].astype(np.int32) + 1, ours["channel"])


def test_overflow_counts_of_128_and_more_periods(tmp_path):
    """A GenericT2 overflow record counting n periods adds n * 2**25 ticks (PicoQuant's demo:
    ``oflcorrection += T2WRAPAROUND_V2 * T2Rec.bits.timetag`` in 64 bits). ptufile 2026.2.6
    computes the product in 32 bits (it wraps for n >= 128); this reader does not."""
    words = [ht2(0, 1), ht2_special(0x3F, 128), ht2(0, 2), ht2_special(0x3F, PERIOD - 1),
             ht2(0, 3)]
    path = write_bytes(tmp_path, "big.ptu", ptu_bytes(0x00010207, words))
    assert read_ptu(path)["time"].tolist() == [1, 128 * PERIOD + 2,
                                               (128 + PERIOD - 1) * PERIOD + 3]
    with ptufile.PtuFile(path) as f:
        theirs = f.decode_records()["time"][[0, 2, 4]].astype(np.int64).tolist()
    if theirs != [1, 128 * PERIOD + 2, (128 + PERIOD - 1) * PERIOD + 3]:
        assert theirs[1] == (128 * PERIOD + 2) % 2**32  # the 32-bit wrap, documented above


# --- writer -> reader round trips ----------------------------------------------------------

@pytest.mark.parametrize("resolution_ps", [1, 5])
def test_ptu_writer_reader_round_trip_is_exact(tmp_path, resolution_ps):
    block = stream(resolution_ps=resolution_ps)
    assert int(block["time"][-1]) // resolution_ps > 10**6 * PERIOD  # many overflow periods
    assert np.any(np.diff(block["time"]) == 0)
    path = tmp_path / "rt.ptu"
    with PtuT2Writer(path, resolution_ps=resolution_ps, input_channels=64) as writer:
        for piece in split(block):
            writer.write(piece)
    assert writer.tags_written == block.size and writer.records > block.size
    reader = PtuReader(path)
    assert reader.declared_records == writer.records
    assert reader.channels == tuple(range(65))
    np.testing.assert_array_equal(reader.read(), block)


def test_ptu_writer_drops_non_tag_records_and_refuses_what_t2_cannot_hold(tmp_path):
    block = tag_block(np.array([10, 20, 20, 30]), np.array([1, 1, 2, 2]),
                      type=np.array([0, TagType.OVERFLOW_BEGIN, TagType.OVERFLOW_END, 0]))
    with PtuT2Writer(tmp_path / "a.ptu") as writer:
        writer.write(block)
    assert writer.dropped == 2
    assert times_channels(read_ptu(tmp_path / "a.ptu")) == [(10, 1), (30, 2)]
    with PtuT2Writer(tmp_path / "b.ptu", resolution_ps=4) as writer:
        with pytest.raises(ValueError, match="not a multiple of the resolution 4 ps"):
            writer.write(tag_block(np.array([8, 10]), np.array([1, 1])))
        with pytest.raises(ValueError, match="channel 65"):
            writer.write(tag_block(np.array([8]), np.array([65])))
    with pytest.raises(ValueError, match="cannot write PicoHarpT2"):
        PtuT2Writer(tmp_path / "c.ptu", record_type=ptufile.PtuRecordType.PicoHarpT2)


def test_raw_round_trip_keeps_every_record_type_and_metadata(tmp_path):
    block = stream(seed=5, n=2000)
    kinds = np.random.default_rng(0).choice([0, 0, 0, 1, 2, 3, 4], size=block.size)
    block["type"] = kinds
    block["missed"] = np.where(kinds == TagType.MISSED_EVENTS, 7, 0)
    block["channel"][::7] *= -1  # falling edges
    path = tmp_path / "rt.qtag"
    n = write_raw(path, split(block), metadata={"node": "alice", "tagger": "sim"},
                  channels=[4, 1, 2])
    assert n == block.size
    reader = RawTagReader(path)
    assert reader.metadata["node"] == "alice" and reader.channels == (1, 2, 4)
    assert reader.header_length % 16 == 0 and reader.declared_records == block.size
    np.testing.assert_array_equal(reader.read(), block)
    # the record area is the TAG_DTYPE array as is: memory-mappable
    mapped = np.memmap(path, dtype=native.TAG_DTYPE, mode="r", offset=reader.header_length)
    np.testing.assert_array_equal(mapped, block)


@pytest.mark.parametrize("chunk_records", [1, 7, 1000, 100_000])
def test_chunked_reading_equals_whole_reading(tmp_path, chunk_records):
    block = stream(seed=9, n=1500)
    write_ptu(tmp_path / "c.ptu", block)
    write_raw(tmp_path / "c.qtag", block)
    for path in (tmp_path / "c.ptu", tmp_path / "c.qtag"):
        reader = (PtuReader if path.suffix == ".ptu" else RawTagReader)(
            path, chunk_records=chunk_records)
        chunks = list(reader.chunks())
        assert all(c.dtype == native.TAG_DTYPE and c.flags.c_contiguous for c in chunks)
        if path.suffix == ".qtag":
            assert max(c.size for c in chunks) <= chunk_records
        np.testing.assert_array_equal(concat(chunks), block)


def test_resolution_converts_to_whole_picoseconds_exactly():
    assert [resolution_to_ps(s) for s in (1e-12, 4e-12, 5e-12, 25e-12, 80e-12, 2.5e-10)] == [
        1, 4, 5, 25, 80, 250]
    for bad in (1.5e-12, 0.0, -4e-12, 1e-13):
        with pytest.raises(ValueError, match="whole number of picoseconds"):
            resolution_to_ps(bad)


# --- malformed files -----------------------------------------------------------------------

def test_bad_magic_names_the_file(tmp_path):
    path = write_bytes(tmp_path, "junk.ptu", b"NOTAFILE" + bytes(100))
    with pytest.raises(TagFileError, match=r"junk\.ptu at byte offset 0: not a PicoQuant PTU"):
        PtuReader(path)
    with pytest.raises(TagFileError, match=r"junk\.ptu.*not a qnode raw tag file"):
        RawTagReader(path)
    with pytest.raises(TagFileError, match="unknown tag file format"):
        detect_format(path)
    with pytest.raises(TagFileError, match="corrupt PTU header"):
        PtuReader(write_bytes(tmp_path, "short.ptu", b"PQTTTR\0\0" + b"1.0.00\0\0" + bytes(20)))


def test_unsupported_record_types_are_refused(tmp_path):
    t3 = write_bytes(tmp_path, "t3.ptu", ptu_bytes(0x00010303, [0], mode=3))
    with pytest.raises(TagFileError, match=r"t3\.ptu: unsupported measurement mode 3"):
        PtuReader(t3)
    weird = write_bytes(tmp_path, "weird.ptu", ptu_bytes(0x00010303, [0], mode=2))
    with pytest.raises(TagFileError, match=r"unsupported record type 0x00010303 \(PicoHarpT3\)"):
        PtuReader(weird)
    odd = write_bytes(tmp_path, "odd.ptu", ptu_bytes(0x12345678, [0]))
    with pytest.raises(TagFileError, match="unsupported record type 0x12345678 \\(unknown\\)"):
        PtuReader(odd)


def test_truncated_ptu_yields_what_it_has_then_raises(tmp_path):
    words = [ht2(0, t) for t in range(10, 110, 10)]
    # header says 12 records, the file holds 10
    path = write_bytes(tmp_path, "cut.ptu", ptu_bytes(0x00010207, words, number_of_records=12))
    got = []
    with pytest.raises(TagFileError, match=r"cut\.ptu at byte offset \d+: truncated: header "
                                           r"declares 12 records, file holds 10"):
        for block in PtuReader(path, chunk_records=3).chunks():
            got.append(block)
    assert concat(got)["time"].tolist() == list(range(10, 110, 10))
    # record count unknown (0, as while a measurement is written) and a partial last record
    data = ptu_bytes(0x00010207, words, number_of_records=0) + b"\x01\x02"
    path = write_bytes(tmp_path, "part.ptu", data)
    got = []
    with pytest.raises(TagFileError, match=r"byte offset \d+: truncated record: 2 trailing "
                                           r"bytes after 10 whole records") as err:
        got.extend(PtuReader(path).chunks())
    assert err.value.offset == len(data) - 2 and err.value.path == os.fspath(path)
    assert concat(got).size == 10


def test_truncated_or_disordered_raw_file_yields_what_it_has_then_raises(tmp_path):
    block = stream(seed=2, n=100)
    path = tmp_path / "cut.qtag"
    write_raw(path, block)
    data = path.read_bytes()
    path.write_bytes(data[:-24])  # loses one whole record and half of another
    got = []
    with pytest.raises(TagFileError, match=r"cut\.qtag at byte offset \d+: truncated: header "
                                           r"declares 100 records, file holds 98"):
        got.extend(RawTagReader(path, chunk_records=10).chunks())
    np.testing.assert_array_equal(concat(got), block[:98])

    # a file still being written (count unknown) that ends inside a record
    unfinished = bytearray(data + b"\0" * 5)
    unfinished[16:24] = struct.pack("<Q", rawfile.UNKNOWN_COUNT)
    part = tmp_path / "part.qtag"
    part.write_bytes(bytes(unfinished))
    with pytest.raises(TagFileError, match="truncated record: 5 trailing bytes after 100"):
        list(RawTagReader(part).chunks())

    back = block.copy()
    back["time"][50] = back["time"][49] - 1
    bad = tmp_path / "back.qtag"
    path_bytes = bytearray(data)
    header_len = RawTagReader(path.with_name("cut.qtag")).header_length
    path_bytes[header_len:] = back.tobytes()
    bad.write_bytes(bytes(path_bytes))
    got = []
    with pytest.raises(TagFileError, match="time goes backwards at record 50"):
        got.extend(RawTagReader(bad, chunk_records=30).chunks())
    np.testing.assert_array_equal(concat(got), block[:50])

    foreign = bytearray(data)
    foreign[10:12] = struct.pack("<H", 12)
    (tmp_path / "foreign.qtag").write_bytes(bytes(foreign))
    with pytest.raises(TagFileError, match=r"foreign\.qtag at byte offset 10: unsupported "
                                           "record size 12"):
        RawTagReader(tmp_path / "foreign.qtag")


# --- replay --------------------------------------------------------------------------------

def test_replay_is_a_time_tagger_and_detects_the_format(tmp_path):
    block = stream(seed=4, n=500)
    write_ptu(tmp_path / "s.ptu", block)
    write_raw(tmp_path / "s.qtag", block, channels=[0, 1, 2, 3, 4, 64])
    for name, fmt in (("s.ptu", "ptu"), ("s.qtag", "raw")):
        assert detect_format(tmp_path / name) == fmt
        with FileReplayTagger(tmp_path / name, chunk_records=64) as tagger:
            assert isinstance(tagger, TimeTagger) and tagger.name == name
            np.testing.assert_array_equal(concat(tagger.chunks()), block)
            np.testing.assert_array_equal(concat(tagger.chunks()), block)  # restarts
    assert FileReplayTagger(tmp_path / "s.qtag").channels == (0, 1, 2, 3, 4, 64)


def test_realtime_replay_takes_about_the_recorded_span(tmp_path):
    span_ps = 300_000_000_000  # 0.3 s
    t = np.linspace(0, span_ps, 3001).astype(np.int64)
    block = tag_block(t, np.where(np.arange(t.size) % 2, 1, 2))
    write_raw(tmp_path / "rt.qtag", block)
    tagger = FileReplayTagger(tmp_path / "rt.qtag", pace="realtime", chunk_records=500,
                              max_chunk_ps=50_000_000_000)
    start = time.monotonic()
    chunks = list(tagger.chunks())
    elapsed = time.monotonic() - start
    assert elapsed >= 0.8 * 0.3
    assert max(int(c["time"][-1]) - int(c["time"][0]) for c in chunks) <= 50_000_000_000
    np.testing.assert_array_equal(concat(chunks), block)

    fast = FileReplayTagger(tmp_path / "rt.qtag", pace="realtime", speed=10.0)
    start = time.monotonic()
    list(fast.chunks())
    assert time.monotonic() - start >= 0.8 * 0.03


def test_close_from_another_thread_stops_a_realtime_replay(tmp_path):
    block = tag_block(np.array([0, 10**12, 2 * 10**12, 60 * 10**12]), np.array([1, 1, 1, 1]))
    write_raw(tmp_path / "slow.qtag", block)
    tagger = FileReplayTagger(tmp_path / "slow.qtag", pace="realtime")
    threading.Timer(0.1, tagger.close).start()
    start = time.monotonic()
    got = list(tagger.chunks())
    assert time.monotonic() - start < 2.0
    assert concat(got).size <= 1


def test_replayed_hal_sim_stream_gives_the_same_coincidences(tmp_path):
    link = Link(CWSource(pair_rate_hz=1e5), BellDiagonalState.werner(0.95),
                (simple_node("alice", (1, 2), length_km=1.0),
                 simple_node("bob", (3, 4), length_km=5.0)))
    sim = PhotonStreamSimulator(link, seed=11)
    per_node = {"alice": [], "bob": []}
    for chunk in sim.stream(duration_ps=100_000_000_000):
        for node in per_node:
            per_node[node].append(chunk.blocks[node])
    # one tagger recording both nodes' detectors (a shared clock): one time-ordered stream
    recorded = sort_block(np.concatenate([concat(per_node["alice"]), concat(per_node["bob"])]))
    delay = {ch: -sim.truth.delay_difference_ps("alice", 1, "bob", ch) for ch in (3, 4)}
    pairs = [(1, 3), (1, 4), (2, 3), (2, 4)]

    def counter():
        return native.Coincidences(pairs, 1_000, delays_ps=delay, accidental_offset_ps=50_000)

    direct = counter()
    for piece in split(recorded, sizes=(4096,)):
        direct.process(np.ascontiguousarray(piece))
    assert direct.totals.coincidences.sum() > 1000  # a real signal, not an empty comparison

    write_ptu(tmp_path / "sim.ptu", recorded, input_channels=4)
    write_raw(tmp_path / "sim.qtag", recorded, metadata={"seed": 11})
    for name in ("sim.ptu", "sim.qtag"):
        for chunk_records in (1_000, 100_000):
            replayed = counter()
            with FileReplayTagger(tmp_path / name, chunk_records=chunk_records) as tagger:
                for block in tagger.chunks():
                    replayed.process(block)
            np.testing.assert_array_equal(replayed.totals.coincidences, direct.totals.coincidences)
            np.testing.assert_array_equal(replayed.totals.accidentals,
                                          direct.totals.accidentals)
            np.testing.assert_array_equal(replayed.totals.singles, direct.totals.singles)
