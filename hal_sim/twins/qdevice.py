"""Simulated QDevice: a node's quantum memory (qubits, gates, measurement, heralded pairs), the
wire twin of :class:`qnode.drivers.qdevice.QDevice`.

The protocol it serves is specified in :mod:`qnode.drivers.qdevice_protocol` (line-based ASCII
over TCP, one request line → one reply line, ``\\n`` terminated), whose words, codes and forms
it reads. Serve it with :class:`~qnode.hal_sim.twins.serve.TcpServer` (``TcpServer(twin,
"alice")`` or :meth:`QDeviceTwin.server`), whose :class:`~qnode.hal_sim.twins.serve.Faults`
inject slow, dropped, garbled and truncated replies, hangs and disconnects as for every other
twin.

**Configuration** (:class:`QDeviceConfig`; times in **ns**, as on the wire): ``n_qubits``
(capacity), ``t1_ns``/``t2_ns`` (``math.inf`` = no decay; T2 ≤ 2·T1), ``gate_fidelity_1q``/
``gate_fidelity_2q``: despite the names, the **depolarising parameter g** of the 1- and 2-qubit
gates, not a fidelity: after each k-qubit gate ρ → g·UρU† + (1 − g)·I/2^k ⊗ Tr_k ρ (depolarising
probability 1 − g). The average gate fidelity is F_avg = 1 − (1 − g)·(2^k − 1)/2^k
(:mod:`qnode.drivers.qdevice_noise`), e.g. g = 0.999 for a CNOT is F_avg = 0.99925.
``readout_error``: probability that a reported outcome is flipped. Gates and measurements take
no time. The clock is any ``() -> int`` in ns: real time (default, :func:`time.monotonic_ns`
from construction) or a :class:`ManualClock` that tests advance by hand (share one between twins
for a common time base).

**Decoherence.** Every qubit remembers up to when its T1/T2 decay has been applied. Before any
command touches a qubit, the decay for the time since then is applied to it
(:meth:`~qnode.hal_sim.physics.density_matrix.DensityMatrix.decohere`). Local channels on different
qubits commute, so this lazy bookkeeping is exact, even for a pair whose halves live on two
devices with different clocks.

**Shared state.** Qubits of different nodes get entangled by heralding, so their joint state
lives in a :class:`~qnode.hal_sim.twins.pair_registry.PairRegistry` shared by the twins
(``registry``), which also holds the heralded pairs that ``ENT`` binds and the quantum channels
that ``EMIT`` and ``ABSORB`` use; see its module.

Ground truth for tests: :meth:`QDeviceTwin.state` (reduced state of some of its qubits), and on
the wire the simulator-only query ``SIM:PAIR? <q>`` (not part of QDEVICE/1; a real device cannot
answer it, and the daemon never sends it): ``<device>:<qubit> <λΦ+> <λΦ−> <λΨ+> <λΨ−>``, the
qubit holding the other half of q's pair (``-`` while that half is not bound) and the pair's Bell
weights now, both halves' decay applied (``ERR 5`` when q is not half of a two-qubit register).
Tests compare the daemon's fidelity estimates with it.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qnode.drivers import qdevice_protocol as wire

from ..physics.density_matrix import CNOT, DensityMatrix, rotation
from .pair_registry import PairRegistry, QDeviceFault, QubitKey, truth_reply
from .serve import TcpServer, WireDevice, split_lines

#: Waits shorter than this fraction of min(T1, T2) are deferred to the next touch.
DEFER_DECAY = 1e-6
#: The twin's ``*IDN?`` reply.
IDN = "QNODE,QDEVICE-SIM,{name},1.0"
#: The simulator-only query of the pair a qubit holds (not part of QDEVICE/1).
SIM_PAIR = "SIM:PAIR?"


class ManualClock:
    """A device clock (ns) that moves only when told: ``clock()`` reads it,
    :meth:`advance`/:meth:`set` move it. Thread-safe."""

    def __init__(self, start_ns: int = 0):
        self._now = int(start_ns)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        return self._now

    def advance(self, ns: int | float) -> int:
        """Move on by ``ns`` (≥ 0); the new time (ns)."""
        if ns < 0:
            raise ValueError(f"a clock does not run backwards: {ns!r}")
        with self._lock:
            self._now += int(round(ns))
            return self._now

    def set(self, ns: int) -> None:
        with self._lock:
            if ns < self._now:
                raise ValueError(f"a clock does not run backwards: {ns} < {self._now}")
            self._now = int(ns)


def real_clock() -> Callable[[], int]:
    """Nanoseconds of :func:`time.monotonic_ns` since this call."""
    t0 = time.monotonic_ns()
    return lambda: time.monotonic_ns() - t0


@dataclass(frozen=True)
class QDeviceConfig:
    """Parameters of a simulated QDevice (see the module docstring; times in ns).
    ``gate_fidelity_1q``/``gate_fidelity_2q`` are the depolarising parameters g of the gates."""

    n_qubits: int = 4
    t1_ns: float = math.inf
    t2_ns: float = math.inf
    gate_fidelity_1q: float = 1.0
    gate_fidelity_2q: float = 1.0
    readout_error: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.n_qubits, bool) or not isinstance(self.n_qubits, int) \
                or not 1 <= self.n_qubits <= 1000:
            raise ValueError(f"QDeviceConfig.n_qubits must be an integer 1..1000, "
                             f"got {self.n_qubits!r}")
        for name in ("t1_ns", "t2_ns"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0) or math.isnan(value):
                raise ValueError(f"QDeviceConfig.{name} must be > 0 (math.inf: no decay), "
                                 f"got {value!r}")
        if self.t2_ns > 2 * self.t1_ns:
            raise ValueError(f"QDeviceConfig: T2 must be <= 2*T1, got T1={self.t1_ns!r} ns, "
                             f"T2={self.t2_ns!r} ns")
        for name in ("gate_fidelity_1q", "gate_fidelity_2q", "readout_error"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"QDeviceConfig.{name} must be in [0, 1], got {value!r}")


@dataclass
class _Slot:
    loaded_ns: int           # when the qubit's present state was prepared or loaded
    last_ns: int             # decay applied up to here
    link: str | None = None
    seq: int | None = None
    bell: str | None = None
    herald_ps: int | None = None   # bound by herald time (ENT ... T<ps>): the herald's time


class QDeviceTwin(WireDevice):
    """A simulated QDevice named ``name`` (see the module docstring).

    ``config``: :class:`QDeviceConfig`; ``registry``: a shared :class:`PairRegistry` (a private
    one by default); ``clock``: ``() -> int`` ns (default real time); ``seed``: readout-error
    sampling (and the private registry's measurements).
    """

    reply_terminator = b"\n"

    def __init__(self, config: QDeviceConfig | None = None, *, name: str = "qdevice",
                 registry: PairRegistry | None = None, clock: Callable[[], int] | None = None,
                 seed: int | None = None):
        if not wire.LINK.fullmatch(name):
            raise ValueError(f"device name must match {wire.LINK.pattern}, got {name!r}")
        self.config = config or QDeviceConfig()
        self.name = name
        self.registry = registry if registry is not None else PairRegistry(seed=seed)
        self.registry.attach(name, self._touch)
        self.clock = clock or real_clock()
        self._rng = np.random.default_rng(seed)
        self._slots: dict[int, _Slot] = {}
        self._defer_ns = DEFER_DECAY * min(self.config.t1_ns, self.config.t2_ns)
        self._p1 = 1.0 - self.config.gate_fidelity_1q
        self._p2 = 1.0 - self.config.gate_fidelity_2q

    def server(self, port: int = 0) -> TcpServer:
        """A (not yet started) loopback TCP server for this twin."""
        return TcpServer(self, self.name, port=port)

    # ------------------------------------------------------------------ ground truth
    def key(self, qubit: int) -> QubitKey:
        return (self.name, int(qubit))

    @property
    def allocated(self) -> list[int]:
        return sorted(self._slots)

    def state(self, *qubits: int) -> DensityMatrix:
        """The exact reduced state of the given qubits now (decay applied up to the clock)."""
        with self.registry.lock:
            for q in qubits:
                self._touch(q)
            return self.registry.state([self.key(q) for q in qubits])

    # ------------------------------------------------------------------ wire protocol
    def split(self, buffer: bytearray) -> list[bytes]:
        return [r.rstrip(b"\r") for r in split_lines(buffer, b"\n")]

    def handle(self, request: bytes) -> bytes:
        if b";" in request:   # a batch: each command's reply, in order, joined by ";"
            parts = request.split(b";")
            if len(parts) > wire.MAX_BATCH:
                return _err(wire.ERR_SYNTAX, f"a batch holds at most {wire.MAX_BATCH} commands")
            return b";".join(self._handle_one(p.strip()).rstrip(b"\n") for p in parts) + b"\n"
        return self._handle_one(request)

    def _handle_one(self, request: bytes) -> bytes:
        try:
            line = request.decode("ascii")
        except UnicodeDecodeError:
            return _err(wire.ERR_SYNTAX, "request is not ASCII")
        tokens = line.split()
        if not tokens:
            return _err(wire.ERR_UNKNOWN, "empty command")
        name, args = tokens[0].upper(), tokens[1:]
        handler = _COMMANDS.get(name)
        if handler is None:
            return _err(wire.ERR_UNKNOWN, f"unknown command {tokens[0][:32]}")
        method, arity = handler
        if len(args) != arity:
            return _err(wire.ERR_SYNTAX, f"{name} takes {arity} argument(s), got {len(args)}")
        try:
            with self.registry.lock:
                reply = getattr(self, method)(*args)
        except QDeviceFault as fault:
            return _err(fault.code, fault.text)
        except Exception as exc:  # noqa: BLE001 - the device says so, never stays silent
            return _err(wire.ERR_INTERNAL, f"{type(exc).__name__}: {exc}")
        return (reply + "\n").encode("ascii")

    # ------------------------------------------------------------------ commands
    def _idn(self) -> str:
        return IDN.format(name=self.name)

    def _rst(self) -> str:
        for q in list(self._slots):
            self._release(q)
        return wire.OK

    def _qubits(self) -> str:
        cap = self.config.n_qubits
        return f"{cap} {cap - len(self._slots)}"

    def _time(self) -> str:
        return str(self._now())

    def _alloc(self) -> str:
        for q in range(self.config.n_qubits):
            if q not in self._slots:
                self.registry.reset(self.key(q))
                now = self._now()
                self._slots[q] = _Slot(now, now)
                return str(q)
        raise QDeviceFault(wire.ERR_NO_FREE, f"no free qubit (capacity {self.config.n_qubits})")

    def _free(self, q: str) -> str:
        self._release(self._qubit(q))
        return wire.OK

    def _init(self, q: str) -> str:
        self._prepare(self._qubit(q))
        return wire.OK

    def _rot(self, q: str, axis: str, angle: str) -> str:
        qi = self._qubit(q)
        a = axis.upper()
        if a not in wire.AXES:
            raise QDeviceFault(wire.ERR_SYNTAX, f"axis must be X, Y or Z, got {axis[:8]}")
        theta = _angle(angle)
        self._touch(qi)
        self.registry.apply([self.key(qi)], rotation(a, theta), self._p1)
        return wire.OK

    def _cnot(self, c: str, t: str) -> str:
        ci, ti = self._qubit(c), self._qubit(t)
        if ci == ti:
            raise QDeviceFault(wire.ERR_SYNTAX, "control and target must differ")
        self._touch(ci)
        self._touch(ti)
        self.registry.apply([self.key(ci), self.key(ti)], CNOT, self._p2)
        return wire.OK

    def _meas(self, q: str, basis: str) -> str:
        qi = self._qubit(q)
        b = basis.upper()
        if b not in wire.BASES:
            raise QDeviceFault(wire.ERR_SYNTAX, f"basis must be Z, X or Y, got {basis[:8]}")
        self._touch(qi)
        outcome = self.registry.measure(self.key(qi), b)
        if self.config.readout_error > 0 and self._rng.random() < self.config.readout_error:
            outcome ^= 1
        self.registry.add_qubit(self.key(qi))  # measure-and-reset: the qubit stays, in |0⟩
        now = self._now()
        self._slots[qi] = _Slot(now, now)
        return str(outcome)

    def _ent(self, q: str, link: str, seq: str) -> str:
        qi = self._qubit(q)
        if not wire.LINK.fullmatch(link):
            raise QDeviceFault(wire.ERR_SYNTAX, "link must be 1-64 of [A-Za-z0-9_.:-]")
        at = wire.HERALD_TIME.fullmatch(seq)
        if at is not None:
            bell, herald_ps = self.registry.bind_at(link, int(at[1]), self.key(qi))
            now = self._now()
            self._slots[qi] = _Slot(now, now, link, None, bell, herald_ps)
            return bell
        if not wire.UINT.fullmatch(seq):
            raise QDeviceFault(wire.ERR_SYNTAX, "seq must be a non-negative integer or T<time_ps>")
        bell = self.registry.bind(link, int(seq), self.key(qi))
        now = self._now()
        self._slots[qi] = _Slot(now, now, link, int(seq), bell)
        return bell

    def _emit(self, q: str, channel: str) -> str:
        qi = self._qubit(q)
        if not wire.LINK.fullmatch(channel):
            raise QDeviceFault(wire.ERR_SYNTAX, "channel must be 1-64 of [A-Za-z0-9_.:-]")
        self._touch(qi)
        n = self.registry.emit(self.name, self.key(qi), channel)
        self.registry.add_qubit(self.key(qi))   # the qubit stays, in |0⟩
        now = self._now()
        self._slots[qi] = _Slot(now, now)
        return str(n)

    def _absorb(self, q: str, channel: str, n: str) -> str:
        qi = self._qubit(q)
        if not wire.LINK.fullmatch(channel):
            raise QDeviceFault(wire.ERR_SYNTAX, "channel must be 1-64 of [A-Za-z0-9_.:-]")
        if not wire.UINT.fullmatch(n):
            raise QDeviceFault(wire.ERR_SYNTAX, "photon number must be a non-negative integer")
        self.registry.absorb(self.name, self.key(qi), channel, int(n))
        now = self._now()
        self._slots[qi] = _Slot(now, now)
        return wire.OK

    def _age(self, q: str) -> str:
        qi = self._qubit(q)
        return str(max(0, self._now() - self._slots[qi].loaded_ns))

    def _info(self, q: str) -> str:
        qi = self._qubit(q)
        s = self._slots[qi]
        age = max(0, self._now() - s.loaded_ns)
        seq = (f"T{s.herald_ps}" if s.herald_ps is not None
               else "-" if s.seq is None else s.seq)
        return f"AGE={age} LINK={s.link or '-'} SEQ={seq} BELL={s.bell or '-'}"

    def _sim_pair(self, q: str) -> str:
        qi = self._qubit(q)
        return truth_reply(*self.registry.device_pair_truth(self.name, qi))

    # ------------------------------------------------------------------ internals
    def _now(self) -> int:
        return int(self.clock())

    def _qubit(self, token: str) -> int:
        if not wire.QUBIT_ID.fullmatch(token):
            raise QDeviceFault(wire.ERR_SYNTAX, f"qubit id must be a non-negative integer, "
                                           f"got {token[:16]}")
        q = int(token)
        if q not in self._slots:
            raise QDeviceFault(wire.ERR_QUBIT, f"qubit {q} is not allocated")
        return q

    def _touch(self, q: int) -> None:
        """Apply the decay of qubit ``q`` up to now. A wait shorter than ``DEFER_DECAY`` of
        the shorter of T1, T2 is deferred to the next touch (not lost): it changes the state by
        less than that fraction, and skipping it keeps batched commands cheap."""
        s = self._slots[q]
        now = self._now()
        if now - s.last_ns > self._defer_ns:
            self.registry.decohere(self.key(q), now - s.last_ns, self.config.t1_ns,
                                   self.config.t2_ns)
            s.last_ns = now

    def _prepare(self, q: int) -> None:
        self.registry.reset(self.key(q))
        now = self._now()
        self._slots[q] = _Slot(now, now)

    def _release(self, q: int) -> None:
        self.registry.discard(self.key(q))
        del self._slots[q]


#: Each command word the twin serves: (its method, number of arguments).
_COMMANDS: dict[str, tuple[str, int]] = {
    word: (method, wire.ARITY[word]) for word, method in (
        (wire.IDN, "_idn"), (wire.RST, "_rst"), (wire.QUBITS, "_qubits"), (wire.TIME, "_time"),
        (wire.ALLOC, "_alloc"), (wire.FREE, "_free"), (wire.INIT, "_init"), (wire.ROT, "_rot"),
        (wire.CNOT, "_cnot"), (wire.MEAS, "_meas"), (wire.ENT, "_ent"), (wire.AGE, "_age"),
        (wire.INFO, "_info"), (wire.EMIT, "_emit"), (wire.ABSORB, "_absorb"))}
_COMMANDS[SIM_PAIR] = ("_sim_pair", 1)


def _angle(token: str) -> float:
    if not wire.ANGLE.fullmatch(token):
        raise QDeviceFault(wire.ERR_SYNTAX,
                           f"angle must be a decimal number (rad), got {token[:24]}")
    value = float(token)
    if not math.isfinite(value):
        raise QDeviceFault(wire.ERR_SYNTAX, "angle must be finite")
    return value


def _err(code: int, text: str) -> bytes:
    return (wire.error_reply(code, text) + wire.TERMINATOR).encode("ascii")
