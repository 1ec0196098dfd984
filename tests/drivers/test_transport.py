"""Transports against simulated instruments on real ptys and loopback sockets."""
from __future__ import annotations

import threading

import pytest

from qnode.drivers.errors import Disconnected, InstrumentTimeout
from qnode.drivers.transport import SerialTransport
from qnode.hal_sim.twins.serve import PtyServer, TcpServer, WireDevice, split_lines


class Echo(WireDevice):
    """'ping N' -> 'pong N'; 'quiet' -> no reply."""

    def split(self, buffer: bytearray) -> list[bytes]:
        return split_lines(buffer, b"\n")

    def handle(self, request: bytes) -> bytes | None:
        if request == b"quiet":
            return None
        return b"pong " + request.split(b" ", 1)[1] + b"\n"


@pytest.fixture
def pty_echo():
    with PtyServer(Echo(), "echo") as server:
        yield server


def transport(address: str, timeout_s: float = 0.2, **kw) -> SerialTransport:
    return SerialTransport(address, instrument="echo box", timeout_s=timeout_s, **kw)


def test_query_over_a_real_pty(pty_echo):
    with transport(pty_echo.address) as t:
        assert t.query("ping 1") == "pong 1"
        assert pty_echo.requests == [b"ping 1"]


def test_timeout_names_instrument_address_and_command(pty_echo):
    with transport(pty_echo.address) as t:
        with pytest.raises(InstrumentTimeout) as err:
            t.query("quiet")
        e = err.value
        assert (e.instrument, e.address, e.command) == ("echo box", pty_echo.address, "quiet")
        assert "echo box at /dev/pts/" in str(e) and "'quiet'" in str(e)


def test_a_late_reply_is_never_taken_for_the_next_one(pty_echo):
    with transport(pty_echo.address, timeout_s=0.2) as t:
        pty_echo.faults.delay_s = 0.3  # answers after the timeout
        with pytest.raises(InstrumentTimeout):
            t.query("ping 1")
        pty_echo.faults.clear()
        assert t.query("ping 2") == "pong 2"  # 'pong 1' arrived late and was discarded
        assert t.query("ping 3") == "pong 3"


def test_dropped_reply_times_out_and_the_link_recovers(pty_echo):
    with transport(pty_echo.address) as t:
        pty_echo.faults.drop = 1
        with pytest.raises(InstrumentTimeout):
            t.query("ping 1")
        assert t.query("ping 2") == "pong 2"


def test_hang_times_out_every_call_until_cleared(pty_echo):
    with transport(pty_echo.address, timeout_s=0.1) as t:
        pty_echo.faults.hang = True
        for i in range(2):
            with pytest.raises(InstrumentTimeout):
                t.query(f"ping {i}")
        pty_echo.faults.clear()
        assert t.query("ping 9") == "pong 9"


def test_unplugged_pty_raises_disconnected(pty_echo):
    t = transport(pty_echo.address)
    t.open()
    pty_echo.disconnect()
    with pytest.raises(Disconnected) as err:
        t.query("ping 1")
    assert err.value.instrument == "echo box"
    assert not t.is_open


def test_reconnect_after_the_simulator_restarts_on_the_same_port():
    with TcpServer(Echo(), "echo") as server:
        with transport(server.address, reconnect_attempts=20, reconnect_backoff_s=0.05) as t:
            assert t.query("ping 1") == "pong 1"
            restarter = threading.Thread(target=server.restart, kwargs={"downtime_s": 0.3})
            restarter.start()
            with pytest.raises((Disconnected, InstrumentTimeout)):
                for i in range(50):  # the link breaks while the server is down
                    t.query(f"ping {i}")
            restarter.join()
            t.reconnect()
            assert t.query("ping 2") == "pong 2"


def test_reconnect_gives_up_with_disconnected_when_nobody_listens():
    server = TcpServer(Echo(), "echo").start()
    address = server.address
    server.stop()
    t = transport(address, reconnect_attempts=3, reconnect_backoff_s=0.01)
    with pytest.raises(Disconnected, match="reconnect failed after 3 attempts"):
        t.reconnect()


def test_two_threads_on_one_instrument_are_serialised(pty_echo):
    with transport(pty_echo.address, timeout_s=1.0) as t:
        errors: list[str] = []

        def worker(k: int) -> None:
            for i in range(40):
                tag = f"{k}-{i}"
                reply = t.query(f"ping {tag}")
                if reply != f"pong {tag}":
                    errors.append(f"{tag} got {reply!r}")

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert len(pty_echo.requests) == 160
