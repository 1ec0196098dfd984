"""Topics and the message envelope: round trips, and every kind of bad input is rejected with a
reason (never another exception)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from qnode.daemon.messages import Deduplicator, IdCounter, Message, MessageRejected, decode, encode
from qnode.daemon.topics import Topic, Topics, parse_topic

ALICE = Topics("lab", "alice")
KEY = b"0123456789abcdef0123456789abcdef"
LL = parse_topic(ALICE.ll("bob"))


def test_topic_tree_round_trips():
    assert ALICE.status == "qnet/v1/lab/alice/status"
    assert ALICE.herald("ab-1") == "qnet/v1/lab/alice/herald/ab-1"
    for t in (ALICE.status, ALICE.telemetry, ALICE.cmd, ALICE.reply("ops"), ALICE.herald("l1"),
              ALICE.ll("bob"), ALICE.proto("bob")):
        assert str(parse_topic(t)) == t
    assert parse_topic(ALICE.ll("bob")) == Topic("lab", "alice", "ll", "bob")


@pytest.mark.parametrize("bad", ["qnet/v1/lab/alice", "qnet/v2/lab/alice/status",
                                 "qnet/v1/lab/al+ice/status", "qnet/v1/lab/alice/ll",
                                 "qnet/v1/lab/alice/ll/bob/x", "qnet/v1/lab/alice/colour",
                                 "other/v1/lab/alice/status"])
def test_foreign_topics_are_refused(bad):
    with pytest.raises(ValueError):
        parse_topic(bad)


def test_node_names_that_would_break_topics_are_refused():
    with pytest.raises(ValueError, match="node"):
        Topics("lab", "a/b")
    with pytest.raises(ValueError, match="peer"):
        ALICE.ll("#")


def test_subscriptions_cover_messages_to_the_node_and_its_heralds():
    subs = ALICE.subscriptions({"ab": "station"})
    assert subs == ["qnet/v1/lab/+/ll/alice", "qnet/v1/lab/+/proto/alice",
                    "qnet/v1/lab/alice/cmd", "qnet/v1/lab/station/herald/ab"]


def msg(i: int = 7, body=None, sender: str = "alice") -> Message:
    return Message("ll.ok", sender, i, body or {"seq": 3, "bell": "psi+"}, ts=1.5)


def test_signed_and_unsigned_round_trips():
    m = decode(encode(msg()), LL)
    assert (m.type, m.sender, m.id, dict(m.body), m.signed) == ("ll.ok", "alice", 7,
                                                                 {"seq": 3, "bell": "psi+"}, False)
    s = decode(encode(msg(), KEY), LL, key=KEY, require_signature=True)
    assert s.signed and s.body == {"seq": 3, "bell": "psi+"}
    assert json.loads(encode(msg()))["v"] == 1  # readable JSON for mosquitto_sub


def tamper(payload: bytes, **changes) -> bytes:
    env = json.loads(payload)
    env.update(changes)
    return json.dumps(env).encode()


@pytest.mark.parametrize("payload, kwargs, reason", [
    (b"x" * 2000, dict(max_bytes=1000), "oversized"),
    (b"{not json", {}, "not_json"),
    (b"\xff\xfe", {}, "not_json"),
    (b"[1, 2]", {}, "bad_envelope"),
    (tamper(encode(msg()), id="7"), {}, "bad_envelope"),
    (tamper(encode(msg()), id=True), {}, "bad_envelope"),
    (tamper(encode(msg()), id=-1), {}, "bad_envelope"),
    (tamper(encode(msg()), body=[1]), {}, "bad_envelope"),
    (tamper(encode(msg()), extra=1), {}, "bad_envelope"),
    (encode(msg()).replace(b'"ts":1.5', b'"ts":NaN'), {}, "bad_envelope"),
    (tamper(encode(msg()), v=2), {}, "bad_version"),
    (encode(msg(sender="mallory")), {}, "sender_mismatch"),
    (encode(msg()), dict(key=KEY, require_signature=True), "unsigned"),
    (tamper(encode(msg(), KEY), body={"seq": 4, "bell": "psi+"}), dict(key=KEY), "bad_signature"),
    (encode(msg(), b"another key, not the link's....."), dict(key=KEY), "bad_signature"),
    (encode(msg(), KEY), {}, "bad_signature"),
])
def test_bad_payloads_are_rejected_with_a_reason(payload, kwargs, reason):
    with pytest.raises(MessageRejected) as err:
        decode(payload, LL, **kwargs)
    assert err.value.reason == reason
    assert "qnet/v1/lab/alice/ll/bob" in str(err.value)


def test_commands_come_from_other_nodes_but_their_topic_names_the_addressee():
    cmd = parse_topic(ALICE.cmd)
    m = decode(encode(Message("cmd.status", "operator", 1, {})), cmd)
    assert m.sender == "operator"
    with pytest.raises(MessageRejected) as err:  # elsewhere the topic's node is the sender
        decode(encode(Message("ll.ok", "operator", 1, {})), LL)
    assert err.value.reason == "sender_mismatch"


def test_redeliveries_and_replays_are_refused():
    dedup = Deduplicator(window=8)
    payload = encode(msg(10), KEY)
    decode(payload, LL, key=KEY, dedup=dedup)
    with pytest.raises(MessageRejected, match="already received") as err:
        decode(payload, LL, key=KEY, dedup=dedup)  # QoS 1 redelivery, or a replay
    assert err.value.reason == "duplicate"
    decode(encode(msg(9), KEY), LL, key=KEY, dedup=dedup)  # reordered: still new
    decode(encode(msg(30), KEY), LL, key=KEY, dedup=dedup)
    with pytest.raises(MessageRejected) as err:
        decode(encode(msg(11), KEY), LL, key=KEY, dedup=dedup)  # older than the window
    assert err.value.reason == "stale"


def test_a_forged_message_does_not_poison_the_window():
    dedup = Deduplicator()
    with pytest.raises(MessageRejected):
        decode(encode(msg(5), b"wrong key........................"), LL, key=KEY, dedup=dedup)
    decode(encode(msg(5), KEY), LL, key=KEY, dedup=dedup)  # the genuine id 5 still passes


@settings(max_examples=300)
@given(st.lists(st.integers(0, 60), max_size=80))
def test_deduplicator_accepts_each_id_once_within_the_window(ids):
    dedup = Deduplicator(window=16)
    accepted: set[int] = set()
    for i in ids:
        verdict = dedup.check("s", i)
        if verdict is None:
            assert i not in accepted
            accepted.add(i)
        elif verdict == "duplicate":
            assert i in accepted
        else:
            assert verdict == "stale" and i <= max(accepted) - 16
    restored = Deduplicator(window=16)
    restored.restore(dedup.snapshot())
    for i in accepted:
        assert restored.check("s", i) in ("duplicate", "stale")


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_rejected_or_decoded_never_crash(data):
    try:
        decode(data, LL)
    except MessageRejected:
        pass


@settings(max_examples=300)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
                    max_leaves=20))
def test_arbitrary_json_values_are_rejected_or_decoded_never_crash(value):
    try:
        payload = json.dumps(value).encode()
    except ValueError:
        return
    try:
        decode(payload, LL)
    except MessageRejected:
        pass


def test_id_counter_continues_from_a_persisted_value():
    ids = IdCounter(41)
    assert [ids(), ids(), ids()] == [41, 42, 43] and ids.next_id == 44
