"""The bridge planner (qnode.daemon.tools.bridges): which topics cross a site's bridge, the hub's
ACL for it, the sites file and ``qnode bridge-config``. test_bridged_sites runs what it writes
in two real mosquittos."""
from __future__ import annotations

import dataclasses

import pytest

from qnode.daemon.cli import main as cli_main
from qnode.daemon.tools.bridges import (
    Site,
    Sites,
    bridge_conf,
    bridge_topics,
    hub_acl,
    load_configs,
    load_sites,
    shipped_bridge_conf,
)

from support.daemon_harness import node_config, write_key

NET = "t"
B = f"qnet/v1/{NET}"


def _k_link(link: str, peer: str, station: str, key) -> str:
    return (f"[[links]]\nid = \"{link}\"\npeer = \"{peer}\"\ntype = \"K\"\n"
            f"herald = \"{station}\"\nhmac_key_file = \"{key}\"\n\n")


@pytest.fixture
def configs(tmp_path):
    """A chain alice – h1 – repeater – h2 – bob: alice, h1 and the repeater at site a (the hub),
    h2 and bob at site b."""
    key = write_key(tmp_path / "link.key", b"k" * 32)
    memory = "[memory]\ncapacity = 100\n\n"
    bodies = {
        "alice": memory + _k_link("ar", "repeater", "h1", key),
        "repeater": memory + _k_link("ar", "alice", "h1", key) + _k_link("rb", "bob", "h2", key),
        "bob": memory + _k_link("rb", "repeater", "h2", key),
    }
    paths = [node_config(tmp_path / f"{n}.toml", node=n, roles=["memory"], broker_port=1883,
                         state_dir=tmp_path / "state" / n, body=body, network=NET)
             for n, body in bodies.items()]
    configs = load_configs(paths)
    # the stations: what the planner reads of a config is its id and links, and a station
    # ends no link (its heralds are named by the link they herald)
    return {**configs, **{h: dataclasses.replace(configs["bob"], id=h, links=())
                          for h in ("h1", "h2")}}


SITES = Sites(NET, "a", {"a": Site("a", ("h1", "alice", "repeater"), ("app",), "hub:8883"),
                         "b": Site("b", ("h2", "bob"), ("kms-b",))})


def test_only_what_the_other_site_needs_crosses(configs):
    topics = dict(bridge_topics(SITES, configs, "b"))
    # to bob from anywhere, and bob's command topic: in; to alice and the repeater: out
    assert topics[f"{B}/+/ll/bob"] == "in" and topics[f"{B}/bob/cmd"] == "in"
    assert topics[f"{B}/+/ll/repeater"] == "out" and topics[f"{B}/+/proto/alice"] == "out"
    # the crossing link's heralds go both ways (an end at each site); a link inside site a
    # is only ever sent out, so site a's station batches of it never come to b
    assert topics[f"{B}/+/herald/rb"] == "both" and topics[f"{B}/+/herald/ar"] == "out"
    # status, telemetry and routing adverts everywhere; an application's replies and
    # messages to its site
    for t in ("+/status", "+/telemetry", "+/topo"):
        assert topics[f"{B}/{t}"] == "both", t
    for kind in ("reply", "app", "to"):
        assert topics[f"{B}/+/{kind}/app"] == "out" and topics[f"{B}/+/{kind}/kms-b"] == "in"
    assert not any(f.endswith("/+") for f in topics)     # nothing to anyone else's
    # a station takes in only what is addressed to it (commands)
    assert {f: d for f, d in topics.items() if "h2" in f} == {
        **{f"{B}/+/{k}/h2": "in" for k in ("ll", "proto", "svc", "req", "reply")},
        f"{B}/h2/cmd": "in"}


def test_the_hub_acl_lets_the_bridge_write_only_its_sites_prefixes(configs):
    acl = hub_acl(SITES, configs, "b").splitlines()
    assert acl[1] == "user bridge-b"
    writes = {line.split()[2] for line in acl if line.startswith("topic write")}
    assert writes == {f"{B}/h2/#", f"{B}/bob/#", f"{B}/kms-b/#"}
    reads = {line.split()[2] for line in acl if line.startswith("topic read")}
    assert f"{B}/+/req/bob" in reads and f"{B}/+/ll/alice" not in reads


def test_the_bridge_conf_keeps_the_shipped_options_and_fills_in_the_site(configs):
    text = bridge_conf(SITES, configs, "b", ca_file="/x/ca.crt")
    options = {line.split()[0]: line.split(None, 1)[1] for line in text.splitlines()
               if line and not line.startswith(("#", "topic"))}
    shipped = {line.split()[0] for line in shipped_bridge_conf().read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert set(options) == shipped
    assert options["connection"] == "qnode-b" and options["address"] == "hub:8883"
    assert options["remote_clientid"] == "bridge-b" and options["bridge_cafile"] == "/x/ca.crt"
    assert options["bridge_certfile"].endswith("bridge-b.crt")    # the shipped path, for b
    assert options["cleansession"] == "false" and options["try_private"] == "true"
    assert sum(line.startswith("topic ") for line in text.splitlines()) == len(
        bridge_topics(SITES, configs, "b"))
    with pytest.raises(ValueError, match="is the hub"):
        bridge_topics(SITES, configs, "a")
    with pytest.raises(ValueError, match="no config for node"):
        bridge_topics(SITES, {k: v for k, v in configs.items() if k != "bob"}, "b")


@pytest.mark.parametrize("text, message", [
    ('network = "t"\nhub = "a"\n[sites.a]\nnodes = ["x"]\n', "the hub's broker needs one"),
    ('network = "t"\nhub = "c"\n[sites.a]\nnodes = ["x"]\naddress = "h:1"\n', "not one of"),
    ('network = "t"\nhub = "a"\n[sites.a]\nnodes = ["x"]\naddress = "h:1"\n'
     '[sites.b]\nnodes = ["x"]\n', "'x' is at two sites"),
    ('network = "t"\nhub = "a"\n[sites.a]\nnodes = []\naddress = "h:1"\n', "sites.a.nodes"),
    ('network = "t"\nhub = "a"\n[sites.a]\nnodes = ["x"]\naddress = "nohost"\n', "host:port"),
    ('network = "t"\n[sites.a]\nnodes = ["x"]\n', "missing key 'hub'"),
    ('network = \n', "sites.toml"),
    # names and addresses land in mosquitto's files: no second line through them
    ('network = "t"\nhub = "a"\n[sites.a]\nnodes = ["x\\ntopic # both 1"]\naddress = "h:1"\n',
     r"sites.a: 'x\\ntopic # both 1' is not a name"),
    ('network = "t"\nhub = "a"\n[sites.a]\nnodes = ["x"]\napplications = ["a b"]\n'
     'address = "h:1"\n', "'a b' is not a name"),
    ('network = "t"\nhub = "a"\n[sites.a]\nnodes = ["x"]\naddress = "h:1\\nuser admin"\n',
     "sites.a.address: expected host:port"),
    ('network = "t #"\nhub = "a"\n[sites.a]\nnodes = ["x"]\naddress = "h:1"\n',
     "network: 't #' is not a name"),
])
def test_a_bad_sites_file_is_refused_naming_the_key(tmp_path, text, message):
    path = tmp_path / "sites.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_sites(path)


def test_the_command_writes_each_sites_bridge_and_the_hubs_acl(tmp_path, configs, capsys):
    (tmp_path / "sites.toml").write_text(
        'network = "t"\nhub = "a"\n[sites.a]\nnodes = ["alice", "repeater"]\n'
        'address = "hub.lab:8883"\n[sites.b]\nnodes = ["bob"]\n')
    argv = ["bridge-config", "--sites", str(tmp_path / "sites.toml"), "--out",
            str(tmp_path / "out"), "--configs",
            *(str(tmp_path / f"{n}.toml") for n in ("alice", "repeater", "bob"))]
    assert cli_main(argv) == 0
    assert "address hub.lab:8883" in (tmp_path / "out" / "bridge-b.conf").read_text()
    assert "user bridge-b" in (tmp_path / "out" / "hub-bridges.acl").read_text()
    assert cli_main([*argv[:-1]]) == 2            # bob's config missing
    assert "no config for node(s) bob" in capsys.readouterr().err
    (tmp_path / "sites.toml").write_text(
        'network = "t"\nhub = "a"\n[sites.a]\nnodes = ["alice"]\naddress = "hub.lab:8883"\n'
        '[sites.b]\nnodes = ["bob"]\n')
    assert cli_main(argv) == 2                    # the repeater is at no site
    assert "node(s) repeater are at no site" in capsys.readouterr().err
    (tmp_path / "sites.toml").write_text(
        'network = "other"\nhub = "a"\n[sites.a]\nnodes = ["alice", "repeater"]\n'
        'address = "hub.lab:8883"\n[sites.b]\nnodes = ["bob"]\n')
    assert cli_main(argv) == 2
    assert "are of another network than 'other'" in capsys.readouterr().err
