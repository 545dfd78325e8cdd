"""Import contracts: the first path segment under ``xbench/`` is the layer, and imports go downward only.

Read from the source with ``ast`` (every ``import``, at module level or inside
a function; ``if TYPE_CHECKING:`` blocks excepted), so a contract holds for
the code as written, whatever a test happens to import.

Layers, bottom up (DESIGN.md "Layers"; docs/architecture.md):

0. ``xbench.core``: names, errors, atomic I/O, locks and process pools, fault
   points, lazy exports. Imports nothing else of xbench.
1. ``xbench.backend``: which Keras backend, and each backend's gradient,
   compile and start-up code. Imports ``core`` only.
2. the kernels ``xbench.{data,models,explain,perturbation,metrics}``: arrays in,
   arrays out; no Hydra, no disk writes (they never import ``core.io``).
3. ``xbench.pipeline``: plain functions on built objects; no Hydra.
4. ``xbench.apps``: the entry points.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "xbench"

KERNELS = ("data", "models", "explain", "perturbation", "metrics")
RANK = {"core": 0, "backend": 1, **{k: 2 for k in KERNELS}, "pipeline": 3, "apps": 4}
FRAMEWORKS = ("tensorflow", "jax", "torch")
#: Modules outside ``xbench.backend`` allowed to import a framework, and why. Each is a named exception.
FRAMEWORK_EXCEPTIONS = {
    # tf-keras-vis is a TensorFlow library: its adapter is TensorFlow-only by nature.
    "xbench.explain.tfkv": {"tensorflow"},
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts ``a.b`` when ``a.b`` is a module of xbench)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node) for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in MODULES:
                    found.add(sub)
    return found


MODULES = {_module(p): p for p in ROOT.rglob("*.py")}
GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "xbench" and parts[1] in RANK else None


def test_every_module_lives_in_a_layer():
    loose = sorted(m for m in MODULES if m not in ("xbench", "xbench.__main__", "xbench.conf") and _layer(m) is None)
    assert not loose, f"modules outside the layer folders: {loose}"


def test_imports_go_downward_only():
    bad = []
    for m, deps in GRAPH.items():
        lm = _layer(m)
        for d in deps:
            ld = _layer(d)
            if lm is None or ld is None or ld == lm:
                continue
            if RANK[ld] > RANK[lm]:
                bad.append(f"{m} ({lm}) imports {d} ({ld})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_core_imports_nothing_else_of_xbench():
    bad = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if _layer(m) == "core"
                 for d in deps if d.startswith("xbench") and _layer(d) != "core")
    assert not bad, "\n".join(bad)


def test_only_the_backend_package_imports_a_framework():
    bad = []
    for m, deps in GRAPH.items():
        if _layer(m) == "backend":
            continue
        for d in deps:
            root = d.split(".")[0]
            if root in FRAMEWORKS and root not in FRAMEWORK_EXCEPTIONS.get(m, ()):
                bad.append(f"{m} imports {d}")
    assert not bad, "framework imports outside xbench.backend:\n" + "\n".join(sorted(bad))


def test_no_hydra_below_the_entry_points():
    bad = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if _layer(m) not in ("apps", None)
                 for d in deps if d.split(".")[0] in ("hydra", "omegaconf"))
    assert not bad, "\n".join(bad)


def test_kernels_write_no_files():
    bad = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if _layer(m) in KERNELS for d in deps if d == "xbench.core.io")
    assert not bad, "kernels must not write files (only the pipeline, through xbench.core.io):\n" + "\n".join(bad)


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over xbench's own modules."""
    edges = {m: sorted(d for d in deps if d in MODULES and d != m) for m, deps in GRAPH.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = [c for c in _cycles() if not _only_parent_package(c)]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _only_parent_package(comp: list[str]) -> bool:
    # e.g. xbench.perturbation (its __init__ re-exports engine) and xbench.perturbation.engine (which imports
    # xbench.perturbation.regions): the package and its children are one unit.
    pkgs = [m for m in comp if any(o.startswith(m + ".") for o in comp)]
    return len(pkgs) == 1 and all(o == pkgs[0] or o.startswith(pkgs[0] + ".") for o in comp) and _cycle_via_init_only(comp, pkgs[0])


def _cycle_via_init_only(comp: list[str], pkg: str) -> bool:
    """True when removing the package's own edges to its children breaks every cycle in ``comp``."""
    sub = {m: {d for d in GRAPH[m] if d in comp and d != m and not (m == pkg)} for m in comp}

    def reaches(a, b, path=()):
        for d in sub[a]:
            if d == b or (d not in path and reaches(d, b, path + (d,))):
                return True
        return False

    return not any(reaches(m, m) for m in comp)


@pytest.mark.parametrize("rule", ["downward", "framework", "cycle"])
def test_the_contracts_catch_a_planted_violation(rule, monkeypatch):
    """Each contract fails on a planted edge (so a contract that cannot fail is caught)."""
    planted = {
        "downward": ("xbench.metrics.aopc", "xbench.pipeline.results", test_imports_go_downward_only),
        "framework": ("xbench.metrics.aopc", "tensorflow", test_only_the_backend_package_imports_a_framework),
        "cycle": ("xbench.metrics.bootstrap", "xbench.metrics.comparison", test_no_import_cycles),
    }[rule]
    module, dep, check = planted
    monkeypatch.setitem(GRAPH, module, GRAPH[module] | {dep})
    with pytest.raises(AssertionError):
        check()
