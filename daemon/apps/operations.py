"""An application's gates on its half of a pair: checked, turned into QDEVICE/1 commands, run.

An ``OPERATE`` (:class:`~qnode.daemon.apps.protocol.Operate`) names its qubits ``pair`` (this
end's half of a delivered pair) and ``aux`` (a scratch qubit). :func:`check_gates` refuses what
the schema cannot see (a CNOT on one qubit, a gate on the pair's qubit after it was measured);
:func:`run_gates` runs the gates on the QDevice's thread in one batch: ``ALLOC`` for ``aux``
when a gate uses it, the gates, ``FREE`` of ``aux`` whatever happened. Commands and their
meaning are the QDEVICE/1 protocol's (:mod:`qnode.drivers.qdevice_protocol`); Hadamard is
``ROT Z π`` then ``ROT Y π/2`` as the driver's, a Pauli gate is a rotation by π (both up to a
global phase).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from qnode.drivers import qdevice_protocol as wire
from qnode.drivers.errors import DeviceError

PAIR, AUX = "pair", "aux"
_PAULI_AXIS = {"x": "X", "y": "Y", "z": "Z"}


def check_gates(ops: Sequence[Mapping[str, Any]]) -> tuple[bool, bool]:
    """``(uses_aux, measures_pair)`` of schema-valid gates ``ops``; ValueError naming the gate
    (``ops.<i>``) that cannot run."""
    uses_aux = measured = False
    for i, g in enumerate(ops):
        qubits = [g["control"], g["target"]] if g["gate"] == "cnot" else [g["qubit"]]
        if g["gate"] == "cnot" and qubits[0] == qubits[1]:
            raise ValueError(f"OPERATE.ops.{i}: control and target are both {qubits[0]!r}")
        if measured and PAIR in qubits:
            raise ValueError(f"OPERATE.ops.{i}: the pair's qubit was measured before (a "
                             f"measurement consumes it)")
        uses_aux = uses_aux or AUX in qubits
        measured = measured or (g["gate"] == "meas" and g["qubit"] == PAIR)
    return uses_aux, measured


def commands(ops: Sequence[Mapping[str, Any]], qubits: Mapping[str, int]) -> list[str]:
    """The QDEVICE/1 command lines of ``ops`` with ``qubits`` mapping ``pair``/``aux`` to qubit
    ids."""
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
        else:   # the schema admits no other gate
            raise ValueError(f"unknown gate {gate!r}")
    return out


def run_gates(device: Any, pair_qubit: int, ops: Sequence[Mapping[str, Any]]) -> list[int]:
    """Run ``ops`` on ``device`` (a :class:`~qnode.drivers.qdevice.QDevice`, on its thread):
    the outcomes of the ``meas`` gates, in order. :class:`~qnode.drivers.errors.DeviceError`
    when the device refuses a command (the first refusal; the gates after it ran or not, as
    the batch says) or has no free qubit for ``aux``."""
    uses_aux, _ = check_gates(ops)
    aux = device.alloc() if uses_aux else None
    try:
        qubits = {PAIR: int(pair_qubit)} | ({AUX: aux} if aux is not None else {})
        lines = commands(ops, qubits)
        replies: list[Any] = []
        for k in range(0, len(lines), wire.MAX_BATCH):
            replies += device.batch(lines[k:k + wire.MAX_BATCH])
    finally:
        if aux is not None:
            device.free(aux)
    for r in replies:
        if isinstance(r, DeviceError):
            raise r
    return [int(r) for line, r in zip(lines, replies, strict=True)
            if line.startswith(wire.MEAS + " ")]
