"""BUILD is the layering's source of truth: the code is checked against it.

:func:`check_build` reads ``<root>/BUILD`` (evaluated as Python, with stub
``py_library`` / ``py_binary`` / ``py_test`` / ``glob`` / ``package`` / ``licenses``)
and returns one message per problem:

1. Membership: every ``.py`` under the checked directories is in the ``srcs`` of exactly
   one target; every file a target lists exists; target names are unique.
2. Imports, found statically with :mod:`ast` at module level and inside functions: a
   first-party module may import only modules of its own target or of a target listed
   *directly* in its ``deps`` (a transitive dep is not enough: a target lists what it
   uses, so removing a dep elsewhere never breaks it silently). An import inside a
   function or under ``if TYPE_CHECKING:`` is lazy (it does not run when the module
   loads): it may also name a target in ``lazy_deps``. A module-level import of a target
   that is only a lazy dep is reported: it would be an import cycle.
3. Layers: ``LAYERS`` in BUILD lists ``(name, [py_library names])`` bottom first, each
   library in exactly one layer. ``deps`` point to the same layer or below and form no
   cycle; ``lazy_deps`` point strictly above (a lazy import of a target at or below is an
   ordinary dep) and each is used by some lazy import. ``py_binary`` and ``py_test``
   targets sit above every layer: they may depend on any library, nothing on them.

First party means a module found under an import root: the directory of BUILD and each
``imports`` entry of a target (``tools`` makes ``tools/bench/config.py`` ``bench.config``;
a package wins over a same-named module, as in Python). Anything else (stdlib, keras,
tensorflow, numpy, absl, ...) is ignored. ``import a.b.c`` is an edge to ``a.b.c`` only,
not to the ``__init__`` of ``a`` and ``a.b`` that Python also runs; modules loaded by path
(``importlib.util.spec_from_file_location``) or run in a subprocess are not imports.

Tests are targets too: ``tests/test_*.py`` are ``py_test`` targets and what they share
is the ``test_support`` library, so ``tests/`` is checked like the rest.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("tf_filterprune", "tools", "tests")
LIBRARY, BINARY, TEST = "py_library", "py_binary", "py_test"


@dataclass
class Target:
    name: str
    kind: str
    srcs: list[str]
    deps: list[str] = field(default_factory=list)
    lazy_deps: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)


@dataclass
class Build:
    targets: dict[str, Target]
    layers: list[tuple[str, list[str]]]
    problems: list[str]


@dataclass(frozen=True)
class Import:
    line: int
    name: str  # the module as written (absolute), for messages
    candidates: tuple[str, ...]  # most specific first: "a.b.c", then "a.b"
    lazy: bool


def _label(label: str) -> str:
    """``":graph"`` or ``"//:graph"`` -> ``"graph"``; anything else is kept (and unknown)."""
    for prefix in ("//:", ":"):
        if label.startswith(prefix):
            return label[len(prefix) :]
    return label


def _glob(root: Path, include: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    def expand(patterns: Iterable[str]) -> set[str]:
        found = set()
        for pattern in patterns:
            for path in root.glob(pattern):
                if path.is_file() and "__pycache__" not in path.parts:
                    found.add(path.relative_to(root).as_posix())
        return found

    return sorted(expand(include) - expand(exclude))


def load_build(root: Path) -> Build:
    """Evaluates ``root/BUILD`` with stub rules; returns its targets and ``LAYERS``."""
    targets: dict[str, Target] = {}
    problems: list[str] = []

    def rule(kind: str):
        def define(name, srcs=(), deps=(), lazy_deps=(), imports=(), **_):
            if name in targets:
                problems.append(f"BUILD: two targets are named :{name}")
            targets[name] = Target(
                name,
                kind,
                list(srcs),
                [_label(d) for d in deps],
                [_label(d) for d in lazy_deps],
                list(imports),
            )

        return define

    def glob(include, exclude=(), **_):
        return _glob(root, include, exclude)

    namespace = {
        LIBRARY: rule(LIBRARY),
        BINARY: rule(BINARY),
        TEST: rule(TEST),
        "glob": glob,
        "package": lambda **_: None,
        "licenses": lambda *_, **__: None,
    }
    path = root / "BUILD"
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    layers = [(name, list(members)) for name, members in namespace.get("LAYERS", [])]
    return Build(targets, layers, problems)


def _module_names(rel: str, roots: Sequence[str]) -> list[tuple[str, str]]:
    """``(root, dotted name)`` of file ``rel`` under each import root that contains it."""
    names = []
    for root in roots:
        if root and not rel.startswith(root + "/"):
            continue
        parts = rel[len(root) + 1 if root else 0 : -len(".py")].split("/")
        if parts[-1] == "__init__":
            parts.pop()
        if parts and all(part.isidentifier() for part in parts):
            names.append((root, ".".join(parts)))
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, package: str) -> list[Import]:
    """The imports of a module whose package is ``package`` (for relative imports)."""
    found: list[Import] = []

    def add(node: ast.Import | ast.ImportFrom, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(node.lineno, alias.name, (alias.name,), lazy))
            return
        base = node.module or ""
        if node.level:
            parts = package.split(".") if package else []
            parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
            base = ".".join(parts + ([node.module] if node.module else []))
        if not base or base == "__future__":
            return
        for alias in node.names:
            if alias.name == "*":
                found.append(Import(node.lineno, base, (base,), lazy))
            else:
                full = f"{base}.{alias.name}"
                found.append(Import(node.lineno, base, (full, base), lazy))

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            add(node, lazy)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for child in ast.iter_child_nodes(node):
                visit(child, True)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, lazy)
        else:
            for child in ast.iter_child_nodes(node):
                visit(child, lazy)

    visit(ast.parse(source), False)
    return found


def _scanned(root: Path, checked: Iterable[str]) -> list[str]:
    files = set()
    for top in checked:
        for path in (root / top).rglob("*.py"):
            rel = path.relative_to(root)
            if not any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                files.add(rel.as_posix())
    return sorted(files)


def _layer_problems(build: Build) -> list[str]:
    targets, problems = build.targets, []
    level: dict[str, int] = {}
    for index, (layer, members) in enumerate(build.layers):
        for name in members:
            if name not in targets or targets[name].kind != LIBRARY:
                problems.append(f"LAYERS: layer {layer!r} names :{name}, which is no py_library")
            elif name in level:
                problems.append(f"LAYERS: :{name} is in two layers")
            else:
                level[name] = index
    layer_names = [layer for layer, _ in build.layers]

    def where(name: str) -> str:
        return f":{name} (layer {layer_names[level[name]]!r})"

    for target in targets.values():
        if target.kind == LIBRARY and target.name not in level:
            problems.append(f"LAYERS: py_library :{target.name} is in no layer")
    for target in targets.values():
        for attribute in ("deps", "lazy_deps"):
            for dep in getattr(target, attribute):
                if dep not in targets:
                    problems.append(f":{target.name}: {attribute} names :{dep}, no such target")
                elif targets[dep].kind != LIBRARY:
                    problems.append(
                        f":{target.name}: {attribute} names :{dep}, a {targets[dep].kind}: "
                        "only libraries are depended on"
                    )
        if target.name not in level:
            if target.lazy_deps and target.kind != LIBRARY:
                problems.append(
                    f":{target.name}: a {target.kind} is above every layer; its "
                    "lazy_deps belong in deps"
                )
            continue
        for dep in target.deps:
            if dep in level and level[dep] > level[target.name]:
                problems.append(
                    f"{where(target.name)} depends on {where(dep)}, which is above it: "
                    "import it lazily and list it in lazy_deps, or move a layer"
                )
        for dep in target.lazy_deps:
            if dep in target.deps:
                problems.append(f":{target.name}: :{dep} is in both deps and lazy_deps")
            elif dep in level and level[dep] <= level[target.name]:
                problems.append(
                    f"{where(target.name)}: lazy dep {where(dep)} is not above it; "
                    "a target at or below is an ordinary dep"
                )
    problems += _cycles(targets)
    return problems


def _cycles(targets: dict[str, Target]) -> list[str]:
    """One message per cycle of ``deps`` found by a depth-first walk."""
    problems, state = [], {}  # name -> "open" while on the stack, "done" after

    def walk(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in targets[name].deps:
            if dep not in targets:
                continue
            if state.get(dep) == "open":
                cycle = path[path.index(dep) :] + [dep]
                problems.append("deps cycle: " + " -> ".join(f":{n}" for n in cycle))
            elif dep not in state:
                walk(dep, path + [dep])
        state[name] = "done"

    for name in sorted(targets):
        if name not in state:
            walk(name, [name])
    return problems


def check_build(root: Path | str, checked: Iterable[str] = CHECKED) -> list[str]:
    """Every disagreement between ``root/BUILD`` and the modules under ``checked``."""
    root = Path(root)
    build = load_build(root)
    targets, problems = build.targets, list(build.problems)

    owners: dict[str, list[str]] = {}
    for target in targets.values():
        for src in target.srcs:
            if not (root / src).is_file():
                problems.append(f":{target.name}: lists {src}, which does not exist")
            elif target.name not in owners.setdefault(src, []):
                owners[src].append(target.name)
    scanned = _scanned(root, checked)
    for rel in scanned:
        owned = owners.get(rel, [])
        if not owned:
            problems.append(f"{rel}: in no target of BUILD")
        elif len(owned) > 1:
            problems.append(f"{rel}: in {len(owned)} targets: " + ", ".join(f":{o}" for o in owned))

    # Import roots: BUILD's directory, then each `imports` entry; the module map.
    roots = [""] + sorted({entry.strip("/") for t in targets.values() for entry in t.imports})
    files = sorted(set(scanned) | {src for src in owners if src.endswith(".py")})
    modules: dict[str, str] = {}
    primary: dict[str, str] = {}  # file -> its name under the most specific root
    for rel in files:
        names = _module_names(rel, roots)
        if names:
            primary[rel] = max(names, key=lambda pair: len(pair[0]))[1]
        for _, name in names:
            known = modules.get(name)
            if known is None or (rel.endswith("__init__.py") and not known.endswith("__init__.py")):
                modules[name] = rel
    first_party = {name.split(".")[0] for name in modules}

    layer_problems = _layer_problems(build)
    used_lazy: set[tuple[str, str]] = set()
    for rel in files:
        owned = owners.get(rel, [])
        if len(owned) != 1 or rel not in primary:
            continue  # reported above (or not a module name Python can import)
        source = targets[owned[0]]
        name = primary[rel]
        package = name if rel.endswith("__init__.py") else name.rpartition(".")[0]
        for item in imports_of((root / rel).read_text(), package):
            if item.candidates[0].split(".")[0] not in first_party:
                continue  # stdlib or third party
            module = next((c for c in item.candidates if c in modules), None)
            if module is None:
                problems.append(f"{rel}:{item.line}: imports {item.name}: no such module")
                continue
            imported = owners.get(modules[module], [])
            if len(imported) != 1 or imported[0] == source.name:
                continue  # unowned (reported above) or within the target
            dep = imported[0]
            where = f"{rel}:{item.line}: imports {module} (:{dep})"
            if dep in source.deps:
                continue
            if dep in source.lazy_deps:
                used_lazy.add((source.name, dep))
                if not item.lazy:
                    problems.append(
                        f"{where} at module level, but :{dep} is only a lazy dep of "
                        f":{source.name}: an import cycle; import it inside the function"
                    )
                continue
            wanted = "deps (or lazy_deps, if it is above)" if item.lazy else "deps"
            problems.append(f"{where}, which is not in the {wanted} of :{source.name}")
    for target in targets.values():
        for dep in target.lazy_deps:
            if dep in targets and dep not in target.deps and (target.name, dep) not in used_lazy:
                problems.append(f":{target.name}: lazy dep :{dep} is used by no lazy import")
    return problems + layer_problems


# --------------------------------------------------------------------------- #
# The repository's BUILD
# --------------------------------------------------------------------------- #


def test_repository_build_matches_the_code():
    problems = check_build(ROOT)
    assert not problems, "BUILD and the code disagree:\n" + "\n".join(problems)


def test_repository_layers_are_ordered_as_designed():
    build = load_build(ROOT)
    order = [name for layer in build.layers for name in layer[1]]
    bottom_up = ["graph", "surgery", "methods", "pruner", "latency", "tf_filterprune", "cli"]
    assert [order.index(name) for name in bottom_up] == sorted(
        order.index(name) for name in bottom_up
    )
    # the pruner -> latency edge is declared for what it is: lazy and upward
    assert build.targets["pruner"].lazy_deps == ["latency"]
    assert "pruner" in build.targets["latency"].deps


# --------------------------------------------------------------------------- #
# The checker on planted trees
# --------------------------------------------------------------------------- #

GOOD_BUILD = """
package(default_visibility = ["//visibility:public"])
licenses(["notice"])

LAYERS = [
    ("graph", ["graph"]),
    ("api", ["api"]),
    ("latency", ["latency"]),
    ("package", ["pkg"]),
]

py_library(name = "graph", srcs = glob(["pkg/graph/*.py"]))
py_library(name = "api", srcs = ["pkg/api.py"], deps = [":graph"], lazy_deps = [":latency"])
py_library(name = "latency", srcs = ["pkg/latency.py"], deps = [":api"])
py_library(
    name = "pkg",
    srcs = glob(["pkg/*.py"], exclude = ["pkg/api.py", "pkg/latency.py"]),
    deps = [":api", ":graph"],
)
py_binary(name = "tool", srcs = ["tools/tool.py"], deps = [":pkg"])
"""

GOOD_FILES = {
    "pkg/__init__.py": "from pkg.api import prune\nfrom pkg.graph import build\n",
    "pkg/graph/__init__.py": "from pkg.graph.core import build\n",
    "pkg/graph/core.py": (
        "import os\nimport numpy as np\n\n\ndef build():\n    from pkg.graph import extra\n"
    ),
    "pkg/graph/extra.py": "import keras\n",
    "pkg/api.py": (
        "from pkg.graph import build\n\n\n"
        "def prune(budget=None):\n"
        "    if budget:\n"
        "        from pkg import latency\n"
        "        return latency.fit(budget)\n"
        "    return build()\n"
    ),
    "pkg/latency.py": "from pkg.api import prune\n\n\ndef fit(budget):\n    return prune()\n",
    "tools/tool.py": "import sys\n\nimport pkg\n",
}


def plant(tmp_path: Path, build: str = GOOD_BUILD, **changes: str | None) -> Path:
    """GOOD_FILES and ``build`` written under tmp_path. ``changes`` maps a file, ``/``
    spelled ``__`` and without ``.py`` (``pkg__graph__init``), to its new text."""
    files = dict(GOOD_FILES)
    for key, text in changes.items():
        rel = key.replace("__", "/")
        rel = rel[: -len("init")] + "__init__" if rel.endswith("/init") else rel
        files[rel + ".py"] = text
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "BUILD").write_text(build)
    return tmp_path


def check(root: Path) -> list[str]:
    return check_build(root, checked=("pkg", "tools"))


def test_clean_tree_passes(tmp_path):
    assert check(plant(tmp_path)) == []


def test_glob_honours_exclude(tmp_path):
    build = load_build(plant(tmp_path))
    assert build.targets["pkg"].srcs == ["pkg/__init__.py"]
    assert build.targets["graph"].srcs == [
        "pkg/graph/__init__.py",
        "pkg/graph/core.py",
        "pkg/graph/extra.py",
    ]


def test_planted_wrong_way_import_is_reported(tmp_path):
    root = plant(tmp_path, pkg__graph__extra="import keras\n\nfrom pkg.api import prune\n")
    assert check(root) == [
        "pkg/graph/extra.py:3: imports pkg.api (:api), which is not in the deps of :graph"
    ]


def test_wrong_way_import_inside_a_function_is_reported(tmp_path):
    root = plant(tmp_path, pkg__graph__extra="def f():\n    from pkg import api\n")
    assert check(root) == [
        "pkg/graph/extra.py:2: imports pkg.api (:api), which is not in the deps "
        "(or lazy_deps, if it is above) of :graph"
    ]


def test_relative_wrong_way_import_is_reported(tmp_path):
    root = plant(tmp_path, pkg__graph__extra="from .. import api\n")
    assert check(root) == [
        "pkg/graph/extra.py:1: imports pkg.api (:api), which is not in the deps of :graph"
    ]


def test_dep_pointing_up_the_layers_is_reported(tmp_path):
    build = GOOD_BUILD.replace(
        'srcs = glob(["pkg/graph/*.py"])', 'srcs = glob(["pkg/graph/*.py"]), deps = [":api"]'
    )
    root = plant(tmp_path, build, pkg__graph__extra="from pkg.api import prune\n")
    assert check(root) == [
        ":graph (layer 'graph') depends on :api (layer 'api'), which is above it: "
        "import it lazily and list it in lazy_deps, or move a layer",
        "deps cycle: :api -> :graph -> :api",
    ]


def test_a_transitive_dep_is_not_enough(tmp_path):
    # :latency deps :api, which deps :graph; latency.py imports pkg.graph itself
    root = plant(tmp_path, pkg__latency="from pkg.api import prune\nfrom pkg.graph import build\n")
    assert check(root) == [
        "pkg/latency.py:2: imports pkg.graph (:graph), which is not in the deps of :latency"
    ]


def test_module_level_import_of_a_lazy_dep_is_a_cycle(tmp_path):
    root = plant(tmp_path, pkg__api="from pkg import latency\nfrom pkg.graph import build\n")
    assert check(root) == [
        "pkg/api.py:1: imports pkg.latency (:latency) at module level, but :latency is only "
        "a lazy dep of :api: an import cycle; import it inside the function"
    ]


def test_lazy_dep_on_a_target_at_or_below_is_reported(tmp_path):
    build = GOOD_BUILD.replace(
        'deps = [":graph"], lazy_deps = [":latency"]', 'lazy_deps = [":graph", ":latency"]'
    )
    api = "def prune(budget=None):\n    from pkg import latency\n    from pkg.graph import build\n"
    assert check(plant(tmp_path, build, pkg__api=api)) == [
        ":api (layer 'api'): lazy dep :graph (layer 'graph') is not above it; "
        "a target at or below is an ordinary dep"
    ]


def test_unused_lazy_dep_and_unlayered_library_are_reported(tmp_path):
    build = GOOD_BUILD.replace('    ("latency", ["latency"]),\n', "")
    root = plant(tmp_path, build, pkg__api="from pkg.graph import build\n")
    assert check(root) == [
        ":api: lazy dep :latency is used by no lazy import",
        "LAYERS: py_library :latency is in no layer",
    ]


def test_type_checking_imports_are_lazy(tmp_path):
    api = (
        "from typing import TYPE_CHECKING\n\nfrom pkg.graph import build\n\n"
        "if TYPE_CHECKING:\n    from pkg import latency\n"
    )
    assert check(plant(tmp_path, pkg__api=api)) == []


def test_module_in_no_target_or_two_is_reported(tmp_path):
    build = GOOD_BUILD.replace('srcs = ["pkg/api.py"]', 'srcs = ["pkg/api.py", "pkg/__init__.py"]')
    root = plant(tmp_path, build, tools__stray="import pkg.graph\n")
    assert check(root) == [
        "pkg/__init__.py: in 2 targets: :api, :pkg",
        "tools/stray.py: in no target of BUILD",
    ]


def test_missing_sources_and_unknown_targets_are_reported(tmp_path):
    build = GOOD_BUILD.replace(
        'srcs = ["tools/tool.py"], deps = [":pkg"]',
        'srcs = ["tools/tool.py", "tools/gone.py"], deps = [":pkg", ":nothing"]',
    )
    assert check(plant(tmp_path, build)) == [
        ":tool: lists tools/gone.py, which does not exist",
        ":tool: deps names :nothing, no such target",
    ]


def test_nothing_depends_on_a_binary(tmp_path):
    build = GOOD_BUILD.replace('deps = [":api", ":graph"]', 'deps = [":api", ":graph", ":tool"]')
    assert check(plant(tmp_path, build)) == [
        ":pkg: deps names :tool, a py_binary: only libraries are depended on",
        "deps cycle: :pkg -> :tool -> :pkg",
    ]


def test_import_roots_and_missing_first_party_modules(tmp_path):
    build = GOOD_BUILD.replace('("package", ["pkg"]),', '("package", ["pkg", "bench"]),') + (
        'py_library(name = "bench", srcs = glob(["tools/bench/*.py"]), imports = ["tools"])\n'
    )
    root = plant(
        tmp_path,
        build,
        tools__bench__init="",
        tools__bench__timing="import bench.config\n",  # tools/bench/config.py: none
        tools__tool="import pkg\nimport bench.timing\n",
    )
    assert check(root) == [
        "tools/bench/timing.py:1: imports bench.config: no such module",
        "tools/tool.py:2: imports bench.timing (:bench), which is not in the deps of :tool",
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import a.b.c as d", [("a.b.c",)]),
        ("from a.b import c, d", [("a.b.c", "a.b"), ("a.b.d", "a.b")]),
        ("from . import x", [("p.q.x", "p.q")]),
        ("from ..r import y", [("p.r.y", "p.r")]),
        ("from __future__ import annotations", []),
    ],
)
def test_imports_of(source, expected):
    assert [item.candidates for item in imports_of(source, "p.q")] == expected
