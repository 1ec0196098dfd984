"""Faults a lab sees at 3 a.m., reproduced on the real hal_sim ID900 over its real ZeroMQ
sockets (SCPI, DataLinkTarget, timestamp streams), with the daemon's own pieces: the
supervisor's managed instrument (built from an instrument config as the node builds it), the
tagger made by ``make_tagger`` and the acquisition pipeline, run as a role task the way the
herald station runs it (a stalled tagger used to look healthy).

* the tag stream is cut (``SimulatedID900.stall_streams``: nothing arrives, every socket stays
  open, SCPI and DLT still answer): the tagger is degraded, counted, logged, reconnected and its
  stream restarted; it stays degraded while the stream is silent, and is ready again (one more
  line) once tags flow;
* the instrument stops answering SCPI (a hang): errors_total grows and it stays degraded until
  it answers again, also while its tag stream flows;
* the instrument answers the stream restart with device errors: the tagger's own driver errors
  reach the instrument's errors_total instead of restarting the role;
* end to end, a whole analyzer node (in process, over a real mosquitto): its telemetry says the
  stalled tagger is degraded, with errors_total, and ready again once the tags are back.

Every wait is for an event (a state, a counter, a log line) with a generous timeout; nothing
asserts a duration or a count within a time window.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from qnode.daemon.acquisition.pipeline import AcquisitionPipeline
from qnode.daemon.bus.telemetry import unknown_fields
from qnode.daemon.node import Node
from qnode.daemon.runtime.config import ConfigError, InstrumentConfig, load_config, parse_config
from qnode.daemon.runtime.instruments import driver_factory, make_tagger
from qnode.daemon.runtime.supervisor import InstrumentState, ManagedInstrument, Supervisor
from qnode.hal_sim import BellDiagonalState, CWSource, Link, PhotonStreamSimulator, simple_node
from qnode.hal_sim.twins.id900 import SimulatedID900

from support.daemon_harness import identity_lines, node_config
from support.mosquitto import Mosquitto

S = InstrumentState
STALL_S = 2.0        # generous: a loaded machine must not stall a healthy stream by itself
WAIT_S = 30.0        # every wait for an event
ROLE = "herald:acquire"


def simulated_id900() -> SimulatedID900:
    link = Link(CWSource(pair_rate_hz=2e4), BellDiagonalState.werner(0.95),
                (simple_node("alice", (1, 2)), simple_node("bob", (3, 4), length_km=1.0)))
    return SimulatedID900(PhotonStreamSimulator(link, seed=7), "alice", pace=1.0)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait (polling) until ``condition()``; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


def since(instr: ManagedInstrument, mark: int) -> list[InstrumentState]:
    """The states the instrument went through after its ``mark``-th state change."""
    return list(instr.state_history)[mark:]


class Station:
    """The tagger's stream as the herald station runs it: a role task that waits for the
    instrument, makes the tagger from its config and reads the pipeline's events."""

    def __init__(self, instr: ManagedInstrument, cfg: InstrumentConfig):
        self.instr, self.cfg = instr, cfg
        self.pipeline: AcquisitionPipeline | None = None
        self.tags = 0
        self._tagged = asyncio.Event()

    async def acquire(self) -> None:
        await self.instr.wait_ready()
        tagger = make_tagger(self.cfg, self.instr.driver, (1, 2))
        self.pipeline = AcquisitionPipeline(
            tagger, pairs=[(1, 2)], window_ps=1_000, policy="block", instrument=self.instr,
            stall_s=self.cfg.stall_s, restart_initial_s=0.1, restart_max_s=1.0)
        async with self.pipeline:
            async for events in self.pipeline.events():
                if events.n_tags:
                    self.tags += events.n_tags
                    self._tagged.set()

    async def wait_tags(self) -> None:
        """Wait for a chunk with tags that arrives after this call."""
        self._tagged.clear()
        async with asyncio.timeout(WAIT_S):
            await self._tagged.wait()


@contextlib.asynccontextmanager
async def station(device: SimulatedID900
                  ) -> AsyncIterator[tuple[Supervisor, ManagedInstrument, Station]]:
    cfg = InstrumentConfig("tagger", "id900", device.scpi_address, timeout_s=0.5,
                           options={"dlt": device.dlt_address, "chunk_interval_s": 0.05},
                           stall_s=STALL_S)
    factory = driver_factory(cfg)
    assert factory is not None
    sup = Supervisor(backoff_initial_s=0.05, backoff_max_s=0.5)
    instr = sup.add_instrument(ManagedInstrument(
        "tagger", factory, check_interval_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.5))
    st = Station(instr, cfg)
    sup.add_task(ROLE, st.acquire)
    async with sup:
        await instr.wait_ready(timeout=WAIT_S)
        await st.wait_tags()
        yield sup, instr, st


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


TAGGER_CONFIG = """[node]
id = "a"
network = "t"
roles = ["analyzer"]
""" + identity_lines("a") + """state_dir = "{state}"
[broker]
url = "mqtt://127.0.0.1:1883"
[instruments.tagger]
kind = "id900"
address = "10.0.0.5"
{stall}
[instruments.tagger.options]
dlt = "10.0.0.6"
[[links]]
id = "m-ab"
peer = "b"
type = "M"
[analyzer]
tagger = "tagger"
"""


@pytest.mark.parametrize(("line", "stall_s"), [("", 5.0), ("stall_s = 0", 0.0),
                                                ("stall_s = 12.5", 12.5)])
def test_the_stall_timeout_is_configured_per_instrument(tmp_path, line, stall_s):
    cfg = parse_config(TAGGER_CONFIG.format(state=tmp_path, stall=line), "node.toml")
    assert cfg.instruments["tagger"].stall_s == stall_s


@pytest.mark.parametrize("line", ["stall_s = 0.1", "stall_s = -1", "stall_s = 5000",
                                  'stall_s = "5"'])
def test_a_bad_stall_timeout_is_refused_naming_the_key(tmp_path, line):
    with pytest.raises(ConfigError, match=r"node\.toml: instruments\.tagger\.stall_s: "):
        parse_config(TAGGER_CONFIG.format(state=tmp_path, stall=line), "node.toml")


@pytest.mark.asyncio
async def test_a_stalled_tag_stream_degrades_counts_logs_reconnects_and_recovers(caplog):
    caplog.set_level(logging.INFO, logger="qnode")
    with simulated_id900() as device:
        async with station(device) as (sup, instr, st):
            assert instr.state is S.READY and instr.failures == 0
            mark, reconnects = len(instr.state_history), instr.reconnects

            device.stall_streams(True)            # the tags stop; every socket stays open
            await instr.wait_for_state(S.DEGRADED, timeout=WAIT_S)
            assert instr.failures >= 1             # errors_total in telemetry
            assert (instr.last_error or "").startswith("StreamStalled")
            assert not sup.healthy()               # the node reports itself degraded
            (line,) = records(caplog, "tag stream stalled")[:1]
            assert line.levelno == logging.WARNING and not line.exc_info
            assert line.instrument == "tagger" and line.action == "reconnect"
            assert line.stalled_since.endswith("Z") and line.silent_s >= STALL_S
            assert "reconnecting it, then restarting the stream" in line.getMessage()

            # reconnected through the supervisor's path, the stream restarted: still silent,
            # so still degraded (a reconnect that opens a socket proves nothing)
            await until(lambda: instr.reconnects > reconnects, "the tagger reconnected")
            assert st.pipeline is not None
            await until(lambda: st.pipeline.stats.stream_restarts >= 1, "the stream restarted")
            await until(lambda: st.pipeline.stats.stalls >= 2, "a second stall reported")
            assert S.READY not in since(instr, mark)
            assert instr.state is S.DEGRADED and st.pipeline.stats.stalled

            device.stall_streams(False)           # the tags come back
            await instr.wait_for_state(S.READY, timeout=WAIT_S)
            await st.wait_tags()
            (back,) = records(caplog, "flowing again")
            assert back.levelno == logging.INFO and back.instrument == "tagger"
            assert back.state == "ready" and back.attempts >= 2
            assert not st.pipeline.stats.stalled
            assert sup.restarts[ROLE] == 0         # handled below the role: no role restart


@pytest.mark.asyncio
async def test_an_instrument_that_stops_answering_scpi_is_degraded_until_it_answers(caplog):
    caplog.set_level(logging.INFO, logger="qnode")
    with simulated_id900() as device:
        async with station(device) as (sup, instr, st):
            mark, failures = len(instr.state_history), instr.failures
            device.faults.hang = True              # SCPI requests are read, never answered
            await instr.wait_for_state(S.DEGRADED, timeout=WAIT_S)
            assert "InstrumentTimeout" in (instr.last_error or "")
            # every reconnect opens a fresh socket, and the check behind it times out again:
            # it stays degraded and every attempt is counted
            await until(lambda: instr.failures >= failures + 3, "three timeouts counted")
            assert S.READY not in since(instr, mark)
            await st.wait_tags()                   # the tag stream itself still flows

            device.faults.clear()
            await instr.wait_for_state(S.READY, timeout=WAIT_S)
            assert sup.healthy()
            await st.wait_tags()
            assert not records(caplog, "tag stream stalled")


@pytest.mark.asyncio
async def test_stream_restart_errors_reach_the_instrument_not_the_role(caplog):
    caplog.set_level(logging.INFO, logger="qnode")
    with simulated_id900() as device:
        async with station(device) as (sup, instr, st):
            device.stall_streams(True)
            await instr.wait_for_state(S.DEGRADED, timeout=WAIT_S)
            failures = instr.failures
            device.faults.device_error = 1_000_000  # every SCPI reply is an error reply now
            await until(lambda: records(caplog, "stream failed"), "a stream restart failed")
            failed = records(caplog, "stream failed")[0]
            assert failed.levelno == logging.WARNING and not failed.exc_info
            assert failed.instrument == "tagger"
            assert "device error" in failed.error
            assert instr.failures > failures
            assert instr.state is not S.READY

            device.faults.clear()
            device.stall_streams(False)
            await instr.wait_for_state(S.READY, timeout=WAIT_S)
            await st.wait_tags()
            assert sup.restarts[ROLE] == 0


@pytest.mark.asyncio
async def test_an_analyzer_node_reports_its_stalled_tagger_in_telemetry(tmp_path: Path,
                                                                        broker: Mosquitto):
    """The whole path: ``[instruments.tagger].stall_s`` → the analyzer role's pipeline → the
    supervisor → the telemetry record (``state``, ``instruments.tagger``)."""
    key = tmp_path / "m-ab.key"  # TAGS to the counter are signed with the link key (0600)
    key.touch(mode=0o600)
    key.write_text("stall-test-link-key-0123456789abcdef\n")
    with simulated_id900() as device:
        config = node_config(
            tmp_path / "analyzer.toml", node="zz-analyzer", roles=["analyzer"],
            broker_port=broker.port, state_dir=tmp_path / "state", telemetry_interval_s=0.2,
            body=f"""[instruments.tagger]
kind = "id900"
address = "{device.scpi_address}"
timeout_s = 0.5
stall_s = {STALL_S}
[instruments.tagger.options]
dlt = "{device.dlt_address}"

[[links]]
id = "m-ab"
peer = "aa-counter"
type = "M"
hmac_key_file = "{key}"

[analyzer]
tagger = "tagger"
channels = [1, 2]
window_ps = 1000
""")
        node = Node(load_config(config), handle_signals=False, ready_timeout_s=60)
        seen: list[dict[str, Any]] = []
        node.telemetry_listeners.append(seen.append)

        def latest(pred: Callable[[dict[str, Any]], bool]) -> Callable[[], bool]:
            return lambda: bool(seen) and pred(seen[-1])

        def tagger(r: dict[str, Any]) -> dict[str, Any]:
            return r["instruments"]["tagger"]

        run = asyncio.create_task(node.run())
        try:
            await asyncio.wait_for(node.wait_ready(), WAIT_S)
            await until(latest(lambda r: r.get("tags_total", 0) > 0), "tags streamed")
            assert seen[-1]["state"] == "ready" and tagger(seen[-1])["errors_total"] == 0

            device.stall_streams(True)
            await until(latest(lambda r: tagger(r)["state"] == "degraded"),
                        "telemetry: the tagger degraded")
            assert tagger(seen[-1])["errors_total"] >= 1
            assert seen[-1]["state"] == "degraded"

            device.stall_streams(False)
            tags = seen[-1].get("tags_total", 0)
            await until(latest(lambda r: tagger(r)["state"] == "ready" and r["state"] == "ready"
                               and r.get("tags_total", 0) > tags),
                        "telemetry: the tagger ready again, tags flowing")
            assert node.ctx is not None and sum(node.ctx.supervisor.restarts.values()) == 0
            assert not {f for r in seen for f in unknown_fields(r)}  # all in the schema
        finally:
            node.stop()
            await asyncio.wait_for(run, WAIT_S)
