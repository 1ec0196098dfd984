"""A Bell test (CHSH) over the network's M link, from its counter's coincidences.

The M link analyzer-a – analyzer-b carries polarisation-entangled photon pairs (Φ+) from an SPDC
source. Each end is a passive basis choice: a 50:50 beam splitter into two arms, each a
half-wave plate (HWP) before a polarising beam splitter with two detectors. A HWP at θ makes
outcome 0 the linear polarisation at 2θ, Bloch angle 4θ in the Z–X plane. With
``qnode demo --serve --m-link bell``, analyzer-a's arms are at HWP 0° and 22.5° (Bloch a = 0,
a′ = π/2) and analyzer-b's at ±11.25° (b = π/4, b′ = −π/4): the CHSH settings, where a Werner
state of visibility V gives E(α, β) = V·cos(α − β) and

    S = |E(a,b) + E(a,b′) + E(a′,b) − E(a′,b′)| = 2√2·V

(J. F. Clauser, M. A. Horne, A. Shimony, R. A. Holt, PRL 23, 880 (1969); local bound 2,
Tsirelson's bound 2√2). Which arm a photon takes is the beam splitter's random choice, so every
coincidence between the two ends counts for one of the four setting pairs.

The link's counter (the end whose id sorts first) counts the coincidences of every setting and
outcome pair within its window and, in a window displaced by 20 ns, the accidental ones (two
photons of different pairs, or a dark count). Its telemetry carries S two ways:

* ``chsh_s``: each correlation from the coincidences minus the accidentals (what the source's
  state gives);
* ``chsh_s_raw``: from the raw coincidences (what a test with no subtraction at all claims:
  the accidentals are uncorrelated and pull S towards 0).

Each ± σ from counting statistics, σ_S² = Σ (1 − E²)/N over the four settings. The counts add up
from the counter's start (a polarisation recalibration restarts them), so σ shrinks as the run
goes on: the program reads the counter's telemetry until σ ≤ ``--sigma`` and reports S beside
the local bound 2, beside 2√2·V (V: ``--visibility``, e.g. measured beforehand with the key
settings; against the simulator, its source's V) and, when the connection file names the
simulator's truth file, beside the simulator's S of the state at the analyzers as set now.

Run it against ``qnode demo --serve --m-link bell``::

    python examples/bell_test.py --connection qnode-demo.json

The last line printed is a JSON report.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from node_telemetry import telemetry

from qnode.client.connection import ConnectionInfo

LINK = "m-ab"
COUNTER = "analyzer-a"
TSIRELSON = 2 * math.sqrt(2)


@dataclass
class Report:
    s: float                     # CHSH S, accidentals subtracted
    sigma: float                 # its standard error
    s_raw: float                 # CHSH S of the raw coincidences
    sigma_raw: float
    coincidence_rate_hz: float
    accidental_rate_hz: float
    above_local_sigma: float     # (S − 2)/σ
    visibility: float | None     # V of the prediction 2√2·V
    visibility_from: str | None  # "argument" | "simulator"
    predicted: float | None      # 2√2·V
    z_predicted: float | None    # (S − 2√2·V)/σ
    truth: float | None          # the simulator's S of the state at the analyzers
    z_truth: float | None        # (S − truth)/σ
    records: int                 # telemetry records read
    seconds: float

    def lines(self) -> list[str]:
        out = [f"Bell test over {LINK}: {self.records} telemetry records of {COUNTER} in "
               f"{self.seconds:.1f} s",
               f"  S (accidentals subtracted)  {self.s:.4f} ± {self.sigma:.4f}  "
               f"({self.above_local_sigma:+.1f} σ above the local bound 2)",
               f"  S (raw coincidences)        {self.s_raw:.4f} ± {self.sigma_raw:.4f}  "
               f"(accidentals {self.accidental_rate_hz:.0f} Hz of "
               f"{self.coincidence_rate_hz:.0f} Hz)"]
        if self.predicted is not None and self.z_predicted is not None:
            out.append(f"  2√2·V                       {self.predicted:.4f}  (V = "
                       f"{self.visibility:.4f} from the {self.visibility_from}; "
                       f"{self.z_predicted:+.2f} σ)")
        if self.truth is not None and self.z_truth is not None:
            out.append(f"  simulator's truth           {self.truth:.4f}  ({self.z_truth:+.2f} σ)")
        return out


class BadRecord(ValueError):
    """A telemetry message that is not what a counter publishes."""


def link_figures(payload: bytes, link: str = LINK) -> dict[str, Any] | None:
    """The link's part of a telemetry message, or None while it has no CHSH figures yet.
    :class:`BadRecord` for a message that is not a telemetry envelope."""
    try:
        msg = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRecord(f"not JSON: {exc}") from None
    body = msg.get("body") if isinstance(msg, dict) else None
    links = body.get("links") if isinstance(body, dict) else None
    if not isinstance(links, dict):
        raise BadRecord("no body.links")
    t = links.get(link)
    if not isinstance(t, dict):
        return None
    keys = ("chsh_s", "chsh_s_err", "chsh_s_raw", "chsh_s_raw_err")
    if not all(isinstance(t.get(k), int | float) for k in keys):
        return None
    return t


def m_link_truth(truth_file: str | None, link: str = LINK) -> tuple[float, float] | None:
    """(S, V) of ``link`` in the bench's truth file, or None."""
    if not truth_file:
        return None
    try:
        t = json.loads(Path(truth_file).read_text())["links"][link]
        return float(t["chsh_s"]), float(t["visibility"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def read_chsh(info: ConnectionInfo, *, sigma: float, timeout_s: float,
                    application: str | None = None) -> tuple[dict[str, Any], int, float]:
    """The counter's telemetry until its ``chsh_s_err`` ≤ ``sigma``: (the link's figures,
    records read, seconds). Every client may read telemetry (the shipped ACL)."""
    started = time.monotonic()
    records = bad = 0
    last: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(timeout_s):
            async with contextlib.aclosing(telemetry(info, COUNTER,
                                                     application=application)) as payloads:
                async for payload in payloads:
                    try:
                        t = link_figures(payload)
                    except BadRecord as exc:
                        bad += 1
                        print(f"skipped a telemetry message: {exc}", file=sys.stderr)
                        continue
                    records += 1
                    if t is None:
                        continue
                    last = t
                    print(f"  S = {t['chsh_s']:.4f} ± {t['chsh_s_err']:.4f}", file=sys.stderr)
                    if t["chsh_s_err"] <= sigma:
                        break
    except TimeoutError:
        if last is None:
            raise RuntimeError(f"no CHSH figures from {COUNTER} in {timeout_s:.0f} s "
                               f"({records} records, {bad} unreadable): are its settings "
                               f"a Bell test's (qnode demo --serve --m-link bell)?") from None
        print(f"σ ≤ {sigma} not reached in {timeout_s:.0f} s: reporting the last record",
              file=sys.stderr)
    assert last is not None
    return last, records, time.monotonic() - started


def report(t: dict[str, Any], records: int, seconds: float, *, visibility: float | None,
           truth: tuple[float, float] | None) -> Report:
    s, sigma = float(t["chsh_s"]), float(t["chsh_s_err"])
    v, v_from = (visibility, "argument") if visibility is not None else (
        (truth[1], "simulator") if truth is not None else (None, None))
    predicted = None if v is None else TSIRELSON * v
    return Report(s, sigma, float(t["chsh_s_raw"]), float(t["chsh_s_raw_err"]),
                  float(t.get("coincidence_rate_hz") or 0.0),
                  float(t.get("accidental_rate_hz") or 0.0), (s - 2) / sigma, v, v_from,
                  predicted, None if predicted is None else (s - predicted) / sigma,
                  None if truth is None else truth[0],
                  None if truth is None else (s - truth[0]) / sigma, records, seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connection", default="qnode-demo.json",
                   help="the connection file of qnode demo --serve --m-link bell")
    p.add_argument("--application", default=None,
                   help="connect with this application's credentials (default: none)")
    p.add_argument("--sigma", type=float, default=0.01, help="stop once σ_S ≤ this")
    p.add_argument("--visibility", type=float, default=None,
                   help="the source's visibility V for 2√2·V (default: the simulator's)")
    p.add_argument("--timeout-s", type=float, default=120.0)
    args = p.parse_args(argv)
    info = ConnectionInfo.load(args.connection)
    with open(args.connection, encoding="utf-8") as f:
        sim = json.load(f).get("simulator")
    truth_file = sim.get("truth_file") if isinstance(sim, dict) else None
    t, records, seconds = asyncio.run(read_chsh(info, sigma=args.sigma,
                                                timeout_s=args.timeout_s,
                                                application=args.application))
    r = report(t, records, seconds, visibility=args.visibility,
               truth=m_link_truth(truth_file))
    print("\n".join(r.lines()))
    print(json.dumps(asdict(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
