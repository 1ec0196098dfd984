"""The client for scripts: :class:`BlockingClient` runs a :class:`~qnode.client.node.NodeClient`
in an event loop of its own, on a background thread, and hands out plain iterators::

    with BlockingClient.from_connection("qnode-demo.json", "alice-app") as node:
        for pair in node.create_keep("bob", pairs=5, purpose=7, timeout_s=30):
            print(pair.pair_id, pair.fidelity)

Everything behaves as in the async client: the same :class:`~qnode.client.results.Pair`, the
same errors, and leaving an iterator early (``break``, an exception, Ctrl-C, ``close()``)
cancels its request (a listener: UNLISTEN). Use one BlockingClient from one thread at a time.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from qnode.client.connection import ConnectionInfo
from qnode.client.node import NodeClient, PairListener, PairStream
from qnode.client.results import Acceptance, DataMessage, Operation, Outcome, Pair

T = TypeVar("T")


class BlockingClient:
    """A :class:`~qnode.client.node.NodeClient` for code without an event loop; takes the
    same arguments. Use ``with BlockingClient(...) as node:``."""

    def __init__(self, broker_url: str, **options: Any):
        self._args = (broker_url,)
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: NodeClient | None = None

    @classmethod
    def from_connection(cls, connection: ConnectionInfo | str | os.PathLike[str],
                        application: str, node: str | None = None,
                        **options: Any) -> BlockingClient:
        """As :meth:`~qnode.client.node.NodeClient.from_connection`."""
        info = (connection if isinstance(connection, ConnectionInfo)
                else ConnectionInfo.load(connection))
        merged = {**info.client_options(application, node), **options}
        return cls(merged.pop("broker_url"), **merged)

    @property
    def client(self) -> NodeClient:
        """The async client underneath (its ``ignored`` counts, ``reply_topic``, ...)."""
        if self._client is None:
            raise RuntimeError("not connected: use `with BlockingClient(...) as node:`")
        return self._client

    # ------------------------------------------------------------------ the loop
    @property
    def running(self) -> bool:
        """The loop's thread runs (between :meth:`connect` and :meth:`close`)."""
        return self._loop is not None

    def in_loop_thread(self) -> bool:
        """Whether the caller is the loop's own thread (where nothing may block on it)."""
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` in the client's loop and wait for it (``timeout_s``, s; None: no
        limit); an exception here (Ctrl-C, the timeout) cancels it there. For anything the
        async client does that this wrapper does not."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("not connected: use `with BlockingClient(...) as node:`")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a BlockingClient cannot be used from its own loop's thread")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout_s)
        except concurrent.futures.CancelledError:
            raise
        except BaseException:
            fut.cancel()
            raise

    def connect(self) -> None:
        """Start the loop's thread and connect (as
        :meth:`~qnode.client.node.NodeClient.connect`)."""
        if self._loop is not None:
            raise RuntimeError("already connected")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="qnode-client-loop",
                                  daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread

        async def make() -> NodeClient:
            client = NodeClient(*self._args, **self._options)
            await client.connect()
            return client

        try:
            self._client = self.run(make())
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        """Cancel what is live, disconnect and stop the loop's thread."""
        try:
            if self._client is not None:
                self.run(self._client.close())
        finally:
            self._client = None
            self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)
        if not loop.is_running():
            loop.close()

    def __enter__(self) -> BlockingClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def create_keep(self, remote: str, pairs: int, **options: Any) -> BlockingPairs:
        """As :meth:`~qnode.client.node.NodeClient.create_keep`: a
        plain iterator of pairs."""
        return BlockingPairs(self, self.client.create_keep(remote, pairs, **options))

    def create_measure(self, remote: str, pairs: int, **options: Any) -> BlockingPairs:
        """As :meth:`~qnode.client.node.NodeClient.create_measure`."""
        return BlockingPairs(self, self.client.create_measure(remote, pairs, **options))

    def receive(self, purpose: int) -> BlockingPairs:
        """As :meth:`~qnode.client.node.NodeClient.receive`."""
        return BlockingPairs(self, self.client.receive(purpose))


    # ------------------------------------------------------------------ operations, DATA
    def operate(self, pair: Pair | tuple[str, int], ops: Sequence[Mapping[str, Any]], *,
                release: bool = False, timeout_s: float | None = None) -> Operation:
        """As :meth:`~qnode.client.node.NodeClient.operate`: the node's
        :class:`~qnode.client.results.Operation`, or its error raised."""
        return self.run(self.client.operate(pair, ops, release=release, timeout_s=timeout_s))

    def send_data(self, application: str, data: Mapping[str, Any]) -> None:
        """As :meth:`~qnode.client.node.NodeClient.send_data` (returns once the broker has
        it)."""
        self.run(self.client.send_data(application, data))

    def receive_data(self, timeout_s: float | None = None) -> DataMessage:
        """As :meth:`~qnode.client.node.NodeClient.receive_data`: the oldest DATA not read yet,
        waiting up to ``timeout_s`` (s; None: no limit);
        :class:`~qnode.client.results.NoData` after that."""
        return self.run(self.client.receive_data(timeout_s))


class BlockingPairs:
    """A request's or a listener's pairs as a plain iterator; :meth:`close` (or ``with``, or
    leaving a ``for`` loop early) cancels the request or stops listening."""

    def __init__(self, owner: BlockingClient, stream: PairStream | PairListener):
        self._owner, self._stream = owner, stream
        self._done = False

    @property
    def stream(self) -> PairStream | PairListener:
        """The async iterator underneath (``request_id``, ``received``, ``dropped``, ...)."""
        return self._stream

    @property
    def request_id(self) -> str | None:
        return self._stream.request_id if isinstance(self._stream, PairStream) else None

    @property
    def accepted(self) -> Acceptance | None:
        return self._stream.accepted if isinstance(self._stream, PairStream) else None

    @property
    def outcome(self) -> Outcome | None:
        return self._stream.outcome if isinstance(self._stream, PairStream) else None

    def start(self) -> Acceptance | None:
        """Send the request (LISTEN) and wait for the node's answer (see
        :meth:`~qnode.client.node.PairStream.start`)."""
        return self._owner.run(self._stream.start())

    def __iter__(self) -> BlockingPairs:
        return self

    def __next__(self) -> Pair:
        if self._done:
            raise StopIteration
        try:
            return self._owner.run(self._stream.__anext__())
        except StopAsyncIteration:
            self._done = True
            raise StopIteration from None
        except BaseException:
            self.close()
            raise

    def close(self) -> Outcome | None:
        """Cancel the request (listener: UNLISTEN) if it is live and wait for the node's
        confirmation; returns how a request ended (None for a listener)."""
        if self._done or not self._owner.running:
            self._done = True
            return self.outcome
        self._done = True
        if isinstance(self._stream, PairStream):
            return self._owner.run(self._stream.cancel())
        self._owner.run(self._stream.aclose())
        return None

    def __enter__(self) -> BlockingPairs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._done and not self._owner.in_loop_thread():
            with contextlib.suppress(Exception):
                self.close()
