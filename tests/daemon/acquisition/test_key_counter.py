"""Key-mode counting against hal_sim's truth: the counter sees only the peer's detection times,
names each coincidence by the peer tag's stream index, and the streamer's own log answers with
its bases and outcomes. The sifted bits' error fractions are the simulated state's flipped-basis
weights; a chunk lost on the way changes nothing but the count; and the whole chain (sifting, the
sample, error correction, verification, privacy amplification) gives both ends the same key.
"""
from __future__ import annotations

import numpy as np
import pytest

from qnode.daemon.acquisition.cross_node import BasisLayout
from qnode.daemon.acquisition.key_counter import KeyCounter, KeyTagLog, key_channels
from qnode.daemon.bus import timewire
from qnode.daemon.qkd import estimate
from qnode.daemon.qkd.block import BlockFollower, BlockLeader, KeyParams
from qnode.daemon.qkd.session import LOST, KeyFollower, KeyLeader, key_bit_flips
from qnode.hal_sim import BellDiagonalState
from qnode.native import merge_channels

from support.keys import bbm92_link, exchange, wire

WINDOW_PS = 300
STATE = BellDiagonalState({"phi+": 0.9, "phi-": 0.02, "psi+": 0.05, "psi-": 0.03})
OWN = BasisLayout.make((1, 2, 3, 4))
PEER = BasisLayout.make((5, 6, 7, 8))


def _run(seed: int, seconds: float = 3.0, lose_chunk: int | None = None,
         state: BellDiagonalState = STATE):
    """alice counts, bob streams TIMES (his clock ms off, 2.5 ppm fast). (sifted events as
    (leader bases, leader bits, follower bases, follower bits), counter, bob's log)."""
    sim = bbm92_link(state, seed)
    counter = KeyCounter(OWN, WINDOW_PS, align_s=0.5)
    log = KeyTagLog(PEER)
    got, end = [], 0
    for i, chunk in enumerate(sim.stream(int(seconds * 1e12))):
        a, b = chunk.blocks["alice"], chunk.blocks["bob"]
        counter.add_own(a, int(a["time"][-1]) if a.size else 0)
        end = max(int(b["time"][-1]) if b.size else 0, end)
        times, first = log.add(b, end)
        body = timewire.encode(times, link="m", chunk=i, t_end_ps=end,
                               extra={"first_index": first})
        if i != lose_chunk:
            counter.add_peer(timewire.decode(body), body["first_index"], body["t_end_ps"])
        events = counter.process()
        if events is not None and events.peer_index.size:
            bases, bits = log.lookup(events.peer_index)
            got.append((events.bases, events.bits, bases, bits))
    return [np.concatenate(x) for x in zip(*got, strict=True)], counter, sim


def _flipped(own_bases, own_bits, peer_bases, peer_bits):
    same = own_bases == peer_bases
    return {b: float(np.mean(own_bits[same & (own_bases == code)]
                             != peer_bits[same & (own_bases == code)]))
            for b, code in (("Z", 0), ("X", 1))}, int(same.sum())


@pytest.mark.parametrize("lose_chunk", [None, 7], ids=["all-chunks", "a-chunk-lost"])
def test_sifted_bits_err_as_the_simulated_state_says(lose_chunk):
    (ob, obits, pb, pbits), counter, sim = _run(seed=11, lose_chunk=lose_chunk)
    assert counter.tracker is not None and counter.tracker.state.status.name == "LOCKED"
    assert not np.any(pb == LOST)
    lam = STATE.weights
    truth = {"Z": lam["psi+"] + lam["psi-"], "X": lam["phi-"] + lam["psi-"]}
    q, n = _flipped(ob, obits, pb, pbits)
    for b in "ZX":
        sigma = np.sqrt(truth[b] * (1 - truth[b]) / (n / 2))
        # accidentals add ½ an error each: here ≪ σ (300 ps window, 0.3 Mcps singles)
        assert abs(q[b] - truth[b]) <= 4 * sigma + 0.002, (b, q[b], truth[b], sigma)
    # about half of the coincidences are measured in the same basis
    assert abs(n / ob.size - 0.5) < 0.02
    # every pair registered at both ends is found once (less the lost chunk's)
    registered = sim.truth.pairs_registered_both
    if lose_chunk is None:
        assert abs(counter.coincidences - registered) < 5 * np.sqrt(registered) + \
            0.01 * registered


def test_the_tag_log_answers_lost_for_tags_it_does_not_hold():
    log = KeyTagLog(PEER, max_age_s=1e-6)       # keeps only the newest chunk
    block = merge_channels({5: np.arange(0, 4_000_000, 1000, dtype=np.int64),
                            8: np.arange(500, 4_000_000, 1000, dtype=np.int64)})
    log.add(block[:4000], int(block["time"][3999]))
    _, first = log.add(block[4000:], 4_000_000)
    bases, bits = log.lookup(np.array([0, first, first + 1, first + 10**6], np.int64))
    assert list(bases) == [LOST, 0, 1, LOST]     # forgotten, Z (ch 5), X (ch 8), never sent
    assert list(bits[1:3]) == [0, 1]
    assert log.forgotten == 4000


def test_a_layout_without_z_and_x_cannot_make_keys():
    with pytest.raises(ValueError, match="neither Z nor X"):
        key_channels(BasisLayout.make((1, 2, 3, 4), angles_deg=(0.0, 11.25)))
    with pytest.raises(ValueError, match="Z and X"):
        key_channels(BasisLayout.make((1, 2)))


def test_streams_to_identical_keys_through_sifting_the_sample_and_a_block():
    """The in-process chain the daemons run (roles.key_link), messages through JSON."""
    state = BellDiagonalState({"phi+": 0.97, "phi-": 0.01, "psi+": 0.01, "psi-": 0.01})
    (ob, obits, pb, pbits), _, _ = _run(seed=12, seconds=4.0, state=state)
    lead = KeyLeader(1 << 16)
    follow_bits = {"b": pbits, "base": pb}
    index = np.arange(ob.size, dtype=np.int64)

    def lookup(i: np.ndarray):
        return follow_bits["base"][i], follow_bits["b"][i]

    follow = KeyFollower(lookup, key_bit_flips("phi+"), max_pending_bits=1 << 18)
    for lo in range(0, ob.size, 5000):
        s = slice(lo, lo + 5000)
        lead.on_sifted(wire(follow.on_sift(wire(lead.sift(index[s], ob[s], obits[s])))))
    params = KeyParams(min_bits=1 << 14, sample_bits=2048)
    cut = lead.next_block()
    assert cut is not None
    start, block = cut
    k = estimate.sample_size(block.n, params.sample_bits)
    sample, rest = estimate.split(block, k)
    msg = wire({"session": str(lead.session), "start": start, "n": block.n,
                "block": str(block.block_id), **estimate.sample_message(sample)})
    f_block = follow.block(msg)
    f_sample, f_rest = estimate.split(f_block, k)
    verdict = estimate.SampleEstimate(sample, wire(estimate.compare(f_sample, msg)))
    assert not verdict.above(params.qber_threshold)
    lam = state.weights
    assert abs(verdict.qber_z - (lam["psi+"] + lam["psi-"])) < 0.02
    leader = BlockLeader(rest, params, verdict.plan_qber(params.qber_threshold))
    offer, _ = leader.offer()
    assert offer is not None
    mine, theirs, _ = exchange(leader, BlockFollower(f_rest, params), offer)
    assert mine.reason is None and theirs.reason is None, (mine.reason, theirs.reason)
    print(f"block {mine.n} bits: QBER Z {mine.qber_z:.4f} X {mine.qber_x:.4f}, f_EC "
          f"{mine.f_ec:.3f}, {mine.length} secret bits")
    assert mine.length > 5000 and np.array_equal(mine.key, theirs.key)
    assert mine.key_units(256) == theirs.key_units(256)


def test_a_peer_stream_that_goes_back_is_refused_and_changes_nothing():
    counter = KeyCounter(OWN, WINDOW_PS, align_s=0.5)
    counter.add_peer(np.array([100, 200, 300], np.int64), 10, 400)
    for times, first, field in ((np.array([500], np.int64), 12, "first_index"),
                                (np.array([350], np.int64), 13, "t0_ps")):
        with pytest.raises(ValueError, match=field):
            counter.add_peer(times, first, 600)
    assert counter.peer_tags == 3 and counter.peer_end == 400
    counter.add_peer(np.array([450], np.int64), 20, 600)    # a gap: chunks lost on the way
    assert counter.peer_tags == 4
