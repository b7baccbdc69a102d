"""The package's layout rules (docs/design.md), checked on the import statements of every
module, including the imports inside functions:

* the kernel library (lvtp_kernels outside lvtp_kernels.app) never imports the
  application wing (lvtp_kernels.app);
* nothing in the package imports the repository's benchmarks/ or tests/;
* python_ref imports nothing of lvtp_kernels;
* no import circle between modules;
* every op has its family module, and every family module lists its backends.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    out = {}
    for pkg in ("lvtp_kernels", "python_ref"):
        for p in sorted((ROOT / pkg).rglob("*.py")):
            out[_module_name(p)] = p
    return out


MODULES = _modules()


def _resolve(mod: str, is_pkg: bool, level: int, name: str) -> str:
    if level == 0:
        return name
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(mod: str) -> Set[str]:
    """The modules ``mod`` imports (only the package's own and benchmarks/tests)."""
    path = MODULES[mod]
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(mod, is_pkg, node.level, node.module or "")
            for a in node.names:  # `from pkg import submodule` imports pkg.submodule
                sub = f"{target}.{a.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m.split(".")[0] in ("lvtp_kernels", "python_ref", "benchmarks", "tests")}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_graph_sees_imports():
    # the checks below are only as good as the graph: it must see lazy and relative imports
    assert "lvtp_kernels.app.viz" in GRAPH["lvtp_kernels.app.cli"]  # a function-level import
    assert "lvtp_kernels.registry" in GRAPH["lvtp_kernels.ops.select"]  # `from .. import registry`
    assert "lvtp_kernels.models.engine" in GRAPH["lvtp_kernels.adapters._common"]


def test_kernel_library_does_not_import_the_application():
    # lvtp_kernels.__main__ is `python -m lvtp_kernels`, the command line's entry point: the
    # application's, though it sits at the top of the package; nothing imports it
    lib = [m for m in GRAPH if m.startswith("lvtp_kernels") and not m.startswith("lvtp_kernels.app")
           and m != "lvtp_kernels.__main__"]
    bad = [(m, d) for m in lib for d in GRAPH[m] if d.startswith("lvtp_kernels.app")]
    assert not bad, f"kernel library -> application imports: {bad}"


def test_package_does_not_import_benchmarks_or_tests():
    bad = [(m, d) for m, deps in GRAPH.items() for d in deps if d.split(".")[0] in ("benchmarks", "tests")]
    assert not bad, bad


def test_reference_is_independent():
    bad = [(m, d) for m, deps in GRAPH.items() if m.startswith("python_ref") for d in deps if d.startswith("lvtp_kernels")]
    assert not bad, bad


def _cycles() -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
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

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert _cycles() == []


def test_cycle_detector_finds_a_circle(monkeypatch):
    monkeypatch.setitem(GRAPH, "lvtp_kernels.registry", GRAPH["lvtp_kernels.registry"] | {"lvtp_kernels.ops.select"})
    assert any("lvtp_kernels.registry" in c for c in _cycles())


@pytest.mark.parametrize("family", ["tsallis", "attention", "edge", "select", "tokens"])
def test_family_module_holds_its_ops(family):
    import lvtp_kernels  # noqa: F401
    from lvtp_kernels import ops, registry

    mod = __import__(f"lvtp_kernels.ops.{family}", fromlist=["x"])
    text = Path(mod.__file__).read_text()
    for op in ops.FAMILIES[family]:
        spec = registry.SPECS[op]
        assert spec.check.__module__ == mod.__name__, (op, spec.check.__module__)
        assert spec.fake.__module__ == mod.__name__, (op, spec.fake.__module__)
        assert f"lvtp::{op}" in text or f"``{op}``" in text or op in text.split('"""')[1]  # named in its docstring
        assert f"tests/test_op_{family}" in text  # the docstring points at its tests


def test_every_op_is_in_a_family():
    import lvtp_kernels  # noqa: F401
    from lvtp_kernels import ops, registry

    assert sorted(op for f in ops.FAMILIES.values() for op in f) == sorted(registry.op_names())
