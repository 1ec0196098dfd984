"""The demo's report: records written by the Recorder come back as plots and a summary whose
figures equal the inputs'."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qnode.daemon.bus.envelope import Message
from qnode.daemon.bus.telemetry import Telemetry, validate
from qnode.daemon.bus.topics import parse_topic
from qnode.daemon.tools.report import Recorder, read_records, write_report

T0 = 1_732_345_678.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N = 12  # records per node, one per second


def records() -> list[Telemetry]:
    """A small network: alice (M link to bob, K link to the repeater), bob, and the herald
    station of the K link; alice's g2 histogram grows over the run."""
    out: list[Telemetry] = []
    for i in range(N):
        t = T0 + i
        out.append(validate({
            "node": "alice", "roles": ["analyzer", "memory"], "t": t, "uptime_s": 10.0 + i,
            "state": "ready", "ingest_mtags_s": 1.0 + 0.1 * i, "tags_total": 1000 * i,
            "dropped_tags_total": 0, "memory_used": i, "memory_capacity": 100,
            "g2": {"bin_ps": 100, "first_bin_ps": -5000,
                   "counts": [5 + (40 * i if k == 50 else k % 3) for k in range(100)]},
            "links": {
                "alice-bob": {"type": "M", "peer": "bob", "role": "counter",
                              "coincidence_rate_hz": 1500.0 + i, "visibility": 0.95 + 0.001 * i,
                              "qber_z": 0.02, "qber_x": 0.03, "chsh_s": 2.7,
                              "pairs_delivered_total": 1500 * i},
                "alice-rep": {"type": "K", "peer": "repeater", "role": "end",
                              "herald_rate_hz": 80.0 + 2 * i, "heralds_total": 80 * i,
                              "pairs_delivered_total": 70 * i, "pairs_live": i % 4,
                              "fidelity_estimate": 0.90 + 0.005 * (i % 2)},
            },
            # alice ends a path through the repeater
            "paths": {"alice-bob": {"role": "end", "remote": "bob",
                                    "pairs_received_total": 3 * i, "pairs_held": i % 2,
                                    "delivered_fidelity_mean": 0.8}}}))
        out.append(validate({
            "node": "bob", "roles": ["analyzer"], "t": t + 0.25, "uptime_s": 9.0 + i,
            "state": "ready" if i < N - 1 else "degraded", "ingest_mtags_s": 0.8,
            "links": {"alice-bob": {"type": "M", "peer": "alice", "role": "counter",
                                    "coincidence_rate_hz": 1490.0, "qber_z": float("nan"),
                                    "pairs_delivered_total": 1490 * i,
                                    # an end that makes keys (roles.key_link)
                                    "key_state": "producing", "key_rate_bps": 1e4 + 100 * i,
                                    "key_f_ec": 1.15, "key_secret_fraction": 0.5,
                                    "key_sample_qber_z": 0.021, "key_sample_qber_x": 0.029,
                                    "key_secret_bits_total": 10_000 * i}}}))
        out.append(validate({
            "node": "station", "roles": ["herald"], "t": t + 0.5, "uptime_s": 11.0 + i,
            "state": "ready",
            "links": {"alice-rep": {"type": "K", "role": "station", "herald_rate_hz": 81.0,
                                    "heralds_total": 81 * i, "psi_plus_total": 40 * i,
                                    "psi_minus_total": 41 * i}}}))
    return out


# the hal_sim bench's truth file: telemetry-named numbers per link, and more
TRUTH = {"v": 1, "bench": "demo", "t": T0 + 20, "links": {
    "alice-bob": {"type": "M", "nodes": ["alice", "bob"], "visibility": 0.96, "qber_z": 0.02,
                  "coincidence_rate_hz": 1510.0, "detail": {"pairs_emitted": 123456}},
    "alice-rep": {"type": "K", "fidelity_estimate": 0.92, "herald_rate_hz": 85.0}}}


def record_all(report_dir: Path, recs: list[Telemetry]) -> None:
    with Recorder(report_dir) as rec:
        for r in recs:
            rec(r)
        assert rec.count == len(recs)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 10_000, (path, len(data))  # axes, lines and labels, not a blank canvas


def test_report_files_and_summary(tmp_path: Path) -> None:
    recs = records()
    record_all(tmp_path, recs)
    summary = write_report(tmp_path, truth=TRUTH, summary_extra={"network": "demo"})

    for name in ("g2.png", "rates.png", "fidelity.png", "keys.png"):
        assert_png(tmp_path / name)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    assert summary["status"] == "ok" and summary["network"] == "demo"
    assert summary["files"] == ["telemetry.jsonl", "g2.png", "rates.png", "fidelity.png",
                                "keys.png", "summary.json"]
    assert summary["plots_skipped"] == {}
    assert summary["records"] == 3 * N and summary["skipped_lines"] == 0
    assert summary["t_start"] == T0 and summary["duration_s"] == pytest.approx(N - 1 + 0.5)

    alice = summary["nodes"]["alice"]
    assert alice["records"] == N and alice["roles"] == ["analyzer", "memory"]
    assert alice["final_state"] == "ready"
    assert alice["totals"]["tags_total"] == 1000 * (N - 1)
    assert alice["mean"]["ingest_mtags_s"] == pytest.approx(1.0 + 0.1 * (N - 1) / 2)
    assert alice["final"]["memory_used"] == N - 1
    ab, ar = alice["links"]["alice-bob"], alice["links"]["alice-rep"]
    assert (ab["type"], ab["peer"], ab["role"], ab["records"]) == ("M", "bob", "counter", N)
    assert ab["totals"]["pairs_delivered_total"] == 1500 * (N - 1)
    assert ab["mean"]["coincidence_rate_hz"] == pytest.approx(1500.0 + (N - 1) / 2)
    assert ab["final"]["visibility"] == pytest.approx(0.95 + 0.001 * (N - 1))
    assert ab["truth"]["visibility"] == {"truth": 0.96, "final": ab["final"]["visibility"],
                                         "mean": ab["mean"]["visibility"]}
    assert set(ab["truth"]) == {"visibility", "qber_z", "coincidence_rate_hz"}
    assert ar["totals"]["pairs_delivered_total"] == 70 * (N - 1)
    assert ar["totals"]["heralds_total"] == 80 * (N - 1)
    assert ar["mean"]["fidelity_estimate"] == pytest.approx(0.9025)
    assert ar["truth"]["fidelity_estimate"]["truth"] == 0.92

    path = alice["paths"]["alice-bob"]
    assert path["records"] == N and path["totals"]["pairs_received_total"] == 3 * (N - 1)
    assert path["mean"]["delivered_fidelity_mean"] == pytest.approx(0.8)

    bob = summary["nodes"]["bob"]
    assert bob["final_state"] == "degraded" and "paths" not in bob
    assert bob["links"]["alice-bob"]["totals"]["pairs_delivered_total"] == 1490 * (N - 1)
    assert "qber_z" not in bob["links"]["alice-bob"]["mean"]  # NaN all along: no figure
    station = summary["nodes"]["station"]["links"]["alice-rep"]
    assert station["totals"]["psi_plus_total"] == 40 * (N - 1)
    assert station["peer"] is None and station["role"] == "station"

    assert summary["g2"]["node"] == "alice" and summary["g2"]["t"] == T0 + N - 1
    assert summary["g2"]["peak_counts"] == 5 + 40 * (N - 1)
    assert summary["g2"]["peak_delay_ns"] == pytest.approx((-5000 + 50.5 * 100) / 1000)
    assert summary["truth"] == TRUTH


def test_jsonl_is_strict_json_and_cut_lines_are_skipped(tmp_path: Path) -> None:
    recs = records()[:6]
    record_all(tmp_path, recs)
    lines = (tmp_path / "telemetry.jsonl").read_text().splitlines()
    assert len(lines) == 6 and "NaN" not in "".join(lines)  # NaN is written as null
    assert json.loads(lines[1])["links"]["alice-bob"]["qber_z"] is None
    with (tmp_path / "telemetry.jsonl").open("a") as f:
        f.write('{"node": "alice", "t": 1}\n["not", "a", "record"]\n{"node": "bob", "t": 17')
    got, skipped = read_records(tmp_path / "telemetry.jsonl")
    assert skipped == 2 and len(got) == 7 and got[0]["t"] == 1  # ordered by t
    # a Recorder opened again appends (a resumed run)
    record_all(tmp_path, recs[:1])
    assert len((tmp_path / "telemetry.jsonl").read_text().splitlines()) == 9


def test_recorder_as_bus_handler_and_with_numpy_values(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "new" / "dir")
    body: dict[str, Any] = dict(records()[0])
    topic = parse_topic("qnet/v1/demo/alice/telemetry")
    asyncio.run(rec.handle(topic, Message("telemetry", "alice", 1, body)))
    rec({**body, "memory_used": np.int64(7), "g2": {"bin_ps": 100, "first_bin_ps": 0,
                                                    "counts": np.array([1, 2, 3])}})
    rec.close()
    first, second = (tmp_path / "new" / "dir" / "telemetry.jsonl").read_text().splitlines()
    assert json.loads(first)["node"] == "alice"
    assert json.loads(second)["memory_used"] == 7
    assert json.loads(second)["g2"]["counts"] == [1, 2, 3]


def test_no_data(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no telemetry was recorded"):
        write_report(tmp_path)
    Recorder(tmp_path).close()  # an empty file: the run recorded nothing
    summary = write_report(tmp_path, summary_extra={"network": "demo"})
    assert summary["status"] == "no_data" and summary["records"] == 0
    assert summary["network"] == "demo"
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert not any((tmp_path / n).exists() for n in ("g2.png", "rates.png", "fidelity.png"))


def test_plots_without_data_are_skipped_not_faked(tmp_path: Path) -> None:
    record_all(tmp_path, [validate({"node": "src", "roles": ["source"], "t": T0 + i,
                                    "uptime_s": float(i), "source_brightness_hz": 1e6})
                          for i in range(3)])
    summary = write_report(tmp_path)
    assert summary["files"] == ["telemetry.jsonl", "summary.json"]
    assert set(summary["plots_skipped"]) == {"g2.png", "rates.png", "fidelity.png", "keys.png"}
    assert summary["nodes"]["src"]["mean"]["source_brightness_hz"] == 1e6
    assert summary["nodes"]["src"]["links"] == {}


def test_summary_extra_never_replaces_the_reports_fields(tmp_path: Path) -> None:
    with Recorder(tmp_path) as rec:
        for r in records()[:3]:
            rec.add(r)
    summary = write_report(tmp_path, summary_extra={"nodes": ["alice"], "duration_s": 60.0,
                                                    "exit_codes": {"alice": 0}})
    assert set(summary["nodes"]) == {"alice", "bob", "station"}
    assert summary["duration_s"] == 0.5
    assert summary["extra"] == {"nodes": ["alice"], "duration_s": 60.0}
    assert summary["exit_codes"] == {"alice": 0}


def test_matplotlib_is_imported_lazily() -> None:
    import subprocess

    code = ("import sys, qnode.daemon.tools.report, qnode.daemon.tools.status, "
            "qnode.daemon.tools.liveview, qnode.daemon.tools.metrics; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
