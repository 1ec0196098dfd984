"""The MQTT message envelope: JSON a person can read and any client can decode (DESIGN §5).

Every payload is one JSON object::

    {"v": 1, "type": "ll.ok", "sender": "alice", "id": 42, "ts": 1732345678.125,
     "body": {...}, "sig": "9f2c..."}

* ``v``: schema version (:data:`SCHEMA_VERSION`); ``type``: the message type (``area.name``);
  ``sender``: the publishing node, which must equal the topic's node segment (except on ``cmd``
  topics, whose node segment is the addressee); ``id``: a
  per-sender message id, increasing by one per message; ``ts``: the sender's wall clock (s,
  informative only); ``body``: the type's content.
* ``sig``: HMAC-SHA256 (hex) over the canonical JSON of everything else, keyed with the shared
  key of the link the message travels on. Together with the per-sender id window it stops a
  peer from being impersonated or replayed through a permissive broker.

:func:`decode` checks everything and raises :class:`MessageRejected` with a short ``reason``
(``oversized``, ``not_json``, ``bad_envelope``, ``bad_version``, ``sender_mismatch``,
``unsigned``, ``bad_signature``, ``duplicate``, ``stale``) the daemon counts and logs; it never
raises anything else for bad input. :class:`Deduplicator` drops QoS-1 redeliveries.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import time
from collections.abc import Mapping
from typing import Any

from .topics import Topic

SCHEMA_VERSION = 1
DEFAULT_MAX_BYTES = 1 << 20
MAX_ID = (1 << 63) - 1
_ENVELOPE_KEYS = {"v", "type", "sender", "id", "ts", "body", "sig"}


class MessageRejected(ValueError):
    """A payload was refused. ``reason`` is a short code for counting; the message says why."""

    def __init__(self, reason: str, detail: str, *, topic: str = ""):
        where = f" on {topic}" if topic else ""
        super().__init__(f"rejected ({reason}){where}: {detail}")
        self.reason = reason
        self.detail = detail
        self.topic = topic


@dataclasses.dataclass(frozen=True)
class Message:
    """A decoded (or to-be-encoded) message."""

    type: str
    sender: str
    id: int
    body: Mapping[str, Any]
    ts: float = 0.0
    v: int = SCHEMA_VERSION
    signed: bool = False


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: JSON with sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def _signature(key: bytes, unsigned: Mapping[str, Any]) -> str:
    return hmac.new(key, canonical(unsigned), hashlib.sha256).hexdigest()


def encode(msg: Message, key: bytes | None = None) -> bytes:
    """The payload of ``msg`` (signed when ``key`` is given)."""
    env: dict[str, Any] = {"v": msg.v, "type": msg.type, "sender": msg.sender, "id": msg.id,
                           "ts": msg.ts or time.time(), "body": dict(msg.body)}
    if key is not None:
        env["sig"] = _signature(key, env)
    return canonical(env)


class Deduplicator:
    """Accepts each (sender, id) once: ids above the highest seen, or inside a window of
    ``window`` ids below it that were not seen yet (QoS-1 redeliveries and the reordering of a
    sender's messages across topics); older ids are ``stale``. State per sender is the highest
    id and a bitmap of the window, small enough to persist."""

    def __init__(self, window: int = 4096):
        self.window = window
        self._highest: dict[str, int] = {}
        self._seen: dict[str, int] = {}  # bit k set: id (highest - k) was seen

    def check(self, sender: str, msg_id: int) -> str | None:
        """None if new (and remember it), else "duplicate" or "stale"."""
        high = self._highest.get(sender)
        if high is None or msg_id > high:
            shift = 0 if high is None else msg_id - high
            bits = 0 if high is None or shift >= self.window else self._seen[sender] << shift
            self._highest[sender] = msg_id
            self._seen[sender] = (bits | 1) & ((1 << self.window) - 1)
            return None
        k = high - msg_id
        if k >= self.window:
            return "stale"
        if (self._seen[sender] >> k) & 1:
            return "duplicate"
        self._seen[sender] |= 1 << k
        return None

    def snapshot(self) -> dict[str, tuple[int, int]]:
        return {s: (h, self._seen[s]) for s, h in self._highest.items()}

    def restore(self, state: Mapping[str, tuple[int, int]]) -> None:
        for sender, (high, bits) in state.items():
            self._highest[sender], self._seen[sender] = int(high), int(bits)


class IdCounter:
    """A node's own message ids: increasing by one, continuing from a persisted value."""

    def __init__(self, next_id: int = 0):
        self.next_id = next_id

    def __call__(self) -> int:
        i = self.next_id
        self.next_id += 1
        return i


def _field(env: Mapping[str, Any], name: str, kinds: tuple[type, ...], topic: str) -> Any:
    value = env.get(name)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise MessageRejected("bad_envelope", f"field {name!r} must be {expected}, "
                                              f"got {type(value).__name__}", topic=topic)
    return value


def decode(payload: bytes, topic: Topic, *, key: bytes | None = None,
           require_signature: bool = False, dedup: Deduplicator | None = None,
           max_bytes: int = DEFAULT_MAX_BYTES) -> Message:
    """Check and decode one payload received on ``topic``.

    ``key``: the link key that signs messages on this topic (a present ``sig`` must verify);
    ``require_signature``: refuse unsigned messages (state-changing traffic on a keyed link);
    ``dedup``: refuse ids already seen from this sender. Raises :class:`MessageRejected` only.
    """
    where = str(topic)
    if len(payload) > max_bytes:
        raise MessageRejected("oversized", f"{len(payload)} bytes > {max_bytes}", topic=where)
    try:
        env = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MessageRejected("not_json", str(exc)[:200], topic=where) from None
    if not isinstance(env, dict):
        raise MessageRejected("bad_envelope", f"a message is a JSON object, got "
                                              f"{type(env).__name__}", topic=where)
    unknown = sorted(set(env) - _ENVELOPE_KEYS)
    if unknown:
        raise MessageRejected("bad_envelope", f"unknown field {unknown[0]!r}", topic=where)
    v = _field(env, "v", (int,), where)
    if v != SCHEMA_VERSION:
        raise MessageRejected("bad_version", f"schema version {v}, this node speaks "
                                             f"{SCHEMA_VERSION}", topic=where)
    mtype = _field(env, "type", (str,), where)
    sender = _field(env, "sender", (str,), where)
    msg_id = _field(env, "id", (int,), where)
    ts = _field(env, "ts", (int, float), where)
    body = _field(env, "body", (dict,), where)
    if not 0 <= msg_id <= MAX_ID or not math.isfinite(ts):
        raise MessageRejected("bad_envelope", f"id {msg_id} or ts {ts} out of range", topic=where)
    # The node segment names the publisher, except on `cmd`, where it names the addressee.
    if topic.kind != "cmd" and sender != topic.node:
        raise MessageRejected("sender_mismatch", f"sender {sender!r} published under node "
                                                 f"{topic.node!r}", topic=where)
    sig = env.get("sig")
    if sig is None:
        if require_signature:
            raise MessageRejected("unsigned", f"{mtype} from {sender} must be signed",
                                  topic=where)
    else:
        if key is None:
            raise MessageRejected("bad_signature", f"signed {mtype} from {sender}, but no key "
                                                   f"for this link", topic=where)
        unsigned = {k: val for k, val in env.items() if k != "sig"}
        if not isinstance(sig, str) or not hmac.compare_digest(sig, _signature(key, unsigned)):
            raise MessageRejected("bad_signature", f"{mtype} from {sender} id {msg_id}: the "
                                                   f"signature does not verify", topic=where)
    if dedup is not None:
        seen = dedup.check(sender, msg_id)
        if seen is not None:
            raise MessageRejected(seen, f"{mtype} from {sender} id {msg_id} was already "
                                        f"received" if seen == "duplicate" else
                                        f"{mtype} from {sender} id {msg_id} is older than the "
                                        f"replay window", topic=where)
    return Message(mtype, sender, msg_id, body, float(ts), v, sig is not None)
