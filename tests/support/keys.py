"""Both ends of a key block in one process, messages through JSON as on the bus, and a simulated
two-basis M link (not a test module; the tests and benchmarks/qkd_postprocessing.py use it)."""
from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qnode.daemon.qkd.block import BlockFollower, BlockLeader, BlockResult


def wire(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as the other end receives it (JSON there and back)."""
    return json.loads(json.dumps(body))


def exchange(leader: BlockLeader, follower: BlockFollower, offer: dict[str, Any],
             tamper: Callable[[dict[str, Any]], dict[str, Any]] | None = None
             ) -> tuple[BlockResult, BlockResult, int]:
    """Both ends through the messages after ``offer``: (leader's result, follower's result,
    reveal rounds). ``tamper`` edits the leader's ``KEY_FINISH`` before the follower reads it."""
    reply, _ = follower.on_offer(wire(offer))
    rounds = 0
    while True:
        kind, body, lead_result = leader.on_reply(wire(reply))
        if kind == "finish":
            break
        rounds += 1
        reply, _ = follower.on_reveal(wire(body))
    assert lead_result is not None
    if tamper is not None:
        body = tamper(body)
    return lead_result, follower.finish(wire(body)), rounds


def bbm92_link(state: Any, seed: int, rate_hz: float = 4e5) -> Any:
    """A hal_sim photon-stream simulator of an M link with passive Z/X analyzers at both ends
    (HWP 0° and 22.5°): alice on channels 1–4 (1 km), bob on 5–8 (2 km, his clock 3.2 ms off
    and 2.5 ppm fast); detectors 60 %, 200 Hz dark, 30 ps jitter."""
    from qnode.hal_sim import (
        Analyzer,
        Clock,
        CWSource,
        Detector,
        Fibre,
        Link,
        Node,
        PhotonStreamSimulator,
    )
    from qnode.hal_sim.physics.coupling import waveplate_analyzer_vector

    detector = dict(efficiency=0.6, dark_count_rate_hz=200.0, dead_time_ps=20_000,
                    jitter_ps=30.0)

    def node(name: str, channels: tuple[int, ...], km: float, clock: Any = None) -> Any:
        return Node(name, Fibre(km), [
            Analyzer(f"b{i}", waveplate_analyzer_vector(angle),
                     Detector(channels[2 * i], **detector),
                     Detector(channels[2 * i + 1], **detector))
            for i, angle in enumerate((0.0, 22.5))], clock or Clock())

    link = Link(CWSource(rate_hz), state, (
        node("alice", (1, 2, 3, 4), 1.0),
        node("bob", (5, 6, 7, 8), 2.0, Clock(offset_ps=3_210_987_654, drift_ppm=2.5))))
    return PhotonStreamSimulator(link, seed=seed)


def stored_keys(path: Path) -> dict[str, tuple[str, bytes]]:
    """key id -> (master node, material) of a key store, read as the file is."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {k: (m, bytes(v)) for k, m, v in
                db.execute("SELECT key_id, master_node, material FROM keys")}
