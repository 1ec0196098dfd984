"""The acquisition pipeline: time tagger → native core → typed per-chunk events
(docs/developers/architecture.md, section The path of a time tag).

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

**Stalls and stream restarts** (``stall_s``, ``instrument``). A tagger with detectors attached
always delivers records: dark counts at least (tens to hundreds per second per SNSPD). A cut
stream delivers none, and a live tagger still returns (empty) chunks then (the ID900 driver
yields one every ``chunk_interval_s`` whatever arrives), so the test is *no record* for
``stall_s`` seconds of wall clock, whether empty chunks arrive or none at all; a watchdog on the
event loop checks it, so a tagger that blocks is caught too. Time the reader is held by
back-pressure (``policy="block"`` and a slow consumer) does not count. Then:

* with ``instrument`` (the tagger's :class:`~qnode.daemon.runtime.supervisor.ManagedInstrument`):
one
  WARNING line (``tagger``, ``instrument``, ``stalled_since`` UTC, ``silent_s``, ``attempt``,
  ``action``), :meth:`~qnode.daemon.runtime.supervisor.ManagedInstrument.stream_failed` (its
  ``errors_total`` +1, DEGRADED, reconnected through the supervisor's reconnect path with its
  back-off), then the stream is restarted (a new ``tagger.chunks()`` iteration, which for the
  ID900 sets up its inputs and DLT streams again) once the instrument is up on the new
  connection and a back-off (``restart_initial_s`` doubling to ``restart_max_s``) has passed.
  An :class:`~qnode.drivers.errors.InstrumentError` that ends the tagger's iteration (an SCPI
  timeout while starting the streams, a garbled stream frame) is handled the same way instead
  of ending the pipeline. The instrument stays DEGRADED until records flow again; then one INFO
  line says so and it returns to READY. If the stream stays silent, every restart is followed by
  another ``stall_s`` of silence and a longer back-off: one line per attempt, spaced ever wider.
  The reader can stop an iteration only when the tagger yields (the ID900 does every
  ``chunk_interval_s``); a tagger blocked inside ``chunks()`` is reported, and restarted when
  it next yields.
* without ``instrument``: the same WARNING line (nothing to reconnect; the stream is not
  restarted: a file replay would start again from its beginning), repeated after ``stall_s``
  plus the back-off while the silence lasts, and the INFO line when records flow again.

``stats.stalls`` counts the stall reports, ``stats.stream_restarts`` the restarts and
``stats.stalled`` says whether a stall or stream failure is outstanding. Records are counted
across restarts and chunk numbers keep increasing.
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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from qnode.daemon.runtime.supervisor import Backoff
from qnode.drivers.errors import InstrumentError
from qnode.drivers.tagger import TimeTagger
from qnode.native import CLUSTER_DTYPE, TagBlock

if TYPE_CHECKING:
    from qnode.daemon.bus.telemetry import Telemetry
    from qnode.daemon.runtime.supervisor import ManagedInstrument

log = logging.getLogger(__name__)

Policy = Literal["block", "drop_oldest"]
_POLICIES = ("block", "drop_oldest")


class StreamStalled(InstrumentError):
    """A time tagger delivered no record for longer than the pipeline's ``stall_s``."""


def _utc(t: float) -> str:
    """Unix time ``t`` (s) as an ISO-8601 UTC timestamp to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


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
    stalls: int = 0
    stream_restarts: int = 0
    stalled: bool = False

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

    def fill(self, record: Telemetry, stats: AcquisitionStats, interval_s: float) -> None:
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
_SOURCE_END = object()  # a reader iteration's outcome: the tagger's iterator ended
_RESTART = object()  # a reader iteration's outcome: it stopped for a stream restart


class AcquisitionPipeline:
    """Tagger → native core → :class:`ChunkEvents`, bounded at every stage (see module docstring).

    ``pairs``, ``window_ps``, ``delays_ps``, ``accidental_offset_ps``: as
    :class:`qnode.native.Coincidences` (``window_ps`` is the half-width w of |Δt| ≤ w, a full
    width of 2w + 1 ps on the integer-ps grid: :func:`~.estimators.full_window_ps`, what an
    accidental prediction must use). ``singles_channels``: extra channels to report singles
    for (pair and N-fold channels always are). ``nfold_channels``/``nfold_window_ps``/
    ``nfold_min_fold``: also run :class:`qnode.native.NFold` (same ``delays_ps``) and report its
    clusters. ``queue_chunks``: chunk queue limit; ``event_queue_chunks``: ChunkEvents queue
    limit. ``policy``: ``"block"`` or ``"drop_oldest"``. ``keep_blocks``: attach each chunk to its
    events (``ChunkEvents.block``). ``stall_s``: report the tagger stalled after this long (s)
    without a record (None or 0: never); ``instrument``: the tagger's managed instrument, to
    degrade, count and reconnect on a stall or a stream error, after which the stream is
    restarted with back-off ``restart_initial_s`` .. ``restart_max_s`` (s) (see the module
    docstring).

    One consumer of :meth:`events`; create and use the pipeline on one event loop. It starts on
    the first :meth:`events` call (or :meth:`start`, or ``async with``) and runs one
    ``tagger.chunks()`` iteration, and another after each restart.
    """

    def __init__(self, tagger: TimeTagger, *, pairs: Sequence[tuple[int, int]], window_ps: int,
                 delays_ps: Mapping[int, int] | None = None,
                 accidental_offset_ps: int | None = None,
                 nfold_channels: Iterable[int] | None = None,
                 nfold_window_ps: int | None = None, nfold_min_fold: int = 2,
                 singles_channels: Iterable[int] = (), queue_chunks: int = 8,
                 event_queue_chunks: int = 8, policy: Policy = "block",
                 keep_blocks: bool = False, stall_s: float | None = None,
                 instrument: ManagedInstrument | None = None, restart_initial_s: float = 0.5,
                 restart_max_s: float = 30.0):
        from qnode.native import Coincidences, NFold  # the C core; NativeCoreMissing if unbuilt

        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {_POLICIES}, got {policy!r}")
        if stall_s is not None and not stall_s >= 0:
            raise ValueError(f"stall_s must be >= 0 s (0: never), got {stall_s!r}")
        self.stall_s = float(stall_s) if stall_s else None
        self.instrument = instrument
        self._backoff = Backoff(restart_initial_s, restart_max_s)  # validates the bounds
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
        self.nfold = (None if nfold is None or nfold_window_ps is None else
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
        # stream health (under _cond: shared with the reader thread)
        self._streaming = False          # a reader iteration runs
        self._reader_blocked = False     # ... and waits for room in the chunk queue
        self._quiet_since = 0.0          # monotonic s: last record, or the iteration's start
        self._last_record_at: float | None = None  # Unix s of the last record
        self._restart_requested = False
        self._faulted = False            # a stall or stream failure is outstanding
        self._resume_pending = False     # the reader saw records again; the loop is told
        # stream health (loop only)
        self._fault_since: float | None = None   # Unix s: when the outstanding fault began
        self._fault_attempts = 0
        self._next_delay = 0.0
        self._restart_generation = -1
        self._stalls = 0
        self._stream_restarts = 0

        self._reader: threading.Thread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._stream_task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
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
        loop = self._loop = asyncio.get_running_loop()
        self._events = asyncio.Queue(self.event_queue_chunks)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="qnode-acq-core")
        first = self._launch_reader()
        self._task = loop.create_task(self._run(), name="qnode-acq-process")
        self._stream_task = loop.create_task(self._stream(first), name="qnode-acq-stream")
        if self.stall_s is not None:
            self._watch_task = loop.create_task(self._watch(), name="qnode-acq-stall-watch")

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
        tasks = [t for t in (self._task, self._stream_task, self._watch_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.instrument is not None and self._fault_since is not None:
            self.instrument.stream_ok()  # the stream's owner is gone: release the instrument
        # Wake the consumer: discard what is queued, then the end marker always fits.
        assert self._events is not None
        while not self._events.empty():
            self._events.get_nowait()
        self._events.put_nowait(_End())
        executor, reader = self._executor, self._reader
        assert executor is not None

        def _join() -> None:
            executor.shutdown(wait=True)
            if reader is not None:
                reader.join(timeout_s)

        async with asyncio.timeout(timeout_s + 1.0):
            await asyncio.to_thread(_join)
        if reader is not None and reader.is_alive():
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
                reader_blocked_s=self._blocked_s, stalls=self._stalls,
                stream_restarts=self._stream_restarts, stalled=self._faulted)

    # ---------------------------------------------------------------- reader thread

    def _launch_reader(self) -> asyncio.Future:
        """Start a reader thread on a new ``tagger.chunks()`` iteration; the future gets its
        outcome (:data:`_SOURCE_END`, :data:`_RESTART` or the error that ended it)."""
        assert self._loop is not None
        outcome: asyncio.Future = self._loop.create_future()
        with self._cond:
            self._streaming = True
            self._restart_requested = False
            self._quiet_since = time.monotonic()
        self._reader = threading.Thread(target=self._read, args=(outcome,),
                                        name="qnode-acq-reader", daemon=True)
        self._reader.start()
        return outcome

    def _to_loop(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the pipeline's loop (from a thread; dropped once it is closed)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _read(self, outcome: asyncio.Future) -> None:
        """Reader thread: one ``tagger.chunks()`` iteration into the chunk queue."""
        result: object = _SOURCE_END
        chunks: Any = None
        try:
            chunks = iter(self.tagger.chunks())
            result = self._read_chunks(chunks)
        except BaseException as err:  # noqa: BLE001 - handed to the stream task
            result = err
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:  # a generator: run its clean-up (e.g. stop the DLT streams)
                try:
                    close()
                except Exception as exc:  # noqa: BLE001 - the clean-up must not mask the cause
                    log.warning("acquisition: closing the stream of tagger %s failed: %s",
                                self.tagger.name, exc,
                                extra={"tagger": self.tagger.name, "error": str(exc)})

            def resolve() -> None:
                if not outcome.done():
                    outcome.set_result(result)

            self._to_loop(resolve)

    def _read_chunks(self, chunks: Iterable[TagBlock]) -> object:
        cond, queue, limit = self._cond, self._queue, self.queue_chunks
        for block in chunks:
            resumed = False
            with cond:
                if self._stopping:
                    return _SOURCE_END
                index = self._chunks_in
                self._chunks_in += 1
                self._tags_in += block.size
                if block.size:
                    self._quiet_since = time.monotonic()
                    self._last_record_at = time.time()
                    self._restart_requested = False  # it flows again: keep this stream
                    if self._faulted and not self._resume_pending:
                        self._resume_pending = resumed = True
                if len(queue) >= limit:
                    if self.policy == "block":
                        t0 = time.perf_counter()
                        self._reader_blocked = True  # back-pressure is not a stall
                        while len(queue) >= limit and not self._stopping:
                            cond.wait()
                        self._reader_blocked = False
                        self._quiet_since = max(self._quiet_since, time.monotonic())
                        self._blocked_s += time.perf_counter() - t0
                        if self._stopping:
                            return _SOURCE_END
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
                restart = self._restart_requested
            if resumed:
                self._to_loop(self._flowing)
            if restart:
                return _RESTART
        return _SOURCE_END

    # ---------------------------------------------------------------- stream health (loop)

    async def _stream(self, outcome: asyncio.Future) -> None:
        """Await each reader iteration; after a stall or an instrument error (with an
        instrument) restart the stream once the instrument is up again and the back-off has
        passed; otherwise end the stream (the worker then emits the final record or the
        error)."""
        try:
            while True:
                result = await outcome
                with self._cond:
                    self._streaming = False
                if self._stopping or result is _SOURCE_END:
                    return
                if isinstance(result, BaseException):
                    if self.instrument is None or not isinstance(result, InstrumentError):
                        with self._cond:
                            self._reader_error = result
                        return
                    self._stream_failed(result)
                assert self.instrument is not None
                try:
                    await self.instrument.wait_up(self._restart_generation)
                except InstrumentError as err:  # the instrument was closed
                    with self._cond:
                        self._reader_error = err
                    return
                await asyncio.sleep(self._next_delay)
                if self._stopping:
                    return
                self._stream_restarts += 1
                outcome = self._launch_reader()
        finally:
            with self._cond:
                self._reader_done = True
                self._streaming = False
                self._cond.notify_all()

    async def _watch(self) -> None:
        """Every ``min(1, stall_s / 4)`` s: report a stall once a running stream has delivered
        no record for ``stall_s`` (time the reader waits for a slow consumer does not count)."""
        assert self.stall_s is not None
        period = min(1.0, self.stall_s / 4)
        while True:
            await asyncio.sleep(period)
            with self._cond:
                quiet = time.monotonic() - self._quiet_since
                due = (self._streaming and not self._reader_blocked
                       and not self._restart_requested and quiet >= self.stall_s)
                last = self._last_record_at
            if due:
                self._stalled(quiet, last)

    def _names(self) -> tuple[str, str]:
        """(instrument name, or the tagger's if there is none; the tagger's name)."""
        tagger = self.tagger.name
        return (self.instrument.name if self.instrument is not None else tagger), tagger

    def _begin_fault(self, since: float) -> int:
        """Note one more failed attempt of the current fault (begun at Unix time ``since``);
        its number."""
        if self._fault_since is None:
            self._fault_since = since
        self._fault_attempts += 1
        with self._cond:
            self._faulted = True
            self._resume_pending = False
        self._next_delay = self._backoff.next()
        return self._fault_attempts

    def _stalled(self, quiet_s: float, last_record_at: float | None) -> None:
        name, tagger = self._names()
        error = StreamStalled(f"no tags for {quiet_s:.1f} s", instrument=name, address=tagger)
        assert self.stall_s is not None  # stalls are watched for only with a stall_s
        self._stalls += 1
        attempt = self._begin_fault(last_record_at if last_record_at is not None
                                    else time.time() - quiet_s)
        assert self._fault_since is not None
        if self.instrument is not None:
            self._restart_generation = self.instrument.stream_failed(error)
            with self._cond:
                self._restart_requested = True
            action = (f"degraded; reconnecting it, then restarting the stream after "
                      f"{self._next_delay:.1f} s")
        else:
            with self._cond:  # report again after stall_s plus the back-off
                self._quiet_since = time.monotonic() + self._next_delay
            action = (f"no instrument to reconnect; next report after "
                      f"{self.stall_s + self._next_delay:.0f} s more without tags")
        log.warning("instrument %s: tag stream stalled, no tags for %.1f s since %s (%s, "
                    "attempt %d); %s", name, quiet_s, _utc(self._fault_since), tagger, attempt,
                    action,
                    extra={"tagger": tagger, "instrument": name, "state": "degraded",
                           "stalled_since": _utc(self._fault_since),
                           "silent_s": round(quiet_s, 1), "attempt": attempt,
                           "action": "reconnect" if self.instrument is not None else "wait",
                           "error": str(error)})

    def _stream_failed(self, error: InstrumentError) -> None:
        assert self.instrument is not None
        name, tagger = self._names()
        attempt = self._begin_fault(time.time())
        assert self._fault_since is not None
        self._restart_generation = self.instrument.stream_failed(error)
        log.warning("instrument %s: tag stream failed (%s, attempt %d): %s; degraded; "
                    "reconnecting it, then restarting the stream after %.1f s", name, tagger,
                    attempt, error, self._next_delay,
                    extra={"tagger": tagger, "instrument": name, "state": "degraded",
                           "stalled_since": _utc(self._fault_since), "attempt": attempt,
                           "action": "reconnect", "error": str(error)})

    def _flowing(self) -> None:
        """On the loop, after the reader saw records during a fault: the fault is over."""
        with self._cond:
            self._resume_pending = False
            if not self._faulted:
                return
            self._faulted = False
        since, attempts = self._fault_since, self._fault_attempts
        self._fault_since, self._fault_attempts = None, 0
        self._backoff.reset()
        name, tagger = self._names()
        state = "flowing"
        if self.instrument is not None:
            self.instrument.stream_ok()
            state = self.instrument.state.value
        lasted = time.time() - since if since is not None else 0.0
        log.info("instrument %s: tag stream flowing again after %.1f s without tags (%s, %d "
                 "failed attempt(s)); %s", name, lasted, tagger, attempts, state,
                 extra={"tagger": tagger, "instrument": name, "state": state,
                        "stalled_since": None if since is None else _utc(since),
                        "stalled_s": round(lasted, 1), "attempts": attempts})

    # ---------------------------------------------------------------- processing

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._events is not None
        try:
            while True:
                item = await loop.run_in_executor(self._executor, self._work)
                if not isinstance(item, ChunkEvents):  # _STOPPED
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
