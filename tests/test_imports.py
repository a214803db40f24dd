"""No import circles inside ``tosa_bench``.

Why: a circle makes the order in which modules first get imported matter (a name used
at import time can be missing from a half-initialised module), and it hides which module
owns a piece of code. Many imports here are deliberately lazy (inside functions, so that
``tosa-bench --help`` stays fast); a lazy import only postpones a circle, it does not
remove it, so lazy imports count too.

What counts as an edge ``a -> b`` (read from the source with :mod:`ast`, nothing is
imported, so the test takes a fraction of a second):

- every ``import tosa_bench...`` and ``from ... import ...`` naming a ``tosa_bench``
  module, anywhere in module ``a``: top level, inside functions, classes, ``try`` blocks;
- except those under ``if TYPE_CHECKING:`` (or ``if typing.TYPE_CHECKING:``), which never
  run and exist only for type checkers (``import_graph(..., type_checking=True)`` counts
  them as well, for a look at the stricter, static graph);
- relative imports are resolved against ``a``'s package;
- ``from X import y`` points at the submodule ``X.y`` when ``X/y.py`` (or ``X/y/``) exists,
  and at ``X`` otherwise (then ``y`` is a name defined in ``X``);
- a dotted name that is not a module in the tree points at its longest prefix that is;
- the parent packages that Python initialises on the way to a submodule are not edges:
  ``import tosa_bench.results.store`` is an edge to ``tosa_bench.results.store`` only.
  Counting them would turn every package whose ``__init__`` re-exports a submodule into a
  circle with each sibling that imports that submodule by its absolute name;
- string imports (``importlib.import_module("...")``, used by the lazy ``__getattr__`` of
  some packages and by the method registry) are not edges: their targets are data.

Every strongly connected component with more than one module, and every module that
imports itself, is a circle. The failure message lists, for each import inside such a
component, the shortest circle it closes, as ``a -> b -> a``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tosa_bench"


def _module_name(path: Path, src_root: Path) -> str:
    parts = list(path.relative_to(src_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(tree: ast.AST, type_checking: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """All import statements in ``tree`` except the bodies of ``if TYPE_CHECKING:``
    (their ``else`` branches do run, so they are kept); ``type_checking=True`` keeps
    those bodies too."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            continue
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _known(name: str, modules: set[str]) -> str | None:
    """``name`` or its longest prefix that is a module in the tree."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(src_root: Path, package: str = PACKAGE, type_checking: bool = False) -> dict[str, set[str]]:
    """Module -> the in-package modules it imports, by the rules in the module docstring."""
    files = {_module_name(p, src_root): p for p in sorted((src_root / package).rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in files.items():
        is_package = path.name == "__init__.py"
        here = mod if is_package else mod.rpartition(".")[0]
        for node in _import_nodes(ast.parse(path.read_text(), str(path)), type_checking):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base_parts = here.split(".")
                    if node.level > 1:
                        base_parts = base_parts[: -(node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    resolved = _known(target, modules)
                    if resolved is not None:
                        graph[mod].add(resolved)
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the package is small, but recursion limits are not
    worth thinking about)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop(0)
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _shortest_path(start: str, goal: str, members: set[str], graph: dict[str, set[str]]) -> list[str]:
    """``start ... goal`` by the fewest imports, inside one component (breadth first)."""
    previous: dict[str, str] = {start: start}
    frontier = [start]
    while frontier and goal not in previous:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    path = [goal]
    while path[-1] != start:
        path.append(previous[path[-1]])
    return path[::-1]


def import_circles(graph: dict[str, set[str]]) -> list[str]:
    """One line ``a -> b -> ... -> a`` per import inside a strongly connected component:
    the shortest circle that import closes, each circle once (written from its
    alphabetically first module). Every import that keeps a component together is thus
    named, not just one circle per component."""
    lines: set[str] = set()
    for component in _strongly_connected(graph):
        members = set(component)
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        for src in component:
            for dst in sorted(graph[src] & members):
                cycle = [src] if dst == src else [src, *_shortest_path(dst, src, members, graph)[:-1]]
                first = cycle.index(min(cycle))
                cycle = cycle[first:] + cycle[:first]
                lines.add(" -> ".join([*cycle, cycle[0]]))
    return sorted(lines)


def test_no_import_circles():
    circles = import_circles(import_graph(ROOT))
    assert not circles, "import circles in tosa_bench:\n" + "\n".join(circles)


# ----------------------------------------------------------------------------- the checker itself
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_sees_lazy_relative_and_submodule_imports(tmp_path):
    root = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from . import b\n",
        "pkg/b.py": "from pkg.sub import c\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "import pkg.a as a\n",
        "pkg/d.py": "from .sub.c import name\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.d"] == {"pkg.sub.c"}
    assert import_circles(graph) == ["pkg.a -> pkg.b -> pkg.sub.c -> pkg.a"]


def test_checker_skips_type_checking_and_reports_self_imports(tmp_path):
    root = _tree(tmp_path, {
        "pkg/__init__.py": "from pkg import thing\nthing = 1\n",
        "pkg/a.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.b import X\nelse:\n    X = None\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\nfrom pkg import a\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == set() and graph["pkg.b"] == {"pkg.a"}
    assert import_circles(graph) == ["pkg -> pkg"]
    assert import_graph(root, "pkg", type_checking=True)["pkg.a"] == {"pkg.b"}


def test_checker_names_every_circle_of_a_component():
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"b", "d"}, "d": set()}
    assert import_circles(graph) == ["a -> b -> a", "b -> c -> b"]
