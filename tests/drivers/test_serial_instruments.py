"""Serial instrument drivers (ELL14, TC200, iBeam smart) against their hal_sim twins, over real
ptys and loopback sockets, through the real transport."""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from qnode.drivers.elliptec import Elliptec
from qnode.drivers.errors import DeviceError, Disconnected, GarbledReply, InstrumentTimeout
from qnode.drivers.ibeam import IBeamSmart
from qnode.drivers.tc200 import TC200
from qnode.hal_sim import BellDiagonalState, CWSource, Link, PhotonStreamSimulator, simple_node
from qnode.hal_sim.physics.coupling import (
    WaveplateMount,
    apply_instruments,
    phase_matching_efficiency,
    waveplate_analyzer_vector,
)
from qnode.hal_sim.twins.elliptec import ElliptecTwin
from qnode.hal_sim.twins.ibeam import ERR_RANGE, IBeamSmartTwin
from qnode.hal_sim.twins.serve import PtyServer, TcpServer
from qnode.hal_sim.twins.tc200 import TC200Twin

TIMEOUT_S = 0.2


@dataclass
class Device:
    """How to build, probe and fault one instrument in the generic tests."""

    twin: Callable[[], Any]
    driver: Callable[[str], Any]
    probes: tuple[tuple[Callable[[Any], Any], Any], tuple[Callable[[Any], Any], Any]]
    inject: Callable[[Any], None]
    code: int | str
    failing: Callable[[Any], Any]  # the call that meets the injected device error


DEVICES = {
    "ell14": Device(
        twin=lambda: ElliptecTwin(speed_deg_s=3600.0, angle_deg=30.0),
        driver=lambda a: Elliptec(a, timeout_s=TIMEOUT_S, move_timeout_s=2.0),
        probes=((lambda d: round(d.position_deg(), 2), 30.0), (lambda d: d.status(), 0)),
        inject=lambda tw: tw.inject_error(2),
        code=2,
        failing=lambda d: d.move_absolute_deg(40.0)),
    "tc200": Device(
        twin=lambda: TC200Twin(setpoint_c=35.0),
        driver=lambda a: TC200(a, timeout_s=TIMEOUT_S),
        probes=((lambda d: d.temperature_setpoint_c(), 35.0),
                (lambda d: d.identify(), "THORLABS TC200 VERSION 2.0")),
        inject=lambda tw: tw.inject_error("CMD_ARG_RANGE_ERR"),
        code="CMD_ARG_RANGE_ERR",
        failing=lambda d: d.set_temperature_c(40.0)),
    "ibeam": Device(
        twin=IBeamSmartTwin,
        driver=lambda a: IBeamSmart(a, timeout_s=TIMEOUT_S),
        probes=((lambda d: d.identify(), "iBPs-001A01-05"), (lambda d: d.emission_on(), False)),
        inject=lambda tw: tw.inject_error(ERR_RANGE),
        code="%SYS-E-002",
        failing=lambda d: d.set_power_mw(5.0)),
}


@pytest.fixture(params=sorted(DEVICES))
def served(request):
    """(device spec, twin, pty server, driver) for each instrument."""
    spec = DEVICES[request.param]
    twin = spec.twin()
    with PtyServer(twin, request.param) as server:
        driver = spec.driver(server.address)
        yield spec, twin, server, driver
        driver.close()


def probe_ok(spec: Device, driver) -> None:
    for call, expected in spec.probes:
        assert call(driver) == expected


# ------------------------------------------------------------------ faults, every device

def test_normal_probes(served):
    spec, _, _, driver = served
    probe_ok(spec, driver)


def test_slow_reply_times_out_and_the_late_answer_is_discarded(served):
    spec, _, server, driver = served
    server.faults.delay_s = 1.5 * TIMEOUT_S
    with pytest.raises(InstrumentTimeout):
        spec.probes[0][0](driver)
    server.faults.clear()
    probe_ok(spec, driver)
    probe_ok(spec, driver)


def test_dropped_reply_times_out_then_recovers(served):
    spec, _, server, driver = served
    server.faults.drop = 1
    with pytest.raises(InstrumentTimeout) as err:
        spec.probes[1][0](driver)
    assert err.value.instrument == driver.instrument
    probe_ok(spec, driver)


def test_truncated_reply_times_out_with_the_partial_reply(served):
    spec, _, server, driver = served
    server.faults.truncate = 1
    with pytest.raises(InstrumentTimeout, match="partial reply"):
        spec.probes[0][0](driver)
    probe_ok(spec, driver)


def test_garbled_but_framed_reply_raises_garbled_then_recovers(served):
    spec, _, server, driver = served
    server.faults.garble = 1
    with pytest.raises(GarbledReply) as err:
        spec.probes[0][0](driver)
    assert err.value.reply
    probe_ok(spec, driver)


def test_hang_times_out_every_call_until_cleared(served):
    spec, _, server, driver = served
    server.faults.hang = True
    for _ in range(2):
        with pytest.raises(InstrumentTimeout):
            spec.probes[0][0](driver)
    server.faults.clear()
    probe_ok(spec, driver)


def test_unplugged_raises_disconnected(served):
    spec, _, server, driver = served
    server.disconnect()
    with pytest.raises(Disconnected):
        spec.probes[0][0](driver)
    assert not driver.transport.is_open


def test_device_error_carries_the_device_code_then_recovers(served):
    spec, twin, _, driver = served
    spec.inject(twin)
    with pytest.raises(DeviceError) as err:
        spec.failing(driver)
    assert err.value.code == spec.code
    if isinstance(twin, ElliptecTwin):
        assert driver.status() == 2  # the latched fault is read once, then cleared
    probe_ok(spec, driver)


def test_two_threads_on_one_driver_are_serialised(served):
    spec, _, server, driver = served
    errors: list[str] = []

    def worker(k: int) -> None:
        call, expected = spec.probes[k]
        for i in range(15):
            got = call(driver)
            if got != expected:
                errors.append(f"thread {k} call {i}: {got!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


@pytest.mark.parametrize("name", sorted(DEVICES))
def test_reconnect_after_the_simulator_restarts(name):
    spec = DEVICES[name]
    twin = spec.twin()
    with TcpServer(twin, name) as server:
        driver = spec.driver(server.address)
        driver.transport.reconnect_attempts = 20
        driver.transport.reconnect_backoff_s = 0.05
        probe_ok(spec, driver)
        restarter = threading.Thread(target=server.restart, kwargs={"downtime_s": 0.3})
        restarter.start()
        with pytest.raises((Disconnected, InstrumentTimeout)):
            for _ in range(50):
                spec.probes[0][0](driver)
        restarter.join()
        if isinstance(twin, IBeamSmartTwin):
            twin.power_cycle()  # echo and prompt back on: reconnect must re-initialise
        driver.reconnect()
        probe_ok(spec, driver)
        driver.close()


# ------------------------------------------------------------------ ELL14

@pytest.fixture
def ell():
    twin = ElliptecTwin(speed_deg_s=3600.0)
    with PtyServer(twin, "ell14") as server:
        with Elliptec(server.address, timeout_s=TIMEOUT_S, move_timeout_s=2.0) as driver:
            yield twin, server, driver


def test_ell14_identify_and_scale_from_the_in_reply(ell):
    twin, server, driver = ell
    info = driver.identify()
    assert (info.model, info.travel, info.pulses_per_travel) == (14, 360, 143360)
    assert info.serial_no == "11400517" and info.year == 2023
    assert driver.pulses_per_deg == pytest.approx(143360 / 360)
    assert server.requests[0] == b"0in"


def test_ell14_moves_and_position(ell):
    twin, server, driver = ell
    step = 1 / driver.pulses_per_deg
    assert driver.move_absolute_deg(45.0) == pytest.approx(45.0, abs=step)
    assert server.requests[-1] == b"0ma00004600"  # 45° · 398.22 pulses/deg = 17920 = 0x4600
    assert twin.angle_deg == pytest.approx(45.0, abs=step)
    assert driver.move_relative_deg(-10.0) == pytest.approx(35.0, abs=step)
    assert server.requests[-1] == b"0mr" + f"{-3982 & 0xFFFFFFFF:08X}".encode()
    assert driver.position_deg() == pytest.approx(35.0, abs=step)
    assert driver.home() == 0.0
    assert server.requests[-1] == b"0ho0"
    assert driver.status() == 0


def test_ell14_scale_is_not_hard_coded():
    twin = ElliptecTwin(pulses_per_rev=262144, speed_deg_s=3600.0)
    with PtyServer(twin, "ell") as server, Elliptec(server.address, timeout_s=TIMEOUT_S) as d:
        d.move_absolute_deg(90.0)
        assert twin.position_pulses == 65536
        assert d.position_deg() == pytest.approx(90.0)


def test_ell14_move_takes_time_proportional_to_distance():
    twin = ElliptecTwin(speed_deg_s=360.0)
    with PtyServer(twin, "ell") as server, Elliptec(server.address, timeout_s=TIMEOUT_S) as d:
        seen: list[float] = []
        watcher = threading.Timer(0.12, lambda: seen.append(twin.angle_deg))
        watcher.start()
        t0 = time.monotonic()
        d.move_absolute_deg(90.0)  # 90° at 360°/s: 0.25 s, silent until done
        elapsed = time.monotonic() - t0
        watcher.join()
        assert 0.25 <= elapsed < 0.4
        assert twin.moves[-1][2] == pytest.approx(0.25, rel=1e-3)
        assert 20.0 < seen[0] < 70.0  # mid-move the plate is in between


def test_ell14_other_bus_address_is_ignored(ell):
    twin, _, driver = ell
    assert twin.handle(b"3gs") is None  # another stage's request on the shared bus
    assert driver.status() == 0


# ------------------------------------------------------------------ TC200

@pytest.fixture
def oven():
    twin = TC200Twin(tau_heat_s=0.5, tau_cool_s=0.5, ambient_c=22.0)
    with PtyServer(twin, "tc200") as server:
        with TC200(server.address, timeout_s=TIMEOUT_S) as driver:
            yield twin, server, driver


def test_tc200_set_and_read(oven):
    twin, server, driver = oven
    assert driver.identify() == "THORLABS TC200 VERSION 2.0"
    driver.set_temperature_c(45.3)
    assert server.requests[-1] == b"tset=45.3"
    assert driver.temperature_setpoint_c() == 45.3
    assert driver.temperature_c() == pytest.approx(22.0, abs=0.05)
    driver.set_pid(p=120, i=5, d=2)
    assert driver.pid() == (120, 5, 2)
    driver.set_max_power_w(9.5)
    assert driver.max_power_w() == 9.5
    driver.set_max_temperature_c(50.0)
    assert driver.max_temperature_c() == 50.0
    with pytest.raises(DeviceError) as err:  # above tmax: the controller refuses
        driver.set_temperature_c(60.0)
    assert err.value.code == "CMD_ARG_RANGE_ERR"
    with pytest.raises(DeviceError) as err:
        driver._exchange("bogus?", expect_response=True)
    assert err.value.code == "CMD_NOT_DEFINED"


def test_tc200_output_is_a_toggle_read_status_first(oven):
    twin, server, driver = oven
    st = driver.status()
    assert (st.output_enabled, st.unit, st.sensor, st.alarm) == (False, "C", "TH10K", False)
    driver.enable_output()
    driver.enable_output()  # already on: no second toggle
    assert twin.output_enabled and driver.output_enabled()
    assert server.requests.count(b"ens") == 1
    driver.disable_output()
    driver.disable_output()
    assert not twin.output_enabled
    assert server.requests.count(b"ens") == 2
    twin.alarm = True
    assert driver.status().alarm
    with pytest.raises(DeviceError) as err:
        driver.enable_output()
    assert err.value.code == "ALARM" and not twin.output_enabled


def test_tc200_temperature_follows_the_set_point_with_its_time_constant(oven):
    twin, _, driver = oven
    driver.set_temperature_c(62.0)
    driver.enable_output()
    t_on = time.monotonic()
    time.sleep(0.5)
    temp = driver.temperature_c()
    elapsed = time.monotonic() - t_on
    tau_est = -elapsed / math.log((62.0 - temp) / (62.0 - 22.0))
    assert tau_est == pytest.approx(0.5, rel=0.1)
    driver.disable_output()
    time.sleep(0.3)
    assert twin.temperature_c < temp  # relaxing to ambient
    twin.optimum_c = twin.temperature_c
    assert twin.phase_matching() == pytest.approx(1.0, abs=1e-3)


# ------------------------------------------------------------------ iBeam smart

@pytest.fixture
def laser():
    twin = IBeamSmartTwin(tau_power_s=0.02, max_power_uw=50_000.0)
    with PtyServer(twin, "ibeam") as server:
        with IBeamSmart(server.address, timeout_s=TIMEOUT_S) as driver:
            yield twin, server, driver


def test_ibeam_init_sequence(laser):
    twin, server, driver = laser
    assert server.requests[:3] == [b"echo off", b"prom off", b"talk usual"]
    assert not twin.echo and not twin.prompt
    assert driver.serial_number() == "iBEAM-SMART-405-S-12345"


def test_ibeam_emission_and_power(laser):
    twin, server, driver = laser
    driver.set_power_mw(10.0)
    assert server.requests[-1] == b"ch 2 pow 10000.000000 mic"
    driver.enable_channel(2)
    assert driver.channel_enabled(2) and not driver.channel_enabled(1)
    assert driver.power_mw() == 0.0
    driver.laser_on()
    assert driver.emission_on() and twin.emission_on
    time.sleep(0.2)  # 10 time constants
    assert driver.power_mw() == pytest.approx(10.0, abs=0.002)
    assert twin.power_mw == pytest.approx(10.0, rel=1e-3)
    assert driver.temperature_c() == pytest.approx(25.0, abs=0.1)
    assert 22.0 <= driver.system_temperature_c() < 23.0
    assert driver.current_ma() == pytest.approx(35.0 + 10.0 / 0.8, abs=0.1)
    with pytest.raises(DeviceError) as err:  # beyond this laser's 50 mW
        driver.set_power_mw(100.0)
    assert err.value.code == "%SYS-E-002"
    driver.shutdown()
    assert not driver.emission_on() and not driver.channel_enabled(2)
    time.sleep(0.2)
    assert twin.power_mw == pytest.approx(0.0, abs=1e-3)


def test_ibeam_unknown_command_is_a_device_error(laser):
    _, _, driver = laser
    with pytest.raises(DeviceError) as err:
        driver._setting("frobnicate")
    assert err.value.code == "%SYS-E-001"
    assert driver.identify() == "iBPs-001A01-05"


# ------------------------------------------------------------------ coupling to the photon stream

def _sim() -> PhotonStreamSimulator:
    link = Link(CWSource(pair_rate_hz=1e5), BellDiagonalState.werner(1.0, "phi+"),
                (simple_node("alice", (1, 2)), simple_node("bob", (3, 4))))
    return PhotonStreamSimulator(link, seed=3, slice_ps=1_000_000_000)


def test_waveplate_convention():
    assert waveplate_analyzer_vector(0.0) == pytest.approx((0, 0, 1))      # H
    assert waveplate_analyzer_vector(22.5) == pytest.approx((1, 0, 0))     # D
    assert waveplate_analyzer_vector(45.0) == pytest.approx((0, 0, -1))    # V
    assert phase_matching_efficiency(45.0) == 1.0
    assert phase_matching_efficiency(46.0) == pytest.approx(0.5, rel=1e-6)  # FWHM 2 °C


def test_rotating_a_waveplate_changes_the_correlation_as_cos_2_delta():
    alice, bob = ElliptecTwin(speed_deg_s=3600.0), ElliptecTwin(speed_deg_s=3600.0)
    sim = _sim()
    mounts = (WaveplateMount("alice", "a", alice), WaveplateMount("bob", "a", bob))
    with PtyServer(bob, "bob-hwp") as server, Elliptec(server.address, timeout_s=TIMEOUT_S) as d:
        for hwp_deg in (0.0, 11.25, 22.5, 45.0):
            d.move_absolute_deg(hwp_deg)
            apply_instruments(sim, waveplates=mounts)
            delta = math.radians(2 * bob.angle_deg)  # polarisation analysed turns by 2θ
            assert sim.expected_correlation("a", "a") == pytest.approx(math.cos(2 * delta),
                                                                       abs=1e-3)
    assert sim.expected_correlation("a", "a") == pytest.approx(-1.0, abs=1e-3)


def test_oven_and_pump_set_the_pair_rate():
    oven, pump = TC200Twin(optimum_c=45.0, fwhm_c=2.0), IBeamSmartTwin(tau_power_s=1e-3)
    pump.emission = True
    pump.channel_enabled[2] = True
    pump.channel_power_uw[2] = 10_000.0
    time.sleep(0.02)
    sim = _sim()
    oven.optimum_c = oven.temperature_c + 1.0  # half a FWHM off: η = 1/2
    applied = apply_instruments(sim, oven=oven, pump=pump, brightness_hz_per_mw=1e5)
    assert applied["phase_matching"] == pytest.approx(0.5, rel=1e-3)
    assert applied["pair_rate_hz"] == pytest.approx(5e5, rel=1e-3)
    assert sim.link.source.pair_rate_hz == pytest.approx(5e5, rel=1e-3)
    for _ in sim.stream(duration_ps=20_000_000_000):  # 20 ms: ~1e4 pairs
        pass
    assert sim.truth.pairs_emitted == pytest.approx(1e4, rel=0.05)
