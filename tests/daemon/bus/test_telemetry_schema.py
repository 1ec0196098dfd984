"""The telemetry schema (:mod:`qnode.daemon.bus.telemetry`) declares every field: each one the
Prometheus exporter reads and each one the node's producers put in a record. A field added to a
producer or to the exporter without its declaration (type, unit) fails here.

The producers run for real, in process: a K end with qubits and purification that accepted heralds,
a repeater's swapper and a path end, the application service, an M counter's polarisation
compensator, the bus's counters and a source with a fidelity model. Whole nodes' records are checked
where the tests make them: tests/system/test_demo.py (stations, memories with qubits and
purification, a repeater, a source, analyzers), tests/system/test_source_create.py (a source serving
CREATEs), tests/daemon/acquisition/test_faults.py (an analyzer node in process) and
tests/daemon/acquisition/test_cross_node_counting.py (an M counter's figures).
"""
from __future__ import annotations

import asyncio
import time
import types
from typing import Any

import numpy as np

from qnode.daemon.acquisition.polarisation_control import Measurement, PolarisationController
from qnode.daemon.apps.pools import LinkPool
from qnode.daemon.apps.service import AppService
from qnode.daemon.bus.client import NodeBus
from qnode.daemon.bus.envelope import Message as Envelope
from qnode.daemon.bus.telemetry import (
    AppsTelemetry,
    BusTelemetry,
    InstrumentHealth,
    LinkTelemetry,
    PathTelemetry,
    Telemetry,
    unknown_fields,
    validate,
)
from qnode.daemon.bus.topics import Topics
from qnode.daemon.klink.memory import LinkMemory, QubitPool
from qnode.daemon.klink.purification import Purifier
from qnode.daemon.klink.service import LinkService
from qnode.daemon.klink.swapping import PathEnd, Swapper
from qnode.daemon.linklayer import BELL_STATES, Epoch, HeraldStation
from qnode.daemon.quantum import estimators as est
from qnode.daemon.quantum.feu import FidelityEstimationUnit
from qnode.daemon.roles.source import SourceRole
from qnode.daemon.runtime.config import (
    ApplicationConfig,
    CompensationConfig,
    MemoryConfig,
    PathConfig,
    ServiceConfig,
    SourceConfig,
)
from qnode.daemon.tools.metrics import TelemetryCollector

from support.daemon_harness import link_context

#: where each part of a record is declared
SCHEMA: dict[str, type] = {"node": Telemetry, "link": LinkTelemetry, "path": PathTelemetry,
                           "bus": BusTelemetry, "instrument": InstrumentHealth,
                           "apps": AppsTelemetry}


def declared(cls: type) -> set[str]:
    """A TypedDict's fields, inherited and optional ones included."""
    return set(cls.__required_keys__) | set(cls.__optional_keys__)  # type: ignore[attr-defined]


# ------------------------------------------------------------------ what the exporter reads

class Reads(dict[str, Any]):
    """A record, or part of one, that notes every key looked up in it."""

    def __init__(self, seen: set[str], **items: Any):
        super().__init__(**items)
        self.seen = seen

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return super().__contains__(key)


def exporter_reads() -> dict[str, set[str]]:
    """The keys the Prometheus collector looks up, by part of the record, in one scrape."""
    seen: dict[str, set[str]] = {part: set() for part in SCHEMA}
    record = Reads(seen["node"], node="alice", roles=["memory"],
                   links={"alice-bob": Reads(seen["link"])},
                   paths={"alice-carol": Reads(seen["path"])},
                   bus=Reads(seen["bus"]), apps=Reads(seen["apps"], requests_live=1),
                   instruments={"tagger": Reads(seen["instrument"])})
    collector = TelemetryCollector()
    collector.update(record)  # type: ignore[arg-type]
    assert list(collector.collect())
    return seen


def test_every_field_the_exporter_reads_is_declared() -> None:
    seen = exporter_reads()
    # the probe sees the tables and the fields read outside them
    assert {"source_feu_rate_hz", "role_restarts_total"} <= seen["node"]
    assert {"purify_plan_fidelity", "purify_inputs_aborted_total", "herald_latency_ms_p99",
            "qber_y_ci_high", "polarisation_state", "purify_role"} <= seen["link"]
    assert {"role", "ends", "remote", "swaps_total"} <= seen["path"]
    assert {"rejected", "connected"} <= seen["bus"] and seen["instrument"]
    assert {"requests_waiting", "request_done_seconds", "pairs_delivered_total"} <= seen["apps"]
    missing = {part: sorted(keys - declared(SCHEMA[part])) for part, keys in seen.items()}
    assert not any(missing.values()), f"exported but not in the schema: {missing}"


# ------------------------------------------------------------------ what the producers report

class _Bus:
    """Publishes nowhere."""

    connected = True

    def defer_until_idle(self, work: Any) -> bool:
        return False

    def publish(self, topic: str, type: str, body: Any, **kw: Any) -> bool:
        return True


MEM = MemoryConfig(qdevice="qmem", readout_error=0.005, t1_s=5.0, t2_s=2.0)


def _memory(link: str) -> LinkMemory:
    """A link memory whose estimate rests on 300 test pairs per basis, one error each."""
    mem = LinkMemory(link, QubitPool("qmem", lambda: None, {}),  # type: ignore[arg-type,return-value]
                     test_fraction=0.1, readout_error=0.005, t1_s=5.0, t2_s=2.0,
                     prior_fidelity=0.9)
    for basis in ("X", "Y", "Z"):
        sign = est.BELL_SIGNS["phi+"][est.BASES.index(basis)]
        for i in range(300):
            ok, bad = ((0, 0), (0, 1)) if sign > 0 else ((0, 1), (0, 0))
            a, b = bad if i == 0 else ok
            mem.tomography.add(basis, "phi+", a, b, 0.005, 0.005)
    return mem


async def _k_end(ctx: Any, link: str, peer: str) -> LinkService:
    """A K end that took three herald batches of its station (epoch agreed with the peer)."""
    svc = LinkService(ctx, link, peer, "K", goodness=0.9)
    station = HeraldStation([link], epoch="00000000000000e1")
    for k in range(3):
        station.successes(link, np.arange(5) % len(BELL_STATES),
                          k * 10**6 + np.arange(5, dtype=np.int64))
        (h,) = station.flush(k)
        await svc.on_herald(Envelope("HERALD", "station", k + 1, h.to_dict(), time.time(),
                                     signed=True))
        if k == 0:
            ep = Epoch(link, "00000000000000e1", svc.end.expected_abs, None)
            await svc.on_peer_message(Envelope("EPOCH", peer, 1, ep.to_dict(), time.time(),
                                               signed=True), ep)
    return svc


def _record_of_memory_node() -> Telemetry:
    """alice: a K end with qubits and purification, the end of a path; and, as a repeater
    would, a swapper over two links."""

    async def build() -> Telemetry:
        ctx = link_context("alice", _Bus())
        svc = await _k_end(ctx, "alice-rep", "rep")
        svc.attach_memory(_memory("alice-rep"))
        assert svc.memory is not None
        purifier = Purifier(ctx, svc, svc.memory, MEM)
        purifier.last_plan = purifier.plan(0.95)
        assert purifier.last_plan is not None
        purifier.delivered_fidelity.append(0.96)
        path = PathConfig("alice-carol", ("alice", "rep", "carol"), ("alice-rep", "rep-carol"))
        end = PathEnd(ctx, path, svc, svc.memory, MEM)
        end.delivered_fidelity.append(0.8)
        other = await _k_end(link_context("alice", _Bus()), "rep-carol", "carol")
        other.attach_memory(_memory("rep-carol"))
        swapper = Swapper(ctx, path, (svc, other), (svc.memory, other.memory), MEM)
        swapper.outcomes["01"] += 1
        swapper.last_fidelity = 0.85
        link = svc.telemetry(1.0)
        for key in ("herald_age_s", "station_epoch", "herald_latency_ms_p50",
                    "herald_handling_ms_p99", "qber_y_ci_low", "fidelity_sigma",
                    "tests_per_basis", "purify_plan_pairs_per_output",
                    "purify_delivered_fidelity_mean"):
            assert key in link, key  # every optional branch of these producers ran
        apps = AppService(ctx, ServiceConfig({"keyapp": ApplicationConfig("keyapp",
                                                                          purposes=(7,))}),
                          [LinkPool(svc, svc.memory, "alice")])
        apps.listening[7] = "keyapp"
        apps.first_pair_s.observe(0.02)
        apps.done_s.observe(0.5)
        apps.outcomes["done"] += 1
        apps.refused["bad_request"] += 1
        apps.pairs_delivered["keyapp"] += 3
        return {"node": "alice", "roles": ["memory"], "t": time.time(), "uptime_s": 1.0,
                "apps": apps.telemetry(), "links": {"alice-rep": link},
                "paths": {"alice-carol": end.telemetry(), "rep-x": swapper.telemetry()},
                "bus": NodeBus(Topics("t", "alice"), "127.0.0.1").metrics()}

    return asyncio.run(build())


def _record_of_counter_link() -> Telemetry:
    """An M counter's compensator after a recalibration, measured and locked."""

    async def move(angle_deg: float) -> float:
        return angle_deg

    ctl = PolarisationController(CompensationConfig(compensator="hwp2", enabled=True),
                                 move=move, meter=None, link="m-ab")  # type: ignore[arg-type]
    ctl.reference = Measurement(0.97, 0.002, 100_000, 1.0, 10.0)
    ctl.window = Measurement(0.96, 0.002, 100_000, 1.0, 10.0)
    ctl.last_recalibration_s = 4.5
    link: LinkTelemetry = {"type": "M", "peer": "analyzer-b", "role": "counter",
                           **ctl.telemetry()}
    return {"node": "analyzer-a", "roles": ["analyzer"], "t": time.time(), "uptime_s": 1.0,
            "links": {"m-ab": link}}


def _record_of_source() -> Telemetry:
    """A source with a fidelity model (FEU) that served a CREATE."""
    feu = FidelityEstimationUnit(brightness_hz_per_mw=1e6, efficiency_a=0.3, efficiency_b=0.25,
                                 window_ps=4000, visibility=0.95, max_power_mw=200.0)
    cfg = SourceConfig(pump="pump", oven="oven", feu=feu)
    ctx = types.SimpleNamespace(config=types.SimpleNamespace(
        source=cfg, instruments={"pump": types.SimpleNamespace(kind="ibeam")}))
    role = SourceRole(ctx)  # type: ignore[arg-type]
    role.pump_power_mw, role.oven_temperature_c = 12.5, 35.0
    role.chosen = feu.detail(12.5)
    record: Telemetry = {"node": "source", "roles": ["source"], "t": time.time(),
                         "uptime_s": 1.0}
    role.fill_telemetry(record, 1.0)
    assert "source_feu_power_mw" in record
    return record


def test_every_field_the_producers_report_is_declared() -> None:
    for record in (_record_of_memory_node(), _record_of_counter_link(), _record_of_source()):
        validate(record)
        missing = unknown_fields(record)
        assert not missing, f"{record['node']} reports fields not in the schema: {missing}"


def test_an_undeclared_field_is_found_wherever_it_is() -> None:
    record: dict[str, Any] = {
        "node": "a", "roles": [], "t": 0.0, "uptime_s": 0.0, "brightness": 1.0,
        "links": {"l": {"type": "K", "qber_w": 0.1}}, "paths": {"p": {"role": "end", "x": 1}},
        "bus": {"acked": 1, "lost": 2}, "instruments": {"i": {"kind": "id900", "temp": 3}},
        "g2": {"bin_ps": 100, "peak": 3}, "singles_hz": {"1": 5.0}, "link_rejected": {"r": 1}}
    assert unknown_fields(record) == ["brightness", "bus.lost", "g2.peak", "instruments.i.temp",
                                      "links.l.qber_w", "paths.p.x"]
