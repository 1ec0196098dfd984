"""QDevice: the driver of a node's quantum memory (qubits, gates, measurement, heralded pairs)
over TCP.

It speaks QDEVICE/1, qnode's own line protocol, specified (words, replies, error codes, batches)
in :mod:`qnode.drivers.qdevice_protocol`; its simulated twin is
:class:`qnode.hal_sim.twins.qdevice.QDeviceTwin`.

:class:`QDevice` wraps each command (qubit ids as ``int``, angles in rad, times in ns) over a
:class:`~qnode.drivers.transport.SerialTransport` on pyserial's ``socket://host:port`` URL (lock,
timeouts, resync after trouble, reconnect with back-off: the rules of
:mod:`qnode.drivers.transport`). An ``ERR`` reply raises :class:`~qnode.drivers.errors.DeviceError`
whose ``code`` is the device's integer code (``ERR_*`` of the protocol module); a reply that does
not parse as the command's answer raises :class:`~qnode.drivers.errors.GarbledReply` naming the
command (the line is then resynchronised before the next exchange). Commands change state and are
not idempotent: after a timeout the caller does not know whether a command ran (``INFO`` and
``QUBITS?`` tell, ``INIT`` restores a known state).
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from qnode.daemon.quantum.bell_states import BELL_STATES

from . import qdevice_protocol as wire
from .driver import Driver
from .errors import DeviceError, GarbledReply
from .transport import SerialTransport


@dataclass(frozen=True)
class QubitCount:
    """``QUBITS?``: the device's number of qubits and how many are free."""

    capacity: int
    free: int


@dataclass(frozen=True)
class QubitInfo:
    """``INFO <q>``: age of the qubit's state (ns) and the pair it was loaded from, if any."""

    qubit: int
    age_ns: int
    link: str | None
    seq: int | None
    bell: str | None
    herald_time_ps: int | None = None   # bound by herald time: the herald's station time (ps)


@dataclass(frozen=True)
class PairsAt:
    """What :meth:`QDevice.pairs_at` did: per measured pair its outcome (0/1, None where the ENT
    failed); per bound pair the announced Bell state (None where the ENT failed) and when the
    ENT ran (:func:`time.monotonic` s, None where it failed)."""

    outcomes: list[int | None]
    bells: list[str | None]
    bound_at: list[float | None]


class QDevice(Driver):
    """A QDevice at ``address``: ``socket://host:port``, ``host:port``, or a built
    :class:`~qnode.drivers.transport.SerialTransport`. ``timeout_s``: reply timeout (s);
    ``transport_options`` go to the transport (e.g. ``reconnect_attempts``). Opens at once.
    """

    instrument = "QDevice"

    def __init__(self, address: str | SerialTransport, *, timeout_s: float = 1.0,
                 **transport_options: object):
        if isinstance(address, SerialTransport):
            self.transport = address
        else:
            url = address if "://" in address else f"socket://{address}"
            self.transport = SerialTransport(url, instrument=self.instrument,
                                             write_termination=wire.TERMINATOR,
                                             read_termination=wire.TERMINATOR,
                                             timeout_s=timeout_s,
                                             **transport_options)  # type: ignore[arg-type]
        self.transport.open()

    # ------------------------------------------------------------------ identity and resources
    def identify(self) -> str:
        """``*IDN?``: maker, model, serial, version (comma separated)."""
        return self._query(wire.IDN, re.compile(r"[^,\s][^,]*(,[^,]*){3}"))

    def reset(self) -> None:
        """``*RST``: free every qubit."""
        self._ok(wire.RST)

    def qubits(self) -> QubitCount:
        """``QUBITS?``: capacity and free qubits."""
        m = self._match(wire.QUBITS, re.compile(r"(\d{1,9}) (\d{1,9})"))
        return QubitCount(int(m[1]), int(m[2]))

    def capacity(self) -> int:
        """Number of qubits of the device."""
        return self.qubits().capacity

    def time_ns(self) -> int:
        """``TIME?``: the device clock (ns)."""
        return int(self._query(wire.TIME, wire.UINT))

    # ------------------------------------------------------------------ qubits
    def alloc(self) -> int:
        """``ALLOC``: a free qubit, in |0⟩; DeviceError code 3 when none is free."""
        return int(self._query(wire.ALLOC, wire.UINT))

    def free(self, qubit: int) -> None:
        """``FREE <q>``: release the qubit."""
        self._ok(f"{wire.FREE} {_qid(qubit)}")

    def init(self, qubit: int) -> None:
        """``INIT <q>``: reset the qubit to |0⟩ (age 0, no pair)."""
        self._ok(f"{wire.INIT} {_qid(qubit)}")

    def rotate(self, qubit: int, axis: str, angle_rad: float) -> None:
        """``ROT <q> <axis> <angle>``: R_axis(θ) = exp(−iθσ/2), θ in rad."""
        a = axis.upper()
        if a not in wire.AXES:
            raise ValueError(f"axis must be X, Y or Z, got {axis!r}")
        if not math.isfinite(angle_rad):
            raise ValueError(f"angle must be finite, got {angle_rad!r}")
        self._ok(f"{wire.ROT} {_qid(qubit)} {a} {float(angle_rad)!r}")

    def rx(self, qubit: int, angle_rad: float) -> None:
        self.rotate(qubit, "X", angle_rad)

    def ry(self, qubit: int, angle_rad: float) -> None:
        self.rotate(qubit, "Y", angle_rad)

    def rz(self, qubit: int, angle_rad: float) -> None:
        self.rotate(qubit, "Z", angle_rad)

    def hadamard(self, qubit: int) -> None:
        """H up to a global phase, as ``ROT q Z π`` then ``ROT q Y π/2`` (two gates)."""
        with self.transport.lock:
            self.rz(qubit, math.pi)
            self.ry(qubit, math.pi / 2)

    def cnot(self, control: int, target: int) -> None:
        """``CNOT <control> <target>``."""
        if int(control) == int(target):
            raise ValueError("control and target must differ")
        self._ok(f"{wire.CNOT} {_qid(control)} {_qid(target)}")

    def measure(self, qubit: int, basis: str = "Z") -> int:
        """``MEAS <q> <basis>``: outcome 0 (+1 eigenstate) or 1; the qubit is reset to |0⟩."""
        b = basis.upper()
        if b not in wire.BASES:
            raise ValueError(f"basis must be Z, X or Y, got {basis!r}")
        return int(self._query(f"{wire.MEAS} {_qid(qubit)} {b}", re.compile(r"[01]")))

    def entangle(self, qubit: int, link: str, seq: int) -> str:
        """``ENT <q> <link> <seq>``: bind the qubit to the pair heralded on ``link`` with
        sequence number ``seq``; the announced Bell state (``"phi+"`` … ``"psi-"``).
        DeviceError code 5 (no such pair) or 6 (halves taken)."""
        if not wire.LINK.fullmatch(link):
            raise ValueError(f"link must be 1-64 of [A-Za-z0-9_.:-], got {link!r}")
        if isinstance(seq, bool) or int(seq) != seq or seq < 0:
            raise ValueError(f"seq must be an integer >= 0, got {seq!r}")
        return self._query(f"{wire.ENT} {_qid(qubit)} {link} {int(seq)}", wire.BELL)

    def entangle_at(self, qubit: int, link: str, time_ps: int) -> str:
        """``ENT <q> <link> T<time_ps>``: bind the qubit to the pair heralded on ``link`` at
        station time ``time_ps`` (ps, within the device's tolerance); the announced Bell state.
        DeviceError code 5 (no herald near that time) or 6 (halves taken)."""
        if not wire.LINK.fullmatch(link):
            raise ValueError(f"link must be 1-64 of [A-Za-z0-9_.:-], got {link!r}")
        if (isinstance(time_ps, bool) or int(time_ps) != time_ps or time_ps < 0
                or time_ps >= 10**19):
            raise ValueError(f"time_ps must be an integer in [0, 1e19), got {time_ps!r}")
        return self._query(f"{wire.ENT} {_qid(qubit)} {link} T{int(time_ps)}", wire.BELL)

    def emit(self, qubit: int, channel: str) -> int:
        """``EMIT <q> <channel>``: send the qubit's state down the quantum channel ``channel``;
        the photon's number (the receiver absorbs it by that number). The qubit is left in
        |0⟩. DeviceError code 8 when no such channel starts at this device."""
        if not wire.LINK.fullmatch(channel):
            raise ValueError(f"channel must be 1-64 of [A-Za-z0-9_.:-], got {channel!r}")
        return int(self._query(f"{wire.EMIT} {_qid(qubit)} {channel}", wire.UINT))

    def absorb(self, qubit: int, channel: str, photon: int) -> None:
        """``ABSORB <q> <channel> <n>``: store photon ``photon`` of ``channel`` in the qubit.
        DeviceError code 5 when it did not arrive (lost on the way, or taken), 8 when no such
        channel ends at this device."""
        if not wire.LINK.fullmatch(channel):
            raise ValueError(f"channel must be 1-64 of [A-Za-z0-9_.:-], got {channel!r}")
        if isinstance(photon, bool) or int(photon) != photon or photon < 0:
            raise ValueError(f"photon must be an integer >= 0, got {photon!r}")
        self._ok(f"{wire.ABSORB} {_qid(qubit)} {channel} {int(photon)}")

    def age_ns(self, qubit: int) -> int:
        """``AGE? <q>``: ns since the qubit's state was prepared or loaded."""
        return int(self._query(f"{wire.AGE} {_qid(qubit)}", wire.UINT))

    def info(self, qubit: int) -> QubitInfo:
        """``INFO <q>``: age and bound pair."""
        m = self._match(f"{wire.INFO} {_qid(qubit)}", wire.INFO_REPLY)
        seq, at = m[3], None
        if seq.startswith("T"):
            seq, at = "-", int(seq[1:])
        return QubitInfo(int(qubit), int(m[1]), None if m[2] == "-" else m[2],
                         None if seq == "-" else int(seq), None if m[4] == "-" else m[4], at)

    def batch(self, commands: list[str]) -> list[str | DeviceError]:
        """Run ``commands`` (at most :data:`~qnode.drivers.qdevice_protocol.MAX_BATCH`) as one
        request line; each command's reply in order, an ``ERR`` reply as a DeviceError
        (returned, not raised)."""
        sep = wire.BATCH_SEPARATOR
        if not 0 < len(commands) <= wire.MAX_BATCH or any(sep in c or "\n" in c for c in commands):
            raise ValueError(f"a batch is 1-{wire.MAX_BATCH} commands without ';' or newlines")
        line = sep.join(commands)
        reply = self.transport.query(line)
        parts = reply.rstrip("\r").split(sep)
        if len(parts) != len(commands):
            raise self._garbled(line[:80], reply, f"{len(parts)} replies to {len(commands)} "
                                                  f"commands")
        out: list[str | DeviceError] = []
        for command, part in zip(commands, parts, strict=True):
            if part.startswith("ERR"):
                m = wire.ERR_REPLY.fullmatch(part)
                if m is None:
                    raise self._garbled(command, part, "malformed ERR reply")
                out.append(self.transport.error(DeviceError, f"device error {m[1]}: {m[2]}",
                                                command, code=int(m[1])))
            else:
                out.append(part)
        return out

    def pairs_at(self, link: str, *, measure: list[tuple[int, int, str]] | None = None,
                 bind: list[tuple[int, int]] | None = None) -> PairsAt:
        """Work on pairs of ``link`` by herald time in as few round trips as batches allow:
        for each ``(qubit, time_ps, basis)`` of ``measure``, ``ENT <q> <link> T<ps>`` then
        ``MEAS <q> <basis>`` — the outcome (0/1), or None where the ENT failed; then for each
        ``(qubit, time_ps)`` of ``bind``, ``ENT`` then ``AGE? <q>`` — the announced Bell state,
        or None, and when the ENT ran (:func:`time.monotonic` s: the reply's arrival, stamped on
        the calling thread as it returns, less the device's own age of the qubit, so a caller
        that waits before it looks does not age the pair late)."""
        if not wire.LINK.fullmatch(link):
            raise ValueError(f"link must be 1-64 of [A-Za-z0-9_.:-], got {link!r}")
        measure, bind = measure or [], bind or []
        # (command, reply count) groups: an ENT and the command after it stay in one batch
        groups: list[list[str]] = []
        for q, t, basis in measure:
            if basis.upper() not in wire.BASES:
                raise ValueError(f"basis must be Z, X or Y, got {basis!r}")
            groups.append([f"{wire.ENT} {_qid(q)} {link} T{int(t)}",
                           f"{wire.MEAS} {_qid(q)} {basis.upper()}"])
        groups += [[f"{wire.ENT} {_qid(q)} {link} T{int(t)}", f"{wire.AGE} {_qid(q)}"]
                   for q, t in bind]
        replies: list[str | DeviceError] = []
        arrived: list[float] = []   # per reply, when its batch's reply line came back
        per_batch = wire.MAX_BATCH // 2
        for i in range(0, len(groups), per_batch):
            chunk = [c for g in groups[i:i + per_batch] for c in g]
            replies += self.batch(chunk)
            arrived += [time.monotonic()] * len(chunk)
        outcomes: list[int | None] = []
        for k in range(len(measure)):
            ent, meas = replies[2 * k], replies[2 * k + 1]
            ok = isinstance(ent, str) and meas in ("0", "1")
            outcomes.append(int(meas) if ok else None)  # type: ignore[arg-type]
        bells: list[str | None] = []
        bound_at: list[float | None] = []
        for k in range(2 * len(measure), len(replies), 2):
            ent, age = replies[k], replies[k + 1]
            if not (isinstance(ent, str) and ent in wire.BELL_TOKENS):
                bells.append(None)
                bound_at.append(None)
                continue
            if not (isinstance(age, str) and wire.UINT.fullmatch(age)):
                raise self._garbled(f"{wire.AGE} after ENT", str(age), "not an age in ns")
            bells.append(ent)
            bound_at.append(arrived[k + 1] - int(age) * 1e-9)
        return PairsAt(outcomes, bells, bound_at)

    def measure_pairs_at(self, qubit: int, link: str,
                         pairs: list[tuple[int, str]]) -> list[int | None]:
        """Bind ``qubit`` to each pair of ``link`` heralded at ``(time_ps, basis)`` in turn and
        measure it in that basis (:meth:`pairs_at`): each outcome (0/1), or None where the ENT
        failed."""
        return self.pairs_at(link, measure=[(qubit, t, b) for t, b in pairs]).outcomes

    def bell_measurement(self, q1: int, q2: int) -> str:
        """Bell-state measurement of ``q1``, ``q2`` in one round trip: ``CNOT q1 q2``,
        ``MEAS q1 X``, ``MEAS q2 Z``. After the CNOT, Φ± leave q2 in |0⟩ and Ψ± in |1⟩, and q1
        in |±⟩: the Z outcome is the Bell index's x bit, the X outcome its z bit. The Bell
        state (``"phi+"`` … ``"psi-"``); DeviceError from the first refused command."""
        return self.bell_measurement_at(q1, q2)[0]

    def bell_measurement_at(self, q1: int, q2: int) -> tuple[str, float]:
        """:meth:`bell_measurement`, and when it ran (:func:`time.monotonic` s): ``AGE? q2``
        joins the batch (the time since its ``MEAS``), subtracted from the reply's arrival as
        :meth:`pairs_at` does for a bind."""
        a, b = _qid(q1), _qid(q2)
        commands = [f"{wire.CNOT} {a} {b}", f"{wire.MEAS} {a} X", f"{wire.MEAS} {b} Z",
                    f"{wire.AGE} {b}"]
        replies = self.batch(commands)
        arrived = time.monotonic()
        for reply in replies:
            if isinstance(reply, DeviceError):
                raise reply
        cnot, z_bit, x_bit, age = replies
        if cnot != wire.OK or z_bit not in ("0", "1") or x_bit not in ("0", "1") \
                or not (isinstance(age, str) and wire.UINT.fullmatch(age)):
            raise self._garbled(wire.BATCH_SEPARATOR.join(commands),
                                wire.BATCH_SEPARATOR.join(map(str, replies)),
                                "not the replies of a BSM")
        return BELL_STATES[2 * int(x_bit) + int(z_bit)], arrived - int(age) * 1e-9

    def parity_round(self, kept: int, sacrificed: int,
                     rotations: list[tuple[int, str, float]]) -> int:
        """One end's side of a purification round in one round trip: each ``(qubit, axis,
        angle_rad)`` of ``rotations`` (``ROT``), then ``CNOT kept sacrificed`` and
        ``MEAS sacrificed Z``. The Z outcome (0/1); DeviceError from the first refused
        command, GarbledReply when the replies do not answer these commands."""
        return self.parity_round_at(kept, sacrificed, rotations)[0]

    def parity_round_at(self, kept: int, sacrificed: int,
                        rotations: list[tuple[int, str, float]]) -> tuple[int, float]:
        """:meth:`parity_round`, and when it ran (:func:`time.monotonic` s): ``AGE?`` of the
        sacrificed qubit joins the batch (the time since its ``MEAS``), subtracted from the
        reply's arrival."""
        k, s = _qid(kept), _qid(sacrificed)
        commands = []
        for q, axis, angle in rotations:
            if axis.upper() not in wire.AXES or not math.isfinite(angle):
                raise ValueError(f"rotation must be (qubit, X|Y|Z, finite rad), got "
                                 f"{(q, axis, angle)!r}")
            commands.append(f"{wire.ROT} {_qid(q)} {axis.upper()} {float(angle)!r}")
        commands += [f"{wire.CNOT} {k} {s}", f"{wire.MEAS} {s} Z", f"{wire.AGE} {s}"]
        replies = self.batch(commands)
        arrived = time.monotonic()
        for reply in replies:
            if isinstance(reply, DeviceError):
                raise reply
        outcome, age = replies[-2], replies[-1]
        if any(r != wire.OK for r in replies[:-2]) or outcome not in ("0", "1") \
                or not (isinstance(age, str) and wire.UINT.fullmatch(age)):
            raise self._garbled(wire.BATCH_SEPARATOR.join(commands),
                                wire.BATCH_SEPARATOR.join(map(str, replies)),
                                "not the replies of a purification round")
        return int(outcome), arrived - int(age) * 1e-9

    # ------------------------------------------------------------------ internals
    def _exchange(self, command: str) -> str:
        """One request, one reply line; ``ERR`` → DeviceError with the device's code."""
        reply = self.transport.query(command)
        if reply.endswith("\r"):
            reply = reply[:-1]
        if reply.startswith("ERR"):
            m = wire.ERR_REPLY.fullmatch(reply)
            if m is None:
                raise self._garbled(command, reply, "malformed ERR reply")
            raise self.transport.error(DeviceError, f"device error {m[1]}: {m[2]}", command,
                                       code=int(m[1]))
        return reply

    def _match(self, command: str, pattern: re.Pattern[str]) -> re.Match[str]:
        reply = self._exchange(command)
        m = pattern.fullmatch(reply)
        if m is None:
            raise self._garbled(command, reply, "reply does not answer the command")
        return m

    def _query(self, command: str, pattern: re.Pattern[str]) -> str:
        return self._match(command, pattern)[0]

    def _ok(self, command: str) -> None:
        self._match(command, re.compile(wire.OK))

    def _garbled(self, command: str, reply: str, why: str) -> GarbledReply:
        self.transport.mark_stale()
        return self.transport.error(GarbledReply, why, command,
                                    reply=reply)


def _qid(qubit: int) -> str:
    if isinstance(qubit, bool) or int(qubit) != qubit or qubit < 0:
        raise ValueError(f"qubit id must be an integer >= 0, got {qubit!r}")
    return str(int(qubit))
