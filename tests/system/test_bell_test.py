"""A Bell test over the M link, run as a user would: the demo's M link with analyzer-b at the
CHSH settings (``m_link="bell"``: HWP ±11.25°; the bench variant turns its arms the same way),
a real mosquitto, the source and both analyzer daemons; ``examples/bell_test.py`` reads the
counter's telemetry through the broker until σ_S ≤ 0.01 and reports S beside 2√2·V and the
simulator's truth (the state at the analyzers as set now), with and without the accidentals."""
from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qnode.daemon.tools.demo import DemoNetwork, connection_record

from support.mosquitto import Mosquitto
from support.oracle import telemetry_until

REPO = Path(__file__).resolve().parents[2]
NETWORK = "demo"
NODES = ("source", "analyzer-a", "analyzer-b")
SIGMA = 0.01


def _chsh_ready(latest: dict[str, dict]) -> bool:
    t = latest.get("analyzer-a", {}).get("links", {}).get("m-ab", {})
    return t.get("chsh_s_err") is not None and t["chsh_s_err"] <= 2 * SIGMA


def _bell_test(tmp_path: Path, port: int, truth_file: Path) -> dict[str, Any]:
    conn = tmp_path / "connection.json"
    conn.write_text(json.dumps(connection_record(
        f"mqtt://127.0.0.1:{port}", NETWORK, list(NODES), {}, None, truth_file)))
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "bell_test.py"), "--connection", str(conn),
         "--sigma", str(SIGMA), "--timeout-s", "300"],
        capture_output=True, text=True, timeout=400, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    print(proc.stdout)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.asyncio
async def test_bell_test_over_the_m_link_violates_chsh_as_the_state_predicts(tmp_path):
    with Mosquitto(tmp_path / "mosquitto") as broker:
        net = DemoNetwork(tmp_path / "work", f"mqtt://127.0.0.1:{broker.port}",
                          tmp_path / "logs", nodes=NODES, m_link="bell")
        broker.tap(NETWORK, lambda: net.daemons)   # the contract: checked at the end
        try:
            await asyncio.to_thread(net.start)
            config = (tmp_path / "work" / "configs" / "analyzer-b.toml").read_text()
            assert "angles_deg = [11.25, -11.25]" in config
            await telemetry_until(broker.port, _chsh_ready, 240)
            r = await asyncio.to_thread(_bell_test, tmp_path, broker.port,
                                        tmp_path / "work" / "truth.json")
        finally:
            await asyncio.to_thread(net.close)
    s, sigma = r["s"], r["sigma"]
    assert sigma <= SIGMA, r
    # the bench's source: a Werner state of V = 0.95, no fibre rotation on this link
    assert r["visibility_from"] == "simulator" and r["visibility"] == pytest.approx(0.95)
    assert r["truth"] == pytest.approx(2 * math.sqrt(2) * 0.95, abs=1e-9)
    # a 3σ test bound (plus 0.01 for what counting cannot see: detectors' dead time, the
    # window's tails); the docs show a long run at 0.5σ
    assert abs(s - r["truth"]) <= 3 * sigma + 0.01, r
    assert abs(s - r["predicted"]) <= 3 * sigma + 0.01, r
    assert s > 2 + 10 * sigma, r
    # the accidentals are uncorrelated: without the subtraction every E shrinks by their share
    share = r["accidental_rate_hz"] / r["coincidence_rate_hz"]
    assert 0 < share < 0.01, r
    assert r["s_raw"] <= s, r
    assert abs(r["s_raw"] - s * (1 - share)) <= 3 * r["sigma_raw"] + 0.002, r


def _example():
    import importlib.util

    if str(REPO / "examples") not in sys.path:   # as when run as a script: its sibling modules
        sys.path.insert(0, str(REPO / "examples"))
    spec = importlib.util.spec_from_file_location("bell_test", REPO / "examples" / "bell_test.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module      # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_example_skips_what_is_not_a_counters_telemetry():
    ex = _example()
    for bad in (b"\xff\xfe", b"not json", b"[1, 2]", b'{"body": {"links": 3}}'):
        with pytest.raises(ex.BadRecord):
            ex.link_figures(bad)
    key = {"body": {"links": {"m-ab": {"qber_z": 0.02, "qber_x": 0.03}}}}
    assert ex.link_figures(json.dumps(key).encode()) is None        # no Bell-test settings
    half = {"body": {"links": {"m-ab": {"chsh_s": 2.7, "chsh_s_err": "x"}}}}
    assert ex.link_figures(json.dumps(half).encode()) is None
    good = {"chsh_s": 2.7, "chsh_s_err": 0.01, "chsh_s_raw": 2.69, "chsh_s_raw_err": 0.01}
    assert ex.link_figures(json.dumps({"body": {"links": {"m-ab": good}}}).encode()) == good
    assert ex.m_link_truth(None) is None and ex.m_link_truth("/nonexistent") is None
