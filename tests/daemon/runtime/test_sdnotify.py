"""The systemd notify protocol (qnode.daemon.runtime.sdnotify) against a real AF_UNIX datagram
socket standing in for systemd's NOTIFY_SOCKET: the exact datagrams, the watchdog environment, the
asyncio watchdog loop's timing and health gating, and a daemon-like subprocess going through
READY → WATCHDOG… → SIGTERM → STOPPING → exit 0."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qnode.daemon.runtime.sdnotify import Notifier, watchdog_interval_s, watchdog_loop


class FakeSystemd:
    """A bound AF_UNIX/SOCK_DGRAM socket (path or abstract) whose datagrams a background thread
    collects with their arrival times (time.monotonic())."""

    def __init__(self, address: str) -> None:
        self.env_value = address  # what goes into NOTIFY_SOCKET
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(0.05)
        self._messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return
            with self._lock:
                self._messages.append((time.monotonic(), data.decode()))

    @property
    def messages(self) -> list[str]:
        with self._lock:
            return [m for _, m in self._messages]

    @property
    def timed(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.messages):
                return True
            time.sleep(0.01)
        return predicate(self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer than that.
    d = Path(tempfile.mkdtemp(prefix="sdn-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def systemd_path(short_dir: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(short_dir / "notify"))
    yield fake
    fake.close()


@pytest.fixture
def systemd_abstract() -> Iterator[FakeSystemd]:
    fake = FakeSystemd(f"@qnode-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    yield fake
    fake.close()


# -- the datagrams -----------------------------------------------------------------------------

def test_disabled_without_notify_socket() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready("up") is False
    assert n.watchdog() is False
    assert n.stopping() is False
    n.close()


def test_unusable_address_disables_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="qnode.daemon.runtime.sdnotify"):
        n = Notifier.from_env({"NOTIFY_SOCKET": "relative/notify"})
    assert not n.enabled
    assert n.ready() is False
    assert "relative/notify" in caplog.text


def test_exact_datagrams_on_a_path_socket(systemd_path: FakeSystemd) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": systemd_path.env_value}) as n:
        assert n.enabled
        assert n.ready()
        assert n.ready("instruments up")
        assert n.status("pairs: 12\nqber: 0.03")
        assert n.watchdog()
        assert n.errno(5, "TC200 gone")
        assert n.extend_timeout(20)
        assert n.stopping()
        assert n.stopping("SIGTERM")
    expected = [
        "READY=1",
        "READY=1\nSTATUS=instruments up",
        "STATUS=pairs: 12 qber: 0.03",  # a newline would start a new assignment
        "WATCHDOG=1",
        "ERRNO=5\nSTATUS=TC200 gone",
        "EXTEND_TIMEOUT_USEC=20000000",
        "STOPPING=1",
        "STOPPING=1\nSTATUS=SIGTERM",
    ]
    assert systemd_path.wait_for(lambda m: len(m) >= len(expected), timeout=5)
    assert systemd_path.messages == expected


def test_reloading_carries_monotonic_usec(systemd_path: FakeSystemd) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    with Notifier(systemd_path.env_value) as n:
        assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd_path.wait_for(lambda m: len(m) == 1, timeout=5)
    first, second = systemd_path.messages[0].split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_socket(systemd_abstract: FakeSystemd) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": systemd_abstract.env_value}) as n:
        assert n.ready("abstract")
        assert n.stopping()
    assert systemd_abstract.wait_for(lambda m: len(m) >= 2, timeout=5)
    assert systemd_abstract.messages == ["READY=1\nSTATUS=abstract", "STOPPING=1"]


def test_injection_is_refused(systemd_path: FakeSystemd) -> None:
    with Notifier(systemd_path.env_value) as n:
        with pytest.raises(ValueError):
            n.notify("STATUS=x\nREADY=1")
        with pytest.raises(ValueError):
            n.notify("READY")
    time.sleep(0.1)
    assert systemd_path.messages == []


def test_send_failure_is_logged_not_raised(short_dir: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeSystemd(str(short_dir / "gone"))
    n = Notifier(fake.env_value)
    assert n.ready()
    fake.close()
    os.unlink(short_dir / "gone")  # systemd went away
    with caplog.at_level(logging.DEBUG, logger="qnode.daemon.runtime.sdnotify"):
        assert n.watchdog() is False
        assert n.watchdog() is False
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.WARNING, logging.DEBUG]
    n.close()


# -- the watchdog environment ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),  # pid=4242 below
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # meant for another pid
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "100000"}, 0.05),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    got = watchdog_interval_s(env, pid=4242)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_watchdog_interval_defaults_to_own_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == pytest.approx(1.0)
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval_s() is None


# -- the asyncio watchdog loop -----------------------------------------------------------------

def _watchdogs(fake: FakeSystemd) -> list[float]:
    return [t for t, m in fake.timed if m == "WATCHDOG=1"]


class _Ticks:
    """A ``healthy`` callback that records the loop time of every watchdog tick."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self) -> bool:
        self.times.append(asyncio.get_running_loop().time())
        return True

    async def wait(self, n: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.times) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(self.times) >= n, f"{len(self.times)} watchdog ticks in {timeout_s} s"


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.asyncio
async def test_watchdog_loop_pings_at_the_interval(systemd_path: FakeSystemd) -> None:
    """One ping per tick; ticks keep to a fixed schedule and never come early. A loaded machine
    may make them late, so no upper bound is asserted."""
    n = Notifier(systemd_path.env_value)
    ticks = _Ticks()
    task = asyncio.create_task(watchdog_loop(n, 0.05, healthy=ticks))
    await ticks.wait(10)
    await _stop(task)
    assert systemd_path.wait_for(lambda _: len(_watchdogs(systemd_path)) >= len(ticks.times))
    assert len(_watchdogs(systemd_path)) == len(ticks.times)
    # a fixed schedule: tick k never before the first + k intervals (asyncio may wake up to a
    # clock tick early); a late tick shortens the next gap, it does not shift the schedule
    since = np.array(ticks.times) - ticks.times[0]
    assert (since >= 0.05 * np.arange(len(since)) - 0.002).all(), since
    assert set(systemd_path.messages) == {"WATCHDOG=1"}
    n.close()


@pytest.mark.asyncio
async def test_watchdog_loop_stops_while_unhealthy(
        systemd_path: FakeSystemd, caplog: pytest.LogCaptureFixture) -> None:
    """Healthy for 4 ticks, unhealthy for 5, healthy again: one ping per healthy tick and none
    while unhealthy. Counted by ticks (calls of ``healthy``), not in a wall-clock window."""
    caplog.set_level(logging.INFO, logger="qnode.daemon.runtime.sdnotify")
    n = Notifier(systemd_path.env_value)
    answers: list[bool] = []

    def healthy() -> bool:
        answers.append(not 4 <= len(answers) < 9)
        return answers[-1]

    task = asyncio.create_task(watchdog_loop(n, 0.01, healthy=healthy))
    deadline = time.monotonic() + 30.0
    while len(answers) < 12 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(answers) >= 12, "the watchdog loop did not tick"
    expected = answers.count(True)
    assert systemd_path.wait_for(lambda _: len(_watchdogs(systemd_path)) >= expected)
    assert len(_watchdogs(systemd_path)) == expected == len(answers) - 5
    assert "withholding watchdog pings" in caplog.text and "pings resumed" in caplog.text
    n.close()


@pytest.mark.asyncio
async def test_watchdog_loop_health_check_raising_counts_as_unhealthy(
        systemd_path: FakeSystemd, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> bool:
        raise RuntimeError("supervisor lost")

    n = Notifier(systemd_path.env_value)
    task = asyncio.create_task(watchdog_loop(n, 0.02, healthy=broken))
    await asyncio.sleep(0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    assert _watchdogs(systemd_path) == []
    assert "supervisor lost" in caplog.text
    n.close()


@pytest.mark.asyncio
async def test_a_blocked_loop_sends_no_pings(systemd_path: FakeSystemd) -> None:
    """Pings come from the event loop's ticks only (every ping received is a tick's), so a
    blocked loop sends none; after the stall one tick comes and the schedule restarts from it
    (no burst of catch-up pings)."""
    n = Notifier(systemd_path.env_value)
    ticks = _Ticks()
    task = asyncio.create_task(watchdog_loop(n, 0.02, healthy=ticks))
    await ticks.wait(3)
    t0 = asyncio.get_running_loop().time()
    time.sleep(0.3)  # the event loop is stuck (a blocking call on the loop)
    t1 = asyncio.get_running_loop().time()
    before = len([t for t in ticks.times if t <= t0])
    await ticks.wait(before + 4)
    await _stop(task)
    assert not [t for t in ticks.times if t0 < t < t1]
    after = np.array([t for t in ticks.times if t >= t1])
    assert (after - after[0] >= 0.02 * np.arange(len(after)) - 0.002).all(), after
    assert systemd_path.wait_for(lambda _: len(_watchdogs(systemd_path)) >= len(ticks.times))
    assert len(_watchdogs(systemd_path)) == len(ticks.times)
    n.close()


@pytest.mark.asyncio
async def test_watchdog_loop_rejects_a_bad_interval() -> None:
    with pytest.raises(ValueError):
        await watchdog_loop(Notifier(None), 0)


# -- end to end: a daemon-like process under a fake systemd -----------------------------------

DAEMON = textwrap.dedent('''
    import asyncio, signal, sys
    from qnode.daemon.runtime.sdnotify import Notifier, watchdog_interval_s, watchdog_loop

    async def main() -> int:
        notifier = Notifier.from_env()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        interval = watchdog_interval_s()
        if interval is None:
            return 3
        async with asyncio.TaskGroup() as tg:
            watchdog = tg.create_task(watchdog_loop(notifier, interval))
            await asyncio.sleep(0.05)  # instruments coming up
            notifier.ready("instruments up")
            await stop.wait()
            notifier.stopping("SIGTERM: shutting down")
            watchdog.cancel()
        notifier.close()
        return 0

    sys.exit(asyncio.run(main()))
''')


def test_daemon_ready_watchdog_stopping_on_sigterm(systemd_path: FakeSystemd,
                                                    short_dir: Path) -> None:
    script = short_dir / "fake_daemon.py"
    script.write_text(DAEMON)
    env = dict(os.environ, NOTIFY_SOCKET=systemd_path.env_value, WATCHDOG_USEC="100000")
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, str(script)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def ready_and_pinging(msgs: list[str]) -> bool:
            if "READY=1\nSTATUS=instruments up" not in msgs:
                return False
            after = msgs[msgs.index("READY=1\nSTATUS=instruments up"):]
            return after.count("WATCHDOG=1") >= 2

        assert systemd_path.wait_for(ready_and_pinging, timeout=10), (
            systemd_path.messages, proc.poll())
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=5)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = proc.communicate()
    assert rc == 0, err.decode()
    assert elapsed < 2.0
    time.sleep(0.1)
    msgs = systemd_path.messages
    assert set(msgs) <= {"READY=1\nSTATUS=instruments up", "WATCHDOG=1",
                         "STOPPING=1\nSTATUS=SIGTERM: shutting down"}, msgs
    assert msgs.count("READY=1\nSTATUS=instruments up") == 1
    assert msgs[-1] == "STOPPING=1\nSTATUS=SIGTERM: shutting down"
    assert msgs.count(msgs[-1]) == 1
    between = msgs[msgs.index("READY=1\nSTATUS=instruments up") + 1:-1]
    assert between.count("WATCHDOG=1") >= 2
    assert set(between) == {"WATCHDOG=1"}
