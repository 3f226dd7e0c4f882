"""The ``nnkd`` command. Sub-commands live in :mod:`nnkd.commands`, one module each."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import List, Optional

import nnkd
import nnkd.commands
from nnkd.errors import NNKDError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnkd", description="Cross-modal knowledge distillation for nnU-Net v2.")
    parser.add_argument("--version", action="version", version=f"nnkd {nnkd.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(nnkd.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"nnkd.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except NNKDError as e:
        print(f"nnkd: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
