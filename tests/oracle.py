"""What network tests read: the bench's registry oracle (the true state of a QDevice qubit's
pair, ``SIM:PAIR?``, simulator only), the memories' decay undone for the oracle's query lag,
and the nodes' telemetry."""
from __future__ import annotations

import asyncio
import json
import socket

import numpy as np

from qnode.daemon.bell_diagonal import PauliChannel
from qnode.daemon.messages import decode
from qnode.daemon.topics import parse_topic


def undo_decay(weights: np.ndarray, wait_s: float, t1_s: float = 5.0,
               t2_s: float = 2.0) -> np.ndarray:
    """The Bell weights ``wait_s`` earlier: both halves' T1/T2 Pauli channel (the bench's
    memories: 5 s, 2 s) undone. The oracle is read a few ms after alice estimated the pair;
    this takes the truth back to the moment of the estimate (the per-half model is checked
    against the density matrix in test_qmemory)."""
    ch = PauliChannel.from_t1_t2(wait_s, t1_s, t2_s).probabilities
    conv = np.array([[ch[i ^ j] for j in range(4)] for i in range(4)])   # λ' = conv @ λ
    return np.linalg.solve(conv, np.linalg.solve(conv, weights))


class Truth:
    """The bench's registry oracle (one TCP connection, line protocol)."""

    def __init__(self, address: str):
        host, port = address.removeprefix("socket://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.buf = b""

    def pair(self, device: str, qubit: int) -> tuple[str, np.ndarray]:
        self.sock.sendall(f"SIM:PAIR? {device} {qubit}\n".encode())
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, "the oracle closed the connection"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        fields = line.decode().split()
        assert fields[0] != "ERR", line
        return fields[0], np.array([float(x) for x in fields[1:]])

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
