"""The import graph of fastfeat: one direction, no circles, and cheap entry points.

Every ``import`` statement counts as an edge, wherever it is (module level, inside a function,
under ``if TYPE_CHECKING:``): a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

import fastfeat

PACKAGE_DIR = os.path.dirname(fastfeat.__file__)

#: Known circles being fixed elsewhere (module, module): remove an entry once it is gone.
KNOWN_EDGES: set[tuple[str, str]] = set()


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[: -len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _modules() -> dict[str, str]:
    found = {}
    for dirpath, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                found[_module_name(path)] = path
    return found


def _imports(name: str, path: str, modules) -> set[str]:
    """fastfeat modules that ``name`` imports anywhere in its source."""
    is_package = path.endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from . import decode` names a module, `from .x import f` does not
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in modules else source)
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if (v, w) in KNOWN_EDGES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "fastfeat.store.rows" in graph["fastfeat.store.reader"]
    assert "fastfeat.store.adapters" in graph["fastfeat.store.reader"]  # a function-level import
    assert "fastfeat.decode" in graph["fastfeat.loader"]  # `from . import decode as _decode`


def test_no_import_circle_inside_fastfeat():
    cycles = _cycles(import_graph())
    assert not cycles, f"import circles: {cycles}"


def test_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_store_and_catalog_never_import_tensorflow_modules():
    graph = import_graph()
    heavy = {"fastfeat.models", "fastfeat.runtime", "fastfeat.precision", "fastfeat.loader", "fastfeat.extraction"}
    for name, targets in graph.items():
        if name.startswith("fastfeat.store") or name in ("fastfeat.catalog", "fastfeat.preprocess"):
            assert not targets & heavy, (name, targets & heavy)


_PROBE = """
import sys
{code}
heavy = sorted(m for m in ("tensorflow", "cv2", "keras", "numba", "h5py") if m in sys.modules)
print(repr((heavy, None)))
"""


def _probe(code: str):
    out = subprocess.run([sys.executable, "-c", _PROBE.format(code=code)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import fastfeat",
        "import fastfeat.cli",
        "import fastfeat.store, fastfeat.catalog",
        "import fastfeat.cli, contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        fastfeat.cli.main(['--help'])\n    except SystemExit:\n        pass",
        "import fastfeat.cli, contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        fastfeat.cli.main(['extract', '--help'])\n    except SystemExit:\n        pass",
    ],
    ids=["package", "cli", "store", "help", "extract-help"],
)
def test_entry_points_import_neither_tensorflow_nor_opencv(code):
    heavy, _ = _probe(code)
    assert "tensorflow" not in heavy and "keras" not in heavy, heavy
    if code in ("import fastfeat", "import fastfeat.cli"):
        assert heavy == [], heavy
    if "cv2" in heavy and "cv2" in _probe("import fastfeat.decode")[0]:
        pytest.skip("fastfeat.decode still imports OpenCV at import time (being changed in issue 11)")
    assert "cv2" not in heavy, heavy


def test_fastfeat_help_runs_as_a_program():
    out = subprocess.run([sys.executable, "-m", "fastfeat", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "extract" in out.stdout, out.stderr
