"""Topics and the message envelope: round trips, and every kind of bad input is rejected with a
reason (never another exception)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from qnode.daemon.bus.envelope import (
    Deduplicator,
    IdCounter,
    Message,
    MessageRejected,
    RecentPayloads,
    decode,
    encode,
)
from qnode.daemon.bus.topics import Topic, Topics, parse_topic

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
    (encode(msg()).replace(b'"ts":1.5', b'"ts":NaN'), {}, "not_json"),
    (encode(msg()).replace(b'"ts":1.5', b'"ts":-Infinity'), {}, "not_json"),
    (encode(msg()).replace(b'"ts":1.5', b'"ts":-1e999'), {}, "bad_envelope"),
    (encode(msg()).replace(b'"id":7', b'"id":' + b"9" * 5000), {}, "not_json"),
    (encode(msg()).replace(b'"id":7', b'"id":' + b"9" * 21), {}, "not_json"),
    (encode(msg()).replace(b'"seq":3', b'"seq":' + b"[" * 40 + b"]" * 40), {}, "too_deep"),
    (encode(msg()).replace(b'"seq":3', b'"seq":' + b"[" * 200_000 + b"]" * 200_000), {},
     "not_json"),
    (tamper(encode(msg(), KEY), sig="\u00e9" * 64), dict(key=KEY), "bad_signature"),
    (tamper(encode(msg(), KEY), sig="é"), dict(key=KEY), "bad_signature"),
    (encode(msg(), KEY).replace(b'"bell"', b'"\\ud800"'), dict(key=KEY), "not_json"),
    (encode(msg()).replace(b'"psi+"', b'"\\uDFFF"'), {}, "not_json"),
    (tamper(encode(msg(), KEY), sig=7), dict(key=KEY), "bad_signature"),
    (tamper(encode(msg()), type=""), {}, "bad_envelope"),
    (tamper(encode(msg(sender="bad/name")), sender="bad/name"), {}, "bad_envelope"),
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
    assert restored.restore({f"link|{s}": v for s, v in dedup.snapshot().items()}) == 0
    for i in accepted:
        assert restored.check("link|s", i) in ("duplicate", "stale")


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


def test_an_integer_of_ten_thousand_digits_is_refused_at_once():
    # int() of 10^4 digits raises (Python's 4,300-digit limit) after quadratic work; the parser
    # refuses long literals before converting them
    payload = encode(msg()).replace(b'"seq":3', b'"seq":' + b"7" * 10_000)
    with pytest.raises(MessageRejected) as err:
        decode(payload, LL)
    assert err.value.reason == "not_json" and "digits" in err.value.detail


def test_unsigned_messages_cannot_move_the_window_of_signed_ones():
    """Finding 1: unsigned cmd messages claiming a sender and id 2^63-1 made every later signed
    message of that sender stale. Now the window belongs to the key that verified a message."""
    dedup, recent = Deduplicator(), RecentPayloads()
    cmd = parse_topic(ALICE.cmd)
    for sender in ("bob", "station"):
        poison = encode(Message("CREATE", sender, (1 << 63) - 1, {}))
        decode(poison, cmd, dedup=dedup, recent=recent, domain="alice")  # accepted: unsigned
    assert dedup.snapshot() == {}  # nothing to persist
    for i in range(3):
        m = decode(encode(msg(i), KEY), LL, key=KEY, dedup=dedup, domain="bob",
                   require_signature=True)
        assert m.signed and m.id == i
    assert set(dedup.snapshot()) == {"bob|alice"}


def test_a_window_is_per_key_domain():
    """A holder of one link's key cannot move the window of another link's messages."""
    dedup = Deduplicator()
    other = b"another link's key, 32 bytes...."
    decode(encode(msg((1 << 63) - 1), other), LL, key=other, dedup=dedup, domain="carol")
    decode(encode(msg(1), KEY), LL, key=KEY, dedup=dedup, domain="bob")


def test_unsigned_redeliveries_are_dropped_by_their_bytes():
    recent = RecentPayloads(size=2)
    cmd = parse_topic(ALICE.cmd)
    first = encode(Message("CREATE", "app", 5, {"n": 1}))
    decode(first, cmd, recent=recent)
    with pytest.raises(MessageRejected) as err:
        decode(first, cmd, recent=recent)
    assert err.value.reason == "duplicate"
    # a forger's message with the same sender and id does not block the genuine one
    decode(encode(Message("CREATE", "app", 6, {"n": 2})), cmd, recent=recent)
    decode(encode(Message("CREATE", "app", 6, {"n": 3})), cmd, recent=recent)


def test_stored_windows_of_older_versions_are_discarded():
    dedup = Deduplicator()
    assert dedup.restore({"alice": ((1 << 63) - 1, 1), "bob|alice": (10, 1)}) == 1
    assert set(dedup.snapshot()) == {"bob|alice"}


def test_during_a_key_rotation_either_key_verifies():
    new = b"the next key of this link, 32 b."
    for signer in (KEY, new):
        m = decode(encode(msg(), signer), LL, key=(new, KEY), require_signature=True)
        assert m.signed
    with pytest.raises(MessageRejected) as err:
        decode(encode(msg(), b"neither of the two keys.........."), LL, key=(new, KEY))
    assert err.value.reason == "bad_signature"


def test_a_surrogate_pair_is_one_character_and_passes():
    m = decode(encode(msg()).replace(b'"psi+"', b'"\\ud83d\\ude00"'), LL)
    assert m.body["bell"] == "\U0001f600"


def test_an_ll_message_from_a_node_without_a_link_key_needs_its_identity_signature():
    """A far repeater shares no link key with a path end: its SWAP_RES carries only its
    identity signature, which must verify against the end's trust store; without it, or
    forged, the message is refused as unsigned or badly signed."""
    from qnode.daemon.bus.identity import NodeSigner, TrustStore

    alice, mallory = NodeSigner.generate(), NodeSigner.generate()
    trust = TrustStore({"alice": alice.public_key()})
    m = decode(encode(msg(), signer=alice), LL, key=None, require_signature=True, trust=trust)
    assert m.node_signed and not m.signed
    for payload, reason in ((encode(msg()), "unsigned"),
                            (encode(msg(), signer=mallory), "bad_signature")):
        with pytest.raises(MessageRejected) as err:
            decode(payload, LL, key=None, require_signature=True, trust=trust)
        assert err.value.reason == reason
