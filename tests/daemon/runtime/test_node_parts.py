"""Small parts of the node daemon: BSM pattern classification, leased message ids, log lines."""
from __future__ import annotations

import io
import logging
import subprocess
import sys

import numpy as np

from qnode.daemon.logs import KeyValueFormatter
from qnode.daemon.node import LeasedIds
from qnode.daemon.roles.station import FAILURE, PSI_MINUS, PSI_PLUS, classify, pattern_table
from qnode.daemon.runtime.state import StateStore
from qnode.native import NFold, merge_channels


def test_two_click_patterns_announce_psi_plus_and_psi_minus_and_nothing_else():
    # channels: c-H=5, c-V=6, d-H=7, d-V=8; one cluster per pattern, 1 µs apart
    patterns = [(5, 8), (6, 7), (5, 6), (7, 8), (5, 7), (6, 8), (5,), (5, 6, 7), (5, 6, 7, 8)]
    want = [PSI_MINUS, PSI_MINUS, PSI_PLUS, PSI_PLUS, FAILURE, FAILURE, FAILURE, FAILURE, FAILURE]
    times: dict[int, list[int]] = {c: [] for c in (5, 6, 7, 8)}
    for k, pat in enumerate(patterns):
        for j, ch in enumerate(pat):
            times[ch].append(1_000_000 * (k + 1) + 100 * j)
    block = merge_channels({c: np.array(t, np.int64) for c, t in times.items()})
    nfold = NFold([5, 6, 7, 8], 1000, min_fold=1)
    events = np.concatenate([nfold.process(block).events, nfold.flush().events])
    table = pattern_table(nfold.mask_of, (5, 6, 7, 8))
    codes, when = classify(events, table)
    expected = [(w, 1_000_000 * (k + 1)) for k, w in enumerate(want) if w != FAILURE]
    assert [(int(c), int(t)) for c, t in zip(codes, when, strict=True)] == expected


def test_message_ids_keep_increasing_across_restarts_and_crashes(tmp_path):
    with StateStore(tmp_path / "s.sqlite") as store:
        ids = LeasedIds(store, lease=10)
        first = [ids() for _ in range(25)]      # crosses two lease boundaries
    with StateStore(tmp_path / "s.sqlite") as store:   # a crash: nothing saved at the end
        again = LeasedIds(store, lease=10)()
    assert first == list(range(first[0], first[0] + 25)) and again > first[-1]


def test_log_lines_carry_the_extra_fields_quoted():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(KeyValueFormatter(journal=True))
    logger = logging.getLogger("qnode.test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("link %s degraded", "a-b", extra={"link": "a-b", "error": "no reply x=1"})
    line = out.getvalue().strip()
    assert line.startswith("<4>WARNING qnode.test.logs ")
    assert 'msg="link a-b degraded"' in line and 'error="no reply x=1"' in line
    assert "link=a-b" in line


def test_a_node_without_key_delivery_does_not_load_the_http_server() -> None:
    """aiohttp (about 0.1 s and some MB to import) comes only with [kme]: importing the node
    in a fresh interpreter leaves it and the KME service unloaded."""
    probe = ("import sys, qnode.daemon.node; print(sorted(m for m in "
             "('aiohttp', 'qnode.daemon.kme.service') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == "[]", out
