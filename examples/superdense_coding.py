"""Superdense coding: two classical bits per qubit sent, over the network's entangled pairs.

Two applications, each with its own connection to its own node: the sender (``alice-app`` at
alice) asks for pairs with the receiver's node (purpose 7); the receiver (``bob-app`` at bob,
or any node a quantum channel from alice reaches) listens on that purpose and gets the same
pairs. For every pair:

1. the sender picks a message k = 2x + z (two random bits), applies X^x Z^z to its half (which
   takes the pair from its Bell state b to b ⊕ k: Bell index 2x + z, Φ+ 0, Φ− 1, Ψ+ 2, Ψ− 3)
   and sends that half to the receiver's node over the quantum channel between them
   (``send``); its RESULT numbers the photon, which it tells the receiver in a ``DATA``;
2. the receiver loads the photon into its scratch qubit (``receive``: ``ERROR photon_lost``
   when it did not arrive, as a fibre loses most photons) and Bell-measures it with its half
   (CNOT, X and Z measurements): Bell index j, and the message j ⊕ b.

Decoded messages against sent ones give a 4×4 table; its mutual information (uniform input,
the plug-in estimate less its Miller–Madow bias 9/(2N ln 2)) is the information carried per
qubit that arrived, and that times the fraction that arrived the bits per consumed pair. A pair
in the Bell-diagonal state λ (b's weight first) turns the four messages into a channel that
decodes k as k ⊕ m with probability λ_m: at most the dense-coding capacity 2 − H(λ) bits per
qubit sent (Bowen, PRA 63, 022302 (2001)). Dense coding beats sending one bit per qubit only
when 2 − H(λ) > 1 (a Werner pair needs F > 0.81); a linear-optics Bell-state measurement
decodes at most log2 3 = 1.585 bits (Mattle et al., PRL 76, 4656 (1996)). Set beside:

* the figure the network reports for a link's pairs: ``dense_coding_bits`` in the sender's
  link telemetry, 2 − H(λ) of the link's state estimated from its test pairs (at delivery; a
  path reports none);
* the capacity from the pair's reported fidelity, as if the pair were Werner (the sender's
  RESULT: the estimate aged to when it sent; the channel's depolarising is not in it);
* with the simulator's truth, the capacity of the true state of each pair just before it was
  decoded (the photon's way included).

Run it against ``qnode demo --serve`` (its connection file names the broker, the applications
and the simulator's truth)::

    python examples/superdense_coding.py --connection qnode-demo.json --pairs 200

The last line printed is a JSON report.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from node_telemetry import telemetry
from pair_protocol import run_pairs
from simulator_truth import Truth, simulator_truth

from qnode.client import NodeClient, Pair, RequestError, gates
from qnode.client.connection import ConnectionInfo

PURPOSE = 7
#: pairs asked for in one request (the node refuses at once what it cannot supply in time)
BATCH = 50
#: how long the sender waits for the receiver's turn of a pair after its DATA (s)
RECEIVER_WAIT_S = 10.0
BELL_INDEX = {"phi+": 0, "phi-": 1, "psi+": 2, "psi-": 3}
LINEAR_OPTICS_BITS = math.log2(3)


def entropy(p: list[float] | tuple[float, ...]) -> float:
    """Shannon entropy (bits)."""
    return -sum(x * math.log2(x) for x in p if x > 0)


def werner_capacity(fidelity: float) -> float:
    """2 − H(λ) of a Werner pair of fidelity F: λ = (F, (1 − F)/3 × 3)."""
    f = min(max(fidelity, 0.0), 1.0)
    return 2 - entropy([f] + [(1 - f) / 3] * 3)


def mutual_information(counts: list[list[int]]) -> tuple[float, float]:
    """Bits per use of the channel whose (sent, decoded) counts are ``counts`` (4 × 4), less
    the plug-in bias 9/(2N ln 2) (Miller–Madow); and its σ from the spread of the pointwise
    information."""
    n = sum(map(sum, counts))
    if n == 0:
        return 0.0, math.inf
    px = [sum(row) / n for row in counts]
    py = [sum(counts[i][j] for i in range(4)) / n for j in range(4)]
    info, second = 0.0, 0.0
    for i in range(4):
        for j in range(4):
            if counts[i][j]:
                p = counts[i][j] / n
                pointwise = math.log2(p / (px[i] * py[j]))
                info += p * pointwise
                second += p * pointwise ** 2
    sigma = math.sqrt(max(second - info ** 2, 1.0 / n) / n)
    return info - 9 / (2 * n * math.log(2)), sigma


@dataclass
class Trial:
    pair_id: int
    bell_state: str
    message: int
    fidelity: float | None = None       # the sender's RESULT: the pair's F when it was sent
    decoded: int | None = None
    arrived: bool = False
    true_capacity: float | None = None  # 2 − H(λ) of the pair just before it was decoded


@dataclass
class Report:
    pairs: int                    # pairs consumed (a half sent)
    arrived: int                  # photons the receiver stored
    correct: int                  # messages decoded right
    bits_per_qubit: float         # mutual information per arrived qubit
    sigma: float                  # its standard error
    bits_per_pair: float          # bits_per_qubit × arrived / pairs
    capacity_reported: float      # mean 2 − H of Werner pairs of the reported F
    capacity_network: float | None  # the link's dense_coding_bits (its telemetry), if any
    capacity_truth: float | None  # mean 2 − H(λ) of the true states at decoding
    z_truth: float | None         # (bits_per_qubit − capacity_truth)/σ
    linear_optics_bits: float     # log2 3
    counts: list[list[int]]       # [sent][decoded]
    seconds: float
    lost: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"superdense coding: {self.pairs} pairs in {self.seconds:.1f} s, "
               f"{self.arrived} sent halves arrived ({self.arrived / max(self.pairs, 1):.1%})",
               f"  decoded right            {self.correct}/{self.arrived}",
               f"  bits per arrived qubit   {self.bits_per_qubit:.4f} ± {self.sigma:.4f}",
               f"  bits per consumed pair   {self.bits_per_pair:.4f}",
               f"  2 − H, reported F        {self.capacity_reported:.4f}  (Werner pairs of "
               f"the F when sent)"]
        if self.capacity_network is not None:
            out.append(f"  2 − H(λ), the link's     {self.capacity_network:.4f}  (its estimate "
                       f"from test pairs, at delivery)")
        if self.capacity_truth is not None and self.z_truth is not None:
            out.append(f"  2 − H(λ), simulator      {self.capacity_truth:.4f}  "
                       f"({self.z_truth:+.2f} σ)")
        out.append(f"  linear optics, at most   {self.linear_optics_bits:.4f}; without "
                   f"entanglement 1")
        if self.lost:
            out.append(f"  not completed: {self.lost}")
        return out


def encode(message: int, to: str) -> list[dict[str, Any]]:
    """X^x Z^z on the sender's half for k = 2x + z, then send it to node ``to``."""
    x, z = divmod(message, 2)
    return ([gates.z(gates.PAIR)] if z else []) + ([gates.x(gates.PAIR)] if x else []) + \
        [gates.send(gates.PAIR, to)]


def decode_gates(sender_node: str, photon: int) -> list[dict[str, Any]]:
    """Store the photon in aux, Bell-measure aux (the sent half) with the pair's half: outcomes
    [z bit, x bit] of the Bell index."""
    return [gates.receive(sender_node, photon), gates.cnot(gates.AUX, gates.PAIR),
            gates.meas(gates.AUX, "X"), gates.meas(gates.PAIR, "Z")]


async def superdense(sender: NodeClient, receiver: NodeClient, pairs: int, *, remote: str,
                     sender_node: str, receiver_node: str, truth: Truth | None = None,
                     seed: int | None = None, timeout_s: float = 600.0,
                     info: ConnectionInfo | None = None) -> Report:
    """Send ``pairs`` random two-bit messages from ``sender``'s application to
    ``receiver``'s, one pair each (``info``: to read the link's reported figure)."""
    pools: set[str] = set()
    rng = random.Random(seed)
    started = time.monotonic()
    done: dict[int, Trial] = {}
    sent: dict[int, Trial] = {}

    async def sender_turn(pair: Pair) -> dict[str, Any]:
        pools.add(pair.pool)
        t = Trial(pair.pair_id, pair.bell_state, rng.randrange(4))
        res = await sender.operate(pair, encode(t.message, receiver_node))
        t.fidelity = res.fidelity if res.fidelity is not None else pair.fidelity
        sent[t.pair_id] = t
        return {"photon": res.photons[0], "message": t.message}   # the message: for the report

    async def receiver_turn(pair: Pair, note: dict[str, Any]) -> None:
        t = sent.pop(pair.pair_id)
        if truth is not None and pair.qubit is not None:
            try:   # the photon, if it is on its way, is the pair's other half
                t.true_capacity = 2 - entropy(truth.pair_weights(receiver_node, pair.qubit))
            except RuntimeError:
                t.true_capacity = None      # lost on the way: no pair any more
        try:
            result = await receiver.operate(pair, decode_gates(sender_node, note["photon"]))
        except RequestError as exc:
            if exc.code != "photon_lost":
                raise
            await receiver.operate(pair, [], release=True)
            done[t.pair_id] = t
            return
        z_bit, x_bit = result.outcomes
        t.arrived = True
        t.decoded = (2 * x_bit + z_bit) ^ BELL_INDEX[pair.bell_state]
        done[t.pair_id] = t

    lost = await run_pairs(sender, receiver, pairs, remote=remote, purpose=PURPOSE,
                           sender_turn=sender_turn, receiver_turn=receiver_turn, batch=BATCH,
                           wait_s=RECEIVER_WAIT_S, timeout_s=timeout_s)
    network = None
    if info is not None and pools:
        network = await reported_capacity(info, sender_node, pools.pop())
    return summarise(list(done.values()), time.monotonic() - started, lost, network)


async def reported_capacity(info: ConnectionInfo, node: str, pool: str,
                            timeout_s: float = 10.0) -> float | None:
    """``dense_coding_bits`` of link ``pool`` in ``node``'s latest telemetry (None for a path,
    or when the node says nothing in ``timeout_s``)."""
    try:
        async with asyncio.timeout(timeout_s):
            async with contextlib.aclosing(telemetry(info, node)) as payloads:
                async for payload in payloads:
                    try:
                        links = json.loads(payload)["body"]["links"]
                    except (ValueError, KeyError, TypeError):
                        continue
                    if isinstance(links, dict) and isinstance(links.get(pool), dict):
                        bits = links[pool].get("dense_coding_bits")
                        return float(bits) if isinstance(bits, int | float) else None
                    return None
    except TimeoutError:
        return None
    return None


def summarise(trials: list[Trial], seconds: float, lost: dict[str, int],
              network: float | None = None) -> Report:
    if not trials:
        raise RuntimeError(f"no message was sent (lost: {lost})")
    counts = [[0] * 4 for _ in range(4)]
    for t in trials:
        if t.arrived and t.decoded is not None:
            counts[t.message][t.decoded] += 1
    arrived = sum(map(sum, counts))
    bits, sigma = mutual_information(counts)
    bits = max(bits, 0.0) if arrived else 0.0
    reported = [werner_capacity(t.fidelity) for t in trials if t.fidelity is not None]
    true = [t.true_capacity for t in trials if t.arrived and t.true_capacity is not None]
    truth = sum(true) / len(true) if true else None
    return Report(len(trials), arrived, sum(counts[k][k] for k in range(4)), bits, sigma,
                  bits * arrived / len(trials),
                  sum(reported) / len(reported) if reported else math.nan, network, truth,
                  None if truth is None or not math.isfinite(sigma) else (bits - truth) / sigma,
                  LINEAR_OPTICS_BITS, counts, seconds, lost)


async def main_async(args: argparse.Namespace) -> Report:
    info = ConnectionInfo.load(args.connection)
    truth_address = None if args.no_truth else simulator_truth(args.connection)
    truth = Truth(truth_address) if truth_address else None
    sender_node = info.application(args.sender_app).node
    receiver_node = info.application(args.receiver_app).node
    try:
        async with NodeClient.from_connection(info, args.sender_app) as sender, \
                NodeClient.from_connection(info, args.receiver_app) as receiver:
            return await superdense(sender, receiver, args.pairs, remote=receiver_node,
                                    sender_node=sender_node, receiver_node=receiver_node,
                                    truth=truth, seed=args.seed, timeout_s=args.timeout_s,
                                    info=info)
    finally:
        if truth is not None:
            truth.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connection", default="qnode-demo.json",
                   help="the connection file of qnode demo --serve")
    p.add_argument("--pairs", type=int, default=100, help="messages to send, one pair each")
    p.add_argument("--sender-app", default="alice-app")
    p.add_argument("--receiver-app", default="bob-app")
    p.add_argument("--no-truth", action="store_true", help="do not read the simulator's truth")
    p.add_argument("--seed", type=int)
    p.add_argument("--timeout-s", type=float, default=600.0)
    args = p.parse_args(argv)
    report = asyncio.run(main_async(args))
    print("\n".join(report.lines()))
    print(json.dumps(asdict(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
