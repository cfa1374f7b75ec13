"""No import circle inside autoinfer, counting every import that runs (issue 33, item 7).

An import counts wherever it runs: at module level or inside a function or method, and through
`importlib.import_module("autoinfer....")` with a literal name. Only imports under
`if TYPE_CHECKING:` do not run. What an import runs is what Python runs: `import autoinfer.a.b`
(or `from autoinfer.a import b`, b a submodule) runs autoinfer.a.b, and before it every package
above it that the importer is not itself inside of (those are already being imported by the time
the importer's code runs). So the root package, autoinfer/__init__.py, is never an edge: it runs
first for every module, and it is where the engines register (it imports autoinfer.engines).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autoinfer"
Graph = dict[str, dict[str, int]]  # module -> {module its imports run: line of the first such import}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_that_run(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import the module can run."""
    package = module if is_package else module.rpartition(".")[0]
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _type_checking(node.test):
            todo.extend(node.orelse)  # the body never runs; an else branch does
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the importer's package, one level up per extra dot
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            yield source, [a.name for a in node.names], node.lineno
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value, [], node.lineno
        todo.extend(ast.iter_child_nodes(node))


def import_graph(root: Path = PACKAGE) -> Graph:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    top = root.name
    graph: Graph = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(), str(path))
        for source, names, line in imports_that_run(tree, module, path.name == "__init__.py"):
            if source != top and not source.startswith(top + "."):
                continue
            # `from pkg import sub` imports the submodule pkg.sub; `from mod import name` just mod
            targets = [f"{source}.{n}" for n in names if f"{source}.{n}" in files] or [source]
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # the packages above the target run first
                    ran = ".".join(parts[:i])
                    if ran in files and ran != module and not module.startswith(ran + "."):
                        edges.setdefault(ran, line)
        graph[module] = edges
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One shortest circle through each strongly connected group of modules (Tarjan), as the path
    of modules it passes, its first module repeated at the end."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
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
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for group in groups:
        start = min(group)
        paths = {start: [start]}
        frontier = [start]
        while frontier and start not in [w for v in frontier for w in graph[v]]:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in group and w not in paths:
                        paths[w] = [*paths[v], w]
                        nxt.append(w)
            frontier = nxt
        last = next(v for v in frontier if start in graph[v])
        found.append([*paths[last], start])
    return sorted(found)


def describe(path: list[str], graph: Graph) -> str:
    steps = [f"{a} (line {graph[a][b]}) -> " for a, b in itertools.pairwise(path)]
    return "".join(steps) + path[-1]


def closure(graph: Graph, module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_no_import_circle() -> None:
    graph = import_graph()
    assert "autoinfer.config" in graph and len(graph) > 40  # the walk found the package
    found = cycles(graph)
    assert not found, "import circles (module (line of the import) -> module it runs):\n" + "\n".join(
        describe(c, graph) for c in found
    )


def test_the_config_imports_no_engine() -> None:
    """The lowest layer checks engine names against autoinfer.registry.ENGINES, which the engines
    register into; it looks nothing up in the engines (nor in what imports them)."""
    graph = import_graph()
    upper = ("autoinfer.engines", "autoinfer.search", "autoinfer.export", "autoinfer.trial", "autoinfer.cli")
    above = sorted(m for m in closure(graph, "autoinfer.config") if m.startswith(upper))
    assert not above, f"autoinfer.config runs imports of {above}"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "autoinfer"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_walk_sees_function_level_and_package_imports(tmp_path: Path) -> None:
    """A circle through an import inside a function and a package __init__ is found; one through
    `if TYPE_CHECKING:` is not; a submodule importing its own package is no edge."""
    root = _tree(
        tmp_path,
        {
            "__init__.py": "from autoinfer import low\n",
            "low.py": "def f():\n    from .pkg.mod import g\n",
            "pkg/__init__.py": "from autoinfer.pkg.mod import g\n",
            "pkg/mod.py": "from autoinfer.pkg import other\ndef g():\n    import importlib\n"
            "    importlib.import_module('autoinfer.high')\n",
            "pkg/other.py": "",
            "high.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import autoinfer.pkg\n"
            "else:\n    from autoinfer.low import f\n",
            "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import autoinfer.low\n",
        },
    )
    graph = import_graph(root)
    assert graph["autoinfer"] == {"autoinfer.low": 1}
    assert graph["autoinfer.low"] == {"autoinfer.pkg": 2, "autoinfer.pkg.mod": 2}
    assert graph["autoinfer.pkg.mod"] == {"autoinfer.pkg.other": 1, "autoinfer.high": 4}
    assert graph["autoinfer.typed"] == {}
    found = cycles(graph)
    assert found == [["autoinfer.high", "autoinfer.low", "autoinfer.pkg.mod", "autoinfer.high"]]  # the shortest
    assert describe(found[0], graph).startswith("autoinfer.high (line 5) -> autoinfer.low (line 2) -> ")


@pytest.mark.parametrize("circle", [False, True])
def test_cycles_reports_a_path(circle: bool) -> None:
    graph: Graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3} if circle else {}}
    assert cycles(graph) == ([["a", "b", "c", "a"]] if circle else [])
