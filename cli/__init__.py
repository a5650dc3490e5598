"""The `simsearch` console script: one parser, a subcommand per module `cli/_<name>.py`.

This package is the composition root: it is the only place that wires training/, index/ and app/
together, and the boundary where user errors become one clear message and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from ._errors import CliError

__all__ = ["CliError", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simsearch", description="Image similarity search with compact models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each cli/_<name>.py with a register(subparsers) function contributes its subcommands.
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") and not info.name.startswith("__") and info.name != "_errors":
            module = importlib.import_module(f"{__name__}.{info.name}")
            if hasattr(module, "register"):
                module.register(sub)
    return parser


def _import_user_models() -> None:
    """SIMSEARCH_MODEL_MODULES: the modules or .py files that register a user's own architectures, for every
    command (train builds them, the others load artifacts of them). Unset: model is not even imported, so
    the HTTP clients stay without torch."""
    from ._env import ClientEnv

    specs = ClientEnv.read().model_modules
    if specs:
        import model

        try:
            model.import_models(specs)
        except model.ModelModuleError as exc:
            raise CliError(f"SIMSEARCH_MODEL_MODULES: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for a command that starts itself again in other processes (train --nproc)
    try:
        if getattr(args, "imports_user_models", True):
            _import_user_models()
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"simsearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # the reader went away (`simsearch ... | head`): no traceback, and none at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        index = sys.modules.get("index")   # imported by then, when the error is its; not imported here
        if index is None or not isinstance(exc, index.StoreUnavailableError):
            raise
        # Milvus went away under a command: one line; what was committed before it is kept
        print(f"simsearch {args.command}: error: {exc}", file=sys.stderr)
        return 1
