"""``python -m qnode.hal_sim``: run simulated instruments for a test bench or a demo.

    python -m qnode.hal_sim bench --config bench.toml [--json] [--truth truth.json]

starts every instrument in the file on a real pty or loopback TCP port, prints where each one
is (what a node config names in a lab), then a line ``ready``, and serves until Ctrl-C/SIGTERM.
With ``--truth`` the links' ground truth is written to that file as JSON every second and at
stop (see :mod:`qnode.hal_sim.bench`, which also describes the file).
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from . import bench as bench_mod

#: The bench's simulators are CPU-bound threads; instrument servers answer from other threads.
#: A 1 ms GIL switch interval (Python's default is 5 ms) keeps a reply from waiting up to 5 ms
#: behind a simulator step for each command.
SWITCH_INTERVAL_S = 0.001


def _cmd_bench(args: argparse.Namespace) -> int:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        bench = bench_mod.Bench.from_file(args.config, truth_path=args.truth)
    except bench_mod.BenchConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with bench:
        rows = bench.describe()
        print(bench_mod.format_json(rows) if args.json else bench_mod.format_table(rows))
        print("ready", flush=True)
        stop.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qnode.hal_sim",
                                     description="simulated instruments for qnode")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="serve the simulated instruments of a bench file")
    b.add_argument("--config", required=True, help="bench TOML file")
    b.add_argument("--json", action="store_true", help="print the addresses as JSON")
    b.add_argument("--truth", metavar="FILE",
                   help="write the links' ground truth here (JSON, every second and at stop)")
    b.set_defaults(func=_cmd_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
