"""The demo's report: every telemetry record of a run on disk, then plots and a summary.

During the run a :class:`Recorder` appends each telemetry record it is given to
``<report_dir>/telemetry.jsonl`` (one JSON object per line, flushed per record, so a crash
loses at most the line being written). Afterwards :func:`write_report` reads that file back and
writes, next to it:

* ``g2.png``: the latest g2 (start-stop correlation) histogram any node reported; delay (ns)
  against counts;
* ``rates.png``: ``herald_rate_hz`` of every K-type link end and ``coincidence_rate_hz`` of
  every M-type link end over the run (time in s from the first record);
* ``fidelity.png``: ``fidelity_estimate`` of every link end, and ``visibility`` and
  ``1 − qber_z`` of M-type link ends, over the run (``qber_z`` inside its physical range
  [0, 1], as :func:`~qnode.daemon.bus.telemetry.link_qber` reads it); the true values as dashed
  lines when ``truth`` is given;
* ``keys.png``: M links that make keys: the secret key rate, the QBER per basis (of the latest
  keyed block, exact; of each block's sample, dotted) beside the truth and the abort threshold,
  the secret bits per sifted bit beside the asymptotic BBM92 fraction 1 − h(Q_Z) − h(Q_X) of the
  true QBERs (error correction at the Shannon limit, infinite blocks), and f_EC beside 1 (the
  Shannon limit);
* ``summary.json``: per node, link end and path (a path's ends and repeaters), the final
  counters (``*_total``), the mean and final value of every other numeric figure, the truth
  side by side, and the list of files. For a
  QBER the mean of ``qber_<b>_raw`` is the unbiased one: ``qber_<b>`` is clamped at 0, so its
  mean is high when the QBER is near 0.

A plot with nothing to show is not written; ``summary["plots_skipped"]`` says why.

``truth`` maps a link id to the true values of telemetry fields of that link, by the field they
are compared with, e.g. ``{"alice-bob": {"fidelity_estimate": 0.95, "visibility": 0.97,
"qber_z": 0.015}}``, or has that mapping under ``"links"`` (the hal_sim bench's truth file:
``{"v": 1, "bench": ..., "links": {...}}``). Numeric values are set beside the estimates;
everything else is kept verbatim in ``summary["truth"]``. Dashed lines: ``herald_rate_hz``,
``coincidence_rate_hz``, ``fidelity_estimate``, ``visibility``, ``qber_z``.

matplotlib is imported only inside :func:`write_report` (it is part of the optional ``demo``
extra) and draws with the Agg canvas, without pyplot or a display.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from qnode.daemon.bus.envelope import Message
from qnode.daemon.bus.topics import Topic
from qnode.daemon.qkd.finite_key import asymptotic_fraction
from qnode.daemon.quantum.estimators import clamp_qber
from qnode.daemon.tools.liveview import link_kind, mapping, num

JSONL = "telemetry.jsonl"
SUMMARY = "summary.json"
G2_PNG, RATES_PNG, FIDELITY_PNG, KEYS_PNG = "g2.png", "rates.png", "fidelity.png", "keys.png"
#: Node fields that describe, not measure: left out of the numeric summary.
_NOT_FIGURES = frozenset({"v", "t"})


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None (strict JSON for jq and friends)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays as plain JSON values; anything else is a TypeError."""
    if hasattr(obj, "tolist"):
        return _finite(obj.tolist())
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class Recorder:
    """Appends telemetry records to ``<report_dir>/telemetry.jsonl`` (the directory is created).

    ``recorder(record)`` or ``await recorder.handle(topic, message)`` (a
    :class:`~qnode.daemon.bus.client.NodeBus` handler for ``telemetry``). ``count`` records so far.
    """

    def __init__(self, report_dir: str | os.PathLike[str]):
        self.report_dir = Path(report_dir)
        self.report_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.report_dir / JSONL
        self._file = self.path.open("a", encoding="utf-8")
        self.count = 0

    def record(self, record: Mapping[str, Any]) -> None:
        """Append one record (a JSON object); TypeError if it cannot be written as JSON."""
        line = json.dumps(_finite(record), allow_nan=False, separators=(",", ":"),
                          ensure_ascii=False, default=_json_default)
        self._file.write(line + "\n")
        self._file.flush()
        self.count += 1

    __call__ = add = record

    async def handle(self, topic: Topic, message: Message) -> None:
        """Record the body of a telemetry message."""
        self.record(message.body)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- reading ----------------------------------------------------------------------------------

def read_records(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """The telemetry records of a JSONL file, ordered by ``t``, and the number of lines that
    were skipped (not JSON, not an object, no ``node`` or ``t``: e.g. a line cut by a crash)."""
    records: list[dict[str, Any]] = []
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if (not isinstance(rec, dict) or not isinstance(rec.get("node"), str)
                    or num(rec.get("t")) is None):
                skipped += 1
                continue
            records.append(rec)
    records.sort(key=lambda r: r["t"])
    return records, skipped


def _link_truth(truth: Mapping[str, Any] | None) -> Mapping[str, Mapping[str, Any]]:
    if not truth:
        return {}
    links = truth.get("links")
    source = links if isinstance(links, Mapping) else truth
    return {k: v for k, v in source.items() if isinstance(v, Mapping)}


# -- the summary ------------------------------------------------------------------------------

def _figures(series: Iterable[Mapping[str, Any]], skip: frozenset[str] = frozenset()
             ) -> dict[str, dict[str, float]]:
    """``totals`` (the final value of ``*_total`` fields), ``mean`` and ``final`` (of every
    other numeric field) over a time-ordered series of records (NaN/None values ignored)."""
    values: dict[str, list[float]] = {}
    for rec in series:
        for key, value in rec.items():
            v = num(value)
            if v is not None and key not in skip:
                values.setdefault(key, []).append(v)
    out: dict[str, dict[str, float]] = {"totals": {}, "mean": {}, "final": {}}
    for key, vs in sorted(values.items()):
        if key.endswith("_total"):
            out["totals"][key] = vs[-1]
        else:
            out["mean"][key] = statistics.fmean(vs)
            out["final"][key] = vs[-1]
    return out


def _last_str(series: Iterable[Mapping[str, Any]], key: str) -> Any:
    last = None
    for rec in series:
        if rec.get(key) is not None:
            last = rec[key]
    return last


def summarize(records: list[dict[str, Any]], truth: Mapping[str, Any] | None = None
              ) -> dict[str, Any]:
    """The per-node, per-link summary of time-ordered ``records`` (see the module docstring)."""
    link_truth = _link_truth(truth)
    by_node: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_node.setdefault(rec["node"], []).append(rec)
    nodes: dict[str, Any] = {}
    for node, recs in sorted(by_node.items()):
        links: dict[str, list[tuple[float, Mapping[str, Any]]]] = {}
        for rec in recs:
            for link, lt in mapping(rec.get("links")).items():
                links.setdefault(str(link), []).append((rec["t"], mapping(lt)))
        link_summaries = {}
        for link, series in sorted(links.items()):
            lts = [lt for _, lt in series]
            ls: dict[str, Any] = {"type": link_kind(lts[-1]), "peer": _last_str(lts, "peer"),
                                  "role": _last_str(lts, "role"), "records": len(lts),
                                  **_figures(lts)}
            if link in link_truth:
                ls["truth"] = {
                    key: {"truth": true,
                          "final": ls["final"].get(key, ls["totals"].get(key)),
                          "mean": ls["mean"].get(key)}
                    for key, true in sorted(link_truth[link].items())
                    if num(true) is not None}  # the numbers; the rest stays in "truth"
            link_summaries[link] = ls
        nodes[node] = {
            "records": len(recs), "roles": _last_str(recs, "roles"),
            "final_state": _last_str(recs, "state"),
            "first_t": recs[0]["t"], "last_t": recs[-1]["t"],
            **_figures(recs, _NOT_FIGURES), "links": link_summaries}
        paths: dict[str, list[Mapping[str, Any]]] = {}
        for rec in recs:
            for pid, pt in mapping(rec.get("paths")).items():
                paths.setdefault(str(pid), []).append(mapping(pt))
        if paths:   # a path's ends and repeaters: pairs assembled and delivered, swaps
            nodes[node]["paths"] = {pid: {"records": len(series), **_figures(series)}
                                    for pid, series in sorted(paths.items())}
    t0, t1 = records[0]["t"], records[-1]["t"]
    return {"status": "ok", "records": len(records), "t_start": t0, "t_end": t1,
            "duration_s": t1 - t0, "nodes": nodes,
            "truth": None if truth is None else _finite(dict(truth))}


# -- the plots --------------------------------------------------------------------------------

def _latest_g2(records: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    for rec in reversed(records):
        g2 = mapping(rec.get("g2"))
        counts, bin_ps = g2.get("counts"), num(g2.get("bin_ps"))
        if (isinstance(counts, list) and counts and bin_ps and bin_ps > 0
                and all(num(c) is not None for c in counts)):
            return rec, dict(g2)
    return None


def _series(records: list[dict[str, Any]], field: str, kinds: tuple[str, ...], t0: float,
            transform: Any = None) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """(node, link) -> (times from t0 (s), values) of a link field, for link ends of
    ``kinds``."""
    out: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for rec in records:
        for link, lt in mapping(rec.get("links")).items():
            lt = mapping(lt)
            v = num(lt.get(field))
            if v is None or link_kind(lt) not in kinds:
                continue
            xs, ys = out.setdefault((rec["node"], str(link)), ([], []))
            xs.append(rec["t"] - t0)
            ys.append(transform(v) if transform else v)
    return out


_MARKERS = "os^Dv<>p"


def _plot_series(ax: Any, series: Mapping[tuple[str, str], tuple[list[float], list[float]]],
                 colors: dict[str, Any], style: str = "-", suffix: str = "") -> None:
    """One line per (node, link): the colour says the link, the marker the node."""
    nodes = sorted({node for node, _ in series})
    for (node, link), (xs, ys) in sorted(series.items()):
        color = colors.setdefault(link, f"C{len(colors) % 10}")
        ax.plot(xs, ys, style, color=color, linewidth=1.2, markersize=3,
                marker=_MARKERS[nodes.index(node) % len(_MARKERS)],
                label=f"{node}: {link}{suffix}")


def _truth_lines(ax: Any, link_truth: Mapping[str, Mapping[str, Any]], field: str,
                 colors: dict[str, Any], transform: Any = None, what: str = "",
                 style: str = "--") -> None:
    for link, values in sorted(link_truth.items()):
        v = num(values.get(field))
        if v is not None:
            ax.axhline(transform(v) if transform else v, linestyle=style, linewidth=1.0,
                       color=colors.setdefault(link, f"C{len(colors) % 10}"),
                       label=f"true {what or field}: {link}")


def _new_figure(rows: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2 * rows + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False, sharex=True)[:, 0]
    return fig, list(axes)


def _plot_g2(path: Path, rec: Mapping[str, Any], g2: Mapping[str, Any], t0: float) -> None:
    counts = [num(c) or 0.0 for c in g2["counts"]]
    bin_ps, first = float(g2["bin_ps"]), num(g2.get("first_bin_ps")) or 0.0
    edges = [(first + i * bin_ps) * 1e-3 for i in range(len(counts) + 1)]
    fig, (ax,) = _new_figure(1)
    ax.stairs(counts, edges, fill=True, alpha=0.35, color="C0")
    ax.stairs(counts, edges, color="C0", linewidth=1.0)
    ax.set_xlabel("delay (ns)")
    ax.set_ylabel(f"counts per {bin_ps:g} ps bin")
    ax.set_title(f"g2 histogram of {rec['node']} at t = {rec['t'] - t0:.1f} s")
    ax.grid(alpha=0.3)
    fig.savefig(path, format="png")


def _finish(ax: Any, title: str, ylabel: str) -> None:
    """Title, y label, grid and legend of a time-series panel."""
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")


def _plot_rates(path: Path, records: list[dict[str, Any]], t0: float,
                link_truth: Mapping[str, Mapping[str, Any]]) -> bool:
    panels = [(s, field, title) for s, field, title in (
        (_series(records, "herald_rate_hz", ("K",), t0), "herald_rate_hz",
         "K links: herald rate"),
        (_series(records, "coincidence_rate_hz", ("M",), t0), "coincidence_rate_hz",
         "M links: coincidence rate"),
    ) if s]
    if not panels:
        return False
    fig, axes = _new_figure(len(panels))
    for ax, (series, field, title) in zip(axes, panels, strict=True):
        colors: dict[str, Any] = {}
        _plot_series(ax, series, colors)
        links = {link for _, link in series}
        _truth_lines(ax, {k: v for k, v in link_truth.items() if k in links}, field, colors,
                     what="rate")
        _finish(ax, title, "rate (Hz)")
    axes[-1].set_xlabel("time (s)")
    fig.savefig(path, format="png")
    return True


def _plot_fidelity(path: Path, records: list[dict[str, Any]], t0: float,
                   link_truth: Mapping[str, Mapping[str, Any]]) -> bool:
    fid = _series(records, "fidelity_estimate", ("K", "M", "?"), t0)
    vis = _series(records, "visibility", ("M",), t0)
    qber = _series(records, "qber_z", ("M",), t0, lambda q: 1.0 - clamp_qber(q))
    rows = int(bool(fid)) + int(bool(vis or qber))
    if not rows:
        return False
    fig, axes = _new_figure(rows)
    it = iter(axes)
    colors: dict[str, Any]
    if fid:
        ax, colors = next(it), {}
        _plot_series(ax, fid, colors)
        _truth_lines(ax, link_truth, "fidelity_estimate", colors, what="fidelity")
        _finish(ax, "fidelity estimate per link end", "fidelity")
    if vis or qber:
        ax, colors = next(it), {}
        _plot_series(ax, vis, colors, "-", " visibility")
        _plot_series(ax, qber, colors, ":", " 1−QBER(Z)")
        _truth_lines(ax, link_truth, "visibility", colors, what="visibility")
        _truth_lines(ax, link_truth, "qber_z", colors, lambda q: 1.0 - q, what="1−QBER(Z)",
                     style="-.")
        _finish(ax, "M links: visibility and 1 − QBER(Z)", "fraction")
    axes[-1].set_xlabel("time (s)")
    fig.savefig(path, format="png")
    return True


def _plot_keys(path: Path, records: list[dict[str, Any]], t0: float,
               link_truth: Mapping[str, Mapping[str, Any]]) -> bool:
    rate = _series(records, "key_rate_bps", ("M",), t0, lambda r: r * 1e-3)
    if not rate:
        return False
    links = {link for _, link in rate}
    truth = {k: v for k, v in link_truth.items() if k in links}
    fig, axes = _new_figure(4)
    colors: dict[str, Any] = {}
    _plot_series(axes[0], rate, colors)
    _finish(axes[0], "M links: secret key rate", "kbit/s")
    for basis, style in (("z", "-"), ("x", "--")):
        _plot_series(axes[1], _series(records, f"qber_{basis}", ("M",), t0), colors, style,
                     f" QBER {basis.upper()}")
        _plot_series(axes[1], _series(records, f"key_sample_qber_{basis}", ("M",), t0), colors,
                     ":", f" sample QBER {basis.upper()}")
        _truth_lines(axes[1], truth, f"qber_{basis}", colors, what=f"QBER {basis.upper()}",
                     style="-.")
    axes[1].axhline(0.11, color="k", linewidth=0.8, linestyle=":", label="abort threshold")
    _finish(axes[1], "QBER: latest keyed block, and each block's sample", "QBER")
    _plot_series(axes[2], _series(records, "key_secret_fraction", ("M",), t0), colors)
    for link, values in sorted(truth.items()):
        qz, qx = num(values.get("qber_z")), num(values.get("qber_x"))
        if qz is not None and qx is not None:
            axes[2].axhline(max(asymptotic_fraction(qz, qx), 0.0), linestyle="--",
                            color=colors.setdefault(link, f"C{len(colors) % 10}"),
                            label=f"1 − h(Q_Z) − h(Q_X) of the true QBERs: {link}")
    _finish(axes[2], "secret bits per sifted bit", "fraction")
    _plot_series(axes[3], _series(records, "key_f_ec", ("M",), t0), colors)
    axes[3].axhline(1.0, color="k", linewidth=0.8, linestyle="--", label="Shannon limit")
    _finish(axes[3], "error-correction efficiency f_EC", "f_EC")
    axes[-1].set_xlabel("time (s)")
    fig.savefig(path, format="png")
    return True


# -- the report -------------------------------------------------------------------------------

#: The summary's own top-level keys (``summary_extra`` may not replace them).
SUMMARY_KEYS = frozenset({"status", "records", "skipped_lines", "reason", "t_start", "t_end",
                          "duration_s", "nodes", "truth", "g2", "files", "plots_skipped",
                          "extra"})


def _merge_extra(summary: dict[str, Any], extra: Mapping[str, Any] | None) -> None:
    """Top-level keys from ``extra``; one the report uses itself goes to ``summary["extra"]``
    instead, so neither value is lost."""
    for key, value in (extra or {}).items():
        if key in SUMMARY_KEYS:
            summary.setdefault("extra", {})[key] = _finite(value)
        else:
            summary[key] = _finite(value)


def _write_summary(report_dir: Path, summary: dict[str, Any]) -> None:
    tmp = report_dir / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n",
                   encoding="utf-8")
    tmp.replace(report_dir / SUMMARY)


def write_report(report_dir: str | os.PathLike[str], *, truth: dict[str, Any] | None = None,
                 summary_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Plots and ``summary.json`` from ``<report_dir>/telemetry.jsonl``; returns the summary.

    FileNotFoundError if nothing was ever recorded there. A file without a usable record gives
    a summary with ``"status": "no_data"`` (and no plots). ``summary_extra`` adds top-level
    keys (one that the report uses itself, see :data:`SUMMARY_KEYS`, lands in
    ``summary["extra"]`` instead). RuntimeError if matplotlib is missing.
    """
    report_dir = Path(report_dir)
    jsonl = report_dir / JSONL
    if not jsonl.exists():
        raise FileNotFoundError(f"{jsonl}: no telemetry was recorded (no such file)")
    records, skipped = read_records(jsonl)
    if not records:
        summary: dict[str, Any] = {
            "status": "no_data", "records": 0, "skipped_lines": skipped,
            "reason": f"{JSONL} holds no telemetry record", "nodes": {},
            "truth": None if truth is None else _finite(dict(truth)),
            "files": [JSONL, SUMMARY]}
        _merge_extra(summary, summary_extra)
        _write_summary(report_dir, summary)
        return summary
    try:
        import matplotlib  # noqa: F401 - the optional "demo" extra
    except ImportError as exc:
        raise RuntimeError("the report's plots need matplotlib (pip install 'qnode[demo]')"
                           ) from exc

    summary = summarize(records, truth)
    summary["skipped_lines"] = skipped
    t0 = records[0]["t"]
    written, skipped_plots = [JSONL], {}
    latest = _latest_g2(records)
    if latest is not None:
        rec, g2 = latest
        _plot_g2(report_dir / G2_PNG, rec, g2, t0)
        counts = [num(c) or 0.0 for c in g2["counts"]]
        peak = max(range(len(counts)), key=counts.__getitem__)
        summary["g2"] = {"node": rec["node"], "t": rec["t"], "bins": len(counts),
                         "bin_ps": g2["bin_ps"], "peak_counts": counts[peak],
                         "peak_delay_ns": ((num(g2.get("first_bin_ps")) or 0.0)
                                           + (peak + 0.5) * float(g2["bin_ps"])) * 1e-3}
        written.append(G2_PNG)
    else:
        skipped_plots[G2_PNG] = "no node reported a g2 histogram"
    if _plot_rates(report_dir / RATES_PNG, records, t0, _link_truth(truth)):
        written.append(RATES_PNG)
    else:
        skipped_plots[RATES_PNG] = "no link reported herald_rate_hz or coincidence_rate_hz"
    if _plot_fidelity(report_dir / FIDELITY_PNG, records, t0, _link_truth(truth)):
        written.append(FIDELITY_PNG)
    else:
        skipped_plots[FIDELITY_PNG] = "no link reported fidelity_estimate, visibility or qber_z"
    if _plot_keys(report_dir / KEYS_PNG, records, t0, _link_truth(truth)):
        written.append(KEYS_PNG)
    else:
        skipped_plots[KEYS_PNG] = "no M link made keys (key_rate_bps)"
    summary["files"] = [*written, SUMMARY]
    summary["plots_skipped"] = skipped_plots
    _merge_extra(summary, summary_extra)
    summary = _finite(summary)
    _write_summary(report_dir, summary)
    return summary
