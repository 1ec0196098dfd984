"""Chains of repeaters and meshes as simulated networks (qnode.daemon.tools.topology): the
bench file hal_sim reads, and the node configs plan_network writes for it, agree on every
name; the demo's own chain plans as before."""
from __future__ import annotations

from collections import defaultdict

import pytest

from qnode.daemon.cli import main as cli_main
from qnode.daemon.runtime.config import load_config
from qnode.daemon.tools.demo import plan_network
from qnode.daemon.tools.topology import (
    DEMO_CHAIN,
    Mesh,
    chain,
    chain_bench_text,
    links_of,
    load_topology,
    write_chain_bench,
)
from qnode.hal_sim import bench

from support import REPO


@pytest.mark.parametrize("repeaters", [1, 2, 4])
def test_the_bench_and_the_configs_of_a_chain_name_the_same_links(tmp_path, repeaters):
    c = chain(repeaters)
    assert len(c.nodes) == repeaters + 2 and len(c.links) == len(c.stations) == repeaters + 1
    spec = bench.parse(write_chain_bench(tmp_path, c).read_text(), "chain")
    assert [link.id for link in spec.links] == list(c.links)
    names = {i.name for i in spec.instruments}
    assert {f"{n}-qdevice" for n in c.nodes} | {f"{s}-tagger" for s in c.stations} \
        | {"qdevice-truth"} == names
    addresses: defaultdict[str, str] = defaultdict(lambda: "socket://127.0.0.1:9")
    plan = plan_network(addresses, "mqtt://127.0.0.1:1883", tmp_path, chain=c,
                        with_m_link=False)
    plan.write(tmp_path / "configs")
    assert set(plan.nodes) == {*c.nodes, *c.stations}
    for node in c.nodes:
        cfg = load_config(tmp_path / "configs" / f"{node}.toml")
        (path,) = cfg.paths
        assert path.nodes == c.nodes and path.links == c.links
        assert ("repeater" in cfg.roles) == (node in c.repeaters)
    for k, station in enumerate(c.stations):
        herald = load_config(tmp_path / "configs" / f"{station}.toml").herald
        assert herald is not None and herald.link == c.links[k]
        assert tuple(herald.ends) == c.nodes[k:k + 2]


def test_the_demo_chain_plans_the_m_link_unless_told_not_to(tmp_path):
    addresses: defaultdict[str, str] = defaultdict(lambda: "socket://127.0.0.1:9")
    demo = plan_network(addresses, "mqtt://127.0.0.1:1883", tmp_path)
    assert {"source", "analyzer-a", "analyzer-b"} <= set(demo.nodes)
    bare = plan_network(addresses, "mqtt://127.0.0.1:1883", tmp_path, with_m_link=False)
    assert set(bare.nodes) == {*DEMO_CHAIN.nodes, *DEMO_CHAIN.stations}


def test_a_chain_needs_a_repeater():
    with pytest.raises(ValueError, match="at least one repeater"):
        chain(0)
    assert chain(1) == DEMO_CHAIN and "r1" not in chain_bench_text(DEMO_CHAIN)


def test_the_shipped_topology_is_a_chain_of_four_repeaters():
    t = load_topology(REPO / "examples" / "topologies" / "chain-4-repeaters.toml")
    assert t.network == chain(4) and t.bench == {"attempt_rate_hz": 3e5}
    # what the demo writes for it is a bench hal_sim takes
    assert bench.parse(chain_bench_text(t.network, **t.bench), "chain").links


@pytest.mark.parametrize(("text", "error"), [
    ("[chain]\nrepeaters = 0\n", r"chain.repeaters: expected an integer from 1 to 16, got 0"),
    ("[chain]\nrepeaters = 17\n", r"from 1 to 16, got 17"),
    ("[chain]\nrepeaters = true\n", r"got True"),
    ("[chain]\nrepeaters = 2\nattempt_rate_hz = nan\n", r"chain.attempt_rate_hz: expected"),
    ("[chain]\nrepeaters = 2\nattempt_rate_hz = 1e9\n", r"1e3 to 1e7 attempts/s"),
    ("[chain]\nrepeaters = 2\nstations = 3\n", r"chain: unknown key\(s\) stations"),
    ("[mesh]\nnodes = 10\n", r"mesh: unknown key\(s\) nodes"),
    ("[ring]\nnodes = 10\n", r"expected one \[chain\] or \[mesh\] table, not ring"),
    ("chain = 4\n", r"expected one \[chain\] or \[mesh\] table"),
    ("[mesh]\nends = [\"a\"]\nlinks = [[\"a\", \"b\"], [\"b\", \"c\"]]\n",
     r"mesh.ends: expected two node names"),
    ("[mesh]\nends = [\"a\", \"c\"]\nlinks = [[\"a\", \"b\"]]\n", r"mesh.links: expected 2 to"),
    ("[mesh]\nends = [\"a\", \"c\"]\nlinks = [[\"a\", \"b\"], [\"b\", \"a\"]]\n",
     r"link b-a joins a node to itself or is twice"),
    ("[mesh]\nends = [\"a\", \"z\"]\nlinks = [[\"a\", \"b\"], [\"b\", \"c\"]]\n",
     r"must be two of its nodes"),
    ("[mesh]\nends = [\"a\", \"c\"]\nlinks = [[\"a\", \"b-x\"], [\"b\", \"c\"]]\n",
     r"mesh.links: expected"),
    ("[chain\n", r"topo.toml: "),
])
def test_a_bad_topology_file_is_one_line(tmp_path, text, error):
    path = tmp_path / "topo.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        load_topology(path)


def test_the_demo_refuses_a_bad_topology_before_starting_anything(tmp_path, capsys):
    path = tmp_path / "topo.toml"
    path.write_text("[chain]\nrepeaters = 99\n")
    assert cli_main(["demo", "--topology", str(path), "--report", str(tmp_path / "r")]) == 2
    assert "--topology: " in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert cli_main(["demo", "--serve", "--topology", str(path)]) == 2
    assert "--topology is for the timed demo" in capsys.readouterr().err


def test_the_shipped_mesh_plans_routed_paths_and_no_configured_one(tmp_path):
    """Ten nodes, two disjoint routes between the ends: the bench and the configs name the
    same links, a node with three links has one QDevice for all of them, no config has a
    [[paths]] table, and the ends keep a routed path to each other."""
    t = load_topology(REPO / "examples" / "topologies" / "mesh-10-nodes.toml")
    m = t.network
    assert isinstance(m, Mesh) and len(m.nodes) == 10 and len(m.links) == 12
    assert m.ends == ("alice", "bob") and t.bench == {"attempt_rate_hz": 1e5}
    spec = bench.parse(write_chain_bench(tmp_path, m, **t.bench).read_text(), "mesh")
    assert [link.id for link in spec.links] == list(m.links)
    addresses: defaultdict[str, str] = defaultdict(lambda: "socket://127.0.0.1:9")
    plan = plan_network(addresses, "mqtt://127.0.0.1:1883", tmp_path, chain=m,
                        with_m_link=False)
    plan.write(tmp_path / "configs")
    assert set(plan.nodes) == {*m.nodes, *m.stations}
    for node in m.nodes:
        cfg = load_config(tmp_path / "configs" / f"{node}.toml")
        assert cfg.paths == ()
        assert {(lc.id, lc.peer) for lc in cfg.links} == {
            (link, peer) for link, peer, _ in links_of(m, node)}
        assert ("repeater" in cfg.roles) == (node in m.repeaters)
        assert cfg.routing.paths_to == {"alice": ("bob",), "bob": ("alice",)}.get(node, ())
    assert len(links_of(m, "r2")) == 3
    for station, (a, b) in zip(m.stations, m.edges, strict=True):
        herald = load_config(tmp_path / "configs" / f"{station}.toml").herald
        assert herald is not None and tuple(herald.ends) == (a, b)
