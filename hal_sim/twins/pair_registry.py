"""The joint quantum state of the simulated QDevices of one process, and the heralded pairs
waiting to be bound: :class:`PairRegistry`.

Qubits of different nodes get entangled by heralding, so their joint state cannot live inside one
twin (:class:`~qnode.hal_sim.twins.qdevice.QDeviceTwin`). A registry owns the density matrices of
every qubit of the twins attached to it (in-process; one :class:`threading.RLock` guards all of
it, so the server threads of two twins never act on a joint state at once). A qubit is a key
``(device name, qubit id)``; the registry keeps *registers* — a
:class:`~qnode.hal_sim.physics.density_matrix.DensityMatrix` with the keys of its qubits — and
merges two registers when a CNOT joins them (at most ``max_register_qubits``, else ``ERR 7``). A
measured, freed or re-initialised qubit is traced out of its register, so registers stay small.

Heralded pairs: the heralding physics (a test, a bench, or
:class:`~qnode.hal_sim.physics.heralding.HeraldingSimulator`'s truth through
:meth:`PairRegistry.herald_record`) calls :meth:`PairRegistry.herald` with the link name, the
link's sequence number, the pair's Bell-diagonal weights λ (absolute, order [Φ+, Φ−, Ψ+, Ψ−]) and
the *announced* Bell state. The pair waits in the registry as a two-qubit register. ``ENT <q>
<link> <seq>`` on a device binds its qubit ``q`` to one half (the first binder gets half 0, the
second half 1 — Bell-diagonal states are symmetric under exchange of the halves, so the order does
not matter): ``q``'s previous state is traced out and ``q`` now *is* that half. The pair's age on
each device counts from its ``ENT`` (the twin learns of the pair then); a pair never bound stays
until :meth:`PairRegistry.expire`. Both twins then apply their local operations to the same joint
state. Twins built without a registry get a private one (ENT then needs heralds put into
``twin.registry``).

Heralds by time: a memory node does not learn the station's sequence numbers from the photons,
but it can learn when the station heard the herald. :meth:`PairRegistry.herald_at` (or
:meth:`PairRegistry.herald_records_at` for a chunk of
:data:`~qnode.hal_sim.physics.heralding.HERALD_DTYPE` rows, as the bench does for every step of a
K link's simulator) files a pair under its **station herald time** (ps, station clock). ``ENT <q>
<link> T<time_ps>`` binds ``q`` to the pair of ``link`` whose herald time is nearest to
``time_ps`` within ± the link's **tolerance** (``tolerance_ps`` of the last ``herald_at`` on that
link; the bench uses the link's gate, ``gate_ps``: a station that clusters the two clicks gives
the earlier click's time, the truth the later one; they differ by the detectors' jitter spread,
far less than the gate, while attempts are a period apart). ``ERR 5`` when no herald lies
within the tolerance. Such pairs are light records (time, λ, announced state) until their first
``ENT``, which builds their two-qubit register. Memory is bounded: each link keeps the
``time_horizon`` (default 65536) latest heralds by station time; older ones are forgotten (with
any half not yet bound) and answer ``ERR 5`` — about 20 s of station time at the demo's
3.2 k heralds/s.

Quantum channels (:meth:`PairRegistry.add_channel`): a one-way channel between two attached
devices moves a qubit's state (``EMIT`` on one, ``ABSORB`` on the other): on the way the qubit
is a key of its own (``("#photon", channel, n)``), lost with probability 1 − transmission
(traced out) and depolarised as configured; at most ``max_in_flight`` wait per channel.

Ground truth for tests: :meth:`PairRegistry.state` (any keys, across devices) and
:meth:`PairRegistry.pair_truth`, whose wire form is :func:`truth_reply` (the simulator-only
``SIM:PAIR?`` of the twin and of :class:`~qnode.hal_sim.twins.registry_oracle.RegistryOracle`).
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from qnode.drivers import qdevice_protocol as wire
from qnode.drivers.qdevice_protocol import (
    ERR_NO_CHANNEL,
    ERR_NO_PAIR,
    ERR_PAIR_TAKEN,
    ERR_QUBIT,
    ERR_RESOURCE,
)

from ..physics.density_matrix import BELL_STATES, DensityMatrix

#: A qubit of the registry: ``(device name, qubit id)`` (or a waiting pair's half).
QubitKey = Hashable


class QDeviceFault(Exception):
    """A command the device refuses: becomes ``ERR <code> <text>`` on the wire."""

    def __init__(self, code: int, text: str):
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class _Register:
    __slots__ = ("dm", "keys")

    def __init__(self, dm: DensityMatrix, keys: list[QubitKey]):
        self.dm = dm
        self.keys = keys


@dataclass
class _Pair:
    announced: str
    bound: int = 0


@dataclass
class _Channel:
    """A one-way quantum channel between two devices: its photons in flight by number."""

    source: str
    target: str
    transmission: float
    depolarising: float
    max_in_flight: int
    sent: int = 0
    flying: OrderedDict[int, QubitKey] = field(default_factory=OrderedDict)


class _Timed:
    """A herald filed by station time, not yet (or already) turned into a register."""

    __slots__ = ("_weights", "announced", "time_ps", "materialised", "_record")

    def __init__(self, weights: tuple[float, ...] | None, announced: str, time_ps: int,
                 record: tuple[int, bool, float, int] | None = None):
        self._weights = weights
        self._record = record     # (announced, true, fidelity, state): λ made when bound
        self.announced = announced
        self.time_ps = time_ps
        self.materialised = False

    @property
    def weights(self) -> tuple[float, ...]:
        if self._weights is None:
            announced, true, fidelity, _ = self._record  # type: ignore[misc]
            self._weights = tuple(_record_weights({"announced": announced, "true": true,
                                                   "fidelity": fidelity, "state": 0}, False))
        return self._weights


class _TimeIndex:
    """One link's heralds by station time: sorted ``times`` with parallel ``ids``."""

    __slots__ = ("times", "ids", "entries", "tolerance_ps", "next_id")

    def __init__(self, tolerance_ps: int):
        self.times: list[int] = []
        self.ids: list[int] = []
        self.entries: dict[int, _Timed] = {}
        self.tolerance_ps = tolerance_ps
        self.next_id = 0

    def add(self, entry: _Timed) -> int:
        i, t = self.next_id, entry.time_ps
        self.next_id += 1
        self.entries[i] = entry
        if not self.times or t >= self.times[-1]:   # heralds come in time order: append
            self.times.append(t)
            self.ids.append(i)
        else:
            pos = bisect.bisect_right(self.times, t)
            self.times.insert(pos, t)
            self.ids.insert(pos, i)
        return i

    def extend(self, times: list[int], entries: list[_Timed]) -> None:
        """Add heralds in time order (a chunk of the simulator's truth)."""
        if times and (not self.times or times[0] >= self.times[-1]):
            first = self.next_id
            self.next_id += len(times)
            ids = list(range(first, self.next_id))
            self.entries.update(zip(ids, entries, strict=True))
            self.times.extend(times)
            self.ids.extend(ids)
            return
        for e in entries:
            self.add(e)

    def nearest(self, time_ps: int) -> int | None:
        """The id of the herald nearest to ``time_ps`` within the tolerance, else None."""
        times, tol = self.times, self.tolerance_ps
        lo = bisect.bisect_left(times, time_ps - tol)
        hi = bisect.bisect_right(times, time_ps + tol)
        if lo >= hi:
            return None
        best = min(range(lo, hi), key=lambda j: abs(times[j] - time_ps))
        return self.ids[best]


class PairRegistry:
    """The joint quantum state of every qubit of the twins attached to it, and the heralded
    pairs waiting to be bound (see the module docstring). ``seed`` seeds the measurement
    sampling; ``max_register_qubits`` bounds how many qubits one joint state may hold. Pairs
    whose halves are both bound are forgotten, except the last ``remember_bound`` ids (a repeated
    ``ENT`` for those answers ERR 6, for older ones ERR 5), so a long run holds no growing list.
    Heralds filed by station time (:meth:`herald_at`) are kept for the latest ``time_horizon``
    per link (module docstring)."""

    def __init__(self, *, seed: int | None = None, max_register_qubits: int = 8,
                 remember_bound: int = 4096, time_horizon: int = 65536):
        if int(time_horizon) < 1:
            raise ValueError(f"PairRegistry.time_horizon must be >= 1, got {time_horizon!r}")
        self.time_horizon = int(time_horizon)
        self._timed: dict[str, _TimeIndex] = {}
        self.lock = threading.RLock()
        self.rng = np.random.default_rng(seed)
        self.max_register_qubits = int(max_register_qubits)
        self._where: dict[QubitKey, _Register] = {}
        self._pairs: dict[tuple[str, int], _Pair] = {}
        self._devices: dict[str, Callable[[int], None] | None] = {}
        self._bound: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._remember = int(remember_bound)
        self._bound_at: dict[QubitKey, float] = {}   # time.monotonic() of each key's last bind
        self._channels: dict[str, _Channel] = {}

    # ------------------------------------------------------------------ heralds
    def attach(self, device: str, touch: Callable[[int], None] | None = None) -> None:
        """Register a device name (unique per registry); ``touch(qubit)`` applies that device's
        pending decay to one of its qubits (used by :meth:`pair_truth`)."""
        with self.lock:
            if device in self._devices:
                raise ValueError(f"a device named {device!r} is attached already")
            self._devices[device] = touch

    def device_pair_truth(self, device: str, qubit: int) -> tuple[QubitKey, np.ndarray]:
        """:meth:`pair_truth` of qubit ``qubit`` of the attached device ``device`` (its own
        pending decay applied first)."""
        with self.lock:
            if device not in self._devices:
                raise QDeviceFault(ERR_QUBIT, f"no device {device!r} is attached")
            return self.pair_truth(self._touched_key(device, qubit))

    def device_state_truth(self, device: str, qubit: int) -> np.ndarray:
        """Ground truth for tests: the Bloch vector (⟨X⟩, ⟨Y⟩, ⟨Z⟩) of qubit ``qubit`` of the
        attached device ``device`` now (its reduced state, its pending decay applied first)."""
        with self.lock:
            dm = self.state([self._touched_key(device, qubit)])
            return np.array([dm.expectation(p) for p in "XYZ"])

    def _touched_key(self, device: str, qubit: int) -> QubitKey:
        """The key of ``device``'s qubit ``qubit`` with that device's pending decay applied to
        it. Call with :attr:`lock` held."""
        key = (device, int(qubit))
        if device not in self._devices or key not in self._where:
            raise QDeviceFault(ERR_QUBIT, f"{device} has no qubit {qubit}")
        touch = self._devices[device]
        if touch is not None:
            try:
                touch(int(qubit))
            except KeyError:
                raise QDeviceFault(ERR_QUBIT, f"{device} qubit {qubit} is not allocated"
                                   ) from None
        return key

    def bound_for(self, key: QubitKey) -> float | None:
        """Real seconds since ``key`` was last bound to a heralded pair (its last ``ENT``), or
        None if it never was. Tests use it to tell the pair a node handed out from a later
        one bound to the same qubit."""
        with self.lock:
            at = self._bound_at.get(key)
            return None if at is None else time.monotonic() - at

    def pair_truth(self, key: QubitKey) -> tuple[QubitKey, np.ndarray]:
        """Ground truth for tests: the partner of ``key`` — the other qubit of its two-qubit
        register — and the Bell weights [Φ+, Φ−, Ψ+, Ψ−] of the pair (key, partner) now, both
        halves' decay applied. QDeviceFault ERR_NO_PAIR when ``key`` is not half of a pair."""
        with self.lock:
            reg = self._where[key]
            if len(reg.keys) != 2:
                raise QDeviceFault(ERR_NO_PAIR, f"{key!r} is in a register of "
                                                f"{len(reg.keys)} qubit(s), not a pair")
            other = reg.keys[1 - reg.keys.index(key)]
            device = other[0] if isinstance(other, tuple) else None
            touch = self._devices.get(device) if isinstance(device, str) else None
            if touch is not None:
                touch(other[1])
            return other, self.state([key, other]).bell_weights()

    def herald(self, link: str, seq: int, weights: Sequence[float],
               announced: str = "phi+") -> None:
        """A pair on ``link`` with sequence number ``seq`` was heralded in the Bell-diagonal
        state λ = ``weights`` ([Φ+, Φ−, Ψ+, Ψ−], absolute) and announced as ``announced``."""
        if not wire.LINK.fullmatch(link):
            raise ValueError(f"link name must match {wire.LINK.pattern}, got {link!r}")
        if announced not in BELL_STATES:
            raise ValueError(f"announced must be one of {BELL_STATES}, got {announced!r}")
        dm = DensityMatrix.bell_diagonal(weights)
        with self.lock:
            if (link, int(seq)) in self._pairs or (link, int(seq)) in self._bound:
                raise ValueError(f"pair ({link}, {seq}) was heralded already")
            self._add_pair((link, int(seq)), dm, announced)

    def _add_pair(self, pid: tuple, dm: DensityMatrix, announced: str) -> None:
        self._pairs[pid] = _Pair(announced)
        keys: list[QubitKey] = [("#pair", *pid, 0), ("#pair", *pid, 1)]
        reg = _Register(dm, keys)
        for k in keys:
            self._where[k] = reg

    def herald_record(self, link: str, seq: int, record: np.void | dict,
                      realised: bool = False) -> None:
        """Herald from one row of :data:`qnode.hal_sim.physics.heralding.HERALD_DTYPE`: a true
        herald loads F on the announced Ψ and 1 − F on the other Ψ (the heralding model's mixture),
        a false herald the maximally mixed state; ``realised=True`` loads the row's drawn Bell state
        (``state``) as a pure state instead."""
        announced = int(record["announced"])
        self.herald(link, seq, _record_weights(record, realised), BELL_STATES[announced])

    def herald_at(self, link: str, time_ps: int, weights: Sequence[float],
                  announced: str = "phi+", tolerance_ps: int = 2000) -> None:
        """File a pair of ``link`` heralded at station time ``time_ps`` (ps) in the
        Bell-diagonal state λ = ``weights`` ([Φ+, Φ−, Ψ+, Ψ−]), announced as ``announced``;
        ``ENT <q> <link> T<t>`` finds it within ± ``tolerance_ps`` (the link's tolerance from
        now on). Only the latest ``time_horizon`` heralds of a link are kept."""
        if not wire.LINK.fullmatch(link):
            raise ValueError(f"link name must match {wire.LINK.pattern}, got {link!r}")
        if announced not in BELL_STATES:
            raise ValueError(f"announced must be one of {BELL_STATES}, got {announced!r}")
        if isinstance(tolerance_ps, bool) or int(tolerance_ps) != tolerance_ps \
                or tolerance_ps < 0:
            raise ValueError(f"tolerance_ps must be an integer >= 0, got {tolerance_ps!r}")
        lam = tuple(float(w) for w in weights)
        if len(lam) != 4 or min(lam) < -1e-12 or abs(sum(lam) - 1.0) > 1e-9:
            raise ValueError(f"weights must be 4 probabilities summing to 1, got {weights!r}")
        with self.lock:
            index = self._timed.get(link)
            if index is None:
                index = self._timed[link] = _TimeIndex(int(tolerance_ps))
            index.tolerance_ps = int(tolerance_ps)
            index.add(_Timed(lam, announced, int(time_ps)))
            self._trim(link, index)

    def herald_records_at(self, link: str, heralds: np.ndarray, tolerance_ps: int,
                          realised: bool = False) -> None:
        """:meth:`herald_at` for every row of a
        :data:`~qnode.hal_sim.physics.heralding.HERALD_DTYPE` array, under its ``time`` (λ as in
        :meth:`herald_record`, made when first bound). In bulk: the bench files thousands of heralds
        a second while twins wait for the lock."""
        if not wire.LINK.fullmatch(link):
            raise ValueError(f"link name must match {wire.LINK.pattern}, got {link!r}")
        if not heralds.size:
            return
        rows = heralds[np.argsort(heralds["time"], kind="stable")]
        times = rows["time"].astype(np.int64).tolist()
        announced = rows["announced"].astype(int).tolist()
        true = rows["true"].astype(bool).tolist()
        fidelity = rows["fidelity"].astype(float).tolist()
        state = rows["state"].astype(int).tolist()
        entries = []
        for t, a, tr, f, st in zip(times, announced, true, fidelity, state, strict=True):
            lam = None
            if realised:
                lam = tuple(1.0 if k == st else 0.0 for k in range(4))
            entries.append(_Timed(lam, BELL_STATES[a], t, (a, tr, f, st)))
        with self.lock:
            index = self._timed.get(link)
            if index is None:
                index = self._timed[link] = _TimeIndex(int(tolerance_ps))
            index.tolerance_ps = int(tolerance_ps)
            index.extend(times, entries)
            self._trim(link, index)

    def heralds_at(self, link: str) -> int:
        """How many heralds of ``link`` are filed by time now."""
        with self.lock:
            index = self._timed.get(link)
            return 0 if index is None else len(index.times)

    def bind_at(self, link: str, time_ps: int, key: QubitKey) -> tuple[str, int]:
        """Make ``key`` one half of the pair of ``link`` heralded nearest to station time
        ``time_ps`` within the link's tolerance: (announced Bell state, the herald's time).
        QDeviceFault ERR_NO_PAIR / ERR_PAIR_TAKEN."""
        with self.lock:
            index = self._timed.get(link)
            hid = None if index is None else index.nearest(int(time_ps))
            if index is None or hid is None:
                tol = "" if index is None else f" +- {index.tolerance_ps} ps"
                raise QDeviceFault(ERR_NO_PAIR, f"no herald on {link} at T{time_ps}{tol}")
            entry = index.entries[hid]
            pid = (link, "T", hid)
            if not entry.materialised:
                entry.materialised = True
                self._add_pair(pid, DensityMatrix.bell_diagonal(entry.weights), entry.announced)
            elif pid not in self._pairs:
                raise QDeviceFault(ERR_PAIR_TAKEN,
                                   f"both halves of {link} T{entry.time_ps} are bound")
            return self._bind(pid, key, f"{link} T{entry.time_ps}"), entry.time_ps

    def _trim(self, link: str, index: _TimeIndex) -> None:
        """Forget the oldest heralds beyond the horizon (in batches of 1/8 of it)."""
        excess = len(index.times) - self.time_horizon
        if excess <= 0:
            return
        excess = min(max(excess, self.time_horizon // 8), len(index.times) - 1)
        for hid in index.ids[:excess]:
            entry = index.entries.pop(hid)
            if entry.materialised:
                self._forget((link, "T", hid))
        del index.times[:excess], index.ids[:excess]

    def expire(self, link: str, seq: int) -> None:
        """Forget a heralded pair; halves not bound yet are discarded (bound ones stay)."""
        with self.lock:
            self._forget((link, int(seq)))

    def _forget(self, pid: tuple) -> None:
        self._pairs.pop(pid, None)
        for half in (0, 1):
            key = ("#pair", *pid, half)
            if key in self._where:
                self.discard(key)

    def bind(self, link: str, seq: int, key: QubitKey) -> str:
        """Make ``key`` one half of pair (link, seq): its own state is traced out first. The
        announced Bell state; QDeviceFault ERR_NO_PAIR / ERR_PAIR_TAKEN."""
        with self.lock:
            pid = (link, int(seq))
            if pid not in self._pairs:
                if pid in self._bound:
                    raise QDeviceFault(ERR_PAIR_TAKEN, f"both halves of {link} {seq} are bound")
                raise QDeviceFault(ERR_NO_PAIR, f"no heralded pair {link} {seq}")
            announced = self._bind(pid, key, f"{link} {seq}")
            if pid not in self._pairs:
                self._bound[pid] = announced
                while len(self._bound) > self._remember:
                    self._bound.popitem(last=False)
            return announced

    def _bind(self, pid: tuple, key: QubitKey, label: str) -> str:
        """Bind ``key`` to the next free half of the waiting pair ``pid`` (in ``_pairs``); a
        pair with both halves bound leaves ``_pairs``."""
        pair = self._pairs[pid]
        half = ("#pair", *pid, pair.bound)
        if half not in self._where:  # the other half's holder traced the pair away
            raise QDeviceFault(ERR_NO_PAIR, f"pair {label} is gone")
        if pair.bound == 1 and key in self._where and key in self._where[half].keys:
            raise QDeviceFault(ERR_PAIR_TAKEN, f"{key!r} holds the other half of "
                                               f"{label} already")
        if key in self._where:
            self.discard(key)
        self._rename(half, key)
        self._bound_at[key] = time.monotonic()
        pair.bound += 1
        if pair.bound == 2:
            del self._pairs[pid]
        return pair.announced

    # ------------------------------------------------------------------ quantum channels
    def add_channel(self, name: str, source: str, target: str, *, transmission: float = 1.0,
                    depolarising: float = 0.0, max_in_flight: int = 1024) -> None:
        """A one-way quantum channel ``name`` from device ``source`` to device ``target``: a
        photon arrives with probability ``transmission`` (0..1; else it is lost: traced out,
        its partners keep their reduced state) and is depolarised on the way with probability
        ``depolarising`` (ρ → (1 − p)·ρ + p·I/2 on its qubit). At most ``max_in_flight``
        photons wait to be absorbed; the oldest is dropped beyond that."""
        if not 0.0 <= transmission <= 1.0 or not 0.0 <= depolarising <= 1.0:
            raise ValueError(f"channel {name!r}: transmission and depolarising must be in "
                             f"[0, 1], got {transmission!r}, {depolarising!r}")
        if int(max_in_flight) < 1:
            raise ValueError(f"channel {name!r}: max_in_flight must be >= 1, got "
                             f"{max_in_flight!r}")
        with self.lock:
            if name in self._channels:
                raise ValueError(f"a channel named {name!r} exists already")
            self._channels[name] = _Channel(source, target, float(transmission),
                                            float(depolarising), int(max_in_flight))

    def emit(self, device: str, key: QubitKey, channel: str) -> int:
        """``key``'s state leaves ``device`` on ``channel`` as its next photon (whose number is
        returned); ``key`` leaves the registry (the caller re-adds it in |0⟩). QDeviceFault
        ERR_NO_CHANNEL when the channel does not start at ``device``."""
        with self.lock:
            ch = self._channels.get(channel)
            if ch is None or ch.source != device:
                raise QDeviceFault(ERR_NO_CHANNEL, f"no channel {channel} starts at {device}")
            n = ch.sent
            ch.sent += 1
            photon = ("#photon", channel, n)
            self._rename(key, photon)
            if self.rng.random() >= ch.transmission:
                self.discard(photon)
                return n
            if ch.depolarising > 0.0:
                reg = self._where[photon]
                reg.dm.depolarize([reg.keys.index(photon)], ch.depolarising)
            ch.flying[n] = photon
            while len(ch.flying) > ch.max_in_flight:
                _, old = ch.flying.popitem(last=False)
                self.discard(old)
            return n

    def absorb(self, device: str, key: QubitKey, channel: str, n: int) -> None:
        """``key`` (its own state traced out) now holds photon ``n`` of ``channel``.
        QDeviceFault ERR_NO_CHANNEL when the channel does not end at ``device``, ERR_NO_PAIR
        when that photon is not waiting (lost, absorbed, never sent, dropped)."""
        with self.lock:
            ch = self._channels.get(channel)
            if ch is None or ch.target != device:
                raise QDeviceFault(ERR_NO_CHANNEL, f"no channel {channel} ends at {device}")
            photon = ch.flying.pop(int(n), None)
            if photon is None:
                raise QDeviceFault(ERR_NO_PAIR, f"photon {n} of {channel} did not arrive")
            if key in self._where:
                self.discard(key)
            self._rename(photon, key)

    def _rename(self, old: QubitKey, new: QubitKey) -> None:
        reg = self._where.pop(old)
        reg.keys[reg.keys.index(old)] = new
        self._where[new] = reg

    # ------------------------------------------------------------------ qubits
    def add_qubit(self, key: QubitKey) -> None:
        """A new qubit in |0⟩ (its own register)."""
        with self.lock:
            if key in self._where:
                raise ValueError(f"qubit {key!r} exists already")
            self._where[key] = _Register(DensityMatrix(1), [key])

    def discard(self, key: QubitKey) -> None:
        """Trace ``key`` out of its register (its partners keep their reduced state)."""
        with self.lock:
            reg = self._where.pop(key)
            pos = reg.keys.index(key)
            reg.keys.pop(pos)
            if reg.keys:
                reg.dm.remove(pos)

    def reset(self, key: QubitKey) -> None:
        """Trace out and start afresh in |0⟩."""
        with self.lock:
            if key in self._where:
                self.discard(key)
            self.add_qubit(key)

    def apply(self, keys: Sequence[QubitKey], op: np.ndarray, depolarising: float = 0.0) -> None:
        """Apply the operator ``op`` on ``keys`` (first = most significant), then depolarise
        them with probability ``depolarising``."""
        with self.lock:
            reg = self._merge(keys)
            pos = [reg.keys.index(k) for k in keys]
            reg.dm.apply(op, pos)
            if depolarising > 0.0:
                reg.dm.depolarize(pos, depolarising)

    def decohere(self, key: QubitKey, t_ns: float, t1_ns: float, t2_ns: float) -> None:
        """T1/T2 decay of ``key`` for a wait of ``t_ns``."""
        if t_ns <= 0 or (math.isinf(t1_ns) and math.isinf(t2_ns)):
            return
        with self.lock:
            reg = self._where[key]
            reg.dm.decohere(reg.keys.index(key), t_ns, t1_ns, t2_ns)

    def measure(self, key: QubitKey, basis: str) -> int:
        """Projective measurement of ``key`` in Z/X/Y (0 = +1 eigenvalue); the qubit is traced
        out of its register afterwards (the caller re-adds it if it lives on)."""
        with self.lock:
            reg = self._where[key]
            pos = reg.keys.index(key)
            outcome = reg.dm.measure(pos, basis, self.rng, remove=len(reg.keys) > 1)
            del self._where[key]
            reg.keys.pop(pos)
            return outcome

    def state(self, keys: Sequence[QubitKey]) -> DensityMatrix:
        """The exact reduced state of ``keys`` (in that order) — ground truth for tests."""
        with self.lock:
            regs: list[_Register] = []
            for k in keys:
                r = self._where[k]
                if all(r is not x for x in regs):
                    regs.append(r)
            dm = DensityMatrix(0)
            order: list[QubitKey] = []
            for r in regs:
                dm = dm.kron(r.dm)
                order += r.keys
            return dm.partial_trace([order.index(k) for k in keys])

    def _merge(self, keys: Sequence[QubitKey]) -> _Register:
        regs: list[_Register] = []
        for k in keys:
            r = self._where[k]
            if all(r is not x for x in regs):
                regs.append(r)
        if len(regs) == 1:
            return regs[0]
        total = sum(len(r.keys) for r in regs)
        if total > self.max_register_qubits:
            raise QDeviceFault(ERR_RESOURCE, f"gate would entangle {total} qubits "
                                             f"(simulator limit {self.max_register_qubits})")
        merged = regs[0]
        for r in regs[1:]:
            merged = _Register(merged.dm.kron(r.dm), merged.keys + r.keys)
        for k in merged.keys:
            self._where[k] = merged
        return merged


def _record_weights(record: np.void | dict, realised: bool) -> list[float]:
    """λ of one :data:`~qnode.hal_sim.physics.heralding.HERALD_DTYPE` row (see
    :meth:`PairRegistry.herald_record`)."""
    announced = int(record["announced"])
    lam = [0.0] * 4
    if realised:
        lam[int(record["state"])] = 1.0
    elif bool(record["true"]):
        f = float(record["fidelity"])
        other = {2: 3, 3: 2}.get(announced, announced)
        lam[announced] += f
        lam[other] += 1.0 - f
    else:
        lam = [0.25] * 4
    return lam


def truth_reply(other: QubitKey, weights: np.ndarray) -> str:
    """The ``SIM:PAIR?`` reply: ``<device>:<qubit>`` of the other half (``-`` while it is not
    bound) and the Bell weights [Φ+, Φ−, Ψ+, Ψ−] of the pair, 9 decimals each."""
    where = (f"{other[0]}:{other[1]}" if isinstance(other, tuple) and len(other) == 2
             else "-")
    return where + "".join(f" {w:.9f}" for w in weights)
