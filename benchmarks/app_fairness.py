"""Application service under contention: shares against weights, and request latency.

Real parts on loopback: a mosquitto (tests/support/mosquitto.py), hal_sim's bench and ``qnode
run`` daemons (qnode.daemon.tools.demo.DemoNetwork), applications as independent paho-mqtt
programs speaking the wire format of docs/integrators/applications.md.

Phases:

1. ``shares`` (on the K link alice – herald1 – repeater, its pairs in qubits, no path): eight
   applications at alice keep one large request each waiting for ``--seconds`` s (the
   repeater's ``listener`` application takes the far halves); the pairs each application got,
   against its weight. Run twice: equal weights (Jain's fairness index of the counts, goal ≥
   0.95) and weights 1 … 8 (Jain's index of count / weight, and each share against weight / Σ
   weights).
2. ``latency``: one application asks for one pair at a time, ``--requests`` times, with
   nothing else waiting: request → first PAIR (the client's clock, send to receipt) and request →
   DONE, p50 and p99; on the K link (same network) and on the path alice – repeater – bob (a
   second network of five nodes).

    python benchmarks/app_fairness.py [--seconds 30] [--requests 100]

Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import itertools
import json
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from qnode.daemon.tools.demo import DemoNetwork  # noqa: E402

from support.mosquitto import Mosquitto  # noqa: E402

NETWORK = "demo"
APPS = [f"app{i}" for i in range(1, 9)]


class App:
    """An application: one MQTT connection, replies in a queue (paho's thread)."""

    def __init__(self, name: str, port: int):
        self.name = name
        self.replies: queue.Queue[tuple[float, str, dict[str, Any]]] = queue.Queue()
        self.ids = itertools.count(1)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        self.client.on_message = lambda c, u, m: self.replies.put(
            (time.monotonic(), *self._parse(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"qnet/v1/{NETWORK}/+/app/{name}", qos=1)
        self.client.loop_start()

    @staticmethod
    def _parse(payload: bytes) -> tuple[str, dict[str, Any]]:
        env = json.loads(payload)
        return env["type"], env["body"]

    def send(self, node: str, type_: str, body: dict[str, Any]) -> float:
        env = {"v": 1, "type": type_, "sender": self.name, "id": next(self.ids),
               "ts": time.time(), "body": body}
        sent = time.monotonic()
        self.client.publish(f"qnet/v1/{NETWORK}/{self.name}/req/{node}", json.dumps(env), qos=1)
        return sent

    def drain(self) -> list[tuple[float, str, dict[str, Any]]]:
        out = []
        while True:
            try:
                out.append(self.replies.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def jain(x: list[float]) -> float:
    a = np.asarray(x, dtype=float)
    return float(a.sum() ** 2 / (len(a) * (a ** 2).sum()))


def _wait_listening(app: App, node: str, purpose: int, timeout_s: float = 180.0) -> None:
    """LISTEN until the node answers (it may still be starting: resent every 2 s)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        app.send(node, "LISTEN", {"purpose": purpose})
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if any(t == "LISTENING" for _, t, _ in app.drain()):
                return
            time.sleep(0.05)
    raise SystemExit(f"{app.name}: no LISTENING from {node}")


def _accepted(app: App, node: str, body: dict[str, Any]) -> str:
    """Send a REQUEST until it is ACCEPTED (no_listener: the far end's LISTENERS not there yet);
    the request id that was."""
    for attempt in range(120):
        rid = f"{body['request_id']}.{attempt}"
        app.send(node, "REQUEST", {**body, "request_id": rid})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                _, t, b = app.replies.get(timeout=0.5)
            except queue.Empty:
                continue
            if b.get("request_id") != rid:
                continue
            if t == "ACCEPTED":
                return rid
            if t == "ERROR" and b["code"] == "no_listener":
                break
            raise SystemExit(f"{app.name}: {t} {b}")
        time.sleep(0.5)
    raise SystemExit(f"{app.name}: never accepted")


def shares(port: int, weights: dict[str, float], seconds: float) -> dict[str, int]:
    apps = {n: App(n, port) for n in weights}
    try:
        rids = {n: _accepted(a, "alice", {"request_id": f"{n}-big", "remote": "repeater",
                                          "pairs": 100_000, "purpose": 7,
                                          "timeout_s": seconds + 30})
                for n, a in apps.items()}
        for a in apps.values():
            a.drain()                      # count from here: all eight are waiting
        time.sleep(seconds)
        got = {n: sum(1 for _, t, _ in a.drain() if t == "PAIR") for n, a in apps.items()}
        for n, a in apps.items():
            a.send("alice", "CANCEL", {"request_id": rids[n]})
        return got
    finally:
        for a in apps.values():
            a.close()


def latency(port: int, node: str, remote: str, requests: int) -> tuple[list[float], list[float]]:
    app = App("app1", port)
    first: list[float] = []
    done: list[float] = []
    try:
        _accepted(app, node, {"request_id": "warm", "remote": remote, "pairs": 1,
                              "purpose": 7, "timeout_s": 30})
        time.sleep(1)
        app.drain()
        for k in range(requests):
            rid = f"l{k}"
            sent = app.send(node, "REQUEST", {"request_id": rid, "remote": remote, "pairs": 1,
                                              "purpose": 7, "timeout_s": 30})
            t_first = None
            while True:
                at, t, b = app.replies.get(timeout=60)
                if b.get("request_id") != rid:
                    continue
                if t == "PAIR" and t_first is None:
                    t_first = at
                if t in ("DONE", "ERROR", "EXPIRED", "CANCELLED"):
                    if t == "DONE" and t_first is not None:
                        first.append(t_first - sent)
                        done.append(at - sent)
                    break
    finally:
        app.close()
    return first, done


def _config(apps: dict[str, float], listener_node: str) -> dict[str, str]:
    alice = "".join(f"[applications.{n}]\nweight = {w}\n\n" for n, w in apps.items())
    return {"alice": alice,
            listener_node: "[applications.listener]\nweight = 1.0\npurposes = [7]\n"}


def _fmt(xs: list[float]) -> str:
    if not xs:
        return "no samples"
    a = np.asarray(xs) * 1e3
    return f"p50 {np.percentile(a, 50):.1f} ms, p99 {np.percentile(a, 99):.1f} ms (n={len(a)})"


def run_link(args: argparse.Namespace, work: Path) -> None:
    weights_eq = {n: 1.0 for n in APPS}
    weighted = {n: float(i + 1) for i, n in enumerate(APPS)}
    # one network: the weighted applications' config names are the same, weights differ by
    # phase, so run one network per phase
    for label, weights in (("equal weights", weights_eq), ("weights 1..8", weighted)):
        with Mosquitto(work / f"mq-{len(label)}") as broker:
            net = DemoNetwork(work / f"net-{len(label)}", f"mqtt://127.0.0.1:{broker.port}",
                              work / f"logs-{len(label)}", nodes=("herald1", "alice", "repeater"),
                              paths=False, max_pair_age_s=3.0, delivered_hold_s=0.2,
                              qubits_per_link=3, extra=_config(weights, "repeater"))
            try:
                net.start()
                listener = App("listener", broker.port)
                _wait_listening(listener, "repeater", 7)
                print(f"[shares] {label}: network up, {len(weights)} applications wait "
                      f"{args.seconds:g} s", flush=True)
                got = shares(broker.port, weights, args.seconds)
                total = sum(got.values())
                listener.close()
                print(f"[shares] {label}: {total} pairs in {args.seconds:g} s "
                      f"({total / args.seconds:.1f} pairs/s)")
                wsum = sum(weights.values())
                for n in APPS:
                    print(f"    {n}: weight {weights[n]:g} share {got[n] / total:.4f} "
                          f"(configured {weights[n] / wsum:.4f}) pairs {got[n]}")
                print(f"  Jain's index of pairs/weight: "
                      f"{jain([got[n] / weights[n] for n in APPS]):.4f}")
                if label == "equal weights":
                    listener = App("listener", broker.port)
                    _wait_listening(listener, "repeater", 7)
                    first, done = latency(broker.port, "alice", "repeater", args.requests)
                    listener.close()
                    print(f"[latency] K link alice-repeater: request -> first pair "
                          f"{_fmt(first)}; request -> DONE {_fmt(done)}")
            finally:
                net.close()


def run_path(args: argparse.Namespace, work: Path) -> None:
    with Mosquitto(work / "mq-path") as broker:
        net = DemoNetwork(work / "net-path", f"mqtt://127.0.0.1:{broker.port}",
                          work / "logs-path",
                          nodes=("herald1", "herald2", "alice", "repeater", "bob"),
                          max_pair_age_s=2.0, delivered_hold_s=0.2,
                          extra=_config({"app1": 1.0}, "bob"))
        try:
            net.start()
            listener = App("listener", broker.port)
            _wait_listening(listener, "bob", 7)
            first, done = latency(broker.port, "alice", "bob", args.requests)
            listener.close()
            print(f"[latency] path alice-repeater-bob: request -> first pair {_fmt(first)}; "
                  f"request -> DONE {_fmt(done)}")
        finally:
            net.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="qnode-app-fairness-"))
    run_link(args, work)
    run_path(args, work)
    print(f"(work files in {work})")


if __name__ == "__main__":
    threading.current_thread().name = "main"
    main()
