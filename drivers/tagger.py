"""The common time-tagger interface: anything that yields :data:`~qnode.native.TagBlock` chunks.

Every time tagger in qnode — a live instrument (ID Quantique ID900/ID1000), a simulated one
(``hal_sim``) or a recorded file replayed (:class:`qnode.drivers.replay.FileReplayTagger`) — is a
:class:`TimeTagger`. The daemon's acquisition pipeline only ever sees this interface::

    with tagger:                                   # close() on exit, also on error
        for block in tagger.chunks():              # blocking; run it on an executor thread
            counter.process(block)                 # e.g. qnode.native.Coincidences

The contract of :meth:`TimeTagger.chunks` (implementers: please keep all of it):

* Each item is a 1-D, C-contiguous numpy array of :data:`qnode.native.TAG_DTYPE` (16-byte
  records: ``type`` u8, ``reserved`` u8, ``missed`` u16, ``channel`` i32, ``time`` i64).
* ``time`` is integer **picoseconds** on the tagger's own clock (zero at an arbitrary origin, e.g.
  the start of acquisition); it never goes backwards, neither within a chunk nor from one chunk
  to the next (equal times are allowed; equal times are ordered by channel where the source
  knows). Never floats.
* ``channel`` is the tagger's input number as labelled on the instrument (see each driver's
  docstring for its numbering); negative numbers are falling edges where the hardware has them.
* Records whose ``type`` is not :attr:`~qnode.native.TagType.TIME_TAG` are bookkeeping —
  ``OVERFLOW_BEGIN`` … ``OVERFLOW_END`` bracket dead time in which the tagger lost data,
  ``MISSED_EVENTS`` says how many events a channel lost (``missed``), ``ERROR`` flags a hardware
  error. They travel in the stream, in time order, so consumers can account for them; they are
  never counted as tags.
* Chunks may be empty (a live tagger with no light still returns periodically, so the caller can
  notice :meth:`close` or a stop request). A chunk is typically 1e4 … 1e6 records.
* The iterator ends when the source ends (end of file, acquisition stopped, :meth:`close`
  called). Errors are raised as the driver's typed exceptions (for files: :class:`TagFileError`),
  after every complete chunk before the fault has been yielded.
* ``chunks()`` is called from one thread. :meth:`close` may be called from another thread to
  stop an ongoing iteration; the iterator then ends promptly (within about one chunk or one
  timeout) instead of blocking forever.

Drivers are synchronous, each run on its own thread by the daemon
(docs/developers/adding-an-instrument.md): no asyncio here.
"""
from __future__ import annotations

import abc
import os
from collections.abc import Iterator
from types import TracebackType

import numpy as np

from qnode.native import TagBlock


class TagFileError(ValueError):
    """A time-tag file is malformed, truncated or of an unsupported kind.

    The message names the file, the byte ``offset`` where the problem was found (``None`` when it
    concerns the whole file) and what is wrong. Readers raise it only after yielding every complete
    chunk read before the fault, so no good data is lost.
    """

    def __init__(self, path: str | os.PathLike[str], message: str, offset: int | None = None):
        self.path = os.fspath(path)
        self.offset = offset
        where = "" if offset is None else f" at byte offset {offset}"
        super().__init__(f"{self.path}{where}: {message}")


class TimeTagger(abc.ABC):
    """A source of time-ordered :data:`TagBlock` chunks (see the module docstring for the contract).

    Subclasses set :attr:`name` and implement :attr:`channels` and :meth:`chunks`; override
    :meth:`close` when there is something to release (it must be idempotent and thread-safe:
    it may be called while :meth:`chunks` is running in another thread). Instances are context
    managers that close on exit.
    """

    #: A human-readable name for logs and errors, e.g. ``"id900@10.0.0.5"`` or a file name.
    name: str = "tagger"

    @property
    @abc.abstractmethod
    def channels(self) -> tuple[int, ...]:
        """Input channel numbers this tagger can report, ascending (``()`` when unknown, e.g. a
        file that does not record it)."""

    @abc.abstractmethod
    def chunks(self) -> Iterator[TagBlock]:
        """Yield TagBlock chunks in time order until the source ends or :meth:`close` is called.

        Blocking; call it on a worker thread. Whether a second call restarts the stream (file
        replay does) or raises (a live tagger may) is up to the implementation.
        """

    def close(self) -> None:  # noqa: B027 - deliberately a no-op default
        """Release the instrument or file and stop any ongoing :meth:`chunks` iteration."""

    def __enter__(self) -> TimeTagger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def first_out_of_order(block: TagBlock, last_time_ps: int | None) -> int | None:
    """Index of the first record of ``block`` whose time (ps) is earlier than its predecessor's
    — for index 0, earlier than ``last_time_ps``, the previous chunk's last time — or None when
    ``block`` continues the stream in order. For implementers checking the ordering contract."""
    if block.size == 0:
        return None
    if last_time_ps is not None and int(block["time"][0]) < last_time_ps:
        return 0
    back = np.flatnonzero(np.diff(block["time"]) < 0)
    return int(back[0]) + 1 if back.size else None
