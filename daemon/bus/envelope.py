"""The MQTT message envelope: JSON a person can read and any client can decode.

Every payload is one JSON object::

    {"v": 1, "type": "OK", "sender": "alice", "id": 42, "ts": 1732345678.125,
     "body": {...}, "sig": "9f2c..."}

* ``v``: schema version (:data:`SCHEMA_VERSION`); ``type``: the message type (``OK``,
  ``HERALD``, ...); ``sender``: the publishing node, which must equal the topic's node
  segment (except on ``cmd`` topics, whose node segment is the addressee); ``id``: a per-sender
  message id, increasing by one per message; ``ts``: the sender's wall clock (s,
  informative only); ``body``: the type's content.
* ``sig``: HMAC-SHA256 (64 lowercase hex digits) over the canonical JSON of the envelope without
  its signatures, keyed with the shared key of the link the message travels on. Together with
  the per-sender id window it stops a peer from being impersonated or replayed through a
  permissive broker.
* ``nodesig``: the sender's own Ed25519 signature of the same bytes
(:mod:`qnode.daemon.bus.identity`), on what
  only that node may say: a station's heralds, every node's status and telemetry.

:func:`decode` is the trust boundary: whatever the bytes, it returns a valid :class:`Message` or
raises :class:`MessageRejected` with a short ``reason`` (``oversized``, ``not_json``,
``too_deep``, ``bad_envelope``, ``bad_version``, ``sender_mismatch``, ``unsigned``,
``bad_signature``, ``duplicate``, ``stale``) the daemon counts and logs. Integers are limited to
:data:`MAX_INT_DIGITS` digits while parsing and nesting to :data:`MAX_DEPTH`.

Replay protection is split by authentication. Signed messages pass the :class:`Deduplicator`, a
window per *key domain* (the name of the link key that verified them, or ``@<sender>`` for the
sender's identity key) and sender: only a holder of that key can move that window, and only
these windows are persisted. Unsigned messages
(``cmd`` requests without a key, status, telemetry) are anyone's to send; they never touch those
windows, and :class:`RecentPayloads` only drops their byte-identical redeliveries.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from qnode.daemon.bus.identity import NodeSigner, TrustStore
from qnode.daemon.bus.topics import Topic

SCHEMA_VERSION = 1
DEFAULT_MAX_BYTES = 1 << 20
MAX_ID = (1 << 63) - 1
#: integer literals longer than this many digits are refused while parsing (2^64 has 20)
MAX_INT_DIGITS = 20
#: JSON nesting deeper than this is refused (the deepest message body nests 4 levels)
MAX_DEPTH = 16
#: joins a key domain and a sender into one replay-window name (neither may contain it)
DOMAIN_SEPARATOR = "|"
_ENVELOPE_KEYS = {"v", "type", "sender", "id", "ts", "body", "sig", "nodesig"}
_SIGNATURE_KEYS = ("sig", "nodesig")
_HEX_SIG = re.compile(r"[0-9a-f]{64}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")
_SENDER = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
    signed: bool = False       # carried a valid link-key signature (``sig``)
    node_signed: bool = False  # carried its sender's valid identity signature (``nodesig``)


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: JSON with sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def encode(msg: Message, key: bytes | None = None, *, signer: NodeSigner | None = None) -> bytes:
    """The payload of ``msg``: signed with the link key ``key`` (``sig``) and with the sender's
    identity key ``signer`` (``nodesig``) when given."""
    env: dict[str, Any] = {"v": msg.v, "type": msg.type, "sender": msg.sender, "id": msg.id,
                           "ts": msg.ts or time.time(), "body": dict(msg.body)}
    unsigned = canonical(env)
    if key is not None:
        env["sig"] = hmac.new(key, unsigned, hashlib.sha256).hexdigest()
    if signer is not None:
        env["nodesig"] = signer.sign(unsigned)
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

    def restore(self, state: Mapping[str, tuple[int, int]]) -> int:
        """Take up persisted windows; returns how many were discarded: windows not named
        ``domain|sender`` come from versions that let unsigned traffic move them, and may be
        poisoned."""
        discarded = 0
        for name, (high, bits) in state.items():
            if DOMAIN_SEPARATOR not in name or not 0 <= int(high) <= MAX_ID:
                discarded += 1
                continue
            self._highest[name], self._seen[name] = int(high), int(bits)
        return discarded


class RecentPayloads:
    """Remembers the digests of the last ``size`` unsigned payloads, to drop QoS-1
    redeliveries of unsigned messages without a window anyone could move (an id claimed by a
    forger blocks nothing: a genuine message with that id has other bytes)."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def first(self, payload: bytes) -> bool:
        """True the first time these bytes are seen (among the last ``size``)."""
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        if digest in self._seen:
            self._seen.move_to_end(digest)
            return False
        self._seen[digest] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True


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


def _bounded_int(text: str) -> int:
    # Python refuses ints over 4,300 digits with a ValueError of its own; well before that, a
    # 10^4-digit int costs quadratic time to convert. No field of a message needs more than 64 bits.
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} characters (at most {MAX_INT_DIGITS} digits)")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any, limit: int) -> int:
    """The nesting depth of a decoded JSON value, walking no deeper than ``limit`` + 1."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_json(payload: bytes, *, topic: str = "") -> Any:
    """Parse untrusted JSON: integers of at most :data:`MAX_INT_DIGITS` digits, no NaN or
    Infinity, no lone surrogates, nesting at most :data:`MAX_DEPTH`. :class:`MessageRejected`
    (``not_json``, ``too_deep``) for anything else, whatever the bytes."""
    try:
        value = json.loads(payload, parse_int=_bounded_int, parse_constant=_no_constant)
    except (ValueError, RecursionError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise MessageRejected("not_json", str(exc)[:200], topic=topic) from None
    if _depth(value, MAX_DEPTH) > MAX_DEPTH:
        raise MessageRejected("too_deep", f"JSON nested deeper than {MAX_DEPTH}", topic=topic)
    # "\ud800" alone is valid JSON but no Unicode text: it could not be encoded again (to check
    # a signature, to log); a surrogate pair is one character and passes
    if _SURROGATE_ESCAPE.search(payload):
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise MessageRejected("not_json", "a lone UTF-16 surrogate (\\ud800-\\udfff) is "
                                              "not text", topic=topic) from None
    return value


def _verify(sig: Any, keys: Sequence[bytes], body: bytes) -> bool:
    """True when ``sig`` is the hex HMAC of ``body`` under one of ``keys``; compared as
    bytes (``hmac.compare_digest`` raises on non-ASCII text)."""
    if not isinstance(sig, str) or not _HEX_SIG.fullmatch(sig):
        return False
    given = sig.encode("ascii")
    ok = False
    for key in keys:  # every key is tried: the time taken does not tell which one matched
        ok |= hmac.compare_digest(given, hmac.new(key, body, hashlib.sha256).hexdigest().encode())
    return ok


def decode(payload: bytes, topic: Topic, *, key: bytes | Sequence[bytes] | None = None,
           require_signature: bool = False, dedup: Deduplicator | None = None,
           recent: RecentPayloads | None = None, domain: str = "",
           trust: TrustStore | None = None, require_node_signature: bool = False,
           max_bytes: int = DEFAULT_MAX_BYTES) -> Message:
    """Check and decode one untrusted payload received on ``topic``: the trust boundary.

    ``key``: the link key (or keys, during a rotation: any may verify) that signs messages on
    this topic (a present ``sig`` must verify); ``require_signature``: refuse unsigned
    messages (state-changing traffic on a keyed link); ``dedup``: the replay window of signed
    messages, kept per ``domain`` (the name of the key) and sender, so only a holder of that
    key can move it; ``recent``: drops redeliveries of unsigned messages by their bytes
    (unsigned traffic never touches ``dedup``). ``trust``: the network's public identity keys,
    to verify a ``nodesig`` (without it, a ``nodesig`` is not checked, nor trusted);
    ``require_node_signature``: refuse a message without a valid one (heralds, and what
    ``qnode status`` shows). Raises :class:`MessageRejected` and nothing else, whatever the
    bytes.
    """
    where = str(topic)
    if len(payload) > max_bytes:
        raise MessageRejected("oversized", f"{len(payload)} bytes > {max_bytes}", topic=where)
    env = parse_json(payload, topic=where)
    if not isinstance(env, dict):
        raise MessageRejected("bad_envelope", f"a message is a JSON object, got "
                                              f"{type(env).__name__}", topic=where)
    unknown = sorted(set(env) - _ENVELOPE_KEYS)
    if unknown:
        raise MessageRejected("bad_envelope", f"unknown field {unknown[0][:40]!r}", topic=where)
    v = _field(env, "v", (int,), where)
    if v != SCHEMA_VERSION:
        raise MessageRejected("bad_version", f"schema version {v}, this node speaks "
                                             f"{SCHEMA_VERSION}", topic=where)
    mtype = _field(env, "type", (str,), where)
    sender = _field(env, "sender", (str,), where)
    msg_id = _field(env, "id", (int,), where)
    ts = _field(env, "ts", (int, float), where)
    body = _field(env, "body", (dict,), where)
    if not _TYPE.fullmatch(mtype):
        raise MessageRejected("bad_envelope", f"type {mtype[:40]!r} is not a message type",
                              topic=where)
    if not _SENDER.fullmatch(sender):
        raise MessageRejected("bad_envelope", f"sender {sender[:40]!r} is not a node name",
                              topic=where)
    if not 0 <= msg_id <= MAX_ID or not math.isfinite(ts):
        raise MessageRejected("bad_envelope", f"id {msg_id} or ts {ts} out of range", topic=where)
    # The node segment names the publisher, except on `cmd`, where it names the addressee.
    if topic.kind != "cmd" and sender != topic.node:
        raise MessageRejected("sender_mismatch", f"sender {sender!r} published under node "
                                                 f"{topic.node!r}", topic=where)
    keys: Sequence[bytes] = (key,) if isinstance(key, bytes) else tuple(key or ())
    sig, nodesig = env.get("sig"), env.get("nodesig")
    if trust is None:
        nodesig = None  # not checking identities: an identity signature is not trusted either
    # what a signature covers, encoded once and only for a message that carries one
    signed_bytes = (canonical({k: val for k, val in env.items() if k not in _SIGNATURE_KEYS})
                    if sig is not None or nodesig is not None else b"")
    if nodesig is None:
        if require_node_signature:
            raise MessageRejected("unsigned", f"{mtype} from {sender} must carry {sender}'s "
                                              f"identity signature", topic=where)
    elif sender not in trust:  # type: ignore[operator]  # trust is set when nodesig is
        raise MessageRejected("bad_signature", f"{mtype} from {sender}: no public identity key "
                                               f"for {sender}", topic=where)
    elif not trust.verify(sender, signed_bytes, nodesig):  # type: ignore[union-attr]
        raise MessageRejected("bad_signature", f"{mtype} from {sender} id {msg_id}: the "
                                               f"identity signature does not verify",
                              topic=where)
    if sig is None:
        if require_signature and nodesig is None:
            raise MessageRejected("unsigned", f"{mtype} from {sender} must be signed",
                                  topic=where)
    else:
        if not keys:
            raise MessageRejected("bad_signature", f"signed {mtype} from {sender}, but no key "
                                                   f"for this link", topic=where)
        if not _verify(sig, keys, signed_bytes):
            raise MessageRejected("bad_signature", f"{mtype} from {sender} id {msg_id}: the "
                                                   f"signature does not verify", topic=where)
    if nodesig is not None:
        domain = f"@{sender}"  # the sender's own key: only the sender moves this window
    if (sig is not None or nodesig is not None) and dedup is not None:
        seen = dedup.check(f"{domain}{DOMAIN_SEPARATOR}{sender}", msg_id)
        if seen is not None:
            raise MessageRejected(seen, f"{mtype} from {sender} id {msg_id} was already "
                                        f"received" if seen == "duplicate" else
                                        f"{mtype} from {sender} id {msg_id} is older than the "
                                        f"replay window", topic=where)
    elif sig is None and nodesig is None and recent is not None and not recent.first(payload):
        raise MessageRejected("duplicate", f"unsigned {mtype} from {sender} id {msg_id} was "
                                           f"already received", topic=where)
    return Message(mtype, sender, msg_id, body, float(ts), v, sig is not None,
                   nodesig is not None)
