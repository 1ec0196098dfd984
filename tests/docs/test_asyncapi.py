"""The AsyncAPI document (docs/integrators/asyncapi.yaml) cannot drift from the code: it is what
docs/gen_asyncapi.py renders, it carries every message type of the link layer and of the
application protocol, every topic kind of qnode.daemon.bus.topics is a channel whose parameters
are declared, and every operation names its channel's messages. The contract helper
(tests/support/contract.py) accepts real messages as the node encodes them and refuses what
breaks the contract. (The official AsyncAPI CLI validates the document in
tests/static_checks.sh.)"""
from __future__ import annotations

import functools
import importlib.util
import re
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from qnode.daemon.apps.peer import PEER_TYPES, Give, Listeners
from qnode.daemon.apps.protocol import (
    DATA_TYPES,
    REPLY_TYPES,
    REQUEST_TYPES,
    Done,
    Error,
    ErrorCode,
    Operate,
    Pair,
    Request,
    Result,
    message_schema as app_message_schema,
)
from qnode.daemon.bus import tagwire, telemetry
from qnode.daemon.bus.envelope import Message, decode, encode
from qnode.daemon.bus.identity import NodeSigner
from qnode.daemon.bus.topics import ARG_KINDS, NODE_KINDS, Topic, Topics, parse_topic
from qnode.daemon.linklayer.messages import (
    MESSAGE_TYPES,
    Ack,
    Create,
    Err,
    ErrCode,
    Expire,
    Herald,
    HeraldEntry,
    Ok,
    Purify,
    SwapResult,
)
from qnode.daemon.qkd.messages import message_schemas as key_message_schemas
from qnode.daemon.routing.advert import LinkAdvert, TopologyAdvert
from qnode.native import tag_block

from support import REPO
from support.contract import (
    ContractError,
    channel_of,
    document,
    message_schema,
    resolve,
    validate_message,
)

DOCS = REPO / "docs"
DOCUMENT = DOCS / "integrators" / "asyncapi.yaml"
KEY = b"k" * 32


@functools.cache
def _gen() -> ModuleType:
    """docs/gen_asyncapi.py, imported by path (docs/ is not a package)."""
    name = "qnode_docs_gen_asyncapi"
    spec = importlib.util.spec_from_file_location(name, DOCS / "gen_asyncapi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module     # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


@functools.cache
def _doc() -> dict[str, Any]:
    return yaml.load(DOCUMENT.read_text(encoding="utf-8"),
                     Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


# --------------------------------------------------------------------------- drift

def test_the_document_is_what_the_generator_renders() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == _gen().render(), (
        "docs/integrators/asyncapi.yaml is stale: run .venv/bin/python docs/gen_asyncapi.py")
    assert _gen().main(["--check"]) == 0


def test_check_mode_fails_on_a_stale_document(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "asyncapi.yaml"
    stale.write_text(_gen().render().replace("qnode MQTT contract", "old"), encoding="utf-8")
    monkeypatch.setattr(_gen(), "DOCUMENT", stale)
    assert _gen().main(["--check"]) == 1
    monkeypatch.setattr(_gen(), "DOCUMENT", tmp_path / "missing.yaml")
    assert _gen().main(["--check"]) == 1


def test_the_yaml_reads_back_as_the_generated_data() -> None:
    """No YAML 1.1 surprise (a "Y" basis read as a boolean, an epoch as a number, ...)."""
    assert _doc() == _gen().build()
    assert _doc()["asyncapi"] == "3.0.0"


# --------------------------------------------------------------------------- completeness

def _payload(message_key: str) -> dict[str, Any]:
    payload = _doc()["components"]["messages"][message_key]["payload"]
    assert payload["schemaFormat"] == "application/schema+json;version=draft-07"
    return payload["schema"]


def test_every_message_type_is_a_message_of_one_channel() -> None:
    messages = _doc()["components"]["messages"]
    on_channels = [m for c in _doc()["channels"].values() for m in c["messages"]]
    assert len(on_channels) == len(set(on_channels)) == len(messages)
    expected = [*MESSAGE_TYPES, *REQUEST_TYPES, *REPLY_TYPES, *PEER_TYPES, *DATA_TYPES, "TAGS",
                *key_message_schemas(), "status", "telemetry", "TOPO"]
    assert sorted(messages) == sorted(expected)
    for mtype in expected:
        assert mtype in on_channels, mtype
        schema = _payload(mtype)
        assert schema["properties"]["type"]["const"] == mtype
        assert schema["required"] == ["v", "type", "sender", "id", "ts", "body"]
        assert schema["additionalProperties"] is False


@pytest.mark.parametrize("mtype", sorted(MESSAGE_TYPES))
def test_link_layer_bodies_are_the_message_classes(mtype: str) -> None:
    from qnode.daemon.linklayer.schema import message_schema
    body = _payload(mtype)["properties"]["body"]
    want = message_schema(MESSAGE_TYPES[mtype])
    assert body == {k: v for k, v in want.items() if k != "$schema"}


@pytest.mark.parametrize("mtype", [*REQUEST_TYPES, *REPLY_TYPES, *PEER_TYPES, *DATA_TYPES])
def test_application_bodies_are_the_message_classes(mtype: str) -> None:
    cls = {**REQUEST_TYPES, **REPLY_TYPES, **PEER_TYPES, **DATA_TYPES}[mtype]
    body = _payload(mtype)["properties"]["body"]
    want = app_message_schema(cls)
    assert list(body["properties"]) == list(want["properties"])
    for name, prop in want["properties"].items():
        if name != "type":
            assert body["properties"][name] == prop, (mtype, name)
    # applications may leave "type" out of what they send; the node always writes it
    assert ("type" in body["required"]) == (mtype not in REQUEST_TYPES | DATA_TYPES)


def test_the_telemetry_body_follows_the_typed_dicts() -> None:
    body = _payload("telemetry")["properties"]["body"]
    assert set(body["properties"]) == set(telemetry.Telemetry.__annotations__)
    assert body["required"] == ["node", "roles", "t", "uptime_s"]
    links = body["properties"]["links"]["additionalProperties"]["properties"]
    assert set(links) >= set(telemetry.QberTelemetry.__annotations__)
    assert set(links) >= set(telemetry.LinkTelemetry.__annotations__)
    assert links["type"]["enum"] == ["K", "M", None]
    apps = body["properties"]["apps"]["properties"]
    assert apps["request_done_seconds"]["required"] == ["buckets", "count", "sum"]


def test_every_payload_schema_is_json_schema_draft07() -> None:
    for key in _doc()["components"]["messages"]:
        jsonschema.Draft7Validator.check_schema(_payload(key))


def test_each_channel_declares_its_parameters() -> None:
    declared = _doc()["components"]["parameters"]
    for key, channel in _doc()["channels"].items():
        in_address = re.findall(r"\{(\w+)\}", channel["address"])
        assert in_address[0] == "network", key
        assert list(channel.get("parameters", {})) == in_address, key
        for name, ref in channel["parameters"].items():
            assert ref == {"$ref": f"#/components/parameters/{name}"}
            assert declared[name]["description"], name
    used = {p for c in _doc()["channels"].values() for p in c["parameters"]}
    assert used == set(declared)
    assert {"network", "node", "peer", "link", "application"} <= used


def _topic(kind: str) -> str:
    return str(Topic("lab", "alice", kind, None if kind in NODE_KINDS else "x-1"))


@pytest.mark.parametrize("kind", [*NODE_KINDS, *ARG_KINDS])
def test_every_topic_kind_is_a_channel(kind: str) -> None:
    assert kind in _doc()["channels"]
    match = channel_of(_topic(kind))
    assert match.key == kind
    assert match.parameters["network"] == "lab"


def test_the_node_topics_are_their_channels() -> None:
    t = Topics("lab", "alice")
    for topic, kind in ((t.status, "status"), (t.telemetry, "telemetry"), (t.topo, "topo"),
                        (t.cmd, "cmd"),
                        (t.reply("prog"), "reply"), (t.herald("ab"), "herald"),
                        (t.tags("m"), "tags"), (t.app("keyapp"), "app"),
                        (t.requests_to("bob"), "req"), (t.svc("bob"), "svc"),
                        (t.to("bob-app"), "to"),
                        (t.ll("bob"), "ll"), (t.proto("bob"), "proto")):
        assert channel_of(topic).key == kind == parse_topic(topic).kind
    assert channel_of(t.requests_to("bob")).parameters == {
        "network": "lab", "application": "alice", "node": "bob"}
    for sub in t.subscriptions({"ab": "station"}):
        assert re.fullmatch(r"qnet/v1/lab/(\+|\w+)/\w+(/\w+)?", sub)


def test_operations_name_their_channels_messages() -> None:
    doc = _doc()
    operated = set()
    for op_id, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), op_id
        channel_ref = op["channel"]["$ref"]
        channel = resolve(op["channel"], doc)
        assert op["messages"], op_id
        for ref in op["messages"]:
            assert ref["$ref"].startswith(channel_ref + "/messages/"), op_id
            assert resolve(ref, doc)["$ref"].startswith("#/components/messages/")
        operated.add(channel_ref.rsplit("/", 1)[1])
        assert op["bindings"]["mqtt"]["qos"] in (0, 1)
        if "reply" in op:
            assert op["action"] == "receive"
            reply_ref = op["reply"]["channel"]["$ref"]
            for ref in op["reply"]["messages"]:
                assert ref["$ref"].startswith(reply_ref + "/messages/"), op_id
        assert channel is doc["channels"][channel_ref.rsplit("/", 1)[1]]
    # every channel but the applications' own (nodes neither send nor read DATA)
    assert operated == set(doc["channels"]) - {"to"}
    actions = {(op["channel"]["$ref"].rsplit("/", 1)[1], op["action"])
               for op in doc["operations"].values()}
    # a node receives what applications and programs send, and answers them
    assert {("req", "receive"), ("app", "send"), ("cmd", "receive"),
            ("reply", "send")} <= actions
    assert ("req", "send") not in actions and ("app", "receive") not in actions


# --------------------------------------------------------------------------- the contract helper

SIGNER = NodeSigner.generate()
_ids = iter(range(1, 10**6))


def _wire(topic: str, mtype: str, body: dict[str, Any], sender: str | None = None, *,
          key: bytes | None = None, signed: bool = False) -> tuple[str, bytes]:
    sender = sender or topic.split("/")[3]
    payload = encode(Message(mtype, sender, next(_ids), body, time.time()), key,
                     signer=SIGNER if signed else None)
    return topic, payload


def _telemetry_record() -> dict[str, Any]:
    record: dict[str, Any] = {
        "v": 1, "node": "alice", "roles": ["memory"], "t": 1765000000.5, "uptime_s": 12.0,
        "state": "ready", "instruments": {"qd": {"kind": "qdevice", "state": "ready",
                                                 "errors_total": 0}},
        "singles_hz": {"1": 1e5}, "tags_total": 10, "memory_used": 3, "memory_capacity": 100,
        "links": {"ab": {"type": "K", "peer": "bob", "role": "end", "expected_seq": 4312,
                         "herald_rate_hz": 1000.0, "station_epoch": "18f3a1b2c3d4e5f6",
                         "epoch_agreed": True, "qber_x": 0.02, "qber_x_raw": -0.01,
                         "tests_per_basis": [3, 4, 5], "fidelity_sigma": None,
                         "purify_role": "leader", "tracker_state": "LOCKED"}},
        "paths": {"a-c": {"role": "repeater", "ends": ["alice", "carol"],
                          "bsm_outcomes": {"01": 2}, "fidelity_estimate": 0.85}},
        "g2": {"bin_ps": 100, "first_bin_ps": -5000, "counts": [0, 1, 2]},
        "link_rejected": {"bad_body": 1},
        "bus": {"published": 10, "connected": True, "rejected": {"duplicate": 2},
                "disconnected_s": 0.0},
        "apps": {"requests_live": 1, "listening": {"7": "keyapp"},
                 "request_done_seconds": {"buckets": {"0.1": 1, "+Inf": 2}, "count": 2,
                                          "sum": 0.7}},
    }
    telemetry.validate(record)
    assert telemetry.unknown_fields(record) == []
    return record


def _tags_body() -> dict[str, Any]:
    block = tag_block([1000, 1700, 2050, 90_000], [1, 2, 3, 4])
    return tagwire.encode(block, link="m-ab", chunk=3, extra={
        "t_end_ps": 100_000, "outcome_channels": [[1, 2], [3, 4]], "bases": ["Z", "X"],
        "angles_deg": [0.0, 22.5]})


HERALD = Herald.from_entries("ab", 12, (HeraldEntry(4000, "psi+", 1_000_000),
                                        HeraldEntry(4001, "psi-", 1_700_000)),
                             epoch="18f3a1b2c3d4e5f6", lap=0, start=0)
OK = Ok(7, "ab", 4312, "psi+", 0.93, 7, "bob", goodness_time_ps=1_000_000, qubit=1, hold_ms=87)
N = "qnet/v1/lab"


def _key_bodies() -> list[tuple[str, str, dict[str, Any]]]:
    """(type, topic kind, body) of every key-link message, as the two ends' code makes them:
    a block of 2¹⁴ sifted bits planned for 1 % that holds 5 %, so that chunks fail and the
    leader reveals."""
    import numpy as np

    from qnode.daemon.bus import timewire
    from qnode.daemon.qkd import estimate
    from qnode.daemon.qkd.block import BlockFollower, BlockLeader, KeyParams
    from qnode.daemon.qkd.session import KeyFollower, KeyLeader

    rng = np.random.default_rng(5)
    n = 1 << 15
    bases = rng.integers(0, 2, n).astype(np.uint8)
    bits = rng.integers(0, 2, n).astype(np.uint8)
    theirs = bits ^ (rng.random(n) < 0.05).astype(np.uint8)
    index = np.arange(n, dtype=np.int64) * 3
    lead = KeyLeader(1 << 14)
    follow = KeyFollower(lambda i: (bases[i // 3], theirs[i // 3]), (False, False),
                         max_pending_bits=1 << 16)
    sift = lead.sift(index, bases, bits)
    sifted = follow.on_sift(sift)
    lead.on_sifted(sifted)
    start, block = lead.next_block()
    sample, rest = estimate.split(block, 1024)
    sample_msg = {"session": str(lead.session), "start": start, "n": block.n,
                  "block": str(block.block_id), **estimate.sample_message(sample)}
    f_sample, f_rest = estimate.split(follow.block(sample_msg), 1024)
    sampled = {"block": str(block.block_id), **estimate.compare(f_sample, sample_msg)}
    params = KeyParams(min_bits=1000)
    leader, follower = BlockLeader(rest, params, 0.01), BlockFollower(f_rest, params)
    offer, _ = leader.offer()
    out = [("TIMES", "tags", timewire.encode(np.array([5, 900, 7000]), link="m-ab", chunk=2,
                                             t_end_ps=8000, extra={"first_index": 40})),
           ("SIFT", "key", sift), ("SIFTED", "key", sifted), ("KEY_SAMPLE", "key", sample_msg),
           ("KEY_SAMPLED", "key", sampled), ("KEY_OFFER", "key", offer)]
    reply, _ = follower.on_offer(offer)
    while True:
        out.append(("KEY_REPLY", "key", reply))
        kind, body, _ = leader.on_reply(reply)
        out.append(("KEY_REVEAL" if kind == "reveal" else "KEY_FINISH", "key", body))
        if kind == "finish":
            break
        reply, _ = follower.on_reveal(body)
    out.append(("KEY_FINISH", "key", {"block": str(block.block_id),
                                      "abort": "qber_above_threshold"}))
    # the store round of qnode.daemon.roles.key_link
    out += [(t, "key", {"block": str(block.block_id)}) for t in ("KEY_STORED", "KEY_COMMIT")]
    assert {t for t, _, _ in out} == set(key_message_schemas()), "a message never made"
    return out


#: the key messages the streaming analyzer (analyzer-b, the follower) sends; the rest are the
#: counter's (analyzer-a, the leader)
_FOLLOWER_SENDS = ("TIMES", "SIFTED", "KEY_SAMPLED", "KEY_REPLY", "KEY_STORED")


def _good() -> list[tuple[str, bytes]]:
    return [
        *(_wire(f"{N}/analyzer-{'b' if t in _FOLLOWER_SENDS else 'a'}/{kind}/m-ab", t, body,
                key=KEY) for t, kind, body in _key_bodies()),
        _wire(f"{N}/alice/status", "status", {"state": "starting", "roles": ["memory"]},
              signed=True),
        _wire(f"{N}/alice/status", "status", {"state": "ready", "roles": ["memory"],
                                              "links": ["ab"]}, signed=True),
        _wire(f"{N}/alice/status", "status", {"state": "offline"}, signed=True),
        _wire(f"{N}/alice/telemetry", "telemetry", _telemetry_record(), signed=True),
        _wire(f"{N}/alice/topo", "TOPO", TopologyAdvert(time.time(), 6.0, (
            LinkAdvert("alice-bob", "bob", "up", 0.93, 0.002, 240.0, 1, 2),
            LinkAdvert("alice-r", "r", "degraded", 0.9, None, 0.0, 2, 2))).to_dict(),
            signed=True),
        _wire(f"{N}/alice/cmd", "CREATE", Create("alice", 0.9, 0, 7, 10).to_dict(), "prog"),
        _wire(f"{N}/source/cmd", "CREATE", Create("bob", 0.5, 10, 1, 1, tpe="M").to_dict(),
              "prog", key=KEY),
        _wire(f"{N}/alice/reply/prog", "ACK", Ack(7).to_dict()),
        _wire(f"{N}/alice/reply/prog", "OK", OK.to_dict()),
        _wire(f"{N}/alice/reply/prog", "ERR", Err(None, ErrCode.EXPIRE, "ab", 1, 5,
                                                  "bob").to_dict()),
        _wire(f"{N}/station/herald/ab", "HERALD", HERALD.to_dict("zlib"), key=KEY,
              signed=True),
        _wire(f"{N}/alice/ll/bob", "EXPIRE", Expire("ab", 1, 5, "alice", 0, 0).to_dict(),
              key=KEY),
        _wire(f"{N}/rep/ll/alice", "SWAP_RES", SwapResult(
            "a-c", 1, "a-rep", 5, "rep-c", 9, "phi+", "psi-", "phi+", (0.9, 0.05, 0.03, 0.02),
            (0.02, 0.03, 0.05, 0.9), 0.002, 0.001, 0.004, 0.01, 0.5, 0.4, 0.999, 0.995,
            1765000000.0).to_dict(), key=KEY),
        _wire(f"{N}/alice/proto/bob", "PURIFY", Purify(
            "ab", 1, "dejmps", 10, 11, "", "X", 0, 1765000000.0).to_dict(), key=KEY),
        _wire(f"{N}/analyzer-b/tags/m-ab", "TAGS", _tags_body(), key=KEY),
        _wire(f"{N}/alice/svc/bob", "GIVE", Give("ab", 4312, "alice", "keyapp", "k-1", 7, 1,
                                                 False).to_dict(), signed=True),
        _wire(f"{N}/alice/svc/bob", "LISTENERS", Listeners("ab", {"7": "bobapp"}).to_dict(),
              signed=True),
        _wire(f"{N}/keyapp/req/alice", "REQUEST",
              {"request_id": "k-1", "remote": "bob", "pairs": 3, "purpose": 7}),
        _wire(f"{N}/keyapp/req/alice", "REQUEST", Request("k-2", "bob", 1, 7).to_dict()),
        _wire(f"{N}/bobapp/req/bob", "LISTEN", {"purpose": 7}),
        _wire(f"{N}/alice/app/keyapp", "PAIR", Pair("ab", 4312, "bob", 7, "psi+", 0.93, "keep",
                                                    request_id="k-1", qubit=1, hold_ms=87,
                                                    index=1).to_dict()),
        _wire(f"{N}/alice/app/keyapp", "DONE", Done("k-1", 3).to_dict()),
        _wire(f"{N}/alice/app/keyapp", "ERROR", Error(ErrorCode.NO_LISTENER, "nobody",
                                                      "k-3").to_dict()),
        _wire(f"{N}/keyapp/req/alice", "OPERATE", Operate(
            "op-1", "ab", 4312, [{"gate": "h", "qubit": "aux"},
                                 {"gate": "cnot", "control": "aux", "target": "pair"},
                                 {"gate": "meas", "qubit": "pair", "basis": "Z"}]).to_dict()),
        _wire(f"{N}/alice/app/keyapp", "RESULT", Result("op-1", "ab", 4312, [1], True).to_dict()),
        _wire(f"{N}/keyapp/to/bobapp", "DATA", {"data": {"pair_id": 4312, "m": [0, 1]}}),
    ]


def test_the_helper_accepts_real_messages_as_the_node_encodes_them() -> None:
    good = _good()
    assert {channel_of(t).key for t, _ in good} == set(_doc()["channels"])
    for topic, payload in good:
        env = validate_message(topic, payload)
        # and the node's trust boundary takes them too
        assert decode(payload, parse_topic(topic), key=KEY).type == env["type"]


def test_the_helper_takes_an_envelope_as_a_mapping() -> None:
    env = {"v": 1, "type": "ACK", "sender": "alice", "id": 3, "ts": 1.5,
           "body": Ack(3).to_dict()}
    assert validate_message(f"{N}/alice/reply/prog", env) == env


def _env(mtype: str, body: dict[str, Any], sender: str = "alice", **extra: Any
         ) -> dict[str, Any]:
    return {"v": 1, "type": mtype, "sender": sender, "id": 1, "ts": 1.0, "body": body, **extra}


CREATE = Create("bob", 0.9, 0, 7, 10).to_dict()

REFUSED: list[tuple[str, str, Any, str]] = [
    ("a topic outside the tree", f"{N}/alice/nope", _env("ACK", {"create_id": 1}),
     "no channel"),
    ("another version of the tree", "qnet/v2/lab/alice/cmd", _env("CREATE", CREATE),
     "no channel"),
    ("a node name with a space", f"{N}/al ice/cmd", _env("CREATE", CREATE),
     "no channel"),
    ("a message of another channel", f"{N}/alice/cmd", _env("OK", OK.to_dict()),
     "not a message of channel 'cmd'"),
    ("an unknown type", f"{N}/alice/ll/bob", _env("NOPE", {}), "not a message"),
    ("another node's prefix", f"{N}/alice/ll/bob", _env("EXPIRE", Expire(
        "ab", 1, 5, "bob").to_dict(), sender="bob"), "not the topic's publisher"),
    ("an application under another name", f"{N}/keyapp/req/alice",
     _env("LISTEN", {"purpose": 7}, sender="other"), "publisher"),
    ("an unknown envelope field", f"{N}/alice/reply/prog",
     _env("ACK", {"create_id": 1}, extra=1), "Additional properties"),
    ("a missing envelope field", f"{N}/alice/reply/prog",
     {k: v for k, v in _env("ACK", {"create_id": 1}).items() if k != "ts"}, "'ts'"),
    ("another version", f"{N}/alice/reply/prog", {**_env("ACK", {"create_id": 1}), "v": 2},
     "v:"),
    ("a bad link signature", f"{N}/alice/ll/bob",
     _env("EXPIRE", Expire("ab", 1, 5, "alice").to_dict(), sig="ABC"), "sig:"),
    ("a bad body", f"{N}/alice/cmd", _env("CREATE", {**CREATE, "number": 0}, "prog"),
     "body.number"),
    ("a body with a stranger", f"{N}/alice/app/keyapp",
     _env("DONE", {**Done("k-1", 3).to_dict(), "more": 1}), "body"),
    ("a reply without its type", f"{N}/alice/app/keyapp",
     _env("DONE", {"request_id": "k-1", "pairs": 3}), "'type' is a required"),
    ("a status of no state", f"{N}/alice/status", _env("status", {"state": "sleeping"}),
     "body.state"),
    ("an advert of an unknown link state", f"{N}/alice/topo",
     _env("TOPO", {"time": 1.0, "ttl_s": 6.0, "links": [{
         "link": "ab", "peer": "bob", "state": "great", "fidelity": 0.9, "sigma": None,
         "rate_hz": 1.0, "free_qubits": 1, "qubits": 2}]}), "body.links.0.state"),
    ("a telemetry record without its node", f"{N}/alice/telemetry",
     _env("telemetry", {"roles": [], "t": 1.0, "uptime_s": 1.0}), "'node'"),
    ("a mistyped telemetry field", f"{N}/alice/telemetry",
     _env("telemetry", {"node": "a", "roles": [], "t": 1.0, "uptime_s": 1.0,
                        "links": {"ab": {"heralds_total": "many"}}}),
     "body.links.ab.heralds_total"),
    ("NaN", f"{N}/alice/reply/prog",
     b'{"v":1,"type":"ACK","sender":"alice","id":1,"ts":NaN,"body":{"create_id":1}}',
     "not JSON"),
    ("a list", f"{N}/alice/reply/prog", b"[1]", "not an object"),
    ("over 1 MiB", f"{N}/alice/reply/prog", b" " * (1 << 20) + b"{}", "over"),
]


@pytest.mark.parametrize(("why", "topic", "payload", "says"), REFUSED,
                         ids=[r[0] for r in REFUSED])
def test_the_helper_refuses_what_breaks_the_contract(why: str, topic: str, payload: Any,
                                                     says: str) -> None:
    with pytest.raises(ContractError, match=re.escape(says)):
        validate_message(topic, payload)


def test_the_helper_reads_the_committed_document() -> None:
    assert document() == _doc()
    schema = message_schema(f"{N}/alice/ll/bob", "EXPIRE")
    assert schema == _payload("EXPIRE")
    schema["title"] = "changed"                 # a copy: the document stays as it was
    assert _payload("EXPIRE")["title"] == "EXPIRE envelope"
