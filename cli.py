"""The `apron` command: dispatches to each stage's own subcommands.

Each stage (`training`, `export`, `serving`) owns `<stage>/cli.py` with
`add_subcommands(subparsers)`; a subcommand stores its handler in `func`.
Stages are imported lazily so `apron serve --help` does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

STAGES = ("training.cli", "export.cli", "serving.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apron", description="APRON controllable music recommendation")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in STAGES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.add_subcommands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except UserFacingError as error:
        print(f"apron {args.command}: error: {error}", file=sys.stderr)
        return 2


class UserFacingError(Exception):
    """A mistake in the user's input (file, flag, data line): printed without a traceback."""


if __name__ == "__main__":
    # Re-enter through the importable module so `cli.UserFacingError` raised by the stages is the
    # class main() catches (under `python cli.py` this file is `__main__`, a second copy).
    import cli

    sys.exit(cli.main())
