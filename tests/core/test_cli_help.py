"""The ``vlp`` command's help: every option says what it is and its default, one flag name has one meaning."""

from __future__ import annotations

import argparse

import pytest

from vlp.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser, name: str = "vlp"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _help_of(parser: argparse.ArgumentParser, flag: str) -> str:
    """The help lines of one option, joined (argparse wraps them)."""
    lines = parser.format_help().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  -") and flag in line.split(maxsplit=2)[:2])
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 6) or line.strip().startswith("-"):
            break
        block.append(line)
    return " ".join(part.strip() for part in block)


def test_every_option_has_help_and_shows_a_meaningful_default():
    missing = []
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if (
                not action.option_strings
                or action.help == argparse.SUPPRESS
                or isinstance(action, argparse._HelpAction)
            ):
                continue
            flag = max(action.option_strings, key=len)
            if not (action.help or "").strip():
                missing.append(f"{name} {flag}: no help")
                continue
            default = action.default
            if default is None or default is False or default == [] or isinstance(action, argparse._VersionAction):
                continue
            if "default" not in _help_of(parser, flag).lower():
                missing.append(f"{name} {flag}: default {default!r} not shown")
    assert not missing, "\n".join(missing)


def test_generate_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "DDIM sampling steps (default: 50)" in text and "images per prompt (default: 4)" in text
    assert "(default: 3.0)" in text  # --guidance


def _task_recipes() -> dict[str, str]:
    """name -> the first line of the recipe's leading comment, read here from the files."""
    from pathlib import Path

    import vlp.tasks

    folder = Path(vlp.tasks.__file__).parent / "recipes"
    return {p.stem: p.read_text().splitlines()[0].lstrip("# ") for p in sorted(folder.glob("*.yaml"))}


def _check_listing(text: str) -> None:
    recipes = _task_recipes()
    assert "vqa-albef-tiny" in recipes and len(recipes) >= 10
    for name, first_line in recipes.items():
        line = next((ln for ln in text.splitlines() if ln.split()[:1] == [name]), None)
        assert line is not None, f"{name} is not listed"
        words = " ".join(first_line.split()[:5])  # the description starts with the comment's first words
        assert line.split(maxsplit=1)[1].startswith(words), (name, line)


def test_info_lists_every_task_recipe_with_a_description(capsys):
    assert main(["info"]) == 0
    _check_listing(capsys.readouterr().out)


def test_finetune_help_lists_every_task_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    _check_listing(capsys.readouterr().out)


def test_one_flag_one_meaning():
    """--k is retrieval's shortlist length; perception's threshold multiplier is --threshold-k."""
    parser = build_parser()
    assert parser.parse_args(["eval", "retrieval", "--model", "m", "--k", "8"]).k == 8
    assert parser.parse_args(["eval", "perception", "--model", "m", "--threshold-k", "1.5"]).threshold_k == 1.5
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "perception", "--model", "m", "--k", "1.5"])
    args = parser.parse_args(["plot", "run", "--image", "x.png"])
    assert args.image == "x.png"
    with pytest.raises(SystemExit):
        parser.parse_args(["plot", "run", "--out", "x.png"])
