"""The layers of DESIGN.md hold: every import points down (or stays inside its own layer) and no
two modules import each other, directly or through others. Function-level imports count too:
they are still dependencies. The only exemption is ``vlp/__init__.py``, the public facade."""

from __future__ import annotations

import ast
from pathlib import Path

import vlp

SRC = Path(vlp.__file__).parent

# Lowest first. A module may import its own layer and the layers below it, never above.
LAYERS: list[set[str]] = [
    {"vlp.config", "vlp.core", "vlp.metrics"},
    {"vlp.data"},
    {"vlp.layers"},
    {"vlp.text", "vlp.vision", "vlp.fusion"},
    {"vlp.parts", "vlp.models"},
    {"vlp.objectives"},
    {"vlp.recipe", "vlp.io", "vlp.interop"},
    {"vlp.train", "vlp.tasks", "vlp.generation"},
    {"vlp.commands", "vlp.cli", "vlp.demo", "vlp.serve"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def resolve(name: str) -> str:
    """The module that ``name`` (a module, or a name inside one) lives in."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            for alias in node.names:  # `from pkg import submodule` imports pkg.submodule
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    return {resolve(n) for n in found if n == "vlp" or n.startswith("vlp.")} - {module}


GRAPH = {m: imports_of(m) for m in MODULES}


def layer_of(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return i
    return None


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "vlp" and layer_of(m) is None] == []


def test_imports_point_down():
    upward = [
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, targets in GRAPH.items()
        if a != "vlp"
        for b in targets
        if b != "vlp" and layer_of(b) > layer_of(a)
    ]
    assert upward == []


def test_only_the_top_layer_imports_the_facade():
    """``vlp/__init__.py`` re-exports from every layer, so only commands and applications may use it."""
    top = len(LAYERS) - 1
    assert sorted(a for a, targets in GRAPH.items() if "vlp" in targets and layer_of(a) != top) == []


def test_metrics_import_nothing_of_vlp():
    assert {
        b for a, t in GRAPH.items() if a.startswith("vlp.metrics") for b in t if not b.startswith("vlp.metrics")
    } == set()


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = {a: {b for b in t if b != "vlp"} for a, t in GRAPH.items() if a != "vlp"}
    assert cycles(graph) == []


def test_argparse_lives_only_in_the_command_layer():
    top = len(LAYERS) - 1
    users = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        if "argparse" in names and layer_of(module) != top:
            users.append(module)
    assert users == []
