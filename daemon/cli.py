"""The ``qnode`` command line."""
from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("qnode")
    except metadata.PackageNotFoundError:
        return "unknown"


def _cmd_info(args: argparse.Namespace) -> int:
    """Print what this installation has: version, and whether the native core is built."""
    from qnode.native import native_available, native_error

    print(f"qnode {_version()}")
    if native_available():
        print("native core: built")
        return 0
    print(f"native core: MISSING ({native_error()})")
    return 1


def _cmd_run(args: argparse.Namespace) -> int:
    """Run one node from its config until SIGTERM/SIGINT (the systemd unit's ExecStart)."""
    import asyncio
    import logging

    from qnode.daemon.logs import setup_logging
    from qnode.daemon.runtime.config import ConfigError, load_config, prepare_state_dir

    setup_logging(args.log_level)
    try:
        config = load_config(args.config)
        prepare_state_dir(config)
    except ConfigError as exc:
        print(f"qnode: config error: {exc}", file=sys.stderr)
        return 2
    from qnode.daemon.node import Node

    node = Node(config, ready_timeout_s=args.ready_timeout, freeze_gc=True)
    if config.metrics.prometheus_port:
        from qnode.daemon.tools.metrics import PrometheusExporter

        exporter = PrometheusExporter(config.metrics.prometheus_port)
        exporter.start()
        node.telemetry_listeners.append(exporter.update)
    try:
        asyncio.run(node.run())
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the log has the traceback; systemd restarts on failure
        logging.getLogger("qnode.node").exception("node failed: %s", exc)
        print(f"qnode: {config.id}: {exc}", file=sys.stderr)
        return 1
    if node.failed:
        print(f"qnode: {config.id}: {node.failed}", file=sys.stderr)
        return 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from qnode.daemon.tools.status import main as status_main

    return status_main(args)


def _cmd_keygen(args: argparse.Namespace) -> int:
    """Make a node's identity key pair: ``<dir>/<node>.key`` (0600) and ``<dir>/<node>.pub``."""
    from qnode.daemon.bus.identity import IdentityError, keygen

    try:
        private, public = keygen(args.node, args.dir)
    except (IdentityError, OSError) as exc:
        print(f"qnode keygen: {exc}", file=sys.stderr)
        return 1
    print(f"private key {private} (keep it on {args.node} only: node.identity_key_file)\n"
          f"public key  {public} (copy it into every node's node.trust_dir)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from qnode.daemon.tools.demo import main as demo_main

    return demo_main(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    """Serve a simulated bench until SIGTERM/SIGINT: this process becomes
    ``python -m qnode.hal_sim bench`` (exec, so the pid and signals stay the caller's). The
    daemon never imports the simulator; it is a program of its own."""
    argv = [sys.executable, "-m", "qnode.hal_sim", "bench", "--config", args.config]
    if args.json:
        argv.append("--json")
    if args.truth:
        argv += ["--truth", args.truth]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qnode", description="photonic quantum-network node")
    parser.add_argument("--version", action="version", version=f"qnode {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="show the installation: version, native core")
    info.set_defaults(func=_cmd_info)

    run = sub.add_parser("run", help="run a node from its config file (systemd: qnode@<node>)")
    run.add_argument("--config", required=True, help="the node's TOML config")
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    run.add_argument("--ready-timeout", type=float, default=None, metavar="S",
                     help="fail if instruments are not up within S seconds (default: wait)")
    run.set_defaults(func=_cmd_run)

    from qnode.daemon.tools.status import add_arguments as status_arguments

    status = sub.add_parser("status", help="show a network's nodes as seen over MQTT")
    status_arguments(status)
    status.set_defaults(func=_cmd_status)

    keygen = sub.add_parser("keygen", help="make a node's Ed25519 identity key pair")
    keygen.add_argument("node", help="the node id")
    keygen.add_argument("--dir", default=".", help="where to write <node>.key and <node>.pub")
    keygen.set_defaults(func=_cmd_keygen)

    bench = sub.add_parser("bench", help="serve simulated instruments (hal_sim) from a bench file")
    bench.add_argument("--config", required=True, help="bench TOML, e.g. hal_sim/benches/*.toml")
    bench.add_argument("--json", action="store_true", help="print the addresses as JSON")
    bench.add_argument("--truth", metavar="FILE", help="keep the ground truth in this JSON file")
    bench.set_defaults(func=_cmd_bench)

    demo = sub.add_parser("demo", help="a whole simulated network with a live view and a report")
    demo.add_argument("--duration", type=float, default=60.0, metavar="S")
    demo.add_argument("--report", default="qnode-demo-report", metavar="DIR")
    demo.add_argument("--broker", default=None,
                      help="mqtt://host:port of a broker to use instead of the embedded one")
    demo.add_argument("--keep", action="store_true", help="keep the generated configs")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
