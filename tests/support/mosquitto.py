"""A real mosquitto broker for tests: a generated config in a temporary directory, a free loopback
port, persistence on (so persistent sessions and their queued QoS-1 messages survive a restart),
and a log file to read when something goes wrong.

    with Mosquitto(tmp_path) as broker:      # started, accepting connections
        ... broker.port ...
        broker.stop()                        # SIGTERM: mosquitto saves its database and exits
        broker.start()                       # the same port, the same database

With a contract tap, everything the daemons under test publish is checked against the AsyncAPI
contract (tests/support/contract.py) when the ``with`` block ends without an exception:

    with Mosquitto(tmp_path) as broker:
        broker.tap("t", ("alice", "bob"))    # before the daemons start
        ...                                  # the test; __exit__: tap.assert_clean()

Not a test module: the MQTT tests import it by its bare name (tests/ is on sys.path).
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from support.contract import ContractTap

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """The mosquitto executable, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_CANDIDATES if os.access(p, os.X_OK)), None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One mosquitto process on ``127.0.0.1:port`` with its files under ``workdir``."""

    def __init__(self, workdir: str | os.PathLike[str], *, port: int | None = None,
                 executable: str | None = None, listener_options: str = "",
                 allow_anonymous: bool = True, max_queued_messages: int = 100_000,
                 global_options: str = "", more: str = ""):
        exe = executable or find_mosquitto()
        if exe is None:
            raise FileNotFoundError("mosquitto is not installed (Debian: apt-get install "
                                    "mosquitto)")
        self.executable = exe
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log_path = self.workdir / "mosquitto.log"
        self.config_path = self.workdir / "mosquitto.conf"
        (self.workdir / "db").mkdir(exist_ok=True)
        self.config_path.write_text(
            # Started as root, mosquitto would drop to user "mosquitto" and could not write its
            # database and log here; as anyone else the option is ignored.
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"{global_options}"
            f"listener {self.port} 127.0.0.1\n"
            f"{listener_options}"
            f"allow_anonymous {'true' if allow_anonymous else 'false'}\n"
            "persistence true\n"
            f"persistence_location {self.workdir / 'db'}/\n"
            f"log_dest file {self.log_path}\n"
            "log_type all\n"
            "connection_messages true\n"
            f"max_queued_messages {max_queued_messages}\n"
            f"{more}"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.taps: list[ContractTap] = []

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ``listener_options``: lines for the listener (TLS files, ``acl_file``, ...), e.g. from
    # tests/support/certs.py; ``allow_anonymous`` False with them for a broker like a deployment's.
    # ``global_options``: lines before any listener (``per_listener_settings``); ``more``: lines
    # at the end (another listener, a bridge).

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the broker and return once its port accepts connections."""
        if self.running:
            return
        self.proc = subprocess.Popen([self.executable, "-c", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}\n"
                                   f"{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"mosquitto did not listen on {self.port} within "
                                       f"{timeout_s} s\n{self.log_tail()}") from None
                time.sleep(0.02)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: the database is saved), or kill it after ``timeout_s``."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port with the same persistent database."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def tap(self, network: str,
            publishers: Iterable[str] | Callable[[], Iterable[str]] | None = None,
            **options: Any) -> ContractTap:
        """A :class:`~support.contract.ContractTap` on this broker judging what ``publishers``
        (the daemons under test) publish on ``network``; :meth:`__exit__` checks it
        (:meth:`check_taps`) when the block ends without an exception, and closes it."""
        from support.contract import ContractTap

        tap = ContractTap(self.port, network=network, publishers=publishers, host=self.host,
                          **options)
        self.taps.append(tap)
        return tap

    def check_taps(self) -> None:
        """``assert_clean`` every tap (its summary printed), then close them."""
        try:
            for tap in self.taps:
                print(f"contract tap {tap.name}: {tap.assert_clean()}")
        finally:
            self.close_taps()

    def close_taps(self) -> None:
        taps, self.taps = self.taps, []
        for tap in taps:
            tap.close()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is None:
                self.check_taps()
        finally:
            self.close_taps()
            self.stop()
