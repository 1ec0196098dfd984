"""The `qnode` command line: every subcommand answers, `bench` serves and stops cleanly."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

from support import REPO

BENCH = REPO / "hal_sim" / "benches" / "analyzer.toml"
QNODE = [sys.executable, "-m", "qnode.daemon.cli"]


def test_every_subcommand_has_help():
    for cmd in ("info", "run", "status", "keygen", "demo", "bench"):
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


def test_keygen_makes_a_key_pair_a_node_and_its_peers_accept(tmp_path):
    from qnode.daemon.bus.identity import NodeSigner, TrustStore

    done = subprocess.run([sys.executable, "-m", "qnode.daemon.cli", "keygen", "alice", "--dir",
                           str(tmp_path / "ids")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    private = tmp_path / "ids" / "alice.key"
    assert private.stat().st_mode & 0o777 == 0o600
    signer, trust = NodeSigner.from_file(private), TrustStore.from_dir(tmp_path / "ids")
    assert trust.verify("alice", b"status", signer.sign(b"status"))
    assert not trust.verify("alice", b"status", NodeSigner.generate().sign(b"status"))
    again = subprocess.run([sys.executable, "-m", "qnode.daemon.cli", "keygen", "alice", "--dir",
                            str(tmp_path / "ids")], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "not overwriting" in again.stderr


def test_demo_m_link_settings_are_for_serve_only():
    out = subprocess.run([*QNODE, "demo", "--m-link", "bell", "--duration", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--m-link is for --serve" in out.stderr, out.stderr
    out = subprocess.run([*QNODE, "demo", "--serve", "--m-link", "chsh"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "invalid choice: 'chsh'" in out.stderr, out.stderr
