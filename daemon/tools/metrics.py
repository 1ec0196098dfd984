"""The Prometheus endpoint: the latest telemetry record of each node, as metrics
(docs/operators/monitoring.md, section Prometheus).

:class:`PrometheusExporter` serves ``/metrics`` from its own
:class:`~prometheus_client.CollectorRegistry` (never the process-wide one, so two exporters, or
tests, do not see each other's metrics). Its collector turns the latest
:class:`~qnode.daemon.bus.telemetry.Telemetry` record given to :meth:`PrometheusExporter.update`
into metric families at scrape time; a node that publishes telemetry every few seconds has
nothing else to keep up to date. Records of several nodes (``qnode demo`` runs a whole network
in one process) are exported side by side, told apart by the ``node`` label.

Names follow the Prometheus conventions: prefix ``qnode_``, base units in the name (``_seconds``,
``_hertz``, ``_celsius``, ``_watts``, ``_ratio`` for dimensionless fractions), counters end in
``_total``. Telemetry's ``_ms`` and ``_ps`` figures are converted to seconds, ``_mw`` to watts and
``ppb`` to a ratio. State fields are exported as one gauge per possible state with value 1 for the
current one (the "enum" idiom), so ``qnode_instrument_state{state="degraded"} == 1`` is an alert
rule. Labels: ``node`` on everything, ``link`` on link metrics, ``path`` on end-to-end path metrics
(``paths``), ``channel`` on singles, ``instrument`` (and ``kind``) on instrument health, ``state``
on state gauges, ``basis`` on the QBER gauges (and ``bound``, lower or upper, on
``qnode_link_qber_interval_ratio``), ``fate`` on ``qnode_link_purify_inputs_total``, ``reason``
on rejections; ``link`` type, peer and role are in ``qnode_link_info``, purification's role,
protocol and schedule in ``qnode_link_purification_info``, a path's role and ends in
``qnode_path_info``. A field missing from the record (or ``None``, or of the wrong type) is simply
not exported; a scrape never fails because of a record's content.
"""
from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from qnode.daemon.bus.telemetry import (
    INSTRUMENT_STATES,
    KEY_STATES,
    NODE_STATES,
    POLARISATION_STATES,
    QBER_BASES,
    SCHEMA_VERSION,
    TRACKER_STATES,
    Telemetry,
    link_qber,
)
from qnode.daemon.qkd.block import ABORT_REASONS

PREFIX = "qnode_"
_Family = TypeVar("_Family", GaugeMetricFamily, CounterMetricFamily, InfoMetricFamily,
                   HistogramMetricFamily)


def _number(value: object) -> float | None:
    """``value`` as a float, or None if it is not a number (bools are not numbers here; numpy
    scalars are)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# (telemetry field, metric name without prefix, help, scale to base units)
_Field = tuple[str, str, str, float]

_NODE_GAUGES: tuple[_Field, ...] = (
    ("uptime_s", "uptime_seconds", "Time since the daemon started (s).", 1.0),
    ("t", "telemetry_timestamp_seconds",
     "Wall clock when the exported telemetry record was built (s since the epoch).", 1.0),
    ("ingest_mtags_s", "ingest_rate_hertz", "Time tags ingested per second (1/s).", 1e6),
    ("memory_used", "memory_used_pairs", "Pairs held by the link layer.", 1.0),
    ("memory_capacity", "memory_capacity_pairs", "Pairs the link layer may hold.", 1.0),
    ("memory_qubits", "memory_qubits", "Qubits of the node's quantum memories (QDevices).", 1.0),
    ("memory_qubits_free", "memory_free_qubits", "Free qubits of the quantum memories.", 1.0),
    ("source_brightness_hz", "source_brightness_hertz",
     "Pair rate the SPDC source reached at its set point (1/s).", 1.0),
    ("source_temperature_c", "source_temperature_celsius", "Crystal oven temperature (°C).",
     1.0),
    ("source_pump_power_mw", "source_pump_power_watts", "Pump power read back (W).", 1e-3),
    ("source_pump_set_point_mw", "source_pump_set_point_watts",
     "Pump power set point: the configured one, or the FEU's choice for the latest CREATE (W).",
     1e-3),
    ("source_feu_power_mw", "source_feu_chosen_power_watts",
     "Pump power the FEU chose for the latest accepted CREATE (W).", 1e-3),
    ("source_feu_fidelity", "source_feu_predicted_fidelity_ratio",
     "Fidelity the FEU predicts for the source's pairs at the pump set point (0..1).", 1.0),
    ("source_feu_rate_hz", "source_feu_predicted_rate_hertz",
     "Coincidence rate the FEU predicts at the pump set point (1/s).", 1.0),
    ("source_feu_max_fidelity", "source_feu_max_fidelity_ratio",
     "Highest fidelity the FEU predicts within the pump's power limits (0..1).", 1.0),
)
_NODE_COUNTERS: tuple[_Field, ...] = (
    ("tags_total", "tags_total", "Time tags ingested.", 1.0),
    ("dropped_chunks_total", "dropped_chunks_total",
     "Tag chunks dropped because the pipeline was full.", 1.0),
    ("dropped_tags_total", "dropped_tags_total", "Time tags dropped with those chunks.", 1.0),
    ("role_restarts_total", "role_restarts_total", "Role tasks restarted after a failure.", 1.0),
    ("source_creates_total", "source_creates_total", "CREATE requests the source handled.", 1.0),
    ("source_creates_unsupp_total", "source_creates_unsupported_total",
     "CREATE requests the source refused with ERR UNSUPP (no pump power reaches their "
     "fidelity, or not for its link).", 1.0),
)
_LINK_GAUGES: tuple[_Field, ...] = (
    ("expected_seq", "link_expected_sequence",
     "The next link-layer sequence number this end expects.", 1.0),
    ("herald_rate_hz", "link_herald_rate_hertz",
     "Heralded successes per second (station) or accepted heralds (end) (1/s).", 1.0),
    ("pairs_live", "link_pairs_live", "Pairs in the inventory, not yet delivered.", 1.0),
    ("expires_unacked", "link_expires_unacked", "EXPIRE messages not yet acknowledged.", 1.0),
    ("herald_age_s", "link_herald_age_seconds",
     "Since the last herald batch (end: received, heartbeats included; station: sent) (s).",
     1.0),
    ("fidelity_estimate", "link_fidelity_ratio",
     "Fidelity estimate stamped on new pairs (0..1).", 1.0),
    ("coincidence_rate_hz", "link_coincidence_rate_hertz",
     "Cross-node coincidences per second (1/s).", 1.0),
    ("accidental_rate_hz", "link_accidental_rate_hertz",
     "Accidental coincidences per second, from the displaced window (1/s).", 1.0),
    ("car", "link_coincidence_to_accidental_ratio", "Coincidence-to-accidental ratio.", 1.0),
    ("visibility", "link_visibility_ratio", "Two-photon interference visibility (0..1).", 1.0),
    ("chsh_s", "link_chsh_s",
     "CHSH S value, accidentals subtracted (local bound 2, Tsirelson 2.83).", 1.0),
    ("chsh_s_err", "link_chsh_s_error", "Standard error of the CHSH S value.", 1.0),
    ("chsh_s_raw", "link_chsh_s_raw", "CHSH S value of the raw coincidences, accidentals kept.",
     1.0),
    ("chsh_s_raw_err", "link_chsh_s_raw_error", "Standard error of the raw CHSH S value.", 1.0),
    ("offset_ps", "link_clock_offset_seconds",
     "Peer clock minus own clock, from the alignment servo (s).", 1e-12),
    ("drift_ppb", "link_clock_drift_ratio",
     "Peer clock frequency relative to own clock, minus one.", 1e-9),
    ("remote_tags_rate_hz", "link_remote_tags_rate_hertz",
     "Peer time tags received over the network per second (1/s).", 1.0),
    ("secret_fraction", "link_secret_key_fraction",
     "Asymptotic BBM92 secret fraction 1 - f*h(Q_Z) - h(Q_X), bits per sifted bit (<= 0: no "
     "key).", 1.0),
    ("sifted_key_rate_hz", "link_sifted_key_rate_hertz",
     "Matched-basis (Z-Z, X-X) coincidences per second of tag time (1/s).", 1.0),
    # an M link that makes keys (roles.key_link)
    ("key_rate_bps", "link_key_rate_bits_per_second",
     "Secret key bits made per second (wall clock, since the previous record).", 1.0),
    ("key_f_ec", "link_key_error_correction_efficiency_ratio",
     "Error-correction efficiency f_EC of the latest block that gave a key: bits disclosed per "
     "n*h(QBER) (1 = the Shannon limit).", 1.0),
    ("key_secret_fraction", "link_key_secret_fraction",
     "Secret bits per sifted bit of the latest block that gave a key.", 1.0),
    ("key_sifted_pending_bits", "link_key_sifted_pending_bits",
     "Sifted bits waiting for a block.", 1.0),
    ("key_units_waiting", "link_key_units_waiting",
     "Keys held until the other end confirms it stored its copies.", 1.0),
    # polarisation compensation (M counter)
    ("visibility_reference", "link_polarisation_reference_visibility_ratio",
     "Visibility the polarisation compensator keeps, measured when it locked (0..1).", 1.0),
    ("visibility_window", "link_polarisation_window_visibility_ratio",
     "Visibility of the polarisation compensator's latest window (0..1).", 1.0),
    ("recalibration_s", "link_polarisation_last_recalibration_seconds",
     "Duration of the last polarisation recalibration, drop detected to locked (s).", 1.0),
    # K end with qubits (klink.memory.LinkMemory)
    ("qubits_bound", "link_memory_qubits_bound",
     "Qubits holding a pair of this link now (bound at this end).", 1.0),
    ("qubits_free", "link_memory_qubits_free",
     "Storage qubits of this link a new pair may be bound into now.", 1.0),
    ("qubits_taken", "link_memory_qubits_taken",
     "Storage qubits handed on with their pair (swap, path pair, purification) and not back "
     "yet; includes the held ones.", 1.0),
    ("qubits_held", "link_memory_qubits_held",
     "Storage qubits of delivered or discarded pairs waiting for their hold to end.", 1.0),
    ("fidelity_sigma", "link_fidelity_standard_error_ratio",
     "Standard error of the link's fidelity estimate from test pairs (0..1).", 1.0),
    ("dense_coding_bits", "link_dense_coding_bits",
     "Dense-coding capacity 2 - H(lambda) of the link's estimated state (bits per qubit sent).",
     1.0),
    # purification (klink.purification.Purifier)
    ("purify_pairs_held", "link_purify_pairs_held",
     "Pairs stored for purification now (outputs of rounds, not yet delivered).", 1.0),
    ("purify_plan_rounds", "link_purify_plan_rounds",
     "Purification rounds per output pair in the latest plan.", 1.0),
    ("purify_plan_fidelity", "link_purify_plan_fidelity_ratio",
     "Fidelity the latest purification plan predicts for its output pairs (0..1).", 1.0),
    ("purify_plan_pairs_per_output", "link_purify_plan_pairs_per_output",
     "Link pairs the latest purification plan expects to consume per output pair.", 1.0),
    ("purify_delivered_fidelity_mean", "link_purify_delivered_fidelity_mean_ratio",
     "Mean fidelity estimate of the last (up to 1000) purified pairs delivered (0..1).", 1.0),
)
_LINK_COUNTERS: tuple[_Field, ...] = (
    ("heralds_total", "link_heralds_total",
     "Successes heralded (station) or heralds accepted (end).", 1.0),
    ("pairs_delivered_total", "link_pairs_delivered_total", "Pairs delivered.", 1.0),
    ("pairs_expired_total", "link_pairs_expired_total", "Pairs expired before delivery.", 1.0),
    ("station_resets_total", "link_station_resets_total",
     "New herald-station epochs after the first: station restarts that lost their state.",
     1.0),
    ("heralds_stale_total", "link_heralds_stale_total",
     "Herald entries ignored because their numbers were already accepted or skipped.", 1.0),
    ("herald_batches_ignored_total", "link_herald_batches_ignored_total",
     "Herald batches of a station epoch this end has left (or without an epoch).", 1.0),
    ("expires_stale_total", "link_expires_stale_total",
     "EXPIREs ending 2^31 or more numbers behind (e.g. a lap old): acknowledged, nothing "
     "done.", 1.0),
    ("expires_resent_total", "link_expires_resent_total",
     "EXPIREs sent again because no EXPIRE_ACK came (backoff: 2 x comm_delay doubling to 16 s).",
     1.0),
    ("pairs_shed_total", "link_pairs_shed_total",
     "Pairs this end expired to merge two unacknowledged EXPIRE ranges (their number is "
     "capped); the peer drops them too.", 1.0),
    ("send_overloaded_total", "link_send_overloaded_total",
     "Link-layer messages not sent because the bus's outgoing queue was full (state was "
     "stored; EXPIREs are resent).", 1.0),
    ("epoch_conflicts_total", "link_epoch_conflicts_total",
     "Peer EPOCH messages that placed the station epoch elsewhere (the larger start wins).",
     1.0),
    ("herald_ts_implausible_total", "link_herald_timestamps_implausible_total",
     "Heralds whose envelope timestamp gave no plausible latency (not averaged).", 1.0),
    ("heartbeats_total", "link_station_heartbeats_total",
     "Empty herald batches a station sent on its timer (no tagger chunk came).", 1.0),
    ("unmatched_tags_total", "link_unmatched_tags_total",
     "Time tags dropped because the other stream was not there (counter: waited > 5 s; "
     "streamer: the broker backlog was full).", 1.0),
    ("key_blocks_total", "link_key_blocks_total",
     "Key blocks finished, with or without a key.", 1.0),
    ("key_secret_bits_total", "link_key_secret_bits_total", "Secret key bits made.", 1.0),
    ("key_units_total", "link_key_units_total", "Keys stored in the node's key store.", 1.0),
    ("key_units_dropped_total", "link_key_units_dropped_total",
     "Keys dropped because the other end never confirmed storing its copies.", 1.0),
    ("key_sifted_bits_total", "link_key_sifted_bits_total",
     "Sifted bits that went into key blocks.", 1.0),
    ("key_disclosed_bits_total", "link_key_disclosed_bits_total",
     "Bits disclosed by error correction, verification and the error counts.", 1.0),
    ("key_sifted_dropped_bits_total", "link_key_sifted_dropped_bits_total",
     "Sifted bits dropped because blocks did not keep up.", 1.0),
    ("key_session_restarts_total", "link_key_session_restarts_total",
     "Key sessions given up and started again (the other end stopped answering, or a message "
     "did not fit).", 1.0),
    ("key_messages_rejected_total", "link_key_messages_rejected_total",
     "Key messages refused.", 1.0),
    ("key_messages_dropped_total", "link_key_messages_dropped_total",
     "Key messages dropped because the session was too far behind.", 1.0),
    ("recalibrations_total", "link_polarisation_recalibrations_total",
     "Polarisation recalibrations that locked the compensator again.", 1.0),
    # K end with qubits (klink.memory.LinkMemory.counts)
    ("bound_total", "link_memory_pairs_bound_total", "Link pairs bound into a qubit here.", 1.0),
    ("bind_failed_total", "link_memory_bind_failures_total",
     "Binds the QDevice refused (no herald near that time, or the halves were taken).", 1.0),
    ("tests_total", "link_memory_test_pairs_measured_total",
     "Test pairs measured here for the fidelity estimate.", 1.0),
    ("tests_matched_total", "link_memory_test_pairs_matched_total",
     "Test pairs measured here and matched with the peer's outcome in the same basis.", 1.0),
    ("estimate_restarts_total", "link_fidelity_estimate_restarts_total",
     "Times the link's fidelity estimate restarted because a segment of test pairs differed "
     "from those before it (the link changed).", 1.0),
    ("tests_failed_total", "link_memory_test_measurements_failed_total",
     "Test pairs without an outcome (the QDevice batch failed).", 1.0),
    ("tests_skipped_total", "link_memory_test_pairs_skipped_total",
     "Test pairs not measured: more than one QDevice batch measures (those with the lowest "
     "hash of their number are measured).", 1.0),
    # purification (purification.Purifier.counts)
    ("purify_rounds_total", "link_purify_rounds_total",
     "Purification rounds completed (both ends' outcomes in).", 1.0),
    ("purify_kept_total", "link_purify_rounds_kept_total",
     "Purification rounds whose outcomes agreed: the kept pair survived.", 1.0),
    ("purify_expected_kept", "link_purify_rounds_kept_expected_total",
     "Sum of the completed rounds' predicted success probabilities: the kept rounds the "
     "model expects (compare with qnode_link_purify_rounds_kept_total).", 1.0),
    ("purify_discarded_total", "link_purify_pairs_discarded_total",
     "Purified pairs discarded: a failed round's kept pair, or a stored pair past the "
     "cut-off or its extra rounds.", 1.0),
    ("purify_aborted_total", "link_purify_rounds_aborted_total",
     "Purification rounds aborted: a pair or the peer's answer missing, or the QDevice "
     "failed.", 1.0),
    ("purify_delivered_total", "link_purify_pairs_delivered_total",
     "Purified pairs delivered to applications.", 1.0),
    ("purify_refused_total", "link_purify_creates_refused_total",
     "CREATEs needing purification refused with ERR UNSUPP (no plan reaches the fidelity, "
     "or this end follows).", 1.0),
    ("purify_pairs_used_total", "link_purify_pairs_used_total",
     "Link pairs taken as purification inputs (where they went: "
     "qnode_link_purify_inputs_total).", 1.0),
)
#: purification input pairs by fate: (fate label, telemetry field)
_PURIFY_INPUT_FATES = (
    ("delivered", "purify_inputs_delivered_total"), ("failed", "purify_inputs_failed_total"),
    ("expired", "purify_inputs_expired_total"), ("aborted", "purify_inputs_aborted_total"))
#: LinkMemory.telemetry()'s fidelity_source: the test-pair estimate or the configured prior
FIDELITY_SOURCES = ("prior", "tests")
#: ``paths`` entries: a repeater's Swapper.telemetry() and an end's PathEnd.telemetry()
_PATH_GAUGES: tuple[_Field, ...] = (
    ("fidelity_estimate", "path_swap_fidelity_ratio",
     "The repeater's fidelity estimate of the pair its latest swap made of its two link pairs, "
     "at the Bell-state measurement (with one repeater: the end-to-end pair) (0..1).", 1.0),
    ("chains_waiting", "path_chains_waiting",
     "Link pairs taken for a path, waiting for the rest of their chain of swaps.", 1.0),
    ("pairs_held", "path_pairs_held", "End-to-end pairs held at this end, not yet delivered.",
     1.0),
    ("delivered_fidelity_mean", "path_delivered_fidelity_mean_ratio",
     "Mean fidelity estimate of the last (up to 1000) end-to-end pairs delivered (0..1).", 1.0),
)
_PATH_COUNTERS: tuple[_Field, ...] = (
    ("swaps_total", "path_swaps_total", "Entanglement swaps (Bell-state measurements) done at "
     "the repeater.", 1.0),
    ("swaps_failed_total", "path_swaps_failed_total",
     "Bell-state measurements that failed on the QDevice (both link pairs expired).", 1.0),
    ("pairs_received_total", "path_pairs_received_total",
     "End-to-end pairs assembled from the repeaters' swaps.", 1.0),
    ("pairs_delivered_total", "path_pairs_delivered_total",
     "End-to-end pairs delivered to applications.", 1.0),
    ("pairs_discarded_total", "path_pairs_discarded_total",
     "End-to-end pairs discarded at the cut-off before delivery.", 1.0),
    ("chains_incomplete_total", "path_chains_incomplete_total",
     "Link pairs taken for a path whose chain of swaps did not complete in time.", 1.0),
    ("swap_orphaned_total", "path_swap_results_orphaned_total",
     "Swap results for a link pair not held here (dropped).", 1.0),
    ("swap_reports_refused_total", "path_swap_reports_refused_total",
     "Swap results refused: not from the path's repeater at that hop, or not its links.", 1.0),
    ("swap_reports_evicted_total", "path_swap_reports_evicted_total",
     "Swap results dropped before their chain completed: the end's store was full.", 1.0),
    ("send_overloaded_total", "path_send_overloaded_total",
     "Replies about the path's pairs not sent: the bus's outgoing queue was full.", 1.0),
)
#: NodeBus.metrics() keys -> (metric name, help); counters unless noted in _BUS_GAUGES
_BUS_COUNTERS = {
    "published": ("bus_published_total", "MQTT messages published."),
    "acked": ("bus_acked_total", "State-changing messages the broker acknowledged."),
    "resent": ("bus_resent_total", "Messages sent again after a reconnect."),
    "queued": ("bus_queued_total", "Messages published while disconnected."),
    "dropped_telemetry": ("bus_dropped_telemetry_total", "Telemetry not sent (disconnected)."),
    "received": ("bus_received_total", "Messages accepted and handled."),
    "handler_errors": ("bus_handler_errors_total", "Message handlers that raised."),
    "reconnects": ("bus_reconnects_total", "Reconnections to the broker after the first."),
}
_BUS_GAUGES = {
    "pending": ("bus_pending_messages", "State-changing messages not yet acknowledged."),
    "connected": ("bus_connected", "1 while connected to the broker."),
}


class TelemetryCollector(Collector):
    """A custom collector: metric families built from the latest record of each node."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, Telemetry] = {}

    def update(self, record: Telemetry) -> None:
        """Replace ``record['node']``'s record (the exporter keeps a reference: build a new
        record each interval rather than mutating an old one)."""
        node = record.get("node")
        if not isinstance(node, str):
            raise ValueError("a telemetry record needs a 'node' (str)")
        with self._lock:
            self._records[node] = record

    def forget(self, node: str) -> None:
        """Stop exporting ``node``."""
        with self._lock:
            self._records.pop(node, None)

    def records(self) -> dict[str, Telemetry]:
        with self._lock:
            return dict(self._records)

    def describe(self) -> list[Metric]:
        return []  # names depend on the records; do not collect() at registration

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        for node, record in sorted(self.records().items()):
            _node_metrics(families, node, record)
        yield from families.all()


class _Families:
    """Metric families by name, created on first use with the labels they will carry."""

    def __init__(self) -> None:
        self._by_name: dict[str, Metric] = {}

    def _get(self, make: type[_Family], name: str, doc: str,
             labels: tuple[str, ...]) -> _Family:
        family = self._by_name.get(name)
        if isinstance(family, make):
            return family
        new = make(PREFIX + name, doc, labels=labels)
        self._by_name[name] = new
        return new

    def gauge(self, name: str, doc: str, labels: dict[str, str], value: float | None) -> None:
        if value is not None:
            fam = self._get(GaugeMetricFamily, name, doc, tuple(labels))
            fam.add_metric(list(labels.values()), value)

    def counter(self, name: str, doc: str, labels: dict[str, str], value: float | None) -> None:
        if value is not None and not math.isnan(value):
            fam = self._get(CounterMetricFamily, name, doc, tuple(labels))
            fam.add_metric(list(labels.values()), value)

    def histogram(self, name: str, doc: str, labels: dict[str, str],
                  hist: Mapping[str, Any]) -> None:
        """A cumulative histogram from telemetry's ``{"buckets": {bound: count}, "count",
        "sum"}`` (bounds in s); nothing when it is malformed."""
        buckets = _mapping(hist.get("buckets"))
        count, total = _number(hist.get("count")), _number(hist.get("sum"))
        try:
            read = sorted((float(b), _number(c)) for b, c in buckets.items())
        except ValueError:
            return
        bounds = [(f"{b:g}", c) for b, c in read if c is not None]
        if count is None or total is None or len(bounds) != len(read):
            return
        fam = self._get(HistogramMetricFamily, name, doc, tuple(labels))
        fam.add_metric(list(labels.values()), [*bounds, ("+Inf", count)], total)

    def info(self, name: str, doc: str, labels: dict[str, str], info: dict[str, str]) -> None:
        fam = self._get(InfoMetricFamily, name, doc, tuple(labels))
        fam.add_metric(list(labels.values()), info)

    def state(self, name: str, doc: str, labels: dict[str, str], states: tuple[str, ...],
              current: object) -> None:
        """One gauge per state, 1 for ``current`` (added to the list if it is unknown)."""
        if not isinstance(current, str):
            return
        for s in states if current in states else (*states, current):
            self.gauge(name, doc, {**labels, "state": s}, 1.0 if s == current else 0.0)

    def all(self) -> list[Metric]:
        return list(self._by_name.values())


def _fields(fam: _Families, fields: tuple[_Field, ...], record: Mapping[str, Any],
            labels: dict[str, str], *, counter: bool) -> None:
    add = fam.counter if counter else fam.gauge
    for key, name, doc, scale in fields:
        value = _number(record.get(key))
        add(name, doc, labels, None if value is None else value * scale)


def _node_metrics(fam: _Families, node: str, rec: Telemetry) -> None:
    lab = {"node": node}
    roles = rec.get("roles")
    fam.info("node", "The node: roles and telemetry schema version.", lab, {
        "roles": ",".join(r for r in roles if isinstance(r, str))
        if isinstance(roles, list) else "",
        "schema": str(rec.get("v", SCHEMA_VERSION))})
    fam.state("node_state", "1 for the node's current state.", lab, NODE_STATES,
              rec.get("state"))
    _fields(fam, _NODE_GAUGES, rec, lab, counter=False)
    _fields(fam, _NODE_COUNTERS, rec, lab, counter=True)
    for channel, rate in sorted(_mapping(rec.get("singles_hz")).items()):
        fam.gauge("singles_rate_hertz", "Detector singles per second, per tagger channel (1/s).",
                  {**lab, "channel": str(channel)}, _number(rate))
    for name, health in sorted(_mapping(rec.get("instruments")).items()):
        health = _mapping(health)
        ilab = {**lab, "instrument": str(name), "kind": str(health.get("kind", ""))}
        fam.state("instrument_state", "1 for the instrument's current state.", ilab,
                  INSTRUMENT_STATES, health.get("state"))
        fam.counter("instrument_errors_total", "Errors of the instrument (timeouts, garbled "
                    "replies, device errors).", ilab, _number(health.get("errors_total")))
    for link, lt in sorted(_mapping(rec.get("links")).items()):
        _link_metrics(fam, {**lab, "link": str(link)}, _mapping(lt))
    for reason, count in sorted(_mapping(rec.get("link_rejected")).items()):
        fam.counter("link_messages_rejected_total", "Link-layer messages refused after the "
                    "envelope checks, by reason.", {**lab, "reason": str(reason)}, _number(count))
    for path, pt in sorted(_mapping(rec.get("paths")).items()):
        _path_metrics(fam, {**lab, "path": str(path)}, _mapping(pt))
    _bus_metrics(fam, lab, _mapping(rec.get("bus")))
    _apps_metrics(fam, lab, _mapping(rec.get("apps")))
    _kme_metrics(fam, lab, _mapping(rec.get("kme")))
    _routing_metrics(fam, lab, _mapping(rec.get("routing")))


def _routing_metrics(fam: _Families, lab: dict[str, str], routing: Mapping[str, Any]) -> None:
    """A memory node's routing (docs/operators/routing.md)."""
    if not routing:
        return
    fam.gauge("routing_nodes_known", "Nodes whose topology advert this node holds.", lab,
              _number(routing.get("nodes_known")))
    fam.gauge("routing_links_known", "Links both ends advertise up or degraded.", lab,
              _number(routing.get("links_known")))
    fam.counter("routing_route_changes_total", "Changes of the route to any destination.", lab,
                _number(routing.get("route_changes_total")))
    fam.counter("routing_adverts_sent_total", "Topology adverts this node published.", lab,
                _number(routing.get("adverts_sent_total")))
    for reason, n in sorted(_mapping(routing.get("adverts_refused_total")).items()):
        fam.counter("routing_adverts_refused_total", "Topology adverts of other nodes refused, "
                    "by reason.", {**lab, "reason": str(reason)}, _number(n))
    for dst, route in sorted(_mapping(routing.get("routes")).items()):
        route = _mapping(route)
        rlab = {**lab, "destination": str(dst)}
        fam.gauge("routing_route_hops", "Links of the route to the destination (0: none).",
                  rlab, float(len(route["links"])) if isinstance(route.get("links"), list)
                  else 0.0)
        fam.gauge("routing_route_predicted_fidelity_ratio", "Predicted end-to-end fidelity of "
                  "the route to the destination (Werner links, ideal swaps; 0..1).", rlab,
                  _number(route.get("fidelity")))


def _kme_metrics(fam: _Families, lab: dict[str, str], kme: Mapping[str, Any]) -> None:
    """The node's KME (docs/integrators/key-delivery.md)."""
    if not kme:
        return
    for key, doc in (("keys_added_total", "Keys post-processing put into the key store."),
                     ("keys_delivered_total", "Keys handed to SAEs (enc_keys and dec_keys)."),
                     ("keys_dropped_total", "Keys refused: the store held max_key_count.")):
        fam.counter(f"kme_{key}", doc, lab, _number(kme.get(key)))
    for label, key, name, doc in (
            ("endpoint", "requests_total", "kme_requests_total",
             "ETSI GS QKD 014 requests served, by endpoint."),
            ("reason", "requests_rejected_total", "kme_requests_rejected_total",
             "ETSI GS QKD 014 requests refused, by reason."),
            ("reason", "keys_refused_total", "kme_keys_refused_total",
             "Key takes the store refused, by reason.")):
        for value, count in sorted(_mapping(kme.get(key)).items()):
            fam.counter(name, doc, {**lab, label: str(value)}, _number(count))


def _apps_metrics(fam: _Families, lab: dict[str, str], apps: Mapping[str, Any]) -> None:
    """The application service (docs/integrators/applications.md)."""
    if not apps:
        return
    fam.gauge("apps_requests_waiting", "Requests waiting in this node's allocator queues "
              "(both ends' requests).", lab, _number(apps.get("requests_waiting")))
    fam.gauge("apps_requests_live", "Requests made at this node that have not ended.", lab,
              _number(apps.get("requests_live")))
    fam.gauge("apps_requests_awaiting_route", "Requests for a node no pool serves yet, "
              "waiting for the routed path routing was asked for.", lab,
              _number(apps.get("requests_awaiting_route")))
    for outcome, n in sorted(_mapping(apps.get("requests_total")).items()):
        fam.counter("apps_requests_total", "Requests made at this node that ended, by outcome "
                    "(done, expired, cancelled, error).", {**lab, "outcome": str(outcome)},
                    _number(n))
    for code, n in sorted(_mapping(apps.get("requests_refused_total")).items()):
        fam.counter("apps_requests_errors_total", "Requests that ended in ERROR, by code.",
                    {**lab, "code": str(code)}, _number(n))
    for app, n in sorted(_mapping(apps.get("pairs_delivered_total")).items()):
        fam.counter("apps_pairs_delivered_total", "Pairs delivered to each application of "
                    "this node (as requester or listener).", {**lab, "application": str(app)},
                    _number(n))
    for key, name, doc in (
            ("request_first_pair_seconds", "apps_request_first_pair_seconds",
             "Time from a request's arrival to its first pair (s)."),
            ("request_done_seconds", "apps_request_done_seconds",
             "Time from a request's arrival to DONE (s).")):
        fam.histogram(name, doc, lab, _mapping(apps.get(key)))
    for key, name, doc in (
            ("pairs_after_end_total", "apps_pairs_after_end_total",
             "Pairs that came for a request that had already ended here (lost)."),
            ("pairs_unclaimed_total", "apps_pairs_unclaimed_total",
             "Pairs for a purpose nobody listened on any more (lost)."),
            ("gives_failed_total", "apps_gives_failed_total",
             "GIVEs of pairs this end did not hold (or never got)."),
            ("replies_overloaded_total", "apps_replies_overloaded_total",
             "Replies to applications not sent: the bus's outgoing queue was full."),
            ("requests_routed_total", "apps_requests_routed_total",
             "Requests that waited for a routed path to their remote node.")):
        fam.counter(name, doc, lab, _number(apps.get(key)))
    for outcome, n in sorted(_mapping(apps.get("operations_total")).items()):
        fam.counter("apps_operations_total", "Applications' OPERATEs on their qubits that "
                    "ended, by outcome (result, or the ERROR's code).",
                    {**lab, "outcome": str(outcome)}, _number(n))
    fam.gauge("apps_pairs_held", "Delivered pairs whose qubit an application holds now.", lab,
              _number(apps.get("pairs_held")))
    for reason, n in sorted(_mapping(apps.get("peer_rejected_total")).items()):
        fam.counter("apps_peer_messages_rejected_total", "Service messages of other nodes "
                    "refused, by reason.", {**lab, "reason": str(reason)}, _number(n))


def _link_metrics(fam: _Families, lab: dict[str, str], lt: Mapping[str, Any]) -> None:
    fam.info("link", "A link end: its type (K/M), peer and this node's role on it.", lab,
             {k: str(lt.get(k, "")) for k in ("type", "peer", "role")})
    _fields(fam, _LINK_GAUGES, lt, lab, counter=False)
    _fields(fam, _LINK_COUNTERS, lt, lab, counter=True)
    for quantile, key in (("0.5", "herald_latency_ms_p50"), ("0.99", "herald_latency_ms_p99")):
        ms = _number(lt.get(key))
        fam.gauge("link_herald_latency_seconds", "Herald latency quantile: receipt time minus "
                  "the chunk's publish time (s).", {**lab, "quantile": quantile},
                  None if ms is None else ms * 1e-3)
    for quantile, key in (("0.5", "herald_handling_ms_p50"),
                          ("0.99", "herald_handling_ms_p99")):
        ms = _number(lt.get(key))
        fam.gauge("link_herald_handling_seconds", "Herald handling quantile: receipt to "
                  "applied, stored and answered, on this node's clock (s).",
                  {**lab, "quantile": quantile}, None if ms is None else ms * 1e-3)
    for basis in QBER_BASES:
        q, bl = link_qber(lt, basis), {**lab, "basis": basis}
        fam.gauge("link_qber_ratio", "Quantum bit error rate per basis, clamped to its physical "
                  "range (0..1).", bl, q.value)
        fam.gauge("link_qber_raw_ratio", "Quantum bit error rate per basis before clamping "
                  "(read-out corrected on K links with qubits, so it may be below 0; unbiased: "
                  "average this one).", bl, q.raw)
        for bound, x in (("lower", q.low), ("upper", q.high)):
            fam.gauge("link_qber_interval_ratio", "95 % confidence bounds of the quantum bit "
                      "error rate per basis (Wilson score interval, read-out corrected, "
                      "intersected with 0..1).", {**bl, "bound": bound}, x)
    for bell, key in (("psi+", "psi_plus_total"), ("psi-", "psi_minus_total")):
        fam.counter("link_bell_states_total", "Bell-state measurement outcomes at the herald "
                    "station.", {**lab, "bell_state": bell}, _number(lt.get(key)))
    fam.state("link_tracker_state", "1 for the clock tracker's current state.", lab,
              TRACKER_STATES, lt.get("tracker_state"))
    fam.state("link_fidelity_source", "1 for where the link's fidelity estimate comes from: "
              "test pairs (tests) or the configured prior.", lab, FIDELITY_SOURCES,
              lt.get("fidelity_source"))
    fam.state("link_key_state", "1 for the key session's current state (stopped: the latest "
              "block gave no key; see qnode_link_key_blocks_aborted_total).", lab, KEY_STATES,
              lt.get("key_state"))
    aborts = _mapping(lt.get("key_aborts_total"))
    reasons = sorted({*ABORT_REASONS, *aborts}) if "key_state" in lt else sorted(aborts)
    for reason in reasons:   # every reason from 0 on a key link: increase() sees the first
        n = aborts.get(reason, 0)
        fam.counter("link_key_blocks_aborted_total", "Key blocks that gave no key, by reason "
                    "(qber_above_threshold: the sample's QBER is above the threshold, e.g. an "
                    "eavesdropper).", {**lab, "reason": str(reason)}, _number(n))
    for basis in ("z", "x"):
        fam.gauge("link_key_sample_qber_ratio", "Error fraction of the latest key block's "
                  "disclosed sample, per basis (0..1).", {**lab, "basis": basis.upper()},
                  _number(lt.get(f"key_sample_qber_{basis}")))
    fam.state("link_polarisation_state", "1 for the polarisation compensator's current state "
              "(calibrating: searching the compensator angle).", lab, POLARISATION_STATES,
              lt.get("polarisation_state"))
    purification = ("purify_role", "purify_protocol", "purify_schedule")
    if any(isinstance(lt.get(k), str) for k in purification):
        fam.info("link_purification", "Purification on a K link: this end's role (leader "
                 "or follower), protocol and schedule.", lab,
                 {k.removeprefix("purify_"): str(lt.get(k, "")) for k in purification})
    for fate, key in _PURIFY_INPUT_FATES:
        fam.counter("link_purify_inputs_total", "Link pairs taken by purification, by fate: "
                    "in delivered pairs, lost in failed rounds, expired in store, or in "
                    "aborted rounds.", {**lab, "fate": fate}, _number(lt.get(key)))


def _path_metrics(fam: _Families, lab: dict[str, str], pt: Mapping[str, Any]) -> None:
    ends = pt.get("ends")
    fam.info("path", "An end-to-end path: this node's role on it (repeater or end), its ends "
             "(repeater) or the remote end (end).", lab, {
                 "role": str(pt.get("role", "")),
                 "ends": ",".join(e for e in ends if isinstance(e, str))
                 if isinstance(ends, list) else "",
                 "remote": str(pt.get("remote", ""))})
    _fields(fam, _PATH_GAUGES, pt, lab, counter=False)
    _fields(fam, _PATH_COUNTERS, pt, lab, counter=True)


def _bus_metrics(fam: _Families, lab: dict[str, str], bus: Mapping[str, Any]) -> None:
    for key, (name, doc) in _BUS_COUNTERS.items():
        fam.counter(name, doc, lab, _number(bus.get(key)))
    for key, (name, doc) in _BUS_GAUGES.items():
        value = bus.get(key)
        fam.gauge(name, doc, lab, float(value) if isinstance(value, bool) else _number(value))
    for reason, count in sorted(_mapping(bus.get("rejected")).items()):
        fam.counter("bus_rejected_total", "Incoming MQTT messages rejected, by reason.",
                    {**lab, "reason": str(reason)}, _number(count))


class PrometheusExporter:
    """``/metrics`` on ``host:port`` (port 0: any free port; :attr:`port` tells which).

    ``update(record)`` after each telemetry interval; ``start()`` once; ``close()`` on shutdown
    (also as a context manager). The HTTP server runs in a daemon thread and never touches the
    event loop.
    """

    def __init__(self, port: int, host: str = "0.0.0.0"):
        self.host = host
        self.requested_port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = TelemetryCollector()
        self.registry.register(self.collector)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`), else the requested one."""
        return int(self._server.server_port) if self._server is not None else self.requested_port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/metrics"

    def update(self, record: Telemetry) -> None:
        """Export ``record`` as the latest of its node (ValueError without a ``node``)."""
        self.collector.update(record)

    def start(self) -> None:
        """Listen; OSError (e.g. the port is taken) names the address."""
        if self._server is not None:
            return
        try:
            started = start_http_server(self.requested_port, self.host, self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"Prometheus endpoint on {self.host}:{self.requested_port}:"
                                     f" {exc.strerror or exc}") from exc
        if not isinstance(started, tuple):  # old clients return None: no port, no shutdown
            raise RuntimeError("prometheus-client is too old: start_http_server must return "
                               "(server, thread); upgrade prometheus-client")
        self._server, self._thread = started

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> PrometheusExporter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
