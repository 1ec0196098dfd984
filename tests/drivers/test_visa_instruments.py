"""ITC4001 (SCPI over VISA) and Single Quantum SNSPD drivers against their hal_sim twins, over
real loopback TCP: normal use, every injected fault, recovery, and two threads on one
instrument."""
from __future__ import annotations

import math
import os
import socket
import threading
import time

import pytest

from qnode.drivers.errors import DeviceError, Disconnected, GarbledReply, InstrumentTimeout
from qnode.drivers.itc4001 import Itc4001
from qnode.drivers.single_quantum import SingleQuantum
from qnode.drivers.visa import VisaTransport, resource_manager
from qnode.hal_sim.twins.itc4001 import Itc4001Sim, serve_itc4001
from qnode.hal_sim.twins.single_quantum import SingleQuantumSim, SingleQuantumTwin

TIMEOUT = 0.2


# ---------------------------------------------------------------- ITC4001 over pyvisa-py


class ManualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def itc_server():
    server = serve_itc4001(Itc4001Sim(tau_s=0.05))
    yield server
    server.stop()


def resource(server) -> str:
    return f"TCPIP::127.0.0.1::{server.port}::SOCKET"


def itc(server, **kw) -> Itc4001:
    kw.setdefault("timeout_s", TIMEOUT)
    return Itc4001.over_visa(resource(server), **kw)


def test_itc_normal_use_tec_first_then_ld_and_reverse(itc_server):
    sim = itc_server.device
    # no timeout is wanted here: a reply timeout a host loaded by other processes keeps
    with itc(itc_server, timeout_s=2.0) as dev:
        ident = dev.identify()
        assert (ident.manufacturer, ident.model) == ("Thorlabs", "ITC4001")
        assert not dev.interlock_tripped and not dev.keylock_tripped
        dev.switch_on(current_a=0.1, temperature_c=20.0, window_c=0.05, settle_timeout_s=5,
                      poll_s=0.02)
        assert dev.ld_on and dev.tec_on
        assert abs(dev.temperature_c - 20.0) <= 0.05
        assert dev.ld_current_setpoint_a == pytest.approx(0.1)
        assert dev.ld_current_a == pytest.approx(0.1)
        assert dev.photodiode_power_w == pytest.approx(sim.pd_coupling * 0.5 * (0.1 - 0.02))
        dev.switch_off()
        assert not dev.ld_on and not dev.tec_on
    sent = [r.decode() for r in itc_server.requests if b"STAT " in r]
    assert sent == ["OUTP2:STAT ON", "OUTP1:STAT ON", "OUTP1:STAT OFF", "OUTP2:STAT OFF"]


def test_itc_tec_time_model_is_first_order():
    clock = ManualClock()
    server = serve_itc4001(Itc4001Sim(ambient_c=25.0, tau_s=2.0, clock=clock))
    try:
        with itc(server) as dev:
            dev.set_temperature(20.0)
            assert dev.temperature_c == pytest.approx(25.0)  # TEC off: stays at ambient
            dev.set_tec(True)
            for t in (1.0, 2.0, 6.0):
                clock.t = t
                assert dev.temperature_c == pytest.approx(20.0 + 5.0 * math.exp(-t / 2.0),
                                                          abs=1e-4)
            with pytest.raises(InstrumentTimeout, match="not within"):
                dev.wait_for_temperature(window_c=0.01, timeout_s=0.1, poll_s=0.02)
            dev.set_tec(False)  # relaxes back to ambient
            clock.t = 6.0 + 2.0
            expected = 25.0 + (20.0 + 5.0 * math.exp(-3.0) - 25.0) * math.exp(-1.0)
            assert dev.temperature_c == pytest.approx(expected, abs=1e-4)
    finally:
        server.stop()


def test_itc_device_errors_carry_the_code(itc_server):
    sim = itc_server.device
    with itc(itc_server) as dev:
        with pytest.raises(DeviceError) as err:
            dev.set_ld(True)  # TEC off: the controller refuses
        assert err.value.code == -221 and err.value.command == "OUTP1:STAT ON"
        assert "TEC output is off" in str(err.value)
        assert not dev.ld_on
        with pytest.raises(DeviceError) as err:
            dev.set_ld_current(5.0)
        assert err.value.code == -222
        sim.open_interlock()
        dev.set_tec(True)
        assert dev.interlock_tripped
        with pytest.raises(DeviceError, match="interlock open"):
            dev.set_ld(True)
        sim.close_interlock()
        dev.set_ld(True)
        sim.inject_error(-310, "System error")
        with pytest.raises(DeviceError) as err:
            dev.set_ld_current(0.05)
        assert err.value.code == -310
        assert dev.errors() == []  # the queue was drained


def test_itc_late_reply_is_never_taken_for_the_next_one(itc_server):
    with itc(itc_server) as dev:
        dev.set_temperature(21.0)
        itc_server.faults.delay_s = 0.3
        with pytest.raises(InstrumentTimeout) as err:
            dev.identify()
        assert err.value.command == "*IDN?"
        itc_server.faults.clear()
        assert dev.temperature_setpoint_c == pytest.approx(21.0)  # not the late *IDN? reply
        assert dev.identify().model == "ITC4001"


def test_itc_dropped_reply_times_out_and_recovers(itc_server):
    with itc(itc_server) as dev:
        itc_server.faults.drop = 1
        with pytest.raises(InstrumentTimeout):
            dev.temperature_c  # noqa: B018
        assert dev.identify().model == "ITC4001"


def test_itc_garbled_reply_is_rejected_and_the_link_recovers(itc_server):
    with itc(itc_server) as dev:
        itc_server.faults.garble = 1
        with pytest.raises(GarbledReply) as err:
            dev.temperature_c  # noqa: B018
        assert err.value.command == "MEAS:SCAL:TEMP?"
        itc_server.faults.garble = 1
        with pytest.raises(GarbledReply):
            dev.identify()
        assert dev.temperature_c == pytest.approx(25.0, abs=0.01)
        assert dev.identify().serial == "M00000001"


def test_itc_hang_times_out_then_is_taken_for_a_lost_link(itc_server):
    with itc(itc_server, reconnect_attempts=5, reconnect_backoff_s=0.02) as dev:
        itc_server.faults.hang = True
        with pytest.raises(InstrumentTimeout):
            dev.identify()
        with pytest.raises(Disconnected, match="2 timeouts in a row"):
            dev.identify()
        assert not dev.transport.is_open
        itc_server.faults.clear()
        dev.transport.reconnect()
        assert dev.identify().model == "ITC4001"


def test_itc_disconnect_is_detected_and_reconnect_restores(itc_server):
    with itc(itc_server, reconnect_attempts=5, reconnect_backoff_s=0.02) as dev:
        assert dev.identify().model == "ITC4001"
        itc_server.disconnect()
        time.sleep(0.05)
        with pytest.raises(Disconnected):
            dev.identify()
        dev.transport.reconnect()
        assert dev.identify().model == "ITC4001"


def test_itc_reconnect_after_the_simulator_restarts(itc_server):
    with itc(itc_server, reconnect_attempts=30, reconnect_backoff_s=0.05) as dev:
        dev.set_temperature(22.0)
        restarter = threading.Thread(target=itc_server.restart, kwargs={"downtime_s": 0.3})
        restarter.start()
        with pytest.raises((Disconnected, InstrumentTimeout)):
            for _ in range(100):
                dev.identify()
                time.sleep(0.01)
        time.sleep(0.1)  # the old listener is closed by now (the port refuses connections)
        dev.transport.reconnect()  # retries while the port is closed
        restarter.join()
        assert dev.temperature_setpoint_c == pytest.approx(22.0)  # same device state


def test_visa_open_on_a_closed_port_raises_disconnected():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t = VisaTransport(f"TCPIP::127.0.0.1::{port}::SOCKET", instrument="nobody",
                      timeout_s=TIMEOUT, reconnect_attempts=2, reconnect_backoff_s=0.01)
    with pytest.raises(Disconnected, match="cannot open"):
        t.open()
    with pytest.raises(Disconnected, match="reconnect failed after 2 attempts"):
        t.reconnect()


def test_visa_one_resource_manager_per_backend():
    assert resource_manager("@py") is resource_manager("@py")


def test_itc_two_threads_are_serialised(itc_server):
    with itc(itc_server, timeout_s=1.0) as dev:
        errors: list[str] = []

        def identities() -> None:
            for _ in range(30):
                if dev.identify().model != "ITC4001":
                    errors.append("idn")

        def setpoints(k: int) -> None:
            for i in range(15):
                value = 0.01 * (k + 1) + 0.0001 * i
                with dev.transport.lock:  # a transaction: set then read back
                    dev.set_ld_current(value)
                    got = dev.ld_current_setpoint_a
                if got != pytest.approx(value):
                    errors.append(f"{k}: set {value} read {got}")

        threads = [threading.Thread(target=identities),
                   *(threading.Thread(target=setpoints, args=(k,)) for k in range(2))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []


def test_itc_identity_through_pyvisa_sim_yaml():
    """The same driver on the @sim backend (pyvisa-sim, a test requirement)."""
    import qnode.hal_sim

    path = os.path.join(os.path.dirname(qnode.hal_sim.__file__), "sims", "itc4001.yaml")
    with Itc4001.over_visa("TCPIP0::127.0.0.1::5025::SOCKET", backend=f"{path}@sim",
                           timeout_s=TIMEOUT) as dev:
        assert dev.identify().model == "ITC4001"
        dev.set_ld_current(0.05)
        assert dev.ld_current_setpoint_a == pytest.approx(0.05)


# ---------------------------------------------------------------- Single Quantum SNSPD


@pytest.fixture
def twin():
    with SingleQuantumTwin(SingleQuantumSim(4, switching_current_ua=20.0,
                                            measurement_period_ms=50, seed=1)) as tw:
        yield tw


def snspd(tw: SingleQuantumTwin, timeout_s: float = TIMEOUT, **kw) -> SingleQuantum:
    return SingleQuantum.connect(tw.host, control_port=tw.control_port,
                                 counts_port=tw.counts_port, timeout_s=timeout_s, **kw)


def test_snspd_normal_use(twin):
    with snspd(twin) as sq:
        assert sq.number_of_detectors == 4
        assert sq.bias_currents_ua() == [0.0] * 4
        sq.set_bias_currents_ua([15.0, 16.0, 17.0, 18.0])
        sq.set_bias_current_ua(2, 17.5)
        assert sq.bias_currents_ua() == [15.0, 16.0, 17.5, 18.0]
        assert sq.bias_current_ua(3) == 18.0
        sq.set_trigger_level_mv(1, 150.0)
        assert sq.trigger_levels_mv() == [100.0, 150.0, 100.0, 100.0]
        sq.enable_detectors(True)
        assert sq.detectors_enabled
        sq.set_measurement_period_ms(40)
        assert sq.measurement_period_ms == 40.0
        assert sq.bias_voltages_mv()[0] == pytest.approx(150.0)
    assert twin.sim.bias_ua == [15.0, 16.0, 17.5, 18.0]
    assert twin.sim.measurement_period_ms == 40


def test_snspd_label_props_mode(twin):
    with snspd(twin, use_label_props=True) as sq:
        sq.set_bias_currents_ua([1.0, 2.0, 3.0, 4.0])
        assert sq.bias_currents_ua() == [1.0, 2.0, 3.0, 4.0]
        assert sq.number_of_detectors == 4


def test_snspd_bias_sets_efficiency_and_dark_counts():
    sim = SingleQuantumSim(1, switching_current_ua=20.0)
    effs, darks = [], []
    for bias in (5.0, 12.0, 15.0, 17.0, 19.0, 19.9):
        sim.bias_ua[0] = bias
        effs.append(sim.efficiency(0))
        darks.append(sim.dark_count_rate_hz(0))
    assert effs == sorted(effs) and darks == sorted(darks)
    assert effs[0] < 0.01 and effs[-1] == pytest.approx(sim.eta_max, rel=0.01)  # plateau
    assert darks[-1] / darks[-2] == pytest.approx(math.exp(0.9 / (0.03 * 20.0)), rel=0.01)
    sim.bias_ua[0] = 20.5  # above I_sw: latched, blind
    assert sim.efficiency(0) == 0.0 and sim.dark_count_rate_hz(0) == 0.0


def test_snspd_counts_stream_follows_bias(twin):
    sim = twin.sim
    with snspd(twin, timeout_s=0.5) as sq:
        sq.set_measurement_period_ms(50)
        sq.set_bias_currents_ua([17.0, 12.0, 19.5, 21.0])  # plateau, low, noisy, latched
        sq.enable_detectors(True)
        sim.photon_flux_hz[:] = [2.0e5] * 4
        samples = [sq.read_counts() for _ in range(6)]
        assert all(b.timestamp > a.timestamp for a, b in zip(samples, samples[1:], strict=False))
        for det in range(4):
            mean = sum(s.rates_hz[det] for s in samples) / len(samples)
            expected = sim.efficiency(det) * 2.0e5 + sim.dark_count_rate_hz(det)
            sigma = math.sqrt(expected / (0.05 * len(samples))) if expected else 0.0
            assert abs(mean - expected) <= 5 * sigma + 1e-9, (det, mean, expected)
        assert samples[-1].counts[3] == 0  # latched
        sq.enable_detectors(False)
        assert sq.read_counts().counts == (0, 0, 0, 0)


def test_snspd_device_error(twin):
    with snspd(twin) as sq:
        with pytest.raises(DeviceError, match="out of range") as err:
            sq.set_bias_currents_ua([500.0, 0.0, 0.0, 0.0])
        assert "out of range" in str(err.value.code)
        assert sq.bias_currents_ua() == [0.0] * 4


def test_snspd_late_reply_is_never_taken_for_the_next_one(twin):
    with snspd(twin) as sq:
        sq.set_bias_currents_ua([1.0, 1.0, 1.0, 1.0])
        twin.control.faults.delay_s = 0.3
        with pytest.raises(InstrumentTimeout):
            sq.set_bias_currents_ua([2.0, 2.0, 2.0, 2.0])
        twin.control.faults.clear()
        assert sq.trigger_levels_mv() == [100.0] * 4  # not the late BiasCurrent broadcast
        assert sq.bias_currents_ua() == [2.0] * 4


def test_snspd_dropped_garbled_and_hang(twin):
    with snspd(twin) as sq:
        assert sq.number_of_detectors == 4
        twin.control.faults.drop = 1
        with pytest.raises(InstrumentTimeout):
            sq.bias_currents_ua()
        twin.control.faults.garble = 1
        with pytest.raises(GarbledReply):
            sq.bias_currents_ua()
        assert sq.bias_currents_ua() == [0.0] * 4
        twin.control.faults.hang = True
        for _ in range(2):
            with pytest.raises(InstrumentTimeout):
                sq.trigger_levels_mv()
        twin.control.faults.clear()
        assert sq.trigger_levels_mv() == [100.0] * 4


def test_snspd_counts_stream_faults(twin):
    with snspd(twin, timeout_s=0.3) as sq:
        sq.enable_detectors(True)
        twin.counts.faults.garble = 1
        with pytest.raises(GarbledReply):
            sq.read_counts()
        assert len(sq.read_counts().counts) == 4
        twin.counts.faults.hang = True
        with pytest.raises(InstrumentTimeout):
            sq.read_counts()
        twin.counts.faults.clear()
        assert len(sq.read_counts().counts) == 4


def test_snspd_disconnect_and_restart_then_reconnect(twin):
    with snspd(twin, reconnect_attempts=30, reconnect_backoff_s=0.05) as sq:
        sq.set_bias_currents_ua([3.0, 3.0, 3.0, 3.0])
        twin.control.disconnect()
        time.sleep(0.05)
        with pytest.raises(Disconnected):
            sq.bias_currents_ua()
        sq.control.reconnect()
        assert sq.bias_currents_ua() == [3.0] * 4
        restarter = threading.Thread(target=twin.restart, kwargs={"downtime_s": 0.3})
        restarter.start()
        with pytest.raises((Disconnected, InstrumentTimeout)):
            for _ in range(100):
                sq.bias_currents_ua()
                time.sleep(0.01)
        time.sleep(0.1)  # the old listeners are closed by now
        sq.reconnect()  # retries while the ports are closed
        restarter.join()
        assert sq.bias_currents_ua() == [3.0] * 4
        assert len(sq.read_counts().counts) == 4


def test_snspd_two_threads_are_serialised(twin):
    with snspd(twin, timeout_s=1.0) as sq:
        errors: list[str] = []

        def worker(det: int) -> None:
            for i in range(10):
                value = det + 0.1 * i
                with sq.control.lock:
                    sq.set_bias_current_ua(det, value)
                    got = sq.bias_current_ua(det)
                if got != pytest.approx(value):
                    errors.append(f"det {det}: set {value} read {got}")

        threads = [threading.Thread(target=worker, args=(d,)) for d in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert sq.bias_currents_ua() == pytest.approx([0.9, 1.9, 2.9, 3.9])


def test_a_source_node_brings_up_and_checks_an_itc4001_pump(itc_server):
    """The source role's calibration and health check of an ITC4001 pump, against its twin:
    the driver's ``ld_on`` and ``photodiode_power_w`` are properties (calling them as methods
    raised TypeError, so such a pump could never become ready)."""
    from types import SimpleNamespace

    from qnode.daemon.roles.source import SourceRole
    from qnode.daemon.runtime.config import parse_config

    cfg = parse_config(
        '[node]\nid = "src"\nnetwork = "t"\nroles = ["source"]\n[broker]\n'
        'url = "mqtt://127.0.0.1"\n'
        f'[instruments.pump]\nkind = "itc4001"\naddress = "{resource(itc_server)}"\n'
        '[instruments.oven]\nkind = "tc200"\naddress = "/dev/null"\n'
        '[source]\npump = "pump"\noven = "oven"\npump_power_mw = 120\n')
    role = SourceRole(SimpleNamespace(config=cfg))  # type: ignore[arg-type]
    with itc(itc_server) as pump:
        role.calibrations["pump"](pump)          # switch on at 120 mA, then read back
        assert itc_server.device.ld_on
        assert role.pump_power_mw == pytest.approx(pump.photodiode_power_w * 1e3)
        assert role.pump_power_mw > 0
        role.health_checks["pump"](pump)
        pump.switch_off()
        with pytest.raises(Exception, match="laser diode is off"):
            role.health_checks["pump"](pump)
