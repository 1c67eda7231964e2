"""The task packages keep the layout of DESIGN.md: a package per task whose files stay small, import
their vlp dependencies at module level (a function-level import is for an optional third-party
dependency only), and whose fine-tuning, evaluation and predict modules are used only by the
package's ``__init__`` and the top layer (commands, the CLI and the demo)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vlp

SRC = Path(vlp.__file__).parent
PACKAGES = ["captioning", "decoding", "fewshot", "perception", "probe", "refexp", "retrieval", "seq2seq", "tagging",
            "vqa", "zeroshot"]  # fmt: skip
ENTRY_POINTS = ("evaluate", "finetune", "predict")
TOP_LAYER = ("commands", "cli", "cli.py", "demo", "serve")


def python_files(package: str) -> list[Path]:
    return sorted((SRC / "tasks" / package).glob("*.py"))


def vlp_imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """``(imported module, node)`` of every absolute vlp import in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vlp":
            found += [(node.module, node)] + [(f"{node.module}.{a.name}", node) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node) for a in node.names if a.name.split(".")[0] == "vlp"]
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_the_task_is_a_package_of_small_files(package):
    files = python_files(package)
    assert (SRC / "tasks" / package / "__init__.py") in files
    assert not (SRC / "tasks" / f"{package}.py").exists()
    assert {f.name: n for f in files if (n := len(f.read_text().splitlines())) > 400} == {}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_level_import_of_vlp(package):
    found = []
    for path in python_files(package):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{path.name}:{node.lineno} {name}" for name, node in vlp_imports(func)]
    assert sorted(set(found)) == []


def test_entry_points_are_imported_only_by_their_package_init_and_the_top_layer():
    entry = {f"vlp.tasks.{p}.{e}" for p in PACKAGES for e in ENTRY_POINTS}
    offenders = []
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC)
        if relative.parts[0] in TOP_LAYER or (path.name == "__init__.py" and len(relative.parts) == 3):
            continue
        offenders += [
            f"{relative} imports {name}" for name, _ in vlp_imports(ast.parse(path.read_text())) if name in entry
        ]
    assert offenders == []
