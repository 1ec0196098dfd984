"""The `qnode` command line: every subcommand answers, `bench` serves and stops cleanly."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "hal_sim" / "benches" / "analyzer.toml"
QNODE = [sys.executable, "-m", "qnode.daemon.cli"]


def test_every_subcommand_has_help():
    for cmd in ("info", "run", "status", "demo", "bench"):
        out = subprocess.run([*QNODE, cmd, "--help"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "usage: qnode" in out.stdout, (cmd, out.stderr)


def test_bench_prints_the_addresses_and_stops_on_sigterm():
    proc = subprocess.Popen([*QNODE, "bench", "--config", str(BENCH), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    text = ""
    while True:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        text += line
        try:
            rows = json.loads(text)
            break
        except json.JSONDecodeError:
            continue
    assert {r["name"] for r in rows} >= {"pump", "oven", "hwp", "tagger.scpi", "tagger.dlt"}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def test_a_bad_config_names_the_key_and_exits_2(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[node]\nid = "a/b"\nnetwork = "n"\nroles = ["memory"]\n'
                   '[broker]\nurl = "mqtt://x"\n')
    out = subprocess.run([*QNODE, "run", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2
    assert f"{cfg}: node.id:" in out.stderr
