"""The gates of an OPERATE (:meth:`~qnode.client.node.NodeClient.operate`), as the protocol's
gate objects (:data:`~qnode.daemon.apps.protocol.GATE_SCHEMA`)::

    from qnode.client.gates import AUX, PAIR, cnot, h, meas, rot

    ops = [rot(AUX, "Y", 0.3), cnot(AUX, PAIR), h(AUX), meas(AUX), meas(PAIR)]

A gate acts on :data:`PAIR`, this end's half of the pair, or :data:`AUX`, a scratch qubit of
the node (in ``|0>`` at its first use in an OPERATE, freed when the OPERATE ends). Angles are in
radians, within ±4π; ``rot(q, axis, angle)`` is ``exp(-i angle sigma_axis / 2)``. A ``meas``
gives one outcome (0: the +1 eigenstate of its basis); measuring :data:`PAIR` consumes the
pair's qubit. ``send`` sends a qubit's state to another node over the quantum channel between
the nodes (the RESULT's ``photons`` numbers it; a sent :data:`PAIR` is consumed too), and
``receive``, the first gate of an OPERATE at that node, loads :data:`AUX` with it (superdense
coding). Every function checks its arguments (ValueError naming what is wrong) and returns a
new dict.
"""
from __future__ import annotations

import math
import re
from typing import Any

#: this end's half of the pair
PAIR = "pair"
#: the node's scratch qubit
AUX = "aux"
QUBITS = (PAIR, AUX)
AXES = ("X", "Y", "Z")
BASES = ("Z", "X", "Y")
#: the largest rotation angle magnitude the protocol takes (rad)
MAX_ANGLE_RAD = 4 * math.pi
_NODE = re.compile(r"[A-Za-z0-9_-]{1,64}")

Gate = dict[str, Any]


def _qubit(what: str, qubit: object) -> str:
    if not isinstance(qubit, str) or qubit not in QUBITS:
        raise ValueError(f"{what} {qubit!r}: expected {PAIR!r} or {AUX!r}")
    return qubit


def _letter(what: str, value: object, allowed: tuple[str, ...]) -> str:
    if isinstance(value, str) and value.upper() in allowed:
        return value.upper()
    raise ValueError(f"{what} {value!r}: expected one of {', '.join(allowed)}")


def rot(qubit: str, axis: str, angle_rad: float) -> Gate:
    """A rotation of ``qubit`` by ``angle_rad`` (rad, within ±4π) about ``axis`` (``X``,
    ``Y`` or ``Z``; lower case is taken too)."""
    q, a = _qubit("qubit", qubit), _letter("axis", axis, AXES)
    if isinstance(angle_rad, bool) or not isinstance(angle_rad, int | float) or \
            not math.isfinite(angle_rad) or abs(angle_rad) > MAX_ANGLE_RAD:
        raise ValueError(f"angle_rad {angle_rad!r}: expected a number of radians within "
                         f"±4π")
    return {"gate": "rot", "qubit": q, "axis": a, "angle_rad": float(angle_rad)}


def h(qubit: str) -> Gate:
    """A Hadamard gate on ``qubit``."""
    return {"gate": "h", "qubit": _qubit("qubit", qubit)}


def x(qubit: str) -> Gate:
    """A Pauli X on ``qubit`` (up to a global phase)."""
    return {"gate": "x", "qubit": _qubit("qubit", qubit)}


def y(qubit: str) -> Gate:
    """A Pauli Y on ``qubit`` (up to a global phase)."""
    return {"gate": "y", "qubit": _qubit("qubit", qubit)}


def z(qubit: str) -> Gate:
    """A Pauli Z on ``qubit`` (up to a global phase)."""
    return {"gate": "z", "qubit": _qubit("qubit", qubit)}


def cnot(control: str, target: str) -> Gate:
    """A CNOT from ``control`` to ``target`` (the two qubits differ)."""
    c, t = _qubit("control", control), _qubit("target", target)
    if c == t:
        raise ValueError(f"cnot: control and target are both {c!r}")
    return {"gate": "cnot", "control": c, "target": t}


def meas(qubit: str, basis: str = "Z") -> Gate:
    """Measure ``qubit`` in ``basis`` (``Z``, ``X`` or ``Y``; lower case is taken too): one
    outcome in the RESULT. A measured :data:`PAIR` is consumed, a measured :data:`AUX` is back
    in ``|0>``."""
    return {"gate": "meas", "qubit": _qubit("qubit", qubit),
            "basis": _letter("basis", basis, BASES)}


def _node(what: str, node: object) -> str:
    if not isinstance(node, str) or not _NODE.fullmatch(node):
        raise ValueError(f"{what} {node!r}: expected a node id (letters, digits, - and _)")
    return node


def send(qubit: str, to: str) -> Gate:
    """Send ``qubit``'s state to node ``to`` over the quantum channel from this node to it:
    one photon number in the RESULT's ``photons``, which the receiver's :func:`receive` names.
    The photon may be lost on the way; a sent :data:`PAIR` is consumed, a sent :data:`AUX` is
    back in ``|0>``."""
    return {"gate": "send", "qubit": _qubit("qubit", qubit), "to": _node("to", to)}


def receive(from_node: str, photon: int) -> Gate:
    """Load :data:`AUX` with photon ``photon`` (a sender's RESULT ``photons`` entry) of the
    quantum channel from node ``from_node``. It must be the OPERATE's first gate; if the photon
    did not arrive the OPERATE ends in ``ERROR photon_lost`` and nothing ran."""
    if isinstance(photon, bool) or not isinstance(photon, int) or not 0 <= photon < 2**63:
        raise ValueError(f"photon {photon!r}: expected an integer >= 0")
    return {"gate": "receive", "qubit": AUX, "from": _node("from_node", from_node),
            "photon": photon}
