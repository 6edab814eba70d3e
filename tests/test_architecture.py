"""ARCHITECTURE.md's layer table against the code: every import in p2p_lab (read with ast, imports
inside functions included) goes from a module to one in its own layer or a layer above it in the
table, no module imports another module's private names, and the imports form no cycle.

The table is parsed from the markdown, so the document and this test cannot drift. Run as a script
(``python tests/test_architecture.py``) it prints the cycles, private-name imports and layer
violations it finds.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "p2p_lab"


# --- the import graph -------------------------------------------------------------------------

def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} of every module of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imports_of(name: str, path: Path, modules: dict) -> list[tuple[str, str | None, int]]:
    """[(imported module, name imported from it or None, line)] for every import of the package's
    own modules in ``path``, wherever it stands (module level, functions, conditionals)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]  # the package `.` means
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in modules:  # `import p2p_lab.x.y`: the deepest module
                    target = target.rpartition(".")[0]
                if target:
                    found.append((target, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base not in modules:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # `from . import attention`: the submodule itself
                    found.append((sub, None, node.lineno))
                else:
                    found.append((base, alias.name, node.lineno))
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, list[tuple[str, str | None, int]]]:
    """{module: its imports of the package's modules} (see :func:`imports_of`)."""
    modules = module_names(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself),
    each sorted: every import cycle lies in one (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def private_imports(graph: dict) -> list[str]:
    """Imports of another module's private names: an underscore attribute (``from .bundle import
    _ID``), or a private module from outside the package that holds it (``grading`` importing
    ``checks._core``; ``checks.attention`` importing its sibling ``checks._core`` is fine)."""
    bad = []
    for importer, found in graph.items():
        for target, name, line in found:
            if name is not None and _is_private(name):
                bad.append(f"{importer}:{line} imports {name} from {target}")
            parts = target.split(".")
            for i, part in enumerate(parts):
                owner = ".".join(parts[:i])
                if _is_private(part) and not (importer == owner or importer.startswith(owner + ".")):
                    bad.append(f"{importer}:{line} imports the private module {target} from outside {owner}")
                    break
    return bad


def edges_of(graph: dict) -> dict[str, set[str]]:
    return {m: {t for t, _, _ in found} for m, found in graph.items()}


# --- the layer table --------------------------------------------------------------------------

def layer_table(markdown: str) -> list[tuple[str, list[str]]]:
    """[(layer, [modules])] from the table under '## The layers' in ARCHITECTURE.md, top first. A
    row whose layer cell is empty continues the layer above it; its module cell names modules in
    backticks, relative to the package (`p2p.align`; a package names all its modules)."""
    section = markdown.split("## The layers", 1)
    if len(section) < 2:
        raise ValueError("ARCHITECTURE.md has no '## The layers' section: the layer table is read from it")
    layers: list[tuple[str, list[str]]] = []
    for line in section[1].splitlines()[1:]:
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if layers:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] == "layer" or set(cells[0]) <= {"-", ":"} and cells[0]:
            continue
        names = re.findall(r"`([^`]+)`", cells[1])
        if cells[0]:
            layers.append((cells[0], []))
        if not layers:
            raise ValueError(f"the layer table's first row has no layer name: {line!r}")
        layers[-1][1].extend(names)
    return layers


def layer_of(module: str, table: list[tuple[str, list[str]]], package: str = PACKAGE) -> int | None:
    """The index of the layer naming ``module`` (the longest dotted prefix named), or None.
    The package's own ``__init__`` is named `p2p_lab`."""
    rel = "" if module == package else module[len(package) + 1:]
    best, best_len = None, -1
    for i, (_, names) in enumerate(table):
        for n in names:
            if n == package and rel == "":
                return i
            if (rel == n or rel.startswith(n + ".")) and len(n) > best_len:
                best, best_len = i, len(n)
    return best


def layer_violations(graph: dict, table: list) -> list[str]:
    bad = []
    for importer, found in graph.items():
        mine = layer_of(importer, table)
        if mine is None:
            bad.append(f"{importer} is in no layer of ARCHITECTURE.md's table: add it to a row")
            continue
        for target, _, line in found:
            theirs = layer_of(target, table)
            if theirs is not None and theirs > mine:
                bad.append(f"{importer}:{line} ({table[mine][0]}) imports {target} ({table[theirs][0]}), "
                           f"a layer below it in ARCHITECTURE.md")
    return sorted(set(bad))


# --- the tests: first the analysis itself on hand-made packages, then p2p_lab -------------------

def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_imports_inside_functions_and_relative_ones_are_edges(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "from .a import f\n",
                      "pkg/a.py": "def f():\n    from .sub import b\n    return b\n",
                      "pkg/sub/__init__.py": "",
                      "pkg/sub/b.py": "import os\nimport pkg.a\nfrom .. import a as _a\nfrom ..a import f as _f\n"})
    graph = import_graph(tmp_path, "pkg")
    edges = edges_of(graph)
    assert edges == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(), "pkg.sub.b": {"pkg.a"}}
    assert cycles(edges) == [["pkg.a", "pkg.sub.b"]]  # the function-level import closes it
    assert private_imports(graph) == []  # private aliases of public names are fine


def test_cycles_of_a_hand_made_graph():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"d"}}
    assert cycles(edges) == [["a", "b", "c"], ["e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_private_names_and_private_modules(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "from ._core import run\n",
                      "pkg/_core.py": "def run(): pass\n_ID = 1\n",
                      "pkg/topic.py": "from ._core import run\n",
                      "pkg/other/__init__.py": "",
                      "pkg/other/x.py": "from .._core import run\nfrom ..topic import _hidden\n",
                      "pkg/other/y.py": "from .. import _core\n"})
    bad = private_imports(import_graph(tmp_path, "pkg"))
    # a sibling (pkg.topic), the package (pkg) and a subpackage (pkg.other) may use pkg._core
    assert bad == ["pkg.other.x:2 imports _hidden from pkg.topic"]


def test_private_module_of_another_package(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/checks/__init__.py": "", "pkg/checks/_core.py": "",
                      "pkg/grading.py": "from .checks._core import x\nfrom .checks import _core\n"})
    assert private_imports(import_graph(tmp_path, "pkg")) == [
        "pkg.grading:1 imports the private module pkg.checks._core from outside pkg.checks",
        "pkg.grading:2 imports the private module pkg.checks._core from outside pkg.checks"]


TABLE = """# x

## The layers (each imports only from the layers above it)

| layer | module | owns | notebook |
|---|---|---|---|
| base | `p2p_lab`, `forbidding` | `not_a_module` | |
| | `maths` | | 01 |
| top | `checks` | | |
| serving | `grading`, `grading.cli` | | |

## Next
| a | `b` |
"""


def test_layer_table_is_read_from_the_markdown():
    assert layer_table(TABLE) == [("base", ["p2p_lab", "forbidding", "maths"]), ("top", ["checks"]),
                                  ("serving", ["grading", "grading.cli"])]
    table = layer_table(TABLE)
    assert [layer_of(m, table) for m in ("p2p_lab", "p2p_lab.maths", "p2p_lab.checks._core",
                                         "p2p_lab.grading.cli", "p2p_lab.viz")] == [0, 0, 1, 2, None]
    with pytest.raises(ValueError, match="The layers"):
        layer_table("# no table here")


def test_an_import_from_a_layer_below_is_a_violation():
    table = layer_table(TABLE)
    graph = {"p2p_lab.checks._core": [("p2p_lab.grading", "forbid", 3), ("p2p_lab.forbidding", "forbid", 4)],
             "p2p_lab.grading.bundle": [("p2p_lab.checks", "record", 1), ("p2p_lab.grading.parent", None, 2)],
             "p2p_lab.viz": []}
    assert layer_violations(graph, table) == [
        "p2p_lab.checks._core:3 (top) imports p2p_lab.grading (serving), a layer below it in ARCHITECTURE.md",
        "p2p_lab.viz is in no layer of ARCHITECTURE.md's table: add it to a row"]


# --- p2p_lab itself ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_no_import_cycle_in_p2p_lab(graph):
    found = cycles(edges_of(graph))
    assert not found, "import cycles (each a set of modules that import each other):\n" + "\n".join(map(str, found))


def test_no_module_imports_another_modules_private_names(graph):
    found = private_imports(graph)
    assert not found, ("private names imported across modules; make them public (no underscore) in "
                       "a module both may import:\n" + "\n".join(found))


def test_every_import_follows_architecture_layer_table(graph):
    table = layer_table((ROOT / "ARCHITECTURE.md").read_text())
    named = [n for _, names in table for n in names]
    unknown = [n for n in named if n != PACKAGE and f"{PACKAGE}.{n}" not in graph]
    assert not unknown, f"ARCHITECTURE.md's layer table names modules that do not exist: {unknown}"
    found = layer_violations(graph, table)
    assert not found, ("imports against ARCHITECTURE.md's layer table (move the code, or the module's "
                       "row):\n" + "\n".join(found))


if __name__ == "__main__":
    g = import_graph()
    print("cycles:", *cycles(edges_of(g)), sep="\n  ")
    print("private-name imports:", *private_imports(g), sep="\n  ")
    print("layer violations:", *layer_violations(g, layer_table((ROOT / "ARCHITECTURE.md").read_text())),
          sep="\n  ")
