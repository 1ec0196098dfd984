"""Node configs: the example is valid, and every mistake names its key."""
from __future__ import annotations

from pathlib import Path

import pytest

from qnode.daemon.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "alice.example.toml"
SECRETS = ("ca.crt", "alice.crt", "alice.key", "links/alice-bob.key")


@pytest.fixture
def example_text(tmp_path: Path) -> str:
    """The example with its /etc/qnode files made real under tmp_path."""
    for name in SECRETS:
        f = tmp_path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("secret\n")
    return EXAMPLE.read_text().replace("/etc/qnode/", f"{tmp_path}/")


def test_the_example_config_is_valid(example_text, tmp_path):
    f = tmp_path / "alice.toml"
    f.write_text(example_text)
    cfg = load_config(f)
    assert cfg.id == "alice" and cfg.roles == ("analyzer",)
    assert cfg.topic_prefix == "qnet/v1/lab/alice"
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.tls) == ("broker.lab", 8883, True)
    assert cfg.instruments["tagger"].kind == "id900"
    assert cfg.links[0].peer == "bob" and cfg.links[0].hmac_key_file.is_file()
    assert cfg.metrics.prometheus_port == 9108


MINIMAL = """
[node]
id = "n1"
network = "net"
roles = ["memory"]
[broker]
url = "mqtt://127.0.0.1"
"""


def test_a_minimal_config_gets_defaults(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/qnode/n1")
    cfg = parse_config(MINIMAL)
    assert cfg.broker.port == 1883 and not cfg.broker.tls
    assert str(cfg.state_dir) == "/var/lib/qnode/n1"
    assert cfg.thresholds.max_qber == 0.11 and cfg.links == ()


@pytest.mark.parametrize("edit, key, problem", [
    (("id = \"n1\"", "id = \"n/1\""), "node.id", "letters, digits"),
    (("roles = [\"memory\"]", "roles = [\"memroy\"]"), "node.roles[0]", "not one of"),
    (("roles = [\"memory\"]", "roles = []"), "node.roles", "non-empty list"),
    (("url = \"mqtt://127.0.0.1\"", "url = \"http://x\""), "broker.url", "mqtt:// or mqtts://"),
    (("url = \"mqtt://127.0.0.1\"", "url = \"mqtts://x\""), "broker.ca_file", "is required"),
    (("url = \"mqtt://127.0.0.1\"", "url = \"mqtt://x:99999\""), "broker.url", "port"),
    (("network = \"net\"", "network = \"net\"\ncolour = 1"), "node.colour", "unknown key"),
])
def test_mistakes_name_the_key(edit, key, problem):
    text = MINIMAL.replace(*edit)
    with pytest.raises(ConfigError) as err:
        parse_config(text, "n1.toml")
    assert err.value.key == key, str(err.value)
    assert problem in str(err.value) and str(err.value).startswith(f"n1.toml: {key}:")


@pytest.mark.parametrize("extra, key, problem", [
    ("[instruments.t]\nkind = \"id901\"\naddress = \"x\"\n", "instruments.t.kind", "not one of"),
    ("[instruments.t]\nkind = \"id900\"\n", "instruments.t.address", "is required"),
    ("[instruments.t]\nkind = \"id900\"\naddress = \"x\"\ntimeout_s = -1\n",
     "instruments.t.timeout_s", "number in"),
    ("[instruments.t]\nkind = \"replay\"\naddress = \"/nonexistent.ptu\"\n",
     "instruments.t.address", "does not exist"),
    ("[[links]]\nid = \"l\"\npeer = \"b\"\ntype = \"K\"\n", "links[0].herald", "herald"),
    ("[[links]]\nid = \"l\"\npeer = \"n1\"\ntype = \"M\"\n", "links[0].peer", "node itself"),
    ("[[links]]\nid = \"l\"\npeer = \"b\"\ntype = \"M\"\n[[links]]\nid = \"l\"\npeer = \"c\"\n"
     "type = \"M\"\n", "links[1].id", "used by another"),
    ("[[links]]\nid = \"l\"\npeer = \"b\"\ntype = \"M\"\nhmac_key_file = \"/nope\"\n",
     "links[0].hmac_key_file", "does not exist"),
    ("[thresholds]\nmax_qber = 0.7\n", "thresholds.max_qber", "number in"),
    ("[metrics]\nprometheus_port = 70000\n", "metrics.prometheus_port", "integer in"),
])
def test_mistakes_in_instruments_links_and_limits_name_the_key(extra, key, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(MINIMAL + extra, "n1.toml")
    assert err.value.key == key, str(err.value)
    assert problem in str(err.value)


def test_a_role_without_its_instruments_is_refused():
    text = MINIMAL.replace("roles = [\"memory\"]", "roles = [\"analyzer\"]")
    with pytest.raises(ConfigError, match=r"instruments: role 'analyzer' needs .*id900 or replay"):
        parse_config(text)


def test_unreadable_or_broken_files_say_so(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\n")
    with pytest.raises(ConfigError, match=r"bad.toml: \(syntax\): not valid TOML"):
        load_config(bad)


STATION = MINIMAL.replace('roles = ["memory"]', 'roles = ["herald"]') + """
[instruments.tagger]
kind = "id900"
address = "127.0.0.1"
"""


def test_role_tables_get_defaults_and_resolve_instruments():
    cfg = parse_config(STATION + '[herald]\nlink = "a-b"\nends = ["a", "b"]\n')
    assert cfg.herald.tagger == "tagger" and cfg.herald.channels == (1, 2, 3, 4)
    assert cfg.herald.ends == ("a", "b") and cfg.memory is None and cfg.analyzer is None
    mem = parse_config(MINIMAL + "[memory]\ncapacity = 10\n").memory
    assert mem.capacity == 10 and mem.max_pair_age_s == 1.0


@pytest.mark.parametrize("table, key, problem", [
    ('[herald]\nlink = "a-b"\nends = ["a"]\n', "herald.ends", "two memory nodes"),
    ('[herald]\nends = ["a", "b"]\n', "herald.link", "is required"),
    ('[herald]\nlink = "a-b"\nends = ["a", "b"]\nchannels = [1, 1, 2, 3]\n', "herald.channels",
     "4 different"),
    ('[herald]\nlink = "a-b"\nends = ["a", "b"]\ntagger = "hwp"\n', "herald.tagger",
     "no instrument"),
    ('[herald]\nlink = "a-b"\nends = ["a", "b"]\nwindow_ps = 0\n', "herald.window_ps",
     "integer in"),
    ('[herald]\nlink = "a-b"\nends = ["a", "b"]\n[source]\npump = "p"\n', "source",
     "node.roles does not list"),
    ('[herald]\nlink = "a-b"\nends = ["a", "b"]\ncolour = 2\n', "herald.colour", "unknown key"),
])
def test_role_table_mistakes_name_the_key(table, key, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(STATION + table, "s.toml")
    assert err.value.key == key, str(err.value)
    assert problem in str(err.value)


def test_a_herald_role_without_its_table_says_what_it_needs():
    with pytest.raises(ConfigError, match=r"herald: role 'herald' needs a \[herald\] table"):
        parse_config(STATION)
