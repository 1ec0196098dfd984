"""What network tests read: the bench's registry oracle (the true state of a QDevice qubit's
pair, ``SIM:PAIR?``, simulator only, and when the qubit was bound to it), the memories' decay
undone for the oracle's query lag, and the nodes' telemetry."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qnode.daemon.bus.client import NodeBus
from qnode.daemon.bus.envelope import Message, decode
from qnode.daemon.bus.topics import Topics, parse_topic
from qnode.daemon.linklayer import Create
from qnode.daemon.quantum.bell_diagonal import PauliChannel, xor_convolve
from qnode.daemon.tools.topology import Network


def undo_decay(weights: np.ndarray, wait_s: float, t1_s: float = 5.0,
               t2_s: float = 2.0) -> np.ndarray:
    """The Bell weights ``wait_s`` earlier: both halves' T1/T2 Pauli channel (the bench's
    memories: 5 s, 2 s) undone. The oracle is read a few ms after alice estimated the pair;
    this takes the truth back to the moment of the estimate (the per-half model is checked
    against the density matrix in test_qmemory)."""
    ch = PauliChannel.from_t1_t2(wait_s, t1_s, t2_s).probabilities
    conv = np.array([[ch[i ^ j] for j in range(4)] for i in range(4)])   # λ' = conv @ λ
    return np.linalg.solve(conv, np.linalg.solve(conv, weights))


def over_bsm_errors(weights: np.ndarray, swaps: int = 1) -> np.ndarray:
    """A pair's true Bell weights averaged over what the daemons cannot know of its ``swaps``
    swaps: each Bell-state measurement's read-out errors (the bench's 0.5 % per bit: a misread
    bit leaves the pair one Pauli off its frame) and its CNOT's depolarisation (0.1 %). The
    reported goodness is this expectation (:func:`~qnode.daemon.quantum.bell_diagonal.swap`
    with the devices' calibration), so it is what a single pair's truth is compared with."""
    eta, g = 1.0 - 0.005, 0.999
    for _ in range(swaps):
        weights = xor_convolve(weights, (eta * eta, eta * (1 - eta), eta * (1 - eta),
                                         (1 - eta) ** 2))
        weights = g * weights + (1.0 - g) / 4.0
    return weights


#: Clock slack (s) of the hold check: a node's hold starts a moment before it sends the OK.
HOLD_SLACK_S = 0.01


@dataclass
class Reading:
    """What the oracle said of one qubit: its partner (``device:qubit`` or ``-``) and the
    pair's Bell weights [Φ+, Φ−, Ψ+, Ψ−] now, or why it holds no pair (``error``); and the
    Unix times (s) between which the qubit was last bound (``ENT``) to a pair (the query's
    round trip; None if never)."""

    partner: str | None
    weights: np.ndarray | None
    error: str | None
    bound_between: tuple[float, float] | None

    def rebound_after(self, ok: Message) -> float | None:
        """Seconds after ``ok`` (an OK message: its envelope's Unix ``ts``) at which the qubit
        was bound to a newer pair (the OK's pair is gone: the test read it too late), or None:
        it still holds the pair the OK named. AssertionError when that was sooner than the
        OK's ``hold_ms`` promised (or the OK promised none)."""
        hold_ms = ok.body.get("hold_ms")
        if self.bound_between is None or self.bound_between[0] <= ok.ts:
            return None
        earliest, latest = (t - ok.ts for t in self.bound_between)
        assert hold_ms is not None and latest >= hold_ms / 1000 - HOLD_SLACK_S, (
            f"the qubit was bound to a newer pair {earliest:.3f}-{latest:.3f} s after the OK "
            f"handed it out, within the {hold_ms} ms the OK promised the application")
        return earliest

    def pair(self) -> tuple[str, np.ndarray]:
        """(partner, weights); AssertionError with the oracle's answer when there is no pair."""
        assert self.error is None, self.error
        assert self.partner is not None and self.weights is not None
        return self.partner, self.weights


class Truth:
    """The bench's registry oracle (one TCP connection, line protocol)."""

    def __init__(self, address: str):
        host, port = address.removeprefix("socket://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.buf = b""

    def _line(self) -> str:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, "the oracle closed the connection"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def read(self, device: str, qubit: int) -> Reading:
        """The truth of ``device``'s qubit ``qubit`` now, and when it was bound (one write:
        the oracle answers both queries back to back)."""
        sent = time.time()
        self.sock.sendall(f"SIM:PAIR? {device} {qubit}\nSIM:BOUND? {device} {qubit}\n".encode())
        pair, bound = self._line(), self._line()
        received = time.time()
        assert not bound.startswith("ERR"), bound
        between = None if bound == "-" else (sent - float(bound), received - float(bound))
        if pair.startswith("ERR"):
            return Reading(None, None, pair, between)
        fields = pair.split()
        return Reading(fields[0], np.array([float(x) for x in fields[1:]]), None, between)

    def set_visibility(self, link: str, visibility: float) -> None:
        """K link ``link``'s HOM visibility from its simulator's next slice on (``SIM:VIS``):
        true heralds then have F = (1 + V) / 2."""
        self.sock.sendall(f"SIM:VIS {link} {visibility}\n".encode())
        reply = self._line()
        assert reply == "OK", reply

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


async def qubit_story(port: int, nodes: tuple[str, ...], wait_s: float = 10.0) -> str:
    """For a failure message: each of ``nodes``' links' qubit accounting (bound, free, taken,
    held) and its paths' counters, from its next telemetry (a stalled chain shows where its
    qubits went)."""
    try:
        latest = await telemetry_until(port, lambda t: all(n in t for n in nodes), wait_s)
    except AssertionError as exc:
        return f"no telemetry from every node: {exc}"[:2000]
    keys = ("qubits_bound", "qubits_free", "qubits_taken", "qubits_held", "pairs_live",
            "bound_total", "heralds_total")
    story = {n: {"links": {link: {k: t.get(k) for k in keys}
                           for link, t in latest[n].get("links", {}).items()},
                 "paths": latest[n].get("paths")} for n in nodes}
    return f"qubits and paths: {json.dumps(story)}"


def composed_sigma(links: list[tuple[float, float]]) -> float:
    """Standard error of an end-to-end fidelity composed from links of (fidelity, σ): with
    F = (1 + 3·∏wᵢ)/4 and wᵢ = (4Fᵢ − 1)/3, ∂F/∂Fᵢ = ∏_{j≠i} wⱼ. Every pair of a run shares
    the links' estimates, so a run's mean reported − true fidelity scatters by this much
    around the model's bias, however many pairs it has."""
    w = [(4 * f - 1) / 3 for f, _ in links]
    return float(np.sqrt(sum((np.prod(w[:i] + w[i + 1:]) * s) ** 2
                             for i, (_, s) in enumerate(links))))


def estimates_ready(c: Network, sigma: float) -> Callable[[dict[str, dict]], bool]:
    """For :func:`telemetry_until`: both ends of every link of chain or mesh ``c`` estimate
    its fidelity from test pairs, with a standard error of at most ``sigma``."""
    def done(latest: dict[str, dict]) -> bool:
        for link, ends in zip(c.links, c.edges, strict=True):
            for node in ends:
                t = latest.get(node, {}).get("links", {}).get(link, {})
                if t.get("fidelity_source") != "tests" or t.get("fidelity_sigma", 1.0) > sigma:
                    return False
        return True
    return done


async def ask_pairs(port: int, truth: Truth, pairs: int, *, per_pair_s: float = 30.0,
                    all_s: float = 60.0, latencies: list[float] | None = None
                    ) -> tuple[list[dict], list[tuple[str, np.ndarray]], list[dict],
                               list[float]]:
    """A program on the demo network: bob asks for ``pairs`` end-to-end pairs with alice at
    once; alice asks for one at a time and the oracle reads each one's true state as soon as
    its OK arrives (a pair decays by ~4e-4 per ms at these fidelities, so the truth is read
    within milliseconds of the estimate). ``per_pair_s``/``all_s``: how long alice's next OK
    and all of bob's may take (s); ``latencies``: gets the time from each of alice's CREATEs
    to its OK (s).
    Returns alice's OKs read and their truths, bob's OKs, and for alice's pairs read too late
    the seconds after their OK at which their qubits held newer pairs."""
    oks: list[dict] = []
    truths: list[tuple[str, np.ndarray]] = []
    bob_oks: list[dict] = []
    unread: list[float] = []
    alice_ok: asyncio.Queue = asyncio.Queue()
    bob_done = asyncio.Event()
    ok_at: list[float] = []

    async def on_reply(topic, msg) -> None:
        if msg.type != "OK":
            assert msg.type == "ACK", (msg.type, msg.body)
            return
        if msg.sender == "alice":
            ok_at.append(time.monotonic())
            try:
                reading = await asyncio.to_thread(truth.read, "alice", msg.body["qubit"])
                late = reading.rebound_after(msg)
                if late is None:
                    partner, w = reading.pair()
            except AssertionError as exc:
                alice_ok.put_nowait(f"alice's OK {msg.body}, but the oracle: {exc}")
                return
            if late is not None:          # read too late: the qubit holds a newer pair
                unread.append(late)
                alice_ok.put_nowait("")
                return
            lag = max(0.0, time.time() - msg.ts)
            truths.append((partner, undo_decay(w, lag)))
            oks.append(msg.body)
            alice_ok.put_nowait("")
        else:
            bob_oks.append(msg.body)
            if len(bob_oks) >= pairs:
                bob_done.set()

    app = NodeBus(Topics("demo", "app"), "127.0.0.1", port)
    app.on("reply", on_reply)
    app.subscribe("qnet/v1/demo/+/reply/app")
    runner = asyncio.create_task(app.run())
    try:
        await app.wait_connected(10)
        app.publish("qnet/v1/demo/bob/cmd", "CREATE",
                    Create("alice", 0.0, 0, 7, pairs).to_dict())
        for k in range(pairs):
            asked = time.monotonic()
            app.publish("qnet/v1/demo/alice/cmd", "CREATE", Create("bob", 0.0, 0, 7, 1).to_dict())
            try:
                async with asyncio.timeout(per_pair_s):
                    failure = await alice_ok.get()
            except TimeoutError:
                raise AssertionError(f"alice's pair {k + 1} of {pairs}: no OK in {per_pair_s} s "
                                     f"(bob has {len(bob_oks)})") from None
            assert not failure, failure
            if latencies is not None:
                latencies.append(ok_at[-1] - asked)
        try:
            async with asyncio.timeout(all_s):
                await bob_done.wait()
        except TimeoutError:
            raise AssertionError(f"bob has {len(bob_oks)} of {pairs} pairs after {all_s} s"
                                 ) from None
    finally:
        await app.close()
        await runner
    return oks, truths, bob_oks, unread
