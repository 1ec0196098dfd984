"""The Prometheus endpoint: started on port 0, scraped over HTTP, parsed with prometheus_client's
own parser; values, units and labels checked against the telemetry record it was given."""
from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from qnode.daemon.metrics import PrometheusExporter
from qnode.daemon.telemetry import SCHEMA_VERSION, Telemetry, validate

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
