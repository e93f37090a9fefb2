"""The shape of the package: no import cycles, a leaf I/O layer, and the deprecated module kept.

Imports are read with ``ast`` from every module of ``forgeloc``, including the ones inside
functions (a lazy import is still a dependency). ``from pkg import name`` depends on ``pkg`` itself
(its ``__init__`` runs and is read) and, when ``name`` is a submodule, on that submodule too.
``import a.b.c`` depends on ``a.b.c`` only: the parent packages Python initialises on the way are
not counted, or every package's ``__init__`` that imports its own submodules would be a cycle.
"""

from __future__ import annotations

import ast
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "forgeloc"


def _modules() -> dict[str, tuple[Path, bool]]:
    """``dotted name -> (file, is a package __init__)`` for every module of forgeloc."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


def _imported_from(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    if not node.level:
        return node.module
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """``module -> the forgeloc modules it imports`` (see the module docstring for the rules)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                source = _imported_from(node, name, is_package)
                if source in modules:
                    graph[name].add(source)
                graph[name].update(f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules)
        graph[name].discard(name)  # a package's __init__ naming its own submodule is not a cycle
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None`` (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if start in state:
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child):], child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph[child])))
    return None


def test_the_graph_reader_sees_lazy_and_relative_imports() -> None:
    graph = import_graph()
    # A lazy import inside a function (forgeloc.load imports the predictor on use).
    assert "forgeloc.inference.predictor" in graph["forgeloc"]
    assert "forgeloc.models.factory" in graph["forgeloc.engine.checkpointing"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_io_is_a_leaf() -> None:
    """forgeloc.io (safe reading of untrusted files) imports nothing else of forgeloc."""
    graph = import_graph()
    for module, imports in graph.items():
        if module == "forgeloc.io" or module.startswith("forgeloc.io."):
            outside = sorted(m for m in imports if not (m == "forgeloc.io" or m.startswith("forgeloc.io.")))
            assert not outside, f"{module} imports {outside}"


def test_nothing_inside_forgeloc_imports_the_deprecated_checkpoint_module() -> None:
    graph = import_graph()
    users = sorted(m for m, imports in graph.items() if "forgeloc.checkpoint" in imports)
    assert not users, f"forgeloc.checkpoint is only a deprecated re-export; imported by {users}"


def test_deprecated_checkpoint_module_still_exports_its_names() -> None:
    import forgeloc.io
    import forgeloc.models.factory

    sys.modules.pop("forgeloc.checkpoint", None)
    with pytest.warns(DeprecationWarning, match="forgeloc.checkpoint is deprecated"):
        import forgeloc.checkpoint as old
    assert old.CheckpointError is forgeloc.io.CheckpointError
    assert old.load_model is forgeloc.models.factory.load_model
    for name in old.__all__:
        assert hasattr(old, name), name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import forgeloc.checkpoint  # already imported: no second warning


#: The layers of docs/architecture.md, bottom first. A module may import its own layer or lower ones.
LAYERS = [
    ("forgeloc.version", "forgeloc.io", "forgeloc.extras"),
    ("forgeloc.data",),
    ("forgeloc.models", "forgeloc.losses", "forgeloc.metrics", "forgeloc.detectors"),
    ("forgeloc.engine", "forgeloc.inference", "forgeloc.deploy"),
    ("forgeloc.cli", "forgeloc.__main__", "forgeloc.checkpoint"),
]


def layer_of(module: str) -> int:
    if module == "forgeloc":  # the public API (load, create_model) sits with the commands on top
        return len(LAYERS) - 1
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{module} is in no layer of LAYERS: add it (and to docs/architecture.md)")


def test_every_import_points_down_the_layers() -> None:
    upward = sorted(f"{a} -> {b}" for a, imports in import_graph().items() for b in imports
                    if layer_of(b) > layer_of(a))
    assert not upward, "imports that climb a layer:\n" + "\n".join(upward)
