"""The node's telemetry record: what it publishes on ``telemetry`` and exports to Prometheus.

One JSON object per ``metrics.telemetry_interval_s`` (DESIGN §7), built by the node from its
counters; :mod:`qnode.daemon.tools.metrics` exports the latest one on the Prometheus endpoint,
``qnode status`` and the demo's live view print it, and the demo's report plots a run's records.
Every field is optional except ``node``, ``roles``, ``t`` and ``uptime_s``: a node reports what its
roles measure. Units are in the names (``_hz``, ``_ps``, ``_ms``, ``_s``); rates are averages
over the interval since the previous record unless the name says ``_total``.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Literal, NamedTuple, TypedDict, get_args, get_origin, get_type_hints

from qnode.daemon.quantum.estimators import clamp_qber

SCHEMA_VERSION = 1


class InstrumentHealth(TypedDict):
    kind: str
    state: str                  # offline | connecting | calibrating | ready | degraded
    errors_total: int


class LinkTelemetry(TypedDict, total=False):
    type: Literal["K", "M"]
    peer: str
    role: str                   # "end" (memory/analyzer end) | "station" (herald) | "counter"
    # link layer (both kinds)
    expected_seq: int
    heralds_total: int          # successes heralded (station) or accepted (end)
    herald_rate_hz: float
    pairs_live: int             # in the inventory, not yet delivered
    pairs_delivered_total: int
    pairs_expired_total: int
    expires_unacked: int
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
    fidelity_estimate: float    # the goodness stamped on new pairs
    fidelity_method: str        # M counter: "two_basis_bound" (1 − Q_Z − Q_X) | "werner"
    # K end with qubits (qnode.daemon.klink.memory): binding and the test-pair estimate
    qubits_bound: int           # pairs of this link held in qubits now
    bound_total: int
    bind_failed_total: int
    tests_total: int            # test pairs measured here
    tests_matched_total: int    # ... and matched with the peer's outcome
    tests_failed_total: int
    tests_skipped_total: int    # test pairs over a batch's limit, not measured
    tests_per_basis: list[int]  # matched, X, Y, Z
    fidelity_source: str        # "tests" (the estimate) | "prior" ([memory].fidelity)
    fidelity_sigma: float
    # QBER per basis against the link's Bell state (K end with qubits: X, Y, Z, corrected for
    # read-out errors; M counter: Z, X). ``qber_<b>`` is the estimate clamped to its physical
    # range [0, 1]; ``qber_<b>_raw`` the unclamped one (read-out correction can push it below 0;
    # average this one over time); ``qber_<b>_ci_low``/``_ci_high`` the 95 % interval (Wilson,
    # corrected, intersected with [0, 1]: estimators.physical_qber)
    qber_y: float
    qber_y_raw: float
    qber_y_ci_low: float
    qber_y_ci_high: float
    # herald station (K)
    psi_plus_total: int
    psi_minus_total: int
    # measure-directly counting (M)
    coincidence_rate_hz: float
    accidental_rate_hz: float
    car: float
    qber_z: float               # clamped to [0, 1]; see qber_y above for the four fields
    qber_z_raw: float
    qber_z_ci_low: float
    qber_z_ci_high: float
    qber_x: float
    qber_x_raw: float
    qber_x_ci_low: float
    qber_x_ci_high: float
    visibility: float
    chsh_s: float
    chsh_s_err: float
    secret_fraction: float      # BBM92 asymptotic 1 − f·h(Q_Z) − h(Q_X), bits per sifted bit
    sifted_key_rate_hz: float   # matched-basis coincidences (Z–Z, X–X) per second of tag time
    offset_ps: float            # peer clock − own clock, from the alignment servo
    drift_ppb: float
    tracker_state: str          # LOCKED | HOLDOVER | LOST | ACQUIRING
    # polarisation compensation (M counter with [analyzer].compensate; polarisation_control)
    polarisation_state: str     # referencing | locked | calibrating | unlocked
    calibrating: bool           # the compensator is being searched
    compensator_angle_deg: float
    visibility_reference: float  # visibility the controller keeps (measured when locked)
    visibility_window: float    # visibility of the controller's latest window
    recalibrations_total: int
    recalibration_s: float      # the last recalibration: drop detected → locked (wall s)
    remote_tags_rate_hz: float  # peer tags received over the network
    unmatched_tags_total: int   # tags dropped because the other stream was not there (counter:
    #                             waited > 5 s; streamer: the broker backlog was full)


class Histogram(TypedDict):
    bin_ps: int
    first_bin_ps: int           # left edge of bin 0, relative delay (ps)
    counts: list[int]


class Telemetry(TypedDict, total=False):
    v: int                      # SCHEMA_VERSION
    node: str
    roles: list[str]
    t: float                    # wall clock (s since the epoch) when built
    uptime_s: float
    state: str                  # starting | ready | degraded | stopping
    instruments: dict[str, InstrumentHealth]
    singles_hz: dict[str, float]          # channel -> rate
    ingest_mtags_s: float
    tags_total: int
    dropped_chunks_total: int
    dropped_tags_total: int
    links: dict[str, LinkTelemetry]
    g2: Histogram                         # the cross-node start-stop histogram (M counter)
    memory_used: int                      # pairs held by the link layer
    memory_capacity: int                  # pairs the link layer may hold ([memory].capacity)
    memory_qubits: int                    # qubits of the node's quantum memories (QDevices)
    memory_qubits_free: int
    source_brightness_hz: float           # source role: pair rate set point reached
    source_temperature_c: float
    source_pump_power_mw: float
    role_restarts_total: int
    paths: dict[str, dict[str, object]]   # [[paths]]: the repeater's swaps, an end's pairs
    link_rejected: dict[str, int]         # link-layer messages refused after the envelope
    #                                       checks, by reason (bad_herald, bad_body, ...)
    bus: dict[str, object]                # NodeBus.metrics()


#: The envelope ``type`` of a telemetry message (DESIGN §5).
TELEMETRY_TYPE = "telemetry"
#: The states a node reports in ``Telemetry.state``, and an instrument in ``InstrumentHealth``.
NODE_STATES = ("starting", "ready", "degraded", "stopping")
INSTRUMENT_STATES = ("offline", "connecting", "calibrating", "ready", "degraded")
TRACKER_STATES = ("LOCKED", "HOLDOVER", "LOST", "ACQUIRING")
#: An M link's polarisation compensator (:mod:`qnode.daemon.acquisition.polarisation_control`).
POLARISATION_STATES = ("referencing", "locked", "calibrating", "unlocked")
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


def _check(value: object, hint: object, where: str) -> None:
    """Raise ValueError if ``value`` does not fit the type ``hint`` (the subset used above)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint in (int, str):
        ok = isinstance(value, hint) and not isinstance(value, bool)  # type: ignore[arg-type]
    elif hint is object:
        ok = True
    elif origin is Literal:
        ok = value in args
    elif origin is list:
        ok = isinstance(value, list)
        if ok:
            for i, item in enumerate(value):  # type: ignore[arg-type]
                _check(item, args[0], f"{where}[{i}]")
    elif origin is dict:
        ok = isinstance(value, dict)
        if ok:
            for key, item in value.items():  # type: ignore[union-attr]
                _check(key, args[0], f"{where} key {key!r}")
                _check(item, args[1], f"{where}[{key!r}]")
    elif isinstance(hint, type) and issubclass(hint, dict):  # a TypedDict
        ok = isinstance(value, dict)
        if ok:
            _check_fields(value, hint, where)  # type: ignore[arg-type]
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
    return obj  # type: ignore[return-value]
