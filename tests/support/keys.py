"""Both ends of a key block in one process, messages through JSON as on the bus (not a test
module; the tests and benchmarks/qkd_postprocessing.py use it)."""
from __future__ import annotations

import json
from collections.abc import Callable
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
