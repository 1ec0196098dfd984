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
    except ConfigError as exc:   # found at start-up: the key store of [kme]
        print(f"qnode: config error: {exc}", file=sys.stderr)
        return 2
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


def _cmd_request(args: argparse.Namespace) -> int:
    """Ask a node for pairs as an application; one JSON line per event (qnode.client.cli)."""
    from qnode.client.cli import request_main  # the client, only when asked for

    return request_main(args)


def _cmd_listen(args: argparse.Namespace) -> int:
    """Receive the pairs requested on a purpose as an application (qnode.client.cli)."""
    from qnode.client.cli import listen_main

    return listen_main(args)


def _cmd_bridge_config(args: argparse.Namespace) -> int:
    from qnode.daemon.tools.bridges import run

    return run(args)


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``qnode request`` and ``qnode listen`` share: where the network is and who
    the application is (declared here so that the parser never imports the client)."""
    parser.add_argument("--connection", metavar="FILE",
                        help="a connection file (default ./qnode-demo.json, as written by "
                             "`qnode demo --serve`)")
    parser.add_argument("--app", required=True, metavar="NAME", help="the application's name")
    parser.add_argument("--node", help="the node to talk to (default: the application's node "
                                       "in the connection file)")
    parser.add_argument("--broker", help="mqtt://host[:port] or mqtts://...: instead of a "
                                         "connection file (with --network and --node)")
    parser.add_argument("--network", help="with --broker: the network's name")
    parser.add_argument("--username", help="with --broker: MQTT user name (password from "
                                           "$QNODE_MQTT_PASSWORD)")
    parser.add_argument("--ca-file", help="with --broker mqtts://: the CA certificate")
    parser.add_argument("--client-cert", help="with --broker mqtts://: client certificate")
    parser.add_argument("--client-key", help="with --broker mqtts://: client key")
    parser.add_argument("--reply-timeout", type=float, default=10.0, metavar="S",
                        help="how long the node may stay silent (default 10 s)")


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
    demo.add_argument("--duration", type=float, default=None, metavar="S",
                      help="run this long (default 60 s; with --serve: until interrupted)")
    demo.add_argument("--report", default="qnode-demo-report", metavar="DIR",
                      help="the report (with --serve: the daemons' logs only)")
    demo.add_argument("--broker", default=None,
                      help="mqtt://host:port of a broker to use instead of the embedded one")
    demo.add_argument("--keep", action="store_true",
                      help="keep the generated configs (their keys and ports are gone once the "
                           "demo ends: to connect to the network, use --serve)")
    demo.add_argument("--serve", action="store_true",
                      help="serve the network with applications until SIGINT/SIGTERM and write "
                           "a connection file for `qnode request`/`listen` and qnode.client")
    demo.add_argument("--connection", default="qnode-demo.json", metavar="FILE",
                      help="with --serve: the connection file (default ./qnode-demo.json)")
    demo.add_argument("--topology", metavar="FILE",
                      help="run this network instead of the demo's: a chain of repeaters "
                           "(examples/topologies/*.toml)")
    demo.add_argument("--m-link", default="key", choices=("key", "bell"),
                      help="with --serve: the M link's analyzer settings: key (Z and X at both "
                           "ends, default) or bell (CHSH settings at analyzer-b: a Bell test)")
    demo.set_defaults(func=_cmd_demo)

    bridge = sub.add_parser("bridge-config", help="plan the mosquitto bridges of a network "
                                                  "spread over sites (docs/operators/"
                                                  "bridged-sites.md)")
    bridge.add_argument("--sites", required=True, help="the sites file (TOML)")
    bridge.add_argument("--configs", required=True, nargs="+", metavar="FILE",
                        help="every node's config file")
    bridge.add_argument("--out", default=".", help="where to write the files (default .)")
    bridge.set_defaults(func=_cmd_bridge_config)

    request = sub.add_parser("request", help="ask a node for entangled pairs as an application "
                                             "(JSON lines)")
    _client_arguments(request)
    request.add_argument("--remote", required=True, help="the node at the other end")
    request.add_argument("--pairs", type=int, required=True, help="how many pairs")
    request.add_argument("--min-fidelity", type=float, default=0.0, metavar="F",
                         help="the least fidelity at delivery, 0-1 (default 0)")
    request.add_argument("--timeout-s", type=float, default=10.0, metavar="S",
                         help="the request's deadline (default 10 s)")
    request.add_argument("--purpose", type=int, default=0,
                         help="the purpose id the far end's application listens on (default 0)")
    request.add_argument("--priority", type=int, default=4, help="0 (first) to 7 (default 4)")
    request.add_argument("--kind", choices=("keep", "measure"), default="keep")
    request.add_argument("--request-id", help="default: generated")
    request.set_defaults(func=_cmd_request)

    listen = sub.add_parser("listen", help="receive the pairs requested on a purpose, as an "
                                           "application (JSON lines)")
    _client_arguments(listen)
    listen.add_argument("--purpose", type=int, required=True, help="the purpose id")
    listen.add_argument("--count", type=int, default=None, metavar="N",
                        help="stop after N pairs (default: at SIGINT/SIGTERM)")
    listen.set_defaults(func=_cmd_listen)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
