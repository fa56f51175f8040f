"""The ``unisde`` command. Each subcommand lives in ``unisde/cli/<name>.py`` and exposes
``help`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported lazily."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("schedule", "plugins", "demo", "train", "push", "sample", "bench", "nll", "trajectories", "grid")


def _load(name):
    try:
        return importlib.import_module(f"unisde.cli.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"unisde.cli.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unisde", description="Any diffusion sampler on any diffusion model, through one SDE."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = _load(name)
        if module is None:
            continue
        p = sub.add_parser(name, help=module.help, description=getattr(module, "description", module.help))
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args._module.run(args) or 0)
    except ValueError as exc:  # user errors: one clear line, no traceback
        print(f"unisde {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
