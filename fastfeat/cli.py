"""The ``fastfeat`` command line: a thin layer over the Python API.

Each subcommand lives in ``fastfeat/commands/<name>.py`` with ``register_subparser(subparsers)``;
its handler is a plain function of the parsed arguments.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from ._version import __version__

#: Subcommand modules under fastfeat.commands, in help order.
COMMANDS = ("extract", "cache", "models", "layers", "info", "export", "merge", "bench", "probe", "classify", "show")


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


def _import_tensorflow_quietly() -> None:
    """TensorFlow imported with its C++ start-up chatter muted (:func:`fastfeat.extractor.import_tensorflow_quietly`)."""
    from .extractor import import_tensorflow_quietly

    import_tensorflow_quietly()


def _stop_on_signals(state: dict):
    """Ctrl-C and SIGTERM (a scheduler stopping the job) from the first instant: before a store is
    open (TensorFlow's import, the model build) they interrupt at once (exit 130, one line). Once
    a run writes its store, the first one finishes the batch in flight, flushes and leaves a
    resumable store; a second one interrupts at once. Returns the previous handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        state["signals"] += 1
        runloop = sys.modules.get("fastfeat.runloop")
        if state["signals"] > 1 or not state.get("graceful") or runloop is None or not runloop.writing():
            raise KeyboardInterrupt(f"signal {signum}")
        runloop.request_stop()
        print(
            "\nfastfeat: stopping after the batch in flight (press Ctrl-C again to stop at once)",
            file=sys.stderr,
        )

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line, ``fastfeat: warning: ...``, without our source file and line."""
    return f"fastfeat: warning: {message}\n"


def _interrupted_line(args) -> str:
    """One line; it names --resume only when an unfinished store was left (not for a Ctrl-C
    before the store was opened, or an --overwrite interrupted before it replaced a complete one)."""
    output = getattr(args, "output", None) if args is not None else None
    if getattr(args, "command", None) == "extract" and output and os.path.isfile(output):
        from .plan import stored_state

        meta, complete = stored_state(output)
        if meta is None or not complete:
            return "fastfeat: interrupted; an unfinished store can be completed with --resume"
    return "fastfeat: interrupted"


def _is_decode_error(e: BaseException) -> bool:
    """Whether ``e`` is a :class:`fastfeat.decode.DecodeError` (``--on-error raise``); the decoder
    is imported only if it was loaded already, so ``fastfeat --help`` never loads it."""
    decode = sys.modules.get("fastfeat.decode")
    return decode is not None and isinstance(e, decode.DecodeError)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out
    state = {"signals": 0, "graceful": False}
    previous = _stop_on_signals(state)
    formatwarning, warnings.formatwarning = warnings.formatwarning, _format_warning
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        prepare = getattr(args, "prepare", None)
        if prepare is not None:  # every check that needs no model, before TensorFlow is imported
            prepare(args)
        if getattr(args, "needs_tensorflow", False):
            _import_tensorflow_quietly()
        state["graceful"] = getattr(args, "graceful_stop", False)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\n" + _interrupted_line(args), file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fastfeat info x.h5 | head -3`: the reader is gone, so is our output
        _silence_stdout()
        return 0
    except Exception as e:
        if _is_decode_error(e):  # --on-error raise
            print(f"fastfeat: error: cannot read {e}. The store is incomplete: fix or remove the file, "
                  "then run again with --resume (or use --on-error skip).", file=sys.stderr)  # fmt: skip
            return 1
        if isinstance(e, (ValueError, FileNotFoundError, FileExistsError, PermissionError, RuntimeError,
                          IsADirectoryError, NotADirectoryError)):  # fmt: skip
            print(f"fastfeat: error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):
            print(f"fastfeat: error: {e}", file=sys.stderr)
            return 1
        raise
    finally:
        warnings.formatwarning = formatwarning
        if previous:
            import signal

            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
