"""A node's configuration: one TOML file per node, validated completely at start.

Every problem is a :class:`ConfigError` naming the file, the key (``instruments.hwp.kind``) and what
is wrong, so a lab host finds a typo before the daemon touches an instrument. Example:
``systemd/alice.example.toml``. Layout::

    [node]
    id = "alice"                  # letters, digits, - and _: it appears in MQTT topics
    network = "lab"               # topics live under qnet/v1/<network>/<id>/
    roles = ["analyzer"]          # source | analyzer | herald | memory | repeater
    state_dir = "/var/lib/qnode/alice"   # optional: $STATE_DIRECTORY (systemd) or ./state;
                                         #   a directory this user can write (made 0700)
    identity_key_file = "/etc/qnode/identity/alice.key"  # the node's Ed25519 key (qnode
                                  #   keygen): signs status, telemetry and, at a station, heralds
    trust_dir = "/etc/qnode/identity"   # <node>.pub of every node; needed with K links (the
                                  #   ends verify their station's heralds)

    [broker]
    url = "mqtts://broker.lab:8883"      # mqtt:// (1883) or mqtts:// (8883, TLS)
    ca_file = "/etc/qnode/ca.crt"        # mqtts: the CA, and the node's client certificate
    client_cert = "/etc/qnode/alice.crt"
    client_key = "/etc/qnode/alice.key"
    keepalive_s = 30
    max_offline_s = 300                  # withhold the watchdog after this long unheard (0: never)

    [instruments.tagger]          # the table's name is the instrument's name
    kind = "id900"                # see INSTRUMENT_KINDS
    address = "10.0.0.5"
    timeout_s = 1.0
    stall_s = 5.0                 # a tagger: no tag for this long = stalled (degraded, counted,
                                  #   reconnected, stream restarted); 0: never
    [instruments.tagger.options]  # passed to the driver

    [[links]]
    id = "alice-bob"              # used in topics: herald/<link>
    peer = "bob"
    type = "M"                    # M (measure directly) | K (create and keep)
    herald = "station"            # K only: the midpoint station node
    hmac_key_file = "/etc/qnode/links/alice-bob.key"   # signs protocol messages on this link
                                  #   (required for K; mode 0600, one key of >= 16 bytes per
                                  #   line, 2 during a rotation: qnode.daemon.bus.keys)

    [herald]                      # role herald: the midpoint station of one K-type link
    tagger = "tagger"             # the instrument (a tagger kind) behind the BSM
    link = "alice-repeater"       # the link it heralds (same id in both ends' [[links]])
    ends = ["alice", "repeater"]  # the two memory nodes
    channels = [1, 2, 3, 4]       # detectors c-H, c-V, d-H, d-V (BS outputs c, d behind PBSs)
    window_ps = 1000              # the two clicks of one success lie within this
    hmac_key_file = "/etc/qnode/links/alice-repeater.key"   # required: signs the heralds

    [memory]                      # roles memory / repeater: the store of heralded pairs
    capacity = 1000               # live pairs per link; the oldest are expired beyond (0: no limit)
    max_pair_age_s = 1.0          # cut-off: pairs older than this are expired (0: never)
    fidelity = 0.9                # fidelity of a freshly heralded pair (the station's calibration)
    t1_s = 0.0                    # memory T1, T2 (s): OKs carry the fidelity aged to delivery
    t2_s = 0.0                    #   (Pauli-channel model, qnode.daemon.quantum.bell_diagonal;
                                  #   0: none)
    restart_policy = "resume"     # after a restart: keep the stored pairs, or "expire_all"
    qdevice = "qmem"              # bind pairs to this QDevice's qubits (qnode.daemon.klink.memory);
                                  #   without it the pairs are the link layer's alone
    qubits_per_link = 2           # storage qubits per K link (+ 1 test qubit per link)
    test_fraction = 0.1           # pairs measured as test pairs for the fidelity estimate
    min_tests = 200               # test pairs per basis before the estimate replaces `fidelity`
    readout_error = 0.005         # the QDevice's calibrated read-out error
    gate_depolarising_2q = 0.999  # its CNOT's depolarising parameter g, not a fidelity: the gate
                                  #   acts as ρ → g·UρU† + (1 − g)·I/4 (swap and purification
                                  #   estimates); or give gate_average_fidelity_2q instead
    gate_depolarising_1q = 0.999  # g of its single-qubit rotations, ρ → g·UρU† + (1 − g)·I/2;
                                  #   or gate_average_fidelity_1q
    delivered_hold_s = 0.1        # a delivered pair's qubit is the application's this long
    purification = "dejmps"       # a CREATE above the link's fidelity is purified: "dejmps",
    purification_schedule = "pumping"  # "bbpssw" or "off"; "pumping" or "recurrence"
    purification_max_rounds = 4   #   (qnode.daemon.klink.purification); more rounds: ERR UNSUPP

    [[paths]]                     # end-to-end pairs alice-bob through the repeaters' swaps
    id = "alice-bob"              #   (the same table on the ends and every repeater)
    nodes = ["alice", "r1", "r2", "bob"]   # the ends first and last, the repeaters in order
    links = ["alice-r1", "r1-r2", "r2-bob"]   # links[k] joins nodes[k] and nodes[k + 1]

    [routing]                     # memory nodes with an identity key: topology adverts and routes
                                  #   (qnode.daemon.routing)
    advert_interval_s = 2.0       # how often the node advertises its links' measured state (s)
    advert_ttl_s = 6.0            # receivers forget an advert this long after it was made (s): a
                                  #   node that stops advertising leaves the graph then
    k_routes = 3                  # candidate routes computed per destination
    min_fidelity = 0.5            # the fidelity the routes shown in telemetry must predict
    paths_to = ["bob"]            # keep a routed path to these nodes from the start (without
                                  #   it, a path is routed at the first CREATE for a far node)

    [[quantum_channels]]          # a one-way channel between two nodes' QDevices (the same
                                  #   table on both): applications send qubits over it
    id = "qc-alice-repeater"      # the QDevices' EMIT/ABSORB name the channel by it
    from = "alice"                # the node whose QDevice sends (OPERATE's send gate)
    to = "repeater"               # the node whose QDevice receives (OPERATE's receive gate)

    [analyzer]                    # role analyzer (M-type links)
    tagger = "tagger"
    channels = [1, 2]             # one basis: the detectors of outcome 0 and outcome 1; or
                                  #   [b0_out0, b0_out1, b1_out0, b1_out1]: passive two-basis
                                  #   choice (50:50 BS, a PBS per basis, basis 1 behind a HWP)
    bases = ["Z", "X"]            # optional labels per basis ("Z" | "X"; name the QBERs)
    angles_deg = [0.0, 22.5]      # optional HWP angle per basis (deg; default Z 0, X 22.5)
    source_state = "phi+"         # the ideal pair state the QBERs count errors against
    window_ps = 500               # cross-node coincidence window, both edges inclusive
    waveplate = "hwp"             # optional: the (last) basis' half-wave plate
    angle_deg = 0.0               # one basis only: its HWP angle (= angles_deg = [0.0])
    align_s = 1.0                 # tags used to find the peer's clock offset at start
    capacity = 20000              # delivered-pair inventory of the link, as [memory] (0: no limit)
    max_pair_age_s = 1.0
    compensator = "comp"          # optional: the polarisation compensator's ELL14 (a HWP after
                                  #   a fixed HWP: a rotator;
                                  #   qnode.daemon.acquisition.polarisation_control)
    compensator_angle_deg = 0.0   # its angle at start (deg)
    compensate = false            # run the controller (only the link's counter does: the end whose
                                  #   id sorts first; needs compensator)
    compensate_threshold = 0.03   # relative visibility drop that starts a recalibration
    compensate_tolerance = 0.01   # done when V ≥ (1 − tolerance)·V_reference
    compensate_window_s = 1.0     # tag time per monitoring window (s)
    compensate_scan_points = 6    # coarse scan: points over one period (90° of the plate)
    compensate_fine_step_deg = 3.0  # fine step: the maximum ± this (deg)
    compensate_settle_s = 0.3     # tag time skipped after each move (s)
    compensate_max_attempts = 3   # searches per recalibration before reporting "unlocked"
    compensate_retry_s = 30.0     # wait before trying again after an unlocked result (s)
    compensate_at_start = false   # search before taking the reference visibility

    [source]                      # role source: an SPDC source at its working point
    pump = "pump"                 # ibeam or itc4001
    oven = "oven"                 # tc200
    pump_power_mw = 40.0          # ibeam: mW; itc4001: the set current in mA
    oven_temperature_c = 35.0
    link = "m-ab"                 # optional: the M link whose CREATEs (on cmd) it serves by
                                  #   choosing the pump power (qnode.daemon.quantum.feu); then the
                                  #   model's keys below are required (window_ps as [analyzer])
    ends = ["analyzer-a", "analyzer-b"]  # optional: the link's analyzers (CREATE remote_node)
    hmac_key_file = "/etc/qnode/links/m-ab.key"  # optional: CREATEs must be signed with it
    brightness_hz_per_mw = 2500.0 # pairs/s per mW of pump at the working temperature
    efficiency = [0.3, 0.3]       # per side (ends order), detection incl. fibre (Klyshko)
    dark_count_rate_hz = [400.0, 400.0]  # per side, summed over its detectors (pump off)
    window_ps = 500               # the analyzers' half-window w: τ = 2w + 1 ps
    visibility = 0.95             # the pairs' Werner visibility without accidentals
    min_pump_mw = 0.0             # the powers the FEU may choose from
    max_pump_mw = 200.0

    [service]                     # the application service (qnode.daemon.apps), with one or more
                                  #   [applications.<name>] tables
    max_waiting = 10000           # requests waiting per pool, of all applications
    max_per_application = 1000    # requests waiting per pool, of one application
    listeners_every_s = 5.0       # how often the purposes listened on are told to link peers (s)

    [applications.keyapp]         # an application this node serves: its broker user name (not a
                                  #   node id)
    weight = 1.0                  # its share of pairs against the other applications (> 0)
    purposes = [7]                # the purpose ids it may LISTEN on (receive the far end's pairs)

    [thresholds]                  # when the node reports itself degraded
    max_qber = 0.11
    min_visibility = 0.9
    min_car = 2.5

    [metrics]
    prometheus_port = 9108        # 0: no Prometheus endpoint
    telemetry_interval_s = 5.0
"""
from __future__ import annotations

import dataclasses
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from qnode.daemon.bus.keys import KeyFileError, read_key_file
from qnode.daemon.linklayer.messages import MAX_HOPS
from qnode.daemon.qkd.block import KeyParams
from qnode.daemon.quantum.bell_states import BELL_STATES
from qnode.daemon.quantum.estimators import full_window_ps
from qnode.daemon.quantum.feu import FidelityEstimationUnit
from qnode.daemon.runtime.kme_config import KmeConfig
from qnode.drivers.kinds import KINDS, kinds_for
from qnode.drivers.qdevice_noise import (
    KEYS as GATE_NOISE_KEYS,
    depolarising_parameter,
    given_key,
    min_average_fidelity,
)

ROLES = ("source", "analyzer", "herald", "memory", "repeater")
LINK_TYPES = ("M", "K")

#: instrument kind -> (what its address is, the class that serves it), from the registry of
#: instrument kinds (qnode.drivers.kinds)
INSTRUMENT_KINDS: dict[str, tuple[str, str]] = {
    name: (kind.address, kind.implementation) for name, kind in KINDS.items()}
TAGGER_KINDS = kinds_for("tagger")
PUMP_KINDS = kinds_for("pump")
OVEN_KINDS = kinds_for("oven")
WAVEPLATE_KINDS = kinds_for("waveplate")
MEMORY_KINDS = kinds_for("memory")

#: what each role needs among its instruments (kinds, any one of them)
ROLE_NEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "analyzer": (TAGGER_KINDS,),
    "herald": (TAGGER_KINDS,),
    "source": (PUMP_KINDS, OVEN_KINDS),
}

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # no '/', '+', '#': safe inside MQTT topics


class ConfigError(ValueError):
    """A node config is invalid. ``key`` is the dotted path of the offending key."""

    def __init__(self, path: str, key: str, problem: str):
        super().__init__(f"{path}: {key}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
    url: str
    host: str
    port: int
    tls: bool
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    keepalive_s: float = 30.0
    #: the systemd watchdog is withheld once the broker has been unreachable this long (s; 0:
    #: never), so systemd restarts a node that cannot hear its peers
    max_offline_s: float = 300.0


@dataclasses.dataclass(frozen=True)
class InstrumentConfig:
    name: str
    kind: str
    address: str
    timeout_s: float = 1.0
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: a time tagger's stream is stalled after this long (s) without a tag (0: never)
    stall_s: float = 5.0


@dataclasses.dataclass(frozen=True)
class LinkConfig:
    id: str
    peer: str
    type: str
    herald: str | None = None
    hmac_key_file: Path | None = None


@dataclasses.dataclass(frozen=True)
class Thresholds:
    max_qber: float = 0.11
    min_visibility: float = 0.9
    min_car: float = 2.5


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    prometheus_port: int = 9108
    telemetry_interval_s: float = 5.0


@dataclasses.dataclass(frozen=True)
class RoutingConfig:
    """``[routing]``: topology adverts and routes (:mod:`qnode.daemon.routing`); s, and the
    fidelity (0..1) a route shown in telemetry must predict."""

    advert_interval_s: float = 2.0
    advert_ttl_s: float = 6.0
    k_routes: int = 3
    min_fidelity: float = 0.5
    #: nodes this one keeps a routed path to from the start (qnode.daemon.routing.paths)
    paths_to: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ApplicationConfig:
    """``[applications.<name>]``: a program this node serves."""

    name: str
    weight: float = 1.0              # its share of pairs against the others (> 0)
    purposes: tuple[int, ...] = ()   # purpose ids it may LISTEN on


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """``[service]`` and ``[applications]``: the application service (qnode.daemon.apps)."""

    applications: Mapping[str, ApplicationConfig]
    max_waiting: int = 10_000
    max_per_application: int = 1000
    listeners_every_s: float = 5.0


@dataclasses.dataclass(frozen=True)
class HeraldRoleConfig:
    """The midpoint station of K-type link ``link`` between ``ends``."""

    tagger: str
    link: str
    ends: tuple[str, str]
    channels: tuple[int, int, int, int] = (1, 2, 3, 4)
    window_ps: int = 1000
    hmac_key_file: Path | None = None


RESTART_POLICIES = ("resume", "expire_all")


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """``[memory]``. Without ``qdevice`` the pairs are virtual (the link layer alone). With it,
    pairs are bound to that QDevice's qubits (:mod:`qnode.daemon.klink.memory`): per K link
    ``qubits_per_link`` storage qubits and one test qubit; ``test_fraction`` of the pairs are
    measured as test pairs for the fidelity estimate (``fidelity`` is its prior until
    ``min_tests`` pairs per basis are in); ``readout_error`` is the device's calibrated
    read-out error; a delivered pair's qubit is the application's for at least
    ``delivered_hold_s`` (s) before it is reused (an end-to-end pair's until its cut-off,
    :mod:`qnode.daemon.klink.swapping`). ``purification`` (``dejmps``, ``bbpssw`` or ``off``),
    ``purification_schedule`` (``pumping`` or ``recurrence``) and ``purification_max_rounds``:
    how a K link serves a CREATE whose minimum fidelity is above the link's
    (:mod:`qnode.daemon.klink.purification`).

    Gate noise (swap and purification estimates): ``gate_fidelity_2q`` and ``gate_fidelity_1q``
    hold the **depolarising parameter g** of the device's CNOT and of its single-qubit
    rotations, not a fidelity: a k-qubit gate U acts as ρ → g·UρU† + (1 − g)·I/2^k on its
    qubits. The file gives g (``gate_depolarising_2q``, ``gate_depolarising_1q``; the earlier
    names ``gate_fidelity_2q``, ``gate_fidelity_1q`` are read as g too) or the average gate
    fidelity F_avg that randomised benchmarking reports (``gate_average_fidelity_2q``,
    ``gate_average_fidelity_1q``), at most one key per gate. F_avg = (d·F_e + 1)/(d + 1)
    with the entanglement fidelity F_e = g + (1 − g)/d², d = 2^k, so two qubits:
    1 − F_avg = 3/4·(1 − g), one qubit: 1 − F_avg = 1/2·(1 − g)
    (:mod:`qnode.drivers.qdevice_noise` derives it)."""

    capacity: int = 1000
    max_pair_age_s: float = 1.0
    fidelity: float = 0.9
    restart_policy: str = "resume"
    t1_s: float = 0.0
    t2_s: float = 0.0
    qdevice: str | None = None
    qubits_per_link: int = 2
    test_fraction: float = 0.1
    min_tests: int = 200
    readout_error: float = 0.0
    #: g of the QDevice's CNOT (not a fidelity); as a key, the earlier name of gate_depolarising_2q
    gate_fidelity_2q: float = 1.0
    delivered_hold_s: float = 0.1
    #: g of its single-qubit rotations; as a key, the earlier name of gate_depolarising_1q
    gate_fidelity_1q: float = 1.0
    purification: str = "dejmps"
    purification_schedule: str = "pumping"
    purification_max_rounds: int = 4


@dataclasses.dataclass(frozen=True)
class PathConfig:
    """``[[paths]]``: an end-to-end pair service along ``nodes`` (the two ends first and last,
    the repeaters between them, in order), whose consecutive nodes are joined by the K links
    ``links`` (``links[k]`` between ``nodes[k]`` and ``nodes[k + 1]``). The file names either
    ``nodes`` or, for one repeater, ``ends`` and ``repeater``."""

    id: str
    nodes: tuple[str, ...]
    links: tuple[str, ...]

    @property
    def ends(self) -> tuple[str, str]:
        return self.nodes[0], self.nodes[-1]

    @property
    def repeaters(self) -> tuple[str, ...]:
        return self.nodes[1:-1]


@dataclasses.dataclass(frozen=True)
class QuantumChannelConfig:
    """``[[quantum_channels]]``: the one-way quantum channel ``id`` from node ``source``'s
    QDevice to node ``target``'s (the file's ``from`` and ``to``)."""

    id: str
    source: str
    target: str


@dataclasses.dataclass(frozen=True)
class CompensationConfig:
    """``[analyzer].compensator`` and ``compensate*``: the polarisation compensator of an
    analyzer end and its controller (:mod:`qnode.daemon.acquisition.polarisation_control`).
    Angles in deg, times in s, ``threshold``/``tolerance`` relative to the reference visibility."""

    compensator: str
    enabled: bool = False
    start_angle_deg: float = 0.0
    threshold: float = 0.03
    tolerance: float = 0.01
    window_s: float = 1.0
    scan_points: int = 6
    fine_step_deg: float = 3.0
    settle_s: float = 0.3
    max_attempts: int = 3
    retry_s: float = 30.0
    at_start: bool = False


@dataclasses.dataclass(frozen=True)
class AnalyzerConfig:
    """``[analyzer]``: one analyzer end of an M-type link.

    ``channels`` holds 2 (one basis) or 4 (a passive two-basis choice: a 50:50 beam splitter
    before one PBS per basis) tagger inputs, outcome 0 then outcome 1 of each basis; ``bases``
    and ``angles_deg`` have one entry per basis (labels "Z"/"X", or "<angle>deg" for a
    non-Pauli setting; HWP angles in deg, the analyzer measures linear polarisation at 2θ, Bloch
    angle 4θ in the Z–X plane). ``angle_deg`` is the angle the ``waveplate`` is set to: that of
    the last basis."""

    tagger: str
    channels: tuple[int, ...] = (1, 2)
    window_ps: int = 500
    waveplate: str | None = None
    angle_deg: float = 0.0
    align_s: float = 1.0
    capacity: int = 20_000
    max_pair_age_s: float = 1.0
    bases: tuple[str, ...] = ("Z",)
    angles_deg: tuple[float, ...] = (0.0,)
    source_state: str = "phi+"
    compensation: CompensationConfig | None = None
    keys: KeysConfig | None = None

    @property
    def basis_channels(self) -> tuple[tuple[int, int], ...]:
        """(outcome 0, outcome 1) channel per basis."""
        c = self.channels
        return tuple((c[i], c[i + 1]) for i in range(0, len(c), 2))


@dataclasses.dataclass(frozen=True)
class KeysConfig:
    """``[analyzer.keys]``: the link makes secret keys (BBM92) instead of delivering pairs.

    ``block_bits``: sifted bits per post-processing block; ``params``: the block's settings
    (QBER threshold, ε_sec, ε_cor, the sample); ``max_tag_age_s``: how long the streaming end
    keeps its own outcomes for sifting (s); ``block_timeout_s``: a block that takes longer is
    given up and the session restarts (s)."""

    block_bits: int = 1 << 20
    params: KeyParams = KeyParams()
    max_tag_age_s: float = 30.0
    block_timeout_s: float = 120.0


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """``[source]``: pump and oven set points; with ``link``, the CREATE service of that M link
    and its fidelity-estimation unit (``feu``, built from the model's keys)."""

    pump: str
    oven: str
    pump_power_mw: float = 40.0
    oven_temperature_c: float = 35.0
    link: str | None = None
    ends: tuple[str, str] | None = None
    hmac_key_file: Path | None = None
    feu: FidelityEstimationUnit | None = None


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """A validated node configuration (see the module docstring for the file format)."""

    path: str
    id: str
    network: str
    roles: tuple[str, ...]
    state_dir: Path
    broker: BrokerConfig
    instruments: Mapping[str, InstrumentConfig]
    links: tuple[LinkConfig, ...]
    thresholds: Thresholds
    metrics: MetricsConfig
    herald: HeraldRoleConfig | None = None
    memory: MemoryConfig | None = None
    analyzer: AnalyzerConfig | None = None
    source: SourceConfig | None = None
    paths: tuple[PathConfig, ...] = ()
    #: the node's Ed25519 identity key (signs heralds, status, telemetry;
    # :mod:`qnode.daemon.bus.identity`)
    identity_key_file: Path | None = None
    #: the network's public identity keys, ``<node>.pub`` (verifies heralds)
    trust_dir: Path | None = None
    #: the application service, when the node serves any application
    service: ServiceConfig | None = None
    #: quantum channels that start or end at this node's QDevice
    quantum_channels: tuple[QuantumChannelConfig, ...] = ()
    #: the key management entity: ETSI GS QKD 014 key delivery from the node's key store
    kme: KmeConfig | None = None
    #: topology adverts and routes (memory nodes with an identity key and a trust store)
    routing: RoutingConfig = RoutingConfig()

    @property
    def topic_prefix(self) -> str:
        """``qnet/v1/<network>/<node>`` (docs/integrators/mqtt-contract.md)."""
        return f"qnet/v1/{self.network}/{self.id}"


class _Reader:
    """Typed access to one table of the file, naming keys in errors."""

    def __init__(self, path: str, prefix: str, table: object, allowed: set[str]):
        if not isinstance(table, dict):
            raise ConfigError(path, prefix, f"must be a table, got {type(table).__name__}")
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(path, self._key(prefix, unknown[0]),
                              f"unknown key (known: {', '.join(sorted(allowed))})")
        self.path, self.prefix, self.table = path, prefix, table

    @staticmethod
    def _key(prefix: str, name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self._key(self.prefix, name), problem)

    def has(self, name: str) -> bool:
        return name in self.table

    def string(self, name: str, default: str | None = None, *, pattern: re.Pattern | None = None,
               choices: tuple[str, ...] | None = None) -> str:
        if name not in self.table:
            if default is None:
                raise self.fail(name, "is required")
            return default
        v = self.table[name]
        if not isinstance(v, str) or not v:
            raise self.fail(name, f"must be a non-empty string, got {v!r}")
        if pattern is not None and not pattern.match(v):
            raise self.fail(name, f"{v!r} may use only letters, digits, '-' and '_' (1-64)")
        if choices is not None and v not in choices:
            raise self.fail(name, f"{v!r} is not one of {list(choices)}")
        return v

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        v = self.table.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise self.fail(name, f"must be a number in [{lo:g}, {hi:g}], got {v!r}")
        return float(v)

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        v = self.table.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(name, f"must be an integer in [{lo}, {hi}], got {v!r}")
        return v

    def file(self, name: str, *, required: bool) -> Path | None:
        if name not in self.table:
            if required:
                raise self.fail(name, "is required")
            return None
        p = Path(self.string(name))
        if not p.is_file():
            raise self.fail(name, f"file {str(p)!r} does not exist or is not a file")
        if not os.access(p, os.R_OK):
            raise self.fail(name, f"file {str(p)!r} is not readable by this user")
        return p

    def key_file(self, name: str, *, required: str | None) -> Path | None:
        """An HMAC key file, checked as :func:`qnode.daemon.bus.keys.read_key_file` reads it
        (refused: missing,
        unreadable, not a regular file, group/other-accessible, empty, a key under 16 bytes,
        more than 2 keys). ``required``: why it must be given (None: optional)."""
        if name not in self.table:
            if required is not None:
                raise self.fail(name, f"is required: {required}")
            return None
        p = Path(self.string(name))
        try:
            read_key_file(p)
        except KeyFileError as exc:
            raise self.fail(name, str(exc)) from None
        return p


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate a node config file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(str(p), "(file)", f"cannot read: {exc.strerror or exc}") from exc
    return parse_config(text, str(p))


def parse_config(text: str, path: str = "<config>") -> NodeConfig:
    """Validate a node config's text; :class:`ConfigError` names the key and the problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(syntax)", f"not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raw = None
    if raw is None or _too_deep(raw, MAX_DEPTH):
        raise ConfigError(path, "(syntax)", f"nesting too deep: more than {MAX_DEPTH} levels of "
                                            f"tables and arrays")
    top = _Reader(path, "", raw, {"node", "broker", "instruments", "links", "paths",
                                  "quantum_channels", "thresholds", "metrics", "service",
                                  "applications", "kme", "routing", *ROLE_TABLES})
    if not top.has("node"):
        raise top.fail("node", "the [node] table is required")
    if not top.has("broker"):
        raise top.fail("broker", "the [broker] table is required")

    node = _Reader(path, "node", raw["node"], {"id", "network", "roles", "state_dir",
                                               "identity_key_file", "trust_dir"})
    node_id = node.string("id", pattern=_NAME)
    network = node.string("network", pattern=_NAME)
    roles = _roles(node)
    state_dir = Path(node.string(
        "state_dir", os.environ.get("STATE_DIRECTORY", "").split(":")[0] or "state"))
    problem = _state_dir_problem(state_dir)
    if problem is not None:
        raise node.fail("state_dir", problem)
    identity_key_file, trust_dir, trust = _identity(node)

    broker = _broker(_Reader(path, "broker", raw["broker"],
                             {"url", "ca_file", "client_cert", "client_key", "keepalive_s",
                              "max_offline_s"}))
    instruments = _instruments(path, raw.get("instruments", {}))
    links = _links(path, raw.get("links", []), node_id)
    th = _Reader(path, "thresholds", raw.get("thresholds", {}),
                 {"max_qber", "min_visibility", "min_car"})
    thresholds = Thresholds(th.number("max_qber", 0.11, 0, 0.5),
                            th.number("min_visibility", 0.9, 0, 1),
                            th.number("min_car", 2.5, 0, 1e9))
    me = _Reader(path, "metrics", raw.get("metrics", {}),
                 {"prometheus_port", "telemetry_interval_s"})
    metrics = MetricsConfig(me.integer("prometheus_port", 9108, 0, 65535),
                            me.number("telemetry_interval_s", 5.0, 0.1, 3600))
    routing = _routing(path, raw.get("routing", {}))
    if "routing" in raw and not {"memory", "repeater"} & set(roles):
        raise top.fail("routing", "routes join memory nodes: node.roles lists neither memory "
                                  "nor repeater")

    for role in roles:
        for needed in ROLE_NEEDS.get(role, ()):
            if not any(i.kind in needed for i in instruments.values()):
                raise ConfigError(path, "instruments",
                                  f"role {role!r} needs an instrument of kind "
                                  f"{' or '.join(needed)}")
    for table in ROLE_TABLES:
        if table in raw and table not in roles and not (table == "memory" and "repeater" in roles):
            raise top.fail(table, f"configures role {table!r}, which node.roles does not list")
    cfg = NodeConfig(
        path, node_id, network, roles, state_dir, broker, instruments, links, thresholds,
        metrics,
        identity_key_file=identity_key_file, trust_dir=trust_dir,
        herald=_herald(path, raw.get("herald"), instruments, links) if "herald" in roles else None,
        memory=_memory(path, raw.get("memory", {}), instruments)
        if {"memory", "repeater"} & set(roles) else None,
        paths=_paths(path, raw.get("paths", []), node_id, links),
        analyzer=_analyzer(path, raw.get("analyzer", {}), instruments)
        if "analyzer" in roles else None,
        source=_source(path, raw.get("source", {}), instruments) if "source" in roles else None,
        service=_service(path, raw.get("service"), raw.get("applications"), node_id, links),
        quantum_channels=_quantum_channels(path, raw.get("quantum_channels", []), node_id),
        kme=_kme(path, raw["kme"], node_id) if "kme" in raw else None, routing=routing)
    if cfg.analyzer is not None and cfg.analyzer.keys is not None and cfg.kme is None:
        raise ConfigError(path, "analyzer.keys", "the link's keys go to the node's key store: "
                                                 "configure [kme]")
    if cfg.quantum_channels and (cfg.memory is None or cfg.memory.qdevice is None):
        raise top.fail("quantum_channels", "a quantum channel joins QDevices: this node needs "
                                           "[memory].qdevice")
    # the application service's messages between the ends of a pool carry identity signatures
    if cfg.service is not None:
        if identity_key_file is None or trust_dir is None:
            raise node.fail("identity_key_file", "the application service signs its messages "
                                                 "to the other end of each pool with the node's "
                                                 "identity key and checks theirs: set "
                                                 "node.identity_key_file and node.trust_dir")
        remotes = [(f"links[{i}].peer", lc.peer) for i, lc in enumerate(links) if lc.type == "K"]
        remotes += [(f"paths[{i}].ends", p.ends[1 - p.ends.index(node_id)])
                    for i, p in enumerate(cfg.paths) if node_id in p.ends]
        for key, remote in remotes:
            if remote not in trust:
                raise ConfigError(path, key, f"the application service checks {remote!r}'s "
                                             f"identity signature: put {remote}.pub in "
                                             f"node.trust_dir")
    # a repeater that is not an end's link neighbour reports its swaps to that end under its
    # identity signature (docs/developers/decisions/0010-chains-of-repeaters.md)
    for i, p in enumerate(cfg.paths):
        if node_id in p.repeaters:
            k = p.nodes.index(node_id)
            if (k > 1 or k < len(p.nodes) - 2) and identity_key_file is None:
                raise node.fail("identity_key_file", f"this node repeats for path {p.id!r} "
                                                     f"and signs its swap reports to ends it "
                                                     f"has no link with: set "
                                                     f"node.identity_key_file")
        elif node_id in p.ends:
            k = p.nodes.index(node_id)
            far = [n for j, n in enumerate(p.nodes[1:-1], 1) if abs(j - k) > 1]
            for n in far:
                if n not in trust:
                    where = "trust_dir" if trust_dir is not None else "trust_dir (missing)"
                    raise ConfigError(path, f"paths[{i}].nodes",
                                      f"repeater {n!r} reports its swaps on path {p.id!r} "
                                      f"under its identity signature: put {n}.pub in "
                                      f"node.{where}")
    # heralds carry their station's identity signature: the station signs, the ends verify
    if "herald" in roles and identity_key_file is None:
        raise node.fail("identity_key_file", "a herald station signs its heralds with its "
                                             "identity key: set node.identity_key_file")
    for i, link in enumerate(links):
        # an M link's counter is the end whose id sorts first: it heralds, the other verifies
        if link.type == "M" and "analyzer" in roles and node_id < link.peer \
                and identity_key_file is None:
            raise node.fail("identity_key_file", f"this node counts M link {link.id!r} and "
                                                 f"signs its heralds: set node.identity_key_file")
        if link.type == "M" and "analyzer" in roles and node_id > link.peer \
                and link.peer not in trust:
            where = "trust_dir" if trust_dir is not None else "trust_dir (missing)"
            raise ConfigError(path, f"links[{i}].peer",
                              f"the counter {link.peer!r} signs the heralds of M link "
                              f"{link.id!r}: put {link.peer}.pub in node.{where}")
        if link.type == "K" and link.herald is not None and link.herald not in trust:
            where = "trust_dir" if trust_dir is not None else "trust_dir (missing)"
            raise ConfigError(path, f"links[{i}].herald",
                              f"the ends verify station {link.herald!r}'s heralds with its public "
                              f"identity key: put {link.herald}.pub in node.{where}")
    return cfg


ROLE_TABLES = ("herald", "memory", "analyzer", "source")


def _routing(path: str, table: object) -> RoutingConfig:
    r = _Reader(path, "routing", table, {"advert_interval_s", "advert_ttl_s", "k_routes",
                                         "min_fidelity", "paths_to"})
    interval = r.number("advert_interval_s", 2.0, 0.1, 600)
    ttl = r.number("advert_ttl_s", 3 * interval, 0.1, 3600)
    if ttl <= interval:
        raise r.fail("advert_ttl_s", f"must be longer than advert_interval_s ({interval:g} s), "
                                     f"or every advert expires before the next one comes; got "
                                     f"{ttl:g}")
    paths_to = r.table.get("paths_to", [])
    if (not isinstance(paths_to, list) or len(paths_to) > 64
            or not all(isinstance(n, str) and _NAME.fullmatch(n) for n in paths_to)
            or len(set(paths_to)) != len(paths_to)):
        raise r.fail("paths_to", f"must be a list of up to 64 different node ids, got "
                                 f"{paths_to!r}")
    return RoutingConfig(interval, ttl, r.integer("k_routes", 3, 1, 16),
                         r.number("min_fidelity", 0.5, 0.25, 1.0), tuple(paths_to))

#: the deepest nesting of tables and arrays a config may have (the real ones use 4)
MAX_DEPTH = 32


def _service(path: str, raw: object, apps: object, node_id: str,
             links: tuple[LinkConfig, ...]) -> ServiceConfig | None:
    """``[service]`` and ``[applications.<name>]``; None when no application is configured."""
    if apps is None:
        if raw is not None:
            raise ConfigError(path, "service", "configures the application service, but no "
                                               "[applications.<name>] table names one")
        return None
    if not isinstance(apps, dict) or not apps:
        raise ConfigError(path, "applications", "must hold one [applications.<name>] table "
                                                "per application")
    nodes = {node_id} | {lc.peer for lc in links} | {lc.herald for lc in links if lc.herald}
    out: dict[str, ApplicationConfig] = {}
    for name, table in apps.items():
        key = f"applications.{name}"
        if not _NAME.match(name):
            raise ConfigError(path, key, "an application's name may use only letters, digits, "
                                         "'-' and '_' (1-64): it is its broker user name")
        if name in nodes:
            raise ConfigError(path, key, f"{name!r} is a node of this network: an application "
                                         f"needs a name (broker user) of its own")
        r = _Reader(path, key, table, {"weight", "purposes"})
        purposes = r.table.get("purposes", [])
        if (not isinstance(purposes, list) or len(purposes) > 1024 or not all(
                isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 0xFFFF
                for p in purposes)):
            raise r.fail("purposes", f"must be a list of purpose ids in [0, 65535], got "
                                     f"{purposes!r}")
        out[name] = ApplicationConfig(name, r.number("weight", 1.0, 1e-3, 1000.0),
                                      tuple(purposes))
    taken: dict[int, str] = {}
    for a in out.values():
        for p in a.purposes:
            if p in taken:
                raise ConfigError(path, f"applications.{a.name}.purposes",
                                  f"purpose {p} is already {taken[p]!r}'s: one listener per "
                                  f"purpose")
            taken[p] = a.name
    s = _Reader(path, "service", raw if raw is not None else {},
                {"max_waiting", "max_per_application", "listeners_every_s"})
    return ServiceConfig(out, s.integer("max_waiting", 10_000, 1, 1_000_000),
                         s.integer("max_per_application", 1000, 1, 1_000_000),
                         s.number("listeners_every_s", 5.0, 0.1, 3600))


def _too_deep(value: object, limit: int) -> bool:
    """Whether ``value`` nests dicts and lists more than ``limit`` deep (iteratively: a
    recursion is what a hostile file would break)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
    return False


def _state_dir_problem(d: Path) -> str | None:
    """Why ``d`` can never be the state directory (it, or the nearest existing of its parents,
    is not a directory), or None. Whether this user may write it is checked at start
    (:func:`prepare_state_dir`): another user may read the config (``qnode status``)."""
    if d.exists():
        return None if d.is_dir() else f"{str(d)!r} exists and is not a directory"
    for parent in d.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{str(d)!r} cannot be created: {str(parent)!r} is not a directory"
            break
    return None


def prepare_state_dir(config: NodeConfig) -> Path:
    """Create ``node.state_dir`` if it is missing (mode 0700; the parents as the umask makes
    them) and check that this user can write in it: :class:`ConfigError`
    ``file: node.state_dir: problem`` if it cannot be created, is not a directory or is not
    writable. For ``qnode run``, before the node starts."""
    d = config.state_dir

    def fail(problem: str) -> ConfigError:
        return ConfigError(config.path, "node.state_dir", problem)

    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise fail(f"{str(d)!r} exists and is not a directory") from None
    except OSError as exc:
        raise fail(f"{str(d)!r} cannot be created: {exc.strerror or exc}") from None
    if not d.is_dir():
        raise fail(f"{str(d)!r} exists and is not a directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise fail(f"{str(d)!r} is not writable by this user")
    return d


def _identity(node: _Reader) -> tuple[Path | None, Path | None, Mapping[str, object]]:
    """``node.identity_key_file`` and ``node.trust_dir``, loaded once to check them, and the
    public keys found (:mod:`qnode.daemon.bus.identity`)."""
    from qnode.daemon.bus.identity import IdentityError, NodeSigner, TrustStore

    key_file = Path(node.string("identity_key_file")) if node.has("identity_key_file") else None
    trust_dir = Path(node.string("trust_dir")) if node.has("trust_dir") else None
    trust: Mapping[str, object] = {}
    try:
        if key_file is not None:
            NodeSigner.from_file(key_file)
    except IdentityError as exc:
        raise node.fail("identity_key_file", str(exc)) from None
    try:
        if trust_dir is not None:
            trust = TrustStore.from_dir(trust_dir)
    except IdentityError as exc:
        raise node.fail("trust_dir", str(exc)) from None
    return key_file, trust_dir, trust


def _instrument_ref(r: _Reader, name: str, instruments: Mapping[str, InstrumentConfig],
                    kinds: tuple[str, ...], *, required: bool = True) -> str | None:
    """An instrument named by a role table (default: the only one of ``kinds``)."""
    if not r.has(name):
        fitting = [i.name for i in instruments.values() if i.kind in kinds]
        if len(fitting) == 1:
            return fitting[0]
        if not required:
            return None
        raise r.fail(name, f"is required: name the instrument ({' or '.join(kinds)}) to use"
                     + (f"; candidates {fitting}" if fitting else ""))
    ref = r.string(name)
    if ref not in instruments:
        raise r.fail(name, f"no instrument {ref!r} (configured: {sorted(instruments)})")
    if instruments[ref].kind not in kinds:
        raise r.fail(name, f"instrument {ref!r} is a {instruments[ref].kind}, "
                     f"expected {' or '.join(kinds)}")
    return ref


def _channels(r: _Reader, name: str, n: int, default: tuple[int, ...]) -> tuple[int, ...]:
    v = r.table.get(name, list(default))
    if (not isinstance(v, list) or len(v) != n
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 16
                       for c in v) or len(set(v)) != n):
        raise r.fail(name, f"must be a list of {n} different channel numbers, got {v!r}")
    return tuple(v)


def _herald(path: str, raw: object, instruments: Mapping[str, InstrumentConfig],
            links: tuple[LinkConfig, ...]) -> HeraldRoleConfig:
    if raw is None:
        raise ConfigError(path, "herald", "role 'herald' needs a [herald] table (link, ends)")
    r = _Reader(path, "herald", raw,
                {"tagger", "link", "ends", "channels", "window_ps", "hmac_key_file"})
    tagger = _instrument_ref(r, "tagger", instruments, TAGGER_KINDS)
    assert tagger is not None
    ends = r.table.get("ends")
    if (not isinstance(ends, list) or len(ends) != 2 or len(set(ends)) != 2
            or not all(isinstance(e, str) and _NAME.match(e) for e in ends)):
        raise r.fail("ends", f"must name the link's two memory nodes, got {ends!r}")
    return HeraldRoleConfig(tagger, r.string("link", pattern=_NAME), (ends[0], ends[1]),
                            _channels(r, "channels", 4, (1, 2, 3, 4)),  # type: ignore[arg-type]
                            r.integer("window_ps", 1000, 1, 10**9),
                            r.key_file("hmac_key_file", required="the station signs its "
                                                                 "heralds with the link key"))


PURIFICATIONS = ("dejmps", "bbpssw", "off")
#: [memory] keys of the QDevice's gate noise (qnode.drivers.qdevice_noise): g, F_avg and the
#: earlier name of g, for 2- and 1-qubit gates
GATE_NOISE_CONFIG_KEYS = (*GATE_NOISE_KEYS[2].all, *GATE_NOISE_KEYS[1].all)
PURIFICATION_SCHEDULES = ("pumping", "recurrence")


def _memory(path: str, raw: object,
            instruments: Mapping[str, InstrumentConfig]) -> MemoryConfig:
    r = _Reader(path, "memory", raw, {"capacity", "max_pair_age_s", "fidelity",
                                      "restart_policy", "t1_s", "t2_s", "qdevice",
                                      "qubits_per_link", "test_fraction", "min_tests",
                                      "readout_error", "delivered_hold_s", "purification",
                                      "purification_schedule", "purification_max_rounds",
                                      *GATE_NOISE_CONFIG_KEYS})
    qdevice = r.string("qdevice", "") or None
    if qdevice is not None and (qdevice not in instruments
                                or instruments[qdevice].kind not in MEMORY_KINDS):
        raise r.fail("qdevice", f"{qdevice!r} is not an instrument of kind 'qdevice'")
    t1, t2 = r.number("t1_s", 0.0, 0, 1e6), r.number("t2_s", 0.0, 0, 1e6)
    if (t1 > 0) != (t2 > 0):
        raise r.fail("t2_s" if t1 > 0 else "t1_s", "give both T1 and T2 (or neither)")
    if t1 > 0 and t2 > 2 * t1:
        raise r.fail("t2_s", f"T2 = {t2:g} s exceeds 2·T1 = {2 * t1:g} s (not physical)")
    return MemoryConfig(r.integer("capacity", 1000, 0, 10**7),
                        r.number("max_pair_age_s", 1.0, 0, 86400),
                        r.number("fidelity", 0.9, 0, 1),
                        r.string("restart_policy", "resume", choices=RESTART_POLICIES),
                        t1, t2, qdevice, r.integer("qubits_per_link", 2, 1, 1024),
                        r.number("test_fraction", 0.1, 0, 1),
                        r.integer("min_tests", 200, 1, 10**9),
                        r.number("readout_error", 0.0, 0, 0.5),
                        _gate_noise(r, 2),
                        r.number("delivered_hold_s", 0.1, 0, 3600),
                        _gate_noise(r, 1),
                        r.string("purification", "dejmps", choices=PURIFICATIONS),
                        r.string("purification_schedule", "pumping",
                                 choices=PURIFICATION_SCHEDULES),
                        r.integer("purification_max_rounds", 4, 0, 20))


def _gate_noise(r: _Reader, n_qubits: int) -> float:
    """The depolarising parameter g of the QDevice's ``n_qubits``-qubit gates from the one key
    of :data:`GATE_NOISE_KEYS` given (g, or the average gate fidelity converted to g; default
    1: noiseless). Two of them given is an error naming both."""
    keys = GATE_NOISE_KEYS[n_qubits]
    try:
        key = given_key(r.table, n_qubits)
    except ValueError as exc:
        raise r.fail(next(k for k in keys.all[::-1] if r.has(k)), str(exc)) from None
    if key == keys.average_fidelity:
        f_avg = r.number(key, 1.0, min_average_fidelity(n_qubits), 1)
        return depolarising_parameter(f_avg, n_qubits)
    return r.number(key or keys.depolarising, 1.0, 0, 1)


def _paths(path: str, raw: object, node_id: str,
           links: tuple[LinkConfig, ...]) -> tuple[PathConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError(path, "paths", "must be an array of [[paths]] tables")
    out: list[PathConfig] = []
    for i, table in enumerate(raw):
        r = _Reader(path, f"paths[{i}]", table, {"id", "nodes", "ends", "repeater", "links"})
        pid = r.string("id", pattern=_NAME)
        if any(p.id == pid for p in out):
            raise r.fail("id", f"{pid!r} is used by another path")
        if r.has("nodes"):
            for key in ("ends", "repeater"):
                if r.has(key):
                    raise r.fail(key, "give either nodes, or ends and repeater, not both")
            nodes = r.table.get("nodes")
            if (not isinstance(nodes, list) or not 3 <= len(nodes) <= MAX_HOPS + 1
                    or not all(isinstance(n, str) and _NAME.fullmatch(n) for n in nodes)
                    or len(set(nodes)) != len(nodes)):
                raise r.fail("nodes", f"must be 3 to {MAX_HOPS + 1} different node ids, the "
                                      f"ends first and last, got {nodes!r}")
        else:
            ends = r.table.get("ends")
            if (not isinstance(ends, list) or len(ends) != 2
                    or not all(isinstance(e, str) for e in ends) or ends[0] == ends[1]):
                raise r.fail("ends", f"must be two different node ids, got {ends!r}")
            repeater = r.string("repeater", pattern=_NAME)
            if repeater in ends:
                raise r.fail("repeater", f"must not be an end, got {repeater!r}")
            nodes = [ends[0], repeater, ends[1]]
        hops = len(nodes) - 1
        via = r.table.get("links")
        if (not isinstance(via, list) or len(via) != hops
                or not all(isinstance(x, str) for x in via) or len(set(via)) != hops):
            raise r.fail("links", f"must be the {hops} different link ids joining the path's "
                                  f"consecutive nodes, got {via!r}")
        mine = {lc.id: lc for lc in links}
        if node_id in nodes:
            k = nodes.index(node_id)
            for j in (k - 1, k):   # the links on this node's sides
                if 0 <= j < hops:
                    peer = nodes[j + 1] if j == k else nodes[j]
                    if via[j] not in mine or mine[via[j]].type != "K" \
                            or mine[via[j]].peer != peer:
                        raise r.fail("links", f"link {via[j]!r} must be a K link of this node "
                                              f"with {peer!r}")
        new = PathConfig(pid, tuple(nodes), tuple(via))
        if node_id in new.ends:
            # both ends must serve a request from the same path (the pair ids are that path's);
            # choosing between paths needs the ends to agree, which nothing does yet
            for p in out:
                if node_id in p.ends and set(p.ends) == set(new.ends):
                    raise r.fail("nodes", f"a second path between {new.ends[0]!r} and "
                                          f"{new.ends[1]!r} (path {p.id!r} is one): a node "
                                          "ends one path per remote node")
        out.append(new)
    return tuple(out)


def _quantum_channels(path: str, raw: object, node_id: str) -> tuple[QuantumChannelConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError(path, "quantum_channels",
                          "must be an array of [[quantum_channels]] tables")
    out: list[QuantumChannelConfig] = []
    for i, table in enumerate(raw):
        r = _Reader(path, f"quantum_channels[{i}]", table, {"id", "from", "to"})
        cid = r.string("id", pattern=_NAME)
        source = r.string("from", pattern=_NAME)
        target = r.string("to", pattern=_NAME)
        if source == target:
            raise r.fail("to", f"a channel joins two nodes, got {source!r} twice")
        if node_id not in (source, target):
            raise r.fail("from", f"neither end ({source!r}, {target!r}) is this node "
                                 f"({node_id!r})")
        for c in out:
            if c.id == cid:
                raise r.fail("id", f"{cid!r} names quantum_channels[{out.index(c)}] already")
            if (c.source, c.target) == (source, target):
                raise r.fail("to", f"a second channel from {source!r} to {target!r}")
        out.append(QuantumChannelConfig(cid, source, target))
    return tuple(out)


#: default HWP angle per basis label (deg): Z measures H/V, X (22.5°) D/A
BASIS_ANGLES_DEG = {"Z": 0.0, "X": 22.5}
#: the ideal pair states an analyzer's QBERs may be counted against
SOURCE_STATES = BELL_STATES


def pauli_of_angle(angle_deg: float) -> tuple[str, int] | None:
    """(basis, sign) measured by a HWP at ``angle_deg`` before a PBS, or None for a non-Pauli
    setting: the '+' (outcome 0) port sees linear polarisation at 2θ, Bloch vector
    (sin 4θ, 0, cos 4θ) (:mod:`qnode.hal_sim.physics.coupling`), so θ = 0° is Z (+1, H),
    45° Z with the outcomes swapped (−1), 22.5° X (+1, D), 67.5° X (−1). Tolerance 1e-6° on 4θ."""
    phase = (4.0 * angle_deg) % 360.0
    for target, basis, sign in ((0.0, "Z", 1), (360.0, "Z", 1), (180.0, "Z", -1),
                                (90.0, "X", 1), (270.0, "X", -1)):
        if abs(phase - target) < 1e-6:
            return basis, sign
    return None


def basis_label(angle_deg: float) -> str:
    """The label of a setting: "Z" or "X" for a Pauli basis, else "<angle>deg"."""
    p = pauli_of_angle(angle_deg)
    return p[0] if p is not None else f"{angle_deg:g}deg"


def _kme(path: str, raw: object, node_id: str) -> KmeConfig:
    """``[kme]`` (:class:`~.kme_config.KmeConfig`, which names the key in its errors)."""
    if not isinstance(raw, dict):
        raise ConfigError(path, "kme", f"must be a table, got {type(raw).__name__}")
    try:
        kme = KmeConfig.from_table(raw, node_id)
    except ValueError as exc:
        text = str(exc)   # "kme.<key> <problem>", "kme: <problem>" or "<problem>"
        if text.startswith("kme."):
            key, _, text = text.partition(" ")
            raise ConfigError(path, key.rstrip(":"), text) from None
        raise ConfigError(path, "kme", text.removeprefix("kme: ")) from None
    for key in ("cert", "key", "ca"):
        file = getattr(kme, key)
        if not file.is_file() or not os.access(file, os.R_OK):
            raise ConfigError(path, f"kme.{key}", f"{str(file)!r} is not a readable file")
    try:   # the server's TLS files, as the KME will load them at start
        kme.server_ssl_context()
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(path, "kme.cert", f"the KME's certificate, key and CA do not load: "
                                            f"{exc}") from None
    folder = kme.store.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(path, "kme.store", f"the folder {str(folder)!r} of the key store "
                                             f"does not exist or this user cannot write it")
    return kme


def _analyzer(path: str, raw: object,
              instruments: Mapping[str, InstrumentConfig]) -> AnalyzerConfig:
    r = _Reader(path, "analyzer", raw,
                {"tagger", "channels", "window_ps", "waveplate", "angle_deg", "angles_deg",
                 "bases", "source_state", "align_s", "capacity", "max_pair_age_s", "keys",
                 *COMPENSATION_KEYS})
    tagger = _instrument_ref(r, "tagger", instruments, TAGGER_KINDS)
    assert tagger is not None
    n_ch = len(r.table["channels"]) if isinstance(r.table.get("channels"), list) else 2
    if n_ch not in (2, 4):
        raise r.fail("channels", f"must list 2 channels (one basis: outcome 0, 1) or 4 (two "
                     f"bases: b0_out0, b0_out1, b1_out0, b1_out1), got {r.table['channels']!r}")
    channels = _channels(r, "channels", n_ch, (1, 2))
    n = n_ch // 2
    bases: list[str] | None = None
    if r.has("bases"):
        raw_b = r.table["bases"]
        if (not isinstance(raw_b, list) or len(raw_b) != n
                or not all(isinstance(b, str) and b.upper() in BASIS_ANGLES_DEG for b in raw_b)
                or len({b.upper() for b in raw_b}) != n):
            raise r.fail("bases", f"must list {n} different labels of {list(BASIS_ANGLES_DEG)} "
                         f"(one per basis of channels), got {raw_b!r}")
        bases = [b.upper() for b in raw_b]
    angles: list[float] | None = None
    if r.has("angles_deg"):
        raw_a = r.table["angles_deg"]
        if (not isinstance(raw_a, list) or len(raw_a) != n
                or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                           and -360 <= a <= 360 for a in raw_a)):
            raise r.fail("angles_deg", f"must list {n} HWP angles in [-360, 360] deg (one per "
                         f"basis of channels), got {raw_a!r}")
        angles = [float(a) for a in raw_a]
    if r.has("angle_deg"):
        if n != 1:
            raise r.fail("angle_deg", "is for one basis (2 channels); with 4 channels give "
                         "angles_deg, one per basis")
        if angles is not None:
            raise r.fail("angle_deg", "give angle_deg or angles_deg, not both")
        angles = [r.number("angle_deg", 0.0, -360, 360)]
    if angles is None:
        angles = [BASIS_ANGLES_DEG[b] for b in (bases or ["Z", "X"][:n])]
    labels = [basis_label(a) for a in angles]
    if bases is not None:
        for i, (b, a) in enumerate(zip(bases, angles, strict=True)):
            if labels[i] != b:
                raise r.fail(f"bases[{i}]", f"{b!r} does not match angles_deg[{i}] = {a:g} (a HWP "
                             f"at θ measures Bloch angle 4θ: Z at 0° or 45°, X at 22.5° or 67.5°)")
    if len(set(labels)) != n:
        raise r.fail("angles_deg", f"the bases must differ, got angles {angles}")
    waveplate = _instrument_ref(r, "waveplate", instruments, WAVEPLATE_KINDS, required=False)
    return AnalyzerConfig(tagger, channels,
                          r.integer("window_ps", 500, 1, 10**9),
                          waveplate,
                          angles[-1],
                          r.number("align_s", 1.0, 0.01, 600),
                          r.integer("capacity", 20_000, 0, 10**7),
                          r.number("max_pair_age_s", 1.0, 0, 86400),
                          tuple(labels), tuple(angles),
                          r.string("source_state", "phi+", choices=SOURCE_STATES),
                          _compensation(r, instruments, waveplate),
                          _keys(path, r.table["keys"], labels) if r.has("keys") else None)


def _keys(path: str, raw: object, labels: list[str]) -> KeysConfig:
    """``[analyzer.keys]``."""
    r = _Reader(path, "analyzer.keys", raw,
                {"block_bits", "qber_threshold", "eps_sec", "eps_cor", "sample_bits",
                 "max_tag_age_s", "block_timeout_s"})
    if sorted(labels) != ["X", "Z"]:
        raise ConfigError(path, "analyzer.keys", f"keys need an analyzer of the Z and X bases "
                          f"(4 channels; BBM92), got bases {labels}")
    block_bits = r.integer("block_bits", 1 << 20, 1 << 14, 1 << 22)
    try:
        params = KeyParams(qber_threshold=r.number("qber_threshold", 0.11, 0.001, 0.25),
                           eps_sec=r.number("eps_sec", 1e-10, 1e-30, 1e-4),
                           eps_cor=r.number("eps_cor", 1e-15, 1e-30, 1e-4),
                           sample_bits=r.integer("sample_bits", 8192, 256, 1 << 20),
                           min_bits=block_bits // 2)
    except ValueError as exc:
        raise ConfigError(path, "analyzer.keys", str(exc)) from None
    return KeysConfig(block_bits, params, r.number("max_tag_age_s", 30.0, 1.0, 3600.0),
                      r.number("block_timeout_s", 120.0, 5.0, 3600.0))


COMPENSATION_KEYS = ("compensator", "compensator_angle_deg", "compensate",
                     "compensate_threshold", "compensate_tolerance", "compensate_window_s",
                     "compensate_scan_points", "compensate_fine_step_deg", "compensate_settle_s",
                     "compensate_max_attempts", "compensate_retry_s", "compensate_at_start")


def _flag(r: _Reader, name: str, default: bool) -> bool:
    v = r.table.get(name, default)
    if not isinstance(v, bool):
        raise r.fail(name, f"must be true or false, got {v!r}")
    return v


def _compensation(r: _Reader, instruments: Mapping[str, InstrumentConfig],
                  waveplate: str | None) -> CompensationConfig | None:
    """The ``compensator``/``compensate*`` keys of ``[analyzer]`` (None: no compensator)."""
    enabled = _flag(r, "compensate", False)
    if not r.has("compensator"):   # never defaults to "the only ELL14": that is the X arm's
        if enabled:
            raise r.fail("compensator", "compensate = true needs the compensator's ELL14 "
                                        "(an elliptec instrument)")
        extra = [k for k in COMPENSATION_KEYS if r.has(k) and k != "compensate"]
        if extra:
            raise r.fail(extra[0], "configures the compensator, but no compensator is named")
        return None
    comp = _instrument_ref(r, "compensator", instruments, WAVEPLATE_KINDS)
    assert comp is not None
    if comp == waveplate:
        raise r.fail("compensator", f"{comp!r} is the basis' waveplate; the compensator is "
                                    f"another plate, before the analyzers")
    threshold = r.number("compensate_threshold", 0.03, 1e-4, 0.5)
    tolerance = r.number("compensate_tolerance", 0.01, 1e-4, 0.5)
    if tolerance >= threshold:
        raise r.fail("compensate_tolerance", f"must be below compensate_threshold "
                                             f"({threshold:g}), got {tolerance:g}")
    return CompensationConfig(
        comp, enabled, r.number("compensator_angle_deg", 0.0, -360, 360), threshold, tolerance,
        r.number("compensate_window_s", 1.0, 0.05, 600),
        r.integer("compensate_scan_points", 6, 4, 36),
        r.number("compensate_fine_step_deg", 3.0, 0.1, 22.5),
        r.number("compensate_settle_s", 0.3, 0, 60),
        r.integer("compensate_max_attempts", 3, 1, 20),
        r.number("compensate_retry_s", 30.0, 0.1, 86400),
        _flag(r, "compensate_at_start", False))


#: [source] keys of the fidelity-estimation unit (all need ``link``)
SOURCE_FEU_KEYS = ("brightness_hz_per_mw", "efficiency", "dark_count_rate_hz", "window_ps",
                   "visibility", "min_pump_mw", "max_pump_mw")


def _source(path: str, raw: object, instruments: Mapping[str, InstrumentConfig]) -> SourceConfig:
    r = _Reader(path, "source", raw, {"pump", "oven", "pump_power_mw", "oven_temperature_c",
                                      "link", "ends", "hmac_key_file", *SOURCE_FEU_KEYS})
    pump = _instrument_ref(r, "pump", instruments, PUMP_KINDS)
    oven = _instrument_ref(r, "oven", instruments, OVEN_KINDS)
    assert pump is not None and oven is not None
    power = r.number("pump_power_mw", 40.0, 0, 10_000)
    temperature = r.number("oven_temperature_c", 35.0, 0, 200)
    if not r.has("link"):
        for key in ("ends", "hmac_key_file", *SOURCE_FEU_KEYS):
            if r.has(key):
                raise r.fail(key, "describes the CREATE service of a link: set source.link too")
        return SourceConfig(pump, oven, power, temperature)
    link = r.string("link", pattern=_NAME)
    ends = None
    if r.has("ends"):
        e = r.table["ends"]
        if (not isinstance(e, list) or len(e) != 2 or len(set(e)) != 2
                or not all(isinstance(x, str) and _NAME.match(x) for x in e)):
            raise r.fail("ends", f"must name the link's two analyzer nodes, got {e!r}")
        ends = (e[0], e[1])
    return SourceConfig(pump, oven, power, temperature, link, ends,
                        r.key_file("hmac_key_file", required=None), _source_feu(r, power))


def _pair(r: _Reader, name: str, lo: float, hi: float, default: list[float] | None) -> list[float]:
    v = r.table.get(name, default)
    if v is None:
        raise r.fail(name, "is required with source.link")
    if (not isinstance(v, list) or len(v) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and lo <= x <= hi
                       for x in v)):
        raise r.fail(name, f"must be a list of 2 numbers in [{lo:g}, {hi:g}] (one per side), "
                     f"got {v!r}")
    return [float(x) for x in v]


def _source_feu(r: _Reader, pump_power_mw: float) -> FidelityEstimationUnit:
    """The FEU of ``[source]`` (module docstring); errors name the key."""
    for key in ("brightness_hz_per_mw", "efficiency", "window_ps", "visibility", "max_pump_mw"):
        if not r.has(key):
            raise r.fail(key, "is required with source.link (the fidelity-estimation model)")
    eff = _pair(r, "efficiency", 0, 1, None)
    for i, x in enumerate(eff):
        if x <= 0:
            raise r.fail("efficiency", f"side {i}: must be > 0, got {x!r}")
    dark = _pair(r, "dark_count_rate_hz", 0, 1e9, [0.0, 0.0])
    brightness = r.number("brightness_hz_per_mw", 0, 0, 1e15)
    if brightness <= 0:
        raise r.fail("brightness_hz_per_mw", f"must be > 0, got {brightness!r}")
    lo = r.number("min_pump_mw", 0.0, 0, 10_000)
    hi = r.number("max_pump_mw", 0, 0, 10_000)
    if hi < lo:
        raise r.fail("max_pump_mw", f"{hi:g} is below min_pump_mw = {lo:g}")
    if not lo <= pump_power_mw <= hi:
        raise r.fail("pump_power_mw", f"{pump_power_mw:g} is outside [min_pump_mw, max_pump_mw]"
                     f" = [{lo:g}, {hi:g}]")
    return FidelityEstimationUnit(
        brightness_hz_per_mw=brightness, efficiency_a=eff[0], efficiency_b=eff[1],
        window_ps=full_window_ps(r.integer("window_ps", 0, 1, 10**9)),
        visibility=r.number("visibility", 0, 0, 1), max_power_mw=hi, min_power_mw=lo,
        dark_a_hz=dark[0], dark_b_hz=dark[1])


def _roles(node: _Reader) -> tuple[str, ...]:
    roles = node.table.get("roles")
    if not isinstance(roles, list) or not roles:
        raise node.fail("roles", f"must be a non-empty list of {list(ROLES)}")
    for i, r in enumerate(roles):
        if r not in ROLES:
            raise node.fail(f"roles[{i}]", f"{r!r} is not one of {list(ROLES)}")
    if len(set(roles)) != len(roles):
        raise node.fail("roles", "lists a role twice")
    return tuple(roles)


def _broker(b: _Reader) -> BrokerConfig:
    url = b.string("url")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise b.fail("url", f"{url!r} must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise b.fail("url", f"{url!r} names no host")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError as exc:
        raise b.fail("url", f"{url!r}: the port must be a number in 1-65535") from exc
    tls = parts.scheme == "mqtts"
    ca = b.file("ca_file", required=tls)
    cert = b.file("client_cert", required=False)
    key = b.file("client_key", required=cert is not None)
    if not tls and (ca or cert):
        raise b.fail("url", "TLS files are given but the URL is mqtt://; use mqtts://")
    if key is not None and cert is None:
        raise b.fail("client_cert", "client_key is given without client_cert")
    return BrokerConfig(url, parts.hostname, port, tls, ca, cert, key,
                        b.number("keepalive_s", 30, 1, 3600),
                        b.number("max_offline_s", 300, 0, 86400))


def _instruments(path: str, raw: object) -> dict[str, InstrumentConfig]:
    if not isinstance(raw, dict):
        raise ConfigError(path, "instruments", "must be a table of [instruments.<name>] tables")
    out = {}
    for name, table in raw.items():
        key = f"instruments.{name}"
        if not _NAME.match(name):
            raise ConfigError(path, key, "instrument names may use only letters, digits, - and _")
        r = _Reader(path, key, table, {"kind", "address", "timeout_s", "options", "stall_s"})
        kind = r.string("kind", choices=tuple(INSTRUMENT_KINDS))
        address = r.string("address")
        if kind == "replay" and not Path(address).is_file():
            raise r.fail("address", f"tag file {address!r} does not exist")
        options = table.get("options", {})
        if not isinstance(options, dict):
            raise r.fail("options", "must be a table")
        stall_s = r.number("stall_s", 5.0, 0, 3600)
        if 0 < stall_s < 0.5:
            raise r.fail("stall_s", f"must be 0 (never) or at least 0.5 s, got {stall_s:g}")
        out[name] = InstrumentConfig(name, kind, address, r.number("timeout_s", 1.0, 0.001, 600),
                                     options, stall_s)
    return out


def _links(path: str, raw: object, node_id: str) -> tuple[LinkConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError(path, "links", "must be an array of [[links]] tables")
    links, ids = [], set()
    for i, table in enumerate(raw):
        r = _Reader(path, f"links[{i}]", table, {"id", "peer", "type", "herald", "hmac_key_file"})
        link_id = r.string("id", pattern=_NAME)
        if link_id in ids:
            raise r.fail("id", f"{link_id!r} is used by another link")
        ids.add(link_id)
        peer = r.string("peer", pattern=_NAME)
        if peer == node_id:
            raise r.fail("peer", f"a link's peer cannot be the node itself ({node_id!r})")
        ltype = r.string("type", choices=LINK_TYPES)
        herald = r.string("herald", pattern=_NAME) if r.has("herald") else None
        if ltype == "K" and herald is None:
            raise r.fail("herald", "a K-type link names its herald (midpoint) station")
        if ltype == "M" and herald is not None:
            raise r.fail("herald", "only K-type links have a herald station")
        links.append(LinkConfig(link_id, peer, ltype, herald, r.key_file(
            "hmac_key_file", required="a K-type link's heralds and link-layer messages are "
                                      "signed with its key" if ltype == "K" else None)))
    return tuple(links)
