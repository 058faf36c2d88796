"""The package's shape, checked from the source: no import cycles, methods never import each
other, and validating a recipe imports no torch.

Every import counts, the ones inside functions too (a lazy import is still a dependency). An
import of `a.b.c` is an edge to `a.b.c` only, not to the packages `a` and `a.b` Python also runs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "slimtune"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from pkg import name`: an edge to pkg.name when that is a module, else to pkg
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names]
            else:
                continue
            graph[mod] |= {t for t in targets if t in files and t != mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_graph_walk_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40 and "slimtune.artifacts" in graph["slimtune.runner"]  # the walk sees the package
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_a_method_never_imports_another_method():
    graph = import_graph()
    methods = [m for m in graph if m.startswith("slimtune.methods.")]
    for m in methods:
        own = m.split(".")[2]  # slimtune.methods.<own>[.sub]
        others = [n for n in graph[m] if n.startswith("slimtune.methods.") and n.split(".")[2] != own]
        assert not others, f"{m} imports {others}"


def test_validating_every_shipped_recipe_imports_no_torch():
    code = ("import sys, glob\nfrom slimtune.recipe import load\n"
            "names = [load(f).stages for f in sorted(glob.glob('recipes/*.yaml'))]\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'onnxruntime') if m in sys.modules]\n"
            "print(len(names), heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True)
    n, heavy = out.stdout.strip().split(" ", 1)
    assert int(n) >= 7 and heavy == "[]", out.stdout + out.stderr
