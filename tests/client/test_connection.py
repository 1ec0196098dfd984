"""The connection file (qnode.client.connection) and the client's checks of its arguments,
without a network."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qnode.client import (
    ApplicationInfo,
    ConnectionFileError,
    ConnectionInfo,
    NodeClient,
    Pair,
    RequestError,
    RequestExpired,
)


def test_a_connection_file_round_trips_privately_with_paths_from_its_folder(tmp_path: Path):
    info = ConnectionInfo("mqtts://broker.lab:8883", "lab", ("alice", "bob"), {
        "keyapp": ApplicationInfo("keyapp", "alice", (9,), "keyapp", None, "keyapp.crt",
                                  "keyapp.key")}, ca_file="ca.crt", pid=42)
    path = info.write(tmp_path / "sub" / "lab.json")
    assert path.stat().st_mode & 0o777 == 0o600
    back = ConnectionInfo.load(path)
    assert back.network == "lab" and back.nodes == ("alice", "bob") and back.pid == 42
    assert back.ca_file == str(tmp_path / "sub" / "ca.crt")
    app = back.application("keyapp")
    assert app.client_cert == str(tmp_path / "sub" / "keyapp.crt") and app.purposes == (9,)
    options = back.client_options("keyapp")
    assert options["node"] == "alice" and options["username"] == "keyapp"
    client = NodeClient(**options)
    assert client.port == 8883 and client.tls
    assert client.request_topic == "qnet/v1/lab/keyapp/req/alice"
    assert client.reply_topic == "qnet/v1/lab/alice/app/keyapp"
    with pytest.raises(ConnectionFileError, match="keyapp"):
        back.application("nobody")


@pytest.mark.parametrize("text, problem", [
    ("{", "not JSON"),
    ('{"qnode_connection": 2}', "qnode_connection"),
    ('{"qnode_connection": 1, "broker": {"url": "http://x"}, "network": "n"}', "broker.url"),
    ('{"qnode_connection": 1, "broker": {"url": "mqtt://x"}}', "network"),
    ('{"qnode_connection": 1, "broker": {"url": "mqtt://x"}, "network": "n", '
     '"applications": {"a": {"purposes": [1]}}}', "applications.a.node"),
])
def test_a_bad_connection_file_is_refused_naming_what_is_wrong(tmp_path: Path, text: str,
                                                              problem: str):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConnectionFileError, match=problem):
        ConnectionInfo.load(path)
    with pytest.raises(ConnectionFileError, match="c.json"):
        ConnectionInfo.load(tmp_path / "missing" / "c.json")


def test_the_client_checks_its_arguments_before_anything_is_sent():
    with pytest.raises(ValueError, match="application"):
        NodeClient("mqtt://localhost", network="n", application="bad name", node="alice")
    with pytest.raises(ValueError, match="mqtts"):
        NodeClient("mqtt://localhost", network="n", application="a", node="b", ca_file="x")
    client = NodeClient("mqtt://localhost", network="n", application="a", node="b")
    with pytest.raises(ValueError, match="min_fidelity"):
        client.create_keep("c", 1, min_fidelity=1.5)
    with pytest.raises(ValueError, match="purpose"):
        client.receive(70_000)
    a, b = client.create_keep("c", 1), client.create_keep("c", 1)
    assert a.request_id != b.request_id
    assert client.create_keep("c", 1, request_id="mine-1").request_id == "mine-1"


def test_results_carry_units_and_codes():
    p = Pair("l", 7, "bob", 9, "psi+", 0.93, "keep", qubit=1, hold_ms=250, received_at=100.0)
    assert p.hold_s == 0.25 and p.hold_left_s(now=100.1) == pytest.approx(0.15)
    assert json.loads(json.dumps(p.to_dict())) == {
        "pool": "l", "pair_id": 7, "remote": "bob", "purpose": 9, "bell_state": "psi+",
        "fidelity": 0.93, "kind": "keep", "qubit": 1, "hold_ms": 250}
    err = RequestExpired("expired", "late", pairs=2, request_id="r")
    assert isinstance(err, RequestError) and err.outcome.status == "expired"
    assert err.outcome.pairs == 2 and err.outcome.code is None
