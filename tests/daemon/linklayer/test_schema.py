"""JSON Schemas of the link-layer messages (daemon/linklayer/schema.py): what the classes write
(``to_dict()``) the schemas accept, for many real messages; what the schemas refuse the classes
refuse too, where a schema can say it; the schemas follow the classes (fields, required fields,
the HERALD's columnar form) and the module stays pure."""
from __future__ import annotations

import ast
import dataclasses
import json
import sys
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qnode.daemon.linklayer import messages, schema as ll_schema, sequence
from qnode.daemon.linklayer.messages import (
    MAX_HOPS,
    MESSAGE_TYPES,
    Ack,
    Create,
    Epoch,
    Err,
    ErrCode,
    Expire,
    ExpireAck,
    Held,
    Herald,
    HeraldEntry,
    Ok,
    PathRequest,
    PathSetup,
    Purify,
    PurifyResult,
    SwapResult,
    TestOutcomes,
    message_from_dict,
)

from support import REPO

SEQ_TOP = sequence.SEQ_MOD - 1
EPOCH = "18f3a1b2c3d4e5f6"


def _validator(mtype: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(ll_schema.message_schema(MESSAGE_TYPES[mtype]))


def _errors(body: Any) -> list[str]:
    """The schema's complaints about ``body`` (its type named by ``body["type"]``)."""
    return [e.message for e in _validator(body["type"]).iter_errors(body)]


def _herald(n: int, *, first: int = 4000, step: int = 700, epoch: bool = False,
            chunk: int = 12) -> Herald:
    rng = np.random.default_rng(n)
    times = np.cumsum(rng.integers(1, step + 1, n)) + 1_000_000
    codes = rng.integers(0, 4, n)
    extra: dict[str, Any] = {"epoch": EPOCH, "lap": 3, "start": 17} if epoch else {}
    return Herald(link="ab", chunk=chunk, first_seq=first, bell_codes=codes, times_ps=times,
                  next_seq=messages.seq_add(first, n), **extra)


CREATE = Create("bob", 0.9, 0.0, 7, 10)
OK = Ok(7, "ab", 4312, "psi+", 0.93, 7, "bob", goodness_time_ps=1_000_000)
OK_M = Ok(7, "ab", 12, "psi-", 0.0, 1, "bob", tpe="M", outcome=1, basis="ZR-")
SWAP = SwapResult("alice-bob", 1, "alice-repeater", 4312, "repeater-bob", 977, "phi+", "psi-",
                  "phi+", (0.03, 0.02, 0.05, 0.9), (0.9, 0.05, 0.03, 0.02), 0.004, 0.0012,
                  0.0125, 0.0031, 0.5, 0.4, 0.999, 0.995, 1765000000.5)
PURIFY = Purify("ab", 0, "dejmps", 10, 11, "", "X", 0, 1765000000.0)
HERALD = Herald.from_entries("ab", 12, (HeraldEntry(4000, "psi+", 1_000_000),
                                        HeraldEntry(4001, "psi-", 1_700_000),
                                        HeraldEntry(4002, "psi+", 2_050_000)))
HEARTBEAT_EPOCH = Herald.from_entries("ab", 1, (), 0, epoch=EPOCH, lap=0, start=0)

#: real messages, optional fields set and unset
MESSAGES: list[Any] = [
    CREATE,
    Create("bob", 0.0, 2500.5, 0xFFFF, 0xFFFF, tpe="M", priority=7, consecutive=False,
           atomic=True, random_basis="chsh"),
    Create("bob", 1, 10, 0, 1, random_basis="xz"),  # ints where floats are expected
    Ack(0), Ack(0xFFFF),
    OK,
    Ok(7, "ab", SEQ_TOP, "phi-", 1.0, 0, "bob", goodness_time_ps=0, qubit=3, hold_ms=87),
    Ok(7, "ab", 0, "phi+", 0.5, 1, "bob", goodness_time_ps=5, qubit=0xFFFF,
       hold_ms=messages.MAX_HOLD_MS),
    OK_M,
    Ok(7, "alice-bob", 12, "phi+", 0.8, 1, "bob", tpe="M", outcome=0, basis="X"),
    Err(7, ErrCode.UNSUPP), Err(7, "TIMEOUT"), Err(0, 2),
    Err(None, ErrCode.EXPIRE, "ab", 10, 20, "alice"),
    Err(3, ErrCode.EXPIRE, "ab", SEQ_TOP, 5, "bob"),
    Expire("ab", 10, 20, "alice"),
    Expire("ab", SEQ_TOP, 3, "bob", lap_lo=0, lap_hi=1),
    ExpireAck("ab", 20, 10, 20),
    ExpireAck("ab", 20, 10, 20, lap=2, lap_lo=2, lap_hi=2),
    ExpireAck("ab", 20, 10, 20, lap=0),
    Epoch("ab", EPOCH, 5000), Epoch("ab", EPOCH, 5000, start=5002),
    TestOutcomes("ab", (), "", ""),
    TestOutcomes("ab", (1, 2, SEQ_TOP), "XYZ", "01-", readout_error=0.5),
    TestOutcomes("ab", tuple(range(messages.MAX_TESTS)), "Z" * messages.MAX_TESTS,
                 "1" * messages.MAX_TESTS, readout_error=0.02),
    Held("ab", (5,), (1765000000.25,)), Held("ab", (5, 6, 7), (1.0, 2, 3.5)),
    SWAP,
    SwapResult("p", MAX_HOPS - 1, "l", SEQ_TOP, "m", 0, "psi+", "phi+", "psi-", (1, 0, 0, 0),
               (0, 0, 0, 1), 0, 0, 0, 0, 0, 0, 0, 0, 0),
    PURIFY,
    Purify("ab", 0xFFFFFFFF, "bbpssw", SEQ_TOP, 0, "XY", "YX", 1, 0.0),
    PurifyResult("ab", 3, "0", 1.0), PurifyResult("ab", 3, "-", 1765000000.0),
    PathSetup("alice-bob-r17", ("alice", "r1", "r2", "bob"), ("a-r1", "r1-r2", "r2-b"), 6.0,
              1765000000.5),
    PathSetup("p", ("a", "b", "c"), ("x", "y"), 0.0, 0.0),
    PathRequest(0.0), PathRequest(0.95),
    # heralds: heartbeats (empty, with and without epoch), one success (dt_bytes 0), and
    # batches whose deltas need 1, 2, 4 and 8 bytes
    Herald.from_entries("ab", 0, (), 4000),
    HEARTBEAT_EPOCH,
    Herald.from_entries("ab", 2, (HeraldEntry(SEQ_TOP, "psi+", 1_000_000),)),
    HERALD,
    _herald(50, step=60), _herald(50, step=30_000), _herald(333, epoch=True),
    _herald(1000, step=10**9, first=SEQ_TOP - 10),
    Herald.from_entries("ab", 5, (HeraldEntry(0, "phi+", 0),
                                  HeraldEntry(1, "phi-", messages.INT64_MAX))),
]


def _ids(m: Any) -> str:
    return m.TYPE


def test_every_message_type_has_a_valid_draft07_schema() -> None:
    schemas = ll_schema.message_schemas()
    assert list(schemas) == list(MESSAGE_TYPES)
    for mtype, s in schemas.items():
        jsonschema.Draft7Validator.check_schema(s)
        assert s["$schema"] == ll_schema.DIALECT
        assert s["title"] == mtype and s["description"]
        assert s["additionalProperties"] is False
        assert s["properties"]["type"] == {
            "const": mtype, "description": s["properties"]["type"]["description"]}
        json.dumps(s, allow_nan=False)  # plain JSON


def test_the_examples_cover_every_message_type() -> None:
    assert {m.TYPE for m in MESSAGES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", MESSAGES, ids=_ids)
def test_what_the_classes_write_the_schemas_accept(msg: Any) -> None:
    body = msg.to_dict()
    assert _errors(body) == []
    wire = json.loads(json.dumps(body))          # as it travels
    assert _errors(wire) == []
    assert message_from_dict(wire) == msg
    untyped = {k: v for k, v in wire.items() if k != "type"}   # read without "type" too
    assert list(_validator(msg.TYPE).iter_errors(untyped)) == []


@pytest.mark.parametrize("msg", [m for m in MESSAGES if isinstance(m, Herald)], ids=_ids)
def test_heralds_in_the_zlib_codec(msg: Herald) -> None:
    body = json.loads(json.dumps(msg.to_dict("zlib")))
    assert _errors(body) == []
    assert Herald.from_dict(body) == msg


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), first=st.integers(0, SEQ_TOP), step=st.integers(0, 10**12),
       chunk=st.integers(0, 2**40), epoch=st.booleans(), codec=st.sampled_from(["raw", "zlib"]))
def test_random_heralds_fit_their_schema(n: int, first: int, step: int, chunk: int,
                                         epoch: bool, codec: str) -> None:
    body = json.loads(json.dumps(_herald(n, first=first, step=max(step, 1), epoch=epoch,
                                         chunk=chunk).to_dict(codec)))
    assert _errors(body) == []


@settings(max_examples=100, deadline=None)
@given(st.builds(
    Ok, create_id=st.integers(0, 0xFFFF), link=st.text(min_size=1, max_size=20),
    seq=st.integers(0, SEQ_TOP), bell_state=st.sampled_from(messages.BELL_STATES),
    goodness=st.floats(0, 1), purpose_id=st.integers(0, 0xFFFF),
    remote_node=st.text(min_size=1, max_size=20), tpe=st.just("K"),
    goodness_time_ps=st.integers(0, messages.INT64_MAX),
    qubit=st.none() | st.integers(0, 0xFFFF)))
def test_random_oks_fit_their_schema(ok: Ok) -> None:
    assert _errors(json.loads(json.dumps(ok.to_dict()))) == []


# --------------------------------------------------------------------------- refusals

def _bad(why: str, msg: Any, **changes: Any) -> tuple[str, str, dict[str, Any]]:
    """(why, the message type, ``msg.to_dict()`` with fields changed; ``...``: removed)."""
    body = msg.to_dict()
    for k, v in changes.items():
        if v is ...:
            body.pop(k, None)
        else:
            body[k] = v
    return why, msg.TYPE, body


TESTS = TestOutcomes("ab", (1,), "X", "0")

#: bodies both the class and the schema refuse
REFUSED: list[tuple[str, str, dict[str, Any]]] = [
    _bad("unknown field", CREATE, colour="red"),
    _bad("missing field", CREATE, number=...),
    _bad("number 0", CREATE, number=0),
    _bad("number over 16 bits", CREATE, number=0x10000),
    _bad("fidelity above 1", CREATE, min_fidelity=1.5),
    _bad("negative max time", CREATE, max_time_ms=-1),
    _bad("tpe", CREATE, tpe="X"),
    _bad("priority", CREATE, priority=8),
    _bad("a bool for an int", CREATE, purpose_id=True),
    _bad("a float for an int", CREATE, purpose_id=7.5),
    _bad("random basis", CREATE, random_basis="bb84"),
    _bad("a string for a bool", CREATE, atomic="yes"),
    _bad("empty remote", CREATE, remote_node=""),
    _bad("null remote", CREATE, remote_node=None),
    _bad("another type", CREATE, type="ACK"),
    _bad("create id", Ack(1), create_id=-1),
    _bad("seq over 32 bits", OK, seq=sequence.SEQ_MOD),
    _bad("bell state", OK, bell_state="phi"),
    _bad("goodness", OK, goodness=-0.1),
    _bad("hold", OK, qubit=1, hold_ms=messages.MAX_HOLD_MS + 1),
    _bad("qubit", OK, qubit=0x10000),
    _bad("OK-M outcome", OK_M, outcome=2),
    _bad("OK-M basis", OK_M, basis="W"),
    _bad("ERR code", Err(1, ErrCode.OTHER), code="NOPE"),
    _bad("ERR code number", Err(1, ErrCode.OTHER), code=9),
    _bad("EXPIRE one lap", Expire("ab", 1, 2, "a"), lap_lo=0),
    _bad("EXPIRE lap", Expire("ab", 1, 2, "a", lap_lo=0, lap_hi=0), lap_lo=messages.MAX_LAP + 1),
    _bad("EXPIRE_ACK one lap", ExpireAck("ab", 1, 1, 2), lap_hi=0),
    _bad("EPOCH epoch", Epoch("ab", EPOCH, 1), epoch="18F3A1B2C3D4E5F6"),
    _bad("EPOCH pos", Epoch("ab", EPOCH, 1), pos=-1),
    _bad("HERALD codec", HERALD, codec="gzip"),
    _bad("HERALD dt_bytes", HERALD, dt_bytes=3),
    _bad("HERALD count", HERALD, count=messages.MAX_HERALD_COUNT + 1),
    _bad("HERALD epoch without lap", HERALD, epoch=EPOCH),
    _bad("HERALD null epoch", HEARTBEAT_EPOCH, epoch=None),
    _bad("HERALD not base64", HERALD, bell="L g=="),
    _bad("HERALD negative time", HERALD, time0_ps=-1),
    _bad("HERALD missing dt", HERALD, dt=...),
    _bad("TESTS basis", TESTS, bases="Q"),
    _bad("TESTS outcome", TESTS, outcomes="2"),
    _bad("TESTS read-out error", TESTS, readout_error=0.6),
    _bad("TESTS too many", TESTS, seqs=[1] * (messages.MAX_TESTS + 1)),
    _bad("HELD none", Held("ab", (1,), (1.0,)), seqs=[], times=[]),
    _bad("HELD negative time", Held("ab", (1,), (1.0,)), times=[-1.0]),
    _bad("SWAP_RES three weights", SWAP, left_weights=[0.5, 0.25, 0.25]),
    _bad("SWAP_RES weight above 1", SWAP, right_weights=[1.5, -0.5, 0, 0]),
    _bad("SWAP_RES outcome", SWAP, outcome="00"),
    _bad("SWAP_RES hop 0", SWAP, hop=0),
    _bad("SWAP_RES negative wait", SWAP, left_wait_s=-0.001),
    _bad("SWAP_RES bell", SWAP, right_bell="bell"),
    _bad("SWAP_RES gate fidelity above 1", SWAP, gate_fidelity=1.5),
    _bad("PURIFY protocol", PURIFY, protocol="recurrence"),
    _bad("PURIFY axes", PURIFY, kept_axes="XZ"),
    _bad("PURIFY round", PURIFY, round=2**32),
    _bad("PURIFY_RES outcome", PurifyResult("ab", 3, "0", 1.0), outcome="2"),
    _bad("PURIFY_RES time", PurifyResult("ab", 3, "0", 1.0), time=-1),
]


@pytest.mark.parametrize(("why", "mtype", "body"), REFUSED, ids=[w for w, _, _ in REFUSED])
def test_what_the_schemas_refuse_the_classes_refuse(why: str, mtype: str,
                                                    body: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MESSAGE_TYPES[mtype].from_dict(body)
    assert list(_validator(mtype).iter_errors(body)), f"the schema accepts: {why}"


#: bodies the class refuses but the schema accepts: rules between fields (module docstring)
BEYOND_THE_SCHEMA: list[tuple[str, str, dict[str, Any]]] = [
    _bad("OK-K without its time", OK, goodness_time_ps=None),
    _bad("OK-M with a time", OK_M, goodness_time_ps=5),
    _bad("hold without qubit", OK, hold_ms=5),
    _bad("ERR with a range", Err(1, ErrCode.OTHER), link="ab"),
    _bad("EXPIRE without origin", Err(1, ErrCode.EXPIRE, "ab", 1, 2, "a"), origin=None),
    _bad("next_seq", HERALD, next_seq=HERALD.next_seq + 1),
    _bad("bell length", HERALD, bell="AAAA"),
    _bad("one basis per pair", TESTS, bases="XY"),
    _bad("weights sum", SWAP, left_weights=[0.5, 0.5, 0.5, 0.5]),
    _bad("the same pair twice", PURIFY, sacrificed=10),
]


@pytest.mark.parametrize(("why", "mtype", "body"), BEYOND_THE_SCHEMA,
                         ids=[w for w, _, _ in BEYOND_THE_SCHEMA])
def test_rules_between_fields_are_the_classes_alone(why: str, mtype: str,
                                                    body: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MESSAGE_TYPES[mtype].from_dict(body)
    assert list(_validator(mtype).iter_errors(body)) == [], why


# --------------------------------------------------------------------------- the schemas follow

def test_required_fields_are_the_fields_without_defaults() -> None:
    for mtype, cls in MESSAGE_TYPES.items():
        s = ll_schema.message_schema(cls)
        if cls is Herald:
            assert s["required"] == list(Herald._FIELDS)
            assert set(s["properties"]) == {"type", *Herald._FIELDS, *Herald._EPOCH_FIELDS}
            continue
        fields = dataclasses.fields(cls)
        assert list(s["properties"]) == ["type", *(f.name for f in fields)], mtype
        assert s["required"] == [f.name for f in fields
                                 if f.default is dataclasses.MISSING], mtype


def test_the_herald_columns_and_constants_are_the_classes() -> None:
    assert ll_schema._HERALD_FIELDS == Herald._FIELDS
    assert ll_schema._HERALD_EPOCH_FIELDS == Herald._EPOCH_FIELDS
    s = ll_schema.message_schema(Herald)
    assert s["properties"]["dt_bytes"]["enum"] == [0, *messages._DT_WIDTHS]
    assert ll_schema.EPOCH_PATTERN == f"^{sequence.EPOCH_RE.pattern}$"
    assert ll_schema.SEQ_MAX == sequence.SEQ_MOD - 1
    assert set(MESSAGE_TYPES) >= set(ll_schema._GROUPS)


def test_every_rule_names_a_field() -> None:
    names = {f.name for cls in MESSAGE_TYPES.values() for f in dataclasses.fields(cls)}
    assert set(ll_schema._FIELD_RULES) <= names
    for mtype, name in ll_schema._CLASS_RULES:
        assert name in {f.name for f in dataclasses.fields(MESSAGE_TYPES[mtype])}, (mtype, name)


def test_an_annotation_without_a_schema_is_an_error() -> None:
    @dataclasses.dataclass(frozen=True)
    class Odd:
        TYPE = "ODD"
        x: dict[str, int]

    with pytest.raises(TypeError, match=r"Odd\.x"):
        ll_schema.message_schema(Odd)


def test_the_schema_module_imports_the_standard_library_and_the_messages_only() -> None:
    tree = ast.parse((REPO / "daemon" / "linklayer" / "schema.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.module is not None
            imported.add(node.module)
    outside = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names}
    assert outside == {"qnode.daemon.linklayer.messages"}
