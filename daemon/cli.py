"""The ``qnode`` command line."""
from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qnode", description="photonic quantum-network node")
    parser.add_argument("--version", action="version", version=f"qnode {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="show the installation: version, native core")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
