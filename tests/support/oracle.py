"""What network tests read: the bench's registry oracle (the true state of a QDevice qubit's
pair, ``SIM:PAIR?``, simulator only, and when the qubit was bound to it), the memories' decay
undone for the oracle's query lag, and the nodes' telemetry."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass

import numpy as np

from qnode.daemon.bus.envelope import Message, decode
from qnode.daemon.bus.topics import parse_topic
from qnode.daemon.quantum.bell_diagonal import PauliChannel


def undo_decay(weights: np.ndarray, wait_s: float, t1_s: float = 5.0,
               t2_s: float = 2.0) -> np.ndarray:
    """The Bell weights ``wait_s`` earlier: both halves' T1/T2 Pauli channel (the bench's
    memories: 5 s, 2 s) undone. The oracle is read a few ms after alice estimated the pair;
    this takes the truth back to the moment of the estimate (the per-half model is checked
    against the density matrix in test_qmemory)."""
    ch = PauliChannel.from_t1_t2(wait_s, t1_s, t2_s).probabilities
    conv = np.array([[ch[i ^ j] for j in range(4)] for i in range(4)])   # λ' = conv @ λ
    return np.linalg.solve(conv, np.linalg.solve(conv, weights))


#: Clock slack (s) of the hold check: a node's hold starts a moment before it sends the OK.
HOLD_SLACK_S = 0.01


@dataclass
class Reading:
    """What the oracle said of one qubit: its partner (``device:qubit`` or ``-``) and the
    pair's Bell weights [Φ+, Φ−, Ψ+, Ψ−] now, or why it holds no pair (``error``); and the
    Unix times (s) between which the qubit was last bound (``ENT``) to a pair (the query's
    round trip; None if never)."""

    partner: str | None
    weights: np.ndarray | None
    error: str | None
    bound_between: tuple[float, float] | None

    def rebound_after(self, ok: Message) -> float | None:
        """Seconds after ``ok`` (an OK message: its envelope's Unix ``ts``) at which the qubit
        was bound to a newer pair (the OK's pair is gone: the test read it too late), or None:
        it still holds the pair the OK named. AssertionError when that was sooner than the
        OK's ``hold_ms`` promised (or the OK promised none)."""
        hold_ms = ok.body.get("hold_ms")
        if self.bound_between is None or self.bound_between[0] <= ok.ts:
            return None
        earliest, latest = (t - ok.ts for t in self.bound_between)
        assert hold_ms is not None and latest >= hold_ms / 1000 - HOLD_SLACK_S, (
            f"the qubit was bound to a newer pair {earliest:.3f}-{latest:.3f} s after the OK "
            f"handed it out, within the {hold_ms} ms the OK promised the application")
        return earliest

    def pair(self) -> tuple[str, np.ndarray]:
        """(partner, weights); AssertionError with the oracle's answer when there is no pair."""
        assert self.error is None, self.error
        assert self.partner is not None and self.weights is not None
        return self.partner, self.weights


class Truth:
    """The bench's registry oracle (one TCP connection, line protocol)."""

    def __init__(self, address: str):
        host, port = address.removeprefix("socket://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.buf = b""

    def _line(self) -> str:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, "the oracle closed the connection"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def read(self, device: str, qubit: int) -> Reading:
        """The truth of ``device``'s qubit ``qubit`` now, and when it was bound (one write:
        the oracle answers both queries back to back)."""
        sent = time.time()
        self.sock.sendall(f"SIM:PAIR? {device} {qubit}\nSIM:BOUND? {device} {qubit}\n".encode())
        pair, bound = self._line(), self._line()
        received = time.time()
        assert not bound.startswith("ERR"), bound
        between = None if bound == "-" else (sent - float(bound), received - float(bound))
        if pair.startswith("ERR"):
            return Reading(None, None, pair, between)
        fields = pair.split()
        return Reading(fields[0], np.array([float(x) for x in fields[1:]]), None, between)

    def close(self) -> None:
        self.sock.close()


async def telemetry_until(port: int, done, timeout_s: float) -> dict[str, dict]:
    """The demo network's latest telemetry per node (over the broker on ``port``) as soon as
    ``done(latest)`` holds; AssertionError with the nodes' link telemetry after ``timeout_s``."""
    import aiomqtt

    latest: dict[str, dict] = {}
    try:
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.subscribe("qnet/v1/demo/+/telemetry")
            async with asyncio.timeout(timeout_s):
                async for m in client.messages:
                    msg = decode(bytes(m.payload), parse_topic(str(m.topic)))
                    latest[msg.sender] = msg.body
                    if done(latest):
                        return latest
    except TimeoutError:
        pass
    links = {n: r.get("links") for n, r in latest.items()}
    raise AssertionError(f"telemetry never showed the condition: {json.dumps(links)[:3000]}")
