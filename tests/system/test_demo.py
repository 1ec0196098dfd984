"""`qnode demo` as the README runs it: embedded amqtt broker, eight daemons, the report."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading

from qnode.daemon.bus.telemetry import unknown_fields
from qnode.daemon.tools.report import read_records

from support.contract import ContractTap


def _demo(*args: str, timeout_s: float) -> tuple[subprocess.CompletedProcess, ContractTap]:
    """``qnode demo`` with a contract tap on its embedded broker: the demo prints the broker's
    URL before it starts the network, so the tap connects before any daemon. The broker ends
    with the demo, so the tap is judged on what it received (no marker round trip; the
    daemons have all exited by then). Every publisher on the demo's network is one of its
    daemons (no application runs)."""
    proc = subprocess.Popen([sys.executable, "-m", "qnode.daemon.cli", "demo", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)   # a failure kills its daemons too
    out: list[str] = []
    err: list[str] = []
    url = threading.Event()
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout, proc.stderr

    def read_out() -> None:
        for line in stdout:
            out.append(line)
            if "broker mqtt://" in line:
                url.set()
    readers = [threading.Thread(target=read_out),
               threading.Thread(target=lambda: err.extend(stderr))]
    for r in readers:
        r.start()
    tap = None
    try:
        found = re.search(r"broker mqtt://[^:]+:(\d+)", "".join(out)) if url.wait(60) else None
        assert found, "".join(out) + "".join(err)
        tap = ContractTap(int(found.group(1)), network="demo", persistent=False)  # amqtt
        code = proc.wait(timeout_s)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for r in readers:
            r.join(10)
        if tap is not None:
            tap.wait_disconnected(30)   # the broker has gone: what it sent is judged
            tap.close()
    return subprocess.CompletedProcess(proc.args, code, "".join(out), "".join(err)), tap


def test_the_demo_runs_the_network_and_writes_a_report_that_matches_the_truth(tmp_path):
    report = tmp_path / "report"
    # 40 s: a daemon whose first CONNECT the embedded broker leaves unanswered retries after
    # its 10 s connect timeout (seen on a host busy with the tests before) and is still ready
    # in time; and the M link's clock alignment, which on a busy host retried for more than
    # 10 s in one CI-like run (at 25 s the link then had no visibility yet to compare)
    run, tap = _demo("--duration", "40", "--report", str(report), timeout_s=240)
    logs = "\n".join(p.read_text()[-1500:] for p in (report / "logs").glob("*.log"))
    assert run.returncode == 0, run.stdout + run.stderr + logs
    print(f"contract tap: {tap.assert_clean(flush=False)}")    # all 8 daemons' messages
    assert "report in" in run.stdout and "nodes 8 (8 ready)" in run.stdout  # the live view
    for name in ("g2.png", "rates.png", "fidelity.png", "keys.png", "summary.json",
                 "telemetry.jsonl"):
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
    # the M link makes keys: both ends the same secret bits, each basis' QBER the truth's
    for node in ("analyzer-a", "analyzer-b"):
        keys = summary["nodes"][node]["links"]["m-ab"]
        assert keys["totals"]["key_secret_bits_total"] > 10_000, keys["totals"]
        for basis in ("qber_z", "qber_x"):
            assert abs(keys["final"][basis] - m[basis]["truth"]) < 0.01, (node, basis, m)
    assert abs(summary["g2"]["peak_delay_ns"]) < 0.3
