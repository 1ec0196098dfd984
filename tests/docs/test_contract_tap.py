"""The contract tap (tests/support/contract.py, ``ContractTap``) that the system tests put on
their broker: against a real mosquitto it judges exactly what the nodes under test publish
(retained messages included), reports the one message that breaks the contract with its topic,
type and schema error, leaves other publishers and ignored topics alone, and refuses to pass
when it checked nothing."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from qnode.daemon.apps.protocol import Request
from qnode.daemon.bus.envelope import Message, encode

from support.mosquitto import Mosquitto, find_mosquitto

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")

N = "qnet/v1/lab"
_ids = iter(range(1, 10**6))


def _payload(mtype: str, sender: str, body: dict) -> bytes:
    return encode(Message(mtype, sender, next(_ids), body, time.time()))


TELEMETRY = {"v": 1, "node": "alice", "roles": ["memory"], "t": 1765000000.5,
             "uptime_s": 12.0, "state": "ready"}


class Publisher:
    """A plain MQTT client publishing at QoS 1 (each publish acknowledged by the broker)."""

    def __init__(self, port: int):
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="publisher")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mosquitto") as b:
        yield b


def test_the_tap_reports_exactly_the_message_that_breaks_the_contract(broker):
    pub = Publisher(broker.port)
    try:
        # retained before the tap connects: it is judged all the same
        pub.send(f"{N}/alice/status", _payload("status", "alice", {"state": "ready",
                                                                   "roles": ["memory"],
                                                                   "links": ["ab"]}),
                 retain=True)
        tap = broker.tap("lab", ("alice", "keyapp"))
        pub.send(f"{N}/alice/telemetry", _payload("telemetry", "alice", TELEMETRY))
        pub.send(f"{N}/keyapp/req/alice",
                 _payload("REQUEST", "keyapp", Request("k-1", "bob", 3, 7).to_dict()))
        # a REQUEST with a mistyped field, under a name under test
        bad = Request("k-2", "bob", 1, 7).to_dict() | {"pairs": "three"}
        pub.send(f"{N}/keyapp/req/alice", _payload("REQUEST", "keyapp", bad))
        # not judged: another publisher (garbage included), another network, a CREATE whose
        # sender is no node under test, an ignored topic
        pub.send(f"{N}/mallory/status", b"\xff not json")
        pub.send(f"{N}/mallory/req/alice", _payload("REQUEST", "mallory", bad))
        pub.send("qnet/v1/other/alice/status", b"{}")
        pub.send(f"{N}/alice/cmd", _payload("CREATE", "prog", {"remote_node": 1}))
        tap.ignore(f"{N}/alice/proto/+")
        pub.send(f"{N}/alice/proto/bob", b"forged on purpose")
        with pytest.raises(AssertionError) as err:
            tap.assert_clean()
    finally:
        pub.close()
        broker.close_taps()
    text = str(err.value)
    assert "1 message(s)" in text, text
    assert f"{N}/keyapp/req/alice [REQUEST]" in text and "body.pairs" in text, text
    assert tap.violations_total == 1 and tap.violations[0].mtype == "REQUEST"
    assert tap.counts == {("status", "status"): 1, ("telemetry", "telemetry"): 1,
                          ("req", "REQUEST"): 1}
    assert tap.retained_judged == 1
    assert tap.skipped == {"not a node under test": 3, "another network": 1, "ignored": 1}


def test_a_clean_run_passes_and_a_cmd_is_judged_by_its_sender(broker):
    pub = Publisher(broker.port)
    try:
        tap = broker.tap("lab", lambda: ["alice"])   # the nodes may be known only later
        pub.send(f"{N}/bob/cmd", _payload("CREATE", "alice", {"remote_node": 1}))
        tap.flush()        # judged before the test opts its forgeries out
        tap.ignore(lambda topic, payload: topic.endswith("/cmd"))
        pub.send(f"{N}/bob/cmd", _payload("CREATE", "alice", {"remote_node": 2}))
        pub.send(f"{N}/alice/status", _payload("status", "alice", {"state": "offline"}))
        tap.flush()
        assert tap.violations_total == 1 and "body" in tap.violations[0].error
        tap.violations.clear()
        tap.violations_total = 0
        assert "1 judged" in tap.assert_clean()
    finally:
        pub.close()
        broker.close_taps()


def test_a_tap_that_judged_nothing_fails(broker):
    pub = Publisher(broker.port)
    try:
        tap = broker.tap("lab", ("alice",))
        pub.send(f"{N}/bob/status", _payload("status", "bob", {"state": "ready"}))
        with pytest.raises(AssertionError, match="no message of the system under test"):
            tap.assert_clean()
    finally:
        pub.close()
        broker.close_taps()


def test_the_broker_checks_its_taps_when_its_block_ends(tmp_path):
    with pytest.raises(AssertionError, match="nothing was checked"), \
            Mosquitto(tmp_path / "mosquitto") as b:
        tap = b.tap("lab", ("alice",))
    assert tap.closed and not b.running


def test_the_tap_follows_a_broker_restart(broker):
    tap = broker.tap("lab", ("alice",))
    broker.restart()        # the persistent session keeps the subscription across it
    pub = Publisher(broker.port)
    try:
        pub.send(f"{N}/alice/status", _payload("status", "alice", {"state": "offline"}))
        assert "1 judged" in tap.assert_clean()
    finally:
        pub.close()
        broker.close_taps()
