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
"""
from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping
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
