"""``python -m qnode.hal_sim bench``: a bench file becomes running instruments at addresses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qnode.drivers.elliptec import Elliptec
from qnode.drivers.ibeam import IBeamSmart
from qnode.drivers.id900 import ID900
from qnode.drivers.single_quantum import SingleQuantum
from qnode.drivers.tc200 import TC200
from qnode.hal_sim import bench, instruments  # noqa: F401 - registers the kinds

EXAMPLE = Path(bench.__file__).parent / "benches" / "analyzer.toml"


def test_example_bench_serves_instruments_the_drivers_reach():
    with bench.Bench.from_file(EXAMPLE) as b:
        addresses = b.addresses()
        assert addresses["pump"].startswith("/dev/pts/")
        assert addresses["hwp"].startswith("socket://127.0.0.1:")
        with TC200(addresses["oven"], timeout_s=0.5) as oven:
            oven.set_temperature_c(30.0)
            assert oven.temperature_setpoint_c() == pytest.approx(30.0)
        with IBeamSmart(addresses["pump"], timeout_s=0.5) as pump:
            assert pump.identify()
        with Elliptec(addresses["hwp"], timeout_s=0.5) as hwp:
            assert hwp.identify().pulses_per_travel > 0
        with ID900(addresses["tagger.scpi"], timeout_s=0.5) as tagger:
            assert tagger.identify().split(",")[1] == "ID900"
        host, control = addresses["snspd.control"].rsplit(":", 1)
        counts = addresses["snspd.counts"].rsplit(":", 1)[1]
        with SingleQuantum.connect(host, control_port=int(control), counts_port=int(counts),
                                   timeout_s=1.0) as snspd:
            assert snspd.number_of_detectors == 2


@pytest.mark.parametrize("text, key", [
    ("[[instrument]]\nname = 'a'\nkind = 'nope'\n", "instrument[0].kind"),
    ("[[instrument]]\nname = 'a'\nkind = 'tc200'\nserve = 'zmq'\n", "instrument[0].serve"),
    ("[[instrument]]\nname = 'a'\nkind = 'tc200'\nport = 70000\n", "instrument[0].port"),
    ("[[instrument]]\nname = 'a'\nkind = 'tc200'\n[[instrument]]\nname = 'a'\nkind = 'ibeam'\n",
     "instrument[1].name"),
    ("[[instrument]]\nkind = 'tc200'\n", "instrument[0].name"),
    ("[[instrument]]\nname = 'a'\nkind = 'tc200'\ncolour = 1\n", "instrument[0].colour"),
    ("[bench]\nname = 3\n[[instrument]]\nname = 'a'\nkind = 'tc200'\n", "bench.name"),
    ("[benhc]\n", "benhc"),
    ("[[instrument]]\nname = 'a'\nkind = 'tc200'\n[link]\nvisibility = 2\n", "link.visibility"),
    ("[[instrument]]\nname = 'a'\nkind = 'tc200'\n[link]\n[[link.node]]\nname = 'x'\n",
     "link.node"),
    ("", "instrument"),
])
def test_malformed_bench_files_name_the_key(text, key):
    with pytest.raises(bench.BenchConfigError) as err:
        bench.parse(text, "x.toml")
    assert f"x.toml: {key}:" in str(err.value)


def test_bad_device_options_name_the_key(tmp_path):
    f = tmp_path / "b.toml"
    f.write_text("[[instrument]]\nname = 'oven'\nkind = 'tc200'\n[instrument.options]\nwarp = 9\n")
    with pytest.raises(bench.BenchConfigError, match=r"b.toml: instrument\[0\].options: .*warp"):
        bench.Bench.from_file(f)


def test_command_line_prints_addresses_then_serves_until_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "qnode.hal_sim", "bench", "--config",
                             str(EXAMPLE), "--json"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        for line in proc.stdout:
            if line.strip() == "ready":
                break
            lines.append(line)
        rows = json.loads("".join(lines))
        assert [r["name"] for r in rows] == ["pump", "oven", "hwp", "snspd.control",
                                             "snspd.counts", "tagger.scpi", "tagger.dlt"]
        with TC200(next(r["address"] for r in rows if r["name"] == "oven"), timeout_s=0.5) as t:
            assert t.identify()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_second_tagger_on_one_link_is_refused_with_the_key(tmp_path):
    text = EXAMPLE.read_text() + ("\n[[instrument]]\nname = 'tagger2'\nkind = 'id900'\n"
                                  "[instrument.options]\nnode = 'bob'\n")
    f = tmp_path / "two_taggers.toml"
    f.write_text(text)
    with pytest.raises(bench.BenchConfigError, match=r"instrument\[5\]: the \[link\] already"):
        bench.Bench.from_file(f)


def test_a_tagger_without_a_link_is_refused(tmp_path):
    f = tmp_path / "nolink.toml"
    f.write_text("[[instrument]]\nname = 't'\nkind = 'id900'\n[instrument.options]\n"
                 "node = 'alice'\n")
    with pytest.raises(bench.BenchConfigError, match=r"instrument\[0\]: needs a \[link\]"):
        bench.Bench.from_file(f)
