"""The QDEVICE/1 wire protocol: the words, codes, limits and reply forms that the driver
(:class:`qnode.drivers.qdevice.QDevice`) and its simulated twin
(:class:`qnode.hal_sim.twins.qdevice.QDeviceTwin`) share, so both read them from one place.

No public standard exists for this interface. The protocol is qnode's own, in the spirit of
QNodeOS's QDevice interface (C. Delle Donne et al., "An operating system for executing
applications on quantum network nodes", Nature, 2025; arXiv:2407.18306): the device exposes
its number of qubits and a set of physical instructions — init, 1- and 2-qubit gates,
measurement, entanglement (keep) — and **every instruction gets a response**.

Protocol ``QDEVICE/1``
======================

Transport: one TCP connection, ASCII. The client sends one request line, the device answers with
exactly one reply line; both end in ``\\n`` (a ``\\r`` before it is ignored). Tokens are separated
by single spaces; command keywords and axis/basis letters are case-insensitive (the driver sends
upper case). Requests are answered in order; the client sends the next request after the reply.

Replies: ``OK`` (a command done), a value (queries, ``ALLOC``, ``MEAS``, ``ENT``), or
``ERR <code> <text>`` — ``<code>`` a decimal integer, ``<text>`` printable ASCII for people.
Unknown commands, wrong argument counts and malformed arguments are answered with ``ERR``,
never with silence; a refused command changes nothing.

Units: time in **ns** (integers), angles in **rad** (decimal, e.g. ``1.5707963267948966``),
qubit ids are integers ``0 .. capacity−1``.

=====================================  =========================================================
request                                reply
=====================================  =========================================================
``*IDN?``                              ``<maker>,<model>,<serial>,<version>`` (twin:
                                       ``QNODE,QDEVICE-SIM,<name>,1.0``)
``*RST``                               ``OK``: every qubit freed
``QUBITS?``                            ``<capacity> <free>``: number of qubits, how many are
                                       free to ``ALLOC``
``ALLOC``                              ``<q>``: the lowest free qubit, now allocated, in |0⟩,
                                       age 0; ``ERR 3`` when every qubit is in use
``FREE <q>``                           ``OK``: q released (its state is discarded; an entangled
                                       partner elsewhere keeps its reduced state)
``INIT <q>``                           ``OK``: q reset to |0⟩, age 0, no pair bound
``ROT <q> <X|Y|Z> <angle>``            ``OK``: R_a(θ) = exp(−iθσ_a/2) on q
``CNOT <control> <target>``            ``OK``: CNOT (control ≠ target)
``MEAS <q> <Z|X|Y>``                   ``0`` or ``1``: projective measurement of q in that basis,
                                       0 = the +1 eigenstate (|0⟩, |+⟩, |+i⟩). **Measure and
                                       reset**: q stays allocated and is left in |0⟩, age 0,
                                       no pair bound (``INIT`` is implied)
``ENT <q> <link> <seq>``               ``<bell>``: q now holds one half of the pair heralded on
                                       ``<link>`` with link sequence number ``<seq>``; q's
                                       previous state is discarded; the reply is the pair's
                                       announced Bell state, ``phi+|phi-|psi+|psi-``. ``ERR 5``
                                       when no such pair was heralded (yet, or any more),
                                       ``ERR 6`` when its halves are taken. ``<link>``: 1–64 of
                                       ``[A-Za-z0-9_.:-]``; ``<seq>``: integer ≥ 0
``ENT <q> <link> T<time_ps>``          ``<bell>``: the same for the pair heralded on ``<link>``
                                       at **station time** ``<time_ps>`` (integer ps on the
                                       heralding station's clock, ``T`` prefix, 1–19 digits):
                                       the device binds the pair whose herald time is nearest
                                       to it within ± the link's tolerance (the twin: the
                                       link's gate, ``gate_ps``, set by the registry that files
                                       the heralds). ``ERR 5`` when no herald lies within it
                                       (or it is older than the device remembers), ``ERR 6`` as
                                       above. ``INFO`` then shows ``SEQ=T<ps>``, the herald's
                                       own time
``EMIT <q> <channel>``                 ``<n>``: q's state leaves on photon number ``<n>`` of the
                                       quantum channel ``<channel>`` (integers from 0, per
                                       channel); q stays allocated, in |0⟩, age 0, no pair
                                       bound (as after ``MEAS``). The photon may be lost on the
                                       way, which the sender does not learn. ``ERR 8`` when no
                                       channel of that name starts at this device.
                                       ``<channel>``: as ``<link>``
``ABSORB <q> <channel> <n>``           ``OK``: q now holds photon ``<n>`` of ``<channel>`` (q's
                                       previous state is discarded; age 0, no pair bound).
                                       ``ERR 5`` when that photon did not arrive (lost, absorbed
                                       already, never sent, or older than the channel keeps),
                                       ``ERR 8`` when no channel of that name ends here
``TIME?``                              ``<ns>``: the device clock
``AGE? <q>``                           ``<ns>``: time since q's state was prepared (ALLOC,
                                       INIT, MEAS) or loaded (ENT)
``INFO <q>``                           ``AGE=<ns> LINK=<link|-> SEQ=<seq|T<ps>|-> BELL=<bell|->``:
                                       what the device knows of q (``-``: no pair bound;
                                       ``T<ps>``: bound by herald time, the herald's time)
=====================================  =========================================================

**Batches.** One request line may carry up to 128 commands separated by ``;``. The device runs
them in order and answers one line: each command's own reply, in the same order, joined by ``;``
(an ``ERR`` of one command does not stop the next; ``ERR`` texts never contain ``;``). A batch
costs one round trip, which is what lets a memory measure hundreds of test pairs per second.

Error codes: 1 unknown command (or empty line), 2 bad arguments (count, number form, axis,
basis, link name, control = target), 3 no free qubit, 4 qubit not allocated (or out of range),
5 no such heralded pair (or photon), 6 pair halves taken (or this qubit holds the other half
already), 7 out of resources (the gate would entangle more qubits than the device holds), 8 no
such quantum channel at this device, 9 internal error.

**Quantum channels.** ``EMIT``/``ABSORB`` move a qubit's state from one device to another, as a
memory that maps its qubit onto a photon sends it down a fibre to a memory that stores it
(memory–photon state transfer). A channel runs one way, from one device to one other; what it
does to the state on the way (loss, depolarising) is the channel's, configured where the
devices are. Superdense coding needs it: the sender encodes two bits on its half of a pair and
sends that half to the holder of the other half, who decodes both with a Bell-state measurement.

Commands change state and are not idempotent: after a timeout (reply lost) the caller does not
know whether a command ran; ``INFO``/``QUBITS?`` tell, ``INIT`` restores a known state.
"""
from __future__ import annotations

import re

from qnode.daemon.quantum.bell_states import BELL_STATES

#: Protocol name and version.
PROTOCOL = "QDEVICE/1"
#: What ends every request and reply line (a carriage return before it is ignored).
TERMINATOR = "\n"
#: Separates the commands of a batch and their replies.
BATCH_SEPARATOR = ";"
#: Commands in one request line (a batch).
MAX_BATCH = 128
#: The reply of a command that is done.
OK = "OK"

# ------------------------------------------------------------------ command words
IDN = "*IDN?"
RST = "*RST"
QUBITS = "QUBITS?"
TIME = "TIME?"
ALLOC = "ALLOC"
FREE = "FREE"
INIT = "INIT"
ROT = "ROT"
CNOT = "CNOT"
MEAS = "MEAS"
ENT = "ENT"
AGE = "AGE?"
INFO = "INFO"
EMIT = "EMIT"
ABSORB = "ABSORB"
#: Every command word and its number of arguments.
ARITY: dict[str, int] = {IDN: 0, RST: 0, QUBITS: 0, TIME: 0, ALLOC: 0, FREE: 1, INIT: 1,
                         ROT: 3, CNOT: 2, MEAS: 2, ENT: 3, AGE: 1, INFO: 1, EMIT: 2, ABSORB: 3}

#: Rotation axes of ``ROT`` and measurement bases of ``MEAS`` (basis 0 = the +1 eigenstate).
AXES = ("X", "Y", "Z")
BASES = ("Z", "X", "Y")
#: The Bell states an ``ENT`` reply may announce (Φ+, Φ−, Ψ+, Ψ−: the one order of
#: :mod:`qnode.daemon.quantum.bell_states`).
BELL_TOKENS = frozenset(BELL_STATES)

# ------------------------------------------------------------------ error codes
ERR_UNKNOWN = 1       # unknown command (or an empty line)
ERR_SYNTAX = 2        # wrong number or form of arguments
ERR_NO_FREE = 3       # ALLOC with every qubit in use
ERR_QUBIT = 4         # qubit id not allocated or out of range
ERR_NO_PAIR = 5       # ENT for a pair that was not heralded (or has expired)
ERR_PAIR_TAKEN = 6    # ENT for a pair whose halves are both bound, or bound here already
ERR_RESOURCE = 7      # the gate would entangle more qubits than the device holds
ERR_NO_CHANNEL = 8    # EMIT/ABSORB on a quantum channel that does not start/end at this device
ERR_INTERNAL = 9      # a bug in the device: said, never silent

# ------------------------------------------------------------------ token and reply forms
#: A qubit id in a request (up to 9 digits).
QUBIT_ID = re.compile(r"\d{1,9}")
#: An unsigned integer of a reply or a sequence number (ns, ps, ids; up to 19 digits).
UINT = re.compile(r"\d{1,19}")
#: The ``<seq>`` of ``ENT`` by herald time: ``T<time_ps>``.
HERALD_TIME = re.compile(r"[Tt](\d{1,19})")
#: A link name: 1-64 of ``[A-Za-z0-9_.:-]``.
LINK = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
#: A decimal angle (rad) of ``ROT``.
ANGLE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
#: A Bell state token of an ``ENT`` or ``INFO`` reply.
BELL = re.compile(r"phi[+-]|psi[+-]")
#: ``ERR <code> <text>``.
ERR_REPLY = re.compile(r"ERR (\d{1,6}) ?(.*)")
#: ``INFO <q>``: ``AGE=<ns> LINK=<link|-> SEQ=<seq|T<ps>|-> BELL=<bell|->``.
INFO_REPLY = re.compile(r"AGE=(\d{1,19}) LINK=(\S+) SEQ=(\d{1,19}|T\d{1,19}|-) "
                        r"BELL=(phi[+-]|psi[+-]|-)")


def error_reply(code: int, text: str) -> str:
    """The line ``ERR <code> <text>`` (without the terminator): ``text`` reduced to printable
    ASCII without ``;`` (each other character becomes ``?``), so it never splits a batch."""
    clean = "".join(c if 32 <= ord(c) < 127 and c != BATCH_SEPARATOR else "?" for c in text)
    return f"ERR {code} {clean}"
