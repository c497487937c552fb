"""The package imports cleanly: every module of ``fixedq`` and ``fixedq_cli`` in a fresh
interpreter, no import cycle between modules at import time, and the layering of
docs/architecture.md (imports only go down: ``layers`` never imports ``models``/``ops``,
``transforms`` never imports ``models``, the engine runtime never imports Keras or the op
registry)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("fixedq", "fixedq_cli")

#: package prefix -> packages its modules must not import at module level
FORBIDDEN = {
    "fixedq.layers": ("fixedq.models", "fixedq.ops", "fixedq.analysis", "fixedq.transforms"),
    "fixedq.transforms": ("fixedq.models", "fixedq.ops", "fixedq.analysis"),
    "fixedq.ops": ("fixedq.models", "fixedq.analysis"),
    "fixedq.tensors": ("fixedq.layers", "fixedq.models", "fixedq.ops", "fixedq.engine"),
}
#: engine modules that import Keras (everything else in fixedq.engine is NumPy only)
ENGINE_KERAS = {"fixedq.engine.converter"}


def _module_files() -> dict[str, pathlib.Path]:
    files = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def _top_level_imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """fixedq modules imported when ``name`` is imported (module level only: imports inside
    functions run later and cannot form an import-time cycle)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in tree.body:
        stmts = [node]
        if isinstance(node, (ast.If, ast.Try)):  # e.g. TYPE_CHECKING or optional imports
            stmts = [s for s in ast.walk(node) if isinstance(s, (ast.Import, ast.ImportFrom))]
        for stmt in stmts:
            if isinstance(stmt, ast.Import):
                targets = [a.name for a in stmt.names]
            elif isinstance(stmt, ast.ImportFrom):
                base = stmt.module or ""
                if stmt.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - stmt.level + 1]
                                    + ([stmt.module] if stmt.module else []))
                subs = [f"{base}.{a.name}" for a in stmt.names if f"{base}.{a.name}" in known]
                # ``from pkg import submodule`` needs the submodule; ``pkg`` itself only
                # when names are taken from its __init__
                targets = subs + ([base] if len(subs) < len(stmt.names) else [])
            else:
                continue
            # a module's own parent packages are initialized before it: not a dependency
            found |= {t for t in targets if t in known and t != name
                      and not name.startswith(t + ".")}
    return found


def _graph() -> dict[str, set[str]]:
    files = _module_files()
    known = set(files)
    return {name: _top_level_imports(name, path, known) for name, path in files.items()}


def test_every_module_imports_in_a_fresh_interpreter():
    code = ("import importlib, pkgutil, fixedq, fixedq_cli\n"
            "for pkg in (fixedq, fixedq_cli):\n"
            "    for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + '.'):\n"
            "        if not info.name.endswith('__main__'):\n"
            "            importlib.import_module(info.name)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles between modules: {cycles}"


def test_imports_only_go_down():
    graph = _graph()
    bad = []
    for name, deps in graph.items():
        for prefix, banned in FORBIDDEN.items():
            if name == prefix or name.startswith(prefix + "."):
                bad += [(name, d) for d in deps if d.startswith(banned)]
        if name.startswith("fixedq.engine") and name not in ENGINE_KERAS:
            bad += [(name, d) for d in deps
                    if d.startswith(("fixedq.ops", "fixedq.layers", "fixedq.models"))]
    assert not bad, f"imports against the layering of docs/architecture.md: {bad}"


def test_the_graph_sees_real_imports():
    graph = _graph()
    assert "fixedq.transforms.split_separable" in graph["fixedq.models.quantize"]
    assert "fixedq.engine.ops" in graph["fixedq.engine.model"]
    assert "fixedq.ops.registry" in graph["fixedq.ops.neural"]
