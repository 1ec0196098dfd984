"""`qnode demo` as the README runs it: embedded amqtt broker, eight daemons, the report."""
from __future__ import annotations

import json
import subprocess
import sys

from qnode.daemon.bus.telemetry import unknown_fields
from qnode.daemon.tools.report import read_records


def test_the_demo_runs_the_network_and_writes_a_report_that_matches_the_truth(tmp_path):
    report = tmp_path / "report"
    run = subprocess.run([sys.executable, "-m", "qnode.daemon.cli", "demo", "--duration", "12",
                          "--report", str(report)], capture_output=True, text=True, timeout=240)
    logs = "\n".join(p.read_text()[-1500:] for p in (report / "logs").glob("*.log"))
    assert run.returncode == 0, run.stdout + run.stderr + logs
    assert "report in" in run.stdout and "nodes 8 (8 ready)" in run.stdout  # the live view
    for name in ("g2.png", "rates.png", "fidelity.png", "summary.json", "telemetry.jsonl"):
        assert (report / name).stat().st_size > 1000, name
        if name.endswith(".png"):
            assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every field of every node's records is in the telemetry schema
    records, _ = read_records(report / "telemetry.jsonl")
    assert {r["node"] for r in records} >= {"herald1", "alice", "repeater", "source",
                                            "analyzer-a"}
    undeclared = {f"{r['node']}: {f}" for r in records for f in unknown_fields(r)}
    assert not undeclared, sorted(undeclared)
    summary = json.loads((report / "summary.json").read_text())
    assert summary["exit_codes"] and set(summary["exit_codes"].values()) == {0}
    assert len(summary["nodes"]) == 8
    for station, link in (("herald1", "alice-repeater"), ("herald2", "repeater-bob")):
        rate = summary["nodes"][station]["links"][link]["truth"]["herald_rate_hz"]
        assert abs(rate["mean"] - rate["truth"]) < 0.15 * rate["truth"], (link, rate)
    m = summary["nodes"]["analyzer-a"]["links"]["m-ab"]["truth"]
    assert abs(m["visibility"]["final"] - m["visibility"]["truth"]) < 0.02, m["visibility"]
    assert abs(summary["g2"]["peak_delay_ns"]) < 0.3
