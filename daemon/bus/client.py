"""One node's MQTT connection (docs/integrators/mqtt-contract.md): publish, receive, survive the
broker going away.

:class:`NodeBus` runs as one long-lived coroutine (:meth:`NodeBus.run`) in the supervisor's task
group. It connects with a persistent session (``clean_session=False``, client id = node id) and a
last will, so the broker keeps our subscriptions and queues QoS-1 messages for us while we are
away, and publishes a retained ``offline`` status if we vanish without saying goodbye.

Delivery guarantee
------------------

* **Outgoing, state-changing** (``publish(..., state_changing=True)``, the default): the message
  (envelope with the next per-sender id, signed when a key is given) enters an in-memory outgoing
  queue at once and stays there until the broker acknowledged it (QoS-1 PUBACK). While the broker
  is away the queue waits; after a reconnect every unacknowledged message is sent again, in
  publish order. Nothing is dropped silently: a full queue (``max_queue`` messages) raises
  :class:`BusOverloaded` to the caller. A message whose PUBACK was lost is sent twice; the
  receiver drops the copy. The queue does not outlive the process.
* **Outgoing, telemetry** (``state_changing=False``): QoS 0, best effort; dropped and counted in
  ``dropped_telemetry`` while disconnected.
* **Incoming**: the broker delivers QoS 1 at least once to our persistent session (also across
  our reconnects and, with broker persistence, across broker restarts). Messages wait in one
  bounded :class:`~.inbound.InboundQueue` that outlives connections (limits per class of
  traffic, every drop counted in ``dropped_incoming`` and logged). Every message is checked by
  :func:`~.envelope.decode`; signed ones are de-duplicated by (key, sender, id) with the shared
  :class:`~.envelope.Deduplicator`, unsigned ones by their bytes, so each accepted message
  reaches its handler **effectively once**. The library acknowledges a message when it arrives,
  before the handler runs: a crash of this process between the two loses it (persist the dedup
  state only after handling).
* **Ordering**: per topic, messages reach handlers in publish order (one sender, one topic, QoS 1,
  handlers awaited one at a time).
* **Bursts and group commit**: the receiver hands every message already waiting (up to
  :data:`MAX_BURST`) to its handler before it waits again. A handler that must store before it
  sends can ask, with :meth:`NodeBus.defer_until_idle`, to do both once at the end of the
  burst: one SQLite commit for a burst instead of one per message, so a backlog drains at the
  speed of the handlers, not of the disk. After a broker crash that lost a message the broker had
  already acknowledged (not a clean restart), the resent message arrives late; the dedup window
  still accepts it once. Across topics there is no order.

Rejected input (oversized, not JSON, bad envelope, unsigned, forged, duplicate, stale, unknown
topic) is counted in ``rejected[reason]`` and logged rate-limited, never raised into the loop; a
handler that raises is logged and counted in ``handler_errors``; the bus keeps running. Nothing
ends :meth:`NodeBus.run` but :meth:`NodeBus.close` or cancellation: an unexpected error in a
session is logged with its traceback, counted in ``session_errors`` and followed by a reconnect.
While disconnected, ``disconnected_s`` says for how long (the node's watchdog reads it).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import logging
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiomqtt

from qnode.daemon.bus.envelope import (
    DEFAULT_MAX_BYTES,
    Deduplicator,
    IdCounter,
    Message,
    MessageRejected,
    RecentPayloads,
    decode,
    encode,
)
from qnode.daemon.bus.identity import NodeSigner, TrustStore
from qnode.daemon.bus.inbound import DEFAULT_LIMITS, InboundQueue, topic_kind
from qnode.daemon.bus.keys import KeyRing
from qnode.daemon.bus.topics import Topic, Topics, parse_topic
from qnode.daemon.logs import RateLimitedLog

if TYPE_CHECKING:
    from paho.mqtt.reasoncodes import ReasonCode

    from qnode.daemon.bus.telemetry import BusTelemetry

log = logging.getLogger("qnode.bus")

Handler = Callable[[Topic, Message], Awaitable[None]]

#: Topic kinds whose messages change state: they must be signed with the link key.
SIGNED_KINDS = frozenset({"ll", "proto", "herald", "tags", "key"})
#: Topic kinds only their node may say: signed with its identity key when it has one, and, with
#: a trust store, accepted only so signed (see :mod:`qnode.daemon.bus.identity`).
NODE_SIGNED_KINDS = frozenset({"herald", "status", "telemetry", "svc", "topo"})
#: Topic kinds whose retained messages carry their own freshness (a time the receiver orders
#: them by): a retained copy delivered again after a reconnect or a restart is not a replay, so
#: the replay window does not judge them (nor do they move it).
SELF_FRESH_KINDS = frozenset({"topo"})
STATUS_TYPE = "status"


#: messages handled in one burst before deferred work (:meth:`NodeBus.defer_until_idle`) runs
MAX_BURST = 256

#: the deferred work of the burst being handled; set in the receiving task only, so work
#: started elsewhere (a timer, a test calling :meth:`NodeBus.deliver`) is never deferred
_burst_work: contextvars.ContextVar[list[Callable[[], Awaitable[None]]] | None] = \
    contextvars.ContextVar("qnode_bus_burst_work", default=None)



def suback_code(code: int | ReasonCode) -> int:
    """A SUBACK's code for one filter as a number (≥ 0x80: refused): aiomqtt gives ints under
    MQTT 3.1.1 and paho's ReasonCodes under MQTT 5."""
    return code if isinstance(code, int) else int(code.value)

class BusOverloaded(RuntimeError):
    """The outgoing queue is full: the caller must slow down (nothing was queued)."""


@dataclasses.dataclass
class _Outgoing:
    seq: int
    topic: str
    payload: bytes
    retain: bool
    attempts: int = 0


class NodeBus:
    """One node's MQTT connection; see the module docstring for what it guarantees.

    ``keys`` maps a topic's source to its HMAC key: for ``ll/<peer>`` and ``proto/<peer>`` the
    peer node (the same key signs both directions of a link), for ``herald/<link>`` the link id.
    ``heralds`` (link id -> herald station node) adds the herald subscriptions of K-type links.
    Times are in seconds.
    """

    def __init__(self, topics: Topics, host: str, port: int = 1883, *,
                 tls: ssl.SSLContext | None = None,
                 keys: KeyRing | Mapping[str, bytes] | None = None,
                 ids: IdCounter | None = None,
                 dedup: Deduplicator | None = None,
                 heralds: Mapping[str, str] | None = None,
                 signed_kinds: frozenset[str] = SIGNED_KINDS,
                 keepalive_s: int = 10,
                 reconnect_initial_s: float = 0.1,
                 reconnect_max_s: float = 5.0,
                 connect_timeout_s: float = 10.0,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 max_queue: int = 100_000,
                 max_inflight: int = 64,
                 inbound_limits: Mapping[str, tuple[int, int]] = DEFAULT_LIMITS,
                 signer: NodeSigner | None = None,
                 trust: TrustStore | None = None,
                 username: str | None = None,
                 password: str | None = None):
        self.topics = topics
        self.host, self.port, self.tls = host, port, tls
        self.keys = KeyRing.of(keys)
        #: this node's identity key (signs heralds, status, telemetry) and the network's
        #: public identity keys (with them, heralds must carry their station's signature)
        self.signer, self.trust = signer, trust
        self.ids = ids if ids is not None else IdCounter()
        self.dedup = dedup if dedup is not None else Deduplicator()
        self.heralds = dict(heralds or {})
        self.signed_kinds = signed_kinds
        self.keepalive_s = keepalive_s
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.connect_timeout_s = connect_timeout_s
        self.max_bytes = max_bytes
        self.max_queue = max_queue
        self.max_inflight = max_inflight
        self.username, self.password = username, password

        # metrics
        self.published = 0          # envelopes built and accepted (queued or sent)
        self.acked = 0              # state-changing messages the broker acknowledged
        self.resent = 0             # sends of a message after its first attempt
        self.queued = 0             # state-changing messages published while disconnected
        self.dropped_telemetry = 0  # telemetry not sent because we were disconnected
        self.received = 0           # messages accepted and handed to a handler
        self.rejected: collections.Counter[str] = collections.Counter()
        self.handler_errors = 0
        self.session_errors = 0     # unexpected errors that ended a session (then reconnected)
        self.reconnects = 0         # successful connections after the first
        self.connections = 0
        self.disconnects = 0        # connections lost or refused
        self._down_since: float | None = time.monotonic()  # not connected since (monotonic s)

        self._handlers: dict[str, Handler] = {}
        self._extra_subs: list[str] = []
        self._status_fields: dict[str, Any] = {"state": "online"}
        self._seq = 0
        self._backlog: collections.deque[_Outgoing] = collections.deque()  # not yet sent
        self._inflight: dict[int, _Outgoing] = {}  # sent on this connection, not acknowledged
        self._wakeup = asyncio.Event()       # something new in the backlog
        self._drained = asyncio.Event()      # nothing unacknowledged
        self._drained.set()
        self._connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()     # run() is not running
        self._finished.set()
        self._client: aiomqtt.Client | None = None
        self._bg: set[asyncio.Task[None]] = set()
        self._rlog = RateLimitedLog(log)
        self._connlog = RateLimitedLog(log, 30.0)  # a long outage: one line per 30 s, not per try
        self.recent = RecentPayloads()
        #: what the MQTT client queues for us, bounded, across reconnects
        self.inbound = InboundQueue(inbound_limits, on_drop=self._on_inbound_drop)

    # -- registration ----------------------------------------------------------------------

    def on(self, kind: str, handler: Handler) -> None:
        """Deliver accepted messages on topics of ``kind`` (``ll``, ``proto``, ``herald``,
        ``cmd``, ``status``, ...) to ``handler(topic, message)``; one handler per kind."""
        self._handlers[kind] = handler

    def subscribe(self, topic_filter: str) -> None:
        """Also subscribe to ``topic_filter`` (QoS 1), now if connected and after every
        reconnect."""
        if topic_filter in self._extra_subs:
            return
        self._extra_subs.append(topic_filter)
        client = self._client
        if client is not None and self._connected.is_set():
            self._spawn(self._subscribe_now(client, [topic_filter]))

    def subscriptions(self) -> list[str]:
        subs = self.topics.subscriptions(self.heralds)
        return subs + [s for s in self._extra_subs if s not in subs]

    # -- state -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def disconnected_s(self) -> float:
        """Seconds since the connection was lost (or since start, before the first); 0 while
        connected."""
        since = self._down_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def pending(self) -> int:
        """State-changing messages not yet acknowledged by the broker."""
        return len(self._backlog) + len(self._inflight)

    def metrics(self) -> BusTelemetry:
        return {"published": self.published, "acked": self.acked, "resent": self.resent,
                "queued": self.queued, "pending": self.pending,
                "dropped_telemetry": self.dropped_telemetry, "received": self.received,
                "rejected": dict(self.rejected), "handler_errors": self.handler_errors,
                "session_errors": self.session_errors, "reconnects": self.reconnects,
                "disconnects": self.disconnects, "connected": self.connected,
                "disconnected_s": round(self.disconnected_s, 3),
                "inbound_queued": self.inbound.qsize(), "inbound_bytes": self.inbound.bytes,
                "dropped_incoming": dict(self.inbound.dropped)}

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        async with asyncio.timeout(timeout_s):  # not wait_for: see runtime/waiting.py
            await self._connected.wait()

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait until the broker acknowledged every state-changing message published so far."""
        async with asyncio.timeout(timeout_s):
            await self._drained.wait()

    # -- publishing ------------------------------------------------------------------------

    def envelope(self, type: str, body: Mapping[str, Any], *,
                 sign_with: bytes | str | None = None,
                 node_sign: bool = False) -> tuple[Message, bytes]:
        """A new message from this node with the next id, and its payload; ``node_sign``: also
        signed with this node's identity key, when it has one."""
        key = self.keys[sign_with] if isinstance(sign_with, str) else sign_with
        signer = self.signer if node_sign else None
        msg = Message(type, self.topics.node, self.ids(), dict(body), time.time(),
                      signed=key is not None, node_signed=signer is not None)
        return msg, encode(msg, key, signer=signer)

    def publish(self, topic: str, type: str, body: Mapping[str, Any], *,
                state_changing: bool = True, retain: bool = False,
                sign_with: bytes | str | None = None, node_sign: bool = False) -> Message:
        """Publish ``body`` as a message of ``type`` on ``topic``; never blocks.

        ``sign_with``: an HMAC key, or the name of one in ``keys`` (the peer or link);
        ``node_sign``: also sign with this node's identity key (always on the kinds only this
        node may say, e.g. heralds; on ``ll`` for a peer this node shares no key with). A
        state-changing message is queued until the broker acknowledged it (see the module
        docstring); :class:`BusOverloaded` if the queue is full. Telemetry is sent at QoS 0
        when connected and otherwise dropped (counted)."""
        if state_changing and self.pending >= self.max_queue:
            raise BusOverloaded(f"{self.pending} messages wait for the broker "
                                f"(max_queue={self.max_queue})")
        msg, payload = self.envelope(type, body, sign_with=sign_with,
                                     node_sign=node_sign
                                     or topic_kind(topic) in NODE_SIGNED_KINDS)
        self.published += 1
        if state_changing:
            self._enqueue(topic, payload, retain)
        else:
            client = self._client
            if client is None or not self._connected.is_set():
                self.dropped_telemetry += 1
            else:
                self._spawn(self._send_telemetry(client, topic, payload, retain))
        return msg

    def status(self, state: str, **fields: Any) -> Message:
        """Publish the retained status ``{"state": state, **fields}`` (state-changing, so it
        is resent after a reconnect; it is also what we announce on every reconnect)."""
        self._status_fields = {"state": state, **fields}
        return self.publish(self.topics.status, STATUS_TYPE, self._status_fields, retain=True)

    def _enqueue(self, topic: str, payload: bytes, retain: bool) -> None:
        self._seq += 1
        self._backlog.append(_Outgoing(self._seq, topic, payload, retain))
        if not self._connected.is_set():
            self.queued += 1
        self._drained.clear()
        self._wakeup.set()

    async def _send_telemetry(self, client: aiomqtt.Client, topic: str, payload: bytes,
                              retain: bool) -> None:
        try:
            await client.publish(topic, payload, qos=0, retain=retain)
        except aiomqtt.MqttError:
            self.dropped_telemetry += 1

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # -- the connection loop ---------------------------------------------------------------

    def _payload_status(self, fields: Mapping[str, Any]) -> bytes:
        return self.envelope(STATUS_TYPE, fields, node_sign=True)[1]

    def _new_client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(self.topics.status, self._payload_status({"state": "offline"}),
                            qos=1, retain=True)
        client = aiomqtt.Client(
            self.host, self.port, identifier=self.topics.node, will=will,
            keepalive=self.keepalive_s, clean_session=False, tls_context=self.tls,
            timeout=self.connect_timeout_s, max_inflight_messages=self.max_inflight,
            username=self.username, password=self.password,
            logger=logging.getLogger("qnode.bus.mqtt"),
            # one bounded queue for the bus's lifetime: see .inbound
            # aiomqtt declares a Queue class here but only calls it with maxsize
            queue_type=lambda maxsize=0: self.inbound)  # type: ignore[arg-type]
        # aiomqtt warns above 10 outstanding calls; we keep up to max_inflight by design.
        client.pending_calls_threshold = self.max_inflight + 16
        return client

    async def run(self) -> None:
        """Connect, and reconnect with bounded exponential backoff until :meth:`close`.
        Cancelling the task publishes ``offline`` (best effort) and disconnects."""
        delay = self.reconnect_initial_s
        self._finished.clear()
        try:
            await self._run(delay)
        finally:
            self._finished.set()

    async def _run(self, delay: float) -> None:
        while not self._stop.is_set():
            client = self._new_client()
            was_connected = False
            try:
                async with client:
                    self._client = client
                    was_connected = True
                    delay = self.reconnect_initial_s
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                what = "lost" if was_connected else "failed"
                self._connlog(what, logging.WARNING,
                              "mqtt connection to %s:%d %s: %s; retrying in %.2f s", self.host,
                              self.port, what, exc, delay, host=self.host, port=self.port,
                              error=str(exc))
            except Exception as exc:  # a bug, not the network: say so, then reconnect
                self.session_errors += 1
                self._connlog("session_error", logging.ERROR,
                              "mqtt session of %s ended by an unexpected error: %r; "
                              "reconnecting in %.2f s", self.topics.node, exc, delay,
                              exc_info=True, error=repr(exc))
            finally:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    self.disconnects += 1
                self._connected.clear()
                self._client = None
                self._requeue_inflight()
            if self._stop.is_set():
                break
            # full jitter on the upper half: peers that lost the same broker do not reconnect
            # in lockstep
            wait = delay * (0.5 + 0.5 * random.random())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._stop.wait()
            delay = min(delay * 2, self.reconnect_max_s)
        log.info("mqtt bus of %s stopped", self.topics.node)

    def _requeue_inflight(self) -> None:
        """Connection gone: whatever was sent but not acknowledged goes back to the front of
        the backlog, in publish order."""
        if self._inflight:
            back = sorted(self._inflight.values(), key=lambda o: o.seq)
            self._inflight.clear()
            self._backlog.extendleft(reversed(back))

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection: announce, subscribe, then send and receive until it breaks (raises
        MqttError) or :meth:`close` (returns)."""
        self.connections += 1
        if self.connections > 1:
            self.reconnects += 1
        await client.publish(self.topics.status, self._payload_status(self._status_fields),
                             qos=1, retain=True)
        await self._subscribe_now(client, self.subscriptions())
        self._connected.set()
        self._down_since = None
        log.info("mqtt connected to %s:%d as %s (%d pending to send)", self.host, self.port,
                 self.topics.node, self.pending,
                 extra={"host": self.host, "port": self.port, "pending": self.pending})
        receiver = asyncio.create_task(self._receive(client))
        sender = asyncio.create_task(self._send(client))
        stopper = asyncio.create_task(self._stop.wait())
        tasks = {receiver, sender, stopper}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # the supervisor is shutting down: say so, the will does not fire on the clean
            # disconnect that follows
            await asyncio.gather(*(t for t in tasks if t.cancel()), return_exceptions=True)
            await self._goodbye(client, timeout_s=1.0)
            raise
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._connected.clear()
        for t in done:
            if t is not stopper:
                t.result()  # MqttError: the connection broke
        if stopper in done:
            await self._goodbye(client)

    async def _goodbye(self, client: aiomqtt.Client, timeout_s: float | None = None) -> None:
        """Clean shutdown: retained offline status (the will does not fire on a clean
        disconnect)."""
        self._status_fields = {"state": "offline"}
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(timeout_s or self.connect_timeout_s):
                await client.publish(self.topics.status,
                                     self._payload_status(self._status_fields), qos=1,
                                     retain=True)

    async def _subscribe_now(self, client: aiomqtt.Client, filters: list[str]) -> None:
        if not filters:
            return
        codes: Sequence[int | ReasonCode] = await client.subscribe([(f, 1) for f in filters])
        for f, code in zip(filters, codes, strict=False):
            if suback_code(code) >= 0x80:
                log.error("broker refused subscription to %s", f, extra={"topic": f})

    async def _send(self, client: aiomqtt.Client) -> None:
        """Send the backlog in order, up to ``max_inflight`` unacknowledged at once."""
        window = asyncio.Semaphore(self.max_inflight)
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tasks: set[asyncio.Task[None]] = set()

        async def one(out: _Outgoing) -> None:
            try:
                await client.publish(out.topic, out.payload, qos=1, retain=out.retain,
                                     timeout=math.inf)
            except aiomqtt.MqttError as exc:
                if not failed.done():
                    failed.set_exception(exc)
                    self._wakeup.set()
                return
            finally:
                window.release()
            if self._inflight.pop(out.seq, None) is not None:
                self.acked += 1
                if not self._backlog and not self._inflight:
                    self._drained.set()

        try:
            while True:
                if failed.done():
                    failed.result()  # raises: the connection broke under a publish
                if not self._backlog:
                    self._wakeup.clear()
                    await self._wakeup.wait()  # publish() or a failing publish sets it
                    continue
                await window.acquire()
                if failed.done() or not self._backlog:
                    window.release()
                    continue
                out = self._backlog.popleft()
                if out.attempts:
                    self.resent += 1
                out.attempts += 1
                self._inflight[out.seq] = out
                task = asyncio.create_task(one(out))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not failed.done():
                failed.cancel()
            elif not failed.cancelled():
                failed.exception()  # retrieved: no "exception never retrieved" noise

    # -- receiving -------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Wait for a message, then handle it and every message already queued behind it (at
        most :data:`MAX_BURST`) as one burst, then run the burst's deferred work."""
        messages = client.messages
        while True:
            first = await anext(messages)
            work: list[Callable[[], Awaitable[None]]] = []
            token = _burst_work.set(work)
            try:
                await self.deliver(str(first.topic), first.payload)
                for _ in range(MAX_BURST - 1):
                    if not self.inbound.qsize():
                        break
                    mqtt_msg = self.inbound.get_nowait()
                    await self.deliver(str(mqtt_msg.topic), mqtt_msg.payload)
            finally:
                _burst_work.reset(token)
                # also when the connection broke mid-burst: what the handlers changed is
                # stored and its messages queued (they are sent after the reconnect)
                await self._run_deferred(work)

    def defer_until_idle(self, work: Callable[[], Awaitable[None]]) -> bool:
        """Called from a message handler: run ``work()`` once after the current burst of
        received messages has been handled (see the module docstring), however often it is
        asked for in that burst, in the order first asked. False outside the receiver (a timer,
        a direct :meth:`deliver`): then the caller must do the work itself, now."""
        pending = _burst_work.get()
        if pending is None:
            return False
        if work not in pending:
            pending.append(work)
        return True

    async def _run_deferred(self, work: list[Callable[[], Awaitable[None]]]) -> None:
        for job in work:
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.handler_errors += 1
                self._rlog("deferred", logging.ERROR, "deferred work %r of a burst raised",
                           job, exc_info=True)

    @staticmethod
    def key_name(topic: Topic) -> str:
        """The name of the key that signs messages on ``topic``: the link for heralds, else
        the topic's node (the peer; for ``cmd``, this node itself)."""
        return (topic.arg or "") if topic.kind == "herald" else topic.node

    def _on_inbound_drop(self, kind: str, topic: str, why: str) -> None:
        self._rlog(f"dropped:{kind}", logging.WARNING,
                   "mqtt inbound queue: dropped a %s message on %s (%s; %d %s dropped so far)",
                   kind, topic, why, self.inbound.dropped[kind], kind, topic=topic, kind=kind,
                   reason=why)

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.rejected[reason] += 1
        self._rlog(reason, logging.WARNING, "mqtt message rejected (%s) on %s: %s", reason,
                   topic, detail, topic=topic, reason=reason)

    async def deliver(self, topic_str: str, payload: Any) -> None:
        """Check one incoming message and hand it to its handler; never raises (except
        cancellation). Public so tests and an embedded broker can inject messages."""
        if not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        try:
            topic = parse_topic(topic_str)
        except ValueError as exc:
            self._reject("bad_topic", topic_str, str(exc))
            return
        handler = self._handlers.get(topic.kind)
        name = self.key_name(topic)
        try:
            msg = decode(bytes(payload), topic, key=self.keys.verifying(name), domain=name,
                         require_signature=topic.kind in self.signed_kinds,
                         trust=self.trust, require_node_signature=(
                             self.trust is not None and topic.kind in NODE_SIGNED_KINDS),
                         dedup=None if topic.kind in SELF_FRESH_KINDS else self.dedup,
                         recent=self.recent, max_bytes=self.max_bytes)
        except MessageRejected as exc:
            self._reject(exc.reason, topic_str, exc.detail)
            return
        except Exception:  # decode's contract is MessageRejected only: this is a bug in it
            self.rejected["decoder_error"] += 1
            self._rlog("decoder_error", logging.ERROR, "mqtt message on %s broke the decoder",
                       topic_str, exc_info=True, topic=topic_str)
            return
        if handler is None:
            self._reject("no_handler", topic_str, f"{msg.type} from {msg.sender}")
            return
        self.received += 1
        try:
            await handler(topic, msg)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.handler_errors += 1
            self._rlog(f"handler:{topic.kind}", logging.ERROR,
                       "handler for %s raised on %s id %d from %s", topic.kind, msg.type,
                       msg.id, msg.sender, exc_info=True, topic=topic_str, type=msg.type,
                       id=msg.id, sender=msg.sender)

    # -- shutdown --------------------------------------------------------------------------

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Wait up to ``drain_timeout_s`` for queued state-changing messages to be
        acknowledged, then publish the retained ``offline`` status and disconnect cleanly.
        :meth:`run` returns afterwards."""
        if self._connected.is_set() and self.pending:
            with contextlib.suppress(TimeoutError):
                await self.drain(drain_timeout_s)
        if self.pending:
            log.warning("mqtt bus closing with %d unacknowledged messages", self.pending,
                        extra={"pending": self.pending})
        self._stop.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.connect_timeout_s + 1.0):
                await self._finished.wait()
        for task in list(self._bg):
            task.cancel()
