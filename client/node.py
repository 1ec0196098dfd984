"""An application's connection to its node: :class:`NodeClient`, over aiomqtt.

::

    async with NodeClient("mqtt://localhost:1883", network="demo", application="alice-app",
                          node="alice") as node:
        async for pair in node.create_keep("bob", pairs=5, min_fidelity=0.9, timeout_s=3):
            print(pair.pair_id, pair.bell_state, pair.fidelity, pair.qubit, pair.hold_ms)

What it does, and no more (docs/integrators/applications.md is the protocol):

- one MQTT connection (clean session, QoS 1) and one subscription, to the node's replies to
  this application (``qnet/v1/<network>/<node>/app/<application>``), made before anything is
  sent; envelopes ``{"v": 1, "type", "sender", "id", "ts", "body"}`` on
  ``qnet/v1/<network>/<application>/req/<node>``, ``id`` counting up from 1;
- a request is sent when its iterator is first awaited (:meth:`PairStream.start` or the first
  ``__anext__``); its ``request_id`` is generated unless given. The iterator yields a
  :class:`~qnode.client.results.Pair` per ``PAIR``, ends on ``DONE`` and raises
  :class:`~qnode.client.results.RequestError` on ``ERROR`` (``RequestExpired`` on ``EXPIRED``,
  ``RequestCancelled`` on a ``CANCELLED`` it did not ask for);
- leaving an iterator before its end sends ``CANCEL`` (a listener: ``UNLISTEN``): at once with
  ``aclose()``/``cancel()``, ``async with``, or when the task awaiting it is cancelled; after a
  ``break``, when the iterator is garbage (at once in CPython, unless something else still
  refers to it);
- replies are checked with the protocol's own schemas
  (:func:`~qnode.daemon.apps.protocol.parse_reply`); anything malformed, duplicated or
  unexpected is ignored and counted in :attr:`NodeClient.ignored`, never raised into an
  iterator;
- every buffer is bounded: a consumer slower than its pairs loses the oldest ones (whose hold
  runs out first), counted in the iterator's ``dropped``;
- the node's silence is an error too (:class:`~qnode.client.results.NoReply`): nothing within
  ``reply_timeout_s`` (s) of a request or LISTEN, or no terminal reply by the request's
  ``timeout_s`` plus ``reply_timeout_s``;
- an OPERATE (:meth:`NodeClient.operate`) runs gates on this end's half of a delivered pair:
  it waits for its one reply, ``RESULT`` (an :class:`~qnode.client.results.Operation`) or
  ``ERROR`` (:class:`~qnode.client.results.RequestError`), for at most its ``timeout_s`` (s)
  (:class:`~qnode.client.results.NoReply`);
- applications talk to each other with ``DATA`` (:meth:`NodeClient.send_data`, published on
  ``qnet/v1/<network>/<application>/to/<receiver>``); a second subscription, to
  ``qnet/v1/<network>/+/to/<application>``, collects what others send this one, kept for
  :meth:`NodeClient.data` / :meth:`NodeClient.receive_data` in a bounded buffer
  (``max_buffered``; the oldest dropped, counted in :attr:`NodeClient.discarded`). A DATA
  whose envelope's sender is not the topic's (the broker lets only that application publish
  there), or that is malformed or too large, is ignored and counted;
- no reconnection: a lost connection ends every iterator with
  :class:`~qnode.client.results.ConnectionLost`.

One application should have one connection at a time: a node replies to the application, not to
a connection, so two connections of one application see each other's replies.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from qnode.client.connection import ConnectionInfo
from qnode.client.results import (
    Acceptance,
    ClientError,
    ConnectionLost,
    DataMessage,
    NoData,
    NoReply,
    Operation,
    Outcome,
    Pair,
    RequestCancelled,
    RequestError,
    RequestExpired,
)
from qnode.daemon.apps.protocol import (
    MAX_DATA_BYTES,
    NAME_PATTERN,
    Accepted,
    Cancelled,
    Data,
    Done,
    Error,
    Expired,
    Listening,
    Operate,
    Pair as PairMessage,  # the client's Pair is qnode.client.results.Pair
    Request,
    Result,
    parse_reply,
)

log = logging.getLogger("qnode.client")

#: replies longer than this are ignored (the node's longest reply is well under 1 KiB)
MAX_PAYLOAD_BYTES = 64 * 1024
#: how many pairs one iterator keeps for its consumer by default
DEFAULT_MAX_BUFFERED = 1000
#: digests of recent replies remembered to drop QoS-1 duplicates; ended request ids remembered
RECENT = 4096
#: the longest :meth:`NodeClient.close` waits for the node to confirm CANCELs and UNLISTENs (s)
CLOSE_WAIT_S = 5.0
#: DATA messages longer than this are ignored unread: room for ``data`` of MAX_DATA_BYTES
#: (compact UTF-8) written with every character escaped (``\uXXXX``, as ``json.dumps``
#: does by default), and the envelope
MAX_DATA_PAYLOAD_BYTES = 6 * MAX_DATA_BYTES + 1024
_NAME = re.compile(NAME_PATTERN)


def data_size(data: Mapping[str, Any]) -> int:
    """The size of ``data`` as compact UTF-8 JSON (bytes), the measure of
    :data:`~qnode.daemon.apps.protocol.MAX_DATA_BYTES`; ValueError if it is not JSON (a
    non-finite number, an object JSON cannot hold)."""
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"data is not JSON: {exc}") from exc
    return len(text.encode("utf-8", "surrogatepass"))


def _pair(m: PairMessage) -> Pair:
    return Pair(m.pool, m.pair_id, m.remote, m.purpose, m.bell_state, m.fidelity, m.kind,
                m.qubit, m.hold_ms, m.request_id, m.index, m.remote_application, m.basis,
                m.outcome)


class _Buffer:
    """Pairs waiting for a consumer (at most ``limit``: the oldest go first), and how the
    stream ended."""

    def __init__(self, limit: int):
        self.pairs: collections.deque[Pair] = collections.deque()
        self.limit = limit
        self.changed = asyncio.Event()
        self.error: ClientError | None = None
        self.received = 0
        self.dropped = 0
        self.abandoned = False          # nobody reads any more: pairs are discarded

    def push(self, pair: Pair) -> bool:
        """Keep ``pair`` for the consumer; False if nobody reads any more."""
        if self.abandoned:
            return False
        self.received += 1
        if len(self.pairs) >= self.limit:
            self.pairs.popleft()
            self.dropped += 1
        self.pairs.append(pair)
        self.changed.set()
        return True


class _Request(_Buffer):
    """A request made through this client, until its terminal reply."""

    def __init__(self, request: Request, limit: int):
        super().__init__(limit)
        self.request = request
        self.sent_at: float | None = None       # monotonic s
        self.accepted: Acceptance | None = None
        self.outcome: Outcome | None = None
        self.cancel_sent = False

    @property
    def ended(self) -> bool:
        return self.outcome is not None or self.error is not None


class _Listen(_Buffer):
    """A LISTEN made through this client, until its UNLISTEN is answered."""

    def __init__(self, purpose: int, limit: int):
        super().__init__(limit)
        self.purpose = purpose
        self.active = False
        self.stopping = False
        self.stopped = asyncio.Event()


class _Operation:
    """An OPERATE sent through this client, until its one reply (or its deadline)."""

    def __init__(self, message: Operate):
        self.message = message
        self.meas = sum(1 for op in message.ops if op.get("gate") == "meas")
        self.sends = sum(1 for op in message.ops if op.get("gate") == "send")
        self.changed = asyncio.Event()
        self.result: Operation | None = None
        self.error: ClientError | None = None

    @property
    def ended(self) -> bool:
        return self.result is not None or self.error is not None


class _Inbox:
    """DATA from other applications waiting for a reader (at most ``limit``: the oldest go
    first)."""

    def __init__(self, limit: int):
        self.messages: collections.deque[DataMessage] = collections.deque()
        self.limit = limit
        self.changed = asyncio.Event()
        self.received = 0
        self.dropped = 0
        self.error: ClientError | None = None      # the broker refused the subscription

    def push(self, message: DataMessage) -> None:
        self.received += 1
        if len(self.messages) >= self.limit:
            self.messages.popleft()
            self.dropped += 1
        self.messages.append(message)
        self.changed.set()


class Session:
    """The state one :class:`NodeClient` shares with its iterators: the MQTT connection, the
    live requests and listeners, and the routing of replies (internal: use the client)."""

    def __init__(self, *, network: str, application: str, node: str, reply_timeout_s: float,
                 max_buffered: int, url: str):
        base = f"qnet/v1/{network}"
        self.application, self.node, self.url = application, node, url
        self.base = base
        self.reply_topic = f"{base}/{node}/app/{application}"
        self.request_topic = f"{base}/{application}/req/{node}"
        self.data_topic = f"{base}/+/to/{application}"
        self.reply_timeout_s, self.max_buffered = reply_timeout_s, max_buffered
        self.mqtt: aiomqtt.Client | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lost: ClientError | None = None
        self.ignored: collections.Counter[str] = collections.Counter()
        self.replies = 0
        self.discarded = 0
        self.requests: dict[str, _Request] = {}
        self.listens: dict[int, _Listen] = {}
        self.operations: dict[str, _Operation] = {}
        self.inbox = _Inbox(max_buffered)
        self._handshake: _Listen | None = None      # the LISTEN/UNLISTEN awaiting its answer
        self._listen_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._recent: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._ended: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.background: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ sending
    def check_open(self) -> aiomqtt.Client:
        if self.lost is not None:
            raise self.lost
        if self.mqtt is None:
            raise RuntimeError("the client is not connected: use `async with NodeClient(...)`")
        return self.mqtt

    async def send(self, type_: str, body: dict[str, Any], topic: str | None = None) -> None:
        """Publish one envelope to the node (or to ``topic``) (QoS 1; returns once the broker
        has it)."""
        client = self.check_open()
        env = {"v": 1, "type": type_, "sender": self.application, "id": next(self._ids),
               "ts": time.time(), "body": body}
        try:
            await client.publish(topic or self.request_topic, json.dumps(env), qos=1)
        except aiomqtt.MqttError as exc:
            raise ConnectionLost(f"publishing {type_}: {exc}") from exc

    async def send_quietly(self, type_: str, body: dict[str, Any]) -> None:
        with contextlib.suppress(ClientError, RuntimeError):
            await self.send(type_, body)

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` in the client's loop, from any thread (a finaliser may run in
        another); nothing once the client is closed."""
        loop = self.loop
        if loop is None or loop.is_closed() or self.mqtt is None:
            return
        with contextlib.suppress(RuntimeError):       # the loop stopped meanwhile
            loop.call_soon_threadsafe(fn, *args)

    @staticmethod
    async def wait(buf: _Buffer | _Operation | _Inbox, deadline: float | None) -> bool:
        """Wait for news on ``buf`` until ``deadline`` (monotonic s; None: no limit); False if
        the deadline passed. (``asyncio.timeout``, not ``wait_for``: Python 3.11's
        ``wait_for`` loses a cancellation that comes as the event is set.)"""
        if deadline is None:
            await buf.changed.wait()
            return True
        if deadline <= time.monotonic():
            return False
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                await buf.changed.wait()
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ requests
    async def start_request(self, req: _Request) -> None:
        self.check_open()
        rid = req.request.request_id
        if rid in self.requests or rid in self.operations:
            raise ValueError(f"request id {rid!r} is in use by a live request of this client")
        self.requests[rid] = req
        req.sent_at = time.monotonic()
        body = {k: v for k, v in req.request.to_dict().items() if k != "type"}
        try:
            await self.send("REQUEST", body)
        except ClientError as exc:
            self.requests.pop(rid, None)
            req.error = exc
            raise

    def deadline(self, req: _Request) -> float:
        """When the node's silence about ``req`` becomes :class:`NoReply` (monotonic s)."""
        assert req.sent_at is not None
        if req.accepted is None:
            return req.sent_at + self.reply_timeout_s
        return req.sent_at + req.request.timeout_s + self.reply_timeout_s

    def no_reply(self, req: _Request) -> None:
        """The node stayed silent past the request's deadline: end it here, CANCEL there."""
        rid = req.request.request_id
        what = "an answer" if req.accepted is None else "a terminal reply"
        req.error = NoReply(f"{self.node} sent no {what} to request {rid!r} in time")
        req.changed.set()
        self._forget(rid)
        if not req.cancel_sent:
            req.cancel_sent = True
            self.spawn(self.send_quietly("CANCEL", {"request_id": rid}))

    def abandon_request(self, req: _Request) -> None:
        """Nobody reads ``req`` any more (break, cancelled task): CANCEL it if live. In the
        client's loop."""
        req.abandoned = True
        req.pairs.clear()
        if req.ended or req.cancel_sent or req.sent_at is None or self.mqtt is None:
            return
        req.cancel_sent = True
        self.spawn(self.send_quietly("CANCEL", {"request_id": req.request.request_id}))

    async def cancel(self, req: _Request) -> None:
        """Send CANCEL (once) and wait up to ``reply_timeout_s`` for the terminal reply."""
        req.abandoned = True
        req.pairs.clear()
        if req.sent_at is None or req.ended:
            return
        if not req.cancel_sent:
            req.cancel_sent = True
            try:
                await self.send("CANCEL", {"request_id": req.request.request_id})
            except ClientError as exc:
                req.error = exc
                return
        deadline = time.monotonic() + self.reply_timeout_s
        while not req.ended:
            req.changed.clear()
            if req.ended or not await self.wait(req, deadline):
                break

    # ------------------------------------------------------------------ operations
    async def operate(self, op: _Operation, timeout_s: float) -> Operation:
        """Send the OPERATE and wait up to ``timeout_s`` (s) for its RESULT (returned) or
        ERROR (raised as :class:`RequestError`); :class:`NoReply` after that."""
        self.check_open()
        rid = op.message.request_id
        if rid in self.requests or rid in self.operations:
            raise ValueError(f"request id {rid!r} is in use by a live request of this client")
        self.operations[rid] = op
        try:
            await self.send("OPERATE", {k: v for k, v in op.message.to_dict().items()
                                        if k != "type"})
            deadline = time.monotonic() + timeout_s
            while not op.ended:
                op.changed.clear()
                if op.ended:
                    break
                if not await self.wait(op, deadline):
                    op.error = NoReply(f"{self.node} sent no RESULT to OPERATE {rid!r} on "
                                       f"pair {op.message.pool}/{op.message.pair_id} within "
                                       f"{timeout_s:g} s")
        except ClientError as exc:
            if op.error is None:
                op.error = exc
        finally:
            # ended, timed out or cancelled: a late reply counts as after_end
            self._forget_operation(rid, op)
        if op.error is not None:
            raise op.error
        assert op.result is not None
        return op.result

    def _forget_operation(self, rid: str, op: _Operation) -> None:
        if self.operations.get(rid) is op:
            del self.operations[rid]
            self._ended[rid] = None
            if len(self._ended) > RECENT:
                self._ended.popitem(last=False)

    def _on_result(self, m: Result) -> None:
        op = self.operations.get(m.request_id)
        if op is None:
            return self._ignore("after_end" if m.request_id in self._ended
                                else "unknown_request", m.request_id)
        if op.ended:
            return self._ignore("after_end", m.request_id)
        if (m.pool, m.pair_id) != (op.message.pool, op.message.pair_id) or \
                len(m.outcomes) != op.meas or len(m.photons or ()) != op.sends:
            return self._ignore("mismatch", f"RESULT {m.request_id}: {m.pool}/{m.pair_id} "
                                            f"with {len(m.outcomes)} outcomes")
        op.result = Operation(m.request_id, m.pool, m.pair_id, tuple(m.outcomes), m.released,
                              m.hold_ms, m.fidelity, tuple(m.photons or ()))
        op.changed.set()

    def _on_operation_error(self, op: _Operation, m: Error) -> None:
        rid = op.message.request_id
        if op.ended:
            return self._ignore("after_end", rid)
        op.error = RequestError(m.code.value, m.reason, pairs=0, request_id=rid,
                                fidelity_estimate=m.fidelity_estimate)
        op.changed.set()

    # ------------------------------------------------------------------ DATA
    async def send_data(self, application: str, data: Mapping[str, Any]) -> None:
        """Publish ``data`` to ``application`` as DATA (QoS 1); ValueError before anything is
        sent if it is not a JSON object of at most MAX_DATA_BYTES bytes."""
        if not isinstance(application, str) or not _NAME.match(application):
            raise ValueError(f"application {application!r} may use only letters, digits, "
                             f"'-' and '_' (1-64)")
        if not isinstance(data, Mapping):
            raise ValueError(f"data: expected a JSON object (a dict), got "
                             f"{type(data).__name__}")
        size = data_size(data)
        if size > MAX_DATA_BYTES:
            raise ValueError(f"data: {size} bytes of JSON, more than the {MAX_DATA_BYTES} "
                             f"DATA may carry")
        body = json.loads(json.dumps(dict(data), allow_nan=False))   # a plain copy
        if not isinstance(body, dict):     # a Mapping json cannot hold as an object
            raise ValueError("data: expected a JSON object")
        Data.from_dict({"type": "DATA", "data": body})
        await self.send("DATA", {"data": body}, f"{self.base}/{self.application}/to/"
                                                 f"{application}")

    async def receive_data(self, deadline: float | None) -> DataMessage:
        """The oldest DATA not read yet, waiting until ``deadline`` (monotonic s; None: no
        limit) for one; :class:`NoData` after it. Messages read before the connection ended
        are still handed out; then its error."""
        box = self.inbox
        while True:
            box.changed.clear()
            if box.messages:
                return box.messages.popleft()
            if box.error is not None:
                raise box.error
            if self.lost is not None:
                raise self.lost
            if self.mqtt is None:
                raise RuntimeError("the client is not connected: use `async with "
                                   "NodeClient(...)`")
            if not await self.wait(box, deadline):
                raise NoData(f"no DATA for {self.application} came in time")

    def _data_sender(self, topic: str) -> str | None:
        """The sender segment of a DATA topic of this application's, else None."""
        head, tail = f"{self.base}/", f"/to/{self.application}"
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        sender = topic[len(head):len(topic) - len(tail)]
        return sender if _NAME.match(sender) else None

    def _on_data(self, sender: str, payload: bytes) -> None:
        """Keep one DATA from ``sender`` (the topic's sender segment) for the reader, or ignore
        and count it (``data_*`` reasons)."""
        if len(payload) > MAX_DATA_PAYLOAD_BYTES:
            return self._ignore("data_oversized", sender)
        if self._seen(payload):
            return self._ignore("data_duplicate", sender)
        try:
            env = json.loads(payload)
        except (ValueError, RecursionError):
            return self._ignore("data_not_json", sender)
        if not isinstance(env, dict) or env.get("v") != 1 or env.get("type") != "DATA" or \
                not isinstance(env.get("body"), dict):
            return self._ignore("data_bad_envelope", sender)
        if env.get("sender") != sender:
            return self._ignore("data_wrong_sender", f"{str(env.get('sender'))[:64]} on "
                                                     f"{sender}'s topic")
        try:
            msg = Data.from_dict({**env["body"], "type": "DATA"})
            size = data_size(msg.data)
        except (ValueError, RecursionError) as exc:
            return self._ignore("data_bad", str(exc))
        if size > MAX_DATA_BYTES:
            return self._ignore("data_oversized", sender)
        self.inbox.push(DataMessage(sender, msg.data))

    # ------------------------------------------------------------------ listeners
    async def listen(self, lst: _Listen) -> None:
        """LISTEN and wait for LISTENING (or the refusal); one handshake at a time, so that an
        ERROR without a request id is this LISTEN's."""
        self.check_open()
        old = self.listens.get(lst.purpose)
        if old is not None and old is not lst:
            if not old.stopping:
                raise RuntimeError(f"this client already listens on purpose {lst.purpose}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.reply_timeout_s):
                    await old.stopped.wait()
        async with self._listen_lock:
            self.listens[lst.purpose] = lst
            self._handshake = lst
            try:
                await self.send("LISTEN", {"purpose": lst.purpose})
                deadline = time.monotonic() + self.reply_timeout_s
                while not lst.active and lst.error is None:
                    lst.changed.clear()
                    if lst.active or lst.error is not None:
                        break
                    if not await self.wait(lst, deadline):
                        lst.error = NoReply(f"{self.node} did not answer LISTEN on purpose "
                                            f"{lst.purpose}")
            except asyncio.CancelledError:
                # the LISTEN may have reached the node: take it back
                self._drop_listen(lst)
                self.spawn(self.send_quietly("UNLISTEN", {"purpose": lst.purpose}))
                raise
            except ClientError as exc:
                lst.error = exc
            finally:
                self._handshake = None
            if lst.error is not None:
                self._drop_listen(lst)
                raise lst.error

    def _drop_listen(self, lst: _Listen) -> None:
        lst.abandoned, lst.stopping, lst.active = True, True, False
        lst.pairs.clear()
        if self.listens.get(lst.purpose) is lst:
            del self.listens[lst.purpose]
        lst.stopped.set()

    async def unlisten(self, lst: _Listen) -> None:
        """UNLISTEN and wait (up to ``reply_timeout_s``) for its LISTENING ``active`` false."""
        if lst.stopping:
            await lst.stopped.wait()
            return
        lst.stopping = True
        lst.abandoned = True
        lst.pairs.clear()
        try:
            if lst.active and self.lost is None and self.mqtt is not None:
                async with self._listen_lock:
                    self._handshake = lst
                    try:
                        await self.send("UNLISTEN", {"purpose": lst.purpose})
                        deadline = time.monotonic() + self.reply_timeout_s
                        while lst.active and lst.error is None:
                            lst.changed.clear()
                            if not lst.active or not await self.wait(lst, deadline):
                                break
                    except ClientError:
                        pass
                    finally:
                        self._handshake = None
        finally:
            self._drop_listen(lst)

    def abandon_listen(self, lst: _Listen) -> None:
        """Nobody reads ``lst`` any more: UNLISTEN. In the client's loop."""
        lst.abandoned = True
        lst.pairs.clear()
        if lst.stopping or not lst.active or self.mqtt is None:
            return
        self.spawn(self.unlisten(lst))

    # ------------------------------------------------------------------ replies
    async def read(self, client: aiomqtt.Client) -> None:
        """Route every message of the subscription until the connection ends."""
        try:
            async for m in client.messages:
                payload = m.payload
                if not isinstance(payload, bytes | bytearray):
                    self._ignore("not_bytes")
                    continue
                self.dispatch(str(m.topic), bytes(payload))
        except aiomqtt.MqttError as exc:
            self.fail_all(ConnectionLost(f"the connection to {self.url} ended: {exc}"))
            return
        self.fail_all(ConnectionLost(f"the connection to {self.url} ended"))

    def fail_all(self, error: ClientError) -> None:
        """End every live iterator with ``error``; the session is unusable from now on."""
        if self.lost is None:
            self.lost = error
        for req in list(self.requests.values()):
            if not req.ended:
                req.error = error
                req.changed.set()
        self.requests.clear()
        for op in list(self.operations.values()):
            if not op.ended:
                op.error = error
                op.changed.set()
        self.inbox.changed.set()        # a reader waiting for DATA learns of ``lost``
        for lst in list(self.listens.values()):
            if lst.error is None:
                lst.error = error
            lst.active = False
            lst.changed.set()
            lst.stopped.set()
        self.listens.clear()

    def _ignore(self, reason: str, detail: str = "") -> None:
        self.ignored[reason] += 1
        log.debug("ignored a message (%s) %s", reason, detail[:200])

    def _seen(self, payload: bytes) -> bool:
        """Whether ``payload`` came lately (a QoS-1 duplicate); remembers it."""
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        if digest in self._recent:
            return True
        self._recent[digest] = None
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        return False

    def dispatch(self, topic: str, payload: bytes) -> None:
        """Route one reply to its iterator or operation, one DATA to the inbox; ignore (and
        count) anything else."""
        if topic != self.reply_topic:
            sender = self._data_sender(topic)
            if sender is None:
                return self._ignore("wrong_topic", topic)
            return self._on_data(sender, payload)
        if len(payload) > MAX_PAYLOAD_BYTES:
            return self._ignore("oversized")
        if self._seen(payload):
            return self._ignore("duplicate")
        try:
            env = json.loads(payload)
        except (ValueError, RecursionError):
            return self._ignore("not_json")
        if not isinstance(env, dict) or env.get("v") != 1 or \
                not isinstance(env.get("type"), str) or not isinstance(env.get("body"), dict):
            return self._ignore("bad_envelope")
        if env.get("sender") != self.node:
            return self._ignore("wrong_sender", str(env.get("sender"))[:64])
        try:
            msg = parse_reply({**env["body"], "type": env["type"]})
        except ValueError as exc:
            return self._ignore("bad_reply", str(exc))
        self.replies += 1
        if isinstance(msg, PairMessage):
            self._on_pair(msg)
        elif isinstance(msg, Listening):
            self._on_listening(msg)
        elif isinstance(msg, Result):
            self._on_result(msg)
        elif isinstance(msg, Error) and msg.request_id in self.operations:
            self._on_operation_error(self.operations[msg.request_id], msg)
        elif isinstance(msg, Error) and msg.request_id is None:
            lst = self._handshake
            if lst is None:
                return self._ignore("unexpected", f"ERROR {msg.code}: {msg.reason}")
            lst.error = RequestError(msg.code.value, msg.reason)
            lst.changed.set()
        elif isinstance(msg, Accepted | Done | Error | Expired | Cancelled):
            self._on_request_reply(msg)
        else:
            self._ignore("unexpected", type(msg).__name__)

    def _on_pair(self, m: PairMessage) -> None:
        if m.request_id is not None:
            req = self.requests.get(m.request_id)
            if req is None:
                return self._ignore("after_end" if m.request_id in self._ended
                                    else "unknown_request", m.request_id)
            if not req.push(_pair(m)):
                self.discarded += 1
            return
        lst = self.listens.get(m.purpose)
        if lst is None or not lst.active:
            return self._ignore("not_listening", str(m.purpose))
        if not lst.push(_pair(m)):
            self.discarded += 1

    def _on_listening(self, m: Listening) -> None:
        lst = self.listens.get(m.purpose)
        if lst is None:
            return self._ignore("unexpected", f"LISTENING {m.purpose}")
        lst.active = m.active
        lst.changed.set()

    def _forget(self, rid: str) -> None:
        self.requests.pop(rid, None)
        self._ended[rid] = None
        if len(self._ended) > RECENT:
            self._ended.popitem(last=False)

    def _on_request_reply(self, m: Accepted | Done | Error | Expired | Cancelled) -> None:
        rid = m.request_id
        assert rid is not None
        req = self.requests.get(rid)
        if req is None:
            return self._ignore("after_end" if rid in self._ended else "unknown_request", rid)
        if isinstance(m, Accepted):
            req.accepted = Acceptance(rid, m.queued, m.fidelity_estimate)
            req.changed.set()
            return
        if isinstance(m, Done):
            req.outcome = Outcome(rid, "done", m.pairs)
        elif isinstance(m, Expired):
            req.outcome = Outcome(rid, "expired", m.pairs)
            req.error = RequestExpired("expired", f"the request's timeout_s "
                                                  f"({req.request.timeout_s:g} s) passed "
                                                  f"after {m.pairs} of {req.request.pairs} "
                                                  f"pairs", pairs=m.pairs, request_id=rid)
        elif isinstance(m, Cancelled):
            req.outcome = Outcome(rid, "cancelled", m.pairs)
            if not req.cancel_sent:
                req.error = RequestCancelled("cancelled", f"the request was cancelled after "
                                                          f"{m.pairs} pairs (not by this "
                                                          f"client)", pairs=m.pairs,
                                             request_id=rid)
        else:
            req.outcome = Outcome(rid, "error", m.pairs, m.code.value, m.reason,
                                  m.fidelity_estimate)
            req.error = RequestError(m.code.value, m.reason, pairs=m.pairs, request_id=rid,
                                     fidelity_estimate=m.fidelity_estimate)
        req.changed.set()
        self._forget(rid)


class NodeClient:
    """An application's connection to its node ``node`` of ``network`` through the broker at
    ``broker_url`` (``mqtt://host[:port]``, or ``mqtts://`` with ``ca_file`` and, for a
    certificate login, ``client_cert``/``client_key``; or a ready ``tls_context``).
    ``username``/``password``: a password login. ``client_id``: the MQTT client id (default:
    the application's name and a random suffix). ``keepalive_s`` (s): MQTT keep-alive.
    ``reply_timeout_s`` (s): how long the node may stay silent (see the module docstring).
    ``max_buffered``: pairs one iterator keeps for a slow consumer.

    Use it as ``async with NodeClient(...) as node:`` (or :meth:`connect` and :meth:`close`);
    :meth:`from_connection` takes a connection file. A client connects once."""

    def __init__(self, broker_url: str, *, network: str, application: str, node: str,
                 username: str | None = None, password: str | None = None,
                 tls_context: ssl.SSLContext | None = None, ca_file: str | None = None,
                 client_cert: str | None = None, client_key: str | None = None,
                 client_id: str | None = None, keepalive_s: int = 30,
                 reply_timeout_s: float = 10.0, max_buffered: int = DEFAULT_MAX_BUFFERED):
        for what, name in (("network", network), ("application", application),
                           ("node", node)):
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(f"{what} {name!r} may use only letters, digits, '-' and '_' "
                                 f"(1-64)")
        url = urlsplit(broker_url)
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            raise ValueError(f"broker {broker_url!r}: expected mqtt://host[:port] or "
                             f"mqtts://host[:port]")
        self.tls = url.scheme == "mqtts"
        if not self.tls and (ca_file or client_cert or tls_context):
            raise ValueError(f"TLS options given for {broker_url!r}: use mqtts://")
        if client_key and not client_cert:
            raise ValueError("client_key is given without client_cert")
        if reply_timeout_s <= 0 or max_buffered < 1:
            raise ValueError("reply_timeout_s must be > 0 and max_buffered >= 1")
        self.broker_url = broker_url
        self.host = url.hostname
        self.port = url.port or (8883 if self.tls else 1883)
        self.network, self.application, self.node = network, application, node
        self.username, self.password = username, password
        self._tls_context = tls_context
        self.ca_file, self.client_cert, self.client_key = ca_file, client_cert, client_key
        self.client_id = client_id or f"{application}-{secrets.token_hex(4)}"
        self.keepalive_s = keepalive_s
        self.reply_timeout_s = reply_timeout_s
        self.max_buffered = max_buffered
        self._session = Session(network=network, application=application, node=node,
                                reply_timeout_s=reply_timeout_s, max_buffered=max_buffered,
                                url=broker_url)
        #: where the node replies to this application; where its requests go
        self.reply_topic = self._session.reply_topic
        self.request_topic = self._session.request_topic
        #: where other applications' DATA to this one comes from (a topic filter)
        self.data_topic = self._session.data_topic
        self._reader: asyncio.Task[None] | None = None
        self._rid_prefix = secrets.token_hex(3)
        self._rids = itertools.count(1)
        self._closed = False

    @classmethod
    def from_connection(cls, connection: ConnectionInfo | str | os.PathLike[str],
                        application: str, node: str | None = None,
                        **options: Any) -> NodeClient:
        """A client for ``application`` of a connection file (a path or a loaded
        :class:`~qnode.client.connection.ConnectionInfo`), talking to its node unless
        ``node`` is given; ``options`` go to the constructor."""
        info = (connection if isinstance(connection, ConnectionInfo)
                else ConnectionInfo.load(connection))
        return cls(**{**info.client_options(application, node), **options})

    # ------------------------------------------------------------------ what it counts
    @property
    def ignored(self) -> collections.Counter[str]:
        """Messages ignored, by reason. Replies: ``not_json``, ``bad_envelope``,
        ``bad_reply`` (fails the protocol's schema), ``duplicate`` (QoS 1 sent it twice),
        ``wrong_sender``, ``oversized``, ``unknown_request``, ``after_end`` (a reply to a
        request or an OPERATE that had ended, e.g. the refusal of a CANCEL that crossed its
        DONE, or a RESULT after its ``timeout_s``), ``mismatch`` (a RESULT naming another pair
        than its OPERATE's, or with another number of outcomes than its ``meas`` gates),
        ``not_listening``, ``unexpected``. DATA: ``data_not_json``, ``data_bad_envelope``,
        ``data_wrong_sender`` (the envelope's sender is not the topic's), ``data_bad`` (fails
        the DATA schema), ``data_oversized`` (``data`` over
        :data:`~qnode.daemon.apps.protocol.MAX_DATA_BYTES`), ``data_duplicate``."""
        return self._session.ignored

    @property
    def replies(self) -> int:
        """Replies read and routed."""
        return self._session.replies

    @property
    def discarded(self) -> int:
        """Pairs that came after their iterator was left (before the node had the CANCEL or
        UNLISTEN), and DATA messages dropped unread because ``max_buffered`` newer ones
        waited."""
        return self._session.discarded + self._session.inbox.dropped

    @property
    def data_received(self) -> int:
        """DATA messages from other applications accepted into the buffer (read or not)."""
        return self._session.inbox.received

    @property
    def data_waiting(self) -> int:
        """DATA messages in the buffer, not read yet."""
        return len(self._session.inbox.messages)

    @property
    def connected(self) -> bool:
        return self._session.mqtt is not None and self._session.lost is None

    # ------------------------------------------------------------------ connection
    async def __aenter__(self) -> NodeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _tls(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        if self._tls_context is not None:
            return self._tls_context
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.client_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx

    async def connect(self) -> None:
        """Connect and subscribe to the replies and to the DATA of other applications
        (:attr:`data_topic`); :class:`ConnectionLost` if the broker cannot be reached,
        :class:`ClientError` ``not_authorised`` if it refuses the replies' subscription. A
        refused DATA subscription (a broker whose ACL predates DATA) does not fail the
        connection: :meth:`receive_data` raises that ``not_authorised`` instead."""
        if self._session.mqtt is not None or self._closed:
            raise RuntimeError("a NodeClient connects once")
        client = aiomqtt.Client(self.host, self.port, username=self.username,
                                password=self.password, identifier=self.client_id,
                                tls_context=self._tls(), keepalive=self.keepalive_s,
                                clean_session=True, timeout=self.reply_timeout_s,
                                max_queued_incoming_messages=10 * self.max_buffered)
        try:
            await client.__aenter__()
        except (aiomqtt.MqttError, OSError) as exc:
            raise ConnectionLost(f"cannot connect to {self.broker_url}: {exc}") from exc
        try:
            granted = await client.subscribe([(self.reply_topic, 1), (self.data_topic, 1)])
        except aiomqtt.MqttError as exc:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            raise ConnectionLost(f"subscribing to {self.reply_topic}: {exc}") from exc
        codes = [c if isinstance(c, int) else int(c.value) for c in granted]
        if not codes or codes[0] >= 0x80:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            raise ClientError("not_authorised", f"the broker refused {self.application}'s "
                                                f"subscription to {self.reply_topic}")
        if len(codes) < 2 or codes[1] >= 0x80:
            self._session.inbox.error = ClientError(
                "not_authorised", f"the broker refused {self.application}'s subscription to "
                                  f"{self.data_topic}: it receives no DATA")
            log.warning("%s", self._session.inbox.error.reason)
        self._session.loop = asyncio.get_running_loop()
        self._session.mqtt = client
        self._reader = asyncio.create_task(self._session.read(client),
                                           name="qnode-client-reader")

    async def close(self) -> None:
        """Cancel the live requests and listeners (waiting up to ``reply_timeout_s``, at most
        :data:`CLOSE_WAIT_S`, for the node to confirm) and disconnect."""
        s = self._session
        client = s.mqtt
        self._closed = True
        if client is None:
            return
        if s.lost is None:
            for req in list(s.requests.values()):
                s.abandon_request(req)
            for lst in list(s.listens.values()):
                s.abandon_listen(lst)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.reply_timeout_s, CLOSE_WAIT_S)):
                    while s.background or any(not r.ended for r in s.requests.values()):
                        await asyncio.sleep(0.02)
        for task in list(s.background):
            task.cancel()
        s.fail_all(ConnectionLost("the client was closed"))
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        s.mqtt = None
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)

    # ------------------------------------------------------------------ requests
    def create_keep(self, remote: str, pairs: int, *, min_fidelity: float = 0.0,
                    timeout_s: float = 10.0, purpose: int = 0, priority: int = 4,
                    request_id: str | None = None) -> PairStream:
        """Ask the node for ``pairs`` pairs with node ``remote`` that stay in qubits
        (``kind`` ``keep``): each at least ``min_fidelity`` (0–1) at delivery, all within
        ``timeout_s`` (s) of the request's arrival, for the application at ``remote`` that
        listens on ``purpose``; ``priority`` 0 is served first (0–7). Returns the request's
        iterator (sent when first awaited). ValueError for a field out of the protocol's
        range."""
        return self._create("keep", remote, pairs, min_fidelity, timeout_s, purpose, priority,
                            request_id)

    def create_measure(self, remote: str, pairs: int, *, min_fidelity: float = 0.0,
                       timeout_s: float = 10.0, purpose: int = 0, priority: int = 4,
                       request_id: str | None = None) -> PairStream:
        """As :meth:`create_keep`, ``kind`` ``measure``: both ends measure each pair at once
        and the pairs carry ``basis`` and ``outcome``. Nodes do not serve it yet on the pools
        they have: the iterator raises :class:`~qnode.client.results.RequestError`
        ``unsupported``."""
        return self._create("measure", remote, pairs, min_fidelity, timeout_s, purpose,
                            priority, request_id)

    def _create(self, kind: str, remote: str, pairs: int, min_fidelity: float,
                timeout_s: float, purpose: int, priority: int,
                request_id: str | None) -> PairStream:
        rid = request_id or f"{self._rid_prefix}-{next(self._rids)}"
        req = Request(rid, remote, pairs, purpose, min_fidelity, timeout_s, kind, priority)
        Request.from_dict(req.to_dict())      # ValueError naming the field, as the node would
        return PairStream(self._session, _Request(req, self.max_buffered))

    def _fresh_request_id(self) -> str:
        """A request id no live request or OPERATE of this client has."""
        s = self._session
        while True:
            rid = f"{self._rid_prefix}-{next(self._rids)}"
            if rid not in s.requests and rid not in s.operations:
                return rid

    # ------------------------------------------------------------------ operations
    async def operate(self, pair: Pair | tuple[str, int], ops: Sequence[Mapping[str, Any]], *,
                      release: bool = False, timeout_s: float | None = None) -> Operation:
        """Run the gates ``ops`` (:mod:`qnode.client.gates` makes them; at most
        :data:`~qnode.daemon.apps.protocol.MAX_OPS`, in order, in one batch) on this end's half
        of ``pair`` — a :class:`~qnode.client.results.Pair` of kind ``keep`` delivered to this
        application and still held (see its ``hold_left_s()``), or its ``(pool, pair_id)`` —
        with the node's scratch qubit; ``release``: give the qubit back after the gates (a
        measured pair qubit is given back anyway). Returns the node's
        :class:`~qnode.client.results.Operation` (one outcome per ``meas`` gate); raises its
        ``ERROR`` as :class:`~qnode.client.results.RequestError` (``unknown_pair``: not held
        by this application, or its hold ran out; ``bad_request``, ``unavailable``, ...), or
        :class:`~qnode.client.results.NoReply` when no reply came within ``timeout_s`` (s;
        default the client's ``reply_timeout_s``). ValueError before anything is sent for
        arguments out of the protocol's range."""
        if isinstance(pair, Pair):
            pool, pair_id = pair.pool, pair.pair_id
        elif isinstance(pair, tuple) and len(pair) == 2:
            pool, pair_id = pair
        else:
            raise ValueError(f"pair {pair!r}: expected a qnode.client.Pair or a (pool, "
                             f"pair_id) tuple")
        if timeout_s is None:
            timeout_s = self.reply_timeout_s
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or \
                not timeout_s > 0 or timeout_s == float("inf"):
            raise ValueError(f"timeout_s {timeout_s!r}: expected a number of seconds > 0")
        if isinstance(ops, str | bytes | Mapping) or not isinstance(ops, Sequence):
            raise ValueError("ops: expected a list of gates (qnode.client.gates)")
        gates = []
        for i, op in enumerate(ops):
            if not isinstance(op, Mapping):
                raise ValueError(f"OPERATE.ops.{i}: expected a gate (a dict), got "
                                 f"{type(op).__name__}")
            gates.append(dict(op))
        message = Operate(self._fresh_request_id(), pool, pair_id, gates, release)
        Operate.from_dict(message.to_dict())   # ValueError naming the field, as the node would
        return await self._session.operate(_Operation(message), float(timeout_s))

    # ------------------------------------------------------------------ DATA
    async def send_data(self, application: str, data: Mapping[str, Any]) -> None:
        """Send ``data``, a JSON object of at most
        :data:`~qnode.daemon.apps.protocol.MAX_DATA_BYTES` bytes (as compact UTF-8 JSON), to
        the application ``application`` as ``DATA`` (QoS 1: returns once the broker has it;
        whether anyone reads it is not known here). ValueError, before anything is sent, for
        a bad name, a non-object, or data that is not JSON or too large."""
        await self._session.send_data(application, data)

    async def receive_data(self, timeout_s: float | None = None) -> DataMessage:
        """The oldest ``DATA`` from another application not read yet (as a
        :class:`~qnode.client.results.DataMessage`), waiting up to ``timeout_s`` (s; None: no
        limit) for one to come; :class:`~qnode.client.results.NoData` (a ``TimeoutError``)
        after that. Messages are kept from :meth:`connect` on, whether anyone reads or not
        (at most ``max_buffered``: the oldest are dropped, counted in :attr:`discarded`).
        :class:`~qnode.client.results.ConnectionLost` once the connection ended and the kept
        messages are read; :class:`ClientError` ``not_authorised`` if the broker refused the
        DATA subscription."""
        if timeout_s is not None and not timeout_s >= 0:
            raise ValueError(f"timeout_s {timeout_s!r}: expected a number of seconds >= 0")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        return await self._session.receive_data(deadline)

    async def data(self) -> AsyncIterator[DataMessage]:
        """Every ``DATA`` from other applications, as it comes (see :meth:`receive_data`): an
        async iterator that ends only with the connection (raising its
        :class:`~qnode.client.results.ConnectionLost`). Several readers share the messages:
        each goes to one."""
        while True:
            yield await self._session.receive_data(None)

    # ------------------------------------------------------------------ listeners
    def receive(self, purpose: int) -> PairListener:
        """Listen on ``purpose`` (an id the node's config allows this application): an
        iterator of the pairs the far ends' applications request on it. LISTEN is sent when it
        is first awaited (:meth:`PairListener.start`), UNLISTEN when it is left."""
        if isinstance(purpose, bool) or not isinstance(purpose, int) or \
                not 0 <= purpose <= 0xFFFF:
            raise ValueError(f"purpose {purpose!r}: expected an integer in [0, 65535]")
        return PairListener(self._session, _Listen(purpose, self.max_buffered))


class PairStream:
    """The pairs of one request, as an async iterator of :class:`~qnode.client.results.Pair`
    (see :meth:`NodeClient.create_keep`). ``request_id``; after the node's answer
    ``accepted`` (:class:`~qnode.client.results.Acceptance`); after the terminal reply
    ``outcome`` (:class:`~qnode.client.results.Outcome`). ``async with`` it to be sure it is
    cancelled when the block is left."""

    def __init__(self, session: Session, req: _Request):
        self._session, self._req = session, req
        self._started = False
        self._closed = False

    @property
    def request_id(self) -> str:
        return self._req.request.request_id

    @property
    def request(self) -> Request:
        """The REQUEST as sent (the protocol's message)."""
        return self._req.request

    @property
    def accepted(self) -> Acceptance | None:
        return self._req.accepted

    @property
    def outcome(self) -> Outcome | None:
        return self._req.outcome

    @property
    def received(self) -> int:
        """Pairs received for this request so far."""
        return self._req.received

    @property
    def dropped(self) -> int:
        """Pairs dropped because the consumer was behind by ``max_buffered``."""
        return self._req.dropped

    async def start(self) -> Acceptance:
        """Send the request (if not yet) and wait for the node's answer: its
        :class:`~qnode.client.results.Acceptance`, or the refusal raised as
        :class:`~qnode.client.results.RequestError` (or :class:`NoReply`)."""
        req, s = self._req, self._session
        try:
            await self._send()
            while req.accepted is None and not req.ended:
                req.changed.clear()
                if req.accepted is not None or req.ended:
                    break
                if not await s.wait(req, s.deadline(req)):
                    s.no_reply(req)
        except asyncio.CancelledError:
            self._closed = True
            s.abandon_request(req)
            raise
        if req.accepted is None:
            assert req.error is not None
            raise req.error
        return req.accepted

    async def _send(self) -> None:
        if not self._started:
            self._started = True
            await self._session.start_request(self._req)

    def __aiter__(self) -> PairStream:
        return self

    async def __anext__(self) -> Pair:
        req, s = self._req, self._session
        try:
            await self._send()
            while True:
                req.changed.clear()
                if req.pairs:
                    return req.pairs.popleft()
                if self._closed:
                    raise StopAsyncIteration
                if req.error is not None:
                    raise req.error
                if req.outcome is not None:
                    raise StopAsyncIteration
                if not await s.wait(req, s.deadline(req)):
                    s.no_reply(req)
        except asyncio.CancelledError:
            self._closed = True
            s.abandon_request(req)
            raise

    async def cancel(self) -> Outcome | None:
        """Leave the iterator: CANCEL the request if it is live and wait (up to the client's
        ``reply_timeout_s``) for its terminal reply. Returns how it ended (None: never sent,
        or no terminal reply came)."""
        self._closed = True
        req = self._req
        await self._session.cancel(req)
        if req.outcome is None and isinstance(req.error, RequestError):
            return req.error.outcome
        return req.outcome

    async def aclose(self) -> None:
        """As :meth:`cancel`."""
        await self.cancel()

    async def __aenter__(self) -> PairStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()

    def __del__(self) -> None:
        if self._started and not self._closed:
            with contextlib.suppress(Exception):
                self._session.soon(self._session.abandon_request, self._req)


class PairListener:
    """The pairs the far ends' applications request on ``purpose``, as an async iterator of
    :class:`~qnode.client.results.Pair` (see :meth:`NodeClient.receive`); it ends only when
    left (UNLISTEN) or when the connection ends."""

    def __init__(self, session: Session, lst: _Listen):
        self._session, self._lst = session, lst
        self._started = False
        self._closed = False

    @property
    def purpose(self) -> int:
        return self._lst.purpose

    @property
    def active(self) -> bool:
        """The node confirmed LISTEN and no UNLISTEN since."""
        return self._lst.active

    @property
    def received(self) -> int:
        return self._lst.received

    @property
    def dropped(self) -> int:
        return self._lst.dropped

    async def start(self) -> None:
        """Send LISTEN (if not yet) and wait for LISTENING; the node's refusal raised as
        :class:`~qnode.client.results.RequestError` (``not_authorised``: the purpose is not
        this application's), or :class:`NoReply`."""
        if not self._started:
            self._started = True
            await self._session.listen(self._lst)
        elif self._lst.error is not None:
            raise self._lst.error

    def __aiter__(self) -> PairListener:
        return self

    async def __anext__(self) -> Pair:
        lst = self._lst
        try:
            await self.start()
            while True:
                lst.changed.clear()
                if lst.pairs:
                    return lst.pairs.popleft()
                if self._closed:
                    raise StopAsyncIteration
                if lst.error is not None:
                    raise lst.error
                await self._session.wait(lst, None)
        except asyncio.CancelledError:
            self._closed = True
            self._session.abandon_listen(lst)
            raise

    async def aclose(self) -> None:
        """UNLISTEN and wait (up to the client's ``reply_timeout_s``) for the node's
        confirmation."""
        self._closed = True
        if self._started:
            await self._session.unlisten(self._lst)

    async def __aenter__(self) -> PairListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if self._started and not self._closed:
            with contextlib.suppress(Exception):
                self._session.soon(self._session.abandon_listen, self._lst)
