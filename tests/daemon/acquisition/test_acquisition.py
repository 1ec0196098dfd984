"""The acquisition pipeline: tagger → native core → ChunkEvents, bounded, with counted drops."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from qnode.daemon.acquisition.pipeline import AcquisitionPipeline, ChunkEvents
from qnode.drivers.tagger import TimeTagger
from qnode.hal_sim import (
    Analyzer,
    BellDiagonalState,
    CWSource,
    Detector,
    Fibre,
    Link,
    Node,
    PhotonStreamSimulator,
    simple_node,
)
from qnode.hal_sim.twins.tagger import SimulatedTagger
from qnode.native import Coincidences, NFold, TagBlock, empty_block, merge_channels

from support.daemon_harness import until

PAIRS = [(1, 2), (1, 3), (2, 4), (3, 4)]
WINDOW_PS = 2_000


def _sim_tagger(*, pair_rate_hz: float = 5e5, duration_s: float | None = 0.2, seed: int = 3
                ) -> SimulatedTagger:
    """Node "alice" of a small link, with two analyzers: four detectors on channels 1-4."""
    def det(ch: int) -> Detector:
        return Detector(ch, 0.8, 1_000.0, 20_000, 30.0)
    alice = Node("alice", Fibre(1.0), (Analyzer("z", (0.0, 0.0, 1.0), det(1), det(2)),
                                       Analyzer("x", (1.0, 0.0, 0.0), det(3), det(4))))
    link = Link(CWSource(pair_rate_hz=pair_rate_hz), BellDiagonalState.werner(0.95),
                (alice, simple_node("bob", (5, 6), length_km=2.0)))
    sim = PhotonStreamSimulator(link, seed=seed)
    return SimulatedTagger(sim, "alice",
                           duration_ps=None if duration_s is None else int(duration_s * 1e12))


class Recording(TimeTagger):
    """Wraps a tagger and keeps (a copy of) every block it yielded, for direct comparisons."""

    def __init__(self, inner: TimeTagger):
        self.inner = inner
        self.name = f"recording:{inner.name}"
        self.blocks: list[TagBlock] = []

    @property
    def channels(self) -> tuple[int, ...]:
        return self.inner.channels

    def chunks(self) -> Iterator[TagBlock]:
        for block in self.inner.chunks():
            self.blocks.append(block.copy())
            yield block

    def close(self) -> None:
        self.inner.close()


class MemoryTagger(TimeTagger):
    """Pre-made chunks as fast as asked (``forever``: keep making fresh ones until closed)."""

    name = "memory"

    def __init__(self, n_chunks: int, tags_per_chunk: int = 1_000, *, forever: bool = False,
                 period_s: float = 0.0):
        self.n_chunks = n_chunks
        self.tags_per_chunk = tags_per_chunk
        self.forever = forever
        self.period_s = period_s
        self.closed = threading.Event()
        self.yielded = 0

    @property
    def channels(self) -> tuple[int, ...]:
        return (1, 2)

    def _block(self, k: int) -> TagBlock:
        n = self.tags_per_chunk // 2
        t0 = k * 10_000_000
        t1 = t0 + np.arange(n, dtype=np.int64) * 5_000
        return merge_channels({1: t1, 2: t1 + 100})

    def chunks(self) -> Iterator[TagBlock]:
        k = 0
        while (self.forever or k < self.n_chunks) and not self.closed.is_set():
            if self.period_s and self.closed.wait(self.period_s):
                return
            self.yielded += 1
            yield self._block(k)
            k += 1

    def close(self) -> None:
        self.closed.set()


async def _collect(pipeline: AcquisitionPipeline, delay_s: float = 0.0) -> list[ChunkEvents]:
    out = []
    async for ev in pipeline.events():
        out.append(ev)
        if delay_s:
            await asyncio.sleep(delay_s)
    return out


@pytest.mark.asyncio
async def test_sim_link_counts_equal_direct_core():
    tagger = Recording(_sim_tagger())
    pipeline = AcquisitionPipeline(tagger, pairs=PAIRS, window_ps=WINDOW_PS,
                                   accidental_offset_ps=50_000, queue_chunks=4)
    events = await asyncio.wait_for(_collect(pipeline), 20)
    await pipeline.stop()

    assert events[-1].final and not any(ev.final for ev in events[:-1])
    body = events[:-1]
    assert [ev.chunk_index for ev in body] == list(range(len(tagger.blocks)))
    assert all(ev.dropped_before == 0 for ev in body)

    direct = Coincidences(PAIRS, WINDOW_PS, accidental_offset_ps=50_000)
    for block in tagger.blocks:
        direct.process(block)
    for k, pair in enumerate(PAIRS):
        assert sum(ev.coincidences[pair] for ev in events) == direct.totals.coincidences[k]
        assert sum(ev.accidentals[pair] for ev in events) == direct.totals.accidentals[k]
    for k, ch in enumerate(direct.channels):
        assert sum(ev.singles[ch] for ev in events) == direct.totals.singles[k]
    assert direct.totals.coincidences.sum() > 0 and direct.totals.singles.min() > 10_000

    n_records = sum(b.size for b in tagger.blocks)
    assert sum(ev.n_tags for ev in events) == n_records  # the simulator makes only time tags
    for ev, block in zip(body, tagger.blocks, strict=True):
        assert ev.n_tags == block.size
        if block.size:
            assert (ev.t_start_ps, ev.t_end_ps) == (block["time"][0], block["time"][-1])
    stats = pipeline.stats
    assert stats.chunks_in == stats.chunks_processed == len(tagger.blocks)
    assert stats.tags_in == stats.tags_processed == n_records
    assert stats.chunks_dropped == stats.tags_dropped == 0
    assert stats.max_queue_depth <= 4
    assert stats.processing_s > 0 and stats.processing_mtags_per_s > 0


@pytest.mark.asyncio
async def test_drop_oldest_bounds_memory_and_counts_drops():
    tagger = MemoryTagger(300, 2_000)
    pipeline = AcquisitionPipeline(tagger, pairs=[(1, 2)], window_ps=200, queue_chunks=3,
                                   event_queue_chunks=1, policy="drop_oldest")
    depths = []

    async def slow() -> list[ChunkEvents]:
        out = []
        async for ev in pipeline.events():
            out.append(ev)
            depths.append(pipeline.stats.queue_depth)
            await asyncio.sleep(0.005)
        return out

    events = await asyncio.wait_for(slow(), 20)
    await pipeline.stop()
    stats = pipeline.stats
    assert max(depths) <= 3 and stats.max_queue_depth <= 3
    assert stats.chunks_in == 300 and stats.tags_in == 300 * 2_000
    assert stats.chunks_dropped > 0
    assert stats.tags_in == stats.tags_processed + stats.tags_dropped
    assert stats.chunks_in == stats.chunks_processed + stats.chunks_dropped
    body = [ev for ev in events if not ev.final]
    assert len(body) == stats.chunks_processed
    assert sum(ev.n_tags for ev in body) == stats.tags_processed
    assert sum(ev.dropped_before for ev in events) == stats.chunks_dropped
    # indices skip exactly the dropped chunks
    prev = -1
    for ev in events:
        assert ev.chunk_index == prev + 1 + ev.dropped_before
        prev = ev.chunk_index
    assert events[-1].final and events[-1].chunk_index == 300
    # each processed chunk has its 1000 (1, 2) pairs at dt = 100 ps, whatever was dropped
    assert all(ev.coincidences[(1, 2)] == 1_000 for ev in body)


@pytest.mark.asyncio
async def test_block_policy_holds_the_reader_and_loses_nothing():
    tagger = MemoryTagger(100, 2_000)
    pipeline = AcquisitionPipeline(tagger, pairs=[(1, 2)], window_ps=200, queue_chunks=4,
                                   event_queue_chunks=2, policy="block")
    events = []
    agen = pipeline.events()
    events.append(await agen.__anext__())
    await asyncio.sleep(0.3)  # the consumer stalls: the reader must stall too
    stalled = pipeline.stats
    # queued chunks + event queue + one in the worker + one in hand at the reader + consumed
    assert stalled.chunks_in <= 4 + 2 + 1 + 1 + 1 + 1
    assert stalled.queue_depth == 4 and stalled.chunks_dropped == 0
    assert tagger.yielded == stalled.chunks_in
    async for ev in agen:
        events.append(ev)
    await pipeline.stop()
    stats = pipeline.stats
    assert stats.reader_blocked_s > 0.2
    assert stats.chunks_dropped == stats.tags_dropped == 0
    assert stats.chunks_in == stats.chunks_processed == 100
    assert stats.tags_in == stats.tags_processed == 100 * 2_000
    assert [ev.chunk_index for ev in events] == list(range(101))
    assert sum(ev.coincidences[(1, 2)] for ev in events) == 100 * 1_000


@pytest.mark.asyncio
@pytest.mark.parametrize("source", ["memory", "sim"])
async def test_stop_from_another_task_ends_events_promptly(source):
    if source == "memory":
        tagger = MemoryTagger(0, 2_000, forever=True, period_s=0.01)
    else:
        tagger = _sim_tagger(duration_s=None)
    pipeline = AcquisitionPipeline(tagger, pairs=PAIRS if source == "sim" else [(1, 2)],
                                   window_ps=WINDOW_PS, queue_chunks=2, event_queue_chunks=2)
    got = asyncio.Event()
    seen = []

    async def consume() -> None:
        async for ev in pipeline.events():
            seen.append(ev)
            if len(seen) >= 3:
                got.set()

    consumer = asyncio.create_task(consume())
    await asyncio.wait_for(got.wait(), 10)
    t0 = time.monotonic()
    await asyncio.wait_for(pipeline.stop(), 2)
    await asyncio.wait_for(consumer, 1)
    assert time.monotonic() - t0 < 1.5
    assert not any(ev.final for ev in seen)
    if source == "memory":
        assert tagger.closed.is_set()
    else:
        assert tagger._closed.is_set()
    assert not pipeline._reader.is_alive()
    await pipeline.stop()  # idempotent


@pytest.mark.asyncio
async def test_stop_with_a_stalled_consumer():
    tagger = MemoryTagger(0, 2_000, forever=True)
    pipeline = AcquisitionPipeline(tagger, pairs=[(1, 2)], window_ps=200, queue_chunks=2,
                                   event_queue_chunks=1, policy="block")
    agen = pipeline.events()
    await agen.__anext__()
    await asyncio.sleep(0.1)  # everything full, the reader blocked
    await asyncio.wait_for(pipeline.stop(), 2)
    assert [ev async for ev in agen] == []
    assert tagger.closed.is_set()


@pytest.mark.asyncio
async def test_nfold_clusters_equal_direct_nfold():
    tagger = Recording(_sim_tagger(pair_rate_hz=1e6, duration_s=0.1, seed=11))
    channels = (1, 2, 3, 4)
    pipeline = AcquisitionPipeline(tagger, pairs=[(1, 3)], window_ps=WINDOW_PS,
                                   nfold_channels=channels, nfold_window_ps=5_000)
    events = await asyncio.wait_for(_collect(pipeline), 20)
    await pipeline.stop()
    got = np.concatenate([ev.clusters for ev in events])

    direct = NFold(channels, 5_000)
    parts = [direct.process(b).events for b in tagger.blocks] + [direct.flush().events]
    want = np.concatenate(parts)
    assert want.size > 100
    np.testing.assert_array_equal(got, want)
    assert np.all(np.diff(got["time"]) >= 0)
    # chunk by chunk, too (the final record carries the flush)
    for ev, part in zip(events, parts, strict=True):
        np.testing.assert_array_equal(ev.clusters, part)


@pytest.mark.asyncio
async def test_core_error_reaches_the_consumer():
    class Backwards(MemoryTagger):
        def _block(self, k: int) -> TagBlock:
            return super()._block(self.n_chunks - k)

    pipeline = AcquisitionPipeline(Backwards(5), pairs=[(1, 2)], window_ps=200)
    seen = []
    with pytest.raises(ValueError):
        async for ev in pipeline.events():
            seen.append(ev)
    assert len(seen) == 1
    await asyncio.wait_for(pipeline.stop(), 2)


class GatedTagger(MemoryTagger):
    """A live tagger in miniature: a chunk every 10 ms, empty while ``flowing`` is clear (a cut
    stream: the driver still returns, with nothing in it)."""

    def __init__(self) -> None:
        super().__init__(0, 1_000, forever=True, period_s=0.01)
        self.flowing = threading.Event()
        self.flowing.set()

    def _block(self, k: int) -> TagBlock:
        return super()._block(k) if self.flowing.is_set() else empty_block()


@pytest.mark.asyncio
async def test_a_stall_is_reported_and_so_is_its_end_without_an_instrument(caplog):
    caplog.set_level(logging.INFO, logger="qnode.daemon.acquisition.pipeline")
    tagger = GatedTagger()
    pipeline = AcquisitionPipeline(tagger, pairs=[(1, 2)], window_ps=200, stall_s=0.3,
                                   restart_initial_s=0.05, restart_max_s=0.1)
    consumer = asyncio.create_task(_collect(pipeline))
    try:
        await until(lambda: pipeline.stats.tags_processed > 0, "tags processed")
        assert not pipeline.stats.stalled
        tagger.flowing.clear()                   # empty chunks keep coming, no tags in them
        await until(lambda: pipeline.stats.stalled, "the stall reported")
        line = next(r for r in caplog.records if "tag stream stalled" in r.getMessage())
        assert line.levelno == logging.WARNING and line.action == "wait"
        assert line.tagger == "memory" and line.silent_s >= 0.3
        await until(lambda: pipeline.stats.stalls >= 2, "reported again while it lasts")
        tagger.flowing.set()
        await until(lambda: not pipeline.stats.stalled, "the stall over")
        back = [r for r in caplog.records if "flowing again" in r.getMessage()]
        assert len(back) == 1 and back[0].attempts >= 2
        assert pipeline.stats.stream_restarts == 0  # no instrument: never restarted
    finally:
        await pipeline.stop()
        await asyncio.wait_for(consumer, 5)


@pytest.mark.asyncio
async def test_back_pressure_from_a_slow_consumer_is_not_a_stall():
    tagger = MemoryTagger(0, 2_000, forever=True)
    pipeline = AcquisitionPipeline(tagger, pairs=[(1, 2)], window_ps=200, queue_chunks=2,
                                   event_queue_chunks=1, policy="block", stall_s=0.2)
    agen = pipeline.events()
    try:
        await agen.__anext__()
        await asyncio.sleep(1.0)  # the reader is held for 5 x stall_s by the full queues
        assert pipeline.stats.stalls == 0 and not pipeline.stats.stalled
        for _ in range(5):        # and it goes on once the consumer reads
            ev = await asyncio.wait_for(agen.__anext__(), 30)
            assert ev.n_tags > 0
    finally:
        await pipeline.stop()


def test_bad_arguments():
    with pytest.raises(ValueError, match="policy"):
        AcquisitionPipeline(MemoryTagger(1), pairs=[(1, 2)], window_ps=1, policy="lossy")
    with pytest.raises(ValueError, match="queue_chunks"):
        AcquisitionPipeline(MemoryTagger(1), pairs=[(1, 2)], window_ps=1, queue_chunks=0)
    with pytest.raises(ValueError, match="nfold_window_ps"):
        AcquisitionPipeline(MemoryTagger(1), pairs=[(1, 2)], window_ps=1, nfold_channels=(1, 2))
    with pytest.raises(ValueError, match="stall_s"):
        AcquisitionPipeline(MemoryTagger(1), pairs=[(1, 2)], window_ps=1, stall_s=-1.0)
    with pytest.raises(ValueError, match="initial"):
        AcquisitionPipeline(MemoryTagger(1), pairs=[(1, 2)], window_ps=1, restart_initial_s=0)
