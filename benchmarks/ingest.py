"""Node ingest rate: time tagger → acquisition pipeline → ChunkEvents, against the bare core.

Stream: 4 channels at --rate-mcps each (default 10 Mcps; true pairs on (1,2) and (3,4)), made
once and cut into chunks of --chunk records (default 2**20), served by an in-memory TimeTagger
as fast as asked. The pipeline (policy "block", 2-fold counts on four pairs with accidentals,
optionally --nfold on channels 1-4) feeds a consumer that only counts ChunkEvents. Figures are
medians over --repeats runs:

* pipeline: records / wall time from start to the final ChunkEvents, and drops (must be 0);
* core: the same Coincidences (and NFold) ``.process`` called directly in a loop;
* ratio pipeline / core (the cost of threads, queues and typed events).

    python benchmarks/ingest.py [--seconds 2] [--repeats 3] [--chunk 1048576] [--nfold]

Prints figures; asserts nothing. Goal (issue 5): >= 100 Mtags/s with zero drops.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Iterator

import numpy as np

from qnode import native
from qnode.daemon.acquisition.pipeline import AcquisitionPipeline
from qnode.drivers.tagger import TimeTagger

from streams import make_stream  # benchmarks/streams.py (scripts run from this folder)

PAIRS = [(1, 2), (3, 4), (1, 3), (2, 4)]
WINDOW_PS = 500
ACC_OFFSET_PS = 10_000
NFOLD_CHANNELS = (1, 2, 3, 4)


class MemoryTagger(TimeTagger):
    """Pre-made chunks (views of one stream), yielded as fast as the pipeline takes them."""

    name = "memory"

    def __init__(self, blocks: list[np.ndarray]):
        self.blocks = blocks
        self._closed = threading.Event()

    @property
    def channels(self) -> tuple[int, ...]:
        return (1, 2, 3, 4)

    def chunks(self) -> Iterator[np.ndarray]:
        for block in self.blocks:
            if self._closed.is_set():
                return
            yield block

    def close(self) -> None:
        self._closed.set()


def core_kwargs(nfold: bool) -> dict:
    kw: dict = dict(pairs=PAIRS, window_ps=WINDOW_PS, accidental_offset_ps=ACC_OFFSET_PS)
    if nfold:
        kw.update(nfold_channels=NFOLD_CHANNELS, nfold_window_ps=2 * WINDOW_PS)
    return kw


async def run_pipeline(blocks: list[np.ndarray], nfold: bool, queue_chunks: int) -> dict:
    pipeline = AcquisitionPipeline(MemoryTagger(blocks), queue_chunks=queue_chunks,
                                   policy="block", **core_kwargs(nfold))
    n_events = n_tags = coinc = 0
    t0 = time.perf_counter()
    async for ev in pipeline.events():
        n_events += 1
        n_tags += ev.n_tags
        coinc += ev.coincidences[PAIRS[0]]
    wall = time.perf_counter() - t0
    await pipeline.stop()
    s = pipeline.stats
    return dict(wall=wall, records=s.tags_in, n_tags=n_tags, drops=s.chunks_dropped,
                tags_dropped=s.tags_dropped, max_depth=s.max_queue_depth,
                core_s=s.processing_s, coinc=coinc, events=n_events)


def run_core(blocks: list[np.ndarray], nfold: bool) -> tuple[float, int]:
    counter = native.Coincidences(PAIRS, WINDOW_PS, accidental_offset_ps=ACC_OFFSET_PS)
    clusters = native.NFold(NFOLD_CHANNELS, 2 * WINDOW_PS) if nfold else None
    t0 = time.perf_counter()
    for block in blocks:
        counter.process(block)
        if clusters is not None:
            clusters.process(block)
    if clusters is not None:
        clusters.flush()
    return time.perf_counter() - t0, int(counter.totals.coincidences[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="stream length (tag time)")
    ap.add_argument("--rate-mcps", type=float, default=10.0, help="per channel, 4 channels")
    ap.add_argument("--pairs-mcps", type=float, default=1.0)
    ap.add_argument("--chunk", type=int, default=1 << 20, help="records per chunk")
    ap.add_argument("--queue-chunks", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nfold", action="store_true", help="also N-fold clusters on channels 1-4")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    t0 = time.perf_counter()
    stream = make_stream(args.seconds, args.rate_mcps, args.pairs_mcps, args.seed)
    blocks = [stream[i:i + args.chunk] for i in range(0, stream.size, args.chunk)]
    n = stream.size
    print(f"stream: {n / 1e6:.1f} M records, 4 ch x {args.rate_mcps:g} Mcps x "
          f"{args.seconds:g} s, {len(blocks)} chunks of {args.chunk} "
          f"(made in {time.perf_counter() - t0:.1f} s); pairs {PAIRS}, w = {WINDOW_PS} ps, "
          f"accidentals at {ACC_OFFSET_PS} ps{', N-fold on 1-4' if args.nfold else ''}")

    pipe_runs, core_runs = [], []
    for _ in range(args.repeats):
        core_runs.append(run_core(blocks, args.nfold))
        pipe_runs.append(asyncio.run(run_pipeline(blocks, args.nfold, args.queue_chunks)))

    core_wall = statistics.median(w for w, _ in core_runs)
    pipe_wall = statistics.median(r["wall"] for r in pipe_runs)
    drops = sum(r["drops"] for r in pipe_runs)
    ok = all(r["coinc"] == core_runs[0][1] and r["records"] == n for r in pipe_runs)
    core_rate = n / core_wall / 1e6
    pipe_rate = n / pipe_wall / 1e6
    in_core = statistics.median(r["core_s"] for r in pipe_runs)
    print(f"core (direct .process loop): {core_rate:8.1f} Mtags/s  (median {core_wall:.3f} s)")
    print(f"pipeline (block):            {pipe_rate:8.1f} Mtags/s  (median {pipe_wall:.3f} s; "
          f"core time inside {in_core:.3f} s = {n / in_core / 1e6:.1f} Mtags/s)")
    print(f"ratio pipeline / core:       {pipe_rate / core_rate:8.2f}")
    print(f"drops: {drops} chunks, {sum(r['tags_dropped'] for r in pipe_runs)} tags over "
          f"{args.repeats} runs; max queue depth {max(r['max_depth'] for r in pipe_runs)} / "
          f"{args.queue_chunks}; counts equal to the direct core: {ok}")
    print(f"goal >= 100 Mtags/s with zero drops: "
          f"{'met' if pipe_rate >= 100 and drops == 0 else 'NOT met'}")


if __name__ == "__main__":
    main()
