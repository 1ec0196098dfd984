"""An application's gates on its half of a pair: checked, turned into QDEVICE/1 commands, run.

An ``OPERATE`` (:class:`~qnode.daemon.apps.protocol.Operate`) names its qubits ``pair`` (this
end's half of a delivered pair) and ``aux`` (a scratch qubit). :func:`check_gates` refuses what
the schema cannot see (a CNOT on one qubit, a gate on the pair's qubit after it was measured or
sent, a quantum channel the node does not have, a receive that is not the first gate);
:func:`run_gates` runs the gates on the QDevice's thread in one batch: ``ALLOC`` for ``aux``
when a gate uses it, the gates, ``FREE`` of ``aux`` whatever happened. Commands and their
meaning are the QDEVICE/1 protocol's (:mod:`qnode.drivers.qdevice_protocol`); Hadamard is
``ROT Z π`` then ``ROT Y π/2`` as the driver's, a Pauli gate is a rotation by π (both up to a
global phase). ``send`` is ``EMIT`` on the channel to that node, ``receive`` an ``ABSORB`` from
the channel from it, in a round trip of its own before the other gates: a photon that did not
arrive (:class:`PhotonLost`) leaves the pair as it was.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qnode.drivers import qdevice_protocol as wire
from qnode.drivers.errors import DeviceError

PAIR, AUX = "pair", "aux"
_PAULI_AXIS = {"x": "X", "y": "Y", "z": "Z"}


@dataclass(frozen=True)
class Channels:
    """This node's quantum channels by the node at their other end: ``out`` (to it) and
    ``into`` (from it), each the channel's id."""

    out: Mapping[str, str] = field(default_factory=dict)
    into: Mapping[str, str] = field(default_factory=dict)


#: a node without quantum channels
NO_CHANNELS = Channels()


class PhotonLost(Exception):
    """A ``receive``'s photon did not arrive (lost in the channel, or taken): nothing ran."""


def check_gates(ops: Sequence[Mapping[str, Any]],
                channels: Channels = NO_CHANNELS) -> tuple[bool, bool]:
    """``(uses_aux, consumes_pair)`` of schema-valid gates ``ops`` (a measured or sent pair
    qubit is consumed); ValueError naming the gate (``ops.<i>``) that cannot run."""
    uses_aux = consumed = False
    for i, g in enumerate(ops):
        gate = g["gate"]
        qubits = [g["control"], g["target"]] if gate == "cnot" else [g["qubit"]]
        if gate == "cnot" and qubits[0] == qubits[1]:
            raise ValueError(f"OPERATE.ops.{i}: control and target are both {qubits[0]!r}")
        if consumed and PAIR in qubits:
            raise ValueError(f"OPERATE.ops.{i}: the pair's qubit was measured or sent before "
                             f"(that consumes it)")
        if gate == "send" and g["to"] not in channels.out:
            raise ValueError(f"OPERATE.ops.{i}: this node has no quantum channel to "
                             f"{g['to']!r}")
        if gate == "receive":
            if i != 0:
                raise ValueError(f"OPERATE.ops.{i}: receive must be the first gate")
            if g["from"] not in channels.into:
                raise ValueError(f"OPERATE.ops.{i}: this node has no quantum channel from "
                                 f"{g['from']!r}")
        uses_aux = uses_aux or AUX in qubits
        consumed = consumed or (gate in ("meas", "send") and g["qubit"] == PAIR)
    return uses_aux, consumed


def commands(ops: Sequence[Mapping[str, Any]], qubits: Mapping[str, int],
             channels: Channels = NO_CHANNELS) -> list[str]:
    """The QDEVICE/1 command lines of ``ops`` with ``qubits`` mapping ``pair``/``aux`` to qubit
    ids (``channels`` for send and receive)."""
    out: list[str] = []
    for g in ops:
        gate = g["gate"]
        if gate == "rot":
            out.append(f"{wire.ROT} {qubits[g['qubit']]} {g['axis']} {float(g['angle_rad'])!r}")
        elif gate == "h":
            q = qubits[g["qubit"]]
            out += [f"{wire.ROT} {q} Z {math.pi!r}", f"{wire.ROT} {q} Y {math.pi / 2!r}"]
        elif gate in _PAULI_AXIS:
            out.append(f"{wire.ROT} {qubits[g['qubit']]} {_PAULI_AXIS[gate]} {math.pi!r}")
        elif gate == "cnot":
            out.append(f"{wire.CNOT} {qubits[g['control']]} {qubits[g['target']]}")
        elif gate == "meas":
            out.append(f"{wire.MEAS} {qubits[g['qubit']]} {g['basis']}")
        elif gate == "send":
            out.append(f"{wire.EMIT} {qubits[g['qubit']]} {channels.out[g['to']]}")
        elif gate == "receive":
            out.append(f"{wire.ABSORB} {qubits[AUX]} {channels.into[g['from']]} "
                       f"{int(g['photon'])}")
        else:   # the schema admits no other gate
            raise ValueError(f"unknown gate {gate!r}")
    return out


def run_gates(device: Any, pair_qubit: int, ops: Sequence[Mapping[str, Any]],
              channels: Channels = NO_CHANNELS) -> tuple[list[int], list[int]]:
    """Run ``ops`` on ``device`` (a :class:`~qnode.drivers.qdevice.QDevice`, on its thread):
    the outcomes of the ``meas`` gates and the photon numbers of the ``send`` gates, in order.
    :class:`PhotonLost` when a receive's photon did not arrive (no other gate ran; nor when
    the device refuses the receive otherwise, which raises its DeviceError);
    :class:`~qnode.drivers.errors.DeviceError` when the device refuses a command (the first
    refusal; the gates after it ran or not, as the batch says) or has no free qubit for
    ``aux``."""
    uses_aux, _ = check_gates(ops, channels)
    aux = device.alloc() if uses_aux else None
    try:
        qubits = {PAIR: int(pair_qubit)} | ({AUX: aux} if aux is not None else {})
        lines = commands(ops, qubits, channels)
        replies: list[Any] = []
        if ops and ops[0]["gate"] == "receive":
            first = device.batch(lines[:1])
            if isinstance(first[0], DeviceError):   # nothing else runs on an empty aux
                if first[0].code == wire.ERR_NO_PAIR:
                    raise PhotonLost(f"photon {ops[0]['photon']} from {ops[0]['from']} did "
                                     f"not arrive")
                raise first[0]
            replies += first
            lines_left = lines[1:]
        else:
            lines_left = lines
        for k in range(0, len(lines_left), wire.MAX_BATCH):
            replies += device.batch(lines_left[k:k + wire.MAX_BATCH])
    finally:
        if aux is not None:
            device.free(aux)
    for r in replies:
        if isinstance(r, DeviceError):
            raise r
    outcomes = [int(r) for line, r in zip(lines, replies, strict=True)
                if line.startswith(wire.MEAS + " ")]
    photons = [int(r) for line, r in zip(lines, replies, strict=True)
               if line.startswith(wire.EMIT + " ")]
    return outcomes, photons
