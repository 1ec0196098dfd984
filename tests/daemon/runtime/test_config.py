"""Node configs: the example is valid, and every mistake names its key."""
from __future__ import annotations

import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from qnode.daemon.bus.identity import keygen
from qnode.daemon.bus.keys import write_key_file
from qnode.daemon.kme.pki import write_demo_pki
from qnode.daemon.runtime.config import ConfigError, load_config, parse_config, prepare_state_dir

from support import REPO

EXAMPLE = REPO / "systemd" / "alice.example.toml"
SECRETS = ("ca.crt", "alice.crt", "alice.key", "links/alice-bob.key")


@pytest.fixture
def example_text(tmp_path: Path) -> str:
    """The example with its /etc/qnode files made real under tmp_path."""
    for name in SECRETS:
        f = tmp_path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        write_key_file(f, "0123456789abcdef" * 4)
    keygen("alice", tmp_path / "identity")
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


IDENTITY = tempfile.mkdtemp(prefix="qnode-test-identity-")  # removed by the OS's tmp cleaning
keygen("n1", IDENTITY)
STATION = MINIMAL.replace('roles = ["memory"]', 'roles = ["herald"]').replace(
    'network = "net"', f'network = "net"\nidentity_key_file = "{IDENTITY}/n1.key"\n'
                       f'trust_dir = "{IDENTITY}"') + """
[instruments.tagger]
kind = "id900"
address = "127.0.0.1"
"""


def test_role_tables_get_defaults_and_resolve_instruments(tmp_path):
    key = write_key_file(tmp_path / "a-b.key", "0123456789abcdef" * 4)
    cfg = parse_config(STATION + f'[herald]\nlink = "a-b"\nends = ["a", "b"]\n'
                                 f'hmac_key_file = "{key}"\n')
    assert cfg.herald.hmac_key_file == key
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


@pytest.mark.parametrize("text", [
    "a = " + "[" * 10_000,                     # RecursionError inside tomllib
    "a = " + "{b = " * 10_000,
    "a = " + "[" * 40 + "]" * 40,              # parses, but deeper than any config
])
def test_a_deeply_nested_file_is_a_config_error_not_a_traceback(text):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "deep.toml")
    assert str(err.value).startswith("deep.toml: (syntax): nesting too deep")


def test_a_state_dir_that_cannot_be_a_directory_is_refused_at_parsing(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    for state_dir, problem in ((f, "exists and is not a directory"),
                               (f / "sub" / "dir", f"cannot be created: '{f}' is not a directory")):
        text = MINIMAL.replace('roles = ["memory"]',
                               f'roles = ["memory"]\nstate_dir = "{state_dir}"')
        with pytest.raises(ConfigError) as err:
            parse_config(text, "n1.toml")
        assert str(err.value) == f"n1.toml: node.state_dir: '{state_dir}' {problem}"


def _with_state_dir(tmp_path: Path, state_dir: Path) -> Path:
    f = tmp_path / "n1.toml"
    f.write_text(MINIMAL.replace('roles = ["memory"]',
                                 f'roles = ["memory"]\nstate_dir = "{state_dir}"'))
    return f


def test_prepare_state_dir_makes_a_private_directory(tmp_path):
    d = tmp_path / "var" / "qnode" / "n1"
    cfg = load_config(_with_state_dir(tmp_path, d))
    assert prepare_state_dir(cfg) == d and stat.S_IMODE(d.stat().st_mode) == 0o700
    assert prepare_state_dir(cfg) == d   # already there: fine


@pytest.mark.skipif(not Path("/proc/1").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("state_dir, problem", [
    ("/proc/1", "'/proc/1' is not writable by this user"),   # even root may not write there
    ("/proc/qnode-test/state", "'/proc/qnode-test/state' cannot be created: "),
])
def test_a_state_dir_this_user_cannot_use_is_one_line_from_qnode_run(tmp_path, state_dir,
                                                                     problem):
    f = _with_state_dir(tmp_path, Path(state_dir))
    cfg = load_config(f)   # parsing is fine: another user (qnode status) may read the config
    with pytest.raises(ConfigError) as err:
        prepare_state_dir(cfg)
    assert err.value.key == "node.state_dir" and problem in str(err.value)
    out = subprocess.run([sys.executable, "-m", "qnode.daemon.cli", "run", "--config", str(f)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"qnode: config error: {f}: node.state_dir: {err.value.problem}\n"


def test_heralds_need_the_station_identity_key_and_the_ends_its_public_key(tmp_path):
    """Heralds are signed with the station's own key, so neither end can forge them: a station
    without an identity key, and an end that cannot verify its station, are refused."""
    key = write_key_file(tmp_path / "a-b.key", "0123456789abcdef" * 4)
    station = MINIMAL.replace('roles = ["memory"]', 'roles = ["herald"]') + (
        f'[instruments.tagger]\nkind = "id900"\naddress = "127.0.0.1"\n'
        f'[herald]\nlink = "a-b"\nends = ["a", "b"]\nhmac_key_file = "{key}"\n')
    with pytest.raises(ConfigError, match=r"node.identity_key_file: a herald station signs"):
        parse_config(station)
    end = MINIMAL + (f'[[links]]\nid = "a-b"\npeer = "b"\ntype = "K"\nherald = "hs"\n'
                     f'hmac_key_file = "{key}"\n')
    with pytest.raises(ConfigError, match=r"links\[0\].herald: .*put hs.pub in "
                                          r"node.trust_dir \(missing\)"):
        parse_config(end)
    keygen("hs", tmp_path / "ids")
    cfg = parse_config(end.replace('roles = ["memory"]',
                                   f'roles = ["memory"]\ntrust_dir = "{tmp_path}/ids"'))
    assert cfg.trust_dir == tmp_path / "ids"


def test_identity_key_files_are_checked(tmp_path):
    private, public = keygen("n1", tmp_path / "ids")
    ok = MINIMAL.replace('roles = ["memory"]',
                         f'roles = ["memory"]\nidentity_key_file = "{private}"')
    assert parse_config(ok).identity_key_file == private
    private.chmod(0o644)
    with pytest.raises(ConfigError, match=r"node.identity_key_file: .*group or others"):
        parse_config(ok)
    private.chmod(0o600)
    private.write_text("not a key")
    with pytest.raises(ConfigError, match=r"node.identity_key_file: .*not an unencrypted PEM"):
        parse_config(ok)
    public.write_text("not a key either")
    with pytest.raises(ConfigError, match=r"node.trust_dir: .*n1.pub.* not a PEM public key"):
        parse_config(MINIMAL.replace('roles = ["memory"]',
                                     f'roles = ["memory"]\ntrust_dir = "{tmp_path}/ids"'))


def test_an_m_links_counter_signs_and_its_other_end_verifies(tmp_path):
    """The end of an M link whose id sorts first counts and heralds: it needs its identity key;
    the other end needs the counter's public key."""
    key = write_key_file(tmp_path / "m.key", "0123456789abcdef" * 4)
    analyzer = ('[instruments.tagger]\nkind = "id900"\naddress = "127.0.0.1"\n'
                '[[links]]\nid = "m"\ntype = "M"\n'
                f'hmac_key_file = "{key}"\n')

    def node(name: str, peer: str, extra: str = "") -> str:
        return (f'[node]\nid = "{name}"\nnetwork = "net"\nroles = ["analyzer"]\n{extra}'
                f'[broker]\nurl = "mqtt://127.0.0.1"\n' + analyzer + f'peer = "{peer}"\n')
    with pytest.raises(ConfigError, match=r"node.identity_key_file: this node counts M link"):
        parse_config(node("a", "b"))
    with pytest.raises(ConfigError, match=r"links\[0\].peer: the counter 'a' signs .*put a.pub"):
        parse_config(node("b", "a"))
    private, _ = keygen("a", tmp_path / "ids")
    assert parse_config(node("a", "b", f'identity_key_file = "{private}"\n')).links[0].peer == "b"
    assert parse_config(node("b", "a", f'trust_dir = "{tmp_path}/ids"\n')).links[0].peer == "a"


# ------------------------------------------------------------------ the QDevice's gate noise

@pytest.mark.parametrize("n, g, f_avg", [(2, 0.999, 0.99925), (2, 0.96, 0.97), (1, 0.999, 0.9995),
                                         (1, 0.9, 0.95)])
def test_the_gate_noise_may_be_given_as_g_or_as_average_gate_fidelity(n, g, f_avg):
    """g (new name or the earlier one) and F_avg with 1 − F_avg = (d − 1)/d·(1 − g) give the
    same g in the config's field gate_fidelity_<n>q, the name the estimates read."""
    def field(key: str, value: float) -> float:
        mem = parse_config(MINIMAL + f"[memory]\n{key} = {value!r}\n").memory
        return getattr(mem, f"gate_fidelity_{n}q")
    assert field(f"gate_depolarising_{n}q", g) == g
    assert field(f"gate_fidelity_{n}q", g) == g          # the earlier name, read as g
    assert field(f"gate_average_fidelity_{n}q", f_avg) == pytest.approx(g, abs=1e-12)
    other = 3 - n
    assert getattr(parse_config(MINIMAL + f"[memory]\ngate_depolarising_{n}q = {g!r}\n").memory,
                   f"gate_fidelity_{other}q") == 1.0   # the other gate keeps its default


@pytest.mark.parametrize("keys", [("gate_depolarising_2q", "gate_average_fidelity_2q"),
                                  ("gate_depolarising_2q", "gate_fidelity_2q"),
                                  ("gate_average_fidelity_1q", "gate_fidelity_1q")])
def test_two_names_for_one_gates_noise_are_refused_naming_both(keys):
    text = MINIMAL + "[memory]\n" + "".join(f"{k} = 0.99\n" for k in keys)
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert err.value.key in {f"memory.{k}" for k in keys}
    assert all(k in str(err.value) for k in keys)


@pytest.mark.parametrize("key, value, allowed", [
    ("gate_average_fidelity_2q", 0.2, r"\[0.25, 1\]"),   # below F_avg of g = 0, 1/4
    ("gate_average_fidelity_1q", 0.4, r"\[0.5, 1\]"),
    ("gate_depolarising_2q", 1.5, r"\[0, 1\]")])
def test_gate_noise_out_of_range_names_the_key(key, value, allowed):
    with pytest.raises(ConfigError, match=rf"memory.{key}: must be a number in {allowed}"):
        parse_config(MINIMAL + f"[memory]\n{key} = {value}\n")


QDEVICE_NODE = MINIMAL + ('[instruments.qmem]\nkind = "qdevice"\naddress = "127.0.0.1:9"\n'
                          '[memory]\nqdevice = "qmem"\n')


def _channel(cid: str, source: str, target: str) -> str:
    return f'[[quantum_channels]]\nid = "{cid}"\nfrom = "{source}"\nto = "{target}"\n'


def test_quantum_channels_start_or_end_at_this_node():
    cfg = parse_config(QDEVICE_NODE + _channel("qc-1", "n1", "n2") + _channel("qc-2", "n3", "n1"))
    assert [(c.id, c.source, c.target) for c in cfg.quantum_channels] == [
        ("qc-1", "n1", "n2"), ("qc-2", "n3", "n1")]
    assert parse_config(QDEVICE_NODE).quantum_channels == ()


@pytest.mark.parametrize("text, key, problem", [
    (QDEVICE_NODE + _channel("qc", "n2", "n3"), "quantum_channels[0].from", "neither end"),
    (QDEVICE_NODE + _channel("qc", "n1", "n1"), "quantum_channels[0].to", "twice"),
    (QDEVICE_NODE + _channel("q/c", "n1", "n2"), "quantum_channels[0].id", "letters, digits"),
    (QDEVICE_NODE + _channel("qc", "n1", "n2") + _channel("qc", "n2", "n1"),
     "quantum_channels[1].id", "names quantum_channels[0] already"),
    (QDEVICE_NODE + _channel("qc", "n1", "n2") + _channel("qd", "n1", "n2"),
     "quantum_channels[1].to", "a second channel from 'n1' to 'n2'"),
    (QDEVICE_NODE + '[[quantum_channels]]\nid = "qc"\nfrom = "n1"\n',
     "quantum_channels[0].to", "is required"),
    (MINIMAL + _channel("qc", "n1", "n2"), "quantum_channels", "needs [memory].qdevice"),
])
def test_quantum_channel_mistakes_name_the_key(text, key, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "q.toml")
    assert err.value.key == key, str(err.value)
    assert problem in str(err.value)


# ------------------------------------------------------------------ keys and the KME

KME = """[kme]
listen = "127.0.0.1:0"
cert = "kme.crt"
key = "kme.key"
ca = "ca.crt"
store = "keys.sqlite"
saes = [{id = "sae-b", node = "b"}, {id = "sae-c", node = "c"}]
"""


def _kme_node(tmp_path, kme: str = KME) -> str:
    pki = write_demo_pki(tmp_path / "pki", saes=["sae-b"])
    for name, source in (("kme.crt", pki.server_cert), ("kme.key", pki.server_key),
                         ("ca.crt", pki.ca)):
        (tmp_path / name).write_bytes(source.read_bytes())
    kme = (kme.replace('"kme.', f'"{tmp_path}/kme.').replace('"ca.crt"', f'"{tmp_path}/ca.crt"')
           .replace('"keys.sqlite"', f'"{tmp_path}/keys.sqlite"'))
    return ('[node]\nid = "c"\nnetwork = "net"\nroles = ["memory"]\n'
            '[broker]\nurl = "mqtt://127.0.0.1"\n' + kme)


def test_the_kme_is_read(tmp_path):
    cfg = parse_config(_kme_node(tmp_path))
    assert cfg.kme is not None and cfg.kme.port == 0 and cfg.kme.kme_id == "kme-c"
    assert cfg.kme.local_saes() == ["sae-c"] and cfg.kme.node_of("sae-b") == "b"
    assert parse_config(MINIMAL).kme is None


@pytest.mark.parametrize("kme, match", [
    (KME.replace('listen = "127.0.0.1:0"', 'listen = "nowhere"'), r"kme.listen: must be"),
    (KME.replace("saes = ", "sas = "), r"kme: unknown key\(s\) sas"),
    (KME.replace('store = "keys.sqlite"\n', ""), r"kme.store: is required"),
    (KME.replace('listen = "127.0.0.1:0"', "listen = 5"), r"kme.listen: must be a string"),
    (KME.replace('ca = "ca.crt"', 'ca = "/nowhere/ca.crt"'),
     r"kme.ca: '/nowhere/ca.crt' is not a readable file"),
    (KME.replace('key = "kme.key"', 'key = "ca.crt"'),
     r"kme.cert: the KME's certificate, key and CA do not load"),
    (KME.replace('store = "keys.sqlite"', 'store = "/nonexistent/dir/keys.sqlite"'),
     r"kme.store: the folder '/nonexistent/dir' of the key store does not exist"),
])
def test_a_bad_kme_table_names_the_key(tmp_path, kme, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(_kme_node(tmp_path, kme))
