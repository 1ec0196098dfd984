"""The simulator's ground truth, for examples run against ``qnode demo --serve``: hal_sim's
registry oracle (``qdevice_truth`` on the bench; the connection file's ``simulator.truth``). A
real network has no such thing: the examples compare their measurements with it only to show
they are right.

Queries (one line each, answered with one line; ``ERR <code> <text>`` when refused):
``SIM:STATE? <device> <qubit>`` the qubit's Bloch vector ``<x> <y> <z>`` now, and
``SIM:PAIR? <device> <qubit>`` the other half's ``<device>:<qubit>`` (``-`` when it is not in a
memory, e.g. a photon on its way) and the pair's Bell weights [Φ+, Φ−, Ψ+, Ψ−] now.
"""
from __future__ import annotations

import json
import socket


class Truth:
    """A connection to the simulator's registry oracle at ``socket://host:port``."""

    def __init__(self, address: str):
        host, port = address.removeprefix("socket://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.buf = b""

    def _ask(self, line: str) -> str:
        self.sock.sendall(f"{line}\n".encode())
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the truth oracle closed the connection")
            self.buf += chunk
        reply, self.buf = self.buf.split(b"\n", 1)
        text = reply.decode()
        if text.startswith("ERR"):
            raise RuntimeError(f"truth oracle: {text}")
        return text

    def bloch(self, device: str, qubit: int) -> tuple[float, float, float]:
        """The Bloch vector (⟨X⟩, ⟨Y⟩, ⟨Z⟩) of ``device``'s qubit ``qubit`` now."""
        x, y, z = (float(v) for v in self._ask(f"SIM:STATE? {device} {qubit}").split())
        return x, y, z

    def pair_weights(self, device: str, qubit: int) -> tuple[float, float, float, float]:
        """The Bell weights [Φ+, Φ−, Ψ+, Ψ−] of the pair ``device``'s qubit ``qubit`` is half
        of, now (RuntimeError when it is not half of a pair)."""
        _, *weights = self._ask(f"SIM:PAIR? {device} {qubit}").split()
        a, b, c, d = (float(w) for w in weights)
        return a, b, c, d

    def close(self) -> None:
        self.sock.close()


def simulator_truth(connection_file: str) -> str | None:
    """The truth oracle a ``qnode demo --serve`` connection file names (``simulator.truth``)."""
    with open(connection_file, encoding="utf-8") as f:
        sim = json.load(f).get("simulator")
    return sim.get("truth") if isinstance(sim, dict) else None
