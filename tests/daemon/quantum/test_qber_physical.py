"""QBERs reported inside their physical range [0, 1] with the unclamped value kept beside them.

A read-out-corrected QBER, (k/n − p)/(1 − 2p), goes below 0 whenever fewer errors are seen than
the read-out flips alone explain (about half the time when the true QBER is 0). The daemon
reports ``qber_<b>`` clamped to [0, 1], ``qber_<b>_raw`` unclamped and the 95 % interval
``qber_<b>_ci_low``/``_ci_high`` (Wilson, mapped through the correction, intersected with
[0, 1]): estimators.physical_qber. Checked here: the estimator on counts built to go negative,
the interval's coverage, the telemetry schema, the Prometheus export, the live view, an M link's
figures (cross_node.link_figures) and a K link's memory telemetry (klink.memory.LinkMemory).
"""
from __future__ import annotations

import math
import urllib.request
from typing import get_type_hints

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qnode.daemon.acquisition.cross_node import BasisLayout, link_figures
from qnode.daemon.bus.telemetry import LinkTelemetry, link_qber, validate
from qnode.daemon.klink.memory import LinkMemory, QubitPool
from qnode.daemon.quantum import estimators as est
from qnode.daemon.tools.liveview import link_cells
from qnode.daemon.tools.metrics import PrometheusExporter

E_READOUT = 0.005                                        # each end's read-out error
P_FLIP = 2 * E_READOUT - 2 * E_READOUT**2                # parity flip: one end flips, not both
FIELDS = ("qber_{b}", "qber_{b}_raw", "qber_{b}_ci_low", "qber_{b}_ci_high")


def below_zero() -> est.PhysicalQber:
    """5 errors in 1000 pairs: 0.5 % seen, 0.995 % expected from the read-out alone."""
    return est.physical_qber(5, 1000, flip=P_FLIP)


def test_readout_correction_below_zero_is_clamped():
    q = below_zero()
    scale = 1 - 2 * P_FLIP
    assert q.raw == pytest.approx((0.005 - P_FLIP) / scale) and q.raw < -0.005
    assert q.value == 0.0 and q.clamped
    assert q.sigma == pytest.approx(math.sqrt(0.005 * 0.995 / 1000) / scale)
    lo_w, hi_w = est.wilson_interval(5, 1000, 0.95)
    assert q.low == 0.0                                  # (lo_w − p)/(1 − 2p) < 0, cut at 0
    assert q.high == pytest.approx((hi_w - P_FLIP) / scale) and 0 < q.high < 0.01
    assert 0.0 <= q.low <= q.value <= q.high <= 1.0
    assert q.level == est.QBER_LEVEL == 0.95
    # downstream estimators take the clamped value (a raw −0.005 would be refused)
    assert est.fidelity_lower_bound(q_z=q, q_x=q).value == 1.0


def test_interval_collapses_when_the_readout_alone_explains_more():
    q = est.physical_qber(0, 1000, flip=P_FLIP)          # Wilson upper 0.38 % < p = 0.995 %
    assert q.raw < 0 and q.value == q.low == q.high == 0.0


def test_without_correction_it_is_the_plain_fraction_and_wilson():
    qb = est.basis_qber(480, 470, 30, 20, basis="Z")
    q = est.physical_qber(qb.errors, qb.total)
    assert q.value == q.raw == qb.value == pytest.approx(50 / 1000) and not q.clamped
    assert q.sigma == pytest.approx(qb.sigma)
    assert (q.low, q.high) == pytest.approx(qb.interval())
    assert q.low <= q.value <= q.high


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="flip"):
        est.physical_qber(1, 10, flip=0.5)
    with pytest.raises(ValueError, match="exceed"):
        est.physical_qber(11, 10)
    empty = est.physical_qber(0, 0, flip=P_FLIP)
    assert math.isnan(empty.value) and (empty.low, empty.high) == (0.0, 1.0)


@pytest.mark.parametrize("true_q", [0.0, 0.001, 0.01])
def test_interval_covers_and_raw_is_unbiased(true_q):
    """4000 simulated batches of 1000 test pairs: the interval holds the true QBER in ≥ 93 %
    (95 % nominal; the binomial spread of the coverage estimate is 0.35 %), and the mean raw
    value is within 4 standard errors of the truth, while the clamped mean is high at Q = 0."""
    n, draws = 1000, 4000
    rng = np.random.default_rng(7)
    ks = rng.binomial(n, P_FLIP + (1 - 2 * P_FLIP) * true_q, draws)
    qs = {k: est.physical_qber(int(k), n, flip=P_FLIP) for k in np.unique(ks)}
    cover = np.mean([qs[k].low <= true_q <= qs[k].high for k in ks])
    raw = np.array([qs[k].raw for k in ks])
    assert cover >= 0.93, cover
    assert abs(raw.mean() - true_q) <= 4 * raw.std() / math.sqrt(draws)
    assert all(0.0 <= q.low <= q.value <= q.high <= 1.0 for q in qs.values())
    if true_q == 0.0:
        assert (raw < 0).mean() > 0.3                    # negative raw values are common
        assert np.mean([qs[k].value for k in ks]) > 5 * raw.std() / math.sqrt(draws)


def k_link_record(q: dict[str, float]) -> dict[str, object]:
    return {"node": "alice", "roles": ["memory"], "t": 1.7e9, "uptime_s": 10.0,
            "links": {"alice-rep": {"type": "K", "peer": "rep", "role": "end", **q}}}


def test_telemetry_fields_validate_against_the_schema():
    q = below_zero()
    fields = {**est.qber_telemetry("Z", q), **est.qber_telemetry("x", est.physical_qber(
        20, 1000, flip=P_FLIP)), **est.qber_telemetry("y", est.physical_qber(
            12, 1000, flip=P_FLIP))}
    for b in ("z", "x", "y"):
        assert {f.format(b=b) for f in FIELDS} <= set(fields)
    assert fields["qber_z"] == 0.0 and fields["qber_z_raw"] < 0
    assert 0.0 <= fields["qber_z_ci_low"] <= fields["qber_z_ci_high"] <= 1.0
    validate(k_link_record(fields))
    hints = get_type_hints(LinkTelemetry)
    for b in ("z", "x", "y"):
        for f in FIELDS:
            assert hints[f.format(b=b)] is float
    with pytest.raises(ValueError, match="qber_z_raw"):
        validate(k_link_record({**fields, "qber_z_raw": "negative"}))


def scrape(record: dict[str, object]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    exp = PrometheusExporter(0, "127.0.0.1")
    exp.start()
    try:
        exp.update(validate(record))
        with urllib.request.urlopen(exp.url, timeout=10) as resp:
            text = resp.read().decode()
    finally:
        exp.close()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_prometheus_exports_clamped_raw_and_interval():
    q = below_zero()
    s = scrape(k_link_record(est.qber_telemetry("Z", q)))
    lab = {"node": "alice", "link": "alice-rep", "basis": "z"}

    def v(name: str, **extra: str) -> float:
        return s[(name, frozenset({**lab, **extra}.items()))]

    assert v("qnode_link_qber_ratio") == 0.0
    assert v("qnode_link_qber_raw_ratio") == pytest.approx(q.raw) and q.raw < 0
    assert v("qnode_link_qber_interval_ratio", bound="lower") == 0.0
    assert v("qnode_link_qber_interval_ratio", bound="upper") == pytest.approx(q.high)
    # a record whose producer did not clamp (no qber_z_raw): exported clamped, raw kept
    old = scrape(k_link_record({"qber_z": -0.0008}))
    assert old[("qnode_link_qber_ratio", frozenset(lab.items()))] == 0.0
    assert old[("qnode_link_qber_raw_ratio", frozenset(lab.items()))] == -0.0008


def test_live_view_never_shows_a_negative_qber():
    cells = link_cells("alice-rep", {"type": "K", "qber_z": -0.0008, "qber_x": 0.0123})
    assert "0.0%/1.2%" in cells
    assert link_qber({"qber_z": 1.2, "qber_z_raw": 1.2}, "z").value == 1.0


def test_m_link_figures_report_all_four_fields():
    layout = BasisLayout.make([1, 2, 3, 4])             # Z then X on both ends
    counts = np.zeros((2, 2, 2, 2))
    counts[0, 0] = [[980, 3], [4, 1010]]                # Z–Z: 7 errors in 1997
    counts[1, 1] = [[990, 0], [0, 1005]]                # X–X: no error
    counts[0, 1] = counts[1, 0] = [[500, 500], [500, 500]]
    f = link_figures(counts, np.zeros_like(counts), layout, layout)
    for b, k, n in (("z", 7, 1997), ("x", 0, 1995)):
        assert f[f"qber_{b}"] == f[f"qber_{b}_raw"] == pytest.approx(k / n)
        lo, hi = est.wilson_interval(k, n)
        assert (f[f"qber_{b}_ci_low"], f[f"qber_{b}_ci_high"]) == pytest.approx((lo, hi))
        assert 0.0 <= f[f"qber_{b}_ci_low"] <= f[f"qber_{b}"] <= f[f"qber_{b}_ci_high"] <= 1.0
    assert f["qber_x_ci_low"] == 0.0 and f["qber_x_ci_high"] > 0.0


def k_link_memory_telemetry() -> dict[str, object]:
    """A K end's memory telemetry after 300 test pairs per basis, 1 error each, read-out error
    0.5 % at both ends: the corrected QBER is (1/300 − p)/(1 − 2p) ≈ −0.67 % in every basis."""
    mem = LinkMemory("alice-rep", QubitPool("qd", lambda: None, {}), test_fraction=0.1,  # type: ignore[arg-type, return-value]
                     readout_error=E_READOUT, t1_s=5.0, t2_s=2.0, prior_fidelity=0.9)
    for basis in ("X", "Y", "Z"):
        sign = est.BELL_SIGNS["phi+"][est.BASES.index(basis)]
        for i in range(300):
            ok = (0, 0) if sign > 0 else (0, 1)
            bad = (0, 1) if sign > 0 else (0, 0)
            a, b = bad if i == 0 else ok
            mem.tomography.add(basis, "phi+", a, b, E_READOUT, E_READOUT)
    return {"type": "K", "peer": "rep", "role": "end", **mem.telemetry()}


def test_k_link_memory_qber_is_shown_and_exported_clamped():
    """Whatever the memory (klink.memory) reports, the live view and the Prometheus export stay in
    [0, 1] and the unclamped value is exported as the raw one."""
    lt = k_link_memory_telemetry()
    raw = (1 / 300 - P_FLIP) / (1 - 2 * P_FLIP)
    for b in ("x", "y", "z"):
        q = link_qber(lt, b)
        assert q.value == 0.0 and q.raw == pytest.approx(raw)
    assert "0.0%/0.0%" in link_cells("alice-rep", lt)
    rec = {"node": "alice", "roles": ["memory"], "t": 1.7e9, "uptime_s": 1.0,
           "links": {"alice-rep": lt}}
    s = scrape(rec)
    lab = frozenset({"node": "alice", "link": "alice-rep", "basis": "y"}.items())
    assert s[("qnode_link_qber_ratio", lab)] == 0.0
    assert s[("qnode_link_qber_raw_ratio", lab)] == pytest.approx(raw)


def test_k_link_memory_reports_the_clamped_qber_itself():
    lt = k_link_memory_telemetry()
    # the QBERs clamp to 0: the state is Φ+ itself, which carries 2 bits per qubit sent
    assert lt["dense_coding_bits"] == pytest.approx(2.0, abs=1e-9)
    assert scrape({"node": "alice", "roles": ["memory"], "t": 1.7e9, "uptime_s": 1.0,
                   "links": {"alice-rep": lt}})[
        ("qnode_link_dense_coding_bits", frozenset({"node": "alice", "link": "alice-rep"}.items()))
    ] == pytest.approx(2.0, abs=1e-9)
    for b in ("x", "y", "z"):
        assert lt[f"qber_{b}"] == 0.0 and lt[f"qber_{b}_raw"] < 0
        assert 0.0 <= lt[f"qber_{b}_ci_low"] <= lt[f"qber_{b}_ci_high"] <= 1.0


def test_k_link_memory_reports_the_dense_coding_capacity_of_its_estimate():
    """QBERs X 5 %, Y 15 %, Z 10 % (300 test pairs each, no read-out error) make λ = (0.85,
    0.05, 0.10, 0) relative to Φ+ (Q_Z = λΨ+ + λΨ−, Q_X = λΦ− + λΨ−, Q_Y = λΦ− + λΨ+): the
    memory reports 2 − H(λ) of it; before every basis has its tests, nothing."""
    mem = LinkMemory("alice-rep", QubitPool("qd", lambda: None, {}), test_fraction=0.1,  # type: ignore[arg-type, return-value]
                     readout_error=0.0, t1_s=5.0, t2_s=2.0, prior_fidelity=0.9)
    assert "dense_coding_bits" not in mem.telemetry()
    for basis, errors in (("X", 15), ("Y", 45), ("Z", 30)):
        sign = est.BELL_SIGNS["phi+"][est.BASES.index(basis)]
        for i in range(300):
            same = (i >= errors) == (sign > 0)
            mem.tomography.add(basis, "phi+", 0, 0 if same else 1, 0.0, 0.0)
    lam = (0.85, 0.05, 0.10, 0.0)
    h = -sum(x * math.log2(x) for x in lam if x > 0)
    assert mem.telemetry()["dense_coding_bits"] == pytest.approx(2 - h, abs=1e-9)
