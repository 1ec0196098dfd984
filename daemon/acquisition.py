"""The acquisition pipeline: time tagger → native core → typed per-chunk events (DESIGN.md §3, §7).

::

    pipeline = AcquisitionPipeline(tagger, pairs=[(1, 3), (2, 4)], window_ps=500,
                                   accidental_offset_ps=20_000, policy="block")
    async for ev in pipeline.events():      # one ChunkEvents per tagger chunk
        ...                                 # e.g. batch the chunk's heralds into one message
    await pipeline.stop()                   # from the event loop; closes the tagger

Three stages, each bounded, so memory never grows with the input rate:

1. **reader** — a dedicated thread iterates ``tagger.chunks()`` (blocking driver I/O) into a
   bounded chunk queue of ``queue_chunks`` TagBlocks.
2. **processing** — a dedicated single-thread executor (never the event loop) takes one chunk at a
   time and runs the native core on it (:class:`~qnode.native.Coincidences` and, when configured,
   :class:`~qnode.native.NFold`; the C core releases the GIL), making a :class:`ChunkEvents`.
3. **events** — a bounded ``asyncio.Queue`` of ``event_queue_chunks`` ChunkEvents, drained by the
   single consumer of :meth:`AcquisitionPipeline.events`.

Backpressure runs backwards: a slow consumer fills the event queue, processing waits, the chunk
queue fills, and then the reader either **blocks** (``policy="block"``: it stops pulling from the
tagger, whose own buffer absorbs the delay; a file replay loses nothing) or **drops the oldest**
queued chunk (``policy="drop_oldest"``: the freshest data wins, and every dropped chunk and its
records are counted in :class:`AcquisitionStats`). Drops happen only there, so
``tags_in == tags_processed + tags_dropped + tags_queued`` always, and with
``tags_queued == 0`` once the pipeline has drained.

Dropping a chunk leaves a gap in the stream the core sees (times still never go backwards); a
coincidence straddling the gap is lost, nothing is counted twice. ``ChunkEvents.dropped_before``
says how many chunks were dropped just before a chunk, and its ``chunk_index`` (the tagger's chunk
number) skips them.

Counting: ``tags_in``/``tags_dropped``/``tags_processed`` count *records* as the tagger delivered
them (``block.size``: time tags plus the rare bookkeeping records), so they balance exactly;
``ChunkEvents.n_tags`` counts only the chunk's TIME_TAG records.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from qnode.drivers.tagger import TimeTagger
from qnode.native import CLUSTER_DTYPE, TagBlock

log = logging.getLogger(__name__)

Policy = Literal["block", "drop_oldest"]
_POLICIES = ("block", "drop_oldest")


@dataclasses.dataclass(frozen=True)
class ChunkEvents:
    """The typed events of one tagger chunk.

    ``chunk_index``: the tagger's chunk number (0, 1, …; skips dropped chunks).
    ``t_start_ps``/``t_end_ps``: time of the chunk's first/last record (tagger clock, ps; for an
    empty chunk both are the stream's last time so far). ``n_tags``: TIME_TAG records in it.
    ``singles``: {channel: tags}; ``coincidences``/``accidentals``: {(a, b): count} for each
    configured pair (``accidentals`` empty unless an accidental offset was configured).
    ``clusters``: N-fold clusters completed in this chunk, a :data:`~qnode.native.CLUSTER_DTYPE`
    array of (time, mask) — e.g. a herald station's BSM detector patterns (empty when N-fold is
    not configured). A cluster is reported in the chunk where it became complete, so it may start
    in the previous one. ``dead_time_ps``/``missed_events``: tagger dead time (overflow) and
    missed events reported in this chunk. ``dropped_before``: chunks dropped just before this one.
    ``processing_s``: time the core spent on it. ``block``: the chunk itself, when the pipeline
    was made with ``keep_blocks`` (for consumers that forward or re-count tags). ``final``: the
    end-of-stream record — emitted once after the source ended, with no tags and the N-fold
    clusters completed by the final flush.
    """

    chunk_index: int
    t_start_ps: int
    t_end_ps: int
    n_tags: int
    singles: dict[int, int]
    coincidences: dict[tuple[int, int], int]
    accidentals: dict[tuple[int, int], int]
    clusters: np.ndarray
    dead_time_ps: int
    missed_events: int
    dropped_before: int = 0
    processing_s: float = 0.0
    final: bool = False
    block: TagBlock | None = None


@dataclasses.dataclass(frozen=True)
class AcquisitionStats:
    """A snapshot of the pipeline's counters (records, not only time tags; see module docstring)."""

    chunks_in: int
    tags_in: int
    chunks_processed: int
    tags_processed: int
    chunks_dropped: int
    tags_dropped: int
    queue_depth: int
    max_queue_depth: int
    queue_limit: int
    events_queued: int
    processing_s: float
    max_chunk_processing_s: float
    reader_blocked_s: float

    @property
    def tags_queued(self) -> int:
        """Records read but neither processed nor dropped yet (queued or being processed)."""
        return self.tags_in - self.tags_processed - self.tags_dropped

    @property
    def processing_mtags_per_s(self) -> float:
        """Core throughput: records processed per second of processing time, in millions."""
        return self.tags_processed / self.processing_s / 1e6 if self.processing_s > 0 else 0.0


class IngestMeter:
    """The pipeline's share of a node's telemetry record: the ingest rate over the interval
    (records per wall-clock second, the rate the node keeps up with, not the core's speed),
    totals and drops."""

    def __init__(self) -> None:
        self._last_tags = 0

    def fill(self, record: Any, stats: AcquisitionStats, interval_s: float) -> None:
        record["ingest_mtags_s"] = (stats.tags_processed - self._last_tags) / interval_s / 1e6
        self._last_tags = stats.tags_processed
        record["tags_total"] = stats.tags_processed
        record["dropped_chunks_total"] = stats.chunks_dropped
        record["dropped_tags_total"] = stats.tags_dropped


class _End:
    """Sentinel: the stream ended (or the pipeline stopped)."""


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_STOPPED = object()  # returned by the worker when stop() was requested


class AcquisitionPipeline:
    """Tagger → native core → :class:`ChunkEvents`, bounded at every stage (see module docstring).

    ``pairs``, ``window_ps``, ``delays_ps``, ``accidental_offset_ps``: as
    :class:`qnode.native.Coincidences`. ``singles_channels``: extra channels to report singles
    for (pair and N-fold channels always are). ``nfold_channels``/``nfold_window_ps``/
    ``nfold_min_fold``: also run :class:`qnode.native.NFold` (same ``delays_ps``) and report its
    clusters. ``queue_chunks``: chunk queue limit; ``event_queue_chunks``: ChunkEvents queue
    limit. ``policy``: ``"block"`` or ``"drop_oldest"``. ``keep_blocks``: attach each chunk to its
    events (``ChunkEvents.block``).

    One consumer of :meth:`events`; create and use the pipeline on one event loop. It starts on
    the first :meth:`events` call (or :meth:`start`, or ``async with``) and runs one
    ``tagger.chunks()`` iteration.
    """

    def __init__(self, tagger: TimeTagger, *, pairs: Sequence[tuple[int, int]], window_ps: int,
                 delays_ps: Mapping[int, int] | None = None,
                 accidental_offset_ps: int | None = None,
                 nfold_channels: Iterable[int] | None = None,
                 nfold_window_ps: int | None = None, nfold_min_fold: int = 2,
                 singles_channels: Iterable[int] = (), queue_chunks: int = 8,
                 event_queue_chunks: int = 8, policy: Policy = "block",
                 keep_blocks: bool = False):
        from qnode.native import Coincidences, NFold  # the C core; NativeCoreMissing if unbuilt

        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {_POLICIES}, got {policy!r}")
        if int(queue_chunks) < 1:
            raise ValueError(f"queue_chunks must be >= 1, got {queue_chunks}")
        if int(event_queue_chunks) < 1:
            raise ValueError(f"event_queue_chunks must be >= 1, got {event_queue_chunks}")
        self.tagger = tagger
        self.policy: Policy = policy
        self.keep_blocks = bool(keep_blocks)
        self.queue_chunks = int(queue_chunks)
        self.event_queue_chunks = int(event_queue_chunks)
        self.pairs = [(int(a), int(b)) for a, b in pairs]
        nfold = None if nfold_channels is None else [int(c) for c in nfold_channels]
        if nfold is not None and nfold_window_ps is None:
            raise ValueError("nfold_window_ps is required with nfold_channels")
        channels = sorted({c for p in self.pairs for c in p} | set(nfold or ())
                          | {int(c) for c in singles_channels})
        self.channels = tuple(channels)
        self.coincidences = Coincidences(self.pairs, window_ps, delays_ps=delays_ps,
                                         accidental_offset_ps=accidental_offset_ps,
                                         channels=channels)
        self.nfold = (None if nfold is None else
                      NFold(nfold, int(nfold_window_ps), min_fold=nfold_min_fold,
                            delays_ps=None if delays_ps is None else
                            {c: d for c, d in delays_ps.items() if c in nfold}))

        # Chunk queue, shared by the reader thread and the processing worker.
        self._cond = threading.Condition()
        self._queue: collections.deque[list] = collections.deque()  # [index, block, dropped]
        self._reader_done = False
        self._reader_error: BaseException | None = None
        self._stopping = False
        self._dropped_pending = 0  # chunks dropped since the last one handed to processing
        # counters (written under _cond, or by the single worker thread for processing ones)
        self._chunks_in = self._tags_in = 0
        self._chunks_dropped = self._tags_dropped = 0
        self._chunks_processed = self._tags_processed = 0
        self._max_depth = 0
        self._processing_s = 0.0
        self._max_chunk_s = 0.0
        self._blocked_s = 0.0
        # worker-thread state
        self._last_time = 0
        self._last_stats = (0, 0, 0)  # (tags, dead_time_ps, missed_events) from the core
        self._next_index = 0

        self._reader: threading.Thread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._events: asyncio.Queue | None = None
        self._consumed = False
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start reading and processing (call from the event loop; idempotent)."""
        if self._task is not None:
            return
        if self._closed:
            raise RuntimeError("AcquisitionPipeline: already stopped")
        loop = asyncio.get_running_loop()
        self._events = asyncio.Queue(self.event_queue_chunks)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="qnode-acq-core")
        self._reader = threading.Thread(target=self._read, name="qnode-acq-reader", daemon=True)
        self._reader.start()
        self._task = loop.create_task(self._run(), name="qnode-acq-process")

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Close the tagger and end the pipeline: :meth:`events` ends promptly (ChunkEvents still
        queued are discarded; the core's ``totals`` keep their counts). Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        try:
            self.tagger.close()
        except Exception:  # noqa: BLE001 - a failing close must not prevent shutdown
            log.exception("acquisition: closing tagger %r failed", self.tagger)
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        # Wake the consumer: discard what is queued, then the end marker always fits.
        assert self._events is not None
        while not self._events.empty():
            self._events.get_nowait()
        self._events.put_nowait(_End())
        executor, reader = self._executor, self._reader
        assert executor is not None and reader is not None

        def _join() -> None:
            executor.shutdown(wait=True)
            reader.join(timeout_s)

        await asyncio.wait_for(asyncio.to_thread(_join), timeout_s + 1.0)
        if reader.is_alive():
            log.warning("acquisition: tagger %r did not end %.1f s after close()",
                        self.tagger, timeout_s)

    async def __aenter__(self) -> AcquisitionPipeline:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def events(self) -> AsyncIterator[ChunkEvents]:
        """Yield one :class:`ChunkEvents` per processed chunk, then the ``final`` record when the
        source ends; ends after :meth:`stop`. Re-raises a tagger or core error after the events
        before it. One consumer only."""
        if self._consumed:
            raise RuntimeError("AcquisitionPipeline.events(): only one consumer")
        self._consumed = True
        self.start()
        assert self._events is not None
        while True:
            item = await self._events.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    @property
    def stats(self) -> AcquisitionStats:
        with self._cond:
            return AcquisitionStats(
                chunks_in=self._chunks_in, tags_in=self._tags_in,
                chunks_processed=self._chunks_processed, tags_processed=self._tags_processed,
                chunks_dropped=self._chunks_dropped, tags_dropped=self._tags_dropped,
                queue_depth=len(self._queue), max_queue_depth=self._max_depth,
                queue_limit=self.queue_chunks,
                events_queued=0 if self._events is None else self._events.qsize(),
                processing_s=self._processing_s, max_chunk_processing_s=self._max_chunk_s,
                reader_blocked_s=self._blocked_s)

    # ---------------------------------------------------------------- reader thread

    def _read(self) -> None:
        cond, queue, limit = self._cond, self._queue, self.queue_chunks
        try:
            for block in self.tagger.chunks():
                with cond:
                    if self._stopping:
                        return
                    index = self._chunks_in
                    self._chunks_in += 1
                    self._tags_in += block.size
                    if len(queue) >= limit:
                        if self.policy == "block":
                            t0 = time.perf_counter()
                            while len(queue) >= limit and not self._stopping:
                                cond.wait()
                            self._blocked_s += time.perf_counter() - t0
                            if self._stopping:
                                return
                        else:
                            while len(queue) >= limit:
                                _, old, carry = queue.popleft()
                                self._chunks_dropped += 1
                                self._tags_dropped += old.size
                                # the next surviving chunk follows the gap
                                if queue:
                                    queue[0][2] += carry + 1
                                else:
                                    self._dropped_pending += carry + 1
                    queue.append([index, block, self._dropped_pending])
                    self._dropped_pending = 0
                    self._max_depth = max(self._max_depth, len(queue))
                    cond.notify_all()
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            with cond:
                self._reader_error = err
        finally:
            with cond:
                self._reader_done = True
                cond.notify_all()

    # ---------------------------------------------------------------- processing

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._events is not None
        try:
            while True:
                item = await loop.run_in_executor(self._executor, self._work)
                if item is _STOPPED:
                    return
                await self._events.put(item)
                if item.final:
                    await self._events.put(_End())
                    return
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            log.error("acquisition: %s: %s", type(err).__name__, err)
            await self._events.put(_Failure(err))
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False)

    def _work(self) -> object:
        """Worker thread: wait for a chunk and process it, or report the end of the stream."""
        cond, queue = self._cond, self._queue
        with cond:
            while not queue and not self._reader_done and not self._stopping:
                cond.wait()
            if self._stopping:
                return _STOPPED
            if not queue:  # the reader ended and everything is processed
                if self._reader_error is not None:
                    raise self._reader_error
                return self._final()
            index, block, dropped_before = queue.popleft()
            cond.notify_all()
        ev = self._process(index, block, dropped_before)
        with cond:
            self._chunks_processed += 1
            self._tags_processed += block.size
        return ev

    def _core_stats(self) -> tuple[int, int, int]:
        s = self.coincidences.stats
        return s.tags + s.other_tags, s.dead_time_ps, s.missed_events

    def _process(self, index: int, block: TagBlock, dropped_before: int) -> ChunkEvents:
        t0 = time.perf_counter()
        counts = self.coincidences.process(block)
        clusters = (np.zeros(0, CLUSTER_DTYPE) if self.nfold is None
                    else self.nfold.process(block).events)
        elapsed = time.perf_counter() - t0
        stats = self._core_stats()
        n_tags, dead, missed = (now - before
                                for now, before in zip(stats, self._last_stats, strict=True))
        self._last_stats = stats
        if block.size:
            t_start, t_end = int(block["time"][0]), int(block["time"][-1])
            self._last_time = t_end
        else:
            t_start = t_end = self._last_time
        self._next_index = index + 1
        with self._cond:
            self._processing_s += elapsed
            self._max_chunk_s = max(self._max_chunk_s, elapsed)
        return ChunkEvents(
            chunk_index=index, t_start_ps=t_start, t_end_ps=t_end, n_tags=n_tags,
            singles=dict(zip(self.channels, counts.singles.tolist(), strict=True)),
            coincidences=dict(zip(self.pairs, counts.coincidences.tolist(), strict=True)),
            accidentals=({} if counts.accidentals is None
                         else dict(zip(self.pairs, counts.accidentals.tolist(), strict=True))),
            clusters=clusters, dead_time_ps=dead, missed_events=missed,
            dropped_before=dropped_before, processing_s=elapsed,
            block=block if self.keep_blocks else None)

    def _final(self) -> ChunkEvents:
        clusters = (np.zeros(0, CLUSTER_DTYPE) if self.nfold is None
                    else self.nfold.flush().events)
        with self._cond:
            dropped, self._dropped_pending = self._dropped_pending, 0
        return ChunkEvents(
            chunk_index=max(self._next_index, self._chunks_in), t_start_ps=self._last_time,
            t_end_ps=self._last_time, n_tags=0, singles=dict.fromkeys(self.channels, 0),
            coincidences=dict.fromkeys(self.pairs, 0),
            accidentals=({} if self.coincidences.accidental_offset_ps is None
                         else dict.fromkeys(self.pairs, 0)),
            clusters=clusters, dead_time_ps=0, missed_events=0, dropped_before=dropped,
            final=True)
