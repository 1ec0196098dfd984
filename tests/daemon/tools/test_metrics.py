"""The Prometheus endpoint: started on port 0, scraped over HTTP, parsed with prometheus_client's
own parser; values, units and labels checked against the telemetry record it was given."""
from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from qnode.daemon.bus.telemetry import SCHEMA_VERSION, Telemetry, validate
from qnode.daemon.tools.metrics import PrometheusExporter

T = 1_732_345_678.5


def alice_record() -> Telemetry:
    """What an analyzer + memory node reports: one M link, one K link, two instruments."""
    return validate({
        "v": SCHEMA_VERSION, "node": "alice", "roles": ["analyzer", "memory"], "t": T,
        "uptime_s": 3725.5, "state": "degraded",
        "instruments": {"tagger": {"kind": "id900", "state": "ready", "errors_total": 0},
                        "hwp": {"kind": "elliptec", "state": "degraded", "errors_total": 3}},
        "singles_hz": {"1": 120_000.0, "2": 95_500.0},
        "ingest_mtags_s": 1.25, "tags_total": 98_765_432, "dropped_chunks_total": 2,
        "dropped_tags_total": 200_000,
        "links": {
            "alice-bob": {"type": "M", "peer": "bob", "role": "counter",
                          "coincidence_rate_hz": 1523.5, "accidental_rate_hz": 12.25,
                          "car": 124.4, "qber_z": 0.021, "qber_x": 0.034, "visibility": 0.962,
                          "chsh_s": 2.71, "chsh_s_err": 0.02, "offset_ps": 123_456.0,
                          "drift_ppb": 15.0, "tracker_state": "LOCKED",
                          "remote_tags_rate_hz": 210_000.0, "pairs_delivered_total": 1_000_000},
            "alice-rep": {"type": "K", "peer": "repeater", "role": "end", "expected_seq": 4312,
                          "heralds_total": 4311, "herald_rate_hz": 85.5, "pairs_live": 17,
                          "pairs_delivered_total": 4200, "pairs_expired_total": 94,
                          "expires_unacked": 1, "herald_latency_ms_p50": 2.5,
                          "herald_latency_ms_p99": 11.0, "fidelity_estimate": 0.91},
        },
        "memory_used": 17, "memory_capacity": 1000, "memory_qubits": 8,
        "memory_qubits_free": 3, "role_restarts_total": 1,
        "bus": {"published": 9000, "acked": 8990, "resent": 4, "queued": 0, "pending": 10,
                "dropped_telemetry": 1, "received": 4400, "rejected": {"not_json": 2},
                "handler_errors": 0, "reconnects": 1, "connected": True},
    })


@pytest.fixture
def exporter() -> Iterator[PrometheusExporter]:
    exp = PrometheusExporter(0, "127.0.0.1")
    exp.start()
    try:
        yield exp
    finally:
        exp.close()


def scrape(exp: PrometheusExporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, from a real HTTP scrape."""
    with urllib.request.urlopen(exp.url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_port_zero_binds_a_real_port(exporter: PrometheusExporter) -> None:
    assert exporter.port > 0
    assert exporter.url == f"http://127.0.0.1:{exporter.port}/metrics"
    assert scrape(exporter) == {}  # nothing exported before the first record


def test_scrape_reports_the_latest_record(exporter: PrometheusExporter) -> None:
    old = alice_record()
    old["tags_total"] = 5
    exporter.update(old)
    exporter.update(alice_record())
    s = scrape(exporter)
    a = {"node": "alice"}
    assert value(s, "qnode_node_info", **a, roles="analyzer,memory", schema="1") == 1
    assert value(s, "qnode_node_state", **a, state="degraded") == 1
    assert value(s, "qnode_node_state", **a, state="ready") == 0
    assert value(s, "qnode_uptime_seconds", **a) == 3725.5
    assert value(s, "qnode_telemetry_timestamp_seconds", **a) == T
    assert value(s, "qnode_ingest_rate_hertz", **a) == pytest.approx(1.25e6)
    assert value(s, "qnode_tags_total", **a) == 98_765_432
    assert value(s, "qnode_dropped_chunks_total", **a) == 2
    assert value(s, "qnode_dropped_tags_total", **a) == 200_000
    assert value(s, "qnode_memory_used_pairs", **a) == 17
    assert value(s, "qnode_memory_capacity_pairs", **a) == 1000
    assert value(s, "qnode_memory_qubits", **a) == 8
    assert value(s, "qnode_memory_free_qubits", **a) == 3
    assert value(s, "qnode_role_restarts_total", **a) == 1
    assert value(s, "qnode_singles_rate_hertz", **a, channel="2") == 95_500.0

    tagger, hwp = {**a, "instrument": "tagger", "kind": "id900"}, \
        {**a, "instrument": "hwp", "kind": "elliptec"}
    assert value(s, "qnode_instrument_state", **tagger, state="ready") == 1
    assert value(s, "qnode_instrument_state", **hwp, state="degraded") == 1
    assert value(s, "qnode_instrument_state", **hwp, state="ready") == 0
    assert value(s, "qnode_instrument_errors_total", **hwp) == 3

    m, k = {**a, "link": "alice-bob"}, {**a, "link": "alice-rep"}
    assert value(s, "qnode_link_info", **m, type="M", peer="bob", role="counter") == 1
    assert value(s, "qnode_link_info", **k, type="K", peer="repeater", role="end") == 1
    assert value(s, "qnode_link_coincidence_rate_hertz", **m) == 1523.5
    assert value(s, "qnode_link_accidental_rate_hertz", **m) == 12.25
    assert value(s, "qnode_link_coincidence_to_accidental_ratio", **m) == 124.4
    assert value(s, "qnode_link_qber_ratio", **m, basis="z") == 0.021
    assert value(s, "qnode_link_qber_ratio", **m, basis="x") == 0.034
    assert value(s, "qnode_link_visibility_ratio", **m) == 0.962
    assert value(s, "qnode_link_chsh_s", **m) == 2.71
    assert value(s, "qnode_link_chsh_s_error", **m) == 0.02
    assert value(s, "qnode_link_clock_offset_seconds", **m) == pytest.approx(123.456e-9)
    assert value(s, "qnode_link_clock_drift_ratio", **m) == pytest.approx(15e-9)
    assert value(s, "qnode_link_tracker_state", **m, state="LOCKED") == 1
    assert value(s, "qnode_link_tracker_state", **m, state="LOST") == 0
    assert value(s, "qnode_link_remote_tags_rate_hertz", **m) == 210_000.0
    assert value(s, "qnode_link_pairs_delivered_total", **m) == 1_000_000

    assert value(s, "qnode_link_expected_sequence", **k) == 4312
    assert value(s, "qnode_link_heralds_total", **k) == 4311
    assert value(s, "qnode_link_herald_rate_hertz", **k) == 85.5
    assert value(s, "qnode_link_pairs_live", **k) == 17
    assert value(s, "qnode_link_pairs_delivered_total", **k) == 4200
    assert value(s, "qnode_link_pairs_expired_total", **k) == 94
    assert value(s, "qnode_link_expires_unacked", **k) == 1
    assert value(s, "qnode_link_fidelity_ratio", **k) == 0.91
    assert value(s, "qnode_link_herald_latency_seconds", **k, quantile="0.5") == 2.5e-3
    assert value(s, "qnode_link_herald_latency_seconds", **k, quantile="0.99") == 11e-3

    assert value(s, "qnode_bus_published_total", **a) == 9000
    assert value(s, "qnode_bus_pending_messages", **a) == 10
    assert value(s, "qnode_bus_connected", **a) == 1
    assert value(s, "qnode_bus_rejected_total", **a, reason="not_json") == 2
    # only what the record holds: no K-only figures on the M link and vice versa
    assert ("qnode_link_fidelity_ratio", frozenset(m.items())) not in s
    assert ("qnode_link_chsh_s", frozenset(k.items())) not in s


def test_metric_types_and_names_follow_conventions(exporter: PrometheusExporter) -> None:
    exporter.update(alice_record())
    with urllib.request.urlopen(exporter.url, timeout=10) as resp:
        families = list(text_string_to_metric_families(resp.read().decode()))
    types = {f.name: f.type for f in families}
    assert all(name.startswith("qnode_") for name in types)
    counters = {n for n, t in types.items() if t == "counter"}
    assert {"qnode_tags", "qnode_link_pairs_delivered", "qnode_link_heralds",
            "qnode_bus_rejected", "qnode_instrument_errors"} <= counters
    for fam in families:
        for sample in fam.samples:
            assert sample.labels["node"] == "alice"
            if fam.type == "counter":
                assert sample.name.endswith("_total")
    assert types["qnode_link_herald_rate_hertz"] == "gauge"
    assert types["qnode_link_clock_offset_seconds"] == "gauge"


def test_minimal_record_and_several_nodes(exporter: PrometheusExporter) -> None:
    exporter.update({"node": "station", "roles": ["herald"], "t": T, "uptime_s": 1.0,
                     "memory_used": np.int64(5)})  # type: ignore[typeddict-item]
    exporter.update({"node": "bob", "roles": [], "t": T, "uptime_s": 2.0,
                     "links": {"alice-bob": {"chsh_s": None, "qber_z": float("nan")}},
                     "singles_hz": {"1": "oops"}, "state": None})  # odd values: left out
    s = scrape(exporter)
    assert value(s, "qnode_uptime_seconds", node="station") == 1.0
    assert value(s, "qnode_uptime_seconds", node="bob") == 2.0
    assert value(s, "qnode_memory_used_pairs", node="station") == 5  # numpy scalars are numbers
    assert value(s, "qnode_node_info", node="station", roles="herald", schema="1") == 1
    assert not any(name == "qnode_node_state" for name, _ in s)
    assert not any(name == "qnode_singles_rate_hertz" for name, _ in s)
    assert not any(name == "qnode_link_chsh_s" for name, _ in s)
    qber = value(s, "qnode_link_qber_ratio", node="bob", link="alice-bob", basis="z")
    assert qber != qber  # NaN: not measurable this interval
    exporter.collector.forget("bob")
    assert {dict(labels)["node"] for _, labels in scrape(exporter)} == {"station"}


def test_own_registry_and_clean_close() -> None:
    exp = PrometheusExporter(0, "127.0.0.1")
    exp.start()
    exp.update(alice_record())
    port = exp.port
    exp.close()
    exp.close()  # idempotent
    assert REGISTRY.get_sample_value("qnode_uptime_seconds", {"node": "alice"}) is None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    with pytest.raises(ValueError):
        exp.update({"roles": []})  # type: ignore[typeddict-item]


def test_taken_port_is_a_clear_error(exporter: PrometheusExporter) -> None:
    other = PrometheusExporter(exporter.port, "127.0.0.1")
    with pytest.raises(OSError, match=f"127.0.0.1:{exporter.port}"):
        other.start()


def quantum_record() -> Telemetry:
    """A memory node with qubits and purification on its K link, a compensated M link, a path
    it is an end of and one it repeats, and a source with an FEU."""
    return validate({
        "v": SCHEMA_VERSION, "node": "alice", "roles": ["memory", "analyzer", "source"], "t": T,
        "uptime_s": 10.0,
        "links": {
            "alice-rep": {
                "type": "K", "peer": "repeater", "role": "end", "fidelity_estimate": 0.93,
                # klink.memory.LinkMemory.telemetry()
                "bound_total": 500, "bind_failed_total": 7, "tests_total": 300,
                "tests_matched_total": 250, "tests_failed_total": 2, "qubits_bound": 3,
                "estimate_restarts_total": 1,
                "fidelity_source": "tests", "fidelity_sigma": 0.0125, "qber_x": 0.03,
                "qber_y": 0.04, "qber_z": 0.02, "tests_per_basis": [250, 80, 90, 80],
                # purification.Purifier.telemetry(); purify_inputs_aborted_total left out
                "purify_role": "leader", "purify_protocol": "dejmps",
                "purify_schedule": "pumping", "purify_rounds_total": 40,
                "purify_kept_total": 30, "purify_discarded_total": 12,
                "purify_aborted_total": 1, "purify_delivered_total": 20,
                "purify_inputs_delivered_total": 45, "purify_refused_total": 2,
                "purify_pairs_used_total": 70, "purify_inputs_failed_total": 20,
                "purify_inputs_expired_total": 3, "purify_expected_kept": 29.5,
                "purify_pairs_held": 2, "purify_plan_rounds": 2, "purify_plan_fidelity": 0.97,
                "purify_plan_pairs_per_output": 2.75, "purify_delivered_fidelity_mean": 0.965},
            "alice-bob": {
                "type": "M", "peer": "bob", "role": "counter", "secret_fraction": -0.25,
                "sifted_key_rate_hz": 700.5, "unmatched_tags_total": 1234,
                # polarisation_control.PolarisationController.telemetry()
                "polarisation_state": "calibrating", "calibrating": True,
                "compensator_angle_deg": 12.5, "visibility_reference": 0.97,
                "visibility_window": 0.875, "recalibrations_total": 4, "recalibration_s": 42.5},
        },
        "link_rejected": {"bad_herald": 3, "bad_body": 1},
        "paths": {
            "alice-carol": {"role": "end", "remote": "carol", "pairs_received_total": 60,
                            "pairs_delivered_total": 50, "pairs_discarded_total": 8,
                            "swap_orphaned_total": 1, "pairs_held": 2,
                            "delivered_fidelity_mean": 0.8125},
            "bob-dave": {"role": "repeater", "ends": ["bob", "dave"], "swaps_total": 90,
                         "swaps_failed_total": 4, "bsm_outcomes": {"00": 90},
                         "fidelity_estimate": 0.84},
        },
        # roles.source.SourceRole.fill_telemetry()
        "source_pump_power_mw": 12.5, "source_pump_set_point_mw": 12.5,
        "source_feu_power_mw": 12.5, "source_feu_rate_hz": 3000.0,
        "source_feu_fidelity": 0.955, "source_feu_max_fidelity": 0.975,
        "source_creates_total": 5, "source_creates_unsupp_total": 2,
    })


def test_memory_purification_path_and_source_metrics(exporter: PrometheusExporter) -> None:
    exporter.update(quantum_record())
    s = scrape(exporter)
    a = {"node": "alice"}
    k, m = {**a, "link": "alice-rep"}, {**a, "link": "alice-bob"}

    # quantum memory of the K link
    assert value(s, "qnode_link_memory_qubits_bound", **k) == 3
    assert value(s, "qnode_link_fidelity_standard_error_ratio", **k) == 0.0125
    assert value(s, "qnode_link_fidelity_source", **k, state="tests") == 1
    assert value(s, "qnode_link_fidelity_source", **k, state="prior") == 0
    assert value(s, "qnode_link_qber_ratio", **k, basis="y") == 0.04
    assert value(s, "qnode_link_qber_ratio", **k, basis="x") == 0.03
    assert value(s, "qnode_link_qber_ratio", **k, basis="z") == 0.02
    assert value(s, "qnode_link_memory_pairs_bound_total", **k) == 500
    assert value(s, "qnode_link_memory_bind_failures_total", **k) == 7
    assert value(s, "qnode_link_memory_test_pairs_measured_total", **k) == 300
    assert value(s, "qnode_link_memory_test_pairs_matched_total", **k) == 250
    assert value(s, "qnode_link_fidelity_estimate_restarts_total", **k) == 1
    assert value(s, "qnode_link_memory_test_measurements_failed_total", **k) == 2

    # purification
    assert value(s, "qnode_link_purification_info", **k, role="leader", protocol="dejmps",
                 schedule="pumping") == 1
    assert value(s, "qnode_link_purify_rounds_total", **k) == 40
    assert value(s, "qnode_link_purify_rounds_kept_total", **k) == 30
    assert value(s, "qnode_link_purify_rounds_kept_expected_total", **k) == 29.5
    assert value(s, "qnode_link_purify_pairs_discarded_total", **k) == 12
    assert value(s, "qnode_link_purify_rounds_aborted_total", **k) == 1
    assert value(s, "qnode_link_purify_pairs_delivered_total", **k) == 20
    assert value(s, "qnode_link_purify_creates_refused_total", **k) == 2
    assert value(s, "qnode_link_purify_pairs_used_total", **k) == 70
    fates = {dict(labels)["fate"]: v for (name, labels), v in s.items()
             if name == "qnode_link_purify_inputs_total"}
    assert fates == {"delivered": 45, "failed": 20, "expired": 3}  # "aborted": not in record
    assert value(s, "qnode_link_purify_pairs_held", **k) == 2
    assert value(s, "qnode_link_purify_plan_rounds", **k) == 2
    assert value(s, "qnode_link_purify_plan_fidelity_ratio", **k) == 0.97
    assert value(s, "qnode_link_purify_plan_pairs_per_output", **k) == 2.75
    assert value(s, "qnode_link_purify_delivered_fidelity_mean_ratio", **k) == 0.965

    # the M link: key and polarisation compensation
    assert value(s, "qnode_link_secret_key_fraction", **m) == -0.25
    assert value(s, "qnode_link_sifted_key_rate_hertz", **m) == 700.5
    assert value(s, "qnode_link_unmatched_tags_total", **m) == 1234
    assert value(s, "qnode_link_polarisation_state", **m, state="calibrating") == 1
    assert value(s, "qnode_link_polarisation_state", **m, state="locked") == 0
    assert value(s, "qnode_link_polarisation_reference_visibility_ratio", **m) == 0.97
    assert value(s, "qnode_link_polarisation_window_visibility_ratio", **m) == 0.875
    assert value(s, "qnode_link_polarisation_recalibrations_total", **m) == 4
    assert value(s, "qnode_link_polarisation_last_recalibration_seconds", **m) == 42.5
    assert value(s, "qnode_link_messages_rejected_total", **a, reason="bad_herald") == 3
    assert value(s, "qnode_link_messages_rejected_total", **a, reason="bad_body") == 1

    # paths: an end and a repeater
    end, rep = {**a, "path": "alice-carol"}, {**a, "path": "bob-dave"}
    assert value(s, "qnode_path_info", **end, role="end", ends="", remote="carol") == 1
    assert value(s, "qnode_path_info", **rep, role="repeater", ends="bob,dave",
                 remote="") == 1
    assert value(s, "qnode_path_pairs_received_total", **end) == 60
    assert value(s, "qnode_path_pairs_delivered_total", **end) == 50
    assert value(s, "qnode_path_pairs_discarded_total", **end) == 8
    assert value(s, "qnode_path_swap_results_orphaned_total", **end) == 1
    assert value(s, "qnode_path_pairs_held", **end) == 2
    assert value(s, "qnode_path_delivered_fidelity_mean_ratio", **end) == 0.8125
    assert value(s, "qnode_path_swaps_total", **rep) == 90
    assert value(s, "qnode_path_swaps_failed_total", **rep) == 4
    assert value(s, "qnode_path_swap_fidelity_ratio", **rep) == 0.84
    assert ("qnode_path_swaps_total", frozenset(end.items())) not in s

    # the source's FEU (mW -> W)
    assert value(s, "qnode_source_pump_power_watts", **a) == pytest.approx(12.5e-3)
    assert value(s, "qnode_source_pump_set_point_watts", **a) == pytest.approx(12.5e-3)
    assert value(s, "qnode_source_feu_chosen_power_watts", **a) == pytest.approx(12.5e-3)
    assert value(s, "qnode_source_feu_predicted_fidelity_ratio", **a) == 0.955
    assert value(s, "qnode_source_feu_predicted_rate_hertz", **a) == 3000.0
    assert value(s, "qnode_source_feu_max_fidelity_ratio", **a) == 0.975
    assert value(s, "qnode_source_creates_total", **a) == 5
    assert value(s, "qnode_source_creates_unsupported_total", **a) == 2

    # nothing purification- or memory-related on the M link, no polarisation on the K link
    assert not any(name.startswith(("qnode_link_purif", "qnode_link_memory_"))
                   and dict(labels)["link"] == "alice-bob" for name, labels in s)
    assert not any(name == "qnode_link_polarisation_state" and dict(labels)["link"] ==
                   "alice-rep" for name, labels in s)


def test_new_metrics_types_and_odd_values(exporter: PrometheusExporter) -> None:
    rec = quantum_record()
    exporter.update(rec)
    with urllib.request.urlopen(exporter.url, timeout=10) as resp:
        text = resp.read().decode()
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(declared) == len(set(declared))  # no gauge and counter share a family name
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert {"qnode_link_memory_pairs_bound", "qnode_link_purify_inputs",
            "qnode_link_purify_rounds_kept_expected", "qnode_path_swaps",
            "qnode_link_polarisation_recalibrations", "qnode_source_creates"} <= {
        n for n, t in types.items() if t == "counter"}
    assert types["qnode_link_purify_plan_rounds"] == "gauge"
    assert types["qnode_link_fidelity_source"] == "gauge"
    # info metrics: a gauge of value 1 in the text format
    assert types["qnode_link_purification_info"] == types["qnode_path_info"] == "gauge"

    # missing, None, wrong-typed and unknown values
    links, paths = cast(dict[str, Any], rec["links"]), cast(dict[str, Any], rec["paths"])
    lt = links["alice-rep"]
    for key in ("purify_role", "purify_protocol", "purify_schedule", "qber_y"):
        del lt[key]
    lt["purify_inputs_failed_total"] = None
    lt["qubits_bound"] = "three"
    lt["fidelity_source"] = "bayes"
    links["alice-bob"]["polarisation_state"] = None
    paths["bob-dave"] = "oops"
    exporter.update(rec)
    s = scrape(exporter)
    k = {"node": "alice", "link": "alice-rep"}
    names = {name for name, _ in s}
    assert "qnode_link_purification_info" not in names
    assert "qnode_link_memory_qubits_bound" not in names
    assert "qnode_link_polarisation_state" not in names
    assert {dict(labels)["fate"] for name, labels in s
            if name == "qnode_link_purify_inputs_total"} == {"delivered", "expired"}
    assert ("qnode_link_qber_ratio", frozenset({**k, "basis": "y"}.items())) not in s
    assert value(s, "qnode_link_fidelity_source", **k, state="bayes") == 1
    assert value(s, "qnode_link_fidelity_source", **k, state="tests") == 0
    # a path that is not a mapping: its info only, no figures
    assert value(s, "qnode_path_info", node="alice", path="bob-dave", role="", ends="",
                 remote="") == 1
    assert ("qnode_path_swaps_total", frozenset({"node": "alice", "path": "bob-dave"}.items())
            ) not in s


def test_every_counter_of_memory_purification_and_paths_is_exported() -> None:
    """The counters of LinkMemory, Purifier, Swapper and PathEnd (their ``counts``, typed by
    MemoryCounts, PurifyCounts, SwapCounts and PathEndCounts): all in the tables (a counter
    added there fails here until it is exported)."""
    from qnode.daemon.klink.memory import MemoryCounts
    from qnode.daemon.klink.purification import PurifyCounts
    from qnode.daemon.klink.swapping import PathEndCounts, SwapCounts
    from qnode.daemon.tools import metrics

    def counts(cls: type) -> set[str]:
        return set(cls.__required_keys__)  # type: ignore[attr-defined]

    link = {f for f, *_ in metrics._LINK_COUNTERS} | {
        f for _, f in metrics._PURIFY_INPUT_FATES}
    assert counts(MemoryCounts) <= link
    assert counts(PurifyCounts) <= link
    assert counts(SwapCounts) | counts(PathEndCounts) <= {f for f, *_ in metrics._PATH_COUNTERS}


def test_application_service_metrics_with_latency_histograms(exporter: PrometheusExporter) -> None:
    """The ``apps`` part: gauges, counters by outcome, code and application, and the two
    latency histograms as Prometheus histograms (cumulative buckets, +Inf = count, sum)."""
    from qnode.daemon.apps.service import Histogram

    first, done = Histogram(), Histogram()
    for s in (0.004, 0.03, 0.03, 0.7):
        first.observe(s)
    done.observe(2.0)
    exporter.update({"node": "alice", "roles": ["memory"], "apps": {
        "requests_waiting": 3, "requests_live": 2, "requests_total": {"done": 5, "expired": 1},
        "requests_awaiting_route": 1, "requests_routed_total": 6,
        "requests_refused_total": {"no_listener": 2}, "pairs_delivered_total": {"keyapp": 40},
        "request_first_pair_seconds": first.as_dict(), "request_done_seconds": done.as_dict(),
        "pairs_after_end_total": 0, "pairs_unclaimed_total": 1, "gives_failed_total": 0,
        "peer_rejected_total": {"unknown_pool": 4},
        "operations_total": {"result": 7, "unknown_pair": 1}, "pairs_held": 2}})
    with urllib.request.urlopen(exporter.url, timeout=10) as resp:
        text = resp.read().decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["qnode_apps_request_first_pair_seconds"] == "histogram"
    samples = scrape(exporter)
    node = {"node": "alice"}
    assert value(samples, "qnode_apps_requests_waiting", **node) == 3
    assert value(samples, "qnode_apps_requests_awaiting_route", **node) == 1
    assert value(samples, "qnode_apps_requests_routed_total", **node) == 6
    assert value(samples, "qnode_apps_requests_total", outcome="expired", **node) == 1
    assert value(samples, "qnode_apps_requests_errors_total", code="no_listener", **node) == 2
    assert value(samples, "qnode_apps_pairs_delivered_total", application="keyapp", **node) == 40
    assert value(samples, "qnode_apps_request_first_pair_seconds_bucket", le="0.005",
                 **node) == 1
    assert value(samples, "qnode_apps_request_first_pair_seconds_bucket", le="0.05",
                 **node) == 3
    assert value(samples, "qnode_apps_request_first_pair_seconds_bucket", le="+Inf",
                 **node) == 4
    assert value(samples, "qnode_apps_request_first_pair_seconds_count", **node) == 4
    assert value(samples, "qnode_apps_request_first_pair_seconds_sum", **node) == \
        pytest.approx(0.764)
    assert value(samples, "qnode_apps_peer_messages_rejected_total", reason="unknown_pool",
                 **node) == 4
    assert value(samples, "qnode_apps_operations_total", outcome="unknown_pair", **node) == 1
    assert value(samples, "qnode_apps_pairs_held", **node) == 2


def test_kme_metrics(exporter: PrometheusExporter) -> None:
    """The ``kme`` part (docs/integrators/key-delivery.md): key counters, requests by endpoint
    and refusals by reason; a record without it exports none."""
    exporter.update({"node": "alice", "roles": ["analyzer"], "kme": {
        "kme_id": "kme-alice", "port": 8443, "keys_added_total": 120,
        "keys_delivered_total": 7, "keys_dropped_total": 2,
        "keys_refused_total": {"already_delivered": 1},
        "requests_total": {"enc_keys": 3, "status": 1},
        "requests_rejected_total": {"unknown_sae": 4}}})
    samples = scrape(exporter)
    node = {"node": "alice"}
    assert value(samples, "qnode_kme_keys_added_total", **node) == 120
    assert value(samples, "qnode_kme_keys_delivered_total", **node) == 7
    assert value(samples, "qnode_kme_keys_dropped_total", **node) == 2
    assert value(samples, "qnode_kme_requests_total", endpoint="enc_keys", **node) == 3
    assert value(samples, "qnode_kme_requests_rejected_total", reason="unknown_sae", **node) == 4
    assert value(samples, "qnode_kme_keys_refused_total", reason="already_delivered",
                 **node) == 1
    exporter.update({"node": "alice", "roles": ["analyzer"]})
    assert not [k for k in scrape(exporter) if k[0].startswith("qnode_kme")]


def test_routing_metrics(exporter: PrometheusExporter) -> None:
    """The ``routing`` part (docs/operators/routing.md): what the node knows, route changes,
    refused adverts by reason, and per destination the route's hops (0: none) and predicted
    fidelity."""
    exporter.update({"node": "alice", "roles": ["memory"], "routing": {
        "nodes_known": 5, "links_known": 4, "adverts_sent_total": 31,
        "adverts_refused_total": {"unsigned": 2}, "route_changes_total": 3, "routes": {
            "bob": {"nodes": ["alice", "r1", "bob"], "links": ["a-r1", "r1-b"],
                    "fidelity": 0.87, "rate_hz": 120.0, "candidates": 2},
            "carol": {"error": "no route", "candidates": 0}}}})
    samples = scrape(exporter)
    node = {"node": "alice"}
    assert value(samples, "qnode_routing_nodes_known", **node) == 5
    assert value(samples, "qnode_routing_links_known", **node) == 4
    assert value(samples, "qnode_routing_route_changes_total", **node) == 3
    assert value(samples, "qnode_routing_adverts_sent_total", **node) == 31
    assert value(samples, "qnode_routing_adverts_refused_total", reason="unsigned", **node) == 2
    assert value(samples, "qnode_routing_route_hops", destination="bob", **node) == 2
    assert value(samples, "qnode_routing_route_hops", destination="carol", **node) == 0
    assert value(samples, "qnode_routing_route_predicted_fidelity_ratio", destination="bob",
                 **node) == pytest.approx(0.87)
