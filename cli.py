"""The `apron` command: dispatches to each stage's own subcommands.

Each stage (`training`, `export`, `serving`) owns `<stage>/cli.py` with `COMMANDS`, a map from
each of its command names to the function that adds that command's parser; a command stores its
handler in `func`. Stage CLIs import their libraries inside those functions and handlers, and only
the parser of the command being run is built, so `apron serve --help` (and the gateway) never
import torch. A command whose stage's dependencies are not installed (the gateway image has only
the `serve` extra) is listed and answers with the extra to install.

Stages raise `common.errors.UserFacingError`; this is the only place that catches it. No library
module imports this file: it is the entry point only.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from common.errors import UserFacingError

STAGES = {"training.cli": "train", "export.cli": "train", "serving.cli": "serve"}  # module -> its pyproject extra

PROJECT_PACKAGES = ("common", "training", "export", "serving")

AddParser = Callable[[argparse._SubParsersAction], None]


def stage_commands() -> dict[str, tuple[AddParser, str, str]]:
    """Every command name -> (the function adding its parser, the extra it needs, its one-line help)."""
    commands: dict[str, tuple[AddParser, str, str]] = {}
    for module_name, extra in STAGES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name not in (module_name, module_name.partition(".")[0]):
                raise
            continue  # this install does not ship the stage's code at all
        commands.update({name: (add, extra, module.HELP[name]) for name, add in module.COMMANDS.items()})
    return commands


def build_parser(command: str | None = None, overview: bool = False) -> argparse.ArgumentParser:
    """The parser; with `command`, only that command's own parser is built in full (the others
    are bare names), so building it imports only what that command needs. `overview` (`apron`,
    `apron --help`): every command a bare name with its help, no stage library imported."""
    parser = argparse.ArgumentParser(prog="apron", description="APRON controllable music recommendation")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = stage_commands()
    for name, (add, extra, help_text) in commands.items():
        if overview or (command in commands and command != name):
            subparsers.add_parser(name, help=help_text)
            continue
        try:
            add(subparsers)
        except ModuleNotFoundError as error:  # the stage's extra is not installed
            _add_unavailable(subparsers, name, extra, error.name or str(error))
    return parser


def _add_unavailable(subparsers: argparse._SubParsersAction, name: str, extra: str, missing: str) -> None:
    hint = f"needs the {extra!r} extra (pip install 'apron-recsys[{extra}]'); module {missing} is missing"
    placeholder = subparsers.add_parser(name, help=f"[unavailable: {hint}]", add_help=False)
    placeholder.add_argument("ignored", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def unavailable(args: argparse.Namespace) -> int:
        raise UserFacingError(hint)

    placeholder.set_defaults(func=unavailable)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)  # `apron` itself has no valued options
    args = build_parser(command, overview=command is None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except UserFacingError as error:
        print(f"apron {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:  # a handler's lazy import of a stage library this install lacks
        if error.name is None or error.name.partition(".")[0] in PROJECT_PACKAGES:
            raise
        extra = extra_for(error.name, stage_commands()[args.command][1])
        print(
            f"apron {args.command}: error: needs the {extra!r} extra (pip install 'apron-recsys[{extra}]'); "
            f"module {error.name} is missing",
            file=sys.stderr,
        )
        return 2


def extra_for(module: str, stage_extra: str) -> str:
    """The pyproject extra that brings `module` (e.g. torch for `serve --backend torch`:
    `serve-torch`), preferring the command's stage's own; `stage_extra` when none is known."""
    import importlib.metadata
    import re

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "_", name).lower()

    try:
        requirements = importlib.metadata.requires("apron-recsys") or []
    except importlib.metadata.PackageNotFoundError:
        return stage_extra
    extras = []
    for requirement in requirements:
        marker = re.search(r"extra\s*==\s*[\"']([^\"']+)[\"']", requirement)
        name = re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0]
        if marker and normal(name) == normal(module.partition(".")[0]) and marker.group(1) != "dev":
            extras.append(marker.group(1))
    own = [extra for extra in extras if extra.startswith(stage_extra)]
    return (own or extras or [stage_extra])[0]


if __name__ == "__main__":
    sys.exit(main())
