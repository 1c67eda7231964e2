"""The ``vlp`` command. Each job is a module in ``vlp.commands`` that defines
``register(subparsers)``; adding a job never touches the others."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys

from vlp import __version__

_NAMES_DEFAULT = re.compile(r"\bdefault[: ]", re.IGNORECASE)  # "(default: 64)", "(default 1000)"


class _DefaultsInHelp(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help, like ``ArgumentDefaultsHelpFormatter``, except where the help
    already names its default or the default says nothing (None, False of a switch, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        silent = default is None or default is False or default == [] or default == argparse.SUPPRESS
        if silent or _NAMES_DEFAULT.search(text) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _with_defaults(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every subcommand parser below it the defaults-in-help formatter, keeping each
    parser's own formatter behaviour (e.g. raw epilogs)."""
    own = parser.formatter_class
    if not (isinstance(own, type) and issubclass(own, _DefaultsInHelp)):
        parser.formatter_class = type(f"Defaults{own.__name__}", (_DefaultsInHelp, own), {})
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                _with_defaults(sub)


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
    _with_defaults(parser)
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
