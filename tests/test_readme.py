"""README.md is a contract: every fenced code block in it runs, unless a `<!-- not run: reason -->` line just
before its fence says why it cannot run here (a GPU, many machines, minutes of wall time).

Shell blocks run command by command in a fresh folder per block, each `vlp ...` line in this process (`vlp` is
`vlp.cli:main`; a fresh interpreter per line would cost ~3 s of imports each), anything else through bash. Only
sizes shrink (`shrink` below: fewer images, 2 optimizer steps, 2 sampling steps); every flag, recipe and path stays as
written. Files a block takes as the reader's own (a transformers checkpoint, the demo's run, a COCO folder) are put
where the block names them (INPUTS). Python blocks run as they stand in their own folder; YAML blocks are recipe
fragments, parsed as a recipe and, for `data:`, loaded by their loader.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shlex
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
NOT_RUN = re.compile(r"^<!--\s*not run\b(.*?)-->\s*$")
SHELL_LANGS = {"bash", "sh", "shell"}


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason given by a `<!-- not run: reason -->` line right before the fence

    @property
    def name(self) -> str:
        return f"README.md:{self.line}:{self.lang or 'text'}"


def read_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order, each with the not-run mark just before it (if any)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        fence, start = opened.group(1), i
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        if i == len(lines):
            raise AssertionError(f"README.md:{start + 1}: code block never closed")
        before = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
        mark = NOT_RUN.match(before)
        skip = mark.group(1).strip().removeprefix(":").strip() if mark else None
        blocks.append(Block(start + 1, opened.group(2).lower(), "\n".join(lines[start + 1 : i]), skip))
        i += 1
    return blocks


BLOCKS = read_blocks(README.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------- the marks themselves


def test_block_parser_on_a_hand_made_text():
    text = (
        "intro\n\n```bash\nvlp info\n```\n<!-- not run: needs 8 GPUs -->\n\n"
        "```python\nx = 1\n```\n<!-- not run -->\n```\ny\n```\n"
    )
    blocks = read_blocks(text)
    assert [(b.line, b.lang, b.code, b.skip) for b in blocks] == [
        (3, "bash", "vlp info", None),
        (8, "python", "x = 1", "needs 8 GPUs"),
        (12, "", "y", ""),
    ]


def test_every_not_run_mark_has_a_reason_and_a_block():
    lines = README.read_text(encoding="utf-8").splitlines()
    marked = {b.line for b in BLOCKS if b.skip is not None}
    for number, line in enumerate(lines, 1):
        if "not run" in line and line.strip().startswith("<!--"):
            assert NOT_RUN.match(line.strip()), f"README.md:{number}: write a mark as `<!-- not run: reason -->`"
            following = next((n for n in range(number + 1, len(lines) + 1) if lines[n - 1].strip()), None)
            assert following in marked, f"README.md:{number}: a not-run mark must sit right before a code fence"
    for block in BLOCKS:
        if block.skip is not None:
            assert len(block.skip) >= 10, f"{block.name}: the not-run mark needs a reason, got {block.skip!r}"


def test_every_block_is_run_or_marked():
    runnable = SHELL_LANGS | {"python", "yaml"}
    for block in BLOCKS:
        assert block.skip is not None or block.lang in runnable, (
            f"{block.name}: a {block.lang or 'plain'} block cannot be run; give it a language of {sorted(runnable)} "
            "or a `<!-- not run: reason -->` line"
        )


# ----------------------------------------------------------------------------------------- shrinking and inputs

DATA_IMAGES = 100  # ShapesWorld images: enough for every split of every task recipe to hold a few
TRAIN_SETS = ["--set", "train.steps=2", "--set", "train.batch_size=4"]
GENERATION_SETS = [*TRAIN_SETS, "--set", "train.sample_steps=2", "--set", "train.time_budget_minutes=0",
                   "--set", "train.threads=1"]  # fmt: skip
SAMPLING_STEPS = 2


def _subparser(words: list[str]):
    from vlp.cli import build_parser

    parser = build_parser()
    for word in words:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[word]
    return parser


def _steps_flag(words: list[str]) -> str:
    """The sampling-steps flag of `vlp generate` / `vlp eval generation`, whatever it is called today."""
    flags = [f for a in _subparser(words)._actions if "steps" in a.dest for f in a.option_strings if f[:2] == "--"]
    assert flags, f"vlp {' '.join(words)} has no sampling-steps flag to shrink"
    return flags[0]


def _set_flag(argv: list[str], flag: str, value: object) -> list[str]:
    if flag in argv:
        i = argv.index(flag)
        return [*argv[: i + 1], str(value), *argv[i + 2 :]]
    return [*argv, flag, str(value)]


def shrink(argv: list[str], judge: Path | None = None) -> list[str]:
    """``vlp`` arguments at test size: the same command, recipe and paths with fewer images and steps.

    ``judge``: an attribute-classifier folder for `vlp eval generation` to reuse instead of training its own
    300-step judge (20 s of CPU, most of that command's time).
    """
    if argv[:2] == ["data", "synth"]:
        return _set_flag(argv, "--images", DATA_IMAGES)
    if argv[:1] in (["pretrain"], ["finetune"]):
        return [*argv, *TRAIN_SETS]
    if argv[:1] == ["train-generation"]:
        return [*argv, *GENERATION_SETS]
    if argv[:1] == ["generate"] or argv[:2] == ["eval", "generation"]:
        words = argv[:1] if argv[0] == "generate" else argv[:2]
        argv = _set_flag(_set_flag(argv, _steps_flag(words), SAMPLING_STEPS), "--samples", 1)
        return argv if judge is None or words == ["generate"] else _set_flag(argv, "--classifier", judge)
    return argv


def test_shrink_keeps_the_command_and_cuts_sizes():
    assert shrink(["data", "synth", "--out", "d", "--images", "4000", "--size", "32"]) == [
        "data", "synth", "--out", "d", "--images", "100", "--size", "32",
    ]  # fmt: skip
    assert shrink(["pretrain", "albef-tiny", "--set", "a=1"]) == ["pretrain", "albef-tiny", "--set", "a=1", *TRAIN_SETS]
    steps = _steps_flag(["generate"])
    assert shrink(["generate", "a red circle", "--model", "m", "--samples", "4"], Path("j")) == [
        "generate", "a red circle", "--model", "m", "--samples", "1", steps, "2",
    ]  # fmt: skip
    steps = _steps_flag(["eval", "generation"])
    assert shrink(["eval", "generation", "--model", "m", steps, "50"], Path("j")) == [
        "eval", "generation", "--model", "m", steps, "2", "--samples", "1", "--classifier", "j",
    ]  # fmt: skip
    assert shrink(["info"]) == ["info"]


# programs a block may run through bash besides `vlp`: read-only or writing only into the block's folder
SAFE_PROGRAMS = {"vlp", "python", "ls", "cat", "head", "tail", "echo", "du", "time"}


def commands(code: str) -> list[str]:
    """A shell block's command lines: continuation lines joined, blank and comment-only lines left out."""
    return [line for line in code.replace("\\\n", " ").splitlines() if shlex.split(line, comments=True)]


def _plain(command: str) -> bool:
    """True for a single command without pipes, redirections, lists or expansions (run in-process if `vlp`)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return not any(set(token) <= set("();<>|&") for token in lexer) and not set("$`") & set(command)


def run_command(command: str, folder: Path, judge: Path | None = None) -> str:
    """Run one command line of a shell block in ``folder``; its output, or an AssertionError naming it."""
    argv = shlex.split(command, comments=True)
    if argv[0] == "vlp" and _plain(command):
        from vlp.cli import main

        argv = shrink(argv[1:], judge)
        output, threads, cwd = io.StringIO(), torch.get_num_threads(), os.getcwd()
        os.chdir(folder)
        try:
            with redirect_stdout(output), redirect_stderr(output):
                try:
                    code = main(argv)
                except SystemExit as exit_:  # argparse errors
                    code = exit_.code
        finally:
            os.chdir(cwd)
            torch.set_num_threads(threads)
        text = output.getvalue()
        shown = "vlp " + shlex.join(argv)
    else:  # anything else as the shell would run it, with the venv's commands first on PATH
        assert argv[0] in SAFE_PROGRAMS, (
            f"`{command}`: {argv[0]!r} may change this machine (install, build, launch); mark its block "
            f"`<!-- not run: reason -->` or, if it is harmless here, add it to SAFE_PROGRAMS"
        )
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        done = subprocess.run(["bash", "-ec", command], cwd=folder, env=env, capture_output=True, text=True)
        code, text, shown = done.returncode, done.stdout + done.stderr, command
    assert code in (0, None), f"`{command}` failed (exit {code}); ran as `{shown}` in {folder}:\n{text[-4000:]}"
    return text


@pytest.fixture(scope="module")
def hf_clip_folder(tmp_path_factory) -> Path:
    """A tiny random transformers CLIPModel folder, as `save_pretrained` writes one (built offline)."""
    transformers = pytest.importorskip("transformers")
    text = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16, bos_token_id=62, eos_token_id=63, pad_token_id=63)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    folder = tmp_path_factory.mktemp("hf") / "clip"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory) -> Path:
    """A Karpathy-split COCO folder of two images (dataset_coco.json + val2014/*.jpg), the layout COCO ships."""
    from PIL import Image

    root = tmp_path_factory.mktemp("coco")
    (root / "val2014").mkdir()
    images = []
    for i, colour in enumerate(("red", "blue")):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (40, 30), colour).save(root / "val2014" / name)
        sentences = [{"raw": f"a {colour} picture.", "tokens": ["a", colour, "picture"]}]
        images.append({"filepath": "val2014", "filename": name, "split": "train", "cocoid": i, "sentences": sentences})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory) -> Path:
    """An attribute classifier trained for 3 steps (the real one takes 300): `vlp eval generation` reuses it."""
    from vlp.generation.classifier import ClassifierConfig, save_classifier, train_classifier

    return save_classifier(train_classifier(ClassifierConfig(steps=3)), tmp_path_factory.mktemp("judge"))


def _demo_command(block: Block) -> list[str] | None:
    for command in commands(block.code):
        argv = shlex.split(command, comments=True)
        if argv[:2] == ["vlp", "demo"] and "--quick" in argv:
            return argv
    return None


SHELL_BLOCKS = [b for b in BLOCKS if b.skip is None and b.lang in SHELL_LANGS]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> Path:
    """The run folder written by the README's `vlp demo --quick` block (other blocks read `runs/demo` from it)."""
    found = [(b, argv) for b in SHELL_BLOCKS if (argv := _demo_command(b))]
    assert found, "README.md must show `vlp demo --quick` (the end-to-end smoke run) in a shell block"
    block, argv = found[0]
    folder = tmp_path_factory.mktemp("demo")
    for command in commands(block.code):
        run_command(command, folder)
    out = folder / (argv[argv.index("--out") + 1] if "--out" in argv else "runs/demo")
    assert (out / "report.md").is_file() and (out / "model" / "model.safetensors").is_file()
    return out


# The reader's own files a block names but does not make: where each comes from here.
INPUTS = {
    "path/to/hf-clip-folder": "hf_clip_folder",
    "./clip-vit-base-patch32": "hf_clip_folder",
    "runs/demo": "quick_demo",
    "/data/coco": "coco_folder",
}


def provide_inputs(code: str, folder: Path, request: pytest.FixtureRequest) -> None:
    for name, fixture in INPUTS.items():
        named = re.search(rf"(^|[\s=])(--out\s+)?{re.escape(name)}(?=[/\s]|$)", code, re.M)
        if named and not named.group(2) and not name.startswith("/"):  # `--out PATH` makes it
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(request.getfixturevalue(fixture), target_is_directory=True)


@pytest.mark.slow
@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b.name for b in SHELL_BLOCKS])
def test_shell_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest, one_thread):
    if _demo_command(block):  # run once, by the fixture other blocks share
        request.getfixturevalue("quick_demo")
        return
    provide_inputs(block.code, tmp_path, request)
    judge = request.getfixturevalue("tiny_judge") if re.search(r"vlp\s+eval\s+generation", block.code) else None
    for command in commands(block.code):
        run_command(command, tmp_path, judge)
    # a file a comment promises (`# runs/albef/curves.png`, or just `results.json`) exists afterwards
    for comment in re.findall(r"(?:^|\s)#\s(.*)$", block.code, re.M):
        for path in re.findall(r"(?<![\w/.-])[\w./-]+\.(?:png|json|jsonl|md|safetensors|yaml)\b", comment):
            found = (tmp_path / path).exists() if "/" in path else any(tmp_path.rglob(path))
            assert found, f"{block.name}: a comment promises {path}, which the block did not write"


PYTHON_BLOCKS = [b for b in BLOCKS if b.skip is None and b.lang == "python"]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.name for b in PYTHON_BLOCKS])
def test_python_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread):
    monkeypatch.chdir(tmp_path)
    exec(compile(block.code, block.name, "exec"), {"__name__": "__readme__"})


YAML_BLOCKS = [b for b in BLOCKS if b.skip is None and b.lang == "yaml"]


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[b.name for b in YAML_BLOCKS])
def test_yaml_block_is_a_recipe_fragment_that_loads(block: Block, request: pytest.FixtureRequest):
    from vlp.data.loader import build_dataset
    from vlp.recipe import parse_recipe, recipe_dict

    fragment = yaml.safe_load(block.code)
    assert isinstance(fragment, dict), f"{block.name}: expected a recipe mapping, got {type(fragment).__name__}"
    data = fragment.get("data", {})
    if data.get("root") in INPUTS:
        data["root"] = str(request.getfixturevalue(INPUTS[data["root"]]))
    recipe = parse_recipe({**copy.deepcopy(recipe_dict("albef-tiny")), **fragment}, where=block.name)
    if "data" in fragment:
        dataset = build_dataset(recipe.data, "train")
        assert len(dataset) > 0 and dataset[0]["image"] is not None, f"{block.name}: no sample loaded"
