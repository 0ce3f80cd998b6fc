"""The ``fastfeat`` command line: a thin layer over the Python API.

Each subcommand lives in ``fastfeat/commands/<name>.py`` with ``register_subparser(subparsers)``;
its handler is a plain function of the parsed arguments.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ._version import __version__

#: Subcommand modules under fastfeat.commands, in help order.
COMMANDS = ("extract", "models", "layers", "info", "merge", "bench")


class UsageError(Exception):
    """A problem with what the user asked for: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastfeat",
        description="Turn folders of images into CNN features, fast.",
    )
    parser.add_argument("--version", action="version", version=f"fastfeat {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"fastfeat.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"fastfeat.commands.{name}":
                raise
            continue
        module.register_subparser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\nfastfeat: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, FileExistsError, PermissionError, RuntimeError) as e:
        print(f"fastfeat: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"fastfeat: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
