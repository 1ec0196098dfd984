"""What the daemons of a test network stored: a link end read back from a node's SQLite state,
and waiting until both ends of every link agree once the herald stations stopped. Not a test
module."""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from qnode.daemon.linklayer import LinkEnd
from qnode.daemon.runtime.state import StateError, StateStore
from qnode.daemon.tools.demo import DemoNetwork


def stored_end(state_dir: Path, link: str) -> LinkEnd:
    """``link``'s end as the node with ``state_dir`` stored it (KeyError: not stored)."""
    with StateStore(state_dir / "qnode.sqlite") as store:
        end, _ = LinkEnd.restore(store.load_links()[link], now=0.0)
    return end


def settle(net: DemoNetwork, stations: Iterable[str], links: Mapping[str, tuple[str, str]],
           timeout_s: float = 60.0) -> bool:
    """Stop ``stations``, then wait until both ends of each of ``links`` (id -> its two nodes)
    have stored the same expected number: what was in flight is applied (a loaded host may
    need seconds). False if they did not within ``timeout_s``."""
    net.stop(tuple(stations))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if all(stored_end(net.state_dir(a), link).expected_seq
                   == stored_end(net.state_dir(b), link).expected_seq
                   for link, (a, b) in links.items()):
                return True
        except (KeyError, OSError, StateError):   # not stored yet, or the store busy
            pass
        time.sleep(0.2)
    return False
