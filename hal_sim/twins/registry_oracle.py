"""The ground truth of a :class:`~qnode.hal_sim.twins.pair_registry.PairRegistry` on its own
wire (simulator only): :class:`RegistryOracle`.

A twin's TCP port serves one client, its node; a test of a running network asks this oracle
instead. No real memory has these queries, and the daemon never uses them.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from qnode.drivers import qdevice_protocol as wire

from .pair_registry import PairRegistry, QDeviceFault, truth_reply
from .serve import WireDevice, split_lines


class InterferenceControl(Protocol):
    """What ``SIM:VIS`` needs of a K link (:class:`qnode.hal_sim.bench.links.LinkRuntime`)."""

    def set_indistinguishability(self, vis: float) -> None: ...


class RegistryOracle(WireDevice):
    """Ground truth of a :class:`PairRegistry` on its own wire, for tests of a running network (a
    twin's TCP port serves one client, its node): ``SIM:PAIR? <device> <q>`` answers as a twin's
    ``SIM:PAIR? <q>`` (:mod:`qnode.hal_sim.twins.qdevice`); ``SIM:BOUND? <device> <q>``: the real
    seconds since the qubit's last ``ENT`` (``-`` if none: a test that reads a delivered pair late
    learns that the qubit holds a newer pair); ``SIM:STATE? <device> <q>``: the qubit's Bloch
    vector ``<x> <y> <z>`` now (9 decimals; a teleported state's truth); ``*IDN?``.
    ``SIM:VIS <link> <V>`` sets K link ``link``'s HOM visibility (0..1) from its next slice on
    and answers ``OK``: a test degrades (or repairs) a link of a running network.
    Simulator-only: no real memory has them, and the daemon never uses them."""

    reply_terminator = b"\n"

    def __init__(self, registry: PairRegistry,
                 links: Mapping[str, InterferenceControl] | None = None):
        self.registry = registry
        self.links = links or {}

    def split(self, buffer: bytearray) -> list[bytes]:
        return [r.rstrip(b"\r") for r in split_lines(buffer, b"\n")]

    def handle(self, request: bytes) -> bytes:
        tokens = request.decode("ascii", errors="replace").split()
        if tokens[:1] == ["*IDN?"]:
            return b"QNODE,QDEVICE-SIM-TRUTH,registry,1.0\n"
        query = tokens[0].upper() if tokens else ""
        if query == "SIM:VIS":
            return self._visibility(tokens[1:])
        if (len(tokens) != 3 or query not in ("SIM:PAIR?", "SIM:BOUND?", "SIM:STATE?")
                or not wire.QUBIT_ID.fullmatch(tokens[2])):
            return _err(wire.ERR_SYNTAX, "usage: SIM:PAIR? <device> <qubit> | "
                                    "SIM:BOUND? <device> <qubit> | SIM:STATE? <device> <qubit>")
        device, qubit = tokens[1], int(tokens[2])
        if query == "SIM:STATE?":
            try:
                bloch = self.registry.device_state_truth(device, qubit)
            except QDeviceFault as fault:
                return _err(fault.code, fault.text)
            return (" ".join(f"{v:.9f}" for v in bloch) + "\n").encode("ascii")
        if query == "SIM:BOUND?":
            bound = self.registry.bound_for((device, qubit))
            return ("-\n" if bound is None else f"{bound:.6f}\n").encode("ascii")
        try:
            reply = truth_reply(*self.registry.device_pair_truth(device, qubit))
        except QDeviceFault as fault:
            return _err(fault.code, fault.text)
        return (reply + "\n").encode("ascii")

    def _visibility(self, args: list[str]) -> bytes:
        usage = "usage: SIM:VIS <link> <visibility 0..1>"
        if len(args) != 2:
            return _err(wire.ERR_SYNTAX, usage)
        link = self.links.get(args[0])
        if link is None:
            return _err(wire.ERR_SYNTAX, f"no link {args[0][:40]!r}; the bench has "
                                         f"{sorted(self.links)}")
        try:
            vis = float(args[1])
            if not 0.0 <= vis <= 1.0:       # also refuses nan
                raise ValueError(usage)
            link.set_indistinguishability(vis)
        except ValueError as exc:
            return _err(wire.ERR_SYNTAX, str(exc)[:200])
        return (wire.OK + wire.TERMINATOR).encode("ascii")


def _err(code: int, text: str) -> bytes:
    return (wire.error_reply(code, text) + wire.TERMINATOR).encode("ascii")
