"""The ID900 driver against its hal_sim twin over real ZeroMQ sockets on loopback: SCPI, faults
and recovery, thread serialisation, and the time tagger end to end (issue 4)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from qnode.drivers.errors import DeviceError, Disconnected, GarbledReply, InstrumentTimeout
from qnode.drivers.id900 import ID900, DataLinkTarget, ID900Tagger, WatermarkMerger
from qnode.drivers.tagger import TimeTagger
from qnode.hal_sim import BellDiagonalState, CWSource, Link, PhotonStreamSimulator, simple_node
from qnode.hal_sim.twins.id900 import IDN, SimulatedID900
from qnode.hal_sim.twins.tagger import SimulatedTagger

TIMEOUT_S = 0.2
DURATION_PS = 200_000_000_000  # 0.2 s of emission


def small_link() -> Link:
    return Link(CWSource(pair_rate_hz=2e5), BellDiagonalState.werner(0.95),
                (simple_node("alice", (1, 2)), simple_node("bob", (3, 4), length_km=1.0)))


def simulator(seed: int = 11) -> PhotonStreamSimulator:
    return PhotonStreamSimulator(small_link(), seed=seed)


@pytest.fixture
def device():
    with SimulatedID900(simulator(), "alice", duration_ps=DURATION_PS) as dev:
        yield dev


@pytest.fixture
def id900(device):
    with ID900(device.scpi_address, timeout_s=TIMEOUT_S, reconnect_attempts=10,
               reconnect_backoff_s=0.05, reconnect_max_backoff_s=0.2) as d:
        yield d


# ------------------------------------------------------------------------------ SCPI

def test_scpi_normal_use(id900, device):
    assert id900.identify() == IDN
    assert id900.resolution() == "HIRES"
    assert not id900.input_enabled(1)
    id900.enable_input(1)
    assert id900.input_enabled(1)
    id900.disable_input(1)
    assert not id900.input_enabled(1)
    id900.set_threshold(2, -0.2)
    assert id900.threshold(2) == pytest.approx(-0.2)
    id900.command("INPUt2:THREshold 150mV")          # long forms and units (manual §9)
    assert id900.threshold(2) == pytest.approx(0.15)
    id900.set_delay_ps(3, 12_345)
    assert id900.delay_ps(3) == 12_345
    assert id900.counters((1, 2, 3, 4)) == {1: 0, 2: 0, 3: 0, 4: 0}
    # chaining within a block (';') and across blocks (';:'), one reply line per query
    assert id900.command("INPU4:ENAB ON;THRE -0.5V;:INPU4:ENAB?;THRE?") == "ON\n-0.5V"
    assert device.scpi.requests[0] == "*IDN?"


def test_a_late_reply_is_never_taken_for_the_next_one(id900, device):
    device.faults.delay_s = 0.3  # answers after the 0.2 s timeout
    with pytest.raises(InstrumentTimeout) as err:
        id900.identify()
    e = err.value
    assert (e.instrument, e.address, e.command) == ("ID900", device.scpi_address, "*IDN?")
    device.faults.clear()
    assert id900.counter(1) == 0                # not the late '*IDN?' answer
    time.sleep(0.3)                              # the late reply has been sent by now
    assert id900.resolution() == "HIRES"
    assert id900.identify() == IDN


def test_slow_but_in_time_replies_are_fine(id900, device):
    device.faults.delay_s = 0.05
    assert id900.identify() == IDN
    assert id900.counter(2) == 0


def test_dropped_reply_times_out_and_the_link_recovers(id900, device):
    device.faults.drop = 1
    with pytest.raises(InstrumentTimeout):
        id900.resolution()
    assert id900.resolution() == "HIRES"


def test_garbled_replies_raise_garbled_reply(id900, device):
    device.faults.garble = 1
    with pytest.raises(GarbledReply) as err:
        id900.identify()
    assert err.value.command == "*IDN?"
    id900.set_delay_ps(1, 987_654)
    device.faults.garble = 1
    with pytest.raises(GarbledReply):
        id900.delay_ps(1)
    assert id900.delay_ps(1) == 987_654
    assert id900.identify() == IDN


def test_hang_times_out_every_call_until_cleared(id900, device):
    device.faults.hang = True
    for _ in range(2):
        with pytest.raises(InstrumentTimeout):
            id900.identify()
    device.faults.clear()
    assert id900.identify() == IDN


def test_device_errors_raise_device_error(id900, device):
    device.faults.device_error = 1
    with pytest.raises(DeviceError) as err:
        id900.identify()
    assert "simulated device error" in str(err.value.code)
    with pytest.raises(DeviceError):
        id900.set_threshold(1, 5.0)              # out of range
    with pytest.raises(DeviceError) as err:
        id900.command("FOO:BAR 1")               # undefined header
    assert err.value.command == "FOO:BAR 1"
    assert id900.identify() == IDN


def test_restart_disconnects_and_reconnect_recovers(id900, device):
    assert id900.identify() == IDN
    restarter = threading.Thread(target=device.restart, kwargs={"downtime_s": 0.6})
    restarter.start()
    time.sleep(0.2)                              # the port is closed now
    with pytest.raises(Disconnected) as err:    # nothing sent: ZMQ_IMMEDIATE, no peer
        id900.identify()
    assert err.value.address == device.scpi_address
    id900.reconnect()                            # bounded back-off until the port is back
    restarter.join()
    assert id900.identify() == IDN
    assert id900.counter(1) == 0


def test_reconnect_gives_up_with_disconnected(device):
    d = ID900(device.scpi_address, timeout_s=0.1, reconnect_attempts=2, reconnect_backoff_s=0.05)
    d.open()
    device.scpi.stop()
    try:
        with pytest.raises(Disconnected):
            d.reconnect()
    finally:
        device.scpi.start()
        d.close()


def test_two_threads_on_one_instrument_are_serialised(id900, device):
    device.faults.delay_s = 0.002
    t = id900.transport
    depth, worst = [0], [0]
    send, receive = t._send, t._receive

    def tracked_send(command):
        depth[0] += 1
        worst[0] = max(worst[0], depth[0])
        send(command)

    def tracked_receive(command, deadline):
        try:
            return receive(command, deadline)
        finally:
            depth[0] -= 1

    t._send, t._receive = tracked_send, tracked_receive
    id900.set_delay_ps(2, 4242)
    errors: list[BaseException] = []

    def worker(call, expected):
        try:
            for _ in range(25):
                assert call() == expected
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(id900.identify, IDN)),
               threading.Thread(target=worker, args=(lambda: id900.delay_ps(2), 4242))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert worst[0] == 1


# ------------------------------------------------------------------------------ DLT and tagger

def reference_tags(seed: int = 11) -> np.ndarray:
    """What the simulator yields for node alice directly (option (c)), channels 1, 2."""
    tagger = SimulatedTagger(simulator(seed), "alice", duration_ps=DURATION_PS)
    assert isinstance(tagger, TimeTagger) and tagger.channels == (1, 2)
    return np.concatenate(list(tagger.chunks()))


def assert_time_ordered(blocks: list[np.ndarray]) -> None:
    joined = np.concatenate(blocks)
    assert np.all(np.diff(joined["time"]) >= 0)  # within and across chunk boundaries
    same = np.diff(joined["time"]) == 0
    assert np.all(np.diff(joined["channel"])[same] > 0)


def test_tagger_streams_the_photon_tags_exactly(id900, device):
    expected = reference_tags()
    with ID900Tagger(id900, device.dlt_address, inputs=(1, 2), idle_end_s=0.3) as tagger:
        assert tagger.channels == (1, 2)
        blocks = list(tagger.chunks())
    assert device.finished.is_set()
    got = np.concatenate(blocks)
    assert got.dtype == expected.dtype
    assert np.array_equal(got["time"], expected["time"])
    assert np.array_equal(got["channel"], expected["channel"])
    assert_time_ordered(blocks)
    assert tagger.late_tags == 0
    # the counters counted exactly the streamed tags
    per_input = {n: int(np.count_nonzero(got["channel"] == n)) for n in (1, 2)}
    assert id900.counters((1, 2)) == per_input == device.produced
    assert id900.command("RAW1:SEND?;:RAW2:SEND?") == "OFF\nOFF"   # switched off on the way out
    dlt = DataLinkTarget(device.dlt_address, timeout_s=TIMEOUT_S)
    dlt.open()
    try:
        assert dlt.list() == []                                   # streams stopped
        with pytest.raises(DeviceError):
            dlt.stop("no-such-stream")
    finally:
        dlt.close()


def test_paced_stream_is_time_ordered_across_many_chunks():
    expected = reference_tags(seed=5)
    with SimulatedID900(simulator(5), "alice", duration_ps=DURATION_PS, pace=2.0) as dev, \
            ID900(dev.scpi_address, timeout_s=TIMEOUT_S) as d, \
            ID900Tagger(d, dev.dlt_address, inputs=(1, 2), with_ref_index=True,
                        chunk_interval_s=0.01, idle_end_s=0.3) as tagger:
        blocks = list(tagger.chunks())
    assert sum(1 for b in blocks if b.size) >= 5
    assert_time_ordered(blocks)
    got = np.concatenate(blocks)
    assert np.array_equal(got["time"], expected["time"])
    assert np.array_equal(got["channel"], expected["channel"])


def test_close_from_another_thread_ends_an_endless_stream():
    with SimulatedID900(simulator(), "alice", pace=1.0) as dev, \
            ID900(dev.scpi_address, timeout_s=TIMEOUT_S) as d:
        tagger = ID900Tagger(d, dev.dlt_address, inputs=(1, 2), chunk_interval_s=0.02)
        sizes: list[int] = []
        reader = threading.Thread(target=lambda: sizes.extend(b.size for b in tagger.chunks()))
        reader.start()
        time.sleep(0.3)
        tagger.close()
        reader.join(timeout=2.0)
        assert not reader.is_alive()
        assert sum(sizes) > 0
        assert d.command("RAW1:SEND?") == "OFF"


def test_watermark_rule_a_silent_input_stalls_at_most_max_latency():
    m = WatermarkMerger((1, 2), max_latency_s=0.5, now=0.0)
    m.add(1, np.array([10, 20, 30], np.int64), now=0.1)
    assert m.pop(0.2).size == 0                  # input 2 may still send something older
    m.add(2, np.array([15], np.int64), now=0.2)
    b = m.pop(0.3)                               # watermark min(30, 15) = 15
    assert b["time"].tolist() == [10] and b["channel"].tolist() == [1]
    m.add(1, np.array([40, 50], np.int64), now=0.6)
    b = m.pop(0.8)                               # input 2 silent for 0.6 s > 0.5 s: left out
    assert b["time"].tolist() == [15, 20, 30, 40]
    m.add(2, np.array([45, 60], np.int64), now=0.9)  # 45 < the released watermark 50: late
    assert m.late_tags == 1
    b = m.pop(1.0, final=True)
    assert b["time"].tolist() == [50, 60] and b["channel"].tolist() == [1, 2]
