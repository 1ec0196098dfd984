"""Teleportation of random qubit states from alice to bob over the network's end-to-end pairs.

Two applications, each with its own connection to its own node (as two programs on two hosts
would be): ``alice-app`` at alice asks for pairs with bob (purpose 7); ``bob-app`` at bob
listens on purpose 7 and gets the same pairs. For every pair:

1. alice prepares a random state |ψ⟩ = R_Z(φ) R_Y(θ)|0⟩ (uniform on the Bloch sphere) in a
   scratch qubit, and measures it and her half of the pair in the Bell basis (CNOT, H, two Z
   measurements): two bits m1 (scratch) and m2 (pair), sent to bob as ``DATA``;
2. bob undoes the pair's Bell state (Φ+: nothing, Φ−: Z, Ψ+: X, Ψ−: Y, its Pauli frame) and then
   applies X^m2 and Z^m1: his qubit holds |ψ⟩ if the pair was perfect;
3. the verifier (bob, told θ and φ; a real receiver is not) rotates |ψ⟩ back to |0⟩ and measures
   Z: 0 is a success.

The teleportation fidelity measured is the fraction of successes (± its binomial σ). It is set
beside the prediction from the pair's reported state: a pair of fidelity F teleports a uniformly
random state with average fidelity (2F + 1)/3 (M. Horodecki, P. Horodecki, R. Horodecki, Phys.
Rev. A 60, 1888 (1999): f = (F d + 1)/(d + 1) for d = 2, with F the fully entangled fraction,
which for a Bell-diagonal pair is its fidelity to the announced state). The pair keeps decaying
after its delivery, until alice measures her half and bob his, so F is the one the nodes report
in their RESULTs (the estimate aged to when the gates ran): the mean of alice's (her Bell
measurement) and bob's (his last measurement). Both halves decay alike on a Bell-diagonal pair,
so the pair that did the work is the one aged by the mean of the two moments, to first order.
The prediction from the F at delivery is reported too: it leaves that decay out. Neither counts
the devices' own errors (gate depolarising 0.999 per gate, readout error 0.005 per measurement
in the demo's bench: together about 0.01 of teleportation fidelity).

With the simulator's truth (``--truth``, the bench's registry oracle), bob's qubit is also read
after the correction, before it is measured: ⟨ψ|ρ|ψ⟩ = (1 + r·n)/2 from its Bloch vector r, the
teleported state's true fidelity.

Run it against ``qnode demo --serve`` (its connection file names the broker, the applications
and the simulator's truth)::

    python examples/teleportation.py --connection qnode-demo.json --trials 100

The last line printed is a JSON report.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pair_protocol import run_pairs
from simulator_truth import Truth, simulator_truth

from qnode.client import NodeClient, Pair, gates
from qnode.client.connection import ConnectionInfo

PURPOSE = 7
#: pairs asked for in one request (the node refuses at once what its path cannot supply
#: within the request's timeout: a long run asks in rounds)
BATCH = 50
#: how long alice waits for bob's turn of a state after its DATA (s)
BOB_WAIT_S = 10.0
#: the Pauli that takes Φ+ to each Bell state (on either half, up to a phase)
FRAME = {"phi+": None, "phi-": "z", "psi+": "x", "psi-": "y"}


@dataclass
class Trial:
    pair_id: int
    bell_state: str
    pair_fidelity: float          # as PAIR reported it (at delivery)
    theta: float
    phi: float
    alice_fidelity: float | None = None   # alice's RESULT: F when her Bell measurement ran
    bob_fidelity: float | None = None     # bob's last RESULT: F when his measurement ran
    success: int | None = None    # bob's verifying measurement gave 0
    truth: float | None = None    # ⟨ψ|ρ|ψ⟩ of bob's qubit after the correction


@dataclass
class Report:
    trials: int
    successes: int
    fidelity: float               # measured: successes / trials
    sigma: float                  # its binomial standard error
    predicted: float              # mean (2F + 1)/3 over the pairs' F when the gates ran
    pair_fidelity: float          # mean F when the gates ran (alice's and bob's RESULTs)
    delivered_fidelity: float     # mean F at delivery (PAIR)
    predicted_at_delivery: float  # mean (2F + 1)/3 over the F at delivery
    truth: float | None           # mean ⟨ψ|ρ|ψ⟩ (simulator), if read
    z_predicted: float            # (measured − predicted)/σ
    z_truth: float | None         # (measured − truth)/σ
    seconds: float
    lost: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"teleported {self.trials} random states alice → bob in {self.seconds:.1f} s",
               f"  measured fidelity   {self.fidelity:.4f} ± {self.sigma:.4f} "
               f"({self.successes}/{self.trials})",
               f"  predicted (2F+1)/3  {self.predicted:.4f} from the pairs' F when the gates "
               f"ran = {self.pair_fidelity:.4f}  ({self.z_predicted:+.2f} σ)",
               f"  (at delivery: F = {self.delivered_fidelity:.4f}, (2F+1)/3 = "
               f"{self.predicted_at_delivery:.4f})"]
        if self.truth is not None and self.z_truth is not None:
            out.append(f"  simulator's truth   {self.truth:.4f}  ({self.z_truth:+.2f} σ)")
        if self.lost:
            out.append(f"  not completed: {self.lost}")
        return out


def bloch_of(theta: float, phi: float) -> tuple[float, float, float]:
    """The Bloch vector of R_Z(φ) R_Y(θ)|0⟩."""
    return (math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta))


def alice_gates(theta: float, phi: float) -> list[dict[str, Any]]:
    """Prepare |ψ⟩ in the scratch qubit, Bell-measure it with the pair's half: [m1, m2]."""
    return [gates.rot(gates.AUX, "Y", theta), gates.rot(gates.AUX, "Z", phi),
            gates.cnot(gates.AUX, gates.PAIR), gates.h(gates.AUX),
            gates.meas(gates.AUX, "Z"), gates.meas(gates.PAIR, "Z")]


def correction_gates(bell_state: str, m1: int, m2: int) -> list[dict[str, Any]]:
    """Bob's correction: the pair's frame, then X^m2, then Z^m1."""
    out = []
    frame = FRAME[bell_state]
    if frame is not None:
        out.append(getattr(gates, frame)(gates.PAIR))
    if m2:
        out.append(gates.x(gates.PAIR))
    if m1:
        out.append(gates.z(gates.PAIR))
    return out


def verify_gates(theta: float, phi: float) -> list[dict[str, Any]]:
    """Rotate |ψ⟩ back to |0⟩ and measure Z (0: success)."""
    return [gates.rot(gates.PAIR, "Z", -phi), gates.rot(gates.PAIR, "Y", -theta),
            gates.meas(gates.PAIR, "Z")]


async def teleport(alice: NodeClient, bob: NodeClient, trials: int, *, remote: str = "bob",
                   bob_node: str = "bob", truth: Truth | None = None, seed: int | None = None,
                   timeout_s: float = 600.0) -> Report:
    """Teleport ``trials`` random states from ``alice``'s application to ``bob``'s."""
    rng = random.Random(seed)
    started = time.monotonic()
    done: dict[int, Trial] = {}
    alice_fidelity: dict[int, float | None] = {}   # pair id -> F in alice's RESULT

    async def alice_turn(pair: Pair) -> dict[str, Any]:
        theta = math.acos(1 - 2 * rng.random())
        phi = 2 * math.pi * rng.random()
        res = await alice.operate(pair, alice_gates(theta, phi))
        m1, m2 = res.outcomes
        alice_fidelity[pair.pair_id] = res.fidelity
        # theta and phi are for the verifier only: a real receiver is not told the state
        return {"m1": m1, "m2": m2, "theta": theta, "phi": phi}

    async def bob_turn(pair: Pair, note: dict[str, Any]) -> None:
        t = Trial(pair.pair_id, pair.bell_state, pair.fidelity, note["theta"], note["phi"],
                  alice_fidelity.pop(pair.pair_id, None))
        fix = correction_gates(pair.bell_state, note["m1"], note["m2"])
        if truth is not None:
            await bob.operate(pair, fix)
            assert pair.qubit is not None
            r = truth.bloch(bob_node, pair.qubit)
            n = bloch_of(t.theta, t.phi)
            t.truth = (1 + sum(a * b for a, b in zip(r, n, strict=True))) / 2
            fix = []
        result = await bob.operate(pair, fix + verify_gates(t.theta, t.phi))
        t.success = 1 - result.outcomes[-1]
        t.bob_fidelity = result.fidelity
        done[t.pair_id] = t

    lost = await run_pairs(alice, bob, trials, remote=remote, purpose=PURPOSE,
                           sender_turn=alice_turn, receiver_turn=bob_turn, batch=BATCH,
                           wait_s=BOB_WAIT_S, timeout_s=timeout_s)
    return summarise(list(done.values()), time.monotonic() - started, lost)


def summarise(trials: list[Trial], seconds: float, lost: dict[str, int]) -> Report:
    n = len(trials)
    if n == 0:
        raise RuntimeError(f"no state was teleported (lost: {lost})")
    k = sum(t.success or 0 for t in trials)
    f = k / n
    sigma = math.sqrt(max(f * (1 - f), 1.0 / n) / n)   # never 0: one trial's worth at least
    used = [worked_fidelity(t) for t in trials]
    pf = sum(used) / n
    predicted = sum((2 * u + 1) / 3 for u in used) / n
    delivered = sum(t.pair_fidelity for t in trials) / n
    truths = [t.truth for t in trials if t.truth is not None]
    truth = sum(truths) / len(truths) if truths else None
    return Report(n, k, f, sigma, predicted, pf, delivered, (2 * delivered + 1) / 3, truth,
                  (f - predicted) / sigma, None if truth is None else (f - truth) / sigma,
                  seconds, lost)


def worked_fidelity(t: Trial) -> float:
    """The F of the pair that did the work: the mean of the F when alice's and bob's
    measurements ran (each end's RESULT), the F at delivery where a node did not say."""
    at = [f for f in (t.alice_fidelity, t.bob_fidelity) if f is not None]
    return sum(at) / len(at) if len(at) == 2 else t.pair_fidelity


async def main_async(args: argparse.Namespace) -> Report:
    info = ConnectionInfo.load(args.connection)
    truth_address = args.truth or simulator_truth(args.connection)
    truth = Truth(truth_address) if truth_address and not args.no_truth else None
    try:
        async with NodeClient.from_connection(info, args.alice_app) as alice, \
                NodeClient.from_connection(info, args.bob_app) as bob:
            return await teleport(alice, bob, args.trials, remote=info.application(
                args.bob_app).node, bob_node=info.application(args.bob_app).node, truth=truth,
                seed=args.seed, timeout_s=args.timeout_s)
    finally:
        if truth is not None:
            truth.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connection", default="qnode-demo.json",
                   help="the connection file of qnode demo --serve")
    p.add_argument("--trials", type=int, default=100, help="states to teleport")
    p.add_argument("--alice-app", default="alice-app")
    p.add_argument("--bob-app", default="bob-app")
    p.add_argument("--truth", help="the simulator's registry oracle, socket://host:port "
                                   "(default: the connection file's)")
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
