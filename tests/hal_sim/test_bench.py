"""``python -m qnode.hal_sim bench``: a bench file becomes running instruments at addresses."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from qnode.drivers.elliptec import Elliptec
from qnode.drivers.ibeam import IBeamSmart
from qnode.drivers.id900 import ID900, ID900Tagger
from qnode.drivers.single_quantum import SingleQuantum
from qnode.drivers.tc200 import TC200
from qnode.hal_sim import (
    BellDiagonalState,
    CWSource,
    Link,
    PhotonStreamSimulator,
    bench,
    simple_node,
)
from qnode.hal_sim.twins.tagger import SimulatedTagger, SimulatorFanout
from qnode.native import Coincidences, sort_block, tag_block

EXAMPLE = bench.BENCHES / "analyzer.toml"


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


_TC200 = "[[instrument]]\nname = 'a'\nkind = 'tc200'\n"
_K = "[[link]]\nname = 'k'\ntype = 'K'\nstation = 's'\n"


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
    ("[[instrument]]\nname = 'a'\nkind = 'tc200'\n[[link]]\nname = 'l'\ntype = 'X'\n",
     "link[0].type"),
    (f"{_TC200}{_K}ends = ['a']\n", "link[0].ends"),
    (f"{_TC200}{_K}ends = ['a', 'b']\ngate_ps = 100\n", "link[0].gate_ps"),
    (f"{_TC200}{_K}ends = ['a', 'b']\nemission_probability = 1.5\n",
     "link[0].emission_probability"),
    (f"{_TC200}{_K}ends = ['a', 'b']\nlength_km = [1, 2, 3]\n", "link[0].length_km"),
    (f"{_TC200}{_K}ends = ['a', 'b']\nchannels = [1, 2, 3, 3]\n", "link[0].channels"),
    (f"{_TC200}{_K}ends = ['a', 'b']\nwarp = 1\n", "link[0].warp"),
    (f"{_TC200}{_K}ends = ['a', 'b']\n{_K}ends = ['c', 'd']\n", "link[1].name"),
    (f"{_TC200}[[link]]\nname = 'm'\ntype = 'M'\n[[link.node]]\nname = 'x'\n"
     f"channels = [1, 2]\nclock_drift_ppm = 'fast'\n[[link.node]]\nname = 'y'\n"
     f"channels = [1, 2]\n", "link[0].node[0].clock_drift_ppm"),
    (f"{_TC200}[[instrument]]\nname = 'b'\nkind = 'ibeam'\nstartup = 'la on'\n",
     "instrument[1].startup"),
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


def test_a_node_streams_to_one_tagger_the_other_node_to_another(tmp_path):
    text = EXAMPLE.read_text() + ("\n[[instrument]]\nname = 'tagger2'\nkind = 'id900'\n"
                                  "[instrument.options]\nnode = 'bob'\n")
    f = tmp_path / "two_taggers.toml"
    f.write_text(text)
    with bench.Bench.from_file(f) as b:
        assert {"tagger.scpi", "tagger2.scpi"} <= set(b.addresses())
    f.write_text(text.replace("node = 'bob'", "node = 'alice'"))
    with pytest.raises(bench.BenchConfigError,
                       match=r"instrument\[5\]\.options\.node: 'alice' .* already streamed by "
                             r"instrument\[4\]"):
        bench.Bench.from_file(f)


def test_a_tagger_without_a_link_is_refused(tmp_path):
    f = tmp_path / "nolink.toml"
    f.write_text("[[instrument]]\nname = 't'\nkind = 'id900'\n[instrument.options]\n"
                 "node = 'alice'\n")
    with pytest.raises(bench.BenchConfigError, match=r"instrument\[0\]\.options\.link: needs a "
                                                     r"\[\[link\]\]"):
        bench.Bench.from_file(f)


def test_the_single_link_table_of_earlier_files_is_still_read():
    text = EXAMPLE.read_text().replace("[[link]]", "[link]").replace(
        'name = "source-pair"\ntype = "M"\n', "").replace('link = "source-pair"\n', "")
    spec = bench.parse(text, "old.toml")
    assert spec.link is not None and spec.link.name == "link" and spec.link.type == "M"
    assert [n.name for n in spec.link.nodes] == ["alice", "bob"]


_M_LINK = ("[[link]]\nname = 'm'\ntype = 'M'\n[[link.node]]\nname = 'a'\nchannels = [1, 2]\n"
           "[[link.node]]\nname = 'b'\nchannels = [1, 2]\n"
           "[[link]]\nname = 'k'\ntype = 'K'\nstation = 's'\nends = ['x', 'y']\n")


@pytest.mark.parametrize("instrument, key", [
    ("kind = 'id900'\n[instrument.options]\nlink = 'nope'\n", "options.link"),
    ("kind = 'id900'\n[instrument.options]\nnode = 'a'\n", "options.link"),    # two links
    ("kind = 'id900'\n[instrument.options]\nlink = 'm'\n", "options.node"),    # M: name it
    ("kind = 'id900'\n[instrument.options]\nlink = 'k'\nnode = 'x'\n", "options.node"),
    ("kind = 'elliptec'\n[instrument.options]\nlink = 'm'\nnode = 'c'\n", "options.node"),
    ("kind = 'elliptec'\n[instrument.options]\nlink = 'k'\nnode = 'x'\n", "options.link"),
    ("kind = 'tc200'\nstartup = ['tset=500']\n", "startup[0]"),
    ("kind = 'ibeam'\nstartup = ['frobnicate']\n", "startup[0]"),
])
def test_bad_links_of_instruments_name_the_key(tmp_path, instrument, key):
    f = tmp_path / "b.toml"
    f.write_text(_M_LINK + "[[instrument]]\nname = 'i'\n" + instrument)
    with pytest.raises(bench.BenchConfigError,
                       match=rf"b.toml: instrument\[0\]\.{re.escape(key)}:"):
        bench.Bench.from_file(f)


# ------------------------------------------------------------------ fan-out

def _two_node_sim(seed: int = 3) -> PhotonStreamSimulator:
    link = Link(CWSource(2e5), BellDiagonalState.werner(0.9),
                (simple_node("alice", (1, 2)), simple_node("bob", (3, 4), length_km=1.0)))
    return PhotonStreamSimulator(link, seed=seed, slice_ps=2_000_000_000)


def test_fanout_gives_each_feed_its_node_of_one_run_with_bounded_buffers():
    direct = _two_node_sim()
    expected = [direct.step().blocks for _ in range(6)]
    fan = SimulatorFanout(_two_node_sim(), max_chunks=2)
    a, b = fan.feed("alice"), fan.feed("bob")
    a.attach()
    b.attach()
    got_a = [a.step().blocks["alice"] for _ in range(2)]
    assert len(b.queue) == 2                     # b's buffer is full: a must wait for b
    blocked = threading.Thread(target=lambda: got_a.append(a.step().blocks["alice"]))
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive() and fan.waits > 0 and len(b.queue) == 2
    got_b = [b.step().blocks["bob"]]             # reading b lets a go on
    blocked.join(5.0)
    assert not blocked.is_alive()
    got_b += [b.step().blocks["bob"] for _ in range(2)]
    for i in range(3):
        assert np.array_equal(got_a[i], expected[i]["alice"])
        assert np.array_equal(got_b[i], expected[i]["bob"])
    b.detach()                                   # a detached feed never holds the link back
    for i in range(3, 6):
        assert np.array_equal(a.step().blocks["alice"], expected[i]["alice"])
    assert b.dropped_chunks == 3 and not b.queue
    assert a.time_ps == 6 * 2_000_000_000
    # an in-process tagger on a feed: it re-attaches and detaches when done
    tagger = SimulatedTagger(b, "bob", duration_ps=8 * 2_000_000_000)
    with pytest.raises(ValueError, match="no node 'alice'"):
        SimulatedTagger(b, "alice")
    blocks = []
    for block in tagger.chunks():
        blocks.append(block)
        a.step()
    assert len(blocks) == 3 and not b.attached   # steps 7, 8 and the flush chunk


# ------------------------------------------------------------------ the demo network

NETWORK = bench.BENCHES / "network.toml"
NETWORK_ROWS = ["herald1-tagger.scpi", "herald1-tagger.dlt", "herald2-tagger.scpi",
                "herald2-tagger.dlt", "pump", "oven", "analyzer-a-hwp", "analyzer-b-hwp",
                "analyzer-a-tagger.scpi", "analyzer-a-tagger.dlt", "analyzer-b-tagger.scpi",
                "analyzer-b-tagger.dlt", "alice-qdevice", "repeater-qdevice", "bob-qdevice",
                "qdevice-truth"]


def _stream(addresses: dict[str, str], names: dict[str, tuple[int, ...]], seconds: float
            ) -> dict[str, np.ndarray]:
    """Stream several taggers of a running bench through the real driver for ``seconds`` of
    wall time (all at once, each on its thread); their tags by tagger name. The driver drops a
    tag that arrives after its merge released later ones (an input silent for ``max_latency_s``
    is passed over), the one place on this path where tags are lost; here the streams wait up
    to 10 s and must lose no tag. When a tagger closes, the inputs whose tags are still on their
    way end earlier than the others: a stream covers time only up to its inputs' earliest
    end."""
    blocks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    taggers: dict[str, ID900Tagger] = {}
    errors: list[BaseException] = []
    started = threading.Barrier(len(names) + 1, timeout=30)

    def run(name: str, inputs: tuple[int, ...]) -> None:
        try:
            with ID900(addresses[f"{name}.scpi"], timeout_s=2.0) as d, \
                    ID900Tagger(d, addresses[f"{name}.dlt"], inputs=inputs,
                                chunk_interval_s=0.05, max_latency_s=10.0) as t:
                taggers[name] = t
                started.wait()
                for block in t.chunks():
                    blocks[name].append(block)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in names.items()]
    for th in threads:
        th.start()
    started.wait()
    time.sleep(seconds)            # how much light to collect, not an assertion
    for t in taggers.values():
        t.close()
    for th in threads:
        th.join(10)
    assert not errors, errors
    assert {n: t.late_tags for n, t in taggers.items()} == dict.fromkeys(names, 0)
    return {n: np.concatenate(b) for n, b in blocks.items()}


def _emission_times(block: np.ndarray, truth: dict, node: str) -> np.ndarray:
    """A node's tags mapped back to emission time with the truth's clock and delays:
    t_node = t + offset + drift·t, t = emission + fibre and detector delay."""
    clock = truth["detail"]["clock"][node]
    delay = {int(c): d - clock["offset_ps"]
             for c, d in truth["detail"]["channel_delay_ps"][node].items()}
    t = (block["time"] - clock["offset_ps"]) / (1 + clock["drift_ppm"] * 1e-6)
    t -= np.array([delay[c] for c in block["channel"]], np.float64)
    return np.rint(t).astype(np.int64)


def test_network_bench_m_link_cross_node_coincidences_match_the_truth(tmp_path):
    truth_file = tmp_path / "truth.json"
    with bench.Bench.from_file(NETWORK, truth_path=truth_file) as b:
        assert list(b.addresses()) == NETWORK_ROWS
        for node in ("analyzer-a", "analyzer-b"):   # the X arms' plates, as the daemon does
            with Elliptec(b.addresses()[f"{node}-hwp"], timeout_s=2.0) as hwp:
                hwp.move_absolute_deg(22.5)
        tags = _stream(b.addresses(), {"analyzer-a-tagger": (1, 2, 3, 4),
                                       "analyzer-b-tagger": (1, 2, 3, 4)}, 1.6)
    truth = json.loads(truth_file.read_text())["links"]["m-ab"]
    assert truth["name"] == "source-pair" and truth["pair_rate_hz"] == pytest.approx(1e5)
    ea = _emission_times(tags["analyzer-a-tagger"], truth, "analyzer-a")
    eb = _emission_times(tags["analyzer-b-tagger"], truth, "analyzer-b")
    # where every input of both taggers streamed: a tagger closed while some of its inputs'
    # tags were still on their way ends with the others' alone (a run with both cores busy
    # lost ~15 ms of three of analyzer-b's four inputs there: 1.6 %, 3.2 σ short)
    ca, cb = tags["analyzer-a-tagger"]["channel"], tags["analyzer-b-tagger"]["channel"]
    lo = max(*(ea[ca == c].min() for c in np.unique(ca)),
             *(eb[cb == c].min() for c in np.unique(cb))) + 20_000_000_000   # 20 ms margins
    hi = min(*(ea[ca == c].max() for c in np.unique(ca)),
             *(eb[cb == c].max() for c in np.unique(cb))) - 20_000_000_000
    assert hi - lo > 500_000_000_000                   # at least 0.5 s of overlap
    ka, kb = (ea >= lo) & (ea < hi), (eb >= lo) & (eb < hi)
    joint = sort_block(np.concatenate([
        tag_block(ea[ka], tags["analyzer-a-tagger"]["channel"][ka]),
        tag_block(eb[kb], tags["analyzer-b-tagger"]["channel"][kb] + 4)]))
    # passive Z (inputs 1, 2) / X (3, 4) analyzers at both nodes: all 16 detector pairs
    coin = Coincidences([(x, y) for x in (1, 2, 3, 4) for y in (5, 6, 7, 8)], 1_000,
                        accidental_offset_ps=50_000)
    counts = coin.process(joint)
    c, acc = int(counts.coincidences.sum()), int(counts.accidentals.sum())
    d = truth["detail"]
    rate = d["pairs_both_detected"] / (d["duration_ps"] * 1e-12)
    expected = rate * (hi - lo) * 1e-12
    sigma = math.sqrt(c + acc + expected**2 / d["pairs_both_detected"])
    assert abs(c - acc - expected) <= 3 * sigma, (c, acc, expected, sigma)
    # polarisation correlation per setting pair: (own z|x) × (peer z|x), 4 counts each
    n = counts.coincidences.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3)  # [i, j, k, l]
    for i, x in enumerate("zx"):
        for j, y in enumerate("zx"):
            m = n[i, j]
            e = (m[0, 0] + m[1, 1] - m[0, 1] - m[1, 0]) / m.sum()
            e_true = d["expected_correlation"][f"analyzer-a:{x}|analyzer-b:{y}"]
            assert e_true == pytest.approx(0.95 if x == y else 0.0, abs=1e-12)
            assert abs(e - e_true) <= 3 * math.sqrt((1 - e_true**2) / m.sum()) + 2 * acc / c
    assert truth["qber_z"] == pytest.approx(0.025) and truth["qber_x"] == pytest.approx(0.025)
    assert "chsh_s" not in truth                       # Z/X at both ends: not a Bell test


def test_network_bench_k_station_heralds_match_the_truth(tmp_path):
    truth_file = tmp_path / "truth.json"
    with bench.Bench.from_file(NETWORK, truth_path=truth_file) as b:
        tags = _stream(b.addresses(), {"herald1-tagger": (1, 2, 3, 4)}, 1.2)["herald1-tagger"]
    truth = json.loads(truth_file.read_text())["links"]["alice-repeater"]
    d = truth["detail"]
    period, gate = d["attempt_period_ps"], d["gate_ps"]
    assert d["channels"] == {"c_h": 1, "c_v": 2, "d_h": 3, "d_v": 4}
    assert set(np.unique(tags["channel"])) == {1, 2, 3, 4}
    # the gate rule: attempt k's gate on channel c is [k·P + delay_c − G//2, +G)
    delay = np.array([0] + [d["channel_delay_ps"][str(c)] for c in (1, 2, 3, 4)])
    u = tags["time"] - delay[tags["channel"]] + gate // 2
    k = u // period
    keep = (u % period) < gate
    k, ch = k[keep], tags["channel"][keep]
    margin = 10_000_000_000 // period                  # 10 ms of attempts at each end
    lo, hi = k.min() + margin, k.max() - margin
    inside = (k >= lo) & (k <= hi)
    attempts, inverse = np.unique(k[inside], return_inverse=True)
    mask = np.zeros(attempts.size, np.int64)
    np.bitwise_or.at(mask, inverse, 1 << (ch[inside] - 1))
    n = {"psi-": int(np.isin(mask, (0b1001, 0b0110)).sum()),
         "psi+": int(np.isin(mask, (0b0011, 0b1100)).sum())}
    span_s = (hi - lo + 1) * period * 1e-12
    assert span_s > 0.5
    for state in ("psi+", "psi-"):
        total = d["true_heralds"][state] + d["false_heralds"][state]
        expected = total / (d["duration_ps"] * 1e-12) * span_s
        sigma = math.sqrt(n[state] + expected**2 / total)
        assert abs(n[state] - expected) <= 3 * sigma, (state, n[state], expected)
    assert truth["herald_rate_hz"] == pytest.approx(3236, rel=0.01)
    assert truth["mean_fidelity_true"] == pytest.approx((1 + 0.92) / 2)
    assert truth["false_heralds_total"] < 0.01 * truth["true_heralds_total"]


def test_coupled_pump_drives_the_m_link():
    with bench.Bench.from_file(NETWORK) as b:
        rt = b.links["source-pair"]
        addresses = b.addresses()
        with IBeamSmart(addresses["pump"], timeout_s=0.5) as pump:
            pump.set_power_mw(20.0)
            twin = b.devices["pump"]
            deadline = time.monotonic() + 5.0
            while abs(twin.power_mw - 20.0) > 1e-6 and time.monotonic() < deadline:
                time.sleep(0.05)                   # the pump's power ramp (τ = 50 ms)
        rt.fanout.locked(rt.coupling)               # what the bench does before every slice
        truth = b.truth()["links"]["m-ab"]
    assert rt.coupling.applied["phase_matching"] == pytest.approx(1.0, abs=1e-6)
    assert truth["pair_rate_hz"] == pytest.approx(5e4, rel=1e-6)   # 2500/mW × 20 mW


def test_coupled_waveplate_turns_a_one_analyzer_node(tmp_path):
    f = tmp_path / "hwp.toml"
    f.write_text(_M_LINK.split("[[link]]\nname = 'k'")[0]
                 + "[[instrument]]\nname = 'hwp'\nkind = 'elliptec'\nserve = 'tcp'\n"
                   "[instrument.options]\nlink = 'm'\nnode = 'b'\n")
    with bench.Bench.from_file(f) as b:
        rt = b.links["m"]
        with Elliptec(b.addresses()["hwp"], timeout_s=0.5) as hwp:
            hwp.move_absolute_deg(22.5)             # H/V → D/A: uncorrelated with a's H/V
        rt.fanout.locked(rt.coupling)
        truth = b.truth()["links"]["m"]
    assert truth["detail"]["expected_correlation"]["a:a|b:a"] == pytest.approx(0.0, abs=1e-6)


def test_network_command_line_prints_every_address_and_writes_the_truth(tmp_path):
    truth_file = tmp_path / "truth.json"
    proc = subprocess.Popen([sys.executable, "-m", "qnode.hal_sim", "bench", "--config",
                             str(NETWORK), "--json", "--truth", str(truth_file)],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        for line in proc.stdout:
            if line.strip() == "ready":
                break
            lines.append(line)
        rows = json.loads("".join(lines))
        assert [r["name"] for r in rows] == NETWORK_ROWS
        assert all(r["address"] for r in rows)
        first = json.loads(truth_file.read_text())     # written at start
        assert set(first["links"]) == {"alice-repeater", "repeater-bob", "m-ab"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    final = json.loads(truth_file.read_text())
    assert final["t"] >= first["t"] and final["bench"] == "network"
    k = final["links"]["repeater-bob"]
    assert k["type"] == "K" and k["ends"] == ["repeater", "bob"]
    assert final["links"]["m-ab"]["type"] == "M"
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------ passive analyzers (M link)

_PASSIVE = ("[[link]]\nname = 'm'\ntype = 'M'\nvisibility = 0.9\n"
            "[[link.node]]\nname = 'a'\nanalyzers = [{name = 'z', channels = [1, 2]}, "
            "{name = 'x', channels = [3, 4], angle_deg = 22.5}]\n"
            "[[link.node]]\nname = 'b'\nanalyzers = [{name = 'p', channels = [1, 2], "
            "angle_deg = 11.25}, {name = 'm', channels = [3, 4], angle_deg = -11.25}]\n")


def test_passive_analyzer_nodes_build_two_analyzers_and_their_truth():
    spec = bench.parse(_TC200 + _PASSIVE, "p.toml")
    a, b = spec.link.nodes
    assert a.channels == (1, 2, 3, 4) and [x.angle_deg for x in a.analyzers] == [0.0, 22.5]
    rt = bench.LinkRuntime(spec.link)
    truth = rt.truth()
    e = truth["detail"]["expected_correlation"]
    # HWP θ → Bloch angle 4θ: a at 0, π/2; b at ±π/4; Φ+ Werner: E = V·cos(α − β)
    assert e["a:z|b:p"] == pytest.approx(0.9 * math.cos(math.pi / 4))
    assert e["a:x|b:m"] == pytest.approx(0.9 * math.cos(3 * math.pi / 4))
    assert truth["chsh_s"] == pytest.approx(2 * math.sqrt(2) * 0.9)
    assert "qber_z" not in truth and "qber_x" not in truth   # b measures no Pauli basis
    zx = bench.parse(_TC200 + _PASSIVE.replace("11.25", "0.0").replace("-0.0", "22.5"), "q.toml")
    t = bench.LinkRuntime(zx.link).truth()
    assert t["qber_z"] == pytest.approx(0.05) and t["qber_x"] == pytest.approx(0.05)
    assert "chsh_s" not in t


@pytest.mark.parametrize("node, key", [
    ("analyzers = []\n", "link[0].node[0].analyzers"),
    ("analyzers = [{name = 'z', channels = [1]}]\n", "link[0].node[0].analyzers[0].channels"),
    ("analyzers = [{name = 'z', channels = [1, 2], angle_deg = 'x'}]\n",
     "link[0].node[0].analyzers[0].angle_deg"),
    ("analyzers = [{name = 'z', channels = [1, 2], tilt = 1}]\n",
     "link[0].node[0].analyzers[0].tilt"),
    ("analyzers = [{name = 'z', channels = [1, 2]}, {name = 'z', channels = [3, 4]}]\n",
     "link[0].node[0].analyzers"),
    ("analyzers = [{name = 'z', channels = [1, 2]}, {name = 'x', channels = [2, 4]}]\n",
     "link[0].node[0].analyzers"),
    ("channels = [1, 2]\nanalyzers = [{name = 'z', channels = [1, 2]}]\n",
     "link[0].node[0].channels"),
])
def test_bad_passive_analyzers_name_the_key(node, key):
    text = (_TC200 + "[[link]]\nname = 'm'\ntype = 'M'\n[[link.node]]\nname = 'a'\n" + node
            + "[[link.node]]\nname = 'b'\nchannels = [1, 2]\n")
    with pytest.raises(bench.BenchConfigError) as err:
        bench.parse(text, "x.toml")
    assert f"x.toml: {key}:" in str(err.value)
