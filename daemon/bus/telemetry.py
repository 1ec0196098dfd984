"""The node's telemetry record: what it publishes on ``telemetry`` and exports to Prometheus.

One JSON object per ``metrics.telemetry_interval_s`` (docs/integrators/telemetry.md), built by the
node from its counters; :mod:`qnode.daemon.tools.metrics` exports the latest one on the
Prometheus endpoint, ``qnode status`` and the demo's live view print it, and the demo's report
plots a run's records. Every field is optional except ``node``, ``roles``, ``t`` and
``uptime_s``: a node reports what its roles measure. Units are in the names (``_hz``, ``_ps``,
``_ms``, ``_s``, ``_mw``, ``_c``, ``_deg``) or in the comment beside a field; rates are averages
over the interval since the previous record unless the name says ``_total`` (a counter since the
node started). The schema declares every field a role reports and every field the exporter
reads (tests/daemon/bus/test_telemetry_schema.py); :func:`unknown_fields` lists those it does not.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping
from typing import (
    Literal,
    NamedTuple,
    TypedDict,
    cast,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from qnode.daemon.quantum.estimators import PhysicalQber, clamp_qber, qber_telemetry

SCHEMA_VERSION = 1


class InstrumentHealth(TypedDict):
    kind: str
    state: str                  # offline | connecting | calibrating | ready | degraded
    errors_total: int


#: A link's type: K (create and keep, heralded) or M (measure directly).
LinkType = Literal["K", "M"]


class QberTelemetry(TypedDict, total=False):
    """The QBER per basis against the link's Bell state (K end with qubits: X, Y, Z, corrected
    for read-out errors; M counter: Z, X), all ratios in [0, 1] but ``_raw``.

    ``qber_<b>`` is the estimate clamped to its physical range [0, 1]; ``qber_<b>_raw`` the
    unclamped one (read-out correction can push it below 0; average this one over time);
    ``qber_<b>_ci_low``/``_ci_high`` the 95 % interval (Wilson, corrected, intersected with
    [0, 1]: :func:`~qnode.daemon.quantum.estimators.physical_qber`).
    """

    qber_z: float
    qber_z_raw: float
    qber_z_ci_low: float
    qber_z_ci_high: float
    qber_x: float
    qber_x_raw: float
    qber_x_ci_low: float
    qber_x_ci_high: float
    qber_y: float
    qber_y_raw: float
    qber_y_ci_low: float
    qber_y_ci_high: float


class LinkMemoryTelemetry(QberTelemetry, total=False):
    """A K end with qubits (:meth:`qnode.daemon.klink.memory.LinkMemory.telemetry`): binding
    and the test-pair estimate of the link's state (QBERs of X, Y and Z)."""

    qubits_bound: int           # qubits holding a pair of this link now
    qubits_free: int            # storage qubits a new pair may be bound into now
    qubits_taken: int           # storage qubits handed on with their pair (a swap, a path
    #                             pair, a purification round) and not back yet
    qubits_held: int            # ... of those, delivered or discarded pairs' qubits waiting
    #                             for their hold (an application's, a cut-off's guard) to end
    bound_total: int            # link pairs bound into a qubit here
    bind_failed_total: int      # binds the QDevice refused
    tests_total: int            # test pairs measured here
    tests_matched_total: int    # ... and matched with the peer's outcome
    tests_failed_total: int     # test pairs without an outcome (the QDevice batch failed)
    tests_skipped_total: int    # test pairs over a batch's limit, not measured
    tests_per_basis: list[int]  # matched test pairs per basis: X, Y, Z (since the last restart)
    estimate_restarts_total: int  # the estimate restarted: a segment of tests differed from
    #                               those before it (the link changed; absent until the first)
    fidelity_estimate: float    # of new pairs, from the test pairs or the prior (0..1)
    fidelity_source: str        # "tests" (the estimate) | "prior" ([memory].fidelity)
    dense_coding_bits: float    # 2 − H(λ) of the estimated state: bits per qubit sent in
    #                             superdense coding (> 1 only with entanglement to spare)
    fidelity_sigma: float       # standard error of fidelity_estimate (0..1)


class PurificationTelemetry(TypedDict, total=False):
    """Purification on a K end (:meth:`qnode.daemon.klink.purification.Purifier.telemetry`).
    Input pairs are link pairs; the ``purify_inputs_<fate>_total`` add up to the inputs whose
    fate is known (``purify_pairs_used_total`` minus those in rounds under way or stored)."""

    purify_role: str            # leader | follower (the node id that sorts first leads)
    purify_protocol: str        # [memory].purification, e.g. dejmps
    purify_schedule: str        # [memory].purification_schedule, e.g. pumping
    purify_rounds_total: int    # rounds completed (both ends' outcomes in)
    purify_kept_total: int      # ... whose outcomes agreed: the kept pair survived
    purify_expected_kept: float  # Σ of the completed rounds' predicted success probabilities
    purify_discarded_total: int  # purified pairs discarded (failed round, cut-off, surplus)
    purify_aborted_total: int   # rounds aborted (a pair or the peer's answer missing, device)
    purify_delivered_total: int  # purified pairs delivered to applications
    purify_refused_total: int   # CREATEs refused with ERR UNSUPP (no plan, or a follower)
    purify_pairs_used_total: int  # link pairs taken as inputs
    purify_inputs_delivered_total: int  # input pairs in delivered pairs
    purify_inputs_failed_total: int     # ... lost in failed rounds
    purify_inputs_expired_total: int    # ... in stored pairs past the cut-off
    purify_inputs_aborted_total: int    # ... in aborted rounds
    purify_pairs_held: int      # purified pairs stored now, not yet delivered
    purify_plan_rounds: int     # rounds per output pair in the latest plan
    purify_plan_fidelity: float  # fidelity the latest plan predicts for its outputs (0..1)
    purify_plan_pairs_per_output: float  # link pairs the latest plan expects per output
    purify_delivered_fidelity_mean: float  # of the last (up to 1000) pairs delivered (0..1)


class PolarisationTelemetry(TypedDict, total=False):
    """The polarisation compensator of an M counter with ``[analyzer].compensate``
    (:meth:`qnode.daemon.acquisition.polarisation_control.PolarisationController.telemetry`)."""

    polarisation_state: str     # referencing | locked | calibrating | unlocked
    calibrating: bool           # the compensator is being searched
    compensator_angle_deg: float  # the compensating waveplate's angle (degrees)
    visibility_reference: float  # visibility the controller keeps (measured when locked)
    visibility_window: float    # visibility of the controller's latest window
    recalibrations_total: int   # recalibrations that locked the compensator again
    recalibration_s: float      # the last recalibration: drop detected → locked (wall s)


class KeyTelemetry(TypedDict, total=False):
    """An M link that makes keys (:meth:`qnode.daemon.roles.key_link.KeyLink.telemetry`), at
    either end; the QBERs (``qber_z``/``qber_x``) are the exact error fractions of the latest
    block that gave a key."""

    key_state: str              # acquiring | sifting | producing | stopped
    key_stop_reason: str        # why the latest block gave no key ("" while producing)
    key_blocks_total: int       # blocks finished, with or without a key
    key_aborts_total: dict[str, int]  # blocks without a key, by reason
    key_secret_bits_total: int  # secret bits made
    key_units_total: int        # keys (key_size_bits each) stored
    key_units_waiting: int      # keys held until the other end confirms it stored its copies
    key_units_dropped_total: int  # ... dropped: the other end never confirmed
    key_sifted_bits_total: int  # sifted bits that went into blocks
    key_disclosed_bits_total: int  # bits disclosed by error correction and verification
    key_rate_bps: float         # secret bits per wall second since the last record
    key_f_ec: float             # error-correction efficiency of the latest keyed block
    key_secret_fraction: float  # secret bits per sifted bit of that block
    key_sample_qber_z: float    # error fraction of the latest block's sample, Z basis
    key_sample_qber_x: float    # ... X basis
    key_session_restarts_total: int  # sessions given up (no answer, a message that did not fit)
    key_messages_rejected_total: int  # key messages refused
    key_messages_dropped_total: int  # key messages dropped: the session was too far behind
    key_sifted_pending_bits: int  # sifted bits waiting for a block
    key_sifted_dropped_bits_total: int  # sifted bits dropped: blocks did not keep up


class LinkTelemetry(LinkMemoryTelemetry, PurificationTelemetry, PolarisationTelemetry,
                    KeyTelemetry, total=False):
    """One link end's figures, under ``links.<link id>``: the link layer's (both kinds), a K
    station's, an M counter's and, from the bases, a K end's memory and purification and an M
    counter's polarisation compensator."""

    type: LinkType
    peer: str                   # the peer node; a station: its two ends joined by "+"
    role: str                   # "end" (memory/analyzer end) | "station" (herald) | "counter"
    # link layer (both kinds)
    expected_seq: int           # the next sequence number this end expects (station: issues)
    heralds_total: int          # successes heralded (station) or accepted (end)
    herald_rate_hz: float
    pairs_live: int             # in the inventory, not yet delivered
    pairs_delivered_total: int
    pairs_expired_total: int
    expires_unacked: int        # EXPIREs sent and not yet acknowledged
    herald_latency_ms_p50: float  # end: receipt time − the chunk's publish time (wall clocks
    herald_latency_ms_p99: float  # of two hosts; implausible ones are left out and counted)
    herald_handling_ms_p50: float  # end: receipt → applied, before the burst's store (this node's
    herald_handling_ms_p99: float  # monotonic clock)
    herald_ts_implausible_total: int  # heralds whose envelope ts gave no plausible latency
    herald_age_s: float         # end: since the last herald batch (heartbeats included);
    #                             station: since the last batch it sent
    heralds_stale_total: int    # herald entries ignored: already accepted or skipped
    herald_batches_ignored_total: int  # batches of a station epoch this end left (or none)
    station_epoch: str          # the station epoch followed (end) or numbered under (station)
    epoch_agreed: bool          # end: False while it waits for the peer's EPOCH
    station_resets_total: int   # end: station epochs after the first (a restart that lost
    #                             its state)
    epoch_conflicts_total: int  # end: peer EPOCHs that placed the epoch elsewhere
    expires_stale_total: int    # end: EXPIREs ≥ 2^31 numbers old (e.g. a lap): nothing done
    expires_resent_total: int   # end: EXPIREs sent again for want of an ACK (with backoff)
    pairs_shed_total: int       # end: own pairs expired to merge unacknowledged EXPIRE ranges
    #                             (at most 32 are kept; the peer drops them too)
    send_overloaded_total: int  # end: link messages not sent: the bus's outgoing queue was full
    heartbeats_total: int       # station: empty batches sent on the timer (no chunk came)
    fidelity_estimate: float    # the goodness stamped on new pairs (0..1)
    fidelity_method: str        # M counter: "two_basis_bound" (1 − Q_Z − Q_X) | "werner"
    # herald station (K)
    psi_plus_total: int         # Bell-state measurement outcomes ψ+
    psi_minus_total: int        # ... and ψ−
    # measure-directly counting (M counter; the QBERs of Z and X are QberTelemetry's)
    coincidence_rate_hz: float  # per second of tag time
    accidental_rate_hz: float   # from the displaced window, per second of tag time
    car: float                  # coincidence-to-accidental ratio
    visibility: float           # mean over the bases of the signed correlation (0..1)
    chsh_s: float               # CHSH S, accidentals subtracted (local bound 2, Tsirelson 2√2)
    chsh_s_err: float           # its standard error
    chsh_s_raw: float           # CHSH S of the raw coincidences (accidentals kept)
    chsh_s_raw_err: float       # its standard error
    secret_fraction: float      # BBM92 asymptotic 1 − f·h(Q_Z) − h(Q_X), bits per sifted bit
    sifted_key_rate_hz: float   # matched-basis coincidences (Z–Z, X–X) per second of tag time
    offset_ps: float            # peer clock − own clock, from the alignment servo
    drift_ppb: float            # peer clock frequency relative to own, minus one (1e-9)
    tracker_state: str          # LOCKED | HOLDOVER | LOST | ACQUIRING
    remote_tags_rate_hz: float  # peer tags received over the network, per wall second
    unmatched_tags_total: int   # tags dropped because the other stream was not there (counter:
    #                             waited > 5 s; streamer: the broker backlog was full)


class PathTelemetry(TypedDict, total=False):
    """One end-to-end path, under ``paths.<path id>``: a repeater's
    (:meth:`qnode.daemon.klink.swapping.Swapper.telemetry`) or an end's
    (:meth:`qnode.daemon.klink.swapping.PathEnd.telemetry`)."""

    role: str                   # "repeater" | "end"
    # repeater
    ends: list[str]             # the path's two end nodes
    swaps_total: int            # Bell-state measurements done
    swaps_failed_total: int     # ... that failed on the QDevice
    bsm_outcomes: dict[str, int]  # Bell-state measurement outcome ("00".."11") -> count
    fidelity_estimate: float    # of the pair its latest swap joined, at the BSM (0..1)
    # end
    remote: str                 # the path's other end
    pairs_received_total: int   # end-to-end pairs assembled from the repeaters' swaps
    pairs_delivered_total: int  # ... delivered to applications
    pairs_discarded_total: int  # ... discarded at the cut-off before delivery
    chains_incomplete_total: int  # link pairs whose chain of swaps did not complete in time
    chains_waiting: int         # link pairs taken for a path, waiting for the rest of the chain
    swap_orphaned_total: int    # swap results for a link pair not held here (dropped)
    swap_reports_refused_total: int  # swap results not of this path's repeaters or links
    swap_reports_evicted_total: int  # reports dropped unassembled: the assembler was full
    send_overloaded_total: int  # replies not sent: the bus's outgoing queue was full
    pairs_held: int             # end-to-end pairs held, not yet delivered
    delivered_fidelity_mean: float  # of the last (up to 1000) pairs delivered (0..1)


class BusTelemetry(TypedDict, total=False):
    """The node's MQTT client (:meth:`qnode.daemon.bus.client.NodeBus.metrics`), under
    ``bus``. Counts are since the node started."""

    published: int              # envelopes built and accepted (queued or sent)
    acked: int                  # state-changing messages the broker acknowledged
    resent: int                 # sends of a message after its first attempt
    queued: int                 # state-changing messages published while disconnected
    pending: int                # state-changing messages not yet acknowledged (now)
    dropped_telemetry: int      # telemetry not sent because the node was disconnected
    received: int               # messages accepted and handed to a handler
    rejected: dict[str, int]    # incoming messages rejected, by reason
    handler_errors: int         # handlers that raised
    session_errors: int         # unexpected errors that ended a session (then reconnected)
    reconnects: int             # connections after the first
    disconnects: int            # connections lost or refused
    connected: bool
    disconnected_s: float       # since the connection was lost (0 while connected)
    inbound_queued: int         # received messages waiting for their handler (now)
    inbound_bytes: int          # ... and their size with overhead (bytes)
    dropped_incoming: dict[str, int]  # received messages dropped (queue full), by topic kind


class Histogram(TypedDict):
    bin_ps: int
    first_bin_ps: int           # left edge of bin 0, relative delay (ps)
    counts: list[int]


class LatencyHistogram(TypedDict):
    """Cumulative counts of seconds at or below each bucket's bound (as Prometheus keeps)."""

    buckets: dict[str, int]               # upper bound (s, as text) -> count
    count: int
    sum: float                            # s


class AppsTelemetry(TypedDict, total=False):
    """The application service (qnode.daemon.apps)."""

    requests_waiting: int                 # in this node's allocator queues (both ends' requests)
    requests_live: int                    # made here, not yet ended
    requests_awaiting_route: int          # made here for a node no pool serves yet: waiting for
    #                                       the routed path routing was asked for
    requests_routed_total: int            # requests that waited for a routed path (then served
    #                                       from it or refused)
    requests_total: dict[str, int]        # ended here, by outcome (done, error, expired, ...)
    requests_refused_total: dict[str, int]  # ERRORs by code
    pairs_delivered_total: dict[str, int]   # per application of this node
    listening: dict[str, str]             # purpose id -> application
    request_first_pair_seconds: LatencyHistogram   # request -> its first PAIR
    request_done_seconds: LatencyHistogram         # request -> DONE
    pairs_after_end_total: int            # pairs that came for a request already ended here
    pairs_unclaimed_total: int            # pairs for a purpose nobody listened on any more
    gives_failed_total: int               # GIVEs of pairs this end no longer held (or never got)
    peer_rejected_total: dict[str, int]   # service messages of other nodes refused, by reason
    replies_overloaded_total: int         # replies not sent: the bus's outgoing queue was full
    operations_total: dict[str, int]      # OPERATEs ended: "result", or the ERROR's code
    pairs_held: int                       # delivered pairs whose qubit is an application's now


class KmeTelemetry(TypedDict, total=False):
    """The node's KME (``[kme]``; docs/integrators/key-delivery.md), under ``kme``."""

    kme_id: str
    port: int                             # the HTTPS port it listens on (0 before it does)
    keys_added_total: int                 # keys post-processing put into the store
    keys_delivered_total: int             # keys handed to SAEs (enc_keys and dec_keys)
    keys_dropped_total: int               # keys refused: the store held max_key_count
    keys_refused_total: dict[str, int]    # takes the store refused, by reason
    requests_total: dict[str, int]        # requests served, by endpoint
    requests_rejected_total: dict[str, int]  # requests refused, by reason


class RouteTelemetry(TypedDict, total=False):
    """One destination's route (:class:`qnode.daemon.routing.graph.Route`), or why none."""

    nodes: list[str]            # this node first, the destination last
    links: list[str]            # links[k] joins nodes[k] and nodes[k + 1]
    fidelity: float             # predicted end-to-end fidelity (Werner links, ideal swaps; 0..1)
    rate_hz: float              # predicted rate: the slowest link's pairs bound per second
    candidates: int             # loop-free routes considered ([routing].k_routes at most)
    error: str                  # instead of the above: why no route meets [routing].min_fidelity


class RoutedPath(TypedDict, total=False):
    """One routed path through or ending at the node."""

    nodes: list[str]            # the installer first
    links: list[str]
    state: str                  # active | draining (removed; its pairs kept to their cut-off)
    installer: str


class Reroute(TypedDict, total=False):
    """The installer's last re-route of a path."""

    old: list[str]              # the broken path's nodes
    new: list[str]              # the new path's nodes
    reason: str                 # e.g. "link r1-r2 lost"
    at: float                   # Unix s
    evidence_age_s: float       # since an end first reported the lost link (s; null: unknown)
    switch_ms: float            # choosing and installing the new path here (ms)


class RoutedPathTelemetry(TypedDict, total=False):
    """Routed paths (:meth:`qnode.daemon.routing.paths.PathManager.telemetry`)."""

    installed_total: int        # paths installed here (as installer, repeater or far end)
    removed_total: int
    rerouted_total: int         # paths this node moved to another route (as installer)
    refused_total: dict[str, int]   # PATHs and waiting CREATEs refused, by reason
    creates_waiting: int        # CREATEs waiting for the other end's PATH
    paths: dict[str, RoutedPath]    # path id -> the path (32 at most)
    last_reroute: Reroute


class RoutingTelemetry(TypedDict, total=False):
    """A memory node's routing (:meth:`qnode.daemon.routing.service.RoutingService.telemetry`)."""

    nodes_known: int            # nodes whose advert is held (this one too)
    links_known: int            # links both ends advertise up or degraded
    adverts_sent_total: int
    adverts_overloaded_total: int           # not sent: the bus's outgoing queue was full
    adverts_refused_total: dict[str, int]   # by reason: unsigned, bad_body, future, ...
    route_changes_total: int    # changes of any destination's chosen route
    routes: dict[str, RouteTelemetry]       # destination -> its route (the nearest 32)
    routed: RoutedPathTelemetry             # the routed paths through or ending here


class Telemetry(TypedDict, total=False):
    v: int                      # SCHEMA_VERSION
    node: str
    roles: list[str]
    t: float                    # wall clock (s since the epoch) when built
    uptime_s: float
    state: str                  # starting | ready | degraded | stopping
    instruments: dict[str, InstrumentHealth]
    singles_hz: dict[str, float]          # channel -> rate
    ingest_mtags_s: float                 # time tags ingested per wall second, in millions
    tags_total: int
    dropped_chunks_total: int             # tag chunks dropped: the pipeline was full
    dropped_tags_total: int               # time tags dropped with them
    links: dict[str, LinkTelemetry]
    g2: Histogram                         # the cross-node start-stop histogram (M counter)
    memory_used: int                      # pairs held by the link layer
    memory_capacity: int                  # pairs the link layer may hold ([memory].capacity)
    memory_qubits: int                    # qubits of the node's quantum memories (QDevices)
    memory_qubits_free: int
    # source role: the read-backs, and with a fidelity model (FEU) its predictions
    source_brightness_hz: float           # pair rate reached at the set point (exported and
    #                                       shown by `qnode status`; no current role measures it)
    source_temperature_c: float           # crystal oven, read back (°C)
    source_pump_power_mw: float           # pump power, read back
    source_pump_set_point_mw: float       # the configured one, or the FEU's for the last CREATE
    source_feu_power_mw: float            # pump power the FEU chose for the last CREATE
    source_feu_fidelity: float            # fidelity the FEU predicts at the set point (0..1)
    source_feu_rate_hz: float             # coincidence rate it predicts at the set point
    source_feu_max_fidelity: float        # the best within the pump's limits (0..1)
    source_creates_total: int             # CREATEs the source handled
    source_creates_unsupp_total: int      # ... refused with ERR UNSUPP
    role_restarts_total: int
    paths: dict[str, PathTelemetry]       # [[paths]]: the repeater's swaps, an end's pairs
    link_rejected: dict[str, int]         # link-layer messages refused after the envelope
    kme: KmeTelemetry                     # the node's key delivery ([kme])
    #                                       checks, by reason (bad_herald, bad_body, ...)
    bus: BusTelemetry
    apps: AppsTelemetry
    routing: RoutingTelemetry             # memory nodes: adverts and routes ([routing])


#: The envelope ``type`` of a telemetry message (docs/integrators/mqtt-contract.md).
TELEMETRY_TYPE = "telemetry"
#: The states a node reports in ``Telemetry.state``, and an instrument in ``InstrumentHealth``.
NODE_STATES = ("starting", "ready", "degraded", "stopping")
INSTRUMENT_STATES = ("offline", "connecting", "calibrating", "ready", "degraded")
TRACKER_STATES = ("LOCKED", "HOLDOVER", "LOST", "ACQUIRING")
#: An M link's polarisation compensator (:mod:`qnode.daemon.acquisition.polarisation_control`).
POLARISATION_STATES = ("referencing", "locked", "calibrating", "unlocked")
#: An M link that makes keys (:mod:`qnode.daemon.roles.key_link`).
KEY_STATES = ("acquiring", "sifting", "producing", "stopped")
_REQUIRED = ("node", "roles", "t", "uptime_s")


#: The bases whose QBER a link may report, as they appear in field names (``qber_<b>``).
QBER_BASES = ("z", "x", "y")


class QberFigures(NamedTuple):
    """One basis' QBER as shown and exported: ``value`` inside [0, 1], ``raw`` unclamped,
    ``low``/``high`` the interval; None when not reported, NaN when reported as NaN."""

    value: float | None
    raw: float | None
    low: float | None
    high: float | None


def _real(x: object) -> float | None:
    """``x`` as a float (NaN kept: "not measurable"), or None if it is not a number."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return None
    return float(x)


def _in_range(x: float | None) -> float | None:
    return None if x is None else clamp_qber(x)


def link_qber(lt: Mapping[str, object], basis: str) -> QberFigures:
    """The QBER of ``basis`` ("z", "x", "y") of a link's telemetry, for display and export.

    A current node reports ``qber_<b>`` already clamped to [0, 1] beside ``qber_<b>_raw``. A
    record without ``qber_<b>_raw`` (an older node, or a producer that does not clamp yet) is
    read as unclamped: ``raw`` is its ``qber_<b>`` and ``value`` that clamped to [0, 1], so a
    consumer never shows a QBER outside its physical range. The interval bounds are clipped to
    [0, 1] likewise.
    """
    b = basis.lower()
    given, raw = _real(lt.get(f"qber_{b}")), _real(lt.get(f"qber_{b}_raw"))
    return QberFigures(_in_range(given), given if raw is None else raw,
                       _in_range(_real(lt.get(f"qber_{b}_ci_low"))),
                       _in_range(_real(lt.get(f"qber_{b}_ci_high"))))


def qber_fields(basis: str, q: PhysicalQber) -> QberTelemetry:
    """The four QBER fields of ``basis`` ("z", "x" or "y", any case) for a link's record:
    :func:`~qnode.daemon.quantum.estimators.qber_telemetry` as :class:`QberTelemetry`."""
    # its keys are built from the basis name, which a TypedDict cannot follow
    return cast("QberTelemetry", qber_telemetry(basis, q))


def unknown_fields(record: Mapping[str, object]) -> list[str]:
    """The fields of a telemetry record that the schema does not declare, as sorted dotted
    paths (``links.<id>.<field>``, ``paths.<id>.<field>``, ``bus.<field>``, ...); [] when the
    schema names them all. :func:`validate` accepts such fields (a newer node's records); the
    tests use this to keep the schema complete."""
    return sorted(_unknown(record, Telemetry, ""))


def _unknown(record: Mapping[str, object], cls: type, where: str) -> Iterator[str]:
    hints = get_type_hints(cls)
    for key, value in record.items():
        name = f"{where}.{key}" if where else str(key)
        hint = hints.get(key)
        if hint is None:
            yield name
        elif is_typeddict(hint) and isinstance(value, Mapping):
            yield from _unknown(value, hint, name)
        elif get_origin(hint) is dict and isinstance(value, Mapping) \
                and is_typeddict(get_args(hint)[1]):
            for k, item in value.items():
                if isinstance(item, Mapping):
                    yield from _unknown(item, get_args(hint)[1], f"{name}.{k}")


def _check(value: object, hint: object, where: str) -> None:
    """Raise ValueError if ``value`` does not fit the type ``hint`` (the subset used above)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is int or hint is str:
        ok = isinstance(value, hint) and not isinstance(value, bool)
    elif hint is object:
        ok = True
    elif origin is Literal:
        ok = value in args
    elif origin is list:
        ok = isinstance(value, list)
        if isinstance(value, list):
            for i, item in enumerate(value):
                _check(item, args[0], f"{where}[{i}]")
    elif origin is dict:
        ok = isinstance(value, dict)
        if isinstance(value, dict):
            for key, item in value.items():
                _check(key, args[0], f"{where} key {key!r}")
                _check(item, args[1], f"{where}[{key!r}]")
    elif isinstance(hint, type) and issubclass(hint, dict):  # a TypedDict
        ok = isinstance(value, dict)
        if isinstance(value, dict):
            _check_fields(value, hint, where)
    else:  # pragma: no cover - a hint this checker does not know: accept
        ok = True
    if not ok:
        raise ValueError(f"telemetry field {where}: expected {_name(hint)}, got "
                         f"{type(value).__name__} {value!r:.60}")


def _name(hint: object) -> str:
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check_fields(record: dict[str, object], cls: type, where: str) -> None:
    hints = get_type_hints(cls)
    for key in getattr(cls, "__required_keys__", ()):
        if key not in record:
            raise ValueError(f"telemetry field {where}.{key}: missing")
    for key, value in record.items():
        if key in hints and value is not None:  # None: "not measured", same as absent
            _check(value, hints[key], f"{where}.{key}" if where else key)


def validate(obj: object) -> Telemetry:
    """``obj`` if it is a telemetry record, else ValueError naming the first bad field.

    Required: ``node``, ``roles``, ``t``, ``uptime_s``. Known fields must have their declared
    types (``float`` fields accept ints; ``None`` counts as absent); unknown fields are allowed,
    so a newer node's records still pass. Floats may be NaN (not measurable this interval).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"a telemetry record is a JSON object, got {type(obj).__name__}")
    for key in _REQUIRED:
        if obj.get(key) is None:
            raise ValueError(f"telemetry field {key}: missing")
    _check_fields(obj, Telemetry, "")
    return cast("Telemetry", obj)
