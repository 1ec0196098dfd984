"""Supervision (qnode.daemon.runtime.supervisor) against a real TC200 twin on a loopback TCP
socket: the instrument life cycle, calls on the instrument's own thread, reconnect after the
simulator restarts, device errors passed through, a hanging instrument not blocking the loop, a hung
instrument staying degraded (and counted) until it answers, a stream fault holding it degraded
across the reconnect, and role tasks restarted with back-off."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from qnode.daemon.runtime.supervisor import Backoff, InstrumentState, ManagedInstrument, Supervisor
from qnode.drivers.errors import DeviceError, Disconnected, InstrumentError, InstrumentTimeout
from qnode.drivers.tc200 import TC200
from qnode.hal_sim.twins.serve import TcpServer
from qnode.hal_sim.twins.tc200 import TC200Twin

from support.daemon_harness import until

S = InstrumentState
SETPOINT_C = 41.5


@pytest.fixture
def served():
    twin = TC200Twin(ambient_c=22.0, tau_heat_s=0.5, tau_cool_s=0.5)
    with TcpServer(twin, "tc200") as server:
        yield twin, server


def managed(server: TcpServer, *, timeout_s: float = 0.2, **kwargs) -> ManagedInstrument:
    def open_driver() -> TC200:
        return TC200(server.address, timeout_s=timeout_s, reconnect_attempts=1,
                     reconnect_backoff_s=0.01)

    def calibrate(driver: TC200) -> None:
        driver.set_temperature_c(SETPOINT_C)

    kwargs.setdefault("backoff_initial_s", 0.02)
    kwargs.setdefault("backoff_max_s", 0.2)
    return ManagedInstrument("tc200", open_driver, calibrate=calibrate, **kwargs)


class Running:
    """``async with Running(instr):`` runs ``instr.run()`` as a task, then cancels and closes."""

    def __init__(self, instr: ManagedInstrument):
        self.instr = instr
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> ManagedInstrument:
        self.task = asyncio.create_task(self.instr.run())
        return self.instr

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.instr.aclose()


def test_backoff_is_bounded_exponential_with_jitter():
    b = Backoff(0.1, 1.0, rng=lambda: 0.0)
    assert [round(b.next(), 6) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == pytest.approx(0.1)
    j = Backoff(0.1, 1.0)
    delays = [j.next() for _ in range(50)]
    assert all(0.05 - 1e-12 <= d <= 1.0 for d in delays)
    assert max(delays[10:]) <= 1.0 and min(delays[10:]) >= 0.5


@pytest.mark.asyncio
async def test_life_cycle_and_calls_run_on_the_instrument_thread(served):
    twin, server = served
    instr = managed(server)
    seen: list[tuple[S, S]] = []
    instr.state_listeners.append(lambda _i, old, new: seen.append((old, new)))
    assert instr.state is S.OFFLINE
    async with Running(instr):
        await instr.wait_for_state(S.READY, timeout=5)
        assert list(instr.state_history) == [S.OFFLINE, S.CONNECTING, S.CALIBRATING, S.READY]
        assert seen == [(S.OFFLINE, S.CONNECTING), (S.CONNECTING, S.CALIBRATING),
                        (S.CALIBRATING, S.READY)]
        assert twin.setpoint_c == SETPOINT_C  # calibrate ran against the twin
        assert server.requests[-1] == f"tset={SETPOINT_C:.1f}".encode()

        def read(driver: TC200) -> tuple[float, str]:
            return driver.temperature_c(), threading.current_thread().name

        temperature, thread = await instr.call(read)
        assert 20.0 < temperature < 50.0
        assert thread.startswith("instr-tc200")
        assert thread != threading.current_thread().name
        assert await instr.call(TC200.temperature_setpoint_c) == SETPOINT_C
        assert instr.failures == 0 and instr.reconnects == 0 and instr.last_error is None
    assert instr.state is S.OFFLINE
    with pytest.raises(Disconnected, match="closed"):
        await instr.call(TC200.temperature_c)


@pytest.mark.asyncio
async def test_simulator_restart_degrades_then_reconnects_to_ready(served):
    twin, server = served
    instr = managed(server)
    async with Running(instr):
        await instr.wait_for_state(S.READY, timeout=5)
        restarter = asyncio.create_task(asyncio.to_thread(server.restart, downtime_s=0.4))
        with pytest.raises((Disconnected, InstrumentTimeout)) as err:
            async with asyncio.timeout(5):
                while True:
                    await instr.call(TC200.temperature_c)
        assert err.value.instrument == "TC200 oven"
        assert instr.state is S.DEGRADED
        assert instr.failures >= 1 and instr.last_error
        with pytest.raises(Disconnected, match="not ready"):  # fail fast while the link is down
            await instr.call(TC200.temperature_c)
        await restarter
        await instr.wait_for_state(S.READY, timeout=5)
        assert instr.reconnects >= 1
        assert instr.reconnect_attempts >= instr.reconnects
        history = list(instr.state_history)
        i = history.index(S.DEGRADED)
        assert history[i:][-2:] == [S.CALIBRATING, S.READY]  # recalibrated after reconnecting
        assert await instr.call(TC200.temperature_setpoint_c) == SETPOINT_C
        assert await instr.call(TC200.identify) == "THORLABS TC200 VERSION 2.0"


@pytest.mark.asyncio
async def test_device_error_reaches_the_caller_and_the_state_stays_ready(served):
    twin, server = served
    instr = managed(server)
    async with Running(instr):
        await instr.wait_for_state(S.READY, timeout=5)
        twin.inject_error("CMD_ARG_RANGE_ERR")
        with pytest.raises(DeviceError) as err:
            await instr.call(TC200.set_temperature_c, 40.0)
        assert err.value.code == "CMD_ARG_RANGE_ERR"
        assert instr.state is S.READY
        assert instr.failures == 0 and instr.reconnects == 0
        assert await instr.call(TC200.temperature_setpoint_c) == SETPOINT_C
        with pytest.raises(ValueError):  # the caller's own error: passed through too
            await instr.call(TC200.set_temperature_c, 500.0)
        assert instr.state is S.READY


@pytest.mark.asyncio
async def test_a_hanging_instrument_does_not_block_the_loop(served):
    """While a call hangs on the instrument's thread, the event loop goes on: a ticker on the
    loop ticks before the call times out. Judged by what happened before what (no count in a
    wall-clock window): a blocked loop could not tick until the call returned."""
    twin, server = served
    timeout_s = 0.5
    instr = managed(server, timeout_s=timeout_s)
    async with Running(instr):
        await instr.wait_for_state(S.READY, timeout=5)
        loop = asyncio.get_running_loop()
        call_done = False
        ticks_while_hanging = 0

        async def ticker() -> None:
            nonlocal ticks_while_hanging
            while True:
                await asyncio.sleep(0.01)
                if not call_done:
                    ticks_while_hanging += 1

        tick = asyncio.create_task(ticker())
        server.faults.hang = True
        began = loop.time()
        with pytest.raises(InstrumentTimeout):
            await instr.call(TC200.temperature_c)
        call_done = True
        assert loop.time() - began >= 0.9 * timeout_s
        assert instr.state is S.DEGRADED
        assert ticks_while_hanging >= 1, "the event loop was blocked while the call hung"
        tick.cancel()
        await asyncio.gather(tick, return_exceptions=True)
        server.faults.clear()
        await instr.wait_for_state(S.READY, timeout=10)
        assert await instr.call(TC200.temperature_setpoint_c) == SETPOINT_C


@pytest.mark.asyncio
async def test_a_hung_instrument_stays_degraded_and_counted_until_it_answers(served):
    """No calibration and no health check: the driver's identify() probes it. Before, every
    timeout was followed by a reconnect that "succeeded" (the port opens) and READY, so a hung
    instrument looked ready most of the time."""
    twin, server = served

    def open_driver() -> TC200:
        return TC200(server.address, timeout_s=0.2, reconnect_attempts=1,
                     reconnect_backoff_s=0.01)

    instr = ManagedInstrument("tc200", open_driver, check_interval_s=0.05,
                              backoff_initial_s=0.02, backoff_max_s=0.2)
    async with Running(instr):
        await instr.wait_for_state(S.READY, timeout=30)
        assert server.requests[-1] == b"id?"  # READY once it answered, not once a port opened
        mark = len(instr.state_history)
        server.faults.hang = True
        await instr.wait_for_state(S.DEGRADED, timeout=30)
        await until(lambda: instr.failures >= 3, "three timed-out attempts counted")
        assert instr.reconnect_attempts >= 1
        assert "InstrumentTimeout" in (instr.last_error or "")
        assert S.READY not in list(instr.state_history)[mark:]
        server.faults.clear()
        await instr.wait_for_state(S.READY, timeout=30)
        assert await instr.call(TC200.identify) == "THORLABS TC200 VERSION 2.0"


@pytest.mark.asyncio
async def test_a_stream_fault_holds_degraded_across_the_reconnect_until_stream_ok(served):
    twin, server = served
    instr = managed(server)
    async with Running(instr):
        await instr.wait_for_state(S.READY, timeout=30)
        stalled = InstrumentTimeout("no tags for 5 s", instrument="tc200", address="stream")
        generation = instr.stream_failed(stalled)
        assert instr.state is S.DEGRADED and instr.failures == 1
        assert instr.stream_fault is stalled
        await instr.wait_up(generation, timeout=30)   # reconnected and calibrated again
        assert instr.reconnects == 1 and instr.state is S.DEGRADED
        assert await instr.call(TC200.temperature_setpoint_c) == SETPOINT_C  # usable meanwhile
        instr.stream_ok()
        assert instr.state is S.READY and instr.stream_fault is None


@pytest.mark.asyncio
async def test_health_check_link_error_reconnects(served):
    twin, server = served
    checks = threading.Event()

    def health(driver: TC200) -> None:
        checks.set()
        driver.status()

    instr = managed(server, health_check=health, check_interval_s=0.05)
    async with Running(instr):
        await instr.wait_for_state(S.READY, timeout=5)
        server.disconnect()  # the twin drops the connection; only the health check notices
        await instr.wait_for_state(S.DEGRADED, timeout=5)
        await instr.wait_for_state(S.READY, timeout=5)
        assert checks.is_set()
        assert instr.reconnects >= 1
        assert await instr.call(TC200.temperature_setpoint_c) == SETPOINT_C


@pytest.mark.asyncio
async def test_supervisor_restarts_failing_tasks_and_stops_quickly(served):
    twin, server = served
    sup = Supervisor(backoff_initial_s=0.02, backoff_max_s=0.1)
    reported: list[tuple[str, str, float]] = []
    sup.restart_listeners.append(lambda name, exc, delay: reported.append((name, str(exc), delay)))
    runs = 0
    settled = asyncio.Event()
    forever_cancelled = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"boom {runs}")
        settled.set()
        await asyncio.Event().wait()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            forever_cancelled.set()

    instr = sup.add_instrument(managed(server))
    sup.add_task("flaky", flaky)
    sup.add_task("forever", forever)
    assert not sup.healthy()
    await sup.start()
    assert await sup.wait_ready(timeout=5)
    assert sup.healthy() and instr.state is S.READY
    async with asyncio.timeout(5):
        await settled.wait()
    assert sup.restarts["flaky"] == 3 and runs == 4
    assert [r[1] for r in reported] == ["boom 1", "boom 2", "boom 3"]
    assert all(r[0] == "flaky" and 0 < r[2] <= 0.1 for r in reported)
    assert sup.last_errors["flaky"] == "RuntimeError: boom 3"
    assert sup.restarts["forever"] == 0

    assert await instr.call(TC200.temperature_setpoint_c) == SETPOINT_C
    tasks = sup.tasks()
    began = time.monotonic()
    await sup.stop()
    assert time.monotonic() - began < 2.0
    assert forever_cancelled.is_set()
    assert all(t.done() for t in tasks.values())
    assert instr.state is S.OFFLINE and not sup.healthy()
    assert not instr.driver.transport.is_open


@pytest.mark.asyncio
async def test_wait_ready_times_out_while_an_instrument_cannot_connect():
    attempts = 0

    def open_driver() -> TC200:
        nonlocal attempts
        attempts += 1
        raise Disconnected("nothing there", instrument="TC200 oven", address="nowhere")

    async with Supervisor(backoff_initial_s=0.01, backoff_max_s=0.05) as sup:
        instr = sup.add_instrument(ManagedInstrument(
            "oven", open_driver, backoff_initial_s=0.01, backoff_max_s=0.05))
        assert not await sup.wait_ready(timeout=0.3)
        assert not sup.healthy()
        assert instr.state is S.CONNECTING
        assert attempts >= 3 and instr.failures == attempts
        assert "nothing there" in (instr.last_error or "")
        with pytest.raises(InstrumentError, match="not ready"):
            await instr.call(TC200.temperature_c)
    assert instr.state is S.OFFLINE
