"""The ``vlp`` command. Each job is a module in ``vlp.commands`` that defines
``register(subparsers)``; adding a job never touches the others."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from vlp import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlp", description="Vision-language pretraining toolkit.")
    parser.add_argument("--version", action="version", version=f"vlp {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import vlp.commands

    for info in sorted(pkgutil.iter_modules(vlp.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"vlp.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    from vlp.config import ConfigError

    try:
        return int(args.run(args) or 0)
    except ConfigError as err:
        print(f"vlp {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vlp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
