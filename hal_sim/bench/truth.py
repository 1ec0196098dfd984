"""The ground truth of a running bench's links, as the truth file holds it.

:func:`m_link_truth` and :func:`k_link_truth` turn a link's simulator (and, for an M link, its
spec and polarisation coupling) into JSON-ready numbers named like the daemon's telemetry fields
they are compared with; :class:`TruthWriter` rewrites the truth file with a snapshot every
second and at stop, atomically.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .spec import LinkSpec

log = logging.getLogger(__name__)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


_PHI_PLUS_T = (1.0, -1.0, 1.0)   # diagonal of Φ+'s correlation matrix, (X, Y, Z)


def _axis(vec: Any) -> tuple[str, int] | None:
    """("Z" | "X", ±1) when the Bloch vector is ±Z or ±X, else None."""
    for basis, k in (("X", 0), ("Z", 2)):
        if abs(abs(float(vec[k])) - 1.0) < 1e-9:
            return basis, (1 if vec[k] > 0 else -1)
    return None


def _setting_truth(sim: Any, spec: LinkSpec, eavesdropper: bool = True) -> dict[str, float]:
    """``qber_z``/``qber_x``/``chsh_s`` of the analyzers as set now (see :func:`m_link_truth`);
    ``eavesdropper=False``: as they would be without the eavesdropper."""
    a_node, b_node = sim.link.nodes
    corr = sim.correlation_matrix if eavesdropper else sim.link.state.correlation_matrix
    if not any(n.analyzers for n in spec.nodes):   # one H/V analyzer per node: as before
        return {"qber_z": (1 - abs(float(corr[2, 2]))) / 2,
                "qber_x": (1 - abs(float(corr[0, 0]))) / 2}
    vectors = getattr(sim, "_vectors", {})
    va = vectors.get(a_node.name, [a.vector for a in a_node.analyzers])
    vb = vectors.get(b_node.name, [a.vector for a in b_node.analyzers])
    expected = sim.expected_correlations(eavesdropper)
    out: dict[str, float] = {}
    for basis, vis in _basis_visibility(sim, va, vb, expected).items():
        out[f"qber_{basis.lower()}"] = (1 - vis) / 2
    if len(va) == 2 and len(vb) == 2:
        names_a = [x.name for x in a_node.analyzers]
        names_b = [x.name for x in b_node.analyzers]
        e = [[expected[(x, y)] for y in names_b] for x in names_a]
        ideal = [[sum(float(va[i][m]) * _PHI_PLUS_T[m] * float(vb[j][m]) for m in range(3))
                  for j in range(2)] for i in range(2)]

        def chsh(m: list[list[float]]) -> float:
            return m[0][0] + m[0][1] + m[1][0] - m[1][1]
        if abs(chsh(ideal)) > 2 + 1e-9:
            out["chsh_s"] = abs(chsh(e))
    return out


def _basis_visibility(sim: Any, va: Any, vb: Any,
                      expected: dict[tuple[str, str], float] | None = None) -> dict[str, float]:
    """Per Pauli basis both nodes measure (an analyzer at ±Z or ±X as set, before the fibres):
    s_b·σ_a·σ_b·E of those two analyzers, E with the fibres' rotations (the simulator's
    expected correlation), σ = ±1 the analyzers' orientation, s_b Φ+'s sign of the basis: the
    visibility V_b = 1 − 2·Q_b the daemon measures in that basis. ``expected``: the E per
    analyzer pair to use (default the simulator's now)."""
    a_node, b_node = sim.link.nodes
    if expected is None:
        expected = sim.truth.expected_correlation
    out: dict[str, float] = {}
    for basis, k in (("Z", 2), ("X", 0)):
        pa = [(an.name, ax[1]) for an, ax in zip(a_node.analyzers, map(_axis, va), strict=True)
              if ax is not None and ax[0] == basis]
        pb = [(an.name, ax[1]) for an, ax in zip(b_node.analyzers, map(_axis, vb), strict=True)
              if ax is not None and ax[0] == basis]
        if pa and pb:
            (na, sa), (nb, sb) = pa[0], pb[0]
            out[basis] = _PHI_PLUS_T[k] * sa * sb * float(expected[(na, nb)])
    return out


def _polarisation_truth(sim: Any, spec: LinkSpec, polarisation: Any) -> dict[str, Any]:
    """The ``polarisation`` block of :func:`m_link_truth`."""
    out = polarisation.truth(sim)
    a_node, b_node = sim.link.nodes
    vectors = getattr(sim, "_vectors", {})
    va = vectors.get(a_node.name, [a.vector for a in a_node.analyzers])
    vb = vectors.get(b_node.name, [a.vector for a in b_node.analyzers])
    per_basis = _basis_visibility(sim, va, vb)
    out["visibility_by_basis"] = per_basis
    if per_basis:
        out["visibility"] = sum(per_basis.values()) / len(per_basis)
    elif len(va) == 1 and len(vb) == 1:
        name_a, name_b = a_node.analyzers[0].name, b_node.analyzers[0].name
        out["visibility"] = abs(sim.truth.expected_correlation[(name_a, name_b)])
    return out


def _eavesdropper_truth(sim: Any, spec: LinkSpec) -> dict[str, Any]:
    """The ``eavesdropper`` block of :func:`m_link_truth`."""
    eve = sim.eavesdropper
    now = _setting_truth(sim, spec)
    clean = _setting_truth(sim, spec, eavesdropper=False)
    return {"node": eve.node, "fraction": sim.eavesdropper_fraction,
            "configured_fraction": float(eve.fraction), "bases": eve.labels,
            "basis_probabilities": list(eve.probabilities), "from_s": eve.from_s,
            "until_s": eve.until_s,
            "qber_added": {k[len("qber_"):].upper(): now[k] - clean[k]
                           for k in ("qber_z", "qber_x") if k in now and k in clean}}


def _phi_plus_fidelity(corr: Any) -> float:
    """⟨Φ+|ρ|Φ+⟩ = (1 + T_xx − T_yy + T_zz)/4 of a state with zero local Bloch vectors."""
    return float((1.0 + corr[0, 0] - corr[1, 1] + corr[2, 2]) / 4.0)


def m_link_truth(sim: Any, spec: LinkSpec, polarisation: Any = None) -> dict[str, Any]:
    """Truth of an M link. Top level (telemetry names): ``pair_rate_hz`` (now),
    ``coincidence_rate_hz`` = B·η_a·η_b (true pairs registered at both ends per second, before
    dead time), ``visibility`` (Werner V), ``fidelity_estimate`` = ⟨Φ+|ρ|Φ+⟩ of the pairs as the
    nodes receive them (after the eavesdropper, if she is active); ``qber_z`` /
    ``qber_x``: nodes with one H/V analyzer: (1 − |T_zz|)/2, (1 − |T_xx|)/2 of the state; nodes
    with declared ``analyzers``: (1 − s_b·T_bb)/2 against Φ+ (s = +1 in Z and X), present when
    both nodes have an analyzer in that basis (Bloch vector ±Z, ±X as set now); ``chsh_s``
    (two analyzers per node whose settings violate the CHSH bound for Φ+): |E(a0,b0) +
    E(a0,b1) + E(a1,b0) − E(a1,b1)| of the state at the analyzers as set now (a: node 0's
    analyzers in file order, b: node 1's). QBERs and S include the fibres' polarisation
    rotations. ``polarisation`` (links with drift or compensators): per node the fibre's rotation
    D (3×3, on the photon's Stokes vector) and its angle (deg), the walk's angle (rad), the steps
    applied (s, deg, axis), the compensator's angle (deg) and C·D; ``relative_rotation_deg``;
    ``visibility_by_basis`` and ``visibility``, the true visibility now (mean over the bases both
    ends measure of V_b = 1 − 2Q_b, as the daemon's ``visibility``; ``visibility`` at the top
    level stays the source's Werner V). ``detail``: pairs emitted / both detected / registered
    at both ends, singles and dark counts per node and channel, the expected correlation E of
    the analyzers as set now ("node:analyzer|node:analyzer"), arm efficiencies, each node's
    clock (offset ps, drift ppm) and channel delays (ps, fibre + detector + clock offset).
    ``eavesdropper`` (links with one, configured or triggered): her ``node``, the ``fraction``
    of its photons she intercepts now (0 outside her schedule), ``configured_fraction``,
    ``bases`` ("Z"/"X"/"Y" or [x, y, z]) and ``basis_probabilities``, ``from_s``/``until_s``,
    and ``qber_added`` per basis ("Z", "X"): the true QBER now minus the QBER without her, as
    above (for a Werner state and her bases Z, X at ½: f·V/4;
    :mod:`qnode.hal_sim.physics.eavesdropper`). The QBERs, S and ``fidelity_estimate`` above
    include her; ``visibility`` and ``state_weights`` stay the source's."""
    t = sim.truth
    a, b = (n.name for n in sim.link.nodes)
    rate = float(getattr(sim.link.source, "pair_rate_hz", float("nan")))
    state = sim.link.state
    clocks = {n.name: {"offset_ps": n.clock.offset_ps, "drift_ppm": n.clock.drift_ppm}
              for n in sim.link.nodes}
    return {
        "type": "M", "nodes": [a, b],
        "pair_rate_hz": rate,
        "coincidence_rate_hz": rate * t.arm_efficiency(a) * t.arm_efficiency(b),
        "visibility": spec.visibility,
        **_setting_truth(sim, spec),
        "fidelity_estimate": _phi_plus_fidelity(sim.correlation_matrix),
        "detail": {
            "duration_ps": t.duration_ps, "pairs_emitted": t.pairs_emitted,
            "pairs_both_detected": t.pairs_both_detected,
            "pairs_registered_both": t.pairs_registered_both,
            "singles": {n: {str(c): k for c, k in per.items()} for n, per in t.singles.items()},
            "dark_counts": {n: {str(c): k for c, k in per.items()}
                            for n, per in t.dark_counts.items()},
            "expected_correlation": {f"{a}:{x}|{b}:{y}": e
                                     for (x, y), e in t.expected_correlation.items()},
            "arm_efficiency": {n: t.arm_efficiency(n) for n in (a, b)},
            "clock": clocks,
            "channel_delay_ps": {n: {str(c): d for c, d in per.items()}
                                 for n, per in t.channel_delay_ps.items()},
            "state_weights": dict(state.weights)},
        **({} if polarisation is None
           else {"polarisation": _polarisation_truth(sim, spec, polarisation)}),
        **({} if sim.eavesdropper is None
           else {"eavesdropper": _eavesdropper_truth(sim, spec)})}


def k_link_truth(sim: Any) -> dict[str, Any]:
    """Truth of a K link. Top level (telemetry names): ``herald_rate_hz`` (closed form),
    ``fidelity_estimate`` (mean true fidelity of the heralds so far, false ones at 1/4; the closed
    form before the first), ``mean_fidelity_true`` (of the true heralds), ``false_heralds_total``,
    ``true_heralds_total``. ``detail``: the run's counters
    (:meth:`~qnode.hal_sim.physics.heralding.HeraldRunTruth.as_dict`), the station, the ends, the
    attempt period and gate (ps) and each channel's role and delay, as a classifier needs them."""
    t, link = sim.truth, sim.link
    n_true, n_false = sum(t.true_heralds.values()), sum(t.false_heralds.values())
    fid = ((t.fidelity_sum_true + 0.25 * n_false) / (n_true + n_false) if n_true + n_false
           else sim.expected.mean_fidelity)
    detail = t.as_dict()
    detail.update(station=link.station, ends=list(link.ends), attempt_period_ps=link.period_ps,
                  gate_ps=link.gate_ps,
                  channels=dict(zip(("c_h", "c_v", "d_h", "d_v"), link.channels, strict=True)),
                  channel_delay_ps={str(d.channel): d.delay_ps for d in link.detectors})
    return {"type": "K", "station": link.station, "ends": list(link.ends),
            "herald_rate_hz": sim.expected.herald_rate_hz,
            "fidelity_estimate": _finite(fid),
            "mean_fidelity_true": _finite(t.mean_fidelity_true),
            "true_heralds_total": n_true, "false_heralds_total": n_false,
            "detail": detail}


class TruthWriter:
    """Rewrites ``path`` with ``snapshot()`` as JSON every ``interval_s`` (atomically: a
    temporary file in the same directory, then ``os.replace``) and once more at :meth:`stop`."""

    def __init__(self, path: str | Path, snapshot: Callable[[], dict[str, Any]],
                 interval_s: float = 1.0):
        self.path = Path(path)
        self.snapshot = snapshot
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self) -> None:
        data = json.dumps(self.snapshot(), indent=1, allow_nan=False)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(data)
        os.replace(tmp, self.path)

    def _write_logged(self) -> None:
        try:
            self.write()
        except (OSError, ValueError) as exc:  # keep serving; say why the file is stale
            log.warning("cannot write the truth file %s: %s", self.path, exc)

    def start(self) -> None:
        self.write()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hal_sim-truth")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write_logged()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.write()
