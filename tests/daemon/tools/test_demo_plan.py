"""The demo's network plan and bench variants: the M link's settings (``m_link``) turn
analyzer-b's daemon config and the simulated analyzer the same way."""
from __future__ import annotations

import math
from collections import defaultdict

import pytest

from qnode.daemon.runtime.config import load_config
from qnode.daemon.tools.demo import (
    M_LINK_SETTINGS,
    bench_config_path,
    plan_network,
    write_bench_variant,
)
from qnode.hal_sim import bench


def _analyzers(tmp_path, **options):
    addresses: defaultdict[str, str] = defaultdict(lambda: "socket://127.0.0.1:9")
    plan = plan_network(addresses, "mqtt://127.0.0.1:1883", tmp_path, **options)
    plan.write(tmp_path / "configs")
    return [load_config(tmp_path / "configs" / f"{n}.toml").analyzer
            for n in ("analyzer-a", "analyzer-b")]


def test_key_settings_measure_z_and_x_at_both_ends(tmp_path):
    a, b = _analyzers(tmp_path)
    assert a is not None and b is not None
    assert a.bases == b.bases == ("Z", "X") and a.angles_deg == b.angles_deg == (0.0, 22.5)
    assert b.angle_deg == 22.5                  # the X arm's plate, which the daemon turns


def test_bell_settings_turn_analyzer_b_to_the_chsh_angles(tmp_path):
    a, b = _analyzers(tmp_path, m_link="bell")
    assert a is not None and b is not None
    assert a.bases == ("Z", "X")
    assert b.angles_deg == (11.25, -11.25) and b.bases == ("11.25deg", "-11.25deg")
    assert b.angle_deg == -11.25
    with pytest.raises(ValueError, match="m_link: expected one of key, bell"):
        _analyzers(tmp_path, m_link="chsh")


def _m_link(path):
    spec = bench.parse(path.read_text(), str(path))
    return next(link for link in spec.links if link.id == "m-ab")


def test_bench_variant_turns_analyzer_b_arms_and_its_truth_is_a_bell_test(tmp_path):
    path = write_bench_variant(tmp_path, "bell")
    link = _m_link(path)
    a, b = link.nodes
    assert [x.angle_deg for x in a.analyzers] == [0.0, 22.5]
    assert [x.angle_deg for x in b.analyzers] == list(M_LINK_SETTINGS["bell"])
    truth = bench.LinkRuntime(link).truth()
    assert truth["chsh_s"] == pytest.approx(2 * math.sqrt(2) * 0.95)
    assert "qber_z" not in truth                # analyzer-b measures no Pauli basis
    # the variant changes analyzer-b's arms and nothing else
    shipped = bench_config_path().read_text().splitlines()
    changed = [(x, y) for x, y in zip(shipped, path.read_text().splitlines(), strict=True)
               if x != y]
    assert len(changed) == 2 and all("angle_deg" in y for _, y in changed)
    assert "qber_z" in bench.LinkRuntime(_m_link(bench_config_path())).truth()
