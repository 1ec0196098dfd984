"""Chains of repeaters as simulated networks (qnode.daemon.tools.topology): the bench file
hal_sim reads, and the node configs plan_network writes for it, agree on every name; the
demo's own chain plans as before."""
from __future__ import annotations

from collections import defaultdict

import pytest

from qnode.daemon.runtime.config import load_config
from qnode.daemon.tools.demo import plan_network
from qnode.daemon.tools.topology import DEMO_CHAIN, chain, chain_bench_text, write_chain_bench
from qnode.hal_sim import bench


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
