"""The network bench's quantum memories hold the pairs its K links herald, bound by herald time.

The end-to-end test streams herald1's ID900 through the real driver, classifies two-click
patterns exactly as the daemon's herald station does (the cluster's *first* click gives the
time; the simulator's truth files the *later* click, within the jitter spread), and binds the
pairs at alice and at the repeater with ``ENT <q> alice-repeater T<ps>`` through the real
QDevice driver. Measured correlations give the fidelity to the announced state.

Decoherence during the test's own latency: each pair is measured right after binding (two
``ENT``, two ``MEAS``, ≈ 1 ms of wall time). The measured wall time from the first ``ENT`` to the
last ``MEAS`` bounds each qubit's storage time t; X and Y correlations are divided by
exp(−2t/T2) (T2 = 0.5 s: ≲ 0.5 %), Z correlations change by O(t/T1) ≈ 1e-6 and are not
corrected. The devices' readout error ε flips each outcome: every correlation is divided by
(1 − 2ε)². Measurements need no gates (MEAS in X/Y), so the gate fidelity does not enter.
"""
from __future__ import annotations

import json
import math
import re
import threading
import time

import numpy as np
import pytest

from qnode.daemon.roles.station import classify, pattern_table
from qnode.drivers.errors import DeviceError
from qnode.drivers.id900 import ID900, ID900Tagger
from qnode.drivers.qdevice import QDevice
from qnode.drivers.qdevice_protocol import ERR_NO_PAIR, ERR_PAIR_TAKEN
from qnode.hal_sim import bench
from qnode.hal_sim.twins.pair_registry import PairRegistry
from qnode.hal_sim.twins.qdevice import QDeviceTwin
from qnode.native import NFold

NETWORK = bench.BENCHES / "network.toml"
LINK = "alice-repeater"
BELL = ("phi+", "phi-", "psi+", "psi-")
# sign of ⟨σ_b σ_b⟩ in the announced state, bases X, Y, Z
SIGNS = {"psi+": (1, 1, -1), "psi-": (-1, -1, -1)}


def _stream_station(addresses: dict[str, str], seconds: float) -> np.ndarray:
    blocks: list[np.ndarray] = []
    errors: list[BaseException] = []
    ready = threading.Event()
    holder: dict[str, ID900Tagger] = {}

    def run() -> None:
        try:
            with ID900(addresses["herald1-tagger.scpi"], timeout_s=2.0) as d, \
                    ID900Tagger(d, addresses["herald1-tagger.dlt"], inputs=(1, 2, 3, 4),
                                chunk_interval_s=0.05) as t:
                holder["t"] = t
                ready.set()
                for block in t.chunks():
                    blocks.append(block)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            ready.set()

    th = threading.Thread(target=run)
    th.start()
    assert ready.wait(30)
    time.sleep(seconds)              # how much light to collect, not an assertion
    if "t" in holder:
        holder["t"].close()
    th.join(10)
    assert not errors, errors
    return np.concatenate(blocks)


def test_memories_bind_station_heralds_by_time_with_the_truths_fidelity(tmp_path):
    truth_file = tmp_path / "truth.json"
    with bench.Bench.from_file(NETWORK, truth_path=truth_file) as b:
        addresses = b.addresses()
        tags = _stream_station(addresses, 1.5)
        # the daemon's herald station: N-fold clusters in its window, two-click patterns
        nfold = NFold((1, 2, 3, 4), 2000, min_fold=2)
        clusters = np.concatenate([nfold.process(tags).events, nfold.flush().events])
        codes, times = classify(clusters, pattern_table(nfold.mask_of, (1, 2, 3, 4)))
        margin = 20_000_000_000                         # 20 ms off each end of the stream
        keep = (times > times.min() + margin) & (times < times.max() - margin)
        codes, times = codes[keep], times[keep]
        assert times.size > 2000, times.size
        registry = b.links[LINK].registry
        assert registry is b.pair_registry()
        assert registry.heralds_at(LINK) >= times.size
        cfg = b.devices["alice-qdevice"].config
        assert b.devices["repeater-qdevice"].config.t2_ns == cfg.t2_ns
        assert b.devices["alice-qdevice"].registry is b.devices["repeater-qdevice"].registry
        assert b.devices["bob-qdevice"].registry is registry
        readout = (1 - 2 * cfg.readout_error) ** 2
        picks = np.linspace(0, times.size - 1, 1200).astype(int)
        sums = np.zeros(3)
        sq = np.zeros(3)
        n = np.zeros(3, int)
        matched = 0
        with QDevice(addresses["alice-qdevice"], timeout_s=2.0) as alice, \
                QDevice(addresses["repeater-qdevice"], timeout_s=2.0) as rep:
            qa, qr = alice.alloc(), rep.alloc()
            for i, j in enumerate(picks):
                t = int(times[j])
                t0 = time.monotonic()
                bell = alice.entangle_at(qa, LINK, t)
                assert rep.entangle_at(qr, LINK, t) == bell
                basis = i % 3
                letter = "XYZ"[basis]
                ma, mr = alice.measure(qa, letter), rep.measure(qr, letter)
                storage_s = time.monotonic() - t0
                matched += bell == BELL[codes[j]]
                if bell not in SIGNS:
                    continue
                factor = readout * (math.exp(-2 * storage_s * 1e9 / cfg.t2_ns)
                                    if letter != "Z" else 1.0)
                c = SIGNS[bell][basis] * (1 - 2 * (ma ^ mr)) / factor
                sums[basis] += c
                sq[basis] += c * c
                n[basis] += 1
            # a bound herald answers ERR 6; a time with no herald ERR 5
            t = int(times[picks[0]])
            with pytest.raises(DeviceError) as taken:
                alice.entangle_at(qa, LINK, t)
            assert taken.value.code == ERR_PAIR_TAKEN
            with pytest.raises(DeviceError) as none:
                alice.entangle_at(qa, LINK, t + 500_000)   # half an attempt period away
            assert none.value.code == ERR_NO_PAIR
            bell = alice.entangle_at(qa, LINK, int(times[1]) + 1500)
            info = alice.info(qa)
            assert info.link == LINK and info.bell == bell and info.seq is None
            assert abs(info.herald_time_ps - int(times[1])) <= 4000
    truth = json.loads(truth_file.read_text())["links"][LINK]
    match = matched / picks.size
    assert match >= 0.99, match
    mean = sums / n
    var = sq / n - mean**2
    f_meas = (1 + mean.sum()) / 4
    sigma = math.sqrt((var / n).sum()) / 4
    f_true = truth["fidelity_estimate"]
    print(f"match {match:.4f}; F measured {f_meas:.4f} ± {sigma:.4f} (⟨XX⟩, ⟨YY⟩, ⟨ZZ⟩ "
          f"aligned {mean.round(4).tolist()}, n {n.tolist()}), truth {f_true:.4f}")
    assert abs(f_meas - f_true) <= 3 * sigma, (f_meas, sigma, f_true)
    assert f_true == pytest.approx((1 + 0.92) / 2, abs=0.01)


# ------------------------------------------------------------------ the registry by time

def test_the_truth_wire_sets_a_k_links_visibility_and_refuses_bad_requests():
    """``SIM:VIS <link> <V>`` on the registry oracle: the link's simulator takes V (its true
    heralds then F = (1+V)/2); a bad link, value or form is an error line and changes nothing."""
    with bench.Bench.from_file(NETWORK) as b:
        oracle = b.devices["qdevice-truth"]
        sim = b.links[LINK].fanout.locked(lambda s: s)
        v0 = sim.link.indistinguishability
        for bad in (f"SIM:VIS {LINK}", f"SIM:VIS {LINK} 1.2", f"SIM:VIS {LINK} nan",
                    f"SIM:VIS {LINK} x", "SIM:VIS nowhere 0.5", f"SIM:VIS {LINK} 0.5 1"):
            reply = oracle.handle(bad.encode())
            assert reply.startswith(b"ERR"), (bad, reply)
            assert sim.link.indistinguishability == v0
        assert oracle.handle(f"SIM:VIS {LINK} 0.5".encode()) == b"OK\n"
        assert sim.link.indistinguishability == 0.5 and sim.expected.fidelity_true == 0.75


def test_registry_binds_by_herald_time_within_the_tolerance_and_forgets_old_heralds():
    reg = PairRegistry(seed=1, time_horizon=16)
    a = QDeviceTwin(name="a", registry=reg)
    c = QDeviceTwin(name="c", registry=reg)
    for twin in (a, c):
        assert twin.handle(b"ALLOC") == b"0\n"
    for k in range(20):
        reg.herald_at("ab", 1_000_000 * k + 17, (0, 0, 1, 0), "psi+", tolerance_ps=4000)
    assert reg.heralds_at("ab") <= 16
    assert a.handle(b"ENT 0 ab T1000017").startswith(f"ERR {ERR_NO_PAIR} ".encode())  # forgotten
    assert a.handle(b"ENT 0 ab T19003000") == b"psi+\n"        # 3 ns off: within ±4 ns
    assert a.handle(b"INFO 0").endswith(b"SEQ=T19000017 BELL=psi+\n")
    assert c.handle(b"ENT 0 ab t19000017") == b"psi+\n"
    state = reg.state([a.key(0), c.key(0)])
    assert state.bell_weights()[2] == pytest.approx(1.0)   # Ψ+
    assert a.handle(b"ENT 0 ab T19000017").startswith(f"ERR {ERR_PAIR_TAKEN} ".encode())
    assert a.handle(b"ENT 0 ab T18995000").startswith(f"ERR {ERR_NO_PAIR} ".encode())
    assert a.handle(b"ENT 0 ab T").startswith(b"ERR 2 ")
    assert a.handle(b"ENT 0 xy T19000017").startswith(f"ERR {ERR_NO_PAIR} ".encode())
    # the seq form still works beside it
    reg.herald("ab", 5, (1, 0, 0, 0), "phi+")
    assert a.handle(b"ENT 0 ab 5") == b"phi+\n"


# ------------------------------------------------------------------ config errors

_K = ("[[link]]\nname = 'k'\ntype = 'K'\nstation = 's'\nends = ['a', 'b']\n"
      "[[link]]\nname = 'm'\ntype = 'M'\n[[link.node]]\nname = 'x'\nchannels = [1, 2]\n"
      "[[link.node]]\nname = 'y'\nchannels = [1, 2]\n")
_Q = "[[instrument]]\nname = 'q{i}'\nkind = 'qdevice'\n[instrument.options]\n"


@pytest.mark.parametrize("options, key", [
    ("node = 'a'\n", "instrument[0].options.link"),
    ("link = 'm'\nnode = 'x'\n", "instrument[0].options.link"),
    ("link = 'nope'\nnode = 'a'\n", "instrument[0].options.link"),
    ("link = 'k'\nnode = 's'\n", "instrument[0].options.node"),
    ("link = 'k'\nnode = 'a'\nt1_ns = 1.0\nt2_ns = 5.0\n", "instrument[0].options.t2_ns"),
    ("link = 'k'\nnode = 'a'\nn_qubits = 0\n", "instrument[0].options.n_qubits"),
    ("link = 'k'\nnode = 'a'\nreadout_error = 2\n", "instrument[0].options.readout_error"),
    ("link = 'k'\nnode = 'a'\ncolour = 1\n", "instrument[0].options"),
    ("link = 'k'\nnode = 'a'\ngate_depolarising_2q = 1.5\n",
     "instrument[0].options.gate_depolarising_2q"),
    ("link = 'k'\nnode = 'a'\ngate_average_fidelity_1q = 0.4\n",
     "instrument[0].options.gate_average_fidelity_1q"),
])
def test_bad_qdevice_options_name_the_key(options, key):
    spec = bench.parse(_K + _Q.format(i=0) + options, "q.toml")
    with pytest.raises(bench.BenchConfigError, match=re.escape(f"q.toml: {key}")):
        bench.Bench(spec, "q.toml")


def test_one_qdevice_per_memory_node():
    text = _K + _Q.format(i=0) + "link = 'k'\nnode = 'a'\n" + _Q.format(i=1) \
        + "link = 'k'\nnode = 'a'\n"
    with pytest.raises(bench.BenchConfigError, match=r"instrument\[1\]\.options\.node"):
        bench.Bench(bench.parse(text, "q.toml"), "q.toml")


@pytest.mark.parametrize("n, key, value", [
    (2, "gate_depolarising_2q", 0.96), (2, "gate_fidelity_2q", 0.96),
    (2, "gate_average_fidelity_2q", 0.97), (1, "gate_depolarising_1q", 0.9),
    (1, "gate_average_fidelity_1q", 0.95)])
def test_qdevice_gate_noise_by_either_name_gives_the_twin_the_same_g(n, key, value):
    """g (or its earlier name) and F_avg with 1 − F_avg = (d − 1)/d·(1 − g) configure the same
    twin: g = 0.96 for the CNOT, 0.9 for single-qubit gates."""
    text = _K + _Q.format(i=0) + f"link = 'k'\nnode = 'a'\n{key} = {value}\n"
    twin = bench.Bench(bench.parse(text, "q.toml"), "q.toml").devices["q0"]
    assert getattr(twin.config, f"gate_fidelity_{n}q") == pytest.approx(
        {2: 0.96, 1: 0.9}[n], abs=1e-12)
    assert getattr(twin.config, f"gate_fidelity_{3 - n}q") == 1.0


def test_qdevice_gate_noise_given_twice_names_both_keys():
    text = (_K + _Q.format(i=0) + "link = 'k'\nnode = 'a'\ngate_depolarising_2q = 0.99\n"
            "gate_average_fidelity_2q = 0.99\n")
    with pytest.raises(bench.BenchConfigError,
                       match=r"q.toml: instrument\[0\]\.options\.gate_average_fidelity_2q: "
                             r"give one of .*not gate_depolarising_2q and "
                             r"gate_average_fidelity_2q"):
        bench.Bench(bench.parse(text, "q.toml"), "q.toml")


# ------------------------------------------------------------------ quantum channels

_CHANNEL = "channels = [{name = 'qc', to = 'b', length_km = 10.0, efficiency = 0.5%s}]\n"


def _channel_bench(extra: str = "") -> bench.Bench:
    text = (_K + _Q.format(i=0) + "link = 'k'\nnode = 'a'\nseed = 1\n" + _CHANNEL % extra
            + _Q.format(i=1) + "link = 'k'\nnode = 'b'\nseed = 2\n")
    return bench.Bench(bench.parse(text, "q.toml"), "q.toml")


def test_a_qdevice_channel_loses_photons_as_the_fibre_and_the_interfaces_say():
    from qnode.hal_sim.bench.memories import channel_transmission

    eta = channel_transmission(10.0, 0.2, 0.5)
    assert eta == pytest.approx(0.5 * 10 ** -0.2)          # 2 dB of fibre, then half stored
    b = _channel_bench()
    a, z = b.devices["q0"], b.devices["q1"]
    assert a.handle(b"ALLOC") == b"0\n" and z.handle(b"ALLOC") == b"0\n"
    n, arrived = 800, 0
    for _ in range(n):
        sent = a.handle(b"EMIT 0 qc").strip()
        reply = z.handle(b"ABSORB 0 qc " + sent)
        assert reply == b"OK\n" or reply.startswith(f"ERR {ERR_NO_PAIR} ".encode()), reply
        arrived += reply == b"OK\n"
    sigma = math.sqrt(n * eta * (1 - eta))
    assert abs(arrived - n * eta) <= 5 * sigma, (arrived, n * eta)
    assert z.handle(b"EMIT 0 qc").startswith(b"ERR 8 ")       # one way: a to b


@pytest.mark.parametrize("extra, key", [
    (", colour = 1", "channels[0].colour"),
    (", depolarising = 1.5", "channels[0].depolarising"),
    (", depolarising = -0.1", "channels[0].depolarising"),
    (", loss_db_per_km = true", "channels[0].loss_db_per_km"),
])
def test_bad_channel_options_name_the_key(extra, key):
    with pytest.raises(bench.BenchConfigError,
                       match=re.escape(f"q.toml: instrument[0].options.{key}")):
        _channel_bench(extra)
    text = _K + _Q.format(i=0) + "link = 'k'\nnode = 'a'\n"
    for table, field in (("{name = 'qc', to = 'a', length_km = 1.0}", "to"),
                         ("{name = 'q c', to = 'b', length_km = 1.0}", "name"),
                         ("{name = 'qc', to = 'b'}", "length_km")):
        with pytest.raises(bench.BenchConfigError,
                           match=re.escape(f"instrument[0].options.channels[0].{field}")):
            bench.Bench(bench.parse(text + f"channels = [{table}]\n", "q.toml"), "q.toml")
