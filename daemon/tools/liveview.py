"""The demo's live terminal view of a network's telemetry, and the formatting it shares with
``qnode status`` (:mod:`qnode.daemon.tools.status`).

:func:`render` is a pure function: the latest :class:`~qnode.daemon.bus.telemetry.Telemetry` record
of each node in, a compact table out: one row per node (state, uptime, ingest rate, dropped
tags, memory use, age of the record, roles) and under it one row per link end (type, peer, rate,
heralds, pairs live and delivered, fidelity estimate, QBER Z/X, visibility, CHSH S, clock
offset). :class:`LiveView` redraws that table in place with ANSI escape codes when its stream
is a terminal, and otherwise (CI logs, a pipe) prints a one-line summary every
``summary_every_s`` seconds.

The ``fmt_*`` helpers and :func:`link_table` are the shared vocabulary: a missing, ``None`` or
non-finite figure prints as ``-``, never as an error. QBERs print inside their physical range
[0, 1] (:func:`~qnode.daemon.bus.telemetry.link_qber`: a record's unclamped value is clamped for
display; ``qber_<b>_raw`` keeps it in the telemetry).
"""
from __future__ import annotations

import asyncio
import math
import numbers
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from qnode.daemon.bus.telemetry import LinkTelemetry, link_qber

MISSING = "-"
_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"),
       (1e-9, "n"), (1e-12, "p"))


# -- numbers ----------------------------------------------------------------------------------

def num(value: object) -> float | None:
    """``value`` as a finite float, or None (missing, not a number, a bool, NaN or inf); numpy
    scalars are numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def mapping(value: object) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one (telemetry from the wire may be odd)."""
    return value if isinstance(value, Mapping) else {}


def fmt_si(value: object, unit: str, digits: int = 3) -> str:
    """``value`` (in base units) with an SI prefix: ``fmt_si(1234, "Hz") == "1.23 kHz"``."""
    v = num(value)
    if v is None:
        return MISSING
    if v == 0:
        return f"0 {unit}".rstrip()
    scale, prefix = next(((s, p) for s, p in _SI if abs(v) >= s * 0.9995), _SI[-1])
    scaled = v / scale
    magnitude = max(0, int(math.floor(math.log10(abs(scaled)))))  # 0.9995.. rounds up to 1
    decimals = max(0, digits - 1 - magnitude)
    return f"{scaled:.{decimals}f} {prefix}{unit}".rstrip()


def fmt_count(value: object) -> str:
    """A count: ``987``, ``4311``, ``12.3k``, ``4.56M``."""
    v = num(value)
    if v is None:
        return MISSING
    if abs(v) < 10_000:
        return f"{v:.0f}"
    return fmt_si(v, "", 3).replace(" ", "")


def fmt_ratio(value: object, decimals: int = 3) -> str:
    """A dimensionless figure (fidelity, visibility, S): ``0.912``."""
    v = num(value)
    return MISSING if v is None else f"{v:.{decimals}f}"


def fmt_pct(value: object, decimals: int = 1) -> str:
    """A fraction as a percentage: ``fmt_pct(0.0213) == "2.1%"``."""
    v = num(value)
    return MISSING if v is None else f"{100 * v:.{decimals}f}%"


def fmt_duration(seconds: object) -> str:
    """A duration or age (s): ``0.4 s``, ``12 s``, ``4m05s``, ``1h02m``, ``3d04h``."""
    v = num(seconds)
    if v is None:
        return MISSING
    sign, v = ("-" if v < 0 else ""), abs(v)
    if v < 10:
        text = f"{v:.1f} s"
    elif v < 60:
        text = f"{v:.0f} s"
    elif v < 3600:
        text = f"{int(v // 60)}m{int(v % 60):02d}s"
    elif v < 86400:
        text = f"{int(v // 3600)}h{int(v % 3600 // 60):02d}m"
    else:
        text = f"{int(v // 86400)}d{int(v % 86400 // 3600):02d}h"
    return sign + text


def fmt_offset_ps(ps: object) -> str:
    """A signed time offset given in ps: ``+1.23 ns``."""
    v = num(ps)
    if v is None:
        return MISSING
    return ("+" if v >= 0 else "-") + fmt_si(abs(v) * 1e-12, "s")


def fmt_fill(used: object, capacity: object) -> str:
    """``used/capacity`` (``12/1000``), or just ``used``."""
    if num(used) is None:
        return MISSING
    cap = num(capacity)
    return fmt_count(used) + ("" if cap is None else f"/{fmt_count(cap)}")


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def _row(cells: Iterable[tuple[str, int]]) -> str:
    """Cells left-aligned in fixed widths (cut to fit), one space apart."""
    return " ".join(fit(text, w).ljust(w) for text, w in cells).rstrip()


# -- telemetry figures ------------------------------------------------------------------------

def link_kind(lt: Mapping[str, Any]) -> str:
    """``K`` or ``M`` (from ``type``, else guessed from the fields present), or ``?``."""
    kind = lt.get("type")
    if kind in ("K", "M"):
        return str(kind)
    if "coincidence_rate_hz" in lt:
        return "M"
    if "herald_rate_hz" in lt:
        return "K"
    return "?"


def link_rate_hz(lt: Mapping[str, Any]) -> float | None:
    """The link's headline rate (1/s): herald rate (K) or coincidence rate (M)."""
    first, second = (("coincidence_rate_hz", "herald_rate_hz") if link_kind(lt) == "M"
                     else ("herald_rate_hz", "coincidence_rate_hz"))
    value = num(lt.get(first))
    return value if value is not None else num(lt.get(second))


def node_state(record: Mapping[str, Any]) -> str:
    state = record.get("state")
    return state if isinstance(state, str) else "unknown"


def roles_text(roles: object) -> str:
    if not isinstance(roles, list):
        return MISSING
    return ", ".join(str(r) for r in roles) or MISSING


def record_age_s(record: Mapping[str, Any], now: float) -> float | None:
    """Seconds since the record was built (by the node's wall clock), or None."""
    t = num(record.get("t"))
    return None if t is None else now - t


_LINK_COLUMNS = (("LINK", 14), ("T", 1), ("PEER", 8), ("RATE", 9), ("HERALDS", 7), ("LIVE", 6),
                 ("DELIV", 7), ("F", 5), ("QBER Z/X", 11), ("V", 5), ("S", 5), ("OFFSET", 9))


def link_cells(name: str, lt: Mapping[str, Any]) -> list[str]:
    """The figures of one link end, in the order of :data:`_LINK_COLUMNS`."""
    qz, qx = (fmt_pct(link_qber(lt, b).value) for b in ("z", "x"))  # clamped to [0, 1]
    qber = MISSING if qz == qx == MISSING else f"{qz}/{qx}"
    peer = lt.get("peer")
    return [name, link_kind(lt), peer if isinstance(peer, str) else MISSING,
            fmt_si(link_rate_hz(lt), "Hz"), fmt_count(lt.get("heralds_total")),
            fmt_count(lt.get("pairs_live")), fmt_count(lt.get("pairs_delivered_total")),
            fmt_ratio(lt.get("fidelity_estimate")), qber, fmt_ratio(lt.get("visibility")),
            fmt_ratio(lt.get("chsh_s"), 2), fmt_offset_ps(lt.get("offset_ps"))]


def link_header(indent: str = "  ") -> str:
    return indent + _row(_LINK_COLUMNS)


def link_table(links: Mapping[str, LinkTelemetry] | object, indent: str = "  ", *,
               header: bool = True) -> list[str]:
    """Lines of the link table (header first unless ``header=False``); none without links."""
    links = mapping(links)
    if not links:
        return []
    rows = [indent + _row(zip(link_cells(str(name), mapping(lt)),
                              (w for _, w in _LINK_COLUMNS), strict=True))
            for name, lt in sorted(links.items())]
    return ([link_header(indent)] if header else []) + rows


# -- the table --------------------------------------------------------------------------------

_NODE_COLUMNS = (("NODE", 12), ("STATE", 9), ("UP", 6), ("INGEST", 10), ("DROPS", 6),
                 ("MEMORY", 11), ("AGE", 6), ("ROLES", 30))


def node_cells(record: Mapping[str, Any], now: float) -> list[str]:
    """One node's row, in the order of :data:`_NODE_COLUMNS`."""
    ingest = num(record.get("ingest_mtags_s"))
    node = record.get("node")
    return [node if isinstance(node, str) else MISSING, node_state(record),
            fmt_duration(record.get("uptime_s")),
            MISSING if ingest is None else fmt_si(ingest * 1e6, "t/s"),
            fmt_count(record.get("dropped_tags_total")),
            fmt_fill(record.get("memory_used"), record.get("memory_capacity")),
            fmt_duration(record_age_s(record, now)), roles_text(record.get("roles"))]


def render(views: Mapping[str, Mapping[str, Any]], *, width: int = 100, now: float | None = None,
           note: str = "") -> str:
    """The table of the latest record per node (``now``: wall clock for record ages, s;
    ``note``: appended to the title line, e.g. the time left)."""
    now = time.time() if now is None else now
    states: dict[str, int] = {}
    for record in views.values():
        states[node_state(record)] = states.get(node_state(record), 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    lines = [f"qnode · {len(views)} node{'s' if len(views) != 1 else ''}"
             + (f" · {counts}" if counts else "") + f" · {clock}"
             + (f" · {note}" if note else ""),
             _row(_NODE_COLUMNS), link_header(), "─" * width]
    for name in sorted(views):
        row = {**mapping(views[name]), "node": name}
        lines.append(_row(zip(node_cells(row, now), (w for _, w in _NODE_COLUMNS),
                              strict=True)))
        lines.extend(link_table(row.get("links"), header=False))
    if not views:
        lines.append("(no telemetry yet)")
    return "\n".join(fit(line, width) for line in lines)


def summary_line(views: Mapping[str, Mapping[str, Any]], elapsed_s: float | None = None,
                 note: str = "") -> str:
    """One line for logs: nodes by state, heralds, pairs delivered, mean fidelity, ingest, drops
    (summed over the nodes' link ends; ``elapsed_s`` since the view started; ``note`` last)."""
    states: dict[str, int] = {}
    heralds = delivered = dropped = ingest = 0.0
    fidelities: list[float] = []
    for view in views.values():
        record = mapping(view)
        states[node_state(record)] = states.get(node_state(record), 0) + 1
        dropped += num(record.get("dropped_tags_total")) or 0.0
        ingest += num(record.get("ingest_mtags_s")) or 0.0
        for lt in mapping(record.get("links")).values():
            lt = mapping(lt)
            heralds += num(lt.get("heralds_total")) or 0.0
            delivered += num(lt.get("pairs_delivered_total")) or 0.0
            f = num(lt.get("fidelity_estimate"))
            if f is not None:
                fidelities.append(f)
    mean_f = sum(fidelities) / len(fidelities) if fidelities else None
    head = "" if elapsed_s is None else f"[{fmt_duration(elapsed_s):>6}] "
    by_state = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
    return (f"{head}nodes {len(views)} ({by_state}) | heralds {fmt_count(heralds)} | "
            f"delivered {fmt_count(delivered)} | F {fmt_ratio(mean_f)} | "
            f"ingest {fmt_si(ingest * 1e6, 't/s')} | dropped {fmt_count(dropped)}"
            + (f" | {note}" if note else ""))


# -- the live view ----------------------------------------------------------------------------

class LiveView:
    """Keeps the latest record per node and shows it on ``stream`` (default: stdout).

    On a terminal each :meth:`tick` redraws the table in place (cursor up, clear to the end of
    the screen; lines cut to the terminal's width so nothing wraps; anything else written to
    the terminal meanwhile scrolls the table instead). Elsewhere a tick prints
    :func:`summary_line` if ``summary_every_s`` (s) passed since the last one. :meth:`run`
    ticks every ``refresh_s`` (s) until cancelled; :meth:`close` shows the final state.

    Two ways to feed it: ``update(record)`` per record (draw with :meth:`tick` or :meth:`run`),
    or ``update(latest, remaining_s=...)`` with the latest record of every node, which also
    ticks (a caller that polls once a second needs nothing else).
    """

    CLEAR_BELOW = "\x1b[J"

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None,
                 refresh_s: float = 0.5, summary_every_s: float = 10.0,
                 width: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty()) if tty is None else tty
        self.refresh_s = refresh_s
        self.summary_every_s = summary_every_s
        self.width = width
        self.clock = clock
        self.views: dict[str, Mapping[str, Any]] = {}  # as received: not validated
        self._started = clock()
        self._last_summary: float | None = None
        self._drawn_lines = 0
        self.note = ""

    def update(self, record: Mapping[str, Any], *,
               remaining_s: float | None = None) -> None:
        """Remember ``record`` as its node's latest (records without a node are ignored); or,
        given a mapping node -> record, take all of them and :meth:`tick`. ``remaining_s``:
        the run's time left (s), shown in the title."""
        if remaining_s is not None:
            self.note = f"{fmt_duration(max(0.0, remaining_s))} left"
        node = record.get("node") if isinstance(record, Mapping) else None
        if isinstance(node, str):
            self.views[node] = record
            return
        for name, rec in mapping(record).items():
            if isinstance(rec, Mapping):
                self.views[str(name)] = rec
        self.tick()

    def _size(self) -> tuple[int, int]:
        size = shutil.get_terminal_size((100, 40))
        return (self.width or size.columns - 1), size.lines - 1

    def redraw(self) -> None:
        """Draw the table over the previous one (terminal mode)."""
        width, rows = self._size()
        lines = render(self.views, width=width, note=self.note).split("\n")[:max(1, rows)]
        up = f"\x1b[{self._drawn_lines}F" if self._drawn_lines else ""
        self.stream.write(up + self.CLEAR_BELOW + "\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn_lines = len(lines)

    def summary(self) -> None:
        """Print one summary line (log mode)."""
        self.stream.write(summary_line(self.views, self.clock() - self._started, self.note)
                          + "\n")
        self.stream.flush()
        self._last_summary = self.clock()

    def tick(self) -> None:
        if self.tty:
            self.redraw()
        elif (self._last_summary is None
              or self.clock() - self._last_summary >= self.summary_every_s):
            self.summary()

    async def run(self) -> None:
        """Tick every ``refresh_s`` until cancelled."""
        while True:
            self.tick()
            await asyncio.sleep(self.refresh_s)

    def close(self) -> None:
        """The final frame (terminal) or the final summary line."""
        if self.tty:
            self.redraw()
        else:
            self.summary()
