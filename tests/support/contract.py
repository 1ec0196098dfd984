"""The MQTT contract as a test oracle: :func:`validate_message` checks a message seen on the bus
against the AsyncAPI document (docs/integrators/asyncapi.yaml, what integrators read), so an
integration test can assert that whatever a node publishes is what the contract says::

    from support.contract import validate_message
    envelope = validate_message(topic, payload)      # ContractError if it is not

It uses the committed document, not the code that generated it (tests/docs/test_asyncapi.py
keeps the two equal): the topic must be one of the document's channel addresses, the envelope's
``type`` one of that channel's messages, and the envelope with its body valid against that
message's payload schema (JSON Schema draft-07). Beyond the schemas it checks the rules the
document states in prose: a payload is a JSON object of at most 1 MiB without NaN or Infinity,
and its ``sender`` is the topic's node segment (but on ``cmd``, whose segment is the
addressee).

:class:`ContractTap` applies it to a whole run: an MQTT client of its own that judges every
message the daemons under test publish (``Mosquitto.tap`` starts one and checks it when the
broker's ``with`` block ends).
"""
from __future__ import annotations

import collections
import contextlib
import copy
import functools
import itertools
import json
import os
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from support import REPO

DOCUMENT = REPO / "docs" / "integrators" / "asyncapi.yaml"
MAX_BYTES = 1 << 20
#: a topic segment (what a channel parameter matches)
_SEGMENT = "[A-Za-z0-9_-]{1,64}"
#: the channel whose node segment names the addressee, not the publisher
_ADDRESSED = "cmd"


class ContractError(AssertionError):
    """A message that breaks the contract; the message says where and why."""


@dataclass(frozen=True)
class ChannelMatch:
    """The channel a topic belongs to, and the values of its parameters."""

    key: str
    address: str
    parameters: dict[str, str]
    publisher: str | None     # the segment that names the publisher (None on ``cmd``)


@functools.cache
def document(path: Path = DOCUMENT) -> dict[str, Any]:
    """The AsyncAPI document (parsed once)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml's when it is there
    with path.open(encoding="utf-8") as f:
        doc = yaml.load(f, Loader=loader)
    if not isinstance(doc, dict) or not str(doc.get("asyncapi", "")).startswith("3."):
        raise ContractError(f"{path} is not an AsyncAPI 3 document")
    return doc


def resolve(ref: Mapping[str, Any], doc: Mapping[str, Any] | None = None) -> Any:
    """The target of a local ``{"$ref": "#/..."}`` (anything else is returned as is)."""
    if "$ref" not in ref:
        return ref
    target: Any = document() if doc is None else doc
    pointer = str(ref["$ref"])
    if not pointer.startswith("#/"):
        raise ContractError(f"only local references are followed, got {pointer!r}")
    for part in pointer[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target


@functools.cache
def _addresses() -> tuple[tuple[re.Pattern[str], str, str], ...]:
    """(address pattern, channel key, address) of every channel."""
    out = []
    for key, channel in document()["channels"].items():
        address = channel["address"]
        pattern = re.escape(address)
        for name in re.findall(r"\{(\w+)\}", address):
            pattern = pattern.replace(re.escape(f"{{{name}}}"), f"(?P<{name}>{_SEGMENT})")
        out.append((re.compile(pattern), key, address))
    return tuple(out)


def channel_of(topic: str) -> ChannelMatch:
    """The channel of ``topic``; ContractError if it is none of the document's."""
    found = [(key, address, m.groupdict()) for pattern, key, address in _addresses()
             if (m := pattern.fullmatch(topic))]
    if len(found) != 1:
        raise ContractError(f"topic {topic!r} is {'on no' if not found else 'on several'} "
                            f"channel(s) of the AsyncAPI document")
    key, address, params = found[0]
    first = re.findall(r"\{(\w+)\}", address)[1]   # qnet/v1/{network}/{<publisher>}/...
    return ChannelMatch(key, address, params, None if key == _ADDRESSED else params[first])


@functools.cache
def _validator(message_key: str) -> jsonschema.Draft7Validator:
    message = document()["components"]["messages"][message_key]
    payload = message["payload"]
    if not str(payload.get("schemaFormat", "")).endswith("version=draft-07"):
        raise ContractError(f"message {message_key}: payload is not JSON Schema draft-07")
    schema = payload["schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def message_schema(topic: str, mtype: str) -> dict[str, Any]:
    """The payload schema (envelope and body) of a ``mtype`` message on ``topic`` (a copy)."""
    key = _message_key(channel_of(topic), mtype)
    return copy.deepcopy(document()["components"]["messages"][key]["payload"]["schema"])


def _message_key(match: ChannelMatch, mtype: Any) -> str:
    channel = document()["channels"][match.key]
    if not isinstance(mtype, str) or mtype not in channel["messages"]:
        raise ContractError(f"type {mtype!r} is not a message of channel {match.key!r} "
                            f"({match.address}): {sorted(channel['messages'])}")
    ref = channel["messages"][mtype]["$ref"]
    return str(ref.rsplit("/", 1)[1])


def _no_constant(name: str) -> Any:
    raise ContractError(f"payload has {name}, which is not JSON")


def _parse(payload: bytes | str | Mapping[str, Any]) -> Any:
    if isinstance(payload, Mapping):
        try:   # as it would travel: tuples become lists; NaN and Infinity are refused
            text = json.dumps(payload, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise ContractError(f"payload is not JSON: {exc}") from None
        payload = text
    data = payload.encode() if isinstance(payload, str) else bytes(payload)
    if len(data) > MAX_BYTES:
        raise ContractError(f"payload of {len(data)} bytes, over {MAX_BYTES}")
    try:
        return json.loads(data, parse_constant=_no_constant)
    except ValueError as exc:
        raise ContractError(f"payload is not JSON: {exc}") from None


def validate_message(topic: str, payload: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """Check one message (``payload``: its bytes, or the envelope as a mapping) published on
    ``topic`` against the AsyncAPI document; returns the envelope, ContractError (an
    AssertionError naming the topic, the message type and every violation) if it breaks the
    contract."""
    match = channel_of(topic)
    env = _parse(payload)
    if not isinstance(env, dict):
        raise ContractError(f"{topic}: payload is a JSON {type(env).__name__}, not an object")
    mtype = env.get("type")
    validator = _validator(_message_key(match, mtype))
    errors = sorted(validator.iter_errors(env), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'.'.join(str(p) for p in e.absolute_path) or '(envelope)'}: "
                 f"{e.message[:200]}" for e in errors]
        raise ContractError(f"{topic}: {mtype} breaks the contract:\n  " + "\n  ".join(lines))
    if match.publisher is not None and env["sender"] != match.publisher:
        raise ContractError(f"{topic}: sender {env['sender']!r} is not the topic's publisher "
                            f"{match.publisher!r}")
    return env


# ------------------------------------------------------------------------------ the tap

#: what a tap keeps of a violating payload (its first bytes)
_PAYLOAD_HEAD = 300
_tap_ids = itertools.count(1)


@dataclass(frozen=True)
class Violation:
    """One message a tap found that breaks the contract."""

    topic: str
    mtype: str
    error: str
    retained: bool
    payload_head: bytes

    def __str__(self) -> str:
        flag = " (retained)" if self.retained else ""
        return (f"{self.topic} [{self.mtype}]{flag}: {self.error}\n"
                f"    payload: {self.payload_head!r}")


class ContractTap:
    """An MQTT client of its own on the broker that checks, with :func:`validate_message`, every
    message the system under test publishes on ``network``::

        tap = ContractTap(broker.port, network="t", publishers=("alice", "bob"))
        ...                                    # the daemons run, the test does its work
        tap.assert_clean()                     # every message they published met the contract
        tap.close()

    It subscribes to ``qnet/v1/#`` at QoS 1 (retained messages included) with a persistent
    session, so that it misses nothing across a broker restart, and judges only what the system
    under test produced: a message whose publisher segment (``qnet/v1/<network>/<publisher>/...``;
    on ``cmd``, whose segment is the addressee, the envelope's ``sender``) is one of
    ``publishers`` (node ids, or a callable returning them when the network's nodes are known
    only later; None: every publisher). What a test injects under other names, hostile or not,
    is not judged; what it forges under a node's name it opts out with :meth:`ignore`.

    It keeps counts per (channel, message type) and the first ``keep`` violations (memory is
    bounded however long the run). :meth:`assert_clean` first makes sure the broker has
    delivered everything published so far (a marker message of its own, on its own
    ``to/`` topic, must come back), then fails listing the violations, or when it judged no
    message at all. ``tls``: an SSL context for a TLS listener (then ``name``, the client id and
    the prefix of the marker topic, is the certificate's common name, for the broker's ACL).
    """

    def __init__(self, port: int, *, network: str,
                 publishers: Iterable[str] | Callable[[], Iterable[str]] | None = None,
                 host: str = "127.0.0.1", tls: ssl.SSLContext | None = None,
                 name: str | None = None, keep: int = 20, persistent: bool = True,
                 connect_timeout_s: float = 30.0):
        import paho.mqtt.client as mqtt

        self.network = network
        self.name = name or f"contract-tap-{os.getpid()}-{next(_tap_ids)}"
        self.marker_topic = f"qnet/v1/{network}/{self.name}/to/{self.name}"
        self._publishers = publishers
        self._fixed = None if publishers is None or callable(publishers) else frozenset(
            publishers)
        self._ignored: list[str | Callable[[str, bytes], bool]] = []
        self.keep = keep
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.skipped: collections.Counter[str] = collections.Counter()
        self.violations: list[Violation] = []
        self.violations_total = 0
        self.retained_judged = 0
        self.problems: list[str] = []         # the tap's own trouble (refused, denied, ...)
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._marker_seen: set[str] = set()
        self._marker_cond = threading.Condition(self._lock)
        self.closed = False
        self._wildcard_mid = -1
        self._mqtt = mqtt
        client = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                           client_id=self.name, clean_session=not persistent,
                                           protocol=mqtt.MQTTv311)
        if tls is not None:
            client.tls_set_context(tls)
        client.reconnect_delay_set(min_delay=0.1, max_delay=2)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.connect_async(host, port, keepalive=30)
        client.loop_start()
        if not self._subscribed.wait(connect_timeout_s):
            self.close()
            raise AssertionError(f"contract tap: not subscribed on {host}:{port} within "
                                 f"{connect_timeout_s} s {self.problems}")

    # --------------------------------------------------------------- configuration

    def ignore(self, what: str | Callable[[str, bytes], bool]) -> ContractTap:
        """Do not judge what matches ``what``: a topic or MQTT topic filter (``+``, ``#``), or a
        predicate of (topic, payload) -- for messages a test forges under a node's name."""
        with self._lock:
            self._ignored.append(what)
        return self

    def _is_publisher(self, name: str) -> bool:
        if self._fixed is not None:
            return name in self._fixed
        if self._publishers is None:
            return name != self.name
        return name in set(self._publishers())   # type: ignore[operator]

    def _is_ignored(self, topic: str, payload: bytes) -> bool:
        for what in self._ignored:
            if isinstance(what, str):
                if self._mqtt.topic_matches_sub(what, topic):
                    return True
            elif what(topic, payload):
                return True
        return False

    # ------------------------------------------------------------------- callbacks

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            with self._lock:
                self.problems.append(f"connection refused: {reason}")
            return
        self._connected.set()
        if not flags.session_present:       # a new session: (re)subscribe
            self._wildcard_mid = client.subscribe("qnet/v1/#", qos=1)[1]

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self._connected.clear()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused and mid == self._wildcard_mid:
            with self._lock:
                self.problems.append(f"subscription to qnet/v1/# refused: {refused}")
            # a broker whose ACL refuses the wildcard: every channel the contract has, and the
            # marker topic (a message on no channel is then not seen)
            client.subscribe([(f, 1) for f in (*_channel_filters(), self.marker_topic)])
            return
        if refused:
            with self._lock:
                self.problems.append(f"{len(refused)} channel subscription(s) refused")
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            self.judge(msg.topic, bytes(msg.payload), retained=bool(msg.retain))
        except Exception as exc:  # noqa: BLE001 - a bug of the tap: said, not lost in paho
            with self._lock:
                self.problems.append(f"tap error on {msg.topic}: {exc!r}")

    # ---------------------------------------------------------------------- judging

    def judge(self, topic: str, payload: bytes, *, retained: bool = False) -> bool | None:
        """Judge one message as received: True if it meets the contract, False if it breaks
        it (kept), None if it is not the system under test's (counted in ``skipped``)."""
        if topic == self.marker_topic:
            with self._marker_cond:
                self._marker_seen.add(payload.decode(errors="replace"))
                self._marker_cond.notify_all()
            return None
        parts = topic.split("/")
        if len(parts) < 4 or parts[:3] != ["qnet", "v1", self.network]:
            return self._skip("another network")
        publisher: str | None = parts[3]
        if parts[4:] == [_ADDRESSED]:       # the segment is the addressee: the sender says who
            publisher = _sender(payload)
        with self._lock:
            if publisher is None or not self._is_publisher(publisher):
                self.skipped["not a node under test"] += 1
                return None
            if self._is_ignored(topic, payload):
                self.skipped["ignored"] += 1
                return None
        try:
            env = validate_message(topic, payload)
        except ContractError as exc:
            violation = Violation(topic, str(_type_of(payload)), str(exc), retained,
                                  payload[:_PAYLOAD_HEAD])
            with self._lock:
                self.violations_total += 1
                if len(self.violations) < self.keep:
                    self.violations.append(violation)
            return False
        with self._lock:
            self.counts[(channel_of(topic).key, str(env["type"]))] += 1
            self.retained_judged += retained
        return True

    def _skip(self, why: str) -> None:
        with self._lock:
            self.skipped[why] += 1

    # ---------------------------------------------------------------------- results

    @property
    def judged(self) -> int:
        """How many messages were judged (valid ones and violations)."""
        with self._lock:
            return sum(self.counts.values()) + self.violations_total

    def flush(self, timeout_s: float = 120.0) -> None:
        """Return once the broker has delivered to the tap everything published before the
        call (a marker of its own comes back after it); AssertionError after ``timeout_s``."""
        marker = f"marker-{uuid.uuid4().hex}"
        deadline = time.monotonic() + timeout_s
        sent_at: float | None = None
        while True:
            with self._marker_cond:
                if marker in self._marker_seen:
                    self._marker_seen.discard(marker)
                    return
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(
                    f"contract tap: its marker did not come back within {timeout_s} s "
                    f"(connected: {self._connected.is_set()}; {self.problems})")
            if not self._connected.is_set():
                sent_at = None              # lost with the connection, maybe: send it again
            elif sent_at is None or now - sent_at > 10.0:
                info = self.client.publish(self.marker_topic, marker.encode(), qos=1)
                if info.rc == self._mqtt.MQTT_ERR_SUCCESS:
                    sent_at = now
            with self._marker_cond:
                if marker not in self._marker_seen:
                    self._marker_cond.wait(0.2)

    def summary(self) -> str:
        """One line: how many messages were judged, per channel and type."""
        with self._lock:
            per = ", ".join(f"{ch}/{t} {n}" for (ch, t), n in sorted(self.counts.items()))
            valid = sum(self.counts.values())
            return (f"{valid + self.violations_total} judged, {self.violations_total} "
                    f"violating ({self.retained_judged} valid retained); {per}; not judged: "
                    f"{dict(self.skipped)}")

    def assert_clean(self, *, flush: bool = True, timeout_s: float = 120.0) -> str:
        """Fail if a judged message broke the contract, or none was judged; returns
        :meth:`summary`. ``flush``: first wait until the broker delivered what was published
        (:meth:`flush`); False when the broker is gone."""
        if flush:
            self.flush(timeout_s)
        with self._lock:
            violations, total = list(self.violations), self.violations_total
            problems = list(self.problems)
        summary = self.summary()
        if total:
            more = f"\n  ... and {total - len(violations)} more" if total > len(violations) \
                else ""
            raise AssertionError(
                f"contract tap: {total} message(s) of the system under test break the "
                f"contract (docs/integrators/asyncapi.yaml):\n  "
                + "\n  ".join(str(v) for v in violations) + more
                + f"\n({summary}; tap problems: {problems})")
        if self.judged == 0:
            raise AssertionError(f"contract tap: no message of the system under test was "
                                 f"judged, so nothing was checked ({summary}; tap problems: "
                                 f"{problems})")
        return summary

    def wait_disconnected(self, timeout_s: float) -> bool:
        """Wait until the broker has closed the connection (everything it sent before is
        judged by then); False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self._connected.is_set():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        """Disconnect (idempotent)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> ContractTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def _channel_filters() -> tuple[str, ...]:
    """A topic filter per channel of the document (each parameter a ``+``)."""
    return tuple(re.sub(r"\{\w+\}", "+", ch["address"])
                 for ch in document()["channels"].values())


def _envelope(payload: bytes) -> dict[str, Any] | None:
    try:
        env = json.loads(payload)
    except ValueError:
        return None
    return env if isinstance(env, dict) else None


def _sender(payload: bytes) -> str | None:
    sender = (_envelope(payload) or {}).get("sender")
    return sender if isinstance(sender, str) else None


def _type_of(payload: bytes) -> Any:
    return (_envelope(payload) or {}).get("type", "?")
