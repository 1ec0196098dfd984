"""The application protocol's messages (qnode.daemon.apps.protocol, .peer): each one's JSON
Schema is a valid draft 2020-12 schema, messages survive JSON both ways, and hostile bodies are
refused with the field named, never accepted or raised as anything but ValueError."""
from __future__ import annotations

import json
import math

import jsonschema
import pytest
from hypothesis import given, settings, strategies as st

from qnode.daemon.apps.peer import PEER_TYPES, Give, Listeners
from qnode.daemon.apps.protocol import (
    REPLY_TYPES,
    REQUEST_TYPES,
    Error,
    ErrorCode,
    Pair,
    Request,
    message_schema,
    parse_reply,
    parse_request,
)

ALL = [*REQUEST_TYPES.values(), *REPLY_TYPES.values(), *PEER_TYPES.values()]
EXAMPLES = [
    Request("r-1", "bob", 5, 7, min_fidelity=0.9, timeout_s=3.0, priority=2),
    Error(ErrorCode.NO_LISTENER, "nobody listens", "r-1", 0),
    Pair("alice-bob", 12, "bob", 7, "psi+", 0.93, "keep", "r-1", 3, 1000, index=1),
    Give("alice-bob", 12, "alice", "keyapp", "r-1", 7, 1, False),
    Listeners("alice-bob", {"7": "keyapp"}),
]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.TYPE)
def test_every_schema_is_valid_and_closed(cls):
    schema = message_schema(cls)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False and "type" in schema["required"]
    assert all(p.get("description") for k, p in schema["properties"].items() if k != "type")


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: m.TYPE)
def test_messages_survive_json_both_ways(msg):
    d = json.loads(json.dumps(msg.to_dict()))
    assert type(msg).from_dict(d) == msg


def test_requests_and_replies_parse_by_type_and_refuse_the_wrong_direction():
    body = {"type": "REQUEST", "request_id": "a", "remote": "bob", "pairs": 2.0, "purpose": 1}
    r = parse_request(body)
    assert isinstance(r, Request) and r.pairs == 2 and isinstance(r.pairs, int)
    with pytest.raises(ValueError, match="type: expected one of"):
        parse_reply(body)
    assert parse_reply(EXAMPLES[1].to_dict()) == EXAMPLES[1]


@pytest.mark.parametrize("body, where", [
    ({"remote": "bob", "pairs": 1, "purpose": 1}, "'request_id' is a required property"),
    ({"request_id": "a b", "remote": "bob", "pairs": 1, "purpose": 1}, "REQUEST.request_id"),
    ({"request_id": "a", "remote": "bo.b", "pairs": 1, "purpose": 1}, "REQUEST.remote"),
    ({"request_id": "a", "remote": "bob", "pairs": 0, "purpose": 1}, "REQUEST.pairs"),
    ({"request_id": "a", "remote": "bob", "pairs": True, "purpose": 1}, "REQUEST.pairs"),
    ({"request_id": "a", "remote": "bob", "pairs": 1, "purpose": 70000}, "REQUEST.purpose"),
    ({"request_id": "a", "remote": "bob", "pairs": 1, "purpose": 1, "timeout_s": 0},
     "REQUEST.timeout_s"),
    ({"request_id": "a", "remote": "bob", "pairs": 1, "purpose": 1, "min_fidelity": math.nan},
     "REQUEST.min_fidelity"),
    ({"request_id": "a", "remote": "bob", "pairs": 1, "purpose": 1, "extra": 1},
     "'extra' was unexpected"),
    ({"request_id": "x" * 100_000, "remote": "bob", "pairs": 1, "purpose": 1},
     "REQUEST.request_id"),
])
def test_a_bad_request_is_refused_naming_the_field(body, where):
    with pytest.raises(ValueError, match=where.replace(".", r"\.").replace("(", r"\(")) as e:
        parse_request({"type": "REQUEST", **body})
    assert len(str(e.value)) <= 400


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                         max_size=4),
                    max_leaves=20))
def test_anything_is_parsed_or_refused_with_a_value_error(body):
    for kind in ("REQUEST", "CANCEL", "LISTEN"):
        try:
            parse_request({**body, "type": kind} if isinstance(body, dict) else body)
        except ValueError:
            pass
